//! Occlusion (Zeiler and Fergus, 2014): slide a patch of baseline values
//! over the image and record how much the target drops; Captum's
//! `Occlusion` with a window spanning every channel.

use allcnn_models::{AllCnn, StandardRelu};
use candle_core::{DType, Tensor};

use crate::error::{CandleContext, VizError};
use crate::methods::{fix_target, model_input, repeat_target, target_values};
use crate::target::Target;

/// Occlusion: for every position of a `window` moved by `stride` (all
/// channels at once), the drop `T(x) - T(x with the window set to
/// baseline)`, added to every pixel of the window and divided by how many
/// windows cover the pixel. Where the last step overshoots the image the
/// window is cut at the edge, so every pixel is covered (Captum's rule:
/// `ceil((side - window) / stride) + 1` positions per axis). Signed,
/// `[N, C, H, W]`, the same in every channel. Needs forward passes only:
/// `positions x N` images, in batches of `batch`.
#[derive(Debug, Clone, Copy)]
pub struct Occlusion<'a> {
    model: &'a AllCnn,
    window: (usize, usize),
    stride: (usize, usize),
    baseline: f32,
    batch: usize,
}

impl<'a> Occlusion<'a> {
    /// An 8x8 window moved 4 pixels at a time, replaced by zeros, 256 images
    /// per pass.
    pub fn new(model: &'a AllCnn) -> Self {
        Self {
            model,
            window: (8, 8),
            stride: (4, 4),
            baseline: 0.0,
            batch: 256,
        }
    }

    /// The window's height and width.
    pub fn window(mut self, h: usize, w: usize) -> Self {
        self.window = (h, w);
        self
    }

    /// How far the window moves down and across.
    pub fn stride(mut self, y: usize, x: usize) -> Self {
        self.stride = (y, x);
        self
    }

    /// The value the window is filled with.
    pub fn baseline(mut self, value: f32) -> Self {
        self.baseline = value;
        self
    }

    /// Images per forward pass (at least 1).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// The window positions along an axis of length `side`.
    fn starts(
        side: usize,
        window: usize,
        stride: usize,
        axis: &str,
    ) -> Result<Vec<usize>, VizError> {
        if window == 0 || window > side {
            return Err(VizError::InvalidArgument(format!(
                "occlusion window {axis} {window} must be between 1 and the image {axis} {side}"
            )));
        }
        if stride == 0 || (stride > window && window < side) {
            return Err(VizError::InvalidArgument(format!(
                "occlusion stride {axis} {stride} must be between 1 and the window {axis} {window}, or pixels are never occluded"
            )));
        }
        let count = (side - window).div_ceil(stride) + 1;
        Ok((0..count).map(|k| k * stride).collect())
    }

    /// See [`crate::Attribute::attribute`].
    ///
    /// # Errors
    /// As [`crate::Attribute::attribute`]; also a window or stride that does
    /// not fit the image.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        let model = self.model;
        target.validate(model, input.dims())?;
        if !self.baseline.is_finite() {
            return Err(VizError::InvalidArgument(format!(
                "occlusion baseline {}: must be a finite number",
                self.baseline
            )));
        }
        let x = model_input(model, input)?;
        let (n, c, h, w) = x.dims4().context(|| "input shape".into())?;
        let ys = Self::starts(h, self.window.0, self.stride.0, "height")?;
        let xs = Self::starts(w, self.window.1, self.stride.1, "width")?;
        let target = fix_target(model, &x, target)?;
        let relu = StandardRelu;
        let values = |batch: &Tensor, copies: usize| -> Result<Vec<f32>, VizError> {
            target_values(model, &relu, batch, &repeat_target(&target, copies))?
                .to_dtype(DType::F32)
                .and_then(|t| t.to_vec1())
                .context(|| "reading the target values".into())
        };
        let clean = values(&x, 1)?;
        let pixels: Vec<f32> = x
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .context(|| "reading the input".into())?;
        let windows: Vec<(usize, usize)> = ys
            .iter()
            .flat_map(|&y| xs.iter().map(move |&x| (y, x)))
            .collect();
        let window_rows = |y0: usize| y0..(y0 + self.window.0).min(h);
        let window_cols = |x0: usize| x0..(x0 + self.window.1).min(w);
        let mut total = vec![0f32; n * h * w];
        let mut count = vec![0u32; h * w];
        let per_pass = (self.batch / n.max(1)).max(1);
        for chunk in windows.chunks(per_pass) {
            let mut occluded = Vec::with_capacity(chunk.len() * pixels.len());
            for &(y0, x0) in chunk {
                let start = occluded.len();
                occluded.extend_from_slice(&pixels);
                for i in 0..n * c {
                    let plane = start + i * h * w;
                    for y in window_rows(y0) {
                        occluded[plane + y * w + x0..plane + y * w + window_cols(x0).end]
                            .fill(self.baseline);
                    }
                }
            }
            let batch = Tensor::from_vec(occluded, (chunk.len() * n, c, h, w), x.device())
                .context(|| "the occluded images".into())?;
            let hidden = values(&batch, chunk.len())?;
            for (k, &(y0, x0)) in chunk.iter().enumerate() {
                for y in window_rows(y0) {
                    for xx in window_cols(x0) {
                        count[y * w + xx] += 1;
                        for i in 0..n {
                            total[(i * h + y) * w + xx] += clean[i] - hidden[k * n + i];
                        }
                    }
                }
            }
        }
        let mut map = Vec::with_capacity(n * c * h * w);
        for i in 0..n {
            let plane: Vec<f32> = (0..h * w)
                .map(|p| total[i * h * w + p] / count[p] as f32)
                .collect();
            for _ in 0..c {
                map.extend_from_slice(&plane);
            }
        }
        Tensor::from_vec(map, (n, c, h, w), x.device()).context(|| "the occlusion map".into())
    }
}
