//! Parity with PyTorch on the golden fixtures (../shared/golden): logits, loss,
//! activations, and every gradient. Skips loudly where the fixtures are absent.

use allcnn_models::{ConvBackend, LayerName};
use allcnn_testing::{assert_close, test_device, Golden, GOLDEN_MODELS};
use candle_core::{Device, Var};

/// The golden README promises ~1e-5 for a correct f32 implementation; the
/// issue asks for 1e-4. Use the stricter bound with a little headroom.
const TOL: f64 = 2e-5;

/// bf16 GEMM operands (8-bit mantissa, relative rounding 2^-9) in the
/// Winograd layers: the documented bound of `ConvBackend::WinogradBf16` on
/// activations, logits and loss.
const TOL_BF16: f64 = 2e-2;

/// With bf16, ReLU masks flip where a pre-activation lies within rounding
/// of zero, so single gradient entries can move a lot (the largest entry of
/// grad.input by ~30% at batch 2, of a parameter gradient by ~5%) while the
/// direction, which is what SGD follows, stays: bounds on the cosine
/// between bf16 and PyTorch gradients, for the input gradient (seen: 0.981;
/// training never uses it) and for every parameter gradient (seen: >= 0.998).
const GRAD_COSINE_BF16: GradCosine = GradCosine {
    input: 0.95,
    params: 0.995,
};

/// Least cosines between our gradients and PyTorch's.
#[derive(Clone, Copy)]
struct GradCosine {
    input: f64,
    params: f64,
}

/// Checks `name` on `dev` run with `backend` (on the CPU; other devices
/// use candle's convolution whatever it says): every tensor to relative
/// error `tol`, or, with `grad_cosine`, the gradients by their cosine with
/// PyTorch's.
fn check_model_with(
    name: &str,
    dev: &Device,
    backend: ConvBackend,
    tol: f64,
    grad_cosine: Option<GradCosine>,
) {
    let Some(g) = Golden::load_on(name, dev) else {
        return;
    };
    let mut model = g.weights.model.clone();
    model.set_conv_backend(backend);
    let model = &model;
    let name = &format!("{name} ({})", backend.name());
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
            tol,
        );
    }

    let logits = acts.logits.unwrap();
    assert_close(&format!("{name} logits"), &logits, g.get("logits"), tol);
    let loss = candle_nn::loss::cross_entropy(&logits, &g.labels()).unwrap();
    assert_close(
        &format!("{name} loss"),
        &loss.reshape(1).unwrap(),
        g.get("loss"),
        tol,
    );

    // Gradients with respect to the input and every parameter.
    let mut trainable = model.clone();
    let vars = trainable.make_trainable().unwrap();
    let logits = trainable.forward(input.as_tensor()).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &g.labels()).unwrap();
    let grads = loss.backward().unwrap();
    let check_grad = |what: &str, got: &candle_core::Tensor| match grad_cosine {
        None => assert_close(&format!("{name} {what}"), got, g.get(what), tol),
        Some(bounds) => {
            let min = if what == "grad.input" {
                bounds.input
            } else {
                bounds.params
            };
            let c = cosine(got, g.get(what));
            eprintln!("{name} {what}: cosine {c:.6}");
            assert!(c >= min, "{name} {what}: cosine {c} < {min}");
        }
    };
    check_grad("grad.input", grads.get(input.as_tensor()).unwrap());
    let mut checked = 0;
    for (pname, var) in &vars {
        let key = format!("grad.{pname}");
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {pname}"));
        check_grad(&key, got);
        checked += 1;
    }
    let expected_grads = g
        .expected
        .keys()
        .filter(|k| k.starts_with("grad.conv"))
        .count();
    assert_eq!(checked, expected_grads, "{name}: every grad.conv* checked");
}

/// Every golden model at f32 with the default convolution, on every device
/// of the build.
fn golden_models(dev: &Device) {
    for name in GOLDEN_MODELS {
        check_model_with(name, dev, ConvBackend::default(), TOL, None);
    }
}
test_device!(golden_models);

#[test]
fn golden_all_cnn_c_bf16() {
    check_model_with(
        "all-cnn-c",
        &Device::Cpu,
        ConvBackend::WinogradBf16,
        TOL_BF16,
        Some(GRAD_COSINE_BF16),
    );
}

#[test]
fn golden_all_cnn_c_every_backend_but_bf16_is_exact() {
    for backend in [ConvBackend::Gemm, ConvBackend::Candle] {
        check_model_with("all-cnn-c", &Device::Cpu, backend, TOL, None);
    }
}

#[test]
fn golden_param_counts_match_meta() {
    for name in GOLDEN_MODELS {
        let Some(g) = Golden::load(name) else { return };
        let want = g.meta["params"].as_u64().unwrap() as usize;
        assert_eq!(g.weights.model.spec().param_count(), want, "{name}");
    }
}

/// The cosine of the angle between two tensors, in f64.
fn cosine(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    let v = |t: &candle_core::Tensor| {
        t.to_dtype(candle_core::DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    };
    let (a, b) = (v(a), v(b));
    assert_eq!(a.len(), b.len(), "shape mismatch");
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(&a) * norm(&b)).max(f64::MIN_POSITIVE)
}
