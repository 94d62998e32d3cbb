//! `allcnn bench`: images per second of a model, as one JSON line.

use std::time::Instant;

use allcnn_models::{AllCnn, ArchSpec, Init};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// Architecture name (see `allcnn models`).
    #[arg(long, default_value = "all-cnn-c")]
    model: String,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// What to time: `infer` (eval forward).
    #[arg(long, default_value = "infer")]
    mode: String,
    /// Timed iterations after one warm-up iteration.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Class count of the head (default 10; 1000 for the ImageNet model).
    #[arg(long)]
    classes: Option<usize>,
    /// cpu, cuda[:N], metal[:N] or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Serialize)]
struct Report<'a> {
    model: &'a str,
    mode: &'a str,
    batch: usize,
    iters: usize,
    device: String,
    threads: usize,
    images_per_sec: f64,
    ms_per_batch: f64,
}

pub fn run(args: &Args) -> Result<()> {
    if args.mode != "infer" {
        bail!("--mode {}: only `infer` is available so far (training-step timing lands with allcnn-train)", args.mode);
    }
    if args.batch == 0 || args.iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    let device = crate::device::open(&args.device)?;
    let default = if args.model == "all-cnn-imagenet" {
        1000
    } else {
        10
    };
    let spec = ArchSpec::by_name(&args.model, args.classes.unwrap_or(default))?;
    let side = spec.input_size;
    let model = AllCnn::init(spec, Init::HeNormal, 0, &device)?;
    // A fixed, deterministic input (the values do not affect the timing).
    let n = args.batch * 3 * side * side;
    let x = Tensor::arange(0u32, n as u32, &device)?
        .to_dtype(DType::F32)?
        .affine(0.01, 0.0)?
        .sin()?
        .reshape((args.batch, 3, side, side))?;
    let sync = |t: &Tensor| -> Result<()> {
        t.to_device(&candle_core::Device::Cpu)?;
        Ok(())
    };
    sync(&model.forward(&x)?)?;
    let start = Instant::now();
    for _ in 0..args.iters {
        sync(&model.forward(&x)?)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let report = Report {
        model: &args.model,
        mode: &args.mode,
        batch: args.batch,
        iters: args.iters,
        device: format!("{device:?}"),
        threads: candle_core::utils::get_num_threads(),
        images_per_sec: (args.batch * args.iters) as f64 / secs,
        ms_per_batch: secs * 1000.0 / args.iters as f64,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
