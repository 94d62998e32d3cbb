//! Surrogate-model methods: a weighted linear model fitted to the target on
//! random on/off patterns of the features ([`FeatureMask`]). Lime (Ribeiro
//! et al., 2016) and KernelShap (Lundberg and Lee, 2017), after Captum's
//! `Lime` and `KernelShap`.

use allcnn_models::AllCnn;
use candle_core::Tensor;
use rand::seq::index::sample;
use rand::Rng;

use crate::ablation::{FeatureMask, Perturbed};
use crate::error::VizError;
use crate::integrated::Baseline;
use crate::target::Target;

/// The weight that pins KernelShap's fit to the empty and full coalitions
/// (their Shapley-kernel weight is infinite), as the `shap` library does.
const ANCHOR: f64 = 1e6;

/// Lime: `samples` random patterns (each feature kept with probability
/// 1/2, the others set to the baseline), each weighted by
/// `exp(-d^2 / width^2)` with `d` the cosine distance between the perturbed
/// and the original image, and a ridge regression (penalty `ridge`, the
/// intercept free) of the target on the patterns; a feature's coefficient
/// is its value. Captum's `Lime` with its default similarity; Captum fits a
/// Lasso (alpha 0.01) by default, here ridge keeps every feature. Seeded;
/// signed, `[N, C, H, W]`; `samples` forward passes per image.
#[derive(Debug, Clone)]
pub struct Lime<'a> {
    model: &'a AllCnn,
    mask: FeatureMask,
    baseline: Baseline,
    samples: usize,
    width: f64,
    ridge: f64,
    seed: u64,
    batch: usize,
}

impl<'a> Lime<'a> {
    /// 4x4 patches against a zero baseline, 200 samples, kernel width 1,
    /// ridge 1e-3, seed 0, 256 images per pass.
    pub fn new(model: &'a AllCnn) -> Self {
        Self {
            model,
            mask: FeatureMask::default(),
            baseline: Baseline::default(),
            samples: 200,
            width: 1.0,
            ridge: 1e-3,
            seed: 0,
            batch: 256,
        }
    }

    feature_setters!();

    /// Random patterns per image (at least 1).
    pub fn samples(mut self, samples: usize) -> Self {
        self.samples = samples.max(1);
        self
    }

    /// The width of the exponential kernel on the cosine distance.
    pub fn kernel_width(mut self, width: f64) -> Self {
        self.width = width;
        self
    }

    /// The ridge penalty on the coefficients (0: least squares).
    pub fn ridge(mut self, ridge: f64) -> Self {
        self.ridge = ridge;
        self
    }

    seed_setter!();

    /// See [`crate::Attribute::attribute`].
    ///
    /// # Errors
    /// As [`crate::Attribute::attribute`]; also a mask or baseline that
    /// does not fit, and a kernel width or ridge that is not a positive
    /// (ridge: non-negative) number.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        if !(self.width.is_finite() && self.width > 0.0) {
            return Err(VizError::InvalidArgument(format!(
                "Lime kernel width {}: use a number > 0",
                self.width
            )));
        }
        check_ridge(self.ridge)?;
        let p = Perturbed::new(self.model, input, target, &self.baseline, self.batch)?;
        let features = self.mask.features(p.dims)?;
        let mut scores = Vec::with_capacity(features.len());
        for (i, f) in features.iter().enumerate() {
            let n = f.len();
            let mut rng =
                allcnn_seed::rng(self.seed, allcnn_seed::Stream::Permutation, i as u64, 1);
            let patterns: Vec<Vec<bool>> = (0..self.samples)
                .map(|_| (0..n).map(|_| rng.random::<bool>()).collect())
                .collect();
            let values = p.values(i, f, &patterns)?;
            let (image, base) = p.image(i);
            let weights: Vec<f64> = patterns
                .iter()
                .map(|keep| {
                    let d = cosine_distance(image, base, f, keep);
                    (-(d * d) / (self.width * self.width)).exp()
                })
                .collect();
            scores.push(fit(&patterns, &values, &weights, self.ridge, n));
        }
        p.map(&features, &scores)
    }
}

impl crate::Attribute for Lime<'_> {
    fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        Lime::attribute(self, input, target)
    }
}

/// KernelShap: Shapley values as the weighted linear fit of the target on
/// feature coalitions. With `samples >= 2^n - 2` every coalition is used
/// with its Shapley-kernel weight `(n - 1) / (C(n, k) k (n - k))` and the
/// fit is the exact Shapley values; with fewer, coalitions are drawn from
/// that kernel (size `k` with probability proportional to
/// `(n - 1) / (k (n - k))`, then a uniform subset) and weighted equally.
/// The empty and full coalitions are always in, weighted 1e6, so the values
/// sum to `T(x) - T(baseline)` (as the `shap` library; Captum's
/// `KernelShap` leaves them to chance). Seeded; signed, `[N, C, H, W]`.
#[derive(Debug, Clone)]
pub struct KernelShap<'a> {
    model: &'a AllCnn,
    mask: FeatureMask,
    baseline: Baseline,
    samples: usize,
    seed: u64,
    batch: usize,
}

impl<'a> KernelShap<'a> {
    /// 4x4 patches against a zero baseline, 200 coalitions, seed 0, 256
    /// images per pass.
    pub fn new(model: &'a AllCnn) -> Self {
        Self {
            model,
            mask: FeatureMask::default(),
            baseline: Baseline::default(),
            samples: 200,
            seed: 0,
            batch: 256,
        }
    }

    feature_setters!();

    /// Coalitions per image besides the empty and the full one (at least
    /// 1; `2^n - 2` or more enumerates them all).
    pub fn samples(mut self, samples: usize) -> Self {
        self.samples = samples.max(1);
        self
    }

    seed_setter!();

    /// See [`crate::Attribute::attribute`].
    ///
    /// # Errors
    /// As [`crate::Attribute::attribute`]; also a mask or baseline that
    /// does not fit, or a single feature.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        let p = Perturbed::new(self.model, input, target, &self.baseline, self.batch)?;
        let features = self.mask.features(p.dims)?;
        let mut scores = Vec::with_capacity(features.len());
        for (i, f) in features.iter().enumerate() {
            let n = f.len();
            if n < 2 {
                // One feature: its Shapley value is the whole change.
                let v = p.values(i, f, &[vec![false; n], vec![true; n]])?;
                scores.push(vec![f64::from(v[1]) - f64::from(v[0]); n]);
                continue;
            }
            let mut patterns = vec![vec![false; n], vec![true; n]];
            let mut weights = vec![ANCHOR, ANCHOR];
            let all = (n < 63).then(|| (1u64 << n) - 2);
            if all.is_some_and(|all| self.samples as u64 >= all) {
                for s in 1..(1u64 << n) - 1 {
                    let keep: Vec<bool> = (0..n).map(|j| s >> j & 1 == 1).collect();
                    let k = s.count_ones() as usize;
                    weights.push((n - 1) as f64 / (binomial(n, k) * (k * (n - k)) as f64));
                    patterns.push(keep);
                }
            } else {
                let mut rng =
                    allcnn_seed::rng(self.seed, allcnn_seed::Stream::Permutation, i as u64, 2);
                let size_weight: Vec<f64> = (1..n)
                    .map(|k| (n - 1) as f64 / (k * (n - k)) as f64)
                    .collect();
                let total: f64 = size_weight.iter().sum();
                for _ in 0..self.samples {
                    let mut u = rng.random::<f64>() * total;
                    let mut k = n - 1;
                    for (j, w) in size_weight.iter().enumerate() {
                        if u < *w {
                            k = j + 1;
                            break;
                        }
                        u -= w;
                    }
                    let mut keep = vec![false; n];
                    for j in sample(&mut rng, n, k) {
                        keep[j] = true;
                    }
                    patterns.push(keep);
                    weights.push(1.0);
                }
            }
            let values = p.values(i, f, &patterns)?;
            scores.push(fit(&patterns, &values, &weights, 0.0, n));
        }
        p.map(&features, &scores)
    }
}

impl crate::Attribute for KernelShap<'_> {
    fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        KernelShap::attribute(self, input, target)
    }
}

fn check_ridge(ridge: f64) -> Result<(), VizError> {
    if ridge.is_finite() && ridge >= 0.0 {
        Ok(())
    } else {
        Err(VizError::InvalidArgument(format!(
            "ridge penalty {ridge}: use a number >= 0"
        )))
    }
}

fn binomial(n: usize, k: usize) -> f64 {
    (0..k).fold(1.0, |acc, j| acc * (n - j) as f64 / (j + 1) as f64)
}

/// The cosine distance between the image and its copy with the features
/// not kept set to the baseline.
fn cosine_distance(image: &[f32], base: &[f32], features: &[Vec<usize>], keep: &[bool]) -> f64 {
    let mut perturbed: Vec<f64> = image.iter().map(|&v| f64::from(v)).collect();
    for (elements, &k) in features.iter().zip(keep) {
        if !k {
            for &e in elements {
                perturbed[e] = f64::from(base[e]);
            }
        }
    }
    let (mut dot, mut a2, mut b2) = (0.0, 0.0, 0.0);
    for (&a, &b) in image.iter().zip(&perturbed) {
        let a = f64::from(a);
        dot += a * b;
        a2 += a * a;
        b2 += b * b;
    }
    if a2 == 0.0 || b2 == 0.0 {
        return 1.0;
    }
    1.0 - dot / (a2.sqrt() * b2.sqrt())
}

/// The coefficients of the weighted ridge regression of `values` on the
/// patterns (an intercept, not penalised, and one 0/1 column per feature).
fn fit(patterns: &[Vec<bool>], values: &[f32], weights: &[f64], ridge: f64, n: usize) -> Vec<f64> {
    let m = n + 1;
    let mut a = vec![0f64; m * m];
    let mut b = vec![0f64; m];
    let mut row = vec![0f64; m];
    for ((keep, &y), &w) in patterns.iter().zip(values).zip(weights) {
        row[0] = 1.0;
        for (j, &k) in keep.iter().enumerate() {
            row[j + 1] = if k { 1.0 } else { 0.0 };
        }
        for r in 0..m {
            if row[r] == 0.0 {
                continue;
            }
            b[r] += w * row[r] * f64::from(y);
            for c in 0..m {
                a[r * m + c] += w * row[r] * row[c];
            }
        }
    }
    // The ridge, plus a whisker so that features never switched apart in
    // the samples still give a solvable system.
    let scale = (0..m).map(|r| a[r * m + r]).fold(0f64, f64::max).max(1.0);
    for r in 1..m {
        a[r * m + r] += ridge + 1e-12 * scale;
    }
    solve(&mut a, &mut b, m);
    b[1..].to_vec()
}

/// Solves `a x = b` in place (Gaussian elimination with partial pivoting);
/// `b` becomes `x`.
fn solve(a: &mut [f64], b: &mut [f64], m: usize) {
    for col in 0..m {
        let pivot = (col..m)
            .max_by(|&i, &j| a[i * m + col].abs().total_cmp(&a[j * m + col].abs()))
            .expect("a non-empty column");
        if pivot != col {
            for c in 0..m {
                a.swap(col * m + c, pivot * m + c);
            }
            b.swap(col, pivot);
        }
        let d = a[col * m + col];
        if d == 0.0 {
            continue;
        }
        for r in col + 1..m {
            let f = a[r * m + col] / d;
            if f != 0.0 {
                for c in col..m {
                    a[r * m + c] -= f * a[col * m + c];
                }
                b[r] -= f * b[col];
            }
        }
    }
    for r in (0..m).rev() {
        let mut s = b[r];
        for c in r + 1..m {
            s -= a[r * m + c] * b[c];
        }
        let d = a[r * m + r];
        b[r] = if d == 0.0 { 0.0 } else { s / d };
    }
}
