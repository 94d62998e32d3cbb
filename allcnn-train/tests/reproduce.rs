//! `reproduce`: all twelve Table 3 models on a tiny CIFAR-10 folder, the
//! reports, skipping finished models, resuming an interrupted one, and the
//! errors.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use allcnn_train::{
    files, observer::RunInfo, observer::StepEvent, reproduce, reproduce::ModelAction,
    reproduce::ReproduceEvent, reproduce::RowStatus, reproduce::REPORT_FIGURE,
    reproduce::REPORT_JSON, reproduce::REPORT_MARKDOWN, EvalReport, Experiment, Observer,
    ReproduceOptions, ReproduceReport, TrainError, Trainer,
};

/// A CIFAR-10 binary folder: 2 images per training batch file (10 in all)
/// and 6 test images, each record a label byte and 3x32x32 pixel bytes.
fn tiny_cifar10(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let record = |label: u8, seed: u8| {
        let mut r = vec![label];
        r.extend((0..3072u32).map(|i| (i as u8).wrapping_mul(seed).wrapping_add(label * 25)));
        r
    };
    for b in 1..=5u8 {
        let mut bytes = record(b % 10, b);
        bytes.extend(record((b + 5) % 10, b + 7));
        std::fs::write(dir.join(format!("data_batch_{b}.bin")), bytes).unwrap();
    }
    let test: Vec<u8> = (0..6u8).flat_map(|i| record(i, i + 3)).collect();
    std::fs::write(dir.join("test_batch.bin"), test).unwrap();
}

/// Sets the interrupt flag after the first step of one model (as Ctrl-C).
struct InterruptAt {
    model: String,
    current: String,
    flag: Arc<AtomicBool>,
    /// report.md as it reads while `model` trains.
    report: PathBuf,
    seen: Arc<std::sync::Mutex<String>>,
}

impl Observer for InterruptAt {
    fn on_start(&mut self, info: &RunInfo) {
        self.current = info.model.clone();
    }
    fn on_step(&mut self, e: &StepEvent) {
        if self.current == self.model && e.step == 1 {
            *self.seen.lock().unwrap() = std::fs::read_to_string(&self.report).unwrap();
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}

fn options(data: &Path, out: &Path) -> ReproduceOptions {
    let mut o = ReproduceOptions::new(Experiment::Table3, data, out);
    o.epochs = Some(1);
    o.overrides = [
        "batch_size=4",
        "eval_batch_size=8",
        "data.preprocessing=standardize",
        "data.workers=1",
    ]
    .map(String::from)
    .to_vec();
    o
}

/// Runs `reproduce`, collecting the model actions and counting the
/// preprocessing fits.
fn run(
    trainer: &mut Trainer,
    o: &ReproduceOptions,
) -> (
    Result<ReproduceReport, TrainError>,
    Vec<(String, ModelAction)>,
    usize,
) {
    let mut actions = Vec::new();
    let mut fits = 0;
    let r = reproduce(trainer, o, &mut |e| match e {
        ReproduceEvent::Model { model, action, .. } => actions.push((model.to_string(), *action)),
        ReproduceEvent::FittingPreprocessing => fits += 1,
        _ => {}
    });
    (r, actions, fits)
}

/// Equal up to JSON's float round trip (serde_json may be 1 ulp off).
fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
        _ => false,
    }
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn table3_runs_every_model_reports_skips_and_resumes() {
    let t0 = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cifar-10-batches-bin");
    tiny_cifar10(&data);
    let out = dir.path().join("table3");
    let o = options(&data, &out);

    // Session 1: Ctrl-C during the fifth model (Model B) after one step.
    let flag = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let mut trainer = Trainer::builder()
        .console(false)
        .interrupt_flag(flag.clone())
        .observer(Box::new(InterruptAt {
            model: "model-b".into(),
            current: String::new(),
            flag,
            report: out.join(REPORT_MARKDOWN),
            seen: seen.clone(),
        }))
        .build();
    let (r, actions, fits) = run(&mut trainer, &o);
    let report = r.unwrap();
    assert_eq!(fits, 1, "the preprocessing is fitted once and shared");
    assert_eq!(actions.len(), 5, "{actions:?}");
    assert!(actions.iter().all(|(_, a)| *a == ModelAction::Start));
    assert!(report.interrupted);
    // While Model B trained, the report said so, and what a row left so
    // means (a process killed without a word).
    let mid = seen.lock().unwrap().clone();
    assert!(
        mid.contains("- status: 4 of 12 rows done, 1 running")
            && mid.contains("a row still `running` when no `allcnn reproduce` is at work was stopped without a word"),
        "{mid}"
    );
    let statuses: Vec<RowStatus> = report.rows.iter().map(|r| r.status).collect();
    assert_eq!(&statuses[..4], &[RowStatus::Done; 4]);
    assert_eq!(statuses[4], RowStatus::Interrupted);
    assert!(
        statuses[5..].iter().all(|s| *s == RowStatus::NotRun),
        "{statuses:?}"
    );
    assert_eq!(report.rows[4].steps, 1);
    assert!(!out.join("model-b").join(files::FINAL).exists());
    let on_disk = ReproduceReport::read(&out.join(REPORT_JSON)).unwrap();
    assert_eq!(on_disk.rows.len(), Experiment::Table3.rows().len());
    for (a, b) in on_disk.rows.iter().zip(&report.rows) {
        assert_eq!((&a.model, a.status, a.steps), (&b.model, b.status, b.steps));
        assert!(a.test_error == b.test_error || close(a.test_error, b.test_error));
    }
    let md = std::fs::read_to_string(out.join(REPORT_MARKDOWN)).unwrap();
    assert!(
        md.contains("interrupted (resumable)") && md.contains("not run"),
        "{md}"
    );
    // Every linked run folder exists (rows not run link nothing).
    for line in md.lines().filter(|l| l.contains("([config](")) {
        let dir = line.split("](").nth(1).unwrap().split('/').next().unwrap();
        assert!(out.join(dir).is_dir(), "dead link in: {line}");
    }
    // The figure: every model by its paper name, a point for ours where
    // evaluated (and one in the legend).
    let svg = std::fs::read_to_string(out.join(REPORT_FIGURE)).unwrap();
    for row in &report.rows {
        assert!(svg.contains(&row.label), "no {} in the figure", row.label);
    }
    let evaluated = report
        .rows
        .iter()
        .filter(|r| r.test_error.is_some())
        .count();
    assert!(evaluated >= 1);
    assert_eq!(svg.matches("<circle").count(), evaluated + 1, "{svg}");
    assert!(svg.contains("test error (%)"));
    let model_a_final = out.join("model-a").join(files::FINAL);
    let stamp = mtime(&model_a_final);

    // Session 2: the four finished models are skipped, Model B resumes
    // from its checkpoint, the other seven start.
    let mut trainer = Trainer::builder().console(false).build();
    let (r, actions, fits) = run(&mut trainer, &o);
    let report = r.unwrap();
    assert_eq!(actions.len(), Experiment::Table3.rows().len());
    for (model, action) in &actions[..4] {
        assert_eq!(*action, ModelAction::Skip, "{model}");
    }
    assert_eq!(
        actions[4],
        (
            "model-b".to_string(),
            ModelAction::Resume { epoch: 0, step: 1 }
        )
    );
    assert!(actions[5..].iter().all(|(_, a)| *a == ModelAction::Start));
    assert_eq!(fits, 1);
    assert!(report.is_complete() && !report.interrupted);
    assert_eq!(
        mtime(&model_a_final),
        stamp,
        "a finished model was retrained"
    );

    // Every row: the paper's error and ours, equal to the run's eval.json.
    let registry = allcnn_models::registry();
    assert_eq!(report.rows.len(), Experiment::Table3.rows().len());
    for (row, info) in report.rows.iter().zip(registry) {
        assert_eq!(row.model, info.name);
        let paper = f64::from(info.paper_error.unwrap());
        assert!((row.paper_error - paper).abs() < 1e-4, "{}", row.model);
        let eval_path = out.join(&row.model).join(files::EVAL);
        let eval: EvalReport =
            serde_json::from_str(&std::fs::read_to_string(&eval_path).unwrap()).unwrap();
        assert!(
            close(row.test_error, Some(100.0 * (1.0 - eval.top1))),
            "{}: {:?} vs top-1 {}",
            row.model,
            row.test_error,
            eval.top1
        );
        assert_eq!(row.test_examples, Some(6));
        assert_eq!(row.status, RowStatus::Done);
        assert_eq!((row.epochs_done, row.epochs, row.steps), (1, 1, 2));
        assert_eq!(row.config.model, row.model);
        assert_eq!(row.config.batch_size, 4);
        assert!(out.join(&row.config_file).is_file());
        assert!(row.wall_seconds > 0.0 && row.train_seconds > 0.0);
    }
    assert_eq!(report.device, "cpu");
    assert!(report.host.threads >= 1);
    assert_eq!(report.overrides, o.overrides);
    let md = std::fs::read_to_string(out.join(REPORT_MARKDOWN)).unwrap();
    for row in &report.rows {
        let line = md
            .lines()
            .find(|l| l.starts_with(&format!("| {} (`{}`)", row.label, row.model)))
            .unwrap_or_else(|| panic!("no row for {} in\n{md}", row.model));
        assert!(line.contains(&format!("{:.2}%", row.paper_error)), "{line}");
        assert!(
            line.contains(&format!("{:.2}%", row.test_error.unwrap())),
            "{line}"
        );
        assert!(line.contains("| done |"), "{line}");
    }
    assert!(md.contains("batch_size = 4"), "{md}");

    // Session 3: nothing left to train.
    let (r, actions, fits) = run(&mut trainer, &o);
    let again = r.unwrap();
    assert!(actions.iter().all(|(_, a)| *a == ModelAction::Skip));
    assert_eq!(fits, 0);
    for (a, b) in again.rows.iter().zip(&report.rows) {
        assert_eq!(a.status, b.status);
        assert!(close(a.test_error, b.test_error));
        assert!(
            close(Some(a.wall_seconds), Some(b.wall_seconds)),
            "carried from report.json"
        );
    }

    // Other settings into the same folder are refused, naming the run.
    let mut other = o.clone();
    other.epochs = Some(2);
    let err = run(&mut trainer, &other).0.unwrap_err();
    assert!(matches!(err, TrainError::Reproduce { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("model-a") && msg.contains("epochs: 1 in the run, 2 asked"),
        "{msg}"
    );
    eprintln!("reproduce test: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn reproduce_errors_name_what_is_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cifar");
    tiny_cifar10(&data);
    let out = dir.path().join("out");
    let mut trainer = Trainer::builder().console(false).build();

    let mut o = options(&data, &out);
    o.models = vec!["all-cnn-d".into()];
    let msg = run(&mut trainer, &o).0.unwrap_err().to_string();
    assert!(
        msg.contains("all-cnn-d") && msg.contains("all-cnn-c"),
        "{msg}"
    );

    let o = options(&dir.path().join("missing"), &out);
    let msg = run(&mut trainer, &o).0.unwrap_err().to_string();
    assert!(
        msg.contains("missing") && msg.contains("no such data"),
        "{msg}"
    );

    // A folder that holds no data set, or split folders without classes:
    // refused before the report files are written.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("train")).unwrap();
    std::fs::create_dir_all(empty.join("test")).unwrap();
    let msg = run(&mut trainer, &options(&empty, &out))
        .0
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("empty/train") && msg.contains("no class folders"),
        "{msg}"
    );
    let bare = dir.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    let msg = run(&mut trainer, &options(&bare, &out))
        .0
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("bare") && msg.contains("not a dataset"),
        "{msg}"
    );
    assert!(
        !out.exists(),
        "the report was written for data that are none"
    );

    let mut o = options(&data, &out);
    o.overrides.push("no_such_key=1".into());
    let msg = run(&mut trainer, &o).0.unwrap_err().to_string();
    assert!(msg.contains("no_such_key"), "{msg}");
    // Bad settings fail before the output folder is made.
    let mut o = options(&data, &out);
    o.overrides.push("lr=0".into());
    let msg = run(&mut trainer, &o).0.unwrap_err().to_string();
    assert!(msg.contains("`lr`"), "{msg}");
    assert!(!out.exists(), "the output folder was made for a bad config");

    // A folder of the user's is not written into; a file is not a folder.
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::write(theirs.join("notes.txt"), "mine").unwrap();
    let msg = run(&mut trainer, &options(&data, &theirs))
        .0
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("not empty") && msg.contains("notes.txt"),
        "{msg}"
    );
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 1);
    let msg = run(&mut trainer, &options(&data, &theirs.join("notes.txt")))
        .0
        .unwrap_err()
        .to_string();
    assert!(msg.contains("a file, not a folder"), "{msg}");

    // A model that cannot train (a batch larger than the training split):
    // the model is named, the report records the failure.
    let mut o = options(&data, &out);
    o.models = vec!["model-a".into()];
    o.overrides.push("batch_size=64".into());
    let err = run(&mut trainer, &o).0.unwrap_err();
    assert!(
        matches!(&err, TrainError::ReproduceModel { model, .. } if model == "model-a"),
        "{err:?}"
    );
    assert!(err.to_string().contains("batch_size"), "{err}");
    let report = ReproduceReport::read(&out.join(REPORT_JSON)).unwrap();
    assert_eq!(report.rows[0].status, RowStatus::Failed);
    assert!(report.rows[0]
        .error
        .as_deref()
        .unwrap()
        .contains("batch_size"));
    assert_eq!(report.rows[1].status, RowStatus::NotRun);
    let md = std::fs::read_to_string(out.join(REPORT_MARKDOWN)).unwrap();
    assert!(md.contains("## Failures"), "{md}");

    // CIFAR-100 on 10-class data runs, with a warning in the report.
    let mut o = ReproduceOptions::new(Experiment::Cifar100, &data, dir.path().join("c100"));
    o.epochs = Some(1);
    o.overrides = vec![
        "data.preprocessing=standardize".into(),
        "batch_size=5".into(),
    ];
    let mut warnings = Vec::new();
    let report = reproduce(&mut trainer, &o, &mut |e| {
        if let ReproduceEvent::Warning(w) = e {
            warnings.push(w.clone());
        }
    })
    .unwrap();
    assert!(report.is_complete());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("10 classes") && warnings[0].contains("100"));
    assert_eq!(report.notes, warnings);
}
