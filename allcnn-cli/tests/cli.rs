//! The `allcnn` binary: happy paths and errors, with exit codes and messages.

use std::process::{Command, Output};

fn allcnn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_allcnn"))
        .args(args)
        .output()
        .expect("run allcnn")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the command succeeded; otherwise panics with its exit code,
/// stdout and stderr.
#[track_caller]
fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "allcnn failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

/// Asserts the command exited with `code` (1: a runtime error, 2: a usage
/// error); otherwise panics with its output.
#[track_caller]
fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "allcnn exited with {} (wanted {code}):\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

#[test]
fn models_table_lists_every_architecture() {
    let o = allcnn(&["models"]);
    assert_ok(&o);
    let out = stdout(&o);
    for (name, params) in [
        ("model-a", "839242"),
        ("all-cnn-c", "1369738"),
        ("all-cnn-imagenet", "9372840"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{out}"));
        assert!(line.contains(params), "{line}");
    }
    assert!(out.contains("9.08%"), "{out}");
    // The ImageNet All-CNN's number comes from the ImageNet experiment,
    // marked as unconfirmed; each source is named once.
    let imagenet = out.lines().find(|l| l.starts_with("all-cnn-imagenet"));
    assert!(imagenet.unwrap().contains("41.20%*"), "{out}");
    assert_eq!(
        out.matches("Table 3: CIFAR-10 without augmentation")
            .count(),
        1,
        "{out}"
    );
    assert!(out.contains("(* unconfirmed"), "{out}");
}

#[test]
fn models_paper_column_follows_the_head() {
    // CIFAR-100 heads: only All-CNN-C has a number in the paper (33.71%),
    // not the CIFAR-10 errors of Table 3.
    let o = allcnn(&["models", "--classes", "100"]);
    assert_ok(&o);
    let out = stdout(&o);
    let line = |name: &str| out.lines().find(|l| l.starts_with(name)).unwrap();
    assert!(line("all-cnn-c ").contains("33.71%"), "{out}");
    assert!(!out.contains("9.08%") && !out.contains("12.47%"), "{out}");
    assert!(line("model-a ").contains(" - "), "{out}");
    assert!(out.contains("CIFAR-100 without augmentation"), "{out}");
    // A head the paper never trained: no number anywhere.
    let o = allcnn(&["models", "--classes", "7"]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("the paper reports no error for heads of 7 classes"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn models_json_is_machine_readable() {
    let o = allcnn(&["models", "--json", "--classes", "100"]);
    assert_ok(&o);
    let rows: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), allcnn_models::registry().len());
    let c = rows.iter().find(|r| r["name"] == "all-cnn-c").unwrap();
    assert_eq!(c["params"], 1_387_108);
    assert_eq!(c["final_map"], serde_json::json!([100, 6, 6]));
    assert_eq!(
        c["paper"],
        serde_json::json!({"experiment": "cifar100", "error": 33.71})
    );
    let a = rows.iter().find(|r| r["name"] == "model-a").unwrap();
    assert_eq!(a["paper"], serde_json::Value::Null);
    assert_eq!(
        a["paper_error_cifar10"].as_f64().map(|e| e as f32),
        Some(12.47)
    );
    assert_eq!(
        c["layers"][0],
        serde_json::json!({"type": "dropout", "rate": 0.2})
    );
}

#[test]
fn bench_prints_one_json_line() {
    let o = allcnn(&[
        "bench",
        "--model",
        "all-cnn-a",
        "--batch",
        "2",
        "--iters",
        "1",
    ]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["batch"], 2);
    assert_eq!(v["conv"], "winograd");
    assert!(
        ["avx512", "avx2", "portable"]
            .iter()
            .any(|s| v["simd"].as_str().unwrap().starts_with(s)),
        "{v}"
    );
    assert!(v["images_per_sec"].as_f64().unwrap() > 0.0);
    if cfg!(target_os = "linux") {
        assert!(v["peak_rss_mib"].as_f64().unwrap() > 1.0, "{v}");
        assert!(v["cpu"].as_str().unwrap().contains('('), "{v}");
    }
    assert!(v["native_bf16"].is_boolean(), "{v}");
    assert!(v["amx"].is_string(), "{v}");
    for conv in ["gemm", "winograd", "winograd-bf16", "candle"] {
        let o = allcnn(&[
            "bench",
            "--model",
            "all-cnn-c",
            "--batch",
            "2",
            "--iters",
            "1",
            "--mode",
            "train",
            "--conv",
            conv,
        ]);
        assert_ok(&o);
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(v["mode"], "train");
        assert_eq!(v["conv"], conv);
    }
}

/// `ALLCNN_SIMD=portable` runs the code a CPU without AVX-512 runs (CI
/// tests the kernels that way too): no native bf16, no AMX, and `auto`
/// precision stays f32, as it does where bf16 would be emulated.
#[test]
fn allcnn_simd_portable_turns_the_wide_kernels_off() {
    let o = Command::new(env!("CARGO_BIN_EXE_allcnn"))
        .args([
            "bench",
            "--model",
            "all-cnn-a",
            "--batch",
            "2",
            "--iters",
            "1",
            "--precision",
            "auto",
        ])
        .env("ALLCNN_SIMD", "portable")
        .output()
        .unwrap();
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["native_bf16"], false, "{v}");
    assert_eq!(v["simd"], "portable (ALLCNN_SIMD=portable)", "{v}");
    if cfg!(all(target_arch = "x86_64", target_os = "linux")) {
        assert_eq!(v["amx"], "disabled by ALLCNN_SIMD=portable", "{v}");
    }
    assert_eq!(v["conv"], "winograd", "{v}");
    assert_eq!(v["kernel"], "f32", "{v}");
}

/// `--precision` resolves to a backend, and the JSON line says what was
/// asked for and what ran; it conflicts with the expert `--conv`.
#[test]
fn bench_reports_the_precision_and_the_kernel_that_ran() {
    for (precision, conv, kernel) in [
        ("f32", "winograd", "f32"),
        (
            "bf16",
            "winograd-bf16",
            allcnn_models::kernels::conv::bf16::kernel_name(),
        ),
        ("auto", allcnn_models::Precision::Auto.backend().name(), ""),
    ] {
        let o = allcnn(&[
            "bench",
            "--model",
            "all-cnn-a",
            "--batch",
            "2",
            "--iters",
            "1",
            "--precision",
            precision,
            // Accepted (the line is JSON anyway), as every script-read
            // command takes it.
            "--json",
        ]);
        assert_ok(&o);
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(v["precision"], precision, "{v}");
        assert_eq!(v["conv"], conv, "{v}");
        if !kernel.is_empty() {
            assert_eq!(v["kernel"], kernel, "{v}");
        }
        // The algorithm: direct on the tiles exactly where bf16 meets
        // active AMX.
        let amx = allcnn_models::kernels::conv::amx_status()
            == allcnn_models::kernels::conv::AmxStatus::Active;
        let algorithm = match conv {
            "winograd-bf16" if amx => "direct-amx",
            "winograd-f4" => "winograd-f4",
            _ => "winograd",
        };
        assert_eq!(v["algorithm"], algorithm, "{v}");
        // Three untimed iterations by default, and the median beside the
        // mean.
        assert_eq!(v["warmup"], 3, "{v}");
        assert!(v["median_ms_per_batch"].as_f64().unwrap() > 0.0, "{v}");
    }
    let o = allcnn(&["bench", "--batch", "2", "--iters", "1", "--conv", "gemm"]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        (v["precision"].is_null(), &v["kernel"], &v["algorithm"]),
        (
            true,
            &serde_json::json!("f32"),
            &serde_json::json!("im2col")
        )
    );
    let o = allcnn(&["bench", "--precision", "bf16", "--conv", "gemm"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--precision") && stderr(&o).contains("--conv"),
        "{}",
        stderr(&o)
    );
    // train: --precision lands in the resolved config.
    let o = allcnn(&[
        "train",
        "--preset",
        "cifar10",
        "--precision",
        "bf16",
        "--print-config",
    ]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("precision = \"bf16\""),
        "{}",
        stdout(&o)
    );
    assert!(!stderr(&o).contains("never drops"), "{}", stderr(&o));
    // With --json the resolved config is JSON (it was TOML).
    let o = allcnn(&["train", "--preset", "cifar10", "--print-config", "--json"]);
    assert_ok(&o);
    let c: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(c["model"], "all-cnn-c");
    assert_eq!(c["epochs"], 350);
    // A run too short for its multi-step schedule is told so.
    let o = allcnn(&["train", "--preset", "cifar10", "--print-config", "epochs=3"]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains(
            "never drops in this run: the schedule's first drop is at epoch 200 of a 3-epoch run"
        ),
        "{}",
        stderr(&o)
    );
    // --model replaces a config's custom architecture (it was ignored,
    // and config.toml then named --model's while the spec trained).
    let small = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/small-all-cnn.toml");
    let small = small.to_str().unwrap();
    let o = allcnn(&["train", "--config", small, "--print-config"]);
    assert_ok(&o);
    assert!(stdout(&o).contains("small-all-cnn"), "{}", stdout(&o));
    let o = allcnn(&[
        "train",
        "--config",
        small,
        "--model",
        "model-a",
        "--print-config",
    ]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("model = \"model-a\"") && !stdout(&o).contains("small-all-cnn"),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o)
            .contains("--model model-a replaces the config's custom architecture `small-all-cnn`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn errors_exit_nonzero_with_a_useful_message() {
    // Values from closed sets are checked by clap (issue 16): a usage
    // error, exit 2, naming the bad value and the valid ones, alike for
    // every flag.
    for (args, bad, valid) in [
        (
            &["bench", "--model", "all-cnn-z"][..],
            "all-cnn-z",
            "all-cnn-c",
        ),
        (&["bench", "--conv", "fp8"][..], "fp8", "winograd-bf16"),
        (&["bench", "--mode", "fly"][..], "fly", "infer"),
        (&["bench", "--device", "tpu"][..], "tpu", "cuda[:N]"),
        (&["bench", "--device", "cuda:x"][..], "x", "device index"),
        (
            &["eval", "--data", "d", "--split", "val"][..],
            "val",
            "test",
        ),
        (&["train", "--preset", "mnist"][..], "mnist", "cifar10"),
        (&["data", "download", "mnist"][..], "mnist", "cifar100"),
        (
            &["predict", "--model", "vgg", "x.png"][..],
            "vgg",
            "all-cnn-c",
        ),
        (
            &[
                "reproduce",
                "table3",
                "--data",
                "d",
                "--out",
                "o",
                "--models",
                "model-a,vgg",
            ][..],
            "vgg",
            "all-cnn-c",
        ),
        (
            &[
                "viz", "--method", "gradient", "--input", "x.png", "--target", "klass:3",
            ][..],
            "klass:3",
            "predicted",
        ),
        (
            &[
                "viz", "top", "--data", "d", "--layer", "fc7", "--out", "x.png",
            ][..],
            "fc7",
            "conv",
        ),
        (
            &[
                "viz",
                "sanity",
                "--input",
                "x.png",
                "--target",
                "unit:conv7",
            ][..],
            "unit:conv7",
            "unit:LAYER:CHANNEL:Y:X",
        ),
    ] {
        let o = allcnn(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(bad) && err.contains(valid), "{args:?}: {err}");
    }

    let o = allcnn(&["bench", "--device", "cuda", "--iters", "1", "--batch", "1"]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("--features cuda"), "{}", stderr(&o));
    // The device as given, index included (`metal:1` was echoed as `metal`).
    let o = allcnn(&[
        "bench", "--device", "metal:1", "--iters", "1", "--batch", "1",
    ]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("--device metal:1: "), "{}", stderr(&o));

    let o = allcnn(&["frobnicate"]);
    assert_exit(&o, 2); // clap usage errors exit 2

    // Every cause is printed once (issue 16): the I/O error is in the
    // message, and not repeated as its source by `{:#}`.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.safetensors");
    let o = allcnn(&["predict", "--weights", missing.to_str().unwrap(), "x.png"]);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert_eq!(err.matches("no such file").count(), 1, "{err}");
    assert!(
        err.contains("--weights") && err.contains("nope.safetensors"),
        "{err}"
    );
    let o = allcnn(&["data", "info", missing.to_str().unwrap()]);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(err.matches("nope.safetensors").count() <= 2, "{err}");
    assert!(err.matches("No such file").count() <= 1, "{err}");
}

/// Copies the folder `from` to `to` (files and folders only).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn write_png(path: &std::path::Path, seed: u8) {
    let img = image::RgbImage::from_fn(40, 28, |x, y| image::Rgb([x as u8 * 6, y as u8 * 9, seed]));
    img.save(path).unwrap();
}

#[test]
fn predict_images_with_self_describing_weights() {
    use allcnn_models::{AllCnn, ArchSpec, Init, WeightsMeta};
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    let model = AllCnn::init(
        ArchSpec::by_name("all-cnn-a", 4).unwrap(),
        Init::HeNormal,
        1,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut meta = WeightsMeta::default();
    meta.extra.insert(
        "allcnn.class_names".into(),
        r#"["cat","dog","emu","gnu"]"#.into(),
    );
    model.save(&w, &meta, &[]).unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    write_png(&imgs.join("a.png"), 10);
    write_png(&imgs.join("b.png"), 200);
    let logits = dir.path().join("logits.safetensors");
    let o = allcnn(&[
        "predict",
        "--weights",
        w.to_str().unwrap(),
        imgs.to_str().unwrap(),
        "--top-k",
        "2",
        "--json",
        "--out",
        logits.to_str().unwrap(),
        "--batch",
        "1",
    ]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    let top = v[0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 2);
    assert!(top[0]["probability"].as_f64().unwrap() >= top[1]["probability"].as_f64().unwrap());
    assert!(["cat", "dog", "emu", "gnu"].contains(&top[0]["name"].as_str().unwrap()));
    assert!(
        stderr(&o).contains("records no preprocessing"),
        "{}",
        stderr(&o)
    );
    // The 40x28 images are brought to the 32x32 input, and that is said
    // once, not per image or per batch.
    let note = format!(
        "note: {} (40x28) and 1 more image resized to the model's 32x32 input",
        imgs.join("a.png").display()
    );
    assert!(stderr(&o).contains(&note), "{}", stderr(&o));
    assert_eq!(stderr(&o).matches("note:").count(), 1, "{}", stderr(&o));
    let t = candle_core::safetensors::load(&logits, &candle_core::Device::Cpu).unwrap();
    assert_eq!(t["logits"].dims(), &[2, 4]);
    // Transparency is dropped (as PIL's convert("RGB")), and said: the
    // colours under transparent pixels are classified though not seen. An
    // RGBA file with every pixel opaque is not named.
    let rgba = dir.path().join("rgba");
    std::fs::create_dir(&rgba).unwrap();
    let alpha = |a: u8| {
        image::RgbaImage::from_fn(32, 32, move |x, _| {
            image::Rgba([9, 9, 9, if x < 16 { a } else { 255 }])
        })
    };
    alpha(0).save(rgba.join("see-through.png")).unwrap();
    alpha(255).save(rgba.join("opaque.png")).unwrap();
    let o = allcnn(&[
        "predict",
        "--weights",
        w.to_str().unwrap(),
        rgba.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "note: {} has transparent pixels: their alpha is dropped",
            rgba.join("see-through.png").display()
        )),
        "{err}"
    );
    assert_eq!(err.matches("note:").count(), 1, "{err}");
    assert!(!err.contains("opaque.png"), "{err}");
    // A file name that is not UTF-8 is said, as its bytes are lost in the
    // output (JSON holds text).
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let odd = rgba.join(std::ffi::OsStr::from_bytes(b"caf\xe9.png"));
        std::fs::copy(rgba.join("opaque.png"), &odd).unwrap();
        let o = allcnn(&[
            "predict",
            "--weights",
            w.to_str().unwrap(),
            rgba.to_str().unwrap(),
            "--json",
        ]);
        assert_ok(&o);
        let err = stderr(&o);
        assert!(
            err.contains("caf\u{FFFD}.png is not valid UTF-8: the output shows it with U+FFFD"),
            "{err}"
        );
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 3);
        std::fs::remove_file(&odd).unwrap();
    }
    // Readable as any file the user makes there (not a private 0600
    // temporary file renamed into place).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&logits), mode(&plain));
    }
    // An unwritable place is said once, naming the file asked for.
    let o = allcnn(&[
        "predict",
        "--weights",
        w.to_str().unwrap(),
        imgs.to_str().unwrap(),
        "--out",
        "/nonexistent-dir/logits.safetensors",
    ]);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("/nonexistent-dir/logits.safetensors"), "{err}");
    assert!(!err.contains("logits.safetensors.tmp"), "{err}");
    // A tensor file among images is named as such, not as an image that
    // does not decode.
    let o = allcnn(&[
        "predict",
        "--weights",
        w.to_str().unwrap(),
        logits.to_str().unwrap(),
        imgs.join("a.png").to_str().unwrap(),
    ]);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains("a preprocessed tensor file is classified on its own"),
        "{err}"
    );

    // A map of zeros (here every weight 0: no gradient anywhere) is said,
    // not drawn as flat grey without a word.
    let zero = dir.path().join("zero.safetensors");
    zeroed(&w, &zero);
    let o = allcnn(&[
        "viz",
        "--weights",
        zero.to_str().unwrap(),
        "--method",
        "gradient",
        "--input",
        imgs.join("a.png").to_str().unwrap(),
        imgs.join("b.png").to_str().unwrap(),
        "--out",
        dir.path().join("flat").to_str().unwrap(),
    ]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains(&format!(
            "note: the gradient map of {} and 1 more image is zero everywhere (drawn flat grey)",
            imgs.join("a.png").display()
        )),
        "{}",
        stderr(&o)
    );
}

/// A copy of the weights file `from` with every tensor zero (same names,
/// shapes, dtypes and metadata).
fn zeroed(from: &std::path::Path, to: &std::path::Path) {
    let bytes = std::fs::read(from).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let zeros: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, vec![0u8; v.data().len()], v.shape().to_vec(), v.dtype()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = zeros
        .iter()
        .map(|(n, d, s, t)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*t, s.clone(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, header.metadata().clone(), to).unwrap();
}

#[test]
fn predict_golden_tensor_matches_pytorch_logits() {
    let Some(g) = allcnn_testing::Golden::load("all-cnn-c") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.safetensors");
    let map = std::collections::HashMap::from([("input".to_string(), g.get("input").clone())]);
    candle_core::safetensors::save(&map, &input).unwrap();
    let out = dir.path().join("logits.safetensors");
    let w = g.dir.join("weights.safetensors");
    let o = allcnn(&[
        "predict",
        "--weights",
        w.to_str().unwrap(),
        "--model",
        "all-cnn-c",
        "--classes",
        "10",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let t = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
    allcnn_testing::assert_close("cli logits", &t["logits"], g.get("logits"), 2e-5);
}

#[test]
fn predict_and_data_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Missing weights file.
    let o = allcnn(&[
        "predict",
        "--weights",
        "/nonexistent/w.safetensors",
        "x.png",
    ]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("/nonexistent/w.safetensors"),
        "{}",
        stderr(&o)
    );
    // Corrupt weights.
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"garbage").unwrap();
    let o = allcnn(&["predict", "--weights", bad.to_str().unwrap(), "x.png"]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("not a valid safetensors file"),
        "{}",
        stderr(&o)
    );
    let o = allcnn(&["data", "info", "/nonexistent/data"]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("/nonexistent/data"), "{}", stderr(&o));
    // A link that leads nowhere, named or found in a folder.
    let dangling = dir.path().join("gone.jpg");
    std::os::unix::fs::symlink(dir.path().join("no-such.jpg"), &dangling).unwrap();
    let o = allcnn(&["predict", dangling.to_str().unwrap()]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("a link that leads nowhere"),
        "{}",
        stderr(&o)
    );
    let folder = dir.path().join("with-link");
    std::fs::create_dir(&folder).unwrap();
    write_png(&folder.join("a.png"), 1);
    std::os::unix::fs::symlink(dir.path().join("no-such.jpg"), folder.join("b.jpg")).unwrap();
    let o = allcnn(&["predict", folder.to_str().unwrap()]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("1 image name skipped, not a readable regular file")
            && stderr(&o).contains("b.jpg"),
        "{}",
        stderr(&o)
    );
    // Data with other classes than the weights: both named.
    let data = dir.path().join("two-classes");
    tiny_folder(&data);
    let o = allcnn(&["eval", "--data", data.to_str().unwrap()]);
    assert_exit(&o, 1);
    let want = format!(
        "--data {}: the model of the shipped all-cnn-c-cifar10 weights has 10 classes, the data 2",
        data.display()
    );
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
}

#[test]
fn outputs_never_replace_inputs_found_in_folders_or_foreign_files() {
    use candle_core::{DType, Device, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let s = |path: &std::path::Path| path.to_str().unwrap().to_string();
    std::fs::create_dir(p("imgs")).unwrap();
    write_png(&p("imgs/a.png"), 1);
    write_png(&p("imgs/gradient-a.png"), 2);
    let intact = |name: &str| image::open(p(name)).unwrap().width() == 40;

    // predict: an image found in a folder input is an input too.
    let o = allcnn(&["predict", &s(&p("imgs")), "--out", &s(&p("imgs/a.png"))]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("also an input"), "{}", stderr(&o));
    assert!(intact("imgs/a.png"));
    // A file the command did not write is kept; its own output is replaced.
    std::fs::write(p("note.txt"), "mine").unwrap();
    let o = allcnn(&["predict", &s(&p("imgs")), "--out", &s(&p("note.txt"))]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("not a safetensors file"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(p("note.txt")).unwrap(), "mine");
    std::fs::write(p("logits.safetensors"), b"").unwrap(); // as `mktemp` leaves it
    for _ in 0..2 {
        assert_ok(&allcnn(&[
            "predict",
            &s(&p("imgs")),
            "--out",
            &s(&p("logits.safetensors")),
        ]));
    }
    let batch = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let tensors = |labels: Tensor| {
        std::collections::HashMap::from([
            ("input".to_string(), batch.clone()),
            ("labels".to_string(), labels),
        ])
    };
    let other = p("other-batch.safetensors");
    candle_core::safetensors::save(
        &tensors(Tensor::new(&[1u32, 2], &Device::Cpu).unwrap()),
        &other,
    )
    .unwrap();
    let o = allcnn(&["predict", &s(&p("imgs/a.png")), "--out", &s(&other)]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("holds the tensors input, labels"),
        "{}",
        stderr(&o)
    );

    // viz: a map named like an input image of the --out folder.
    let o = allcnn(&[
        "viz",
        "--method",
        "gradient",
        "--input",
        &s(&p("imgs/a.png")),
        &s(&p("imgs/gradient-a.png")),
        "--out",
        &s(&p("imgs")),
    ]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("in place of its input"),
        "{}",
        stderr(&o)
    );
    assert!(intact("imgs/gradient-a.png"));
    // viz top: a figure inside the data set.
    std::fs::create_dir_all(p("data/test/cat")).unwrap();
    let o = allcnn(&[
        "viz",
        "top",
        "--data",
        &s(&p("data")),
        "--layer",
        "conv6",
        "--out",
        &s(&p("data/test/cat/0.png")),
    ]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("lies inside the data set"),
        "{}",
        stderr(&o)
    );
    // A run or report folder there, even one not made yet, would become a
    // class folder without images: refused before anything is written.
    for args in [
        vec![
            "train",
            "--preset",
            "cifar10",
            "--data",
            "DATA",
            "--out",
            "data/train/runs/a",
        ],
        vec![
            "reproduce",
            "table3",
            "--data",
            "DATA",
            "--out",
            "data/report",
        ],
    ] {
        let args: Vec<String> = args
            .iter()
            .map(|a| match *a {
                "DATA" => s(&p("data")),
                a if a.starts_with("data/") => s(&p(a)),
                a => a.to_string(),
            })
            .collect();
        let o = allcnn(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_exit(&o, 1);
        assert!(
            stderr(&o).contains("lies inside the data set"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    assert!(!p("data/train").exists() && !p("data/report").exists());

    // Labels of a tensor input are class indices of the model, or refused
    // with their image (not truncated or wrapped).
    let cases = [
        (
            Tensor::new(&[3.7f32, 1.2], &Device::Cpu).unwrap(),
            "class labels are integers",
        ),
        (
            Tensor::new(&[3i64, (1 << 40) + 3], &Device::Cpu).unwrap(),
            "label 1099511627779 of image 1 is not a class of the model (0..10)",
        ),
        (
            Tensor::new(&[-1i64, 0], &Device::Cpu).unwrap(),
            "label -1 of image 0",
        ),
        (
            Tensor::new(&[0u8, 10], &Device::Cpu).unwrap(),
            "label 10 of image 1",
        ),
    ];
    let viz_labels = |labels: Tensor| {
        let input = p("labelled.safetensors");
        candle_core::safetensors::save(&tensors(labels), &input).unwrap();
        allcnn(&[
            "viz",
            "--method",
            "gradient",
            "--input",
            &s(&input),
            "--target",
            "labels",
            "--out",
            &s(&p("maps")),
        ])
    };
    for (labels, needle) in cases {
        let o = viz_labels(labels);
        assert_exit(&o, 1);
        assert!(stderr(&o).contains(needle), "{needle}: {}", stderr(&o));
    }
    assert_ok(&viz_labels(Tensor::new(&[9u8, 0], &Device::Cpu).unwrap()));
}

#[test]
fn hostile_flags_and_paths_are_refused_and_nothing_is_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    let o = allcnn(&["pretrained", "save", "--out", w.to_str().unwrap()]);
    assert_ok(&o);
    let before = std::fs::read(&w).unwrap();
    // `-` is not standard output here: refused, no file named `-` made.
    let o = Command::new(env!("CARGO_BIN_EXE_allcnn"))
        .args(["pretrained", "save", "--out", "-"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("not to standard output"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.path().join("-").exists());
    let img = dir.path().join("cat.png");
    write_png(&img, 3);
    // A setting the method does not use is said (it was ignored silently).
    let o = allcnn(&[
        "viz",
        "--method",
        "gradient",
        "--layer",
        "conv3",
        "--input",
        img.to_str().unwrap(),
        "--out",
        dir.path().join("g.safetensors").to_str().unwrap(),
    ]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains(
            "warning: --layer applies to grad-cam, guided-grad-cam only: gradient does not use it"
        ),
        "{}",
        stderr(&o)
    );
    // Every method setting alike (--steps, --window, --lrp, ... were
    // ignored without a word); the comparison's methods count as used.
    let o = allcnn(&[
        "viz",
        "--method",
        "gradient",
        "--steps",
        "10",
        "--window",
        "4",
        "--samples",
        "3",
        "--compare",
        "gradient,occlusion",
        "--input",
        img.to_str().unwrap(),
        "--out",
        dir.path().join("figs").to_str().unwrap(),
    ]);
    assert_ok(&o);
    let err = stderr(&o);
    assert!(
        err.contains("warning: --steps applies to integrated-gradients only: gradient, occlusion do not use it")
            && err.contains("warning: --samples applies to gradient-shap, shapley-value-sampling, kernel-shap, lime only")
            && !err.contains("--window"),
        "{err}"
    );
    // Nor a FIFO (reading it to see what it holds hung for ever) or a
    // device (`--force` replaced `/dev/null` as root), `--force` or not.
    #[cfg(unix)]
    {
        let fifo = dir.path().join("fifo.safetensors");
        assert!(Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        for args in [
            &[
                "pretrained",
                "save",
                "--out",
                fifo.to_str().unwrap(),
                "--force",
            ][..],
            &[
                "predict",
                "--out",
                fifo.to_str().unwrap(),
                img.to_str().unwrap(),
            ][..],
        ] {
            let o = allcnn(args);
            assert_exit(&o, 1);
            assert!(
                stderr(&o).contains("is not a regular file"),
                "{}",
                stderr(&o)
            );
        }
    }

    // D19 of issue 15: --out naming an input (the weights, an image).
    for out in [&w, &img] {
        let o = allcnn(&[
            "predict",
            "--weights",
            w.to_str().unwrap(),
            img.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_exit(&o, 1);
        assert!(stderr(&o).contains("also an input"), "{}", stderr(&o));
        let o = allcnn(&[
            "viz",
            "--weights",
            w.to_str().unwrap(),
            "--method",
            "gradient",
            "--input",
            img.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_exit(&o, 1);
        assert!(stderr(&o).contains("also an input"), "viz: {}", stderr(&o));
    }
    assert_eq!(std::fs::read(&w).unwrap(), before, "the weights are intact");

    // --model/--classes against the architecture the file records: the
    // same one is accepted; another of the same parameter shapes
    // (ConvPool-CNN-C) ran silently with a wrong accuracy.
    for (model, classes, refused) in [
        ("all-cnn-c", "10", false),
        ("convpool-cnn-c", "10", true),
        ("all-cnn-c", "100", true),
    ] {
        let o = allcnn(&[
            "predict",
            "--weights",
            w.to_str().unwrap(),
            "--model",
            model,
            "--classes",
            classes,
            img.to_str().unwrap(),
        ]);
        if refused {
            assert_exit(&o, 1);
            assert!(
                stderr(&o).contains("records its own architecture, all-cnn-c with 10 classes"),
                "{model} {classes}: {}",
                stderr(&o)
            );
        } else {
            assert_ok(&o);
        }
    }

    // Nor weights that are not an input of the command: another model, a
    // run's checkpoint. A file of the command's own kind is replaced.
    let other = dir.path().join("other.safetensors");
    std::fs::copy(&w, &other).unwrap();
    let maps = dir.path().join("maps.safetensors");
    for (out, refused) in [(&other, true), (&maps, false), (&maps, false)] {
        let o = allcnn(&[
            "viz",
            "--method",
            "gradient",
            "--input",
            img.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        if refused {
            assert_exit(&o, 1);
            assert!(
                stderr(&o).contains("holds model weights (tensor conv1.weight)"),
                "{}",
                stderr(&o)
            );
        } else {
            assert_ok(&o);
        }
    }
    assert_eq!(
        std::fs::read(&other).unwrap(),
        before,
        "the other weights are intact"
    );

    // An --out that cannot be written is refused before any work: a file
    // where the maps' folder would go, a folder where a file would, a file
    // in a folder that does not exist.
    let note = dir.path().join("note.txt");
    std::fs::write(&note, "mine").unwrap();
    let missing = dir.path().join("no-such-folder/top.png");
    let (img_s, note_s, dir_s) = (
        img.to_str().unwrap(),
        note.to_str().unwrap(),
        dir.path().to_str().unwrap(),
    );
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "viz", "--method", "gradient", "--input", img_s, "--out", note_s,
            ],
            "is a file; give a folder for the maps",
        ),
        (
            &["viz", "sanity", "--input", img_s, "--out", note_s],
            "is a file; give a folder for the report",
        ),
        (&["predict", img_s, "--out", dir_s], "is a folder"),
        (
            &[
                "viz",
                "top",
                "--data",
                dir_s,
                "--layer",
                "conv6",
                "--out",
                missing.to_str().unwrap(),
            ],
            "does not exist",
        ),
    ];
    for (args, needle) in cases {
        let o = allcnn(args);
        assert_exit(&o, 1);
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(std::fs::read_to_string(&note).unwrap(), "mine");

    // More of the same, each refused before the model runs (nothing on
    // stdout) and before anything is made: a folder named like a file, a
    // figure without .png, a read-only folder (by its mode bits, so also
    // for root), a missing weights file, a layer the network lacks.
    use std::os::unix::fs::PermissionsExt;
    let ro = dir.path().join("read-only");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let (maps_png, top_dir, ro_maps, ro_file, ro_hub, gone) = (
        dir.path().join("maps.png"),
        dir.path().join("top-figure"),
        ro.join("maps"),
        ro.join("w.safetensors"),
        ro.join("hub"),
        dir.path().join("gone.safetensors"),
    );
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (maps_png, top_dir, ro_maps, ro_file, ro_hub, gone) = (
        s(&maps_png),
        s(&top_dir),
        s(&ro_maps),
        s(&ro_file),
        s(&ro_hub),
        s(&gone),
    );
    let cam = s(&dir.path().join("cam"));
    let viz = ["viz", "--method", "gradient", "--input", img_s, "--out"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [&viz[..], &[maps_png.as_str()]].concat(),
            "looks like a file name (.png)",
        ),
        ([&viz[..], &[ro_maps.as_str()]].concat(), "is not writable"),
        (
            vec![
                "viz", "top", "--data", dir_s, "--layer", "conv6", "--out", &top_dir,
            ],
            "ending in .png",
        ),
        (
            vec!["pretrained", "save", "--out", &ro_file],
            "is not writable",
        ),
        (
            vec!["export-hub", dir_s, "--out", &ro_hub],
            "is not writable",
        ),
        (
            vec!["predict", "--weights", &gone, img_s],
            "no such file; give a .safetensors weights file",
        ),
        (
            vec![
                "viz", "--method", "grad-cam", "--layer", "conv99", "--input", img_s, "--out", &cam,
            ],
            "--layer: `",
        ),
    ];
    for (args, needle) in &cases {
        let o = allcnn(args);
        assert_exit(&o, 1);
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).is_empty(), "{args:?} printed: {}", stdout(&o));
    }
    for made in [&maps_png, &top_dir, &ro_maps, &ro_file, &ro_hub, &cam] {
        assert!(!std::path::Path::new(made).exists(), "{made} was made");
    }
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();

    // `pretrained save` keeps an existing file unless --force.
    let saved = s(&dir.path().join("saved.safetensors"));
    assert_ok(&allcnn(&["pretrained", "save", "--out", &saved]));
    std::fs::write(&saved, b"mine").unwrap();
    let o = allcnn(&["pretrained", "save", "--out", &saved]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("add --force"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&saved).unwrap(), b"mine");
    assert_ok(&allcnn(&["pretrained", "save", "--out", &saved, "--force"]));
    assert!(std::fs::metadata(&saved).unwrap().len() > 1_000_000);

    // Values out of range and missing arguments: usage errors, exit 2.
    let png = s(&dir.path().join("top.png"));
    let nodata = s(&dir.path().join("no-such-data"));
    let usage: [&[&str]; 14] = [
        &[
            "viz", "top", "--data", &nodata, "--layer", "conv6", "-k", "0", "--out", &png,
        ],
        &[
            "viz",
            "top",
            "--data",
            &nodata,
            "--layer",
            "conv6",
            "--channels",
            "abc",
            "--out",
            &png,
        ],
        &["predict", img_s, "--top-k", "0"],
        &["predict", img_s, "--batch", "0"],
        &[
            "viz",
            "--method",
            "gradient",
            "--input",
            img_s,
            "--out",
            dir_s,
            "--overlay",
            "--alpha",
            "5",
        ],
        &["viz", "--method", "gradient"],
        &["models", "--classes", "0"],
        // More classes than a class layer can have; a head without the
        // file it describes; a checksum or a URL that cannot be one.
        &["models", "--classes", "100000000"],
        &["predict", "--classes", "7", img_s],
        &[
            "data", "download", "cifar10", "--dir", dir_s, "--md5", "nothex",
        ],
        &[
            "data",
            "download",
            "cifar10",
            "--dir",
            dir_s,
            "--url",
            "ftp://x/c.tar.gz",
        ],
        // Settings that would do nothing (they were ignored without a word).
        &[
            "viz", "--method", "gradient", "--input", img_s, "--out", dir_s, "--alpha", "0.3",
        ],
        &[
            "viz", "--method", "gradient", "--input", img_s, "--out", dir_s, "--noise", "0.5",
        ],
        &[
            "viz",
            "--method",
            "gradient",
            "--input",
            img_s,
            "--out",
            dir_s,
            "--smooth",
            "100000000000",
        ],
    ];
    for args in usage {
        let o = allcnn(args);
        assert_exit(&o, 2);
    }
    let nowhere = s(&dir.path().join("no-data"));
    let t3 = ["reproduce", "table3", "--data", &nowhere, "--out", &nowhere];
    for (extra, needle) in [
        (
            ["--models", "all-cnn-imagenet"],
            "--models all-cnn-imagenet: not a row of table3",
        ),
        (["--epochs", "0"], "--epochs"),
    ] {
        let o = allcnn(&[&t3[..], &extra[..]].concat());
        assert_exit(&o, 2);
        assert!(stderr(&o).contains(needle), "{}", stderr(&o));
    }

    // D28: an empty or misshapen `input` tensor is named, with no backtrace.
    for (name, dims) in [("empty", vec![0usize, 3, 32, 32]), ("flat", vec![3, 32])] {
        let t = dir.path().join(format!("{name}.safetensors"));
        let input =
            candle_core::Tensor::zeros(dims, candle_core::DType::F32, &candle_core::Device::Cpu)
                .unwrap();
        candle_core::safetensors::save(
            &std::collections::HashMap::from([("input".to_string(), input)]),
            &t,
        )
        .unwrap();
        let o = allcnn(&["predict", t.to_str().unwrap()]);
        assert_exit(&o, 1);
        let err = stderr(&o);
        assert!(
            err.contains("expected [N,3,H,W]") && !err.contains("backtrace"),
            "{err}"
        );
    }
    // A NaN in the images is named, not turned into probabilities.
    let t = dir.path().join("nan.safetensors");
    let mut values = vec![0.5f32; 2 * 3 * 8 * 8];
    values[3 * 8 * 8 + 5] = f32::NAN;
    let input =
        candle_core::Tensor::from_vec(values, (2, 3, 8, 8), &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("input".to_string(), input)]),
        &t,
    )
    .unwrap();
    let o = allcnn(&["predict", t.to_str().unwrap()]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("NaN or infinite value (image 1, element 5)"),
        "{}",
        stderr(&o)
    );

    // D22: something that is not a regular file is never read.
    #[cfg(unix)]
    {
        let zero = dir.path().join("zero.png");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let o = allcnn(&["predict", zero.to_str().unwrap()]);
        assert_exit(&o, 1);
        assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
    }

    // D4, D32: sizes and numbers out of range are usage errors (exit 2),
    // before any work.
    let o = allcnn(&["bench", "--batch", "10000000"]);
    assert_exit(&o, 2);
    for args in [
        &["eval", "--data", "d", "--batch", "0"][..],
        &[
            "viz", "top", "--data", "d", "--layer", "conv6", "--out", "x.png", "--limit", "0",
        ],
        &[
            "viz", "top", "--data", "d", "--layer", "conv6", "--out", "x.png", "--batch", "0",
        ],
        // A seed without the sample it seeds did nothing.
        &[
            "viz", "top", "--data", "d", "--layer", "conv6", "--out", "x.png", "--seed", "3",
        ],
    ] {
        let o = allcnn(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    for flag in [
        ["--scale", "100000"],
        ["--scale", "0"],
        ["--percentile", "NaN"],
        ["--percentile", "200"],
    ] {
        let viz = [
            "viz", "--method", "gradient", "--input", "x.png", "--out", "m",
        ];
        let args: Vec<&str> = viz.iter().chain(&flag).copied().collect();
        let o = allcnn(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn library_warnings_reach_stderr() {
    // D13 of issue 15: `log` warnings of the libraries had no logger. A
    // CIFAR-10 folder whose batches.meta.txt lists 3 names, not 10.
    let dir = tempfile::tempdir().unwrap();
    let record = |label: u8| {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(label * 20, 3072));
        r
    };
    for name in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ] {
        let bytes: Vec<u8> = (0..4u8).flat_map(record).collect();
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    std::fs::write(dir.path().join("batches.meta.txt"), "a\nb\nc\n").unwrap();
    let o = allcnn(&["data", "info", dir.path().to_str().unwrap()]);
    let err = stderr(&o);
    assert!(
        err.contains("warning: ") && err.contains("3 names instead of 10"),
        "{err}"
    );
    // RUST_LOG=off silences it.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_allcnn"))
        .args(["data", "info", dir.path().to_str().unwrap()])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!stderr(&o).contains("3 names"), "{}", stderr(&o));
}

#[test]
fn data_info_on_the_real_cifar10_folder() {
    let Some(root) = allcnn_testing::cifar10_jpg() else {
        return;
    };
    let o = allcnn(&["data", "info", root.to_str().unwrap(), "--json"]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let splits = v["splits"].as_array().unwrap();
    let sizes: Vec<u64> = splits
        .iter()
        .map(|s| s["images"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [50_000, 10_000]);
}

#[test]
fn viz_matches_captum_and_renders() {
    let Some(g) = allcnn_testing::Golden::load("all-cnn-c") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let w = g.dir.join("weights.safetensors");
    let input = g.dir.join("expected.safetensors"); // holds `input` and `labels`
    let out = dir.path().join("gbp.safetensors");
    let o = allcnn(&[
        "viz",
        "--weights",
        w.to_str().unwrap(),
        "--model",
        "all-cnn-c",
        "--classes",
        "10",
        "--method",
        "guided-backprop",
        "--input",
        input.to_str().unwrap(),
        "--target",
        "labels",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ok(&o);
    // A tensor file's images are named by their index in the predictions
    // (none were printed for them).
    assert!(stdout(&o).contains("\nimage 1: "), "{}", stdout(&o));
    let t = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
    allcnn_testing::assert_close(
        "cli guided backprop",
        &t["attribution"],
        g.get("guided_backprop"),
        2e-5,
    );

    let pngs = dir.path().join("maps");
    let o = allcnn(&[
        "viz",
        "--weights",
        w.to_str().unwrap(),
        "--model",
        "all-cnn-c",
        "--classes",
        "10",
        "--method",
        "deconvnet",
        "--input",
        input.to_str().unwrap(),
        "--target",
        "unit:conv7:7:3:3",
        "--out",
        pngs.to_str().unwrap(),
    ]);
    assert_ok(&o);
    for f in ["deconvnet-0000.png", "deconvnet-0001.png", "comparison.png"] {
        let img = image::open(pngs.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(img.width() >= 32, "{f}");
    }

    // A target the network cannot have is an error that lists what is valid.
    let o = allcnn(&[
        "viz",
        "--weights",
        w.to_str().unwrap(),
        "--model",
        "all-cnn-c",
        "--classes",
        "10",
        "--method",
        "gradient",
        "--input",
        input.to_str().unwrap(),
        "--target",
        "unit:conv12:0:0:0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("conv12"), "{}", stderr(&o));
}

#[test]
fn viz_top_on_a_small_image_folder() {
    use allcnn_models::{AllCnn, ArchSpec, Init, WeightsMeta};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for class in ["a", "b"] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..3u8 {
            let img = image::RgbImage::from_fn(32, 32, |x, y| {
                image::Rgb([x as u8 * 7 + i, y as u8 * 5, i * 40])
            });
            img.save(data.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    let w = dir.path().join("w.safetensors");
    AllCnn::init(
        ArchSpec::by_name("all-cnn-c", 2).unwrap(),
        Init::HeNormal,
        3,
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .save(&w, &WeightsMeta::default(), &[])
    .unwrap();
    let fig = dir.path().join("fig.png");
    let o = allcnn(&[
        "viz",
        "top",
        "--weights",
        w.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--layer",
        "conv3",
        "--channels",
        "0,1",
        "-k",
        "2",
        "--out",
        fig.to_str().unwrap(),
        "--scale",
        "1",
    ]);
    assert_ok(&o);
    assert!(stdout(&o).contains("scanned 6 images"), "{}", stdout(&o));
    let img = image::open(&fig).unwrap();
    assert!(
        img.width() > img.height(),
        "rows of patches and reconstructions"
    );
}

#[test]
fn completions_and_man_page_come_from_the_same_definition() {
    let o = allcnn(&["completions", "bash"]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.contains("allcnn") && out.contains("predict") && out.contains("--weights"),
        "bash completion"
    );
    // `viz trust` completes as `viz sanity` (the alias was unknown there).
    assert!(
        out.contains("viz,trust)"),
        "no viz trust in the bash completion"
    );
    let o = allcnn(&["man"]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.starts_with(".ie") || out.contains(".TH allcnn"),
        "roff output"
    );
    assert!(out.contains("predict"));

    // The top page's SUBCOMMANDS section names allcnn-train(1) and its siblings:
    // --out writes them, nested subcommands included.
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    let o = allcnn(&["man", "--out", pages.to_str().unwrap()]);
    assert_ok(&o);
    for page in [
        "allcnn.1",
        "allcnn-train.1",
        "allcnn-data-download.1",
        "allcnn-viz-top.1",
    ] {
        let text = std::fs::read_to_string(pages.join(page))
            .unwrap_or_else(|e| panic!("{page} not written: {e}"));
        assert!(text.contains(".TH"), "{page} is not roff");
    }
    assert!(stdout(&o).contains("allcnn-train.1"), "{}", stdout(&o));
    // A file where the folder should be is refused before anything is written.
    let file = dir.path().join("plain");
    std::fs::write(&file, "x").unwrap();
    let o = allcnn(&["man", "--out", file.to_str().unwrap()]);
    assert!(!o.status.success(), "man --out onto a file succeeded");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    // A link in the folder is not written through (to a file outside it),
    // and a folder in the way is named with nothing written; pages of an
    // earlier run are replaced, and nothing is left behind.
    #[cfg(unix)]
    {
        let notes = dir.path().join("notes");
        std::fs::write(&notes, "mine").unwrap();
        std::fs::remove_file(pages.join("allcnn-viz.1")).unwrap();
        std::os::unix::fs::symlink(&notes, pages.join("allcnn-viz.1")).unwrap();
        let o = allcnn(&["man", "--out", pages.to_str().unwrap()]);
        assert_exit(&o, 1);
        assert!(
            stderr(&o).contains("allcnn-viz.1: is in the way of a page"),
            "{}",
            stderr(&o)
        );
        assert_eq!(std::fs::read_to_string(&notes).unwrap(), "mine");
        std::fs::remove_file(pages.join("allcnn-viz.1")).unwrap();
        let o = allcnn(&["man", "--out", pages.to_str().unwrap()]);
        assert_ok(&o);
        let names: Vec<String> = std::fs::read_dir(&pages)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| n.ends_with(".1")), "{names:?}");
    }
}

/// A tiny image folder with train/ and test/ splits of two classes.
fn tiny_folder(root: &std::path::Path) {
    for split in ["train", "test"] {
        for (c, class) in ["cats", "dogs"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..6u8 {
                let img = image::RgbImage::from_fn(32, 32, |x, y| {
                    let v = if c == 0 { x as u8 * 8 } else { y as u8 * 8 };
                    image::Rgb([v, v.wrapping_add(i * 9), 255 - v])
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

/// Trains All-CNN-A for one epoch on [`tiny_folder`] data into `run`:
/// (temp dir, data dir, run dir, the train command's output).
fn train_tiny_run() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    Output,
) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_folder(&data);
    let run = dir.path().join("run");
    let o = train_tiny(&data, &run, &[]);
    assert_ok(&o);
    (dir, data, run, o)
}

/// One epoch of All-CNN-A on `data` into `run`, with `extra` flags (later
/// settings win), as a command to run.
fn train_tiny_command(data: &std::path::Path, run: &std::path::Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_allcnn"));
    c.args([
        "train",
        "--preset",
        "cifar10",
        "--model",
        "all-cnn-a",
        "--data",
    ])
    .arg(data)
    .arg("--out")
    .arg(run)
    .args(["epochs=1", "batch_size=4", "data.preprocessing=standardize"])
    .args(extra);
    c
}

/// [`train_tiny_command`], run to its end.
fn train_tiny(data: &std::path::Path, run: &std::path::Path, extra: &[&str]) -> Output {
    train_tiny_command(data, run, extra)
        .output()
        .expect("run allcnn")
}

/// A subset larger than its split trains on the whole split, and says so.
#[test]
fn a_subset_larger_than_its_split_is_said() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_folder(&data);
    let o = train_tiny(
        &data,
        &dir.path().join("run"),
        &["data.train_subset=100", "data.test_subset=50"],
    );
    assert_ok(&o);
    for want in [
        "warning: data.train_subset = 100, but the split has only 12 examples: all of them are used",
        "warning: data.test_subset = 50, but the split has only 12 examples",
    ] {
        assert!(stderr(&o).contains(want), "{}", stderr(&o));
    }
}

/// A grid search stopped by `--time-limit` says which rates are left, and
/// the same command again goes on (it failed on the first rate's folder).
#[test]
fn a_grid_stopped_at_its_time_limit_goes_on_when_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_folder(&data);
    let grid = dir.path().join("grid");
    let args = [
        "--grid",
        "--lrs",
        "0.1,0.05",
        "data.validation=2",
        "--time-limit",
        "1s",
        "epochs=100000",
    ];
    for _ in 0..2 {
        let o = train_tiny(&data, &grid, &args);
        assert_exit(&o, 75);
        assert!(
            stdout(&o).contains(
                "stopped during lr 0.1 (not tried yet: 0.05): run the same command again to go on"
            ),
            "{}\n{}",
            stdout(&o),
            stderr(&o)
        );
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(grid.join("grid.json")).unwrap()).unwrap();
    assert_eq!(report["untried"], serde_json::json!([0.05]));
    assert_eq!(report["results"][0]["stopped"], true);
}

/// `--time-limit` stops a long run after its step with a checkpoint, and
/// the same flag on `--resume` stops the continued run again, further on;
/// durations that are not one, or under a second, are refused.
#[test]
fn train_stops_at_its_time_limit_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_folder(&data);
    let run = dir.path().join("run");
    let o = train_tiny(&data, &run, &["--time-limit", "1s", "epochs=100000"]);
    // Not finished: EX_TEMPFAIL, so `train ... && export-hub ...` stops.
    assert_exit(&o, 75);
    let steps = |o: &Output| -> u64 {
        let out = stdout(o);
        assert!(out.starts_with("stopped at the time limit after "), "{out}");
        // How to go on is said once, on stderr with the progress.
        assert!(!out.contains("--resume"), "{out}");
        let err = stderr(o);
        assert!(err.contains("Resume with: allcnn train --resume"), "{err}");
        assert!(!err.contains("error"), "{err}");
        out["stopped at the time limit after ".len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let first = steps(&o);
    assert!(first >= 1 && run.join("checkpoint.safetensors").is_file());
    assert!(!run.join("final.safetensors").exists());
    let o = allcnn(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--time-limit",
        "1s",
    ]);
    assert_exit(&o, 75);
    assert!(steps(&o) > first, "{}", stdout(&o));
    for (bad, needle) in [("soon", "2h30m"), ("0s", "under a second")] {
        let o = allcnn(&[
            "train",
            "--resume",
            run.to_str().unwrap(),
            "--time-limit",
            bad,
        ]);
        assert_exit(&o, 2);
        assert!(stderr(&o).contains(needle), "{bad}: {}", stderr(&o));
    }
}

/// Ctrl-C (SIGINT), and SIGTERM as `timeout`, Slurm and `docker stop`
/// send it, finish the step, write a checkpoint and exit with 130, as a
/// shell reports an interrupted command, not with success. (SIGTERM ended
/// the process at once, losing up to an epoch.)
#[cfg(unix)]
#[test]
fn train_interrupted_by_a_signal_exits_130_with_a_checkpoint() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_folder(&data);
    for signal in ["-INT", "-TERM"] {
        let run = dir.path().join(format!("run{signal}"));
        let child = train_tiny_command(&data, &run, &["epochs=100000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The handler is installed before training starts, and the first
        // epoch's metrics line is written once it has.
        let metrics = run.join("metrics.jsonl");
        let start = std::time::Instant::now();
        while !std::fs::read_to_string(&metrics).is_ok_and(|m| m.contains("\"step\"")) {
            assert!(start.elapsed().as_secs() < 120, "training never started");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let kill = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let o = child.wait_with_output().unwrap();
        assert_exit(&o, 130);
        assert!(
            stdout(&o).starts_with("interrupted after "),
            "{signal}: {}",
            stdout(&o)
        );
        assert!(
            stderr(&o).contains("writing a checkpoint"),
            "{}",
            stderr(&o)
        );
        assert!(run.join("checkpoint.safetensors").is_file(), "{signal}");
        assert!(!run.join("final.safetensors").exists(), "{signal}");
    }
}

#[test]
fn train_eval_predict_resume_round_trip() {
    let (dir, data, run, o) = train_tiny_run();
    assert!(
        stdout(&o).contains("finished: 1 epoch, 3 steps"),
        "{}",
        stdout(&o)
    );
    for f in [
        "config.toml",
        "metrics.jsonl",
        "metrics.csv",
        "checkpoint.safetensors",
        "final.safetensors",
        "learning-curve.svg",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let w = run.join("final.safetensors");

    // The figures redraw from metrics.jsonl, elsewhere and on a log axis.
    let figs = run.join("figs");
    let o = allcnn(&[
        "plot",
        run.to_str().unwrap(),
        "--log-loss",
        "--out",
        figs.to_str().unwrap(),
    ]);
    assert_ok(&o);
    assert!(stdout(&o).contains("1 epoch: wrote"), "{}", stdout(&o));
    let svg = std::fs::read_to_string(figs.join("learning-curve.svg")).unwrap();
    assert!(svg.contains("(log scale)"), "{svg}");
    assert_eq!(
        std::fs::read_to_string(figs.join("metrics.csv")).unwrap(),
        std::fs::read_to_string(run.join("metrics.csv")).unwrap()
    );
    let o = allcnn(&["plot", data.to_str().unwrap()]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("not a run directory"), "{}", stderr(&o));
    let svg_file = figs.join("learning-curve.svg");
    let o = allcnn(&[
        "plot",
        run.to_str().unwrap(),
        "--out",
        svg_file.to_str().unwrap(),
    ]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("is a file; give a folder for the figure"),
        "{}",
        stderr(&o)
    );
    // Another run's folder is not replaced with this run's figure.
    let other_run = dir.path().join("other-run");
    std::fs::create_dir(&other_run).unwrap();
    std::fs::copy(run.join("metrics.jsonl"), other_run.join("metrics.jsonl")).unwrap();
    let o = allcnn(&[
        "plot",
        run.to_str().unwrap(),
        "--out",
        other_run.to_str().unwrap(),
    ]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("holds another run"), "{}", stderr(&o));
    assert!(!other_run.join("learning-curve.svg").exists());
    // A damaged line: the figure is redrawn, the trainer's own table (which
    // may hold that epoch) is kept.
    let damaged = dir.path().join("damaged");
    std::fs::create_dir(&damaged).unwrap();
    let table = std::fs::read(run.join("metrics.csv")).unwrap();
    std::fs::write(damaged.join("metrics.csv"), &table).unwrap();
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    std::fs::write(
        damaged.join("metrics.jsonl"),
        format!("{log}{{\"type\":\"epo\n"),
    )
    .unwrap();
    let o = allcnn(&["plot", damaged.to_str().unwrap()]);
    assert_ok(&o);
    assert!(stdout(&o).contains("left as it was"), "{}", stdout(&o));
    assert_eq!(std::fs::read(damaged.join("metrics.csv")).unwrap(), table);

    // The run's preprocessing given as weights says what it is and which
    // files to use instead.
    let o = allcnn(&[
        "eval",
        "--weights",
        run.join("preprocessing.safetensors").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains("is a run's preprocessing") && err.contains(w.to_str().unwrap()),
        "{err}"
    );
    // Its checkpoint is the run where it stands: evaluated with the run's
    // preprocessing, it scores what the final weights of the finished run
    // score (the same parameters), and says what it used.
    let eval_of = |weights: &std::path::Path| {
        let o = allcnn(&[
            "eval",
            "--weights",
            weights.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--json",
        ]);
        assert_ok(&o);
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        (v["top1"].clone(), v["loss"].clone(), stderr(&o))
    };
    let (top1, loss, note) = eval_of(&run.join("checkpoint.safetensors"));
    assert_eq!((top1, loss), {
        let (t, l, _) = eval_of(&w);
        (t, l)
    });
    assert!(
        note.contains("is a training checkpoint: using its weights at step"),
        "{note}"
    );
    // Its predictions name the classes (the run's weights files beside it
    // record them; the checkpoint does not).
    let o = allcnn(&[
        "predict",
        "--weights",
        run.join("checkpoint.safetensors").to_str().unwrap(),
        data.join("test/dogs/0.png").to_str().unwrap(),
        "--top-k",
        "2",
    ]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("cats") && stdout(&o).contains("dogs"),
        "{}",
        stdout(&o)
    );
    // Without the run's preprocessing beside it: refused, saying why.
    let lone = dir.path().join("lone");
    std::fs::create_dir(&lone).unwrap();
    std::fs::copy(
        run.join("checkpoint.safetensors"),
        lone.join("checkpoint.safetensors"),
    )
    .unwrap();
    let o = allcnn(&[
        "eval",
        "--weights",
        lone.join("checkpoint.safetensors").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("is not beside it"), "{}", stderr(&o));

    let o = allcnn(&[
        "eval",
        "--weights",
        w.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["examples"], 12);
    assert_eq!(v["confusion"].as_array().unwrap().len(), 2);
    assert_eq!(v["per_class"][1]["name"], "dogs");
    assert!(v.get("skipped").is_none(), "none left out: {v}");

    // An undecodable test image: eval names it and the flag that skips
    // it; with the flag it evaluates the other 12.
    let bad = data.join("test/dogs/zz-bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let eval = |extra: &[&str]| {
        let mut a = vec![
            "eval",
            "--weights",
            w.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--json",
        ];
        a.extend_from_slice(extra);
        allcnn(&a)
    };
    let o = eval(&[]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("zz-bad.png") && stderr(&o).contains("--skip-bad-images"),
        "{}",
        stderr(&o)
    );
    let o = eval(&["--skip-bad-images"]);
    assert_ok(&o);
    assert!(stderr(&o).contains("zz-bad.png"), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["examples"], 12);
    // The JSON records what it left out (only stderr did).
    assert_eq!(v["skipped"].as_array().unwrap().len(), 1, "{v}");
    assert!(
        v["skipped"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("zz-bad.png"),
        "{v}"
    );
    assert!(
        !v["skipped"][0]["reason"].as_str().unwrap().is_empty(),
        "{v}"
    );
    std::fs::remove_file(&bad).unwrap();

    // A folder with train/ only: the test split is missing, and the error
    // names the split it has and the flag; --split train evaluates it.
    let aside = data.join("test-aside");
    std::fs::rename(data.join("test"), &aside).unwrap();
    let o = eval(&[]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("has train/ but no test/ (nor val/)")
            && stderr(&o).contains("pass --split train"),
        "{}",
        stderr(&o)
    );
    assert_ok(&eval(&["--split", "train"]));
    std::fs::rename(&aside, data.join("test")).unwrap();
    // A mistyped --data beside split folders is not a missing split.
    let o = allcnn(&[
        "eval",
        "--weights",
        w.to_str().unwrap(),
        "--data",
        data.join("tset").to_str().unwrap(),
    ]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("tset is missing") && !stderr(&o).contains("--split"),
        "{}",
        stderr(&o)
    );

    // predict knows the class names and the preprocessing from the file.
    let img = data.join("test/dogs/0.png");
    let o = allcnn(&[
        "predict",
        "--weights",
        w.to_str().unwrap(),
        img.to_str().unwrap(),
        "--top-k",
        "2",
    ]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("cats") && stdout(&o).contains("dogs"),
        "{}",
        stdout(&o)
    );
    assert!(
        !stderr(&o).contains("records no preprocessing"),
        "{}",
        stderr(&o)
    );

    // Resuming a finished run changes nothing and says so; a second run
    // into the same directory is refused.
    let metrics = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let o = allcnn(&["train", "--resume", run.to_str().unwrap()]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("is finished (epochs: 1 of 1): nothing to do"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).contains("finished: 1 epoch"), "{}", stdout(&o));
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), metrics);
    let o = allcnn(&[
        "train",
        "--preset",
        "cifar10",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "epochs=1",
    ]);
    assert_exit(&o, 1);

    // --epochs continues the finished run for another epoch (3 more steps)
    // and records the new length; for a new run it is `epochs=N`.
    let o = allcnn(&["train", "--resume", run.to_str().unwrap(), "--epochs", "2"]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("finished: 2 epochs, 6 steps"),
        "{}",
        stdout(&o)
    );
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("epochs = 2"), "{config}");
    // --conv (or --precision) moves the run to another CPU backend on the
    // way, said on the console and recorded; both at once are refused.
    let o = allcnn(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--epochs",
        "3",
        "--conv",
        "winograd-f4",
    ]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("change from `winograd` to `winograd-f4` at step 6"),
        "{}",
        stderr(&o)
    );
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("conv = \"winograd-f4\""), "{config}");
    // --dead-patience changes the class-map watch on the way.
    let o = allcnn(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--epochs",
        "4",
        "--dead-patience",
        "400",
    ]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("(dead_patience_steps) changes from 200 steps to 400 steps at step 9"),
        "{}",
        stderr(&o)
    );
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("dead_patience_steps = 400"), "{config}");
    // Data that moved: the recorded path is named with the way out, and
    // --data with --resume takes their new place once they are checked
    // to be the run's (other data are refused, config.toml unchanged).
    let moved = data.with_file_name("moved-data");
    std::fs::rename(&data, &moved).unwrap();
    let o = allcnn(&["train", "--resume", run.to_str().unwrap(), "--epochs", "5"]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("(recorded in its config), are not there")
            && stderr(&o).contains("--data DIR"),
        "{}",
        stderr(&o)
    );
    let other = moved.with_file_name("other-data");
    tiny_folder(&other);
    std::fs::remove_file(
        std::fs::read_dir(other.join("train/cats"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    let before = std::fs::read(run.join("config.toml")).unwrap();
    let o = allcnn(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--epochs",
        "5",
        "--data",
        other.to_str().unwrap(),
    ]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("not the same data"), "{}", stderr(&o));
    assert_eq!(std::fs::read(run.join("config.toml")).unwrap(), before);
    let o = allcnn(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--epochs",
        "5",
        "--data",
        moved.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("moved-data"), "{config}");
    let o = allcnn(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--conv",
        "winograd",
        "--precision",
        "bf16",
    ]);
    assert_exit(&o, 2);
    // With epochs=... too, the command says which one it would have taken.
    let new_run = [
        "train",
        "--preset",
        "cifar10",
        "--epochs",
        "7",
        "--print-config",
    ];
    let o = allcnn(&new_run);
    assert_ok(&o);
    assert!(stdout(&o).contains("\nepochs = 7\n"), "{}", stdout(&o));
    let o = allcnn(&[&new_run[..], &["epochs=9"]].concat());
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("give one"), "{}", stderr(&o));
    // Without anything to train: a usage error (exit 2), as clap's own.
    let o = allcnn(&["train", "--epochs", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--preset"), "{}", stderr(&o));
}

#[test]
fn dead_runs_are_moved_aside_and_retried_with_the_next_seed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_folder(&data);
    let run = dir.path().join("run");
    // lr 30 kills every class map in the first steps, whatever the seed.
    // `--out run/` (a trailing slash) still moves the dead runs beside it;
    // the subset is drawn from each try's seed.
    let o = allcnn(&[
        "train",
        "--preset",
        "cifar10",
        "--model",
        "all-cnn-a",
        "--data",
        data.to_str().unwrap(),
        "--out",
        &format!("{}/", run.display()),
        "--retries",
        "2",
        "epochs=4",
        "batch_size=4",
        "lr=30",
        "dead_patience_steps=2",
        "data.preprocessing=standardize",
        "data.train_subset=9",
    ]);
    let err = stderr(&o);
    assert_exit(&o, 1);
    for seed in [42, 43] {
        let moved = dir.path().join(format!("run.dead-seed-{seed}"));
        assert!(moved.join("config.toml").is_file(), "{err}");
        assert!(
            err.contains(&format!("Retrying with seed {}", seed + 1)),
            "{err}"
        );
    }
    // The last try (seed 44) stays in place and its error says what to do.
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("seed = 44"), "{config}");
    // (lr 30 silences one class map before the others: the first death
    // seen stops the run.)
    assert!(
        err.contains(" dead since step") && err.contains("seed=45"),
        "{err}"
    );
    // The last try resumes on its own data (seed 44's subset): it dies
    // again rather than being refused as a run on other data.
    let o = allcnn(&["train", "--resume", run.to_str().unwrap()]);
    let err = stderr(&o);
    assert_exit(&o, 1);
    assert!(!err.contains("other data"), "{err}");
    assert!(err.contains(" dead since step"), "{err}");
}

/// `reproduce`: a row whose class maps all die is recorded as failed with
/// the error, and the next row trains.
#[test]
fn reproduce_retries_a_dead_row_with_the_next_seed_and_resumes_the_retry() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_folder(&data);
    let out = dir.path().join("t3");
    let run = |retries: &str| {
        allcnn(&[
            "reproduce",
            "table3",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--models",
            "all-cnn-a",
            "--epochs",
            "4",
            "--retries",
            retries,
            "--json",
            "batch_size=4",
            "lr=30",
            "dead_patience_steps=2",
            // A checkpoint at every step: the retry may die (one class map
            // silent) before the end of its first epoch, and the rerun
            // below resumes it.
            "checkpoint_every_steps=1",
            "data.preprocessing=standardize",
        ])
    };
    let o = run("1");
    assert_exit(&o, 1);
    let err = stderr(&o);
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let row = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "all-cnn-a")
        .unwrap()
        .clone();
    let seed = row["config"]["seed"].as_u64().unwrap();
    // The first try died and was moved aside; the retry (the next seed)
    // died too and is the row's run.
    assert!(
        out.join(format!("all-cnn-a.dead-seed-{}", seed - 1))
            .join("config.toml")
            .is_file(),
        "{err}"
    );
    assert!(err.contains(&format!("retrying with seed {seed}")), "{err}");
    assert_eq!(row["status"], "failed", "{report}");
    let config = std::fs::read_to_string(out.join("all-cnn-a/config.toml")).unwrap();
    assert!(config.contains(&format!("seed = {seed}")), "{config}");
    // A rerun takes the retried run as the row's (no "other settings"),
    // resumes it, and it dies again.
    let o = run("0");
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(!err.contains("other settings"), "{err}");
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let row = &report["rows"].as_array().unwrap()[0];
    assert!(
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["model"] == "all-cnn-a"
                && r["config"]["seed"].as_u64() == Some(seed)
                && r["status"] == "failed"),
        "{row}\n{report}\n{err}"
    );
}

#[test]
fn reproduce_records_a_dead_row_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_folder(&data);
    let out = dir.path().join("t3");
    let o = allcnn(&[
        "reproduce",
        "table3",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--models",
        "all-cnn-a,model-b",
        "--epochs",
        "4",
        "--json",
        "batch_size=4",
        "lr=30",
        "dead_patience_steps=2",
        "data.preprocessing=standardize",
    ]);
    // Every row fails at lr 30 (dead or diverged): the command says so.
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("all-cnn-a"), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let row = |m: &str| {
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["model"] == m)
            .unwrap()
            .clone()
    };
    assert_eq!(row("all-cnn-a")["status"], "failed", "{report}");
    assert!(
        row("all-cnn-a")["error"]
            .as_str()
            .unwrap()
            .contains(" dead since step"),
        "{report}"
    );
    // Model B comes after All-CNN-A in the table: it was still trained.
    assert_eq!(row("model-b")["status"], "failed", "{report}");
    assert!(row("model-b")["steps"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn train_errors_are_clear() {
    // Each command fails (exit 1) with an error that names `needle`.
    let fails_naming = |args: &[&str], needle: &str| {
        let o = allcnn(args);
        assert_exit(&o, 1);
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    };
    // A missing or conflicting argument is a usage error: exit 2.
    let usage_naming = |args: &[&str], needle: &str| {
        let o = allcnn(args);
        assert_exit(&o, 2);
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    };
    let t = ["train", "--preset", "cifar10"];
    usage_naming(&[&t[..], &["--out", "/tmp/x"]].concat(), "--data");
    fails_naming(
        &[
            "train",
            "--config",
            "/nonexistent/my.toml",
            "--print-config",
        ],
        "--config /nonexistent/my.toml: no such file; write one to edit with",
    );
    fails_naming(
        &[&t[..], &["--print-config", "no_such_key=3"]].concat(),
        "no_such_key",
    );
    let o = allcnn(&[&t[..], &["--print-config", "lr=0.01"]].concat());
    assert_ok(&o);
    assert!(stdout(&o).contains("lr = 0.01"), "{}", stdout(&o));
    // Switching to the scaled schedule needs no other field.
    let o = allcnn(
        &[
            &t[..],
            &["--print-config", "epochs=35", "schedule.kind=scaled"],
        ]
        .concat(),
    );
    assert_ok(&o);
    assert!(stdout(&o).contains("kind = \"scaled\""), "{}", stdout(&o));
    assert!(stdout(&o).contains("0.5714285714285714"), "{}", stdout(&o));
    // Flags that --resume would ignore are refused, and so is --lrs
    // without --grid.
    usage_naming(
        &["train", "--resume", "/tmp/no-such-run", "--print-config"],
        "--print-config",
    );
    usage_naming(
        &[&t[..], &["--lrs", "0.1", "--print-config"]].concat(),
        "--grid",
    );
    // Empty subsets are refused before any work, naming the field.
    for field in ["data.test_subset", "data.train_subset"] {
        fails_naming(
            &[&t[..], &["--print-config", &format!("{field}=0")]].concat(),
            field,
        );
    }
    // Missing data are named once.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-data");
    let run = dir.path().join("run");
    let o = allcnn(
        &[
            &t[..],
            &[
                "--data",
                missing.to_str().unwrap(),
                "--out",
                run.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert_exit(&o, 1);
    assert_eq!(
        stderr(&o).matches("no-such-data").count(),
        1,
        "{}",
        stderr(&o)
    );
}

#[cfg(feature = "hub")]
/// Runs allcnn with the Hugging Face environment cleared, then `envs` set,
/// and `HF_HOME` in `home` (no token or cache of the machine leaks in).
fn allcnn_hub(args: &[&str], home: &std::path::Path, envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_allcnn"));
    for var in [
        "ALLCNN_OFFLINE",
        "HF_HUB_OFFLINE",
        "HF_ENDPOINT",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HF_HOME", home).env("NO_PROXY", "127.0.0.1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.args(args).output().expect("run allcnn")
}

#[cfg(feature = "hub")]
/// Self-describing 4-class weights with class names, as bytes.
fn named_weights_bytes() -> Vec<u8> {
    use allcnn_models::{AllCnn, ArchSpec, Init, WeightsMeta};
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    let mut meta = WeightsMeta::default();
    meta.extra.insert(
        "allcnn.class_names".into(),
        r#"["cat","dog","emu","gnu"]"#.into(),
    );
    AllCnn::init(
        ArchSpec::by_name("all-cnn-a", 4).unwrap(),
        Init::HeNormal,
        5,
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .save(&w, &meta, &[])
    .unwrap();
    std::fs::read(w).unwrap()
}

#[cfg(feature = "hub")]
fn predicted_name(o: &Output) -> String {
    let v: serde_json::Value = serde_json::from_str(&stdout(o)).unwrap();
    v[0]["top"][0]["name"].as_str().unwrap().to_string()
}

#[cfg(feature = "hub")]
#[test]
fn predict_with_hub_weights_from_a_prefilled_cache_offline() {
    use allcnn_testing::mock_hub::{prefill_cache, MOCK_COMMIT};
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub-cache");
    prefill_cache(
        &cache,
        "owner/repo",
        "main",
        MOCK_COMMIT,
        "model.safetensors",
        &named_weights_bytes(),
    );
    let img = dir.path().join("a.png");
    write_png(&img, 30);
    let cache_env = [("HF_HUB_CACHE", cache.to_str().unwrap())];
    let o = allcnn_hub(
        &[
            "predict",
            "--weights",
            "hf://owner/repo",
            "--offline",
            img.to_str().unwrap(),
            "--json",
        ],
        dir.path(),
        &cache_env,
    );
    assert_ok(&o);
    assert!(["cat", "dog", "emu", "gnu"].contains(&predicted_name(&o).as_str()));
    // The warning names the reference, not the cache path.
    assert!(stderr(&o).contains("hf://owner/repo"), "{}", stderr(&o));

    // Both environment switches mean offline; a miss says which one and
    // where it looked, and exits 1.
    for var in ["ALLCNN_OFFLINE", "HF_HUB_OFFLINE"] {
        let o = allcnn_hub(
            &[
                "predict",
                "--weights",
                "hf://owner/absent",
                img.to_str().unwrap(),
            ],
            dir.path(),
            &[
                cache_env[0],
                (var, "1"),
                ("HF_ENDPOINT", "http://127.0.0.1:9"),
            ],
        );
        assert_exit(&o, 1);
        let err = stderr(&o);
        assert!(
            err.contains("hf://owner/absent is not in the Hugging Face cache at")
                && err.contains(cache.to_str().unwrap())
                && err.contains(&format!("{var} is set"))
                && err.contains("run once without --offline"),
            "{err}"
        );
    }
    // --offline with a miss.
    let o = allcnn_hub(
        &[
            "predict",
            "--weights",
            "hf://owner/repo/other.safetensors@v2",
            "--offline",
            img.to_str().unwrap(),
        ],
        dir.path(),
        &cache_env,
    );
    assert_exit(&o, 1);
    assert!(
        stderr(&o)
            .contains("hf://owner/repo/other.safetensors@v2 is not in the Hugging Face cache"),
        "{}",
        stderr(&o)
    );
    // A malformed reference.
    let o = allcnn_hub(
        &["predict", "--weights", "hf://owner", img.to_str().unwrap()],
        dir.path(),
        &cache_env,
    );
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("invalid Hub reference `hf://owner`")
            && stderr(&o).contains("hf://OWNER/REPO[/FILE][@REVISION]"),
        "{}",
        stderr(&o)
    );
}

#[cfg(feature = "hub")]
#[test]
fn predict_downloads_hub_weights_from_hf_endpoint_then_works_offline() {
    use allcnn_testing::mock_hub::MockHub;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let img = dir.path().join("a.png");
    write_png(&img, 99);
    let hub = MockHub::start(vec![(
        "someone/tiny-net",
        "weights/w.safetensors",
        named_weights_bytes(),
    )]);
    let endpoint = hub.endpoint();
    let envs = [
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
        ("HF_ENDPOINT", endpoint.as_str()),
    ];
    let reference = "hf://someone/tiny-net/weights/w.safetensors";
    let args = [
        "predict",
        "--weights",
        reference,
        img.to_str().unwrap(),
        "--json",
    ];
    let o = allcnn_hub(&args, dir.path(), &envs);
    assert_ok(&o);
    let first = predicted_name(&o);
    assert!(
        hub.requests()
            .contains(&"GET /someone/tiny-net/resolve/main/weights/w.safetensors".to_string()),
        "{:?}",
        hub.requests()
    );
    assert!(cache.join("models--someone--tiny-net/refs/main").is_file());

    // A missing file is a 404 naming the URL.
    let o = allcnn_hub(
        &[
            "predict",
            "--weights",
            "hf://someone/tiny-net",
            img.to_str().unwrap(),
        ],
        dir.path(),
        &envs,
    );
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("404")
            && stderr(&o).contains(&format!(
                "{endpoint}/someone/tiny-net/resolve/main/model.safetensors"
            )),
        "{}",
        stderr(&o)
    );

    // Server gone: the cached copy still serves, offline or not.
    hub.stop();
    for extra in [&["--offline"][..], &[][..]] {
        let mut a = args.to_vec();
        a.extend_from_slice(extra);
        let o = allcnn_hub(&a, dir.path(), &envs);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        assert_eq!(predicted_name(&o), first);
    }
    // Not cached and the server is gone: a network error naming the endpoint.
    let o = allcnn_hub(
        &[
            "predict",
            "--weights",
            "hf://someone/other",
            img.to_str().unwrap(),
        ],
        dir.path(),
        &envs,
    );
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains(&format!(
            "cannot download hf://someone/other from {endpoint}"
        )),
        "{}",
        stderr(&o)
    );
}

#[test]
fn export_hub_round_trip() {
    let (dir, data, run, _o) = train_tiny_run();
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).unwrap()).unwrap();

    let out = dir.path().join("hub");
    // A whitening rank for a run without ZCA is refused (it was ignored).
    let o = allcnn(&[
        "export-hub",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--whitening-rank",
        "5",
    ]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("there is no whitening matrix to compress"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    let o = allcnn(&[
        "export-hub",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--repo",
        "me/tiny-allcnn",
    ]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("hf upload me/tiny-allcnn"),
        "{}",
        stdout(&o)
    );
    for f in ["model.safetensors", "config.json", "README.md"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }

    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(c["architecture"], "all-cnn-a");
    assert_eq!(c["spec"]["name"], "all-cnn-a");
    assert_eq!(c["num_classes"], 2);
    assert_eq!(c["class_names"], serde_json::json!(["cats", "dogs"]));
    assert_eq!(c["id2label"]["1"], "dogs");
    assert_eq!(c["input_size"], 32);
    assert_eq!(c["preprocessing"]["kind"], "standardize");
    assert_eq!(c["preprocessing"]["mean"].as_array().unwrap().len(), 3);
    assert_eq!(c["training"]["epochs"], 1);
    assert_eq!(c["training"]["batch_size"], 4);
    assert!(c["training"]["data"].get("path").is_none(), "no local path");
    assert_eq!(c["weights"]["exported"], "final");
    assert_eq!(c["results"][0]["split"], "test");
    assert_eq!(c["results"][0]["top1"], eval["top1"]);
    assert_eq!(c["results"][0]["examples"], 12);
    assert_eq!(c["allcnn_version"], env!("CARGO_PKG_VERSION"));

    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.starts_with("---\nlibrary_name: allcnn\n"), "{card}");
    for needle in [
        "license: \"mit\"",
        "- accuracy",
        &format!("value: {:.4}", eval["top1"].as_f64().unwrap()),
        "allcnn predict --weights hf://me/tiny-allcnn image.png",
        "- name: \"tiny-allcnn\"",
        "## Training recipe",
        "batch_size = 4",
        "| test | 12 |",
        "| dogs |",
        // A 32-px model only resizes (no centre crop below 64 px).
        "Images of another size are resized to 32x32 (the aspect ratio is not kept).",
    ] {
        assert!(card.contains(needle), "{needle} missing from\n{card}");
    }

    // The exported weights describe themselves: no --model needed.
    let img = data.join("test/cats/1.png");
    let w = out.join("model.safetensors");
    let o = allcnn(&[
        "predict",
        "--weights",
        w.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    assert_ok(&o);
    assert!(stdout(&o).contains("cats"), "{}", stdout(&o));
    assert!(
        !stderr(&o).contains("records no preprocessing"),
        "{}",
        stderr(&o)
    );
    // ... and give the same test accuracy as the run's eval.json, also as
    // an hf:// reference from a cache holding the export.
    #[cfg(feature = "hub")]
    {
        let home = dir.path().join("hf-home");
        let cache = home.join("hub");
        allcnn_testing::mock_hub::prefill_cache(
            &cache,
            "me/tiny-allcnn",
            "main",
            allcnn_testing::mock_hub::MOCK_COMMIT,
            "model.safetensors",
            &std::fs::read(&w).unwrap(),
        );
        let o = allcnn_hub(
            &[
                "eval",
                "--weights",
                "hf://me/tiny-allcnn",
                "--offline",
                "--data",
                data.to_str().unwrap(),
                "--json",
            ],
            &home,
            &[],
        );
        assert_ok(&o);
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["top1"], eval["top1"]);
    }

    // A non-empty --out is refused without --force.
    let o = allcnn(&[
        "export-hub",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("not empty") && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    let o = allcnn(&[
        "export-hub",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--force",
        "--weights",
        "best",
    ]);
    assert_ok(&o);
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(c["weights"]["exported"], "best");
    assert_eq!(c["weights"]["epoch"], 1);
    assert_eq!(c["results"][0]["split"], "test");
    assert!(!out.join("eval.json").exists());
    // Without --repo the card's model-index names the architecture (it
    // said "REPO", the placeholder's second half).
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("- name: \"all-cnn-a\""), "{card}");

    // --eval-data measures the exported file itself: its figures replace
    // the run's on the card and in config.json, and eval.json is written.
    let o = allcnn(&[
        "export-hub",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--force",
        "--weights",
        "best",
        "--f16-weights",
        "--eval-data",
        data.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let o2 = allcnn(&[
        "eval",
        "--weights",
        out.join("model.safetensors").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert_ok(&o2);
    let direct: serde_json::Value = serde_json::from_str(&stdout(&o2)).unwrap();
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(
        written, direct,
        "eval.json is `allcnn eval` of the exported file"
    );
    // The file records the same figures in its own metadata.
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = &header["__metadata__"];
    for key in ["top1", "top5"] {
        let recorded: f64 = meta[format!("allcnn.eval.{key}")]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(recorded, direct[key].as_f64().unwrap(), "{key}");
    }
    assert_eq!(meta["allcnn.eval.examples"], "12");
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let results = c["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["top1"], direct["top1"]);
    assert_eq!(results[0]["top5"], direct["top5"]);
    assert_eq!(results[0]["examples"], 12);
    let source = results[0]["source"].as_str().unwrap();
    assert!(
        // An image folder is named: a copy of a data set (JPEG files) is
        // not its original.
        source.contains("evaluation of this file (model.safetensors) on the 12 test images")
            && source.contains(&format!(
                "of the image folder `{}`",
                data.file_name().unwrap().to_string_lossy()
            )),
        "{source}"
    );
    assert!(
        stdout(&o).contains("wrote") && stdout(&o).contains("eval.json"),
        "{}",
        stdout(&o)
    );
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        card.contains(&format!("value: {:.4}", direct["top1"].as_f64().unwrap())),
        "{card}"
    );
    // An export without --eval-data over it drops the stale eval.json.
    let o = allcnn(&[
        "export-hub",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--force",
    ]);
    assert_ok(&o);
    assert!(!out.join("eval.json").exists());
    // A folder without split folders cannot say which images are test
    // images: refused, nothing written.
    let flat = dir.path().join("flat");
    std::fs::create_dir_all(flat.join("cats")).unwrap();
    std::fs::create_dir_all(flat.join("dogs")).unwrap();
    for (i, class) in ["cats", "dogs"].iter().enumerate() {
        let src = data.join("test").join(class).join("1.png");
        std::fs::copy(&src, flat.join(class).join(format!("{i}.png"))).unwrap();
    }
    let flat_out = dir.path().join("hub-flat");
    let o = allcnn(&[
        "export-hub",
        run.to_str().unwrap(),
        "--out",
        flat_out.to_str().unwrap(),
        "--eval-data",
        flat.to_str().unwrap(),
    ]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("has no test/ folder"), "{}", stderr(&o));
    assert!(!flat_out.exists());
    // An image that fails during the evaluation: the earlier export in
    // the folder (--force) stays as it was, and no half-made file is left.
    let broken = dir.path().join("broken");
    copy_tree(&data, &broken);
    std::fs::write(broken.join("test/cats/zz-broken.png"), b"not a png").unwrap();
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let o = allcnn(&[
        "export-hub",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--force",
        "--f16-weights",
        "--eval-data",
        broken.to_str().unwrap(),
    ]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("zz-broken.png"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
    let mut left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["README.md", "config.json", "model.safetensors"]);
    // Data that cannot be read is refused before anything is written.
    let fresh = dir.path().join("hub-no-data");
    let o = allcnn(&[
        "export-hub",
        run.to_str().unwrap(),
        "--out",
        fresh.to_str().unwrap(),
        "--eval-data",
        dir.path().join("no-such-data").to_str().unwrap(),
    ]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("no-such-data"), "{}", stderr(&o));
    assert!(!fresh.exists(), "a failed export left {}", fresh.display());

    // No such run; a run without final weights.
    let o = allcnn(&[
        "export-hub",
        dir.path().join("nope").to_str().unwrap(),
        "--out",
        dir.path().join("o2").to_str().unwrap(),
    ]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("nope: no such folder"),
        "{}",
        stderr(&o)
    );
    // Card fields that the Hub would refuse, refused here first.
    let run_s = run.to_str().unwrap();
    let o2 = dir.path().join("o2");
    for (extra, code, needle) in [
        (&["--license", ""][..], 2, "is not a license id"),
        (&["--license", "mit: x"][..], 2, "is not a license id"),
        (&["--dataset", "a b"][..], 2, "is not a Hub dataset id"),
        (
            &["--provenance", "=x"][..],
            1,
            "expected KEY=VALUE with a KEY",
        ),
        // A line break would end the card's provenance table.
        (
            &["--provenance", "note=one\n---\nlicense: evil"][..],
            1,
            "give one line",
        ),
    ] {
        let args = [
            &["export-hub", run_s, "--out", o2.to_str().unwrap()][..],
            extra,
        ]
        .concat();
        let o = allcnn(&args);
        assert_exit(&o, code);
        assert!(stderr(&o).contains(needle), "{extra:?}: {}", stderr(&o));
        assert!(!o2.exists());
    }
    // Recorded preprocessing that cannot be read fails the export before
    // anything is written: no partial export is left behind (D23).
    let fin = run.join("final.safetensors");
    rewrite_metadata(&fin, "allcnn.preprocessing", r#"{"kind":"gcn-zca"}"#);
    let fresh = dir.path().join("hub-bad");
    let o = allcnn(&[
        "export-hub",
        run.to_str().unwrap(),
        "--out",
        fresh.to_str().unwrap(),
    ]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("preprocessing"), "{}", stderr(&o));
    assert!(!fresh.exists(), "a failed export left {}", fresh.display());
    // The same file given to predict: named once, with the key at fault.
    let o = allcnn(&[
        "predict",
        "--weights",
        fin.to_str().unwrap(),
        samples().join("cat.jpg").to_str().unwrap(),
    ]);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{}: preprocessing metadata `allcnn.preprocessing`: invalid JSON",
            fin.display()
        )),
        "{err}"
    );
    assert_eq!(err.matches("final.safetensors").count(), 1, "{err}");
    std::fs::remove_file(run.join("final.safetensors")).unwrap();
    let o = allcnn(&[
        "export-hub",
        run.to_str().unwrap(),
        "--out",
        dir.path().join("o3").to_str().unwrap(),
    ]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("no final.safetensors") && stderr(&o).contains("--resume"),
        "{}",
        stderr(&o)
    );
}

#[cfg(not(feature = "hub"))]
#[test]
fn hub_references_need_the_hub_feature() {
    let o = allcnn(&["predict", "--weights", "hf://owner/repo", "x.png"]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("hf://owner/repo") && stderr(&o).contains("--features hub"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn reproduce_a_subset_then_rerun_skips_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_folder(&data);
    let out = dir.path().join("table3");
    let args = [
        "reproduce",
        "table3",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "1",
        "--models",
        "all-cnn-a",
        "batch_size=4",
        "data.preprocessing=standardize",
    ];
    let o = allcnn(&args);
    assert_ok(&o);
    let out_text = stdout(&o);
    let row = out_text
        .lines()
        .find(|l| l.starts_with("All-CNN-A (all-cnn-a)"))
        .unwrap_or_else(|| panic!("{out_text}"));
    assert!(row.contains("10.30%") && row.ends_with("done"), "{row}");
    assert!(out_text.contains("not run"), "{out_text}");
    // Every row's status starts under the header's (the model column is as
    // wide as the longest row's name).
    let header = out_text.lines().find(|l| l.starts_with("model ")).unwrap();
    let at = header.find("status").unwrap();
    for l in out_text
        .lines()
        .filter(|l| l.contains(" (all-cnn") || l.contains(" (model-"))
    {
        let status = &l[at..];
        assert!(
            ["done", "not run"].iter().any(|s| status.starts_with(s)),
            "{header}\n{l}"
        );
    }
    // Two classes, not CIFAR-10's ten: said on stderr and in the report.
    assert!(stderr(&o).contains("2 classes"), "{}", stderr(&o));
    assert!(out.join("all-cnn-a/final.safetensors").is_file());
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| All-CNN-A (`all-cnn-a`) | 10.30% |"), "{md}");

    // The same command again reuses the result; --json prints the report.
    let mut again = args.to_vec();
    again.push("--json");
    let o = allcnn(&again);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("all-cnn-a: finished earlier"),
        "{}",
        stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["experiment"], "table3");
    assert_eq!(
        v["rows"].as_array().unwrap().len(),
        allcnn_train::Experiment::Table3.rows().len()
    );
    assert_eq!(v["rows"][3]["model"], "all-cnn-a");
    assert_eq!(v["rows"][3]["status"], "done");
    assert_eq!(v["rows"][3]["paper_error"], 10.3);
    assert!(v["rows"][3]["test_error"].is_number());
    assert_eq!(v["rows"][0]["status"], "not_run");
    assert!(
        !stderr(&o).contains("trained on the data at"),
        "{}",
        stderr(&o)
    );
    // The same data, named another way: no warning.
    let same = data.join("..").join("data");
    let mut renamed = args.to_vec();
    renamed[3] = same.to_str().unwrap();
    let o = allcnn(&renamed);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("all-cnn-a: finished earlier"),
        "{}",
        stderr(&o)
    );
    assert!(
        !stderr(&o).contains("trained on the data at"),
        "{}",
        stderr(&o)
    );

    // Other data (a copy elsewhere): the finished row is still reused, and
    // the call says so on stderr.
    let other = dir.path().join("other-data");
    tiny_folder(&other);
    let mut moved = args.to_vec();
    moved[3] = other.to_str().unwrap();
    let o = allcnn(&moved);
    assert_ok(&o);
    let warning = format!(
        "warning: all-cnn-a: its run was trained on the data at {}, this call names {}: its finished result is reused",
        data.display(),
        other.display()
    );
    assert!(stderr(&o).contains(&warning), "{}", stderr(&o));
    // Only for the rows asked for: a call for all-cnn-b alone says nothing
    // about all-cnn-a.
    let mut other_row = moved.clone();
    let at = other_row.iter().position(|a| *a == "all-cnn-a").unwrap();
    other_row[at] = "all-cnn-b";
    let o = allcnn(&other_row);
    assert_ok(&o);
    assert!(!stderr(&o).contains("all-cnn-a: its run"), "{}", stderr(&o));

    // Errors: an unknown experiment (clap, exit 2), missing data, a model
    // that is not a row of the experiment.
    let o = allcnn(&["reproduce", "table9", "--data", "d", "--out", "o"]);
    assert_exit(&o, 2);
    assert!(
        stderr(&o).contains("table9") && stderr(&o).contains("cifar10-aug"),
        "{}",
        stderr(&o)
    );
    let missing = dir.path().join("no-such-data");
    let o = allcnn(&[
        "reproduce",
        "cifar100",
        "--data",
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("no-such-data") && stderr(&o).contains("no such data folder"),
        "{}",
        stderr(&o)
    );
    let o = reproduce_aug(&data, &dir.path().join("aug"), &["--models", "model-a"]);
    assert_exit(&o, 2);
    assert!(
        stderr(&o).contains("--models model-a: not a row of cifar10-aug"),
        "{}",
        stderr(&o)
    );
}

/// The repository's sample images (one CIFAR-10 test image per class).
fn samples() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/samples")
}

#[test]
fn shipped_weights_are_the_default_of_predict_eval_and_viz() {
    let dir = tempfile::tempdir().unwrap();
    // Listed with accuracy and provenance.
    let o = allcnn(&["pretrained", "list", "--json"]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v[0]["name"], "all-cnn-c-cifar10");
    assert_eq!(v[0]["default"], true);
    let top1 = v[0]["top1"].as_f64().unwrap();
    assert!(top1 > 0.0 && top1 <= 1.0, "{v}");
    // The human listing names the epoch as what it is: a best-of-run export
    // is not the run's length.
    let o = allcnn(&["pretrained", "list"]);
    assert_ok(&o);
    let epoch = v[0]["epochs"].as_u64().unwrap();
    let said = match (v[0]["best_of_run"] == true, epoch) {
        (true, _) => format!("the run's best epoch, {epoch},"),
        (false, 1) => "1 epoch,".to_string(),
        (false, _) => format!("{epoch} epochs,"),
    };
    // ... as config.json records it.
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../allcnn-models/pretrained/all-cnn-c-cifar10/config.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(config["weights"]["epoch"].as_u64(), Some(epoch));
    assert_eq!(
        v[0]["best_of_run"] == true,
        config["weights"]["exported"] == "best"
    );
    assert!(stdout(&o).contains(&said), "{said}: {}", stdout(&o));

    // Saved byte for byte.
    let saved = dir.path().join("c10.safetensors");
    let o = allcnn(&["pretrained", "save", "--out", saved.to_str().unwrap()]);
    assert_ok(&o);
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../allcnn-models/pretrained/all-cnn-c-cifar10/model.safetensors");
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        std::fs::read(shipped).unwrap()
    );
    let o = allcnn(&["pretrained", "save", "resnet", "--out", "x"]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("all-cnn-c-cifar10"), "{}", stderr(&o));

    // predict without --weights is predict with the saved file.
    let cat = samples().join("cat.jpg");
    let default = allcnn(&["predict", cat.to_str().unwrap(), "--json"]);
    assert_ok(&default);
    let explicit = allcnn(&[
        "predict",
        "--weights",
        saved.to_str().unwrap(),
        cat.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(stdout(&default), stdout(&explicit));
    assert!(
        stdout(&default).contains("\"name\""),
        "{}",
        stdout(&default)
    );
    // A usage error: --model describes a --weights file.
    let o = allcnn(&["predict", "--model", "all-cnn-c", cat.to_str().unwrap()]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("--weights"), "{}", stderr(&o));

    // eval on a ten-image folder, with and without --weights/--model/--classes.
    let data = dir.path().join("data");
    for entry in std::fs::read_dir(samples()).unwrap() {
        let p = entry.unwrap().path();
        let class = p.file_stem().unwrap().to_str().unwrap().to_string();
        std::fs::create_dir_all(data.join("test").join(&class)).unwrap();
        std::fs::copy(&p, data.join("test").join(&class).join("0.jpg")).unwrap();
    }
    let o = allcnn(&["eval", "--data", data.to_str().unwrap(), "--json"]);
    assert_ok(&o);
    let a: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(a["examples"], 10);
    let o = allcnn(&[
        "eval",
        "--weights",
        saved.to_str().unwrap(),
        "--model",
        "all-cnn-c",
        "--classes",
        "10",
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert_ok(&o);
    let b: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(a["top1"], b["top1"]);
    // bf16 convolutions: the same ten answers on these clear samples, a
    // loss within bf16's rounding of f32's, and a name that is not a
    // precision refused.
    let o = allcnn(&[
        "eval",
        "--data",
        data.to_str().unwrap(),
        "--json",
        "--precision",
        "bf16",
    ]);
    assert_ok(&o);
    let c: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(a["top1"], c["top1"]);
    let (la, lc) = (a["loss"].as_f64().unwrap(), c["loss"].as_f64().unwrap());
    assert!(
        (la - lc).abs() <= 0.02 * la.abs().max(0.01),
        "loss {la} (f32) against {lc} (bf16)"
    );
    let o = allcnn(&[
        "eval",
        "--data",
        data.to_str().unwrap(),
        "--precision",
        "f16",
    ]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("bf16"), "{}", stderr(&o));

    // viz without --weights.
    let maps = dir.path().join("maps");
    let o = allcnn(&[
        "viz",
        "--method",
        "guided-backprop",
        "--input",
        samples().to_str().unwrap(),
        "--out",
        maps.to_str().unwrap(),
        "--scale",
        "1",
    ]);
    assert_ok(&o);
    assert!(maps.join("comparison.png").is_file());
    // One map per image, named after it.
    for class in ["airplane", "cat", "truck"] {
        let f = maps.join(format!("guided-backprop-{class}.png"));
        assert!(f.is_file(), "{} missing", f.display());
    }
}

#[test]
fn a_closed_stdout_ends_quietly_without_a_panic() {
    // `allcnn models | head -c 0`: the reader is gone before the first write.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(env!("CARGO_BIN_EXE_allcnn"))
        .args(["models", "--json"])
        .stdout(writer)
        .output()
        .unwrap();
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    assert_ne!(o.status.code(), Some(101), "a panic exits with 101");
}

/// `allcnn models > /dev/full`: output that cannot be written is an error
/// that says so (exit 1), not a panic, for every command that prints.
#[cfg(target_os = "linux")]
#[test]
fn an_unwritable_stdout_is_an_error_not_a_panic() {
    for args in [
        &["models"][..],
        &["models", "--json"],
        &["pretrained", "card"],
        &["completions", "bash"],
        &["man"],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_allcnn"))
            .args(args)
            .stdout(full)
            .output()
            .unwrap();
        assert_exit(&o, 1);
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            err.contains("cannot write the output to stdout"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn class_names_with_terminal_escapes_are_printed_escaped() {
    // D33 of issue 15: a folder name with an ANSI escape reached the
    // terminal raw.
    let dir = tempfile::tempdir().unwrap();
    for class in ["cat", "dog\u{1b}[2J"] {
        let d = dir.path().join("train").join(class);
        std::fs::create_dir_all(&d).unwrap();
        write_png(&d.join("a.png"), 1);
    }
    let o = allcnn(&["data", "info", dir.path().to_str().unwrap()]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(!out.contains('\u{1b}'), "{out:?}");
    assert!(out.contains("dog\\u{1b}[2J"), "{out}");
}

fn json(o: &Output) -> serde_json::Value {
    assert_ok(o);
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

#[test]
fn json_outputs_for_scripts() {
    // Issue 16: --json wherever a script reads the output.
    let (dir, data, run, _) = train_tiny_run();
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/samples");
    let maps = dir.path().join("maps");
    let v = json(&allcnn(&[
        "viz",
        "--method",
        "gradient",
        "--input",
        samples.to_str().unwrap(),
        "--out",
        maps.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(v["predictions"].as_array().unwrap().len(), 10);
    assert!(v["predictions"][0]["name"].is_string());
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 11, "ten maps and the comparison");
    assert!(files
        .iter()
        .all(|f| std::path::Path::new(f.as_str().unwrap()).is_file()));

    let top = dir.path().join("top.png");
    let v = json(&allcnn(&[
        "viz",
        "top",
        "--weights",
        run.join("final.safetensors").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--layer",
        "conv5",
        "--channels",
        "0..2",
        "-k",
        "2",
        "--out",
        top.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(v["scanned"], 12);
    assert_eq!(v["layer"], "conv5");
    assert_eq!(v["channels"], serde_json::json!([0, 1]));
    assert!(top.is_file());

    let export = dir.path().join("hub");
    let v = json(&allcnn(&[
        "export-hub",
        run.to_str().unwrap(),
        "--out",
        export.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(v["classes"], 2);
    assert!(!v["files"].as_array().unwrap().is_empty());

    let run2 = dir.path().join("run2");
    let v = json(&train_tiny(&data, &run2, &["--json"]));
    assert_eq!(v["status"], "completed");
    assert_eq!(v["epochs_done"], 1);
    assert_eq!(v["test"]["examples"], 12);
}

#[test]
fn a_relative_data_path_is_recorded_absolute() {
    // D17 of issue 15: `--resume` from another directory lost the data.
    let dir = tempfile::tempdir().unwrap();
    tiny_folder(&dir.path().join("data"));
    let o = Command::new(env!("CARGO_BIN_EXE_allcnn"))
        .current_dir(dir.path())
        .args([
            "train",
            "--preset",
            "cifar10",
            "--model",
            "all-cnn-a",
            "--data",
            "data",
            "--out",
            "run",
            "epochs=2",
            "max_steps=2",
            "batch_size=4",
            "data.preprocessing=standardize",
        ])
        .output()
        .unwrap();
    assert_ok(&o);
    let config = std::fs::read_to_string(dir.path().join("run/config.toml")).unwrap();
    let data = dir.path().join("data");
    assert!(
        config.contains(&format!("path = \"{}\"", data.display())),
        "{config}"
    );
    // Resumed from elsewhere, it finds the data and finishes.
    let run = dir.path().join("run");
    let o = allcnn(&["train", "--resume", run.to_str().unwrap()]);
    assert_ok(&o);
}

/// `allcnn ARGS...` on the golden all-cnn-c network and its two images
/// (`--weights W --model all-cnn-c --classes 10 ... --input expected`).
fn golden_viz(g: &allcnn_testing::Golden, args: &[&str]) -> Output {
    let w = g.dir.join("weights.safetensors");
    let input = g.dir.join("expected.safetensors"); // holds `input` and `labels`
    let (sub, rest) = args.split_at(
        args.iter()
            .position(|a| a.starts_with("--"))
            .unwrap_or(args.len()),
    );
    let mut all: Vec<&str> = sub.to_vec();
    all.extend([
        "--weights",
        w.to_str().unwrap(),
        "--model",
        "all-cnn-c",
        "--classes",
        "10",
        "--input",
        input.to_str().unwrap(),
        "--target",
        "labels",
    ]);
    all.extend(rest);
    allcnn(&all)
}

#[test]
fn viz_methods_beyond_the_paper_match_captum_and_the_trust_report_runs() {
    let Some(g) = allcnn_testing::Golden::load("all-cnn-c") else {
        return;
    };
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../allcnn-viz/tests/fixtures/captum-methods.safetensors");
    let want = candle_core::safetensors::load(&fixture, &candle_core::Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("maps.safetensors");
    let o_str = out.to_str().unwrap();
    for (flags, key) in [
        (
            vec![
                "--method",
                "occlusion",
                "--window",
                "6x5",
                "--stride",
                "4x3",
                "--baseline",
                "0.25",
            ],
            "occlusion.6x5.4x3.const0.25",
        ),
        (
            vec![
                "--method",
                "integrated-gradients",
                "--steps",
                "5",
                "--quadrature",
                "riemann_trapezoid",
                "--baseline",
                "0.25",
            ],
            "integrated_gradients.riemann_trapezoid.5.0.25",
        ),
        (
            vec!["--method", "guided-grad-cam", "--layer", "conv6"],
            "guided_grad_cam.conv6",
        ),
        (
            vec!["--method", "lrp", "--lrp", "composite"],
            "lrp.composite",
        ),
        (
            vec!["--method", "lrp", "--lrp", "epsilon:0.25"],
            "lrp.epsilon0.25",
        ),
        (
            vec!["--method", "deep-lift", "--baseline", "-0.25"],
            "deep_lift.const-0.25",
        ),
        (
            vec![
                "--method",
                "feature-ablation",
                "--patch",
                "8",
                "--baseline",
                "0.25",
            ],
            "feature_ablation.patches8.const0.25",
        ),
    ] {
        let mut args = vec!["viz"];
        args.extend(&flags);
        args.extend(["--out", o_str]);
        let o = golden_viz(&g, &args);
        assert!(o.status.success(), "{key}: {}", stderr(&o));
        let t = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
        allcnn_testing::assert_close(&format!("cli {key}"), &t["attribution"], &want[key], 2e-5);
    }

    // Overlays: one PNG per image, the map over the image.
    let folder = dir.path().join("overlays");
    let o = golden_viz(
        &g,
        &[
            "viz",
            "--method",
            "grad-cam",
            "--overlay",
            "--sign",
            "all",
            "--colormap",
            "viridis",
            "--compare",
            "grad-cam,occlusion",
            "--out",
            folder.to_str().unwrap(),
        ],
    );
    assert_ok(&o);
    for f in [
        "grad-cam-overlay-0000.png",
        "grad-cam-overlay-0001.png",
        "comparison.png",
    ] {
        let img = image::open(folder.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(img.width() >= 32, "{f}");
    }
    // A compared method whose settings do not fit fails before anything
    // is written (the folder held the --method maps without the figure).
    let half = dir.path().join("half");
    let o = golden_viz(
        &g,
        &[
            "viz",
            "--method",
            "gradient",
            "--compare",
            "occlusion",
            "--window",
            "40",
            "--out",
            half.to_str().unwrap(),
        ],
    );
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("occlusion window"), "{}", stderr(&o));
    assert!(
        !half.exists(),
        "a failed comparison left {}",
        half.display()
    );

    // A window that is not a size is a usage error naming the value.
    let o = golden_viz(
        &g,
        &[
            "viz",
            "--method",
            "occlusion",
            "--window",
            "0x3",
            "--out",
            o_str,
        ],
    );
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("0x3"), "{}", stderr(&o));
    // So is an LRP rule that does not parse, with the valid ones.
    let o = golden_viz(
        &g,
        &["viz", "--method", "lrp", "--lrp", "zeta", "--out", o_str],
    );
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("composite"), "{}", stderr(&o));
    // Exact Shapley values of 64 features are refused with the way out.
    let o = golden_viz(
        &g,
        &[
            "viz",
            "--method",
            "shapley-values",
            "--patch",
            "4",
            "--out",
            o_str,
        ],
    );
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("shapley-value-sampling"),
        "{}",
        stderr(&o)
    );

    // The trust report: every cascading step for each method, a verdict per
    // method, the faithfulness curves with the chance level, and the files.
    let report = dir.path().join("trust");
    let o = golden_viz(
        &g,
        &[
            "viz",
            "sanity",
            "--methods",
            "gradient,guided-backprop",
            "--cascading-only",
            "--deletion-steps",
            "4",
            "--json",
            "--out",
            report.to_str().unwrap(),
        ],
    );
    assert_ok(&o);
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["sanity"]["rows"].as_array().unwrap().len(), 2 * 9);
    let verdicts = j["sanity"]["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 2);
    assert!(verdicts.iter().all(|v| v["passes"].is_boolean()));
    let faith = j["faithfulness"].as_array().unwrap();
    assert_eq!(faith.len(), 3);
    assert_eq!(faith[2]["method"], "random ranking");
    assert_eq!(faith[0]["deletion_curve"].as_array().unwrap().len(), 5);
    for f in ["trust.json", "sanity-cascade.png", "faithfulness.svg"] {
        assert!(report.join(f).is_file(), "{f} missing");
    }
}

/// Sets metadata `key` of the safetensors file at `path` to `value`
/// (rewriting the JSON header in place, tensors untouched).
fn rewrite_metadata(path: &std::path::Path, key: &str, value: &str) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"][key] = serde_json::Value::String(value.into());
    let mut text = serde_json::to_vec(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

/// `allcnn reproduce cifar10-aug --data DATA --out OUT EXTRA...`.
fn reproduce_aug(
    data: &std::path::Path,
    out: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "reproduce",
        "cifar10-aug",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    allcnn(&args)
}

/// A row that fails for a reason other than training (here: a batch larger
/// than the 12 training images) stops `reproduce`; its error is printed
/// once, on the row's line, and the last line points there.
#[test]
fn a_fatal_row_error_is_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_folder(&data);
    let o = reproduce_aug(&data, &dir.path().join("out"), &["batch_size=64"]);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert_eq!(
        err.matches("larger than the training split").count(),
        1,
        "{err}"
    );
    assert!(err.contains("failed: "), "{err}");
    assert!(err.contains("its error is the line above"), "{err}");
}

#[test]
fn weights_without_an_architecture_ask_for_both_flags() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("cat.png");
    write_png(&img, 3);
    let bare = dir.path().join("bare.safetensors");
    let t = candle_core::Tensor::zeros(
        (96, 3, 3, 3),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("conv1.weight".to_string(), t)]),
        &bare,
    )
    .unwrap();
    let (bare_s, img_s) = (bare.to_str().unwrap(), img.to_str().unwrap());
    let o = allcnn(&["predict", "--weights", bare_s, img_s]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("does not describe its architecture")
            && stderr(&o).contains("--model NAME --classes N"),
        "{}",
        stderr(&o)
    );
    let o = allcnn(&[
        "predict",
        "--weights",
        bare_s,
        "--model",
        "all-cnn-c",
        img_s,
    ]);
    // Usage errors (exit 2), as without --weights.
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("needs --classes N"), "{}", stderr(&o));
    let o = allcnn(&["predict", "--weights", bare_s, "--classes", "10", img_s]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("needs --model NAME"), "{}", stderr(&o));
    // The second model of `viz sanity` is named as such.
    let nosuch = dir.path().join("nosuch.safetensors");
    let report = dir.path().join("report");
    let o = allcnn(&[
        "viz",
        "sanity",
        "--input",
        img_s,
        "--out",
        report.to_str().unwrap(),
        "--shuffled-labels",
        nosuch.to_str().unwrap(),
    ]);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains("--shuffled-labels")
            && err.contains("no such file")
            && !err.contains("--weights"),
        "{err}"
    );
    // A second network without metadata (a PyTorch export) takes the
    // first one's architecture (it asked for --model/--classes, which
    // describe --weights and were then refused).
    let shipped = dir.path().join("shipped.safetensors");
    assert_ok(&allcnn(&[
        "pretrained",
        "save",
        "--out",
        shipped.to_str().unwrap(),
    ]));
    let params: std::collections::HashMap<String, candle_core::Tensor> =
        candle_core::safetensors::load(&shipped, &candle_core::Device::Cpu)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.starts_with("conv"))
            .collect();
    let exported = dir.path().join("exported.safetensors");
    candle_core::safetensors::save(&params, &exported).unwrap();
    let o = allcnn(&[
        "viz",
        "sanity",
        "--input",
        img_s,
        "--methods",
        "gradient",
        "--cascading-only",
        "--deletion-steps",
        "2",
        "--out",
        report.to_str().unwrap(),
        "--shuffled-labels",
        exported.to_str().unwrap(),
    ]);
    assert_ok(&o);
    // The same parameters: the maps agree completely.
    assert!(stdout(&o).contains(" 1.000 "), "{}", stdout(&o));
}

/// Usage errors found after parsing (repeated list entries, values out of
/// range, flags that need another) exit 2 as clap's do, and name the flag.
#[test]
fn usage_errors_found_after_parsing_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cat = samples().join("cat.jpg");
    let cat = cat.to_str().unwrap();
    let out = dir.path().join("o");
    let out = out.to_str().unwrap();
    let w = dir.path().join("w.safetensors");
    std::fs::write(&w, b"not read").unwrap();
    for (args, says) in [
        (
            &[
                "viz",
                "--method",
                "gradient",
                "--input",
                cat,
                "--out",
                out,
                "--compare",
                "gradient,saliency,gradient",
            ][..],
            "--compare: gradient is listed twice",
        ),
        (
            &[
                "viz",
                "sanity",
                "--input",
                cat,
                "--out",
                out,
                "--methods",
                "saliency,saliency",
            ][..],
            "--methods: saliency is listed twice",
        ),
        (
            &[
                "viz",
                "sanity",
                "--input",
                cat,
                "--out",
                out,
                "--threshold",
                "2",
            ][..],
            "--threshold 2: use a rank correlation in (-1, 1]",
        ),
        (
            &[
                "viz",
                "--method",
                "gradient",
                "--input",
                cat,
                "--out",
                out,
                "--smooth",
                "2",
                "--noise=-1",
            ][..],
            "--noise -1: use a fraction >= 0",
        ),
        (
            &["export-hub", "run", "--out", out, "--whitening-rank", "0"][..],
            "--whitening-rank",
        ),
        (
            &[
                "predict",
                "--weights",
                w.to_str().unwrap(),
                "--classes",
                "100",
                cat,
            ][..],
            "--classes 100 needs --model NAME as well",
        ),
    ] {
        let o = allcnn(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(!dir.path().join("o").exists(), "nothing written");

    // A tensor file among images is refused by viz as by predict, saying
    // why (viz tried to decode it as an image).
    let o = allcnn(&[
        "viz",
        "--method",
        "gradient",
        "--input",
        "x.safetensors",
        cat,
        "--out",
        out,
    ]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains(
            "x.safetensors: a preprocessed tensor file is explained on its own; pass it alone"
        ),
        "{}",
        stderr(&o)
    );

    // A folder's files not named as images are said, not dropped silently;
    // a name holding a newline is printed escaped, on one line.
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    std::fs::copy(samples().join("dog.jpg"), imgs.join("dog.jpg")).unwrap();
    std::fs::copy(samples().join("dog.jpg"), imgs.join("dog.webp")).unwrap();
    std::fs::copy(samples().join("dog.jpg"), imgs.join("noext")).unwrap();
    std::fs::write(imgs.join(".hidden"), b"x").unwrap();
    #[cfg(unix)]
    std::fs::copy(samples().join("cat.jpg"), imgs.join("two\nlines.jpg")).unwrap();
    let o = allcnn(&["predict", imgs.to_str().unwrap(), "--top-k", "1"]);
    assert_ok(&o);
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "note: {}: 2 files left out, not named .jpg, .jpeg or .png: dog.webp, noext (give such a file by its path to read it by its content)",
            imgs.display()
        )),
        "{err}"
    );
    #[cfg(unix)]
    {
        let text = stdout(&o);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("two\\nlines.jpg: "), "{text}");
    }

    // The maps of --target class:K are said to be of that class (the
    // predictions printed beside them are the model's own), in text and JSON.
    let maps = dir.path().join("maps");
    let args = [
        "viz",
        "--method",
        "gradient",
        "--input",
        cat,
        "--target",
        "class:5",
        "--out",
        maps.to_str().unwrap(),
    ];
    let o = allcnn(&args);
    assert_ok(&o);
    let text = stdout(&o);
    assert!(
        text.starts_with("maps of gradient for --target class:5 (dog)\n"),
        "{text}"
    );
    let maps2 = dir.path().join("maps2");
    let mut args = args.to_vec();
    args[8] = maps2.to_str().unwrap();
    let o = allcnn(&[&args[..], &["--json"]].concat());
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["target"], "class:5");
}
