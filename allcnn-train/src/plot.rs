//! Figures of a run, drawn with plotters (SVG): the learning curves, and
//! the metrics as CSV beside them.

use std::fmt::Write;

use plotters::prelude::*;

use crate::observer::EpochRecord;
use crate::TrainError;

const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(44, 160, 44);
const TEST: RGBColor = RGBColor(214, 39, 40);
const DROP: RGBColor = RGBColor(150, 150, 150);
/// Epochs up to which every epoch also gets a dot.
const DOTS_UP_TO: usize = 40;

/// One curve: its legend name, colour and `(epoch, value)` points.
type Series = (&'static str, RGBColor, Vec<(u64, f64)>);

/// The learning curves of `history` as an SVG document: the cross-entropy
/// loss (left; on a log axis with `log_loss`) and the top-1 error in
/// percent, as the paper reports it (right), for the training, validation
/// and test splits, against the epoch (1 = the end of the first). Grey
/// vertical lines mark where the learning rate dropped (between the last
/// epoch at the old rate and the first at the new one).
///
/// # Errors
/// [`TrainError::Plot`] if plotters cannot draw (it does not fail on an
/// SVG string in practice).
pub fn learning_curve_svg(
    history: &[EpochRecord],
    title: &str,
    log_loss: bool,
) -> Result<String, TrainError> {
    let pts = |f: &dyn Fn(&EpochRecord) -> Option<f64>| -> Vec<(u64, f64)> {
        history
            .iter()
            .filter_map(|r| f(r).filter(|v| v.is_finite()).map(|v| (r.epoch + 1, v)))
            .collect()
    };
    let err = |a: f64| 100.0 * (1.0 - a);
    let loss: Vec<Series> = vec![
        ("train", TRAIN, pts(&|r| Some(r.train_loss))),
        ("val", VAL, pts(&|r| r.val_loss)),
        ("test", TEST, pts(&|r| r.test_loss)),
    ];
    let error: Vec<Series> = vec![
        (
            "train (dropout on)",
            TRAIN,
            pts(&|r| Some(err(r.train_accuracy))),
        ),
        ("val", VAL, pts(&|r| r.val_accuracy.map(err))),
        ("test", TEST, pts(&|r| r.test_accuracy.map(err))),
    ];
    // The epoch boundary after which the rate is lower than before (a
    // warm-up raises it: not marked).
    let drops: Vec<u64> = history
        .windows(2)
        .filter(|w| w[1].lr < w[0].lr * (1.0 - 1e-9))
        .map(|w| w[0].epoch + 1)
        .collect();
    let epochs = history.iter().map(|r| r.epoch + 1).max().unwrap_or(1);
    let mut svg = String::new();
    draw_curves(&mut svg, title, epochs, &loss, &error, &drops, log_loss).map_err(|reason| {
        TrainError::Plot {
            what: "learning curve".into(),
            reason,
        }
    })?;
    Ok(svg)
}

fn draw_curves(
    svg: &mut String,
    title: &str,
    epochs: u64,
    loss: &[Series],
    error: &[Series],
    drops: &[u64],
    log_loss: bool,
) -> Result<(), String> {
    let root = SVGBackend::with_string(svg, (960, 380)).into_drawing_area();
    root.fill(&WHITE).map_err(text)?;
    let root = root.titled(title, ("sans-serif", 16)).map_err(text)?;
    let (left, right) = root.split_horizontally(480);
    let x_range = 0..epochs.max(1);
    let values = |s: &[Series]| -> Vec<f64> {
        s.iter()
            .flat_map(|(_, _, p)| p.iter().map(|p| p.1))
            .collect()
    };

    // Loss: linear from 0, or logarithmic between the extremes.
    let l = values(loss);
    let hi = l.iter().copied().fold(0.0f64, f64::max);
    let lo = l
        .iter()
        .copied()
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let mut builder = ChartBuilder::on(&left);
    builder
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56);
    if log_loss && lo.is_finite() && hi > lo {
        let mut chart = builder
            .build_cartesian_2d(x_range.clone(), (lo * 0.9..hi * 1.1).log_scale())
            .map_err(text)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("cross-entropy loss (log scale)")
            .y_label_formatter(&|v| format!("{v:.3}"))
            .draw()
            .map_err(text)?;
        draw_series(&mut chart, loss, drops, (lo * 0.9, hi * 1.1))?;
    } else {
        let top = if hi > 0.0 { hi * 1.05 } else { 1.0 };
        let mut chart = builder
            .build_cartesian_2d(x_range.clone(), 0.0..top)
            .map_err(text)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("cross-entropy loss")
            .draw()
            .map_err(text)?;
        draw_series(&mut chart, loss, drops, (0.0, top))?;
    }

    // Error in percent, from 0 to the next multiple of 10 above the worst.
    let worst = values(error).into_iter().fold(0.0f64, f64::max);
    let top = ((worst / 10.0).ceil() * 10.0).clamp(10.0, 100.0);
    let mut chart = ChartBuilder::on(&right)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x_range, 0.0..top)
        .map_err(text)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("top-1 error (%)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(text)?;
    draw_series(&mut chart, error, drops, (0.0, top))?;
    root.present().map_err(text)?;
    Ok(())
}

/// Draws `series` (lines, dots while there are few epochs), the lr-drop
/// markers from `y.0` to `y.1`, and the legend, on any y axis of f64.
fn draw_series<'a, DB, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordu64, Y>>,
    series: &[Series],
    drops: &[u64],
    y: (f64, f64),
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    Y: Ranged<ValueType = f64>,
{
    for (i, &x) in drops.iter().enumerate() {
        let line = chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, y.0), (x, y.1)],
                DROP.stroke_width(1),
            )))
            .map_err(text)?;
        if i == 0 {
            line.label("lr drop")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], DROP.stroke_width(1)));
        }
    }
    for (name, colour, points) in series.iter().filter(|s| !s.2.is_empty()) {
        let colour = *colour;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(text)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        if points.len() <= DOTS_UP_TO {
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                .map_err(text)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(text)?;
    Ok(())
}

/// A plotters error as text (its error types borrow the backend).
fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The per-epoch metrics of `history` as CSV (a header, then one row per
/// epoch; empty cells where a split is absent), for spreadsheets and
/// pandas: `epoch` counts from 1, errors are in percent.
pub fn metrics_csv(history: &[EpochRecord]) -> String {
    let mut s = String::from(
        "epoch,step,lr,train_loss,train_error_pct,val_loss,val_error_pct,test_loss,test_error_pct,dead_fraction,images_per_sec,seconds\n",
    );
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let pct = |a: Option<f64>| opt(a.map(|a| 100.0 * (1.0 - a)));
    for r in history {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{}",
            r.epoch + 1,
            r.step,
            r.lr,
            r.train_loss,
            100.0 * (1.0 - r.train_accuracy),
            opt(r.val_loss),
            pct(r.val_accuracy),
            opt(r.test_loss),
            pct(r.test_accuracy),
            r.dead_fraction,
            r.images_per_sec,
            r.seconds
        );
    }
    s
}

/// One row of [`comparison_svg`]: a model's label, the paper's test error
/// and ours (percent), where measured.
pub(crate) struct ComparisonRow<'a> {
    /// The paper's name of the model.
    pub label: &'a str,
    /// The paper's error.
    pub paper: f64,
    /// Ours, once evaluated.
    pub ours: Option<f64>,
}

/// The test error of each model, ours beside the paper's, as points on one
/// horizontal axis per model (a model not yet evaluated shows the paper's
/// point only).
pub(crate) fn comparison_svg(
    title: &str,
    rows: &[ComparisonRow<'_>],
) -> Result<String, TrainError> {
    let mut svg = String::new();
    draw_comparison(&mut svg, title, rows).map_err(|reason| TrainError::Plot {
        what: "comparison with the paper".into(),
        reason,
    })?;
    Ok(svg)
}

fn draw_comparison(
    svg: &mut String,
    title: &str,
    rows: &[ComparisonRow<'_>],
) -> Result<(), String> {
    let n = rows.len() as u32;
    let height = 110 + 30 * rows.len().max(1) as u32;
    let root = SVGBackend::with_string(svg, (760, height)).into_drawing_area();
    root.fill(&WHITE).map_err(text)?;
    let worst = rows
        .iter()
        .flat_map(|r| [Some(r.paper), r.ours])
        .flatten()
        .fold(0.0f64, f64::max);
    let right = ((worst / 10.0).ceil() * 10.0).clamp(10.0, 100.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(130)
        .build_cartesian_2d(0.0..right, (0..n.max(1)).into_segmented())
        .map_err(text)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows.len().max(1))
        .x_desc("test error (%)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => rows
                .get(*i as usize)
                .map_or_else(String::new, |r| r.label.to_string()),
            _ => String::new(),
        })
        .draw()
        .map_err(text)?;
    let at = |i: usize| SegmentValue::CenterOf(i as u32);
    chart
        .draw_series(rows.iter().enumerate().filter_map(|(i, r)| {
            let ours = r.ours?;
            Some(PathElement::new(
                vec![(r.paper, at(i)), (ours, at(i))],
                DROP.stroke_width(1),
            ))
        }))
        .map_err(text)?;
    chart
        .draw_series(
            rows.iter()
                .enumerate()
                .map(|(i, r)| Cross::new((r.paper, at(i)), 6, BLACK.stroke_width(2))),
        )
        .map_err(text)?
        .label("paper")
        .legend(|(x, y)| Cross::new((x + 10, y), 6, BLACK.stroke_width(2)));
    chart
        .draw_series(
            rows.iter()
                .enumerate()
                .filter_map(|(i, r)| Some(Circle::new((r.ours?, at(i)), 6, TEST.filled()))),
        )
        .map_err(text)?
        .label("allcnn")
        .legend(|(x, y)| Circle::new((x + 10, y), 6, TEST.filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(text)?;
    root.present().map_err(text)?;
    Ok(())
}
