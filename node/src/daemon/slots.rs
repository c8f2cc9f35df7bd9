//! Slots for authenticated sessions (`session.max_sessions`), so that throwaway keys cannot
//! hold them all.
//!
//! Anyone can mint a key and complete the handshake, so an authenticated session proves
//! only that its peer holds *a* key. A peer is a **known neighbour** when its key is one
//! this node has reason to trust with a slot: discovery reports it now, it dialled from or
//! was dialled at a configured `session.peers` address, it has a discovered contact in the
//! history, or it held a clean session that exchanged something useful (a piece or a
//! manifest that was stored or taken) since the daemon started. Every other key is a
//! **stranger**. Sessions this node dialled are always known (it dials only discovered
//! neighbours and configured peers).
//!
//! The rules, all applied when a session authenticates ([`decide`]):
//! - strangers hold at most [`stranger_share`] of `max_sessions` (half, at least one), and
//!   at most [`STRANGER_PER_SOURCE`] from one source (an IPv4 address, an IPv6 /64, as in
//!   [`super::admission`]): minting keys on one host buys a few slots, not all of them.
//! - when the pool is full, a known neighbour's session displaces the stranger session that
//!   has gone longest without anything useful; known neighbours' sessions are never
//!   displaced by anyone's.
//! - a stranger's session that has exchanged nothing useful for [`STRANGER_IDLE`] is
//!   reclaimed when another stranger needs its slot (of the pool, the share or its
//!   source); a stranger never displaces a stranger that was useful more recently.
//! - a displaced session is closed with `Bye` code `Busy` and a detail that says why, and
//!   the daemon logs it.
//!
//! "Useful" is counted by the session driver: a piece or manifest received and stored, or
//! a piece sent. Keep-alives, summaries and refused frames are not useful, so an idle or
//! trickling stranger is the first to go.
//!
//! The policy is plain data with time passed in; the registry (`conn.rs`) holds the
//! sessions and acts on the decision.

use std::time::{Duration, Instant};

use super::admission::Source;

/// Most sessions from one source that strangers may hold at once.
pub const STRANGER_PER_SOURCE: usize = 2;
/// A stranger's session with nothing useful for this long gives its slot to another
/// stranger that needs one.
pub const STRANGER_IDLE: Duration = Duration::from_secs(30);

/// The share of `max` sessions strangers may hold: half, and at least one.
pub fn stranger_share(max: usize) -> usize {
    (max / 2).max(1)
}

/// A held session, as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Held<K> {
    /// Which session (the registry's key).
    pub key: K,
    /// Where its connection came from (`None`: not an IP transport).
    pub source: Option<Source>,
    /// Whether its peer is a known neighbour.
    pub known: bool,
    /// When it last exchanged something useful (or authenticated, if never).
    pub last_useful: Instant,
}

/// A session asking for a slot.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// Where its connection came from (`None`: not an IP transport).
    pub source: Option<Source>,
    /// Whether its peer is a known neighbour.
    pub known: bool,
}

/// What to do with a session that asks for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<K> {
    /// Take a free slot.
    Admit,
    /// Take the slot of session `key`, which must close with `why`.
    Displace {
        /// The session to close.
        key: K,
        /// The `Bye` detail and log reason.
        why: &'static str,
    },
    /// No slot: close the new session with this reason.
    Refuse(&'static str),
}

/// Why a displaced session closed: a known neighbour needed the slot.
pub const DISPLACED_BY_NEIGHBOUR: &str = "session slot given to a known neighbour";
/// Why a displaced session closed: it was idle and another stranger needed the slot.
pub const RECLAIMED_IDLE: &str = "idle stranger session reclaimed";
/// Why a stranger was refused: strangers hold their share of the sessions.
pub const STRANGERS_FULL: &str = "session slots for unknown peers are full";
/// Why a stranger was refused: its source holds its share.
pub const SOURCE_FULL: &str = "too many sessions from this address";
/// Why a session was refused: every slot is taken by sessions that may not be displaced.
pub const LIMIT_REACHED: &str = "session limit reached";

/// Decides whether `c` gets one of `max` slots, given the sessions `held` now.
pub fn decide<K: Copy>(held: &[Held<K>], max: usize, c: Candidate, now: Instant) -> Decision<K> {
    let least_useful = |ok: &dyn Fn(&Held<K>) -> bool| {
        held.iter()
            .filter(|h| !h.known && ok(h))
            .min_by_key(|h| h.last_useful)
            .map(|h| h.key)
    };
    let idle = |h: &Held<K>| now.saturating_duration_since(h.last_useful) >= STRANGER_IDLE;
    if c.known {
        if held.len() < max {
            return Decision::Admit;
        }
        return match least_useful(&|_| true) {
            Some(key) => Decision::Displace {
                key,
                why: DISPLACED_BY_NEIGHBOUR,
            },
            None => Decision::Refuse(LIMIT_REACHED),
        };
    }
    // A stranger: the tightest limit it hits decides which idle stranger may make room.
    let strangers = held.iter().filter(|h| !h.known).count();
    let same_source = |h: &Held<K>| c.source.is_some() && h.source == c.source;
    let from_source = held.iter().filter(|h| !h.known && same_source(h)).count();
    // `only_source`: only the source's own sessions may make room.
    let (only_source, why) = if from_source >= STRANGER_PER_SOURCE {
        (true, SOURCE_FULL)
    } else if strangers >= stranger_share(max) {
        (false, STRANGERS_FULL)
    } else if held.len() >= max {
        (false, LIMIT_REACHED)
    } else {
        return Decision::Admit;
    };
    match least_useful(&|h| (!only_source || same_source(h)) && idle(h)) {
        Some(key) => Decision::Displace {
            key,
            why: RECLAIMED_IDLE,
        },
        None => Decision::Refuse(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn src(last: u8) -> Option<Source> {
        Some(Source::of(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))))
    }

    fn held(key: u32, source: u8, known: bool, last_useful: Instant) -> Held<u32> {
        Held {
            key,
            source: src(source),
            known,
            last_useful,
        }
    }

    fn stranger(source: u8) -> Candidate {
        Candidate {
            source: src(source),
            known: false,
        }
    }

    fn neighbour(source: u8) -> Candidate {
        Candidate {
            source: src(source),
            known: true,
        }
    }

    /// Admits `c` into `pool` if the policy says so (applying a displacement).
    fn offer(
        pool: &mut Vec<Held<u32>>,
        max: usize,
        c: Candidate,
        key: u32,
        now: Instant,
    ) -> Decision<u32> {
        let d = decide(pool, max, c, now);
        match d {
            Decision::Admit => {}
            Decision::Displace { key: k, .. } => pool.retain(|h| h.key != k),
            Decision::Refuse(_) => return d,
        }
        pool.push(Held {
            key,
            source: c.source,
            known: c.known,
            last_useful: now,
        });
        d
    }

    #[test]
    fn strangers_get_at_most_their_share() {
        let t0 = Instant::now();
        let mut pool = Vec::new();
        for i in 0..8u32 {
            offer(&mut pool, 8, stranger(i as u8), i, t0);
        }
        assert_eq!(pool.len(), stranger_share(8));
        assert_eq!(stranger_share(8), 4);
        assert_eq!(stranger_share(1), 1);
        assert_eq!(
            decide(&pool, 8, stranger(99), t0),
            Decision::Refuse(STRANGERS_FULL)
        );
        // Known neighbours fill the rest.
        for i in 0..4u32 {
            assert_eq!(
                offer(&mut pool, 8, neighbour(200), 100 + i, t0),
                Decision::Admit
            );
        }
        assert_eq!(pool.len(), 8);
    }

    #[test]
    fn one_source_gets_a_few_stranger_slots() {
        let t0 = Instant::now();
        let mut pool = Vec::new();
        for i in 0..10u32 {
            offer(&mut pool, 16, stranger(1), i, t0);
        }
        assert_eq!(pool.len(), STRANGER_PER_SOURCE);
        assert_eq!(
            decide(&pool, 16, stranger(1), t0),
            Decision::Refuse(SOURCE_FULL)
        );
        assert_eq!(decide(&pool, 16, stranger(2), t0), Decision::Admit);
    }

    #[test]
    fn a_neighbour_displaces_the_least_useful_stranger_when_full() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let pool = vec![
            held(1, 1, false, t0 + 3 * s),
            held(2, 2, false, t0 + s),
            held(3, 3, true, t0),
            held(4, 4, false, t0 + 2 * s),
        ];
        assert_eq!(
            decide(&pool, 4, neighbour(9), t0 + 4 * s),
            Decision::Displace {
                key: 2,
                why: DISPLACED_BY_NEIGHBOUR
            }
        );
    }

    #[test]
    fn neighbours_are_never_displaced() {
        let t0 = Instant::now();
        let late = t0 + 10 * STRANGER_IDLE;
        let pool: Vec<_> = (0..4).map(|i| held(i, i as u8, true, t0)).collect();
        assert_eq!(
            decide(&pool, 4, stranger(9), late),
            Decision::Refuse(LIMIT_REACHED)
        );
        assert_eq!(
            decide(&pool, 4, neighbour(9), late),
            Decision::Refuse(LIMIT_REACHED)
        );
    }

    #[test]
    fn an_idle_stranger_gives_its_slot_to_another_stranger() {
        let t0 = Instant::now();
        let mut pool = vec![held(1, 1, false, t0), held(2, 2, false, t0)];
        // Share of 4 is 2 and both are busy (just useful): refused.
        assert_eq!(
            decide(&pool, 4, stranger(3), t0 + Duration::from_secs(1)),
            Decision::Refuse(STRANGERS_FULL)
        );
        // One was useful lately, the other not for STRANGER_IDLE: that one goes.
        pool[1].last_useful = t0 + STRANGER_IDLE;
        assert_eq!(
            decide(&pool, 4, stranger(3), t0 + STRANGER_IDLE),
            Decision::Displace {
                key: 1,
                why: RECLAIMED_IDLE
            }
        );
    }

    #[test]
    fn a_source_over_its_share_reclaims_only_its_own_idle_sessions() {
        let t0 = Instant::now();
        let late = t0 + STRANGER_IDLE;
        let pool = vec![
            held(1, 7, false, t0),
            held(2, 1, false, t0 + Duration::from_secs(1)),
            held(3, 1, false, t0 + Duration::from_secs(2)),
        ];
        assert_eq!(
            decide(&pool, 16, stranger(1), late),
            Decision::Refuse(SOURCE_FULL)
        );
        assert_eq!(
            decide(&pool, 16, stranger(1), late + Duration::from_secs(1)),
            Decision::Displace {
                key: 2,
                why: RECLAIMED_IDLE
            }
        );
    }

    #[test]
    fn a_full_pool_of_busy_strangers_and_neighbours_refuses_strangers() {
        let t0 = Instant::now();
        let pool = vec![
            held(1, 1, false, t0),
            held(2, 2, true, t0),
            held(3, 3, true, t0),
        ];
        assert_eq!(
            decide(&pool, 3, stranger(4), t0),
            Decision::Refuse(STRANGERS_FULL)
        );
        assert_eq!(
            decide(&pool, 3, neighbour(4), t0),
            Decision::Displace {
                key: 1,
                why: DISPLACED_BY_NEIGHBOUR
            }
        );
    }
}
