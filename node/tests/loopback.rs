//! Two real `mule run` processes on 127.0.0.1: a 20 MB bundle published into one reaches the
//! other (subscribed, dialling it through `session.peers`) byte-identical.
//!
//! No discovery and no root needed: the subscriber learns the publisher's session address from
//! `mule status --json` (the publisher listens on port 0).

mod common;

use std::time::Duration;

use common::{Node, NodeConfig, Publisher, mule, random_file};

const SIZE: usize = 20_000_000;

#[test]
fn twenty_megabytes_over_loopback_arrive_byte_identical() {
    let publisher = Publisher::new();
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = random_file(tmp.path(), "payload.bin", SIZE);

    let mut a = Node::start("A", &NodeConfig::loopback(&publisher.public_hex), None);
    // The listen address as the CLI reports it (port 0 was resolved by the OS).
    let status: serde_json::Value = serde_json::from_str(&mule(&[
        "status",
        "--json",
        "--data-dir",
        a.data_dir().to_str().expect("utf-8"),
    ]))
    .expect("status JSON");
    let listen = status["listen"][0]
        .as_str()
        .expect("a listen address")
        .to_string();
    assert!(
        listen.starts_with("127.0.0.1:") && !listen.ends_with(":0"),
        "{listen}"
    );

    let id = a.publish(&file, &publisher, "loopfw", "fw");
    let published = a.bundle(&id).expect("publisher lists its bundle");
    assert_eq!(published.pieces_have, published.pieces_total);
    assert_eq!(published.size, SIZE as u64);

    let mut cfg_b = NodeConfig::loopback(&publisher.public_hex).subscribe("fw");
    cfg_b.peers = vec![listen];
    let mut b = Node::start("B", &cfg_b, None);
    let (got, ok) = b.wait_bundle(
        &id,
        Duration::from_secs(120),
        Duration::from_millis(100),
        |b| b.pieces_have == b.pieces_total && b.pieces_total > 0,
    );
    assert!(
        ok,
        "B did not get the bundle within 120 s: {got:?}\n{}",
        b.log_tail(30)
    );
    b.assert_exported_identical(&id, &file);

    // The CLI's JSON listing agrees.
    let list: serde_json::Value = serde_json::from_str(&mule(&[
        "bundles",
        "--json",
        "--data-dir",
        b.data_dir().to_str().expect("utf-8"),
    ]))
    .expect("bundles JSON");
    let entry = list
        .as_array()
        .expect("array")
        .iter()
        .find(|e| e["id"] == id.as_str())
        .expect("bundle listed");
    assert_eq!(entry["state"], "installed", "{entry}");
    assert_eq!(entry["wanted"], true, "{entry}");
    assert_eq!(entry["size"], SIZE as u64, "{entry}");

    // Both sides saw the session.
    assert!(a.status().sessions <= 1 && b.status().sessions <= 1);

    // A session over `session.peers` is a contact like a discovered one: once it ends, B's
    // history lists A, with a PRoPHET predictability above zero.
    let a_id = a.status().node_id;
    a.terminate(Duration::from_secs(10));
    let b_dir = b.data_dir();
    let b_dir = b_dir.to_str().expect("utf-8");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let entry = loop {
        let contacts: serde_json::Value =
            serde_json::from_str(&mule(&["contacts", "--json", "--data-dir", b_dir]))
                .expect("contacts JSON");
        let found = contacts
            .as_array()
            .expect("array")
            .iter()
            .find(|e| e["node_id"] == a_id.as_str())
            .cloned();
        if let Some(e) = found {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B's contact history never listed A: {contacts}\n{}",
            b.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(entry["contacts"].as_u64() >= Some(1), "{entry}");
    assert!(
        entry["predictability"].as_f64().is_some_and(|p| p > 0.0),
        "a static-peer contact left PRoPHET at zero: {entry}"
    );
}
