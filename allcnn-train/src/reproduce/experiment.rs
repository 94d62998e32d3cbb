//! The paper's experiments and their rows, and what a reproduction runs.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::schedule::LrSchedule;

/// An experiment of the paper that [`reproduce`](super::reproduce) runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Experiment {
    /// Table 3: the twelve CIFAR-10 models (Model A/B/C and their
    /// Strided-, ConvPool- and All-CNN variants) without augmentation,
    /// preset `cifar10`.
    #[serde(rename = "table3")]
    Table3,
    /// CIFAR-10 with flips and translations: All-CNN-C, preset `cifar10-aug`.
    Cifar10Aug,
    /// CIFAR-100 without augmentation: All-CNN-C, preset `cifar100`.
    Cifar100,
    /// ImageNet (ILSVRC-2012, top-1 centre crop): the ImageNet All-CNN,
    /// preset `imagenet`.
    Imagenet,
}

/// One row of an experiment: a model and the paper's number for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaperRow {
    /// The registry name (`allcnn models`), also the run directory's name.
    pub model: String,
    /// The paper's name for it (`All-CNN-C`).
    pub label: String,
    /// The paper's top-1 test error, in percent.
    pub paper_error: f64,
    /// The paper's top-5 test error, in percent, where it reports one.
    pub paper_top5_error: Option<f64>,
    /// A caveat about the paper's number (e.g. that it is unconfirmed).
    pub note: Option<String>,
}

impl Experiment {
    /// Every experiment, in the paper's order.
    pub const ALL: [Experiment; 4] = [
        Experiment::Table3,
        Experiment::Cifar10Aug,
        Experiment::Cifar100,
        Experiment::Imagenet,
    ];

    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Experiment::Table3 => "table3",
            Experiment::Cifar10Aug => "cifar10-aug",
            Experiment::Cifar100 => "cifar100",
            Experiment::Imagenet => "imagenet",
        }
    }

    /// The names of every experiment.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|e| e.name()).collect()
    }

    /// A one-line title.
    pub fn title(self) -> &'static str {
        match self {
            Experiment::Table3 => "Table 3: CIFAR-10 without augmentation, twelve models",
            Experiment::Cifar10Aug => "CIFAR-10 with flips and translations, All-CNN-C",
            Experiment::Cifar100 => "CIFAR-100 without augmentation, All-CNN-C",
            Experiment::Imagenet => "ImageNet (ILSVRC-2012), the ImageNet All-CNN",
        }
    }

    /// The number of classes of the experiment's data set.
    pub fn classes(self) -> usize {
        match self {
            Experiment::Table3 | Experiment::Cifar10Aug => 10,
            Experiment::Cifar100 => 100,
            Experiment::Imagenet => 1000,
        }
    }

    /// The training preset ([`TrainConfig::preset`]) of every row.
    pub fn preset(self) -> &'static str {
        match self {
            Experiment::Table3 => "cifar10",
            Experiment::Cifar10Aug => "cifar10-aug",
            Experiment::Cifar100 => "cifar100",
            Experiment::Imagenet => "imagenet",
        }
    }

    /// The rows, in the paper's order, with the paper's numbers (Table 3
    /// from the model registry, the others from the paper's result tables;
    /// `docs/reproduction.md`).
    pub fn rows(self) -> Vec<PaperRow> {
        let row = |model: &str, error: f64, note: Option<&str>| PaperRow {
            model: model.to_string(),
            label: label(model),
            paper_error: error,
            paper_top5_error: None,
            note: note.map(str::to_string),
        };
        match self {
            Experiment::Table3 => allcnn_models::registry()
                .iter()
                .filter(|m| m.name != "all-cnn-imagenet")
                .filter_map(|m| {
                    // f32 in the registry: back to the two printed decimals.
                    let e = m.paper_error?;
                    Some(row(m.name, (f64::from(e) * 100.0).round() / 100.0, None))
                })
                .collect(),
            Experiment::Cifar10Aug => vec![row("all-cnn-c", 7.25, None)],
            Experiment::Cifar100 => vec![row("all-cnn-c", 33.71, None)],
            Experiment::Imagenet => vec![row(
                "all-cnn-imagenet",
                41.2,
                Some("unconfirmed: top-1 on the ILSVRC-2012 validation set, centre crop, ~9.4M parameters"),
            )],
        }
    }

    /// The learning-rate schedule used when [`ReproduceOptions::epochs`]
    /// scales the protocol: the paper's drops at the same fractions of the
    /// run. CIFAR: x0.1 at 200/350, 250/350 and 300/350 of the epochs;
    /// ImageNet: x0.1 every 200,000 of 450,000 iterations, i.e. at 4/9 and
    /// 8/9 of the epochs.
    pub fn scaled_schedule(self) -> LrSchedule {
        match self {
            Experiment::Imagenet => LrSchedule::Scaled {
                fractions: vec![4.0 / 9.0, 8.0 / 9.0],
                gamma: 0.1,
            },
            _ => LrSchedule::paper_scaled(),
        }
    }
}

impl std::fmt::Display for Experiment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Experiment {
    type Err = TrainError;

    /// Parses an experiment name (`table3`, `cifar10-aug`, `cifar100`,
    /// `imagenet`).
    ///
    /// # Errors
    /// [`TrainError::UnknownExperiment`] listing the known names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| TrainError::UnknownExperiment {
                name: s.to_string(),
                known: Self::names().join(", "),
            })
    }
}

/// The paper's name of a registered model: `model-a` -> `Model A`,
/// `strided-cnn-b` -> `Strided-CNN-B`, `all-cnn-imagenet` -> `All-CNN (ImageNet)`.
fn label(model: &str) -> String {
    if model == "all-cnn-imagenet" {
        return "All-CNN (ImageNet)".into();
    }
    let upper = |s: &str| s.to_uppercase();
    if let Some(x) = model.strip_prefix("model-") {
        return format!("Model {}", upper(x));
    }
    for (prefix, name) in [
        ("strided-cnn-", "Strided-CNN-"),
        ("convpool-cnn-", "ConvPool-CNN-"),
        ("all-cnn-", "All-CNN-"),
    ] {
        if let Some(x) = model.strip_prefix(prefix) {
            return format!("{name}{}", upper(x));
        }
    }
    model.to_string()
}

/// What [`reproduce`](super::reproduce) runs and where.
#[derive(Debug, Clone, PartialEq)]
pub struct ReproduceOptions {
    /// The experiment.
    pub experiment: Experiment,
    /// The data set (CIFAR binary folder or image folder with `train/` and
    /// `test/`).
    pub data: PathBuf,
    /// The output folder: one run directory per model and the reports.
    pub out: PathBuf,
    /// Scale the protocol to this many epochs (learning-rate drops at the
    /// same fractions of the run, [`Experiment::scaled_schedule`]); `None`:
    /// the paper's protocol as the preset has it.
    pub epochs: Option<u64>,
    /// `key=value` config overrides applied to every model, after the
    /// preset and `epochs` ([`TrainConfig::set`]).
    pub overrides: Vec<String>,
    /// Train only these rows (registry names); empty: every row. The report
    /// still lists every row, with the results of earlier runs.
    pub models: Vec<String>,
    /// The command line, recorded in the report.
    pub command: Option<String>,
    /// How often a row whose class maps all die restarts with the next
    /// seed (its dead run moved to `<model>.dead-seed-S`); 0: the row is
    /// recorded as failed at once.
    pub retries: u32,
}

impl ReproduceOptions {
    /// Every row of `experiment` with its paper protocol, reading `data`
    /// and writing into `out`.
    pub fn new(experiment: Experiment, data: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            experiment,
            data: data.into(),
            out: out.into(),
            epochs: None,
            overrides: Vec::new(),
            models: Vec::new(),
            command: None,
            retries: 0,
        }
    }

    /// The resolved config of `row`: the experiment's preset, the row's
    /// model, the data path, `epochs` with the scaled schedule when given,
    /// then the overrides.
    ///
    /// # Errors
    /// [`TrainError::BadOverride`] for a malformed override or one that sets
    /// `model`, `spec` or `data.path` (given per row and by `data`), or
    /// `epochs` or the `schedule` (given by `epochs`);
    /// [`TrainError::InvalidConfig`] when the result is not valid.
    pub fn config(&self, row: &PaperRow) -> Result<TrainConfig, TrainError> {
        let mut c = TrainConfig::preset(self.experiment.preset())?;
        c.model = row.model.clone();
        c.data.path = Some(self.data.clone());
        if let Some(e) = self.epochs {
            c.epochs = e;
            c.schedule = self.experiment.scaled_schedule();
        }
        for item in &self.overrides {
            let key = item
                .split_once('=')
                .map_or(item.as_str(), |(k, _)| k)
                .trim();
            if matches!(key, "model" | "spec" | "data.path" | "data") {
                return Err(TrainError::BadOverride {
                    item: item.clone(),
                    reason: "reproduce sets the model of each row (choose rows with --models) and the data path (--data)".into(),
                });
            }
            // The report states the protocol from --epochs: an override
            // would train another one than it says.
            if key == "epochs" || key == "schedule" || key.starts_with("schedule.") {
                return Err(TrainError::BadOverride {
                    item: item.clone(),
                    reason: "reproduce sets the epochs and the learning-rate schedule: the paper's, or with --epochs N the paper's scaled to N epochs".into(),
                });
            }
            c.set(item)?;
        }
        c.validate()?;
        Ok(c)
    }
}
