//! Who will we meet, for how long, and who is a good carrier: pure, deterministic prediction.
//!
//! No I/O and no clock: every function takes `now` (a [`Timestamp`]), so the engine, the
//! simulator and tests get identical results for identical inputs.
//!
//! # PRoPHET delivery predictability (RFC 6693)
//! `P(A,B)` in [0, 1] estimates how likely node A is to deliver to B. This module keeps A's
//! vector ([`Prophet`]) and updates it with the three equations of RFC 6693 §2.1.2:
//!
//! 1. **Encounter** of B at time t (Eq. 1):
//!    - if B is unknown or `P_old < P_first_threshold`: `P = P_encounter_first`;
//!    - else `P = P_old + (1 − δ − P_old) · P_enc`, where
//!      `P_enc = P_encounter_max · min(1, intvl / I_typ)` and `intvl` is the time since the
//!      previous encounter with B. Quick re-connections (a flapping link) thus add little;
//!      `P` never exceeds `1 − δ`.
//! 2. **Aging** (Eq. 2): `P = P_old · γ^K`, `K` = whole time units since the last aging
//!    (the remainder is carried, so aging in many small steps equals aging once). Entries
//!    that fall below `P_first_threshold` are forgotten (this bounds the table).
//! 3. **Transitivity** (Eq. 3) from peer B's vector: for every C ≠ A, B:
//!    `P(A,C) = max(P(A,C)_old, P(A,B) · P(B,C) · β)`. The RFC's `max` (unlike the 2003
//!    paper's additive form) means a transitive update can never exceed the direct bound
//!    `P(A,B) · P(B,C) · β` nor lower an existing value. Received values are clamped to
//!    [0, 1]; NaN is ignored.
//!
//! **Parameters**: the RFC 6693 §3.3 recommended set is the default ([`ProphetParams`]):
//! `P_encounter_max 0.7, P_encounter_first 0.5, P_first_threshold 0.1, δ 0.01, β 0.9,
//! γ 0.999 per time unit, I_typ 300 s`. We use it rather than the 2003 paper's
//! `P_init 0.75, β 0.25, γ 0.98` (used by ONE-simulator-derived code) because the RFC
//! version fixes known problems of the original: the additive transitivity saturated every
//! node near 1 in dense networks, and without `δ` and the `intvl / I_typ` damping a flapping
//! link inflated predictability. The RFC leaves the aging time unit to the implementation;
//! we use 60 s (so with γ 0.999 an unrefreshed value halves in about 11.5 hours, which suits
//! daily mobility patterns). All of it is overridable from config (serde).
//!
//! # Contact forecasts ([`forecast`])
//! From a peer's past contacts (start, end), over the last `window` contacts:
//! - **expected duration of the next contact** = median of their durations;
//! - **expected time until the next meeting**: the inter-contact gaps
//!   `g_i = start_i − end_(i−1)`; with `e = now − last end` already elapsed, the forecast is
//!   the median of `g_i − e` over the gaps longer than `e` (the residual waiting time
//!   given the gap has already lasted `e`); zero while in contact; `None` if no past gap is
//!   that long (the peer is overdue) or there is no gap yet.
//!
//! Medians rather than means: contact traces are heavy-tailed, one night-long gap would
//! dominate a mean.
//!
//! # Social score ([`social_score`])
//! Over a sliding window `W` (default 24 h) ending now: `degree` = distinct peers met,
//! `contacts` = contacts started. `score = d / (d + d_half)` with
//! `d = degree + 0.1 · (contacts − degree)` and `d_half` (default 5) the degree at which the
//! score is 0.5. Distinct peers dominate (a carrier that meets many different nodes spreads
//! data further), repeated contacts add a little. The score is in [0, 1).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::time::Timestamp;

/// PRoPHET parameters (defaults: RFC 6693 §3.3, see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProphetParams {
    /// Upper bound of the per-encounter increment factor.
    pub p_encounter_max: f64,
    /// Predictability after a first encounter.
    pub p_encounter_first: f64,
    /// Below this a value is treated as unknown (and forgotten by aging).
    pub p_first_threshold: f64,
    /// Keeps predictabilities at most `1 − delta`.
    pub delta: f64,
    /// Transitivity scaling.
    pub beta: f64,
    /// Aging factor per time unit.
    pub gamma: f64,
    /// Aging time unit.
    #[serde(with = "secs")]
    pub time_unit: Duration,
    /// Typical inter-encounter interval: encounters closer than this add proportionally less.
    #[serde(with = "secs")]
    pub i_typ: Duration,
    /// Most entries kept in the vector (the smallest are dropped first).
    pub max_entries: usize,
}

impl Default for ProphetParams {
    fn default() -> Self {
        ProphetParams {
            p_encounter_max: 0.7,
            p_encounter_first: 0.5,
            p_first_threshold: 0.1,
            delta: 0.01,
            beta: 0.9,
            gamma: 0.999,
            time_unit: Duration::from_secs(60),
            i_typ: Duration::from_secs(300),
            max_entries: 4096,
        }
    }
}

/// Durations as (fractional) seconds in config files.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug)]
struct Entry {
    p: f64,
    last_encounter: Option<Timestamp>,
}

/// One node's PRoPHET state: its delivery predictability towards every other node it knows.
#[derive(Clone, Debug)]
pub struct Prophet {
    own: NodeId,
    params: ProphetParams,
    table: BTreeMap<NodeId, Entry>,
    last_aged: Option<Timestamp>,
}

impl Prophet {
    /// An empty vector for node `own`.
    pub fn new(own: NodeId, params: ProphetParams) -> Prophet {
        Prophet {
            own,
            params,
            table: BTreeMap::new(),
            last_aged: None,
        }
    }

    /// The parameters in use.
    pub fn params(&self) -> &ProphetParams {
        &self.params
    }

    /// Eq. 2: ages every entry by the whole time units elapsed since the last aging.
    pub fn age(&mut self, now: Timestamp) {
        let Some(last) = self.last_aged else {
            self.last_aged = Some(now);
            return;
        };
        let unit = self.params.time_unit.as_millis().max(1) as u64;
        let k = now.0.saturating_sub(last.0) / unit;
        if k == 0 {
            return;
        }
        self.last_aged = Some(Timestamp(last.0 + k * unit));
        let factor = libm::pow(self.params.gamma.clamp(0.0, 1.0), k as f64);
        let threshold = self.params.p_first_threshold;
        self.table.retain(|_, e| {
            e.p *= factor;
            e.p >= threshold && e.p > 0.0
        });
    }

    /// Eq. 1: we met `peer` at `now` (ages first).
    pub fn on_encounter(&mut self, peer: NodeId, now: Timestamp) {
        if peer == self.own {
            return;
        }
        self.age(now);
        let prm = self.params.clone();
        let e = self.table.entry(peer).or_insert(Entry {
            p: 0.0,
            last_encounter: None,
        });
        if e.p < prm.p_first_threshold || e.last_encounter.is_none() {
            e.p = e.p.max(prm.p_encounter_first.clamp(0.0, 1.0 - prm.delta));
        } else {
            let intvl = now.since(e.last_encounter.unwrap_or(now)).as_secs_f64();
            let typ = prm.i_typ.as_secs_f64();
            let ratio = if typ > 0.0 {
                (intvl / typ).min(1.0)
            } else {
                1.0
            };
            let p_enc = (prm.p_encounter_max * ratio).clamp(0.0, 1.0);
            let ceiling = (1.0 - prm.delta).clamp(0.0, 1.0);
            if e.p < ceiling {
                e.p = (e.p + (ceiling - e.p) * p_enc).min(ceiling);
            }
        }
        e.last_encounter = Some(now);
        self.enforce_bound();
    }

    /// Eq. 3: merges peer `peer`'s vector (pairs `(C, P(peer, C))`), received at `now`.
    pub fn on_transitive(&mut self, peer: NodeId, peer_vector: &[(NodeId, f64)], now: Timestamp) {
        self.age(now);
        let p_ab = self.predictability(&peer);
        if p_ab <= 0.0 {
            return;
        }
        for &(c, p_bc) in peer_vector {
            if c == self.own || c == peer || p_bc.is_nan() {
                continue;
            }
            let candidate = p_ab * p_bc.clamp(0.0, 1.0) * self.params.beta.clamp(0.0, 1.0);
            if candidate < self.params.p_first_threshold {
                continue;
            }
            let e = self.table.entry(c).or_insert(Entry {
                p: 0.0,
                last_encounter: None,
            });
            e.p = e.p.max(candidate);
        }
        self.enforce_bound();
    }

    /// `P(own, dest)`; 0 if unknown.
    pub fn predictability(&self, dest: &NodeId) -> f64 {
        if *dest == self.own {
            return 1.0;
        }
        self.table.get(dest).map_or(0.0, |e| e.p)
    }

    /// The `n` highest predictabilities, best first (ties by node id, so deterministic).
    pub fn top(&self, n: usize) -> Vec<(NodeId, f64)> {
        let mut v = self.vector();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    /// The whole vector (what a peer receives for its transitivity step), ordered by node id.
    pub fn vector(&self) -> Vec<(NodeId, f64)> {
        self.table.iter().map(|(k, e)| (*k, e.p)).collect()
    }

    /// Number of known destinations.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no destination is known.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn enforce_bound(&mut self) {
        while self.table.len() > self.params.max_entries {
            let smallest = self
                .table
                .iter()
                .min_by(|a, b| a.1.p.total_cmp(&b.1.p).then(b.0.cmp(a.0)))
                .map(|(k, _)| *k);
            match smallest {
                Some(k) => {
                    self.table.remove(&k);
                }
                None => break,
            }
        }
    }
}

/// A past contact's time span (what forecasts need from the history).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Start of the contact.
    pub start: Timestamp,
    /// End of the contact (equal to `start` while unknown).
    pub end: Timestamp,
}

/// Forecast for one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forecast {
    /// Expected duration of the next contact, if there is any past contact.
    pub next_duration: Option<Duration>,
    /// Expected time until we meet again (zero while in contact), if it can be estimated.
    pub until_next: Option<Duration>,
}

/// Forecast from a peer's contacts sorted by start (see the module docs). `in_contact`
/// says whether we are with the peer right now; only the last `window` contacts count.
pub fn forecast(spans: &[Span], now: Timestamp, in_contact: bool, window: usize) -> Forecast {
    let recent = &spans[spans.len().saturating_sub(window.max(1))..];
    let durations: Vec<u64> = recent
        .iter()
        .map(|s| s.end.0.saturating_sub(s.start.0))
        .collect();
    let next_duration = median(&durations).map(Duration::from_millis);
    if in_contact {
        return Forecast {
            next_duration,
            until_next: Some(Duration::ZERO),
        };
    }
    let gaps: Vec<u64> = recent
        .windows(2)
        .map(|w| w[1].start.0.saturating_sub(w[0].end.0))
        .collect();
    let until_next = recent.last().and_then(|last| {
        let elapsed = now.0.saturating_sub(last.end.0);
        let residual: Vec<u64> = gaps
            .iter()
            .filter(|g| **g > elapsed)
            .map(|g| g - elapsed)
            .collect();
        median(&residual).map(Duration::from_millis)
    });
    Forecast {
        next_duration,
        until_next,
    }
}

/// Median of integer values (mean of the two middle ones for even counts).
pub fn median(values: &[u64]) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        v[m - 1] / 2 + v[m] / 2 + (v[m - 1] % 2 + v[m] % 2) / 2
    })
}

/// Social score settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocialParams {
    /// Sliding window length.
    #[serde(with = "secs")]
    pub window: Duration,
    /// Effective degree at which the score is 0.5.
    pub half_degree: f64,
}

impl Default for SocialParams {
    fn default() -> Self {
        SocialParams {
            window: Duration::from_secs(24 * 3600),
            half_degree: 5.0,
        }
    }
}

/// A node's sociability over the window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Social {
    /// Distinct peers met in the window.
    pub degree: usize,
    /// Contacts started in the window.
    pub contacts: usize,
    /// Score in [0, 1).
    pub score: f64,
}

/// Social score from `(peer, contact start)` pairs (see the module docs).
pub fn social_score(contacts: &[(NodeId, Timestamp)], now: Timestamp, p: &SocialParams) -> Social {
    let from = Timestamp(now.0.saturating_sub(p.window.as_millis() as u64));
    let in_window: Vec<&(NodeId, Timestamp)> = contacts
        .iter()
        .filter(|(_, t)| *t >= from && *t <= now)
        .collect();
    let degree = in_window
        .iter()
        .map(|(n, _)| n)
        .collect::<HashSet<_>>()
        .len();
    let n = in_window.len();
    let d = degree as f64 + 0.1 * (n - degree) as f64;
    let half = if p.half_degree > 0.0 {
        p.half_degree
    } else {
        1.0
    };
    Social {
        degree,
        contacts: n,
        score: d / (d + half),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    fn t(s: u64) -> Timestamp {
        Timestamp::from_secs(s)
    }

    #[test]
    fn rfc_encounter_and_aging_values() {
        let mut p = Prophet::new(id(0), ProphetParams::default());
        p.on_encounter(id(1), t(0));
        assert_eq!(p.predictability(&id(1)), 0.5);
        // A full I_typ later: 0.5 + (0.99 - 0.5) * 0.7 = 0.843.
        p.on_encounter(id(1), t(300));
        let expected = 0.5 * 0.999f64.powi(5) + (0.99 - 0.5 * 0.999f64.powi(5)) * 0.7;
        assert!((p.predictability(&id(1)) - expected).abs() < 1e-12);
        // 10 minutes later, aged by 10 units.
        let before = p.predictability(&id(1));
        p.age(t(900));
        assert!((p.predictability(&id(1)) - before * 0.999f64.powi(10)).abs() < 1e-12);
        // Immediate re-encounter adds nothing (flapping link).
        p.on_encounter(id(1), t(900));
        let before = p.predictability(&id(1));
        p.on_encounter(id(1), t(900));
        assert_eq!(p.predictability(&id(1)), before);
    }

    #[test]
    fn transitivity_uses_max() {
        let mut p = Prophet::new(id(0), ProphetParams::default());
        p.on_encounter(id(1), t(0));
        p.on_transitive(id(1), &[(id(2), 0.8), (id(0), 1.0), (id(3), 0.1)], t(0));
        assert!((p.predictability(&id(2)) - 0.5 * 0.8 * 0.9).abs() < 1e-12);
        assert_eq!(p.predictability(&id(3)), 0.0, "below threshold: not stored");
        assert_eq!(p.predictability(&id(0)), 1.0);
        assert_eq!(p.top(1)[0].0, id(1));
    }

    #[test]
    fn aging_in_steps_equals_aging_once() {
        let mut a = Prophet::new(id(0), ProphetParams::default());
        a.on_encounter(id(1), t(0));
        let mut b = a.clone();
        for s in (0..=3600).step_by(7) {
            a.age(t(s));
        }
        a.age(t(3600));
        b.age(t(3600));
        assert!((a.predictability(&id(1)) - b.predictability(&id(1))).abs() < 1e-12);
    }

    #[test]
    fn forecasts_from_history() {
        // Contacts of 60 s every 1000 s.
        let spans: Vec<Span> = (0..5)
            .map(|i| Span {
                start: t(i * 1000),
                end: t(i * 1000 + 60),
            })
            .collect();
        let f = forecast(&spans, t(4060 + 100), false, 8);
        assert_eq!(f.next_duration, Some(Duration::from_secs(60)));
        assert_eq!(f.until_next, Some(Duration::from_secs(840)));
        assert_eq!(
            forecast(&spans, t(4100), true, 8).until_next,
            Some(Duration::ZERO)
        );
        assert_eq!(
            forecast(&spans, t(9000), false, 8).until_next,
            None,
            "overdue"
        );
        assert_eq!(
            forecast(&[], t(0), false, 8),
            Forecast {
                next_duration: None,
                until_next: None
            }
        );
    }

    #[test]
    fn social_score_counts_distinct_peers_in_window() {
        let c = vec![
            (id(1), t(10)),
            (id(1), t(20)),
            (id(2), t(30)),
            (id(3), t(0)),
        ];
        let p = SocialParams {
            window: Duration::from_secs(25),
            half_degree: 2.0,
        };
        let s = social_score(&c, t(35), &p);
        assert_eq!((s.degree, s.contacts), (2, 3));
        assert!((s.score - 2.1 / 4.1).abs() < 1e-12);
        assert_eq!(social_score(&[], t(0), &p).score, 0.0);
    }

    #[test]
    fn params_parse_from_toml_like_json() {
        let bytes = mule_proto::cbor::serde::encode(&ProphetParams::default());
        let p: ProphetParams = mule_proto::cbor::serde::decode_exact(&bytes).unwrap();
        assert_eq!(p, ProphetParams::default());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Encounter(u8, u64),
        Age(u64),
        Transitive(u8, Vec<(u8, f64)>, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u8..6, 0u64..5000).prop_map(|(n, dt)| Op::Encounter(n, dt)),
            (0u64..50_000).prop_map(Op::Age),
            (
                1u8..6,
                prop::collection::vec((0u8..8, prop_oneof![-1.0..2.0f64, Just(f64::NAN)]), 0..6),
                0u64..5000
            )
                .prop_map(|(n, v, dt)| Op::Transitive(n, v, dt)),
        ]
    }

    proptest! {
        #[test]
        fn values_stay_in_unit_interval_and_rules_hold(ops in prop::collection::vec(op(), 1..60)) {
            let prm = ProphetParams::default();
            let mut p = Prophet::new(id(0), prm.clone());
            let mut now = 0u64;
            for o in ops {
                match o {
                    Op::Encounter(n, dt) => {
                        now += dt;
                        let mut aged = p.clone();
                        aged.age(t(now));
                        let before = aged.predictability(&id(n));
                        p.on_encounter(id(n), t(now));
                        let after = p.predictability(&id(n));
                        prop_assert!(after >= before, "encounter lowered {before} -> {after}");
                        prop_assert!(after > 0.0);
                    }
                    Op::Age(dt) => {
                        now += dt;
                        let before = p.vector();
                        p.age(t(now));
                        for (k, v) in before {
                            prop_assert!(p.predictability(&k) <= v, "aging raised a value");
                        }
                    }
                    Op::Transitive(n, v, dt) => {
                        now += dt;
                        let vec: Vec<(NodeId, f64)> = v.iter().map(|(c, x)| (id(*c), *x)).collect();
                        let mut aged = p.clone();
                        aged.age(t(now));
                        p.on_transitive(id(n), &vec, t(now));
                        let p_ab = aged.predictability(&id(n));
                        for (c, x) in &vec {
                            if *c == id(0) || *c == id(n) || x.is_nan() { continue; }
                            let old = aged.predictability(c);
                            let bound = old.max(p_ab * x.clamp(0.0, 1.0) * prm.beta);
                            // Other entries of the same vector for `c` may raise it: take the max bound.
                            let best_x = vec.iter().filter(|(cc, xx)| cc == c && !xx.is_nan()).map(|(_, xx)| xx.clamp(0.0, 1.0)).fold(0.0, f64::max);
                            let bound = bound.max(old.max(p_ab * best_x * prm.beta));
                            prop_assert!(p.predictability(c) <= bound + 1e-12);
                            prop_assert!(p.predictability(c) >= old, "transitivity lowered a value");
                        }
                    }
                }
                for (_, v) in p.vector() {
                    prop_assert!((0.0..=1.0).contains(&v) && v <= 1.0 - prm.delta + 1e-12, "value {v}");
                }
            }
        }

        #[test]
        fn aging_is_monotone_in_time(dt1 in 0u64..100_000, dt2 in 0u64..100_000) {
            let mut a = Prophet::new(id(0), ProphetParams::default());
            a.on_encounter(id(1), t(0));
            let mut b = a.clone();
            a.age(t(dt1));
            b.age(t(dt1 + dt2));
            prop_assert!(b.predictability(&id(1)) <= a.predictability(&id(1)));
        }
    }
}
