//! What `mule status`, `mule bundles`, `mule peers` and `mule contacts` show,
//! as plain serialisable data (the control protocol and `--json` output).

use serde::{Deserialize, Serialize};

/// A node's state at a glance.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    /// The node id (hex ed25519 public key).
    pub node_id: String,
    /// Addresses the session listener is bound to.
    pub listen: Vec<String>,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// Current neighbours.
    pub neighbours: Vec<Neighbour>,
    /// Every bundle in the store.
    pub bundles: Vec<Bundle>,
    /// Bytes used by the store (pieces and manifests).
    pub store_bytes: u64,
    /// The store quota in bytes.
    pub store_quota_bytes: u64,
    /// Why the store refuses pieces now (disk or quota full), if it does.
    #[serde(default)]
    pub store_full: Option<String>,
    /// Channels this node subscribes to.
    pub subscriptions: Vec<String>,
    /// Sessions currently open.
    pub sessions: usize,
    /// Release lineages this node knows: installed and newest release, equivocations
    /// (the publisher's key is flagged), refused rollbacks.
    #[serde(default)]
    pub releases: Vec<mule_bundle::LineageInfo>,
    /// Refused rollbacks, equivocations and rollbacks since the daemon started.
    #[serde(default)]
    pub release_events: ReleaseCounts,
}

/// Counters of release events since the daemon started (the metrics of the same names).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReleaseCounts {
    /// `mule_rollback_refused_total`.
    pub rollback_refused: u64,
    /// `mule_equivocations_total`.
    pub equivocations: u64,
    /// `mule_rollbacks_total`.
    pub rolled_back: u64,
}

/// A neighbour as the node sees it now.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Neighbour {
    /// Its node id (hex).
    pub node_id: String,
    /// The transport chosen for sessions (`udp-beacon`, `mdns`, `bluetooth`).
    pub transport: String,
    /// The address sessions go to.
    pub address: String,
    /// Seconds since this contact began.
    pub contact_age_s: u64,
    /// Whether a session with it is open.
    pub in_session: bool,
    /// The transport of that session (`tcp`, `bluetooth`).
    pub session_transport: Option<String>,
}

/// One bundle in the store.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Bundle {
    /// Bundle id (hex).
    pub id: String,
    /// Name from the manifest.
    pub name: String,
    /// Version label.
    pub version: String,
    /// Priority class.
    pub priority: String,
    /// Pieces held.
    pub pieces_have: u32,
    /// Pieces in all.
    pub pieces_total: u32,
    /// Content length in bytes.
    pub size: u64,
    /// Lifecycle state (`incomplete`, `complete`, `installed`, `failed: …`,
    /// `rolled_back: …`, `superseded`, `equivocal`, `waiting: …` for a complete bundle the
    /// install policy defers, or `too large: …` for a wanted bundle that cannot fit in the
    /// store quota at all).
    pub state: String,
    /// Release number within its lineage (0: unnumbered, format 1 manifest).
    #[serde(default)]
    pub release: u64,
    /// Whether this node wants it (subscribed) or only carries it.
    pub wanted: bool,
    /// Whether this node published it.
    pub published: bool,
    /// Whether its publisher is in the trust list.
    pub trusted: bool,
    /// Bytes per second stored over the last 10 s while it downloads (0 when idle or
    /// complete, and from the store directly when no daemon runs).
    #[serde(default)]
    pub rate_bytes_per_s: f64,
    /// Seconds until complete at that rate, when it is downloading.
    #[serde(default)]
    pub eta_s: Option<u64>,
}

/// What `mule media write` or `sync` did with a medium.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MediaReport {
    /// The medium's directory.
    pub medium: String,
    /// Manifests written, or taken from the medium.
    pub manifests: u64,
    /// Manifests on the medium that did not verify or that policy refused.
    pub manifests_refused: u64,
    /// Pieces written, or taken from the medium (verified and stored).
    pub pieces: u64,
    /// Pieces on the medium that failed verification (left there, not stored).
    pub pieces_refused: u64,
    /// Piece bytes written.
    pub bytes: u64,
    /// The medium went away during the import (what was stored stays).
    pub medium_gone: bool,
    /// Problems met on the way.
    pub errors: Vec<String>,
}

/// A stored piece that failed its check (`mule verify`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BadPiece {
    /// Bundle id (hex).
    pub bundle: String,
    /// Piece index.
    pub index: u32,
    /// What was wrong.
    pub reason: String,
}

/// Contact history and prediction for one peer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerContacts {
    /// Peer node id (hex).
    pub node_id: String,
    /// Number of contacts recorded.
    pub contacts: u64,
    /// Median contact duration in seconds.
    pub median_contact_s: f64,
    /// Median time between contacts in seconds.
    pub median_intercontact_s: f64,
    /// Seconds since last seen.
    pub last_seen_s_ago: u64,
    /// Bytes exchanged in all contacts.
    pub bytes: u64,
    /// PRoPHET delivery predictability towards this peer.
    pub predictability: f64,
}

/// A text progress bar of `width` cells for `have` of `total`.
pub fn progress_bar(have: u32, total: u32, width: usize) -> String {
    let filled = if total == 0 {
        width
    } else {
        (have as u64 * width as u64 / total as u64) as usize
    };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bar_bounds() {
        assert_eq!(progress_bar(0, 10, 4), "[....]");
        assert_eq!(progress_bar(5, 10, 4), "[##..]");
        assert_eq!(progress_bar(10, 10, 4), "[####]");
        assert_eq!(progress_bar(0, 0, 2), "[##]");
    }
}
