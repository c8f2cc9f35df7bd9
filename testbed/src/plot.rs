//! Plots of a [`Report`], each as SVG and PNG (plotters):
//!
//! - `completion`: fraction of the audience holding the whole bundle over time since
//!   publishing, one curve per strategy and one for the oracle bound;
//! - `completion_cdf`: the same as a CDF over a logarithmic time axis (shows the first
//!   minutes, which the linear plot squeezes);
//! - `bytes_per_node`: bytes each node put on the air, per strategy (log scale);
//! - `contact_utilisation`: CDF over the contacts usable after publishing of the share
//!   of their capacity (both directions) that was used, per strategy.
//!
//! **Fonts.** plotters is built without a system font library, so text needs a TrueType
//! font registered at run time. We load the first of `$MULE_TESTBED_FONT`,
//! DejaVu Sans from the usual system paths (package `fonts-dejavu-core`). Without a
//! font, SVG files are still written (SVG text is rendered by the viewer; plotters only
//! estimates label sizes) and PNG files are skipped with a warning naming the missing
//! font: a PNG without axis labels would be misleading.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::{Report, ReportError, utilisation};
use crate::trace::Trace;

/// Where we look for a font, after `$MULE_TESTBED_FONT`.
pub const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
];

/// Registers a font for plotters once; returns the path used, or `None` if none found.
pub fn font() -> Option<&'static str> {
    static FONT: OnceLock<Option<String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let env = std::env::var("MULE_TESTBED_FONT").ok();
        let candidates = env
            .iter()
            .map(String::as_str)
            .chain(FONT_PATHS.iter().copied());
        for path in candidates {
            if let Ok(bytes) = std::fs::read(path) {
                // Fonts are registered for the life of the process: leaking is the API.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Some(path.to_owned());
                }
            }
        }
        None
    })
    .as_deref()
}

/// Colour of a strategy's curves.
fn colour(name: &str) -> RGBColor {
    match name {
        "mule" => RGBColor(31, 119, 180),
        "rarest" => RGBColor(44, 160, 44),
        "epidemic" => RGBColor(214, 39, 40),
        "client-server" => RGBColor(148, 103, 189),
        "mule-strict" => RGBColor(23, 190, 207),
        "oracle" => RGBColor(0, 0, 0),
        _ => RGBColor(255, 127, 14),
    }
}

/// The plot kinds (file stems).
pub const PLOTS: [&str; 4] = [
    "completion",
    "completion_cdf",
    "bytes_per_node",
    "contact_utilisation",
];

/// Draws every plot as SVG, and as PNG if a font is available. Returns warnings (e.g.
/// PNG skipped) for the caller to print.
pub fn write_all(report: &Report, trace: &Trace, dir: &Path) -> Result<Vec<String>, ReportError> {
    let mut warnings = Vec::new();
    let have_font = font().is_some();
    if !have_font {
        warnings.push(format!(
            "no TrueType font found (set MULE_TESTBED_FONT or install fonts-dejavu-core: {}); \
             PNG plots skipped, SVG plots written",
            FONT_PATHS[0]
        ));
    }
    for name in PLOTS {
        let svg = dir.join(format!("{name}.svg"));
        {
            let root = SVGBackend::new(&svg, (900, 560)).into_drawing_area();
            draw(name, root, report, trace).map_err(|why| ReportError::Plot {
                path: svg.display().to_string(),
                why,
            })?;
        }
        if have_font {
            let png = dir.join(format!("{name}.png"));
            let root = BitMapBackend::new(&png, (900, 560)).into_drawing_area();
            draw(name, root, report, trace).map_err(|why| ReportError::Plot {
                path: png.display().to_string(),
                why,
            })?;
        }
    }
    Ok(warnings)
}

fn draw<DB: DrawingBackend>(
    name: &str,
    root: DrawingArea<DB, Shift>,
    report: &Report,
    trace: &Trace,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let r = match name {
        "completion" => completion(&root, report, false),
        "completion_cdf" => completion(&root, report, true),
        "bytes_per_node" => bytes_per_node(&root, report),
        "contact_utilisation" => contact_utilisation(&root, report, trace),
        _ => Err(format!("unknown plot {name}")),
    };
    r?;
    root.present().map_err(|e| e.to_string())
}

/// Sorted completion times (seconds since publishing) of the audience, per curve.
fn curves(report: &Report) -> Vec<(String, Vec<f64>)> {
    let sc = &report.info.scenario;
    let aud: Vec<usize> = (0..sc.audience.len()).filter(|&v| sc.audience[v]).collect();
    let mut out = Vec::new();
    let mut o: Vec<f64> = aud
        .iter()
        .map(|&v| report.oracle.complete[v] - sc.publish_at)
        .filter(|t| t.is_finite())
        .collect();
    o.sort_by(f64::total_cmp);
    out.push(("oracle".to_owned(), o));
    // Drawn in this order, widest first: the oracle, then the strategies in reverse, so
    // the first strategy (Mule) ends up on top and identical curves stay visible as rims.
    for oc in report.outcomes.iter().rev() {
        let mut t: Vec<f64> = aud
            .iter()
            .filter_map(|&v| oc.nodes[v].complete_at.map(|c| c - sc.publish_at))
            .collect();
        t.sort_by(f64::total_cmp);
        out.push((oc.strategy.clone(), t));
    }
    out
}

fn completion<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    report: &Report,
    log: bool,
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let sc = &report.info.scenario;
    let n = sc.audience_size().max(1) as f64;
    let horizon = (report.info.start_s + report.info.duration_s - sc.publish_at).max(1.0);
    let cs = curves(report);
    let names = labels(&cs, horizon);
    let title = format!(
        "{}: audience complete ({} nodes)",
        report.info.trace,
        sc.audience_size()
    );
    let steps = |t: &[f64], scale: f64, x0: f64, x1: f64| {
        let mut pts = vec![(x0, 0.0)];
        for (i, &x) in t.iter().enumerate() {
            let x = (x / scale).max(x0);
            pts.push((x, i as f64 / n));
            pts.push((x, (i + 1) as f64 / n));
        }
        pts.push((x1, t.len() as f64 / n));
        pts
    };
    if log {
        let x1 = horizon;
        let x0 = 1.0f64;
        let mut chart = ChartBuilder::on(root)
            .caption(format!("{title}, log time"), ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d((x0..x1).log_scale(), 0.0..1.0f64)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("seconds since publishing (log)")
            .y_desc("fraction of audience complete")
            .draw()
            .map_err(e)?;
        for (i, (name, t)) in cs.iter().enumerate() {
            let c = colour(name);
            let w = width(i, cs.len());
            chart
                .draw_series(LineSeries::new(steps(t, 1.0, x0, x1), c.stroke_width(w)))
                .map_err(e)?
                .label(names[i].clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
        }
        legend(&mut chart).map_err(e)
    } else {
        let x1 = horizon / 3600.0;
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..x1, 0.0..1.0f64)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("hours since publishing")
            .y_desc("fraction of audience complete")
            .draw()
            .map_err(e)?;
        for (i, (name, t)) in cs.iter().enumerate() {
            let c = colour(name);
            let w = width(i, cs.len());
            chart
                .draw_series(LineSeries::new(
                    steps(t, 3600.0, 0.0, x1),
                    c.stroke_width(w),
                ))
                .map_err(e)?
                .label(names[i].clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
        }
        legend(&mut chart).map_err(e)
    }
}

/// Legend labels: a curve that cannot be told apart from an earlier one at this scale
/// (same number of completions, every completion within 0.1% of the horizon) says so.
fn labels(cs: &[(String, Vec<f64>)], horizon: f64) -> Vec<String> {
    let tol = horizon * 1e-3;
    cs.iter()
        .enumerate()
        .map(|(i, (name, t))| {
            let same: Vec<&str> = cs[..i]
                .iter()
                .filter(|(_, u)| {
                    u.len() == t.len() && u.iter().zip(t).all(|(a, b)| (a - b).abs() <= tol)
                })
                .map(|(n, _)| n.as_str())
                .collect();
            if same.is_empty() {
                name.clone()
            } else {
                format!("{name} (≈ {})", same.join(", "))
            }
        })
        .collect()
}

/// Curves drawn first are drawn wider, so identical curves stay visible.
fn width(i: usize, n: usize) -> u32 {
    2 + 3 * n.saturating_sub(i + 1) as u32 / 2
}

fn legend<'a, DB: DrawingBackend + 'a, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    X: plotters::coord::ranged1d::Ranged,
    Y: plotters::coord::ranged1d::Ranged,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
}

fn bytes_per_node<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    report: &Report,
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let nodes = report.info.nodes as f64;
    let max = report
        .outcomes
        .iter()
        .flat_map(|o| o.nodes.iter().map(|n| n.bytes_sent))
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("{}: bytes on the air per node", report.info.trace),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..nodes - 0.5, (1e3f64..max * 30.0).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("node")
        .y_desc("bytes sent (log)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| human_bytes(*v))
        .draw()
        .map_err(e)?;
    let k = report.outcomes.len().max(1) as f64;
    for (si, o) in report.outcomes.iter().enumerate() {
        let c = colour(&o.strategy);
        let off = (si as f64 + 0.5) / k - 0.5;
        let w = 0.8 / k;
        chart
            .draw_series(o.nodes.iter().enumerate().map(|(v, n)| {
                let x = v as f64 + off * 0.8;
                Rectangle::new(
                    [
                        (x - w / 2.0, 1e3),
                        (x + w / 2.0, (n.bytes_sent as f64).max(1e3)),
                    ],
                    c.filled(),
                )
            }))
            .map_err(e)?
            .label(o.strategy.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(e)
}

fn contact_utilisation<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    report: &Report,
    trace: &Trace,
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let sc = &report.info.scenario;
    let rate = sc.rate.bytes_per_s();
    let usable = trace
        .contacts
        .iter()
        .filter(|c| c.end > sc.publish_at)
        .count()
        .max(1) as f64;
    let lo = 1e-6f64;
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!(
                "{}: contact utilisation ({} contacts after publishing)",
                report.info.trace, usable as u64
            ),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((lo..1.0f64).log_scale(), 0.0..1.0f64)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("share of the contact's capacity used (log; unused contacts at the left edge)")
        .y_desc("fraction of contacts (CDF)")
        .draw()
        .map_err(e)?;
    for o in &report.outcomes {
        let c = colour(&o.strategy);
        let mut u: Vec<f64> = o
            .contacts
            .iter()
            .map(|x| utilisation(x.bytes, x.usable_s, rate).clamp(lo, 1.0))
            .collect();
        u.sort_by(f64::total_cmp);
        let unused = usable - u.len() as f64;
        let mut pts = vec![(lo, unused / usable)];
        // Thin to at most ~400 points so the SVG stays small.
        let step = (u.len() / 400).max(1);
        for (i, &x) in u.iter().enumerate() {
            if i % step == 0 || i + 1 == u.len() {
                pts.push((x, (unused + i as f64 + 1.0) / usable));
            }
        }
        pts.push((1.0, 1.0));
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(e)?
            .label(o.strategy.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    legend(&mut chart).map_err(e)
}

fn human_bytes(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.0} GB", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.0} MB", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0} kB", v / 1e3)
    } else {
        format!("{v:.0} B")
    }
}
