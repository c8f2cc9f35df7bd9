//! The Prometheus text exposition format 0.0.4: [`Metrics::render`] writes every series
//! in a fixed order, so the same state always renders to the same bytes.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::registry::{
    BundleState, ManifestReject, Metrics, RejectReason, SessionFailure, Transport,
};

impl Metrics {
    /// All series in the Prometheus text exposition format 0.0.4, in a fixed order.
    pub fn render(&self) -> String {
        self.render_at(Instant::now())
    }

    /// [`Metrics::render`] with `now` as the time for `mule_uptime_seconds`.
    pub fn render_at(&self, now: Instant) -> String {
        let mut o = Exposition(String::with_capacity(4096));
        o.header(
            "mule_build_info",
            "gauge",
            "Build information; the value is always 1.",
        );
        o.sample(
            "mule_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            "1",
        );
        o.header(
            "mule_uptime_seconds",
            "gauge",
            "Seconds since the node started.",
        );
        let up = now.saturating_duration_since(self.started).as_secs_f64();
        o.sample("mule_uptime_seconds", &[], &format!("{up:.3}"));

        self.render_traffic(&mut o);
        self.render_sessions(&mut o);
        self.render_store(&mut o);
        self.render_beacons(&mut o);
        o.0
    }

    /// Bytes, pieces and manifests moved, and why some were refused.
    fn render_traffic(&self, o: &mut Exposition) {
        o.family(
            "mule_bytes_sent_total",
            "counter",
            "Bytes written to peers, by transport.",
            "transport",
            Transport::ALL,
            |t| t.as_str(),
            |t| self.bytes_sent.get(t as usize),
        );
        o.family(
            "mule_bytes_received_total",
            "counter",
            "Bytes read from peers, by transport.",
            "transport",
            Transport::ALL,
            |t| t.as_str(),
            |t| self.bytes_received.get(t as usize),
        );
        o.family(
            "mule_pieces_sent_total",
            "counter",
            "Bundle pieces sent to peers, by transport.",
            "transport",
            Transport::ALL,
            |t| t.as_str(),
            |t| self.pieces_sent.get(t as usize),
        );
        o.family(
            "mule_pieces_received_total",
            "counter",
            "Bundle pieces received from peers, by transport (accepted or not).",
            "transport",
            Transport::ALL,
            |t| t.as_str(),
            |t| self.pieces_received.get(t as usize),
        );
        o.family(
            "mule_pieces_rejected_total",
            "counter",
            "Received pieces that were not stored, by reason.",
            "reason",
            RejectReason::ALL,
            |r| r.as_str(),
            |r| self.pieces_rejected.get(r as usize),
        );
        o.scalar(
            "mule_manifests_received_total",
            "counter",
            "Manifests received from peers (accepted or not).",
            self.manifests_received.load(Ordering::Relaxed),
        );
        o.family(
            "mule_manifests_rejected_total",
            "counter",
            "Received manifests that were not accepted, by reason.",
            "reason",
            ManifestReject::ALL,
            |r| r.as_str(),
            |r| self.manifests_rejected.get(r as usize),
        );
    }

    /// Sessions, contacts, reclaimed handshakes and neighbours.
    fn render_sessions(&self, o: &mut Exposition) {
        o.scalar(
            "mule_sessions_opened_total",
            "counter",
            "Sessions that completed their handshake.",
            self.sessions_opened.load(Ordering::Relaxed),
        );
        o.family(
            "mule_sessions_failed_total",
            "counter",
            "Sessions that failed, by reason.",
            "reason",
            SessionFailure::ALL,
            |r| r.as_str(),
            |r| self.sessions_failed.get(r as usize),
        );
        o.scalar(
            "mule_sessions_active",
            "gauge",
            "Sessions currently open.",
            self.sessions_active.load(Ordering::Relaxed),
        );
        o.scalar(
            "mule_contacts_total",
            "counter",
            "Contacts with neighbours since start.",
            self.contacts.load(Ordering::Relaxed),
        );
        o.scalar(
            "mule_handshakes_reclaimed_total",
            "counter",
            "Unauthenticated inbound connections dropped to give their slot to a newer one.",
            self.handshakes_reclaimed.load(Ordering::Relaxed),
        );
        o.scalar(
            "mule_neighbours",
            "gauge",
            "Neighbours currently in range.",
            self.neighbours.load(Ordering::Relaxed),
        );
    }

    /// The store and its bundles.
    fn render_store(&self, o: &mut Exposition) {
        o.scalar(
            "mule_store_bytes",
            "gauge",
            "Bytes held by the bundle store.",
            self.store_bytes.load(Ordering::Relaxed),
        );
        o.scalar(
            "mule_store_quota_bytes",
            "gauge",
            "Bundle store quota in bytes.",
            self.store_quota_bytes.load(Ordering::Relaxed),
        );
        o.scalar(
            "mule_store_full",
            "gauge",
            "1 while the store is full (disk or quota) and refuses pieces, else 0.",
            self.store_full.load(Ordering::Relaxed),
        );
        o.scalar(
            "mule_pieces_corrupt_total",
            "counter",
            "Stored pieces that failed their hash when read back (dropped, fetched again).",
            self.pieces_corrupt.load(Ordering::Relaxed),
        );
        for (name, help, c) in [
            (
                "mule_rollback_refused_total",
                "Releases refused because a newer release of their lineage is installed.",
                &self.rollback_refused,
            ),
            (
                "mule_equivocations_total",
                "Two different bundles seen with the same lineage and release (neither installed).",
                &self.equivocations,
            ),
            (
                "mule_rollbacks_total",
                "Releases that failed their health check and were rolled back.",
                &self.rollbacks,
            ),
        ] {
            o.scalar(name, "counter", help, c.load(Ordering::Relaxed));
        }
        o.family(
            "mule_bundles",
            "gauge",
            "Stored bundles, by state.",
            "state",
            BundleState::ALL,
            |s| s.as_str(),
            |s| self.bundles.get(s as usize),
        );
    }

    fn render_beacons(&self, o: &mut Exposition) {
        let counts = self
            .beacons
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|source| source());
        o.header(
            "mule_beacons_sent_total",
            "counter",
            "Discovery beacons sent.",
        );
        if let Some(c) = &counts {
            o.sample("mule_beacons_sent_total", &[], &c.sent.to_string());
        }
        o.header(
            "mule_beacons_accepted_total",
            "counter",
            "Discovery beacons received and accepted.",
        );
        if let Some(c) = &counts {
            o.sample("mule_beacons_accepted_total", &[], &c.accepted.to_string());
        }
        o.header(
            "mule_beacons_dropped_total",
            "counter",
            "Discovery beacons received and dropped, by reason.",
        );
        if let Some(c) = &counts {
            // Sum duplicates so no label set appears twice; keep first-seen order.
            let mut merged: Vec<(&str, u64)> = Vec::with_capacity(c.dropped.len());
            for &(reason, n) in &c.dropped {
                match merged.iter_mut().find(|(r, _)| *r == reason) {
                    Some((_, total)) => *total = total.wrapping_add(n),
                    None => merged.push((reason, n)),
                }
            }
            for (reason, n) in merged {
                o.sample(
                    "mule_beacons_dropped_total",
                    &[("reason", reason)],
                    &n.to_string(),
                );
            }
        }
    }
}

/// A text exposition being written.
struct Exposition(String);

impl Exposition {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(k);
                self.0.push_str("=\"");
                escape_label_value(&mut self.0, v);
                self.0.push('"');
            }
            self.0.push('}');
        }
        self.0.push(' ');
        self.0.push_str(value);
        self.0.push('\n');
    }

    fn scalar(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.header(name, kind, help);
        self.sample(name, &[], &value.to_string());
    }

    #[allow(clippy::too_many_arguments)]
    fn family<L: Copy>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        all: &[L],
        label_value: impl Fn(L) -> &'static str,
        value: impl Fn(L) -> u64,
    ) {
        self.header(name, kind, help);
        for &l in all {
            self.sample(name, &[(label, label_value(l))], &value(l).to_string());
        }
    }
}

/// Label values escape `\`, `"` and newline (format 0.0.4).
fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    use super::*;
    use crate::metrics::BeaconCounts;

    /// Checks `text` against the 0.0.4 grammar as used here and returns its samples as
    /// (`name{labels}`, value). Panics with the offending line otherwise.
    fn parse_exposition(text: &str) -> Vec<(String, f64)> {
        assert!(text.ends_with('\n'), "exposition must end with a newline");
        let mut helped = Vec::<String>::new();
        let mut typed = Vec::<(String, String)>::new();
        let mut samples = Vec::new();
        let valid_name = |n: &str| {
            let mut cs = n.chars();
            cs.next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
                && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect(line);
                assert!(valid_name(name) && !help.is_empty(), "{line}");
                assert!(!helped.contains(&name.to_string()), "HELP twice: {line}");
                helped.push(name.to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect(line);
                assert!(matches!(kind, "counter" | "gauge"), "{line}");
                assert!(
                    helped.last().map(String::as_str) == Some(name),
                    "TYPE before HELP: {line}"
                );
                assert!(typed.iter().all(|(n, _)| n != name), "TYPE twice: {line}");
                typed.push((name.to_string(), kind.to_string()));
            } else {
                assert!(!line.starts_with('#') && !line.is_empty(), "{line}");
                let (series, value) = line.rsplit_once(' ').expect(line);
                let value: f64 = value.parse().expect(line);
                let name = series.split('{').next().unwrap();
                assert!(valid_name(name), "{line}");
                // Samples belong to the family declared last.
                let (fam, kind) = typed.last().expect(line);
                assert_eq!(name, fam, "sample outside its family: {line}");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{line}");
                    assert!(value >= 0.0, "{line}");
                }
                let labels = &series[name.len()..];
                if !labels.is_empty() {
                    let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}'));
                    for pair in inner.expect(line).split(',') {
                        let (k, v) = pair.split_once('=').expect(line);
                        assert!(valid_name(k), "{line}");
                        assert!(
                            v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                            "{line}"
                        );
                    }
                }
                assert!(
                    samples.iter().all(|(s, _)| s != series),
                    "series twice: {line}"
                );
                samples.push((series.to_string(), value));
            }
        }
        samples
    }

    fn value(samples: &[(String, f64)], series: &str) -> f64 {
        samples
            .iter()
            .find(|(s, _)| s == series)
            .unwrap_or_else(|| panic!("{series} missing"))
            .1
    }

    #[test]
    fn every_series_is_present_at_zero() {
        let m = Metrics::new();
        let text = m.render();
        let s = parse_exposition(&text);
        for t in ["tcp", "bluetooth"] {
            for fam in [
                "mule_bytes_sent_total",
                "mule_bytes_received_total",
                "mule_pieces_sent_total",
                "mule_pieces_received_total",
            ] {
                assert_eq!(value(&s, &format!("{fam}{{transport=\"{t}\"}}")), 0.0);
            }
        }
        for r in [
            "invalid",
            "unknown_bundle",
            "store_full",
            "store_error",
            "duplicate",
        ] {
            assert_eq!(
                value(&s, &format!("mule_pieces_rejected_total{{reason=\"{r}\"}}")),
                0.0
            );
        }
        for r in ["invalid", "untrusted", "expired", "store_error"] {
            assert_eq!(
                value(
                    &s,
                    &format!("mule_manifests_rejected_total{{reason=\"{r}\"}}")
                ),
                0.0
            );
        }
        for r in ["connect", "handshake", "protocol", "timeout", "penalised"] {
            assert_eq!(
                value(&s, &format!("mule_sessions_failed_total{{reason=\"{r}\"}}")),
                0.0
            );
        }
        for st in ["incomplete", "complete", "installed", "failed"] {
            assert_eq!(value(&s, &format!("mule_bundles{{state=\"{st}\"}}")), 0.0);
        }
        for name in [
            "mule_manifests_received_total",
            "mule_sessions_opened_total",
            "mule_sessions_active",
            "mule_contacts_total",
            "mule_handshakes_reclaimed_total",
            "mule_neighbours",
            "mule_store_bytes",
            "mule_store_quota_bytes",
            "mule_store_full",
            "mule_pieces_corrupt_total",
            "mule_rollback_refused_total",
            "mule_equivocations_total",
            "mule_rollbacks_total",
        ] {
            assert_eq!(value(&s, name), 0.0);
        }
        let version = format!(
            "mule_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value(&s, &version), 1.0);
        assert!(value(&s, "mule_uptime_seconds") >= 0.0);
        // Beacon families are declared even without a source, with no samples.
        for fam in [
            "mule_beacons_sent_total",
            "mule_beacons_accepted_total",
            "mule_beacons_dropped_total",
        ] {
            assert!(text.contains(&format!("# TYPE {fam} counter\n")), "{fam}");
            assert!(
                s.iter().all(|(series, _)| !series.starts_with(fam)),
                "{fam}"
            );
        }
        // 2×4 transport + 5 + 4 + 5 + 4 labelled, 13 plain, build info and uptime.
        assert_eq!(s.len(), 8 + 5 + 4 + 5 + 4 + 13 + 2);
    }

    #[test]
    fn counters_and_gauges_move_under_their_own_labels() {
        let m = Metrics::new();
        m.add_bytes_sent(Transport::Tcp, 100);
        m.add_bytes_sent(Transport::Tcp, 23);
        m.add_bytes_received(Transport::Bluetooth, 7);
        m.inc_pieces_sent(Transport::Bluetooth);
        m.inc_pieces_received(Transport::Tcp);
        m.inc_pieces_received(Transport::Tcp);
        m.inc_piece_rejected(RejectReason::StoreFull);
        m.inc_piece_rejected(RejectReason::Duplicate);
        m.inc_piece_rejected(RejectReason::Duplicate);
        m.inc_manifests_received();
        m.inc_manifest_rejected(ManifestReject::Expired);
        m.inc_sessions_opened();
        m.inc_session_failed(SessionFailure::Penalised);
        m.set_sessions_active(3);
        m.inc_contacts();
        m.set_neighbours(4);
        m.set_store_bytes(1 << 20);
        m.set_store_quota_bytes(u64::MAX);
        m.set_bundles(1, 2, 3, 4);
        let s = parse_exposition(&m.render());
        assert_eq!(value(&s, "mule_bytes_sent_total{transport=\"tcp\"}"), 123.0);
        assert_eq!(
            value(&s, "mule_bytes_sent_total{transport=\"bluetooth\"}"),
            0.0
        );
        assert_eq!(
            value(&s, "mule_bytes_received_total{transport=\"bluetooth\"}"),
            7.0
        );
        assert_eq!(
            value(&s, "mule_bytes_received_total{transport=\"tcp\"}"),
            0.0
        );
        assert_eq!(
            value(&s, "mule_pieces_sent_total{transport=\"bluetooth\"}"),
            1.0
        );
        assert_eq!(
            value(&s, "mule_pieces_received_total{transport=\"tcp\"}"),
            2.0
        );
        assert_eq!(
            value(&s, "mule_pieces_rejected_total{reason=\"store_full\"}"),
            1.0
        );
        assert_eq!(
            value(&s, "mule_pieces_rejected_total{reason=\"duplicate\"}"),
            2.0
        );
        assert_eq!(
            value(&s, "mule_pieces_rejected_total{reason=\"invalid\"}"),
            0.0
        );
        assert_eq!(value(&s, "mule_manifests_received_total"), 1.0);
        assert_eq!(
            value(&s, "mule_manifests_rejected_total{reason=\"expired\"}"),
            1.0
        );
        assert_eq!(value(&s, "mule_sessions_opened_total"), 1.0);
        assert_eq!(
            value(&s, "mule_sessions_failed_total{reason=\"penalised\"}"),
            1.0
        );
        assert_eq!(
            value(&s, "mule_sessions_failed_total{reason=\"connect\"}"),
            0.0
        );
        assert_eq!(value(&s, "mule_sessions_active"), 3.0);
        assert_eq!(value(&s, "mule_contacts_total"), 1.0);
        assert_eq!(value(&s, "mule_neighbours"), 4.0);
        assert_eq!(value(&s, "mule_store_bytes"), 1048576.0);
        assert_eq!(value(&s, "mule_bundles{state=\"incomplete\"}"), 1.0);
        assert_eq!(value(&s, "mule_bundles{state=\"failed\"}"), 4.0);
        // Large values are written exactly, not in float notation.
        assert!(
            m.render()
                .contains("\nmule_store_quota_bytes 18446744073709551615\n")
        );
        assert_eq!(m.bytes_sent(Transport::Tcp), 123);
        assert_eq!(m.bytes_received(Transport::Bluetooth), 7);
        // Gauges take the last value; counters keep adding.
        m.set_neighbours(0);
        m.add_bytes_sent(Transport::Tcp, 1);
        let s = parse_exposition(&m.render());
        assert_eq!(value(&s, "mule_neighbours"), 0.0);
        assert_eq!(value(&s, "mule_bytes_sent_total{transport=\"tcp\"}"), 124.0);
    }

    #[test]
    fn render_is_stable_for_the_same_state() {
        let m = Metrics::new();
        m.add_bytes_sent(Transport::Tcp, 5);
        let now = Instant::now();
        assert_eq!(m.render_at(now), m.render_at(now));
        let later = m.render_at(now + Duration::from_millis(1500));
        assert!(later.contains("\nmule_uptime_seconds 1.5"), "{later}");
    }

    #[test]
    fn beacon_source_is_read_at_each_scrape_and_merged_by_reason() {
        let m = Metrics::new();
        let sent = Arc::new(AtomicU64::new(10));
        let seen = sent.clone();
        m.set_beacon_source(Box::new(move || BeaconCounts {
            sent: seen.load(Ordering::Relaxed),
            accepted: 8,
            dropped: vec![
                ("replayed", 2),
                ("malformed", 1),
                ("replayed", 3),
                ("we\"ird\\\n", 1),
            ],
        }));
        let s = parse_exposition(&m.render());
        assert_eq!(value(&s, "mule_beacons_sent_total"), 10.0);
        assert_eq!(value(&s, "mule_beacons_accepted_total"), 8.0);
        assert_eq!(
            value(&s, "mule_beacons_dropped_total{reason=\"replayed\"}"),
            5.0
        );
        assert_eq!(
            value(&s, "mule_beacons_dropped_total{reason=\"malformed\"}"),
            1.0
        );
        assert_eq!(
            value(
                &s,
                "mule_beacons_dropped_total{reason=\"we\\\"ird\\\\\\n\"}"
            ),
            1.0
        );
        sent.store(11, Ordering::Relaxed);
        let s = parse_exposition(&m.render());
        assert_eq!(value(&s, "mule_beacons_sent_total"), 11.0);
    }

    #[test]
    fn bundle_states_convert_one_to_one() {
        use mule_bundle::store::State;
        for (s, want) in [
            (State::Incomplete, "incomplete"),
            (State::Complete, "complete"),
            (State::Installed, "installed"),
            (State::Failed, "failed"),
        ] {
            assert_eq!(BundleState::from(s).as_str(), want);
            assert_eq!(s.as_str(), want);
        }
    }
}
