//! The error type of this crate.

use std::path::PathBuf;

use allcnn_models::ModelError;

/// Everything that can go wrong computing, parsing or rendering an
/// attribution. Every variant names what is at fault and, where there is a
/// finite set of valid choices, lists them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VizError {
    /// An error from the model (bad input shape, unknown layer, ...).
    #[error(transparent)]
    Model(Box<ModelError>),
    /// A target string could not be parsed.
    #[error("bad target `{text}`: {reason}; valid targets: class:K, labels, predicted, unit:LAYER:CHANNEL:Y:X, strongest:LAYER:CHANNEL")]
    BadTarget {
        /// The string given.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A method name could not be parsed.
    #[error("unknown method `{name}`; valid methods: {}", crate::methods::METHODS.map(|m| m.name).join(", "))]
    BadMethod {
        /// The name given.
        name: String,
    },
    /// A class index is not below the model's class count.
    #[error("class {class} is out of range: `{model}` has classes 0..{classes}")]
    ClassOutOfRange {
        /// The architecture's name.
        model: String,
        /// The class asked for.
        class: u32,
        /// The model's class count.
        classes: usize,
    },
    /// A per-image target does not have one entry per image.
    #[error("{what} has {got} entries but the input has {images} images")]
    CountMismatch {
        /// What was counted (`labels`, `per-image classes`, `units`).
        what: String,
        /// Its length.
        got: usize,
        /// The batch size.
        images: usize,
    },
    /// A target needs labels but none were given.
    #[error("target `labels` needs labels for the input (a `labels` tensor [N] beside `input`)")]
    MissingLabels,
    /// The layer exists only as a name the network does not have.
    #[error("`{model}` has no layer `{layer}`; its layers are {available}")]
    NoSuchLayer {
        /// The architecture's name.
        model: String,
        /// The layer asked for.
        layer: String,
        /// The layers it has with their maps, e.g. `conv1 [96, 32, 32], ...`.
        available: String,
    },
    /// A channel index is beyond the layer's channels.
    #[error("channel {channel} is out of range: {layer} of `{model}` has channels 0..{channels}")]
    ChannelOutOfRange {
        /// The architecture's name.
        model: String,
        /// The layer.
        layer: String,
        /// The channel asked for.
        channel: usize,
        /// The layer's channel count.
        channels: usize,
    },
    /// A spatial position is outside the layer's map.
    #[error("position (y {y}, x {x}) is out of range: {layer} of `{model}` has a {height}x{width} map for this input (y in 0..{height}, x in 0..{width})")]
    PositionOutOfRange {
        /// The architecture's name.
        model: String,
        /// The layer.
        layer: String,
        /// The row asked for.
        y: usize,
        /// The column asked for.
        x: usize,
        /// The map's height.
        height: usize,
        /// The map's width.
        width: usize,
    },
    /// A tensor given to a function has the wrong shape or type.
    #[error("{what}: expected {expected}, got shape {got:?}")]
    BadTensor {
        /// Which tensor.
        what: String,
        /// What was expected.
        expected: String,
        /// The shape given.
        got: Vec<usize>,
    },
    /// An argument is invalid (an empty channel list, k = 0, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// A method cannot start from this kind of target.
    #[error("{method} cannot use this target: {reason}")]
    UnsupportedTarget {
        /// The method.
        method: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// The top-activation scan saw no images.
    #[error("the top-activation scan saw no images; nothing to reconstruct")]
    EmptyScan,
    /// An image could not be encoded or written.
    #[error("{}: {cause}", path.display())]
    Image {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error (in the message, so not also a `source()`:
        /// it would be printed twice).
        cause: image::ImageError,
    },
    /// A file or folder could not be created.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file or folder at fault.
        path: PathBuf,
        /// The underlying error (in the message, so not also a `source()`:
        /// it would be printed twice).
        cause: std::io::Error,
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

impl From<ModelError> for VizError {
    fn from(e: ModelError) -> Self {
        VizError::Model(Box::new(e))
    }
}

/// Attaches a context string to candle errors.
pub(crate) trait CandleContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, VizError>;
}

impl<T> CandleContext<T> for candle_core::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, VizError> {
        self.map_err(|cause| VizError::Candle {
            context: what(),
            cause,
        })
    }
}
