//! Trained weights shipped inside the crate (feature `pretrained`, on by
//! default), in the spirit of torchvision's weight enums: pick a variant,
//! get a loaded model with its recorded preprocessing and class names.
//!
//! Each variant is one self-describing safetensors file under
//! `pretrained/<name>/model.safetensors` in this crate, next to its
//! provenance: `config.json` (architecture, preprocessing, results, training
//! recipe, hardware, wall time, commit), the model card `README.md`, the
//! run's `metrics.jsonl`, `eval.json` and `learning-curve.svg`. The GCN + ZCA
//! whitening matrix is stored in the compact low-rank form of
//! `allcnn_data::Preprocessing::compress_whitening` (docs/weights-format.md).
//!
//! ```
//! use allcnn_models::pretrained::AllCnnC;
//! use candle_core::{DType, Device, Tensor};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let w = AllCnnC::Cifar10.load(&Device::Cpu)?;
//! assert_eq!(w.model.classes(), 10);
//! assert_eq!(w.class_names().unwrap()[3], "cat");
//! // The preprocessing: allcnn_data::Preprocessing::from_parts(
//! //     w.meta.preprocessing.as_deref().unwrap(), &w.attachments)
//! let info = AllCnnC::Cifar10.info();
//! assert!(info.top1 > 0.1);
//! let x = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu)?;
//! assert_eq!(w.model.forward(&x)?.dims(), &[1, 10]);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;
use serde::Deserialize;

use crate::error::ModelError;
use crate::weights::{write_atomic, WeightsFile};

/// All-CNN-C weights (the paper's best CIFAR model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AllCnnC {
    /// Trained by allcnn on CIFAR-10 with the paper's protocol (GCN + ZCA,
    /// dropout, SGD with momentum, flips and translations) and its
    /// 350-epoch schedule on a CPU; see [`AllCnnC::info`] for its accuracy,
    /// the epoch it is from and its budget.
    Cifar10,
}

/// What a shipped weights file is and how well it does, from its
/// `config.json`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PretrainedInfo {
    /// The name used on the command line (`all-cnn-c-cifar10`).
    pub name: &'static str,
    /// The architecture (`all-cnn-c`).
    pub architecture: String,
    /// The data set it was trained on (`cifar10`).
    pub dataset: String,
    /// Test top-1 accuracy of the shipped file, in `[0, 1]`.
    pub top1: f64,
    /// Test top-5 accuracy, if measured.
    pub top5: Option<f64>,
    /// Test images the accuracy was measured on.
    pub test_images: Option<usize>,
    /// Epochs trained to get these weights: the epoch they are from.
    pub epochs: Option<u64>,
    /// Whether they are the run's best epoch (by test top-1) rather than
    /// its last: the run may have gone on past [`PretrainedInfo::epochs`].
    pub best_of_run: bool,
    /// The file's size in bytes.
    pub bytes: usize,
    /// Hardware, wall time, commit and the like.
    pub provenance: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Config {
    architecture: String,
    #[serde(default)]
    dataset: Option<String>,
    results: Vec<ResultRow>,
    weights: WeightsRow,
    #[serde(default)]
    provenance: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ResultRow {
    split: String,
    top1: f64,
    #[serde(default)]
    top5: Option<f64>,
    #[serde(default)]
    examples: Option<usize>,
}

#[derive(Deserialize)]
struct WeightsRow {
    #[serde(default)]
    epoch: Option<u64>,
    #[serde(default)]
    exported: Option<String>,
}

impl AllCnnC {
    /// Every shipped variant.
    pub const ALL: &'static [AllCnnC] = &[AllCnnC::Cifar10];

    /// The name used on the command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            AllCnnC::Cifar10 => "all-cnn-c-cifar10",
        }
    }

    /// The variant called `name` ([`AllCnnC::name`]).
    pub fn by_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name() == name)
    }

    /// The safetensors file's bytes.
    pub fn bytes(self) -> &'static [u8] {
        match self {
            AllCnnC::Cifar10 => {
                include_bytes!("../pretrained/all-cnn-c-cifar10/model.safetensors")
            }
        }
    }

    /// The `config.json` written beside the file (architecture,
    /// preprocessing, results, training recipe, provenance).
    pub fn config_json(self) -> &'static str {
        match self {
            AllCnnC::Cifar10 => include_str!("../pretrained/all-cnn-c-cifar10/config.json"),
        }
    }

    /// The model card (Markdown).
    pub fn card(self) -> &'static str {
        match self {
            AllCnnC::Cifar10 => include_str!("../pretrained/all-cnn-c-cifar10/README.md"),
        }
    }

    /// Accuracy, budget and provenance.
    pub fn info(self) -> PretrainedInfo {
        let c: Config = serde_json::from_str(self.config_json())
            .expect("the shipped config.json is checked by the crate's tests");
        let test = c.results.iter().find(|r| r.split == "test");
        PretrainedInfo {
            name: self.name(),
            architecture: c.architecture,
            dataset: c.dataset.unwrap_or_default(),
            top1: test.map_or(0.0, |r| r.top1),
            top5: test.and_then(|r| r.top5),
            test_images: test.and_then(|r| r.examples),
            epochs: c.weights.epoch,
            best_of_run: c.weights.exported.as_deref() == Some("best"),
            bytes: self.bytes().len(),
            provenance: c.provenance,
        }
    }

    /// The model on `device`, with its metadata and the preprocessing's
    /// tensors ([`WeightsFile`]).
    ///
    /// # Errors
    /// As [`WeightsFile::from_bytes`] (the shipped files load; tested).
    pub fn load(self, device: &Device) -> Result<WeightsFile, ModelError> {
        WeightsFile::from_bytes(self.bytes(), &format!("pretrained {}", self.name()), device)
    }

    /// Writes the safetensors file to `path` (atomically).
    ///
    /// # Errors
    /// [`ModelError::Io`] when it cannot be written.
    pub fn save(self, path: impl AsRef<Path>) -> Result<(), ModelError> {
        write_atomic(path.as_ref(), self.bytes())
    }
}

impl std::fmt::Display for AllCnnC {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
