//! The Mule strategy in the simulator: the daemon's own code in virtual time.
//!
//! What runs here is not a re-implementation:
//! - **Summaries**: each node's summary is a real [`mule_engine::summary::Summary`]
//!   (salted [`BloomFilter`] over partly held bundles, the list of complete bundles,
//!   subscribed channels, the top PRoPHET predictabilities, carry quota). Its wire size
//!   is the encoded frame's length, and the receiver reads it through the engine's
//!   [`PeerHoldings`], so false positives are the real filter's.
//! - **Scheduling**: the receiver (Mule pulls) calls
//!   [`mule_engine::scheduler::schedule`] with the sender's advertised holdings as the
//!   source and itself as the destination, exactly as `Session::plan_requests` does, and
//!   requests the pieces it returns in order, up to the session's request window of
//!   [`REQUEST_WINDOW`] before planning again. Rarity comes from a per-node
//!   [`RarityTracker`] (64 nodes, as in the daemon) fed with every summary and `have`.
//! - **Prediction**: every node has a [`mule_contacts::Prophet`] (RFC 6693 parameters,
//!   the daemon's defaults) updated at every contact of the trace, also before the
//!   bundle is published: encounter, then transitivity with the peer's vector.
//!
//! The rarest-first baseline is the same code with the prediction input removed: the
//! bundle's audience list is left empty, which the scheduler treats as "carry
//! epidemically within the peer's carry quota" (rule 7 of the scheduler).
//!
//! Simplifications (the same for Mule and rarest): manifests are assumed known (one
//! signed manifest of about a kilobyte per node is negligible next to the pieces); the
//! contact byte budget is unlimited (the sim's pipes cut pieces at the contact's end
//! instead); a summary's predictabilities come from the sender's current vector.

use std::collections::{HashMap, VecDeque};

use mule_bundle::{BundleId, PieceRef, Priority};
use mule_contacts::{NodeId, Prophet, ProphetParams, Timestamp};
use mule_engine::frame::Message;
use mule_engine::scheduler::{
    self, Budget, BundleMeta, Item, PeerView, RarityTracker, ScheduleInput, SourceBundle,
};
use mule_engine::summary::{BloomFilter, MAX_PREDICTABILITIES, PeerHoldings, Summary};
use rand::RngCore;
use rand::rngs::SmallRng;

use crate::pieces::PieceSet;
use crate::sim::Scenario;
use crate::strategy::{Knowledge, Strategy, SummaryView, View};
use crate::trace::NodeIx;

/// One line for every report saying which Mule code the strategy ran.
pub const STATUS: &str = "Mule and rarest run the daemon's own code: mule_engine::scheduler::schedule, \
     mule_engine::summary (Bloom summaries, PeerHoldings), RarityTracker and mule_contacts::Prophet; \
     rarest = the same without the prediction input.";

/// The simulated bundle's id.
pub const BUNDLE: BundleId = BundleId([0x5a; 32]);

/// The channel the audience subscribes to.
pub const CHANNEL: &str = "sim/updates";

/// Nodes remembered by each node's rarity tracker (the daemon's value).
pub const RARITY_NODES: usize = 64;

/// Pieces planned per scheduler call: the session's default request window
/// (`SessionConfig::max_outstanding_requests`).
pub const REQUEST_WINDOW: usize = 32;

/// The simulated node id of trace node `n`.
pub fn node_id(n: NodeIx) -> NodeId {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&n.to_le_bytes());
    b[31] = 0x4d;
    NodeId(b)
}

/// Virtual seconds as the contacts crate's millisecond timestamp.
fn ts(now: f64) -> Timestamp {
    Timestamp((now.max(0.0) * 1000.0) as u64)
}

/// The Mule strategy (and, without prediction, the rarest-first baseline).
#[derive(Debug)]
pub struct Mule {
    name: &'static str,
    audience: Vec<bool>,
    meta: BundleMeta,
    prophets: Vec<Prophet>,
    rarity: Vec<RarityTracker>,
    fpr: f64,
    per_piece_overhead: u64,
    /// Planned requests per (receiver, sender), like the session's request window.
    plans: HashMap<(NodeIx, NodeIx), VecDeque<u32>>,
    /// What-if: carry only if the receiver's *best* predictability over the audience
    /// beats the sender's (not the daemon's rule; see [`Mule::strict`]).
    strict_carry: bool,
}

impl Mule {
    /// The Mule strategy; `prediction: false` removes the social prediction input.
    pub fn new(sc: &Scenario, nodes: u32, prediction: bool) -> Mule {
        Mule::build("mule", sc, nodes, prediction)
    }

    /// The rarest-first baseline: Mule's scheduler without social prediction.
    pub fn rarest(sc: &Scenario, nodes: u32) -> Mule {
        Mule::build("rarest", sc, nodes, false)
    }

    /// **What-if, not the daemon's rule**: Mule with a stricter carry test in front of
    /// the engine's scheduler — a carrier gets pieces only if its best predictability
    /// towards any audience node beats the sender's best (the engine accepts a carrier
    /// that beats the sender for *any one* audience node). Named `mule-strict` in reports.
    pub fn strict(sc: &Scenario, nodes: u32) -> Mule {
        let mut m = Mule::build("mule-strict", sc, nodes, true);
        m.strict_carry = true;
        m
    }

    fn build(name: &'static str, sc: &Scenario, nodes: u32, prediction: bool) -> Mule {
        let audience_ids = if prediction {
            (0..nodes)
                .filter(|&n| sc.audience[n as usize])
                .map(node_id)
                .collect()
        } else {
            Vec::new()
        };
        let meta = BundleMeta {
            id: BUNDLE,
            priority: Priority::Normal,
            deps: Vec::new(),
            channel: CHANNEL.to_owned(),
            audience: audience_ids,
            pieces: sc.pieces(),
            piece_size: sc.piece_size,
            len: sc.bundle,
            release: None,
            replaces: Vec::new(),
            publisher: [0; 32],
        };
        Mule {
            name,
            audience: sc.audience.clone(),
            meta,
            prophets: (0..nodes)
                .map(|n| Prophet::new(node_id(n), ProphetParams::default()))
                .collect(),
            rarity: (0..nodes)
                .map(|_| RarityTracker::new(RARITY_NODES))
                .collect(),
            fpr: sc.fpr,
            per_piece_overhead: sc.overheads.frame_header as u64,
            plans: HashMap::new(),
            strict_carry: false,
        }
    }

    /// Node `n`'s PRoPHET state (for tests and reports).
    pub fn prophet(&self, n: NodeIx) -> &Prophet {
        &self.prophets[n as usize]
    }
}

/// The receiver as the scheduler's destination.
struct Dest<'a> {
    has: &'a PieceSet,
    wants: bool,
    prophet: &'a Prophet,
    room: u64,
}

impl PeerView for Dest<'_> {
    fn has(&self, piece: PieceRef) -> bool {
        piece.index < self.has.len() && self.has.contains(piece.index)
    }
    fn knows_manifest(&self, _bundle: &BundleId) -> bool {
        true
    }
    fn wants(&self, _meta: &BundleMeta) -> bool {
        self.wants
    }
    fn predictability(&self, node: &NodeId) -> f32 {
        self.prophet.predictability(node) as f32
    }
    fn carry_quota_bytes(&self) -> u64 {
        self.room
    }
}

impl Strategy for Mule {
    fn name(&self) -> &str {
        self.name
    }

    fn knowledge(&self) -> Knowledge {
        Knowledge::Summaries
    }

    fn on_encounter(&mut self, now: f64, a: NodeIx, b: NodeIx) {
        self.plans.remove(&(a, b));
        self.plans.remove(&(b, a));
        let t = ts(now);
        let (ia, ib) = (a as usize, b as usize);
        self.prophets[ia].on_encounter(node_id(b), t);
        self.prophets[ib].on_encounter(node_id(a), t);
        let va = self.prophets[ia].vector();
        let vb = self.prophets[ib].vector();
        self.prophets[ia].on_transitive(node_id(b), &vb, t);
        self.prophets[ib].on_transitive(node_id(a), &va, t);
    }

    fn summary(
        &mut self,
        _now: f64,
        of: NodeIx,
        observer: NodeIx,
        holds: &PieceSet,
        rng: &mut SmallRng,
    ) -> SummaryView {
        let complete = holds.is_full();
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        let partial = if complete { 0 } else { holds.count() as usize };
        let mut filter = BloomFilter::for_items(salt, partial, self.fpr);
        if !complete {
            for index in holds.iter() {
                filter.insert(PieceRef {
                    bundle: BUNDLE,
                    index,
                });
            }
        }
        let of_id = node_id(of);
        let summary = Summary {
            filter,
            complete: if complete { vec![BUNDLE] } else { Vec::new() },
            manifests: if holds.is_empty() {
                Vec::new()
            } else {
                vec![BUNDLE]
            },
            channels: if self.audience[of as usize] {
                vec![CHANNEL.to_owned()]
            } else {
                Vec::new()
            },
            want_bundles: Vec::new(),
            predictabilities: self.prophets[of as usize]
                .top(MAX_PREDICTABILITIES)
                .into_iter()
                .map(|(n, p)| (n, p as f32))
                .collect(),
            carry_quota_bytes: 0,
            expected_contact_ms: None,
        };
        let mut buf = Vec::new();
        Message::Summary(Box::new(summary.clone())).encode(&mut buf);
        let holdings = PeerHoldings::new(summary);
        let mut appears = PieceSet::new(holds.len());
        for index in 0..holds.len() {
            if holdings.has(PieceRef {
                bundle: BUNDLE,
                index,
            }) {
                appears.insert(index);
            }
        }
        self.rarity[observer as usize].observe(of_id, [&self.meta], |p| {
            p.index < appears.len() && appears.contains(p.index)
        });
        SummaryView {
            bytes: buf.len() as u64,
            appears_to_hold: appears,
        }
    }

    fn on_have(&mut self, observer: NodeIx, of: NodeIx, piece: u32) {
        self.rarity[observer as usize].note_have(
            &node_id(of),
            PieceRef {
                bundle: BUNDLE,
                index: piece,
            },
            self.meta.pieces,
        );
    }

    fn next_piece(&mut self, view: &View<'_>, _rng: &mut SmallRng) -> Option<u32> {
        // Cheap exit: nothing the sender (apparently) has that the receiver lacks.
        view.source_has
            .iter_minus2(view.dest_has, view.dest_has)
            .next()?;
        let key = (view.to, view.from);
        let piece_size = self.meta.piece_size as u64;
        let still_valid = |p: u32| {
            view.source_has.contains(p)
                && !view.dest_has.contains(p)
                && (view.dest_in_audience || view.dest_room_bytes >= piece_size)
        };
        // Serve from the current request window while its entries are still valid.
        if let Some(plan) = self.plans.get_mut(&key) {
            while let Some(p) = plan.pop_front() {
                if still_valid(p) {
                    return Some(p);
                }
            }
        }
        let mut plan: VecDeque<u32> = self
            .plan(view)
            .into_iter()
            .filter(|&p| still_valid(p))
            .take(REQUEST_WINDOW)
            .collect();
        let first = plan.pop_front();
        self.plans.insert(key, plan);
        first
    }
}

impl Mule {
    /// One call of the engine's scheduler, receiver side: what `view.to` should request
    /// from `view.from`, in order.
    fn plan(&self, view: &View<'_>) -> Vec<u32> {
        let to = view.to as usize;
        let from = view.from as usize;
        if self.strict_carry && !view.dest_in_audience {
            let best = |p: &Prophet| {
                self.meta
                    .audience
                    .iter()
                    .map(|n| p.predictability(n))
                    .fold(0.0, f64::max)
            };
            if best(&self.prophets[to]) <= best(&self.prophets[from]) {
                return Vec::new();
            }
        }
        let dest = Dest {
            has: view.dest_has,
            wants: view.dest_in_audience,
            prophet: &self.prophets[to],
            room: view.dest_room_bytes,
        };
        let source_prophet = &self.prophets[from];
        let local = |n: &NodeId| source_prophet.predictability(n) as f32;
        let rarity = &self.rarity[to];
        let holders = |p: PieceRef| rarity.holders(p);
        let holds = |i: u32| i < view.source_has.len() && view.source_has.contains(i);
        let input = ScheduleInput {
            bundles: vec![SourceBundle {
                meta: &self.meta,
                holds: &holds,
            }],
            peer: &dest,
            local_predictability: &local,
            rarity: &holders,
            budget: Budget {
                per_piece_overhead: self.per_piece_overhead,
                ..Budget::UNLIMITED
            },
        };
        scheduler::schedule(&input)
            .into_iter()
            .filter_map(|d| match d.item {
                Item::Piece(p) => Some(p.index),
                Item::Manifest(_) => None,
            })
            .collect()
    }
}
