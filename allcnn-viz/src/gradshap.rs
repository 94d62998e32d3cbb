//! GradientShap (Lundberg and Lee, 2017; Captum's `GradientShap` and
//! `LayerGradientShap`): expected gradients times input minus baseline, over
//! random baselines and points on the path, at the input or at a hidden
//! layer.

use allcnn_models::{AllCnn, LayerName};
use candle_core::Tensor;
use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::cam::layer_gradient;
use crate::deeplift::baseline_set;
use crate::error::{CandleContext, VizError};
use crate::layer::LayerActivation;
use crate::methods::{fix_target, model_input, propagate, repeat_target};
use crate::relu::BackwardRule;
use crate::target::{layer_shape, Target};

/// One draw of [`GradientShap`] or [`LayerGradientShap`] for one image:
/// which baseline, and where on the path from it to the (noisy) input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShapDraw {
    /// The index of the baseline in the set, `< B`.
    pub baseline: usize,
    /// The point on the path, in `[0, 1)`.
    pub alpha: f32,
}

/// The settings both GradientShap methods share.
#[derive(Debug, Clone)]
struct Sampling {
    baselines: Tensor,
    samples: usize,
    stdev: f32,
    seed: u64,
    batch: usize,
    draws: Option<Vec<ShapDraw>>,
}

impl Sampling {
    fn new(baselines: Tensor) -> Self {
        Self {
            baselines,
            samples: 5,
            stdev: 0.0,
            seed: 0,
            batch: 64,
            draws: None,
        }
    }
}

/// The setters of [`GradientShap`] and [`LayerGradientShap`].
macro_rules! shap_setters {
    () => {
        /// Draws per image (at least 1).
        pub fn samples(mut self, samples: usize) -> Self {
            self.sampling.samples = samples.max(1);
            self
        }

        /// The standard deviation of the input noise (0: none).
        pub fn stdev(mut self, stdev: f32) -> Self {
            self.sampling.stdev = stdev;
            self
        }

        /// The seed of the random draws: the same seed gives the same map.
        pub fn seed(mut self, seed: u64) -> Self {
            self.sampling.seed = seed;
            self
        }

        /// Images per backward pass (at least 1).
        pub fn batch(mut self, batch: usize) -> Self {
            self.sampling.batch = batch.max(1);
            self
        }

        /// Replays these draws instead of sampling baselines and points:
        /// image-major, `samples` per image (`draws[i * samples + s]` for
        /// image `i`), the order in which Captum draws them
        /// (`np.random.choice` for the baselines, then `np.random.uniform`
        /// for the points), so that a map can be compared with Captum's
        /// value for value. Input noise (`stdev` > 0) is still drawn from
        /// the seed.
        pub fn draws(mut self, draws: Vec<ShapDraw>) -> Self {
            self.sampling.draws = Some(draws);
            self
        }
    };
}

/// GradientShap: for each of `samples` draws per image, a baseline `b`
/// picked uniformly from a set, Gaussian noise of standard deviation
/// `stdev` added to the input (`x'`), and `a` uniform in [0, 1); the map is
/// the mean of `grad T(b + a (x' - b)) * (x' - b)`. Its expectation sums to
/// `T(x) - E T(b)` (for `stdev` 0). Captum's `GradientShap` (whose draws
/// come from NumPy's and PyTorch's generators: the two agree in
/// distribution, or value for value with [`GradientShap::draws`]). Seeded;
/// signed, `[N, C, H, W]`; `samples` gradients per image, `batch` images
/// per pass.
#[derive(Debug, Clone)]
pub struct GradientShap<'a> {
    model: &'a AllCnn,
    sampling: Sampling,
}

impl<'a> GradientShap<'a> {
    /// The method on `model` with `baselines` `[B, C, H, W]`: 5 samples
    /// (Captum's default), no noise, seed 0, 64 images per pass.
    pub fn new(model: &'a AllCnn, baselines: Tensor) -> Self {
        Self {
            model,
            sampling: Sampling::new(baselines),
        }
    }

    shap_setters!();

    /// See [`crate::Attribute::attribute`].
    ///
    /// # Errors
    /// As [`crate::Attribute::attribute`]; also baselines that do not match
    /// the input, a negative or non-finite `stdev`, and replayed draws that
    /// do not fit.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        let model = self.model;
        walk(
            model,
            &self.sampling,
            "GradientShap",
            input,
            target,
            |pass| {
                let grads = propagate(model, BackwardRule::Gradient, &pass.points, pass.target)?;
                let change = (&pass.noisy - &pass.bases).context(|| "input - baseline".into())?;
                (grads * change).context(|| "gradient times (input - baseline)".into())
            },
        )
    }
}

impl crate::Attribute for GradientShap<'_> {
    fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        GradientShap::attribute(self, input, target)
    }
}

/// GradientShap of a hidden layer: as [`GradientShap`], with the gradient
/// taken with respect to convolution `layer`'s output (after its ReLU) at
/// the point `b + a (x' - b)` in input space, times the layer's change
/// `layer(x') - layer(b)`. `[N, C, h, w]`. Captum's `LayerGradientShap`
/// on that ReLU (layer outputs, inputs multiplied).
#[derive(Debug, Clone)]
pub struct LayerGradientShap<'a> {
    model: &'a AllCnn,
    layer: LayerName,
    sampling: Sampling,
}

impl<'a> LayerGradientShap<'a> {
    /// The method at `layer` of `model` with `baselines` `[B, C, H, W]`: 5
    /// samples (Captum's default), no noise, seed 0, 64 images per pass.
    pub fn new(model: &'a AllCnn, layer: LayerName, baselines: Tensor) -> Self {
        Self {
            model,
            layer,
            sampling: Sampling::new(baselines),
        }
    }

    shap_setters!();

    /// The map of every image at the layer's resolution.
    ///
    /// # Errors
    /// As [`GradientShap::attribute`]; also a layer that is not a
    /// convolution of the network, and a hidden-unit target below it.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        let (model, layer) = (self.model, self.layer);
        if let &[_, _, h, w] = input.dims() {
            layer_shape(model, layer, (h, w))?;
        }
        walk(
            model,
            &self.sampling,
            "LayerGradientShap",
            input,
            target,
            |pass| {
                let (_, grad) = layer_gradient(
                    model,
                    layer,
                    &pass.points,
                    pass.target,
                    "layer-gradient-shap",
                )?;
                let at = |t: &Tensor| LayerActivation::new(model, layer).attribute(t);
                let change = (at(&pass.noisy)? - at(&pass.bases)?)
                    .context(|| "the layer's change".into())?;
                (grad * change).context(|| "gradient times the layer's change".into())
            },
        )
    }
}

/// One pass of draws: `copies` draws of each of `n` images, copy-major
/// (row `s * n + i` is draw `s` of image `i`).
struct Pass<'t> {
    /// The points on the paths, `b + a (x' - b)`.
    points: Tensor,
    /// The noisy inputs `x'`.
    noisy: Tensor,
    /// The baselines `b` drawn.
    bases: Tensor,
    /// The target of every row.
    target: &'t Target,
}

/// Draws `samples` baselines, noisy inputs and points per image, `batch`
/// images per pass, and returns the mean over the draws of what `contribute`
/// makes of each pass (a tensor with one row per row of the pass).
fn walk(
    model: &AllCnn,
    s: &Sampling,
    method: &str,
    input: &Tensor,
    target: &Target,
    mut contribute: impl FnMut(&Pass<'_>) -> Result<Tensor, VizError>,
) -> Result<Tensor, VizError> {
    if !(s.stdev.is_finite() && s.stdev >= 0.0) {
        return Err(VizError::InvalidArgument(format!(
            "{method} noise standard deviation {}: use a value >= 0",
            s.stdev
        )));
    }
    target.validate(model, input.dims())?;
    let x = model_input(model, input)?;
    let (baselines, count) = baseline_set(model, &x, &s.baselines, method)?;
    let target = fix_target(model, &x, target)?;
    let (n, c, h, w) = x.dims4().context(|| "input shape".into())?;
    if let Some(draws) = &s.draws {
        if draws.len() != n * s.samples {
            return Err(VizError::InvalidArgument(format!(
                "{method} replays {} draws, but {n} images x {} samples need {}",
                draws.len(),
                s.samples,
                n * s.samples
            )));
        }
        if let Some(d) = draws
            .iter()
            .find(|d| d.baseline >= count || !(0.0..=1.0).contains(&d.alpha))
        {
            return Err(VizError::InvalidArgument(format!(
                "{method} replayed draw {d:?}: the baseline must be below {count} and alpha in [0, 1]"
            )));
        }
    }
    let len = c * h * w;
    let read = |t: &Tensor| -> Result<Vec<f32>, VizError> {
        t.flatten_all()
            .and_then(|t| t.to_vec1())
            .context(|| "reading the input and baselines".into())
    };
    let (pixels, bases) = (read(&x)?, read(&baselines)?);
    let normal = Normal::new(0.0, s.stdev.max(f32::MIN_POSITIVE))
        .map_err(|e| VizError::InvalidArgument(format!("{method} noise: {e}")))?;
    let mut rng = allcnn_seed::rng(s.seed, allcnn_seed::Stream::Noise, u64::MAX - 1, 0);
    let mut total: Vec<f64> = Vec::new();
    let mut shape = vec![n, c, h, w];
    let copies_per_pass = (s.batch / n.max(1)).max(1);
    let mut done = 0;
    while done < s.samples {
        let copies = copies_per_pass.min(s.samples - done);
        let rows = copies * n * len;
        let (mut points, mut noisy, mut based) = (
            Vec::with_capacity(rows),
            Vec::with_capacity(rows),
            Vec::with_capacity(rows),
        );
        for copy in done..done + copies {
            for i in 0..n {
                let (j, a) = match &s.draws {
                    Some(d) => (
                        d[i * s.samples + copy].baseline,
                        d[i * s.samples + copy].alpha,
                    ),
                    None => (rng.random_range(0..count), rng.random::<f32>()),
                };
                let image = &pixels[i * len..(i + 1) * len];
                let base = &bases[j * len..(j + 1) * len];
                for (&v, &b) in image.iter().zip(base) {
                    let v = if s.stdev > 0.0 {
                        v + normal.sample(&mut rng)
                    } else {
                        v
                    };
                    points.push(b + a * (v - b));
                    noisy.push(v);
                    based.push(b);
                }
            }
        }
        let tensor = |v: Vec<f32>| {
            Tensor::from_vec(v, (copies * n, c, h, w), x.device())
                .context(|| "the draws of a pass".into())
        };
        let target = repeat_target(&target, copies);
        let pass = Pass {
            points: tensor(points)?,
            noisy: tensor(noisy)?,
            bases: tensor(based)?,
            target: &target,
        };
        let part = contribute(&pass)?;
        shape = part.dims().to_vec();
        let values = read(&part)?;
        let per_image = values.len() / (copies * n);
        if total.is_empty() {
            total = vec![0f64; n * per_image];
        }
        for (k, v) in values.iter().enumerate() {
            total[k % (n * per_image)] += f64::from(*v);
        }
        done += copies;
    }
    let mean: Vec<f32> = total
        .iter()
        .map(|t| (t / s.samples as f64) as f32)
        .collect();
    shape[0] = n;
    Tensor::from_vec(mean, shape, x.device()).context(|| format!("the {method} map"))
}
