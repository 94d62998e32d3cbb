//! `allcnn train` and `allcnn eval`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use allcnn_data::{Augmentation, OpenOptions};
use allcnn_train::{
    eval::evaluate_weights_file, grid_search, ResumeChanges, RunStatus, TrainConfig, TrainData,
    Trainer,
};
use anyhow::{bail, Context, Result};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// A named preset (see --print-config).
    #[arg(long, conflicts_with = "resume", value_parser = crate::values::preset_name())]
    preset: Option<String>,
    /// A config file (TOML or JSON), e.g. an edited copy of a preset; with
    /// --preset, only the fields it gives replace the preset's.
    #[arg(long, conflicts_with = "resume")]
    config: Option<PathBuf>,
    /// Continue the run in this directory exactly where it stopped.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// The run's length in epochs (as `epochs=N`). With --resume: change
    /// the run's length, to end it sooner or to continue a finished run (the
    /// lr follows the schedule of the new length; multi-step milestones
    /// stay put).
    #[arg(long, value_parser = crate::values::count::<u64>)]
    epochs: Option<u64>,
    /// Architecture (overrides the config's `model`, and its custom `spec` if it has one).
    #[arg(long, value_parser = crate::values::model_name())]
    model: Option<String>,
    /// The data set: a CIFAR binary folder or an image folder with train/ and test/. With --resume: where the run's data are now, if they moved (checked to be the same data).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Precision of the convolution GEMMs on CPU (overrides the config's
    /// `precision`): `f32`, `bf16` (bf16 operands, f32 accumulation) or
    /// `auto` (what runs fastest on this kind of CPU: bf16 with AMX or on
    /// AMD's AVX-512 BF16, `winograd-f4` on AVX2 CPUs without AVX-512, f32
    /// elsewhere). With --resume: the run goes on at this precision (its steps then
    /// differ from an unchanged run's by the rounding).
    #[arg(long, value_parser = crate::values::precision(), conflicts_with = "conv")]
    precision: Option<allcnn_models::Precision>,
    /// CPU convolution backend, the expert override of --precision (as
    /// `conv=NAME`): `winograd` (what `f32` runs), `winograd-bf16` (what
    /// `bf16` runs), `winograd-f4` (f32 with Winograd F(4x4,3x3) on maps
    /// larger than 6x6: faster on CPUs without fast bf16, about 1e-5
    /// relative rounding), `gemm` or `candle`. With --resume: the run goes
    /// on with this backend.
    #[arg(long, value_parser = crate::values::conv_backend())]
    conv: Option<allcnn_models::ConvBackend>,
    /// The run directory to create (must not hold a run already).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run the learning-rate grid search (config `lr_grid`, or --lrs) on a
    /// held-out validation split instead of one training run.
    #[arg(long)]
    grid: bool,
    /// Learning rates for --grid, comma-separated.
    #[arg(long, value_delimiter = ',')]
    lrs: Vec<f64>,
    /// Print the resolved config as TOML (JSON with --json) and exit (a starting point for --config).
    #[arg(long)]
    print_config: bool,
    /// Stop the run when a class map (or every one) gave 0 on all its
    /// images for this many consecutive steps (as `dead_patience_steps=N`;
    /// 0: never stop, only report maps silent for a whole epoch). With
    /// --resume: the watch waits this long from here on (the steps stay the
    /// same; with augmentation a silent map can come back).
    #[arg(long, value_name = "STEPS")]
    dead_patience: Option<u64>,
    /// When class maps die (any of them; the paper's start is fragile: see
    /// `dead_patience_steps`), move the dead run to OUT.dead-seed-S and start
    /// again with the next seed, up to this many times.
    #[arg(long, default_value_t = 0, conflicts_with_all = ["grid", "resume"])]
    retries: u32,
    /// Stop after this much wall-clock time, e.g. `2h30m`, `90min`, `45s`
    /// (for jobs and machines with a time limit): the current step
    /// finishes, a checkpoint is written, and `allcnn train --resume OUT`
    /// continues exactly where it stopped. Counts from the start of the
    /// command, retries included.
    #[arg(long, value_name = "DURATION", value_parser = crate::values::duration)]
    time_limit: Option<std::time::Duration>,
    #[command(flatten)]
    device: crate::device::DeviceArg,
    /// Print the run's summary (or the grid's report) as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Any config field as key=value, e.g. epochs=10 lr=0.01 data.train_subset=5000.
    #[arg(value_name = "KEY=VALUE")]
    set: Vec<String>,
}

pub(crate) fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let already = Arc::new(AtomicBool::new(false));
    let result = ctrlc::set_handler(move || {
        // SIGINT (Ctrl-C), SIGTERM (`timeout`, Slurm, `docker stop`,
        // systemd) and SIGHUP (a closed terminal) alike.
        if already.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupted (Ctrl-C or a termination signal): finishing the current step and writing a checkpoint (interrupt again to abort)"
        );
        f.store(true, Ordering::SeqCst);
    });
    if let Err(e) = result {
        eprintln!("warning: cannot catch Ctrl-C or SIGTERM ({e}); an interrupted run resumes from its last checkpoint");
    }
    flag
}

fn trainer(device: &crate::device::DeviceArg, deadline: Option<Instant>) -> Result<Trainer> {
    let device = device.open()?;
    let mut b = Trainer::builder()
        .device(device)
        .interrupt_flag(interrupt_flag());
    if let Some(at) = deadline {
        b = b.deadline(at);
    }
    Ok(b.build())
}

/// Whether one of the KEY=VALUE overrides sets `key`.
fn sets(overrides: &[String], key: &str) -> bool {
    overrides.iter().any(|kv| {
        kv.trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with('='))
    })
}

pub fn run_train(args: &TrainArgs) -> Result<()> {
    let deadline = args.time_limit.map(|d| Instant::now() + d);
    if let Some(run_dir) = &args.resume {
        if args.out.is_some()
            || args.model.is_some()
            || args.grid
            || !args.lrs.is_empty()
            || args.print_config
            || !args.set.is_empty()
        {
            usage!("--resume continues a run with its own config (only --epochs, --precision, --conv, --dead-patience and, for data that moved, --data may change); drop --out/--model/--grid/--lrs/--print-config/KEY=VALUE");
        }
        let mut t = trainer(&args.device, deadline)?;
        let mut changes = ResumeChanges::new();
        if let Some(epochs) = args.epochs {
            changes = changes.epochs(epochs);
        }
        if let Some(p) = args.precision {
            changes = changes.precision(p);
        }
        if let Some(c) = args.conv {
            changes = changes.conv(c);
        }
        if let Some(p) = args.dead_patience {
            changes = changes.dead_patience_steps(p);
        }
        if let Some(d) = &args.data {
            // Recorded absolute, as a new run's.
            let abs =
                std::path::absolute(d).with_context(|| format!("resolving {}", d.display()))?;
            changes = changes.data(abs);
        }
        let summary = t.resume_with(run_dir, None, &changes)?;
        return report(&summary, args.json);
    }
    if let Some(c) = args.config.as_ref().filter(|c| !c.is_file()) {
        let what = if c.exists() {
            "not a file"
        } else {
            "no such file"
        };
        bail!(
            "--config {}: {what}; write one to edit with `allcnn train --preset cifar10 --print-config > my.toml`",
            c.display()
        );
    }
    let mut config = match (&args.preset, &args.config) {
        (Some(p), None) => TrainConfig::preset(p)?,
        (None, Some(c)) => TrainConfig::from_file(c)?,
        (None, None) => usage!(
            "say what to train: --preset ({}) or --config FILE",
            TrainConfig::preset_names().join(", ")
        ),
        (Some(p), Some(c)) => TrainConfig::preset(p)?.overlaid_with_file(c)?,
    };
    if let Some(m) = &args.model {
        // The command line's architecture wins over the config's custom
        // one too (it was ignored, and config.toml then named --model).
        if let Some(spec) = config.spec.take() {
            eprintln!(
                "note: --model {m} replaces the config's custom architecture `{}` (its `spec`)",
                spec.name
            );
        }
        config.model = m.clone();
    }
    if let Some(e) = args.epochs {
        if sets(&args.set, "epochs") {
            usage!("--epochs {e} and epochs=... both set the run's length; give one");
        }
        config.epochs = e;
    }
    if let Some(d) = &args.data {
        config.data.path = Some(d.clone());
    }
    if let Some(p) = args.precision {
        config.precision = p;
    }
    if let Some(c) = args.conv {
        config.conv = c;
    }
    if let Some(p) = args.dead_patience {
        if sets(&args.set, "dead_patience_steps") {
            usage!("--dead-patience {p} and dead_patience_steps=... both set the watch's patience; give one");
        }
        config.dead_patience_steps = p;
    }
    config.apply_overrides(&args.set)?;
    config.validate()?;
    let drops = config.schedule.milestone_epochs(config.epochs);
    if drops
        .iter()
        .min()
        .is_some_and(|&first| first >= config.epochs)
    {
        eprintln!(
            "warning: the learning rate never drops in this run: the schedule's first drop is at epoch {} of a {}-epoch run; `schedule.kind=scaled` puts the paper's drops inside a shorter run",
            drops.iter().min().copied().unwrap_or_default(),
            config.epochs
        );
    }
    if !args.lrs.is_empty() && !args.grid {
        usage!("--lrs sets the learning rates of --grid; add --grid or set one rate with lr=VALUE");
    }
    if args.print_config {
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&config)?)?;
        } else {
            out!("{}", config.to_toml())?;
        }
        return Ok(());
    }
    // Recorded absolute, so `--resume` finds the same data from anywhere.
    if let Some(p) = &config.data.path {
        let abs = std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))?;
        config.data.path = Some(abs);
    }
    let Some(data_path) = config.data.path.clone() else {
        usage!("no data: pass --data DIR (a CIFAR binary folder or an image folder with train/ and test/)");
    };
    let Some(out) = &args.out else {
        usage!("no run directory: pass --out RUN");
    };
    crate::out::outside_data(out, &data_path)?;
    // Said before the data are read (seconds to minutes).
    if !args.grid {
        allcnn_train::trainer::refuse_run_dir_in_use(out)?;
    }
    // The data errors name the path themselves.
    let mut data = TrainData::open(&data_path, &config.data, config.seed)?;
    let mut t = trainer(&args.device, deadline)?;
    crate::device::warn_if_bf16_is_emulated(config.conv_backend(), t.device());
    if args.grid {
        let g = grid_search(&mut t, &config, &data, &args.lrs, out)?;
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&g)?)?;
        } else {
            print_grid(&g)?;
        }
        if g.interrupted {
            return Err(crate::Stopped::of(&t).into());
        }
        return Ok(());
    }
    let mut attempt = 0;
    loop {
        match t.train(&config, &data, out) {
            Err(allcnn_train::TrainError::DeadClassMaps { since, classes, .. })
                if attempt < args.retries =>
            {
                let graveyard = allcnn_train::dead_run_dir(out, config.seed);
                std::fs::rename(out, &graveyard)
                    .with_context(|| format!("moving the dead run {} aside", out.display()))?;
                eprintln!(
                    "warning: {} died from step {since} with seed {}; the run is \
                     kept in {}. Retrying with seed {} ({} of {} retries)",
                    allcnn_train::trainer::dead_maps_subject(&classes),
                    config.seed,
                    graveyard.display(),
                    config.seed + 1,
                    attempt + 1,
                    args.retries
                );
                config.seed += 1;
                attempt += 1;
                // Subsets, the validation hold-out and shuffled labels are
                // drawn from the seed: the retry's data are the ones its
                // `--resume` will open.
                data = TrainData::open(&data_path, &config.data, config.seed)?;
            }
            result => return report(&result?, args.json),
        }
    }
}

fn print_grid(g: &allcnn_train::grid::GridReport) -> Result<()> {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}%", 100.0 * v));
    let num = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    outln!(
        "{:>10}  {:>9}  {:>8}  {:>10}  run",
        "lr",
        "val top-1",
        "val loss",
        "train loss"
    )?;
    for r in &g.results {
        let best = if Some(r.lr) == g.best_lr {
            "  (best)"
        } else {
            ""
        };
        outln!(
            "{:>10}  {:>9}  {:>8}  {:>10}  {}{best}{}",
            r.lr,
            pct(r.val_accuracy),
            num(r.val_loss),
            num(r.train_loss),
            r.run_dir.display(),
            r.failure
                .as_ref()
                .map(|f| { format!("  {}{f}", if r.stopped { "" } else { "failed: " }) })
                .unwrap_or_default()
        )?;
    }
    if g.interrupted {
        let untried: Vec<String> = g.untried.iter().map(f64::to_string).collect();
        outln!(
            "stopped during lr {}{}: run the same command again to go on",
            g.results.iter().find(|r| r.stopped).map_or(0.0, |r| r.lr),
            if untried.is_empty() {
                String::new()
            } else {
                format!(" (not tried yet: {})", untried.join(", "))
            }
        )?;
    }
    Ok(())
}

/// Prints the run's summary; a run stopped before its end (Ctrl-C,
/// `--time-limit`) returns [`crate::Stopped`] for the exit status.
fn report(s: &allcnn_train::RunSummary, json: bool) -> Result<()> {
    let stopped = match s.status {
        RunStatus::Interrupted => Some(crate::Stopped::Interrupted),
        RunStatus::TimeLimit => Some(crate::Stopped::TimeLimit),
        RunStatus::Completed | RunStatus::StepBudget => None,
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(s)?)?;
    } else {
        print_summary(s, stopped)?;
    }
    stopped.map_or(Ok(()), |why| Err(why.into()))
}

fn print_summary(s: &allcnn_train::RunSummary, stopped: Option<crate::Stopped>) -> Result<()> {
    match stopped {
        Some(why) => {
            // The trainer's console has printed how to resume (stderr);
            // this is the one summary line on stdout.
            outln!(
                "{why} after {}; checkpoint {}",
                crate::count(s.steps, "step"),
                s.checkpoint.display(),
            )?;
        }
        None => {
            let how = if s.status == RunStatus::Completed {
                "finished"
            } else {
                "stopped at max_steps"
            };
            outln!(
                "{how}: {}, {} in {}",
                crate::count(s.epochs_done, "epoch"),
                crate::count(s.steps, "step"),
                s.run_dir.display()
            )?;
            if let Some(t) = &s.test {
                outln!(
                    "test: top-1 {:.2}% (error {:.2}%), top-5 {:.2}%, loss {:.4} on {}",
                    100.0 * t.top1,
                    t.error_percent(),
                    100.0 * t.top5,
                    t.loss,
                    crate::count(t.examples, "image")
                )?;
            }
            if let Some(w) = &s.best_weights {
                outln!("best weights: {}", w.display())?;
            }
            if let Some(w) = &s.final_weights {
                outln!("final weights: {}", w.display())?;
            }
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: crate::weights::ModelArgs,
    /// The data set to evaluate on.
    #[arg(long)]
    data: PathBuf,
    /// Which split to evaluate.
    #[arg(long, value_enum, default_value_t = crate::values::SplitArg::Test)]
    split: crate::values::SplitArg,
    /// Batch size.
    #[arg(long, default_value_t = 256, value_parser = crate::values::count::<usize>)]
    batch: usize,
    /// ImageNet-style evaluation: resize the shorter side to 256 and centre-crop 224.
    #[arg(long)]
    center_crop: bool,
    /// Print JSON with per-class accuracy and the confusion matrix.
    #[arg(long)]
    json: bool,
    /// Leave out images of an image folder that cannot be decoded (each
    /// named in a warning) instead of stopping at the first.
    #[arg(long)]
    skip_bad_images: bool,
    #[command(flatten)]
    device: crate::device::DeviceArg,
}

pub fn run_eval(args: &EvalArgs) -> Result<()> {
    let device = args.device.open()?;
    let mut opts = OpenOptions::default();
    if args.skip_bad_images {
        opts.folder.on_error = allcnn_data::folder::OnError::Skip;
    }
    let data = crate::data::open_split(&args.data, args.split, &opts, true)?;
    let (format, dir) = allcnn_data::info::detect_format(&args.data)?;
    if format == allcnn_data::info::DatasetFormat::ImageFolder
        && !allcnn_data::folder::has_split_folders(&dir)
    {
        // Which split these images are is the user's to know: say that
        // --split did not choose them.
        let split = match args.split {
            crate::values::SplitArg::Train => "train",
            crate::values::SplitArg::Test => "test",
        };
        eprintln!(
            "warning: {} has no train/, test/ or val/ folders: evaluating all its {} (--split {split} does not apply)",
            args.data.display(),
            crate::count(data.len() as u64, "image"),
        );
    }
    let loaded = crate::weights::load(&args.model, &device)?;
    let input = loaded.file.model.spec().input_size;
    let aug = if args.center_crop {
        if let Augmentation::CenterCrop { crop, .. } = Augmentation::imagenet_eval() {
            if input != crop {
                bail!(
                    "--center-crop is ImageNet's evaluation (shorter side resized to 256, centre crop of {crop}) for {crop}-px models; the model of {} takes {input}x{input} images: leave out --center-crop",
                    args.model.label()
                );
            }
        }
        Augmentation::imagenet_eval()
    } else {
        Augmentation::None
    };
    let bar = crate::progress::bar(data.len() as u64, "evaluating");
    let skipped = data.skipped().to_vec();
    let r = evaluate_weights_file(
        &loaded.file,
        &args.model.label(),
        data,
        args.batch,
        aug,
        &device,
        &mut |done| bar.set_position(done),
    )
    .map_err(|e| match e {
        // Name the data that does not fit (the library knows only the weights).
        allcnn_train::TrainError::DataMismatch { reason } => {
            anyhow::anyhow!("--data {}: {reason}", args.data.display())
        }
        e => e.into(),
    })?;
    bar.finish_and_clear();
    if args.json {
        let mut v = serde_json::to_value(&r)?;
        // The images --skip-bad-images left out, which the figures do not
        // count (only stderr said so).
        if let Some(obj) = v.as_object_mut().filter(|_| !skipped.is_empty()) {
            let skipped: Vec<serde_json::Value> = skipped
                .iter()
                .map(|(p, why)| serde_json::json!({ "path": p, "reason": why }))
                .collect();
            obj.insert("skipped".into(), skipped.into());
        }
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    outln!(
        "{}: top-1 {:.2}% (error {:.2}%), top-5 {:.2}%, loss {:.4}",
        crate::count(r.examples, "image"),
        100.0 * r.top1,
        r.error_percent(),
        100.0 * r.top5,
        r.loss
    )?;
    outln!("{:>14}  {:>7}  {:>8}", "class", "images", "accuracy")?;
    for c in &r.per_class {
        outln!(
            "{:>14}  {:>7}  {:>7.2}%",
            crate::printable_name(&c.name),
            c.count,
            100.0 * c.accuracy
        )?;
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct PlotArgs {
    /// The run directory (written by `allcnn train --out RUN`).
    run: PathBuf,
    /// Draw the loss on a log axis (the trainer does once it spans a decade).
    #[arg(long)]
    log_loss: bool,
    /// Where to write learning-curve.svg and metrics.csv [default: RUN].
    #[arg(long)]
    out: Option<PathBuf>,
    /// The figure's title [default: the model and the run directory].
    #[arg(long)]
    title: Option<String>,
}

/// Redraws a run's learning curves and metrics.csv from its metrics.jsonl.
pub fn run_plot(args: &PlotArgs) -> Result<()> {
    let metrics = args.run.join(allcnn_train::files::METRICS);
    if !metrics.is_file() {
        bail!(
            "{}: no {} here: not a run directory written by `allcnn train --out`",
            args.run.display(),
            allcnn_train::files::METRICS
        );
    }
    let log = allcnn_train::observer::MetricsLog::read_epochs(&metrics)?;
    if !log.unreadable_lines.is_empty() {
        let lines: Vec<String> = log.unreadable_lines.iter().map(|n| n.to_string()).collect();
        eprintln!(
            "warning: {}: line(s) {} are damaged (not a record) and left out: an epoch on them is missing from the figures",
            metrics.display(),
            lines.join(", ")
        );
    }
    let history = log.epochs;
    if history.is_empty() {
        bail!(
            "{}: no finished epoch yet: nothing to plot",
            metrics.display()
        );
    }
    let model = allcnn_train::trainer::read_run_config(&args.run)
        .ok()
        .and_then(|c| c.spec.map(|s| s.name).or(Some(c.model)))
        .unwrap_or_default();
    let title = args
        .title
        .clone()
        .unwrap_or_else(|| format!("{model} ({})", args.run.display()));
    let out = args.out.as_ref().unwrap_or(&args.run);
    let own = crate::out::same_folder(out, &args.run);
    if args.out.is_some() {
        crate::out::check(
            out,
            crate::out::OutKind::Folder("a folder for the figure and the table"),
            [],
        )?;
        // Another run's figure and table are its own (they were replaced).
        if !own && out.join(allcnn_train::files::METRICS).is_file() {
            bail!(
                "--out {}: holds another run (its {}), whose figure and table this would replace; choose another folder",
                out.display(),
                allcnn_train::files::METRICS
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create it", out.display()))?;
    let svg = out.join(allcnn_train::files::PLOT);
    let csv = out.join(allcnn_train::files::CSV);
    let figure = allcnn_train::plot::learning_curve_svg(&history, &title, args.log_loss)?;
    allcnn_models::write_atomic(&svg, figure.as_bytes())?;
    // The run's own table, written by the trainer, may hold the epochs of
    // the damaged lines: it is not replaced by a shorter one.
    if own && !log.unreadable_lines.is_empty() && csv.is_file() {
        outln!(
            "{}: wrote {}; {} left as it was (it may hold the epochs of the damaged lines)",
            crate::count(history.len() as u64, "epoch"),
            svg.display(),
            csv.display()
        )?;
        return Ok(());
    }
    allcnn_models::write_atomic(&csv, allcnn_train::plot::metrics_csv(&history).as_bytes())?;
    outln!(
        "{}: wrote {} and {}",
        crate::count(history.len() as u64, "epoch"),
        svg.display(),
        csv.display()
    )?;
    Ok(())
}
