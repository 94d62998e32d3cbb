//! CIFAR-10 and CIFAR-100 in their official binary layouts.
//!
//! - CIFAR-10 (`cifar-10-batches-bin/`): `data_batch_1.bin` ... `data_batch_5.bin`
//!   and `test_batch.bin`, records of 1 label byte + 3072 pixel bytes;
//!   class names in `batches.meta.txt`.
//! - CIFAR-100 (`cifar-100-binary/`): `train.bin` and `test.bin`, records of a
//!   coarse label byte, a fine label byte and 3072 pixel bytes; names in
//!   `coarse_label_names.txt` and `fine_label_names.txt`.
//!
//! The pixels are 1024 red, 1024 green and 1024 blue bytes, each plane
//! row-major 32x32: already the CHW layout of [`Image`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, Image, Sample};
use crate::DataError;

/// Side of a CIFAR image.
pub const CIFAR_SIDE: usize = 32;
/// Pixel bytes of a CIFAR record (3 x 32 x 32).
pub const CIFAR_PIXELS: usize = 3 * CIFAR_SIDE * CIFAR_SIDE;

/// The official CIFAR-10 class names, in label order (used when
/// `batches.meta.txt` is absent).
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Which CIFAR dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CifarKind {
    /// CIFAR-10: 10 classes, 1 label byte per record.
    Cifar10,
    /// CIFAR-100: 100 fine classes in 20 coarse ones, 2 label bytes per record.
    Cifar100,
}

impl CifarKind {
    /// Bytes per record: 3073 for CIFAR-10, 3074 for CIFAR-100.
    pub const fn record_len(self) -> usize {
        CIFAR_PIXELS + self.label_bytes()
    }
    /// Label bytes before the pixels: 1 or 2.
    pub const fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            CifarKind::Cifar100 => 2,
        }
    }
    /// Human name, "CIFAR-10" or "CIFAR-100".
    pub const fn name(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "CIFAR-10",
            CifarKind::Cifar100 => "CIFAR-100",
        }
    }
    /// The folder the official archive extracts to.
    pub const fn folder(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "cifar-10-batches-bin",
            CifarKind::Cifar100 => "cifar-100-binary",
        }
    }
    /// The data files of a split, relative to [`CifarKind::folder`].
    pub fn files(self, split: Split) -> &'static [&'static str] {
        match (self, split) {
            (CifarKind::Cifar10, Split::Train) => &[
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            (CifarKind::Cifar10, Split::Test) => &["test_batch.bin"],
            (CifarKind::Cifar100, Split::Train) => &["train.bin"],
            (CifarKind::Cifar100, Split::Test) => &["test.bin"],
        }
    }
    /// The label-name files (CIFAR-10: one; CIFAR-100: fine then coarse).
    pub fn meta_files(self) -> &'static [&'static str] {
        match self {
            CifarKind::Cifar10 => &["batches.meta.txt"],
            CifarKind::Cifar100 => &["fine_label_names.txt", "coarse_label_names.txt"],
        }
    }
    /// Number of (fine) classes.
    pub const fn num_classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 => 100,
        }
    }
    /// The command-line name, `cifar10` or `cifar100`.
    pub const fn cli_name(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "cifar10",
            CifarKind::Cifar100 => "cifar100",
        }
    }
}

impl std::str::FromStr for CifarKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('-', "").as_str() {
            "cifar10" => Ok(CifarKind::Cifar10),
            "cifar100" => Ok(CifarKind::Cifar100),
            _ => Err(DataError::InvalidConfig {
                name: "dataset",
                value: s.to_string(),
                reason: "expected cifar10 or cifar100".into(),
            }),
        }
    }
}

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The training split.
    Train,
    /// The test split (for image folders: `test/`, or `val/` when there is no `test/`).
    Test,
}

impl Split {
    /// "train" or "test".
    pub const fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Which CIFAR-100 labels a dataset reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelGranularity {
    /// The 100 fine classes (the default).
    #[default]
    Fine,
    /// The 20 coarse superclasses.
    Coarse,
}

/// The records of one CIFAR file, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CifarRecords {
    /// `n * 3072` pixel bytes, record after record, each CHW.
    pub pixels: Vec<u8>,
    /// The class (CIFAR-10) or fine (CIFAR-100) label of each record.
    pub labels: Vec<u8>,
    /// The coarse label of each record (CIFAR-100 only; empty for CIFAR-10).
    pub coarse: Vec<u8>,
}

impl CifarRecords {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether there is no record.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Parses the bytes of a CIFAR binary file. `path` only names the file in errors.
///
/// # Errors
/// [`DataError::BadRecordFile`] when the length is not a whole, non-zero
/// number of records; [`DataError::LabelOutOfRange`] for a label byte past
/// the number of classes.
pub fn parse_cifar_records(
    bytes: &[u8],
    kind: CifarKind,
    path: &Path,
) -> Result<CifarRecords, DataError> {
    let rl = kind.record_len();
    let remainder = bytes.len() % rl;
    if remainder != 0 || bytes.is_empty() {
        return Err(DataError::BadRecordFile {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
            record_len: rl,
            records: (bytes.len() / rl) as u64,
            remainder: remainder as u64,
            format: kind.name(),
        });
    }
    let n = bytes.len() / rl;
    let mut out = CifarRecords {
        pixels: Vec::with_capacity(n * CIFAR_PIXELS),
        labels: Vec::with_capacity(n),
        coarse: Vec::with_capacity(if kind == CifarKind::Cifar100 { n } else { 0 }),
    };
    let bad_label = |record: usize, kind_name: &'static str, label: u8, num_classes: usize| {
        DataError::LabelOutOfRange {
            path: path.to_path_buf(),
            record,
            kind: kind_name,
            label: u32::from(label),
            num_classes,
        }
    };
    for (i, rec) in bytes.chunks_exact(rl).enumerate() {
        match kind {
            CifarKind::Cifar10 => {
                if rec[0] >= 10 {
                    return Err(bad_label(i, "class", rec[0], 10));
                }
                out.labels.push(rec[0]);
            }
            CifarKind::Cifar100 => {
                if rec[0] >= 20 {
                    return Err(bad_label(i, "coarse", rec[0], 20));
                }
                if rec[1] >= 100 {
                    return Err(bad_label(i, "fine", rec[1], 100));
                }
                out.coarse.push(rec[0]);
                out.labels.push(rec[1]);
            }
        }
        out.pixels.extend_from_slice(&rec[kind.label_bytes()..]);
    }
    Ok(out)
}

/// Appends one record in the official layout to `out` (used to write test
/// fixtures and benchmark inputs). `coarse` is ignored for CIFAR-10.
///
/// # Errors
/// [`DataError::WrongImageSize`] when the image is not 3x32x32;
/// [`DataError::InvalidConfig`] when a label does not fit the dataset.
pub fn encode_cifar_record(
    kind: CifarKind,
    image: &Image,
    label: u32,
    coarse: u32,
    out: &mut Vec<u8>,
) -> Result<(), DataError> {
    if image.channels() != 3 || image.height() != CIFAR_SIDE || image.width() != CIFAR_SIDE {
        return Err(DataError::WrongImageSize {
            what: "image to encode as a CIFAR record".into(),
            expected_c: 3,
            expected_h: CIFAR_SIDE,
            expected_w: CIFAR_SIDE,
            found_c: image.channels(),
            found_h: image.height(),
            found_w: image.width(),
        });
    }
    if label as usize >= kind.num_classes() || (kind == CifarKind::Cifar100 && coarse >= 20) {
        return Err(DataError::InvalidConfig {
            name: "label",
            value: format!("{label} (coarse {coarse})"),
            reason: format!("out of range for {}", kind.name()),
        });
    }
    if kind == CifarKind::Cifar100 {
        out.push(coarse as u8);
    }
    out.push(label as u8);
    out.extend_from_slice(image.as_chw());
    Ok(())
}

/// A CIFAR-10 or CIFAR-100 split held in memory as bytes (150 MB for the
/// 50,000 training images).
#[derive(Debug, Clone)]
pub struct CifarDataset {
    kind: CifarKind,
    split: Split,
    dir: PathBuf,
    records: CifarRecords,
    granularity: LabelGranularity,
    fine_names: Vec<String>,
    coarse_names: Vec<String>,
}

impl CifarDataset {
    /// Reads a split of CIFAR-10 or CIFAR-100 (fine labels). `root` is either
    /// the extracted folder (`cifar-10-batches-bin`, `cifar-100-binary`) or
    /// the folder that contains it (the `--dir` of `allcnn data download`).
    ///
    /// # Errors
    /// [`DataError::MissingFile`] when a data file of the split is missing,
    /// [`DataError::Io`] when one cannot be read, and the errors of
    /// [`parse_cifar_records`].
    pub fn load(root: &Path, kind: CifarKind, split: Split) -> Result<Self, DataError> {
        let dir = resolve_dir(root, kind);
        // `data download --dir D` extracts into `D/<the archive's folder>`:
        // where `root` is named as that folder, D is its parent.
        let download_dir = if root.file_name() == Some(std::ffi::OsStr::new(kind.folder())) {
            root.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
        } else {
            root
        };
        let mut records = CifarRecords::default();
        for file in kind.files(split) {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(DataError::MissingFile {
                    path,
                    hint: format!(
                        "a {} {} file; download the dataset with `allcnn data download {} --dir {}`",
                        kind.name(),
                        split.name(),
                        kind.cli_name(),
                        download_dir.display()
                    ),
                });
            }
            let bytes = std::fs::read(&path).map_err(|e| DataError::io("cannot read", &path, e))?;
            let part = parse_cifar_records(&bytes, kind, &path)?;
            records.pixels.extend_from_slice(&part.pixels);
            records.labels.extend_from_slice(&part.labels);
            records.coarse.extend_from_slice(&part.coarse);
        }
        let (fine_names, coarse_names) = match kind {
            CifarKind::Cifar10 => (
                read_names(&dir.join("batches.meta.txt"), 10)
                    .unwrap_or_else(|| CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect()),
                Vec::new(),
            ),
            CifarKind::Cifar100 => (
                read_names(&dir.join("fine_label_names.txt"), 100)
                    .unwrap_or_else(|| numbered("fine", 100)),
                read_names(&dir.join("coarse_label_names.txt"), 20)
                    .unwrap_or_else(|| numbered("coarse", 20)),
            ),
        };
        Ok(Self {
            kind,
            split,
            dir,
            records,
            granularity: LabelGranularity::Fine,
            fine_names,
            coarse_names,
        })
    }

    /// Selects fine (default) or coarse labels. CIFAR-10 has only one kind
    /// of label, so this is a no-op there.
    pub fn with_labels(mut self, granularity: LabelGranularity) -> Self {
        if self.kind == CifarKind::Cifar100 {
            self.granularity = granularity;
        }
        self
    }

    /// Which dataset this is.
    pub fn kind(&self) -> CifarKind {
        self.kind
    }
    /// Which split this is.
    pub fn split(&self) -> Split {
        self.split
    }
    /// The folder the files were read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The parsed records (pixels and both kinds of label).
    pub fn records(&self) -> &CifarRecords {
        &self.records
    }
    /// The coarse label of `index` (CIFAR-100), `None` for CIFAR-10.
    pub fn coarse_label(&self, index: usize) -> Option<u32> {
        self.records.coarse.get(index).map(|&l| u32::from(l))
    }
    /// The pixel bytes (CHW) of `index`, without copying.
    pub fn pixels(&self, index: usize) -> Option<&[u8]> {
        self.records
            .pixels
            .get(index * CIFAR_PIXELS..(index + 1) * CIFAR_PIXELS)
    }
}

impl Dataset for CifarDataset {
    fn len(&self) -> usize {
        self.records.len()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let label = self.label(index)?;
        let px = self.pixels(index).ok_or(DataError::IndexOutOfRange {
            index,
            len: self.len(),
        })?;
        Ok(Sample {
            image: Image::from_chw(3, CIFAR_SIDE, CIFAR_SIDE, px.to_vec())?,
            label,
        })
    }
    fn class_names(&self) -> &[String] {
        match self.granularity {
            LabelGranularity::Fine => &self.fine_names,
            LabelGranularity::Coarse => &self.coarse_names,
        }
    }
    fn label(&self, index: usize) -> Result<u32, DataError> {
        let labels = match self.granularity {
            LabelGranularity::Fine => &self.records.labels,
            LabelGranularity::Coarse => &self.records.coarse,
        };
        labels
            .get(index)
            .map(|&l| u32::from(l))
            .ok_or(DataError::IndexOutOfRange {
                index,
                len: labels.len(),
            })
    }
    fn image_shape(&self) -> Option<(usize, usize, usize)> {
        Some((3, CIFAR_SIDE, CIFAR_SIDE))
    }
}

/// `root/<folder>` when it exists, else `root`.
pub(crate) fn resolve_dir(root: &Path, kind: CifarKind) -> PathBuf {
    let nested = root.join(kind.folder());
    if nested.is_dir() {
        nested
    } else {
        root.to_path_buf()
    }
}

/// Reads a names file (one per line, blank lines ignored); `None` when it is
/// absent or holds the wrong number of names (a warning is logged).
fn read_names(path: &Path, expected: usize) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if names.len() == expected {
        Some(names)
    } else {
        log::warn!(
            "{}: {} names instead of {expected}; using default names",
            path.display(),
            names.len()
        );
        None
    }
}

fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}_{i}")).collect()
}
