//! The one mechanism behind every method: a ReLU whose forward is `max(x, 0)`
//! and whose backward follows a [`BackwardRule`].
//!
//! The forward is written once through candle's generic
//! [`BackendStorage`] trait, so the op runs on CPU, CUDA and Metal with no
//! device-specific code; the backward is built from ordinary tensor ops.

use allcnn_models::{LayerName, ReluRule};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, MetalStorage, Shape, Tensor};

/// How a ReLU passes the signal `R` arriving from above back to its input,
/// given its forward input `f` (paper-spec section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackwardRule {
    /// Backpropagation, the true gradient: `R * [f > 0]`.
    Gradient,
    /// Zeiler and Fergus's deconvnet: `R * [R > 0]`, the forward input ignored.
    Deconvnet,
    /// Guided backpropagation: `R * [f > 0] * [R > 0]`.
    GuidedBackprop,
}

impl BackwardRule {
    /// Applies the rule to a signal `r` given the ReLU's forward input `f`
    /// (same shape). All masks are strict: a zero input or signal passes
    /// nothing.
    ///
    /// # Errors
    /// When the shapes differ, or a candle error.
    pub fn apply(self, f: &Tensor, r: &Tensor) -> candle_core::Result<Tensor> {
        let mask = |t: &Tensor| t.gt(0f64)?.to_dtype(r.dtype());
        match self {
            BackwardRule::Gradient => r.mul(&mask(f)?),
            BackwardRule::Deconvnet => r.mul(&mask(r)?),
            BackwardRule::GuidedBackprop => r.mul(&mask(f)?)?.mul(&mask(r)?),
        }
    }
}

/// The custom op: ReLU forward, `rule` backward.
#[derive(Debug, Clone, Copy)]
struct RuleRelu {
    rule: BackwardRule,
}

fn relu_fwd<S: BackendStorage>(s: &S, l: &Layout) -> candle_core::Result<(S, Shape)> {
    Ok((s.unary_impl::<candle_core::op::Relu>(l)?, l.shape().clone()))
}

impl CustomOp1 for RuleRelu {
    fn name(&self) -> &'static str {
        match self.rule {
            BackwardRule::Gradient => "allcnn-viz-relu-gradient",
            BackwardRule::Deconvnet => "allcnn-viz-relu-deconvnet",
            BackwardRule::GuidedBackprop => "allcnn-viz-relu-guided",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        relu_fwd(s, l)
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        relu_fwd(s, l)
    }

    fn metal_fwd(
        &self,
        s: &MetalStorage,
        l: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        relu_fwd(s, l)
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.rule.apply(arg, grad)?))
    }
}

/// A [`ReluRule`] for `allcnn_models::ForwardPass::relu` that applies the
/// same [`BackwardRule`] at every ReLU of the network (as Captum does,
/// including the ReLU after the class convolution). The forward value is
/// always `max(x, 0)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleReluAll(pub BackwardRule);

impl ReluRule for RuleReluAll {
    fn relu(&self, _layer: LayerName, x: &Tensor) -> candle_core::Result<Tensor> {
        x.apply_op1(RuleRelu { rule: self.0 })
    }
}
