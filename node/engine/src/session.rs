//! The contact session: a sans-IO, full-duplex state machine for one neighbour.
//!
//! # Goals
//! - Mutually authenticate node ids (each side signs the other's fresh challenge).
//! - Send a compact summary first, then move manifests and pieces with no stop-and-wait:
//!   the receiver keeps a window of requests outstanding, the sender answers in order.
//! - Bound every buffer: the outbound queue (piece data is fetched from the driver only when
//!   the queue is below a low-water mark), outstanding requests in both directions, pieces
//!   awaiting verification, remembered `Have`s and manifests per session.
//! - Notice a dead link quickly: a `KeepAlive` after `keepalive_interval_ms` without sending,
//!   and the session closes after `idle_timeout_ms` without receiving (the link may be cut
//!   silently, with no FIN ever arriving).
//! - End any protocol violation with a `Bye` reason code and a [`Penalty`] for the driver's
//!   [`PenaltyBook`](crate::penalty::PenaltyBook).
//! - Hold up against hostile peers: before authentication only the handshake's small frames
//!   are admitted ([`frame::Phase`]); a piece is sent at most once per session unless the
//!   peer cancels it (repeats are ignored, then `Bye(RepeatedRequest)`); requests a peer
//!   leaves unanswered are taken over by other sessions after its patience (see
//!   [`PieceClaims::try_claim_at`]), and a peer that answers none is closed with
//!   `Bye(RequestsIgnored)`; what a peer advertises about its predictabilities and carry
//!   quota is clamped and weighed by its [`credibility`](crate::credibility).
//!
//! # Non-goals
//! Sockets, clocks, verification of manifests and pieces (the driver verifies and stores,
//! then reports the outcome), encryption (the transport's job if wanted).
//!
//! # States
//! `AwaitHello` → `AwaitHelloAck` → `Exchanging` → `Closing` → `Closed`. Both sides send
//! `Hello` at once; each answers the peer's `Hello` with a `HelloAck`; once the peer's
//! `HelloAck` verifies, the peer is authenticated and our `Summary` goes out. The peer's
//! first message after its `HelloAck` must be its `Summary`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use mule_proto::{Bitfield, BundleId, LineageId, NodeId, PieceRef};

use crate::RarityTracker;
use crate::claims::{ClaimOwner, PieceClaims};
use crate::frame::{
    self, ByeCode, FrameDecoder, FrameError, Hello, MAX_MANIFEST_FRAME, MAX_PIECE_BYTES,
    MAX_PIECE_LIST, Message, RefuseReason,
};
use crate::penalty::Penalty;
use crate::scheduler::{self, Budget, BundleMeta, Item, PeerView, ScheduleInput, SourceBundle};
use crate::summary::{
    BloomFilter, MAX_CHANNELS, MAX_IDS, MAX_PREDICTABILITIES, MAX_WANT_BUNDLES, PeerHoldings, Salt,
    Summary,
};

/// Domain separation tag of the `HelloAck` signature transcript.
pub const HELLO_ACK_TAG: &[u8] = b"mule/session/v1/hello-ack";

/// Shortest interval over which a peer's delivery rate is sampled (ms).
pub const RATE_SAMPLE_MS: u64 = 500;

/// Longest time between two full planning steps while requests could be made (ms).
pub const REPLAN_INTERVAL_MS: u64 = 200;

/// Most copies of one piece sent in one session: the first, plus one more after each
/// `Cancel` of it by the peer, up to this many in all.
pub const MAX_COPIES_PER_PIECE: u8 = 3;
/// Most pieces a session remembers as refused for lack of room (see `Exchange`).
const MAX_REFUSED_FOR_ROOM: usize = 4096;

/// Requests for pieces already sent (and not cancelled) tolerated in one session; one more
/// closes it with `Bye(RepeatedRequest)`. Each of them is ignored, not answered.
pub const MAX_REPEATED_REQUESTS: u32 = 64;

/// Requests a peer that never answered any may let go unanswered (taken over by other
/// sessions or stalled) before the session is closed with `Bye(RequestsIgnored)`: it
/// advertised pieces it does not send.
pub const MAX_IGNORED_REQUESTS: u32 = 8;

/// Tuning of one session. `Default` is what the daemon uses.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// Send a `KeepAlive` after this long without sending anything (ms).
    pub keepalive_interval_ms: u64,
    /// Close after this long without receiving anything (ms).
    pub idle_timeout_ms: u64,
    /// Close if the peer is not authenticated within this time (ms).
    pub handshake_timeout_ms: u64,
    /// Most requests we keep outstanding at the peer.
    pub max_outstanding_requests: u32,
    /// Most payload bytes we keep requested at the peer.
    pub max_outstanding_bytes: u64,
    /// Fewest pieces we keep requested whatever the measured rate (at least 2, so there is
    /// never stop-and-wait).
    pub min_outstanding_pieces: u32,
    /// Keep about this much of the peer's measured delivery rate requested (ms), so a slow
    /// neighbour does not hold claims that a fast one could serve sooner.
    pub request_window_ms: u64,
    /// Most requests we accept outstanding from the peer (advertised in `Hello`).
    pub max_peer_requests: u32,
    /// Ask the driver for more piece data while fewer bytes than this are queued to send.
    pub tx_low_water_bytes: usize,
    /// Stop requesting while this many received bytes await the driver's verdict.
    pub max_awaiting_store_bytes: u64,
    /// Target false-positive rate of our summary filter.
    pub bloom_fp_rate: f64,
    /// Largest piece payload we accept (advertised in `Hello`).
    pub piece_size_max: u32,
    /// Give up on outstanding requests after this long without any answer (ms): they are
    /// cancelled and released so other sessions can fetch those pieces.
    pub request_stall_ms: u64,
    /// Least patience with an unanswered request (ms): after
    /// `max(this, 4 × outstanding bytes / measured rate)` (before a rate is known,
    /// `max(this, 8 × handshake round trip)`), at most `request_stall_ms`, without an answer
    /// (or piece data arriving), other sessions may take our requests over.
    pub request_patience_ms: u64,
    /// Most manifests the peer may offer in one session.
    pub max_manifests_per_session: u32,
    /// Highest delivery predictability believed from a peer: what PRoPHET can produce,
    /// `1 − δ` (0.99 with the RFC 6693 parameters); more is clamped.
    pub max_peer_predictability: f32,
    /// Most carry quota believed from a peer (the daemon uses its own store quota): a
    /// claimed 2^40 bytes is taken as this.
    pub max_peer_carry_quota_bytes: u64,
    /// How long we expect the contact to last (sent in the summary), if known.
    pub expected_contact_ms: Option<u64>,
    /// Link rate estimate in bytes/s (for the contact budget of manifest offers), if known.
    pub link_rate_bytes_per_s: Option<u64>,
    /// If set, the peer must authenticate as this node.
    pub expected_peer: Option<NodeId>,
    /// This session's identity in the node's [`PieceClaims`].
    pub claim_owner: ClaimOwner,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            keepalive_interval_ms: 1_000,
            idle_timeout_ms: 3_000,
            handshake_timeout_ms: 5_000,
            max_outstanding_requests: 32,
            max_outstanding_bytes: 4 << 20,
            min_outstanding_pieces: 2,
            request_window_ms: 1_000,
            max_peer_requests: 256,
            tx_low_water_bytes: 1 << 20,
            max_awaiting_store_bytes: 8 << 20,
            bloom_fp_rate: 0.01,
            piece_size_max: MAX_PIECE_BYTES as u32,
            request_stall_ms: 10_000,
            request_patience_ms: 500,
            max_manifests_per_session: 4096,
            max_peer_predictability: 0.99,
            max_peer_carry_quota_bytes: 1 << 30,
            expected_contact_ms: None,
            link_rate_bytes_per_s: None,
            expected_peer: None,
            claim_owner: 0,
        }
    }
}

/// Which side opened the transport connection (informational: the protocol is symmetric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We connected.
    Initiator,
    /// The peer connected.
    Responder,
}

/// The randomness a session needs, supplied by the caller (fresh per session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSeed {
    /// Challenge the peer must sign.
    pub challenge: [u8; 32],
    /// Salt of our summary filter.
    pub salt: Salt,
}

/// A bundle whose verified manifest the node holds.
#[derive(Debug, Clone)]
pub struct LocalBundle {
    /// Scheduling metadata from the manifest.
    pub meta: BundleMeta,
    /// Pieces held.
    pub have: Bitfield,
    /// The manifest bytes exactly as signed (offered to peers).
    pub manifest: Arc<[u8]>,
}

/// The driver's snapshot of the node's state, kept current with `note_*` calls.
#[derive(Debug, Clone, Default)]
pub struct LocalView {
    /// Bundles with a verified manifest.
    pub bundles: BTreeMap<BundleId, LocalBundle>,
    /// Channels this node subscribes to.
    pub channels: Vec<String>,
    /// Individual bundles this node asks for.
    pub want_bundles: Vec<BundleId>,
    /// This node's delivery predictabilities towards other nodes.
    pub predictabilities: Vec<(NodeId, f32)>,
    /// Bytes this node can still accept for bundles carried for others.
    pub carry_quota_bytes: u64,
    /// Peers whose past claims did not all hold, with the weight (< 1) their advertised
    /// predictabilities are believed by (see [`crate::credibility`]); others count fully.
    pub peer_weights: HashMap<NodeId, f32>,
    /// The newest release the node knows of per lineage, also from manifests it no longer
    /// holds (the store's lineage records: newest seen, highest installed). Bundles of a
    /// lineage below it are superseded even when the newer manifest is not in `bundles`.
    pub newest_releases: HashMap<LineageId, u64>,
}

impl LocalView {
    /// Whether this node wants the bundle for itself.
    pub fn wants(&self, meta: &BundleMeta) -> bool {
        self.want_bundles.contains(&meta.id) || self.channels.contains(&meta.channel)
    }

    /// The bundles this node no longer moves: an older release of a lineage whose newer
    /// release it knows (a held manifest or [`newest_releases`](Self::newest_releases)), or a
    /// bundle a held manifest names as replaced (a rename across lineages). A superseded
    /// bundle is not requested, not offered, not advertised in summaries and not carried;
    /// the store evicts it first and never installs it.
    pub fn superseded(&self) -> HashSet<BundleId> {
        let mut newest = self.newest_releases.clone();
        for b in self.bundles.values() {
            if let Some((lineage, release)) = b.meta.release {
                let n = newest.entry(lineage).or_insert(release);
                *n = (*n).max(release);
            }
        }
        let mut out = HashSet::new();
        for b in self.bundles.values() {
            if let Some((lineage, release)) = b.meta.release
                && newest.get(&lineage).is_some_and(|n| *n > release)
            {
                out.insert(b.meta.id);
            }
            for replaced in &b.meta.replaces {
                // Only a rename by the same key: anyone can sign a manifest naming someone
                // else's bundle replaced.
                if *replaced != b.meta.id
                    && self
                        .bundles
                        .get(replaced)
                        .is_some_and(|r| r.meta.publisher == b.meta.publisher)
                {
                    out.insert(*replaced);
                }
            }
        }
        out
    }

    fn predictability(&self, node: &NodeId) -> f32 {
        self.predictabilities
            .iter()
            .find(|(n, _)| n == node)
            .map_or(0.0, |(_, p)| *p)
    }
}

/// Why the driver could not store a received piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceRejection {
    /// The data failed verification: the peer is penalised and the session closed.
    Invalid,
    /// The store is full: we stop requesting and tell the peer.
    StoreFull,
    /// The store is busy: the piece will be requested again later.
    Busy,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// The reason code (sent in our `Bye`, or received in the peer's).
    pub code: ByeCode,
    /// Whether the peer ended the session.
    pub by_peer: bool,
    /// Detail for the log.
    pub detail: String,
}

/// What the session tells its driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The peer proved it holds the key of `node`.
    PeerAuthenticated {
        /// The peer's node id.
        node: NodeId,
        /// Bytes it can carry for others.
        carry_quota_bytes: u64,
        /// Largest piece it accepts.
        piece_size_max: u32,
    },
    /// The peer's summary arrived (see [`Session::peer_holdings`], e.g. for the rarity tracker).
    SummaryReceived {
        /// The peer's node id.
        node: NodeId,
        /// Bundles it holds completely.
        complete: usize,
        /// Manifests it knows.
        manifests: usize,
        /// Pieces in its filter (as the sender counts them).
        filter_items: usize,
    },
    /// The peer offered a manifest: verify it, then call [`Session::note_manifest`] on every
    /// session (or [`Session::handle_manifest_rejected`] on this one).
    ManifestReceived {
        /// The manifest bytes.
        bytes: Vec<u8>,
    },
    /// A requested piece arrived: verify and store it, then call
    /// [`Session::note_piece_stored`] on every session (or
    /// [`Session::handle_piece_rejected`] on this one).
    PieceReceived {
        /// Which piece.
        piece: PieceRef,
        /// Its data.
        data: Vec<u8>,
    },
    /// The peer requested a piece: fetch it and call [`Session::send_piece`] (or
    /// [`Session::piece_unavailable`]). Emitted only while the send queue has room.
    PieceRequested {
        /// Which piece.
        piece: PieceRef,
    },
    /// The session ended. Release its claims (`PieceClaims::release_owner`), record the
    /// penalty, drain [`Session::poll_transmit`] (the `Bye`) and drop the transport.
    Closed {
        /// Why.
        reason: CloseReason,
        /// Penalty to record against the peer (if it was identified).
        penalty: Penalty,
    },
}

/// Transfer counters of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Bytes handed out by `poll_transmit`.
    pub bytes_sent: u64,
    /// Bytes passed to `handle_bytes`.
    pub bytes_received: u64,
    /// Pieces sent.
    pub pieces_sent: u64,
    /// Piece payload bytes sent.
    pub piece_bytes_sent: u64,
    /// Pieces received (before verification).
    pub pieces_received: u64,
    /// Piece payload bytes received.
    pub piece_bytes_received: u64,
    /// Requests sent.
    pub requests_sent: u64,
    /// Our requests the peer answered (piece or refusal): its holdings claims that held.
    pub requests_answered: u64,
    /// Our requests it let go unanswered while answering none (see
    /// [`MAX_IGNORED_REQUESTS`]): its holdings claims that did not hold.
    pub requests_ignored: u64,
}

enum State {
    AwaitHello,
    AwaitHelloAck { peer: Hello },
    Exchanging(Box<Exchange>),
    Closing,
    Closed,
}

struct Exchange {
    peer_id: NodeId,
    peer_hello: Hello,
    /// The peer's summary plus updates; `None` until its summary arrives.
    peer: Option<PeerHoldings>,
    /// Requests we sent and that are not answered yet, with their payload size.
    my_requests: HashMap<PieceRef, u64>,
    /// The same requests in the order sent (may hold stale entries; checked on use).
    my_order: VecDeque<PieceRef>,
    outstanding_bytes: u64,
    /// Pieces received and handed to the driver, awaiting its verdict.
    awaiting_store: HashMap<PieceRef, u64>,
    awaiting_bytes: u64,
    /// Requests we cancelled: the piece may still arrive and is then dropped silently.
    cancelled: HashSet<PieceRef>,
    /// Pieces delivered that the store had no room for, with how often: the peer sends a
    /// piece at most [`MAX_COPIES_PER_PIECE`] times a session, so while the store is full
    /// (and probed) these are asked for again only after every other piece.
    refused_for_room: HashMap<PieceRef, u8>,
    /// Claims to hand back at the next `plan_requests`.
    release: Vec<PieceRef>,
    /// Last time a request was answered (or the first one sent after none were pending), or
    /// piece data was arriving.
    last_progress: u64,
    /// Answers (pieces, refusals) the peer gave to our requests in this session.
    answered: u64,
    /// Since when a partial frame is buffered.
    partial_piece_since: Option<u64>,
    /// Our requests the peer let go unanswered (taken over or stalled) while it had
    /// answered none.
    ignored: u32,
    /// Measured delivery rate of this peer (bytes per ms), once known.
    rate: Option<f64>,
    sample_start: u64,
    sample_bytes: u64,
    /// Carry bytes requested in this session.
    carry_requested: u64,
    /// Pieces sent to the peer in this session (from [`Session::send_piece`] on), so a piece
    /// goes out at most once unless the peer cancels it (request amplification).
    served: HashMap<PieceRef, Served>,
    /// Requests for pieces in `served` the peer made anyway.
    repeated_requests: u32,
    /// Requests from the peer, in its order, not yet handed to the driver.
    peer_requests: VecDeque<PieceRef>,
    peer_request_set: HashSet<PieceRef>,
    /// Pieces the driver is fetching for us, with their size.
    fetching: HashMap<PieceRef, u64>,
    fetching_bytes: u64,
    manifests_offered: HashSet<BundleId>,
    manifests_received: u32,
    peer_store_full: bool,
    pending_haves: Vec<PieceRef>,
    pending_refuse: Vec<PieceRef>,
    pending_cancel: Vec<PieceRef>,
    /// The last full schedule's pieces not requested yet, best first. Progress (a piece
    /// answered or stored) only tops the window up from here; a full schedule runs again
    /// when something changed what the peer holds or we want, or every
    /// [`REPLAN_INTERVAL_MS`]. Entries may be stale and are checked when taken.
    plan: VecDeque<(PieceRef, scheduler::Reason)>,
}

/// What the sender remembers of a piece it sent in this session.
#[derive(Debug, Clone, Copy)]
struct Served {
    /// Copies queued or sent.
    copies: u8,
    /// The peer cancelled it since the last copy: it may ask once more.
    cancelled: bool,
}

/// One contact session with one neighbour.
///
/// # Driving it
/// 1. Create it with [`Session::new`] when a transport connection is up; it queues `Hello`.
/// 2. Whenever bytes arrive call [`handle_bytes`](Self::handle_bytes); when the time from
///    [`poll_timeout`](Self::poll_timeout) is reached call
///    [`handle_timeout`](Self::handle_timeout).
/// 3. After every `handle_*` / `note_*` / `send_piece` call:
///    - call [`plan_requests`](Self::plan_requests) with the node's shared
///      [`PieceClaims`] and [`RarityTracker`] (this is where requests are chosen);
///    - drain [`poll_event`](Self::poll_event) and act on each event (answering
///      `PieceRequested` with [`send_piece`](Self::send_piece), possibly later);
///    - drain [`poll_transmit`](Self::poll_transmit) into the transport, and call
///      `poll_event` again when the transport has room (piece data is requested lazily);
///    - re-arm the timer from [`poll_timeout`](Self::poll_timeout).
/// 4. Tell every session about changes of the node's state:
///    [`note_piece_stored`](Self::note_piece_stored) (also the session that received the
///    piece), [`note_manifest`](Self::note_manifest),
///    [`set_store_full`](Self::set_store_full).
/// 5. After [`Event::Closed`]: release the session's claims
///    (`claims.release_owner(session.claim_owner())`), record the penalty, call
///    [`replan`](Self::replan) on the node's other sessions, send what `poll_transmit` still
///    returns (the `Bye`), then drop the transport; [`is_closed`](Self::is_closed) turns true
///    once nothing is left to send.
///
/// Time is milliseconds since any fixed origin, never decreasing.
pub struct Session {
    cfg: SessionConfig,
    key: SigningKey,
    local_id: NodeId,
    role: Role,
    seed: SessionSeed,
    state: State,
    peer_id: Option<NodeId>,
    local: LocalView,
    /// [`LocalView::superseded`], kept current as manifests become known.
    superseded: HashSet<BundleId>,
    store_full: bool,
    decoder: FrameDecoder,
    control: Vec<u8>,
    /// Encoded piece frames not yet handed to the transport (a `Cancel` can still drop them).
    tx_pieces: VecDeque<(PieceRef, u64, Vec<u8>)>,
    tx_piece_bytes: usize,
    events: VecDeque<Event>,
    now: u64,
    /// Something changed what the peer holds or we want: run a full schedule.
    plan_dirty: bool,
    /// A request was answered or cancelled: top the window up from the cached plan.
    plan_refill: bool,
    last_plan: u64,
    started: u64,
    last_rx: u64,
    last_tx: u64,
    stats: SessionStats,
    /// Misbehaviour seen that did not end the session (e.g. a few repeated requests): the
    /// penalty of its end is at least this.
    misbehaviour: Penalty,
    /// From our Hello to the peer's HelloAck: about one round trip (ms).
    handshake_rtt: Option<u64>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("local", &self.local_id)
            .field("peer", &self.peer_id())
            .field("state", &self.state_name())
            .finish()
    }
}

/// Drops our request for `p` from the window (if the piece still arrives it is dropped as
/// cancelled); true if there was one.
fn forget_request(x: &mut Exchange, p: &PieceRef) -> bool {
    let Some(size) = x.my_requests.remove(p) else {
        return false;
    };
    x.outstanding_bytes -= size;
    x.cancelled.insert(*p);
    true
}

/// Requests another session took over because we were past our patience deadline: withdrawn
/// here (a `Cancel` to the peer) and not asked of this peer again in this session. Returns
/// how many.
fn withdraw_taken(x: &mut Exchange, claims: &PieceClaims, owner: ClaimOwner) -> usize {
    let taken: Vec<PieceRef> = x
        .my_requests
        .keys()
        .filter(|p| claims.owner(**p).is_some_and(|o| o != owner))
        .copied()
        .collect();
    for p in &taken {
        if forget_request(x, p)
            && let Some(h) = x.peer.as_mut()
        {
            h.add_lack(*p);
        }
    }
    if !taken.is_empty() {
        tracing::debug!(
            pieces = taken.len(),
            "unanswered requests taken over by another session"
        );
        x.pending_cancel.extend(taken.iter().copied());
    }
    taken.len()
}

/// The request window: (most requests, most bytes outstanding, the largest piece size of an
/// incomplete bundle). Never more requests than the peer accepts (its Hello), or it would
/// close the session; bytes about `request_window_ms` of the measured rate (1 MiB until
/// measured), but never fewer than `min_outstanding_pieces` pieces.
fn request_window(cfg: &SessionConfig, local: &LocalView, x: &Exchange) -> (usize, u64, u64) {
    let window = cfg.max_outstanding_requests.min(x.peer_hello.max_requests) as usize;
    let max = cfg.max_outstanding_bytes;
    let largest_piece = local
        .bundles
        .values()
        .filter(|b| !b.have.is_complete())
        .map(|b| b.meta.piece_size as u64)
        .max()
        .unwrap_or(0);
    let floor = (largest_piece * cfg.min_outstanding_pieces.max(2) as u64).min(max);
    let window_bytes = match x.rate {
        None => max.min(1 << 20),
        Some(r) => (r * cfg.request_window_ms as f64) as u64,
    }
    .clamp(floor, max);
    (window, window_bytes, largest_piece)
}

/// Hands back the newest requests (served last) until `window_bytes` are outstanding.
fn shed_to_window(
    x: &mut Exchange,
    claims: &mut PieceClaims,
    owner: ClaimOwner,
    window_bytes: u64,
) {
    let mut shed = Vec::new();
    while x.outstanding_bytes > window_bytes {
        let Some(p) = x.my_order.pop_back() else {
            break;
        };
        if forget_request(x, &p) {
            claims.release(p, owner);
            shed.push(p);
        }
    }
    tracing::debug!(
        pieces = shed.len(),
        window_bytes,
        "peer slower than requested for; shedding requests"
    );
    x.pending_cancel.extend(shed);
}

/// The receiver-side schedule: the peer is the source, we are the destination. Bundles we
/// hold complete, with pieces larger than we accept, or superseded are not asked for.
fn receiver_plan(
    local: &LocalView,
    superseded: &HashSet<BundleId>,
    piece_size_max: u32,
    peer: &PeerHoldings,
    carry_requested: u64,
    rarity: &RarityTracker,
) -> VecDeque<(PieceRef, scheduler::Reason)> {
    type Holds<'h> = Box<dyn Fn(u32) -> bool + 'h>;
    let holds: Vec<(BundleId, Holds<'_>)> = local
        .bundles
        .values()
        .filter(|b| {
            !b.have.is_complete()
                && b.meta.piece_size <= piece_size_max
                && !superseded.contains(&b.meta.id)
        })
        .map(|b| {
            let id = b.meta.id;
            let f: Holds<'_> = Box::new(move |index| peer.has(PieceRef { bundle: id, index }));
            (id, f)
        })
        .collect();
    let bundles = holds
        .iter()
        .map(|(id, f)| SourceBundle {
            meta: &local.bundles[id].meta,
            holds: &**f,
        })
        .collect();
    let me = SelfView {
        local,
        carry_left: local.carry_quota_bytes.saturating_sub(carry_requested),
    };
    let input = ScheduleInput {
        bundles,
        peer: &me,
        local_predictability: &|n| peer.predictability(n),
        rarity: &|p| rarity.holders(p),
        budget: Budget::UNLIMITED,
    };
    scheduler::schedule(&input)
        .into_iter()
        .filter_map(|d| match d.item {
            Item::Piece(p) => Some((p, d.reason)),
            Item::Manifest(_) => None,
        })
        .collect()
}

/// Requests from the cached plan until the window is full: skips what we hold by now (another
/// session stored it), what is asked for or awaiting the store already, and what another
/// session has claimed. Returns the requests and the bytes of them asked for carrying.
fn fill_window(
    x: &mut Exchange,
    local: &LocalView,
    claims: &mut PieceClaims,
    owner: ClaimOwner,
    now: u64,
    (window, window_bytes): (usize, u64),
) -> (Vec<PieceRef>, u64) {
    let mut batch = Vec::new();
    let mut carry_added = 0;
    while let Some(&(piece, reason)) = x.plan.front() {
        if x.my_requests.len() >= window || x.outstanding_bytes >= window_bytes {
            break;
        }
        x.plan.pop_front();
        // Taken from a cached plan: we may hold it by now (another session stored it).
        let Some(bundle) = local.bundles.get(&piece.bundle) else {
            continue;
        };
        if bundle.have.get(piece.index) {
            continue;
        }
        // A piece we cancelled earlier may be requested again (the peer
        // dropped it); if the old copy still arrives first it is taken as
        // the answer, and the later copy is dropped as cancelled.
        if x.my_requests.contains_key(&piece)
            || x.awaiting_store.contains_key(&piece)
            || !claims.try_claim_at(piece, owner, now)
        {
            continue;
        }
        let size = bundle.meta.piece_len(piece.index);
        if reason.class == scheduler::Class::Carry {
            carry_added += size;
        }
        tracing::trace!(piece = piece.index, bundle = %piece.bundle.short(), %reason, "request");
        x.my_requests.insert(piece, size);
        x.my_order.push_back(piece);
        x.outstanding_bytes += size;
        batch.push(piece);
    }
    (batch, carry_added)
}

/// The held, current bundles that supersede one the peer knows the manifest of: newer
/// releases of its lineage, and bundles naming it replaced.
fn superseding_offers(
    local: &LocalView,
    superseded: &HashSet<BundleId>,
    peer: &PeerHoldings,
) -> Vec<BundleId> {
    let old: Vec<&BundleMeta> = superseded
        .iter()
        .filter(|id| peer.knows_manifest(id))
        .filter_map(|id| local.bundles.get(id).map(|b| &b.meta))
        .collect();
    if old.is_empty() {
        return Vec::new();
    }
    local
        .bundles
        .values()
        .map(|b| &b.meta)
        .filter(|m| !superseded.contains(&m.id) && !peer.knows_manifest(&m.id))
        .filter(|m| {
            old.iter().any(|o| {
                (m.replaces.contains(&o.id) && m.publisher == o.publisher)
                    || matches!((m.release, o.release), (Some((l, r)), Some((ol, or))) if l == ol && r > or)
            })
        })
        .map(|m| m.id)
        .collect()
}

/// From when other sessions may take over this session's claims (see
/// [`SessionConfig::request_patience_ms`]); `None` while nothing is outstanding.
fn patience_deadline(x: &Exchange, cfg: &SessionConfig, handshake_rtt: Option<u64>) -> Option<u64> {
    if x.my_requests.is_empty() {
        return None;
    }
    let patience = match x.rate {
        Some(r) if r > 0.0 => (4.0 * x.outstanding_bytes as f64 / r) as u64,
        _ => 8 * handshake_rtt.unwrap_or(0),
    };
    Some(x.last_progress + patience.clamp(cfg.request_patience_ms, cfg.request_stall_ms))
}

/// Signature transcript: tag || challenge || signer id || verifier id.
fn transcript(challenge: &[u8; 32], signer: &NodeId, verifier: &NodeId) -> Vec<u8> {
    let mut m = Vec::with_capacity(HELLO_ACK_TAG.len() + 96);
    m.extend_from_slice(HELLO_ACK_TAG);
    m.extend_from_slice(challenge);
    m.extend_from_slice(signer.as_bytes());
    m.extend_from_slice(verifier.as_bytes());
    m
}

impl PeerView for PeerHoldings {
    fn has(&self, piece: PieceRef) -> bool {
        PeerHoldings::has(self, piece)
    }
    fn knows_manifest(&self, bundle: &BundleId) -> bool {
        PeerHoldings::knows_manifest(self, bundle)
    }
    fn wants(&self, meta: &BundleMeta) -> bool {
        PeerHoldings::wants(self, &meta.id, &meta.channel)
    }
    fn predictability(&self, node: &NodeId) -> f32 {
        PeerHoldings::predictability(self, node)
    }
    fn carry_quota_bytes(&self) -> u64 {
        self.carry_quota_bytes
    }
}

/// Ourselves as the destination of the receiver-side schedule.
struct SelfView<'a> {
    local: &'a LocalView,
    carry_left: u64,
}

impl PeerView for SelfView<'_> {
    fn has(&self, piece: PieceRef) -> bool {
        self.local
            .bundles
            .get(&piece.bundle)
            .is_some_and(|b| b.have.get(piece.index))
    }
    fn knows_manifest(&self, bundle: &BundleId) -> bool {
        self.local.bundles.contains_key(bundle)
    }
    fn wants(&self, meta: &BundleMeta) -> bool {
        self.local.wants(meta)
    }
    fn predictability(&self, node: &NodeId) -> f32 {
        self.local.predictability(node)
    }
    fn carry_quota_bytes(&self) -> u64 {
        self.carry_left
    }
}

impl Session {
    /// Starts a session; `Hello` is queued at once.
    pub fn new(
        cfg: SessionConfig,
        key: SigningKey,
        role: Role,
        now: u64,
        seed: SessionSeed,
        local: LocalView,
    ) -> Self {
        let local_id = NodeId(key.verifying_key().to_bytes());
        let mut s = Session {
            key,
            local_id,
            role,
            seed,
            state: State::AwaitHello,
            peer_id: None,
            superseded: local.superseded(),
            local,
            store_full: false,
            decoder: FrameDecoder::new(),
            control: Vec::with_capacity(4096),
            tx_pieces: VecDeque::new(),
            tx_piece_bytes: 0,
            events: VecDeque::new(),
            now,
            plan_dirty: true,
            plan_refill: false,
            last_plan: now,
            started: now,
            last_rx: now,
            last_tx: now,
            stats: SessionStats::default(),
            misbehaviour: Penalty::None,
            handshake_rtt: None,
            cfg,
        };
        let hello = Hello {
            node_id: s.local_id,
            challenge: s.seed.challenge,
            capabilities: 0,
            carry_quota_bytes: s.local.carry_quota_bytes,
            piece_size_max: s.cfg.piece_size_max,
            max_requests: s.cfg.max_peer_requests,
        };
        s.send(&Message::Hello(hello));
        s
    }

    // ----- accessors -----

    /// Our node id.
    pub fn local_id(&self) -> NodeId {
        self.local_id
    }

    /// This session's identity in the node's [`PieceClaims`].
    pub fn claim_owner(&self) -> ClaimOwner {
        self.cfg.claim_owner
    }

    /// Which side opened the connection.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The authenticated peer, once known (still known after the session closed).
    pub fn peer_id(&self) -> Option<NodeId> {
        self.peer_id
    }

    /// The peer's `Hello` (its limits and carry quota), once authenticated.
    pub fn peer_hello(&self) -> Option<&Hello> {
        match &self.state {
            State::Exchanging(x) => Some(&x.peer_hello),
            _ => None,
        }
    }

    /// What the peer holds and wants, once its summary arrived.
    pub fn peer_holdings(&self) -> Option<&PeerHoldings> {
        match &self.state {
            State::Exchanging(x) => x.peer.as_ref(),
            _ => None,
        }
    }

    /// The node state as this session knows it.
    pub fn local_view(&self) -> &LocalView {
        &self.local
    }

    /// Transfer counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Requests we have outstanding at the peer.
    pub fn outstanding_requests(&self) -> usize {
        match &self.state {
            State::Exchanging(x) => x.my_requests.len(),
            _ => 0,
        }
    }

    /// Name of the current state, for logs.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::AwaitHello => "await-hello",
            State::AwaitHelloAck { .. } => "await-hello-ack",
            State::Exchanging(_) => "exchanging",
            State::Closing => "closing",
            State::Closed => "closed",
        }
    }

    /// Which frames the session admits now: only the handshake's small ones until the peer is
    /// authenticated (a driver may also read in small chunks until then).
    pub fn phase(&self) -> frame::Phase {
        match self.state {
            State::Exchanging(_) => frame::Phase::Authenticated,
            _ => frame::Phase::Handshake,
        }
    }

    /// True once the session ended and everything it had to send was taken.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    // ----- outputs -----

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.fill_fetches();
        self.events.pop_front()
    }

    /// The next bytes to write to the transport (control frames first, then pieces).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.flush_lists();
        let out = if !self.control.is_empty() {
            Some(std::mem::replace(
                &mut self.control,
                Vec::with_capacity(4096),
            ))
        } else if let Some((_, payload, p)) = self.tx_pieces.pop_front() {
            self.tx_piece_bytes -= p.len();
            self.stats.pieces_sent += 1;
            self.stats.piece_bytes_sent += payload;
            Some(p)
        } else {
            None
        };
        match &out {
            Some(b) => {
                self.stats.bytes_sent += b.len() as u64;
                self.last_tx = self.now;
            }
            None => {
                if matches!(self.state, State::Closing) {
                    self.state = State::Closed;
                }
            }
        }
        out
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next (ms), if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            State::Closing | State::Closed => None,
            State::Exchanging(ref x) => {
                let t = (self.last_rx + self.cfg.idle_timeout_ms)
                    .min(self.last_tx + self.cfg.keepalive_interval_ms);
                let t = if x.peer.is_none() {
                    t.min(self.started + self.cfg.handshake_timeout_ms)
                } else {
                    t
                };
                Some(if x.my_requests.is_empty() {
                    t
                } else {
                    t.min(x.last_progress + self.cfg.request_stall_ms)
                })
            }
            _ => Some(
                (self.last_rx + self.cfg.idle_timeout_ms)
                    .min(self.started + self.cfg.handshake_timeout_ms)
                    .min(self.last_tx + self.cfg.keepalive_interval_ms),
            ),
        }
    }

    // ----- inputs -----

    /// Time passed: keep-alives, idle and handshake timeouts.
    pub fn handle_timeout(&mut self, now: u64) {
        self.now = self.now.max(now);
        let now = self.now;
        let deadline = self.started + self.cfg.handshake_timeout_ms;
        match &self.state {
            State::Closing | State::Closed => return,
            // Authenticated, but the peer's summary must also arrive within the deadline.
            State::Exchanging(x) if x.peer.is_some() || now < deadline => {}
            State::Exchanging(_) => {
                self.close(
                    ByeCode::HandshakeTimeout,
                    Penalty::Minor,
                    "no summary before the handshake deadline",
                );
                return;
            }
            _ => {
                if now >= deadline {
                    self.close(
                        ByeCode::HandshakeTimeout,
                        Penalty::Minor,
                        "handshake timed out",
                    );
                    return;
                }
            }
        }
        if now >= self.last_rx + self.cfg.idle_timeout_ms {
            // The contact ended (or the link was cut silently): not the peer's fault.
            self.close(
                ByeCode::IdleTimeout,
                Penalty::None,
                &format!("nothing received for {} ms", now - self.last_rx),
            );
            return;
        }
        if let State::Exchanging(x) = &mut self.state
            && !x.my_requests.is_empty()
            && now >= x.last_progress + self.cfg.request_stall_ms
        {
            // The peer is alive but does not answer: let other sessions fetch these.
            let stalled: Vec<PieceRef> = x.my_requests.drain().map(|(p, _)| p).collect();
            x.outstanding_bytes = 0;
            x.last_progress = now;
            for p in &stalled {
                x.cancelled.insert(*p);
                x.release.push(*p);
                if let Some(h) = x.peer.as_mut() {
                    h.add_lack(*p);
                }
            }
            tracing::debug!(pieces = stalled.len(), "requests stalled; cancelled");
            self.plan_dirty = true;
            let n = stalled.len();
            x.pending_cancel.extend(stalled);
            if self.note_ignored(n) {
                return;
            }
        }
        if now >= self.last_tx + self.cfg.keepalive_interval_ms {
            // With output already waiting for the transport, that output is the keep-alive.
            if self.control.is_empty() && self.tx_pieces.is_empty() {
                self.send(&Message::KeepAlive);
            }
            // Re-arm the timer either way, so a driver whose transport is blocked is not
            // woken again at once (no busy loop).
            self.last_tx = now;
        }
    }

    /// Bytes arrived from the transport.
    pub fn handle_bytes(&mut self, now: u64, bytes: &[u8]) {
        self.now = self.now.max(now);
        if matches!(self.state, State::Closing | State::Closed) {
            return;
        }
        self.last_rx = self.now;
        self.stats.bytes_received += bytes.len() as u64;
        let mut input = bytes;
        // Fast path: parse straight from the input while nothing is buffered.
        if self.decoder.buffered() == 0 {
            loop {
                match frame::decode_frame_in(input, self.phase()) {
                    Ok(Some((msg, used))) => {
                        input = &input[used..];
                        self.handle_message(msg);
                        if !self.is_open() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return self.frame_error(e),
                }
            }
        }
        if input.is_empty() {
            return;
        }
        self.decoder.push(input);
        loop {
            match self.decoder.next_message_in(self.phase()) {
                Ok(Some(msg)) => {
                    self.handle_message(msg);
                    if !self.is_open() {
                        return;
                    }
                }
                Ok(None) => return self.note_partial_frame(),
                Err(e) => return self.frame_error(e),
            }
        }
    }

    /// The transport ended (EOF or error) without a `Bye`: the session closes with
    /// [`Event::Closed`] (`by_peer`, code `Normal` if the handshake had finished, else
    /// `HandshakeTimeout`), no penalty (unless the peer misbehaved before), and nothing more
    /// to send.
    pub fn handle_transport_closed(&mut self, now: u64) {
        self.now = self.now.max(now);
        if !self.is_open() {
            return;
        }
        let code = match self.state {
            State::Exchanging(_) => ByeCode::Normal,
            _ => ByeCode::HandshakeTimeout,
        };
        self.state = State::Closed;
        self.control.clear();
        self.tx_pieces.clear();
        self.tx_piece_bytes = 0;
        self.events.push_back(Event::Closed {
            reason: CloseReason {
                code,
                by_peer: true,
                detail: "transport closed without Bye".into(),
            },
            penalty: self.misbehaviour,
        });
    }

    /// Ends the session from our side (e.g. shutdown): a `Bye` is queued.
    pub fn close_with(&mut self, code: ByeCode, text: &str) {
        self.close(code, Penalty::None, text);
    }

    /// The driver fetched a requested piece: queue it (one copy of `data`). Returns false
    /// if the piece is no longer wanted (cancelled meanwhile) or was never requested.
    pub fn send_piece(&mut self, piece: PieceRef, data: &[u8]) -> bool {
        let State::Exchanging(x) = &mut self.state else {
            return false;
        };
        let Some(size) = x.fetching.remove(&piece) else {
            return false;
        };
        x.fetching_bytes -= size;
        let served = x.served.entry(piece).or_insert(Served {
            copies: 0,
            cancelled: false,
        });
        served.copies = served.copies.saturating_add(1);
        served.cancelled = false;
        let mut buf = Vec::with_capacity(data.len() + 48);
        frame::encode_piece(piece, data, &mut buf);
        self.tx_piece_bytes += buf.len();
        self.tx_pieces.push_back((piece, data.len() as u64, buf));
        true
    }

    /// The driver cannot serve a requested piece (evicted, unreadable): tell the peer.
    pub fn piece_unavailable(&mut self, piece: PieceRef) {
        if let State::Exchanging(x) = &mut self.state
            && let Some(size) = x.fetching.remove(&piece)
        {
            x.fetching_bytes -= size;
            x.pending_refuse.push(piece);
        }
    }

    /// The driver stored a piece (from this session or any other): update the view, send a
    /// `Have` to the peer, and cancel our request for it here if another session got it.
    pub fn note_piece_stored(&mut self, piece: PieceRef) {
        // Also when the store already had it (a duplicate): the bookkeeping below must run.
        let newly = self
            .local
            .bundles
            .get_mut(&piece.bundle)
            .is_some_and(|b| b.have.set(piece.index));
        let State::Exchanging(x) = &mut self.state else {
            return;
        };
        x.refused_for_room.remove(&piece);
        if let Some(size) = x.awaiting_store.remove(&piece) {
            // Came from this peer: it knows.
            x.awaiting_bytes -= size;
            x.release.push(piece);
            self.plan_refill = true;
            return;
        }
        if let Some(size) = x.my_requests.remove(&piece) {
            x.outstanding_bytes -= size;
            x.cancelled.insert(piece);
            x.pending_cancel.push(piece);
            x.release.push(piece);
            self.plan_refill = true;
        }
        // Our summary went out when we entered `Exchanging`; anything newer is a Have.
        if newly {
            x.pending_haves.push(piece);
        }
    }

    /// The driver dropped a stored piece (it failed its hash when read back): we no longer
    /// hold it and may request it again, from this peer or another. The peer learnt from
    /// our summary or a `Have` that we hold it; a request for it is answered with
    /// `Refuse(NotHeld)` ([`piece_unavailable`](Self::piece_unavailable)).
    pub fn note_piece_lost(&mut self, piece: PieceRef) {
        if let Some(b) = self.local.bundles.get_mut(&piece.bundle) {
            b.have.clear(piece.index);
            self.plan_dirty = true;
        }
        // The peer may have sent this piece in this session.
        if matches!(self.state, State::Exchanging(_)) {
            self.cancel_delivered(piece);
        }
    }

    /// The driver could not store a piece this session delivered.
    pub fn handle_piece_rejected(&mut self, piece: PieceRef, why: PieceRejection) {
        let State::Exchanging(x) = &mut self.state else {
            return;
        };
        let Some(size) = x.awaiting_store.remove(&piece) else {
            return;
        };
        x.awaiting_bytes -= size;
        x.release.push(piece);
        match why {
            PieceRejection::Invalid => self.close(
                ByeCode::BadPiece,
                Penalty::Severe,
                &format!(
                    "piece {} of {} failed verification",
                    piece.index,
                    piece.bundle.short()
                ),
            ),
            PieceRejection::StoreFull => {
                // Once there is room it is asked for again, after the pieces never refused.
                if x.refused_for_room.len() < MAX_REFUSED_FOR_ROOM
                    || x.refused_for_room.contains_key(&piece)
                {
                    let n = x.refused_for_room.entry(piece).or_insert(0);
                    *n = n.saturating_add(1);
                }
                self.cancel_delivered(piece);
                self.set_store_full(true);
            }
            PieceRejection::Busy => {
                if let Some(p) = x.peer.as_mut() {
                    // Do not ask this peer again in this session; another may serve it.
                    p.add_lack(piece);
                }
            }
        }
    }

    /// Tells the peer to forget that it sent `piece` in this session (a peer sends a piece
    /// once per session unless the receiver cancels it), for a piece this node did not
    /// keep. Encoded at once, so it precedes any new request for the piece in the stream.
    fn cancel_delivered(&mut self, piece: PieceRef) {
        Message::Cancel(vec![piece]).encode(&mut self.control);
    }

    /// A manifest became known (verified and stored), from this session or elsewhere.
    pub fn note_manifest(&mut self, bundle: LocalBundle) {
        let id = bundle.meta.id;
        let release = bundle.meta.release;
        self.local.bundles.entry(id).or_insert(bundle);
        if let Some((lineage, n)) = release {
            let newest = self.local.newest_releases.entry(lineage).or_insert(n);
            *newest = (*newest).max(n);
        }
        self.update_superseded();
        self.plan_dirty = true;
        self.offer_manifests();
    }

    /// Recomputes the superseded set and withdraws what this session still asks for of a
    /// bundle that just became superseded: cancelled at the peer at once, so it stops
    /// sending them within this contact.
    fn update_superseded(&mut self) {
        let now = self.local.superseded();
        let newly: HashSet<BundleId> = now.difference(&self.superseded).copied().collect();
        self.superseded = now;
        if newly.is_empty() {
            return;
        }
        let State::Exchanging(x) = &mut self.state else {
            return;
        };
        let dropped: Vec<PieceRef> = x
            .my_requests
            .keys()
            .filter(|p| newly.contains(&p.bundle))
            .copied()
            .collect();
        for p in &dropped {
            if forget_request(x, p) {
                x.release.push(*p);
            }
        }
        x.plan.retain(|(p, _)| !newly.contains(&p.bundle));
        if !dropped.is_empty() {
            tracing::debug!(
                pieces = dropped.len(),
                "requests of superseded bundles withdrawn"
            );
            x.pending_cancel.extend(dropped);
        }
    }

    /// A manifest this session delivered failed verification: close with a penalty.
    pub fn handle_manifest_rejected(&mut self, detail: &str) {
        self.close(ByeCode::BadManifest, Penalty::Severe, detail);
    }

    /// The store became full (or has room again). While full we request nothing, cancel
    /// what is outstanding and tell the peer with `Refuse{StoreFull}`.
    pub fn set_store_full(&mut self, full: bool) {
        if self.store_full == full {
            return;
        }
        self.store_full = full;
        self.plan_dirty = true;
        if !full {
            return;
        }
        if let State::Exchanging(x) = &mut self.state {
            let pieces: Vec<PieceRef> = x.my_requests.drain().map(|(p, _)| p).collect();
            x.outstanding_bytes = 0;
            for p in &pieces {
                x.cancelled.insert(*p);
                x.release.push(*p);
            }
            x.pending_cancel.extend(pieces);
            let msg = Message::Refuse {
                reason: RefuseReason::StoreFull,
                pieces: Vec::new(),
            };
            msg.encode(&mut self.control);
        }
    }

    /// Updates our predictabilities (sent in the next session's summary; used at once for
    /// carry decisions).
    pub fn note_predictabilities(&mut self, predictabilities: Vec<(NodeId, f32)>) {
        self.local.predictabilities = predictabilities;
    }

    /// Chooses and sends requests for pieces the peer holds and we want (or should carry),
    /// claiming each in the node-wide `claims` so no two sessions request the same piece,
    /// and releasing claims this session no longer needs.
    ///
    /// The full schedule runs only when something changed what the peer holds or we want
    /// (summary, `Have`, `Refuse`, manifest, stalled requests, [`replan`](Self::replan)) or
    /// every [`REPLAN_INTERVAL_MS`], so claims released by other sessions and new rarity
    /// are picked up; an answered request only tops the window up from the cached order, so
    /// planning costs O(pieces) per interval, not per piece received.
    pub fn plan_requests(&mut self, claims: &mut PieceClaims, rarity: &RarityTracker) {
        let owner = self.cfg.claim_owner;
        let store_full = self.store_full;
        let State::Exchanging(x) = &mut self.state else {
            return;
        };
        for p in x.release.drain(..) {
            claims.release(p, owner);
        }
        let taken = withdraw_taken(x, claims, owner);
        if taken > 0 {
            self.plan_dirty = true;
            if self.note_ignored(taken) {
                return;
            }
        }
        let State::Exchanging(x) = &mut self.state else {
            return;
        };
        // Before any early return: progress since the last call moves the deadline on.
        claims.set_deadline(owner, patience_deadline(x, &self.cfg, self.handshake_rtt));
        if x.peer.is_none() {
            return;
        }
        let stale = self.plan_dirty || self.now >= self.last_plan + REPLAN_INTERVAL_MS;
        if !stale && !self.plan_refill {
            return;
        }
        let (window, window_bytes, largest_piece) = request_window(&self.cfg, &self.local, x);
        // The peer turned out much slower than requested for: hand back the newest requests
        // (served last) so other sessions can fetch them sooner. Only at twice the window:
        // the pieces are most likely in the peer's socket already, so a cancel on a noisy rate
        // sample (the first one after a contact starts reads low) would only send them twice.
        if x.outstanding_bytes > 2 * window_bytes + largest_piece {
            shed_to_window(x, claims, owner, window_bytes);
        }
        if x.my_order.len() > 4 * x.my_requests.len() + 64 {
            let live = &x.my_requests;
            x.my_order.retain(|p| live.contains_key(p));
        }
        if store_full
            || x.awaiting_bytes >= self.cfg.max_awaiting_store_bytes
            || x.my_requests.len() * 4 > window * 3
            || x.outstanding_bytes * 4 > window_bytes * 3
        {
            return;
        }
        self.plan_refill = false;
        if stale && let Some(peer) = x.peer.as_ref() {
            x.plan = receiver_plan(
                &self.local,
                &self.superseded,
                self.cfg.piece_size_max,
                peer,
                x.carry_requested,
                rarity,
            );
            if !x.refused_for_room.is_empty() {
                let refused = &x.refused_for_room;
                x.plan
                    .make_contiguous()
                    .sort_by_key(|(p, _)| refused.get(p).copied().unwrap_or(0));
            }
            self.plan_dirty = false;
            self.last_plan = self.now;
        }
        if x.my_requests.is_empty() {
            // Idle until now: neither the stall clock nor the rate sample should count it.
            x.last_progress = self.now;
            x.sample_start = self.now;
            x.sample_bytes = 0;
        }
        let (batch, carry_added) = fill_window(
            x,
            &self.local,
            claims,
            owner,
            self.now,
            (window, window_bytes),
        );
        x.carry_requested += carry_added;
        claims.set_deadline(owner, patience_deadline(x, &self.cfg, self.handshake_rtt));
        self.stats.requests_sent += batch.len() as u64;
        for chunk in batch.chunks(MAX_PIECE_LIST) {
            Message::Request(chunk.to_vec()).encode(&mut self.control);
        }
    }

    /// Forces a full planning step at the next [`plan_requests`](Self::plan_requests), e.g.
    /// after another session of the node closed and released its claims.
    pub fn replan(&mut self) {
        self.plan_dirty = true;
    }

    // ----- internals -----

    fn is_open(&self) -> bool {
        !matches!(self.state, State::Closing | State::Closed)
    }

    fn send(&mut self, msg: &Message) {
        msg.encode(&mut self.control);
    }

    fn close(&mut self, code: ByeCode, penalty: Penalty, detail: &str) {
        if !self.is_open() {
            return;
        }
        tracing::debug!(code = ?code, ?penalty, detail, "session closing");
        self.control.clear();
        self.tx_pieces.clear();
        self.tx_piece_bytes = 0;
        self.send(&Message::Bye {
            code,
            text: detail.to_owned(),
        });
        self.state = State::Closing;
        self.events.push_back(Event::Closed {
            reason: CloseReason {
                code,
                by_peer: false,
                detail: detail.to_owned(),
            },
            penalty: penalty.max(self.misbehaviour),
        });
    }

    /// A frame arriving in parts counts as progress of our requests (a slow link that is
    /// busy sending a large piece, or the manifests queued before it, is not stalled), for at
    /// most `request_stall_ms` per frame, so a peer cannot hold its claims by dribbling one.
    fn note_partial_frame(&mut self) {
        let pending = self.decoder.pending_kind().is_some();
        let State::Exchanging(x) = &mut self.state else {
            return;
        };
        if !pending {
            x.partial_piece_since = None;
            return;
        }
        let since = *x.partial_piece_since.get_or_insert(self.now);
        if !x.my_requests.is_empty() && self.now < since + self.cfg.request_stall_ms {
            x.last_progress = self.now;
        }
    }

    /// `n` of our requests went unanswered (taken over or stalled). If the peer has answered
    /// none in this session it is lying about what it holds: a minor penalty at least, and
    /// after [`MAX_IGNORED_REQUESTS`] the session closes. Returns whether it closed.
    fn note_ignored(&mut self, n: usize) -> bool {
        let State::Exchanging(x) = &mut self.state else {
            return false;
        };
        if x.answered > 0 {
            return false;
        }
        x.ignored = x.ignored.saturating_add(n as u32);
        self.stats.requests_ignored += n as u64;
        self.misbehaviour = self.misbehaviour.max(Penalty::Minor);
        if x.ignored < MAX_IGNORED_REQUESTS {
            return false;
        }
        let ignored = x.ignored;
        self.violation(
            ByeCode::RequestsIgnored,
            Penalty::Major,
            format!("{ignored} requests for advertised pieces went unanswered, none was answered"),
        );
        true
    }

    fn violation(&mut self, code: ByeCode, penalty: Penalty, detail: String) {
        self.close(code, penalty, &detail);
    }

    fn frame_error(&mut self, e: FrameError) {
        let penalty = match e {
            FrameError::UnsupportedVersion(_) => Penalty::None,
            _ => Penalty::Major,
        };
        self.violation(ByeCode::from(&e), penalty, e.to_string());
    }

    fn flush_lists(&mut self) {
        let State::Exchanging(x) = &mut self.state else {
            return;
        };
        for (list, kind) in [
            (&mut x.pending_cancel, 0u8),
            (&mut x.pending_refuse, 1),
            (&mut x.pending_haves, 2),
        ] {
            if list.is_empty() {
                continue;
            }
            for chunk in list.chunks(MAX_PIECE_LIST) {
                let pieces = chunk.to_vec();
                let msg = match kind {
                    0 => Message::Cancel(pieces),
                    1 => Message::Refuse {
                        reason: RefuseReason::NotHeld,
                        pieces,
                    },
                    _ => Message::Have(pieces),
                };
                msg.encode(&mut self.control);
            }
            list.clear();
        }
    }

    /// Hands requested pieces to the driver while the send queue is below the low-water mark.
    fn fill_fetches(&mut self) {
        let State::Exchanging(x) = &mut self.state else {
            return;
        };
        while self.tx_piece_bytes as u64 + x.fetching_bytes < self.cfg.tx_low_water_bytes as u64 {
            let Some(piece) = x.peer_requests.pop_front() else {
                break;
            };
            x.peer_request_set.remove(&piece);
            let size = match self.local.bundles.get(&piece.bundle) {
                Some(b) if b.have.get(piece.index) => b.meta.piece_len(piece.index),
                _ => {
                    x.pending_refuse.push(piece);
                    continue;
                }
            };
            x.fetching.insert(piece, size);
            x.fetching_bytes += size;
            self.events.push_back(Event::PieceRequested { piece });
        }
    }

    fn build_summary(&self) -> Summary {
        let partial: usize = self
            .local
            .bundles
            .values()
            .filter(|b| !b.have.is_complete())
            .map(|b| b.have.count() as usize)
            .sum();
        let mut filter = BloomFilter::for_items(self.seed.salt, partial, self.cfg.bloom_fp_rate);
        let mut complete = Vec::new();
        let mut manifests = Vec::new();
        for b in self.local.bundles.values() {
            if self.superseded.contains(&b.meta.id) {
                continue;
            } else if b.have.is_complete() {
                complete.push(b.meta.id);
            } else {
                manifests.push(b.meta.id);
                for index in b.have.iter_present() {
                    filter.insert(PieceRef {
                        bundle: b.meta.id,
                        index,
                    });
                }
            }
        }
        complete.truncate(MAX_IDS);
        manifests.truncate(MAX_IDS);
        let mut preds: Vec<(NodeId, f32)> = self
            .local
            .predictabilities
            .iter()
            .copied()
            .filter(|(_, p)| p.is_finite() && (0.0..=1.0).contains(p))
            .collect();
        preds.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        preds.truncate(MAX_PREDICTABILITIES);
        Summary {
            filter,
            complete,
            manifests,
            channels: self
                .local
                .channels
                .iter()
                .filter(|c| c.len() <= crate::summary::MAX_CHANNEL_LEN)
                .take(MAX_CHANNELS)
                .cloned()
                .collect(),
            want_bundles: self
                .local
                .want_bundles
                .iter()
                .take(MAX_WANT_BUNDLES)
                .copied()
                .collect(),
            predictabilities: preds,
            carry_quota_bytes: self.local.carry_quota_bytes,
            expected_contact_ms: self.cfg.expected_contact_ms,
        }
    }

    /// Sender side: offer the manifests the scheduler picks (peer lacks them and wants or
    /// should carry them).
    fn offer_manifests(&mut self) {
        let State::Exchanging(x) = &mut self.state else {
            return;
        };
        let Some(peer) = x.peer.as_ref() else {
            return;
        };
        if x.peer_store_full {
            return;
        }
        let holds: Vec<(BundleId, &Bitfield)> = self
            .local
            .bundles
            .values()
            .filter(|b| {
                !x.manifests_offered.contains(&b.meta.id)
                    && !peer.knows_manifest(&b.meta.id)
                    && !self.superseded.contains(&b.meta.id)
            })
            .map(|b| (b.meta.id, &b.have))
            .collect();
        if holds.is_empty() {
            return;
        }
        let closures: Vec<Box<dyn Fn(u32) -> bool + '_>> = holds
            .iter()
            .map(|(_, bf)| {
                let bf = *bf;
                Box::new(move |i| bf.get(i)) as Box<dyn Fn(u32) -> bool>
            })
            .collect();
        let local = &self.local;
        let input = ScheduleInput {
            bundles: holds
                .iter()
                .zip(&closures)
                .map(|((id, _), f)| SourceBundle {
                    meta: &local.bundles[id].meta,
                    holds: &**f,
                })
                .collect(),
            peer,
            local_predictability: &|n| local.predictability(n),
            rarity: &|_| 0,
            budget: Budget {
                expected_contact_ms: self.cfg.expected_contact_ms.or(peer.expected_contact_ms),
                link_rate_bytes_per_s: self.cfg.link_rate_bytes_per_s,
                slack: 0.25,
                per_piece_overhead: 48,
            },
        };
        let plan = scheduler::schedule(&input);
        let mut offer = Vec::new();
        for d in plan {
            if let Item::Manifest(id) = d.item {
                tracing::trace!(bundle = %id.short(), reason = %d.reason, "offer manifest");
                offer.push(id);
            }
        }
        drop(closures);
        // A peer that holds or fetches a bundle we know superseded learns of its successor,
        // whether or not it would want or carry it, so that it stops spending contacts on
        // the old one.
        for id in superseding_offers(&self.local, &self.superseded, peer) {
            if !offer.contains(&id) && !x.manifests_offered.contains(&id) {
                tracing::debug!(bundle = %id.short(), "offer the successor of a superseded bundle");
                offer.push(id);
            }
        }
        for id in offer {
            let bytes = &self.local.bundles[&id].manifest;
            if bytes.len() + 16 > MAX_MANIFEST_FRAME {
                continue;
            }
            x.manifests_offered.insert(id);
            Message::Manifest {
                bytes: bytes.to_vec(),
            }
            .encode(&mut self.control);
        }
        if let Some(p) = x.peer.as_mut() {
            for id in &x.manifests_offered {
                p.add_manifest(*id);
            }
        }
    }

    fn handle_message(&mut self, msg: Message) {
        match msg {
            Message::Bye { code, text } => {
                self.state = State::Closed;
                self.control.clear();
                self.tx_pieces.clear();
                self.tx_piece_bytes = 0;
                self.events.push_back(Event::Closed {
                    reason: CloseReason {
                        code,
                        by_peer: true,
                        detail: text,
                    },
                    penalty: self.misbehaviour,
                });
                return;
            }
            Message::KeepAlive => return,
            _ => {}
        }
        let state = std::mem::replace(&mut self.state, State::Closed);
        match state {
            State::AwaitHello => match msg {
                Message::Hello(h) => self.on_hello(h),
                other => {
                    self.state = State::AwaitHello;
                    self.unexpected(&other);
                }
            },
            State::AwaitHelloAck { peer } => match msg {
                Message::HelloAck { signature } => self.on_hello_ack(peer, signature),
                other => {
                    self.state = State::AwaitHelloAck { peer };
                    self.unexpected(&other);
                }
            },
            State::Exchanging(x) => {
                self.state = State::Exchanging(x);
                self.on_exchange(msg);
            }
            s @ (State::Closing | State::Closed) => self.state = s,
        }
    }

    fn unexpected(&mut self, msg: &Message) {
        self.violation(
            ByeCode::UnexpectedMessage,
            Penalty::Minor,
            format!("unexpected {:?} in state {}", msg.kind(), self.state_name()),
        );
    }

    fn on_hello(&mut self, h: Hello) {
        self.state = State::AwaitHello;
        if h.node_id == self.local_id {
            return self.close(
                ByeCode::SelfConnection,
                Penalty::None,
                "connected to ourselves",
            );
        }
        if let Some(expected) = self.cfg.expected_peer
            && expected != h.node_id
        {
            return self.violation(
                ByeCode::AuthFailed,
                Penalty::Minor,
                format!(
                    "expected node {}, peer says {}",
                    expected.short(),
                    h.node_id.short()
                ),
            );
        }
        let msg = transcript(&h.challenge, &self.local_id, &h.node_id);
        let signature = self.key.sign(&msg).to_bytes();
        self.send(&Message::HelloAck { signature });
        self.state = State::AwaitHelloAck { peer: h };
    }

    fn on_hello_ack(&mut self, peer: Hello, signature: [u8; 64]) {
        let msg = transcript(&self.seed.challenge, &peer.node_id, &self.local_id);
        let ok = VerifyingKey::from_bytes(peer.node_id.as_bytes())
            .and_then(|k| k.verify_strict(&msg, &Signature::from_bytes(&signature)))
            .is_ok();
        if !ok {
            self.state = State::AwaitHelloAck { peer };
            return self.violation(
                ByeCode::AuthFailed,
                Penalty::Severe,
                "challenge signature does not verify".into(),
            );
        }
        self.peer_id = Some(peer.node_id);
        self.handshake_rtt = Some(self.now.saturating_sub(self.started));
        self.events.push_back(Event::PeerAuthenticated {
            node: peer.node_id,
            carry_quota_bytes: peer
                .carry_quota_bytes
                .min(self.cfg.max_peer_carry_quota_bytes),
            piece_size_max: peer.piece_size_max,
        });
        let summary = self.build_summary();
        self.send(&Message::Summary(Box::new(summary)));
        self.state = State::Exchanging(Box::new(Exchange {
            peer_id: peer.node_id,
            peer_hello: peer,
            peer: None,
            my_requests: HashMap::new(),
            my_order: VecDeque::new(),
            outstanding_bytes: 0,
            awaiting_store: HashMap::new(),
            awaiting_bytes: 0,
            cancelled: HashSet::new(),
            refused_for_room: HashMap::new(),
            release: Vec::new(),
            last_progress: self.now,
            answered: 0,
            partial_piece_since: None,
            ignored: 0,
            rate: None,
            sample_start: self.now,
            sample_bytes: 0,
            carry_requested: 0,
            served: HashMap::new(),
            repeated_requests: 0,
            peer_requests: VecDeque::new(),
            peer_request_set: HashSet::new(),
            fetching: HashMap::new(),
            fetching_bytes: 0,
            manifests_offered: HashSet::new(),
            manifests_received: 0,
            peer_store_full: false,
            pending_haves: Vec::new(),
            pending_refuse: Vec::new(),
            pending_cancel: Vec::new(),
            plan: VecDeque::new(),
        }));
    }

    fn on_exchange(&mut self, msg: Message) {
        let State::Exchanging(x) = &mut self.state else {
            return;
        };
        if x.peer.is_none() {
            return match msg {
                Message::Summary(s) => self.on_summary(*s),
                other => self.unexpected(&other),
            };
        }
        match msg {
            Message::Hello(_) | Message::HelloAck { .. } | Message::Summary(_) => {
                self.unexpected(&msg)
            }
            Message::Manifest { bytes } => self.on_manifest_offered(bytes),
            Message::Request(pieces) => self.on_requests(pieces),
            Message::Cancel(pieces) => self.on_cancel(pieces),
            Message::Piece { piece, data } => self.on_piece(piece, data),
            Message::Have(pieces) => self.on_have(pieces),
            Message::Refuse { reason, pieces } => self.on_refuse(reason, pieces),
            Message::KeepAlive | Message::Bye { .. } => {}
        }
    }

    /// The peer's summary, the first message of the exchange.
    fn on_summary(&mut self, s: Summary) {
        let State::Exchanging(x) = &mut self.state else {
            return;
        };
        let node = x.peer_id;
        let ev = Event::SummaryReceived {
            node,
            complete: s.complete.len(),
            manifests: s.manifests.len(),
            filter_items: s.filter.len(),
        };
        let mut holdings = PeerHoldings::new(s);
        let weight = self.local.peer_weights.get(&node).copied().unwrap_or(1.0);
        holdings.discount_predictabilities(self.cfg.max_peer_predictability, weight);
        holdings.clamp_carry_quota(self.cfg.max_peer_carry_quota_bytes);
        x.peer = Some(holdings);
        self.plan_dirty = true;
        self.events.push_back(ev);
        self.offer_manifests();
    }

    /// The peer offers a manifest: the driver verifies and stores it.
    fn on_manifest_offered(&mut self, bytes: Vec<u8>) {
        let max_manifests = self.cfg.max_manifests_per_session;
        let State::Exchanging(x) = &mut self.state else {
            return;
        };
        x.manifests_received += 1;
        if x.manifests_received > max_manifests {
            return self.violation(
                ByeCode::TooManyRequests,
                Penalty::Major,
                format!("more than {max_manifests} manifests offered"),
            );
        }
        if !x.my_requests.is_empty() {
            // The link is busy with data we will verify (a forged manifest ends the
            // session): our requests wait behind it, they are not ignored.
            x.last_progress = self.now;
        }
        self.events.push_back(Event::ManifestReceived { bytes });
    }

    /// The peer asks for pieces: queued for [`Event::PieceRequested`], refused when not
    /// held, ignored when sent already (counted, penalised past a limit).
    fn on_requests(&mut self, pieces: Vec<PieceRef>) {
        let max_peer_requests = self.cfg.max_peer_requests as usize;
        let State::Exchanging(x) = &mut self.state else {
            return;
        };
        for piece in pieces {
            if x.peer_request_set.contains(&piece) || x.fetching.contains_key(&piece) {
                continue;
            }
            if let Some(s) = x.served.get(&piece)
                && (!s.cancelled || s.copies >= MAX_COPIES_PER_PIECE)
            {
                // Sent already: ignored, so the peer cannot make us upload a piece
                // again and again for a few bytes of requests.
                x.repeated_requests += 1;
                self.misbehaviour = self.misbehaviour.max(Penalty::Minor);
                if x.repeated_requests > MAX_REPEATED_REQUESTS {
                    return self.violation(
                        ByeCode::RepeatedRequest,
                        Penalty::Major,
                        format!(
                            "more than {MAX_REPEATED_REQUESTS} requests for pieces already sent (last: piece {} of {})",
                            piece.index,
                            piece.bundle.short()
                        ),
                    );
                }
                continue;
            }
            let held = self
                .local
                .bundles
                .get(&piece.bundle)
                .is_some_and(|b| b.have.get(piece.index));
            if !held {
                if x.pending_refuse.len() >= max_peer_requests {
                    return self.violation(
                        ByeCode::TooManyRequests,
                        Penalty::Major,
                        format!("more than {max_peer_requests} unanswerable requests queued"),
                    );
                }
                x.pending_refuse.push(piece);
                continue;
            }
            if x.peer_requests.len() + x.fetching.len() >= max_peer_requests {
                return self.violation(
                    ByeCode::TooManyRequests,
                    Penalty::Major,
                    format!("more than {max_peer_requests} requests outstanding"),
                );
            }
            x.peer_request_set.insert(piece);
            x.peer_requests.push_back(piece);
        }
    }

    /// The peer withdraws requests (or tells us it dropped a piece we sent).
    fn on_cancel(&mut self, pieces: Vec<PieceRef>) {
        let State::Exchanging(x) = &mut self.state else {
            return;
        };
        for piece in pieces {
            if x.peer_request_set.remove(&piece) {
                x.peer_requests.retain(|p| *p != piece);
            } else if let Some(size) = x.fetching.remove(&piece) {
                x.fetching_bytes -= size;
            } else if let Some(s) = x.served.get_mut(&piece) {
                // Sent (or queued): the peer may ask for it once more.
                s.cancelled = true;
                if let Some(i) = self.tx_pieces.iter().position(|(p, ..)| *p == piece) {
                    // Encoded but not yet handed to the transport: drop it.
                    let (_, _, frame) = self.tx_pieces.remove(i).expect("position is valid");
                    self.tx_piece_bytes -= frame.len();
                    s.copies -= 1;
                }
            }
        }
    }

    /// A piece arrives: an answer to a request (checked for size, then handed to the driver
    /// to verify and store), a late answer to a cancelled one, or a violation.
    fn on_piece(&mut self, piece: PieceRef, data: Vec<u8>) {
        let piece_size_max = self.cfg.piece_size_max as usize;
        let State::Exchanging(x) = &mut self.state else {
            return;
        };
        if let Some(size) = x.my_requests.remove(&piece) {
            x.outstanding_bytes -= size;
            x.last_progress = self.now;
            x.answered += 1;
            self.stats.requests_answered += 1;
            if data.len() as u64 != size || data.len() > piece_size_max {
                return self.violation(
                    ByeCode::BadPiece,
                    Penalty::Severe,
                    format!(
                        "piece {} of {} has {} bytes, expected {size}",
                        piece.index,
                        piece.bundle.short(),
                        data.len()
                    ),
                );
            }
            x.awaiting_store.insert(piece, size);
            x.awaiting_bytes += size;
            x.sample_bytes += size;
            let dt = self.now.saturating_sub(x.sample_start);
            if dt >= RATE_SAMPLE_MS {
                let inst = x.sample_bytes as f64 / dt as f64;
                x.rate = Some(x.rate.map_or(inst, |r| (r + inst) / 2.0));
                x.sample_start = self.now;
                x.sample_bytes = 0;
            }
            self.plan_refill = true;
            self.stats.pieces_received += 1;
            self.stats.piece_bytes_received += size;
            self.events.push_back(Event::PieceReceived { piece, data });
        } else if x.cancelled.remove(&piece) {
            // An answer all the same (it crossed our Cancel).
            x.answered += 1;
            self.stats.requests_answered += 1;
        } else {
            self.violation(
                ByeCode::UnsolicitedPiece,
                Penalty::Major,
                format!(
                    "unrequested piece {} of {}",
                    piece.index,
                    piece.bundle.short()
                ),
            );
        }
    }

    /// The peer stored more pieces.
    fn on_have(&mut self, pieces: Vec<PieceRef>) {
        let State::Exchanging(x) = &mut self.state else {
            return;
        };
        let Some(peer) = x.peer.as_mut() else {
            return;
        };
        self.plan_dirty = true;
        for piece in pieces {
            if !peer.add_have(piece) {
                return self.violation(
                    ByeCode::TooManyRequests,
                    Penalty::Major,
                    "too many have-updates".into(),
                );
            }
        }
    }

    /// The peer cannot serve (or take) some pieces, or is full.
    fn on_refuse(&mut self, reason: RefuseReason, pieces: Vec<PieceRef>) {
        let State::Exchanging(x) = &mut self.state else {
            return;
        };
        let Some(peer) = x.peer.as_mut() else {
            return;
        };
        self.plan_dirty = true;
        if pieces.is_empty()
            && matches!(
                reason,
                RefuseReason::StoreFull | RefuseReason::QuotaExceeded
            )
        {
            x.peer_store_full = true;
        }
        for piece in pieces {
            if let Some(size) = x.my_requests.remove(&piece) {
                x.outstanding_bytes -= size;
                x.last_progress = self.now;
                x.answered += 1;
                self.stats.requests_answered += 1;
                x.release.push(piece);
                peer.add_lack(piece);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(id: u8, lineage: u8, n: u64, replaces: &[u8], publisher: u8) -> LocalBundle {
        LocalBundle {
            meta: BundleMeta {
                id: BundleId([id; 32]),
                priority: mule_proto::Priority::Normal,
                deps: vec![],
                channel: "fw".into(),
                audience: vec![],
                pieces: 1,
                piece_size: 1,
                len: 1,
                release: Some((LineageId([lineage; 32]), n)),
                replaces: replaces.iter().map(|r| BundleId([*r; 32])).collect(),
                publisher: [publisher; 32],
            },
            have: Bitfield::new(1),
            manifest: Arc::from(vec![id]),
        }
    }

    fn view(bundles: Vec<LocalBundle>) -> LocalView {
        LocalView {
            bundles: bundles.into_iter().map(|b| (b.meta.id, b)).collect(),
            ..LocalView::default()
        }
    }

    fn ids(set: HashSet<BundleId>) -> Vec<u8> {
        let mut v: Vec<u8> = set.into_iter().map(|b| b.0[0]).collect();
        v.sort();
        v
    }

    #[test]
    fn older_releases_of_a_lineage_are_superseded_by_the_newest_known() {
        let v = view(vec![
            release(1, 10, 1, &[], 1),
            release(2, 10, 3, &[], 1),
            release(3, 10, 2, &[], 1),
            release(4, 11, 1, &[], 1),
        ]);
        assert_eq!(ids(v.superseded()), vec![1, 3]);
        // A newer release the node no longer holds (e.g. installed, then evicted) counts.
        let mut v = view(vec![release(1, 10, 1, &[], 1), release(4, 11, 1, &[], 1)]);
        v.newest_releases.insert(LineageId([11; 32]), 2);
        assert_eq!(ids(v.superseded()), vec![4]);
    }

    #[test]
    fn a_rename_supersedes_only_bundles_of_the_same_publisher() {
        // Bundle 2 (lineage 20) names 1 and 3 replaced; 3 is someone else's.
        let v = view(vec![
            release(1, 10, 5, &[], 1),
            release(2, 20, 1, &[1, 3], 1),
            release(3, 30, 1, &[], 2),
        ]);
        assert_eq!(ids(v.superseded()), vec![1]);
    }

    #[test]
    fn transcript_binds_challenge_and_both_ids() {
        let a = transcript(&[1; 32], &NodeId([2; 32]), &NodeId([3; 32]));
        let b = transcript(&[1; 32], &NodeId([3; 32]), &NodeId([2; 32]));
        assert_ne!(a, b);
        assert!(a.starts_with(HELLO_ACK_TAG));
        assert_eq!(a.len(), HELLO_ACK_TAG.len() + 96);
    }
}
