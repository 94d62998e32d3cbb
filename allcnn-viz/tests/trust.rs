//! The trust report's parts: rank correlation and SSIM against SciPy and
//! scikit-image, layer randomisation, the sanity check's verdicts, and
//! deletion/insertion curves on hand-checkable cases.

mod common;

use std::collections::HashMap;

use allcnn_models::AllCnn;
use allcnn_viz::{
    auc, randomize_layers, similarity, spearman, ssim, DeletionInsertion, Method, MethodOptions,
    Randomized, SanityCheck, Target, VizError,
};
use candle_core::{DType, Device, Tensor};
use common::{conv1x1, model_from};

/// `a = (sin(0.7 i) + 1) / 2`, `b = cos(0.3 i)^2`, `c = round(4 a) / 4`
/// (ties) for `i = 0..90`, as a 9x10 image, in f32.
fn series() -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = (0..90)
        .map(|i| (((i as f64 * 0.7).sin() + 1.0) / 2.0) as f32)
        .collect();
    let b: Vec<f32> = (0..90)
        .map(|i| (i as f64 * 0.3).cos().powi(2) as f32)
        .collect();
    let c: Vec<f32> = a.iter().map(|v| (v * 4.0).round() / 4.0).collect();
    (a, b, c)
}

#[test]
fn rank_correlation_and_ssim_match_scipy_and_scikit_image() {
    // scipy.stats.spearmanr(a, b), spearmanr(c, b);
    // skimage.metrics.structural_similarity(A, B, data_range=1.0) on the
    // 9x10 images (scikit-image 0.26, SciPy 1.17).
    let (a, b, c) = series();
    assert!((spearman(&a, &b) - 0.212_199_04).abs() < 1e-6);
    assert!((spearman(&c, &b) - 0.223_325_58).abs() < 1e-6);
    assert!((ssim(&a, &b, 9, 10) - 0.054_071_865).abs() < 1e-5);
    assert!((ssim(&a, &c, 9, 10) - 0.983_638).abs() < 1e-5);
    assert_eq!(spearman(&a, &a), 1.0);
    assert!((ssim(&a, &a, 9, 10) - 1.0).abs() < 1e-6);
    // A constant map has no ranking: correlation 0, not NaN.
    assert_eq!(spearman(&a, &[0.5; 90]), 0.0);
    // Constant images 0 and 1: only the luminance term, C1 / (1 + C1).
    let ones = [1.0f32; 90];
    let zeros = [0.0f32; 90];
    assert!((ssim(&zeros, &ones, 9, 10) - 1e-4 / 1.0001).abs() < 1e-9);
}

fn all_cnn_c() -> AllCnn {
    common::all_cnn_c(5)
}

#[test]
fn randomised_layers_are_seeded_scaled_and_only_those_asked_for() {
    let model = all_cnn_c();
    let a = randomize_layers(&model, &[9, 8], 11).unwrap();
    let b = randomize_layers(&model, &[9], 11).unwrap();
    let p = |m: &AllCnn| -> HashMap<String, Vec<f32>> {
        m.parameters()
            .into_iter()
            .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap()))
            .collect()
    };
    let (orig, a, b) = (p(&model), p(&a), p(&b));
    for (name, v) in &orig {
        let changed_a = name.starts_with("conv9.") || name.starts_with("conv8.");
        if !changed_a {
            assert_eq!(&a[name], v, "{name} must stay");
        } else if v.iter().any(|&x| x != 0.0) {
            // (He-initialised biases are all zero: drawn from N(0, 0) they
            // stay zero.)
            assert_ne!(&a[name], v, "{name} must be re-drawn");
        }
        if name.starts_with("conv9.") {
            // The same layer gets the same random weights in both.
            assert_eq!(a[name], b[name], "{name}");
        }
    }
    // The fresh weights keep the trained tensor's spread.
    let std = |v: &[f32]| {
        let m = v.iter().sum::<f32>() / v.len() as f32;
        (v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / v.len() as f32).sqrt()
    };
    let (s0, s1) = (std(&orig["conv8.weight"]), std(&a["conv8.weight"]));
    assert!((s0 - s1).abs() < 0.02 * s0, "{s0} vs {s1}");
    let err = randomize_layers(&model, &[12], 0).unwrap_err();
    assert!(matches!(err, VizError::NoSuchLayer { .. }), "{err}");
}

#[test]
fn sanity_check_measures_every_layer_and_judges_by_the_full_cascade() {
    let model = all_cnn_c();
    let x = common::noise(2, 17);
    // The predicted classes: an untrained network can have dead class maps
    // (all zero after the ReLU), whose gradient is zero and has no rank
    // order to compare; the top class's map is alive.
    let target = Target::PerImage(allcnn_viz::predict(&model, &x).unwrap());
    let methods = [Method::Gradient, Method::GuidedBackprop];
    let mut calls = Vec::new();
    let report = SanityCheck::new(&model, &methods)
        .seed(3)
        .run(
            &x,
            &target,
            Some(&randomize_layers(&model, &[1, 2, 3, 4, 5, 6, 7, 8, 9], 99).unwrap()),
            &mut |d, t| calls.push((d, t)),
        )
        .unwrap();
    // trained + 9 cascading + 9 independent + the shuffled-label network.
    assert_eq!(calls.last(), Some(&(20, 20)));
    assert_eq!(report.rows.len(), 2 * 19);
    assert_eq!(report.verdicts.len(), 2);
    assert_eq!(report.cascade_maps[0].1.dims(), &[10, 3, 32, 32]);
    for v in &report.verdicts {
        let all = report
            .rows
            .iter()
            .find(|r| {
                r.method == v.method
                    && r.randomized
                        == Randomized::Cascading {
                            top: 9,
                            down_to: "conv1".into(),
                        }
            })
            .unwrap();
        assert_eq!(all.similarity.rank_abs, v.all_layers_rank_abs);
        let cascade: Vec<f32> = report
            .rows
            .iter()
            .filter(|r| {
                r.method == v.method && matches!(r.randomized, Randomized::Cascading { .. })
            })
            .map(|r| r.similarity.rank_abs)
            .collect();
        assert_eq!(cascade.len(), 9);
        // The upper half: the class layer random, then the top 2, ..., 5.
        let mean = cascade[..5].iter().sum::<f32>() / 5.0;
        assert!((v.upper_cascade_rank_abs - mean).abs() < 1e-6);
        assert_eq!(v.passes, mean < 0.5 && v.labels_rank_abs.unwrap() < 0.5);
        assert!(v.all_layers_rank_abs.abs() <= 1.0 && v.all_layers_ssim <= 1.0);
    }
    // Randomising nothing leaves the maps identical: a network compared
    // with itself has rank correlation 1.
    let same = Method::Gradient
        .attribute_with(&model, &x, &target, &MethodOptions::default())
        .unwrap();
    let s = similarity(&same, &same).unwrap();
    assert!((s.rank_abs - 1.0).abs() < 1e-6 && (s.ssim - 1.0).abs() < 1e-6);
    assert_eq!(s.compared, x.dim(0).unwrap());
    // A constant map (a unit that never fires) or a NaN one has no ranking:
    // that image is left out (it scored 0, a "pass", or 1), and with no
    // image left the comparison is undefined (NaN), not a number.
    let (n, c, h, w) = same.dims4().unwrap();
    let blank = Tensor::zeros((n, c, h, w), DType::F32, same.device()).unwrap();
    let nan = (blank.clone() + f64::NAN).unwrap();
    for other in [&blank, &nan] {
        let s = similarity(&same, other).unwrap();
        assert_eq!(s.compared, 0);
        assert!(s.rank_abs.is_nan() && s.ssim.is_nan(), "{s:?}");
    }
    let one_blank = Tensor::cat(
        &[
            blank.narrow(0, 0, 1).unwrap(),
            same.narrow(0, 1, n - 1).unwrap(),
        ],
        0,
    )
    .unwrap();
    let s = similarity(&same, &one_blank).unwrap();
    assert_eq!(s.compared, n - 1);
    assert!(
        (s.rank_abs - 1.0).abs() < 1e-6,
        "the others still agree: {s:?}"
    );
    // The gradient of a network whose every layer is random has nothing to
    // do with the trained one's.
    let g = report
        .verdicts
        .iter()
        .find(|v| v.method == "gradient")
        .unwrap();
    assert!(g.all_layers_rank_abs < 0.5, "{g:?}");
    // (The verdicts on the trained All-CNN-C, where guided backprop fails,
    // are in docs/visualization.md; an untrained network has no learned
    // weights to lose.)
}

/// One 1x1 convolution (weight 1, bias 0) to one channel, then a 1x1 class
/// conv to two classes with weights (1, -1): logits (mean relu(x), -...).
fn two_class() -> AllCnn {
    model_from(
        1,
        4,
        vec![conv1x1(1), conv1x1(2)],
        vec![
            ("conv1.weight", vec![1.0], vec![1, 1, 1, 1]),
            ("conv1.bias", vec![0.0], vec![1]),
            ("conv2.weight", vec![1.0, -1.0], vec![2, 1, 1, 1]),
            ("conv2.bias", vec![0.0, 0.0], vec![2]),
        ],
    )
}

#[test]
fn deletion_and_insertion_follow_the_ranking() {
    // Class 0's logit is mean(relu(x)) and class 1's is 0 (its ReLU
    // clips -mean): p0 = sigmoid(mean(x)) for x >= 0.
    let model = two_class();
    let v: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let x = Tensor::from_vec(v.clone(), (1, 1, 4, 4), &Device::Cpu).unwrap();
    let di = DeletionInsertion::new(&model).steps(4).batch(3);
    let sigmoid = |m: f32| 1.0 / (1.0 + (-m).exp());
    // Ranking by the pixel values: delete the largest first.
    let curves = di.curves(&x, &x, &Target::Class(0)).unwrap();
    let sum = |k: usize| -> f32 { v.iter().rev().take(k).sum() };
    for k in 0..=4 {
        let deleted = sigmoid((120.0 - sum(4 * k)) / 16.0);
        let inserted = sigmoid(sum(4 * k) / 16.0);
        assert!(
            (curves.deletion[0][k] - deleted).abs() < 1e-6,
            "deletion step {k}"
        );
        assert!(
            (curves.insertion[0][k] - inserted).abs() < 1e-6,
            "insertion step {k}"
        );
    }
    assert!((curves.deletion_auc() - auc(&curves.deletion[0])).abs() < 1e-7);
    // The reverse ranking deletes slower and inserts slower.
    let reverse = di.curves(&x, &x.neg().unwrap(), &Target::Class(0)).unwrap();
    assert!(reverse.deletion_auc() > curves.deletion_auc());
    assert!(reverse.insertion_auc() < curves.insertion_auc());
    // A random ranking lies between, and is seeded.
    let r1 = di.random_curves(&x, &Target::Class(0), 4).unwrap();
    let r2 = di.random_curves(&x, &Target::Class(0), 4).unwrap();
    assert_eq!(r1, r2);
    assert!(
        r1.deletion_auc() > curves.deletion_auc() && r1.deletion_auc() < reverse.deletion_auc()
    );
    assert!((auc(&[0.0, 1.0]) - 0.5).abs() < 1e-7 && (auc(&[1.0, 1.0, 0.0]) - 0.75).abs() < 1e-7);
    let err = di
        .curves(
            &x,
            &x,
            &Target::StrongestInChannel {
                layer: allcnn_models::LayerName::Conv(1),
                channel: 0,
            },
        )
        .unwrap_err();
    assert!(matches!(err, VizError::UnsupportedTarget { .. }), "{err}");
}
