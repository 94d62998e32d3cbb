//! Grad-CAM and Guided Grad-CAM (Selvaraju et al., 2017), at Captum's
//! numbers (`LayerGradCam`, `GuidedGradCam`), and the upsampling that puts a
//! layer's map on the input (PyTorch's `F.interpolate`).

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use allcnn_models::{AllCnn, LayerName, ReluRule, StandardRelu};
use candle_core::{Tensor, Var};

use crate::error::{CandleContext, VizError};
use crate::methods::{model_input, target_values, GuidedBackprop};
use crate::target::{layer_shape, Target};

/// How a coarse map is brought to the input's size, as PyTorch's
/// `F.interpolate` (`align_corners=False`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Interpolation {
    /// Each output pixel takes the input pixel `floor(i * in / out)`
    /// (PyTorch's `"nearest"`, Captum's default for Guided Grad-CAM).
    Nearest,
    /// Bilinear between pixel centres, edges clamped (PyTorch's
    /// `"bilinear"`); smoother, for display.
    #[default]
    Bilinear,
}

impl Interpolation {
    /// `nearest` or `bilinear`.
    pub fn name(self) -> &'static str {
        match self {
            Interpolation::Nearest => "nearest",
            Interpolation::Bilinear => "bilinear",
        }
    }
}

impl fmt::Display for Interpolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Interpolation {
    type Err = VizError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "nearest" => Ok(Interpolation::Nearest),
            "bilinear" => Ok(Interpolation::Bilinear),
            _ => Err(VizError::InvalidArgument(format!(
                "unknown interpolation `{s}`; use nearest or bilinear"
            ))),
        }
    }
}

/// Resizes `map` `[N, C, h, w]` to `[N, C, size.0, size.1]` as PyTorch's
/// `F.interpolate(map, size, mode)` does (`align_corners=False`), on the
/// map's device.
///
/// # Errors
/// [`VizError::BadTensor`] for a map that is not 4-D or an empty size.
pub fn interpolate(
    map: &Tensor,
    size: (usize, usize),
    mode: Interpolation,
) -> Result<Tensor, VizError> {
    let bad = || VizError::BadTensor {
        what: "map to interpolate".into(),
        expected: "[N, C, h, w] with h, w > 0, to a non-empty size".into(),
        got: map.dims().to_vec(),
    };
    let (n, c, h, w) = map.dims4().map_err(|_| bad())?;
    let (oh, ow) = size;
    if h == 0 || w == 0 || oh == 0 || ow == 0 {
        return Err(bad());
    }
    if (h, w) == size {
        return Ok(map.clone());
    }
    let v: Vec<f32> = map
        .to_dtype(candle_core::DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .context(|| "reading the map to interpolate".into())?;
    // PyTorch's source index for each output index, per axis.
    let nearest = |out: usize, inp: usize| -> Vec<usize> {
        let scale = inp as f32 / out as f32;
        (0..out)
            .map(|i| ((i as f32 * scale).floor() as usize).min(inp - 1))
            .collect()
    };
    let linear = |out: usize, inp: usize| -> Vec<(usize, usize, f32)> {
        let scale = inp as f32 / out as f32;
        (0..out)
            .map(|i| {
                let src = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(inp - 1);
                let i1 = (i0 + 1).min(inp - 1);
                (i0, i1, src - i0 as f32)
            })
            .collect()
    };
    let mut out = Vec::with_capacity(n * c * oh * ow);
    for plane in v.chunks_exact(h * w) {
        match mode {
            Interpolation::Nearest => {
                let (ys, xs) = (nearest(oh, h), nearest(ow, w));
                for &y in &ys {
                    out.extend(xs.iter().map(|&x| plane[y * w + x]));
                }
            }
            Interpolation::Bilinear => {
                let (ys, xs) = (linear(oh, h), linear(ow, w));
                for &(y0, y1, ly) in &ys {
                    for &(x0, x1, lx) in &xs {
                        let top = (1.0 - lx) * plane[y0 * w + x0] + lx * plane[y0 * w + x1];
                        let bottom = (1.0 - lx) * plane[y1 * w + x0] + lx * plane[y1 * w + x1];
                        out.push((1.0 - ly) * top + ly * bottom);
                    }
                }
            }
        }
    }
    Tensor::from_vec(out, (n, c, oh, ow), map.device())
        .context(|| format!("the {mode}-interpolated map"))
}

/// The layer Grad-CAM uses when none is named: the last convolution before
/// the class convolution (`conv8` of All-CNN-C, a 6x6 map of 192 channels),
/// or the only one.
pub fn default_cam_layer(model: &AllCnn) -> LayerName {
    let convs = model
        .layer_names()
        .into_iter()
        .filter(|l| matches!(l, LayerName::Conv(_)))
        .count();
    LayerName::Conv(convs.saturating_sub(1).max(1))
}

/// Grad-CAM: the activations `A` of a convolution (after its ReLU) weighted
/// by the spatial mean of the target's gradient with respect to them,
/// summed over channels, `cam = sum_k mean_xy(dT/dA_k) * A_k`, and by
/// default rectified. Captum's `LayerGradCam` on that layer's ReLU module.
///
/// The map has the layer's resolution, `[N, 1, h, w]`; bring it to the
/// input with [`interpolate`] (or use [`Method::GradCam`], which does).
///
/// [`Method::GradCam`]: crate::Method::GradCam
#[derive(Debug, Clone, Copy)]
pub struct GradCam<'a> {
    model: &'a AllCnn,
    layer: LayerName,
    relu: bool,
}

impl<'a> GradCam<'a> {
    /// Grad-CAM of `layer` (a `conv{i}`, taken after its ReLU) of `model`,
    /// rectified as in the paper.
    pub fn new(model: &'a AllCnn, layer: LayerName) -> Self {
        Self {
            model,
            layer,
            relu: true,
        }
    }

    /// Whether negative values of the map are set to zero (the paper's
    /// Grad-CAM; Captum's `relu_attributions`, which defaults to off there).
    pub fn relu_attributions(mut self, on: bool) -> Self {
        self.relu = on;
        self
    }

    /// The map of every image `[N, 1, h, w]` at the layer's resolution.
    ///
    /// # Errors
    /// An invalid target, a layer the network does not have or that is not a
    /// convolution, a hidden-unit target at or before the layer (the signal
    /// must flow back through it), or a candle error naming the step.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        let model = self.model;
        target.validate(model, input.dims())?;
        let x = model_input(model, input)?;
        let (act, grad) = layer_gradient(model, self.layer, &x, target, "grad-cam")?;
        let cam = grad
            .mean_keepdim((2, 3))
            .and_then(|g| g.broadcast_mul(&act))
            .and_then(|t| t.sum_keepdim(1))
            .context(|| format!("weighting the {} activations", self.layer))?;
        if self.relu {
            cam.relu().context(|| "rectifying the map".into())
        } else {
            Ok(cam)
        }
    }
}

/// Guided Grad-CAM: guided backpropagation multiplied pixel by pixel by the
/// rectified Grad-CAM map of `layer` upsampled to the input
/// ([`Interpolation::Nearest`] by default, as Captum's `GuidedGradCam`).
/// `[N, C, H, W]`, signed.
#[derive(Debug, Clone, Copy)]
pub struct GuidedGradCam<'a> {
    model: &'a AllCnn,
    layer: LayerName,
    interpolation: Interpolation,
}

impl<'a> GuidedGradCam<'a> {
    /// Guided Grad-CAM of `layer` of `model`.
    pub fn new(model: &'a AllCnn, layer: LayerName) -> Self {
        Self {
            model,
            layer,
            interpolation: Interpolation::Nearest,
        }
    }

    /// How the Grad-CAM map is upsampled.
    pub fn interpolation(mut self, mode: Interpolation) -> Self {
        self.interpolation = mode;
        self
    }

    /// See [`crate::Attribute::attribute`].
    ///
    /// # Errors
    /// As [`GradCam::attribute`].
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        let cam = GradCam::new(self.model, self.layer).attribute(input, target)?;
        let (_, _, h, w) = input.dims4().context(|| "input shape".into())?;
        let cam = interpolate(&cam, (h, w), self.interpolation)?;
        GuidedBackprop::new(self.model)
            .attribute(input, target)?
            .broadcast_mul(&cam)
            .context(|| "guided backprop times Grad-CAM".into())
    }
}

/// The activations of convolution `layer` (after its ReLU) for `x` (on the
/// model's device, f32) and the gradient of the target's sum with respect
/// to them, both `[N, C, h, w]`. `method` names the caller in errors.
///
/// # Errors
/// A layer the network does not have or that is not a convolution, a
/// hidden-unit target at or before the layer, or a candle error.
pub(crate) fn layer_gradient(
    model: &AllCnn,
    layer: LayerName,
    x: &Tensor,
    target: &Target,
    method: &str,
) -> Result<(Tensor, Tensor), VizError> {
    let (_, _, h, w) = x.dims4().context(|| "input shape".into())?;
    layer_shape(model, layer, (h, w))?;
    if !matches!(layer, LayerName::Conv(_)) {
        return Err(VizError::InvalidArgument(format!(
            "{method} needs a convolution (conv1..conv{}), not {layer}",
            model.spec().convs().len(),
        )));
    }
    let tap = Tap {
        layer,
        slot: Mutex::new(None),
    };
    let objective = target_values(model, &tap, x, target)?
        .sum_all()
        .context(|| "summing the target over the batch".into())?;
    let Some((act, var)) = tap.slot.into_inner().unwrap_or_else(|p| p.into_inner()) else {
        return Err(VizError::UnsupportedTarget {
            method: method.into(),
            reason: format!(
                "the target's layer {} comes before the layer {layer}; name a later target or an earlier layer",
                target.layer().map_or("-".into(), |l| l.to_string()),
            ),
        });
    };
    let grads = objective
        .backward()
        .context(|| format!("backward pass to {layer}"))?;
    let grad = match grads.get(var.as_tensor()) {
        Some(g) => g.clone(),
        None => act.zeros_like().context(|| "an all-zero gradient".into())?,
    };
    Ok((act, grad))
}

/// The standard ReLU everywhere, and at `layer` a zero variable added to its
/// output: the gradient with respect to that variable is the gradient with
/// respect to the layer's activations (candle keeps gradients of variables
/// only).
struct Tap {
    layer: LayerName,
    slot: Mutex<Option<(Tensor, Var)>>,
}

impl ReluRule for Tap {
    fn relu(&self, layer: LayerName, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = StandardRelu.relu(layer, x)?;
        if layer != self.layer {
            return Ok(y);
        }
        let var = Var::zeros(y.shape(), y.dtype(), y.device())?;
        let out = (&y + var.as_tensor())?;
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((y.detach(), var));
        Ok(out)
    }
}
