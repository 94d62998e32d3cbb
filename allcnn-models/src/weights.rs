//! Self-describing safetensors weights: [`WeightsFile`] and [`WeightsMeta`].
//!
//! A weights file holds the `conv{i}.weight` / `conv{i}.bias` tensors and, in
//! its safetensors metadata, the architecture (`allcnn.model`,
//! `allcnn.classes`, `allcnn.input_size`, and the full layer list as JSON in
//! `allcnn.spec`) plus the preprocessing the weights expect
//! (`allcnn.preprocessing`, JSON owned by `allcnn-data`). Tensors whose names
//! start with [`ATTACHMENT_PREFIX`] (e.g. a ZCA matrix) ride along with the
//! weights and are returned untouched.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};

use crate::error::{CandleContext, ModelError};
use crate::model::AllCnn;
use crate::spec::ArchSpec;

/// Names of tensors that travel with the weights but are not parameters
/// (the fitted preprocessing).
pub const ATTACHMENT_PREFIX: &str = "preprocess.";

/// Metadata key: the registry name of the architecture.
pub const KEY_MODEL: &str = "allcnn.model";
/// Metadata key: the class count.
pub const KEY_CLASSES: &str = "allcnn.classes";
/// Metadata key: the input side length the weights were trained for.
pub const KEY_INPUT_SIZE: &str = "allcnn.input_size";
/// Metadata key: the complete [`ArchSpec`] as JSON.
pub const KEY_SPEC: &str = "allcnn.spec";
/// Metadata key: the preprocessing the weights expect, as JSON.
pub const KEY_PREPROCESSING: &str = "allcnn.preprocessing";
/// Metadata key: the format version of this layout.
pub const KEY_FORMAT: &str = "allcnn.format";
const FORMAT_VERSION: &str = "1";
/// Metadata key: the class names, a JSON list ([`WeightsMeta::class_names`]).
pub const KEY_CLASS_NAMES: &str = "allcnn.class_names";
/// Metadata key: optimisation steps taken ([`TrainingRecord::step`]).
pub const KEY_TRAIN_STEP: &str = "allcnn.train.step";
/// Metadata key: epochs completed ([`TrainingRecord::epoch`]).
pub const KEY_TRAIN_EPOCH: &str = "allcnn.train.epoch";
/// Metadata key: validation top-1 accuracy ([`TrainingRecord::val_accuracy`]).
pub const KEY_TRAIN_VAL_ACCURACY: &str = "allcnn.train.val_accuracy";
/// Metadata key: test top-1 accuracy ([`TrainingRecord::test_accuracy`]).
pub const KEY_TRAIN_TEST_ACCURACY: &str = "allcnn.train.test_accuracy";

/// What a training run recorded about the weights it saved (the
/// `allcnn.train.*` metadata); every field is optional.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TrainingRecord {
    /// Optimisation steps taken.
    pub step: Option<u64>,
    /// Epochs completed.
    pub epoch: Option<u64>,
    /// Top-1 accuracy on the validation split after that epoch.
    pub val_accuracy: Option<f64>,
    /// Top-1 accuracy on the test split after that epoch.
    pub test_accuracy: Option<f64>,
}

impl WeightsMeta {
    /// The class names ([`KEY_CLASS_NAMES`]), `None` when not recorded.
    ///
    /// # Errors
    /// When the value is not a JSON list of strings.
    pub fn class_names(&self) -> Result<Option<Vec<String>>, serde_json::Error> {
        self.extra
            .get(KEY_CLASS_NAMES)
            .map(|json| serde_json::from_str(json))
            .transpose()
    }

    /// Records the class names ([`KEY_CLASS_NAMES`]).
    pub fn set_class_names(&mut self, names: &[String]) {
        let json = serde_json::to_string(names).expect("strings serialise");
        self.extra.insert(KEY_CLASS_NAMES.to_string(), json);
    }

    /// The training record; entries that are absent or do not parse are
    /// `None`.
    pub fn training(&self) -> TrainingRecord {
        let get = |key: &str| self.extra.get(key).map(String::as_str);
        TrainingRecord {
            step: get(KEY_TRAIN_STEP).and_then(|v| v.parse().ok()),
            epoch: get(KEY_TRAIN_EPOCH).and_then(|v| v.parse().ok()),
            val_accuracy: get(KEY_TRAIN_VAL_ACCURACY).and_then(|v| v.parse().ok()),
            test_accuracy: get(KEY_TRAIN_TEST_ACCURACY).and_then(|v| v.parse().ok()),
        }
    }

    /// Records the fields of `record` that are set (the others are left as
    /// they are).
    pub fn set_training(&mut self, record: &TrainingRecord) {
        let mut put = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                self.extra.insert(key.to_string(), v);
            }
        };
        put(KEY_TRAIN_STEP, record.step.map(|v| v.to_string()));
        put(KEY_TRAIN_EPOCH, record.epoch.map(|v| v.to_string()));
        put(
            KEY_TRAIN_VAL_ACCURACY,
            record.val_accuracy.map(|v| v.to_string()),
        );
        put(
            KEY_TRAIN_TEST_ACCURACY,
            record.test_accuracy.map(|v| v.to_string()),
        );
    }
}

/// What a weights file says about itself besides the tensors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WeightsMeta {
    /// The preprocessing the weights expect (JSON written by `allcnn-data`),
    /// if recorded.
    pub preprocessing: Option<String>,
    /// The input side length the weights were trained for (defaults to the
    /// spec's).
    pub input_size: Option<usize>,
    /// Any other metadata entries (training recipe, results, provenance).
    pub extra: BTreeMap<String, String>,
}

/// A loaded weights file: the model, its metadata and its attachments.
#[derive(Debug, Clone)]
pub struct WeightsFile {
    /// The network with its parameters.
    pub model: AllCnn,
    /// The file's metadata.
    pub meta: WeightsMeta,
    /// Tensors under [`ATTACHMENT_PREFIX`], by full name, on the CPU.
    pub attachments: HashMap<String, Tensor>,
}

fn read_file(path: &Path) -> Result<(Vec<u8>, HashMap<String, String>), ModelError> {
    let bytes = std::fs::read(path).map_err(|cause| ModelError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    let meta = read_meta(path, &bytes)?;
    Ok((bytes, meta))
}

fn read_meta(path: &Path, bytes: &[u8]) -> Result<HashMap<String, String>, ModelError> {
    let (_, header) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| ModelError::NotSafetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(header.metadata().clone().unwrap_or_default())
}

fn read_tensors(path: &Path, bytes: &[u8]) -> Result<HashMap<String, Tensor>, ModelError> {
    let st =
        safetensors::SafeTensors::deserialize(bytes).map_err(|e| ModelError::NotSafetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let t = view
                .load(&Device::Cpu)
                .context(|| format!("{}: reading tensor `{name}`", path.display()))?;
            Ok((name, t))
        })
        .collect()
}

fn parse_usize(
    path: &Path,
    meta: &HashMap<String, String>,
    key: &str,
) -> Result<Option<usize>, ModelError> {
    meta.get(key)
        .map(|v| {
            v.parse::<usize>().map_err(|e| ModelError::BadMetadata {
                path: path.to_path_buf(),
                key: key.to_string(),
                value: v.clone(),
                reason: e.to_string(),
            })
        })
        .transpose()
}

/// The architecture a weights file describes, from its metadata alone.
///
/// # Errors
/// [`ModelError::NotSelfDescribing`] when the file records no architecture,
/// [`ModelError::BadMetadata`] when the record cannot be parsed.
fn spec_from_meta(path: &Path, meta: &HashMap<String, String>) -> Result<ArchSpec, ModelError> {
    let bad = |key: &str, value: &str, reason: String| ModelError::BadMetadata {
        path: path.to_path_buf(),
        key: key.to_string(),
        value: value.to_string(),
        reason,
    };
    if let Some(json) = meta.get(KEY_SPEC) {
        let spec: ArchSpec =
            serde_json::from_str(json).map_err(|e| bad(KEY_SPEC, json, e.to_string()))?;
        spec.validate()
            .map_err(|e| bad(KEY_SPEC, json, e.to_string()))?;
        // The short keys say the same as the spec in every file we write;
        // a file where they differ was edited, and which one is right is
        // not known.
        let classes = spec.classes()?;
        if let Some(name) = meta.get(KEY_MODEL).filter(|n| **n != spec.name) {
            return Err(bad(
                KEY_MODEL,
                name,
                format!("the file's `{KEY_SPEC}` is `{}`", spec.name),
            ));
        }
        if let Some(n) = parse_usize(path, meta, KEY_CLASSES)?.filter(|&n| n != classes) {
            return Err(bad(
                KEY_CLASSES,
                &n.to_string(),
                format!("the file's `{KEY_SPEC}` has {classes} classes"),
            ));
        }
        return Ok(spec);
    }
    let name = meta
        .get(KEY_MODEL)
        .ok_or_else(|| ModelError::NotSelfDescribing {
            path: path.to_path_buf(),
            key: KEY_MODEL.to_string(),
        })?;
    let classes =
        parse_usize(path, meta, KEY_CLASSES)?.ok_or_else(|| ModelError::NotSelfDescribing {
            path: path.to_path_buf(),
            key: KEY_CLASSES.to_string(),
        })?;
    ArchSpec::by_name(name, classes)
}

impl WeightsFile {
    /// Loads a self-describing weights file onto `device`.
    ///
    /// # Errors
    /// [`ModelError::Io`] when the file cannot be read,
    /// [`ModelError::NotSafetensors`] when it is truncated or another format,
    /// [`ModelError::NotSelfDescribing`] when it records no architecture
    /// (use [`WeightsFile::load_as`]), and the strict-loading errors of
    /// [`AllCnn::from_tensors`].
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self, ModelError> {
        Self::load_impl(path.as_ref(), None, device)
    }

    /// Loads a weights file as architecture `spec`, whatever its metadata
    /// says (for files without metadata, such as PyTorch exports).
    ///
    /// # Errors
    /// As [`WeightsFile::load`], without the self-description requirement.
    pub fn load_as(
        path: impl AsRef<Path>,
        spec: ArchSpec,
        device: &Device,
    ) -> Result<Self, ModelError> {
        Self::load_impl(path.as_ref(), Some(spec), device)
    }

    /// The architecture recorded in a weights file, without loading tensors
    /// into a model.
    ///
    /// # Errors
    /// As [`WeightsFile::load`].
    pub fn read_spec(path: impl AsRef<Path>) -> Result<ArchSpec, ModelError> {
        let path = path.as_ref();
        let (_, meta) = read_file(path)?;
        spec_from_meta(path, &meta)
    }

    /// Loads self-describing weights from the bytes of a safetensors file
    /// (e.g. embedded with `include_bytes!`); `name` stands for the file in
    /// errors.
    ///
    /// # Errors
    /// As [`WeightsFile::load`], without the I/O errors.
    pub fn from_bytes(bytes: &[u8], name: &str, device: &Device) -> Result<Self, ModelError> {
        let path = Path::new(name);
        let raw = read_meta(path, bytes)?;
        Self::from_parts(path, bytes, raw, None, device)
    }

    /// The class names recorded by the trainer (`allcnn.class_names`), if
    /// any and well-formed.
    pub fn class_names(&self) -> Option<Vec<String>> {
        self.meta.class_names().ok().flatten()
    }

    fn load_impl(path: &Path, spec: Option<ArchSpec>, device: &Device) -> Result<Self, ModelError> {
        let (bytes, raw) = read_file(path)?;
        Self::from_parts(path, &bytes, raw, spec, device)
    }

    fn from_parts(
        path: &Path,
        bytes: &[u8],
        raw: HashMap<String, String>,
        spec: Option<ArchSpec>,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let described = spec.is_none();
        let spec = match spec {
            Some(s) => s,
            None => spec_from_meta(path, &raw)?,
        };
        if let (true, Some(json)) = (described, raw.get(KEY_CLASS_NAMES)) {
            let classes = spec.classes()?;
            let names: Vec<String> =
                serde_json::from_str(json).map_err(|e| ModelError::BadMetadata {
                    path: path.to_path_buf(),
                    key: KEY_CLASS_NAMES.to_string(),
                    value: json.clone(),
                    reason: format!("not a JSON list of strings: {e}"),
                })?;
            if names.len() != classes {
                return Err(ModelError::BadMetadata {
                    path: path.to_path_buf(),
                    key: KEY_CLASS_NAMES.to_string(),
                    value: json.clone(),
                    reason: format!(
                        "{} names for the {classes} classes of `{}`",
                        names.len(),
                        spec.name
                    ),
                });
            }
        }
        let input_size = parse_usize(path, &raw, KEY_INPUT_SIZE)?;
        if let Some(n) = input_size {
            // The size the file's users will run at: bounded like the spec's.
            let at_size = ArchSpec {
                input_size: n,
                ..spec.clone()
            };
            at_size.validate().map_err(|e| ModelError::BadMetadata {
                path: path.to_path_buf(),
                key: KEY_INPUT_SIZE.to_string(),
                value: n.to_string(),
                reason: e.to_string(),
            })?;
        }
        let mut tensors = read_tensors(path, bytes)?;
        let attachment_names: Vec<String> = tensors
            .keys()
            .filter(|k| k.starts_with(ATTACHMENT_PREFIX))
            .cloned()
            .collect();
        let attachments = attachment_names
            .into_iter()
            .filter_map(|k| tensors.remove_entry(&k))
            .collect();
        let model = AllCnn::from_tensors(spec, tensors, &path.display().to_string(), device)?;
        let preprocessing = raw.get(KEY_PREPROCESSING).cloned();
        let extra = raw
            .into_iter()
            .filter(|(k, _)| {
                ![
                    KEY_MODEL,
                    KEY_CLASSES,
                    KEY_INPUT_SIZE,
                    KEY_SPEC,
                    KEY_PREPROCESSING,
                    KEY_FORMAT,
                ]
                .contains(&k.as_str())
            })
            .collect();
        Ok(Self {
            model,
            meta: WeightsMeta {
                preprocessing,
                input_size,
                extra,
            },
            attachments,
        })
    }
}

impl AllCnn {
    /// Saves the parameters with `meta` and `attachments` (whose names must
    /// start with [`ATTACHMENT_PREFIX`]) as a self-describing safetensors
    /// file. The file is written to a temporary sibling, synced and renamed,
    /// so a crash never leaves a half-written file at `path`.
    ///
    /// # Errors
    /// [`ModelError::Io`] when the file cannot be written,
    /// [`ModelError::InvalidSpec`] for an attachment with another name.
    pub fn save(
        &self,
        path: impl AsRef<Path>,
        meta: &WeightsMeta,
        attachments: &[(String, Tensor)],
    ) -> Result<(), ModelError> {
        self.save_as(path, meta, attachments, DType::F32)
    }

    /// As [`AllCnn::save`], with the parameters stored as `dtype` (`F16` or
    /// `BF16` halve the network's share of the file; loading converts them
    /// back to f32, so only the rounding of the stored values changes:
    /// measure the accuracy of the saved file).
    ///
    /// # Errors
    /// As [`AllCnn::save`], and [`ModelError::Candle`] for a `dtype` the
    /// parameters cannot be converted to.
    pub fn save_as(
        &self,
        path: impl AsRef<Path>,
        meta: &WeightsMeta,
        attachments: &[(String, Tensor)],
        dtype: DType,
    ) -> Result<(), ModelError> {
        let path = path.as_ref();
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (name, t) in self.parameters() {
            let t = t
                .to_device(&Device::Cpu)
                .and_then(|t| t.to_dtype(dtype))
                .context(|| format!("copying `{name}` to the CPU as {dtype:?}"))?;
            tensors.push((name, t));
        }
        for (name, t) in attachments {
            if !name.starts_with(ATTACHMENT_PREFIX) {
                return Err(ModelError::InvalidSpec {
                    name: self.spec().name.clone(),
                    reason: format!("attachment `{name}` must be named {ATTACHMENT_PREFIX}*"),
                });
            }
            let t = t
                .to_device(&Device::Cpu)
                .context(|| format!("copying `{name}` to the CPU"))?;
            tensors.push((name.clone(), t));
        }
        let mut header: HashMap<String, String> = meta.extra.clone().into_iter().collect();
        header.insert(KEY_FORMAT.into(), FORMAT_VERSION.into());
        header.insert(KEY_MODEL.into(), self.spec().name.clone());
        header.insert(KEY_CLASSES.into(), self.classes().to_string());
        header.insert(
            KEY_INPUT_SIZE.into(),
            meta.input_size
                .unwrap_or(self.spec().input_size)
                .to_string(),
        );
        header.insert(
            KEY_SPEC.into(),
            serde_json::to_string(self.spec()).expect("ArchSpec serialises"),
        );
        if let Some(p) = &meta.preprocessing {
            header.insert(KEY_PREPROCESSING.into(), p.clone());
        }
        let bytes =
            safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(header))
                .map_err(|e| ModelError::Io {
                    path: path.to_path_buf(),
                    cause: std::io::Error::other(e.to_string()),
                })?;
        write_atomic(path, &bytes)
    }
}

/// Writes `bytes` to `path` through a synced temporary sibling and a rename.
///
/// # Errors
/// [`ModelError::Io`] naming the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let io = |cause| ModelError::Io {
        path: path.to_path_buf(),
        cause,
    };
    let tmp: PathBuf = {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".tmp{}", std::process::id()));
        path.with_file_name(name)
    };
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Persist the rename itself; not every platform can open a dir.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// The header of a safetensors file, read without its tensor data: the
/// tensor names and the `__metadata__` strings. For looking at a file
/// (which model, which classes, a checkpoint or weights) before loading it,
/// or instead of loading it; a header is a few kilobytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SafetensorsHeader {
    /// The tensor names, sorted.
    pub tensors: Vec<String>,
    /// The `__metadata__` map (empty when the file has none).
    pub metadata: HashMap<String, String>,
}

impl SafetensorsHeader {
    /// Reads the header of `path`. The file's length is checked against the
    /// tensors' data offsets, so a file cut short is refused as the full
    /// load would refuse it.
    ///
    /// ```no_run
    /// let header = allcnn_models::SafetensorsHeader::read("model.safetensors".as_ref())?;
    /// println!("{:?}", header.metadata.get(allcnn_models::KEY_MODEL));
    /// # Ok::<(), allcnn_models::ModelError>(())
    /// ```
    ///
    /// # Errors
    /// [`ModelError::Io`] when the file cannot be read,
    /// [`ModelError::NotSafetensors`] when it is not a whole safetensors
    /// file.
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        use std::io::Read;
        let io = |cause| ModelError::Io {
            path: path.to_path_buf(),
            cause,
        };
        let bad = |reason: String| ModelError::NotSafetensors {
            path: path.to_path_buf(),
            reason,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(|_| {
            bad(format!(
                "{file_len} bytes, shorter than the 8-byte header length"
            ))
        })?;
        let n = u64::from_le_bytes(len);
        // safetensors' own limit on a header.
        if n > 100_000_000 || 8 + n > file_len {
            return Err(bad(format!(
                "a header of {n} bytes announced in a file of {file_len}"
            )));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header).map_err(io)?;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
        let mut out = SafetensorsHeader::default();
        let mut data_end = 0u64;
        for (name, entry) in header {
            if name == "__metadata__" {
                let fields = entry
                    .as_object()
                    .ok_or_else(|| bad("`__metadata__` is not a JSON object".into()))?;
                for (key, value) in fields {
                    let value = value
                        .as_str()
                        .ok_or_else(|| bad(format!("metadata `{key}` is not a string")))?;
                    out.metadata.insert(key.clone(), value.to_string());
                }
                continue;
            }
            let end = entry
                .get("data_offsets")
                .and_then(|o| o.get(1))
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| bad(format!("tensor `{name}` has no data_offsets")))?;
            data_end = data_end.max(end);
            out.tensors.push(name);
        }
        if 8 + n + data_end != file_len {
            return Err(bad(format!(
                "the header describes {} bytes, the file has {file_len}",
                8 + n + data_end
            )));
        }
        out.tensors.sort();
        Ok(out)
    }
}
