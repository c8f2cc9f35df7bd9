//! The outcome of an emulation: the progress line, per-node results, the emulation's own
//! report, and the shared [`crate::report::Report`] it fills (one outcome, `mule-emulated`,
//! beside the oracle bound at the effective rate).

use serde::{Deserialize, Serialize};

use super::plan::Plan;
use super::replay::Measured;
use super::{EmulateOptions, STRATEGY};
use crate::oracle::Oracle;
use crate::report::{Report, RunInfo};
use crate::sim::{NodeStats, Outcome};
use crate::trace::NodeIx;
use crate::units::fmt_secs;

/// What the progress callback sees, about once per real second.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Real seconds since the replay began.
    pub real_s: f64,
    /// Current trace time (seconds from the trace start).
    pub trace_s: f64,
    /// Trace duration in seconds.
    pub trace_len_s: f64,
    /// Whether the bundle has been published yet.
    pub published: bool,
    /// Contacts up right now.
    pub contacts_up: usize,
    /// Audience nodes that completed (verified export).
    pub complete: usize,
    /// Audience size.
    pub audience: usize,
    /// Pieces held, summed over the audience.
    pub pieces_have: u64,
    /// Pieces needed, summed over the audience.
    pub pieces_total: u64,
}

impl Progress {
    /// A one-line rendering for a terminal (no newline).
    pub fn line(&self) -> String {
        let frac = if self.trace_len_s > 0.0 {
            100.0 * self.trace_s / self.trace_len_s
        } else {
            100.0
        };
        let bar_len = 20usize;
        let done = (self.complete * bar_len)
            .checked_div(self.audience)
            .unwrap_or(bar_len);
        format!(
            "[{}{}] {}/{} complete | pieces {}/{} | trace {} ({:.0}%) | real {:.1} s | {} up{}",
            "#".repeat(done),
            "-".repeat(bar_len - done),
            self.complete,
            self.audience,
            self.pieces_have,
            self.pieces_total,
            fmt_secs(self.trace_s),
            frac.min(100.0),
            self.real_s,
            self.contacts_up,
            if self.published {
                ""
            } else {
                " | not published yet"
            }
        )
    }
}

/// How an emulation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Finish {
    /// Every audience node completed.
    AllComplete,
    /// The trace (plus grace) ended first.
    TraceEnded,
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

/// Per-node result of an emulation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeResult {
    /// Node index in the trace.
    pub node: NodeIx,
    /// Subscribed to the bundle.
    pub in_audience: bool,
    /// The publishing node.
    pub origin: bool,
    /// Seconds of trace time from publishing until the export appeared (audience), or until
    /// the node held every piece (others, at 1 s real polling resolution).
    pub complete_s: Option<f64>,
    /// The same in real seconds since publishing.
    pub complete_real_s: Option<f64>,
    /// Export compared byte for byte with the published file (`None`: no export).
    pub identical: Option<bool>,
    /// Pieces held at the end (last poll).
    pub pieces_have: u64,
    /// Pieces of the bundle.
    pub pieces_total: u64,
    /// Bundle state at the end, as `mule bundles` reports it.
    pub state: String,
    /// Bytes this node sent during contacts (interface counters, everything on the wire).
    pub tx_bytes: u64,
    /// Bytes this node received during contacts.
    pub rx_bytes: u64,
    /// Bytes this node sent on all its interfaces over the whole run, including beacons sent
    /// while no partner was attached.
    pub tx_bytes_total: u64,
}

/// The outcome of [`run`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EmulateReport {
    /// How it ended.
    pub finish: Finish,
    /// Per node.
    pub nodes: Vec<NodeResult>,
    /// Real seconds from the replay's start to its end.
    pub real_s: f64,
    /// Real seconds from the replay's start to publishing.
    pub published_real_s: Option<f64>,
    /// The published bundle's id.
    pub bundle_id: Option<String>,
    /// Real seconds `mule publish` took (cutting, hashing, signing, storing).
    pub publish_command_s: f64,
    /// Link rate on the wire (real time), bytes/s.
    pub rate_bytes_per_s: f64,
    /// Time compression.
    pub time_scale: f64,
    /// Effective rate in trace time (`rate / K`), bytes/s.
    pub effective_rate_bytes_per_s: f64,
    /// Distinct pairs (bridges) built.
    pub pairs: usize,
    /// Contacts replayed (switched up).
    pub contacts_replayed: usize,
    /// Contacts shorter than one real second after compression.
    pub contacts_under_1s_real: usize,
    /// Largest delay between a contact switch's due time and when it happened, real seconds.
    pub max_switch_lag_s: f64,
    /// Seconds spent building the topology and starting the daemons.
    pub setup_s: f64,
    /// Seconds spent tearing down.
    pub teardown_s: f64,
    /// Nodes whose daemon did not exit within 5 s of SIGTERM and was killed (a daemon bug
    /// worth a look in its log).
    pub killed_after_sigterm: Vec<NodeIx>,
    /// Names of the namespaces created (all deleted by the time [`run`] returns).
    pub namespaces: Vec<String>,
    /// Process ids of the daemons (all reaped by the time [`run`] returns).
    pub daemon_pids: Vec<u32>,
    /// Files written into the output directory.
    pub files: Vec<String>,
    /// Warnings (e.g. PNG plots skipped for lack of a font).
    pub warnings: Vec<String>,
    /// The shared report (headline figures, oracle), as written to results.json.
    #[serde(skip)]
    pub report: Option<Report>,
}

impl EmulateReport {
    /// Audience nodes that completed with a byte-identical export.
    pub fn completed_identical(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.in_audience && n.identical == Some(true))
            .count()
    }

    /// Audience size.
    pub fn audience(&self) -> usize {
        self.nodes.iter().filter(|n| n.in_audience).count()
    }
}

/// The setup's and teardown's figures, for the report.
pub(super) struct Lifecycle {
    /// Seconds spent building the topology and starting the daemons.
    pub(super) setup_s: f64,
    /// Seconds spent tearing down.
    pub(super) teardown_s: f64,
    /// Nodes whose daemon was killed after ignoring SIGTERM.
    pub(super) killed: Vec<usize>,
    /// Names of the namespaces created.
    pub(super) namespaces: Vec<String>,
    /// Process ids of the daemons.
    pub(super) daemon_pids: Vec<u32>,
}

/// The emulation's report (its `report` still empty) and the shared report from what the
/// replay measured; files are not written yet.
pub(super) fn build(
    opts: &EmulateOptions,
    plan: &Plan,
    m: Measured,
    life: Lifecycle,
) -> (EmulateReport, Report) {
    let nodes = node_results(plan, &m);
    let outcome = Outcome {
        strategy: STRATEGY.to_owned(),
        nodes: nodes.iter().map(|r| node_stats(plan, &m, r)).collect(),
        contacts: m.tally.uses,
        events: m.replayed as u64,
    };
    let oracle = Oracle::compute(
        &plan.trace,
        plan.origin,
        plan.publish_at,
        plan.scenario.bundle,
        plan.eff_rate,
    );
    let report = Report::build(run_info(opts, plan), oracle, vec![outcome]);
    let rep = EmulateReport {
        finish: m.finish,
        nodes,
        real_s: m.real_end.as_secs_f64(),
        published_real_s: m.published_real.map(|d| d.as_secs_f64()),
        bundle_id: m.bundle_id,
        publish_command_s: m.publish_cmd_s,
        rate_bytes_per_s: opts.rate.bytes_per_s(),
        time_scale: plan.k,
        effective_rate_bytes_per_s: plan.eff_rate.bytes_per_s(),
        pairs: plan.pairs.len(),
        contacts_replayed: m.replayed,
        contacts_under_1s_real: plan.under_1s,
        max_switch_lag_s: m.max_lag,
        setup_s: life.setup_s,
        teardown_s: life.teardown_s,
        killed_after_sigterm: life.killed.iter().map(|&v| v as NodeIx).collect(),
        namespaces: life.namespaces,
        daemon_pids: life.daemon_pids,
        files: Vec::new(),
        warnings: Vec::new(),
        report: None,
    };
    (rep, report)
}

/// Per node: completion (trace and real seconds from publishing), identity, pieces, bytes.
fn node_results(plan: &Plan, m: &Measured) -> Vec<NodeResult> {
    let pub_real = m.published_real.unwrap_or(m.real_end);
    (0..plan.nodes())
        .map(|v| {
            let creal = m.complete_real[v].map(|c| c.saturating_sub(pub_real).as_secs_f64());
            NodeResult {
                node: v as NodeIx,
                in_audience: plan.audience[v],
                origin: v as NodeIx == plan.origin,
                complete_s: creal.map(|r| r * plan.k),
                complete_real_s: creal,
                identical: m.identical[v],
                pieces_have: m.rows[v].pieces_have,
                pieces_total: m.rows[v].pieces_total,
                state: m.rows[v].state.clone(),
                tx_bytes: m.tally.tx[v],
                rx_bytes: m.tally.rx[v],
                tx_bytes_total: m.tx_total[v],
            }
        })
        .collect()
}

/// A node's row of the shared report's outcome.
fn node_stats(plan: &Plan, m: &Measured, r: &NodeResult) -> NodeStats {
    let v = r.node as usize;
    let is_origin = r.node == plan.origin;
    NodeStats {
        complete_at: if is_origin {
            Some(plan.publish_at)
        } else {
            r.complete_s.map(|c| plan.publish_at + c)
        },
        bytes_sent: r.tx_bytes,
        bytes_recv: r.rx_bytes,
        pieces_new: if is_origin { 0 } else { r.pieces_have },
        useful_from_origin: m.tally.from_origin[v],
        useful_from_others: r.rx_bytes.saturating_sub(m.tally.from_origin[v]),
        // Not observable from outside the daemons (see the module docs): pieces
        // sent, duplicates, rejections, refusals stay zero.
        ..NodeStats::default()
    }
}

/// The shared report's run description, with the notes on what emulation measures.
fn run_info(opts: &EmulateOptions, plan: &Plan) -> RunInfo {
    let trace = &plan.trace;
    let name = crate::trace::name_of(&opts.trace);
    RunInfo {
        trace: name,
        nodes: trace.nodes,
        contacts: trace.contacts.len(),
        start_s: trace.start,
        duration_s: trace.duration(),
        min_contact_s: trace.min_contact,
        contacts_extended: trace.stats.extended,
        scenario: plan.scenario.clone(),
        audience_spec: opts.audience.to_string(),
        prediction: true,
        notes: notes(opts, plan),
    }
}

/// What the emulation measured and how (the report's notes).
fn notes(opts: &EmulateOptions, plan: &Plan) -> Vec<String> {
    let trace = &plan.trace;
    vec![
        format!(
            "Emulation: one real `mule` daemon per network namespace, one bridge and veth pair per \
             node pair, contacts switched silently (bridge detach, carrier stays up); links shaped \
             with tc tbf at {} per contact direction on the wire.",
            opts.rate
        ),
        format!(
            "Time compressed by K = {}: a contact of d trace seconds lasted d/K real seconds, so in \
             trace time each contact direction carried at most {} (wire rate ÷ K); the oracle uses \
             that effective rate. {} of {} contacts lasted under one real second. Discovery and \
             session set-up take about 0.2-1 s of real time, i.e. K times that in trace time, \
             which the oracle does not pay: at large K short contacts carry little and the first \
             completions lag the bound.",
            plan.k,
            plan.eff_rate,
            plan.under_1s,
            trace.contacts.len()
        ),
        format!(
            "Contacts shorter than {} s were extended to {} s (not dropped); overlapping contacts \
             of a pair were merged.",
            trace.min_contact, trace.min_contact
        ),
        "Bytes are interface counters during contacts (beacons, handshakes, summaries, pieces, \
         TCP/IP headers); the daemons expose no per-piece duplicate or per-sender counts, so \
         duplicates are 0 and offload is a share of bytes on the wire, not of payload."
            .to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_shows_the_bar_and_counts() {
        let p = Progress {
            real_s: 3.0,
            trace_s: 30.0,
            trace_len_s: 60.0,
            published: true,
            contacts_up: 2,
            complete: 2,
            audience: 4,
            pieces_have: 40,
            pieces_total: 64,
        };
        let l = p.line();
        assert!(l.starts_with("[##########----------] 2/4 complete"), "{l}");
        assert!(l.contains("(50%)"), "{l}");
    }
}
