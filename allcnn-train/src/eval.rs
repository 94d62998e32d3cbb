//! Evaluation: top-1 / top-5 accuracy, mean loss, per-class accuracy and the
//! confusion matrix.

use std::path::Path;
use std::sync::Arc;

use allcnn_data::{Augmentation, DataLoader, Dataset, Preprocessing};
use allcnn_models::{AllCnn, WeightsFile};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{CandleContext, TrainError};

/// Accuracy of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassReport {
    /// The class name.
    pub name: String,
    /// Test examples of the class.
    pub count: u64,
    /// Fraction of them classified correctly.
    pub accuracy: f64,
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Examples evaluated.
    pub examples: u64,
    /// Top-1 accuracy in `[0, 1]`.
    pub top1: f64,
    /// Top-5 accuracy in `[0, 1]` (1 when there are at most 5 classes).
    pub top5: f64,
    /// Mean softmax cross-entropy.
    pub loss: f64,
    /// Per-class accuracy, in label order.
    pub per_class: Vec<ClassReport>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

impl EvalReport {
    /// Reads an `eval.json` written by the trainer. An I/O failure names
    /// the file; a text that is not a report is passed to `invalid` (the
    /// parser's message) for the caller to turn into its own error.
    pub(crate) fn read(
        path: &Path,
        invalid: impl FnOnce(String) -> TrainError,
    ) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
        serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))
    }

    /// Top-1 error in percent, as the paper reports it.
    pub fn error_percent(&self) -> f64 {
        100.0 * (1.0 - self.top1)
    }
}

/// Evaluates `model` (eval mode, no dropout) on every batch of `loader`.
///
/// # Errors
/// [`TrainError::DataMismatch`] when a label is out of the model's range;
/// data and candle errors.
pub fn evaluate(model: &AllCnn, loader: &DataLoader) -> Result<EvalReport, TrainError> {
    evaluate_with_progress(model, loader, &mut |_| {})
}

/// As [`evaluate`], calling `progress` with the number of examples done
/// after every batch (for a progress bar).
///
/// # Errors
/// As [`evaluate`].
pub fn evaluate_with_progress(
    model: &AllCnn,
    loader: &DataLoader,
    progress: &mut dyn FnMut(u64),
) -> Result<EvalReport, TrainError> {
    let classes = model.classes();
    let names: Vec<String> = {
        let n = loader.dataset().class_names();
        if n.len() == classes {
            n.to_vec()
        } else {
            (0..classes).map(|i| format!("class {i}")).collect()
        }
    };
    let mut confusion = vec![vec![0u64; classes]; classes];
    // A trainable model (the trainer's, its parameters `Var`s) would record
    // a graph per batch and miss the inference path: evaluate without it.
    let model = &model.detach();
    let (mut n, mut top5_hits, mut loss_sum) = (0u64, 0u64, 0f64);
    for batch in loader.epoch(0) {
        let batch = batch?;
        let logits = model.forward(&batch.images)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &batch.labels)
            .and_then(|l| l.to_dtype(DType::F64))
            .and_then(|l| l.to_scalar::<f64>())
            .ctx(|| "evaluation loss".to_string())?;
        let rows: Vec<Vec<f32>> = logits.to_vec2().ctx(|| "reading logits".to_string())?;
        let labels: Vec<u32> = batch
            .labels
            .to_vec1()
            .ctx(|| "reading labels".to_string())?;
        loss_sum += loss * rows.len() as f64;
        for (row, &label) in rows.iter().zip(&labels) {
            let label = label as usize;
            if label >= classes {
                return Err(TrainError::DataMismatch {
                    reason: format!("label {label} but the model has {classes} classes"),
                });
            }
            let pred = argmax(row);
            confusion[label][pred] += 1;
            // Rank of the true class: how many logits beat it (ties favour it).
            let beaten_by = row.iter().filter(|&&v| v > row[label]).count();
            if beaten_by < 5 {
                top5_hits += 1;
            }
            n += 1;
        }
        progress(n);
    }
    let correct: u64 = (0..classes).map(|c| confusion[c][c]).sum();
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let per_class = names
        .into_iter()
        .enumerate()
        .map(|(c, name)| {
            let count: u64 = confusion[c].iter().sum();
            ClassReport {
                name,
                count,
                accuracy: ratio(confusion[c][c], count),
            }
        })
        .collect();
    Ok(EvalReport {
        examples: n,
        top1: ratio(correct, n),
        top5: ratio(top5_hits, n),
        loss: if n == 0 { 0.0 } else { loss_sum / n as f64 },
        per_class,
        confusion,
    })
}

/// Loads self-describing weights (as `best.safetensors` / `final.safetensors`
/// of a run) and evaluates them on `data` with the preprocessing stored in
/// the file: what `allcnn eval` calls.
///
/// # Errors
/// [`TrainError::Model`] when the file cannot be loaded,
/// [`TrainError::DataMismatch`] when it records no preprocessing or the
/// classes differ; as [`evaluate`] otherwise.
pub fn evaluate_weights(
    weights: &Path,
    data: Arc<dyn Dataset>,
    batch_size: usize,
    augmentation: Augmentation,
    device: &Device,
) -> Result<EvalReport, TrainError> {
    let w = WeightsFile::load(weights, device)?;
    evaluate_weights_file(
        &w,
        &weights.display().to_string(),
        data,
        batch_size,
        augmentation,
        device,
        &mut |_| {},
    )
}

/// [`evaluate_weights`] for weights already loaded (e.g. the shipped
/// `allcnn_models::pretrained` ones); `name` stands for them in errors, and
/// `progress` is called as by [`evaluate_with_progress`].
///
/// # Errors
/// As [`evaluate_weights`], without the loading errors.
pub fn evaluate_weights_file(
    w: &WeightsFile,
    name: &str,
    data: Arc<dyn Dataset>,
    batch_size: usize,
    augmentation: Augmentation,
    device: &Device,
    progress: &mut dyn FnMut(u64),
) -> Result<EvalReport, TrainError> {
    let json = w
        .meta
        .preprocessing
        .as_deref()
        .ok_or_else(|| TrainError::DataMismatch {
            reason: format!(
                "{name} records no preprocessing: cannot tell how to normalise the images, so no accuracy would mean anything; the weights that `allcnn train` and `allcnn export-hub` write record it, and a file converted from elsewhere can be given the record (`allcnn.preprocessing` metadata, docs/weights-format.md)"
            ),
        })?;
    let pre = Preprocessing::from_parts(json, &w.attachments)?;
    check_data_fits(w, name, &*data)?;
    let loader = crate::data::eval_loader(data, &pre, batch_size, augmentation, 0, device)?;
    evaluate_with_progress(&w.model, &loader, progress)
}

/// Refuses data with another class count than the weights (`name` in
/// errors), or other class names ([`check_class_names`]).
pub(crate) fn check_data_fits(
    w: &WeightsFile,
    name: &str,
    data: &dyn Dataset,
) -> Result<(), TrainError> {
    if data.num_classes() != w.model.classes() {
        return Err(TrainError::DataMismatch {
            reason: format!(
                "the model of {name} has {} classes, the data {}: give weights trained on these classes, or data with the weights' classes",
                w.model.classes(),
                data.num_classes()
            ),
        });
    }
    check_class_names(name, w.class_names().as_deref(), data.class_names())
}

/// Refuses data whose classes, in label order, are not the ones the
/// weights were trained on (`trained`, where the file records them): an
/// image folder with a renamed or extra class folder shifts every label
/// after it, and the accuracy would be wrong without a sign.
fn check_class_names(
    name: &str,
    trained: Option<&[String]>,
    data: &[String],
) -> Result<(), TrainError> {
    let Some(trained) = trained else {
        return Ok(());
    };
    let Some(label) = (0..trained.len().max(data.len())).find(|&i| trained.get(i) != data.get(i))
    else {
        return Ok(());
    };
    let show = |n: Option<&String>| n.map_or("nothing".to_string(), |n| format!("`{n}`"));
    Err(TrainError::DataMismatch {
        reason: format!(
            "label {label} is {} in {name} but {} in the data (classes in label order: \
             the weights' [{}], the data's [{}]); name the data's classes (for an image \
             folder, its class folders) as the weights do",
            show(trained.get(label)),
            show(data.get(label)),
            trained.join(", "),
            data.join(", "),
        ),
    })
}

/// Index of the largest value (the first on ties).
pub(crate) fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Correct top-1 predictions in a batch of logits `[N, C]` against labels.
pub(crate) fn count_correct(logits: &Tensor, labels: &Tensor) -> candle_core::Result<u64> {
    let pred = logits.argmax(1)?.to_dtype(DType::U32)?;
    let eq = pred.eq(labels)?.to_dtype(DType::F32)?.sum_all()?;
    Ok(eq.to_scalar::<f32>()? as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn class_names_must_match_in_label_order() {
        let trained = names(&["airplane", "bird", "cat"]);
        // Equal, or unknown to the weights: fine.
        check_class_names("w", Some(&trained), &trained).unwrap();
        check_class_names("w", None, &names(&["x", "y", "z"])).unwrap();
        // A renamed class folder sorts elsewhere: every label after it moves.
        let err = check_class_names(
            "w.safetensors",
            Some(&trained),
            &names(&["airplane", "bird", "zz_cat"]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("label 2 is `cat` in w.safetensors but `zz_cat` in the data"),
            "{err}"
        );
        let err = check_class_names(
            "w",
            Some(&trained),
            &names(&["airplane", "bird", "cat", "dog"]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("label 3 is nothing in w but `dog` in the data"),
            "{err}"
        );
    }
}
