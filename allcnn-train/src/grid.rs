//! The paper's learning-rate grid search: train each rate on the training
//! split, pick the winner by validation accuracy, report all.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::config::{config_differences, TrainConfig};
use crate::data::TrainData;
use crate::error::TrainError;
use crate::trainer::{files, RunStatus, Trainer};

/// The outcome of one learning rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridResult {
    /// The rate.
    pub lr: f64,
    /// Final validation top-1 accuracy (`None` when the run diverged).
    pub val_accuracy: Option<f64>,
    /// Final validation loss.
    pub val_loss: Option<f64>,
    /// Mean training loss of the last epoch.
    pub train_loss: Option<f64>,
    /// Why the run stopped early (divergence), if it did.
    pub failure: Option<String>,
    /// Its run directory.
    pub run_dir: PathBuf,
    /// Stopped by Ctrl-C or the time limit before its end: the same search
    /// run again resumes it (a diverged or dead rate stays failed).
    #[serde(default)]
    pub stopped: bool,
}

/// Every rate's result and the winner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridReport {
    /// One entry per rate, in the order tried.
    pub results: Vec<GridResult>,
    /// The rate with the best validation accuracy.
    pub best_lr: Option<f64>,
    /// Its run directory (resume or copy it to continue with the winner).
    pub best_run_dir: Option<PathBuf>,
    /// The search was stopped (Ctrl-C, the time limit) during the last rate
    /// of `results`; the rates of `untried` were not started.
    #[serde(default)]
    pub interrupted: bool,
    /// The rates not started yet (after an interruption).
    #[serde(default)]
    pub untried: Vec<f64>,
}

/// Trains `config` once per rate of `lrs` (or `config.lr_grid` when `lrs`
/// is empty), each in `root/lr-<rate>`, and picks the rate with the best
/// final validation accuracy. A rate that diverges or whose class maps all
/// die is recorded, not fatal. Writes `root/grid.json` after every rate, so
/// a long search shows its progress. The interrupt flag (Ctrl-C) and the
/// trainer's deadline stop the search after the current rate's checkpoint
/// ([`GridReport::interrupted`], [`GridReport::untried`]).
///
/// The same call again goes on where it stopped: a rate whose run
/// directory holds a run of these settings is resumed (a finished one
/// trains nothing and reports its result; a diverged or dead one recorded
/// in `grid.json` stays failed), the others are trained. Rates of an
/// earlier search into `root` with the same settings that this call does
/// not list stay in the report. To retrain with the winner on the full
/// training split, set `lr = report.best_lr` and `data.validation = 0` and
/// train again.
///
/// # Errors
/// [`TrainError::InvalidConfig`] when `data` has no validation split or the
/// grid is empty, repeats a rate or holds one that is not positive and
/// finite (all checked before any training); [`TrainError::RunDir`] when a
/// rate's run directory holds a run with other settings; run errors other
/// than divergence and dead class maps.
pub fn grid_search(
    trainer: &mut Trainer,
    config: &TrainConfig,
    data: &TrainData,
    lrs: &[f64],
    root: &Path,
) -> Result<GridReport, TrainError> {
    let lrs: Vec<f64> = if lrs.is_empty() {
        config.lr_grid.clone()
    } else {
        lrs.to_vec()
    };
    if lrs.is_empty() {
        return Err(TrainError::InvalidConfig {
            field: "lr_grid",
            value: "[]".into(),
            reason: "no learning rate to try".into(),
        });
    }
    for (i, lr) in lrs.iter().enumerate() {
        let reason = if !(*lr > 0.0 && lr.is_finite()) {
            "every rate must be positive and finite"
        } else if lrs[..i].contains(lr) {
            "the rate appears twice"
        } else {
            continue;
        };
        return Err(TrainError::InvalidConfig {
            field: "lr_grid",
            value: lr.to_string(),
            reason: reason.into(),
        });
    }
    if data.val.is_none() {
        return Err(TrainError::InvalidConfig {
            field: "data.validation",
            value: "0".into(),
            reason: "the grid search picks by validation accuracy: hold out images with data.validation=N".into(),
        });
    }
    // Every rate's run directory is checked before any training: one
    // made with other settings or data would stop the search halfway.
    let fingerprint = data.fingerprint();
    let mut found = Vec::with_capacity(lrs.len());
    for &lr in &lrs {
        found.push(existing_run(
            &rate_config(config, lr),
            &rate_dir(root, lr),
            data,
            &fingerprint,
        )?);
    }
    // What an earlier search into `root` found, for rates whose runs are
    // still there with these settings.
    let previous = read_report(root).map_or_else(Vec::new, |p| p.results);
    let earlier = |i: usize| -> Option<GridResult> {
        let lr = lrs[i];
        let r = previous.iter().find(|r| r.lr == lr && is_final(r))?;
        found[i].then(|| GridResult {
            run_dir: rate_dir(root, lr),
            ..r.clone()
        })
    };
    // Its rates that this call does not list, checked once.
    let mut others = Vec::new();
    for r in previous.iter().filter(|r| !lrs.contains(&r.lr)) {
        let dir = rate_dir(root, r.lr);
        match existing_run(&rate_config(config, r.lr), &dir, data, &fingerprint) {
            Ok(true) => others.push(GridResult {
                run_dir: dir,
                ..r.clone()
            }),
            _ => log::warn!(
                "the earlier search's rate {} ({}) is left out of this report: its run is gone, or has other settings or data",
                r.lr,
                dir.display()
            ),
        }
    }
    std::fs::create_dir_all(root).map_err(TrainError::io(root))?;
    let mut results = Vec::new();
    let mut interrupted = false;
    for (i, &lr) in lrs.iter().enumerate() {
        let c = rate_config(config, lr);
        let run_dir = rate_dir(root, lr);
        let failed = |e: TrainError, run_dir: PathBuf| GridResult {
            lr,
            val_accuracy: None,
            val_loss: None,
            train_loss: None,
            failure: Some(e.to_string()),
            run_dir,
            stopped: false,
        };
        let r = if let Some(r) = earlier(i) {
            // Finished (or failed) before: reported as it was, nothing
            // trained (a resumed finished run would not evaluate again,
            // and a diverged one would retrain its failure).
            r
        } else {
            let outcome = if found[i] {
                trainer.resume(&run_dir, Some(data))
            } else {
                trainer.train(&c, data, &run_dir)
            };
            match outcome {
                Ok(s) if matches!(s.status, RunStatus::Interrupted | RunStatus::TimeLimit) => {
                    interrupted = true;
                    GridResult {
                        lr,
                        val_accuracy: None,
                        val_loss: None,
                        train_loss: s.history.last().map(|h| h.train_loss),
                        failure: Some(format!(
                            "{}; run the same search again to go on, or resume this rate alone with `allcnn train --resume {}`",
                            if s.status == RunStatus::TimeLimit {
                                "stopped at the time limit"
                            } else {
                                "interrupted"
                            },
                            run_dir.display()
                        )),
                        run_dir,
                        stopped: true,
                    }
                }
                Ok(s) => {
                    // A finished run resumed (its last search was stopped
                    // after it ended) reports its last epoch's validation.
                    let last = s.history.last();
                    GridResult {
                        lr,
                        val_accuracy: s
                            .val
                            .as_ref()
                            .map(|v| v.top1)
                            .or(last.and_then(|h| h.val_accuracy)),
                        val_loss: s
                            .val
                            .as_ref()
                            .map(|v| v.loss)
                            .or(last.and_then(|h| h.val_loss)),
                        train_loss: last.map(|h| h.train_loss),
                        failure: None,
                        run_dir,
                        stopped: false,
                    }
                }
                Err(e @ (TrainError::Diverged { .. } | TrainError::DeadClassMaps { .. })) => {
                    failed(e, run_dir)
                }
                Err(e) => return Err(e),
            }
        };
        results.push(r);
        // The rates after this one: their earlier results where they have
        // one, else not tried yet.
        let mut listed = results.clone();
        let mut untried = Vec::new();
        if interrupted {
            for (j, &later) in lrs.iter().enumerate().skip(i + 1) {
                match earlier(j) {
                    Some(r) => listed.push(r),
                    None => untried.push(later),
                }
            }
        }
        listed.extend(others.iter().cloned());
        let report = grid_report(listed, interrupted, untried);
        let json = serde_json::to_string_pretty(&report).expect("report serialises");
        allcnn_models::write_atomic(&root.join(GRID_REPORT), json.as_bytes())?;
        if interrupted || i + 1 == lrs.len() {
            return Ok(report);
        }
    }
    unreachable!("the grid holds at least one rate")
}

/// The search's report in its root folder.
pub const GRID_REPORT: &str = "grid.json";

fn rate_config(config: &TrainConfig, lr: f64) -> TrainConfig {
    let mut c = config.clone();
    c.lr = lr;
    c
}

fn rate_dir(root: &Path, lr: f64) -> PathBuf {
    root.join(format!("lr-{lr}"))
}

/// Whether an earlier result stands as it is: finished, or failed in a way
/// that training again would repeat; not one stopped before its end
/// (reports written before `stopped` existed say so in `failure`).
fn is_final(r: &GridResult) -> bool {
    let stopped = r.stopped
        || r.failure.as_deref().is_some_and(|f| {
            f.starts_with("interrupted") || f.starts_with("stopped at the time limit")
        });
    !stopped
}

/// Whether `run_dir` holds a run (a checkpoint) of `config` on `data`
/// (whose fingerprint is `fingerprint`).
///
/// # Errors
/// [`TrainError::RunDir`] when it holds one with other settings or of
/// other data; the checkpoint's own errors.
fn existing_run(
    config: &TrainConfig,
    run_dir: &Path,
    data: &TrainData,
    fingerprint: &str,
) -> Result<bool, TrainError> {
    let ckpt = run_dir.join(files::CHECKPOINT);
    if !ckpt.is_file() {
        return Ok(false);
    }
    let state = Checkpoint::read(&ckpt)?.state;
    let theirs = TrainConfig::from_toml(&state.config, &ckpt.display().to_string())?;
    // Which rates to try is the search's business, not a rate's setting.
    let mut asked = config.clone();
    asked.lr_grid = theirs.lr_grid.clone();
    let diff = config_differences(&theirs, &asked);
    if !diff.is_empty() {
        return Err(TrainError::RunDir {
            path: run_dir.to_path_buf(),
            reason: format!(
                "holds a run of this rate with other settings ({}): search with the settings it was made with, choose another --out, or remove this folder",
                diff.join("; ")
            ),
        });
    }
    let same_data = state.train_examples == data.train.len()
        && state
            .data_fingerprint
            .as_deref()
            .is_none_or(|f| f == fingerprint);
    if !same_data {
        return Err(TrainError::RunDir {
            path: run_dir.to_path_buf(),
            reason: "holds a run of this rate trained on other data: search on the data it was made with, choose another --out, or remove this folder".into(),
        });
    }
    Ok(true)
}

/// The report of an earlier search into the folder, if there is one.
fn read_report(root: &Path) -> Option<GridReport> {
    let json = std::fs::read(root.join(GRID_REPORT)).ok()?;
    serde_json::from_slice(&json).ok()
}

fn grid_report(results: Vec<GridResult>, interrupted: bool, untried: Vec<f64>) -> GridReport {
    let best = results
        .iter()
        .filter_map(|r| r.val_accuracy.map(|a| (a, r)))
        .fold(None::<(f64, &GridResult)>, |acc, (a, r)| match acc {
            Some((b, _)) if b >= a => acc,
            _ => Some((a, r)),
        });
    GridReport {
        best_lr: best.map(|(_, r)| r.lr),
        best_run_dir: best.map(|(_, r)| r.run_dir.clone()),
        interrupted,
        untried,
        results,
    }
}
