//! Image folders in the ImageNet / torchvision `ImageFolder` layout:
//! `root/<class>/<image>.{jpg,jpeg,png}`, classes in sorted order.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cifar::Split;
use crate::dataset::{Dataset, Image, Sample};
use crate::DataError;

/// What to do with an image that cannot be decoded (or has the wrong size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail with an error naming the file (the default).
    #[default]
    Fail,
    /// Log a warning, leave the image out and list it in
    /// [`ImageFolder::skipped`]. Checked when the folder is opened (image
    /// headers; a file whose header reads but whose pixels do not is found
    /// when it is decoded, and is then an error).
    Skip,
}

/// Options of [`ImageFolder::open`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderOptions {
    /// Undecodable images: fail (default) or skip.
    pub on_error: OnError,
    /// Decode every image once at open time and keep the 8-bit pixels in
    /// memory (180 MB for the 60,000 CIFAR images). Off by default: images
    /// are then decoded lazily by [`Dataset::get`], which suits
    /// ImageNet-sized folders.
    pub cache: bool,
    /// Require every image to be `(height, width)` (e.g. `(32, 32)` for
    /// a CIFAR model). Image headers are then checked when the folder is
    /// opened.
    pub expect_size: Option<(usize, usize)>,
}

/// A labelled image folder.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    files: Vec<(PathBuf, u32)>,
    cached: Option<Vec<Image>>,
    skipped: Vec<(PathBuf, String)>,
    options: FolderOptions,
}

/// Whether `path` has an extension this crate decodes (jpg, jpeg, png).
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        .unwrap_or(false)
}

/// The class folders of `root`, sorted by name (hidden folders ignored).
pub(crate) fn class_dirs(root: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    if !root.is_dir() {
        return Err(DataError::MissingFile {
            path: root.to_path_buf(),
            hint: "expected a folder of class folders (<root>/<class>/<image>.jpg)".into(),
        });
    }
    let mut dirs = Vec::new();
    let rd = std::fs::read_dir(root).map_err(|e| DataError::io("cannot list", root, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| DataError::io("cannot list", root, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !path.is_dir() {
            continue;
        }
        dirs.push((name, path));
    }
    dirs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(dirs)
}

/// The image files under `dir` (recursively), sorted by path.
///
/// Symbolic links are followed, each directory once: a second link to a
/// directory already read is skipped, and a link to `dir` itself or to a
/// folder above it (a loop, which would relabel every other class as this
/// one) is refused with [`DataError::SymlinkLoop`]. Only regular files are
/// listed, so a FIFO or a link to a device named `*.png` is never read.
pub(crate) fn image_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let root = std::fs::canonicalize(dir).map_err(|e| DataError::io("cannot open", dir, e))?;
    let mut visited = std::collections::HashSet::from([root.clone()]);
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| DataError::io("cannot list", &d, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| DataError::io("cannot list", &d, e))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            // `metadata` follows links. A dangling link named like an image
            // is listed, so that reading it fails naming the link (or skips
            // it, on request) rather than the image going missing silently.
            let Ok(meta) = std::fs::metadata(&path) else {
                if is_image_file(&path) && dangling_target(&path).is_some() {
                    out.push(path);
                }
                continue;
            };
            if meta.is_dir() {
                let real = std::fs::canonicalize(&path)
                    .map_err(|e| DataError::io("cannot open", &path, e))?;
                if root.starts_with(&real) {
                    return Err(DataError::SymlinkLoop {
                        link: path,
                        target: real,
                        root: dir.to_path_buf(),
                    });
                }
                if visited.insert(real) {
                    stack.push(path);
                }
            } else if meta.is_file() && is_image_file(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Where the symbolic link `path` points, when it points at nothing.
fn dangling_target(path: &Path) -> Option<PathBuf> {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    // Only a target that is not there: a loop of links or an unreadable
    // folder on the way fails otherwise, and is not called missing.
    let missing =
        matches!(std::fs::metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
    if !is_link || !missing {
        return None;
    }
    std::fs::read_link(path).ok()
}

/// The error for a file that cannot be opened: a dangling link is a bad
/// image (named with its target, and skippable), anything else an I/O error.
pub(crate) fn open_error(path: &Path, e: std::io::Error) -> DataError {
    match dangling_target(path) {
        Some(target) => DataError::BadImage {
            path: path.to_path_buf(),
            reason: format!(
                "a symbolic link to {}, which does not exist",
                target.display()
            ),
        },
        None => DataError::io("cannot read", path, e),
    }
}

/// The largest image side [`decode_image`] accepts (pixels).
pub const MAX_IMAGE_SIDE: u32 = 8192;
/// The most memory decoding one image may take (bytes).
pub const MAX_IMAGE_BYTES: u64 = 256 << 20;

/// Decodes an image file to 8-bit RGB CHW. Images over [`MAX_IMAGE_SIDE`]
/// pixels a side are refused from their header, before decoding.
///
/// # Errors
/// [`DataError::Io`] when the file cannot be read, [`DataError::BadImage`]
/// when it cannot be decoded or is a symbolic link to nothing.
pub fn decode_image(path: &Path) -> Result<Image, DataError> {
    let bytes = std::fs::read(path).map_err(|e| open_error(path, e))?;
    decode_image_bytes(&bytes, path)
}

/// Decodes encoded image bytes (JPEG or PNG); `path` only names them in errors.
///
/// # Errors
/// [`DataError::BadImage`] when they cannot be decoded.
pub fn decode_image_bytes(bytes: &[u8], path: &Path) -> Result<Image, DataError> {
    rgb(&decode_dynamic(bytes, path)?)
}

/// [`decode_image_bytes`], and whether the image had pixels that are not
/// fully opaque: their alpha is dropped (as PIL's `convert("RGB")` does),
/// so the colours stored under them are what the model sees. Only the
/// inputs of `predict` and `viz` are looked at so; a data set's images are
/// not.
pub(crate) fn decode_keeping_opacity(
    bytes: &[u8],
    path: &Path,
) -> Result<(Image, bool), DataError> {
    let decoded = decode_dynamic(bytes, path)?;
    let transparent =
        decoded.color().has_alpha() && decoded.to_rgba8().pixels().any(|p| p[3] < u8::MAX);
    Ok((rgb(&decoded)?, transparent))
}

/// The decoded image as 8-bit RGB.
fn rgb(decoded: &image::DynamicImage) -> Result<Image, DataError> {
    let img = decoded.to_rgb8();
    let (w, h) = img.dimensions();
    Image::from_rgb_hwc(h as usize, w as usize, img.as_raw())
}

/// Decodes JPEG or PNG bytes, the size checked before any pixel.
fn decode_dynamic(bytes: &[u8], path: &Path) -> Result<image::DynamicImage, DataError> {
    let bad = |e: &dyn std::fmt::Display| DataError::BadImage {
        path: path.to_path_buf(),
        reason: one_line(e),
    };
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(&e))?;
    // The header's size is checked before any pixel is decoded: a small
    // compressed file can announce gigabytes.
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    reader.limits(limits);
    // The JPEG decoder fills a file cut short with grey and says nothing;
    // such a file has no end-of-image marker (PIL refuses it too).
    if reader.format() == Some(image::ImageFormat::Jpeg)
        && !bytes.windows(2).any(|w| w == [0xFF, 0xD9])
    {
        return Err(bad(
            &"truncated JPEG: no end-of-image marker (FF D9), the file was cut short",
        ));
    }
    reader.decode().map_err(|e| match e {
        // "Image size exceeds limit" said neither the limit nor what to do.
        image::ImageError::Limits(_) => {
            let size = image::ImageReader::new(std::io::Cursor::new(bytes))
                .with_guessed_format()
                .ok()
                .and_then(|r| r.into_dimensions().ok())
                .map_or_else(String::new, |(w, h)| format!("{w}x{h}: "));
            bad(&format!(
                "{size}over the limits on images ({MAX_IMAGE_SIDE} pixels a side, {} MiB decoded); \
                 scale it down first (the models take 32x32, or 224x224 for ImageNet)",
                MAX_IMAGE_BYTES >> 20
            ))
        }
        e => bad(&e),
    })
}

/// A decoder's message on one line (some hold newlines).
fn one_line(message: &dyn std::fmt::Display) -> String {
    message
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn header_size(path: &Path) -> Result<(usize, usize), DataError> {
    let bad = |e: &dyn std::fmt::Display| DataError::BadImage {
        path: path.to_path_buf(),
        reason: one_line(e),
    };
    let (w, h) = image::ImageReader::open(path)
        .map_err(|e| open_error(path, e))?
        .with_guessed_format()
        .map_err(|e| bad(&e))?
        .into_dimensions()
        .map_err(|e| bad(&e))?;
    Ok((h as usize, w as usize))
}

fn check_size(
    path: &Path,
    expect: Option<(usize, usize)>,
    h: usize,
    w: usize,
) -> Result<(), DataError> {
    match expect {
        Some((eh, ew)) if (eh, ew) != (h, w) => Err(DataError::WrongImageSize {
            what: path.display().to_string(),
            expected_c: 3,
            expected_h: eh,
            expected_w: ew,
            found_c: 3,
            found_h: h,
            found_w: w,
        }),
        _ => Ok(()),
    }
}

impl ImageFolder {
    /// Opens `root/<class>/<image>`: classes are the sub-folders of `root` in
    /// sorted order (their index is the label), images the `.jpg`, `.jpeg`
    /// and `.png` files under each, in sorted order.
    ///
    /// # Errors
    /// [`DataError::MissingFile`] when `root` is not a folder,
    /// [`DataError::NoClasses`] when it has no sub-folder,
    /// [`DataError::EmptyClass`] for a class folder without images, and, when
    /// the options ask for checks at open time (cache, skip, expected size),
    /// [`DataError::BadImage`] / [`DataError::WrongImageSize`] naming the file.
    pub fn open(root: &Path, options: FolderOptions) -> Result<Self, DataError> {
        let dirs = class_dirs(root)?;
        if dirs.is_empty() {
            return Err(DataError::NoClasses {
                path: root.to_path_buf(),
            });
        }
        let mut classes = Vec::with_capacity(dirs.len());
        let mut files = Vec::new();
        for (label, (name, dir)) in dirs.into_iter().enumerate() {
            let imgs = image_files(&dir)?;
            if imgs.is_empty() {
                return Err(DataError::EmptyClass { path: dir });
            }
            files.extend(imgs.into_iter().map(|p| (p, label as u32)));
            classes.push(name);
        }
        let mut folder = Self {
            root: root.to_path_buf(),
            classes,
            files,
            cached: None,
            skipped: Vec::new(),
            options,
        };
        folder.check_and_cache()?;
        Ok(folder)
    }

    /// Opens the `train/` or `test/` folder of `root` (for [`Split::Test`],
    /// `val/` when there is no `test/`, as in ImageNet).
    ///
    /// # Errors
    /// As [`ImageFolder::open`].
    pub fn open_split(
        root: &Path,
        split: Split,
        options: FolderOptions,
    ) -> Result<Self, DataError> {
        Self::open(&split_dir(root, split), options)
    }

    fn check_and_cache(&mut self) -> Result<(), DataError> {
        let opts = self.options.clone();
        // Every file's header is read (or the whole image, with `cache`), so
        // an unreadable image is found now, not in the middle of a run.
        // One result per file, in file order; in parallel.
        let results: Vec<Result<Option<Image>, DataError>> = self
            .files
            .par_iter()
            .map(|(path, _)| {
                if opts.cache {
                    let img = decode_image(path)?;
                    check_size(path, opts.expect_size, img.height(), img.width())?;
                    Ok(Some(img))
                } else {
                    let (h, w) = header_size(path)?;
                    check_size(path, opts.expect_size, h, w)?;
                    Ok(None)
                }
            })
            .collect();
        let mut kept_files = Vec::with_capacity(self.files.len());
        let mut cache = Vec::new();
        for ((path, label), r) in std::mem::take(&mut self.files).into_iter().zip(results) {
            match r {
                Ok(img) => {
                    if let Some(img) = img {
                        cache.push(img);
                    }
                    kept_files.push((path, label));
                }
                Err(e) if opts.on_error == OnError::Skip && !matches!(e, DataError::Io { .. }) => {
                    // The error names the file.
                    log::warn!("skipping {e}");
                    self.skipped.push((path, e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        // A class whose every image was skipped would silently shift nothing
        // but leave a class with no example: report it.
        for (label, name) in self.classes.iter().enumerate() {
            if !kept_files.iter().any(|(_, l)| *l as usize == label) {
                let class = self.root.join(name);
                let skipped = self
                    .skipped
                    .iter()
                    .filter(|(p, _)| p.parent() == Some(class.as_path()))
                    .count();
                return Err(DataError::AllImagesSkipped {
                    path: class,
                    skipped,
                });
            }
        }
        self.files = kept_files;
        if opts.cache {
            self.cached = Some(cache);
        }
        Ok(())
    }

    /// The folder that was opened.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The image files and their labels, in dataset order.
    pub fn files(&self) -> &[(PathBuf, u32)] {
        &self.files
    }
    /// Files left out in [`OnError::Skip`] mode, with the reason.
    pub fn skipped(&self) -> &[(PathBuf, String)] {
        &self.skipped
    }
    /// Whether the pixels are held in memory.
    pub fn is_cached(&self) -> bool {
        self.cached.is_some()
    }
    /// Number of images of each class, in label order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for (_, l) in &self.files {
            counts[*l as usize] += 1;
        }
        counts
    }
}

/// `root/train`, or for the test split `root/test` (else `root/val`).
/// Whether an image folder is split into `train/`, `test/` or `val/`
/// folders (otherwise its class folders sit at the root).
pub fn has_split_folders(root: &Path) -> bool {
    ["train", "test", "val"]
        .iter()
        .any(|s| split_folder(root, s).is_some())
}

/// The folder `name` under `root`, or one whose name differs from it only
/// in case (`Train/`, `TEST/`), where there is no exact match.
pub(crate) fn split_folder(root: &Path, name: &str) -> Option<PathBuf> {
    let exact = root.join(name);
    if exact.is_dir() {
        return Some(exact);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().eq_ignore_ascii_case(name))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    found.sort();
    found.into_iter().next()
}

pub(crate) fn split_dir(root: &Path, split: Split) -> PathBuf {
    match split {
        Split::Train => split_folder(root, "train").unwrap_or_else(|| root.join("train")),
        Split::Test => split_folder(root, "test")
            .or_else(|| split_folder(root, "val"))
            .unwrap_or_else(|| root.join("test")),
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn describe(&self, index: usize) -> String {
        match self.files.get(index) {
            Some((path, _)) => path.display().to_string(),
            None => format!("example {index} of the folder"),
        }
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let (path, label) = self.files.get(index).ok_or(DataError::IndexOutOfRange {
            index,
            len: self.files.len(),
        })?;
        let image = match &self.cached {
            Some(c) => c[index].clone(),
            None => {
                let img = decode_image(path)?;
                check_size(path, self.options.expect_size, img.height(), img.width())?;
                img
            }
        };
        Ok(Sample {
            image,
            label: *label,
        })
    }
    fn class_names(&self) -> &[String] {
        &self.classes
    }
    fn skipped(&self) -> &[(PathBuf, String)] {
        &self.skipped
    }
    fn label(&self, index: usize) -> Result<u32, DataError> {
        self.files
            .get(index)
            .map(|(_, l)| *l)
            .ok_or(DataError::IndexOutOfRange {
                index,
                len: self.files.len(),
            })
    }
    fn image_shape(&self) -> Option<(usize, usize, usize)> {
        if let Some((h, w)) = self.options.expect_size {
            return Some((3, h, w));
        }
        let c = self.cached.as_ref()?;
        let first = c.first()?;
        let (h, w) = (first.height(), first.width());
        c.iter()
            .all(|i| i.height() == h && i.width() == w)
            .then_some((3, h, w))
    }
}
