//! Winograd F(2x2, 3x3) for 3x3, stride-1 convolutions on CPU (f32).
//!
//! A 2x2 output tile of a 3x3 convolution is computed from a 4x4 input tile
//! with 16 multiplications instead of 36 (Lavin & Gray, 2016):
//!
//! ```text
//! Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A
//! ```
//!
//! Summed over input channels, the element-wise product becomes 16
//! independent GEMMs `M[ξ] = U[ξ] V[ξ]` (`U[ξ]` `[Cout, Cin]`, `V[ξ]`
//! `[Cin, tiles]`), so the multiply count falls 2.25x and the work stays in
//! the GEMM kernel. The same transforms give both gradients:
//!
//! * input gradient: a stride-1 3x3 convolution of the output gradient with
//!   the flipped, transposed kernel and padding `2 - pad`;
//! * weight gradient: `dU[ξ] = Σ_tiles (A dY Aᵀ)[ξ] V[ξ]ᵀ`, then
//!   `dg = Gᵀ dU G`.
//!
//! With f32 inputs the result differs from a direct convolution by rounding
//! only (the transforms use the exact constants 0, ±1 and ±1/2); the tests
//! hold it to 1e-5 relative against the im2col path.
//!
//! Images are processed in chunks whose size depends only on the geometry;
//! the weight gradient accumulates fixed groups of consecutive chunks and
//! sums the groups in order, so results do not depend on the thread count.
//!
//! With bf16 operands, the forward (and so the input gradient) transforms
//! two channels at a time and writes `V` rounded and packed for the GEMM
//! kernel directly; `V` never exists in f32.

use std::mem::MaybeUninit;

use faer::linalg::matmul::matmul;
use faer::{Accum, Par};
use rayon::prelude::*;

use super::bf16::{PackedA, PackedB};
use super::scratch::{self, Pool};
use super::{bf16, rm, rm_mut, sum_in_order, Epilogue, Geometry};

/// Tile columns per GEMM that a chunk of images aims for. 128 keeps a
/// chunk's transformed tiles in L2 for 192 channels; measured against 64,
/// 256 and 512 (docs/performance.md), 128 gave the fastest training step.
const TARGET_COLS: usize = 128;

/// The most partial sums the weight gradient keeps: consecutive chunks of
/// images are grouped by position (never by thread), each group's products
/// accumulate in chunk order, and the groups' sums are added in order.
const GROUPS: usize = 8;

/// Whether a geometry takes the Winograd path: a 3x3 stride-1 kernel with
/// enough channels on both sides for the 16 GEMMs to be worth it.
pub(super) fn eligible(g: &Geometry) -> bool {
    g.k == 3 && g.stride == 1 && g.pad <= 2 && g.cin >= 16 && g.cout >= 16
}

/// The geometry of the input gradient seen as a forward convolution: the
/// output gradient `[N, Cout, Ho, Wo]` convolved with the flipped,
/// transposed kernel, padded `2 - pad`, gives `[N, Cin, H, W]`.
pub(super) fn dual(g: &Geometry) -> Geometry {
    Geometry {
        n: g.n,
        cin: g.cout,
        h: g.ho,
        w: g.wo,
        cout: g.cin,
        k: 3,
        stride: 1,
        pad: 2 - g.pad,
        ho: g.h,
        wo: g.w,
    }
}

/// How a geometry's outputs split into square tiles and images into
/// chunks (F(2x2, 3x3) here, F(4x4, 3x3) in `winograd4`).
#[derive(Clone, Copy)]
pub(super) struct Tiles {
    /// Tile rows and columns.
    pub(super) th: usize,
    pub(super) tw: usize,
    /// Tiles of one image.
    pub(super) per_image: usize,
    /// Images per chunk.
    pub(super) chunk: usize,
}

impl Tiles {
    /// 2x2 tiles, chunks of about [`TARGET_COLS`] tile columns.
    fn new(g: &Geometry) -> Self {
        Self::of(g, 2, TARGET_COLS)
    }

    /// `side x side` output tiles, chunks of about `target` tile columns.
    pub(super) fn of(g: &Geometry, side: usize, target: usize) -> Self {
        let (th, tw) = (g.ho.div_ceil(side), g.wo.div_ceil(side));
        let per_image = th * tw;
        let chunk = (target / per_image).clamp(1, g.n.max(1));
        Self {
            th,
            tw,
            per_image,
            chunk,
        }
    }

    pub(super) fn chunks(&self, n: usize) -> usize {
        n.div_ceil(self.chunk)
    }

    /// Inside the chunked loop, GEMMs run single-threaded when there are
    /// enough chunks to keep every thread busy.
    pub(super) fn par(&self, n: usize) -> Par {
        if self.chunks(n) >= rayon::current_num_threads() {
            Par::Seq
        } else {
            Par::rayon(0)
        }
    }

    /// The weight gradient's groups: chunks are gathered into at most
    /// [`GROUPS`] groups by position alone (each accumulates its chunks'
    /// products in order into one partial); images per group, and whether
    /// the GEMMs inside a group run in parallel (fewer groups than threads).
    pub(super) fn wgrad_groups(&self, n: usize) -> (usize, Par) {
        let group = self.chunks(n).div_ceil(GROUPS).max(1) * self.chunk;
        let par = if n.div_ceil(group) >= rayon::current_num_threads() {
            Par::Seq
        } else {
            Par::rayon(0)
        };
        (group, par)
    }

    /// The forward skeleton of both tile sizes: `x` (`[N, Cin, H, W]`) in
    /// chunks of [`Tiles::chunk`] images, in parallel, each handed to
    /// `chunk(out, images, par)` with its part of the output (`[nb, Cout,
    /// Ho, Wo]`, uninitialised) and how its GEMMs may run in parallel.
    ///
    /// # Safety
    /// `chunk` must write every value of the `out` it is given.
    #[allow(unsafe_code)]
    pub(super) unsafe fn forward_chunks(
        &self,
        g: &Geometry,
        x: &[f32],
        chunk: impl Fn(&mut [MaybeUninit<f32>], &[f32], Par) + Send + Sync,
    ) -> Vec<f32> {
        let (plane, image) = (g.ho * g.wo, g.cin * g.h * g.w);
        let len = g.n * g.cout * plane;
        let mut out = Vec::<f32>::with_capacity(len);
        let par = self.par(g.n);
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(self.chunk * g.cout * plane)
            .zip(x.par_chunks(self.chunk * image))
            .for_each(|(o, xs)| chunk(o, xs, par));
        // SAFETY: the chunks cover `..len`, and the caller promised that
        // `chunk` writes every value of each.
        unsafe { out.set_len(len) };
        out
    }

    /// The weight-gradient skeleton of both tile sizes: `x` and `dy` cut
    /// into the groups of [`Tiles::wgrad_groups`]; each group's chunks of
    /// [`Tiles::chunk`] images are handed in order to `chunk(images,
    /// gradients, du, accumulate, par)`, which writes (the first chunk) or
    /// adds (`accumulate`) its product into the group's partial `du` of
    /// `len` values; the partials are summed in group order.
    pub(super) fn weight_grad_groups(
        &self,
        g: &Geometry,
        x: &[f32],
        dy: &[f32],
        len: usize,
        chunk: impl Fn(&[f32], &[f32], &mut [f32], bool, Par) + Send + Sync,
    ) -> Vec<f32> {
        let (plane, image) = (g.ho * g.wo, g.cin * g.h * g.w);
        let (group, par) = self.wgrad_groups(g.n);
        let partials: Vec<Vec<f32>> = x
            .par_chunks(group * image)
            .zip(dy.par_chunks(group * g.cout * plane))
            .map(|(xg, dg)| {
                let mut du = vec![0f32; len];
                let chunks = xg
                    .chunks(self.chunk * image)
                    .zip(dg.chunks(self.chunk * g.cout * plane));
                for (k, (xs, ds)) in chunks.enumerate() {
                    chunk(xs, ds, &mut du, k > 0, par);
                }
                du
            })
            .collect();
        sum_in_order(partials, len)
    }
}

/// `U = G g Gᵀ` for every kernel: `[16][Cout][Cin]` from `[Cout][Cin][3][3]`.
fn weight_transform(g: &Geometry, w: &[f32]) -> Vec<f32> {
    let (co, ci) = (g.cout, g.cin);
    let mut u = vec![0f32; 16 * co * ci];
    for k in 0..co {
        for c in 0..ci {
            let f = &w[(k * ci + c) * 9..][..9];
            // G f: 4x3.
            let mut t = [[0f32; 3]; 4];
            for j in 0..3 {
                let (a, b, e) = (f[j], f[3 + j], f[6 + j]);
                t[0][j] = a;
                t[1][j] = 0.5 * (a + b + e);
                t[2][j] = 0.5 * (a - b + e);
                t[3][j] = e;
            }
            // (G f) Gᵀ: 4x4.
            for (r, row) in t.iter().enumerate() {
                let [a, b, e] = *row;
                let out = [a, 0.5 * (a + b + e), 0.5 * (a - b + e), e];
                for (s, v) in out.into_iter().enumerate() {
                    u[((r * 4 + s) * co + k) * ci + c] = v;
                }
            }
        }
    }
    u
}

/// `dg = Gᵀ dU G`: `[Cout][Cin][3][3]` from `[16][Cout][Cin]`.
fn weight_untransform(g: &Geometry, du: &[f32]) -> Vec<f32> {
    let (co, ci) = (g.cout, g.cin);
    let mut dw = vec![0f32; co * ci * 9];
    for k in 0..co {
        for c in 0..ci {
            let m = |xi: usize| du[(xi * co + k) * ci + c];
            // Gᵀ m, column by column: cols[s] is column s of the 3x4 result.
            let cols = [0, 1, 2, 3].map(|s| {
                let (m0, m1, m2, m3) = (m(s), m(4 + s), m(8 + s), m(12 + s));
                [m0 + 0.5 * (m1 + m2), 0.5 * (m1 - m2), 0.5 * (m1 + m2) + m3]
            });
            // (Gᵀ m) G: 3x3.
            let out = &mut dw[(k * ci + c) * 9..][..9];
            for r in 0..3 {
                let [m0, m1, m2, m3] = cols.map(|col| col[r]);
                out[r * 3] = m0 + 0.5 * (m1 + m2);
                out[r * 3 + 1] = 0.5 * (m1 - m2);
                out[r * 3 + 2] = 0.5 * (m1 + m2) + m3;
            }
        }
    }
    dw
}

/// Copies channel plane `src` (`h x w`) into the interior of the zero-padded
/// `plane` (`pw` wide, `pad` zeros before the first row and column). The
/// border is never written, so it stays zero from one plane to the next.
fn fill_plane(g: &Geometry, src: &[f32], plane: &mut [f32], pw: usize) {
    let ph = plane.len() / pw;
    let (h_in, w_in) = (g.h.min(ph - g.pad), g.w.min(pw - g.pad));
    for y in 0..h_in {
        super::shuffle::copy(
            &mut plane[(y + g.pad) * pw + g.pad..][..w_in],
            &src[y * g.w..][..w_in],
        );
    }
}

/// `V = Bᵀ d B` of the `tw` tiles of tile row `ty` of one padded plane
/// (`pw = 2 tw + 2` wide) straight into `out`: `out[ξ * stride + at + tx]`
/// is `V[ξ]` of tile `tx` (`stride >= tw`). `e` is scratch of `4 * pw`.
///
/// `Bᵀ` combines four padded input rows element-wise, then `B` combines
/// columns, each of the 16 outputs a contiguous run of tiles.
#[allow(clippy::too_many_arguments)]
fn tile_row(
    plane: &[f32],
    pw: usize,
    ty: usize,
    tw: usize,
    e: &mut [f32],
    out: &mut [f32],
    stride: usize,
    at: usize,
) {
    let r = |k: usize| &plane[(2 * ty + k) * pw..][..pw];
    let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
    let (e0, rest) = e[..4 * pw].split_at_mut(pw);
    let (e1, rest) = rest.split_at_mut(pw);
    let (e2, e3) = rest.split_at_mut(pw);
    for x in 0..pw {
        e0[x] = r0[x] - r2[x];
        e1[x] = r1[x] + r2[x];
        e2[x] = r2[x] - r1[x];
        e3[x] = r1[x] - r3[x];
    }
    for (ri, e) in [&*e0, &*e1, &*e2, &*e3].into_iter().enumerate() {
        // The four outputs of this row combination: ξ = 4 ri .. 4 ri + 3.
        let [y0, y1, y2, y3] = four_runs(out, 4 * ri * stride + at, stride, tw);
        let e = &e[..2 * tw + 2];
        for tx in 0..tw {
            let (q0, q1, q2, q3) = (e[2 * tx], e[2 * tx + 1], e[2 * tx + 2], e[2 * tx + 3]);
            y0[tx] = q0 - q2;
            y1[tx] = q1 + q2;
            y2[tx] = q2 - q1;
            y3[tx] = q1 - q3;
        }
    }
}

/// The runs `out[first + k * stride..][..len]` for `k = 0..4`.
///
/// # Panics
/// When `stride < len` (the runs would overlap) or the last run does not
/// fit in `out`.
fn four_runs(out: &mut [f32], first: usize, stride: usize, len: usize) -> [&mut [f32]; 4] {
    assert!(stride >= len, "runs of {len} values {stride} apart overlap");
    let (_, rest) = out.split_at_mut(first);
    let (a, rest) = rest.split_at_mut(stride);
    let (b, rest) = rest.split_at_mut(stride);
    let (c, d) = rest.split_at_mut(stride);
    [&mut a[..len], &mut b[..len], &mut c[..len], &mut d[..len]]
}

/// Scratch of the portable [`plane_tiles`]: a zero-padded plane and the
/// four row combinations (the AVX-512 path keeps all of it in registers).
struct PlaneScratch<'a> {
    plane: &'a mut [f32],
    e: &'a mut [f32],
    /// Width of the padded plane, `2 tw + 2`.
    pw: usize,
}

/// Carves [`PlaneScratch`] and `extra` more values out of `buf`, all zero.
fn plane_scratch<'a>(
    t: &Tiles,
    extra: usize,
    buf: &'a mut Vec<f32>,
) -> (PlaneScratch<'a>, &'a mut [f32]) {
    let (ph, pw) = (2 * t.th + 2, 2 * t.tw + 2);
    buf.clear();
    buf.resize(ph * pw + 4 * pw + extra, 0.0);
    let (plane, rest) = buf.split_at_mut(ph * pw);
    let (e, extra) = rest.split_at_mut(4 * pw);
    (PlaneScratch { plane, e, pw }, extra)
}

/// `V = Bᵀ d B` of every 4x4 input tile of the channel plane `src` (`h x
/// w`, zero-padded by `pad` before the first row and column and as far as
/// the tiles reach after the last) into `out`: `out[ξ * stride + ty * tw +
/// tx]` is `V[ξ]` of tile `(ty, tx)`.
///
/// With AVX-512 ([`x86::plane_tiles`]) the padding comes from masked loads
/// of `src`, and 16 tiles at a time go through both passes in registers;
/// the portable path copies the plane into a padded one first. Both make
/// the same additions in the same order, so the same values.
#[allow(unsafe_code)]
fn plane_tiles(
    g: &Geometry,
    t: &Tiles,
    src: &[f32],
    s: &mut PlaneScratch<'_>,
    out: &mut [f32],
    stride: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd::avx512f() {
        // SAFETY: the CPU has AVX-512 F.
        unsafe { x86::plane_tiles(g, t, src, out, stride) };
        return;
    }
    plane_tiles_portable(g, t, src, s, out, stride);
}

/// The portable [`plane_tiles`].
fn plane_tiles_portable(
    g: &Geometry,
    t: &Tiles,
    src: &[f32],
    s: &mut PlaneScratch<'_>,
    out: &mut [f32],
    stride: usize,
) {
    fill_plane(g, src, s.plane, s.pw);
    for ty in 0..t.th {
        tile_row(s.plane, s.pw, ty, t.tw, s.e, out, stride, ty * t.tw);
    }
}

/// `V = Bᵀ d B` of every 4x4 input tile of `imgs` (`[nb, Cin, H, W]`) into
/// `v` `[16][Cin][cols]`, `cols = nb * per_image`, a channel plane at a
/// time. `pad` is scratch.
fn input_transform(g: &Geometry, t: &Tiles, imgs: &[f32], v: &mut [f32], pad: &mut Vec<f32>) {
    let nb = imgs.len() / (g.cin * g.h * g.w);
    let cols = nb * t.per_image;
    let (mut s, _) = plane_scratch(t, 0, pad);
    for i in 0..nb {
        for c in 0..g.cin {
            let src = &imgs[(i * g.cin + c) * g.h * g.w..][..g.h * g.w];
            let at = c * cols + i * t.per_image;
            plane_tiles(g, t, src, &mut s, &mut v[at..], g.cin * cols);
        }
    }
}

/// As [`input_transform`], with `V[ξ]` rounded to bf16 and written straight
/// into the packed right operand `vb[ξ]` (`Cin x cols`) of GEMM ξ: channels
/// are transformed two at a time, the pair of a packed word, so `V` never
/// exists in f32.
fn input_transform_bf16(
    g: &Geometry,
    t: &Tiles,
    imgs: &[f32],
    vb: &mut [PackedB],
    pad: &mut Vec<f32>,
) {
    const NR: usize = bf16::NR;
    let nb = imgs.len() / (g.cin * g.h * g.w);
    let (cols, per, pairs) = (nb * t.per_image, t.per_image, g.cin.div_ceil(2));
    let mut dst: Vec<&mut [u32]> = vb.iter_mut().map(|b| b.words_mut(g.cin, cols)).collect();
    let (mut s, outs) = plane_scratch(t, 32 * per, pad);
    let (lo, hi) = outs.split_at_mut(16 * per);
    let image = g.cin * g.h * g.w;
    for i in 0..nb {
        for q in 0..pairs {
            let (c0, c1) = (2 * q, 2 * q + 1);
            let src = |c: usize| &imgs[i * image + c * g.h * g.w..][..g.h * g.w];
            plane_tiles(g, t, src(c0), &mut s, lo, per);
            if c1 < g.cin {
                plane_tiles(g, t, src(c1), &mut s, hi, per);
            } else {
                hi.fill(0.0);
            }
            // The image's tiles of every ξ, cut where they cross a panel.
            let mut j = 0;
            while j < per {
                let col = i * per + j;
                let run = (NR - col % NR).min(per - j);
                let at = ((col / NR) * pairs + q) * NR + col % NR;
                bf16::words_each(&lo[j..], &hi[j..], per, run, &mut dst, at);
                j += run;
            }
        }
    }
    // Columns past `cols` in the last panel are zero.
    if cols % NR != 0 {
        let last = cols / NR;
        for d in &mut dst {
            for q in 0..pairs {
                d[(last * pairs + q) * NR + cols % NR..][..NR - cols % NR].fill(0);
            }
        }
    }
}

/// `Y = Aᵀ M A` of every tile of `m` (`[16][Cout][cols]`) into `out`
/// (`[nb, Cout, Ho, Wo]`), a channel of an image at a time: `Aᵀ` on rows
/// over all the image's tiles at once (long, vectorisable loops), then `A`
/// on columns, a row of tiles at a time. Each finished channel plane gets
/// `ep`, if any, while it is in cache. `tmp` is scratch.
///
/// The loops are written for the compiler to vectorise; on a CPU with
/// AVX-512 the same code is compiled for it (16 lanes instead of SSE's 4,
/// the same operations in the same order, so the same values).
#[allow(unsafe_code)]
#[inline(never)]
fn output_transform(
    g: &Geometry,
    t: &Tiles,
    m: &[f32],
    out: &mut [MaybeUninit<f32>],
    tmp: &mut Vec<f32>,
    ep: Option<Epilogue<'_>>,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd::avx512f() {
        // SAFETY: the CPU has AVX-512 F.
        unsafe { x86::output_transform(g, t, m, out, tmp, ep) };
        return;
    }
    output_transform_body(g, t, m, out, tmp, ep, column_pass);
}

/// `A` on the columns of one output row: `dst[2x] = a0[x] + a1[x] + a2[x]`,
/// `dst[2x + 1] = a1[x] - a2[x] - a3[x]`, for the `dst.len()` outputs, every
/// one of them written.
fn column_pass(a0: &[f32], a1: &[f32], a2: &[f32], a3: &[f32], dst: &mut [MaybeUninit<f32>]) {
    let wo = dst.len();
    for x in 0..wo / 2 {
        dst[2 * x].write(a0[x] + a1[x] + a2[x]);
        dst[2 * x + 1].write(a1[x] - a2[x] - a3[x]);
    }
    if wo % 2 == 1 {
        let x = wo / 2;
        dst[2 * x].write(a0[x] + a1[x] + a2[x]);
    }
}

/// `s` as initialised values.
///
/// # Safety
/// Every element of `s` has been written.
#[allow(unsafe_code)]
pub(super) unsafe fn assume_init(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the caller
    // guarantees every element is initialised.
    unsafe { &mut *(s as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// The body of [`output_transform`], inlined into each instruction set's copy.
#[allow(unsafe_code)]
#[inline(always)]
fn output_transform_body(
    g: &Geometry,
    t: &Tiles,
    m: &[f32],
    out: &mut [MaybeUninit<f32>],
    tmp: &mut Vec<f32>,
    ep: Option<Epilogue<'_>>,
    column: impl Fn(&[f32], &[f32], &[f32], &[f32], &mut [MaybeUninit<f32>]),
) {
    let plane = g.ho * g.wo;
    let nb = out.len() / (g.cout * plane);
    let cols = nb * t.per_image;
    let (tw, per) = (t.tw, t.per_image);
    tmp.clear();
    tmp.resize(8 * per, 0.0);
    for i in 0..nb {
        for k in 0..g.cout {
            let o = &mut out[(i * g.cout + k) * plane..][..plane];
            let row = |xi: usize| &m[(xi * g.cout + k) * cols + i * per..][..per];
            // Aᵀ on rows: a[r][s] over every tile of this channel.
            let (lo, hi) = tmp.split_at_mut(4 * per);
            for s in 0..4 {
                let (m0, m1, m2, m3) = (row(s), row(4 + s), row(8 + s), row(12 + s));
                let a0 = &mut lo[s * per..][..per];
                let a1 = &mut hi[s * per..][..per];
                for x in 0..per {
                    a0[x] = m0[x] + m1[x] + m2[x];
                    a1[x] = m1[x] - m2[x] - m3[x];
                }
            }
            // A on columns, written out row by row.
            for ty in 0..t.th {
                for r in 0..2 {
                    let y = 2 * ty + r;
                    if y >= g.ho {
                        break;
                    }
                    let a = &tmp[r * 4 * per..][..4 * per];
                    let at = |s: usize| &a[s * per + ty * tw..][..tw];
                    let (a0, a1, a2, a3) = (at(0), at(1), at(2), at(3));
                    column(a0, a1, a2, a3, &mut o[y * g.wo..][..g.wo]);
                }
            }
            if let Some(ep) = ep {
                // SAFETY: the rows `y < ho` above wrote all `wo` values each
                // (`2 th >= ho`, and `column` writes all of `dst`).
                ep.apply(k, unsafe { assume_init(o) });
            }
        }
    }
}

/// `A dY Aᵀ` of every 2x2 output-gradient tile of `dy` (`[nb, Cout, Ho, Wo]`)
/// into `dm` `[16][Cout][cols]`; positions past the map's edge count as 0.
/// A channel of an image at a time, each pass over all its tiles at once;
/// `tmp` is scratch. Compiled for AVX-512 where the CPU has it, as
/// [`output_transform`].
#[allow(unsafe_code)]
#[inline(never)]
fn grad_transform(g: &Geometry, t: &Tiles, dy: &[f32], dm: &mut [f32], tmp: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd::avx512f() {
        // SAFETY: the CPU has AVX-512 F.
        unsafe { x86::grad_transform(g, t, dy, dm, tmp) };
        return;
    }
    grad_transform_body(g, t, dy, dm, tmp);
}

/// The body of [`grad_transform`], inlined into each instruction set's copy.
#[inline(always)]
fn grad_transform_body(g: &Geometry, t: &Tiles, dy: &[f32], dm: &mut [f32], tmp: &mut Vec<f32>) {
    let plane = g.ho * g.wo;
    let nb = dy.len() / (g.cout * plane);
    let cols = nb * t.per_image;
    let (w2, per) = (2 * t.tw, t.per_image);
    // Five planes of th x w2: the even rows, the odd rows (zero-extended
    // past the map), and the three row combinations.
    let len = t.th * w2;
    tmp.clear();
    tmp.resize(5 * len, 0.0);
    for i in 0..nb {
        for k in 0..g.cout {
            let d = &dy[(i * g.cout + k) * plane..][..plane];
            let (top, rest) = tmp.split_at_mut(len);
            let (bottom, acc) = rest.split_at_mut(len);
            // The two output-gradient rows of each tile row; columns past
            // `wo` stay zero (never written).
            for ty in 0..t.th {
                top[ty * w2..][..g.wo].copy_from_slice(&d[2 * ty * g.wo..][..g.wo]);
                let b = &mut bottom[ty * w2..][..g.wo];
                if 2 * ty + 1 < g.ho {
                    b.copy_from_slice(&d[(2 * ty + 1) * g.wo..][..g.wo]);
                } else {
                    b.fill(0.0);
                }
            }
            // A on rows: (r0, r0 + r1, r0 - r1, -r1); r0 is `top`.
            let (s1, rest) = acc.split_at_mut(len);
            let (s2, s3) = rest.split_at_mut(len);
            for x in 0..len {
                s1[x] = top[x] + bottom[x];
                s2[x] = top[x] - bottom[x];
                s3[x] = -bottom[x];
            }
            for (r, e) in [&*top, &*s1, &*s2, &*s3].into_iter().enumerate() {
                // Aᵀ on columns: (p, q) -> (p, p + q, p - q, -q), tile by tile.
                let out = |s: usize| ((r * 4 + s) * g.cout + k) * cols + i * per;
                // Four disjoint runs (rows `cout * cols` apart), so the loop
                // vectorises.
                let step = g.cout * cols;
                let (y0, rest) = dm[out(0)..].split_at_mut(step);
                let (y1, rest) = rest.split_at_mut(step);
                let (y2, y3) = rest.split_at_mut(step);
                let (y0, y1, y2, y3) = (
                    &mut y0[..per],
                    &mut y1[..per],
                    &mut y2[..per],
                    &mut y3[..per],
                );
                let e = &e[..2 * per];
                for x in 0..per {
                    let (p, q) = (e[2 * x], e[2 * x + 1]);
                    y0[x] = p;
                    y1[x] = p + q;
                    y2[x] = p - q;
                    y3[x] = -q;
                }
            }
        }
    }
}

/// Scratch buffers one chunk needs, reused across the chunks a thread runs.
#[derive(Default)]
struct Scratch {
    v: Vec<f32>,
    m: Vec<f32>,
    pad: Vec<f32>,
    tmp: Vec<f32>,
    /// The operands of the bf16 GEMMs (the left one only in the weight
    /// gradient, where it changes per chunk).
    packed: Packed,
    /// The 16 packed right operands of the forward's bf16 GEMMs.
    vb: Vec<PackedB>,
}

/// Packed bf16 operands, reused from one GEMM to the next.
type Packed = (PackedA, PackedB);

thread_local! {
    /// Each thread's chunk scratch, kept across calls ([`scratch`]).
    static SCRATCH: Pool<Scratch> = const { Pool::new(Vec::new()) };
    /// Each thread's operands of the GEMMs that [`for_each_xi`] runs in
    /// parallel.
    static PACKED: Pool<Packed> = const { Pool::new(Vec::new()) };
}

/// Runs `gemm(ξ, block)` for the 16 blocks of `len` floats in `out`: one
/// after another with `packed` when the chunks already keep every thread
/// busy (`par` is sequential), else in parallel, with each worker's own
/// [`Packed`].
fn for_each_xi(
    out: &mut [f32],
    len: usize,
    par: Par,
    packed: &mut Packed,
    gemm: impl Fn((usize, &mut [f32]), &mut Packed) + Send + Sync,
) {
    if matches!(par, Par::Seq) {
        out.chunks_mut(len)
            .enumerate()
            .for_each(|job| gemm(job, packed));
    } else {
        out.par_chunks_mut(len)
            .enumerate()
            .for_each(|job| scratch::with(&PACKED, |p| gemm(job, p)));
    }
}

/// `buf`'s first `len` values, growing it (with zeros) when shorter.
pub(super) fn resized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// The forward convolution `[N, Cin, H, W]` * `[Cout, Cin, 3, 3]`, each
/// output plane finished by `ep`, if any; with `bf16`, the 16 GEMMs take
/// bf16-rounded operands.
#[allow(unsafe_code)]
pub(super) fn forward(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    bf16: bool,
    ep: Option<Epilogue<'_>>,
) -> Vec<f32> {
    let t = Tiles::new(g);
    let u = weight_transform(g, w);
    let (co, ci) = (g.cout, g.cin);
    // The transformed kernels, packed once for every chunk.
    let packed_u: Vec<PackedA> = if bf16 {
        u.par_chunks(co * ci)
            .map(|u| PackedA::new(u, co, ci, ci, 1))
            .collect()
    } else {
        Vec::new()
    };
    let image = g.cin * g.h * g.w;
    let chunk = |o: &mut [MaybeUninit<f32>], xs: &[f32], par: Par| {
        scratch::with(&SCRATCH, |s| {
            let cols = xs.len() / image * t.per_image;
            let m = resized(&mut s.m, 16 * g.cout * cols);
            if bf16 {
                s.vb.resize_with(16, PackedB::default);
                input_transform_bf16(g, &t, xs, &mut s.vb, &mut s.pad);
                let vb = &s.vb;
                for_each_xi(m, co * cols, par, &mut s.packed, |(xi, m), _| {
                    bf16::gemm(m, cols, &packed_u[xi], &vb[xi], false);
                });
            } else {
                let v = resized(&mut s.v, 16 * g.cin * cols);
                input_transform(g, &t, xs, v, &mut s.pad);
                let v = &*v;
                for xi in 0..16 {
                    matmul(
                        rm_mut(&mut m[xi * co * cols..][..co * cols], co, cols),
                        Accum::Replace,
                        rm(&u[xi * co * ci..][..co * ci], co, ci),
                        rm(&v[xi * ci * cols..][..ci * cols], ci, cols),
                        1.0,
                        par,
                    );
                }
            }
            output_transform(g, &t, m, o, &mut s.tmp, ep);
        })
    };
    // SAFETY: `output_transform` writes every value of a chunk's output
    // (its rows cover the plane), so the output is not zeroed first.
    unsafe { t.forward_chunks(g, x, chunk) }
}

/// The input gradient `[N, Cin, H, W]` from the output gradient `dy`.
pub(super) fn input_grad(g: &Geometry, dy: &[f32], w: &[f32], bf16: bool) -> Vec<f32> {
    forward(&dual(g), dy, &flipped(g, w), bf16, None)
}

/// The kernel of [`dual`]: `w'[c][k][i][j] = w[k][c][2 - i][2 - j]`.
pub(super) fn flipped(g: &Geometry, w: &[f32]) -> Vec<f32> {
    let mut flipped = vec![0f32; w.len()];
    for k in 0..g.cout {
        for c in 0..g.cin {
            let src = &w[(k * g.cin + c) * 9..][..9];
            let dst = &mut flipped[(c * g.cout + k) * 9..][..9];
            for (j, d) in dst.iter_mut().enumerate() {
                *d = src[8 - j];
            }
        }
    }
    flipped
}

/// The weight gradient `[Cout, Cin, 3, 3]` from the input `x` and the output
/// gradient `dy`; with `bf16`, the 16 GEMMs take bf16-rounded operands.
pub(super) fn weight_grad(g: &Geometry, x: &[f32], dy: &[f32], bf16: bool) -> Vec<f32> {
    let t = Tiles::new(g);
    let image = g.cin * g.h * g.w;
    let (co, ci) = (g.cout, g.cin);
    let chunk = |xs: &[f32], ds: &[f32], du: &mut [f32], accumulate: bool, par: Par| {
        scratch::with(&SCRATCH, |s| {
            let cols = xs.len() / image * t.per_image;
            let v = resized(&mut s.v, 16 * ci * cols);
            input_transform(g, &t, xs, v, &mut s.pad);
            let dm = resized(&mut s.m, 16 * co * cols);
            grad_transform(g, &t, ds, dm, &mut s.tmp);
            let (v, dm) = (&*v, &*dm);
            if bf16 {
                // dU[ξ] = dM[ξ] V[ξ]ᵀ: V[ξ] read transposed (row stride 1).
                for_each_xi(du, co * ci, par, &mut s.packed, |(xi, du), (a, b)| {
                    a.pack(&dm[xi * co * cols..][..co * cols], co, cols, cols, 1);
                    b.pack(&v[xi * ci * cols..][..ci * cols], cols, ci, 1, cols);
                    bf16::gemm(du, ci, a, b, accumulate);
                });
            } else {
                for xi in 0..16 {
                    matmul(
                        rm_mut(&mut du[xi * co * ci..][..co * ci], co, ci),
                        if accumulate {
                            Accum::Add
                        } else {
                            Accum::Replace
                        },
                        rm(&dm[xi * co * cols..][..co * cols], co, cols),
                        rm(&v[xi * ci * cols..][..ci * cols], ci, cols).transpose(),
                        1.0,
                        par,
                    );
                }
            }
        })
    };
    let du = t.weight_grad_groups(g, x, dy, 16 * co * ci, chunk);
    weight_untransform(g, &du)
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use core::arch::x86_64::*;

    use super::super::gather::x86::window;
    use super::{Epilogue, Geometry, MaybeUninit, Tiles};

    /// [`super::output_transform`] compiled for AVX-512.
    ///
    /// # Safety
    /// The CPU has AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn output_transform(
        g: &Geometry,
        t: &Tiles,
        m: &[f32],
        out: &mut [MaybeUninit<f32>],
        tmp: &mut Vec<f32>,
        ep: Option<Epilogue<'_>>,
    ) {
        super::output_transform_body(g, t, m, out, tmp, ep, |a0, a1, a2, a3, dst| {
            // SAFETY: the CPU has AVX-512 F (this function's contract).
            unsafe { column_pass(a0, a1, a2, a3, dst) }
        });
    }

    /// The AVX-512 [`super::column_pass`]: 16 tiles at a time, the even and
    /// odd outputs interleaved by two permutes; the same operations in the
    /// same order, so the same values.
    ///
    /// # Safety
    /// The CPU has AVX-512 F.
    #[target_feature(enable = "avx512f")]
    unsafe fn column_pass(
        a0: &[f32],
        a1: &[f32],
        a2: &[f32],
        a3: &[f32],
        dst: &mut [MaybeUninit<f32>],
    ) {
        let wo = dst.len();
        let tiles = wo.div_ceil(2);
        assert!(a0.len().min(a1.len()).min(a2.len()).min(a3.len()) >= tiles);
        // Lanes 0-15 of `e` are indices 0-15, lanes of `o` 16-31.
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        for x in (0..tiles).step_by(16) {
            let m = lanes(tiles - x);
            // SAFETY: the masked loads read lanes `x..min(x + 16, tiles)`
            // of each row (checked above); the masked stores write outputs
            // `2x..wo` of `dst`, at most 32.
            unsafe {
                let v0 = _mm512_maskz_loadu_ps(m, a0.as_ptr().add(x));
                let v1 = _mm512_maskz_loadu_ps(m, a1.as_ptr().add(x));
                let v2 = _mm512_maskz_loadu_ps(m, a2.as_ptr().add(x));
                let v3 = _mm512_maskz_loadu_ps(m, a3.as_ptr().add(x));
                let e = _mm512_add_ps(_mm512_add_ps(v0, v1), v2);
                let o = _mm512_sub_ps(_mm512_sub_ps(v1, v2), v3);
                let outs = wo - 2 * x;
                let p = dst.as_mut_ptr().add(2 * x).cast::<f32>();
                _mm512_mask_storeu_ps(p, lanes(outs), _mm512_permutex2var_ps(e, lo, o));
                if outs > 16 {
                    _mm512_mask_storeu_ps(
                        p.add(16),
                        lanes(outs - 16),
                        _mm512_permutex2var_ps(e, hi, o),
                    );
                }
            }
        }
    }

    /// [`super::grad_transform`] compiled for AVX-512.
    ///
    /// # Safety
    /// The CPU has AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn grad_transform(
        g: &Geometry,
        t: &Tiles,
        dy: &[f32],
        dm: &mut [f32],
        tmp: &mut Vec<f32>,
    ) {
        super::grad_transform_body(g, t, dy, dm, tmp);
    }

    /// Mask of the first `n` (clamped to 16) lanes.
    #[inline]
    fn lanes(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// The AVX-512 [`super::plane_tiles`]: per tile row and block of 16
    /// tiles, the row combinations of the 34 padded columns the block
    /// reads are made in registers (three vectors each), and the column
    /// pass takes the even and odd columns by one permute each and the
    /// columns two over by one lane shift.
    ///
    /// # Safety
    /// The CPU has AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn plane_tiles(
        g: &Geometry,
        t: &Tiles,
        src: &[f32],
        out: &mut [f32],
        stride: usize,
    ) {
        let (th, tw) = (t.th, t.tw);
        let pw = 2 * tw + 2;
        let (h, w, pad) = (g.h as isize, g.w as isize, g.pad as isize);
        assert!(src.len() >= g.h * g.w);
        assert!(out.len() >= 15 * stride + th * tw && stride >= th * tw);
        let (sp, op) = (src.as_ptr(), out.as_mut_ptr());
        let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        let odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
        for ty in 0..th {
            for tx0 in (0..tw).step_by(16) {
                let base = 2 * tx0;
                // Padded columns base + 16 j.. (j = 0, 1, 2) of padded row
                // 2 ty + k: source row `y - pad`, column `x - pad`, zero
                // outside the plane and past the padded width.
                let load = |k: usize, j: usize| {
                    let y = (2 * ty + k) as isize - pad;
                    let x = (base + 16 * j) as isize - pad;
                    let m = window(x, 0, w) & lanes(pw.saturating_sub(base + 16 * j));
                    if (0..h).contains(&y) && m != 0 {
                        // SAFETY: only lanes `t` with `0 <= x + t < w` are
                        // read, in row `y < h` of `src` (asserted length);
                        // masked lanes do not fault.
                        unsafe { _mm512_maskz_loadu_ps(m, sp.wrapping_offset(y * w + x)) }
                    } else {
                        _mm512_setzero_ps()
                    }
                };
                // Bᵀ on rows: (r0 - r2, r1 + r2, r2 - r1, r1 - r3) of each
                // of the three vectors.
                let mut e = [[_mm512_setzero_ps(); 4]; 3];
                for (j, ej) in e.iter_mut().enumerate() {
                    let (r0, r1, r2, r3) = (load(0, j), load(1, j), load(2, j), load(3, j));
                    *ej = [
                        _mm512_sub_ps(r0, r2),
                        _mm512_add_ps(r1, r2),
                        _mm512_sub_ps(r2, r1),
                        _mm512_sub_ps(r1, r3),
                    ];
                }
                // B on columns: tile tx reads columns 2tx..2tx+4.
                let keep = lanes(tw - tx0);
                let [e0, e1, e2] = e;
                for (ri, ((a, b), c)) in e0.into_iter().zip(e1).zip(e2).enumerate() {
                    let q0 = _mm512_permutex2var_ps(a, even, b);
                    let q1 = _mm512_permutex2var_ps(a, odd, b);
                    // q2[t] = q0[t + 1], q3[t] = q1[t + 1]; the last lanes
                    // are columns base + 32 and base + 33 (c[0], c[1]).
                    let (q0i, q1i) = (_mm512_castps_si512(q0), _mm512_castps_si512(q1));
                    let ci = _mm512_castps_si512(c);
                    let q2 = _mm512_castsi512_ps(_mm512_alignr_epi32::<1>(ci, q0i));
                    let c1 = _mm512_alignr_epi32::<1>(ci, ci);
                    let q3 = _mm512_castsi512_ps(_mm512_alignr_epi32::<1>(c1, q1i));
                    // SAFETY: lanes `tx0..min(tx0 + 16, tw)` of tile row
                    // `ty` of four runs of `out` (`ξ * stride + ty * tw +
                    // tx`, asserted length).
                    unsafe {
                        let y = op.add(ri * 4 * stride + ty * tw + tx0);
                        _mm512_mask_storeu_ps(y, keep, _mm512_sub_ps(q0, q2));
                        _mm512_mask_storeu_ps(y.add(stride), keep, _mm512_add_ps(q1, q2));
                        _mm512_mask_storeu_ps(y.add(2 * stride), keep, _mm512_sub_ps(q2, q1));
                        _mm512_mask_storeu_ps(y.add(3 * stride), keep, _mm512_sub_ps(q1, q3));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3x3 stride-1 geometry with 16 output channels.
    fn geometry(n: usize, cin: usize, h: usize, w: usize, pad: usize) -> Geometry {
        Geometry {
            n,
            cin,
            h,
            w,
            cout: 16,
            k: 3,
            stride: 1,
            pad,
            ho: h + 2 * pad - 2,
            wo: w + 2 * pad - 2,
        }
    }

    /// The dispatched plane transform (AVX-512 where the CPU has it)
    /// equals the definition: each tile's 4x4 window of the zero-padded
    /// plane through `Bᵀ d B`, written at `ξ * stride + tile`. Every
    /// padding, odd and even sizes, planes wider than the tiles reach
    /// (valid convolutions), tile counts around the 16-lane blocks.
    #[test]
    fn plane_tiles_match_the_definition() {
        let bt = [
            [1.0, 0.0, -1.0, 0.0],
            [0.0, 1.0, 1.0, 0.0],
            [0.0, -1.0, 1.0, 0.0],
            [0.0, 1.0, 0.0, -1.0],
        ];
        for (h, w, pad) in [
            (1, 1, 1),
            (5, 7, 1),
            (8, 8, 0),
            (6, 6, 2),
            (16, 16, 1),
            (32, 32, 1),
            (9, 33, 1),
            (4, 35, 2),
            (3, 70, 0),
        ] {
            let g = geometry(1, 16, h, w, pad);
            let t = Tiles::new(&g);
            let src: Vec<f32> = (0..h * w)
                .map(|i| ((i as f32) * 0.731).sin() * 5.0)
                .collect();
            let at = |y: usize, x: usize| -> f32 {
                let (y, x) = (y as isize - pad as isize, x as isize - pad as isize);
                if (0..h as isize).contains(&y) && (0..w as isize).contains(&x) {
                    src[y as usize * w + x as usize]
                } else {
                    0.0
                }
            };
            let stride = t.per_image + 3;
            type Transform =
                fn(&Geometry, &Tiles, &[f32], &mut PlaneScratch<'_>, &mut [f32], usize);
            let (dispatched, portable): (Transform, Transform) =
                (plane_tiles, plane_tiles_portable);
            for (name, transform) in [("dispatched", dispatched), ("portable", portable)] {
                let mut got = vec![f32::NAN; 16 * stride];
                let mut buf = Vec::new();
                let (mut s, _) = plane_scratch(&t, 0, &mut buf);
                transform(&g, &t, &src, &mut s, &mut got, stride);
                for ty in 0..t.th {
                    for tx in 0..t.tw {
                        let d = |i: usize, j: usize| at(2 * ty + i, 2 * tx + j);
                        for (r, br) in bt.iter().enumerate() {
                            for (c, bc) in bt.iter().enumerate() {
                                // (Bᵀ d B)[r][c] = Σ_ij Bᵀ[r][i] d[i][j] Bᵀ[c][j]:
                                // at most two terms per sum, so exact in f32 up
                                // to one rounding per addition.
                                let want: f32 = (0..4)
                                    .map(|i| br[i] * (0..4).map(|j| d(i, j) * bc[j]).sum::<f32>())
                                    .sum();
                                let v = got[(r * 4 + c) * stride + ty * t.tw + tx];
                                assert!(
                                (v - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{name}: {h}x{w} pad {pad}, tile ({ty}, {tx}), ξ ({r}, {c}): {v} vs {want}"
                            );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The fused bf16 transform writes exactly the words that the f32
    /// transform followed by the packer gives: odd and even channel counts,
    /// odd map sizes, every padding, tile rows that cross a panel of the
    /// packed operand, and column counts that do not fill the last panel.
    #[test]
    fn fused_bf16_transform_equals_transform_then_pack() {
        for (n, cin, h, w, pad) in [
            (3, 17, 7, 9, 1),
            (2, 16, 8, 8, 0),
            (1, 20, 6, 6, 2),
            (4, 33, 16, 16, 1),
            (1, 18, 13, 31, 1),
            (2, 16, 32, 32, 1),
        ] {
            let g = geometry(n, cin, h, w, pad);
            let t = Tiles::new(&g);
            let x: Vec<f32> = (0..n * cin * h * w)
                .map(|i| ((i as f32) * 0.37).sin() * 3.0)
                .collect();
            let cols = n * t.per_image;
            let mut v = vec![0f32; 16 * cin * cols];
            input_transform(&g, &t, &x, &mut v, &mut Vec::new());
            let mut fused: Vec<PackedB> = (0..16).map(|_| PackedB::default()).collect();
            // Stale words from a larger earlier call must not survive.
            for b in &mut fused {
                b.words_mut(cin + 5, cols + 40).fill(u32::MAX);
            }
            input_transform_bf16(&g, &t, &x, &mut fused, &mut Vec::new());
            for (xi, b) in fused.iter().enumerate() {
                let mut want = PackedB::default();
                want.pack(&v[xi * cin * cols..][..cin * cols], cin, cols, cols, 1);
                assert_eq!(
                    b.raw(),
                    want.raw(),
                    "xi {xi}, geometry {n} {cin} {h} {w} {pad}"
                );
            }
        }
    }
}
