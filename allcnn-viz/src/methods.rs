//! The attribution methods, one type per method with one verb
//! (`attribute`), in Captum's style, and [`Method`] to pick one at run time.

use std::fmt;
use std::str::FromStr;

use allcnn_models::{AllCnn, LayerName, ReluRule};
use candle_core::{DType, Tensor, Var};

use crate::ablation::{FeatureAblation, FeatureMask, ShapleyValueSampling, ShapleyValues};
use crate::cam::{default_cam_layer, interpolate, GradCam, GuidedGradCam, Interpolation};
use crate::deeplift::{DeepLift, DeepLiftShap};
use crate::error::{CandleContext, VizError};
use crate::gradshap::GradientShap;
use crate::integrated::{Baseline, IntegratedGradients, Quadrature};
use crate::lrp::{Lrp, LrpComposite};
use crate::occlusion::Occlusion;
use crate::relu::{BackwardRule, RuleReluAll};
use crate::smooth::{SmoothGrad, SmoothOptions};
use crate::surrogate::{KernelShap, Lime};
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

/// Input x gradient (Shrikumar et al.): [`Gradient`] times the input,
/// element by element. Captum's `InputXGradient`.
#[derive(Debug, Clone, Copy)]
pub struct InputXGradient<'a> {
    model: &'a AllCnn,
}

impl<'a> InputXGradient<'a> {
    /// The method on `model`.
    pub fn new(model: &'a AllCnn) -> Self {
        Self { model }
    }

    /// See [`Attribute::attribute`].
    ///
    /// # Errors
    /// As [`Attribute::attribute`].
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        let grad = propagate(self.model, BackwardRule::Gradient, input, target)?;
        let x = input
            .to_device(grad.device())
            .and_then(|x| x.to_dtype(DType::F32))
            .context(|| "the input on the model's device".into())?;
        (grad * x).context(|| "gradient times input".into())
    }
}

impl Attribute for InputXGradient<'_> {
    fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        InputXGradient::attribute(self, input, target)
    }
}

/// A method chosen at run time (e.g. from `--method`), with its settings
/// in [`MethodOptions`].
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
    /// [`InputXGradient`].
    InputXGradient,
    /// [`GradCam`] of [`MethodOptions::layer`], upsampled to the input by
    /// [`MethodOptions::interpolation`]: `[N, 1, H, W]`.
    GradCam,
    /// [`GuidedGradCam`] of [`MethodOptions::layer`].
    GuidedGradCam,
    /// [`IntegratedGradients`] with [`MethodOptions::steps`],
    /// [`MethodOptions::quadrature`] and [`MethodOptions::baseline`].
    IntegratedGradients,
    /// [`Occlusion`] with [`MethodOptions::window`],
    /// [`MethodOptions::stride`] and [`MethodOptions::baseline`].
    Occlusion,
    /// [`DeepLift`] against [`MethodOptions::baseline`].
    DeepLift,
    /// [`DeepLiftShap`] against [`MethodOptions::shap_baselines`] seeded
    /// Gaussian images around [`MethodOptions::baseline`] (standard deviation
    /// 1, seed [`MethodOptions::seed`]).
    DeepLiftShap,
    /// [`GradientShap`] with [`MethodOptions::samples`] draws from
    /// [`MethodOptions::shap_baselines`] Gaussian baselines as
    /// [`Method::DeepLiftShap`]'s, seed [`MethodOptions::seed`].
    GradientShap,
    /// [`Lrp`] with the rules of [`MethodOptions::lrp`].
    Lrp,
    /// [`FeatureAblation`] of [`MethodOptions::patch`] patches (default
    /// 4x4) set to [`MethodOptions::baseline`].
    FeatureAblation,
    /// [`ShapleyValues`] (exact) of [`MethodOptions::patch`] patches
    /// (default 16x16) against [`MethodOptions::baseline`].
    ShapleyValues,
    /// [`ShapleyValueSampling`] of [`MethodOptions::patch`] patches (default
    /// 4x4), [`MethodOptions::samples`] orders seeded by
    /// [`MethodOptions::seed`].
    ShapleyValueSampling,
    /// [`KernelShap`] of [`MethodOptions::patch`] patches (default 4x4),
    /// 8 x [`MethodOptions::samples`] coalitions (200 by default), seeded by
    /// [`MethodOptions::seed`].
    KernelShap,
    /// [`Lime`] of [`MethodOptions::patch`] patches (default 4x4),
    /// 8 x [`MethodOptions::samples`] patterns, seeded by
    /// [`MethodOptions::seed`].
    Lime,
}

/// The settings of the methods that have any, for [`Method::attribute_with`].
#[derive(Debug, Clone, PartialEq)]
pub struct MethodOptions {
    /// Grad-CAM's layer; `None` is [`default_cam_layer`].
    pub layer: Option<LayerName>,
    /// Whether Grad-CAM's map is rectified (on, as in the paper).
    pub relu_attributions: bool,
    /// How Grad-CAM's map is brought to the input's size (Guided Grad-CAM
    /// always uses [`Interpolation::Nearest`], as Captum).
    pub interpolation: Interpolation,
    /// Integrated Gradients: points on the path.
    pub steps: usize,
    /// Integrated Gradients: the quadrature rule.
    pub quadrature: Quadrature,
    /// Integrated Gradients and Occlusion: the constant baseline.
    pub baseline: f32,
    /// Occlusion: the window (height, width).
    pub window: (usize, usize),
    /// Occlusion: the stride (down, across).
    pub stride: (usize, usize),
    /// LRP: the rule of every convolution (default: the layered composite,
    /// `composite:0.25:0.25`; [`Lrp::new`] keeps Captum's default, LRP-0,
    /// which equals input x gradient on these networks).
    pub lrp: LrpComposite,
    /// Feature ablation and Shapley values: the patch (height, width) of a
    /// feature; `None` is the method's default (16x16 for exact Shapley
    /// values, 4x4 otherwise).
    pub patch: Option<(usize, usize)>,
    /// Shapley value sampling: random feature orders; GradientShap: draws
    /// per image; KernelShap and Lime: an eighth of the samples.
    pub samples: usize,
    /// DeepLiftShap and GradientShap: how many baselines.
    pub shap_baselines: usize,
    /// Seed of Shapley value sampling's orders, GradientShap's draws and the
    /// SHAP methods' baselines.
    pub seed: u64,
    /// Images per pass for Integrated Gradients and Occlusion.
    pub batch: usize,
    /// SmoothGrad around the method, if set.
    pub smooth: Option<SmoothOptions>,
}

impl Default for MethodOptions {
    fn default() -> Self {
        Self {
            layer: None,
            relu_attributions: true,
            interpolation: Interpolation::Bilinear,
            steps: 50,
            quadrature: Quadrature::GaussLegendre,
            baseline: 0.0,
            window: (8, 8),
            stride: (4, 4),
            lrp: LrpComposite::Layered {
                epsilon: 0.25,
                gamma: 0.25,
            },
            patch: None,
            samples: 25,
            shap_baselines: 8,
            seed: 0,
            batch: 64,
            smooth: None,
        }
    }
}

/// One row of the method table: everything about a method except its
/// computation. A new method is a row here plus its `match` arm in
/// [`Method::attribute_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodInfo {
    /// The method.
    pub method: Method,
    /// The command-line name.
    pub name: &'static str,
    /// Other accepted spellings.
    pub aliases: &'static [&'static str],
    /// A column title for narrow figure cells.
    pub short: &'static str,
    /// Whether its maps are signed (drawn around mid-grey) rather than
    /// non-negative (heat maps).
    pub signed: bool,
}

/// The method table, in the order of the comparison figure.
pub const METHODS: [MethodInfo; 18] = [
    MethodInfo {
        method: Method::Gradient,
        name: "gradient",
        aliases: &["backprop", "backpropagation"],
        short: "grad",
        signed: true,
    },
    MethodInfo {
        method: Method::Saliency,
        name: "saliency",
        aliases: &[],
        short: "saliency",
        signed: false,
    },
    MethodInfo {
        method: Method::Deconvnet,
        name: "deconvnet",
        aliases: &["deconvolution", "deconv"],
        short: "deconv",
        signed: true,
    },
    MethodInfo {
        method: Method::GuidedBackprop,
        name: "guided-backprop",
        aliases: &["guided", "guided-backpropagation"],
        short: "guided",
        signed: true,
    },
    MethodInfo {
        method: Method::InputXGradient,
        name: "input-x-gradient",
        aliases: &["inputxgradient", "input-times-gradient"],
        short: "in*grad",
        signed: true,
    },
    MethodInfo {
        method: Method::GradCam,
        name: "grad-cam",
        aliases: &["gradcam"],
        short: "grad-cam",
        signed: false,
    },
    MethodInfo {
        method: Method::GuidedGradCam,
        name: "guided-grad-cam",
        aliases: &["guided-gradcam"],
        short: "g-gradcam",
        signed: true,
    },
    MethodInfo {
        method: Method::IntegratedGradients,
        name: "integrated-gradients",
        aliases: &["ig"],
        short: "int-grad",
        signed: true,
    },
    MethodInfo {
        method: Method::Occlusion,
        name: "occlusion",
        aliases: &[],
        short: "occl",
        signed: true,
    },
    MethodInfo {
        method: Method::DeepLift,
        name: "deep-lift",
        aliases: &["deeplift"],
        short: "deeplift",
        signed: true,
    },
    MethodInfo {
        method: Method::DeepLiftShap,
        name: "deep-lift-shap",
        aliases: &["deepliftshap"],
        short: "dl-shap",
        signed: true,
    },
    MethodInfo {
        method: Method::GradientShap,
        name: "gradient-shap",
        aliases: &["gradientshap"],
        short: "grad-shap",
        signed: true,
    },
    MethodInfo {
        method: Method::Lrp,
        name: "lrp",
        aliases: &["layer-wise-relevance-propagation"],
        short: "lrp",
        signed: true,
    },
    MethodInfo {
        method: Method::FeatureAblation,
        name: "feature-ablation",
        aliases: &["ablation"],
        short: "ablation",
        signed: true,
    },
    MethodInfo {
        method: Method::ShapleyValues,
        name: "shapley-values",
        aliases: &["shapley"],
        short: "shapley",
        signed: true,
    },
    MethodInfo {
        method: Method::ShapleyValueSampling,
        name: "shapley-value-sampling",
        aliases: &["shapley-sampling"],
        short: "shap-smp",
        signed: true,
    },
    MethodInfo {
        method: Method::KernelShap,
        name: "kernel-shap",
        aliases: &["kernelshap"],
        short: "k-shap",
        signed: true,
    },
    MethodInfo {
        method: Method::Lime,
        name: "lime",
        aliases: &[],
        short: "lime",
        signed: true,
    },
];

impl Method {
    /// Every method, in the order of the comparison figure.
    pub const ALL: [Method; METHODS.len()] = {
        let mut all = [Method::Gradient; METHODS.len()];
        let mut i = 0;
        while i < METHODS.len() {
            all[i] = METHODS[i].method;
            i += 1;
        }
        all
    };

    /// The paper's three (the comparison figure of section 3.4).
    pub const PAPER: [Method; 3] = [Method::Gradient, Method::Deconvnet, Method::GuidedBackprop];

    /// This method's row of [`METHODS`].
    pub fn info(self) -> &'static MethodInfo {
        METHODS
            .iter()
            .find(|i| i.method == self)
            .expect("every method has a row in METHODS")
    }

    /// The command-line name: `gradient`, `saliency`, `guided-backprop`,
    /// `deconvnet`, `input-x-gradient`, `grad-cam`, `guided-grad-cam`, `integrated-gradients`,
    /// `occlusion`, `deep-lift`, `deep-lift-shap`, `gradient-shap`, `lrp`, `feature-ablation`,
    /// `shapley-values`, `shapley-value-sampling`, `kernel-shap`, `lime`.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Whether the maps are signed (rendered around mid-grey) rather than
    /// non-negative (rendered as heat maps).
    pub fn is_signed(self) -> bool {
        self.info().signed
    }

    /// Runs this method with default options; see [`Attribute::attribute`].
    ///
    /// # Errors
    /// As [`Attribute::attribute`].
    pub fn attribute(
        self,
        model: &AllCnn,
        input: &Tensor,
        target: &Target,
    ) -> Result<Tensor, VizError> {
        self.attribute_with(model, input, target, &MethodOptions::default())
    }

    /// Runs this method with `options`: `[N, C, H, W]`, or `[N, 1, H, W]`
    /// for Grad-CAM.
    ///
    /// # Errors
    /// As [`Attribute::attribute`], and an option the method rejects.
    pub fn attribute_with(
        self,
        model: &AllCnn,
        input: &Tensor,
        target: &Target,
        options: &MethodOptions,
    ) -> Result<Tensor, VizError> {
        if let Some(smooth) = options.smooth {
            return SmoothGrad::new(model, self)
                .method_options(options.clone())
                .options(smooth)
                .attribute(input, target);
        }
        let o = options;
        let layer = o.layer.unwrap_or_else(|| default_cam_layer(model));
        match self {
            Method::Gradient => Gradient::new(model).attribute(input, target),
            Method::Saliency => Saliency::new(model).attribute(input, target),
            Method::GuidedBackprop => GuidedBackprop::new(model).attribute(input, target),
            Method::Deconvnet => Deconvnet::new(model).attribute(input, target),
            Method::InputXGradient => InputXGradient::new(model).attribute(input, target),
            Method::GradCam => {
                let cam = GradCam::new(model, layer)
                    .relu_attributions(o.relu_attributions)
                    .attribute(input, target)?;
                let (_, _, h, w) = input.dims4().context(|| "input shape".into())?;
                interpolate(&cam, (h, w), o.interpolation)
            }
            Method::GuidedGradCam => GuidedGradCam::new(model, layer).attribute(input, target),
            Method::IntegratedGradients => IntegratedGradients::new(model)
                .steps(o.steps)
                .quadrature(o.quadrature)
                .baseline(Baseline::Constant(o.baseline))
                .batch(o.batch)
                .attribute(input, target),
            Method::Occlusion => Occlusion::new(model)
                .window(o.window.0, o.window.1)
                .stride(o.stride.0, o.stride.1)
                .baseline(o.baseline)
                .batch(o.batch)
                .attribute(input, target),
            Method::DeepLift => DeepLift::new(model)
                .baseline(Baseline::Constant(o.baseline))
                .attribute(input, target),
            Method::DeepLiftShap => {
                let (_, c, h, w) = input.dims4().context(|| "input shape".into())?;
                let baselines = noise_baselines(o, (c, h, w), model.device())?;
                DeepLiftShap::new(model, baselines).attribute(input, target)
            }
            Method::GradientShap => {
                let (_, c, h, w) = input.dims4().context(|| "input shape".into())?;
                let baselines = noise_baselines(o, (c, h, w), model.device())?;
                GradientShap::new(model, baselines)
                    .samples(o.samples)
                    .seed(o.seed)
                    .batch(o.batch)
                    .attribute(input, target)
            }
            Method::Lrp => Lrp::new(model).composite(o.lrp).attribute(input, target),
            Method::FeatureAblation => FeatureAblation::new(model)
                .mask(patches(o.patch, (4, 4), input)?)
                .baseline(Baseline::Constant(o.baseline))
                .batch(o.batch)
                .attribute(input, target),
            Method::ShapleyValues => ShapleyValues::new(model)
                .mask(patches(o.patch, (16, 16), input)?)
                .baseline(Baseline::Constant(o.baseline))
                .batch(o.batch)
                .attribute(input, target),
            Method::ShapleyValueSampling => ShapleyValueSampling::new(model)
                .mask(patches(o.patch, (4, 4), input)?)
                .baseline(Baseline::Constant(o.baseline))
                .samples(o.samples)
                .seed(o.seed)
                .batch(o.batch)
                .attribute(input, target),
            Method::KernelShap => KernelShap::new(model)
                .mask(patches(o.patch, (4, 4), input)?)
                .baseline(Baseline::Constant(o.baseline))
                .samples(8 * o.samples)
                .seed(o.seed)
                .batch(o.batch)
                .attribute(input, target),
            Method::Lime => Lime::new(model)
                .mask(patches(o.patch, (4, 4), input)?)
                .baseline(Baseline::Constant(o.baseline))
                .samples(8 * o.samples)
                .seed(o.seed)
                .batch(o.batch)
                .attribute(input, target),
        }
    }
}

/// The patches of [`MethodOptions::patch`], or the method's `default`. A
/// patch asked for that is larger than the image is refused (as an
/// occlusion window is): the image would be one feature, every pixel of
/// the map the same value.
fn patches(
    asked: Option<(usize, usize)>,
    default: (usize, usize),
    input: &Tensor,
) -> Result<FeatureMask, VizError> {
    let (_, _, h, w) = input.dims4().context(|| "input shape".into())?;
    let (height, width) = match asked {
        Some((ph, pw)) if ph > h || pw > w => {
            return Err(VizError::InvalidArgument(format!(
                "patch {ph}x{pw} is larger than the {h}x{w} image, which would be one feature with the same value at every pixel; give at most {h}x{w}"
            )))
        }
        Some(p) => p,
        None => default,
    };
    Ok(FeatureMask::Patches { height, width })
}

/// DeepLiftShap's baselines for [`Method::DeepLiftShap`]: `shap_baselines`
/// images of N(baseline, 1) noise from the seeded noise stream.
fn noise_baselines(
    o: &MethodOptions,
    (c, h, w): (usize, usize, usize),
    device: &candle_core::Device,
) -> Result<Tensor, VizError> {
    use rand_distr::{Distribution, Normal};
    if o.shap_baselines == 0 {
        return Err(VizError::InvalidArgument(
            "deep-lift-shap needs at least one baseline".into(),
        ));
    }
    let mut rng = allcnn_seed::rng(o.seed, allcnn_seed::Stream::Noise, u64::MAX, 0);
    let normal = Normal::new(o.baseline, 1.0f32)
        .map_err(|e| VizError::InvalidArgument(format!("baseline {}: {e}", o.baseline)))?;
    let data: Vec<f32> = (0..o.shap_baselines * c * h * w)
        .map(|_| normal.sample(&mut rng))
        .collect();
    Tensor::from_vec(data, (o.shap_baselines, c, h, w), device)
        .context(|| "DeepLiftShap's baselines".into())
}

impl FromStr for Method {
    type Err = VizError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = s.trim().to_ascii_lowercase().replace('_', "-");
        METHODS
            .iter()
            .find(|i| i.name == key || i.aliases.contains(&key.as_str()))
            .map(|i| i.method)
            .ok_or_else(|| VizError::BadMethod {
                name: s.to_string(),
            })
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

/// The input on the model's device as f32.
pub(crate) fn model_input(model: &AllCnn, input: &Tensor) -> Result<Tensor, VizError> {
    input
        .to_device(model.device())
        .and_then(|x| x.to_dtype(DType::F32))
        .context(|| "moving the input to the model's device".into())
}

/// The shared mechanism: a forward pass with `rule` at every ReLU, the target
/// value summed over the batch, and candle's backward to the input.
pub(crate) fn propagate(
    model: &AllCnn,
    rule: BackwardRule,
    input: &Tensor,
    target: &Target,
) -> Result<Tensor, VizError> {
    target.validate(model, input.dims())?;
    let x = model_input(model, input)?;
    // The input is the only variable: the parameters stay plain tensors and
    // the model is never touched.
    let var = Var::from_tensor(&x).context(|| "the input as a variable".into())?;
    let objective = target_values(model, &RuleReluAll(rule), var.as_tensor(), target)?
        .sum_all()
        .context(|| "summing the target over the batch".into())?;
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

/// Refuses a hidden-unit target at or below `layer`: a layer method's map
/// of a target computed before the layer would be all zero. Class targets
/// pass.
pub(crate) fn require_target_above(
    model: &AllCnn,
    target: &Target,
    layer: LayerName,
    method: &str,
) -> Result<(), VizError> {
    let Some(t) = target.layer() else {
        return Ok(());
    };
    let order = model.layer_names();
    let position = |l: LayerName| order.iter().position(|&o| o == l);
    if position(t) <= position(layer) {
        return Err(VizError::UnsupportedTarget {
            method: method.into(),
            reason: format!(
                "the target's layer {t} is not above the layer {layer}; name a later target or an earlier layer"
            ),
        });
    }
    Ok(())
}

/// The target's value for every image of `x` (on the model's device, f32):
/// `[N]`, from a forward pass with `relu` at every ReLU. Every method starts
/// from these values (their sum is what the gradient methods differentiate).
///
/// # Errors
/// As [`Attribute::attribute`]; the target is assumed validated.
pub(crate) fn target_values(
    model: &AllCnn,
    relu: &dyn ReluRule,
    x: &Tensor,
    target: &Target,
) -> Result<Tensor, VizError> {
    let dev = model.device();
    let (n, _, h, w) = x.dims4().context(|| "input shape".into())?;
    match target {
        Target::Class(_) | Target::PerImage(_) => {
            let logits = model.pass().relu(relu).logits(x)?;
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
                .and_then(|t| t.sum(1))
                .context(|| "selecting the target logits".into())
        }
        Target::Unit { layer, .. }
        | Target::StrongestInChannel { layer, .. }
        | Target::Units { layer, .. } => {
            let acts = model
                .pass()
                .relu(relu)
                .capture(*layer)
                .stop_at(*layer)
                .run(x)?;
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
                .and_then(|t| t.flatten_from(1))
                .and_then(|t| t.sum(1))
                .context(|| format!("selecting the {layer} units"))
        }
    }
}

/// `target` with a [`Target::StrongestInChannel`] fixed to the units it
/// picks on `x`, so that perturbed copies of the input (integrated
/// gradients, occlusion, noise) keep asking for the same units.
pub(crate) fn fix_target(model: &AllCnn, x: &Tensor, target: &Target) -> Result<Target, VizError> {
    Ok(match target {
        Target::StrongestInChannel { layer, channel } => {
            let acts = model.pass().capture(*layer).stop_at(*layer).run(x)?;
            let act = acts
                .get(*layer)
                .expect("the pass captured the requested layer");
            Target::Units {
                layer: *layer,
                units: strongest_units(act, *channel)?,
            }
        }
        other => other.clone(),
    })
}

/// `target` for a batch made of `copies` copies of the original batch, one
/// after the other (copy-major).
pub(crate) fn repeat_target(target: &Target, copies: usize) -> Target {
    match target {
        Target::PerImage(ks) => Target::PerImage(ks.repeat(copies)),
        Target::Units { layer, units } => Target::Units {
            layer: *layer,
            units: units.repeat(copies),
        },
        other => other.clone(),
    }
}

/// `target` with a [`Target::Unit`] spelled out as [`Target::Units`] (the
/// same unit for each of the `n` images), for code that walks the layers
/// itself.
pub(crate) fn as_units(target: &Target, n: usize) -> Target {
    match target {
        Target::Unit {
            layer,
            channel,
            y,
            x,
        } => Target::Units {
            layer: *layer,
            units: vec![
                Unit {
                    channel: *channel,
                    y: *y,
                    x: *x,
                };
                n
            ],
        },
        other => other.clone(),
    }
}

/// The (fixed) target of image `i` of a batch, for a batch of `copies`
/// modified copies of that image alone.
pub(crate) fn image_target(target: &Target, i: usize, copies: usize) -> Target {
    match target {
        Target::PerImage(ks) => Target::Class(ks[i]),
        Target::Units { layer, units } => Target::Units {
            layer: *layer,
            units: vec![units[i]; copies],
        },
        other => other.clone(),
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
