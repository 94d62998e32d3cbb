//! SGD with momentum and weight decay in `torch.optim.SGD`'s form (candle-nn's
//! `SGD` has neither).

use std::collections::HashMap;

use allcnn_models::kernels::sgd;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::{CandleContext, TrainError};

/// Settings of [`MomentumSgd`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum (0.9 in the paper).
    pub momentum: f64,
    /// L2 weight decay added to the gradient (1e-3 in the paper).
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 1e-3,
        }
    }
}

/// SGD with momentum and weight decay, exactly as `torch.optim.SGD`
/// (dampening 0, no Nesterov):
///
/// ```text
/// g = grad + wd * w
/// v = momentum * v + g      (v = g on a parameter's first step)
/// w = w - lr * v
/// ```
///
/// Parameters without a gradient in a step are left alone (neither decayed
/// nor moved). The velocity buffers can be exported and restored
/// ([`MomentumSgd::state`], [`MomentumSgd::load_state`]) for exact resume.
#[derive(Debug)]
pub struct MomentumSgd {
    params: Vec<(String, Var)>,
    velocity: Vec<Option<Tensor>>,
    config: SgdConfig,
}

impl MomentumSgd {
    /// An optimiser over named variables (e.g. [`allcnn_models::AllCnn::make_trainable`]).
    pub fn new(params: Vec<(String, Var)>, config: SgdConfig) -> Self {
        let velocity = vec![None; params.len()];
        Self {
            params,
            velocity,
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> SgdConfig {
        self.config
    }

    /// The current learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    /// Changes the learning rate (schedules call this every step).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// The parameters, in the order given.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update from `grads`.
    ///
    /// # Errors
    /// A candle error naming the parameter being updated.
    pub fn step(&mut self, grads: &GradStore) -> Result<(), TrainError> {
        let SgdConfig {
            lr,
            momentum,
            weight_decay,
        } = self.config;
        for ((name, var), vel) in self.params.iter().zip(self.velocity.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let w = var.as_tensor();
            let in_place = sgd::applies(w, g, vel.as_ref());
            let update = (|| -> candle_core::Result<Tensor> {
                if let (true, Some(v)) = (in_place && momentum != 0.0, vel.as_ref()) {
                    // One pass for the velocity, one for the weights, no
                    // temporaries (the generic path below allocates six).
                    sgd::velocity_update(v, g, w, momentum as f32, weight_decay as f32)?;
                    sgd::weight_update(w, v, lr as f32)?;
                    return Ok(v.clone());
                }
                let g = if weight_decay != 0.0 {
                    (g + (w * weight_decay)?)?
                } else if in_place && momentum != 0.0 {
                    // A copy: it becomes the velocity, which later steps
                    // update in place, and must not be the gradient store's.
                    g.copy()?
                } else {
                    g.clone()
                };
                let v = match vel.as_ref() {
                    Some(v) if momentum != 0.0 => ((v * momentum)? + g)?,
                    _ => g,
                };
                if in_place {
                    sgd::weight_update(w, &v, lr as f32)?;
                } else {
                    let next = (w - (&v * lr)?)?;
                    var.set(&next)?;
                }
                Ok(v)
            })()
            .ctx(|| format!("SGD update of `{name}`"))?;
            if momentum != 0.0 {
                *vel = Some(update.detach());
            }
        }
        Ok(())
    }

    /// Back-propagates `loss` and applies one update.
    ///
    /// # Errors
    /// As [`MomentumSgd::step`], or a candle error in the backward pass.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<(), TrainError> {
        let grads = loss.backward().ctx(|| "backward pass".to_string())?;
        self.step(&grads)
    }

    /// The velocity buffers that exist (parameters that have had a step),
    /// named after their parameters.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.velocity)
            .filter_map(|((n, _), v)| {
                // Copies: CPU buffers are updated in place by later steps
                // (elsewhere, where nothing is updated in place, a shared
                // handle does as well should the copy fail).
                v.as_ref()
                    .map(|v| (n.clone(), v.copy().unwrap_or_else(|_| v.clone())))
            })
            .collect()
    }

    /// The parameters that have no momentum buffer yet (all of them before
    /// the first step).
    pub fn missing_state(&self) -> Vec<&str> {
        self.params
            .iter()
            .zip(&self.velocity)
            .filter(|(_, v)| v.is_none())
            .map(|((name, _), _)| name.as_str())
            .collect()
    }

    /// Restores velocity buffers saved by [`MomentumSgd::state`]; parameters
    /// absent from `state` start from no velocity.
    ///
    /// # Errors
    /// [`TrainError::OptimizerState`] for a buffer whose name or shape does
    /// not match a parameter.
    pub fn load_state(&mut self, mut state: HashMap<String, Tensor>) -> Result<(), TrainError> {
        for ((name, var), vel) in self.params.iter().zip(self.velocity.iter_mut()) {
            *vel = match state.remove(name) {
                Some(t) => {
                    if t.dims() != var.dims() {
                        return Err(TrainError::OptimizerState {
                            reason: format!(
                                "momentum buffer `{name}` has shape {:?}, the parameter {:?}",
                                t.dims(),
                                var.dims()
                            ),
                        });
                    }
                    // A copy of our own: the buffer is updated in place.
                    let t = t
                        .to_dtype(var.dtype())
                        .and_then(|t| t.to_device(var.device()))
                        .and_then(|t| t.copy())
                        .ctx(|| format!("moving momentum buffer `{name}`"))?;
                    Some(t)
                }
                None => None,
            };
        }
        if let Some(name) = state.keys().min() {
            return Err(TrainError::OptimizerState {
                reason: format!("momentum buffer `{name}` matches no parameter"),
            });
        }
        Ok(())
    }
}
