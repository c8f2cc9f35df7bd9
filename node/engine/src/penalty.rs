//! Per-peer penalties and backoff, as pure bookkeeping with time as an input.
//!
//! - A session that ends cleanly (including a contact that simply ended: idle timeout) clears
//!   the peer's failure count, so the next contact reconnects at once and resumes.
//! - A failed attempt (connect error, handshake timeout) backs off exponentially:
//!   `base × 2^(failures-1)`, capped.
//! - A protocol violation adds its [`Penalty`] points to a score that halves every
//!   `half_life_ms`, and backs off `base × 2^(failures-1) × points` (capped). A peer whose
//!   score reaches `ban_threshold` is ignored for `ban_ms`.
//! - At most `max_peers` records are kept; the least recently touched unbanned one goes first.

use std::collections::HashMap;

use mule_proto::NodeId;

/// How bad the end of a session was, as decided by the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Penalty {
    /// Not the peer's fault (contact ended, we shut down, store full).
    None,
    /// Sloppy but possibly honest (handshake timeout, unexpected message).
    Minor,
    /// Broken or hostile framing (malformed, oversized, unsolicited data, too many requests).
    Major,
    /// Proven misbehaviour (bad signature, forged manifest, piece failing verification).
    Severe,
}

impl Penalty {
    /// Score points the penalty adds.
    pub fn points(self) -> u32 {
        match self {
            Penalty::None => 0,
            Penalty::Minor => 1,
            Penalty::Major => 5,
            Penalty::Severe => 20,
        }
    }
}

/// Tuning of the penalty book.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PenaltyConfig {
    /// First backoff after a failure, in ms.
    pub base_backoff_ms: u64,
    /// Longest backoff, in ms.
    pub max_backoff_ms: u64,
    /// Score at which a peer is banned.
    pub ban_threshold: f64,
    /// How long a ban lasts, in ms.
    pub ban_ms: u64,
    /// Score half-life, in ms.
    pub half_life_ms: u64,
    /// Most peers remembered.
    pub max_peers: usize,
}

impl Default for PenaltyConfig {
    fn default() -> Self {
        PenaltyConfig {
            base_backoff_ms: 1_000,
            max_backoff_ms: 300_000,
            ban_threshold: 20.0,
            ban_ms: 3_600_000,
            half_life_ms: 600_000,
            max_peers: 4096,
        }
    }
}

/// Whether a session with a peer may be opened now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Allowed,
    /// Wait until this time (ms).
    Backoff {
        /// Earliest time of the next attempt.
        until: u64,
    },
    /// Ignored until this time (ms).
    Banned {
        /// End of the ban.
        until: u64,
    },
}

#[derive(Debug, Clone, Copy, Default)]
struct Record {
    failures: u32,
    score: f64,
    score_at: u64,
    not_before: u64,
    banned_until: u64,
    touched: u64,
}

/// Penalty and backoff state of every peer met recently.
#[derive(Debug, Clone, Default)]
pub struct PenaltyBook {
    cfg: PenaltyConfig,
    peers: HashMap<NodeId, Record>,
}

impl PenaltyBook {
    /// An empty book.
    pub fn new(cfg: PenaltyConfig) -> Self {
        PenaltyBook {
            cfg,
            peers: HashMap::new(),
        }
    }

    fn decayed(&self, r: &Record, now: u64) -> f64 {
        let dt = now.saturating_sub(r.score_at) as f64;
        r.score * libm::exp2(-dt / self.cfg.half_life_ms.max(1) as f64)
    }

    fn backoff(&self, failures: u32, mult: u32) -> u64 {
        let exp = failures.saturating_sub(1).min(40);
        self.cfg
            .base_backoff_ms
            .saturating_mul(1u64 << exp)
            .saturating_mul(mult.max(1) as u64)
            .min(self.cfg.max_backoff_ms)
    }

    fn record(&mut self, node: NodeId, now: u64) -> &mut Record {
        if !self.peers.contains_key(&node) && self.peers.len() >= self.cfg.max_peers {
            let victim = self
                .peers
                .iter()
                .min_by_key(|(id, r)| (r.banned_until > now, r.touched, **id))
                .map(|(id, _)| *id);
            if let Some(v) = victim {
                self.peers.remove(&v);
            }
        }
        let r = self.peers.entry(node).or_default();
        r.touched = now;
        r
    }

    /// A connection attempt or handshake failed.
    pub fn record_failure(&mut self, node: NodeId, now: u64) {
        let r = self.record(node, now);
        r.failures = r.failures.saturating_add(1);
        let failures = r.failures;
        let until = now + self.backoff(failures, 1);
        self.record(node, now).not_before = until;
    }

    /// A session ended with the given penalty (`Penalty::None`: clean end).
    pub fn record_close(&mut self, node: NodeId, now: u64, penalty: Penalty) {
        if penalty == Penalty::None {
            let r = self.record(node, now);
            r.failures = 0;
            r.not_before = now;
            return;
        }
        let score = self.peers.get(&node).map_or(0.0, |r| self.decayed(r, now));
        let r = self.record(node, now);
        r.failures = r.failures.saturating_add(1);
        r.score = score + penalty.points() as f64;
        r.score_at = now;
        let (failures, score) = (r.failures, r.score);
        let until = now + self.backoff(failures, penalty.points());
        let ban = score >= self.cfg.ban_threshold;
        let ban_until = now + self.cfg.ban_ms;
        let r = self.record(node, now);
        r.not_before = until;
        if ban {
            r.banned_until = ban_until;
        }
    }

    /// Whether a session with `node` may be opened at `now`.
    pub fn check(&self, node: &NodeId, now: u64) -> Verdict {
        match self.peers.get(node) {
            Some(r) if r.banned_until > now => Verdict::Banned {
                until: r.banned_until,
            },
            Some(r) if r.not_before > now => Verdict::Backoff {
                until: r.not_before,
            },
            _ => Verdict::Allowed,
        }
    }

    /// The peer's current (decayed) penalty score.
    pub fn score(&self, node: &NodeId, now: u64) -> f64 {
        self.peers.get(node).map_or(0.0, |r| self.decayed(r, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: NodeId = NodeId([1; 32]);

    #[test]
    fn failures_back_off_exponentially_and_clean_end_resets() {
        let mut b = PenaltyBook::new(PenaltyConfig::default());
        assert_eq!(b.check(&N, 0), Verdict::Allowed);
        b.record_failure(N, 0);
        assert_eq!(b.check(&N, 0), Verdict::Backoff { until: 1_000 });
        b.record_failure(N, 1_000);
        assert_eq!(b.check(&N, 1_000), Verdict::Backoff { until: 3_000 });
        assert_eq!(b.check(&N, 3_000), Verdict::Allowed);
        b.record_close(N, 3_000, Penalty::None);
        b.record_failure(N, 4_000);
        assert_eq!(b.check(&N, 4_000), Verdict::Backoff { until: 5_000 });
    }

    #[test]
    fn repeated_offenders_are_banned_and_scores_decay() {
        let cfg = PenaltyConfig::default();
        let mut b = PenaltyBook::new(cfg);
        b.record_close(N, 0, Penalty::Major);
        assert_eq!(b.check(&N, 0), Verdict::Backoff { until: 5_000 });
        b.record_close(N, 5_000, Penalty::Major);
        b.record_close(N, 60_000, Penalty::Major);
        b.record_close(N, 120_000, Penalty::Major);
        assert!(matches!(b.check(&N, 120_000), Verdict::Backoff { .. }));
        b.record_close(N, 120_000, Penalty::Major);
        assert!(matches!(b.check(&N, 120_000), Verdict::Banned { .. }));
        assert_eq!(b.check(&N, 120_000 + cfg.ban_ms), Verdict::Allowed);
        assert!(b.score(&N, 120_000 + 10 * cfg.half_life_ms) < 0.1);
        let mut b = PenaltyBook::new(cfg);
        b.record_close(N, 0, Penalty::Severe);
        assert!(matches!(b.check(&N, 1), Verdict::Banned { .. }));
    }

    #[test]
    fn the_book_is_bounded() {
        let mut b = PenaltyBook::new(PenaltyConfig {
            max_peers: 3,
            ..PenaltyConfig::default()
        });
        for i in 0..10u8 {
            b.record_failure(NodeId([i; 32]), i as u64);
        }
        assert_eq!(b.peers.len(), 3);
    }
}
