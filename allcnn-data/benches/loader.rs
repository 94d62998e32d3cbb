//! Loader throughput in images per second.
//!
//! - `cifar_bin/*`: CIFAR-10 binary files generated in a temporary folder
//!   (from the JPEG folder when present, else random bytes), with and without
//!   flip + translate + GCN/ZCA, and with the preprocessed cache
//!   (`cache_preprocessed`, later epochs).
//! - `cifar10_jpg/*`: ../shared/data/cifar10-jpg decoded lazily from JPEG,
//!   with flip + translate + GCN/ZCA (skipped when the folder is absent).
//! - `fit_gcn_zca/*`: fitting GCN + ZCA on 10,000 images.
//!
//! Run: `cargo bench -p allcnn-data --bench loader`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use allcnn_data::{
    cifar::encode_cifar_record, Augmentation, CifarDataset, CifarKind, DataLoader, Dataset,
    FolderOptions, GcnZcaConfig, ImageFolder, LoaderConfig, Preprocessing, Split, Subset,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};

const BATCH: usize = 128;
/// Images per measured iteration (a partial epoch keeps the bench short).
const PER_ITER: usize = 40 * BATCH;

fn jpg_root() -> Option<PathBuf> {
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/cifar10-jpg"
    ));
    p.join("train").is_dir().then_some(p)
}

/// Writes CIFAR-10 binary files (10,000 records per file) to `dir`.
fn write_cifar(dir: &std::path::Path) {
    let bin = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let jpg = jpg_root()
        .map(|r| ImageFolder::open_split(&r, Split::Train, FolderOptions::default()).unwrap());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    for (k, f) in CifarKind::Cifar10
        .files(Split::Train)
        .iter()
        .chain(CifarKind::Cifar10.files(Split::Test))
        .enumerate()
    {
        let mut bytes = Vec::with_capacity(10_000 * 3073);
        for i in 0..10_000 {
            match &jpg {
                Some(j) => {
                    let s = j.get((k * 10_000 + i) % j.len()).unwrap();
                    encode_cifar_record(CifarKind::Cifar10, &s.image, s.label, 0, &mut bytes)
                        .unwrap();
                }
                None => {
                    bytes.push(rng.random_range(0..10));
                    bytes.extend((0..3072).map(|_| rng.random::<u8>()));
                }
            }
        }
        std::fs::write(bin.join(f), bytes).unwrap();
    }
}

fn run_epoch_part(loader: &DataLoader, epoch: u64) -> usize {
    let mut n = 0;
    for b in loader.epoch(epoch).take(PER_ITER / BATCH) {
        n += b.unwrap().labels.dims()[0];
    }
    n
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar(tmp.path());
    let train: Arc<dyn Dataset> =
        Arc::new(CifarDataset::load(tmp.path(), CifarKind::Cifar10, Split::Train).unwrap());
    let fit_set = Subset::first(train.clone(), 10_000);

    let mut g = c.benchmark_group("fit_gcn_zca");
    g.sample_size(10).measurement_time(Duration::from_secs(60));
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("10000_images", |b| {
        b.iter(|| Preprocessing::fit_gcn_zca(&fit_set, &GcnZcaConfig::default()).unwrap())
    });
    g.finish();
    let zca = Preprocessing::fit_gcn_zca(&fit_set, &GcnZcaConfig::default()).unwrap();

    let mut g = c.benchmark_group("cifar_bin");
    g.sample_size(10)
        .throughput(Throughput::Elements(PER_ITER as u64));
    let plain = DataLoader::builder(train.clone())
        .config(LoaderConfig::train(BATCH, 1, Augmentation::None))
        .build()
        .unwrap();
    let mut e = 0;
    g.bench_function("scale_only", |b| {
        b.iter(|| {
            e += 1;
            run_epoch_part(&plain, e)
        })
    });
    let paper = DataLoader::builder(train.clone())
        .preprocessing(zca.clone())
        .config(LoaderConfig::train(BATCH, 1, Augmentation::paper_cifar()))
        .build()
        .unwrap();
    g.bench_function("flip_translate_gcn_zca", |b| {
        b.iter(|| {
            e += 1;
            run_epoch_part(&paper, e)
        })
    });
    let cached = DataLoader::builder(train.clone())
        .preprocessing(zca.clone())
        .config(LoaderConfig::train(BATCH, 1, Augmentation::paper_cifar()))
        .cache_preprocessed(true)
        .build()
        .unwrap();
    // Fill the cache once (the first epoch costs what `flip_translate_gcn_zca` does).
    for b in cached.epoch(0) {
        b.unwrap();
    }
    g.bench_function("flip_translate_gcn_zca_cached", |b| {
        b.iter(|| {
            e += 1;
            run_epoch_part(&cached, e)
        })
    });
    g.finish();

    if let Some(root) = jpg_root() {
        let jpg: Arc<dyn Dataset> = Arc::new(
            ImageFolder::open_split(&root, Split::Train, FolderOptions::default()).unwrap(),
        );
        let loader = DataLoader::builder(jpg)
            .preprocessing(zca)
            .config(LoaderConfig::train(BATCH, 1, Augmentation::paper_cifar()))
            .build()
            .unwrap();
        let mut g = c.benchmark_group("cifar10_jpg");
        g.sample_size(10)
            .throughput(Throughput::Elements(PER_ITER as u64));
        g.bench_function("flip_translate_gcn_zca", |b| {
            b.iter(|| {
                e += 1;
                run_epoch_part(&loader, e)
            })
        });
        g.finish();
    } else {
        eprintln!("*** cifar10_jpg benchmark skipped: ../shared/data/cifar10-jpg not found ***");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
