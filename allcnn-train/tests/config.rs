//! Presets and key=value overrides.

use allcnn_train::{config::PreprocessChoice, LrSchedule, TrainConfig, TrainError};

#[test]
fn every_preset_parses_and_validates() {
    for name in TrainConfig::preset_names() {
        let c = TrainConfig::preset(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        c.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        // The TOML written to a run directory reads back to the same config.
        let back = TrainConfig::from_toml(&c.to_toml(), "round trip").unwrap();
        assert_eq!(back, c, "{name}");
    }
}

#[test]
fn presets_follow_the_paper() {
    let c = TrainConfig::preset("cifar10").unwrap();
    assert_eq!(c.model, "all-cnn-c");
    assert_eq!(c.epochs, 350);
    assert_eq!(c.momentum, 0.9);
    assert_eq!(c.weight_decay, 1e-3);
    assert_eq!(c.lr_grid, vec![0.25, 0.1, 0.05, 0.01]);
    assert_eq!(c.schedule, LrSchedule::paper());
    assert_eq!(c.data.preprocessing, PreprocessChoice::GcnZca);
    assert_eq!(c.data.augmentation, allcnn_data::Augmentation::None);
    let a = TrainConfig::preset("cifar10-aug").unwrap();
    assert_eq!(
        a.data.augmentation,
        allcnn_data::Augmentation::paper_cifar()
    );
    // The class-map watch waits longer where translations let a silent
    // map come back (about 2 epochs at the preset's batch 128).
    assert_eq!(c.dead_patience_steps, 200);
    assert_eq!(a.dead_patience_steps, 800);
    let i = TrainConfig::preset("imagenet").unwrap();
    assert_eq!((i.batch_size, i.lr, i.weight_decay), (64, 0.01, 5e-4));
    assert_eq!(
        i.schedule,
        LrSchedule::StepIters {
            every: 200_000,
            gamma: 0.1
        }
    );
    assert!(matches!(
        TrainConfig::preset("mnist"),
        Err(TrainError::UnknownPreset { .. })
    ));
}

#[test]
fn overrides_reach_every_field() {
    let mut c = TrainConfig::preset("cifar10").unwrap();
    c.apply_overrides(&[
        "lr=0.01",
        "epochs=35",
        "init=he-normal",
        "data.train_subset=5000",
        "data.path=/tmp/cifar",
        "data.preprocessing=standardize",
        "lr_grid=[0.1, 0.05]",
        "schedule={ kind = \"scaled\", fractions = [0.5, 0.75], gamma = 0.2 }",
        "data.augmentation={ kind = \"flip_translate\", flip = true, max_shift = 5 }",
        "data.augmentation.max_shift=3",
        "max_steps=100",
        "conv=\"winograd-bf16\"",
    ])
    .unwrap();
    assert_eq!(c.conv, allcnn_models::ConvBackend::WinogradBf16);
    assert_eq!(c.lr, 0.01);
    assert_eq!(c.epochs, 35);
    assert_eq!(c.init, allcnn_models::Init::HeNormal);
    assert_eq!(c.data.train_subset, Some(5000));
    assert_eq!(
        c.data.path.as_deref(),
        Some(std::path::Path::new("/tmp/cifar"))
    );
    assert_eq!(c.data.preprocessing, PreprocessChoice::Standardize);
    assert_eq!(c.lr_grid, vec![0.1, 0.05]);
    assert_eq!(c.schedule.milestone_epochs(35), vec![18, 26]);
    assert_eq!(
        c.data.augmentation,
        allcnn_data::Augmentation::FlipTranslate {
            flip: true,
            max_shift: 3
        }
    );
    assert_eq!(c.max_steps, Some(100));
    c.set("schedule.gamma=0.5").unwrap();
    assert_eq!(c.schedule.lr(1.0, 20, 0, 35), 0.5);
}

#[test]
fn bad_overrides_name_the_item() {
    let mut c = TrainConfig::preset("cifar10").unwrap();
    for item in [
        "learning_rate=0.1",
        "lr",
        "lr=fast",
        "data.nope=1",
        "epochs=-3",
        "conv=\"fp8\"",
    ] {
        let e = c.set(item).unwrap_err();
        assert!(matches!(e, TrainError::BadOverride { .. }), "{item}: {e}");
        assert!(e.to_string().contains(item), "{item}: {e}");
    }
    c.set("lr=0").unwrap();
    let e = c.validate().unwrap_err();
    assert!(e.to_string().contains("`lr`"), "{e}");
    // A schedule is shown as a config writes it, not as Rust's Debug.
    let mut c = TrainConfig::preset("cifar10").unwrap();
    c.set("schedule.milestones=[5, 2]").unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("\"milestones\":[5,2]") && !e.contains("MultiStep"),
        "{e}"
    );

    // Sizes that would exhaust memory or threads (D4, D14 of issue 15).
    for (item, field) in [
        ("batch_size=10000000", "batch_size"),
        ("eval_batch_size=0", "eval_batch_size"),
        ("data.workers=100000", "data.workers"),
        // Checked before the data are read (they divide in the GCN + ZCA).
        ("data.gcn_scale=0", "data.gcn_scale"),
        ("data.gcn_scale=-55", "data.gcn_scale"),
        ("data.zca_filter_bias=0", "data.zca_filter_bias"),
    ] {
        let mut c = TrainConfig::preset("cifar10").unwrap();
        c.set(item).unwrap();
        let e = c.validate().unwrap_err();
        assert!(
            matches!(e, TrainError::InvalidConfig { field: f, .. } if f == field),
            "{item}: {e}"
        );
    }
}

#[test]
fn warmup_scales_the_schedule_linearly_then_stops() {
    let mut c = TrainConfig::preset("cifar10").unwrap();
    c.lr = 0.05;
    // The paper's default: no warm-up, and the field is not written out.
    assert_eq!(c.warmup_steps, 0);
    assert_eq!(c.lr_at(0, 0), 0.05);
    assert!(!c.to_toml().contains("warmup_steps"));
    c.set("warmup_steps=4").unwrap();
    let lrs: Vec<f64> = (0..6).map(|s| c.lr_at(0, s)).collect();
    let expect = [0.0125, 0.025, 0.0375, 0.05, 0.05, 0.05];
    for (a, b) in lrs.iter().zip(expect) {
        assert!((a - b).abs() < 1e-12, "{lrs:?}");
    }
    // It multiplies the schedule: past a milestone the rate is already x0.1.
    assert!((c.lr_at(300, 2) - 0.05 * 0.001 * 0.75).abs() < 1e-15);
    let back = TrainConfig::from_toml(&c.to_toml(), "roundtrip").unwrap();
    assert_eq!(back.warmup_steps, 4);
    assert_eq!(back.dead_patience_steps, 200);
}

/// `precision` picks the convolution backend; `conv` is the expert
/// override; a config that sets both is refused, naming both.
#[test]
fn precision_resolves_to_a_backend_and_conflicts_with_conv() {
    use allcnn_models::{ConvBackend, Precision};
    let mut c = TrainConfig::preset("cifar10").unwrap();
    assert_eq!(c.precision, Precision::F32);
    assert_eq!(c.conv_backend(), ConvBackend::Winograd);
    // The default is not written out, so older readers see nothing new.
    assert!(!c.to_toml().contains("precision"));

    c.apply_overrides(&["precision=\"bf16\"".to_string()])
        .unwrap();
    c.validate().unwrap();
    assert_eq!(c.precision, Precision::Bf16);
    assert_eq!(c.conv_backend(), ConvBackend::WinogradBf16);
    let back = TrainConfig::from_toml(&c.to_toml(), "round trip").unwrap();
    assert_eq!(back, c);

    c.apply_overrides(&["precision=\"auto\"".to_string()])
        .unwrap();
    assert_eq!(c.conv_backend(), Precision::Auto.backend());

    // conv alone still works (older configs).
    let mut c = TrainConfig::preset("cifar10").unwrap();
    c.apply_overrides(&["conv=\"gemm\"".to_string()]).unwrap();
    c.validate().unwrap();
    assert_eq!(c.conv_backend(), ConvBackend::Gemm);
    // Both set: refused, naming the field, its value and the other one.
    c.apply_overrides(&["precision=\"bf16\"".to_string()])
        .unwrap();
    let err = c.validate().unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::InvalidConfig {
                field: "precision",
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("bf16") && msg.contains("conv = \"gemm\""),
        "{msg}"
    );
    // An unknown name is refused at parse time, listing the known ones.
    let mut c = TrainConfig::preset("cifar10").unwrap();
    let err = c
        .apply_overrides(&["precision=\"fp8\"".to_string()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("fp8") || err.contains("precision"), "{err}");
}

/// `data.shuffle_labels` permutes the training labels (seeded by the run's
/// seed) and leaves the test labels alone.
#[test]
fn shuffle_labels_permutes_training_labels_only() {
    use allcnn_data::{Dataset, Image, VecDataset};
    use allcnn_train::TrainData;
    use std::sync::Arc;
    let make = |n: u32| -> Arc<dyn Dataset> {
        let imgs = (0..n)
            .map(|_| Image::from_chw(3, 2, 2, vec![0; 12]).unwrap())
            .collect();
        let labels = (0..n).map(|i| i % 10).collect();
        let names = (0..10).map(|c| format!("c{c}")).collect();
        Arc::new(VecDataset::new(imgs, labels, names).unwrap())
    };
    let labels =
        |d: &Arc<dyn Dataset>| -> Vec<u32> { (0..d.len()).map(|i| d.label(i).unwrap()).collect() };
    let mut c = TrainConfig::preset("cifar10").unwrap();
    c.apply_overrides(&["data.shuffle_labels=true".to_string()])
        .unwrap();
    c.validate().unwrap();
    assert!(c.to_toml().contains("shuffle_labels = true"));
    let (train, test) = (make(200), make(50));
    let plain = labels(&train);
    let data = TrainData::new(train.clone(), Some(test.clone()))
        .select(&c.data, 5)
        .unwrap();
    let shuffled = labels(&data.train);
    assert_ne!(shuffled, plain);
    let (mut a, mut b) = (shuffled.clone(), plain.clone());
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b, "not a permutation");
    assert_eq!(labels(data.test.as_ref().unwrap()), labels(&test));
    // Seeded: the same seed, the same labels.
    let again = TrainData::new(train, Some(test))
        .select(&c.data, 5)
        .unwrap();
    assert_eq!(labels(&again.train), shuffled);
    // Off by default, and then not written.
    assert!(!TrainConfig::preset("cifar10")
        .unwrap()
        .to_toml()
        .contains("shuffle_labels"));
}

#[test]
fn caffe_xavier_is_lecun_uniform_in_configs() {
    // The public Caffe All-CNN-C runs use Caffe's `xavier` filler, which is
    // LeCun uniform (fan-in only), not Glorot: a config can ask for it by
    // either name, and it is written back under its own.
    let mut c = TrainConfig::preset("cifar10").unwrap();
    c.apply_overrides(&["init=caffe-xavier"]).unwrap();
    assert_eq!(c.init, allcnn_models::Init::LecunUniform);
    c.apply_overrides(&["init=lecun-uniform"]).unwrap();
    assert_eq!(c.init, allcnn_models::Init::LecunUniform);
    let text = c.to_toml();
    assert!(text.contains("init = \"lecun-uniform\""), "{text}");
    assert!(c.apply_overrides(&["init=lecun"]).is_err());
}

#[test]
fn a_partial_config_file_lays_over_a_preset() {
    let dir = tempfile::tempdir().unwrap();
    let base = TrainConfig::preset("cifar10").unwrap();
    let toml_file = dir.path().join("short.toml");
    std::fs::write(&toml_file, "epochs = 3\n[data]\ntrain_subset = 500\n").unwrap();
    let json_file = dir.path().join("short.json");
    std::fs::write(
        &json_file,
        r#"{"epochs": 3, "classes": null, "data": {"train_subset": 500}}"#,
    )
    .unwrap();
    for file in [&toml_file, &json_file] {
        let c = base.overlaid_with_file(file).unwrap();
        assert_eq!((c.epochs, c.data.train_subset), (3, Some(500)), "{file:?}");
        // Everything else, the nested data settings too, is the preset's.
        let mut expected = base.clone();
        expected.epochs = 3;
        expected.data.train_subset = Some(500);
        assert_eq!(c, expected, "{file:?}");
        // Alone, the partial file says what is missing and what to do.
        let e = TrainConfig::from_file(file).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("missing field") && msg.contains("--preset NAME --config FILE"),
            "{msg}"
        );
        assert!(
            !msg.contains("\n;"),
            "a line break before the advice: {msg}"
        );
    }
    // A wrong type in the overlay names the file.
    std::fs::write(&toml_file, "epochs = \"many\"\n").unwrap();
    let e = base.overlaid_with_file(&toml_file).unwrap_err();
    assert!(e.to_string().contains("short.toml"), "{e}");
}

/// A custom `spec` fixes the class count and may not pass for one of the
/// paper's architectures (both were accepted: `classes` was ignored, and a
/// spec named `all-cnn-c` put the paper's name and error on its card).
#[test]
fn a_spec_is_checked_against_classes_and_the_registered_names() {
    let spec = |name: &str| {
        format!(
            "spec={{name=\"{name}\",in_channels=3,input_size=32,layers=[{{type=\"conv\",kernel=3,out=10,stride=1,padding=1}}]}}"
        )
    };
    let mut c = TrainConfig::preset("cifar10").unwrap();
    c.set(&spec("one-conv")).unwrap();
    c.validate().unwrap();
    c.set("classes=10").unwrap();
    c.validate().unwrap();
    c.set("classes=100").unwrap();
    let e = c.validate().unwrap_err();
    assert!(
        matches!(
            e,
            TrainError::InvalidConfig {
                field: "classes",
                ..
            }
        ) && e.to_string().contains("ends in 10 class maps"),
        "{e}"
    );

    let mut c = TrainConfig::preset("cifar10").unwrap();
    c.set(&spec("all-cnn-c")).unwrap();
    let e = c.validate().unwrap_err();
    assert!(
        matches!(e, TrainError::InvalidConfig { field: "spec", .. })
            && e.to_string().contains("a name of its own"),
        "{e}"
    );
    // The registered layers under their own name are that architecture.
    let mut c = TrainConfig::preset("cifar10").unwrap();
    c.spec = Some(allcnn_models::ArchSpec::by_name("all-cnn-c", 10).unwrap());
    c.validate().unwrap();
}
