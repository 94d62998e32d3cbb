//! [`Trainer`]: the training loop, the run directory, resume and interrupt.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use allcnn_data::{Augmentation, DataLoader, LoaderConfig, Preprocessing};
use allcnn_models::{AllCnn, ConvBackend, Precision, TrainingRecord, WeightsFile, WeightsMeta};
use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{BestRecord, Checkpoint, CheckpointState, EpochPartial, RngState};
use crate::config::TrainConfig;
use crate::data::{eval_loader, fit_preprocessing, preprocessing_digest, TrainData};
use crate::error::TrainError;
use crate::eval::{evaluate_with_progress, EvalReport};
use crate::observer::{Console, EpochRecord, MetricsLog, Observer, RunInfo, StepEvent};
use crate::optim::{MomentumSgd, SgdConfig};
use crate::plot::{learning_curve_svg, metrics_csv};
use crate::step::train_step;
pub use crate::watch::dead_maps_subject;
use crate::watch::{class_name, mostly_dead, silent_warning, stuck_warning, DeadWatch};

/// File names inside a run directory.
pub mod files {
    /// The resolved config.
    pub const CONFIG: &str = "config.toml";
    /// The latest checkpoint.
    pub const CHECKPOINT: &str = "checkpoint.safetensors";
    /// The preprocessing fitted on the training split.
    pub const PREPROCESSING: &str = "preprocessing.safetensors";
    /// Weights of the best epoch (self-describing, preprocessing attached).
    pub const BEST: &str = "best.safetensors";
    /// Weights at the end of the run.
    pub const FINAL: &str = "final.safetensors";
    /// One JSON object per line: epochs, periodic steps, warnings.
    pub const METRICS: &str = "metrics.jsonl";
    /// The learning curves, redrawn every epoch.
    pub const PLOT: &str = "learning-curve.svg";
    /// The per-epoch metrics as CSV, rewritten every epoch.
    pub const CSV: &str = "metrics.csv";
    /// The final evaluation on the test split.
    pub const EVAL: &str = "eval.json";
    /// Held locked by the process training in the directory; its presence
    /// marks a directory as an allcnn run.
    pub const LOCK: &str = ".allcnn-lock";
    /// Every file a run writes (but the lock).
    pub const ALL: [&str; 9] = [
        CONFIG,
        CHECKPOINT,
        PREPROCESSING,
        BEST,
        FINAL,
        METRICS,
        CSV,
        PLOT,
        EVAL,
    ];
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every epoch ran.
    Completed,
    /// `max_steps` was reached.
    StepBudget,
    /// The interrupt flag (Ctrl-C) stopped it after a step; resume to continue.
    Interrupted,
    /// The deadline ([`TrainerBuilder::deadline`]) passed: it stopped after a
    /// step, with a checkpoint; resume to continue.
    TimeLimit,
}

/// What a run produced (`allcnn train --json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// How it ended.
    pub status: RunStatus,
    /// The run directory.
    pub run_dir: PathBuf,
    /// Epochs finished.
    pub epochs_done: u64,
    /// Global steps done.
    pub steps: u64,
    /// The latest checkpoint.
    pub checkpoint: PathBuf,
    /// `final.safetensors`, unless interrupted.
    pub final_weights: Option<PathBuf>,
    /// `best.safetensors`, when a validation or test split chose one.
    pub best_weights: Option<PathBuf>,
    /// The best epoch.
    pub best: Option<BestRecord>,
    /// Every finished epoch.
    pub history: Vec<EpochRecord>,
    /// The final evaluation on the test split.
    pub test: Option<EvalReport>,
    /// The final evaluation on the validation split.
    pub val: Option<EvalReport>,
    /// For an interrupted or time-limited run: how to resume it.
    pub resume_hint: Option<String>,
}

/// Builder of a [`Trainer`]; every setting has a sound default (CPU, a
/// console observer, a private interrupt flag).
pub struct TrainerBuilder {
    device: Device,
    observers: Vec<Box<dyn Observer>>,
    interrupt: Option<Arc<AtomicBool>>,
    deadline: Option<Instant>,
    console: bool,
}

impl std::fmt::Debug for TrainerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainerBuilder")
            .field("device", &self.device)
            .field("observers", &self.observers.len())
            .field("console", &self.console)
            .finish()
    }
}

impl TrainerBuilder {
    /// The device to train on (default: CPU).
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// Adds an observer (called after the built-in ones).
    pub fn observer(mut self, observer: Box<dyn Observer>) -> Self {
        self.observers.push(observer);
        self
    }

    /// The flag that stops the run after the current step (set it from a
    /// Ctrl-C handler: `ctrlc::set_handler(move || flag.store(true, SeqCst))`).
    pub fn interrupt_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.interrupt = Some(flag);
        self
    }

    /// A wall-clock deadline (a job's time limit, a machine lent for a
    /// while): once it has passed, the run stops after the current step as
    /// an interrupt does, writes its checkpoint and ends with
    /// [`RunStatus::TimeLimit`]; resuming continues it exactly. Applies to
    /// every run the trainer makes (a grid or `reproduce` stops as a whole).
    /// Default: none.
    pub fn deadline(mut self, at: Instant) -> Self {
        self.deadline = Some(at);
        self
    }

    /// Whether to print progress (a bar on a terminal, log lines otherwise).
    /// Default: on.
    pub fn console(mut self, on: bool) -> Self {
        self.console = on;
        self
    }

    /// The trainer.
    pub fn build(self) -> Trainer {
        Trainer {
            device: self.device,
            observers: self.observers,
            interrupt: self.interrupt.unwrap_or_default(),
            deadline: self.deadline,
            console: self.console,
        }
    }
}

/// Runs training: fresh ([`Trainer::train`]) or from a run directory's
/// checkpoint ([`Trainer::resume`]).
pub struct Trainer {
    device: Device,
    observers: Vec<Box<dyn Observer>>,
    interrupt: Arc<AtomicBool>,
    deadline: Option<Instant>,
    console: bool,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("device", &self.device)
            .field("observers", &self.observers.len())
            .finish()
    }
}

/// Everything the loop needs, fresh or resumed.
struct Run {
    config: TrainConfig,
    run_dir: PathBuf,
    model: AllCnn,
    opt: MomentumSgd,
    preprocessing: Preprocessing,
    train_loader: DataLoader,
    val_loader: Option<DataLoader>,
    test_loader: Option<DataLoader>,
    /// The whole test split where `test_loader` reads a sample of it
    /// (`data.test_subset`): the final evaluation's.
    full_test_loader: Option<DataLoader>,
    state: CheckpointState,
    last_checkpoint: Option<PathBuf>,
    input_size: usize,
    /// The latest (validation, test) evaluation and the step it was made at,
    /// so the end of a run does not evaluate unchanged weights again.
    last_eval: Option<(u64, Option<EvalReport>, Option<EvalReport>)>,
    /// Said to the observers once the run starts (resume's findings).
    notices: Vec<Notice>,
    /// The training split's class names (messages about class maps).
    class_names: Vec<String>,
}

/// Something resume found, said once the run's observers are listening.
/// What a resumed run changes ([`Trainer::resume_with`]); `None` keeps
/// the run's own setting.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ResumeChanges {
    /// The run's new length in epochs.
    pub epochs: Option<u64>,
    /// The precision of the CPU convolutions from here on (the config's
    /// `conv` goes back to its default).
    pub precision: Option<Precision>,
    /// The CPU convolution backend from here on, the expert override of
    /// `precision` (which goes back to its default).
    pub conv: Option<ConvBackend>,
    /// The class-map watch's patience from here on (`dead_patience_steps`;
    /// 0 turns the watch off). It decides when a run stops, not what it
    /// computes: the steps stay bit-identical.
    pub dead_patience_steps: Option<u64>,
    /// Where the run's data are now, when they moved since it started (its
    /// config records the old path). They must be the same data: the
    /// example count and the fingerprint the checkpoint records are
    /// checked, and the new path is recorded once they pass.
    pub data: Option<PathBuf>,
}

impl ResumeChanges {
    /// No change: [`Trainer::resume`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The run's length becomes `epochs`.
    pub fn epochs(mut self, epochs: u64) -> Self {
        self.epochs = Some(epochs);
        self
    }

    /// The CPU convolutions run at `precision` from here on.
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = Some(precision);
        self
    }

    /// The CPU convolutions run `conv` from here on.
    pub fn conv(mut self, conv: ConvBackend) -> Self {
        self.conv = Some(conv);
        self
    }

    /// The class-map watch waits `steps` from here on (0: off).
    pub fn dead_patience_steps(mut self, steps: u64) -> Self {
        self.dead_patience_steps = Some(steps);
        self
    }

    /// The run's data are at `path` now ([`ResumeChanges::data`]).
    pub fn data(mut self, path: impl Into<PathBuf>) -> Self {
        self.data = Some(path.into());
        self
    }

    /// What changes about the CPU convolutions at `step`: the config with
    /// the asked-for change applied (`None` when the config stays as it
    /// is) and the sentence that says so, or `None` when neither the config
    /// nor the backend that ran (`ran`) changes. Without a change asked
    /// for, the backend can still change: `precision = "auto"` resolved on
    /// another machine or build.
    fn backend(
        &self,
        config: &TrainConfig,
        ran: ConvBackend,
        step: u64,
    ) -> Result<Option<(Option<TrainConfig>, String)>, TrainError> {
        let mut changed = config.clone();
        match (self.precision, self.conv) {
            (Some(p), Some(c)) => {
                return Err(TrainError::InvalidConfig {
                    field: "precision",
                    value: p.name().into(),
                    reason: format!(
                        "conflicts with conv = \"{}\"; change one of the two",
                        c.name()
                    ),
                })
            }
            (Some(p), None) => {
                changed.precision = p;
                changed.conv = ConvBackend::default();
            }
            (None, Some(c)) => {
                changed.conv = c;
                changed.precision = Precision::default();
            }
            (None, None) => {}
        }
        let same_config = changed.conv == config.conv && changed.precision == config.precision;
        let now = changed.conv_backend();
        let said = match (ran == now, same_config) {
            (true, true) => return Ok(None),
            (true, false) => format!(
                "the CPU convolutions stay `{}` from step {step} (the config now says so in other words)",
                now.name()
            ),
            (false, same) => format!(
                "the CPU convolutions change from `{}` to `{}` at step {step}{}: same protocol, other rounding, so from here the run is not bit-identical to one that never changed",
                ran.name(),
                now.name(),
                if same { " (what the run's config runs on this machine)" } else { "" },
            ),
        };
        Ok(Some(((!same_config).then_some(changed), said)))
    }
}

enum Notice {
    Message(String),
    Warning(String),
}

impl Default for Trainer {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl Trainer {
    /// A builder with defaults.
    pub fn builder() -> TrainerBuilder {
        TrainerBuilder {
            device: Device::Cpu,
            observers: Vec::new(),
            interrupt: None,
            deadline: None,
            console: true,
        }
    }

    /// Why the run must stop now, if it must: the interrupt flag, or the
    /// deadline passed.
    fn stop_requested(&self) -> Option<RunStatus> {
        if self.interrupt.load(Ordering::SeqCst) {
            Some(RunStatus::Interrupted)
        } else if self.past_deadline() {
            Some(RunStatus::TimeLimit)
        } else {
            None
        }
    }

    /// Whether the trainer's deadline, if any, has passed.
    pub fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The interrupt flag: set it to stop after the current step.
    pub fn interrupt_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.interrupt)
    }

    /// The device the trainer trains on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Trains a fresh run of `config` on `data` into `run_dir`.
    ///
    /// The run directory is created and checked (writable, room for a
    /// checkpoint, not already holding a run) before anything else.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`], [`TrainError::RunDir`],
    /// [`TrainError::Diverged`] when the loss becomes NaN or infinite, and
    /// data, model, I/O errors naming what is at fault.
    pub fn train(
        &mut self,
        config: &TrainConfig,
        data: &TrainData,
        run_dir: &Path,
    ) -> Result<RunSummary, TrainError> {
        self.train_with_preprocessing(config, data, run_dir, None)
    }

    /// As [`Trainer::train`], with the preprocessing already fitted on
    /// `data.train` for `config.data` (shared by several runs on the same
    /// data), or fitted here when `None`.
    pub(crate) fn train_with_preprocessing(
        &mut self,
        config: &TrainConfig,
        data: &TrainData,
        run_dir: &Path,
        preprocessing: Option<&Preprocessing>,
    ) -> Result<RunSummary, TrainError> {
        config.validate()?;
        let classes = config.classes.unwrap_or_else(|| data.classes());
        let spec = config.arch(classes)?;
        if spec.classes()? != data.classes() {
            return Err(TrainError::DataMismatch {
                reason: format!(
                    "`{}` has {} classes, the training data {}",
                    spec.name,
                    spec.classes()?,
                    data.classes()
                ),
            });
        }
        // A batch larger than the data is refused before anything is written
        // or fitted (the loader would have no full batch).
        if config.batch_size > data.train.len() {
            return Err(no_full_batch(config, data.train.len()));
        }
        // Nor an input too small for the network (the ImageNet model on
        // CIFAR's 32x32 images): the network sees the crop where the
        // augmentation crops, else the images as they are.
        let input = match config.data.augmentation {
            Augmentation::RandomCrop { crop, .. } | Augmentation::CenterCrop { crop, .. } => {
                Some((crop, crop))
            }
            _ => data
                .train
                .image_shape()
                .map(|(_, h, w)| (h, w))
                .or_else(|| {
                    let image = data.train.get(0).ok()?.image;
                    Some((image.height(), image.width()))
                }),
        };
        if let Some((h, w)) = input {
            spec.map_sizes_hw(h, w)?;
        }
        // A translation as large as the image shifts it out of view: the
        // network would see only the fill.
        if let (Augmentation::FlipTranslate { max_shift, .. }, Some((h, w))) =
            (config.data.augmentation, input)
        {
            if max_shift >= h.min(w) {
                return Err(TrainError::InvalidConfig {
                    field: "data.augmentation",
                    value: format!("max_shift = {max_shift}"),
                    reason: format!(
                        "shifts the {h}x{w} images out of view; give less than {} (the paper: 5 of 32)",
                        h.min(w)
                    ),
                });
            }
        }
        // The starting weights before anything is written or fitted: a bad
        // `init_from` fails in a moment, not after the preprocessing.
        let mut model = initial_model(config, &spec, &self.device)?;
        // Nor a `data.preprocessing_from` of another kind (it is read, not
        // fitted: a moment); the run directory was left behind.
        let read = match (preprocessing, &config.data.preprocessing_from) {
            (None, Some(_)) => Some(fit_preprocessing(&config.data, data.train.as_ref())?),
            _ => None,
        };
        let _lock = prepare_run_dir(run_dir, true, spec.param_count() * 4 * 2 + 4096)?;
        let config_text = config.to_toml();
        allcnn_models::write_atomic(&run_dir.join(files::CONFIG), config_text.as_bytes())?;

        let preprocessing = match (preprocessing, read) {
            (Some(p), _) => p.clone(),
            (None, Some(p)) => p,
            (None, None) => fit_preprocessing(&config.data, data.train.as_ref())?,
        };
        preprocessing.save(&run_dir.join(files::PREPROCESSING))?;

        model.set_conv_backend(config.conv_backend());
        let vars = model.make_trainable()?;
        let opt = MomentumSgd::new(vars, sgd_config(config));
        let (format, version) = CheckpointState::new_format();
        let state = CheckpointState {
            format,
            version,
            epoch: 0,
            batch: 0,
            step: 0,
            rng: RngState {
                seed: config.seed,
                dropout_stream: 0,
                shuffle_epoch: 0,
            },
            partial: EpochPartial::default(),
            best: None,
            history: Vec::new(),
            train_examples: data.train.len(),
            data_fingerprint: Some(data.fingerprint()),
            preprocessing_digest: Some(preprocessing_digest(&preprocessing)),
            conv_ran: Some(config.conv_backend().name().to_string()),
            config: config_text,
            spec,
        };
        let run = self.assemble(
            config.clone(),
            data,
            run_dir,
            model,
            opt,
            preprocessing,
            state,
            None,
        )?;
        self.run(run)
    }

    /// Resumes the run in `run_dir` from its checkpoint, with `data` or,
    /// when `None`, the data at the config's `data.path`. On the CPU, with
    /// the same data, the result is bit-identical to an uninterrupted run.
    ///
    /// # Errors
    /// [`TrainError::BadCheckpoint`] when the checkpoint is missing or does
    /// not fit the data; as [`Trainer::train`] otherwise.
    pub fn resume(
        &mut self,
        run_dir: &Path,
        data: Option<&TrainData>,
    ) -> Result<RunSummary, TrainError> {
        self.resume_inner(run_dir, data, &ResumeChanges::default())
    }

    /// As [`Trainer::resume`], with the run's length changed to `epochs`:
    /// shorter, to end a run sooner, or longer, to continue a finished one.
    /// The learning rate follows the schedule of the new length (a
    /// `multi-step` schedule's milestones stay where they are; a `scaled`
    /// one moves its drops). The new length is recorded in the checkpoint
    /// and the run's config.toml. Without a change of length the result is
    /// that of [`Trainer::resume`].
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when the run is already past `epochs`;
    /// as [`Trainer::resume`] otherwise.
    pub fn resume_with_epochs(
        &mut self,
        run_dir: &Path,
        data: Option<&TrainData>,
        epochs: u64,
    ) -> Result<RunSummary, TrainError> {
        let changes = ResumeChanges {
            epochs: Some(epochs),
            ..ResumeChanges::default()
        };
        self.resume_with(run_dir, data, &changes)
    }

    /// As [`Trainer::resume`], with the changes a run may take on the way:
    /// its length ([`Trainer::resume_with_epochs`]) and how its CPU
    /// convolutions run (`precision` or the expert `conv`; the other is
    /// reset to its default). The backend decides speed and rounding, not
    /// the protocol: a run can move to a faster backend, or to another
    /// machine's, between two sessions. Its steps then differ from an
    /// uninterrupted run's by the backends' rounding (about 1e-5 relative
    /// between the f32 backends, 1e-3 to bf16), so the run is no longer
    /// bit-identical to one that never changed. A change is recorded in the
    /// checkpoint and config.toml, and said in the console and
    /// metrics.jsonl (`message`), with the step it took effect at.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when the run is already past `epochs`
    /// or both `precision` and `conv` are given; as [`Trainer::resume`]
    /// otherwise.
    pub fn resume_with(
        &mut self,
        run_dir: &Path,
        data: Option<&TrainData>,
        changes: &ResumeChanges,
    ) -> Result<RunSummary, TrainError> {
        self.resume_inner(run_dir, data, changes)
    }

    fn resume_inner(
        &mut self,
        run_dir: &Path,
        data: Option<&TrainData>,
        changes: &ResumeChanges,
    ) -> Result<RunSummary, TrainError> {
        let epochs = changes.epochs;
        // Said first: whatever its files say, the run is another process's
        // now (before its first checkpoint too). The lock itself is taken
        // below, once the run is known to be resumable.
        refuse_run_dir_in_use(run_dir)?;
        if !run_dir.is_dir() {
            let reason = if run_dir.exists() {
                "it is a file, not a run directory: resume takes the folder that `allcnn train --out` made (it holds checkpoint.safetensors)"
            } else {
                "no such folder: resume takes the folder that `allcnn train --out` made"
            };
            return Err(TrainError::RunDir {
                path: run_dir.to_path_buf(),
                reason: reason.into(),
            });
        }
        let ckpt_path = run_dir.join(files::CHECKPOINT);
        if !ckpt_path.is_file() && run_dir.join(crate::grid::GRID_REPORT).is_file() {
            return Err(TrainError::RunDir {
                path: run_dir.to_path_buf(),
                reason: "is a grid search's folder, not one run: run the same search again to go on, or resume one rate with `allcnn train --resume` on its lr-RATE folder".into(),
            });
        }
        if !ckpt_path.is_file() {
            let reason = if ckpt_path.exists() {
                "it is not a regular file (a folder?): move it away; a checkpoint is a file"
            } else {
                "not there, so there is nothing to resume: give the folder of a run that `allcnn train --out` started (it writes the checkpoint at each epoch's end)"
            };
            return Err(TrainError::BadCheckpoint {
                path: ckpt_path,
                reason: reason.into(),
            });
        }
        let mut ckpt = Checkpoint::read(&ckpt_path)?;
        let mut config =
            TrainConfig::from_toml(&ckpt.state.config, &ckpt_path.display().to_string())?;
        let new_length = epochs.filter(|&e| e != config.epochs);
        if let Some(epochs) = new_length {
            let done = ckpt.state.epoch + u64::from(ckpt.state.batch > 0);
            if epochs < done.max(1) {
                return Err(TrainError::InvalidConfig {
                    field: "epochs",
                    value: epochs.to_string(),
                    reason: format!(
                        "the run in {} has already started epoch {done}: resume with at least that many",
                        run_dir.display()
                    ),
                });
            }
            config.epochs = epochs;
            ckpt.state.config = config.to_toml();
        }
        // What the run last ran: recorded, or (older checkpoints) what its
        // config resolves to on this machine.
        let ran = ckpt
            .state
            .conv_ran
            .as_deref()
            .and_then(|name| ConvBackend::from_name(name).ok())
            .unwrap_or_else(|| config.conv_backend());
        let backend_change = changes.backend(&config, ran, ckpt.state.step)?;
        let config_changes = matches!(backend_change, Some((Some(_), _)));
        if let Some((Some(changed), _)) = &backend_change {
            config = changed.clone();
            ckpt.state.config = config.to_toml();
        }
        ckpt.state.conv_ran = Some(config.conv_backend().name().to_string());
        let patience_change = changes
            .dead_patience_steps
            .filter(|&p| p != config.dead_patience_steps)
            .map(|p| {
                let steps = |n: u64| {
                    if n == 0 {
                        "0 (off)".to_string()
                    } else {
                        format!("{n} steps")
                    }
                };
                let said = format!(
                    "the class-map watch's patience (dead_patience_steps) changes from {} to {} at step {}",
                    steps(config.dead_patience_steps),
                    steps(p),
                    ckpt.state.step
                );
                config.dead_patience_steps = p;
                ckpt.state.config = config.to_toml();
                said
            });
        config.validate_for(false)?;
        let finished = ckpt.state.batch == 0 && ckpt.state.epoch >= config.epochs;
        // A run stopped by its step budget is finished too: resuming it
        // trained one step more each time and replaced its final weights.
        let at_budget = config.max_steps.is_some_and(|m| ckpt.state.step >= m);
        if (finished || at_budget) && run_dir.join(files::FINAL).is_file() {
            let budget = config.max_steps.filter(|_| at_budget && !finished);
            return Ok(self.finished_summary(run_dir, &ckpt.state, budget));
        }
        let opened;
        // The data moved: their new place, recorded once they are checked.
        let moved = changes
            .data
            .as_ref()
            .filter(|&p| data.is_none() && config.data.path.as_ref() != Some(p));
        let (data, given) = match data {
            Some(d) => (d, "the data given".to_string()),
            None => {
                let path = moved.or(config.data.path.as_ref()).ok_or_else(|| {
                    TrainError::InvalidConfig {
                        field: "data.path",
                        value: "(none)".into(),
                        reason: "the run's config names no data; pass the data to resume".into(),
                    }
                })?;
                if moved.is_none() && !path.exists() {
                    return Err(TrainError::RunDir {
                        path: run_dir.to_path_buf(),
                        reason: format!(
                            "its data, {} (recorded in its config), are not there; if they moved, give their new place: `allcnn train --resume {} --data DIR`",
                            path.display(),
                            run_dir.display()
                        ),
                    });
                }
                opened = TrainData::open(path, &config.data, config.seed)?;
                (&opened, format!("the data at {}", path.display()))
            }
        };
        if data.train.len() != ckpt.state.train_examples {
            return Err(TrainError::BadCheckpoint {
                path: ckpt_path,
                reason: format!(
                    "the run trained on {} examples, {given} have {}: not the same data",
                    ckpt.state.train_examples,
                    data.train.len()
                ),
            });
        }
        if let Some(recorded) = &ckpt.state.data_fingerprint {
            let now = data.fingerprint();
            if *recorded != now {
                return Err(TrainError::BadCheckpoint {
                    path: ckpt_path,
                    reason: format!(
                        "the run trained on other data (fingerprint {recorded}; {given} have {now}, with the same example count): pass the run's own data set to resume"
                    ),
                });
            }
        }
        if let Some(path) = moved {
            config.data.path = Some(path.clone());
            ckpt.state.config = config.to_toml();
        }
        // The checkpoint is checked whole before anything in the run
        // directory changes or the preprocessing is fitted again (minutes).
        let mut model = AllCnn::from_tensors(
            ckpt.state.spec.clone(),
            ckpt.params,
            &ckpt_path.display().to_string(),
            &self.device,
        )?;
        model.set_conv_backend(config.conv_backend());
        let vars = model.make_trainable()?;
        let mut opt = MomentumSgd::new(vars, sgd_config(&config));
        opt.load_state(ckpt.momentum)?;
        let per_epoch =
            LoaderConfig::train(config.batch_size, config.seed, config.data.augmentation)
                .batches(data.train.len()) as u64;
        check_resumed(&ckpt.state, &config, per_epoch, &opt, &ckpt_path)?;
        let _lock = prepare_run_dir(run_dir, false, 0)?;
        let (preprocessing, notice) =
            self.resume_preprocessing(run_dir, &config, data, &ckpt.state)?;
        // Written once every check has passed: a resume that fails leaves
        // config.toml as it was (it said the refused length, or another
        // run's settings, while its checkpoint did not).
        if new_length.is_some() || config_changes || patience_change.is_some() || moved.is_some() {
            allcnn_models::write_atomic(
                &run_dir.join(files::CONFIG),
                ckpt.state.config.as_bytes(),
            )?;
        }
        // Lines past the checkpoint would be written again: drop them.
        MetricsLog::truncate_after(
            &run_dir.join(files::METRICS),
            ckpt.state.step,
            ckpt.state.epoch,
        )?;
        ckpt.state.preprocessing_digest = Some(preprocessing_digest(&preprocessing));
        let state = ckpt.state;
        let mut run = self.assemble(
            config,
            data,
            run_dir,
            model,
            opt,
            preprocessing,
            state,
            Some(ckpt_path.clone()),
        )?;
        run.notices.extend(notice);
        run.notices
            .extend(backend_change.map(|(_, said)| Notice::Message(said)));
        run.notices.extend(patience_change.map(Notice::Message));
        self.run(run)
    }

    /// The preprocessing a resumed run goes on with: its run directory's
    /// file, checked against the digest its checkpoint recorded, or, where
    /// the file is missing, fitted again from the training data (as the run
    /// did at its start) and saved, with a notice that says whether the
    /// refit equals the run's own.
    fn resume_preprocessing(
        &self,
        run_dir: &Path,
        config: &TrainConfig,
        data: &TrainData,
        state: &CheckpointState,
    ) -> Result<(Preprocessing, Option<Notice>), TrainError> {
        let path = run_dir.join(files::PREPROCESSING);
        let recorded = state.preprocessing_digest.as_deref();
        if path.exists() {
            let p = Preprocessing::load(&path).map_err(|e| TrainError::RunDir {
                path: run_dir.to_path_buf(),
                reason: format!(
                    "{e}; delete that file and resume: the run fits it again from its training data and checks the refit against the digest its checkpoint records"
                ),
            })?;
            let digest = preprocessing_digest(&p);
            if let Some(recorded) = recorded.filter(|r| *r != digest) {
                return Err(TrainError::RunDir {
                    path: path.clone(),
                    reason: format!(
                        "this preprocessing (digest {digest}) is not the one the run trained with (its checkpoint records {recorded}): put the run's own file back, or delete this one and resume to fit it again from the training data"
                    ),
                });
            }
            return Ok((p, None));
        }
        if self.console {
            let how = match &config.data.preprocessing_from {
                Some(from) => format!(
                    "reading the run's preprocessing again from {} (data.preprocessing_from)",
                    from.display()
                ),
                None => format!(
                    "fitting the run's preprocessing again from its {} training images",
                    data.train.len()
                ),
            };
            Console::new(1).on_message(&format!("{} is missing: {how}", path.display()));
        }
        let p = fit_preprocessing(&config.data, data.train.as_ref())?;
        let digest = preprocessing_digest(&p);
        // Whole or absent: a kill during the 38 MB write must not leave a
        // truncated file that the next resume would try to read.
        let partial = path.with_extension("safetensors.partial");
        p.save(&partial)?;
        std::fs::rename(&partial, &path).map_err(|cause| TrainError::Io {
            path: path.clone(),
            cause,
        })?;
        let notice = match recorded {
            Some(r) if r == digest => Notice::Message(format!(
                "{} was missing: fitted again from the training data, equal to the run's own to the bit (digest {digest}); the run goes on as if it had never been lost",
                path.display()
            )),
            Some(r) => Notice::Warning(format!(
                "{} was missing: fitted again from the training data, but the refit differs from the preprocessing the run trained with (digest {digest}, the run's {r}: another CPU or library rounds differently); the run goes on with the refit, so it is no longer bit-identical to an uninterrupted run",
                path.display()
            )),
            None => Notice::Warning(format!(
                "{} was missing: fitted again from the training data (digest {digest}); this run's checkpoint predates preprocessing digests, so the refit cannot be checked against the preprocessing the run trained with",
                path.display()
            )),
        };
        Ok((p, Some(notice)))
    }

    /// The summary of a run that has trained all its epochs, or reached its
    /// step budget `max_steps`, and written its final weights, resumed at
    /// the same length: nothing is trained, evaluated or written (a job
    /// that resumes a run until it is done ends with success), and the test
    /// report is the run's `eval.json`.
    fn finished_summary(
        &self,
        run_dir: &Path,
        state: &CheckpointState,
        max_steps: Option<u64>,
    ) -> RunSummary {
        let message = match max_steps {
            None => format!(
                "the run in {} is finished (epochs: {} of {}): nothing to do (to train it further, resume it with more epochs: `allcnn train --resume {} --epochs N`)",
                run_dir.display(),
                state.epoch,
                state.epoch,
                run_dir.display()
            ),
            Some(m) => format!(
                "the run in {} stopped at its step budget (max_steps = {m}, reached at step {}): nothing to do (to train further, start a new run from its weights: init_from = \"{}\")",
                run_dir.display(),
                state.step,
                run_dir.join(files::FINAL).display()
            ),
        };
        if self.console {
            Console::new(1).on_message(&message);
        }
        let test = std::fs::read(run_dir.join(files::EVAL))
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok());
        let best = run_dir.join(files::BEST);
        RunSummary {
            status: if max_steps.is_some() {
                RunStatus::StepBudget
            } else {
                RunStatus::Completed
            },
            run_dir: run_dir.to_path_buf(),
            epochs_done: state.epoch,
            steps: state.step,
            checkpoint: run_dir.join(files::CHECKPOINT),
            final_weights: Some(run_dir.join(files::FINAL)),
            best_weights: best.is_file().then_some(best),
            best: state.best.clone(),
            history: state.history.clone(),
            test,
            val: None,
            resume_hint: None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        &mut self,
        config: TrainConfig,
        data: &TrainData,
        run_dir: &Path,
        model: AllCnn,
        opt: MomentumSgd,
        preprocessing: Preprocessing,
        state: CheckpointState,
        last_checkpoint: Option<PathBuf>,
    ) -> Result<Run, TrainError> {
        let train_loader = DataLoader::builder(Arc::clone(&data.train))
            .preprocessing(preprocessing.clone())
            .config(LoaderConfig {
                workers: config.data.workers,
                ..LoaderConfig::train(config.batch_size, config.seed, config.data.augmentation)
            })
            .device(self.device.clone())
            .build()?;
        if train_loader.num_batches() == 0 {
            return Err(no_full_batch(&config, data.train.len()));
        }
        let make_eval = |d: &Option<Arc<dyn allcnn_data::Dataset>>| {
            d.as_ref()
                .map(|d| {
                    eval_loader(
                        Arc::clone(d),
                        &preprocessing,
                        config.eval_batch_size,
                        config.data.eval_augmentation,
                        config.data.workers,
                        &self.device,
                    )
                })
                .transpose()
        };
        let val_loader = make_eval(&data.val)?;
        let test_loader = make_eval(&data.test)?;
        let full_test_loader = make_eval(&data.test_full)?;
        let input_size = train_loader.image_shape().1;
        Ok(Run {
            config,
            run_dir: run_dir.to_path_buf(),
            model,
            opt,
            preprocessing,
            train_loader,
            val_loader,
            test_loader,
            full_test_loader,
            state,
            last_checkpoint,
            input_size,
            last_eval: None,
            notices: Vec::new(),
            class_names: data.train.class_names().to_vec(),
        })
    }

    fn emit(&mut self, sinks: &mut Sinks, f: impl Fn(&mut dyn Observer)) {
        f(&mut sinks.metrics);
        if let Some(c) = sinks.console.as_mut() {
            f(c);
        }
        for o in &mut self.observers {
            f(o.as_mut());
        }
    }

    /// The epochs from the run's state to the config's end (or a stop),
    /// then the final weights and evaluation.
    fn run(&mut self, mut run: Run) -> Result<RunSummary, TrainError> {
        let cfg = run.config.clone();
        let mut sinks = Sinks {
            metrics: MetricsLog::open(&run.run_dir.join(files::METRICS), cfg.log_every_steps)?,
            console: self.console.then(|| Console::new(cfg.log_every_steps)),
        };
        let info = RunInfo {
            run_dir: run.run_dir.clone(),
            model: run.state.spec.name.clone(),
            params: run.state.spec.param_count(),
            train_examples: run.train_loader.num_examples(),
            steps_per_epoch: run.train_loader.num_batches() as u64,
            epochs: cfg.epochs,
            start_epoch: run.state.epoch,
            start_step: run.state.step,
        };
        self.emit(&mut sinks, |o| o.on_start(&info));
        for notice in std::mem::take(&mut run.notices) {
            match &notice {
                Notice::Message(m) => self.emit(&mut sinks, |o| o.on_message(m)),
                Notice::Warning(w) => self.emit(&mut sinks, |o| o.on_warning(w)),
            }
        }

        let mut status = RunStatus::Completed;
        let mut dead = DeadWatch::default();
        while run.state.epoch < cfg.epochs {
            let t0 = Instant::now();
            let (seen, stop) = self.train_epoch(&cfg, &mut run, &mut sinks, &mut dead)?;
            if let Some(stop) = stop {
                status = stop;
                break;
            }
            self.end_epoch(&mut run, &mut sinks, t0, seen)?;
            if let Some(stop) = self
                .stop_requested()
                .filter(|_| run.state.epoch < cfg.epochs)
            {
                status = stop;
                break;
            }
            if cfg.max_steps.is_some_and(|m| run.state.step >= m) {
                status = RunStatus::StepBudget;
                break;
            }
        }
        self.finish(run, &mut sinks, status)
    }

    /// The batches of the current epoch from the run's position: returns
    /// the images trained on here and, if the run stops inside the epoch
    /// (interrupt, step budget), why (a checkpoint is written first).
    fn train_epoch(
        &mut self,
        cfg: &TrainConfig,
        run: &mut Run,
        sinks: &mut Sinks,
        dead: &mut DeadWatch,
    ) -> Result<(u64, Option<RunStatus>), TrainError> {
        let epoch = run.state.epoch;
        let t0 = Instant::now();
        let mut seen_here = 0u64;
        let batches = run.train_loader.batches(epoch);
        let steps_per_epoch = batches.len() as u64;
        let start_batch = run.state.batch as usize;
        let mut prefetch = (start_batch == 0).then(|| run.train_loader.epoch(epoch));
        run.state.rng.shuffle_epoch = epoch;
        for (b, indices) in batches.iter().enumerate().skip(start_batch) {
            let batch = match prefetch.as_mut() {
                Some(it) => it.next().ok_or_else(|| TrainError::DataMismatch {
                    reason: format!("the loader ended early in epoch {epoch} at batch {b}"),
                })??,
                None => run
                    .train_loader
                    .load_batch(epoch, indices)?
                    .to_device(&self.device)?,
            };
            let step = run.state.step;
            let lr = cfg.lr_at(epoch, step);
            let out = train_step(
                &run.model,
                &mut run.opt,
                &batch.images,
                &batch.labels,
                cfg.seed,
                step,
                lr,
            )?;
            if !out.updated {
                let msg = format!("loss {} at step {step}: stopping", out.loss);
                self.emit(sinks, |o| o.on_warning(&msg));
                return Err(TrainError::Diverged {
                    step,
                    epoch,
                    loss: out.loss,
                    lr,
                    last_checkpoint: run.last_checkpoint.clone(),
                });
            }
            let n = batch.indices.len() as u64;
            run.state.step += 1;
            run.state.batch = b as u64 + 1;
            run.state.rng.dropout_stream = run.state.step;
            let p = &mut run.state.partial;
            p.loss_sum += f64::from(out.loss) * n as f64;
            p.correct += out.correct;
            p.seen += n;
            p.dead += out.dead;
            p.observe_classes(&out.seen_classes, &out.silent_classes);
            seen_here += n;
            let event = StepEvent {
                epoch,
                step: run.state.step,
                batch: b as u64,
                batches: steps_per_epoch,
                loss: out.loss,
                accuracy: out.correct as f64 / n.max(1) as f64,
                lr,
                images_per_sec: seen_here as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            };
            self.emit(sinks, |o| o.on_step(&event));
            if let Some((since, steps, classes)) = dead.observe(
                step,
                mostly_dead(out.dead, n),
                (&out.seen_classes, &out.silent_classes),
                cfg.dead_patience_steps,
            ) {
                let names = &run.class_names;
                // Every class silent reads as every class map dead.
                let classes = if classes.len() >= names.len() {
                    Vec::new()
                } else {
                    classes
                };
                let err = TrainError::DeadClassMaps {
                    since,
                    steps,
                    epoch,
                    lr,
                    seed: cfg.seed,
                    classes: classes.iter().map(|&c| class_name(names, c)).collect(),
                };
                let msg = err.to_string();
                self.emit(sinks, |o| o.on_warning(&msg));
                return Err(err);
            }

            let stop = self.stop_requested();
            let budget = cfg.max_steps.is_some_and(|m| run.state.step >= m);
            let periodic = cfg.checkpoint_every_steps > 0
                && run.state.step.is_multiple_of(cfg.checkpoint_every_steps);
            let last_batch = b + 1 == batches.len();
            if (periodic || stop.is_some() || budget) && !last_batch {
                self.checkpoint(run)?;
            }
            if let Some(stop) = stop.filter(|_| !last_batch) {
                return Ok((seen_here, Some(stop)));
            }
            if budget && !last_batch {
                return Ok((seen_here, Some(RunStatus::StepBudget)));
            }
        }
        Ok((seen_here, None))
    }

    /// The end of an epoch: checkpoint, evaluate, record, checkpoint, plot.
    /// The first checkpoint (at the epoch's last batch, from which a resume
    /// evaluates again) keeps the epoch's training when the evaluation
    /// fails or the process dies during it.
    fn end_epoch(
        &mut self,
        run: &mut Run,
        sinks: &mut Sinks,
        t0: Instant,
        seen_here: u64,
    ) -> Result<(), TrainError> {
        let epoch = run.state.epoch;
        let train_secs = t0.elapsed().as_secs_f64();
        self.checkpoint(run)?;
        let evaluated = evaluate_splits(run, &mut |split, done, total| {
            self.emit(sinks, |o| o.on_eval(split, done, total));
        });
        let (val, test) = match evaluated {
            Ok(r) => r,
            Err(e) => {
                let msg = format!(
                    "evaluating epoch {} failed; its training is saved in {}: fix the data, then resume with `allcnn train --resume {}`",
                    epoch + 1,
                    run.run_dir.join(files::CHECKPOINT).display(),
                    run.run_dir.display()
                );
                self.emit(sinks, |o| o.on_warning(&msg));
                return Err(e);
            }
        };
        let p = &run.state.partial;
        let seen = p.seen.max(1) as f64;
        let silent_classes: Vec<String> = p
            .silent_classes()
            .into_iter()
            .map(|c| class_name(&run.class_names, c))
            .collect();
        let record = EpochRecord {
            epoch,
            step: run.state.step,
            lr: run.opt.learning_rate(),
            train_loss: p.loss_sum / seen,
            train_accuracy: p.correct as f64 / seen,
            dead_fraction: p.dead as f64 / seen,
            silent_classes,
            val_accuracy: val.as_ref().map(|r| r.top1),
            val_loss: val.as_ref().map(|r| r.loss),
            test_accuracy: test.as_ref().map(|r| r.top1),
            test_loss: test.as_ref().map(|r| r.loss),
            images_per_sec: seen_here as f64 / train_secs.max(1e-9),
            seconds: t0.elapsed().as_secs_f64(),
        };
        if let Some(w) = stuck_warning(&record, run.model.classes()) {
            self.emit(sinks, |o| o.on_warning(&w));
        }
        if let Some(w) = silent_warning(&record, run.model.classes()) {
            self.emit(sinks, |o| o.on_warning(&w));
        }
        let candidate = match (&record.val_accuracy, &record.test_accuracy) {
            (Some(v), _) => Some(("val_accuracy", *v)),
            (None, Some(t)) => Some(("test_accuracy", *t)),
            _ => None,
        };
        if let Some((metric, value)) = candidate {
            if run.state.best.as_ref().is_none_or(|b| value > b.value) {
                run.state.best = Some(BestRecord {
                    epoch,
                    metric: metric.to_string(),
                    value,
                });
                self.save_weights(run, &run.run_dir.join(files::BEST), Some(&record))?;
            }
        }
        run.state.history.push(record.clone());
        run.state.epoch += 1;
        run.state.batch = 0;
        run.state.partial = EpochPartial::default();
        // The epoch's line first: a kill between the two leaves a line past
        // the checkpoint, which the resume removes and writes again, never a
        // checkpointed epoch without its line.
        self.emit(sinks, |o| o.on_epoch(&record));
        self.checkpoint(run)?;
        write_figures(run)
    }

    /// After the last epoch (or a stop): the final weights and evaluation,
    /// or the resume hint of an interrupted run.
    fn finish(
        &mut self,
        mut run: Run,
        sinks: &mut Sinks,
        status: RunStatus,
    ) -> Result<RunSummary, TrainError> {
        if matches!(status, RunStatus::Interrupted | RunStatus::TimeLimit) {
            let why = if status == RunStatus::TimeLimit {
                "stopped at the time limit"
            } else {
                "interrupted"
            };
            let hint = format!(
                "{why} after step {} (epoch {}); checkpoint written to {}. Resume with: allcnn train --resume {}",
                run.state.step,
                run.state.epoch + 1,
                run.run_dir.join(files::CHECKPOINT).display(),
                run.run_dir.display()
            );
            self.emit(sinks, |o| o.on_message(&hint));
            return Ok(self.summary(&run, status, None, None, Some(hint)));
        }
        let final_path = run.run_dir.join(files::FINAL);
        self.save_weights(&run, &final_path, run.state.history.last())?;
        let (val, mut test) = evaluate_splits(&mut run, &mut |split, done, total| {
            self.emit(sinks, |o| o.on_eval(split, done, total));
        })?;
        // The epochs were scored on a sample of the test split: the final
        // weights are scored on all of it.
        if let Some(l) = &run.full_test_loader {
            let total = l.num_examples() as u64;
            test = Some(evaluate_with_progress(&run.model, l, &mut |done| {
                self.emit(sinks, |o| o.on_eval("test (all images)", done, total));
            })?);
        }
        if let Some(t) = &test {
            let json = serde_json::to_string_pretty(t).expect("report serialises");
            allcnn_models::write_atomic(&run.run_dir.join(files::EVAL), json.as_bytes())?;
        }
        let how = match status {
            RunStatus::StepBudget => "run stopped at max_steps",
            _ => "run finished",
        };
        let msg = format!(
            "{how} after {}: final weights {}{}",
            crate::observer::count(run.state.step, "step"),
            final_path.display(),
            test.as_ref()
                .map(|t| format!(
                    ", test top-1 {:.2}% (loss {:.4}) on {}",
                    100.0 * t.top1,
                    t.loss,
                    crate::observer::count(t.examples, "test image")
                ))
                .unwrap_or_default()
        );
        self.emit(sinks, |o| o.on_message(&msg));
        let mut s = self.summary(&run, status, test, val, None);
        s.final_weights = Some(final_path);
        Ok(s)
    }

    fn summary(
        &self,
        run: &Run,
        status: RunStatus,
        test: Option<EvalReport>,
        val: Option<EvalReport>,
        resume_hint: Option<String>,
    ) -> RunSummary {
        let best = run.run_dir.join(files::BEST);
        RunSummary {
            status,
            run_dir: run.run_dir.clone(),
            epochs_done: run.state.epoch,
            steps: run.state.step,
            checkpoint: run.run_dir.join(files::CHECKPOINT),
            final_weights: None,
            best_weights: best.is_file().then_some(best),
            best: run.state.best.clone(),
            history: run.state.history.clone(),
            test,
            val,
            resume_hint,
        }
    }

    fn checkpoint(&mut self, run: &mut Run) -> Result<(), TrainError> {
        let path = run.run_dir.join(files::CHECKPOINT);
        Checkpoint::write(&path, &run.state, &run.model.parameters(), &run.opt.state())?;
        run.last_checkpoint = Some(path);
        Ok(())
    }

    fn save_weights(
        &self,
        run: &Run,
        path: &Path,
        record: Option<&EpochRecord>,
    ) -> Result<(), TrainError> {
        let (json, attachments) = run.preprocessing.to_parts();
        let mut meta = WeightsMeta::default();
        // Class names, so `predict` can print them (read by allcnn-cli).
        let names = run.train_loader.dataset().class_names();
        if !names.is_empty() {
            meta.set_class_names(names);
        }
        meta.set_training(&TrainingRecord {
            step: Some(run.state.step),
            epoch: record.map(|r| r.epoch + 1),
            val_accuracy: record.and_then(|r| r.val_accuracy),
            test_accuracy: record.and_then(|r| r.test_accuracy),
        });
        meta.preprocessing = Some(json);
        meta.input_size = Some(run.input_size);
        run.model.save(path, &meta, &attachments)?;
        Ok(())
    }
}

/// Where a run's events go besides the builder's observers: the metrics
/// file, and the console when enabled.
struct Sinks {
    metrics: MetricsLog,
    console: Option<Console>,
}

/// `metrics.csv` and the learning-curve SVG redrawn from the run's history
/// (a log loss axis once the loss spans more than a decade).
fn write_figures(run: &Run) -> Result<(), TrainError> {
    let history = &run.state.history;
    let csv = metrics_csv(history);
    allcnn_models::write_atomic(&run.run_dir.join(files::CSV), csv.as_bytes())?;
    let (lo, hi) = history
        .iter()
        .flat_map(|r| [Some(r.train_loss), r.test_loss])
        .flatten()
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let title = format!("{} ({})", run.state.spec.name, run.run_dir.display());
    let plot = learning_curve_svg(history, &title, hi > 10.0 * lo)?;
    allcnn_models::write_atomic(&run.run_dir.join(files::PLOT), plot.as_bytes())?;
    Ok(())
}

/// Evaluates the model on the validation and test splits, reusing the
/// previous result when no step has run since; `progress(split, done,
/// total)` follows each batch.
fn evaluate_splits(
    run: &mut Run,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<(Option<EvalReport>, Option<EvalReport>), TrainError> {
    if let Some((step, val, test)) = &run.last_eval {
        if *step == run.state.step {
            return Ok((val.clone(), test.clone()));
        }
    }
    let model = &run.model;
    let mut eval = |l: &Option<DataLoader>, split: &str| {
        l.as_ref()
            .map(|l| {
                let total = l.num_examples() as u64;
                evaluate_with_progress(model, l, &mut |done| progress(split, done, total))
            })
            .transpose()
    };
    let val = eval(&run.val_loader, "validation")?;
    let test = eval(&run.test_loader, "test")?;
    run.last_eval = Some((run.state.step, val.clone(), test.clone()));
    Ok((val, test))
}

/// The network a fresh run starts from: `config.init_from`'s weights when
/// set (their architecture must be `spec`), a seeded `config.init` otherwise.
fn initial_model(
    config: &TrainConfig,
    spec: &allcnn_models::ArchSpec,
    device: &Device,
) -> Result<AllCnn, TrainError> {
    let Some(path) = &config.init_from else {
        return Ok(AllCnn::init(
            spec.clone(),
            config.init,
            config.seed,
            device,
        )?);
    };
    let what = "the weights a run starts from: a run's final.safetensors or best.safetensors, or an export";
    if !path.is_file() {
        let reason = if path.is_dir() {
            format!("is a folder; give a file ({what})")
        } else {
            format!("no such file ({what})")
        };
        return Err(TrainError::InvalidConfig {
            field: "init_from",
            value: path.display().to_string(),
            reason,
        });
    }
    let file = WeightsFile::load(path, device).map_err(|e| match e {
        // A checkpoint records its architecture in its own state, not as
        // weights metadata: "pass the model name" cannot be done here.
        allcnn_models::ModelError::NotSelfDescribing { .. } => TrainError::InvalidConfig {
            field: "init_from",
            value: path.display().to_string(),
            reason: format!(
                "does not describe its architecture (a training checkpoint, or weights exported without metadata); give {what}"
            ),
        },
        e => e.into(),
    })?;
    if file.model.spec() != spec {
        return Err(TrainError::InvalidConfig {
            field: "init_from",
            value: path.display().to_string(),
            reason: format!(
                "the file holds `{}` with {} classes, but this run trains `{}` with {} classes",
                file.model.spec().name,
                file.model.classes(),
                spec.name,
                spec.classes().unwrap_or(0)
            ),
        });
    }
    Ok(file.model)
}

fn sgd_config(c: &TrainConfig) -> SgdConfig {
    SgdConfig {
        lr: c.lr,
        momentum: c.momentum,
        weight_decay: c.weight_decay,
    }
}

/// Fails where another process is training in `dir` (it holds the run
/// directory's lock): a caller can say so before it opens the data, which
/// [`Trainer::train`] and [`Trainer::resume`] check too.
///
/// # Errors
/// [`TrainError::RunDir`] naming the folder.
pub fn refuse_run_dir_in_use(dir: &Path) -> Result<(), TrainError> {
    if lock_is_held(dir) {
        return Err(TrainError::RunDir {
            path: dir.to_path_buf(),
            reason: "another allcnn process is training in it (its lock is held); wait for it to finish, or choose another directory".into(),
        });
    }
    Ok(())
}

/// Whether another process holds the run directory's lock (a run in
/// progress there).
fn lock_is_held(dir: &Path) -> bool {
    let Ok(lock) = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(files::LOCK))
    else {
        return false;
    };
    matches!(lock.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

/// The error of a batch larger than the `len` training examples.
fn no_full_batch(config: &TrainConfig, len: usize) -> TrainError {
    TrainError::InvalidConfig {
        field: "batch_size",
        value: config.batch_size.to_string(),
        reason: format!("larger than the training split ({len} examples): no full batch"),
    }
}

/// Creates `dir` and checks that it can hold the run: writable, with room
/// for `probe_bytes`, and (when `fresh`) not already holding a run.
/// Claims `dir` for this process and checks it can be written.
///
/// The claim is an exclusive lock on `dir/.allcnn-lock`, held until the
/// returned file is dropped: a second process training or resuming in the
/// same directory fails at once instead of mixing its files with ours. The
/// lock file stays behind as the mark of a run directory. A fresh run takes
/// an empty (or new) directory, or one of ours that never reached its first
/// checkpoint, whose files it clears; anything else is refused, so no file
/// of the user's is ever overwritten.
fn prepare_run_dir(
    dir: &Path,
    fresh: bool,
    probe_bytes: usize,
) -> Result<std::fs::File, TrainError> {
    let err = |reason: String| TrainError::RunDir {
        path: dir.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create it: {e}")))?;
    let lock_path = dir.join(files::LOCK);
    let ours = lock_path.is_file();
    if fresh {
        if dir.join(files::CHECKPOINT).exists() {
            return Err(err(format!(
                "it already holds a run ({}); resume it with `allcnn train --resume {}` or choose another directory",
                files::CHECKPOINT,
                dir.display()
            )));
        }
        if !ours {
            let list = std::fs::read_dir(dir).map_err(|e| err(format!("cannot list it: {e}")))?;
            let mut names: Vec<String> = list
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if !names.is_empty() {
                names.sort();
                names.truncate(3);
                return Err(err(format!(
                    "it is not empty and holds no allcnn run (it has {}{}); a fresh run writes only into an empty or new directory, so that none of your files is overwritten: choose another --out",
                    names.join(", "),
                    if names.len() == 3 { ", ..." } else { "" }
                )));
            }
        }
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| err(format!("cannot create {}: {e}", files::LOCK)))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(err(
                "another allcnn process is training in it (its lock is held); wait for it to finish, or choose another directory".into(),
            ))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(err(format!("cannot lock {}: {e}", files::LOCK)))
        }
    }
    // Temporary files of an earlier process killed mid-write (`NAME.tmpPID`
    // of `write_atomic`); with the lock held no other writer is here.
    if let Ok(list) = std::fs::read_dir(dir) {
        for entry in list.flatten() {
            let file = entry.file_name();
            let file = file.to_string_lossy();
            let stale = files::ALL.iter().any(|name| {
                file.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(".tmp"))
                    .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
            });
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    if fresh && ours {
        // A start of ours that stopped before its first checkpoint: its
        // files would mix with this run's (metrics.jsonl is appended to).
        for name in files::ALL {
            match std::fs::remove_file(dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(format!("cannot clear the earlier start's {name}: {e}"))),
            }
        }
    }
    let probe = dir.join(".allcnn-write-test");
    let result = (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&probe)?;
        let chunk = vec![0u8; 1 << 16];
        let mut left = probe_bytes.max(1);
        while left > 0 {
            let n = left.min(chunk.len());
            f.write_all(&chunk[..n])?;
            left -= n;
        }
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&probe);
    result.map_err(|e| {
        err(format!(
            "cannot write a {probe_bytes}-byte test file (unwritable or full disk?): {e}"
        ))
    })?;
    Ok(lock)
}

/// Trains `config` on `data` into `run_dir` with a default [`Trainer`]
/// (CPU, console progress).
///
/// # Errors
/// As [`Trainer::train`].
pub fn train(
    config: &TrainConfig,
    data: &TrainData,
    run_dir: &Path,
) -> Result<RunSummary, TrainError> {
    Trainer::default().train(config, data, run_dir)
}

/// Resumes the run in `run_dir` with a default [`Trainer`], reopening the
/// data named by its config.
///
/// # Errors
/// As [`Trainer::resume`].
pub fn resume(run_dir: &Path) -> Result<RunSummary, TrainError> {
    Trainer::default().resume(run_dir, None)
}

/// The config of the run in `run_dir`.
///
/// # Errors
/// [`TrainError::Io`] or [`TrainError::ConfigParse`] naming the file.
pub fn read_run_config(run_dir: &Path) -> Result<TrainConfig, TrainError> {
    TrainConfig::from_file(&run_dir.join(files::CONFIG))
}

/// Refuses a checkpoint whose counters cannot come from this run (epoch past
/// the end, batch past the epoch, a step count that does not add up) or that
/// lacks a momentum buffer it must have (D18 of issue 15): resuming from it
/// would train on silently. (Non-finite parameters are refused when the
/// model is built.)
fn check_resumed(
    s: &CheckpointState,
    config: &TrainConfig,
    per_epoch: u64,
    opt: &MomentumSgd,
    path: &Path,
) -> Result<(), TrainError> {
    let bad = |reason: String| TrainError::BadCheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    let epochs = config.epochs;
    if s.epoch > epochs || (s.epoch == epochs && s.batch != 0) {
        return Err(bad(format!(
            "it is at epoch {} batch {}, past the run's {epochs} epochs",
            s.epoch + 1,
            s.batch
        )));
    }
    // (batch == per_epoch: the epoch is trained, its evaluation pending.)
    if s.batch > per_epoch {
        return Err(bad(format!(
            "it is at batch {} of an epoch of {per_epoch} batches",
            s.batch
        )));
    }
    if s.epoch
        .checked_mul(per_epoch)
        .and_then(|x| x.checked_add(s.batch))
        != Some(s.step)
    {
        return Err(bad(format!(
            "its step {} does not match epoch {} batch {} at {per_epoch} batches per epoch",
            s.step, s.epoch, s.batch
        )));
    }
    if s.step > 0 && config.momentum > 0.0 {
        if let Some(name) = opt.missing_state().first() {
            return Err(bad(format!(
                "it has no momentum buffer for `{name}` after {} steps",
                s.step
            )));
        }
    }
    Ok(())
}

/// Where a run whose class maps all died is moved before a retry:
/// `OUT.dead-seed-S` beside `OUT` (also for `out` given as `run/`), or
/// `OUT.dead-seed-S.K` for the first `K` that is free.
pub fn dead_run_dir(out: &Path, seed: u64) -> PathBuf {
    let base = first_dead_run_dir(out, seed);
    let mut candidate = base.clone();
    let mut k = 1;
    while candidate.exists() {
        let mut name = base.as_os_str().to_owned();
        name.push(format!(".{k}"));
        candidate = PathBuf::from(name);
        k += 1;
    }
    candidate
}

/// `OUT.dead-seed-S` beside `OUT`, whether or not it exists.
pub(crate) fn first_dead_run_dir(out: &Path, seed: u64) -> PathBuf {
    let name = out
        .file_name()
        .map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned());
    out.with_file_name(format!("{name}.dead-seed-{seed}"))
}
