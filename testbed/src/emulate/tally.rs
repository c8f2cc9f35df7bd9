//! Measurement: the bytes each contact carried, from the switch ends' interface counters
//! read when it came up and when it went down (switch end rx = what the node sent, switch
//! end tx = what it received), summed per node and per contact after publishing.

use std::collections::HashMap;
use std::fmt::Write as _;

use mule_netns::Veth;

use super::plan::{Plan, Switch};
use super::topology::{Pair, Topology};
use crate::sim::ContactUse;

/// Interface name → `(rx_bytes, tx_bytes)`, as [`super::topology::link_counters`] reads them.
pub(super) type Counters = HashMap<String, (u64, u64)>;

/// Live state of a contact that is up.
pub(super) struct Open {
    pub(super) contact: usize,
    /// Switch-end counters `(rx, tx)` of `va` and `vb` when it came up.
    base: [(u64, u64); 2],
}

/// What the contacts carried so far.
pub(super) struct Tally {
    /// Contacts up, by pair.
    pub(super) open: HashMap<usize, Open>,
    /// Contacts that ended after publishing, in the order they ended.
    pub(super) uses: Vec<ContactUse>,
    /// Per node: bytes sent during contacts that ended after publishing.
    pub(super) tx: Vec<u64>,
    /// Per node: bytes received during those contacts.
    pub(super) rx: Vec<u64>,
    /// Per node: bytes received from the origin during those contacts.
    pub(super) from_origin: Vec<u64>,
}

impl Tally {
    pub(super) fn new(nodes: usize) -> Tally {
        Tally {
            open: HashMap::new(),
            uses: Vec::new(),
            tx: vec![0; nodes],
            rx: vec![0; nodes],
            from_origin: vec![0; nodes],
        }
    }

    /// Applies contact switch `s` given the switch-end counters `snap` read just before:
    /// appends its `ip` commands to `batch` and notes or closes the contact.
    pub(super) fn apply(
        &mut self,
        s: &Switch,
        plan: &Plan,
        topo: &Topology,
        snap: &Counters,
        batch: &mut String,
    ) {
        let p = &topo.pairs[s.pair];
        let ctr = |v: &Veth| snap.get(v.switch_end()).copied().unwrap_or((0, 0));
        if s.up {
            for v in [&p.va, &p.vb] {
                let _ = writeln!(
                    batch,
                    "link set {} master {}",
                    v.switch_end(),
                    p.bridge.name()
                );
            }
            self.open.insert(
                s.pair,
                Open {
                    contact: s.contact,
                    base: [ctr(&p.va), ctr(&p.vb)],
                },
            );
        } else {
            for v in [&p.va, &p.vb] {
                let _ = writeln!(batch, "link set {} nomaster", v.switch_end());
            }
            if let Some(o) = self.open.remove(&s.pair) {
                self.close(o, p, [ctr(&p.va), ctr(&p.vb)], plan);
            }
        }
    }

    /// Counts contact `o` of pair `p`, whose switch ends now read `now`, if it ended after
    /// publishing.
    fn close(&mut self, o: Open, p: &Pair, now: [(u64, u64); 2], plan: &Plan) {
        let [(ra, ta), (rb, tb)] = now;
        let a_sent = ra.saturating_sub(o.base[0].0);
        let a_recv = ta.saturating_sub(o.base[0].1);
        let b_sent = rb.saturating_sub(o.base[1].0);
        let b_recv = tb.saturating_sub(o.base[1].1);
        let c = &plan.trace.contacts[o.contact];
        if c.end <= plan.publish_at {
            return;
        }
        self.tx[p.a as usize] += a_sent;
        self.rx[p.a as usize] += a_recv;
        self.tx[p.b as usize] += b_sent;
        self.rx[p.b as usize] += b_recv;
        if p.a == plan.origin {
            self.from_origin[p.b as usize] += b_recv;
        }
        if p.b == plan.origin {
            self.from_origin[p.a as usize] += a_recv;
        }
        // Trace contacts have a < b, like pairs.
        self.uses.push(ContactUse {
            contact: o.contact as u32,
            usable_s: c.end - c.start.max(plan.publish_at),
            bytes: [a_sent, b_sent],
        });
    }
}

/// Per node: bytes it sent on all its interfaces over the whole run (final counters).
pub(super) fn tx_totals(topo: &Topology, snap: &Counters, nodes: usize) -> Vec<u64> {
    let mut tx_total = vec![0u64; nodes];
    for p in &topo.pairs {
        let rx_of = |v: &Veth| snap.get(v.switch_end()).map(|c| c.0).unwrap_or(0);
        tx_total[p.a as usize] += rx_of(&p.va);
        tx_total[p.b as usize] += rx_of(&p.vb);
    }
    tx_total
}
