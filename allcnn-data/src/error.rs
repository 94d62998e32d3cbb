//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while reading, preprocessing, loading or
/// downloading data.
///
/// Every variant names the file or value at fault and, where there is one,
/// what to do about it. The enum is `#[non_exhaustive]`: match with a
/// wildcard arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// An I/O operation on a file or folder failed.
    #[error("{action} {path}: {cause}")]
    Io {
        /// What was being done ("cannot read", "cannot create", ...).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },

    /// A symbolic link inside an image folder points to the folder itself
    /// or to a folder above it: following it would read the same images
    /// again and again, under the wrong class.
    #[error(
        "{link} is a symbolic link to {target}, which contains {root}: a loop. \
         Remove the link, or point it at a folder outside {root}"
    )]
    SymlinkLoop {
        /// The link.
        link: PathBuf,
        /// Where it points (resolved).
        target: PathBuf,
        /// The class folder being listed.
        root: PathBuf,
    },

    /// A file of a dataset is missing.
    #[error("{path} is missing: {hint}")]
    MissingFile {
        /// The path that was expected.
        path: PathBuf,
        /// What to do about it.
        hint: String,
    },

    /// The path given does not look like any supported dataset layout.
    #[error("{path}: {reason}")]
    UnrecognisedLayout {
        /// The path given.
        path: PathBuf,
        /// Why it was not recognised, and which layouts are supported.
        reason: String,
    },

    /// A CIFAR binary file whose length is not a whole, non-zero number of
    /// records (an empty file included).
    #[error(
        "{path}: {len} bytes do not make a whole, non-zero number of {record_len}-byte {format} records \
         ({records} records and {remainder} bytes left over); the file is truncated or \
         not a {format} binary file: download it again (`allcnn data download`)"
    )]
    BadRecordFile {
        /// The file.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
        /// The expected record length (3073 for CIFAR-10, 3074 for CIFAR-100).
        record_len: usize,
        /// Whole records found.
        records: u64,
        /// Bytes that do not make a whole record.
        remainder: u64,
        /// "CIFAR-10" or "CIFAR-100".
        format: &'static str,
    },

    /// A label byte that is out of range for the dataset.
    #[error(
        "{path}: record {record} has {kind} label {label}, but there are only {num_classes} \
         classes (0..{num_classes}); the file is corrupt or of another dataset"
    )]
    LabelOutOfRange {
        /// The file.
        path: PathBuf,
        /// The record index within the file.
        record: usize,
        /// "class", "fine" or "coarse".
        kind: &'static str,
        /// The label byte found.
        label: u32,
        /// The number of classes.
        num_classes: usize,
    },

    /// An image file that could not be decoded.
    /// (Image folders opened with `OnError::Skip` leave such files out.)
    #[error("{path}: cannot decode image: {reason}")]
    BadImage {
        /// The image file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },

    /// A class folder with no image in it.
    #[error(
        "{path}: class folder has no image (.jpg, .jpeg or .png); remove the folder or add \
         its images"
    )]
    EmptyClass {
        /// The class folder.
        path: PathBuf,
    },

    /// A class folder whose every image was skipped as unreadable
    /// (`OnError::Skip`), which would leave the class without an example.
    #[error(
        "{path}: all {skipped} images of this class were skipped as unreadable (each named in a \
         warning above); repair or replace them, or remove the class folder"
    )]
    AllImagesSkipped {
        /// The class folder.
        path: PathBuf,
        /// How many images it had.
        skipped: usize,
    },

    /// A folder that has no class sub-folder at all.
    #[error(
        "{path}: no class folders found; expected the image-folder layout \
         <root>/<class>/<image>.jpg"
    )]
    NoClasses {
        /// The folder.
        path: PathBuf,
    },

    /// An image whose size is not the one the model or preprocessing expects.
    #[error(
        "{what}: image is {found_c}x{found_h}x{found_w} (CxHxW) but {expected_c}x{expected_h}x\
         {expected_w} is required; resize the images or choose a model for this size"
    )]
    WrongImageSize {
        /// The file, or a description of the image (e.g. "image 17 of the batch").
        what: String,
        /// Expected channels.
        expected_c: usize,
        /// Expected height.
        expected_h: usize,
        /// Expected width.
        expected_w: usize,
        /// Channels found.
        found_c: usize,
        /// Height found.
        found_h: usize,
        /// Width found.
        found_w: usize,
    },

    /// An index past the end of a dataset.
    #[error("index {index} is out of range for a dataset of {len} items")]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// The dataset's length.
        len: usize,
    },

    /// A configuration value that is not allowed.
    #[error("invalid {name} = {value}: {reason}")]
    InvalidConfig {
        /// The option's name.
        name: &'static str,
        /// The value given.
        value: String,
        /// Why it is not allowed and what is.
        reason: String,
    },

    /// A fitted preprocessing that cannot be read back, or does not fit the
    /// data it is applied to.
    #[error("preprocessing {what}: {reason}")]
    Preprocessing {
        /// Where it came from (a file, "model weights", ...).
        what: String,
        /// What is wrong.
        reason: String,
    },

    /// A numerical failure while fitting (e.g. the eigendecomposition did
    /// not converge, or the data contains NaN).
    #[error("fitting {what} failed: {reason}")]
    Fit {
        /// What was being fitted.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },

    /// An HTTP request failed.
    #[error("downloading {url}: {reason}; check the network or pass another URL (mirror)")]
    Http {
        /// The URL.
        url: String,
        /// The client's message.
        reason: String,
    },

    /// The download ended before the whole file was received.
    #[error(
        "downloading {url}: got {received} of {expected} bytes; the partial file {part} is \
         kept, run the download again to resume"
    )]
    Truncated {
        /// The URL.
        url: String,
        /// Bytes received in all.
        received: u64,
        /// Bytes announced by the server.
        expected: u64,
        /// The partial file kept for resuming.
        part: PathBuf,
    },

    /// A file in the way of one this crate would write, that it did not
    /// make: it is left as it is.
    #[error("{path}: {reason}")]
    ForeignFile {
        /// The file.
        path: PathBuf,
        /// Why it is in the way and what to do.
        reason: String,
    },

    /// A downloaded file whose MD5 is not the published one.
    #[error(
        "{path}: MD5 {found} does not match the expected {expected}; the file was deleted: \
         run the download again (a mirror that serves another build of the archive needs \
         its MD5: --md5)"
    )]
    Md5Mismatch {
        /// The file (already deleted).
        path: PathBuf,
        /// The published MD5.
        expected: String,
        /// The MD5 computed.
        found: String,
    },

    /// An archive that cannot be extracted, or lacks an expected member.
    #[error("{path}: cannot extract archive: {reason}")]
    Archive {
        /// The archive.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// An error from candle (tensor creation, device transfer, safetensors).
    #[error("{context}: {cause}")]
    Candle {
        /// What was being done.
        context: String,
        /// The underlying error.
        cause: candle_core::Error,
    },

    /// The loader's worker thread stopped unexpectedly.
    #[error("the data loader's worker thread stopped: {reason}")]
    Worker {
        /// What happened.
        reason: String,
    },
}

impl DataError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        cause: std::io::Error,
    ) -> Self {
        DataError::Io {
            action,
            path: path.into(),
            cause,
        }
    }

    pub(crate) fn candle(context: impl Into<String>, cause: candle_core::Error) -> Self {
        DataError::Candle {
            context: context.into(),
            cause,
        }
    }
}
