//! The reproduction report: one row per model beside the paper's number,
//! as Markdown, JSON and a figure.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::eval::EvalReport;
use crate::observer::EpochRecord;
use crate::trainer::files;

use super::experiment::Experiment;

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

/// `report.json`: everything [`reproduce`](super::reproduce) knows about an experiment's
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
        if count(RowStatus::Running) > 0 {
            // Written while a model trains; a process that dies without a
            // word (a second Ctrl-C, a kill, a crash) leaves it so.
            state.push_str(
                "; a row still `running` when no `allcnn reproduce` is at work was stopped \
                 without a word (a second Ctrl-C, a kill, a crash): rerun the same command to \
                 resume it from its last checkpoint",
            );
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
            // A row never started has no folder to link to.
            let run = if r.status == RowStatus::NotRun {
                "-".to_string()
            } else {
                format!("[{dir}]({dir}/) ([config]({}))", r.config_file.display())
            };
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
                "The exact config of {} (`model` set per row; a row that has started \
                 keeps its own copy in `<model>/config.toml`, and every row's config, \
                 run or not, is in `report.json`):\n",
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

impl ReportRow {
    pub(super) fn set_progress(&mut self, epochs_done: u64, steps: u64, history: &[EpochRecord]) {
        self.epochs_done = epochs_done;
        self.steps = steps;
        self.train_seconds = millis(history.iter().map(|h| h.seconds).sum());
    }

    pub(super) fn set_eval(&mut self, eval: &EvalReport) {
        self.test_error = Some(eval.error_percent());
        self.test_top5_error = Some(100.0 * (1.0 - eval.top5));
        self.test_loss = Some(eval.loss);
        self.test_examples = Some(eval.examples);
        self.eval_file = Some(self.run_dir.join(files::EVAL));
    }
}

/// `YYYY-MM-DD hh:mm:ss UTC` from seconds since 1970.
pub(super) fn utc(secs: u64) -> String {
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
pub(super) fn millis(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

/// `h:mm:ss`.
pub(super) fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}
