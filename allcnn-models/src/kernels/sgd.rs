//! The in-place momentum-SGD update of one parameter on CPU, in two passes
//! and no temporaries (the same update from tensor ops allocates six).
//!
//! In `torch.optim.SGD`'s form (dampening 0, no Nesterov):
//!
//! ```text
//! v = momentum * v + (g + weight_decay * w)     velocity_update
//! w = w - lr * v                                weight_update
//! ```
//!
//! Both need contiguous f32 tensors of one shape on the CPU or (feature
//! `cuda`) on CUDA ([`applies`] says whether they have them); callers fall
//! back to tensor ops otherwise.
//!
//! ```
//! use allcnn_models::kernels::sgd;
//! use candle_core::{Device, Tensor};
//!
//! # fn main() -> candle_core::Result<()> {
//! let w = Tensor::new(&[1f32, -2.0], &Device::Cpu)?;
//! let g = Tensor::new(&[0.5f32, 0.5], &Device::Cpu)?;
//! let v = Tensor::new(&[1f32, 0.0], &Device::Cpu)?;
//! assert!(sgd::applies(&w, &g, Some(&v)));
//! sgd::velocity_update(&v, &g, &w, 0.5, 0.5)?; // v = 0.5 v + g + 0.5 w
//! assert_eq!(v.to_vec1::<f32>()?, [1.5, -0.5]);
//! sgd::weight_update(&w, &v, 0.5)?; // w = w - 0.5 v
//! assert_eq!(w.to_vec1::<f32>()?, [0.25, -1.75]);
//! # Ok(()) }
//! ```

use candle_core::{CpuStorage, CudaStorage, DType, InplaceOp2, InplaceOp3, Layout, Tensor};

use super::slice::{f32_slice, f32_slice_mut};

/// Whether the in-place update can run: `w`, `g` and `v` (if any) are f32
/// tensors on the CPU (or on one CUDA device, in a build with the `cuda`
/// feature: the same expressions as CUDA kernels, the same bits),
/// contiguous, of `w`'s shape.
pub fn applies(w: &Tensor, g: &Tensor, v: Option<&Tensor>) -> bool {
    let ok = |t: &Tensor| {
        let device = t.device().is_cpu() || (cfg!(feature = "cuda") && t.device().is_cuda());
        device
            && t.device().same_device(w.device())
            && t.dtype() == DType::F32
            && t.is_contiguous()
            && t.dims() == w.dims()
    };
    ok(w) && ok(g) && v.is_none_or(ok)
}

/// `v = momentum * v + (g + weight_decay * w)`, in place on `v`.
///
/// # Errors
/// When the tensors do not satisfy [`applies`].
pub fn velocity_update(
    v: &Tensor,
    g: &Tensor,
    w: &Tensor,
    momentum: f32,
    weight_decay: f32,
) -> candle_core::Result<()> {
    v.inplace_op3(
        g,
        w,
        &VelocityUpdate {
            momentum,
            weight_decay,
        },
    )
}

/// `w = w - lr * v`, in place on `w`.
///
/// # Errors
/// When the tensors do not satisfy [`applies`].
pub fn weight_update(w: &Tensor, v: &Tensor, lr: f32) -> candle_core::Result<()> {
    w.inplace_op2(v, &WeightUpdate { lr })
}

struct VelocityUpdate {
    momentum: f32,
    weight_decay: f32,
}

impl InplaceOp3 for VelocityUpdate {
    fn name(&self) -> &'static str {
        "allcnn-sgd-velocity"
    }

    fn cpu_fwd(
        &self,
        v: &mut CpuStorage,
        lv: &Layout,
        g: &CpuStorage,
        lg: &Layout,
        w: &CpuStorage,
        lw: &Layout,
    ) -> candle_core::Result<()> {
        let what = self.name();
        let (momentum, weight_decay) = (self.momentum, self.weight_decay);
        let (v, g, w) = (
            f32_slice_mut(v, lv, what)?,
            f32_slice(g, lg, what)?,
            f32_slice(w, lw, what)?,
        );
        if v.len() != g.len() || v.len() != w.len() {
            candle_core::bail!("{what}: lengths {} {} {} differ", v.len(), g.len(), w.len());
        }
        // Compiled for AVX-512 where the CPU has it: the same operations
        // (Rust never fuses a multiply and an add), so the same values.
        super::simd::wide(|| {
            for ((v, &g), &w) in v.iter_mut().zip(g).zip(w) {
                *v = *v * momentum + (g + w * weight_decay);
            }
        });
        Ok(())
    }

    fn cuda_fwd(
        &self,
        v: &mut CudaStorage,
        lv: &Layout,
        g: &CudaStorage,
        lg: &Layout,
        w: &CudaStorage,
        lw: &Layout,
    ) -> candle_core::Result<()> {
        #[cfg(feature = "cuda")]
        return super::cuda::sgd_velocity(
            (v, lv),
            (g, lg),
            (w, lw),
            self.momentum,
            self.weight_decay,
        );
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (v, lv, g, lg, w, lw);
            candle_core::bail!("{}: a build without the cuda feature", self.name())
        }
    }
}

struct WeightUpdate {
    lr: f32,
}

impl InplaceOp2 for WeightUpdate {
    fn name(&self) -> &'static str {
        "allcnn-sgd-weights"
    }

    fn cpu_fwd(
        &self,
        w: &mut CpuStorage,
        lw: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<()> {
        let what = self.name();
        let (w, v) = (f32_slice_mut(w, lw, what)?, f32_slice(v, lv, what)?);
        if w.len() != v.len() {
            candle_core::bail!("{what}: lengths {} {} differ", w.len(), v.len());
        }
        let lr = self.lr;
        super::simd::wide(|| {
            for (w, &v) in w.iter_mut().zip(v) {
                *w -= v * lr;
            }
        });
        Ok(())
    }

    fn cuda_fwd(
        &self,
        w: &mut CudaStorage,
        lw: &Layout,
        v: &CudaStorage,
        lv: &Layout,
    ) -> candle_core::Result<()> {
        #[cfg(feature = "cuda")]
        return super::cuda::sgd_weight((w, lw), (v, lv), self.lr);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (w, lw, v, lv);
            candle_core::bail!("{}: a build without the cuda feature", self.name())
        }
    }
}
