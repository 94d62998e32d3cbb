//! The numeric precision of the CPU convolutions, as users choose it.

use crate::{ConvBackend, ModelError};

/// The precision of the convolution GEMMs on CPU: the setting users reason
/// about, resolved to a [`ConvBackend`] (the expert override) by
/// [`Precision::backend`].
///
/// Weights, momentum, the loss and every accumulation stay f32 whatever
/// this says; `Bf16` rounds the GEMM operands (activations, transformed
/// tiles, weights as packed for the kernel) to bf16.
///
/// ```
/// use allcnn_models::{ConvBackend, Precision};
///
/// assert_eq!(Precision::F32.backend(), ConvBackend::Winograd);
/// assert_eq!(Precision::Bf16.backend(), ConvBackend::WinogradBf16);
/// assert_eq!(Precision::from_name("auto")?, Precision::Auto);
/// // `auto` picks what was measured fastest on this kind of CPU.
/// let chosen = Precision::Auto.backend();
/// assert!(matches!(
///     chosen,
///     ConvBackend::Winograd | ConvBackend::WinogradBf16 | ConvBackend::WinogradF4
/// ));
/// # Ok::<(), allcnn_models::ModelError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// f32 throughout ([`ConvBackend::Winograd`]): exact against PyTorch.
    /// The default.
    #[default]
    F32,
    /// bf16 GEMM operands with f32 accumulation
    /// ([`ConvBackend::WinogradBf16`]): about 1e-3 relative from f32.
    Bf16,
    /// What was measured fastest on this kind of CPU: bf16 where it runs
    /// faster than f32 ([`bf16_is_faster`]), else f32 with Winograd F(4x4,
    /// 3x3) ([`ConvBackend::WinogradF4`]) on x86 CPUs with AVX2 but no
    /// AVX-512 ([`f4_is_faster`]), else f32 ([`ConvBackend::Winograd`]).
    Auto,
}

impl Precision {
    /// Every precision with its name in configs and on the command line.
    pub const ALL: [(&'static str, Precision); 3] = [
        ("f32", Precision::F32),
        ("bf16", Precision::Bf16),
        ("auto", Precision::Auto),
    ];

    /// The precision called `name` (as in [`Precision::ALL`]).
    ///
    /// # Errors
    /// [`ModelError::UnknownPrecision`] naming the known precisions.
    pub fn from_name(name: &str) -> Result<Self, ModelError> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, p)| p)
            .ok_or_else(|| ModelError::UnknownPrecision {
                name: name.to_string(),
                known: Self::ALL.map(|(n, _)| n).join(", "),
            })
    }

    /// The name of this precision (as in [`Precision::ALL`]).
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Auto => "auto",
        }
    }

    /// The convolution backend this precision runs on this CPU.
    pub fn backend(self) -> ConvBackend {
        match self {
            Precision::F32 => ConvBackend::Winograd,
            Precision::Bf16 => ConvBackend::WinogradBf16,
            Precision::Auto if bf16_is_faster() => ConvBackend::WinogradBf16,
            Precision::Auto if f4_is_faster() => ConvBackend::WinogradF4,
            Precision::Auto => ConvBackend::Winograd,
        }
    }
}

/// Whether bf16 GEMM operands make the convolutions faster than f32 on this
/// CPU, as measured (docs/performance.md): the AMX tile kernel is active
/// (Intel Sapphire Rapids and later), or the CPU has AVX-512 BF16 and is an
/// AMD part. AMX runs a training step 2.6x and inference 2.8-3.9x faster than
/// f32 on a 2-core Sapphire Rapids class Xeon. AMD Zen 4 and Zen 5 run
/// `vdpbf16ps` (32 multiply-adds) at the rate of one 512-bit f32 FMA (16):
/// training steps 1.15-1.3x faster on Zen 4 and 1.4-1.5x on Zen 5,
/// inference 1.2-1.5x. Intel cores with AVX-512
/// BF16 but no AMX (Cooper Lake), or with AMX turned off (`ALLCNN_AMX=0`;
/// `ALLCNN_SIMD=portable` turns off every wide path, the bf16 kernel too),
/// issue two 512-bit f32 FMAs per cycle, so `vdpbf16ps` brings nothing
/// there (measured 0.7-1.0x of f32 on Sapphire Rapids without its tiles).
pub fn bf16_is_faster() -> bool {
    crate::kernels::conv::amx_status() == crate::kernels::conv::AmxStatus::Active
        || (crate::kernels::conv::has_native_bf16() && is_amd())
}

/// Whether f32 with Winograd F(4x4, 3x3) ([`ConvBackend::WinogradF4`]) is
/// the faster f32 backend on this CPU, as measured (docs/performance.md):
/// x86 CPUs with AVX2 and FMA but no AVX-512 F (and `ALLCNN_SIMD` not
/// `portable`), where its transforms run 8 lanes wide and the F(2x2, 3x3)
/// ones 4: a 1.18-1.22x faster training step and 1.14x faster inference on
/// a 2-core AMD Zen 3. Elsewhere it was not measured, so `auto` keeps
/// [`ConvBackend::Winograd`] there (its AVX-512 transforms are hand-written).
pub fn f4_is_faster() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::kernels::simd::avx2() && !crate::kernels::simd::avx512f()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU's vendor string (CPUID leaf 0) is AMD's.
#[cfg(target_arch = "x86_64")]
fn is_amd() -> bool {
    let id = std::arch::x86_64::__cpuid(0);
    let mut vendor = [0u8; 12];
    for (chunk, reg) in vendor.chunks_exact_mut(4).zip([id.ebx, id.edx, id.ecx]) {
        chunk.copy_from_slice(&reg.to_le_bytes());
    }
    &vendor == b"AuthenticAMD"
}

/// Never on other architectures (no native bf16 kernel there either).
#[cfg(not(target_arch = "x86_64"))]
fn is_amd() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for (name, p) in Precision::ALL {
            assert_eq!(Precision::from_name(name).unwrap(), p);
            assert_eq!(p.name(), name);
        }
        let err = Precision::from_name("fp16").unwrap_err().to_string();
        assert!(
            err.contains("`fp16`") && err.contains("f32, bf16, auto"),
            "{err}"
        );
    }

    #[test]
    fn auto_follows_the_cpu() {
        let want = if bf16_is_faster() {
            ConvBackend::WinogradBf16
        } else if f4_is_faster() {
            ConvBackend::WinogradF4
        } else {
            ConvBackend::Winograd
        };
        assert_eq!(Precision::Auto.backend(), want);
        // Without the native kernel bf16 is emulated: never faster.
        if !crate::kernels::conv::has_native_bf16() {
            assert!(!bf16_is_faster());
        }
        // With the AMX tiles it always is.
        if crate::kernels::conv::amx_status() == crate::kernels::conv::AmxStatus::Active {
            assert!(bf16_is_faster());
        }
    }

    /// On Linux the vendor read through CPUID agrees with /proc/cpuinfo.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn vendor_matches_proc_cpuinfo() {
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
            return;
        };
        let amd = info
            .lines()
            .find(|l| l.starts_with("vendor_id"))
            .is_some_and(|l| l.contains("AuthenticAMD"));
        assert_eq!(is_amd(), amd);
    }
}
