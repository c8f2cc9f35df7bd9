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
//! [`IdMap::unresolved`], so the engine can open an L2CAP session to learn who it is.
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
        if self.by_addr.insert(addr, node).is_none() {
            self.addr_order.push_back(addr);
            if self.addr_order.len() > self.cap
                && let Some(old) = self.addr_order.pop_front()
            {
                self.by_addr.remove(&old);
            }
        }
        out.extend(self.take_resolved());
        out
    }

    /// Resolves a sighting, or remembers it as unresolved.
    pub fn resolve(&mut self, addr: BleAddr, p: AdvPayload) -> Option<NodeId> {
        let found = self
            .by_addr
            .get(&addr)
            .filter(|n| p.short.matches(n))
            .or_else(|| self.by_short.get(&p.short))
            .copied();
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
            let hit = self
                .by_addr
                .get(&a)
                .filter(|n| p.short.matches(n))
                .or_else(|| self.by_short.get(&p.short))
                .copied();
            match hit {
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
    use std::collections::BTreeMap;
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bluer::l2cap::{SocketAddr as L2Addr, StreamListener};
    use bluer::{Address, AddressType};
    use futures_util::StreamExt;
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::discovery::{DiscoveryConfig, Input};
    use crate::neighbours::{Observation, PeerAddr, Transport};
    use crate::stream::{
        RetryPolicy, SessionStream, connect_with_retry, session_stream, wait_connected,
    };

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
            self.emit(resolved);
        }

        /// Device `addr` is `node`.
        pub fn learn(&self, node: NodeId, addr: BleAddr) {
            let resolved = self
                .ids
                .lock()
                .map(|mut m| m.learn_addr(node, addr))
                .unwrap_or_default();
            self.emit(resolved);
        }

        /// Sightings whose node id is not known yet.
        pub fn unresolved(&self) -> Vec<(BleAddr, AdvPayload)> {
            self.ids.lock().map(|m| m.unresolved()).unwrap_or_default()
        }

        fn emit(&self, resolved: Vec<(BleAddr, AdvPayload, NodeId)>) {
            for (addr, p, node) in resolved {
                let _ = self
                    .input
                    .try_send(Input::Observation(observation(node, addr, p.psm)));
            }
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

    /// Starts advertising and scanning in the background. Failure to reach BlueZ is logged
    /// once, as a warning, and Bluetooth stays off.
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

    async fn run(
        adapter_name: Option<String>,
        own: NodeId,
        psm: u16,
        ids: Arc<Mutex<IdMap>>,
        input: mpsc::Sender<Input>,
    ) {
        if let Err(e) = run_inner(adapter_name, own, psm, ids, input).await {
            tracing::warn!(error = %e, "Bluetooth unavailable, continuing without it");
        }
    }

    async fn run_inner(
        adapter_name: Option<String>,
        own: NodeId,
        psm: u16,
        ids: Arc<Mutex<IdMap>>,
        input: mpsc::Sender<Input>,
    ) -> bluer::Result<()> {
        let session = bluer::Session::new().await?;
        let adapter = match &adapter_name {
            Some(n) => session.adapter(n)?,
            None => session.default_adapter().await?,
        };
        adapter.set_powered(true).await?;
        let uuid = bluer::Uuid::from_u128(SERVICE_UUID);
        let adv = bluer::adv::Advertisement {
            service_data: BTreeMap::from([(uuid, AdvPayload::new(&own, psm).encode().to_vec())]),
            discoverable: Some(true),
            ..Default::default()
        };
        let _adv_handle = adapter.advertise(adv).await?;
        tracing::info!(
            adapter = adapter.name(),
            psm,
            "Bluetooth advertising and scanning"
        );
        let mut events = adapter.discover_devices_with_changes().await?;
        while let Some(ev) = events.next().await {
            let bluer::AdapterEvent::DeviceAdded(addr) = ev else {
                continue;
            };
            let Ok(dev) = adapter.device(addr) else {
                continue;
            };
            let Ok(Some(data)) = dev.service_data().await else {
                continue;
            };
            let Some(bytes) = data.get(&uuid) else {
                continue;
            };
            let Ok(p) = AdvPayload::decode(bytes) else {
                continue;
            };
            if p.short.matches(&own) {
                continue;
            }
            let addr = BleAddr(addr.0);
            let node = ids.lock().ok().and_then(|mut m| m.resolve(addr, p));
            if let Some(node) = node
                && input
                    .send(Input::Observation(observation(node, addr, p.psm)))
                    .await
                    .is_err()
            {
                break;
            }
        }
        Ok(())
    }

    /// An L2CAP LE listener for incoming sessions.
    #[derive(Debug)]
    pub struct BleListener {
        inner: StreamListener,
    }

    impl BleListener {
        /// Listens on `psm` (0x80–0xff) on every local adapter.
        pub async fn bind(psm: u16) -> io::Result<BleListener> {
            let sa = L2Addr::new(Address::any(), AddressType::LePublic, psm);
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

    /// Opens an L2CAP LE session to `addr`/`psm` (`random`: LE random address type),
    /// retrying refusals and waiting until the channel is really connected.
    pub async fn connect(
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
        let sa = L2Addr::new(Address(addr.0), kind, psm);
        let stream =
            connect_with_retry(
                policy,
                || async move { bluer::l2cap::Stream::connect(sa).await },
            )
            .await?;
        wait_connected(
            || stream.as_ref().conn_info().map(drop),
            Duration::from_millis(10),
            Duration::from_secs(5),
        )
        .await?;
        Ok(session_stream(stream))
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
