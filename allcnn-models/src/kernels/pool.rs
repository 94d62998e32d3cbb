//! Overlapping 3x3 / stride 2 / padding 1 max-pooling with an exact
//! single-argmax backward and exposed switches.
//!
//! candle's built-in `max_pool2d` refuses a backward pass when the kernel is
//! not equal to the stride, has no padding parameter, and splits the gradient
//! between tied maxima. This module provides the pool the paper uses, with
//! PyTorch's semantics: the padding never wins the max, and the gradient of
//! each output goes to the first maximum of its window in row-major order
//! (the "switch").
//!
//! On CPU the forward and backward are direct loops over the planes (run in
//! parallel with rayon). On CUDA in f32, in a build with the `cuda`
//! feature, they are kernels of ours (the crate's CUDA module) with the
//! same window order and sums, so the same bits. On every other device and
//! dtype the pool is built from device-generic tensor ops (`index_select`,
//! `argmax`, `gather`), whose autograd gives the same routing through the
//! switches.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, Layout, MetalStorage, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

use super::slice::contiguous;

/// The kernel size of the paper's max-pool.
pub const POOL_KERNEL: usize = 3;
/// The stride of the paper's max-pool.
pub const POOL_STRIDE: usize = 2;
/// The padding of the paper's max-pool.
pub const POOL_PADDING: usize = 1;

/// The output side of the 3x3/2 pool padded by 1 for an input side `n`.
pub const fn pooled_size(n: usize) -> usize {
    (n + 2 * POOL_PADDING - POOL_KERNEL) / POOL_STRIDE + 1
}

/// 3x3 max-pool with stride 2 and padding 1 over `x` `[N, C, H, W]`.
///
/// Differentiable: the gradient of each output is routed to the position that
/// won its window (the first maximum in row-major order; padding never wins).
///
/// # Errors
/// When `x` is not rank 4 or its spatial size is 0, or on a dtype the CPU
/// kernel does not support (f32 and f64 are supported).
pub fn max_pool(x: &Tensor) -> candle_core::Result<Tensor> {
    check_input(x)?;
    if has_kernel(x) {
        x.contiguous()?.apply_op1(MaxPoolOp)
    } else {
        generic_max_pool(x).map(|(y, _)| y)
    }
}

/// The pool's output and its switches.
///
/// The switches are a `u32` tensor of the output's shape `[N, C, Ho, Wo]`
/// holding, for each output, the flat index `y * W + x` of the winning input
/// position inside its `H x W` plane (PyTorch's `return_indices` layout).
/// [`unpool`] sends a signal back through them.
///
/// # Errors
/// As [`max_pool`].
pub fn max_pool_with_switches(x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    check_input(x)?;
    if has_kernel(x) {
        let x = x.contiguous()?;
        let y = x.apply_op1(MaxPoolOp)?;
        let s = x.apply_op1_no_bwd(&SwitchesOp)?;
        Ok((y, s))
    } else {
        generic_max_pool(x)
    }
}

/// Sends `signal` `[N, C, Ho, Wo]` back to an `[N, C, h, w]` map through
/// `switches` (from [`max_pool_with_switches`]): each value is added at the
/// position that won its window, every other position is 0. This is exactly
/// the pool's gradient, and the deconvnet's "unpooling".
///
/// # Errors
/// When the shapes of `signal` and `switches` differ.
pub fn unpool(
    signal: &Tensor,
    switches: &Tensor,
    h: usize,
    w: usize,
) -> candle_core::Result<Tensor> {
    let (n, c, ho, wo) = signal.dims4()?;
    if switches.dims() != signal.dims() {
        candle_core::bail!(
            "unpool: switches have shape {:?} but the signal has {:?}",
            switches.dims(),
            signal.dims()
        );
    }
    let src = signal.reshape((n, c, ho * wo))?;
    let idx = switches.reshape((n, c, ho * wo))?.contiguous()?;
    Tensor::zeros((n, c, h * w), signal.dtype(), signal.device())?
        .scatter_add(&idx, &src.contiguous()?, 2)?
        .reshape((n, c, h, w))
}

/// Whether `x` takes this module's kernels: on the CPU, or f32 on CUDA in a
/// build with the `cuda` feature (the rest take the device-generic pool).
fn has_kernel(x: &Tensor) -> bool {
    x.device().is_cpu()
        || (cfg!(feature = "cuda") && x.device().is_cuda() && x.dtype() == candle_core::DType::F32)
}

fn check_input(x: &Tensor) -> candle_core::Result<()> {
    let (_, _, h, w) = x.dims4()?;
    if h == 0 || w == 0 {
        candle_core::bail!("max_pool: empty input of shape {:?}", x.dims());
    }
    Ok(())
}

/// The device-generic pool: the nine shifted views of the input padded with
/// -inf, stacked, argmax, gather. Returns values and flat switches.
pub(crate) fn generic_max_pool(x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let (n, c, h, w) = x.dims4()?;
    let dev = x.device();
    let (ho, wo) = (pooled_size(h), pooled_size(w));
    let (hp, wp) = (h + 2, w + 2);
    // A border of -inf: padding can never win a window.
    let border: Vec<f32> = (0..hp * wp)
        .map(|i| {
            let (y, xx) = (i / wp, i % wp);
            if y == 0 || xx == 0 || y == hp - 1 || xx == wp - 1 {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let border = Tensor::from_vec(border, (1, 1, hp, wp), dev)?.to_dtype(x.dtype())?;
    let xp = x
        .pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .broadcast_add(&border)?;
    let mut views = Vec::with_capacity(9);
    let mut flat = vec![0u32; ho * wo * 9];
    for dy in 0..3 {
        let ih: Vec<u32> = (0..ho).map(|i| (2 * i + dy) as u32).collect();
        let ih = Tensor::from_vec(ih, ho, dev)?;
        for dx in 0..3 {
            let iw: Vec<u32> = (0..wo).map(|i| (2 * i + dx) as u32).collect();
            let iw = Tensor::from_vec(iw, wo, dev)?;
            views.push(xp.index_select(&ih, 2)?.index_select(&iw, 3)?);
            for oy in 0..ho {
                for ox in 0..wo {
                    // Input coordinates; an out-of-range (padding) entry is
                    // never selected, so any value does.
                    let y = (2 * oy + dy).saturating_sub(1).min(h - 1);
                    let xx = (2 * ox + dx).saturating_sub(1).min(w - 1);
                    flat[(oy * wo + ox) * 9 + dy * 3 + dx] = (y * w + xx) as u32;
                }
            }
        }
    }
    let stacked = Tensor::stack(&views, 4)?; // (N, C, Ho, Wo, 9)
    let local = stacked.argmax_keepdim(4)?;
    let y = stacked.gather(&local, 4)?.squeeze(4)?;
    let table = Tensor::from_vec(flat, (1, 1, ho, wo, 9), dev)?
        .broadcast_as((n, c, ho, wo, 9))?
        .contiguous()?;
    let switches = table.gather(&local, 4)?.squeeze(4)?;
    Ok((y, switches))
}

/// Calls `f` for every window of a `h x w` plane: output index and the
/// input index of its first maximum (row-major, padding excluded).
#[inline]
fn for_each_argmax<T: WithDType>(plane: &[T], h: usize, w: usize, mut f: impl FnMut(usize, usize)) {
    let (ho, wo) = (pooled_size(h), pooled_size(w));
    for oy in 0..ho {
        let y0 = (2 * oy).saturating_sub(1);
        let y1 = (2 * oy + 2).min(h);
        for ox in 0..wo {
            let x0 = (2 * ox).saturating_sub(1);
            let x1 = (2 * ox + 2).min(w);
            let mut best = y0 * w + x0;
            let mut best_v = plane[best];
            for y in y0..y1 {
                let row = &plane[y * w..y * w + w];
                for (xx, &v) in row.iter().enumerate().take(x1).skip(x0) {
                    // Strict '>' keeps the first maximum; a NaN wins and sticks.
                    if v > best_v || (v.to_f64().is_nan() && !best_v.to_f64().is_nan()) {
                        best_v = v;
                        best = y * w + xx;
                    }
                }
            }
            f(oy * wo + ox, best);
        }
    }
}

pub(crate) fn cpu_pool<T: WithDType + Send + Sync>(
    x: &[T],
    dims: (usize, usize, usize, usize),
) -> Vec<T> {
    let (n, c, h, w) = dims;
    let (ho, wo) = (pooled_size(h), pooled_size(w));
    let mut out = vec![T::zero(); n * c * ho * wo];
    out.par_chunks_mut(ho * wo)
        .zip(x.par_chunks(h * w))
        .for_each(|(o, plane)| for_each_argmax(plane, h, w, |i, j| o[i] = plane[j]));
    out
}

fn cpu_switches<T: WithDType + Send + Sync>(
    x: &[T],
    dims: (usize, usize, usize, usize),
) -> Vec<u32> {
    let (n, c, h, w) = dims;
    let (ho, wo) = (pooled_size(h), pooled_size(w));
    let mut out = vec![0u32; n * c * ho * wo];
    out.par_chunks_mut(ho * wo)
        .zip(x.par_chunks(h * w))
        .for_each(|(o, plane)| for_each_argmax(plane, h, w, |i, j| o[i] = j as u32));
    out
}

pub(crate) fn cpu_pool_backward<T: WithDType + Send + Sync>(
    x: &[T],
    grad: &[T],
    dims: (usize, usize, usize, usize),
) -> Vec<T> {
    let (_, _, h, w) = dims;
    let (ho, wo) = (pooled_size(h), pooled_size(w));
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(h * w)
        .zip(x.par_chunks(h * w))
        .zip(grad.par_chunks(ho * wo))
        .for_each(|((o, plane), g)| for_each_argmax(plane, h, w, |i, j| o[j] += g[i]));
    out
}

fn dims4(l: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
    l.shape().dims4()
}

fn pooled_shape(d: (usize, usize, usize, usize)) -> Shape {
    Shape::from((d.0, d.1, pooled_size(d.2), pooled_size(d.3)))
}

fn not_cpu<S>(what: &str) -> candle_core::Result<S> {
    candle_core::bail!("{what}: the CPU kernel was called on a tensor of another device (use allcnn_models::kernels::pool::max_pool, which picks the generic path)")
}

/// Forward on CPU; backward through [`PoolBackwardOp`].
struct MaxPoolOp;

impl CustomOp1 for MaxPoolOp {
    fn name(&self) -> &'static str {
        "allcnn-max-pool-3s2p1"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims4(l)?;
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(cpu_pool(contiguous(v, l, self.name())?, d)),
            CpuStorage::F64(v) => CpuStorage::F64(cpu_pool(contiguous(v, l, self.name())?, d)),
            other => candle_core::bail!(
                "{}: unsupported dtype {:?} (use f32 or f64)",
                self.name(),
                other.dtype()
            ),
        };
        Ok((out, pooled_shape(d)))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        #[cfg(feature = "cuda")]
        return super::cuda::pool_forward(s, l);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (s, l);
            not_cpu(self.name())
        }
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        not_cpu(self.name())
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = arg.apply_op2_no_bwd(&grad.contiguous()?, &PoolBackwardOp)?;
        Ok(Some(g))
    }
}

/// Routes the gradient of the pooled map back to the window maxima.
struct PoolBackwardOp;

impl CustomOp2 for PoolBackwardOp {
    fn name(&self) -> &'static str {
        "allcnn-max-pool-3s2p1-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims4(l1)?;
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(cpu_pool_backward(
                contiguous(x, l1, self.name())?,
                contiguous(g, l2, self.name())?,
                d,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(cpu_pool_backward(
                contiguous(x, l1, self.name())?,
                contiguous(g, l2, self.name())?,
                d,
            )),
            (a, b) => candle_core::bail!(
                "{}: unsupported dtypes {:?}/{:?}",
                self.name(),
                a.dtype(),
                b.dtype()
            ),
        };
        Ok((out, l1.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        g: &CudaStorage,
        lg: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        #[cfg(feature = "cuda")]
        return super::cuda::pool_backward(x, lx, g, lg);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (x, lx, g, lg);
            not_cpu(self.name())
        }
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        not_cpu(self.name())
    }
}

/// The switches of the pool on CPU.
struct SwitchesOp;

impl CustomOp1 for SwitchesOp {
    fn name(&self) -> &'static str {
        "allcnn-max-pool-switches"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims4(l)?;
        let out = match s {
            CpuStorage::F32(v) => cpu_switches(contiguous(v, l, self.name())?, d),
            CpuStorage::F64(v) => cpu_switches(contiguous(v, l, self.name())?, d),
            other => candle_core::bail!("{}: unsupported dtype {:?}", self.name(), other.dtype()),
        };
        Ok((CpuStorage::U32(out), pooled_shape(d)))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        #[cfg(feature = "cuda")]
        return super::cuda::pool_switches(s, l);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (s, l);
            not_cpu(self.name())
        }
    }
}

/// Runs the device-generic pool even on CPU (for tests comparing both paths).
#[doc(hidden)]
pub fn max_pool_generic(x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    check_input(x)?;
    generic_max_pool(x)
}
