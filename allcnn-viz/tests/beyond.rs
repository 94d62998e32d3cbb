//! Hand-computed cases and properties of the methods beyond the paper:
//! Grad-CAM, Integrated Gradients, Occlusion, SmoothGrad and the upsampling.
//! (Captum parity on the real network is in `captum.rs`.)

mod common;

use allcnn_models::{AllCnn, LayerName};
use allcnn_viz::{
    interpolate, Baseline, GradCam, IntegratedGradients, Interpolation, Method, MethodOptions,
    NoiseAggregation, NoiseLevel, Occlusion, Quadrature, SmoothGrad, SmoothOptions, Target,
    VizError,
};
use candle_core::{Device, Tensor};
use common::doubling;

/// Pixels i/8, except every fifth, which is `negative`.
fn image(negative: f32) -> Tensor {
    let v: Vec<f32> = (0..16)
        .map(|i| if i % 5 == 0 { negative } else { i as f32 / 8.0 })
        .collect();
    Tensor::from_vec(v, (1, 1, 4, 4), &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn all_cnn_c() -> AllCnn {
    common::all_cnn_c(3)
}

fn cifar_batch(n: usize) -> Tensor {
    common::noise(n, n as u64)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn integrated_gradients_of_a_linear_region_are_input_times_gradient() {
    // With bias 0.5 and pixels >= -0.1, 2 a x + 0.5 > 0 on the whole path
    // from 0, so T is linear there (gradient 2/16) and IG = x * 2/16, for
    // every rule whose weights sum to 1; Captum's trapezoid weights sum to
    // (n-1)/n.
    let model = doubling(0.5);
    let x = image(-0.1);
    let xs = flat(&x);
    for q in Quadrature::ALL {
        let n = 5;
        let got = flat(
            &IntegratedGradients::new(&model)
                .steps(n)
                .quadrature(q)
                .attribute(&x, &Target::Class(0))
                .unwrap(),
        );
        let scale = if q == Quadrature::RiemannTrapezoid {
            (n - 1) as f32 / n as f32
        } else {
            1.0
        };
        for (g, v) in got.iter().zip(&xs) {
            let want = v * 2.0 / 16.0 * scale;
            assert!(
                (g - want).abs() < 1e-6,
                "{q}: got {g}, want {want} for x = {v}"
            );
        }
    }
}

#[test]
fn quadrature_rules_are_captums() {
    let (w, a) = Quadrature::GaussLegendre.weights_and_points(3).unwrap();
    let r = (0.6f64).sqrt();
    let want_a = [0.5 * (1.0 - r), 0.5, 0.5 * (1.0 + r)];
    let want_w = [5.0 / 18.0, 8.0 / 18.0, 5.0 / 18.0];
    for i in 0..3 {
        assert!((a[i] - want_a[i]).abs() < 1e-14 && (w[i] - want_w[i]).abs() < 1e-14);
    }
    // n nodes integrate t^(2n-1) on [0, 1] exactly.
    for n in 1..=40 {
        let (w, a) = Quadrature::GaussLegendre.weights_and_points(n).unwrap();
        let k = 2 * n as i32 - 1;
        let got: f64 = w.iter().zip(&a).map(|(w, a)| w * a.powi(k)).sum();
        assert!((got - 1.0 / (k + 1) as f64).abs() < 1e-12, "n = {n}: {got}");
    }
    let (w, a) = Quadrature::RiemannTrapezoid.weights_and_points(4).unwrap();
    assert_eq!(w, vec![0.125, 0.25, 0.25, 0.125]);
    assert_eq!(a, vec![0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]);
    let (_, a) = Quadrature::RiemannMiddle.weights_and_points(4).unwrap();
    assert_eq!(a, vec![0.125, 0.375, 0.625, 0.875]);
    let (_, a) = Quadrature::RiemannLeft.weights_and_points(4).unwrap();
    assert_eq!(a, vec![0.0, 0.25, 0.5, 0.75]);
    let (_, a) = Quadrature::RiemannRight.weights_and_points(4).unwrap();
    assert_eq!(a, vec![0.25, 0.5, 0.75, 1.0]);
    assert!(matches!(
        Quadrature::RiemannLeft.weights_and_points(1),
        Err(VizError::InvalidArgument(m)) if m.contains("at least 2")
    ));
    for q in Quadrature::ALL {
        assert_eq!(q.name().parse::<Quadrature>().unwrap(), q);
    }
    assert_eq!(
        "trapezoid".parse::<Quadrature>().unwrap(),
        Quadrature::RiemannTrapezoid
    );
}

#[test]
fn integrated_gradients_are_complete_on_all_cnn_c() {
    // sum(IG) = T(x) - T(b) up to the quadrature error, which shrinks with
    // the step count. (From a zero baseline the bias-free He-initialised
    // net is homogeneous, T(a x) = a T(x), and any rule is exact: start
    // from 0.5 instead.)
    let model = all_cnn_c();
    let x = cifar_batch(2);
    let target = Target::PerImage(vec![1, 7]);
    let gap = |steps| {
        let (_, gap) = IntegratedGradients::new(&model)
            .steps(steps)
            .baseline(Baseline::Constant(0.5))
            .attribute_with_delta(&x, &target)
            .unwrap();
        gap.iter().fold(0f32, |m, g| m.max(g.abs()))
    };
    let logits = model.forward(&x).unwrap();
    let zero = model
        .forward(&(x.ones_like().unwrap() * 0.5).unwrap())
        .unwrap();
    let change = max_abs_diff(&logits, &zero);
    let (coarse, fine) = (gap(4), gap(128));
    assert!(fine < 0.02 * change, "gap {fine} vs change {change}");
    assert!(
        fine < coarse,
        "128 steps ({fine}) no better than 4 ({coarse})"
    );
    // A baseline tensor of the wrong shape is named.
    let err = IntegratedGradients::new(&model)
        .baseline(Baseline::Tensor(cifar_batch(3)))
        .attribute(&x, &target)
        .unwrap_err();
    assert!(err.to_string().contains("baseline"), "{err}");
}

#[test]
fn occlusion_of_the_whole_image_is_the_drop_to_the_baseline() {
    let model = all_cnn_c();
    let x = cifar_batch(2);
    let target = Target::PerImage(vec![3, 4]);
    let map = Occlusion::new(&model)
        .window(32, 32)
        .stride(1, 1)
        .baseline(0.5)
        .attribute(&x, &target)
        .unwrap();
    let full = model.forward(&x).unwrap().to_vec2::<f32>().unwrap();
    let base = model
        .forward(&(x.ones_like().unwrap() * 0.5).unwrap())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let map = map.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
    for (i, k) in [3usize, 4].into_iter().enumerate() {
        let want = full[i][k] - base[i][k];
        assert!(map[i].iter().all(|v| (v - want).abs() < 1e-5), "image {i}");
    }
    // Hand case: on the doubling net, occluding one pixel of value v > 0
    // with 1x1 windows drops T by 2v/16.
    let tiny = doubling(0.0);
    let x = image(-1.0);
    let got = flat(
        &Occlusion::new(&tiny)
            .window(1, 1)
            .stride(1, 1)
            .attribute(&x, &Target::Class(0))
            .unwrap(),
    );
    for (g, v) in got.iter().zip(flat(&x)) {
        let want = if v > 0.0 { 2.0 * v / 16.0 } else { 0.0 };
        assert!((g - want).abs() < 1e-6, "got {g}, want {want}");
    }
    // Windows or strides that do not fit are refused with the numbers.
    for (win, stride) in [((5, 1), (1, 1)), ((2, 2), (3, 1)), ((0, 1), (1, 1))] {
        let err = Occlusion::new(&tiny)
            .window(win.0, win.1)
            .stride(stride.0, stride.1)
            .attribute(&x, &Target::Class(0))
            .unwrap_err();
        assert!(matches!(err, VizError::InvalidArgument(_)), "{err}");
    }
}

#[test]
fn grad_cam_of_the_class_layer_is_the_class_map_over_its_area() {
    // logits = mean of the class maps, so dT/dA = 1/36 on the target's map
    // and Grad-CAM of conv9 is that map / 36.
    let model = all_cnn_c();
    let x = cifar_batch(2);
    let cam = GradCam::new(&model, LayerName::Conv(9))
        .attribute(&x, &Target::PerImage(vec![2, 5]))
        .unwrap();
    assert_eq!(cam.dims(), &[2, 1, 6, 6]);
    let acts = model.pass().capture(LayerName::Conv(9)).run(&x).unwrap();
    let maps = acts.get(LayerName::Conv(9)).unwrap();
    for (i, k) in [2usize, 5].into_iter().enumerate() {
        let want = (maps.get(i).unwrap().narrow(0, k, 1).unwrap() / 36.0).unwrap();
        let got = cam.get(i).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-6, "image {i}");
    }
    // A hidden target before the layer cannot reach it; a pool is not a conv.
    let early = Target::StrongestInChannel {
        layer: LayerName::Conv(3),
        channel: 0,
    };
    let err = GradCam::new(&model, LayerName::Conv(8))
        .attribute(&x, &early)
        .unwrap_err();
    assert!(matches!(err, VizError::UnsupportedTarget { .. }), "{err}");
    assert!(err.to_string().contains("conv3"), "{err}");
}

#[test]
fn interpolation_matches_pytorch() {
    let map = Tensor::from_vec(vec![0f32, 1.0, 2.0, 3.0], (1, 1, 2, 2), &Device::Cpu).unwrap();
    // F.interpolate(map, (4, 4), mode="bilinear", align_corners=False)
    let bilinear = [
        0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
    ];
    assert_eq!(
        flat(&interpolate(&map, (4, 4), Interpolation::Bilinear).unwrap()),
        bilinear
    );
    // mode="nearest"; and 2 -> 3 picks floor(i * 2/3) = 0, 0, 1.
    let nearest = [
        0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 2.0, 2.0, 3.0, 3.0,
    ];
    assert_eq!(
        flat(&interpolate(&map, (4, 4), Interpolation::Nearest).unwrap()),
        nearest
    );
    assert_eq!(
        flat(&interpolate(&map, (3, 3), Interpolation::Nearest).unwrap()),
        [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 3.0]
    );
}

#[test]
fn smoothgrad_is_seeded_and_reduces_to_the_method_without_noise() {
    let model = all_cnn_c();
    let x = cifar_batch(2);
    let target = Target::PerImage(vec![0, 9]);
    let plain = Method::Gradient.attribute(&model, &x, &target).unwrap();
    let run = |noise, aggregation, seed| {
        SmoothGrad::new(&model, Method::Gradient)
            .options(SmoothOptions {
                samples: 3,
                noise,
                aggregation,
                seed,
            })
            .attribute(&x, &target)
            .unwrap()
    };
    let quiet = run(NoiseLevel::Stdev(0.0), NoiseAggregation::Mean, 0);
    assert!(max_abs_diff(&quiet, &plain) < 1e-6);
    let sq = run(NoiseLevel::Stdev(0.0), NoiseAggregation::MeanOfSquares, 0);
    assert!(max_abs_diff(&sq, &plain.sqr().unwrap()) < 1e-9);
    let var = run(NoiseLevel::Stdev(0.0), NoiseAggregation::Variance, 0);
    assert!(
        var.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            < 1e-9
    );
    let a = run(NoiseLevel::OfRange(0.15), NoiseAggregation::Mean, 7);
    let b = run(NoiseLevel::OfRange(0.15), NoiseAggregation::Mean, 7);
    let c = run(NoiseLevel::OfRange(0.15), NoiseAggregation::Mean, 8);
    assert_eq!(flat(&a), flat(&b), "same seed, same map");
    assert!(max_abs_diff(&a, &c) > 0.0, "another seed, another map");
    assert!(max_abs_diff(&a, &plain) > 0.0, "noise changes the map");
    // Through MethodOptions, as the CLI does.
    let opts = MethodOptions {
        smooth: Some(SmoothOptions {
            samples: 3,
            noise: NoiseLevel::OfRange(0.15),
            aggregation: NoiseAggregation::Mean,
            seed: 7,
        }),
        ..MethodOptions::default()
    };
    let d = Method::Gradient
        .attribute_with(&model, &x, &target, &opts)
        .unwrap();
    assert_eq!(flat(&a), flat(&d));
    // VarGrad of one sample is zero everywhere: refused, not an empty map.
    let one = MethodOptions {
        smooth: Some(SmoothOptions {
            samples: 1,
            noise: NoiseLevel::OfRange(0.15),
            aggregation: NoiseAggregation::Variance,
            seed: 7,
        }),
        ..MethodOptions::default()
    };
    let err = Method::Gradient
        .attribute_with(&model, &x, &target, &one)
        .unwrap_err();
    assert!(err.to_string().contains("at least 2 samples"), "{err}");
}

#[test]
fn every_method_runs_by_name_with_the_input_shape() {
    let model = all_cnn_c();
    let x = cifar_batch(2);
    let target = Target::Class(4);
    let opts = MethodOptions {
        steps: 4,
        ..MethodOptions::default()
    };
    for m in Method::ALL {
        assert_eq!(m.name().parse::<Method>().unwrap(), m);
        let map = m.attribute_with(&model, &x, &target, &opts).unwrap();
        let c = if m == Method::GradCam { 1 } else { 3 };
        assert_eq!(map.dims(), &[2, c, 32, 32], "{m}");
        let finite = flat(&map).iter().all(|v| v.is_finite());
        assert!(finite, "{m}: non-finite values");
    }
    // A baseline that is not a finite number is refused by every method
    // that uses one (all-NaN maps, or finite made-up ones, before).
    for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let opts = MethodOptions {
            steps: 4,
            baseline: v,
            ..MethodOptions::default()
        };
        for m in [
            Method::IntegratedGradients,
            Method::DeepLift,
            Method::Occlusion,
            Method::FeatureAblation,
        ] {
            let err = m.attribute_with(&model, &x, &target, &opts).unwrap_err();
            assert!(
                err.to_string().contains("must be a finite number"),
                "{m} {v}: {err}"
            );
        }
    }
    let err = "anchors".parse::<Method>().unwrap_err().to_string();
    assert!(
        err.contains("grad-cam") && err.contains("occlusion"),
        "{err}"
    );
}
