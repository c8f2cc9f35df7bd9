//! Supersession in the engine (issue 13.2): a node that knows a newer release of a lineage
//! neither fetches, advertises nor offers the older one, and a transfer of the older one
//! stops within the contact in which the newer one becomes known. Real sessions over the
//! harness's in-memory links.

use mule_engine::harness::{Catalog, CatalogEntry, LinkSpec, MemNode, World, payload};
use mule_proto::{LineageId, Priority};

const PIECE: u32 = 64 * 1024;

/// Two releases of one lineage, 4 MiB each (64 pieces).
fn two_releases() -> (Catalog, [(CatalogEntry, Vec<u8>); 2]) {
    let mut cat = Catalog::default();
    let lineage = LineageId([7; 32]);
    let mut out = Vec::new();
    for release in 1..=2u64 {
        let data = payload(4 << 20, release);
        let e = cat.publish(
            &format!("fw-{release}"),
            "fw",
            Priority::Normal,
            vec![],
            &data,
            PIECE,
        );
        let e = cat
            .set_release(e.meta.id, lineage, release, vec![], [9; 32])
            .expect("published");
        out.push((e, data));
    }
    let [a, b]: [(CatalogEntry, Vec<u8>); 2] = out.try_into().expect("two");
    (cat, [a, b])
}

#[test]
fn a_node_that_knows_release_2_fetches_nothing_of_release_1_and_tells_the_peer() {
    let (cat, [(r1, d1), (r2, d2)]) = two_releases();
    let mut w = World::new(cat);
    // Node 0 holds only release 1 and does not subscribe; node 1 wants the channel and
    // already holds release 2.
    let mut old = MemNode::new(1, &[]);
    old.hold(&r1, &d1, 0..r1.meta.pieces);
    let mut new = MemNode::new(2, &["fw"]);
    new.hold(&r2, &d2, 0..r2.meta.pieces);
    w.add(old);
    w.add(new);
    let l = w.connect(1, 0, Some(10_000));
    // The holder of release 1 learns of release 2 (offered although it neither wants nor
    // would carry it) ...
    assert!(
        w.run_until(30_000, |w| w.nodes[0]
            .view
            .bundles
            .contains_key(&r2.meta.id)),
        "the node holding release 1 never learned of release 2"
    );
    w.run_for(5_000);
    // ... and the node holding release 2 fetched nothing of release 1.
    assert_eq!(w.nodes[1].pieces_of(&r1.meta.id), 0);
    // End 1 is the holder of release 1 (which may well carry release 2 away: that is
    // the other direction).
    let to_new = w.links[l].delivered[1];
    assert!(
        to_new < 64 * 1024,
        "{to_new} bytes crossed towards the node with release 2 for a superseded 4 MiB release"
    );
}

#[test]
fn a_transfer_of_release_1_stops_within_the_contact_once_release_2_is_known() {
    let (cat, [(r1, d1), (r2, d2)]) = two_releases();
    let mut w = World::new(cat);
    let mut src1 = MemNode::new(1, &[]);
    src1.hold(&r1, &d1, 0..r1.meta.pieces);
    let mut src2 = MemNode::new(3, &[]);
    src2.hold(&r2, &d2, 0..r2.meta.pieces);
    w.add(src1);
    w.add(MemNode::new(2, &["fw"]));
    w.add(src2);
    // A slow contact: release 1 would take about 40 s.
    let slow = LinkSpec {
        rate_bytes_per_s: Some(100_000),
        latency_ms: 5,
    };
    let l1 = w.connect_with(1, 0, slow);
    assert!(
        w.run_until(60_000, |w| w.nodes[1].pieces_of(&r1.meta.id) >= 16),
        "release 1 did not start flowing"
    );
    // Halfway through (about), a second neighbour brings release 2.
    w.connect(1, 2, Some(10_000));
    assert!(
        w.run_until(60_000, |w| w.nodes[1]
            .view
            .bundles
            .contains_key(&r2.meta.id)),
        "release 2's manifest never arrived"
    );
    let at_learn = w.nodes[1].pieces_of(&r1.meta.id);
    let wire_at_learn = w.links[l1].delivered[1];
    assert!(w.run_until(120_000, |w| w.nodes[1].complete(&r2.meta.id)));
    w.run_for(10_000);
    let after = w.nodes[1].pieces_of(&r1.meta.id);
    let wire_after = w.links[l1].delivered[1] - wire_at_learn;
    // What was already on the wire may still land; nothing more is asked for.
    assert!(
        after <= at_learn + 2,
        "release 1 kept coming after release 2 was known: {at_learn} -> {after} pieces"
    );
    assert!(
        wire_after <= 3 * PIECE as u64,
        "{wire_after} bytes of the old contact after release 2 was known"
    );
    assert!(after < r1.meta.pieces, "release 1 completed anyway");
}
