//! DeepLift (Shrikumar et al., 2017) with the rescale rule, and
//! DeepLiftShap (its average over a set of baselines), as Captum's
//! `DeepLift` and `DeepLiftShap`.

use std::sync::Mutex;

use allcnn_models::kernels::relu::relu_with;
use allcnn_models::{AllCnn, LayerName, ReluRule};
use candle_core::{DType, Tensor, Var};

use crate::error::{CandleContext, VizError};
use crate::integrated::Baseline;
use crate::methods::{fix_target, model_input, target_values};
use crate::relu::BackwardRule;
use crate::target::Target;

/// Captum's threshold below which a ReLU's input difference counts as zero
/// and the ordinary gradient is used instead of the ratio.
const EPS: f64 = 1e-10;

/// DeepLift with the rescale rule: the target's difference from its value at
/// a baseline, `T(x) - T(x0)`, shared out over the input. Every ReLU passes
/// the signal back times `(relu(z) - relu(z0)) / (z - z0)`, the slope of the
/// secant between its input `z` at `x` and `z0` at the baseline (the
/// gradient `[z > 0]` where the two are within 1e-10); convolutions pass it
/// back as the gradient does. The map is that signal at the input times
/// `x - x0`, so it sums to `T(x) - T(x0)` over each image. Signed,
/// `[N, C, H, W]`.
///
/// Networks with max-pooling are refused: Captum's max-pool rule is not
/// implemented here.
#[derive(Debug, Clone)]
pub struct DeepLift<'a> {
    model: &'a AllCnn,
    baseline: Baseline,
}

impl<'a> DeepLift<'a> {
    /// The method on `model`, with a zero baseline (Captum's default).
    pub fn new(model: &'a AllCnn) -> Self {
        Self {
            model,
            baseline: Baseline::default(),
        }
    }

    /// The reference input `x0`.
    pub fn baseline(mut self, baseline: Baseline) -> Self {
        self.baseline = baseline;
        self
    }

    /// See [`crate::Attribute::attribute`].
    ///
    /// # Errors
    /// As [`crate::Attribute::attribute`]; also a baseline of the wrong
    /// shape and a network with max-pooling.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        let model = self.model;
        check_model(model, "deep-lift")?;
        target.validate(model, input.dims())?;
        let x = model_input(model, input)?;
        let x0 = self
            .baseline
            .tensor_for(&x)?
            .broadcast_as(x.shape())
            .and_then(|b| b.contiguous())
            .context(|| "the baseline at the input's shape".into())?;
        let target = fix_target(model, &x, target)?;
        deep_lift(model, &x, &x0, &target)
    }
}

impl crate::Attribute for DeepLift<'_> {
    fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        DeepLift::attribute(self, input, target)
    }
}

/// DeepLiftShap: [`DeepLift`] against each of a set of baselines, averaged
/// (an estimate of SHAP values when the baselines are drawn from the data).
/// Captum's `DeepLiftShap`. Signed, `[N, C, H, W]`; one pass of `N` images
/// per baseline.
#[derive(Debug, Clone)]
pub struct DeepLiftShap<'a> {
    model: &'a AllCnn,
    baselines: Tensor,
}

impl<'a> DeepLiftShap<'a> {
    /// The method on `model` with `baselines` `[B, C, H, W]` (B >= 1).
    pub fn new(model: &'a AllCnn, baselines: Tensor) -> Self {
        Self { model, baselines }
    }

    /// See [`crate::Attribute::attribute`].
    ///
    /// # Errors
    /// As [`crate::Attribute::attribute`]; also baselines that do not match
    /// the input's `[C, H, W]` and a network with max-pooling.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        let model = self.model;
        check_model(model, "deep-lift-shap")?;
        target.validate(model, input.dims())?;
        let x = model_input(model, input)?;
        let (baselines, count) = baseline_set(model, &x, &self.baselines, "DeepLiftShap")?;
        let target = fix_target(model, &x, target)?;
        let mut sum: Option<Tensor> = None;
        for j in 0..count {
            let x0 = baselines
                .narrow(0, j, 1)
                .and_then(|b| b.broadcast_as(x.shape()))
                .and_then(|b| b.contiguous())
                .context(|| format!("baseline {j}"))?;
            let map = deep_lift(model, &x, &x0, &target)?;
            sum = Some(match sum {
                None => map,
                Some(s) => (s + map).context(|| "summing over the baselines".into())?,
            });
        }
        let sum = sum.expect("at least one baseline");
        (sum / count as f64).context(|| "the mean over the baselines".into())
    }
}

impl crate::Attribute for DeepLiftShap<'_> {
    fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        DeepLiftShap::attribute(self, input, target)
    }
}

/// `baselines` `[B, C, H, W]` on the model's device, checked against the
/// input `x`, with `B`.
pub(crate) fn baseline_set(
    model: &AllCnn,
    x: &Tensor,
    baselines: &Tensor,
    method: &str,
) -> Result<(Tensor, usize), VizError> {
    let (_, c, h, w) = x.dims4().context(|| "input shape".into())?;
    match baselines.dims() {
        &[b, bc, bh, bw] if b > 0 && (bc, bh, bw) == (c, h, w) => {
            Ok((model_input(model, baselines)?, b))
        }
        got => Err(VizError::BadTensor {
            what: format!("{method} baselines"),
            expected: format!("[B, {c}, {h}, {w}] with B >= 1"),
            got: got.to_vec(),
        }),
    }
}

fn check_model(model: &AllCnn, method: &str) -> Result<(), VizError> {
    let pools = model
        .layer_names()
        .iter()
        .any(|l| matches!(l, LayerName::Pool(_)));
    if pools {
        return Err(VizError::UnsupportedModel {
            method: method.to_string(),
            model: model.spec().name.clone(),
            reason: "it has max-pooling layers, and only the rescale rule of ReLUs is \
                     implemented; use a network without pooling (all-cnn-*, strided-cnn-*) \
                     or another method"
                .into(),
        });
    }
    Ok(())
}

/// Keeps every ReLU's input (detached) on the baseline's pass.
#[derive(Default)]
struct Recorder(Mutex<Vec<(LayerName, Tensor)>>);

impl ReluRule for Recorder {
    fn relu(&self, layer: LayerName, x: &Tensor) -> candle_core::Result<Tensor> {
        self.0
            .lock()
            .expect("the recorder's lock is never poisoned")
            .push((layer, x.detach()));
        relu_with(x, BackwardRule::Gradient)
    }
}

/// The rescale rule at every ReLU, against the baseline's ReLU inputs.
struct Rescale(Vec<(LayerName, Tensor)>);

impl ReluRule for Rescale {
    fn relu(&self, layer: LayerName, z: &Tensor) -> candle_core::Result<Tensor> {
        let z0 = self
            .0
            .iter()
            .find(|(l, _)| *l == layer)
            .map(|(_, t)| t)
            .ok_or_else(|| candle_core::Error::Msg(format!("no baseline value at {layer}")))?;
        let zd = z.detach();
        let y = zd.relu()?;
        let dz = (&zd - z0)?;
        let dy = (&y - z0.relu()?)?;
        let gradient = zd.gt(0.0)?.to_dtype(DType::F32)?;
        let secant = dz.abs()?.lt(EPS)?.where_cond(&gradient, &(dy / &dz)?)?;
        // The value of relu(z), with d/dz = the secant slope.
        let scaled = z.mul(&secant)?;
        y + (&scaled - scaled.detach())?
    }
}

/// The DeepLift map of `x` against `x0` (both `[N, C, H, W]`, on the
/// model's device) for a fixed target.
fn deep_lift(model: &AllCnn, x: &Tensor, x0: &Tensor, target: &Target) -> Result<Tensor, VizError> {
    let recorder = Recorder::default();
    model.pass().relu(&recorder).logits(x0)?;
    let rescale = Rescale(
        recorder
            .0
            .into_inner()
            .expect("the recorder's lock is never poisoned"),
    );
    let var = Var::from_tensor(x).context(|| "the input as a variable".into())?;
    let objective = target_values(model, &rescale, var.as_tensor(), target)?
        .sum_all()
        .context(|| "summing the target over the batch".into())?;
    let grads = objective
        .backward()
        .context(|| "DeepLift's backward pass".into())?;
    let multipliers = match grads.get(var.as_tensor()) {
        Some(g) => g.clone(),
        None => x.zeros_like().context(|| "an all-zero map".into())?,
    };
    (x - x0)
        .and_then(|d| d * multipliers)
        .context(|| "multipliers times (input - baseline)".into())
}
