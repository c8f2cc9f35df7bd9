//! The neighbour table: one entry per node id, however many ways we see it.
//!
//! Beacons, mDNS and Bluetooth each report [`Observation`]s ("node N can be reached at address
//! A over transport T, seen now"). The table merges them into one [`Neighbour`] per node with a
//! list of [`Way`]s, picks the best way, and emits [`Event`]s:
//! - [`Event::PeerUp`] when a node gets its first live way,
//! - [`Event::PeerChanged`] when its best way or its holdings digest changes,
//! - [`Event::PeerDown`] when its last way has expired.
//!
//! # Expiry (when a way stops counting)
//! - a beacon way after `silence` without a beacon (default 3 s: three keep-alive beacons);
//! - a Bluetooth way after `ble_silence` without an advertisement report;
//! - an mDNS way after `mdns_hold` (default 120 s, the record lifetime). mDNS cannot tell
//!   when a peer left, so it never ends a contact on its own; a contact found only by mDNS
//!   ends when the session layer stops calling [`NeighbourTable::handle_alive`].
//!
//! A node that was seen by a *liveness* transport (beacon or Bluetooth) in the current
//! contact is down as soon as its last beacon/Bluetooth way expires, whatever mDNS says:
//! its mDNS ways go with it, and mDNS sightings of it are ignored for `mdns_hold` afterwards
//! (mdns-sd replays cached records, which would otherwise resurrect a peer that left). Only
//! nodes found by mDNS alone live on their mDNS ways.
//!
//! Session keep-alives ([`NeighbourTable::handle_alive`]) refresh every way of a node.
//!
//! # Best way
//! IP beats Bluetooth (bandwidth); among IP ways a beacon-seen way beats an mDNS one (it is
//! proven live), IPv4 beats IPv6 link-local, then the most recently seen wins.
//!
//! # Use (sans-IO)
//! Call [`NeighbourTable::handle_observation`] / [`NeighbourTable::handle_alive`] as inputs
//! arrive, [`NeighbourTable::handle_timeout`] when the instant from
//! [`NeighbourTable::poll_timeout`] has passed, and after each call drain
//! [`NeighbourTable::poll_event`] until it returns `None`. Time is always an input.
//!
//! Bounds: at most `max_neighbours` nodes (new ones are ignored and counted when full) and
//! `max_ways` ways per node (the stalest way is replaced).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::beacon::{HoldingsDigest, ShortId};

/// How a neighbour was discovered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Signed multicast beacon (IPv4 or IPv6).
    Beacon,
    /// mDNS / DNS-SD.
    Mdns,
    /// Bluetooth LE advertisement.
    Ble,
}

impl Transport {
    /// Stable lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Beacon => "beacon",
            Transport::Mdns => "mdns",
            Transport::Ble => "ble",
        }
    }
}

/// A Bluetooth device address (6 bytes, most significant first as printed).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BleAddr(pub [u8; 6]);

impl fmt::Display for BleAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for BleAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BleAddr({self})")
    }
}

impl std::str::FromStr for BleAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!(
                "{s:?} is not a Bluetooth address (XX:XX:XX:XX:XX:XX)"
            ));
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            *o = u8::from_str_radix(p, 16)
                .map_err(|_| format!("{s:?} is not a Bluetooth address"))?;
        }
        Ok(BleAddr(out))
    }
}

/// Where a neighbour can be reached.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PeerAddr {
    /// A TCP session address, with the local interface it was seen on.
    Ip {
        /// Address and session port (IPv6 link-local addresses carry the scope id).
        addr: SocketAddr,
        /// Local interface name, if known.
        iface: Option<String>,
    },
    /// A Bluetooth LE L2CAP channel.
    Ble {
        /// Device address.
        addr: BleAddr,
        /// L2CAP PSM of its session listener.
        psm: u16,
    },
}

impl PeerAddr {
    /// The IP socket address, if this is an IP way.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            PeerAddr::Ip { addr, .. } => Some(*addr),
            PeerAddr::Ble { .. } => None,
        }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Ip {
                addr,
                iface: Some(i),
            } => write!(f, "{addr}%{i}"),
            PeerAddr::Ip { addr, iface: None } => write!(f, "{addr}"),
            PeerAddr::Ble { addr, psm } => write!(f, "ble:{addr}/{psm:#x}"),
        }
    }
}

/// One sighting of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// Who was seen.
    pub node: NodeId,
    /// Through what.
    pub transport: Transport,
    /// Where it can be reached.
    pub addr: PeerAddr,
    /// Its holdings digest, if the sighting carries one (beacons do).
    pub digest: Option<HoldingsDigest>,
    /// Nodes it met recently, if the sighting carries them (beacons do).
    pub met: Vec<ShortId>,
}

/// One way to reach a neighbour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Way {
    /// How it was found.
    pub transport: Transport,
    /// Where.
    pub addr: PeerAddr,
    /// Last sighting (or session keep-alive).
    pub last_seen: Instant,
}

/// A neighbour and the ways to reach it.
#[derive(Clone, Debug)]
pub struct Neighbour {
    /// Its node id.
    pub node: NodeId,
    /// When it came up.
    pub since: Instant,
    /// Live ways, in no particular order.
    pub ways: Vec<Way>,
    /// Latest holdings digest heard.
    pub digest: Option<HoldingsDigest>,
    /// Latest recently-met list heard.
    pub met: Vec<ShortId>,
    best: Option<(Transport, PeerAddr)>,
    live_seen: bool,
}

impl Neighbour {
    /// The chosen way (see the module docs).
    pub fn best(&self) -> Option<(Transport, &PeerAddr)> {
        self.best.as_ref().map(|(t, a)| (*t, a))
    }
}

/// What the table tells its user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A node became reachable.
    PeerUp {
        /// The node.
        node: NodeId,
        /// Best transport.
        transport: Transport,
        /// Best address.
        addr: PeerAddr,
        /// Its holdings digest, if known.
        digest: Option<HoldingsDigest>,
    },
    /// A reachable node's best way or holdings digest changed.
    PeerChanged {
        /// The node.
        node: NodeId,
        /// Best transport now.
        transport: Transport,
        /// Best address now.
        addr: PeerAddr,
        /// Its holdings digest, if known.
        digest: Option<HoldingsDigest>,
    },
    /// A node is no longer reachable.
    PeerDown {
        /// The node.
        node: NodeId,
    },
}

/// Settings of the [`NeighbourTable`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableConfig {
    /// Beacon silence after which a beacon way expires.
    pub silence: Duration,
    /// Bluetooth advertisement silence after which a BLE way expires.
    pub ble_silence: Duration,
    /// How long an mDNS sighting counts.
    pub mdns_hold: Duration,
    /// Most neighbours tracked.
    pub max_neighbours: usize,
    /// Most ways per neighbour.
    pub max_ways: usize,
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            silence: Duration::from_secs(3),
            ble_silence: Duration::from_secs(10),
            mdns_hold: Duration::from_secs(120),
            max_neighbours: 256,
            max_ways: 8,
        }
    }
}

/// The neighbour table (see the module docs for the calling order).
#[derive(Debug)]
pub struct NeighbourTable {
    cfg: TableConfig,
    peers: HashMap<NodeId, Neighbour>,
    events: VecDeque<Event>,
    rejected_full: u64,
    /// Nodes that left while beacons tracked them: stale mDNS sightings ignored until then.
    quarantine: HashMap<NodeId, Instant>,
}

impl NeighbourTable {
    /// An empty table.
    pub fn new(cfg: TableConfig) -> NeighbourTable {
        NeighbourTable {
            cfg,
            peers: HashMap::new(),
            events: VecDeque::new(),
            rejected_full: 0,
            quarantine: HashMap::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &TableConfig {
        &self.cfg
    }

    /// Feeds one sighting made at `now`.
    pub fn handle_observation(&mut self, now: Instant, obs: Observation) {
        let live = obs.transport != Transport::Mdns;
        if live {
            self.quarantine.remove(&obs.node);
        } else if self
            .quarantine
            .get(&obs.node)
            .is_some_and(|until| now < *until)
        {
            return;
        }
        let full = self.peers.len() >= self.cfg.max_neighbours;
        if full && !self.peers.contains_key(&obs.node) {
            self.rejected_full += 1;
            return;
        }
        let max_ways = self.cfg.max_ways.max(1);
        let n = self.peers.entry(obs.node).or_insert_with(|| Neighbour {
            node: obs.node,
            since: now,
            ways: Vec::new(),
            digest: None,
            met: Vec::new(),
            best: None,
            live_seen: false,
        });
        n.live_seen |= live;
        match n
            .ways
            .iter_mut()
            .find(|w| w.transport == obs.transport && w.addr == obs.addr)
        {
            Some(w) => w.last_seen = w.last_seen.max(now),
            None => {
                if n.ways.len() >= max_ways
                    && let Some(i) = n
                        .ways
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, w)| w.last_seen)
                        .map(|(i, _)| i)
                {
                    n.ways.swap_remove(i);
                }
                n.ways.push(Way {
                    transport: obs.transport,
                    addr: obs.addr,
                    last_seen: now,
                });
            }
        }
        let digest_changed = obs.digest.is_some() && obs.digest != n.digest;
        if obs.digest.is_some() {
            n.digest = obs.digest;
        }
        if !obs.met.is_empty() || obs.transport == Transport::Beacon {
            n.met = obs.met;
        }
        let node = obs.node;
        self.refresh(node, digest_changed);
    }

    /// A session with `node` is alive at `now`: keeps all its ways fresh.
    pub fn handle_alive(&mut self, now: Instant, node: &NodeId) {
        if let Some(n) = self.peers.get_mut(node) {
            for w in &mut n.ways {
                w.last_seen = w.last_seen.max(now);
            }
        }
    }

    /// Expires ways and neighbours whose time has come by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let cfg = self.cfg.clone();
        let mut changed = Vec::new();
        self.quarantine.retain(|_, until| now < *until);
        for (id, n) in &mut self.peers {
            let before = n.ways.len();
            n.ways
                .retain(|w| now < w.last_seen + hold(&cfg, w.transport));
            if n.live_seen && !n.ways.iter().any(|w| w.transport != Transport::Mdns) {
                // Its beacons/advertisements stopped: gone, whatever mDNS still caches.
                n.ways.clear();
                if self.quarantine.len() < cfg.max_neighbours {
                    self.quarantine.insert(*id, now + cfg.mdns_hold);
                }
            }
            if n.ways.len() != before {
                changed.push(*id);
            }
        }
        for id in changed {
            self.refresh(id, false);
        }
    }

    /// When [`NeighbourTable::handle_timeout`] must be called next, if anything can expire.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .flat_map(|n| n.ways.iter())
            .map(|w| w.last_seen + hold(&self.cfg, w.transport))
            .min()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A neighbour by id.
    pub fn get(&self, node: &NodeId) -> Option<&Neighbour> {
        self.peers.get(node)
    }

    /// All current neighbours.
    pub fn neighbours(&self) -> impl Iterator<Item = &Neighbour> {
        self.peers.values()
    }

    /// Number of current neighbours.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether there are no neighbours.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Sightings of new nodes ignored because the table was full.
    pub fn rejected_full(&self) -> u64 {
        self.rejected_full
    }

    /// Recomputes the best way of `node` and queues the resulting event.
    fn refresh(&mut self, node: NodeId, digest_changed: bool) {
        let Some(n) = self.peers.get_mut(&node) else {
            return;
        };
        if n.ways.is_empty() {
            let was_up = n.best.is_some();
            self.peers.remove(&node);
            if was_up {
                self.events.push_back(Event::PeerDown { node });
            }
            return;
        }
        let best = n
            .ways
            .iter()
            .max_by_key(|w| (rank(w), w.last_seen))
            .map(|w| (w.transport, w.addr.clone()));
        let (transport, addr) = best.clone().expect("ways is not empty");
        let digest = n.digest;
        if n.best.is_none() {
            n.best = best;
            self.events.push_back(Event::PeerUp {
                node,
                transport,
                addr,
                digest,
            });
        } else if n.best != best || digest_changed {
            n.best = best;
            self.events.push_back(Event::PeerChanged {
                node,
                transport,
                addr,
                digest,
            });
        }
    }
}

fn hold(cfg: &TableConfig, t: Transport) -> Duration {
    match t {
        Transport::Beacon => cfg.silence,
        Transport::Mdns => cfg.mdns_hold,
        Transport::Ble => cfg.ble_silence,
    }
}

/// Preference of a way (higher is better); see the module docs.
fn rank(w: &Way) -> u8 {
    let v4 = matches!(
        w.addr,
        PeerAddr::Ip {
            addr: SocketAddr::V4(_),
            ..
        }
    );
    match w.transport {
        Transport::Beacon => 4 + u8::from(v4),
        Transport::Mdns => 2 + u8::from(v4),
        Transport::Ble => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> PeerAddr {
        PeerAddr::Ip {
            addr: s.parse().unwrap(),
            iface: Some("eth0".into()),
        }
    }

    fn obs(n: u8, t: Transport, addr: PeerAddr) -> Observation {
        Observation {
            node: NodeId([n; 32]),
            transport: t,
            addr,
            digest: None,
            met: vec![],
        }
    }

    fn drain(t: &mut NeighbourTable) -> Vec<Event> {
        std::iter::from_fn(|| t.poll_event()).collect()
    }

    #[test]
    fn up_once_then_down_after_silence() {
        let t0 = Instant::now();
        let mut t = NeighbourTable::new(TableConfig::default());
        t.handle_observation(t0, obs(1, Transport::Beacon, ip("10.0.0.2:7000")));
        t.handle_observation(
            t0 + Duration::from_millis(900),
            obs(1, Transport::Beacon, ip("10.0.0.2:7000")),
        );
        let ev = drain(&mut t);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert!(matches!(
            &ev[0],
            Event::PeerUp {
                transport: Transport::Beacon,
                ..
            }
        ));
        let deadline = t.poll_timeout().unwrap();
        assert_eq!(deadline, t0 + Duration::from_millis(3900));
        t.handle_timeout(deadline - Duration::from_millis(1));
        assert!(drain(&mut t).is_empty());
        t.handle_timeout(deadline);
        assert_eq!(
            drain(&mut t),
            vec![Event::PeerDown {
                node: NodeId([1; 32])
            }]
        );
        assert!(t.is_empty() && t.poll_timeout().is_none());
    }

    #[test]
    fn merges_transports_prefers_ip_and_ends_with_beacons() {
        let t0 = Instant::now();
        let mut t = NeighbourTable::new(TableConfig::default());
        let ble = PeerAddr::Ble {
            addr: "00:AA:01:00:00:00".parse().unwrap(),
            psm: 0x81,
        };
        t.handle_observation(t0, obs(1, Transport::Ble, ble.clone()));
        t.handle_observation(t0, obs(1, Transport::Mdns, ip("10.0.0.2:7000")));
        t.handle_observation(t0, obs(1, Transport::Beacon, ip("[fe80::1]:7000")));
        t.handle_observation(t0, obs(1, Transport::Beacon, ip("10.0.0.2:7000")));
        let ev = drain(&mut t);
        assert!(matches!(
            &ev[0],
            Event::PeerUp {
                transport: Transport::Ble,
                ..
            }
        ));
        let last = ev.last().unwrap();
        assert_eq!(
            last,
            &Event::PeerChanged {
                node: NodeId([1; 32]),
                transport: Transport::Beacon,
                addr: ip("10.0.0.2:7000"),
                digest: None
            }
        );
        assert_eq!(t.get(&NodeId([1; 32])).unwrap().ways.len(), 4);
        // Beacons and BLE stop: down at once, mDNS does not keep it up, and stale mDNS
        // sightings do not bring it back.
        t.handle_timeout(t0 + Duration::from_secs(20));
        assert_eq!(
            drain(&mut t),
            vec![Event::PeerDown {
                node: NodeId([1; 32])
            }]
        );
        t.handle_observation(
            t0 + Duration::from_secs(21),
            obs(1, Transport::Mdns, ip("10.0.0.2:7000")),
        );
        assert!(drain(&mut t).is_empty() && t.is_empty());
        // A beacon brings it back at once.
        t.handle_observation(
            t0 + Duration::from_secs(22),
            obs(1, Transport::Beacon, ip("10.0.0.2:7000")),
        );
        assert!(matches!(drain(&mut t)[..], [Event::PeerUp { .. }]));
    }

    #[test]
    fn mdns_only_neighbour_lives_on_mdns_hold_and_keepalives() {
        let t0 = Instant::now();
        let mut t = NeighbourTable::new(TableConfig::default());
        t.handle_observation(t0, obs(1, Transport::Mdns, ip("10.0.0.2:7000")));
        assert!(matches!(
            drain(&mut t)[..],
            [Event::PeerUp {
                transport: Transport::Mdns,
                ..
            }]
        ));
        t.handle_timeout(t0 + Duration::from_secs(20));
        assert!(drain(&mut t).is_empty(), "no PeerDown from mDNS silence");
        // Session keep-alives keep it up beyond the mDNS hold.
        t.handle_alive(t0 + Duration::from_secs(100), &NodeId([1; 32]));
        t.handle_timeout(t0 + Duration::from_secs(150));
        assert!(drain(&mut t).is_empty());
        t.handle_timeout(t0 + Duration::from_secs(221));
        assert_eq!(
            drain(&mut t),
            vec![Event::PeerDown {
                node: NodeId([1; 32])
            }]
        );
    }

    #[test]
    fn digest_change_is_reported_and_bounds_hold() {
        let t0 = Instant::now();
        let cfg = TableConfig {
            max_neighbours: 2,
            max_ways: 2,
            ..TableConfig::default()
        };
        let mut t = NeighbourTable::new(cfg);
        let mut o = obs(1, Transport::Beacon, ip("10.0.0.2:7000"));
        o.digest = Some(HoldingsDigest([1; 8]));
        t.handle_observation(t0, o.clone());
        t.handle_observation(t0, o.clone());
        o.digest = Some(HoldingsDigest([2; 8]));
        t.handle_observation(t0, o);
        let ev = drain(&mut t);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(
            matches!(ev[1], Event::PeerChanged { digest: Some(d), .. } if d == HoldingsDigest([2; 8]))
        );
        for port in 1..10u16 {
            t.handle_observation(
                t0,
                obs(1, Transport::Beacon, ip(&format!("10.0.0.2:{port}"))),
            );
        }
        assert_eq!(t.get(&NodeId([1; 32])).unwrap().ways.len(), 2);
        for n in 2..6 {
            t.handle_observation(t0, obs(n, Transport::Beacon, ip("10.0.0.3:1")));
        }
        assert_eq!(t.len(), 2);
        assert_eq!(t.rejected_full(), 3);
    }

    #[test]
    fn ble_addr_parses_and_prints() {
        let a: BleAddr = "00:aa:01:0F:00:ff".parse().unwrap();
        assert_eq!(a.to_string(), "00:AA:01:0F:00:FF");
        assert!("00:aa".parse::<BleAddr>().is_err());
        assert!("zz:aa:01:0F:00:ff".parse::<BleAddr>().is_err());
    }
}
