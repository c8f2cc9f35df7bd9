//! The configuration schema: one struct per TOML table.
//!
//! Every field has a default (the container-level `#[serde(default)]` takes
//! missing fields from the section's `Default`), unknown keys are rejected,
//! and the defaults here equal `config/mule.toml` (a test proves it).
//!
//! Units are in the key names: `_ms` milliseconds, `_s` seconds, `_bytes`
//! bytes. Sizes and durations are plain integers so that values are exact and
//! the file means the same to every tool that reads it (no `"1 GiB"`
//! strings whose rounding someone has to guess).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::types::{InstallWindow, LogFormat, PublisherKey};

/// 1 KiB, for readable defaults.
const KIB: u64 = 1024;
/// 1 MiB, for readable defaults.
const MIB: u64 = 1024 * KIB;
/// 1 GiB, for readable defaults.
const GIB: u64 = 1024 * MIB;

/// The whole configuration of a Mule node.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory for the store, the node key and the control socket. Unset:
    /// the daemon uses `$STATE_DIRECTORY` (systemd's `StateDirectory=`), else
    /// the user's data directory (`$XDG_DATA_HOME/mule`, `~/.local/share/mule`).
    /// `mule run --data-dir` overrides it.
    pub data_dir: Option<PathBuf>,
    /// How neighbours are found: multicast beacons, mDNS, Bluetooth.
    pub discovery: Discovery,
    /// Contact sessions between neighbours.
    pub session: Session,
    /// What this node wants delivered to itself.
    pub subscriptions: Subscriptions,
    /// Whose bundles this node accepts.
    pub trust: Trust,
    /// The local bundle store.
    pub store: Store,
    /// When this node installs complete releases.
    pub install: Install,
    /// Room for bundles carried on behalf of others.
    pub carry: Carry,
    /// PRoPHET delivery predictability (RFC 6693).
    pub prediction: Prediction,
    /// The Bloom-filter summary sent at the start of each session.
    pub summary: Summary,
    /// Prometheus metrics endpoint.
    pub metrics: Metrics,
    /// Log output.
    pub log: Log,
    /// The local control socket used by the `mule` CLI.
    pub control: Control,
    /// Removable media (USB sticks, SD cards) as a transport.
    pub media: Media,
}

/// `[discovery]`: finding neighbours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Discovery {
    /// Interfaces to beacon on, by name (e.g. `"wlan0"`). Empty: every up,
    /// multicast-capable, non-loopback interface, re-scanned as interfaces
    /// come and go.
    pub interfaces: Vec<String>,
    /// Send and receive multicast beacons (Wi-Fi/Ethernet discovery).
    /// Turn off for a Bluetooth-only node.
    pub beacons: bool,
    /// Beacon interval while at least one neighbour is up, in milliseconds.
    /// Must be at most half of `peer_silence_ms` (a third is recommended), so
    /// one lost beacon never ends a contact.
    pub beacon_interval_ms: u64,
    /// Fastest beacon interval, used in bursts when neighbours or interfaces
    /// come and go, in milliseconds.
    pub beacon_interval_min_ms: u64,
    /// Slowest beacon interval, used after a while alone (saves energy on
    /// battery gateways), in milliseconds.
    pub beacon_interval_max_ms: u64,
    /// After a neighbour goes silent, beacon every `after_loss_interval_ms`
    /// for this long, then twice as slowly every such period until the usual
    /// interval is reached or a neighbour appears, in milliseconds; 0 turns
    /// it off. A contact that
    /// broke off without an interface event (out of range) often resumes,
    /// and only a beacon can tell either side that it did.
    pub after_loss_ms: u64,
    /// Beacon interval right after a neighbour went silent, in milliseconds.
    pub after_loss_interval_ms: u64,
    /// A neighbour not heard from for this long is reported down
    /// (`PeerDown`), in milliseconds. mDNS never ends a contact (its records
    /// live 120 s); beacons and session keep-alives do.
    pub peer_silence_ms: u64,
    /// A neighbour seen only over Bluetooth is reported down after this long
    /// without an advertisement from it, in milliseconds (BLE scans report
    /// less regularly than beacons arrive).
    pub bluetooth_silence_ms: u64,
    /// UDP port of the beacons, shared by every node on a host
    /// (`SO_REUSEPORT`). All nodes that should meet must use the same port.
    pub beacon_port: u16,
    /// IPv4 multicast group of the beacons (sent with TTL 1).
    pub ipv4_group: Ipv4Addr,
    /// Also beacon on IPv6 link-local all-nodes (`ff02::1`).
    pub ipv6: bool,
    /// Advertise and browse `_mule._tcp.local.` over mDNS (finds peers on
    /// networks that filter custom multicast; visible to `avahi-browse`).
    pub mdns: bool,
    /// Discover peers and hold sessions over Bluetooth LE (L2CAP). Without an
    /// adapter or bluetoothd the node starts anyway and logs one warning.
    pub bluetooth: bool,
    /// Bluetooth adapter to use, e.g. `"hci0"`. Unset: the system's default
    /// adapter.
    pub bluetooth_adapter: Option<String>,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            interfaces: Vec::new(),
            beacons: true,
            beacon_interval_ms: 1000,
            beacon_interval_min_ms: 250,
            beacon_interval_max_ms: 2000,
            after_loss_ms: 20_000,
            after_loss_interval_ms: 100,
            peer_silence_ms: 3000,
            bluetooth_silence_ms: 10_000,
            beacon_port: 47700,
            ipv4_group: Ipv4Addr::new(239, 255, 77, 1),
            ipv6: true,
            mdns: true,
            bluetooth: true,
            bluetooth_adapter: None,
        }
    }
}

impl Discovery {
    /// `beacon_interval_ms` as a duration.
    pub fn beacon_interval(&self) -> Duration {
        Duration::from_millis(self.beacon_interval_ms)
    }

    /// `beacon_interval_min_ms` as a duration.
    pub fn beacon_interval_min(&self) -> Duration {
        Duration::from_millis(self.beacon_interval_min_ms)
    }

    /// `beacon_interval_max_ms` as a duration.
    pub fn beacon_interval_max(&self) -> Duration {
        Duration::from_millis(self.beacon_interval_max_ms)
    }

    /// `after_loss_ms` as a duration.
    pub fn after_loss(&self) -> Duration {
        Duration::from_millis(self.after_loss_ms)
    }

    /// `after_loss_interval_ms` as a duration.
    pub fn after_loss_interval(&self) -> Duration {
        Duration::from_millis(self.after_loss_interval_ms)
    }

    /// `peer_silence_ms` as a duration.
    pub fn peer_silence(&self) -> Duration {
        Duration::from_millis(self.peer_silence_ms)
    }

    /// `bluetooth_silence_ms` as a duration.
    pub fn bluetooth_silence(&self) -> Duration {
        Duration::from_millis(self.bluetooth_silence_ms)
    }
}

/// `[session]`: contact sessions over TCP (and L2CAP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Session {
    /// Addresses the session listener binds, as `"ADDR:PORT"` strings
    /// (IPv6 in brackets). All must use the same port, because beacons
    /// advertise one session port; port 0 lets the OS choose one (tests).
    /// IPv6 sockets are bound `IPV6_V6ONLY` so `0.0.0.0` and `[::]` can
    /// share the port.
    pub listen: Vec<SocketAddr>,
    /// A keep-alive is sent when nothing else was sent for this long, in
    /// milliseconds.
    pub keepalive_ms: u64,
    /// A session that received nothing for this long is dead and closed
    /// (a silent cut), in milliseconds. At least twice `keepalive_ms`.
    pub idle_timeout_ms: u64,
    /// Most sessions open at once; further neighbours wait.
    pub max_sessions: u32,
    /// Session addresses of peers to dial whenever no session with them is
    /// open, without waiting for discovery (wired gateways with known
    /// addresses; tests on loopback, where multicast discovery does not
    /// apply). Their node ids are learnt from the handshake.
    pub peers: Vec<SocketAddr>,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            listen: vec![
                SocketAddr::from(([0, 0, 0, 0], 47701)),
                SocketAddr::from(([0u16; 8], 47701)),
            ],
            keepalive_ms: 1000,
            idle_timeout_ms: 4000,
            max_sessions: 16,
            peers: Vec::new(),
        }
    }
}

impl Session {
    /// `keepalive_ms` as a duration.
    pub fn keepalive(&self) -> Duration {
        Duration::from_millis(self.keepalive_ms)
    }

    /// `idle_timeout_ms` as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// `[subscriptions]`: what this node wants.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Subscriptions {
    /// Channels whose bundles this node wants, exports and installs. Empty:
    /// the node wants nothing for itself and only carries for others.
    pub channels: Vec<String>,
}

/// `[trust]`: whose bundles are accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Trust {
    /// Ed25519 public keys (64 hex digits each) of the publishers whose
    /// bundles this node stores, exports and forwards. Empty: no publisher is
    /// trusted.
    pub publishers: Vec<PublisherKey>,
    /// Also carry (store and forward, never export or run) correctly signed
    /// bundles from publishers not listed above.
    pub carry_untrusted: bool,
    /// Most bytes of untrusted bundles carried, counted within
    /// `carry.quota_bytes`.
    pub untrusted_quota_bytes: u64,
}

impl Default for Trust {
    fn default() -> Self {
        Trust {
            publishers: Vec::new(),
            carry_untrusted: false,
            untrusted_quota_bytes: 64 * MIB,
        }
    }
}

/// `[store]`: the local bundle store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Store {
    /// Most bytes of piece data the store holds, in bytes. When full, expired
    /// bundles are evicted first, then the lowest priority / least wanted;
    /// never one this node published or still wants. Must hold at least one
    /// piece of the largest allowed size ([`crate::PIECE_SIZE_MAX`]).
    pub quota_bytes: u64,
    /// Piece size for bundles published by this node unless `mule publish
    /// --piece-size` says otherwise, in bytes.
    pub piece_size_default: u64,
    /// Where completed wanted bundles are exported. Unset: `DATA_DIR/export`.
    pub export_dir: Option<PathBuf>,
    /// Command run after a wanted, trusted bundle is exported, as a list:
    /// program and arguments, no shell, e.g. `["/usr/local/bin/install-update"]`.
    /// It gets `MULE_BUNDLE_ID`, `MULE_BUNDLE_NAME`, `MULE_BUNDLE_VERSION`,
    /// `MULE_BUNDLE_PATH` and `MULE_META_<KEY>` per manifest metadata entry
    /// in its environment. Unset: nothing runs.
    pub on_complete: Option<Vec<String>>,
    /// The on-complete command is killed (and the failure recorded) after
    /// this long, in seconds.
    pub on_complete_timeout_s: u64,
    /// Command run after the on-complete command succeeded, to tell whether
    /// the new release works (program and arguments, no shell; the same
    /// environment as `on_complete`). A non-zero exit or a timeout rolls the
    /// release back: `on_rollback` runs and the bundle is recorded
    /// `rolled_back`. Unset: no check, a release is installed once
    /// `on_complete` succeeds.
    pub health_check: Option<Vec<String>>,
    /// The health check is killed, and counts as failed, after this long, in
    /// seconds.
    pub health_check_timeout_s: u64,
    /// Command run when a health check fails (program and arguments, no
    /// shell), with the failed bundle's variables and `MULE_ROLLBACK_PATH`
    /// (the export of the previously installed release of the same
    /// lineage, empty if none), `MULE_ROLLBACK_ID` and
    /// `MULE_ROLLBACK_RELEASE`; killed after `on_complete_timeout_s`. Unset:
    /// nothing runs, the failure is recorded.
    pub on_rollback: Option<Vec<String>>,
    /// How long `mule run` waits for the store when a CLI verb has it open
    /// (no daemon was running), and how long a CLI verb waits for a daemon
    /// that is starting or stopping, in milliseconds. 0: do not wait.
    pub lock_wait_ms: u64,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            quota_bytes: GIB,
            piece_size_default: 64 * KIB,
            export_dir: None,
            on_complete: None,
            on_complete_timeout_s: 300,
            health_check: None,
            health_check_timeout_s: 60,
            on_rollback: None,
            lock_wait_ms: 10_000,
        }
    }
}

impl Store {
    /// The export directory, given the resolved data directory.
    pub fn export_dir_in(&self, data_dir: &Path) -> PathBuf {
        self.export_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("export"))
    }

    /// `on_complete_timeout_s` as a duration.
    pub fn on_complete_timeout(&self) -> Duration {
        Duration::from_secs(self.on_complete_timeout_s)
    }

    /// `lock_wait_ms` as a duration.
    pub fn lock_wait(&self) -> Duration {
        Duration::from_millis(self.lock_wait_ms)
    }

    /// `health_check_timeout_s` as a duration.
    pub fn health_check_timeout(&self) -> Duration {
        Duration::from_secs(self.health_check_timeout_s)
    }
}

/// `[install]`: when complete releases are installed (they are fetched and
/// carried regardless).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Install {
    /// Local-time window in which installs run, e.g. `"Mon-Fri 01:00-05:00"`
    /// or `"02:00-04:00"` (every day). A complete release waits for the
    /// window. Unset: any time.
    pub window: Option<InstallWindow>,
    /// Pause every install (an operator's hold); bundles still arrive and
    /// wait, and `mule status` says so.
    pub hold: bool,
}

/// `[carry]`: bundles carried for others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Carry {
    /// Most bytes of bundles this node does not want itself but carries for
    /// others, counted within `store.quota_bytes`. 0: carry nothing.
    pub quota_bytes: u64,
}

impl Default for Carry {
    fn default() -> Self {
        Carry {
            quota_bytes: 256 * MIB,
        }
    }
}

/// `[prediction]`: PRoPHET delivery predictability, RFC 6693 section 2.1.2
/// parameter names and default values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Prediction {
    /// Use predictabilities to choose carriers. Off: carry-forward goes to
    /// every neighbour with room (epidemic).
    pub enabled: bool,
    /// P_encounter_max: largest increment of one encounter.
    pub p_encounter_max: f64,
    /// P_encounter_first: predictability after the first encounter.
    pub p_encounter_first: f64,
    /// P_first_threshold: a predictability aged below this is dropped (0).
    pub p_first_threshold: f64,
    /// δ: keeps predictabilities below 1 (at most 1 − δ).
    pub delta: f64,
    /// β: weight of transitive predictabilities.
    pub beta: f64,
    /// γ: aging factor per time unit.
    pub gamma: f64,
    /// Length of one aging time unit, in seconds.
    pub time_unit_s: u64,
    /// I_typ: typical time between encounters, in seconds; encounters sooner
    /// than this raise the predictability less.
    pub i_typ_s: u64,
}

impl Default for Prediction {
    fn default() -> Self {
        Prediction {
            enabled: true,
            p_encounter_max: 0.7,
            p_encounter_first: 0.5,
            p_first_threshold: 0.1,
            delta: 0.01,
            beta: 0.9,
            gamma: 0.999,
            time_unit_s: 60,
            i_typ_s: 300,
        }
    }
}

impl Prediction {
    /// `time_unit_s` as a duration.
    pub fn time_unit(&self) -> Duration {
        Duration::from_secs(self.time_unit_s)
    }

    /// `i_typ_s` as a duration.
    pub fn i_typ(&self) -> Duration {
        Duration::from_secs(self.i_typ_s)
    }
}

/// `[summary]`: what a node tells a neighbour it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Summary {
    /// False-positive rate the Bloom filter is sized for; a false positive
    /// hides a piece from one session only (filters are salted per session).
    pub false_positive_rate: f64,
}

impl Default for Summary {
    fn default() -> Self {
        Summary {
            false_positive_rate: 0.01,
        }
    }
}

/// `[metrics]`: Prometheus text exposition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    /// Serve metrics over HTTP.
    pub enabled: bool,
    /// Address of the metrics endpoint (`"ADDR:PORT"`); keep it on loopback
    /// unless a firewall protects it.
    pub listen: SocketAddr,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 9477)),
        }
    }
}

/// `[log]`: log output on stderr.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// Filter directive, e.g. `"info"` or `"warn,mule=debug"`; the
    /// `RUST_LOG` environment variable overrides it.
    pub level: String,
    /// `"auto"` (compact on a terminal, plain otherwise), `"compact"`,
    /// `"plain"` (no timestamps or colours: journald adds its own) or `"json"`.
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".to_string(),
            format: LogFormat::Auto,
        }
    }
}

/// `[media]`: removable media as a transport.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Media {
    /// Directories where media appear, with `*` and `?` wildcards per path
    /// component (e.g. `"/media/*/*"`, `"/mnt/usb"`); a directory holding
    /// `mule/FORMAT` is a Mule medium and is imported when it appears. Empty:
    /// media are used only through `mule media sync`.
    pub paths: Vec<String>,
    /// After importing from a medium, write back to it the bundles this node
    /// carries for others and those it published, so they travel on.
    pub carry_out: bool,
    /// How often `paths` are looked at for new media.
    pub scan_interval_ms: u64,
}

impl Default for Media {
    fn default() -> Self {
        Media {
            paths: Vec::new(),
            carry_out: false,
            scan_interval_ms: 2000,
        }
    }
}

/// `[control]`: the local control socket.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Control {
    /// Path of the Unix control socket (mode 0660: owner and group). Unset:
    /// `DATA_DIR/mule.sock`.
    pub socket: Option<PathBuf>,
}

impl Control {
    /// The socket path, given the resolved data directory.
    pub fn socket_in(&self, data_dir: &Path) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| data_dir.join("mule.sock"))
    }
}
