//! Bit rot (issue 18, item 3): one flipped byte in a stored piece file.
//!
//! - The holder checks every piece it reads for sending against the manifest: the bad one is
//!   never sent, it is dropped from the bitfield (the bundle is incomplete again), counted
//!   (`mule_pieces_corrupt_total`) and logged with bundle id and piece index, and fetched
//!   again from another node.
//! - `mule verify` finds it (on the store directly and through the daemon), exits non-zero
//!   naming the piece; `--repair` drops it so it is fetched again.
//!
//! Real `mule run` daemons on loopback only (no discovery), each with its own data directory.

mod support;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use support::{Node, NodeConfig, content, free_port, publisher_key, sample, scrape, wait_for};

const PIECE: usize = 16_384;

fn publish(node: &Node, key: &Path, data: &[u8]) -> String {
    node.publish(
        key,
        "rot",
        "content.bin",
        data,
        &["--piece-size", &PIECE.to_string()],
    )
}

/// Flips one bit of piece `index` in the node's data file of bundle `id` (as bit rot would;
/// written with pwrite, so a running daemon reads the flipped byte from the page cache).
fn rot(node: &Node, id: &str, index: usize) {
    let path = node.data.join("store.pieces").join(id);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let at = (index * PIECE + 2) as u64;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read byte");
    f.write_all_at(&[b[0] ^ 0x04], at).expect("write byte");
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `mule verify` on `node` (offline or through its daemon): checks it fails naming piece
/// `index` of `id`, then repairs, then passes; the bundle is one piece short afterwards.
fn verify_finds_and_repairs(node: &Node, id: &str, index: usize, total: u64) {
    let out = node.mule(&["verify"]);
    let t = text(&out);
    assert!(!out.status.success(), "verify passed a rotten store:\n{t}");
    assert!(
        t.contains(&format!("bundle {id} piece {index}:")),
        "verify does not name the bad piece:\n{t}"
    );
    // Without --repair nothing changed.
    assert_eq!(
        node.pieces_have(id),
        total,
        "verify without --repair changed the store"
    );
    let out = node.mule(&["verify", "--repair", &id[..12]]);
    let t = text(&out);
    assert!(!out.status.success(), "verify --repair found nothing:\n{t}");
    assert!(
        t.contains(&format!("piece {index}:")) && t.contains("dropped"),
        "{t}"
    );
    assert_eq!(
        node.pieces_have(id),
        total - 1,
        "the bad piece is still claimed"
    );
    let out = node.mule(&["verify"]);
    assert!(out.status.success(), "verify after repair:\n{}", text(&out));
}

#[test]
fn verify_names_a_rotten_piece_offline_and_repair_makes_it_refetchable() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, key, hex) = publisher_key(keys.path(), "pub.key");
    let node = Node::new(&NodeConfig::fw(&hex));
    let id = publish(&node, &key, &content(3, 10 * PIECE));
    assert!(node.mule(&["verify"]).status.success());
    rot(&node, &id, 6);
    verify_finds_and_repairs(&node, &id, 6, 10);
    let b = node.bundle(&id).expect("bundle");
    assert_eq!(b["state"], "incomplete", "{b}");
}

#[test]
fn verify_through_the_daemon_names_and_repairs_a_rotten_piece() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, key, hex) = publisher_key(keys.path(), "pub.key");
    let mut node = Node::started(&NodeConfig::fw(&hex));
    let id = publish(&node, &key, &content(4, 8 * PIECE + 5));
    rot(&node, &id, 8);
    verify_finds_and_repairs(&node, &id, 8, 9);
    // The daemon did it: its socket is there and it still answers.
    assert!(node.data.join("mule.sock").exists());
    assert!(node.is_running());
    node.stop();
}

#[test]
fn a_rotten_piece_is_never_sent_and_the_holder_fetches_it_again() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, key, hex) = publisher_key(keys.path(), "pub.key");
    let data = content(5, 40 * PIECE);
    const BAD: usize = 17;

    // C publishes; A fetches the whole bundle from C; C goes away.
    let mut c = Node::started(&NodeConfig::fw(&hex));
    let id = publish(&c, &key, &data);
    let metrics_a = free_port();
    let mut a = Node::started(&NodeConfig {
        peers: vec![c.listen().to_string()],
        metrics_port: Some(metrics_a),
        ..NodeConfig::fw(&hex)
    });
    wait_for("A holds the bundle", Duration::from_secs(60), || {
        (a.pieces_have(&id) == 40).then_some(())
    });
    c.stop();

    // One flipped byte in A's copy; then B fetches from A only.
    rot(&a, &id, BAD);
    let mut b = Node::started(&NodeConfig {
        peers: vec![a.listen().to_string()],
        ..NodeConfig::fw(&hex)
    });
    // A notices when it reads the piece for B: drops it, counts it, logs bundle and index.
    wait_for("A drops the bad piece", Duration::from_secs(60), || {
        let m = scrape(metrics_a);
        (sample(&m, "mule_pieces_corrupt_total") == Some(1.0)).then_some(())
    });
    let log_a = a.log_text();
    assert!(
        log_a.contains("stored piece is bad") && log_a.contains(&format!("index={BAD}")),
        "A's log does not name the bad piece:\n{log_a}"
    );
    assert_eq!(a.pieces_have(&id), 39, "A still claims the bad piece");
    wait_for("B holds every good piece", Duration::from_secs(60), || {
        (b.pieces_have(&id) == 39).then_some(())
    });
    // B was sent no bad data: it rejected nothing and did not end the session with A over it.
    let log_b = b.log_text();
    assert!(
        !log_b.contains("bad piece") && !log_b.contains("BadPiece"),
        "B received bad data from A:\n{log_b}"
    );

    // C comes back and dials both: A fetches the piece again, B completes, A's store verifies.
    c.set_config(&NodeConfig {
        peers: vec![a.listen().to_string(), b.listen().to_string()],
        ..NodeConfig::fw(&hex)
    });
    c.start();
    wait_for("A repaired", Duration::from_secs(60), || {
        (a.pieces_have(&id) == 40).then_some(())
    });
    wait_for("B complete", Duration::from_secs(60), || {
        (b.pieces_have(&id) == 40).then_some(())
    });
    assert_eq!(b.export(&id), data);
    let out = a.mule(&["verify"]);
    assert!(
        out.status.success(),
        "A's store after repair:\n{}",
        text(&out)
    );
    a.stop();
    b.stop();
    c.stop();
}

#[test]
fn a_rotten_piece_is_fetched_again_within_running_sessions() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, key, hex) = publisher_key(keys.path(), "pub.key");
    let data = content(6, 24 * PIECE);
    const BAD: usize = 5;

    // C publishes and stays up; A fetches everything from C and keeps that session.
    let mut c = Node::started(&NodeConfig::fw(&hex));
    let id = publish(&c, &key, &data);
    let mut a = Node::started(&NodeConfig {
        peers: vec![c.listen().to_string()],
        ..NodeConfig::fw(&hex)
    });
    wait_for("A holds the bundle", Duration::from_secs(60), || {
        (a.pieces_have(&id) == 24).then_some(())
    });
    rot(&a, &id, BAD);
    // B reaches C only through A. A finds the bad piece when B asks for it, fetches it again
    // from C in the session it already has, and then serves it to B.
    let mut b = Node::started(&NodeConfig {
        peers: vec![a.listen().to_string()],
        ..NodeConfig::fw(&hex)
    });
    wait_for("B complete", Duration::from_secs(60), || {
        (b.pieces_have(&id) == 24).then_some(())
    });
    assert_eq!(b.export(&id), data);
    let log_a = a.log_text();
    assert!(
        log_a.contains("stored piece is bad"),
        "A never found the bad piece:\n{log_a}"
    );
    assert_eq!(
        log_a.matches("session up").count(),
        2,
        "A needed a new session to repair:\n{log_a}"
    );
    assert!(a.mule(&["verify"]).status.success());
    b.stop();
    a.stop();
    c.stop();
}
