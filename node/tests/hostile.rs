//! "Hostile peer" (issue 4): a scripted client attacks a running `mule` daemon on loopback
//! with garbage, oversized frame headers, forged manifests and corrupted pieces. Each attack
//! must be rejected with the Bye code PROTOCOL.md prescribes, the peer penalised, the node
//! kept up and its store intact; afterwards honest peers (a scripted one and a second real
//! `mule` process) still deliver bundles to it, byte-identical.
//!
//! The scripted client is the engine's own sans-IO `Session` (so Hello/HelloAck/Summary are
//! done correctly), with hand-made frames written between the session's frames.

mod support;

use std::time::Duration;

use mule_engine::frame::{ByeCode, MAX_CONTROL_FRAME, MAX_PIECE_FRAME, Message, MessageType};
use mule_engine::session::Event;
use support::{
    Node, NodeConfig, Peer, TestBundle, bye_code, content, fresh_key, publisher_key,
    read_until_closed,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const PIECE: u32 = 4096;

/// What must survive every attack: the bundles and their progress, and one complete
/// bundle's content byte for byte.
struct Baseline {
    bundles: Vec<(String, u64)>,
    complete_id: String,
    complete_data: Vec<u8>,
}

impl Baseline {
    fn check(&self, node: &mut Node, after: &str) {
        assert!(node.is_running(), "daemon died after {after}");
        let st = node.status();
        assert!(st["node_id"].is_string(), "status after {after}: {st}");
        for (id, have) in &self.bundles {
            assert_eq!(
                node.pieces_have(id),
                *have,
                "bundle {id} changed after {after}"
            );
        }
        assert!(
            node.export(&self.complete_id) == self.complete_data,
            "exported bundle differs after {after}"
        );
    }
}

/// Sends `bytes` on a fresh connection and returns the daemon's answer: its frames, whether
/// it closed the connection, and when.
async fn raw_attack(addr: std::net::SocketAddr, bytes: &[u8]) -> (Vec<Message>, bool, Duration) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    // The daemon's handshake timeout is 5 s: a close well before that is a decision about
    // these bytes, not a timeout.
    read_until_closed(&mut s, Duration::from_secs(8)).await
}

fn assert_rejected(what: &str, got: (Vec<Message>, bool, Duration), code: ByeCode) {
    let (msgs, closed, took) = got;
    assert!(closed, "{what}: daemon kept the connection open");
    assert_eq!(
        bye_code(&msgs),
        Some(code),
        "{what}: expected Bye({code:?}), got frames {msgs:?}"
    );
    assert!(
        took < Duration::from_millis(4500),
        "{what}: closed only after {took:?} (a timeout, not a rejection)"
    );
}

/// Reconnects as `key` and expects the daemon to refuse the session because the peer is
/// penalised (it closes right after authentication with `Busy`).
async fn assert_penalised(addr: std::net::SocketAddr, key: ed25519_dalek::SigningKey, what: &str) {
    let mut p = Peer::connect(addr, key, Vec::new(), Vec::new()).await;
    let start = std::time::Instant::now();
    let reason = p.until_closed(Duration::from_secs(5)).await;
    assert!(
        reason.by_peer && reason.code == ByeCode::Busy && reason.detail.contains("penalised"),
        "{what}: reconnect of the offender was not refused as penalised: {reason:?}"
    );
    assert!(
        start.elapsed() < Duration::from_millis(4500),
        "{what}: refusal took {:?}",
        start.elapsed()
    );
    assert!(
        !p.events
            .iter()
            .any(|e| matches!(e, Event::SummaryReceived { .. })),
        "{what}: the daemon sent a summary to a penalised peer"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn hostile_peer_is_rejected_and_node_stays_intact() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (pub_key, pub_path, pub_hex) = publisher_key(keys.path(), "publisher.key");
    let metrics_port = support::free_port();
    let mut a = Node::new(&NodeConfig {
        metrics_port: Some(metrics_port),
        ..NodeConfig::fw(&pub_hex)
    });
    a.start();
    let addr = a.listen();
    let metric = |series: &str| {
        let text = support::scrape(metrics_port);
        support::sample(&text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
    };

    // A complete bundle that every attack must leave untouched.
    let b0_data = content(1, 300_000);
    let b0_file = a.path("b0.bin");
    std::fs::write(&b0_file, &b0_data).expect("write b0");
    let b0_id = a
        .ok(&[
            "publish",
            b0_file.to_str().expect("path"),
            "--name",
            "base",
            "--version",
            "1",
            "--key",
            pub_path.to_str().expect("path"),
            "--audience",
            "fw",
        ])
        .trim()
        .to_string();
    let base = Baseline {
        bundles: a
            .bundles()
            .iter()
            .map(|b| {
                (
                    b["id"].as_str().expect("id").to_string(),
                    b["pieces_have"].as_u64().expect("have"),
                )
            })
            .collect(),
        complete_id: b0_id.clone(),
        complete_data: b0_data.clone(),
    };
    assert_eq!(base.bundles.len(), 1, "one bundle published");
    assert_eq!(a.export(&b0_id), b0_data, "published bundle exports intact");

    // (a) Garbage before any handshake.
    let http = b"GET / HTTP/1.1\r\nHost: mule\r\n\r\n";
    assert_rejected(
        "HTTP request",
        raw_attack(addr, http).await,
        ByeCode::UnknownMessage,
    );
    assert_rejected(
        "zero-length frames",
        raw_attack(addr, &[0u8; 16]).await,
        ByeCode::MalformedFrame,
    );
    let mut bad_hello = 40u32.to_be_bytes().to_vec();
    bad_hello.push(MessageType::Hello as u8);
    bad_hello.extend_from_slice(&[0xff; 39]);
    assert_rejected(
        "Hello with a garbage body",
        raw_attack(addr, &bad_hello).await,
        ByeCode::MalformedFrame,
    );
    base.check(&mut a, "garbage");

    // (a2) Impersonation: a peer claiming an honest node's id without its key fails
    // authentication, and the honest node is not penalised for it.
    let honest = fresh_key();
    let hello = Message::Hello(mule_engine::frame::Hello {
        node_id: mule_contacts::NodeId(honest.verifying_key().to_bytes()),
        challenge: support::random32(),
        capabilities: 0,
        carry_quota_bytes: 0,
        piece_size_max: 256 * 1024,
        max_requests: 256,
    });
    let mut frames = Vec::new();
    hello.encode(&mut frames);
    Message::HelloAck { signature: [7; 64] }.encode(&mut frames);
    assert_rejected(
        "impersonation with a bad HelloAck",
        raw_attack(addr, &frames).await,
        ByeCode::AuthFailed,
    );
    let mut p = Peer::connect(addr, honest, Vec::new(), Vec::new()).await;
    p.handshake().await;
    p.session.close_with(ByeCode::Normal, "done");
    let r = p.until_closed(Duration::from_secs(5)).await;
    assert_eq!(
        r.code,
        ByeCode::Normal,
        "impersonated node could not connect"
    );
    base.check(&mut a, "impersonation");

    // (b) Oversized frame headers: refused from the 5-byte header alone (the body is never
    // sent, so a daemon that waited to buffer it would hang until its handshake timeout).
    let mut huge = 0xffff_fff0u32.to_be_bytes().to_vec();
    huge.push(MessageType::Piece as u8);
    assert_rejected(
        "4 GiB Piece header",
        raw_attack(addr, &huge).await,
        ByeCode::OversizedFrame,
    );
    let mut hello_over = ((MAX_CONTROL_FRAME + 1) as u32).to_be_bytes().to_vec();
    hello_over.push(MessageType::Hello as u8);
    assert_rejected(
        "Hello one byte over its limit",
        raw_attack(addr, &hello_over).await,
        ByeCode::OversizedFrame,
    );
    // After authentication: the peer is known, so it is also penalised.
    let k_over = fresh_key();
    let mut p = Peer::connect(addr, k_over.clone(), Vec::new(), Vec::new()).await;
    p.handshake().await;
    let mut piece_over = ((MAX_PIECE_FRAME + 1) as u32).to_be_bytes().to_vec();
    piece_over.push(MessageType::Piece as u8);
    p.inject(&piece_over).await;
    let r = p.until_closed(Duration::from_secs(5)).await;
    assert!(
        r.by_peer && r.code == ByeCode::OversizedFrame,
        "oversized Piece after handshake: {r:?}"
    );
    assert_penalised(addr, k_over, "oversized frame").await;
    base.check(&mut a, "oversized frames");

    // (b2) More requests outstanding than the daemon advertised in its Hello.
    let k_req = fresh_key();
    let mut p = Peer::connect(addr, k_req.clone(), Vec::new(), Vec::new()).await;
    p.handshake().await;
    let max = p.session.peer_hello().expect("daemon hello").max_requests as usize;
    let flood: Vec<mule_bundle::PieceRef> = (0..=max as u32)
        .map(|index| mule_bundle::PieceRef {
            bundle: mule_bundle::BundleId(support::random32()),
            index,
        })
        .collect();
    p.inject_message(&Message::Request(flood)).await;
    let r = p.until_closed(Duration::from_secs(5)).await;
    assert!(
        r.by_peer && r.code == ByeCode::TooManyRequests,
        "{} requests with max_requests = {max}: {r:?}",
        max + 1
    );
    assert_penalised(addr, k_req, "request flood").await;
    base.check(&mut a, "request flood");

    // (c) Forged manifests after a real handshake.
    let forged_src = TestBundle::new(
        &pub_key,
        "forged",
        "fw",
        content(2, 5 * PIECE as usize),
        PIECE,
    );
    // c1: a bit flipped in the signature (the envelope ends with the 64 signature bytes).
    let mut flipped = forged_src.vm.to_bytes();
    *flipped.last_mut().expect("non-empty") ^= 0x01;
    // c2: signed by an attacker key, then relabelled as the trusted publisher's (same
    // length, still canonical CBOR: only the signature check can catch it).
    let attacker = fresh_key();
    let attacker_vm = TestBundle::new(
        &attacker,
        "forged",
        "fw",
        content(3, 5 * PIECE as usize),
        PIECE,
    )
    .vm;
    let mut relabelled = attacker_vm.to_bytes();
    let apub = attacker.verifying_key().to_bytes();
    let at = relabelled
        .windows(32)
        .position(|w| w == apub)
        .expect("publisher key in the manifest");
    relabelled[at..at + 32].copy_from_slice(&pub_key.verifying_key().to_bytes());
    for (what, bytes) in [
        ("flipped signature", flipped),
        ("relabelled publisher", relabelled),
    ] {
        assert!(
            mule_bundle::VerifiedManifest::decode(&bytes).is_err(),
            "{what}: test forgery must not verify"
        );
        let k = fresh_key();
        let mut p = Peer::connect(addr, k.clone(), Vec::new(), Vec::new()).await;
        p.handshake().await;
        p.inject_message(&Message::Manifest {
            bytes: bytes.clone(),
        })
        .await;
        let r = p.until_closed(Duration::from_secs(5)).await;
        assert!(
            r.by_peer && r.code == ByeCode::BadManifest,
            "{what}: expected Bye(BadManifest), got {r:?}"
        );
        let forged_id = mule_bundle::BundleId(*blake3::hash(&bytes).as_bytes()).to_string();
        for b in a.bundles() {
            assert!(
                b["id"] != forged_id
                    && b["id"] != forged_src.id()
                    && b["id"] != attacker_vm.id().to_string(),
                "{what}: forged manifest was stored: {b}"
            );
        }
        assert_penalised(addr, k, what).await;
        base.check(&mut a, what);
    }
    assert!(
        a.log_text().contains("bad manifest from peer"),
        "the daemon did not log the bad manifest"
    );
    assert_eq!(
        metric("mule_manifests_rejected_total{reason=\"invalid\"}"),
        2.0,
        "forged manifests counted"
    );
    // The penalty is per peer: an unknown peer still gets a full session.
    let mut fresh = Peer::connect(addr, fresh_key(), Vec::new(), Vec::new()).await;
    fresh.handshake().await;
    fresh.session.close_with(ByeCode::Normal, "done");
    fresh.until_closed(Duration::from_secs(5)).await;

    // (d) Wrong piece data for a bundle the daemon wants: a trusted manifest is offered, the
    // daemon requests pieces; the first answer is genuine, the second corrupted.
    let victim = TestBundle::new(
        &pub_key,
        "victim",
        "fw",
        content(4, 8 * PIECE as usize),
        PIECE,
    );
    let vid = victim.id();
    let k_bad = fresh_key();
    let mut p = Peer::connect(addr, k_bad.clone(), vec![victim.local(0..8)], Vec::new()).await;
    p.handshake().await;
    let mut requested = Vec::new();
    while requested.len() < 2 {
        let piece = p
            .until("a piece request", Duration::from_secs(10), |e| match e {
                Event::PieceRequested { piece } => Some(*piece),
                _ => None,
            })
            .await;
        assert_eq!(piece.bundle, victim.vm.id(), "request for another bundle");
        requested.push(piece);
    }
    let good = requested[0];
    assert!(
        p.session.send_piece(good, victim.piece(good.index)),
        "good piece queued"
    );
    let bad = requested[1];
    let mut corrupt = victim.piece(bad.index).to_vec();
    corrupt[100] ^= 0x40;
    assert!(p.session.send_piece(bad, &corrupt), "bad piece queued");
    let r = p.until_closed(Duration::from_secs(5)).await;
    assert!(
        r.by_peer && r.code == ByeCode::BadPiece,
        "corrupted piece: expected Bye(BadPiece), got {r:?}"
    );
    // Exactly the genuine piece is stored, nothing of the corrupted one.
    support::wait_for(
        "the genuine piece to be stored",
        Duration::from_secs(5),
        || (a.pieces_have(&vid) == 1).then_some(()),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(a.pieces_have(&vid), 1, "pieces held of the attacked bundle");
    let exp = a.mule(&[
        "export",
        &vid,
        "--out",
        a.path("victim.out").to_str().expect("path"),
    ]);
    assert!(!exp.status.success(), "an incomplete bundle exported");
    assert!(
        a.log_text().contains("peer sent a bad piece"),
        "the daemon did not log the bad piece"
    );
    assert_eq!(
        metric("mule_pieces_rejected_total{reason=\"invalid\"}"),
        1.0,
        "corrupted piece counted"
    );
    assert_penalised(addr, k_bad, "bad piece").await;
    base.check(&mut a, "bad piece");

    // (d2) A genuine piece that was never requested: the daemon knows the bundle (its
    // manifest was offered) but the peer advertised no pieces, so nothing was asked for.
    let unasked = TestBundle::new(
        &pub_key,
        "unasked",
        "fw",
        content(6, 3 * PIECE as usize),
        PIECE,
    );
    let k_push = fresh_key();
    let mut p = Peer::connect(addr, k_push.clone(), vec![unasked.local([])], Vec::new()).await;
    p.handshake().await;
    support::wait_for(
        "the offered manifest to be stored",
        Duration::from_secs(5),
        || a.bundle(&unasked.id()).map(|_| ()),
    );
    let mut frame = Vec::new();
    mule_engine::frame::encode_piece(
        mule_bundle::PieceRef {
            bundle: unasked.vm.id(),
            index: 0,
        },
        unasked.piece(0),
        &mut frame,
    );
    p.inject(&frame).await;
    let r = p.until_closed(Duration::from_secs(5)).await;
    assert!(
        r.by_peer && r.code == ByeCode::UnsolicitedPiece,
        "unrequested piece: expected Bye(UnsolicitedPiece), got {r:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        a.pieces_have(&unasked.id()),
        0,
        "an unrequested piece was stored"
    );
    assert_penalised(addr, k_push, "unsolicited piece").await;
    base.check(&mut a, "unsolicited piece");

    // Every violation so far ended a session as a protocol failure: 3 garbage, 3 oversized,
    // 1 request flood, 2 forged manifests, 1 bad piece, 1 unsolicited piece.
    assert!(
        metric("mule_sessions_failed_total{reason=\"protocol\"}") >= 11.0,
        "protocol failures not counted"
    );

    // (e1) An honest scripted peer completes the attacked bundle: the daemon asks only for
    // the pieces it lacks (never the genuine one it stored), and the result is identical.
    let mut p = Peer::connect(addr, fresh_key(), vec![victim.local(0..8)], Vec::new()).await;
    p.handshake().await;
    let mut served = Vec::new();
    let end = std::time::Instant::now() + Duration::from_secs(20);
    let mut rounds = 0u32;
    loop {
        p.step().await;
        for e in std::mem::take(&mut p.events) {
            if let Event::PieceRequested { piece } = e {
                assert_ne!(piece, good, "the daemon asked again for a piece it stored");
                assert!(p.session.send_piece(piece, victim.piece(piece.index)));
                served.push(piece.index);
            }
        }
        assert!(
            p.closed.is_none() && !p.eof,
            "honest session ended: {:?}",
            p.closed
        );
        rounds += 1;
        if rounds.is_multiple_of(10) && a.pieces_have(&vid) == 8 {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "honest peer could not complete the bundle"
        );
    }
    served.sort_unstable();
    assert_eq!(served.len(), 7, "pieces served: {served:?}");
    assert_eq!(a.export(&vid), victim.data, "completed bundle differs");
    p.session.close_with(ByeCode::Normal, "done");
    p.until_closed(Duration::from_secs(5)).await;

    // (e2) A second real node, dialling the attacked one, still delivers a new bundle.
    let mut cfg_b = NodeConfig::fw(&pub_hex);
    cfg_b.peers = vec![addr.to_string()];
    let mut b = Node::new(&cfg_b);
    b.start();
    let y_data = content(5, 700_000);
    let y_file = b.path("y.bin");
    std::fs::write(&y_file, &y_data).expect("write y");
    let y_id = b
        .ok(&[
            "publish",
            y_file.to_str().expect("path"),
            "--name",
            "after-attack",
            "--version",
            "1",
            "--key",
            pub_path.to_str().expect("path"),
            "--audience",
            "fw",
        ])
        .trim()
        .to_string();
    support::wait_for(
        "the honest node's bundle to arrive",
        Duration::from_secs(30),
        || {
            let have = a.bundle(&y_id)?;
            (have["pieces_have"] == have["pieces_total"]).then_some(())
        },
    );
    assert_eq!(
        a.export(&y_id),
        y_data,
        "bundle from the honest node differs"
    );
    base.check(&mut a, "the honest transfers");
    b.stop();
    if std::env::var_os("MULE_TEST_SHOW_LOG").is_some() {
        eprintln!("--- contacts ---\n{}", a.json(&["contacts"]));
    }
    a.stop();
    if std::env::var_os("MULE_TEST_SHOW_LOG").is_some() {
        eprintln!("--- daemon log ---\n{}", a.log_text());
    }
}

/// A flood of connections that never authenticate must not take more than a bounded number
/// of sockets and buffers: beyond `session.max_sessions` (plus some room for handshakes) the
/// daemon should refuse at once, and honest peers must still get through.
#[tokio::test(flavor = "current_thread")]
async fn connection_flood_is_bounded() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, _, pub_hex) = publisher_key(keys.path(), "publisher.key");
    let mut cfg = NodeConfig::fw(&pub_hex);
    cfg.session_extra = vec!["max_sessions = 4".into()];
    let mut a = Node::new(&cfg);
    a.start();
    let addr = a.listen();
    let pid = a.pid().expect("pid");
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let idle_fds = fds();
    // 200 connections that send nothing (they would each live until the 5 s handshake
    // timeout, holding a socket, a task and a 256 KiB read buffer).
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(TcpStream::connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = fds().saturating_sub(idle_fds);
    drop(flood);
    assert!(
        held <= 4 * 4,
        "{held} sockets held by 200 unauthenticated connections with max_sessions = 4"
    );
    // Once the flood ends, an honest peer gets a session at once (not after a backlog of
    // handshake timeouts).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut p = Peer::connect(addr, fresh_key(), Vec::new(), Vec::new()).await;
    p.handshake().await;
    assert!(a.is_running());
    a.stop();
}

/// Reads frames until one matches `f` (or panics after 5 s / on EOF).
async fn read_frame<T>(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    mut f: impl FnMut(&Message) -> Option<T>,
) -> T {
    use tokio::io::AsyncReadExt;
    let end = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        while let Some((m, used)) = mule_engine::frame::decode_frame(buf).expect("daemon frame") {
            buf.drain(..used);
            if let Some(v) = f(&m) {
                return v;
            }
            assert!(!matches!(m, Message::Bye { .. }), "daemon said {m:?}");
        }
        let mut chunk = [0u8; 4096];
        let left = end.saturating_duration_since(std::time::Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut chunk))
            .await
            .expect("daemon frame in time")
            .expect("read");
        assert!(n > 0, "daemon closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The handshake done by hand from node/PROTOCOL.md (as a third-party implementation
/// would), checking the daemon's own HelloAck signature against the documented transcript;
/// then summaries that break the documented bounds or the canonical CBOR rules are refused
/// with the documented codes, and the peer penalised.
#[tokio::test(flavor = "current_thread")]
async fn hand_written_handshake_then_bad_summaries() {
    use ed25519_dalek::{Signer, Verifier};
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, _, pub_hex) = publisher_key(keys.path(), "publisher.key");
    let mut a = Node::new(&NodeConfig::fw(&pub_hex));
    a.start();
    let addr = a.listen();
    let daemon_id: [u8; 32] = hex::decode(a.status()["node_id"].as_str().expect("id"))
        .expect("hex")
        .try_into()
        .expect("32 bytes");

    let transcript = |challenge: &[u8; 32], signer: &[u8; 32], verifier: &[u8; 32]| {
        let mut m = b"mule/session/v1/hello-ack".to_vec();
        m.extend_from_slice(challenge);
        m.extend_from_slice(signer);
        m.extend_from_slice(verifier);
        m
    };
    // Summary bodies, hand-encoded: [salt, filter, complete, manifests, channels,
    // want_bundles, predictabilities, carry_quota_bytes, expected_contact_ms], the filter
    // being the documented map {"b": [{"b": bits, "k": k}], "e": 0.01, "t": 10, "i": 0,
    // "c": 10} followed by `tail` inside its byte string.
    let summary = |k: &[u8], bits: &[u8], tail: &[u8]| {
        let mut filter = vec![0xa5, 0x61, b'b', 0x81, 0xa2, 0x61, b'b'];
        filter.push(0x40 + bits.len() as u8);
        filter.extend_from_slice(bits);
        filter.extend_from_slice(&[0x61, b'k']);
        filter.extend_from_slice(k);
        filter.extend_from_slice(&[0x61, b'e', 0xfb]);
        filter.extend_from_slice(&0.01f64.to_be_bytes());
        filter.extend_from_slice(&[0x61, b't', 0x0a, 0x61, b'i', 0x00, 0x61, b'c', 0x0a]);
        filter.extend_from_slice(tail);
        let mut body = vec![0x89, 0x50];
        body.extend_from_slice(&[9; 16]);
        body.extend_from_slice(&[0x58, filter.len() as u8]);
        body.extend_from_slice(&filter);
        body.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00, 0xf6]);
        let mut frame = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        frame.push(MessageType::Summary as u8);
        frame.extend_from_slice(&body);
        frame
    };
    let cases: [(&str, Vec<u8>, Option<ByeCode>); 6] = [
        ("a valid summary", summary(&[0x03], &[0; 8], &[]), None),
        (
            "k = 17",
            summary(&[0x11], &[0; 8], &[]),
            Some(ByeCode::BadSummary),
        ),
        (
            "k = 0",
            summary(&[0x00], &[0; 8], &[]),
            Some(ByeCode::BadSummary),
        ),
        (
            "a stage with fewer bits than hashes",
            summary(&[0x09], &[0; 1], &[]),
            Some(ByeCode::BadSummary),
        ),
        (
            "bytes after the filter map",
            summary(&[0x03], &[0; 8], &[0x00]),
            Some(ByeCode::BadSummary),
        ),
        (
            "k as a text string",
            summary(&[0x61, b'3'], &[0; 8], &[]),
            Some(ByeCode::BadSummary),
        ),
    ];
    for (what, frame, expect) in cases {
        let key = fresh_key();
        let me = key.verifying_key().to_bytes();
        let my_challenge = support::random32();
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut out = Vec::new();
        Message::Hello(mule_engine::frame::Hello {
            node_id: mule_contacts::NodeId(me),
            challenge: my_challenge,
            capabilities: 0,
            carry_quota_bytes: 0,
            piece_size_max: 256 * 1024,
            max_requests: 256,
        })
        .encode(&mut out);
        s.write_all(&out).await.expect("write hello");
        let mut buf = Vec::new();
        let hello = read_frame(&mut s, &mut buf, |m| match m {
            Message::Hello(h) => Some(h.clone()),
            _ => None,
        })
        .await;
        assert_eq!(
            hello.node_id.as_bytes(),
            &daemon_id,
            "daemon's Hello names its node id"
        );
        let sig = key.sign(&transcript(&hello.challenge, &me, &daemon_id));
        out.clear();
        Message::HelloAck {
            signature: sig.to_bytes(),
        }
        .encode(&mut out);
        s.write_all(&out).await.expect("write ack");
        let theirs = read_frame(&mut s, &mut buf, |m| match m {
            Message::HelloAck { signature } => Some(*signature),
            _ => None,
        })
        .await;
        ed25519_dalek::VerifyingKey::from_bytes(&daemon_id)
            .expect("daemon key")
            .verify(
                &transcript(&my_challenge, &daemon_id, &me),
                &ed25519_dalek::Signature::from_bytes(&theirs),
            )
            .expect("the daemon's HelloAck signs the documented transcript");
        read_frame(&mut s, &mut buf, |m| {
            matches!(m, Message::Summary(_)).then_some(())
        })
        .await;
        s.write_all(&frame).await.expect("write summary");
        match expect {
            None => {
                // Accepted: the session stays up and the daemon keeps it alive.
                read_frame(&mut s, &mut buf, |m| {
                    matches!(m, Message::KeepAlive).then_some(())
                })
                .await;
                assert_eq!(a.status()["sessions"], 1, "{what}: no session registered");
            }
            Some(code) => {
                let (mut msgs, closed, took) =
                    read_until_closed(&mut s, Duration::from_secs(5)).await;
                let mut rest = &buf[..];
                while let Ok(Some((m, used))) = mule_engine::frame::decode_frame(rest) {
                    msgs.insert(0, m);
                    rest = &rest[used..];
                }
                assert_rejected(what, (msgs, closed, took), code);
                assert_penalised(addr, key, what).await;
            }
        }
    }
    assert!(a.is_running());
    a.stop();
}

/// A peer that broke the protocol (or was refused as penalised) is no contact: otherwise
/// anyone can grow the contact history without bound with throw-away node ids.
#[tokio::test(flavor = "current_thread")]
async fn violators_are_not_recorded_as_contacts() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (pub_key, _, pub_hex) = publisher_key(keys.path(), "publisher.key");
    let mut a = Node::new(&NodeConfig::fw(&pub_hex));
    a.start();
    let addr = a.listen();
    let mut forged = TestBundle::new(&pub_key, "f", "fw", content(7, PIECE as usize), PIECE)
        .vm
        .to_bytes();
    *forged.last_mut().expect("bytes") ^= 1;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let k = fresh_key();
        ids.push(hex::encode(k.verifying_key().to_bytes()));
        let mut p = Peer::connect(addr, k.clone(), Vec::new(), Vec::new()).await;
        p.handshake().await;
        p.inject_message(&Message::Manifest {
            bytes: forged.clone(),
        })
        .await;
        assert_eq!(
            p.until_closed(Duration::from_secs(5)).await.code,
            ByeCode::BadManifest
        );
        assert_penalised(addr, k, "forged manifest").await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let contacts = a.json(&["contacts"]);
    a.stop();
    for id in ids {
        assert!(
            !contacts.to_string().contains(&id),
            "violator {id} recorded as a contact: {contacts}"
        );
    }
}
