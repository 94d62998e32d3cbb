//! Image files as a model's input batch, for prediction: decode, bring to
//! the input size as at evaluation time, apply the fitted preprocessing.
//!
//! ```no_run
//! use allcnn_data::{input, Preprocessing};
//! let pre = Preprocessing::scale(); // or the one recorded in the weights
//! let batch = input::load_batch(&["cat.png", "dog.jpg"], 32, &pre, &candle_core::Device::Cpu)?;
//! assert_eq!(batch.images.dims(), &[2, 3, 32, 32]);
//! # Ok::<(), allcnn_data::DataError>(())
//! ```

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::augment::resize_u8;
use crate::folder::{decode_keeping_opacity, open_error};
use crate::{Augmentation, DataError, Image, Preprocessing};

/// The smallest input side that [`fit`] centre-crops to (ImageNet's);
/// smaller inputs (CIFAR's 32 px) are resized whole.
pub const CENTRE_CROP_FROM: usize = 64;

/// The side [`fit`] resizes an image's shorter side to before cropping it
/// to a `side` input of [`CENTRE_CROP_FROM`] or more: 256/224 of it.
pub const fn resize_before_crop(side: usize) -> usize {
    side * 256 / 224
}

/// Brings an RGB image to a model's `side` x `side` input. Small inputs
/// (CIFAR's 32 px, below 64) keep an image of that size and resize any
/// other (bilinear). Larger ones (ImageNet) take the evaluation transform
/// of [`Augmentation::CenterCrop`] for that side, as
/// [`Augmentation::imagenet_eval`] for 224: the shorter side resized to
/// 256/224 of the input, then the centre cropped, whatever the image's size.
///
/// # Errors
/// [`DataError::InvalidConfig`] for a zero `side` or a non-RGB image.
pub fn fit(img: &Image, side: usize) -> Result<Image, DataError> {
    if side == 0 || img.channels() != 3 {
        return Err(DataError::InvalidConfig {
            name: "input size",
            value: format!("{side} px for a {}-channel image", img.channels()),
            reason: "needs a non-zero size and an RGB image".into(),
        });
    }
    if side < CENTRE_CROP_FROM {
        return resize_u8(img, side, side);
    }
    let eval = Augmentation::CenterCrop {
        resize: resize_before_crop(side),
        crop: side,
    };
    let params = eval.sample(0, 0, 0, img.height(), img.width());
    eval.apply_u8(&params, img.clone())
}

/// A batch made by [`load_batch`].
#[derive(Debug, Clone)]
pub struct InputBatch {
    /// The preprocessed images, `[N, 3, side, side]` f32.
    pub images: Tensor,
    /// Each file's size as decoded, `(height, width)` as [`Image`] gives
    /// it: those that differ from the input were brought to it by [`fit`].
    pub original_sizes: Vec<(usize, usize)>,
    /// Whether each file had pixels that are not fully opaque (a PNG with
    /// alpha): the alpha is dropped, as PIL's `convert("RGB")` does, so the
    /// model sees the colours stored under transparent pixels, which a
    /// viewer does not show.
    pub transparent: Vec<bool>,
}

impl InputBatch {
    /// The indices of the images that were not of the input size.
    pub fn resized(&self) -> impl Iterator<Item = usize> + '_ {
        let side = self.images.dims().last().copied().unwrap_or(0);
        self.original_sizes
            .iter()
            .enumerate()
            .filter(move |(_, &hw)| hw != (side, side))
            .map(|(i, _)| i)
    }
}

/// Decodes `paths` (JPEG or PNG), [`fit`]s each to `side` and applies `pre`.
///
/// # Errors
/// [`DataError`]s naming the file that does not decode, and those of
/// [`Preprocessing::apply`].
pub fn load_batch<P: AsRef<Path>>(
    paths: &[P],
    side: usize,
    pre: &Preprocessing,
    device: &Device,
) -> Result<InputBatch, DataError> {
    let mut pixels = Vec::with_capacity(paths.len() * 3 * side * side);
    let mut original_sizes = Vec::with_capacity(paths.len());
    let mut transparent = Vec::with_capacity(paths.len());
    for p in paths {
        let p = p.as_ref();
        let bytes = std::fs::read(p).map_err(|e| open_error(p, e))?;
        let (img, alpha) = decode_keeping_opacity(&bytes, p)?;
        original_sizes.push((img.height(), img.width()));
        transparent.push(alpha);
        pixels.extend_from_slice(fit(&img, side)?.as_chw());
    }
    let t = Tensor::from_vec(pixels, (paths.len(), 3, side, side), device)
        .map_err(|e| DataError::candle("building the input batch", e))?;
    Ok(InputBatch {
        images: pre.apply(&t)?,
        original_sizes,
        transparent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize) -> Image {
        let data: Vec<u8> = (0..3 * w * h).map(|i| (i % 251) as u8).collect();
        Image::from_chw(3, h, w, data).unwrap()
    }

    /// What the ImageNet evaluation loader does to an image (the
    /// `imagenet_eval` policy's parameters applied to its bytes).
    fn evaluated(img: &Image) -> Image {
        let eval = Augmentation::imagenet_eval();
        let p = eval.sample(7, 3, 11, img.height(), img.width());
        eval.apply_u8(&p, img.clone()).unwrap()
    }

    #[test]
    fn fit_is_the_evaluation_transform() {
        // CIFAR: kept at its size, resized otherwise.
        let same = ramp(32, 32);
        assert_eq!(fit(&same, 32).unwrap(), same);
        let small = fit(&ramp(40, 28), 32).unwrap();
        assert_eq!((small.height(), small.width()), (32, 32));
        assert_eq!(small, resize_u8(&ramp(40, 28), 32, 32).unwrap());
        // ImageNet: the evaluation loader's centre crop, also for an image
        // that is already 224 x 224 (resized to 256 first).
        for (w, h) in [(512, 300), (224, 224), (300, 640)] {
            let img = ramp(w, h);
            let fitted = fit(&img, 224).unwrap();
            assert_eq!((fitted.height(), fitted.width()), (224, 224));
            assert_eq!(fitted, evaluated(&img), "{w}x{h}");
        }
        assert_ne!(fit(&ramp(224, 224), 224).unwrap(), ramp(224, 224));
        // Not RGB, or no size: refused.
        let grey = Image::from_chw(1, 32, 32, vec![0; 32 * 32]).unwrap();
        assert!(fit(&grey, 32).is_err());
        assert!(fit(&same, 0).is_err());
    }
}
