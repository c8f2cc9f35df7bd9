//! Bluetooth LE discovery and L2CAP session channels.
//!
//! # What goes over the air
//! Each node registers an LE advertisement (through BlueZ, via `bluer`) with the Mule service
//! UUID [`SERVICE_UUID`] and service data [`AdvPayload`]:
//! ```text
//! [version u8 = 1][short node id: first 8 bytes of the NodeId][L2CAP PSM u8 (0x80-0xff)]
//! ```
//! 10 bytes, so flags (3) + service data with the 128-bit UUID (2 + 16 + 10) fill exactly a
//! legacy 31-byte advertisement (the UUID is therefore not repeated in a service UUID list). The full
//! 32-byte node id does not fit, so a sighting gives only a short id; [`IdMap`] resolves it
//! to a full [`NodeId`] learnt from beacons, mDNS or an earlier session with that device.
//! Sightings that cannot be resolved yet are kept (bounded) and reported by
//! [`IdMap::unresolved`]. To resolve them without any other transport, every node also runs
//! a tiny identity listener on [`id_psm`] (the session PSM + 1): the scanner connects there,
//! sends its own 32-byte node id, reads the listener's ([`ask_identity`], [`answer_identity`]),
//! checks it against the advertised short id, and only then reports the peer; the listener
//! binds the asker's device address to the id it was told ([`IdMap::learn_claim`]). The ids are
//! hints; the session handshake proves them.
//!
//! # Who probes
//! Only the node with the smaller short id probes at once ([`probes_first`], the same order in
//! which the smaller node id dials sessions); the other waits [`PROBE_DEFER`] for that probe,
//! which tells it the asker's id, and probes only if it has not learnt the id by then. So two
//! nodes do not open LE connections to each other at the same moment. That matters on Linux
//! 6.12: when a node's own connection attempt to a device is pending and the device connects
//! to it, the kernel makes the incoming link a second connection object next to the pending
//! attempt (upstream now matches a new link to a pending attempt by role as well as by
//! address), and the L2CAP channel waiting on that attempt never completes. The same race
//! passed on 6.1. See `testbed/bt-vm/README.md`, pitfall 14.
//!
//! # One adapter per node
//! The identity listener, the session listener ([`BleListener::bind_on`]) and the connector
//! ([`connect_from`]) are bound to the configured adapter's address, so several nodes (one
//! per adapter) can share a machine. Discovery scans first and advertises second, re-registers
//! its advertisement every few seconds (emulated controllers only report an advertisement
//! when it is enabled), gives up its round when the adapter is powered off and starts a new
//! one when it is back; a lost `bluetoothd` is logged once as a warning and retried quietly.
//!
//! Sessions run over L2CAP LE credit-based channels (`SOCK_STREAM`) on a fixed PSM
//! ([`crate::discovery::DEFAULT_BLE_PSM`] by default, LE dynamic range 0x80–0xff), as the same
//! [`SessionStream`] type TCP sessions use. The connector guards against `bluer` returning
//! from `connect()` before the channel is up ([`crate::stream::wait_connected`] polling
//! `conn_info()`) and retries "connection refused" with backoff.
//!
//! # Without a radio
//! With no adapter, no `bluetoothd` or no system bus, discovery logs **one** warning and the
//! node carries on without Bluetooth. This machine has no Bluetooth; the pure parts here
//! (payload, id mapping) and the stream guards are unit-tested, the radio paths run in the
//! qemu BlueZ testbed.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::NodeId;
use crate::neighbours::BleAddr;

/// The Mule BLE service UUID (random, version 4).
pub const SERVICE_UUID: u128 = 0x6d75_6c65_7f3a_4b1c_9a0e_5c2d_1b4f_8e01;

/// Payload format version.
pub const PAYLOAD_VERSION: u8 = 1;

/// Length of an encoded [`AdvPayload`].
pub const PAYLOAD_LEN: usize = 10;

// Fits a legacy advertisement: flags (3) + service data with a 128-bit UUID (2 + 16 + payload).
const _: () = assert!(3 + 2 + 16 + PAYLOAD_LEN <= 31);

/// The first 8 bytes of a node id, as carried in advertisements.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BleShortId(pub [u8; 8]);

impl BleShortId {
    /// The short id of `node`.
    pub fn of(node: &NodeId) -> BleShortId {
        let mut s = [0u8; 8];
        s.copy_from_slice(&node.0[..8]);
        BleShortId(s)
    }

    /// Whether `node` has this short id.
    pub fn matches(&self, node: &NodeId) -> bool {
        node.0[..8] == self.0
    }
}

impl fmt::Debug for BleShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BleShortId({})", hex::encode(self.0))
    }
}

/// The service data of a Mule advertisement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdvPayload {
    /// Short id of the advertiser.
    pub short: BleShortId,
    /// PSM of its L2CAP session listener.
    pub psm: u16,
}

/// Why service data is not a Mule payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Wrong length.
    #[error("BLE payload of {0} bytes, expected {PAYLOAD_LEN}")]
    Length(usize),
    /// Unknown version.
    #[error("BLE payload version {0} unsupported")]
    Version(u8),
    /// PSM outside the LE dynamic range.
    #[error("BLE payload PSM {0:#x} outside 0x80..=0xff")]
    Psm(u16),
}

impl AdvPayload {
    /// The payload advertising `node` with listener `psm`.
    pub fn new(node: &NodeId, psm: u16) -> AdvPayload {
        AdvPayload {
            short: BleShortId::of(node),
            psm,
        }
    }

    /// Encodes (see the module docs for the layout).
    pub fn encode(&self) -> [u8; PAYLOAD_LEN] {
        let mut b = [0u8; PAYLOAD_LEN];
        b[0] = PAYLOAD_VERSION;
        b[1..9].copy_from_slice(&self.short.0);
        // The LE dynamic PSM range 0x80-0xff fits one byte.
        b[9] = self.psm.min(0xff) as u8;
        b
    }

    /// Decodes service data received from any device.
    pub fn decode(b: &[u8]) -> Result<AdvPayload, PayloadError> {
        if b.len() != PAYLOAD_LEN {
            return Err(PayloadError::Length(b.len()));
        }
        if b[0] != PAYLOAD_VERSION {
            return Err(PayloadError::Version(b[0]));
        }
        let psm = u16::from(b[9]);
        if !(0x80..=0xff).contains(&psm) {
            return Err(PayloadError::Psm(psm));
        }
        let mut short = [0u8; 8];
        short.copy_from_slice(&b[1..9]);
        Ok(AdvPayload {
            short: BleShortId(short),
            psm,
        })
    }
}

/// PSM of a node's identity listener, derived from its session PSM `psm`: the next one up
/// (0x85 gives 0x86; 0xff gives 0xfe). A peer that sees an advertisement whose short id it
/// cannot resolve connects there and reads the advertiser's 32-byte node id; the id is only a
/// hint (it must match the advertised short id) since the session handshake authenticates it.
pub fn id_psm(psm: u16) -> u16 {
    if psm >= 0xff { 0xfe } else { psm.max(0x80) + 1 }
}

/// How long the node with the larger short id waits before probing a peer's identity itself:
/// longer than the peer needs to see our advertisement (re-registered every 8 s) and probe us.
pub const PROBE_DEFER: Duration = Duration::from_secs(12);

/// Whether node `own` probes a device advertising short id `peer` at once (`true`: ours is
/// the smaller one) or waits [`PROBE_DEFER`] for that device to probe it first (see the
/// module docs, "Who probes").
pub fn probes_first(own: &NodeId, peer: BleShortId) -> bool {
    BleShortId::of(own) < peer
}

/// The asking side of an identity probe on a connected stream: sends our node id, then reads
/// the 32-byte id of the node that answers.
pub async fn ask_identity<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    own: &NodeId,
) -> io::Result<NodeId> {
    s.write_all(&own.0).await?;
    let mut id = [0u8; 32];
    s.read_exact(&mut id).await?;
    Ok(NodeId(id))
}

/// The answering side: sends our node id, reads the asker's (`None` if it sends none within
/// `wait`: an older asker only reads), then waits up to `wait` for the asker to close (closing
/// first could drop the bytes not sent yet).
pub async fn answer_identity<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    own: &NodeId,
    wait: Duration,
) -> Option<NodeId> {
    s.write_all(&own.0).await.ok()?;
    let mut id = [0u8; 32];
    let told = tokio::time::timeout(wait, s.read_exact(&mut id)).await;
    let asker = matches!(told, Ok(Ok(_))).then_some(NodeId(id));
    if asker.is_some() {
        let mut b = [0u8; 16];
        let _ = tokio::time::timeout(wait, s.read(&mut b)).await;
    }
    asker
}

/// Maps Bluetooth sightings (address + short id) to full node ids. Bounded: at most
/// `cap` known ids, `cap` address bindings and `cap` unresolved sightings (oldest first out).
#[derive(Debug)]
pub struct IdMap {
    cap: usize,
    by_short: HashMap<BleShortId, NodeId>,
    short_order: VecDeque<BleShortId>,
    by_addr: HashMap<BleAddr, NodeId>,
    addr_order: VecDeque<BleAddr>,
    unresolved: VecDeque<(BleAddr, AdvPayload)>,
}

impl IdMap {
    /// An empty map holding at most `cap` entries of each kind.
    pub fn new(cap: usize) -> IdMap {
        IdMap {
            cap: cap.max(1),
            by_short: HashMap::new(),
            short_order: VecDeque::new(),
            by_addr: HashMap::new(),
            addr_order: VecDeque::new(),
            unresolved: VecDeque::new(),
        }
    }

    /// Learns a full id (seen via beacon, mDNS, ...). Returns sightings it resolves.
    pub fn learn_id(&mut self, node: NodeId) -> Vec<(BleAddr, AdvPayload, NodeId)> {
        let short = BleShortId::of(&node);
        if self.by_short.insert(short, node).is_none() {
            self.short_order.push_back(short);
            if self.short_order.len() > self.cap
                && let Some(old) = self.short_order.pop_front()
            {
                self.by_short.remove(&old);
            }
        }
        self.take_resolved()
    }

    /// Learns that device `addr` is `node` (e.g. after a session told us). Returns sightings
    /// it resolves.
    pub fn learn_addr(
        &mut self,
        node: NodeId,
        addr: BleAddr,
    ) -> Vec<(BleAddr, AdvPayload, NodeId)> {
        let mut out = self.learn_id(node);
        self.bind_addr(node, addr);
        out.extend(self.take_resolved());
        out
    }

    /// A device that probed us said it is `node`: binds `addr` to it (without learning `node`
    /// as the holder of its short id, since nobody asked). Returns sightings it resolves: only
    /// those of `addr` whose advertised short id matches `node`.
    pub fn learn_claim(
        &mut self,
        node: NodeId,
        addr: BleAddr,
    ) -> Vec<(BleAddr, AdvPayload, NodeId)> {
        self.bind_addr(node, addr);
        self.take_resolved()
    }

    fn bind_addr(&mut self, node: NodeId, addr: BleAddr) {
        if self.by_addr.insert(addr, node).is_none() {
            self.addr_order.push_back(addr);
            if self.addr_order.len() > self.cap
                && let Some(old) = self.addr_order.pop_front()
            {
                self.by_addr.remove(&old);
            }
        }
    }

    /// The node a sighting resolves to, if known (nothing is remembered).
    pub fn find(&self, addr: BleAddr, p: AdvPayload) -> Option<NodeId> {
        self.by_addr
            .get(&addr)
            .filter(|n| p.short.matches(n))
            .or_else(|| self.by_short.get(&p.short))
            .copied()
    }

    /// Resolves a sighting, or remembers it as unresolved.
    pub fn resolve(&mut self, addr: BleAddr, p: AdvPayload) -> Option<NodeId> {
        let found = self.find(addr, p);
        if found.is_none() {
            self.unresolved.retain(|(a, _)| *a != addr);
            self.unresolved.push_back((addr, p));
            if self.unresolved.len() > self.cap {
                self.unresolved.pop_front();
            }
        }
        found
    }

    /// Sightings not resolved yet (device address, payload), oldest first.
    pub fn unresolved(&self) -> Vec<(BleAddr, AdvPayload)> {
        self.unresolved.iter().copied().collect()
    }

    fn take_resolved(&mut self) -> Vec<(BleAddr, AdvPayload, NodeId)> {
        let mut out = Vec::new();
        let mut keep = VecDeque::new();
        while let Some((a, p)) = self.unresolved.pop_front() {
            match self.find(a, p) {
                Some(n) => out.push((a, p, n)),
                None => keep.push_back((a, p)),
            }
        }
        self.unresolved = keep;
        out
    }
}

#[cfg(feature = "bluetooth")]
pub use radio::*;

#[cfg(feature = "bluetooth")]
mod radio {
    use std::collections::hash_map::Entry;
    use std::collections::{BTreeMap, HashMap};
    use std::sync::{Arc, Mutex};

    use bluer::l2cap::{Socket, SocketAddr as L2Addr, StreamListener};
    use bluer::{Address, AddressType};
    use futures_util::StreamExt;
    use tokio::sync::mpsc;
    use tokio::task::{JoinHandle, JoinSet};
    use tokio::time::Instant;

    use super::*;
    use crate::discovery::{DiscoveryConfig, Input};
    use crate::neighbours::{Observation, PeerAddr, Transport};
    use crate::stream::{
        RetryPolicy, SessionStream, connect_with_retry, session_stream, wait_connected,
    };

    /// How often the advertisement is registered anew. Real controllers repeat advertising
    /// on their own; BlueZ's emulated controllers (btvirt before BlueZ 5.80) report an
    /// advertisement to scanners only when it is enabled, so re-registering is what lets a
    /// peer that missed the first report (or lost the link) find us again.
    const READVERTISE_EVERY: Duration = Duration::from_secs(8);
    /// How often the adapter's power state is checked (a stopped `bluetoothd` shows up here).
    const HEALTH_EVERY: Duration = Duration::from_secs(2);
    /// A device whose identity probe failed is probed again after this long at the earliest.
    const PROBE_AGAIN_AFTER: Duration = Duration::from_secs(4);
    /// Longest identity probe (connect + 32 bytes).
    const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
    /// Identity probes running at once.
    const MAX_PROBES: usize = 4;
    /// How long an identity answer waits for the asker's id, and then for it to close.
    const ANSWER_WAIT: Duration = Duration::from_secs(5);
    /// Longest wait for scanning to be on before advertising anyway.
    const DISCOVERING_WAIT: Duration = Duration::from_secs(5);

    /// Bluetooth discovery running in the background (advertising + scanning).
    #[derive(Debug)]
    pub struct BleDiscovery {
        ids: Arc<Mutex<IdMap>>,
        input: mpsc::Sender<Input>,
        task: JoinHandle<()>,
    }

    impl Drop for BleDiscovery {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl BleDiscovery {
        /// A full node id was seen elsewhere: resolve pending sightings.
        pub fn learn_id(&self, node: NodeId) {
            let resolved = self
                .ids
                .lock()
                .map(|mut m| m.learn_id(node))
                .unwrap_or_default();
            emit(&self.input, resolved);
        }

        /// Device `addr` is `node`.
        pub fn learn(&self, node: NodeId, addr: BleAddr) {
            let resolved = self
                .ids
                .lock()
                .map(|mut m| m.learn_addr(node, addr))
                .unwrap_or_default();
            emit(&self.input, resolved);
        }

        /// The shared id map (the [`crate::Discovery`] handle reads unresolved sightings).
        pub(crate) fn ids(&self) -> Arc<Mutex<IdMap>> {
            self.ids.clone()
        }

        /// Sightings whose node id is not known yet.
        pub fn unresolved(&self) -> Vec<(BleAddr, AdvPayload)> {
            self.ids.lock().map(|m| m.unresolved()).unwrap_or_default()
        }
    }

    fn emit(input: &mpsc::Sender<Input>, resolved: Vec<(BleAddr, AdvPayload, NodeId)>) {
        for (addr, p, node) in resolved {
            let _ = input.try_send(Input::Observation(observation(node, addr, p.psm)));
        }
    }

    fn observation(node: NodeId, addr: BleAddr, psm: u16) -> Observation {
        Observation {
            node,
            transport: Transport::Ble,
            addr: PeerAddr::Ble { addr, psm },
            digest: None,
            met: Vec::new(),
        }
    }

    fn to_io(e: bluer::Error) -> io::Error {
        io::Error::other(e.to_string())
    }

    /// The address of adapter `name` (`None`: BlueZ's default adapter). Sessions of a node
    /// must use its own adapter: with several adapters in one machine (or several nodes on
    /// one machine), a listener on "any" address takes every adapter's PSM.
    pub async fn adapter_address(name: Option<&str>) -> io::Result<BleAddr> {
        let session = bluer::Session::new().await.map_err(to_io)?;
        let adapter = match name {
            Some(n) => session.adapter(n).map_err(to_io)?,
            None => session.default_adapter().await.map_err(to_io)?,
        };
        Ok(BleAddr(adapter.address().await.map_err(to_io)?.0))
    }

    /// Starts advertising and scanning in the background. While BlueZ cannot be reached
    /// (no adapter, no `bluetoothd`, no system bus) one warning is logged and the task keeps
    /// retrying quietly; when the adapter is powered off it waits for it to come back.
    pub(crate) fn spawn_discovery(
        cfg: &DiscoveryConfig,
        own: NodeId,
        input: mpsc::Sender<Input>,
    ) -> Option<BleDiscovery> {
        let ids = Arc::new(Mutex::new(IdMap::new(256)));
        let adapter_name = cfg.bluetooth_adapter.clone();
        let psm = cfg.ble_psm;
        let task = tokio::spawn(run(adapter_name, own, psm, ids.clone(), input.clone()));
        Some(BleDiscovery { ids, input, task })
    }

    /// Why one round of advertising + scanning ended without an error.
    enum End {
        /// The daemon is gone (event receiver dropped).
        InputClosed,
        /// The adapter is powered off, or discovery was stopped under us.
        AdapterOff,
    }

    async fn run(
        adapter_name: Option<String>,
        own: NodeId,
        psm: u16,
        ids: Arc<Mutex<IdMap>>,
        input: mpsc::Sender<Input>,
    ) {
        let mut lost = false;
        let mut first = true;
        let mut backoff = Duration::from_secs(1);
        loop {
            let started = Instant::now();
            let r = run_once(
                adapter_name.as_deref(),
                own,
                psm,
                &ids,
                &input,
                first,
                &mut lost,
            )
            .await;
            first = false;
            match r {
                Ok(End::InputClosed) => return,
                Ok(End::AdapterOff) => {
                    tracing::debug!(adapter = ?adapter_name, "Bluetooth adapter off or discovery stopped; waiting")
                }
                Err(e) if !lost => {
                    lost = true;
                    tracing::warn!(adapter = ?adapter_name, error = %e,
                        "Bluetooth unavailable (no adapter or no bluetoothd); continuing without it, retrying in the background");
                }
                Err(e) => tracing::debug!(error = %e, "Bluetooth still unavailable"),
            }
            if input.is_closed() {
                return;
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_secs(1);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(4));
        }
    }

    async fn run_once(
        adapter_name: Option<&str>,
        own: NodeId,
        psm: u16,
        ids: &Arc<Mutex<IdMap>>,
        input: &mpsc::Sender<Input>,
        first: bool,
        lost: &mut bool,
    ) -> bluer::Result<End> {
        let session = bluer::Session::new().await?;
        let adapter = match adapter_name {
            Some(n) => session.adapter(n)?,
            None => session.default_adapter().await?,
        };
        if first {
            adapter.set_powered(true).await?;
        } else if !adapter.is_powered().await? {
            // Someone switched Bluetooth off: respect it and wait.
            return Ok(End::AdapterOff);
        }
        let local = adapter.address().await?;
        let local_kind = adapter
            .address_type()
            .await
            .unwrap_or(AddressType::LePublic);
        // The identity listener answers in its own task, so a slow D-Bus call in the loop
        // below never leaves probes waiting (bluer's `bind` has a backlog of 1, too small).
        let id_sock = Socket::new_stream()?;
        id_sock.bind(L2Addr::new(local, local_kind, id_psm(psm)))?;
        let mut tasks = JoinSet::new();
        let id_listener = id_sock.listen(8)?;
        tasks.spawn(answer_loop(id_listener, own, ids.clone(), input.clone()));
        let _ = adapter
            .set_discovery_filter(bluer::DiscoveryFilter {
                transport: bluer::DiscoveryTransport::Le,
                duplicate_data: true,
                ..Default::default()
            })
            .await;
        let mut events = Box::pin(adapter.discover_devices_with_changes().await?);
        // Scan first, then advertise: emulated controllers push advertising reports to the
        // scanners that are active when advertising is enabled.
        let waited = Instant::now();
        while !adapter.is_discovering().await.unwrap_or(true) && waited.elapsed() < DISCOVERING_WAIT
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let uuid = bluer::Uuid::from_u128(SERVICE_UUID);
        let adv = advertisement(uuid, &own, psm);
        let mut adv_handle = Some(adapter.advertise(adv.clone()).await?);
        let back = if std::mem::take(lost) { "back: " } else { "" };
        tracing::info!(adapter = adapter.name(), address = %local, psm, "Bluetooth {back}advertising and scanning");
        let mut readvertise =
            tokio::time::interval_at(Instant::now() + READVERTISE_EVERY, READVERTISE_EVERY);
        let mut health = tokio::time::interval_at(Instant::now() + HEALTH_EVERY, HEALTH_EVERY);
        let mut prober = Prober::new(own, (local, local_kind), ids.clone(), input.clone());
        loop {
            let next_due = prober.next_due();
            tokio::select! {
                ev = events.next() => {
                    let Some(ev) = ev else { return Ok(End::AdapterOff) };
                    let bluer::AdapterEvent::DeviceAdded(addr) = ev else { continue };
                    let Some((p, kind)) = sighting(&adapter, addr, uuid).await else { continue };
                    if p.short.matches(&own) {
                        continue;
                    }
                    let baddr = BleAddr(addr.0);
                    let node = ids.lock().ok().and_then(|mut m| m.resolve(baddr, p));
                    if let Some(node) = node {
                        if input.send(Input::Observation(observation(node, baddr, p.psm))).await.is_err() {
                            return Ok(End::InputClosed);
                        }
                    } else {
                        prober.sighted(addr, kind, p, &mut tasks);
                    }
                }
                Some(_) = prober.done.recv() => prober.probing = prober.probing.saturating_sub(1),
                _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                    prober.run_due(&mut tasks);
                }
                _ = readvertise.tick() => {
                    drop(adv_handle.take());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    match adapter.advertise(adv.clone()).await {
                        Ok(h) => adv_handle = Some(h),
                        Err(e) => tracing::debug!(error = %e, "Bluetooth re-advertising failed"),
                    }
                }
                _ = health.tick() => {
                    if !adapter.is_powered().await? {
                        return Ok(End::AdapterOff);
                    }
                    if input.is_closed() {
                        return Ok(End::InputClosed);
                    }
                }
                Some(_) = tasks.join_next() => {}
            }
        }
    }

    /// Our advertisement: the Mule service data under `uuid`.
    fn advertisement(uuid: bluer::Uuid, own: &NodeId, psm: u16) -> bluer::adv::Advertisement {
        bluer::adv::Advertisement {
            service_data: BTreeMap::from([(uuid, AdvPayload::new(own, psm).encode().to_vec())]),
            discoverable: Some(true),
            ..Default::default()
        }
    }

    /// Answers identity probes on `listener` until the task is dropped, and binds each asker's
    /// device address to the id it told us (resolving its sightings).
    async fn answer_loop(
        listener: bluer::l2cap::StreamListener,
        own: NodeId,
        ids: Arc<Mutex<IdMap>>,
        input: mpsc::Sender<Input>,
    ) {
        let mut answers = JoinSet::new();
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((mut s, peer)) => {
                        tracing::debug!(device = %peer.addr, "Bluetooth identity asked");
                        let (ids, input) = (ids.clone(), input.clone());
                        answers.spawn(async move {
                            let asker = answer_identity(&mut s, &own, ANSWER_WAIT).await;
                            let Some(node) = asker.filter(|n| *n != own) else { return };
                            tracing::debug!(peer = %node.short(), device = %peer.addr, "Bluetooth identity told by the asker");
                            let resolved = ids.lock().map(|mut m| m.learn_claim(node, BleAddr(peer.addr.0))).unwrap_or_default();
                            emit(&input, resolved);
                        });
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "Bluetooth identity accept failed");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                Some(_) = answers.join_next() => {}
            }
        }
    }

    /// Identity probes of one discovery round: who was probed when, probes deferred for the
    /// peer to probe first ([`probes_first`]), and how many run.
    struct Prober {
        own: NodeId,
        local: (Address, AddressType),
        ids: Arc<Mutex<IdMap>>,
        input: mpsc::Sender<Input>,
        probed: HashMap<Address, Instant>,
        deferred: HashMap<Address, (Instant, AddressType, AdvPayload)>,
        probing: usize,
        done_tx: mpsc::Sender<Address>,
        done: mpsc::Receiver<Address>,
    }

    impl Prober {
        fn new(
            own: NodeId,
            local: (Address, AddressType),
            ids: Arc<Mutex<IdMap>>,
            input: mpsc::Sender<Input>,
        ) -> Prober {
            let (done_tx, done) = mpsc::channel(MAX_PROBES * 2);
            Prober {
                own,
                local,
                ids,
                input,
                probed: HashMap::new(),
                deferred: HashMap::new(),
                probing: 0,
                done_tx,
                done,
            }
        }

        /// An unresolved Mule device was seen: probe it now, or later if it should go first.
        fn sighted(
            &mut self,
            addr: Address,
            kind: AddressType,
            p: AdvPayload,
            tasks: &mut JoinSet<()>,
        ) {
            if probes_first(&self.own, p.short) {
                self.start(addr, kind, p, tasks);
            } else if let Entry::Vacant(e) = self.deferred.entry(addr) {
                tracing::debug!(device = %addr, "Bluetooth identity probe deferred: the peer probes first");
                e.insert((Instant::now() + PROBE_DEFER, kind, p));
            }
        }

        fn next_due(&self) -> Option<Instant> {
            self.deferred.values().map(|(t, ..)| *t).min()
        }

        /// Probes the deferred devices that are due and still unresolved.
        fn run_due(&mut self, tasks: &mut JoinSet<()>) {
            let now = Instant::now();
            let due: Vec<Address> = self
                .deferred
                .iter()
                .filter(|(_, (t, ..))| *t <= now)
                .map(|(a, _)| *a)
                .collect();
            for addr in due {
                let Some((_, kind, p)) = self.deferred.remove(&addr) else {
                    continue;
                };
                let known = self
                    .ids
                    .lock()
                    .ok()
                    .and_then(|m| m.find(BleAddr(addr.0), p));
                if known.is_none() {
                    self.start(addr, kind, p, tasks);
                }
            }
        }

        fn start(
            &mut self,
            addr: Address,
            kind: AddressType,
            p: AdvPayload,
            tasks: &mut JoinSet<()>,
        ) {
            if self.probing >= MAX_PROBES
                || self
                    .probed
                    .get(&addr)
                    .is_some_and(|t| t.elapsed() < PROBE_AGAIN_AFTER)
            {
                return;
            }
            self.probed.insert(addr, Instant::now());
            self.probing += 1;
            let (ids, input, done, own, local) = (
                self.ids.clone(),
                self.input.clone(),
                self.done_tx.clone(),
                self.own,
                self.local,
            );
            let baddr = BleAddr(addr.0);
            tasks.spawn(async move {
                match tokio::time::timeout(PROBE_TIMEOUT, probe(local, addr, kind, id_psm(p.psm), own)).await {
                    Ok(Ok(node)) if p.short.matches(&node) => {
                        tracing::debug!(peer = %node.short(), device = %addr, "Bluetooth identity learnt");
                        let resolved = ids.lock().map(|mut m| m.learn_addr(node, baddr)).unwrap_or_default();
                        emit(&input, resolved);
                    }
                    Ok(Ok(node)) => tracing::debug!(device = %addr, claimed = %node.short(), "Bluetooth identity does not match the advertised short id"),
                    Ok(Err(e)) => tracing::debug!(device = %addr, error = %e, "Bluetooth identity probe failed"),
                    Err(_) => tracing::debug!(device = %addr, "Bluetooth identity probe timed out"),
                }
                let _ = done.send(addr).await;
            });
        }
    }

    /// The Mule payload and address type of a device, if it advertises one.
    async fn sighting(
        adapter: &bluer::Adapter,
        addr: Address,
        uuid: bluer::Uuid,
    ) -> Option<(AdvPayload, AddressType)> {
        let dev = adapter.device(addr).ok()?;
        let data = dev.service_data().await.ok()??;
        let p = AdvPayload::decode(data.get(&uuid)?).ok()?;
        let kind = dev.address_type().await.unwrap_or(AddressType::LePublic);
        Some((p, kind))
    }

    /// Asks the device's identity listener for its full node id (telling it ours).
    async fn probe(
        local: (Address, AddressType),
        peer: Address,
        kind: AddressType,
        psm: u16,
        own: NodeId,
    ) -> io::Result<NodeId> {
        let policy = RetryPolicy {
            attempts: 3,
            ..Default::default()
        };
        let mut s = connect_stream(Some(local), peer, kind, psm, policy).await?;
        ask_identity(&mut s, &own).await
    }

    /// Connects an L2CAP LE stream from `local` (when given) to `peer`/`psm`, retrying
    /// refusals and waiting until the channel is really up (`bluer` may report a connect
    /// before the channel exists; the first write would then fail with `ENOTCONN`).
    async fn connect_stream(
        local: Option<(Address, AddressType)>,
        peer: Address,
        kind: AddressType,
        psm: u16,
        policy: RetryPolicy,
    ) -> io::Result<bluer::l2cap::Stream> {
        let sa = L2Addr::new(peer, kind, psm);
        let stream = connect_with_retry(policy, || async move {
            let sock = Socket::new_stream()?;
            if let Some((addr, k)) = local {
                sock.bind(L2Addr::new(addr, k, 0))?;
            }
            sock.connect(sa).await
        })
        .await?;
        wait_connected(
            || stream.as_ref().conn_info().map(drop),
            Duration::from_millis(10),
            Duration::from_secs(5),
        )
        .await?;
        Ok(stream)
    }

    /// An L2CAP LE listener for incoming sessions.
    #[derive(Debug)]
    pub struct BleListener {
        inner: StreamListener,
    }

    impl BleListener {
        /// Listens on `psm` (0x80–0xff) on every local adapter. Only one process per machine
        /// can do this; nodes sharing a machine use [`BleListener::bind_on`].
        pub async fn bind(psm: u16) -> io::Result<BleListener> {
            let sa = L2Addr::new(Address::any(), AddressType::LePublic, psm);
            Ok(BleListener {
                inner: StreamListener::bind(sa).await?,
            })
        }

        /// Listens on `psm` (0x80–0xff) on the adapter with address `local` only (see
        /// [`adapter_address`]).
        pub async fn bind_on(local: BleAddr, psm: u16) -> io::Result<BleListener> {
            let sa = L2Addr::new(Address(local.0), AddressType::LePublic, psm);
            Ok(BleListener {
                inner: StreamListener::bind(sa).await?,
            })
        }

        /// Accepts one session: the stream and the peer's device address.
        pub async fn accept(&self) -> io::Result<(SessionStream, BleAddr)> {
            let (s, sa) = self.inner.accept().await?;
            Ok((session_stream(s), BleAddr(sa.addr.0)))
        }
    }

    /// Opens an L2CAP LE session to `addr`/`psm` (`random`: LE random address type) from
    /// whichever adapter the kernel picks, retrying refusals and waiting until the channel is
    /// really connected.
    pub async fn connect(
        addr: BleAddr,
        psm: u16,
        random: bool,
        policy: RetryPolicy,
    ) -> io::Result<SessionStream> {
        connect_from(None, addr, psm, random, policy).await
    }

    /// Like [`connect`], from the adapter with address `local` (when given), so that a node
    /// uses its own adapter on a machine with several.
    pub async fn connect_from(
        local: Option<BleAddr>,
        addr: BleAddr,
        psm: u16,
        random: bool,
        policy: RetryPolicy,
    ) -> io::Result<SessionStream> {
        let kind = if random {
            AddressType::LeRandom
        } else {
            AddressType::LePublic
        };
        let local = local.map(|l| (Address(l.0), AddressType::LePublic));
        let s = connect_stream(local, Address(addr.0), kind, psm, policy).await?;
        Ok(session_stream(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8) -> NodeId {
        let mut b = [n; 32];
        b[31] = 0xee;
        NodeId(b)
    }

    #[test]
    fn identity_psm_stays_in_the_le_dynamic_range_and_differs() {
        for psm in 0x80..=0xffu16 {
            let id = id_psm(psm);
            assert!((0x80..=0xff).contains(&id), "{psm:#x} -> {id:#x}");
            assert_ne!(id, psm);
        }
        assert_eq!(id_psm(0x85), 0x86);
    }

    #[test]
    fn payload_roundtrip_and_rejects() {
        let p = AdvPayload::new(&node(3), 0x85);
        let b = p.encode();
        assert_eq!(b.len(), PAYLOAD_LEN);
        assert_eq!(b[0], 1);
        assert_eq!(&b[1..9], &[3; 8]);
        assert_eq!(b[9], 0x85);
        assert_eq!(AdvPayload::decode(&b), Ok(p));
        assert_eq!(AdvPayload::decode(&b[..9]), Err(PayloadError::Length(9)));
        let mut v = b;
        v[0] = 2;
        assert_eq!(AdvPayload::decode(&v), Err(PayloadError::Version(2)));
        let mut v = b;
        v[9] = 0x20;
        assert_eq!(AdvPayload::decode(&v), Err(PayloadError::Psm(0x20)));
    }

    #[test]
    fn id_map_resolves_by_short_id_and_by_address() {
        let mut m = IdMap::new(4);
        let a: BleAddr = "00:AA:01:00:00:00".parse().unwrap();
        let p = AdvPayload::new(&node(1), 0x85);
        assert_eq!(m.resolve(a, p), None);
        assert_eq!(m.unresolved(), vec![(a, p)]);
        let hits = m.learn_id(node(1));
        assert_eq!(hits, vec![(a, p, node(1))]);
        assert!(m.unresolved().is_empty());
        assert_eq!(m.resolve(a, p), Some(node(1)));
        // Address binding, but only if the short id agrees.
        let b: BleAddr = "00:AA:01:01:00:01".parse().unwrap();
        let p2 = AdvPayload::new(&node(2), 0x85);
        assert_eq!(m.resolve(b, p2), None);
        assert_eq!(m.learn_addr(node(2), b), vec![(b, p2, node(2))]);
        m.learn_addr(node(9), b);
        assert_eq!(
            m.resolve(b, p2),
            Some(node(2)),
            "stale binding with other short id is ignored"
        );
    }

    #[test]
    fn of_two_nodes_exactly_one_probes_first() {
        let (a, b) = (node(1), node(2));
        assert!(probes_first(&a, BleShortId::of(&b)));
        assert!(!probes_first(&b, BleShortId::of(&a)));
        // the same order as the session dial rule (smaller node id first)
        assert_eq!(probes_first(&a, BleShortId::of(&b)), a < b);
    }

    #[tokio::test]
    async fn identity_probe_tells_both_sides() {
        let (mut asker, mut answerer) = tokio::io::duplex(256);
        let (a, b) = (node(1), node(2));
        let wait = Duration::from_secs(5);
        let ask = async {
            let got = ask_identity(&mut asker, &a).await;
            drop(asker);
            got
        };
        let (got, told) = tokio::join!(ask, answer_identity(&mut answerer, &b, wait));
        assert_eq!(got.unwrap(), b);
        assert_eq!(told, Some(a), "the answerer learns the asker's id");
    }

    #[tokio::test]
    async fn identity_answer_serves_an_asker_that_only_reads() {
        let (mut asker, mut answerer) = tokio::io::duplex(256);
        let b = node(2);
        let ask = async {
            let mut id = [0u8; 32];
            asker.read_exact(&mut id).await.unwrap();
            drop(asker);
            NodeId(id)
        };
        let (got, told) = tokio::join!(
            ask,
            answer_identity(&mut answerer, &b, Duration::from_secs(5))
        );
        assert_eq!(got, b);
        assert_eq!(told, None);
    }

    #[test]
    fn a_claim_binds_only_the_askers_address() {
        let mut m = IdMap::new(4);
        let a: BleAddr = "00:AA:01:00:00:00".parse().unwrap();
        let other: BleAddr = "00:AA:01:00:00:07".parse().unwrap();
        let p = AdvPayload::new(&node(1), 0x85);
        assert_eq!(m.resolve(a, p), None);
        assert_eq!(m.resolve(other, p), None);
        assert_eq!(m.learn_claim(node(1), a), vec![(a, p, node(1))]);
        assert_eq!(m.find(a, p), Some(node(1)));
        assert_eq!(
            m.find(other, p),
            None,
            "the claim is not learnt as the short id's holder"
        );
        assert_eq!(m.unresolved(), vec![(other, p)]);
        // a claim that does not match what the address advertises resolves nothing
        let c: BleAddr = "00:AA:01:00:00:08".parse().unwrap();
        let pc = AdvPayload::new(&node(3), 0x85);
        assert_eq!(m.resolve(c, pc), None);
        assert!(m.learn_claim(node(4), c).is_empty());
        assert_eq!(m.find(c, pc), None);
    }

    #[test]
    fn id_map_is_bounded() {
        let mut m = IdMap::new(2);
        for i in 0..10u8 {
            m.learn_id(node(i));
            m.resolve(BleAddr([i; 6]), AdvPayload::new(&node(100 + i), 0x80));
        }
        assert!(m.by_short.len() <= 2 && m.short_order.len() <= 2);
        assert_eq!(m.unresolved().len(), 2);
    }
}
