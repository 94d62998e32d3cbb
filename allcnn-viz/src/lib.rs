//! Backpropagation, saliency, deconvnet and guided backpropagation for the
//! networks of "Striving for Simplicity: The All Convolutional Net"
//! (Springenberg et al., 2014), on candle, exact against Captum; and the
//! paper's figures.
//!
//! # Methods
//! One type per method with one verb, as in Captum: [`Gradient`],
//! [`Saliency`], [`GuidedBackprop`] and [`Deconvnet`], each with
//! `new(&model).attribute(&input, &target) -> Tensor` (also through the
//! [`Attribute`] trait, or [`Method::attribute`] to choose at run time).
//! The methods differ only at the ReLUs ([`BackwardRule`]), with `f` the
//! ReLU's forward input and `R` the signal from above:
//!
//! | method | ReLU backward |
//! |---|---|
//! | [`Gradient`] (and [`Saliency`] = its absolute value) | `R * [f > 0]` |
//! | [`Deconvnet`] | `R * [R > 0]` |
//! | [`GuidedBackprop`] | `R * [f > 0] * [R > 0]` |
//!
//! Convolutions pass the signal back through their transposed convolution
//! and max-pools through their switches, exactly as the gradient does. One
//! custom ReLU op (forward written once for CPU, CUDA and Metal) carries the
//! rule; it is plugged into the model's forward pass through
//! [`allcnn_models::ReluRule`], the input is the only variable, and the model
//! is never modified.
//!
//! Beyond the paper, at Captum's numbers: [`InputXGradient`], [`GradCam`],
//! [`GuidedGradCam`], [`IntegratedGradients`] (every [`Quadrature`] Captum
//! has), [`Occlusion`], [`DeepLift`] and [`DeepLiftShap`] (rescale rule),
//! seeded [`GradientShap`], [`Lrp`] (epsilon, gamma and alpha1-beta0 rules per convolution, or an
//! [`LrpComposite`]), [`FeatureAblation`] and exact [`ShapleyValues`] over a
//! [`FeatureMask`], and seeded [`ShapleyValueSampling`], [`KernelShap`] and
//! [`Lime`]; at a hidden layer, [`LayerActivation`],
//! [`LayerGradientXActivation`], [`LayerIntegratedGradients`],
//! [`InternalInfluence`], [`LayerConductance`], [`LayerDeepLift`],
//! [`LayerDeepLiftShap`], [`LayerGradientShap`], [`LayerFeatureAblation`]
//! and [`LayerLrp`]; through one hidden unit, [`NeuronConductance`];
//! [`SmoothGrad`]
//! wraps any method. [`Method`] picks one at
//! run time, its settings in [`MethodOptions`].
//!
//! # Can a map be trusted?
//! [`SanityCheck`] runs Adebayo et al.'s model- and data-randomisation
//! tests ([`similarity`]: Spearman rank correlation and SSIM against the
//! trained network's maps) with a [`Verdict`] per method;
//! [`DeletionInsertion`] measures faithfulness by deleting or inserting
//! pixels in the order a map ranks them.
//!
//! # Targets
//! [`Target`] says what value the signal starts from: a class logit
//! ([`Target::Class`], one per image with [`Target::PerImage`]) or one unit
//! of a hidden layer after its ReLU ([`Target::Unit`], the strongest unit of
//! a channel per image with [`Target::StrongestInChannel`]), every other unit
//! zero. On a command line, [`TargetSpec`] parses `class:K`, `labels`,
//! `predicted`, `unit:conv7:7:3:3` (layer:channel:y:x) and
//! `strongest:conv9:3`, and [`TargetSpec::resolve`] turns it into a
//! [`Target`] for an input, checking classes, layers, channels and positions
//! with errors that list what is valid.
//!
//! # Figures and rendering
//! - [`render`]: maps to pictures (signed maps around mid-grey with a
//!   symmetric percentile clip, absolute maps as heat maps), [`render::Grid`],
//!   [`render::write_maps`] (one PNG per image),
//!   [`render::comparison_grid`] (image beside each method's map) and
//!   [`render::top_activation_grid`].
//! - [`TopActivations`]: scans batches for the `k` images that activate each
//!   channel of a layer most, then reconstructs the strongest unit of each
//!   ([`TopActivations::reconstruct`]) cropped to its exact
//!   [`ReceptiveField`].
//!
//! # What a CLI calls
//! ```text
//! allcnn viz --method M --target T --out OUT
//!   let method: Method = M.parse()?;
//!   let target = T.parse::<TargetSpec>()?.resolve(&model, &input, labels.as_ref())?;
//!   let maps = method.attribute(&model, &input, &target)?;          // [N, 3, H, W]
//!   OUT.safetensors: save `maps` as `attribution`
//!   OUT/ folder:     render::write_maps(&maps, Style::for_method(method), &opts, OUT, &names)?
//!                    let all = attribute_all(&model, &[Gradient, Deconvnet, GuidedBackprop], &input, &target)?;
//!                    render::write_png(&render::comparison_grid(&input, &all, &opts)?, OUT/"comparison.png")?
//! allcnn viz top --layer L --channels C -k K --out fig.png
//!   let mut top = TopActivations::new(&model, L, C, K)?;
//!   for batch in loader { top.push(&batch)?; bar.inc(n); }
//!   let fig = top.reconstruct(&[Method::GuidedBackprop, Method::Deconvnet])?;
//!   render::write_png(&render::top_activation_grid(&fig, &opts)?, "fig.png")?
//! ```
//!
//! # Example
//! ```
//! use allcnn_models::{AllCnn, ArchSpec, Init};
//! use allcnn_viz::render::{self, RenderOptions, Style};
//! use allcnn_viz::{GuidedBackprop, Target, TargetSpec};
//! use candle_core::{Device, Tensor};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = Device::Cpu;
//! let model = AllCnn::init(ArchSpec::by_name("all-cnn-c", 10)?, Init::HeNormal, 0, &dev)?;
//! let input = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &dev)?;
//!
//! // Guided backpropagation of class 3 for both images.
//! let maps = GuidedBackprop::new(&model).attribute(&input, &Target::Class(3))?;
//! assert_eq!(maps.dims(), &[2, 3, 32, 32]);
//!
//! // The same from a command-line string: one unit of conv7.
//! let target = "unit:conv7:7:3:3".parse::<TargetSpec>()?.resolve(&model, &input, None)?;
//! let neuron = GuidedBackprop::new(&model).attribute(&input, &target)?;
//!
//! // Rendering is separate: a signed map around mid-grey.
//! let png = render::render(&neuron.get(0)?, Style::Signed, RenderOptions::default().percentile)?;
//! assert_eq!(png.dimensions(), (32, 32));
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

#[macro_use]
mod ablation;
mod cam;
mod deeplift;
mod error;
mod faithful;
mod gradshap;
#[macro_use]
mod integrated;
mod layer;
mod lrp;
mod methods;
mod occlusion;
mod receptive;
mod relu;
pub mod render;
mod sanity;
mod smooth;
mod surrogate;
mod target;
mod top;

pub use ablation::{
    FeatureAblation, FeatureMask, LayerFeatureAblation, ShapleyValueSampling, ShapleyValues,
    MAX_EXACT_FEATURES,
};
pub use cam::{default_cam_layer, interpolate, GradCam, GuidedGradCam, Interpolation};
pub use deeplift::{DeepLift, DeepLiftShap, LayerDeepLift, LayerDeepLiftShap};
pub use error::VizError;
pub use faithful::{auc, Curves, DeletionInsertion};
pub use gradshap::{GradientShap, LayerGradientShap, ShapDraw};
pub use integrated::{Baseline, IntegratedGradients, Quadrature};
pub use layer::{
    InternalInfluence, LayerActivation, LayerConductance, LayerGradientXActivation,
    LayerIntegratedGradients, NeuronConductance,
};
pub use lrp::{LayerLrp, Lrp, LrpComposite, LrpRule};
pub use methods::{
    attribute_all, Attribute, Deconvnet, Gradient, GuidedBackprop, InputXGradient, Method,
    MethodInfo, MethodOptions, Saliency, METHODS,
};
pub use occlusion::Occlusion;
pub use receptive::{crop, ReceptiveField, Window};
pub use relu::{BackwardRule, RuleReluAll};
pub use sanity::{
    randomize_layers, similarity, spearman, ssim, Randomized, SanityCheck, SanityReport, SanityRow,
    Similarity, Verdict,
};
pub use smooth::{NoiseAggregation, NoiseLevel, SmoothGrad, SmoothOptions};
pub use surrogate::{KernelShap, Lime};
pub use target::{labels_vec, layer_shape, predict, predicted_classes, Target, TargetSpec, Unit};
pub use top::{Candidate, TopActivations, TopEntry, TopFigure, TopRow};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
