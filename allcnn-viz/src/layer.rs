//! Attributions to a hidden layer's units rather than to the input:
//! Captum's `LayerActivation`, `LayerGradientXActivation`,
//! `LayerIntegratedGradients`, `InternalInfluence` and `LayerConductance`,
//! for a convolution after its ReLU. The maps
//! have the layer's shape `[N, C, h, w]`. And conductance through one
//! unit, shared out over the input (Captum's `NeuronConductance`).

use allcnn_models::{AllCnn, LayerName, ReluRule, StandardRelu};
use candle_core::{Tensor, Var};

use crate::cam::layer_gradient;
use crate::error::{CandleContext, VizError};
use crate::integrated::{Baseline, PathSettings, Quadrature};
use crate::methods::{
    fix_target, model_input, propagate, repeat_target, require_target_above, target_values,
};
use crate::relu::BackwardRule;
use crate::target::{layer_shape, Target, Unit};

/// The activations of convolution `layer` after its ReLU: `[N, C, h, w]`.
/// Captum's `LayerActivation` on that ReLU.
#[derive(Debug, Clone, Copy)]
pub struct LayerActivation<'a> {
    model: &'a AllCnn,
    layer: LayerName,
}

impl<'a> LayerActivation<'a> {
    /// The activations of `layer` of `model`.
    pub fn new(model: &'a AllCnn, layer: LayerName) -> Self {
        Self { model, layer }
    }

    /// The activations for `input` `[N, C, H, W]`.
    ///
    /// # Errors
    /// A layer the network does not have, an input it cannot take, or a
    /// candle error.
    pub fn attribute(&self, input: &Tensor) -> Result<Tensor, VizError> {
        let model = self.model;
        let x = model_input(model, input)?;
        let (_, _, h, w) = x.dims4().context(|| "input shape".into())?;
        layer_shape(model, self.layer, (h, w))?;
        let acts = model
            .pass()
            .capture(self.layer)
            .stop_at(self.layer)
            .run(&x)?;
        Ok(acts
            .get(self.layer)
            .expect("the pass captured the layer")
            .clone())
    }
}

/// The gradient of the target with respect to convolution `layer`'s
/// activations (after its ReLU) times those activations: `[N, C, h, w]`.
/// Captum's `LayerGradientXActivation` on that ReLU.
#[derive(Debug, Clone, Copy)]
pub struct LayerGradientXActivation<'a> {
    model: &'a AllCnn,
    layer: LayerName,
}

impl<'a> LayerGradientXActivation<'a> {
    /// The method at `layer` (a convolution) of `model`.
    pub fn new(model: &'a AllCnn, layer: LayerName) -> Self {
        Self { model, layer }
    }

    /// The map of every image at the layer's resolution.
    ///
    /// # Errors
    /// As [`crate::GradCam::attribute`].
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        let model = self.model;
        target.validate(model, input.dims())?;
        let x = model_input(model, input)?;
        let (act, grad) =
            layer_gradient(model, self.layer, &x, target, "layer-gradient-x-activation")?;
        (grad * act).context(|| "gradient times activation".into())
    }
}

/// Integrated gradients of convolution `layer`'s activations (after its
/// ReLU): the path runs in the layer's space, from the activations at the
/// baseline `a0` to those at the input `a`; the network above the layer is
/// evaluated at `a0 + t (a - a0)` and its gradient with respect to them
/// integrated over `t` by [`Quadrature`], times `a - a0`. `[N, C, h, w]`;
/// the map sums to about `T(x) - T(baseline)` per image. Captum's
/// `LayerIntegratedGradients` on that ReLU (layer outputs, inputs
/// multiplied).
#[derive(Debug, Clone)]
pub struct LayerIntegratedGradients<'a> {
    model: &'a AllCnn,
    layer: LayerName,
    path: PathSettings,
}

impl<'a> LayerIntegratedGradients<'a> {
    /// 50 Gauss-Legendre steps from a zero baseline (Captum's defaults),
    /// 64 images per pass.
    pub fn new(model: &'a AllCnn, layer: LayerName) -> Self {
        Self {
            model,
            layer,
            path: PathSettings::new(50, Quadrature::GaussLegendre),
        }
    }

    path_setters!();

    /// The map of every image at the layer's resolution.
    ///
    /// # Errors
    /// As [`crate::GradCam::attribute`]; also a step count the rule cannot
    /// use and a baseline of the wrong shape.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        let model = self.model;
        target.validate(model, input.dims())?;
        let x = model_input(model, input)?;
        let (n, _, _, _) = x.dims4().context(|| "input shape".into())?;
        let x0 = self.path.baseline.tensor_for(&x)?;
        let target = fix_target(model, &x, target)?;
        require_target_above(model, &target, self.layer, "layer-integrated-gradients")?;
        let (weights, points) = self.path.rule()?;
        let layer_at = |t: &Tensor| LayerActivation::new(model, self.layer).attribute(t);
        let (a, a0) = (layer_at(&x)?, layer_at(&x0)?);
        let change = (&a - &a0).context(|| "the layer's change".into())?;
        let per_pass = self.path.per_pass(n);
        let mut total: Option<Tensor> = None;
        for chunk in points
            .iter()
            .zip(&weights)
            .collect::<Vec<_>>()
            .chunks(per_pass)
        {
            let scaled: Vec<Tensor> = chunk
                .iter()
                .map(|(&t, _)| (&a0 + (&change * t)?)?.contiguous())
                .collect::<candle_core::Result<_>>()
                .context(|| "points on the path".into())?;
            let var = Tensor::cat(&scaled, 0)
                .and_then(|t| Var::from_tensor(&t))
                .context(|| "points on the path".into())?;
            let inputs = Tensor::cat(&vec![&x; chunk.len()], 0).context(|| "inputs".into())?;
            let rule = Replace {
                layer: self.layer,
                value: var.as_tensor().clone(),
            };
            let objective =
                target_values(model, &rule, &inputs, &repeat_target(&target, chunk.len()))?
                    .sum_all()
                    .context(|| "summing the target".into())?;
            let grads = objective
                .backward()
                .context(|| format!("backward pass to {}", self.layer))?;
            let grad = match grads.get(var.as_tensor()) {
                Some(g) => g.clone(),
                None => var
                    .as_tensor()
                    .zeros_like()
                    .context(|| "a zero gradient".into())?,
            };
            for (k, (_, &w)) in chunk.iter().enumerate() {
                let g = grad
                    .narrow(0, k * n, n)
                    .and_then(|g| g * w)
                    .context(|| "weighting a point's gradient".into())?;
                total = Some(match total {
                    None => g,
                    Some(t) => (t + g).context(|| "summing the path".into())?,
                });
            }
        }
        let total = total.expect("a rule has at least one point");
        (total * change).context(|| "integrated gradients times the change".into())
    }
}

/// Internal influence of convolution `layer`'s activations (after its
/// ReLU): the target's gradient with respect to them, integrated by
/// [`Quadrature`] along the straight path in *input* space from the
/// baseline to the input, `∫ ∂T/∂a(b + t (x - b)) dt`, not multiplied by
/// anything. `[N, C, h, w]`. Captum's `InternalInfluence` on that ReLU
/// (default 50 Gauss-Legendre steps from a zero baseline).
#[derive(Debug, Clone)]
pub struct InternalInfluence<'a> {
    model: &'a AllCnn,
    layer: LayerName,
    path: PathSettings,
}

impl<'a> InternalInfluence<'a> {
    /// 50 Gauss-Legendre steps from a zero baseline (Captum's defaults),
    /// 64 images per pass.
    pub fn new(model: &'a AllCnn, layer: LayerName) -> Self {
        Self {
            model,
            layer,
            path: PathSettings::new(50, Quadrature::GaussLegendre),
        }
    }

    path_setters!();

    /// The map of every image at the layer's resolution.
    ///
    /// # Errors
    /// As [`LayerIntegratedGradients::attribute`].
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        let (weights, points) = self.path.rule()?;
        let mut total: Option<Tensor> = None;
        let path = InputPath {
            model: self.model,
            layer: self.layer,
            baseline: &self.path.baseline,
            batch: self.path.batch,
            method: "internal-influence",
        };
        path.walk(input, target, &points, |k, _, grad| {
            let g = (grad * weights[k]).context(|| "weighting a point's gradient".into())?;
            total = Some(match total.take() {
                None => g,
                Some(t) => (t + g).context(|| "summing the path".into())?,
            });
            Ok(())
        })?;
        Ok(total.expect("a rule has at least one point"))
    }
}

/// Conductance of convolution `layer`'s activations (after its ReLU):
/// along the straight path in input space from the baseline to the input,
/// at the `steps + 1` points of [`Quadrature`]'s rule, the target's gradient
/// with respect to the activations at each point times the activations'
/// change to the next point, summed: `Σ_k ∂T/∂a(x_k) (a(x_{k+1}) -
/// a(x_k))`. `[N, C, h, w]`; with many steps the map sums to about `T(x) -
/// T(baseline)` per image. Captum's `LayerConductance` on that ReLU
/// (default 50 steps, Gauss-Legendre points: Captum takes the rule's
/// `steps + 1` points as the path and ignores its weights, and so does
/// this).
#[derive(Debug, Clone)]
pub struct LayerConductance<'a> {
    model: &'a AllCnn,
    layer: LayerName,
    path: PathSettings,
}

impl<'a> LayerConductance<'a> {
    /// 50 Gauss-Legendre steps from a zero baseline (Captum's defaults),
    /// 64 images per pass.
    pub fn new(model: &'a AllCnn, layer: LayerName) -> Self {
        Self {
            model,
            layer,
            path: PathSettings::new(50, Quadrature::GaussLegendre),
        }
    }

    path_setters!();

    /// The map of every image at the layer's resolution.
    ///
    /// # Errors
    /// As [`LayerIntegratedGradients::attribute`].
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        let (_, points) = self
            .path
            .quadrature
            .weights_and_points(self.path.steps + 1)?;
        let mut total: Option<Tensor> = None;
        let mut last: Option<(Tensor, Tensor)> = None;
        let path = InputPath {
            model: self.model,
            layer: self.layer,
            baseline: &self.path.baseline,
            batch: self.path.batch,
            method: "layer-conductance",
        };
        path.walk(input, target, &points, |_, act, grad| {
            if let Some((prev_act, prev_grad)) = last.take() {
                let g = (&act - prev_act)
                    .and_then(|d| prev_grad * d)
                    .context(|| "a step's conductance".into())?;
                total = Some(match total.take() {
                    None => g,
                    Some(t) => (t + g).context(|| "summing the path".into())?,
                });
            }
            last = Some((act, grad));
            Ok(())
        })?;
        Ok(total.expect("a rule has at least two points"))
    }
}

/// The straight path in input space that [`InternalInfluence`],
/// [`LayerConductance`] and [`NeuronConductance`] walk.
struct InputPath<'a, 'b> {
    model: &'a AllCnn,
    layer: LayerName,
    baseline: &'b Baseline,
    batch: usize,
    method: &'static str,
}

/// One pass of [`InputPath::passes`]: the points `k0..k0 + len` of the
/// path for all `n` images, point-major (row `j n + i` is point `k0 + j`
/// of image `i`), with the target of every row.
struct PathPass {
    k0: usize,
    len: usize,
    n: usize,
    inputs: Tensor,
    target: Target,
}

impl InputPath<'_, '_> {
    /// Checks the input and target, then calls `visit` with the points
    /// `b + t (x - b)` of `points`, in order, `batch` images per pass. The
    /// target is resolved once, at the input itself. Returns `x - b`.
    fn passes(
        &self,
        input: &Tensor,
        target: &Target,
        points: &[f64],
        mut visit: impl FnMut(&PathPass) -> Result<(), VizError>,
    ) -> Result<Tensor, VizError> {
        let model = self.model;
        target.validate(model, input.dims())?;
        let x = model_input(model, input)?;
        let (n, _, h, w) = x.dims4().context(|| "input shape".into())?;
        layer_shape(model, self.layer, (h, w))?;
        let x0 = self.baseline.tensor_for(&x)?;
        let target = fix_target(model, &x, target)?;
        let change = (&x - &x0).context(|| "the input's change".into())?;
        let per_pass = (self.batch / n.max(1)).max(1);
        for (c, chunk) in points.chunks(per_pass).enumerate() {
            let scaled: Vec<Tensor> = chunk
                .iter()
                .map(|&t| &x0 + (&change * t)?)
                .collect::<candle_core::Result<_>>()
                .context(|| "points on the path".into())?;
            visit(&PathPass {
                k0: c * per_pass,
                len: chunk.len(),
                n,
                inputs: Tensor::cat(&scaled, 0).context(|| "points on the path".into())?,
                target: repeat_target(&target, chunk.len()),
            })?;
        }
        Ok(change)
    }

    /// For each `t` of `points`, in order, `visit(k, a, g)` with the layer's
    /// activations `a` at the input `b + t (x - b)` and the target's gradient
    /// `g` with respect to them (`[N, C, h, w]` each), as
    /// [`InputPath::passes`] walks them.
    fn walk(
        &self,
        input: &Tensor,
        target: &Target,
        points: &[f64],
        mut visit: impl FnMut(usize, Tensor, Tensor) -> Result<(), VizError>,
    ) -> Result<(), VizError> {
        self.passes(input, target, points, |pass| {
            let (act, grad) = layer_gradient(
                self.model,
                self.layer,
                &pass.inputs,
                &pass.target,
                self.method,
            )?;
            let n = pass.n;
            for k in 0..pass.len {
                let part = |t: &Tensor| t.narrow(0, k * n, n).context(|| "a point's maps".into());
                visit(pass.k0 + k, part(&act)?, part(&grad)?)?;
            }
            Ok(())
        })?;
        Ok(())
    }
}

/// The standard ReLU everywhere, except that `layer`'s output is replaced
/// by `value` (the points on the path in the layer's space).
pub(crate) struct Replace {
    pub(crate) layer: LayerName,
    pub(crate) value: Tensor,
}

impl ReluRule for Replace {
    fn relu(&self, layer: LayerName, x: &Tensor) -> candle_core::Result<Tensor> {
        if layer == self.layer {
            Ok(self.value.clone())
        } else {
            StandardRelu.relu(layer, x)
        }
    }
}

/// Conductance through one hidden unit (Dhamdhere et al., 2018): how much
/// of the target's change from the baseline to the input flows through unit
/// `unit` of convolution `layer` (after its ReLU), shared out over the
/// input. Along the straight path in input space, `(x - b) Σ_k w_k
/// ∂T/∂y(x_k) ∂y/∂x(x_k)` with `y` the unit and [`Quadrature`]'s points
/// `x_k` and weights `w_k`. Signed, `[N, C, H, W]`. Captum's
/// `NeuronConductance` on that ReLU (default 50 Riemann-trapezoid steps
/// from a zero baseline).
#[derive(Debug, Clone)]
pub struct NeuronConductance<'a> {
    model: &'a AllCnn,
    layer: LayerName,
    unit: Unit,
    path: PathSettings,
}

impl<'a> NeuronConductance<'a> {
    /// Conductance through `unit` of `layer` of `model`: 50 Riemann-
    /// trapezoid steps from a zero baseline (Captum's defaults for this
    /// method), 64 images per pass.
    pub fn new(model: &'a AllCnn, layer: LayerName, unit: Unit) -> Self {
        Self {
            model,
            layer,
            unit,
            path: PathSettings::new(50, Quadrature::RiemannTrapezoid),
        }
    }

    path_setters!();

    /// See [`crate::Attribute::attribute`].
    ///
    /// # Errors
    /// As [`crate::Attribute::attribute`]; also a layer that is not a
    /// convolution, a unit outside its map, a hidden-unit target that is not
    /// above the layer, a step count the rule cannot use and a baseline of
    /// the wrong shape.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        let model = self.model;
        let Unit { channel, y, x: col } = self.unit;
        let neuron = Target::Unit {
            layer: self.layer,
            channel,
            y,
            x: col,
        };
        neuron.validate(model, input.dims())?;
        require_target_above(model, target, self.layer, "neuron-conductance")?;
        let (weights, points) = self.path.rule()?;
        let path = InputPath {
            model,
            layer: self.layer,
            baseline: &self.path.baseline,
            batch: self.path.batch,
            method: "neuron-conductance",
        };
        let mut total: Vec<f64> = Vec::new();
        let change = path.passes(input, target, &points, |pass| {
            // dT/dy at each point: the target's gradient at the layer, at
            // the unit.
            let (_, grad) =
                layer_gradient(model, self.layer, &pass.inputs, &pass.target, path.method)?;
            let through: Vec<f32> = grad
                .narrow(1, channel, 1)
                .and_then(|g| g.narrow(2, y, 1))
                .and_then(|g| g.narrow(3, col, 1))
                .and_then(|g| g.flatten_all())
                .and_then(|g| g.to_vec1())
                .context(|| "the target's gradient at the unit".into())?;
            // dy/dx at each point.
            let dydx: Vec<f32> = propagate(model, BackwardRule::Gradient, &pass.inputs, &neuron)?
                .flatten_all()
                .and_then(|g| g.to_vec1())
                .context(|| "the unit's input gradient".into())?;
            let len = dydx.len() / (pass.len * pass.n);
            if total.is_empty() {
                total = vec![0f64; pass.n * len];
            }
            for (r, row) in dydx.chunks(len).enumerate() {
                let scale = f64::from(through[r]) * weights[pass.k0 + r / pass.n];
                let acc = &mut total[(r % pass.n) * len..][..len];
                for (a, &d) in acc.iter_mut().zip(row) {
                    *a += scale * f64::from(d);
                }
            }
            Ok(())
        })?;
        let total: Vec<f32> = total.iter().map(|&v| v as f32).collect();
        Tensor::from_vec(total, change.shape(), change.device())
            .and_then(|t| t * change)
            .context(|| "the path's sum times the input's change".into())
    }
}

impl crate::Attribute for NeuronConductance<'_> {
    fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        NeuronConductance::attribute(self, input, target)
    }
}
