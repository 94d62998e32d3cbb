//! Loading `--weights` with an optional `--model/--classes` override, and the
//! preprocessing recorded in the file.

use std::path::{Path, PathBuf};

use allcnn_data::Preprocessing;
use allcnn_models::pretrained::AllCnnC;
use allcnn_models::{ArchSpec, WeightsFile};
use anyhow::{bail, Context, Result};
use candle_core::Device;

/// `--weights` (a file or `hf://` reference), `--offline`, and
/// `--model NAME --classes N`, needed only for files that do not describe
/// themselves.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// Weights: a .safetensors file, or a Hugging Face Hub reference
    /// hf://OWNER/REPO[/FILE][@REVISION] (FILE defaults to model.safetensors,
    /// REVISION to main), downloaded once into the Hugging Face cache.
    /// Without --weights: the shipped All-CNN-C trained on CIFAR-10 (see
    /// `allcnn pretrained list`).
    #[arg(long, value_name = "FILE|hf://OWNER/REPO")]
    pub weights: Option<PathBuf>,
    /// Use only the Hugging Face cache for hf:// weights, never the network
    /// (also set by ALLCNN_OFFLINE=1 or HF_HUB_OFFLINE=1). The cache is
    /// HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub;
    /// HF_ENDPOINT sets the server, HF_TOKEN authenticates.
    #[arg(long)]
    pub offline: bool,
    /// Architecture, when the weights file does not record it (see `allcnn models`).
    #[arg(long, value_parser = crate::values::model_name())]
    pub model: Option<String>,
    /// Class count, with --model.
    #[arg(long, value_parser = crate::values::classes)]
    pub classes: Option<usize>,
    /// Precision of the convolutions on CPU: `f32` (the default: exact
    /// against PyTorch), `bf16` (bf16 operands, f32 accumulation: about
    /// 1e-3 relative, 3.9x faster on CPUs with AMX) or `auto` (this CPU's
    /// fastest: bf16 on AMX and on AMD CPUs with AVX-512 BF16 (Zen 4, Zen 5),
    /// Winograd F(4x4) in f32 on AVX2 CPUs without AVX-512).
    #[arg(long, value_parser = crate::values::precision())]
    pub precision: Option<allcnn_models::Precision>,
}

pub struct Loaded {
    pub file: WeightsFile,
    /// The recorded preprocessing, if any.
    pub preprocessing: Option<Preprocessing>,
    /// Class names recorded by the trainer (`allcnn.class_names`), if any.
    pub class_names: Option<Vec<String>>,
}

/// The local file `weights` names: itself, or for an `hf://` reference the
/// file in the Hugging Face cache (downloaded first unless offline).
pub fn resolve(weights: &Path, offline: bool) -> Result<PathBuf> {
    let Some(text) = weights.to_str().filter(|s| s.starts_with(HUB_SCHEME)) else {
        return Ok(weights.to_path_buf());
    };
    hub_resolve(text, offline)
}

#[cfg(feature = "hub")]
fn hub_resolve(text: &str, offline: bool) -> Result<PathBuf> {
    use std::io::IsTerminal;

    use allcnn_models::hub::{resolve, HubOptions, HubRef};
    let reference: HubRef = text.parse()?;
    let mut options = HubOptions::default().progress(std::io::stderr().is_terminal());
    if offline {
        options = options.offline(true);
    }
    Ok(resolve(&reference, &options)?)
}

#[cfg(not(feature = "hub"))]
fn hub_resolve(text: &str, _offline: bool) -> Result<PathBuf> {
    bail!(
        "`{text}` is a Hugging Face Hub reference, but this allcnn was built without Hub \
         support; rebuild it with `--features hub` (on by default), or download the file and \
         pass its path"
    )
}

const HUB_SCHEME: &str = "hf://";

impl ModelArgs {
    /// The weights as named in messages: the --weights path, or the shipped
    /// default's name.
    pub fn label(&self) -> String {
        match &self.weights {
            Some(w) => w.display().to_string(),
            None => format!("the shipped {} weights", AllCnnC::Cifar10),
        }
    }
}

pub fn load(args: &ModelArgs, device: &Device) -> Result<Loaded> {
    let Some(weights) = &args.weights else {
        if args.model.is_some() || args.classes.is_some() {
            usage!(
                "--model and --classes describe a --weights file; pass --weights FILE with them"
            );
        }
        let file = AllCnnC::Cifar10.load(device)?;
        return finish(file, Path::new(AllCnnC::Cifar10.name()), args.precision);
    };
    let resolved = resolve(weights, args.offline)?;
    let path: &Path = &resolved;
    // (Other failures, a file that cannot be read, are the loader's to say.)
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => bail!(
            "--weights {}: is a folder; give a .safetensors weights file (a run's final.safetensors or best.safetensors)",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "--weights {}: no such file; give a .safetensors weights file, `hf://OWNER/REPO` for the Hugging Face Hub, or leave --weights out for the shipped model (`allcnn pretrained list`)",
            path.display()
        ),
        _ => {}
    }
    let file = match (&args.model, args.classes) {
        (Some(m), Some(c)) => {
            let asked = ArchSpec::by_name(m, c)?;
            refuse_other_architecture(path, &asked, m, c)?;
            WeightsFile::load_as(path, asked, device)?
        }
        (Some(m), None) => usage!(
            "--model {m} needs --classes N as well: the class count the weights were trained for (10 for CIFAR-10, 100 for CIFAR-100)"
        ),
        (None, Some(c)) => usage!(
            "--classes {c} needs --model NAME as well: the architecture of the weights (`allcnn models` lists them)"
        ),
        (None, None) => match WeightsFile::load(path, device) {
            Ok(file) => file,
            // A run's checkpoint: its weights where the run stands.
            Err(allcnn_models::ModelError::NotSelfDescribing { .. }) if is_checkpoint(path) => {
                let file = allcnn_train::checkpoint::Checkpoint::weights(path, device)?;
                let training = file.meta.training();
                eprintln!(
                    "note: {} is a training checkpoint: using its weights at step {}{}, with its run's preprocessing",
                    path.display(),
                    training.step.unwrap_or(0),
                    training
                        .epoch
                        .map_or_else(String::new, |e| format!(" (after epoch {e})"))
                );
                file
            }
            Err(e) => return Err(other_kind_of_file(path, e)),
        },
    };
    finish(file, path, args.precision)
}

/// Fails where the file records an architecture other than `--model m
/// --classes c` (`asked`): with the same parameter shapes (All-CNN-C's
/// weights as ConvPool-CNN-C's) they would load, run another network and
/// print its wrong accuracy with no word said.
fn refuse_other_architecture(path: &Path, asked: &ArchSpec, m: &str, c: usize) -> Result<()> {
    // A file without a recorded architecture is what the flags are for;
    // an unreadable one is the loader's to report.
    let Ok(recorded) = WeightsFile::read_spec(path) else {
        return Ok(());
    };
    if (recorded.in_channels, &recorded.layers) == (asked.in_channels, &asked.layers) {
        return Ok(());
    }
    let classes = recorded
        .classes()
        .map_or_else(|_| "?".to_string(), |n| n.to_string());
    bail!(
        "--model {m} --classes {c}: {} records its own architecture, {} with {classes} classes ({}); leave out --model and --classes to use it",
        path.display(),
        recorded.name,
        allcnn_models::KEY_SPEC
    )
}

/// The `__metadata__` keys of the safetensors file `path`, if it is one.
fn metadata_keys(path: &Path) -> Option<Vec<String>> {
    let header = allcnn_models::SafetensorsHeader::read(path).ok()?;
    Some(header.metadata.into_keys().collect())
}

/// Whether `path` is a training checkpoint (by its metadata key).
fn is_checkpoint(path: &Path) -> bool {
    metadata_keys(path).is_some_and(|k| {
        k.iter()
            .any(|k| k == allcnn_train::checkpoint::CHECKPOINT_KEY)
    })
}

/// The weights `args` names, as the file records them or, where it records
/// no architecture at all (a PyTorch export), as `like`'s: for a second
/// network that must have the first one's architecture
/// (`--shuffled-labels`), which `--model/--classes` (the first's) cannot
/// describe.
pub fn load_like(args: &ModelArgs, like: &ArchSpec, device: &Device) -> Result<Loaded> {
    let Some(weights) = &args.weights else {
        return load(args, device);
    };
    let path = resolve(weights, args.offline)?;
    let ours = [
        allcnn_models::KEY_MODEL,
        allcnn_models::KEY_SPEC,
        allcnn_train::checkpoint::CHECKPOINT_KEY,
        allcnn_data::preprocess::METADATA_KEY,
    ];
    let bare = metadata_keys(&path).is_some_and(|k| !k.iter().any(|k| ours.contains(&k.as_str())));
    if bare {
        let file = WeightsFile::load_as(&path, like.clone(), device)?;
        return finish(file, &path, args.precision);
    }
    load(args, device)
}

/// For a file that does not describe an architecture: if it is one of a
/// run's other files (the checkpoint, the preprocessing), an error that
/// says so and names the weights to use instead; `error` otherwise.
fn other_kind_of_file(path: &Path, error: allcnn_models::ModelError) -> anyhow::Error {
    if !matches!(error, allcnn_models::ModelError::NotSelfDescribing { .. }) {
        return error.into();
    }
    let keys = metadata_keys(path);
    let flags = || {
        anyhow::anyhow!(
            "{error} with --model NAME --classes N (`allcnn models` lists the architectures)"
        )
    };
    let Some(keys) = keys else {
        return flags();
    };
    let run = path.parent().unwrap_or(Path::new("."));
    let what = if keys
        .iter()
        .any(|k| k == allcnn_data::preprocess::METADATA_KEY)
    {
        "a run's preprocessing (the whitening fitted on its training data)"
    } else {
        return flags();
    };
    anyhow::anyhow!(
        "{} is {what}, not a weights file: pass the run's weights instead, {} or {}",
        path.display(),
        run.join("final.safetensors").display(),
        run.join("best.safetensors").display()
    )
}

fn finish(
    mut file: WeightsFile,
    path: &Path,
    precision: Option<allcnn_models::Precision>,
) -> Result<Loaded> {
    if let Some(p) = precision {
        file.model.set_conv_backend(p.backend());
    }
    let preprocessing = match &file.meta.preprocessing {
        Some(json) => Some(
            // The error names the metadata key already.
            Preprocessing::from_parts(json, &file.attachments)
                .with_context(|| path.display().to_string())?,
        ),
        None => None,
    };
    let class_names = file.meta.class_names().with_context(|| {
        format!(
            "{}: metadata {} is not a JSON list of strings",
            path.display(),
            allcnn_models::KEY_CLASS_NAMES
        )
    })?;
    Ok(Loaded {
        file,
        preprocessing,
        class_names,
    })
}
