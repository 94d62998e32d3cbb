//! Observers: what a run reports while it trains. The trainer always writes
//! `metrics.jsonl` ([`MetricsLog`]); [`Console`] shows a progress bar when
//! stderr is a terminal and plain log lines otherwise.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// Facts about a run, given to observers when it starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The architecture's name.
    pub model: String,
    /// Trainable parameters.
    pub params: usize,
    /// Training examples.
    pub train_examples: usize,
    /// Steps per epoch.
    pub steps_per_epoch: u64,
    /// Epochs in all.
    pub epochs: u64,
    /// The epoch the run starts (or resumes) in.
    pub start_epoch: u64,
    /// The global step it starts from.
    pub start_step: u64,
}

/// One optimisation step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepEvent {
    /// 0-based epoch.
    pub epoch: u64,
    /// Global steps done, this one included.
    pub step: u64,
    /// 0-based batch index within the epoch.
    pub batch: u64,
    /// Batches in the epoch.
    pub batches: u64,
    /// Mean loss of this batch.
    pub loss: f32,
    /// Top-1 accuracy of this batch (training mode, with dropout).
    pub accuracy: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Training throughput since the epoch (or resume) started.
    pub images_per_sec: f64,
}

/// The summary of one epoch (also a line of `metrics.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 0-based epoch.
    pub epoch: u64,
    /// Global steps done at its end.
    pub step: u64,
    /// Learning rate at its end.
    pub lr: f64,
    /// Mean training loss over its batches.
    pub train_loss: f64,
    /// Training top-1 accuracy (with dropout) over its batches.
    pub train_accuracy: f64,
    /// Fraction of training examples whose logits were all 0 (every class
    /// map dead) in its batches.
    pub dead_fraction: f64,
    /// The classes whose logit was 0 for every one of their training
    /// examples in the epoch (their class maps silent all epoch, so they
    /// learnt nothing in it), by name; empty when every map fired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub silent_classes: Vec<String>,
    /// Validation top-1 accuracy, when there is a validation split.
    pub val_accuracy: Option<f64>,
    /// Validation loss.
    pub val_loss: Option<f64>,
    /// Test top-1 accuracy, when there is a test split.
    pub test_accuracy: Option<f64>,
    /// Test loss.
    pub test_loss: Option<f64>,
    /// Training images per second in this epoch.
    pub images_per_sec: f64,
    /// Wall-clock seconds of the epoch (training and evaluation).
    pub seconds: f64,
}

/// Something that watches a run. Every method has an empty default.
pub trait Observer: Send {
    /// The run starts or resumes.
    fn on_start(&mut self, _info: &RunInfo) {}
    /// A step finished.
    fn on_step(&mut self, _event: &StepEvent) {}
    /// An epoch finished (after evaluation).
    fn on_epoch(&mut self, _record: &EpochRecord) {}
    /// A warning (e.g. a stuck run).
    fn on_warning(&mut self, _message: &str) {}
    /// A message for the person watching (checkpoint written, how to resume).
    fn on_message(&mut self, _message: &str) {}
    /// Evaluation progress: `done` of `total` examples of `split`
    /// (`"validation"` or `"test"`; `"test (all images)"` for the final
    /// evaluation on the whole test split where the epochs used a
    /// `data.test_subset` sample) evaluated, after every batch.
    fn on_eval(&mut self, _split: &str, _done: u64, _total: u64) {}
}

/// `1h 05m`, `12m 30s` or `45s`.
fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m {sec:02}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

/// Progress on stderr (stdout stays free for a command's result): an
/// indicatif bar with loss, accuracy, learning rate and images/s when stderr
/// is a terminal, otherwise a plain log line every `every` steps; at each
/// epoch's end a line with the run's remaining time.
pub struct Console {
    every: u64,
    bar: Option<indicatif::ProgressBar>,
    terminal: bool,
    /// The run's last epoch (1-based) and the seconds of the epochs seen.
    epochs: u64,
    epoch_seconds: Vec<f64>,
    /// After a resume in mid-epoch: the fraction of the first epoch still
    /// to train, so its time counts as that fraction of a whole epoch.
    first_fraction: Option<f64>,
    /// The evaluation under way: its bar (terminal), when it started and
    /// when its last plain line was printed.
    eval: Option<EvalProgress>,
}

/// One split's evaluation, as [`Console`] shows it.
struct EvalProgress {
    split: String,
    bar: Option<indicatif::ProgressBar>,
    start: std::time::Instant,
    last_line: std::time::Instant,
}

/// A plain evaluation line at most this often (a short evaluation prints
/// none).
const EVAL_LINE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// `evaluating test: 1024/2000 (51%), about 9s left`.
fn eval_line(split: &str, done: u64, total: u64, elapsed: f64) -> String {
    let left = if done > 0 {
        elapsed / done as f64 * total.saturating_sub(done) as f64
    } else {
        0.0
    };
    format!(
        "evaluating {split}: {done}/{total} ({:.0}%), about {} left",
        100.0 * done as f64 / total.max(1) as f64,
        duration(left)
    )
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("every", &self.every)
            .field("terminal", &self.terminal)
            .finish()
    }
}

impl Console {
    /// A console observer logging every `every` steps when not on a terminal.
    pub fn new(every: u64) -> Self {
        Self {
            every: every.max(1),
            bar: None,
            terminal: std::io::stderr().is_terminal(),
            epochs: 0,
            epoch_seconds: Vec::new(),
            first_fraction: None,
            eval: None,
        }
    }

    /// Records an epoch's time (a resumed part-epoch scaled to a whole one)
    /// and returns `, about T left` for the epochs after `epoch` (0-based),
    /// from the mean epoch time so far; empty after the last.
    fn eta_after(&mut self, epoch: u64, seconds: f64) -> String {
        match self.first_fraction.take() {
            Some(f) if f > 0.0 => self.epoch_seconds.push(seconds / f),
            // Nothing trained in this process (a resume that only evaluates
            // the epoch it stopped in): its time says nothing of an epoch's.
            Some(_) => {}
            None => self.epoch_seconds.push(seconds),
        }
        if self.epoch_seconds.is_empty() {
            return String::new();
        }
        let mean = self.epoch_seconds.iter().sum::<f64>() / self.epoch_seconds.len() as f64;
        let left = self.epochs.saturating_sub(epoch + 1);
        if left > 0 {
            format!(", about {} left", duration(mean * left as f64))
        } else {
            String::new()
        }
    }

    fn print(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
}

/// `n` and `noun`, the noun in the plural unless `n` is 1 ("1 step").
pub(crate) fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The console's first line of a run: what trains, on what, from where.
fn start_line(info: &RunInfo) -> String {
    if info.start_epoch >= info.epochs {
        // A finished run resumed to write what its end lacks.
        return format!(
            "{} ({} parameters): all {} trained (step {}); writing the final weights and evaluation, run dir {}",
            info.model,
            info.params,
            count(info.epochs, "epoch"),
            info.start_step,
            info.run_dir.display()
        );
    }
    format!(
        "training {} ({} parameters) on {}: {} per epoch, epochs {}..{} (from step {}), run dir {}",
        info.model,
        info.params,
        count(info.train_examples as u64, "image"),
        count(info.steps_per_epoch, "step"),
        info.start_epoch + 1,
        info.epochs,
        info.start_step,
        info.run_dir.display()
    )
}

impl Observer for Console {
    fn on_start(&mut self, info: &RunInfo) {
        self.epochs = info.epochs;
        let spe = info.steps_per_epoch.max(1);
        // Steps of the first epoch trained before (all of them when the
        // process stopped while evaluating it).
        let into = info
            .start_step
            .saturating_sub(info.start_epoch * spe)
            .min(spe);
        self.first_fraction = (into > 0).then(|| (spe - into) as f64 / spe as f64);
        self.print(&start_line(info));
    }

    fn on_step(&mut self, e: &StepEvent) {
        if self.terminal {
            let bar = self.bar.get_or_insert_with(|| {
                let bar = indicatif::ProgressBar::new(e.batches);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "epoch {prefix} [{bar:30}] {pos}/{len} {msg}",
                    )
                    .expect("static template")
                    .progress_chars("=> "),
                );
                bar
            });
            bar.set_length(e.batches);
            bar.set_prefix(format!("{}", e.epoch + 1));
            bar.set_position(e.batch + 1);
            bar.set_message(format!(
                "loss {:.4} acc {:.3} lr {:.3e} {:.1} img/s",
                e.loss, e.accuracy, e.lr, e.images_per_sec
            ));
        } else if e.step.is_multiple_of(self.every) {
            eprintln!(
                "epoch {} step {} ({}/{}) loss {:.4} acc {:.3} lr {:.3e} {:.1} img/s",
                e.epoch + 1,
                e.step,
                e.batch + 1,
                e.batches,
                e.loss,
                e.accuracy,
                e.lr,
                e.images_per_sec
            );
        }
    }

    fn on_epoch(&mut self, r: &EpochRecord) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        let eta = self.eta_after(r.epoch, r.seconds);
        // No rate for an epoch whose images were all trained before a resume.
        let rate = if r.images_per_sec > 0.0 {
            format!("{:.1} img/s", r.images_per_sec)
        } else {
            "- img/s".to_string()
        };
        eprintln!(
            "epoch {}/{} done: train loss {:.4} acc {:.4} | val acc {} | test acc {} loss {} | {rate}, {:.1} s{}",
            r.epoch + 1,
            self.epochs,
            r.train_loss,
            r.train_accuracy,
            opt(r.val_accuracy),
            opt(r.test_accuracy),
            opt(r.test_loss),
            r.seconds,
            eta
        );
    }

    fn on_warning(&mut self, message: &str) {
        self.print(&format!("warning: {message}"));
    }

    fn on_message(&mut self, message: &str) {
        self.print(message);
    }

    fn on_eval(&mut self, split: &str, done: u64, total: u64) {
        let now = std::time::Instant::now();
        if self.eval.as_ref().is_none_or(|e| e.split != split) {
            // The epoch's training bar gives way to the evaluation's.
            if let Some(bar) = self.bar.take() {
                bar.finish_and_clear();
            }
            let bar = self.terminal.then(|| {
                let bar = indicatif::ProgressBar::new(total);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "evaluating {prefix} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})",
                    )
                    .expect("static template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(split.to_string());
                bar
            });
            self.eval = Some(EvalProgress {
                split: split.to_string(),
                bar,
                start: now,
                last_line: now,
            });
        }
        let Some(e) = self.eval.as_mut() else { return };
        if let Some(bar) = &e.bar {
            bar.set_position(done);
        } else if done < total && now.duration_since(e.last_line) >= EVAL_LINE_EVERY {
            e.last_line = now;
            eprintln!(
                "{}",
                eval_line(
                    split,
                    done,
                    total,
                    now.duration_since(e.start).as_secs_f64()
                )
            );
        }
        if done >= total {
            if let Some(bar) = self.eval.take().and_then(|e| e.bar) {
                bar.finish_and_clear();
            }
        }
    }
}

/// Appends one JSON object per line to `metrics.jsonl`: `{"type":"step",..}`
/// every `every` steps, `{"type":"epoch",..}` per epoch, and
/// `{"type":"start"|"warning"|"message",..}` lines.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
    every: u64,
}

impl MetricsLog {
    /// Opens (appending) `path`.
    ///
    /// # Errors
    /// [`TrainError::Io`] naming the file.
    pub fn open(path: &Path, every: u64) -> Result<Self, TrainError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(TrainError::io(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            every: every.max(1),
        })
    }

    fn write(&mut self, kind: &str, value: serde_json::Value) {
        let mut obj = serde_json::Map::new();
        obj.insert("type".into(), kind.into());
        if let serde_json::Value::Object(m) = value {
            obj.extend(m);
        }
        let line = serde_json::Value::Object(obj).to_string();
        if let Err(e) = writeln!(self.file, "{line}") {
            eprintln!("cannot append to {}: {e}", self.path.display());
        }
    }

    /// Cuts `path` before its first line that a run resumed from a
    /// checkpoint at global step `step` and epoch `epoch` (0-based, the
    /// epoch it was in or about to evaluate) writes again: a step or epoch
    /// line about a step after `step`, or the line of epoch `epoch` or later
    /// (a kill after an epoch's line but before the checkpoint that follows
    /// it). The file is rewritten atomically; a missing file is left missing.
    ///
    /// # Errors
    /// [`TrainError::Io`] naming the file.
    pub fn truncate_after(path: &Path, step: u64, epoch: u64) -> Result<(), TrainError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(TrainError::io(path)(e)),
        };
        let keep = |v: &serde_json::Value| {
            let step_ok = v["step"].as_u64().is_none_or(|s| s <= step);
            let epoch_ok = v["type"] != "epoch" || v["epoch"].as_u64().is_none_or(|e| e < epoch);
            step_ok && epoch_ok
        };
        let cut = text
            .split_inclusive('\n')
            .take_while(|line| {
                // A torn last line (a kill mid-write) goes too.
                line.ends_with('\n')
                    && serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .is_none_or(|v| keep(&v))
            })
            .map(str::len)
            .sum::<usize>();
        if cut < text.len() {
            allcnn_models::write_atomic(path, &text.as_bytes()[..cut])?;
        }
        Ok(())
    }

    /// The epoch lines of a `metrics.jsonl` file (for plots after a resume),
    /// and the lines that are not records (damaged: not JSON, or an epoch
    /// line without an epoch's fields), so that a figure missing an epoch
    /// can say so.
    ///
    /// # Errors
    /// [`TrainError::Io`] naming the file.
    pub fn read_epochs(path: &Path) -> Result<EpochLog, TrainError> {
        let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
        let mut log = EpochLog::default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v) if v["type"] != "epoch" => {}
                Ok(v) => match serde_json::from_value(v) {
                    Ok(record) => log.epochs.push(record),
                    Err(_) => log.unreadable_lines.push(i + 1),
                },
                Err(_) => log.unreadable_lines.push(i + 1),
            }
        }
        Ok(log)
    }
}

/// What [`MetricsLog::read_epochs`] found.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct EpochLog {
    /// Every readable epoch line, in file order.
    pub epochs: Vec<EpochRecord>,
    /// The 1-based numbers of the lines that are not records.
    pub unreadable_lines: Vec<usize>,
}

impl Observer for MetricsLog {
    fn on_start(&mut self, info: &RunInfo) {
        self.write("start", serde_json::to_value(info).unwrap_or_default());
    }
    fn on_step(&mut self, e: &StepEvent) {
        if e.step.is_multiple_of(self.every) {
            self.write("step", serde_json::to_value(e).unwrap_or_default());
        }
    }
    fn on_epoch(&mut self, r: &EpochRecord) {
        self.write("epoch", serde_json::to_value(r).unwrap_or_default());
    }
    fn on_warning(&mut self, message: &str) {
        self.write("warning", serde_json::json!({ "message": message }));
    }
    fn on_message(&mut self, message: &str) {
        self.write("message", serde_json::json!({ "message": message }));
    }
}

#[cfg(test)]
mod tests {
    use super::{duration, eval_line, start_line, Console, MetricsLog, Observer, RunInfo};

    /// The first line names the epochs to come, or says that none are
    /// left (a finished run resumed for its missing final weights).
    #[test]
    fn the_start_line_says_what_is_left() {
        let mut info = RunInfo {
            run_dir: "run".into(),
            model: "m".into(),
            params: 7,
            train_examples: 1,
            steps_per_epoch: 1,
            epochs: 3,
            start_epoch: 1,
            start_step: 1,
        };
        assert_eq!(
            start_line(&info),
            "training m (7 parameters) on 1 image: 1 step per epoch, epochs 2..3 (from step 1), run dir run"
        );
        (info.start_epoch, info.start_step) = (3, 3);
        assert_eq!(
            start_line(&info),
            "m (7 parameters): all 3 epochs trained (step 3); writing the final weights and evaluation, run dir run"
        );
    }

    #[test]
    fn the_eta_after_a_mid_epoch_resume_counts_the_part_epoch_whole() {
        let mut c = Console::new(10);
        let info = |start_step| RunInfo {
            run_dir: "run".into(),
            model: "m".into(),
            params: 1,
            train_examples: 100,
            steps_per_epoch: 100,
            epochs: 10,
            start_epoch: 3,
            start_step,
        };
        // Resumed at step 375: a quarter of epoch 4 left, trained in 25 s,
        // is a 100 s epoch; six more at that pace are 10 minutes.
        c.on_start(&info(375));
        assert_eq!(c.eta_after(3, 25.0), ", about 10m 00s left");
        // Then whole epochs count as they are: (100 + 200) / 2 x 5.
        assert_eq!(c.eta_after(4, 200.0), ", about 12m 30s left");
        // A resume at an epoch boundary scales nothing; the last epoch has
        // nothing left.
        let mut c = Console::new(10);
        c.on_start(&info(300));
        assert_eq!(c.eta_after(3, 60.0), ", about 6m 00s left");
        assert_eq!(c.eta_after(9, 60.0), "");
        // Stopped while evaluating epoch 4 (all its steps trained): the
        // evaluation's seconds are no epoch time, so no estimate yet.
        let mut c = Console::new(10);
        c.on_start(&info(400));
        assert_eq!(c.eta_after(3, 5.0), "");
        assert_eq!(c.eta_after(4, 100.0), ", about 8m 20s left");
    }

    #[test]
    fn durations_and_eval_lines_read_as_intended() {
        assert_eq!(duration(45.4), "45s");
        assert_eq!(duration(750.0), "12m 30s");
        assert_eq!(duration(3900.0), "1h 05m");
        // 1024 of 2000 in 10 s: 976 left at 102.4/s is 9.5 s, shown as 10s.
        assert_eq!(
            eval_line("test", 1024, 2000, 10.0),
            "evaluating test: 1024/2000 (51%), about 10s left"
        );
        assert_eq!(
            eval_line("validation", 0, 500, 0.0),
            "evaluating validation: 0/500 (0%), about 0s left"
        );
    }

    /// Damaged lines are counted, not silently dropped: an epoch on them
    /// would be missing from the figures.
    #[test]
    fn read_epochs_reports_the_lines_it_cannot_read() {
        let epoch = |e: u64| {
            format!(
                "{{\"type\":\"epoch\",\"epoch\":{e},\"step\":{},\"lr\":0.1,\"train_loss\":1.0,\"train_accuracy\":0.5,\"dead_fraction\":0.0,\"images_per_sec\":10.0,\"seconds\":1.0}}\n",
                10 * (e + 1)
            )
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let broken = epoch(1).replace("\"lr\":0.1,", "\"lr\":0.1,\"tra");
        let text = [
            "{\"type\":\"start\"}\n".to_string(),
            epoch(0),
            broken,
            "{\"type\":\"epoch\",\"epoch\":1}\n".to_string(),
            epoch(2),
        ]
        .concat();
        std::fs::write(&path, text).unwrap();
        let log = MetricsLog::read_epochs(&path).unwrap();
        let epochs: Vec<u64> = log.epochs.iter().map(|r| r.epoch).collect();
        assert_eq!(epochs, [0, 2]);
        assert_eq!(log.unreadable_lines, [3, 4]);
    }

    /// A resume cuts what it writes again: lines past the checkpoint's step,
    /// the line of the epoch it is in (a kill between an epoch's line and
    /// the checkpoint after it), and a torn last line.
    #[test]
    fn truncate_after_keeps_only_what_the_resume_does_not_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let text = concat!(
            "{\"type\":\"start\"}\n",
            "{\"type\":\"step\",\"step\":10}\n",
            "{\"type\":\"epoch\",\"epoch\":0,\"step\":20}\n",
            "{\"type\":\"step\",\"step\":30}\n",
            "{\"type\":\"step\",\"st"
        );
        let lines = |n: usize| text.split_inclusive('\n').take(n).collect::<String>();
        for (step, epoch, kept) in [(20, 1, 3), (20, 0, 2), (30, 1, 4), (5, 0, 1)] {
            std::fs::write(&path, text).unwrap();
            MetricsLog::truncate_after(&path, step, epoch).unwrap();
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                lines(kept),
                "step {step} epoch {epoch}"
            );
        }
        // A missing file stays missing.
        MetricsLog::truncate_after(&dir.path().join("none.jsonl"), 1, 0).unwrap();
        assert!(!dir.path().join("none.jsonl").exists());
    }
}
