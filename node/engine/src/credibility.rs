//! How far a peer's claims have held: node-wide bookkeeping, pure, bounded.
//!
//! A peer advertises what it holds (summary filter, `complete`, Haves) and how well it
//! reaches other nodes (PRoPHET predictabilities, used for carry decisions). Only the first
//! kind can be checked: a request for an advertised piece is either answered (the claim
//! held) or ignored (taken over or stalled without an answer; see the session). A peer
//! whose holdings claims did not hold is believed less about the rest: its advertised
//! predictabilities are multiplied by its [`CredibilityBook::weight`], so a neighbour that
//! lied once does not attract other nodes' bundles with made-up delivery chances.
//!
//! The weight is `(held + 1) / (held + failed + 1)`: 1 for a peer without record (an honest
//! stranger is believed), near 1 for a peer whose requests are answered (an occasional
//! filter false positive costs little), small for one that ignored most of them.
//! At most `max_peers` records are kept; the least recently touched goes first.

use std::collections::HashMap;

use mule_proto::NodeId;

#[derive(Debug, Clone, Copy, Default)]
struct Record {
    held: u64,
    failed: u64,
    touched: u64,
}

/// The claims record of every peer met recently.
#[derive(Debug, Clone)]
pub struct CredibilityBook {
    max_peers: usize,
    peers: HashMap<NodeId, Record>,
}

impl Default for CredibilityBook {
    fn default() -> Self {
        CredibilityBook::new(4096)
    }
}

impl CredibilityBook {
    /// An empty book remembering at most `max_peers` peers (at least 1).
    pub fn new(max_peers: usize) -> Self {
        CredibilityBook {
            max_peers: max_peers.max(1),
            peers: HashMap::new(),
        }
    }

    /// A session with `node` ended: `held` of its advertised pieces we requested were
    /// answered, `failed` went unanswered.
    pub fn record(&mut self, node: NodeId, held: u64, failed: u64, now: u64) {
        if held == 0 && failed == 0 {
            return;
        }
        if !self.peers.contains_key(&node) && self.peers.len() >= self.max_peers {
            let victim = self
                .peers
                .iter()
                .min_by_key(|(id, r)| (r.touched, **id))
                .map(|(id, _)| *id);
            if let Some(v) = victim {
                self.peers.remove(&v);
            }
        }
        let r = self.peers.entry(node).or_default();
        r.held = r.held.saturating_add(held);
        r.failed = r.failed.saturating_add(failed);
        r.touched = now;
    }

    /// How much to believe `node`'s unverifiable claims, in (0, 1].
    pub fn weight(&self, node: &NodeId) -> f32 {
        match self.peers.get(node) {
            None => 1.0,
            Some(r) => ((r.held + 1) as f64 / (r.held + r.failed + 1) as f64) as f32,
        }
    }

    /// Peers believed less than fully, with their weight (for a session's [`LocalView`]).
    ///
    /// [`LocalView`]: crate::session::LocalView
    pub fn discounted(&self) -> HashMap<NodeId, f32> {
        self.peers
            .keys()
            .map(|n| (*n, self.weight(n)))
            .filter(|(_, w)| *w < 1.0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liars_lose_weight_honest_peers_keep_it_and_the_book_is_bounded() {
        let mut b = CredibilityBook::new(2);
        let (liar, honest, other) = (NodeId([1; 32]), NodeId([2; 32]), NodeId([3; 32]));
        assert_eq!(b.weight(&liar), 1.0);
        b.record(liar, 0, 16, 1);
        b.record(honest, 200, 2, 2);
        assert!(b.weight(&liar) < 0.1);
        assert!(b.weight(&honest) > 0.98);
        assert_eq!(b.discounted().len(), 2);
        b.record(other, 0, 1, 3);
        assert_eq!(b.peers.len(), 2);
        assert_eq!(b.weight(&liar), 1.0, "least recently touched forgotten");
    }
}
