//! The files an emulation writes into `--out`: the shared report files and plots, then
//! `emulation.json`, `emulation_nodes.csv` and `summary.md`.

use std::fmt::Write as _;
use std::path::Path;

use super::EmulateError;
use super::error::io_err;
use super::report::{EmulateReport, NodeResult};
use crate::report::Report;
use crate::trace::Trace;
use crate::units::{Rate, Size, fmt_secs};

/// Writes the shared report files (results.json, nodes.csv, contacts.csv), plots, and the
/// emulation's own files (emulation.json, emulation_nodes.csv, summary.md).
pub(super) fn write_all(
    rep: &mut EmulateReport,
    report: &Report,
    trace: &Trace,
    out: &Path,
) -> Result<(), EmulateError> {
    report.write(out, trace)?;
    rep.warnings = crate::plot::write_all(report, trace, out)?;
    let p = out.join("emulation_nodes.csv");
    std::fs::write(&p, nodes_csv(&rep.nodes)).map_err(io_err(&p))?;
    let p = out.join("summary.md");
    std::fs::write(&p, markdown(rep, report)).map_err(io_err(&p))?;
    let mut files: Vec<String> = [
        "results.json",
        "nodes.csv",
        "contacts.csv",
        "summary.md",
        "emulation.json",
        "emulation_nodes.csv",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for name in crate::plot::PLOTS {
        for ext in ["svg", "png"] {
            let f = format!("{name}.{ext}");
            if out.join(&f).is_file() {
                files.push(f);
            }
        }
    }
    rep.files = files;
    let p = out.join("emulation.json");
    let json = serde_json::to_string_pretty(rep).expect("report serialises");
    std::fs::write(&p, json).map_err(io_err(&p))?;
    Ok(())
}

/// Per-node CSV of the emulation.
fn nodes_csv(nodes: &[NodeResult]) -> String {
    let mut s = String::from(
        "node,in_audience,origin,complete_s,complete_real_s,identical,pieces_have,pieces_total,state,tx_bytes,rx_bytes,tx_bytes_total\n",
    );
    let opt = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_default();
    for r in nodes {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{}",
            r.node,
            r.in_audience,
            r.origin,
            opt(r.complete_s),
            opt(r.complete_real_s),
            r.identical.map(|b| b.to_string()).unwrap_or_default(),
            r.pieces_have,
            r.pieces_total,
            r.state,
            r.tx_bytes,
            r.rx_bytes,
            r.tx_bytes_total
        );
    }
    s
}

/// The Markdown summary: emulation parameters and per-node table, then the shared report's
/// headline table and notes.
fn markdown(rep: &EmulateReport, report: &Report) -> String {
    let mut s = String::new();
    let i = &report.info;
    let _ = writeln!(s, "# Mule emulation: {}\n", i.trace);
    let _ = writeln!(
        s,
        "{} nodes (one `mule` daemon each, in its own network namespace), {} pairs; trace of {} \
         with {} contacts, replayed at time scale K = {} until trace t = {} ({} contacts switched \
         up) in {:.1} s real; finished: **{:?}**.\n",
        i.nodes,
        rep.pairs,
        fmt_secs(i.duration_s),
        i.contacts,
        rep.time_scale,
        fmt_secs(rep.real_s * rep.time_scale),
        rep.contacts_replayed,
        rep.real_s,
        rep.finish
    );
    let _ = writeln!(
        s,
        "**Link rate** {} per contact direction on the wire (tc tbf), i.e. **{} in trace time** \
         (rate ÷ K): a contact of d trace seconds could carry at most rate × d ÷ K bytes. To \
         give contacts the bytes they would carry in reality at rate r, run with rate = r × K.\n",
        Rate(rep.rate_bytes_per_s),
        Rate(rep.effective_rate_bytes_per_s)
    );
    let _ = writeln!(
        s,
        "**Minimum contact length {} s** ({} contacts extended to it). {} contacts lasted under \
         one real second after compression. Largest contact-switch lag: {:.3} s real. Setup \
         {:.1} s, teardown {:.1} s; daemons killed after ignoring SIGTERM for 5 s: {:?}.\n",
        i.min_contact_s,
        i.contacts_extended,
        rep.contacts_under_1s_real,
        rep.max_switch_lag_s,
        rep.setup_s,
        rep.teardown_s,
        rep.killed_after_sigterm
    );
    let _ = writeln!(
        s,
        "Bundle {} published at node {} at trace t = {} (`mule publish` took {:.2} s real); \
         audience {} ({} nodes); {}/{} audience nodes completed with a byte-identical export.\n",
        Size(i.scenario.bundle),
        i.scenario.origin,
        fmt_secs(i.scenario.publish_at),
        rep.publish_command_s,
        i.audience_spec,
        rep.audience(),
        rep.completed_identical(),
        rep.audience()
    );
    s.push_str(
        "| node | audience | complete (trace) | complete (real) | identical | pieces | sent | received |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in &rep.nodes {
        let _ = writeln!(
            s,
            "| {}{} | {} | {} | {} | {} | {}/{} | {} | {} |",
            r.node,
            if r.origin { " (origin)" } else { "" },
            if r.in_audience { "yes" } else { "no" },
            r.complete_s.map(fmt_secs).unwrap_or_else(|| "–".into()),
            r.complete_real_s
                .map(|x| format!("{x:.1} s"))
                .unwrap_or_else(|| "–".into()),
            match r.identical {
                Some(true) => "yes",
                Some(false) => "**NO**",
                None => "–",
            },
            r.pieces_have,
            r.pieces_total,
            Size(r.tx_bytes),
            Size(r.rx_bytes)
        );
    }
    s.push_str("\n## Headline (trace time, from publishing)\n\n");
    s.push_str(&report.headline_table());
    s.push('\n');
    for n in &i.notes {
        let _ = writeln!(s, "- {n}");
    }
    s.push_str(
        "\nPlots: completion.svg, completion_cdf.svg, bytes_per_node.svg, \
         contact_utilisation.svg (and .png when a font is available).\n",
    );
    s
}
