//! Sanity checks for saliency maps (Adebayo et al., 2018): does a method's
//! map change when the network's weights are randomised, layer by layer
//! from the top (cascading) or one layer at a time (independent), or when
//! the network was trained on shuffled labels? A map that survives the
//! randomisation explains the image, not the model.
//!
//! Similarity between the trained network's map and the randomised one is
//! measured per image on the channel-summed maps, as in the paper: Spearman
//! rank correlation of the absolute maps and of the signed maps, and SSIM of
//! the absolute maps scaled to `[0, 1]`, averaged over the images.

use std::collections::HashMap;

use allcnn_models::{AllCnn, LayerName};
use candle_core::{DType, Tensor};
use rand_distr::{Distribution, Normal};

use crate::error::{CandleContext, VizError};
use crate::methods::{Method, MethodOptions};
use crate::target::Target;

/// Spearman's rank correlation of `a` and `b` (ties get their mean rank);
/// 0 where either is constant (no ranking to agree with).
///
/// # Panics
/// When the lengths differ.
pub fn spearman(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "spearman: lengths differ");
    pearson(&ranks(a), &ranks(b))
}

fn ranks(v: &[f32]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

fn pearson(a: &[f64], b: &[f64]) -> f32 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa == 0.0 || sbb == 0.0 {
        0.0
    } else {
        (sab / (saa * sbb).sqrt()) as f32
    }
}

/// The structural similarity of two `h` x `w` images with values in
/// `[0, 1]`, as scikit-image's `structural_similarity(a, b, data_range=1)`:
/// a 7x7 uniform window (smaller for smaller images, kept odd), sample
/// covariances, `K1 = 0.01`, `K2 = 0.03`, the mean over the windows that fit.
///
/// # Panics
/// When the lengths are not `h * w`.
pub fn ssim(a: &[f32], b: &[f32], h: usize, w: usize) -> f32 {
    assert!(a.len() == h * w && b.len() == h * w, "ssim: sizes differ");
    let win = 7.min(h).min(w);
    let win = if win % 2 == 0 { win - 1 } else { win };
    if win == 0 {
        return 1.0;
    }
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let np = (win * win) as f64;
    let cov_norm = if np > 1.0 { np / (np - 1.0) } else { 1.0 };
    let mut total = 0.0;
    let mut count = 0usize;
    for y0 in 0..=h - win {
        for x0 in 0..=w - win {
            let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for y in y0..y0 + win {
                for x in x0..x0 + win {
                    let (p, q) = (a[y * w + x] as f64, b[y * w + x] as f64);
                    sa += p;
                    sb += q;
                    saa += p * p;
                    sbb += q * q;
                    sab += p * q;
                }
            }
            let (ua, ub) = (sa / np, sb / np);
            let va = cov_norm * (saa / np - ua * ua);
            let vb = cov_norm * (sbb / np - ub * ub);
            let vab = cov_norm * (sab / np - ua * ub);
            total += ((2.0 * ua * ub + c1) * (2.0 * vab + c2))
                / ((ua * ua + ub * ub + c1) * (va + vb + c2));
            count += 1;
        }
    }
    (total / count as f64) as f32
}

/// How two sets of maps of the same images compare: means over the
/// images where both maps can be compared ([`Similarity::compared`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Similarity {
    /// Spearman rank correlation of the absolute channel-summed maps
    /// (NaN, `null` in JSON, when no image could be compared).
    pub rank_abs: f32,
    /// Spearman rank correlation of the signed channel-summed maps.
    pub rank: f32,
    /// SSIM of the absolute channel-summed maps, each scaled to `[0, 1]`.
    pub ssim: f32,
    /// The images whose two maps both vary and are finite. A constant map
    /// (a unit that never fires, a class the randomised network never
    /// reaches) has no ranking, and a NaN map none either: such images are
    /// left out of the means instead of scoring 0 (a "pass") or 1.
    pub compared: usize,
}

/// Compares `a` and `b` `[N, C, H, W]` (or `[N, 1, H, W]`) image by image.
///
/// # Errors
/// [`VizError::BadTensor`] when the shapes differ or are not 4-D.
pub fn similarity(a: &Tensor, b: &Tensor) -> Result<Similarity, VizError> {
    if a.dims() != b.dims() || a.rank() != 4 {
        return Err(VizError::BadTensor {
            what: "maps to compare".into(),
            expected: format!(
                "two [N, C, H, W] maps of one shape (the first is {:?})",
                a.dims()
            ),
            got: b.dims().to_vec(),
        });
    }
    let (n, _, h, w) = a.dims4().context(|| "map shape".into())?;
    let planes = |t: &Tensor| -> Result<Vec<Vec<f32>>, VizError> {
        t.to_dtype(DType::F32)
            .and_then(|t| t.sum(1))
            .and_then(|t| t.flatten_from(1))
            .and_then(|t| t.to_vec2())
            .context(|| "channel-summed maps".into())
    };
    let (pa, pb) = (planes(a)?, planes(b)?);
    let scaled = |v: &[f32]| -> Vec<f32> {
        let m = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        v.iter()
            .map(|x| if m > 0.0 { x.abs() / m } else { 0.0 })
            .collect()
    };
    let abs = |v: &[f32]| -> Vec<f32> { v.iter().map(|x| x.abs()).collect() };
    let comparable = |v: &[f32]| v.iter().all(|x| x.is_finite()) && v.iter().any(|x| *x != v[0]);
    let (mut s, mut sr, mut ss, mut k) = (0.0, 0.0, 0.0, 0usize);
    for (x, y) in pa.iter().zip(&pb) {
        if !(comparable(x) && comparable(y)) {
            continue;
        }
        s += spearman(&abs(x), &abs(y));
        sr += spearman(x, y);
        ss += ssim(&scaled(x), &scaled(y), h, w);
        k += 1;
    }
    debug_assert!(k <= n);
    let mean = |total: f32| if k == 0 { f32::NAN } else { total / k as f32 };
    Ok(Similarity {
        rank_abs: mean(s),
        rank: mean(sr),
        ssim: mean(ss),
        compared: k,
    })
}

/// A copy of `model` with the convolutions `layers` (1-based) re-drawn at
/// random: each weight and bias tensor from a Gaussian with the trained
/// tensor's own mean and standard deviation (so activations keep their
/// scale), seeded by `seed` and the layer, so a layer gets the same random
/// weights in every randomisation that includes it.
///
/// # Errors
/// A layer the network does not have, or a candle error.
pub fn randomize_layers(model: &AllCnn, layers: &[usize], seed: u64) -> Result<AllCnn, VizError> {
    let mut tensors: HashMap<String, Tensor> = model.parameters().into_iter().collect();
    for &layer in layers {
        for (k, part) in ["weight", "bias"].into_iter().enumerate() {
            let name = format!("conv{layer}.{part}");
            let t = tensors.get(&name).ok_or_else(|| VizError::NoSuchLayer {
                model: model.spec().name.clone(),
                layer: format!("conv{layer}"),
                available: format!("conv1..conv{}", model.spec().convs().len()),
            })?;
            let v: Vec<f32> = t
                .flatten_all()
                .and_then(|t| t.to_dtype(DType::F32))
                .and_then(|t| t.to_vec1())
                .context(|| format!("reading {name}"))?;
            let n = v.len().max(1) as f64;
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
            let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
            let normal = Normal::new(mean as f32, var.sqrt() as f32).map_err(|e| {
                VizError::InvalidArgument(format!("{name}: cannot draw from its statistics: {e}"))
            })?;
            let mut rng =
                allcnn_seed::rng(seed, allcnn_seed::Stream::Randomize, layer as u64, k as u64);
            let fresh: Vec<f32> = (0..v.len()).map(|_| normal.sample(&mut rng)).collect();
            let fresh = Tensor::from_vec(fresh, t.shape(), t.device())
                .context(|| format!("random {name}"))?;
            tensors.insert(name, fresh);
        }
    }
    let mut out = AllCnn::from_tensors(
        model.spec().clone(),
        tensors,
        "randomised copy",
        model.device(),
    )?;
    out.set_conv_backend(model.conv_backend());
    Ok(out)
}

/// Which weights a sanity-check row randomised.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Randomized {
    /// The top `k` convolutions (conv`L` down to conv`L-k+1`).
    Cascading {
        /// How many, from the top.
        top: usize,
        /// The deepest layer randomised.
        down_to: String,
    },
    /// One convolution alone.
    Independent {
        /// The layer.
        layer: String,
    },
    /// A network trained on shuffled labels instead of the trained one.
    Labels,
}

/// One measurement: a method, what was randomised, and how similar its maps
/// stayed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SanityRow {
    /// The method's name.
    pub method: String,
    /// What was randomised.
    pub randomized: Randomized,
    /// How similar the maps stayed.
    pub similarity: Similarity,
}

/// A method's verdict: whether its maps depend on the learned weights.
///
/// The measure is the mean rank correlation of the absolute maps with the
/// trained network's over the upper half of the cascade (the class layer
/// random, then the top two, ..., the top `ceil(L/2)` convolutions): the
/// layers that carry what the network learned about the classes. A map
/// that stays alike while they are random (guided backpropagation and
/// Guided Grad-CAM, in Adebayo et al. and here) explains the image, not the
/// model, and fails.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verdict {
    /// The method's name.
    pub method: String,
    /// Rank correlation of the absolute maps with only the class layer
    /// randomised.
    pub top_layer_rank_abs: f32,
    /// Rank correlation of the absolute maps with every layer randomised.
    pub all_layers_rank_abs: f32,
    /// The mean rank correlation of the absolute maps over the upper half
    /// of the cascade (top 1, 2, ..., `ceil(L/2)` convolutions random).
    pub upper_cascade_rank_abs: f32,
    /// SSIM with every layer randomised.
    pub all_layers_ssim: f32,
    /// Rank correlation of the absolute maps against the shuffled-label
    /// network, if one was given.
    pub labels_rank_abs: Option<f32>,
    /// `upper_cascade_rank_abs < threshold` (and `labels_rank_abs <
    /// threshold` where measured), where [`Verdict::comparable`].
    pub passes: bool,
    /// Whether every comparison the verdict rests on had at least one
    /// image to compare ([`Similarity::compared`]); when not, the method
    /// neither passes nor fails: there was nothing to judge.
    pub comparable: bool,
}

/// Every measurement of a [`SanityCheck`], and a verdict per method.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SanityReport {
    /// The rank-correlation threshold of the verdicts.
    pub threshold: f32,
    /// The randomisation seed.
    pub seed: u64,
    /// Images compared.
    pub images: usize,
    /// One row per method and randomisation, cascading first.
    pub rows: Vec<SanityRow>,
    /// One verdict per method.
    pub verdicts: Vec<Verdict>,
    /// For the figure: per method, the maps of the first image for the
    /// trained network and each cascading step `[1 + L, C, H, W]`.
    #[serde(skip)]
    pub cascade_maps: Vec<(Method, Tensor)>,
    /// Per method, the trained network's maps of every image (for further
    /// measures, e.g. [`crate::DeletionInsertion`], without computing them
    /// again).
    #[serde(skip)]
    pub trained_maps: Vec<(Method, Tensor)>,
}

/// The model-randomisation test (cascading and independent) and, given a
/// network trained on shuffled labels, the data-randomisation test, for a
/// list of methods on one batch of images.
#[derive(Debug, Clone)]
pub struct SanityCheck<'a> {
    model: &'a AllCnn,
    methods: Vec<Method>,
    options: MethodOptions,
    seed: u64,
    threshold: f32,
    independent: bool,
}

impl<'a> SanityCheck<'a> {
    /// The check of `methods` on `model`: seed 0, threshold 0.5, both
    /// randomisation modes.
    pub fn new(model: &'a AllCnn, methods: &[Method]) -> Self {
        Self {
            model,
            methods: methods.to_vec(),
            options: MethodOptions::default(),
            seed: 0,
            threshold: 0.5,
            independent: true,
        }
    }

    /// The methods' settings.
    pub fn options(mut self, options: MethodOptions) -> Self {
        self.options = options;
        self
    }

    /// Seed of the random weights.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// A method passes when the mean rank correlation of its absolute maps
    /// over the upper half of the cascade
    /// ([`Verdict::upper_cascade_rank_abs`]) falls below this.
    pub fn threshold(mut self, threshold: f32) -> Self {
        self.threshold = threshold;
        self
    }

    /// Whether to also randomise each layer alone (doubles the work).
    pub fn independent(mut self, on: bool) -> Self {
        self.independent = on;
        self
    }

    /// Runs the checks on `input` for `target`. A class target should be
    /// fixed (`labels` or the trained network's predictions resolved once),
    /// so every network is asked about the same class. `shuffled`: a network
    /// of the same architecture trained on shuffled labels, for the
    /// data-randomisation test. `progress` is called with `(done, total)`
    /// after each network.
    ///
    /// # Errors
    /// As [`Method::attribute_with`]; a shuffled-label network of another
    /// architecture.
    pub fn run(
        &self,
        input: &Tensor,
        target: &Target,
        shuffled: Option<&AllCnn>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<SanityReport, VizError> {
        let layers = self.model.spec().convs().len();
        if let Some(other) = shuffled {
            if other.spec().convs() != self.model.spec().convs() {
                return Err(VizError::InvalidArgument(format!(
                    "the shuffled-label network's architecture is `{}`, not the explained network's `{}`",
                    other.spec().name,
                    self.model.spec().name
                )));
            }
        }
        let attribute = |m: &AllCnn| -> Result<Vec<Tensor>, VizError> {
            self.methods
                .iter()
                .map(|method| method.attribute_with(m, input, target, &self.options))
                .collect()
        };
        let total = 1 + layers * (1 + self.independent as usize) + shuffled.is_some() as usize;
        let mut done = 0;
        let mut step = || {
            done += 1;
            progress(done, total);
        };
        let trained = attribute(self.model)?;
        step();
        let mut rows = Vec::new();
        let mut cascade: Vec<Vec<Tensor>> = self
            .methods
            .iter()
            .zip(&trained)
            .map(|(_, t)| first_image(t).map(|t| vec![t]))
            .collect::<Result<_, _>>()?;
        let push = |rows: &mut Vec<SanityRow>, maps: &[Tensor], randomized: Randomized| {
            for ((method, a), b) in self.methods.iter().zip(&trained).zip(maps) {
                rows.push(SanityRow {
                    method: method.name().into(),
                    randomized: randomized.clone(),
                    similarity: similarity(a, b)?,
                });
            }
            Ok::<_, VizError>(())
        };
        for top in 1..=layers {
            let chosen: Vec<usize> = (layers + 1 - top..=layers).rev().collect();
            let net = randomize_layers(self.model, &chosen, self.seed)?;
            let maps = attribute(&net)?;
            for (c, m) in cascade.iter_mut().zip(&maps) {
                c.push(first_image(m)?);
            }
            push(
                &mut rows,
                &maps,
                Randomized::Cascading {
                    top,
                    down_to: LayerName::Conv(layers + 1 - top).to_string(),
                },
            )?;
            step();
        }
        if self.independent {
            for layer in (1..=layers).rev() {
                let net = randomize_layers(self.model, &[layer], self.seed)?;
                let maps = attribute(&net)?;
                push(
                    &mut rows,
                    &maps,
                    Randomized::Independent {
                        layer: LayerName::Conv(layer).to_string(),
                    },
                )?;
                step();
            }
        }
        if let Some(other) = shuffled {
            let maps = attribute(other)?;
            push(&mut rows, &maps, Randomized::Labels)?;
            step();
        }
        let find = |method: Method, r: &Randomized| {
            rows.iter()
                .find(|row| row.method == method.name() && &row.randomized == r)
                .map(|row| row.similarity)
        };
        let verdicts = self
            .methods
            .iter()
            .map(|&m| {
                let cascading = |top: usize| Randomized::Cascading {
                    top,
                    down_to: LayerName::Conv(layers + 1 - top).to_string(),
                };
                let top = find(m, &cascading(1)).expect("measured");
                let all = find(m, &cascading(layers)).expect("measured");
                let upper = layers.div_ceil(2);
                let steps: Vec<Similarity> = (1..=upper)
                    .map(|k| find(m, &cascading(k)).expect("measured"))
                    .collect();
                let mean = steps.iter().map(|s| s.rank_abs).sum::<f32>() / upper as f32;
                let labels = find(m, &Randomized::Labels);
                let comparable = steps
                    .iter()
                    .chain([&top, &all])
                    .chain(labels.as_ref())
                    .all(|s| s.compared > 0);
                let labels = labels.map(|s| s.rank_abs);
                Verdict {
                    method: m.name().into(),
                    top_layer_rank_abs: top.rank_abs,
                    all_layers_rank_abs: all.rank_abs,
                    all_layers_ssim: all.ssim,
                    upper_cascade_rank_abs: mean,
                    labels_rank_abs: labels,
                    passes: comparable
                        && mean < self.threshold
                        && labels.is_none_or(|l| l < self.threshold),
                    comparable,
                }
            })
            .collect();
        let cascade_maps = self
            .methods
            .iter()
            .zip(cascade)
            .map(|(&m, maps)| {
                Tensor::cat(&maps, 0)
                    .map(|t| (m, t))
                    .context(|| format!("{m} cascade maps"))
            })
            .collect::<Result<_, _>>()?;
        Ok(SanityReport {
            threshold: self.threshold,
            seed: self.seed,
            images: input.dim(0).context(|| "input shape".into())?,
            rows,
            verdicts,
            cascade_maps,
            trained_maps: self.methods.iter().copied().zip(trained).collect(),
        })
    }
}

fn first_image(t: &Tensor) -> Result<Tensor, VizError> {
    t.narrow(0, 0, 1)
        .and_then(|t| t.to_device(&candle_core::Device::Cpu))
        .context(|| "the first image's map".into())
}
