//! Models the allcnn-viz tests share.
#![allow(dead_code)]

use std::collections::HashMap;

use allcnn_models::{AllCnn, ArchSpec, Init, Layer};
use candle_core::{Device, Tensor};

/// A He-initialised All-CNN-C (10 classes) on the CPU.
pub fn all_cnn_c(seed: u64) -> AllCnn {
    AllCnn::init(
        ArchSpec::by_name("all-cnn-c", 10).unwrap(),
        Init::HeNormal,
        seed,
        &Device::Cpu,
    )
    .unwrap()
}

/// A 1x1 convolution with `out` channels (stride 1, no padding).
pub fn conv1x1(out: usize) -> Layer {
    Layer::Conv {
        kernel: 1,
        out,
        stride: 1,
        padding: 0,
    }
}

/// A network of `layers` on `in_channels` x `side` x `side` inputs with
/// the given parameters `(name, values, shape)`.
pub fn model_from(
    in_channels: usize,
    side: usize,
    layers: Vec<Layer>,
    params: Vec<(&str, Vec<f32>, Vec<usize>)>,
) -> AllCnn {
    let spec = ArchSpec {
        name: "tiny".into(),
        in_channels,
        input_size: side,
        layers,
    };
    let tensors: HashMap<String, Tensor> = params
        .into_iter()
        .map(|(n, v, s)| (n.to_string(), Tensor::from_vec(v, s, &Device::Cpu).unwrap()))
        .collect();
    AllCnn::from_tensors(spec, tensors, "test", &Device::Cpu).unwrap()
}

/// One 1x1 convolution with weight 2 and bias `bias` on a 1-channel 4x4
/// image, one class: `T(x) = mean(relu(2x + bias))`.
pub fn doubling(bias: f32) -> AllCnn {
    model_from(
        1,
        4,
        vec![conv1x1(1)],
        vec![
            ("conv1.weight", vec![2.0], vec![1, 1, 1, 1]),
            ("conv1.bias", vec![bias], vec![1]),
        ],
    )
}

/// `n` images `[n, 3, 32, 32]` of seeded standard normal noise.
pub fn noise(n: usize, seed: u64) -> Tensor {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = rand_distr::Normal::new(0f32, 1.0).unwrap();
    let v: Vec<f32> = (0..n * 3 * 32 * 32)
        .map(|_| normal.sample(&mut rng))
        .collect();
    Tensor::from_vec(v, (n, 3, 32, 32), &Device::Cpu).unwrap()
}
