//! Hostile peers against the pure engine (issue 18): request amplification, memory before
//! authentication, and neighbours that lie about what they hold. Every scenario runs in
//! virtual time; nothing here reads a clock.

use mule_engine::frame::{self, ByeCode, Message, MessageType};
use mule_engine::harness::{Catalog, CatalogEntry, MemNode, payload};
use mule_engine::penalty::Penalty;
use mule_engine::session::{
    Event, LocalView, MAX_COPIES_PER_PIECE, MAX_REPEATED_REQUESTS, Role, Session, SessionConfig,
    SessionSeed,
};
use mule_proto::{PieceRef, Priority};

const PIECE: u32 = 64 * 1024;

fn session(seed: u8, role: Role, view: LocalView) -> Session {
    Session::new(
        SessionConfig::default(),
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32]),
        role,
        0,
        SessionSeed {
            challenge: [seed; 32],
            salt: [seed; 16],
        },
        view,
    )
}

/// Moves bytes both ways until neither side has anything to send.
fn handshake(a: &mut Session, b: &mut Session) {
    for _ in 0..20 {
        let mut moved = false;
        while let Some(bytes) = a.poll_transmit() {
            b.handle_bytes(1, &bytes);
            moved = true;
        }
        while let Some(bytes) = b.poll_transmit() {
            a.handle_bytes(1, &bytes);
            moved = true;
        }
        while a.poll_event().is_some() {}
        while b.poll_event().is_some() {}
        if !moved {
            break;
        }
    }
    assert!(a.peer_holdings().is_some() && b.peer_holdings().is_some());
}

/// A sender holding a 4-piece bundle, authenticated with an attacker whose own session did
/// the handshake (after it, the attacker's frames are written by hand).
fn sender_and_attacker() -> (Session, CatalogEntry, Vec<u8>) {
    let mut catalog = Catalog::default();
    let data = payload(4 * PIECE as usize, 3);
    let e = catalog.publish("fw-1", "fw", Priority::Normal, vec![], &data, PIECE);
    let mut holder = MemNode::new(1, &[]);
    holder.hold(&e, &data, 0..e.meta.pieces);
    let mut sender = session(1, Role::Responder, holder.view.clone());
    let mut attacker = session(9, Role::Initiator, LocalView::default());
    handshake(&mut sender, &mut attacker);
    (sender, e, data)
}

/// What the sender did with one batch of input: piece frames it sent, and how it closed.
#[derive(Default)]
struct Sent {
    pieces: Vec<PieceRef>,
    closed: Option<(ByeCode, Penalty)>,
}

/// Feeds `input` to the sender, serves every piece it asks its driver for from `data`, and
/// collects what it transmits.
fn feed(s: &mut Session, input: &[u8], data: &[u8], out: &mut Sent) {
    s.handle_bytes(2, input);
    loop {
        let mut any = false;
        while let Some(ev) = s.poll_event() {
            any = true;
            match ev {
                Event::PieceRequested { piece } => {
                    let start = (piece.index * PIECE) as usize;
                    s.send_piece(piece, &data[start..start + PIECE as usize]);
                }
                Event::Closed { reason, penalty } => out.closed = Some((reason.code, penalty)),
                _ => {}
            }
        }
        while let Some(bytes) = s.poll_transmit() {
            any = true;
            let mut rest = &bytes[..];
            while let Ok(Some((m, used))) = frame::decode_frame(rest) {
                if let Message::Piece { piece, .. } = m {
                    out.pieces.push(piece);
                }
                rest = &rest[used..];
            }
        }
        if !any {
            return;
        }
    }
}

fn encoded(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    m.encode(&mut out);
    out
}

#[test]
fn a_piece_is_sent_once_however_often_it_is_requested() {
    let (mut s, e, data) = sender_and_attacker();
    let piece = PieceRef {
        bundle: e.meta.id,
        index: 0,
    };
    // The same piece, 1024 times per frame, in 3000 frames (the attack of issue 18).
    let req = encoded(&Message::Request(vec![piece; 1024]));
    let mut sent = Sent::default();
    let mut frames = 0;
    while sent.closed.is_none() && frames < 3000 {
        feed(&mut s, &req, &data, &mut sent);
        frames += 1;
    }
    assert_eq!(sent.pieces, vec![piece], "copies sent of one piece");
    assert_eq!(
        sent.closed,
        Some((ByeCode::RepeatedRequest, Penalty::Major)),
        "after {frames} frames"
    );
    assert!(
        frames as u32 <= MAX_REPEATED_REQUESTS + 2,
        "closed only after {frames} frames"
    );
}

#[test]
fn a_cancelled_piece_may_be_asked_for_again_a_bounded_number_of_times() {
    let (mut s, e, data) = sender_and_attacker();
    let piece = PieceRef {
        bundle: e.meta.id,
        index: 1,
    };
    let req = encoded(&Message::Request(vec![piece]));
    let cancel = encoded(&Message::Cancel(vec![piece]));
    let mut sent = Sent::default();
    for _ in 0..10 {
        feed(&mut s, &req, &data, &mut sent);
        feed(&mut s, &cancel, &data, &mut sent);
    }
    assert_eq!(
        sent.pieces.len(),
        MAX_COPIES_PER_PIECE as usize,
        "a cancel allows one more copy, up to the bound"
    );
    assert!(sent.closed.is_none(), "{:?}", sent.closed);
    // A few repeats do not end the session, but its end carries a penalty.
    feed(&mut s, &encoded(&Message::KeepAlive), &data, &mut sent);
    s.close_with(ByeCode::Normal, "done");
    feed(&mut s, &[], &data, &mut sent);
    assert_eq!(sent.closed, Some((ByeCode::Normal, Penalty::Minor)));
}

#[test]
fn an_honest_transfer_sends_every_piece_once_and_is_not_penalised() {
    let (mut s, e, data) = sender_and_attacker();
    let all: Vec<PieceRef> = (0..e.meta.pieces)
        .map(|index| PieceRef {
            bundle: e.meta.id,
            index,
        })
        .collect();
    let mut sent = Sent::default();
    // Duplicates of still-outstanding requests are ignored silently, as before.
    feed(
        &mut s,
        &[
            encoded(&Message::Request(all.clone())),
            encoded(&Message::Request(all.clone())),
        ]
        .concat(),
        &data,
        &mut sent,
    );
    assert_eq!(sent.pieces, all);
    s.close_with(ByeCode::Normal, "done");
    feed(&mut s, &[], &data, &mut sent);
    assert_eq!(sent.closed, Some((ByeCode::Normal, Penalty::None)));
}

#[test]
fn a_big_frame_header_before_hello_is_refused_at_once() {
    // The five header bytes of a 4 MiB Summary, before any Hello: the session must close
    // on the header, not wait for (and buffer) the body.
    let mut s = session(1, Role::Responder, LocalView::default());
    let mut header = (4u32 << 20).to_be_bytes().to_vec();
    header.push(MessageType::Summary as u8);
    s.handle_bytes(1, &header);
    let mut closed = None;
    while let Some(ev) = s.poll_event() {
        if let Event::Closed { reason, .. } = ev {
            closed = Some(reason.code);
        }
    }
    assert_eq!(closed, Some(ByeCode::UnexpectedMessage));
    // After the Hello, too: still not authenticated.
    let mut s = session(1, Role::Responder, LocalView::default());
    let mut peer = session(2, Role::Initiator, LocalView::default());
    let hello = peer.poll_transmit().expect("hello");
    s.handle_bytes(1, &hello);
    s.handle_bytes(1, &header);
    let mut closed = None;
    while let Some(ev) = s.poll_event() {
        if let Event::Closed { reason, .. } = ev {
            closed = Some(reason.code);
        }
    }
    assert_eq!(closed, Some(ByeCode::UnexpectedMessage));
    // A Hello announced larger than any Hello can be is refused from its header as well.
    let mut s = session(1, Role::Responder, LocalView::default());
    let mut big_hello = ((frame::MAX_HANDSHAKE_FRAME + 1) as u32)
        .to_be_bytes()
        .to_vec();
    big_hello.push(MessageType::Hello as u8);
    s.handle_bytes(1, &big_hello);
    let mut closed = None;
    while let Some(ev) = s.poll_event() {
        if let Event::Closed { reason, .. } = ev {
            closed = Some(reason.code);
        }
    }
    assert_eq!(closed, Some(ByeCode::OversizedFrame));
}

/// Lying neighbours (issue 18, item 7a): a peer advertises every piece and never sends any.
/// Once an honest peer is there, the liar's requests are taken over as soon as they are
/// past its patience (half a second here, no rate measured), not after the 10 s stall
/// timer; the liar's session is closed with `RequestsIgnored` and a major penalty.
#[test]
fn a_neighbour_that_advertises_everything_and_sends_nothing_is_taken_over_and_penalised() {
    use mule_engine::harness::World;
    use mule_engine::penalty::Verdict;
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
    let liar = w.connect(1, 0, Some(1000));
    w.run_for(100);
    let held = w.links[liar].ends[1].session.outstanding_requests();
    assert!(held > 0, "the liar was given no requests");
    w.connect(2, 0, Some(1000));
    let start = w.now;
    // 1.5 MB at 1 MB/s from the honest peer alone: 1.5 s, plus the liar's patience.
    assert!(
        w.run_until(2_500, |w| w.nodes[0].complete(&e.meta.id)),
        "not complete {} ms after the honest peer came: {} of {} pieces",
        w.now - start,
        w.nodes[0].pieces_of(&e.meta.id),
        e.meta.pieces
    );
    assert!(
        w.now < start + 10_000,
        "the stall timer, not a take-over, moved the requests"
    );
    let mut rest = Vec::new();
    for i in 0..e.meta.pieces {
        rest.extend_from_slice(
            &w.nodes[0].store[&PieceRef {
                bundle: e.meta.id,
                index: i,
            }],
        );
    }
    assert_eq!(rest, data);
    let closed = w.links[liar].ends[1]
        .closed
        .as_ref()
        .map(|(r, p)| (r.code, *p));
    assert_eq!(closed, Some((ByeCode::RequestsIgnored, Penalty::Major)));
    let liar_id = w.nodes[1].id;
    assert!(
        !matches!(
            w.nodes[0].penalties.check(&liar_id, w.now),
            Verdict::Allowed
        ),
        "the liar is not penalised"
    );
    // The honest peer is not penalised.
    let honest = w.nodes[2].id;
    assert_eq!(w.nodes[0].penalties.check(&honest, w.now), Verdict::Allowed);
}

/// A world where node 0 holds a bundle addressed to `target` with local predictability
/// `local_p`, and node 1 (a would-be carrier) advertises `claimed` towards `target`.
fn carry_world(local_p: f32, claimed: f32) -> (mule_engine::harness::World, CatalogEntry) {
    let mut catalog = Catalog::default();
    let data = payload(300_000, 23);
    let e = catalog.publish("fw-7", "fw", Priority::Normal, vec![], &data, PIECE);
    let target = mule_proto::NodeId([0x77; 32]);
    let e = catalog.set_audience(e.meta.id, vec![target]).unwrap();
    let mut w = mule_engine::harness::World::new(catalog);
    let mut a = MemNode::new(1, &[]);
    a.hold(&e, &data, 0..e.meta.pieces);
    a.view.predictabilities = vec![(target, local_p)];
    w.add(a);
    let mut b = MemNode::new(2, &[]);
    b.view.predictabilities = vec![(target, claimed)];
    w.add(b);
    (w, e)
}

/// Lying neighbours (item 7b): PRoPHET cannot produce a predictability above `1 − δ`
/// (0.99); a peer claiming 1.0 is believed 0.99, so it does not beat a holder at 0.99 and
/// is not offered the bundle. One claiming 0.99 does not either; a real improvement does.
#[test]
fn an_advertised_predictability_above_the_model_is_clamped() {
    let (mut w, e) = carry_world(0.99, 1.0);
    let l = w.connect(0, 1, Some(1000));
    w.run_for(1_000);
    assert!(
        !w.nodes[1].view.bundles.contains_key(&e.meta.id),
        "a claim of 1.0 attracted the bundle"
    );
    let peer = w.links[l].ends[0].session.peer_holdings().expect("summary");
    assert_eq!(peer.predictability(&mule_proto::NodeId([0x77; 32])), 0.99);
    let (mut w, e) = carry_world(0.5, 0.9);
    w.connect(0, 1, Some(1000));
    w.run_for(1_000);
    assert!(w.nodes[1].complete(&e.meta.id), "an honest better carrier");
}

/// Lying neighbours (item 7b): a peer whose holdings claims did not hold (it advertised
/// pieces and answered no request) is believed less about its predictabilities at the next
/// contact: its 0.9 towards the audience no longer beats the holder's 0.5.
#[test]
fn a_peer_whose_claims_did_not_hold_is_believed_less() {
    let (mut w, carry) = carry_world(0.5, 0.9);
    // First contact: the would-be carrier advertises a bundle node 0 wants and never
    // sends a piece of it. Node 0 does not hold the carry bundle yet.
    let carry_bundle = w.nodes[0]
        .view
        .bundles
        .remove(&carry.meta.id)
        .expect("held");
    let wanted_data = payload(1_000_000, 5);
    let wanted = w
        .catalog
        .publish("fw-8", "fw", Priority::Normal, vec![], &wanted_data, PIECE);
    w.nodes[0].view.channels = vec!["fw".into()];
    w.nodes[1].hold(&wanted, &wanted_data, 0..wanted.meta.pieces);
    w.nodes[1].mute = true;
    let first = w.connect(0, 1, Some(1000));
    assert!(
        w.run_until(15_000, |w| w.links[first].ends[0].closed.is_some()),
        "the liar's session did not end"
    );
    let liar = w.nodes[1].id;
    assert!(w.nodes[0].credibility.weight(&liar) < 0.2);
    // Later, node 0 holds the carry bundle and meets the liar again (after its backoff).
    w.nodes[0].view.bundles.insert(carry.meta.id, carry_bundle);
    w.nodes[0].penalties = mule_engine::penalty::PenaltyBook::default();
    w.nodes[1].mute = false;
    let second = w.connect(0, 1, Some(1000));
    w.run_for(1_000);
    let believed = w.links[second].ends[0]
        .session
        .peer_holdings()
        .expect("summary")
        .predictability(&mule_proto::NodeId([0x77; 32]));
    assert!(believed < 0.5, "believed {believed}");
    assert!(
        !w.nodes[1].view.bundles.contains_key(&carry.meta.id),
        "the discredited peer was offered the bundle"
    );
}

/// Lying neighbours (item 7b): an advertised carry quota of 2^40 bytes is believed only up
/// to the configured maximum.
#[test]
fn an_advertised_carry_quota_is_clamped() {
    let mut s = session(1, Role::Responder, LocalView::default());
    let mut peer = session(
        2,
        Role::Initiator,
        LocalView {
            carry_quota_bytes: 1 << 40,
            ..LocalView::default()
        },
    );
    handshake(&mut s, &mut peer);
    let max = SessionConfig::default().max_peer_carry_quota_bytes;
    assert!(max < 1 << 40);
    assert_eq!(s.peer_holdings().expect("summary").carry_quota_bytes, max);
    let mut s = session(1, Role::Responder, LocalView::default());
    let mut peer = session(
        2,
        Role::Initiator,
        LocalView {
            carry_quota_bytes: 1 << 40,
            ..LocalView::default()
        },
    );
    let mut quota = None;
    for _ in 0..5 {
        while let Some(b) = peer.poll_transmit() {
            s.handle_bytes(1, &b);
        }
        while let Some(b) = s.poll_transmit() {
            peer.handle_bytes(1, &b);
        }
        while let Some(ev) = s.poll_event() {
            if let Event::PeerAuthenticated {
                carry_quota_bytes, ..
            } = ev
            {
                quota = Some(carry_quota_bytes);
            }
        }
        while peer.poll_event().is_some() {}
    }
    assert_eq!(quota, Some(max));
}

/// The take-over of unanswered requests must not punish honest peers: a fast and a slow
/// honest sender share a download, every piece arrives once, and neither is penalised or
/// closed.
#[test]
fn honest_senders_of_different_speeds_are_not_taken_for_liars() {
    use mule_engine::harness::World;
    let mut catalog = Catalog::default();
    let data = payload(3_000_000, 17);
    let e = catalog.publish("fw-9", "fw", Priority::Normal, vec![], &data, PIECE);
    let mut w = World::new(catalog);
    w.add(MemNode::new(1, &["fw"]));
    for seed in [2, 3] {
        let mut s = MemNode::new(seed, &[]);
        s.hold(&e, &data, 0..e.meta.pieces);
        w.add(s);
    }
    let fast = w.connect(1, 0, Some(1000));
    let slow = w.connect(2, 0, Some(40));
    assert!(w.run_until(20_000, |w| w.nodes[0].complete(&e.meta.id)));
    assert!(
        w.nodes[0].received.values().all(|n| *n == 1),
        "a piece was received twice"
    );
    for l in [fast, slow] {
        assert!(
            w.links[l].ends[1].closed.is_none(),
            "{:?}",
            w.links[l].ends[1].closed
        );
        w.links[l].ends[1]
            .session
            .close_with(ByeCode::Normal, "done");
    }
    w.run_for(10);
    for l in [fast, slow] {
        let closed = w.links[l].ends[1]
            .closed
            .as_ref()
            .map(|(r, p)| (r.code, *p));
        assert_eq!(closed, Some((ByeCode::Normal, Penalty::None)), "link {l}");
    }
}
