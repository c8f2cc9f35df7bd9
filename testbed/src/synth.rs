//! Synthetic contact traces for tests and scale measurements (`mule-testbed gen-trace`).
//!
//! A simple community model, loosely shaped like the iMote traces: nodes belong to
//! communities of about ten; each node takes part in about [`CONTACTS_PER_NODE_DAY`]
//! contacts a day; a contact is inside the node's community with probability 0.7 and
//! with a uniformly random node otherwise; start times are uniform over the trace;
//! durations are log-normal with a median of two minutes (a few last hours). It is not
//! a mobility model, only a deterministic, scalable source of plausible contacts.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::trace::{Contact, Options, RawContact, Trace};

/// Mean number of contacts a node takes part in per day.
pub const CONTACTS_PER_NODE_DAY: f64 = 40.0;

/// Generates a synthetic trace of `nodes` nodes over `days` days (seeded; normalised
/// with no minimum contact length, so overlapping contacts of a pair are merged).
pub fn synthetic(nodes: u32, days: f64, seed: u64) -> Trace {
    let nodes = nodes.max(2);
    let mut rng = SmallRng::seed_from_u64(seed);
    let span = days * 86_400.0;
    let community = 10u32.min(nodes);
    let count = (nodes as f64 * CONTACTS_PER_NODE_DAY * days / 2.0).round() as usize;
    let mut raw = Vec::with_capacity(count);
    for i in 0..count {
        let a = rng.random_range(0..nodes);
        let b = if rng.random_bool(0.7) {
            let base = a / community * community;
            let size = community.min(nodes - base);
            base + rng.random_range(0..size)
        } else {
            rng.random_range(0..nodes)
        };
        if a == b {
            continue;
        }
        let start = rng.random_range(0.0..span);
        // Log-normal: median 120 s, sigma 1.5 (Box-Muller from two uniforms).
        let (u1, u2): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let dur = (120.0 * (1.5 * z).exp()).min(6.0 * 3600.0);
        raw.push(RawContact {
            contact: Contact {
                start: start.floor(),
                end: (start + dur).floor().min(span),
                a: a.min(b),
                b: a.max(b),
            },
            line: i + 1,
        });
    }
    let opts = Options {
        min_contact: 0.0,
        nodes: Some(nodes),
        window: None,
    };
    let mut t = Trace::build(raw, &opts).expect("a synthetic trace has contacts");
    t.end = span;
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_sane() {
        let a = synthetic(50, 1.0, 9);
        let b = synthetic(50, 1.0, 9);
        assert_eq!(a.contacts, b.contacts);
        assert_eq!(a.nodes, 50);
        assert!(a.contacts.len() > 800, "{}", a.contacts.len());
        assert!(a.contacts.iter().all(|c| c.a < c.b && c.end >= c.start));
        assert_ne!(a.contacts, synthetic(50, 1.0, 10).contacts);
    }
}
