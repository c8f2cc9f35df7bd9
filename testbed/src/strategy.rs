//! Dissemination strategies: what a sender puts on the air next in a contact.
//!
//! The simulator ([`crate::sim`]) owns the contacts, the pipes and the bookkeeping; a
//! [`Strategy`] only answers "which piece should move from `from` to `to` now?" given a
//! [`View`] of what the choosing node knows, which depends on the strategy's
//! [`Knowledge`] (push without summaries, or pull from summaries as Mule's session
//! does).
//!
//! Baselines implemented here: [`ClientServer`] and [`Epidemic`]. Mule and the
//! rarest-first baseline (Mule's own scheduler with the social prediction input
//! removed) live in [`crate::mule_strategy`], which calls the daemon's code.

use rand::Rng;
use rand::rngs::SmallRng;

use crate::pieces::PieceSet;
use crate::trace::NodeIx;

/// How the node choosing the next piece learns what the other end holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Knowledge {
    /// Push without summaries, announcements or claims (naive epidemic): the sender
    /// knows only what it sent on this contact.
    Blind,
    /// Pull, as Mule's session does: the *receiver* chooses, from the sender's summary
    /// (a salted Bloom filter over partly held bundles, false positives included, plus
    /// the list of complete bundles) and the sender's `have` announcements since; a
    /// request for a piece the sender turns out not to hold is refused and remembered.
    /// The receiver's claims stop two of its sessions fetching the same piece.
    Summaries,
    /// Pull with an exact request bitmap (client–server).
    Exact,
}

/// What the choosing node knows when the next piece for one contact direction
/// (`from` → `to`) is chosen.
#[derive(Debug)]
pub struct View<'a> {
    /// Virtual time, seconds.
    pub now: f64,
    /// The sending end.
    pub from: NodeIx,
    /// The receiving end.
    pub to: NodeIx,
    /// True if the sender is the bundle's origin.
    pub from_is_origin: bool,
    /// Pieces the chooser believes the sender holds (exact for push strategies).
    pub source_has: &'a PieceSet,
    /// Pieces the chooser believes the receiver holds or will get elsewhere: for pull,
    /// the receiver's pieces plus its claims on other contacts; for blind push, the
    /// pieces already sent on this contact.
    pub dest_has: &'a PieceSet,
    /// True if the receiver subscribes to the bundle.
    pub dest_in_audience: bool,
    /// True if the sender subscribes to the bundle.
    pub source_in_audience: bool,
    /// Bytes of carry quota the receiver has left (`u64::MAX` for audience members).
    pub dest_room_bytes: u64,
}

/// A summary as the receiver sees it: wire size and the pieces it appears to hold.
#[derive(Debug)]
pub struct SummaryView {
    /// Bytes of the summary frame.
    pub bytes: u64,
    /// Pieces the filter (or the complete list) says the node holds.
    pub appears_to_hold: PieceSet,
}

/// A dissemination strategy (see the module docs).
pub trait Strategy {
    /// Short name used in reports (`mule`, `rarest`, `epidemic`, `client-server`).
    fn name(&self) -> &str;

    /// How the choosing node learns what the other end holds.
    fn knowledge(&self) -> Knowledge;

    /// Called at the start of every contact of the trace, also before the bundle is
    /// published (prediction learns from the whole history).
    fn on_encounter(&mut self, _now: f64, _a: NodeIx, _b: NodeIx) {}

    /// For [`Knowledge::Summaries`]: the summary `of` sends at contact start, given what
    /// it holds. `observer` is the receiving node (it may record rarity from it).
    fn summary(
        &mut self,
        _now: f64,
        _of: NodeIx,
        _observer: NodeIx,
        holds: &PieceSet,
        _rng: &mut SmallRng,
    ) -> SummaryView {
        SummaryView {
            bytes: 0,
            appears_to_hold: holds.clone(),
        }
    }

    /// For [`Knowledge::Summaries`]: `observer` heard `of` announce piece `piece`.
    fn on_have(&mut self, _observer: NodeIx, _of: NodeIx, _piece: u32) {}

    /// The next piece to move from `view.from` to `view.to`, or `None` to stay idle
    /// (the simulator asks again when either end's holdings or claims change).
    fn next_piece(&mut self, view: &View<'_>, rng: &mut SmallRng) -> Option<u32>;
}

/// Pieces the sender (apparently) holds and the receiver lacks.
pub fn candidates<'a>(view: &'a View<'a>) -> impl Iterator<Item = u32> + 'a {
    view.source_has.iter_minus2(view.dest_has, view.dest_has)
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
        if !view.from_is_origin || !view.dest_in_audience {
            return None;
        }
        candidates(view).next()
    }
}

/// Naive epidemic: every node forwards everything it holds to everyone it meets, in
/// random order (a random start, then cyclic), without summaries: pieces the peer
/// already holds are sent anyway and wasted as duplicates; each piece is sent at most
/// once per contact direction.
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
        let start = rng.random_range(0..view.source_has.len().max(1));
        view.source_has
            .first_minus2_from(view.dest_has, view.dest_has, start)
    }
}
