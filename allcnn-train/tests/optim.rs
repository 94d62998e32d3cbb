//! Momentum SGD parity with torch.optim.SGD on the golden fixtures
//! (../shared/golden `sgd2.*`), a hand-computed check, and the schedules at
//! their milestones.

use allcnn_testing::{assert_close, rel_err, Golden, GOLDEN_MODELS};
use allcnn_train::{LrSchedule, MomentumSgd, SgdConfig};
use candle_core::{Device, Tensor, Var};

fn check_sgd2(name: &str) {
    let Some(g) = Golden::load(name) else { return };
    assert_eq!(g.meta["sgd"]["steps"], 2);
    let cfg = SgdConfig {
        lr: g.meta["sgd"]["lr"].as_f64().unwrap(),
        momentum: g.meta["sgd"]["momentum"].as_f64().unwrap(),
        weight_decay: g.meta["sgd"]["weight_decay"].as_f64().unwrap(),
    };
    let mut model = g.weights.model.clone();
    let before = model.parameters();
    let vars = model.make_trainable().unwrap();
    let mut opt = MomentumSgd::new(vars, cfg);
    let input = g.get("input");
    let labels = g.labels();
    for _ in 0..2 {
        let logits = model.forward(input).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
        opt.backward_step(&loss).unwrap();
    }
    let mut checked = 0;
    for ((pname, now), (_, was)) in model.parameters().iter().zip(&before) {
        let want = g.get(&format!("sgd2.{pname}"));
        assert_close(&format!("{name} sgd2.{pname}"), now, want, 2e-5);
        // The update itself (much smaller than the weights) must agree too.
        let got_delta = (now - was).unwrap();
        let want_delta = (want - was).unwrap();
        let e = rel_err(&got_delta, &want_delta);
        assert!(e < 1e-3, "{name} {pname}: update rel err {e:.3e}");
        checked += 1;
    }
    assert_eq!(checked, 2 * model.spec().convs().len());
}

#[test]
fn sgd2_all_cnn_c() {
    check_sgd2("all-cnn-c");
}

#[test]
fn sgd2_model_c() {
    check_sgd2("model-c");
}

#[test]
fn sgd2_strided_cnn_b() {
    check_sgd2("strided-cnn-b");
}

#[test]
fn golden_models_are_the_three() {
    assert_eq!(GOLDEN_MODELS.len(), 3);
}

#[test]
fn momentum_matches_hand_computation() {
    // loss = sum(w * c): gradient c, constant.
    let dev = Device::Cpu;
    let w = Var::from_slice(&[1.0f32, -2.0], 2, &dev).unwrap();
    let c = Tensor::from_slice(&[0.5f32, 1.0], 2, &dev).unwrap();
    let (lr, m, wd) = (0.1f64, 0.9f64, 0.01f64);
    let mut opt = MomentumSgd::new(
        vec![("w".into(), w.clone())],
        SgdConfig {
            lr,
            momentum: m,
            weight_decay: wd,
        },
    );
    let mut ww = [1.0f64, -2.0];
    let mut v = [0.0f64; 2];
    let cc = [0.5f64, 1.0];
    for _ in 0..3 {
        let loss = (w.as_tensor() * &c).unwrap().sum_all().unwrap();
        opt.backward_step(&loss).unwrap();
        for i in 0..2 {
            let g = cc[i] + wd * ww[i];
            v[i] = m * v[i] + g;
            ww[i] -= lr * v[i];
        }
    }
    let got: Vec<f32> = w.as_tensor().to_vec1().unwrap();
    for i in 0..2 {
        assert!(
            (f64::from(got[i]) - ww[i]).abs() < 1e-6,
            "{got:?} vs {ww:?}"
        );
    }
    // The momentum buffer round-trips.
    let state = opt.state();
    assert_eq!(state.len(), 1);
    let vb: Vec<f32> = state[0].1.to_vec1().unwrap();
    assert!((f64::from(vb[0]) - v[0]).abs() < 1e-6);
    // The steps update the buffers in place on CPU: neither an exported
    // state nor a gradient store may change under the caller.
    let saved = state[0].1.clone();
    let loss = (w.as_tensor() * &c).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    opt.step(&grads).unwrap();
    assert_eq!(saved.to_vec1::<f32>().unwrap(), vb, "exported state moved");
    let g: Vec<f32> = grads.get(w.as_tensor()).unwrap().to_vec1().unwrap();
    assert_eq!(g, [0.5, 1.0], "gradient store written");
    let mut opt2 = MomentumSgd::new(vec![("w".into(), w.clone())], opt.config());
    opt2.load_state(state.into_iter().collect()).unwrap();
    let bad = [(
        "nope".to_string(),
        Tensor::zeros(2, candle_core::DType::F32, &dev).unwrap(),
    )];
    let err = opt2.load_state(bad.into_iter().collect()).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn paper_multistep_at_milestones() {
    let s = LrSchedule::paper();
    let lr = |e| s.lr(0.05, e, 0, 350);
    assert_eq!(lr(0), 0.05);
    assert_eq!(lr(199), 0.05);
    assert!((lr(200) - 0.005).abs() < 1e-12);
    assert!((lr(249) - 0.005).abs() < 1e-12);
    assert!((lr(250) - 0.0005).abs() < 1e-12);
    assert!((lr(299) - 0.0005).abs() < 1e-12);
    assert!((lr(300) - 0.00005).abs() < 1e-12);
    assert!((lr(349) - 0.00005).abs() < 1e-12);
}

#[test]
fn constant_and_step_iters() {
    assert_eq!(LrSchedule::Constant.lr(0.1, 349, 1_000_000, 350), 0.1);
    let s = LrSchedule::StepIters {
        every: 200_000,
        gamma: 0.1,
    };
    assert_eq!(s.lr(0.01, 0, 199_999, 10), 0.01);
    assert!((s.lr(0.01, 0, 200_000, 10) - 0.001).abs() < 1e-15);
    assert!((s.lr(0.01, 0, 400_000, 10) - 0.0001).abs() < 1e-15);
}

#[test]
fn scaled_schedule_keeps_the_paper_shape() {
    let s = LrSchedule::paper_scaled();
    // 350 epochs: exactly the paper's milestones.
    assert_eq!(s.milestone_epochs(350), vec![200, 250, 300]);
    // 35 epochs: 20, 25, 30.
    assert_eq!(s.milestone_epochs(35), vec![20, 25, 30]);
    assert_eq!(s.lr(1.0, 19, 0, 35), 1.0);
    assert!((s.lr(1.0, 20, 0, 35) - 0.1).abs() < 1e-12);
    assert!((s.lr(1.0, 25, 0, 35) - 0.01).abs() < 1e-12);
    assert!((s.lr(1.0, 30, 0, 35) - 0.001).abs() < 1e-12);
    // A fraction that rounds to epoch 0 in a short run drops after the
    // first epoch, not before it (a 1-epoch ImageNet run trained at a
    // tenth of its rate).
    let early = LrSchedule::Scaled {
        fractions: vec![0.1, 0.4, 0.9],
        gamma: 0.1,
    };
    assert_eq!(early.milestone_epochs(1), vec![1, 1, 1]);
    assert_eq!(early.lr(0.01, 0, 0, 1), 0.01);
    assert_eq!(early.milestone_epochs(3), vec![1, 1, 3]);
    assert!((early.lr(0.01, 1, 0, 3) - 0.0001).abs() < 1e-15);
    assert!(LrSchedule::Scaled {
        fractions: vec![0.5, 1.5],
        gamma: 0.1
    }
    .validate()
    .is_err());
}

/// `train_step` on hand-computable cases: every class map dead (logits all
/// 0: loss ln 10, every example dead, argmax 0), and a non-finite loss
/// (no update at all); through our kernels' backward and through candle's
/// autograd (the path of GPUs: backward first, one read after).
#[test]
fn train_step_statistics_and_no_update_on_a_non_finite_loss() {
    use allcnn_models::ConvBackend;
    train_step_cases(ConvBackend::Winograd);
    train_step_cases(ConvBackend::Candle);
}

fn train_step_cases(backend: allcnn_models::ConvBackend) {
    use allcnn_models::{AllCnn, ArchSpec, Init};
    use allcnn_train::train_step;

    let spec = ArchSpec::by_name("all-cnn-c", 10).unwrap();
    let mut model = AllCnn::init(spec, Init::XavierUniform, 7, &Device::Cpu).unwrap();
    model.set_conv_backend(backend);
    let vars = model.make_trainable().unwrap();
    // A very negative class-layer bias kills every class map after the ReLU.
    let (_, bias) = vars.iter().find(|(n, _)| n == "conv9.bias").unwrap();
    bias.set(&Tensor::full(-1e4f32, 10, &Device::Cpu).unwrap())
        .unwrap();
    let mut opt = MomentumSgd::new(vars.clone(), SgdConfig::default());
    let images = Tensor::ones((3, 3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    let labels = Tensor::new(&[0u32, 3, 0], &Device::Cpu).unwrap();
    let out = train_step(&model, &mut opt, &images, &labels, 1, 0, 0.01).unwrap();
    assert!((out.loss - 10f32.ln()).abs() < 1e-6, "{}", out.loss);
    assert_eq!((out.dead, out.correct, out.updated), (3, 2, true));
    // Only the classes in the batch are judged.
    assert_eq!(
        (out.seen_classes, out.silent_classes),
        (vec![0, 3], vec![0, 3])
    );

    // An infinite class-layer bias: infinite logits, a NaN loss, and neither
    // the parameters nor the momentum move.
    bias.set(&Tensor::full(f32::INFINITY, 10, &Device::Cpu).unwrap())
        .unwrap();
    let snapshot = |vars: &[(String, Var)]| -> Vec<Vec<f32>> {
        vars.iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    };
    let before = snapshot(&vars);
    let momentum_before = opt.state().len();
    let out = train_step(&model, &mut opt, &images, &labels, 1, 1, 0.01).unwrap();
    assert!(out.loss.is_nan() && !out.updated);
    assert_eq!(snapshot(&vars), before);
    assert_eq!(opt.state().len(), momentum_before);
}
