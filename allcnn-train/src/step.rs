//! One training step of the paper's protocol, shared by [`crate::Trainer`]
//! and `allcnn bench`, so the benchmark times exactly what training runs.

use allcnn_models::{AllCnn, DropoutRng};
use candle_core::{DType, Tensor};

use crate::error::{CandleContext, TrainError};
use crate::eval::count_correct;
use crate::optim::MomentumSgd;

/// What one [`train_step`] measured on its batch (before the update).
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    /// The mean cross-entropy of the batch.
    pub loss: f32,
    /// Examples whose largest logit is their label.
    pub correct: u64,
    /// Examples whose logits are all 0: every class map dead after the final
    /// ReLU, so no gradient reaches any weight through them.
    pub dead: u64,
    /// Classes with at least one example in the batch, in increasing order.
    pub seen_classes: Vec<u32>,
    /// The classes of `seen_classes` whose logit was 0 for every example of
    /// the batch: class maps silent after the final ReLU even on their own
    /// images (dead ones stay so step after step), in increasing order.
    pub silent_classes: Vec<u32>,
    /// Whether the parameters were updated (not when the loss is not finite).
    pub updated: bool,
}

/// One step: the training forward pass with the dropout masks of
/// `(seed, step)` ([`DropoutRng`]), the cross-entropy with `labels`, its
/// statistics, and, when the loss is finite, backpropagation and a momentum
/// SGD update at learning rate `lr`. A non-finite loss leaves every
/// parameter and momentum buffer untouched (the trainer then stops with
/// [`TrainError::Diverged`]).
///
/// ```
/// use allcnn_models::{AllCnn, ArchSpec, Init};
/// use allcnn_train::{train_step, MomentumSgd, SgdConfig};
/// use candle_core::{DType, Device, Tensor};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let spec = ArchSpec::by_name("all-cnn-c", 10)?;
/// let mut model = AllCnn::init(spec, Init::XavierUniform, 0, &Device::Cpu)?;
/// let mut opt = MomentumSgd::new(model.make_trainable()?, SgdConfig::default());
/// let images = Tensor::randn(0f32, 1.0, (4, 3, 32, 32), &Device::Cpu)?;
/// let labels = Tensor::new(&[0u32, 1, 2, 3], &Device::Cpu)?;
/// let out = train_step(&model, &mut opt, &images, &labels, 42, 0, 0.01)?;
/// assert!(out.updated && out.loss.is_finite() && out.correct <= 4);
/// # Ok(()) }
/// ```
///
/// # Errors
/// A candle error in the forward or backward pass or the update, naming
/// the step.
pub fn train_step(
    model: &AllCnn,
    opt: &mut MomentumSgd,
    images: &Tensor,
    labels: &Tensor,
    seed: u64,
    step: u64,
    lr: f64,
) -> Result<StepOutcome, TrainError> {
    opt.set_learning_rate(lr);
    let mut dropout = DropoutRng::new(seed, step);
    // On CPU our kernels' own backward (no candle autograd: no gradient
    // buffer zero-filled and then added to), its gradients ready after the
    // forward; elsewhere candle's, from the loss tensor.
    // The labels on the host, for the statistics and the class-map watch
    // (a few hundred integers): read before the pass on CPU (the kernels'
    // backward takes them), after the backward is queued elsewhere (so a
    // GPU is not made to wait for them before the forward).
    let read_labels = || {
        labels
            .to_dtype(DType::U32)
            .and_then(|l| l.to_vec1::<u32>())
            .ctx(|| format!("reading the labels at step {step}"))
    };
    let mut host = Vec::new();
    let fast = if images.device().is_cpu() {
        host = read_labels()?;
        model.train_grads(images, &host, &mut dropout)?
    } else {
        None
    };
    let (logits, loss_v, grads) = match fast {
        Some(t) => (t.logits, t.loss, t.grads),
        None => {
            let logits = model.forward_train(images, &mut dropout)?;
            let loss = candle_nn::loss::cross_entropy(&logits, labels)
                .ctx(|| format!("loss at step {step}"))?;
            // The backward is queued before anything is read, so a GPU runs
            // the whole step without waiting on the host; then the loss and
            // the logits come back in one transfer (the statistics below
            // are computed from them on the host).
            let grads = loss
                .backward()
                .ctx(|| format!("backward pass at step {step}"))?;
            let (loss_v, logits) =
                to_host(&loss, &logits).ctx(|| format!("reading the loss at step {step}"))?;
            if host.is_empty() {
                host = read_labels()?;
            }
            (logits, loss_v, grads)
        }
    };
    if !loss_v.is_finite() {
        return Ok(StepOutcome {
            loss: loss_v,
            correct: 0,
            dead: 0,
            seen_classes: Vec::new(),
            silent_classes: Vec::new(),
            updated: false,
        });
    }
    // The logits are on the host here (see above); so are these labels.
    let host_labels = Tensor::from_slice(&host, host.len(), logits.device())
        .ctx(|| format!("labels at step {step}"))?;
    let correct =
        count_correct(&logits, &host_labels).ctx(|| format!("accuracy at step {step}"))?;
    let dead = count_dead(&logits).ctx(|| format!("dead maps at step {step}"))?;
    let (seen_classes, silent_classes) =
        silent_classes(&logits, &host).ctx(|| format!("silent class maps at step {step}"))?;
    opt.step(&grads)?;
    Ok(StepOutcome {
        loss: loss_v,
        correct,
        dead,
        seen_classes,
        silent_classes,
        updated: true,
    })
}

/// The loss (f32) and the logits of a step on the host, in one transfer
/// from a GPU (a no-op copy on CPU).
fn to_host(loss: &Tensor, logits: &Tensor) -> candle_core::Result<(f32, Tensor)> {
    let both = Tensor::cat(
        &[
            loss.to_dtype(DType::F32)?.reshape(1)?,
            logits.to_dtype(DType::F32)?.flatten_all()?,
        ],
        0,
    )?
    .to_vec1::<f32>()?;
    let host = Tensor::from_slice(&both[1..], logits.dims(), &candle_core::Device::Cpu)?;
    Ok((both[0], host))
}

/// Examples of a batch whose logits are all 0 (every class map dead after
/// the final ReLU).
fn count_dead(logits: &Tensor) -> candle_core::Result<u64> {
    let max = logits.max(1)?;
    let dead = max.le(0f32)?.to_dtype(DType::F32)?.sum_all()?;
    Ok(dead.to_scalar::<f32>()? as u64)
}

/// The classes that have examples in a batch, and those of them whose
/// logit is at most 0 for every example of the batch (a class absent from a
/// batch says nothing about its map: a trained network gives 0 to the
/// classes an image is not).
fn silent_classes(logits: &Tensor, labels: &[u32]) -> candle_core::Result<(Vec<u32>, Vec<u32>)> {
    let live = logits.max(0)?.gt(0f32)?.to_vec1::<u8>()?;
    let mut seen = vec![false; live.len()];
    for &l in labels {
        if let Some(s) = seen.get_mut(l as usize) {
            *s = true;
        }
    }
    let seen: Vec<u32> = (0u32..)
        .zip(&seen)
        .filter_map(|(c, &s)| s.then_some(c))
        .collect();
    let silent = seen
        .iter()
        .copied()
        .filter(|&c| live[c as usize] == 0)
        .collect();
    Ok((seen, silent))
}
