//! Layer-wise relevance propagation (Bach et al., 2015) with Captum's
//! rules (`LRP` with `EpsilonRule`, `GammaRule` and `Alpha1_Beta0_Rule`),
//! per convolution, and a layered composite (Montavon et al., 2019).

use std::fmt;
use std::str::FromStr;

use allcnn_models::kernels::pool::max_pool;
use allcnn_models::{AllCnn, LayerName};
use candle_core::{DType, Tensor, Var};

use crate::error::{CandleContext, VizError};
use crate::methods::{as_units, fix_target, model_input, require_target_above};
use crate::target::{layer_shape, Target};

/// Captum's stabiliser for rules without their own epsilon, and for the
/// pooling layers.
const STABILITY: f32 = 1e-9;

/// How a convolution passes relevance down. With `a` its input, `w'` and
/// `b'` its (reweighted) kernel and bias and `z' = conv(a, w') + b'`, the
/// relevance `R` of its output becomes `a * conv^T(R / (z' + e sign z'))`,
/// `sign 0 = 1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrpRule {
    /// LRP-epsilon: the kernel as it is, `e` = the value (Captum's
    /// `EpsilonRule`; its default 1e-9 is LRP-0, which on a ReLU network
    /// gives input x gradient). A larger `e` (e.g. 0.25) absorbs weak,
    /// contradictory relevance.
    Epsilon(f32),
    /// LRP-gamma: `w' = w + gamma max(w, 0)`, favouring positive
    /// contributions, `e` = 1e-9 (Captum's `GammaRule`).
    Gamma {
        /// The weight of the positive part (Captum's default 0.25).
        gamma: f32,
        /// Whether `b' = 0` (else `b' = b`).
        zero_bias: bool,
    },
    /// LRP-alpha1-beta0 (deep Taylor): `w' = max(w, 0)`, `e` = 1e-9
    /// (Captum's `Alpha1_Beta0_Rule`).
    Alpha1Beta0 {
        /// Whether `b' = 0` (else `b' = b`).
        zero_bias: bool,
    },
}

impl LrpRule {
    fn stabilizer(self) -> f32 {
        match self {
            LrpRule::Epsilon(e) => e,
            LrpRule::Gamma { .. } | LrpRule::Alpha1Beta0 { .. } => STABILITY,
        }
    }

    fn reweighted(self, weight: &Tensor, bias: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (w, zero_bias) = match self {
            LrpRule::Epsilon(_) => return Ok((weight.clone(), bias.clone())),
            LrpRule::Gamma { gamma, zero_bias } => {
                ((weight + (weight.relu()? * f64::from(gamma))?)?, zero_bias)
            }
            LrpRule::Alpha1Beta0 { zero_bias } => (weight.relu()?, zero_bias),
        };
        let b = if zero_bias {
            bias.zeros_like()?
        } else {
            bias.clone()
        };
        Ok((w, b))
    }
}

/// The rule of every convolution, as one setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrpComposite {
    /// The same rule for every convolution.
    Uniform(LrpRule),
    /// By depth, for `n` convolutions: LRP-0 on conv1 (it sees signed,
    /// whitened pixels, where gamma's denominator can vanish), LRP-gamma on
    /// the rest of the lower third (`i <= n/3`), LRP-epsilon in the middle
    /// third (`i <= 2n/3`) and LRP-0 above. On All-CNN-C: conv1 LRP-0,
    /// conv2-3 gamma, conv4-6 epsilon, conv7-9 LRP-0.
    Layered {
        /// The middle third's epsilon.
        epsilon: f32,
        /// The lower third's gamma.
        gamma: f32,
    },
}

impl Default for LrpComposite {
    /// Captum's default: LRP-epsilon with 1e-9 everywhere.
    fn default() -> Self {
        LrpComposite::Uniform(LrpRule::Epsilon(STABILITY))
    }
}

impl LrpComposite {
    /// The rule of convolution `i` (from 1) of `n`.
    pub fn rule_for(self, i: usize, n: usize) -> LrpRule {
        match self {
            LrpComposite::Uniform(rule) => rule,
            LrpComposite::Layered { epsilon, gamma } => {
                if i == 1 || 3 * i > 2 * n {
                    LrpRule::Epsilon(STABILITY)
                } else if 3 * i <= n {
                    LrpRule::Gamma {
                        gamma,
                        zero_bias: false,
                    }
                } else {
                    LrpRule::Epsilon(epsilon)
                }
            }
        }
    }
}

impl FromStr for LrpComposite {
    type Err = VizError;

    /// `epsilon[:E]` (default 1e-9), `gamma[:G]` (0.25), `alpha1-beta0`,
    /// `composite[:E:G]` (0.25, 0.25).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            VizError::InvalidArgument(format!(
                "LRP rule `{s}`: {why}; use epsilon[:E], gamma[:G], alpha1-beta0 or composite[:E:G]"
            ))
        };
        let mut parts = s.trim().split(':');
        let name = parts
            .next()
            .unwrap_or("")
            .to_ascii_lowercase()
            .replace('_', "-");
        let numbers: Vec<f32> = parts
            .map(|p| {
                p.trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| bad(&format!("`{p}` is not a number >= 0")))
            })
            .collect::<Result<_, _>>()?;
        let arg = |k: usize, default: f32| numbers.get(k).copied().unwrap_or(default);
        let (composite, max_args) = match name.as_str() {
            "epsilon" | "eps" => (
                LrpComposite::Uniform(LrpRule::Epsilon(arg(0, STABILITY))),
                1,
            ),
            "gamma" => (
                LrpComposite::Uniform(LrpRule::Gamma {
                    gamma: arg(0, 0.25),
                    zero_bias: false,
                }),
                1,
            ),
            "alpha1-beta0" | "alpha-beta" => (
                LrpComposite::Uniform(LrpRule::Alpha1Beta0 { zero_bias: false }),
                0,
            ),
            "composite" => (
                LrpComposite::Layered {
                    epsilon: arg(0, 0.25),
                    gamma: arg(1, 0.25),
                },
                2,
            ),
            _ => return Err(bad("unknown rule")),
        };
        if numbers.len() > max_args {
            return Err(bad(&format!("`{name}` takes at most {max_args} numbers")));
        }
        Ok(composite)
    }
}

impl fmt::Display for LrpComposite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LrpComposite::Uniform(LrpRule::Epsilon(e)) => write!(f, "epsilon:{e}"),
            LrpComposite::Uniform(LrpRule::Gamma { gamma, zero_bias }) => {
                write!(f, "gamma:{gamma}")?;
                if *zero_bias {
                    f.write_str(" (zero bias)")?;
                }
                Ok(())
            }
            LrpComposite::Uniform(LrpRule::Alpha1Beta0 { zero_bias }) => {
                f.write_str("alpha1-beta0")?;
                if *zero_bias {
                    f.write_str(" (zero bias)")?;
                }
                Ok(())
            }
            LrpComposite::Layered { epsilon, gamma } => write!(f, "composite:{epsilon}:{gamma}"),
        }
    }
}

/// Layer-wise relevance propagation: the target's value is passed down
/// layer by layer, each convolution sharing its output's relevance among
/// its inputs by its [`LrpRule`]; ReLUs and dropout pass it unchanged,
/// max-pools and the global average use LRP-epsilon with 1e-9, as Captum's
/// `LRP` does with those layers as modules. Starts from the class logit
/// (or, for a hidden unit, the unit's activation) and gives `[N, C, H, W]`,
/// signed.
#[derive(Debug, Clone)]
pub struct Lrp<'a> {
    model: &'a AllCnn,
    composite: LrpComposite,
    overrides: Vec<(usize, LrpRule)>,
}

impl<'a> Lrp<'a> {
    /// LRP-epsilon with 1e-9 at every convolution (Captum's default).
    pub fn new(model: &'a AllCnn) -> Self {
        Self {
            model,
            composite: LrpComposite::default(),
            overrides: Vec::new(),
        }
    }

    /// The rules of all convolutions.
    pub fn composite(mut self, composite: LrpComposite) -> Self {
        self.composite = composite;
        self
    }

    /// The rule of convolution `conv` (from 1), over the composite's.
    pub fn rule(mut self, conv: usize, rule: LrpRule) -> Self {
        self.overrides.retain(|(i, _)| *i != conv);
        self.overrides.push((conv, rule));
        self
    }

    /// The rule used at convolution `i` (from 1) of `n`.
    fn rule_at(&self, i: usize, n: usize) -> LrpRule {
        self.overrides
            .iter()
            .find(|(c, _)| *c == i)
            .map_or_else(|| self.composite.rule_for(i, n), |(_, r)| *r)
    }

    /// See [`crate::Attribute::attribute`].
    ///
    /// # Errors
    /// As [`crate::Attribute::attribute`]; also a rule for a convolution
    /// the network does not have.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        self.relevance(input, target, None)
    }

    /// The relevance at the input (`at` = `None`, `[N, C, H, W]`) or at the
    /// output of layer `at` (`[N, C, h, w]`).
    fn relevance(
        &self,
        input: &Tensor,
        target: &Target,
        at: Option<LayerName>,
    ) -> Result<Tensor, VizError> {
        let model = self.model;
        target.validate(model, input.dims())?;
        let x = model_input(model, input)?;
        let target = fix_target(model, &x, target)?;
        let layers = model.spec().spatial_layers();
        let convs = layers
            .iter()
            .filter(|l| matches!(l.name, LayerName::Conv(_)))
            .count();
        if let Some((i, _)) = self.overrides.iter().find(|(i, _)| *i == 0 || *i > convs) {
            return Err(VizError::InvalidArgument(format!(
                "LRP rule for conv{i}, but `{}` has conv1..conv{convs}",
                model.spec().name
            )));
        }
        // With a layer, relevance stops at its output: the loop below ends
        // at the layer above it (checked before the forward pass).
        let bottom = match at {
            None => 0,
            Some(l) => {
                let (_, _, h, w) = x.dims4().context(|| "input shape".into())?;
                layer_shape(model, l, (h, w))?;
                require_target_above(model, &target, l, "layer-lrp")?;
                1 + layers
                    .iter()
                    .position(|s| s.name == l)
                    .expect("a layer of the network")
            }
        };
        let mut pass = model.pass();
        for l in &layers {
            pass = pass.capture(l.name);
        }
        let acts = pass.run(&x)?;
        let input_of = |k: usize| -> &Tensor {
            if k == 0 {
                &x
            } else {
                acts.get(layers[k - 1].name)
                    .expect("every layer was captured")
            }
        };
        let (n, _, _, _) = x.dims4().context(|| "input shape".into())?;
        // The relevance at the output of layer `top` (after its ReLU).
        let target = as_units(&target, n);
        let (top, mut relevance) = match &target {
            Target::Class(_) | Target::PerImage(_) => {
                let last = layers.len() - 1;
                let a = acts.get(layers[last].name).expect("captured");
                let logits = acts.logits.as_ref().expect("the pass ran to the logits");
                let classes = model.classes();
                let mut onehot = vec![0f32; n * classes];
                for i in 0..n {
                    let k = match &target {
                        Target::Class(k) => *k,
                        Target::PerImage(ks) => ks[i],
                        _ => unreachable!("class targets"),
                    };
                    onehot[i * classes + k as usize] = 1.0;
                }
                let onehot = Tensor::from_vec(onehot, (n, classes), x.device())
                    .context(|| "the class mask".into())?;
                // The global average is a rule layer with epsilon 1e-9:
                // R_a = a * (R / (p + e sign p)) / (H W), R = the logit.
                let r = (logits * &onehot)
                    .and_then(|r| divide_stabilized(&r, logits, STABILITY))
                    .context(|| "relevance of the logits".into())?;
                let (_, _, h, w) = a.dims4().context(|| "last map shape".into())?;
                let r = r
                    .reshape((n, classes, 1, 1))
                    .and_then(|r| r.broadcast_as(a.shape()))
                    .and_then(|r| r * (1.0 / (h * w) as f64))
                    .and_then(|r| r * a)
                    .context(|| "relevance through the global average".into())?;
                (last, r)
            }
            Target::Units { layer, units } => {
                let k = layers
                    .iter()
                    .position(|l| l.name == *layer)
                    .expect("validated layer");
                let a = acts.get(*layer).expect("captured");
                let (_, c, h, w) = a.dims4().context(|| format!("{layer} shape"))?;
                let mut mask = vec![0f32; n * c * h * w];
                for (i, u) in units.iter().enumerate() {
                    mask[((i * c + u.channel) * h + u.y) * w + u.x] = 1.0;
                }
                let mask = Tensor::from_vec(mask, (n, c, h, w), x.device())
                    .context(|| format!("the {layer} unit mask"))?;
                (k, (a * mask).context(|| "relevance of the units".into())?)
            }
            Target::Unit { .. } | Target::StrongestInChannel { .. } => {
                unreachable!("fix_target turns unit targets into Units")
            }
        };
        // Relevance reaches the input of layer `k` when layer `k` is done:
        // stop above the layer asked for.
        let params = model.parameters();
        for k in (bottom..=top).rev() {
            let layer = &layers[k];
            let a = input_of(k);
            let ctx = || format!("LRP at {}", layer.name);
            relevance = match layer.name {
                LayerName::Conv(i) => {
                    let rule = self.rule_at(i, convs);
                    let weight = &params[2 * (i - 1)].1;
                    let bias = &params[2 * (i - 1) + 1].1;
                    let (w, b) = rule.reweighted(weight, bias).context(ctx)?;
                    let conv = |t: &Tensor| {
                        model
                            .convolve(t, &w, &b, layer.stride, layer.padding)
                            .map_err(candle_core::Error::wrap)
                    };
                    let z = conv(a).context(ctx)?;
                    let s = divide_stabilized(&relevance, &z, rule.stabilizer()).context(ctx)?;
                    propagate(a, &s, conv).context(ctx)?
                }
                LayerName::Pool(_) => {
                    let z = max_pool(a).context(ctx)?;
                    let s = divide_stabilized(&relevance, &z, STABILITY).context(ctx)?;
                    propagate(a, &s, max_pool).context(ctx)?
                }
            };
        }
        Ok(relevance)
    }
}

/// The relevance [`Lrp`] assigns to the units of a hidden layer: the output
/// of convolution `layer` (after its ReLU, which passes relevance
/// unchanged) or of a max-pool, `[N, C, h, w]`, with the same rules above
/// it. Each image's map sums to about the target's value when no
/// stabiliser absorbs relevance. Captum's `LayerLRP` on that layer (layer
/// outputs).
#[derive(Debug, Clone)]
pub struct LayerLrp<'a> {
    lrp: Lrp<'a>,
    layer: LayerName,
}

impl<'a> LayerLrp<'a> {
    /// The relevance at `layer` of `lrp`'s model, with `lrp`'s rules (e.g.
    /// `Lrp::new(&model).composite(..)`).
    pub fn new(lrp: Lrp<'a>, layer: LayerName) -> Self {
        Self { lrp, layer }
    }

    /// The map of every image at the layer's resolution.
    ///
    /// # Errors
    /// As [`Lrp::attribute`]; also a layer the network does not have and a
    /// hidden-unit target that is not above the layer.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        self.lrp.relevance(input, target, Some(self.layer))
    }
}

impl crate::Attribute for Lrp<'_> {
    fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        Lrp::attribute(self, input, target)
    }
}

/// `r / (z + e sign z)`, `sign 0 = 1`.
fn divide_stabilized(r: &Tensor, z: &Tensor, e: f32) -> candle_core::Result<Tensor> {
    let sign = z.ge(0.0)?.to_dtype(DType::F32)?.affine(2.0, -1.0)?;
    r / (z + (sign * f64::from(e))?)?
}

/// `a * (d/da sum(layer(a) * s))`: the layer's transposed map of `s`,
/// times its input.
fn propagate(
    a: &Tensor,
    s: &Tensor,
    layer: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let var = Var::from_tensor(&a.detach())?;
    let objective = (layer(var.as_tensor())? * s.detach())?.sum_all()?;
    let grads = objective.backward()?;
    let g = match grads.get(var.as_tensor()) {
        Some(g) => g.clone(),
        None => a.zeros_like()?,
    };
    a * g
}
