//! Direct (implicit-GEMM) convolution on the AMX tiles, for the stride-1
//! convolutions with bf16 operands, as oneDNN's brgemm convolutions do it:
//! no Winograd transforms and no im2col copy.
//!
//! # Method
//!
//! An image's input is packed once per call into zero-padded planes of
//! words, one plane per pair of input channels (channel `2q` in the low
//! half of word `q`'s plane, `2q + 1` in the high half: the pairs
//! `tdpbf16ps` multiplies), each plane `Wp = W + 2 pad` wide and stored flat.
//! In that flat index an output position `f = y Wp + x` reads tap `(i, j)`
//! of the kernel at `f + i Wp + j`, so a run of 16 consecutive positions is
//! one tile row of 64 bytes for every tap, and a tile of the right operand
//! (16 channel pairs x 16 positions) is 16 such rows, a plane apart. The
//! GEMM runs over every flat position, including the `Wp - Wo` per row that
//! fall in the padding; those are computed and dropped.
//!
//! Blocks of C are 32 output channels x 32 positions (four accumulator
//! tiles `tmm0`-`tmm3`, two weight tiles `tmm4`, `tmm5`, two input tiles
//! `tmm6`, `tmm7`), summed over the `k²` taps and the blocks of 16 channel
//! pairs. A block row of 32 channels over all positions goes to a buffer
//! in cache, whose valid positions are then written out through the
//! epilogue (bias, ReLU), so the output is written once and never zeroed.
//!
//! The kernel is written against [`Tiles`], so the tests run it on the
//! software model of the tile unit on any CPU, and on the hardware where
//! there is AMX.

// Tile instructions work through raw pointers; each block states why it is
// sound.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::amx::{Tiles, KB};
use super::scratch::{self, Pool};
use super::{bf16, shuffle, simd, Epilogue, Geometry};

/// Output channels per block (two weight tiles of 16 rows).
const CO: usize = 32;
/// Positions per block (two input tiles of 16 columns).
const POS: usize = 32;
/// Rows (and words per row) of a tile.
const T16: usize = 16;

/// Whether [`forward`] takes this geometry: stride 1 or 2, a kernel of at
/// most 5 x 5, enough channels for the tiles (an odd input channel count is
/// padded with a zero channel), and the AMX tiles active.
pub(super) fn usable(g: &Geometry) -> bool {
    matches!(g.stride, 1 | 2) && g.k <= 5 && g.cin >= 16 && g.cout >= 16 && super::amx::active()
}

/// Where everything sits for one geometry. With stride 2 the padded input
/// is split into four phase planes (even and odd rows times even and odd
/// columns), in which a stride-2 convolution reads like a stride-1 one.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// The stride (1 or 2): the phases per pair are `stride²`.
    stride: usize,
    /// Width of a (phase) plane: the padded width, divided by the stride
    /// and rounded up.
    wq: usize,
    /// Flat positions computed per image: `(Ho - 1) wq + Wo`, rounded up to
    /// [`POS`].
    fp: usize,
    /// Words per phase plane: the plane, and at least every word a
    /// computed position reads (zero past the plane).
    len: usize,
    /// Channel pairs, rounded up to [`KB`] (the padding planes are zero).
    pairs: usize,
    /// Output channels, rounded up to [`CO`] (the padding rows are zero).
    cpad: usize,
}

impl Layout {
    fn new(g: &Geometry) -> Self {
        let s = g.stride;
        let (hq, wq) = ((g.h + 2 * g.pad).div_ceil(s), (g.w + 2 * g.pad).div_ceil(s));
        let fp = ((g.ho - 1) * wq + g.wo).next_multiple_of(POS);
        let reach = (g.k - 1) / s;
        let len = (fp + reach * (wq + 1)).max(hq * wq);
        Layout {
            stride: s,
            wq,
            fp,
            len,
            pairs: g.cin.div_ceil(2).next_multiple_of(KB),
            cpad: g.cout.next_multiple_of(CO),
        }
    }

    /// Blocks of [`KB`] channel pairs.
    fn blocks(&self) -> usize {
        self.pairs / KB
    }

    /// Words per channel pair: its phase planes.
    fn group(&self) -> usize {
        self.stride * self.stride * self.len
    }

    /// Where the even and the odd values of padded row `py` (stride 2) go
    /// in a channel's (or pair's) phase planes: padded column `px = x +
    /// pad` is in phase plane `(py % 2, px % 2)` at `px / 2`, so the even
    /// `x` start at column `pad` and the odd ones at `pad + 1`.
    fn phase_runs(&self, py: usize, pad: usize) -> (usize, usize) {
        let at = |px: usize| ((py % 2) * 2 + px % 2) * self.len + (py / 2) * self.wq + px / 2;
        (at(pad), at(pad + 1))
    }

    /// Where tap `(i, j)` reads, relative to the output position, in the
    /// words of a pair's planes: its phase plane and the offset in it.
    fn tap(&self, i: usize, j: usize) -> usize {
        let s = self.stride;
        ((i % s) * s + j % s) * self.len + (i / s) * self.wq + j / s
    }
}

/// The weights `[Cout, Cin, k, k]` as the left operand: for tap `t`, pair
/// block `b` and output channel `c`, the 16 words of pairs `16 b..16 b + 16`
/// at `((t * blocks + b) * cpad + c) * 16`, so a tile (16 channels) is 16
/// consecutive rows of 64 bytes.
fn pack_weights(g: &Geometry, l: &Layout, w: &[f32]) -> Vec<u32> {
    let taps = g.k * g.k;
    pack_slabs(l, taps, g.cout, g.cin, |t, c, ch| {
        w[(c * g.cin + ch) * taps + t]
    })
}

/// The left operand for `slabs` taps, `rows` output channels and `depth`
/// input channels, `at(t, row, channel)` giving the weight: laid out as
/// [`pack_weights`] says, zero past `rows` and `depth`. The values are
/// gathered into rows of `depth` first, then each row's consecutive pairs
/// rounded 16 words at a time ([`bf16::narrow`]).
fn pack_slabs(
    l: &Layout,
    slabs: usize,
    rows: usize,
    depth: usize,
    at: impl Fn(usize, usize, usize) -> f32,
) -> Vec<u32> {
    let mut out = vec![0u32; slabs * l.pairs * l.cpad];
    let mut line = vec![0f32; depth];
    for t in 0..slabs {
        for c in 0..rows {
            for (ch, v) in line.iter_mut().enumerate() {
                *v = at(t, c, ch);
            }
            for b in 0..l.blocks() {
                // Pairs `16 b..16 b + 16`: values `32 b..32 b + 32` of the
                // line (zero past its end).
                let src = line.get(2 * KB * b..).unwrap_or(&[]);
                let src = &src[..src.len().min(2 * KB)];
                let row = &mut out[((t * l.blocks() + b) * l.cpad + c) * KB..][..KB];
                bf16::narrow(src, row);
            }
        }
    }
    out
}

/// One image `[Cin, H, W]` into `planes` (`pairs` groups of phase planes,
/// all zero or as the last call for the same input geometry left them):
/// the words of the image's values, rounded to bf16 pairs, every one of
/// them written; nothing else. `row` is scratch.
fn pack_image(
    g: &Geometry,
    l: &Layout,
    img: &[f32],
    zeros: &[f32],
    planes: &mut [u32],
    row: &mut Vec<u32>,
) {
    let plane = g.h * g.w;
    let channel = |ch: usize| {
        if ch < g.cin {
            &img[ch * plane..][..plane]
        } else {
            &zeros[..plane]
        }
    };
    for (q, dst) in planes.chunks_exact_mut(l.group()).enumerate() {
        if 2 * q >= g.cin {
            break;
        }
        let (lo, hi) = (channel(2 * q), channel(2 * q + 1));
        if l.stride == 1 {
            let first = g.pad * l.wq + g.pad;
            bf16::words_blocks(lo, hi, g.w, &mut dst[first..], l.wq);
            continue;
        }
        // Stride 2: a row of words at a time, its even and odd padded
        // columns to the two phase planes of its row's parity.
        row.resize(g.w, 0);
        for y in 0..g.h {
            let r = &lo[y * g.w..][..g.w];
            bf16::words_blocks(r, &hi[y * g.w..][..g.w], g.w, row, g.w);
            let (even, odd) = l.phase_runs(y + g.pad, g.pad);
            shuffle::split_to(row, dst, even, odd);
        }
    }
}

/// One block row of the product: output channels `c0..c0 + 32` at the
/// computed positions `f0..f1` (a multiple of 32 apart, `f1 <= l.fp`) of
/// the image, into `cbuf` (`32` rows of `ldc >= f1 - f0` f32, position `f`
/// at column `f - f0`), summed over the taps at the plane offsets `offs`
/// (weight slab `t` for `offs[t]`).
///
/// # Safety
/// `u` is a configured unit; `wa` holds a slab per offset ([`pack_slabs`])
/// and `planes` is [`pack_image`]'s output, both for `l`; every offset is
/// at most `l.len - l.fp`; `c0 + 32 <= l.cpad`; `cbuf` holds `32 * ldc`
/// values.
#[allow(clippy::too_many_arguments)]
unsafe fn block_row<U: Tiles>(
    u: &mut U,
    l: &Layout,
    wa: &[u32],
    planes: &[u32],
    offs: &[usize],
    (f0, f1): (usize, usize),
    c0: usize,
    cbuf: &mut [f32],
    ldc: usize,
) {
    let blocks = l.blocks();
    debug_assert!(c0 + CO <= l.cpad && f1 <= l.fp && (f1 - f0).is_multiple_of(POS));
    debug_assert!(f1 - f0 <= ldc && cbuf.len() >= CO * ldc);
    debug_assert!(wa.len() == offs.len() * l.pairs * l.cpad && planes.len() == l.pairs * l.group());
    let (a_stride, b_stride, c_stride) = (KB * 4, l.group() * 4, ldc * 4);
    for f in (f0..f1).step_by(POS) {
        // SAFETY: a weight tile reads rows `c0..c0 + 32 <= cpad` of one
        // (tap, block) slab; an input tile reads the groups of pairs `16
        // b..16 b + 16 <= pairs`, in one phase plane of each, words `f +
        // off..f + off + 32 <= fp + reach (wq + 1) <= len`; the stores
        // write rows `0..32` of `cbuf` at columns `f - f0..f - f0 + 32 <=
        // ldc`.
        unsafe {
            u.zero::<0>();
            u.zero::<1>();
            u.zero::<2>();
            u.zero::<3>();
            for (t, &off) in offs.iter().enumerate() {
                for b in 0..blocks {
                    let a0 = wa.as_ptr().add(((t * blocks + b) * l.cpad + c0) * KB);
                    let b0 = planes.as_ptr().add(b * KB * l.group() + f + off);
                    u.load::<4>(a0, a_stride);
                    u.load::<5>(a0.add(T16 * KB), a_stride);
                    u.load::<6>(b0, b_stride);
                    u.load::<7>(b0.add(T16), b_stride);
                    u.dot::<0, 4, 6>();
                    u.dot::<1, 4, 7>();
                    u.dot::<2, 5, 6>();
                    u.dot::<3, 5, 7>();
                }
            }
            let o = cbuf.as_mut_ptr().add(f - f0);
            let half = T16 * ldc;
            u.store::<0>(o, c_stride);
            u.store::<1>(o.add(T16), c_stride);
            u.store::<2>(o.add(half), c_stride);
            u.store::<3>(o.add(half + T16), c_stride);
        }
    }
}

/// Positions per pass of [`image`]: a block row of this many (32 rows of
/// f32, 24 KB) stays in L1 from the tile stores to the epilogue.
const CHUNK: usize = 6 * POS;

/// The output rows that a block row's computed positions `f0..f1` meet,
/// as `(y, a, b)`: positions `a..b` (`f0 <= a < b <= f1`) are row `y`'s
/// columns `a - y wq..b - y wq` (row `y` computes positions `y wq..y wq +
/// wq`, of which the first `wo` are valid).
#[inline(always)]
fn row_runs(
    g: &Geometry,
    l: &Layout,
    f0: usize,
    f1: usize,
) -> impl Iterator<Item = (usize, usize, usize)> {
    let (wq, wo) = (l.wq, g.wo);
    ((f0 / wq)..f1.div_ceil(wq).min(g.ho)).filter_map(move |y| {
        let (a, b) = (f0.max(y * wq), f1.min(y * wq + wo));
        (a < b).then_some((y, a, b))
    })
}

/// The valid positions among `f0..f1` of `cbuf`'s rows (row stride `ldc`,
/// position `f` at column `f - f0`) into the output planes of channels
/// `c0..`, through the epilogue. Called for consecutive ranges covering
/// `0..l.fp`, it writes every value of those planes. Compiled for AVX-512
/// where the CPU has it ([`simd::wide`]: the same operations, so the same
/// values).
#[allow(clippy::too_many_arguments)]
fn write_out(
    g: &Geometry,
    l: &Layout,
    cbuf: &[f32],
    range: (usize, usize, usize),
    c0: usize,
    out: &mut [MaybeUninit<f32>],
    ep: Option<Epilogue<'_>>,
) {
    simd::wide(|| write_out_body(g, l, cbuf, range, c0, out, ep));
}

/// The body of [`write_out`], inlined into its AVX-512 copy.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn write_out_body(
    g: &Geometry,
    l: &Layout,
    cbuf: &[f32],
    (f0, f1, ldc): (usize, usize, usize),
    c0: usize,
    out: &mut [MaybeUninit<f32>],
    ep: Option<Epilogue<'_>>,
) {
    let plane = g.ho * g.wo;
    for r in 0..CO.min(g.cout - c0) {
        let c = c0 + r;
        let o = &mut out[c * plane..][..plane];
        let src = &cbuf[r * ldc..][..f1 - f0];
        for (y, a, b) in row_runs(g, l, f0, f1) {
            let (x0, x1) = (a - y * l.wq, b - y * l.wq);
            let (s, d) = (&src[a - f0..b - f0], &mut o[y * g.wo + x0..y * g.wo + x1]);
            match ep {
                Some(ep) => ep.apply_into(c, s, d),
                None => d.iter_mut().zip(s).for_each(|(d, &v)| {
                    d.write(v);
                }),
            }
        }
    }
}

/// Where an image's input comes from: its f32 values `[Cin, H, W]`, packed
/// here, or its planes as the layer before packed them ([`Planes`]).
#[derive(Clone, Copy)]
enum Source<'a> {
    F32(&'a [f32]),
    Planes(&'a [u32]),
}

/// Where an image's output goes: its f32 planes `[Cout, Ho, Wo]`, or the
/// input planes of the next direct convolution `next` (its [`Layout`]
/// `ln`), rounded to bf16 pairs as that convolution would pack them.
enum Sink<'a> {
    F32(&'a mut [MaybeUninit<f32>]),
    Planes {
        next: &'a Geometry,
        ln: &'a Layout,
        dst: &'a mut [u32],
    },
}

/// One image through the kernel on the unit `u`.
///
/// # Safety
/// `u` is a configured unit; `wa` is [`pack_weights`]' output for `g`;
/// `s` is any scratch; a [`Source::Planes`] holds one image's planes for
/// `l` (`l.pairs * l.group()` words, zero wherever [`pack_image`] writes
/// nothing).
#[allow(clippy::too_many_arguments)]
unsafe fn image<U: Tiles>(
    u: &mut U,
    g: &Geometry,
    l: &Layout,
    wa: &[u32],
    src: Source<'_>,
    mut out: Sink<'_>,
    ep: Option<Epilogue<'_>>,
    s: &mut Scratch,
) {
    let planes: &[u32] = match src {
        Source::F32(img) => {
            s.pack(g, l, img, 1);
            &s.planes
        }
        Source::Planes(p) => {
            assert_eq!(
                p.len(),
                l.pairs * l.group(),
                "packed planes of another layout"
            );
            s.cbuf.resize(CO * l.fp, 0.0);
            p
        }
    };
    let offs: Vec<usize> = (0..g.k * g.k).map(|t| l.tap(t / g.k, t % g.k)).collect();
    // Both multiples of 32: `fp` and the chunk.
    let ldc = CHUNK.min(l.fp);
    for c0 in (0..l.cpad).step_by(CO) {
        if c0 >= g.cout {
            break;
        }
        for f0 in (0..l.fp).step_by(ldc) {
            let f1 = (f0 + ldc).min(l.fp);
            // SAFETY: forwarded; the offsets are the geometry's taps (at
            // most `reach (wq + 1) <= len - fp`), `c0 + 32 <= cpad`,
            // positions `f0..f1` with `f1 <= fp`, and `cbuf` holds `32 fp
            // >= 32 ldc` values (sized above).
            unsafe { block_row(u, l, wa, planes, &offs, (f0, f1), c0, &mut s.cbuf, ldc) };
            match &mut out {
                Sink::F32(o) => write_out(g, l, &s.cbuf, (f0, f1, ldc), c0, o, ep),
                Sink::Planes { next, ln, dst } => {
                    write_packed(g, l, &s.cbuf, (f0, f1, ldc), c0, ep, (next, ln, dst))
                }
            }
        }
    }
}

/// As [`write_out`], but each pair of output channels `2q, 2q + 1` (`q`
/// from `c0 / 2`) goes, finished by `ep` and rounded to a bf16 pair, into
/// pair `q`'s planes of the next convolution's input: exactly the words
/// [`pack_image`] would write for the f32 output. Called for consecutive
/// ranges covering `0..l.fp` and every block row, it writes every word
/// [`pack_image`] writes.
#[allow(clippy::too_many_arguments)]
fn write_packed(
    g: &Geometry,
    l: &Layout,
    cbuf: &[f32],
    (f0, f1, ldc): (usize, usize, usize),
    c0: usize,
    ep: Option<Epilogue<'_>>,
    (next, ln, dst): (&Geometry, &Layout, &mut [u32]),
) {
    debug_assert!(next.cin == g.cout && next.h == g.ho && next.w == g.wo);
    debug_assert!(c0.is_multiple_of(2) && dst.len() == ln.pairs * ln.group());
    let pad = next.pad;
    for r in (0..CO.min(g.cout - c0)).step_by(2) {
        let c = c0 + r;
        let has_hi = c + 1 < g.cout;
        let fin = match ep {
            Some(ep) => bf16::Finish {
                lo: ep.bias[c],
                hi: if has_hi { ep.bias[c + 1] } else { 0.0 },
                relu: ep.relu,
            },
            None => bf16::Finish {
                lo: 0.0,
                hi: 0.0,
                relu: false,
            },
        };
        let group = &mut dst[c / 2 * ln.group()..][..ln.group()];
        for (y, a, b) in row_runs(g, l, f0, f1) {
            let n = b - a;
            let lo = &cbuf[r * ldc + a - f0..][..n];
            let hi = has_hi.then(|| &cbuf[(r + 1) * ldc + a - f0..][..n]);
            let (py, px) = (y + pad, a - y * l.wq + pad);
            if ln.stride == 1 {
                let at = py * ln.wq + px;
                bf16::words_finished(lo, hi, fin, &mut group[at..][..n]);
                continue;
            }
            // Stride 2: the run's words alternate between the two column
            // phases of row `py`'s parity, starting with `px`'s, in
            // different phase planes.
            let at = |col: usize| ((py % 2) * 2 + col % 2) * ln.len + (py / 2) * ln.wq + col / 2;
            let (e, o) = (at(px), at(px + 1));
            let (ne, no) = (n.div_ceil(2), n / 2);
            let (even, odd) = if e < o {
                let (head, tail) = group.split_at_mut(o);
                (&mut head[e..][..ne], &mut tail[..no])
            } else {
                let (head, tail) = group.split_at_mut(e);
                (&mut tail[..ne], &mut head[o..][..no])
            };
            bf16::words_finished_split(lo, hi, fin, even, odd);
        }
    }
}

/// Each thread's buffers, kept across calls.
#[derive(Default)]
struct Scratch {
    /// The packed image.
    planes: Vec<u32>,
    /// One block row of the product.
    cbuf: Vec<f32>,
    /// A zero channel for an odd channel count.
    zeros: Vec<f32>,
    /// One row of words (stride 2).
    row: Vec<u32>,
    /// The input geometry `planes` was zeroed and last written for (with
    /// the output size, which sets the planes' length).
    key: Option<[usize; 8]>,
}

impl Scratch {
    /// Packs `img` for `g` and `l` into `planes` ([`pack_image`]) and sizes
    /// `cbuf` for `blocks` block rows.
    fn pack(&mut self, g: &Geometry, l: &Layout, img: &[f32], blocks: usize) {
        self.cbuf.resize(blocks * CO * l.fp, 0.0);
        if self.zeros.len() < g.h * g.w {
            self.zeros.resize(g.h * g.w, 0.0);
        }
        // The words `pack_image` writes depend only on the input geometry:
        // everything else (padding, phases past the edge, missing pairs)
        // stays zero from the last image of the same geometry.
        let key = pack_key(g);
        if self.key != Some(key) {
            self.planes.clear();
            self.planes.resize(l.pairs * l.group(), 0);
            self.key = Some(key);
        }
        pack_image(g, l, img, &self.zeros, &mut self.planes, &mut self.row);
    }
}

thread_local! {
    static SCRATCH: Pool<Scratch> = const { Pool::new(Vec::new()) };
}

/// The forward convolution `[N, Cin, H, W]` * `[Cout, Cin, k, k]` with bf16
/// operands and f32 accumulation, each output plane finished by `ep`, if
/// any. Only for geometries [`usable`] accepts.
pub(super) fn forward(g: &Geometry, x: &[f32], w: &[f32], ep: Option<Epilogue<'_>>) -> Vec<f32> {
    match forward_to(g, Input::F32(x), w, ep, None) {
        Output::F32(y) => y,
        Output::Planes(_) => unreachable!("asked for f32"),
    }
}

/// A batch of activations packed as the input planes of a direct
/// convolution: image `i` at `words[i * image..][..image]`, laid out as
/// [`pack_image`] lays it out. Made by [`forward_to`] with a next layer,
/// taken by [`forward_to`] as that layer's input; an eval pass hands
/// activations from one direct convolution to the next this way, without
/// the f32 round trip (writing f32, then reading and packing it).
///
/// The buffers come from a process-wide pool and go back to it when
/// dropped: only valid positions are ever written for one layout, so a
/// buffer reused for the same layout keeps its zero padding and is not
/// cleared again.
pub(crate) struct Planes {
    /// The layout key ([`Scratch::pack`]'s) of the convolution it feeds.
    key: [usize; 8],
    /// Words per image.
    image: usize,
    /// Images.
    n: usize,
    words: Vec<u32>,
}

/// Spare [`Planes`] buffers: (layout key, words), the newest last.
static SPARE: std::sync::Mutex<Vec<([usize; 8], Vec<u32>)>> = std::sync::Mutex::new(Vec::new());

/// The most spare buffers kept (about one per layer of a network, for one
/// batch size).
const KEEP_PLANES: usize = 8;

/// The most bytes the spare buffers hold together (a large input, the
/// ImageNet network's, would otherwise keep gigabytes after an eval); the
/// oldest go first.
const KEEP_PLANE_BYTES: usize = 256 << 20;

/// The layout key of the input planes of `g` (the geometry they depend on).
fn pack_key(g: &Geometry) -> [usize; 8] {
    [g.cin, g.h, g.w, g.pad, g.stride, g.k, g.ho, g.wo]
}

impl Planes {
    /// Zeroed planes for `n` images of `g`'s input, or a spare buffer of
    /// the same layout (zero where nothing is written).
    fn take(g: &Geometry, l: &Layout, n: usize) -> Self {
        let (key, image) = (pack_key(g), l.pairs * l.group());
        let reused = {
            let mut spare = SPARE.lock().unwrap_or_else(|e| e.into_inner());
            spare
                .iter()
                .rposition(|(k, w)| *k == key && w.len() >= n * image)
                .map(|i| spare.remove(i).1)
        };
        let words = reused.unwrap_or_else(|| vec![0; n * image]);
        Planes {
            key,
            image,
            n,
            words,
        }
    }

    /// Image `i`'s planes.
    fn images_mut(&mut self) -> impl Iterator<Item = &mut [u32]> {
        self.words[..self.n * self.image].chunks_exact_mut(self.image)
    }
}

impl Drop for Planes {
    fn drop(&mut self) {
        let words = std::mem::take(&mut self.words);
        if 4 * words.len() > KEEP_PLANE_BYTES {
            return;
        }
        let mut spare = SPARE.lock().unwrap_or_else(|e| e.into_inner());
        spare.push((self.key, words));
        trim(&mut spare, KEEP_PLANES, KEEP_PLANE_BYTES);
    }
}

/// Drops the oldest spare buffers until at most `count` remain, holding at
/// most `bytes` together.
fn trim(spare: &mut Vec<([usize; 8], Vec<u32>)>, count: usize, bytes: usize) {
    let held = |spare: &[([usize; 8], Vec<u32>)]| -> usize {
        spare.iter().map(|(_, w)| 4 * w.len()).sum()
    };
    while spare.len() > count || held(spare) > bytes {
        spare.remove(0);
    }
}

/// A direct convolution's input: f32 `[N, Cin, H, W]`, or planes packed by
/// the layer before.
pub(crate) enum Input<'a> {
    F32(&'a [f32]),
    Planes(&'a Planes),
}

/// A direct convolution's output: f32 `[N, Cout, Ho, Wo]`, or the next
/// convolution's input planes.
pub(crate) enum Output {
    F32(Vec<f32>),
    Planes(Planes),
}

/// [`forward`] from either kind of input, into f32 or, with `next` (a
/// [`usable`] convolution whose input is this one's output), into
/// `next`'s input planes: the same values `next` would pack from the f32
/// output.
pub(crate) fn forward_to(
    g: &Geometry,
    x: Input<'_>,
    w: &[f32],
    ep: Option<Epilogue<'_>>,
    next: Option<&Geometry>,
) -> Output {
    assert!(
        usable(g),
        "direct AMX convolution on an unsupported geometry {g:?}"
    );
    let l = Layout::new(g);
    let wa = pack_weights(g, &l, w);
    let sources: Vec<Source<'_>> = match x {
        Input::F32(x) => x.chunks_exact(g.cin * g.h * g.w).map(Source::F32).collect(),
        Input::Planes(p) => {
            assert!(
                p.key == pack_key(g) && p.n == g.n,
                "packed planes for another convolution"
            );
            p.words[..p.n * p.image]
                .chunks_exact(p.image)
                .map(Source::Planes)
                .collect()
        }
    };
    assert_eq!(sources.len(), g.n, "input of another batch size");
    let run = |src: Source<'_>, sink: Sink<'_>| {
        scratch::with(&SCRATCH, |s| run_image(g, &l, &wa, src, sink, ep, s));
    };
    match next {
        None => {
            let (image_out, len) = (g.cout * g.ho * g.wo, g.n * g.cout * g.ho * g.wo);
            let mut out = Vec::<f32>::with_capacity(len);
            out.spare_capacity_mut()[..len]
                .par_chunks_mut(image_out)
                .zip(sources)
                .for_each(|(o, src)| run(src, Sink::F32(o)));
            // SAFETY: the chunks cover `..len`, and `write_out` wrote every
            // value of each image's `cout` planes.
            unsafe { out.set_len(len) };
            Output::F32(out)
        }
        Some(next) => {
            assert!(
                usable(next)
                    && next.n == g.n
                    && next.cin == g.cout
                    && (next.h, next.w) == (g.ho, g.wo),
                "{next:?} does not take the output of {g:?}"
            );
            let ln = Layout::new(next);
            let mut planes = Planes::take(next, &ln, g.n);
            let dsts: Vec<&mut [u32]> = planes.images_mut().collect();
            dsts.into_par_iter()
                .zip(sources)
                .for_each(|(dst, src)| run(src, Sink::Planes { next, ln: &ln, dst }));
            Output::Planes(planes)
        }
    }
}

/// [`image`] on this thread's hardware tiles.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn run_image(
    g: &Geometry,
    l: &Layout,
    wa: &[u32],
    src: Source<'_>,
    out: Sink<'_>,
    ep: Option<Epilogue<'_>>,
    s: &mut Scratch,
) {
    assert!(super::amx::active(), "the AMX tiles are not active");
    // SAFETY: the AMX path is active (checked), so the tiles may be
    // configured; the packed operands are for `g` and `l`, and packed
    // input planes come from `forward_to` for `g`'s layout (checked).
    unsafe { image(&mut super::amx::Hardware::new(), g, l, wa, src, out, ep, s) }
}

/// Never reached: [`usable`] is false without AMX.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn run_image(
    _: &Geometry,
    _: &Layout,
    _: &[u32],
    _: Source<'_>,
    _: Sink<'_>,
    _: Option<Epilogue<'_>>,
    _: &mut Scratch,
) {
    unreachable!("the direct AMX convolution needs AMX")
}

/// Images per partial sum of the weight gradient: consecutive images in
/// fixed chunks, each accumulated in order on the tiles, the partials
/// summed in order, so the result does not depend on the thread count.
const WGRAD_CHUNK: usize = 8;

/// Where the weight gradient's operands sit.
#[derive(Debug, Clone, Copy)]
struct GradLayout {
    /// The forward's layout (its `fp` positions, in pairs, are the depth).
    l: Layout,
    /// Input channels, rounded up to [`CO`] (rows of the left operand).
    cinp: usize,
    /// Words per row of an input (phase) plane copy: pairs of positions up
    /// to the furthest a tap reads.
    row: usize,
    /// Phase planes per channel (`stride²`).
    phases: usize,
}

impl GradLayout {
    fn new(g: &Geometry) -> Self {
        let l = Layout::new(g);
        GradLayout {
            l,
            cinp: g.cin.next_multiple_of(CO),
            row: l.len.div_ceil(2) + 1,
            phases: g.stride * g.stride,
        }
    }
}

/// Each thread's buffers for [`weight_grad`].
#[derive(Default)]
struct GradScratch {
    /// One channel's padded input (phase) planes in f32, flat (`phases`
    /// planes of `len` values).
    plane: Vec<f32>,
    /// One output-gradient plane on the flat positions (`fp` values, zero
    /// in the padding columns).
    dplane: Vec<f32>,
    /// The input planes as pairs of positions, even alignment (per
    /// channel, its `phases` planes of `row` words) then odd alignment (the
    /// same, from position 1).
    xa: Vec<u32>,
    /// The output gradient as pairs of positions, one row per channel.
    dw: Vec<u32>,
    /// `dw` transposed: `fp / 2` rows of `cpad` words.
    dt: Vec<u32>,
    /// The geometry `plane`, `dplane` and `xa` were zeroed for.
    key: Option<[usize; 7]>,
}

thread_local! {
    static GRAD: Pool<GradScratch> = const { Pool::new(Vec::new()) };
}

/// Packs one image's input `[Cin, H, W]` and output gradient `[Cout, Ho,
/// Wo]` into `s.xa` and `s.dt`.
fn pack_grad_operands(g: &Geometry, gl: &GradLayout, img: &[f32], dy: &[f32], s: &mut GradScratch) {
    let l = &gl.l;
    let key = [g.cin, g.cout, g.h, g.w, g.pad, g.k, g.stride];
    if s.key != Some(key) {
        s.plane.clear();
        s.plane.resize(gl.phases * l.len, 0.0);
        s.dplane.clear();
        s.dplane.resize(l.fp, 0.0);
        s.xa.clear();
        s.xa.resize(2 * gl.cinp * gl.phases * gl.row, 0);
        s.dw.clear();
        s.dw.resize(l.cpad * l.fp / 2, 0);
        s.key = Some(key);
    }
    let (plane, oplane) = (g.h * g.w, g.ho * g.wo);
    let per_channel = gl.phases * gl.row;
    let (even, odd) = s.xa.split_at_mut(gl.cinp * per_channel);
    for ch in 0..g.cin {
        let src = &img[ch * plane..][..plane];
        for y in 0..g.h {
            let row = &src[y * g.w..][..g.w];
            if l.stride == 1 {
                let at = (y + g.pad) * l.wq + g.pad;
                shuffle::copy(&mut s.plane[at..at + g.w], row);
                continue;
            }
            // Stride 2: the even and odd padded columns to the two phase
            // planes of the row's parity, as in `pack_image`.
            let (even, odd) = l.phase_runs(y + g.pad, g.pad);
            shuffle::split_to(row, &mut s.plane, even, odd);
        }
        for ph in 0..gl.phases {
            let src = &s.plane[ph * l.len..][..l.len];
            let at = ch * per_channel + ph * gl.row;
            bf16::narrow(src, &mut even[at..][..gl.row]);
            bf16::narrow(&src[1..], &mut odd[at..][..gl.row]);
        }
    }
    for c in 0..g.cout {
        let src = &dy[c * oplane..][..oplane];
        for y in 0..g.ho {
            shuffle::copy(&mut s.dplane[y * l.wq..][..g.wo], &src[y * g.wo..][..g.wo]);
        }
        bf16::narrow(&s.dplane, &mut s.dw[c * l.fp / 2..][..l.fp / 2]);
    }
    // Transposed: row `q` (a pair of positions), word `c`.
    let pairs = l.fp / 2;
    s.dt.resize(pairs * l.cpad, 0);
    bf16::transpose_words(&s.dw, l.cpad, pairs, &mut s.dt);
}

/// Adds one image's products to `acc` (`[tap][cinp][cpad]` f32): for each
/// tap, `acc[t] += X_t · dYᵀ` over the image's positions; with `first`,
/// writes them instead (`acc` is not read).
///
/// # Safety
/// `u` is a configured unit; `s` holds [`pack_grad_operands`]' output for
/// `g` and `gl`; `acc` points at `k² cinp cpad` writable values, all
/// initialised unless `first`.
unsafe fn grad_image<U: Tiles>(
    u: &mut U,
    g: &Geometry,
    gl: &GradLayout,
    s: &GradScratch,
    acc: *mut f32,
    first: bool,
) {
    let l = &gl.l;
    let pairs = l.fp / 2;
    let per_channel = gl.phases * gl.row;
    let (a_stride, b_stride, c_stride) = (per_channel * 4, l.cpad * 4, l.cpad * 4);
    for t in 0..g.k * g.k {
        // The tap's phase plane and its offset in it.
        let (i, j, st) = (t / g.k, t % g.k, l.stride);
        let (ph, off) = ((i % st) * st + j % st, (i / st) * l.wq + j / st);
        // Pairs of positions from `off`: the even copy at `off / 2` or the
        // odd one at `(off - 1) / 2`.
        let a = &s.xa[(off % 2) * gl.cinp * per_channel + ph * gl.row + off / 2..];
        // SAFETY: slab `t < k²` of the `k² cinp cpad` values.
        let slab = unsafe { acc.add(t * gl.cinp * l.cpad) };
        for m0 in (0..gl.cinp).step_by(CO) {
            for n0 in (0..l.cpad).step_by(CO) {
                // SAFETY: the accumulator tiles are rows `m0..m0 + 32 <=
                // cinp` x columns `n0..n0 + 32 <= cpad` of the slab; an A
                // tile reads channels `m0..m0 + 32` of a copy, in the tap's
                // phase plane, at words `off / 2 + q0..+ 16`, `<= (fp +
                // reach (wq + 1)) / 2 + 1 <= row`; a B
                // tile reads pairs `q0..q0 + 16 <= fp / 2` of `dt` at columns
                // `n0..n0 + 32 <= cpad`.
                unsafe {
                    let c = slab.add(m0 * l.cpad + n0);
                    let half = T16 * l.cpad;
                    if first {
                        u.zero::<0>();
                        u.zero::<1>();
                        u.zero::<2>();
                        u.zero::<3>();
                    } else {
                        u.load::<0>(c.cast(), c_stride);
                        u.load::<1>(c.add(T16).cast(), c_stride);
                        u.load::<2>(c.add(half).cast(), c_stride);
                        u.load::<3>(c.add(half + T16).cast(), c_stride);
                    }
                    for q0 in (0..pairs).step_by(T16) {
                        let a0 = a.as_ptr().add(m0 * per_channel + q0);
                        let b0 = s.dt.as_ptr().add(q0 * l.cpad + n0);
                        u.load::<4>(a0, a_stride);
                        u.load::<5>(a0.add(T16 * per_channel), a_stride);
                        u.load::<6>(b0, b_stride);
                        u.load::<7>(b0.add(T16), b_stride);
                        u.dot::<0, 4, 6>();
                        u.dot::<1, 4, 7>();
                        u.dot::<2, 5, 6>();
                        u.dot::<3, 5, 7>();
                    }
                    u.store::<0>(c, c_stride);
                    u.store::<1>(c.add(T16), c_stride);
                    u.store::<2>(c.add(half), c_stride);
                    u.store::<3>(c.add(half + T16), c_stride);
                }
            }
        }
    }
}

/// `[tap][cinp][cpad]` sums into the gradient `[Cout, Cin, k, k]`.
fn unpack_grad(g: &Geometry, gl: &GradLayout, acc: &[f32]) -> Vec<f32> {
    let taps = g.k * g.k;
    let mut dw = vec![0f32; g.cout * g.cin * taps];
    for c in 0..g.cout {
        for ch in 0..g.cin {
            for t in 0..taps {
                dw[(c * g.cin + ch) * taps + t] = acc[(t * gl.cinp + ch) * gl.l.cpad + c];
            }
        }
    }
    dw
}

/// Runs `chunk`'s images through [`grad_image`] on the unit `u`.
///
/// # Safety
/// `u` is a configured unit.
unsafe fn grad_chunk<U: Tiles>(
    u: &mut U,
    g: &Geometry,
    gl: &GradLayout,
    x: &[f32],
    dy: &[f32],
    images: std::ops::Range<usize>,
    s: &mut GradScratch,
) -> Vec<f32> {
    let (image_in, image_out) = (g.cin * g.h * g.w, g.cout * g.ho * g.wo);
    let len = g.k * g.k * gl.cinp * gl.l.cpad;
    assert!(!images.is_empty(), "a weight-gradient chunk without images");
    let mut acc = Vec::<f32>::with_capacity(len);
    for (i, n) in images.enumerate() {
        pack_grad_operands(
            g,
            gl,
            &x[n * image_in..][..image_in],
            &dy[n * image_out..][..image_out],
            s,
        );
        // SAFETY: forwarded; the operands were just packed for `g`, `gl`;
        // `acc` has room for `len` values, which the first image writes
        // (every tap, and every 32 x 32 block of `cinp x cpad`).
        unsafe {
            grad_image(u, g, gl, s, acc.as_mut_ptr(), i == 0);
            if i == 0 {
                acc.set_len(len);
            }
        }
    }
    acc
}

/// The weight gradient `[Cout, Cin, k, k]` of a convolution from
/// its input `x` `[N, Cin, H, W]` and output gradient `dy`, with bf16
/// operands and f32 accumulation: per tap, `dW_t = Σ_positions dY Xᵀ_t` on
/// the tiles, the positions (in pairs) as the depth. Only for geometries
/// [`usable`] accepts.
pub(super) fn weight_grad(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert!(
        usable(g),
        "direct AMX weight gradient on an unsupported geometry {g:?}"
    );
    let gl = GradLayout::new(g);
    let partials: Vec<Vec<f32>> = (0..g.n.div_ceil(WGRAD_CHUNK))
        .into_par_iter()
        .map(|chunk| {
            let images = chunk * WGRAD_CHUNK..((chunk + 1) * WGRAD_CHUNK).min(g.n);
            scratch::with(&GRAD, |s| run_grad_chunk(g, &gl, x, dy, images, s))
        })
        .collect();
    let len = g.k * g.k * gl.cinp * gl.l.cpad;
    unpack_grad(g, &gl, &super::sum_in_order(partials, len))
}

/// [`grad_chunk`] on this thread's hardware tiles.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn run_grad_chunk(
    g: &Geometry,
    gl: &GradLayout,
    x: &[f32],
    dy: &[f32],
    images: std::ops::Range<usize>,
    s: &mut GradScratch,
) -> Vec<f32> {
    assert!(super::amx::active(), "the AMX tiles are not active");
    // SAFETY: the AMX path is active (checked), so the tiles may be
    // configured.
    unsafe { grad_chunk(&mut super::amx::Hardware::new(), g, gl, x, dy, images, s) }
}

/// Never reached: [`usable`] is false without AMX.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn run_grad_chunk(
    _: &Geometry,
    _: &GradLayout,
    _: &[f32],
    _: &[f32],
    _: std::ops::Range<usize>,
    _: &mut GradScratch,
) -> Vec<f32> {
    unreachable!("the direct AMX weight gradient needs AMX")
}

/// The stride-2 input gradient seen as four stride-1 convolutions of the
/// output gradient, one per phase (parity of the padded row and column) of
/// the input: input position `(py, px) = (2Y + a, 2X + b)` (padded
/// coordinates) gets `Σ w[c][ch][a + 2u][b + 2v] dy[c][Y - u][X - v]`.
#[derive(Debug, Clone, Copy)]
struct Dual {
    /// The packing of `dy`: `[N, Cout, Ho, Wo]` zero-padded by `(k - 1) / 2`.
    g: Geometry,
    /// Its layout.
    l: Layout,
    /// `(k - 1) / 2`.
    p: usize,
}

impl Dual {
    /// Phase positions needed along an axis of `size` input values padded
    /// by `pad`, for parity `b`: `X` with `pad <= 2X + b < pad + size`, as a
    /// count from `X = 0`.
    fn needed(size: usize, pad: usize, b: usize) -> usize {
        (pad + size - 1 - b) / 2 + 1
    }

    fn new(g: &Geometry) -> Option<Self> {
        let p = (g.k - 1) / 2;
        let (hn, wn) = (
            Self::needed(g.h, g.pad, 0).max(Self::needed(g.h, g.pad, 1)),
            Self::needed(g.w, g.pad, 0).max(Self::needed(g.w, g.pad, 1)),
        );
        // A needed position must not read past its row's padding into the
        // next row (`X + p - v < Wo + 2p`); the rows' ends are zero.
        if wn > g.wo + p {
            return None;
        }
        let d = Geometry {
            n: g.n,
            cin: g.cout,
            h: g.ho,
            w: g.wo,
            cout: g.cin,
            k: g.k,
            stride: 1,
            pad: p,
            ho: hn,
            wo: wn,
        };
        Some(Dual {
            g: d,
            l: Layout::new(&d),
            p,
        })
    }

    /// Tap `(u, v)` of phase `(a, b)`: its offset in a plane of `dy`.
    fn offset(&self, u: usize, v: usize) -> usize {
        (self.p - u) * self.l.wq + (self.p - v)
    }

    /// Per phase `(a, b)` (index `2a + b`), the plane offsets of its taps
    /// and its weight slabs (rows: the input channels; depth: the output
    /// channels) for the kernel `w` of `g`.
    fn operands(&self, g: &Geometry, w: &[f32]) -> Vec<(Vec<usize>, Vec<u32>)> {
        let taps = g.k * g.k;
        (0..4)
            .map(|ph| {
                let (a, b) = (ph / 2, ph % 2);
                let list = self.taps(a, b);
                let offs = list.iter().map(|&(u, v)| self.offset(u, v)).collect();
                let wa = pack_slabs(&self.l, list.len(), g.cin, g.cout, |t, ch, c| {
                    let (u, v) = list[t];
                    w[(c * g.cin + ch) * taps + (a + 2 * u) * g.k + b + 2 * v]
                });
                (offs, wa)
            })
            .collect()
    }

    /// The taps `(u, v)` of phase `(a, b)`: kernel rows `a + 2u < k` and
    /// columns `b + 2v < k` (none for a 1 x 1 kernel's odd phases).
    fn taps(&self, a: usize, b: usize) -> Vec<(usize, usize)> {
        let k = self.g.k;
        let (us, vs) = ((k + 1 - a) / 2, (k + 1 - b) / 2);
        (0..us).flat_map(|u| (0..vs).map(move |v| (u, v))).collect()
    }
}

/// Whether [`input_grad_stride2`] takes this geometry.
pub(super) fn usable_input_grad_stride2(g: &Geometry) -> bool {
    g.stride == 2 && g.k % 2 == 1 && usable(g) && Dual::new(g).is_some()
}

/// The input gradient `[N, Cin, H, W]` of a stride-2 convolution from its
/// output gradient `dy` and kernel `w`, with bf16 operands and f32
/// accumulation: per image, per block of 32 input channels, per row
/// parity, the two column phases on the tiles, then each input row
/// interleaved from the two. Every value is written once, nothing zeroed.
/// Only for geometries [`usable_input_grad_stride2`] accepts.
pub(super) fn input_grad_stride2(g: &Geometry, dy: &[f32], w: &[f32]) -> Vec<f32> {
    assert!(
        usable_input_grad_stride2(g),
        "direct AMX stride-2 input gradient on an unsupported geometry {g:?}"
    );
    let d = Dual::new(g).expect("checked by usable_input_grad_stride2");
    let phases = d.operands(g, w);
    let (image_in, image_out) = (g.cin * g.h * g.w, g.cout * g.ho * g.wo);
    let len = g.n * image_in;
    let mut out = Vec::<f32>::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(image_in)
        .zip(dy.par_chunks(image_out))
        .for_each(|(o, img)| {
            scratch::with(&SCRATCH, |s| run_dual_image(g, &d, &phases, img, o, s));
        });
    // SAFETY: the chunks cover `..len`, and `dual_image` wrote every value
    // of each image's `cin` planes.
    unsafe { out.set_len(len) };
    out
}

/// One image of [`input_grad_stride2`] on the unit `u`.
///
/// # Safety
/// `u` is a configured unit; `phases` are [`input_grad_stride2`]'s for `d`.
unsafe fn dual_image<U: Tiles>(
    u: &mut U,
    g: &Geometry,
    d: &Dual,
    phases: &[(Vec<usize>, Vec<u32>)],
    img: &[f32],
    out: &mut [MaybeUninit<f32>],
    s: &mut Scratch,
) {
    let (dg, l) = (&d.g, &d.l);
    s.pack(dg, l, img, 2);
    let plane = g.h * g.w;
    for c0 in (0..l.cpad).step_by(CO) {
        if c0 >= g.cin {
            break;
        }
        for a in 0..2 {
            let (cb0, cb1) = s.cbuf.split_at_mut(CO * l.fp);
            for (b, cb) in [cb0, cb1].into_iter().enumerate() {
                let (offs, wa) = &phases[a * 2 + b];
                // Rows `Y` with `2Y + a` inside the padded input's interior.
                let rows = Dual::needed(g.h, g.pad, a);
                let fp = ((rows - 1) * l.wq + dg.wo).next_multiple_of(POS).min(l.fp);
                // SAFETY: forwarded; the offsets are at most `p (wq + 1) <=
                // len - fp`, `c0 + 32 <= cpad`, `cbuf` holds two blocks of
                // `32 fp` values.
                unsafe { block_row(u, l, wa, &s.planes, offs, (0, fp), c0, cb, l.fp) };
            }
            // Input rows `y` of this parity: `py = y + pad = 2Y + a`; along
            // the row, `x = 2m` is column phase `pad % 2` at `X = pad / 2 +
            // m`, `x = 2m + 1` the other phase at `X = (pad + 1) / 2 + m`.
            let (ev, od) = (g.pad % 2, (g.pad + 1) % 2);
            let (e0, o0) = (g.pad / 2, g.pad.div_ceil(2));
            for r in 0..CO.min(g.cin - c0) {
                let o = &mut out[(c0 + r) * plane..][..plane];
                for y in (0..g.h).filter(|y| (y + g.pad) % 2 == a) {
                    let row = (y + g.pad) / 2 * l.wq;
                    let src = |b: usize, x0: usize| &s.cbuf[(b * CO + r) * l.fp + row + x0..];
                    shuffle::merge(src(ev, e0), src(od, o0), &mut o[y * g.w..][..g.w]);
                }
            }
        }
    }
}

/// [`dual_image`] on this thread's hardware tiles.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn run_dual_image(
    g: &Geometry,
    d: &Dual,
    phases: &[(Vec<usize>, Vec<u32>)],
    img: &[f32],
    o: &mut [MaybeUninit<f32>],
    s: &mut Scratch,
) {
    assert!(super::amx::active(), "the AMX tiles are not active");
    // SAFETY: the AMX path is active (checked), so the tiles may be
    // configured; the operands are for `d`.
    unsafe { dual_image(&mut super::amx::Hardware::new(), g, d, phases, img, o, s) }
}

/// Never reached: [`usable_input_grad_stride2`] is false without AMX.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn run_dual_image(
    _: &Geometry,
    _: &Dual,
    _: &[(Vec<usize>, Vec<u32>)],
    _: &[f32],
    _: &mut [MaybeUninit<f32>],
    _: &mut Scratch,
) {
    unreachable!("the direct AMX input gradient needs AMX")
}

#[cfg(test)]
mod tests {
    use super::super::amx::tests::values;
    use super::super::amx::Emulated;
    use super::*;

    /// Whether the AMX tiles are missing here (said loudly: the hardware
    /// tests then skip).
    fn no_amx() -> bool {
        let missing = !super::super::amx::active();
        if missing {
            eprintln!(
                "SKIPPED: no active AMX tiles on this machine ({:?})",
                super::super::amx::status()
            );
        }
        missing
    }

    fn bf(x: f32) -> f64 {
        f64::from(bf16::from_bf16(bf16::to_bf16(x)))
    }

    /// Calls `f(x, w, y)` with the indices into the input, the kernel and
    /// the output of every product of the convolution `g` that falls inside
    /// the (unpadded) input.
    fn each_product(g: &Geometry, mut f: impl FnMut(usize, usize, usize)) {
        for n in 0..g.n {
            for c in 0..g.cout {
                for ch in 0..g.cin {
                    for (i, j) in (0..g.k).flat_map(|i| (0..g.k).map(move |j| (i, j))) {
                        for (y, xo) in (0..g.ho).flat_map(|y| (0..g.wo).map(move |x| (y, x))) {
                            let (iy, ix) = (g.stride * y + i, g.stride * xo + j);
                            if iy < g.pad || ix < g.pad || iy - g.pad >= g.h || ix - g.pad >= g.w {
                                continue;
                            }
                            let xi = ((n * g.cin + ch) * g.h + iy - g.pad) * g.w + ix - g.pad;
                            let wi = ((c * g.cin + ch) * g.k + i) * g.k + j;
                            f(xi, wi, ((n * g.cout + c) * g.ho + y) * g.wo + xo);
                        }
                    }
                }
            }
        }
    }

    /// The convolution of the bf16-rounded operands in f64, with `ep`'s
    /// bias and ReLU.
    fn reference(g: &Geometry, x: &[f32], w: &[f32], bias: &[f32], relu: bool) -> Vec<f64> {
        let plane = g.ho * g.wo;
        let mut out: Vec<f64> = (0..g.n * g.cout * plane)
            .map(|o| f64::from(bias[o / plane % g.cout]))
            .collect();
        each_product(g, |xi, wi, o| out[o] += bf(x[xi]) * bf(w[wi]));
        if relu {
            out.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        out
    }

    fn geometry((n, cin, h, w, cout, k, pad, stride): Shape) -> Geometry {
        Geometry {
            n,
            cin,
            h,
            w,
            cout,
            k,
            stride,
            pad,
            ho: (h + 2 * pad - k) / stride + 1,
            wo: (w + 2 * pad - k) / stride + 1,
        }
    }

    /// Runs the kernel on `unit` image by image with the scratch `s`, as
    /// [`forward`] does.
    fn run_on<U: Tiles>(
        unit: &mut U,
        s: &mut Scratch,
        g: &Geometry,
        x: &[f32],
        w: &[f32],
        ep: Option<Epilogue<'_>>,
    ) -> Vec<f32> {
        let l = Layout::new(g);
        let wa = pack_weights(g, &l, w);
        let (image_in, image_out) = (g.cin * g.h * g.w, g.cout * g.ho * g.wo);
        let mut out = vec![f32::NAN; g.n * image_out];
        for (o, img) in out
            .chunks_exact_mut(image_out)
            .zip(x.chunks_exact(image_in))
        {
            // SAFETY: `MaybeUninit<f32>` has the layout of `f32`; the view
            // only receives writes.
            let o = unsafe { &mut *(o as *mut [f32] as *mut [MaybeUninit<f32>]) };
            // SAFETY: the caller's unit is configured; the operands are for `g`.
            unsafe { image(unit, g, &l, &wa, Source::F32(img), Sink::F32(o), ep, s) };
        }
        out
    }

    fn check(out: &[f32], want: &[f64], what: &str) {
        assert_eq!(out.len(), want.len());
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
        for (i, (&o, &r)) in out.iter().zip(want).enumerate() {
            let err = (f64::from(o) - r).abs() / scale;
            assert!(
                err < 1e-5,
                "{what}: value {i}: {o} against {r} (error {err:e} of the largest)"
            );
        }
    }

    /// `(n, cin, h, w, cout, k, pad, stride)`.
    type Shape = (usize, usize, usize, usize, usize, usize, usize, usize);

    /// Odd channel counts, channel counts past a tile, output channels not a
    /// multiple of 32, kernels 1, 3 and 5, padding 0, 1 and 2, maps of
    /// several widths (odd and even), strides 1 and 2; with and without the
    /// epilogue.
    const SHAPES: [Shape; 12] = [
        (2, 16, 8, 8, 16, 3, 1, 1),
        // More computed positions than a pass of `image` takes (CHUNK),
        // its passes ending inside rows.
        (1, 16, 20, 21, 24, 3, 1, 1),
        (1, 33, 6, 7, 40, 3, 0, 1),
        (2, 96, 8, 8, 96, 3, 1, 1),
        (1, 20, 5, 9, 17, 3, 2, 1),
        (1, 18, 7, 5, 33, 5, 2, 1),
        (1, 40, 4, 4, 24, 1, 0, 1),
        (2, 32, 8, 8, 32, 3, 1, 2),
        (1, 18, 9, 8, 20, 3, 1, 2),
        (1, 17, 7, 7, 16, 3, 0, 2),
        (1, 24, 10, 11, 16, 5, 2, 2),
        (1, 16, 6, 6, 33, 1, 0, 2),
    ];

    /// One scratch for all shapes, twice over: a buffer left by another
    /// geometry must not leak into the next.
    #[test]
    fn kernel_on_the_model_matches_the_definition() {
        let mut s = Scratch::default();
        for (i, &shape) in SHAPES.iter().chain(&SHAPES).enumerate() {
            let i = i % SHAPES.len();
            let g = geometry(shape);
            let (n, cin, h, w, cout, k) = (g.n, g.cin, g.h, g.w, g.cout, g.k);
            let x = values(n * cin * h * w, i as u64 + 1);
            let wt = values(cout * cin * k * k, i as u64 + 100);
            let bias = values(cout, i as u64 + 200);
            let plain = run_on(&mut Emulated::default(), &mut s, &g, &x, &wt, None);
            check(
                &plain,
                &reference(&g, &x, &wt, &vec![0.0; cout], false),
                &format!("{g:?}"),
            );
            let ep = Epilogue {
                bias: &bias,
                relu: true,
            };
            let fused = run_on(&mut Emulated::default(), &mut s, &g, &x, &wt, Some(ep));
            check(
                &fused,
                &reference(&g, &x, &wt, &bias, true),
                &format!("{g:?} with bias and ReLU"),
            );
        }
    }

    /// `(first, next)` convolutions, `next` taking `first`'s output: rows
    /// split by [`CHUNK`], stride-2 and 1 x 1 consumers, paddings 0-2, an
    /// odd channel count handed on (a half-empty last pair), odd widths.
    const CHAINS: [(Shape, Shape); 5] = [
        ((1, 16, 20, 21, 24, 3, 1, 1), (1, 24, 20, 21, 32, 3, 1, 2)),
        ((2, 32, 8, 8, 33, 3, 1, 1), (2, 33, 8, 8, 16, 3, 0, 1)),
        ((1, 18, 9, 9, 32, 3, 1, 2), (1, 32, 5, 5, 20, 1, 0, 1)),
        ((2, 16, 6, 7, 16, 3, 1, 1), (2, 16, 6, 7, 24, 5, 2, 2)),
        ((1, 16, 7, 7, 20, 3, 1, 1), (1, 20, 7, 7, 16, 3, 1, 2)),
    ];

    /// The planes a convolution hands on ([`Sink::Planes`]) are word for
    /// word the planes the next one packs from the f32 output, padding
    /// included, and the next one's output from them is the same, bit for
    /// bit; the planes buffer is reused by a second round.
    #[test]
    fn handed_planes_are_the_packed_output() {
        let mut s = Scratch::default();
        for round in 0..2 {
            for (i, &(a, b)) in CHAINS.iter().enumerate() {
                let (g1, g2) = (geometry(a), geometry(b));
                let (l1, l2) = (Layout::new(&g1), Layout::new(&g2));
                let seed = 10 * i as u64 + 1;
                let x = values(g1.n * g1.cin * g1.h * g1.w, seed);
                let w1 = values(g1.cout * g1.cin * g1.k * g1.k, seed + 1);
                let w2 = values(g2.cout * g2.cin * g2.k * g2.k, seed + 2);
                let (b1, b2) = (values(g1.cout, seed + 3), values(g2.cout, seed + 4));
                let ep1 = Epilogue {
                    bias: &b1,
                    relu: true,
                };
                let ep2 = Epilogue {
                    bias: &b2,
                    relu: false,
                };
                let unit = &mut Emulated::default();
                let y1 = run_on(unit, &mut s, &g1, &x, &w1, Some(ep1));
                let want = run_on(unit, &mut s, &g2, &y1, &w2, Some(ep2));

                let (wa1, wa2) = (pack_weights(&g1, &l1, &w1), pack_weights(&g2, &l2, &w2));
                let mut planes = Planes::take(&g2, &l2, g1.n);
                let image_in = g1.cin * g1.h * g1.w;
                let image_mid = g1.cout * g1.ho * g1.wo;
                for (k, dst) in planes.images_mut().enumerate() {
                    let img = &x[k * image_in..][..image_in];
                    let sink = Sink::Planes {
                        next: &g2,
                        ln: &l2,
                        dst,
                    };
                    // SAFETY: the model unit; operands packed for `g1`.
                    unsafe {
                        image(
                            unit,
                            &g1,
                            &l1,
                            &wa1,
                            Source::F32(img),
                            sink,
                            Some(ep1),
                            &mut s,
                        )
                    };
                }
                let image_out = g2.cout * g2.ho * g2.wo;
                let mut got = vec![f32::NAN; g2.n * image_out];
                for (k, (o, p)) in got
                    .chunks_exact_mut(image_out)
                    .zip(planes.words.chunks_exact(planes.image))
                    .enumerate()
                {
                    let mut fresh = Scratch::default();
                    fresh.pack(&g2, &l2, &y1[k * image_mid..][..image_mid], 1);
                    assert!(
                        fresh.planes == p,
                        "round {round}, chain {i}, image {k}: handed planes differ from the packed output"
                    );
                    // SAFETY: as above; the view only receives writes.
                    let o = unsafe { &mut *(o as *mut [f32] as *mut [MaybeUninit<f32>]) };
                    // SAFETY: the model unit; operands packed for `g2`.
                    unsafe {
                        image(
                            unit,
                            &g2,
                            &l2,
                            &wa2,
                            Source::Planes(p),
                            Sink::F32(o),
                            Some(ep2),
                            &mut s,
                        )
                    };
                }
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "round {round}, chain {i}: outputs differ");
            }
        }
    }

    /// The spare buffers keep the newest, within both limits.
    #[test]
    fn spare_planes_keep_the_newest_within_their_limits() {
        let buf = |tag: usize, words: usize| ([tag; 8], vec![0u32; words]);
        let mut spare: Vec<_> = (0..5).map(|t| buf(t, 10)).collect();
        trim(&mut spare, 3, 1000);
        let tags: Vec<usize> = spare.iter().map(|(k, _)| k[0]).collect();
        assert_eq!(tags, [2, 3, 4]);
        spare.push(buf(5, 100));
        trim(&mut spare, 8, 4 * 115);
        let tags: Vec<usize> = spare.iter().map(|(k, _)| k[0]).collect();
        assert_eq!(tags, [4, 5], "over the byte limit: the oldest go first");
    }

    /// On a CPU with AMX, [`forward_to`] handing planes on (in parallel)
    /// gives the f32 path's output bit for bit.
    #[test]
    fn hardware_hand_on_matches_the_f32_path() {
        if no_amx() {
            return;
        }
        for (i, &(a, b)) in CHAINS.iter().enumerate() {
            let (g1, g2) = (geometry(a), geometry(b));
            let seed = 10 * i as u64 + 5;
            let x = values(g1.n * g1.cin * g1.h * g1.w, seed);
            let w1 = values(g1.cout * g1.cin * g1.k * g1.k, seed + 1);
            let w2 = values(g2.cout * g2.cin * g2.k * g2.k, seed + 2);
            let (b1, b2) = (values(g1.cout, seed + 3), values(g2.cout, seed + 4));
            let ep1 = Some(Epilogue {
                bias: &b1,
                relu: true,
            });
            let ep2 = Some(Epilogue {
                bias: &b2,
                relu: true,
            });
            let want = forward(&g2, &forward(&g1, &x, &w1, ep1), &w2, ep2);
            let Output::Planes(p) = forward_to(&g1, Input::F32(&x), &w1, ep1, Some(&g2)) else {
                panic!("asked for planes")
            };
            let Output::F32(got) = forward_to(&g2, Input::Planes(&p), &w2, ep2, None) else {
                panic!("asked for f32")
            };
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "chain {i}: outputs differ on the hardware");
        }
    }

    /// The weight gradient of the bf16-rounded operands in f64.
    fn grad_reference(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f64> {
        let mut dw = vec![0f64; g.cout * g.cin * g.k * g.k];
        each_product(g, |xi, wi, o| dw[wi] += bf(x[xi]) * bf(dy[o]));
        dw
    }

    /// [`SHAPES`], and a batch over two chunks.
    fn grad_shapes() -> Vec<Shape> {
        let mut shapes = SHAPES.to_vec();
        shapes.push((WGRAD_CHUNK + 3, 16, 5, 6, 20, 3, 1, 1));
        shapes
    }

    #[test]
    fn weight_grad_on_the_model_matches_the_definition() {
        let mut s = GradScratch::default();
        for (i, shape) in grad_shapes().into_iter().enumerate() {
            let g = geometry(shape);
            let x = values(g.n * g.cin * g.h * g.w, i as u64 + 1);
            let dy = values(g.n * g.cout * g.ho * g.wo, i as u64 + 300);
            let gl = GradLayout::new(&g);
            let partials: Vec<Vec<f32>> = (0..g.n.div_ceil(WGRAD_CHUNK))
                .map(|chunk| {
                    let images = chunk * WGRAD_CHUNK..((chunk + 1) * WGRAD_CHUNK).min(g.n);
                    // SAFETY: the model unit is always configured.
                    unsafe {
                        grad_chunk(&mut Emulated::default(), &g, &gl, &x, &dy, images, &mut s)
                    }
                })
                .collect();
            let len = g.k * g.k * gl.cinp * gl.l.cpad;
            let got = unpack_grad(&g, &gl, &super::super::sum_in_order(partials, len));
            check(
                &got,
                &grad_reference(&g, &x, &dy),
                &format!("weight gradient {g:?}"),
            );
        }
    }

    /// On a CPU with AMX, [`weight_grad`] (the hardware, in parallel)
    /// matches the definition.
    #[test]
    fn weight_grad_on_the_hardware_matches_the_definition() {
        if no_amx() {
            return;
        }
        for (i, shape) in grad_shapes().into_iter().enumerate() {
            let g = geometry(shape);
            let x = values(g.n * g.cin * g.h * g.w, i as u64 + 1);
            let dy = values(g.n * g.cout * g.ho * g.wo, i as u64 + 300);
            let got = weight_grad(&g, &x, &dy);
            check(
                &got,
                &grad_reference(&g, &x, &dy),
                &format!("weight gradient {g:?} on the hardware"),
            );
        }
    }

    /// The input gradient of the bf16-rounded operands in f64.
    fn input_grad_reference(g: &Geometry, dy: &[f32], w: &[f32]) -> Vec<f64> {
        let mut dx = vec![0f64; g.n * g.cin * g.h * g.w];
        each_product(g, |xi, wi, o| dx[xi] += bf(w[wi]) * bf(dy[o]));
        dx
    }

    /// The stride-2 shapes of [`SHAPES`] (odd kernels 1, 3, 5; padding 0,
    /// 1, 2; odd and even sizes), each through [`input_grad_stride2`]'s
    /// per-image code on the model, one scratch for all (and the forward's
    /// shapes in between, so that buffers change geometry).
    #[test]
    fn stride2_input_grad_on_the_model_matches_the_definition() {
        let mut s = Scratch::default();
        for (i, &shape) in SHAPES.iter().enumerate() {
            let g = geometry(shape);
            if g.stride != 2 {
                let x = values(g.n * g.cin * g.h * g.w, 7);
                let wt = values(g.cout * g.cin * g.k * g.k, 8);
                run_on(&mut Emulated::default(), &mut s, &g, &x, &wt, None);
                continue;
            }
            let d = Dual::new(&g).expect("every stride-2 test shape fits");
            let dy = values(g.n * g.cout * g.ho * g.wo, i as u64 + 400);
            let wt = values(g.cout * g.cin * g.k * g.k, i as u64 + 500);
            let phases = d.operands(&g, &wt);
            let (image_in, image_out) = (g.cin * g.h * g.w, g.cout * g.ho * g.wo);
            let mut got = vec![f32::NAN; g.n * image_in];
            for (o, img) in got
                .chunks_exact_mut(image_in)
                .zip(dy.chunks_exact(image_out))
            {
                // SAFETY: `MaybeUninit<f32>` has the layout of `f32`; the view
                // only receives writes.
                let o = unsafe { &mut *(o as *mut [f32] as *mut [MaybeUninit<f32>]) };
                // SAFETY: the model unit is always configured.
                unsafe { dual_image(&mut Emulated::default(), &g, &d, &phases, img, o, &mut s) };
            }
            check(
                &got,
                &input_grad_reference(&g, &dy, &wt),
                &format!("stride-2 input gradient {g:?}"),
            );
        }
    }

    /// On a CPU with AMX, [`input_grad_stride2`] (the hardware, in
    /// parallel) matches the definition.
    #[test]
    fn stride2_input_grad_on_the_hardware_matches_the_definition() {
        if no_amx() {
            return;
        }
        for (i, &shape) in SHAPES.iter().enumerate().filter(|(_, s)| s.7 == 2) {
            let g = geometry(shape);
            assert!(usable_input_grad_stride2(&g), "{g:?}");
            let dy = values(g.n * g.cout * g.ho * g.wo, i as u64 + 400);
            let wt = values(g.cout * g.cin * g.k * g.k, i as u64 + 500);
            let got = input_grad_stride2(&g, &dy, &wt);
            check(
                &got,
                &input_grad_reference(&g, &dy, &wt),
                &format!("stride-2 input gradient {g:?} on the hardware"),
            );
        }
    }

    /// On a CPU with AMX, [`forward`] (the hardware, in parallel) matches
    /// the definition as the model does.
    #[test]
    fn hardware_matches_the_definition() {
        if no_amx() {
            return;
        }
        for (i, &shape) in SHAPES.iter().enumerate() {
            let g = geometry(shape);
            let (n, cin, h, w, cout, k) = (g.n, g.cin, g.h, g.w, g.cout, g.k);
            let x = values(n * cin * h * w, i as u64 + 1);
            let wt = values(cout * cin * k * k, i as u64 + 100);
            let bias = values(cout, i as u64 + 200);
            let ep = Some(Epilogue {
                bias: &bias,
                relu: true,
            });
            let hw = forward(&g, &x, &wt, ep);
            check(
                &hw,
                &reference(&g, &x, &wt, &bias, true),
                &format!("{g:?} on the hardware"),
            );
        }
    }
}
