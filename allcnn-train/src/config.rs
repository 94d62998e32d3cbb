//! [`TrainConfig`]: every setting of a run, readable and writable as TOML,
//! with presets shipped in the crate and `key=value` overrides.

use std::path::{Path, PathBuf};

use allcnn_data::Augmentation;
use allcnn_models::{ArchSpec, ConvBackend, Init, Precision};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::schedule::LrSchedule;

/// The presets shipped with the crate, as `(name, TOML text)`.
pub const PRESETS: &[(&str, &str)] = &[
    ("cifar10", include_str!("../presets/cifar10.toml")),
    ("cifar10-aug", include_str!("../presets/cifar10-aug.toml")),
    ("cifar100", include_str!("../presets/cifar100.toml")),
    ("imagenet", include_str!("../presets/imagenet.toml")),
];

/// The preprocessing fitted on the training split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PreprocessChoice {
    /// The paper's global contrast normalisation then ZCA whitening.
    GcnZca,
    /// Per-channel mean / standard deviation.
    Standardize,
    /// `x / 255` only.
    Scale,
}

impl PreprocessChoice {
    /// The name as written in a config (`gcn-zca`, `standardize`, `scale`).
    pub fn name(self) -> &'static str {
        match self {
            PreprocessChoice::GcnZca => "gcn-zca",
            PreprocessChoice::Standardize => "standardize",
            PreprocessChoice::Scale => "scale",
        }
    }
}

/// Where the data come from and how they are prepared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// The dataset (CIFAR binary folder or image folder with `train/` and
    /// `test/`). Needed by [`crate::resume`]; may be empty when the data are
    /// passed in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// The preprocessing fitted on the training split.
    pub preprocessing: PreprocessChoice,
    /// GCN scale (55 in the paper).
    #[serde(default = "default_gcn_scale")]
    pub gcn_scale: f32,
    /// ZCA filter bias (0.1 in the paper).
    #[serde(default = "default_filter_bias")]
    pub zca_filter_bias: f32,
    /// Training augmentation.
    #[serde(default)]
    pub augmentation: Augmentation,
    /// Augmentation at evaluation (ImageNet: centre crop).
    #[serde(default)]
    pub eval_augmentation: Augmentation,
    /// Train on a seeded random subset of this many training images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_subset: Option<usize>,
    /// Score every epoch on a seeded random subset of this many test
    /// images; the final weights are still evaluated on the whole test
    /// split (`eval.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_subset: Option<usize>,
    /// Images held out of the training split for validation (best epoch,
    /// lr grid search); 0 for none.
    #[serde(default)]
    pub validation: usize,
    /// Loader worker threads (0: one per core).
    #[serde(default)]
    pub workers: usize,
    /// Image folders: leave out (with a warning) images whose header cannot
    /// be read instead of failing when the data are opened.
    #[serde(default)]
    pub skip_bad_images: bool,
    /// Train on a seeded random permutation of the training labels
    /// (`allcnn_data::dataset::ShuffledLabels`, seeded by the run's seed):
    /// the model of the data-randomisation sanity check (`allcnn viz sanity
    /// --shuffled-labels`). Validation and test labels stay true, so their
    /// accuracy stays at chance.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shuffle_labels: bool,
    /// Use the preprocessing recorded in this file (a run's
    /// `preprocessing.safetensors`, or weights that carry their
    /// preprocessing) instead of fitting one on the training split; its kind
    /// must be `preprocessing`'s. For runs that must see exactly another
    /// run's whitening, e.g. the shuffled-label model of the sanity check,
    /// trained on a subset but whitened as the model it is compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessing_from: Option<PathBuf>,
}

fn default_gcn_scale() -> f32 {
    55.0
}
fn default_filter_bias() -> f32 {
    0.1
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            path: None,
            preprocessing: PreprocessChoice::GcnZca,
            gcn_scale: default_gcn_scale(),
            zca_filter_bias: default_filter_bias(),
            augmentation: Augmentation::None,
            eval_augmentation: Augmentation::None,
            train_subset: None,
            test_subset: None,
            validation: 0,
            workers: 0,
            skip_bad_images: false,
            shuffle_labels: false,
            preprocessing_from: None,
        }
    }
}

/// Every setting of a training run. Serialised as TOML into the run
/// directory (`config.toml`), so a run can be resumed and reproduced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Registered architecture name (`allcnn models`), e.g. `all-cnn-c`.
    pub model: String,
    /// A custom architecture instead of `model` (its layers as data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<ArchSpec>,
    /// Number of classes; taken from the data when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<usize>,
    /// Weight initialisation.
    pub init: Init,
    /// Start from the network weights in this file (a run's `final.safetensors`
    /// or `best.safetensors`, an `export-hub` file, or a shipped model saved
    /// with `allcnn pretrained save`) instead of a fresh `init`. The file's
    /// architecture must be the one trained. Momentum starts at zero and the
    /// preprocessing is fitted anew from `data`, as for a fresh run; the
    /// schedule starts at its first epoch. Not the paper's protocol: a way to
    /// continue a finished run with a new schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// Seed of initialisation, shuffling, augmentation and dropout.
    pub seed: u64,
    /// Epochs in all.
    pub epochs: u64,
    /// Stop after this many steps in all (a budget cap), checkpointing first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    /// Training batch size.
    pub batch_size: usize,
    /// Base learning rate.
    pub lr: f64,
    /// The learning rates tried by [`crate::grid_search`].
    #[serde(default)]
    pub lr_grid: Vec<f64>,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Learning-rate schedule.
    pub schedule: LrSchedule,
    /// Linear learning-rate warm-up over the first this many steps (0, the
    /// paper: none). Step `s < warmup_steps` runs at
    /// `schedule_lr * (s + 1) / warmup_steps`. Not part of the paper's
    /// protocol: an option against the dead class maps of its fragile start
    /// (docs/training.md).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warmup_steps: u64,
    /// Batch size for evaluation.
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    /// A step line in `metrics.jsonl` (and the log) every this many steps.
    #[serde(default = "default_log_every")]
    pub log_every_steps: u64,
    /// A checkpoint every this many steps as well as every epoch (0: epochs only).
    #[serde(default)]
    pub checkpoint_every_steps: u64,
    /// Stop the run with [`TrainError::DeadClassMaps`] when at least 95% of
    /// the training examples of each of this many consecutive steps had
    /// all their logits at 0 (every class map dead after the final ReLU: no
    /// gradient reaches the weights, so the run cannot learn again; a dead
    /// run keeps a few examples that still reach a live unit), or when one
    /// class's logit was 0 for every example of each of this many
    /// consecutive steps (that class map dead: no gradient reaches it, and
    /// unless the layers below bring it back the run never predicts the
    /// class, its accuracy capped below 100% minus the class's share).
    /// 0 never stops (a run where maps come back: translations, or a few
    /// images memorised).
    #[serde(
        default = "default_dead_patience",
        skip_serializing_if = "is_default_dead_patience"
    )]
    pub dead_patience_steps: u64,
    /// Convolution implementation on CPU: `winograd` (the default),
    /// `winograd-bf16` (bf16 GEMM operands, f32 accumulation: faster on
    /// CPUs with AVX-512 BF16), `winograd-f4` (f32, Winograd F(4x4, 3x3)
    /// on maps larger than 6x6: fewer multiplications, about 1e-5 relative
    /// rounding), `gemm` or `candle`. Other devices use
    /// candle's convolution whatever this says.
    #[serde(default, skip_serializing_if = "is_default_conv")]
    pub conv: ConvBackend,
    /// Precision of the convolution GEMMs on CPU: `f32` (the default),
    /// `bf16` (bf16 operands, f32 accumulation; weights, momentum and loss
    /// stay f32) or `auto` (bf16 where this CPU runs it faster,
    /// [`allcnn_models::bf16_is_faster`], f32 with Winograd F(4x4, 3x3) on
    /// AVX2 CPUs without AVX-512, [`allcnn_models::f4_is_faster`], f32
    /// elsewhere; resolved again when a run is resumed, so a run that moves
    /// between machines runs each one's fastest). `conv` is the expert override: set one of the two.
    #[serde(default, skip_serializing_if = "is_default_precision")]
    pub precision: Precision,
    /// Data.
    #[serde(default)]
    pub data: DataConfig,
}

/// The largest batch a config may ask for (training or evaluation).
pub const MAX_BATCH: usize = 4096;
/// The most loader threads a config may ask for.
pub const MAX_WORKERS: usize = 256;

fn default_dead_patience() -> u64 {
    200
}

fn is_default_dead_patience(v: &u64) -> bool {
    *v == default_dead_patience()
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_default_conv(c: &ConvBackend) -> bool {
    *c == ConvBackend::default()
}

fn is_default_precision(p: &Precision) -> bool {
    *p == Precision::default()
}

fn default_eval_batch() -> usize {
    256
}
fn default_log_every() -> u64 {
    50
}

impl TrainConfig {
    /// The convolution backend the run uses: `conv` when it is set, else
    /// what `precision` resolves to on this CPU ([`Precision::backend`]).
    /// [`TrainConfig::validate`] refuses a config that sets both.
    pub fn conv_backend(&self) -> ConvBackend {
        if is_default_conv(&self.conv) {
            self.precision.backend()
        } else {
            self.conv
        }
    }

    /// The learning rate of global step `step` (0-based) in `epoch`
    /// (0-based): the schedule's rate, scaled by the linear warm-up while
    /// `step < warmup_steps`.
    pub fn lr_at(&self, epoch: u64, step: u64) -> f64 {
        let lr = self.schedule.lr(self.lr, epoch, step, self.epochs);
        if step < self.warmup_steps {
            lr * (step + 1) as f64 / self.warmup_steps as f64
        } else {
            lr
        }
    }

    /// The names of the shipped presets.
    pub fn preset_names() -> Vec<&'static str> {
        PRESETS.iter().map(|(n, _)| *n).collect()
    }

    /// A shipped preset (`cifar10`, `cifar10-aug`, `cifar100`, `imagenet`).
    ///
    /// # Errors
    /// [`TrainError::UnknownPreset`].
    pub fn preset(name: &str) -> Result<Self, TrainError> {
        let text = Self::preset_text(name)?;
        Self::from_toml(text, &format!("preset `{name}`"))
    }

    /// The TOML text of a shipped preset (to print or copy).
    ///
    /// # Errors
    /// [`TrainError::UnknownPreset`].
    pub fn preset_text(name: &str) -> Result<&'static str, TrainError> {
        PRESETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .ok_or_else(|| TrainError::UnknownPreset {
                name: name.to_string(),
                known: Self::preset_names().join(", "),
            })
    }

    /// Parses TOML text; `source_name` names it in errors.
    ///
    /// # Errors
    /// [`TrainError::ConfigParse`].
    pub fn from_toml(text: &str, source_name: &str) -> Result<Self, TrainError> {
        toml::from_str(text).map_err(|e| TrainError::ConfigParse {
            source_name: source_name.to_string(),
            reason: e.to_string(),
        })
    }

    /// Reads a TOML (or, by extension `.json`, JSON) config file, which
    /// gives every field (as `--print-config` writes them).
    ///
    /// # Errors
    /// [`TrainError::Io`] or [`TrainError::ConfigParse`] naming the file
    /// (a missing field says how to give only some: [`TrainConfig::overlaid_with_file`]).
    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        };
        parsed.map_err(|reason| {
            // toml's messages end in a newline.
            let mut reason = reason.trim_end().to_string();
            if reason.contains("missing field") {
                reason.push_str(
                    "; a config file gives every field (`allcnn train --preset NAME --print-config` writes one to edit), \
                     or only some of them laid over a preset (`--preset NAME --config FILE`)",
                );
            }
            TrainError::ConfigParse {
                source_name: path.display().to_string(),
                reason,
            }
        })
    }

    /// This config with the fields that the TOML (or `.json`) file `path`
    /// gives replaced, nested tables field by field (`[data]` with only
    /// `train_subset` keeps the other data settings): a partial config
    /// laid over a preset.
    ///
    /// # Errors
    /// [`TrainError::Io`] or [`TrainError::ConfigParse`] naming the file.
    pub fn overlaid_with_file(&self, path: &Path) -> Result<Self, TrainError> {
        let parse = |reason: String| TrainError::ConfigParse {
            source_name: path.display().to_string(),
            reason,
        };
        let mut base = toml::Value::try_from(self).map_err(|e| parse(e.to_string()))?;
        merge(&mut base, read_config_value(path)?);
        base.try_into()
            .map_err(|e: toml::de::Error| parse(e.to_string()))
    }

    /// The config as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("TrainConfig serialises to TOML")
    }

    /// Applies one `key=value` override. `key` is a field name, dotted for
    /// nested fields (`data.train_subset=5000`, `schedule.gamma=0.2`);
    /// `value` is a TOML value (`0.05`, `[0.1, 0.05]`, `"he-normal"`,
    /// `{ kind = "constant" }`), and a bare word is taken as a string.
    ///
    /// # Errors
    /// [`TrainError::BadOverride`] naming the item when it is not `key=value`,
    /// names no field, or the value has the wrong type.
    pub fn set(&mut self, item: &str) -> Result<(), TrainError> {
        let bad = |reason: String| TrainError::BadOverride {
            item: item.to_string(),
            reason,
        };
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| bad("expected key=value".into()))?;
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            return Err(bad("empty key".into()));
        }
        let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
            Ok(mut t) => t.remove("v").expect("parsed key"),
            Err(_) => toml::Value::String(value.to_string()),
        };
        let mut root = toml::Table::try_from(&*self)
            .map_err(|e| bad(format!("cannot represent the config: {e}")))?;
        let parts: Vec<&str> = key.split('.').collect();
        let mut table = &mut root;
        for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
            let entry = table
                .entry((*part).to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry.as_table_mut().ok_or_else(|| {
                bad(format!(
                    "`{}` is a value, not a table of fields",
                    parts[..=i].join(".")
                ))
            })?;
        }
        table.insert(parts[parts.len() - 1].to_string(), value);
        let next: TrainConfig = root
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.message().to_string()))?;
        *self = next;
        Ok(())
    }

    /// Applies several overrides in order.
    ///
    /// # Errors
    /// As [`TrainConfig::set`].
    pub fn apply_overrides<S: AsRef<str>>(&mut self, items: &[S]) -> Result<(), TrainError> {
        for item in items {
            self.set(item.as_ref())?;
        }
        Ok(())
    }

    /// The architecture: `spec` when given, else the registered `model`.
    ///
    /// # Errors
    /// [`TrainError::Model`] for an unknown model name.
    pub fn arch(&self, classes: usize) -> Result<ArchSpec, TrainError> {
        match &self.spec {
            Some(s) => Ok(s.clone()),
            None => Ok(ArchSpec::by_name(&self.model, classes)?),
        }
    }

    /// Checks every value.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] naming the field.
    pub fn validate(&self) -> Result<(), TrainError> {
        self.validate_for(true)
    }

    /// [`TrainConfig::validate`]; for a run being resumed (`new_run`
    /// false) without the checks added after runs had started, which its
    /// recorded config cannot be changed to pass: a custom spec's
    /// `classes` and name.
    pub(crate) fn validate_for(&self, new_run: bool) -> Result<(), TrainError> {
        let inv = |field: &'static str, value: String, reason: &str| {
            Err(TrainError::InvalidConfig {
                field,
                value,
                reason: reason.to_string(),
            })
        };
        if self.epochs == 0 {
            return inv("epochs", "0".into(), "must be at least 1");
        }
        if !is_default_conv(&self.conv) && !is_default_precision(&self.precision) {
            return inv(
                "precision",
                self.precision.name().into(),
                &format!(
                    "conflicts with conv = \"{}\"; set one of the two (precision \"{}\" is conv \"{}\" on this CPU)",
                    self.conv.name(),
                    self.precision.name(),
                    self.precision.backend().name()
                ),
            );
        }
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            return inv(
                "batch_size",
                self.batch_size.to_string(),
                &format!("must be in 1..={MAX_BATCH}"),
            );
        }
        if !(1..=MAX_BATCH).contains(&self.eval_batch_size) {
            return inv(
                "eval_batch_size",
                self.eval_batch_size.to_string(),
                &format!("must be in 1..={MAX_BATCH}"),
            );
        }
        // Used by the GCN (+ ZCA) preprocessing; checked here so that a bad
        // value fails before the data are read.
        let positive = |v: f32| v.is_finite() && v > 0.0;
        if !positive(self.data.gcn_scale) {
            return inv(
                "data.gcn_scale",
                self.data.gcn_scale.to_string(),
                "must be a positive number (the paper's is 55)",
            );
        }
        if !positive(self.data.zca_filter_bias) {
            return inv(
                "data.zca_filter_bias",
                self.data.zca_filter_bias.to_string(),
                "must be a positive number (the paper's is 0.1)",
            );
        }
        if self.data.train_subset == Some(0) {
            return inv(
                "data.train_subset",
                "0".into(),
                "must be at least 1 (leave it out for every image)",
            );
        }
        if self.data.test_subset == Some(0) {
            return inv(
                "data.test_subset",
                "0".into(),
                "must be at least 1 (leave it out for every image)",
            );
        }
        if self.data.workers > MAX_WORKERS {
            return inv(
                "data.workers",
                self.data.workers.to_string(),
                &format!("must be at most {MAX_WORKERS} (0: one per core)"),
            );
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return inv("lr", self.lr.to_string(), "must be positive and finite");
        }
        if let Some(lr) = self.lr_grid.iter().find(|l| !(**l > 0.0 && l.is_finite())) {
            return inv("lr_grid", lr.to_string(), "every rate must be positive");
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return inv("momentum", self.momentum.to_string(), "must be in [0, 1)");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return inv(
                "weight_decay",
                self.weight_decay.to_string(),
                "must be non-negative",
            );
        }
        if let Err(reason) = self.schedule.validate() {
            // As the config writes it, not as Rust prints it.
            let value = serde_json::to_string(&self.schedule)
                .unwrap_or_else(|_| format!("{:?}", self.schedule));
            return inv("schedule", value, &reason);
        }
        if self.max_steps == Some(0) {
            return inv("max_steps", "0".into(), "must be at least 1 when given");
        }
        if let Some(s) = &self.spec {
            s.validate()?;
            if new_run {
                self.check_spec_identity(s)?;
            }
        } else if !allcnn_models::registry()
            .iter()
            .any(|m| m.name == self.model)
        {
            let known: Vec<&str> = allcnn_models::registry().iter().map(|m| m.name).collect();
            return inv(
                "model",
                self.model.clone(),
                &format!("unknown model; known: {}", known.join(", ")),
            );
        }
        self.validate_data_settings()
    }

    /// A custom spec's class count and name against `classes` and the
    /// registered architectures.
    fn check_spec_identity(&self, s: &ArchSpec) -> Result<(), TrainError> {
        let inv = |field: &'static str, value: String, reason: &str| {
            Err(TrainError::InvalidConfig {
                field,
                value,
                reason: reason.to_string(),
            })
        };
        let maps = s.classes()?;
        // The spec's last convolution fixes the class count: another
        // `classes` was ignored without a word.
        if let Some(c) = self.classes.filter(|&c| c != maps) {
            return inv(
                "classes",
                c.to_string(),
                &format!(
                    "the spec `{}` ends in {maps} class maps; change its last convolution's `out`, or leave `classes` out",
                    s.name
                ),
            );
        }
        // A custom network under a registered name would carry the
        // paper's identity and error into its weights and model card.
        if allcnn_models::registry().iter().any(|m| m.name == s.name) {
            let registered = ArchSpec::by_name(&s.name, maps)?;
            if (registered.in_channels, &registered.layers) != (s.in_channels, &s.layers) {
                return inv(
                    "spec",
                    s.name.clone(),
                    "is the name of one of the paper's architectures, but these layers are not its layers; give the spec a name of its own",
                );
            }
        }
        Ok(())
    }

    fn validate_data_settings(&self) -> Result<(), TrainError> {
        self.data.augmentation.validate()?;
        self.data.eval_augmentation.validate()?;
        Ok(())
    }
}

/// A config file's contents as a TOML value (JSON by the `.json`
/// extension), its errors naming the file.
fn read_config_value(path: &Path) -> Result<toml::Value, TrainError> {
    let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
    let parse = |reason: String| TrainError::ConfigParse {
        source_name: path.display().to_string(),
        reason,
    };
    if path.extension().is_some_and(|e| e == "json") {
        let mut json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| parse(e.to_string()))?;
        // TOML has no null: an absent optional field reads the same.
        strip_nulls(&mut json);
        return toml::Value::try_from(json).map_err(|e| parse(e.to_string()));
    }
    toml::from_str(&text).map_err(|e| parse(e.to_string()))
}

fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// `over` laid onto `base`: tables merged key by key, anything else
/// replaced.
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// The settings in which two configs differ, as `key: A in the run, B asked`,
/// ignoring those that do not change the result (`data.path`,
/// `data.workers`).
pub(crate) fn config_differences(run: &TrainConfig, asked: &TrainConfig) -> Vec<String> {
    fn flatten(
        prefix: &str,
        v: &toml::Value,
        out: &mut std::collections::BTreeMap<String, String>,
    ) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let table = |c: &TrainConfig| {
        let mut m = std::collections::BTreeMap::new();
        if let Ok(t) = toml::Table::try_from(c) {
            flatten("", &toml::Value::Table(t), &mut m);
        }
        m.remove("data.path");
        m.remove("data.workers");
        m
    };
    let (a, b) = (table(run), table(asked));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&String>| v.map_or("(unset)".to_string(), Clone::clone);
            format!(
                "{k}: {} in the run, {} asked",
                show(a.get(k)),
                show(b.get(k))
            )
        })
        .collect()
}

#[cfg(test)]
mod differences_tests {
    use super::{config_differences, TrainConfig};

    #[test]
    fn config_differences_name_the_field() {
        let a = TrainConfig::preset("cifar10").unwrap();
        let mut b = a.clone();
        assert!(config_differences(&a, &b).is_empty());
        b.data.workers = 3;
        b.data.path = Some("/elsewhere".into());
        assert!(config_differences(&a, &b).is_empty());
        b.epochs = 2;
        let d = config_differences(&a, &b);
        assert_eq!(d, vec!["epochs: 350 in the run, 2 asked".to_string()]);
    }
}
