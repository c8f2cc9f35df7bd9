//! Connection management: listeners, discovery events, who dials whom.
//!
//! Rules:
//! - On `PeerUp` the node with the smaller node id dials at once; the other
//!   dials only if no session exists after [`DIAL_GRACE`], so two nodes rarely
//!   open two sessions at the same time.
//! - If both sessions do come up, both nodes keep the one opened by the node
//!   with the smaller id ([`Ctx::register`]), so they agree without talking.
//! - A peer in backoff or banned by the [`PenaltyBook`] is not dialled (and an
//!   incoming session from it is closed once it authenticates).
//! - Statically configured peers (`session.peers`) are dialled whenever no
//!   session with them is open: this also serves wired gateways and tests on
//!   loopback, where multicast discovery does not apply.
//!
//! [`PenaltyBook`]: mule_engine::penalty::PenaltyBook

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mule_contacts::neighbours::Event;
use mule_contacts::{NodeId, PeerAddr, Timestamp};
use mule_engine::penalty::Verdict;
use mule_engine::session::Role;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::admission::Admission;
use super::session::Conn;
use super::{Ctx, Error, NeighbourInfo, SessionEntry};

/// How long the node with the larger id waits for the other to dial.
pub const DIAL_GRACE: Duration = Duration::from_millis(1500);
/// A TCP connect that takes longer than this has failed (the contact is gone).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often neighbours without a session are reconsidered.
pub const MAINTAIN_EVERY: Duration = Duration::from_millis(250);

/// Binds every listen address; all share the port of the first (with port 0,
/// the port the first one was given).
pub async fn bind_all(addrs: &[SocketAddr]) -> Result<(Vec<TcpListener>, Vec<SocketAddr>), Error> {
    let mut listeners = Vec::new();
    let mut bound = Vec::new();
    let mut port = None;
    for a in addrs {
        let mut a = *a;
        if let (0, Some(p)) = (a.port(), port) {
            a.set_port(p);
        }
        let sock = match a {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .map_err(|e| Error::Listen(a.to_string(), e))?;
        if a.is_ipv6() {
            // `[::]` and `0.0.0.0` share a port only when the v6 socket is v6-only.
            let s2 = socket2::SockRef::from(&sock);
            let _ = s2.set_only_v6(true);
        }
        sock.set_reuseaddr(true)
            .map_err(|e| Error::Listen(a.to_string(), e))?;
        if let Err(e) = sock.bind(a) {
            if a.is_ipv6() && e.kind() == std::io::ErrorKind::AddrNotAvailable {
                tracing::warn!(addr = %a, "IPv6 not available; not listening on it");
                continue;
            }
            return Err(Error::Listen(a.to_string(), e));
        }
        let l = sock
            .listen(64)
            .map_err(|e| Error::Listen(a.to_string(), e))?;
        let local = l
            .local_addr()
            .map_err(|e| Error::Listen(a.to_string(), e))?;
        port.get_or_insert(local.port());
        bound.push(local);
        listeners.push(l);
    }
    if listeners.is_empty() {
        return Err(Error::Listen(
            format!("{addrs:?}"),
            std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                "no usable listen address",
            ),
        ));
    }
    Ok((listeners, bound))
}

/// Accepts sessions until `stop`. Connections that have not authenticated yet hold slots
/// of the [`Admission`] pool (bounded apart from sessions, reclaimed oldest first, limited
/// per source, known neighbours first): a flood of idle connections neither takes unbounded
/// sockets, tasks and buffers nor locks honest peers out.
pub async fn accept_loop(
    ctx: Arc<Ctx>,
    l: TcpListener,
    admission: Arc<Admission>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            r = l.accept() => match r {
                Ok((stream, peer)) => {
                    if ctx.session_count() >= ctx.cfg.session.max_sessions as usize {
                        tracing::warn!(%peer, "session limit reached; refusing connection");
                        continue;
                    }
                    let known = ctx.is_known_source(peer.ip());
                    let Some((ticket, reclaimed)) = admission.admit(peer.ip(), known, Instant::now()) else {
                        tracing::debug!(%peer, "unauthenticated slots full of neighbours' handshakes; refusing one");
                        continue;
                    };
                    let conn = Conn::tcp(stream, peer.to_string()).admitted(ticket);
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let metrics = ctx.metrics.clone();
                        tokio::select! {
                            biased;
                            // Its slot went to a newer connection before it authenticated:
                            // dropping the session closes the socket.
                            Ok(()) = reclaimed => {
                                metrics.inc_handshakes_reclaimed();
                                tracing::debug!(%peer, "unauthenticated connection's slot reclaimed");
                            }
                            _ = super::session::run(ctx, conn, Role::Responder, None) => {}
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Starts discovery; when it cannot start (no usable interface, no
/// permissions) the node keeps running on static peers and says so once.
pub async fn start_discovery(
    ctx: Arc<Ctx>,
    session_port: u16,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Option<mpsc::Receiver<Event>> {
    let d = &ctx.cfg.discovery;
    if !d.beacons && !d.mdns && !d.bluetooth {
        tracing::warn!(
            "discovery is off (beacons, mdns and bluetooth): this node meets only session.peers and nodes that dial it"
        );
        return None;
    }
    let mut dc = mule_contacts::discovery::DiscoveryConfig {
        interfaces: d.interfaces.clone(),
        beacons: d.beacons,
        ipv6: d.ipv6,
        beacon_port: d.beacon_port,
        group_v4: d.ipv4_group,
        mdns: d.mdns,
        bluetooth: d.bluetooth,
        bluetooth_adapter: d.bluetooth_adapter.clone(),
        session_port,
        // The beacon replay window outlives restarts: a replayed beacon of a node that
        // has left makes no ghost neighbour after this node restarts.
        replay_state: Some(ctx.data_dir.join("beacon-replay")),
        ..Default::default()
    };
    dc.interval.min = d.beacon_interval_min();
    dc.interval.keepalive = d.beacon_interval();
    dc.interval.max = d.beacon_interval_max();
    dc.interval.after_loss = d.after_loss();
    dc.interval.after_loss_gap = d.after_loss_interval();
    dc.table.silence = d.peer_silence();
    dc.table.ble_silence = d.bluetooth_silence();
    let (_tx, holdings) = tokio::sync::watch::channel(Default::default());
    match mule_contacts::discovery::Discovery::start(dc, ctx.identity.clone(), holdings, stop).await
    {
        Ok((disc, events)) => {
            let counters = disc.counters_handle();
            ctx.metrics.set_beacon_source(Box::new(move || {
                let c = counters.snapshot();
                crate::metrics::BeaconCounts {
                    sent: c.beacons_sent,
                    accepted: c.beacons_accepted,
                    dropped: mule_contacts::beacon::DropReason::ALL
                        .iter()
                        .map(|r| (r.name(), c.dropped(*r)))
                        .collect(),
                }
            }));
            // Keep the handle alive as long as the events flow.
            ctx.discovery.lock().expect("discovery").replace(disc);
            std::mem::forget(_tx);
            Some(events)
        }
        Err(e) => {
            tracing::warn!(error = %e, "discovery could not start; the node runs on static peers only");
            None
        }
    }
}

/// Reacts to discovery events and keeps sessions open with neighbours and
/// static peers.
pub async fn manage(
    ctx: Arc<Ctx>,
    mut events: Option<mpsc::Receiver<Event>>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(MAINTAIN_EVERY);
    let mut static_backoff: HashMap<SocketAddr, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            ev = async { match events.as_mut() { Some(e) => e.recv().await, None => std::future::pending().await } } => {
                match ev {
                    Some(ev) => on_event(&ctx, ev),
                    None => { events = None; }
                }
            }
            _ = tick.tick() => {}
        }
        maintain(&ctx, &mut static_backoff);
    }
    ctx.close_all();
}

fn on_event(ctx: &Arc<Ctx>, ev: Event) {
    let now = Timestamp::now();
    match ev {
        Event::PeerUp {
            node,
            transport,
            addr,
            ..
        } => {
            tracing::info!(peer = %node.short(), transport = transport.name(), %addr, "peer up");
            ctx.metrics.inc_contacts();
            let mut sh = ctx.shared.lock().expect("shared state");
            sh.prophet.on_encounter(node, now);
            sh.neighbours.insert(
                node,
                NeighbourInfo {
                    transport,
                    addr,
                    since: Instant::now(),
                    since_wall: now,
                    bytes_sent: 0,
                    bytes_received: 0,
                },
            );
            ctx.metrics.set_neighbours(sh.neighbours.len() as u64);
        }
        Event::PeerChanged {
            node,
            transport,
            addr,
            ..
        } => {
            let mut sh = ctx.shared.lock().expect("shared state");
            if let Some(n) = sh.neighbours.get_mut(&node) {
                n.transport = transport;
                n.addr = addr;
            }
        }
        Event::PeerDown { node } => {
            let mut sh = ctx.shared.lock().expect("shared state");
            if let Some(n) = sh.neighbours.remove(&node) {
                tracing::info!(peer = %node.short(), contact_s = n.since.elapsed().as_secs_f32(), "peer down");
                ctx.record_contact(node, n);
            }
            ctx.metrics.set_neighbours(sh.neighbours.len() as u64);
        }
    }
}

fn maintain(ctx: &Arc<Ctx>, static_backoff: &mut HashMap<SocketAddr, Instant>) {
    let me = ctx.node_id();
    let now_ms = ctx.now_ms();
    let mut dial: Vec<(Option<NodeId>, PeerAddr)> = Vec::new();
    {
        let mut sh = ctx.shared.lock().expect("shared state");
        sh.dialing.retain(|_, t| t.elapsed() < CONNECT_TIMEOUT * 2);
        let candidates: Vec<(NodeId, NeighbourInfo)> =
            sh.neighbours.iter().map(|(n, i)| (*n, i.clone())).collect();
        for (node, info) in candidates {
            if sh.sessions.contains_key(&node) || sh.dialing.contains_key(&node) {
                continue;
            }
            if me > node && info.since.elapsed() < DIAL_GRACE {
                continue;
            }
            if !matches!(sh.penalties.check(&node, now_ms), Verdict::Allowed) {
                continue;
            }
            if ctx.session_count_locked(&sh) >= ctx.cfg.session.max_sessions as usize {
                break;
            }
            sh.dialing.insert(node, Instant::now());
            dial.push((Some(node), info.addr.clone()));
        }
        for addr in &ctx.cfg.session.peers {
            let connected = sh.sessions.values().any(|e| e.address == addr.to_string())
                || sh
                    .static_nodes
                    .get(addr)
                    .is_some_and(|n| sh.sessions.contains_key(n));
            if connected
                || static_backoff
                    .get(addr)
                    .is_some_and(|t| Instant::now() < *t)
            {
                continue;
            }
            static_backoff.insert(*addr, Instant::now() + Duration::from_secs(1));
            dial.push((
                None,
                PeerAddr::Ip {
                    addr: *addr,
                    iface: None,
                },
            ));
        }
    }
    for (node, addr) in dial {
        let ctx = ctx.clone();
        tokio::spawn(async move { dial_one(ctx, node, addr).await });
    }
}

async fn dial_one(ctx: Arc<Ctx>, node: Option<NodeId>, addr: PeerAddr) {
    let result = match &addr {
        PeerAddr::Ip { addr: sa, .. } => {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(sa)).await {
                Ok(Ok(s)) => Ok(Conn::tcp(s, sa.to_string())),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("connect timed out".to_string()),
            }
        }
        PeerAddr::Ble { .. } => super::ble::connect(&ctx, &addr).await,
    };
    match result {
        Ok(conn) => super::session::run(ctx.clone(), conn, Role::Initiator, node).await,
        Err(e) => {
            tracing::debug!(peer = ?node.map(|n| n.short()), %addr, error = %e, "connect failed");
            ctx.metrics
                .inc_session_failed(crate::metrics::SessionFailure::Connect);
            if let Some(n) = node {
                let now = ctx.now_ms();
                ctx.shared
                    .lock()
                    .expect("shared state")
                    .penalties
                    .record_failure(n, now);
            }
        }
    }
    if let Some(n) = node {
        ctx.shared.lock().expect("shared state").dialing.remove(&n);
    }
}

impl Ctx {
    /// Whether a connection from `ip` comes from a known neighbour: a configured peer's
    /// address, or one discovery reported a neighbour at.
    fn is_known_source(&self, ip: std::net::IpAddr) -> bool {
        if self.cfg.session.peers.iter().any(|a| a.ip() == ip) {
            return true;
        }
        let sh = self.shared.lock().expect("shared state");
        sh.neighbours
            .values()
            .any(|n| matches!(&n.addr, PeerAddr::Ip { addr, .. } if addr.ip() == ip))
    }

    pub(crate) fn session_count(&self) -> usize {
        self.shared.lock().expect("shared state").sessions.len()
    }

    fn session_count_locked(&self, sh: &super::Shared) -> usize {
        sh.sessions.len() + sh.dialing.len()
    }

    /// Registers an authenticated session. Returns false when this session
    /// must close because the peer is penalised or another session with it
    /// wins (the one opened by the node with the smaller id).
    pub(crate) fn register(
        &self,
        node: NodeId,
        sid: u64,
        initiated_by_us: bool,
        close: mpsc::Sender<()>,
        transport: &'static str,
        address: String,
    ) -> Result<(), &'static str> {
        let me = self.node_id();
        let now = self.now_ms();
        let mut sh = self.shared.lock().expect("shared state");
        if !matches!(sh.penalties.check(&node, now), Verdict::Allowed) {
            return Err("peer is penalised");
        }
        // Handshakes run beside sessions (their slots are apart): an incoming one that
        // completes when the sessions are full waits for another contact.
        if !initiated_by_us
            && !sh.sessions.contains_key(&node)
            && sh.sessions.len() >= self.cfg.session.max_sessions as usize
        {
            return Err("session limit reached");
        }
        if let Some(existing) = sh.sessions.get(&node) {
            // Keep the session initiated by the smaller node id.
            let we_are_smaller = me < node;
            let new_wins =
                initiated_by_us == we_are_smaller && existing.initiated_by_us != we_are_smaller;
            if !new_wins {
                return Err("duplicate session");
            }
            let _ = existing.close.try_send(());
        }
        if let Ok(sa) = address.parse::<SocketAddr>()
            && self.cfg.session.peers.contains(&sa)
        {
            sh.static_nodes.insert(sa, node);
        }
        // A session with a peer discovery does not know (a `session.peers`
        // address) is a contact of its own: PRoPHET and the contacts counter
        // see it begin here, as they see a discovered one at `PeerUp`; the
        // history records it when the session ends (`record_session`).
        if !sh.neighbours.contains_key(&node) && !sh.sessions.contains_key(&node) {
            sh.prophet.on_encounter(node, Timestamp::now());
            self.metrics.inc_contacts();
        }
        sh.sessions.insert(
            node,
            SessionEntry {
                sid,
                initiated_by_us,
                close,
                transport,
                address,
                since: Instant::now(),
            },
        );
        self.metrics.set_sessions_active(sh.sessions.len() as u64);
        Ok(())
    }

    /// Removes a session from the registry (if it is still the registered one).
    pub(crate) fn unregister(&self, node: NodeId, sid: u64) {
        let mut sh = self.shared.lock().expect("shared state");
        if sh.sessions.get(&node).is_some_and(|e| e.sid == sid) {
            sh.sessions.remove(&node);
        }
        self.metrics.set_sessions_active(sh.sessions.len() as u64);
    }

    /// Asks every session to close (shutdown).
    pub(crate) fn close_all(&self) {
        let sh = self.shared.lock().expect("shared state");
        for e in sh.sessions.values() {
            let _ = e.close.try_send(());
        }
    }
}
