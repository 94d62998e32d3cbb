//! The paper's learning-rate grid search: train each rate on the training
//! split, pick the winner by validation accuracy, report all.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::data::TrainData;
use crate::error::TrainError;
use crate::trainer::{RunStatus, Trainer};

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
    /// The search was stopped (Ctrl-C) during the last rate of `results`;
    /// the rates after it were not tried.
    #[serde(default)]
    pub interrupted: bool,
}

/// Trains `config` once per rate of `lrs` (or `config.lr_grid` when `lrs`
/// is empty), each in `root/lr-<rate>`, and picks the rate with the best
/// final validation accuracy. A rate that diverges or whose class maps all
/// die is recorded, not fatal. Writes `root/grid.json` after every rate, so
/// a long search shows its progress. The interrupt flag (Ctrl-C) stops the
/// search after the current rate's checkpoint ([`GridReport::interrupted`];
/// that rate resumes with [`Trainer::resume`]). To retrain with the winner on the full training
/// split, set `lr = report.best_lr` and `data.validation = 0` and train again.
///
/// # Errors
/// [`TrainError::InvalidConfig`] when `data` has no validation split or the
/// grid is empty, repeats a rate or holds one that is not positive and
/// finite (all checked before any training); run errors other than
/// divergence and dead class maps.
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
    std::fs::create_dir_all(root).map_err(TrainError::io(root))?;
    let mut results = Vec::new();
    let mut interrupted = false;
    for &lr in &lrs {
        let mut c = config.clone();
        c.lr = lr;
        let run_dir = root.join(format!("lr-{lr}"));
        let failed = |e: TrainError, run_dir: PathBuf| GridResult {
            lr,
            val_accuracy: None,
            val_loss: None,
            train_loss: None,
            failure: Some(e.to_string()),
            run_dir,
        };
        let r = match trainer.train(&c, data, &run_dir) {
            Ok(s) if matches!(s.status, RunStatus::Interrupted | RunStatus::TimeLimit) => {
                interrupted = true;
                GridResult {
                    lr,
                    val_accuracy: None,
                    val_loss: None,
                    train_loss: s.history.last().map(|h| h.train_loss),
                    failure: Some(format!(
                        "{}; resume it with `allcnn train --resume {}`",
                        if s.status == RunStatus::TimeLimit {
                            "stopped at the time limit"
                        } else {
                            "interrupted"
                        },
                        run_dir.display()
                    )),
                    run_dir,
                }
            }
            Ok(s) => GridResult {
                lr,
                val_accuracy: s.val.as_ref().map(|v| v.top1),
                val_loss: s.val.as_ref().map(|v| v.loss),
                train_loss: s.history.last().map(|h| h.train_loss),
                failure: None,
                run_dir,
            },
            Err(e @ (TrainError::Diverged { .. } | TrainError::DeadClassMaps { .. })) => {
                failed(e, run_dir)
            }
            Err(e) => return Err(e),
        };
        results.push(r);
        let report = grid_report(results.clone(), interrupted);
        let json = serde_json::to_string_pretty(&report).expect("report serialises");
        allcnn_models::write_atomic(&root.join("grid.json"), json.as_bytes())?;
        if interrupted {
            break;
        }
    }
    Ok(grid_report(results, interrupted))
}

fn grid_report(results: Vec<GridResult>, interrupted: bool) -> GridReport {
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
        results,
    }
}
