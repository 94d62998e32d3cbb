//! The error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong configuring, running, resuming or evaluating
/// a training run. Every variant names the file, key, step or value at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A preset name that is not shipped with the crate.
    #[error("unknown preset `{name}`; known presets: {known}")]
    UnknownPreset {
        /// The name asked for.
        name: String,
        /// Comma-separated preset names.
        known: String,
    },
    /// A configuration file or text could not be parsed.
    #[error("{source_name}: cannot parse the training config: {reason}")]
    ConfigParse {
        /// The file or preset the text came from.
        source_name: String,
        /// The parser's message.
        reason: String,
    },
    /// A `key=value` override is malformed or names no field.
    #[error("config override `{item}`: {reason}")]
    BadOverride {
        /// The override as given.
        item: String,
        /// What is wrong.
        reason: String,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("config field `{field}` = {value}: {reason}")]
    InvalidConfig {
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The run directory cannot be created or written (checked before
    /// training starts).
    #[error("run directory {}: {reason}", path.display())]
    RunDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file of the run could not be read or written.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// A checkpoint is missing, truncated or inconsistent with the run.
    #[error("checkpoint {}: {reason}", path.display())]
    BadCheckpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The loss became NaN or infinite: the run stopped instead of training
    /// on garbage.
    #[error(
        "the loss became {loss} at step {step} (epoch {epoch_1}, lr {lr}); training stopped. {}",
        match last_checkpoint {
            Some(p) => format!("Last good checkpoint: {} (lower the learning rate and resume from a fresh run, or inspect it)", p.display()),
            None => "No checkpoint had been written yet; lower the learning rate and start again".to_string(),
        },
        epoch_1 = epoch + 1
    )]
    Diverged {
        /// The global step (0-based) whose loss was not finite.
        step: u64,
        /// The epoch (0-based).
        epoch: u64,
        /// The loss value.
        loss: f32,
        /// The learning rate in use.
        lr: f64,
        /// The most recent checkpoint, if any.
        last_checkpoint: Option<PathBuf>,
    },
    /// Class maps stayed dead for `steps` consecutive steps: every one
    /// (all logits 0 for at least 95% of the examples of each step: the run
    /// cannot learn again), or some (`classes`: their logit 0 for every
    /// example of each step: no gradient reaches those maps, and only a
    /// change in the layers below can bring them back).
    #[error("{}", dead_maps_message(classes, *since, *steps, *epoch, *lr, *seed))]
    DeadClassMaps {
        /// The first step of the dead stretch (0-based).
        since: u64,
        /// The length of the stretch (`dead_patience_steps`).
        steps: u64,
        /// The epoch (0-based).
        epoch: u64,
        /// The learning rate in use.
        lr: f64,
        /// The run's seed.
        seed: u64,
        /// The dead class maps by class name (or index) when only some
        /// died; empty when every class map is dead.
        classes: Vec<String>,
    },
    /// A figure could not be drawn.
    #[error("cannot draw the {what}: {reason}")]
    Plot {
        /// The figure.
        what: String,
        /// What went wrong.
        reason: String,
    },
    /// An optimiser was given tensors that do not match its parameters.
    #[error("optimizer state: {reason}")]
    OptimizerState {
        /// What is wrong.
        reason: String,
    },
    /// The data do not fit the model or the config.
    #[error("data: {reason}")]
    DataMismatch {
        /// What is wrong.
        reason: String,
    },
    /// A run cannot be exported as a Hub folder (`export_hub`): no such
    /// weights, never evaluated, or an output folder that is not empty.
    #[error("cannot export {}: {reason}", path.display())]
    Export {
        /// The run directory, weights file or output folder at fault.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// An experiment name that [`crate::reproduce()`] does not know.
    #[error("unknown experiment `{name}`; known experiments: {known}")]
    UnknownExperiment {
        /// The name asked for.
        name: String,
        /// Comma-separated experiment names.
        known: String,
    },
    /// [`crate::reproduce()`] cannot go on: a model that is not a row of the
    /// experiment, a run directory that holds a run with other settings,
    /// missing data, an output folder that cannot be written.
    #[error("reproduce {experiment}: {}: {reason}", path.display())]
    Reproduce {
        /// The experiment's name (`table3`, ...).
        experiment: String,
        /// The folder or file at fault.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A model of [`crate::reproduce()`] failed to train; the report records
    /// it and the rows before it.
    #[error("reproduce: model `{model}` (run directory {}): {error}", run_dir.display())]
    ReproduceModel {
        /// The model's registry name.
        model: String,
        /// Its run directory.
        run_dir: PathBuf,
        /// What went wrong.
        error: Box<TrainError>,
    },
    /// An error of the model crate (boxed: it is large).
    #[error(transparent)]
    Model(Box<allcnn_models::ModelError>),
    /// An image of the data that cannot be decoded, found when the data
    /// are opened.
    #[error("{error}; remove or replace the file, or set data.skip_bad_images=true to leave out the images that cannot be read")]
    BadImage {
        /// The data crate's error, naming the file.
        error: Box<allcnn_data::DataError>,
    },
    /// An error of the data crate (boxed: it is large).
    #[error(transparent)]
    Data(Box<allcnn_data::DataError>),
    /// A tensor operation failed.
    #[error("{context}: {cause}")]
    Candle {
        /// What was being done.
        context: String,
        /// The underlying error.
        cause: candle_core::Error,
    },
}

impl From<allcnn_models::ModelError> for TrainError {
    fn from(e: allcnn_models::ModelError) -> Self {
        TrainError::Model(Box::new(e))
    }
}

impl From<allcnn_data::DataError> for TrainError {
    fn from(e: allcnn_data::DataError) -> Self {
        TrainError::Data(Box::new(e))
    }
}

impl TrainError {
    /// `e`, with the config switch that skips undecodable images where it
    /// is one (for errors opening the data).
    pub(crate) fn opening_data(e: allcnn_data::DataError) -> Self {
        match e {
            allcnn_data::DataError::BadImage { .. } => TrainError::BadImage { error: Box::new(e) },
            e => e.into(),
        }
    }
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |cause| TrainError::Io { path, cause }
    }
}

/// Adds context to candle results.
pub(crate) trait CandleContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, TrainError>;
}

impl<T> CandleContext<T> for candle_core::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, TrainError> {
        self.map_err(|cause| TrainError::Candle {
            context: what(),
            cause,
        })
    }
}

/// The text of [`TrainError::DeadClassMaps`].
fn dead_maps_message(
    classes: &[String],
    since: u64,
    steps: u64,
    epoch: u64,
    lr: f64,
    seed: u64,
) -> String {
    let what = if classes.is_empty() {
        format!(
            "every class map is dead since step {since} (all logits 0 for at least 95% of the \
             examples of each of {steps} consecutive steps, epoch {}, lr {lr:.3e}): no gradient reaches \
             the weights, so this run cannot recover",
            epoch + 1
        )
    } else {
        let (verb, pronoun, what) = if classes.len() == 1 {
            ("is", "it", "that class")
        } else {
            ("are", "them", "those classes")
        };
        format!(
            "{} {verb} dead since step {since} (the logit 0 for every example of each \
             of {steps} consecutive steps, epoch {}, lr {lr:.3e}): no gradient reaches {pronoun}, \
             so this run cannot learn {what} unless the layers below bring {pronoun} back",
            crate::trainer::dead_maps_subject(classes),
            epoch + 1,
        )
    };
    format!(
        "{what}. Start again with another seed (e.g. seed={}), or let `allcnn train --retries N` \
         do it (without translations most seeds of the paper's protocol lose a map in their \
         first epochs for good: docs/training.md, \"The fragile start\"); where a silent map \
         can come back (with translations, or memorising a few images), give it longer with \
         dead_patience_steps (0: never stop)",
        seed + 1
    )
}
