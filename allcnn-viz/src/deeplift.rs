//! DeepLift (Shrikumar et al., 2017) with the rescale rule, and
//! DeepLiftShap (its average over a set of baselines), as Captum's
//! `DeepLift` and `DeepLiftShap`, and their layer forms (`LayerDeepLift`,
//! `LayerDeepLiftShap`).

use std::sync::Mutex;

use allcnn_models::kernels::pool::max_pool;
use allcnn_models::kernels::relu::relu_with;
use allcnn_models::{AllCnn, LayerName, ReluRule};
use candle_core::{DType, Tensor, Var};

use crate::error::{CandleContext, VizError};
use crate::integrated::Baseline;
use crate::methods::{as_units, fix_target, model_input, require_target_above};
use crate::relu::BackwardRule;
use crate::target::{layer_shape, Target};

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
/// Max-pools pass the signal back to each window's maximum, as the
/// gradient does (DeepLIFT's own choice), which is what Captum 0.9
/// computes: its max-pool rule (the signal times `(max(y, y0) - y0) /
/// (x - x0)`, with `y`, `y0` the pooled values) reaches only the units
/// below whose ReLU inputs at `x` and `x0` are equal, because its ReLU hook
/// reads the pool's incoming gradient before the rule replaces it. Both
/// are reproduced, so the maps equal Captum's on networks with max-pooling
/// too.
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
    /// shape.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        against_baseline(self.model, input, target, &self.baseline, None)
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
    /// the input's `[C, H, W]`.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        over_baselines(self.model, input, target, &self.baselines, None)
    }
}

impl crate::Attribute for DeepLiftShap<'_> {
    fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        DeepLiftShap::attribute(self, input, target)
    }
}

/// DeepLift of a hidden layer's units: the change of the layer's output
/// (after its ReLU) between the input and the baseline, times the DeepLift
/// signal reaching it from the target. `[N, C, h, w]`, summing to `T(x) -
/// T(x0)` per image on networks without max-pooling. Captum's
/// `LayerDeepLift` on that ReLU (layer outputs).
#[derive(Debug, Clone)]
pub struct LayerDeepLift<'a> {
    model: &'a AllCnn,
    layer: LayerName,
    baseline: Baseline,
}

impl<'a> LayerDeepLift<'a> {
    /// The method at `layer` of `model`, with a zero baseline.
    pub fn new(model: &'a AllCnn, layer: LayerName) -> Self {
        Self {
            model,
            layer,
            baseline: Baseline::default(),
        }
    }

    /// The reference input.
    pub fn baseline(mut self, baseline: Baseline) -> Self {
        self.baseline = baseline;
        self
    }

    /// The map of every image at the layer's resolution.
    ///
    /// # Errors
    /// As [`DeepLift::attribute`]; also a layer the network does not have
    /// and a hidden-unit target that is not above the layer.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        against_baseline(self.model, input, target, &self.baseline, Some(self.layer))
    }
}

/// [`LayerDeepLift`] against each of a set of baselines, averaged: the
/// layer's change times the DeepLift signal, `[N, C, h, w]`. Captum's
/// `LayerDeepLiftShap` on that ReLU (layer outputs). One pass of `N`
/// images per baseline.
#[derive(Debug, Clone)]
pub struct LayerDeepLiftShap<'a> {
    model: &'a AllCnn,
    layer: LayerName,
    baselines: Tensor,
}

impl<'a> LayerDeepLiftShap<'a> {
    /// The method at `layer` of `model` with `baselines` `[B, C, H, W]`
    /// (B >= 1).
    pub fn new(model: &'a AllCnn, layer: LayerName, baselines: Tensor) -> Self {
        Self {
            model,
            layer,
            baselines,
        }
    }

    /// The map of every image at the layer's resolution.
    ///
    /// # Errors
    /// As [`DeepLiftShap::attribute`]; also a layer the network does not
    /// have and a hidden-unit target that is not above the layer.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        over_baselines(self.model, input, target, &self.baselines, Some(self.layer))
    }
}

/// [`DeepLiftShap`] (`at` = `None`) or [`LayerDeepLiftShap`]: the mean of
/// [`deep_lift`] over the baselines.
fn over_baselines(
    model: &AllCnn,
    input: &Tensor,
    target: &Target,
    baselines: &Tensor,
    at: Option<LayerName>,
) -> Result<Tensor, VizError> {
    let method = if at.is_some() {
        "LayerDeepLiftShap"
    } else {
        "DeepLiftShap"
    };
    target.validate(model, input.dims())?;
    let x = model_input(model, input)?;
    if let Some(layer) = at {
        let (_, _, h, w) = x.dims4().context(|| "input shape".into())?;
        layer_shape(model, layer, (h, w))?;
    }
    let (baselines, count) = baseline_set(model, &x, baselines, method)?;
    let target = fix_target(model, &x, target)?;
    let mut sum: Option<Tensor> = None;
    for j in 0..count {
        let x0 = baselines
            .narrow(0, j, 1)
            .and_then(|b| b.broadcast_as(x.shape()))
            .and_then(|b| b.contiguous())
            .context(|| format!("baseline {j}"))?;
        let map = deep_lift(model, &x, &x0, &target, at)?;
        sum = Some(match sum {
            None => map,
            Some(s) => (s + map).context(|| "summing over the baselines".into())?,
        });
    }
    let sum = sum.expect("at least one baseline");
    (sum / count as f64).context(|| "the mean over the baselines".into())
}

/// [`DeepLift`] (`at` = `None`) or [`LayerDeepLift`] of `input` against
/// `baseline`: the checks, then [`deep_lift`].
fn against_baseline(
    model: &AllCnn,
    input: &Tensor,
    target: &Target,
    baseline: &Baseline,
    at: Option<LayerName>,
) -> Result<Tensor, VizError> {
    target.validate(model, input.dims())?;
    let x = model_input(model, input)?;
    if let Some(layer) = at {
        let (_, _, h, w) = x.dims4().context(|| "input shape".into())?;
        layer_shape(model, layer, (h, w))?;
    }
    let x0 = baseline.tensor_for(&x)?;
    let target = fix_target(model, &x, target)?;
    deep_lift(model, &x, &x0, &target, at)
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

/// Keeps the input of every ReLU (detached).
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

/// The halves `[0, n)` and `[n, 2n)` of a batch.
fn halves(t: &Tensor, n: usize) -> candle_core::Result<(Tensor, Tensor)> {
    Ok((t.narrow(0, 0, n)?, t.narrow(0, n, n)?))
}

/// `d/da sum(layer(a) * g)`: the layer's transposed map of `g` at `a`.
fn vjp(
    a: &Tensor,
    g: &Tensor,
    layer: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let var = Var::from_tensor(&a.detach())?;
    let objective = (layer(var.as_tensor())? * g.detach())?.sum_all()?;
    let grads = objective.backward()?;
    match grads.get(var.as_tensor()) {
        Some(d) => Ok(d.clone()),
        None => a.zeros_like(),
    }
}

/// The rescale rule's multipliers at a ReLU with input `z` (the input half
/// then the baseline half): the secant slope between the halves, or each
/// half's own gradient where they are within 1e-10; and where they are.
fn relu_multipliers(z: &Tensor, n: usize) -> candle_core::Result<(Tensor, Tensor)> {
    let (z1, z0) = halves(z, n)?;
    let dz = (&z1 - &z0)?;
    let secant = ((z1.relu()? - z0.relu()?)? / &dz)?;
    let near = dz.abs()?.lt(EPS)?;
    let own = |h: &Tensor| -> candle_core::Result<Tensor> {
        near.where_cond(&h.gt(0.0)?.to_dtype(DType::F32)?, &secant)
    };
    Ok((
        Tensor::cat(&[own(&z1)?, own(&z0)?], 0)?,
        Tensor::cat(&[&near, &near], 0)?,
    ))
}

/// A max-pool's signal at its input `a` for `g` at its output: Captum's
/// max-pool rule (with `y`, `y0` the pooled halves, `u = route_x(g1
/// (max(y, y0) - y0)) + route_x0(g0 (y - max(y, y0)))` divided by `x - x0`
/// in both halves, each half's own routing where they are within 1e-10),
/// and the plain routing of `g` to each window's maximum.
fn max_pool_rule(a: &Tensor, g: &Tensor, n: usize) -> candle_core::Result<(Tensor, Tensor)> {
    let y = max_pool(a)?;
    let (y1, y0) = halves(&y, n)?;
    let top = y1.maximum(&y0)?;
    let gain = Tensor::cat(&[(&top - &y0)?, (&y1 - &top)?], 0)?;
    let routed = vjp(a, &(g * gain)?, max_pool)?;
    let (r1, r0) = halves(&routed, n)?;
    let u = (r1 + r0)?;
    let plain = vjp(a, g, max_pool)?;
    let (o1, o0) = halves(&plain, n)?;
    let (a1, a0) = halves(a, n)?;
    let dx = (&a1 - &a0)?;
    let near = dx.abs()?.lt(EPS)?;
    let ratio = (&u / &dx)?;
    let rule = Tensor::cat(
        &[near.where_cond(&o1, &ratio)?, near.where_cond(&o0, &ratio)?],
        0,
    )?;
    Ok((rule, plain))
}

/// The DeepLift map of `x` against `x0` (both `[N, C, H, W]`, on the
/// model's device) for a fixed target. As Captum, the input and the
/// baseline run as one batch and the signal starts from the target of both
/// halves (they differ below a max-pool, where each half keeps its own
/// routing near the baseline).
///
/// With `at` a layer, the map of that layer's output (after its ReLU)
/// instead: its change times the signal there, `[N, C, h, w]`.
fn deep_lift(
    model: &AllCnn,
    x: &Tensor,
    x0: &Tensor,
    target: &Target,
    at: Option<LayerName>,
) -> Result<Tensor, VizError> {
    let (n, _, _, _) = x.dims4().context(|| "input shape".into())?;
    let both = Tensor::cat(&[x, x0], 0).context(|| "input and baseline".into())?;
    let layers = model.spec().spatial_layers();
    let recorder = Recorder::default();
    let mut pass = model.pass().relu(&recorder);
    for l in &layers {
        pass = pass.capture(l.name);
    }
    let acts = pass.run(&both)?;
    let pre_relu = recorder
        .0
        .into_inner()
        .expect("the recorder's lock is never poisoned");
    let output = |k: usize| acts.get(layers[k].name).expect("every layer was captured");
    let input_of = |k: usize| if k == 0 { &both } else { output(k - 1) };
    let dev = x.device();
    // The signal at the output of layer `top` (after its ReLU).
    let target = &as_units(target, n);
    let (top, mut g) = match target {
        Target::Class(_) | Target::PerImage(_) => {
            let last = layers.len() - 1;
            let (_, classes, h, w) = output(last).dims4().context(|| "class map".into())?;
            let mut onehot = vec![0f32; 2 * n * classes * h * w];
            for i in 0..2 * n {
                let k = match target {
                    Target::Class(k) => *k,
                    Target::PerImage(ks) => ks[i % n],
                    _ => unreachable!("class targets"),
                } as usize;
                let plane = (i * classes + k) * h * w;
                onehot[plane..plane + h * w].fill(1.0 / (h * w) as f32);
            }
            let g = Tensor::from_vec(onehot, (2 * n, classes, h, w), dev)
                .context(|| "the class signal".into())?;
            (last, g)
        }
        Target::Units { layer, units } => {
            let k = layers
                .iter()
                .position(|l| l.name == *layer)
                .expect("validated layer");
            let (_, c, h, w) = output(k).dims4().context(|| format!("{layer} shape"))?;
            let mut mask = vec![0f32; 2 * n * c * h * w];
            for i in 0..2 * n {
                let u = units[i % n];
                mask[((i * c + u.channel) * h + u.y) * w + u.x] = 1.0;
            }
            let g = Tensor::from_vec(mask, (2 * n, c, h, w), dev)
                .context(|| format!("the {layer} unit signal"))?;
            (k, g)
        }
        Target::Unit { .. } | Target::StrongestInChannel { .. } => {
            unreachable!("fix_target turns unit targets into Units")
        }
    };
    let params = model.parameters();
    let bottom = match at {
        None => 0,
        Some(l) => {
            require_target_above(model, target, l, "layer-deep-lift")?;
            1 + layers
                .iter()
                .position(|s| s.name == l)
                .expect("a validated layer")
        }
    };
    // Below a max-pool: the plain routing of its signal (see DeepLift's
    // documentation).
    let mut plain: Option<Tensor> = None;
    for k in (bottom..=top).rev() {
        let layer = &layers[k];
        let ctx = || format!("DeepLift at {}", layer.name);
        g = match layer.name {
            LayerName::Conv(i) => {
                let z = pre_relu
                    .iter()
                    .find(|(l, _)| *l == layer.name)
                    .map(|(_, z)| z)
                    .expect("every ReLU was recorded");
                let (m, near) = relu_multipliers(z, n).context(ctx)?;
                let g = match plain.take() {
                    None => &g * &m,
                    Some(p) => (|| near.where_cond(&(&g * &m)?, &(p * &m)?))(),
                }
                .context(ctx)?;
                let (w, b) = (&params[2 * (i - 1)].1, &params[2 * (i - 1) + 1].1);
                vjp(input_of(k), &g, |t| {
                    model
                        .convolve(t, w, b, layer.stride, layer.padding)
                        .map_err(candle_core::Error::wrap)
                })
                .context(ctx)?
            }
            LayerName::Pool(_) => {
                let (rule, routed) = max_pool_rule(input_of(k), &g, n).context(ctx)?;
                plain = Some(routed);
                rule
            }
        };
    }
    let multipliers = g.narrow(0, 0, n).context(|| "the input half".into())?;
    let (a, a0) = match at {
        None => (x.clone(), x0.clone()),
        Some(_) => halves(output(bottom - 1), n).context(|| "the layer's halves".into())?,
    };
    (a - a0)
        .and_then(|d| d * multipliers)
        .context(|| "multipliers times (input - baseline)".into())
}
