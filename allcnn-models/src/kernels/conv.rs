//! A CPU convolution whose forward and both backward passes are GEMMs.
//!
//! candle 0.11 computes a convolution's input gradient on CPU with a direct
//! `conv_transpose2d` loop (10-30 GFLOP/s) and always computes it, even for
//! the input image. This op lowers the forward, the weight gradient and the
//! input gradient to im2col / col2im plus a GEMM (faer, which dispatches to
//! the `gemm` crate), and skips the input gradient when the input does not
//! need one. Images are processed in parallel with rayon; the weight
//! gradient is reduced over fixed chunks of the batch in a fixed order, so
//! results do not depend on the number of threads.
//!
//! [`Algorithm::Winograd`] computes 3x3 stride-1 convolutions (most of
//! All-CNN-C's work) with Winograd F(2x2, 3x3) instead, in all three passes:
//! 2.25x fewer multiplications, equal to the im2col path up to rounding.
//!
//! Only f32 tensors on the CPU take this path; everything else (other
//! dtypes, CUDA, Metal) uses candle's `conv2d`.

// The AMX, AVX-512 BF16 and direct-convolution code is reached only
// through x86-64 runtime detection: elsewhere (aarch64) its helpers are
// compiled (the portable models of the kernels stay testable) but unused.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod amx;
#[cfg(feature = "cudnn")]
mod cudnn;
// Public only for the `bf16_gemm` bench, which measures the GEMM alone.
#[doc(hidden)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub mod bf16;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod direct;
mod gather;
mod scratch;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod shuffle;
mod winograd;
mod winograd4;

pub use amx::{status as amx_status, AmxStatus};

use bf16::{PackedA, PackedB};
use scratch::Pool;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::relu::{self, CpuReluMask};
use super::simd;
use super::slice::f32_slice;

/// Images per partial weight gradient: fixed, so the reduction order does
/// not depend on the thread count.
const WGRAD_CHUNK: usize = 8;

/// How the CPU path computes a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// im2col / col2im plus one GEMM per pass, for every geometry.
    #[default]
    Im2col,
    /// Winograd F(2x2, 3x3) for 3x3 stride-1 kernels with at least 16
    /// channels in and out (forward, input and weight gradient), im2col for
    /// every other geometry. Equal to [`Algorithm::Im2col`] up to f32
    /// rounding (tested to 1e-5 relative).
    Winograd,
    /// As [`Algorithm::Winograd`], but every GEMM takes its operands
    /// rounded to bf16 and accumulates in f32 (AVX-512 BF16 `vdpbf16ps`
    /// where the CPU has it, a portable f32 kernel on the same rounded
    /// operands otherwise): the 16 GEMMs of the Winograd layers and the
    /// im2col GEMMs of every other geometry (strided, 1x1, few channels),
    /// in all three passes. Each operand carries bf16's 8-bit mantissa
    /// (relative rounding 2^-9), so results differ from f32 by about 1e-3
    /// relative (tested to 1e-2); the Winograd transforms, im2col / col2im,
    /// the accumulation and the weights kept by the caller stay f32.
    WinogradBf16,
    /// As [`Algorithm::Winograd`], with F(4x4, 3x3) (36 multiplications
    /// per 16 outputs, 4x fewer than direct) wherever a pass's output map
    /// is larger than 6x6, and F(2x2, 3x3) on smaller ones, where 4x4 tiles
    /// would save nothing. f32 throughout; its transforms round more than
    /// F(2x2, 3x3)'s, so results differ from [`Algorithm::Im2col`] by
    /// up to about 1e-5 relative to the largest output (8e-6 measured on a
    /// 96-channel layer; tested to 1e-4).
    WinogradF4,
}

/// Whether [`Algorithm::WinogradBf16`] runs its native AVX-512 BF16 kernel
/// on this CPU (otherwise it uses a portable f32 kernel on the same
/// bf16-rounded operands: the same results up to rounding, but no faster
/// than [`Algorithm::Winograd`]).
pub fn has_native_bf16() -> bool {
    bf16::native()
}

impl Algorithm {
    /// What a geometry actually runs: Winograd only where it is eligible,
    /// bf16 GEMMs wherever the algorithm asks for them.
    fn resolve(self, geo: &Geometry) -> Plan {
        let winograd = self != Algorithm::Im2col && winograd::eligible(geo);
        let bf16 = self == Algorithm::WinogradBf16;
        let f4 = self == Algorithm::WinogradF4;
        Plan { winograd, bf16, f4 }
    }
}

/// What one convolution runs in all three passes, resolved from an
/// [`Algorithm`] for its geometry.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Winograd F(2x2, 3x3) rather than im2col.
    winograd: bool,
    /// The GEMMs take bf16-rounded operands.
    bf16: bool,
    /// Winograd passes whose output map is larger than 6x6 take F(4x4,
    /// 3x3) tiles (f32 only).
    f4: bool,
}

/// `x` `[N, Cin, H, W]` convolved with `w` `[Cout, Cin, k, k]` (square
/// kernel, no bias, no dilation or groups), differentiable in both, with
/// [`Algorithm::Im2col`].
///
/// # Errors
/// When the shapes do not fit, or a candle error on other devices.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    conv2d_with(x, w, stride, padding, Algorithm::Im2col)
}

/// As [`conv2d`], choosing the CPU algorithm.
///
/// # Errors
/// When the shapes do not fit, or a candle error on other devices.
pub fn conv2d_with(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    algorithm: Algorithm,
) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
        let geo = Geometry::new(x.dims(), w.dims(), stride, padding)?;
        let plan = algorithm.resolve(&geo);
        x.contiguous()?
            .apply_op2(&w.contiguous()?, CpuConv { geo, plan })
    } else if on_cudnn(&[x, w]) {
        on_cudnn_conv(x, w, None, stride, padding, algorithm)
    } else {
        x.conv2d(w, padding, stride, 1, 1)
    }
}

/// `conv(x, w) + bias`, rectified when `relu` is true, as one op: the
/// convolution of [`conv2d_with`] followed by the bias and the ReLU in a
/// single pass over its output. Only the result is kept for the backward
/// (no separate pre-bias and pre-ReLU maps), which saves two activation-sized
/// buffers per layer in training. The ReLU's backward is PyTorch's,
/// `grad * [y > 0]`.
///
/// On devices other than the CPU, or for dtypes other than f32, it is
/// candle's `conv2d`, `broadcast_add` and the same ReLU.
///
/// # Errors
/// When the shapes do not fit, or a candle error on other devices.
pub fn conv2d_fused(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
    algorithm: Algorithm,
    relu: bool,
) -> candle_core::Result<Tensor> {
    let cout = w.dims().first().copied().unwrap_or(0);
    if bias.dims() != [cout] {
        candle_core::bail!(
            "conv2d: bias {:?} does not fit a kernel {:?} with {cout} output channels",
            bias.dims(),
            w.dims()
        );
    }
    let cpu_f32 = [x, w, bias]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    if cpu_f32 {
        let geo = Geometry::new(x.dims(), w.dims(), stride, padding)?;
        let plan = algorithm.resolve(&geo);
        x.contiguous()?.apply_op3(
            &w.contiguous()?,
            &bias.contiguous()?,
            CpuConvBlock {
                conv: CpuConv { geo, plan },
                relu,
            },
        )
    } else if on_cudnn(&[x, w, bias]) {
        on_cudnn_conv(x, w, Some((bias, relu)), stride, padding, algorithm)
    } else {
        let y = x
            .conv2d(w, padding, stride, 1, 1)?
            .broadcast_add(&bias.reshape((1, cout, 1, 1))?)?;
        if relu {
            relu::relu(&y)
        } else {
            Ok(y)
        }
    }
}

/// Whether these tensors take the cuDNN convolution of the `cudnn`
/// feature: all f32 on a CUDA device, in a build with that feature.
fn on_cudnn(ts: &[&Tensor]) -> bool {
    cfg!(feature = "cudnn")
        && ts
            .iter()
            .all(|t| t.device().is_cuda() && t.dtype() == DType::F32)
}

/// The cuDNN convolution (`cudnn` feature): `x` by `w`, or with
/// `Some((bias, relu))` the block with the bias and the ReLU. With
/// [`Algorithm::WinogradBf16`] (reduced-precision GEMM operands, f32
/// accumulation) cuDNN may use TF32 tensor cores; otherwise FMA math, f32
/// throughout.
#[cfg(feature = "cudnn")]
fn on_cudnn_conv(
    x: &Tensor,
    w: &Tensor,
    block: Option<(&Tensor, bool)>,
    stride: usize,
    padding: usize,
    algorithm: Algorithm,
) -> candle_core::Result<Tensor> {
    let geo = Geometry::new(x.dims(), w.dims(), stride, padding)?;
    let key = cudnn::Key {
        geo,
        tf32: algorithm == Algorithm::WinogradBf16,
    };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match block {
        None => x.apply_op2(&w, cudnn::CudnnConv(key)),
        Some((bias, relu)) => {
            x.apply_op3(&w, &bias.contiguous()?, cudnn::CudnnConvBlock { key, relu })
        }
    }
}

#[cfg(not(feature = "cudnn"))]
fn on_cudnn_conv(
    _: &Tensor,
    _: &Tensor,
    _: Option<(&Tensor, bool)>,
    _: usize,
    _: usize,
    _: Algorithm,
) -> candle_core::Result<Tensor> {
    unreachable!("on_cudnn is false without the cudnn feature")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Geometry {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn new(x: &[usize], w: &[usize], stride: usize, pad: usize) -> candle_core::Result<Self> {
        let (&[n, cin, h, wd], &[cout, cin2, k, k2]) = (x, w) else {
            candle_core::bail!("conv2d: expected 4-d input and kernel, got {x:?} and {w:?}");
        };
        if cin != cin2 || k != k2 || stride == 0 {
            candle_core::bail!("conv2d: input {x:?} does not fit kernel {w:?} (stride {stride})");
        }
        let (Some(hh), Some(ww)) = ((h + 2 * pad).checked_sub(k), (wd + 2 * pad).checked_sub(k))
        else {
            candle_core::bail!("conv2d: input {x:?} is smaller than the kernel {w:?}");
        };
        Ok(Self {
            n,
            cin,
            h,
            w: wd,
            cout,
            k,
            stride,
            pad,
            ho: hh / stride + 1,
            wo: ww / stride + 1,
        })
    }

    /// Rows of the im2col matrix: `Cin * k * k`.
    fn kdim(&self) -> usize {
        self.cin * self.k * self.k
    }

    fn out_plane(&self) -> usize {
        self.ho * self.wo
    }

    fn in_image(&self) -> usize {
        self.cin * self.h * self.w
    }

    /// A 1x1, stride 1, unpadded conv needs no im2col: the image is the matrix.
    fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// For output column `ox` and kernel column `kx`: the input column, if
    /// inside the image.
    #[inline]
    fn in_x(&self, ox: usize, kx: usize) -> Option<usize> {
        (ox * self.stride + kx)
            .checked_sub(self.pad)
            .filter(|&x| x < self.w)
    }

    #[inline]
    fn in_y(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky)
            .checked_sub(self.pad)
            .filter(|&y| y < self.h)
    }

    /// The range of `ox` whose input column is inside the image, for `kx`.
    fn valid_ox(&self, kx: usize) -> (usize, usize) {
        let lo = (0..self.wo)
            .find(|&ox| self.in_x(ox, kx).is_some())
            .unwrap_or(self.wo);
        let hi = (lo..self.wo)
            .take_while(|&ox| self.in_x(ox, kx).is_some())
            .last()
            .map_or(lo, |v| v + 1);
        (lo, hi)
    }

    /// Fills `col` `[kdim, Ho*Wo]` from one image `[Cin, H, W]`.
    fn im2col(&self, img: &[f32], col: &mut [f32]) {
        let plane = self.out_plane();
        for (r, row) in col.chunks_exact_mut(plane).take(self.kdim()).enumerate() {
            self.im2col_row(img, r, row);
        }
    }

    /// Where the output rows of kernel tap `(ky, kx)` read a channel plane,
    /// for the stride-2 gather and scatter-add.
    fn rows(&self, ky: usize, kx: usize) -> gather::Rows {
        gather::Rows {
            w: self.w,
            y0: ky as isize - self.pad as isize,
            x0: kx as isize - self.pad as isize,
            wo: self.wo,
        }
    }

    /// Row `r = (c * k + ky) * k + kx` of one image's im2col matrix into
    /// `row` (`Ho*Wo`).
    fn im2col_row(&self, img: &[f32], r: usize, row: &mut [f32]) {
        let k = self.k;
        let (c, ky, kx) = (r / (k * k), r / k % k, r % k);
        if self.stride == 2 {
            let plane = &img[c * self.h * self.w..][..self.h * self.w];
            gather::stride2_rows(plane, self.rows(ky, kx), &mut row[..self.out_plane()]);
            return;
        }
        let (lo, hi) = self.valid_ox(kx);
        for oy in 0..self.ho {
            let out = &mut row[oy * self.wo..(oy + 1) * self.wo];
            match self.in_y(oy, ky) {
                // No output column sees the image for this kx
                // (a padded kernel wider than a narrow map).
                None => out.fill(0.0),
                Some(_) if lo >= hi => out.fill(0.0),
                Some(y) => {
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    let src = &img[(c * self.h + y) * self.w..][..self.w];
                    let x0 = lo * self.stride + kx - self.pad;
                    if self.stride == 1 {
                        out[lo..hi].copy_from_slice(&src[x0..x0 + (hi - lo)]);
                    } else {
                        for (o, s) in out[lo..hi]
                            .iter_mut()
                            .zip(src[x0..].iter().step_by(self.stride))
                        {
                            *o = *s;
                        }
                    }
                }
            }
        }
    }

    /// One image's columns rounded to bf16 and packed into `b` as the right
    /// operand of the forward GEMM (`kdim x plane`), without the f32 im2col
    /// matrix: two rows (a packed pair) at a time through `rows` (scratch).
    fn pack_columns(&self, img: &[f32], rows: &mut Vec<f32>, b: &mut PackedB) {
        const NR: usize = bf16::NR;
        let (kd, plane) = (self.kdim(), self.out_plane());
        if self.is_pointwise() {
            b.pack(img, kd, plane, plane, 1);
            return;
        }
        let pairs = kd.div_ceil(2);
        let dst = b.words_mut(kd, plane);
        rows.clear();
        rows.resize(2 * plane.next_multiple_of(NR), 0.0);
        let (lo, hi) = rows.split_at_mut(plane.next_multiple_of(NR));
        for q in 0..pairs {
            self.im2col_row(img, 2 * q, &mut lo[..plane]);
            if 2 * q + 1 < kd {
                self.im2col_row(img, 2 * q + 1, &mut hi[..plane]);
            } else {
                hi.fill(0.0);
            }
            // Columns past `plane` are the zeros at the end of `lo` and `hi`.
            bf16::words_blocks(lo, hi, NR, &mut dst[q * NR..], pairs * NR);
        }
    }

    /// One image's columns, transposed (`plane x kdim`), rounded to bf16
    /// and packed into `b` as the right operand of the weight-gradient
    /// GEMM: im2col rows are made one panel (`NR` rows) at a time in `rows`
    /// (scratch) and packed from there, so the f32 matrix never exists whole.
    fn pack_columns_t(&self, img: &[f32], rows: &mut Vec<f32>, b: &mut PackedB) {
        const NR: usize = bf16::NR;
        let (kd, plane) = (self.kdim(), self.out_plane());
        if self.is_pointwise() {
            b.pack(img, plane, kd, 1, plane);
            return;
        }
        let per_panel = plane.div_ceil(2) * NR;
        let dst = b.words_mut(plane, kd);
        // Only the rows written below are read: no need to zero them.
        if rows.len() < NR * plane {
            rows.resize(NR * plane, 0.0);
        }
        for (p, panel) in dst.chunks_exact_mut(per_panel).enumerate() {
            let r0 = p * NR;
            let lines = NR.min(kd - r0);
            for (j, row) in rows.chunks_exact_mut(plane).take(lines).enumerate() {
                self.im2col_row(img, r0 + j, row);
            }
            bf16::pack_panel(&rows[..lines * plane], lines, plane, panel);
        }
    }

    /// Adds `col` `[kdim, Ho*Wo]` back into one image gradient `[Cin, H, W]`.
    fn col2im(&self, col: &[f32], img: &mut [f32]) {
        let (k, plane) = (self.k, self.out_plane());
        img.fill(0.0);
        for c in 0..self.cin {
            for ky in 0..k {
                for kx in 0..k {
                    let row = &col[((c * k + ky) * k + kx) * plane..][..plane];
                    if self.stride == 2 {
                        let dst = &mut img[c * self.h * self.w..][..self.h * self.w];
                        gather::add_stride2_rows(dst, self.rows(ky, kx), row);
                        continue;
                    }
                    let (lo, hi) = self.valid_ox(kx);
                    if lo >= hi {
                        continue;
                    }
                    for oy in 0..self.ho {
                        let Some(y) = self.in_y(oy, ky) else { continue };
                        let src = &row[oy * self.wo + lo..oy * self.wo + hi];
                        let dst = &mut img[(c * self.h + y) * self.w..][..self.w];
                        let x0 = lo * self.stride + kx - self.pad;
                        if self.stride == 1 {
                            for (d, s) in dst[x0..x0 + (hi - lo)].iter_mut().zip(src) {
                                *d += *s;
                            }
                        } else {
                            for (d, s) in dst[x0..].iter_mut().step_by(self.stride).zip(src) {
                                *d += *s;
                            }
                        }
                    }
                }
            }
        }
    }

    /// `buf` as a buffer for one image's im2col columns (empty for a 1x1
    /// kernel, which needs none), grown if it is too short. Its values are
    /// stale: every user overwrites all of them.
    fn col_buffer<'a>(&self, buf: &'a mut Vec<f32>) -> &'a mut [f32] {
        let len = if self.is_pointwise() {
            0
        } else {
            self.kdim() * self.out_plane()
        };
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        &mut buf[..len]
    }

    /// One image's columns (`kdim x plane`, row-major): the image itself
    /// for a 1x1 kernel, else its im2col written into `col`.
    fn columns<'a>(&self, img: &'a [f32], col: &'a mut [f32]) -> &'a [f32] {
        if self.is_pointwise() {
            img
        } else {
            self.im2col(img, col);
            col
        }
    }

    /// GEMM parallelism: across images when there are enough of them,
    /// inside the GEMM otherwise.
    fn par(&self) -> Par {
        if self.n >= rayon::current_num_threads() {
            Par::Seq
        } else {
            Par::rayon(0)
        }
    }
}

/// What a forward pass applies to each output plane right after computing
/// it, while the plane is still in cache: the channel's bias, then, when
/// `relu`, the ReLU. Passes without one take `None`.
#[derive(Clone, Copy)]
struct Epilogue<'a> {
    /// One bias per output channel.
    bias: &'a [f32],
    relu: bool,
}

impl Epilogue<'_> {
    /// Applies the epilogue to `plane`, an output plane of channel `k`.
    #[inline]
    fn apply(&self, k: usize, plane: &mut [f32]) {
        let b = self.bias[k];
        simd::wide(|| {
            if self.relu {
                plane.iter_mut().for_each(|v| *v = (*v + b).max(0.0));
            } else {
                plane.iter_mut().for_each(|v| *v += b);
            }
        })
    }

    /// As [`Epilogue::apply`], from `src` into `dst` (every value written).
    #[inline(always)]
    fn apply_into(&self, k: usize, src: &[f32], dst: &mut [std::mem::MaybeUninit<f32>]) {
        let b = self.bias[k];
        let pairs = dst.iter_mut().zip(src);
        if self.relu {
            pairs.for_each(|(d, &v)| {
                d.write((v + b).max(0.0));
            });
        } else {
            pairs.for_each(|(d, &v)| {
                d.write(v + b);
            });
        }
    }

    /// Applies the epilogue to every plane of `out`, whole images of
    /// `cout` planes of `plane` values each.
    fn apply_images(&self, out: &mut [f32], cout: usize, plane: usize) {
        for (i, p) in out.chunks_exact_mut(plane).enumerate() {
            self.apply(i % cout, p);
        }
    }
}

/// One thread's buffers for the im2col paths, kept across calls
/// ([`scratch`]).
#[derive(Default)]
struct ImageScratch {
    /// im2col columns ([`Geometry::col_buffer`]).
    col: Vec<f32>,
    /// Rows staged for packing ([`Geometry::pack_columns`]).
    rows: Vec<f32>,
    a: PackedA,
    b: PackedB,
    /// One image's GEMM output before its epilogue ([`forward_bf16`]).
    out: Vec<f32>,
}

thread_local! {
    static IMAGE: Pool<ImageScratch> = const { Pool::new(Vec::new()) };
}

fn rm(data: &[f32], rows: usize, cols: usize) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice(data, rows, cols)
}

fn rm_mut(data: &mut [f32], rows: usize, cols: usize) -> MatMut<'_, f32> {
    MatMut::from_row_major_slice_mut(data, rows, cols)
}

fn forward(g: &Geometry, x: &[f32], w: &[f32], ep: Option<Epilogue<'_>>) -> Vec<f32> {
    let (kd, plane) = (g.kdim(), g.out_plane());
    let mut out = vec![0f32; g.n * g.cout * plane];
    let wm = rm(w, g.cout, kd);
    let par = g.par();
    out.par_chunks_mut(g.cout * plane)
        .zip(x.par_chunks(g.in_image()))
        .for_each(|(o, img)| {
            scratch::with(&IMAGE, |s| {
                let colm = rm(g.columns(img, g.col_buffer(&mut s.col)), kd, plane);
                matmul(rm_mut(o, g.cout, plane), Accum::Replace, wm, colm, 1.0, par);
                if let Some(ep) = ep {
                    ep.apply_images(o, g.cout, plane);
                }
            })
        });
    out
}

fn weight_grad(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (kd, plane) = (g.kdim(), g.out_plane());
    let par = g.par();
    let partials: Vec<Vec<f32>> = (0..g.n.div_ceil(WGRAD_CHUNK))
        .into_par_iter()
        .map(|chunk| {
            let mut dw = vec![0f32; g.cout * kd];
            scratch::with(&IMAGE, |s| {
                let col = g.col_buffer(&mut s.col);
                let images = chunk * WGRAD_CHUNK..((chunk + 1) * WGRAD_CHUNK).min(g.n);
                for (i, n) in images.enumerate() {
                    let img = &x[n * g.in_image()..][..g.in_image()];
                    let colm = rm(g.columns(img, col), kd, plane);
                    let dym = rm(&dy[n * g.cout * plane..][..g.cout * plane], g.cout, plane);
                    let acc = if i == 0 { Accum::Replace } else { Accum::Add };
                    matmul(
                        rm_mut(&mut dw, g.cout, kd),
                        acc,
                        dym,
                        colm.transpose(),
                        1.0,
                        par,
                    );
                }
            });
            dw
        })
        .collect();
    sum_in_order(partials, g.cout * kd)
}

/// The element-wise sum of per-chunk partials of length `len`, added in
/// chunk order (so the result does not depend on which thread made which
/// partial); zeros when there are none.
fn sum_in_order(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut iter = partials.into_iter();
    let mut total = iter.next().unwrap_or_else(|| vec![0f32; len]);
    for p in iter {
        simd::wide(|| {
            for (t, v) in total.iter_mut().zip(&p) {
                *t += *v;
            }
        });
    }
    total
}

fn input_grad(g: &Geometry, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (kd, plane) = (g.kdim(), g.out_plane());
    let mut dx = vec![0f32; g.n * g.in_image()];
    let wt = rm(w, g.cout, kd).transpose();
    let par = g.par();
    dx.par_chunks_mut(g.in_image())
        .zip(dy.par_chunks(g.cout * plane))
        .for_each(|(img, d)| {
            scratch::with(&IMAGE, |s| {
                let dym = rm(d, g.cout, plane);
                if g.is_pointwise() {
                    matmul(rm_mut(img, kd, plane), Accum::Replace, wt, dym, 1.0, par);
                } else {
                    let col = g.col_buffer(&mut s.col);
                    matmul(
                        rm_mut(&mut *col, kd, plane),
                        Accum::Replace,
                        wt,
                        dym,
                        1.0,
                        par,
                    );
                    g.col2im(col, img);
                }
            })
        });
    dx
}

/// [`forward`] with the GEMMs on bf16-rounded operands ([`bf16::gemm`]):
/// the kernel is packed once, each image's im2col columns (or the image
/// itself for a 1x1 kernel) per image, on the thread that owns the image,
/// made and packed in one pass ([`Geometry::pack_columns`]).
///
/// Each image's product goes to a per-thread buffer that stays in cache and
/// is copied out through the epilogue, so the output is written once and
/// never zeroed.
#[allow(unsafe_code)]
fn forward_bf16(g: &Geometry, x: &[f32], w: &[f32], ep: Option<Epilogue<'_>>) -> Vec<f32> {
    let (kd, plane) = (g.kdim(), g.out_plane());
    let (image, len) = (g.cout * plane, g.n * g.cout * plane);
    let mut out = Vec::<f32>::with_capacity(len);
    let a = PackedA::new(w, g.cout, kd, kd, 1);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(image)
        .zip(x.par_chunks(g.in_image()))
        .for_each(|(o, img)| {
            scratch::with(&IMAGE, |s| {
                g.pack_columns(img, &mut s.rows, &mut s.b);
                if s.out.len() < image {
                    s.out.resize(image, 0.0);
                }
                let c = &mut s.out[..image];
                bf16::gemm(c, plane, &a, &s.b, false);
                let planes = o.chunks_exact_mut(plane).zip(c.chunks_exact(plane));
                simd::wide(|| {
                    for (k, (dst, src)) in planes.enumerate() {
                        match ep {
                            Some(ep) => ep.apply_into(k, src, dst),
                            None => dst.iter_mut().zip(src).for_each(|(d, &v)| {
                                d.write(v);
                            }),
                        }
                    }
                });
            })
        });
    // SAFETY: the chunks cover `..len`, and every plane of each was written
    // above (`o` is `cout` planes).
    unsafe { out.set_len(len) };
    out
}

/// [`weight_grad`] with the GEMMs on bf16-rounded operands: per image,
/// `dW += dY (cout x plane) * colsᵀ (plane x kdim)`, summed over fixed
/// chunks of the batch in order as in the f32 path.
fn weight_grad_bf16(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (kd, plane) = (g.kdim(), g.out_plane());
    let partials: Vec<Vec<f32>> = (0..g.n.div_ceil(WGRAD_CHUNK))
        .into_par_iter()
        .map(|chunk| {
            let mut dw = vec![0f32; g.cout * kd];
            scratch::with(&IMAGE, |s| {
                let images = chunk * WGRAD_CHUNK..((chunk + 1) * WGRAD_CHUNK).min(g.n);
                for (i, n) in images.enumerate() {
                    let img = &x[n * g.in_image()..][..g.in_image()];
                    s.a.pack(
                        &dy[n * g.cout * plane..][..g.cout * plane],
                        g.cout,
                        plane,
                        plane,
                        1,
                    );
                    g.pack_columns_t(img, &mut s.rows, &mut s.b);
                    bf16::gemm(&mut dw, kd, &s.a, &s.b, i > 0);
                }
            });
            dw
        })
        .collect();
    sum_in_order(partials, g.cout * kd)
}

/// [`input_grad`] with the GEMMs on bf16-rounded operands: `Wᵀ` is packed
/// once, each image's output gradient per image.
fn input_grad_bf16(g: &Geometry, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (kd, plane) = (g.kdim(), g.out_plane());
    let mut dx = vec![0f32; g.n * g.in_image()];
    let wt = PackedA::new(w, kd, g.cout, 1, kd);
    dx.par_chunks_mut(g.in_image())
        .zip(dy.par_chunks(g.cout * plane))
        .for_each(|(img, d)| {
            scratch::with(&IMAGE, |s| {
                s.b.pack(d, g.cout, plane, plane, 1);
                if g.is_pointwise() {
                    bf16::gemm(img, plane, &wt, &s.b, false);
                } else {
                    let col = g.col_buffer(&mut s.col);
                    bf16::gemm(col, plane, &wt, &s.b, false);
                    g.col2im(col, img);
                }
            })
        });
    dx
}

struct CpuConv {
    geo: Geometry,
    /// Resolved for the geometry ([`Algorithm::resolve`]), for all three
    /// passes.
    plan: Plan,
}

impl CpuConv {
    /// The forward convolution of `x` with `w`, each output plane finished
    /// by `ep`, if any.
    fn run(&self, x: &[f32], w: &[f32], ep: Option<Epilogue<'_>>) -> (CpuStorage, Shape) {
        let g = &self.geo;
        let Plan { winograd, bf16, f4 } = self.plan;
        // With bf16 operands on active AMX tiles the direct convolution
        // runs whatever the plan's algorithm (docs/performance.md).
        let out = match (winograd, bf16) {
            (_, true) if direct::usable(g) => direct::forward(g, x, w, ep),
            (true, false) if f4 && winograd4::pays(g.ho, g.wo) => winograd4::forward(g, x, w, ep),
            (true, _) => winograd::forward(g, x, w, bf16, ep),
            (false, false) => forward(g, x, w, ep),
            (false, true) => forward_bf16(g, x, w, ep),
        };
        (CpuStorage::F32(out), Shape::from((g.n, g.cout, g.ho, g.wo)))
    }
}

impl CustomOp2 for CpuConv {
    fn name(&self) -> &'static str {
        "allcnn-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
        );
        Ok(self.run(x, w, None))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dw = if w.track_op() {
            Some(x.apply_op2_no_bwd(&grad, &Grad::Weight(self.geo, self.plan))?)
        } else {
            None
        };
        // The input image of the first layer needs no gradient in training.
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(w, &Grad::Input(self.geo, self.plan))?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// [`CpuConv`] with the bias and optionally the ReLU applied to its output.
struct CpuConvBlock {
    conv: CpuConv,
    relu: bool,
}

impl CustomOp3 for CpuConvBlock {
    fn name(&self) -> &'static str {
        "allcnn-conv2d-bias-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, bias) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let ep = Epilogue {
            bias,
            relu: self.relu,
        };
        Ok(self.conv.run(x, w, Some(ep)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // y > 0 exactly where the pre-activation is > 0: PyTorch's mask.
        let grad = if self.relu {
            grad.apply_op2_no_bwd(res, &CpuReluMask)?
        } else {
            grad
        };
        let db = if b.track_op() {
            Some(grad.apply_op1_no_bwd(&ChannelSum)?)
        } else {
            None
        };
        let (dx, dw) = self.conv.bwd(x, w, res, &grad)?;
        Ok((dx, dw, db))
    }
}

/// The two gradient passes of [`CpuConv`], as one no-backward op over two
/// f32 tensors: `(x, dy) -> dw` or `(dy, w) -> dx`, with the resolved
/// algorithm.
#[derive(Clone, Copy)]
enum Grad {
    Weight(Geometry, Plan),
    Input(Geometry, Plan),
}

impl CustomOp2 for Grad {
    fn name(&self) -> &'static str {
        match self {
            Grad::Weight(..) => "allcnn-conv2d-weight-grad",
            Grad::Input(..) => "allcnn-conv2d-input-grad",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
        );
        let (out, shape) = match self {
            Grad::Weight(g, plan) => (weight_grad_of(g, *plan, a, b), (g.cout, g.cin, g.k, g.k)),
            Grad::Input(g, plan) => (input_grad_of(g, *plan, a, b), (g.n, g.cin, g.h, g.w)),
        };
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

/// The weight gradient of `(x, dy)` with `plan`'s algorithm.
fn weight_grad_of(g: &Geometry, plan: Plan, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let Plan { winograd, bf16, f4 } = plan;
    match (winograd, bf16) {
        (_, true) if direct::usable(g) => direct::weight_grad(g, x, dy),
        (true, false) if f4 && winograd4::pays(g.ho, g.wo) => winograd4::weight_grad(g, x, dy),
        (true, _) => winograd::weight_grad(g, x, dy, bf16),
        (false, false) => weight_grad(g, x, dy),
        (false, true) => weight_grad_bf16(g, x, dy),
    }
}

/// The input gradient of `(dy, w)` with `plan`'s algorithm.
fn input_grad_of(g: &Geometry, plan: Plan, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let Plan { winograd, bf16, f4 } = plan;
    match (winograd, bf16) {
        // The input gradient is a forward pass whose output is the input.
        (true, false) if f4 && winograd4::pays(g.h, g.w) => winograd4::input_grad(g, dy, w),
        (true, true) if direct::usable(&winograd::dual(g)) => {
            direct::forward(&winograd::dual(g), dy, &winograd::flipped(g, w), None)
        }
        (true, _) => winograd::input_grad(g, dy, w, bf16),
        (false, false) => input_grad(g, dy, w),
        (false, true) if direct::usable_input_grad_stride2(g) => {
            direct::input_grad_stride2(g, dy, w)
        }
        (false, true) => input_grad_bf16(g, dy, w),
    }
}

/// A convolution with bias and ReLU for a CPU f32 training pass that runs
/// without candle's autograd ([`crate::AllCnn::train_grads`]): the kernels
/// of [`conv2d_fused`] and of its backward, on plain slices, so no
/// gradient is first zero-filled and then added to.
pub(crate) struct DirectConv(CpuConv);

impl DirectConv {
    /// The convolution of an input `x` `[N, Cin, H, W]` with a kernel `w`
    /// `[Cout, Cin, k, k]`.
    pub(crate) fn new(
        x: &[usize],
        w: &[usize],
        stride: usize,
        padding: usize,
        algorithm: Algorithm,
    ) -> candle_core::Result<Self> {
        let geo = Geometry::new(x, w, stride, padding)?;
        let plan = algorithm.resolve(&geo);
        Ok(Self(CpuConv { geo, plan }))
    }

    /// The output's `[N, Cout, Ho, Wo]`.
    pub(crate) fn out_dims(&self) -> [usize; 4] {
        let g = &self.0.geo;
        [g.n, g.cout, g.ho, g.wo]
    }

    /// `relu(conv(x, w) + bias)`.
    pub(crate) fn forward(&self, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
        let ep = Epilogue { bias, relu: true };
        match self.0.run(x, w, Some(ep)).0 {
            CpuStorage::F32(v) => v,
            _ => unreachable!("the CPU convolution writes f32"),
        }
    }

    /// Whether the forward runs the direct AMX convolution, which can take
    /// its input, and hand its output, as packed planes
    /// ([`DirectConv::forward_eval`]).
    pub(crate) fn is_direct(&self) -> bool {
        self.0.plan.bf16 && direct::usable(&self.0.geo)
    }

    /// [`DirectConv::forward`] for an eval pass: from `x` as the layer
    /// before handed it, and, when `next` (the following convolution,
    /// taking this one's output) and this one are both direct, handed on
    /// as `next`'s packed input planes: the values `next` would pack from
    /// the f32 output, without writing, reading and packing it. The result
    /// is the same, bit for bit.
    ///
    /// # Panics
    /// When `x` is packed and this convolution is not direct (only direct
    /// convolutions hand packed planes on, and only to direct ones).
    pub(crate) fn forward_eval(
        &self,
        x: &Activation,
        w: &[f32],
        bias: &[f32],
        next: Option<&DirectConv>,
    ) -> Activation {
        let ep = Some(Epilogue { bias, relu: true });
        if !self.is_direct() {
            let Activation::F32(x) = x else {
                panic!("packed planes for a convolution that is not direct")
            };
            return Activation::F32(self.forward(x, w, bias));
        }
        let input = match x {
            Activation::F32(x) => direct::Input::F32(x),
            Activation::Packed(p) => direct::Input::Planes(p),
        };
        let next = next.filter(|n| n.is_direct()).map(|n| &n.0.geo);
        match direct::forward_to(&self.0.geo, input, w, ep, next) {
            direct::Output::F32(y) => Activation::F32(y),
            direct::Output::Planes(p) => Activation::Packed(p),
        }
    }

    /// The backward of [`DirectConv::forward`] for the gradient `dy` of its
    /// output `y`: `dy` is masked in place where `y` is 0 (PyTorch's ReLU
    /// backward), then `(dx, dw, dbias)`, `dx` only when `want_dx`.
    pub(crate) fn backward(
        &self,
        x: &[f32],
        w: &[f32],
        y: &[f32],
        dy: &mut [f32],
        want_dx: bool,
    ) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
        let g = &self.0.geo;
        let plane = g.ho * g.wo;
        // Each plane masked and then summed while it is in cache.
        let per_plane: Vec<f64> = dy
            .par_chunks_mut(plane)
            .zip(y.par_chunks(plane))
            .map(|(d, y)| {
                // A select, not a branch: the pattern of a ReLU's zeros is
                // unpredictable, and the select vectorises.
                simd::wide(|| {
                    for (d, &y) in d.iter_mut().zip(y) {
                        *d = if y > 0.0 { *d } else { 0.0 };
                    }
                });
                simd::sum_f64(d)
            })
            .collect();
        let db = channel_totals(&per_plane, g.n, g.cout);
        let dw = weight_grad_of(g, self.0.plan, x, dy);
        let dx = want_dx.then(|| input_grad_of(g, self.0.plan, dy, w));
        (dx, dw, db)
    }
}

/// An activation between two layers of an eval pass on slices
/// ([`DirectConv::forward_eval`]).
pub(crate) enum Activation {
    /// `[N, C, H, W]` values.
    F32(Vec<f32>),
    /// Packed as the next direct convolution's input.
    Packed(direct::Planes),
}

/// `y` `[N, C, H, W]` plus a per-channel `bias` `[C]`, differentiable in
/// both. On CPU (f32) the forward is one pass and the bias gradient a direct
/// per-channel sum; elsewhere it is candle's `broadcast_add`.
///
/// # Errors
/// When the shapes do not fit.
pub fn add_bias(y: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    let (_, c, _, _) = y.dims4()?;
    if bias.dims() != [c] {
        candle_core::bail!(
            "add_bias: bias {:?} does not fit a map with {c} channels",
            bias.dims()
        );
    }
    if y.device().is_cpu() && y.dtype() == DType::F32 && bias.dtype() == DType::F32 {
        y.contiguous()?.apply_op2(&bias.contiguous()?, BiasAdd)
    } else {
        y.broadcast_add(&bias.reshape((1, c, 1, 1))?)
    }
}

struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "allcnn-bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = l1.shape().dims4()?;
        let y = f32_slice(s1, l1, self.name())?;
        let b = f32_slice(s2, l2, self.name())?;
        let plane = h * w;
        let mut out = y.to_vec();
        out.par_chunks_mut(plane).enumerate().for_each(|(i, p)| {
            let v = b[i % c];
            p.iter_mut().for_each(|x| *x += v);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        y: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = y.track_op().then(|| grad.clone());
        let db = if b.track_op() {
            Some(grad.contiguous()?.apply_op1_no_bwd(&ChannelSum)?)
        } else {
            None
        };
        Ok((dy, db))
    }
}

/// Per-channel sums of an `[N, C, H, W]` map (the bias gradient).
struct ChannelSum;

impl candle_core::CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "allcnn-channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let g = f32_slice(s, l, self.name())?;
        Ok((
            CpuStorage::F32(channel_sums(g, n, c, h * w)),
            Shape::from(c),
        ))
    }
}

/// Per-channel sums of an `[n, c, plane]` map: each plane in f64, then the
/// planes of a channel in batch order, deterministic whatever the thread
/// count.
fn channel_sums(g: &[f32], n: usize, c: usize, plane: usize) -> Vec<f32> {
    let per_plane: Vec<f64> = g.par_chunks(plane).map(simd::sum_f64).collect();
    channel_totals(&per_plane, n, c)
}

/// The per-channel totals of the plane sums `per_plane` (`[n, c]`), in
/// batch order.
fn channel_totals(per_plane: &[f64], n: usize, c: usize) -> Vec<f32> {
    (0..c)
        .map(|ch| (0..n).map(|i| per_plane[i * c + ch]).sum::<f64>() as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interleaved f64 sum equals the plain one on exact cases (integers,
    /// every tail length) and to f64 rounding on a plane of the size the
    /// network sees.
    #[test]
    fn plane_sum_is_the_sum() {
        for len in 0..40 {
            let p: Vec<f32> = (0..len).map(|i| (i as f32) - 7.5).collect();
            let want: f64 = p.iter().map(|&v| f64::from(v)).sum();
            assert_eq!(simd::sum_f64(&p), want, "length {len}");
        }
        let p: Vec<f32> = (0..32 * 32)
            .map(|i| ((i * 7919 % 1013) as f32).sin() * 1e3)
            .collect();
        let want: f64 = p.iter().map(|&v| f64::from(v)).sum();
        let scale: f64 = p.iter().map(|&v| f64::from(v).abs()).sum();
        assert!((simd::sum_f64(&p) - want).abs() <= 1e-12 * scale);
    }

    /// The packers that make the im2col columns on the fly write the very
    /// words of the f32 im2col matrix packed afterwards, in both layouts:
    /// strided, padded, odd depths, pixel counts that do not fill a panel,
    /// and several panels of rows.
    #[test]
    fn packed_columns_equal_im2col_then_pack() {
        for (cin, h, k, stride, pad) in [
            (3, 32, 3, 1, 1),
            (5, 9, 3, 2, 1),
            (2, 7, 5, 2, 2),
            (4, 11, 3, 2, 0),
            (7, 6, 1, 1, 0),
        ] {
            let g = Geometry::new(&[1, cin, h, h], &[6, cin, k, k], stride, pad).unwrap();
            let img: Vec<f32> = (0..cin * h * h).map(|i| (i as f32 * 0.61).cos()).collect();
            let (kd, plane) = (g.kdim(), g.out_plane());
            // Stale values in the reused buffer must all be overwritten.
            let mut buf = vec![f32::NAN; kd * plane];
            let cols = g.columns(&img, g.col_buffer(&mut buf)).to_vec();
            assert!(
                cols.iter().all(|v| v.is_finite()),
                "{cin} {h} {k} {stride} {pad}"
            );
            let (mut want, mut got) = (PackedB::default(), PackedB::default());
            let mut rows = vec![f32::NAN; 3];
            want.pack(&cols, kd, plane, plane, 1);
            g.pack_columns(&img, &mut rows, &mut got);
            assert_eq!(
                got.raw(),
                want.raw(),
                "forward layout, {cin} {h} {k} {stride} {pad}"
            );
            want.pack(&cols, plane, kd, 1, plane);
            g.pack_columns_t(&img, &mut rows, &mut got);
            assert_eq!(
                got.raw(),
                want.raw(),
                "transposed layout, {cin} {h} {k} {stride} {pad}"
            );
        }
    }
}
