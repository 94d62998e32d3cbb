//! Faithfulness: deletion and insertion curves (Petsiuk et al., 2018).
//! Remove the pixels a map ranks most important first and watch the class
//! probability fall (deletion: a small area under the curve is good), or
//! add them to a blank image and watch it rise (insertion: a large area is
//! good). A random ranking gives the chance level.

use allcnn_models::AllCnn;
use candle_core::{DType, Tensor};
use rand::seq::SliceRandom;

use crate::error::{CandleContext, VizError};
use crate::methods::model_input;
use crate::target::Target;

/// The curves of one ranking of the pixels of every image.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Curves {
    /// Per image, the target class's probability after deleting `k / steps`
    /// of the pixels, `k = 0..=steps`.
    pub deletion: Vec<Vec<f32>>,
    /// Per image, the probability after inserting `k / steps` of the pixels
    /// into the baseline image.
    pub insertion: Vec<Vec<f32>>,
}

impl Curves {
    /// The mean over images of the area under each deletion curve
    /// (trapezoid rule on `[0, 1]`); lower is better.
    pub fn deletion_auc(&self) -> f32 {
        mean_auc(&self.deletion)
    }

    /// The mean area under the insertion curves; higher is better.
    pub fn insertion_auc(&self) -> f32 {
        mean_auc(&self.insertion)
    }

    /// The mean curve over images: `(deletion, insertion)`.
    pub fn mean_curves(&self) -> (Vec<f32>, Vec<f32>) {
        (mean_curve(&self.deletion), mean_curve(&self.insertion))
    }
}

/// The trapezoid area under `curve`, sampled evenly on `[0, 1]`.
pub fn auc(curve: &[f32]) -> f32 {
    if curve.len() < 2 {
        return curve.first().copied().unwrap_or(0.0);
    }
    let steps = (curve.len() - 1) as f32;
    curve.windows(2).map(|w| (w[0] + w[1]) / 2.0).sum::<f32>() / steps
}

fn mean_auc(curves: &[Vec<f32>]) -> f32 {
    curves.iter().map(|c| auc(c)).sum::<f32>() / curves.len().max(1) as f32
}

fn mean_curve(curves: &[Vec<f32>]) -> Vec<f32> {
    let len = curves.first().map_or(0, Vec::len);
    (0..len)
        .map(|k| curves.iter().map(|c| c[k]).sum::<f32>() / curves.len() as f32)
        .collect()
}

/// Deletion and insertion of pixels (all channels of a pixel at once) in
/// the order a map ranks them: `steps` equal portions, the removed pixels
/// set to `baseline` (0 by default: the mean image after GCN + ZCA), the
/// inserted ones copied into a `baseline` image.
#[derive(Debug, Clone, Copy)]
pub struct DeletionInsertion<'a> {
    model: &'a AllCnn,
    steps: usize,
    baseline: f32,
    batch: usize,
}

impl<'a> DeletionInsertion<'a> {
    /// 32 steps, baseline 0, 256 images per forward pass.
    pub fn new(model: &'a AllCnn) -> Self {
        Self {
            model,
            steps: 32,
            baseline: 0.0,
            batch: 256,
        }
    }

    /// Portions the pixels are removed or inserted in (at least 1).
    pub fn steps(mut self, steps: usize) -> Self {
        self.steps = steps.max(1);
        self
    }

    /// The value of removed pixels and of the blank image.
    pub fn baseline(mut self, value: f32) -> Self {
        self.baseline = value;
        self
    }

    /// Images per forward pass (at least 1).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// The curves for the pixel ranking of `map` `[N, C', H, W]` (the
    /// channel sum, largest first; ties in pixel order), on `input`
    /// `[N, C, H, W]`, for a class target.
    ///
    /// # Errors
    /// A hidden-unit target ([`VizError::UnsupportedTarget`]: the curves
    /// follow a class probability), a map of another size, or a candle
    /// error.
    pub fn curves(
        &self,
        input: &Tensor,
        map: &Tensor,
        target: &Target,
    ) -> Result<Curves, VizError> {
        let (n, _, h, w) = input.dims4().context(|| "input shape".into())?;
        let fits = matches!(map.dims(), &[mn, _, mh, mw] if (mn, mh, mw) == (n, h, w));
        if !fits {
            return Err(VizError::BadTensor {
                what: "map to rank pixels by".into(),
                expected: format!("[{n}, C, {h}, {w}]"),
                got: map.dims().to_vec(),
            });
        }
        let scores: Vec<Vec<f32>> = map
            .to_dtype(DType::F32)
            .and_then(|m| m.sum(1))
            .and_then(|m| m.flatten_from(1))
            .and_then(|m| m.to_vec2())
            .context(|| "channel-summed map".into())?;
        let orders = scores
            .iter()
            .map(|s| {
                let mut idx: Vec<usize> = (0..s.len()).collect();
                idx.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
                idx
            })
            .collect();
        self.curves_for_orders(input, orders, target)
    }

    /// The chance level: the curves for a seeded random ranking of each
    /// image's pixels.
    ///
    /// # Errors
    /// As [`DeletionInsertion::curves`].
    pub fn random_curves(
        &self,
        input: &Tensor,
        target: &Target,
        seed: u64,
    ) -> Result<Curves, VizError> {
        let (n, _, h, w) = input.dims4().context(|| "input shape".into())?;
        let mut rng = allcnn_seed::rng(seed, allcnn_seed::Stream::PixelOrder, 0, 0);
        let orders = (0..n)
            .map(|_| {
                let mut idx: Vec<usize> = (0..h * w).collect();
                idx.shuffle(&mut rng);
                idx
            })
            .collect();
        self.curves_for_orders(input, orders, target)
    }

    fn curves_for_orders(
        &self,
        input: &Tensor,
        orders: Vec<Vec<usize>>,
        target: &Target,
    ) -> Result<Curves, VizError> {
        let model = self.model;
        target.validate(model, input.dims())?;
        let classes: Vec<usize> =
            match target {
                Target::Class(k) => vec![*k as usize; orders.len()],
                Target::PerImage(ks) => ks.iter().map(|&k| k as usize).collect(),
                _ => return Err(VizError::UnsupportedTarget {
                    method: "deletion/insertion".into(),
                    reason:
                        "the curves follow a class probability; use class:K, labels or predicted"
                            .into(),
                }),
            };
        let x = model_input(model, input)?;
        let (n, c, h, w) = x.dims4().context(|| "input shape".into())?;
        let plane = h * w;
        let pixels: Vec<f32> = x
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .context(|| "reading the input".into())?;
        let steps = self.steps;
        // (image, step, deletion?) for every image the curves need.
        let jobs: Vec<(usize, usize, bool)> = (0..n)
            .flat_map(|i| (0..=steps).flat_map(move |k| [(i, k, true), (i, k, false)]))
            .collect();
        let mut probs = vec![0f32; jobs.len()];
        for (chunk_i, chunk) in jobs.chunks(self.batch).enumerate() {
            let mut data = Vec::with_capacity(chunk.len() * c * plane);
            for &(i, k, deletion) in chunk {
                let image = &pixels[i * c * plane..(i + 1) * c * plane];
                let changed = &orders[i][..(k * plane + steps / 2) / steps];
                let start = data.len();
                if deletion {
                    data.extend_from_slice(image);
                    for &p in changed {
                        for ch in 0..c {
                            data[start + ch * plane + p] = self.baseline;
                        }
                    }
                } else {
                    data.resize(start + c * plane, self.baseline);
                    for &p in changed {
                        for ch in 0..c {
                            data[start + ch * plane + p] = image[ch * plane + p];
                        }
                    }
                }
            }
            let batch = Tensor::from_vec(data, (chunk.len(), c, h, w), x.device())
                .context(|| "the perturbed images".into())?;
            let logits: Vec<Vec<f32>> = model
                .forward(&batch)
                .map_err(VizError::from)?
                .to_dtype(DType::F32)
                .and_then(|l| l.to_vec2())
                .context(|| "class scores".into())?;
            for (j, &(i, _, _)) in chunk.iter().enumerate() {
                probs[chunk_i * self.batch + j] = softmax_at(&logits[j], classes[i]);
            }
        }
        let mut curves = Curves {
            deletion: vec![Vec::with_capacity(steps + 1); n],
            insertion: vec![Vec::with_capacity(steps + 1); n],
        };
        for (&(i, _, deletion), &p) in jobs.iter().zip(&probs) {
            if deletion {
                curves.deletion[i].push(p);
            } else {
                curves.insertion[i].push(p);
            }
        }
        Ok(curves)
    }
}

/// `softmax(logits)[k]`, computed stably in f64.
fn softmax_at(logits: &[f32], k: usize) -> f32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    ((logits[k] as f64 - max).exp() / sum) as f32
}
