//! The crate's element-wise loops compiled for the CPU at hand.
//!
//! The crate is built for the baseline of its target (x86-64: SSE2), where
//! the element-wise loops of a training step (dropout masks, ReLU masks,
//! bias sums, partial gradient sums) run 4 lanes wide or scalar. [`wide`]
//! runs such a loop from a copy of itself compiled for AVX-512 (with AVX2
//! and FMA) when the CPU has it, or for AVX2 and FMA when it has those: the
//! same operations on the same values, so the same results, 16 or 8 lanes
//! at a time.

// A `target_feature` function is unsafe to call; its one caller checks the
// features first.
#![allow(unsafe_code)]

use std::sync::OnceLock;

/// Runs `f`, compiled for AVX-512 F/BW/VL (with AVX2 and FMA) where this
/// CPU has them, else for AVX2 and FMA where it has those. `f` should be a loop over slices with no calls that stay
/// out of line (they would run at the baseline).
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: `avx512()` checked that the CPU has every feature the
        // copy is compiled for.
        return unsafe { x86::avx512(f) };
    }
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: `avx2()` checked that the CPU has AVX2 and FMA.
        return unsafe { x86::avx2(f) };
    }
    f()
}

/// Partial sums of [`sum_f64`]: element `i` goes to partial `i % LANES`.
const LANES: usize = 32;

/// The f64 sum of `p` in a fixed order, whatever the CPU: [`LANES`]
/// interleaved partial sums (element `i` to partial `i % 32`, four AVX-512
/// accumulators of eight where the CPU has them, so four independent
/// chains), folded in halves (`j + 16`, then `j + 8`, ...), then the tail
/// that does not fill a row of 32, in order.
pub(crate) fn sum_f64(p: &[f32]) -> f64 {
    let chunks = p.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut acc = partials(p);
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for j in 0..n {
            acc[j] += acc[j + n];
        }
    }
    tail.iter().fold(acc[0], |s, &v| s + f64::from(v))
}

/// The partial sums of [`sum_f64`]: AVX-512 where the CPU has it, the
/// portable loop otherwise (the same additions in the same order).
fn partials(p: &[f32]) -> [f64; LANES] {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: `avx512()` checked the CPU features.
        return unsafe { x86::partials(p) };
    }
    portable_partials(p)
}

/// The partial sums of [`sum_f64`], portably.
fn portable_partials(p: &[f32]) -> [f64; LANES] {
    let mut acc = [0f64; LANES];
    for c in p.chunks_exact(LANES) {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f64::from(v);
        }
    }
    acc
}

/// Whether `ALLCNN_SIMD=portable` asks for the portable code everywhere
/// (`auto`, empty or unset: the CPU's kernels; any other value is ignored
/// with a warning on stderr):
/// no AVX-512 loops, no AVX-512 BF16 kernels, no AMX tiles, as on a CPU
/// without them (an AVX2 laptop, an ARM machine). It exists to test those
/// paths on a machine that has the features; read once per process.
pub(crate) fn portable_only() -> bool {
    static PORTABLE: OnceLock<bool> = OnceLock::new();
    *PORTABLE.get_or_init(|| match std::env::var("ALLCNN_SIMD") {
        Ok(v) if v.trim().eq_ignore_ascii_case("portable") => true,
        Ok(v) if v.trim().is_empty() || v.trim().eq_ignore_ascii_case("auto") => false,
        Ok(v) => {
            // A typo would otherwise leave the wide kernels on unseen.
            eprintln!(
                "warning: ALLCNN_SIMD={v:?} is neither `portable` nor `auto`: ignored (the CPU's kernels run)"
            );
            false
        }
        Err(_) => false,
    })
}

/// Whether the AVX-512 F kernels run: the CPU has AVX-512 F and
/// [`portable_only`] does not hold (detected once).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512f() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx512f") && !portable_only())
}

/// Whether the CPU has AVX-512 F, BW and VL, AVX2 and FMA, and
/// [`portable_only`] does not hold (detected once).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        avx512f()
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
    })
}

/// Whether the CPU has AVX2 and FMA and [`portable_only`] does not hold
/// (detected once).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        !portable_only() && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    use super::LANES;

    /// The partial sums of [`super::sum_f64`]: lanes `8k..8k + 8` in
    /// accumulator `k`, each adding its elements in order, as the portable
    /// loop does.
    ///
    /// # Safety
    /// The CPU has AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn partials(p: &[f32]) -> [f64; LANES] {
        let mut acc = [_mm512_setzero_pd(); 4];
        for c in p.chunks_exact(LANES) {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: values `8k..8k + 8` of the 32 of `c`.
                let v = unsafe { _mm256_loadu_ps(c.as_ptr().add(8 * k)) };
                *a = _mm512_add_pd(*a, _mm512_cvtps_pd(v));
            }
        }
        let mut out = [0f64; LANES];
        for (k, a) in acc.iter().enumerate() {
            // SAFETY: eight f64 into `out[8k..8k + 8]`.
            unsafe { _mm512_storeu_pd(out.as_mut_ptr().add(8 * k), *a) };
        }
        out
    }

    /// `f()`, with `f` inlined into (and so compiled for) this function's
    /// features.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VL, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub(super) unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    /// `f()`, compiled for AVX2 and FMA (Rust never contracts a multiply
    /// and an add into an FMA, so the values are the baseline's).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both paths of the partial sums agree bit for bit, and the sum is the
    /// sum (exactly, for values whose sums are exact in f64).
    #[test]
    fn sum_f64_is_the_sum_on_both_paths() {
        for len in [0, 1, 31, 32, 33, 64, 100, 1000] {
            let p: Vec<f32> = (0..len).map(|i| (i % 17) as f32 - 8.0).collect();
            let want: f64 = p.iter().map(|&v| f64::from(v)).sum();
            assert_eq!(sum_f64(&p), want, "length {len}");
            let r: Vec<f32> = (0..len).map(|i| (i as f32 * 0.77).sin() * 1e3).collect();
            let portable = portable_partials(&r);
            #[cfg(target_arch = "x86_64")]
            if avx512() {
                // SAFETY: checked.
                assert_eq!(unsafe { x86::partials(&r) }, portable, "length {len}");
            }
        }
    }

    /// The wide copy computes what the plain loop computes.
    #[test]
    fn wide_is_the_plain_loop() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let plain: Vec<f32> = x.iter().map(|v| v.max(0.0) * 1.25).collect();
        let fast = wide(|| x.iter().map(|v| v.max(0.0) * 1.25).collect::<Vec<f32>>());
        assert_eq!(plain, fast);
    }
}
