//! GradientShap (Lundberg and Lee, 2017; Captum's `GradientShap`): expected
//! gradients times input minus baseline, over random baselines and points on
//! the path.

use allcnn_models::AllCnn;
use candle_core::Tensor;
use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::deeplift::baseline_set;
use crate::error::{CandleContext, VizError};
use crate::methods::{fix_target, model_input, propagate, repeat_target};
use crate::relu::BackwardRule;
use crate::target::Target;

/// GradientShap: for each of `samples` draws per image, a baseline `b`
/// picked uniformly from a set, Gaussian noise of standard deviation
/// `stdev` added to the input (`x'`), and `a` uniform in [0, 1); the map is
/// the mean of `grad T(b + a (x' - b)) * (x' - b)`. Its expectation sums to
/// `T(x) - E T(b)` (for `stdev` 0). Captum's `GradientShap` (whose draws
/// come from PyTorch's generator: the two agree in distribution, not
/// value). Seeded; signed, `[N, C, H, W]`; `samples` gradients per image,
/// `batch` images per pass.
#[derive(Debug, Clone)]
pub struct GradientShap<'a> {
    model: &'a AllCnn,
    baselines: Tensor,
    samples: usize,
    stdev: f32,
    seed: u64,
    batch: usize,
}

impl<'a> GradientShap<'a> {
    /// The method on `model` with `baselines` `[B, C, H, W]`: 5 samples
    /// (Captum's default), no noise, seed 0, 64 images per pass.
    pub fn new(model: &'a AllCnn, baselines: Tensor) -> Self {
        Self {
            model,
            baselines,
            samples: 5,
            stdev: 0.0,
            seed: 0,
            batch: 64,
        }
    }

    /// Draws per image (at least 1).
    pub fn samples(mut self, samples: usize) -> Self {
        self.samples = samples.max(1);
        self
    }

    /// The standard deviation of the input noise (0: none).
    pub fn stdev(mut self, stdev: f32) -> Self {
        self.stdev = stdev;
        self
    }

    seed_setter!();

    /// Images per backward pass (at least 1).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// See [`crate::Attribute::attribute`].
    ///
    /// # Errors
    /// As [`crate::Attribute::attribute`]; also baselines that do not match
    /// the input and a negative or non-finite `stdev`.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        let model = self.model;
        if !(self.stdev.is_finite() && self.stdev >= 0.0) {
            return Err(VizError::InvalidArgument(format!(
                "GradientShap noise standard deviation {}: use a value >= 0",
                self.stdev
            )));
        }
        target.validate(model, input.dims())?;
        let x = model_input(model, input)?;
        let (baselines, count) = baseline_set(model, &x, &self.baselines, "GradientShap")?;
        let target = fix_target(model, &x, target)?;
        let (n, c, h, w) = x.dims4().context(|| "input shape".into())?;
        let len = c * h * w;
        let read = |t: &Tensor| -> Result<Vec<f32>, VizError> {
            t.flatten_all()
                .and_then(|t| t.to_vec1())
                .context(|| "reading the input and baselines".into())
        };
        let (pixels, bases) = (read(&x)?, read(&baselines)?);
        let normal = Normal::new(0.0, self.stdev.max(f32::MIN_POSITIVE))
            .map_err(|e| VizError::InvalidArgument(format!("GradientShap noise: {e}")))?;
        let mut rng = allcnn_seed::rng(self.seed, allcnn_seed::Stream::Noise, u64::MAX - 1, 0);
        let mut total = vec![0f64; n * len];
        // Copy-major: sample s of every image, then sample s + 1, ...
        let copies_per_pass = (self.batch / n.max(1)).max(1);
        let mut done = 0;
        while done < self.samples {
            let copies = copies_per_pass.min(self.samples - done);
            let mut points = Vec::with_capacity(copies * n * len);
            let mut deltas = Vec::with_capacity(copies * n * len);
            for _ in 0..copies {
                for i in 0..n {
                    let j = rng.random_range(0..count);
                    let a: f32 = rng.random();
                    let image = &pixels[i * len..(i + 1) * len];
                    let base = &bases[j * len..(j + 1) * len];
                    for (&v, &b) in image.iter().zip(base) {
                        let v = if self.stdev > 0.0 {
                            v + normal.sample(&mut rng)
                        } else {
                            v
                        };
                        points.push(b + a * (v - b));
                        deltas.push(v - b);
                    }
                }
            }
            let batch = Tensor::from_vec(points, (copies * n, c, h, w), x.device())
                .context(|| "the points on the paths".into())?;
            let grads = propagate(
                model,
                BackwardRule::Gradient,
                &batch,
                &repeat_target(&target, copies),
            )?;
            let grads = read(&grads)?;
            for (k, (g, d)) in grads.iter().zip(&deltas).enumerate() {
                total[k % (n * len)] += f64::from(*g) * f64::from(*d);
            }
            done += copies;
        }
        let map: Vec<f32> = total
            .iter()
            .map(|t| (t / self.samples as f64) as f32)
            .collect();
        Tensor::from_vec(map, (n, c, h, w), x.device()).context(|| "the GradientShap map".into())
    }
}

impl crate::Attribute for GradientShap<'_> {
    fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        GradientShap::attribute(self, input, target)
    }
}
