//! Dissemination strategies: what a sender puts on the air next in a contact.
//!
//! The simulator ([`crate::sim`]) owns the contacts, the pipes and the bookkeeping; a
//! [`Strategy`] only answers "which piece should `from` send to `to` now?" given a
//! [`View`] of what `from` knows. What `from` knows depends on the strategy's
//! [`Knowledge`]: with summaries it learnt the peer's holdings from a Bloom summary at
//! the start of the contact (false positives included) and from the peer's `have`
//! announcements since, and it sees the peer's claims (pieces already in flight to the
//! peer from someone else); without summaries it knows only what it sent itself.
//!
//! Baselines implemented here: [`ClientServer`], [`Epidemic`], [`RarestFirst`]. The
//! Mule strategy lives in [`crate::mule_strategy`] because it wraps the daemon's own
//! scheduler and prediction code.

use rand::Rng;
use rand::rngs::SmallRng;

use crate::pieces::PieceSet;
use crate::trace::NodeIx;

/// How a sender learns what its peer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Knowledge {
    /// Nothing: no summaries, no announcements, no claims (naive epidemic).
    Blind,
    /// A Bloom summary of the peer's pieces at contact start (with false positives),
    /// then the peer's `have` announcements; claims of pieces in flight to the peer.
    Summaries,
    /// The peer sends an exact request bitmap at contact start (client–server pull).
    Exact,
}

/// What a sender knows when choosing its next piece for one contact direction.
#[derive(Debug)]
pub struct View<'a> {
    /// Virtual time, seconds.
    pub now: f64,
    /// The sender.
    pub from: NodeIx,
    /// The receiver.
    pub to: NodeIx,
    /// True if the sender is the bundle's origin.
    pub from_is_origin: bool,
    /// Pieces the sender holds.
    pub have: &'a PieceSet,
    /// Pieces the sender believes the receiver holds (or, if [`Knowledge::Blind`],
    /// pieces it already sent on this contact).
    pub peer_known: &'a PieceSet,
    /// Pieces in flight to the receiver on its other contacts (empty if blind).
    pub peer_claimed: &'a PieceSet,
    /// True if the receiver subscribes to the bundle.
    pub peer_in_audience: bool,
    /// True if the sender subscribes to the bundle.
    pub self_in_audience: bool,
    /// Pieces the receiver will still accept (`u32::MAX` for audience members; a
    /// non-audience carrier announces its remaining carry quota in its hello).
    pub peer_room: u32,
    /// Per piece: how many of {sender, sender's current peers as the sender knows
    /// them} hold it. Empty unless the strategy has [`Knowledge::Summaries`].
    pub availability: &'a [u32],
}

/// A dissemination strategy (see the module docs).
pub trait Strategy {
    /// Short name used in reports (`mule`, `rarest`, `epidemic`, `client-server`).
    fn name(&self) -> &str;

    /// How the sender learns what its peer holds.
    fn knowledge(&self) -> Knowledge;

    /// Called at the start of every contact of the trace, also before the bundle is
    /// published (prediction learns from the whole history).
    fn on_encounter(&mut self, _now: f64, _a: NodeIx, _b: NodeIx) {}

    /// The next piece `view.from` should send to `view.to`, or `None` to stay idle
    /// (the simulator asks again when the sender gains a piece or a claim is released).
    fn next_piece(&mut self, view: &View<'_>, rng: &mut SmallRng) -> Option<u32>;
}

/// Candidates a summary-based sender may offer: held, not known to be held by the
/// peer, not in flight to the peer elsewhere.
pub fn candidates<'a>(view: &'a View<'a>) -> impl Iterator<Item = u32> + 'a {
    view.have.iter_minus2(view.peer_known, view.peer_claimed)
}

/// The candidate with the lowest availability; ties broken uniformly at random
/// (reservoir sampling, so one pass and no allocation).
pub fn rarest_candidate(view: &View<'_>, rng: &mut SmallRng) -> Option<u32> {
    let mut best: Option<u32> = None;
    let mut best_av = u32::MAX;
    let mut ties = 0u32;
    for p in candidates(view) {
        let av = view.availability.get(p as usize).copied().unwrap_or(0);
        if av < best_av {
            best = Some(p);
            best_av = av;
            ties = 1;
        } else if av == best_av {
            ties += 1;
            if rng.random_range(0..ties) == 0 {
                best = Some(p);
            }
        }
    }
    best
}

/// Client–server: only the origin sends, only to audience members, which pull
/// exactly the pieces they miss in index order (a device downloading from a server).
#[derive(Debug, Default)]
pub struct ClientServer;

impl Strategy for ClientServer {
    fn name(&self) -> &str {
        "client-server"
    }
    fn knowledge(&self) -> Knowledge {
        Knowledge::Exact
    }
    fn next_piece(&mut self, view: &View<'_>, _rng: &mut SmallRng) -> Option<u32> {
        if !view.from_is_origin || !view.peer_in_audience {
            return None;
        }
        candidates(view).next()
    }
}

/// Naive epidemic: every node forwards everything it holds to everyone it meets, in
/// random order (a random start, then cyclic), without summaries: pieces the peer already holds are sent anyway and
/// wasted as duplicates; each piece is sent at most once per contact direction.
#[derive(Debug, Default)]
pub struct Epidemic;

impl Strategy for Epidemic {
    fn name(&self) -> &str {
        "epidemic"
    }
    fn knowledge(&self) -> Knowledge {
        Knowledge::Blind
    }
    fn next_piece(&mut self, view: &View<'_>, rng: &mut SmallRng) -> Option<u32> {
        // A random starting point, then the next held piece not yet sent on this
        // contact (cyclically): random order at a cost independent of the piece count.
        let start = rng.random_range(0..view.have.len().max(1));
        view.have
            .first_minus2_from(view.peer_known, view.peer_claimed, start)
    }
}

/// Rarest-first with summaries and receiver claims, no social prediction: audience
/// members get the rarest piece they lack; non-audience carriers get pieces while
/// their announced carry quota has room.
#[derive(Debug, Default)]
pub struct RarestFirst;

impl Strategy for RarestFirst {
    fn name(&self) -> &str {
        "rarest"
    }
    fn knowledge(&self) -> Knowledge {
        Knowledge::Summaries
    }
    fn next_piece(&mut self, view: &View<'_>, rng: &mut SmallRng) -> Option<u32> {
        if view.peer_room == 0 {
            return None;
        }
        rarest_candidate(view, rng)
    }
}
