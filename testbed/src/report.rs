//! Results of a run: headline figures, machine-readable files and the Markdown summary.
//!
//! Written to `--out DIR`:
//! - `results.json`: the run's parameters, the oracle's per-node bound, the headline
//!   figures and the per-node statistics of every strategy (per-contact rows are only
//!   in `contacts.csv`);
//! - `nodes.csv`: one row per (strategy, node): completion time, bytes sent/received,
//!   pieces kept / duplicate / rejected, the oracle bound;
//! - `contacts.csv`: one row per (strategy, contact that carried bytes): usable
//!   seconds, bytes each way, utilisation;
//! - `summary.md`: the headline table and the parameters, including the minimum
//!   contact length applied to the trace;
//! - plots (see [`crate::plot`]).
//!
//! Headline figures, per strategy: the time from publishing until 50 / 90 / 100 % of
//! the audience hold the whole bundle, also as a ratio to the oracle's time for the same
//! fraction; total bytes on the air ÷ (audience size × bundle size); origin offload =
//! share of the payload bytes the audience received that did not come from the origin.
//!
//! The emulation (`mule-testbed emulate`, real daemons in namespaces) is meant to fill
//! the same [`Outcome`](crate::sim::Outcome) rows from the daemons' metrics and call
//! [`Report::build`] and [`Report::write`] unchanged.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::oracle::Oracle;
use crate::sim::{Outcome, Scenario};
use crate::trace::Trace;
use crate::units::{Size, fmt_secs};

/// Why writing a report failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A plot could not be drawn.
    #[error("cannot draw {path}: {why}")]
    Plot {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
}

/// Describes the run, for the report header.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunInfo {
    /// Trace name (file stem).
    pub trace: String,
    /// Number of nodes.
    pub nodes: u32,
    /// Contacts after normalisation.
    pub contacts: usize,
    /// Trace start (window start or 0), seconds.
    pub start_s: f64,
    /// Trace length, seconds.
    pub duration_s: f64,
    /// Minimum contact length applied (seconds): shorter contacts were extended.
    pub min_contact_s: f64,
    /// Contacts extended to the minimum length.
    pub contacts_extended: usize,
    /// The scenario.
    pub scenario: Scenario,
    /// Audience as requested (`all` or a fraction).
    pub audience_spec: String,
    /// Whether the Mule strategy used social prediction.
    pub prediction: bool,
    /// Free-form notes (e.g. "mule strategy: interim adapter").
    pub notes: Vec<String>,
}

/// Time from publishing until a fraction of the audience completed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Milestones {
    /// Seconds to 50 % (`None`: never).
    pub t50: Option<f64>,
    /// Seconds to 90 %.
    pub t90: Option<f64>,
    /// Seconds to 100 %.
    pub t100: Option<f64>,
}

impl Milestones {
    /// Milestones from per-node completion times (seconds since publishing, `None` =
    /// never) over an audience of `n`.
    pub fn from_times(times: &[Option<f64>], n: usize) -> Milestones {
        let mut done: Vec<f64> = times.iter().flatten().copied().collect();
        done.sort_by(f64::total_cmp);
        let at = |frac: f64| {
            let k = ((n as f64) * frac).ceil().max(1.0) as usize;
            done.get(k - 1).copied()
        };
        Milestones {
            t50: at(0.5),
            t90: at(0.9),
            t100: at(1.0),
        }
    }

    fn all(&self) -> [Option<f64>; 3] {
        [self.t50, self.t90, self.t100]
    }
}

/// Headline figures of one strategy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Headline {
    /// Strategy name.
    pub strategy: String,
    /// Which simulation produced it (`None`: not a simulation, e.g. the emulation).
    #[serde(default)]
    pub model: Option<crate::sim::Model>,
    /// Times to 50/90/100 % of the audience.
    pub times: Milestones,
    /// The same divided by the oracle's (`None` if either is never).
    pub ratio_to_oracle: [Option<f64>; 3],
    /// Audience members that completed.
    pub completed: usize,
    /// All bytes on the air.
    pub total_bytes: u64,
    /// `total_bytes / (audience × bundle)`.
    pub bytes_per_delivery: f64,
    /// Share of the audience's useful payload that did not come from the origin.
    pub origin_offload: f64,
    /// Duplicate pieces received, fleet-wide.
    pub duplicates: u64,
    /// Pieces rejected by full carry quotas, fleet-wide.
    pub rejected: u64,
    /// Pieces stored by nodes outside the audience (carriers), fleet-wide.
    pub carried: u64,
    /// Requests refused because the summary's Bloom filter lied, fleet-wide.
    pub refused: u64,
}

/// A complete report (serialised as `results.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// What was run.
    pub info: RunInfo,
    /// The oracle's per-node bound.
    pub oracle: Oracle,
    /// The oracle's milestones over the audience.
    pub oracle_times: Milestones,
    /// Audience members the oracle can complete at all.
    pub oracle_reachable: usize,
    /// One row per strategy, in the order run.
    pub headline: Vec<Headline>,
    /// Per-strategy outcomes.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// Computes the headline figures.
    pub fn build(info: RunInfo, oracle: Oracle, outcomes: Vec<Outcome>) -> Report {
        let sc = &info.scenario;
        let audience: Vec<usize> = (0..sc.audience.len()).filter(|&v| sc.audience[v]).collect();
        let n = audience.len();
        let since = |t: f64| (t.is_finite()).then_some(t - sc.publish_at);
        let oracle_t: Vec<Option<f64>> = audience
            .iter()
            .map(|&v| since(oracle.complete[v]))
            .collect();
        let oracle_times = Milestones::from_times(&oracle_t, n);
        let oracle_reachable = oracle_t.iter().flatten().count();
        let headline = outcomes
            .iter()
            .map(|o| {
                let t: Vec<Option<f64>> = audience
                    .iter()
                    .map(|&v| o.nodes[v].complete_at.map(|c| c - sc.publish_at))
                    .collect();
                let times = Milestones::from_times(&t, n);
                let mut ratio = [None; 3];
                for (i, (a, b)) in times.all().iter().zip(oracle_times.all()).enumerate() {
                    if let (Some(a), Some(b)) = (a, b) {
                        ratio[i] = Some(if b > 0.0 { a / b } else { f64::INFINITY });
                    }
                }
                let total_bytes: u64 = o.nodes.iter().map(|s| s.bytes_sent).sum();
                let (from_origin, from_others) = audience.iter().fold((0u64, 0u64), |acc, &v| {
                    (
                        acc.0 + o.nodes[v].useful_from_origin,
                        acc.1 + o.nodes[v].useful_from_others,
                    )
                });
                let useful = from_origin + from_others;
                Headline {
                    strategy: o.strategy.clone(),
                    model: None,
                    times,
                    ratio_to_oracle: ratio,
                    completed: t.iter().flatten().count(),
                    total_bytes,
                    bytes_per_delivery: total_bytes as f64 / (n.max(1) as f64 * sc.bundle as f64),
                    origin_offload: if useful > 0 {
                        from_others as f64 / useful as f64
                    } else {
                        0.0
                    },
                    duplicates: o.nodes.iter().map(|s| s.pieces_duplicate).sum(),
                    rejected: o.nodes.iter().map(|s| s.pieces_rejected).sum(),
                    refused: o.nodes.iter().map(|s| s.requests_refused).sum(),
                    carried: o
                        .nodes
                        .iter()
                        .enumerate()
                        .filter(|&(v, _)| !sc.audience[v] && v != sc.origin as usize)
                        .map(|(_, s)| s.pieces_new)
                        .sum(),
                }
            })
            .collect();
        Report {
            info,
            oracle,
            oracle_times,
            oracle_reachable,
            headline,
            outcomes,
        }
    }

    /// Names the model of each headline row, in the order run.
    pub fn label_models(&mut self, models: &[crate::sim::Model]) {
        for (h, m) in self.headline.iter_mut().zip(models) {
            h.model = Some(*m);
        }
    }

    /// Audience size.
    pub fn audience_size(&self) -> usize {
        self.info.scenario.audience_size()
    }

    /// The headline row of a strategy.
    pub fn headline_of(&self, strategy: &str) -> Option<&Headline> {
        self.headline.iter().find(|h| h.strategy == strategy)
    }

    /// Writes `results.json`, `nodes.csv`, `contacts.csv` and `summary.md` into `dir`
    /// (created if missing). Plots are written by [`crate::plot::write_all`].
    pub fn write(&self, dir: &Path, trace: &Trace) -> Result<(), ReportError> {
        let io = |p: &Path| {
            let path = p.display().to_string();
            move |source| ReportError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        // Per-contact rows go to contacts.csv only: they would make the JSON megabytes.
        let mut light = self.clone();
        for o in &mut light.outcomes {
            o.contacts.clear();
        }
        let json = serde_json::to_string_pretty(&light).expect("report serialises");
        let p = dir.join("results.json");
        std::fs::write(&p, json).map_err(io(&p))?;
        let p = dir.join("nodes.csv");
        std::fs::write(&p, self.nodes_csv()).map_err(io(&p))?;
        let p = dir.join("contacts.csv");
        std::fs::write(&p, self.contacts_csv(trace)).map_err(io(&p))?;
        let p = dir.join("summary.md");
        std::fs::write(&p, self.markdown()).map_err(io(&p))?;
        Ok(())
    }

    /// Per-node CSV.
    pub fn nodes_csv(&self) -> String {
        let sc = &self.info.scenario;
        let mut s = String::from(
            "strategy,node,in_audience,complete_s,oracle_s,bytes_sent,bytes_recv,pieces_sent,pieces_new,pieces_duplicate,pieces_rejected,requests_refused\n",
        );
        let opt = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_default();
        for o in &self.outcomes {
            for (v, n) in o.nodes.iter().enumerate() {
                let oracle = self.oracle.complete[v];
                let _ = writeln!(
                    s,
                    "{},{v},{},{},{},{},{},{},{},{},{},{}",
                    o.strategy,
                    sc.audience[v],
                    opt(n.complete_at.map(|c| c - sc.publish_at)),
                    opt(oracle.is_finite().then_some(oracle - sc.publish_at)),
                    n.bytes_sent,
                    n.bytes_recv,
                    n.pieces_sent,
                    n.pieces_new,
                    n.pieces_duplicate,
                    n.pieces_rejected,
                    n.requests_refused
                );
            }
        }
        s
    }

    /// Per-contact CSV (contacts that carried bytes after publishing).
    pub fn contacts_csv(&self, trace: &Trace) -> String {
        let rate = self.info.scenario.rate.bytes_per_s();
        let mut s =
            String::from("strategy,contact,a,b,start_s,usable_s,bytes_ab,bytes_ba,utilisation\n");
        for o in &self.outcomes {
            for u in &o.contacts {
                let c = &trace.contacts[u.contact as usize];
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{:.3},{},{},{:.6}",
                    o.strategy,
                    u.contact,
                    c.a,
                    c.b,
                    c.start,
                    u.usable_s,
                    u.bytes[0],
                    u.bytes[1],
                    utilisation(u.bytes, u.usable_s, rate)
                );
            }
        }
        s
    }

    /// The Markdown summary.
    pub fn markdown(&self) -> String {
        let i = &self.info;
        let sc = &i.scenario;
        let mut s = String::new();
        let _ = writeln!(s, "# Mule simulation: {}\n", i.trace);
        let _ = writeln!(
            s,
            "{} nodes, {} contacts over {}; **minimum contact length {} s** ({} contacts \
             shorter than that were extended to it, see `trace` docs).\n",
            i.nodes,
            i.contacts,
            fmt_secs(i.duration_s),
            i.min_contact_s,
            i.contacts_extended
        );
        let _ = writeln!(
            s,
            "Bundle {} ({} pieces of {}) published at node {} at t = {} ({:.0}% of the trace); \
             link rate {}; audience {} ({} nodes); carry quota {} pieces; Bloom FPR {}; \
             seed {}; social prediction {}; capacity model {}.\n",
            Size(sc.bundle),
            sc.pieces(),
            Size(sc.piece_size as u64),
            sc.origin,
            fmt_secs(sc.publish_at),
            100.0 * (sc.publish_at - i.start_s) / i.duration_s.max(1e-9),
            sc.rate,
            i.audience_spec,
            self.audience_size(),
            sc.carry_quota_pieces,
            sc.fpr,
            sc.seed,
            if i.prediction { "on" } else { "off" },
            match sc.radio {
                crate::sim::Radio::PerContact =>
                    "per contact (each contact direction gets the full rate)",
                crate::sim::Radio::SharedEgress =>
                    "shared egress (a node's contacts share one transmitter)",
            },
        );
        for n in &i.notes {
            let _ = writeln!(s, "- {n}");
        }
        if !i.notes.is_empty() {
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "The oracle (a lower bound, see `oracle` docs) can complete {} of {} audience nodes.\n",
            self.oracle_reachable,
            self.audience_size()
        );
        s.push_str(&self.headline_table());
        s.push_str(
            "\nTimes are from publishing. ×oracle: ratio to the oracle's time for the same \
             fraction. bytes/delivery: all bytes on the air ÷ (audience × bundle). offload: \
             share of the audience's payload not served by the origin. carried: pieces stored by \
             nodes outside the audience.\n",
        );
        s
    }

    /// The headline table alone (Markdown).
    pub fn headline_table(&self) -> String {
        let mut s = String::from(
            "| strategy | model | 50% | 90% | 100% | 50% ×oracle | 90% ×oracle | 100% ×oracle | complete | bytes/delivery | offload | duplicates | carried |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        let t = |x: Option<f64>| x.map(fmt_secs).unwrap_or_else(|| "never".into());
        let r = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into());
        let o = &self.oracle_times;
        let _ = writeln!(
            s,
            "| oracle (bound) | – | {} | {} | {} | 1 | 1 | 1 | {}/{} | – | – | – | – |",
            t(o.t50),
            t(o.t90),
            t(o.t100),
            self.oracle_reachable,
            self.audience_size()
        );
        for h in &self.headline {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {:.2} | {:.1}% | {} | {} |",
                h.strategy,
                h.model.map_or("–", crate::sim::Model::label),
                t(h.times.t50),
                t(h.times.t90),
                t(h.times.t100),
                r(h.ratio_to_oracle[0]),
                r(h.ratio_to_oracle[1]),
                r(h.ratio_to_oracle[2]),
                h.completed,
                self.audience_size(),
                h.bytes_per_delivery,
                100.0 * h.origin_offload,
                h.duplicates,
                h.carried
            );
        }
        s
    }
}

/// Bytes used ÷ bytes the contact could carry after publishing (both directions).
pub fn utilisation(bytes: [u64; 2], usable_s: f64, rate: f64) -> f64 {
    let cap = 2.0 * usable_s * rate;
    if cap > 0.0 {
        (bytes[0] + bytes[1]) as f64 / cap
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milestones_use_the_whole_audience_as_denominator() {
        let t = [Some(5.0), Some(1.0), None, Some(3.0)];
        let m = Milestones::from_times(&t, 4);
        assert_eq!(m.t50, Some(3.0));
        assert_eq!(m.t90, None);
        assert_eq!(m.t100, None);
        let m = Milestones::from_times(&t[..2], 2);
        assert_eq!((m.t50, m.t90, m.t100), (Some(1.0), Some(5.0), Some(5.0)));
    }
}
