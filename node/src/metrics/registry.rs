//! The registry: label enums, the atomic counters and gauges of [`Metrics`], and the
//! methods that record into them (one relaxed atomic operation each).

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

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
pub(super) struct Family<const N: usize>([AtomicU64; N]);

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

    pub(super) fn get(&self, i: usize) -> u64 {
        self.0[i].load(Ordering::Relaxed)
    }
}

/// The node's metrics. Create one with [`Metrics::new`], share it as `Arc<Metrics>`,
/// record with the `add_*`/`inc_*`/`set_*` methods from any thread, expose it with
/// [`serve`] or [`Metrics::render`].
///
/// Counters only go up (a `u64` of bytes wraps after 16 EiB); gauges hold the last value set.
pub struct Metrics {
    pub(super) started: Instant,
    pub(super) bytes_sent: Family<2>,
    pub(super) bytes_received: Family<2>,
    pub(super) pieces_sent: Family<2>,
    pub(super) pieces_received: Family<2>,
    pub(super) pieces_rejected: Family<5>,
    pub(super) manifests_received: AtomicU64,
    pub(super) manifests_rejected: Family<4>,
    pub(super) sessions_opened: AtomicU64,
    pub(super) sessions_failed: Family<5>,
    pub(super) sessions_active: AtomicU64,
    pub(super) contacts: AtomicU64,
    pub(super) handshakes_reclaimed: AtomicU64,
    pub(super) neighbours: AtomicU64,
    pub(super) store_bytes: AtomicU64,
    pub(super) store_quota_bytes: AtomicU64,
    pub(super) store_full: AtomicU64,
    pub(super) pieces_corrupt: AtomicU64,
    /// Release events: refused rollbacks, equivocations, health-check rollbacks.
    pub(super) rollback_refused: AtomicU64,
    pub(super) equivocations: AtomicU64,
    pub(super) rollbacks: AtomicU64,
    pub(super) bundles: Family<4>,
    /// Set once at start-up and read per scrape, never on a hot path.
    pub(super) beacons: RwLock<Option<BeaconSource>>,
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
}
