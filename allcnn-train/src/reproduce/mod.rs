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

mod experiment;
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use allcnn_data::Preprocessing;
use candle_core::{Device, DeviceLocation};

use crate::checkpoint::{Checkpoint, CheckpointState};
use crate::config::{config_differences, DataConfig, TrainConfig};
use crate::data::{fit_preprocessing, TrainData};
use crate::error::TrainError;
use crate::eval::EvalReport;
use crate::schedule::LrSchedule;
use crate::trainer::{files, RunStatus, RunSummary, Trainer};

pub use experiment::{Experiment, PaperRow, ReproduceOptions};
use report::millis;
pub use report::{HostInfo, ReportRow, ReproduceReport, RowStatus};

/// The Markdown report written into the output folder.
pub const REPORT_MARKDOWN: &str = "report.md";

/// The JSON report written into the output folder ([`ReproduceReport`]).
pub const REPORT_JSON: &str = "report.json";

/// The figure written into the output folder: each model's test error
/// beside the paper's ([`ReproduceReport::comparison_svg`]).
pub const REPORT_FIGURE: &str = "comparison.svg";

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
    /// With the data path the run was trained on, where recorded.
    Finished(Box<CheckpointState>, EvalReport, Option<PathBuf>),
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
    let paper_rows = exp.rows();
    let options = checked_options(options, &paper_rows)?;

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
    let mut moved = Vec::new();
    for pr in &paper_rows {
        let mut config = options.config(pr)?;
        let dir = options.out.join(&pr.model);
        if let Some(seed) = retried_seed(&dir, &config)? {
            config.seed = seed;
        }
        let f = inspect(&dir, &config, exp)?;
        if options.models.is_empty() || options.models.contains(&pr.model) {
            moved.extend(data_elsewhere(&f, &config, &pr.model));
        }
        let row = initial_row(pr, config, &f, &previous_wall);
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
    // Said, not kept in the report's notes: they hold what makes the
    // numbers incomparable, and would outlive a retrained row.
    for w in moved {
        on_event(&ReproduceEvent::Warning(w));
    }
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
        if interrupt.load(Ordering::SeqCst) || trainer.past_deadline() {
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
        let mut config = report.rows[i].config.clone();
        let mut notes = Vec::new();
        let mut action = action;
        let mut attempt = 0;
        let result = loop {
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
            match &result {
                Err(TrainError::DeadClassMaps { since, classes, .. })
                    if attempt < options.retries =>
                {
                    let graveyard = crate::trainer::dead_run_dir(&dir, config.seed);
                    std::fs::rename(&dir, &graveyard).map_err(|e| TrainError::Reproduce {
                        experiment: exp.name().into(),
                        path: dir.clone(),
                        reason: format!(
                            "moving the dead run aside to {}: {e}",
                            graveyard.display()
                        ),
                    })?;
                    attempt += 1;
                    let w = format!(
                    "{model}: {} died from step {since} with seed {}; the run is kept in {}; retrying with seed {} ({attempt} of {} retries)",
                    crate::trainer::dead_maps_subject(classes),
                    config.seed,
                    graveyard.display(),
                    config.seed + 1,
                    options.retries
                );
                    on_event(&ReproduceEvent::Warning(w.clone()));
                    notes.push(w);
                    config.seed += 1;
                    report.rows[i].config.seed = config.seed;
                    action = ModelAction::Start;
                }
                _ => break result,
            }
        };
        for n in notes {
            if !report.notes.contains(&n) {
                report.notes.push(n);
            }
        }
        let row = &mut report.rows[i];
        row.wall_seconds = millis(row.wall_seconds + t0.elapsed().as_secs_f64());
        let fatal = record_outcome(row, result, &dir, exp);
        if report.rows[i].status == RowStatus::Interrupted {
            report.interrupted = true;
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

/// `options` checked against the experiment's rows and the file system:
/// every selected model is a row, the data exist (made absolute, so a run
/// directory resumes from anywhere), the output folder is created.
fn checked_options(
    options: &ReproduceOptions,
    paper_rows: &[PaperRow],
) -> Result<ReproduceOptions, TrainError> {
    let exp = options.experiment;
    let fail = |path: &Path, reason: String| TrainError::Reproduce {
        experiment: exp.name().to_string(),
        path: path.to_path_buf(),
        reason,
    };
    for m in &options.models {
        if !paper_rows.iter().any(|r| &r.model == m) {
            let known: Vec<&str> = paper_rows.iter().map(|r| r.model.as_str()).collect();
            return Err(TrainError::InvalidConfig {
                field: "models",
                value: m.clone(),
                reason: format!("not a row of {exp}; its rows: {}", known.join(", ")),
            });
        }
    }
    if !options.data.exists() {
        return Err(fail(
            &options.data,
            "no such data folder (a CIFAR binary folder, e.g. data/cifar-10-batches-bin, or an image folder with train/ and test/; `allcnn data download`)".into(),
        ));
    }
    // Looked at before anything is written: an empty or unrecognised
    // folder fails here, not as the first row's error after the report
    // files were made.
    allcnn_data::info::info(&options.data).map_err(TrainError::opening_data)?;
    let mut options = options.clone();
    if let Ok(p) = options.data.canonicalize() {
        options.data = p;
    }
    // Every row's config before anything is written: a bad override or
    // --epochs fails with nothing created.
    for pr in paper_rows {
        options.config(pr)?;
    }
    if options.out.is_file() {
        return Err(fail(
            &options.out,
            "it is a file, not a folder: choose another --out".into(),
        ));
    }
    // A folder of the user's is not written into: it must be new, empty,
    // or hold this command's output (reports, row run directories).
    if let Ok(list) = std::fs::read_dir(&options.out) {
        let names: Vec<String> = list
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let ours = |n: &String| {
            [REPORT_JSON, REPORT_MARKDOWN, REPORT_FIGURE].contains(&n.as_str())
                || paper_rows.iter().any(|r| n.starts_with(r.model.as_str()))
        };
        if !names.is_empty() && !names.iter().any(ours) {
            let mut shown = names.clone();
            shown.sort();
            shown.truncate(3);
            return Err(fail(
                &options.out,
                format!(
                    "it is not empty and holds no output of `allcnn reproduce` (it has {}{}); the reports and runs go into a new or empty folder, so that none of your files is overwritten: choose another --out",
                    shown.join(", "),
                    if names.len() > 3 { ", ..." } else { "" }
                ),
            ));
        }
    }
    std::fs::create_dir_all(&options.out).map_err(|e| {
        fail(
            &options.out,
            format!("cannot create the output folder: {e}"),
        )
    })?;
    Ok(options)
}

/// A row as its run directory (`found`) and earlier sessions' wall times
/// leave it, before this session runs anything.
fn initial_row(
    pr: &PaperRow,
    config: TrainConfig,
    found: &Found,
    previous_wall: &BTreeMap<String, f64>,
) -> ReportRow {
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
    match found {
        Found::Nothing => {}
        Found::Partial(state) => {
            row.status = RowStatus::Interrupted;
            row.set_progress(state.epoch, state.step, &state.history);
        }
        Found::Finished(state, eval, _) => {
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
    row
}

/// Puts a run's outcome into its row; returns the error that must stop the
/// experiment (any failure but a diverged loss, which is only recorded).
fn record_outcome(
    row: &mut ReportRow,
    result: Result<RunSummary, TrainError>,
    dir: &Path,
    exp: Experiment,
) -> Option<TrainError> {
    match result {
        Ok(summary) => {
            row.set_progress(summary.epochs_done, summary.steps, &summary.history);
            row.status = match summary.status {
                RunStatus::Completed => RowStatus::Done,
                RunStatus::StepBudget => RowStatus::StepBudget,
                RunStatus::Interrupted | RunStatus::TimeLimit => RowStatus::Interrupted,
            };
            if let Some(t) = &summary.test {
                row.set_eval(t);
            }
        }
        Err(e) => {
            row.status = RowStatus::Failed;
            row.error = Some(e.to_string());
            // Keep what the run directory shows of the progress.
            if let Ok(Found::Partial(s)) = inspect(dir, &row.config, exp) {
                row.set_progress(s.epoch, s.step, &s.history);
            }
            if !matches!(
                e,
                TrainError::Diverged { .. } | TrainError::DeadClassMaps { .. }
            ) {
                return Some(e);
            }
        }
    }
    None
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
            let times = match n {
                1 => String::new(),
                2 => " (twice)".to_string(),
                n => format!(" ({n} times)"),
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

/// The seed of the run in `dir` when it is a retry of `config`'s row (by
/// `retries`): its checkpoint differs from `config` only in a later seed,
/// and the first try's dead run lies beside it (`<dir>.dead-seed-S`).
fn retried_seed(dir: &Path, config: &TrainConfig) -> Result<Option<u64>, TrainError> {
    let ckpt = dir.join(files::CHECKPOINT);
    if !ckpt.is_file() || !crate::trainer::first_dead_run_dir(dir, config.seed).exists() {
        return Ok(None);
    }
    let state = Checkpoint::read(&ckpt)?.state;
    let theirs = TrainConfig::from_toml(&state.config, &ckpt.display().to_string())?;
    if theirs.seed <= config.seed {
        return Ok(None);
    }
    let mut same = config.clone();
    same.seed = theirs.seed;
    Ok(config_differences(&theirs, &same)
        .is_empty()
        .then_some(theirs.seed))
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
        return Ok(Found::Finished(Box::new(state), eval, theirs.data.path));
    }
    Ok(Found::Partial(Box::new(state)))
}

/// A warning when a row's finished run was trained on data at another path
/// than this call's: the settings match (the path is not compared, so a
/// moved dataset does not force a retrain), but the user may have meant
/// other data, and the finished row is reused without training.
fn data_elsewhere(found: &Found, asked: &TrainConfig, model: &str) -> Option<String> {
    // A partial run resumes only on data with its fingerprint (the
    // trainer checks); a finished one is reused without a look at the data.
    let Found::Finished(_, _, Some(was)) = found else {
        return None;
    };
    let now = asked.data.path.as_ref()?;
    let same = |a: &Path, b: &Path| {
        a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
    };
    if same(was, now) {
        return None;
    }
    Some(format!(
        "{model}: its run was trained on the data at {}, this call names {}: its finished result is reused, nothing is retrained (remove its run directory to train it on these data)",
        was.display(),
        now.display()
    ))
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

#[cfg(test)]
mod tests {
    use super::report::{duration, utc};
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
        for bad in [
            "model=all-cnn-c",
            "epochs=3",
            "schedule.kind=constant",
            "schedule.gamma=0.5",
        ] {
            o.overrides = vec![bad.into()];
            assert!(
                matches!(o.config(row), Err(TrainError::BadOverride { .. })),
                "{bad}"
            );
        }
        let mut o = ReproduceOptions::new(Experiment::Imagenet, "/data", "/out");
        o.epochs = Some(9);
        let c = o.config(&Experiment::Imagenet.rows()[0]).unwrap();
        assert_eq!(c.schedule.milestone_epochs(9), vec![4, 8]);
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
        assert!(scaled_protocol(&s, 2).contains("epoch 2 (twice)"));
    }
}
