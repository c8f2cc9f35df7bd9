//! Which session is fetching which piece, across all sessions of a node.
//!
//! When several neighbours offer the same bundle, every session requests pieces only after
//! claiming them here, so no piece is requested twice; when a session ends (or its peer
//! refuses a request), its claims are released and other sessions request those pieces at
//! their next planning step. The driver owns one `PieceClaims` per node and lends it to
//! [`Session::plan_requests`](crate::session::Session::plan_requests).
//!
//! A claim is not held for ever by a peer that does not answer: each owner publishes a
//! *patience deadline* (from its peer's measured rate or round-trip time, see the session),
//! after which another session may take its claims over ([`PieceClaims::try_claim_at`]).
//! A neighbour that advertises every piece and sends none then holds up a transfer for that
//! deadline, not for the ten-second stall timer.

use std::collections::{BTreeSet, HashMap};

use mule_proto::PieceRef;

/// Identifies a session as the owner of claims (the driver assigns unique values).
pub type ClaimOwner = u64;

/// The claims of all sessions of one node. Size is bounded by the sessions' request windows.
#[derive(Debug, Default, Clone)]
pub struct PieceClaims {
    by_piece: HashMap<PieceRef, ClaimOwner>,
    by_owner: HashMap<ClaimOwner, BTreeSet<PieceRef>>,
    /// Per owner with claims outstanding: from this time (ms) on, others may take them over.
    deadlines: HashMap<ClaimOwner, u64>,
}

impl PieceClaims {
    /// No claims.
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims `piece` for `owner`; true if `owner` now holds the claim (also when it
    /// already did), false if another owner holds it.
    pub fn try_claim(&mut self, piece: PieceRef, owner: ClaimOwner) -> bool {
        match self.by_piece.get(&piece) {
            Some(o) => *o == owner,
            None => {
                self.by_piece.insert(piece, owner);
                self.by_owner.entry(owner).or_default().insert(piece);
                true
            }
        }
    }

    /// Like [`try_claim`](Self::try_claim) at time `now`, but a claim whose owner is past its
    /// patience deadline is taken over (true), unless `owner` is itself past its own.
    pub fn try_claim_at(&mut self, piece: PieceRef, owner: ClaimOwner, now: u64) -> bool {
        let overdue = |o: &ClaimOwner| self.deadlines.get(o).is_some_and(|d| now >= *d);
        match self.by_piece.get(&piece).copied() {
            Some(o) if o == owner => true,
            Some(o) if overdue(&o) && !overdue(&owner) => {
                self.release(piece, o);
                self.try_claim(piece, owner)
            }
            Some(_) => false,
            None => self.try_claim(piece, owner),
        }
    }

    /// Sets (or with `None` clears) the time from which other owners may take `owner`'s
    /// claims over.
    pub fn set_deadline(&mut self, owner: ClaimOwner, deadline: Option<u64>) {
        match deadline {
            Some(d) => {
                self.deadlines.insert(owner, d);
            }
            None => {
                self.deadlines.remove(&owner);
            }
        }
    }

    /// Who holds the claim on `piece`.
    pub fn owner(&self, piece: PieceRef) -> Option<ClaimOwner> {
        self.by_piece.get(&piece).copied()
    }

    /// Releases `owner`'s claim on `piece` (no effect if someone else holds it).
    pub fn release(&mut self, piece: PieceRef, owner: ClaimOwner) {
        if self.by_piece.get(&piece) == Some(&owner) {
            self.by_piece.remove(&piece);
            if let Some(set) = self.by_owner.get_mut(&owner) {
                set.remove(&piece);
                if set.is_empty() {
                    self.by_owner.remove(&owner);
                }
            }
        }
    }

    /// Forgets the claim on a piece that is now stored, whoever held it.
    pub fn complete(&mut self, piece: PieceRef) {
        if let Some(owner) = self.by_piece.get(&piece).copied() {
            self.release(piece, owner);
        }
    }

    /// Releases everything `owner` held (its session ended) and returns those pieces, sorted.
    pub fn release_owner(&mut self, owner: ClaimOwner) -> Vec<PieceRef> {
        self.deadlines.remove(&owner);
        let set = self.by_owner.remove(&owner).unwrap_or_default();
        for p in &set {
            self.by_piece.remove(p);
        }
        set.into_iter().collect()
    }

    /// Number of claimed pieces.
    pub fn len(&self) -> usize {
        self.by_piece.len()
    }

    /// Whether nothing is claimed.
    pub fn is_empty(&self) -> bool {
        self.by_piece.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mule_proto::BundleId;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn claims_stay_consistent(ops in proptest::collection::vec((0u8..6, 0u32..16, 0u64..4), 0..200)) {
            let mut c = PieceClaims::new();
            for (op, i, owner) in ops {
                match op {
                    0 => {
                        let before = c.owner(p(i));
                        let ok = c.try_claim(p(i), owner);
                        prop_assert_eq!(ok, before.is_none() || before == Some(owner));
                    }
                    1 => c.release(p(i), owner),
                    2 => c.complete(p(i)),
                    4 => c.set_deadline(owner, (i % 2 == 0).then_some(u64::from(i))),
                    5 => {
                        let ok = c.try_claim_at(p(i), owner, 8);
                        prop_assert_eq!(ok, c.owner(p(i)) == Some(owner));
                    }
                    _ => {
                        let released = c.release_owner(owner);
                        prop_assert!(released.iter().all(|q| c.owner(*q).is_none()));
                    }
                }
                // Both indexes agree; every piece has at most one owner.
                let total: usize = c.by_owner.values().map(|s| s.len()).sum();
                prop_assert_eq!(total, c.by_piece.len());
                for (o, set) in &c.by_owner {
                    prop_assert!(!set.is_empty());
                    for q in set {
                        prop_assert_eq!(c.by_piece.get(q), Some(o));
                    }
                }
            }
        }
    }

    fn p(i: u32) -> PieceRef {
        PieceRef {
            bundle: BundleId([1; 32]),
            index: i,
        }
    }

    #[test]
    fn one_owner_per_piece_and_release_on_session_end() {
        let mut c = PieceClaims::new();
        assert!(c.try_claim(p(0), 1) && c.try_claim(p(0), 1));
        assert!(!c.try_claim(p(0), 2));
        assert!(c.try_claim(p(1), 1) && c.try_claim(p(2), 2));
        c.release(p(2), 1); // not its claim: no effect
        assert_eq!(c.owner(p(2)), Some(2));
        assert_eq!(c.release_owner(1), vec![p(0), p(1)]);
        assert!(c.try_claim(p(0), 2));
        c.complete(p(0));
        assert_eq!(c.owner(p(0)), None);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn an_overdue_owner_loses_its_claims_to_a_timely_one() {
        let mut c = PieceClaims::new();
        assert!(c.try_claim(p(0), 1));
        c.set_deadline(1, Some(100));
        assert!(!c.try_claim_at(p(0), 2, 99), "before the deadline");
        assert!(!c.try_claim(p(0), 2), "try_claim never takes over");
        c.set_deadline(2, Some(50));
        assert!(
            !c.try_claim_at(p(0), 2, 100),
            "an overdue owner takes nothing"
        );
        c.set_deadline(2, None);
        assert!(c.try_claim_at(p(0), 2, 100));
        assert_eq!(c.owner(p(0)), Some(2));
        assert_eq!(c.release_owner(1), Vec::<PieceRef>::new());
        assert_eq!(c.release_owner(2), vec![p(0)]);
    }
}
