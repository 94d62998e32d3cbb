//! Perturbation methods over groups of input elements ("features"):
//! feature ablation and Shapley values, exact and sampled, as Captum's
//! `FeatureAblation`, `ShapleyValues` and `ShapleyValueSampling`, and
//! feature ablation of a hidden layer (`LayerFeatureAblation`).

use allcnn_models::{AllCnn, LayerName, StandardRelu};
use candle_core::{DType, Tensor};
use rand::seq::SliceRandom;

use crate::error::{CandleContext, VizError};
use crate::integrated::Baseline;
use crate::layer::{LayerActivation, Replace};
use crate::methods::{fix_target, image_target, model_input, require_target_above, target_values};
use crate::target::Target;

/// The setters every feature method shares: `mask`, `baseline`, `batch`.
macro_rules! feature_setters {
    () => {
        /// The features.
        pub fn mask(mut self, mask: FeatureMask) -> Self {
            self.mask = mask;
            self
        }

        baseline_batch_setters!();
    };
}

/// The `baseline` and `batch` setters of the feature methods.
macro_rules! baseline_batch_setters {
    () => {
        /// The values of a feature that is switched off (ablated, absent):
        /// a constant, or a tensor shaped as the space the features live
        /// in (the input, or a layer's output for the layer methods).
        pub fn baseline(mut self, baseline: Baseline) -> Self {
            self.baseline = baseline;
            self
        }

        /// Images per forward pass (at least 1).
        pub fn batch(mut self, batch: usize) -> Self {
            self.batch = batch.max(1);
            self
        }
    };
}

/// The seed setter of the sampling methods.
macro_rules! seed_setter {
    () => {
        /// The seed of the random draws: the same seed gives the same map.
        pub fn seed(mut self, seed: u64) -> Self {
            self.seed = seed;
            self
        }
    };
}

/// The most features [`ShapleyValues`] enumerates (`2^n` forward passes
/// per image); beyond it use [`ShapleyValueSampling`].
pub const MAX_EXACT_FEATURES: usize = 12;

/// Which input elements move together in the perturbation methods.
#[derive(Debug, Clone)]
pub enum FeatureMask {
    /// A grid of `height x width` pixel patches, each over all channels
    /// (patches at the right and bottom edges are cut to fit).
    Patches {
        /// Patch height in pixels.
        height: usize,
        /// Patch width in pixels.
        width: usize,
    },
    /// Integer feature ids `[1 or N, 1 or C, H, W]` (any integer dtype,
    /// ids >= 0), broadcast over the images and channels as in Captum's
    /// `feature_mask`.
    Tensor(Tensor),
}

impl Default for FeatureMask {
    /// 4x4 patches: 64 features on a 32x32 image.
    fn default() -> Self {
        FeatureMask::Patches {
            height: 4,
            width: 4,
        }
    }
}

impl FeatureMask {
    /// The features of every image: for each, the element indices of each
    /// feature (within the image's `C*H*W`), in increasing feature id.
    pub(crate) fn features(
        &self,
        (n, c, h, w): (usize, usize, usize, usize),
    ) -> Result<Vec<Vec<Vec<usize>>>, VizError> {
        let per_image: Vec<Vec<u64>> = match self {
            FeatureMask::Patches { height, width } => {
                if *height == 0 || *width == 0 {
                    return Err(VizError::InvalidArgument(format!(
                        "feature patches must be at least 1x1, got {height}x{width}"
                    )));
                }
                let across = w.div_ceil(*width);
                let plane: Vec<u64> = (0..h * w)
                    .map(|p| ((p / w / height) * across + (p % w) / width) as u64)
                    .collect();
                vec![plane.repeat(c)]
            }
            FeatureMask::Tensor(mask) => {
                let bad = || VizError::BadTensor {
                    what: "feature mask".into(),
                    expected: format!("integer ids >= 0 of shape [1 or {n}, 1 or {c}, {h}, {w}]"),
                    got: mask.dims().to_vec(),
                };
                let (mn, mc, mh, mw) = mask.dims4().map_err(|_| bad())?;
                if !(mn == 1 || mn == n) || !(mc == 1 || mc == c) || (mh, mw) != (h, w) {
                    return Err(bad());
                }
                if mask.dtype().is_float() {
                    return Err(bad());
                }
                let ids: Vec<i64> = mask
                    .to_dtype(DType::I64)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1())
                    .context(|| "reading the feature mask".into())?;
                if ids.iter().any(|&v| v < 0) {
                    return Err(bad());
                }
                (0..mn)
                    .map(|i| {
                        let image = &ids[i * mc * h * w..(i + 1) * mc * h * w];
                        if mc == 1 {
                            image.repeat(c).iter().map(|&v| v as u64).collect()
                        } else {
                            image.iter().map(|&v| v as u64).collect()
                        }
                    })
                    .collect()
            }
        };
        Ok((0..n)
            .map(|i| {
                let ids = &per_image[if per_image.len() == 1 { 0 } else { i }];
                let mut order: Vec<u64> = ids.clone();
                order.sort_unstable();
                order.dedup();
                let mut groups = vec![Vec::new(); order.len()];
                for (e, id) in ids.iter().enumerate() {
                    let k = order.binary_search(id).expect("every id is in the list");
                    groups[k].push(e);
                }
                groups
            })
            .collect())
    }
}

/// What the perturbation methods share: the input and baseline as host
/// vectors, and batched target values of modified copies of one image.
pub(crate) struct Perturbed<'a> {
    model: &'a AllCnn,
    /// Where the features live: the input (`None`) or a layer's output.
    layer: Option<LayerName>,
    x: Tensor,
    target: Target,
    pixels: Vec<f32>,
    base: Vec<f32>,
    pub(crate) dims: (usize, usize, usize, usize),
    batch: usize,
}

impl<'a> Perturbed<'a> {
    pub(crate) fn new(
        model: &'a AllCnn,
        input: &Tensor,
        target: &Target,
        baseline: &Baseline,
        batch: usize,
    ) -> Result<Self, VizError> {
        Self::at(model, None, input, target, baseline, batch)
    }

    /// As [`Perturbed::new`], with the features in the output of `layer`
    /// (a convolution, after its ReLU) when it is given.
    pub(crate) fn at(
        model: &'a AllCnn,
        layer: Option<LayerName>,
        input: &Tensor,
        target: &Target,
        baseline: &Baseline,
        batch: usize,
    ) -> Result<Self, VizError> {
        target.validate(model, input.dims())?;
        let x = model_input(model, input)?;
        let target = fix_target(model, &x, target)?;
        let space = match layer {
            None => x.clone(),
            Some(l) => {
                if !matches!(l, LayerName::Conv(_)) {
                    return Err(VizError::InvalidArgument(format!(
                        "layer feature ablation needs a convolution (conv1..conv{}), not {l}",
                        model.spec().convs().len()
                    )));
                }
                require_target_above(model, &target, l, "layer-feature-ablation")?;
                LayerActivation::new(model, l).attribute(&x)?
            }
        };
        let dims = space.dims4().context(|| "feature space shape".into())?;
        let flat = |t: &Tensor| -> Result<Vec<f32>, VizError> {
            t.broadcast_as(space.shape())
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .context(|| "reading the values and the baseline".into())
        };
        let pixels = flat(&space)?;
        let base = flat(&baseline.tensor_for(&space)?)?;
        Ok(Self {
            model,
            layer,
            x,
            target,
            pixels,
            base,
            dims,
            batch: batch.max(1),
        })
    }

    fn image_len(&self) -> usize {
        let (_, c, h, w) = self.dims;
        c * h * w
    }

    /// Image `i` and its baseline, as host values.
    pub(crate) fn image(&self, i: usize) -> (&[f32], &[f32]) {
        let len = self.image_len();
        (
            &self.pixels[i * len..(i + 1) * len],
            &self.base[i * len..(i + 1) * len],
        )
    }

    /// The target values of the unmodified images.
    fn clean(&self) -> Result<Vec<f32>, VizError> {
        target_values(self.model, &StandardRelu, &self.x, &self.target)?
            .to_vec1()
            .context(|| "reading the target values".into())
    }

    /// The target value of image `i` with, for each entry of `present`,
    /// the elements of the features not present set to the baseline.
    /// `present[k]` lists which features of `features` keep their input.
    pub(crate) fn values(
        &self,
        i: usize,
        features: &[Vec<usize>],
        present: &[Vec<bool>],
    ) -> Result<Vec<f32>, VizError> {
        let len = self.image_len();
        let (_, c, h, w) = self.dims;
        let image = &self.pixels[i * len..(i + 1) * len];
        let base = &self.base[i * len..(i + 1) * len];
        let mut out = Vec::with_capacity(present.len());
        for chunk in present.chunks(self.batch) {
            let mut data = Vec::with_capacity(chunk.len() * len);
            for keep in chunk {
                let start = data.len();
                data.extend_from_slice(image);
                for (f, elements) in features.iter().enumerate() {
                    if !keep[f] {
                        for &e in elements {
                            data[start + e] = base[e];
                        }
                    }
                }
            }
            let batch = Tensor::from_vec(data, (chunk.len(), c, h, w), self.x.device())
                .context(|| "the perturbed images".into())?;
            let target = image_target(&self.target, i, chunk.len());
            let values = match self.layer {
                None => target_values(self.model, &StandardRelu, &batch, &target)?,
                Some(layer) => {
                    // The image itself below the layer, the perturbed
                    // activations from it on.
                    let (_, ic, ih, iw) = self.x.dims4().context(|| "input shape".into())?;
                    let copies = self
                        .x
                        .narrow(0, i, 1)
                        .and_then(|t| t.broadcast_as((chunk.len(), ic, ih, iw)))
                        .and_then(|t| t.contiguous())
                        .context(|| "copies of the image".into())?;
                    let rule = Replace {
                        layer,
                        value: batch,
                    };
                    target_values(self.model, &rule, &copies, &target)?
                }
            };
            let values: Vec<f32> = values
                .to_vec1()
                .context(|| "reading the target values".into())?;
            out.extend(values);
        }
        Ok(out)
    }

    /// The map `[N, C, H, W]` from one value per feature of every image.
    pub(crate) fn map(
        &self,
        features: &[Vec<Vec<usize>>],
        scores: &[Vec<f64>],
    ) -> Result<Tensor, VizError> {
        let len = self.image_len();
        let (n, c, h, w) = self.dims;
        let mut map = vec![0f32; n * len];
        for i in 0..n {
            for (elements, &s) in features[i].iter().zip(&scores[i]) {
                for &e in elements {
                    map[i * len + e] = s as f32;
                }
            }
        }
        Tensor::from_vec(map, (n, c, h, w), self.x.device()).context(|| "the feature map".into())
    }
}

/// Feature ablation: every feature (a group of input elements, see
/// [`FeatureMask`]) in turn set to the baseline, and the drop of the target
/// `T(x) - T(x with the feature ablated)` written to all its elements.
/// Captum's `FeatureAblation`. Signed, `[N, C, H, W]`; one forward pass per
/// feature and image, `batch` images at a time.
#[derive(Debug, Clone)]
pub struct FeatureAblation<'a> {
    model: &'a AllCnn,
    mask: FeatureMask,
    baseline: Baseline,
    batch: usize,
}

impl<'a> FeatureAblation<'a> {
    /// 4x4 patches set to zero, 256 images per pass.
    pub fn new(model: &'a AllCnn) -> Self {
        Self {
            model,
            mask: FeatureMask::default(),
            baseline: Baseline::default(),
            batch: 256,
        }
    }

    feature_setters!();

    /// See [`crate::Attribute::attribute`].
    ///
    /// # Errors
    /// As [`crate::Attribute::attribute`]; also a mask or baseline that
    /// does not fit the input.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        let p = Perturbed::new(self.model, input, target, &self.baseline, self.batch)?;
        let features = self.mask.features(p.dims)?;
        ablate(&p, &features)
    }
}

impl crate::Attribute for FeatureAblation<'_> {
    fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        FeatureAblation::attribute(self, input, target)
    }
}

/// Feature ablation of a hidden layer: the output of convolution `layer`
/// (after its ReLU) is split into features by a [`FeatureMask`] over its
/// `[C, h, w]`, each feature in turn set to the baseline while the network
/// above the layer runs on, and the drop of the target written to all its
/// units. The default mask makes every unit its own feature. Captum's
/// `LayerFeatureAblation` on that ReLU (`layer_mask`, `layer_baselines`).
/// Signed, `[N, C, h, w]`; one forward pass per feature and image,
/// `batch` at a time.
#[derive(Debug, Clone)]
pub struct LayerFeatureAblation<'a> {
    model: &'a AllCnn,
    layer: LayerName,
    mask: Option<FeatureMask>,
    baseline: Baseline,
    batch: usize,
}

impl<'a> LayerFeatureAblation<'a> {
    /// Every unit of `layer` of `model` ablated on its own to zero
    /// (Captum's defaults), 256 copies per pass.
    pub fn new(model: &'a AllCnn, layer: LayerName) -> Self {
        Self {
            model,
            layer,
            mask: None,
            baseline: Baseline::default(),
            batch: 256,
        }
    }

    /// The features: ids over the layer's `[1 or N, 1 or C, h, w]`
    /// ([`FeatureMask::Tensor`]) or patches of its maps.
    pub fn mask(mut self, mask: FeatureMask) -> Self {
        self.mask = Some(mask);
        self
    }

    baseline_batch_setters!();

    /// The map of every image at the layer's resolution.
    ///
    /// # Errors
    /// As [`FeatureAblation::attribute`]; also a layer that is not a
    /// convolution of the network, and a hidden-unit target below it.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        let p = Perturbed::at(
            self.model,
            Some(self.layer),
            input,
            target,
            &self.baseline,
            self.batch,
        )?;
        let features = match &self.mask {
            Some(mask) => mask.features(p.dims)?,
            None => {
                let (n, c, h, w) = p.dims;
                vec![(0..c * h * w).map(|e| vec![e]).collect(); n]
            }
        };
        ablate(&p, &features)
    }
}

/// `T(x) - T(x with feature k at the baseline)` for every feature `k` of
/// every image, as a map.
fn ablate(p: &Perturbed<'_>, features: &[Vec<Vec<usize>>]) -> Result<Tensor, VizError> {
    let clean = p.clean()?;
    let mut scores = Vec::with_capacity(features.len());
    for (i, f) in features.iter().enumerate() {
        let present: Vec<Vec<bool>> = (0..f.len())
            .map(|k| (0..f.len()).map(|j| j != k).collect())
            .collect();
        let values = p.values(i, f, &present)?;
        scores.push(
            values
                .iter()
                .map(|&v| f64::from(clean[i]) - f64::from(v))
                .collect(),
        );
    }
    p.map(features, &scores)
}

/// Exact Shapley values of the features ([`FeatureMask`]): each feature's
/// marginal contribution `T(S + f) - T(S)` averaged over every order in
/// which the features could be added to the baseline, computed from the
/// target at all `2^n` subsets (`n` at most [`MAX_EXACT_FEATURES`]). The
/// values of an image sum to `T(x) - T(baseline)`. Captum's
/// `ShapleyValues`. Signed, `[N, C, H, W]`.
#[derive(Debug, Clone)]
pub struct ShapleyValues<'a> {
    model: &'a AllCnn,
    mask: FeatureMask,
    baseline: Baseline,
    batch: usize,
}

impl<'a> ShapleyValues<'a> {
    /// 16x16 patches (4 features on a 32x32 image) against a zero
    /// baseline, 256 images per pass.
    pub fn new(model: &'a AllCnn) -> Self {
        Self {
            model,
            mask: FeatureMask::Patches {
                height: 16,
                width: 16,
            },
            baseline: Baseline::default(),
            batch: 256,
        }
    }

    feature_setters!();

    /// See [`crate::Attribute::attribute`].
    ///
    /// # Errors
    /// As [`crate::Attribute::attribute`]; also a mask or baseline that
    /// does not fit, and more than [`MAX_EXACT_FEATURES`] features.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        let p = Perturbed::new(self.model, input, target, &self.baseline, self.batch)?;
        let features = self.mask.features(p.dims)?;
        let mut scores = Vec::with_capacity(features.len());
        for (i, f) in features.iter().enumerate() {
            let n = f.len();
            if n > MAX_EXACT_FEATURES {
                return Err(VizError::InvalidArgument(format!(
                    "exact Shapley values of {n} features need 2^{n} forward passes per image; \
                     use at most {MAX_EXACT_FEATURES} features (larger patches) or \
                     shapley-value-sampling"
                )));
            }
            let present: Vec<Vec<bool>> = (0..1usize << n)
                .map(|s| (0..n).map(|j| s >> j & 1 == 1).collect())
                .collect();
            let v = p.values(i, f, &present)?;
            // weight(s) = s! (n - s - 1)! / n! for a subset of size s.
            let weight = |s: usize| -> f64 {
                let fact = |k: usize| (1..=k).map(|v| v as f64).product::<f64>();
                fact(s) * fact(n - s - 1) / fact(n)
            };
            let phi: Vec<f64> = (0..n)
                .map(|j| {
                    (0..1usize << n)
                        .filter(|s| s >> j & 1 == 0)
                        .map(|s| {
                            weight(s.count_ones() as usize)
                                * (f64::from(v[s | 1 << j]) - f64::from(v[s]))
                        })
                        .sum()
                })
                .collect();
            scores.push(phi);
        }
        p.map(&features, &scores)
    }
}

impl crate::Attribute for ShapleyValues<'_> {
    fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        ShapleyValues::attribute(self, input, target)
    }
}

/// Shapley values estimated from `samples` random feature orders (seeded):
/// along each order the features are added one by one to the baseline and
/// each is credited with the change of the target. Every estimate sums to
/// `T(x) - T(baseline)` over an image, whatever the sample count. Captum's
/// `ShapleyValueSampling` (its permutations come from PyTorch's generator,
/// so the estimates agree in distribution, not value). Signed,
/// `[N, C, H, W]`; `samples * (n + 1)` forward passes per image.
#[derive(Debug, Clone)]
pub struct ShapleyValueSampling<'a> {
    model: &'a AllCnn,
    mask: FeatureMask,
    baseline: Baseline,
    samples: usize,
    seed: u64,
    batch: usize,
}

impl<'a> ShapleyValueSampling<'a> {
    /// 4x4 patches against a zero baseline, 25 orders (Captum's default),
    /// seed 0, 256 images per pass.
    pub fn new(model: &'a AllCnn) -> Self {
        Self {
            model,
            mask: FeatureMask::default(),
            baseline: Baseline::default(),
            samples: 25,
            seed: 0,
            batch: 256,
        }
    }

    feature_setters!();

    /// How many random orders (at least 1).
    pub fn samples(mut self, samples: usize) -> Self {
        self.samples = samples.max(1);
        self
    }

    seed_setter!();

    /// See [`crate::Attribute::attribute`].
    ///
    /// # Errors
    /// As [`crate::Attribute::attribute`]; also a mask or baseline that
    /// does not fit.
    pub fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        let p = Perturbed::new(self.model, input, target, &self.baseline, self.batch)?;
        let features = self.mask.features(p.dims)?;
        let mut scores = Vec::with_capacity(features.len());
        for (i, f) in features.iter().enumerate() {
            let n = f.len();
            let mut rng =
                allcnn_seed::rng(self.seed, allcnn_seed::Stream::Permutation, i as u64, 0);
            let orders: Vec<Vec<usize>> = (0..self.samples)
                .map(|_| {
                    let mut order: Vec<usize> = (0..n).collect();
                    order.shuffle(&mut rng);
                    order
                })
                .collect();
            // For each order: the baseline, then one more feature at a time.
            let mut present = Vec::with_capacity(self.samples * (n + 1));
            for order in &orders {
                let mut keep = vec![false; n];
                present.push(keep.clone());
                for &j in order {
                    keep[j] = true;
                    present.push(keep.clone());
                }
            }
            let v = p.values(i, f, &present)?;
            let mut phi = vec![0f64; n];
            for (s, order) in orders.iter().enumerate() {
                let v = &v[s * (n + 1)..(s + 1) * (n + 1)];
                for (k, &j) in order.iter().enumerate() {
                    phi[j] += f64::from(v[k + 1]) - f64::from(v[k]);
                }
            }
            scores.push(phi.iter().map(|s| s / self.samples as f64).collect());
        }
        p.map(&features, &scores)
    }
}

impl crate::Attribute for ShapleyValueSampling<'_> {
    fn attribute(&self, input: &Tensor, target: &Target) -> Result<Tensor, VizError> {
        ShapleyValueSampling::attribute(self, input, target)
    }
}
