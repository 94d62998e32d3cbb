//! `allcnn bench`: images per second of a model, as one JSON line.

use std::time::Instant;

use allcnn_models::{AllCnn, ArchSpec, ConvBackend, Init, Precision};
use allcnn_train::{train_step, MomentumSgd, SgdConfig};
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::values::BenchMode;

#[derive(clap::Args)]
pub struct Args {
    /// Architecture name (see `allcnn models`).
    #[arg(long, default_value = "all-cnn-c", value_parser = crate::values::model_name())]
    model: String,
    /// Batch size (1 to 4096).
    #[arg(long, default_value_t = 64, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    batch: usize,
    /// `infer` (eval forward) or `train` (one whole training step: forward
    /// with dropout, cross-entropy loss, backward to every parameter and the
    /// SGD momentum + weight-decay update).
    #[arg(long, value_enum, default_value_t = BenchMode::Infer)]
    mode: BenchMode,
    /// Timed iterations, after the warm-up ones.
    #[arg(long, default_value_t = 5, value_parser = crate::values::count::<usize>)]
    iters: usize,
    /// Untimed iterations first: the first ones fault in the process's
    /// memory and fill its buffer pools, which a long run pays once.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Class count of the head (default 10; 1000 for the ImageNet model).
    #[arg(long, value_parser = crate::values::classes)]
    classes: Option<usize>,
    /// Precision of the convolution GEMMs: `f32` (the default), `bf16`
    /// (bf16 operands, f32 accumulation) or `auto` (what runs fastest on
    /// this kind of CPU: bf16 where it is faster, `winograd-f4` on AVX2 CPUs
    /// without AVX-512, f32 elsewhere). The JSON line reports what ran
    /// (`conv`, `kernel`).
    #[arg(long, value_parser = crate::values::precision(), conflicts_with = "conv")]
    precision: Option<Precision>,
    /// Convolution implementation, the expert override of --precision:
    /// `winograd` (ours, what `f32` runs: Winograd F(2x2,3x3) for 3x3
    /// stride-1 layers, im2col for the rest), `winograd-bf16` (what `bf16`
    /// runs), `winograd-f4` (f32 with Winograd F(4x4,3x3) on maps larger
    /// than 6x6), `gemm` (ours, im2col for every layer) or `candle`.
    #[arg(long, value_parser = crate::values::conv_backend())]
    conv: Option<ConvBackend>,
    #[command(flatten)]
    device: crate::device::DeviceArg,
    /// Accepted for scripts that pass `--json` to every command: the
    /// result is always one JSON line.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    model: &'a str,
    mode: &'a str,
    /// The precision asked for (`--precision`), if any.
    precision: Option<&'a str>,
    /// The convolution backend that ran.
    conv: &'a str,
    /// The GEMM kernel of the convolutions that ran: `f32` (ours, f32),
    /// `amx-bf16` (AMX tiles, `tdpbf16ps`), `avx512-bf16` (`vdpbf16ps`), `portable-bf16` (bf16-rounded operands
    /// multiplied in f32: no faster), `cudnn` / `cudnn-tf32` (CUDA, `cudnn`
    /// feature; TF32 tensor cores with the bf16 precision) or `candle`
    /// (candle's convolution).
    kernel: &'static str,
    /// How the convolutions with at least 16 channels on both sides (all
    /// of All-CNN-C's but conv1 and the 10-class head) ran: `direct-amx`
    /// (implicit GEMM on the AMX tiles, in all three passes), `winograd`
    /// (Winograd F(2x2, 3x3) for the 3x3 stride-1 ones, im2col for the
    /// rest), `im2col`, `cudnn` (cuDNN in all three passes: CUDA in a
    /// build with the `cudnn` feature) or `candle`. The others run im2col
    /// (ours), cuDNN or candle's.
    algorithm: &'static str,
    batch: usize,
    iters: usize,
    /// Untimed iterations before the timed ones.
    warmup: usize,
    device: String,
    threads: usize,
    images_per_sec: f64,
    ms_per_batch: f64,
    /// The median of the timed iterations' times, in ms.
    median_ms_per_batch: f64,
    /// Peak resident memory of the process in MiB (Linux: VmHWM), if known.
    peak_rss_mib: Option<f64>,
    /// Which element-wise and convolution loops run
    /// (`allcnn_models::kernels::simd_description`): `avx512`, `avx2`,
    /// or `portable` and why.
    simd: &'static str,
    /// Whether `--conv winograd-bf16` has the CPU's AVX-512 BF16 kernel.
    native_bf16: bool,
    /// The AMX tile kernel's state on this machine (`active`, or why not).
    amx: String,
    /// The CPU's model name and its SIMD flags that matter here (Linux:
    /// /proc/cpuinfo), so that every figure names its CPU.
    cpu: Option<String>,
}

/// The flags of /proc/cpuinfo that decide which kernels run.
const CPU_FLAGS: [&str; 5] = ["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"];

/// `"MODEL (FLAGS)"` from the text of /proc/cpuinfo: the first processor's
/// model name and which of [`CPU_FLAGS`] it has.
fn cpu_description(cpuinfo: &str) -> Option<String> {
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_string())
        })
    };
    let model = field("model name")?;
    let flags = field("flags").unwrap_or_default();
    let have: Vec<&str> = CPU_FLAGS
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|g| g == *f))
        .collect();
    Some(format!("{model} ({})", have.join(" ")))
}

/// The process's peak resident set size (`VmHWM` in /proc/self/status).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub fn run(args: &Args) -> Result<()> {
    let train = args.mode == BenchMode::Train;
    let backend = match (args.conv, args.precision) {
        (Some(conv), _) => conv,
        (None, precision) => precision.unwrap_or_default().backend(),
    };
    let device = args.device.open()?;
    crate::device::warn_if_bf16_is_emulated(backend, &device);
    let default = if args.model == "all-cnn-imagenet" {
        1000
    } else {
        10
    };
    let classes = args.classes.unwrap_or(default);
    let spec = ArchSpec::by_name(&args.model, classes)?;
    let side = spec.input_size;
    let mut model = AllCnn::init(spec, Init::HeNormal, 0, &device)?;
    model.set_conv_backend(backend);
    let mut sgd = if train {
        Some(MomentumSgd::new(
            model.make_trainable()?,
            SgdConfig {
                lr: 1e-3,
                momentum: 0.9,
                weight_decay: 1e-3,
            },
        ))
    } else {
        None
    };
    // A fixed, deterministic input (the values do not affect the timing).
    let n = args.batch * 3 * side * side;
    let x = Tensor::arange(0u32, n as u32, &device)?
        .to_dtype(DType::F32)?
        .affine(0.01, 0.0)?
        .sin()?
        .reshape((args.batch, 3, side, side))?;
    let labels: Vec<u32> = (0..args.batch as u32).map(|i| i % classes as u32).collect();
    let labels = Tensor::from_vec(labels, args.batch, &device)?;
    let mut step = |i: u64| -> Result<()> {
        if let Some(sgd) = sgd.as_mut() {
            // The trainer's own step (forward with dropout, loss, statistics,
            // backward, update), so the figure is what training runs at.
            train_step(&model, sgd, &x, &labels, 0, i, 1e-3)?;
            // Read one updated parameter back so asynchronous devices finish the step.
            let (_, last) = sgd.params().last().expect("a model has parameters");
            last.as_tensor().sum_all()?.to_device(&Device::Cpu)?;
        } else {
            model.forward(&x)?.to_device(&Device::Cpu)?;
        }
        Ok(())
    };
    for i in 0..args.warmup {
        step(i as u64)?;
    }
    let mut times = Vec::with_capacity(args.iters);
    for i in 0..args.iters {
        let start = Instant::now();
        step((args.warmup + i) as u64)?;
        times.push(start.elapsed().as_secs_f64());
    }
    let secs: f64 = times.iter().sum();
    let report = Report {
        model: &args.model,
        mode: if train { "train" } else { "infer" },
        precision: args.precision.map(Precision::name),
        conv: backend.name(),
        kernel: kernel(backend, &device),
        algorithm: algorithm(backend, &device),
        batch: args.batch,
        iters: args.iters,
        warmup: args.warmup,
        device: format!("{device:?}"),
        threads: candle_core::utils::get_num_threads(),
        images_per_sec: (args.batch * args.iters) as f64 / secs,
        ms_per_batch: secs * 1000.0 / args.iters as f64,
        median_ms_per_batch: median(&mut times) * 1000.0,
        peak_rss_mib: peak_rss_mib(),
        simd: allcnn_models::kernels::simd_description(),
        native_bf16: allcnn_models::kernels::conv::has_native_bf16(),
        amx: allcnn_models::kernels::conv::amx_status().describe(),
        cpu: std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| cpu_description(&c)),
    };
    outln!("{}", serde_json::to_string(&report)?)?;
    Ok(())
}

/// The algorithm of the convolutions `backend` runs on `device` (see
/// [`Report::algorithm`]).
fn algorithm(backend: ConvBackend, device: &Device) -> &'static str {
    let amx = allcnn_models::kernels::conv::amx_status()
        == allcnn_models::kernels::conv::AmxStatus::Active;
    match backend {
        ConvBackend::Candle => "candle",
        _ if device.is_cuda() && cfg!(feature = "cudnn") => "cudnn",
        _ if !device.is_cpu() => "candle",
        ConvBackend::WinogradBf16 if amx => "direct-amx",
        ConvBackend::WinogradBf16 | ConvBackend::Winograd => "winograd",
        ConvBackend::WinogradF4 => "winograd-f4",
        ConvBackend::Gemm => "im2col",
    }
}

/// The median of `values` (the mean of the middle two for an even count);
/// `values` is left sorted. Zero for no values.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The GEMM kernel `backend` runs on `device` (see [`Report::kernel`]).
fn kernel(backend: ConvBackend, device: &Device) -> &'static str {
    match backend {
        ConvBackend::Candle => "candle",
        ConvBackend::WinogradBf16 if device.is_cuda() && cfg!(feature = "cudnn") => "cudnn-tf32",
        _ if device.is_cuda() && cfg!(feature = "cudnn") => "cudnn",
        _ if !device.is_cpu() => "candle",
        ConvBackend::WinogradBf16 => allcnn_models::kernels::conv::bf16::kernel_name(),
        _ => "f32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_description_names_the_model_and_the_kernel_flags() {
        let info = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\n\
                    flags\t\t: fpu avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8\n\n\
                    processor\t: 1\nmodel name\t: other\n";
        assert_eq!(
            cpu_description(info).as_deref(),
            Some("Intel(R) Xeon(R) Platinum 8481C (avx2 avx512f avx512_bf16 amx_tile amx_bf16)")
        );
        // A flag is matched whole: avx512_bf16 is not avx512f.
        let zen = "model name : AMD EPYC\nflags : avx2 avx512_bf16\n";
        assert_eq!(
            cpu_description(zen).as_deref(),
            Some("AMD EPYC (avx2 avx512_bf16)")
        );
        assert_eq!(cpu_description("flags : avx2\n"), None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
