//! The error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong building, running, loading or saving a model.
///
/// Every variant names the model, tensor, layer or file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The architecture name is not in the registry.
    #[error("unknown model `{name}`; known models: {known}")]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// Comma-separated registered names.
        known: String,
    },
    /// The convolution backend name is not one of [`crate::ConvBackend::ALL`].
    #[error("unknown convolution backend `{name}`; known backends: {known}")]
    UnknownConvBackend {
        /// The name asked for.
        name: String,
        /// Comma-separated backend names.
        known: String,
    },
    /// The precision name is not one of [`crate::Precision::ALL`].
    #[error("unknown precision `{name}`; known precisions: {known}")]
    UnknownPrecision {
        /// The name asked for.
        name: String,
        /// Comma-separated precision names.
        known: String,
    },
    /// The architecture description is inconsistent.
    #[error("invalid architecture `{name}`: {reason}")]
    InvalidSpec {
        /// The architecture's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The input is too small for the network.
    #[error("an input of {}x{} pixels is too small for `{name}`: {layer} would leave an empty map", input.0, input.1)]
    InputTooSmall {
        /// The architecture's name.
        name: String,
        /// The input's (height, width).
        input: (usize, usize),
        /// The first layer that would leave no output.
        layer: String,
    },
    /// The input tensor does not have the shape the network takes.
    #[error("`{name}` takes input [N, {channels}, H, W]; got shape {got:?}")]
    BadInput {
        /// The architecture's name.
        name: String,
        /// Expected channel count.
        channels: usize,
        /// The shape given.
        got: Vec<usize>,
    },
    /// A layer name could not be parsed or does not exist in this network.
    #[error("no layer `{name}`: layer names are conv1..convN (after the ReLU) and pool1..poolM")]
    BadLayerName {
        /// The name asked for.
        name: String,
    },
    /// A layer name is well formed but the network has no such layer.
    #[error("`{model}` has no layer `{layer}` (it has {available})")]
    NoSuchLayer {
        /// The architecture's name.
        model: String,
        /// The layer asked for.
        layer: String,
        /// The layers the network has, e.g. `conv1..conv9, pool1..pool2`.
        available: String,
    },
    /// A parameter tensor is missing from a weights file or map.
    #[error("{source_name}: tensor `{tensor}` (shape {expected:?}) is missing")]
    MissingTensor {
        /// The file or map the weights came from.
        source_name: String,
        /// The tensor's name.
        tensor: String,
        /// The shape the architecture needs.
        expected: Vec<usize>,
    },
    /// A weights file or map holds a tensor the architecture has no place for.
    #[error("{source_name}: unexpected tensor `{tensor}` (shape {shape:?}): `{model}` has no such parameter")]
    UnexpectedTensor {
        /// The file or map the weights came from.
        source_name: String,
        /// The tensor's name.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The architecture's name.
        model: String,
    },
    /// A parameter tensor has the wrong shape.
    #[error(
        "{source_name}: tensor `{tensor}` has shape {got:?}, but `{model}` needs {expected:?}"
    )]
    ShapeMismatch {
        /// The file or map the weights came from.
        source_name: String,
        /// The tensor's name.
        tensor: String,
        /// The shape the architecture needs.
        expected: Vec<usize>,
        /// The shape found.
        got: Vec<usize>,
        /// The architecture's name.
        model: String,
    },
    /// A parameter tensor of the right shape that cannot be used: not
    /// floating point, or holding NaN or infinite values.
    #[error("{source_name}: tensor `{tensor}`: {reason}")]
    BadTensor {
        /// Where the tensors came from (a file path).
        source_name: String,
        /// The tensor's name.
        tensor: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The file could not be read or written.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error (in the message, so not also a `source()`:
        /// it would be printed twice).
        cause: std::io::Error,
    },
    /// The file is not a valid safetensors file (truncated, or another format).
    #[error("{} is not a valid safetensors file ({reason}); is it truncated or another format?", path.display())]
    NotSafetensors {
        /// The file at fault.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The weights file does not say which architecture it holds.
    #[error("{} does not describe its architecture (no `{key}` metadata); name its architecture and class count", path.display())]
    NotSelfDescribing {
        /// The file at fault.
        path: PathBuf,
        /// The metadata key that is missing.
        key: String,
    },
    /// A metadata entry of a weights file could not be parsed.
    #[error("{}: metadata `{key}` = {value:?} is invalid: {reason}", path.display())]
    BadMetadata {
        /// The file at fault.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// Its value.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// Training labels that do not fit the batch or the network's classes.
    #[error("labels for `{name}`: {reason}")]
    BadLabels {
        /// The model.
        name: String,
        /// What does not fit.
        reason: String,
    },
    /// An error from candle, with what was being done.
    #[error("{context}: {cause}")]
    Candle {
        /// What the crate was doing.
        context: String,
        /// The underlying error (in the message, so not also a `source()`:
        /// it would be printed twice).
        cause: candle_core::Error,
    },
}

/// Attaches a context string to candle errors.
pub(crate) trait CandleContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, ModelError>;
}

impl<T> CandleContext<T> for candle_core::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, ModelError> {
        self.map_err(|cause| ModelError::Candle {
            context: what(),
            cause,
        })
    }
}
