//! Hand-computed cases and properties of DeepLift, DeepLiftShap, LRP,
//! feature ablation and Shapley values (Captum parity on the golden network
//! is in `captum.rs`): completeness, efficiency, additivity, seeding and the
//! errors.

mod common;

use allcnn_models::{AllCnn, LayerName};
use allcnn_viz::{
    Baseline, DeepLift, DeepLiftShap, FeatureAblation, FeatureMask, GradientShap, InputXGradient,
    KernelShap, LayerActivation, LayerDeepLift, LayerDeepLiftShap, LayerFeatureAblation,
    LayerGradientShap, LayerGradientXActivation, LayerIntegratedGradients, LayerLrp, Lime, Lrp,
    LrpComposite, LrpRule, Method, MethodOptions, NeuronConductance, Quadrature, ShapDraw,
    ShapleyValueSampling, ShapleyValues, Target, VizError,
};
use candle_core::{DType, Device, Tensor};
use common::doubling;

/// Pixels `i/8 - 0.5`: negative and positive values.
fn ramp() -> Tensor {
    let v: Vec<f32> = (0..16).map(|i| i as f32 / 8.0 - 0.5).collect();
    Tensor::from_vec(v, (1, 1, 4, 4), &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn logits(model: &AllCnn, x: &Tensor) -> Vec<Vec<f32>> {
    model.forward(x).unwrap().to_vec2().unwrap()
}

/// The sum of each image's map.
fn sums(map: &Tensor) -> Vec<f32> {
    map.flatten_from(1)
        .unwrap()
        .sum(1)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn close(got: f32, want: f32, tol: f32, what: &str) {
    assert!(
        (got - want).abs() <= tol * want.abs().max(1.0),
        "{what}: got {got}, want {want}"
    );
}

#[test]
fn deep_lift_is_complete_and_shap_averages_it() {
    let model = common::all_cnn_c(3);
    let x = common::noise(2, 11);
    let x0 = (common::noise(1, 12) * 0.5).unwrap();
    let target = Target::PerImage(vec![2, 7]);
    let map = DeepLift::new(&model)
        .baseline(Baseline::Tensor(x0.clone()))
        .attribute(&x, &target)
        .unwrap();
    // Summation to delta: the maps add up to T(x) - T(x0).
    let (fx, f0) = (logits(&model, &x), logits(&model, &x0));
    for (i, (k, s)) in [2usize, 7].iter().zip(sums(&map)).enumerate() {
        close(s, fx[i][*k] - f0[0][*k], 1e-4, "DeepLift's sum");
    }
    // One baseline: DeepLiftShap is DeepLift; two: the mean of both.
    let shap = |b: Tensor| DeepLiftShap::new(&model, b).attribute(&x, &target).unwrap();
    let one = shap(x0.clone());
    assert_eq!(flat(&one), flat(&map));
    let zero = DeepLift::new(&model).attribute(&x, &target).unwrap();
    let two = shap(Tensor::cat(&[&x0, &x0.zeros_like().unwrap()], 0).unwrap());
    let mean = ((map + zero).unwrap() * 0.5).unwrap();
    for (a, b) in flat(&two).iter().zip(flat(&mean)) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    // Baselines of another image size are named.
    let err = DeepLiftShap::new(
        &model,
        Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu).unwrap(),
    )
    .attribute(&x, &target)
    .unwrap_err();
    assert!(matches!(err, VizError::BadTensor { .. }), "{err}");
}

#[test]
fn deep_lift_by_hand() {
    // T = mean(relu(2x + 0.5)) against a zero baseline (z0 = 0.5 > 0): a
    // pixel with 2x + 0.5 > 0 gets 2x/16; below, the secant slope of the
    // ReLU between z0 and z is (0 - 0.5) / (z - 0.5), so x * 2 * that / 16.
    let tiny = doubling(0.5);
    let x = ramp();
    let got = flat(
        &DeepLift::new(&tiny)
            .attribute(&x, &Target::Class(0))
            .unwrap(),
    );
    for (g, v) in got.iter().zip(flat(&x)) {
        let z = 2.0 * v + 0.5;
        let slope = if z > 0.0 { 1.0 } else { -0.5 / (z - 0.5) };
        let want = v * 2.0 * slope / 16.0;
        assert!((g - want).abs() < 1e-6, "x {v}: got {g}, want {want}");
    }
}

#[test]
fn lrp_by_hand_and_lrp0_is_input_times_gradient() {
    // One 1x1 conv with weight 2 and bias 0.5 then the mean of 16 pixels:
    // R_x = x * w' * relu(z) / (16 (z' + e sign z')), z = 2x + 0.5,
    // z' = w'x + b', times T / (T + 1e-9) from the global average.
    let tiny = doubling(0.5);
    let x = ramp();
    let t = logits(&tiny, &x)[0][0];
    let top = t / (t + 1e-9);
    let cases = [
        (LrpRule::Epsilon(0.25), 2.0f32, 0.5f32, 0.25f32),
        (
            LrpRule::Gamma {
                gamma: 0.5,
                zero_bias: false,
            },
            3.0,
            0.5,
            1e-9,
        ),
        (LrpRule::Alpha1Beta0 { zero_bias: true }, 2.0, 0.0, 1e-9),
    ];
    for (rule, w, b, e) in cases {
        let got = flat(
            &Lrp::new(&tiny)
                .rule(1, rule)
                .attribute(&x, &Target::Class(0))
                .unwrap(),
        );
        for (g, v) in got.iter().zip(flat(&x)) {
            let z = 2.0 * v + 0.5;
            let zp = w * v + b;
            let sign = if zp >= 0.0 { 1.0 } else { -1.0 };
            let want = v * w * z.max(0.0) / (16.0 * (zp + e * sign)) * top;
            assert!(
                (g - want).abs() < 1e-5,
                "{rule:?}, x {v}: got {g}, want {want}"
            );
        }
    }
    // LRP-0 on a ReLU network is input x gradient.
    let model = common::all_cnn_c(4);
    let x = common::noise(2, 5);
    let target = Target::Class(6);
    let lrp = Lrp::new(&model).attribute(&x, &target).unwrap();
    let ixg = InputXGradient::new(&model).attribute(&x, &target).unwrap();
    let scale = flat(&ixg).iter().fold(0f32, |m, v| m.max(v.abs()));
    for (a, b) in flat(&lrp).iter().zip(flat(&ixg)) {
        assert!((a - b).abs() <= 1e-4 * scale, "{a} vs {b}");
    }
    // A rule for a convolution the network lacks is refused.
    let err = Lrp::new(&model)
        .rule(10, LrpRule::Epsilon(0.1))
        .attribute(&x, &target)
        .unwrap_err();
    assert!(err.to_string().contains("conv10"), "{err}");
}

#[test]
fn lrp_rules_parse_and_layer_by_depth() {
    let c: LrpComposite = "composite".parse().unwrap();
    let rules: Vec<LrpRule> = (1..=9).map(|i| c.rule_for(i, 9)).collect();
    let gamma = LrpRule::Gamma {
        gamma: 0.25,
        zero_bias: false,
    };
    let lrp0 = LrpRule::Epsilon(1e-9);
    let eps = LrpRule::Epsilon(0.25);
    assert_eq!(
        rules,
        vec![lrp0, gamma, gamma, eps, eps, eps, lrp0, lrp0, lrp0]
    );
    for (text, want) in [
        ("epsilon", LrpComposite::Uniform(lrp0)),
        ("epsilon:0.25", LrpComposite::Uniform(eps)),
        ("gamma", LrpComposite::Uniform(gamma)),
        (
            "alpha1-beta0",
            LrpComposite::Uniform(LrpRule::Alpha1Beta0 { zero_bias: false }),
        ),
        (
            "composite:0.1:0.5",
            LrpComposite::Layered {
                epsilon: 0.1,
                gamma: 0.5,
            },
        ),
    ] {
        let got: LrpComposite = text.parse().unwrap();
        assert_eq!(got, want, "{text}");
        assert_eq!(got.to_string().parse::<LrpComposite>().unwrap(), got);
    }
    for bad in [
        "zeta",
        "gamma:-1",
        "epsilon:x",
        "alpha1-beta0:2",
        "composite:1:2:3",
    ] {
        let err = bad.parse::<LrpComposite>().unwrap_err().to_string();
        assert!(
            err.contains(bad) && err.contains("composite"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn shapley_values_of_an_additive_network_are_each_features_own_effect() {
    // T = mean(relu(2x + b)) is a sum over pixels, so every feature's
    // Shapley value, sampled or exact, and its ablation are the same: its
    // pixels' drop to the baseline.
    let tiny = doubling(0.25);
    let x = ramp();
    let base = -0.1f32;
    let patch = FeatureMask::Patches {
        height: 2,
        width: 3,
    };
    let want: Vec<f32> = {
        let xs = flat(&x);
        let own = |v: f32| (2.0 * v + 0.25).max(0.0) / 16.0;
        // Patches 2x3 on 4x4: columns 0-2 and 3, rows 0-1 and 2-3.
        let feature = |p: usize| (p / 4 / 2) * 2 + (p % 4) / 3;
        (0..16)
            .map(|p| {
                (0..16)
                    .filter(|&q| feature(q) == feature(p))
                    .map(|q| own(xs[q]) - own(base))
                    .sum()
            })
            .collect()
    };
    let target = Target::Class(0);
    let b = Baseline::Constant(base);
    let maps = [
        FeatureAblation::new(&tiny)
            .mask(patch.clone())
            .baseline(b.clone())
            .attribute(&x, &target)
            .unwrap(),
        ShapleyValues::new(&tiny)
            .mask(patch.clone())
            .baseline(b.clone())
            .attribute(&x, &target)
            .unwrap(),
        ShapleyValueSampling::new(&tiny)
            .mask(patch.clone())
            .baseline(b.clone())
            .samples(3)
            .seed(9)
            .batch(2)
            .attribute(&x, &target)
            .unwrap(),
    ];
    for map in &maps {
        for (g, w) in flat(map).iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "got {g}, want {w}");
        }
    }
}

#[test]
fn shapley_estimates_are_efficient_seeded_and_bounded() {
    let model = common::all_cnn_c(5);
    let x = common::noise(2, 21);
    let target = Target::PerImage(vec![1, 8]);
    let patch = FeatureMask::Patches {
        height: 16,
        width: 16,
    };
    let fx = logits(&model, &x);
    let f0 = logits(&model, &x.zeros_like().unwrap());
    // One element per 16x16 patch: the feature values.
    let per_feature = |map: &Tensor| -> Vec<Vec<f32>> {
        let m = map.to_dtype(DType::F32).unwrap();
        (0..2)
            .map(|i| {
                [(0, 0), (0, 16), (16, 0), (16, 16)]
                    .iter()
                    .map(|&(y, xx)| {
                        m.get(i)
                            .unwrap()
                            .get(0)
                            .unwrap()
                            .get(y)
                            .unwrap()
                            .get(xx)
                            .unwrap()
                            .to_scalar::<f32>()
                            .unwrap()
                    })
                    .collect()
            })
            .collect()
    };
    let sampled = |samples: usize, seed: u64| {
        ShapleyValueSampling::new(&model)
            .mask(patch.clone())
            .samples(samples)
            .seed(seed)
            .attribute(&x, &target)
            .unwrap()
    };
    let exact = ShapleyValues::new(&model).attribute(&x, &target).unwrap();
    for map in [sampled(1, 0), sampled(3, 1), exact.clone()] {
        for (i, (k, phi)) in [1usize, 8].iter().zip(per_feature(&map)).enumerate() {
            let total: f32 = phi.iter().sum();
            close(total, fx[i][*k] - f0[i][*k], 1e-4, "Shapley efficiency");
        }
    }
    // Seeded: the same seed gives the same map, another seed another.
    assert_eq!(flat(&sampled(2, 4)), flat(&sampled(2, 4)));
    assert_ne!(flat(&sampled(2, 4)), flat(&sampled(2, 5)));
    // One order per seed: 60 independent one-order estimates average to
    // the exact values within 4 standard errors.
    let runs: Vec<Vec<Vec<f32>>> = (0..60).map(|s| per_feature(&sampled(1, 100 + s))).collect();
    let exact = per_feature(&exact);
    for i in 0..2 {
        for f in 0..4 {
            let v: Vec<f64> = runs.iter().map(|r| f64::from(r[i][f])).collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
            let se = (var / v.len() as f64).sqrt();
            let e = f64::from(exact[i][f]);
            assert!(
                (mean - e).abs() <= 4.0 * se + 1e-6,
                "image {i} feature {f}: sampled mean {mean} vs exact {e} (standard error {se})"
            );
        }
    }
}

#[test]
fn feature_masks_and_sizes_are_checked() {
    let model = common::all_cnn_c(6);
    let x = common::noise(1, 3);
    let target = Target::Class(0);
    let ablate = |mask: FeatureMask| {
        FeatureAblation::new(&model)
            .mask(mask)
            .attribute(&x, &target)
    };
    let dev = Device::Cpu;
    for bad in [
        Tensor::zeros((1, 1, 32, 32), DType::F32, &dev).unwrap(),
        Tensor::zeros((1, 1, 16, 32), DType::I64, &dev).unwrap(),
        Tensor::zeros((2, 1, 32, 32), DType::U32, &dev).unwrap(),
        Tensor::from_vec(vec![-1i64; 32 * 32], (1, 1, 32, 32), &dev).unwrap(),
    ] {
        let err = ablate(FeatureMask::Tensor(bad)).unwrap_err();
        assert!(matches!(err, VizError::BadTensor { .. }), "{err}");
        assert!(err.to_string().contains("feature mask"), "{err}");
    }
    let err = ablate(FeatureMask::Patches {
        height: 0,
        width: 4,
    })
    .unwrap_err();
    assert!(matches!(err, VizError::InvalidArgument(_)), "{err}");
    // A patch asked of a method that is larger than the image is refused;
    // the defaults fit any image (16x16 Shapley patches on 8x8: one feature).
    for patch in [(4, 33), (1000, 1000)] {
        let options = MethodOptions {
            patch: Some(patch),
            ..MethodOptions::default()
        };
        let err = Method::FeatureAblation
            .attribute_with(&model, &x, &target, &options)
            .unwrap_err();
        assert!(matches!(err, VizError::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains("give at most 32x32"), "{err}");
    }
    // A whole-image feature of a u8 mask: the drop to the baseline.
    let map = ablate(FeatureMask::Tensor(
        Tensor::zeros((1, 1, 32, 32), DType::U8, &dev).unwrap(),
    ))
    .unwrap();
    let want = logits(&model, &x)[0][0] - logits(&model, &x.zeros_like().unwrap())[0][0];
    assert!(flat(&map).iter().all(|v| (v - want).abs() < 1e-5));
    // Exact Shapley values refuse 64 features and name the way out.
    let err = ShapleyValues::new(&model)
        .mask(FeatureMask::default())
        .attribute(&x, &target)
        .unwrap_err();
    assert!(err.to_string().contains("shapley-value-sampling"), "{err}");
}

#[test]
fn gradient_shap_by_hand_and_complete_in_expectation() {
    // Where every point of every path has 2x + 2 > 0 the gradient is 2/16
    // everywhere, so one baseline gives (x - b) * 2/16 whatever the draws.
    let tiny = doubling(2.0);
    let x = ramp();
    let b = Tensor::full(0.3f32, (1, 1, 4, 4), &Device::Cpu).unwrap();
    let got = flat(
        &GradientShap::new(&tiny, b)
            .samples(7)
            .seed(3)
            .attribute(&x, &Target::Class(0))
            .unwrap(),
    );
    for (g, v) in got.iter().zip(flat(&x)) {
        let want = (v - 0.3) * 2.0 / 16.0;
        assert!((g - want).abs() < 1e-6, "x {v}: got {g}, want {want}");
    }
    // On All-CNN-C the map's sum estimates T(x) - E T(b): 60 one-draw
    // estimates average to it within 4 standard errors.
    let model = common::all_cnn_c(7);
    let x = common::noise(2, 31);
    let baselines = (common::noise(3, 32) * 0.5).unwrap();
    let target = Target::PerImage(vec![0, 5]);
    let shap = |samples: usize, seed: u64| {
        GradientShap::new(&model, baselines.clone())
            .samples(samples)
            .seed(seed)
            .batch(3)
            .attribute(&x, &target)
            .unwrap()
    };
    let fx = logits(&model, &x);
    let fb = logits(&model, &baselines);
    let runs: Vec<Vec<f32>> = (0..60).map(|s| sums(&shap(1, s))).collect();
    for (i, k) in [0usize, 5].into_iter().enumerate() {
        let want = f64::from(fx[i][k]) - fb.iter().map(|r| f64::from(r[k])).sum::<f64>() / 3.0;
        let v: Vec<f64> = runs.iter().map(|r| f64::from(r[i])).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
        let se = (var / v.len() as f64).sqrt();
        assert!(
            (mean - want).abs() <= 4.0 * se + 1e-6,
            "image {i}: mean sum {mean} vs T(x) - E T(b) {want} (standard error {se})"
        );
    }
    // Seeded, batch-independent; a negative noise level is refused.
    assert_eq!(flat(&shap(4, 9)), flat(&shap(4, 9)));
    let unbatched = GradientShap::new(&model, baselines.clone())
        .samples(4)
        .seed(9)
        .batch(64)
        .attribute(&x, &target)
        .unwrap();
    let batched = shap(4, 9);
    for (a, b) in flat(&unbatched).iter().zip(flat(&batched)) {
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1e-3), "{a} vs {b}");
    }
    let err = GradientShap::new(&model, baselines)
        .stdev(-1.0)
        .attribute(&x, &target)
        .unwrap_err();
    assert!(matches!(err, VizError::InvalidArgument(_)), "{err}");
}

#[test]
fn kernel_shap_and_lime_recover_an_additive_network_and_kernel_shap_is_exact_when_enumerated() {
    // Additive T: any full-rank weighted fit is exact, so both surrogates
    // give each feature its own effect.
    let tiny = doubling(0.25);
    let x = ramp();
    let base = -0.1f32;
    let patch = FeatureMask::Patches {
        height: 2,
        width: 3,
    };
    let own = |v: f32| (2.0 * v + 0.25).max(0.0) / 16.0;
    let xs = flat(&x);
    let feature = |p: usize| (p / 4 / 2) * 2 + (p % 4) / 3;
    let want: Vec<f32> = (0..16)
        .map(|p| {
            (0..16)
                .filter(|&q| feature(q) == feature(p))
                .map(|q| own(xs[q]) - own(base))
                .sum()
        })
        .collect();
    let target = Target::Class(0);
    let b = Baseline::Constant(base);
    let maps = [
        KernelShap::new(&tiny)
            .mask(patch.clone())
            .baseline(b.clone())
            .samples(6)
            .seed(2)
            .attribute(&x, &target)
            .unwrap(),
        Lime::new(&tiny)
            .mask(patch.clone())
            .baseline(b.clone())
            .ridge(0.0)
            .samples(40)
            .seed(2)
            .batch(16)
            .attribute(&x, &target)
            .unwrap(),
    ];
    for map in &maps {
        for (g, w) in flat(map).iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "got {g}, want {w}");
        }
    }
    // All 14 coalitions of 4 features with their kernel weights: the exact
    // Shapley values of a real network.
    let model = common::all_cnn_c(8);
    let x = common::noise(2, 41);
    let target = Target::PerImage(vec![3, 9]);
    let quads = FeatureMask::Patches {
        height: 16,
        width: 16,
    };
    let exact = ShapleyValues::new(&model).attribute(&x, &target).unwrap();
    let kernel = KernelShap::new(&model)
        .mask(quads.clone())
        .samples(14)
        .attribute(&x, &target)
        .unwrap();
    let scale = flat(&exact).iter().fold(0f32, |m, v| m.max(v.abs()));
    for (a, b) in flat(&kernel).iter().zip(flat(&exact)) {
        assert!((a - b).abs() <= 1e-4 * scale, "kernel {a} vs exact {b}");
    }
    // Sampled: anchored to the empty and full coalitions, so efficient.
    let fx = logits(&model, &x);
    let f0 = logits(&model, &x.zeros_like().unwrap());
    let sampled = KernelShap::new(&model)
        .samples(100)
        .seed(4)
        .attribute(&x, &target)
        .unwrap();
    // 64 features of 4x4 patches over 3 channels: the map's sum is 48
    // times the sum of the feature values.
    for (i, (k, s)) in [3usize, 9].iter().zip(sums(&sampled)).enumerate() {
        close(
            s / 48.0,
            fx[i][*k] - f0[i][*k],
            1e-3,
            "KernelShap efficiency",
        );
    }
    // Seeded; a bad kernel width is refused.
    let lime = |seed: u64| {
        Lime::new(&model)
            .mask(quads.clone())
            .samples(20)
            .seed(seed)
            .attribute(&x, &target)
            .unwrap()
    };
    assert_eq!(flat(&lime(1)), flat(&lime(1)));
    assert_ne!(flat(&lime(1)), flat(&lime(2)));
    let err = Lime::new(&model)
        .kernel_width(0.0)
        .attribute(&x, &target)
        .unwrap_err();
    assert!(matches!(err, VizError::InvalidArgument(_)), "{err}");
}

#[test]
fn layer_integrated_gradients_are_complete_and_layers_are_checked() {
    let model = common::all_cnn_c(9);
    let x = common::noise(2, 51);
    let target = Target::PerImage(vec![2, 6]);
    let lig = LayerIntegratedGradients::new(&model, LayerName::Conv(5))
        .steps(64)
        .attribute(&x, &target)
        .unwrap();
    assert_eq!(lig.dims(), &[2, 192, 16, 16]);
    let (fx, f0) = (logits(&model, &x), logits(&model, &x.zeros_like().unwrap()));
    for (i, (k, s)) in [2usize, 6].iter().zip(sums(&lig)).enumerate() {
        close(s, fx[i][*k] - f0[i][*k], 2e-3, "layer IG's sum");
    }
    let gxa = LayerGradientXActivation::new(&model, LayerName::Conv(9))
        .attribute(&x, &Target::Class(2))
        .unwrap();
    let act = LayerActivation::new(&model, LayerName::Conv(9))
        .attribute(&x)
        .unwrap();
    // At the class layer the target is the mean of map 2: the gradient is
    // 1/(h w) on that map and 0 elsewhere.
    let (_, _, h, w) = act.dims4().unwrap();
    let want = (act.narrow(1, 2, 1).unwrap() / (h * w) as f64).unwrap();
    for (a, b) in flat(&gxa.narrow(1, 2, 1).unwrap()).iter().zip(flat(&want)) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    assert!(flat(&gxa.narrow(1, 0, 2).unwrap())
        .iter()
        .all(|v| *v == 0.0));
    // Layer DeepLift sums to the change of the target too (no max-pools).
    let ldl = LayerDeepLift::new(&model, LayerName::Conv(5))
        .attribute(&x, &target)
        .unwrap();
    for (i, (k, s)) in [2usize, 6].iter().zip(sums(&ldl)).enumerate() {
        close(s, fx[i][*k] - f0[i][*k], 1e-4, "layer DeepLift's sum");
    }
    // A target below the layer is refused.
    let below = Target::Unit {
        layer: LayerName::Conv(3),
        channel: 0,
        y: 0,
        x: 0,
    };
    let err = LayerIntegratedGradients::new(&model, LayerName::Conv(5))
        .steps(2)
        .attribute(&x, &below)
        .unwrap_err();
    assert!(matches!(err, VizError::UnsupportedTarget { .. }), "{err}");
    let err = LayerGradientXActivation::new(&model, LayerName::Conv(5))
        .attribute(&x, &below)
        .unwrap_err();
    assert!(matches!(err, VizError::UnsupportedTarget { .. }), "{err}");
    let err = LayerDeepLift::new(&model, LayerName::Conv(5))
        .attribute(&x, &below)
        .unwrap_err();
    assert!(matches!(err, VizError::UnsupportedTarget { .. }), "{err}");
}

#[test]
fn deep_lift_and_lrp_explain_a_hidden_unit() {
    let model = common::all_cnn_c(10);
    let x = common::noise(2, 61);
    let unit = Target::Unit {
        layer: LayerName::Conv(6),
        channel: 5,
        y: 3,
        x: 4,
    };
    // LRP-0 is input x gradient for a unit too.
    let lrp = Lrp::new(&model).attribute(&x, &unit).unwrap();
    let ixg = InputXGradient::new(&model).attribute(&x, &unit).unwrap();
    let scale = flat(&ixg).iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0);
    for (a, b) in flat(&lrp).iter().zip(flat(&ixg)) {
        assert!((a - b).abs() <= 1e-4 * scale, "{a} vs {b}");
    }
    // DeepLift sums to the unit's change; the strongest-unit form agrees
    // with the unit it picks.
    let x0 = x.zeros_like().unwrap();
    let dl = DeepLift::new(&model).attribute(&x, &unit).unwrap();
    let act = |t: &Tensor| -> Vec<f32> {
        LayerActivation::new(&model, LayerName::Conv(6))
            .attribute(t)
            .unwrap()
            .narrow(1, 5, 1)
            .unwrap()
            .narrow(2, 3, 1)
            .unwrap()
            .narrow(3, 4, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (a, a0) = (act(&x), act(&x0));
    for (i, s) in sums(&dl).into_iter().enumerate() {
        close(s, a[i] - a0[i], 1e-4, "DeepLift's sum for a unit");
    }
    let strongest = Target::StrongestInChannel {
        layer: LayerName::Conv(6),
        channel: 5,
    };
    let s = DeepLift::new(&model).attribute(&x, &strongest).unwrap();
    assert_eq!(s.dims(), dl.dims());
}

/// The class layer's units by hand: logit `k` is the mean of class map `k`
/// over its `h w` positions, so ablating unit `(k, y, x)` to zero lowers it
/// by `a_k(y, x) / (h w)` and any other class's unit by nothing, and LRP
/// hands each unit of map `k` the same share of the logit.
#[test]
fn layer_ablation_and_layer_lrp_at_the_class_layer_by_hand() {
    let model = common::all_cnn_c(5);
    let x = common::noise(2, 41);
    // Each image's strongest class, whose map is alive.
    let fx = logits(&model, &x);
    let classes: Vec<usize> = fx
        .iter()
        .map(|l| (0..l.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap())
        .collect();
    let target = Target::PerImage(classes.iter().map(|&k| k as u32).collect());
    let acts = LayerActivation::new(&model, LayerName::Conv(9))
        .attribute(&x)
        .unwrap();
    let (n, c, h, w) = acts.dims4().unwrap();
    let a = flat(&acts);
    let ablated = flat(
        &LayerFeatureAblation::new(&model, LayerName::Conv(9))
            .batch(50)
            .attribute(&x, &target)
            .unwrap(),
    );
    let relevance = flat(
        &LayerLrp::new(Lrp::new(&model), LayerName::Conv(9))
            .attribute(&x, &target)
            .unwrap(),
    );
    let mut nonzero = 0;
    for (i, &k) in classes.iter().enumerate().take(n) {
        for ch in 0..c {
            for p in 0..h * w {
                let e = (i * c + ch) * h * w + p;
                let want = if ch == k { a[e] / (h * w) as f32 } else { 0.0 };
                nonzero += usize::from(want != 0.0);
                close(
                    ablated[e],
                    want,
                    1e-4,
                    &format!("ablation, image {i} unit {ch}:{p}"),
                );
                close(
                    relevance[e],
                    want,
                    1e-4,
                    &format!("LRP, image {i} unit {ch}:{p}"),
                );
            }
        }
    }
    assert!(
        nonzero > 10,
        "the class maps are not all dead ({nonzero} live units)"
    );
    // One feature holding the whole layer: ablating it to zero takes the
    // logit to 0, so every unit carries T(x).
    let all = Tensor::zeros((1, 1, h, w), DType::I64, &Device::Cpu).unwrap();
    let whole = LayerFeatureAblation::new(&model, LayerName::Conv(9))
        .mask(FeatureMask::Tensor(all))
        .attribute(&x, &target)
        .unwrap();
    for (i, v) in whole
        .flatten_from(1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .enumerate()
    {
        let want = fx[i][classes[i]];
        assert!(
            v.iter()
                .all(|&u| (u - want).abs() <= 1e-5 * want.abs().max(1.0)),
            "image {i}"
        );
    }
    // A pooling layer, and a hidden-unit target below the layer, are refused.
    let pool = LayerFeatureAblation::new(&model, LayerName::Pool(1)).attribute(&x, &target);
    assert!(pool.is_err());
    let t = Target::Unit {
        layer: LayerName::Conv(5),
        channel: 0,
        y: 2,
        x: 2,
    };
    let below = LayerFeatureAblation::new(&model, LayerName::Conv(7)).attribute(&x, &t);
    assert!(
        matches!(below, Err(VizError::UnsupportedTarget { .. })),
        "{below:?}"
    );
    let below = LayerLrp::new(Lrp::new(&model), LayerName::Conv(7)).attribute(&x, &t);
    assert!(
        matches!(below, Err(VizError::UnsupportedTarget { .. })),
        "{below:?}"
    );
}

#[test]
fn layer_deep_lift_shap_averages_layer_deep_lift() {
    let model = common::all_cnn_c(3);
    let x = common::noise(2, 13);
    let baselines = (common::noise(3, 14) * 0.5).unwrap();
    let target = Target::PerImage(vec![1, 6]);
    let layer = LayerName::Conv(6);
    let got = LayerDeepLiftShap::new(&model, layer, baselines.clone())
        .attribute(&x, &target)
        .unwrap();
    let mut want = vec![0f32; got.elem_count()];
    for j in 0..3 {
        let b = baselines.narrow(0, j, 1).unwrap();
        let map = LayerDeepLift::new(&model, layer)
            .baseline(Baseline::Tensor(b))
            .attribute(&x, &target)
            .unwrap();
        for (w, v) in want.iter_mut().zip(flat(&map)) {
            *w += v / 3.0;
        }
    }
    for (k, (g, w)) in flat(&got).iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1e-2),
            "element {k}: {g} vs {w}"
        );
    }
    let bad = LayerDeepLiftShap::new(&model, layer, common::noise(1, 1).narrow(2, 0, 16).unwrap())
        .attribute(&x, &target);
    assert!(matches!(bad, Err(VizError::BadTensor { .. })), "{bad:?}");
}

#[test]
fn layer_gradient_shap_replays_draws_and_checks_them() {
    let model = common::all_cnn_c(7);
    let x = common::noise(2, 31);
    let baselines = (common::noise(3, 32) * 0.5).unwrap();
    let target = Target::PerImage(vec![0, 5]);
    let layer = LayerName::Conv(7);
    let shap = |samples: usize, seed: u64, batch: usize| {
        LayerGradientShap::new(&model, layer, baselines.clone())
            .samples(samples)
            .seed(seed)
            .batch(batch)
            .attribute(&x, &target)
            .unwrap()
    };
    // Seeded and batch-independent.
    assert_eq!(flat(&shap(4, 9, 3)), flat(&shap(4, 9, 3)));
    let (a, b) = (flat(&shap(4, 9, 3)), flat(&shap(4, 9, 64)));
    for (u, v) in a.iter().zip(&b) {
        assert!((u - v).abs() <= 1e-6 * v.abs().max(1e-3), "{u} vs {v}");
    }
    // One replayed draw at alpha 1: the gradient at the input itself, times
    // the layer's change from the baseline.
    let draw = |baseline| ShapDraw {
        baseline,
        alpha: 1.0,
    };
    let got = LayerGradientShap::new(&model, layer, baselines.clone())
        .samples(1)
        .draws(vec![draw(2), draw(0)])
        .attribute(&x, &target)
        .unwrap();
    let gxa = flat(
        &LayerGradientXActivation::new(&model, layer)
            .attribute(&x, &target)
            .unwrap(),
    );
    let act = |t: &Tensor| flat(&LayerActivation::new(&model, layer).attribute(t).unwrap());
    let ax = act(&x);
    let per = ax.len() / 2;
    let ab: Vec<Vec<f32>> = [2, 0]
        .iter()
        .map(|&j| act(&baselines.narrow(0, j, 1).unwrap()))
        .collect();
    let mut checked = 0;
    for (e, g) in flat(&got).iter().enumerate() {
        let (i, u) = (e / per, e % per);
        if ax[e] > 1e-3 {
            // gradient = gxa / a where the unit is on.
            let want = gxa[e] / ax[e] * (ax[e] - ab[i][u]);
            assert!(
                (g - want).abs() <= 1e-4 * want.abs().max(1e-3),
                "unit {e}: {g} vs {want}"
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} live units");
    // Replayed draws that do not fit are refused, naming the count.
    let err = LayerGradientShap::new(&model, layer, baselines.clone())
        .samples(2)
        .draws(vec![draw(0)])
        .attribute(&x, &target)
        .unwrap_err();
    assert!(err.to_string().contains("need 4"), "{err}");
    let err = GradientShap::new(&model, baselines)
        .samples(1)
        .draws(vec![draw(0), draw(3)])
        .attribute(&x, &target)
        .unwrap_err();
    assert!(err.to_string().contains("below 3"), "{err}");
}

/// On `T(x) = mean(relu(2x + 2))` every path from the baseline 0.3 to the
/// ramp keeps `2x + 2 > 0`, so unit `(y, x)` of the class map passes
/// `dT/dy dy/dx = (1/16) 2` at its own pixel and nothing elsewhere: its
/// conductance is `(x - 0.3) 2/16` there times the rule's weight sum (1,
/// or `(n - 1) / n` for Captum's trapezoid rule). Summed over
/// every unit of the layer (a complete cut of the network), conductance
/// gives Integrated Gradients.
#[test]
fn neuron_conductance_by_hand_and_complete_over_a_layer() {
    let tiny = doubling(2.0);
    let x = ramp();
    let b = Baseline::Constant(0.3);
    let pixels = flat(&x);
    let mut sum = [0f32; 16];
    for (q, steps) in [
        (Quadrature::RiemannTrapezoid, 5),
        (Quadrature::GaussLegendre, 3),
    ] {
        sum.iter_mut().for_each(|v| *v = 0.0);
        let total: f64 = q.weights_and_points(steps).unwrap().0.iter().sum();
        for p in 0..16 {
            let unit = allcnn_viz::Unit {
                channel: 0,
                y: p / 4,
                x: p % 4,
            };
            let got = flat(
                &NeuronConductance::new(&tiny, LayerName::Conv(1), unit)
                    .steps(steps)
                    .quadrature(q)
                    .baseline(b.clone())
                    .batch(2)
                    .attribute(&x, &Target::Class(0))
                    .unwrap(),
            );
            for (e, g) in got.iter().enumerate() {
                let want = if e == p {
                    (pixels[e] - 0.3) * 2.0 / 16.0 * total as f32
                } else {
                    0.0
                };
                assert!(
                    (g - want).abs() < 1e-6,
                    "{q:?} unit {p} pixel {e}: {g} vs {want}"
                );
                sum[e] += g;
            }
        }
        let ig = flat(
            &allcnn_viz::IntegratedGradients::new(&tiny)
                .steps(steps)
                .quadrature(q)
                .baseline(b.clone())
                .attribute(&x, &Target::Class(0))
                .unwrap(),
        );
        for (s, i) in sum.iter().zip(&ig) {
            assert!(
                (s - i).abs() < 1e-6,
                "{q:?}: summed conductance {s} vs IG {i}"
            );
        }
    }
    // A unit outside the layer's map is refused.
    let model = common::all_cnn_c(3);
    let far = allcnn_viz::Unit {
        channel: 0,
        y: 6,
        x: 0,
    };
    let err = NeuronConductance::new(&model, LayerName::Conv(7), far)
        .attribute(&common::noise(1, 2), &Target::Class(1))
        .unwrap_err();
    assert!(matches!(err, VizError::PositionOutOfRange { .. }), "{err}");
}
