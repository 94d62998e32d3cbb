//! `allcnn export-hub`: a run's weights as a folder ready to upload to the
//! Hugging Face Hub (the work is `allcnn_train::export_hub`).

use std::path::PathBuf;

use allcnn_train::{
    export::{export_hub_with_progress, WeightsChoice},
    ExportOptions,
};
use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// The run directory (written by `allcnn train --out RUN`).
    run: PathBuf,
    /// The folder to write: model.safetensors, config.json, README.md.
    #[arg(long)]
    out: PathBuf,
    /// Which weights: final (evaluated in eval.json) or best (the best epoch).
    #[arg(long, default_value = "final", value_parser = ["final", "best"])]
    weights: String,
    /// OWNER/REPO the folder will be uploaded to (for the card's usage lines).
    #[arg(long, value_name = "OWNER/REPO", value_parser = crate::values::repo_id)]
    repo: Option<String>,
    /// License id for the model card's front matter.
    #[arg(long, default_value = "mit", value_parser = crate::values::license_id)]
    license: String,
    /// Hub dataset id for the model card (default: guessed, e.g. cifar10).
    #[arg(long, value_parser = crate::values::dataset_id)]
    dataset: Option<String>,
    /// Store the ZCA whitening matrix as a low-rank f16 basis of this rank
    /// plus an isotropic remainder (256 keeps CIFAR-10 weights under 8 MB
    /// instead of 43 MB); evaluate the exported file afterwards.
    #[arg(long, value_name = "RANK", value_parser = crate::values::count::<usize>)]
    whitening_rank: Option<usize>,
    /// Store the network's parameters as f16 (about 2.7 MB less for
    /// All-CNN-C; they load back as f32); evaluate the exported file.
    #[arg(long)]
    f16_weights: bool,
    /// Provenance recorded in the weights, config.json and the card, e.g.
    /// --provenance commit=abc123 --provenance "hardware=AMD EPYC, 2 cores".
    #[arg(long, value_name = "KEY=VALUE")]
    provenance: Vec<String>,
    /// Evaluate the exported model.safetensors itself on the test split of
    /// this dataset (CIFAR binary folder or image folder) and put those
    /// figures on the card and in OUT/eval.json, in place of the run's own
    /// (recommended with --whitening-rank or --f16-weights, and for --weights
    /// best when the run evaluated a test subset).
    #[arg(long, value_name = "DIR")]
    eval_data: Option<PathBuf>,
    /// Overwrite the export's files in a non-empty --out folder.
    #[arg(long)]
    force: bool,
    /// Print what was written (files, measured results) as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let choice: WeightsChoice = args.weights.parse()?;
    let mut options = ExportOptions::default()
        .weights(choice)
        .force(args.force)
        .license(&args.license);
    if let Some(repo) = &args.repo {
        options = options.repo_id(repo);
    }
    if let Some(d) = &args.dataset {
        options = options.dataset(d);
    }
    if let Some(k) = args.whitening_rank {
        options = options.whitening_rank(k);
    }
    options = options.half_weights(args.f16_weights);
    for item in &args.provenance {
        let Some((k, v)) = item.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
            anyhow::bail!(
                "--provenance {item:?}: expected KEY=VALUE with a KEY, e.g. commit=abc123"
            );
        };
        if item.chars().any(char::is_control) {
            anyhow::bail!(
                "--provenance {item:?}: holds a line break or another control character; give one line"
            );
        }
        options = options.provenance(k.trim(), v.trim());
    }
    if let Some(data) = &args.eval_data {
        options = options.evaluate_on(data);
    }
    crate::out::check(
        &args.out,
        crate::out::OutKind::Folder("a folder for the model repository"),
        [args.run.as_path()],
    )?;
    let mut bar = None;
    let s = export_hub_with_progress(&args.run, &args.out, &options, &mut |done, total| {
        bar.get_or_insert_with(|| crate::progress::bar(total, "evaluating the export"))
            .set_position(done)
    })
    .map_err(|e| match (e, &args.eval_data) {
        // Name the data that does not fit (the library says only "data").
        (allcnn_train::TrainError::DataMismatch { reason }, Some(data)) => {
            anyhow::anyhow!("--eval-data {}: {reason}", data.display())
        }
        (e, _) => e.into(),
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&s)?)?;
        return Ok(());
    }
    outln!(
        "exported the {} weights of {} ({}, {} classes) from {}",
        s.weights,
        args.run.display(),
        s.model,
        s.classes,
        s.source.display()
    )?;
    for r in &s.results {
        outln!(
            "  {} top-1 {:.2}%, measured by {}",
            r.split,
            100.0 * r.top1,
            r.source
        )?;
    }
    for f in &s.files {
        outln!("wrote {}", f.display())?;
    }
    let repo = args.repo.as_deref().unwrap_or("OWNER/REPO");
    outln!(
        "upload with: hf upload {repo} {} .   (or: huggingface-cli upload {repo} {} .)",
        s.out_dir.display(),
        s.out_dir.display()
    )?;
    Ok(())
}
