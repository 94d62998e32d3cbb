//! The training protocol of Springenberg et al., "Striving for Simplicity:
//! The All Convolutional Net" (2014), on candle: resumable, observable runs.
//!
//! The principal types and how they hand off:
//! - [`TrainConfig`]: every setting of a run, as TOML. The presets named
//!   after the paper's experiments ([`TrainConfig::preset`]: `cifar10`,
//!   `cifar10-aug`, `cifar100`, `imagenet`) ship as files in the crate; any
//!   field can be overridden with `key=value` ([`TrainConfig::set`]).
//! - [`TrainData`]: the training, validation and test splits, opened from a
//!   CIFAR or image folder ([`TrainData::open`]) or given in memory.
//! - [`Trainer`] (built by [`Trainer::builder`] with a device, [`Observer`]s
//!   and an interrupt flag) runs [`Trainer::train`] / [`Trainer::resume`]
//!   on a run directory ([`files`]): momentum SGD ([`MomentumSgd`], torch
//!   form), an [`LrSchedule`], seeded dropout and shuffling, atomic
//!   checkpoints ([`checkpoint::Checkpoint`]), best and final self-describing weights,
//!   `metrics.jsonl` and an SVG learning curve. It returns a [`RunSummary`].
//! - [`evaluate`] gives an [`EvalReport`] (top-1, top-5, loss, per class,
//!   confusion); [`grid_search`] tries learning rates and picks by
//!   validation accuracy.
//! - [`reproduce()`] runs one of the paper's experiments ([`Experiment`]: the
//!   twelve models of Table 3, or the augmented, CIFAR-100 or ImageNet row)
//!   model by model, resumably, and writes `report.md` / `report.json`
//!   ([`ReproduceReport`]) with our test error beside the paper's.
//! - [`export_hub`] turns a run's final or best weights into a folder ready
//!   to upload as a Hugging Face model repository (`model.safetensors`,
//!   `config.json`, a model card `README.md`).
//! - [`classify::Classifier`] classifies image files with trained weights
//!   (their preprocessing, input size and class names), as `allcnn predict`.
//!
//! The crate root holds those principal types. The rest lives in documented
//! modules: [`checkpoint`] (the checkpoint format), [`classify`] (image
//! files to their most probable classes), [`config`] (presets and
//! the data section), [`data`] (fitting the preprocessing, evaluation
//! loaders), [`eval`] (evaluating weights files, per-class reports),
//! [`export`] (what an export writes), [`grid`] (its report), [`observer`]
//! (the console, `metrics.jsonl` and the events), [`plot`] (learning curves
//! and `metrics.csv`), [`reproduce`](mod@reproduce) (the paper's rows and the report's
//! parts), [`step`] and [`trainer`] (the builder and reading a run's config).
//!
//! ```
//! use std::sync::Arc;
//! use allcnn_data::{Image, VecDataset};
//! use allcnn_models::{ArchSpec, Layer};
//! use allcnn_train::{LrSchedule, TrainConfig, TrainData, Trainer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A tiny in-memory dataset of 8x8 images and a tiny all-convolutional net.
//! let images: Vec<Image> = (0..16u8)
//!     .map(|i| Image::from_chw(3, 8, 8, vec![i * 15; 192]))
//!     .collect::<Result<_, _>>()?;
//! let labels: Vec<u32> = (0..16).map(|i| u32::from(i >= 8)).collect();
//! let train = Arc::new(VecDataset::new(images, labels, vec!["dark".into(), "light".into()])?);
//!
//! let mut config = TrainConfig::preset("cifar10")?;
//! config.set("epochs=2")?;
//! config.set("batch_size=8")?;
//! config.set("data.preprocessing=scale")?;
//! config.schedule = LrSchedule::Constant;
//! config.spec = Some(ArchSpec {
//!     name: "tiny".into(),
//!     in_channels: 3,
//!     input_size: 8,
//!     layers: vec![Layer::conv(3, 8, 1), Layer::conv(3, 8, 2), Layer::conv(1, 2, 1)],
//! });
//!
//! let run_dir = std::env::temp_dir().join(format!("allcnn-train-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&run_dir);
//! let mut trainer = Trainer::builder().console(false).build();
//! let summary = trainer.train(&config, &TrainData::new(train, None), &run_dir)?;
//! assert_eq!(summary.steps, 4);
//! assert!(run_dir.join("final.safetensors").is_file());
//! # std::fs::remove_dir_all(&run_dir)?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod checkpoint;
pub mod classify;
pub mod config;
pub mod data;
mod error;
pub mod eval;
pub mod export;
pub mod grid;
pub mod observer;
pub mod optim;
pub mod plot;
pub mod reproduce;
mod schedule;
pub mod step;
pub mod trainer;
mod watch;

// The principal types; helpers stay in their modules (listed above).
pub use config::TrainConfig;
pub use data::TrainData;
pub use error::TrainError;
pub use eval::{evaluate, EvalReport};
pub use export::{export_hub, ExportOptions};
pub use grid::grid_search;
pub use observer::Observer;
pub use optim::{MomentumSgd, SgdConfig};
pub use reproduce::{reproduce, Experiment, ReproduceOptions, ReproduceReport};
pub use schedule::LrSchedule;
pub use step::train_step;
pub use trainer::{
    dead_run_dir, files, resume, train, ResumeChanges, RunStatus, RunSummary, Trainer,
};

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
