//! Signed discovery beacons: the wire format, the receive-side filter and the adaptive send
//! interval. Everything here is pure (no sockets, no clock): the driver in
//! [`crate::discovery`] feeds it bytes and times.
//!
//! # Goals
//! - One small multicast packet tells a neighbour who we are (node id = public key), which
//!   protocol we speak, where to open a session, a short digest of what we hold (so the peer
//!   can tell from one packet whether a session is worth opening) and whom we met lately.
//! - A forged, replayed or garbled packet never creates a neighbour: it is dropped and
//!   counted per reason ([`DropReason`]), with rate-limited logging.
//! - Small enough that a node keeping its neighbours alive once a second stays under
//!   200 bytes/s on the wire: a beacon with the full three met ids is 139 bytes of UDP
//!   payload, a 181-byte (IPv4) or 201-byte (IPv6) Ethernet frame, and in steady state the
//!   families alternate: at the default keep-alive interval of 1.1 s, about 174 bytes/s.
//!
//! # Non-goals
//! Confidentiality (beacons are public by design) and protection against a replay inside
//! the acceptance window to a receiver that has never seen the sender (it only re-announces a
//! real node at a place it could be reached anyway; a session authenticates again).
//!
//! # Wire format (version 1)
//! ```text
//! packet = CBOR array(2) [ body: bytes, signature: bytes(64) ]
//! body   = CBOR array(7) [ version: uint (=1),
//!                          node: bytes(32),          ed25519 public key = NodeId
//!                          seq: uint,                packets sent so far in this second
//!                          time_s: uint,             sender's Unix time in whole seconds
//!                          session_port: uint16,
//!                          digest: bytes(8),         caller-defined holdings digest
//!                          met: array(<=3) of bytes(4) ]  short ids of recently met nodes
//! signature = ed25519(node key, "mule-beacon-v1\0" || body bytes)
//! ```
//! The signature covers the exact body bytes as sent, so no canonical CBOR form is needed.
//! Decoding rejects packets over [`MAX_BEACON_BYTES`], trailing bytes after either CBOR item,
//! wrong field lengths, unknown versions, and signatures that fail `verify_strict`.
//!
//! # Acceptance rules ([`BeaconFilter`])
//! A verified beacon from node N is accepted if `(time_s, seq)` is strictly greater
//! (lexicographically) than the last accepted pair from N (replay / reordering protection
//! that survives a sender restart, because its clock moves on while its counter resets), and
//! `time_s` lies within `max_clock_skew` of the receiver's clock (gateways without a
//! real-time clock drift, hence a generous default of 5 minutes). Our own beacons are
//! dropped as [`DropReason::Own`]. (A sender that restarts within the same second has its
//! beacons of that second dropped as replays; the next second heals it.)
//!
//! # The replay window across restarts
//! The last accepted pair per sender is the whole replay protection, so a receiver that
//! forgot it would accept any recorded genuine beacon younger than `max_clock_skew` once:
//! after a restart, one replay of a 5 s old beacon of a node that has left made a neighbour
//! that does not exist. The window therefore outlives the process
//! ([`BeaconFilter::encode_window`] / [`BeaconFilter::restore_window`]; the driver keeps it
//! in a file, see [`crate::DiscoveryConfig::replay_state`]): 16 bytes of magic
//! `mule-replay-v1\n\0`, then per sender 32 bytes of node id, the time in ms and the seq
//! (u64 big-endian each), at most `max_peers` senders (48 KiB at the default 1024). It is
//! written when a neighbour goes silent (its last beacon is then final), at least every 30 s
//! while it changes, and at shutdown; a torn or foreign file is ignored with a warning.
//! What remains: after a crash, beacons newer than the last save (at most 30 s old, of a node
//! that had not gone silent yet) are accepted once more, and so is a recorded beacon of a node
//! this receiver never heard (the non-goal above). A tighter clock window instead would
//! shut out gateways whose clocks drift by minutes.
//!
//! # Interval ([`AdaptiveInterval`])
//! After any change (a neighbour appears or leaves, an interface comes up) the next beacon
//! goes out after `min`, and each following gap doubles up to a cap: `keepalive` while there
//! are neighbours (it must be well under the silence after which they drop us), `max` when
//! alone. A jitter of ±10% (random input in [-1, 1]) keeps nodes from synchronising.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, VerifyingKey};
use mule_proto::cbor::serde::encode;
use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::identity::NodeIdentity;
use crate::time::Timestamp;

/// Protocol version carried in beacons (and in mDNS TXT records).
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest beacon accepted or produced, in bytes.
pub const MAX_BEACON_BYTES: usize = 512;
/// Most recently-met ids a beacon carries.
pub const MAX_MET: usize = 3;
/// Domain separation prefix for the signature.
const SIGN_CONTEXT: &[u8] = b"mule-beacon-v1\0";

/// A short digest of what a node holds, supplied by the caller (e.g. a hash of its bundle ids).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct HoldingsDigest(pub [u8; 8]);

impl fmt::Debug for HoldingsDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HoldingsDigest({})", hex::encode(self.0))
    }
}

/// The first four bytes of a node id: enough to tell a handful of recently met devices apart.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShortId(pub [u8; 4]);

impl ShortId {
    /// The short id of `node`.
    pub fn of(node: &NodeId) -> ShortId {
        let mut s = [0u8; 4];
        s.copy_from_slice(&node.0[..4]);
        ShortId(s)
    }

    /// Whether `node` has this short id.
    pub fn matches(&self, node: &NodeId) -> bool {
        node.0[..4] == self.0
    }
}

impl fmt::Debug for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShortId({})", hex::encode(self.0))
    }
}

impl fmt::Display for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A decoded, signature-checked beacon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Beacon {
    /// The sender (its public key).
    pub node: NodeId,
    /// The sender's protocol version.
    pub version: u8,
    /// Sender's packet counter within the second of `time` (restarts at 0 every second, which
    /// keeps it one CBOR byte).
    pub seq: u64,
    /// Sender's clock when it sent the beacon (whole seconds on the wire).
    pub time: Timestamp,
    /// TCP port of the sender's session listener.
    pub session_port: u16,
    /// Digest of the sender's holdings.
    pub digest: HoldingsDigest,
    /// Short ids of devices the sender met most recently (at most [`MAX_MET`]).
    pub met: Vec<ShortId>,
}

/// Why a beacon could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BeaconError {
    /// More than [`MAX_BEACON_BYTES`].
    #[error("beacon of {0} bytes exceeds the {MAX_BEACON_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not the CBOR structure of the wire format.
    #[error("malformed beacon: {0}")]
    Malformed(String),
    /// The signature field is empty.
    #[error("beacon carries no signature")]
    Unsigned,
    /// A version this node does not speak.
    #[error("unsupported beacon version {0}")]
    BadVersion(u64),
    /// The signature does not match the claimed node id (spoofed or corrupted).
    #[error("beacon signature does not verify")]
    BadSignature,
}

/// Body fields as they go on the wire (a CBOR array, via serde's tuple struct).
#[derive(Serialize)]
struct BodyOut<'a>(u8, Bytes<'a>, u64, u64, u16, Bytes<'a>, Vec<Bytes<'a>>);

/// Body fields as read from the wire, borrowing from the packet.
#[derive(Deserialize)]
struct BodyIn<'a>(
    u64,
    #[serde(borrow)] &'a [u8],
    u64,
    u64,
    u16,
    #[serde(borrow)] &'a [u8],
    #[serde(borrow)] Vec<&'a [u8]>,
);

/// The outer packet, borrowing from the datagram.
#[derive(Deserialize)]
struct PacketIn<'a>(#[serde(borrow)] &'a [u8], #[serde(borrow)] &'a [u8]);

/// The outer packet being written.
#[derive(Serialize)]
struct PacketOut<'a>(Bytes<'a>, Bytes<'a>);

/// Serialises a slice as a CBOR byte string (serde's default would be an array of ints).
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Decodes one CBOR item filling the whole of `buf` (trailing bytes are an error).
fn decode_exact<'a, T: Deserialize<'a>>(buf: &'a [u8], what: &str) -> Result<T, BeaconError> {
    mule_proto::cbor::serde::decode_exact(buf)
        .map_err(|e| BeaconError::Malformed(format!("{what}: {e}")))
}

impl Beacon {
    /// Encodes and signs a beacon from `me`. `met` beyond [`MAX_MET`] is cut off.
    pub fn encode_signed(
        me: &NodeIdentity,
        seq: u64,
        time: Timestamp,
        session_port: u16,
        digest: HoldingsDigest,
        met: &[ShortId],
    ) -> Vec<u8> {
        let node = me.id();
        let met: Vec<Bytes<'_>> = met.iter().take(MAX_MET).map(|m| Bytes(&m.0)).collect();
        let body = encode(&BodyOut(
            PROTOCOL_VERSION,
            Bytes(node.as_bytes()),
            seq,
            // Whole seconds: 5 CBOR bytes instead of 9 (beacons are sent every second, and
            // the sequence number orders beacons within a second).
            time.0 / 1000,
            session_port,
            Bytes(&digest.0),
            met,
        ));
        let sig = me.sign(&signed_message(&body));
        encode(&PacketOut(Bytes(&body), Bytes(&sig.to_bytes())))
    }

    /// Decodes a datagram and checks its signature.
    pub fn decode(packet: &[u8]) -> Result<Beacon, BeaconError> {
        if packet.len() > MAX_BEACON_BYTES {
            return Err(BeaconError::TooLarge(packet.len()));
        }
        let PacketIn(body, sig) = decode_exact(packet, "packet")?;
        let BodyIn(version, node, seq, time, session_port, digest, met) =
            decode_exact(body, "body")?;
        if version != u64::from(PROTOCOL_VERSION) {
            return Err(BeaconError::BadVersion(version));
        }
        if sig.is_empty() {
            return Err(BeaconError::Unsigned);
        }
        let node: [u8; 32] = node
            .try_into()
            .map_err(|_| BeaconError::Malformed(format!("node id of {} bytes", node.len())))?;
        let digest: [u8; 8] = digest
            .try_into()
            .map_err(|_| BeaconError::Malformed(format!("digest of {} bytes", digest.len())))?;
        let sig: [u8; 64] = sig
            .try_into()
            .map_err(|_| BeaconError::Malformed(format!("signature of {} bytes", sig.len())))?;
        if met.len() > MAX_MET {
            return Err(BeaconError::Malformed(format!("{} met ids", met.len())));
        }
        let met = met
            .iter()
            .map(|m| {
                <[u8; 4]>::try_from(*m)
                    .map(ShortId)
                    .map_err(|_| BeaconError::Malformed(format!("met id of {} bytes", m.len())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let key = VerifyingKey::from_bytes(&node).map_err(|_| BeaconError::BadSignature)?;
        key.verify_strict(&signed_message(body), &Signature::from_bytes(&sig))
            .map_err(|_| BeaconError::BadSignature)?;
        Ok(Beacon {
            node: NodeId(node),
            version: PROTOCOL_VERSION,
            seq,
            time: Timestamp::from_secs(time),
            session_port,
            digest: HoldingsDigest(digest),
            met,
        })
    }
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGN_CONTEXT.len() + body.len());
    m.extend_from_slice(SIGN_CONTEXT);
    m.extend_from_slice(body);
    m
}

/// Why the filter dropped a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Larger than [`MAX_BEACON_BYTES`].
    TooLarge,
    /// Not a well-formed beacon.
    Malformed,
    /// No signature.
    Unsigned,
    /// Unknown protocol version.
    BadVersion,
    /// Signature does not verify (spoofed or corrupted).
    BadSignature,
    /// Not newer than the last accepted beacon from that node.
    Replayed,
    /// Sender's time too far from ours.
    OutOfWindow,
    /// Our own beacon (looped back by another socket or a bridge).
    Own,
}

impl DropReason {
    /// All reasons, in counter order.
    pub const ALL: [DropReason; 8] = [
        DropReason::TooLarge,
        DropReason::Malformed,
        DropReason::Unsigned,
        DropReason::BadVersion,
        DropReason::BadSignature,
        DropReason::Replayed,
        DropReason::OutOfWindow,
        DropReason::Own,
    ];

    /// Stable lowercase name (metrics labels, JSON).
    pub fn name(self) -> &'static str {
        match self {
            DropReason::TooLarge => "too_large",
            DropReason::Malformed => "malformed",
            DropReason::Unsigned => "unsigned",
            DropReason::BadVersion => "bad_version",
            DropReason::BadSignature => "bad_signature",
            DropReason::Replayed => "replayed",
            DropReason::OutOfWindow => "out_of_window",
            DropReason::Own => "own",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl From<&BeaconError> for DropReason {
    fn from(e: &BeaconError) -> DropReason {
        match e {
            BeaconError::TooLarge(_) => DropReason::TooLarge,
            BeaconError::Malformed(_) => DropReason::Malformed,
            BeaconError::Unsigned => DropReason::Unsigned,
            BeaconError::BadVersion(_) => DropReason::BadVersion,
            BeaconError::BadSignature => DropReason::BadSignature,
        }
    }
}

/// Per-reason drop counts plus accepted beacons.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterCounters {
    /// Beacons accepted.
    pub accepted: u64,
    /// Drops, indexed like [`DropReason::ALL`].
    pub dropped: [u64; 8],
}

impl FilterCounters {
    /// Drops for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }

    /// All drops except our own looped-back beacons.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum::<u64>() - self.dropped(DropReason::Own)
    }
}

/// Settings of the [`BeaconFilter`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterConfig {
    /// Largest accepted difference between the sender's and our clock.
    pub max_clock_skew: Duration,
    /// Most senders whose last `(time, seq)` is remembered; the oldest is forgotten first.
    pub max_peers: usize,
    /// At most one log line per drop reason per this period.
    pub log_every: Duration,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            max_clock_skew: Duration::from_secs(300),
            max_peers: 1024,
            log_every: Duration::from_secs(10),
        }
    }
}

/// Receive-side validation: decode, verify, then reject own, stale and out-of-window beacons.
/// Call [`BeaconFilter::handle`] for each datagram; read [`BeaconFilter::counters`] anytime.
#[derive(Debug)]
pub struct BeaconFilter {
    own: NodeId,
    cfg: FilterConfig,
    last: HashMap<NodeId, (u64, u64)>,
    /// Bumped whenever `last` changes (so a driver saves the window only when it must).
    generation: u64,
    counters: FilterCounters,
    last_log: [Option<Instant>; 8],
    suppressed: [u64; 8],
}

/// Why a saved replay window ([`BeaconFilter::encode_window`]) could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// The bytes do not start with the window format's magic (another file, or a newer
    /// format).
    #[error("not a beacon replay window (bad magic)")]
    BadMagic,
    /// The records do not fill the bytes exactly (a torn or truncated write).
    #[error("replay window of {0} bytes is truncated")]
    Truncated(usize),
}

/// First bytes of a saved replay window.
const WINDOW_MAGIC: &[u8; 16] = b"mule-replay-v1\n\0";
/// One saved record: node id (32), time in ms (u64 BE), seq (u64 BE).
const WINDOW_RECORD: usize = 48;

impl BeaconFilter {
    /// A filter for node `own`.
    pub fn new(own: NodeId, cfg: FilterConfig) -> BeaconFilter {
        BeaconFilter {
            own,
            cfg,
            last: HashMap::new(),
            generation: 0,
            counters: FilterCounters::default(),
            last_log: [None; 8],
            suppressed: [0; 8],
        }
    }

    /// Checks one datagram received at `now` (monotonic, for log rate limiting) when our wall
    /// clock read `wall`. `from` only labels log lines.
    pub fn handle(
        &mut self,
        now: Instant,
        wall: Timestamp,
        packet: &[u8],
        from: &dyn fmt::Display,
    ) -> Result<Beacon, DropReason> {
        let beacon = match Beacon::decode(packet) {
            Ok(b) => b,
            Err(e) => {
                let reason = DropReason::from(&e);
                self.drop_with(now, reason, from, &e);
                return Err(reason);
            }
        };
        if beacon.node == self.own {
            self.counters.dropped[DropReason::Own.index()] += 1;
            return Err(DropReason::Own);
        }
        let skew = beacon.time.0.abs_diff(wall.0);
        if skew > self.cfg.max_clock_skew.as_millis() as u64 {
            self.drop_with(
                now,
                DropReason::OutOfWindow,
                from,
                &format_args!("node {} clock off by {skew} ms", beacon.node.short()),
            );
            return Err(DropReason::OutOfWindow);
        }
        let key = (beacon.time.0, beacon.seq);
        if let Some(prev) = self.last.get(&beacon.node).copied()
            && key <= prev
        {
            self.drop_with(
                now,
                DropReason::Replayed,
                from,
                &format_args!(
                    "node {} sent (time {}, seq {}) after (time {}, seq {})",
                    beacon.node.short(),
                    key.0,
                    key.1,
                    prev.0,
                    prev.1
                ),
            );
            return Err(DropReason::Replayed);
        }
        if !self.last.contains_key(&beacon.node) && self.last.len() >= self.cfg.max_peers {
            // Forget the sender heard from longest ago (by its own clock; good enough).
            if let Some(oldest) = self.last.iter().min_by_key(|(_, v)| **v).map(|(k, _)| *k) {
                self.last.remove(&oldest);
            }
        }
        self.last.insert(beacon.node, key);
        self.generation += 1;
        self.counters.accepted += 1;
        Ok(beacon)
    }

    /// The replay window (the last accepted `(time, seq)` of every remembered sender) as
    /// bytes, to be kept across restarts: a filter that starts empty accepts any genuine
    /// beacon still inside the clock window, so one replayed beacon of a node that has left
    /// would make a ghost neighbour. At most `max_peers` records of 48 bytes after a 16-byte
    /// magic; [`BeaconFilter::restore_window`] reads it back.
    pub fn encode_window(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(WINDOW_MAGIC.len() + self.last.len() * WINDOW_RECORD);
        out.extend_from_slice(WINDOW_MAGIC);
        let mut rows: Vec<_> = self.last.iter().collect();
        // Deterministic bytes for the same window (HashMap order is not).
        rows.sort_unstable_by_key(|(node, _)| **node);
        for (node, (time, seq)) in rows {
            out.extend_from_slice(node.as_bytes());
            out.extend_from_slice(&time.to_be_bytes());
            out.extend_from_slice(&seq.to_be_bytes());
        }
        out
    }

    /// Merges a window saved by [`BeaconFilter::encode_window`] (keeping, per sender, the
    /// later of the saved and the current pair); returns how many senders it holds. When the
    /// saved window is larger than `max_peers` (a smaller limit than when it was written),
    /// the senders with the oldest times are left out. Malformed bytes change nothing.
    pub fn restore_window(&mut self, bytes: &[u8]) -> Result<usize, WindowError> {
        let body = bytes
            .strip_prefix(WINDOW_MAGIC.as_slice())
            .ok_or(WindowError::BadMagic)?;
        if !body.len().is_multiple_of(WINDOW_RECORD) {
            return Err(WindowError::Truncated(bytes.len()));
        }
        let mut rows: Vec<(NodeId, (u64, u64))> = body
            .chunks_exact(WINDOW_RECORD)
            .map(|r| {
                let u64_at = |i: usize| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&r[i..i + 8]);
                    u64::from_be_bytes(b)
                };
                let mut node = [0u8; 32];
                node.copy_from_slice(&r[..32]);
                (NodeId(node), (u64_at(32), u64_at(40)))
            })
            .collect();
        rows.sort_unstable_by_key(|(_, key)| std::cmp::Reverse(*key));
        for (node, key) in rows {
            let known = self.last.contains_key(&node);
            if !known && self.last.len() >= self.cfg.max_peers {
                continue;
            }
            let entry = self.last.entry(node).or_insert(key);
            *entry = (*entry).max(key);
        }
        self.generation += 1;
        Ok(self.last.len())
    }

    /// A number that changes whenever the replay window does (compare two readings to know
    /// whether [`BeaconFilter::encode_window`] would write anything new).
    pub fn window_generation(&self) -> u64 {
        self.generation
    }

    /// Counters so far.
    pub fn counters(&self) -> FilterCounters {
        self.counters
    }

    /// Forgets a node's last `(time, seq)` (e.g. after it has been gone for long).
    pub fn forget(&mut self, node: &NodeId) {
        if self.last.remove(node).is_some() {
            self.generation += 1;
        }
    }

    fn drop_with(
        &mut self,
        now: Instant,
        reason: DropReason,
        from: &dyn fmt::Display,
        detail: &dyn fmt::Display,
    ) {
        let i = reason.index();
        self.counters.dropped[i] += 1;
        let due = self.last_log[i].is_none_or(|t| now.duration_since(t) >= self.cfg.log_every);
        if due {
            tracing::warn!(reason = reason.name(), %from, suppressed = self.suppressed[i], "dropped beacon: {detail}");
            self.last_log[i] = Some(now);
            self.suppressed[i] = 0;
        } else {
            self.suppressed[i] += 1;
        }
    }
}

/// Bounds of the beacon interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntervalConfig {
    /// Gap right after a change.
    pub min: Duration,
    /// Cap while neighbours are present (keep it at most a third of their silence timeout).
    pub keepalive: Duration,
    /// Cap when alone.
    pub max: Duration,
    /// After a neighbour is lost the gap is capped at `after_loss_gap` for this long, then the
    /// cap doubles once per such period until the usual cap is lower (zero: off). A contact
    /// that broke off silently (out of range, no interface event) often resumes within
    /// seconds, and only a beacon can tell either side that it did.
    pub after_loss: Duration,
    /// The gap right after a neighbour is lost.
    pub after_loss_gap: Duration,
}

impl Default for IntervalConfig {
    fn default() -> Self {
        IntervalConfig {
            min: Duration::from_millis(250),
            // With ±10% jitter the gap stays under 1.21 s, so one lost beacon still fits in
            // the default 3 s silence, and a node stays under 200 bytes/s on the wire.
            keepalive: Duration::from_millis(1100),
            max: Duration::from_secs(2),
            // 20 s at 10 beacons/s, then 5/s, 2.5/s, 1.25/s, 0.6/s for 20 s each: about 400
            // beacons (75 kB) per lost contact, for a resumed contact found within ~0.1 s.
            after_loss: Duration::from_secs(20),
            after_loss_gap: Duration::from_millis(100),
        }
    }
}

/// The adaptive beacon interval (see the module docs). Pure: time and jitter are inputs.
#[derive(Clone, Debug)]
pub struct AdaptiveInterval {
    cfg: IntervalConfig,
    current: Duration,
    lost_at: Option<Instant>,
}

impl AdaptiveInterval {
    /// Starts fast (a node that just started wants to be found).
    pub fn new(cfg: IntervalConfig) -> AdaptiveInterval {
        let min = cfg.min.min(cfg.max);
        let cfg = IntervalConfig {
            min,
            keepalive: cfg.keepalive.clamp(min, cfg.max.max(min)),
            max: cfg.max.max(min),
            after_loss: cfg.after_loss,
            after_loss_gap: cfg.after_loss_gap.max(Duration::from_millis(10)),
        };
        AdaptiveInterval {
            cfg,
            current: cfg.min,
            lost_at: None,
        }
    }

    /// Something changed (neighbour came or went, interface came up): go fast again.
    pub fn on_change(&mut self) {
        self.current = self.cfg.min;
    }

    /// A neighbour went silent at `now`: go fast, and stay fast for a while (see
    /// [`IntervalConfig::after_loss`]).
    pub fn on_lost(&mut self, now: Instant) {
        self.on_change();
        if !self.cfg.after_loss.is_zero() {
            self.lost_at = Some(now);
            self.current = self.current.min(self.cfg.after_loss_gap);
        }
    }

    /// A neighbour appeared (or came back): the usual intervals apply again.
    pub fn on_found(&mut self) {
        self.lost_at = None;
        self.on_change();
    }

    /// The gap until the next beacon, given the time, how many neighbours there are and a
    /// jitter in [-1, 1]; advances the state (each gap doubles up to the cap).
    pub fn next_gap(&mut self, now: Instant, neighbours: usize, jitter: f64) -> Duration {
        let mut cap = if neighbours > 0 {
            self.cfg.keepalive
        } else {
            self.cfg.max
        };
        if let Some(t) = self.lost_at {
            let periods =
                now.saturating_duration_since(t).as_nanos() / self.cfg.after_loss.as_nanos();
            let after_loss = self
                .cfg
                .after_loss_gap
                .saturating_mul(1u32 << periods.min(16) as u32);
            if after_loss < cap {
                cap = after_loss;
            } else {
                self.lost_at = None;
            }
        }
        let base = self.current.min(cap);
        self.current = (base * 2).min(cap);
        let j = jitter.clamp(-1.0, 1.0) * 0.1;
        base.mul_f64(1.0 + j)
    }

    /// The un-jittered gap the next call would start from.
    pub fn current(&self) -> Duration {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> NodeIdentity {
        NodeIdentity::from_secret([1; 32])
    }

    fn sample(seq: u64, t: u64) -> Vec<u8> {
        let met = [
            ShortId([1, 2, 3, 4]),
            ShortId([5, 6, 7, 8]),
            ShortId([9, 9, 9, 9]),
        ];
        Beacon::encode_signed(
            &me(),
            seq,
            Timestamp(t),
            7000,
            HoldingsDigest([0xab; 8]),
            &met,
        )
    }

    #[test]
    fn roundtrip_and_size() {
        let bytes = sample(5, 1_700_000_000_000);
        // Session port >= 256, seq < 24 (it restarts every second), three met ids.
        assert_eq!(
            bytes.len(),
            139,
            "beacon size changed: update the module docs"
        );
        let b = Beacon::decode(&bytes).unwrap();
        assert_eq!(b.node, me().id());
        assert_eq!(
            (b.seq, b.time.0, b.session_port),
            (5, 1_700_000_000_000, 7000)
        );
        assert_eq!(b.digest, HoldingsDigest([0xab; 8]));
        assert_eq!(b.met.len(), 3);
    }

    #[test]
    fn rejects_every_bit_flip() {
        let bytes = sample(1, 1000);
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(
                    Beacon::decode(&b).is_err(),
                    "flip byte {i} bit {bit} accepted"
                );
            }
        }
    }

    #[test]
    fn rejects_trailing_truncated_oversized_and_unsigned() {
        let mut bytes = sample(1, 1000);
        bytes.push(0);
        assert!(matches!(
            Beacon::decode(&bytes),
            Err(BeaconError::Malformed(_))
        ));
        let bytes = sample(1, 1000);
        for n in 0..bytes.len() {
            assert!(Beacon::decode(&bytes[..n]).is_err(), "prefix {n}");
        }
        assert_eq!(Beacon::decode(&[0; 600]), Err(BeaconError::TooLarge(600)));
        // Re-wrap the body with an empty signature.
        let PacketIn(body, _) = decode_exact(&bytes, "p").unwrap();
        let unsigned = encode(&PacketOut(Bytes(body), Bytes(&[])));
        assert_eq!(Beacon::decode(&unsigned), Err(BeaconError::Unsigned));
    }

    #[test]
    fn spoofed_node_id_fails_signature() {
        let other = NodeIdentity::from_secret([2; 32]);
        let bytes = sample(1, 1000);
        let PacketIn(body, sig) = decode_exact(&bytes, "p").unwrap();
        // Same body and signature, but claim to be `other`.
        let mut body = body.to_vec();
        let pos = body
            .windows(32)
            .position(|w| w == me().id().as_bytes())
            .unwrap();
        body[pos..pos + 32].copy_from_slice(other.id().as_bytes());
        let forged = encode(&PacketOut(Bytes(&body), Bytes(sig)));
        assert_eq!(Beacon::decode(&forged), Err(BeaconError::BadSignature));
    }

    #[test]
    fn filter_counts_each_reason() {
        let now = Instant::now();
        let wall = Timestamp(10_000_000);
        let mut f = BeaconFilter::new(NodeId([9; 32]), FilterConfig::default());
        let src = "test";
        assert!(f.handle(now, wall, &sample(1, wall.0), &src).is_ok());
        assert_eq!(
            f.handle(now, wall, &sample(1, wall.0), &src),
            Err(DropReason::Replayed)
        );
        assert_eq!(
            f.handle(now, wall, &sample(0, wall.0 - 1), &src),
            Err(DropReason::Replayed)
        );
        assert!(
            f.handle(now, wall, &sample(0, wall.0 + 1000), &src).is_ok(),
            "restart: clock moved on"
        );
        assert_eq!(
            f.handle(now, wall, &sample(9, wall.0 + 400_000), &src),
            Err(DropReason::OutOfWindow)
        );
        assert_eq!(
            f.handle(now, wall, b"\x01\x02", &src),
            Err(DropReason::Malformed)
        );
        let mut own = BeaconFilter::new(me().id(), FilterConfig::default());
        assert_eq!(
            own.handle(now, wall, &sample(1, wall.0), &src),
            Err(DropReason::Own)
        );
        let c = f.counters();
        assert_eq!(c.accepted, 2);
        assert_eq!(c.dropped(DropReason::Replayed), 2);
        assert_eq!(c.dropped(DropReason::OutOfWindow), 1);
        assert_eq!(c.dropped(DropReason::Malformed), 1);
        assert_eq!(c.dropped_total(), 4);
    }

    #[test]
    fn filter_memory_is_bounded() {
        let now = Instant::now();
        let cfg = FilterConfig {
            max_peers: 3,
            ..FilterConfig::default()
        };
        let mut f = BeaconFilter::new(NodeId([0; 32]), cfg);
        for i in 1..=10u8 {
            let id = NodeIdentity::from_secret([i; 32]);
            let b =
                Beacon::encode_signed(&id, 1, Timestamp(1000), 1, HoldingsDigest::default(), &[]);
            f.handle(now, Timestamp(1000), &b, &"x").unwrap();
        }
        assert_eq!(f.last.len(), 3);
    }

    /// After a restart the filter must still refuse what it accepted before: a replayed
    /// ~5 s old genuine beacon of a node that has left made a ghost neighbour (issue 18).
    #[test]
    fn replay_window_survives_a_restart() {
        let now = Instant::now();
        let wall = Timestamp(1_700_000_010_000);
        let old = sample(0, wall.0 - 5000);
        let newer = sample(0, wall.0 - 4000);
        let own = NodeId([9; 32]);
        let mut before = BeaconFilter::new(own, FilterConfig::default());
        assert!(before.handle(now, wall, &old, &"a").is_ok());
        assert!(before.handle(now, wall, &newer, &"a").is_ok());
        let saved = before.encode_window();
        assert_eq!(saved.len(), 16 + 48);

        // A fresh filter (what a restart gave until now) takes the replay.
        let mut fresh = BeaconFilter::new(own, FilterConfig::default());
        assert!(fresh.handle(now, wall, &old, &"replay").is_ok());

        let mut after = BeaconFilter::new(own, FilterConfig::default());
        assert_eq!(after.restore_window(&saved), Ok(1));
        for replay in [&old, &newer] {
            assert_eq!(
                after.handle(now, wall, replay, &"replay"),
                Err(DropReason::Replayed)
            );
        }
        assert!(
            after.handle(now, wall, &sample(0, wall.0), &"a").is_ok(),
            "the node's next beacon is accepted"
        );
        // Restoring never moves a sender's window back.
        let g = after.window_generation();
        assert_eq!(after.restore_window(&saved), Ok(1));
        assert!(after.window_generation() > g);
        assert_eq!(
            after.handle(now, wall, &sample(0, wall.0), &"a"),
            Err(DropReason::Replayed)
        );
    }

    #[test]
    fn a_damaged_or_oversized_window_is_refused_or_cut() {
        let now = Instant::now();
        let mut f = BeaconFilter::new(NodeId([0; 32]), FilterConfig::default());
        for i in 1..=5u8 {
            let id = NodeIdentity::from_secret([i; 32]);
            let t = 1_000_000 + u64::from(i) * 1000;
            let b = Beacon::encode_signed(&id, 0, Timestamp(t), 1, HoldingsDigest::default(), &[]);
            f.handle(now, Timestamp(t), &b, &"x").unwrap();
        }
        let saved = f.encode_window();
        assert_eq!(saved, f.encode_window(), "deterministic");
        let mut g = BeaconFilter::new(NodeId([0; 32]), FilterConfig::default());
        assert_eq!(
            g.restore_window(&saved[..saved.len() - 1]),
            Err(WindowError::Truncated(saved.len() - 1))
        );
        assert_eq!(g.restore_window(b"garbage"), Err(WindowError::BadMagic));
        assert_eq!(g.restore_window(&[]), Err(WindowError::BadMagic));
        assert!(g.last.is_empty(), "a refused window changes nothing");
        // A smaller limit keeps the senders heard most recently.
        let mut small = BeaconFilter::new(
            NodeId([0; 32]),
            FilterConfig {
                max_peers: 2,
                ..FilterConfig::default()
            },
        );
        assert_eq!(small.restore_window(&saved), Ok(2));
        let mut kept: Vec<u64> = small.last.values().map(|(t, _)| *t).collect();
        kept.sort_unstable();
        assert_eq!(kept, [1_004_000, 1_005_000]);
    }

    /// `MULE_WRITE_FUZZ_SEEDS=$PWD/fuzz/corpus/beacon_decode` writes seeds for the fuzz
    /// target: whole packets, and bodies (the target signs those itself).
    #[test]
    fn fuzz_seeds() {
        let packets = [sample(0, 1_700_000_000_000), sample(30, 0), {
            let id = NodeIdentity::from_secret([3; 32]);
            Beacon::encode_signed(&id, 1, Timestamp(5000), 80, HoldingsDigest([0; 8]), &[])
        }];
        let mut seeds = Vec::new();
        for p in &packets {
            let PacketIn(body, _) = decode_exact(p, "p").unwrap();
            seeds.push(body.to_vec());
            seeds.push(p.clone());
        }
        if let Some(dir) = std::env::var_os("MULE_WRITE_FUZZ_SEEDS") {
            std::fs::create_dir_all(&dir).unwrap();
            for (i, s) in seeds.iter().enumerate() {
                std::fs::write(std::path::Path::new(&dir).join(format!("seed-{i}")), s).unwrap();
            }
        }
        assert!(packets.iter().all(|p| Beacon::decode(p).is_ok()));
    }

    #[test]
    fn interval_backs_off_and_resets() {
        let cfg = IntervalConfig::default();
        let now = Instant::now();
        let mut iv = AdaptiveInterval::new(cfg);
        let gaps: Vec<_> = (0..5).map(|_| iv.next_gap(now, 1, 0.0)).collect();
        assert_eq!(gaps[0], Duration::from_millis(250));
        assert_eq!(gaps[1], Duration::from_millis(500));
        assert_eq!(gaps[2], Duration::from_secs(1));
        assert_eq!(
            gaps[4],
            Duration::from_millis(1100),
            "keepalive cap with neighbours"
        );
        assert_eq!(iv.next_gap(now, 0, 0.0), Duration::from_millis(1100));
        assert_eq!(
            iv.next_gap(now, 0, 0.0),
            Duration::from_secs(2),
            "slower alone"
        );
        iv.on_change();
        assert_eq!(iv.next_gap(now, 0, 1.0), Duration::from_millis(275));
        for _ in 0..100 {
            let g = iv.next_gap(now, 0, -1.0);
            assert!(g >= cfg.min.mul_f64(0.9) && g <= cfg.max);
        }
    }

    #[test]
    fn interval_stays_fast_after_a_loss_then_relaxes() {
        let cfg = IntervalConfig::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut iv = AdaptiveInterval::new(cfg);
        for _ in 0..10 {
            iv.next_gap(t0, 0, 0.0);
        }
        assert_eq!(iv.next_gap(t0, 0, 0.0), Duration::from_secs(2));
        iv.on_lost(t0);
        // Alone after the loss: 100 ms for 20 s, then 200 ms for 20 s, then 400 ms ...
        let ms = Duration::from_millis;
        for s in [0, 10, 19] {
            assert_eq!(iv.next_gap(at(s), 0, 0.0), ms(100), "at {s} s");
        }
        // Each step takes effect from the gap after the one in progress.
        for (s, gap) in [
            (21, 100),
            (22, 200),
            (41, 200),
            (42, 400),
            (61, 400),
            (62, 800),
            (81, 800),
            (82, 1600),
            (101, 1600), // the loss cap reached the usual cap: the loss is forgotten
            (102, 2000),
            (300, 2000),
        ] {
            assert_eq!(iv.next_gap(at(s), 0, 0.0), ms(gap), "at {s} s");
        }
        // A neighbour coming back ends the fast phase at once.
        iv.on_lost(at(300));
        assert_eq!(iv.next_gap(at(300), 0, 0.0), ms(100));
        iv.on_found();
        let gaps: Vec<_> = (0..5).map(|_| iv.next_gap(at(301), 1, 0.0)).collect();
        assert_eq!(gaps, [ms(250), ms(500), ms(1000), ms(1100), ms(1100)]);
        // With neighbours present, the keep-alive cap applies once the loss cap exceeds it.
        iv.on_lost(at(400));
        for (s, gap) in [
            (400, 100),
            (421, 100),
            (422, 200),
            (441, 200),
            (442, 400),
            (461, 400),
            (462, 800),
            (481, 800),
            (482, 1100),
        ] {
            assert_eq!(iv.next_gap(at(s), 2, 0.0), ms(gap), "at {s} s");
        }
        // Zero turns it off.
        let mut off = AdaptiveInterval::new(IntervalConfig {
            after_loss: Duration::ZERO,
            ..cfg
        });
        for _ in 0..10 {
            off.next_gap(t0, 0, 0.0);
        }
        off.on_lost(t0);
        let gaps: Vec<_> = (0..4).map(|i| off.next_gap(at(i), 0, 0.0)).collect();
        assert_eq!(gaps[3], Duration::from_secs(2));
    }
}
