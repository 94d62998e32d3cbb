//! Splitting a row into its even and odd elements, and merging two such
//! halves back, for the phase planes of stride-2 convolutions: 32 values
//! per AVX-512 permute pair where the CPU has AVX-512 F, a plain loop
//! otherwise; and copying the short runs (a map row) that packing moves,
//! inlined rather than a `memcpy` call each. The values are moved as
//! 32-bit patterns, never computed on, so the results are the same bits on
//! every path.

// The AVX-512 path works through raw pointers; each block states why it is
// sound.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

/// A 4-byte value for which every bit pattern is valid, moved as a `u32`.
///
/// # Safety
/// Implementors are 4 bytes with 4-byte alignment, and every `u32` bit
/// pattern is a valid value of the type.
pub(super) unsafe trait Bits32: Copy {}

// SAFETY: 4 bytes, 4-byte aligned; every bit pattern is some f32 (NaNs
// included).
unsafe impl Bits32 for f32 {}
// SAFETY: the type itself.
unsafe impl Bits32 for u32 {}

/// `dst.copy_from_slice(src)` for short runs (a map row, a tile row: 3 to
/// a few dozen values), inlined in blocks of 16 instead of a `memcpy` call
/// per run.
///
/// # Panics
/// When the lengths differ.
#[inline(always)]
pub(super) fn copy<T: Bits32>(dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len(), "copy: lengths differ");
    let mut d = dst.chunks_exact_mut(16);
    let mut s = src.chunks_exact(16);
    for (d, s) in (&mut d).zip(&mut s) {
        let s: &[T; 16] = s.try_into().expect("16 values");
        d.copy_from_slice(s);
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

/// [`split`] straight into `dst`: the even elements of `src` to
/// `dst[even..]`, the odd ones to `dst[odd..]` (runs that must not
/// overlap: two phase planes of one buffer).
///
/// # Panics
/// When the runs overlap or do not fit in `dst`.
pub(super) fn split_to<T: Bits32>(src: &[T], dst: &mut [T], even: usize, odd: usize) {
    let (ne, no) = (src.len().div_ceil(2), src.len() / 2);
    let (e, o) = if even < odd {
        assert!(even + ne <= odd, "split_to: the runs overlap");
        let (head, tail) = dst.split_at_mut(odd);
        (&mut head[even..][..ne], &mut tail[..no])
    } else {
        assert!(odd + no <= even, "split_to: the runs overlap");
        let (head, tail) = dst.split_at_mut(even);
        (&mut tail[..ne], &mut head[odd..][..no])
    };
    split(src, e, o);
}

/// `even[k] = src[2k]`, `odd[k] = src[2k + 1]`.
///
/// # Panics
/// Unless `even` holds `ceil(n / 2)` and `odd` `floor(n / 2)` values for
/// `n = src.len()`.
pub(super) fn split<T: Bits32>(src: &[T], even: &mut [T], odd: &mut [T]) {
    let n = src.len();
    assert!(
        even.len() == n.div_ceil(2) && odd.len() == n / 2,
        "split: {n} values into {} even and {} odd",
        even.len(),
        odd.len()
    );
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd::avx512f() {
        // SAFETY: the CPU has AVX-512 F; the lengths were checked above and
        // `T` is 4 bytes (`Bits32`), so the pointers address `n`,
        // `ceil(n / 2)` and `floor(n / 2)` 32-bit values.
        unsafe {
            x86::split(
                src.as_ptr().cast(),
                n,
                even.as_mut_ptr().cast(),
                odd.as_mut_ptr().cast(),
            )
        };
        return;
    }
    for (k, pair) in src.chunks(2).enumerate() {
        even[k] = pair[0];
        if let Some(&v) = pair.get(1) {
            odd[k] = v;
        }
    }
}

/// `dst[2m] = even[m]`, `dst[2m + 1] = odd[m]` for every value of `dst`.
///
/// # Panics
/// Unless `even` holds at least `ceil(n / 2)` and `odd` at least `floor(n /
/// 2)` values for `n = dst.len()`.
pub(super) fn merge(even: &[f32], odd: &[f32], dst: &mut [MaybeUninit<f32>]) {
    let n = dst.len();
    assert!(
        even.len() >= n.div_ceil(2) && odd.len() >= n / 2,
        "merge: {} even and {} odd values into {n}",
        even.len(),
        odd.len()
    );
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd::avx512f() {
        // SAFETY: the CPU has AVX-512 F; the lengths were checked above.
        unsafe {
            x86::merge(
                even.as_ptr().cast(),
                odd.as_ptr().cast(),
                n,
                dst.as_mut_ptr().cast(),
            )
        };
        return;
    }
    for (m, d) in dst.chunks_mut(2).enumerate() {
        d[0].write(even[m]);
        if let Some(o) = d.get_mut(1) {
            o.write(odd[m]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    /// Mask of the first `n` (clamped to 16) lanes.
    #[inline]
    fn lanes(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// The native [`super::split`].
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `src` addresses `n` readable values, `even`
    /// `ceil(n / 2)` and `odd` `floor(n / 2)` writable ones.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn split(src: *const u32, n: usize, even: *mut u32, odd: *mut u32) {
        let ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        for i in (0..n).step_by(32) {
            let rest = n - i;
            // SAFETY: masked lanes neither load nor store (and cannot
            // fault); the selected ones are values `i + lane < n` of `src`,
            // `i / 2 + lane < ceil(n / 2)` of `even` and `< floor(n / 2)`
            // of `odd`. The addresses are formed with `wrapping_add`.
            unsafe {
                let a = _mm512_maskz_loadu_epi32(lanes(rest), src.wrapping_add(i).cast());
                let b = _mm512_maskz_loadu_epi32(
                    lanes(rest.saturating_sub(16)),
                    src.wrapping_add(i + 16).cast(),
                );
                let e = _mm512_permutex2var_epi32(a, ie, b);
                let o = _mm512_permutex2var_epi32(a, io, b);
                _mm512_mask_storeu_epi32(
                    even.wrapping_add(i / 2).cast(),
                    lanes(rest.div_ceil(2)),
                    e,
                );
                _mm512_mask_storeu_epi32(odd.wrapping_add(i / 2).cast(), lanes(rest / 2), o);
            }
        }
    }

    /// The native [`super::merge`].
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `even` addresses `ceil(n / 2)` and `odd`
    /// `floor(n / 2)` readable values, `dst` `n` writable ones.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn merge(even: *const u32, odd: *const u32, n: usize, dst: *mut u32) {
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        for i in (0..n).step_by(32) {
            let rest = n - i;
            // SAFETY: as in `split`, with the roles of the sides swapped.
            unsafe {
                let e = _mm512_maskz_loadu_epi32(
                    lanes(rest.div_ceil(2)),
                    even.wrapping_add(i / 2).cast(),
                );
                let o = _mm512_maskz_loadu_epi32(lanes(rest / 2), odd.wrapping_add(i / 2).cast());
                let (a, b) = (
                    _mm512_permutex2var_epi32(e, lo, o),
                    _mm512_permutex2var_epi32(e, hi, o),
                );
                _mm512_mask_storeu_epi32(dst.wrapping_add(i).cast(), lanes(rest), a);
                _mm512_mask_storeu_epi32(
                    dst.wrapping_add(i + 16).cast(),
                    lanes(rest.saturating_sub(16)),
                    b,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length up to past two vectors' worth, against the definition.
    #[test]
    fn split_and_merge_are_the_definition_and_each_others_inverse() {
        for n in 0usize..70 {
            let src: Vec<f32> = (0..n).map(|i| i as f32 * 1.5 - 7.0).collect();
            let (mut even, mut odd) = (vec![0f32; n.div_ceil(2)], vec![0f32; n / 2]);
            split(&src, &mut even, &mut odd);
            for (k, &v) in even.iter().enumerate() {
                assert_eq!(v, src[2 * k], "n {n}, even {k}");
            }
            for (k, &v) in odd.iter().enumerate() {
                assert_eq!(v, src[2 * k + 1], "n {n}, odd {k}");
            }
            let mut back = vec![MaybeUninit::new(f32::NAN); n];
            merge(&even, &odd, &mut back);
            // SAFETY: every value of `back` was initialised above.
            let back: Vec<f32> = back.iter().map(|v| unsafe { v.assume_init() }).collect();
            assert_eq!(back, src, "n {n}");
            // Words too, bit for bit.
            let words: Vec<u32> = (0..n as u32).map(|i| i.wrapping_mul(0x9e37_79b9)).collect();
            let (mut we, mut wo) = (vec![0u32; n.div_ceil(2)], vec![0u32; n / 2]);
            split(&words, &mut we, &mut wo);
            let want: Vec<u32> = words.iter().step_by(2).copied().collect();
            assert_eq!(we, want, "n {n}");
            // Straight into two runs of one buffer, either one first;
            // nothing else written.
            for (at_even, at_odd) in [(3, 3 + n.div_ceil(2) + 2), (n / 2 + 5, 1)] {
                let mut dst = vec![u32::MAX; 2 * n + 8];
                split_to(&words, &mut dst, at_even, at_odd);
                for (i, &d) in dst.iter().enumerate() {
                    let want = if (at_even..at_even + n.div_ceil(2)).contains(&i) {
                        words[2 * (i - at_even)]
                    } else if (at_odd..at_odd + n / 2).contains(&i) {
                        words[2 * (i - at_odd) + 1]
                    } else {
                        u32::MAX
                    };
                    assert_eq!(d, want, "split_to n {n} at ({at_even}, {at_odd}), word {i}");
                }
            }
            // Short copies of every length.
            let mut dst = vec![0u32; n];
            copy(&mut dst, &words);
            assert_eq!(dst, words, "copy n {n}");
        }
    }
}
