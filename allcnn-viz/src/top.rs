//! The paper's top-activation figure: scan a data set, keep the `k` images
//! that activate each channel of a layer most, and reconstruct the strongest
//! unit of each from its exact receptive-field patch.

use allcnn_models::{AllCnn, LayerName};
use candle_core::{DType, Device, Tensor};

use crate::error::{CandleContext, VizError};
use crate::methods::{strongest, Method};
use crate::receptive::{crop, ReceptiveField, Window};
use crate::target::{layer_shape, Target, Unit};

/// One image kept for a channel during the scan.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The activation of the strongest unit of the channel in this image.
    pub value: f32,
    /// The image's position in the scan (counting images from 0 across
    /// batches, in the order they were pushed).
    pub image_index: usize,
    /// That unit's position in the layer's map.
    pub unit: Unit,
    /// The image `[C, H, W]`, copied to the CPU.
    pub image: Tensor,
}

/// Scans batches for the `k` strongest images per channel of one layer.
///
/// An image counts once per channel, with the strongest unit of that channel
/// (the first maximum in row-major order). Ties keep the earlier image.
/// Memory: `channels * k` images are kept on the CPU.
///
/// ```no_run
/// # use allcnn_models::{AllCnn, LayerName};
/// # use allcnn_viz::{Method, TopActivations};
/// # fn f(model: &AllCnn, batches: Vec<candle_core::Tensor>) -> Result<(), allcnn_viz::VizError> {
/// let mut top = TopActivations::new(model, LayerName::Conv(6), (0..16).collect(), 9)?;
/// for batch in &batches {
///     top.push(batch)?; // update a progress bar here
/// }
/// let figure = top.reconstruct(&[Method::GuidedBackprop, Method::Deconvnet])?;
/// let png = allcnn_viz::render::top_activation_grid(&figure, &Default::default())?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TopActivations<'a> {
    model: &'a AllCnn,
    layer: LayerName,
    channels: Vec<usize>,
    k: usize,
    best: Vec<Vec<Candidate>>,
    seen: usize,
    image_shape: Option<(usize, usize, usize)>,
}

impl<'a> TopActivations<'a> {
    /// A scan of `layer`'s `channels` keeping `k` images each.
    ///
    /// # Errors
    /// [`VizError::InvalidArgument`] for `k == 0` or no channel,
    /// [`VizError::NoSuchLayer`] / [`VizError::ChannelOutOfRange`] (checked
    /// against the model's design input size).
    pub fn new(
        model: &'a AllCnn,
        layer: LayerName,
        channels: Vec<usize>,
        k: usize,
    ) -> Result<Self, VizError> {
        if k == 0 {
            return Err(VizError::InvalidArgument("k must be at least 1".into()));
        }
        if channels.is_empty() {
            return Err(VizError::InvalidArgument(
                "the channel list is empty".into(),
            ));
        }
        let s = model.spec().input_size;
        let (c, _, _) = layer_shape(model, layer, (s, s))?;
        if let Some(&bad) = channels.iter().find(|&&ch| ch >= c) {
            return Err(VizError::ChannelOutOfRange {
                model: model.spec().name.clone(),
                layer: layer.to_string(),
                channel: bad,
                channels: c,
            });
        }
        Ok(Self {
            model,
            layer,
            best: vec![Vec::new(); channels.len()],
            channels,
            k,
            seen: 0,
            image_shape: None,
        })
    }

    /// Scans one batch `[N, C, H, W]` (every batch must have the same image
    /// size).
    ///
    /// # Errors
    /// [`VizError::BadTensor`] for a batch of another image size, an input
    /// the model cannot take, or a candle error.
    pub fn push(&mut self, batch: &Tensor) -> Result<(), VizError> {
        let (n, c, h, w) = batch.dims4().map_err(|_| VizError::BadTensor {
            what: "batch".into(),
            expected: "[N, C, H, W]".into(),
            got: batch.dims().to_vec(),
        })?;
        match self.image_shape {
            None => self.image_shape = Some((c, h, w)),
            Some(s) if s != (c, h, w) => {
                return Err(VizError::BadTensor {
                    what: "batch".into(),
                    expected: format!("images of shape {s:?} like the earlier batches"),
                    got: batch.dims().to_vec(),
                })
            }
            Some(_) => {}
        }
        let x = batch
            .to_device(self.model.device())
            .and_then(|x| x.to_dtype(DType::F32))
            .context(|| "moving the batch to the model's device".into())?;
        let acts = self
            .model
            .pass()
            .capture(self.layer)
            .stop_at(self.layer)
            .run(&x)?;
        let act = acts.get(self.layer).expect("captured layer");
        for (slot, &ch) in self.channels.iter().enumerate() {
            for (i, (unit, value)) in strongest(act, ch)?.into_iter().enumerate() {
                let best = &mut self.best[slot];
                // Keep the list sorted by value, descending; ties keep the
                // earlier image.
                let pos = best.partition_point(|b| b.value >= value);
                if pos >= self.k {
                    continue;
                }
                let image = batch
                    .get(i)
                    .and_then(|t| t.to_device(&Device::Cpu))
                    .and_then(|t| t.to_dtype(DType::F32))
                    .and_then(|t| t.copy())
                    .context(|| "keeping an image".into())?;
                best.insert(
                    pos,
                    Candidate {
                        value,
                        image_index: self.seen + i,
                        unit,
                        image,
                    },
                );
                best.truncate(self.k);
            }
        }
        self.seen += n;
        Ok(())
    }

    /// Pushes every batch of `batches`.
    ///
    /// # Errors
    /// As [`TopActivations::push`].
    pub fn scan<I>(&mut self, batches: I) -> Result<(), VizError>
    where
        I: IntoIterator,
        I::Item: std::borrow::Borrow<Tensor>,
    {
        for b in batches {
            self.push(std::borrow::Borrow::borrow(&b))?;
        }
        Ok(())
    }

    /// How many images have been scanned.
    pub fn seen(&self) -> usize {
        self.seen
    }

    /// The layer being scanned.
    pub fn layer(&self) -> LayerName {
        self.layer
    }

    /// The kept images per channel, strongest first, as `(channel, kept)`.
    pub fn candidates(&self) -> Vec<(usize, &[Candidate])> {
        self.channels
            .iter()
            .zip(&self.best)
            .map(|(&c, b)| (c, b.as_slice()))
            .collect()
    }

    /// Reconstructs every kept unit with each of `methods` (starting from
    /// that single unit, every other unit of the layer zero) and crops image
    /// and reconstructions to the unit's receptive field.
    ///
    /// # Errors
    /// [`VizError::EmptyScan`] when no image was scanned, or the errors of
    /// the methods.
    pub fn reconstruct(&self, methods: &[Method]) -> Result<TopFigure, VizError> {
        if self.seen == 0 {
            return Err(VizError::EmptyScan);
        }
        let rf = ReceptiveField::of(self.model.spec(), self.layer)?;
        let mut rows = Vec::new();
        for (channel, kept) in self.candidates() {
            let images: Vec<Tensor> = kept.iter().map(|c| c.image.clone()).collect();
            let batch = Tensor::stack(&images, 0).context(|| "stacking kept images".into())?;
            let target = Target::Units {
                layer: self.layer,
                units: kept.iter().map(|c| c.unit).collect(),
            };
            let mut maps = Vec::new();
            for &m in methods {
                let map = m
                    .attribute(self.model, &batch, &target)?
                    .to_device(&Device::Cpu)
                    .context(|| "moving maps to the CPU".into())?;
                maps.push((m, map));
            }
            let mut entries = Vec::new();
            for (i, c) in kept.iter().enumerate() {
                let window = rf.window(c.unit.y, c.unit.x);
                let mut recs = Vec::new();
                for (m, map) in &maps {
                    let one = map.get(i).context(|| "one map".into())?;
                    recs.push((*m, crop(&one, window)?));
                }
                entries.push(TopEntry {
                    value: c.value,
                    image_index: c.image_index,
                    unit: c.unit,
                    window,
                    patch: crop(&c.image, window)?,
                    reconstructions: recs,
                });
            }
            rows.push(TopRow { channel, entries });
        }
        let side = self.model.spec().input_size;
        Ok(TopFigure {
            layer: self.layer,
            image_size: (side, side),
            receptive_field: rf,
            methods: methods.to_vec(),
            rows,
        })
    }
}

/// The reconstructed top activations of one layer, ready to render with
/// [`crate::render::top_activation_grid`].
#[derive(Debug, Clone)]
pub struct TopFigure {
    /// The layer.
    pub layer: LayerName,
    /// Height and width of the scanned images: the part of a patch's
    /// window outside them is drawn in a neutral grey.
    pub image_size: (usize, usize),
    /// Its units' receptive field.
    pub receptive_field: ReceptiveField,
    /// The reconstruction methods, in column-group order.
    pub methods: Vec<Method>,
    /// One row per channel.
    pub rows: Vec<TopRow>,
}

/// The kept images of one channel.
#[derive(Debug, Clone)]
pub struct TopRow {
    /// The channel.
    pub channel: usize,
    /// Strongest first.
    pub entries: Vec<TopEntry>,
}

/// One kept image with its patch and reconstructions.
#[derive(Debug, Clone)]
pub struct TopEntry {
    /// The unit's activation.
    pub value: f32,
    /// The image's index in the scan.
    pub image_index: usize,
    /// The unit.
    pub unit: Unit,
    /// The unit's receptive field in the image.
    pub window: Window,
    /// The image cropped to the window `[C, size, size]` (zero outside the
    /// image).
    pub patch: Tensor,
    /// Per method, the reconstruction cropped to the same window.
    pub reconstructions: Vec<(Method, Tensor)>,
}
