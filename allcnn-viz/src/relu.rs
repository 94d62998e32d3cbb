//! The one mechanism behind every method: a ReLU whose forward is `max(x, 0)`
//! and whose backward follows a [`BackwardRule`] (the op itself is
//! `allcnn_models::kernels::relu`, which the network's training ReLU is too).

use allcnn_models::kernels::relu::relu_with;
pub use allcnn_models::kernels::relu::BackwardRule;
use allcnn_models::{LayerName, ReluRule};
use candle_core::Tensor;

/// A [`ReluRule`] for `allcnn_models::ForwardPass::relu` that applies the
/// same [`BackwardRule`] at every ReLU of the network (as Captum does,
/// including the ReLU after the class convolution). The forward value is
/// always `max(x, 0)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleReluAll(pub BackwardRule);

impl ReluRule for RuleReluAll {
    fn relu(&self, _layer: LayerName, x: &Tensor) -> candle_core::Result<Tensor> {
        relu_with(x, self.0)
    }
}
