//! The piece-level model ("model: piece-level"): a deterministic discrete-event
//! simulation of a fleet replaying a contact trace, with the session re-modelled around
//! the engine's scheduler, summaries and prediction. Mule and rarest-first run through the
//! engine's real sessions by default ([`crate::fleet`]); this model remains for the
//! baselines that are not Mule's session (epidemic, client-server, the `mule-strict`
//! what-if), for `--radio shared`, for `--model pieces`, and as the cross-check of the
//! real-session model.
//!
//! ## What is simulated
//! Nodes track **which pieces** they hold (a bitset), never the bytes. A bundle of
//! `bundle` bytes is cut into pieces of `piece_size` bytes and appears at the origin at
//! `publish_at`. Every contact of the trace becomes a link with two independent
//! directions, each a serial pipe of `rate` bytes/s (the same model as the
//! [`crate::oracle`]; a node's simultaneous contacts do not share a radio). At contact
//! start (or at `publish_at` for contacts already up) both ends send a hello and, for
//! pull strategies, a summary (Mule: the engine's real summary frame) or request
//! bitmap; pieces flow once both have arrived. Every frame is counted at its real
//! encoded size (`mule_engine::frame`): a piece costs payload + piece frame header,
//! a request, a `have` and a refusal cost their frames. A piece cut off by the end of
//! the contact is lost; its bytes still count as sent.
//!
//! For pull strategies ([`Knowledge::Summaries`]) the receiver chooses what to
//! request from the sender's summary and `have`s; a request for a piece the sender
//! does not hold (a Bloom false positive) is refused and remembered. A node that gains
//! a piece announces it (`have`) to its other current peers. Pieces in flight to a node
//! are claimed so its other sessions do not fetch them too (the engine's receiver-side
//! claims). Non-audience nodes keep at most `carry_quota` pieces; a piece beyond that,
//! or one the receiver already has, is counted as wasted.
//!
//! Contacts before `publish_at` carry no data but are shown to the strategy
//! ([`Strategy::on_encounter`]) so that prediction learns from the whole history.
//!
//! ## Determinism
//! Virtual time only; events are ordered by `(time, kind, sequence number)`; all
//! randomness (Bloom salts, epidemic order) comes from one `SmallRng` seeded with the
//! run's seed. Same inputs and seed → identical results.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::pieces::PieceSet;
use crate::strategy::{Knowledge, Strategy, View};
use crate::trace::{NodeIx, Trace};
use crate::units::Rate;

/// Protocol overheads in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Overheads {
    /// Session opening, each direction: `Hello` plus `HelloAck` frames.
    pub hello: u32,
    /// Piece frame header (frame length, type, bundle id, index, length).
    pub frame_header: u32,
    /// A `Request` frame for one piece.
    pub request: u32,
    /// A `Have` frame announcing one piece.
    pub have: u32,
    /// A `Refuse` frame for one piece.
    pub refuse: u32,
}

impl Overheads {
    /// The sizes of Mule's frames, measured by encoding them with `mule_engine::frame`.
    pub fn mule(piece_size: u32) -> Overheads {
        use mule_bundle::PieceRef;
        use mule_engine::frame::{self, Hello, Message, RefuseReason};
        let p = PieceRef {
            bundle: crate::mule_strategy::BUNDLE,
            index: u32::MAX / 2,
        };
        let len = |m: Message| {
            let mut v = Vec::new();
            m.encode(&mut v);
            v.len() as u32
        };
        let hello = len(Message::Hello(Hello {
            node_id: crate::mule_strategy::node_id(0),
            challenge: [7; 32],
            capabilities: 0,
            carry_quota_bytes: 256 << 20,
            piece_size_max: 256 << 10,
            max_requests: 32,
        })) + len(Message::HelloAck { signature: [9; 64] });
        Overheads {
            hello,
            frame_header: frame::piece_overhead(p, piece_size as usize) as u32,
            request: len(Message::Request(vec![p])),
            have: len(Message::Have(vec![p])),
            refuse: len(Message::Refuse {
                reason: RefuseReason::NotHeld,
                pieces: vec![p],
            }),
        }
    }
}

/// Everything that defines one simulated scenario (shared by all strategies of a run).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scenario {
    /// Link rate.
    pub rate: Rate,
    /// Bundle size in bytes.
    pub bundle: u64,
    /// Piece size in bytes.
    pub piece_size: u32,
    /// The publishing node.
    pub origin: NodeIx,
    /// Publish time, absolute seconds.
    pub publish_at: f64,
    /// Per node: subscribes to the bundle. The origin is never in the audience.
    pub audience: Vec<bool>,
    /// Pieces a non-audience node may carry.
    pub carry_quota_pieces: u32,
    /// Bloom summary false-positive rate.
    pub fpr: f64,
    /// Protocol overheads.
    pub overheads: Overheads,
    /// Whether a node's contacts share its transmitter.
    pub radio: Radio,
    /// RNG seed.
    pub seed: u64,
}

/// How a node's simultaneous contacts share capacity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Radio {
    /// Every contact direction is its own pipe of `rate` (the oracle's model).
    #[default]
    PerContact,
    /// A node has one transmitter of `rate` shared by all its contacts, served
    /// round-robin one frame at a time (like `tc tbf` on each namespace's veth in the
    /// emulation). Receiving is not limited.
    SharedEgress,
}

impl std::str::FromStr for Radio {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "per-contact" => Ok(Radio::PerContact),
            "shared" | "shared-egress" => Ok(Radio::SharedEgress),
            _ => Err(format!(
                "unknown radio model {s:?} (expected per-contact or shared)"
            )),
        }
    }
}

/// Which simulation ran a strategy; every report names it per strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Model {
    /// The engine's real sessions over harness links ([`crate::fleet`]): Mule and
    /// rarest-first.
    #[default]
    Sessions,
    /// This module's piece-level model: pieces as bitsets, frames as byte costs, the
    /// session re-modelled (claims, a fixed request window, summaries, `Have`/`Refuse`).
    Pieces,
}

impl Model {
    /// The label reports print: `real sessions` or `piece-level`.
    pub fn label(self) -> &'static str {
        match self {
            Model::Sessions => "real sessions",
            Model::Pieces => "piece-level",
        }
    }
}

impl std::str::FromStr for Model {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sessions" | "real-sessions" => Ok(Model::Sessions),
            "pieces" | "piece-level" => Ok(Model::Pieces),
            _ => Err(format!("unknown model {s:?} (expected sessions or pieces)")),
        }
    }
}

impl Scenario {
    /// Number of pieces.
    pub fn pieces(&self) -> u32 {
        self.bundle.div_ceil(self.piece_size as u64) as u32
    }

    /// Payload bytes of piece `i`.
    pub fn piece_len(&self, i: u32) -> u64 {
        let start = i as u64 * self.piece_size as u64;
        (self.bundle - start).min(self.piece_size as u64)
    }

    /// Number of audience members.
    pub fn audience_size(&self) -> usize {
        self.audience.iter().filter(|&&a| a).count()
    }

    /// Chooses `fraction` of the non-origin nodes as the audience (seeded; `1.0` = all).
    pub fn pick_audience(nodes: u32, origin: NodeIx, fraction: f64, seed: u64) -> Vec<bool> {
        let mut aud = vec![false; nodes as usize];
        let mut others: Vec<NodeIx> = (0..nodes).filter(|&n| n != origin).collect();
        let k = ((others.len() as f64) * fraction.clamp(0.0, 1.0)).round() as usize;
        // Partial Fisher-Yates with its own stream so strategies share one audience.
        let mut rng = SmallRng::seed_from_u64(seed ^ 0xA0D1_E4CE);
        for i in 0..k {
            let j = rng.random_range(i..others.len());
            others.swap(i, j);
            aud[others[i] as usize] = true;
        }
        aud
    }
}

/// Per-node outcome of one strategy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStats {
    /// When the node held every piece (absolute seconds), if ever.
    pub complete_at: Option<f64>,
    /// All bytes this node put on the air (hellos, summaries, announcements, pieces,
    /// pieces cut off).
    pub bytes_sent: u64,
    /// All bytes this node received (same categories).
    pub bytes_recv: u64,
    /// Pieces it sent that arrived completely.
    pub pieces_sent: u64,
    /// Pieces it received that were new and kept.
    pub pieces_new: u64,
    /// Pieces it received but already had.
    pub pieces_duplicate: u64,
    /// Pieces it received but could not keep (carry quota full).
    pub pieces_rejected: u64,
    /// Requests this node made that the sender refused (Bloom false positives).
    pub requests_refused: u64,
    /// Useful payload bytes received from the origin (for offload).
    pub useful_from_origin: u64,
    /// Useful payload bytes received from other nodes.
    pub useful_from_others: u64,
}

/// Bytes that crossed one contact (after the publish time).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContactUse {
    /// Index into the trace's contacts.
    pub contact: u32,
    /// Seconds of the contact after the publish time.
    pub usable_s: f64,
    /// Bytes sent `a -> b` and `b -> a`.
    pub bytes: [u64; 2],
}

/// The result of simulating one strategy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Outcome {
    /// Strategy name.
    pub strategy: String,
    /// Per node.
    pub nodes: Vec<NodeStats>,
    /// Per contact that was used after publishing (contacts with no bytes omitted).
    pub contacts: Vec<ContactUse>,
    /// Number of events processed (a cost figure).
    pub events: u64,
}

/// A time with a total order, for the event queue.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Time(f64);
impl Eq for Time {}
impl PartialOrd for Time {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Time {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0)
    }
}

/// Events; the derive order is the tie-break order at equal times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A piece finished arriving on link `link`, direction `dir`.
    PieceDone { link: u32, epoch: u32, dir: u8 },
    /// The contact of `link` ends.
    Down { link: u32, epoch: u32 },
    /// A contact that started before the publish time becomes a data link.
    Activate { contact: u32 },
    /// The handshake of `link` is done: pieces may flow.
    Ready { link: u32, epoch: u32 },
}

/// One direction of a live link.
struct Dir {
    from: NodeIx,
    to: NodeIx,
    /// Pull: what the receiver believes the sender holds (summary, `have`s, minus
    /// refusals). Blind push: what was sent on this direction. Exact: unused.
    view: PieceSet,
    /// The piece in flight and when its transmission started.
    in_flight: Option<(u32, f64)>,
    /// Bytes of small control frames queued ahead of the next piece.
    debt: u64,
    /// False until the handshake is done.
    ready: bool,
}

/// A live contact.
struct Link {
    contact: u32,
    end: f64,
    epoch: u32,
    dirs: [Dir; 2],
    bytes: [u64; 2],
    usable_s: f64,
}

/// The simulator for one strategy. Build with [`Sim::new`], run with [`Sim::run`].
pub struct Sim<'a> {
    trace: &'a Trace,
    sc: &'a Scenario,
    strategy: &'a mut dyn Strategy,
    knowledge: Knowledge,
    rng: SmallRng,
    pieces: u32,
    have: Vec<PieceSet>,
    claimed: Vec<PieceSet>,
    stats: Vec<NodeStats>,
    node_links: Vec<Vec<u32>>,
    links: Vec<Option<Link>>,
    free: Vec<u32>,
    epochs: Vec<u32>,
    heap: BinaryHeap<Reverse<(Time, Event, u64)>>,
    seq: u64,
    uses: Vec<ContactUse>,
    scratch: PieceSet,
    events: u64,
    /// Shared egress: whether the node's transmitter is busy, and its round-robin cursor.
    tx_busy: Vec<bool>,
    rr: Vec<usize>,
}

impl<'a> Sim<'a> {
    /// A simulator for `strategy` on `trace` under scenario `sc`.
    pub fn new(trace: &'a Trace, sc: &'a Scenario, strategy: &'a mut dyn Strategy) -> Sim<'a> {
        let n = trace.nodes as usize;
        let pieces = sc.pieces();
        let mut have = vec![PieceSet::new(pieces); n];
        have[sc.origin as usize] = PieceSet::full(pieces);
        let mut stats = vec![NodeStats::default(); n];
        stats[sc.origin as usize].complete_at = Some(sc.publish_at);
        let knowledge = strategy.knowledge();
        Sim {
            trace,
            sc,
            strategy,
            knowledge,
            rng: SmallRng::seed_from_u64(sc.seed),
            pieces,
            have,
            claimed: vec![PieceSet::new(pieces); n],
            stats,
            node_links: vec![Vec::new(); n],
            links: Vec::new(),
            free: Vec::new(),
            epochs: Vec::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            uses: Vec::new(),
            scratch: PieceSet::new(pieces),
            events: 0,
            tx_busy: vec![false; n],
            rr: vec![0; n],
        }
    }

    /// Runs to the end of the trace. `progress` is called now and then with the
    /// fraction of the trace's contacts processed.
    pub fn run(mut self, progress: &mut dyn FnMut(f64)) -> Outcome {
        let contacts = &self.trace.contacts;
        let total = contacts.len().max(1);
        let mut next = 0usize;
        loop {
            let heap_t = self.heap.peek().map(|Reverse((t, _, _))| t.0);
            let up_t = contacts.get(next).map(|c| c.start);
            match (heap_t, up_t) {
                (None, None) => break,
                (Some(h), Some(u)) if u < h => {
                    self.contact_up(next as u32);
                    next += 1;
                }
                (None, Some(_)) => {
                    self.contact_up(next as u32);
                    next += 1;
                }
                _ => {
                    let Reverse((Time(t), ev, _)) = self.heap.pop().expect("peeked");
                    self.handle(t, ev);
                }
            }
            self.events += 1;
            if self.events.is_multiple_of(65_536) {
                progress(next as f64 / total as f64);
            }
        }
        progress(1.0);
        let mut uses = self.uses;
        uses.sort_by_key(|u| u.contact);
        Outcome {
            strategy: self.strategy.name().to_owned(),
            nodes: self.stats,
            contacts: uses,
            events: self.events,
        }
    }

    fn push(&mut self, t: f64, ev: Event) {
        self.seq += 1;
        self.heap.push(Reverse((Time(t), ev, self.seq)));
    }

    fn contact_up(&mut self, ci: u32) {
        let c = self.trace.contacts[ci as usize];
        self.strategy.on_encounter(c.start, c.a, c.b);
        if c.end <= self.sc.publish_at {
            return;
        }
        if c.start < self.sc.publish_at {
            self.push(self.sc.publish_at, Event::Activate { contact: ci });
        } else {
            self.activate(ci, c.start);
        }
    }

    fn handle(&mut self, t: f64, ev: Event) {
        match ev {
            Event::Activate { contact } => self.activate(contact, t),
            Event::Ready { link, epoch } => {
                if self.live(link, epoch) {
                    for d in 0..2 {
                        self.link_mut(link).dirs[d].ready = true;
                        self.try_send(t, link, d);
                    }
                }
            }
            Event::PieceDone { link, epoch, dir } => {
                if self.live(link, epoch) {
                    self.piece_done(t, link, dir as usize);
                }
            }
            Event::Down { link, epoch } => {
                if self.live(link, epoch) {
                    self.down(link);
                }
            }
        }
    }

    fn live(&self, link: u32, epoch: u32) -> bool {
        self.links[link as usize]
            .as_ref()
            .is_some_and(|l| l.epoch == epoch)
    }

    fn link_mut(&mut self, link: u32) -> &mut Link {
        self.links[link as usize].as_mut().expect("live link")
    }

    /// Counts `bytes` of control traffic on direction `d` of `link`: sent now (for the
    /// statistics) and delaying the next piece on that pipe.
    fn control(&mut self, link: u32, d: usize, bytes: u64) {
        let l = self.link_mut(link);
        l.dirs[d].debt += bytes;
        l.bytes[d] += bytes;
        let (from, to) = (l.dirs[d].from, l.dirs[d].to);
        self.stats[from as usize].bytes_sent += bytes;
        self.stats[to as usize].bytes_recv += bytes;
    }

    fn activate(&mut self, ci: u32, t: f64) {
        let c = self.trace.contacts[ci as usize];
        let end = c.end;
        let usable = end - t;
        let rate = self.sc.rate.bytes_per_s();
        let hello = self.sc.overheads.hello as u64;
        // What each end sends before pieces flow, and what the other end learns.
        let (mut hs, mut views) = ([hello, hello], [PieceSet::new(0), PieceSet::new(0)]);
        for (i, (of, obs)) in [(c.a, c.b), (c.b, c.a)].into_iter().enumerate() {
            match self.knowledge {
                Knowledge::Blind => views[i] = PieceSet::new(self.pieces),
                Knowledge::Exact => {
                    // The client's request bitmap.
                    hs[i] += self.pieces.div_ceil(8) as u64 + self.sc.overheads.request as u64;
                    views[i] = PieceSet::new(self.pieces);
                }
                Knowledge::Summaries => {
                    let sv =
                        self.strategy
                            .summary(t, of, obs, &self.have[of as usize], &mut self.rng);
                    hs[i] += sv.bytes;
                    views[i] = sv.appears_to_hold;
                }
            }
        }
        let cap = usable * rate;
        let sent = [
            (hs[0] as f64).min(cap) as u64,
            (hs[1] as f64).min(cap) as u64,
        ];
        self.stats[c.a as usize].bytes_sent += sent[0];
        self.stats[c.b as usize].bytes_recv += sent[0];
        self.stats[c.b as usize].bytes_sent += sent[1];
        self.stats[c.a as usize].bytes_recv += sent[1];
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.links.push(None);
                self.epochs.push(0);
                (self.links.len() - 1) as u32
            }
        };
        self.epochs[slot as usize] += 1;
        let epoch = self.epochs[slot as usize];
        let [view_a, view_b] = views;
        let dir = |from, to, view| Dir {
            from,
            to,
            view,
            in_flight: None,
            debt: 0,
            ready: false,
        };
        self.links[slot as usize] = Some(Link {
            contact: ci,
            end,
            epoch,
            dirs: [dir(c.a, c.b, view_a), dir(c.b, c.a, view_b)],
            bytes: sent,
            usable_s: usable,
        });
        self.node_links[c.a as usize].push(slot);
        self.node_links[c.b as usize].push(slot);
        self.push(end, Event::Down { link: slot, epoch });
        let ready_at = t + hs[0].max(hs[1]) as f64 / rate;
        if ready_at < end {
            self.push(ready_at, Event::Ready { link: slot, epoch });
        }
    }

    /// Carry room of `node` in pieces (`u32::MAX` for the audience and the origin).
    fn room(&self, node: NodeIx) -> u32 {
        if self.sc.audience[node as usize] || node == self.sc.origin {
            u32::MAX
        } else {
            self.sc
                .carry_quota_pieces
                .saturating_sub(self.have[node as usize].count())
        }
    }

    fn try_send(&mut self, now: f64, link: u32, d: usize) {
        let (from, to, ready, busy) = {
            let l = self.links[link as usize].as_ref().expect("live link");
            let dir = &l.dirs[d];
            (dir.from, dir.to, dir.ready, dir.in_flight.is_some())
        };
        if !ready || busy || self.have[from as usize].is_empty() {
            return;
        }
        let shared = self.sc.radio == Radio::SharedEgress;
        if shared && self.tx_busy[from as usize] {
            return;
        }
        let pull = self.knowledge != Knowledge::Blind;
        if pull {
            if self.have[to as usize].is_full() {
                return;
            }
            self.scratch
                .assign_union(&self.have[to as usize], &self.claimed[to as usize]);
        }
        let room = self.room(to);
        let room_bytes = if room == u32::MAX {
            u64::MAX
        } else {
            room as u64 * self.sc.piece_size as u64
        };
        // A pull may hit Bloom false positives: each is refused, remembered, and the
        // receiver picks again (at most once per piece).
        let mut pick = None;
        for _ in 0..=self.pieces {
            let p = {
                let l = self.links[link as usize].as_ref().expect("live link");
                let view = View {
                    now,
                    from,
                    to,
                    from_is_origin: from == self.sc.origin,
                    source_has: match self.knowledge {
                        Knowledge::Summaries => &l.dirs[d].view,
                        _ => &self.have[from as usize],
                    },
                    dest_has: if pull { &self.scratch } else { &l.dirs[d].view },
                    dest_in_audience: self.sc.audience[to as usize],
                    source_in_audience: self.sc.audience[from as usize],
                    dest_room_bytes: if pull { room_bytes } else { u64::MAX },
                };
                self.strategy.next_piece(&view, &mut self.rng)
            };
            let Some(p) = p else { break };
            if pull {
                // The request travels to -> from.
                self.control(link, 1 - d, self.sc.overheads.request as u64);
            }
            if self.have[from as usize].contains(p) {
                pick = Some(p);
                break;
            }
            // Not held (a false positive): refused.
            self.stats[to as usize].requests_refused += 1;
            self.control(link, d, self.sc.overheads.refuse as u64);
            self.link_mut(link).dirs[d].view.remove(p);
        }
        let Some(p) = pick else { return };
        let rate = self.sc.rate.bytes_per_s();
        let bytes = self.sc.piece_len(p) + self.sc.overheads.frame_header as u64;
        let l = self.link_mut(link);
        let debt = std::mem::take(&mut l.dirs[d].debt);
        let start = now + debt as f64 / rate;
        let done = start + bytes as f64 / rate;
        l.dirs[d].in_flight = Some((p, start));
        let (end, epoch) = (l.end, l.epoch);
        if pull {
            self.claimed[to as usize].insert(p);
        }
        if shared {
            self.tx_busy[from as usize] = true;
        }
        if done <= end {
            self.push(
                done,
                Event::PieceDone {
                    link,
                    epoch,
                    dir: d as u8,
                },
            );
        }
    }

    fn piece_done(&mut self, now: f64, link: u32, d: usize) {
        let pull = self.knowledge != Knowledge::Blind;
        let (from, to, p) = {
            let l = self.link_mut(link);
            let dir = &mut l.dirs[d];
            let (p, _) = dir.in_flight.take().expect("piece in flight");
            if !pull {
                dir.view.insert(p);
            }
            (dir.from, dir.to, p)
        };
        let bytes = self.sc.piece_len(p) + self.sc.overheads.frame_header as u64;
        self.link_mut(link).bytes[d] += bytes;
        self.stats[from as usize].bytes_sent += bytes;
        self.stats[from as usize].pieces_sent += 1;
        self.stats[to as usize].bytes_recv += bytes;
        if pull {
            self.claimed[to as usize].remove(p);
        }
        if self.deliver(now, from, to, p) {
            self.after_gain(now, to, p, link);
        }
        if self.sc.radio == Radio::SharedEgress {
            self.tx_busy[from as usize] = false;
            self.serve_next(now, from);
        } else {
            self.try_send(now, link, d);
        }
    }

    /// Shared egress: the transmitter of `node` is free; serve its contacts round-robin.
    fn serve_next(&mut self, now: f64, node: NodeIx) {
        let links = self.node_links[node as usize].clone();
        let n = links.len();
        if n == 0 {
            return;
        }
        let start = self.rr[node as usize] % n;
        for k in 0..n {
            let l = links[(start + k) % n];
            let out = {
                let link = self.links[l as usize].as_ref().expect("live link");
                if link.dirs[0].from == node { 0 } else { 1 }
            };
            self.try_send(now, l, out);
            if self.tx_busy[node as usize] {
                self.rr[node as usize] = start + k + 1;
                return;
            }
        }
    }

    /// Stores piece `p` at `to` if new and allowed; returns true if it was kept.
    fn deliver(&mut self, now: f64, from: NodeIx, to: NodeIx, p: u32) -> bool {
        let t = to as usize;
        if self.have[t].contains(p) {
            self.stats[t].pieces_duplicate += 1;
            return false;
        }
        if self.room(to) == 0 {
            self.stats[t].pieces_rejected += 1;
            return false;
        }
        self.have[t].insert(p);
        let st = &mut self.stats[t];
        st.pieces_new += 1;
        if from == self.sc.origin {
            st.useful_from_origin += self.sc.piece_len(p);
        } else {
            st.useful_from_others += self.sc.piece_len(p);
        }
        if self.have[t].is_full() && st.complete_at.is_none() {
            st.complete_at = Some(now);
        }
        true
    }

    /// After `node` gained piece `p` over `via`: announce it to its other peers (pull
    /// strategies) and wake its idle outgoing directions.
    fn after_gain(&mut self, now: f64, node: NodeIx, p: u32, via: u32) {
        let links = self.node_links[node as usize].clone();
        let summaries = self.knowledge == Knowledge::Summaries;
        for l in links {
            let out = {
                let link = self.links[l as usize].as_ref().expect("live link");
                if link.dirs[0].from == node { 0 } else { 1 }
            };
            if summaries && l != via {
                let peer = self.links[l as usize].as_ref().expect("live link").dirs[out].to;
                self.link_mut(l).dirs[out].view.insert(p);
                self.control(l, out, self.sc.overheads.have as u64);
                self.strategy.on_have(peer, node, p);
            }
            self.try_send(now, l, out);
        }
    }

    fn down(&mut self, link: u32) {
        let l = self.links[link as usize].take().expect("live link");
        self.free.push(link);
        let rate = self.sc.rate.bytes_per_s();
        let c = self.trace.contacts[l.contact as usize];
        let mut bytes = l.bytes;
        let mut released = Vec::new();
        let mut freed = Vec::new();
        for (d, dir) in l.dirs.iter().enumerate() {
            if let Some((p, start)) = dir.in_flight {
                if self.sc.radio == Radio::SharedEgress {
                    self.tx_busy[dir.from as usize] = false;
                    freed.push(dir.from);
                }
                let partial = ((l.end - start).max(0.0) * rate) as u64;
                bytes[d] += partial;
                self.stats[dir.from as usize].bytes_sent += partial;
                self.stats[dir.to as usize].bytes_recv += partial;
                if self.knowledge != Knowledge::Blind {
                    self.claimed[dir.to as usize].remove(p);
                    released.push(dir.to);
                }
            }
        }
        for n in [c.a, c.b] {
            let v = &mut self.node_links[n as usize];
            if let Some(i) = v.iter().position(|&x| x == link) {
                v.swap_remove(i);
            }
        }
        if bytes[0] + bytes[1] > 0 {
            self.uses.push(ContactUse {
                contact: l.contact,
                usable_s: l.usable_s,
                bytes,
            });
        }
        for n in freed {
            self.serve_next(l.end, n);
        }
        // A released claim may let another peer of that node send the piece.
        for n in released {
            for other in self.node_links[n as usize].clone() {
                let lk = self.links[other as usize].as_ref().expect("live link");
                let into = if lk.dirs[0].to == n { 0 } else { 1 };
                self.try_send(l.end, other, into);
            }
        }
    }
}

/// Runs one strategy on a scenario.
pub fn simulate(
    trace: &Trace,
    sc: &Scenario,
    strategy: &mut dyn Strategy,
    progress: &mut dyn FnMut(f64),
) -> Outcome {
    Sim::new(trace, sc, strategy).run(progress)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::mule_strategy::Mule;
    use crate::oracle::Oracle;
    use crate::strategy::{ClientServer, Epidemic};
    use crate::trace::{Format, Options};

    /// A test scenario: 1 MB/s, 64 KiB pieces, origin 0, carry quota of 8 pieces, seed 42.
    pub(crate) fn scenario(trace: &Trace, bundle: u64, publish_at: f64, fraction: f64) -> Scenario {
        Scenario {
            rate: Rate(1e6),
            bundle,
            piece_size: 64 * 1024,
            origin: 0,
            publish_at,
            audience: Scenario::pick_audience(trace.nodes, 0, fraction, 7),
            carry_quota_pieces: 8,
            fpr: 0.01,
            overheads: Overheads::mule(64 * 1024),
            radio: Radio::PerContact,
            seed: 42,
        }
    }

    fn all_strategies(sc: &Scenario, nodes: u32) -> Vec<Box<dyn Strategy>> {
        vec![
            Box::new(Mule::new(sc, nodes, true)),
            Box::new(Mule::rarest(sc, nodes)),
            Box::new(Epidemic),
            Box::new(ClientServer),
        ]
    }

    fn line_trace() -> Trace {
        // 0 meets 1 for 10 s, then 1 meets 2 for 10 s: a 2 MB bundle (2 s) relays.
        Trace::parse(
            "0,10,0,1\n20,30,1,2\n",
            Format::Csv,
            &Options {
                min_contact: 0.0,
                ..Options::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn bundle_relays_along_a_line() {
        let t = line_trace();
        let sc = scenario(&t, 2_000_000, 0.0, 1.0);
        let out = simulate(&t, &sc, &mut Mule::rarest(&sc, t.nodes), &mut |_| {});
        let c1 = out.nodes[1].complete_at.unwrap();
        let c2 = out.nodes[2].complete_at.unwrap();
        // 31 pieces of 64 KiB (+ a tail) at 1 MB/s: a bit over 2 s after the handshake.
        assert!(c1 > 2.0 && c1 < 2.2, "{c1}");
        assert!(c2 > 22.0 && c2 < 22.2, "{c2}");
        assert_eq!(out.nodes[2].pieces_duplicate, 0);
        assert_eq!(out.nodes[0].pieces_sent, sc.pieces() as u64);
        // Client-server cannot reach node 2, which never meets the origin.
        let cs = simulate(&t, &sc, &mut ClientServer, &mut |_| {});
        assert!(cs.nodes[1].complete_at.is_some());
        assert!(cs.nodes[2].complete_at.is_none());
    }

    #[test]
    fn short_contact_cuts_a_piece_and_counts_its_bytes() {
        let t = Trace::parse(
            "0,0.5,0,1\n",
            Format::Csv,
            &Options {
                min_contact: 0.0,
                ..Options::default()
            },
        )
        .unwrap();
        let sc = scenario(&t, 2_000_000, 0.0, 1.0);
        let out = simulate(&t, &sc, &mut Mule::rarest(&sc, t.nodes), &mut |_| {});
        assert!(out.nodes[1].complete_at.is_none());
        // Half a second at 1 MB/s: everything the origin sent fits 500 kB, all counted.
        let sent = out.nodes[0].bytes_sent;
        assert!(sent > 490_000 && sent <= 500_001, "{sent}");
        assert!(out.nodes[1].pieces_new >= 6 && out.nodes[1].pieces_new <= 7);
    }

    #[test]
    fn epidemic_wastes_duplicates_summaries_do_not() {
        // A triangle meeting repeatedly: everyone gets everything early.
        let t = Trace::parse(
            "0,10,0,1\n20,30,1,2\n40,50,0,2\n60,70,0,1\n80,90,1,2\n",
            Format::Csv,
            &Options::default(),
        )
        .unwrap();
        let sc = scenario(&t, 1_000_000, 0.0, 1.0);
        let epi = simulate(&t, &sc, &mut Epidemic, &mut |_| {});
        let rar = simulate(&t, &sc, &mut Mule::rarest(&sc, t.nodes), &mut |_| {});
        let dups = |o: &Outcome| o.nodes.iter().map(|n| n.pieces_duplicate).sum::<u64>();
        let sent = |o: &Outcome| o.nodes.iter().map(|n| n.bytes_sent).sum::<u64>();
        assert!(dups(&epi) > 0);
        assert_eq!(dups(&rar), 0);
        assert!(
            sent(&rar) * 2 < sent(&epi),
            "{} vs {}",
            sent(&rar),
            sent(&epi)
        );
    }

    #[test]
    fn carry_quota_limits_non_audience_nodes() {
        let t = line_trace();
        let mut sc = scenario(&t, 2_000_000, 0.0, 0.0);
        sc.audience[2] = true; // 1 is a carrier with a quota of 8 pieces
        let out = simulate(&t, &sc, &mut Mule::rarest(&sc, t.nodes), &mut |_| {});
        assert_eq!(out.nodes[1].pieces_new, 8);
        assert_eq!(out.nodes[2].pieces_new, 8);
        assert!(out.nodes[2].complete_at.is_none());
        // Epidemic pushes everything anyway: the excess is rejected as waste.
        let out = simulate(&t, &sc, &mut Epidemic, &mut |_| {});
        assert_eq!(out.nodes[1].pieces_new, 8);
        assert!(out.nodes[1].pieces_rejected > 0);
    }

    #[test]
    fn shared_egress_splits_the_origin_between_simultaneous_peers() {
        // The origin meets 1 and 2 at the same time: per contact, both finish after
        // ~2 s; with one shared transmitter, both need ~4 s.
        let t = Trace::parse("0,100,0,1\n0,100,0,2\n", Format::Csv, &Options::default()).unwrap();
        let mut sc = scenario(&t, 2_000_000, 0.0, 1.0);
        let out = simulate(&t, &sc, &mut Mule::rarest(&sc, t.nodes), &mut |_| {});
        let per: Vec<f64> = out.nodes[1..]
            .iter()
            .map(|n| n.complete_at.unwrap())
            .collect();
        assert!(per.iter().all(|&c| c > 2.0 && c < 2.3), "{per:?}");
        sc.radio = Radio::SharedEgress;
        let out = simulate(&t, &sc, &mut Mule::rarest(&sc, t.nodes), &mut |_| {});
        let shared: Vec<f64> = out.nodes[1..]
            .iter()
            .map(|n| n.complete_at.unwrap())
            .collect();
        // Node 1 and 2 pull from each other too, so the second finishes a bit before 4 s.
        assert!(shared.iter().all(|&c| c > 2.3 && c < 4.5), "{shared:?}");
    }

    #[test]
    fn prediction_keeps_copies_from_carriers_that_never_meet_the_audience() {
        // Before publishing (t < 1000), carrier 3 meets audience node 2 repeatedly;
        // carrier 1 never does. After publishing, the origin meets 1, then 3, then 3
        // meets 2. PRoPHET (mule) gives 1 nothing, rarest-first gives it a copy.
        let t = Trace::parse(
            "0,20,2,3\n400,420,2,3\n800,820,2,3\n1000,1100,0,1\n1200,1300,0,3\n1400,1500,2,3\n",
            Format::Csv,
            &Options::default(),
        )
        .unwrap();
        let mut sc = scenario(&t, 1_000_000, 1000.0, 0.0);
        sc.audience = vec![false, false, true, false];
        sc.carry_quota_pieces = sc.pieces();
        let mule = simulate(&t, &sc, &mut Mule::new(&sc, t.nodes, true), &mut |_| {});
        let rarest = simulate(&t, &sc, &mut Mule::rarest(&sc, t.nodes), &mut |_| {});
        let strict = simulate(&t, &sc, &mut Mule::strict(&sc, t.nodes), &mut |_| {});
        assert_eq!(mule.nodes[1].pieces_new, 0);
        assert_eq!(strict.nodes[1].pieces_new, 0);
        assert_eq!(rarest.nodes[1].pieces_new, sc.pieces() as u64);
        for o in [&mule, &rarest] {
            assert_eq!(o.nodes[3].pieces_new, sc.pieces() as u64, "{}", o.strategy);
            assert!(o.nodes[2].complete_at.is_some(), "{}", o.strategy);
        }
    }

    #[test]
    fn same_seed_same_outcome() {
        let t = crate::synth::synthetic(30, 0.5, 3);
        let sc = scenario(&t, 2_000_000, t.duration() * 0.25, 0.5);
        for (mut a, mut b) in all_strategies(&sc, t.nodes)
            .into_iter()
            .zip(all_strategies(&sc, t.nodes))
        {
            let x = simulate(&t, &sc, a.as_mut(), &mut |_| {});
            let y = simulate(&t, &sc, b.as_mut(), &mut |_| {});
            assert_eq!(
                serde_json::to_string(&x).unwrap(),
                serde_json::to_string(&y).unwrap()
            );
        }
    }

    fn check_oracle(t: &Trace, sc: &Scenario) {
        let o = Oracle::compute(t, sc.origin, sc.publish_at, sc.bundle, sc.rate);
        for mut s in all_strategies(sc, t.nodes) {
            let out = simulate(t, sc, s.as_mut(), &mut |_| {});
            let mut completed = 0;
            for (v, st) in out.nodes.iter().enumerate() {
                if let Some(c) = st.complete_at {
                    completed += 1;
                    assert!(
                        c >= o.complete[v],
                        "{}: node {v} completed at {c} before the oracle bound {}",
                        out.strategy,
                        o.complete[v]
                    );
                }
            }
            assert!(completed > 1, "{}: nothing spread", out.strategy);
        }
    }

    #[test]
    fn oracle_is_never_beaten_on_synthetic_traces() {
        for seed in 0..4 {
            let t = crate::synth::synthetic(25, 0.3, seed);
            for (bundle, frac, radio) in [
                (2_000_000, 1.0, Radio::PerContact),
                (10_000_000, 0.3, Radio::PerContact),
                (10_000_000, 1.0, Radio::SharedEgress),
            ] {
                let mut sc = scenario(&t, bundle, t.duration() * 0.25, frac);
                sc.carry_quota_pieces = sc.pieces();
                sc.radio = radio;
                check_oracle(&t, &sc);
            }
        }
    }

    #[test]
    fn oracle_is_never_beaten_on_intel() {
        let Some(dir) = crate::trace::shared_traces_or_skip("oracle_is_never_beaten_on_intel")
        else {
            return;
        };
        let t = Trace::load(&dir.join("intel.csv"), None, &Options::default()).unwrap();
        for bundle in [2_000_000, 20_000_000] {
            let sc = scenario(&t, bundle, t.duration() * 0.25, 1.0);
            check_oracle(&t, &sc);
        }
    }
}
