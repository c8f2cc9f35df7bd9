//! The discovery service: the thin async driver around the pure parts.
//!
//! [`Discovery::start`] spawns one tokio task that owns the [`NeighbourTable`], the
//! [`BeaconFilter`] and the [`AdaptiveInterval`], and feeds them from
//! - **beacon sockets**, one IPv4 and one IPv6 UDP socket per usable interface (default: every
//!   up, multicast-capable, non-loopback interface), each with its own receive task;
//! - **interface changes**: an rtnetlink socket ([`crate::iface::LinkWatch`]) plus a periodic
//!   rescan (`rescan_every`, default 1 s) as a safety net;
//! - **mDNS** (`mdns-sd`): our `_mule._tcp.local.` service is advertised and others are
//!   browsed; resolved services become observations (never the end of a contact);
//! - **Bluetooth LE** (feature `bluetooth`): see [`crate::bluetooth`];
//! - the caller's **holdings digest** (a `watch` channel) and control calls
//!   ([`Discovery::alive`]).
//!
//! It delivers [`Event`]s on a bounded channel (capacity `event_capacity`). The consumer
//! must keep draining it: when the channel is full the driver waits (losing a `PeerDown`
//! would be worse than a late beacon).
//!
//! # Sockets (per interface)
//! IPv4: bound to `0.0.0.0:<beacon_port>` with `SO_REUSEADDR` + `SO_REUSEPORT` (several nodes
//! on one host or namespace can all bind the port; multicast is delivered to each of them),
//! `SO_BINDTODEVICE` to the interface, joined to `group_v4` on that interface,
//! `IP_MULTICAST_IF`, TTL 1, `IP_MULTICAST_LOOP` off, `IP_MULTICAST_ALL` off (otherwise Linux
//! also delivers groups joined by other sockets). IPv6: the same on `[::]:<beacon_port>` with
//! `IPV6_V6ONLY`, joined to `ff02::1` (link-local all-nodes) on the interface index, hop
//! limit 1. With loop off, two nodes in the **same** namespace do not hear each other; nodes
//! in different namespaces or hosts do.
//!
//! # Timing
//! - A beacon goes out on an interface **immediately** when it appears, gains carrier or gets
//!   an address (rtnetlink event), and on all interfaces when a new neighbour is heard (the
//!   reply, at most one per `reply_gap`), so both sides learn each other within one
//!   round trip of a link coming up.
//! - Otherwise beacons follow the [`AdaptiveInterval`]. While things change ("fast" for 2 s
//!   after a change) each beacon goes out on both IPv4 and IPv6; in steady state the
//!   families alternate (each interface still gets one beacon per interval), which halves
//!   idle traffic.
//! - After a neighbour goes silent (`PeerDown`) the gap stays at 100 ms for
//!   [`IntervalConfig::after_loss`] (20 s), then relaxes by doubling every 20 s, until a
//!   neighbour appears: a contact that broke off without an interface event (out of radio
//!   range, a silently detached link) often resumes, and nothing but a beacon can tell
//!   either side that it did.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::NodeId;
use crate::beacon::{
    AdaptiveInterval, Beacon, BeaconFilter, DropReason, FilterConfig, HoldingsDigest,
    IntervalConfig, MAX_MET, PROTOCOL_VERSION, ShortId,
};
use crate::identity::NodeIdentity;
use crate::iface::{self, Iface, LinkWatch};
use crate::neighbours::{Event, NeighbourTable, Observation, PeerAddr, TableConfig, Transport};
use crate::time::Timestamp;

/// The mDNS service type Mule nodes advertise.
pub const MDNS_SERVICE_TYPE: &str = "_mule._tcp.local.";
/// Default beacon UDP port.
pub const DEFAULT_BEACON_PORT: u16 = 47777;
/// Default IPv4 beacon group (organisation-local scope).
pub const DEFAULT_GROUP_V4: Ipv4Addr = Ipv4Addr::new(239, 255, 77, 77);
/// Default L2CAP PSM of the Bluetooth session listener (LE dynamic range 0x80–0xff).
pub const DEFAULT_BLE_PSM: u16 = 0x85;
/// IPv6 beacon group: link-local all-nodes.
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Settings of the discovery service.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// Interfaces to use; empty means every up, multicast-capable, non-loopback one.
    pub interfaces: Vec<String>,
    /// Send and receive multicast beacons.
    pub beacons: bool,
    /// Use IPv4 for beacons.
    pub ipv4: bool,
    /// Use IPv6 (ff02::1) for beacons.
    pub ipv6: bool,
    /// Beacon UDP port (shared by all nodes).
    pub beacon_port: u16,
    /// IPv4 beacon group.
    pub group_v4: Ipv4Addr,
    /// Beacon interval bounds.
    pub interval: IntervalConfig,
    /// Neighbour expiry settings (`silence` is the beacon silence before `PeerDown`).
    pub table: TableConfig,
    /// Beacon acceptance rules.
    pub filter: FilterConfig,
    /// Advertise and browse mDNS.
    pub mdns: bool,
    /// Use Bluetooth LE (ignored without the `bluetooth` feature).
    pub bluetooth: bool,
    /// Bluetooth adapter name (`hci0`); `None` = the default adapter.
    pub bluetooth_adapter: Option<String>,
    /// L2CAP PSM of our Bluetooth session listener (LE range 0x80–0xff).
    pub ble_psm: u16,
    /// TCP port of our session listener (announced in beacons and mDNS).
    pub session_port: u16,
    /// Periodic interface rescan (in addition to rtnetlink events).
    pub rescan_every: Duration,
    /// Least time between two out-of-schedule beacons (replies to new neighbours).
    pub reply_gap: Duration,
    /// Capacity of the event channel.
    pub event_capacity: usize,
    /// File that keeps the beacon replay window across restarts (the last accepted
    /// `(time, seq)` per sender, at most `filter.max_peers` records of 48 bytes). Read at
    /// start; written when a neighbour goes silent, every [`WINDOW_SAVE_EVERY`] while it
    /// changes, and at shutdown. `None`: in memory only, so after a restart a replayed
    /// beacon of a node that has left is accepted once (a ghost neighbour for `silence`).
    pub replay_state: Option<PathBuf>,
}

/// How often a changed replay window is saved at the latest (see
/// [`DiscoveryConfig::replay_state`]).
pub const WINDOW_SAVE_EVERY: Duration = Duration::from_secs(30);

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            interfaces: Vec::new(),
            beacons: true,
            ipv4: true,
            ipv6: true,
            beacon_port: DEFAULT_BEACON_PORT,
            group_v4: DEFAULT_GROUP_V4,
            interval: IntervalConfig::default(),
            table: TableConfig::default(),
            filter: FilterConfig::default(),
            mdns: true,
            bluetooth: true,
            bluetooth_adapter: None,
            ble_psm: DEFAULT_BLE_PSM,
            session_port: 7777,
            rescan_every: Duration::from_secs(1),
            reply_gap: Duration::from_millis(100),
            event_capacity: 256,
            replay_state: None,
        }
    }
}

/// Errors starting discovery.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// Listing interfaces or opening the rtnetlink socket failed.
    #[error("cannot watch network interfaces: {0}")]
    Interfaces(io::Error),
    /// The mDNS daemon could not start or register our service.
    #[error("mDNS: {0}")]
    Mdns(String),
}

/// Live counters (all monotonic), shared with the driver task.
#[derive(Debug, Default)]
pub struct Counters {
    beacons_sent: AtomicU64,
    beacon_bytes_sent: AtomicU64,
    beacons_accepted: AtomicU64,
    dropped: [AtomicU64; 8],
    send_errors: AtomicU64,
    rx_overflow: AtomicU64,
    mdns_observations: AtomicU64,
    ble_observations: AtomicU64,
    events: AtomicU64,
    link_events: AtomicU64,
}

/// A copy of the [`Counters`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    /// Beacons sent (one per family and interface).
    pub beacons_sent: u64,
    /// UDP payload bytes of those beacons.
    pub beacon_bytes_sent: u64,
    /// Beacons accepted by the filter.
    pub beacons_accepted: u64,
    /// Beacons dropped, indexed like [`DropReason::ALL`].
    pub dropped: [u64; 8],
    /// Failed sends (interface without carrier, address not ready, ...).
    pub send_errors: u64,
    /// Datagrams dropped because the driver was behind.
    pub rx_overflow: u64,
    /// mDNS resolutions turned into observations.
    pub mdns_observations: u64,
    /// Bluetooth sightings turned into observations.
    pub ble_observations: u64,
    /// Events delivered.
    pub events: u64,
    /// Interface appearances / carrier-ups / address changes acted upon.
    pub link_events: u64,
}

impl CountersSnapshot {
    /// Drops for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize]
    }
}

impl Counters {
    /// Reads all counters.
    pub fn snapshot(&self) -> CountersSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CountersSnapshot {
            beacons_sent: l(&self.beacons_sent),
            beacon_bytes_sent: l(&self.beacon_bytes_sent),
            beacons_accepted: l(&self.beacons_accepted),
            dropped: std::array::from_fn(|i| l(&self.dropped[i])),
            send_errors: l(&self.send_errors),
            rx_overflow: l(&self.rx_overflow),
            mdns_observations: l(&self.mdns_observations),
            ble_observations: l(&self.ble_observations),
            events: l(&self.events),
            link_events: l(&self.link_events),
        }
    }
}

fn inc(a: &AtomicU64, by: u64) {
    a.fetch_add(by, Ordering::Relaxed);
}

/// Commands from the [`Discovery`] handle to its task.
#[derive(Debug)]
enum Control {
    Alive(NodeId),
    #[cfg_attr(not(feature = "bluetooth"), allow(dead_code))]
    LearnBle(NodeId, crate::neighbours::BleAddr),
}

/// Inputs the driver task multiplexes.
#[derive(Debug)]
pub(crate) enum Input {
    Datagram {
        iface: String,
        index: u32,
        from: SocketAddr,
        bytes: Vec<u8>,
        at: Instant,
    },
    Observation(Observation),
}

/// Handle to the running discovery service.
#[derive(Debug)]
pub struct Discovery {
    node: NodeId,
    counters: Arc<Counters>,
    control: mpsc::Sender<Control>,
    task: JoinHandle<()>,
    #[cfg(feature = "bluetooth")]
    ble_ids: Option<Arc<std::sync::Mutex<crate::bluetooth::IdMap>>>,
}

impl Discovery {
    /// Starts discovery for `identity`; it runs until `shutdown` completes (or the event
    /// receiver is dropped). Returns the handle and the event receiver.
    pub async fn start(
        cfg: DiscoveryConfig,
        identity: NodeIdentity,
        holdings: watch::Receiver<HoldingsDigest>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(Discovery, mpsc::Receiver<Event>), DiscoveryError> {
        let (events_tx, events_rx) = mpsc::channel(cfg.event_capacity.max(1));
        let (control_tx, control_rx) = mpsc::channel(64);
        let (input_tx, input_rx) = mpsc::channel(1024);
        let counters = Arc::new(Counters::default());
        let watch = LinkWatch::new().map_err(DiscoveryError::Interfaces)?;
        let node = identity.id();
        let mdns = if cfg.mdns {
            Some(Mdns::start(&cfg, &identity, input_tx.clone())?)
        } else {
            None
        };
        #[cfg(feature = "bluetooth")]
        let ble = if cfg.bluetooth {
            crate::bluetooth::spawn_discovery(&cfg, node, input_tx.clone())
        } else {
            None
        };
        #[cfg(feature = "bluetooth")]
        let ble_ids = ble.as_ref().map(|b| b.ids());
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        let mut filter = BeaconFilter::new(node, cfg.filter.clone());
        if let Some(path) = &cfg.replay_state {
            load_window(&mut filter, path);
        }
        let driver = Driver {
            table: NeighbourTable::new(cfg.table.clone()),
            saved_generation: filter.window_generation(),
            filter,
            last_save: Instant::now(),
            save_task: None,
            save_pending: false,
            interval: AdaptiveInterval::new(cfg.interval),
            me: identity,
            ifaces: BTreeMap::new(),
            seq: 0,
            seq_second: 0,
            tick: 0,
            met: VecDeque::new(),
            digest: *holdings.borrow(),
            counters: counters.clone(),
            events: events_tx,
            rng: u64::from_le_bytes(seed) | 1,
            next_beacon: Instant::now(),
            last_reply: None,
            reply_pending: false,
            fast_until: Instant::now() + Duration::from_secs(2),
            input_tx,
            mdns,
            #[cfg(feature = "bluetooth")]
            ble,
            cfg,
        };
        let task = tokio::spawn(driver.run(watch, holdings, input_rx, control_rx, shutdown));
        Ok((
            Discovery {
                node,
                counters,
                control: control_tx,
                task,
                #[cfg(feature = "bluetooth")]
                ble_ids,
            },
            events_rx,
        ))
    }

    /// Our node id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Current counters.
    pub fn counters(&self) -> CountersSnapshot {
        self.counters.snapshot()
    }

    /// The shared counters (for a metrics exporter that reads them on its own schedule).
    pub fn counters_handle(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// A session with `node` is alive (keeps it up even without beacons, e.g. when it was
    /// found by mDNS only). Never blocks; dropped if the driver is far behind.
    pub fn alive(&self, node: NodeId) {
        let _ = self.control.try_send(Control::Alive(node));
    }

    /// Tells discovery that the Bluetooth device `addr` is node `node` (learnt from a
    /// session), so later sightings of it resolve to that node.
    #[cfg(feature = "bluetooth")]
    pub fn learn_ble(&self, node: NodeId, addr: crate::neighbours::BleAddr) {
        let _ = self.control.try_send(Control::LearnBle(node, addr));
    }

    /// Bluetooth devices advertising Mule whose node id is not known yet (device address and
    /// payload with the PSM), oldest first: open an L2CAP session to learn who they are, then
    /// call [`Discovery::learn_ble`].
    #[cfg(feature = "bluetooth")]
    pub fn ble_unresolved(
        &self,
    ) -> Vec<(crate::neighbours::BleAddr, crate::bluetooth::AdvPayload)> {
        self.ble_ids
            .as_ref()
            .and_then(|m| m.lock().ok().map(|m| m.unresolved()))
            .unwrap_or_default()
    }

    /// Waits until the service has stopped (after the shutdown future completed).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Sockets of one interface; receive tasks are aborted on drop.
struct IfState {
    info: Iface,
    v4: Option<Arc<UdpSocket>>,
    v6: Option<Arc<UdpSocket>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for IfState {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Driver {
    cfg: DiscoveryConfig,
    me: NodeIdentity,
    table: NeighbourTable,
    filter: BeaconFilter,
    /// The filter's window generation last handed to a save.
    saved_generation: u64,
    last_save: Instant,
    /// The save in progress, if any (one at a time, so an older window never lands last).
    save_task: Option<JoinHandle<()>>,
    /// A save was due while one was still running: retried at the next rescan tick.
    save_pending: bool,
    interval: AdaptiveInterval,
    ifaces: BTreeMap<String, IfState>,
    seq: u64,
    /// The Unix second `seq` counts in (the beacon's time is in whole seconds).
    seq_second: u64,
    tick: u64,
    met: VecDeque<NodeId>,
    digest: HoldingsDigest,
    counters: Arc<Counters>,
    events: mpsc::Sender<Event>,
    rng: u64,
    next_beacon: Instant,
    /// When the last out-of-schedule beacon (reply or link event) went out.
    last_reply: Option<Instant>,
    /// The next beacon is a reply (counts against `reply_gap`).
    reply_pending: bool,
    fast_until: Instant,
    input_tx: mpsc::Sender<Input>,
    mdns: Option<Mdns>,
    #[cfg(feature = "bluetooth")]
    ble: Option<crate::bluetooth::BleDiscovery>,
}

impl Driver {
    async fn run(
        mut self,
        watch: LinkWatch,
        mut holdings: watch::Receiver<HoldingsDigest>,
        mut input: mpsc::Receiver<Input>,
        mut control: mpsc::Receiver<Control>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        tokio::pin!(shutdown);
        let mut rescan =
            tokio::time::interval(self.cfg.rescan_every.max(Duration::from_millis(50)));
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut holdings_open = true;
        self.rescan(Instant::now());
        loop {
            let table_deadline = self
                .table
                .poll_timeout()
                .map(Instant::from_std)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = &mut shutdown => break,
                Some(msg) = input.recv() => self.handle_input(msg).await,
                Some(c) = control.recv() => match c {
                    Control::Alive(n) => self.table.handle_alive(Instant::now().into_std(), &n),
                    #[cfg(feature = "bluetooth")]
                    Control::LearnBle(n, a) => {
                        if let Some(b) = &self.ble { b.learn(n, a); }
                    }
                    #[cfg(not(feature = "bluetooth"))]
                    Control::LearnBle(..) => {}
                },
                _ = tokio::time::sleep_until(self.next_beacon), if self.cfg.beacons => {
                    self.send_scheduled();
                }
                _ = tokio::time::sleep_until(table_deadline) => {
                    self.table.handle_timeout(Instant::now().into_std());
                }
                r = watch.changed() => {
                    if r.is_err() { tokio::time::sleep(Duration::from_millis(100)).await; }
                    self.rescan(Instant::now());
                }
                _ = rescan.tick() => {
                    let now = Instant::now();
                    self.rescan(now);
                    if self.save_pending || now.duration_since(self.last_save) >= WINDOW_SAVE_EVERY {
                        self.save_window();
                    }
                }
                r = holdings.changed(), if holdings_open => match r {
                    Ok(()) => {
                        self.digest = *holdings.borrow_and_update();
                        self.send_soon(Instant::now());
                    }
                    Err(_) => holdings_open = false,
                },
            }
            if !self.drain_events().await {
                break;
            }
        }
        if let Some(m) = self.mdns.take() {
            m.stop();
        }
        // The last window, after any save still running (so this one lands last).
        for _ in 0..2 {
            if let Some(t) = self.save_task.take() {
                let _ = t.await;
            }
            self.save_window();
        }
        tracing::debug!(node = %self.me.id().short(), "discovery stopped");
    }

    async fn handle_input(&mut self, msg: Input) {
        match msg {
            Input::Datagram {
                iface,
                index,
                from,
                bytes,
                at,
            } => {
                let res = self
                    .filter
                    .handle(at.into_std(), Timestamp::now(), &bytes, &from);
                let c = self.filter.counters();
                self.counters
                    .beacons_accepted
                    .store(c.accepted, Ordering::Relaxed);
                for (i, d) in c.dropped.iter().enumerate() {
                    self.counters.dropped[i].store(*d, Ordering::Relaxed);
                }
                let Ok(b) = res else { return };
                let addr = match from.ip() {
                    IpAddr::V4(ip) => SocketAddr::V4(SocketAddrV4::new(ip, b.session_port)),
                    IpAddr::V6(ip) => {
                        let scope = if ip.is_unicast_link_local() { index } else { 0 };
                        SocketAddr::V6(SocketAddrV6::new(ip, b.session_port, 0, scope))
                    }
                };
                let new = self.table.get(&b.node).is_none();
                self.table.handle_observation(
                    at.into_std(),
                    Observation {
                        node: b.node,
                        transport: Transport::Beacon,
                        addr: PeerAddr::Ip {
                            addr,
                            iface: Some(iface),
                        },
                        digest: Some(b.digest),
                        met: b.met,
                    },
                );
                #[cfg(feature = "bluetooth")]
                if let Some(ble) = &self.ble {
                    ble.learn_id(b.node);
                }
                if new {
                    // Reply at once so the new neighbour learns us without waiting.
                    self.send_soon(Instant::now());
                }
            }
            Input::Observation(obs) => {
                match obs.transport {
                    Transport::Mdns => inc(&self.counters.mdns_observations, 1),
                    Transport::Ble => inc(&self.counters.ble_observations, 1),
                    Transport::Beacon => {}
                }
                self.table
                    .handle_observation(Instant::now().into_std(), obs);
            }
        }
    }

    /// Forwards table events; false when the consumer is gone.
    async fn drain_events(&mut self) -> bool {
        while let Some(ev) = self.table.poll_event() {
            match &ev {
                Event::PeerUp {
                    node,
                    transport,
                    addr,
                    ..
                } => {
                    tracing::info!(peer = %node.short(), transport = transport.name(), %addr, "peer up");
                    self.met.retain(|m| m != node);
                    self.met.push_front(*node);
                    self.met.truncate(MAX_MET);
                    self.interval.on_found();
                    self.changed(Instant::now());
                }
                Event::PeerDown { node } => {
                    tracing::info!(peer = %node.short(), "peer down");
                    // Its last beacon is now final: keep it past a restart, so a replay of
                    // it cannot bring back a node that has left.
                    self.save_window();
                    let now = Instant::now();
                    self.changed(now);
                    self.interval.on_lost(now.into_std());
                }
                Event::PeerChanged { .. } => {}
            }
            if self.events.send(ev).await.is_err() {
                return false;
            }
            inc(&self.counters.events, 1);
        }
        true
    }

    /// Saves the replay window in the background if it changed since the last save (while a
    /// save is still running, the next rescan tick tries again).
    fn save_window(&mut self) {
        let Some(path) = self.cfg.replay_state.clone() else {
            return;
        };
        let generation = self.filter.window_generation();
        if generation == self.saved_generation {
            return;
        }
        if self.save_task.as_ref().is_some_and(|t| !t.is_finished()) {
            self.save_pending = true;
            return;
        }
        self.save_pending = false;
        self.saved_generation = generation;
        self.last_save = Instant::now();
        let bytes = self.filter.encode_window();
        self.save_task = Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = write_window(&path, &bytes) {
                tracing::warn!(path = %path.display(), error = %e, "cannot save the beacon replay window");
            }
        }));
    }

    /// Neighbourhood changed: beacon fast for a while.
    fn changed(&mut self, now: Instant) {
        self.interval.on_change();
        self.fast_until = now + Duration::from_secs(2);
        let next = now + self.interval.current();
        if next < self.next_beacon {
            self.next_beacon = next;
        }
    }

    /// Schedules an out-of-schedule beacon as soon as `reply_gap` allows.
    fn send_soon(&mut self, now: Instant) {
        let earliest = self
            .last_reply
            .map_or(now, |t| (t + self.cfg.reply_gap).max(now));
        if earliest < self.next_beacon {
            self.next_beacon = earliest;
            self.reply_pending = true;
        }
        self.fast_until = self.fast_until.max(now + Duration::from_secs(2));
    }

    fn jitter(&mut self) -> f64 {
        // xorshift64*: jitter only needs to desynchronise nodes.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let v = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    fn send_scheduled(&mut self) {
        let now = Instant::now();
        self.tick += 1;
        let fast = now < self.fast_until;
        let names: Vec<String> = self.ifaces.keys().cloned().collect();
        for name in names {
            self.send_on(&name, fast);
        }
        if std::mem::take(&mut self.reply_pending) {
            self.last_reply = Some(now);
        }
        let j = self.jitter();
        let gap = self.interval.next_gap(now.into_std(), self.table.len(), j);
        self.next_beacon = now + gap;
    }

    /// Sends one beacon per family on `name` (in steady state, one family per tick).
    fn send_on(&mut self, name: &str, both: bool) {
        let Some(st) = self.ifaces.get(name) else {
            return;
        };
        let (v4, v6) = (st.v4.clone(), st.v6.clone());
        let index = st.info.index;
        let alternate = !both && v4.is_some() && v6.is_some();
        let use_v4 = !alternate || self.tick.is_multiple_of(2);
        let use_v6 = !alternate || !self.tick.is_multiple_of(2);
        let met: Vec<ShortId> = self.met.iter().map(ShortId::of).collect();
        let mut out: Vec<(Arc<UdpSocket>, SocketAddr)> = Vec::new();
        if let (Some(s), true) = (v4, use_v4) {
            out.push((
                s,
                SocketAddr::V4(SocketAddrV4::new(self.cfg.group_v4, self.cfg.beacon_port)),
            ));
        }
        if let (Some(s), true) = (v6, use_v6) {
            out.push((
                s,
                SocketAddr::V6(SocketAddrV6::new(GROUP_V6, self.cfg.beacon_port, 0, index)),
            ));
        }
        for (sock, dest) in out {
            let now = Timestamp::now();
            let second = now.0 / 1000;
            if second != self.seq_second {
                self.seq_second = second;
                self.seq = 0;
            } else {
                self.seq += 1;
            }
            let pkt = Beacon::encode_signed(
                &self.me,
                self.seq,
                now,
                self.cfg.session_port,
                self.digest,
                &met,
            );
            // A direct non-blocking sendto: tokio's try_send_to refuses until the reactor has
            // seen the socket writable, which loses the first (most urgent) beacon.
            match socket2::SockRef::from(&*sock).send_to(&pkt, &dest.into()) {
                Ok(_) => {
                    inc(&self.counters.beacons_sent, 1);
                    inc(&self.counters.beacon_bytes_sent, pkt.len() as u64);
                }
                Err(e) => {
                    inc(&self.counters.send_errors, 1);
                    tracing::debug!(iface = name, %dest, error = %e, "beacon send failed");
                }
            }
        }
    }

    /// Re-reads interfaces; opens sockets on new ones and beacons at once on any link event.
    fn rescan(&mut self, now: Instant) {
        let list = match iface::scan() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list interfaces");
                return;
            }
        };
        let allowed = self.cfg.interfaces.clone();
        let wanted =
            move |i: &Iface| i.eligible() && (allowed.is_empty() || allowed.contains(&i.name));
        let gone: Vec<String> = self
            .ifaces
            .keys()
            .filter(|n| !list.get(*n).is_some_and(&wanted))
            .cloned()
            .collect();
        for n in gone {
            tracing::debug!(iface = %n, "interface gone");
            self.ifaces.remove(&n);
        }
        let mut link_event = false;
        for info in list.values().filter(|i| wanted(i)) {
            // `event`: the interface is new, changed its addresses or gained carrier (worth an
            // immediate beacon); `retry`: a socket is missing (it failed to open earlier),
            // reopen quietly.
            let (event, retry, carrier_up) = match self.ifaces.get(&info.name) {
                None => (true, false, info.running),
                Some(st) => (
                    st.info.index != info.index
                        || st.info.v4 != info.v4
                        || st.info.v6_link_local != info.v6_link_local,
                    self.cfg.beacons
                        && ((self.cfg.ipv6 && st.v6.is_none() && info.v6_link_local.is_some())
                            || (self.cfg.ipv4 && st.v4.is_none() && info.v4.is_some())),
                    !st.info.running && info.running,
                ),
            };
            if (event || retry) && self.cfg.beacons {
                let st = self.open_iface(info);
                self.ifaces.insert(info.name.clone(), st);
            } else if let Some(st) = self.ifaces.get_mut(&info.name) {
                st.info = info.clone();
            } else {
                // Beacons off: remember the interface for carrier tracking only.
                self.ifaces.insert(
                    info.name.clone(),
                    IfState {
                        info: info.clone(),
                        v4: None,
                        v6: None,
                        tasks: Vec::new(),
                    },
                );
            }
            if (event || carrier_up) && info.running {
                link_event = true;
                inc(&self.counters.link_events, 1);
                tracing::debug!(iface = %info.name, "link event: beacon now");
                if self.cfg.beacons {
                    self.send_on(&info.name, true);
                }
            }
        }
        if link_event {
            self.changed(now);
            self.last_reply = Some(now);
            if let Some(m) = &mut self.mdns {
                m.refresh();
            }
        }
    }

    fn open_iface(&self, info: &Iface) -> IfState {
        let mut st = IfState {
            info: info.clone(),
            v4: None,
            v6: None,
            tasks: Vec::new(),
        };
        if self.cfg.ipv4
            && let Some(addr) = info.v4
        {
            match open_v4(info, addr, self.cfg.group_v4, self.cfg.beacon_port) {
                Ok(s) => st.v4 = Some(Arc::new(s)),
                Err(e) => tracing::warn!(iface = %info.name, error = %e, "no IPv4 beacon socket"),
            }
        }
        if self.cfg.ipv6 && info.v6_link_local.is_some() {
            match open_v6(info, self.cfg.beacon_port) {
                Ok(s) => st.v6 = Some(Arc::new(s)),
                Err(e) => tracing::warn!(iface = %info.name, error = %e, "no IPv6 beacon socket"),
            }
        }
        for s in [st.v4.clone(), st.v6.clone()].into_iter().flatten() {
            st.tasks.push(tokio::spawn(receive(
                s,
                info.name.clone(),
                info.index,
                self.input_tx.clone(),
                self.counters.clone(),
            )));
        }
        tracing::debug!(iface = %info.name, v4 = st.v4.is_some(), v6 = st.v6.is_some(), "beacon sockets open");
        st
    }
}

/// Restores the replay window saved at `path`; a missing file is a first start, a bad one is
/// logged and ignored (the window then starts empty, as without a file).
fn load_window(filter: &mut BeaconFilter, path: &Path) {
    match std::fs::read(path) {
        Ok(bytes) => match filter.restore_window(&bytes) {
            Ok(n) => {
                tracing::debug!(path = %path.display(), senders = n, "beacon replay window restored")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring the saved beacon replay window")
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the beacon replay window")
        }
    }
}

/// Writes `bytes` to `path` atomically and durably: a temporary file, fsync, rename, then
/// fsync of the directory (a power cut leaves the old window or the new one, never a torn
/// one; a torn one would be ignored anyway).
fn write_window(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

async fn receive(
    sock: Arc<UdpSocket>,
    iface: String,
    index: u32,
    tx: mpsc::Sender<Input>,
    counters: Arc<Counters>,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let msg = Input::Datagram {
                    iface: iface.clone(),
                    index,
                    from,
                    bytes: buf[..n].to_vec(),
                    at: Instant::now(),
                };
                match tx.try_send(msg) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => inc(&counters.rx_overflow, 1),
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            Err(e) => {
                tracing::debug!(%iface, error = %e, "beacon receive error");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn common_socket(domain: Domain, info: &Iface) -> io::Result<Socket> {
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind_device(Some(info.name.as_bytes()))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

fn open_v4(info: &Iface, addr: Ipv4Addr, group: Ipv4Addr, port: u16) -> io::Result<UdpSocket> {
    let s = common_socket(Domain::IPV4, info)?;
    s.set_multicast_all_v4(false)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())?;
    s.join_multicast_v4_n(&group, &InterfaceIndexOrAddress::Index(info.index))?;
    s.set_multicast_if_v4(&addr)?;
    s.set_multicast_ttl_v4(1)?;
    s.set_multicast_loop_v4(false)?;
    UdpSocket::from_std(s.into())
}

fn open_v6(info: &Iface, port: u16) -> io::Result<UdpSocket> {
    let s = common_socket(Domain::IPV6, info)?;
    s.set_only_v6(true)?;
    s.set_multicast_all_v6(false)?;
    s.bind(&SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0)).into())?;
    s.join_multicast_v6(&GROUP_V6, info.index)?;
    s.set_multicast_if_v6(info.index)?;
    s.set_multicast_hops_v6(1)?;
    s.set_multicast_loop_v6(false)?;
    UdpSocket::from_std(s.into())
}

/// The mDNS side: one `mdns-sd` daemon advertising us and browsing for others.
struct Mdns {
    daemon: mdns_sd::ServiceDaemon,
    info: mdns_sd::ServiceInfo,
    own: NodeId,
    input: mpsc::Sender<Input>,
    browse_task: Option<JoinHandle<()>>,
    /// Link-event rescans requested so far (each one grows a list inside mdns-sd).
    forced_rescans: u32,
}

/// Most forced interface rescans per mDNS daemon; after that its own 1 s check applies.
const MAX_FORCED_RESCANS: u32 = 1000;

impl Mdns {
    fn start(
        cfg: &DiscoveryConfig,
        me: &NodeIdentity,
        input: mpsc::Sender<Input>,
    ) -> Result<Mdns, DiscoveryError> {
        let err = |e: mdns_sd::Error| DiscoveryError::Mdns(e.to_string());
        let daemon = mdns_sd::ServiceDaemon::new().map_err(err)?;
        // mdns-sd only uses interfaces that are operationally up, and re-checks every 5 s by
        // default: a link that gains carrier would wait up to 5 s for mDNS.
        daemon.set_ip_check_interval(1).map_err(err)?;
        let id = me.id();
        let short = hex::encode(&id.0[..8]);
        let props = [
            ("id", id.to_string()),
            ("v", PROTOCOL_VERSION.to_string()),
            ("port", cfg.session_port.to_string()),
        ];
        let info = mdns_sd::ServiceInfo::new(
            MDNS_SERVICE_TYPE,
            &format!("mule-{short}"),
            &format!("mule-{short}.local."),
            "",
            cfg.session_port,
            &props[..],
        )
        .map_err(err)?
        .enable_addr_auto();
        daemon.register(info.clone()).map_err(err)?;
        let mut m = Mdns {
            daemon,
            info,
            own: id,
            input,
            browse_task: None,
            forced_rescans: 0,
        };
        m.browse();
        Ok(m)
    }

    fn browse(&mut self) {
        let rx = match self.daemon.browse(MDNS_SERVICE_TYPE) {
            Ok(rx) => rx,
            Err(e) => {
                tracing::warn!(error = %e, "mDNS browse failed");
                return;
            }
        };
        let own = self.own;
        let input = self.input.clone();
        if let Some(t) = self.browse_task.take() {
            t.abort();
        }
        self.browse_task = Some(tokio::spawn(async move {
            while let Ok(ev) = rx.recv_async().await {
                if let mdns_sd::ServiceEvent::ServiceResolved(svc) = ev {
                    for obs in mdns_observations(&svc, &own) {
                        if input.send(Input::Observation(obs)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }));
    }

    /// A link came up: query again and re-announce, so both sides resolve each other now
    /// rather than at the next exponential-backoff query.
    fn refresh(&mut self) {
        if self.forced_rescans < MAX_FORCED_RESCANS {
            // Makes mdns-sd pick up an interface that just gained carrier right now (it
            // re-reads interfaces when a selection is added); the commands below run after.
            self.forced_rescans += 1;
            let _ = self.daemon.enable_interface(mdns_sd::IfKind::All);
        }
        let _ = self.daemon.stop_browse(MDNS_SERVICE_TYPE);
        self.browse();
        let _ = self.daemon.register(self.info.clone());
    }

    fn stop(self) {
        if let Some(t) = &self.browse_task {
            t.abort();
        }
        let _ = self.daemon.unregister(self.info.get_fullname());
        let _ = self.daemon.shutdown();
    }
}

/// Turns a resolved `_mule._tcp` service into observations (one per address); services
/// without a valid `id` TXT record, or our own, yield none.
pub(crate) fn mdns_observations(svc: &mdns_sd::ResolvedService, own: &NodeId) -> Vec<Observation> {
    let Some(node) = svc
        .txt_properties
        .get_property_val_str("id")
        .and_then(|s| s.parse::<NodeId>().ok())
    else {
        return Vec::new();
    };
    if node == *own {
        return Vec::new();
    }
    let port = svc
        .txt_properties
        .get_property_val_str("port")
        .and_then(|p| p.parse().ok())
        .unwrap_or(svc.port);
    svc.addresses
        .iter()
        .filter(|a| !a.is_loopback())
        .map(|a| {
            let (addr, iface) = match a {
                mdns_sd::ScopedIp::V4(v4) => (
                    SocketAddr::V4(SocketAddrV4::new(*v4.addr(), port)),
                    v4.interface_ids().first().map(|i| i.name.clone()),
                ),
                mdns_sd::ScopedIp::V6(v6) => {
                    let scope = if v6.addr().is_unicast_link_local() {
                        v6.scope_id().index
                    } else {
                        0
                    };
                    (
                        SocketAddr::V6(SocketAddrV6::new(*v6.addr(), port, 0, scope)),
                        Some(v6.scope_id().name.clone()),
                    )
                }
                other => (SocketAddr::new(other.to_ip_addr(), port), None),
            };
            Observation {
                node,
                transport: Transport::Mdns,
                addr: PeerAddr::Ip { addr, iface },
                digest: None,
                met: Vec::new(),
            }
        })
        .collect()
}
