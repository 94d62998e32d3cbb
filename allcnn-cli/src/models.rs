//! `allcnn models`: the registry as a table or JSON.

use allcnn_models::{registry, ArchSpec, Layer};
use anyhow::Result;
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// Class count of the head (default: 10 for CIFAR models, 1000 for ImageNet).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    classes: Option<usize>,
    /// Print JSON (one array of objects) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Row {
    name: String,
    description: String,
    classes: usize,
    input_size: usize,
    params: usize,
    final_map: [usize; 3],
    paper_error_cifar10: Option<f32>,
    layers: Vec<Layer>,
}

/// `3x3 96`, `3x3/2 96`, `pool`, `drop .5`, with 'v' marking unpadded convs.
fn short(layer: &Layer) -> String {
    match *layer {
        Layer::Conv {
            kernel,
            out,
            stride,
            padding,
        } => {
            let stride = if stride == 1 {
                String::new()
            } else {
                format!("/{stride}")
            };
            let valid = if padding == 0 && kernel > 1 { "v" } else { "" };
            format!("{kernel}x{kernel}{stride}{valid} {out}")
        }
        Layer::MaxPool => "pool".to_string(),
        Layer::Dropout { rate } => format!("drop {rate}"),
    }
}

pub fn run(args: &Args) -> Result<()> {
    let mut rows = Vec::new();
    for info in registry() {
        let default = if info.name == "all-cnn-imagenet" {
            1000
        } else {
            10
        };
        let spec = ArchSpec::by_name(info.name, args.classes.unwrap_or(default))?;
        let (c, h, w) = spec.final_map(spec.input_size)?;
        rows.push(Row {
            name: spec.name.clone(),
            description: info.description.to_string(),
            classes: spec.classes()?,
            input_size: spec.input_size,
            params: spec.param_count(),
            final_map: [c, h, w],
            paper_error_cifar10: info.paper_error,
            layers: spec.layers.clone(),
        });
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    outln!(
        "{:<17} {:>10} {:>5} {:>10} {:>7}  layers (drop = dropout, /2 = stride 2, v = unpadded)",
        "model",
        "params",
        "input",
        "final map",
        "paper"
    )?;
    for r in &rows {
        let layers: Vec<String> = r.layers.iter().map(short).collect();
        let paper = r
            .paper_error_cifar10
            .map_or("-".to_string(), |e| format!("{e:.2}%"));
        outln!(
            "{:<17} {:>10} {:>5} {:>10} {:>7}  {}",
            r.name,
            r.params,
            r.input_size,
            format!("{}x{}x{}", r.final_map[0], r.final_map[1], r.final_map[2]),
            paper,
            layers.join(", ")
        )?;
    }
    outln!(
        "\npaper = CIFAR-10 test error without augmentation (Springenberg et al. 2014, Table 3)"
    )?;
    Ok(())
}
