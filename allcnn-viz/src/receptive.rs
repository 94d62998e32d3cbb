//! The exact receptive field of a unit, computed from the [`ArchSpec`], and
//! cropping the matching patch out of an image.

use allcnn_models::{ArchSpec, LayerName};
use candle_core::Tensor;

use crate::error::{CandleContext, VizError};

/// The receptive field of the units of one layer: unit `(y, x)` sees input
/// rows `offset + y * jump .. offset + y * jump + size` (and the same for
/// columns). `offset` may be negative: the field then reaches into the
/// zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceptiveField {
    /// The field's side length in input pixels.
    pub size: usize,
    /// The distance in input pixels between neighbouring units (the product
    /// of the strides).
    pub jump: usize,
    /// The first input row (column) seen by unit 0.
    pub offset: isize,
}

/// A square window of the input: rows `y0 .. y0 + size`, columns
/// `x0 .. x0 + size`; it may reach outside the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First row (may be negative).
    pub y0: isize,
    /// First column (may be negative).
    pub x0: isize,
    /// Side length.
    pub size: usize,
}

impl ReceptiveField {
    /// The receptive field of `layer` (`conv{i}` or `pool{j}`) of `spec`.
    /// Convolutions count with their kernel, stride and padding, max-pools as
    /// 3x3 / stride 2 / padding 1, dropout not at all.
    ///
    /// # Errors
    /// [`VizError::NoSuchLayer`] when the spec has no such layer.
    pub fn of(spec: &ArchSpec, layer: LayerName) -> Result<Self, VizError> {
        let mut rf = ReceptiveField {
            size: 1,
            jump: 1,
            offset: 0,
        };
        let mut names = Vec::new();
        for l in spec.spatial_layers() {
            let (name, k, s, p) = (l.name, l.kernel, l.stride, l.padding);
            rf = ReceptiveField {
                size: rf.size + (k - 1) * rf.jump,
                jump: rf.jump * s,
                offset: rf.offset - (p * rf.jump) as isize,
            };
            if name == layer {
                return Ok(rf);
            }
            names.push(name.to_string());
        }
        Err(VizError::NoSuchLayer {
            model: spec.name.clone(),
            layer: layer.to_string(),
            available: names.join(", "),
        })
    }

    /// The input window seen by unit `(y, x)`.
    pub fn window(&self, y: usize, x: usize) -> Window {
        Window {
            y0: self.offset + (y * self.jump) as isize,
            x0: self.offset + (x * self.jump) as isize,
            size: self.size,
        }
    }
}

/// Crops `window` out of `image` `[C, H, W]`; the parts of the window
/// outside the image are zero. Returns `[C, size, size]`.
///
/// # Errors
/// [`VizError::BadTensor`] when `image` is not rank 3, or a candle error.
pub fn crop(image: &Tensor, window: Window) -> Result<Tensor, VizError> {
    let (_, h, w) = image.dims3().map_err(|_| VizError::BadTensor {
        what: "image to crop".into(),
        expected: "[C, H, W]".into(),
        got: image.dims().to_vec(),
    })?;
    let ctx = || {
        format!(
            "cropping {window:?} from an image of shape {:?}",
            image.dims()
        )
    };
    let mut t = image.clone();
    for (dim, start, len) in [(1, window.y0, h), (2, window.x0, w)] {
        let end = start + window.size as isize;
        let lo = start.clamp(0, len as isize) as usize;
        let hi = end.clamp(0, len as isize) as usize;
        let before = (lo as isize - start) as usize;
        let after = (end - hi as isize) as usize;
        if hi > lo {
            t = t.narrow(dim, lo, hi - lo).context(ctx)?;
            t = t.pad_with_zeros(dim, before, after).context(ctx)?;
        } else {
            // The window misses the image along this axis entirely.
            let mut dims = t.dims().to_vec();
            dims[dim] = window.size;
            t = Tensor::zeros(dims, t.dtype(), t.device()).context(ctx)?;
        }
    }
    Ok(t)
}
