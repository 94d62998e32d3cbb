//! Data augmentation: random parameters are sampled first, from a ChaCha8
//! RNG keyed by `(seed, epoch, index)`, then pure functions apply them. The
//! result for an example therefore never depends on the number of threads or
//! on which thread handled it.
//!
//! Two stages:
//! - on the 8-bit image, before preprocessing: the ImageNet transforms
//!   (resize the shorter side, random or centre crop, flip);
//! - on the normalised `f32` image, after preprocessing: the CIFAR
//!   transforms (flip, translation by up to `k` pixels filled with zeros,
//!   so the fill is the normalised data's "no signal" value).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::Image;
use crate::DataError;

/// The RNG for example `index` of `epoch` under `seed`. Every random choice
/// of the crate about one example comes from this stream.
pub fn rng_for(seed: u64, epoch: u64, index: u64) -> ChaCha8Rng {
    allcnn_seed::rng(seed, allcnn_seed::Stream::Augment, epoch, index)
}

/// An augmentation policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Augmentation {
    /// No augmentation.
    #[default]
    None,
    /// The paper's CIFAR augmentation, after normalisation: a horizontal flip
    /// with probability 1/2 (when `flip`), and a translation by `dx, dy` drawn
    /// uniformly from `-max_shift..=max_shift` with zero fill.
    FlipTranslate {
        /// Flip horizontally with probability 1/2.
        flip: bool,
        /// Largest shift in pixels in each axis (the paper: 5).
        max_shift: usize,
    },
    /// ImageNet training: resize the shorter side to `resize`, take a random
    /// `crop` x `crop` window, flip with probability 1/2 (when `flip`).
    RandomCrop {
        /// Shorter side after resizing (256).
        resize: usize,
        /// Crop side (224).
        crop: usize,
        /// Flip horizontally with probability 1/2.
        flip: bool,
    },
    /// ImageNet evaluation: resize the shorter side to `resize`, take the
    /// centre `crop` x `crop` window. Deterministic.
    CenterCrop {
        /// Shorter side after resizing (256).
        resize: usize,
        /// Crop side (224).
        crop: usize,
    },
}

/// The random choices for one example, drawn by [`Augmentation::sample`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AugmentParams {
    /// Flip horizontally.
    pub flip: bool,
    /// Horizontal shift (positive: content moves right).
    pub dx: i32,
    /// Vertical shift (positive: content moves down).
    pub dy: i32,
    /// Size `(height, width)` after resizing (`None`: no resize).
    pub resize_to: Option<(usize, usize)>,
    /// Top-left corner `(y, x)` and side of the crop (`None`: no crop).
    pub crop: Option<(usize, usize, usize)>,
}

impl Augmentation {
    /// The paper's CIFAR augmentation: flips and translations up to 5 px.
    pub const fn paper_cifar() -> Self {
        Augmentation::FlipTranslate {
            flip: true,
            max_shift: 5,
        }
    }
    /// ImageNet training: resize 256, random 224 crop, flip.
    pub const fn imagenet_train() -> Self {
        Augmentation::RandomCrop {
            resize: 256,
            crop: 224,
            flip: true,
        }
    }
    /// ImageNet evaluation: resize 256, centre 224 crop.
    pub const fn imagenet_eval() -> Self {
        Augmentation::CenterCrop {
            resize: 256,
            crop: 224,
        }
    }

    /// Checks the configuration.
    ///
    /// # Errors
    /// [`DataError::InvalidConfig`] when a crop is larger than the resize or zero.
    pub fn validate(&self) -> Result<(), DataError> {
        match *self {
            Augmentation::RandomCrop { resize, crop, .. }
            | Augmentation::CenterCrop { resize, crop } => {
                if crop == 0 || crop > resize {
                    return Err(DataError::InvalidConfig {
                        name: "crop",
                        value: crop.to_string(),
                        reason: format!("must be between 1 and the resize side {resize}"),
                    });
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The output `(height, width)` for an input of `(h, w)`.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        match *self {
            Augmentation::RandomCrop { crop, .. } | Augmentation::CenterCrop { crop, .. } => {
                (crop, crop)
            }
            _ => (h, w),
        }
    }

    /// Draws the random parameters for example `index` of `epoch`, whose
    /// image is `h` x `w`. Same inputs, same parameters.
    pub fn sample(&self, seed: u64, epoch: u64, index: u64, h: usize, w: usize) -> AugmentParams {
        let mut rng = rng_for(seed, epoch, index);
        self.sample_with(&mut rng, h, w)
    }

    /// Draws the parameters from a given RNG.
    pub fn sample_with<R: Rng>(&self, rng: &mut R, h: usize, w: usize) -> AugmentParams {
        match *self {
            Augmentation::None => AugmentParams::default(),
            Augmentation::FlipTranslate { flip, max_shift } => {
                let k = max_shift as i32;
                let f = flip && rng.random_bool(0.5);
                let dy = rng.random_range(-k..=k);
                let dx = rng.random_range(-k..=k);
                AugmentParams {
                    flip: f,
                    dx,
                    dy,
                    ..Default::default()
                }
            }
            Augmentation::RandomCrop { resize, crop, flip } => {
                let (rh, rw) = resized_shorter(h, w, resize);
                let y = rng.random_range(0..=rh.saturating_sub(crop));
                let x = rng.random_range(0..=rw.saturating_sub(crop));
                let f = flip && rng.random_bool(0.5);
                AugmentParams {
                    flip: f,
                    resize_to: Some((rh, rw)),
                    crop: Some((y, x, crop)),
                    ..Default::default()
                }
            }
            Augmentation::CenterCrop { resize, crop } => {
                let (rh, rw) = resized_shorter(h, w, resize);
                AugmentParams {
                    resize_to: Some((rh, rw)),
                    crop: Some((
                        rh.saturating_sub(crop) / 2,
                        rw.saturating_sub(crop) / 2,
                        crop,
                    )),
                    ..Default::default()
                }
            }
        }
    }

    /// Whether [`Augmentation::apply_u8`] changes anything (the ImageNet policies).
    pub fn has_u8_stage(&self) -> bool {
        matches!(
            self,
            Augmentation::RandomCrop { .. } | Augmentation::CenterCrop { .. }
        )
    }

    /// Applies the 8-bit stage (resize, crop, flip of the ImageNet policies);
    /// returns the image unchanged for the others.
    ///
    /// # Errors
    /// [`DataError::WrongImageSize`] when the crop does not fit.
    pub fn apply_u8(&self, params: &AugmentParams, image: Image) -> Result<Image, DataError> {
        if !self.has_u8_stage() {
            return Ok(image);
        }
        let mut img = image;
        if let Some((rh, rw)) = params.resize_to {
            img = resize_u8(&img, rh, rw)?;
        }
        if let Some((y, x, side)) = params.crop {
            img = crop_u8(&img, y, x, side, side)?;
        }
        if params.flip {
            img = flip_u8(&img);
        }
        Ok(img)
    }

    /// Applies the `f32` stage (the CIFAR flip and translation) to one
    /// normalised CHW image `src` of shape `(c, h, w)`, writing `dst`;
    /// copies `src` for the other policies.
    ///
    /// # Panics
    /// When `src` or `dst` is not `c * h * w` long.
    pub fn apply_f32(
        &self,
        params: &AugmentParams,
        src: &[f32],
        c: usize,
        h: usize,
        w: usize,
        dst: &mut [f32],
    ) {
        match self {
            Augmentation::FlipTranslate { .. } => {
                flip_translate(src, c, h, w, params.flip, params.dx, params.dy, dst)
            }
            _ => dst.copy_from_slice(src),
        }
    }
}

/// Size after resizing the shorter side of `h` x `w` to `side` (aspect kept, rounded).
pub fn resized_shorter(h: usize, w: usize, side: usize) -> (usize, usize) {
    if h == 0 || w == 0 {
        return (side, side);
    }
    if h <= w {
        (
            side,
            ((w as f64 * side as f64 / h as f64).round() as usize).max(side),
        )
    } else {
        (
            ((h as f64 * side as f64 / w as f64).round() as usize).max(side),
            side,
        )
    }
}

/// Flips then translates one CHW image: `dst[c][y][x] = f(src)[c][y - dy][x - dx]`
/// where `f` mirrors columns when `flip`; pixels shifted in from outside are 0.
///
/// # Panics
/// When `src` or `dst` is not `c * h * w` long.
#[allow(clippy::too_many_arguments)]
pub fn flip_translate(
    src: &[f32],
    c: usize,
    h: usize,
    w: usize,
    flip: bool,
    dx: i32,
    dy: i32,
    dst: &mut [f32],
) {
    assert_eq!(src.len(), c * h * w, "flip_translate: src length");
    assert_eq!(dst.len(), c * h * w, "flip_translate: dst length");
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        let out = &mut dst[ch * h * w..(ch + 1) * h * w];
        for y in 0..h {
            let sy = y as i64 - dy as i64;
            let row = &mut out[y * w..(y + 1) * w];
            if sy < 0 || sy >= h as i64 {
                row.fill(0.0);
                continue;
            }
            let srow = &plane[sy as usize * w..(sy as usize + 1) * w];
            for (x, o) in row.iter_mut().enumerate() {
                let sx = x as i64 - dx as i64;
                *o = if sx < 0 || sx >= w as i64 {
                    0.0
                } else if flip {
                    srow[w - 1 - sx as usize]
                } else {
                    srow[sx as usize]
                };
            }
        }
    }
}

/// Mirrors an 8-bit image left-right.
pub fn flip_u8(img: &Image) -> Image {
    let (c, h, w) = (img.channels(), img.height(), img.width());
    let src = img.as_chw();
    let mut out = vec![0u8; src.len()];
    for (srow, orow) in src.chunks_exact(w).zip(out.chunks_exact_mut(w)) {
        for (o, s) in orow.iter_mut().zip(srow.iter().rev()) {
            *o = *s;
        }
    }
    Image::from_chw(c, h, w, out).expect("same size as a valid image")
}

/// The `ch` x `cw` window of `img` whose top-left corner is `(y, x)`.
///
/// # Errors
/// [`DataError::WrongImageSize`] when the window does not fit in the image.
pub fn crop_u8(img: &Image, y: usize, x: usize, ch: usize, cw: usize) -> Result<Image, DataError> {
    let (c, h, w) = (img.channels(), img.height(), img.width());
    if y + ch > h || x + cw > w || ch == 0 || cw == 0 {
        return Err(DataError::WrongImageSize {
            what: format!("crop of {ch}x{cw} at ({y}, {x})"),
            expected_c: c,
            expected_h: y + ch,
            expected_w: x + cw,
            found_c: c,
            found_h: h,
            found_w: w,
        });
    }
    let src = img.as_chw();
    let mut out = Vec::with_capacity(c * ch * cw);
    for plane in 0..c {
        for row in y..y + ch {
            let start = (plane * h + row) * w + x;
            out.extend_from_slice(&src[start..start + cw]);
        }
    }
    Image::from_chw(c, ch, cw, out)
}

/// Resizes an 8-bit RGB image to `nh` x `nw` (bilinear, as torchvision's default).
///
/// # Errors
/// [`DataError::InvalidConfig`] for a zero size or a non-RGB image.
pub fn resize_u8(img: &Image, nh: usize, nw: usize) -> Result<Image, DataError> {
    if (img.height(), img.width()) == (nh, nw) {
        return Ok(img.clone());
    }
    if nh == 0 || nw == 0 || img.channels() != 3 {
        return Err(DataError::InvalidConfig {
            name: "resize",
            value: format!("{nh}x{nw} of a {}-channel image", img.channels()),
            reason: "needs a non-zero size and an RGB image".into(),
        });
    }
    let (h, w) = (img.height(), img.width());
    let hw = h * w;
    let chw = img.as_chw();
    let mut rgb = vec![0u8; 3 * hw];
    for i in 0..hw {
        rgb[3 * i] = chw[i];
        rgb[3 * i + 1] = chw[hw + i];
        rgb[3 * i + 2] = chw[2 * hw + i];
    }
    let buf = image::RgbImage::from_raw(w as u32, h as u32, rgb).ok_or_else(|| {
        DataError::InvalidConfig {
            name: "resize",
            value: format!("{h}x{w}"),
            reason: "inconsistent image buffer".into(),
        }
    })?;
    let out = image::imageops::resize(
        &buf,
        nw as u32,
        nh as u32,
        image::imageops::FilterType::Triangle,
    );
    Image::from_rgb_hwc(nh, nw, out.as_raw())
}
