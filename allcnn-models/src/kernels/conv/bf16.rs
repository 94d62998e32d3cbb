//! A bf16 x bf16 -> f32 GEMM for CPUs with AVX-512 BF16, with a portable
//! fallback.
//!
//! Both operands are rounded from f32 to bf16 (round to nearest even) while
//! they are packed; the product is accumulated in f32.
//!
//! # Layout
//!
//! The native kernel is built around `vdpbf16ps acc, a, b`, which per 32-bit
//! lane `j` adds `a[2j] b[2j] + a[2j+1] b[2j+1]` to `acc[j]`, where `a` and
//! `b` hold 32 bf16 values. Both operands are therefore stored as `u32`
//! words that hold two bf16 values consecutive along the depth `k`
//! (`lo = x(2q)`, `hi = x(2q+1)`, "pair" `q`), with `k` padded to an even
//! length with zeros:
//!
//! * [`PackedA`] (`m x k`) is cut into panels of `MR` rows; panel `P`,
//!   pair `q`, row `r` is word `(P * pairs + q) * MR + r`. Rows past `m`
//!   are zero.
//! * [`PackedB`] (`k x n`) is cut into panels of `NR` columns; panel `P`,
//!   pair `q`, column `j` is word `(P * pairs + q) * NR + j`. Columns past
//!   `n` are zero.
//!
//! Both buffers start on a 64-byte boundary (when the allocator allows), so
//! the kernel's B vector loads do not split cache lines; the loads are
//! unaligned ones, so alignment is for speed only. The kernel computes an `MR x NR` tile of C in 24
//! zmm accumulators: per pair it loads the two B vectors of the panel and,
//! for each row, broadcasts the row's A word and issues two `vdpbf16ps`.
//! Edge tiles use fewer rows (a kernel per row count) and masked loads and
//! stores of C, so nothing outside the `m x n` window of C is touched.
//! There is no blocking along `k`: for the sizes this serves (`k` up to a
//! few hundred) a B panel (`k * NR * 2` bytes) stays in L1 while the A
//! panels stream from L2.
//!
//! # Numerics
//!
//! A product of two bf16 values is exact in f32, so the result equals the
//! product of the bf16-rounded operands up to f32 accumulation rounding,
//! whichever path runs (the order of the additions differs between them).
//! The native instruction treats bf16 subnormal inputs as zero and flushes
//! subnormal partial sums to zero (it ignores MXCSR); the portable path
//! does not. Values that small (below about 1e-38) do not occur in practice.
//!
//! The portable path widens the packed bf16 back to f32 and multiplies with
//! faer, so it computes exactly the same product of the same rounded
//! inputs.

// The kernel's raw pointer accesses and target-feature calls need `unsafe`;
// each block states why it is sound.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use faer::linalg::matmul::matmul;

use super::amx;
use faer::{Accum, MatMut, MatRef, Par};

/// Rows of A per panel, and rows of C per kernel tile.
const MR: usize = 12;
/// Columns of B per panel, and columns of C per kernel tile (two zmm).
pub(crate) const NR: usize = 32;

/// f32 -> bf16 bits, round to nearest even (NaN stays NaN).
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        // Keep the sign and the top of the payload; force a quiet NaN so the
        // truncated payload can not become zero (infinity).
        return ((bits >> 16) | 0x0040) as u16;
    }
    // Adding 0x7fff plus the lowest kept bit rounds half to even; a carry
    // into the exponent gives the next binade or infinity, as it should.
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// bf16 bits -> f32 (exact).
pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// Two f32 values rounded to bf16 and packed into one kernel word, `lo` in
/// the low half.
pub(crate) fn word(lo: f32, hi: f32) -> u32 {
    u32::from(to_bf16(lo)) | (u32::from(to_bf16(hi)) << 16)
}

/// `dst[j] = word(lo[j], hi[j])` over the shortest of the three: 16 words
/// per AVX-512 instruction sequence where [`native`], else one at a time.
/// (The kernels call its batched forms, [`words_each`] and [`words_blocks`].)
#[cfg(test)]
fn words(lo: &[f32], hi: &[f32], dst: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if native() {
        // SAFETY: `native()` checked that the CPU has AVX-512 F, BW and BF16.
        unsafe { x86::words(lo, hi, dst) };
        return;
    }
    words_scalar(lo, hi, dst);
}

/// `dst[q] = word(src[2q], src[2q + 1])` for every word of `dst`: pairs of
/// consecutive values, rounded to bf16 (a value past the end of `src`
/// counts as 0). 16 words per AVX-512 instruction sequence where
/// [`native`].
pub(crate) fn narrow(src: &[f32], dst: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if native() {
        // SAFETY: `native()` checked that the CPU has AVX-512 F, BW and BF16.
        unsafe { x86::narrow(src, dst) };
        return;
    }
    narrow_scalar(src, dst);
}

/// `dst[j * rows + i] = src[i * cols + j]` for the `rows x cols` words of
/// `src` (row-major): the transpose, 16 x 16 words per AVX-512 block where
/// [`native`] and both sides are multiples of 16.
///
/// # Panics
/// When `src` or `dst` holds fewer than `rows * cols` words.
pub(crate) fn transpose_words(src: &[u32], rows: usize, cols: usize, dst: &mut [u32]) {
    assert!(
        src.len() >= rows * cols && dst.len() >= rows * cols,
        "transpose_words: {rows} x {cols} words from {} into {}",
        src.len(),
        dst.len()
    );
    #[cfg(target_arch = "x86_64")]
    if native() && rows.is_multiple_of(16) && cols.is_multiple_of(16) {
        // SAFETY: `native()` checked the CPU features; the sizes were
        // checked above and are multiples of 16.
        unsafe { x86::transpose_words(src, rows, cols, dst) };
        return;
    }
    for i in 0..rows {
        for j in 0..cols {
            dst[j * rows + i] = src[i * cols + j];
        }
    }
}

/// The portable [`narrow`].
fn narrow_scalar(src: &[f32], dst: &mut [u32]) {
    let at = |i: usize| src.get(i).copied().unwrap_or(0.0);
    for (q, d) in dst.iter_mut().enumerate() {
        *d = word(at(2 * q), at(2 * q + 1));
    }
}

/// [`words`] for `n` runs of `run` values at once, run `i` from
/// `lo[src(i)..]` and `hi[src(i)..]` into `dst(i)`, where `src(i) = i *
/// stride` and `dst(i) = out[i][at..at + run]` (the 16 packed operands of
/// the Winograd GEMMs). One call instead of `n`: the loop runs inside the
/// AVX-512 code.
pub(crate) fn words_each(
    lo: &[f32],
    hi: &[f32],
    stride: usize,
    run: usize,
    out: &mut [&mut [u32]],
    at: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if native() {
        // SAFETY: `native()` checked that the CPU has AVX-512 F, BW and BF16.
        unsafe { x86::words_each(lo, hi, stride, run, out, at) };
        return;
    }
    each_run(lo, hi, stride, run, out, at, words_scalar);
}

/// The loop of [`words_each`], with `f` the one-run packer.
#[inline(always)]
fn each_run(
    lo: &[f32],
    hi: &[f32],
    stride: usize,
    run: usize,
    out: &mut [&mut [u32]],
    at: usize,
    mut f: impl FnMut(&[f32], &[f32], &mut [u32]),
) {
    for (i, d) in out.iter_mut().enumerate() {
        f(
            &lo[i * stride..][..run],
            &hi[i * stride..][..run],
            &mut d[at..at + run],
        );
    }
}

/// The loop of [`words_blocks`], with `f` the one-block packer.
#[inline(always)]
fn each_block(
    lo: &[f32],
    hi: &[f32],
    width: usize,
    dst: &mut [u32],
    dst_stride: usize,
    mut f: impl FnMut(&[f32], &[f32], &mut [u32]),
) {
    let blocks = lo.chunks_exact(width).zip(hi.chunks_exact(width));
    for (j, (l, h)) in blocks.enumerate() {
        f(l, h, &mut dst[j * dst_stride..][..width]);
    }
}

/// [`words`] for consecutive blocks of `width` values of `lo` and `hi`, block
/// `j` into `dst[j * dst_stride..][..width]` (one row of pairs across the
/// panels of a packed operand). One call instead of one per block.
pub(crate) fn words_blocks(
    lo: &[f32],
    hi: &[f32],
    width: usize,
    dst: &mut [u32],
    dst_stride: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if native() {
        // SAFETY: `native()` checked that the CPU has AVX-512 F, BW and BF16.
        unsafe { x86::words_blocks(lo, hi, width, dst, dst_stride) };
        return;
    }
    each_block(lo, hi, width, dst, dst_stride, words_scalar);
}

/// What [`words_finished`] applies to each value before rounding it: a
/// bias (one for the low channel, one for the high), then the ReLU when
/// `relu`: the operations of a forward pass's epilogue, in its order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Finish {
    /// Bias of the low channel.
    pub(crate) lo: f32,
    /// Bias of the high channel.
    pub(crate) hi: f32,
    pub(crate) relu: bool,
}

impl Finish {
    #[inline(always)]
    fn apply(v: f32, bias: f32, relu: bool) -> f32 {
        let v = v + bias;
        if relu {
            v.max(0.0)
        } else {
            v
        }
    }
}

/// `dst[j] = word(f(lo[j]), f(hi[j]))` for every word of `dst`, `f` the
/// bias and ReLU of `fin` (of its channel), a missing `hi` counting as
/// zero (no bias): a layer's output rows finished and packed as the next
/// layer's input words in one pass, the same words as [`words_blocks`]
/// gives for the finished f32 values.
///
/// # Panics
/// When `lo` or `hi` is shorter than `dst`.
pub(crate) fn words_finished(lo: &[f32], hi: Option<&[f32]>, fin: Finish, dst: &mut [u32]) {
    let n = dst.len();
    assert!(
        lo.len() >= n && hi.is_none_or(|h| h.len() >= n),
        "words_finished: short rows"
    );
    #[cfg(target_arch = "x86_64")]
    if native() {
        // SAFETY: `native()` checked that the CPU has AVX-512 F, BW and BF16;
        // the lengths were checked above.
        unsafe { x86::words_finished(lo, hi, fin, dst, None) };
        return;
    }
    finished_scalar(lo, hi, fin, |j, w| dst[j] = w, n);
}

/// As [`words_finished`] for `even.len() + odd.len()` words, word `j` to
/// `even[j / 2]` for even `j` and to `odd[j / 2]` for odd `j` (the two
/// column phases of a stride-2 convolution's input).
///
/// # Panics
/// Unless `even` holds `ceil(n / 2)` words and `odd` `floor(n / 2)` for
/// `n` values of `lo` and `hi`.
pub(crate) fn words_finished_split(
    lo: &[f32],
    hi: Option<&[f32]>,
    fin: Finish,
    even: &mut [u32],
    odd: &mut [u32],
) {
    let n = even.len() + odd.len();
    assert!(
        even.len() == n.div_ceil(2) && lo.len() >= n && hi.is_none_or(|h| h.len() >= n),
        "words_finished_split: rows of {} into {} even and {} odd words",
        lo.len(),
        even.len(),
        odd.len()
    );
    #[cfg(target_arch = "x86_64")]
    if native() {
        // SAFETY: as in `words_finished`; the lengths were checked above.
        unsafe { x86::words_finished(lo, hi, fin, even, Some(odd)) };
        return;
    }
    finished_scalar(
        lo,
        hi,
        fin,
        |j, w| {
            if j % 2 == 0 {
                even[j / 2] = w
            } else {
                odd[j / 2] = w
            }
        },
        n,
    );
}

/// The portable [`words_finished`]: word `j < n` to `put(j, word)`.
fn finished_scalar(
    lo: &[f32],
    hi: Option<&[f32]>,
    fin: Finish,
    mut put: impl FnMut(usize, u32),
    n: usize,
) {
    for j in 0..n {
        let a = Finish::apply(lo[j], fin.lo, fin.relu);
        let b = hi.map_or(0.0, |h| Finish::apply(h[j], fin.hi, fin.relu));
        let mut w = [0u32];
        words_scalar(&[a], &[b], &mut w);
        put(j, w[0]);
    }
}

/// The portable [`words`], branch-free so that it vectorises.
fn words_scalar(lo: &[f32], hi: &[f32], dst: &mut [u32]) {
    // As `to_bf16`, in the high half of a u32 (the low half is garbage).
    fn rounded(x: f32) -> u32 {
        let bits = x.to_bits();
        let r = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
        if x.is_nan() {
            bits | 0x0040_0000
        } else {
            r
        }
    }
    for ((d, &a), &b) in dst.iter_mut().zip(lo).zip(hi) {
        *d = (rounded(a) >> 16) | (rounded(b) & 0xffff_0000);
    }
}

/// Whether the native AVX-512 BF16 kernel runs on this CPU (detected once,
/// cached).
pub fn native() -> bool {
    static NATIVE: OnceLock<bool> = OnceLock::new();
    *NATIVE.get_or_init(detect)
}

/// Runtime detection behind [`native`]: the kernel needs AVX-512 F, BW (the
/// packing shuffles) and BF16.
#[cfg(target_arch = "x86_64")]
fn detect() -> bool {
    crate::kernels::simd::avx512f()
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16")
}

/// Runtime detection behind [`native`]: never on other architectures.
#[cfg(not(target_arch = "x86_64"))]
fn detect() -> bool {
    false
}

/// A 64-byte aligned, reusable buffer of packed words.
#[derive(Default)]
struct Words {
    /// Backing storage, over-allocated by up to 15 words for the alignment.
    buf: Vec<u32>,
    /// Index of the first used word in `buf` (64-byte aligned).
    start: usize,
    /// Number of used words.
    len: usize,
}

impl Words {
    /// Makes room for `len` words and returns them (contents unspecified:
    /// the caller writes every word). Reuses the allocation when it is large
    /// enough.
    fn resize(&mut self, len: usize) -> &mut [u32] {
        let needed = len + 15;
        if self.buf.len() < needed {
            self.buf = vec![0; needed];
        }
        self.start = self.buf.as_ptr().align_offset(64).min(15);
        self.len = len;
        &mut self.buf[self.start..self.start + len]
    }

    /// The used words.
    fn get(&self) -> &[u32] {
        &self.buf[self.start..self.start + self.len]
    }
}

/// A strided f32 source seen as `lines` lines of depth `k`: element
/// `(l, p)` is `data[l * ls + p * ps]`. The lines are A's rows or B's
/// columns.
#[derive(Clone, Copy)]
struct Source<'a> {
    /// The elements.
    data: &'a [f32],
    /// Number of lines (A's rows, B's columns).
    lines: usize,
    /// Depth (the GEMM's `k`).
    k: usize,
    /// Stride between lines.
    ls: usize,
    /// Stride along the depth.
    ps: usize,
}

impl Source<'_> {
    /// Panics unless every element lies inside `data` (the packers read
    /// through raw pointers relying on this).
    fn check(&self) {
        if self.lines > 0 && self.k > 0 {
            let last = (self.lines - 1)
                .checked_mul(self.ls)
                .and_then(|l| (self.k - 1).checked_mul(self.ps)?.checked_add(l))
                .expect("bf16 pack: strides overflow");
            assert!(
                last < self.data.len(),
                "bf16 pack: {} x {} with strides ({}, {}) needs more than {} elements",
                self.lines,
                self.k,
                self.ls,
                self.ps,
                self.data.len()
            );
        }
    }

    /// Element `(l, p)`, zero past the depth.
    fn at(&self, l: usize, p: usize) -> f32 {
        if p < self.k {
            self.data[l * self.ls + p * self.ps]
        } else {
            0.0
        }
    }
}

/// Packs `src` into panels of `w` lines (see the module doc) in `dst`, which
/// holds exactly `lines.div_ceil(w) * k.div_ceil(2) * w` words. Uses the
/// AVX-512 packers when [`native`] and the layout is one of the two common
/// ones, else [`pack_scalar`]; both give the same words.
fn pack(src: Source<'_>, w: usize, dst: &mut [u32]) {
    src.check();
    #[cfg(target_arch = "x86_64")]
    if native() && (src.ps == 1 || src.ls == 1) {
        // SAFETY: `native()` checked that the CPU has AVX-512 F, BW and BF16;
        // `check` above and the `dst` length (asserted inside) are what the
        // packer's raw accesses rely on.
        unsafe { x86::pack(src, w, dst) };
        return;
    }
    pack_scalar(src, w, dst);
}

/// Packs `src` in the AMX layout of a left operand (see [`amx`]) into
/// `dst`, of [`amx::padded_len`] words; the AVX-512 packer when [`native`]
/// and the lines or the depth are contiguous, else [`amx::pack_scalar`];
/// both give the same words.
fn pack_amx(src: Source<'_>, dst: &mut [u32]) {
    src.check();
    assert_eq!(
        dst.len(),
        amx::padded_len(src.lines, src.k),
        "bf16 pack_amx: wrong length"
    );
    #[cfg(target_arch = "x86_64")]
    if native() && (src.ps == 1 || src.ls == 1) {
        // SAFETY: `native()` checked AVX-512 F, BW and BF16; `check` and the
        // length assertion above are what the packer's raw accesses rely on.
        unsafe { x86::pack_amx(src, dst) };
        return;
    }
    amx::pack_scalar(|i, p| src.at(i, p), src.lines, src.k, dst);
}

/// Packs one panel of a right operand: `lines <= NR` columns of B, each
/// `k` contiguous values (`src[l * k + p]` is element `(p, l)`), into
/// `dst`, the `k.div_ceil(2) * NR` words of that panel; lines past `lines`
/// are zero. The same words as packing the whole operand at once.
pub(crate) fn pack_panel(src: &[f32], lines: usize, k: usize, dst: &mut [u32]) {
    assert!(lines <= NR, "bf16 pack_panel: {lines} lines > {NR}");
    let src = Source {
        data: src,
        lines,
        k,
        ls: k,
        ps: 1,
    };
    pack(src, NR, dst);
}

/// The portable packer behind [`pack`]: one word at a time, for any strides.
fn pack_scalar(src: Source<'_>, w: usize, dst: &mut [u32]) {
    let pairs = src.k.div_ceil(2);
    assert_eq!(dst.len(), src.lines.div_ceil(w) * pairs * w);
    if pairs == 0 {
        return;
    }
    for (panel, words) in dst.chunks_exact_mut(pairs * w).enumerate() {
        for (q, pair) in words.chunks_exact_mut(w).enumerate() {
            for (r, out) in pair.iter_mut().enumerate() {
                let l = panel * w + r;
                *out = if l < src.lines {
                    word(src.at(l, 2 * q), src.at(l, 2 * q + 1))
                } else {
                    0
                };
            }
        }
    }
}

/// Left operand, m x k, rounded to bf16 and packed for the kernel.
#[derive(Default)]
pub struct PackedA {
    /// Rows (`m`).
    m: usize,
    /// Depth (`k`).
    k: usize,
    /// Panels of [`MR`] rows (see the module doc), or the AMX layout.
    words: Words,
    /// Whether `words` holds the AMX layout (see [`amx`]) instead.
    amx: bool,
}

impl PackedA {
    /// Element (i, p) is `a[i * rs + p * cs]`.
    pub fn new(a: &[f32], m: usize, k: usize, rs: usize, cs: usize) -> Self {
        let mut packed = Self::default();
        packed.pack(a, m, k, rs, cs);
        packed
    }

    /// As [`PackedA::new`], reusing the allocation (for a left operand that
    /// changes per call, such as `dM` in the weight gradient).
    pub fn pack(&mut self, a: &[f32], m: usize, k: usize, rs: usize, cs: usize) {
        self.pack_as(a, m, k, rs, cs, amx::active());
    }

    /// As [`PackedA::pack`], in the AMX layout when `amx` (the layout the
    /// AMX kernel reads; any layout works with [`gemm_portable`]).
    pub(crate) fn pack_as(
        &mut self,
        a: &[f32],
        m: usize,
        k: usize,
        rs: usize,
        cs: usize,
        amx: bool,
    ) {
        let src = Source {
            data: a,
            lines: m,
            k,
            ls: rs,
            ps: cs,
        };
        if amx {
            pack_amx(src, self.words.resize(amx::padded_len(m, k)));
        } else {
            pack(
                src,
                MR,
                self.words.resize(m.div_ceil(MR) * k.div_ceil(2) * MR),
            );
        }
        self.m = m;
        self.k = k;
        self.amx = amx;
    }

    /// The word of row `i` and pair `q`.
    fn word_at(&self, i: usize, q: usize) -> u32 {
        let w = self.words.get();
        if self.amx {
            w[i * amx::padded_pairs(self.k) + q]
        } else {
            w[((i / MR) * self.k.div_ceil(2) + q) * MR + i % MR]
        }
    }

    /// Rows (`m`).
    #[cfg(test)]
    pub fn rows(&self) -> usize {
        self.m
    }

    /// Depth (`k`).
    #[cfg(test)]
    pub fn depth(&self) -> usize {
        self.k
    }
}

/// Right operand, k x n, rounded to bf16 and packed for the kernel.
#[derive(Default)]
pub struct PackedB {
    /// Depth (`k`).
    k: usize,
    /// Columns (`n`).
    n: usize,
    /// Panels of [`NR`] columns, see the module doc.
    words: Words,
}

impl PackedB {
    /// Element (p, j) is `b[p * rs + j * cs]`; reuses the allocation.
    pub fn pack(&mut self, b: &[f32], k: usize, n: usize, rs: usize, cs: usize) {
        let dst = self.words.resize(n.div_ceil(NR) * k.div_ceil(2) * NR);
        let src = Source {
            data: b,
            lines: n,
            k,
            ls: cs,
            ps: rs,
        };
        pack(src, NR, dst);
        self.k = k;
        self.n = n;
    }

    /// Sets the shape to `k x n` and returns the words for the caller to
    /// fill in the layout of the module doc, every one of them: the zero
    /// padding too (columns past `n` in the last panel, and the high halves
    /// of the last pair when `k` is odd). Reuses the allocation.
    pub(crate) fn words_mut(&mut self, k: usize, n: usize) -> &mut [u32] {
        self.k = k;
        self.n = n;
        self.words.resize(n.div_ceil(NR) * k.div_ceil(2) * NR)
    }

    /// The packed words.
    #[cfg(test)]
    pub(crate) fn raw(&self) -> &[u32] {
        self.words.get()
    }

    /// Depth (`k`).
    #[cfg(test)]
    pub fn depth(&self) -> usize {
        self.k
    }

    /// Columns (`n`).
    #[cfg(test)]
    pub fn cols(&self) -> usize {
        self.n
    }
}

/// Checks the operand and output sizes shared by both paths; returns
/// `(m, n)`.
fn check_gemm(c: &[f32], ldc: usize, a: &PackedA, b: &PackedB) -> (usize, usize) {
    assert_eq!(a.k, b.k, "bf16 gemm: depth of A and B differ");
    let (m, n) = (a.m, b.n);
    if m > 0 && n > 0 {
        assert!(ldc >= n, "bf16 gemm: ldc {ldc} < n {n}");
        let needed = (m - 1).checked_mul(ldc).and_then(|x| x.checked_add(n));
        assert!(
            needed.is_some_and(|needed| c.len() >= needed),
            "bf16 gemm: C has {} elements, {m} x {n} with ldc {ldc} needs more",
            c.len()
        );
    }
    (m, n)
}

/// `c` (row-major m x n, row stride `ldc`) = A·B, or += A·B when `accumulate`.
/// Single-threaded (the caller parallelises). Panics on mismatched sizes
/// (these are internal invariants).
pub fn gemm(c: &mut [f32], ldc: usize, a: &PackedA, b: &PackedB, accumulate: bool) {
    let (m, n) = check_gemm(c, ldc, a, b);
    if m == 0 || n == 0 {
        return;
    }
    if a.amx {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        if amx::active() {
            let (aw, bw) = (a.words.get(), b.words.get());
            // SAFETY: the AMX path is active; the operands were packed with
            // the lengths the kernel expects and `check_gemm` checked C.
            unsafe { amx::gemm_hardware(c, ldc, aw, m, bw, n, a.k, accumulate) };
            return;
        }
        gemm_portable(c, ldc, a, b, accumulate);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if native() {
        // SAFETY: `native()` checked that the CPU has AVX-512 F, BW and BF16;
        // `check_gemm` checked the sizes the kernel's raw accesses rely on.
        unsafe { x86::gemm(c, ldc, a, b, accumulate) };
        return;
    }
    gemm_portable(c, ldc, a, b, accumulate);
}

/// The kernel [`gemm`] runs on this CPU: `"amx-bf16"` (AMX tiles),
/// `"avx512-bf16"` (`vdpbf16ps`) or `"portable-bf16"` (bf16-rounded operands
/// multiplied in f32).
pub fn kernel_name() -> &'static str {
    if amx::active() {
        "amx-bf16"
    } else if native() {
        "avx512-bf16"
    } else {
        "portable-bf16"
    }
}

/// As [`gemm`], always on the portable path: widens the packed operands to
/// f32 and multiplies with faer. Allocates `(m + n) * k` f32 per call.
pub fn gemm_portable(c: &mut [f32], ldc: usize, a: &PackedA, b: &PackedB, accumulate: bool) {
    let (m, n) = check_gemm(c, ldc, a, b);
    if m == 0 || n == 0 {
        return;
    }
    let k = a.k;
    let pairs = k.div_ceil(2);
    let half = |w: u32, p: usize| {
        from_bf16(if p.is_multiple_of(2) {
            w as u16
        } else {
            (w >> 16) as u16
        })
    };
    // Row-major m x k and k x n copies of the rounded operands.
    let bw = b.words.get();
    let mut af = vec![0f32; m * k];
    for (i, row) in af.chunks_exact_mut(k.max(1)).enumerate() {
        for (p, x) in row.iter_mut().enumerate().take(k) {
            *x = half(a.word_at(i, p / 2), p);
        }
    }
    let mut bf = vec![0f32; k * n];
    for (p, row) in bf.chunks_exact_mut(n).enumerate() {
        for (j, x) in row.iter_mut().enumerate() {
            *x = half(bw[((j / NR) * pairs + p / 2) * NR + j % NR], p);
        }
    }
    // The transpose of a column-major view: faer 0.24.4's
    // `from_row_major_slice_with_stride_mut` builds a column-major view
    // (sarah-quinones/faer-rs#267).
    let dst =
        MatMut::from_column_major_slice_with_stride_mut(&mut c[..(m - 1) * ldc + n], n, m, ldc)
            .transpose_mut();
    let accum = if accumulate {
        Accum::Add
    } else {
        Accum::Replace
    };
    matmul(
        dst,
        accum,
        MatRef::from_row_major_slice(&af, m, k),
        MatRef::from_row_major_slice(&bf, k, n),
        1.0,
        Par::Seq,
    );
}

/// The AVX-512 kernel and packers.
///
/// The AVX-512 intrinsics and types (`__m512bh`, `__mmask16`, ...) are
/// stable since Rust 1.89, the workspace's `rust-version`.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    use super::{PackedA, PackedB, Source, MR, NR};

    /// A vector of 32-bit words seen as 32 bf16 values.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn bh(v: __m512i) -> __m512bh {
        // SAFETY: both are 64-byte plain SIMD vectors; every bit pattern is
        // valid for either.
        unsafe { core::mem::transmute::<__m512i, __m512bh>(v) }
    }

    /// 32 bf16 values seen as a vector of 32-bit words.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn bits(v: __m512bh) -> __m512i {
        // SAFETY: both are 64-byte plain SIMD vectors; every bit pattern is
        // valid for either.
        unsafe { core::mem::transmute::<__m512bh, __m512i>(v) }
    }

    /// Mask of the first `n` (clamped to 16) lanes.
    #[inline]
    fn lanes(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// `C[0..R, 0..cols] (+)= A_panel · B_panel` for one tile.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and BF16. `a` points at an A panel (stride
    /// [`MR`] words per pair) and `b` at a B panel ([`NR`] words per pair),
    /// each with `pairs` pairs. `mask[h]` selects the
    /// valid columns of the half `16h..16h+16` (the first `cols` of the
    /// tile, so `mask[1] != 0` implies `mask[0]` is full); for `r < R`, the
    /// selected elements `c + r * ldc + 16h + t` lie inside one writable
    /// slice.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    unsafe fn tile<const R: usize>(
        pairs: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        mask: [__mmask16; 2],
        accumulate: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for q in 0..pairs {
            // SAFETY: the NR = 32 words of pair `q < pairs` of the B panel.
            let (b0, b1) = unsafe {
                let p = b.add(q * NR);
                (
                    bh(_mm512_loadu_si512(p.cast())),
                    bh(_mm512_loadu_si512(p.add(16).cast())),
                )
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row `r < R <= MR` of pair `q` of the A panel.
                let w = unsafe { a.add(q * MR + r).read() };
                let av = bh(_mm512_set1_epi32(w as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for h in 0..2 {
                if mask[h] == 0 {
                    continue;
                }
                let p = c.wrapping_add(r * ldc + 16 * h);
                let mut v = acc[h];
                // SAFETY: only the lanes in `mask[h]` are read or written,
                // and those lie in C (the caller's contract).
                unsafe {
                    if accumulate {
                        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask[h], p));
                    }
                    _mm512_mask_storeu_ps(p, mask[h], v);
                }
            }
        }
    }

    /// The native [`super::gemm`]: B panels outer (each stays in L1), A
    /// panels inner.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and BF16, and `super::check_gemm` passed
    /// for these arguments.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    pub(super) unsafe fn gemm(
        c: &mut [f32],
        ldc: usize,
        a: &PackedA,
        b: &PackedB,
        accumulate: bool,
    ) {
        let (m, n, pairs) = (a.m, b.n, a.k.div_ceil(2));
        let (aw, bw) = (a.words.get(), b.words.get());
        debug_assert_eq!(aw.len(), m.div_ceil(MR) * pairs * MR);
        debug_assert_eq!(bw.len(), n.div_ceil(NR) * pairs * NR);
        let cp = c.as_mut_ptr();
        for (jp, j0) in (0..n).step_by(NR).enumerate() {
            let cols = NR.min(n - j0);
            let mask = [lanes(cols), lanes(cols.saturating_sub(16))];
            let bpan = bw[jp * pairs * NR..].as_ptr();
            for (ip, i0) in (0..m).step_by(MR).enumerate() {
                let rows = MR.min(m - i0);
                let apan = aw[ip * pairs * MR..].as_ptr();
                let ct = cp.wrapping_add(i0 * ldc + j0);
                // SAFETY: the panels hold `pairs` pairs each (lengths above);
                // the tile covers rows `i0..i0 + rows <= m` and columns
                // `j0..j0 + cols <= n`, inside C as `check_gemm` verified.
                unsafe { tile_for(rows)(pairs, apan, bpan, ct, ldc, mask, accumulate) };
            }
        }
    }

    /// The signature of [`tile`].
    type Tile = unsafe fn(usize, *const u32, *const u32, *mut f32, usize, [__mmask16; 2], bool);

    /// The tile kernel for `rows` rows of C (`1..=MR`).
    fn tile_for(rows: usize) -> Tile {
        const { assert!(MR <= 12, "tile_for lists kernels for up to 12 rows") };
        match rows {
            1 => tile::<1>,
            2 => tile::<2>,
            3 => tile::<3>,
            4 => tile::<4>,
            5 => tile::<5>,
            6 => tile::<6>,
            7 => tile::<7>,
            8 => tile::<8>,
            9 => tile::<9>,
            10 => tile::<10>,
            11 => tile::<11>,
            12 => tile::<12>,
            _ => unreachable!("a tile has 1..=MR rows"),
        }
    }

    /// 16 f32 rounded to bf16 (nearest even, NaN kept), in the high halves of
    /// the 32-bit lanes (the low halves are garbage).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn round(x: __m512) -> __m512i {
        let bits = _mm512_castps_si512(x);
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
        let r = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), odd);
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        _mm512_mask_or_epi32(r, nan, bits, _mm512_set1_epi32(0x0040_0000))
    }

    /// Transposes a 16 x 16 matrix of 32-bit words in place (`m[i]` is row
    /// `i`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose16(m: &mut [__m512i; 16]) {
        // Within each 128-bit lane L: t pairs rows (2i, 2i+1), u groups rows
        // 4g..4g+3, so u[4g + c] lane L holds rows 4g..4g+3 of column 4L+c.
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(m[2 * i], m[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(m[2 * i], m[2 * i + 1]);
        }
        let mut u = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            let (t0, t1, t2, t3) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
            u[4 * g] = _mm512_unpacklo_epi64(t0, t2);
            u[4 * g + 1] = _mm512_unpackhi_epi64(t0, t2);
            u[4 * g + 2] = _mm512_unpacklo_epi64(t1, t3);
            u[4 * g + 3] = _mm512_unpackhi_epi64(t1, t3);
        }
        // Gather the four row groups' 128-bit lanes: column 4L + c.
        for c in 0..4 {
            let v88 = _mm512_shuffle_i32x4::<0x88>(u[c], u[4 + c]);
            let vdd = _mm512_shuffle_i32x4::<0xdd>(u[c], u[4 + c]);
            let w88 = _mm512_shuffle_i32x4::<0x88>(u[8 + c], u[12 + c]);
            let wdd = _mm512_shuffle_i32x4::<0xdd>(u[8 + c], u[12 + c]);
            m[c] = _mm512_shuffle_i32x4::<0x88>(v88, w88);
            m[4 + c] = _mm512_shuffle_i32x4::<0x88>(vdd, wdd);
            m[8 + c] = _mm512_shuffle_i32x4::<0xdd>(v88, w88);
            m[12 + c] = _mm512_shuffle_i32x4::<0xdd>(vdd, wdd);
        }
    }

    /// The native [`super::pack`] for `src.ps == 1` (lines contiguous: A
    /// row-major, B transposed) or `src.ls == 1` (A column-major, B
    /// row-major). Gives the same words as [`super::pack_scalar`].
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW, `src.check()` passed, and `src.ps == 1`
    /// or `src.ls == 1`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn pack(src: Source<'_>, w: usize, dst: &mut [u32]) {
        let pairs = src.k.div_ceil(2);
        assert_eq!(dst.len(), src.lines.div_ceil(w) * pairs * w);
        if pairs == 0 {
            return;
        }
        // SAFETY: forwarded from the caller.
        unsafe {
            if src.ps == 1 {
                pack_lines(src, w, dst);
            } else {
                pack_rows(src, w, dst);
            }
        }
    }

    /// Masked load of the lanes of `mask` from `p`.
    ///
    /// # Safety
    /// The selected lanes `p + t` lie inside one readable slice.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(mask: __mmask16, p: *const f32) -> __m512 {
        if mask == 0 {
            return _mm512_setzero_ps();
        }
        // SAFETY: forwarded from the caller.
        unsafe { _mm512_maskz_loadu_ps(mask, p) }
    }

    /// Masked store of the lanes of `mask` to `p`.
    ///
    /// # Safety
    /// The selected lanes `p + t` lie inside one writable slice.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(mask: __mmask16, p: *mut u32, v: __m512i) {
        if mask != 0 {
            // SAFETY: forwarded from the caller.
            unsafe { _mm512_mask_storeu_epi32(p.cast(), mask, v) };
        }
    }

    /// The native [`super::words_each`]: rounded by `vcvtne2ps2bf16` (which
    /// flushes subnormal inputs to zero: they count as zero in the
    /// products anyway, as the native kernels treat bf16 subnormals).
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn words_each(
        lo: &[f32],
        hi: &[f32],
        stride: usize,
        run: usize,
        out: &mut [&mut [u32]],
        at: usize,
    ) {
        super::each_run(lo, hi, stride, run, out, at, |l, h, d| {
            // SAFETY: the caller's contract (the CPU features).
            unsafe { words(l, h, d) }
        });
    }

    /// The native [`super::words_blocks`]: rounded by `vcvtne2ps2bf16` (which
    /// flushes subnormal inputs to zero: they count as zero in the
    /// products anyway, as the native kernels treat bf16 subnormals).
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn words_blocks(
        lo: &[f32],
        hi: &[f32],
        width: usize,
        dst: &mut [u32],
        dst_stride: usize,
    ) {
        super::each_block(lo, hi, width, dst, dst_stride, |l, h, d| {
            // SAFETY: the caller's contract (the CPU features).
            unsafe { words(l, h, d) }
        });
    }

    /// The native [`super::narrow`]: rounded by `vcvtne2ps2bf16` (which
    /// flushes subnormal inputs to zero: they count as zero in the
    /// products anyway, as the native kernels treat bf16 subnormals).
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn narrow(src: &[f32], dst: &mut [u32]) {
        let (n, len) = (dst.len(), src.len());
        for q0 in (0..n).step_by(16) {
            let p0 = 2 * q0;
            let (m0, m1) = (
                lanes(len.saturating_sub(p0)),
                lanes(len.saturating_sub(p0 + 16)),
            );
            // SAFETY: the loads read values `p0 + lane < len` of `src`, the
            // store words `q0 + lane < n` of `dst`.
            unsafe {
                let x0 = load(m0, src.as_ptr().wrapping_add(p0));
                let x1 = load(m1, src.as_ptr().wrapping_add(p0 + 16));
                // bf16 values 0..16 from `x0`, 16..32 from `x1`: in order,
                // so word `q` is the pair `(2q, 2q + 1)`.
                let v = bits(_mm512_cvtne2ps_pbh(x1, x0));
                store(lanes(n - q0), dst.as_mut_ptr().add(q0), v);
            }
        }
    }

    /// The native [`super::transpose_words`].
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `rows` and `cols` are multiples of 16 and
    /// `src`, `dst` hold at least `rows * cols` words.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_words(src: &[u32], rows: usize, cols: usize, dst: &mut [u32]) {
        let mut m = [_mm512_setzero_si512(); 16];
        for i0 in (0..rows).step_by(16) {
            for j0 in (0..cols).step_by(16) {
                // SAFETY: rows `i0..i0 + 16 <= rows` of `src`, words `j0..j0
                // + 16 <= cols` of each; the stores write rows `j0..j0 + 16
                // <= cols` of `dst`, words `i0..i0 + 16 <= rows` of each.
                unsafe {
                    for (r, v) in m.iter_mut().enumerate() {
                        *v = _mm512_loadu_si512(src.as_ptr().add((i0 + r) * cols + j0).cast());
                    }
                    transpose16(&mut m);
                    for (c, v) in m.iter().enumerate() {
                        _mm512_storeu_si512(dst.as_mut_ptr().add((j0 + c) * rows + i0).cast(), *v);
                    }
                }
            }
        }
    }

    /// The native [`super::words`]: rounded by `vcvtne2ps2bf16` (which
    /// flushes subnormal inputs to zero: they count as zero in the
    /// products anyway, as the native kernels treat bf16 subnormals).
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and BF16.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn words(lo: &[f32], hi: &[f32], dst: &mut [u32]) {
        let n = dst.len().min(lo.len()).min(hi.len());
        // bf16 value `j` of `lo` (at 16-bit index j) next to value `j` of
        // `hi` (at 16 + j).
        let pairs = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        for j in (0..n).step_by(16) {
            let m = lanes(n - j);
            // SAFETY: the lanes of `m` are indices `j..n`, inside all three.
            unsafe {
                let (a, b) = (load(m, lo.as_ptr().add(j)), load(m, hi.as_ptr().add(j)));
                let v = _mm512_permutexvar_epi16(pairs, bits(_mm512_cvtne2ps_pbh(b, a)));
                store(m, dst.as_mut_ptr().add(j), v);
            }
        }
    }

    /// The native [`super::words_finished`] (`odd` `None`) and
    /// [`super::words_finished_split`] (`dst` the even words): 32 values at
    /// a time, finished (`vaddps`, `vmaxps` against zero: a NaN becomes 0,
    /// as `f32::max` makes it), rounded by `vcvtne2ps2bf16` and paired;
    /// with `odd`, the two vectors of words are split into their even and
    /// odd words by one `vpermt2d` each.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and BF16; the caller checked the lengths
    /// ([`super::words_finished`], [`super::words_finished_split`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn words_finished(
        lo: &[f32],
        hi: Option<&[f32]>,
        fin: super::Finish,
        dst: &mut [u32],
        odd: Option<&mut [u32]>,
    ) {
        let n = dst.len() + odd.as_ref().map_or(0, |o| o.len());
        let pairs = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        let (bl, bh, zero) = (
            _mm512_set1_ps(fin.lo),
            _mm512_set1_ps(fin.hi),
            _mm512_setzero_ps(),
        );
        // SAFETY (closure): the lanes of `m` are indices `j..n`, inside `lo`
        // and `hi`.
        let word = |j: usize, m: __mmask16| unsafe {
            let mut a = _mm512_add_ps(load(m, lo.as_ptr().add(j)), bl);
            let mut b = match hi {
                Some(h) => _mm512_add_ps(load(m, h.as_ptr().add(j)), bh),
                None => zero,
            };
            if fin.relu {
                a = _mm512_max_ps(a, zero);
                b = _mm512_max_ps(b, zero);
            }
            if hi.is_none() {
                b = zero;
            }
            _mm512_permutexvar_epi16(pairs, bits(_mm512_cvtne2ps_pbh(b, a)))
        };
        let Some(odd) = odd else {
            for j in (0..n).step_by(16) {
                // SAFETY: lanes `j..n` of `dst`.
                unsafe { store(lanes(n - j), dst.as_mut_ptr().add(j), word(j, lanes(n - j))) };
            }
            return;
        };
        let evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        let odds = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
        for j in (0..n).step_by(32) {
            let left = n - j;
            let (w0, w1) = (
                word(j, lanes(left)),
                word(j + 16, lanes(left.saturating_sub(16))),
            );
            let (e, o) = (
                _mm512_permutex2var_epi32(w0, evens, w1),
                _mm512_permutex2var_epi32(w0, odds, w1),
            );
            // SAFETY: words `j / 2..` of the even (`ceil(left / 2)` of them
            // left) and odd (`floor(left / 2)`) halves.
            unsafe {
                store(lanes(left.div_ceil(2)), dst.as_mut_ptr().add(j / 2), e);
                store(lanes(left / 2), odd.as_mut_ptr().add(j / 2), o);
            }
        }
    }

    /// The native [`super::pack_amx`]: rows of `ppad` words, the padding
    /// zero. With contiguous lines (`src.ps == 1`) each row is rounded and
    /// narrowed 32 values at a time; with contiguous depth rows
    /// (`src.ls == 1`) 16 lines x 16 pairs are built pair by pair and
    /// transposed.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW, `src.check()` passed, `src.ps == 1` or
    /// `src.ls == 1`, and `dst` holds `amx::padded_len(lines, k)` words.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn pack_amx(src: Source<'_>, dst: &mut [u32]) {
        let ppad = super::amx::padded_pairs(src.k);
        if ppad == 0 {
            return;
        }
        let rows = dst.len() / ppad;
        let (data, out) = (src.data.as_ptr(), dst.as_mut_ptr());
        let hi = _mm512_set1_epi32(0xffff_0000u32 as i32);
        if src.ps == 1 {
            let odd_halves = _mm512_set_epi16(
                63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27, 25, 23,
                21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1,
            );
            for i in 0..rows {
                let line = data.wrapping_add(i * src.ls);
                for q0 in (0..ppad).step_by(16) {
                    let p0 = 2 * q0;
                    let depth = if i < src.lines {
                        src.k.saturating_sub(p0)
                    } else {
                        0
                    };
                    let (m0, m1) = (lanes(depth), lanes(depth.saturating_sub(16)));
                    // SAFETY: only depths `p0 + lane < k` of a line `i < lines`
                    // are read (inside `data` by `src.check()`); the 16 words
                    // written are pairs `q0..q0 + 16 <= ppad` of row `i < rows`.
                    unsafe {
                        let (x0, x1) = (
                            load(m0, line.wrapping_add(p0)),
                            load(m1, line.wrapping_add(p0 + 16)),
                        );
                        let v = _mm512_permutex2var_epi16(round(x0), odd_halves, round(x1));
                        _mm512_storeu_si512(out.add(i * ppad + q0).cast(), v);
                    }
                }
            }
        } else {
            let mut block = [_mm512_setzero_si512(); 16];
            for i0 in (0..rows).step_by(16) {
                let valid = lanes(src.lines.saturating_sub(i0));
                for q0 in (0..ppad).step_by(16) {
                    for (u, words) in block.iter_mut().enumerate() {
                        let (p0, p1) = (2 * (q0 + u), 2 * (q0 + u) + 1);
                        let m0 = if p0 < src.k { valid } else { 0 };
                        let m1 = if p1 < src.k { valid } else { 0 };
                        // SAFETY: lanes of `valid` are lines `i0 + t < lines`
                        // at depths below `k`: inside `data` by `src.check()`.
                        let (x0, x1) = unsafe {
                            (
                                load(m0, data.wrapping_add(p0 * src.ps + i0)),
                                load(m1, data.wrapping_add(p1 * src.ps + i0)),
                            )
                        };
                        *words = _mm512_or_si512(
                            _mm512_srli_epi32::<16>(round(x0)),
                            _mm512_and_si512(round(x1), hi),
                        );
                    }
                    transpose16(&mut block);
                    for (t, v) in block.iter().enumerate() {
                        // SAFETY: pairs `q0..q0 + 16 <= ppad` of row
                        // `i0 + t < rows` (rows is a multiple of 32).
                        unsafe { _mm512_storeu_si512(out.add((i0 + t) * ppad + q0).cast(), *v) };
                    }
                }
            }
        }
    }

    /// Packs a source whose depth rows are contiguous across lines
    /// (`src.ls == 1`): per pair, two masked loads of `w` line values per 16
    /// lines, interleaved into words without shuffles.
    ///
    /// # Safety
    /// As [`pack`], with `src.ls == 1` and `dst` of the packed length.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn pack_rows(src: Source<'_>, w: usize, dst: &mut [u32]) {
        let pairs = src.k.div_ceil(2);
        let hi = _mm512_set1_epi32(0xffff_0000u32 as i32);
        let (data, out) = (src.data.as_ptr(), dst.as_mut_ptr());
        for (panel, l0) in (0..src.lines).step_by(w).enumerate() {
            for q in 0..pairs {
                let (p0, p1) = (2 * q, 2 * q + 1);
                for s in (0..w).step_by(16) {
                    let sw = (w - s).min(16);
                    let valid = lanes((src.lines - l0).saturating_sub(s).min(sw));
                    let odd = if p1 < src.k { valid } else { 0 };
                    // SAFETY: lanes `t` of `valid` are lines
                    // `l0 + s + t < lines`, at depth `p0 < k` (and `p1 < k`
                    // for `odd`): inside `data` by `src.check()`.
                    let (x0, x1) = unsafe {
                        (
                            load(valid, data.wrapping_add(p0 * src.ps + l0 + s)),
                            load(odd, data.wrapping_add(p1 * src.ps + l0 + s)),
                        )
                    };
                    let v = _mm512_or_si512(
                        _mm512_srli_epi32::<16>(round(x0)),
                        _mm512_and_si512(round(x1), hi),
                    );
                    // SAFETY: words `s..s + sw` of pair `q` of the panel,
                    // inside `dst` (its length is asserted in `pack`).
                    unsafe { store(lanes(sw), out.add((panel * pairs + q) * w + s), v) };
                }
            }
        }
    }

    /// Packs a source whose lines are contiguous along the depth
    /// (`src.ps == 1`): blocks of 16 lines x 16 pairs are loaded line by
    /// line, rounded, narrowed to 16 words per line and transposed.
    ///
    /// # Safety
    /// As [`pack`], with `src.ps == 1` and `dst` of the packed length.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn pack_lines(src: Source<'_>, w: usize, dst: &mut [u32]) {
        let pairs = src.k.div_ceil(2);
        // u16 index 2t + 1 (t < 32) of the pair (lo, hi): the bf16 halves.
        let odd_halves = _mm512_set_epi16(
            63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27, 25, 23, 21,
            19, 17, 15, 13, 11, 9, 7, 5, 3, 1,
        );
        let (data, out) = (src.data.as_ptr(), dst.as_mut_ptr());
        let mut block = [_mm512_setzero_si512(); 16];
        for (panel, l0) in (0..src.lines).step_by(w).enumerate() {
            for s in (0..w).step_by(16) {
                let sw = (w - s).min(16);
                let live = (src.lines - l0).saturating_sub(s).min(sw);
                for q0 in (0..pairs).step_by(16) {
                    let p0 = 2 * q0;
                    let depth = src.k - p0;
                    let (m0, m1) = (lanes(depth), lanes(depth.saturating_sub(16)));
                    for (t, row) in block.iter_mut().enumerate() {
                        *row = if t < live {
                            let line = data.wrapping_add((l0 + s + t) * src.ls + p0);
                            // SAFETY: line `l0 + s + t < lines`, depths
                            // `p0 + lane < k` only: inside `data` by
                            // `src.check()`.
                            let (x0, x1) =
                                unsafe { (load(m0, line), load(m1, line.wrapping_add(16))) };
                            _mm512_permutex2var_epi16(round(x0), odd_halves, round(x1))
                        } else {
                            _mm512_setzero_si512()
                        };
                    }
                    transpose16(&mut block);
                    for (u, v) in block.iter().enumerate().take(pairs - q0) {
                        // SAFETY: words `s..s + sw` of pair `q0 + u < pairs`
                        // of the panel, inside `dst` (length asserted in
                        // `pack`).
                        unsafe { store(lanes(sw), out.add((panel * pairs + q0 + u) * w + s), *v) };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::amx::tests::values;
    use super::*;

    fn r(x: f32) -> f64 {
        f64::from(from_bf16(to_bf16(x)))
    }

    #[test]
    fn transpose_words_is_the_transpose() {
        // Multiples of 16 (the AVX-512 blocks where the CPU has them) and
        // odd sizes (the portable loop).
        for (rows, cols) in [(32, 48), (16, 16), (5, 7), (1, 33)] {
            let src: Vec<u32> = (0..rows * cols)
                .map(|i| (i as u32).wrapping_mul(2_654_435_761))
                .collect();
            let mut dst = vec![0u32; rows * cols];
            transpose_words(&src, rows, cols, &mut dst);
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(
                        dst[j * rows + i],
                        src[i * cols + j],
                        "{rows}x{cols} at ({i}, {j})"
                    );
                }
            }
        }
    }

    #[test]
    fn narrow_matches_the_scalar_words() {
        let src: Vec<f32> = (0..77)
            .map(|i| (i as f32 * 0.731).sin() * 3.0 + 1e-3)
            .collect();
        for (len, n) in [(77, 39), (77, 30), (64, 32), (5, 16), (0, 3)] {
            let mut got = vec![0xdead_beef; n];
            narrow(&src[..len], &mut got);
            let mut want = vec![0xdead_beef; n];
            narrow_scalar(&src[..len], &mut want);
            assert_eq!(got, want, "{len} values into {n} words");
            for (q, &w) in want.iter().enumerate() {
                let at = |i: usize| if i < len { src[i] } else { 0.0 };
                assert_eq!(w, word(at(2 * q), at(2 * q + 1)));
            }
        }
    }

    #[test]
    fn to_bf16_exact_cases() {
        let cases: [(f32, u16); 12] = [
            (1.0, 0x3f80),
            (-2.5, 0xc020),
            (0.0, 0x0000),
            (-0.0, 0x8000),
            (f32::INFINITY, 0x7f80),
            (f32::NEG_INFINITY, 0xff80),
            // Ties to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
            (1.0 + 2f32.powi(-8), 0x3f80),
            (1.0 + 3.0 * 2f32.powi(-8), 0x3f82),
            (-(1.0 + 3.0 * 2f32.powi(-8)), 0xbf82),
            // Just above the tie rounds up.
            (f32::from_bits(0x3f80_8001), 0x3f81),
            // Largest finite bf16 stays; f32::MAX is past the halfway point
            // to 2^128 and rounds to infinity.
            (from_bf16(0x7f7f), 0x7f7f),
            (f32::MAX, 0x7f80),
        ];
        for (x, want) in cases {
            assert_eq!(to_bf16(x), want, "{x:e}");
        }
        // Just below the overflow halfway point stays finite.
        assert_eq!(to_bf16(f32::from_bits(0x7f7f_7fff)), 0x7f7f);
        assert_eq!(to_bf16(f32::from_bits(0x7f7f_8000)), 0x7f80);
        // Subnormals round like any other value; the smallest f32
        // subnormal rounds to zero, a bf16 subnormal stays.
        assert_eq!(to_bf16(f32::from_bits(0x0000_0001)), 0x0000);
        assert_eq!(to_bf16(f32::from_bits(0x0001_0000)), 0x0001);
        assert_eq!(to_bf16(f32::from_bits(0x0001_8000)), 0x0002);
        assert_eq!(to_bf16(f32::from_bits(0x8000_8001)), 0x8001);
        // Largest subnormal rounds up into the smallest normal.
        assert_eq!(to_bf16(f32::from_bits(0x007f_ffff)), 0x0080);
        for b in [0x0000u16, 0x3f80, 0xc020, 0x7f7f, 0x0001, 0x8080, 0x7f80] {
            assert_eq!(to_bf16(from_bf16(b)), b);
        }
        for bits in [
            0x7fc0_0000u32,
            0x7f80_0001,
            0xff80_0001,
            0x7fff_ffff,
            0xffff_ffff,
        ] {
            let b = to_bf16(f32::from_bits(bits));
            assert!(from_bf16(b).is_nan(), "{bits:#x} -> {b:#x}");
            assert_eq!(b & 0x8000, (bits >> 16) as u16 & 0x8000, "sign");
        }
    }

    /// Packs with the dispatching packer and with the scalar one; they must
    /// give the same words.
    fn pack_both(src: Source<'_>, w: usize) -> Vec<u32> {
        let len = src.lines.div_ceil(w) * src.k.div_ceil(2) * w;
        let (mut fast, mut slow) = (vec![0xdead_beef; len], vec![0xdead_beef; len]);
        pack(src, w, &mut fast);
        pack_scalar(src, w, &mut slow);
        assert_eq!(fast, slow, "packers differ");
        slow
    }

    /// Both `words` paths give the words of `word` for every length (full
    /// vectors and masked tails), with infinities, NaNs, ties and negative
    /// zero among the values.
    #[test]
    fn words_paths_agree_with_word() {
        let mut lo = values(41, 7);
        let mut hi = values(41, 8);
        lo[3] = f32::NAN;
        hi[5] = -f32::NAN;
        lo[17] = f32::INFINITY;
        hi[17] = f32::NEG_INFINITY;
        lo[20] = 1.0 + 2f32.powi(-8);
        hi[33] = -0.0;
        for n in 0..=41 {
            let want: Vec<u32> = (0..n).map(|j| word(lo[j], hi[j])).collect();
            let mut got = vec![0xdead_beef; n + 3];
            words(&lo[..n], &hi[..n], &mut got);
            assert_eq!(&got[..n], &want[..], "dispatch, n = {n}");
            assert!(
                got[n..].iter().all(|&w| w == 0xdead_beef),
                "wrote past n = {n}"
            );
            let mut scalar = vec![0; n];
            words_scalar(&lo[..n], &hi[..n], &mut scalar);
            assert_eq!(scalar, want, "portable, n = {n}");
        }
    }

    /// `words_finished` and `words_finished_split`, native and portable,
    /// give `word(f(lo), f(hi))` with `f` the bias and (or not) the ReLU,
    /// a missing `hi` as 0, over every length up to past two vectors of
    /// 32, with NaNs, infinities, negative values and zeros among them;
    /// nothing is written past the words asked for.
    #[test]
    fn finished_words_are_the_words_of_the_finished_values() {
        let mut lo = values(70, 27);
        let mut hi = values(70, 28);
        lo[3] = f32::NAN;
        hi[5] = -f32::NAN;
        lo[17] = f32::INFINITY;
        hi[17] = f32::NEG_INFINITY;
        lo[40] = -0.0;
        hi[41] = 0.25;
        for relu in [true, false] {
            for with_hi in [true, false] {
                let fin = Finish {
                    lo: 0.125,
                    hi: -0.375,
                    relu,
                };
                let f = |v: f32, b: f32| if relu { (v + b).max(0.0) } else { v + b };
                let hi = with_hi.then_some(&hi[..]);
                for n in 0..=70 {
                    let want: Vec<u32> = (0..n)
                        .map(|j| word(f(lo[j], fin.lo), hi.map_or(0.0, |h| f(h[j], fin.hi))))
                        .collect();
                    let what = format!("relu {relu}, hi {with_hi}, n = {n}");
                    let mut got = vec![7u32; n + 2];
                    words_finished(&lo[..n], hi.map(|h| &h[..n]), fin, &mut got[..n]);
                    assert_eq!(&got[..n], &want[..], "dispatch, {what}");
                    assert_eq!(&got[n..], &[7, 7], "wrote past the words, {what}");
                    let mut scalar = vec![0u32; n];
                    finished_scalar(&lo, hi, fin, |j, w| scalar[j] = w, n);
                    assert_eq!(scalar, want, "portable, {what}");
                    let (mut even, mut odd) =
                        (vec![7u32; n.div_ceil(2) + 1], vec![7u32; n / 2 + 1]);
                    let (ne, no) = (n.div_ceil(2), n / 2);
                    words_finished_split(&lo, hi, fin, &mut even[..ne], &mut odd[..no]);
                    let split: Vec<u32> = (0..n)
                        .map(|j| if j % 2 == 0 { even[j / 2] } else { odd[j / 2] })
                        .collect();
                    assert_eq!(split, want, "split, {what}");
                    assert!(
                        even[ne] == 7 && odd[no] == 7,
                        "split wrote past the words, {what}"
                    );
                }
            }
        }
    }

    /// The batched forms write the words of [`word`] at their places and
    /// nothing else.
    #[test]
    fn batched_words_agree_with_word() {
        let (lo, hi) = (values(200, 17), values(200, 18));
        // words_each: 5 runs of 7 at a source stride of 11, into 5 buffers
        // from word 3.
        let mut bufs: Vec<Vec<u32>> = (0..5).map(|_| vec![7; 12]).collect();
        let mut out: Vec<&mut [u32]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
        words_each(&lo[2..], &hi[2..], 11, 7, &mut out, 3);
        for (i, b) in bufs.iter().enumerate() {
            for (j, &w) in b.iter().enumerate() {
                let want = if (3..10).contains(&j) {
                    let k = 2 + i * 11 + j - 3;
                    word(lo[k], hi[k])
                } else {
                    7
                };
                assert_eq!(w, want, "words_each buffer {i} word {j}");
            }
        }
        // words_blocks: 4 blocks of 32 into a destination with stride 70.
        let mut dst = vec![7u32; 4 * 70];
        words_blocks(&lo[..128], &hi[..128], 32, &mut dst[5..], 70);
        for (j, &w) in dst.iter().enumerate() {
            let (b, t) = (
                (j as isize - 5).div_euclid(70),
                (j as isize - 5).rem_euclid(70),
            );
            let want = if j >= 5 && t < 32 && b < 4 {
                let k = (b * 32 + t) as usize;
                word(lo[k], hi[k])
            } else {
                7
            };
            assert_eq!(w, want, "words_blocks word {j}");
        }
    }

    #[test]
    fn packers_agree() {
        let mut data = values(40 * 70, 7);
        // Rounding-sensitive values and specials in the mix.
        data[3] = 1.0 + 2f32.powi(-8);
        data[5] = f32::NAN;
        data[8] = f32::MAX;
        data[13] = f32::NEG_INFINITY;
        data[21] = f32::from_bits(0x0001_8000);
        data[34] = -0.0;
        for (lines, k) in [
            (1, 1),
            (5, 3),
            (12, 32),
            (13, 33),
            (33, 31),
            (40, 70),
            (7, 0),
        ] {
            for w in [MR, NR] {
                // Lines contiguous (A row-major, B transposed).
                let words = pack_both(
                    Source {
                        data: &data,
                        lines,
                        k,
                        ls: 70,
                        ps: 1,
                    },
                    w,
                );
                // Spot-check the layout against the definition.
                let pairs = k.div_ceil(2);
                if lines > 0 && k > 0 {
                    let (l, p) = (lines - 1, k - 1);
                    let wd = words[((l / w) * pairs + p / 2) * w + l % w];
                    let half = if p % 2 == 0 {
                        wd as u16
                    } else {
                        (wd >> 16) as u16
                    };
                    assert_eq!(half, to_bf16(data[l * 70 + p]));
                }
                // Depth rows contiguous (A column-major, B row-major).
                pack_both(
                    Source {
                        data: &data,
                        lines,
                        k,
                        ls: 1,
                        ps: 40,
                    },
                    w,
                );
                // Neither.
                pack_both(
                    Source {
                        data: &data,
                        lines,
                        k,
                        ls: 3,
                        ps: 37,
                    },
                    w,
                );
            }
        }
    }

    type Gemm = fn(&mut [f32], usize, &PackedA, &PackedB, bool);

    /// Layout of an operand in its buffer.
    #[derive(Clone, Copy, Debug)]
    enum Lay {
        /// Row-major (row stride = cols).
        Rows,
        /// Column-major (column stride = rows).
        Cols,
    }

    /// Runs `f` on an `m x k` by `k x n` product and checks it against an f64
    /// reference on the rounded inputs; `ldc = n + extra`, with one more
    /// row of C than needed, and the rest of C must stay untouched.
    fn check(f: Gemm, shape: (usize, usize, usize), la: Lay, lb: Lay, accumulate: bool) {
        check_as(f, shape, la, lb, accumulate, amx::active());
    }

    /// As [`check`], with A packed in the AMX layout when `amx`.
    fn check_as(
        f: Gemm,
        (m, k, n): (usize, usize, usize),
        la: Lay,
        lb: Lay,
        accumulate: bool,
        amx: bool,
    ) {
        let a = values(m * k, 1 + (m * 31 + k) as u64);
        let b = values(k * n, 2 + (k * 17 + n) as u64);
        let (ars, acs) = match la {
            Lay::Rows => (k, 1),
            Lay::Cols => (1, m),
        };
        let (brs, bcs) = match lb {
            Lay::Rows => (n, 1),
            Lay::Cols => (1, k),
        };
        let mut pa = PackedA::new(&values(200, 8), 20, 10, 10, 1);
        pa.pack_as(&a, m, k, ars, acs, amx);
        let mut pb = PackedB::default();
        // Pack something else first to exercise reuse.
        pb.pack(&values(300, 9), 10, 30, 30, 1);
        pb.pack(&b, k, n, brs, bcs);
        assert_eq!((pa.rows(), pa.depth(), pb.depth(), pb.cols()), (m, k, k, n));
        let ldc = n + 3;
        let sentinel = 12345.0f32;
        let init = values((m + 1) * ldc, 3);
        let mut c: Vec<f32> = (0..(m + 1) * ldc)
            .map(|x| {
                if x / ldc < m && x % ldc < n {
                    if accumulate {
                        init[x]
                    } else {
                        f32::NAN
                    }
                } else {
                    sentinel
                }
            })
            .collect();
        f(&mut c, ldc, &pa, &pb, accumulate);
        for i in 0..=m {
            for j in 0..ldc {
                let got = c[i * ldc + j];
                if i == m || j >= n {
                    assert_eq!(got, sentinel, "touched ({i}, {j})");
                    continue;
                }
                let (mut want, mut scale) = if accumulate {
                    (
                        f64::from(init[i * ldc + j]),
                        f64::from(init[i * ldc + j]).abs(),
                    )
                } else {
                    (0.0, 0.0)
                };
                for p in 0..k {
                    let x = r(a[i * ars + p * acs]) * r(b[p * brs + j * bcs]);
                    want += x;
                    scale += x.abs();
                }
                let err = (f64::from(got) - want).abs();
                assert!(
                    err <= 1e-5 * scale,
                    "({m}, {k}, {n}) {la:?} {lb:?} acc={accumulate}: c[{i}][{j}] = {got}, want {want} (scale {scale})"
                );
            }
        }
    }

    const SHAPES: [(usize, usize, usize); 20] = [
        (1, 1, 1),
        (0, 5, 3),
        (5, 0, 3),
        (3, 4, 0),
        (0, 0, 0),
        (2, 3, 5),
        (1, 7, 33),
        (MR, 2, NR),
        (MR + 1, 9, NR + 1),
        (MR - 1, 17, NR - 1),
        (13, 31, 17),
        (25, 33, 47),
        (24, 64, 64),
        (37, 95, 70),
        (96, 96, 256),
        (192, 192, 256),
        (192, 96, 64),
        (96, 256, 96),
        (16, 256, 192),
        (100, 1, 15),
    ];

    fn check_all(f: Gemm) {
        for shape in SHAPES {
            for accumulate in [false, true] {
                check(f, shape, Lay::Rows, Lay::Rows, accumulate);
            }
            check(f, shape, Lay::Rows, Lay::Cols, false);
            check(f, shape, Lay::Cols, Lay::Rows, true);
            check(f, shape, Lay::Cols, Lay::Cols, false);
        }
    }

    #[test]
    fn gemm_native_matches_reference() {
        if !native() {
            eprintln!("no AVX-512 BF16 on this CPU: native kernel not tested");
            return;
        }
        check_all(gemm);
    }

    #[test]
    fn gemm_portable_matches_reference() {
        check_all(gemm_portable);
    }

    /// The AMX layout of A, read by the AMX kernel where it runs and by the
    /// portable path elsewhere (the kernel itself is tested on the software
    /// model of the tile unit in `amx`).
    #[test]
    fn gemm_with_the_amx_layout_matches_reference() {
        for shape in SHAPES {
            check_as(gemm, shape, Lay::Rows, Lay::Rows, false, true);
            check_as(gemm, shape, Lay::Cols, Lay::Rows, true, true);
            check_as(gemm_portable, shape, Lay::Rows, Lay::Cols, true, true);
        }
    }

    /// The AVX-512 AMX-layout packer writes the words of the scalar one,
    /// padding included, for contiguous lines and contiguous depth rows.
    #[test]
    fn amx_packers_agree() {
        if !native() {
            eprintln!("no AVX-512 BF16 on this CPU: the AVX-512 AMX packer not tested");
            return;
        }
        for (lines, k) in [
            (1, 1),
            (3, 5),
            (16, 32),
            (17, 33),
            (33, 64),
            (40, 70),
            (96, 192),
            (5, 0),
        ] {
            let data = values(lines * k + 40 * 70, (lines * 3 + k) as u64);
            for (ls, ps) in [(k, 1), (1, lines), (k + 3, 1), (1, lines + 2)] {
                let src = Source {
                    data: &data,
                    lines,
                    k,
                    ls,
                    ps,
                };
                let len = amx::padded_len(lines, k);
                let mut want = vec![u32::MAX; len];
                amx::pack_scalar(|i, p| src.at(i, p), lines, k, &mut want);
                let mut got = vec![u32::MAX; len];
                // SAFETY: native() holds, the source fits (`check`), the
                // layout is one of the two, and `got` has the AMX length.
                unsafe {
                    src.check();
                    x86::pack_amx(src, &mut got);
                }
                assert_eq!(got, want, "{lines} x {k}, strides ({ls}, {ps})");
            }
        }
    }

    #[test]
    fn gemm_dispatch_matches_reference() {
        for shape in [(3, 5, 7), (96, 96, 256)] {
            check(gemm, shape, Lay::Rows, Lay::Rows, true);
        }
    }

    #[test]
    #[should_panic(expected = "depth")]
    fn gemm_rejects_mismatched_depth() {
        let a = PackedA::new(&[1.0; 6], 2, 3, 3, 1);
        let mut b = PackedB::default();
        b.pack(&[1.0; 8], 4, 2, 2, 1);
        gemm(&mut [0.0; 4], 2, &a, &b, false);
    }

    #[test]
    #[should_panic(expected = "needs more")]
    fn gemm_rejects_short_c() {
        let a = PackedA::new(&[1.0; 6], 2, 3, 3, 1);
        let mut b = PackedB::default();
        b.pack(&[1.0; 6], 3, 2, 2, 1);
        gemm(&mut [0.0; 3], 2, &a, &b, false);
    }

    #[test]
    #[should_panic(expected = "needs more than")]
    fn pack_rejects_short_source() {
        PackedB::default().pack(&[1.0; 5], 3, 2, 2, 1);
    }
}
