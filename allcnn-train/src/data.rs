//! [`TrainData`]: the splits a run uses, opened from disk or given in memory,
//! and the adapter from [`crate::TrainConfig`] to `allcnn-data` loaders.

use std::path::Path;
use std::sync::Arc;

use allcnn_data::preprocess::PreprocessKind;
use allcnn_data::{
    info::DatasetFormat, open_dataset, Augmentation, DataError, DataLoader, Dataset, GcnZcaConfig,
    OpenOptions, Preprocessing, Split, Subset,
};
use candle_core::Device;

use crate::config::{DataConfig, PreprocessChoice};
use crate::error::TrainError;

/// The splits of a run: training, optional validation (held out of the
/// training split), optional test.
#[derive(Clone)]
pub struct TrainData {
    /// Training examples.
    pub train: Arc<dyn Dataset>,
    /// Validation examples (best epoch, lr grid search).
    pub val: Option<Arc<dyn Dataset>>,
    /// Test examples (reported every epoch).
    pub test: Option<Arc<dyn Dataset>>,
    /// The whole test split where `test` is a seeded sample of it
    /// (`data.test_subset`): the end of a run evaluates its final weights
    /// on this one, so `eval.json` covers every test image while the epochs
    /// are scored on the cheaper sample. `None` when `test` is the whole
    /// split.
    pub test_full: Option<Arc<dyn Dataset>>,
}

impl std::fmt::Debug for TrainData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainData")
            .field("train", &self.train.len())
            .field("val", &self.val.as_ref().map(|d| d.len()))
            .field("test", &self.test.as_ref().map(|d| d.len()))
            .field("test_full", &self.test_full.as_ref().map(|d| d.len()))
            .finish()
    }
}

/// The sample streams of `Subset::random_nth` for `train_subset` and
/// `test_subset`.
const TRAIN_SAMPLE: u64 = 0;
const TEST_SAMPLE: u64 = 1;

/// A seeded random subset of `n` examples (sorted indices), or the whole set.
fn random_subset(
    data: Arc<dyn Dataset>,
    n: Option<usize>,
    seed: u64,
    which: u64,
) -> Result<Arc<dyn Dataset>, TrainError> {
    match n {
        Some(n) if n < data.len() => Ok(Arc::new(Subset::random_nth(data, n, seed, which))),
        Some(n) if n > data.len() => {
            let key = if which == TRAIN_SAMPLE {
                "data.train_subset"
            } else {
                "data.test_subset"
            };
            log::warn!(
                "{key} = {n}, but the split has only {} examples: all of them are used",
                data.len()
            );
            Ok(data)
        }
        _ => Ok(data),
    }
}

impl TrainData {
    /// Training and test splits in memory, no validation.
    pub fn new(train: Arc<dyn Dataset>, test: Option<Arc<dyn Dataset>>) -> Self {
        Self {
            train,
            val: None,
            test,
            test_full: None,
        }
    }

    /// Opens `path` (CIFAR binary or image folder with `train/` and `test/`)
    /// and applies the config's subsets and validation hold-out, seeded by
    /// `seed`. A missing test split is not an error (no test metrics).
    ///
    /// # Errors
    /// The data crate's errors naming the file at fault.
    pub fn open(path: &Path, config: &DataConfig, seed: u64) -> Result<Self, TrainError> {
        let mut opts = OpenOptions::default();
        if config.skip_bad_images {
            opts.folder.on_error = allcnn_data::folder::OnError::Skip;
        }
        let (format, dir) = allcnn_data::info::detect_format(path)?;
        let split_folders = allcnn_data::folder::has_split_folders(&dir);
        let train = open_dataset(path, Split::Train, &opts).map_err(TrainError::opening_data)?;
        let test = if format == DatasetFormat::ImageFolder && !split_folders {
            // The same images would serve as both splits: "test" accuracy
            // would be training accuracy.
            log::warn!(
                "{} has no train/ and test/ folders: all its images are training images, and the run has no test split",
                path.display()
            );
            None
        } else {
            match open_dataset(path, Split::Test, &opts) {
                Ok(t) => Some(t),
                Err(e @ DataError::MissingFile { .. }) => {
                    log::warn!("no test split under {}: {e}", path.display());
                    None
                }
                // A test split that is there but unreadable is an error,
                // not a run without test metrics.
                Err(e) => return Err(TrainError::opening_data(e)),
            }
        };
        if let Some(t) = &test {
            if t.class_names() != train.class_names() {
                return Err(TrainError::DataMismatch {
                    reason: format!(
                        "the test split of {} has classes [{}], the training split [{}]: the labels would not match",
                        path.display(),
                        t.class_names().join(", "),
                        train.class_names().join(", ")
                    ),
                });
            }
        }
        Self::new(train, test).select(config, seed)
    }

    /// Only the test split of `path`, opened as [`TrainData::open`] opens it
    /// (`config.skip_bad_images`), for evaluating a finished model on it.
    ///
    /// # Errors
    /// [`TrainError::DataMismatch`] for an image folder without split
    /// folders (its images cannot be told to be test images) and the data
    /// crate's errors, a missing test split included.
    pub fn open_test(path: &Path, config: &DataConfig) -> Result<Arc<dyn Dataset>, TrainError> {
        let mut opts = OpenOptions::default();
        if config.skip_bad_images {
            opts.folder.on_error = allcnn_data::folder::OnError::Skip;
        }
        let (format, dir) = allcnn_data::info::detect_format(path)?;
        if format == DatasetFormat::ImageFolder && !allcnn_data::folder::has_split_folders(&dir) {
            return Err(TrainError::DataMismatch {
                reason: format!(
                    "{} has no test/ folder: its images cannot be told to be test images; \
                     give a CIFAR binary folder or an image folder with train/ and test/",
                    path.display()
                ),
            });
        }
        open_dataset(path, Split::Test, &opts).map_err(TrainError::opening_data)
    }

    /// A short fingerprint of the splits, to tell on resume whether the data
    /// are the ones the run trained on: a CRC-32 over each split's size,
    /// class names, every label, every example's file name (image folders;
    /// not the folder it lies in, so a moved data set still matches) and the
    /// pixels of 16 evenly spaced training images. Cheap: 16 images are
    /// decoded.
    pub fn fingerprint(&self) -> String {
        let mut h = crc32fast::Hasher::new();
        for (tag, split) in [
            ("train", Some(&self.train)),
            ("val", self.val.as_ref()),
            ("test", self.test.as_ref()),
        ] {
            h.update(tag.as_bytes());
            let Some(d) = split else { continue };
            h.update(&(d.len() as u64).to_le_bytes());
            for name in d.class_names() {
                h.update(name.as_bytes());
                h.update(&[0]);
            }
            for i in 0..d.len() {
                h.update(&d.label(i).unwrap_or(u32::MAX).to_le_bytes());
                let what = d.describe(i);
                let file = Path::new(&what)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or(what);
                h.update(file.as_bytes());
            }
            // Pixels of the training split only, so fixing a broken test
            // image (see `data.skip_bad_images`) does not change it; an
            // unreadable sample counts as nothing.
            let n = d.len();
            if tag == "train" {
                for k in 0..n.min(16) {
                    if let Ok(s) = d.get(k * n / n.min(16)) {
                        h.update(s.image.as_chw());
                    }
                }
            }
        }
        format!("{:08x}", h.finalize())
    }

    /// Applies `config`'s `train_subset`, `validation` and `test_subset`.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when the validation hold-out leaves no
    /// training example.
    pub fn select(self, config: &DataConfig, seed: u64) -> Result<Self, TrainError> {
        let mut train = random_subset(self.train, config.train_subset, seed, TRAIN_SAMPLE)?;
        let mut val = self.val;
        if config.validation > 0 {
            if config.validation >= train.len() {
                return Err(TrainError::InvalidConfig {
                    field: "data.validation",
                    value: config.validation.to_string(),
                    reason: format!("must be smaller than the training split ({})", train.len()),
                });
            }
            let (t, v) = allcnn_data::dataset::train_val_split(
                train.len(),
                allcnn_data::dataset::ValidationSize::Count(config.validation),
                seed,
            )?;
            val = Some(Arc::new(Subset::new(train.clone(), v)?) as Arc<dyn Dataset>);
            train = Arc::new(Subset::new(train, t)?);
        }
        if config.shuffle_labels {
            train = Arc::new(allcnn_data::dataset::ShuffledLabels::new(train, seed)?);
        }
        let (test, test_full) = match self.test {
            Some(t) => {
                let sample = random_subset(Arc::clone(&t), config.test_subset, seed, TEST_SAMPLE)?;
                let full = (sample.len() < t.len()).then_some(t);
                (Some(sample), full.or(self.test_full))
            }
            None => (None, self.test_full),
        };
        Ok(Self {
            train,
            val,
            test,
            test_full,
        })
    }

    /// Number of classes of the training split.
    pub fn classes(&self) -> usize {
        self.train.num_classes()
    }
}

/// A CRC-32 of a preprocessing: its JSON description and every tensor's
/// name and bytes, in name order (`01ab23cd`). Two fits are equal to the
/// bit exactly when their digests agree (up to CRC collisions), so a run's
/// checkpoint records it and a resume checks the file or a refit against it.
pub fn preprocessing_digest(p: &Preprocessing) -> String {
    let (json, mut tensors) = p.to_parts();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = crc32fast::Hasher::new();
    h.update(json.as_bytes());
    for (name, t) in &tensors {
        h.update(name.as_bytes());
        h.update(&[0]);
        h.update(&safetensors::View::data(t));
    }
    format!("{:08x}", h.finalize())
}

/// The preprocessing of a fresh run: read from `config.preprocessing_from`
/// when it names a file, else fitted on `train`.
///
/// # Errors
/// The data crate's fitting and reading errors;
/// [`TrainError::InvalidConfig`] when the file's preprocessing is of another
/// kind than `config.preprocessing`.
pub fn fit_preprocessing(
    config: &DataConfig,
    train: &dyn Dataset,
) -> Result<Preprocessing, TrainError> {
    if let Some(path) = &config.preprocessing_from {
        let p = Preprocessing::load(path)?;
        let found = match p.kind() {
            PreprocessKind::GcnZca => PreprocessChoice::GcnZca,
            PreprocessKind::Standardize => PreprocessChoice::Standardize,
            PreprocessKind::Scale => PreprocessChoice::Scale,
        };
        if found != config.preprocessing {
            return Err(TrainError::InvalidConfig {
                field: "data.preprocessing_from",
                value: path.display().to_string(),
                reason: format!(
                    "the file holds `{}` preprocessing, but data.preprocessing is `{}`; \
                     set data.preprocessing to the file's kind or leave this field out to fit",
                    found.name(),
                    config.preprocessing.name()
                ),
            });
        }
        return Ok(p);
    }
    Ok(match config.preprocessing {
        PreprocessChoice::GcnZca => Preprocessing::fit_gcn_zca(
            train,
            &GcnZcaConfig {
                gcn_scale: config.gcn_scale,
                filter_bias: config.zca_filter_bias,
                ..GcnZcaConfig::default()
            },
        )?,
        PreprocessChoice::Standardize => Preprocessing::fit_standardize(train)?,
        PreprocessChoice::Scale => Preprocessing::scale(),
    })
}

/// A loader for evaluation: in order, every example.
///
/// # Errors
/// The data crate's loader errors.
pub fn eval_loader(
    data: Arc<dyn Dataset>,
    preprocessing: &Preprocessing,
    batch_size: usize,
    augmentation: Augmentation,
    workers: usize,
    device: &Device,
) -> Result<DataLoader, TrainError> {
    Ok(DataLoader::builder(data)
        .preprocessing(preprocessing.clone())
        .batch_size(batch_size)
        .shuffle(false)
        .drop_last(false)
        .augmentation(augmentation)
        .workers(workers)
        .device(device.clone())
        .build()?)
}
