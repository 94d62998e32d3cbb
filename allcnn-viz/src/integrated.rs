//! Integrated Gradients (Sundararajan et al., 2017), with Captum's
//! quadrature rules, baselines and step counts.

use std::fmt;
use std::str::FromStr;

use allcnn_models::AllCnn;
use candle_core::{DType, Tensor};

use crate::error::{CandleContext, VizError};
use crate::methods::{fix_target, model_input, repeat_target, target_values, Gradient};
use crate::relu::{BackwardRule, RuleReluAll};
use crate::target::Target;

/// How the path integral from the baseline to the input is approximated:
/// `IG = (x - b) * sum_i w_i * grad T(b + a_i (x - b))`, with the weights
/// `w_i` and points `a_i` below (exactly Captum's `approximation_methods`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Quadrature {
    /// Gauss-Legendre on `[0, 1]`: `n` nodes, exact for polynomials of
    /// degree `2n - 1` (Captum's default, `"gausslegendre"`).
    #[default]
    GaussLegendre,
    /// `a_i = i / n`, `i = 0..n`, `w_i = 1/n` (`"riemann_left"`).
    RiemannLeft,
    /// `a_i = (i + 1) / n`, `w_i = 1/n` (`"riemann_right"`).
    RiemannRight,
    /// `a_i = (i + 1/2) / n`, `w_i = 1/n` (`"riemann_middle"`).
    RiemannMiddle,
    /// `a_i = i / (n - 1)`, `w_i = 1/n` with the two end weights halved
    /// (`"riemann_trapezoid"`). As in Captum, the weights sum to
    /// `(n - 1) / n`, not 1, so the map is `(n - 1) / n` of the textbook
    /// trapezoid rule.
    RiemannTrapezoid,
}

impl Quadrature {
    /// Every rule.
    pub const ALL: [Quadrature; 5] = [
        Quadrature::GaussLegendre,
        Quadrature::RiemannLeft,
        Quadrature::RiemannRight,
        Quadrature::RiemannMiddle,
        Quadrature::RiemannTrapezoid,
    ];

    /// Captum's name: `gausslegendre`, `riemann_left`, `riemann_right`,
    /// `riemann_middle`, `riemann_trapezoid`.
    pub fn name(self) -> &'static str {
        match self {
            Quadrature::GaussLegendre => "gausslegendre",
            Quadrature::RiemannLeft => "riemann_left",
            Quadrature::RiemannRight => "riemann_right",
            Quadrature::RiemannMiddle => "riemann_middle",
            Quadrature::RiemannTrapezoid => "riemann_trapezoid",
        }
    }

    /// The weights and points `(w_i, a_i)` of an `n`-point rule on `[0, 1]`.
    ///
    /// # Errors
    /// [`VizError::InvalidArgument`] for `n = 0`, or `n = 1` with a Riemann
    /// rule (Captum asks for at least two).
    pub fn weights_and_points(self, n: usize) -> Result<(Vec<f64>, Vec<f64>), VizError> {
        let min = if self == Quadrature::GaussLegendre {
            1
        } else {
            2
        };
        if n < min {
            return Err(VizError::InvalidArgument(format!(
                "{} needs at least {min} integration steps, got {n}",
                self.name()
            )));
        }
        let nf = n as f64;
        let linspace = |a: f64, b: f64| -> Vec<f64> {
            (0..n)
                .map(|i| a + (b - a) * i as f64 / (nf - 1.0))
                .collect()
        };
        Ok(match self {
            Quadrature::GaussLegendre => {
                let (x, w) = gauss_legendre(n);
                (
                    w.iter().map(|w| 0.5 * w).collect(),
                    x.iter().map(|x| 0.5 * (1.0 + x)).collect(),
                )
            }
            Quadrature::RiemannLeft => (vec![1.0 / nf; n], linspace(0.0, 1.0 - 1.0 / nf)),
            Quadrature::RiemannRight => (vec![1.0 / nf; n], linspace(1.0 / nf, 1.0)),
            Quadrature::RiemannMiddle => (vec![1.0 / nf; n], linspace(0.5 / nf, 1.0 - 0.5 / nf)),
            Quadrature::RiemannTrapezoid => {
                let mut w = vec![1.0 / nf; n];
                w[0] /= 2.0;
                w[n - 1] /= 2.0;
                (w, linspace(0.0, 1.0))
            }
        })
    }
}

impl fmt::Display for Quadrature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Quadrature {
    type Err = VizError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = s.trim().to_ascii_lowercase().replace('-', "_");
        Quadrature::ALL
            .into_iter()
            .find(|q| q.name() == key || q.name().strip_prefix("riemann_") == Some(&key))
            .ok_or_else(|| {
                VizError::InvalidArgument(format!(
                    "unknown quadrature `{s}`; use gausslegendre, riemann_left, riemann_right, riemann_middle or riemann_trapezoid"
                ))
            })
    }
}

/// The `n` Gauss-Legendre nodes (ascending) and weights on `[-1, 1]`, by
/// Newton's method on the Legendre polynomial `P_n`.
pub(crate) fn gauss_legendre(n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut nodes = vec![0.0; n];
    let mut weights = vec![0.0; n];
    let nf = n as f64;
    for i in 0..n.div_ceil(2) {
        // Tricomi's initial guess for the i-th largest root.
        let mut x = (std::f64::consts::PI * (i as f64 + 0.75) / (nf + 0.5)).cos();
        let mut dp = 1.0;
        for _ in 0..100 {
            // P_n(x) and P_n'(x) by the three-term recurrence.
            let (mut p0, mut p1) = (1.0, x);
            for k in 2..=n {
                let kf = k as f64;
                let p2 = ((2.0 * kf - 1.0) * x * p1 - (kf - 1.0) * p0) / kf;
                p0 = p1;
                p1 = p2;
            }
            dp = nf * (x * p1 - p0) / (x * x - 1.0);
            let dx = p1 / dp;
            x -= dx;
            if dx.abs() < 1e-16 {
                break;
            }
        }
        let w = 2.0 / ((1.0 - x * x) * dp * dp);
        nodes[n - 1 - i] = x;
        nodes[i] = -x;
        weights[n - 1 - i] = w;
        weights[i] = w;
    }
    if n % 2 == 1 {
        // The middle node is exactly 0.
        nodes[n / 2] = 0.0;
    }
    (nodes, weights)
}

/// Where the integration path starts.
#[derive(Debug, Clone)]
pub enum Baseline {
    /// Every input value set to this constant (0 is Captum's default: a
    /// black image after GCN + ZCA, the mean image after standardisation).
    Constant(f32),
    /// An input-shaped baseline `[N, C, H, W]`, or `[1, C, H, W]` for all
    /// images.
    Tensor(Tensor),
}

impl Default for Baseline {
    fn default() -> Self {
        Baseline::Constant(0.0)
    }
}

impl Baseline {
    /// The baseline as a tensor broadcastable to `x` `[N, C, H, W]`.
    pub(crate) fn tensor_for(&self, x: &Tensor) -> Result<Tensor, VizError> {
        match self {
            // A NaN or infinite baseline made all-NaN maps (integrated
            // gradients, DeepLIFT) or finite made-up ones (occlusion).
            Baseline::Constant(v) if !v.is_finite() => Err(VizError::InvalidArgument(format!(
                "baseline {v}: must be a finite number"
            ))),
            Baseline::Constant(v) => x
                .ones_like()
                .and_then(|t| t.affine(*v as f64, 0.0))
                .context(|| "a constant baseline".into()),
            Baseline::Tensor(b) => {
                let (n, c, h, w) = x.dims4().context(|| "input shape".into())?;
                let ok = matches!(b.dims(), &[bn, bc, bh, bw] if (bn == n || bn == 1) && (bc, bh, bw) == (c, h, w));
                if !ok {
                    return Err(VizError::BadTensor {
                        what: "baseline".into(),
                        expected: format!("[{n}, {c}, {h}, {w}] or [1, {c}, {h}, {w}]"),
                        got: b.dims().to_vec(),
                    });
                }
                b.to_device(x.device())
                    .and_then(|b| b.to_dtype(DType::F32))
                    .and_then(|b| b.broadcast_as(x.shape()))
                    .and_then(|b| b.contiguous())
                    .context(|| "the baseline on the model's device".into())
            }
        }
    }
}

/// The settings the path methods share (integrated gradients at the input
/// or at a layer, internal influence, conductance): the rule, its points,
/// the baseline and the images per pass.
#[derive(Debug, Clone)]
pub(crate) struct PathSettings {
    pub(crate) steps: usize,
    pub(crate) quadrature: Quadrature,
    pub(crate) baseline: Baseline,
    pub(crate) batch: usize,
}

impl PathSettings {
    /// `steps` points of `quadrature` from a zero baseline, 64 images per
    /// pass.
    pub(crate) fn new(steps: usize, quadrature: Quadrature) -> Self {
        Self {
            steps,
            quadrature,
            baseline: Baseline::default(),
            batch: 64,
        }
    }

    /// The rule's weights and points.
    pub(crate) fn rule(&self) -> Result<(Vec<f64>, Vec<f64>), VizError> {
        self.quadrature.weights_and_points(self.steps)
    }

    /// Points of the path per pass for `n` images.
    pub(crate) fn per_pass(&self, n: usize) -> usize {
        (self.batch / n.max(1)).max(1)
    }
}

/// The setters of the path methods, on their [`PathSettings`] `path`:
/// `steps`, `quadrature`, `baseline`, `batch`.
macro_rules! path_setters {
    () => {
        /// The number of points on the path.
        pub fn steps(mut self, steps: usize) -> Self {
            self.path.steps = steps;
            self
        }

        /// The quadrature rule.
        pub fn quadrature(mut self, q: Quadrature) -> Self {
            self.path.quadrature = q;
            self
        }

        /// Where the path starts.
        pub fn baseline(mut self, b: Baseline) -> Self {
            self.path.baseline = b;
            self
        }

        /// Images per forward/backward pass (at least 1).
        pub fn batch(mut self, batch: usize) -> Self {
            self.path.batch = batch.max(1);
            self
        }
    };
}

/// Integrated Gradients: `(x - b) * integral_0^1 grad T(b + a (x - b)) da`,
/// by [`Quadrature`] with `steps` points (Captum's `IntegratedGradients`,
/// default 50 Gauss-Legendre steps from a zero baseline). Signed,
/// `[N, C, H, W]`. For a hidden-unit target it is Captum's
/// `NeuronIntegratedGradients`.
///
/// The points are evaluated in batches of at most `batch` images (steps
/// times images), so memory stays bounded for long paths.
#[derive(Debug, Clone)]
pub struct IntegratedGradients<'a> {
    model: &'a AllCnn,
    path: PathSettings,
}

impl<'a> IntegratedGradients<'a> {
    /// 50 Gauss-Legendre steps from a zero baseline, 64 images per pass.
    pub fn new(model: &'a AllCnn) -> Self {
        Self {
            model,
            path: PathSettings::new(50, Quadrature::GaussLegendre),
        }
    }

    path_setters!();

    /// See [`crate::Attribute::attribute`].
    ///
    /// # Errors
    /// As [`crate::Attribute::attribute`]; also too few steps for the rule
    /// or a baseline of the wrong shape.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        Ok(self.attribute_with_delta(input, target)?.0)
    }

    /// The maps and, per image, the completeness gap
    /// `sum(map) - (T(x) - T(b))` (Captum's convergence delta): near zero
    /// when the path is integrated accurately.
    ///
    /// # Errors
    /// As [`IntegratedGradients::attribute`].
    pub fn attribute_with_delta(
        &self,
        input: &Tensor,
        target: &Target,
    ) -> Result<(Tensor, Vec<f32>), VizError> {
        let model = self.model;
        target.validate(model, input.dims())?;
        let (weights, points) = self.path.rule()?;
        let x = model_input(model, input)?;
        let target = fix_target(model, &x, target)?;
        let n = x.dim(0).context(|| "input shape".into())?;
        let base = self.path.baseline.tensor_for(&x)?;
        let diff = (&x - &base).context(|| "input minus baseline".into())?;
        let per_pass = self.path.per_pass(n);
        let mut total = x.zeros_like().context(|| "the gradient sum".into())?;
        for (ws, alphas) in weights.chunks(per_pass).zip(points.chunks(per_pass)) {
            let scaled = alphas
                .iter()
                .map(|&a| diff.affine(a, 0.0).and_then(|d| d + &base))
                .collect::<candle_core::Result<Vec<_>>>()
                .and_then(|v| Tensor::cat(&v, 0))
                .context(|| "points on the path".into())?;
            let grads =
                Gradient::new(model).attribute(&scaled, &repeat_target(&target, alphas.len()))?;
            let (_, c, h, w) = x.dims4().context(|| "input shape".into())?;
            let ws = Tensor::from_vec(
                ws.iter().map(|&w| w as f32).collect::<Vec<_>>(),
                (alphas.len(), 1, 1, 1, 1),
                x.device(),
            )
            .context(|| "quadrature weights".into())?;
            let sum = grads
                .reshape((alphas.len(), n, c, h, w))
                .and_then(|g| g.broadcast_mul(&ws))
                .and_then(|g| g.sum(0))
                .context(|| "weighting the path gradients".into())?;
            total = (total + sum).context(|| "summing the path gradients".into())?;
        }
        let map = (total * &diff).context(|| "gradients times (input - baseline)".into())?;
        let relu = RuleReluAll(BackwardRule::Gradient);
        let gap = (|| {
            let end = target_values(model, &relu, &x, &target)?;
            let start = target_values(model, &relu, &base, &target)?;
            let sums = map
                .flatten_from(1)
                .and_then(|m| m.sum(1))
                .context(|| "map sums".into())?;
            (sums - (end - start).context(|| "T(x) - T(b)".into())?)
                .and_then(|g| g.to_vec1::<f32>())
                .context(|| "the completeness gap".into())
        })()?;
        Ok((map, gap))
    }
}
