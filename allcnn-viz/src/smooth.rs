//! SmoothGrad (Smilkov et al., 2017) as a wrapper around any method:
//! average the maps of noisy copies of the input (Captum's `NoiseTunnel`).

use std::fmt;
use std::str::FromStr;

use allcnn_models::AllCnn;
use candle_core::{DType, Tensor};
use rand_distr::{Distribution, Normal};

use crate::error::{CandleContext, VizError};
use crate::methods::{fix_target, model_input, Method, MethodOptions};
use crate::target::Target;

/// How the maps of the noisy copies are combined (Captum's `nt_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NoiseAggregation {
    /// The mean map (`smoothgrad`).
    #[default]
    Mean,
    /// The mean of the squared maps (`smoothgrad_sq`), non-negative.
    MeanOfSquares,
    /// The variance of the maps, `E[m^2] - E[m]^2` (`vargrad`), non-negative.
    Variance,
}

impl NoiseAggregation {
    /// `smoothgrad`, `smoothgrad_sq` or `vargrad`.
    pub fn name(self) -> &'static str {
        match self {
            NoiseAggregation::Mean => "smoothgrad",
            NoiseAggregation::MeanOfSquares => "smoothgrad_sq",
            NoiseAggregation::Variance => "vargrad",
        }
    }
}

impl fmt::Display for NoiseAggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NoiseAggregation {
    type Err = VizError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "smoothgrad" | "mean" => Ok(NoiseAggregation::Mean),
            "smoothgrad_sq" | "squares" | "mean_of_squares" => Ok(NoiseAggregation::MeanOfSquares),
            "vargrad" | "variance" => Ok(NoiseAggregation::Variance),
            _ => Err(VizError::InvalidArgument(format!(
                "unknown noise aggregation `{s}`; use smoothgrad, smoothgrad_sq or vargrad"
            ))),
        }
    }
}

/// How strong the noise is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NoiseLevel {
    /// The standard deviation itself (Captum's `stdevs`).
    Stdev(f32),
    /// A fraction of each image's value range `max - min` (the SmoothGrad
    /// paper's noise level; 0.1-0.2 works well).
    OfRange(f32),
}

impl Default for NoiseLevel {
    fn default() -> Self {
        NoiseLevel::OfRange(0.15)
    }
}

/// The settings of a [`SmoothGrad`] wrapper (also
/// [`MethodOptions::smooth`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SmoothOptions {
    /// Noisy copies per image.
    pub samples: usize,
    /// The noise's standard deviation.
    pub noise: NoiseLevel,
    /// How the copies' maps are combined.
    pub aggregation: NoiseAggregation,
    /// Seed of the noise (ChaCha8): the same seed gives the same map.
    pub seed: u64,
}

impl Default for SmoothOptions {
    fn default() -> Self {
        Self {
            samples: 25,
            noise: NoiseLevel::default(),
            aggregation: NoiseAggregation::Mean,
            seed: 0,
        }
    }
}

/// SmoothGrad around `method`: the method's maps of `samples` copies of the
/// input with seeded Gaussian noise, combined by [`NoiseAggregation`].
#[derive(Debug, Clone)]
pub struct SmoothGrad<'a> {
    model: &'a AllCnn,
    method: Method,
    method_options: MethodOptions,
    options: SmoothOptions,
}

impl<'a> SmoothGrad<'a> {
    /// SmoothGrad of `method` (with its default options) on `model`: 25
    /// samples, noise 15% of each image's range, mean, seed 0.
    pub fn new(model: &'a AllCnn, method: Method) -> Self {
        Self {
            model,
            method,
            method_options: MethodOptions::default(),
            options: SmoothOptions::default(),
        }
    }

    /// The wrapped method's own options (a `smooth` entry there is ignored).
    pub fn method_options(mut self, options: MethodOptions) -> Self {
        self.method_options = options;
        self
    }

    /// The noise settings.
    pub fn options(mut self, options: SmoothOptions) -> Self {
        self.options = options;
        self
    }

    /// See [`crate::Attribute::attribute`]; the shape is the wrapped
    /// method's.
    ///
    /// # Errors
    /// As the wrapped method; also zero samples or a negative or non-finite
    /// noise level.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        let o = self.options;
        let level = match o.noise {
            NoiseLevel::Stdev(s) | NoiseLevel::OfRange(s) => s,
        };
        if o.samples == 0 || !level.is_finite() || level < 0.0 {
            return Err(VizError::InvalidArgument(format!(
                "SmoothGrad needs at least one sample and a finite noise level >= 0, got {} samples and {level}",
                o.samples
            )));
        }
        // The variance of one sample is zero everywhere: an all-zero map.
        if o.aggregation == NoiseAggregation::Variance && o.samples < 2 {
            return Err(VizError::InvalidArgument(format!(
                "VarGrad is the variance of the noisy maps and needs at least 2 samples, got {}",
                o.samples
            )));
        }
        target.validate(self.model, input.dims())?;
        let x = model_input(self.model, input)?;
        let target = fix_target(self.model, &x, target)?;
        let (n, c, h, w) = x.dims4().context(|| "input shape".into())?;
        let image = c * h * w;
        let pixels: Vec<f32> = x
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .context(|| "reading the input".into())?;
        let stdevs: Vec<f32> = pixels
            .chunks_exact(image)
            .map(|p| match o.noise {
                NoiseLevel::Stdev(s) => s,
                NoiseLevel::OfRange(f) => {
                    let (lo, hi) = p
                        .iter()
                        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                            (a.min(v), b.max(v))
                        });
                    f * (hi - lo)
                }
            })
            .collect();
        let inner = MethodOptions {
            smooth: None,
            ..self.method_options.clone()
        };
        let mut rng = allcnn_seed::rng(o.seed, allcnn_seed::Stream::Noise, 0, 0);
        let normal = Normal::new(0f32, 1.0).expect("unit normal");
        let (mut sum, mut squares): (Option<Tensor>, Option<Tensor>) = (None, None);
        for _ in 0..o.samples {
            let noisy: Vec<f32> = pixels
                .iter()
                .enumerate()
                .map(|(i, &v)| v + stdevs[i / image] * normal.sample(&mut rng))
                .collect();
            let noisy = Tensor::from_vec(noisy, (n, c, h, w), x.device())
                .context(|| "a noisy copy of the input".into())?;
            let map = self
                .method
                .attribute_with(self.model, &noisy, &target, &inner)?
                .to_dtype(DType::F32)
                .context(|| "the map as f32".into())?;
            let add = |acc: Option<Tensor>, t: Tensor| -> Result<Tensor, VizError> {
                match acc {
                    None => Ok(t),
                    Some(a) => (a + t).context(|| "summing the noisy maps".into()),
                }
            };
            if o.aggregation != NoiseAggregation::Mean {
                let sq = map.sqr().context(|| "squaring a map".into())?;
                squares = Some(add(squares, sq)?);
            }
            sum = Some(add(sum, map)?);
        }
        let k = 1.0 / o.samples as f64;
        let mean = |t: Option<Tensor>| {
            t.expect("at least one sample")
                .affine(k, 0.0)
                .context(|| "averaging the noisy maps".into())
        };
        match o.aggregation {
            NoiseAggregation::Mean => mean(sum),
            NoiseAggregation::MeanOfSquares => mean(squares),
            NoiseAggregation::Variance => {
                let m = mean(sum)?;
                (mean(squares)? - m.sqr().context(|| "squared mean".into())?)
                    .context(|| "the variance of the noisy maps".into())
            }
        }
    }
}
