//! The crate's element-wise loops compiled for the CPU at hand.
//!
//! The crate is built for the baseline of its target (x86-64: SSE2), where
//! the element-wise loops of a training step (dropout masks, ReLU masks,
//! bias sums, partial gradient sums) run 4 lanes wide or scalar. [`wide`]
//! runs such a loop from a copy of itself compiled for AVX-512 (with AVX2
//! and FMA) when the CPU has it: the same operations on the same values, so
//! the same results, 16 lanes at a time.

// A `target_feature` function is unsafe to call; its one caller checks the
// features first.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
use std::sync::OnceLock;

/// Runs `f`, compiled for AVX-512 F/BW/VL (with AVX2 and FMA) where this
/// CPU has them. `f` should be a loop over slices with no calls that stay
/// out of line (they would run at the baseline).
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: `avx512()` checked that the CPU has every feature the
        // copy is compiled for.
        return unsafe { x86::avx512(f) };
    }
    f()
}

/// Whether the CPU has AVX-512 F, BW and VL, AVX2 and FMA (detected once).
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    /// `f()`, with `f` inlined into (and so compiled for) this function's
    /// features.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VL, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub(super) unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wide copy computes what the plain loop computes.
    #[test]
    fn wide_is_the_plain_loop() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let plain: Vec<f32> = x.iter().map(|v| v.max(0.0) * 1.25).collect();
        let fast = wide(|| x.iter().map(|v| v.max(0.0) * 1.25).collect::<Vec<f32>>());
        assert_eq!(plain, fast);
    }
}
