//! The architectures of Springenberg et al., "Striving for Simplicity: The
//! All Convolutional Net" (2014), as data, on [candle](https://github.com/huggingface/candle).
//!
//! The principal types and how they hand off:
//! - [`ArchSpec`]: a network as a list of [`Layer`]s (conv, the paper's
//!   overlapping max-pool, dropout). [`ArchSpec::by_name`] gives every
//!   network of the paper (`model-a` ... `all-cnn-c`, `all-cnn-imagenet`)
//!   for any class count; parameter counts and map sizes come from the spec
//!   alone. [`registry`] lists them.
//! - [`AllCnn`]: a spec with its parameters, freshly initialised
//!   ([`AllCnn::init`], seeded [`Init`]) or loaded ([`WeightsFile`]). Its
//!   [`AllCnn::forward`] gives logits; [`AllCnn::pass`] configures a
//!   [`ForwardPass`] that trains with seeded dropout ([`DropoutRng`]),
//!   captures hidden layers, stops early, or swaps the backward rule of every
//!   ReLU ([`ReluRule`]: the seam for guided backpropagation).
//! - [`WeightsFile`] and [`AllCnn::save`]: safetensors in and out, with the
//!   architecture and preprocessing recorded in the file's metadata, checked
//!   strictly on load.
//! - `hub` (cargo feature `hub`): `hf://OWNER/REPO[/FILE][@REVISION]`
//!   references to weights on the Hugging Face Hub, downloaded into the
//!   standard cache and reused offline.
//! - [`Precision`]: `f32`, `bf16` or `auto` for the CPU convolutions,
//!   resolved to a [`ConvBackend`] (the expert choice of implementation)
//!   and set with [`AllCnn::set_conv_backend`].
//! - [`kernels`]: what the network is computed with (the convolution in
//!   every pass and precision, the max-pool with switches, the ReLU rules,
//!   the in-place SGD update), behind one safe API; the crate's only
//!   `unsafe` code lives there.
//!
//! ```
//! use allcnn_models::{AllCnn, ArchSpec, Init};
//! use candle_core::{DType, Device, Tensor};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let spec = ArchSpec::by_name("all-cnn-c", 10)?;
//! assert_eq!(spec.param_count(), 1_369_738);
//! assert_eq!(spec.final_map(32)?, (10, 6, 6));
//!
//! let model = AllCnn::init(spec, Init::HeNormal, 42, &Device::Cpu)?;
//! let x = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu)?;
//! let logits = model.forward(&x)?;
//! assert_eq!(logits.dims(), &[1, 10]);
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod error;
#[cfg(feature = "hub")]
#[cfg_attr(docsrs, doc(cfg(feature = "hub")))]
pub mod hub;
pub mod kernels;
mod model;
mod precision;
#[cfg(feature = "pretrained")]
#[cfg_attr(docsrs, doc(cfg(feature = "pretrained")))]
pub mod pretrained;
mod spec;
mod weights;

pub use error::ModelError;
pub use model::{
    Activations, AllCnn, ConvBackend, DropoutRng, ForwardPass, Init, ReluRule, StandardRelu,
    TrainGrads,
};
pub use precision::{bf16_is_faster, f4_is_faster, Precision};
pub use spec::{
    registry, ArchSpec, ConvShape, Layer, LayerName, MapShape, ModelInfo, SpatialLayer, SpecLimits,
};
pub use weights::{
    write_atomic, SafetensorsHeader, TrainingRecord, WeightsFile, WeightsMeta, ATTACHMENT_PREFIX,
    KEY_CLASSES, KEY_CLASS_NAMES, KEY_INPUT_SIZE, KEY_MODEL, KEY_PREPROCESSING, KEY_SPEC,
    KEY_TRAIN_EPOCH, KEY_TRAIN_STEP, KEY_TRAIN_TEST_ACCURACY, KEY_TRAIN_VAL_ACCURACY,
};

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
