//! Byte-level tests of the CIFAR readers.

use std::path::Path;

use allcnn_data::{
    cifar::parse_cifar_records, cifar::LabelGranularity, CifarDataset, CifarKind, DataError,
    Dataset, Split,
};
use rand::{Rng, SeedableRng};

use crate::util::{cifar_bytes, write_cifar_dir};

/// One hand-made CIFAR-10 record: label 7, R plane = 1, G plane = 2, B plane
/// = pixel index within the plane (mod 256).
fn record10() -> Vec<u8> {
    let mut r = vec![7u8];
    r.extend(std::iter::repeat_n(1u8, 1024));
    r.extend(std::iter::repeat_n(2u8, 1024));
    r.extend((0..1024).map(|i| (i % 256) as u8));
    r
}

#[test]
fn cifar10_record_layout() {
    let mut bytes = record10();
    bytes.extend(record10());
    bytes[3073] = 3; // second record's label
    let rec = parse_cifar_records(&bytes, CifarKind::Cifar10, Path::new("x.bin")).unwrap();
    assert_eq!(rec.len(), 2);
    assert_eq!(rec.labels, vec![7, 3]);
    assert!(rec.coarse.is_empty());
    assert_eq!(rec.pixels.len(), 2 * 3072);
    // Channel order R, G, B; planes row-major: (c=2, y=1, x=3) is index 32 + 3.
    assert_eq!(rec.pixels[0], 1);
    assert_eq!(rec.pixels[1024], 2);
    assert_eq!(rec.pixels[2048 + 32 + 3], 35);
    assert_eq!(rec.pixels[3072 + 2048 + 255], 255);
}

#[test]
fn cifar100_record_layout_fine_and_coarse() {
    let mut bytes = vec![13u8, 87u8];
    bytes.extend((0..3072).map(|i| (i / 1024) as u8 * 100));
    let rec = parse_cifar_records(&bytes, CifarKind::Cifar100, Path::new("t.bin")).unwrap();
    assert_eq!(rec.labels, vec![87]);
    assert_eq!(rec.coarse, vec![13]);
    assert_eq!(rec.pixels[0], 0);
    assert_eq!(rec.pixels[1024], 100);
    assert_eq!(rec.pixels[3071], 200);
}

#[test]
fn truncated_file_names_file_and_sizes() {
    let mut bytes = cifar_bytes(CifarKind::Cifar10, 3, 1);
    bytes.truncate(2 * 3073 + 100);
    let err =
        parse_cifar_records(&bytes, CifarKind::Cifar10, Path::new("data_batch_9.bin")).unwrap_err();
    match &err {
        DataError::BadRecordFile {
            records, remainder, ..
        } => {
            assert_eq!((*records, *remainder), (2, 100));
        }
        e => panic!("unexpected {e:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("data_batch_9.bin") && msg.contains("3073"),
        "{msg}"
    );
    // An empty file is not a dataset either.
    assert!(parse_cifar_records(&[], CifarKind::Cifar10, Path::new("e.bin")).is_err());
}

#[test]
fn label_out_of_range() {
    let mut bytes = cifar_bytes(CifarKind::Cifar10, 2, 2);
    bytes[3073] = 10;
    let err = parse_cifar_records(&bytes, CifarKind::Cifar10, Path::new("b.bin")).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                record: 1,
                label: 10,
                ..
            }
        ),
        "{err:?}"
    );
    let mut bytes = cifar_bytes(CifarKind::Cifar100, 1, 2);
    bytes[0] = 20; // coarse
    let err = parse_cifar_records(&bytes, CifarKind::Cifar100, Path::new("c.bin")).unwrap_err();
    assert!(err.to_string().contains("coarse label 20"), "{err}");
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    for _ in 0..200 {
        let n = rng.random_range(0..3 * 3074 + 5);
        let bytes: Vec<u8> = (0..n).map(|_| rng.random_range(0..120)).collect();
        for kind in [CifarKind::Cifar10, CifarKind::Cifar100] {
            if let Ok(r) = parse_cifar_records(&bytes, kind, Path::new("fuzz")) {
                assert_eq!(r.pixels.len(), r.len() * 3072);
            }
        }
    }
}

#[test]
fn load_folder_and_granularity() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar_dir(tmp.path(), CifarKind::Cifar10, 4);
    // Accepts the parent folder and the dataset folder itself.
    let a = CifarDataset::load(tmp.path(), CifarKind::Cifar10, Split::Train).unwrap();
    let b = CifarDataset::load(
        &tmp.path().join("cifar-10-batches-bin"),
        CifarKind::Cifar10,
        Split::Test,
    )
    .unwrap();
    assert_eq!((a.len(), b.len()), (20, 4));
    assert_eq!(a.class_names()[0], "airplane");
    assert_eq!(a.get(5).unwrap().label, 1); // file 2, record 1
    assert_eq!(a.image_shape(), Some((3, 32, 32)));
    assert!(matches!(a.get(20), Err(DataError::IndexOutOfRange { .. })));

    write_cifar_dir(tmp.path(), CifarKind::Cifar100, 30);
    std::fs::write(
        tmp.path().join("cifar-100-binary/coarse_label_names.txt"),
        (0..20).map(|i| format!("super{i}\n")).collect::<String>(),
    )
    .unwrap();
    let fine = CifarDataset::load(tmp.path(), CifarKind::Cifar100, Split::Train).unwrap();
    assert_eq!(fine.num_classes(), 100);
    assert_eq!(fine.label(25).unwrap(), 25);
    let coarse = fine.clone().with_labels(LabelGranularity::Coarse);
    assert_eq!(coarse.num_classes(), 20);
    assert_eq!(coarse.class_names()[3], "super3");
    assert_eq!(coarse.label(25).unwrap(), 5);
    assert_eq!(fine.get(7).unwrap().image, coarse.get(7).unwrap().image);
}

#[test]
fn missing_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_cifar_dir(tmp.path(), CifarKind::Cifar10, 2);
    std::fs::remove_file(dir.join("data_batch_3.bin")).unwrap();
    let err = CifarDataset::load(tmp.path(), CifarKind::Cifar10, Split::Train).unwrap_err();
    let msg = err.to_string();
    let hint = format!(
        "allcnn data download cifar10 --dir {}`",
        tmp.path().display()
    );
    assert!(
        msg.contains("data_batch_3.bin") && msg.contains(&hint),
        "{msg}"
    );
    // Given as the archive's folder itself: the download goes to its parent.
    let err = CifarDataset::load(&dir, CifarKind::Cifar10, Split::Train).unwrap_err();
    assert!(err.to_string().contains(&hint), "{err}");
    // A truncated file on disk, through the loader.
    std::fs::write(dir.join("test_batch.bin"), vec![0u8; 3073 * 2 - 1]).unwrap();
    let err = CifarDataset::load(tmp.path(), CifarKind::Cifar10, Split::Test).unwrap_err();
    assert!(
        matches!(err, DataError::BadRecordFile { .. })
            && err.to_string().contains("test_batch.bin")
    );
}
