//! Prometheus metrics: lock-free counters and gauges, and a tiny HTTP endpoint.
//!
//! # Goals
//! - Recording a sample is one relaxed atomic operation: [`Metrics`] is shared as
//!   `Arc<Metrics>` by every session task and never takes a lock on the hot path.
//! - Every label is a small enum ([`Transport`], [`RejectReason`], [`ManifestReject`],
//!   [`SessionFailure`], [`BundleState`]), so a typo cannot create a new series, and every
//!   series exists (at 0) from start-up, so dashboards and `rate()` see no gaps.
//! - [`Metrics::render`] writes the Prometheus text exposition format 0.0.4 in a fixed
//!   order: the same state always renders to the same bytes.
//! - [`serve`] answers scrapes and nothing else, with bounded resources: at most
//!   [`MAX_CONNECTIONS`] connections at once, a request head of at most [`MAX_HEAD`] bytes,
//!   [`READ_TIMEOUT`] to send it, [`WRITE_TIMEOUT`] to take the answer, then at most
//!   1 s / 64 KiB of leftover input discarded before closing. Garbage from a
//!   client gets a 4xx (or a closed connection) and never affects other clients.
//!
//! # Non-goals
//! Keep-alive, chunked bodies, TLS, authentication, compression, OpenMetrics. The endpoint
//! listens on loopback by default; put a reverse proxy in front of it for anything else.
//!
//! # Why hand-written
//! The exposition format for counters and gauges is a few lines of text per series, and
//! the series here are fixed at compile time. `prometheus-client` would add a registry, a
//! derive per label set and a custom collector for the externally owned beacon counters,
//! and it has no HTTP server anyway; `metrics-exporter-prometheus` pulls a TLS stack by
//! default. Writing the text and the 40-line HTTP/1.1 responder ourselves costs no
//! dependency and no binary size (the footprint targets are tight), and the unit tests
//! check the output against the format's grammar.
//!
//! # Series
//! | name | type | labels |
//! |---|---|---|
//! | `mule_build_info` | gauge (always 1) | `version` |
//! | `mule_uptime_seconds` | gauge | |
//! | `mule_bytes_sent_total`, `mule_bytes_received_total` | counter | `transport` |
//! | `mule_pieces_sent_total`, `mule_pieces_received_total` | counter | `transport` |
//! | `mule_pieces_rejected_total` | counter | `reason` ([`RejectReason`]) |
//! | `mule_manifests_received_total` | counter | |
//! | `mule_manifests_rejected_total` | counter | `reason` ([`ManifestReject`]) |
//! | `mule_sessions_opened_total` | counter | |
//! | `mule_sessions_failed_total` | counter | `reason` ([`SessionFailure`]) |
//! | `mule_sessions_active` | gauge | |
//! | `mule_contacts_total` | counter | |
//! | `mule_handshakes_reclaimed_total` | counter | |
//! | `mule_neighbours` | gauge | |
//! | `mule_store_bytes`, `mule_store_quota_bytes` | gauge | |
//! | `mule_store_full` | gauge (0 or 1) | |
//! | `mule_pieces_corrupt_total` | counter | |
//! | `mule_bundles` | gauge | `state` ([`BundleState`]) |
//! | `mule_rollback_refused_total` | counter | |
//! | `mule_equivocations_total` | counter | |
//! | `mule_rollbacks_total` | counter | |
//! | `mule_beacons_sent_total`, `mule_beacons_accepted_total` | counter | |
//! | `mule_beacons_dropped_total` | counter | `reason` (from the beacon source) |
//!
//! The beacon counters are owned by discovery, not by this module: the daemon plugs them
//! in with [`Metrics::set_beacon_source`] and they are read at scrape time. Without a
//! source the beacon families are rendered with HELP and TYPE but no samples.
//!
//! # HTTP
//! `GET /metrics` (a query string is ignored) answers 200 with
//! `Content-Type: text/plain; version=0.0.4; charset=utf-8`; `HEAD /metrics` the same
//! without the body; another method on `/metrics` answers 405, another path 404, a head
//! that does not parse 400, one over [`MAX_HEAD`] bytes 431, a client too slow to send its
//! head 408. Every answer carries `Content-Length` and `Connection: close`.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Connections served at once; further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest accepted request head (request line and headers), in bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its whole request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the whole answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// After answering, unread client input is discarded for at most this long...
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// ...or up to this many bytes, whichever comes first; then the connection closes.
const DRAIN_LIMIT: usize = 64 * 1024;

/// `Content-Type` of a scrape answer (text exposition format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Defines a label enum with its `ALL` list and stable label value.
macro_rules! label_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal,)+ }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* $v,)+
        }

        impl $name {
            /// Every value, in rendering order.
            pub const ALL: &'static [$name] = &[$($name::$v,)+];

            /// The label value as it appears in the exposition.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s,)+
                }
            }
        }
    };
}

label_enum! {
    /// How bytes and pieces moved (label `transport`).
    Transport {
        /// TCP over any IP interface.
        Tcp => "tcp",
        /// Bluetooth L2CAP.
        Bluetooth => "bluetooth",
    }
}

label_enum! {
    /// Why a received piece was not stored (label `reason`).
    RejectReason {
        /// Its hash did not match the manifest, or it was malformed.
        Invalid => "invalid",
        /// It belongs to a bundle whose manifest this node does not hold.
        UnknownBundle => "unknown_bundle",
        /// The store quota left no room for it.
        StoreFull => "store_full",
        /// The store failed to write it.
        StoreError => "store_error",
        /// This node already had it.
        Duplicate => "duplicate",
    }
}

label_enum! {
    /// Why a received manifest was not accepted (label `reason`).
    ManifestReject {
        /// It did not decode or its signature did not verify.
        Invalid => "invalid",
        /// Its publisher is not trusted by this node.
        Untrusted => "untrusted",
        /// It has expired.
        Expired => "expired",
        /// The store failed to record it.
        StoreError => "store_error",
    }
}

label_enum! {
    /// Why a session failed (label `reason`).
    SessionFailure {
        /// The connection could not be established.
        Connect => "connect",
        /// The handshake failed (bad signature, wrong version, ...).
        Handshake => "handshake",
        /// The peer broke the protocol.
        Protocol => "protocol",
        /// The peer went silent.
        Timeout => "timeout",
        /// The peer is penalised and was refused.
        Penalised => "penalised",
    }
}

label_enum! {
    /// Life-cycle state of a stored bundle (label `state` of `mule_bundles`).
    BundleState {
        /// Pieces are missing.
        Incomplete => "incomplete",
        /// Every piece is present, not installed yet.
        Complete => "complete",
        /// Exported and installed.
        Installed => "installed",
        /// Export or install failed.
        Failed => "failed",
    }
}

impl From<mule_bundle::store::State> for BundleState {
    fn from(s: mule_bundle::store::State) -> Self {
        use mule_bundle::store::State;
        match s {
            State::Incomplete => BundleState::Incomplete,
            State::Complete => BundleState::Complete,
            State::Installed => BundleState::Installed,
            // A rollback is a failed install of that release.
            State::Failed | State::RolledBack => BundleState::Failed,
        }
    }
}

/// Beacon counters supplied by discovery at scrape time; see [`Metrics::set_beacon_source`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BeaconCounts {
    /// Beacons sent since start.
    pub sent: u64,
    /// Beacons received and accepted since start.
    pub accepted: u64,
    /// Beacons dropped since start, by reason (a stable lowercase name). A reason listed
    /// twice is summed; `\`, `"` and newlines in a name are escaped, never dropped.
    pub dropped: Vec<(&'static str, u64)>,
}

/// A function returning the current beacon counters.
pub type BeaconSource = Box<dyn Fn() -> BeaconCounts + Send + Sync>;

/// One atomic per value of a label enum, indexed by the enum's discriminant.
struct Family<const N: usize>([AtomicU64; N]);

impl<const N: usize> Family<N> {
    fn new() -> Self {
        Family(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    fn add(&self, i: usize, n: u64) {
        self.0[i].fetch_add(n, Ordering::Relaxed);
    }

    fn set(&self, i: usize, n: u64) {
        self.0[i].store(n, Ordering::Relaxed);
    }

    fn get(&self, i: usize) -> u64 {
        self.0[i].load(Ordering::Relaxed)
    }
}

/// The node's metrics. Create one with [`Metrics::new`], share it as `Arc<Metrics>`,
/// record with the `add_*`/`inc_*`/`set_*` methods from any thread, expose it with
/// [`serve`] or [`Metrics::render`].
///
/// Counters only go up (a `u64` of bytes wraps after 16 EiB); gauges hold the last value set.
pub struct Metrics {
    started: Instant,
    bytes_sent: Family<2>,
    bytes_received: Family<2>,
    pieces_sent: Family<2>,
    pieces_received: Family<2>,
    pieces_rejected: Family<5>,
    manifests_received: AtomicU64,
    manifests_rejected: Family<4>,
    sessions_opened: AtomicU64,
    sessions_failed: Family<5>,
    sessions_active: AtomicU64,
    contacts: AtomicU64,
    handshakes_reclaimed: AtomicU64,
    neighbours: AtomicU64,
    store_bytes: AtomicU64,
    store_quota_bytes: AtomicU64,
    store_full: AtomicU64,
    pieces_corrupt: AtomicU64,
    /// Release events: refused rollbacks, equivocations, health-check rollbacks.
    rollback_refused: AtomicU64,
    equivocations: AtomicU64,
    rollbacks: AtomicU64,
    bundles: Family<4>,
    /// Set once at start-up and read per scrape, never on a hot path.
    beacons: RwLock<Option<BeaconSource>>,
}

// The array sizes above must match the enums; checked at compile time.
const _: () = {
    assert!(Transport::ALL.len() == 2);
    assert!(RejectReason::ALL.len() == 5);
    assert!(ManifestReject::ALL.len() == 4);
    assert!(SessionFailure::ALL.len() == 5);
    assert!(BundleState::ALL.len() == 4);
};

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// All series at zero; uptime counts from now.
    pub fn new() -> Self {
        Metrics {
            started: Instant::now(),
            bytes_sent: Family::new(),
            bytes_received: Family::new(),
            pieces_sent: Family::new(),
            pieces_received: Family::new(),
            pieces_rejected: Family::new(),
            manifests_received: AtomicU64::new(0),
            manifests_rejected: Family::new(),
            sessions_opened: AtomicU64::new(0),
            sessions_failed: Family::new(),
            sessions_active: AtomicU64::new(0),
            contacts: AtomicU64::new(0),
            handshakes_reclaimed: AtomicU64::new(0),
            neighbours: AtomicU64::new(0),
            store_bytes: AtomicU64::new(0),
            store_quota_bytes: AtomicU64::new(0),
            store_full: AtomicU64::new(0),
            pieces_corrupt: AtomicU64::new(0),
            rollback_refused: AtomicU64::new(0),
            equivocations: AtomicU64::new(0),
            rollbacks: AtomicU64::new(0),
            bundles: Family::new(),
            beacons: RwLock::new(None),
        }
    }

    /// Counts `n` bytes written to a peer over `t`.
    pub fn add_bytes_sent(&self, t: Transport, n: u64) {
        self.bytes_sent.add(t as usize, n);
    }

    /// Counts `n` bytes read from a peer over `t`.
    pub fn add_bytes_received(&self, t: Transport, n: u64) {
        self.bytes_received.add(t as usize, n);
    }

    /// Counts one piece sent to a peer over `t`.
    pub fn inc_pieces_sent(&self, t: Transport) {
        self.pieces_sent.add(t as usize, 1);
    }

    /// Counts one piece received from a peer over `t` (accepted or not).
    pub fn inc_pieces_received(&self, t: Transport) {
        self.pieces_received.add(t as usize, 1);
    }

    /// Counts one received piece that was not stored, and why.
    pub fn inc_piece_rejected(&self, r: RejectReason) {
        self.pieces_rejected.add(r as usize, 1);
    }

    /// Counts one manifest received from a peer (accepted or not).
    pub fn inc_manifests_received(&self) {
        self.manifests_received.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one received manifest that was not accepted, and why.
    pub fn inc_manifest_rejected(&self, r: ManifestReject) {
        self.manifests_rejected.add(r as usize, 1);
    }

    /// Counts one session that completed its handshake.
    pub fn inc_sessions_opened(&self) {
        self.sessions_opened.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one failed session, and why.
    pub fn inc_session_failed(&self, r: SessionFailure) {
        self.sessions_failed.add(r as usize, 1);
    }

    /// Sets the number of sessions currently open.
    pub fn set_sessions_active(&self, n: u64) {
        self.sessions_active.store(n, Ordering::Relaxed);
    }

    /// Counts one contact (a neighbour appeared).
    pub fn inc_contacts(&self) {
        self.contacts.fetch_add(1, Ordering::Relaxed);
    }

    /// An unauthenticated inbound connection was dropped to give its slot to a newer one.
    pub fn inc_handshakes_reclaimed(&self) {
        self.handshakes_reclaimed.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the number of neighbours currently in range.
    pub fn set_neighbours(&self, n: u64) {
        self.neighbours.store(n, Ordering::Relaxed);
    }

    /// Sets the bytes the store currently holds.
    pub fn set_store_bytes(&self, n: u64) {
        self.store_bytes.store(n, Ordering::Relaxed);
    }

    /// Sets the store quota in bytes.
    pub fn set_store_quota_bytes(&self, n: u64) {
        self.store_quota_bytes.store(n, Ordering::Relaxed);
    }

    /// Sets whether the store is full (disk or quota) and pieces are refused.
    pub fn set_store_full(&self, full: bool) {
        self.store_full.store(u64::from(full), Ordering::Relaxed);
    }

    /// Counts one stored piece that failed its hash when read back and was dropped.
    pub fn inc_pieces_corrupt(&self) {
        self.pieces_corrupt.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a release event of the store (refused rollback, equivocation, rollback).
    pub fn inc_release_event(&self, e: &mule_bundle::store::ReleaseEvent) {
        use mule_bundle::store::ReleaseEvent as E;
        let c = match e {
            E::RollbackRefused { .. } => &self.rollback_refused,
            E::Equivocation { .. } => &self.equivocations,
            E::RolledBack { .. } => &self.rollbacks,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The release event counters, for `mule status`.
    pub fn release_counts(&self) -> crate::view::ReleaseCounts {
        crate::view::ReleaseCounts {
            rollback_refused: self.rollback_refused.load(Ordering::Relaxed),
            equivocations: self.equivocations.load(Ordering::Relaxed),
            rolled_back: self.rollbacks.load(Ordering::Relaxed),
        }
    }

    /// The current value of `mule_pieces_corrupt_total`.
    pub fn pieces_corrupt(&self) -> u64 {
        self.pieces_corrupt.load(Ordering::Relaxed)
    }

    /// Sets the number of stored bundles in each state.
    pub fn set_bundles(&self, incomplete: u64, complete: u64, installed: u64, failed: u64) {
        self.bundles
            .set(BundleState::Incomplete as usize, incomplete);
        self.bundles.set(BundleState::Complete as usize, complete);
        self.bundles.set(BundleState::Installed as usize, installed);
        self.bundles.set(BundleState::Failed as usize, failed);
    }

    /// Sets the `mule_bundles` gauges by counting the states of `infos` (the store's list).
    pub fn set_bundle_states(&self, infos: &[mule_bundle::store::BundleInfo]) {
        let mut n = [0u64; 4];
        for info in infos {
            n[BundleState::from(info.state) as usize] += 1;
        }
        self.set_bundles(n[0], n[1], n[2], n[3]);
    }

    /// Plugs in discovery's beacon counters, read at each scrape. Replaces any earlier
    /// source. The function runs on the scraping task: keep it quick and non-blocking.
    pub fn set_beacon_source(&self, source: BeaconSource) {
        *self.beacons.write().unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    /// The current value of `mule_bytes_sent_total{transport}` (for status views and tests).
    pub fn bytes_sent(&self, t: Transport) -> u64 {
        self.bytes_sent.get(t as usize)
    }

    /// The current value of `mule_bytes_received_total{transport}`.
    pub fn bytes_received(&self, t: Transport) -> u64 {
        self.bytes_received.get(t as usize)
    }

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
        self.render_beacons(&mut o);
        o.0
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

/// Serves `GET /metrics` on `listener` until `shutdown` completes; then stops accepting,
/// drops the connections still open and returns. Never returns early: accept errors (such
/// as running out of file descriptors) are logged and retried after a short pause.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        // Wait for a free slot first, so at most MAX_CONNECTIONS are open; reap finished
        // connections meanwhile so the JoinSet stays bounded too.
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(res) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = res
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "metrics connection task panicked");
                }
                continue;
            }
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break, // The semaphore is never closed.
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        conns.spawn(async move {
            let _permit = permit;
            handle(stream, peer, &metrics).await;
        });
    }
    conns.shutdown().await;
}

/// One connection: read the head, answer, close.
async fn handle(mut stream: TcpStream, peer: SocketAddr, metrics: &Metrics) {
    let answer = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => Some(Response::error(408, "Request Timeout")),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "metrics endpoint: read failed");
            None
        }
        Ok(Ok(Head::Closed)) => None,
        Ok(Ok(Head::TooLarge)) => Some(Response::error(431, "Request Header Fields Too Large")),
        Ok(Ok(Head::Complete(head))) => Some(respond(&head, metrics)),
    };
    let Some(answer) = answer else { return };
    tracing::debug!(%peer, status = answer.status, "metrics endpoint: answered");
    let bytes = answer.to_bytes();
    let write = async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "metrics endpoint: write failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "metrics endpoint: client too slow to take the answer");
            return;
        }
    }
    // Closing a socket with unread input makes the kernel send a reset, which can destroy
    // the answer before the client reads it (a 431 leaves the rest of the head unread).
    // So read and discard what the client still sends, briefly and boundedly.
    let drain = async {
        let mut sink = [0u8; 1024];
        let mut left = DRAIN_LIMIT;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
}

/// What reading a request head produced.
enum Head {
    /// The head, up to and including its blank line (or all bytes before EOF).
    Complete(Vec<u8>),
    /// Over [`MAX_HEAD`] bytes without a blank line.
    TooLarge,
    /// The client closed without sending anything.
    Closed,
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            // EOF: answer whatever arrived (it will not parse as a full head: 400).
            return Ok(if buf.is_empty() {
                Head::Closed
            } else {
                Head::Complete(buf)
            });
        }
        // Only the new bytes (plus 3 before them) can complete the terminator.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[from..]) {
            buf.truncate(from + end);
            return Ok(Head::Complete(buf));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

/// Length of the head in `buf` including its terminating blank line (CRLF CRLF, or
/// LF LF as RFC 9112 allows recipients to accept), if complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A request line that parsed.
#[derive(Debug, PartialEq, Eq)]
struct Request<'a> {
    method: &'a str,
    /// The path, without any query string.
    path: &'a str,
}

/// Why a request head was refused with 400.
#[derive(Debug, PartialEq, Eq)]
enum BadRequest {
    /// No complete request line (no line end).
    Incomplete,
    /// The request line is not UTF-8.
    NotText,
    /// The request line is not `METHOD SP TARGET SP HTTP/1.x`.
    Malformed,
}

/// Parses the request line of a head. Headers are not needed and are ignored.
fn parse_request(head: &[u8]) -> Result<Request<'_>, BadRequest> {
    let end = head
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(BadRequest::Incomplete)?;
    let line = head[..end].strip_suffix(b"\r").unwrap_or(&head[..end]);
    let line = std::str::from_utf8(line).map_err(|_| BadRequest::NotText)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest::Malformed);
    };
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    let version_ok = matches!(version, "HTTP/1.0" | "HTTP/1.1");
    if !method_ok || !version_ok || !target.starts_with('/') {
        return Err(BadRequest::Malformed);
    }
    if target.bytes().any(|b| b.is_ascii_control()) {
        return Err(BadRequest::Malformed);
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Ok(Request { method, path })
}

/// An answer to write.
#[derive(Debug)]
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    /// Sent as `Allow` (405 only).
    allow: Option<&'static str>,
    body: String,
    /// `HEAD`: headers as for the body, but no body.
    head_only: bool,
}

impl Response {
    fn error(status: u16, reason: &'static str) -> Self {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            allow: None,
            body: format!("{status} {reason}\n"),
            head_only: false,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if let Some(allow) = self.allow {
            out.push_str("Allow: ");
            out.push_str(allow);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        if !self.head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

/// The answer to a request head (pure: no I/O).
fn respond(head: &[u8], metrics: &Metrics) -> Response {
    let req = match parse_request(head) {
        Ok(r) => r,
        Err(_) => return Response::error(400, "Bad Request"),
    };
    if req.path != "/metrics" {
        return Response::error(404, "Not Found");
    }
    match req.method {
        "GET" | "HEAD" => Response {
            status: 200,
            reason: "OK",
            content_type: CONTENT_TYPE,
            allow: None,
            body: metrics.render(),
            head_only: req.method == "HEAD",
        },
        _ => Response {
            allow: Some("GET, HEAD"),
            ..Response::error(405, "Method Not Allowed")
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn request_lines_parse_or_are_refused() {
        let ok = |h: &[u8]| parse_request(h).map(|r| (r.method.to_string(), r.path.to_string()));
        assert_eq!(
            ok(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(("GET".into(), "/metrics".into()))
        );
        assert_eq!(
            ok(b"HEAD /metrics?x=1 HTTP/1.0\n\n"),
            Ok(("HEAD".into(), "/metrics".into()))
        );
        assert_eq!(ok(b"GET /metrics HTTP/1.1"), Err(BadRequest::Incomplete));
        assert_eq!(
            ok(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"),
            Err(BadRequest::NotText)
        );
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/2\r\n\r\n",
            b"GET /met\trics HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert_eq!(
                ok(bad),
                Err(BadRequest::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b""), None);
    }

    #[test]
    fn responses_by_method_and_path() {
        let m = Metrics::new();
        m.inc_contacts();
        let text = |r: &Response| String::from_utf8(r.to_bytes()).unwrap();

        let r = respond(b"GET /metrics HTTP/1.1\r\n\r\n", &m);
        assert_eq!(r.status, 200);
        let t = text(&r);
        let (head, body) = t.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains(&format!("\r\nContent-Type: {CONTENT_TYPE}")),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\nContent-Length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("\r\nConnection: close"), "{head}");
        assert!(body.contains("\nmule_contacts_total 1\n"));

        let r = respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", &m);
        let t = text(&r);
        let (head, body) = t.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n") && body.is_empty(),
            "{t}"
        );
        assert!(
            head.contains(&format!("\r\nContent-Length: {}", r.body.len())),
            "{head}"
        );

        let r = respond(b"POST /metrics HTTP/1.1\r\n\r\n", &m);
        assert_eq!(r.status, 405);
        assert!(text(&r).contains("\r\nAllow: GET, HEAD\r\n"));
        assert_eq!(respond(b"GET / HTTP/1.1\r\n\r\n", &m).status, 404);
        assert_eq!(respond(b"DELETE /other HTTP/1.1\r\n\r\n", &m).status, 404);
        assert_eq!(
            respond(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", &m).status,
            400
        );
        let t = text(&respond(b"nonsense\r\n\r\n", &m));
        assert!(
            t.starts_with("HTTP/1.1 400 Bad Request\r\n")
                && t.ends_with("\r\n\r\n400 Bad Request\n"),
            "{t}"
        );
    }
}
