//! An in-memory world of nodes and links in virtual time, for tests, benches and the
//! simulator (like quinn-proto's `tests/util`; `mule-testbed simulate` drives its fleet
//! through this module).
//!
//! Each [`MemNode`] is a minimal driver: a `HashMap` piece store, a [`Catalog`] standing in
//! for manifest and piece verification, the node-wide [`PieceClaims`], [`RarityTracker`] and
//! [`PenaltyBook`]. Each [`Link`] joins two sessions through byte queues with an optional
//! rate limit (bytes per second, exact over time) and one-way latency; a link can be cut
//! silently (bytes stop flowing, nobody is told), made to deliver to one side only, or
//! [disconnected](World::disconnect) (the transport tells both sessions). Nothing here does
//! I/O or reads a clock.
//!
//! # Stepping
//! [`World::run_until`] checks its condition every virtual millisecond;
//! [`World::advance_to`] (and [`World::run_for`]) jump from one due moment to the next — a
//! session timer, bytes arriving after the latency, a rate-limited queue that has bytes
//! left — so idle links cost nothing between their keep-alives. In both, a link is driven
//! only when something is due on it or a node-wide change touched its sessions (as a
//! daemon's session task wakes on bytes, its timer or a notification).
//!
//! # For a simulator
//! With [`World::record`] set, what a driver outside the engine needs (summaries for
//! PRoPHET, pieces stored or refused, for statistics) is appended to [`World::log`].
//! [`World::forget`] drops a finished link so that a long trace does not keep every
//! session ever opened. Verified pieces share the [`Catalog`]'s copy of their bytes, so a
//! thousand nodes holding one bundle hold it once.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use mule_proto::{Bitfield, BundleId, LineageId, NodeId, PieceRef, Priority};

use crate::claims::PieceClaims;
use crate::credibility::CredibilityBook;
use crate::frame::{self, Message};

use crate::penalty::{PenaltyBook, PenaltyConfig};
use crate::scheduler::{BundleMeta, RarityTracker};
use crate::session::{
    CloseReason, Event, LocalBundle, LocalView, PieceRejection, Role, Session, SessionConfig,
    SessionSeed,
};

/// A published bundle as the test world knows it: metadata, manifest bytes, piece hashes.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    /// Scheduling metadata.
    pub meta: BundleMeta,
    /// Stand-in manifest bytes (unique per bundle).
    pub manifest: Arc<[u8]>,
    /// BLAKE3 of every piece.
    pub hashes: Vec<[u8; 32]>,
    /// The pieces' bytes: a verified piece equals them, so stores share this copy.
    pub content: Vec<Arc<[u8]>>,
}

/// Stands in for manifest signatures and piece hashes: what is "valid" in the test world.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    by_manifest: HashMap<Arc<[u8]>, BundleId>,
    entries: HashMap<BundleId, CatalogEntry>,
}

impl Catalog {
    /// Publishes `data` as a bundle and returns its entry.
    pub fn publish(
        &mut self,
        name: &str,
        channel: &str,
        priority: Priority,
        deps: Vec<BundleId>,
        data: &[u8],
        piece_size: u32,
    ) -> CatalogEntry {
        let id = BundleId(*blake3::hash(name.as_bytes()).as_bytes());
        let pieces = (data.len() as u64).div_ceil(piece_size as u64).max(1) as u32;
        let hashes = (0..pieces as usize)
            .map(|i| {
                let end = ((i + 1) * piece_size as usize).min(data.len());
                *blake3::hash(&data[i * piece_size as usize..end]).as_bytes()
            })
            .collect();
        let manifest: Arc<[u8]> = format!("manifest:{name}:{id}").into_bytes().into();
        let content = (0..pieces as usize)
            .map(|i| {
                let end = ((i + 1) * piece_size as usize).min(data.len());
                Arc::from(&data[i * piece_size as usize..end])
            })
            .collect();
        let entry = CatalogEntry {
            meta: BundleMeta {
                id,
                priority,
                deps,
                channel: channel.into(),
                audience: Vec::new(),
                pieces,
                piece_size,
                len: data.len() as u64,
                release: None,
                replaces: Vec::new(),
                publisher: [0; 32],
            },
            manifest: manifest.clone(),
            hashes,
            content,
        };
        self.by_manifest.insert(manifest, id);
        self.entries.insert(id, entry.clone());
        entry
    }

    /// Addresses a published bundle to `audience` (for PRoPHET carry tests); returns the
    /// updated entry.
    pub fn set_audience(
        &mut self,
        bundle: BundleId,
        audience: Vec<NodeId>,
    ) -> Option<CatalogEntry> {
        let e = self.entries.get_mut(&bundle)?;
        e.meta.audience = audience;
        Some(e.clone())
    }

    /// Makes a published bundle release `release` of `lineage` (by publisher `publisher`,
    /// replacing `replaces`); returns the updated entry.
    pub fn set_release(
        &mut self,
        bundle: BundleId,
        lineage: LineageId,
        release: u64,
        replaces: Vec<BundleId>,
        publisher: [u8; 32],
    ) -> Option<CatalogEntry> {
        let e = self.entries.get_mut(&bundle)?;
        e.meta.release = Some((lineage, release));
        e.meta.replaces = replaces;
        e.meta.publisher = publisher;
        Some(e.clone())
    }

    /// The entry a manifest's bytes stand for, if they are genuine.
    pub fn verify_manifest(&self, bytes: &[u8]) -> Option<&CatalogEntry> {
        self.entries.get(self.by_manifest.get(bytes)?)
    }

    /// Whether `data` is the genuine content of `piece`.
    pub fn verify_piece(&self, piece: PieceRef, data: &[u8]) -> bool {
        self.entries
            .get(&piece.bundle)
            .and_then(|e| e.hashes.get(piece.index as usize))
            .is_some_and(|h| blake3::hash(data).as_bytes() == h)
    }

    /// The published bytes of `piece` (shared), if it belongs to a published bundle.
    pub fn content(&self, piece: PieceRef) -> Option<Arc<[u8]>> {
        self.entries
            .get(&piece.bundle)
            .and_then(|e| e.content.get(piece.index as usize))
            .cloned()
    }
}

/// Splits `data` into the pieces of `meta`.
pub fn split(meta: &BundleMeta, data: &[u8]) -> Vec<Vec<u8>> {
    (0..meta.pieces as usize)
        .map(|i| {
            let start = i * meta.piece_size as usize;
            data[start..start + meta.piece_len(i as u32) as usize].to_vec()
        })
        .collect()
}

/// A node with an in-memory store and the shared per-node engine state.
#[derive(Debug)]
pub struct MemNode {
    /// Signing key.
    pub key: SigningKey,
    /// Node id.
    pub id: NodeId,
    /// Authoritative node state (sessions get a copy when they start).
    pub view: LocalView,
    /// Stored pieces (verified ones share the catalog's bytes).
    pub store: HashMap<PieceRef, Arc<[u8]>>,
    /// Most pieces the store accepts (None: unlimited).
    pub capacity: Option<usize>,
    /// Node-wide claims.
    pub claims: PieceClaims,
    /// Rarity estimates.
    pub rarity: RarityTracker,
    /// Penalties of peers.
    pub penalties: PenaltyBook,
    /// How far peers' claims held.
    pub credibility: CredibilityBook,
    /// Pieces received per piece (to detect duplicates).
    pub received: HashMap<PieceRef, u32>,
    /// If set, every piece this node serves is corrupted (hostile sender).
    pub corrupt_pieces: bool,
    /// If set, this node never answers piece requests (stuck sender).
    pub mute: bool,
}

impl MemNode {
    /// A node with key seed `seed`, subscribed to `channels`.
    pub fn new(seed: u8, channels: &[&str]) -> Self {
        Self::with_key(SigningKey::from_bytes(&[seed; 32]), channels)
    }

    /// A node with signing key `key` (for worlds of more than 256 nodes).
    pub fn with_key(key: SigningKey, channels: &[&str]) -> Self {
        MemNode {
            id: NodeId(key.verifying_key().to_bytes()),
            key,
            view: LocalView {
                channels: channels.iter().map(|c| c.to_string()).collect(),
                carry_quota_bytes: 1 << 30,
                ..LocalView::default()
            },
            store: HashMap::new(),
            capacity: None,
            claims: PieceClaims::new(),
            rarity: RarityTracker::new(32),
            penalties: PenaltyBook::new(PenaltyConfig::default()),
            credibility: CredibilityBook::default(),
            received: HashMap::new(),
            corrupt_pieces: false,
            mute: false,
        }
    }

    /// Adds a bundle's manifest and the given pieces of `data` to the store.
    pub fn hold(&mut self, e: &CatalogEntry, data: &[u8], pieces: impl IntoIterator<Item = u32>) {
        let parts = split(&e.meta, data);
        let b = self
            .view
            .bundles
            .entry(e.meta.id)
            .or_insert_with(|| LocalBundle {
                meta: e.meta.clone(),
                have: Bitfield::new(e.meta.pieces),
                manifest: e.manifest.clone(),
            });
        for i in pieces {
            b.have.set(i);
            self.store.insert(
                PieceRef {
                    bundle: e.meta.id,
                    index: i,
                },
                parts[i as usize].as_slice().into(),
            );
        }
    }

    /// Whether the node holds every piece of `bundle`.
    pub fn complete(&self, bundle: &BundleId) -> bool {
        self.view
            .bundles
            .get(bundle)
            .is_some_and(|b| b.have.is_complete())
    }

    /// Pieces held of `bundle`.
    pub fn pieces_of(&self, bundle: &BundleId) -> u32 {
        self.view.bundles.get(bundle).map_or(0, |b| b.have.count())
    }
}

/// One side of a link.
#[derive(Debug)]
pub struct End {
    /// Index of the node in [`World::nodes`].
    pub node: usize,
    /// Its session.
    pub session: Session,
    /// Bytes written by this side, not yet delivered to the other.
    pub outbox: Vec<u8>,
    /// Offset of the first undelivered byte in `outbox`.
    pub sent: usize,
    /// How the session ended, once it did.
    pub closed: Option<(CloseReason, crate::penalty::Penalty)>,
}

impl End {
    fn session_owner(&self) -> u64 {
        self.session.claim_owner()
    }

    fn pending(&self) -> usize {
        self.outbox.len() - self.sent
    }
}

/// How a new link carries bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkSpec {
    /// Bytes per second in each direction (None: unlimited).
    pub rate_bytes_per_s: Option<u64>,
    /// One-way propagation delay in ms (0: none).
    pub latency_ms: u64,
}

/// A transport connection between two nodes.
#[derive(Debug)]
pub struct Link {
    /// The two ends.
    pub ends: [End; 2],
    /// Bytes per second in each direction (None: unlimited). Each virtual millisecond a
    /// direction may send `rate / 1000` bytes; fractions carry over while it is busy.
    pub rate_bytes_per_s: Option<u64>,
    /// Whether bytes flow from end 0 to 1 and from 1 to 0 (false: silently cut).
    pub flowing: [bool; 2],
    /// Bytes put on the wire in each direction.
    pub delivered: [u64; 2],
    /// One-way propagation delay in ms (0: none).
    pub latency_ms: u64,
    /// Bytes on the wire with their arrival time, per direction (only with latency).
    in_flight: [VecDeque<(u64, Vec<u8>)>; 2],
    /// Sending credit per direction in thousandths of a byte, and when it was last topped up.
    credit: [u64; 2],
    credited_at: u64,
    /// A node-wide change touched one of its sessions: drive it at the next step.
    dirty: bool,
    /// If true, decode frames crossing the link and count requests per piece.
    pub tap: bool,
    /// Requests seen per piece (with `tap`).
    pub requests_seen: HashMap<PieceRef, u32>,
}

impl Link {
    /// True once both sessions ended and nothing is left to deliver.
    pub fn finished(&self) -> bool {
        let cut = !self.flowing[0] && !self.flowing[1];
        self.ends.iter().all(|e| e.closed.is_some())
            && (cut
                || (self.ends.iter().all(|e| e.pending() == 0)
                    && self.in_flight.iter().all(VecDeque::is_empty)))
    }

    /// The earliest time something is due on this link (may be in the past: due now).
    fn next_due(&self, now: u64) -> Option<u64> {
        if self.dirty {
            return Some(now);
        }
        let mut next: Option<u64> = None;
        let mut at = |t: u64| next = Some(next.map_or(t, |n| n.min(t)));
        for d in 0..2 {
            if let Some(t) = self.ends[d].session.poll_timeout() {
                at(t);
            }
            if !self.flowing[d] {
                continue;
            }
            if let Some((t, _)) = self.in_flight[d].front() {
                at(*t);
            }
            if self.ends[d].pending() > 0 {
                // Unlimited links deliver at once; rate-limited ones a slice per ms.
                at(if self.rate_bytes_per_s.is_some() {
                    self.credited_at + 1
                } else {
                    now
                });
            }
        }
        next
    }
}

/// The links of a [`World`], by index (indices stay valid; a [forgotten](World::forget)
/// link is gone and indexing it panics).
#[derive(Debug, Default)]
pub struct Links(Vec<Option<Link>>);

impl Links {
    /// The link at `i`, unless it was forgotten.
    pub fn get(&self, i: usize) -> Option<&Link> {
        self.0.get(i).and_then(Option::as_ref)
    }

    /// Links ever opened (forgotten ones included).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if no link was ever opened.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Index<usize> for Links {
    type Output = Link;
    fn index(&self, i: usize) -> &Link {
        self.0[i].as_ref().expect("link was forgotten")
    }
}

impl std::ops::IndexMut<usize> for Links {
    fn index_mut(&mut self, i: usize) -> &mut Link {
        self.0[i].as_mut().expect("link was forgotten")
    }
}

/// What happened in a [`World`] that a driver outside the engine acts on (kept only while
/// [`World::record`] is set).
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Node `node` received `peer`'s summary (PRoPHET's transitive update uses it).
    Summary {
        /// Virtual time, ms.
        at: u64,
        /// Receiving node.
        node: usize,
        /// The peer's node id.
        peer: NodeId,
        /// The predictabilities it advertised, as believed.
        predictabilities: Vec<(NodeId, f64)>,
    },
    /// A piece sent by node `from` arrived at node `node`.
    Piece {
        /// Virtual time, ms.
        at: u64,
        /// Receiving node.
        node: usize,
        /// Sending node.
        from: usize,
        /// Which piece.
        piece: PieceRef,
        /// What became of it.
        outcome: PieceOutcome,
    },
}

/// What the driver did with a received piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceOutcome {
    /// Verified and stored; the node did not hold it.
    Stored,
    /// Verified, but the node held it already.
    Duplicate,
    /// Not stored.
    Rejected(PieceRejection),
}

/// Most undelivered bytes an end buffers before the session is not polled (a socket buffer).
pub const SOCKET_BUFFER: usize = 256 * 1024;

/// Nodes, links and a virtual clock.
#[derive(Debug)]
pub struct World {
    /// Verification stand-in shared by all nodes.
    pub catalog: Catalog,
    /// The nodes.
    pub nodes: Vec<MemNode>,
    /// All links ever opened (closed ones stay, for inspection, until forgotten).
    pub links: Links,
    /// Virtual time, ms.
    pub now: u64,
    /// Session configuration of new links.
    pub cfg: SessionConfig,
    /// Whether to append [`Record`]s to [`log`](Self::log).
    pub record: bool,
    /// What happened, for a driver (see [`Record`]); the driver drains it.
    pub log: Vec<Record>,
    /// Steps taken (moments at which links were driven), a cost figure.
    pub steps: u64,
    /// Mixed into every session's challenge and summary salt (a simulation's seed); 0
    /// keeps the derivation from the link counter alone.
    pub seed: u64,
    /// Links not finished yet.
    open: Vec<usize>,
    /// When each link may next be due, earliest first (entries may be stale: checked
    /// against [`Link::next_due`] when taken; [`resync`](Self::resync) rebuilds it).
    due: BinaryHeap<Reverse<(u64, usize)>>,
    /// Per node: its unfinished links.
    node_links: Vec<Vec<usize>>,
    seq: u64,
}

/// How many bytes a delivery may move per direction.
#[derive(Clone, Copy)]
enum Budget {
    /// Everything queued.
    All,
    /// At most this many bytes (a transport read), without advancing time.
    Read(u64),
    /// What the link's rate allows at the current time.
    Rate,
}

impl World {
    /// An empty world at time 0.
    pub fn new(catalog: Catalog) -> Self {
        World {
            catalog,
            nodes: Vec::new(),
            links: Links::default(),
            now: 0,
            cfg: SessionConfig::default(),
            record: false,
            log: Vec::new(),
            steps: 0,
            seed: 0,
            open: Vec::new(),
            due: BinaryHeap::new(),
            node_links: Vec::new(),
            seq: 0,
        }
    }

    /// Adds a node and returns its index.
    pub fn add(&mut self, node: MemNode) -> usize {
        self.nodes.push(node);
        self.node_links.push(Vec::new());
        self.nodes.len() - 1
    }

    /// Opens a link between nodes `a` and `b` with `rate_bytes_per_ms` in each direction
    /// and no latency; returns its index.
    pub fn connect(&mut self, a: usize, b: usize, rate_bytes_per_ms: Option<u64>) -> usize {
        let spec = LinkSpec {
            rate_bytes_per_s: rate_bytes_per_ms.map(|r| r * 1000),
            latency_ms: 0,
        };
        self.connect_with(a, b, spec)
    }

    /// Opens a link between nodes `a` (the initiator) and `b` as `spec` says; returns its
    /// index. The sessions start from the nodes' current views.
    pub fn connect_with(&mut self, a: usize, b: usize, spec: LinkSpec) -> usize {
        let li = self.links.len();
        let e0 = self.new_end(a, Role::Initiator);
        let e1 = self.new_end(b, Role::Responder);
        self.links.0.push(Some(Link {
            ends: [e0, e1],
            rate_bytes_per_s: spec.rate_bytes_per_s,
            flowing: [true, true],
            delivered: [0, 0],
            latency_ms: spec.latency_ms,
            in_flight: Default::default(),
            credit: [0, 0],
            credited_at: self.now,
            dirty: true,
            tap: false,
            requests_seen: HashMap::new(),
        }));
        self.open.push(li);
        self.due.push(Reverse((self.now, li)));
        self.node_links[a].push(li);
        self.node_links[b].push(li);
        li
    }

    fn new_end(&mut self, n: usize, role: Role) -> End {
        self.seq += 1;
        let mix = self.seq ^ self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let seed = SessionSeed {
            challenge: *blake3::hash(&mix.to_le_bytes()).as_bytes(),
            salt: blake3::hash(&(mix.wrapping_add(1_000_000)).to_le_bytes()).as_bytes()[..16]
                .try_into()
                .expect("16 bytes"),
        };
        let cfg = SessionConfig {
            claim_owner: self.seq,
            ..self.cfg.clone()
        };
        let node = &self.nodes[n];
        let mut view = node.view.clone();
        view.peer_weights = node.credibility.discounted();
        End {
            node: n,
            session: Session::new(cfg, node.key.clone(), role, self.now, seed, view),
            outbox: Vec::new(),
            sent: 0,
            closed: None,
        }
    }

    /// Silently cuts a link: no more bytes flow either way and no one is told.
    pub fn cut(&mut self, link: usize) {
        let l = &mut self.links[link];
        l.flowing = [false, false];
        // Whatever was in the air is lost.
        l.in_flight = Default::default();
    }

    /// The contact is over and both nodes notice (the transport reports it, as a daemon's
    /// socket or neighbour table would): cut the link, close both sessions now.
    pub fn disconnect(&mut self, link: usize) {
        self.cut(link);
        let now = self.now;
        for side in 0..2 {
            self.links[link].ends[side]
                .session
                .handle_transport_closed(now);
            self.drive(link, side);
        }
        self.retire(&[link]);
    }

    /// Drops a finished link (see [`Link::finished`]) and returns it; `None` if it is not
    /// finished or already forgotten. Its index stays taken.
    pub fn forget(&mut self, link: usize) -> Option<Link> {
        if !self.links.get(link)?.finished() {
            return None;
        }
        self.retire(&[link]);
        self.links.0[link].take()
    }

    /// Runs driver work for every open session until nothing changes, without advancing time.
    pub fn settle(&mut self) {
        self.settle_with(Budget::All);
    }

    /// Like [`settle`](Self::settle), but each delivery hands over at most `read` bytes per
    /// direction (as a transport read would), so frames are split across `handle_bytes`.
    pub fn settle_reads(&mut self, read: Option<usize>) {
        self.settle_with(read.map_or(Budget::All, |r| Budget::Read(r as u64)));
    }

    fn settle_with(&mut self, budget: Budget) {
        for _ in 0..10_000_000 {
            let mut progress = false;
            for li in self.open.clone() {
                for side in 0..2 {
                    progress |= self.drive(li, side);
                }
                progress |= self.deliver(li, budget);
            }
            if !progress {
                self.retire(&self.open.clone());
                self.resync();
                return;
            }
        }
    }

    /// Advances virtual time by `ms`, from one due moment to the next (see
    /// [`advance_to`](Self::advance_to)).
    pub fn run_for(&mut self, ms: u64) {
        self.advance_to(self.now + ms);
    }

    /// Runs until `done` holds or `max_ms` passed, checking every ms; returns whether `done`
    /// held.
    pub fn run_until(&mut self, max_ms: u64, mut done: impl FnMut(&World) -> bool) -> bool {
        let end = self.now + max_ms;
        self.resync();
        while self.now < end {
            if done(self) {
                return true;
            }
            self.now += 1;
            self.step();
        }
        done(self)
    }

    /// Advances virtual time to `t`: first does what is due now (e.g. on links just
    /// opened), then jumps from one due moment to the next, doing what is due at each.
    /// Idle links cost one step per session timer (keep-alive), not one per ms.
    pub fn advance_to(&mut self, t: u64) {
        self.resync();
        if self.now <= t {
            self.step();
        }
        while let Some(next) = self.next_due().filter(|&n| n <= t) {
            self.now = next.max(self.now + 1);
            self.step();
        }
        self.now = self.now.max(t);
    }

    /// The earliest moment something is due on an open link (timers, bytes arriving,
    /// queued bytes on a rate-limited link), if any.
    pub fn next_due(&mut self) -> Option<u64> {
        let now = self.now;
        while let Some(&Reverse((t, li))) = self.due.peek() {
            let actual = self
                .links
                .get(li)
                .filter(|l| !l.finished())
                .and_then(|l| l.next_due(now));
            match actual {
                Some(a) if a <= t => return Some(a),
                Some(a) => {
                    self.due.pop();
                    self.due.push(Reverse((a, li)));
                }
                None => {
                    self.due.pop();
                }
            }
        }
        None
    }

    /// Rebuilds the due queue from every open link (a test may have changed a link or
    /// called a session directly since the last step).
    fn resync(&mut self) {
        let now = self.now;
        self.due.clear();
        for &li in &self.open {
            if let Some(t) = self.links[li].next_due(now) {
                self.due.push(Reverse((t, li)));
            }
        }
    }

    /// One moment: on each open link with something due, timers fire, sessions are driven,
    /// bytes move at the link's rate, and the sessions are driven again; repeated while a
    /// notification from one session's node makes another link due at the same moment.
    fn step(&mut self) {
        self.steps += 1;
        let now = self.now;
        let mut touched = Vec::new();
        for _ in 0..1_000 {
            let mut due = Vec::new();
            while let Some(&Reverse((t, li))) = self.due.peek() {
                if t > now {
                    break;
                }
                self.due.pop();
                due.push(li);
            }
            due.sort_unstable();
            due.dedup();
            let mut any = false;
            for &li in &due {
                let Some(l) = self.links.get(li) else {
                    continue;
                };
                if l.finished() || l.next_due(now).is_none_or(|t| t > now) {
                    continue;
                }
                any = true;
                self.drive_link(li);
            }
            for &li in &due {
                if let Some(t) = self.links.get(li).and_then(|l| l.next_due(now)) {
                    self.due.push(Reverse((t, li)));
                }
            }
            touched.extend(due);
            if !any {
                break;
            }
        }
        touched.sort_unstable();
        touched.dedup();
        self.retire(&touched);
    }

    /// Timers, driver work, delivery at the link's rate, driver work: one link at one moment.
    fn drive_link(&mut self, li: usize) {
        let now = self.now;
        self.links[li].dirty = false;
        for side in 0..2 {
            let end = &mut self.links[li].ends[side];
            if end.session.poll_timeout().is_some_and(|t| t <= now) {
                end.session.handle_timeout(now);
            }
            self.drive(li, side);
        }
        self.deliver(li, Budget::Rate);
        for side in 0..2 {
            self.drive(li, side);
        }
    }

    /// Removes those of `links` that finished from the open lists.
    fn retire(&mut self, links: &[usize]) {
        let done: Vec<usize> = links
            .iter()
            .copied()
            .filter(|&li| self.links.get(li).is_some_and(Link::finished))
            .collect();
        if done.is_empty() {
            return;
        }
        self.open.retain(|li| !done.contains(li));
        for &li in &done {
            let l = &self.links[li];
            for n in [l.ends[0].node, l.ends[1].node] {
                self.node_links[n].retain(|x| *x != li);
            }
        }
    }

    /// Bytes direction `from` of link `li` may send now.
    fn allowance(&mut self, li: usize, from: usize, budget: Budget) -> usize {
        let now = self.now;
        let link = &mut self.links[li];
        let avail = link.ends[from].pending();
        match budget {
            Budget::All => avail,
            Budget::Read(n) => avail.min(n as usize),
            Budget::Rate => {
                let Some(rate) = link.rate_bytes_per_s else {
                    return avail;
                };
                if avail == 0 {
                    // An idle direction saves no credit for a burst later.
                    link.credit[from] = 0;
                    return 0;
                }
                let elapsed = now - link.credited_at.min(now);
                // At most one ms of credit (plus the fraction carried over).
                let credit = (link.credit[from] + rate * elapsed).min(rate + 999);
                let n = (credit / 1000).min(avail as u64);
                link.credit[from] = credit - n * 1000;
                n as usize
            }
        }
    }

    /// Moves bytes across a link (as `budget` allows per direction); returns whether any
    /// moved.
    fn deliver(&mut self, li: usize, budget: Budget) -> bool {
        let mut moved = false;
        for from in 0..2 {
            let to = 1 - from;
            if !self.links[li].flowing[from] {
                continue;
            }
            let now = self.now;
            let link = &mut self.links[li];
            while link.in_flight[from]
                .front()
                .is_some_and(|(at, _)| *at <= now)
            {
                let (_, bytes) = link.in_flight[from].pop_front().expect("checked");
                link.ends[to].session.handle_bytes(now, &bytes);
                moved = true;
            }
            let n = self.allowance(li, from, budget);
            if n == 0 {
                continue;
            }
            moved = true;
            let link = &mut self.links[li];
            let start = link.ends[from].sent;
            let chunk = std::mem::take(&mut link.ends[from].outbox);
            link.delivered[from] += n as u64;
            if link.latency_ms == 0 {
                link.ends[to]
                    .session
                    .handle_bytes(now, &chunk[start..start + n]);
            } else {
                link.in_flight[from]
                    .push_back((now + link.latency_ms, chunk[start..start + n].to_vec()));
            }
            let end = &mut link.ends[from];
            end.outbox = chunk;
            end.sent += n;
            if end.sent == end.outbox.len() {
                end.outbox.clear();
                end.sent = 0;
            } else if end.sent >= SOCKET_BUFFER {
                // Drop the delivered prefix so the buffer stays bounded.
                end.outbox.drain(..end.sent);
                end.sent = 0;
            }
        }
        if matches!(budget, Budget::Rate) {
            self.links[li].credited_at = self.now;
        }
        moved
    }

    /// One round of driver work for one session; returns whether anything happened.
    fn drive(&mut self, li: usize, side: usize) -> bool {
        let mut progress = false;
        let n = self.links[li].ends[side].node;
        loop {
            let mut any = false;
            {
                let node = &mut self.nodes[n];
                let end = &mut self.links[li].ends[side];
                end.session.plan_requests(&mut node.claims, &node.rarity);
            }
            while let Some(ev) = self.links[li].ends[side].session.poll_event() {
                any = true;
                self.on_event(li, side, ev);
            }
            loop {
                let end = &mut self.links[li].ends[side];
                if end.pending() >= SOCKET_BUFFER {
                    break;
                }
                let Some(bytes) = end.session.poll_transmit() else {
                    break;
                };
                any = true;
                if self.links[li].tap {
                    count_requests(&bytes, &mut self.links[li].requests_seen);
                }
                let end = &mut self.links[li].ends[side];
                if end.outbox.is_empty() {
                    end.outbox = bytes;
                    end.sent = 0;
                } else {
                    end.outbox.extend_from_slice(&bytes);
                }
            }
            progress |= any;
            if !any {
                return progress;
            }
        }
    }

    /// Sessions of node `n` that are still open: (link, side). Their links are marked to be
    /// driven at the next step (the caller is about to tell them something).
    fn sessions_of(&mut self, n: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for &li in &self.node_links[n] {
            let Some(l) = self.links.0[li].as_mut() else {
                continue;
            };
            for side in 0..2 {
                if l.ends[side].node == n && l.ends[side].closed.is_none() {
                    out.push((li, side));
                    l.dirty = true;
                    self.due.push(Reverse((self.now, li)));
                }
            }
        }
        out
    }

    fn log(&mut self, r: impl FnOnce() -> Record) {
        if self.record {
            self.log.push(r());
        }
    }

    fn on_event(&mut self, li: usize, side: usize, ev: Event) {
        let n = self.links[li].ends[side].node;
        let now = self.now;
        match ev {
            Event::PeerAuthenticated { .. } => {}
            Event::SummaryReceived { node, .. } => self.on_summary(li, side, node),
            Event::ManifestReceived { bytes } => {
                let Some(entry) = self.catalog.verify_manifest(&bytes).cloned() else {
                    self.links[li].ends[side]
                        .session
                        .handle_manifest_rejected("manifest signature invalid");
                    return;
                };
                if self.nodes[n].view.bundles.contains_key(&entry.meta.id) {
                    return;
                }
                let lb = LocalBundle {
                    have: Bitfield::new(entry.meta.pieces),
                    meta: entry.meta.clone(),
                    manifest: entry.manifest.clone(),
                };
                self.nodes[n].view.bundles.insert(entry.meta.id, lb.clone());
                for (l, s) in self.sessions_of(n) {
                    self.links[l].ends[s].session.note_manifest(lb.clone());
                }
            }
            Event::PieceReceived { piece, data } => self.on_piece(li, side, piece, data),
            Event::PieceRequested { piece } => {
                let node = &self.nodes[n];
                if node.mute {
                    return;
                }
                let session = &mut self.links[li].ends[side].session;
                match node.store.get(&piece) {
                    Some(data) if node.corrupt_pieces => {
                        let mut bad = data.to_vec();
                        bad[0] ^= 0xff;
                        session.send_piece(piece, &bad);
                    }
                    Some(data) => {
                        session.send_piece(piece, data);
                    }
                    None => session.piece_unavailable(piece),
                }
            }
            Event::Closed { reason, penalty } => {
                let node = &mut self.nodes[n];
                node.claims
                    .release_owner(self.links[li].ends[side].session_owner());
                if let Some(peer) = self.links[li].ends[side].session.peer_id() {
                    node.penalties.record_close(peer, now, penalty);
                    let st = self.links[li].ends[side].session.stats();
                    node.credibility
                        .record(peer, st.requests_answered, st.requests_ignored, now);
                }
                self.links[li].ends[side].closed = Some((reason, penalty));
                // Its claims are free again: let the node's other sessions pick them up.
                for (l, s) in self.sessions_of(n) {
                    self.links[l].ends[s].session.replan();
                }
            }
        }
    }

    fn on_summary(&mut self, li: usize, side: usize, peer: NodeId) {
        let n = self.links[li].ends[side].node;
        let session = &self.links[li].ends[side].session;
        let holdings = session.peer_holdings().expect("summary received");
        let metas: Vec<BundleMeta> = self.nodes[n]
            .view
            .bundles
            .values()
            .map(|b| b.meta.clone())
            .collect();
        self.nodes[n]
            .rarity
            .observe(peer, &metas, |p| holdings.has(p));
        if self.record {
            let predictabilities = holdings.predictabilities();
            let at = self.now;
            self.log.push(Record::Summary {
                at,
                node: n,
                peer,
                predictabilities,
            });
        }
    }

    fn on_piece(&mut self, li: usize, side: usize, piece: PieceRef, data: Vec<u8>) {
        let n = self.links[li].ends[side].node;
        let from = self.links[li].ends[1 - side].node;
        let at = self.now;
        *self.nodes[n].received.entry(piece).or_default() += 1;
        let node = &mut self.nodes[n];
        let why = if !self.catalog.verify_piece(piece, &data) {
            Some(PieceRejection::Invalid)
        } else if node.capacity.is_some_and(|c| node.store.len() >= c) {
            Some(PieceRejection::StoreFull)
        } else {
            None
        };
        let outcome = match why {
            Some(why) => PieceOutcome::Rejected(why),
            None => {
                let bytes = self.catalog.content(piece).unwrap_or_else(|| data.into());
                let held = node.store.insert(piece, bytes).is_some();
                node.claims.complete(piece);
                if let Some(b) = node.view.bundles.get_mut(&piece.bundle) {
                    b.have.set(piece.index);
                }
                if held {
                    PieceOutcome::Duplicate
                } else {
                    PieceOutcome::Stored
                }
            }
        };
        self.log(|| Record::Piece {
            at,
            node: n,
            from,
            piece,
            outcome,
        });
        if let PieceOutcome::Rejected(why) = outcome {
            self.links[li].ends[side]
                .session
                .handle_piece_rejected(piece, why);
            return;
        }
        for (l, s) in self.sessions_of(n) {
            self.links[l].ends[s].session.note_piece_stored(piece);
        }
    }
}

fn count_requests(bytes: &[u8], seen: &mut HashMap<PieceRef, u32>) {
    let mut rest = bytes;
    while let Ok(Some((msg, used))) = frame::decode_frame(rest) {
        if let Message::Request(list) = msg {
            for p in list {
                *seen.entry(p).or_default() += 1;
            }
        }
        rest = &rest[used..];
    }
}

/// Deterministic pseudo-random bytes (xorshift), for test payloads.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The bundles of a view, as a map for quick checks.
pub fn bundle_ids(view: &LocalView) -> BTreeMap<BundleId, u32> {
    view.bundles
        .iter()
        .map(|(id, b)| (*id, b.have.count()))
        .collect()
}
