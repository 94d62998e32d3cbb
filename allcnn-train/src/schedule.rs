//! Learning-rate schedules.

use serde::{Deserialize, Serialize};

fn paper_fractions() -> Vec<f64> {
    vec![200.0 / 350.0, 250.0 / 350.0, 300.0 / 350.0]
}

fn paper_gamma() -> f64 {
    0.1
}

/// How the learning rate changes during a run. The rate at a point of the
/// run is `base_lr * gamma^k`, where `k` counts the milestones passed.
///
/// In TOML: `schedule = { kind = "multi-step", milestones = [200, 250, 300], gamma = 0.1 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LrSchedule {
    /// The base rate throughout.
    Constant,
    /// Multiply by `gamma` at the start of each epoch in `milestones`
    /// (the paper: x0.1 at epochs 200, 250 and 300 of 350).
    MultiStep {
        /// Epochs (0-based: epoch 200 is the 201st) at which the rate drops.
        milestones: Vec<u64>,
        /// The factor (0.1 in the paper).
        gamma: f64,
    },
    /// The paper's schedule scaled to a shorter budget: milestones as
    /// fractions of the run's epochs (`[200/350, 250/350, 300/350]` for the
    /// paper's shape), rounded to the nearest epoch.
    Scaled {
        /// Fractions of the total epochs, in `(0, 1)` (default: the paper's
        /// 200/350, 250/350, 300/350, so `schedule.kind=scaled` alone works).
        #[serde(default = "paper_fractions")]
        fractions: Vec<f64>,
        /// The factor (default 0.1).
        #[serde(default = "paper_gamma")]
        gamma: f64,
    },
    /// Multiply by `gamma` every `every` iterations (the ImageNet protocol:
    /// /10 every 200,000 iterations).
    StepIters {
        /// Iterations between drops.
        every: u64,
        /// The factor.
        gamma: f64,
    },
}

impl LrSchedule {
    /// The paper's CIFAR schedule: x0.1 at epochs 200, 250 and 300.
    pub fn paper() -> Self {
        LrSchedule::MultiStep {
            milestones: vec![200, 250, 300],
            gamma: 0.1,
        }
    }

    /// The paper's schedule shape for any number of epochs.
    pub fn paper_scaled() -> Self {
        LrSchedule::Scaled {
            fractions: paper_fractions(),
            gamma: paper_gamma(),
        }
    }

    /// The epochs at which the rate drops in a run of `total_epochs`
    /// (empty for [`LrSchedule::Constant`] and [`LrSchedule::StepIters`]).
    /// A scaled drop is never before the end of the first epoch: a short
    /// run that rounds a small fraction to 0 would otherwise train at the
    /// dropped rate from the start, never at the one it was given.
    pub fn milestone_epochs(&self, total_epochs: u64) -> Vec<u64> {
        match self {
            LrSchedule::MultiStep { milestones, .. } => milestones.clone(),
            LrSchedule::Scaled { fractions, .. } => fractions
                .iter()
                .map(|f| ((f * total_epochs as f64).round() as u64).max(1))
                .collect(),
            LrSchedule::Constant | LrSchedule::StepIters { .. } => Vec::new(),
        }
    }

    /// The learning rate for `epoch` (0-based) and global iteration `step`
    /// (0-based) of a run of `total_epochs`.
    pub fn lr(&self, base_lr: f64, epoch: u64, step: u64, total_epochs: u64) -> f64 {
        let (passed, gamma) = match self {
            LrSchedule::Constant => (0, 1.0),
            LrSchedule::MultiStep { gamma, .. } | LrSchedule::Scaled { gamma, .. } => {
                let passed = self
                    .milestone_epochs(total_epochs)
                    .iter()
                    .filter(|&&m| epoch >= m)
                    .count();
                (passed, *gamma)
            }
            LrSchedule::StepIters { every, gamma } => ((step / (*every).max(1)) as usize, *gamma),
        };
        base_lr * gamma.powi(passed as i32)
    }

    /// Checks the parameters.
    ///
    /// # Errors
    /// A description of the first problem found.
    pub fn validate(&self) -> Result<(), String> {
        let gamma_ok = |g: f64| {
            if g > 0.0 && g.is_finite() {
                Ok(())
            } else {
                Err(format!("gamma must be positive and finite, got {g}"))
            }
        };
        match self {
            LrSchedule::Constant => Ok(()),
            LrSchedule::MultiStep { milestones, gamma } => {
                if milestones.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(format!(
                        "milestones must increase strictly, got {milestones:?}"
                    ));
                }
                gamma_ok(*gamma)
            }
            LrSchedule::Scaled { fractions, gamma } => {
                if fractions.iter().any(|f| !(*f > 0.0 && *f < 1.0)) {
                    return Err(format!("fractions must lie in (0, 1), got {fractions:?}"));
                }
                if fractions.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(format!(
                        "fractions must increase strictly, got {fractions:?}"
                    ));
                }
                gamma_ok(*gamma)
            }
            LrSchedule::StepIters { every, gamma } => {
                if *every == 0 {
                    return Err("`every` must be at least 1".into());
                }
                gamma_ok(*gamma)
            }
        }
    }
}
