//! The harness as a simulator needs it: event-driven time, exact fractional rates,
//! latency, disconnects, forgetting finished links, and the record log.

use mule_engine::harness::{Catalog, LinkSpec, MemNode, PieceOutcome, Record, World, payload};
use mule_proto::Priority;

fn pair(len: usize) -> (World, mule_engine::harness::CatalogEntry) {
    let mut cat = Catalog::default();
    let data = payload(len, 3);
    let e = cat.publish("fw-1", "fw", Priority::Normal, vec![], &data, 64 * 1024);
    let mut w = World::new(cat);
    let mut a = MemNode::new(1, &[]);
    a.hold(&e, &data, 0..e.meta.pieces);
    w.add(a);
    w.add(MemNode::new(2, &["fw"]));
    (w, e)
}

#[test]
fn an_idle_link_costs_steps_per_keepalive_not_per_ms() {
    // Nothing to send: after the handshake only keep-alives (one a second per side).
    let (mut w, _) = pair(1000);
    w.nodes[0].view.bundles.clear();
    w.nodes[0].store.clear();
    let l = w.connect(0, 1, Some(1000));
    w.run_for(60_000);
    assert!(w.links[l].ends[0].closed.is_none() && w.links[l].ends[1].closed.is_none());
    assert!(w.steps < 400, "{} steps for 60 s idle", w.steps);
    assert_eq!(w.now, 60_000);
}

#[test]
fn a_fractional_rate_is_kept_exactly_and_latency_delays_delivery() {
    // 500 kbit/s = 62.5 bytes per ms: once the transfer runs, 8 s carry 500 kB (give or
    // take one ms) from the sender, as a link stepped ms by ms would; no fraction is lost.
    let (mut w, e) = pair(2_000_000);
    let spec = LinkSpec {
        rate_bytes_per_s: Some(62_500),
        latency_ms: 40,
    };
    let l = w.connect_with(1, 0, spec);
    w.record = true;
    w.run_for(2_000);
    let before = w.links[l].delivered[1];
    w.run_for(8_000);
    let on_wire = w.links[l].delivered[1] - before;
    assert!(
        (on_wire as i64 - 500_000).abs() <= 125,
        "{on_wire} bytes in 8 s at 62.5 B/ms"
    );
    assert!(w.run_until(60_000, |w| w.nodes[1].complete(&e.meta.id)));
    // With 40 ms each way, the handshake and the first request take round trips: the
    // first piece cannot have been stored before 4 one-way delays plus its own 1 s.
    let first = w
        .log
        .iter()
        .find_map(|r| match r {
            Record::Piece {
                at,
                outcome: PieceOutcome::Stored,
                ..
            } => Some(*at),
            _ => None,
        })
        .expect("a piece was stored");
    assert!(first >= 4 * 40 + 1000, "first piece stored at {first} ms");
    assert!(
        w.log
            .iter()
            .any(|r| matches!(r, Record::Summary { node: 1, .. })),
        "summaries are recorded"
    );
}

#[test]
fn a_disconnected_link_finishes_releases_claims_and_can_be_forgotten() {
    let (mut w, e) = pair(2_000_000);
    let l = w.connect(1, 0, Some(100));
    w.run_for(3_000);
    assert!(!w.nodes[1].complete(&e.meta.id));
    assert!(w.forget(l).is_none(), "an open link is not forgotten");
    w.disconnect(l);
    assert!(w.links[l].finished());
    let held = w.nodes[1].pieces_of(&e.meta.id);
    let link = w.forget(l).expect("finished");
    assert!(link.ends.iter().all(|e| e.closed.is_some()));
    assert!(w.links.get(l).is_none());
    // A new contact picks up where the first one stopped: no claim is left behind.
    let l2 = w.connect(1, 0, None);
    w.run_for(1_000);
    assert!(w.nodes[1].complete(&e.meta.id), "held {held} before");
    assert!(w.links[l2].ends[0].session.stats().pieces_received > 0);
    assert_eq!(
        w.nodes[1].received.values().max(),
        Some(&1),
        "no piece twice"
    );
}
