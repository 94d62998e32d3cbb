//! The attribution methods, one type per method with one verb
//! (`attribute`), in Captum's style, and [`Method`] to pick one at run time.

use std::fmt;
use std::str::FromStr;

use allcnn_models::{AllCnn, LayerName};
use candle_core::{DType, Tensor, Var};

use crate::error::{CandleContext, VizError};
use crate::relu::{BackwardRule, RuleReluAll};
use crate::target::{argmax_first, layer_shape, Target, Unit};

/// An attribution method: maps an input batch and a [`Target`] to one map
/// per image, of the input's shape.
pub trait Attribute {
    /// The map of every image of `input` `[N, C, H, W]` for `target`:
    /// `[N, C, H, W]` f32 on the model's device.
    ///
    /// The input is moved to the model's device and converted to f32. The
    /// model is not modified: a normal forward/backward pass afterwards gives
    /// the usual gradients.
    ///
    /// # Errors
    /// An invalid target (see [`Target::validate`]), an input the model
    /// cannot take, or a candle error naming the step.
    fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError>;
}

macro_rules! method_type {
    ($(#[$doc:meta])* $name:ident, $rule:expr, $abs:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name<'a> {
            model: &'a AllCnn,
        }

        impl<'a> $name<'a> {
            /// The method on `model`.
            pub fn new(model: &'a AllCnn) -> Self {
                Self { model }
            }

            /// See [`Attribute::attribute`].
            ///
            /// # Errors
            /// As [`Attribute::attribute`].
            pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
                let map = propagate(self.model, $rule, input, target)?;
                if $abs {
                    map.abs().context(|| "absolute value of the gradient".into())
                } else {
                    Ok(map)
                }
            }
        }

        impl Attribute for $name<'_> {
            fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
                $name::attribute(self, input, target)
            }
        }
    };
}

method_type!(
    /// Backpropagation: the gradient of the target with respect to the
    /// input (ReLU backward `R * [f > 0]`). Captum's `Saliency(abs=False)`.
    Gradient,
    BackwardRule::Gradient,
    false
);
method_type!(
    /// Saliency: the absolute value of [`Gradient`] (Simonyan et al.;
    /// Captum's `Saliency` with its default `abs=True`).
    Saliency,
    BackwardRule::Gradient,
    true
);
method_type!(
    /// Guided backpropagation (Springenberg et al.): ReLU backward
    /// `R * [f > 0] * [R > 0]`; convolutions and max-pools pass the signal back
    /// as the gradient does. Captum's `GuidedBackprop` and, for a hidden
    /// [`Target::Unit`], `NeuronGuidedBackprop`.
    GuidedBackprop,
    BackwardRule::GuidedBackprop,
    false
);
method_type!(
    /// Zeiler and Fergus's deconvnet: ReLU backward `R * [R > 0]` (the
    /// forward input ignored); max-pool routes the signal through its
    /// switches. Captum's `Deconvolution` / `NeuronDeconvolution`.
    Deconvnet,
    BackwardRule::Deconvnet,
    false
);

/// A method chosen at run time (e.g. from `--method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// [`Gradient`].
    Gradient,
    /// [`Saliency`].
    Saliency,
    /// [`GuidedBackprop`].
    GuidedBackprop,
    /// [`Deconvnet`].
    Deconvnet,
}

impl Method {
    /// Every method, in the order of the comparison figure.
    pub const ALL: [Method; 4] = [
        Method::Gradient,
        Method::Saliency,
        Method::Deconvnet,
        Method::GuidedBackprop,
    ];

    /// The command-line name: `gradient`, `saliency`, `guided-backprop`,
    /// `deconvnet`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Gradient => "gradient",
            Method::Saliency => "saliency",
            Method::GuidedBackprop => "guided-backprop",
            Method::Deconvnet => "deconvnet",
        }
    }

    /// Whether the maps are signed (rendered around mid-grey) rather than
    /// non-negative (rendered as heat maps).
    pub fn is_signed(self) -> bool {
        !matches!(self, Method::Saliency)
    }

    /// Runs this method; see [`Attribute::attribute`].
    ///
    /// # Errors
    /// As [`Attribute::attribute`].
    pub fn attribute(
        self,
        model: &AllCnn,
        input: &Tensor,
        target: &Target,
    ) -> Result<Tensor, VizError> {
        match self {
            Method::Gradient => Gradient::new(model).attribute(input, target),
            Method::Saliency => Saliency::new(model).attribute(input, target),
            Method::GuidedBackprop => GuidedBackprop::new(model).attribute(input, target),
            Method::Deconvnet => Deconvnet::new(model).attribute(input, target),
        }
    }
}

impl FromStr for Method {
    type Err = VizError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "gradient" | "backprop" | "backpropagation" => Ok(Method::Gradient),
            "saliency" => Ok(Method::Saliency),
            "guided-backprop" | "guided" | "guided-backpropagation" => Ok(Method::GuidedBackprop),
            "deconvnet" | "deconvolution" | "deconv" => Ok(Method::Deconvnet),
            _ => Err(VizError::BadMethod {
                name: s.to_string(),
            }),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Runs each of `methods` on the same input and target (for the comparison
/// figure), in the order given.
///
/// # Errors
/// As [`Attribute::attribute`].
pub fn attribute_all(
    model: &AllCnn,
    methods: &[Method],
    input: &Tensor,
    target: &Target,
) -> Result<Vec<(Method, Tensor)>, VizError> {
    methods
        .iter()
        .map(|&m| Ok((m, m.attribute(model, input, target)?)))
        .collect()
}

/// The shared mechanism: a forward pass with `rule` at every ReLU, the target
/// value summed over the batch, and candle's backward to the input.
fn propagate(
    model: &AllCnn,
    rule: BackwardRule,
    input: &Tensor,
    target: &Target,
) -> Result<Tensor, VizError> {
    target.validate(model, input.dims())?;
    let dev = model.device();
    let x = input
        .to_device(dev)
        .and_then(|x| x.to_dtype(DType::F32))
        .context(|| "moving the input to the model's device".into())?;
    // The input is the only variable: the parameters stay plain tensors and
    // the model is never touched.
    let var = Var::from_tensor(&x).context(|| "the input as a variable".into())?;
    let relu = RuleReluAll(rule);
    let (n, _, h, w) = x.dims4().context(|| "input shape".into())?;
    let objective = match target {
        Target::Class(_) | Target::PerImage(_) => {
            let logits = model.pass().relu(&relu).logits(var.as_tensor())?;
            let classes = model.classes();
            let per_image: Vec<u32> = match target {
                Target::Class(k) => vec![*k; n],
                Target::PerImage(ks) => ks.clone(),
                _ => unreachable!("class targets only"),
            };
            let mut onehot = vec![0f32; n * classes];
            for (i, &k) in per_image.iter().enumerate() {
                onehot[i * classes + k as usize] = 1.0;
            }
            let onehot = Tensor::from_vec(onehot, (n, classes), dev)
                .context(|| "building the class mask".into())?;
            logits
                .mul(&onehot)
                .and_then(|t| t.sum_all())
                .context(|| "selecting the target logits".into())?
        }
        Target::Unit { layer, .. }
        | Target::StrongestInChannel { layer, .. }
        | Target::Units { layer, .. } => {
            let acts = model
                .pass()
                .relu(&relu)
                .capture(*layer)
                .stop_at(*layer)
                .run(var.as_tensor())?;
            let act = acts
                .get(*layer)
                .expect("the pass captured the requested layer");
            let (c, lh, lw) = layer_shape(model, *layer, (h, w))?;
            let units = units_for(target, act, *layer)?;
            let mut mask = vec![0f32; n * c * lh * lw];
            for (i, u) in units.iter().enumerate() {
                mask[((i * c + u.channel) * lh + u.y) * lw + u.x] = 1.0;
            }
            let mask = Tensor::from_vec(mask, (n, c, lh, lw), dev)
                .context(|| format!("building the {layer} unit mask"))?;
            act.mul(&mask)
                .and_then(|t| t.sum_all())
                .context(|| format!("selecting the {layer} units"))?
        }
    };
    let grads = objective
        .backward()
        .context(|| format!("backward pass ({rule:?})"))?;
    match grads.get(var.as_tensor()) {
        Some(g) => Ok(g.clone()),
        None => var
            .as_tensor()
            .zeros_like()
            .context(|| "an all-zero map".into()),
    }
}

/// The unit of every image for a hidden-layer target.
fn units_for(target: &Target, act: &Tensor, layer: LayerName) -> Result<Vec<Unit>, VizError> {
    let (n, _, _, _) = act.dims4().context(|| format!("{layer} shape"))?;
    Ok(match target {
        Target::Unit { channel, y, x, .. } => vec![
            Unit {
                channel: *channel,
                y: *y,
                x: *x,
            };
            n
        ],
        Target::Units { units, .. } => units.clone(),
        Target::StrongestInChannel { channel, .. } => strongest_units(act, *channel)?,
        Target::Class(_) | Target::PerImage(_) => unreachable!("hidden-layer targets only"),
    })
}

/// The first maximum (row-major) of `channel` of `act` `[N, C, H, W]` for
/// every image, with its value.
pub(crate) fn strongest(act: &Tensor, channel: usize) -> Result<Vec<(Unit, f32)>, VizError> {
    let (_, _, _, w) = act.dims4().context(|| "activation shape".into())?;
    let planes = act
        .narrow(1, channel, 1)
        .and_then(|t| t.flatten_from(1))
        .and_then(|t| t.detach().to_dtype(DType::F32))
        .and_then(|t| t.to_vec2::<f32>())
        .context(|| format!("reading channel {channel}"))?;
    Ok(planes
        .iter()
        .map(|p| {
            let i = argmax_first(p);
            (
                Unit {
                    channel,
                    y: i / w,
                    x: i % w,
                },
                p[i],
            )
        })
        .collect())
}

fn strongest_units(act: &Tensor, channel: usize) -> Result<Vec<Unit>, VizError> {
    Ok(strongest(act, channel)?
        .into_iter()
        .map(|(u, _)| u)
        .collect())
}
