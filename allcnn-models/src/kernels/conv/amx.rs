//! The AMX tile kernel of the bf16 GEMM, for Intel CPUs with AMX-BF16
//! (Sapphire Rapids and later): `tdpbf16ps` on 16 x 16 f32 accumulator tiles.
//!
//! # Status
//!
//! The kernel is one sequence of tile operations ([`gemm`]) written against
//! the [`Tiles`] trait. Two units run it: [`Hardware`] (the instructions,
//! through `asm!`) and [`Emulated`] (a software model of the eight tile
//! registers and of `tdpbf16ps` as the Intel SDM defines it). The tests run
//! the whole kernel, every address, stride, padding and edge, on the model,
//! on any CPU. On a CPU that has AMX, [`status`] also runs the hardware
//! unit once on a fixed product at first use and compares it with the
//! model; any difference disables the AMX path (the AVX-512 BF16 kernel
//! runs instead) and [`status`] says so.
//!
//! # Layout
//!
//! * B is the packed right operand of the bf16 module as it is: panels of
//!   `NR = 32` columns, one row of 32 words per pair of depth. A tile of B
//!   (16 pairs x 16 columns, the VNNI layout `tdpbf16ps` expects) is the left
//!   or right half of 16 consecutive rows of a panel: rows of 64 bytes with a
//!   stride of 128 bytes. When the number of pairs is not a multiple of 16,
//!   the last block of each panel is read from a zero-padded copy.
//! * A is packed by [`pack_scalar`] (or the AVX-512 packers of the bf16
//!   module, which give the same words) as rows of words: row `i`, pair `q`
//!   is word `i * ppad + q`, where `ppad` is the pair count rounded up to 16
//!   and the row count is rounded up to [`BLOCK`]; the padding is zero. A
//!   tile of A is 16 rows x 16 pairs with a stride of `4 * ppad` bytes.
//! * C is computed in blocks of 32 x 32: four accumulator tiles (`tmm0`-`tmm3`),
//!   two A tiles (`tmm4`, `tmm5`: rows 0-15 and 16-31 of the block) and two
//!   B tiles (`tmm6`, `tmm7`: columns 0-15 and 16-31). Each block is stored
//!   to a scratch buffer and then written to (or added into) the valid
//!   part of C, so nothing outside the `m x n` window is touched.

// Tile instructions exist only as `asm!` on stable Rust, and the kernel works
// through raw pointers; each block states why it is sound.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use super::bf16::NR;

/// Rows of C per block (two A tiles), and the multiple the A rows are padded to.
pub(crate) const BLOCK: usize = 32;
/// Pairs of depth per tile (64 bytes of words per tile row).
pub(crate) const KB: usize = 16;

/// Rows of a tile register.
const TILE_ROWS: usize = 16;
/// Words (32-bit values) per tile row.
const TILE_WORDS: usize = 16;
/// Bytes per row of a B panel (the stride of a B tile).
const B_STRIDE: usize = NR * 4;

/// What became of the AMX path on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmxStatus {
    /// The kernel runs: the CPU has AMX-TILE and AMX-BF16, the OS granted
    /// the tile state, and the self-check passed.
    Active,
    /// The CPU lacks AMX-TILE or AMX-BF16 (or AVX-512 BF16, which the
    /// packers and edges use), or this is not x86-64 Linux.
    Unsupported,
    /// Turned off with `ALLCNN_AMX=0` (or `ALLCNN_SIMD=portable`).
    Disabled,
    /// The CPU has AMX but the OS does not enable its state (XCR0 bits 17
    /// and 18; Linux 5.16 or later is needed).
    NoOsSupport,
    /// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)` failed with
    /// this errno.
    PermissionDenied(i32),
    /// The hardware result differed from the software model on the
    /// self-check product: the kernel is not used.
    SelfCheckFailed,
}

impl AmxStatus {
    /// A short description for logs and `allcnn bench`.
    pub fn describe(self) -> String {
        match self {
            AmxStatus::Active => "active".into(),
            AmxStatus::Unsupported => "not supported by this CPU".into(),
            AmxStatus::Disabled if crate::kernels::simd::portable_only() => {
                "disabled by ALLCNN_SIMD=portable".into()
            }
            AmxStatus::Disabled => "disabled by ALLCNN_AMX=0".into(),
            AmxStatus::NoOsSupport => "the OS does not enable the AMX tile state".into(),
            AmxStatus::PermissionDenied(e) => {
                format!("arch_prctl(ARCH_REQ_XCOMP_PERM) refused (errno {e})")
            }
            AmxStatus::SelfCheckFailed => "self-check against the software model failed".into(),
        }
    }
}

/// The state of the AMX path, decided once per process (see [`AmxStatus`]).
pub fn status() -> AmxStatus {
    static STATUS: OnceLock<AmxStatus> = OnceLock::new();
    *STATUS.get_or_init(detect)
}

/// Whether the bf16 GEMM runs on AMX tiles.
pub(crate) fn active() -> bool {
    status() == AmxStatus::Active
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> AmxStatus {
    use core::arch::x86_64::__cpuid_count;
    if std::env::var_os("ALLCNN_AMX").is_some_and(|v| v == "0")
        || crate::kernels::simd::portable_only()
    {
        return AmxStatus::Disabled;
    }
    if !super::bf16::native() {
        return AmxStatus::Unsupported;
    }
    // CPUID.(EAX=7, ECX=0):EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID leaf 7 exists on every CPU with AVX-512 (checked above).
    let leaf7 = unsafe { __cpuid_count(7, 0) };
    if leaf7.edx & (1 << 22) == 0 || leaf7.edx & (1 << 24) == 0 {
        return AmxStatus::Unsupported;
    }
    if !std::is_x86_feature_detected!("xsave") {
        return AmxStatus::NoOsSupport;
    }
    // SAFETY: the CPU has XSAVE (checked above).
    let xcr0 = unsafe { xcr0() };
    // XTILECFG (bit 17) and XTILEDATA (bit 18).
    if xcr0 & (0b11 << 17) != 0b11 << 17 {
        return AmxStatus::NoOsSupport;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments; it only changes
    // which xsave features this process may use.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    if r != 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return AmxStatus::PermissionDenied(errno);
    }
    if self_check() {
        AmxStatus::Active
    } else {
        AmxStatus::SelfCheckFailed
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> AmxStatus {
    AmxStatus::Unsupported
}

/// XCR0, the OS-enabled xsave features.
///
/// # Safety
/// The CPU has XSAVE and the OS set CR4.OSXSAVE (`is_x86_feature_detected!`
/// reports `xsave` only then).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[target_feature(enable = "xsave")]
unsafe fn xcr0() -> u64 {
    core::arch::x86_64::_xgetbv(0)
}

/// Runs the hardware kernel on a fixed product (odd sizes: partial blocks
/// in every direction and a zero-padded last depth block) and compares it
/// with an f64 product of the same rounded operands, to f32 accumulation
/// rounding (the hardware's order of additions is its own).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn self_check() -> bool {
    let (m, k, n) = (37, 70, 45);
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i * 53 % 97) as f32 - 48.0) / 32.0)
        .collect();
    let (pa, pb) = operands(&a, &b, m, k, n);
    let mut got = vec![f32::NAN; m * n];
    // SAFETY: the operands come from the packers with their documented
    // sizes, C is m x n with ldc = n, and `detect` made the checks
    // `Hardware::new` relies on before calling this.
    unsafe {
        let mut hw = Hardware::new();
        gemm(&mut hw, &mut got, n, &pa, m, &pb, n, k, false);
    }
    agrees(&got, &a, &b, (m, k, n))
}

/// Whether `c` (row-major `m x n`) is the product of the bf16-rounded `a`
/// (`m x k`) and `b` (`k x n`) up to f32 accumulation rounding.
pub(crate) fn agrees(c: &[f32], a: &[f32], b: &[f32], (m, k, n): (usize, usize, usize)) -> bool {
    let r = |x: f32| f64::from(super::bf16::from_bf16(super::bf16::to_bf16(x)));
    (0..m * n).all(|x| {
        let (i, j) = (x / n, x % n);
        let (mut want, mut scale) = (0f64, 0f64);
        for p in 0..k {
            let v = r(a[i * k + p]) * r(b[p * n + j]);
            want += v;
            scale += v.abs();
        }
        (f64::from(c[x]) - want).abs() <= 1e-5 * scale
    })
}

/// The packed operands of a row-major `m x k` by `k x n` product, for the
/// self-check and the tests.
pub(crate) fn operands(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> (Vec<u32>, Vec<u32>) {
    let mut pa = vec![0u32; padded_len(m, k)];
    pack_scalar(|i, p| a[i * k + p], m, k, &mut pa);
    let pairs = k.div_ceil(2);
    let mut pb = vec![0u32; n.div_ceil(NR) * pairs * NR];
    if pairs == 0 {
        return (pa, pb);
    }
    for (panel, words) in pb.chunks_exact_mut(pairs * NR).enumerate() {
        for (q, row) in words.chunks_exact_mut(NR).enumerate() {
            for (j, w) in row.iter_mut().enumerate() {
                let col = panel * NR + j;
                let at = |p: usize| {
                    if col < n && p < k {
                        b[p * n + col]
                    } else {
                        0.0
                    }
                };
                *w = super::bf16::word(at(2 * q), at(2 * q + 1));
            }
        }
    }
    (pa, pb)
}

/// Pairs per A row in the AMX layout: the pair count rounded up to [`KB`].
pub(crate) fn padded_pairs(k: usize) -> usize {
    k.div_ceil(2).div_ceil(KB) * KB
}

/// Words of an `m x k` left operand in the AMX layout.
pub(crate) fn padded_len(m: usize, k: usize) -> usize {
    m.div_ceil(BLOCK) * BLOCK * padded_pairs(k)
}

/// Packs the `m x k` left operand whose element `(i, p)` is `at(i, p)` in
/// the AMX layout (see the module doc) into `dst`, of [`padded_len`] words;
/// the padding is written as zeros.
pub(crate) fn pack_scalar(at: impl Fn(usize, usize) -> f32, m: usize, k: usize, dst: &mut [u32]) {
    let ppad = padded_pairs(k);
    assert_eq!(
        dst.len(),
        padded_len(m, k),
        "amx pack: wrong destination length"
    );
    if ppad == 0 {
        return;
    }
    for (i, row) in dst.chunks_exact_mut(ppad).enumerate() {
        for (q, w) in row.iter_mut().enumerate() {
            let value = |p: usize| if i < m && p < k { at(i, p) } else { 0.0 };
            *w = super::bf16::word(value(2 * q), value(2 * q + 1));
        }
    }
}

/// A unit with eight tile registers of 16 rows x 64 bytes (the one
/// configuration the kernel uses), doing what the AMX instructions of the
/// same names do.
pub(crate) trait Tiles {
    /// `tilezero tmm{T}`.
    ///
    /// # Safety
    /// The unit is configured (always true of a constructed unit).
    unsafe fn zero<const T: u8>(&mut self);
    /// `tileloadd tmm{T}, [p + stride * row]`: 16 rows of 16 words.
    ///
    /// # Safety
    /// The 16 rows of 64 bytes at `p + r * stride` are readable.
    unsafe fn load<const T: u8>(&mut self, p: *const u32, stride: usize);
    /// `tdpbf16ps tmm{C}, tmm{A}, tmm{B}`.
    ///
    /// # Safety
    /// As [`Tiles::zero`].
    unsafe fn dot<const C: u8, const A: u8, const B: u8>(&mut self);
    /// `tilestored [p + stride * row], tmm{T}`: 16 rows of 16 f32.
    ///
    /// # Safety
    /// The 16 rows of 64 bytes at `p + r * stride` are writable.
    unsafe fn store<const T: u8>(&mut self, p: *mut f32, stride: usize);
}

/// The software model of the tile unit: `tdpbf16ps` as the Intel SDM
/// defines it (per row, per pair, per column: the even product then the odd
/// one added to the f32 accumulator, bf16 subnormal inputs and subnormal
/// results flushed to zero).
#[cfg(test)]
#[derive(Clone)]
pub(crate) struct Emulated {
    /// The eight registers, 16 rows of 16 words each.
    regs: [[[u32; TILE_WORDS]; TILE_ROWS]; 8],
}

#[cfg(test)]
impl Default for Emulated {
    fn default() -> Self {
        Self {
            regs: [[[0; TILE_WORDS]; TILE_ROWS]; 8],
        }
    }
}

/// A bf16 value (the low or high half of a word) as f32, subnormals as zero.
#[cfg(test)]
fn bf16_daz(half: u32) -> f32 {
    let bits = (half & 0xffff) << 16;
    if bits & 0x7f80_0000 == 0 {
        f32::from_bits(bits & 0x8000_0000)
    } else {
        f32::from_bits(bits)
    }
}

/// `x` with a subnormal result flushed to (signed) zero.
#[cfg(test)]
fn ftz(x: f32) -> f32 {
    if x.is_subnormal() {
        f32::from_bits(x.to_bits() & 0x8000_0000)
    } else {
        x
    }
}

#[cfg(test)]
impl Tiles for Emulated {
    unsafe fn zero<const T: u8>(&mut self) {
        self.regs[T as usize] = [[0; TILE_WORDS]; TILE_ROWS];
    }

    unsafe fn load<const T: u8>(&mut self, p: *const u32, stride: usize) {
        for (r, row) in self.regs[T as usize].iter_mut().enumerate() {
            // SAFETY: the caller guarantees the row is readable.
            let src = unsafe { p.byte_add(r * stride) };
            for (t, w) in row.iter_mut().enumerate() {
                // SAFETY: as above, word `t < 16` of the row.
                *w = unsafe { src.add(t).read_unaligned() };
            }
        }
    }

    unsafe fn dot<const C: u8, const A: u8, const B: u8>(&mut self) {
        let (a, b) = (self.regs[A as usize], self.regs[B as usize]);
        let c = &mut self.regs[C as usize];
        for (m, crow) in c.iter_mut().enumerate() {
            let mut acc: [f32; TILE_WORDS] = crow.map(f32::from_bits);
            for (k, brow) in b.iter().enumerate() {
                let aw = a[m][k];
                for (n, acc) in acc.iter_mut().enumerate() {
                    let bw = brow[n];
                    *acc = ftz(*acc + bf16_daz(aw) * bf16_daz(bw));
                    *acc = ftz(*acc + bf16_daz(aw >> 16) * bf16_daz(bw >> 16));
                }
            }
            *crow = acc.map(f32::to_bits);
        }
    }

    unsafe fn store<const T: u8>(&mut self, p: *mut f32, stride: usize) {
        for (r, row) in self.regs[T as usize].iter().enumerate() {
            // SAFETY: the caller guarantees the row is writable.
            let dst = unsafe { p.byte_add(r * stride) };
            for (t, &w) in row.iter().enumerate() {
                // SAFETY: as above, value `t < 16` of the row.
                unsafe { dst.add(t).write_unaligned(f32::from_bits(w)) };
            }
        }
    }
}

/// The tile configuration: palette 1, all eight tiles 16 rows x 64 bytes.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[repr(C, align(64))]
struct Config([u8; 64]);

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
impl Config {
    fn new() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1; // palette 1; byte 1 (start_row) and bytes 2-15 stay zero
        for t in 0..8 {
            // colsb[t], a little-endian u16 at byte 16 + 2t
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&((TILE_WORDS * 4) as u16).to_le_bytes());
            // rows[t], a byte at 48 + t
            c[48 + t] = TILE_ROWS as u8;
        }
        Config(c)
    }
}

/// The AMX tile unit of this thread: configured on construction
/// (`ldtilecfg`), released on drop (`tilerelease`).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) struct Hardware {
    /// Not `Send`: the tile configuration belongs to the constructing thread.
    _thread: std::marker::PhantomData<*const ()>,
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
impl Hardware {
    /// Configures this thread's tiles (`ldtilecfg`). Only valid after
    /// [`status`]'s checks: `detect` calls this only after them, and
    /// [`gemm_hardware`] only when the status is active.
    ///
    /// # Safety
    /// CPUID reported AMX-TILE and AMX-BF16 and `arch_prctl` granted
    /// XTILEDATA to this process.
    pub(crate) unsafe fn new() -> Self {
        let cfg = Config::new();
        // SAFETY: the caller's contract; `cfg` is a valid 64-byte aligned
        // palette-1 configuration (rows <= 16, colsb <= 64).
        unsafe {
            core::arch::asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        }
        Hardware {
            _thread: std::marker::PhantomData,
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
impl Drop for Hardware {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured by `new` on this thread (the unit
        // is not `Send`).
        unsafe { core::arch::asm!("tilerelease", options(nostack, nomem)) };
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
impl Tiles for Hardware {
    #[inline(always)]
    unsafe fn zero<const T: u8>(&mut self) {
        // SAFETY: the unit is configured (the trait's contract).
        unsafe { core::arch::asm!("tilezero tmm{t}", t = const T, options(nostack, nomem)) };
    }

    #[inline(always)]
    unsafe fn load<const T: u8>(&mut self, p: *const u32, stride: usize) {
        // SAFETY: the caller guarantees the 16 rows are readable.
        unsafe {
            core::arch::asm!(
                "tileloadd tmm{t}, [{p} + {s} * 1]",
                t = const T, p = in(reg) p, s = in(reg) stride,
                options(nostack, readonly)
            )
        };
    }

    #[inline(always)]
    unsafe fn dot<const C: u8, const A: u8, const B: u8>(&mut self) {
        // SAFETY: register-only instruction on a configured unit.
        unsafe {
            core::arch::asm!(
                "tdpbf16ps tmm{c}, tmm{a}, tmm{b}",
                c = const C, a = const A, b = const B,
                options(nostack, nomem)
            )
        };
    }

    #[inline(always)]
    unsafe fn store<const T: u8>(&mut self, p: *mut f32, stride: usize) {
        // SAFETY: the caller guarantees the 16 rows are writable.
        unsafe {
            core::arch::asm!(
                "tilestored [{p} + {s} * 1], tmm{t}",
                t = const T, p = in(reg) p, s = in(reg) stride,
                options(nostack)
            )
        };
    }
}

/// The hardware GEMM: `c` (row-major `m x n`, row stride `ldc`) = A·B, or
/// += A·B with `accumulate`, where `a` is an `m x k` left operand in the AMX
/// layout and `b` a `k x n` right operand in the packed panels of the bf16
/// module.
///
/// # Safety
/// [`status`] is [`AmxStatus::Active`], `a` holds [`padded_len`]`(m, k)`
/// words, `b` holds `n.div_ceil(NR) * k.div_ceil(2) * NR`, and C holds the
/// `m x n` window (`(m - 1) * ldc + n` values, `ldc >= n`).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_hardware(
    c: &mut [f32],
    ldc: usize,
    a: &[u32],
    m: usize,
    b: &[u32],
    n: usize,
    k: usize,
    accumulate: bool,
) {
    // SAFETY: forwarded from the caller; `Active` implies the checks `new`
    // relies on.
    unsafe {
        gemm(&mut Hardware::new(), c, ldc, a, m, b, n, k, accumulate);
    }
}

/// A 64-byte aligned block of 32 x 32 f32 (the four accumulator tiles).
#[repr(C, align(64))]
struct Block([f32; BLOCK * NR]);

/// 16 rows of a B panel (a zero-padded last depth block).
#[repr(C, align(64))]
struct Tail([u32; KB * NR]);

/// The kernel, on any tile unit (see the module doc for the layout).
///
/// # Safety
/// As [`gemm_hardware`], with `u` a configured unit.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm<U: Tiles>(
    u: &mut U,
    c: &mut [f32],
    ldc: usize,
    a: &[u32],
    m: usize,
    b: &[u32],
    n: usize,
    k: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let (pairs, ppad) = (k.div_ceil(2), padded_pairs(k));
    assert_eq!(a.len(), padded_len(m, k), "amx gemm: A length");
    assert_eq!(b.len(), n.div_ceil(NR) * pairs * NR, "amx gemm: B length");
    assert!(
        ldc >= n && c.len() >= (m - 1) * ldc + n,
        "amx gemm: C too short"
    );
    let (full, rest) = (pairs / KB, pairs % KB);
    let blocks = ppad / KB;
    let mut tail = Tail([0; KB * NR]);
    let mut out = Block([0.0; BLOCK * NR]);
    let a_stride = ppad * 4;
    for (jp, j0) in (0..n).step_by(NR).enumerate() {
        let cols = NR.min(n - j0);
        let panel = &b[jp * pairs * NR..][..pairs * NR];
        if rest > 0 {
            tail.0[..rest * NR].copy_from_slice(&panel[full * KB * NR..]);
            tail.0[rest * NR..].fill(0);
        }
        for i0 in (0..m).step_by(BLOCK) {
            let rows = BLOCK.min(m - i0);
            let a0 = a[i0 * ppad..].as_ptr();
            let a1 = a[(i0 + TILE_ROWS) * ppad..].as_ptr();
            // SAFETY: every tile load reads 16 rows of 64 bytes: B rows
            // `16 kb..16 kb + 16 <= pairs` of the panel (or the 16 rows of
            // `tail`), A rows `i0..i0 + 32` (padded to a multiple of 32) at
            // pairs `16 kb..16 kb + 16 <= ppad`; the stores fill `out`, or a
            // 32 x 32 window of C inside the `m x n` one asserted above.
            unsafe {
                u.zero::<0>();
                u.zero::<1>();
                u.zero::<2>();
                u.zero::<3>();
                for kb in 0..blocks {
                    let bp = if kb < full {
                        panel.as_ptr().add(kb * KB * NR)
                    } else {
                        tail.0.as_ptr()
                    };
                    u.load::<6>(bp, B_STRIDE);
                    u.load::<7>(bp.add(TILE_WORDS), B_STRIDE);
                    u.load::<4>(a0.add(kb * KB), a_stride);
                    u.load::<5>(a1.add(kb * KB), a_stride);
                    u.dot::<0, 4, 6>();
                    u.dot::<1, 4, 7>();
                    u.dot::<2, 5, 6>();
                    u.dot::<3, 5, 7>();
                }
                // A whole 32 x 32 block of C that is replaced takes the tiles
                // directly (rows `i0..i0 + 32 <= m`, columns `j0..j0 + 32 <=
                // n`, row stride `ldc`); an edge block, or one added into C,
                // goes through `out`.
                let (o, stride) = if rows == BLOCK && cols == NR && !accumulate {
                    (c.as_mut_ptr().add(i0 * ldc + j0), ldc * 4)
                } else {
                    (out.0.as_mut_ptr(), B_STRIDE)
                };
                let half = TILE_ROWS * stride / 4;
                u.store::<0>(o, stride);
                u.store::<1>(o.add(TILE_WORDS), stride);
                u.store::<2>(o.add(half), stride);
                u.store::<3>(o.add(half + TILE_WORDS), stride);
            }
            if rows == BLOCK && cols == NR && !accumulate {
                continue;
            }
            for (r, src) in out.0.chunks_exact(NR).take(rows).enumerate() {
                let dst = &mut c[(i0 + r) * ldc + j0..][..cols];
                if accumulate {
                    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                } else {
                    dst.copy_from_slice(&src[..cols]);
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `n` pseudo-random values in [-1, 1) from `seed` (xorshift).
    pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn rounded(x: f32) -> f64 {
        f64::from(super::super::bf16::from_bf16(super::super::bf16::to_bf16(
            x,
        )))
    }

    /// The kernel on the software model against an f64 product of the
    /// rounded operands, for shapes with partial blocks in every direction,
    /// depths that are and are not multiples of 32, odd depths, and both
    /// modes; C's margin (a wider `ldc`, one more row) stays untouched.
    /// `run(c, ldc, a, m, b, n, k, accumulate)` runs the kernel on a unit.
    type Run = dyn Fn(&mut [f32], usize, &[u32], usize, &[u32], usize, usize, bool);

    fn check_kernel(run: &Run) {
        let shapes = [
            (1, 1, 1),
            (1, 2, 1),
            (3, 5, 7),
            (16, 32, 16),
            (32, 32, 32),
            (33, 33, 33),
            (31, 64, 65),
            (37, 70, 45),
            (64, 192, 96),
            (12, 255, 40),
            (50, 0, 3),
        ];
        for (m, k, n) in shapes {
            for accumulate in [false, true] {
                let a = values(m * k, (m * 7 + k) as u64);
                let b = values(k * n, (k * 5 + n) as u64);
                let (pa, pb) = operands(&a, &b, m, k, n);
                let ldc = n + 3;
                let init = values((m + 1) * ldc, 11);
                let margin = |i: usize, j: usize| i == m || j >= n;
                let mut c: Vec<f32> = (0..(m + 1) * ldc)
                    .map(|x| {
                        if margin(x / ldc, x % ldc) {
                            777.0
                        } else {
                            init[x]
                        }
                    })
                    .collect();
                run(&mut c, ldc, &pa, m, &pb, n, k, accumulate);
                for i in 0..=m {
                    for j in 0..ldc {
                        let got = c[i * ldc + j];
                        if margin(i, j) {
                            assert_eq!(got, 777.0, "({m},{k},{n}) touched ({i},{j})");
                            continue;
                        }
                        let mut want = if accumulate {
                            f64::from(init[i * ldc + j])
                        } else {
                            0.0
                        };
                        let mut scale = want.abs();
                        for p in 0..k {
                            let x = rounded(a[i * k + p]) * rounded(b[p * n + j]);
                            want += x;
                            scale += x.abs();
                        }
                        assert!(
                            (f64::from(got) - want).abs() <= 1e-5 * scale.max(1e-30),
                            "({m},{k},{n}) acc={accumulate}: c[{i}][{j}] = {got}, want {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn kernel_on_the_model_matches_reference() {
        check_kernel(&|c, ldc, a, m, b, n, k, acc| {
            // SAFETY: the sizes come from `operands`, a fresh model unit.
            unsafe { gemm(&mut Emulated::default(), c, ldc, a, m, b, n, k, acc) }
        });
    }

    /// The same shapes on the AMX hardware, where this CPU has it.
    #[test]
    fn kernel_on_the_hardware_matches_reference() {
        if !active() {
            eprintln!(
                "AMX {}: the hardware kernel not tested",
                status().describe()
            );
            return;
        }
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        check_kernel(&|c, ldc, a, m, b, n, k, acc| {
            // SAFETY: AMX is active; the sizes come from `operands`.
            unsafe { gemm_hardware(c, ldc, a, m, b, n, k, acc) }
        });
    }

    /// The model's `tdpbf16ps` on a hand-computed case: the even product is
    /// added before the odd one, and bf16 subnormal inputs count as zero.
    #[test]
    fn model_dot_by_hand() {
        let mut u = Emulated::default();
        let word = |lo: f32, hi: f32| super::super::bf16::word(lo, hi);
        // A row 0: pairs (1, 2), (3, 4); B rows: pair 0 column 0 = (10, 100),
        // pair 1 column 0 = (1000, 1024), all exact in bf16; column 1 gets a
        // subnormal.
        let mut a = [[0u32; 16]; 16];
        a[0][0] = word(1.0, 2.0);
        a[0][1] = word(3.0, 4.0);
        let mut b = [[0u32; 16]; 16];
        b[0][0] = word(10.0, 100.0);
        b[1][0] = word(1000.0, 1024.0);
        b[0][1] = (1 << 16) | 0x3f80; // lo = 1.0, hi = the smallest subnormal
                                      // SAFETY: 16 rows of 16 words each, stride 64 bytes.
        unsafe {
            u.load::<4>(a.as_ptr().cast(), 64);
            u.load::<6>(b.as_ptr().cast(), 64);
            u.zero::<0>();
            u.dot::<0, 4, 6>();
            let mut c = [[0f32; 16]; 16];
            u.store::<0>(c.as_mut_ptr().cast(), 64);
            assert_eq!(c[0][0], 10.0 + 200.0 + 3000.0 + 4096.0);
            assert_eq!(c[0][1], 1.0); // 1 * 1 + 2 * (subnormal as 0)
            assert!(c[1].iter().all(|&x| x == 0.0));
        }
    }

    #[test]
    fn padding_is_zero_and_rows_are_contiguous() {
        let (m, k) = (3, 5);
        let a: Vec<f32> = (0..m * k).map(|x| x as f32 + 1.0).collect();
        let mut dst = vec![u32::MAX; padded_len(m, k)];
        pack_scalar(|i, p| a[i * k + p], m, k, &mut dst);
        assert_eq!(dst.len(), 32 * 16);
        let w = super::super::bf16::word;
        assert_eq!(&dst[..3], &[w(1.0, 2.0), w(3.0, 4.0), w(5.0, 0.0)]);
        assert!(dst[3..16].iter().all(|&x| x == 0));
        assert_eq!(dst[16], w(6.0, 7.0));
        assert!(dst[3 * 16..].iter().all(|&x| x == 0));
    }

    /// On a CPU with AMX the hardware kernel agrees bit for bit with the
    /// model (the same check `status` makes); elsewhere this says why it did
    /// not run.
    #[test]
    fn hardware_status_is_reported() {
        let s = status();
        eprintln!("AMX: {}", s.describe());
        assert_ne!(
            s,
            AmxStatus::SelfCheckFailed,
            "AMX hardware disagrees with the model"
        );
    }
}
