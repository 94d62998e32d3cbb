//! GCN, ZCA and standardisation: hand-computed cases and serialisation.

use std::collections::HashMap;
use std::sync::Arc;

use allcnn_data::{
    preprocess::fit_zca, preprocess::global_contrast_normalize, preprocess::PreprocessKind,
    preprocess::METADATA_KEY, DataError, GcnZcaConfig, Image, Preprocessing, VecDataset,
};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

fn close(a: f32, b: f32, tol: f32) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

#[test]
fn gcn_two_pixels() {
    // [1, 3]: mean 2, centred [-1, 1], norm sqrt(2), scaled to norm 55.
    let mut x = [1.0f32, 3.0];
    global_contrast_normalize(&mut x, 55.0);
    let v = 55.0 / 2f32.sqrt();
    assert!(close(x[0], -v, 1e-6) && close(x[1], v, 1e-6), "{x:?}");
    // A constant image: centred to 0, divisor clamped to 1, no NaN.
    let mut c = [5.0f32, 5.0];
    global_contrast_normalize(&mut c, 55.0);
    assert_eq!(c, [0.0, 0.0]);
}

/// Rows of a 2-D dataset, covariance `[[4, 2], [2, 3]]` (drawn), mean (1, -2).
fn correlated(n: usize) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    // L = chol([[4,2],[2,3]]) = [[2,0],[1,sqrt 2]].
    let mut out = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let (a, b): (f32, f32) = (gauss(&mut rng), gauss(&mut rng));
        out.push(1.0 + 2.0 * a);
        out.push(-2.0 + a + 2f32.sqrt() * b);
    }
    out
}

fn gauss<R: Rng>(rng: &mut R) -> f32 {
    // Box-Muller.
    let u: f32 = rng.random_range(1e-7..1.0);
    let v: f32 = rng.random();
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
}

fn covariance(rows: &[f32], d: usize) -> Vec<f64> {
    let n = rows.len() / d;
    let mut mean = vec![0f64; d];
    for r in rows.chunks(d) {
        for (m, &v) in mean.iter_mut().zip(r) {
            *m += v as f64 / n as f64;
        }
    }
    let mut c = vec![0f64; d * d];
    for r in rows.chunks(d) {
        for i in 0..d {
            for j in 0..d {
                c[i * d + j] += (r[i] as f64 - mean[i]) * (r[j] as f64 - mean[j]) / n as f64;
            }
        }
    }
    c
}

fn whiten(rows: &[f32], mean: &[f32], w: &[f32], d: usize) -> Vec<f32> {
    rows.chunks(d)
        .flat_map(|r| {
            (0..d)
                .map(|j| (0..d).map(|i| (r[i] - mean[i]) * w[i * d + j]).sum::<f32>())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn zca_diagonal_hand_computed() {
    // (±2, 0), (0, ±4): mean 0, covariance diag(2, 8) (divided by n = 4).
    let rows = [2.0, 0.0, -2.0, 0.0, 0.0, 4.0, 0.0, -4.0];
    let (mean, w) = fit_zca(&rows, 2, 0.1).unwrap();
    assert_eq!(mean, vec![0.0, 0.0]);
    let want = [1.0 / 2.1f32.sqrt(), 0.0, 0.0, 1.0 / 8.1f32.sqrt()];
    for (a, b) in w.iter().zip(want) {
        assert!(close(*a, b, 1e-5), "{w:?} vs {want:?}");
    }
}

#[test]
fn zca_whitened_covariance_is_identity() {
    let rows = correlated(20_000);
    // Without filter bias: identity.
    let (mean, w) = fit_zca(&rows, 2, 0.0).unwrap();
    assert!(
        close(mean[0], 1.0, 0.05) && close(mean[1], -2.0, 0.05),
        "{mean:?}"
    );
    let c = covariance(&whiten(&rows, &mean, &w, 2), 2);
    for (i, v) in c.iter().enumerate() {
        let want = if i % 3 == 0 { 1.0 } else { 0.0 };
        assert!((v - want).abs() < 1e-3, "cov {c:?}");
    }
    // ZCA is symmetric (no rotation).
    assert!((w[1] - w[2]).abs() < 1e-6);
    // With filter bias 0.1: eigenvalues l / (l + 0.1), i.e. identity up to the bias.
    let (mean, w) = fit_zca(&rows, 2, 0.1).unwrap();
    let c = covariance(&whiten(&rows, &mean, &w, 2), 2);
    let orig = covariance(&rows, 2);
    let (a, b, d) = (orig[0], orig[1], orig[3]);
    let disc = ((a - d) * (a - d) / 4.0 + b * b).sqrt();
    let (l1, l2) = ((a + d) / 2.0 - disc, (a + d) / 2.0 + disc);
    let trace = c[0] + c[3];
    assert!(
        (trace - (l1 / (l1 + 0.1) + l2 / (l2 + 0.1))).abs() < 1e-3,
        "{c:?}"
    );
    assert!(c[0] < 1.0 && c[3] < 1.0 && c[0] > 0.9);
}

fn small_dataset(n: usize, side: usize) -> VecDataset {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let imgs = (0..n)
        .map(|_| {
            let base: u8 = rng.random_range(0..128);
            let px = (0..3 * side * side)
                .map(|_| base + rng.random_range(0..128u8))
                .collect();
            Image::from_chw(3, side, side, px).unwrap()
        })
        .collect();
    let labels = (0..n as u32).map(|i| i % 3).collect();
    VecDataset::new(imgs, labels, vec!["a".into(), "b".into(), "c".into()]).unwrap()
}

#[test]
fn gcn_zca_fit_chunked_equals_one_chunk() {
    let ds = small_dataset(300, 4);
    let one = Preprocessing::fit_gcn_zca(
        &ds,
        &GcnZcaConfig {
            chunk: 1000,
            ..Default::default()
        },
    )
    .unwrap();
    let many = Preprocessing::fit_gcn_zca(
        &ds,
        &GcnZcaConfig {
            chunk: 37,
            ..Default::default()
        },
    )
    .unwrap();
    let (m1, w1) = one.zca().unwrap();
    let (m2, w2) = many.zca().unwrap();
    assert!(m1.iter().zip(m2).all(|(a, b)| (a - b).abs() < 1e-4));
    assert!(w1
        .iter()
        .zip(w2)
        .all(|(a, b)| (a - b).abs() < 1e-3 * (1.0 + a.abs())));
    assert_eq!(one.kind(), PreprocessKind::GcnZca);
    assert_eq!(one.input_shape(), Some((3, 4, 4)));
}

#[test]
fn cpu_and_tensor_paths_agree_and_whiten() {
    let ds = small_dataset(400, 4);
    let p = Preprocessing::fit_gcn_zca(&ds, &GcnZcaConfig::default()).unwrap();
    let d = 48;
    let pixels: Vec<u8> = (0..400).flat_map(|i| ds_pixels(&ds, i)).collect();
    let mut cpu = vec![0f32; pixels.len()];
    p.apply_u8(&pixels, (3, 4, 4), &mut cpu).unwrap();
    let t = Tensor::from_vec(pixels.clone(), (400, 3, 4, 4), &Device::Cpu).unwrap();
    let via_tensor: Vec<f32> = p
        .apply(&t)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (a, b) in cpu.iter().zip(&via_tensor) {
        assert!((a - b).abs() < 1e-3 * (1.0 + a.abs()), "{a} vs {b}");
    }
    // Whitened training data: covariance close to identity (bias 0.1 is small
    // against these eigenvalues), mean close to 0.
    let c = covariance(&cpu, d);
    let diag: f64 = (0..d).map(|i| c[i * d + i]).sum::<f64>() / d as f64;
    let off: f64 = (0..d)
        .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
        .map(|(i, j)| c[i * d + j].abs())
        .fold(0.0, f64::max);
    assert!(diag > 0.8 && diag <= 1.0, "mean diagonal {diag}");
    assert!(off < 0.05, "largest off-diagonal {off}");
    // Wrong size is an error naming both sizes.
    let err = p
        .apply_u8(&[0u8; 3 * 8 * 8], (3, 8, 8), &mut [0.0; 192])
        .unwrap_err();
    assert!(
        matches!(
            err,
            DataError::WrongImageSize {
                found_h: 8,
                expected_h: 4,
                ..
            }
        ),
        "{err:?}"
    );
}

fn ds_pixels(ds: &VecDataset, i: usize) -> Vec<u8> {
    use allcnn_data::Dataset;
    ds.get(i).unwrap().image.into_chw()
}

#[test]
fn standardize_fit_and_apply() {
    // Channel 0 all 0, channel 1 half 0 half 255, channel 2 all 255.
    let mut px = vec![0u8; 3 * 4];
    px[4..6].fill(255);
    px[8..12].fill(255);
    let img = Image::from_chw(3, 2, 2, px.clone()).unwrap();
    let ds = VecDataset::new(vec![img], vec![0], vec!["x".into()]).unwrap();
    let p = Preprocessing::fit_standardize(&ds).unwrap();
    let (mean, std) = p.channel_stats().unwrap();
    assert!(close(mean[1], 0.5, 1e-6) && close(std[1], 0.5, 1e-6) && mean[2] == 1.0);
    let mut out = vec![0f32; 12];
    p.apply_u8(&px, (3, 2, 2), &mut out).unwrap();
    assert_eq!(&out[4..8], &[1.0, 1.0, -1.0, -1.0]);
    let s = Preprocessing::scale();
    s.apply_u8(&[0, 51, 255], (3, 1, 1), &mut out[..3]).unwrap();
    assert_eq!(&out[..3], &[0.0, 0.2, 1.0]);
}

#[test]
fn parts_and_file_roundtrip() {
    let ds = small_dataset(100, 2);
    let tmp = tempfile::tempdir().unwrap();
    for p in [
        Preprocessing::fit_gcn_zca(&ds, &GcnZcaConfig::default()).unwrap(),
        Preprocessing::fit_standardize(&ds).unwrap(),
        Preprocessing::scale(),
    ] {
        let (json, tensors) = p.to_parts();
        assert!(tensors.iter().all(|(n, _)| n.starts_with("preprocess.")));
        let mut map: HashMap<String, Tensor> = tensors.into_iter().collect();
        // Model weights in the same map are ignored.
        map.insert(
            "conv1.weight".into(),
            Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
        assert_eq!(Preprocessing::from_parts(&json, &map).unwrap(), p);
        let path = tmp.path().join("pre.safetensors");
        p.save(&path).unwrap();
        assert_eq!(Preprocessing::load(&path).unwrap(), p);
    }
    // Missing tensor, foreign JSON, no metadata: clear errors.
    let p = Preprocessing::fit_gcn_zca(&ds, &GcnZcaConfig::default()).unwrap();
    let (json, _) = p.to_parts();
    let err = Preprocessing::from_parts(&json, &HashMap::new()).unwrap_err();
    assert!(err.to_string().contains("preprocess.zca.mean"), "{err}");
    assert!(Preprocessing::from_parts("{\"format\":\"other\"}", &HashMap::new()).is_err());
    let bare = tmp.path().join("bare.safetensors");
    candle_core::safetensors::save(
        &HashMap::from([(
            "w",
            Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap(),
        )]),
        &bare,
    )
    .unwrap();
    let err = Preprocessing::load(&bare).unwrap_err();
    assert!(err.to_string().contains(METADATA_KEY), "{err}");
    let err = Preprocessing::load(&tmp.path().join("nope.safetensors")).unwrap_err();
    assert!(err.to_string().contains("nope.safetensors"), "{err}");
    let _ = Arc::new(p);
}

/// A 4-dimensional whitening matrix with eigenvalues `diag` in a rotated
/// (non-axis) orthonormal basis, row-major.
fn rotated_whitening(diag: [f32; 4]) -> Vec<f32> {
    // The 4x4 Hadamard matrix / 2 is orthonormal and exactly representable in f16.
    let h = [
        [0.5f32, 0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5, -0.5],
        [0.5, 0.5, -0.5, -0.5],
        [0.5, -0.5, -0.5, 0.5],
    ];
    let mut w = vec![0f32; 16];
    for i in 0..4 {
        for j in 0..4 {
            w[i * 4 + j] = (0..4).map(|k| h[k][i] * diag[k] * h[k][j]).sum();
        }
    }
    w
}

#[test]
fn compressed_whitening_hand_computed() {
    // ZCA with filter bias 0.1 of variances (10, 5, 0, 0): scales
    // 1/sqrt(10.1), 1/sqrt(5.1) and twice 1/sqrt(0.1).
    let (a, b, c) = (
        1.0 / 10.1f32.sqrt(),
        1.0 / 5.1f32.sqrt(),
        1.0 / 0.1f32.sqrt(),
    );
    let w = rotated_whitening([a, b, c, c]);
    let full = Preprocessing::from_gcn_zca(55.0, 0.1, (1, 2, 2), vec![0.0; 4], w.clone()).unwrap();
    assert_eq!(full.whitening_rank(), None);

    // Rank 2 keeps the two high-variance directions; the rest is exactly c I.
    let two = full.compress_whitening(2).unwrap();
    assert_eq!(two.whitening_rank(), Some(2));
    for (x, y) in two.zca().unwrap().1.iter().zip(&w) {
        assert!(close(*x, *y, 1e-5), "{x} vs {y}");
    }
    // Rank 1: the isotropic value is the mean of the dropped scales (b, c, c).
    let one = full.compress_whitening(1).unwrap();
    let iso = (b + 2.0 * c) / 3.0;
    let expect = rotated_whitening([a, iso, iso, iso]);
    for (x, y) in one.zca().unwrap().1.iter().zip(&expect) {
        assert!(close(*x, *y, 1e-5), "{x} vs {y}");
    }
    // Bad ranks name the value.
    for bad in [0, 4, 9] {
        let err = full.compress_whitening(bad).unwrap_err();
        assert!(err.to_string().contains(&bad.to_string()), "{err}");
        // The range as a reader takes it (it said "1..4", which reads as
        // including 4).
        assert!(err.to_string().contains("between 1 and 3"), "{err}");
    }
    // Other transforms are unchanged.
    assert_eq!(
        Preprocessing::scale().compress_whitening(2).unwrap(),
        Preprocessing::scale()
    );
}

#[test]
fn compressed_whitening_roundtrips_small_and_close_on_data() {
    // Like natural images, a few directions carry nearly all the variance:
    // six random patterns with random weights; the rest is u8 rounding,
    // far below the filter bias.
    let d = 48;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let patterns: Vec<Vec<f32>> = (0..6)
        .map(|_| (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        .collect();
    let imgs = (0..400)
        .map(|_| {
            let w: Vec<f32> = (0..6).map(|_| rng.random_range(-20.0f32..20.0)).collect();
            let px = (0..d)
                .map(|j| {
                    let v: f32 = (0..6).map(|k| w[k] * patterns[k][j]).sum();
                    (128.0 + v).round().clamp(0.0, 255.0) as u8
                })
                .collect();
            Image::from_chw(3, 4, 4, px).unwrap()
        })
        .collect();
    let ds = VecDataset::new(imgs, vec![0; 400], vec!["a".into()]).unwrap();
    let full = Preprocessing::fit_gcn_zca(&ds, &GcnZcaConfig::default()).unwrap();
    let compact = full.compress_whitening(24).unwrap();
    // Stored form: f16 basis rows and f32 scales instead of the d x d matrix.
    let (json, tensors) = compact.to_parts();
    assert!(json.contains("\"version\":2"), "{json}");
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    assert!(!map.contains_key("preprocess.zca.whitening"));
    let basis = &map["preprocess.zca.basis"];
    assert_eq!(basis.dims(), &[24, d]);
    assert_eq!(basis.dtype(), candle_core::DType::F16);
    assert_eq!(map["preprocess.zca.scales"].dims(), &[24]);
    let back = Preprocessing::from_parts(&json, &map).unwrap();
    assert_eq!(back, compact);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("compact.safetensors");
    compact.save(&path).unwrap();
    assert_eq!(Preprocessing::load(&path).unwrap(), compact);

    // Applied to the data, the compact transform stays close to the full one.
    let pixels: Vec<u8> = (0..400).flat_map(|i| ds_pixels(&ds, i)).collect();
    let mut a = vec![0f32; pixels.len()];
    let mut b = vec![0f32; pixels.len()];
    full.apply_u8(&pixels, (3, 4, 4), &mut a).unwrap();
    compact.apply_u8(&pixels, (3, 4, 4), &mut b).unwrap();
    let num: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f32 = a.iter().map(|x| x * x).sum();
    let rel = (num / den).sqrt();
    assert!(rel < 0.02, "relative error {rel}");
    // Too low a rank is visibly worse: the error measure can fail.
    let crude = full.compress_whitening(2).unwrap();
    crude.apply_u8(&pixels, (3, 4, 4), &mut b).unwrap();
    let num: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let crude_rel = (num / den).sqrt();
    assert!(crude_rel > 3.0 * rel, "rank 2: {crude_rel}, rank 24: {rel}");

    // Inconsistent metadata is refused with the reason.
    let broken = json.replace("\"rank\":24", "\"rank\":0");
    let err = Preprocessing::from_parts(&broken, &map).unwrap_err();
    assert!(err.to_string().contains("rank 0"), "{err}");
}

#[test]
fn random_subset_is_seeded_sorted_and_spread() {
    use allcnn_data::{Dataset, Subset};
    // 100 images sorted by class (10 per class), as an image folder is.
    let imgs = (0..100)
        .map(|_| Image::from_chw(3, 2, 2, vec![0; 12]).unwrap())
        .collect();
    let labels = (0..100u32).map(|i| i / 10).collect();
    let names = (0..10).map(|c| format!("c{c}")).collect();
    let ds = Arc::new(VecDataset::new(imgs, labels, names).unwrap());
    let labels_of = |s: &Subset<Arc<VecDataset>>| -> Vec<u32> {
        (0..s.len()).map(|i| s.get(i).unwrap().label).collect()
    };
    let a = Subset::random(ds.clone(), 20, 7);
    let b = Subset::random(ds.clone(), 20, 7);
    let c = Subset::random(ds.clone(), 20, 8);
    assert_eq!(a.len(), 20);
    assert_eq!(labels_of(&a), labels_of(&b));
    assert_ne!(a.indices(), c.indices());
    assert!(a.indices().windows(2).all(|w| w[0] < w[1]));
    // Not just the first classes.
    let mut classes = labels_of(&a);
    classes.dedup();
    assert!(classes.len() >= 6, "{classes:?}");
    assert_eq!(Subset::random(ds, 1000, 7).len(), 100);
}

/// Shuffled labels are a seeded permutation of the true ones: the same
/// histogram, images untouched, most labels changed, the same permutation
/// for the same seed and another for another seed.
#[test]
fn shuffled_labels_permute_the_labels_and_keep_the_images() {
    use allcnn_data::dataset::ShuffledLabels;
    use allcnn_data::Dataset;
    let imgs = (0..100u8)
        .map(|i| Image::from_chw(3, 2, 2, vec![i; 12]).unwrap())
        .collect();
    let labels: Vec<u32> = (0..100u32).map(|i| i / 10).collect();
    let names = (0..10).map(|c| format!("c{c}")).collect();
    let ds = Arc::new(VecDataset::new(imgs, labels.clone(), names).unwrap());
    let shuffled = |seed| ShuffledLabels::new(ds.clone(), seed).unwrap();
    let labels_of = |s: &ShuffledLabels<Arc<VecDataset>>| -> Vec<u32> {
        (0..s.len()).map(|i| s.label(i).unwrap()).collect()
    };
    let a = shuffled(3);
    let got = labels_of(&a);
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, labels, "the label histogram changes");
    let kept = got.iter().zip(&labels).filter(|(g, l)| g == l).count();
    assert!(kept < 30, "{kept} of 100 labels unchanged");
    for (i, &label) in got.iter().enumerate() {
        let s = a.get(i).unwrap();
        assert_eq!(s.label, label, "get and label disagree at {i}");
        assert_eq!(s.image.as_chw()[0], i as u8, "image {i} moved");
    }
    assert_eq!(labels_of(&shuffled(3)), got);
    assert_ne!(labels_of(&shuffled(4)), got);
    assert_eq!(a.class_names(), ds.class_names());
    assert!(a.label(100).is_err());
}
