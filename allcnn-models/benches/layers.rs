//! Per-layer convolution benches for All-CNN-C at batch 64: forward, input
//! gradient and weight gradient of each layer: ours with im2col
//! (`allcnn-im2col`), ours with Winograd F(2x2,3x3) where the layer is 3x3
//! stride 1 (`allcnn-winograd`; im2col elsewhere), the same with bf16 GEMM
//! operands (`allcnn-winograd-bf16`), with F(4x4,3x3) on maps larger than
//! 6x6 (`allcnn-winograd-f4`), and candle's `conv2d`.
//!
//! `cargo bench -p allcnn-models --bench layers` (filter with e.g. `-- conv4`)
//!
//! The gradients are isolated through what needs one: with only the input
//! a variable, the backward pass computes the input gradient alone (ours
//! skips the weight gradient; candle computes both, which is part of what
//! is measured); with only the weight a variable, the weight gradient alone.
//! Backward timings include the forward pass that precedes them.
//!
//! The benches allocate with mimalloc, as the `allcnn` binary does: with
//! the system allocator every activation-sized buffer is a fresh `mmap`,
//! and page faults plus kernel page zeroing were 10-15% of a backward
//! bench. Set `MIMALLOC_PURGE_DELAY=10000` to match the binary exactly (it
//! sets that delay itself).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use allcnn_models::kernels::conv::{conv2d, conv2d_with, Algorithm};
use allcnn_models::ArchSpec;
use candle_core::{DType, Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const BATCH: usize = 64;

fn fill(shape: &[usize], seed: f64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::arange(0u32, n as u32, &Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.affine(0.001, seed))
        .and_then(|t| t.sin())
        .and_then(|t| t.reshape(shape))
        .unwrap()
}

fn layers(c: &mut Criterion) {
    let spec = ArchSpec::by_name("all-cnn-c", 10).unwrap();
    let sizes = spec.map_sizes(32).unwrap();
    let mut side_in = 32;
    let mut group = c.benchmark_group("all-cnn-c-layers");
    group.sample_size(10);
    group.throughput(Throughput::Elements(BATCH as u64));
    for (conv, (_, (_, side_out, _))) in spec.convs().iter().zip(
        sizes
            .iter()
            .filter(|(n, _)| n.to_string().starts_with("conv")),
    ) {
        let x = fill(&[BATCH, conv.in_channels, side_in, side_in], 0.1);
        let w = fill(&conv.weight_shape(), 0.2);
        let (s, p) = (conv.stride, conv.padding);
        let name = format!("conv{}", conv.index);
        type ConvFn = fn(&Tensor, &Tensor, usize, usize) -> candle_core::Result<Tensor>;
        let im2col: ConvFn = |x, w, s, p| conv2d(x, w, s, p);
        let winograd: ConvFn = |x, w, s, p| conv2d_with(x, w, s, p, Algorithm::Winograd);
        let bf16: ConvFn = |x, w, s, p| conv2d_with(x, w, s, p, Algorithm::WinogradBf16);
        let f4: ConvFn = |x, w, s, p| conv2d_with(x, w, s, p, Algorithm::WinogradF4);
        let theirs: ConvFn = |x, w, s, p| x.conv2d(w, p, s, 1, 1);
        for (imp, f) in [
            ("allcnn-im2col", im2col),
            ("allcnn-winograd", winograd),
            ("allcnn-winograd-bf16", bf16),
            ("allcnn-winograd-f4", f4),
            ("candle", theirs),
        ] {
            group.bench_function(BenchmarkId::new(format!("{name}/forward"), imp), |b| {
                b.iter(|| f(&x, &w, s, p).unwrap())
            });
            let xv = Var::from_tensor(&x).unwrap();
            group.bench_function(BenchmarkId::new(format!("{name}/input-grad"), imp), |b| {
                b.iter(|| {
                    f(xv.as_tensor(), &w, s, p)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap()
                })
            });
            let wv = Var::from_tensor(&w).unwrap();
            group.bench_function(BenchmarkId::new(format!("{name}/weight-grad"), imp), |b| {
                b.iter(|| {
                    f(&x, wv.as_tensor(), s, p)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap()
                })
            });
        }
        side_in = *side_out;
    }
    group.finish();
}

criterion_group!(benches, layers);
criterion_main!(benches);
