//! The loader: shapes, labels, drop-last, seeded shuffle and split, and
//! results independent of the number of worker threads.

use std::sync::Arc;

use allcnn_data::{
    dataset::split_dataset, dataset::train_val_split, dataset::ValidationSize, Augmentation,
    DataError, DataLoader, Dataset, GcnZcaConfig, Image, LoaderConfig, Preprocessing, VecDataset,
};
use candle_core::{DType, Device};

fn dataset(n: usize) -> VecDataset {
    let imgs = (0..n)
        .map(|i| {
            let px = (0..3 * 8 * 8)
                .map(|j| ((i * 37 + j * 11 + (j * j) % 7) % 256) as u8)
                .collect();
            Image::from_chw(3, 8, 8, px).unwrap()
        })
        .collect();
    let labels = (0..n as u32).map(|i| i % 4).collect();
    VecDataset::new(imgs, labels, (0..4).map(|i| format!("c{i}")).collect()).unwrap()
}

#[test]
fn batches_shapes_labels_drop_last() {
    let ds = Arc::new(dataset(70));
    let loader = DataLoader::builder(ds.clone())
        .batch_size(32)
        .build()
        .unwrap();
    assert_eq!(loader.num_batches(), 3);
    let batches: Vec<_> = loader.epoch(0).collect::<Result<_, _>>().unwrap();
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[0].images.dims(), &[32, 3, 8, 8]);
    assert_eq!(batches[0].images.dtype(), DType::F32);
    assert_eq!(batches[0].labels.dtype(), DType::U32);
    assert_eq!(batches[2].labels.dims(), &[6]);
    let labels: Vec<u32> = batches[0].labels.to_vec1().unwrap();
    assert_eq!(&labels[..5], &[0, 1, 2, 3, 0]);
    // Scale preprocessing: values are pixels / 255, in CHW order.
    let img: Vec<f32> = batches[1]
        .images
        .get(0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let want = ds.get(32).unwrap().image;
    assert!(img
        .iter()
        .zip(want.as_chw())
        .all(|(a, &b)| (a - b as f32 / 255.0).abs() < 1e-6));

    let dl = DataLoader::builder(ds)
        .batch_size(32)
        .drop_last(true)
        .build()
        .unwrap();
    assert_eq!(dl.num_batches(), 2);
    assert_eq!(dl.epoch(0).count(), 2);
}

#[test]
fn shuffle_is_seeded_per_epoch() {
    let ds: Arc<dyn Dataset> = Arc::new(dataset(50));
    let mk = |seed| {
        DataLoader::builder(ds.clone())
            .config(LoaderConfig::train(10, seed, Augmentation::None))
            .build()
            .unwrap()
    };
    let (a, b) = (mk(1), mk(1));
    assert_eq!(a.order(0), b.order(0));
    assert_ne!(a.order(0), a.order(1));
    assert_ne!(a.order(0), mk(2).order(0));
    let mut sorted = a.order(3);
    sorted.sort();
    assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    let got: Vec<usize> = a.epoch(3).flat_map(|b| b.unwrap().indices).collect();
    assert_eq!(got, a.order(3));
}

#[test]
fn identical_results_for_any_thread_count() {
    let ds: Arc<dyn Dataset> = Arc::new(dataset(90));
    let zca = Preprocessing::fit_gcn_zca(ds.as_ref(), &GcnZcaConfig::default()).unwrap();
    let run = |workers| {
        let l = DataLoader::builder(ds.clone())
            .preprocessing(zca.clone())
            .config(LoaderConfig {
                workers,
                ..LoaderConfig::train(40, 7, Augmentation::paper_cifar())
            })
            .build()
            .unwrap();
        (0..2)
            .flat_map(|e| {
                l.epoch(e)
                    .map(|b| {
                        b.unwrap()
                            .images
                            .flatten_all()
                            .unwrap()
                            .to_vec1::<f32>()
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let one = run(1);
    assert_eq!(one.len(), 4);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
    // The augmentation really did something: epochs differ.
    assert_ne!(one[0], one[2]);
}

#[test]
fn augmentation_happens_after_normalisation() {
    // Shift every image by 8 px = whole side: all zeros after preprocessing,
    // whatever the preprocessing's offset.
    let ds: Arc<dyn Dataset> = Arc::new(dataset(8));
    let std = Preprocessing::fit_standardize(ds.as_ref()).unwrap();
    let l = DataLoader::builder(ds)
        .preprocessing(std)
        .augmentation(Augmentation::FlipTranslate {
            flip: false,
            max_shift: 5,
        })
        .batch_size(8)
        .build()
        .unwrap();
    let b = l.load_batch(0, &(0..8).collect::<Vec<_>>()).unwrap();
    for (k, img) in b.images.chunks(192).enumerate() {
        let p = Augmentation::FlipTranslate {
            flip: false,
            max_shift: 5,
        }
        .sample(0, 0, k as u64, 8, 8);
        // Rows shifted in from outside are exactly 0 (not the standardised value of 0).
        if p.dy > 0 {
            assert!(img[..8 * p.dy as usize].iter().all(|&v| v == 0.0));
        }
    }
}

#[test]
fn bad_configs_and_errors_propagate() {
    let ds: Arc<dyn Dataset> = Arc::new(dataset(10));
    assert!(matches!(
        DataLoader::builder(ds.clone()).batch_size(0).build(),
        Err(DataError::InvalidConfig { .. })
    ));
    // Preprocessing fitted on another size.
    let other = Preprocessing::fit_gcn_zca(&dataset_of_side(4), &GcnZcaConfig::default()).unwrap();
    let err = DataLoader::builder(ds.clone())
        .preprocessing(other)
        .build()
        .unwrap_err();
    assert!(matches!(err, DataError::WrongImageSize { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("the data set's images: image is 3x8x8 (CxHxW) but 3x4x4"),
        "{err}"
    );
    // Images of varying size: the batch shape comes from the first image,
    // which the error names (an image folder names its file).
    let mut first_small = vec![Image::from_chw(3, 4, 4, vec![0; 48]).unwrap()];
    first_small.extend((0..3).map(|_| Image::from_chw(3, 8, 8, vec![0; 192]).unwrap()));
    let first_small: Arc<dyn Dataset> =
        Arc::new(VecDataset::new(first_small, vec![0; 4], vec!["a".into()]).unwrap());
    let eight = Preprocessing::fit_gcn_zca(&dataset(10), &GcnZcaConfig::default()).unwrap();
    let err = DataLoader::builder(first_small)
        .preprocessing(eight)
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("example 0 of the dataset: image is 3x4x4 (CxHxW) but 3x8x8"),
        "{err}"
    );
    // A dataset whose images change size mid-way: the batch fails, the iterator stops.
    let mut imgs: Vec<Image> = (0..4)
        .map(|_| Image::from_chw(3, 8, 8, vec![0; 192]).unwrap())
        .collect();
    imgs.push(Image::from_chw(3, 4, 4, vec![0; 48]).unwrap());
    let mixed: Arc<dyn Dataset> =
        Arc::new(VecDataset::new(imgs, vec![0; 5], vec!["a".into()]).unwrap());
    let l = DataLoader::builder(mixed).batch_size(2).build().unwrap();
    let results: Vec<_> = l.epoch(0).collect();
    assert_eq!(results.len(), 3);
    assert!(results[2]
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("example 4"));
    // Dropping an iterator early stops its thread.
    let l = DataLoader::builder(ds)
        .batch_size(1)
        .prefetch(1)
        .build()
        .unwrap();
    let mut it = l.epoch(0);
    assert!(it.next().unwrap().is_ok());
    drop(it);
    let _ = Device::Cpu;
}

fn dataset_of_side(side: usize) -> VecDataset {
    let imgs = (0..20)
        .map(|i| {
            Image::from_chw(
                3,
                side,
                side,
                (0..3 * side * side)
                    .map(|j| ((i * 7 + j * 13) % 256) as u8)
                    .collect(),
            )
            .unwrap()
        })
        .collect();
    VecDataset::new(imgs, vec![0; 20], vec!["a".into()]).unwrap()
}

#[test]
fn seeded_train_val_split() {
    let (t, v) = train_val_split(100, ValidationSize::Fraction(0.1), 5).unwrap();
    assert_eq!((t.len(), v.len()), (90, 10));
    let mut all: Vec<usize> = t.iter().chain(&v).copied().collect();
    all.sort();
    assert_eq!(all, (0..100).collect::<Vec<_>>());
    assert_eq!(
        train_val_split(100, ValidationSize::Fraction(0.1), 5)
            .unwrap()
            .1,
        v
    );
    assert_ne!(
        train_val_split(100, ValidationSize::Fraction(0.1), 6)
            .unwrap()
            .1,
        v
    );
    assert!(train_val_split(10, ValidationSize::Count(10), 0).is_err());
    assert!(train_val_split(10, ValidationSize::Fraction(1.5), 0).is_err());
    let (train, val) = split_dataset(Arc::new(dataset(20)), ValidationSize::Count(5), 1).unwrap();
    assert_eq!((train.len(), val.len()), (15, 5));
    assert_eq!(
        val.get(0).unwrap().label,
        val.inner().get(val.indices()[0]).unwrap().label
    );
}

#[test]
fn preprocessed_cache_gives_the_same_batches() {
    let ds: Arc<dyn Dataset> = Arc::new(dataset(60));
    let zca = Preprocessing::fit_gcn_zca(ds.as_ref(), &GcnZcaConfig::default()).unwrap();
    let mk = |cache| {
        DataLoader::builder(ds.clone())
            .preprocessing(zca.clone())
            .config(LoaderConfig::train(16, 4, Augmentation::paper_cifar()))
            .cache_preprocessed(cache)
            .build()
            .unwrap()
    };
    let (plain, cached) = (mk(false), mk(true));
    for epoch in 0..3 {
        for (a, b) in plain.epoch(epoch).zip(cached.epoch(epoch)) {
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_eq!(a.indices, b.indices);
            assert_eq!(
                a.labels.to_vec1::<u32>().unwrap(),
                b.labels.to_vec1::<u32>().unwrap()
            );
            let (a, b): (Vec<f32>, Vec<f32>) = (
                a.images.flatten_all().unwrap().to_vec1().unwrap(),
                b.images.flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert!(a
                .iter()
                .zip(&b)
                .all(|(x, y)| (x - y).abs() <= 1e-4 * (1.0 + x.abs())));
        }
    }
    // Refused with an 8-bit augmentation.
    let err = DataLoader::builder(ds)
        .augmentation(Augmentation::CenterCrop { resize: 8, crop: 6 })
        .cache_preprocessed(true)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("cache_preprocessed"), "{err}");
}
