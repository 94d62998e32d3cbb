//! Tiny models and synthetic data for fast CPU tests.
#![allow(dead_code)]

use std::sync::Arc;

use allcnn_data::{Image, VecDataset};
use allcnn_models::{ArchSpec, Layer};
use allcnn_train::{LrSchedule, TrainConfig, TrainData};
use rand::{Rng, SeedableRng};

/// `n` random 3x`side`x`side` images with labels `i % classes`.
pub fn random_dataset(n: usize, side: usize, classes: usize, seed: u64) -> Arc<VecDataset> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let images = (0..n)
        .map(|_| {
            let px: Vec<u8> = (0..3 * side * side).map(|_| rng.random()).collect();
            Image::from_chw(3, side, side, px).unwrap()
        })
        .collect();
    let labels = (0..n).map(|i| (i % classes) as u32).collect();
    let names = (0..classes).map(|c| format!("c{c}")).collect();
    Arc::new(VecDataset::new(images, labels, names).unwrap())
}

/// A tiny All-CNN-shaped net: 3x3 convs, a stride-2 conv instead of a
/// pool, a 1x1 class conv, optional dropout in the paper's places.
pub fn tiny_spec(side: usize, width: usize, classes: usize, dropout: bool) -> ArchSpec {
    let mut layers = Vec::new();
    if dropout {
        layers.push(Layer::Dropout { rate: 0.2 });
    }
    layers.push(Layer::conv(3, width, 1));
    layers.push(Layer::conv(3, width, 2));
    if dropout {
        layers.push(Layer::Dropout { rate: 0.5 });
    }
    layers.push(Layer::conv(3, 2 * width, 1));
    layers.push(Layer::conv(1, classes, 1));
    ArchSpec {
        name: "tiny".into(),
        in_channels: 3,
        input_size: side,
        layers,
    }
}

/// A config for a tiny run.
pub fn tiny_config(spec: ArchSpec, epochs: u64, batch: usize, lr: f64) -> TrainConfig {
    let mut c = TrainConfig::preset("cifar10").unwrap();
    c.spec = Some(spec);
    c.epochs = epochs;
    c.batch_size = batch;
    c.eval_batch_size = 64;
    c.lr = lr;
    c.init = allcnn_models::Init::HeNormal;
    c.schedule = LrSchedule::Constant;
    c.log_every_steps = 5;
    c.data.preprocessing = allcnn_train::config::PreprocessChoice::Standardize;
    c.data.workers = 2;
    c
}

pub fn data(train: Arc<VecDataset>, test: Option<Arc<VecDataset>>) -> TrainData {
    TrainData::new(train, test.map(|t| t as Arc<dyn allcnn_data::Dataset>))
}

pub fn params_bits(path: &std::path::Path) -> Vec<(String, Vec<u32>)> {
    let w = allcnn_models::WeightsFile::load(path, &candle_core::Device::Cpu).unwrap();
    w.model
        .parameters()
        .into_iter()
        .map(|(n, t)| {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            (n, v.into_iter().map(f32::to_bits).collect())
        })
        .collect()
}
