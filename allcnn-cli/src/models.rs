//! `allcnn models`: the registry as a table or JSON.

use allcnn_models::{registry, ArchSpec, Layer};
use allcnn_train::reproduce::Experiment;
use anyhow::Result;
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// Class count of the head (default: 10 for CIFAR models, 1000 for ImageNet).
    #[arg(long, value_parser = crate::values::classes)]
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
    /// The paper's top-1 test error for this model on the data set of its
    /// head (CIFAR-10 for 10 classes, CIFAR-100 for 100, ImageNet for
    /// 1000; none for other class counts), without augmentation.
    paper: Option<Paper>,
    layers: Vec<Layer>,
}

/// A number of the paper for one model, and the experiment it comes from.
#[derive(Serialize)]
struct Paper {
    #[serde(skip)]
    source: Experiment,
    /// `allcnn reproduce`'s name for the experiment (`table3`, `cifar100`, `imagenet`).
    experiment: &'static str,
    /// Top-1 test error in percent.
    error: f64,
    /// A caveat about the number (the ImageNet one is unconfirmed).
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// The paper's number for `model` with a head of `classes` classes: from
/// the experiment without augmentation on the data set with that many
/// classes (the augmented CIFAR-10 row is `allcnn reproduce cifar10-aug`'s).
fn paper(model: &str, classes: usize) -> Option<Paper> {
    [
        Experiment::Table3,
        Experiment::Cifar100,
        Experiment::Imagenet,
    ]
    .into_iter()
    .filter(|e| e.classes() == classes)
    .find_map(|e| {
        let row = e.rows().into_iter().find(|r| r.model == model)?;
        Some(Paper {
            source: e,
            experiment: e.name(),
            error: row.paper_error,
            note: row.note,
        })
    })
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
            paper: paper(info.name, spec.classes()?),
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
        let paper = r.paper.as_ref().map_or("-".to_string(), |p| {
            let mark = if p.note.is_some() { "*" } else { "" };
            format!("{:.2}%{mark}", p.error)
        });
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
    // Say where each number comes from, once per experiment shown.
    let mut sources: Vec<&Paper> = Vec::new();
    for p in rows.iter().filter_map(|r| r.paper.as_ref()) {
        if !sources.iter().any(|s| s.experiment == p.experiment) {
            sources.push(p);
        }
    }
    if sources.is_empty() {
        let n = rows.first().map_or(0, |r| r.classes);
        outln!(
            "\npaper = -: the paper reports no error for heads of {n} {}",
            if n == 1 { "class" } else { "classes" }
        )?;
    } else {
        outln!("\npaper = top-1 test error in Springenberg et al. 2014, from:")?;
        for s in sources {
            let note = s
                .note
                .as_ref()
                .map_or(String::new(), |n| format!(" (* {n})"));
            outln!("  {}{note}", s.source.title())?;
        }
    }
    Ok(())
}
