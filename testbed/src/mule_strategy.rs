//! The Mule strategy in the simulator: an adapter around the daemon's own piece
//! scheduler and contact prediction.
//!
//! **Status: interim.** `mule_engine::scheduler::schedule` and
//! `mule_contacts::prediction::Prophet` are being written concurrently; until their
//! pure APIs are committed this adapter carries a stand-in with the same decisions
//! (rarest-first among the pieces the peer lacks and nobody else is sending it;
//! carriers outside the audience get pieces only if PRoPHET says they are better
//! placed than the sender to meet the audience). The stand-in is marked `INTERIM` and
//! is replaced by calls into the real crates; the issue requires the simulator to run
//! the daemon's own code.

use rand::rngs::SmallRng;

use crate::strategy::{Knowledge, Strategy, View, rarest_candidate};
use crate::trace::NodeIx;

/// PRoPHET parameters (RFC 6693 defaults; aging unit chosen for human contact traces).
#[derive(Clone, Copy, Debug)]
pub struct ProphetParams {
    /// Predictability gained at an encounter.
    pub p_init: f64,
    /// Transitivity scaling.
    pub beta: f64,
    /// Aging factor per `unit_s`.
    pub gamma: f64,
    /// Aging time unit, seconds.
    pub unit_s: f64,
}

impl Default for ProphetParams {
    fn default() -> Self {
        ProphetParams {
            p_init: 0.75,
            beta: 0.25,
            gamma: 0.98,
            unit_s: 600.0,
        }
    }
}

/// INTERIM stand-in for `mule_contacts::prediction::Prophet`: one delivery
/// predictability table per node, updated at encounters.
#[derive(Debug)]
struct FleetProphet {
    n: usize,
    params: ProphetParams,
    /// `p[a * n + b]`: a's predictability of meeting b, as of `aged[a]`.
    p: Vec<f32>,
    aged: Vec<f64>,
}

impl FleetProphet {
    fn new(n: usize, params: ProphetParams) -> Self {
        FleetProphet {
            n,
            params,
            p: vec![0.0; n * n],
            aged: vec![0.0; n],
        }
    }

    fn age(&mut self, a: usize, now: f64) {
        let dt = now - self.aged[a];
        if dt > 0.0 {
            let k = self.params.gamma.powf(dt / self.params.unit_s) as f32;
            for x in &mut self.p[a * self.n..(a + 1) * self.n] {
                *x *= k;
            }
            self.aged[a] = now;
        }
    }

    fn encounter(&mut self, now: f64, a: usize, b: usize) {
        self.age(a, now);
        self.age(b, now);
        let n = self.n;
        let pi = self.params.p_init as f32;
        let beta = self.params.beta as f32;
        for (x, y) in [(a, b), (b, a)] {
            let old = self.p[x * n + y];
            self.p[x * n + y] = old + (1.0 - old) * pi;
        }
        // Transitivity, from the peer's (already aged) table.
        for (x, y) in [(a, b), (b, a)] {
            let pxy = self.p[x * n + y];
            for c in 0..n {
                if c == x || c == y {
                    continue;
                }
                let via = pxy * self.p[y * n + c] * beta;
                if via > self.p[x * n + c] {
                    self.p[x * n + c] = via;
                }
            }
        }
    }

    /// How well `w` is placed to meet the audience: sum of its predictabilities.
    fn carry_value(&self, w: usize, audience: &[bool]) -> f32 {
        let row = &self.p[w * self.n..(w + 1) * self.n];
        row.iter()
            .zip(audience)
            .filter(|&(_, &a)| a)
            .map(|(p, _)| *p)
            .sum()
    }
}

/// The Mule strategy (see the module docs).
#[derive(Debug)]
pub struct Mule {
    prediction: Option<FleetProphet>,
    audience: Vec<bool>,
}

impl Mule {
    /// A Mule strategy for `nodes` nodes with the given audience; `prediction: false`
    /// disables the social prediction (carriers are then served while they have room).
    pub fn new(nodes: u32, audience: Vec<bool>, prediction: bool) -> Mule {
        Mule {
            prediction: prediction
                .then(|| FleetProphet::new(nodes as usize, ProphetParams::default())),
            audience,
        }
    }
}

impl Strategy for Mule {
    fn name(&self) -> &str {
        "mule"
    }

    fn knowledge(&self) -> Knowledge {
        Knowledge::Summaries
    }

    fn on_encounter(&mut self, now: f64, a: NodeIx, b: NodeIx) {
        if let Some(p) = &mut self.prediction {
            p.encounter(now, a as usize, b as usize);
        }
    }

    fn next_piece(&mut self, view: &View<'_>, rng: &mut SmallRng) -> Option<u32> {
        if view.peer_room == 0 {
            return None;
        }
        if !view.peer_in_audience
            && let Some(p) = &self.prediction
        {
            // PRoPHET's GRTR rule: hand a copy to a carrier only if it is more likely
            // than we are to meet the audience.
            let mine = p.carry_value(view.from as usize, &self.audience);
            let theirs = p.carry_value(view.to as usize, &self.audience);
            if theirs <= mine {
                return None;
            }
        }
        rarest_candidate(view, rng)
    }
}
