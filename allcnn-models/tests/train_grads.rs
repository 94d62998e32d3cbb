//! `AllCnn::train_grads` (the CPU training path without candle's autograd)
//! against the autograd path it replaces: the same loss, logits and
//! parameter gradients (with and without max-pooling), the same dropout
//! masks, and `None` where it does not apply.

use allcnn_models::{AllCnn, ArchSpec, ConvBackend, DropoutRng, Init, Layer};
use candle_core::{Device, Tensor};

fn tiny(pool: bool) -> ArchSpec {
    let mut layers = vec![
        Layer::Dropout { rate: 0.2 },
        Layer::conv(3, 8, 1),
        Layer::conv(3, 8, 2),
        Layer::Dropout { rate: 0.5 },
        Layer::conv(3, 12, 1),
    ];
    if pool {
        layers.push(Layer::MaxPool);
    }
    layers.extend([Layer::conv_valid(3, 12, 1), Layer::conv(1, 5, 1)]);
    ArchSpec {
        name: "tiny".into(),
        in_channels: 3,
        input_size: 12,
        layers,
    }
}

fn batch(n: usize) -> (Tensor, Vec<u32>) {
    let x: Vec<f32> = (0..n * 3 * 12 * 12)
        .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 3.0)
        .collect();
    let labels = (0..n as u32).map(|i| (i * 3) % 5).collect();
    (
        Tensor::from_vec(x, (n, 3, 12, 12), &Device::Cpu).unwrap(),
        labels,
    )
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Largest |a - b| relative to the largest |b| (the tensor's scale).
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn train_grads_equal_the_autograd_path() {
    for (backend, pool) in [
        (ConvBackend::Winograd, false),
        (ConvBackend::Gemm, false),
        (ConvBackend::WinogradBf16, false),
        (ConvBackend::Winograd, true),
        (ConvBackend::WinogradBf16, true),
    ] {
        let mut model = AllCnn::init(tiny(pool), Init::HeNormal, 3, &Device::Cpu).unwrap();
        model.set_conv_backend(backend);
        let vars = model.make_trainable().unwrap();
        let (x, labels) = batch(6);
        let label_t = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();

        let mut rng_a = DropoutRng::new(11, 4);
        let logits = model.forward_train(&x, &mut rng_a).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &label_t).unwrap();
        let grads = loss.backward().unwrap();

        let mut rng_b = DropoutRng::new(11, 4);
        let fast = model
            .train_grads(&x, &labels, &mut rng_b)
            .unwrap()
            .expect("a CPU f32 network takes the fast path");
        // The same masks were drawn, and as many.
        assert_eq!(rng_a.mask(64, 0.5), rng_b.mask(64, 0.5), "{backend:?}");

        let want_loss = loss.to_scalar::<f32>().unwrap();
        assert!(
            (fast.loss - want_loss).abs() <= 1e-6 * want_loss.abs(),
            "{backend:?} pool {pool}: loss {} against {want_loss}",
            fast.loss
        );
        assert!(rel_diff(&values(&fast.logits), &values(&logits)) <= 1e-6);
        for (name, var) in &vars {
            let want = values(grads.get(var.as_tensor()).unwrap());
            let got = values(fast.grads.get(var.as_tensor()).unwrap());
            let d = rel_diff(&got, &want);
            assert!(
                d <= 1e-5,
                "{backend:?} pool {pool} {name}: relative difference {d}"
            );
        }
    }
}

#[test]
fn train_grads_decline_what_they_do_not_cover_and_check_labels() {
    let (x, labels) = batch(2);
    let mut rng = DropoutRng::new(1, 0);
    // candle's own convolution goes through autograd.
    let mut candle = AllCnn::init(tiny(false), Init::HeNormal, 3, &Device::Cpu).unwrap();
    candle.set_conv_backend(ConvBackend::Candle);
    assert!(candle.train_grads(&x, &labels, &mut rng).unwrap().is_none());
    // ... and nothing was drawn from the generator then.
    assert_eq!(rng.mask(16, 0.5), DropoutRng::new(1, 0).mask(16, 0.5));

    let model = AllCnn::init(tiny(false), Init::HeNormal, 3, &Device::Cpu).unwrap();
    let e = model.train_grads(&x, &[0], &mut rng).unwrap_err();
    assert!(e.to_string().contains("1 labels for a batch of 2"), "{e}");
    let e = model.train_grads(&x, &[0, 5], &mut rng).unwrap_err();
    assert!(e.to_string().contains("label 5 for 5 classes"), "{e}");
}
