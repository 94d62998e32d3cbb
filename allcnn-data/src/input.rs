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

use crate::augment::{crop_u8, resize_u8, resized_shorter};
use crate::folder::decode_image;
use crate::{DataError, Image, Preprocessing};

/// Brings an image to a model's `side` x `side` input: an image of that
/// size is kept; for small inputs (CIFAR's 32 px, below 64) any other size
/// is resized (bilinear); for larger ones (ImageNet) the shorter side is
/// resized to 256/224 of the input and the centre cropped, as at
/// evaluation time.
///
/// # Errors
/// [`DataError::InvalidConfig`] for a zero `side` or a non-RGB image.
pub fn fit(img: &Image, side: usize) -> Result<Image, DataError> {
    if (img.height(), img.width()) == (side, side) {
        return Ok(img.clone());
    }
    if side < 64 {
        return resize_u8(img, side, side);
    }
    let short = side * 256 / 224;
    let (h, w) = resized_shorter(img.height(), img.width(), short);
    let r = resize_u8(img, h, w)?;
    crop_u8(&r, (h - side) / 2, (w - side) / 2, side, side)
}

/// A batch made by [`load_batch`].
#[derive(Debug, Clone)]
pub struct InputBatch {
    /// The preprocessed images, `[N, 3, side, side]` f32.
    pub images: Tensor,
    /// Each file's size as decoded, `(width, height)`: those that differ
    /// from the input were brought to it by [`fit`].
    pub original_sizes: Vec<(usize, usize)>,
}

impl InputBatch {
    /// The indices of the images that were not of the input size.
    pub fn resized(&self) -> impl Iterator<Item = usize> + '_ {
        let side = self.images.dims().last().copied().unwrap_or(0);
        self.original_sizes
            .iter()
            .enumerate()
            .filter(move |(_, &(w, h))| (w, h) != (side, side))
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
    for p in paths {
        let img = decode_image(p.as_ref())?;
        original_sizes.push((img.width(), img.height()));
        pixels.extend_from_slice(fit(&img, side)?.as_chw());
    }
    let t = Tensor::from_vec(pixels, (paths.len(), 3, side, side), device)
        .map_err(|e| DataError::candle("building the input batch", e))?;
    Ok(InputBatch {
        images: pre.apply(&t)?,
        original_sizes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize) -> Image {
        let data: Vec<u8> = (0..3 * w * h).map(|i| (i % 251) as u8).collect();
        Image::from_chw(3, h, w, data).unwrap()
    }

    #[test]
    fn fit_keeps_resizes_or_crops_as_at_evaluation() {
        let same = ramp(32, 32);
        assert_eq!(fit(&same, 32).unwrap(), same);
        let small = fit(&ramp(40, 28), 32).unwrap();
        assert_eq!((small.height(), small.width()), (32, 32));
        assert_eq!(small, resize_u8(&ramp(40, 28), 32, 32).unwrap());
        // ImageNet: shorter side to 256/224 of 224 = 256, then the centre.
        let big = ramp(512, 300);
        let fitted = fit(&big, 224).unwrap();
        assert_eq!((fitted.height(), fitted.width()), (224, 224));
        let (h, w) = resized_shorter(300, 512, 256);
        assert_eq!(h, 256);
        let r = resize_u8(&big, h, w).unwrap();
        assert_eq!(fitted, crop_u8(&r, 16, (w - 224) / 2, 224, 224).unwrap());
    }
}
