//! `allcnn predict`: classify images or a preprocessed tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use allcnn_data::input::InputBatch;
use allcnn_data::{folder::is_image_file, Preprocessing};
use allcnn_train::classify::{top_guesses, Classifier, Guess};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::out::OutKind;
use crate::weights::{self, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Image files (JPEG/PNG), folders of images, or one .safetensors file
    /// holding a preprocessed `input` tensor [N,3,H,W].
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// How many classes to show per input.
    #[arg(long, default_value_t = 5, value_parser = crate::values::count::<usize>)]
    top_k: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Also write the raw logits [N,C] as tensor `logits` to this .safetensors file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Batch size for images.
    #[arg(long, default_value_t = 64, value_parser = crate::values::count::<usize>)]
    batch: usize,
    #[command(flatten)]
    device: crate::device::DeviceArg,
}

#[derive(Serialize)]
struct Prediction {
    input: String,
    top: Vec<Guess>,
}

/// Expands folders into their image files (sorted). Only regular files
/// are read: a FIFO or a link to a device named like an image would block
/// or never end.
pub fn image_paths(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let (images, others): (Vec<PathBuf>, Vec<PathBuf>) = std::fs::read_dir(p)
                .with_context(|| format!("reading folder {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .partition(|f| is_image_file(f));
            // Other files are left out by their names, which is said: a
            // .webp or a file without an extension was dropped silently.
            let mut others: Vec<&PathBuf> = others
                .iter()
                .filter(|f| {
                    f.is_file()
                        && !f
                            .file_name()
                            .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
                })
                .collect();
            if !others.is_empty() {
                others.sort();
                let shown: Vec<String> = others
                    .iter()
                    .take(3)
                    .map(|f| {
                        crate::printable_name(&f.file_name().unwrap_or_default().to_string_lossy())
                            .into_owned()
                    })
                    .collect();
                eprintln!(
                    "note: {}: {} left out, not named .jpg, .jpeg or .png: {}{} (give such a file by its path to read it by its content)",
                    crate::printable_name(&p.display().to_string()),
                    crate::count(others.len() as u64, "file"),
                    shown.join(", "),
                    if others.len() > 3 { ", ..." } else { "" }
                );
            }
            let (mut files, skipped): (Vec<PathBuf>, Vec<PathBuf>) =
                images.into_iter().partition(|f| f.is_file());
            if let Some(first) = skipped.iter().min() {
                eprintln!(
                    "warning: {}: {} skipped, not a readable regular file (a link to nothing, a folder, a FIFO): {}",
                    p.display(),
                    crate::count(skipped.len() as u64, "image name"),
                    first.display()
                );
            }
            if files.is_empty() {
                bail!(
                    "{} holds no JPEG or PNG image (its subfolders are not searched: name the class folders, e.g. {})",
                    p.display(),
                    p.join("CLASS").display()
                );
            }
            files.sort();
            out.extend(files);
        } else if p.is_file() {
            out.push(p.clone());
        } else if p.exists() {
            bail!("{}: not a regular file or folder", p.display());
        } else if p.symlink_metadata().is_ok() {
            bail!(
                "{}: a link that leads nowhere (its target is missing, or the links loop)",
                p.display()
            );
        } else {
            bail!("{}: no such file or folder", p.display());
        }
    }
    Ok(out)
}

/// What [`load_images`] did to the files beyond decoding them, to be said
/// once per command ([`InputNotes::note`]): images brought to the model's
/// input size, and transparency dropped.
#[derive(Debug, Default)]
pub struct InputNotes {
    /// The first resized image and its width and height.
    first: Option<(PathBuf, usize, usize)>,
    count: usize,
    side: usize,
    /// The first image with transparent pixels, and how many had them.
    transparent: Option<PathBuf>,
    transparent_count: usize,
}

impl InputNotes {
    /// Counts the images of `batch` (made from `paths`) that were resized
    /// or had transparent pixels.
    pub fn record(&mut self, batch: &InputBatch, paths: &[PathBuf]) {
        for i in batch.resized() {
            self.side = batch.images.dims().last().copied().unwrap_or(0);
            self.count += 1;
            let (h, w) = batch.original_sizes[i];
            self.first.get_or_insert_with(|| (paths[i].clone(), w, h));
        }
        for (i, _) in batch.transparent.iter().enumerate().filter(|(_, &t)| t) {
            self.transparent_count += 1;
            self.transparent.get_or_insert_with(|| paths[i].clone());
        }
    }

    /// A line on stderr for each kind of change: a photo brought down to
    /// 32x32 is not what the network was trained on (`eval` refuses such
    /// images for that reason), and the colours under transparent pixels,
    /// which a viewer does not show, are what the network sees.
    pub fn note(&self) {
        if let Some((first, w, h)) = &self.first {
            let side = self.side;
            let how = if side < allcnn_data::input::CENTRE_CROP_FROM {
                "resized"
            } else {
                "resized and centre-cropped"
            };
            eprintln!(
                "note: {} ({w}x{h}){} {how} to the model's {side}x{side} input",
                first.display(),
                crate::and_more(self.count, "image")
            );
        }
        if let Some(first) = &self.transparent {
            eprintln!(
                "note: {}{} {} transparent pixels: their alpha is dropped (as PIL's convert(\"RGB\")), so the colours stored under them, which a viewer does not show, are what the network sees",
                first.display(),
                crate::and_more(self.transparent_count, "image"),
                if self.transparent_count == 1 { "has" } else { "have" }
            );
        }
    }
}

/// Loads image files as a preprocessed batch
/// ([`allcnn_data::input::load_batch`]), noting in `notes` those not of
/// the model's input size.
pub fn load_images(
    paths: &[PathBuf],
    side: usize,
    pre: &Preprocessing,
    device: &Device,
    notes: &mut InputNotes,
) -> Result<Tensor> {
    let batch = allcnn_data::input::load_batch(paths, side, pre, device)?;
    notes.record(&batch, paths);
    Ok(batch.images)
}

/// Reads `input` from a .safetensors file, and with `classes` (the
/// model's class count) its `labels` if present: integer class indices in
/// `0..classes`, one per image, as U32. Without `classes` the labels are
/// not read.
pub fn load_tensor_file(
    path: &Path,
    device: &Device,
    classes: Option<usize>,
) -> Result<(Tensor, Option<Tensor>)> {
    let mut t: HashMap<String, Tensor> = candle_core::safetensors::load(path, device)
        .with_context(|| format!("{}: not a readable safetensors file", path.display()))?;
    let Some(input) = t.remove("input") else {
        // A weights file given where the images go.
        let hint = if t.keys().any(|k| k.ends_with(".weight")) {
            ": it looks like a weights file; pass it as --weights"
        } else {
            ""
        };
        bail!(
            "{} has no tensor `input` (it should hold preprocessed images [N,3,H,W]){hint}",
            path.display()
        );
    };
    match input.dims() {
        [n, 3, h, w] if *n > 0 && *h > 0 && *w > 0 => {}
        dims => bail!(
            "{}: tensor `input` has shape {dims:?}; expected [N,3,H,W] with at least one image",
            path.display()
        ),
    }
    let labels = match (t.remove("labels"), classes) {
        (Some(l), Some(classes)) => Some(class_labels(&l, input.dims()[0], classes, path)?),
        _ => None,
    };
    let input = input.to_dtype(DType::F32)?;
    // A NaN would come out of the network as plausible probabilities (the
    // ReLU and the max-pool do not pass it on).
    let finite = input
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .position(|v| !v.is_finite());
    if let Some(i) = finite {
        let per_image = input.elem_count() / input.dims()[0];
        bail!(
            "{}: tensor `input` holds a NaN or infinite value (image {}, element {}); only finite values can be classified",
            path.display(),
            i / per_image,
            i % per_image
        );
    }
    Ok((input, labels))
}

/// The tensor `labels` of `path` checked as one class index in
/// `0..classes` per image of the `n`, as U32: a float or out-of-range label
/// is refused with its image rather than truncated or wrapped.
fn class_labels(l: &Tensor, n: usize, classes: usize, path: &Path) -> Result<Tensor> {
    if l.dims() != [n] {
        bail!(
            "{}: tensor `labels` has shape {:?}; expected [{n}], one label per image",
            path.display(),
            l.dims()
        );
    }
    if l.dtype().is_float() {
        bail!(
            "{}: tensor `labels` is {:?}; class labels are integers (U8, U32 or I64)",
            path.display(),
            l.dtype()
        );
    }
    let values = l.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    if let Some((i, c)) = values
        .iter()
        .enumerate()
        .find(|&(_, &c)| usize::try_from(c).map_or(true, |c| c >= classes))
    {
        bail!(
            "{}: label {c} of image {i} is not a class of the model (0..{classes})",
            path.display()
        );
    }
    let values: Vec<u32> = values.into_iter().map(|c| c as u32).collect();
    Ok(Tensor::new(values, l.device())?)
}

/// Writes `tensor` as the only tensor (`name`) of the safetensors file `out`,
/// through a synced temporary sibling and a rename
/// ([`allcnn_models::write_atomic`]): a crash or a full disk leaves the
/// previous file, never a truncated one.
pub fn save_tensor(name: &str, tensor: &Tensor, out: &Path) -> Result<()> {
    let cpu = tensor.to_device(&Device::Cpu)?;
    let bytes = safetensors::serialize([(name, &cpu)], None)
        .with_context(|| format!("serialising `{name}` for {}", out.display()))?;
    // The error names the file.
    allcnn_models::write_atomic(out, &bytes)?;
    Ok(())
}

pub fn is_safetensors(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "safetensors")
}

/// Refuses a preprocessed tensor file among other inputs (`what`: what
/// the command does with it, e.g. "classified").
pub fn tensor_file_alone(inputs: &[PathBuf], what: &str) -> Result<()> {
    if inputs.len() > 1 {
        if let Some(t) = inputs.iter().find(|p| is_safetensors(p)) {
            bail!(
                "{}: a preprocessed tensor file is {what} on its own; pass it alone, and the images in another call",
                t.display()
            );
        }
    }
    Ok(())
}

pub fn run(args: &Args) -> Result<()> {
    tensor_file_alone(&args.inputs, "classified")?;
    let tensor_file = args.inputs.len() == 1 && is_safetensors(&args.inputs[0]);
    // Listed here only for the --out check (an error in listing them is
    // reported after the weights', where the images are read).
    let mut listed = None;
    if let Some(out) = &args.out {
        // The images found in folders count as inputs too.
        if !tensor_file {
            listed = image_paths(&args.inputs).ok();
        }
        let images = listed.as_deref().unwrap_or_default();
        let inputs = args.model.weights.iter().chain(&args.inputs).chain(images);
        crate::out::check(out, OutKind::File, inputs.map(PathBuf::as_path))?;
        crate::out::replaceable(out, "logits")?;
    }
    let device = args.device.open()?;
    let loaded = weights::load(&args.model, &device)?;
    let model = &loaded.file.model;
    let (names, logits): (Vec<String>, Tensor) = if tensor_file {
        let (x, _) = load_tensor_file(&args.inputs[0], &device, None)?;
        let n = x.dim(0)?;
        let names = (0..n)
            .map(|i| format!("{}[{i}]", args.inputs[0].display()))
            .collect();
        (names, model.forward(&x)?)
    } else {
        let paths = match listed {
            Some(paths) => paths,
            None => image_paths(&args.inputs)?,
        };
        let pre = match &loaded.preprocessing {
            Some(p) => p.clone(),
            None => {
                eprintln!(
                    "warning: {} records no preprocessing; scaling pixels to [0, 1]. \
                     Predictions are meaningless if the model was trained otherwise.",
                    args.model.label()
                );
                Preprocessing::scale()
            }
        };
        let classifier = Classifier::with_preprocessing(loaded.file.clone(), pre);
        let mut chunks = Vec::new();
        let bar = crate::progress::bar(paths.len() as u64, "predicting");
        let mut notes = InputNotes::default();
        for chunk in paths.chunks(args.batch) {
            let batch = classifier.load_images(chunk)?;
            notes.record(&batch, chunk);
            chunks.push(classifier.logits(&batch.images)?);
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        notes.note();
        // JSON and the listing hold text: a name that is not UTF-8 loses
        // its invalid bytes there, which the user should know.
        if let Some(first) = paths.iter().find(|p| p.to_str().is_none()) {
            let n = paths.iter().filter(|p| p.to_str().is_none()).count();
            eprintln!(
                "note: {}{} {} not valid UTF-8: the output shows {} with U+FFFD in place of the bytes that are not",
                crate::printable_name(&first.display().to_string()),
                crate::and_more(n, "file name"),
                if n == 1 { "is" } else { "are" },
                if n == 1 { "it" } else { "them" }
            );
        }
        let names = paths.iter().map(|p| p.display().to_string()).collect();
        (names, Tensor::cat(&chunks, 0)?)
    };
    if let Some(out) = &args.out {
        save_tensor("logits", &logits, out)?;
    }
    let preds: Vec<Prediction> = names
        .into_iter()
        .zip(top_guesses(
            &logits,
            args.top_k,
            loaded.class_names.as_deref(),
        )?)
        .map(|(input, top)| Prediction { input, top })
        .collect();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&preds)?)?;
    } else {
        for p in &preds {
            let top: Vec<String> = p
                .top
                .iter()
                .map(|g| match &g.name {
                    Some(n) => format!(
                        "{} ({}) {:.1}%",
                        crate::printable_name(n),
                        g.class,
                        100.0 * g.probability
                    ),
                    None => format!("class {} {:.1}%", g.class, 100.0 * g.probability),
                })
                .collect();
            outln!("{}: {}", crate::printable_name(&p.input), top.join(", "))?;
        }
    }
    Ok(())
}
