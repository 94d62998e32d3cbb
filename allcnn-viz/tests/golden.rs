//! Parity with Captum on the golden fixtures (../shared/golden): gradient,
//! saliency, guided backprop and deconvnet for the labels, and the neuron
//! maps of meta.json's hidden unit, on every device of the build. Skips
//! loudly where the fixtures are absent.

use allcnn_models::LayerName;
use allcnn_testing::{assert_close, test_device, Golden, GOLDEN_MODELS};
use allcnn_viz::{Deconvnet, Gradient, GuidedBackprop, Saliency, Target};
use candle_core::Device;

/// The issue asks for 1e-4; the fixtures promise ~1e-5 for a correct f32
/// implementation.
const TOL: f64 = 2e-5;

fn check_model(name: &str, dev: &Device) {
    let Some(g) = Golden::load_on(name, dev) else {
        return;
    };
    let model = &g.weights.model;
    let input = g.get("input");
    let labels: Vec<u32> = g.labels().to_vec1().unwrap();
    let target = Target::PerImage(labels);

    let cases = [
        ("gradient", Gradient::new(model).attribute(input, &target)),
        (
            "saliency.abs",
            Saliency::new(model).attribute(input, &target),
        ),
        (
            "guided_backprop",
            GuidedBackprop::new(model).attribute(input, &target),
        ),
        ("deconvnet", Deconvnet::new(model).attribute(input, &target)),
    ];
    for (key, got) in cases {
        assert_close(&format!("{name} {key}"), &got.unwrap(), g.get(key), TOL);
    }

    let unit = &g.meta["hidden_unit"];
    let layer: LayerName = unit["layer"].as_str().unwrap().parse().unwrap();
    let num = |k: &str| unit[k].as_u64().unwrap() as usize;
    let target = Target::Unit {
        layer,
        channel: num("channel"),
        y: num("y"),
        x: num("x"),
    };
    let neuron = [
        (
            "neuron.guided_backprop",
            GuidedBackprop::new(model).attribute(input, &target),
        ),
        (
            "neuron.deconvnet",
            Deconvnet::new(model).attribute(input, &target),
        ),
    ];
    // Where the unit is inactive (0 after its ReLU) in every image, guided
    // backprop's own [f > 0] mask stops the signal at once and the fixture
    // is all zero; check that this is why, so a zero fixture is not a free
    // pass. The deconvnet ignores f and must always be non-zero.
    let act = model
        .pass()
        .capture(layer)
        .stop_at(layer)
        .run(input)
        .unwrap();
    let unit_values: Vec<f32> = act
        .get(layer)
        .unwrap()
        .narrow(1, num("channel"), 1)
        .unwrap()
        .narrow(2, num("y"), 1)
        .unwrap()
        .narrow(3, num("x"), 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (key, got) in neuron {
        let want = g.get(key);
        let got = got.unwrap();
        let max = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        if key == "neuron.deconvnet" || unit_values.iter().any(|&v| v > 0.0) {
            assert!(max > 0.0, "{name} {key}: the fixture is all zero");
        } else {
            eprintln!("{name} {key}: unit inactive in every image ({unit_values:?}); map is zero");
        }
        assert_close(&format!("{name} {key}"), &got, want, TOL);
    }
}

/// Every golden model, on every device of the build.
fn golden_models(dev: &Device) {
    for name in GOLDEN_MODELS {
        check_model(name, dev);
    }
}
test_device!(golden_models);
