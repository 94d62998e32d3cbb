//! `allcnn pretrained`: the weights shipped inside the binary.

use std::path::PathBuf;

use allcnn_models::pretrained::AllCnnC;
use anyhow::{bail, Result};
use clap::Subcommand;
use serde::Serialize;

#[derive(Subcommand)]
pub enum Command {
    /// List the shipped weights with their accuracy and provenance.
    #[command(after_help = "Examples:\n  allcnn pretrained list\n  allcnn pretrained list --json")]
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write shipped weights to a .safetensors file (self-describing: the
    /// architecture, classes and preprocessing ride along).
    #[command(
        after_help = "Examples:\n  allcnn pretrained save --out all-cnn-c-cifar10.safetensors\n  allcnn pretrained save all-cnn-c-cifar10 --out w.safetensors --force"
    )]
    Save {
        /// Which weights (see `allcnn pretrained list`).
        #[arg(default_value = "all-cnn-c-cifar10")]
        name: String,
        /// The file to write (a `.safetensors` name; an existing file is
        /// kept unless --force).
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing file at --out.
        #[arg(long)]
        force: bool,
    },
    /// Print the model card (Markdown) of shipped weights.
    #[command(after_help = "Example:\n  allcnn pretrained card > MODEL_CARD.md")]
    Card {
        /// Which weights (see `allcnn pretrained list`).
        #[arg(default_value = "all-cnn-c-cifar10")]
        name: String,
    },
}

#[derive(Serialize)]
struct Row {
    name: &'static str,
    architecture: String,
    dataset: String,
    top1: f64,
    top5: Option<f64>,
    test_images: Option<usize>,
    epochs: Option<u64>,
    best_of_run: bool,
    bytes: usize,
    default: bool,
    provenance: std::collections::BTreeMap<String, String>,
}

fn by_name(name: &str) -> Result<AllCnnC> {
    match AllCnnC::by_name(name) {
        Some(v) => Ok(v),
        None => bail!(
            "no shipped weights called {name:?}; available: {}",
            AllCnnC::ALL
                .iter()
                .map(|v| v.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub fn run(cmd: &Command) -> Result<()> {
    match cmd {
        Command::List { json } => {
            let rows: Vec<Row> = AllCnnC::ALL
                .iter()
                .map(|v| {
                    let i = v.info();
                    Row {
                        name: i.name,
                        architecture: i.architecture,
                        dataset: i.dataset,
                        top1: i.top1,
                        top5: i.top5,
                        test_images: i.test_images,
                        epochs: i.epochs,
                        best_of_run: i.best_of_run,
                        bytes: i.bytes,
                        default: *v == AllCnnC::Cifar10,
                        provenance: i.provenance,
                    }
                })
                .collect();
            if *json {
                outln!("{}", serde_json::to_string_pretty(&rows)?)?;
                return Ok(());
            }
            for r in &rows {
                outln!(
                    "{}{}: {} on {}, test top-1 {:.2}%{} on {} images, {}, {:.1} MB",
                    r.name,
                    if r.default { " (default)" } else { "" },
                    r.architecture,
                    r.dataset,
                    100.0 * r.top1,
                    r.top5
                        .map(|t| format!(", top-5 {:.2}%", 100.0 * t))
                        .unwrap_or_default(),
                    r.test_images.map_or("?".into(), |n| n.to_string()),
                    match (r.epochs, r.best_of_run) {
                        (Some(n), true) => format!("the run's best epoch, {n}"),
                        (Some(n), false) => crate::count(n, "epoch"),
                        (None, _) => "? epochs".into(),
                    },
                    r.bytes as f64 / 1e6
                )?;
                for (k, v) in &r.provenance {
                    outln!("    {k}: {v}")?;
                }
            }
        }
        Command::Save { name, out, force } => {
            let v = by_name(name)?;
            crate::out::check(out, crate::out::OutKind::Weights, std::iter::empty())?;
            if out.exists() && !force {
                bail!(
                    "--out {}: a file is already there; add --force to replace it, or choose another path",
                    out.display()
                );
            }
            if !out
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
            {
                eprintln!(
                    "warning: {} does not end in .safetensors, the name other tools look for; the file is safetensors all the same",
                    out.display()
                );
            }
            v.save(out)?;
            outln!(
                "wrote {} ({} bytes) to {}",
                v.name(),
                v.bytes().len(),
                out.display()
            )?;
        }
        Command::Card { name } => out!("{}", by_name(name)?.card())?,
    }
    Ok(())
}
