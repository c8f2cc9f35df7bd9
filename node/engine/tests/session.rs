//! Sessions wired together in virtual time through the in-memory harness.

use std::collections::HashSet;

use mule_engine::frame::{ByeCode, Hello, Message};
use mule_engine::harness::{Catalog, CatalogEntry, MemNode, World, payload};
use mule_engine::penalty::{Penalty, Verdict};
use mule_engine::session::{Event, LocalView, Role, Session, SessionConfig, SessionSeed};
use mule_proto::{BundleId, PieceRef, Priority};

const PIECE: u32 = 64 * 1024;

/// A world with a publisher (node 0, holds the bundle) and a subscriber (node 1).
fn pair(len: usize) -> (World, CatalogEntry, Vec<u8>) {
    let mut catalog = Catalog::default();
    let data = payload(len, 7);
    let e = catalog.publish("fw-1", "fw", Priority::Normal, vec![], &data, PIECE);
    let mut w = World::new(catalog);
    let mut a = MemNode::new(1, &[]);
    a.hold(&e, &data, 0..e.meta.pieces);
    w.add(a);
    w.add(MemNode::new(2, &["fw"]));
    (w, e, data)
}

fn assembled(node: &MemNode, e: &CatalogEntry) -> Vec<u8> {
    (0..e.meta.pieces)
        .flat_map(|i| {
            node.store[&PieceRef {
                bundle: e.meta.id,
                index: i,
            }]
                .to_vec()
        })
        .collect()
}

fn closed_code(w: &World, link: usize, side: usize) -> Option<(ByeCode, Penalty)> {
    w.links[link].ends[side]
        .closed
        .as_ref()
        .map(|(r, p)| (r.code, *p))
}

#[test]
fn hello_authenticates_both_sides() {
    let (mut w, _, _) = pair(1000);
    let l = w.connect(0, 1, None);
    w.settle();
    let (a, b) = (w.nodes[0].id, w.nodes[1].id);
    assert_eq!(w.links[l].ends[0].session.peer_id(), Some(b));
    assert_eq!(w.links[l].ends[1].session.peer_id(), Some(a));
    assert_eq!(w.links[l].ends[1].session.state_name(), "exchanging");
    assert!(w.links[l].ends[1].session.peer_holdings().is_some());
}

fn raw_session(seed: u8) -> Session {
    Session::new(
        SessionConfig::default(),
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32]),
        Role::Responder,
        0,
        SessionSeed {
            challenge: [seed; 32],
            salt: [seed; 16],
        },
        LocalView::default(),
    )
}

fn closed_event(s: &mut Session) -> Option<(ByeCode, Penalty)> {
    while let Some(ev) = s.poll_event() {
        if let Event::Closed { reason, penalty } = ev {
            return Some((reason.code, penalty));
        }
    }
    None
}

#[test]
fn wrong_signature_is_rejected() {
    let mut victim = raw_session(1);
    let impostor = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let claimed = mule_proto::NodeId(
        ed25519_dalek::SigningKey::from_bytes(&[3; 32])
            .verifying_key()
            .to_bytes(),
    );
    let mut wire = Vec::new();
    Message::Hello(Hello {
        node_id: claimed,
        challenge: [5; 32],
        capabilities: 0,
        carry_quota_bytes: 0,
        piece_size_max: 1 << 18,
        max_requests: 64,
    })
    .encode(&mut wire);
    // Signed with a key that is not the claimed node's.
    use ed25519_dalek::Signer;
    let sig = impostor.sign(b"whatever").to_bytes();
    Message::HelloAck { signature: sig }.encode(&mut wire);
    victim.handle_bytes(1, &wire);
    assert_eq!(
        closed_event(&mut victim),
        Some((ByeCode::AuthFailed, Penalty::Severe))
    );
    // The Bye goes out, then the session is closed.
    let bye = victim.poll_transmit().expect("bye queued");
    assert!(!bye.is_empty());
    while victim.poll_transmit().is_some() {}
    assert!(victim.is_closed());
}

#[test]
fn multi_piece_bundle_crosses_and_is_byte_identical() {
    let (mut w, e, data) = pair(2_000_000 + 123);
    // 8 Mbit/s = 1000 bytes/ms.
    let l = w.connect(0, 1, Some(1000));
    assert!(w.run_until(10_000, |w| w.nodes[1].complete(&e.meta.id)));
    assert_eq!(assembled(&w.nodes[1], &e), data);
    assert!(
        w.nodes[1].received.values().all(|&n| n == 1),
        "no duplicates"
    );
    // Efficiency: payload over bytes on the link.
    let on_link = w.links[l].delivered[0] + w.links[l].delivered[1];
    assert!(
        (data.len() as f64 / on_link as f64) > 0.99,
        "payload {} on link {on_link}",
        data.len()
    );
    // Contact efficiency: time is close to payload / rate.
    assert!(w.now < 2_200, "took {} ms", w.now);
}

#[test]
fn transfer_resumes_after_a_silent_cut_without_duplicates() {
    let (mut w, e, data) = pair(1_000_000);
    let l1 = w.connect(0, 1, Some(1000));
    w.run_for(400);
    let before = w.nodes[1].pieces_of(&e.meta.id);
    assert!(before > 0 && before < e.meta.pieces, "held {before}");
    let cut_at = w.now;
    w.cut(l1);
    // Both sides notice the dead link by the idle timeout (3 s), not later.
    assert!(w.run_until(5_000, |w| {
        w.links[l1].ends[0].closed.is_some() && w.links[l1].ends[1].closed.is_some()
    }));
    assert!(
        w.now - cut_at <= 3_002,
        "noticed after {} ms",
        w.now - cut_at
    );
    assert_eq!(
        closed_code(&w, l1, 1),
        Some((ByeCode::IdleTimeout, Penalty::None))
    );
    assert_eq!(w.nodes[1].claims.len(), 0, "claims released");
    let held = w.nodes[1].pieces_of(&e.meta.id);
    // Next contact: resumes from what is held.
    let l2 = w.connect(0, 1, Some(1000));
    assert!(w.run_until(10_000, |w| w.nodes[1].complete(&e.meta.id)));
    assert_eq!(assembled(&w.nodes[1], &e), data);
    assert!(
        w.nodes[1].received.values().all(|&n| n == 1),
        "no duplicates"
    );
    let sent_again = w.links[l2].ends[0].session.stats().pieces_sent;
    assert_eq!(sent_again, (e.meta.pieces - held) as u64);
}

#[test]
fn keepalives_hold_an_idle_link_and_a_one_way_link_dies() {
    let (mut w, _, _) = pair(1000);
    let l = w.connect(0, 1, None);
    w.settle();
    w.run_for(20_000);
    assert!(w.links[l].ends[0].closed.is_none() && w.links[l].ends[1].closed.is_none());
    // Bytes from 0 to 1 stop flowing: 1 notices within the idle timeout.
    w.links[l].flowing[0] = false;
    let t = w.now;
    assert!(w.run_until(4_000, |w| w.links[l].ends[1].closed.is_some()));
    assert!(w.now - t <= 3_001);
    assert_eq!(
        closed_code(&w, l, 1),
        Some((ByeCode::IdleTimeout, Penalty::None))
    );
}

/// An authenticated link between a victim (node 1, end 1) and a peer (node 0, end 0) whose
/// session is bypassed to inject raw bytes.
fn authenticated() -> (World, usize, CatalogEntry) {
    let (mut w, e, _) = pair(300_000);
    // The victim must not request anything yet: it learns the bundle only via the manifest.
    let l = w.connect(0, 1, Some(10));
    w.run_for(50);
    assert_eq!(w.links[l].ends[1].session.state_name(), "exchanging");
    (w, l, e)
}

fn inject(w: &mut World, l: usize, bytes: &[u8]) -> Option<(ByeCode, Penalty)> {
    let now = w.now;
    w.links[l].ends[1].session.handle_bytes(now, bytes);
    w.run_for(2);
    closed_code(w, l, 1)
}

#[test]
fn garbage_closes_with_malformed_frame() {
    let (mut w, l, _) = authenticated();
    let got = inject(&mut w, l, &[0, 0, 0, 4, 7, 0xff, 0xff, 0xff]);
    assert_eq!(got, Some((ByeCode::MalformedFrame, Penalty::Major)));
    let peer = w.nodes[0].id;
    assert!(matches!(
        w.nodes[1].penalties.check(&peer, w.now),
        Verdict::Backoff { .. }
    ));
}

#[test]
fn unknown_type_and_oversized_frames_close() {
    let (mut w, l, _) = authenticated();
    assert_eq!(
        inject(&mut w, l, &[0, 0, 0, 1, 200]),
        Some((ByeCode::UnknownMessage, Penalty::Major))
    );
    let (mut w, l, _) = authenticated();
    assert_eq!(
        inject(&mut w, l, &[0x10, 0, 0, 0, 6]),
        Some((ByeCode::OversizedFrame, Penalty::Major))
    );
}

#[test]
fn unsolicited_piece_closes() {
    let (mut w, l, e) = authenticated();
    let mut wire = Vec::new();
    Message::Piece {
        piece: PieceRef {
            bundle: BundleId([0xee; 32]),
            index: 0,
        },
        data: vec![1; 100],
    }
    .encode(&mut wire);
    let _ = e;
    assert_eq!(
        inject(&mut w, l, &wire),
        Some((ByeCode::UnsolicitedPiece, Penalty::Major))
    );
}

#[test]
fn forged_manifest_closes_with_severe_penalty() {
    let (mut w, l, _) = authenticated();
    let mut wire = Vec::new();
    Message::Manifest {
        bytes: b"forged".to_vec(),
    }
    .encode(&mut wire);
    assert_eq!(
        inject(&mut w, l, &wire),
        Some((ByeCode::BadManifest, Penalty::Severe))
    );
    let peer = w.nodes[0].id;
    assert!(matches!(
        w.nodes[1].penalties.check(&peer, w.now),
        Verdict::Banned { .. }
    ));
}

#[test]
fn bad_piece_data_closes_and_store_stays_intact() {
    let (mut w, e, _) = pair(500_000);
    w.nodes[0].corrupt_pieces = true;
    let l = w.connect(0, 1, Some(1000));
    assert!(w.run_until(2_000, |w| w.links[l].ends[1].closed.is_some()));
    assert_eq!(
        closed_code(&w, l, 1),
        Some((ByeCode::BadPiece, Penalty::Severe))
    );
    assert_eq!(w.nodes[1].pieces_of(&e.meta.id), 0);
    assert!(w.nodes[1].store.is_empty());
    // The sender learns why.
    assert!(w.run_until(100, |w| w.links[l].ends[0].closed.is_some()));
    let (reason, _) = w.links[l].ends[0].closed.clone().unwrap();
    assert!(reason.by_peer && reason.code == ByeCode::BadPiece);
}

#[test]
fn full_store_refuses_politely_and_stays_bounded() {
    let (mut w, e, _) = pair(1_000_000);
    w.nodes[1].capacity = Some(5);
    let l = w.connect(0, 1, Some(1000));
    w.run_for(3_000);
    assert_eq!(w.nodes[1].store.len(), 5);
    assert!(w.nodes[1].pieces_of(&e.meta.id) == 5);
    // No violation: the session stays up, kept alive, requesting nothing more.
    assert!(w.links[l].ends[1].closed.is_none() && w.links[l].ends[0].closed.is_none());
    assert_eq!(w.links[l].ends[1].session.outstanding_requests(), 0);
}

#[test]
fn two_senders_share_a_download_and_the_survivor_finishes_it() {
    let mut catalog = Catalog::default();
    let data = payload(3_000_000, 11);
    let e = catalog.publish("fw-2", "fw", Priority::Normal, vec![], &data, PIECE);
    let mut w = World::new(catalog);
    w.add(MemNode::new(1, &["fw"])); // receiver
    for seed in [2, 3] {
        let mut s = MemNode::new(seed, &[]);
        s.hold(&e, &data, 0..e.meta.pieces);
        w.add(s);
    }
    let l1 = w.connect(1, 0, Some(1000));
    let l2 = w.connect(2, 0, Some(1000));
    w.links[l1].tap = true;
    w.links[l2].tap = true;
    w.run_for(800);
    // Both senders contributed, and no piece was requested from both.
    let from1 = w.links[l1].ends[0].session.stats().pieces_sent;
    let from2 = w.links[l2].ends[0].session.stats().pieces_sent;
    assert!(from1 > 0 && from2 > 0, "{from1} {from2}");
    let r1: HashSet<PieceRef> = w.links[l1].requests_seen.keys().copied().collect();
    let r2: HashSet<PieceRef> = w.links[l2].requests_seen.keys().copied().collect();
    assert!(r1.is_disjoint(&r2));
    assert!(w.links[l1].requests_seen.values().all(|&n| n == 1));
    // Sender 1 vanishes mid-transfer.
    let pending: HashSet<PieceRef> = r1
        .iter()
        .copied()
        .filter(|p| !w.nodes[0].store.contains_key(p))
        .collect();
    assert!(!pending.is_empty());
    w.cut(l1);
    assert!(w.run_until(10_000, |w| w.nodes[0].complete(&e.meta.id)));
    assert_eq!(assembled(&w.nodes[0], &e), data);
    assert!(
        w.nodes[0].received.values().all(|&n| n == 1),
        "no duplicates"
    );
    // Pieces requested on both links are exactly the ones lost with sender 1.
    let r2: HashSet<PieceRef> = w.links[l2].requests_seen.keys().copied().collect();
    let both: HashSet<PieceRef> = r1.intersection(&r2).copied().collect();
    assert_eq!(both, pending);
    assert!(w.links[l2].requests_seen.values().all(|&n| n == 1));
}

#[test]
fn store_carry_forward_through_a_carrier() {
    let mut catalog = Catalog::default();
    let data = payload(2_000_000, 5);
    let e = catalog.publish("fw-3", "fw", Priority::Normal, vec![], &data, PIECE);
    let mut w = World::new(catalog);
    let mut a = MemNode::new(1, &[]);
    a.hold(&e, &data, 0..e.meta.pieces);
    w.add(a);
    w.add(MemNode::new(2, &[])); // carrier: not subscribed
    w.add(MemNode::new(3, &["fw"]));
    let ab = w.connect(0, 1, Some(1000));
    assert!(w.run_until(5_000, |w| w.nodes[1].complete(&e.meta.id)));
    w.cut(ab);
    let t = w.now;
    w.connect(1, 2, Some(1000));
    assert!(w.run_until(5_000, |w| w.nodes[2].complete(&e.meta.id)));
    assert_eq!(assembled(&w.nodes[2], &e), data);
    // 2 MB at 8 Mbit/s: the hop completes in about 2.1 s (target ≤ 3.5 s).
    assert!(w.now - t <= 2_300, "hop took {} ms", w.now - t);
}

#[test]
fn critical_bundle_arrives_before_bulk() {
    let mut catalog = Catalog::default();
    let bulk_data = payload(1_000_000, 1);
    let crit_data = payload(300_000, 2);
    let bulk = catalog.publish("bulk", "fw", Priority::Bulk, vec![], &bulk_data, PIECE);
    let crit = catalog.publish("crit", "fw", Priority::Critical, vec![], &crit_data, PIECE);
    let mut w = World::new(catalog);
    let mut a = MemNode::new(1, &[]);
    a.hold(&bulk, &bulk_data, 0..bulk.meta.pieces);
    a.hold(&crit, &crit_data, 0..crit.meta.pieces);
    w.add(a);
    w.add(MemNode::new(2, &["fw"]));
    w.connect(0, 1, Some(1000));
    assert!(w.run_until(5_000, |w| w.nodes[1].complete(&crit.meta.id)));
    assert!(!w.nodes[1].complete(&bulk.meta.id));
    assert!(w.run_until(5_000, |w| w.nodes[1].complete(&bulk.meta.id)));
}

#[test]
fn requests_to_a_stuck_peer_are_moved_to_another() {
    let mut catalog = Catalog::default();
    let data = payload(1_500_000, 13);
    let e = catalog.publish("fw-4", "fw", Priority::Normal, vec![], &data, PIECE);
    let mut w = World::new(catalog);
    w.add(MemNode::new(1, &["fw"]));
    for (seed, mute) in [(2, true), (3, false)] {
        let mut s = MemNode::new(seed, &[]);
        s.hold(&e, &data, 0..e.meta.pieces);
        s.mute = mute;
        w.add(s);
    }
    let stuck = w.connect(1, 0, Some(1000));
    w.run_for(100);
    assert!(w.links[stuck].ends[1].session.outstanding_requests() > 0);
    w.connect(2, 0, Some(1000));
    assert!(w.run_until(20_000, |w| w.nodes[0].complete(&e.meta.id)));
    assert_eq!(assembled(&w.nodes[0], &e), data);
    // The stuck peer lost its claims to the live one once past its patience, and the
    // session with it was closed: it advertised pieces and answered no request.
    assert_eq!(
        closed_code(&w, stuck, 1),
        Some((ByeCode::RequestsIgnored, Penalty::Major))
    );
    assert!(w.now < 10_000, "took {} ms", w.now);
}

/// Tiny deterministic generator for the seeded scenarios below.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn seeded_flapping_contacts_with_partial_senders_complete_without_duplicates() {
    for seed in 1..=12u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut catalog = Catalog::default();
        let data = payload(1_200_000, seed);
        let e = catalog.publish(
            &format!("fw-s{seed}"),
            "fw",
            Priority::Normal,
            vec![],
            &data,
            PIECE,
        );
        let mut w = World::new(catalog);
        w.add(MemNode::new(1, &["fw"]));
        // Three senders, each holding a random subset; together they hold everything.
        let mut holdings: Vec<Vec<u32>> = vec![Vec::new(); 3];
        for i in 0..e.meta.pieces {
            holdings[rng.below(3) as usize].push(i);
            if rng.below(2) == 0 {
                holdings[rng.below(3) as usize].push(i);
            }
        }
        for (k, h) in holdings.iter().enumerate() {
            let mut s = MemNode::new(10 + k as u8, &[]);
            s.hold(&e, &data, h.iter().copied());
            w.add(s);
        }
        let mut links: Vec<Option<usize>> = vec![None; 3];
        let mut t = 0;
        while !w.nodes[0].complete(&e.meta.id) && t < 60_000 {
            for (k, link) in links.iter_mut().enumerate() {
                let up = link.is_some_and(|l| w.links[l].ends[0].closed.is_none());
                if !up && rng.below(4) == 0 {
                    *link = Some(w.connect(k + 1, 0, Some(200 + rng.below(800))));
                } else if up && rng.below(5) == 0 {
                    w.cut(link.unwrap());
                }
            }
            let step = 200 + rng.below(800);
            w.run_for(step);
            t += step;
        }
        assert!(
            w.nodes[0].complete(&e.meta.id),
            "seed {seed}: incomplete after {t} ms"
        );
        assert_eq!(assembled(&w.nodes[0], &e), data, "seed {seed}");
        assert!(
            w.nodes[0].received.values().all(|&n| n == 1),
            "seed {seed}: a piece arrived twice"
        );
    }
}

#[test]
fn random_bytes_after_authentication_close_cleanly() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut closed = 0;
    for _ in 0..300 {
        let (mut w, l, _) = authenticated();
        let len = 1 + rng.below(200) as usize;
        let mut junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if rng.below(2) == 0 && len > 5 {
            // A plausible header so the body parser is reached.
            junk[0..4].copy_from_slice(&((len - 4) as u32).to_be_bytes());
            junk[4] = 1 + rng.below(11) as u8;
        }
        let now = w.now;
        w.links[l].ends[1].session.handle_bytes(now, &junk);
        w.run_for(5);
        if let Some((code, penalty)) = closed_code(&w, l, 1) {
            closed += 1;
            assert_ne!(code, ByeCode::Normal);
            if code != ByeCode::BadVersion {
                assert_ne!(penalty, Penalty::None, "{code:?}");
            }
        }
        // Nothing from junk reached the store.
        assert!(w.nodes[1].store.len() <= 5);
    }
    // Junk that is merely an incomplete frame keeps the session waiting; nearly all closes.
    assert!(closed >= 270, "only {closed} of 300 closed");
}

#[test]
fn request_window_respects_the_peers_limit() {
    let (mut w, e, _) = pair(2_000_000);
    w.cfg.max_peer_requests = 3;
    let l = w.connect(0, 1, Some(1000));
    let mut max_seen = 0;
    while !w.nodes[1].complete(&e.meta.id) && w.now < 10_000 {
        w.run_for(1);
        max_seen = max_seen.max(w.links[l].ends[1].session.outstanding_requests());
    }
    assert!(w.nodes[1].complete(&e.meta.id));
    assert!(max_seen <= 3 && max_seen > 0, "outstanding {max_seen}");
    assert!(w.links[l].ends[0].closed.is_none());
}

#[test]
fn a_peer_that_authenticates_but_never_summarises_is_dropped() {
    // Drive a real session by hand: answer its Hello and sign its challenge, then only
    // send keep-alives.
    let mut victim = raw_session(1);
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let id = mule_proto::NodeId(key.verifying_key().to_bytes());
    let victim_id = victim.local_id();
    let mut wire = Vec::new();
    Message::Hello(Hello {
        node_id: id,
        challenge: [8; 32],
        capabilities: 0,
        carry_quota_bytes: 0,
        piece_size_max: 1 << 18,
        max_requests: 64,
    })
    .encode(&mut wire);
    let mut transcript = mule_engine::session::HELLO_ACK_TAG.to_vec();
    transcript.extend_from_slice(&[1; 32]); // the victim's challenge (raw_session seed)
    transcript.extend_from_slice(id.as_bytes());
    transcript.extend_from_slice(victim_id.as_bytes());
    use ed25519_dalek::Signer;
    Message::HelloAck {
        signature: key.sign(&transcript).to_bytes(),
    }
    .encode(&mut wire);
    victim.handle_bytes(10, &wire);
    assert_eq!(victim.peer_id(), Some(id));
    assert_eq!(victim.state_name(), "exchanging");
    let mut keepalive = Vec::new();
    Message::KeepAlive.encode(&mut keepalive);
    let mut t = 10;
    let got = loop {
        if let Some(c) = closed_event(&mut victim) {
            break c;
        }
        t += 500;
        assert!(t < 10_000, "never closed");
        victim.handle_bytes(t, &keepalive);
        if victim.poll_timeout().is_some_and(|d| d <= t) {
            victim.handle_timeout(t);
        }
        while victim.poll_transmit().is_some() {}
    };
    assert_eq!(got, (ByeCode::HandshakeTimeout, Penalty::Minor));
    assert!(t <= 5_500, "closed at {t}");
}

#[test]
fn pipelining_keeps_a_long_delay_link_full() {
    let (mut w, e, data) = pair(2_000_000);
    let l = w.connect(0, 1, Some(1000));
    w.links[l].latency_ms = 50;
    assert!(w.run_until(10_000, |w| w.nodes[1].complete(&e.meta.id)));
    assert_eq!(assembled(&w.nodes[1], &e), data);
    // 2 s of payload at 8 Mbit/s plus a handful of 50 ms one-way delays: no stop-and-wait.
    assert!(w.now <= 2_000 + 6 * 50 + 100, "took {} ms", w.now);
}

#[test]
fn ten_second_contacts_with_silent_cuts_finish_20_mb_within_5_percent_overhead() {
    // The scenario at engine level: 8 Mbit/s, contact 10 s, silent cut 20 s.
    let (mut w, e, data) = pair(20_000_000);
    let mut links = Vec::new();
    let mut contacts = 0;
    while !w.nodes[1].complete(&e.meta.id) {
        contacts += 1;
        assert!(
            contacts <= 4,
            "not complete after {} contacts",
            contacts - 1
        );
        let l = w.connect(0, 1, Some(1000));
        w.links[l].latency_ms = 2;
        links.push(l);
        w.run_until(10_000, |w| w.nodes[1].complete(&e.meta.id));
        w.cut(l);
        w.run_for(20_000);
        assert!(w.links[l].ends.iter().all(|end| end.closed.is_some()));
    }
    assert_eq!(assembled(&w.nodes[1], &e), data);
    assert!(w.nodes[1].received.values().all(|&n| n == 1));
    let on_link: u64 = links
        .iter()
        .map(|&l| w.links[l].delivered[0] + w.links[l].delivered[1])
        .sum();
    let ratio = on_link as f64 / data.len() as f64;
    eprintln!("link bytes / payload = {ratio:.4} over {contacts} contacts");
    assert!(ratio <= 1.05, "link bytes / payload = {ratio:.4}");
    assert_eq!(contacts, 3, "20 MB at 1 MB/s needs 3 contacts of 10 s");
}

#[test]
fn timer_moves_forward_while_output_waits_for_a_blocked_transport() {
    let mut s = raw_session(1);
    // Hello is queued but the driver never drains it (transport blocked).
    let mut t = 0;
    for _ in 0..10 {
        let due = s.poll_timeout().expect("armed");
        assert!(due > t, "timer at {due} does not move past {t}");
        t = due;
        s.handle_timeout(t);
        if s.poll_timeout().is_none() {
            break;
        }
    }
}

#[test]
fn transport_eof_closes_the_session_once() {
    let mut s = raw_session(1);
    s.handle_transport_closed(5);
    let ev = closed_event(&mut s);
    assert_eq!(ev, Some((ByeCode::HandshakeTimeout, Penalty::None)));
    assert!(s.is_closed() && s.poll_transmit().is_none() && s.poll_timeout().is_none());
    s.handle_transport_closed(6);
    assert_eq!(s.poll_event(), None);
}

#[test]
fn a_slow_neighbour_does_not_hold_back_a_fast_one() {
    let mut catalog = Catalog::default();
    let data = payload(3_000_000, 17);
    let e = catalog.publish("fw-5", "fw", Priority::Normal, vec![], &data, PIECE);
    let mut w = World::new(catalog);
    w.add(MemNode::new(1, &["fw"]));
    for seed in [2, 3] {
        let mut s = MemNode::new(seed, &[]);
        s.hold(&e, &data, 0..e.meta.pieces);
        w.add(s);
    }
    // 50 KB/s and 1 MB/s: the fast link alone needs about 3 s.
    let slow = w.connect(1, 0, Some(50));
    let fast = w.connect(2, 0, Some(1000));
    assert!(w.run_until(20_000, |w| w.nodes[0].complete(&e.meta.id)));
    assert_eq!(assembled(&w.nodes[0], &e), data);
    let (s, f) = (
        w.links[slow].ends[0].session.stats().pieces_sent,
        w.links[fast].ends[0].session.stats().pieces_sent,
    );
    eprintln!(
        "slow link sent {s} pieces, fast {f}; complete at {} ms",
        w.now
    );
    assert!(s > 0 && f > s, "slow {s} fast {f}");
    assert!(w.now <= 4_500, "took {} ms", w.now);
}

#[test]
fn both_directions_at_once() {
    let mut catalog = Catalog::default();
    let data = payload(1_000_000, 21);
    let e = catalog.publish("fw-6", "fw", Priority::Normal, vec![], &data, PIECE);
    let mut w = World::new(catalog);
    let mut a = MemNode::new(1, &["fw"]);
    a.hold(&e, &data, (0..e.meta.pieces).filter(|i| i % 2 == 0));
    let mut b = MemNode::new(2, &["fw"]);
    b.hold(&e, &data, (0..e.meta.pieces).filter(|i| i % 2 == 1));
    w.add(a);
    w.add(b);
    let l = w.connect(0, 1, Some(1000));
    assert!(w.run_until(5_000, |w| w.nodes[0].complete(&e.meta.id)
        && w.nodes[1].complete(&e.meta.id)));
    assert_eq!(assembled(&w.nodes[0], &e), data);
    assert_eq!(assembled(&w.nodes[1], &e), data);
    // Each half crossed once, in parallel: about the time of one half.
    assert!(w.now < 700, "took {} ms", w.now);
    let s = |side: usize| w.links[l].ends[side].session.stats().pieces_sent;
    assert_eq!(s(0) + s(1), e.meta.pieces as u64);
}

#[test]
fn carry_goes_only_to_a_peer_that_predicts_the_audience_better() {
    let mut catalog = Catalog::default();
    let data = payload(300_000, 23);
    let e = catalog.publish("fw-7", "fw", Priority::Normal, vec![], &data, PIECE);
    let target = mule_proto::NodeId([0x77; 32]);
    let e = catalog.set_audience(e.meta.id, vec![target]).unwrap();
    let mut w = World::new(catalog);
    let mut a = MemNode::new(1, &[]);
    a.hold(&e, &data, 0..e.meta.pieces);
    a.view.predictabilities = vec![(target, 0.2)];
    w.add(a);
    let mut good = MemNode::new(2, &[]);
    good.view.predictabilities = vec![(target, 0.8)];
    w.add(good);
    let mut poor = MemNode::new(3, &[]);
    poor.view.predictabilities = vec![(target, 0.1)];
    w.add(poor);
    w.connect(0, 1, Some(1000));
    w.connect(0, 2, Some(1000));
    w.run_for(2_000);
    assert!(w.nodes[1].complete(&e.meta.id), "better carrier got it");
    assert!(
        !w.nodes[2].view.bundles.contains_key(&e.meta.id),
        "worse one was not offered it"
    );
}

#[test]
fn requests_shed_when_the_link_slows_are_made_again() {
    // One sender whose link drops from 1 MB/s to 20 KB/s: the receiver sheds the
    // requests the slow link cannot serve in time (the sender drops them on Cancel).
    // Once the link is fast again those pieces must be requested again, or the
    // transfer stalls for good (seen over Bluetooth after an adapter came back).
    let (mut w, e, data) = pair(2_000_000);
    let l = w.connect(1, 0, Some(1000));
    w.run_for(400);
    w.links[l].rate_bytes_per_s = Some(20_000);
    w.run_for(4_000);
    assert!(
        !w.nodes[1].complete(&e.meta.id),
        "finished before the slow phase ended"
    );
    w.links[l].rate_bytes_per_s = Some(1_000_000);
    assert!(
        w.run_until(10_000, |w| w.nodes[1].complete(&e.meta.id)),
        "stalled with {} of {} pieces",
        w.nodes[1].view.bundles[&e.meta.id].have.count(),
        e.meta.pieces
    );
    assert_eq!(assembled(&w.nodes[1], &e), data);
}
