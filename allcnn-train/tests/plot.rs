//! The learning-curve figure and metrics.csv from a hand-made history.

use allcnn_train::{observer::EpochRecord, plot::learning_curve_svg, plot::metrics_csv};

/// `n` epochs: a 2-epoch warm-up (lr rising), x0.1 drops after epochs 5
/// and 8, test accuracy from 30% up, a validation split only in the first
/// two epochs.
fn history(n: u64) -> Vec<EpochRecord> {
    (0..n)
        .map(|e| EpochRecord {
            epoch: e,
            step: 10 * (e + 1),
            lr: match e {
                0 => 0.05,
                1..=4 => 0.1,
                5..=7 => 0.01,
                _ => 0.001,
            },
            train_loss: 2.0 / (e + 1) as f64,
            train_accuracy: 0.2 + 0.05 * e as f64,
            dead_fraction: 0.0,
            silent_classes: Vec::new(),
            val_accuracy: (e < 2).then_some(0.25),
            val_loss: (e < 2).then_some(1.9),
            test_accuracy: Some(0.3 + 0.05 * e as f64),
            test_loss: Some(1.8 / (e + 1) as f64),
            images_per_sec: 100.0,
            seconds: 60.0,
        })
        .collect()
}

/// The contents of every `<text>` element.
fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

#[test]
fn curves_have_labelled_axes_error_in_percent_and_lr_drop_markers() {
    let svg = learning_curve_svg(&history(10), "all-cnn-c (run)", false).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..60]);
    let t = texts(&svg);
    for label in [
        "all-cnn-c (run)",
        "epoch",
        "cross-entropy loss",
        "top-1 error (%)",
        "train (dropout on)",
        "val",
        "test",
        "lr drop",
    ] {
        assert!(t.iter().any(|x| x == label), "no `{label}` in {t:?}");
    }
    // The warm-up's rise is not a drop: two drops, each a vertical line
    // at the epoch boundary, in both panels, and one legend entry a panel.
    assert_eq!(t.iter().filter(|x| *x == "lr drop").count(), 2);
    // Axis ticks are whole epochs, each once (the hand-made plot printed
    // `0 0 1 2 2` for a short run), in both panels, before the legend.
    let short = texts(&learning_curve_svg(&history(3), "short", false).unwrap());
    let x_ticks = |legend: &str| {
        short
            .windows(5)
            .any(|w| w[..4] == ["0", "1", "2", "3"] && w[4] == legend)
    };
    assert!(
        x_ticks("train") && x_ticks("train (dropout on)"),
        "{short:?}"
    );
    // The error axis runs from 0 to the next ten above the worst error
    // (80% here), in whole percents.
    let at = short.iter().position(|x| x == "top-1 error (%)").unwrap();
    assert_eq!(
        short[at + 2..at + 11],
        ["0", "10", "20", "30", "40", "50", "60", "70", "80"]
    );
}

#[test]
fn log_loss_puts_the_loss_on_a_log_axis() {
    let svg = learning_curve_svg(&history(10), "log", true).unwrap();
    let t = texts(&svg);
    assert!(
        t.iter().any(|x| x == "cross-entropy loss (log scale)"),
        "{t:?}"
    );
    // Falls back to a linear axis when there is nothing positive to log.
    let mut h = history(2);
    for r in &mut h {
        r.train_loss = 0.0;
        r.test_loss = None;
    }
    let svg = learning_curve_svg(&h, "zero", true).unwrap();
    assert!(texts(&svg).iter().any(|x| x == "cross-entropy loss"));
    // And an empty history still draws.
    assert!(learning_curve_svg(&[], "empty", false)
        .unwrap()
        .starts_with("<svg"));
}

#[test]
fn metrics_csv_has_one_row_per_epoch_with_errors_in_percent() {
    let csv = metrics_csv(&history(3));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4);
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(header[0], "epoch");
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let row: Vec<&str> = lines[3].split(',').collect();
    assert_eq!(row.len(), header.len());
    assert_eq!(row[col("epoch")], "3");
    assert_eq!(row[col("lr")], "0.1");
    // Test accuracy 40% after epoch 3: 60% error (to f64 rounding).
    let test_err: f64 = row[col("test_error_pct")].parse().unwrap();
    assert!((test_err - 60.0).abs() < 1e-9, "{test_err}");
    // No validation split after epoch 2: empty cells.
    assert_eq!(row[col("val_loss")], "");
    assert_eq!(row[col("val_error_pct")], "");
    assert_eq!(lines[1].split(',').nth(col("val_error_pct")).unwrap(), "75");
}
