//! Parity with Captum for the methods beyond the paper: InputXGradient,
//! Grad-CAM, Guided Grad-CAM, Integrated Gradients (every quadrature, zero and constant
//! baselines), Occlusion (whole and edge-cut windows), DeepLift and
//! DeepLiftShap, FeatureAblation and ShapleyValues (grid and id-tensor
//! masks) and LRP (epsilon, gamma, alpha1-beta0, the composite), and the
//! layer methods (activation, gradient x activation, integrated gradients,
//! internal influence, conductance, DeepLift, DeepLiftShap, GradientShap,
//! feature ablation, LRP) and neuron conductance.
//!
//! Expected maps: `tests/fixtures/captum-methods.safetensors` and
//! `captum-layer-methods.safetensors`, made by
//! `bench/captum_attribution.py` (Captum 0.9, float64) from the golden
//! all-cnn-c network and images of ../shared/golden, which this test loads
//! (and skips loudly without).

use std::collections::HashMap;
use std::path::Path;

use allcnn_models::LayerName;
use allcnn_testing::{assert_close, Golden};
use allcnn_viz::{
    Baseline, DeepLift, DeepLiftShap, FeatureAblation, FeatureMask, GradCam, GradientShap,
    GuidedGradCam, InputXGradient, IntegratedGradients, InternalInfluence, LayerActivation,
    LayerConductance, LayerDeepLift, LayerDeepLiftShap, LayerFeatureAblation, LayerGradientShap,
    LayerGradientXActivation, LayerIntegratedGradients, LayerLrp, Lrp, LrpComposite, LrpRule,
    NeuronConductance, Occlusion, Quadrature, ShapDraw, ShapleyValues, Target, Unit,
};
use candle_core::{Device, Tensor};

/// The fixtures' own float32 check lands within 4e-6 (and a 1e-6 weight
/// jitter moves no map by more than 4e-5); Captum parity is asked to about
/// 1e-4.
const TOL: f64 = 2e-5;

fn fixture() -> HashMap<String, Tensor> {
    fixture_file("captum-methods.safetensors")
}

fn fixture_file(name: &str) -> HashMap<String, Tensor> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e} (run bench/captum_attribution.py)", path.display()))
}

fn setup() -> Option<(Golden, HashMap<String, Tensor>, Target)> {
    let g = Golden::load("all-cnn-c")?;
    let labels: Vec<u32> = g.labels().to_vec1().unwrap();
    Some((g, fixture(), Target::PerImage(labels)))
}

fn check(name: &str, got: &Tensor, want: &HashMap<String, Tensor>) {
    let want = want
        .get(name)
        .unwrap_or_else(|| panic!("fixture has no `{name}`"));
    let max = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(max > 0.0, "{name}: the fixture is all zero");
    assert_close(name, got, want, TOL);
}

#[test]
fn input_x_gradient_matches_captum() {
    let Some((g, want, target)) = setup() else {
        return;
    };
    let got = InputXGradient::new(&g.weights.model)
        .attribute(g.get("input"), &target)
        .unwrap();
    check("input_x_gradient", &got, &want);
}

#[test]
fn grad_cam_matches_captum_layer_grad_cam() {
    let Some((g, want, target)) = setup() else {
        return;
    };
    let model = &g.weights.model;
    let input = g.get("input");
    for (layer, relu) in [(8, false), (7, true), (6, false)] {
        let got = GradCam::new(model, LayerName::Conv(layer))
            .relu_attributions(relu)
            .attribute(input, &target)
            .unwrap();
        let key = format!("grad_cam.conv{layer}{}", if relu { ".relu" } else { "" });
        check(&key, &got, &want);
    }
    // Without the ReLU the map must have negative parts, or the two
    // settings would not be told apart.
    let raw = GradCam::new(model, LayerName::Conv(8))
        .relu_attributions(false)
        .attribute(input, &target)
        .unwrap();
    let min = raw.min_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(min < 0.0, "conv8 Grad-CAM has no negative value ({min})");
}

#[test]
fn guided_grad_cam_matches_captum() {
    let Some((g, want, target)) = setup() else {
        return;
    };
    let model = &g.weights.model;
    let input = g.get("input");
    for layer in [8, 6] {
        let got = GuidedGradCam::new(model, LayerName::Conv(layer))
            .attribute(input, &target)
            .unwrap();
        check(&format!("guided_grad_cam.conv{layer}"), &got, &want);
    }
}

#[test]
fn integrated_gradients_match_captum_for_every_quadrature() {
    let Some((g, want, target)) = setup() else {
        return;
    };
    let model = &g.weights.model;
    let input = g.get("input");
    let ig = |steps: usize, q: Quadrature, b: f32, batch: usize| {
        IntegratedGradients::new(model)
            .steps(steps)
            .quadrature(q)
            .baseline(Baseline::Constant(b))
            .batch(batch)
            .attribute(input, &target)
            .unwrap()
    };
    // The cases of bench/captum_attribution.py's IG_CASES. Batch 6 splits
    // the 4 steps x 2 images into passes of 3 steps and 1.
    check(
        "integrated_gradients.gausslegendre.4.0.0",
        &ig(4, Quadrature::GaussLegendre, 0.0, 6),
        &want,
    );
    for (q, steps, b) in [
        (Quadrature::GaussLegendre, 6, 0.25),
        (Quadrature::RiemannTrapezoid, 5, 0.25),
        (Quadrature::RiemannLeft, 4, 0.25),
        (Quadrature::RiemannRight, 4, 0.25),
        (Quadrature::RiemannMiddle, 6, -0.25),
    ] {
        check(
            &format!("integrated_gradients.{}.{steps}.{b:?}", q.name()),
            &ig(steps, q, b, 64),
            &want,
        );
    }
    // A tensor baseline equal to the constant gives the same maps.
    let b = (input.get(0).unwrap().ones_like().unwrap() * 0.25)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let got = IntegratedGradients::new(model)
        .steps(6)
        .baseline(Baseline::Tensor(b))
        .attribute(input, &target)
        .unwrap();
    check("integrated_gradients.gausslegendre.6.0.25", &got, &want);
}

#[test]
fn occlusion_matches_captum() {
    let Some((g, want, target)) = setup() else {
        return;
    };
    let model = &g.weights.model;
    let input = g.get("input");
    // batch 10 puts 5 windows x 2 images in each pass.
    let got = Occlusion::new(model)
        .window(8, 8)
        .stride(4, 4)
        .batch(10)
        .attribute(input, &target)
        .unwrap();
    check("occlusion.8x8.4.zero", &got, &want);
    // 6x5 windows moved 4 down and 3 across: the last row and column of
    // windows are cut at the edge.
    let got = Occlusion::new(model)
        .window(6, 5)
        .stride(4, 3)
        .baseline(0.25)
        .attribute(input, &target)
        .unwrap();
    check("occlusion.6x5.4x3.const0.25", &got, &want);
}

#[test]
fn deep_lift_and_deep_lift_shap_match_captum() {
    let Some((g, want, target)) = setup() else {
        return;
    };
    let model = &g.weights.model;
    let input = g.get("input");
    let got = DeepLift::new(model).attribute(input, &target).unwrap();
    check("deep_lift.zero", &got, &want);
    let got = DeepLift::new(model)
        .baseline(Baseline::Constant(-0.25))
        .attribute(input, &target)
        .unwrap();
    check("deep_lift.const-0.25", &got, &want);
    let baselines = want["deep_lift_shap.baselines"].clone();
    let got = DeepLiftShap::new(model, baselines)
        .attribute(input, &target)
        .unwrap();
    check("deep_lift_shap", &got, &want);
}

#[test]
fn feature_ablation_and_shapley_values_match_captum() {
    let Some((g, want, target)) = setup() else {
        return;
    };
    let model = &g.weights.model;
    let input = g.get("input");
    // 4x4 patches as a grid and as Captum's id tensor; batch 7 leaves a
    // partial last pass.
    for mask in [
        FeatureMask::Patches {
            height: 4,
            width: 4,
        },
        FeatureMask::Tensor(want["mask.patches4"].clone()),
    ] {
        let got = FeatureAblation::new(model)
            .mask(mask)
            .batch(7)
            .attribute(input, &target)
            .unwrap();
        check("feature_ablation.patches4.zero", &got, &want);
    }
    let got = FeatureAblation::new(model)
        .mask(FeatureMask::Patches {
            height: 8,
            width: 8,
        })
        .baseline(Baseline::Constant(0.25))
        .attribute(input, &target)
        .unwrap();
    check("feature_ablation.patches8.const0.25", &got, &want);
    // Four irregular features: Captum averages over all 24 orders, we sum
    // over the 16 subsets.
    let got = ShapleyValues::new(model)
        .mask(FeatureMask::Tensor(want["mask.four"].clone()))
        .attribute(input, &target)
        .unwrap();
    check("shapley_values.four.zero", &got, &want);
}

#[test]
fn lrp_matches_captum_for_every_rule() {
    let Some((g, want, target)) = setup() else {
        return;
    };
    let model = &g.weights.model;
    let input = g.get("input");
    let lrp0 = LrpRule::Epsilon(1e-9);
    let by_layer =
        |rule: &dyn Fn(usize) -> LrpRule| (1..=9).fold(Lrp::new(model), |l, i| l.rule(i, rule(i)));
    let cases: Vec<(&str, Lrp<'_>)> = vec![
        ("lrp.epsilon", Lrp::new(model)),
        (
            "lrp.epsilon0.25",
            Lrp::new(model).composite(LrpComposite::Uniform(LrpRule::Epsilon(0.25))),
        ),
        (
            "lrp.gamma0.25.from2",
            by_layer(&|i| {
                if i >= 2 {
                    LrpRule::Gamma {
                        gamma: 0.25,
                        zero_bias: false,
                    }
                } else {
                    lrp0
                }
            }),
        ),
        (
            "lrp.gamma0.5.zero_bias.from4",
            by_layer(&|i| {
                if i >= 4 {
                    LrpRule::Gamma {
                        gamma: 0.5,
                        zero_bias: true,
                    }
                } else {
                    lrp0
                }
            }),
        ),
        (
            "lrp.alpha1beta0.from7",
            by_layer(&|i| {
                if i >= 7 {
                    LrpRule::Alpha1Beta0 { zero_bias: false }
                } else {
                    lrp0
                }
            }),
        ),
        (
            "lrp.composite",
            Lrp::new(model).composite("composite".parse().unwrap()),
        ),
    ];
    for (name, lrp) in cases {
        let got = lrp.attribute(input, &target).unwrap();
        check(name, &got, &want);
    }
}

#[test]
fn deep_lift_and_lrp_match_captum_through_max_pools() {
    let Some(g) = Golden::load("model-c") else {
        return;
    };
    let want = fixture();
    let labels: Vec<u32> = g.labels().to_vec1().unwrap();
    let target = Target::PerImage(labels);
    let model = &g.weights.model;
    let input = g.get("input");
    for b in [0.5f32, -0.25] {
        let got = DeepLift::new(model)
            .baseline(Baseline::Constant(b))
            .attribute(input, &target)
            .unwrap();
        check(&format!("model_c.deep_lift.const{b}"), &got, &want);
    }
    check(
        "model_c.lrp.epsilon",
        &Lrp::new(model).attribute(input, &target).unwrap(),
        &want,
    );
    let got = Lrp::new(model)
        .composite(LrpComposite::Uniform(LrpRule::Epsilon(0.25)))
        .attribute(input, &target)
        .unwrap();
    check("model_c.lrp.epsilon0.25", &got, &want);
}

#[test]
fn layer_attributions_match_captum() {
    let Some((g, want, target)) = setup() else {
        return;
    };
    let model = &g.weights.model;
    let input = g.get("input");
    // Activations against the golden PyTorch values (the fixture keeps the
    // large layer maps out).
    for layer in [7, 9] {
        let got = LayerActivation::new(model, LayerName::Conv(layer))
            .attribute(input)
            .unwrap();
        assert_close(
            &format!("act.conv{layer}"),
            &got,
            g.get(&format!("act.conv{layer}")),
            TOL,
        );
    }
    let got = LayerGradientXActivation::new(model, LayerName::Conv(8))
        .attribute(input, &target)
        .unwrap();
    check("layer_gradient_x_activation.conv8", &got, &want);
    let got = LayerDeepLift::new(model, LayerName::Conv(7))
        .attribute(input, &target)
        .unwrap();
    check("layer_deep_lift.conv7.zero", &got, &want);
    let got = LayerDeepLift::new(model, LayerName::Conv(8))
        .baseline(Baseline::Constant(-0.25))
        .attribute(input, &target)
        .unwrap();
    check("layer_deep_lift.conv8.const-0.25", &got, &want);
    // Batch 3 splits the 4 points x 2 images unevenly.
    let got = LayerIntegratedGradients::new(model, LayerName::Conv(7))
        .steps(4)
        .batch(3)
        .attribute(input, &target)
        .unwrap();
    check(
        "layer_integrated_gradients.conv7.gausslegendre.4.0.0",
        &got,
        &want,
    );
    let got = LayerIntegratedGradients::new(model, LayerName::Conv(8))
        .steps(5)
        .quadrature(Quadrature::RiemannTrapezoid)
        .baseline(Baseline::Constant(0.25))
        .attribute(input, &target)
        .unwrap();
    check(
        "layer_integrated_gradients.conv8.riemann_trapezoid.5.0.25",
        &got,
        &want,
    );
    // The fixture keeps the first 32 channels of these three (size).
    let first32 = |t: Tensor| t.narrow(1, 0, 32).unwrap();
    // Batch 3 splits the 5 points x 2 images unevenly.
    let got = InternalInfluence::new(model, LayerName::Conv(7))
        .steps(4)
        .batch(3)
        .attribute(input, &target)
        .map(first32)
        .unwrap();
    check("internal_influence.conv7.gausslegendre.4.0.0", &got, &want);
    let got = LayerConductance::new(model, LayerName::Conv(7))
        .steps(4)
        .batch(3)
        .attribute(input, &target)
        .map(first32)
        .unwrap();
    check("layer_conductance.conv7.gausslegendre.4.0.0", &got, &want);
    let got = LayerConductance::new(model, LayerName::Conv(8))
        .steps(5)
        .quadrature(Quadrature::RiemannTrapezoid)
        .baseline(Baseline::Constant(0.25))
        .attribute(input, &target)
        .map(first32)
        .unwrap();
    check(
        "layer_conductance.conv8.riemann_trapezoid.5.0.25",
        &got,
        &want,
    );
}

/// Captum's NumPy draws, stored beside the map, as [`ShapDraw`]s.
fn draws(want: &HashMap<String, Tensor>, name: &str) -> Vec<ShapDraw> {
    let read = |k: &str| -> Vec<f32> { want[&format!("{name}.{k}")].to_vec1().unwrap() };
    read("baseline_index")
        .into_iter()
        .zip(read("alpha"))
        .map(|(b, alpha)| ShapDraw {
            baseline: b as usize,
            alpha,
        })
        .collect()
}

#[test]
fn layer_lrp_shap_ablation_and_neuron_conductance_match_captum() {
    let Some((g, _, target)) = setup() else {
        return;
    };
    let want = fixture_file("captum-layer-methods.safetensors");
    let first = fixture();
    let model = &g.weights.model;
    let input = g.get("input");
    let first16 = |t: Tensor| t.narrow(1, 0, 16).unwrap();

    // LayerLRP: LRP-0 at conv7; the composite at conv8 and conv3.
    let composite = || Lrp::new(model).composite("composite".parse().unwrap());
    let got = LayerLrp::new(Lrp::new(model), LayerName::Conv(7))
        .attribute(input, &target)
        .unwrap();
    check("layer_lrp.conv7.epsilon", &got, &want);
    let got = LayerLrp::new(composite(), LayerName::Conv(8))
        .attribute(input, &target)
        .unwrap();
    check("layer_lrp.conv8.composite", &got, &want);
    let got = LayerLrp::new(composite(), LayerName::Conv(3))
        .attribute(input, &target)
        .map(first16)
        .unwrap();
    check("layer_lrp.conv3.composite", &got, &want);

    // LayerDeepLiftShap over the three stored noise baselines.
    let baselines = first["deep_lift_shap.baselines"].clone();
    let got = LayerDeepLiftShap::new(model, LayerName::Conv(8), baselines.clone())
        .attribute(input, &target)
        .unwrap();
    check("layer_deep_lift_shap.conv8", &got, &want);
    let got = LayerDeepLiftShap::new(model, LayerName::Conv(6), baselines.clone())
        .attribute(input, &target)
        .map(first16)
        .unwrap();
    check("layer_deep_lift_shap.conv6", &got, &want);

    // (Layer)GradientShap replaying Captum's draws; batch 4 splits the 3
    // samples x 2 images unevenly.
    let got = LayerGradientShap::new(model, LayerName::Conv(7), baselines.clone())
        .samples(3)
        .batch(4)
        .draws(draws(&want, "layer_gradient_shap.conv7"))
        .attribute(input, &target)
        .unwrap();
    check("layer_gradient_shap.conv7", &got, &want);
    let got = GradientShap::new(model, baselines)
        .samples(3)
        .draws(draws(&want, "gradient_shap.input"))
        .attribute(input, &target)
        .unwrap();
    check("gradient_shap.input", &got, &want);

    // LayerFeatureAblation: every unit of the class layer; stored masks
    // at conv8 (positions, baseline 0.25) and conv7 (channel groups).
    let got = LayerFeatureAblation::new(model, LayerName::Conv(9))
        .batch(100)
        .attribute(input, &target)
        .unwrap();
    check("layer_feature_ablation.conv9.units", &got, &want);
    let mask = |k: &str| FeatureMask::Tensor(want[&format!("layer_mask.{k}")].clone());
    let got = LayerFeatureAblation::new(model, LayerName::Conv(8))
        .mask(mask("conv8.positions"))
        .baseline(Baseline::Constant(0.25))
        .attribute(input, &target)
        .unwrap();
    check(
        "layer_feature_ablation.conv8.positions.const0.25",
        &got,
        &want,
    );
    let got = LayerFeatureAblation::new(model, LayerName::Conv(7))
        .mask(mask("conv7.channels16"))
        .batch(5)
        .attribute(input, &target)
        .unwrap();
    check("layer_feature_ablation.conv7.channels16.zero", &got, &want);

    // NeuronConductance through one unit; batch 3 splits the points
    // unevenly.
    let unit = |channel, y, x| Unit { channel, y, x };
    let got = NeuronConductance::new(model, LayerName::Conv(7), unit(159, 4, 4))
        .steps(5)
        .baseline(Baseline::Constant(0.25))
        .batch(3)
        .attribute(input, &target)
        .unwrap();
    check(
        "neuron_conductance.conv7.159.4.4.riemann_trapezoid.5.0.25",
        &got,
        &want,
    );
    let got = NeuronConductance::new(model, LayerName::Conv(5), unit(70, 8, 10))
        .steps(4)
        .quadrature(Quadrature::GaussLegendre)
        .attribute(input, &target)
        .unwrap();
    check(
        "neuron_conductance.conv5.70.8.10.gausslegendre.4.0.0",
        &got,
        &want,
    );
}
