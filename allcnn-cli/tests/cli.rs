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
