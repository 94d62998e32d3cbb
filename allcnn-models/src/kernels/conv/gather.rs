//! The strided row gather of im2col and the strided row scatter-add of
//! col2im for stride-2 layers (the paper's strided 3x3 convolutions):
//! `out[i] = src[start + 2 i]` ([`stride2`]) and `dst[start + 2 i] += src[i]`
//! ([`add_stride2`]), skipping indices outside the row.
//!
//! The AVX-512 versions work on 32 consecutive row elements at a time
//! (masked at the row's ends, so the padding is never touched) and move
//! the even ones with one permute: 16 values per step instead of 16 scalar
//! bounds-checked copies. Both versions compute the same values.

// The AVX-512 path uses intrinsics on raw pointers; each block states why
// it is sound.
#![allow(unsafe_code)]

/// `out[i] = src[start + 2 i]` where `0 <= start + 2 i < src.len()`, else 0.
#[cfg(test)]
fn stride2(src: &[f32], start: isize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::bf16::native() {
        // SAFETY: `native()` checked AVX-512 F and BW; the kernel reads only
        // lanes inside `src` and writes only lanes inside `out`.
        unsafe { x86::stride2(src, start, out) };
        return;
    }
    stride2_scalar(src, start, out);
}

/// Where the rows of an im2col row come from in a channel plane: output
/// row `oy` (`wo` wide) reads input row `y0 + 2 oy` (`w` wide) from column
/// `x0`, every other column.
#[derive(Clone, Copy, Debug)]
pub(super) struct Rows {
    /// Width of the plane.
    pub w: usize,
    /// Input row of output row 0 (negative: in the padding).
    pub y0: isize,
    /// Input column of output column 0.
    pub x0: isize,
    /// Width of an output row.
    pub wo: usize,
}

/// One row of a stride-2 im2col matrix: for each output row `oy` (`out` is
/// `ho x wo`), [`stride2`] of its input row of `plane` (see [`Rows`]), or
/// zeros where that row is outside the plane.
pub(super) fn stride2_rows(plane: &[f32], at: Rows, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::bf16::native() {
        // SAFETY: as in `stride2`.
        unsafe { x86::stride2_rows(plane, at, out) };
        return;
    }
    rows(plane, at, out, stride2_scalar);
}

/// The loop over output rows behind [`stride2_rows`], with `row` the
/// one-row gather.
#[inline(always)]
fn rows(plane: &[f32], at: Rows, out: &mut [f32], mut row: impl FnMut(&[f32], isize, &mut [f32])) {
    let Rows { w, y0, x0, wo } = at;
    let h = (plane.len() / w.max(1)) as isize;
    for (oy, dst) in out.chunks_exact_mut(wo.max(1)).enumerate() {
        let y = y0 + 2 * oy as isize;
        if (0..h).contains(&y) {
            row(&plane[y as usize * w..][..w], x0, dst);
        } else {
            dst.fill(0.0);
        }
    }
}

/// The col2im counterpart of [`stride2_rows`]: each row `oy` of `src`
/// (`ho x wo`) [`add_stride2`]-ed into its row of `plane` (see [`Rows`]);
/// rows outside the plane are dropped.
pub(super) fn add_stride2_rows(plane: &mut [f32], at: Rows, src: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::bf16::native() {
        // SAFETY: as in `add_stride2`.
        unsafe { x86::add_stride2_rows(plane, at, src) };
        return;
    }
    add_rows(plane, at, src, add_stride2_scalar);
}

/// The loop over rows behind [`add_stride2_rows`], with `row` the one-row
/// scatter-add.
#[inline(always)]
fn add_rows(
    plane: &mut [f32],
    at: Rows,
    src: &[f32],
    mut row: impl FnMut(&mut [f32], isize, &[f32]),
) {
    let Rows { w, y0, x0, wo } = at;
    let h = (plane.len() / w.max(1)) as isize;
    for (oy, s) in src.chunks_exact(wo.max(1)).enumerate() {
        let y = y0 + 2 * oy as isize;
        if (0..h).contains(&y) {
            row(&mut plane[y as usize * w..][..w], x0, s);
        }
    }
}

/// `dst[start + 2 i] += src[i]` where `0 <= start + 2 i < dst.len()`; the
/// other `src` values are dropped.
#[cfg(test)]
fn add_stride2(dst: &mut [f32], start: isize, src: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::bf16::native() {
        // SAFETY: `native()` checked AVX-512 F and BW; the kernel reads only
        // lanes inside `src` and `dst` and writes only lanes inside `dst`.
        unsafe { x86::add_stride2(dst, start, src) };
        return;
    }
    add_stride2_scalar(dst, start, src);
}

/// The portable [`add_stride2`].
fn add_stride2_scalar(dst: &mut [f32], start: isize, src: &[f32]) {
    for (i, s) in src.iter().enumerate() {
        let x = start + 2 * i as isize;
        if x >= 0 && (x as usize) < dst.len() {
            dst[x as usize] += s;
        }
    }
}

/// The portable [`stride2`].
fn stride2_scalar(src: &[f32], start: isize, out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        let x = start + 2 * i as isize;
        *o = if x >= 0 && (x as usize) < src.len() {
            src[x as usize]
        } else {
            0.0
        };
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use core::arch::x86_64::*;

    use super::Rows;

    /// Mask of the lanes `t` (0..16) with `lo <= base + t < hi`.
    #[inline]
    pub(in crate::kernels::conv) fn window(base: isize, lo: isize, hi: isize) -> __mmask16 {
        let first = (lo - base).clamp(0, 16);
        let end = (hi - base).clamp(0, 16);
        if end <= first {
            return 0;
        }
        let ones = ((1u32 << (end - first)) - 1) << first;
        ones as __mmask16
    }

    /// The AVX-512 [`super::stride2_rows`]: one call for all the rows.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn stride2_rows(plane: &[f32], at: Rows, out: &mut [f32]) {
        super::rows(plane, at, out, |src, start, dst| {
            // SAFETY: the caller's contract (the CPU features).
            unsafe { stride2(src, start, dst) }
        });
    }

    /// The AVX-512 [`super::stride2`].
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn stride2(src: &[f32], start: isize, out: &mut [f32]) {
        let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        let (n, len) = (out.len(), src.len() as isize);
        let (sp, op) = (src.as_ptr(), out.as_mut_ptr());
        for i0 in (0..n).step_by(16) {
            let base = start + 2 * i0 as isize;
            let (m0, m1) = (window(base, 0, len), window(base + 16, 0, len));
            // SAFETY: only lanes whose index `base + t` (or `base + 16 + t`)
            // lies in `0..len` are read (masked lanes do not fault), and
            // lanes `i0..min(i0 + 16, n)` of `out` are written.
            unsafe {
                let a = _mm512_maskz_loadu_ps(m0, sp.wrapping_offset(base));
                let b = _mm512_maskz_loadu_ps(m1, sp.wrapping_offset(base + 16));
                let v = _mm512_permutex2var_ps(a, even, b);
                let keep = ((1u32 << (n - i0).min(16)) - 1) as __mmask16;
                _mm512_mask_storeu_ps(op.add(i0), keep, v);
            }
        }
    }

    /// The AVX-512 [`super::add_stride2_rows`]: one call for all the rows.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn add_stride2_rows(plane: &mut [f32], at: Rows, src: &[f32]) {
        super::add_rows(plane, at, src, |dst, start, s| {
            // SAFETY: the caller's contract (the CPU features).
            unsafe { add_stride2(dst, start, s) }
        });
    }

    /// The AVX-512 [`super::add_stride2`]: 16 source values are spread to
    /// the even lanes of two vectors (odd lanes zero) and added to the 32
    /// destination elements they fall in.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn add_stride2(dst: &mut [f32], start: isize, src: &[f32]) {
        let lo_idx = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
        let hi_idx = _mm512_set_epi32(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8);
        let (n, len) = (src.len(), dst.len() as isize);
        let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
        for i0 in (0..n).step_by(16) {
            let count = (n - i0).min(16);
            let base = start + 2 * i0 as isize;
            // Even lanes `2j` of the window carry source `i0 + j`, for the
            // `count` sources that exist; odd lanes carry nothing.
            let carried = (0x5555_5555u32 & ((1u64 << (2 * count)) - 1) as u32) as u64;
            let (c0, c1) = ((carried & 0xffff) as u16, (carried >> 16) as u16);
            let (m0, m1) = (c0 & window(base, 0, len), c1 & window(base + 16, 0, len));
            // SAFETY: source lanes `i0..i0 + count` lie in `src`; only
            // destination lanes with index `base + t` (or `base + 16 + t`)
            // in `0..len` are read and written (masked lanes do not fault).
            unsafe {
                let s = _mm512_maskz_loadu_ps(((1u32 << count) - 1) as __mmask16, sp.add(i0));
                for (m, idx, off) in [(m0, lo_idx, base), (m1, hi_idx, base + 16)] {
                    if m == 0 {
                        continue;
                    }
                    let p = dp.wrapping_offset(off);
                    let add = _mm512_maskz_permutexvar_ps(m, idx, s);
                    let v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, p), add);
                    _mm512_mask_storeu_ps(p, m, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both versions against the definition: every start from well before
    /// to past the row, rows shorter and longer than a vector, outputs of
    /// every length up to three vectors.
    #[test]
    fn stride2_matches_the_definition() {
        for len in [0usize, 1, 5, 16, 17, 32, 33, 64] {
            let src: Vec<f32> = (0..len).map(|x| x as f32 + 1.0).collect();
            for start in -40isize..(len as isize + 3) {
                for n in 0..48 {
                    let want: Vec<f32> = (0..n)
                        .map(|i| {
                            let x = start + 2 * i as isize;
                            if x >= 0 && (x as usize) < len {
                                x as f32 + 1.0
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    let mut got = vec![f32::NAN; n + 1];
                    stride2(&src, start, &mut got[..n]);
                    assert_eq!(&got[..n], &want[..], "len {len}, start {start}, n {n}");
                    assert!(got[n].is_nan(), "wrote past the output");
                    let mut plain = vec![f32::NAN; n];
                    stride2_scalar(&src, start, &mut plain);
                    assert_eq!(plain, want);
                }
            }
        }
    }

    /// Whole rows: each output row is the gather of its input row, or zeros
    /// above and below the plane; the same from both versions.
    #[test]
    fn stride2_rows_gathers_each_row() {
        let (h, w) = (7, 9);
        let plane: Vec<f32> = (0..h * w).map(|x| x as f32 + 1.0).collect();
        for y0 in -3isize..3 {
            for x0 in -2isize..2 {
                for (ho, wo) in [(4, 5), (5, 4), (1, 1), (6, 3)] {
                    let mut want = vec![0.0; ho * wo];
                    for oy in 0..ho {
                        let y = y0 + 2 * oy as isize;
                        if (0..h as isize).contains(&y) {
                            let row = &plane[y as usize * w..][..w];
                            stride2_scalar(row, x0, &mut want[oy * wo..][..wo]);
                        }
                    }
                    let mut got = vec![f32::NAN; ho * wo];
                    stride2_rows(&plane, Rows { w, y0, x0, wo }, &mut got);
                    assert_eq!(got, want, "y0 {y0}, x0 {x0}, {ho} x {wo}");
                    let mut plain = vec![f32::NAN; ho * wo];
                    rows(&plane, Rows { w, y0, x0, wo }, &mut plain, stride2_scalar);
                    assert_eq!(plain, want);
                }
            }
        }
    }

    /// Whole rows: each source row is added into its plane row, rows
    /// outside the plane dropped; the same from both versions.
    #[test]
    fn add_stride2_rows_adds_each_row() {
        let (h, w) = (7, 9);
        let init: Vec<f32> = (0..h * w).map(|x| 100.0 * x as f32).collect();
        for y0 in -3isize..3 {
            for x0 in -2isize..2 {
                for (ho, wo) in [(4, 5), (5, 4), (1, 1), (6, 3)] {
                    let src: Vec<f32> = (0..ho * wo).map(|x| x as f32 + 0.25).collect();
                    let mut want = init.clone();
                    for oy in 0..ho {
                        let y = y0 + 2 * oy as isize;
                        if (0..h as isize).contains(&y) {
                            let row = &mut want[y as usize * w..][..w];
                            add_stride2_scalar(row, x0, &src[oy * wo..][..wo]);
                        }
                    }
                    let mut got = init.clone();
                    add_stride2_rows(&mut got, Rows { w, y0, x0, wo }, &src);
                    assert_eq!(got, want, "y0 {y0}, x0 {x0}, {ho} x {wo}");
                    let mut plain = init.clone();
                    add_rows(&mut plain, Rows { w, y0, x0, wo }, &src, add_stride2_scalar);
                    assert_eq!(plain, want);
                }
            }
        }
    }

    /// Both versions against the definition: the same sweep, into a
    /// destination that already holds values (they must be added to, and
    /// elements not hit must keep theirs).
    #[test]
    fn add_stride2_matches_the_definition() {
        for len in [0usize, 1, 5, 16, 17, 32, 33, 64] {
            let init: Vec<f32> = (0..len).map(|x| 1000.0 * (x as f32 + 1.0)).collect();
            for start in -40isize..(len as isize + 3) {
                for n in 0..48 {
                    let src: Vec<f32> = (0..n).map(|i| i as f32 + 0.5).collect();
                    let mut want = init.clone();
                    for (i, s) in src.iter().enumerate() {
                        let x = start + 2 * i as isize;
                        if x >= 0 && (x as usize) < len {
                            want[x as usize] += s;
                        }
                    }
                    let mut got = init.clone();
                    add_stride2(&mut got, start, &src);
                    assert_eq!(got, want, "len {len}, start {start}, n {n}");
                    let mut plain = init.clone();
                    add_stride2_scalar(&mut plain, start, &src);
                    assert_eq!(plain, want);
                }
            }
        }
    }
}
