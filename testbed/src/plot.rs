//! Plots of a [`Report`], each as SVG and PNG (plotters):
//!
//! - `completion`: fraction of the audience holding the whole bundle over time since
//!   publishing, one curve per strategy and one for the oracle bound;
//! - `completion_cdf`: the same over a logarithmic time axis that starts a decade below
//!   the first completion (shows the first minutes, which the linear plot squeezes);
//! - `ratio_to_bound`: CDF over the audience of each node's completion time divided by
//!   the oracle's bound for that node (1 = on the bound);
//! - `bytes_per_node`: bytes each node put on the air, nodes ranked per strategy from
//!   the busiest (log scale; one line per strategy, readable for hundreds of nodes);
//! - `bytes_over_time`: cumulative bytes on the air since publishing, per strategy;
//! - `completion_vs_bytes`: fraction of the audience complete against the bytes spent
//!   so far (what a strategy buys with its airtime);
//! - `contact_utilisation`: CDF over the contacts usable after publishing of the share
//!   of their capacity (both directions) that was used, per strategy.
//!
//! Legends sit in a panel right of the plot, so they never hide a curve; curves that
//! coincide are drawn wider underneath and say `≈` in the legend.
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
pub const PLOTS: [&str; 7] = [
    "completion",
    "completion_cdf",
    "ratio_to_bound",
    "bytes_per_node",
    "bytes_over_time",
    "completion_vs_bytes",
    "contact_utilisation",
];

/// Pixel size of every plot; the rightmost [`LEGEND_W`] pixels hold the legend.
const SIZE: (u32, u32) = (1000, 560);
const LEGEND_W: u32 = 210;

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
    // The cumulative bytes on the air serve two plots; each plot's curves serve both files.
    let cum = cumulative_bytes(report, trace);
    for name in PLOTS {
        let svg = dir.join(format!("{name}.svg"));
        let (axes, curves) =
            curves_of(name, report, trace, &cum).map_err(|why| ReportError::Plot {
                path: svg.display().to_string(),
                why,
            })?;
        {
            let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
            draw(root, &axes, &curves).map_err(|why| ReportError::Plot {
                path: svg.display().to_string(),
                why,
            })?;
        }
        if have_font {
            let png = dir.join(format!("{name}.png"));
            let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
            draw(root, &axes, &curves).map_err(|why| ReportError::Plot {
                path: png.display().to_string(),
                why,
            })?;
        }
    }
    Ok(warnings)
}

/// One curve: its legend label, colour and points.
struct Curve {
    label: String,
    colour: RGBColor,
    points: Vec<(f64, f64)>,
}

/// How a plot's axes look.
struct Axes {
    title: String,
    x_desc: String,
    y_desc: String,
    x: (f64, f64),
    y: (f64, f64),
    x_log: bool,
    y_log: bool,
    y_bytes: bool,
    x_bytes: bool,
}

impl Axes {
    /// Linear axes over `x` and `y`, plain numbers on both.
    fn new(title: String, x_desc: &str, y_desc: &str, x: (f64, f64), y: (f64, f64)) -> Axes {
        Axes {
            title,
            x_desc: x_desc.to_owned(),
            y_desc: y_desc.to_owned(),
            x,
            y,
            x_log: false,
            y_log: false,
            y_bytes: false,
            x_bytes: false,
        }
    }

    /// A logarithmic x axis.
    fn x_log(mut self) -> Axes {
        self.x_log = true;
        self
    }

    /// A logarithmic y axis.
    fn y_log(mut self) -> Axes {
        self.y_log = true;
        self
    }

    /// The x axis counts bytes (ticks in kB, MB, ...).
    fn x_bytes(mut self) -> Axes {
        self.x_bytes = true;
        self
    }

    /// The y axis counts bytes.
    fn y_bytes(mut self) -> Axes {
        self.y_bytes = true;
        self
    }
}

/// Cumulative bytes on the air over time, per strategy (see [`cumulative_bytes`]).
type Cumulative = Vec<(String, Vec<(f64, f64)>)>;

/// The axes and curves of plot `name`.
fn curves_of(
    name: &str,
    report: &Report,
    trace: &Trace,
    cum: &Cumulative,
) -> Result<(Axes, Vec<Curve>), String> {
    Ok(match name {
        "completion" => completion(report, false),
        "completion_cdf" => completion(report, true),
        "ratio_to_bound" => ratio_to_bound(report),
        "bytes_per_node" => bytes_per_node(report),
        "bytes_over_time" => bytes_over_time(report, cum),
        "completion_vs_bytes" => completion_vs_bytes(report, cum),
        "contact_utilisation" => contact_utilisation(report, trace),
        _ => return Err(format!("unknown plot {name}")),
    })
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    axes: &Axes,
    curves: &[Curve],
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    plot(&root, axes, curves)?;
    root.present().map_err(|e| e.to_string())
}

/// Draws `curves` (first drawn widest, so that identical curves stay visible as rims)
/// on `axes`, with the legend in a panel on the right.
fn plot<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    axes: &Axes,
    curves: &[Curve],
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let (area, panel) = root.split_horizontally(SIZE.0 - LEGEND_W);
    let mut b = ChartBuilder::on(&area);
    b.caption(&axes.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(if axes.y_bytes { 75 } else { 55 });
    let fmt_x = |v: &f64| {
        if axes.x_bytes {
            human_bytes(*v)
        } else if axes.x_log {
            short(*v)
        } else {
            format!("{v:.1}")
        }
    };
    let fmt_y = |v: &f64| {
        if axes.y_bytes {
            human_bytes(*v)
        } else {
            format!("{v:.2}")
        }
    };
    macro_rules! series {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(axes.x_desc.as_str())
                .y_desc(axes.y_desc.as_str())
                .x_label_formatter(&fmt_x)
                .y_label_formatter(&fmt_y)
                .draw()
                .map_err(e)?;
            for (i, c) in curves.iter().enumerate() {
                let w = width(i, curves.len());
                chart
                    .draw_series(LineSeries::new(c.points.clone(), c.colour.stroke_width(w)))
                    .map_err(e)?;
            }
        }};
    }
    let (x0, x1) = axes.x;
    let (y0, y1) = axes.y;
    match (axes.x_log, axes.y_log) {
        (false, false) => series!(b.build_cartesian_2d(x0..x1, y0..y1).map_err(e)?),
        (true, false) => series!(
            b.build_cartesian_2d((x0..x1).log_scale(), y0..y1)
                .map_err(e)?
        ),
        (false, true) => series!(
            b.build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(e)?
        ),
        (true, true) => series!(
            b.build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
                .map_err(e)?
        ),
    }
    legend_panel(&panel, curves).map_err(e)
}

/// The legend, top to bottom in the order the strategies were run (the oracle last).
fn legend_panel<DB: DrawingBackend>(
    panel: &DrawingArea<DB, Shift>,
    curves: &[Curve],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let font = ("sans-serif", 15).into_font();
    let mut y = 50;
    for c in curves.iter().rev() {
        panel.draw(&PathElement::new(
            vec![(6, y), (30, y)],
            c.colour.stroke_width(3),
        ))?;
        // Long labels (`a (≈ b, c)`) wrap onto a second line.
        let (first, rest) = match c.label.find(" (") {
            Some(i) if c.label.len() > 22 => (&c.label[..i], Some(&c.label[i + 1..])),
            _ => (c.label.as_str(), None),
        };
        panel.draw(&Text::new(first.to_string(), (36, y - 8), font.clone()))?;
        if let Some(r) = rest {
            y += 18;
            panel.draw(&Text::new(r.to_string(), (36, y - 8), font.clone()))?;
        }
        y += 26;
    }
    Ok(())
}

/// Curves drawn first are drawn wider, so identical curves stay visible.
fn width(i: usize, n: usize) -> u32 {
    2 + 3 * n.saturating_sub(i + 1) as u32 / 2
}

/// Sorted completion times (seconds since publishing) of the audience, per curve: the
/// oracle first, then the strategies in reverse (the first strategy, Mule, on top).
fn completion_times(report: &Report) -> Vec<(String, Vec<f64>)> {
    let sc = &report.info.scenario;
    let aud = audience(report);
    let mut out = Vec::new();
    let mut o: Vec<f64> = aud
        .iter()
        .map(|&v| report.oracle.complete[v] - sc.publish_at)
        .filter(|t| t.is_finite())
        .collect();
    o.sort_by(f64::total_cmp);
    out.push(("oracle".to_owned(), o));
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

fn audience(report: &Report) -> Vec<usize> {
    let sc = &report.info.scenario;
    (0..sc.audience.len()).filter(|&v| sc.audience[v]).collect()
}

fn horizon(report: &Report) -> f64 {
    let sc = &report.info.scenario;
    (report.info.start_s + report.info.duration_s - sc.publish_at).max(1.0)
}

/// A step CDF of sorted values `t` over a population of `n`, from `x0` to `x1`.
fn steps(t: &[f64], n: f64, x0: f64, x1: f64) -> Vec<(f64, f64)> {
    let mut pts = vec![(x0, 0.0)];
    for (i, &x) in t.iter().enumerate() {
        let x = x.clamp(x0, x1);
        pts.push((x, i as f64 / n));
        pts.push((x, (i + 1) as f64 / n));
    }
    pts.push((x1, t.len() as f64 / n));
    pts
}

/// Turns named series (drawing order) into curves with `≈` labels for coinciding ones.
fn to_curves(
    named: Vec<(String, Vec<f64>)>,
    tol: f64,
    points: impl Fn(&[f64]) -> Vec<(f64, f64)>,
) -> Vec<Curve> {
    let labels = labels(&named, tol);
    named
        .iter()
        .zip(labels)
        .map(|((name, t), label)| Curve {
            label,
            colour: colour(name),
            points: points(t),
        })
        .collect()
}

fn completion(report: &Report, log: bool) -> (Axes, Vec<Curve>) {
    let sc = &report.info.scenario;
    let n = sc.audience_size().max(1) as f64;
    let h = horizon(report);
    let named = completion_times(report);
    let title = format!(
        "{}: audience complete ({} nodes){}",
        report.info.trace,
        sc.audience_size(),
        if log { ", log time" } else { "" }
    );
    if log {
        // A decade below the first completion of any curve, so that no decade is empty.
        let first = named
            .iter()
            .flat_map(|(_, t)| t.first().copied())
            .filter(|&t| t > 0.0)
            .fold(f64::INFINITY, f64::min);
        let x0 = if first.is_finite() {
            10f64.powf((first.log10()).floor()).max(1e-3)
        } else {
            1.0
        };
        let x1 = h.max(x0 * 10.0);
        let curves = to_curves(named, h * 1e-3, |t| steps(t, n, x0, x1));
        (
            Axes::new(
                title,
                "seconds since publishing (log)",
                "fraction of audience complete",
                (x0, x1),
                (0.0, 1.0),
            )
            .x_log(),
            curves,
        )
    } else {
        let x1 = h / 3600.0;
        let curves = to_curves(named, h * 1e-3, |t| {
            let hours: Vec<f64> = t.iter().map(|x| x / 3600.0).collect();
            steps(&hours, n, 0.0, x1)
        });
        (
            Axes::new(
                title,
                "hours since publishing",
                "fraction of audience complete",
                (0.0, x1),
                (0.0, 1.0),
            ),
            curves,
        )
    }
}

/// Per audience node: completion time / the oracle's bound for it, sorted, per strategy.
fn ratio_to_bound(report: &Report) -> (Axes, Vec<Curve>) {
    let sc = &report.info.scenario;
    let aud = audience(report);
    let n = aud.len().max(1) as f64;
    let mut named = Vec::new();
    let mut max: f64 = 2.0;
    for oc in report.outcomes.iter().rev() {
        let mut r: Vec<f64> = aud
            .iter()
            .filter_map(|&v| {
                let bound = report.oracle.complete[v] - sc.publish_at;
                let got = oc.nodes[v].complete_at? - sc.publish_at;
                (bound.is_finite() && bound > 0.0).then(|| (got / bound).max(1.0))
            })
            .collect();
        r.sort_by(f64::total_cmp);
        if let Some(&m) = r.last() {
            max = max.max(m);
        }
        named.push((oc.strategy.clone(), r));
    }
    let x1 = max * 1.1;
    let curves = to_curves(named, 1e-3, |t| steps(t, n, 1.0, x1));
    (
        Axes::new(
            format!(
                "{}: completion time / oracle bound, per node",
                report.info.trace
            ),
            "ratio to the node's bound (log; 1 = on the bound)",
            "fraction of audience (CDF)",
            (1.0, x1),
            (0.0, 1.0),
        )
        .x_log(),
        curves,
    )
}

fn bytes_per_node(report: &Report) -> (Axes, Vec<Curve>) {
    let nodes = report.info.nodes as f64;
    let mut max: f64 = 2e3;
    let mut named = Vec::new();
    for o in report.outcomes.iter().rev() {
        let mut b: Vec<f64> = o
            .nodes
            .iter()
            .map(|n| (n.bytes_sent as f64).max(1e3))
            .collect();
        b.sort_by(|x, y| y.total_cmp(x));
        if let Some(&m) = b.first() {
            max = max.max(m);
        }
        named.push((o.strategy.clone(), b));
    }
    let curves = to_curves(named, 0.5, |b| {
        b.iter()
            .enumerate()
            .flat_map(|(i, &v)| [(i as f64 + 1.0, v), (i as f64 + 2.0, v)])
            .collect()
    });
    (
        Axes::new(
            format!(
                "{}: bytes on the air per node, busiest first",
                report.info.trace
            ),
            "node rank (1 = the node that sent most)",
            "bytes sent (log; under 1 kB at the floor)",
            (1.0, nodes + 1.0),
            (1e3, max * 2.0),
        )
        .y_log()
        .y_bytes(),
        curves,
    )
}

/// Cumulative bytes on the air at `POINTS` times from publishing to the end, per
/// strategy: each contact's bytes are sent at the link rate from the start of its
/// usable part (how the simulator sends: as fast as the link allows).
fn cumulative_bytes(report: &Report, trace: &Trace) -> Cumulative {
    const POINTS: usize = 400;
    let sc = &report.info.scenario;
    let rate = sc.rate.bytes_per_s().max(1.0);
    let h = horizon(report);
    report
        .outcomes
        .iter()
        .rev()
        .map(|o| {
            // (start since publishing, bytes) of each direction of each used contact.
            let mut sends: Vec<(f64, f64)> = Vec::new();
            for u in &o.contacts {
                let Some(c) = trace.contacts.get(u.contact as usize) else {
                    continue;
                };
                let start = c.start.max(sc.publish_at) - sc.publish_at;
                for b in u.bytes {
                    if b > 0 {
                        sends.push((start, b as f64));
                    }
                }
            }
            let pts = (0..=POINTS)
                .map(|i| {
                    let t = h * i as f64 / POINTS as f64;
                    let sent: f64 = sends
                        .iter()
                        .filter(|(s, _)| *s <= t)
                        .map(|(s, b)| b.min((t - s) * rate))
                        .sum();
                    (t, sent)
                })
                .collect();
            (o.strategy.clone(), pts)
        })
        .collect()
}

fn bytes_over_time(report: &Report, series: &Cumulative) -> (Axes, Vec<Curve>) {
    let h = horizon(report);
    let max = series
        .iter()
        .flat_map(|(_, p)| p.last().map(|x| x.1))
        .fold(1.0, f64::max);
    let curves = series
        .iter()
        .map(|(name, p)| Curve {
            label: name.clone(),
            colour: colour(name),
            points: p.iter().map(|&(t, b)| (t / 3600.0, b)).collect(),
        })
        .collect();
    (
        Axes::new(
            format!("{}: bytes on the air since publishing", report.info.trace),
            "hours since publishing",
            "cumulative bytes sent, all nodes",
            (0.0, h / 3600.0),
            (0.0, max * 1.05),
        )
        .y_bytes(),
        curves,
    )
}

fn completion_vs_bytes(report: &Report, series: &Cumulative) -> (Axes, Vec<Curve>) {
    let sc = &report.info.scenario;
    let n = sc.audience_size().max(1) as f64;
    let aud = audience(report);
    let mut max: f64 = 1.0;
    let mut min: f64 = f64::INFINITY;
    let mut curves = Vec::new();
    for ((name, cum), o) in series.iter().zip(report.outcomes.iter().rev()) {
        // Bytes spent by time t: interpolate the cumulative series.
        let spent = |t: f64| -> f64 {
            match cum.iter().position(|p| p.0 >= t) {
                Some(0) => cum[0].1,
                Some(i) => {
                    let (a, b) = (cum[i - 1], cum[i]);
                    a.1 + (b.1 - a.1) * (t - a.0) / (b.0 - a.0).max(1e-9)
                }
                None => cum.last().map_or(0.0, |p| p.1),
            }
        };
        let mut t: Vec<f64> = aud
            .iter()
            .filter_map(|&v| o.nodes[v].complete_at.map(|c| c - sc.publish_at))
            .collect();
        t.sort_by(f64::total_cmp);
        let mut pts = Vec::new();
        let mut done = 0.0;
        for &x in &t {
            let b = spent(x).max(1.0);
            pts.push((b, done / n));
            done += 1.0;
            pts.push((b, done / n));
            min = min.min(b);
        }
        let total = cum.last().map_or(1.0, |p| p.1).max(1.0);
        pts.push((total, done / n));
        max = max.max(total);
        min = min.min(total);
        curves.push(Curve {
            label: name.clone(),
            colour: colour(name),
            points: pts,
        });
    }
    let x0 = if min.is_finite() {
        10f64.powf(min.log10().floor())
    } else {
        1.0
    };
    (
        Axes::new(
            format!(
                "{}: audience complete against bytes spent",
                report.info.trace
            ),
            "bytes on the air so far, all nodes (log)",
            "fraction of audience complete",
            (x0, max * 2.0),
            (0.0, 1.0),
        )
        .x_log()
        .x_bytes(),
        curves,
    )
}

fn contact_utilisation(report: &Report, trace: &Trace) -> (Axes, Vec<Curve>) {
    let sc = &report.info.scenario;
    let rate = sc.rate.bytes_per_s();
    let usable = trace
        .contacts
        .iter()
        .filter(|c| c.end > sc.publish_at)
        .count()
        .max(1) as f64;
    let lo = 1e-6f64;
    let mut named = Vec::new();
    for o in report.outcomes.iter().rev() {
        let mut u: Vec<f64> = o
            .contacts
            .iter()
            .map(|x| utilisation(x.bytes, x.usable_s, rate).clamp(lo, 1.0))
            .collect();
        u.sort_by(f64::total_cmp);
        named.push((o.strategy.clone(), u));
    }
    let curves = to_curves(named, 1e-3, |u| {
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
        pts
    });
    (
        Axes::new(
            format!(
                "{}: contact utilisation ({} contacts after publishing)",
                report.info.trace, usable as u64
            ),
            "share of the contact's capacity used (log; unused contacts at the left edge)",
            "fraction of contacts (CDF)",
            (lo, 1.0),
            (0.0, 1.0),
        )
        .x_log(),
        curves,
    )
}

/// Legend labels: a curve that cannot be told apart from an earlier one at this scale
/// (same number of values, every value within `tol`) says so.
fn labels(cs: &[(String, Vec<f64>)], tol: f64) -> Vec<String> {
    cs.iter()
        .enumerate()
        .map(|(i, (name, t))| {
            let same: Vec<&str> = cs[..i]
                .iter()
                .filter(|(_, u)| {
                    u.len() == t.len()
                        && u.iter()
                            .zip(t)
                            .all(|(a, b)| (a - b).abs() <= tol.max(a.abs() * 1e-6))
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

/// A log-axis tick: `0.1`, `10`, `1000`, `1e5`.
fn short(v: f64) -> String {
    if v >= 1e5 {
        format!("{v:.0e}")
    } else if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn human_bytes(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.1} GB", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1} MB", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0} kB", v / 1e3)
    } else {
        format!("{v:.0} B")
    }
}
