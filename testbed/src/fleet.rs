//! The fleet simulation through real sessions ("model: real sessions"): every trace node is
//! a [`mule_engine::harness`] node, every contact a harness link, and what moves is what the
//! daemon's engine sends — real frames from real [`Session`](mule_engine::session::Session)s.
//!
//! ## What runs
//! - **Links**: a contact of the trace opens a link at its start (or at the publishing
//!   time, if it began before), with the scenario's rate in each direction and
//!   `latency_ms` one way, and is [disconnected](World::disconnect) at its end (both
//!   sessions learn it at once, as from the daemon's neighbour table; what was in the air
//!   is lost). The harness steps virtual time from one due moment to the next.
//! - **Sessions**: handshake (ed25519 signatures), summaries built by the session
//!   (salted Bloom filter, complete list, channels, top
//!   PRoPHET predictabilities, carry quota), manifests offered and accepted, the
//!   session's own rate-following, shedding request window, `Have`s, `Refuse`s,
//!   cancels, keep-alives, node-wide [`PieceClaims`](mule_engine::claims::PieceClaims),
//!   [`RarityTracker`](mule_engine::scheduler::RarityTracker) (64 nodes, as the daemon),
//!   penalties and credibility — the harness's `MemNode` driver.
//! - **Prediction**: each node's [`Prophet`] as the daemon updates it: `on_encounter` when
//!   a contact starts, `on_transitive` with the peer's advertised vector when its summary
//!   arrives; a session starts with the node's top predictabilities in its view.
//! - **Carry quota**: a node outside the audience holds at most the quota's pieces (the
//!   store refuses more) and advertises the room it has left.
//!
//! ## Simplifications
//! Contacts that end before the publishing time open no session (there is nothing to
//! send); their PRoPHET update is done directly with the peer's top vector, as its summary
//! would carry it. Manifests are harness stand-ins of about 60 bytes (a signed manifest is
//! about a kilobyte). The radio is per contact (the oracle's model); `--radio shared` runs
//! the piece-level model.
//!
//! ## Determinism
//! Virtual time only; events are ordered by `(time, kind, contact)`; session challenges
//! and salts derive from the run's seed and a counter.

use std::collections::HashMap;

use ed25519_dalek::SigningKey;
use mule_bundle::{PieceRef, Priority};
use mule_contacts::{NodeId, Prophet, ProphetParams, Timestamp};
use mule_engine::harness::{
    Catalog, CatalogEntry, Link, LinkSpec, MemNode, PieceOutcome, Record, World, payload,
};
use mule_engine::scheduler::RarityTracker;
use mule_engine::session::{PieceRejection, SessionConfig};
use mule_engine::summary::MAX_PREDICTABILITIES;

use crate::mule_strategy::{CHANNEL, RARITY_NODES};
use crate::sim::{ContactUse, NodeStats, Outcome, Scenario};
use crate::trace::Trace;

/// One line for every report saying what the real-session model ran.
pub const STATUS: &str = "model: real sessions — mule and rarest run the engine's Session over \
     harness links (real frames, handshake, summaries, request window, claims, rarity, \
     PRoPHET updated on contact and summary); rarest = the same without the audience list.";

/// Options of the real-session model beyond the scenario.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    /// One-way latency of every link, ms.
    pub latency_ms: u64,
    /// Whether the bundle names its audience (PRoPHET carry decisions); false is the
    /// rarest-first baseline.
    pub prediction: bool,
}

/// Virtual seconds as harness milliseconds.
fn ms(t: f64) -> u64 {
    (t.max(0.0) * 1000.0).round() as u64
}

/// Trace events; the derive order is the tie-break order at equal times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// The contact ends.
    Down,
    /// The origin gets the bundle.
    Publish,
    /// The contact starts.
    Up,
    /// A contact that started before publishing opens its link.
    Activate,
}

/// The trace as an ordered list of `(ms, kind, contact)`.
fn events(trace: &Trace, publish_ms: u64) -> Vec<(u64, Kind, u32)> {
    let mut ev = vec![(publish_ms, Kind::Publish, 0)];
    for (i, c) in trace.contacts.iter().enumerate() {
        let (s, e) = (ms(c.start), ms(c.end));
        ev.push((s, Kind::Up, i as u32));
        if e > publish_ms {
            if s < publish_ms {
                ev.push((publish_ms, Kind::Activate, i as u32));
            }
            ev.push((e, Kind::Down, i as u32));
        }
    }
    ev.sort_unstable();
    ev
}

/// The simulator state of one real-session run.
struct Fleet<'a> {
    trace: &'a Trace,
    sc: &'a Scenario,
    opts: Options,
    world: World,
    entry: CatalogEntry,
    data: Vec<u8>,
    prophets: Vec<Prophet>,
    ids: Vec<NodeId>,
    stats: Vec<NodeStats>,
    uses: Vec<ContactUse>,
    link_of: HashMap<u32, usize>,
    publish_ms: u64,
}

/// Runs Mule (or, without prediction, rarest-first) through real sessions on `trace`.
/// `progress` is called now and then with the fraction of the trace's events done.
pub fn simulate(
    trace: &Trace,
    sc: &Scenario,
    name: &str,
    opts: Options,
    progress: &mut dyn FnMut(f64),
) -> Outcome {
    let mut fleet = Fleet::new(trace, sc, opts);
    let ev = events(trace, fleet.publish_ms);
    let total = ev.len().max(1);
    for (i, &(t, kind, ci)) in ev.iter().enumerate() {
        fleet.world.advance_to(t);
        fleet.apply_log();
        fleet.handle(t, kind, ci);
        if i.is_multiple_of(4096) {
            progress(i as f64 / total as f64);
        }
    }
    fleet.apply_log();
    progress(1.0);
    let mut uses = fleet.uses;
    uses.sort_by_key(|u| u.contact);
    Outcome {
        strategy: name.to_owned(),
        nodes: fleet.stats,
        contacts: uses,
        events: fleet.world.steps,
    }
}

impl<'a> Fleet<'a> {
    fn new(trace: &'a Trace, sc: &'a Scenario, opts: Options) -> Fleet<'a> {
        let n = trace.nodes as usize;
        let keys: Vec<SigningKey> = (0..trace.nodes)
            .map(|i| {
                let seed = blake3::hash(format!("mule-testbed/node/{i}").as_bytes());
                SigningKey::from_bytes(seed.as_bytes())
            })
            .collect();
        let ids: Vec<NodeId> = keys
            .iter()
            .map(|k| NodeId(k.verifying_key().to_bytes()))
            .collect();
        let mut catalog = Catalog::default();
        let data = payload(sc.bundle as usize, sc.seed);
        let mut entry = catalog.publish(
            "mule-testbed/bundle",
            CHANNEL,
            Priority::Normal,
            Vec::new(),
            &data,
            sc.piece_size,
        );
        if opts.prediction {
            let audience = (0..n).filter(|&v| sc.audience[v]).map(|v| ids[v]).collect();
            entry = catalog
                .set_audience(entry.meta.id, audience)
                .expect("just published");
        }
        let mut world = World::new(catalog);
        world.record = true;
        world.seed = sc.seed;
        world.cfg = SessionConfig {
            bloom_fp_rate: sc.fpr,
            ..SessionConfig::default()
        };
        for (v, key) in keys.into_iter().enumerate() {
            let wants = sc.audience[v];
            let mut node = MemNode::with_key(key, if wants { &[CHANNEL] } else { &[] });
            node.rarity = RarityTracker::new(RARITY_NODES);
            if !wants && v != sc.origin as usize {
                node.capacity = Some(sc.carry_quota_pieces as usize);
            }
            world.add(node);
        }
        let mut stats = vec![NodeStats::default(); n];
        stats[sc.origin as usize].complete_at = Some(sc.publish_at);
        Fleet {
            trace,
            sc,
            opts,
            world,
            entry,
            data,
            prophets: ids
                .iter()
                .map(|&id| Prophet::new(id, ProphetParams::default()))
                .collect(),
            ids,
            stats,
            uses: Vec::new(),
            link_of: HashMap::new(),
            publish_ms: ms(sc.publish_at),
        }
    }

    fn handle(&mut self, t: u64, kind: Kind, ci: u32) {
        let c = self.trace.contacts[ci as usize];
        match kind {
            Kind::Publish => {
                let o = self.sc.origin as usize;
                let pieces = self.entry.meta.pieces;
                self.world.nodes[o].hold(&self.entry, &self.data, 0..pieces);
            }
            Kind::Up => {
                let now = Timestamp(t);
                let (a, b) = (c.a as usize, c.b as usize);
                self.prophets[a].on_encounter(self.ids[b], now);
                self.prophets[b].on_encounter(self.ids[a], now);
                if ms(c.end) <= self.publish_ms {
                    // No session (nothing to send): the summaries' vectors, directly.
                    let va = self.advertised(a);
                    let vb = self.advertised(b);
                    self.prophets[a].on_transitive(self.ids[b], &vb, now);
                    self.prophets[b].on_transitive(self.ids[a], &va, now);
                } else if t >= self.publish_ms {
                    self.open(ci);
                }
            }
            Kind::Activate => self.open(ci),
            Kind::Down => self.close(ci),
        }
    }

    /// Node `v`'s vector as its summary would carry it (the top entries).
    fn advertised(&self, v: usize) -> Vec<(NodeId, f64)> {
        let mut top = self.prophets[v].top(MAX_PREDICTABILITIES);
        top.sort_by_key(|x| x.0);
        top
    }

    fn open(&mut self, ci: u32) {
        let c = self.trace.contacts[ci as usize];
        for v in [c.a as usize, c.b as usize] {
            let preds = self.prophets[v]
                .top(MAX_PREDICTABILITIES)
                .into_iter()
                .map(|(n, p)| (n, p as f32))
                .collect();
            let quota = self.sc.carry_quota_pieces as u64 * self.sc.piece_size as u64;
            let node = &mut self.world.nodes[v];
            let held = node.pieces_of(&self.entry.meta.id) as u64 * self.sc.piece_size as u64;
            node.view.predictabilities = preds;
            node.view.carry_quota_bytes = quota.saturating_sub(held);
        }
        let spec = LinkSpec {
            rate_bytes_per_s: Some(self.sc.rate.bytes_per_s().round() as u64),
            latency_ms: self.opts.latency_ms,
        };
        let li = self.world.connect_with(c.a as usize, c.b as usize, spec);
        self.link_of.insert(ci, li);
    }

    fn close(&mut self, ci: u32) {
        let Some(li) = self.link_of.remove(&ci) else {
            return;
        };
        self.world.disconnect(li);
        self.apply_log();
        let link = self
            .world
            .forget(li)
            .expect("a disconnected link is finished");
        self.account(ci, &link);
    }

    /// Adds a finished link's bytes to its nodes and the contact list.
    fn account(&mut self, ci: u32, link: &Link) {
        let c = self.trace.contacts[ci as usize];
        let ends = [c.a as usize, c.b as usize];
        for d in 0..2 {
            let (from, to) = (ends[d], ends[1 - d]);
            self.stats[from].bytes_sent += link.delivered[d];
            self.stats[to].bytes_recv += link.delivered[d];
            self.stats[from].pieces_sent += link.ends[d].session.stats().pieces_sent;
        }
        if link.delivered[0] + link.delivered[1] > 0 {
            self.uses.push(ContactUse {
                contact: ci,
                usable_s: c.end - c.start.max(self.sc.publish_at),
                bytes: link.delivered,
            });
        }
    }

    /// Acts on what the world recorded: PRoPHET transitivity, piece statistics.
    fn apply_log(&mut self) {
        for r in std::mem::take(&mut self.world.log) {
            match r {
                Record::Summary {
                    at,
                    node,
                    peer,
                    predictabilities,
                } => self.prophets[node].on_transitive(peer, &predictabilities, Timestamp(at)),
                Record::Piece {
                    at,
                    node,
                    from,
                    piece,
                    outcome,
                } => self.count_piece(at, node, from, piece, outcome),
            }
        }
    }

    fn count_piece(&mut self, at: u64, node: usize, from: usize, p: PieceRef, o: PieceOutcome) {
        let origin = self.sc.origin as usize;
        let st = &mut self.stats[node];
        match o {
            PieceOutcome::Stored => {
                st.pieces_new += 1;
                let len = self.sc.piece_len(p.index);
                if from == origin {
                    st.useful_from_origin += len;
                } else {
                    st.useful_from_others += len;
                }
                // The log is read after the fact: count, do not look at the node now.
                if st.complete_at.is_none() && st.pieces_new == self.sc.pieces() as u64 {
                    st.complete_at = Some(at as f64 / 1000.0);
                }
            }
            PieceOutcome::Duplicate => st.pieces_duplicate += 1,
            PieceOutcome::Rejected(PieceRejection::StoreFull) => st.pieces_rejected += 1,
            PieceOutcome::Rejected(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mule_strategy::Mule;
    use crate::trace::{Format, Options as TraceOptions};

    /// The piece model's test scenario with an unlimited carry quota.
    fn scenario(trace: &Trace, bundle: u64, publish_at: f64, fraction: f64) -> Scenario {
        Scenario {
            carry_quota_pieces: 1 << 20,
            ..crate::sim::tests::scenario(trace, bundle, publish_at, fraction)
        }
    }

    /// A CSV trace with contacts kept as given (no minimum length).
    fn csv(text: &str) -> Trace {
        let opts = TraceOptions {
            min_contact: 0.0,
            ..TraceOptions::default()
        };
        Trace::parse(text, Format::Csv, &opts).unwrap()
    }

    const MULE: Options = Options {
        latency_ms: 0,
        prediction: true,
    };

    fn run(t: &Trace, sc: &Scenario, opts: Options) -> Outcome {
        simulate(t, sc, "mule", opts, &mut |_| {})
    }

    #[test]
    fn a_bundle_relays_along_a_line_through_real_sessions() {
        // 0 meets 1 for 10 s, then 1 meets 2: a 2 MB bundle at 1 MB/s takes a bit over 2 s.
        let t = csv("0,10,0,1\n20,30,1,2\n");
        let sc = scenario(&t, 2_000_000, 0.0, 1.0);
        let out = run(&t, &sc, MULE);
        let c1 = out.nodes[1].complete_at.expect("node 1 completes");
        let c2 = out.nodes[2].complete_at.expect("node 2 completes");
        assert!(c1 > 2.0 && c1 < 2.2, "{c1}");
        assert!(c2 > 22.0 && c2 < 22.2, "{c2}");
        assert_eq!(out.nodes[0].pieces_sent, sc.pieces() as u64);
        assert_eq!(out.nodes[2].pieces_new, sc.pieces() as u64);
        assert_eq!(out.nodes.iter().map(|n| n.pieces_duplicate).sum::<u64>(), 0);
        // What went on the air is more than the payload (frames, handshake, summaries).
        assert!(out.nodes[0].bytes_sent > 2_000_000);
    }

    #[test]
    fn a_contact_cut_short_leaves_a_partial_bundle_that_resumes() {
        // Half a second at 1 MB/s: about 7 of 31 pieces; the next contact finishes it.
        let t = csv("0,0.5,0,1\n10,20,0,1\n");
        let sc = scenario(&t, 2_000_000, 0.0, 1.0);
        let out = run(&t, &sc, MULE);
        let c = out.nodes[1]
            .complete_at
            .expect("completes in the second contact");
        assert!(c > 10.0 && c < 12.0, "{c}");
        assert_eq!(out.nodes[1].pieces_new, sc.pieces() as u64);
        assert_eq!(out.contacts.len(), 2);
        let first: u64 = out.contacts[0].bytes.iter().sum();
        assert!(
            first > 400_000 && first <= 500_000,
            "{first} bytes in 0.5 s"
        );
    }

    /// The two models agree on a small synthetic fleet: the same nodes complete, in the
    /// same order, each within 1 % of its time since publishing (or 0.5 s, for nodes that
    /// complete within seconds: the real sessions' handshake and summaries take a few ms
    /// more than the piece model's byte costs).
    #[test]
    fn real_sessions_agree_with_the_piece_model() {
        let t = crate::synth::synthetic(20, 0.5, 3);
        let sc = scenario(&t, 2_000_000, t.duration() * 0.25, 1.0);
        let real = run(&t, &sc, MULE);
        let pieces = crate::sim::simulate(&t, &sc, &mut Mule::new(&sc, t.nodes, true), &mut |_| {});
        let done = |o: &Outcome| -> Vec<(usize, f64)> {
            let mut v: Vec<(usize, f64)> = o
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.complete_at.map(|c| (i, c - sc.publish_at)))
                .collect();
            v.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            v
        };
        let (r, p) = (done(&real), done(&pieces));
        assert!(r.len() > 5, "too little spread to compare: {r:?}");
        assert_eq!(
            r.iter().map(|x| x.0).collect::<Vec<_>>(),
            p.iter().map(|x| x.0).collect::<Vec<_>>(),
            "completion order"
        );
        let bound =
            crate::oracle::Oracle::compute(&t, sc.origin, sc.publish_at, sc.bundle, sc.rate);
        for ((v, tr), (_, tp)) in r.iter().zip(&p) {
            let tol = (0.01 * tp).max(0.5);
            assert!(
                (tr - tp).abs() <= tol,
                "node {v}: real {tr} s, piece-level {tp} s"
            );
            let b = bound.complete[*v] - sc.publish_at;
            assert!(
                *tr >= b,
                "node {v}: real sessions at {tr} s beat the bound {b} s"
            );
        }
    }

    #[test]
    fn same_seed_gives_identical_output() {
        let t = crate::synth::synthetic(15, 0.3, 5);
        let sc = scenario(&t, 2_000_000, t.duration() * 0.25, 0.5);
        for opts in [
            MULE,
            Options {
                latency_ms: 5,
                prediction: false,
            },
        ] {
            let a = serde_json::to_string(&run(&t, &sc, opts)).unwrap();
            let b = serde_json::to_string(&run(&t, &sc, opts)).unwrap();
            assert_eq!(a, b);
        }
    }
}
