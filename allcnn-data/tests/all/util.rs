//! Shared test helpers.

use std::path::{Path, PathBuf};

use allcnn_data::{cifar::encode_cifar_record, CifarKind, Image, Split};
use rand::{Rng, SeedableRng};

/// A deterministic pseudo-random 3x32x32 image.
pub fn random_image(seed: u64) -> Image {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let px: Vec<u8> = (0..3072).map(|_| rng.random()).collect();
    Image::from_chw(3, 32, 32, px).unwrap()
}

/// Bytes of `n` CIFAR records of `kind` with labels `i % classes`.
pub fn cifar_bytes(kind: CifarKind, n: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let img = random_image(seed * 1000 + i as u64);
        encode_cifar_record(
            kind,
            &img,
            (i % kind.num_classes()) as u32,
            (i % 20) as u32,
            &mut out,
        )
        .unwrap();
    }
    out
}

/// Writes a complete, tiny CIFAR folder (`records` per file) under `root`.
pub fn write_cifar_dir(root: &Path, kind: CifarKind, records: usize) -> PathBuf {
    let dir = root.join(kind.folder());
    std::fs::create_dir_all(&dir).unwrap();
    for (k, f) in kind
        .files(Split::Train)
        .iter()
        .chain(kind.files(Split::Test))
        .enumerate()
    {
        std::fs::write(dir.join(f), cifar_bytes(kind, records, k as u64)).unwrap();
    }
    dir
}
