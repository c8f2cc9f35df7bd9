//! Supersession in one contact (issue 13.2): two `mule run` processes in their own network
//! namespaces, the link shaped to 8 Mbit/s with `tbf`. B is halfway through release 1 of a
//! lineage when the publisher A publishes release 2; within that same contact B learns of
//! release 2, stops fetching release 1 (its requests are withdrawn, so A stops sending) and
//! fetches release 2. Ground truth for the bytes: the receiver veth's interface counters.

mod common;

use std::time::{Duration, Instant};

use common::{Lan, Node, NodeConfig, Publisher, assert_root, random_file};

/// Polls `f` every 100 ms until it returns `Some` or `limit` passes.
fn wait<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs root"]
fn netns_a_half_fetched_release_1_stops_in_the_contact_where_release_2_arrives() {
    assert_root("netns_a_half_fetched_release_1_stops_in_the_contact_where_release_2_arrives");
    let publisher = Publisher::new();
    let tmp = tempfile::tempdir().expect("temp dir");
    // 16 MiB: about 17 s at 8 Mbit/s.
    let big = random_file(tmp.path(), "fw-1.bin", 16 << 20);
    let small = random_file(tmp.path(), "fw-2.bin", 200_000);

    let lan = Lan::new();
    let ha = lan.host("a", 1);
    let hb = lan.host("b", 2);
    ha.shape();
    hb.shape();
    let mut a = Node::start("A", &NodeConfig::netns(&publisher.public_hex), Some(&ha.ns));
    let mut b = Node::start(
        "B",
        &NodeConfig::netns(&publisher.public_hex).subscribe("fw"),
        Some(&hb.ns),
    );
    let r1 = a.publish(&big, &publisher, "supfw", "fw");
    let total = a.bundle(&r1).expect("published").pieces_total;
    ha.up(&lan);
    hb.up(&lan);
    // Halfway (a quarter at least) through release 1 ...
    wait(
        "B to hold a quarter of release 1",
        Duration::from_secs(60),
        || (b.pieces_have(&r1) * 4 >= total).then_some(()),
    );
    let r2 = a.publish(&small, &publisher, "supfw", "fw");
    assert_eq!(a.bundle(&r2).expect("release 2").release, 2);
    // ... B learns of release 2 and fetches it in the same contact.
    let t_publish = Instant::now();
    wait("B to complete release 2", Duration::from_secs(30), || {
        let bb = b.bundle(&r2)?;
        (bb.pieces_have == bb.pieces_total).then_some(())
    });
    let learned_after = t_publish.elapsed();
    let at_learn = b.pieces_have(&r1);
    let bytes_learn = hb.link_bytes();
    // The same contact goes on for 5 s: before release 2, release 1 came at about 1 MB/s;
    // now only what was already on its way may land.
    std::thread::sleep(Duration::from_secs(5));
    let after = b.pieces_have(&r1);
    let moved = hb.link_bytes() - bytes_learn;
    let st = b.bundle(&r1).expect("release 1 still listed");
    eprintln!(
        "release 2 complete {learned_after:?} after its publish; release 1: {at_learn} of {total} \
         pieces then, {after} 5 s later; {moved} link bytes in those 5 s; state {:?}",
        st.state
    );
    assert!(
        st.state.starts_with("superseded"),
        "B's release 1 is {:?}",
        st.state
    );
    assert!(
        after < total && after <= at_learn + 4,
        "release 1 kept coming: {at_learn} -> {after} of {total} pieces"
    );
    assert!(
        moved < 512 * 1024,
        "{moved} bytes crossed B's link in the 5 s after release 2 was complete (8 Mbit/s \
         would be 5 MB)"
    );
    let sa = a.bundle(&r1).expect("A lists release 1");
    assert!(
        sa.state.starts_with("superseded"),
        "A's release 1: {:?}",
        sa.state
    );
    b.terminate(Duration::from_secs(10));
    a.terminate(Duration::from_secs(10));
}

#[test]
#[ignore = "needs root"]
fn netns_a_node_with_release_2_installed_fetches_nothing_of_release_1() {
    assert_root("netns_a_node_with_release_2_installed_fetches_nothing_of_release_1");
    let publisher = Publisher::new();
    let tmp = tempfile::tempdir().expect("temp dir");
    let big = random_file(tmp.path(), "fw-1.bin", 16 << 20);
    let small = random_file(tmp.path(), "fw-2.bin", 200_000);

    let lan = Lan::new();
    let hp = lan.host("p", 1);
    let ha = lan.host("a", 2);
    let hb = lan.host("b", 3);
    let cfg = NodeConfig::netns(&publisher.public_hex).subscribe("fw");
    let mut p = Node::start("P", &NodeConfig::netns(&publisher.public_hex), Some(&hp.ns));
    let mut a = Node::start("A", &cfg, Some(&ha.ns));
    let mut b = Node::start("B", &cfg, Some(&hb.ns));
    // A gets release 1 from the publisher (unshaped: this is set-up).
    let r1 = p.publish(&big, &publisher, "supfw", "fw");
    hp.up(&lan);
    ha.up(&lan);
    wait("A to complete release 1", Duration::from_secs(120), || {
        let x = a.bundle(&r1)?;
        (x.pieces_have == x.pieces_total).then_some(())
    });
    ha.cut();
    // B installs release 2 from the publisher, never having met A.
    let r2 = p.publish(&small, &publisher, "supfw", "fw");
    hb.up(&lan);
    wait("B to install release 2", Duration::from_secs(60), || {
        b.bundle(&r2)?.state.starts_with("installed").then_some(())
    });
    hp.cut();
    // Now B (release 2 installed) meets A (only release 1), on an 8 Mbit/s link.
    ha.shape();
    hb.shape();
    let bytes0 = hb.link_bytes();
    ha.up(&lan);
    // A learns of release 2 from B (which is how it knows to stop), and fetches it.
    wait("A to complete release 2", Duration::from_secs(60), || {
        let x = a.bundle(&r2)?;
        (x.pieces_have == x.pieces_total).then_some(())
    });
    let moved = hb.link_bytes() - bytes0;
    let st = b.bundle(&r1);
    eprintln!(
        "B's link carried {moved} bytes for the whole contact; B's release 1: {:?}; A's release 1: {:?}",
        st.as_ref().map(|x| (x.pieces_have, x.state.clone())),
        a.bundle(&r1).map(|x| x.state)
    );
    // Release 2 is 200 kB; release 1 would be 16.8 MB.
    assert!(
        moved < 2_000_000,
        "{moved} bytes on B's link: release 1 (16.8 MB) was fetched"
    );
    if let Some(st) = st {
        assert_eq!(st.pieces_have, 0, "B fetched pieces of release 1");
        assert!(
            st.state.starts_with("superseded"),
            "B's release 1: {}",
            st.state
        );
    }
    let sa = a.bundle(&r1).expect("A lists release 1");
    assert!(
        sa.state.starts_with("superseded") || sa.state.starts_with("installed"),
        "{}",
        sa.state
    );
    b.terminate(Duration::from_secs(10));
    a.terminate(Duration::from_secs(10));
    p.terminate(Duration::from_secs(10));
}
