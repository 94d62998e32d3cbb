//! Tests on ../shared/data/cifar10-jpg; each skips loudly when it is absent.

use std::sync::Arc;

use allcnn_data::{
    cifar::encode_cifar_record, cifar::CIFAR10_CLASSES, info::info, info::DatasetFormat,
    Augmentation, CifarDataset, CifarKind, DataLoader, Dataset, FolderOptions, GcnZcaConfig,
    ImageFolder, LoaderConfig, Preprocessing, Split, Subset,
};

#[test]
fn folder_reader_counts_and_class_order() {
    let Some(root) = allcnn_testing::cifar10_jpg() else {
        return;
    };
    let train = ImageFolder::open_split(&root, Split::Train, FolderOptions::default()).unwrap();
    let test = ImageFolder::open_split(&root, Split::Test, FolderOptions::default()).unwrap();
    assert_eq!((train.len(), test.len()), (50_000, 10_000));
    assert_eq!(train.class_names(), &CIFAR10_CLASSES.map(String::from));
    assert!(train.class_counts().iter().all(|&c| c == 5_000));
    assert!(test.class_counts().iter().all(|&c| c == 1_000));
    for i in [0, 12_345, 49_999] {
        let s = train.get(i).unwrap();
        assert_eq!(
            (s.image.channels(), s.image.height(), s.image.width()),
            (3, 32, 32)
        );
        assert_eq!(s.label, (i / 5_000) as u32);
    }
    let i = info(&root).unwrap();
    assert_eq!(i.format, DatasetFormat::ImageFolder);
    let sizes: Vec<(String, usize)> = i
        .splits
        .iter()
        .map(|s| (s.name.clone(), s.images))
        .collect();
    assert_eq!(
        sizes,
        vec![("train".into(), 50_000), ("test".into(), 10_000)]
    );
}

#[test]
fn jpegs_to_cifar_binary_roundtrip() {
    let Some(root) = allcnn_testing::cifar10_jpg() else {
        return;
    };
    let test = ImageFolder::open_split(&root, Split::Test, FolderOptions::default()).unwrap();
    let picks: Vec<usize> = (0..10).map(|c| c * 1_000 + c).collect();
    let mut bytes = Vec::new();
    for &i in &picks {
        let s = test.get(i).unwrap();
        encode_cifar_record(CifarKind::Cifar10, &s.image, s.label, 0, &mut bytes).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("test_batch.bin"), &bytes).unwrap();
    let bin = CifarDataset::load(tmp.path(), CifarKind::Cifar10, Split::Test).unwrap();
    assert_eq!(bin.len(), 10);
    for (k, &i) in picks.iter().enumerate() {
        assert_eq!(bin.get(k).unwrap(), test.get(i).unwrap());
    }
}

#[test]
fn gcn_zca_on_real_images_and_loader() {
    let Some(root) = allcnn_testing::cifar10_jpg() else {
        return;
    };
    let train = ImageFolder::open_split(&root, Split::Train, FolderOptions::default()).unwrap();
    // 1,000 images (100 of each class): the eigendecomposition of the
    // 3072x3072 covariance dominates (a few seconds).
    let idx: Vec<usize> = (0..10)
        .flat_map(|c| (0..100).map(move |k| c * 5_000 + k))
        .collect();
    let sub = Arc::new(Subset::new(train, idx).unwrap());
    let zca = Preprocessing::fit_gcn_zca(sub.as_ref(), &GcnZcaConfig::default()).unwrap();
    let loader = DataLoader::builder(sub)
        .preprocessing(zca)
        .config(LoaderConfig::train(250, 3, Augmentation::paper_cifar()))
        .build()
        .unwrap();
    let batch = loader.load_batch(0, &(0..250).collect::<Vec<_>>()).unwrap();
    assert!(batch.images.iter().all(|v| v.is_finite()));
    // Whitened features have variance at most 1 (eigenvalues l / (l + 0.1)).
    let d = 3072;
    let n = 250.0;
    let mut max_var = 0f64;
    for j in (0..d).step_by(97) {
        let col: Vec<f64> = (0..250)
            .map(|i| f64::from(batch.images[i * d + j]))
            .collect();
        let m = col.iter().sum::<f64>() / n;
        let v = col.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
        max_var = max_var.max(v);
    }
    assert!(
        max_var > 0.05 && max_var < 1.5,
        "feature variance {max_var}"
    );
}
