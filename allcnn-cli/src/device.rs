//! `--device cpu|cuda[:N]|metal[:N]|auto`.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// `--device`: one definition for every command that computes.
#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArg {
    /// Where to compute: cpu, cuda[:N], metal[:N], or auto (CUDA if
    /// available, then Metal, then the CPU).
    #[arg(long = "device", id = "device", default_value = "cpu", value_parser = parse_device)]
    pub spec: DeviceSpec,
}

/// A parsed `--device` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU.
    Cpu,
    /// The first GPU backend available, else the CPU.
    Auto(usize),
    /// CUDA device N.
    Cuda(usize),
    /// Metal device N.
    Metal(usize),
}

impl std::fmt::Display for DeviceSpec {
    /// As given on the command line (`cuda:1`; device 0 without its index).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, index) = match *self {
            DeviceSpec::Cpu => return f.write_str("cpu"),
            DeviceSpec::Auto(i) => ("auto", i),
            DeviceSpec::Cuda(i) => ("cuda", i),
            DeviceSpec::Metal(i) => ("metal", i),
        };
        match index {
            0 => f.write_str(kind),
            i => write!(f, "{kind}:{i}"),
        }
    }
}

/// Parses `cpu`, `auto`, `cuda`, `cuda:1`, `metal:0`, ... (a usage error,
/// exit 2, for anything else).
pub fn parse_device(spec: &str) -> Result<DeviceSpec, String> {
    let (kind, index) = match spec.split_once(':') {
        Some((k, i)) => {
            let i: usize = i
                .parse()
                .map_err(|_| format!("`{i}` is not a device index (cuda:0, metal:1, ...)"))?;
            (k, i)
        }
        None => (spec, 0),
    };
    match kind {
        "cpu" if index == 0 => Ok(DeviceSpec::Cpu),
        "auto" => Ok(DeviceSpec::Auto(index)),
        "cuda" => Ok(DeviceSpec::Cuda(index)),
        "metal" => Ok(DeviceSpec::Metal(index)),
        _ => Err(format!(
            "unknown device `{spec}`: use cpu, cuda[:N], metal[:N] or auto"
        )),
    }
}

impl DeviceArg {
    /// Opens the device, saying which cargo feature is missing when the
    /// binary was built without it.
    pub fn open(&self) -> Result<Device> {
        match self.spec {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Auto(index) => {
                if candle_core::utils::cuda_is_available() {
                    Ok(Device::new_cuda(index)?)
                } else if candle_core::utils::metal_is_available() {
                    Ok(Device::new_metal(index)?)
                } else {
                    Ok(Device::Cpu)
                }
            }
            DeviceSpec::Cuda(index) => {
                if !candle_core::utils::cuda_is_available() {
                    bail!("--device {}: this allcnn was built without CUDA; rebuild with `cargo build --release -p allcnn-cli --features cuda` (or `cudnn`)", self.spec);
                }
                Device::new_cuda(index).with_context(|| format!("opening CUDA device {index}"))
            }
            DeviceSpec::Metal(index) => {
                if !candle_core::utils::metal_is_available() {
                    bail!("--device {}: this allcnn was built without Metal; rebuild with `cargo build --release -p allcnn-cli --features metal` (macOS only)", self.spec);
                }
                Device::new_metal(index).with_context(|| format!("opening Metal device {index}"))
            }
        }
    }
}

/// Warns when `conv` asks for bf16 GEMMs on a CPU without AVX-512 BF16: the
/// portable kernel keeps bf16's rounding but is no faster than f32.
pub fn warn_if_bf16_is_emulated(conv: allcnn_models::ConvBackend, device: &candle_core::Device) {
    if conv == allcnn_models::ConvBackend::WinogradBf16
        && device.is_cpu()
        && !allcnn_models::kernels::conv::has_native_bf16()
    {
        eprintln!(
            "warning: this CPU has no AVX-512 BF16: `winograd-bf16` runs a portable kernel \
             (bf16 rounding, no speed-up); `winograd` is faster and exact here"
        );
    }
}
