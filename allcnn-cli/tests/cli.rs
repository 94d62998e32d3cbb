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

#[test]
fn models_table_lists_every_architecture() {
    let o = allcnn(&["models"]);
    assert!(o.status.success(), "{}", stderr(&o));
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
}

#[test]
fn models_json_is_machine_readable() {
    let o = allcnn(&["models", "--json", "--classes", "100"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 13);
    let c = rows.iter().find(|r| r["name"] == "all-cnn-c").unwrap();
    assert_eq!(c["params"], 1_387_108);
    assert_eq!(c["final_map"], serde_json::json!([100, 6, 6]));
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
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["batch"], 2);
    assert!(v["images_per_sec"].as_f64().unwrap() > 0.0);
    if cfg!(target_os = "linux") {
        assert!(v["peak_rss_mib"].as_f64().unwrap() > 1.0, "{v}");
    }
    for conv in ["gemm", "candle"] {
        let o = allcnn(&[
            "bench", "--model", "model-a", "--batch", "2", "--iters", "1", "--mode", "train",
            "--conv", conv,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(v["mode"], "train");
        assert_eq!(v["conv"], conv);
    }
}

#[test]
fn errors_exit_nonzero_with_a_useful_message() {
    let o = allcnn(&["bench", "--model", "all-cnn-z", "--iters", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("unknown model `all-cnn-z`") && stderr(&o).contains("all-cnn-c"),
        "{}",
        stderr(&o)
    );

    let o = allcnn(&["bench", "--device", "cuda", "--iters", "1", "--batch", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--features cuda"), "{}", stderr(&o));

    let o = allcnn(&["bench", "--device", "tpu", "--iters", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("unknown device `tpu`"),
        "{}",
        stderr(&o)
    );

    let o = allcnn(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2), "clap usage errors exit 2");
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
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
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
    let t = candle_core::safetensors::load(&logits, &candle_core::Device::Cpu).unwrap();
    assert_eq!(t["logits"].dims(), &[2, 4]);
}

#[test]
fn predict_golden_tensor_matches_pytorch_logits() {
    let Some(g) = allcnn_models::testing::Golden::load("all-cnn-c") else {
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
    assert!(o.status.success(), "{}", stderr(&o));
    let t = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
    allcnn_models::testing::assert_close("cli logits", &t["logits"], g.get("logits"), 2e-5);
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
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("/nonexistent/w.safetensors"),
        "{}",
        stderr(&o)
    );
    // Corrupt weights.
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"garbage").unwrap();
    let o = allcnn(&["predict", "--weights", bad.to_str().unwrap(), "x.png"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not a valid safetensors file"),
        "{}",
        stderr(&o)
    );
    // Wrong model name.
    let o = allcnn(&[
        "predict",
        "--weights",
        bad.to_str().unwrap(),
        "--model",
        "vgg",
        "--classes",
        "10",
        "x.png",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("unknown model `vgg`"), "{}", stderr(&o));
    // Unknown dataset, missing data folder.
    let o = allcnn(&[
        "data",
        "download",
        "mnist",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("unknown dataset `mnist`"),
        "{}",
        stderr(&o)
    );
    let o = allcnn(&["data", "info", "/nonexistent/data"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/data"), "{}", stderr(&o));
}

#[test]
fn data_info_on_the_real_cifar10_folder() {
    let root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cifar10-jpg");
    if !root.is_dir() {
        eprintln!(
            "\n!!!!!!!! SKIPPED: {} not found; this test proves nothing here !!!!!!!!\n",
            root.display()
        );
        return;
    }
    let o = allcnn(&["data", "info", root.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
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
    let Some(g) = allcnn_models::testing::Golden::load("all-cnn-c") else {
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
    assert!(o.status.success(), "{}", stderr(&o));
    let t = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
    allcnn_models::testing::assert_close(
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
    assert!(o.status.success(), "{}", stderr(&o));
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
    assert_eq!(o.status.code(), Some(1));
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
    assert!(o.status.success(), "{}", stderr(&o));
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
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("allcnn") && out.contains("predict") && out.contains("--weights"),
        "bash completion"
    );
    let o = allcnn(&["man"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with(".ie") || out.contains(".TH allcnn"),
        "roff output"
    );
    assert!(out.contains("predict"));
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

#[test]
fn train_eval_predict_resume_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_folder(&data);
    let run = dir.path().join("run");
    let o = allcnn(&[
        "train",
        "--preset",
        "cifar10",
        "--model",
        "all-cnn-a",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "epochs=1",
        "batch_size=4",
        "data.preprocessing=standardize",
    ]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("finished: 1 epochs, 3 steps"),
        "{}",
        stdout(&o)
    );
    for f in [
        "config.toml",
        "metrics.jsonl",
        "checkpoint.safetensors",
        "final.safetensors",
        "learning-curve.svg",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let w = run.join("final.safetensors");

    let o = allcnn(&[
        "eval",
        "--weights",
        w.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["examples"], 12);
    assert_eq!(v["confusion"].as_array().unwrap().len(), 2);
    assert_eq!(v["per_class"][1]["name"], "dogs");

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
    assert!(o.status.success(), "{}", stderr(&o));
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
    let o = allcnn(&["train", "--resume", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
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
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn train_errors_are_clear() {
    let o = allcnn(&["train", "--preset", "mnist"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("mnist") && stderr(&o).contains("cifar10"),
        "{}",
        stderr(&o)
    );
    let o = allcnn(&["train", "--preset", "cifar10", "--out", "/tmp/x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--data"), "{}", stderr(&o));
    let o = allcnn(&[
        "train",
        "--preset",
        "cifar10",
        "--print-config",
        "no_such_key=3",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no_such_key"), "{}", stderr(&o));
    let o = allcnn(&["train", "--preset", "cifar10", "--print-config", "lr=0.01"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("lr = 0.01"), "{}", stdout(&o));
    // Switching to the scaled schedule needs no other field.
    let o = allcnn(&[
        "train",
        "--preset",
        "cifar10",
        "--print-config",
        "epochs=35",
        "schedule.kind=scaled",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("kind = \"scaled\""), "{}", stdout(&o));
    assert!(stdout(&o).contains("0.5714285714285714"), "{}", stdout(&o));
}
