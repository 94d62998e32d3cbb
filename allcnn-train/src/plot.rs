//! The learning-curve plot: a small self-contained SVG (no plotting
//! dependency), loss on the left, accuracy on the right.

use std::fmt::Write;

use crate::observer::EpochRecord;

const W: f64 = 900.0;
const H: f64 = 340.0;
const PANEL_W: f64 = 380.0;
const PANEL_H: f64 = 250.0;
const TOP: f64 = 40.0;

type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// Renders the learning curves of `history` as SVG text.
pub fn learning_curve_svg(history: &[EpochRecord], title: &str) -> String {
    let x = |r: &EpochRecord| (r.epoch + 1) as f64;
    let pts = |f: &dyn Fn(&EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|r| f(r).filter(|v| v.is_finite()).map(|v| (x(r), v)))
            .collect()
    };
    let loss: Vec<Series<'_>> = vec![
        ("train", "#1f77b4", pts(&|r| Some(r.train_loss))),
        ("val", "#2ca02c", pts(&|r| r.val_loss)),
        ("test", "#d62728", pts(&|r| r.test_loss)),
    ];
    let acc: Vec<Series<'_>> = vec![
        ("train", "#1f77b4", pts(&|r| Some(r.train_accuracy))),
        ("val", "#2ca02c", pts(&|r| r.val_accuracy)),
        ("test", "#d62728", pts(&|r| r.test_accuracy)),
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    panel(&mut s, 60.0, "loss", &loss, None);
    panel(&mut s, 510.0, "top-1 accuracy", &acc, Some((0.0, 1.0)));
    s.push_str("</svg>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn panel(
    s: &mut String,
    left: f64,
    label: &str,
    series: &[Series<'_>],
    y_range: Option<(f64, f64)>,
) {
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, _, p)| p.iter().copied())
        .collect();
    let (x0, x1) = if all.is_empty() {
        (0.0, 1.0)
    } else {
        let lo = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
        let hi = all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
        (lo.min(hi - 1.0).max(0.0), hi.max(lo + 1.0))
    };
    let (y0, y1) = y_range.unwrap_or_else(|| {
        let hi = all.iter().map(|p| p.1).fold(0.0f64, f64::max);
        (0.0, if hi > 0.0 { hi * 1.05 } else { 1.0 })
    });
    let px = |x: f64| left + (x - x0) / (x1 - x0) * PANEL_W;
    let py = |y: f64| TOP + PANEL_H - (y - y0) / (y1 - y0) * PANEL_H;
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#444"/>"##
    );
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{py}" y2="{py}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{y:.3}</text>"##,
            left + PANEL_W,
            left - 4.0,
            py(y) + 4.0,
            py = py(y)
        );
    }
    for i in 0..=4 {
        let x = x0 + (x1 - x0) * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{x:.0}</text>"#,
            px(x),
            TOP + PANEL_H + 16.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">epoch ({label})</text>"#,
        left + PANEL_W / 2.0,
        TOP + PANEL_H + 34.0
    );
    for (k, (name, color, pts)) in series.iter().enumerate() {
        if pts.is_empty() {
            continue;
        }
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y.clamp(y0, y1))))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for &(x, y) in pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"#,
                px(x),
                py(y.clamp(y0, y1))
            );
        }
        let ly = TOP + 14.0 + 16.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{name}</text>"#,
            left + PANEL_W - 70.0,
            left + PANEL_W - 50.0,
            left + PANEL_W - 45.0,
            ly + 4.0
        );
    }
}
