//! The session driver: feeds one [`mule_engine::session::Session`] from a byte
//! stream and carries out what it asks for.
//!
//! The task owns the session and the read half of the stream; a writer task
//! owns the write half behind a small bounded channel, so the session hands
//! out bytes only as fast as the link takes them (its own buffers stay at
//! their low-water marks). Store work (verify + commit, piece reads) runs on
//! the store thread; its answers come back on `outcomes`.

use std::sync::Arc;
use std::time::Instant;

use mule_bundle::store::Origin;
use mule_bundle::{PieceRef, VerifiedManifest};
use mule_contacts::{NodeId, Timestamp};
use mule_engine::frame::{ByeCode, Phase};
use mule_engine::session::{Event, PieceRejection, Role, Session, SessionSeed};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc};

use super::admission::Ticket;
use super::store::PutOutcome;
use super::{Ctx, Notice};
use crate::metrics::{RejectReason, SessionFailure, Transport as MTransport};

/// Any full-duplex byte stream a session can run on (TCP, Bluetooth L2CAP).
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// A boxed session stream.
pub type Stream = Box<dyn Duplex>;

/// Frames queued for the writer task (each up to one piece frame).
const WRITE_QUEUE: usize = 4;
/// Read buffer size once the peer is authenticated.
const READ_BUF: usize = 256 * 1024;
/// Read buffer size until then: the handshake's frames are small (the engine refuses any
/// other frame before authentication), so an unauthenticated connection costs 4 KiB, not
/// 256 KiB.
const HANDSHAKE_READ_BUF: usize = 4096;

enum Outcome {
    Put(PieceRef, PutOutcome),
    Fetched(PieceRef, Option<Vec<u8>>),
}

/// A connected stream a session can run on, and what the daemon knows about it.
pub struct Conn {
    stream: Stream,
    /// A second handle to a TCP session's socket. When the session ends because the peer
    /// went silent (idle or handshake timeout: the link is gone), the socket is closed
    /// abortively (`SO_LINGER` 0): unsent data is dropped instead of being retransmitted
    /// into the dead link for minutes. Those retransmissions also keep the kernel
    /// re-resolving the peer's address (ARP), so that when the link came back the next
    /// connection waited for the neighbour entry's 1 s retry timer, or failed with "no
    /// route to host".
    abort: Option<socket2::Socket>,
    transport: MTransport,
    /// The peer's address, for logs and the session registry.
    address: String,
    /// An inbound connection's slot among those not yet authenticated.
    admission: Option<Ticket>,
}

impl Conn {
    /// A TCP connection (accepted or dialled): Nagle off, and the abort handle kept.
    pub fn tcp(s: tokio::net::TcpStream, address: String) -> Conn {
        let _ = s.set_nodelay(true);
        let abort = socket2::SockRef::from(&s).try_clone().ok();
        Conn {
            stream: Box::new(s),
            abort,
            transport: MTransport::Tcp,
            address,
            admission: None,
        }
    }

    /// The connection holds `ticket` until it authenticates.
    pub fn admitted(mut self, ticket: Ticket) -> Conn {
        self.admission = Some(ticket);
        self
    }

    /// A Bluetooth L2CAP connection (closed gracefully in every case).
    #[cfg(feature = "bluetooth")]
    pub fn bluetooth(stream: Stream, address: String) -> Conn {
        Conn {
            stream,
            abort: None,
            transport: MTransport::Bluetooth,
            address,
            admission: None,
        }
    }
}

/// Runs one session on `conn` to its end.
pub async fn run(ctx: Arc<Ctx>, conn: Conn, role: Role, expected: Option<NodeId>) {
    let Conn {
        stream,
        abort,
        transport: mtransport,
        address,
        admission,
    } = conn;
    let transport = mtransport.as_str();
    let sid = ctx.new_sid();
    let view = match ctx.local_view().await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a session: store unavailable");
            return;
        }
    };
    let mut cfg = ctx.session_cfg.clone();
    cfg.claim_owner = sid;
    cfg.expected_peer = expected;
    let mut seed = SessionSeed {
        challenge: [0; 32],
        salt: [0; 16],
    };
    if let Err(e) =
        getrandom::fill(&mut seed.challenge).and_then(|_| getrandom::fill(&mut seed.salt))
    {
        // A predictable challenge would let a recorded handshake be replayed.
        tracing::error!(error = %e, "no randomness for the session challenge; not starting the session");
        return;
    }
    let mut s = Session::new(
        cfg,
        ctx.identity.signing_key().clone(),
        role,
        ctx.now_ms(),
        seed,
        view,
    );
    ctx.metrics.inc_sessions_opened();
    let started = Instant::now();
    let started_wall = Timestamp::now();

    let (mut rd, mut wr) = tokio::io::split(stream);
    let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let metrics = ctx.metrics.clone();
    let writer = tokio::spawn(async move {
        while let Some(buf) = wrx.recv().await {
            if wr.write_all(&buf).await.is_err() {
                return;
            }
            metrics.add_bytes_sent(mtransport, buf.len() as u64);
        }
        let _ = wr.shutdown().await;
    });
    let mut notices = ctx.notices.subscribe();
    // Node-wide "store full" (disk or quota): no requests while it holds.
    let mut store_full = ctx.store_full.subscribe();
    if *store_full.borrow_and_update() {
        s.set_store_full(true);
    }
    let (otx, mut orx) = mpsc::channel::<Outcome>(1024);
    let (close_tx, mut close_rx) = mpsc::channel::<()>(1);
    let mut buf = vec![0u8; HANDSHAKE_READ_BUF];
    let mut out: Option<Vec<u8>> = None;
    let mut peer: Option<NodeId> = None;
    let mut eof = false;
    let mut close_tx = Some(close_tx);
    // Only a registered session that ended without a violation is a contact worth
    // remembering: otherwise anyone could fill the history with throw-away node ids.
    let mut registered = false;
    let mut violated = false;
    let mut dead_link = false;

    loop {
        {
            let mut sh = ctx.shared.lock().expect("shared state");
            let sh = &mut *sh;
            s.plan_requests(&mut sh.claims, &sh.rarity);
        }
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::PeerAuthenticated { node, .. } => {
                    peer = Some(node);
                    let tx = close_tx.take().expect("authenticated once");
                    if admission.as_ref().is_some_and(|t| !t.authenticated()) {
                        s.close_with(ByeCode::Busy, "connection slot reclaimed");
                    } else if let Err(why) = ctx.register(
                        node,
                        sid,
                        role == Role::Initiator,
                        tx,
                        transport,
                        address.clone(),
                    ) {
                        tracing::debug!(peer = %node.short(), why, "closing session");
                        s.close_with(ByeCode::Busy, why);
                    } else {
                        registered = true;
                        tracing::info!(peer = %node.short(), transport, %address, "session up");
                    }
                }
                Event::SummaryReceived { node, .. } => {
                    if let Some(h) = s.peer_holdings() {
                        let mut sh = ctx.shared.lock().expect("shared state");
                        let metas: Vec<_> = s
                            .local_view()
                            .bundles
                            .values()
                            .map(|b| b.meta.clone())
                            .collect();
                        sh.rarity.observe(node, metas.iter(), |p| h.has(p));
                        let vector = h.predictabilities();
                        sh.prophet.on_transitive(node, &vector, Timestamp::now());
                    }
                }
                Event::ManifestReceived { bytes } => {
                    ctx.metrics.inc_manifests_received();
                    match VerifiedManifest::decode(&bytes) {
                        Err(e) => {
                            ctx.metrics
                                .inc_manifest_rejected(crate::metrics::ManifestReject::Invalid);
                            tracing::warn!(peer = ?peer.map(|p| p.short()), error = %e, "bad manifest from peer");
                            s.handle_manifest_rejected(&e.to_string());
                        }
                        Ok(vm) => {
                            let ctx = ctx.clone();
                            tokio::spawn(async move {
                                if let Err(e) = ctx.accept_manifest(vm, Origin::Received).await {
                                    use mule_bundle::store::StoreError as E;
                                    let reason = match &e {
                                        super::store::CallError::Store(E::Untrusted { .. }) => {
                                            crate::metrics::ManifestReject::Untrusted
                                        }
                                        super::store::CallError::Store(E::Expired(_)) => {
                                            crate::metrics::ManifestReject::Expired
                                        }
                                        _ => crate::metrics::ManifestReject::StoreError,
                                    };
                                    ctx.metrics.inc_manifest_rejected(reason);
                                    // A policy refusal (untrusted, expired) is no violation.
                                    tracing::debug!(error = %e, "manifest not stored");
                                }
                            });
                        }
                    }
                }
                Event::PieceReceived { piece, data } => {
                    ctx.metrics.inc_pieces_received(mtransport);
                    let ctx = ctx.clone();
                    let otx = otx.clone();
                    let len = data.len() as u64;
                    tokio::spawn(async move {
                        let outcome = match ctx.store.put_piece(piece, data).await {
                            Ok(o) => o,
                            Err(_) => PutOutcome::Failed("store stopped".into()),
                        };
                        match &outcome {
                            PutOutcome::Stored | PutOutcome::Completed => {
                                ctx.progress.lock().expect("progress").note(
                                    piece.bundle,
                                    len,
                                    ctx.now_ms(),
                                );
                                let _ = ctx.notices.send(Notice::PieceStored(piece));
                                if outcome == PutOutcome::Completed {
                                    tracing::info!(bundle = %piece.bundle.short(), "bundle complete");
                                    ctx.install.notify_one();
                                }
                            }
                            PutOutcome::AlreadyHad => {
                                ctx.metrics.inc_piece_rejected(RejectReason::Duplicate);
                                let _ = ctx.notices.send(Notice::PieceStored(piece));
                            }
                            _ => {}
                        }
                        let _ = otx.send(Outcome::Put(piece, outcome)).await;
                    });
                }
                Event::PieceRequested { piece } => {
                    let ctx = ctx.clone();
                    let otx = otx.clone();
                    tokio::spawn(async move {
                        let data = ctx.store.read_piece(piece).await.ok().flatten();
                        let _ = otx.send(Outcome::Fetched(piece, data)).await;
                    });
                }
                Event::Closed { reason, penalty } => {
                    violated |= penalty != mule_engine::penalty::Penalty::None;
                    dead_link |= !reason.by_peer
                        && matches!(
                            reason.code,
                            ByeCode::IdleTimeout | ByeCode::HandshakeTimeout
                        );
                    let level_warn = reason.code != ByeCode::Normal && !reason.by_peer;
                    if level_warn {
                        tracing::warn!(peer = ?peer.map(|p| p.short()), code = ?reason.code, detail = %reason.detail, ?penalty, "session closed");
                    } else {
                        tracing::info!(peer = ?peer.map(|p| p.short()), code = ?reason.code, by_peer = reason.by_peer, detail = %reason.detail, "session closed");
                    }
                    if let Some(f) = failure_of(reason.code) {
                        ctx.metrics.inc_session_failed(f);
                    }
                    if let Some(n) = peer {
                        let now = ctx.now_ms();
                        let st = s.stats();
                        let mut sh = ctx.shared.lock().expect("shared state");
                        sh.penalties.record_close(n, now, penalty);
                        sh.credibility
                            .record(n, st.requests_answered, st.requests_ignored, now);
                    }
                }
            }
        }
        if out.is_none() {
            out = s.poll_transmit();
        }
        if out.is_none() && (s.is_closed() || eof) {
            break;
        }
        if buf.len() < READ_BUF && s.phase() == Phase::Authenticated {
            buf.resize(READ_BUF, 0);
        }
        let deadline = s.poll_timeout().map(|t| ctx.instant(t));
        tokio::select! {
            r = rd.read(&mut buf), if !eof => match r {
                Ok(0) | Err(_) => {
                    eof = true;
                    if !s.is_closed() {
                        tracing::debug!(peer = ?peer.map(|p| p.short()), "transport closed by peer");
                        s.handle_transport_closed(ctx.now_ms());
                    }
                }
                Ok(n) => {
                    ctx.metrics.add_bytes_received(mtransport, n as u64);
                    s.handle_bytes(ctx.now_ms(), &buf[..n]);
                }
            },
            permit = wtx.reserve(), if out.is_some() => match permit {
                Ok(p) => p.send(out.take().expect("checked")),
                Err(_) => { eof = true; out = None; }
            },
            _ = sleep_until(deadline), if deadline.is_some() => s.handle_timeout(ctx.now_ms()),
            n = notices.recv() => match n {
                Ok(Notice::PieceStored(p)) => s.note_piece_stored(p),
                Ok(Notice::ManifestStored(b)) => s.note_manifest(Arc::unwrap_or_clone(b)),
                Ok(Notice::PieceLost(p)) => s.note_piece_lost(p),
                Err(broadcast::error::RecvError::Lagged(k)) => tracing::debug!(missed = k, "session lagged behind store notices"),
                Err(broadcast::error::RecvError::Closed) => eof = true,
            },
            o = orx.recv() => if let Some(o) = o { on_outcome(&ctx, &mut s, o, mtransport) },
            _ = close_rx.recv() => s.close_with(ByeCode::Normal, "closing"),
            r = store_full.changed() => match r {
                Ok(()) => s.set_store_full(*store_full.borrow_and_update()),
                // The sender lives in Ctx, which outlives the session; never happens.
                Err(_) => eof = true,
            },
        }
    }

    // Done: hand back claims, leave the registry, let the writer flush (briefly:
    // on a dead link it would wait forever).
    let released = ctx
        .shared
        .lock()
        .expect("shared state")
        .claims
        .release_owner(sid);
    if !released.is_empty() {
        tracing::debug!(
            pieces = released.len(),
            "released claims of a finished session"
        );
    }
    if let Some(n) = peer {
        ctx.unregister(n, sid);
        let st = s.stats();
        if registered && !violated {
            ctx.record_session(n, transport, started_wall, st.bytes_sent, st.bytes_received);
            if let Some(t) = &admission {
                t.remember_source(Instant::now());
            }
        }
        tracing::info!(peer = %n.short(), secs = started.elapsed().as_secs_f32(),
            pieces_in = st.pieces_received, pieces_out = st.pieces_sent,
            bytes_in = st.bytes_received, bytes_out = st.bytes_sent, "session ended");
    }
    drop(wtx);
    if let (true, Some(sock)) = (dead_link, &abort) {
        let _ = sock.set_linger(Some(std::time::Duration::ZERO));
        writer.abort();
        let _ = writer.await;
    } else {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), writer).await;
    }
}

fn on_outcome(ctx: &Ctx, s: &mut Session, o: Outcome, t: MTransport) {
    match o {
        Outcome::Put(piece, outcome) => match outcome {
            // Also announced to every session by broadcast; telling this one
            // directly keeps its accounting right even if it lagged behind
            // the broadcast (the call is idempotent).
            PutOutcome::Stored | PutOutcome::Completed | PutOutcome::AlreadyHad => {
                s.note_piece_stored(piece)
            }
            PutOutcome::Invalid(why) => {
                ctx.metrics.inc_piece_rejected(RejectReason::Invalid);
                tracing::warn!(bundle = %piece.bundle.short(), index = piece.index, why, "peer sent a bad piece");
                s.handle_piece_rejected(piece, PieceRejection::Invalid);
            }
            PutOutcome::UnknownBundle => {
                ctx.metrics.inc_piece_rejected(RejectReason::UnknownBundle);
                s.handle_piece_rejected(piece, PieceRejection::Busy);
            }
            // Said once by note_store_full (rate-limited), not once per piece.
            PutOutcome::Full(why) => {
                ctx.metrics.inc_piece_rejected(RejectReason::StoreFull);
                ctx.note_store_full(super::space::Kind::Quota, &why);
                s.handle_piece_rejected(piece, PieceRejection::StoreFull);
            }
            PutOutcome::DiskFull(why) => {
                ctx.metrics.inc_piece_rejected(RejectReason::StoreFull);
                ctx.note_store_full(super::space::Kind::Disk, &why);
                s.handle_piece_rejected(piece, PieceRejection::StoreFull);
            }
            PutOutcome::Failed(why) => {
                ctx.metrics.inc_piece_rejected(RejectReason::StoreError);
                tracing::error!(why, "storing a piece failed");
                s.handle_piece_rejected(piece, PieceRejection::Busy);
            }
        },
        Outcome::Fetched(piece, Some(data)) => {
            if s.send_piece(piece, &data) {
                ctx.metrics.inc_pieces_sent(t);
            }
        }
        Outcome::Fetched(piece, None) => s.piece_unavailable(piece),
    }
}

fn failure_of(code: ByeCode) -> Option<SessionFailure> {
    Some(match code {
        ByeCode::Normal | ByeCode::Busy | ByeCode::StoreFull | ByeCode::SelfConnection => {
            return None;
        }
        ByeCode::IdleTimeout => SessionFailure::Timeout,
        ByeCode::HandshakeTimeout | ByeCode::AuthFailed | ByeCode::BadVersion => {
            SessionFailure::Handshake
        }
        _ => SessionFailure::Protocol,
    })
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
