//! What an attribution starts from: [`Target`] (typed, resolved) and
//! [`TargetSpec`] (parsed from a command line, resolved against an input).

use std::fmt;
use std::str::FromStr;

use allcnn_models::{AllCnn, LayerName, MapShape};
use candle_core::{DType, Tensor};

use crate::error::{CandleContext, VizError};

/// One unit of a hidden layer: a channel and a position in its map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Unit {
    /// The channel.
    pub channel: usize,
    /// The row in the layer's map.
    pub y: usize,
    /// The column in the layer's map.
    pub x: usize,
}

/// The value an attribution sends back to the image.
///
/// Each image of a batch gets its own map: the objective is the sum over the
/// batch of one value per image, and images do not interact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The logit of class `k` for every image.
    Class(u32),
    /// One class per image (e.g. the labels or the predictions).
    PerImage(Vec<u32>),
    /// One unit of a hidden layer, the same for every image: its value after
    /// the ReLU (or the pool's output for a `pool{j}` layer), with every other
    /// unit of that layer set to zero. That ReLU's own backward uses the
    /// method's rule (as Captum's `NeuronGuidedBackprop`).
    Unit {
        /// The layer (`conv{i}` after its ReLU, or `pool{j}`).
        layer: LayerName,
        /// The channel.
        channel: usize,
        /// The row in the layer's map.
        y: usize,
        /// The column in the layer's map.
        x: usize,
    },
    /// For each image, the strongest unit of `channel` in `layer` (the first
    /// maximum in row-major order), every other unit zero: the paper's "keep
    /// the single largest activation".
    StrongestInChannel {
        /// The layer.
        layer: LayerName,
        /// The channel.
        channel: usize,
    },
    /// One unit per image of the same layer (what the top-activation figure
    /// reconstructs).
    Units {
        /// The layer.
        layer: LayerName,
        /// One unit per image.
        units: Vec<Unit>,
    },
}

impl Target {
    /// The hidden layer this target starts from, or `None` for a class target.
    pub fn layer(&self) -> Option<LayerName> {
        match self {
            Target::Class(_) | Target::PerImage(_) => None,
            Target::Unit { layer, .. }
            | Target::StrongestInChannel { layer, .. }
            | Target::Units { layer, .. } => Some(*layer),
        }
    }

    /// Checks the target against `model` and an input of shape `[N, C, H, W]`:
    /// class indices below the class count, one entry per image, a layer the
    /// network has, channels and positions inside that layer's map.
    ///
    /// # Errors
    /// [`VizError::ClassOutOfRange`], [`VizError::CountMismatch`],
    /// [`VizError::NoSuchLayer`], [`VizError::ChannelOutOfRange`],
    /// [`VizError::PositionOutOfRange`], each listing what is valid, or
    /// [`VizError::Model`] for an input the network cannot take.
    pub fn validate(&self, model: &AllCnn, input_dims: &[usize]) -> Result<(), VizError> {
        let &[n, _, h, w] = input_dims else {
            return Err(VizError::BadTensor {
                what: "input".into(),
                expected: "[N, C, H, W]".into(),
                got: input_dims.to_vec(),
            });
        };
        let name = &model.spec().name;
        let classes = model.classes();
        let check_class = |class: u32| {
            if (class as usize) < classes {
                Ok(())
            } else {
                Err(VizError::ClassOutOfRange {
                    model: name.clone(),
                    class,
                    classes,
                })
            }
        };
        let count = |what: &str, got: usize| {
            if got == n {
                Ok(())
            } else {
                Err(VizError::CountMismatch {
                    what: what.into(),
                    got,
                    images: n,
                })
            }
        };
        match self {
            Target::Class(k) => check_class(*k),
            Target::PerImage(ks) => {
                count("per-image classes", ks.len())?;
                ks.iter().try_for_each(|&k| check_class(k))
            }
            Target::Unit {
                layer,
                channel,
                y,
                x,
            } => check_unit(model, *layer, (h, w), *channel, Some((*y, *x))),
            Target::StrongestInChannel { layer, channel } => {
                check_unit(model, *layer, (h, w), *channel, None)
            }
            Target::Units { layer, units } => {
                count("units", units.len())?;
                units.iter().try_for_each(|u| {
                    check_unit(model, *layer, (h, w), u.channel, Some((u.y, u.x)))
                })
            }
        }
    }
}

/// The map shape `(channels, height, width)` of `layer` for an `h` x `w`
/// input.
///
/// # Errors
/// [`VizError::NoSuchLayer`] listing every layer with its map, or
/// [`VizError::Model`] when the input is too small for the network.
pub fn layer_shape(
    model: &AllCnn,
    layer: LayerName,
    hw: (usize, usize),
) -> Result<MapShape, VizError> {
    let sizes = model.spec().map_sizes_hw(hw.0, hw.1)?;
    sizes
        .iter()
        .find(|(n, _)| *n == layer)
        .map(|(_, s)| *s)
        .ok_or_else(|| VizError::NoSuchLayer {
            model: model.spec().name.clone(),
            layer: layer.to_string(),
            available: sizes
                .iter()
                .map(|(n, (c, h, w))| format!("{n} [{c}, {h}, {w}]"))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn check_unit(
    model: &AllCnn,
    layer: LayerName,
    hw: (usize, usize),
    channel: usize,
    pos: Option<(usize, usize)>,
) -> Result<(), VizError> {
    let (c, height, width) = layer_shape(model, layer, hw)?;
    if channel >= c {
        return Err(VizError::ChannelOutOfRange {
            model: model.spec().name.clone(),
            layer: layer.to_string(),
            channel,
            channels: c,
        });
    }
    if let Some((y, x)) = pos {
        if y >= height || x >= width {
            return Err(VizError::PositionOutOfRange {
                model: model.spec().name.clone(),
                layer: layer.to_string(),
                y,
                x,
                height,
                width,
            });
        }
    }
    Ok(())
}

/// A target as written on a command line, before it meets an input:
///
/// | text | meaning |
/// |---|---|
/// | `class:K` | class `K` for every image |
/// | `labels` | one class per image, from the input's labels |
/// | `predicted` | one class per image, the model's prediction |
/// | `unit:conv7:7:3:3` | layer `conv7`, channel 7, y 3, x 3 |
/// | `strongest:conv9:3` | the strongest unit of channel 3 of `conv9`, per image |
///
/// [`TargetSpec::resolve`] turns it into a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// `class:K`.
    Class(u32),
    /// `labels`.
    Labels,
    /// `predicted`.
    Predicted,
    /// `unit:LAYER:CHANNEL:Y:X`.
    Unit {
        /// The layer.
        layer: LayerName,
        /// The channel.
        channel: usize,
        /// The row.
        y: usize,
        /// The column.
        x: usize,
    },
    /// `strongest:LAYER:CHANNEL`.
    Strongest {
        /// The layer.
        layer: LayerName,
        /// The channel.
        channel: usize,
    },
}

impl FromStr for TargetSpec {
    type Err = VizError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| VizError::BadTarget {
            text: s.to_string(),
            reason: reason.to_string(),
        };
        let num = |part: &str, what: &str| {
            part.trim()
                .parse::<usize>()
                .map_err(|_| bad(&format!("{what} `{part}` is not a non-negative integer")))
        };
        let layer = |part: &str| {
            part.trim()
                .parse::<LayerName>()
                .map_err(|_| bad(&format!("`{part}` is not a layer name (conv1.., pool1..)")))
        };
        let parts: Vec<&str> = s.trim().split(':').collect();
        match parts.as_slice() {
            ["labels"] => Ok(TargetSpec::Labels),
            ["predicted"] => Ok(TargetSpec::Predicted),
            ["class", k] => {
                let k = num(k, "class")?;
                u32::try_from(k)
                    .map(TargetSpec::Class)
                    .map_err(|_| bad("class index too large"))
            }
            ["unit", l, c, y, x] => Ok(TargetSpec::Unit {
                layer: layer(l)?,
                channel: num(c, "channel")?,
                y: num(y, "y")?,
                x: num(x, "x")?,
            }),
            ["strongest", l, c] => Ok(TargetSpec::Strongest {
                layer: layer(l)?,
                channel: num(c, "channel")?,
            }),
            ["class", ..] => Err(bad("expected class:K")),
            ["unit", ..] => Err(bad("expected unit:LAYER:CHANNEL:Y:X")),
            ["strongest", ..] => Err(bad("expected strongest:LAYER:CHANNEL")),
            _ => Err(bad("unknown form")),
        }
    }
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetSpec::Class(k) => write!(f, "class:{k}"),
            TargetSpec::Labels => write!(f, "labels"),
            TargetSpec::Predicted => write!(f, "predicted"),
            TargetSpec::Unit {
                layer,
                channel,
                y,
                x,
            } => write!(f, "unit:{layer}:{channel}:{y}:{x}"),
            TargetSpec::Strongest { layer, channel } => write!(f, "strongest:{layer}:{channel}"),
        }
    }
}

impl TargetSpec {
    /// The [`Target`] for `input` `[N, C, H, W]`: `labels` takes `labels`
    /// (`[N]`, any integer or float dtype), `predicted` runs the model once.
    /// The result is validated against the model and input.
    ///
    /// # Errors
    /// [`VizError::MissingLabels`] for `labels` without labels, the errors of
    /// [`Target::validate`], or a candle error.
    pub fn resolve(
        &self,
        model: &AllCnn,
        input: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<Target, VizError> {
        let target = match self {
            TargetSpec::Class(k) => Target::Class(*k),
            TargetSpec::Labels => {
                let labels = labels.ok_or(VizError::MissingLabels)?;
                Target::PerImage(labels_vec(labels)?)
            }
            TargetSpec::Predicted => Target::PerImage(predict(model, input)?),
            TargetSpec::Unit {
                layer,
                channel,
                y,
                x,
            } => Target::Unit {
                layer: *layer,
                channel: *channel,
                y: *y,
                x: *x,
            },
            TargetSpec::Strongest { layer, channel } => Target::StrongestInChannel {
                layer: *layer,
                channel: *channel,
            },
        };
        target.validate(model, input.dims())?;
        Ok(target)
    }
}

/// A `[N]` label tensor as `u32` class indices.
///
/// # Errors
/// [`VizError::BadTensor`] for another rank or a negative label.
pub fn labels_vec(labels: &Tensor) -> Result<Vec<u32>, VizError> {
    let bad = || VizError::BadTensor {
        what: "labels".into(),
        expected: "a rank-1 tensor [N] of non-negative class indices".into(),
        got: labels.dims().to_vec(),
    };
    if labels.rank() != 1 {
        return Err(bad());
    }
    let v = labels
        .to_dtype(DType::F64)
        .and_then(|t| t.to_vec1::<f64>())
        .context(|| "reading labels".into())?;
    v.iter()
        .map(|&x| {
            if x >= 0.0 && x.fract() == 0.0 && x <= f64::from(u32::MAX) {
                Ok(x as u32)
            } else {
                Err(bad())
            }
        })
        .collect()
}

/// The predicted class of every image of `input` (the first largest logit).
///
/// # Errors
/// As [`AllCnn::forward`].
pub fn predict(model: &AllCnn, input: &Tensor) -> Result<Vec<u32>, VizError> {
    let x = input
        .to_device(model.device())
        .and_then(|x| x.to_dtype(DType::F32))
        .context(|| "moving the input to the model's device".into())?;
    predicted_classes(&model.forward(&x)?)
}

/// The predicted class of every row of `logits` `[N, classes]` (the first
/// largest logit), for callers that already ran the model (what
/// [`predict`] returns, without a second forward pass).
///
/// # Errors
/// A candle error when `logits` is not a rank-2 tensor.
pub fn predicted_classes(logits: &Tensor) -> Result<Vec<u32>, VizError> {
    let rows = logits
        .to_dtype(DType::F32)
        .and_then(|l| l.to_vec2::<f32>())
        .context(|| "reading the logits".into())?;
    Ok(rows.iter().map(|r| argmax_first(r) as u32).collect())
}

/// The index of the first maximum (NaN never wins; 0 for an empty slice).
pub(crate) fn argmax_first(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}
