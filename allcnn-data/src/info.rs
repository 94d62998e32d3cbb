//! Format detection, `allcnn data info`, and opening any supported layout.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cifar::{resolve_dir, CifarDataset, CifarKind, LabelGranularity, Split};
use crate::dataset::Dataset;
use crate::folder::{class_dirs, image_files, split_dir, FolderOptions, ImageFolder};
use crate::DataError;

/// An on-disk dataset layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetFormat {
    /// `cifar-10-batches-bin/` binary batches.
    Cifar10Binary,
    /// `cifar-100-binary/` binary files.
    Cifar100Binary,
    /// `root/<class>/<image>` (optionally split into `train/`, `test/`, `val/`).
    ImageFolder,
}

impl fmt::Display for DatasetFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatasetFormat::Cifar10Binary => "CIFAR-10 binary",
            DatasetFormat::Cifar100Binary => "CIFAR-100 binary",
            DatasetFormat::ImageFolder => "image folder",
        })
    }
}

/// Number of examples of one class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCount {
    /// Class name.
    pub name: String,
    /// Examples of the class.
    pub count: usize,
}

/// One split of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitInfo {
    /// "train", "test", "val", or "all" for a folder of classes without splits.
    pub name: String,
    /// Where it was read.
    pub path: PathBuf,
    /// Examples in the split.
    pub images: usize,
    /// Per-class counts, in label order.
    pub classes: Vec<ClassCount>,
}

/// What `allcnn data info PATH` reports; `Serialize` for `--json`,
/// `Display` for a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// The layout found.
    pub format: DatasetFormat,
    /// The dataset folder (after resolving e.g. `dir` to `dir/cifar-10-batches-bin`).
    pub path: PathBuf,
    /// The splits found.
    pub splits: Vec<SplitInfo>,
}

impl DatasetInfo {
    /// What would make training or evaluation refuse this data set, in
    /// words: a class folder without images, splits with other classes.
    /// Empty when there is nothing to say.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.splits {
            let empty: Vec<&str> = s
                .classes
                .iter()
                .filter(|c| c.count == 0)
                .map(|c| c.name.as_str())
                .collect();
            if !empty.is_empty() {
                out.push(format!(
                    "{}: no image in the class folder{} {}: training and evaluation refuse a class without examples",
                    s.name,
                    if empty.len() == 1 { "" } else { "s" },
                    empty.join(", ")
                ));
            }
        }
        let names = |s: &SplitInfo| s.classes.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        if let [first, rest @ ..] = self.splits.as_slice() {
            for other in rest {
                if names(first) != names(other) {
                    out.push(format!(
                        "{} has the classes [{}], {} [{}]: training refuses them, as the labels would not match",
                        first.name,
                        names(first).join(", "),
                        other.name,
                        names(other).join(", ")
                    ));
                }
            }
        }
        out
    }
}

/// `n` and the noun, in the plural unless `n` is 1.
fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// A file or class name for one line of output: its control characters
/// escaped (`\n`, `\t`, `\r`, others as `\u{1b}`), so that it can neither
/// split a line nor move a terminal's cursor.
///
/// ```
/// assert_eq!(allcnn_data::info::one_line("ca\nt"), "ca\\nt");
/// assert_eq!(allcnn_data::info::one_line("cat"), "cat");
/// ```
pub fn one_line(name: &str) -> std::borrow::Cow<'_, str> {
    escape_controls(name, |_| false)
}

/// Multi-line text safe for a terminal: its control characters escaped as
/// in [`one_line`] but for line breaks and tabs, which are kept (an ANSI
/// escape in a class name read from a weights file is shown, not obeyed).
///
/// ```
/// assert_eq!(allcnn_data::info::printable("a\n\u{1b}[31mb"), "a\n\\u{1b}[31mb");
/// ```
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    escape_controls(text, |c| c == '\n' || c == '\t')
}

/// `text` with its control characters escaped, but for those `keep` keeps.
fn escape_controls(text: &str, keep: impl Fn(char) -> bool) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| c.is_control() && !keep(c);
    if !text.chars().any(escaped) {
        return text.into();
    }
    text.chars()
        .map(|c| match c {
            c if !escaped(c) => c.to_string(),
            '\n' => "\\n".to_string(),
            '\t' => "\\t".to_string(),
            '\r' => "\\r".to_string(),
            c => c.escape_unicode().to_string(),
        })
        .collect::<String>()
        .into()
}

impl fmt::Display for DatasetInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "format: {}", self.format)?;
        writeln!(f, "path:   {}", self.path.display())?;
        for s in &self.splits {
            writeln!(f)?;
            writeln!(
                f,
                "{}: {}, {} ({})",
                s.name,
                count(s.images, "image", "images"),
                count(s.classes.len(), "class", "classes"),
                s.path.display()
            )?;
            // A folder name holding a newline or a tab would split the table.
            let names: Vec<_> = s.classes.iter().map(|c| one_line(&c.name)).collect();
            let width = names.iter().map(|n| n.len()).max().unwrap_or(5).max(5);
            writeln!(f, "  {:>5}  {:<width$}  {:>8}", "label", "class", "images")?;
            for (i, (c, name)) in s.classes.iter().zip(&names).enumerate() {
                writeln!(f, "  {:>5}  {:<width$}  {:>8}", i, name, c.count)?;
            }
        }
        Ok(())
    }
}

/// Recognises the layout at `path`: a CIFAR binary folder (or the folder
/// containing one), or an image folder. Returns the format and the
/// resolved dataset folder.
///
/// # Errors
/// [`DataError::MissingFile`] when `path` does not exist,
/// [`DataError::UnrecognisedLayout`] when it is none of the supported layouts.
pub fn detect_format(path: &Path) -> Result<(DatasetFormat, PathBuf), DataError> {
    if !path.exists() {
        return Err(DataError::MissingFile {
            path: path.to_path_buf(),
            hint: "no such file or folder".into(),
        });
    }
    for (kind, fmt) in [
        (CifarKind::Cifar10, DatasetFormat::Cifar10Binary),
        (CifarKind::Cifar100, DatasetFormat::Cifar100Binary),
    ] {
        let dir = resolve_dir(path, kind);
        if kind
            .files(Split::Train)
            .iter()
            .chain(kind.files(Split::Test))
            .any(|f| dir.join(f).is_file())
        {
            return Ok((fmt, dir));
        }
    }
    if path.is_dir() {
        let has_split = crate::folder::has_split_folders(path);
        let has_classes = !class_dirs(path)?.is_empty();
        if has_split || has_classes {
            return Ok((DatasetFormat::ImageFolder, path.to_path_buf()));
        }
    }
    Err(DataError::UnrecognisedLayout {
        path: path.to_path_buf(),
        reason: "not a dataset: expected cifar-10-batches-bin/ (data_batch_1.bin ...), \
                 cifar-100-binary/ (train.bin, test.bin), or an image folder \
                 <root>/[train|test|val]/<class>/<image>.jpg"
            .into(),
    })
}

fn count_split(kind: CifarKind, dir: &Path, split: Split) -> Result<Option<SplitInfo>, DataError> {
    if !kind.files(split).iter().any(|f| dir.join(f).is_file()) {
        return Ok(None);
    }
    let ds = CifarDataset::load(dir, kind, split)?;
    let mut counts = vec![0usize; ds.num_classes()];
    for &l in &ds.records().labels {
        counts[l as usize] += 1;
    }
    Ok(Some(SplitInfo {
        name: split.name().into(),
        path: dir.to_path_buf(),
        images: ds.len(),
        classes: ds
            .class_names()
            .iter()
            .zip(counts)
            .map(|(n, c)| ClassCount {
                name: n.clone(),
                count: c,
            })
            .collect(),
    }))
}

fn folder_split(name: &str, root: &Path) -> Result<SplitInfo, DataError> {
    let dirs = class_dirs(root)?;
    if dirs.is_empty() {
        return Err(DataError::NoClasses {
            path: root.to_path_buf(),
        });
    }
    let mut classes = Vec::new();
    for (cname, dir) in dirs {
        classes.push(ClassCount {
            name: cname,
            count: image_files(&dir)?.len(),
        });
    }
    Ok(SplitInfo {
        name: name.into(),
        path: root.to_path_buf(),
        images: classes.iter().map(|c| c.count).sum(),
        classes,
    })
}

/// Format, split sizes and per-class counts of the dataset at `path`
/// (what `allcnn data info PATH` prints). Image folders are counted, not
/// decoded; CIFAR files are read and checked.
///
/// ```no_run
/// let info = allcnn_data::info::info(std::path::Path::new("../shared/data/cifar10-jpg"))?;
/// print!("{info}"); // a table; or serde_json::to_string_pretty(&info)
/// # Ok::<(), allcnn_data::DataError>(())
/// ```
///
/// # Errors
/// Those of [`detect_format`], and of reading the files.
pub fn info(path: &Path) -> Result<DatasetInfo, DataError> {
    let (format, dir) = detect_format(path)?;
    let mut splits = Vec::new();
    match format {
        DatasetFormat::Cifar10Binary | DatasetFormat::Cifar100Binary => {
            let kind = if format == DatasetFormat::Cifar10Binary {
                CifarKind::Cifar10
            } else {
                CifarKind::Cifar100
            };
            for split in [Split::Train, Split::Test] {
                splits.extend(count_split(kind, &dir, split)?);
            }
        }
        DatasetFormat::ImageFolder => {
            let named: Vec<(&str, PathBuf)> = ["train", "val", "test"]
                .into_iter()
                .filter_map(|s| Some((s, crate::folder::split_folder(&dir, s)?)))
                .collect();
            if named.is_empty() {
                splits.push(folder_split("all", &dir)?);
            } else {
                for (s, path) in named {
                    splits.push(folder_split(s, &path)?);
                }
            }
        }
    }
    Ok(DatasetInfo {
        format,
        path: dir,
        splits,
    })
}

/// Options of [`open_dataset`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenOptions {
    /// For image folders.
    pub folder: FolderOptions,
    /// For CIFAR-100: fine (default) or coarse labels.
    pub labels: LabelGranularity,
}

/// Opens a split of the dataset at `path`, whatever its layout (see
/// [`detect_format`]). An image folder without `train/`/`test/`/`val/`
/// sub-folders is used whole for either split.
///
/// # Errors
/// Those of [`detect_format`], [`CifarDataset::load`] and [`ImageFolder::open`].
pub fn open_dataset(
    path: &Path,
    split: Split,
    options: &OpenOptions,
) -> Result<Arc<dyn Dataset>, DataError> {
    let (format, dir) = detect_format(path)?;
    Ok(match format {
        DatasetFormat::Cifar10Binary => {
            Arc::new(CifarDataset::load(&dir, CifarKind::Cifar10, split)?)
        }
        DatasetFormat::Cifar100Binary => Arc::new(
            CifarDataset::load(&dir, CifarKind::Cifar100, split)?.with_labels(options.labels),
        ),
        DatasetFormat::ImageFolder => {
            let has_split = crate::folder::has_split_folders(&dir);
            let root = if has_split {
                split_dir(&dir, split)
            } else {
                dir.clone()
            };
            if has_split && !root.is_dir() {
                // The folder is split, just not into this split: say which
                // it has ("expected a folder of class folders" reads as if
                // the layout were wrong).
                let (has, lacks, other) = match split {
                    Split::Train => ("test/ or val/", "train/", Split::Test),
                    Split::Test => ("train/", "test/ (nor val/)", Split::Train),
                };
                return Err(DataError::MissingFile {
                    path: root,
                    hint: format!(
                        "{} has {has} but no {lacks}: use the {} split, or add a {} folder of class folders",
                        dir.display(),
                        other.name(),
                        split.name()
                    ),
                });
            }
            Arc::new(ImageFolder::open(&root, options.folder.clone())?)
        }
    })
}
