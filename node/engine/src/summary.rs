//! Session summaries: what a node holds, knows and wants, sent first in every session.
//!
//! # Goals
//! - Tell the peer, in one compact frame, which pieces we hold so it can request the ones it
//!   lacks without a per-piece inventory: bundles we hold **completely** are listed by id
//!   (exact, 32 bytes each), pieces of **partial** bundles go into a Bloom filter.
//! - Salt the filter per session, so a false positive that hides a piece in one contact does
//!   not hide the same piece in the next one.
//! - Treat a received filter as hostile: bounded size and hash count, checked on decode, and
//!   a `contains` that cannot panic or take unbounded time whatever the bytes.
//!
//! # Non-goals
//! Exact inventories (a false positive only costs one `Refuse{NotHeld}` round trip, after
//! which the requester marks the piece as not held by that peer), merging filters.
//!
//! # Filter construction (normative; see also `node/PROTOCOL.md`)
//! A filter is `(salt: 16 bytes, k: 1..=16, bits: 0..=2 MiB bytes)`, `m = 8 * len(bits)`
//! bits. For a piece `(bundle, index)`:
//! ```text
//! h  = BLAKE3(salt || bundle_id (32 bytes) || index as u32 big-endian)      // 52-byte input
//! h1 = u64::from_le_bytes(h[0..8]);  h2 = u64::from_le_bytes(h[8..16])
//! bit_i = (h1 + i * h2) mod m   for i in 0..k   (wrapping 64-bit arithmetic)
//! bit j lives in bits[j / 8] under mask 1 << (j % 8)
//! ```
//! An empty `bits` contains nothing. The sender sizes it for `n` pieces and a target false
//! positive rate `p`: `m = ceil(-n ln p / ln² 2)` rounded up to whole bytes (at least 8),
//! `k = round(m / n · ln 2)` clamped to `1..=16`, and `m` capped at the 2 MiB limit.
//!
//! # Why not `growable-bloom-filter`
//! The issue suggested it, and it was measured (see `shared/CRATES.md`): its serialised form
//! is not a stable or checkable format (a crafted filter deserialised fine and then panicked
//! in `contains()`; a huge hash count cost 22 ms per lookup), and its stages cannot be
//! bounded before use. The sending side does not need growth either: the summary is built
//! from a snapshot whose size is known, and pieces stored afterwards are announced with exact
//! `Have` frames. So both sides use this fixed, fully specified filter, which a third party
//! can implement from the paragraph above.

use std::collections::{HashMap, HashSet};

use mule_bundle::{BundleId, PieceRef};
use mule_contacts::NodeId;

use crate::cbor::{self, CborError, Reader};

/// Largest filter bit array accepted or produced, in bytes (16 Mi bits).
pub const MAX_FILTER_BYTES: usize = 2 << 20;
/// Largest hash-function count accepted or produced.
pub const MAX_HASHES: u8 = 16;
/// Most bundle ids in the `complete` and `manifests` lists each.
pub const MAX_IDS: usize = 16_384;
/// Most bundle ids in the `want_bundles` list.
pub const MAX_WANT_BUNDLES: usize = 1024;
/// Most channels a summary names.
pub const MAX_CHANNELS: usize = 64;
/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 128;
/// Most `(node, predictability)` pairs a summary carries.
pub const MAX_PREDICTABILITIES: usize = 256;

/// Why a summary (or its filter) is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SummaryError {
    /// The filter's bit array exceeds [`MAX_FILTER_BYTES`].
    #[error("filter of {0} bytes exceeds the limit of {MAX_FILTER_BYTES}")]
    FilterTooLarge(usize),
    /// The hash count is 0 or above [`MAX_HASHES`].
    #[error("filter hash count {0} outside 1..={MAX_HASHES}")]
    BadHashCount(u64),
    /// A predictability is not a finite number in `0..=1`.
    #[error("predictability {0} is not in 0..=1")]
    BadPredictability(f32),
    /// The CBOR layout is wrong.
    #[error(transparent)]
    Cbor(#[from] CborError),
}

/// A per-session salt mixed into every filter key.
pub type Salt = [u8; 16];

/// A fixed-size, salted Bloom filter over pieces, with validated bounds.
#[derive(Clone, PartialEq, Eq)]
pub struct BloomFilter {
    salt: Salt,
    k: u8,
    bits: Vec<u8>,
}

impl std::fmt::Debug for BloomFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BloomFilter(k={}, {} bytes)", self.k, self.bits.len())
    }
}

/// The two 64-bit halves of a piece's filter key.
fn key(salt: &Salt, piece: PieceRef) -> (u64, u64) {
    let mut h = blake3::Hasher::new();
    h.update(salt);
    h.update(piece.bundle.as_bytes());
    h.update(&piece.index.to_be_bytes());
    let out = h.finalize();
    let b = out.as_bytes();
    let mut a1 = [0u8; 8];
    let mut a2 = [0u8; 8];
    a1.copy_from_slice(&b[0..8]);
    a2.copy_from_slice(&b[8..16]);
    (u64::from_le_bytes(a1), u64::from_le_bytes(a2))
}

impl BloomFilter {
    /// A filter sized for `items` pieces at false-positive rate `fp_rate` (clamped to
    /// `1e-9..=0.5`), never larger than [`MAX_FILTER_BYTES`].
    pub fn for_items(salt: Salt, items: usize, fp_rate: f64) -> Self {
        if items == 0 {
            return BloomFilter {
                salt,
                k: 1,
                bits: Vec::new(),
            };
        }
        let p = fp_rate.clamp(1e-9, 0.5);
        let ln2 = std::f64::consts::LN_2;
        let m = (-(items as f64) * libm::log(p) / (ln2 * ln2)).ceil();
        let bytes = ((m / 8.0).ceil() as usize).clamp(8, MAX_FILTER_BYTES);
        let m = (bytes * 8) as f64;
        let k = ((m / items as f64) * ln2)
            .round()
            .clamp(1.0, MAX_HASHES as f64) as u8;
        BloomFilter {
            salt,
            k,
            bits: vec![0; bytes],
        }
    }

    /// Rebuilds a received filter, checking its bounds first.
    pub fn from_parts(salt: Salt, k: u64, bits: Vec<u8>) -> Result<Self, SummaryError> {
        if bits.len() > MAX_FILTER_BYTES {
            return Err(SummaryError::FilterTooLarge(bits.len()));
        }
        if k == 0 || k > MAX_HASHES as u64 {
            return Err(SummaryError::BadHashCount(k));
        }
        Ok(BloomFilter {
            salt,
            k: k as u8,
            bits,
        })
    }

    /// The salt.
    pub fn salt(&self) -> &Salt {
        &self.salt
    }

    /// Number of hash functions.
    pub fn hash_count(&self) -> u8 {
        self.k
    }

    /// The bit array.
    pub fn bits(&self) -> &[u8] {
        &self.bits
    }

    fn positions(&self, piece: PieceRef) -> impl Iterator<Item = usize> + use<> {
        let m = (self.bits.len() as u64) * 8;
        let (h1, h2) = key(&self.salt, piece);
        (0..self.k as u64).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % m) as usize)
    }

    /// Adds a piece (no effect on an empty filter).
    pub fn insert(&mut self, piece: PieceRef) {
        if self.bits.is_empty() {
            return;
        }
        for j in self.positions(piece) {
            self.bits[j / 8] |= 1 << (j % 8);
        }
    }

    /// Whether the piece may be in the set (never false for an inserted piece).
    pub fn contains(&self, piece: PieceRef) -> bool {
        if self.bits.is_empty() {
            return false;
        }
        let mut pos = self.positions(piece);
        pos.all(|j| self.bits[j / 8] & (1 << (j % 8)) != 0)
    }
}

/// The summary frame: the first message each side sends once the peer is authenticated.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Filter over the pieces of bundles held partially (salted with its own salt).
    pub filter: BloomFilter,
    /// Bundles held completely.
    pub complete: Vec<BundleId>,
    /// Bundles whose (verified) manifest the sender holds.
    pub manifests: Vec<BundleId>,
    /// Channels the sender subscribes to.
    pub channels: Vec<String>,
    /// Individual bundles the sender asks for.
    pub want_bundles: Vec<BundleId>,
    /// The sender's highest delivery predictabilities towards other nodes.
    pub predictabilities: Vec<(NodeId, f32)>,
    /// Bytes the sender can still accept for bundles it carries for others.
    pub carry_quota_bytes: u64,
    /// How long the sender expects this contact to last, if it has an estimate.
    pub expected_contact_ms: Option<u64>,
}

fn ids(out: &mut Vec<u8>, ids: &[BundleId]) {
    cbor::array(out, ids.len());
    for id in ids {
        cbor::bytes(out, id.as_bytes());
    }
}

fn read_ids(
    r: &mut Reader<'_>,
    field: &'static str,
    max: usize,
) -> Result<Vec<BundleId>, CborError> {
    let n = r.array(field, max)?;
    (0..n).map(|_| r.fixed::<32>(field).map(BundleId)).collect()
}

impl Summary {
    /// Appends the CBOR body (without frame header).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        cbor::array(out, 10);
        cbor::bytes(out, &self.filter.salt);
        cbor::uint(out, self.filter.k as u64);
        cbor::bytes(out, &self.filter.bits);
        ids(out, &self.complete);
        ids(out, &self.manifests);
        cbor::array(out, self.channels.len());
        for c in &self.channels {
            cbor::text(out, c);
        }
        ids(out, &self.want_bundles);
        cbor::array(out, self.predictabilities.len());
        for (node, p) in &self.predictabilities {
            cbor::array(out, 2);
            cbor::bytes(out, node.as_bytes());
            cbor::f32(out, *p);
        }
        cbor::uint(out, self.carry_quota_bytes);
        match self.expected_contact_ms {
            Some(ms) => cbor::uint(out, ms),
            None => cbor::null(out),
        }
    }

    /// Parses and validates a CBOR body (the frame layer checks trailing bytes).
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, SummaryError> {
        r.array_exact("summary", 10)?;
        let salt = r.fixed::<16>("salt")?;
        let k = r.uint("hash count", u64::MAX)?;
        let bits = r.bytes("filter bits", usize::MAX)?;
        // Check the bounds before copying the bits anywhere.
        if bits.len() > MAX_FILTER_BYTES {
            return Err(SummaryError::FilterTooLarge(bits.len()));
        }
        let filter = BloomFilter::from_parts(salt, k, bits.to_vec())?;
        let complete = read_ids(r, "complete", MAX_IDS)?;
        let manifests = read_ids(r, "manifests", MAX_IDS)?;
        let n = r.array("channels", MAX_CHANNELS)?;
        let channels = (0..n)
            .map(|_| r.text("channel", MAX_CHANNEL_LEN).map(str::to_owned))
            .collect::<Result<_, _>>()?;
        let want_bundles = read_ids(r, "want bundles", MAX_WANT_BUNDLES)?;
        let n = r.array("predictabilities", MAX_PREDICTABILITIES)?;
        let mut predictabilities = Vec::with_capacity(n);
        for _ in 0..n {
            r.array_exact("predictability", 2)?;
            let node = NodeId(r.fixed::<32>("node")?);
            let p = r.f32()?;
            if !(0.0..=1.0).contains(&p) {
                return Err(SummaryError::BadPredictability(p));
            }
            predictabilities.push((node, p));
        }
        let carry_quota_bytes = r.uint("carry quota", u64::MAX)?;
        let expected_contact_ms = if r.null()? {
            None
        } else {
            Some(r.uint("expected contact", u64::MAX)?)
        };
        Ok(Summary {
            filter,
            complete,
            manifests,
            channels,
            want_bundles,
            predictabilities,
            carry_quota_bytes,
            expected_contact_ms,
        })
    }
}

/// Most in-session `Have` entries remembered per peer; more is a protocol violation.
pub const MAX_PEER_HAVES: usize = 1 << 18;

/// What we know a peer holds and wants: its summary plus in-session updates.
#[derive(Debug, Clone)]
pub struct PeerHoldings {
    filter: BloomFilter,
    complete: HashSet<BundleId>,
    manifests: HashSet<BundleId>,
    channels: HashSet<String>,
    want_bundles: HashSet<BundleId>,
    predictabilities: HashMap<NodeId, f32>,
    haves: HashSet<PieceRef>,
    lacks: HashSet<PieceRef>,
    /// Bytes the peer can still accept for bundles carried for others.
    pub carry_quota_bytes: u64,
    /// How long the peer expects the contact to last.
    pub expected_contact_ms: Option<u64>,
}

impl PeerHoldings {
    /// Starts from a received summary.
    pub fn new(s: Summary) -> Self {
        PeerHoldings {
            filter: s.filter,
            complete: s.complete.into_iter().collect(),
            manifests: s.manifests.into_iter().collect(),
            channels: s.channels.into_iter().collect(),
            want_bundles: s.want_bundles.into_iter().collect(),
            predictabilities: s.predictabilities.into_iter().collect(),
            haves: HashSet::new(),
            lacks: HashSet::new(),
            carry_quota_bytes: s.carry_quota_bytes,
            expected_contact_ms: s.expected_contact_ms,
        }
    }

    /// Whether the peer (probably) holds the piece.
    pub fn has(&self, piece: PieceRef) -> bool {
        if self.lacks.contains(&piece) {
            return false;
        }
        self.complete.contains(&piece.bundle)
            || self.haves.contains(&piece)
            || self.filter.contains(piece)
    }

    /// Whether the peer holds the whole bundle.
    pub fn has_complete(&self, bundle: &BundleId) -> bool {
        self.complete.contains(bundle)
    }

    /// Whether the peer knows the bundle's manifest.
    pub fn knows_manifest(&self, bundle: &BundleId) -> bool {
        self.manifests.contains(bundle) || self.complete.contains(bundle)
    }

    /// Whether the peer subscribes to `channel` or asked for `bundle`.
    pub fn wants(&self, bundle: &BundleId, channel: &str) -> bool {
        self.want_bundles.contains(bundle) || self.channels.contains(channel)
    }

    /// The peer's advertised predictability vector, sorted by node id (for
    /// PRoPHET transitivity).
    pub fn predictabilities(&self) -> Vec<(NodeId, f64)> {
        let mut v: Vec<(NodeId, f64)> = self
            .predictabilities
            .iter()
            .map(|(n, p)| (*n, f64::from(*p)))
            .collect();
        v.sort_by_key(|e| e.0);
        v
    }

    /// The peer's delivery predictability towards `node` (0 when unknown).
    pub fn predictability(&self, node: &NodeId) -> f32 {
        self.predictabilities.get(node).copied().unwrap_or(0.0)
    }

    /// Records an in-session `Have`; returns false when the per-peer cap is reached.
    pub fn add_have(&mut self, piece: PieceRef) -> bool {
        self.lacks.remove(&piece);
        if self.haves.len() >= MAX_PEER_HAVES {
            return false;
        }
        self.haves.insert(piece);
        true
    }

    /// Records that we sent the peer a manifest (it knows it now).
    pub fn add_manifest(&mut self, bundle: BundleId) {
        self.manifests.insert(bundle);
    }

    /// Records that the peer does not hold a piece (filter false positive or evicted).
    pub fn add_lack(&mut self, piece: PieceRef) {
        self.haves.remove(&piece);
        self.lacks.insert(piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn piece(b: u8, i: u32) -> PieceRef {
        PieceRef {
            bundle: BundleId([b; 32]),
            index: i,
        }
    }

    fn sample() -> Summary {
        let mut filter = BloomFilter::for_items([7; 16], 100, 0.01);
        filter.insert(piece(1, 3));
        Summary {
            filter,
            complete: vec![BundleId([2; 32])],
            manifests: vec![BundleId([1; 32]), BundleId([2; 32])],
            channels: vec!["fw/x".into()],
            want_bundles: vec![BundleId([9; 32])],
            predictabilities: vec![(NodeId([5; 32]), 0.5)],
            carry_quota_bytes: 1 << 30,
            expected_contact_ms: Some(10_000),
        }
    }

    #[test]
    fn summary_round_trips() {
        let s = sample();
        let mut out = Vec::new();
        s.encode(&mut out);
        let mut r = Reader::new(&out);
        let back = Summary::decode(&mut r).unwrap();
        r.finish().unwrap();
        assert_eq!(back, s);
        let h = PeerHoldings::new(back);
        assert!(h.has(piece(1, 3)) && h.has(piece(2, 999)));
        assert!(h.wants(&BundleId([0; 32]), "fw/x") && !h.wants(&BundleId([0; 32]), "x"));
    }

    #[test]
    fn sizing_meets_the_false_positive_target() {
        let n = 10_000u32;
        let mut f = BloomFilter::for_items([1; 16], n as usize, 0.01);
        for i in 0..n {
            f.insert(piece(1, i));
        }
        let fp = (0..20_000u32).filter(|&i| f.contains(piece(2, i))).count();
        assert!(fp < 20_000 / 50, "false positives {fp} of 20000");
        assert!(f.bits().len() < 13_000, "filter {} bytes", f.bits().len());
    }

    #[test]
    fn test_vector_for_protocol_md() {
        // salt = 16 × 0x00, bundle = 32 × 0x01, index = 7, bits = 8 bytes (m = 64), k = 3.
        let p = piece(1, 7);
        let (h1, h2) = key(&[0; 16], p);
        let f = BloomFilter::from_parts([0; 16], 3, vec![0; 8]).unwrap();
        let bits: Vec<usize> = f.positions(p).collect();
        let mut g = f.clone();
        g.insert(p);
        assert_eq!((h1, h2), (0xd998_34cb_6970_2f9f, 0xad02_2804_ee0e_70cb));
        assert_eq!(bits, [31, 42, 53]);
        assert_eq!(g.bits(), [0, 0, 0, 0x80, 0, 0x04, 0x20, 0]);
    }

    #[test]
    fn hostile_filters_are_rejected_before_use() {
        assert_eq!(
            BloomFilter::from_parts([0; 16], 0, vec![0; 8]),
            Err(SummaryError::BadHashCount(0))
        );
        assert_eq!(
            BloomFilter::from_parts([0; 16], 1 << 40, vec![0; 8]),
            Err(SummaryError::BadHashCount(1 << 40))
        );
        assert!(matches!(
            BloomFilter::from_parts([0; 16], 3, vec![0; MAX_FILTER_BYTES + 1]),
            Err(SummaryError::FilterTooLarge(_))
        ));
        // Odd sizes and an all-ones filter are fine and cannot panic.
        let f = BloomFilter::from_parts([0; 16], 16, vec![0xff; 3]).unwrap();
        assert!(f.contains(piece(1, 1)));
    }

    #[test]
    fn different_salts_give_different_false_positives() {
        let mk = |salt| {
            let mut f = BloomFilter::for_items(salt, 1000, 0.05);
            for i in 0..1000 {
                f.insert(piece(1, i));
            }
            (0..5000u32)
                .filter(|&i| f.contains(piece(3, i)))
                .collect::<HashSet<_>>()
        };
        let (a, b) = (mk([1; 16]), mk([2; 16]));
        assert!(!a.is_empty() && a != b);
    }

    #[test]
    fn mutated_summaries_never_panic() {
        // 100k mutations of a valid encoding (byte flips, truncations, insertions): each
        // decodes to a typed result, and a filter that validates answers `contains`.
        let mut valid = Vec::new();
        sample().encode(&mut valid);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..100_000 {
            let mut buf = valid.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % buf.len();
                match next() % 3 {
                    0 => buf[at] = next() as u8,
                    1 => buf.truncate(at.max(1)),
                    _ => buf.insert(at, next() as u8),
                }
            }
            let mut r = Reader::new(&buf);
            if let Ok(s) = Summary::decode(&mut r) {
                let h = PeerHoldings::new(s);
                let _ = h.has(piece(1, 3));
            }
        }
    }

    proptest! {
        #[test]
        fn no_false_negatives(
            salt in any::<[u8; 16]>(),
            pieces in proptest::collection::vec((any::<[u8; 32]>(), any::<u32>()), 0..300),
            fp in 0.0001f64..0.3,
        ) {
            let mut f = BloomFilter::for_items(salt, pieces.len(), fp);
            let pieces: Vec<_> = pieces.into_iter()
                .map(|(b, i)| PieceRef { bundle: BundleId(b), index: i })
                .collect();
            for p in &pieces {
                f.insert(*p);
            }
            // Survives the wire too.
            let g = BloomFilter::from_parts(salt, f.hash_count() as u64, f.bits().to_vec()).unwrap();
            for p in &pieces {
                prop_assert!(f.contains(*p));
                prop_assert!(g.contains(*p));
            }
        }
    }
}
