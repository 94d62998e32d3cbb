//! All-CNN-C forward (eval) at batch 64 and 128 on CPU. Criterion reports the time
//! per batch and the throughput in images per second.
//!
//! `cargo bench -p allcnn-models --bench forward`

use allcnn_models::{AllCnn, ArchSpec, Init};
use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn forward(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("forward");
    group.sample_size(10);
    for (name, batch) in [("all-cnn-c", 64usize), ("all-cnn-c", 128)] {
        let model = AllCnn::init(
            ArchSpec::by_name(name, 10).unwrap(),
            Init::HeNormal,
            0,
            &dev,
        )
        .unwrap();
        let n = batch * 3 * 32 * 32;
        let x = Tensor::arange(0u32, n as u32, &dev)
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.affine(0.01, 0.0))
            .and_then(|t| t.sin())
            .and_then(|t| t.reshape((batch, 3, 32, 32)))
            .unwrap();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("{name}/batch{batch}"), |b| {
            b.iter(|| model.forward(&x).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
