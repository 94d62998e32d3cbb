//! [`export_hub`]: a run directory's weights as a folder ready to upload as
//! a Hugging Face model repository (`model.safetensors`, `config.json`,
//! `README.md` model card).

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use allcnn_data::{preprocess::PreprocessKind, Preprocessing};
use allcnn_models::{ArchSpec, Layer, TrainingRecord, WeightsFile};
use candle_core::{Device, Tensor};
use serde::Serialize;
use serde_json::{json, Value};

use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::eval::EvalReport;
use crate::trainer::files;

/// File names of an exported Hub folder.
pub mod hub_files {
    /// The weights, self-describing.
    pub const WEIGHTS: &str = "model.safetensors";
    /// Architecture, classes, preprocessing, recipe and results as JSON.
    pub const CONFIG: &str = "config.json";
    /// The model card.
    pub const README: &str = "README.md";
    /// The evaluation of the exported file, when one was asked for
    /// ([`super::ExportOptions::evaluate_on`]).
    pub const EVAL: &str = "eval.json";
}

/// Which weights of a run to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightsChoice {
    /// `final.safetensors`, with the test evaluation of `eval.json`.
    #[default]
    Final,
    /// `best.safetensors`: the epoch with the best validation (else test)
    /// accuracy, with the accuracies measured at that epoch.
    Best,
}

impl WeightsChoice {
    /// The file in the run directory.
    pub fn file_name(self) -> &'static str {
        match self {
            WeightsChoice::Final => files::FINAL,
            WeightsChoice::Best => files::BEST,
        }
    }
}

impl fmt::Display for WeightsChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightsChoice::Final => "final",
            WeightsChoice::Best => "best",
        })
    }
}

impl FromStr for WeightsChoice {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self, TrainError> {
        match s {
            "final" => Ok(WeightsChoice::Final),
            "best" => Ok(WeightsChoice::Best),
            other => Err(TrainError::InvalidConfig {
                field: "weights",
                value: other.to_string(),
                reason: "use `best` or `final`".to_string(),
            }),
        }
    }
}

/// Settings of [`export_hub`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportOptions {
    /// Which weights (default [`WeightsChoice::Final`]).
    pub weights: WeightsChoice,
    /// Overwrite the export's files in a non-empty output folder.
    pub force: bool,
    /// `OWNER/REPO` the folder will be uploaded to, for the card's usage
    /// lines (default: the placeholder `OWNER/REPO`).
    pub repo_id: Option<String>,
    /// The license id in the card's front matter (default `mit`).
    pub license: String,
    /// The Hub dataset id in the card (default: guessed from the data path
    /// and the architecture: `cifar10`, `cifar100`, `imagenet-1k`).
    pub dataset: Option<String>,
    /// Store the ZCA whitening matrix in the compact low-rank form of this
    /// rank ([`Preprocessing::compress_whitening`]; `None`: the full matrix).
    /// Measure the accuracy of the exported file: the transform changes.
    pub whitening_rank: Option<usize>,
    /// Store the network's parameters as f16 (half the network's bytes;
    /// they load back as f32). Measure the accuracy of the exported file.
    pub half_weights: bool,
    /// Where and how the weights were made (`commit`, `hardware`,
    /// `wall_time`, ...): recorded as `allcnn.provenance.KEY` metadata, in
    /// `config.json` and in the card.
    pub provenance: BTreeMap<String, String>,
    /// A dataset (any format [`allcnn_data::info::open_dataset`] reads) on
    /// whose test split the exported `model.safetensors` itself is
    /// evaluated. Its figures become the export's results and its report is
    /// written as `eval.json` beside the card, in place of the figures the
    /// run recorded (which describe the run's own weights, and for the best
    /// epoch only the images the run evaluated on).
    pub evaluate_on: Option<PathBuf>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            weights: WeightsChoice::Final,
            force: false,
            repo_id: None,
            license: "mit".to_string(),
            dataset: None,
            whitening_rank: None,
            half_weights: false,
            provenance: BTreeMap::new(),
            evaluate_on: None,
        }
    }
}

impl ExportOptions {
    /// Sets [`ExportOptions::weights`].
    pub fn weights(mut self, choice: WeightsChoice) -> Self {
        self.weights = choice;
        self
    }

    /// Sets [`ExportOptions::force`].
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Sets [`ExportOptions::repo_id`].
    pub fn repo_id(mut self, id: impl Into<String>) -> Self {
        self.repo_id = Some(id.into());
        self
    }

    /// Sets [`ExportOptions::license`].
    pub fn license(mut self, license: impl Into<String>) -> Self {
        self.license = license.into();
        self
    }

    /// Sets [`ExportOptions::whitening_rank`].
    pub fn whitening_rank(mut self, rank: usize) -> Self {
        self.whitening_rank = Some(rank);
        self
    }

    /// Sets [`ExportOptions::half_weights`].
    pub fn half_weights(mut self, half: bool) -> Self {
        self.half_weights = half;
        self
    }

    /// Adds one [`ExportOptions::provenance`] entry.
    pub fn provenance(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.provenance.insert(key.into(), value.into());
        self
    }

    /// Sets [`ExportOptions::dataset`].
    pub fn dataset(mut self, id: impl Into<String>) -> Self {
        self.dataset = Some(id.into());
        self
    }

    /// Sets [`ExportOptions::evaluate_on`].
    pub fn evaluate_on(mut self, data: impl Into<PathBuf>) -> Self {
        self.evaluate_on = Some(data.into());
        self
    }
}

/// One measured result of the exported weights.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportResult {
    /// `test` or `validation`.
    pub split: String,
    /// Top-1 accuracy in `[0, 1]`.
    pub top1: f64,
    /// Top-5 accuracy, when measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top5: Option<f64>,
    /// Mean cross-entropy, when measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Images evaluated, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub examples: Option<u64>,
    /// Where the number comes from.
    pub source: String,
}

/// What [`export_hub`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    /// The output folder.
    pub out_dir: PathBuf,
    /// The weights exported.
    pub weights: WeightsChoice,
    /// The run file they came from.
    pub source: PathBuf,
    /// The files written (`model.safetensors`, `config.json`, `README.md`).
    pub files: Vec<PathBuf>,
    /// The architecture's name.
    pub model: String,
    /// The class count.
    pub classes: usize,
    /// The measured results recorded in the card.
    pub results: Vec<ExportResult>,
}

fn export_error(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Export {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The Hub dataset id and display name the run was most likely trained on.
fn guess_dataset(config: &TrainConfig, spec: &ArchSpec) -> Option<(String, String)> {
    let path = config
        .data
        .path
        .as_ref()
        .map(|p| {
            p.to_string_lossy()
                .to_ascii_lowercase()
                .replace(['-', '_'], "")
        })
        .unwrap_or_default();
    let pick = |id: &str, name: &str| Some((id.to_string(), name.to_string()));
    if path.contains("cifar100") {
        pick("cifar100", "CIFAR-100")
    } else if path.contains("cifar10") {
        pick("cifar10", "CIFAR-10")
    } else if path.contains("imagenet") || spec.name.contains("imagenet") {
        pick("imagenet-1k", "ImageNet")
    } else {
        None
    }
}

/// Whether `config` trained with data augmentation.
fn augmented(config: &TrainConfig) -> bool {
    config.data.augmentation != allcnn_data::Augmentation::None
}

/// The paper's CIFAR-10 test error for `spec` trained as `config` says:
/// Table 3's row without augmentation; with augmentation only All-CNN-C has
/// one (7.25%, flips and translations).
fn paper_error_for(spec: &ArchSpec, config: &TrainConfig) -> Option<f32> {
    let info = spec.info()?;
    match (augmented(config), spec.name.as_str()) {
        (false, _) => info.paper_error,
        (true, "all-cnn-c") => Some(7.25),
        (true, _) => None,
    }
}

fn dataset_display(id: &str) -> String {
    match id {
        "cifar10" => "CIFAR-10".to_string(),
        "cifar100" => "CIFAR-100".to_string(),
        "imagenet-1k" => "ImageNet".to_string(),
        other => other.to_string(),
    }
}

/// The preprocessing as JSON plus a sentence.
fn describe_preprocessing(meta_json: &str, pre: &Preprocessing) -> (Value, String) {
    let recorded: Value = serde_json::from_str(meta_json).unwrap_or(Value::Null);
    let text = match pre.kind() {
        PreprocessKind::Scale => "pixels scaled to [0, 1] (x / 255)".to_string(),
        PreprocessKind::Standardize => match pre.channel_stats() {
            Some((mean, std)) => {
                format!("per-channel standardisation of x / 255: mean {mean:?}, std {std:?}")
            }
            None => "per-channel standardisation".to_string(),
        },
        PreprocessKind::GcnZca => {
            let stored = match pre.whitening_rank() {
                Some(k) => format!(
                    "in the compact form W = c I + B^T diag(t) B with {k} f16 basis rows \
                     B (preprocess.zca.basis), their scales t (preprocess.zca.scales) and c = \
                     {} (metadata `isotropic`)",
                    recorded["isotropic"]
                ),
                None => "as a full matrix (preprocess.zca.whitening)".to_string(),
            };
            format!(
                "global contrast normalisation (scale {}) then ZCA whitening (filter bias {}), \
                 fitted on {} training images; the whitening matrix is stored in \
                 model.safetensors {stored}, with the mean in preprocess.zca.mean",
                recorded["gcn_scale"], recorded["filter_bias"], recorded["fitted_on"]
            )
        }
    };
    let mut value = json!({ "kind": pre.kind(), "description": text });
    if let Some((mean, std)) = pre.channel_stats() {
        value["mean"] = json!(mean);
        value["std"] = json!(std);
    }
    if let Value::Object(fields) = &recorded {
        for key in [
            "gcn_scale",
            "filter_bias",
            "fitted_on",
            "shape",
            "rank",
            "isotropic",
        ] {
            if let Some(v) = fields.get(key) {
                value[key] = v.clone();
            }
        }
    }
    (value, text)
}

fn layer_rows(spec: &ArchSpec) -> Vec<(String, String, String)> {
    let maps = spec.map_sizes(spec.input_size).unwrap_or_default();
    let mut maps = maps.into_iter();
    let mut rows = vec![(
        "input".to_string(),
        String::new(),
        format!(
            "{}x{}x{}",
            spec.in_channels, spec.input_size, spec.input_size
        ),
    )];
    for layer in &spec.layers {
        let (what, name) = match *layer {
            Layer::Dropout { rate } => {
                rows.push(("dropout".into(), format!("p = {rate}"), String::new()));
                continue;
            }
            Layer::Conv {
                kernel,
                out,
                stride,
                padding,
            } => (
                format!(
                    "{kernel}x{kernel} conv, {out} channels, stride {stride}, pad {padding}, ReLU"
                ),
                "conv",
            ),
            Layer::MaxPool => ("3x3 max-pool, stride 2, pad 1".to_string(), "pool"),
        };
        let (label, map) = maps
            .next()
            .map(|(n, (c, h, w))| (n.to_string(), format!("{c}x{h}x{w}")))
            .unwrap_or((name.to_string(), String::new()));
        rows.push((label, what, map));
    }
    rows.push((
        "output".into(),
        "global average over the class maps, softmax".into(),
        format!("{}", spec.classes().unwrap_or(0)),
    ));
    rows
}

fn percent(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

/// Writes `run_dir`'s final or best weights into `out_dir` as a folder ready
/// to upload as a Hugging Face model repository:
///
/// - `model.safetensors`: the weights with all their metadata (architecture,
///   classes, class names, preprocessing and its tensors), so
///   `allcnn predict --weights DIR/model.safetensors` needs no `--model`;
/// - `config.json`: architecture name and layers, classes and their names,
///   input size, preprocessing, the training recipe (the run's config, without
///   its local data path), the measured results and the allcnn version;
/// - `README.md`: a model card with Hugging Face front matter (library,
///   license, tags, dataset, accuracy), usage, recipe and results;
/// - `eval.json`, with [`ExportOptions::evaluate_on`] only: the evaluation
///   of the written `model.safetensors` itself on that dataset's test split
///   (per class and confusion matrix), whose figures then are the card's.
///
/// # Errors
/// [`TrainError::Export`] when the run has no such weights, they were never
/// evaluated (final weights need `eval.json`; best weights record their
/// epoch's accuracy), or `out_dir` is not empty and `force` is off;
/// [`TrainError::Io`], [`TrainError::ConfigParse`] and model errors for
/// unreadable files (and [`TrainError::Export`] for an invalid `eval.json`).
pub fn export_hub(
    run_dir: &Path,
    out_dir: &Path,
    options: &ExportOptions,
) -> Result<ExportSummary, TrainError> {
    export_hub_with_progress(run_dir, out_dir, options, &mut |_, _| {})
}

/// [`export_hub`], calling `progress(done, total)` with the images
/// evaluated so far while [`ExportOptions::evaluate_on`] is measured.
///
/// # Errors
/// As [`export_hub`]; with [`ExportOptions::evaluate_on`] also the data's
/// errors and [`TrainError::DataMismatch`] for data whose classes are not
/// the weights' (both found before anything is written). An evaluation
/// that fails on the way (an unreadable image) leaves no new file behind:
/// an earlier export in `out_dir` stays as it was.
pub fn export_hub_with_progress(
    run_dir: &Path,
    out_dir: &Path,
    options: &ExportOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ExportSummary, TrainError> {
    let (mut config, weights, source) = open_run(run_dir, options)?;
    let choice = options.weights;
    let spec = weights.model.spec().clone();
    let classes = weights.model.classes();
    let training = weights.meta.training();
    let (epoch, step) = (training.epoch, training.step);
    let (mut results, mut eval_report) =
        measured_results(run_dir, &source, choice, &training, &config)?;
    let eval_data = match &options.evaluate_on {
        Some(path) => {
            let data = crate::data::TrainData::open_test(path, &config.data)?;
            crate::eval::check_data_fits(&weights, &source.display().to_string(), &*data)?;
            Some(data)
        }
        None => None,
    };

    // Everything that can fail on bad input is read before the output
    // folder is touched, so a failed export leaves nothing behind.
    let (pre_value, pre_text) = match &weights.meta.preprocessing {
        Some(json) => {
            let pre = Preprocessing::from_parts(json, &weights.attachments)?;
            let (v, t) = describe_preprocessing(json, &pre);
            (v, Some(t))
        }
        None => (Value::Null, None),
    };

    let dataset = options
        .dataset
        .clone()
        .map(|id| {
            let name = dataset_display(&id);
            (id, name)
        })
        .or_else(|| guess_dataset(&config, &spec));

    let created = claim_out_dir(out_dir, options.force)?;

    // model.safetensors: the weights with all their metadata.
    let version = env!("CARGO_PKG_VERSION");
    let weights_path = out_dir.join(hub_files::WEIGHTS);
    let mut written = vec![weights_path.clone()];
    if let Some(data) = eval_data {
        // The file as written (f16, compressed whitening) is what users
        // load: measure it, not the run's weights. It takes its name only
        // once measured, so a failed evaluation leaves an earlier export
        // (--force) as it was, and a folder made for it is removed.
        let pending = out_dir.join(format!(".{}.pending", hub_files::WEIGHTS));
        let total = data.len() as u64;
        let augmentation = config.data.eval_augmentation;
        let measured =
            write_model(&weights, &pending, choice, options.half_weights).and_then(|_| {
                evaluate_exported(&pending, data, augmentation, &mut |done| {
                    progress(done, total)
                })
            });
        // The figures go into the file too, so it says what it scores
        // wherever it travels without its eval.json (the tensors are
        // written again as they were: the measurement holds).
        let measured = measured.and_then(|report| {
            let recorded = [
                ("allcnn.eval.top1", report.top1.to_string()),
                ("allcnn.eval.top5", report.top5.to_string()),
                ("allcnn.eval.examples", report.examples.to_string()),
            ];
            write_model_with(&weights, &pending, choice, options.half_weights, &recorded)
                .map(|_| report)
        });
        let report = match measured {
            Ok(report) => report,
            Err(e) => {
                let _ = std::fs::remove_file(&pending);
                if created {
                    let _ = std::fs::remove_dir(out_dir);
                }
                return Err(e);
            }
        };
        std::fs::rename(&pending, &weights_path).map_err(TrainError::io(&weights_path))?;
        let images = report.examples;
        // An image folder is a copy of the data set (CIFAR-10 as JPEG files
        // is not the binary original): name the folder the figure is on.
        let folder = options.evaluate_on.as_deref().filter(|p| {
            allcnn_data::info::detect_format(p)
                .is_ok_and(|(f, _)| f == allcnn_data::info::DatasetFormat::ImageFolder)
        });
        let on = match (dataset.as_ref(), folder.and_then(|p| p.file_name())) {
            (Some((_, name)), Some(dir)) => {
                format!(" of {name} as the image folder `{}`", dir.to_string_lossy())
            }
            (Some((_, name)), None) => format!(" of {name}"),
            (None, Some(dir)) => format!(" of the image folder `{}`", dir.to_string_lossy()),
            (None, None) => String::new(),
        };
        results.retain(|r| r.split != "test");
        results.insert(
            0,
            ExportResult {
                split: "test".into(),
                top1: report.top1,
                top5: Some(report.top5),
                loss: Some(report.loss),
                examples: Some(images),
                source: format!(
                    "evaluation of this file ({}) on the {images} test images{on}",
                    hub_files::WEIGHTS
                ),
            },
        );
        let eval_path = out_dir.join(hub_files::EVAL);
        let text = serde_json::to_string_pretty(&report).expect("JSON values serialise") + "\n";
        allcnn_models::write_atomic(&eval_path, text.as_bytes())?;
        written.push(eval_path);
        eval_report = Some(report);
    } else {
        write_model(&weights, &weights_path, choice, options.half_weights)?;
        // An earlier export's evaluation would describe another file.
        let stale = out_dir.join(hub_files::EVAL);
        if stale.is_file() {
            std::fs::remove_file(&stale).map_err(TrainError::io(&stale))?;
        }
    }

    // config.json.
    let class_names: Option<Vec<String>> = weights.meta.class_names().ok().flatten();
    let input_size = weights.meta.input_size.unwrap_or(spec.input_size);
    config.data.path = None; // a path on the training machine
    let paper_error = paper_error_for(&spec, &config);
    let id2label: Option<BTreeMap<String, String>> = class_names.as_ref().map(|n| {
        n.iter()
            .enumerate()
            .map(|(i, name)| (i.to_string(), name.clone()))
            .collect()
    });
    let config_json = HubConfig {
        library_name: "allcnn",
        allcnn_version: version,
        architecture: &spec.name,
        spec: &spec,
        num_classes: classes,
        class_names: class_names.as_deref(),
        id2label,
        in_channels: spec.in_channels,
        input_size,
        parameters: spec.param_count(),
        preprocessing: pre_value,
        weights: WeightsInfo {
            file: hub_files::WEIGHTS,
            exported: choice,
            epoch,
            step,
        },
        dataset: dataset.as_ref().map(|(id, _)| id.as_str()),
        results: &results,
        paper_cifar10_error_percent: paper_error.map(|e| (f64::from(e) * 100.0).round() / 100.0),
        provenance: &options.provenance,
        training: &config,
    };
    let config_path_out = out_dir.join(hub_files::CONFIG);
    let text = serde_json::to_string_pretty(&config_json).expect("JSON values serialise") + "\n";
    allcnn_models::write_atomic(&config_path_out, text.as_bytes())?;

    // README.md.
    let card = model_card(&CardInput {
        spec: &spec,
        classes,
        class_names: class_names.as_deref(),
        input_size,
        preprocessing: pre_text.as_deref(),
        config: &config,
        results: &results,
        eval: eval_report.as_ref(),
        choice,
        epoch,
        dataset: dataset.as_ref(),
        paper_error,
        options,
        version,
    });
    let readme_path = out_dir.join(hub_files::README);
    allcnn_models::write_atomic(&readme_path, card.as_bytes())?;

    Ok(ExportSummary {
        out_dir: out_dir.to_path_buf(),
        weights: choice,
        source,
        files: {
            written.extend([config_path_out, readme_path]);
            written
        },
        model: spec.name.clone(),
        classes,
        results,
    })
}

/// The run's config and chosen weights (with the requested whitening rank
/// and provenance applied), and the weights' path.
fn open_run(
    run_dir: &Path,
    options: &ExportOptions,
) -> Result<(TrainConfig, WeightsFile, PathBuf), TrainError> {
    let config_path = run_dir.join(files::CONFIG);
    if !run_dir.exists() {
        return Err(export_error(
            run_dir,
            "no such folder: give the run directory that `allcnn train --out` made",
        ));
    }
    if !config_path.is_file() {
        return Err(export_error(
            run_dir,
            format!(
                "not a run directory (no {}): give the folder that `allcnn train --out` made",
                files::CONFIG
            ),
        ));
    }
    let config = TrainConfig::from_file(&config_path)?;
    let choice = options.weights;
    let source = run_dir.join(choice.file_name());
    if !source.is_file() {
        // Point at the other choice only where that file exists.
        let has = |f: &str| run_dir.join(f).is_file();
        let reason = match choice {
            WeightsChoice::Final => format!(
                "the run has no {} (is it unfinished or interrupted? resume it with `allcnn train --resume {}`{})",
                files::FINAL,
                run_dir.display(),
                if has(files::BEST) {
                    ", or export --weights best"
                } else {
                    "; it has no best.safetensors either: no epoch has ended, or the run has no validation or test split to choose one"
                }
            ),
            WeightsChoice::Best => format!(
                "the run has no {} (no validation or test split chose a best epoch){}",
                files::BEST,
                if has(files::FINAL) {
                    "; export --weights final".to_string()
                } else {
                    format!(
                        " and no {} yet: finish it with `allcnn train --resume {}` and export that",
                        files::FINAL,
                        run_dir.display()
                    )
                }
            ),
        };
        return Err(export_error(run_dir, reason));
    }
    let mut weights = WeightsFile::load(&source, &Device::Cpu)?;
    if choice == WeightsChoice::Final {
        refuse_stale_final(run_dir, &config, &weights)?;
    }
    if let Some(rank) = options.whitening_rank {
        // Said, not ignored: the rank applies to a ZCA whitening only.
        let json = weights.meta.preprocessing.clone();
        let pre = json
            .as_deref()
            .map(|j| Preprocessing::from_parts(j, &weights.attachments))
            .transpose()?;
        let Some(pre) = pre.filter(|p| p.zca().is_some()) else {
            return Err(export_error(
                &source,
                format!(
                    "a whitening rank ({rank}) was asked for, but these weights record {}: there is no whitening matrix to compress; leave the rank out",
                    match &json {
                        Some(_) => "a preprocessing without ZCA whitening",
                        None => "no preprocessing",
                    }
                ),
            ));
        };
        let pre = pre.compress_whitening(rank)?;
        let (json, parts) = pre.to_parts();
        weights.meta.preprocessing = Some(json);
        weights.attachments = parts.into_iter().collect();
    }
    for (k, v) in &options.provenance {
        weights
            .meta
            .extra
            .insert(format!("allcnn.provenance.{k}"), v.clone());
    }
    Ok((config, weights, source))
}

/// Fails where the run has trained on past its final weights: a finished
/// run resumed for more epochs and stopped before their end keeps the
/// old `final.safetensors` (and `eval.json`), which the card would put
/// beside the new length's recipe as the run's final weights.
fn refuse_stale_final(
    run_dir: &Path,
    config: &TrainConfig,
    weights: &WeightsFile,
) -> Result<(), TrainError> {
    let Some(step) = weights.meta.training().step else {
        return Ok(());
    };
    // A run directory without a readable checkpoint has nothing newer.
    let Ok(ckpt) = crate::checkpoint::Checkpoint::read(&run_dir.join(files::CHECKPOINT)) else {
        return Ok(());
    };
    if ckpt.state.step <= step {
        return Ok(());
    }
    Err(export_error(
        run_dir,
        format!(
            "{} holds the weights of step {step}, but the run has trained on to step {} (in epoch {} of {}) since: it was resumed for more epochs and has not finished them; finish it with `allcnn train --resume {}` and export then, or export --weights best",
            files::FINAL,
            ckpt.state.step,
            ckpt.state.epoch + 1,
            config.epochs,
            run_dir.display()
        ),
    ))
}

/// The measured results of the chosen weights: the run's `eval.json` for
/// the final weights, the accuracies recorded at the best epoch for the
/// best.
fn measured_results(
    run_dir: &Path,
    source: &Path,
    choice: WeightsChoice,
    training: &TrainingRecord,
    config: &TrainConfig,
) -> Result<(Vec<ExportResult>, Option<EvalReport>), TrainError> {
    let mut results = Vec::new();
    match choice {
        WeightsChoice::Final => {
            let eval_path = run_dir.join(files::EVAL);
            if !eval_path.is_file() {
                return Err(export_error(
                    run_dir,
                    format!(
                        "the final weights were never evaluated (no {}: the run had no test split); \
                         export --weights best if a validation split chose one",
                        files::EVAL
                    ),
                ));
            }
            let report = EvalReport::read(&eval_path, |e| {
                export_error(&eval_path, format!("not a valid evaluation report: {e}"))
            })?;
            results.push(ExportResult {
                split: "test".into(),
                top1: report.top1,
                top5: Some(report.top5),
                loss: Some(report.loss),
                examples: Some(report.examples),
                source: format!("{} (test split, after the last epoch)", files::EVAL),
            });
            Ok((results, Some(report)))
        }
        WeightsChoice::Best => {
            let at = training
                .epoch
                .map(|e| format!("epoch {e}"))
                .unwrap_or_default();
            // How many images the run evaluated on at each epoch, where the
            // config says: a test subset is not the whole test split.
            let validation = (config.data.validation > 0).then_some(config.data.validation);
            // A test subset larger than the test split is the whole split,
            // so it is "up to" its size; a validation hold-out is exact.
            let recorded = [
                (training.val_accuracy, "validation", validation, "", ""),
                (
                    training.test_accuracy,
                    "test",
                    config.data.test_subset,
                    "up to ",
                    " (data.test_subset)",
                ),
            ];
            for (recorded, split, images, upto, why) in recorded {
                if let Some(top1) = recorded {
                    let on = images.map_or(String::new(), |n| {
                        format!(" on {upto}{n} {split} images{why}")
                    });
                    results.push(ExportResult {
                        split: split.into(),
                        top1,
                        top5: None,
                        loss: None,
                        examples: images.filter(|_| upto.is_empty()).map(|n| n as u64),
                        source: format!("evaluation at the best epoch ({at}){on}"),
                    });
                }
            }
            if results.is_empty() {
                return Err(export_error(
                    source,
                    "the best weights record no evaluated accuracy",
                ));
            }
            Ok((results, None))
        }
    }
}

/// Evaluates the written `model.safetensors` (reloaded as users load it)
/// on `data`, with the run's evaluation transform (`augmentation`).
fn evaluate_exported(
    path: &Path,
    data: std::sync::Arc<dyn allcnn_data::Dataset>,
    augmentation: allcnn_data::Augmentation,
    progress: &mut dyn FnMut(u64),
) -> Result<EvalReport, TrainError> {
    let w = WeightsFile::load(path, &Device::Cpu)?;
    crate::eval::evaluate_weights_file(
        &w,
        &path.display().to_string(),
        data,
        256,
        augmentation,
        &Device::Cpu,
        progress,
    )
}

/// Creates `out_dir`, refusing a file or (without `force`) a non-empty
/// folder; whether this call created it.
fn claim_out_dir(out_dir: &Path, force: bool) -> Result<bool, TrainError> {
    if out_dir.is_file() {
        return Err(export_error(out_dir, "exists and is a file, not a folder"));
    }
    let non_empty = std::fs::read_dir(out_dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if non_empty && !force {
        return Err(export_error(
            out_dir,
            "the folder is not empty; choose another --out or pass --force to overwrite",
        ));
    }
    let created = !out_dir.exists();
    std::fs::create_dir_all(out_dir).map_err(TrainError::io(out_dir))?;
    Ok(created)
}

/// `model.safetensors`: the weights with all their metadata, the version
/// and which weights were exported, in f16 when `half`.
fn write_model(
    weights: &WeightsFile,
    weights_path: &Path,
    choice: WeightsChoice,
    half: bool,
) -> Result<(), TrainError> {
    write_model_with(weights, weights_path, choice, half, &[])
}

/// How images of another size are brought to a model's `side` x `side`
/// input (as `allcnn_data::input::fit` does).
fn input_sizing(side: usize) -> String {
    if side < allcnn_data::input::CENTRE_CROP_FROM {
        format!(
            "Images of another size are resized to {side}x{side} (the aspect ratio is not kept)."
        )
    } else {
        format!(
            "Images are resized, the shorter side to {}, then centre-cropped to {side}x{side}.",
            allcnn_data::input::resize_before_crop(side)
        )
    }
}

/// [`write_model`] with `extra` metadata entries.
fn write_model_with(
    weights: &WeightsFile,
    weights_path: &Path,
    choice: WeightsChoice,
    half: bool,
    extra: &[(&str, String)],
) -> Result<(), TrainError> {
    let mut meta = weights.meta.clone();
    for (k, v) in extra {
        meta.extra.insert(k.to_string(), v.clone());
    }
    meta.extra.insert(
        "allcnn.version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    meta.extra
        .insert("allcnn.export.weights".to_string(), choice.to_string());
    let mut attachments: Vec<(String, Tensor)> = weights
        .attachments
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    attachments.sort_by(|a, b| a.0.cmp(&b.0));
    let dtype = if half {
        candle_core::DType::F16
    } else {
        candle_core::DType::F32
    };
    weights
        .model
        .save_as(weights_path, &meta, &attachments, dtype)?;
    Ok(())
}

/// `config.json` (fields in this order).
#[derive(Serialize)]
struct HubConfig<'a> {
    library_name: &'static str,
    allcnn_version: &'a str,
    architecture: &'a str,
    num_classes: usize,
    class_names: Option<&'a [String]>,
    id2label: Option<BTreeMap<String, String>>,
    in_channels: usize,
    input_size: usize,
    parameters: usize,
    preprocessing: Value,
    weights: WeightsInfo,
    dataset: Option<&'a str>,
    results: &'a [ExportResult],
    paper_cifar10_error_percent: Option<f64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    provenance: &'a BTreeMap<String, String>,
    spec: &'a ArchSpec,
    training: &'a TrainConfig,
}

#[derive(Serialize)]
struct WeightsInfo {
    file: &'static str,
    exported: WeightsChoice,
    epoch: Option<u64>,
    step: Option<u64>,
}

struct CardInput<'a> {
    spec: &'a ArchSpec,
    classes: usize,
    class_names: Option<&'a [String]>,
    input_size: usize,
    preprocessing: Option<&'a str>,
    config: &'a TrainConfig,
    results: &'a [ExportResult],
    eval: Option<&'a EvalReport>,
    choice: WeightsChoice,
    epoch: Option<u64>,
    dataset: Option<&'a (String, String)>,
    paper_error: Option<f32>,
    options: &'a ExportOptions,
    version: &'a str,
}

/// Quotes a YAML scalar.
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

fn model_card(c: &CardInput<'_>) -> String {
    let repo = c.options.repo_id.as_deref().unwrap_or("OWNER/REPO");
    // The model's name on the Hub: its repository's, else the architecture
    // (not the placeholder's "REPO").
    let name = match &c.options.repo_id {
        Some(r) => r.rsplit('/').next().unwrap_or(r),
        None => c.spec.name.as_str(),
    };
    let test = c.results.iter().find(|r| r.split == "test");
    let mut s = String::new();

    // Front matter.
    s.push_str("---\nlibrary_name: allcnn\n");
    let _ = writeln!(s, "license: {}", yaml_str(&c.options.license));
    s.push_str("pipeline_tag: image-classification\ntags:\n");
    for tag in [
        "image-classification",
        "all-convolutional-net",
        c.spec.name.as_str(),
        "candle",
        "safetensors",
    ] {
        let _ = writeln!(s, "- {}", yaml_str(tag));
    }
    if let Some((id, _)) = c.dataset {
        let _ = writeln!(s, "datasets:\n- {}", yaml_str(id));
    }
    s.push_str("metrics:\n- accuracy\n");
    if let Some(t) = test {
        let (dtype, dname) = c
            .dataset
            .map(|(id, n)| (id.as_str(), n.as_str()))
            .unwrap_or(("imagefolder", "image folder"));
        let _ = write!(
            s,
            "model-index:\n- name: {}\n  results:\n  - task:\n      type: image-classification\n      name: Image Classification\n    dataset:\n      type: {}\n      name: {}\n      split: test\n    metrics:\n    - type: accuracy\n      value: {:.4}\n      name: Top-1 accuracy\n",
            yaml_str(name),
            yaml_str(dtype),
            yaml_str(dname),
            t.top1
        );
        if let Some(t5) = t.top5.filter(|_| c.classes > 5) {
            let _ = writeln!(
                s,
                "    - type: top_5_accuracy\n      value: {t5:.4}\n      name: Top-5 accuracy"
            );
        }
    }
    s.push_str("---\n\n");

    // Title and summary.
    let data_name = c
        .dataset
        .map(|(_, n)| n.as_str())
        .unwrap_or("an image folder");
    let _ = writeln!(s, "# {} ({})\n", c.spec.name, data_name);
    let _ = writeln!(
        s,
        "`{}` from Springenberg et al., *Striving for Simplicity: The All Convolutional Net* \
         ([arXiv:1412.6806](https://arxiv.org/abs/1412.6806)), trained on {} with \
         [allcnn](https://github.com/allcnn/allcnn) {} (Rust, on candle): {} classes, {} \
         parameters, {}x{} RGB input. These are the run's **{}** weights{}.\n",
        c.spec.name,
        data_name,
        c.version,
        c.classes,
        c.spec.param_count(),
        c.input_size,
        c.input_size,
        c.choice,
        c.epoch.map(|e| format!(" (epoch {e})")).unwrap_or_default()
    );

    // Results.
    s.push_str("## Results\n\n| split | images | top-1 accuracy | error | top-5 accuracy | loss | measured by |\n|---|---|---|---|---|---|---|\n");
    for r in c.results {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2}% | {} | {} | {} |",
            r.split,
            r.examples.map(|n| n.to_string()).unwrap_or("-".into()),
            percent(r.top1),
            100.0 * (1.0 - r.top1),
            r.top5
                .filter(|_| c.classes > 5)
                .map(percent)
                .unwrap_or("-".into()),
            r.loss.map(|l| format!("{l:.4}")).unwrap_or("-".into()),
            r.source
        );
    }
    if let Some(e) = c.paper_error {
        let setting = if augmented(c.config) {
            "with flips and translations (its comparison on augmented CIFAR-10)"
        } else {
            "without augmentation (Table 3)"
        };
        let _ = writeln!(
            s,
            "\nThe paper reports {e:.2}% CIFAR-10 test error for `{}` {setting}.",
            c.spec.name
        );
    }
    if let Some(report) = c.eval {
        s.push_str("\nPer-class test accuracy:\n\n| class | images | accuracy |\n|---|---|---|\n");
        for r in &report.per_class {
            let _ = writeln!(s, "| {} | {} | {} |", r.name, r.count, percent(r.accuracy));
        }
    }

    if !c.options.provenance.is_empty() {
        s.push_str("\n## Provenance\n\n| what | value |\n|---|---|\n");
        // One table row each, whatever they hold: line breaks become
        // spaces, and `|` is escaped.
        let cell = |t: &str| {
            t.split(|ch: char| ch.is_control())
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
                .replace('|', "\\|")
        };
        for (k, v) in &c.options.provenance {
            let _ = writeln!(s, "| {} | {} |", cell(k), cell(v));
        }
    }

    // Usage.
    let _ = write!(
        s,
        "\n## Usage\n\nWith the `allcnn` command line (`cargo install allcnn-cli`), which \
         downloads the weights once into the Hugging Face cache:\n\n```sh\n\
         allcnn predict --weights hf://{repo} image.png\n\
         allcnn predict --weights hf://{repo} --offline image.png   # from the cache only\n\
         allcnn viz --weights hf://{repo} --method guided-backprop --input image.png --out maps/\n```\n\n\
         From Rust (`allcnn-models` with the `hub` feature):\n\n```rust\n\
         use allcnn_models::hub::{{fetch, HubOptions}};\n\
         use allcnn_models::WeightsFile;\n\n\
         let path = fetch(\"hf://{repo}\", &HubOptions::default())?;\n\
         let weights = WeightsFile::load(&path, &candle_core::Device::Cpu)?;\n\
         // weights.model.forward(&images) gives the logits; the preprocessing is\n\
         // weights.meta.preprocessing with the tensors in weights.attachments.\n```\n\n\
         `model.safetensors` is self-describing: its metadata records the architecture \
         (`allcnn.spec`), the classes (`allcnn.classes`, `allcnn.class_names`) and the \
         preprocessing (`allcnn.preprocessing`, with its tensors `preprocess.*`). The \
         tensors `conv{{i}}.weight` / `conv{{i}}.bias` use PyTorch's layout.\n"
    );

    // Model details.
    s.push_str("\n## Model\n\n| layer | operation | output (CxHxW) |\n|---|---|---|\n");
    for (label, what, map) in layer_rows(c.spec) {
        let _ = writeln!(s, "| {label} | {what} | {map} |");
    }
    if let Some(names) = c.class_names {
        let _ = writeln!(s, "\nClasses, in label order: {}.", names.join(", "));
    }
    let _ = writeln!(
        s,
        "\nPreprocessing: {}. {}",
        c.preprocessing.unwrap_or("none recorded"),
        input_sizing(c.input_size)
    );

    // Recipe.
    let toml = toml::to_string(c.config).unwrap_or_default();
    let _ = write!(
        s,
        "\n## Training recipe\n\nThe run's `config.toml` without its local data path \
         (momentum SGD; `allcnn train --config recipe.toml --data DATA --out RUN` repeats it):\n\n\
         ```toml\n{toml}```\n"
    );

    // Citation.
    s.push_str(
        "\n## Citation\n\n```bibtex\n@inproceedings{springenberg2015striving,\n  \
         title     = {Striving for Simplicity: The All Convolutional Net},\n  \
         author    = {Springenberg, Jost Tobias and Dosovitskiy, Alexey and Brox, Thomas and Riedmiller, Martin},\n  \
         booktitle = {ICLR (workshop track)},\n  year      = {2015},\n  \
         url       = {https://arxiv.org/abs/1412.6806}\n}\n```\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The card cites the paper's number for the setting the model was
    /// trained in: Table 3 without augmentation, 7.25% for All-CNN-C with
    /// flips and translations, nothing for the models the paper did not
    /// train with augmentation.
    #[test]
    fn paper_error_follows_the_training_setting() {
        let plain = TrainConfig::preset("cifar10").unwrap();
        let aug = TrainConfig::preset("cifar10-aug").unwrap();
        let spec = |name: &str| ArchSpec::by_name(name, 10).unwrap();
        assert_eq!(paper_error_for(&spec("all-cnn-c"), &plain), Some(9.08));
        assert_eq!(paper_error_for(&spec("all-cnn-c"), &aug), Some(7.25));
        assert_eq!(paper_error_for(&spec("model-a"), &plain), Some(12.47));
        assert_eq!(paper_error_for(&spec("model-a"), &aug), None);
    }

    /// A missing weights file points at the other choice only where that
    /// file exists, so the two hints never send the user in a circle.
    #[test]
    fn a_missing_weights_file_suggests_only_what_exists() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        // No folder at all, then a folder that is not a run: told apart.
        let err = |run: &Path| {
            open_run(run, &ExportOptions::default())
                .unwrap_err()
                .to_string()
        };
        assert!(
            err(&run.join("nope")).contains("nope: no such folder"),
            "{}",
            err(&run.join("nope"))
        );
        assert!(
            err(run).contains("not a run directory (no config.toml)"),
            "{}",
            err(run)
        );
        let toml = TrainConfig::preset("cifar10").unwrap().to_toml();
        std::fs::write(run.join(files::CONFIG), toml).unwrap();
        let reason = |weights: WeightsChoice| {
            let options = ExportOptions {
                weights,
                ..ExportOptions::default()
            };
            match open_run(run, &options) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{weights:?} exported from a run without it"),
            }
        };
        // Neither file: no epoch has ended; neither message names the other.
        let f = reason(WeightsChoice::Final);
        assert!(
            f.contains("no best.safetensors either") && !f.contains("--weights best"),
            "{f}"
        );
        let b = reason(WeightsChoice::Best);
        assert!(
            b.contains("no final.safetensors yet") && !b.contains("--weights final"),
            "{b}"
        );
        assert!(b.contains("allcnn train --resume"), "{b}");
        // One of them: the other choice is offered.
        std::fs::write(run.join(files::BEST), b"").unwrap();
        assert!(reason(WeightsChoice::Final).contains("or export --weights best"));
        std::fs::remove_file(run.join(files::BEST)).unwrap();
        std::fs::write(run.join(files::FINAL), b"").unwrap();
        assert!(reason(WeightsChoice::Best).contains("; export --weights final"));
    }

    /// The best epoch's recorded accuracy says how many images it was
    /// measured on when the run evaluated a test subset or a validation
    /// split, so a 2,000-image figure does not pass for the test split's.
    #[test]
    fn best_epoch_results_name_the_images_they_were_measured_on() {
        let training = TrainingRecord {
            step: Some(100),
            epoch: Some(7),
            val_accuracy: Some(0.5),
            test_accuracy: Some(0.75),
        };
        let mut config = TrainConfig::preset("cifar10").unwrap();
        config.data.test_subset = Some(2000);
        config.data.validation = 5000;
        let p = Path::new("run");
        let (results, report) =
            measured_results(p, p, WeightsChoice::Best, &training, &config).unwrap();
        assert!(report.is_none());
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].split, "validation");
        assert_eq!(results[0].examples, Some(5000));
        assert_eq!(
            results[0].source,
            "evaluation at the best epoch (epoch 7) on 5000 validation images"
        );
        assert_eq!(results[1].split, "test");
        assert_eq!(results[1].top1, 0.75);
        assert_eq!(results[1].examples, None, "the split may be smaller");
        assert_eq!(
            results[1].source,
            "evaluation at the best epoch (epoch 7) on up to 2000 test images (data.test_subset)"
        );

        // The whole test split: no count is claimed.
        config.data.test_subset = None;
        config.data.validation = 0;
        let (results, _) = measured_results(p, p, WeightsChoice::Best, &training, &config).unwrap();
        assert_eq!(results[1].examples, None);
        assert_eq!(results[1].source, "evaluation at the best epoch (epoch 7)");
    }
}
