//! `allcnn viz sanity` (alias `trust`): the sanity checks and the
//! deletion/insertion faithfulness of each attribution method, as a table,
//! JSON, a figure and a plot.

use std::path::PathBuf;

use allcnn_viz::render::{self, curves_svg};
use allcnn_viz::{DeletionInsertion, Method, SanityCheck, Target, TargetSpec};
use anyhow::{bail, Context, Result};

use crate::viz::{options, read_input, Common, MethodArgs};
use crate::weights::{self, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Image files or folders, or a .safetensors file with `input` (and
    /// `labels`). A few images (10-50) give stable means.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// What the maps explain: predicted (the trained network's class, kept
    /// for every randomised network), labels or class:K; a hidden unit works
    /// for the sanity checks but not for the faithfulness curves.
    #[arg(long, default_value = "predicted", value_parser = clap::value_parser!(TargetSpec))]
    target: TargetSpec,
    /// Methods to check, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = crate::values::method(),
          default_value = "gradient,saliency,deconvnet,guided-backprop,input-x-gradient,grad-cam,guided-grad-cam,integrated-gradients,occlusion,deep-lift,lrp,feature-ablation,shapley-values")]
    methods: Vec<Method>,
    /// Weights of the same architecture trained on shuffled labels, for the
    /// data-randomisation test.
    #[arg(long)]
    shuffled_labels: Option<PathBuf>,
    /// A method passes when the rank correlation of its absolute maps with
    /// the trained network's, averaged over the upper half of the cascade
    /// (the class layer random, then the top two, ..., half the
    /// convolutions), is below this (and so is the one with the
    /// shuffled-label network).
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    randomization_seed: u64,
    /// Skip randomising each layer alone (halves the time).
    #[arg(long)]
    cascading_only: bool,
    /// Portions the pixels are deleted or inserted in.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    deletion_steps: u32,
    /// Folder for trust.json, sanity-cascade.png and faithfulness.svg.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    settings: MethodArgs,
    #[command(flatten)]
    common: Common,
}

/// `trust.json`.
#[derive(serde::Serialize)]
struct Report<'a> {
    weights: String,
    target: String,
    images: usize,
    sanity: &'a allcnn_viz::SanityReport,
    faithfulness: Vec<Faithfulness>,
    files: Vec<PathBuf>,
}

#[derive(serde::Serialize)]
struct Faithfulness {
    method: String,
    deletion_auc: f32,
    insertion_auc: f32,
    deletion_curve: Vec<f32>,
    insertion_curve: Vec<f32>,
}

pub fn run(args: &Args) -> Result<()> {
    if !(args.threshold.is_finite() && args.threshold > -1.0 && args.threshold <= 1.0) {
        usage!(
            "--threshold {}: use a rank correlation in (-1, 1]",
            args.threshold
        );
    }
    crate::values::once_each("--methods", &args.methods)?;
    let inputs = args
        .model
        .weights
        .iter()
        .chain(&args.shuffled_labels)
        .chain(&args.input);
    crate::out::check(
        &args.out,
        crate::out::OutKind::Folder("a folder for the report"),
        inputs.map(PathBuf::as_path),
    )?;
    let device = args.common.device.open()?;
    let loaded = weights::load(&args.model, &device)?;
    let model = &loaded.file.model;
    let shuffled = match &args.shuffled_labels {
        Some(p) => {
            if !p.exists() && !p.to_string_lossy().starts_with("hf://") {
                bail!(
                    "--shuffled-labels {}: no such file; give the weights of a run trained on shuffled labels (`allcnn train ... data.shuffle_labels=true`), or leave the flag out to skip the data-randomisation test",
                    p.display()
                );
            }
            let margs = ModelArgs {
                weights: Some(p.clone()),
                offline: args.model.offline,
                model: None,
                classes: None,
                precision: args.model.precision,
            };
            Some(
                // The loader's errors name the file.
                weights::load_like(&margs, model.spec(), &device).context("--shuffled-labels")?,
            )
        }
        None => None,
    };
    let (input, labels, _) = read_input(&args.input, &loaded, &args.model, &device)?;
    // Resolved once on the trained network: every randomised network is
    // asked about the same class or unit.
    let target = args.target.resolve(model, &input, labels.as_ref())?;
    let settings = args.settings.options()?;
    args.settings.warn_unused(&args.methods);
    let layers = model.spec().convs().len();
    let steps = 1 + layers * if args.cascading_only { 1 } else { 2 } + shuffled.is_some() as usize;
    let bar = crate::progress::bar(steps as u64, "networks");
    let report = SanityCheck::new(model, &args.methods)
        .options(settings.clone())
        .seed(args.randomization_seed)
        .threshold(args.threshold)
        .independent(!args.cascading_only)
        .run(
            &input,
            &target,
            shuffled.as_ref().map(|l| &l.file.model),
            &mut |done, _| bar.set_position(done as u64),
        )?;
    bar.finish_and_clear();

    let mut faithfulness = Vec::new();
    if matches!(target, Target::Class(_) | Target::PerImage(_)) {
        let di = DeletionInsertion::new(model)
            .steps(args.deletion_steps as usize)
            .baseline(settings.baseline);
        let bar = crate::progress::bar(args.methods.len() as u64 + 1, "deletion/insertion");
        // The trained network's maps, as the sanity check computed them.
        for (m, map) in &report.trained_maps {
            faithfulness.push(summary(m.name(), &di.curves(&input, map, &target)?));
            bar.inc(1);
        }
        faithfulness.push(summary(
            "random ranking",
            &di.random_curves(&input, &target, args.randomization_seed)?,
        ));
        bar.finish_and_clear();
    } else {
        eprintln!("note: the faithfulness curves follow a class probability; skipped for a hidden-unit target");
    }

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let figure = args.out.join("sanity-cascade.png");
    render::write_png(
        &render::sanity_grid(&report, &options(&args.common))?,
        &figure,
    )?;
    let mut files = vec![figure];
    if !faithfulness.is_empty() {
        let series = |deletion: bool| -> Vec<render::Curve> {
            faithfulness
                .iter()
                .map(|f| {
                    let (auc, curve) = if deletion {
                        (f.deletion_auc, &f.deletion_curve)
                    } else {
                        (f.insertion_auc, &f.insertion_curve)
                    };
                    (format!("{} (AUC {auc:.3})", f.method), curve.clone())
                })
                .collect()
        };
        let svg = curves_svg(
            &format!(
                "{}: class probability as pixels are deleted / inserted",
                loaded.file.model.spec().name
            ),
            "fraction of pixels",
            &[
                ("deletion (lower is better)".into(), series(true)),
                ("insertion (higher is better)".into(), series(false)),
            ],
        )?;
        let path = args.out.join("faithfulness.svg");
        allcnn_models::write_atomic(&path, svg.as_bytes())?;
        files.push(path);
    }
    let json_path = args.out.join("trust.json");
    files.push(json_path.clone());
    let out = Report {
        weights: args.model.label(),
        target: args.target.to_string(),
        images: report.images,
        sanity: &report,
        faithfulness,
        files,
    };
    let json = serde_json::to_string_pretty(&out)?;
    allcnn_models::write_atomic(&json_path, json.as_bytes())?;
    if args.common.json {
        outln!("{json}")?;
        return Ok(());
    }
    print_table(&out, args.threshold)?;
    outln!(
        "wrote {}",
        out.files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    Ok(())
}

fn summary(method: &str, c: &allcnn_viz::Curves) -> Faithfulness {
    let (deletion_curve, insertion_curve) = c.mean_curves();
    Faithfulness {
        method: method.into(),
        deletion_auc: c.deletion_auc(),
        insertion_auc: c.insertion_auc(),
        deletion_curve,
        insertion_curve,
    }
}

fn print_table(r: &Report<'_>, threshold: f32) -> Result<()> {
    outln!(
        "{}, target {}; rank correlation (Spearman, absolute maps) between the trained network's maps and:",
        crate::count(r.images as u64, "image"),
        r.target
    )?;
    outln!(
        "{:<22} {:>9} {:>12} {:>10} {:>8} {:>9} {:>8} {:>9} {:>9}",
        "method",
        "top layer",
        "upper half",
        "all layers",
        "SSIM all",
        "shuffled",
        "verdict",
        "deletion",
        "insertion"
    )?;
    let faith = |m: &str| r.faithfulness.iter().find(|f| f.method == m);
    // NaN: no image could be compared.
    let num = |x: f32| {
        if x.is_finite() {
            format!("{x:.3}")
        } else {
            "-".into()
        }
    };
    for v in &r.sanity.verdicts {
        let f = faith(&v.method);
        outln!(
            "{:<22} {:>9} {:>12} {:>10} {:>8} {:>9} {:>8} {:>9} {:>9}",
            v.method,
            num(v.top_layer_rank_abs),
            num(v.upper_cascade_rank_abs),
            num(v.all_layers_rank_abs),
            num(v.all_layers_ssim),
            v.labels_rank_abs.map_or("-".into(), num),
            match (v.comparable, v.passes) {
                (false, _) => "n/a",
                (true, true) => "pass",
                (true, false) => "FAIL",
            },
            f.map_or("-".into(), |f| format!("{:.3}", f.deletion_auc)),
            f.map_or("-".into(), |f| format!("{:.3}", f.insertion_auc)),
        )?;
    }
    if let Some(f) = faith("random ranking") {
        outln!(
            "{:<22} {:>9} {:>12} {:>10} {:>8} {:>9} {:>8} {:>9.3} {:>9.3}",
            "random ranking",
            "",
            "",
            "",
            "",
            "",
            "",
            f.deletion_auc,
            f.insertion_auc
        )?;
    }
    outln!(
        "pass: mean rank correlation over the upper half of the cascade (the class layer random, then the top 2, ..., half the convolutions) below {threshold}, and against the shuffled-label network; deletion AUC: lower is better, insertion AUC: higher"
    )?;
    // Maps that could not be compared (constant, or not finite) are left
    // out of the means; said, since they change what the means rest on.
    for line in uncompared(&r.sanity.rows, &r.sanity.verdicts, r.images) {
        eprintln!("warning: {line}");
    }
    Ok(())
}

/// The warnings for maps left out of the means: one line per comparison
/// and number of images, naming its methods (not one line per method, and
/// saying where), then one per verdict left with nothing to compare.
fn uncompared(
    rows: &[allcnn_viz::SanityRow],
    verdicts: &[allcnn_viz::Verdict],
    images: usize,
) -> Vec<String> {
    use allcnn_viz::Randomized;
    let mut groups: Vec<(String, usize, Vec<&str>)> = Vec::new();
    for row in rows {
        let skipped = images.saturating_sub(row.similarity.compared);
        if skipped == 0 {
            continue;
        }
        let what = match &row.randomized {
            Randomized::Labels => "against the shuffled-label network".to_string(),
            Randomized::Cascading { top, down_to } => format!(
                "with the top {} random (down to {down_to})",
                crate::count(*top as u64, "convolution")
            ),
            Randomized::Independent { layer } => format!("with {layer} alone random"),
        };
        match groups
            .iter_mut()
            .find(|(w, n, _)| *w == what && *n == skipped)
        {
            Some((_, _, methods)) => methods.push(&row.method),
            None => groups.push((what, skipped, vec![&row.method])),
        }
    }
    let mut lines: Vec<String> = groups
        .into_iter()
        .map(|(what, skipped, methods)| {
            format!(
                "{what}, the maps of {} are constant or not finite on {} (a unit that never fires, a class the randomised network never reaches): there is no ranking to compare, so they are left out of the means",
                methods.join(", "),
                crate::count(skipped as u64, "image")
            )
        })
        .collect();
    lines.extend(verdicts.iter().filter(|v| !v.comparable).map(|v| {
        format!(
            "{}: a comparison its verdict rests on has no image left (above), so the verdict is n/a",
            v.method
        )
    }));
    lines
}

#[cfg(test)]
mod tests {
    use allcnn_viz::{Randomized, SanityRow, Similarity, Verdict};

    fn row(method: &str, randomized: Randomized, compared: usize) -> SanityRow {
        SanityRow {
            method: method.into(),
            randomized,
            similarity: Similarity {
                rank_abs: 0.5,
                rank: 0.5,
                ssim: 0.5,
                compared,
            },
        }
    }

    #[test]
    fn uncompared_maps_are_said_once_per_comparison() {
        let top = |k: usize| Randomized::Cascading {
            top: k,
            down_to: format!("conv{}", 10 - k),
        };
        let rows = [
            row("gradient", top(1), 10),
            row("gradient", Randomized::Labels, 9),
            row("saliency", top(1), 10),
            row("saliency", Randomized::Labels, 9),
            row("grad-cam", top(2), 7),
            row("grad-cam", Randomized::Labels, 0),
        ];
        let verdict = |method: &str, comparable: bool| Verdict {
            method: method.into(),
            top_layer_rank_abs: 0.1,
            all_layers_rank_abs: 0.1,
            upper_cascade_rank_abs: 0.1,
            all_layers_ssim: 0.1,
            labels_rank_abs: None,
            passes: comparable,
            comparable,
        };
        let verdicts = [
            verdict("gradient", true),
            verdict("saliency", true),
            verdict("grad-cam", false),
        ];
        let lines = super::uncompared(&rows, &verdicts, 10);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(
            lines[0].starts_with(
                "against the shuffled-label network, the maps of gradient, saliency are constant or not finite on 1 image"
            ),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("with the top 2 convolutions random (down to conv8), the maps of grad-cam are constant or not finite on 3 images"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].starts_with("against the shuffled-label network, the maps of grad-cam are constant or not finite on 10 images"),
            "{}",
            lines[2]
        );
        assert_eq!(
            lines[3],
            "grad-cam: a comparison its verdict rests on has no image left (above), so the verdict is n/a"
        );
        assert!(super::uncompared(&rows[..1], &verdicts[..1], 10).is_empty());
    }
}
