//! The batch loader: shuffles with a seed, decodes, augments and
//! preprocesses on a pool of rayon workers, prefetches on a background
//! thread, and hands out candle tensors on the requested device.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::{AugmentParams, Augmentation};
use crate::dataset::Dataset;
use crate::preprocess::Preprocessing;
use crate::DataError;

/// Images read and augmented (8-bit stage) by one worker task. Fixed, like
/// every split of the work, so results never depend on the thread count.
const CHUNK: usize = 16;
/// Largest preprocessed cache allowed.
const MAX_CACHE_BYTES: u64 = 4 << 30;

/// Settings of a [`DataLoader`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoaderConfig {
    /// Examples per batch.
    pub batch_size: usize,
    /// Reshuffle the examples every epoch (seeded by `seed` and the epoch).
    pub shuffle: bool,
    /// Drop the last, smaller batch of an epoch.
    pub drop_last: bool,
    /// Seed of the shuffle and of the augmentation.
    pub seed: u64,
    /// Augmentation policy.
    pub augmentation: Augmentation,
    /// Worker threads (0: one per core).
    pub workers: usize,
    /// Batches prepared ahead of the consumer (at least 1).
    pub prefetch: usize,
    /// Keep each example's preprocessed `f32` image after its first use, so
    /// later epochs only augment (flip, translate). For CIFAR with GCN + ZCA
    /// this removes the per-epoch ZCA GEMM; it costs `len * c * h * w * 4`
    /// bytes (614 MB for the 50,000 CIFAR training images) and is refused
    /// above 4 GiB or with an 8-bit augmentation (ImageNet crops). Off by
    /// default.
    #[serde(default)]
    pub cache_preprocessed: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 128,
            shuffle: false,
            drop_last: false,
            seed: 0,
            augmentation: Augmentation::None,
            workers: 0,
            prefetch: 2,
            cache_preprocessed: false,
        }
    }
}

impl LoaderConfig {
    /// Batches in an epoch of `examples` examples under this configuration
    /// (what [`DataLoader::num_batches`] says for such a data set).
    pub fn batches(&self, examples: usize) -> usize {
        if self.batch_size == 0 {
            0
        } else if self.drop_last {
            examples / self.batch_size
        } else {
            examples.div_ceil(self.batch_size)
        }
    }

    /// Training: shuffled, last partial batch dropped, given augmentation.
    pub fn train(batch_size: usize, seed: u64, augmentation: Augmentation) -> Self {
        Self {
            batch_size,
            shuffle: true,
            drop_last: true,
            seed,
            augmentation,
            ..Self::default()
        }
    }
    /// Evaluation: in order, every example, no augmentation.
    pub fn eval(batch_size: usize) -> Self {
        Self {
            batch_size,
            ..Self::default()
        }
    }
}

/// A batch on the host, before it becomes tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    /// `n * c * h * w` preprocessed values, NCHW.
    pub images: Vec<f32>,
    /// `(n, c, h, w)`.
    pub shape: (usize, usize, usize, usize),
    /// The labels.
    pub labels: Vec<u32>,
    /// The dataset indices of the examples, in batch order.
    pub indices: Vec<usize>,
}

/// A batch of tensors on the loader's device.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[N, 3, H, W]`, `f32`, preprocessed and augmented.
    pub images: Tensor,
    /// `[N]`, `u32` class indices.
    pub labels: Tensor,
    /// The dataset indices of the examples, in batch order.
    pub indices: Vec<usize>,
}

impl HostBatch {
    /// Moves the batch to `device` as `([N,C,H,W] f32, [N] u32)` tensors.
    ///
    /// # Errors
    /// [`DataError::Candle`] when the device transfer fails.
    pub fn to_device(self, device: &Device) -> Result<Batch, DataError> {
        let ctx = |e| DataError::candle(format!("moving a batch to {device:?}"), e);
        let n = self.labels.len();
        let images = Tensor::from_vec(self.images, self.shape, device).map_err(ctx)?;
        let labels = Tensor::from_vec(self.labels, n, device).map_err(ctx)?;
        Ok(Batch {
            images,
            labels,
            indices: self.indices,
        })
    }
}

/// Builder of a [`DataLoader`].
pub struct LoaderBuilder {
    dataset: Arc<dyn Dataset>,
    preprocessing: Preprocessing,
    config: LoaderConfig,
    device: Device,
}

impl std::fmt::Debug for LoaderBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoaderBuilder")
            .field("len", &self.dataset.len())
            .field("preprocessing", &self.preprocessing.kind())
            .field("config", &self.config)
            .field("device", &self.device)
            .finish()
    }
}

impl LoaderBuilder {
    /// Sets the preprocessing (default: [`Preprocessing::scale`]).
    pub fn preprocessing(mut self, p: Preprocessing) -> Self {
        self.preprocessing = p;
        self
    }
    /// Sets every option at once.
    pub fn config(mut self, c: LoaderConfig) -> Self {
        self.config = c;
        self
    }
    /// Examples per batch (default 128).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.config.batch_size = n;
        self
    }
    /// Reshuffle every epoch (default off).
    pub fn shuffle(mut self, on: bool) -> Self {
        self.config.shuffle = on;
        self
    }
    /// Drop the last partial batch (default off).
    pub fn drop_last(mut self, on: bool) -> Self {
        self.config.drop_last = on;
        self
    }
    /// Seed of shuffle and augmentation (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = seed;
        self
    }
    /// Augmentation policy (default none).
    pub fn augmentation(mut self, a: Augmentation) -> Self {
        self.config.augmentation = a;
        self
    }
    /// Worker threads (default 0: one per core).
    pub fn workers(mut self, n: usize) -> Self {
        self.config.workers = n;
        self
    }
    /// Batches prepared ahead (default 2).
    pub fn prefetch(mut self, n: usize) -> Self {
        self.config.prefetch = n;
        self
    }
    /// Cache preprocessed images across epochs (default off); see
    /// [`LoaderConfig::cache_preprocessed`].
    pub fn cache_preprocessed(mut self, on: bool) -> Self {
        self.config.cache_preprocessed = on;
        self
    }
    /// Device of the batch tensors (default CPU).
    pub fn device(mut self, d: Device) -> Self {
        self.device = d;
        self
    }

    /// Validates the settings and builds the loader (this starts its worker pool).
    ///
    /// # Errors
    /// [`DataError::InvalidConfig`] for a zero batch size, an empty dataset or a
    /// bad augmentation; [`DataError::WrongImageSize`] when the output size
    /// does not fit the preprocessing; errors of reading the first example.
    pub fn build(self) -> Result<DataLoader, DataError> {
        let c = &self.config;
        if c.batch_size == 0 {
            return Err(DataError::InvalidConfig {
                name: "batch size",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        if self.dataset.is_empty() {
            return Err(DataError::InvalidConfig {
                name: "dataset",
                value: "0 examples".into(),
                reason: "nothing to load".into(),
            });
        }
        c.augmentation.validate()?;
        // The batch shape: the data set's, or its first image's (the
        // others are checked as they are read).
        let (ch, h, w, source) = match self.dataset.image_shape() {
            Some((ch, h, w)) => (ch, h, w, "the data set's images".to_string()),
            None => {
                let img = self.dataset.get(0)?.image;
                let source = self.dataset.describe(0);
                (img.channels(), img.height(), img.width(), source)
            }
        };
        let (oh, ow) = c.augmentation.output_size(h, w);
        let shape = (ch, oh, ow);
        if let Some(expected) = self.preprocessing.input_shape() {
            if expected != shape {
                let what = if (oh, ow) == (h, w) {
                    source
                } else {
                    format!("{source}, {h}x{w} cropped by the augmentation")
                };
                return Err(DataError::WrongImageSize {
                    what,
                    expected_c: expected.0,
                    expected_h: expected.1,
                    expected_w: expected.2,
                    found_c: shape.0,
                    found_h: shape.1,
                    found_w: shape.2,
                });
            }
        }
        let cache = if c.cache_preprocessed {
            let bytes = self.dataset.len() as u64 * (ch * oh * ow) as u64 * 4;
            if c.augmentation.has_u8_stage() || bytes > MAX_CACHE_BYTES {
                return Err(DataError::InvalidConfig {
                    name: "cache_preprocessed",
                    value: format!("true ({} MiB, {:?})", bytes >> 20, c.augmentation),
                    reason: "needs at most 4 GiB and no 8-bit augmentation (crops); turn it off"
                        .into(),
                });
            }
            Some((0..self.dataset.len()).map(|_| OnceLock::new()).collect())
        } else {
            None
        };
        let workers = if c.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            c.workers
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("allcnn-data-{i}"))
            .build()
            .map_err(|e| DataError::Worker {
                reason: format!("cannot start {workers} worker threads: {e}"),
            })?;
        Ok(DataLoader {
            inner: Arc::new(Inner {
                dataset: self.dataset,
                preprocessing: self.preprocessing,
                config: self.config,
                shape,
                pool,
                cache,
            }),
            device: self.device,
        })
    }
}

struct Inner {
    dataset: Arc<dyn Dataset>,
    preprocessing: Preprocessing,
    config: LoaderConfig,
    shape: (usize, usize, usize),
    pool: rayon::ThreadPool,
    cache: Option<Vec<OnceLock<Box<[f32]>>>>,
}

/// Produces batches of a dataset, epoch by epoch. Cheap to clone (shares
/// its worker pool).
#[derive(Clone)]
pub struct DataLoader {
    inner: Arc<Inner>,
    device: Device,
}

impl std::fmt::Debug for DataLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataLoader")
            .field("len", &self.inner.dataset.len())
            .field("shape", &self.inner.shape)
            .field("config", &self.inner.config)
            .field("device", &self.device)
            .finish()
    }
}

impl DataLoader {
    /// Starts building a loader over `dataset`.
    pub fn builder(dataset: Arc<dyn Dataset>) -> LoaderBuilder {
        LoaderBuilder {
            dataset,
            preprocessing: Preprocessing::scale(),
            config: LoaderConfig::default(),
            device: Device::Cpu,
        }
    }

    /// The settings.
    pub fn config(&self) -> &LoaderConfig {
        &self.inner.config
    }
    /// `(c, h, w)` of every image of a batch.
    pub fn image_shape(&self) -> (usize, usize, usize) {
        self.inner.shape
    }
    /// Number of examples in the dataset.
    pub fn num_examples(&self) -> usize {
        self.inner.dataset.len()
    }
    /// The dataset.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.inner.dataset
    }
    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        self.inner.config.batches(self.inner.dataset.len())
    }

    /// The order in which `epoch` visits the examples (a seeded permutation
    /// when shuffling, else `0..len`).
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.inner.dataset.len()).collect();
        if self.inner.config.shuffle {
            let seed = self.inner.config.seed;
            let mut rng = allcnn_seed::rng(seed, allcnn_seed::Stream::Shuffle, epoch, 0);
            order.shuffle(&mut rng);
        }
        order
    }

    /// The dataset indices of every batch of `epoch`.
    pub fn batches(&self, epoch: u64) -> Vec<Vec<usize>> {
        let b = self.inner.config.batch_size;
        let nb = self.num_batches();
        self.order(epoch)
            .chunks(b)
            .take(nb)
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// Builds one batch synchronously (on the worker pool) from dataset
    /// indices, with the augmentation of `epoch`.
    ///
    /// # Errors
    /// Errors of reading, augmenting or preprocessing an example.
    pub fn load_batch(&self, epoch: u64, indices: &[usize]) -> Result<HostBatch, DataError> {
        let inner = &self.inner;
        inner.pool.install(|| inner.build_batch(epoch, indices))
    }

    /// Iterates over the batches of `epoch`, prepared on a background thread
    /// `prefetch` batches ahead. The iterator stops after the first error.
    pub fn epoch(&self, epoch: u64) -> EpochIter {
        let batches = self.batches(epoch);
        let total = batches.len();
        let (tx, rx) = sync_channel(self.inner.config.prefetch.max(1));
        let inner = Arc::clone(&self.inner);
        let handle = std::thread::Builder::new()
            .name("allcnn-data-prefetch".into())
            .spawn(move || {
                for idx in batches {
                    let r = inner.pool.install(|| inner.build_batch(epoch, &idx));
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        break;
                    }
                }
            });
        match handle {
            Ok(h) => EpochIter {
                rx: Some(rx),
                handle: Some(h),
                device: self.device.clone(),
                remaining: total,
                start_error: None,
            },
            Err(e) => EpochIter {
                rx: None,
                handle: None,
                device: self.device.clone(),
                remaining: 0,
                start_error: Some(DataError::Worker {
                    reason: format!("cannot start the prefetch thread: {e}"),
                }),
            },
        }
    }
}

impl Inner {
    fn build_batch(&self, epoch: u64, indices: &[usize]) -> Result<HostBatch, DataError> {
        let (c, h, w) = self.shape;
        let d = c * h * w;
        let n = indices.len();
        let mut pixels = vec![0u8; n * d];
        let mut labels = vec![0u32; n];
        let mut params = vec![AugmentParams::default(); n];
        let aug = self.config.augmentation;
        let seed = self.config.seed;
        if let Some(cache) = &self.cache {
            if let Some(rows) = indices
                .iter()
                .map(|&i| cache.get(i).and_then(OnceLock::get))
                .collect::<Option<Vec<&Box<[f32]>>>>()
            {
                let labels = indices
                    .iter()
                    .map(|&i| self.dataset.label(i))
                    .collect::<Result<Vec<u32>, DataError>>()?;
                let mut images = vec![0f32; n * d];
                images
                    .par_chunks_mut(d)
                    .zip(rows.par_iter())
                    .zip(indices.par_iter())
                    .for_each(|((dst, src), &i)| {
                        let p = aug.sample(seed, epoch, i as u64, h, w);
                        aug.apply_f32(&p, src, c, h, w, dst);
                    });
                return Ok(HostBatch {
                    images,
                    shape: (n, c, h, w),
                    labels,
                    indices: indices.to_vec(),
                });
            }
        }
        // 1. Read, 8-bit augmentation, gather: in fixed chunks on the workers.
        pixels
            .par_chunks_mut(CHUNK * d)
            .zip(labels.par_chunks_mut(CHUNK))
            .zip(params.par_chunks_mut(CHUNK))
            .zip(indices.par_chunks(CHUNK))
            .try_for_each(|(((px, lab), par), idx)| -> Result<(), DataError> {
                for (k, &i) in idx.iter().enumerate() {
                    let s = self.dataset.get(i)?;
                    let img = s.image;
                    let p = aug.sample(seed, epoch, i as u64, img.height(), img.width());
                    let img = aug.apply_u8(&p, img)?;
                    let found = (img.channels(), img.height(), img.width());
                    if found != self.shape {
                        return Err(DataError::WrongImageSize {
                            what: self.dataset.describe(i),
                            expected_c: c,
                            expected_h: h,
                            expected_w: w,
                            found_c: found.0,
                            found_h: found.1,
                            found_w: found.2,
                        });
                    }
                    px[k * d..(k + 1) * d].copy_from_slice(img.as_chw());
                    lab[k] = s.label;
                    par[k] = p;
                }
                Ok(())
            })?;
        // 2. Preprocessing of the whole batch (one blocked GEMM for ZCA).
        let mut pre = vec![0f32; n * d];
        self.preprocessing.apply_u8(&pixels, self.shape, &mut pre)?;
        drop(pixels);
        if let Some(cache) = &self.cache {
            for (row, &i) in pre.chunks_exact(d).zip(indices) {
                if let Some(slot) = cache.get(i) {
                    let _ = slot.set(row.into());
                }
            }
        }
        // 3. Augmentation after normalisation (zero fill).
        let images = if matches!(aug, Augmentation::FlipTranslate { .. }) {
            let mut images = vec![0f32; n * d];
            images
                .par_chunks_mut(d)
                .zip(pre.par_chunks(d))
                .zip(params.par_iter())
                .for_each(|((dst, src), p)| aug.apply_f32(p, src, c, h, w, dst));
            images
        } else {
            pre
        };
        Ok(HostBatch {
            images,
            shape: (n, c, h, w),
            labels,
            indices: indices.to_vec(),
        })
    }
}

/// The batches of one epoch; see [`DataLoader::epoch`]. Dropping it early
/// stops the background thread.
pub struct EpochIter {
    rx: Option<Receiver<Result<HostBatch, DataError>>>,
    handle: Option<JoinHandle<()>>,
    device: Device,
    remaining: usize,
    start_error: Option<DataError>,
}

impl std::fmt::Debug for EpochIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochIter")
            .field("remaining", &self.remaining)
            .finish()
    }
}

impl EpochIter {
    /// Like `next`, but leaves the batch on the host.
    pub fn next_host(&mut self) -> Option<Result<HostBatch, DataError>> {
        if let Some(e) = self.start_error.take() {
            return Some(Err(e));
        }
        if self.remaining == 0 {
            return None;
        }
        let rx = self.rx.as_ref()?;
        match rx.recv() {
            Ok(r) => {
                self.remaining = if r.is_err() { 0 } else { self.remaining - 1 };
                Some(r)
            }
            Err(_) => {
                self.remaining = 0;
                Some(Err(DataError::Worker {
                    reason: "the prefetch thread ended before the epoch did (it panicked?)".into(),
                }))
            }
        }
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch, DataError>;
    fn next(&mut self) -> Option<Self::Item> {
        let r = self.next_host()?;
        Some(r.and_then(|b| b.to_device(&self.device)))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        // Closing the channel makes the producer's next send fail; it then exits.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
