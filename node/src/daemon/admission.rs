//! Slots for inbound session connections that have not authenticated yet.
//!
//! Until a peer has proved its key, its connection costs a socket, a task and buffers and
//! has shown nothing; anyone who can reach the port can open many and keep renewing them.
//! So these connections hold slots of their own, bounded apart from authenticated sessions
//! (`session.max_sessions`), and a full pool never turns a newcomer away for good:
//! - at most [`MAX_PENDING`] at once; when full, a new connection takes the slot of the
//!   oldest unauthenticated one. An honest handshake needs a few round trips, so it is done
//!   long before it becomes the oldest; idle connections held by an attacker are the oldest.
//! - at most [`PER_SOURCE`] from one source (an IPv4 address; an IPv6 /64, since one host
//!   may hold a whole /64); a further one from that source replaces the source's own oldest,
//!   so a single host competes only with itself. A known neighbour's source may have
//!   [`KNOWN_PER_SOURCE`].
//! - a connection from a known neighbour (its address known to discovery, a configured
//!   peer, or one that recently held a clean session) is not displaced by a stranger's
//!   during its first [`PROTECTED_FOR`]: only another known neighbour's can take its slot.
//! - the session's own handshake deadline (5 s) still ends every connection that does not
//!   authenticate, pool full or not.
//!
//! The policy is plain data with time passed in; the accept loop holds it behind a mutex,
//! gives each admitted connection a [`Ticket`] and drops the connection when the ticket's
//! slot is reclaimed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Most unauthenticated inbound connections at once.
pub const MAX_PENDING: usize = 32;
/// Most unauthenticated inbound connections from one source at once.
pub const PER_SOURCE: usize = 4;
/// The same for a known neighbour's source (several nodes behind one address, or on one
/// host in tests, may dial at once).
pub const KNOWN_PER_SOURCE: usize = 16;
/// How long a known neighbour's unauthenticated connection is safe from strangers'.
pub const PROTECTED_FOR: Duration = Duration::from_secs(3);
/// Sources of recent clean sessions remembered as known (at most this many) ...
const RECENT_SOURCES: usize = 256;
/// ... for this long.
const RECENT_FOR: Duration = Duration::from_secs(3600);

/// Where a connection comes from, as far as the limits are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// The source of a peer address: IPv4 (also when mapped into IPv6) as is, IPv6 by /64.
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    Source(IpAddr::V6(bits.into()))
                }
            },
        }
    }
}

/// The pool of unauthenticated connections (shared by the accept loops and the tickets).
#[derive(Default)]
pub struct Admission {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    pending: Vec<Pending>,
    /// Sources of recent clean sessions, and when.
    recent: HashMap<Source, Instant>,
}

struct Pending {
    id: u64,
    source: Source,
    since: Instant,
    known: bool,
    reclaim: oneshot::Sender<()>,
}

/// Resolves when the connection's slot was given to another connection: drop it then.
pub type Reclaimed = oneshot::Receiver<()>;

/// An admitted connection's hold on its slot; released when dropped.
pub struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    source: Source,
}

impl Admission {
    /// An empty pool.
    pub fn new() -> Arc<Admission> {
        Arc::new(Admission::default())
    }

    /// Admits a connection from `ip` (`known`: from a known neighbour), reclaiming another
    /// connection's slot if the limits say so; `None` when it must be refused (the pool is
    /// full of known neighbours' young connections and this one is a stranger's).
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        known: bool,
        now: Instant,
    ) -> Option<(Ticket, Reclaimed)> {
        let source = Source::of(ip);
        let mut inner = self.inner.lock().expect("admission");
        let known = known
            || inner
                .recent
                .get(&source)
                .is_some_and(|t| now.saturating_duration_since(*t) < RECENT_FOR);
        let oldest = |inner: &Inner, ok: &dyn Fn(&Pending) -> bool| {
            inner
                .pending
                .iter()
                .enumerate()
                .filter(|(_, p)| ok(p))
                .min_by_key(|(_, p)| (p.since, p.id))
                .map(|(i, _)| i)
        };
        let same_source = inner.pending.iter().filter(|p| p.source == source).count();
        let per_source = if known { KNOWN_PER_SOURCE } else { PER_SOURCE };
        let victim = if same_source >= per_source {
            oldest(&inner, &|p| p.source == source)
        } else if inner.pending.len() >= MAX_PENDING {
            let unprotected =
                |p: &Pending| !p.known || now.saturating_duration_since(p.since) >= PROTECTED_FOR;
            match oldest(&inner, &unprotected) {
                Some(i) => Some(i),
                None if known => oldest(&inner, &|_| true),
                None => return None,
            }
        } else {
            None
        };
        if let Some(i) = victim {
            let old = inner.pending.swap_remove(i);
            let _ = old.reclaim.send(());
        }
        inner.next += 1;
        let id = inner.next;
        let (tx, rx) = oneshot::channel();
        inner.pending.push(Pending {
            id,
            source,
            since: now,
            known,
            reclaim: tx,
        });
        let ticket = Ticket {
            admission: self.clone(),
            id,
            source,
        };
        Some((ticket, rx))
    }

    /// Unauthenticated connections held now.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.inner.lock().expect("admission").pending.len()
    }
}

impl Ticket {
    /// The connection authenticated: it leaves the pool (nothing can reclaim it any more).
    /// False if its slot was reclaimed first: then the session must end.
    pub fn authenticated(&self) -> bool {
        let mut inner = self.admission.inner.lock().expect("admission");
        match inner.pending.iter().position(|p| p.id == self.id) {
            Some(i) => {
                inner.pending.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// The connection held a clean session: its source counts as known for a while.
    pub fn remember_source(&self, now: Instant) {
        let mut inner = self.admission.inner.lock().expect("admission");
        inner
            .recent
            .retain(|_, t| now.saturating_duration_since(*t) < RECENT_FOR);
        if inner.recent.len() >= RECENT_SOURCES
            && !inner.recent.contains_key(&self.source)
            && let Some(oldest) = inner
                .recent
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(s, _)| *s)
        {
            inner.recent.remove(&oldest);
        }
        inner.recent.insert(self.source, now);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.admission.inner.lock().expect("admission");
        inner.pending.retain(|p| p.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn reclaimed(rx: &mut Reclaimed) -> bool {
        rx.try_recv().is_ok()
    }

    #[test]
    fn one_source_beyond_its_limit_replaces_its_own_oldest() {
        let a = Admission::new();
        let t0 = Instant::now();
        let mut held: Vec<_> = (0..PER_SOURCE)
            .map(|i| {
                a.admit(v4(1), false, t0 + Duration::from_millis(i as u64))
                    .expect("admitted")
            })
            .collect();
        let other = a.admit(v4(2), false, t0).expect("admitted");
        let newer = a
            .admit(v4(1), false, t0 + Duration::from_secs(1))
            .expect("admitted");
        assert!(
            reclaimed(&mut held[0].1),
            "the source's oldest keeps its slot"
        );
        for h in &mut held[1..] {
            assert!(!reclaimed(&mut h.1));
        }
        assert_eq!(a.pending(), PER_SOURCE + 1);
        drop((other, newer));
    }

    #[test]
    fn a_known_source_may_have_more_handshakes_at_once() {
        let a = Admission::new();
        let t0 = Instant::now();
        let mut held: Vec<_> = (0..KNOWN_PER_SOURCE)
            .map(|_| a.admit(v4(1), true, t0).expect("admitted"))
            .collect();
        assert!(held.iter_mut().all(|h| !reclaimed(&mut h.1)));
        let _more = a.admit(v4(1), true, t0).expect("admitted");
        assert_eq!(
            held.iter_mut()
                .map(|h| reclaimed(&mut h.1))
                .filter(|r| *r)
                .count(),
            1
        );
    }

    #[test]
    fn a_full_pool_gives_the_oldest_strangers_slot_to_a_newcomer() {
        let a = Admission::new();
        let t0 = Instant::now();
        let mut held: Vec<_> = (0..MAX_PENDING)
            .map(|i| {
                a.admit(v4(i as u8), false, t0 + Duration::from_millis(i as u64))
                    .expect("admitted")
            })
            .collect();
        let (ticket, _rx) = a
            .admit(v4(200), false, t0 + Duration::from_secs(1))
            .expect("a newcomer is never turned away by strangers");
        assert!(reclaimed(&mut held[0].1), "the oldest was not reclaimed");
        assert!(held[1..].iter_mut().all(|h| !reclaimed(&mut h.1)));
        assert_eq!(a.pending(), MAX_PENDING);
        // It authenticates: out of the pool, and it cannot be reclaimed any more.
        assert!(ticket.authenticated());
        assert_eq!(a.pending(), MAX_PENDING - 1);
        // A reclaimed one that authenticates late must close.
        assert!(!held[0].0.authenticated());
        // Tickets dropped: slots free.
        drop(held);
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn a_known_neighbour_is_not_displaced_by_strangers_while_young() {
        let a = Admission::new();
        let t0 = Instant::now();
        let (_known, mut known_rx) = a.admit(v4(250), true, t0).expect("admitted");
        let mut strangers = Vec::new();
        for i in 0..3 * MAX_PENDING {
            let at = t0 + Duration::from_millis(10 * (i as u64 + 1));
            strangers.push(a.admit(v4(i as u8), false, at).expect("admitted"));
        }
        assert!(
            !reclaimed(&mut known_rx),
            "strangers displaced a known neighbour"
        );
        // Past its protection it is the oldest and goes like any other.
        let late = t0 + PROTECTED_FOR + Duration::from_secs(1);
        let _s = a.admit(v4(251), false, late).expect("admitted");
        assert!(reclaimed(&mut known_rx));
    }

    #[test]
    fn a_pool_of_young_known_connections_refuses_strangers_but_not_neighbours() {
        let a = Admission::new();
        let t0 = Instant::now();
        let mut known: Vec<_> = (0..MAX_PENDING)
            .map(|i| a.admit(v4(i as u8), true, t0).expect("admitted"))
            .collect();
        assert!(a.admit(v4(240), false, t0).is_none());
        let _n = a.admit(v4(241), true, t0).expect("a neighbour gets in");
        assert_eq!(
            known
                .iter_mut()
                .map(|k| reclaimed(&mut k.1))
                .filter(|r| *r)
                .count(),
            1
        );
    }

    #[test]
    fn a_clean_session_makes_its_source_known() {
        let a = Admission::new();
        let t0 = Instant::now();
        let (t, _rx) = a.admit(v4(9), false, t0).expect("admitted");
        assert!(t.authenticated());
        t.remember_source(t0);
        drop(t);
        let (_k, mut k_rx) = a.admit(v4(9), false, t0).expect("admitted");
        for i in 0..2 * MAX_PENDING {
            let _ = a.admit(
                v4(100 + i as u8),
                false,
                t0 + Duration::from_millis(1 + i as u64),
            );
        }
        assert!(
            !reclaimed(&mut k_rx),
            "a recently clean source was treated as a stranger"
        );
    }

    #[test]
    fn ipv6_sources_are_grouped_by_64() {
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().expect("addr");
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().expect("addr");
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().expect("addr");
        assert_eq!(Source::of(a.into()), Source::of(b.into()));
        assert_ne!(Source::of(a.into()), Source::of(c.into()));
        let mapped: Ipv6Addr = Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped();
        assert_eq!(
            Source::of(mapped.into()),
            Source::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)))
        );
    }
}
