//! `--device cpu|cuda[:N]|metal[:N]|auto`.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// Parses a device flag and opens the device, saying which cargo feature is
/// missing when the binary was built without it.
pub fn open(spec: &str) -> Result<Device> {
    let (kind, index) = match spec.split_once(':') {
        Some((k, i)) => {
            let i: usize = i
                .parse()
                .with_context(|| format!("device `{spec}`: `{i}` is not a device index"))?;
            (k, i)
        }
        None => (spec, 0),
    };
    match kind {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                Ok(Device::new_cuda(index)?)
            } else if candle_core::utils::metal_is_available() {
                Ok(Device::new_metal(index)?)
            } else {
                Ok(Device::Cpu)
            }
        }
        "cuda" => {
            if !candle_core::utils::cuda_is_available() {
                bail!("device `{spec}`: this allcnn was built without CUDA; rebuild with `cargo build --release -p allcnn-cli --features cuda` (or `cudnn`)");
            }
            Device::new_cuda(index).with_context(|| format!("opening CUDA device {index}"))
        }
        "metal" => {
            if !candle_core::utils::metal_is_available() {
                bail!("device `{spec}`: this allcnn was built without Metal; rebuild with `cargo build --release -p allcnn-cli --features metal` (macOS only)");
            }
            Device::new_metal(index).with_context(|| format!("opening Metal device {index}"))
        }
        other => bail!("unknown device `{other}`: use cpu, cuda[:N], metal[:N] or auto"),
    }
}

/// Warns when `conv` asks for bf16 GEMMs on a CPU without AVX-512 BF16: the
/// portable kernel keeps bf16's rounding but is no faster than f32.
pub fn warn_if_bf16_is_emulated(conv: allcnn_models::ConvBackend, device: &candle_core::Device) {
    if conv == allcnn_models::ConvBackend::WinogradBf16
        && device.is_cpu()
        && !allcnn_models::conv::has_native_bf16()
    {
        eprintln!(
            "warning: this CPU has no AVX-512 BF16: `winograd-bf16` runs a portable kernel \
             (bf16 rounding, no speed-up); `winograd` is faster and exact here"
        );
    }
}
