//! The [`Dataset`] trait, the [`Image`] type and composable wrappers.

use std::sync::Arc;

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::DataError;

/// An 8-bit image in planar CHW order: all of channel 0 row by row, then
/// channel 1, then channel 2 (the CIFAR binary layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    channels: usize,
    height: usize,
    width: usize,
    data: Vec<u8>,
}

impl Image {
    /// Wraps planar CHW bytes.
    ///
    /// # Errors
    /// [`DataError::InvalidConfig`] when `data.len() != channels * height * width`
    /// or a dimension is zero.
    pub fn from_chw(
        channels: usize,
        height: usize,
        width: usize,
        data: Vec<u8>,
    ) -> Result<Self, DataError> {
        if channels == 0 || height == 0 || width == 0 || data.len() != channels * height * width {
            return Err(DataError::InvalidConfig {
                name: "image data",
                value: format!("{} bytes for {channels}x{height}x{width}", data.len()),
                reason: "the length must be channels * height * width, all non-zero".into(),
            });
        }
        Ok(Self {
            channels,
            height,
            width,
            data,
        })
    }

    /// Converts interleaved RGB bytes (HWC, as decoders return them) to planar CHW.
    ///
    /// # Errors
    /// As [`Image::from_chw`].
    pub fn from_rgb_hwc(height: usize, width: usize, rgb: &[u8]) -> Result<Self, DataError> {
        let hw = height * width;
        if rgb.len() != 3 * hw || hw == 0 {
            return Err(DataError::InvalidConfig {
                name: "image data",
                value: format!("{} bytes for {height}x{width} RGB", rgb.len()),
                reason: "the length must be 3 * height * width, all non-zero".into(),
            });
        }
        let mut data = vec![0u8; 3 * hw];
        let (r, gb) = data.split_at_mut(hw);
        let (g, b) = gb.split_at_mut(hw);
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            r[i] = px[0];
            g[i] = px[1];
            b[i] = px[2];
        }
        Ok(Self {
            channels: 3,
            height,
            width,
            data,
        })
    }

    /// Number of channels (3 for every reader of this crate).
    pub fn channels(&self) -> usize {
        self.channels
    }
    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }
    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }
    /// The planar CHW bytes.
    pub fn as_chw(&self) -> &[u8] {
        &self.data
    }
    /// Consumes the image, returning its planar CHW bytes.
    pub fn into_chw(self) -> Vec<u8> {
        self.data
    }
    /// The pixel at channel `c`, row `y`, column `x`.
    ///
    /// # Panics
    /// When the coordinates are out of range.
    pub fn at(&self, c: usize, y: usize, x: usize) -> u8 {
        self.data[(c * self.height + y) * self.width + x]
    }
}

/// One labelled example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The image, as 8-bit CHW.
    pub image: Image,
    /// The class index, `0..num_classes`.
    pub label: u32,
}

/// A random-access collection of labelled images, as `burn-dataset`'s trait:
/// a length and an indexed getter. Implementations are cheap to share
/// between threads (`Send + Sync`); `get` may decode a file.
pub trait Dataset: Send + Sync {
    /// Number of examples.
    fn len(&self) -> usize;

    /// The example at `index`.
    ///
    /// # Errors
    /// [`DataError::IndexOutOfRange`] past the end; reader-specific errors
    /// (e.g. [`DataError::BadImage`]) for lazily decoded files.
    fn get(&self, index: usize) -> Result<Sample, DataError>;

    /// The class names, in label order.
    fn class_names(&self) -> &[String];

    /// The label of `index` without decoding its image.
    ///
    /// # Errors
    /// [`DataError::IndexOutOfRange`] past the end.
    fn label(&self, index: usize) -> Result<u32, DataError>;

    /// Number of classes.
    fn num_classes(&self) -> usize {
        self.class_names().len()
    }

    /// Whether the dataset has no example.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How errors name example `index`: its file where it has one (an image
    /// folder), otherwise `example INDEX of the dataset`.
    fn describe(&self, index: usize) -> String {
        format!("example {index} of the dataset")
    }

    /// `(channels, height, width)` when every image has the same size
    /// (CIFAR), `None` when it varies (an image folder of photos).
    fn image_shape(&self) -> Option<(usize, usize, usize)> {
        None
    }

    /// The files left out as unreadable when the data were opened (an
    /// image folder with `OnError::Skip`), with the reason; none
    /// elsewhere. A subset reports its whole source's.
    fn skipped(&self) -> &[(std::path::PathBuf, String)] {
        &[]
    }
}

/// `Dataset` for the smart pointers to one: every method forwarded.
macro_rules! forward_dataset {
    ($($ptr:ident),*) => {$(
        impl<D: Dataset + ?Sized> Dataset for $ptr<D> {
            fn len(&self) -> usize {
                (**self).len()
            }
            fn describe(&self, index: usize) -> String {
                (**self).describe(index)
            }
            fn get(&self, index: usize) -> Result<Sample, DataError> {
                (**self).get(index)
            }
            fn class_names(&self) -> &[String] {
                (**self).class_names()
            }
            fn label(&self, index: usize) -> Result<u32, DataError> {
                (**self).label(index)
            }
            fn image_shape(&self) -> Option<(usize, usize, usize)> {
                (**self).image_shape()
            }
            fn skipped(&self) -> &[(std::path::PathBuf, String)] {
                (**self).skipped()
            }
        }
    )*};
}

forward_dataset!(Arc, Box);

/// A dataset held in memory as a list of images and labels (tests,
/// synthetic data, small custom sets).
#[derive(Debug, Clone, Default)]
pub struct VecDataset {
    images: Vec<Image>,
    labels: Vec<u32>,
    classes: Vec<String>,
}

impl VecDataset {
    /// Wraps images and labels; `classes` names the labels.
    ///
    /// # Errors
    /// [`DataError::InvalidConfig`] when the lengths differ or a label is
    /// not below `classes.len()`.
    pub fn new(
        images: Vec<Image>,
        labels: Vec<u32>,
        classes: Vec<String>,
    ) -> Result<Self, DataError> {
        if images.len() != labels.len() {
            return Err(DataError::InvalidConfig {
                name: "labels",
                value: format!("{} labels for {} images", labels.len(), images.len()),
                reason: "need one label per image".into(),
            });
        }
        if let Some(l) = labels.iter().find(|&&l| l as usize >= classes.len()) {
            return Err(DataError::InvalidConfig {
                name: "label",
                value: l.to_string(),
                reason: format!("must be below the number of classes, {}", classes.len()),
            });
        }
        Ok(Self {
            images,
            labels,
            classes,
        })
    }
}

impl Dataset for VecDataset {
    fn len(&self) -> usize {
        self.images.len()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let image = self.images.get(index).ok_or(DataError::IndexOutOfRange {
            index,
            len: self.images.len(),
        })?;
        Ok(Sample {
            image: image.clone(),
            label: self.labels[index],
        })
    }
    fn class_names(&self) -> &[String] {
        &self.classes
    }
    fn label(&self, index: usize) -> Result<u32, DataError> {
        label_at(&self.labels, index)
    }
    fn image_shape(&self) -> Option<(usize, usize, usize)> {
        let f = self.images.first()?;
        let s = (f.channels(), f.height(), f.width());
        self.images
            .iter()
            .all(|i| (i.channels(), i.height(), i.width()) == s)
            .then_some(s)
    }
}

/// A view of some examples of another dataset, in the order given
/// (used for train/validation splits and subsets).
#[derive(Debug, Clone)]
pub struct Subset<D> {
    inner: D,
    indices: Vec<usize>,
}

impl<D: Dataset> Subset<D> {
    /// The examples `indices` of `inner`.
    ///
    /// # Errors
    /// [`DataError::IndexOutOfRange`] when an index is past the end of `inner`.
    pub fn new(inner: D, indices: Vec<usize>) -> Result<Self, DataError> {
        let len = inner.len();
        if let Some(&index) = indices.iter().find(|&&i| i >= len) {
            return Err(DataError::IndexOutOfRange { index, len });
        }
        Ok(Self { inner, indices })
    }

    /// A seeded random sample of `n` examples (all of them when
    /// `n >= len`), kept in their original order: the same seed gives the
    /// same sample on every machine (ChaCha8). Use it instead of
    /// [`Subset::first`] on data sorted by class.
    pub fn random(inner: D, n: usize, seed: u64) -> Self {
        Self::random_nth(inner, n, seed, 0)
    }

    /// As [`Subset::random`], from sample stream `which` of `seed`: a run
    /// draws its training sample from stream 0 and its test sample from
    /// stream 1, so one seed gives unrelated samples of the two.
    pub fn random_nth(inner: D, n: usize, seed: u64, which: u64) -> Self {
        let mut indices: Vec<usize> = (0..inner.len()).collect();
        if n < indices.len() {
            indices.shuffle(&mut allcnn_seed::rng(
                seed,
                allcnn_seed::Stream::Subset,
                which,
                0,
            ));
            indices.truncate(n);
            indices.sort_unstable();
        }
        Self { inner, indices }
    }

    /// The first `n` examples (all of them when `n >= len`).
    pub fn first(inner: D, n: usize) -> Self {
        let n = n.min(inner.len());
        Self {
            inner,
            indices: (0..n).collect(),
        }
    }

    /// The indices into the inner dataset.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    /// The inner dataset.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn map(&self, index: usize) -> Result<usize, DataError> {
        self.indices
            .get(index)
            .copied()
            .ok_or(DataError::IndexOutOfRange {
                index,
                len: self.indices.len(),
            })
    }
}

/// `labels[index]`, or [`DataError::IndexOutOfRange`] past the end (the
/// label lookup of the in-memory datasets).
fn label_at(labels: &[u32], index: usize) -> Result<u32, DataError> {
    labels
        .get(index)
        .copied()
        .ok_or(DataError::IndexOutOfRange {
            index,
            len: labels.len(),
        })
}

/// A dataset whose labels are a seeded random permutation of `inner`'s:
/// every image keeps its pixels, the label histogram is unchanged, and the
/// labels no longer say anything about the images. A network trained on it
/// can only memorise; it is the model of the data-randomisation sanity
/// check (Adebayo et al., 2018), which `allcnn viz sanity --shuffled-labels`
/// compares against.
pub struct ShuffledLabels<D> {
    inner: D,
    labels: Vec<u32>,
}

impl<D: Dataset> ShuffledLabels<D> {
    /// `inner` with its labels permuted by stream [`allcnn_seed::Stream::Labels`]
    /// of `seed` (the same permutation on every machine).
    ///
    /// # Errors
    /// Reading a label of `inner` ([`Dataset::label`]).
    pub fn new(inner: D, seed: u64) -> Result<Self, DataError> {
        let mut labels = (0..inner.len())
            .map(|i| inner.label(i))
            .collect::<Result<Vec<u32>, DataError>>()?;
        labels.shuffle(&mut allcnn_seed::rng(
            seed,
            allcnn_seed::Stream::Labels,
            0,
            0,
        ));
        Ok(Self { inner, labels })
    }

    /// The inner dataset (with its true labels).
    pub fn inner(&self) -> &D {
        &self.inner
    }
}

impl<D: Dataset> Dataset for ShuffledLabels<D> {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let mut sample = self.inner.get(index)?;
        sample.label = self.label(index)?;
        Ok(sample)
    }
    fn class_names(&self) -> &[String] {
        self.inner.class_names()
    }
    fn label(&self, index: usize) -> Result<u32, DataError> {
        label_at(&self.labels, index)
    }
    fn image_shape(&self) -> Option<(usize, usize, usize)> {
        self.inner.image_shape()
    }
    fn describe(&self, index: usize) -> String {
        self.inner.describe(index)
    }
    fn skipped(&self) -> &[(std::path::PathBuf, String)] {
        self.inner.skipped()
    }
}

impl<D: Dataset> Dataset for Subset<D> {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        self.inner.get(self.map(index)?)
    }
    fn class_names(&self) -> &[String] {
        self.inner.class_names()
    }
    fn label(&self, index: usize) -> Result<u32, DataError> {
        self.inner.label(self.map(index)?)
    }
    fn image_shape(&self) -> Option<(usize, usize, usize)> {
        self.inner.image_shape()
    }
    fn describe(&self, index: usize) -> String {
        match self.map(index) {
            Ok(i) => self.inner.describe(i),
            Err(_) => format!("example {index} of the subset"),
        }
    }
    fn skipped(&self) -> &[(std::path::PathBuf, String)] {
        self.inner.skipped()
    }
}

/// How many examples a validation split holds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum ValidationSize {
    /// A fraction of the dataset, in `[0, 1)`.
    Fraction(f64),
    /// A number of examples.
    Count(usize),
}

/// Splits `0..len` into shuffled train and validation index lists with a
/// seeded RNG (ChaCha8): the same `(len, size, seed)` always gives the same
/// split. Both lists are sorted, so reading stays sequential.
///
/// # Errors
/// [`DataError::InvalidConfig`] when the validation split would be as large
/// as the dataset or the fraction is not in `[0, 1)`.
pub fn train_val_split(
    len: usize,
    size: ValidationSize,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), DataError> {
    let n_val = match size {
        ValidationSize::Fraction(f) => {
            if !(0.0..1.0).contains(&f) {
                return Err(DataError::InvalidConfig {
                    name: "validation fraction",
                    value: f.to_string(),
                    reason: "must be at least 0 and less than 1".into(),
                });
            }
            (len as f64 * f).round() as usize
        }
        ValidationSize::Count(n) => n,
    };
    if n_val >= len && len > 0 {
        return Err(DataError::InvalidConfig {
            name: "validation size",
            value: n_val.to_string(),
            reason: format!("must be smaller than the dataset ({len} examples)"),
        });
    }
    let mut order: Vec<usize> = (0..len).collect();
    let mut rng = allcnn_seed::rng(seed, allcnn_seed::Stream::Split, 0, 0);
    order.shuffle(&mut rng);
    let mut val = order[..n_val].to_vec();
    let mut train = order[n_val..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    Ok((train, val))
}

/// Splits a dataset into `(train, validation)` [`Subset`]s; see [`train_val_split`].
///
/// # Errors
/// As [`train_val_split`].
pub fn split_dataset<D: Dataset + Clone>(
    dataset: D,
    size: ValidationSize,
    seed: u64,
) -> Result<(Subset<D>, Subset<D>), DataError> {
    let (train, val) = train_val_split(dataset.len(), size, seed)?;
    Ok((
        Subset::new(dataset.clone(), train)?,
        Subset::new(dataset, val)?,
    ))
}
