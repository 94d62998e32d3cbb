//! The bf16 GEMM of `src/kernels/conv/bf16.rs` against faer's f32 GEMM, single
//! threaded, at the Winograd convolution's shapes (`m x k` by `k x n`):
//!
//! * `faer-f32`: faer `matmul` (`Par::Seq`) on row-major f32 operands;
//! * `bf16-gemm`: the bf16 `gemm` on operands packed beforehand;
//! * `bf16-pack-gemm`: `PackedB::pack` plus `gemm`, the cost per Winograd
//!   GEMM (A, the transformed weights, is packed once per layer).
//!
//! The `wgrad` shape is the weight gradient `dU = dM · Vᵀ`, with B given
//! transposed (`rs = 1`, `cs = k`).
//!
//! `cargo bench -p allcnn-models --bench bf16_gemm`; throughput is reported
//! in multiply-adds (elements = `m * k * n`, so GFLOP/s = 2 x Gelem/s).
//!
//! The GEMM is reached through the doc-hidden
//! `allcnn_models::kernels::conv::bf16` (not a supported API).

use allcnn_models::kernels::conv::bf16;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

/// Deterministic values in [-1, 1].
fn fill(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.37 + seed).sin()).collect()
}

fn gemms(c: &mut Criterion) {
    let mut group = c.benchmark_group("bf16-gemm");
    eprintln!("native AVX-512 BF16 kernel: {}", bf16::native());
    // (name, m, k, n, B transposed)
    let shapes = [
        ("96x96x256", 96, 96, 256, false),
        ("192x192x256", 192, 192, 256, false),
        ("192x96x256", 192, 96, 256, false),
        ("wgrad-192x256x192", 192, 256, 192, true),
    ];
    for (name, m, k, n, bt) in shapes {
        group.throughput(Throughput::Elements((m * k * n) as u64));
        let a = fill(m * k, 0.1);
        let b = fill(k * n, 0.2);
        // B as given: row-major k x n, or (weight gradient) element (p, j)
        // at b[p + j * k].
        let (rs, cs) = if bt { (1, k) } else { (n, 1) };
        let mut out = vec![0f32; m * n];
        group.bench_function(BenchmarkId::new(name, "faer-f32"), |bench| {
            let lhs = MatRef::from_row_major_slice(&a, m, k);
            let rhs = if bt {
                MatRef::from_row_major_slice(&b, n, k).transpose()
            } else {
                MatRef::from_row_major_slice(&b, k, n)
            };
            bench.iter(|| {
                matmul(
                    MatMut::from_row_major_slice_mut(&mut out, m, n),
                    Accum::Replace,
                    lhs,
                    rhs,
                    1.0,
                    Par::Seq,
                )
            })
        });
        let pa = bf16::PackedA::new(&a, m, k, k, 1);
        let mut pb = bf16::PackedB::default();
        pb.pack(&b, k, n, rs, cs);
        group.bench_function(BenchmarkId::new(name, "bf16-gemm"), |bench| {
            bench.iter(|| bf16::gemm(&mut out, n, &pa, &pb, false))
        });
        group.bench_function(BenchmarkId::new(name, "bf16-pack-gemm"), |bench| {
            bench.iter(|| {
                pb.pack(&b, k, n, rs, cs);
                bf16::gemm(&mut out, n, &pa, &pb, false)
            })
        });
        group.bench_function(BenchmarkId::new(name, "bf16-pack-b"), |bench| {
            bench.iter(|| pb.pack(&b, k, n, rs, cs))
        });
        group.bench_function(BenchmarkId::new(name, "bf16-pack-a"), |bench| {
            bench.iter(|| bf16::PackedA::new(&a, m, k, k, 1))
        });
    }
    group.finish();
}

criterion_group!(benches, gemms);
criterion_main!(benches);
