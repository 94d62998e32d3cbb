//! Loading `--weights` with an optional `--model/--classes` override, and the
//! preprocessing recorded in the file.

use std::path::Path;

use allcnn_data::Preprocessing;
use allcnn_models::{ArchSpec, WeightsFile};
use anyhow::{bail, Context, Result};
use candle_core::Device;

/// `--model NAME --classes N`, needed only for files that do not describe
/// themselves.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// Weights file (.safetensors).
    #[arg(long)]
    pub weights: std::path::PathBuf,
    /// Architecture, when the weights file does not record it (see `allcnn models`).
    #[arg(long)]
    pub model: Option<String>,
    /// Class count, with --model.
    #[arg(long)]
    pub classes: Option<usize>,
}

pub struct Loaded {
    pub file: WeightsFile,
    /// The recorded preprocessing, if any.
    pub preprocessing: Option<Preprocessing>,
    /// Class names recorded by the trainer (`allcnn.class_names`), if any.
    pub class_names: Option<Vec<String>>,
}

pub fn load(args: &ModelArgs, device: &Device) -> Result<Loaded> {
    let path: &Path = &args.weights;
    let file = match (&args.model, args.classes) {
        (Some(m), Some(c)) => WeightsFile::load_as(path, ArchSpec::by_name(m, c)?, device)?,
        (Some(_), None) | (None, Some(_)) => bail!("--model and --classes go together"),
        (None, None) => WeightsFile::load(path, device)?,
    };
    let preprocessing = match &file.meta.preprocessing {
        Some(json) => Some(
            Preprocessing::from_parts(json, &file.attachments).with_context(|| {
                format!("{}: reading the recorded preprocessing", path.display())
            })?,
        ),
        None => None,
    };
    let class_names = match file.meta.extra.get("allcnn.class_names") {
        Some(json) => Some(serde_json::from_str::<Vec<String>>(json).with_context(|| {
            format!(
                "{}: metadata allcnn.class_names is not a JSON list",
                path.display()
            )
        })?),
        None => None,
    };
    Ok(Loaded {
        file,
        preprocessing,
        class_names,
    })
}
