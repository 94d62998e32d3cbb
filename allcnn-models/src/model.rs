//! The network built from an [`ArchSpec`]: [`AllCnn`], its forward pass with
//! captures and early stop ([`ForwardPass`]), the ReLU seam ([`ReluRule`]),
//! seeded dropout ([`DropoutRng`]) and initialisation ([`Init`]).

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Shape, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use rayon::prelude::*;

use crate::error::{CandleContext, ModelError};
use crate::kernels::conv::DirectConv;
use crate::kernels::{pool, relu, simd};
use crate::spec::{ArchSpec, ConvShape, Layer, LayerName};

/// What happens at every ReLU of the network: the seam where `allcnn-viz`
/// plugs in the backward rules of guided backpropagation and the deconvnet.
///
/// The forward value must stay `max(x, 0)`; only the backward may differ.
pub trait ReluRule: Send + Sync {
    /// Applies the rectifier after convolution `layer` (a [`LayerName::Conv`]).
    ///
    /// # Errors
    /// Whatever the tensor operations report.
    fn relu(&self, layer: LayerName, x: &Tensor) -> candle_core::Result<Tensor>;

    /// Whether this rule is the ordinary ReLU with PyTorch's backward
    /// ([`StandardRelu`]). The model then fuses it into the convolution
    /// ([`crate::kernels::conv::conv2d_fused`]) instead of calling [`ReluRule::relu`].
    fn is_standard(&self) -> bool {
        false
    }
}

/// The ordinary ReLU, whose backward is PyTorch's: `grad * [x > 0]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StandardRelu;

impl ReluRule for StandardRelu {
    fn relu(&self, _layer: LayerName, x: &Tensor) -> candle_core::Result<Tensor> {
        relu::relu(x)
    }

    fn is_standard(&self) -> bool {
        true
    }
}

/// A seeded random source for dropout masks (candle's CPU RNG cannot be
/// seeded). Masks are drawn on the CPU and moved to the model's device, so a
/// seed gives the same masks on every device.
#[derive(Debug, Clone)]
pub struct DropoutRng {
    rng: ChaCha8Rng,
}

impl DropoutRng {
    /// A generator for `seed` and an independent `stream` (e.g. the training
    /// step, so a resumed run draws the same masks as an uninterrupted one).
    pub fn new(seed: u64, stream: u64) -> Self {
        Self {
            rng: allcnn_seed::rng(seed, allcnn_seed::Stream::Dropout, stream, 0),
        }
    }

    /// An inverted-dropout mask of `len` elements: 0 with probability `rate`,
    /// `1 / (1 - rate)` otherwise.
    pub fn mask(&mut self, len: usize, rate: f32) -> Vec<f32> {
        // Below 2^32 for every rate under 1, so a u32 (which compares 16
        // lanes at a time).
        let (threshold, keep) = mask_params(rate);
        // The same words as `len` calls of `random::<u32>()`: ChaCha can
        // start anywhere in its stream, so fixed chunks of the mask are
        // drawn in parallel, each from its own word position (the result
        // does not depend on the thread count), a block at a time (the
        // generator's wide refill) and compared in a loop that vectorises:
        // a mask per layer and step is millions of words.
        let start = self.rng.get_word_pos();
        let mut mask = vec![0f32; len];
        mask.par_chunks_mut(MASK_CHUNK)
            .enumerate()
            .for_each(|(k, chunk)| {
                let mut rng = self.rng.clone();
                rng.set_word_pos(start + (k * MASK_CHUNK) as u128);
                let mut words = [0u32; 1024];
                for part in chunk.chunks_mut(words.len()) {
                    let words = &mut words[..part.len()];
                    rng.fill(words);
                    let words: &[u32] = words;
                    simd::wide(|| {
                        for (m, &u) in part.iter_mut().zip(words) {
                            *m = if u < threshold { 0.0 } else { keep };
                        }
                    });
                }
            });
        self.rng.set_word_pos(start + len as u128);
        mask
    }

    /// [`DropoutRng::mask`] as a tensor of `shape` on `device`, the same
    /// values. On CUDA (f32, `cuda` feature) the mask is drawn on the GPU
    /// by a ChaCha8 kernel from the same words (nothing crosses from the
    /// host); elsewhere it is drawn here and copied.
    ///
    /// # Errors
    /// A candle error (allocation, kernel launch, copy).
    pub fn mask_tensor(
        &mut self,
        shape: &Shape,
        rate: f32,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let len = shape.elem_count();
        #[cfg(feature = "cuda")]
        if let Device::Cuda(dev) = device {
            let (threshold, keep) = mask_params(rate);
            let start = self.rng.get_word_pos();
            let seed = self.rng.get_seed();
            let key: [u32; 8] = std::array::from_fn(|i| {
                u32::from_le_bytes(seed[4 * i..4 * i + 4].try_into().expect("4 bytes"))
            });
            let start64 = u64::try_from(start)
                .map_err(|_| candle_core::Error::Msg("dropout: word position past 2^64".into()))?;
            let storage = crate::kernels::cuda::dropout_mask(
                dev,
                len,
                key,
                self.rng.get_stream(),
                start64,
                threshold,
                keep,
            )?;
            self.rng.set_word_pos(start + len as u128);
            return Ok(Tensor::from_storage(
                candle_core::Storage::Cuda(storage),
                shape.clone(),
                candle_core::op::BackpropOp::none(),
                false,
            ));
        }
        Tensor::from_vec(self.mask(len, rate), shape, device)
    }
}

/// The word threshold and the kept value of a dropout `rate`:
/// P(u < threshold) = rate for u uniform on the 32-bit integers.
fn mask_params(rate: f32) -> (u32, f32) {
    let threshold = (f64::from(rate) * 4_294_967_296.0) as u64;
    (
        u32::try_from(threshold).unwrap_or(u32::MAX),
        1.0 / (1.0 - rate),
    )
}

/// Mask elements per parallel chunk of [`DropoutRng::mask`]: a multiple of
/// ChaCha's 16-word block.
const MASK_CHUNK: usize = 1 << 16;

/// What [`AllCnn::train_grads`] computes for one training batch.
#[derive(Debug)]
pub struct TrainGrads {
    /// Training-mode logits `[N, classes]` (dropout on).
    pub logits: Tensor,
    /// The mean softmax cross-entropy of the batch.
    pub loss: f32,
    /// The gradient of `loss` for every parameter, keyed by the parameter
    /// tensors as candle's `backward` keys them (so an optimiser over the
    /// [`AllCnn::make_trainable`] variables takes it as it is).
    pub grads: GradStore,
}

/// Weight initialisation for fresh networks. Biases start at 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// He/Kaiming normal: `N(0, 2 / fan_in)`, fan_in = in * k * k.
    HeNormal,
    /// Xavier/Glorot uniform: `U(-a, a)`, `a = sqrt(6 / (fan_in + fan_out))`.
    XavierUniform,
    /// Xavier/Glorot normal: `N(0, 2 / (fan_in + fan_out))`.
    XavierNormal,
    /// LeCun uniform: `U(-a, a)`, `a = sqrt(3 / fan_in)`, what Caffe's
    /// `xavier` filler draws (its default `variance_norm: FAN_IN`), so the
    /// init of the public Caffe All-CNN-C runs. It differs from
    /// [`Init::XavierUniform`] where fan-in and fan-out differ: 4x wider in
    /// All-CNN-C's first layer (fan-in 27, fan-out 864). Also read as
    /// `caffe-xavier`.
    #[serde(alias = "caffe-xavier")]
    LecunUniform,
}

impl std::str::FromStr for Init {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "he-normal" | "he" | "kaiming" => Ok(Init::HeNormal),
            "xavier-uniform" | "xavier" | "glorot" => Ok(Init::XavierUniform),
            "xavier-normal" => Ok(Init::XavierNormal),
            "lecun-uniform" | "caffe-xavier" => Ok(Init::LecunUniform),
            _ => Err(format!(
                "unknown init `{s}`: use he-normal, xavier-uniform, xavier-normal or lecun-uniform (Caffe's xavier filler)"
            )),
        }
    }
}

impl Init {
    fn sample(self, shape: &ConvShape, rng: &mut ChaCha8Rng) -> Vec<f32> {
        let k2 = shape.kernel * shape.kernel;
        let fan_in = (shape.in_channels * k2) as f64;
        let fan_out = (shape.out_channels * k2) as f64;
        let n = shape.weight_shape().iter().product();
        let draw = |d: &dyn Fn(&mut ChaCha8Rng) -> f64, rng: &mut ChaCha8Rng| -> Vec<f32> {
            (0..n).map(|_| d(rng) as f32).collect()
        };
        let uniform = |a: f64, rng: &mut ChaCha8Rng| -> Vec<f32> {
            let d = Uniform::new_inclusive(-a, a).expect("finite bounds");
            draw(&|r| d.sample(r), rng)
        };
        match self {
            Init::HeNormal => {
                let d = Normal::new(0.0, (2.0 / fan_in).sqrt()).expect("finite std");
                draw(&|r| d.sample(r), rng)
            }
            Init::XavierNormal => {
                let d = Normal::new(0.0, (2.0 / (fan_in + fan_out)).sqrt()).expect("finite std");
                draw(&|r| d.sample(r), rng)
            }
            Init::XavierUniform => uniform((6.0 / (fan_in + fan_out)).sqrt(), rng),
            Init::LecunUniform => uniform((3.0 / fan_in).sqrt(), rng),
        }
    }
}

#[derive(Debug, Clone)]
struct Conv {
    shape: ConvShape,
    weight: Tensor,
    bias: Tensor,
}

/// A network of the All-CNN family: an [`ArchSpec`] plus its parameters.
///
/// Parameters are named `conv{i}.weight` `[out, in, k, k]` and `conv{i}.bias`
/// `[out]`, as in the golden PyTorch state dicts. Computation is in f32.
#[derive(Debug, Clone)]
pub struct AllCnn {
    spec: ArchSpec,
    convs: Vec<Conv>,
    device: Device,
    conv_backend: ConvBackend,
}

/// Which convolution implementation the network runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConvBackend {
    /// [`crate::kernels::conv::conv2d`]: im2col + GEMM for the forward and both
    /// gradients on CPU (f32); on CUDA (f32, `cudnn` feature) cuDNN in all
    /// three passes with our bias + ReLU kernels; candle's `conv2d` elsewhere.
    Gemm,
    /// As `Gemm`, but 3x3 stride-1 convolutions use Winograd F(2x2, 3x3)
    /// ([`crate::kernels::conv::Algorithm::Winograd`]): 2.25x fewer multiplications,
    /// equal up to f32 rounding. The default.
    #[default]
    Winograd,
    /// As `Winograd`, with every convolution GEMM (Winograd and im2col) on
    /// bf16-rounded operands and f32 accumulation
    /// ([`crate::kernels::conv::Algorithm::WinogradBf16`]): faster where the CPU has
    /// AVX-512 BF16, about 1e-3 relative from f32. An opt-in.
    WinogradBf16,
    /// As `Winograd`, with Winograd F(4x4, 3x3) wherever a pass's output
    /// map is larger than 6x6 ([`crate::kernels::conv::Algorithm::WinogradF4`]):
    /// 4x fewer multiplications than direct on those layers, f32 throughout,
    /// up to about 1e-5 relative from `Winograd`. An opt-in.
    WinogradF4,
    /// candle's own `conv2d` everywhere (for comparison and benchmarks).
    Candle,
}

impl ConvBackend {
    /// Every backend with its name in configs and on the command line.
    pub const ALL: [(&'static str, ConvBackend); 5] = [
        ("winograd", ConvBackend::Winograd),
        ("winograd-bf16", ConvBackend::WinogradBf16),
        ("winograd-f4", ConvBackend::WinogradF4),
        ("gemm", ConvBackend::Gemm),
        ("candle", ConvBackend::Candle),
    ];

    /// The backend called `name` (as in [`ConvBackend::ALL`]).
    ///
    /// # Errors
    /// [`ModelError::UnknownConvBackend`] naming the known backends.
    pub fn from_name(name: &str) -> Result<Self, ModelError> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, b)| b)
            .ok_or_else(|| ModelError::UnknownConvBackend {
                name: name.to_string(),
                known: Self::ALL.map(|(n, _)| n).join(", "),
            })
    }

    /// The algorithm of our CPU convolution this backend runs; `None` for
    /// candle's.
    fn algorithm(self) -> Option<crate::kernels::conv::Algorithm> {
        use crate::kernels::conv::Algorithm;
        match self {
            ConvBackend::Gemm => Some(Algorithm::Im2col),
            ConvBackend::Winograd => Some(Algorithm::Winograd),
            ConvBackend::WinogradBf16 => Some(Algorithm::WinogradBf16),
            ConvBackend::WinogradF4 => Some(Algorithm::WinogradF4),
            ConvBackend::Candle => None,
        }
    }

    /// The name of this backend (as in [`ConvBackend::ALL`]).
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|&&(_, b)| b == self)
            .map_or("winograd", |&(n, _)| n)
    }
}

impl AllCnn {
    /// A freshly initialised network, reproducible from `seed` whatever the
    /// device.
    ///
    /// # Errors
    /// [`ModelError::InvalidSpec`] for an inconsistent spec, or a candle error
    /// moving the parameters to `device`.
    pub fn init(
        spec: ArchSpec,
        init: Init,
        seed: u64,
        device: &Device,
    ) -> Result<Self, ModelError> {
        spec.validate()?;
        let mut rng = allcnn_seed::rng(seed, allcnn_seed::Stream::Init, 0, 0);
        let mut convs = Vec::new();
        for shape in spec.convs() {
            let w = init.sample(&shape, &mut rng);
            let weight = Tensor::from_vec(w, shape.weight_shape().to_vec(), device)
                .context(|| format!("initialising conv{}.weight", shape.index))?;
            let bias = Tensor::zeros(shape.out_channels, DType::F32, device)
                .context(|| format!("initialising conv{}.bias", shape.index))?;
            convs.push(Conv {
                shape,
                weight,
                bias,
            });
        }
        Ok(Self {
            spec,
            convs,
            device: device.clone(),
            conv_backend: ConvBackend::default(),
        })
    }

    /// Builds the network from named tensors, checking strictly: every
    /// parameter must be present with its exact shape, and no other tensor
    /// may be there. `source` names where the tensors came from (a file path)
    /// for the error messages. Tensors are converted to f32 on `device`.
    ///
    /// # Errors
    /// [`ModelError::MissingTensor`], [`ModelError::UnexpectedTensor`] or
    /// [`ModelError::ShapeMismatch`], each naming the tensor and shapes.
    pub fn from_tensors(
        spec: ArchSpec,
        mut tensors: HashMap<String, Tensor>,
        source: &str,
        device: &Device,
    ) -> Result<Self, ModelError> {
        spec.validate()?;
        let mut convs = Vec::new();
        for shape in spec.convs() {
            let mut take = |suffix: &str, expected: Vec<usize>| -> Result<Tensor, ModelError> {
                let name = format!("conv{}.{suffix}", shape.index);
                let t = tensors
                    .remove(&name)
                    .ok_or_else(|| ModelError::MissingTensor {
                        source_name: source.to_string(),
                        tensor: name.clone(),
                        expected: expected.clone(),
                    })?;
                if t.dims() != expected.as_slice() {
                    return Err(ModelError::ShapeMismatch {
                        source_name: source.to_string(),
                        tensor: name,
                        expected,
                        got: t.dims().to_vec(),
                        model: spec.name.clone(),
                    });
                }
                let bad = |reason: String| ModelError::BadTensor {
                    source_name: source.to_string(),
                    tensor: name.clone(),
                    reason,
                };
                if !t.dtype().is_float() {
                    return Err(bad(format!(
                        "its dtype is {:?}: weights are floating point (f32, f16, bf16 or f64)",
                        t.dtype()
                    )));
                }
                let t = t
                    .to_dtype(DType::F32)
                    .context(|| format!("{source}: converting `{name}` to f32"))?;
                let values: Vec<f32> = t
                    .flatten_all()
                    .and_then(|v| v.to_vec1())
                    .context(|| format!("{source}: reading `{name}`"))?;
                let bad_values = values.iter().filter(|v| !v.is_finite()).count();
                if bad_values > 0 {
                    return Err(bad(format!(
                        "{bad_values} of its {} values {} NaN or infinite: the file is corrupt, or was saved from a run that diverged",
                        values.len(),
                        if bad_values == 1 { "is" } else { "are" }
                    )));
                }
                t.to_device(device)
                    .context(|| format!("{source}: moving `{name}` to {device:?}"))
            };
            let weight = take("weight", shape.weight_shape().to_vec())?;
            let bias = take("bias", vec![shape.out_channels])?;
            convs.push(Conv {
                shape,
                weight,
                bias,
            });
        }
        // Report leftovers in a stable order.
        let leftover: BTreeMap<_, _> = tensors.into_iter().collect();
        if let Some((name, t)) = leftover.into_iter().next() {
            return Err(ModelError::UnexpectedTensor {
                source_name: source.to_string(),
                tensor: name,
                shape: t.dims().to_vec(),
                model: spec.name.clone(),
            });
        }
        Ok(Self {
            spec,
            convs,
            device: device.clone(),
            conv_backend: ConvBackend::default(),
        })
    }

    /// The architecture.
    pub fn spec(&self) -> &ArchSpec {
        &self.spec
    }

    /// Chooses the convolution implementation (see [`ConvBackend`]).
    pub fn set_conv_backend(&mut self, backend: ConvBackend) {
        self.conv_backend = backend;
    }

    /// The convolution implementation in use.
    pub fn conv_backend(&self) -> ConvBackend {
        self.conv_backend
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.convs.last().map_or(0, |c| c.shape.out_channels)
    }

    /// The parameters in forward order as `(name, tensor)`.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        self.convs
            .iter()
            .flat_map(|c| {
                [
                    (format!("conv{}.weight", c.shape.index), c.weight.clone()),
                    (format!("conv{}.bias", c.shape.index), c.bias.clone()),
                ]
            })
            .collect()
    }

    /// Makes every parameter a trainable [`Var`] (for an optimiser) and
    /// returns them in forward order with their names. The model then computes
    /// with these variables, so gradients of its outputs reach them.
    ///
    /// # Errors
    /// A candle error copying a parameter.
    pub fn make_trainable(&mut self) -> Result<Vec<(String, Var)>, ModelError> {
        let mut vars = Vec::new();
        for c in &mut self.convs {
            let i = c.shape.index;
            let w = Var::from_tensor(&c.weight).context(|| format!("conv{i}.weight as a Var"))?;
            let b = Var::from_tensor(&c.bias).context(|| format!("conv{i}.bias as a Var"))?;
            c.weight = w.as_tensor().clone();
            c.bias = b.as_tensor().clone();
            vars.push((format!("conv{i}.weight"), w));
            vars.push((format!("conv{i}.bias"), b));
        }
        Ok(vars)
    }

    /// The same network with its parameters outside autograd: they share
    /// their storage with `self` (no copy), but passes through the result
    /// record no graph, as under PyTorch's `torch.no_grad()`. For
    /// evaluating a model whose parameters are trainable [`Var`]s (see
    /// [`AllCnn::make_trainable`]): its [`AllCnn::forward`] then takes the
    /// fast inference path and keeps no activations for a backward pass.
    pub fn detach(&self) -> AllCnn {
        let mut model = self.clone();
        for c in &mut model.convs {
            c.weight = c.weight.detach();
            c.bias = c.bias.detach();
        }
        model
    }

    /// Eval-mode logits `[N, classes]` for `x` `[N, C, H, W]` (no dropout).
    ///
    /// On a CPU with AMX and bf16 convolutions, a pass that autograd does
    /// not follow hands activations between consecutive direct
    /// convolutions as packed bf16 planes (docs/performance.md); the values
    /// are those of [`ForwardPass::logits`], bit for bit.
    ///
    /// # Errors
    /// [`ModelError::BadInput`] / [`ModelError::InputTooSmall`] for an input
    /// the network cannot take, or a candle error.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        if let Some(logits) = self.eval_on_slices(x)? {
            return Ok(logits);
        }
        self.pass().logits(x)
    }

    /// Whether `x` and every parameter are f32 on the CPU: what the passes
    /// on slices ([`AllCnn::train_grads`], [`AllCnn::forward`]) take.
    fn cpu_f32(&self, x: &Tensor) -> bool {
        let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        cpu_f32(x)
            && self
                .convs
                .iter()
                .all(|c| cpu_f32(&c.weight) && cpu_f32(&c.bias))
    }

    /// The eval logits on slices, for a network with two consecutive
    /// convolutions that run the direct AMX kernel (bf16 on a CPU with
    /// AMX): each such convolution hands its output to the next as that
    /// one's packed input planes, skipping the f32 round trip. The same
    /// kernels and roundings as [`ForwardPass::logits`], so the same
    /// values bit for bit; `None` where it does not apply (and the pass
    /// runs as usual), or where autograd must see the pass (a variable
    /// among the input and the parameters).
    fn eval_on_slices(&self, x: &Tensor) -> Result<Option<Tensor>, ModelError> {
        use crate::kernels::conv::Activation;
        let Some(algorithm) = self.conv_backend.algorithm() else {
            return Ok(None);
        };
        // A pass that autograd follows (a variable among the input and the
        // parameters) keeps candle's graph.
        let tracked = x.track_op()
            || self
                .convs
                .iter()
                .any(|c| c.weight.track_op() || c.bias.track_op());
        if tracked || !self.cpu_f32(x) {
            return Ok(None);
        }
        self.check_input(x)?;
        let name = &self.spec.name;
        let ctx = |what: &str| format!("{name}: {what}");
        let (n, c, h, w) = x.dims4().context(|| ctx("input"))?;
        enum Op {
            Conv(usize, DirectConv),
            Pool([usize; 4]),
        }
        let mut ops = Vec::new();
        let mut dims = [n, c, h, w];
        for layer in &self.spec.layers {
            match *layer {
                Layer::Conv {
                    stride, padding, ..
                } => {
                    let index = ops.iter().filter(|o| matches!(o, Op::Conv(..))).count();
                    let p = &self.convs[index];
                    let conv = DirectConv::new(&dims, p.weight.dims(), stride, padding, algorithm)
                        .context(|| ctx(&format!("conv{}", index + 1)))?;
                    dims = conv.out_dims();
                    ops.push(Op::Conv(index, conv));
                }
                Layer::MaxPool => {
                    let [pn, pc, ph, pw] = dims;
                    ops.push(Op::Pool(dims));
                    dims = [pn, pc, pool::pooled_size(ph), pool::pooled_size(pw)];
                }
                Layer::Dropout { .. } => {}
            }
        }
        let hands_on = ops.windows(2).any(|pair| match pair {
            [Op::Conv(_, a), Op::Conv(_, b)] => a.is_direct() && b.is_direct(),
            _ => false,
        });
        if !hands_on {
            return Ok(None);
        }
        // The parameters are read in place (no copy per batch).
        let params: Vec<_> = self
            .convs
            .iter()
            .map(|p| (p.weight.storage_and_layout(), p.bias.storage_and_layout()))
            .collect();
        fn slice<'a, S: std::ops::Deref<Target = candle_core::Storage>>(
            (s, l): &'a (S, &candle_core::Layout),
            what: &str,
        ) -> candle_core::Result<&'a [f32]> {
            match &**s {
                candle_core::Storage::Cpu(cpu) => crate::kernels::slice::f32_slice(cpu, l, what),
                _ => candle_core::bail!("{what}: not on the CPU"),
            }
        }
        let x = &x.contiguous().context(|| ctx("input"))?;
        let input = x.storage_and_layout();
        let mut act = Activation::F32(slice(&input, "input").context(|| ctx("input"))?.to_vec());
        drop(input);
        for (i, op) in ops.iter().enumerate() {
            act = match op {
                Op::Conv(index, conv) => {
                    let (weight, bias) = &params[*index];
                    let layer = format!("conv{}", index + 1);
                    let (w, b) = (
                        slice(weight, "weight").context(|| ctx(&layer))?,
                        slice(bias, "bias").context(|| ctx(&layer))?,
                    );
                    let next = match ops.get(i + 1) {
                        Some(Op::Conv(_, next)) => Some(next),
                        _ => None,
                    };
                    conv.forward_eval(&act, w, b, next)
                }
                Op::Pool([pn, pc, ph, pw]) => {
                    let Activation::F32(v) = &act else {
                        unreachable!("only convolutions take packed planes")
                    };
                    Activation::F32(pool::cpu_pool(v, (*pn, *pc, *ph, *pw)))
                }
            };
        }
        let Activation::F32(top) = act else {
            unreachable!("the last layer writes f32")
        };
        let [tn, maps, mh, mw] = dims;
        Tensor::from_vec(top, (tn, maps, mh, mw), x.device())
            .and_then(|t| t.mean((2, 3)))
            .context(|| ctx("global average"))
            .map(Some)
    }

    /// Training-mode logits: dropout active, masks drawn from `rng`.
    ///
    /// # Errors
    /// As [`AllCnn::forward`].
    pub fn forward_train(&self, x: &Tensor, rng: &mut DropoutRng) -> Result<Tensor, ModelError> {
        self.pass().train(rng).logits(x)
    }

    /// One training batch through this crate's CPU kernels without
    /// candle's autograd: the training-mode forward (dropout masks from
    /// `rng`, drawn exactly as [`AllCnn::forward_train`] draws them), the
    /// mean softmax cross-entropy with `labels`, and the gradient of every
    /// parameter. The same convolutions, ReLU masks, max-pool routing and
    /// bias sums as the autograd path, but no gradient buffer is zero-filled
    /// and then added to, and dropout's backward is one multiply. `None`
    /// where this path does not apply (another device or dtype,
    /// [`ConvBackend::Candle`]): use [`AllCnn::forward_train`], the loss and
    /// candle's `backward` there.
    ///
    /// # Errors
    /// [`ModelError::BadInput`] / [`ModelError::InputTooSmall`] for an input
    /// the network cannot take, [`ModelError::BadLabels`] for labels that do
    /// not match the batch or the classes, or a candle error naming the step.
    pub fn train_grads(
        &self,
        x: &Tensor,
        labels: &[u32],
        rng: &mut DropoutRng,
    ) -> Result<Option<TrainGrads>, ModelError> {
        let Some(algorithm) = self.conv_backend.algorithm() else {
            return Ok(None);
        };
        if !self.cpu_f32(x) {
            return Ok(None);
        }
        self.check_input(x)?;
        let name = &self.spec.name;
        let ctx = |what: &str| format!("{name}: {what}");
        let (n, c, h, w) = x.dims4().context(|| ctx("input"))?;
        let classes = self.classes();
        let bad_labels = |reason: String| ModelError::BadLabels {
            name: name.clone(),
            reason,
        };
        if labels.len() != n {
            return Err(bad_labels(format!(
                "{} labels for a batch of {n}",
                labels.len()
            )));
        }
        if let Some(&l) = labels.iter().find(|&&l| l as usize >= classes) {
            return Err(bad_labels(format!("label {l} for {classes} classes")));
        }

        // Forward: every activation kept (acts[0] is the input), with what
        // made it.
        enum Step {
            Dropout {
                mask: Vec<f32>,
            },
            Conv {
                index: usize,
                conv: DirectConv,
                input: usize,
            },
            Pool {
                input: usize,
                dims: (usize, usize, usize, usize),
            },
        }
        let data = |t: &Tensor, what: &str| -> Result<Vec<f32>, ModelError> {
            t.flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .context(|| ctx(what))
        };
        let mut acts = vec![data(x, "input")?];
        let mut dims = [n, c, h, w];
        let mut steps = Vec::new();
        let mut params = Vec::with_capacity(self.convs.len());
        for layer in &self.spec.layers {
            match *layer {
                Layer::Dropout { rate } if rate > 0.0 => {
                    let last = acts.last().expect("the input is an activation");
                    let mask = rng.mask(last.len(), rate);
                    let mut out = vec![0f32; last.len()];
                    out.par_chunks_mut(4096)
                        .zip(last.par_chunks(4096).zip(mask.par_chunks(4096)))
                        .for_each(|(o, (a, m))| {
                            simd::wide(|| {
                                for ((o, a), m) in o.iter_mut().zip(a).zip(m) {
                                    *o = a * m;
                                }
                            })
                        });
                    acts.push(out);
                    steps.push(Step::Dropout { mask });
                }
                Layer::Dropout { .. } => {}
                Layer::Conv {
                    stride, padding, ..
                } => {
                    let index = params.len();
                    let p = &self.convs[index];
                    let conv_ctx = || ctx(&format!("conv{}", index + 1));
                    let conv = DirectConv::new(&dims, p.weight.dims(), stride, padding, algorithm)
                        .context(conv_ctx)?;
                    let weight = data(&p.weight, "a weight")?;
                    let bias = data(&p.bias, "a bias")?;
                    let input = acts.len() - 1;
                    let y = conv.forward(&acts[input], &weight, &bias);
                    dims = conv.out_dims();
                    acts.push(y);
                    params.push((weight, bias));
                    steps.push(Step::Conv { index, conv, input });
                }
                Layer::MaxPool => {
                    let input = acts.len() - 1;
                    let [pn, pc, ph, pw] = dims;
                    let y = pool::cpu_pool(&acts[input], (pn, pc, ph, pw));
                    dims = [pn, pc, pool::pooled_size(ph), pool::pooled_size(pw)];
                    acts.push(y);
                    steps.push(Step::Pool {
                        input,
                        dims: (pn, pc, ph, pw),
                    });
                }
            }
        }

        // The global average, the loss and its gradient, in f64.
        let [_, maps, mh, mw] = dims;
        let plane = mh * mw;
        let top = acts.last().expect("a network has a layer");
        let logits: Vec<f32> = top
            .chunks(plane)
            .map(|p| p.iter().sum::<f32>() / plane as f32)
            .collect();
        let mut dlogits = vec![0f32; n * maps];
        let mut loss = 0f64;
        for ((z, d), &label) in logits
            .chunks(maps)
            .zip(dlogits.chunks_mut(maps))
            .zip(labels)
        {
            let max = z
                .iter()
                .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
            let sum: f64 = z.iter().map(|&v| (f64::from(v) - max).exp()).sum();
            let lse = max + sum.ln();
            loss += lse - f64::from(z[label as usize]);
            for (j, (d, &v)) in d.iter_mut().zip(z).enumerate() {
                let p = (f64::from(v) - lse).exp();
                let hit = if j == label as usize { 1.0 } else { 0.0 };
                *d = ((p - hit) / n as f64) as f32;
            }
        }
        let loss = (loss / n as f64) as f32;

        // Backward, from the class maps down; the input needs no gradient.
        let mut grad: Vec<f32> = dlogits
            .iter()
            .flat_map(|&d| std::iter::repeat_n(d / plane as f32, plane))
            .collect();
        let mut grads = GradStore::default();
        let first_conv_input = steps.iter().find_map(|s| match s {
            Step::Conv { input, .. } => Some(*input),
            _ => None,
        });
        let mut at = acts.len() - 1;
        for step in steps.iter().rev() {
            match step {
                Step::Dropout { mask } => {
                    grad.par_chunks_mut(4096)
                        .zip(mask.par_chunks(4096))
                        .for_each(|(g, m)| {
                            simd::wide(|| g.iter_mut().zip(m).for_each(|(g, m)| *g *= m))
                        });
                }
                Step::Pool { input, dims } => {
                    grad = pool::cpu_pool_backward(&acts[*input], &grad, *dims);
                }
                Step::Conv { index, conv, input } => {
                    let p = &self.convs[*index];
                    let (weight, _) = &params[*index];
                    // Layers below the first convolution only reshape the
                    // input: no gradient is needed there.
                    let want_dx = Some(*input) != first_conv_input;
                    let (dx, dw, db) =
                        conv.backward(&acts[*input], weight, &acts[at], &mut grad, want_dx);
                    let as_tensor = |v: Vec<f32>, like: &Tensor, what: &str| {
                        Tensor::from_vec(v, like.shape(), like.device())
                            .context(|| ctx(&format!("conv{} {what} gradient", index + 1)))
                    };
                    grads.insert(&p.weight, as_tensor(dw, &p.weight, "weight")?);
                    grads.insert(&p.bias, as_tensor(db, &p.bias, "bias")?);
                    match dx {
                        Some(dx) => grad = dx,
                        None => break,
                    }
                }
            }
            at -= 1;
        }
        let logits = Tensor::from_vec(logits, (n, maps), x.device()).context(|| ctx("logits"))?;
        Ok(Some(TrainGrads {
            logits,
            loss,
            grads,
        }))
    }

    /// `conv(x, weight) + bias` with this model's convolution backend
    /// ([`AllCnn::conv_backend`]), differentiable like the model's own
    /// layers, for weights of the caller's choosing (e.g. the reweighted
    /// kernels of layer-wise relevance propagation). `x` is `[N, C, H, W]`,
    /// `weight` `[O, C, k, k]`, `bias` `[O]`.
    ///
    /// # Errors
    /// Shapes that do not fit, or a candle error.
    pub fn convolve(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        stride: usize,
        padding: usize,
    ) -> Result<Tensor, ModelError> {
        self.conv_with(x, weight, bias, stride, padding, false)
            .context(|| format!("{}: convolution", self.spec.name))
    }

    fn conv_with(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        stride: usize,
        padding: usize,
        relu: bool,
    ) -> candle_core::Result<Tensor> {
        match self.conv_backend.algorithm() {
            Some(algorithm) => crate::kernels::conv::conv2d_fused(
                x, weight, bias, stride, padding, algorithm, relu,
            ),
            None => x
                .conv2d(weight, padding, stride, 1, 1)
                .and_then(|y| y.broadcast_add(&bias.reshape((1, (), 1, 1))?)),
        }
    }

    /// A configurable forward pass (training mode, ReLU rule, captured
    /// layers, early stop).
    pub fn pass(&self) -> ForwardPass<'_> {
        ForwardPass {
            model: self,
            dropout: None,
            relu: &StandardRelu,
            capture: Vec::new(),
            stop_at: None,
        }
    }

    /// Every named layer of this network in forward order.
    pub fn layer_names(&self) -> Vec<LayerName> {
        self.spec.spatial_layers().iter().map(|l| l.name).collect()
    }

    /// Whether `layer` is one of this network's named layers.
    ///
    /// # Errors
    /// [`ModelError::NoSuchLayer`] naming the layers it has.
    pub fn check_layer(&self, layer: LayerName) -> Result<(), ModelError> {
        let names = self.layer_names();
        if names.contains(&layer) {
            return Ok(());
        }
        let convs = names
            .iter()
            .filter(|n| matches!(n, LayerName::Conv(_)))
            .count();
        let pools = names.len() - convs;
        let available = if pools == 0 {
            format!("conv1..conv{convs}")
        } else {
            format!("conv1..conv{convs}, pool1..pool{pools}")
        };
        Err(ModelError::NoSuchLayer {
            model: self.spec.name.clone(),
            layer: layer.to_string(),
            available,
        })
    }

    fn check_input(&self, x: &Tensor) -> Result<(), ModelError> {
        let bad = || ModelError::BadInput {
            name: self.spec.name.clone(),
            channels: self.spec.in_channels,
            got: x.dims().to_vec(),
        };
        let (_, c, h, w) = x.dims4().map_err(|_| bad())?;
        if c != self.spec.in_channels {
            return Err(bad());
        }
        self.spec.map_sizes_hw(h, w).map(|_| ())
    }
}

impl candle_core::Module for AllCnn {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        AllCnn::forward(self, xs).map_err(candle_core::Error::wrap)
    }
}

/// The activations a [`ForwardPass`] kept.
#[derive(Debug, Clone)]
pub struct Activations {
    /// The logits `[N, classes]`, unless the pass stopped early.
    pub logits: Option<Tensor>,
    /// Captured layer outputs in forward order.
    pub layers: Vec<(LayerName, Tensor)>,
}

impl Activations {
    /// The captured output of `layer`, if it was asked for.
    pub fn get(&self, layer: LayerName) -> Option<&Tensor> {
        self.layers
            .iter()
            .find(|(n, _)| *n == layer)
            .map(|(_, t)| t)
    }
}

/// A forward pass being configured; [`ForwardPass::run`] executes it.
///
/// ```no_run
/// # use allcnn_models::{AllCnn, ArchSpec, Init, LayerName};
/// # fn main() -> Result<(), allcnn_models::ModelError> {
/// let dev = candle_core::Device::Cpu;
/// let model = AllCnn::init(ArchSpec::by_name("all-cnn-c", 10)?, Init::HeNormal, 0, &dev)?;
/// let x = candle_core::Tensor::zeros((2, 3, 32, 32), candle_core::DType::F32, &dev).unwrap();
/// let acts = model.pass().capture(LayerName::Conv(6)).stop_at(LayerName::Conv(6)).run(&x)?;
/// assert_eq!(acts.get(LayerName::Conv(6)).unwrap().dims(), &[2, 192, 8, 8]);
/// # Ok(()) }
/// ```
pub struct ForwardPass<'a> {
    model: &'a AllCnn,
    dropout: Option<&'a mut DropoutRng>,
    relu: &'a dyn ReluRule,
    capture: Vec<LayerName>,
    stop_at: Option<LayerName>,
}

impl<'a> ForwardPass<'a> {
    /// Training mode: dropout layers draw their masks from `rng`.
    pub fn train(mut self, rng: &'a mut DropoutRng) -> Self {
        self.dropout = Some(rng);
        self
    }

    /// Uses `rule` at every ReLU instead of the standard one.
    pub fn relu(mut self, rule: &'a dyn ReluRule) -> Self {
        self.relu = rule;
        self
    }

    /// Keeps the output of `layer` (`conv{i}` after its ReLU, or `pool{j}`).
    pub fn capture(mut self, layer: LayerName) -> Self {
        self.capture.push(layer);
        self
    }

    /// Stops right after `layer`: no later layer is computed and the result
    /// has no logits.
    pub fn stop_at(mut self, layer: LayerName) -> Self {
        self.stop_at = Some(layer);
        self
    }

    /// Runs the pass and returns the logits.
    ///
    /// # Errors
    /// As [`ForwardPass::run`]; also when the pass was told to stop early.
    pub fn logits(self, x: &Tensor) -> Result<Tensor, ModelError> {
        let name = self.model.spec.name.clone();
        self.run(x)?.logits.ok_or(ModelError::InvalidSpec {
            name,
            reason: "the pass stopped before the logits".to_string(),
        })
    }

    /// Runs the pass on `x` `[N, C, H, W]`.
    ///
    /// # Errors
    /// [`ModelError::BadInput`], [`ModelError::InputTooSmall`],
    /// [`ModelError::NoSuchLayer`] for a capture or stop layer the network
    /// does not have, or a candle error naming the layer.
    pub fn run(mut self, x: &Tensor) -> Result<Activations, ModelError> {
        let m = self.model;
        m.check_input(x)?;
        for &l in self.capture.iter().chain(self.stop_at.iter()) {
            m.check_layer(l)?;
        }
        let mut x = x.clone();
        let mut acts = Activations {
            logits: None,
            layers: Vec::new(),
        };
        let (mut conv_i, mut pool_i) = (0usize, 0usize);
        for layer in &m.spec.layers {
            let name = match *layer {
                Layer::Conv {
                    stride, padding, ..
                } => {
                    let c = &m.convs[conv_i];
                    conv_i += 1;
                    let name = LayerName::Conv(conv_i);
                    let ctx = || format!("{}: {name}", m.spec.name);
                    // Our convolution takes the ReLU too when it is the
                    // standard one; candle's does not.
                    let fuse_relu = m.conv_backend.algorithm().is_some() && self.relu.is_standard();
                    let y = m
                        .conv_with(&x, &c.weight, &c.bias, stride, padding, fuse_relu)
                        .context(ctx)?;
                    x = if fuse_relu {
                        y
                    } else {
                        self.relu.relu(name, &y).context(ctx)?
                    };
                    name
                }
                Layer::MaxPool => {
                    pool_i += 1;
                    let name = LayerName::Pool(pool_i);
                    x = pool::max_pool(&x).context(|| format!("{}: {name}", m.spec.name))?;
                    name
                }
                Layer::Dropout { rate } => {
                    if let Some(rng) = self.dropout.as_deref_mut() {
                        if rate > 0.0 {
                            x = rng
                                .mask_tensor(x.shape(), rate, x.device())
                                .and_then(|mask| x.mul(&mask))
                                .context(|| format!("{}: dropout", m.spec.name))?;
                        }
                    }
                    continue;
                }
            };
            if self.capture.contains(&name) {
                acts.layers.push((name, x.clone()));
            }
            if self.stop_at == Some(name) {
                return Ok(acts);
            }
        }
        acts.logits = Some(
            x.mean((2, 3))
                .context(|| format!("{}: global average", m.spec.name))?,
        );
        Ok(acts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ChaCha8 C code of the CUDA dropout kernel
    /// (`kernels/cuda/chacha8.cuh`), compiled for this CPU with the system C
    /// compiler, draws the masks of [`DropoutRng::mask`] bit for bit (rates,
    /// lengths, start positions inside a block, a block counter past 2^32).
    /// Skips loudly where no C compiler is found (CI fails instead).
    #[test]
    fn dropout_kernel_is_rand_chacha() {
        let dir = std::env::temp_dir().join(format!("allcnn-chacha-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases: [(u64, u64, u128, usize, f32); 5] = [
            (7, 3, 0, 100, 0.5),
            (1, 0, 5, 37, 0.2),
            (42, 9, 1000, 4099, 0.5),
            (3, 1, (1u128 << 36) + 11, 70, 0.9),
            (0, 0, 16, 16, 0.2),
        ];
        let mut c = String::from(include_str!("kernels/cuda/chacha8.cuh"));
        c.push_str("#include <stdio.h>\n#include <stdlib.h>\nint main(int argc, char** argv) {\n");
        c.push_str("  unsigned int key[8]; for (int i = 0; i < 8; ++i) key[i] = (unsigned int)strtoul(argv[1 + i], 0, 10);\n");
        c.push_str("  unsigned long long stream = strtoull(argv[9], 0, 10), start = strtoull(argv[10], 0, 10), len = strtoull(argv[11], 0, 10);\n");
        c.push_str("  unsigned int thr = (unsigned int)strtoul(argv[12], 0, 10); float keep = strtof(argv[13], 0);\n");
        c.push_str("  float* out = calloc(len, sizeof(float));\n");
        c.push_str("  for (unsigned long long b = start / 16; b <= (start + len - 1) / 16; ++b) allcnn_dropout_block(out, len, key, stream, start, b, thr, keep);\n");
        c.push_str("  for (unsigned long long i = 0; i < len; ++i) printf(\"%a\\n\", out[i]);\n  return 0;\n}\n");
        let src = dir.join("chacha.c");
        std::fs::write(&src, c).unwrap();
        let exe = dir.join("chacha");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        match std::process::Command::new(&cc)
            .args(["-O1", "-std=c99", "-o"])
            .arg(&exe)
            .arg(&src)
            .status()
        {
            Ok(s) if s.success() => {}
            other => {
                allcnn_testing::missing_fixture(
                    "a C compiler",
                    std::path::Path::new(&cc),
                    &format!("install one or set CC ({other:?})"),
                );
                return;
            }
        }
        for (seed, stream, start, len, rate) in cases {
            let mut rng = DropoutRng::new(seed, stream);
            rng.rng.set_word_pos(start);
            let want = rng.mask(len, rate);
            let key_bytes = rng.rng.get_seed();
            let (threshold, keep) = mask_params(rate);
            let mut cmd = std::process::Command::new(&exe);
            for i in 0..8 {
                cmd.arg(
                    u32::from_le_bytes(key_bytes[4 * i..4 * i + 4].try_into().unwrap()).to_string(),
                );
            }
            cmd.arg(rng.rng.get_stream().to_string())
                .arg(start.to_string())
                .arg(len.to_string())
                .arg(threshold.to_string())
                .arg(format!("{keep:e}"));
            let out = cmd.output().unwrap();
            assert!(out.status.success());
            let got: Vec<f32> = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(|l| if l == "0x0p+0" { 0.0 } else { keep })
                .collect();
            let kept = got.iter().filter(|v| **v != 0.0).count();
            assert_eq!(
                got, want,
                "seed {seed}, stream {stream}, start {start}, len {len}"
            );
            assert!(
                kept > 0 && kept < len || len < 20,
                "a degenerate mask proves nothing"
            );
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The block-wise mask is the word-by-word definition: word `i` of the
    /// stream below `rate * 2^32` drops element `i`, across calls of odd
    /// lengths that end inside a generator block.
    #[test]
    fn dropout_mask_is_the_word_by_word_definition() {
        let (seed, stream) = (7, 3);
        let mut fast = DropoutRng::new(seed, stream);
        let mut slow = allcnn_seed::rng(seed, allcnn_seed::Stream::Dropout, stream, 0);
        let long = 2 * MASK_CHUNK + 77;
        for (len, rate) in [
            (1, 0.5),
            (13, 0.2),
            (1000, 0.5),
            (77, 0.9),
            (4099, 0.2),
            (long, 0.5),
            (5, 0.5),
        ] {
            let threshold = (f64::from(rate) * 4_294_967_296.0) as u64;
            let keep = 1.0 / (1.0 - rate);
            let want: Vec<f32> = (0..len)
                .map(|_| {
                    if u64::from(slow.random::<u32>()) < threshold {
                        0.0
                    } else {
                        keep
                    }
                })
                .collect();
            assert_eq!(fast.mask(len, rate), want, "len {len}, rate {rate}");
        }
    }
}
