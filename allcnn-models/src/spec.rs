//! Architectures as data: [`Layer`], [`ArchSpec`] and the registry of the
//! paper's networks.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// One layer of an All-CNN-family network.
///
/// Every [`Layer::Conv`] is followed by a ReLU (the paper keeps one even after
/// the last 1x1 class convolution). The network ends with a global average over
/// whatever spatial map remains, which gives the logits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Layer {
    /// A square convolution followed by a ReLU.
    Conv {
        /// Kernel size (square).
        kernel: usize,
        /// Output channels.
        out: usize,
        /// Stride in both axes.
        stride: usize,
        /// Zero padding on every side.
        padding: usize,
    },
    /// Overlapping 3x3 max-pool, stride 2, padded by 1 (the padding never wins
    /// the max), as PyTorch's `MaxPool2d(3, 2, padding=1)`.
    MaxPool,
    /// Inverted dropout with drop probability `rate`, active only in training.
    Dropout {
        /// Probability of zeroing an element.
        rate: f32,
    },
}

impl Layer {
    /// A convolution with 'same' padding (`kernel / 2`).
    pub const fn conv(kernel: usize, out: usize, stride: usize) -> Self {
        Layer::Conv {
            kernel,
            out,
            stride,
            padding: kernel / 2,
        }
    }

    /// An unpadded ('valid') convolution.
    pub const fn conv_valid(kernel: usize, out: usize, stride: usize) -> Self {
        Layer::Conv {
            kernel,
            out,
            stride,
            padding: 0,
        }
    }
}

/// The size of the map a layer leaves, as `(channels, height, width)`.
pub type MapShape = (usize, usize, usize);

/// A complete network description: its name, its layers (the last
/// convolution produces the class maps) and the input it was designed for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchSpec {
    /// Registry name, e.g. `all-cnn-c`.
    pub name: String,
    /// Input channels (3 for RGB).
    pub in_channels: usize,
    /// The input side length the paper used (32 for CIFAR, 224 for ImageNet).
    /// Other sizes work as long as every layer leaves at least a 1x1 map.
    pub input_size: usize,
    /// The layers in forward order.
    pub layers: Vec<Layer>,
}

/// Information about one registered architecture, as `allcnn models` prints it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelInfo {
    /// Registry name.
    pub name: &'static str,
    /// One-line description.
    pub description: &'static str,
    /// The paper's CIFAR-10 test error without augmentation (Table 3), in
    /// percent, where the paper reports one.
    pub paper_error: Option<f32>,
}

const REGISTRY: &[ModelInfo] = &[
    info(
        "model-a",
        "Table 1 Model A: 5x5 convs, max-pool",
        Some(12.47),
    ),
    info(
        "strided-cnn-a",
        "Model A, pools replaced by stride 2 in the conv before",
        Some(13.46),
    ),
    info(
        "convpool-cnn-a",
        "Model A with a 3x3 conv before each pool",
        Some(10.21),
    ),
    info(
        "all-cnn-a",
        "Model A, pools replaced by 3x3/2 convs",
        Some(10.30),
    ),
    info(
        "model-b",
        "Table 1 Model B: 5x5 + 1x1 convs, max-pool",
        Some(10.20),
    ),
    info(
        "strided-cnn-b",
        "Model B, pools replaced by stride 2 in the conv before",
        Some(10.98),
    ),
    info(
        "convpool-cnn-b",
        "Model B with a 3x3 conv before each pool",
        Some(9.33),
    ),
    info(
        "all-cnn-b",
        "Model B, pools replaced by 3x3/2 convs",
        Some(9.10),
    ),
    info(
        "model-c",
        "Table 1 Model C: pairs of 3x3 convs, max-pool",
        Some(9.74),
    ),
    info(
        "strided-cnn-c",
        "Model C, pools replaced by stride 2 in the conv before",
        Some(10.19),
    ),
    info(
        "convpool-cnn-c",
        "Model C with a 3x3 conv before each pool",
        Some(9.31),
    ),
    info(
        "all-cnn-c",
        "Model C, pools replaced by 3x3/2 convs",
        Some(9.08),
    ),
    info(
        "all-cnn-imagenet",
        "The ImageNet All-CNN (upscaled All-CNN-B, 224x224)",
        None,
    ),
];

const fn info(
    name: &'static str,
    description: &'static str,
    paper_error: Option<f32>,
) -> ModelInfo {
    ModelInfo {
        name,
        description,
        paper_error,
    }
}

/// Every registered architecture, in the paper's order.
pub fn registry() -> &'static [ModelInfo] {
    REGISTRY
}

#[derive(Clone, Copy, PartialEq)]
enum Base {
    A,
    B,
    C,
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Base,
    Strided,
    ConvPool,
    AllCnn,
}

/// The convolutions of one stage of a base model (stage 1: width 96,
/// stage 2: width 192).
fn stage(base: Base, width: usize) -> [Layer; 2] {
    match base {
        // Model A's stages have a single 5x5 conv; the second slot is unused.
        Base::A => [Layer::conv(5, width, 1), Layer::conv(5, width, 1)],
        Base::B => [Layer::conv(5, width, 1), Layer::conv(1, width, 1)],
        Base::C => [Layer::conv(3, width, 1), Layer::conv(3, width, 1)],
    }
}

fn cifar(name: &str, base: Base, variant: Variant, classes: usize) -> ArchSpec {
    let mut layers = vec![Layer::Dropout { rate: 0.2 }];
    for width in [96, 192] {
        let convs = stage(base, width);
        let n = if base == Base::A { 1 } else { 2 };
        let mut stage_layers: Vec<Layer> = convs[..n].to_vec();
        match variant {
            Variant::Base => stage_layers.push(Layer::MaxPool),
            Variant::Strided => {
                // The conv right before the pool takes stride 2 instead.
                if let Some(Layer::Conv { stride, .. }) = stage_layers.last_mut() {
                    *stride = 2;
                }
            }
            Variant::ConvPool => {
                stage_layers.push(Layer::conv(3, width, 1));
                stage_layers.push(Layer::MaxPool);
            }
            Variant::AllCnn => stage_layers.push(Layer::conv(3, width, 2)),
        }
        layers.extend(stage_layers);
        layers.push(Layer::Dropout { rate: 0.5 });
    }
    layers.push(Layer::conv_valid(3, 192, 1));
    layers.push(Layer::conv(1, 192, 1));
    layers.push(Layer::conv(1, classes, 1));
    ArchSpec {
        name: name.to_string(),
        in_channels: 3,
        input_size: 32,
        layers,
    }
}

fn imagenet(classes: usize) -> ArchSpec {
    let layers = vec![
        Layer::conv_valid(11, 96, 4),
        Layer::conv(1, 96, 1),
        Layer::conv(3, 96, 2),
        Layer::conv(5, 256, 1),
        Layer::conv(1, 256, 1),
        Layer::conv_valid(3, 256, 2),
        Layer::conv(3, 384, 1),
        Layer::conv(1, 384, 1),
        Layer::conv_valid(3, 384, 2),
        Layer::Dropout { rate: 0.5 },
        Layer::conv(3, 1024, 1),
        Layer::conv(1, 1024, 1),
        Layer::conv(1, classes, 1),
    ];
    ArchSpec {
        name: "all-cnn-imagenet".to_string(),
        in_channels: 3,
        input_size: 224,
        layers,
    }
}

impl ArchSpec {
    /// The registered architecture `name` with a `classes`-way head.
    ///
    /// # Errors
    /// [`ModelError::UnknownModel`] when `name` is not registered (the error
    /// lists the known names), [`ModelError::InvalidSpec`] when `classes` is 0
    /// or past [`SpecLimits::DEFAULT`].
    pub fn by_name(name: &str, classes: usize) -> Result<Self, ModelError> {
        if classes == 0 {
            return Err(ModelError::InvalidSpec {
                name: name.to_string(),
                reason: "the class count must be at least 1".to_string(),
            });
        }
        let (base, variant) = match name {
            "all-cnn-imagenet" => return imagenet(classes).validated(),
            "model-a" => (Base::A, Variant::Base),
            "strided-cnn-a" => (Base::A, Variant::Strided),
            "convpool-cnn-a" => (Base::A, Variant::ConvPool),
            "all-cnn-a" => (Base::A, Variant::AllCnn),
            "model-b" => (Base::B, Variant::Base),
            "strided-cnn-b" => (Base::B, Variant::Strided),
            "convpool-cnn-b" => (Base::B, Variant::ConvPool),
            "all-cnn-b" => (Base::B, Variant::AllCnn),
            "model-c" => (Base::C, Variant::Base),
            "strided-cnn-c" => (Base::C, Variant::Strided),
            "convpool-cnn-c" => (Base::C, Variant::ConvPool),
            "all-cnn-c" => (Base::C, Variant::AllCnn),
            _ => {
                return Err(ModelError::UnknownModel {
                    name: name.to_string(),
                    known: REGISTRY
                        .iter()
                        .map(|m| m.name)
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        };
        cifar(name, base, variant, classes).validated()
    }

    /// `self` once [`ArchSpec::validate`] accepts it (a class count past
    /// the limits, e.g.).
    fn validated(self) -> Result<Self, ModelError> {
        self.validate()?;
        Ok(self)
    }

    /// Registry information (description, paper error) when this spec carries
    /// a registered name.
    pub fn info(&self) -> Option<&'static ModelInfo> {
        REGISTRY.iter().find(|m| m.name == self.name)
    }

    /// The convolutions in order, as `(index from 1, in_channels, kernel, out,
    /// stride, padding)`.
    pub fn convs(&self) -> Vec<ConvShape> {
        let mut cin = self.in_channels;
        let mut out = Vec::new();
        for layer in &self.layers {
            if let Layer::Conv {
                kernel,
                out: cout,
                stride,
                padding,
            } = *layer
            {
                out.push(ConvShape {
                    index: out.len() + 1,
                    in_channels: cin,
                    out_channels: cout,
                    kernel,
                    stride,
                    padding,
                });
                cin = cout;
            }
        }
        out
    }

    /// The number of classes: the width of the last convolution.
    ///
    /// # Errors
    /// [`ModelError::InvalidSpec`] when the spec has no convolution.
    pub fn classes(&self) -> Result<usize, ModelError> {
        self.convs()
            .last()
            .map(|c| c.out_channels)
            .ok_or_else(|| self.invalid("it has no convolution"))
    }

    /// The number of learnable parameters (weights and biases).
    pub fn param_count(&self) -> usize {
        self.convs().iter().map(ConvShape::param_count).sum()
    }

    /// Checks the spec: at least one conv, positive sizes, dropout rates in
    /// `[0, 1)`, and every size within [`SpecLimits`] (specs come from
    /// weights files, which may come from anyone: a bound here keeps a
    /// hostile file from asking for terabytes).
    ///
    /// # Errors
    /// [`ModelError::InvalidSpec`] naming the first offending layer or size.
    pub fn validate(&self) -> Result<(), ModelError> {
        const L: SpecLimits = SpecLimits::DEFAULT;
        if self.in_channels == 0 || self.in_channels > L.channels {
            return Err(self.invalid(&format!(
                "in_channels is {}: it must be in 1..={}",
                self.in_channels, L.channels
            )));
        }
        if self.input_size == 0 || self.input_size > L.input_size {
            return Err(self.invalid(&format!(
                "input_size is {}: it must be in 1..={}",
                self.input_size, L.input_size
            )));
        }
        if self.layers.len() > L.layers {
            return Err(self.invalid(&format!(
                "it has {} layers: at most {} are allowed",
                self.layers.len(),
                L.layers
            )));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            match *layer {
                Layer::Conv {
                    kernel,
                    out,
                    stride,
                    ..
                } if kernel == 0 || out == 0 || stride == 0 => {
                    return Err(self.invalid(&format!(
                        "layer {i} is a conv with kernel {kernel}, out {out}, stride {stride}: all must be >= 1"
                    )))
                }
                Layer::Conv {
                    kernel,
                    out,
                    stride,
                    padding,
                } if kernel > L.kernel
                    || out > L.channels
                    || stride > L.kernel
                    || padding >= kernel =>
                {
                    return Err(self.invalid(&format!(
                        "layer {i} is a conv with kernel {kernel}, out {out}, stride {stride}, padding {padding}: \
                         the kernel and stride must be at most {}, out at most {}, and the padding below the kernel",
                        L.kernel, L.channels
                    )))
                }
                Layer::Dropout { rate } if !(0.0..1.0).contains(&rate) => {
                    return Err(self.invalid(&format!(
                        "layer {i} is a dropout with rate {rate}: it must be in [0, 1)"
                    )))
                }
                _ => {}
            }
        }
        self.classes()?;
        // Sizes are bounded above, so these products cannot overflow.
        if self.param_count() > L.params {
            return Err(self.invalid(&format!(
                "it has {} parameters: at most {} are allowed",
                self.param_count(),
                L.params
            )));
        }
        let largest = self
            .map_sizes(self.input_size)?
            .iter()
            .map(|(_, m)| m.0 * m.1 * m.2)
            .max()
            .unwrap_or(0)
            .max(self.in_channels * self.input_size * self.input_size);
        if largest > L.map_elements {
            return Err(self.invalid(&format!(
                "a feature map of one {0}x{0} image has {largest} values: at most {1} are allowed",
                self.input_size, L.map_elements
            )));
        }
        Ok(())
    }

    /// The map left after every layer that has a name (`conv{i}`, `pool{j}`)
    /// for a square `input` x `input` image, in forward order.
    ///
    /// # Errors
    /// [`ModelError::InputTooSmall`] when some layer would leave an empty map.
    pub fn map_sizes(&self, input: usize) -> Result<Vec<(LayerName, MapShape)>, ModelError> {
        self.map_sizes_hw(input, input)
    }

    /// The convolutions and max-pools in order (dropout skipped), named
    /// `conv{i}` / `pool{j}` counted from 1, with their geometry: the one
    /// walk over the layers that map sizes, receptive fields and layer
    /// names share.
    pub fn spatial_layers(&self) -> Vec<SpatialLayer> {
        let (mut nconv, mut npool, mut channels) = (0, 0, self.in_channels);
        self.layers
            .iter()
            .filter_map(|layer| match *layer {
                Layer::Conv {
                    kernel,
                    out,
                    stride,
                    padding,
                } => {
                    nconv += 1;
                    channels = out;
                    Some(SpatialLayer {
                        name: LayerName::Conv(nconv),
                        kernel,
                        stride,
                        padding,
                        channels,
                    })
                }
                Layer::MaxPool => {
                    npool += 1;
                    Some(SpatialLayer {
                        name: LayerName::Pool(npool),
                        kernel: crate::kernels::pool::POOL_KERNEL,
                        stride: crate::kernels::pool::POOL_STRIDE,
                        padding: crate::kernels::pool::POOL_PADDING,
                        channels,
                    })
                }
                Layer::Dropout { .. } => None,
            })
            .collect()
    }

    /// As [`ArchSpec::map_sizes`] for an `h` x `w` input.
    ///
    /// # Errors
    /// [`ModelError::InputTooSmall`] when some layer would leave an empty map.
    pub fn map_sizes_hw(
        &self,
        h: usize,
        w: usize,
    ) -> Result<Vec<(LayerName, MapShape)>, ModelError> {
        let (mut h_cur, mut w_cur) = (h, w);
        let mut out = Vec::new();
        for l in self.spatial_layers() {
            let (name, k, s, p) = (l.name, l.kernel, l.stride, l.padding);
            let next = |x: usize| (x + 2 * p).checked_sub(k).map(|v| v / s + 1);
            match (next(h_cur), next(w_cur)) {
                (Some(nh), Some(nw)) => {
                    h_cur = nh;
                    w_cur = nw;
                }
                _ => {
                    return Err(ModelError::InputTooSmall {
                        name: self.name.clone(),
                        input: (h, w),
                        layer: name.to_string(),
                    })
                }
            }
            out.push((name, (l.channels, h_cur, w_cur)));
        }
        Ok(out)
    }

    /// The size of the class maps that the global average consumes, for a
    /// square `input` x `input` image.
    ///
    /// # Errors
    /// As [`ArchSpec::map_sizes`].
    pub fn final_map(&self, input: usize) -> Result<MapShape, ModelError> {
        self.map_sizes(input)?
            .last()
            .map(|(_, s)| *s)
            .ok_or_else(|| self.invalid("it has no convolution"))
    }

    fn invalid(&self, reason: &str) -> ModelError {
        ModelError::InvalidSpec {
            name: self.name.clone(),
            reason: reason.to_string(),
        }
    }
}

/// The bounds [`ArchSpec::validate`] enforces: generous for any network of
/// the paper's kind (the ImageNet model is well inside them), small enough
/// that no spec can ask for an absurd allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecLimits {
    /// Input and output channels of any layer.
    pub channels: usize,
    /// Kernel side and stride.
    pub kernel: usize,
    /// The input side length.
    pub input_size: usize,
    /// Layers in all.
    pub layers: usize,
    /// Learnable parameters in all.
    pub params: usize,
    /// Values in the largest feature map of one image at `input_size`.
    pub map_elements: usize,
}

impl SpecLimits {
    /// The limits in force.
    pub const DEFAULT: SpecLimits = SpecLimits {
        channels: 16_384,
        kernel: 32,
        input_size: 4_096,
        layers: 256,
        params: 1 << 30,
        map_elements: 1 << 28,
    };
}

/// One convolution's geometry, derived from an [`ArchSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Its index, counting convolutions from 1 (`conv{index}`).
    pub index: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
}

impl ConvShape {
    /// The shape of `conv{i}.weight`: `[out, in, k, k]` (PyTorch's layout).
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.in_channels,
            self.kernel,
            self.kernel,
        ]
    }

    /// Weights plus biases.
    pub fn param_count(&self) -> usize {
        self.out_channels * self.in_channels * self.kernel * self.kernel + self.out_channels
    }
}

/// A convolution or max-pool with its name and geometry
/// ([`ArchSpec::spatial_layers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpatialLayer {
    /// `conv{i}` or `pool{j}`.
    pub name: LayerName,
    /// Kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
    /// Channels out (a pool keeps its input's).
    pub channels: usize,
}

/// The name of a layer whose output can be captured: `conv{i}` (after its
/// ReLU) or `pool{j}`, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerName {
    /// The output of convolution `i` after its ReLU.
    Conv(usize),
    /// The output of max-pool `j`.
    Pool(usize),
}

impl std::fmt::Display for LayerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerName::Conv(i) => write!(f, "conv{i}"),
            LayerName::Pool(j) => write!(f, "pool{j}"),
        }
    }
}

impl std::str::FromStr for LayerName {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ModelError::BadLayerName {
            name: s.to_string(),
        };
        let parse = |rest: &str| {
            rest.parse::<usize>()
                .ok()
                .filter(|&i| i >= 1)
                .ok_or_else(bad)
        };
        if let Some(rest) = s.strip_prefix("conv") {
            Ok(LayerName::Conv(parse(rest)?))
        } else if let Some(rest) = s.strip_prefix("pool") {
            Ok(LayerName::Pool(parse(rest)?))
        } else {
            Err(bad())
        }
    }
}
