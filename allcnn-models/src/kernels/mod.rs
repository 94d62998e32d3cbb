//! The kernels: every CPU kernel of the crate, the device-generic custom ops
//! the network is built from, and the crate's only `unsafe` code.
//!
//! Everything above this module (specs, models, weights files, and the
//! training and visualisation crates) works on [`candle_core::Tensor`]s
//! through the safe functions here; what is inside (slices of
//! `CpuStorage`, SIMD intrinsics, packed GEMM panels) does not leak out.
//!
//! - [`conv`]: the convolution in all three passes (forward, input and weight
//!   gradients): Winograd F(2x2, 3x3) and im2col + GEMM on CPU, in f32 or
//!   with bf16 GEMM operands (AVX-512 BF16 intrinsics, the crate's `unsafe`);
//!   candle's `conv2d` on other devices.
//! - [`pool`]: the paper's 3x3 / stride 2 / padding 1 max-pool with its
//!   switches and an exact single-argmax backward, on every device.
//! - [`relu`]: the ReLU with a choice of backward rule (the gradient,
//!   deconvnet, guided backpropagation), written once for every device.
//! - [`sgd`]: the in-place momentum-SGD update of a parameter (CPU, f32).
//!
//! Each kernel states its devices and dtypes; inputs they do not cover take
//! candle's generic ops, so every function here works on every device.

pub mod conv;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub mod pool;
pub mod relu;
pub mod sgd;
pub(crate) mod simd;
pub(crate) mod slice;

/// Which element-wise and convolution code this process runs on the CPU:
/// `avx512` (AVX-512 loops and kernels), `avx2` (the element-wise loops
/// and the F(4x4, 3x3) transforms compiled for AVX2 and FMA; the other
/// kernels portable), `portable (ALLCNN_SIMD=portable)` where that switch
/// turned them off, or `portable` where the CPU (or the architecture) lacks
/// them. The bf16 kernel and the AMX tiles have their own reports
/// ([`conv::has_native_bf16`], [`conv::amx_status`]).
pub fn simd_description() -> &'static str {
    if simd::portable_only() {
        return "portable (ALLCNN_SIMD=portable)";
    }
    #[cfg(target_arch = "x86_64")]
    if simd::avx512f() {
        return "avx512";
    }
    #[cfg(target_arch = "x86_64")]
    if simd::avx2() {
        return "avx2";
    }
    "portable"
}
