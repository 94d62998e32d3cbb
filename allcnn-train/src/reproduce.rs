//! [`reproduce`]: one experiment of the paper (all twelve models of Table 3,
//! or the augmented, CIFAR-100 or ImageNet row), model by model into one
//! output folder, with `report.md` and `report.json` putting our test error
//! beside the paper's.
//!
//! The output folder holds one run directory per model (`OUT/<model>/`, the
//! usual [`crate::files`]) and the two reports, rewritten atomically after
//! every model. Rerunning the same command skips the models whose run is
//! finished (evaluated: `eval.json` written), resumes those with a
//! checkpoint, and starts the others.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use allcnn_data::Preprocessing;
use candle_core::{Device, DeviceLocation};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, CheckpointState};
use crate::config::{DataConfig, TrainConfig};
use crate::data::{fit_preprocessing, TrainData};
use crate::error::TrainError;
use crate::eval::EvalReport;
use crate::observer::EpochRecord;
use crate::schedule::LrSchedule;
use crate::trainer::{files, RunStatus, RunSummary, Trainer};

/// The Markdown report written into the output folder.
pub const REPORT_MARKDOWN: &str = "report.md";
/// The JSON report written into the output folder ([`ReproduceReport`]).
pub const REPORT_JSON: &str = "report.json";
/// The figure written into the output folder: each model's test error
/// beside the paper's ([`ReproduceReport::comparison_svg`]).
pub const REPORT_FIGURE: &str = "comparison.svg";

/// An experiment of the paper that [`reproduce`] runs.
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

/// What [`reproduce`] runs and where.
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
        }
    }

    /// The resolved config of `row`: the experiment's preset, the row's
    /// model, the data path, `epochs` with the scaled schedule when given,
    /// then the overrides.
    ///
    /// # Errors
    /// [`TrainError::BadOverride`] for a malformed override or one that sets
    /// `model`, `spec` or `data.path` (given per row and by `data`);
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
            c.set(item)?;
        }
        c.validate()?;
        Ok(c)
    }
}

/// Where a row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowStatus {
    /// Every epoch ran and the final weights were evaluated.
    Done,
    /// The run stopped at its `max_steps` budget; its final weights were
    /// evaluated.
    StepBudget,
    /// Training now (in a report written while the model trains; a report
    /// left so means the process was killed: rerun to resume).
    Running,
    /// Stopped with a checkpoint (Ctrl-C, a crash): the next run resumes it.
    Interrupted,
    /// Training failed (see the row's `error`).
    Failed,
    /// Not started.
    NotRun,
}

impl RowStatus {
    /// The status as the Markdown report writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            RowStatus::Done => "done",
            RowStatus::StepBudget => "stopped at max_steps",
            RowStatus::Running => "running",
            RowStatus::Interrupted => "interrupted (resumable)",
            RowStatus::Failed => "failed",
            RowStatus::NotRun => "not run",
        }
    }

    /// Whether the row holds a final result.
    pub fn is_finished(self) -> bool {
        matches!(self, RowStatus::Done | RowStatus::StepBudget)
    }
}

/// One row of the report: the paper's number, ours, and how it was obtained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    /// The registry name.
    pub model: String,
    /// The paper's name.
    pub label: String,
    /// The paper's top-1 test error, in percent.
    pub paper_error: f64,
    /// The paper's top-5 test error, in percent, where it reports one.
    pub paper_top5_error: Option<f64>,
    /// A caveat about the paper's number.
    pub paper_note: Option<String>,
    /// Where the row stands.
    pub status: RowStatus,
    /// Our top-1 test error in percent (`100 * (1 - top1)` of `eval.json`).
    pub test_error: Option<f64>,
    /// Our top-5 test error in percent.
    pub test_top5_error: Option<f64>,
    /// Our mean test loss.
    pub test_loss: Option<f64>,
    /// Test images evaluated.
    pub test_examples: Option<u64>,
    /// Epochs finished.
    pub epochs_done: u64,
    /// Epochs of the protocol.
    pub epochs: u64,
    /// Optimisation steps done.
    pub steps: u64,
    /// The sum of the run's epoch times (training and per-epoch evaluation),
    /// over every session, in seconds.
    pub train_seconds: f64,
    /// Wall-clock seconds spent on the model by `reproduce` (fitting the
    /// preprocessing, training, evaluating), summed over sessions recorded
    /// in earlier reports; the epoch times when no earlier report says more.
    pub wall_seconds: f64,
    /// The run directory, relative to the output folder.
    pub run_dir: PathBuf,
    /// The run's config file, relative to the output folder.
    pub config_file: PathBuf,
    /// The run's `eval.json`, relative to the output folder, once written.
    pub eval_file: Option<PathBuf>,
    /// Why the row failed.
    pub error: Option<String>,
    /// The exact resolved config of the row.
    pub config: TrainConfig,
}

/// The machine a report was made on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// The CPU model (`/proc/cpuinfo`), or `unknown`.
    pub cpu: String,
    /// Hardware threads available to the process.
    pub threads: usize,
    /// Threads candle's CPU kernels use (`RAYON_NUM_THREADS`).
    pub candle_threads: usize,
    /// The operating system.
    pub os: String,
    /// The CPU architecture.
    pub arch: String,
}

impl HostInfo {
    /// This machine.
    pub fn current() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    matches!(k.trim(), "model name" | "Model" | "Hardware")
                        .then(|| v.trim().to_string())
                })
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            cpu,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            candle_threads: candle_core::utils::get_num_threads(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
        }
    }
}

/// `report.json`: everything [`reproduce`] knows about an experiment's
/// output folder. [`ReproduceReport::to_markdown`] gives `report.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReproduceReport {
    /// `allcnn-reproduce`.
    pub format: String,
    /// The format's version (1).
    pub version: u32,
    /// The experiment's name.
    pub experiment: Experiment,
    /// Its title.
    pub title: String,
    /// The preset every row starts from.
    pub preset: String,
    /// The protocol in words (the paper's, or scaled to N epochs).
    pub protocol: String,
    /// The epochs the protocol was scaled to, if it was.
    pub scaled_epochs: Option<u64>,
    /// The data set.
    pub data: PathBuf,
    /// The output folder.
    pub out: PathBuf,
    /// The `key=value` overrides applied to every row.
    pub overrides: Vec<String>,
    /// The rows this session was asked to train (empty: all).
    pub models: Vec<String>,
    /// The command line, when the caller recorded it.
    pub command: Option<String>,
    /// The device trained on (`cpu`, `cuda:0`, `metal:0`).
    pub device: String,
    /// The machine.
    pub host: HostInfo,
    /// The version of allcnn-train.
    pub allcnn_version: String,
    /// When this session started (seconds since 1970, UTC).
    pub started_unix: u64,
    /// When the report was written (seconds since 1970, UTC).
    pub updated_unix: u64,
    /// Wall-clock seconds of this session so far.
    pub session_seconds: f64,
    /// Whether this session was interrupted (Ctrl-C); rerun to resume.
    pub interrupted: bool,
    /// Warnings about the comparison (e.g. data with another number of
    /// classes than the paper's).
    #[serde(default)]
    pub notes: Vec<String>,
    /// Every row of the experiment, in the paper's order.
    pub rows: Vec<ReportRow>,
}

impl ReproduceReport {
    /// Reads a `report.json`.
    ///
    /// # Errors
    /// [`TrainError::Io`] or [`TrainError::ConfigParse`] naming the file.
    pub fn read(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
        serde_json::from_str(&text).map_err(|e| TrainError::ConfigParse {
            source_name: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Whether every row holds a final result.
    pub fn is_complete(&self) -> bool {
        self.rows.iter().all(|r| r.status.is_finished())
    }

    /// The rows that failed.
    pub fn failed(&self) -> Vec<&ReportRow> {
        self.rows
            .iter()
            .filter(|r| r.status == RowStatus::Failed)
            .collect()
    }

    /// Each model's test error beside the paper's, as an SVG figure
    /// (`comparison.svg`): a point per model for the paper and, once
    /// evaluated, one for this run.
    ///
    /// # Errors
    /// [`TrainError::Plot`] if plotters cannot draw.
    pub fn comparison_svg(&self) -> Result<String, TrainError> {
        let rows: Vec<crate::plot::ComparisonRow<'_>> = self
            .rows
            .iter()
            .map(|r| crate::plot::ComparisonRow {
                label: &r.label,
                paper: r.paper_error,
                ours: r.test_error,
            })
            .collect();
        crate::plot::comparison_svg(&format!("{}: test error", self.title), &rows)
    }

    /// The report as Markdown (`report.md`).
    pub fn to_markdown(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let top5 = self.experiment == Experiment::Imagenet;
        let _ = writeln!(s, "# Reproduction: {}\n", self.title);
        let _ = writeln!(
            s,
            "Our test error beside the paper's, written by `allcnn reproduce {}`. \
             Error = 100% - top-1 accuracy on the test split.\n",
            self.experiment
        );
        let count = |st: RowStatus| self.rows.iter().filter(|r| r.status == st).count();
        let mut state = format!(
            "{} of {} rows done",
            self.rows.iter().filter(|r| r.status.is_finished()).count(),
            self.rows.len()
        );
        for st in [
            RowStatus::Running,
            RowStatus::Interrupted,
            RowStatus::Failed,
            RowStatus::NotRun,
        ] {
            if count(st) > 0 {
                let _ = write!(state, ", {} {}", count(st), st.as_str());
            }
        }
        if self.interrupted {
            state.push_str("; this session was interrupted: rerun the same command to resume");
        }
        let _ = writeln!(s, "- status: {state}");
        for n in &self.notes {
            let _ = writeln!(s, "- **warning**: {n}");
        }
        let _ = writeln!(s, "- protocol: preset `{}`, {}", self.preset, self.protocol);
        let _ = writeln!(s, "- data: `{}`", self.data.display());
        let overrides = if self.overrides.is_empty() {
            "none".to_string()
        } else {
            self.overrides
                .iter()
                .map(|o| format!("`{o}`"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(s, "- overrides: {overrides}");
        if !self.models.is_empty() {
            let _ = writeln!(
                s,
                "- models trained this session: {}",
                self.models.join(", ")
            );
        }
        if let Some(c) = &self.command {
            let _ = writeln!(s, "- command: `{c}`");
        }
        let _ = writeln!(
            s,
            "- device: {}; host: {} ({} threads, candle {} threads), {} {}",
            self.device,
            self.host.cpu,
            self.host.threads,
            self.host.candle_threads,
            self.host.os,
            self.host.arch
        );
        let _ = writeln!(
            s,
            "- allcnn {}; session started {}, report written {} (session {})\n",
            self.allcnn_version,
            utc(self.started_unix),
            utc(self.updated_unix),
            duration(self.session_seconds)
        );

        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}%"));
        if top5 {
            s.push_str("| model | paper top-1 error | our top-1 error | paper top-5 error | our top-5 error | test images | epochs | train time | wall time | status | run |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
        } else {
            s.push_str("| model | paper error | our error | test images | epochs | train time | wall time | status | run |\n|---|---|---|---|---|---|---|---|---|\n");
        }
        for r in &self.rows {
            let paper = format!(
                "{:.2}%{}",
                r.paper_error,
                if r.paper_note.is_some() { " (*)" } else { "" }
            );
            let ours = pct(r.test_error);
            let images = r.test_examples.map_or("-".into(), |n| n.to_string());
            let epochs = format!("{}/{}", r.epochs_done, r.epochs);
            let time = |secs: f64| {
                if r.status == RowStatus::NotRun && secs == 0.0 {
                    "-".to_string()
                } else {
                    duration(secs)
                }
            };
            let dir = r.run_dir.display().to_string();
            let run = format!("[{dir}]({dir}/) ([config]({}))", r.config_file.display());
            let name = format!("{} (`{}`)", r.label, r.model);
            if top5 {
                let _ = writeln!(
                    s,
                    "| {name} | {paper} | {ours} | {} | {} | {images} | {epochs} | {} | {} | {} | {run} |",
                    pct(r.paper_top5_error),
                    pct(r.test_top5_error),
                    time(r.train_seconds),
                    time(r.wall_seconds),
                    r.status.as_str()
                );
            } else {
                let _ = writeln!(
                    s,
                    "| {name} | {paper} | {ours} | {images} | {epochs} | {} | {} | {} | {run} |",
                    time(r.train_seconds),
                    time(r.wall_seconds),
                    r.status.as_str()
                );
            }
        }
        s.push('\n');
        for r in self.rows.iter().filter(|r| r.paper_note.is_some()) {
            let _ = writeln!(
                s,
                "(*) {}: {}\n",
                r.label,
                r.paper_note.as_deref().unwrap_or_default()
            );
        }
        s.push_str(
            "Train time: the sum of the run's epoch times (training and per-epoch \
             evaluation) over every session. Wall time: the time `allcnn reproduce` \
             spent on the model (preprocessing, training, final evaluation).\n",
        );
        let failed = self.failed();
        if !failed.is_empty() {
            s.push_str("\n## Failures\n\n");
            for r in failed {
                let _ = writeln!(
                    s,
                    "- {} (`{}`): {}",
                    r.label,
                    r.model,
                    r.error.as_deref().unwrap_or("unknown error")
                );
            }
        }

        s.push_str("\n## Settings\n\n");
        // The configs differ by `model` only unless something is odd: show
        // one, or each distinct one.
        let mut groups: Vec<(TrainConfig, Vec<&str>)> = Vec::new();
        for r in &self.rows {
            let mut c = r.config.clone();
            c.model = "<model>".into();
            match groups.iter_mut().find(|(g, _)| *g == c) {
                Some((_, names)) => names.push(&r.model),
                None => groups.push((c, vec![&r.model])),
            }
        }
        for (c, names) in groups {
            let _ = writeln!(
                s,
                "The exact config of {} (`model` set per row; each run's own copy is \
                 `<model>/config.toml`, and every row's config is in `report.json`):\n",
                if names.len() == self.rows.len() {
                    "every row".to_string()
                } else {
                    names.join(", ")
                }
            );
            let _ = writeln!(s, "```toml\n{}```\n", c.to_toml());
        }
        s
    }
}

/// What [`reproduce`] is doing, for progress output.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReproduceEvent<'a> {
    /// A model of the selection comes up.
    Model {
        /// 1-based position in the selection.
        index: usize,
        /// Models selected.
        total: usize,
        /// Its registry name.
        model: &'a str,
        /// What happens to it.
        action: ModelAction,
    },
    /// A model of the selection finished, stopped or failed: its row.
    Row {
        /// 1-based position in the selection.
        index: usize,
        /// Models selected.
        total: usize,
        /// The row as the report now has it.
        row: &'a ReportRow,
    },
    /// The preprocessing shared by the runs is being fitted.
    FittingPreprocessing,
    /// Something that makes our numbers not comparable with the paper's
    /// (also kept in [`ReproduceReport::notes`]).
    Warning(String),
    /// The reports were rewritten.
    ReportWritten {
        /// `report.md`.
        markdown: &'a Path,
        /// `report.json`.
        json: &'a Path,
    },
}

/// What [`reproduce`] does with a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelAction {
    /// Its run is finished: its result is reused, nothing is trained.
    Skip,
    /// A fresh run.
    Start,
    /// Continue its run from the checkpoint.
    Resume {
        /// Epochs finished (0-based epoch it resumes in).
        epoch: u64,
        /// Global steps done.
        step: u64,
    },
}

/// What an experiment's run directory holds.
enum Found {
    Nothing,
    Partial(Box<CheckpointState>),
    Finished(Box<CheckpointState>, EvalReport),
}

/// Runs `options.experiment`: every selected row trains into
/// `options.out/<model>/` with `trainer` (its device, observers and
/// interrupt flag), one after the other. A row whose run is finished is
/// skipped and its result reused, a row with a checkpoint is resumed, the
/// others start. The data are opened once and, for fresh runs, the
/// preprocessing (GCN + ZCA for the CIFAR presets) is fitted once and
/// shared. `report.md` and `report.json` are rewritten (atomically) before
/// and after every model. When the interrupt flag is set, the current
/// model stops with a checkpoint and no further model starts: the report
/// says `interrupted` and the same call resumes.
///
/// A row whose loss diverges is recorded as failed and the others go on.
/// `on_event` hears what happens, for progress output.
///
/// # Errors
/// [`TrainError::BadOverride`] / [`TrainError::InvalidConfig`] for the
/// settings; [`TrainError::Reproduce`] for a model not in the experiment,
/// missing data, an unwritable output folder, or a run directory holding a
/// run with other settings; [`TrainError::ReproduceModel`] naming the model
/// when its training fails other than by divergence (the report is written
/// first).
pub fn reproduce(
    trainer: &mut Trainer,
    options: &ReproduceOptions,
    on_event: &mut dyn FnMut(&ReproduceEvent<'_>),
) -> Result<ReproduceReport, TrainError> {
    let session = Instant::now();
    let exp = options.experiment;
    let fail = |path: &Path, reason: String| TrainError::Reproduce {
        experiment: exp.name().to_string(),
        path: path.to_path_buf(),
        reason,
    };
    let paper_rows = exp.rows();
    for m in &options.models {
        if !paper_rows.iter().any(|r| &r.model == m) {
            let known: Vec<&str> = paper_rows.iter().map(|r| r.model.as_str()).collect();
            return Err(fail(
                &options.out,
                format!(
                    "`{m}` is not a row of {exp}; its rows: {}",
                    known.join(", ")
                ),
            ));
        }
    }
    if !options.data.exists() {
        return Err(fail(
            &options.data,
            "no such data folder (a CIFAR binary folder, e.g. data/cifar-10-batches-bin, or an image folder with train/ and test/; `allcnn data download`)".into(),
        ));
    }
    let mut options = options.clone();
    // An absolute data path, so a run directory resumes from anywhere.
    if let Ok(p) = options.data.canonicalize() {
        options.data = p;
    }
    std::fs::create_dir_all(&options.out).map_err(|e| {
        fail(
            &options.out,
            format!("cannot create the output folder: {e}"),
        )
    })?;

    // Earlier sessions' wall times.
    let json_path = options.out.join(REPORT_JSON);
    let md_path = options.out.join(REPORT_MARKDOWN);
    let figure_path = options.out.join(REPORT_FIGURE);
    let previous = ReproduceReport::read(&json_path)
        .ok()
        .filter(|r| r.experiment == exp);
    let previous_notes = previous
        .as_ref()
        .map(|r| r.notes.clone())
        .unwrap_or_default();
    let previous_wall: BTreeMap<String, f64> = previous
        .map(|r| {
            r.rows
                .into_iter()
                .map(|row| (row.model, row.wall_seconds))
                .collect()
        })
        .unwrap_or_default();

    // Resolve every row and look at what its run directory holds.
    let mut rows = Vec::new();
    let mut found = Vec::new();
    for pr in &paper_rows {
        let config = options.config(pr)?;
        let dir = options.out.join(&pr.model);
        let f = inspect(&dir, &config, exp)?;
        let mut row = ReportRow {
            model: pr.model.clone(),
            label: pr.label.clone(),
            paper_error: pr.paper_error,
            paper_top5_error: pr.paper_top5_error,
            paper_note: pr.note.clone(),
            status: RowStatus::NotRun,
            test_error: None,
            test_top5_error: None,
            test_loss: None,
            test_examples: None,
            epochs_done: 0,
            epochs: config.epochs,
            steps: 0,
            train_seconds: 0.0,
            wall_seconds: 0.0,
            run_dir: PathBuf::from(&pr.model),
            config_file: Path::new(&pr.model).join(files::CONFIG),
            eval_file: None,
            error: None,
            config,
        };
        match &f {
            Found::Nothing => {}
            Found::Partial(state) => {
                row.status = RowStatus::Interrupted;
                row.set_progress(state.epoch, state.step, &state.history);
            }
            Found::Finished(state, eval) => {
                row.status = if state.epoch >= row.epochs {
                    RowStatus::Done
                } else {
                    RowStatus::StepBudget
                };
                row.set_progress(state.epoch, state.step, &state.history);
                row.set_eval(eval);
            }
        }
        row.wall_seconds = previous_wall
            .get(&row.model)
            .copied()
            .unwrap_or(row.train_seconds);
        rows.push(row);
        found.push(f);
    }

    let started_unix = unix_now();
    let mut report = ReproduceReport {
        format: "allcnn-reproduce".into(),
        version: 1,
        experiment: exp,
        title: exp.title().into(),
        preset: exp.preset().into(),
        protocol: match options.epochs {
            None => "the paper's protocol (the preset's epochs and schedule)".into(),
            Some(e) => scaled_protocol(&exp.scaled_schedule(), e),
        },
        scaled_epochs: options.epochs,
        data: options.data.clone(),
        out: options.out.clone(),
        overrides: options.overrides.clone(),
        models: options.models.clone(),
        command: options.command.clone(),
        device: device_name(trainer.device()),
        host: HostInfo::current(),
        allcnn_version: env!("CARGO_PKG_VERSION").into(),
        started_unix,
        updated_unix: started_unix,
        session_seconds: 0.0,
        interrupted: false,
        notes: previous_notes,
        rows,
    };
    let write = |report: &mut ReproduceReport,
                 on_event: &mut dyn FnMut(&ReproduceEvent<'_>)|
     -> Result<(), TrainError> {
        report.updated_unix = unix_now();
        report.session_seconds = millis(session.elapsed().as_secs_f64());
        let json = serde_json::to_string_pretty(&*report).expect("report serialises");
        allcnn_models::write_atomic(&json_path, json.as_bytes())?;
        allcnn_models::write_atomic(&md_path, report.to_markdown().as_bytes())?;
        allcnn_models::write_atomic(&figure_path, report.comparison_svg()?.as_bytes())?;
        on_event(&ReproduceEvent::ReportWritten {
            markdown: &md_path,
            json: &json_path,
        });
        Ok(())
    };
    write(&mut report, on_event)?;

    let selected: Vec<usize> = (0..paper_rows.len())
        .filter(|&i| options.models.is_empty() || options.models.contains(&paper_rows[i].model))
        .collect();
    let total = selected.len();
    let interrupt = trainer.interrupt_flag();
    // The data (and the preprocessing fitted on them) of the latest row.
    let mut cache: Option<(DataConfig, u64, TrainData, Option<Preprocessing>)> = None;
    for (k, &i) in selected.iter().enumerate() {
        let index = k + 1;
        let model = paper_rows[i].model.clone();
        let dir = options.out.join(&model);
        let action = match &found[i] {
            Found::Finished(..) => ModelAction::Skip,
            Found::Partial(state) => ModelAction::Resume {
                epoch: state.epoch,
                step: state.step,
            },
            Found::Nothing => ModelAction::Start,
        };
        if action == ModelAction::Skip {
            on_event(&ReproduceEvent::Model {
                index,
                total,
                model: &model,
                action,
            });
            on_event(&ReproduceEvent::Row {
                index,
                total,
                row: &report.rows[i],
            });
            continue;
        }
        if interrupt.load(Ordering::SeqCst) {
            report.interrupted = true;
            break;
        }
        on_event(&ReproduceEvent::Model {
            index,
            total,
            model: &model,
            action,
        });
        report.rows[i].status = RowStatus::Running;
        report.rows[i].error = None;
        write(&mut report, on_event)?;

        let t0 = Instant::now();
        let config = report.rows[i].config.clone();
        let mut notes = Vec::new();
        let result = (|| -> Result<RunSummary, TrainError> {
            let same = cache
                .as_ref()
                .is_some_and(|(d, s, _, _)| same_data(d, &config.data) && *s == config.seed);
            if !same {
                let data = TrainData::open(&options.data, &config.data, config.seed)?;
                if data.classes() != exp.classes() {
                    let w = format!(
                        "the data at {} have {} classes, the paper's {exp} data {}: our errors are not comparable with the paper's",
                        options.data.display(),
                        data.classes(),
                        exp.classes()
                    );
                    on_event(&ReproduceEvent::Warning(w.clone()));
                    notes.push(w);
                }
                cache = Some((config.data.clone(), config.seed, data, None));
            }
            let (_, _, data, pre) = cache.as_mut().expect("data opened above");
            match action {
                ModelAction::Resume { .. } => trainer.resume(&dir, Some(data)),
                _ => {
                    if pre.is_none() {
                        on_event(&ReproduceEvent::FittingPreprocessing);
                        *pre = Some(fit_preprocessing(&config.data, data.train.as_ref())?);
                    }
                    trainer.train_with_preprocessing(&config, data, &dir, pre.as_ref())
                }
            }
        })();
        for n in notes {
            if !report.notes.contains(&n) {
                report.notes.push(n);
            }
        }
        let row = &mut report.rows[i];
        row.wall_seconds = millis(row.wall_seconds + t0.elapsed().as_secs_f64());
        let mut fatal = None;
        match result {
            Ok(summary) => {
                row.set_progress(summary.epochs_done, summary.steps, &summary.history);
                row.status = match summary.status {
                    RunStatus::Completed => RowStatus::Done,
                    RunStatus::StepBudget => RowStatus::StepBudget,
                    RunStatus::Interrupted => RowStatus::Interrupted,
                };
                if let Some(t) = &summary.test {
                    row.set_eval(t);
                }
                if summary.status == RunStatus::Interrupted {
                    report.interrupted = true;
                }
            }
            Err(e) => {
                row.status = RowStatus::Failed;
                row.error = Some(e.to_string());
                // Keep what the run directory shows of the progress.
                if let Ok(Found::Partial(s)) = inspect(&dir, &row.config, exp) {
                    row.set_progress(s.epoch, s.step, &s.history);
                }
                if !matches!(e, TrainError::Diverged { .. }) {
                    fatal = Some(e);
                }
            }
        }
        write(&mut report, on_event)?;
        on_event(&ReproduceEvent::Row {
            index,
            total,
            row: &report.rows[i],
        });
        if let Some(e) = fatal {
            return Err(TrainError::ReproduceModel {
                model,
                run_dir: dir,
                error: Box::new(e),
            });
        }
        if report.interrupted {
            break;
        }
    }
    write(&mut report, on_event)?;
    Ok(report)
}

impl ReportRow {
    fn set_progress(&mut self, epochs_done: u64, steps: u64, history: &[EpochRecord]) {
        self.epochs_done = epochs_done;
        self.steps = steps;
        self.train_seconds = millis(history.iter().map(|h| h.seconds).sum());
    }

    fn set_eval(&mut self, eval: &EvalReport) {
        self.test_error = Some(eval.error_percent());
        self.test_top5_error = Some(100.0 * (1.0 - eval.top5));
        self.test_loss = Some(eval.loss);
        self.test_examples = Some(eval.examples);
        self.eval_file = Some(self.run_dir.join(files::EVAL));
    }
}

/// The scaled protocol in words: where the learning rate drops.
fn scaled_protocol(schedule: &LrSchedule, epochs: u64) -> String {
    let mut drops: Vec<(u64, usize)> = Vec::new();
    for m in schedule.milestone_epochs(epochs) {
        match drops.last_mut() {
            Some((last, n)) if *last == m => *n += 1,
            _ => drops.push((m, 1)),
        }
    }
    drops.retain(|(m, _)| *m < epochs);
    let plural = if epochs == 1 { "" } else { "s" };
    if drops.is_empty() {
        return format!(
            "scaled to {epochs} epoch{plural} (too short for the schedule's learning-rate drops)"
        );
    }
    let gamma = match schedule {
        LrSchedule::Scaled { gamma, .. } | LrSchedule::MultiStep { gamma, .. } => *gamma,
        _ => 0.1,
    };
    let at: Vec<String> = drops
        .iter()
        .map(|(m, n)| {
            let times = if *n > 1 {
                format!(" (x{n})")
            } else {
                String::new()
            };
            format!("{}{times}", m + 1)
        })
        .collect();
    format!(
        "scaled to {epochs} epoch{plural}: learning rate x{gamma} at the start of epoch{} {} (the paper's drops at the same fractions of the run)",
        if at.len() == 1 { "" } else { "s" },
        at.join(", ")
    )
}

/// Whether two data configs select the same data (the loader's worker
/// count does not change them).
fn same_data(a: &DataConfig, b: &DataConfig) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    a.workers = 0;
    b.workers = 0;
    a == b
}

/// What `dir` holds for `config`.
///
/// # Errors
/// [`TrainError::Reproduce`] when it holds a run with other settings or an
/// unreadable `eval.json`; checkpoint errors naming the file.
fn inspect(dir: &Path, config: &TrainConfig, exp: Experiment) -> Result<Found, TrainError> {
    let ckpt = dir.join(files::CHECKPOINT);
    if !ckpt.is_file() {
        return Ok(Found::Nothing);
    }
    let state = Checkpoint::read(&ckpt)?.state;
    let theirs = TrainConfig::from_toml(&state.config, &ckpt.display().to_string())?;
    let diff = config_differences(&theirs, config);
    if !diff.is_empty() {
        return Err(TrainError::Reproduce {
            experiment: exp.name().into(),
            path: dir.to_path_buf(),
            reason: format!(
                "holds a run of `{}` with other settings ({}); rerun with the settings it was made with, choose another --out, or remove this run directory",
                theirs.model,
                diff.join("; ")
            ),
        });
    }
    let eval_path = dir.join(files::EVAL);
    if dir.join(files::FINAL).is_file() && eval_path.is_file() {
        let eval = EvalReport::read(&eval_path, |e| TrainError::Reproduce {
            experiment: exp.name().into(),
            path: eval_path.clone(),
            reason: format!("not an evaluation report: {e}"),
        })?;
        return Ok(Found::Finished(Box::new(state), eval));
    }
    Ok(Found::Partial(Box::new(state)))
}

/// The settings in which two configs differ, as `key: A in the run, B asked`,
/// ignoring those that do not change the result (`data.path`,
/// `data.workers`).
fn config_differences(run: &TrainConfig, asked: &TrainConfig) -> Vec<String> {
    fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let table = |c: &TrainConfig| {
        let mut m = BTreeMap::new();
        if let Ok(t) = toml::Table::try_from(c) {
            flatten("", &toml::Value::Table(t), &mut m);
        }
        m.remove("data.path");
        m.remove("data.workers");
        m
    };
    let (a, b) = (table(run), table(asked));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&String>| v.map_or("(unset)".to_string(), Clone::clone);
            format!(
                "{k}: {} in the run, {} asked",
                show(a.get(k)),
                show(b.get(k))
            )
        })
        .collect()
}

/// `cpu`, `cuda:N` or `metal:N`.
fn device_name(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".into(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DD hh:mm:ss UTC` from seconds since 1970.
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Seconds rounded to milliseconds.
fn millis(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

/// `h:mm:ss`.
fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experiments_parse_and_have_the_papers_rows() {
        for e in Experiment::ALL {
            assert_eq!(e.name().parse::<Experiment>().unwrap(), e);
            assert!(TrainConfig::preset(e.preset()).is_ok());
            assert!(!e.rows().is_empty());
        }
        let err = "table4".parse::<Experiment>().unwrap_err().to_string();
        assert!(
            err.contains("table4") && err.contains("cifar10-aug"),
            "{err}"
        );

        let t3 = Experiment::Table3.rows();
        assert_eq!(t3.len(), 12);
        assert_eq!(t3[0].model, "model-a");
        assert_eq!(t3[0].label, "Model A");
        assert_eq!(t3[0].paper_error, 12.47);
        assert_eq!(t3[6].label, "ConvPool-CNN-B");
        assert_eq!(t3[11].label, "All-CNN-C");
        assert_eq!(t3[11].paper_error, 9.08);
        assert_eq!(Experiment::Cifar10Aug.rows()[0].paper_error, 7.25);
        assert_eq!(Experiment::Cifar100.rows()[0].paper_error, 33.71);
        let inet = &Experiment::Imagenet.rows()[0];
        assert_eq!(
            (inet.model.as_str(), inet.paper_error),
            ("all-cnn-imagenet", 41.2)
        );
        assert!(inet.note.is_some());
    }

    #[test]
    fn options_resolve_scaled_configs_and_refuse_per_row_keys() {
        let mut o = ReproduceOptions::new(Experiment::Table3, "/data", "/out");
        let row = &Experiment::Table3.rows()[3];
        let c = o.config(row).unwrap();
        assert_eq!((c.model.as_str(), c.epochs), ("all-cnn-a", 350));
        assert_eq!(c.schedule, LrSchedule::paper());
        o.epochs = Some(35);
        o.overrides = vec!["lr=0.01".into()];
        let c = o.config(row).unwrap();
        assert_eq!(c.epochs, 35);
        assert_eq!(c.schedule.milestone_epochs(35), vec![20, 25, 30]);
        assert_eq!(c.lr, 0.01);
        assert_eq!(c.data.path.as_deref(), Some(Path::new("/data")));
        o.overrides = vec!["model=all-cnn-c".into()];
        assert!(matches!(o.config(row), Err(TrainError::BadOverride { .. })));
        let mut o = ReproduceOptions::new(Experiment::Imagenet, "/data", "/out");
        o.epochs = Some(9);
        let c = o.config(&Experiment::Imagenet.rows()[0]).unwrap();
        assert_eq!(c.schedule.milestone_epochs(9), vec![4, 8]);
    }

    #[test]
    fn config_differences_name_the_field() {
        let a = TrainConfig::preset("cifar10").unwrap();
        let mut b = a.clone();
        assert!(config_differences(&a, &b).is_empty());
        b.data.workers = 3;
        b.data.path = Some("/elsewhere".into());
        assert!(config_differences(&a, &b).is_empty());
        b.epochs = 2;
        let d = config_differences(&a, &b);
        assert_eq!(d, vec!["epochs: 350 in the run, 2 asked".to_string()]);
    }

    #[test]
    fn times_and_durations_print() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400 + 3661), "2000-02-29 01:01:01 UTC");
        assert_eq!(duration(3725.4), "1:02:05");
        let s = LrSchedule::paper_scaled();
        assert_eq!(
            scaled_protocol(&s, 35),
            "scaled to 35 epochs: learning rate x0.1 at the start of epochs 21, 26, 31 (the paper's drops at the same fractions of the run)"
        );
        assert!(scaled_protocol(&s, 1).contains("too short"));
        assert!(scaled_protocol(&s, 2).contains("epoch 2 (x2)"));
    }
}
