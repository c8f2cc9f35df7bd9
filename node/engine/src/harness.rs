//! An in-memory world of nodes and links in virtual time, for tests, benches and the
//! simulator (like quinn-proto's `tests/util`).
//!
//! Each [`MemNode`] is a minimal driver: a `HashMap` piece store, a [`Catalog`] standing in
//! for manifest and piece verification, the node-wide [`PieceClaims`], [`RarityTracker`] and
//! [`PenaltyBook`]. Each [`Link`] joins two sessions through byte queues with an optional
//! rate limit; a link can be cut silently (bytes stop flowing, nobody is told) or made to
//! deliver to one side only. Nothing here does I/O or reads a clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use mule_proto::{Bitfield, BundleId, NodeId, PieceRef, Priority};

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
            },
            manifest: manifest.clone(),
            hashes,
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
    /// Stored pieces.
    pub store: HashMap<PieceRef, Vec<u8>>,
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
        let key = SigningKey::from_bytes(&[seed; 32]);
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
                parts[i as usize].clone(),
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

/// A transport connection between two nodes.
#[derive(Debug)]
pub struct Link {
    /// The two ends.
    pub ends: [End; 2],
    /// Bytes per ms in each direction (None: unlimited).
    pub rate_bytes_per_ms: Option<u64>,
    /// Whether bytes flow from end 0 to 1 and from 1 to 0 (false: silently cut).
    pub flowing: [bool; 2],
    /// Bytes put on the wire in each direction.
    pub delivered: [u64; 2],
    /// One-way propagation delay in ms (0: none).
    pub latency_ms: u64,
    /// Bytes on the wire with their arrival time, per direction (only with latency).
    in_flight: [std::collections::VecDeque<(u64, Vec<u8>)>; 2],
    /// If true, decode frames crossing the link and count requests per piece.
    pub tap: bool,
    /// Requests seen per piece (with `tap`).
    pub requests_seen: HashMap<PieceRef, u32>,
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
    /// All links ever opened (closed ones stay, for inspection).
    pub links: Vec<Link>,
    /// Virtual time, ms.
    pub now: u64,
    /// Session configuration of new links.
    pub cfg: SessionConfig,
    seq: u64,
}

impl World {
    /// An empty world at time 0.
    pub fn new(catalog: Catalog) -> Self {
        World {
            catalog,
            nodes: Vec::new(),
            links: Vec::new(),
            now: 0,
            cfg: SessionConfig::default(),
            seq: 0,
        }
    }

    /// Adds a node and returns its index.
    pub fn add(&mut self, node: MemNode) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Opens a link between nodes `a` and `b` and returns its index.
    pub fn connect(&mut self, a: usize, b: usize, rate_bytes_per_ms: Option<u64>) -> usize {
        let li = self.links.len();
        let mk = |w: &mut World, n: usize, role| {
            w.seq += 1;
            let seed = SessionSeed {
                challenge: *blake3::hash(&w.seq.to_le_bytes()).as_bytes(),
                salt: blake3::hash(&(w.seq + 1_000_000).to_le_bytes()).as_bytes()[..16]
                    .try_into()
                    .expect("16 bytes"),
            };
            let cfg = SessionConfig {
                claim_owner: w.seq,
                ..w.cfg.clone()
            };
            let node = &w.nodes[n];
            let mut view = node.view.clone();
            view.peer_weights = node.credibility.discounted();
            End {
                node: n,
                session: Session::new(cfg, node.key.clone(), role, w.now, seed, view),
                outbox: Vec::new(),
                sent: 0,
                closed: None,
            }
        };
        let e0 = mk(self, a, Role::Initiator);
        let e1 = mk(self, b, Role::Responder);
        self.links.push(Link {
            ends: [e0, e1],
            rate_bytes_per_ms,
            flowing: [true, true],
            delivered: [0, 0],
            latency_ms: 0,
            in_flight: Default::default(),
            tap: false,
            requests_seen: HashMap::new(),
        });
        li
    }

    /// Silently cuts a link: no more bytes flow either way and no one is told.
    pub fn cut(&mut self, link: usize) {
        let l = &mut self.links[link];
        l.flowing = [false, false];
        // Whatever was in the air is lost.
        l.in_flight = Default::default();
    }

    /// Runs driver work for every open session until nothing changes, without advancing time.
    pub fn settle(&mut self) {
        self.settle_reads(None);
    }

    /// Like [`settle`](Self::settle), but each delivery hands over at most `read` bytes per
    /// direction (as a transport read would), so frames are split across `handle_bytes`.
    pub fn settle_reads(&mut self, read: Option<usize>) {
        for _ in 0..10_000_000 {
            let mut progress = false;
            for li in 0..self.links.len() {
                for side in 0..2 {
                    progress |= self.drive(li, side);
                }
                progress |= self.deliver(li, read.map(|r| r as u64));
            }
            if !progress {
                return;
            }
        }
    }

    /// Advances virtual time by `ms` in 1 ms steps, moving bytes at the links' rates.
    pub fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 1;
            self.tick();
        }
    }

    /// Runs until `done` holds or `max_ms` passed; returns whether `done` held.
    pub fn run_until(&mut self, max_ms: u64, mut done: impl FnMut(&World) -> bool) -> bool {
        let end = self.now + max_ms;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.now += 1;
            self.tick();
        }
        done(self)
    }

    fn tick(&mut self) {
        let now = self.now;
        for li in 0..self.links.len() {
            for side in 0..2 {
                let end = &mut self.links[li].ends[side];
                if end.session.poll_timeout().is_some_and(|t| t <= now) {
                    end.session.handle_timeout(now);
                }
                self.drive(li, side);
            }
            let budget = self.links[li].rate_bytes_per_ms;
            self.deliver(li, budget);
            for side in 0..2 {
                self.drive(li, side);
            }
        }
    }

    /// Moves bytes across a link (at most `budget` per direction); returns whether any moved.
    fn deliver(&mut self, li: usize, budget: Option<u64>) -> bool {
        let mut moved = false;
        for from in 0..2 {
            let to = 1 - from;
            let link = &mut self.links[li];
            if !link.flowing[from] {
                continue;
            }
            while link.in_flight[from]
                .front()
                .is_some_and(|(at, _)| *at <= self.now)
            {
                let (_, bytes) = link.in_flight[from].pop_front().expect("checked");
                link.ends[to].session.handle_bytes(self.now, &bytes);
                moved = true;
            }
            let avail = link.ends[from].outbox.len() - link.ends[from].sent;
            let n = budget.map_or(avail, |b| avail.min(b as usize));
            if n == 0 {
                continue;
            }
            moved = true;
            let start = link.ends[from].sent;
            let chunk = std::mem::take(&mut link.ends[from].outbox);
            link.delivered[from] += n as u64;
            let now = self.now;
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
                if end.outbox.len() - end.sent >= SOCKET_BUFFER {
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

    /// Sessions of node `n` that are still open: (link, side).
    fn sessions_of(&self, n: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (li, l) in self.links.iter().enumerate() {
            for side in 0..2 {
                if l.ends[side].node == n && l.ends[side].closed.is_none() {
                    out.push((li, side));
                }
            }
        }
        out
    }

    fn on_event(&mut self, li: usize, side: usize, ev: Event) {
        let n = self.links[li].ends[side].node;
        let now = self.now;
        match ev {
            Event::PeerAuthenticated { .. } => {}
            Event::SummaryReceived { node, .. } => {
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
                    .observe(node, &metas, |p| holdings.has(p));
            }
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
            Event::PieceReceived { piece, data } => {
                *self.nodes[n].received.entry(piece).or_default() += 1;
                let node = &mut self.nodes[n];
                let why = if !self.catalog.verify_piece(piece, &data) {
                    Some(PieceRejection::Invalid)
                } else if node.capacity.is_some_and(|c| node.store.len() >= c) {
                    Some(PieceRejection::StoreFull)
                } else {
                    None
                };
                if let Some(why) = why {
                    self.links[li].ends[side]
                        .session
                        .handle_piece_rejected(piece, why);
                    return;
                }
                node.store.insert(piece, data);
                node.claims.complete(piece);
                if let Some(b) = node.view.bundles.get_mut(&piece.bundle) {
                    b.have.set(piece.index);
                }
                for (l, s) in self.sessions_of(n) {
                    self.links[l].ends[s].session.note_piece_stored(piece);
                }
            }
            Event::PieceRequested { piece } => {
                let node = &self.nodes[n];
                if node.mute {
                    return;
                }
                let session = &mut self.links[li].ends[side].session;
                match node.store.get(&piece) {
                    Some(data) if node.corrupt_pieces => {
                        let mut bad = data.clone();
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
}

impl End {
    fn session_owner(&self) -> u64 {
        self.session.claim_owner()
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
