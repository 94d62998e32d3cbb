//! `allcnn reproduce`: one of the paper's experiments, model by model, with
//! a report beside the paper's numbers (the work is `allcnn_train::reproduce`).

use std::path::PathBuf;

use allcnn_train::{
    reproduce, reproduce::ModelAction, reproduce::ReproduceEvent, reproduce::RowStatus, Experiment,
    ReproduceOptions, Trainer,
};
use anyhow::{bail, Result};

#[derive(clap::Args)]
pub struct Args {
    /// The experiment: table3 (the twelve CIFAR-10 models), cifar10-aug,
    /// cifar100 or imagenet.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(Experiment::names()))]
    experiment: String,
    /// The data set: a CIFAR binary folder or an image folder with train/ and test/.
    #[arg(long)]
    data: PathBuf,
    /// The output folder: OUT/<model>/ per model, OUT/report.md, OUT/report.json, OUT/comparison.svg.
    #[arg(long)]
    out: PathBuf,
    /// Scale the protocol to E epochs (learning-rate drops at the same
    /// fractions of the run); default: the paper's protocol.
    #[arg(long, value_name = "E", value_parser = crate::values::count::<u64>)]
    epochs: Option<u64>,
    /// Train only these rows (comma-separated model names); the report
    /// still lists every row.
    #[arg(long, value_delimiter = ',', value_name = "MODEL,...", value_parser = crate::values::model_name())]
    models: Vec<String>,
    /// When class maps of a row die (any of them, see `dead_patience_steps`), move its run aside
    /// (OUT/<model>.dead-seed-S) and start it again with the next seed, up
    /// to N times; a rerun resumes the retried run.
    #[arg(long, default_value_t = 0, value_name = "N")]
    retries: u32,
    /// Stop after this much wall-clock time, e.g. `2h30m`, `90min`: the
    /// current model's step finishes and is checkpointed, the report is
    /// written, and rerunning the same command resumes.
    #[arg(long, value_name = "DURATION", value_parser = crate::values::duration)]
    time_limit: Option<std::time::Duration>,
    #[command(flatten)]
    device: crate::device::DeviceArg,
    /// Print the final report as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    json: bool,
    /// Config overrides for every model, e.g. lr=0.01 data.train_subset=5000.
    #[arg(value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// The command line as typed, quoted where a shell would need it.
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=./:,+@%".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn hms(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// `; about H:MM:SS left (N models)`: the mean time of the models trained so
/// far in this invocation times the models still to come; empty when none
/// is left or none has been timed yet.
fn eta(trained_secs: &[f64], remaining: usize) -> String {
    if remaining == 0 || trained_secs.is_empty() {
        return String::new();
    }
    let mean = trained_secs.iter().sum::<f64>() / trained_secs.len() as f64;
    format!(
        "; about {} left ({remaining} model{})",
        hms(mean * remaining as f64),
        if remaining == 1 { "" } else { "s" }
    )
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}%"))
}

pub fn run(args: &Args) -> Result<()> {
    let experiment: Experiment = args.experiment.parse()?;
    crate::out::outside_data(&args.out, &args.data)?;
    let mut options = ReproduceOptions::new(experiment, &args.data, &args.out);
    options.epochs = args.epochs;
    options.overrides = args.set.clone();
    options.models = args.models.clone();
    options.command = Some(command_line());
    options.retries = args.retries;
    let device = args.device.open()?;
    let mut builder = Trainer::builder()
        .device(device)
        .interrupt_flag(crate::train::interrupt_flag())
        .console(!args.json);
    if let Some(d) = args.time_limit {
        builder = builder.deadline(std::time::Instant::now() + d);
    }
    let mut trainer = builder.build();

    // When the current model's training started, and how long each model
    // trained in this invocation took: the mean predicts the rest.
    let mut started: Option<std::time::Instant> = None;
    let mut trained_secs: Vec<f64> = Vec::new();
    let report = reproduce(&mut trainer, &options, &mut |e| match e {
        ReproduceEvent::Model {
            index,
            total,
            model,
            action,
        } => {
            let what = match action {
                ModelAction::Skip => "finished earlier, result reused".to_string(),
                ModelAction::Start => {
                    started = Some(std::time::Instant::now());
                    "training".to_string()
                }
                ModelAction::Resume { epoch, step } => {
                    started = Some(std::time::Instant::now());
                    format!("resuming in epoch {} from step {step}", epoch + 1)
                }
                _ => format!("{action:?}"),
            };
            eprintln!("[{index}/{total}] {model}: {what}");
        }
        ReproduceEvent::Row { index, total, row } => {
            if let Some(t) = started.take() {
                trained_secs.push(t.elapsed().as_secs_f64());
            }
            let left = eta(&trained_secs, total.saturating_sub(*index));
            if row.status == RowStatus::Failed {
                eprintln!(
                    "[{index}/{total}] {}: failed: {}{left}",
                    row.model,
                    row.error.as_deref().unwrap_or("unknown error")
                );
            } else {
                eprintln!(
                    "[{index}/{total}] {}: {}, test error {} (paper {:.2}%), {}/{} epochs, wall {}{left}",
                    row.model,
                    row.status.as_str(),
                    pct(row.test_error),
                    row.paper_error,
                    row.epochs_done,
                    row.epochs,
                    hms(row.wall_seconds)
                );
            }
        }
        ReproduceEvent::FittingPreprocessing => {
            eprintln!("fitting the preprocessing on the training split (shared by the models)");
        }
        ReproduceEvent::Warning(w) => eprintln!("warning: {w}"),
        _ => {}
    })
    .map_err(|e| match e {
        // Said in the flag's words: the library names its option's field.
        allcnn_train::TrainError::InvalidConfig {
            field: "models",
            value,
            reason,
        } => crate::Usage(format!("--models {value}: {reason}")).into(),
        // Its error is on the row's `failed:` line just above: not again.
        allcnn_train::TrainError::ReproduceModel { model, run_dir, .. } => anyhow::anyhow!(
            "reproduce stopped at {model} (run directory {}): its error is the line above; the report has the rows so far",
            run_dir.display()
        ),
        e => anyhow::Error::from(e),
    })?;

    let md = args.out.join(allcnn_train::reproduce::REPORT_MARKDOWN);
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        outln!(
            "{}: {} on {} ({})",
            report.title,
            report.protocol,
            report.device,
            report.host.cpu
        )?;
        // The model column as wide as its longest label (the ImageNet
        // row's ran past a fixed 34).
        let name = |r: &allcnn_train::reproduce::ReportRow| format!("{} ({})", r.label, r.model);
        let w = report
            .rows
            .iter()
            .map(|r| name(r).chars().count())
            .max()
            .unwrap_or(0)
            .max(34);
        outln!(
            "{:<w$} {:>8} {:>8} {:>7}  status",
            "model",
            "paper",
            "ours",
            "epochs"
        )?;
        for r in &report.rows {
            outln!(
                "{:<w$} {:>8} {:>8} {:>7}  {}",
                name(r),
                format!("{:.2}%", r.paper_error),
                pct(r.test_error),
                format!("{}/{}", r.epochs_done, r.epochs),
                r.status.as_str()
            )?;
        }
        outln!("report: {} (and report.json)", md.display())?;
    }
    let failed = report.failed();
    if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|r| r.model.as_str()).collect();
        bail!(
            "{} model(s) failed ({}); see {}",
            failed.len(),
            names.join(", "),
            md.display()
        );
    }
    if report.interrupted {
        let why = crate::Stopped::of(&trainer);
        eprintln!(
            "{why}: the current model has a checkpoint; rerun the same command to resume it and the rows after it (`allcnn train --resume` above resumes that model alone, outside the report)"
        );
        return Err(why.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::eta;

    #[test]
    fn eta_is_the_mean_model_time_times_the_models_left() {
        assert_eq!(eta(&[], 3), "");
        assert_eq!(eta(&[100.0], 0), "");
        // Mean 90 s, 40 models left: one hour.
        assert_eq!(eta(&[60.0, 120.0], 40), "; about 1:00:00 left (40 models)");
        assert_eq!(eta(&[61.0], 1), "; about 0:01:01 left (1 model)");
    }
}
