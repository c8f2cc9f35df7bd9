//! The piece scheduler: a pure function from what a *source* holds and what a *peer* (the
//! destination) holds, wants and predicts, to an ordered list of what to move.
//!
//! # Rules, in order
//! 1. Manifests the peer lacks come before any piece.
//! 2. `critical` before others: pieces are sorted by *effective* priority, the most urgent of
//!    the bundle's own priority and that of every bundle depending on it (so a critical
//!    bundle's dependencies travel as critical).
//! 3. Dependencies before dependants: within a priority, by class and then by dependency
//!    level (0 = depends on nothing in the candidate set). A dependency of a wanted bundle is
//!    itself wanted, so it can never fall behind its dependant.
//! 4. Pieces the peer wants (channel subscription or explicit bundle want) before pieces it
//!    would only carry.
//! 5. Rarest first (fewest recent holders, from [`RarityTracker`]), then bundles the peer
//!    already has most of (to complete them), then bundle id and piece index (determinism).
//! 6. Only what fits the contact byte budget (expected duration × link rate × (1 + slack)),
//!    counting per-piece frame overhead; pieces that do not fit are skipped.
//! 7. Carry pieces only for bundles whose audience the peer reaches with a higher PRoPHET
//!    delivery predictability than the source (any audience node; a bundle without explicit
//!    audience nodes is carried epidemically), and within the peer's carry quota.
//!
//! The session uses the same function in both directions: the *sender* to choose which
//! manifests to offer, the *receiver* to choose which pieces to request (with the peer's
//! advertised holdings as the source and itself as the destination). The simulator calls it
//! directly. Every [`Decision`] carries a [`Reason`] whose `Display` is a debug log line.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use mule_proto::{Bitfield, BundleId, LineageId, NodeId, PieceIndex, PieceRef, Priority};

/// What the scheduler needs to know about a bundle (from its verified manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleMeta {
    /// The bundle's id.
    pub id: BundleId,
    /// Its priority class.
    pub priority: Priority,
    /// Bundles that must be installed before this one.
    pub deps: Vec<BundleId>,
    /// The channel it is published on.
    pub channel: String,
    /// Nodes it is addressed to (empty: everyone subscribed to the channel).
    pub audience: Vec<NodeId>,
    /// Number of pieces.
    pub pieces: u32,
    /// Size of every piece but the last, in bytes.
    pub piece_size: u32,
    /// Total payload length, in bytes.
    pub len: u64,
    /// Its release lineage and number, when it is a release (see [`LocalView::superseded`](crate::session::LocalView::superseded)).
    pub release: Option<(LineageId, u64)>,
    /// Bundles it replaces across lineages (a rename): superseded once this one is known,
    /// if they have the same publisher.
    pub replaces: Vec<BundleId>,
    /// The publisher's key (only compared, for `replaces`).
    pub publisher: [u8; 32],
}

impl BundleMeta {
    /// Length of piece `i` in bytes (the last one may be short; 0 when out of range).
    pub fn piece_len(&self, i: PieceIndex) -> u64 {
        if i >= self.pieces {
            return 0;
        }
        let start = i as u64 * self.piece_size as u64;
        self.len.saturating_sub(start).min(self.piece_size as u64)
    }
}

/// A bundle the source can send pieces of.
pub struct SourceBundle<'a> {
    /// Its metadata.
    pub meta: &'a BundleMeta,
    /// Which of its pieces the source holds.
    pub holds: &'a dyn Fn(PieceIndex) -> bool,
}

impl fmt::Debug for SourceBundle<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceBundle({:?})", self.meta.id)
    }
}

/// What the source knows about the destination.
pub trait PeerView {
    /// Whether the peer (probably) already holds the piece.
    fn has(&self, piece: PieceRef) -> bool;
    /// Whether the peer knows the bundle's manifest.
    fn knows_manifest(&self, bundle: &BundleId) -> bool;
    /// Whether the peer wants the bundle for itself.
    fn wants(&self, meta: &BundleMeta) -> bool;
    /// The peer's delivery predictability towards `node`.
    fn predictability(&self, node: &NodeId) -> f32;
    /// Bytes the peer can still accept for bundles it carries for others.
    fn carry_quota_bytes(&self) -> u64;
}

/// The contact byte budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Expected remaining contact duration (None: unknown, no limit).
    pub expected_contact_ms: Option<u64>,
    /// Link rate in bytes per second (None: unknown, no limit).
    pub link_rate_bytes_per_s: Option<u64>,
    /// Extra fraction scheduled beyond the estimate (e.g. 0.1).
    pub slack: f64,
    /// Frame bytes added to every piece.
    pub per_piece_overhead: u64,
}

impl Budget {
    /// No limit.
    pub const UNLIMITED: Budget = Budget {
        expected_contact_ms: None,
        link_rate_bytes_per_s: None,
        slack: 0.0,
        per_piece_overhead: 0,
    };

    /// The byte limit, if both estimates are known.
    pub fn bytes(&self) -> Option<u64> {
        let (ms, rate) = (self.expected_contact_ms?, self.link_rate_bytes_per_s?);
        let base = ms as f64 / 1000.0 * rate as f64;
        Some((base * (1.0 + self.slack.max(0.0))) as u64)
    }
}

/// Everything the scheduler decides from.
pub struct ScheduleInput<'a> {
    /// Bundles the source holds (at least partly) with a known manifest.
    pub bundles: Vec<SourceBundle<'a>>,
    /// The destination.
    pub peer: &'a dyn PeerView,
    /// The source's delivery predictability towards a node.
    pub local_predictability: &'a dyn Fn(&NodeId) -> f32,
    /// How many recently met nodes hold a piece (fewer = rarer).
    pub rarity: &'a dyn Fn(PieceRef) -> u32,
    /// Contact byte budget.
    pub budget: Budget,
}

impl fmt::Debug for ScheduleInput<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScheduleInput")
            .field("bundles", &self.bundles)
            .field("budget", &self.budget)
            .finish()
    }
}

/// What to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Item {
    /// A bundle's manifest.
    Manifest(BundleId),
    /// A piece.
    Piece(PieceRef),
}

/// Whether the peer wants the bundle or would carry it for others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// The peer subscribes to it, asked for it, or it is a dependency of such a bundle.
    Wanted,
    /// The peer would carry it towards its audience (PRoPHET forwarding).
    Carry,
}

/// Why an item was scheduled where it was.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reason {
    /// Wanted or carried.
    pub class: Class,
    /// Effective priority (inherited from dependants).
    pub priority: Priority,
    /// The bundle's own priority.
    pub own_priority: Priority,
    /// Dependency level (0: no dependency among the candidates).
    pub dep_level: u32,
    /// Recent holders of the piece (0 for manifests).
    pub holders: u32,
    /// Fraction of the bundle the peer holds, in per mille.
    pub peer_has_permille: u32,
    /// Peer's best predictability towards the audience.
    pub peer_p: f32,
    /// Source's best predictability towards the audience.
    pub local_p: f32,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = match self.class {
            Class::Wanted => "wanted",
            Class::Carry => "carry",
        };
        write!(
            f,
            "{class} priority={} (own {}) dep_level={} holders={} peer_has={}.{}% p_peer={:.3} p_local={:.3}",
            self.priority,
            self.own_priority,
            self.dep_level,
            self.holders,
            self.peer_has_permille / 10,
            self.peer_has_permille % 10,
            self.peer_p,
            self.local_p
        )
    }
}

/// One scheduled item with its explanation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// What to move.
    pub item: Item,
    /// Why, for a debug log line.
    pub reason: Reason,
}

/// A bundle the source could offer, as classified for this peer.
struct Cand {
    class: Class,
    priority: Priority,
    /// Dependency level; `u32::MAX`: not eligible.
    level: u32,
    peer_has: Vec<bool>,
    peer_has_permille: u32,
    peer_p: f32,
    local_p: f32,
}

impl Cand {
    /// Whether it is scheduled at all (wanted, carried, or pulled in by a dependant).
    fn eligible(&self) -> bool {
        self.level != u32::MAX
    }

    /// The order key: priority, then class, then dependency level.
    fn key(&self) -> (Priority, Class, u32) {
        (self.priority, self.class, self.level)
    }

    fn reason(&self, m: &BundleMeta, holders: u32) -> Reason {
        Reason {
            class: self.class,
            priority: self.priority,
            own_priority: m.priority,
            dep_level: self.level,
            holders,
            peer_has_permille: self.peer_has_permille,
            peer_p: self.peer_p,
            local_p: self.local_p,
        }
    }
}

fn best(audience: &[NodeId], p: &dyn Fn(&NodeId) -> f32) -> f32 {
    audience.iter().map(p).fold(0.0, f32::max)
}

/// The source's bundles by id.
type ById<'s, 'a> = HashMap<BundleId, &'s SourceBundle<'a>>;

/// The candidates, by bundle.
type Cands = HashMap<BundleId, Cand>;

/// Orders what the source should move to the peer. Pure and deterministic.
pub fn schedule(input: &ScheduleInput<'_>) -> Vec<Decision> {
    let by_id: ById<'_, '_> = input.bundles.iter().map(|b| (b.meta.id, b)).collect();
    let mut ids: Vec<BundleId> = by_id.keys().copied().collect();
    ids.sort();
    let mut cands: Cands = ids
        .iter()
        .map(|id| (*id, classify(input, by_id[id].meta)))
        .collect();
    inherit(&ids, &by_id, &mut cands);
    assign_levels(&ids, &by_id, &mut cands);

    let mut order: Vec<&BundleId> = ids.iter().filter(|id| cands[*id].eligible()).collect();
    order.sort_by_key(|id| (cands[*id].key(), **id));
    // Manifests first, in bundle order, then the pieces that fit.
    let mut out = manifests(input.peer, &order, &by_id, &cands);
    fit_budget(
        input,
        pieces(input, &order, &by_id, &cands),
        &by_id,
        &cands,
        &mut out,
    );
    out
}

/// Direct classification of one bundle: wanted by the peer, carried (the peer is closer to
/// its audience, or it has none), or not eligible unless a dependant pulls it in later.
fn classify(input: &ScheduleInput<'_>, m: &BundleMeta) -> Cand {
    let peer = input.peer;
    let peer_has: Vec<bool> = (0..m.pieces)
        .map(|index| {
            peer.has(PieceRef {
                bundle: m.id,
                index,
            })
        })
        .collect();
    let count = peer_has.iter().filter(|&&h| h).count() as u64;
    let peer_p = best(&m.audience, &|n| peer.predictability(n));
    let local_p = best(&m.audience, input.local_predictability);
    let class = if peer.wants(m) {
        Some(Class::Wanted)
    } else if m.audience.is_empty()
        || m.audience
            .iter()
            .any(|n| peer.predictability(n) > (input.local_predictability)(n))
    {
        Some(Class::Carry)
    } else {
        None
    };
    Cand {
        class: class.unwrap_or(Class::Carry),
        priority: m.priority,
        // Not eligible unless a dependant pulls it in (see `inherit`).
        level: if class.is_none() { u32::MAX } else { 0 },
        peer_has_permille: (count * 1000 / m.pieces.max(1) as u64) as u32,
        peer_has,
        peer_p,
        local_p,
    }
}

/// Propagates class and priority from dependants to dependencies (making them eligible).
/// Bounded relaxation: at most n rounds, so dependency cycles cannot loop forever.
fn inherit(ids: &[BundleId], by_id: &ById<'_, '_>, cands: &mut Cands) {
    for _ in 0..ids.len() {
        let mut changed = false;
        for id in ids {
            let (class, priority, ok) = {
                let c = &cands[id];
                (c.class, c.priority, c.eligible())
            };
            if !ok {
                continue;
            }
            for dep in &by_id[id].meta.deps {
                if let Some(d) = cands.get_mut(dep) {
                    if d.level == u32::MAX {
                        d.level = 0;
                        d.class = class;
                        changed = true;
                    }
                    if class < d.class {
                        d.class = class;
                        changed = true;
                    }
                    if priority < d.priority {
                        d.priority = priority;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
}

/// Dependency levels: one more than the deepest eligible dependency, at most n (so cycles
/// end), by bounded relaxation like [`inherit`].
fn assign_levels(ids: &[BundleId], by_id: &ById<'_, '_>, cands: &mut Cands) {
    for _ in 0..ids.len() {
        let mut changed = false;
        for id in ids {
            if !cands[id].eligible() {
                continue;
            }
            let want = by_id[id]
                .meta
                .deps
                .iter()
                .filter_map(|d| cands.get(d).filter(|c| c.eligible()))
                .map(|c| c.level.saturating_add(1))
                .max()
                .unwrap_or(0)
                .min(ids.len() as u32);
            let c = cands.get_mut(id).expect("candidate exists");
            if want > c.level {
                c.level = want;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
}

/// The manifests the peer lacks of bundles it does not hold whole, in `order`.
fn manifests(
    peer: &dyn PeerView,
    order: &[&BundleId],
    by_id: &ById<'_, '_>,
    cands: &Cands,
) -> Vec<Decision> {
    let mut out = Vec::new();
    for id in order {
        let c = &cands[*id];
        if !peer.knows_manifest(id) && c.peer_has.iter().any(|h| !h) {
            out.push(Decision {
                item: Item::Manifest(**id),
                reason: c.reason(by_id[*id].meta, 0),
            });
        }
    }
    out
}

/// Sort key of a piece: its bundle's key, then rarest first, then bundles the peer holds
/// most of, then bundle and index.
type PieceKey = ((Priority, Class, u32), u32, u32, BundleId, PieceIndex);

/// Every piece the source holds and the peer lacks, sorted by [`PieceKey`].
fn pieces(
    input: &ScheduleInput<'_>,
    order: &[&BundleId],
    by_id: &ById<'_, '_>,
    cands: &Cands,
) -> Vec<(PieceKey, PieceRef)> {
    let mut pieces = Vec::new();
    for id in order {
        let c = &cands[*id];
        let b = by_id[*id];
        for index in 0..b.meta.pieces {
            if c.peer_has[index as usize] || !(b.holds)(index) {
                continue;
            }
            let piece = PieceRef {
                bundle: **id,
                index,
            };
            let holders = (input.rarity)(piece);
            pieces.push((
                (
                    c.key(),
                    holders,
                    u32::MAX - c.peer_has_permille,
                    **id,
                    index,
                ),
                piece,
            ));
        }
    }
    pieces.sort_by_key(|(k, _)| *k);
    pieces
}

/// Appends to `out` the pieces, in order, that fit the contact's byte budget and, for
/// carried bundles, the peer's carry quota.
fn fit_budget(
    input: &ScheduleInput<'_>,
    pieces: Vec<(PieceKey, PieceRef)>,
    by_id: &ById<'_, '_>,
    cands: &Cands,
    out: &mut Vec<Decision>,
) {
    let limit = input.budget.bytes();
    let quota = input.peer.carry_quota_bytes();
    let (mut used, mut carried) = (0u64, 0u64);
    for ((_, holders, ..), piece) in pieces {
        let c = &cands[&piece.bundle];
        let m = by_id[&piece.bundle].meta;
        let len = m.piece_len(piece.index);
        let cost = len + input.budget.per_piece_overhead;
        if limit.is_some_and(|l| used + cost > l) {
            continue;
        }
        if c.class == Class::Carry {
            if carried + len > quota {
                continue;
            }
            carried += len;
        }
        used += cost;
        out.push(Decision {
            item: Item::Piece(piece),
            reason: c.reason(m, holders),
        });
    }
}

/// Estimates piece rarity from the summaries of recently met nodes.
///
/// Keeps, for at most `max_nodes` nodes (oldest evicted), which pieces of the bundles the
/// caller names each node was seen to hold. Memory: `max_nodes` × bits of those bundles.
#[derive(Debug, Clone)]
pub struct RarityTracker {
    max_nodes: usize,
    nodes: VecDeque<(NodeId, HashMap<BundleId, Bitfield>)>,
}

impl RarityTracker {
    /// A tracker remembering at most `max_nodes` nodes.
    pub fn new(max_nodes: usize) -> Self {
        RarityTracker {
            max_nodes: max_nodes.max(1),
            nodes: VecDeque::new(),
        }
    }

    /// Records what `node` holds of `bundles`, replacing what was known about it.
    pub fn observe<'m>(
        &mut self,
        node: NodeId,
        bundles: impl IntoIterator<Item = &'m BundleMeta>,
        has: impl Fn(PieceRef) -> bool,
    ) {
        self.nodes.retain(|(n, _)| *n != node);
        let mut held = HashMap::new();
        for m in bundles {
            let mut bf = Bitfield::new(m.pieces);
            for index in 0..m.pieces {
                if has(PieceRef {
                    bundle: m.id,
                    index,
                }) {
                    bf.set(index);
                }
            }
            if bf.count() > 0 {
                held.insert(m.id, bf);
            }
        }
        if self.nodes.len() == self.max_nodes {
            self.nodes.pop_front();
        }
        self.nodes.push_back((node, held));
    }

    /// Records an in-session `Have` from `node`.
    pub fn note_have(&mut self, node: &NodeId, piece: PieceRef, pieces: u32) {
        if let Some((_, held)) = self.nodes.iter_mut().find(|(n, _)| n == node) {
            held.entry(piece.bundle)
                .or_insert_with(|| Bitfield::new(pieces))
                .set(piece.index);
        }
    }

    /// How many remembered nodes hold the piece.
    pub fn holders(&self, piece: PieceRef) -> u32 {
        self.nodes
            .iter()
            .filter(|(_, held)| held.get(&piece.bundle).is_some_and(|b| b.get(piece.index)))
            .count() as u32
    }

    /// Number of nodes remembered.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is remembered.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    struct Peer {
        has: HashSet<PieceRef>,
        manifests: HashSet<BundleId>,
        channels: HashSet<String>,
        preds: HashMap<NodeId, f32>,
        quota: u64,
    }

    impl PeerView for Peer {
        fn has(&self, p: PieceRef) -> bool {
            self.has.contains(&p)
        }
        fn knows_manifest(&self, b: &BundleId) -> bool {
            self.manifests.contains(b)
        }
        fn wants(&self, m: &BundleMeta) -> bool {
            self.channels.contains(&m.channel)
        }
        fn predictability(&self, n: &NodeId) -> f32 {
            self.preds.get(n).copied().unwrap_or(0.0)
        }
        fn carry_quota_bytes(&self) -> u64 {
            self.quota
        }
    }

    fn meta(id: u8, priority: Priority, deps: &[u8], channel: &str, pieces: u32) -> BundleMeta {
        BundleMeta {
            id: BundleId([id; 32]),
            priority,
            deps: deps.iter().map(|d| BundleId([*d; 32])).collect(),
            channel: channel.into(),
            audience: vec![NodeId([100 + id; 32])],
            pieces,
            piece_size: 1000,
            len: pieces as u64 * 1000 - 1,
            release: None,
            replaces: Vec::new(),
            publisher: [0; 32],
        }
    }

    fn run(
        metas: &[BundleMeta],
        holds: &[Bitfield],
        peer: &Peer,
        local: &HashMap<NodeId, f32>,
        budget: Budget,
    ) -> Vec<Decision> {
        let closures: Vec<Box<dyn Fn(PieceIndex) -> bool + '_>> = holds
            .iter()
            .map(|b| Box::new(move |i| b.get(i)) as Box<dyn Fn(PieceIndex) -> bool>)
            .collect();
        let input = ScheduleInput {
            bundles: metas
                .iter()
                .zip(&closures)
                .map(|(m, h)| SourceBundle {
                    meta: m,
                    holds: &**h,
                })
                .collect(),
            peer,
            local_predictability: &|n| local.get(n).copied().unwrap_or(0.0),
            rarity: &|p| p.index % 3,
            budget,
        };
        schedule(&input)
    }

    #[test]
    fn example_orders_critical_deps_wanted_then_carry() {
        let metas = vec![
            meta(1, Priority::Normal, &[], "fw", 2),
            meta(2, Priority::Critical, &[3], "fw", 2),
            meta(3, Priority::Bulk, &[], "other", 2),
            meta(4, Priority::Normal, &[], "other", 2),
        ];
        let holds: Vec<_> = metas.iter().map(|m| Bitfield::full(m.pieces)).collect();
        let peer = Peer {
            has: [PieceRef {
                bundle: BundleId([1; 32]),
                index: 0,
            }]
            .into(),
            manifests: [BundleId([1; 32]), BundleId([2; 32]), BundleId([3; 32])].into(),
            channels: ["fw".to_string()].into(),
            preds: [(NodeId([104; 32]), 0.9)].into(),
            quota: 1 << 20,
        };
        let out = run(&metas, &holds, &peer, &HashMap::new(), Budget::UNLIMITED);
        let items: Vec<_> = out.iter().map(|d| d.item).collect();
        let pr = |b: u8, i| {
            Item::Piece(PieceRef {
                bundle: BundleId([b; 32]),
                index: i,
            })
        };
        assert_eq!(
            items,
            [
                Item::Manifest(BundleId([4; 32])),
                pr(3, 0),
                pr(3, 1), // dependency of the critical bundle, inherits critical
                pr(2, 0),
                pr(2, 1),
                pr(1, 1), // wanted normal
                pr(4, 0),
                pr(4, 1), // carry: peer predicts the audience better
            ]
        );
        assert!(
            out[1]
                .reason
                .to_string()
                .starts_with("wanted priority=critical (own bulk)")
        );
        // Without the peer's better predictability, bundle 4 is not carried.
        let peer = Peer {
            preds: HashMap::new(),
            ..peer
        };
        let out = run(&metas, &holds, &peer, &HashMap::new(), Budget::UNLIMITED);
        assert!(out.iter().all(|d| match d.item {
            Item::Piece(p) => p.bundle != BundleId([4; 32]),
            Item::Manifest(b) => b != BundleId([4; 32]),
        }));
    }

    #[test]
    fn rarity_tracker_counts_and_evicts() {
        let m = meta(1, Priority::Normal, &[], "fw", 4);
        let mut t = RarityTracker::new(2);
        t.observe(NodeId([1; 32]), [&m], |p| p.index < 2);
        t.observe(NodeId([2; 32]), [&m], |p| p.index == 0);
        let p = |i| PieceRef {
            bundle: m.id,
            index: i,
        };
        assert_eq!(
            (t.holders(p(0)), t.holders(p(1)), t.holders(p(3))),
            (2, 1, 0)
        );
        t.note_have(&NodeId([2; 32]), p(3), 4);
        assert_eq!(t.holders(p(3)), 1);
        t.observe(NodeId([3; 32]), [&m], |_| false);
        assert_eq!((t.len(), t.holders(p(1))), (2, 0));
    }

    fn deps_closure(metas: &[BundleMeta]) -> HashMap<BundleId, HashSet<BundleId>> {
        let mut out: HashMap<BundleId, HashSet<BundleId>> = HashMap::new();
        for m in metas {
            let mut stack = m.deps.clone();
            let set = out.entry(m.id).or_default();
            while let Some(d) = stack.pop() {
                if set.insert(d)
                    && let Some(dm) = metas.iter().find(|x| x.id == d)
                {
                    stack.extend(dm.deps.iter().copied());
                }
            }
        }
        out
    }

    proptest! {
        #[test]
        fn schedule_properties(
            specs in proptest::collection::vec(
                (0usize..4, proptest::collection::vec(any::<bool>(), 1..12), any::<u8>(), any::<bool>()), 1..6),
            peer_bits in proptest::collection::vec(any::<bool>(), 72),
            known in any::<u8>(),
            preds in proptest::collection::vec(0.0f32..1.0, 12),
            budget_ms in proptest::option::of(0u64..20),
            quota in 0u64..20_000,
        ) {
            // Bundle i may depend only on bundles < i: a DAG.
            let metas: Vec<BundleMeta> = specs.iter().enumerate().map(|(i, (prio, held, depmask, fw))| {
                let deps: Vec<u8> = (0..i as u8).filter(|d| depmask & (1 << d) != 0).collect();
                meta(i as u8, Priority::ALL[*prio], &deps, if *fw { "fw" } else { "x" }, held.len() as u32)
            }).collect();
            let holds: Vec<Bitfield> = specs.iter().map(|(_, held, ..)| {
                let mut b = Bitfield::new(held.len() as u32);
                for (i, h) in held.iter().enumerate() { if *h { b.set(i as u32); } }
                b
            }).collect();
            let mut has = HashSet::new();
            for m in &metas {
                for i in 0..m.pieces {
                    if peer_bits[(m.id.0[0] as usize * 12 + i as usize) % 72] {
                        has.insert(PieceRef { bundle: m.id, index: i });
                    }
                }
            }
            let peer = Peer {
                has,
                manifests: metas.iter().filter(|m| known & (1 << m.id.0[0]) != 0).map(|m| m.id).collect(),
                channels: ["fw".to_string()].into(),
                preds: (0..6u8).map(|i| (NodeId([100 + i; 32]), preds[i as usize])).collect(),
                quota,
            };
            let local: HashMap<NodeId, f32> = (0..6u8).map(|i| (NodeId([100 + i; 32]), preds[6 + i as usize])).collect();
            let budget = Budget {
                expected_contact_ms: budget_ms.map(|b| b * 100),
                link_rate_bytes_per_s: Some(10_000),
                slack: 0.1,
                per_piece_overhead: 40,
            };
            let out = run(&metas, &holds, &peer, &local, budget);
            prop_assert_eq!(&out, &run(&metas, &holds, &peer, &local, budget), "deterministic");

            let pieces: Vec<(PieceRef, Reason)> = out.iter().filter_map(|d| match d.item {
                Item::Piece(p) => Some((p, d.reason)),
                _ => None,
            }).collect();
            // Manifests come before pieces.
            let first_piece = out.iter().position(|d| matches!(d.item, Item::Piece(_))).unwrap_or(out.len());
            prop_assert!(out[first_piece..].iter().all(|d| matches!(d.item, Item::Piece(_))));
            let closure = deps_closure(&metas);
            let mut seen = HashSet::new();
            let (mut used, mut carried) = (0, 0);
            for (p, r) in &pieces {
                prop_assert!(!peer.has(*p), "never send what the peer has");
                prop_assert!(holds[p.bundle.0[0] as usize].get(p.index), "only what the source holds");
                prop_assert!(seen.insert(*p), "no duplicates");
                let m = &metas[p.bundle.0[0] as usize];
                used += m.piece_len(p.index) + 40;
                if r.class == Class::Carry {
                    carried += m.piece_len(p.index);
                    let better = |x: &BundleMeta| x.audience.iter().any(|n| peer.predictability(n) > local[n]);
                    prop_assert!(better(m) || metas.iter().any(|x| better(x) && closure[&x.id].contains(&m.id)),
                        "carry only towards a better peer (or as a dependency of such a bundle)");
                }
                if m.priority == Priority::Critical {
                    prop_assert_eq!(r.priority, Priority::Critical);
                }
            }
            prop_assert!(carried <= quota, "carry quota");
            if let Some(limit) = budget.bytes() {
                prop_assert!(used <= limit, "budget {} > {}", used, limit);
            }
            // Critical before non-critical.
            if let Some(last_crit) = pieces.iter().rposition(|(_, r)| r.priority == Priority::Critical) {
                prop_assert!(pieces[..last_crit].iter().all(|(_, r)| r.priority == Priority::Critical));
            }
            // Dependencies before dependants.
            for (i, (a, _)) in pieces.iter().enumerate() {
                for (b, _) in &pieces[i + 1..] {
                    prop_assert!(!closure[&a.bundle].contains(&b.bundle),
                        "{:?} (dependant) scheduled before its dependency {:?}", a, b);
                }
            }
        }
    }
}
