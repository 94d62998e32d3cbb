//! Parity with PyTorch on the golden fixtures (../shared/golden): logits, loss,
//! activations, and every gradient. Skips loudly where the fixtures are absent.

use allcnn_models::testing::{assert_close, Golden, GOLDEN_MODELS};
use allcnn_models::LayerName;
use candle_core::Var;

/// The golden README promises ~1e-5 for a correct f32 implementation; the
/// issue asks for 1e-4. Use the stricter bound with a little headroom.
const TOL: f64 = 2e-5;

fn check_model(name: &str) {
    let Some(g) = Golden::load(name) else { return };
    let model = &g.weights.model;
    let input = Var::from_tensor(g.get("input")).unwrap();

    // Activations named in the fixture, e.g. act.conv1, act.conv7, act.conv9.
    let act_keys: Vec<&String> = g
        .expected
        .keys()
        .filter(|k| k.starts_with("act."))
        .collect();
    assert!(!act_keys.is_empty(), "{name}: fixture has no act.* tensors");
    let mut pass = model.pass();
    for k in &act_keys {
        pass = pass.capture(k.trim_start_matches("act.").parse::<LayerName>().unwrap());
    }
    let acts = pass.run(input.as_tensor()).unwrap();
    for k in &act_keys {
        let layer: LayerName = k.trim_start_matches("act.").parse().unwrap();
        assert_close(
            &format!("{name} {k}"),
            acts.get(layer).unwrap(),
            g.get(k),
            TOL,
        );
    }

    let logits = acts.logits.unwrap();
    assert_close(&format!("{name} logits"), &logits, g.get("logits"), TOL);
    let loss = candle_nn::loss::cross_entropy(&logits, &g.labels()).unwrap();
    assert_close(
        &format!("{name} loss"),
        &loss.reshape(1).unwrap(),
        g.get("loss"),
        TOL,
    );

    // Gradients with respect to the input and every parameter.
    let mut trainable = model.clone();
    let vars = trainable.make_trainable().unwrap();
    let logits = trainable.forward(input.as_tensor()).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &g.labels()).unwrap();
    let grads = loss.backward().unwrap();
    assert_close(
        &format!("{name} grad.input"),
        grads.get(input.as_tensor()).unwrap(),
        g.get("grad.input"),
        TOL,
    );
    let mut checked = 0;
    for (pname, var) in &vars {
        let key = format!("grad.{pname}");
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {pname}"));
        assert_close(&format!("{name} {key}"), got, g.get(&key), TOL);
        checked += 1;
    }
    let expected_grads = g
        .expected
        .keys()
        .filter(|k| k.starts_with("grad.conv"))
        .count();
    assert_eq!(checked, expected_grads, "{name}: every grad.conv* checked");
}

#[test]
fn golden_all_cnn_c() {
    check_model("all-cnn-c");
}

#[test]
fn golden_model_c() {
    check_model("model-c");
}

#[test]
fn golden_strided_cnn_b() {
    check_model("strided-cnn-b");
}

#[test]
fn golden_param_counts_match_meta() {
    for name in GOLDEN_MODELS {
        let Some(g) = Golden::load(name) else { return };
        let want = g.meta["params"].as_u64().unwrap() as usize;
        assert_eq!(g.weights.model.spec().param_count(), want, "{name}");
    }
}
