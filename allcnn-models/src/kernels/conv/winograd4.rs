//! Winograd F(4x4, 3x3) for 3x3, stride-1 convolutions on CPU (f32).
//!
//! A 4x4 output tile of a 3x3 convolution comes from a 6x6 input tile with
//! 36 multiplications instead of 144 (Lavin & Gray, 2016, interpolation
//! points 0, ±1, ±2 and ∞):
//!
//! ```text
//! Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A
//!
//!      ⎡4  0 -5  0  1  0⎤         ⎡ 1/4    0    0 ⎤
//!      ⎢0 -4 -4  1  1  0⎥         ⎢-1/6 -1/6 -1/6 ⎥        ⎡1  1  1  1  1  0⎤
//! Bᵀ = ⎢0  4 -4 -1  1  0⎥     G = ⎢-1/6  1/6 -1/6 ⎥   Aᵀ = ⎢0  1 -1  2 -2  0⎥
//!      ⎢0 -2 -1  2  1  0⎥         ⎢1/24 1/12  1/6 ⎥        ⎢0  1  1  4  4  0⎥
//!      ⎢0  2 -1 -2  1  0⎥         ⎢1/24 -1/12 1/6 ⎥        ⎣0  1 -1  8 -8  1⎦
//!      ⎣0  4  0 -5  0  1⎦         ⎣   0    0    1 ⎦
//! ```
//!
//! Summed over input channels the element-wise product becomes 36 GEMMs
//! `M[ξ] = U[ξ] V[ξ]`, so the multiply count falls 4x (F(2x2, 3x3): 2.25x)
//! and the work stays in the GEMM kernel. The input gradient is the forward
//! of [`super::winograd::dual`]; the weight gradient is
//! `dU[ξ] = Σ_tiles (A dY Aᵀ)[ξ] V[ξ]ᵀ`, then `dg = Gᵀ dU G`.
//!
//! The price is rounding: the transforms' constants (4, 5, 8, 1/6, 1/24)
//! are not all powers of two, and larger tiles sum more terms, so results
//! differ from a direct convolution by up to about 1e-5 relative to the
//! largest output instead of F(2x2, 3x3)'s 1e-7 (8e-6 measured on a
//! 96-channel layer; tested to 1e-4 against im2col).
//! Where a map is too small for 4x4 tiles to save work (a 6x6 output needs
//! as many multiplications either way) the caller keeps F(2x2, 3x3)
//! ([`pays`]).
//!
//! Each tile's values are gathered by position (`[a][b][tile]`, the tiles
//! of one channel in every image of a chunk side by side), so both passes
//! of every transform are contiguous loops over all those tiles at once;
//! they run from copies compiled for AVX-512 or AVX2 where the CPU has
//! them (`wide_kernel!`), the same operations in the same order, so the
//! same values. Images are processed in chunks whose size depends only on
//! the geometry, and the weight gradient sums fixed groups of chunks in
//! order, so results do not depend on the thread count.

use std::mem::MaybeUninit;

use faer::linalg::matmul::matmul;
use faer::{Accum, Par};
use rayon::prelude::*;

use super::super::simd;
use super::scratch::{self, Pool};
use super::winograd::{resized, Tiles};
use super::{rm, rm_mut, Epilogue, Geometry};

/// Tile columns per GEMM that a chunk of images aims for. 64, 128 and 256
/// were within the noise of one another in whole training steps (2-core
/// Zen 3, docs/performance.md); 64 keeps a chunk's tiles smallest.
const TARGET_COLS: usize = 64;

/// Transformed values per tile.
const XI: usize = 36;

/// Whether 4x4 tiles need fewer multiplications than 2x2 tiles for an
/// output of `ho x wo` (36 per 4x4 tile against 16 per 2x2 tile; tiles
/// past the edge count whole). False for maps of 6x6 and less.
pub(super) fn pays(ho: usize, wo: usize) -> bool {
    XI * ho.div_ceil(4) * wo.div_ceil(4) < 16 * ho.div_ceil(2) * wo.div_ceil(2)
}

/// 1/6, 1/12 and 1/24 (rounded to f32: multiplying by them rounds no
/// worse than dividing, and is cheaper).
const SIXTH: f32 = 1.0 / 6.0;
const TWELFTH: f32 = 1.0 / 12.0;
const TWENTY_FOURTH: f32 = 1.0 / 24.0;

/// `G f` for the three values `f` (a column or a row of a kernel).
#[inline(always)]
fn g6(a: f32, b: f32, c: f32) -> [f32; 6] {
    [
        a * 0.25,
        -(a + b + c) * SIXTH,
        -(a - b + c) * SIXTH,
        a * TWENTY_FOURTH + b * TWELFTH + c * SIXTH,
        a * TWENTY_FOURTH - b * TWELFTH + c * SIXTH,
        c,
    ]
}

/// `Gᵀ m` for the six values `m`.
#[inline(always)]
fn gt3(m: [f32; 6]) -> [f32; 3] {
    let [m0, m1, m2, m3, m4, m5] = m;
    [
        m0 * 0.25 - (m1 + m2) * SIXTH + (m3 + m4) * TWENTY_FOURTH,
        (m2 - m1) * SIXTH + (m3 - m4) * TWELFTH,
        (m3 + m4 - m1 - m2) * SIXTH + m5,
    ]
}

/// `U = G g Gᵀ` for every kernel: `[Cout][36][Cin]` from `[Cout][Cin][3][3]`
/// (`U[ξ]` is the `Cout x Cin` matrix of rows `36 Cin` apart, [`u_xi`]).
fn weight_transform(g: &Geometry, w: &[f32]) -> Vec<f32> {
    let ci = g.cin;
    let mut u = vec![0f32; g.cout * XI * ci];
    u.par_chunks_mut(XI * ci).enumerate().for_each(|(k, uk)| {
        for c in 0..ci {
            let f = &w[(k * ci + c) * 9..][..9];
            // G f: 6x3, column by column.
            let cols = [0, 1, 2].map(|j| g6(f[j], f[3 + j], f[6 + j]));
            for r in 0..6 {
                let row = g6(cols[0][r], cols[1][r], cols[2][r]);
                for (s, v) in row.into_iter().enumerate() {
                    uk[(r * 6 + s) * ci + c] = v;
                }
            }
        }
    });
    u
}

/// `U[ξ]` (or `dU[ξ]`) of a `[Cout][36][Cin]` buffer as a `Cout x Cin` matrix.
fn u_xi(u: &[f32], xi: usize, co: usize, ci: usize) -> faer::MatRef<'_, f32> {
    faer::MatRef::from_row_major_slice_with_stride(&u[xi * ci..], co, ci, XI * ci)
}

/// As [`u_xi`], mutable. (Built as the transpose of a column-major view:
/// faer 0.24's `MatMut::from_row_major_slice_with_stride_mut` swaps the
/// strides and so views the data column-major.)
fn u_xi_mut(u: &mut [f32], xi: usize, co: usize, ci: usize) -> faer::MatMut<'_, f32> {
    faer::MatMut::from_column_major_slice_with_stride_mut(&mut u[xi * ci..], ci, co, XI * ci)
        .transpose_mut()
}

/// `dg = Gᵀ dU G`: `[Cout][Cin][3][3]` from `[Cout][36][Cin]`.
fn weight_untransform(g: &Geometry, du: &[f32]) -> Vec<f32> {
    let ci = g.cin;
    let mut dw = vec![0f32; g.cout * ci * 9];
    dw.par_chunks_mut(ci * 9).enumerate().for_each(|(k, dwk)| {
        let duk = &du[k * XI * ci..][..XI * ci];
        for c in 0..ci {
            let m = |xi: usize| duk[xi * ci + c];
            // Gᵀ m, column by column: cols[s] is column s of the 3x6 result.
            let cols: [[f32; 3]; 6] =
                std::array::from_fn(|s| gt3(std::array::from_fn(|r| m(r * 6 + s))));
            let out = &mut dwk[c * 9..][..9];
            for r in 0..3 {
                let row = gt3(std::array::from_fn(|s| cols[s][r]));
                out[r * 3..][..3].copy_from_slice(&row);
            }
        }
    });
    dw
}

/// `Bᵀ` (or `B` on columns) of six values, element-wise over slices:
/// `out[r][x] = Σ_i Bᵀ[r][i] d_i[x]` for the first `len` elements.
#[inline(always)]
fn bt_rows(d: [&[f32]; 6], out: [&mut [f32]; 6], len: usize) {
    let [d0, d1, d2, d3, d4, d5] = d.map(|s| &s[..len]);
    let [o0, o1, o2, o3, o4, o5] = out.map(|s| &mut s[..len]);
    for x in 0..len {
        let (a, b, c, e, f, h) = (d0[x], d1[x], d2[x], d3[x], d4[x], d5[x]);
        o0[x] = 4.0 * a - 5.0 * c + f;
        o1[x] = (f + e) - 4.0 * (b + c);
        o2[x] = (f - e) + 4.0 * (b - c);
        o3[x] = (f - c) + 2.0 * (e - b);
        o4[x] = (f - c) - 2.0 * (e - b);
        o5[x] = 4.0 * b - 5.0 * e + h;
    }
}

/// `A` applied to four values (a tile's four outputs' gradients, along a
/// row or a column), element-wise over slices: six results.
#[inline(always)]
fn a_rows(q: [&[f32]; 4], out: [&mut [f32]; 6], len: usize) {
    let [q0, q1, q2, q3] = q.map(|s| &s[..len]);
    let [o0, o1, o2, o3, o4, o5] = out.map(|s| &mut s[..len]);
    for x in 0..len {
        let (a, b, c, d) = (q0[x], q1[x], q2[x], q3[x]);
        o0[x] = a;
        o1[x] = (a + c) + (b + d);
        o2[x] = (a + c) - (b + d);
        o3[x] = (a + 4.0 * c) + 2.0 * (b + 4.0 * d);
        o4[x] = (a + 4.0 * c) - 2.0 * (b + 4.0 * d);
        o5[x] = d;
    }
}

/// `Aᵀ` applied to six values: four results.
#[inline(always)]
fn at_rows(m: [&[f32]; 6], out: [&mut [f32]; 4], len: usize) {
    let [m0, m1, m2, m3, m4, m5] = m.map(|s| &s[..len]);
    let [o0, o1, o2, o3] = out.map(|s| &mut s[..len]);
    for x in 0..len {
        let (p, q) = (m1[x] + m2[x], m1[x] - m2[x]);
        let (r, s) = (m3[x] + m4[x], m3[x] - m4[x]);
        o0[x] = m0[x] + p + r;
        o1[x] = q + 2.0 * s;
        o2[x] = p + 4.0 * r;
        o3[x] = q + 8.0 * s + m5[x];
    }
}

/// Splits `buf` into `N` consecutive runs of `len`.
fn runs<const N: usize>(buf: &mut [f32], len: usize) -> [&mut [f32]; N] {
    let mut rest = buf;
    std::array::from_fn(|_| {
        let (a, b) = std::mem::take(&mut rest).split_at_mut(len);
        rest = b;
        a
    })
}

/// The `N` runs `buf[k * stride..][..len]`, `k = 0..N`.
///
/// # Panics
/// When `stride < len` (the runs would overlap) or the last run does not
/// fit in `buf`.
fn strided_runs<const N: usize>(buf: &mut [f32], stride: usize, len: usize) -> [&mut [f32]; N] {
    assert!(stride >= len, "runs of {len} values {stride} apart overlap");
    let mut rest = buf;
    std::array::from_fn(|k| {
        let r = std::mem::take(&mut rest);
        let (run, after) = if k + 1 < N {
            r.split_at_mut(stride)
        } else {
            (r, &mut [][..])
        };
        rest = after;
        &mut run[..len]
    })
}

/// Defines `$name`, which runs the `#[inline(always)]` function `$body`
/// from a copy compiled for AVX-512 (with AVX2 and FMA) or for AVX2 and
/// FMA where the CPU has them ([`simd::avx512`], [`simd::avx2`]), else at
/// the target's baseline: the same operations in the same order (Rust
/// never contracts a multiply and an add), so the same values.
macro_rules! wide_kernel {
    ($(#[$meta:meta])* fn $name:ident => $body:ident($($arg:ident: $ty:ty),* $(,)?)) => {
        $(#[$meta])*
        #[allow(unsafe_code)]
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if simd::avx512() {
                    // SAFETY: the CPU has every feature of the copy.
                    return unsafe { avx512($($arg),*) };
                }
                if simd::avx2() {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

wide_kernel! {
    /// Both passes of `V = Bᵀ d B` over `len` tiles: `d` holds the tiles'
    /// values `[a][b][len]`, `e` receives `Bᵀ` on rows `[r][b][len]`, and
    /// `out[(6 r + s) * stride..][..len]` receives `V[6 r + s]`.
    fn input_passes => input_passes_body(d: &[f32], e: &mut [f32], out: &mut [f32], len: usize, stride: usize)
}

#[inline(always)]
fn input_passes_body(d: &[f32], e: &mut [f32], out: &mut [f32], len: usize, stride: usize) {
    for b in 0..6 {
        let src = std::array::from_fn(|a| &d[(a * 6 + b) * len..][..len]);
        bt_rows(src, strided_runs(&mut e[b * len..], 6 * len, len), len);
    }
    for r in 0..6 {
        let src = std::array::from_fn(|b| &e[(r * 6 + b) * len..][..len]);
        bt_rows(
            src,
            strided_runs(&mut out[6 * r * stride..], stride, len),
            len,
        );
    }
}

wide_kernel! {
    /// Both passes of `Y = Aᵀ M A` over `len` tiles: `M[ξ]` is
    /// `m[ξ * stride..][..len]`, `a` receives `Aᵀ` on rows `[j][s][len]`,
    /// `c` the outputs `[j][col][len]` (row `j`, column `col` of each tile).
    fn output_passes => output_passes_body(m: &[f32], stride: usize, a: &mut [f32], c: &mut [f32], len: usize)
}

#[inline(always)]
fn output_passes_body(m: &[f32], stride: usize, a: &mut [f32], c: &mut [f32], len: usize) {
    for s in 0..6 {
        let src = std::array::from_fn(|r| &m[(r * 6 + s) * stride..][..len]);
        at_rows(src, strided_runs(&mut a[s * len..], 6 * len, len), len);
    }
    for j in 0..4 {
        let src = std::array::from_fn(|s| &a[(j * 6 + s) * len..][..len]);
        at_rows(src, runs(&mut c[j * 4 * len..], len), len);
    }
}

wide_kernel! {
    /// Both passes of `A dY Aᵀ` over `len` tiles: `q` holds the tiles'
    /// output gradients `[j][col][len]`, `e` receives `A` on columns
    /// `[j][s][len]`, and `dm[(6 r + s) * stride..][..len]` the result.
    fn grad_passes => grad_passes_body(q: &[f32], e: &mut [f32], dm: &mut [f32], len: usize, stride: usize)
}

#[inline(always)]
fn grad_passes_body(q: &[f32], e: &mut [f32], dm: &mut [f32], len: usize, stride: usize) {
    for j in 0..4 {
        let src = std::array::from_fn(|col| &q[(j * 4 + col) * len..][..len]);
        a_rows(src, runs(&mut e[j * 6 * len..], len), len);
    }
    for s in 0..6 {
        let src = std::array::from_fn(|j| &e[(j * 6 + s) * len..][..len]);
        a_rows(
            src,
            strided_runs(&mut dm[s * stride..], 6 * stride, len),
            len,
        );
    }
}

/// `V = Bᵀ d B` of every 6x6 input tile of `imgs` (`[nb, Cin, H, W]`) into
/// `v` `[36][Cin][cols]`, `cols = nb * per_image`, a channel at a time: each
/// image's plane is copied into a zero-padded one, its tiles' 36 values
/// gathered by position, and both passes run over the channel's tiles of
/// every image at once. `buf` is scratch.
fn input_transform(g: &Geometry, t: &Tiles, imgs: &[f32], v: &mut [f32], buf: &mut Vec<f32>) {
    let nb = imgs.len() / (g.cin * g.h * g.w);
    let (per, tw) = (t.per_image, t.tw);
    let cols = nb * per;
    let (ph, pw) = (4 * t.th + 2, 4 * t.tw + 2);
    buf.clear();
    buf.resize(ph * pw + 2 * XI * cols, 0.0);
    let (plane, rest) = buf.split_at_mut(ph * pw);
    let (d, e) = rest.split_at_mut(XI * cols);
    // Only the interior is written, the same positions for every plane,
    // so the border stays zero.
    let (h_in, w_in) = (g.h.min(ph - g.pad), g.w.min(pw - g.pad));
    for c in 0..g.cin {
        for i in 0..nb {
            let src = &imgs[(i * g.cin + c) * g.h * g.w..][..g.h * g.w];
            for y in 0..h_in {
                plane[(y + g.pad) * pw + g.pad..][..w_in].copy_from_slice(&src[y * g.w..][..w_in]);
            }
            // Row `a` of every tile of tile row `ty`: each tile's six
            // values are read together and go to the six runs `[a][b]`.
            for a in 0..6 {
                let mut runs = strided_runs::<6>(&mut d[a * 6 * cols + i * per..], cols, per);
                for ty in 0..t.th {
                    let row = &plane[(4 * ty + a) * pw..][..4 * tw + 2];
                    let [o0, o1, o2, o3, o4, o5] = runs.each_mut().map(|r| &mut r[ty * tw..][..tw]);
                    for tx in 0..tw {
                        let x: &[f32; 6] = row[4 * tx..][..6].try_into().unwrap();
                        (o0[tx], o1[tx], o2[tx], o3[tx], o4[tx], o5[tx]) =
                            (x[0], x[1], x[2], x[3], x[4], x[5]);
                    }
                }
            }
        }
        input_passes(d, e, &mut v[c * cols..], cols, g.cin * cols);
    }
}

/// `Y = Aᵀ M A` of every tile of `m` (`[36][Cout][cols]`) into `out`
/// (`[nb, Cout, Ho, Wo]`), a channel at a time (both passes over its tiles
/// of every image at once), each finished plane given `ep`, if any, while
/// in cache. `tmp` is scratch.
#[allow(unsafe_code)]
fn output_transform(
    g: &Geometry,
    t: &Tiles,
    m: &[f32],
    out: &mut [MaybeUninit<f32>],
    tmp: &mut Vec<f32>,
    ep: Option<Epilogue<'_>>,
) {
    let plane = g.ho * g.wo;
    let nb = out.len() / (g.cout * plane);
    let (tw, per) = (t.tw, t.per_image);
    let cols = nb * per;
    tmp.clear();
    tmp.resize(40 * cols, 0.0);
    let (a, c) = tmp.split_at_mut(24 * cols);
    for k in 0..g.cout {
        output_passes(&m[k * cols..], g.cout * cols, a, c, cols);
        for i in 0..nb {
            let o = &mut out[(i * g.cout + k) * plane..][..plane];
            for (y, orow) in o.chunks_exact_mut(g.wo).enumerate() {
                let (ty, j) = (y / 4, y % 4);
                // Column `col` of the row's tiles, one run per column.
                let at = j * 4 * cols + i * per + ty * tw;
                let [r0, r1, r2, r3] = std::array::from_fn(|col| &c[at + col * cols..][..tw]);
                let tiles = r0.iter().zip(r1).zip(r2).zip(r3);
                for (quad, (((a, b), e), f)) in orow.chunks_mut(4).zip(tiles) {
                    for (v, &x) in quad.iter_mut().zip([a, b, e, f]) {
                        v.write(x);
                    }
                }
            }
            if let Some(ep) = ep {
                // SAFETY: every row `y < ho` of the plane was written whole.
                ep.apply(k, unsafe { super::winograd::assume_init(o) });
            }
        }
    }
}

/// `A dY Aᵀ` of every 4x4 output-gradient tile of `dy` (`[nb, Cout, Ho,
/// Wo]`) into `dm` `[36][Cout][cols]`; positions past the map count as 0.
/// A channel at a time, both passes over its tiles of every image.
fn grad_transform(g: &Geometry, t: &Tiles, dy: &[f32], dm: &mut [f32], tmp: &mut Vec<f32>) {
    let plane = g.ho * g.wo;
    let nb = dy.len() / (g.cout * plane);
    let (tw, per) = (t.tw, t.per_image);
    let cols = nb * per;
    // q: the tiles' values `[j][col][cols]` (zero past the map: never
    // written there); e: A on columns.
    tmp.clear();
    tmp.resize(40 * cols, 0.0);
    let (q, e) = tmp.split_at_mut(16 * cols);
    for k in 0..g.cout {
        for i in 0..nb {
            let d = &dy[(i * g.cout + k) * plane..][..plane];
            for (y, drow) in d.chunks_exact(g.wo).enumerate() {
                let (ty, j) = (y / 4, y % 4);
                // Column `col` of the row's tiles, one run per column.
                let [r0, r1, r2, r3] =
                    strided_runs::<4>(&mut q[j * 4 * cols + i * per + ty * tw..], cols, tw);
                let tiles = r0.iter_mut().zip(r1).zip(r2).zip(r3);
                for (quad, (((a, b), e), f)) in drow.chunks(4).zip(tiles) {
                    for (&v, x) in quad.iter().zip([a, b, e, f]) {
                        *x = v;
                    }
                }
            }
        }
        grad_passes(q, e, &mut dm[k * cols..], cols, g.cout * cols);
    }
}

/// Scratch buffers one chunk needs, reused across the chunks a thread runs.
#[derive(Default)]
struct Scratch {
    v: Vec<f32>,
    m: Vec<f32>,
    pad: Vec<f32>,
    tmp: Vec<f32>,
}

thread_local! {
    static SCRATCH: Pool<Scratch> = const { Pool::new(Vec::new()) };
}

/// The forward convolution `[N, Cin, H, W]` * `[Cout, Cin, 3, 3]`, each
/// output plane finished by `ep`, if any.
#[allow(unsafe_code)]
pub(super) fn forward(g: &Geometry, x: &[f32], w: &[f32], ep: Option<Epilogue<'_>>) -> Vec<f32> {
    let t = Tiles::of(g, 4, TARGET_COLS);
    let u = weight_transform(g, w);
    let (co, ci) = (g.cout, g.cin);
    let image = g.cin * g.h * g.w;
    let chunk = |o: &mut [MaybeUninit<f32>], xs: &[f32], par: Par| {
        scratch::with(&SCRATCH, |s| {
            let cols = xs.len() / image * t.per_image;
            let m = resized(&mut s.m, XI * co * cols);
            let v = resized(&mut s.v, XI * ci * cols);
            input_transform(g, &t, xs, v, &mut s.pad);
            for xi in 0..XI {
                matmul(
                    rm_mut(&mut m[xi * co * cols..][..co * cols], co, cols),
                    Accum::Replace,
                    u_xi(&u, xi, co, ci),
                    rm(&v[xi * ci * cols..][..ci * cols], ci, cols),
                    1.0,
                    par,
                );
            }
            output_transform(g, &t, m, o, &mut s.tmp, ep);
        })
    };
    // SAFETY: `output_transform` writes every value of a chunk's output.
    unsafe { t.forward_chunks(g, x, chunk) }
}

/// The input gradient `[N, Cin, H, W]` from the output gradient `dy`.
pub(super) fn input_grad(g: &Geometry, dy: &[f32], w: &[f32]) -> Vec<f32> {
    use super::winograd::{dual, flipped};
    forward(&dual(g), dy, &flipped(g, w), None)
}

/// The weight gradient `[Cout, Cin, 3, 3]` from the input `x` and the output
/// gradient `dy`.
pub(super) fn weight_grad(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let t = Tiles::of(g, 4, TARGET_COLS);
    let image = g.cin * g.h * g.w;
    let (co, ci) = (g.cout, g.cin);
    let chunk = |xs: &[f32], ds: &[f32], du: &mut [f32], accumulate: bool, par: Par| {
        scratch::with(&SCRATCH, |s| {
            let cols = xs.len() / image * t.per_image;
            let v = resized(&mut s.v, XI * ci * cols);
            input_transform(g, &t, xs, v, &mut s.pad);
            let dm = resized(&mut s.m, XI * co * cols);
            grad_transform(g, &t, ds, dm, &mut s.tmp);
            let accum = if accumulate {
                Accum::Add
            } else {
                Accum::Replace
            };
            for xi in 0..XI {
                matmul(
                    u_xi_mut(du, xi, co, ci),
                    accum,
                    rm(&dm[xi * co * cols..][..co * cols], co, cols),
                    rm(&v[xi * ci * cols..][..ci * cols], ci, cols).transpose(),
                    1.0,
                    par,
                );
            }
        })
    };
    let du = t.weight_grad_groups(g, x, dy, XI * co * ci, chunk);
    weight_untransform(g, &du)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(n: usize, cin: usize, cout: usize, h: usize, w: usize, pad: usize) -> Geometry {
        Geometry {
            n,
            cin,
            h,
            w,
            cout,
            k: 3,
            stride: 1,
            pad,
            ho: h + 2 * pad - 2,
            wo: w + 2 * pad - 2,
        }
    }

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32) * 0.7311 + seed).sin()).collect()
    }

    /// The convolution by its definition, in f64.
    fn direct(g: &Geometry, x: &[f32], w: &[f32]) -> Vec<f64> {
        let mut y = vec![0f64; g.n * g.cout * g.ho * g.wo];
        for i in 0..g.n {
            for k in 0..g.cout {
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        let mut acc = 0f64;
                        for c in 0..g.cin {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) = (
                                        (oy + ky) as isize - g.pad as isize,
                                        (ox + kx) as isize - g.pad as isize,
                                    );
                                    if (0..g.h as isize).contains(&iy)
                                        && (0..g.w as isize).contains(&ix)
                                    {
                                        let xv = x[((i * g.cin + c) * g.h + iy as usize) * g.w
                                            + ix as usize];
                                        acc += f64::from(xv)
                                            * f64::from(w[((k * g.cin + c) * 3 + ky) * 3 + kx]);
                                    }
                                }
                            }
                        }
                        y[((i * g.cout + k) * g.ho + oy) * g.wo + ox] = acc;
                    }
                }
            }
        }
        y
    }

    fn max_rel(got: &[f32], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
        got.iter()
            .zip(want)
            .fold(0f64, |m, (&g, &w)| m.max((f64::from(g) - w).abs()))
            / scale
    }

    /// The forward against the definition (in f64): odd and even sizes,
    /// every padding, maps whose tiles run past the edge, valid
    /// convolutions, chunks that do not divide the batch.
    #[test]
    fn forward_matches_the_definition() {
        for (n, cin, cout, h, w, pad) in [
            (3, 4, 5, 7, 9, 1),
            (2, 3, 2, 8, 8, 0),
            (1, 2, 3, 6, 6, 2),
            (5, 3, 4, 16, 16, 1),
            (1, 2, 2, 13, 31, 1),
            (2, 2, 2, 32, 32, 1),
            (1, 1, 1, 1, 1, 1),
        ] {
            let g = geometry(n, cin, cout, h, w, pad);
            let x = values(n * cin * h * w, 0.3);
            let wt = values(cout * cin * 9, 1.7);
            let got = forward(&g, &x, &wt, None);
            let err = max_rel(&got, &direct(&g, &x, &wt));
            assert!(err < 1e-5, "{n} {cin} {cout} {h}x{w} pad {pad}: {err:e}");
        }
    }

    /// Both gradients against the definition: `dx` as the direct
    /// convolution of the dual geometry, `dw[k][c][i][j] = Σ dy x`.
    #[test]
    fn gradients_match_the_definition() {
        for (n, cin, cout, h, w, pad) in [
            (3, 4, 5, 7, 9, 1),
            (2, 3, 2, 8, 8, 0),
            (1, 2, 3, 6, 6, 2),
            (17, 2, 3, 16, 16, 1),
        ] {
            let g = geometry(n, cin, cout, h, w, pad);
            let x = values(n * cin * h * w, 0.9);
            let wt = values(cout * cin * 9, 2.1);
            let dy = values(n * cout * g.ho * g.wo, 4.2);
            let d = super::super::winograd::dual(&g);
            let want_dx = direct(&d, &dy, &super::super::winograd::flipped(&g, &wt));
            let err = max_rel(&input_grad(&g, &dy, &wt), &want_dx);
            assert!(err < 1e-5, "dx {n} {cin} {cout} {h}x{w} pad {pad}: {err:e}");
            let mut want_dw = vec![0f64; cout * cin * 9];
            for i in 0..n {
                for k in 0..cout {
                    for c in 0..cin {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let mut acc = 0f64;
                                for oy in 0..g.ho {
                                    for ox in 0..g.wo {
                                        let (iy, ix) = (
                                            (oy + ky) as isize - pad as isize,
                                            (ox + kx) as isize - pad as isize,
                                        );
                                        if (0..h as isize).contains(&iy)
                                            && (0..w as isize).contains(&ix)
                                        {
                                            acc += f64::from(
                                                dy[((i * cout + k) * g.ho + oy) * g.wo + ox],
                                            ) * f64::from(
                                                x[((i * cin + c) * h + iy as usize) * w
                                                    + ix as usize],
                                            );
                                        }
                                    }
                                }
                                want_dw[((k * cin + c) * 3 + ky) * 3 + kx] += acc;
                            }
                        }
                    }
                }
            }
            let err = max_rel(&weight_grad(&g, &x, &dy), &want_dw);
            assert!(err < 1e-5, "dw {n} {cin} {cout} {h}x{w} pad {pad}: {err:e}");
        }
    }

    /// The dispatched transform passes (AVX-512 or AVX2 copies where the
    /// CPU has them) give the portable bodies' values bit for bit, over
    /// lengths around the vector widths.
    #[test]
    fn wide_passes_equal_the_portable_bodies() {
        for len in [1, 7, 8, 9, 16, 17, 64, 100] {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let d = values(36 * len, 0.4);
            let (mut e1, mut e2) = (vec![0f32; 36 * len], vec![0f32; 36 * len]);
            let stride = len + 3;
            let (mut o1, mut o2) = (vec![0f32; 36 * stride], vec![0f32; 36 * stride]);
            input_passes(&d, &mut e1, &mut o1, len, stride);
            input_passes_body(&d, &mut e2, &mut o2, len, stride);
            assert_eq!(
                (bits(&e1), bits(&o1)),
                (bits(&e2), bits(&o2)),
                "input, {len}"
            );

            let m = values(36 * stride, 1.1);
            let (mut a1, mut a2) = (vec![0f32; 24 * len], vec![0f32; 24 * len]);
            let (mut c1, mut c2) = (vec![0f32; 16 * len], vec![0f32; 16 * len]);
            output_passes(&m, stride, &mut a1, &mut c1, len);
            output_passes_body(&m, stride, &mut a2, &mut c2, len);
            assert_eq!(
                (bits(&a1), bits(&c1)),
                (bits(&a2), bits(&c2)),
                "output, {len}"
            );

            let q = values(16 * len, 2.3);
            let (mut e1, mut e2) = (vec![0f32; 24 * len], vec![0f32; 24 * len]);
            let (mut m1, mut m2) = (vec![0f32; 36 * stride], vec![0f32; 36 * stride]);
            grad_passes(&q, &mut e1, &mut m1, len, stride);
            grad_passes_body(&q, &mut e2, &mut m2, len, stride);
            assert_eq!(
                (bits(&e1), bits(&m1)),
                (bits(&e2), bits(&m2)),
                "grad, {len}"
            );
        }
    }

    #[test]
    fn four_by_four_tiles_pay_only_on_maps_larger_than_six() {
        assert!(pays(32, 32) && pays(16, 16) && pays(8, 8) && pays(7, 9));
        assert!(!pays(6, 6) && !pays(2, 2) && !pays(1, 1));
    }
}
