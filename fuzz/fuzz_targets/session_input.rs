//! Feeds arbitrary bytes to an authenticated session (after a real handshake and summary
//! exchange in the in-memory harness): the state machine must never panic, and it either
//! keeps going or closes with a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mule_bundle::Priority;
use mule_engine::harness::{Catalog, MemNode, World, payload};

fuzz_target!(|data: &[u8]| {
    let mut catalog = Catalog::default();
    let content = payload(200_000, 1);
    let e = catalog.publish("fuzz", "fw", Priority::Normal, vec![], &content, 64 * 1024);
    let mut w = World::new(catalog);
    let mut a = MemNode::new(1, &[]);
    a.hold(&e, &content, 0..e.meta.pieces);
    w.add(a);
    w.add(MemNode::new(2, &["fw"]));
    let l = w.connect(0, 1, Some(100));
    w.run_for(20);
    for chunk in data.chunks(97) {
        let now = w.now;
        w.links[l].ends[1].session.handle_bytes(now, chunk);
        w.run_for(1);
    }
    w.run_for(50);
});
