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

mod exposition;
mod http;
mod registry;

pub use http::{CONTENT_TYPE, MAX_CONNECTIONS, MAX_HEAD, READ_TIMEOUT, WRITE_TIMEOUT, serve};
pub use registry::{
    BeaconCounts, BeaconSource, BundleState, ManifestReject, Metrics, RejectReason, SessionFailure,
    Transport,
};
