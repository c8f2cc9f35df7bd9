//! The oracle: a lower bound on when each node could hold the whole bundle, computed
//! from the trace alone.
//!
//! ## Model shared with the simulator
//! A contact `(a, b, [s, e])` is a link usable in both directions during `[s, e]`; each
//! direction carries at most `rate` bytes per second, independently of the other
//! direction and of the node's other contacts at the same time. The bundle (`B`
//! bytes) appears at the origin at the publish time `T0`.
//!
//! ## The bound
//! 1. **Earliest arrival** `E_v`: the earliest time any data can reach `v` over a
//!    time-respecting path from the origin starting at `T0`, where a hop along contact
//!    `c` can be taken at any instant of `c` after the previous hop, and takes no time.
//!    `E_origin = T0`. Computed with a Dijkstra-style label-setting search (the hop
//!    function `t -> max(t, s)` for `t <= e` is monotone, so first settlement is final).
//! 2. **Capacity** `C_v`: the earliest `t` at which the contacts of `v` could have
//!    carried `B` bytes to `v`, counting contact `c` with peer `u` only from
//!    `max(s, E_u)` on (before `E_u`, `u` holds nothing to send):
//!    `sum_c rate * |[max(s_c, E_u), min(e_c, t)]| >= B`.
//!
//! The oracle completion time of a non-origin node is `C_v` (which is always `>= E_v`).
//!
//! ## Why no piece-based strategy can beat it
//! Relaxations with respect to any strategy the simulator (or the daemon) can run:
//! - **No store-and-forward delay**: a relay may forward data the instant it receives
//!   it (a real relay must first receive and verify a whole piece);
//! - **Any byte is useful**: every byte `v` receives from any peer is assumed new to `v`
//!   and part of the bundle (no duplicates, no two peers sending the same piece); and a
//!   peer `u` is assumed to have something new for `v` as soon as `u` holds anything;
//! - **No overhead**: hellos, summaries, frame headers and announcements take no time;
//! - **No quotas**: every node may relay, whatever its carry quota;
//! - **No radio sharing** beyond the shared model above (parallel contacts each get
//!   the full rate in both the bound and the simulator).
//!
//! Argument: in any run, a byte leaves `u` at time `τ` only if `u` holds at least one
//! piece at `τ`; by induction on the order of events, `u` first holds a piece no earlier
//! than `E_u`. A byte crossing contact `c` occupies `1/rate` seconds of that direction
//! of `c`, so by time `t` the payload that reached `v` is at most the capacity sum
//! above; `v` is complete only once `B` distinct payload bytes reached it. Hence every
//! strategy's completion time is `>= C_v`. The test `oracle_is_never_beaten` in
//! [`crate::sim`] checks this on synthetic traces and on `intel`.
//!
//! A tighter bound would also cap what `u` can pass on by what `u` itself holds at the
//! time; we do not use it because the obvious fluid version of that cap is *not* a
//! bound (two relays holding disjoint halves complete each other although neither
//! holds more than the other), and a correct version needs a per-pair min-plus
//! convolution. In the real traces a 2 MB bundle takes 2 s at 8 Mbit/s, far shorter
//! than the typical inter-contact time, so the bound is dominated by `E_v` anyway.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

use crate::trace::{NodeIx, Trace};
use crate::units::Rate;

/// The oracle's per-node times (absolute seconds; `f64::INFINITY` = never).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Oracle {
    /// `E_v`: earliest time any data could reach the node.
    pub earliest_arrival: Vec<f64>,
    /// `C_v`: earliest time the node could hold the whole bundle.
    pub complete: Vec<f64>,
}

/// A total order on finite-or-infinite times for the heap.
#[derive(Clone, Copy, PartialEq)]
struct T(f64);
impl Eq for T {}
impl PartialOrd for T {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for T {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

impl Oracle {
    /// Computes the bound for a bundle of `bundle_bytes` published at `origin` at time
    /// `publish_at` (absolute seconds), with links of `rate`.
    pub fn compute(
        trace: &Trace,
        origin: NodeIx,
        publish_at: f64,
        bundle_bytes: u64,
        rate: Rate,
    ) -> Oracle {
        let n = trace.nodes as usize;
        let mut adj: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (i, c) in trace.contacts.iter().enumerate() {
            if c.end >= publish_at {
                adj[c.a as usize].push(i as u32);
                adj[c.b as usize].push(i as u32);
            }
        }
        // 1. Earliest arrival.
        let mut e = vec![f64::INFINITY; n];
        let mut done = vec![false; n];
        let mut heap = BinaryHeap::new();
        e[origin as usize] = publish_at;
        heap.push(Reverse((T(publish_at), origin)));
        while let Some(Reverse((T(t), u))) = heap.pop() {
            if done[u as usize] {
                continue;
            }
            done[u as usize] = true;
            for &ci in &adj[u as usize] {
                let c = &trace.contacts[ci as usize];
                if c.end < t {
                    continue;
                }
                let v = c.peer_of(u).expect("contact in adjacency");
                let arrive = t.max(c.start);
                if arrive < e[v as usize] {
                    e[v as usize] = arrive;
                    heap.push(Reverse((T(arrive), v)));
                }
            }
        }
        // 2. Capacity.
        let r = rate.bytes_per_s();
        let b = bundle_bytes as f64;
        let mut complete = vec![f64::INFINITY; n];
        complete[origin as usize] = publish_at;
        let mut intervals: Vec<(f64, f64)> = Vec::new();
        for v in 0..n {
            if v == origin as usize || e[v].is_infinite() {
                continue;
            }
            intervals.clear();
            for &ci in &adj[v] {
                let c = &trace.contacts[ci as usize];
                let u = c.peer_of(v as NodeIx).expect("contact in adjacency") as usize;
                let from = c.start.max(e[u]);
                if from < c.end || (from == c.end && b == 0.0) {
                    intervals.push((from, c.end));
                }
            }
            complete[v] = fill_time(&mut intervals, r, b);
        }
        Oracle {
            earliest_arrival: e,
            complete,
        }
    }
}

/// Earliest `t` with `sum rate * |[s, min(e, t)]| >= need` over possibly overlapping
/// intervals (each interval is its own link at `rate`); infinity if never.
fn fill_time(intervals: &mut [(f64, f64)], rate: f64, need: f64) -> f64 {
    if need <= 0.0 {
        return intervals.iter().map(|i| i.0).fold(f64::INFINITY, f64::min);
    }
    // Sweep over start/end events with the number of open links.
    let mut ev: Vec<(f64, i32)> = Vec::with_capacity(intervals.len() * 2);
    for &(s, e) in intervals.iter() {
        ev.push((s, 1));
        ev.push((e, -1));
    }
    ev.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
    let mut open = 0i32;
    let mut got = 0.0f64;
    let mut last = f64::NEG_INFINITY;
    for (t, d) in ev {
        if open > 0 {
            let gain = rate * open as f64 * (t - last);
            if got + gain >= need {
                return last + (need - got) / (rate * open as f64);
            }
            got += gain;
        }
        open += d;
        last = t;
    }
    f64::INFINITY
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{Format, Options};

    fn trace(text: &str) -> Trace {
        let o = Options {
            min_contact: 0.0,
            ..Options::default()
        };
        Trace::parse(text, Format::Csv, &o).unwrap()
    }

    #[test]
    fn chain_of_overlapping_contacts_is_instant_but_capacity_is_not() {
        // 0-1 during [0,100], 1-2 during [50,60]; rate 1 kB/s, bundle 5 kB.
        let t = trace("0,100,0,1\n50,60,1,2\n");
        let o = Oracle::compute(&t, 0, 10.0, 5_000, Rate(1_000.0));
        assert_eq!(o.earliest_arrival, vec![10.0, 10.0, 50.0]);
        assert_eq!(o.complete[0], 10.0);
        assert_eq!(o.complete[1], 15.0);
        // Node 2 has its 10 s contact from 50 on: 5 s needed.
        assert_eq!(o.complete[2], 55.0);
        // A 20 kB bundle does not fit through the 10 s contact to node 2.
        let o = Oracle::compute(&t, 0, 10.0, 20_000, Rate(1_000.0));
        assert_eq!(o.complete[1], 30.0);
        assert!(o.complete[2].is_infinite());
    }

    #[test]
    fn parallel_contacts_add_capacity_and_time_respecting_paths_only() {
        // 2 meets 0 and 1 in parallel; 3 met 1 before anything was published.
        let t = trace("0,100,0,1\n20,100,0,2\n20,100,1,2\n0,5,1,3\n");
        let o = Oracle::compute(&t, 0, 10.0, 4_000, Rate(1_000.0));
        assert_eq!(o.complete[2], 22.0);
        assert!(o.earliest_arrival[3].is_infinite());
        assert!(o.complete[3].is_infinite());
    }

    #[test]
    fn fill_time_handles_gaps() {
        let mut iv = vec![(0.0, 1.0), (5.0, 10.0)];
        assert_eq!(fill_time(&mut iv, 2.0, 4.0), 6.0);
        let mut iv = vec![(0.0, 1.0)];
        assert!(fill_time(&mut iv, 2.0, 4.0).is_infinite());
    }
}
