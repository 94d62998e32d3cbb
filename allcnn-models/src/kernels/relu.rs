//! The ReLU, `max(x, 0)`, with a choice of backward rule: the true gradient
//! for training and the deconvnet and guided-backpropagation rules of the
//! paper's visualisations (paper-spec section 6).
//!
//! The forward is written once through candle's generic [`BackendStorage`]
//! trait, so the op runs on CPU, CUDA and Metal with no device-specific
//! code. The backward is built from tensor ops, except the gradient rule on
//! f32 CPU tensors, which masks in one parallel pass.
//!
//! ```
//! use allcnn_models::kernels::relu::{relu_with, BackwardRule};
//! use candle_core::{Device, Tensor, Var};
//!
//! # fn main() -> candle_core::Result<()> {
//! let x = Var::new(&[-1f32, 0.0, 2.0, 4.0], &Device::Cpu)?;
//! // The signal arriving from above.
//! let r = Tensor::new(&[3f32, 1.0, -5.0, 6.0], &Device::Cpu)?;
//! for (rule, passed) in [
//!     (BackwardRule::Gradient, [0.0, 0.0, -5.0, 6.0]),
//!     (BackwardRule::Deconvnet, [3.0, 1.0, 0.0, 6.0]),
//!     (BackwardRule::GuidedBackprop, [0.0, 0.0, 0.0, 6.0]),
//! ] {
//!     let y = relu_with(x.as_tensor(), rule)?;
//!     assert_eq!(y.to_vec1::<f32>()?, [0.0, 0.0, 2.0, 4.0]);
//!     let grads = (y * &r)?.sum_all()?.backward()?;
//!     assert_eq!(grads.get(&x).unwrap().to_vec1::<f32>()?, passed);
//! }
//! # Ok(()) }
//! ```

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, DType, Layout, MetalStorage, Shape, Tensor,
};
use rayon::prelude::*;

use super::slice::f32_slice;

/// How a ReLU passes the signal `R` arriving from above back to its input,
/// given its forward input `f` (paper-spec section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackwardRule {
    /// Backpropagation, the true gradient: `R * [f > 0]` (PyTorch's rule: a
    /// zero input passes nothing).
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
            BackwardRule::Gradient
                if f.device().is_cpu() && f.dtype() == DType::F32 && r.dtype() == DType::F32 =>
            {
                // One pass instead of compare, convert and multiply.
                r.contiguous()?
                    .apply_op2_no_bwd(&f.contiguous()?, &CpuReluMask)
            }
            BackwardRule::Gradient => r.mul(&mask(f)?),
            BackwardRule::Deconvnet => r.mul(&mask(r)?),
            BackwardRule::GuidedBackprop => r.mul(&mask(f)?)?.mul(&mask(r)?),
        }
    }
}

/// `max(x, 0)` whose backward is the true gradient (`grad * [x > 0]`).
///
/// # Errors
/// A candle error.
pub fn relu(x: &Tensor) -> candle_core::Result<Tensor> {
    relu_with(x, BackwardRule::Gradient)
}

/// `max(x, 0)` whose backward follows `rule`.
///
/// # Errors
/// A candle error.
pub fn relu_with(x: &Tensor, rule: BackwardRule) -> candle_core::Result<Tensor> {
    x.apply_op1(RuleRelu(rule))
}

/// The custom op: ReLU forward, the rule's backward.
#[derive(Debug, Clone, Copy)]
struct RuleRelu(BackwardRule);

fn relu_fwd<S: BackendStorage>(s: &S, l: &Layout) -> candle_core::Result<(S, Shape)> {
    Ok((s.unary_impl::<candle_core::op::Relu>(l)?, l.shape().clone()))
}

impl CustomOp1 for RuleRelu {
    fn name(&self) -> &'static str {
        match self.0 {
            BackwardRule::Gradient => "allcnn-relu",
            BackwardRule::Deconvnet => "allcnn-relu-deconvnet",
            BackwardRule::GuidedBackprop => "allcnn-relu-guided",
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
        Ok(Some(self.0.apply(arg, grad)?))
    }
}

/// `grad * [x > 0]` on CPU in one pass (the fused convolution's backward
/// uses it with its ReLU'd output as `x`).
pub(crate) struct CpuReluMask;

impl CustomOp2 for CpuReluMask {
    fn name(&self) -> &'static str {
        "allcnn-relu-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = f32_slice(s1, l1, self.name())?;
        let x = f32_slice(s2, l2, self.name())?;
        // Collected in place: no zero fill of the output first.
        let out: Vec<f32> = g
            .par_iter()
            .zip(x.par_iter())
            .with_min_len(1 << 14)
            .map(|(&g, &x)| if x > 0.0 { g } else { 0.0 })
            .collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
