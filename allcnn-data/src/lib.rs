//! Data for the All Convolutional Net reproduction: CIFAR-10/100 and image
//! folders, the paper's preprocessing (GCN + ZCA), seeded augmentation, and a
//! prefetching loader that yields candle tensors.
//!
//! # Overview
//!
//! The principal types and how they hand off:
//!
//! - **Readers** implement the small [`Dataset`] trait (`len`, `get`, as
//!   `burn-dataset`): [`CifarDataset`] reads the official CIFAR-10 / CIFAR-100
//!   binary files, [`ImageFolder`] reads `root/<class>/<image>` folders
//!   (classes sorted, images decoded lazily or cached as `u8`). Images stay
//!   8-bit ([`Image`], planar CHW) until batching. [`open_dataset`] opens
//!   any layout; [`info::info`] reports format, split sizes and class counts;
//!   `download::download_cifar` (feature `download`) fetches, verifies (MD5) and extracts the official
//!   archives.
//! - [`Preprocessing`] is fitted on the training split
//!   ([`Preprocessing::fit_gcn_zca`], the paper's GCN 55 + ZCA 0.1, or
//!   [`Preprocessing::fit_standardize`]) and saved to safetensors, alone or
//!   inside model weights ([`Preprocessing::to_parts`] /
//!   [`Preprocessing::from_parts`]), so prediction applies exactly the
//!   training transform ([`Preprocessing::apply`] on a tensor).
//! - [`Augmentation`] first samples its random parameters from a ChaCha8
//!   RNG keyed by `(seed, epoch, index)`, then applies a pure function:
//!   reproducible whatever the number of threads.
//! - [`DataLoader`] (built by [`loader::LoaderBuilder`]) shuffles per epoch with a
//!   seed, runs reading, augmentation and preprocessing on rayon workers,
//!   prefetches on a background thread, and yields [`Batch`]es:
//!   `[N,3,H,W]` `f32` images and `[N]` `u32` labels on a candle `Device`.
//!   [`dataset::split_dataset`] makes a seeded train/validation split.
//! - Every failure is a [`DataError`] naming the file or value at fault.
//!
//! The crate root holds those principal types. The helpers live in their
//! modules: [`augment`] (the `u8` crop/flip/resize primitives and the
//! per-example RNG), [`cifar`] (the record codec, class names and sizes),
//! [`dataset`] (samples and seeded splits), [`folder`] (decoding one image,
//! size limits), [`info`] (format detection and `allcnn data info`),
//! [`input`] (image files as a model's input batch, for prediction),
//! [`loader`] (the builder and the batch iterator), [`preprocess`] (GCN,
//! ZCA and the safetensors layout of a fitted transform) and, with the
//! `download` feature, `download`.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use allcnn_data::cifar::encode_cifar_record;
//! use allcnn_data::{
//!     Augmentation, CifarDataset, CifarKind, DataLoader, GcnZcaConfig, Image, Preprocessing, Split,
//! };
//!
//! # fn main() -> Result<(), allcnn_data::DataError> {
//! // A tiny CIFAR-10 folder (real data: `allcnn data download cifar10 --dir data`).
//! let dir = std::env::temp_dir().join(format!("allcnn-data-doc-{}", std::process::id()));
//! let bin = dir.join("cifar-10-batches-bin");
//! std::fs::create_dir_all(&bin).unwrap();
//! let mut bytes = Vec::new();
//! for i in 0..64u32 {
//!     let px: Vec<u8> = (0..3072u32).map(|j| ((i * 31 + j * 7) % 256) as u8).collect();
//!     encode_cifar_record(CifarKind::Cifar10, &Image::from_chw(3, 32, 32, px)?, i % 10, 0, &mut bytes)?;
//! }
//! for f in CifarKind::Cifar10.files(Split::Train).iter().chain(CifarKind::Cifar10.files(Split::Test)) {
//!     std::fs::write(bin.join(f), &bytes).unwrap();
//! }
//!
//! let train = Arc::new(CifarDataset::load(&dir, CifarKind::Cifar10, Split::Train)?);
//! let zca = Preprocessing::fit_gcn_zca(train.as_ref(), &GcnZcaConfig::default())?;
//! let loader = DataLoader::builder(train)
//!     .preprocessing(zca)
//!     .augmentation(Augmentation::paper_cifar())
//!     .batch_size(32)
//!     .shuffle(true)
//!     .drop_last(true)
//!     .seed(42)
//!     .device(candle_core::Device::Cpu)
//!     .build()?;
//! for batch in loader.epoch(0) {
//!     let batch = batch?;
//!     assert_eq!(batch.images.dims(), &[32, 3, 32, 32]);
//!     assert_eq!(batch.labels.dims(), &[32]);
//! }
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod augment;
pub mod cifar;
pub mod dataset;
#[cfg(feature = "download")]
#[cfg_attr(docsrs, doc(cfg(feature = "download")))]
pub mod download;
mod error;
pub mod folder;
pub mod info;
pub mod input;
pub mod loader;
pub mod preprocess;

// The principal types; helpers stay in their modules (listed above).
pub use augment::Augmentation;
pub use cifar::{CifarDataset, CifarKind, Split};
pub use dataset::{Dataset, Image, Subset, VecDataset};
pub use error::DataError;
pub use folder::{FolderOptions, ImageFolder};
pub use info::{open_dataset, OpenOptions};
pub use loader::{Batch, DataLoader, LoaderConfig};
pub use preprocess::{GcnZcaConfig, Preprocessing};

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
