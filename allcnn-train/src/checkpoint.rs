//! Checkpoints: weights, momentum buffers, counters, RNG state and config in
//! one safetensors file, written atomically.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use allcnn_models::{write_atomic, ArchSpec};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{CandleContext, TrainError};
use crate::observer::EpochRecord;

/// The metadata key holding [`CheckpointState`] as JSON.
pub const CHECKPOINT_KEY: &str = "allcnn.checkpoint";
/// The metadata key holding the CRC-32 of the state JSON and of every
/// tensor (name and bytes, in name order), as 8 hex digits.
pub const CHECKSUM_KEY: &str = "allcnn.checkpoint.crc32";
const FORMAT: &str = "allcnn-train-checkpoint";
const VERSION: u32 = 1;
const PARAM_PREFIX: &str = "param.";
const MOMENTUM_PREFIX: &str = "momentum.";

/// The random state of a run. Every random draw is keyed by counters, so
/// the state is the seed and the counters: dropout masks come from
/// `DropoutRng::new(seed, step)`, the shuffle and augmentation of an epoch
/// from `(seed, epoch)` in the data loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The run's seed.
    pub seed: u64,
    /// The dropout stream of the next step (= global steps done).
    pub dropout_stream: u64,
    /// The epoch whose shuffle order is in use.
    pub shuffle_epoch: u64,
}

/// Sums over the batches done so far in the current epoch, so a resumed
/// epoch reports the same means as an uninterrupted one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochPartial {
    /// Sum of batch losses times batch sizes.
    pub loss_sum: f64,
    /// Correct top-1 predictions.
    pub correct: u64,
    /// Examples seen.
    pub seen: u64,
    /// Examples whose logits were all 0.
    pub dead: u64,
    /// The classes with examples in the epoch's batches so far, as a bit set
    /// (bit `c % 64` of word `c / 64`; absent in checkpoints of older
    /// versions, which then report no silent class for the epoch they
    /// resume in).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes_seen: Vec<u64>,
    /// The classes whose logit was above 0 for at least one of their own
    /// examples in the epoch's batches so far (bit set as `classes_seen`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes_heard: Vec<u64>,
}

impl EpochPartial {
    /// Counts one batch's classes: `seen` had examples in it, `silent` of
    /// them gave 0 to every one of their examples.
    pub fn observe_classes(&mut self, seen: &[u32], silent: &[u32]) {
        for &c in seen {
            set_bit(&mut self.classes_seen, c);
            if !silent.contains(&c) {
                set_bit(&mut self.classes_heard, c);
            }
        }
    }

    /// The classes seen in the epoch so far whose logit was 0 for every one
    /// of their examples (their class maps silent all epoch), increasing.
    pub fn silent_classes(&self) -> Vec<u32> {
        (0u32..)
            .take(self.classes_seen.len() * 64)
            .filter(|&c| bit(&self.classes_seen, c) && !bit(&self.classes_heard, c))
            .collect()
    }
}

fn set_bit(words: &mut Vec<u64>, c: u32) {
    let w = c as usize / 64;
    if words.len() <= w {
        words.resize(w + 1, 0);
    }
    words[w] |= 1 << (c % 64);
}

fn bit(words: &[u64], c: u32) -> bool {
    words
        .get(c as usize / 64)
        .is_some_and(|w| w & (1 << (c % 64)) != 0)
}

/// The best epoch so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestRecord {
    /// 0-based epoch.
    pub epoch: u64,
    /// Which metric chose it (`val_accuracy` or `test_accuracy`).
    pub metric: String,
    /// Its value.
    pub value: f64,
}

/// Everything of a run that is not a tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Format tag.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// The epoch to continue in (0-based).
    pub epoch: u64,
    /// The next batch of that epoch (0-based).
    pub batch: u64,
    /// Global steps done.
    pub step: u64,
    /// Random state.
    pub rng: RngState,
    /// Partial sums of the current epoch.
    pub partial: EpochPartial,
    /// The best epoch so far.
    pub best: Option<BestRecord>,
    /// Every finished epoch.
    pub history: Vec<EpochRecord>,
    /// Training examples (checked on resume).
    pub train_examples: usize,
    /// [`crate::TrainData::fingerprint`] of the data the run trains on
    /// (checked on resume; absent in checkpoints of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_fingerprint: Option<String>,
    /// [`crate::data::preprocessing_digest`] of the preprocessing the run
    /// trains with: a refit of a lost `preprocessing.safetensors` is
    /// checked against it on resume, and a replaced file is refused
    /// (absent in checkpoints of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessing_digest: Option<String>,
    /// The CPU convolution backend the run's steps last ran
    /// ([`allcnn_models::ConvBackend::name`]): what a resume compares with,
    /// since `precision = "auto"` may resolve to another one on another
    /// machine or build (absent in checkpoints of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv_ran: Option<String>,
    /// The resolved config as TOML.
    pub config: String,
    /// The architecture.
    pub spec: ArchSpec,
}

impl CheckpointState {
    pub(crate) fn new_format() -> (String, u32) {
        (FORMAT.to_string(), VERSION)
    }
}

/// A checkpoint in memory.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Counters, history, config.
    pub state: CheckpointState,
    /// Model parameters by name (`conv1.weight`, ...).
    pub params: HashMap<String, Tensor>,
    /// Momentum buffers by parameter name.
    pub momentum: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// The network of the checkpoint at `path` as a weights file, to
    /// evaluate or explain a run where it stands (a long run between its
    /// epochs' `best.safetensors`): its parameters and architecture, its
    /// step (and epoch, at an epoch's end), and the preprocessing of its
    /// run directory (`preprocessing.safetensors` beside it, checked
    /// against the digest the checkpoint records). No class names: the
    /// checkpoint does not hold them.
    ///
    /// # Errors
    /// As [`Checkpoint::read`]; [`TrainError::BadCheckpoint`] when the
    /// preprocessing file is missing or not the run's; the model's errors.
    pub fn weights(path: &Path, device: &Device) -> Result<allcnn_models::WeightsFile, TrainError> {
        let ckpt = Self::read(path)?;
        let bad = |reason: String| TrainError::BadCheckpoint {
            path: path.to_path_buf(),
            reason,
        };
        let pre_path = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join(crate::trainer::files::PREPROCESSING);
        if !pre_path.is_file() {
            return Err(bad(format!(
                "its run's preprocessing, {}, is not beside it (a resume of the run fits it again); without it the weights cannot be applied to images",
                pre_path.display()
            )));
        }
        let pre = allcnn_data::Preprocessing::load(&pre_path)?;
        if let Some(recorded) = &ckpt.state.preprocessing_digest {
            let digest = crate::data::preprocessing_digest(&pre);
            if digest != *recorded {
                return Err(bad(format!(
                    "{} (digest {digest}) is not the preprocessing this run trained with (digest {recorded})",
                    pre_path.display()
                )));
            }
        }
        let spec = ckpt.state.spec.clone();
        let model = allcnn_models::AllCnn::from_tensors(
            spec.clone(),
            ckpt.params,
            &path.display().to_string(),
            device,
        )?;
        let mut meta = allcnn_models::WeightsMeta::default();
        let at_epoch_end = ckpt.state.batch == 0;
        meta.set_training(&allcnn_models::TrainingRecord {
            step: Some(ckpt.state.step),
            epoch: at_epoch_end.then_some(ckpt.state.epoch),
            val_accuracy: None,
            test_accuracy: None,
        });
        meta.input_size = Some(pre.input_shape().map_or(spec.input_size, |(_, h, _)| h));
        let (json, parts) = pre.to_parts();
        meta.preprocessing = Some(json);
        // The checkpoint does not hold the class names; the run's weights
        // files beside it do (predictions say "truck", not "class 9").
        let classes = spec.classes().ok();
        if let Some(names) = pre_path
            .parent()
            .and_then(recorded_class_names)
            .filter(|n| Some(n.len()) == classes)
        {
            meta.set_class_names(&names);
        }
        Ok(allcnn_models::WeightsFile {
            model,
            meta,
            attachments: parts.into_iter().collect(),
        })
    }

    /// Writes the checkpoint to `path` atomically (temporary file, fsync,
    /// rename): a crash at any moment leaves the previous file intact.
    ///
    /// # Errors
    /// [`TrainError::Model`] (I/O) naming the path.
    pub fn write(
        path: &Path,
        state: &CheckpointState,
        params: &[(String, Tensor)],
        momentum: &[(String, Tensor)],
    ) -> Result<(), TrainError> {
        let mut tensors = Vec::with_capacity(params.len() + momentum.len());
        for (prefix, list) in [(PARAM_PREFIX, params), (MOMENTUM_PREFIX, momentum)] {
            for (n, t) in list {
                let t = t
                    .to_device(&Device::Cpu)
                    .ctx(|| format!("copying `{n}` to the CPU for a checkpoint"))?;
                tensors.push((format!("{prefix}{n}"), t));
            }
        }
        let json = serde_json::to_string(state).expect("checkpoint state serialises");
        let mut sorted: Vec<(&str, std::borrow::Cow<'_, [u8]>)> = tensors
            .iter()
            .map(|(n, t)| (n.as_str(), safetensors::View::data(t)))
            .collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let crc = checksum(&json, sorted.iter().map(|(n, b)| (*n, &b[..])));
        let meta = HashMap::from([
            (CHECKPOINT_KEY.to_string(), json),
            (CHECKSUM_KEY.to_string(), format!("{crc:08x}")),
        ]);
        let bytes =
            safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))
                .map_err(|e| TrainError::BadCheckpoint {
                    path: path.to_path_buf(),
                    reason: format!("cannot serialise: {e}"),
                })?;
        write_atomic(path, &bytes)?;
        Ok(())
    }

    /// Reads a checkpoint (tensors on the CPU), verifying its checksum (a
    /// checkpoint of an allcnn that wrote none loads with a warning).
    ///
    /// # Errors
    /// [`TrainError::Io`] when it cannot be read, [`TrainError::BadCheckpoint`]
    /// when it is truncated, corrupt (checksum), of another format or
    /// version.
    pub fn read(path: &Path) -> Result<Self, TrainError> {
        let bytes = std::fs::read(path).map_err(TrainError::io(path))?;
        let bad = |reason: String| TrainError::BadCheckpoint {
            path: PathBuf::from(path),
            reason,
        };
        // Checkpoints are written to a temporary file and renamed, so a
        // crash leaves the previous one; a file cut short was damaged after.
        const ADVICE: &str =
            "the file is cut short or damaged; resume from an earlier copy or start the run again";
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a readable safetensors file ({e}): {ADVICE}")))?;
        let json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(CHECKPOINT_KEY))
            .ok_or_else(|| bad(format!("no `{CHECKPOINT_KEY}` metadata: not a checkpoint")))?;
        let state: CheckpointState =
            serde_json::from_str(json).map_err(|e| bad(format!("bad state JSON: {e}")))?;
        if state.format != FORMAT || state.version != VERSION {
            return Err(bad(format!(
                "format {} v{}, expected {FORMAT} v{VERSION}",
                state.format, state.version
            )));
        }
        match meta.metadata().as_ref().and_then(|m| m.get(CHECKSUM_KEY)) {
            Some(stored) => {
                let views = safetensors::SafeTensors::deserialize(&bytes)
                    .map_err(|e| bad(format!("cannot read its tensors ({e}): {ADVICE}")))?;
                let mut list = views.tensors();
                list.sort_by(|a, b| a.0.cmp(&b.0));
                let crc = checksum(json, list.iter().map(|(n, v)| (n.as_str(), v.data())));
                if format!("{crc:08x}") != *stored {
                    return Err(bad(format!(
                        "checksum mismatch (stored {stored}, computed {crc:08x}): the file is corrupt; resume from an earlier copy or start the run again"
                    )));
                }
            }
            None => log::warn!(
                "{}: checkpoint has no checksum (written by an older allcnn); loading it unverified",
                path.display()
            ),
        }
        let all = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| bad(format!("cannot read its tensors ({e}): {ADVICE}")))?;
        let (mut params, mut momentum) = (HashMap::new(), HashMap::new());
        for (name, t) in all {
            if let Some(n) = name.strip_prefix(PARAM_PREFIX) {
                params.insert(n.to_string(), t);
            } else if let Some(n) = name.strip_prefix(MOMENTUM_PREFIX) {
                momentum.insert(n.to_string(), t);
            } else {
                return Err(bad(format!("unexpected tensor `{name}`")));
            }
        }
        Ok(Self {
            state,
            params,
            momentum,
        })
    }
}

/// CRC-32 of the state JSON and each `(name, bytes)` in the order given.
fn checksum<'a>(state: &str, tensors: impl Iterator<Item = (&'a str, &'a [u8])>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(state.as_bytes());
    for (name, data) in tensors {
        h.update(name.as_bytes());
        h.update(&(data.len() as u64).to_le_bytes());
        h.update(data);
    }
    h.finalize()
}

/// The class names recorded in a run's final or best weights in `dir`
/// (only their safetensors headers are read).
fn recorded_class_names(dir: &Path) -> Option<Vec<String>> {
    [crate::trainer::files::FINAL, crate::trainer::files::BEST]
        .iter()
        .find_map(|name| {
            let header = allcnn_models::SafetensorsHeader::read(&dir.join(name)).ok()?;
            serde_json::from_str(header.metadata.get(allcnn_models::KEY_CLASS_NAMES)?).ok()
        })
}

#[cfg(test)]
mod tests {
    use super::EpochPartial;

    #[test]
    fn silent_classes_are_those_seen_and_never_heard_past_64() {
        let mut p = EpochPartial::default();
        p.observe_classes(&[3, 70, 99], &[70, 99]);
        assert_eq!(p.silent_classes(), [70, 99]);
        // 99 fires once on its own images: heard for the epoch.
        p.observe_classes(&[5, 99], &[5]);
        assert_eq!(p.silent_classes(), [5, 70]);
        p.observe_classes(&[5], &[]);
        assert_eq!(p.silent_classes(), [70]);
    }

    #[test]
    fn partials_of_older_checkpoints_read_with_no_class_sets() {
        let old = r#"{"loss_sum":1.5,"correct":3,"seen":8,"dead":0}"#;
        let p: EpochPartial = serde_json::from_str(old).unwrap();
        assert_eq!(p.seen, 8);
        assert!(p.silent_classes().is_empty());
        // Written back without them while empty, with them once set.
        assert_eq!(serde_json::to_string(&p).unwrap(), old);
        let mut q = p.clone();
        q.observe_classes(&[1], &[1]);
        let back: EpochPartial = serde_json::from_str(&serde_json::to_string(&q).unwrap()).unwrap();
        assert_eq!(back.silent_classes(), [1]);
    }
}
