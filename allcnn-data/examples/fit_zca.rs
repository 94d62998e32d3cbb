//! Fits the paper's GCN + ZCA on the training split of a dataset and saves it.
//!
//! `cargo run --release -p allcnn-data --example fit_zca -- PATH [OUT.safetensors] [N]`
//!
//! PATH is any supported layout (CIFAR binary folder or image folder, e.g.
//! ../shared/data/cifar10-jpg); N limits the number of training images.

use std::path::PathBuf;
use std::time::Instant;

use allcnn_data::{open_dataset, Dataset, GcnZcaConfig, OpenOptions, Preprocessing, Split, Subset};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().ok_or("usage: fit_zca PATH [OUT] [N]")?);
    let out = PathBuf::from(args.next().unwrap_or_else(|| "gcn-zca.safetensors".into()));
    let t = Instant::now();
    let train = open_dataset(&path, Split::Train, &OpenOptions::default())?;
    let n = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(train.len());
    let train = Subset::first(train, n);
    println!(
        "opened {} training images in {:.1?}",
        train.len(),
        t.elapsed()
    );
    let t = Instant::now();
    let zca = Preprocessing::fit_gcn_zca(&train, &GcnZcaConfig::default())?;
    println!(
        "fitted GCN + ZCA on {} images in {:.1?}",
        train.len(),
        t.elapsed()
    );
    zca.save(&out)?;
    println!("saved {}", out.display());
    Ok(())
}
