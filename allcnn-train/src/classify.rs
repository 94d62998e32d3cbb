//! Classifying image files with trained weights: the weights' own
//! preprocessing, input size and class names, as `allcnn predict` uses them.
//!
//! ```no_run
//! use allcnn_models::pretrained::AllCnnC;
//! use allcnn_train::classify::Classifier;
//! let device = candle_core::Device::Cpu;
//! let classifier = Classifier::new(AllCnnC::Cifar10.load(&device)?)?;
//! for (file, top) in ["cat.png"].iter().zip(classifier.classify(&["cat.png"], 3)?) {
//!     let best = &top[0];
//!     println!("{file}: {} ({:.1}%)", best.name.as_deref().unwrap_or("?"), 100.0 * best.probability);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;

use allcnn_data::{input, Preprocessing};
use allcnn_models::{AllCnn, WeightsFile};
use candle_core::{Device, Tensor, D};
use serde::Serialize;

use crate::error::{CandleContext, TrainError};

/// One of the most probable classes of an input.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Guess {
    /// The class index.
    pub class: usize,
    /// Its name, where the weights record class names.
    pub name: Option<String>,
    /// Its softmax probability.
    pub probability: f32,
}

/// The `k` most probable classes of each row of `logits` `[N, C]`, most
/// probable first (the lower index first on ties), named from
/// `class_names` where given.
///
/// # Errors
/// [`TrainError::Candle`] when `logits` is not a matrix.
pub fn top_guesses(
    logits: &Tensor,
    k: usize,
    class_names: Option<&[String]>,
) -> Result<Vec<Vec<Guess>>, TrainError> {
    let probs = candle_nn::ops::softmax(logits, D::Minus1)
        .and_then(|p| p.to_device(&Device::Cpu))
        .and_then(|p| p.to_vec2::<f32>())
        .ctx(|| format!("softmax of logits {:?}", logits.dims()))?;
    Ok(probs
        .into_iter()
        .map(|p| {
            let mut order: Vec<usize> = (0..p.len()).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            order
                .into_iter()
                .take(k)
                .map(|c| Guess {
                    class: c,
                    name: class_names.and_then(|n| n.get(c).cloned()),
                    probability: p[c],
                })
                .collect()
        })
        .collect())
}

/// Trained weights ready to classify image files: the network, the
/// preprocessing it was trained with, its input size and class names.
#[derive(Debug, Clone)]
pub struct Classifier {
    model: AllCnn,
    preprocessing: Preprocessing,
    input_size: usize,
    class_names: Option<Vec<String>>,
}

impl Classifier {
    /// The classifier of self-describing weights (a run's
    /// `final.safetensors`, an export, the shipped
    /// `allcnn_models::pretrained` files), on the device they were loaded to.
    ///
    /// # Errors
    /// [`TrainError::DataMismatch`] when the file records no preprocessing
    /// (give it with [`Classifier::with_preprocessing`]); data errors for a
    /// recorded one that cannot be read.
    pub fn new(weights: WeightsFile) -> Result<Self, TrainError> {
        let pre = match weights.meta.preprocessing.as_deref() {
            Some(json) => Preprocessing::from_parts(json, &weights.attachments)?,
            None => {
                return Err(TrainError::DataMismatch {
                    reason: format!(
                        "the weights of `{}` record no preprocessing: cannot tell how to \
                         normalise the images (give it with Classifier::with_preprocessing)",
                        weights.model.spec().name
                    ),
                })
            }
        };
        Ok(Self::with_preprocessing(weights, pre))
    }

    /// The classifier of `weights` with the given preprocessing (for
    /// weights that do not record theirs).
    pub fn with_preprocessing(weights: WeightsFile, preprocessing: Preprocessing) -> Self {
        let input_size = weights
            .meta
            .input_size
            .unwrap_or(weights.model.spec().input_size);
        let class_names = weights.class_names();
        Self {
            model: weights.model,
            preprocessing,
            input_size,
            class_names,
        }
    }

    /// The network.
    pub fn model(&self) -> &AllCnn {
        &self.model
    }

    /// The preprocessing applied to every image.
    pub fn preprocessing(&self) -> &Preprocessing {
        &self.preprocessing
    }

    /// The side of the square input, in pixels.
    pub fn input_size(&self) -> usize {
        self.input_size
    }

    /// The class names in label order, where the weights record them.
    pub fn class_names(&self) -> Option<&[String]> {
        self.class_names.as_deref()
    }

    /// Image files as the network's input: decoded, brought to the input
    /// size ([`input::fit`]) and preprocessed.
    ///
    /// # Errors
    /// Data errors naming a file that does not decode.
    pub fn load_images<P: AsRef<Path>>(
        &self,
        paths: &[P],
    ) -> Result<input::InputBatch, TrainError> {
        Ok(input::load_batch(
            paths,
            self.input_size,
            &self.preprocessing,
            self.model.device(),
        )?)
    }

    /// The logits `[N, classes]` of preprocessed images `[N, 3, H, W]`.
    ///
    /// # Errors
    /// Model errors for a misshapen input.
    pub fn logits(&self, images: &Tensor) -> Result<Tensor, TrainError> {
        Ok(self.model.forward(images)?)
    }

    /// The `k` most probable classes of each image file, in the order of
    /// `paths`. The files make one batch: for many, call it per chunk (as
    /// `allcnn predict --batch` does).
    ///
    /// # Errors
    /// As [`Classifier::load_images`] and [`Classifier::logits`].
    pub fn classify<P: AsRef<Path>>(
        &self,
        paths: &[P],
        k: usize,
    ) -> Result<Vec<Vec<Guess>>, TrainError> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let batch = self.load_images(paths)?;
        top_guesses(&self.logits(&batch.images)?, k, self.class_names())
    }
}
