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
//! # Filter (normative; see also `node/PROTOCOL.md` 3.3.1)
//! The filter is a `growable-bloom-filter` 2.1 [`GrowableBloom`] (a scalable, partitioned
//! Bloom filter), serialised with its serde derive through cbor4ii and carried as a byte
//! string. The inserted item is the 52-byte key `salt (16) || bundle id (32) || index (u32
//! big-endian)`, hashed as one byte string (no length prefix), so the key hashes the same on
//! every platform; the 16-byte salt is fresh per session. The sender sizes the filter for the
//! pieces it inserts (known from its store snapshot), so it has a single stage; a receiver
//! accepts up to [`MAX_STAGES`].
//!
//! # Hostile filters
//! The crate's deserialiser accepts values its `contains` then panics on (a stage shorter than
//! its hash count divides by zero) or spends unbounded time on (a huge hash count), and it has
//! no bounds of its own. So a received filter is decoded twice from the same bytes: first into
//! a mirror of the serde layout ([`WireFilter`]) whose stage count, stage sizes, hash counts,
//! error rate and growth parameters are checked, and only then into the crate's type. A
//! lookup in an accepted filter costs at most `MAX_STAGES × MAX_HASHES` bit tests.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use growable_bloom_filter::{GrowableBloom, GrowableBloomBuilder};
use serde::Deserialize;

use mule_proto::{
    BundleId, NodeId, PieceRef,
    cbor::{self, CborError, Reader},
};

/// Most filter bit-array bytes accepted or produced, summed over stages (16 Mi bits).
pub const MAX_FILTER_BYTES: usize = 2 << 20;
/// Most bytes of the serialised filter (bit arrays plus the serde framing).
pub const MAX_FILTER_ENCODED: usize = MAX_FILTER_BYTES + 1024;
/// Largest hash-function count (slices per stage) accepted or produced.
pub const MAX_HASHES: u64 = 16;
/// Most filter stages accepted (the sender produces one).
pub const MAX_STAGES: usize = 4;
/// Largest growth factor accepted.
pub const MAX_GROWTH: u64 = 16;
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
    /// The filter's bit arrays (or its encoding) exceed [`MAX_FILTER_BYTES`].
    #[error("filter of {0} bytes exceeds the limit of {MAX_FILTER_BYTES}")]
    FilterTooLarge(usize),
    /// A stage's hash count is 0, above [`MAX_HASHES`], or more than its bits.
    #[error("filter hash count {0} outside 1..={MAX_HASHES} or above the stage's bit count")]
    BadHashCount(u64),
    /// More than [`MAX_STAGES`] stages.
    #[error("filter has more than {MAX_STAGES} stages")]
    TooManyStages,
    /// Error rate, growth factor or tightening ratio out of range.
    #[error("filter parameter {0} out of range")]
    BadParameter(&'static str),
    /// The serialised filter does not have the expected layout.
    #[error("filter layout: {0}")]
    FilterLayout(String),
    /// A predictability is not a finite number in `0..=1`.
    #[error("predictability {0} is not in 0..=1")]
    BadPredictability(f32),
    /// The CBOR layout is wrong.
    #[error(transparent)]
    Cbor(#[from] CborError),
}

/// A per-session salt mixed into every filter key.
pub type Salt = [u8; 16];

/// The filter item: `salt || bundle id || index (big-endian)`, hashed as one byte string.
struct FilterKey([u8; 52]);

impl FilterKey {
    fn new(salt: &Salt, piece: PieceRef) -> Self {
        let mut k = [0u8; 52];
        k[..16].copy_from_slice(salt);
        k[16..48].copy_from_slice(piece.bundle.as_bytes());
        k[48..].copy_from_slice(&piece.index.to_be_bytes());
        FilterKey(k)
    }
}

impl Hash for FilterKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // One `write` of the raw bytes: no length prefix, nothing platform-dependent.
        state.write(&self.0);
    }
}

/// Mirror of one `growable-bloom-filter` 2.1 stage's serde layout, for validation.
#[derive(Deserialize)]
struct WireStage {
    #[serde(with = "serde_bytes")]
    b: Vec<u8>,
    k: u64,
}

/// The stage list, refused as soon as it has more than [`MAX_STAGES`] entries.
struct WireStages(Vec<WireStage>);

impl<'de> Deserialize<'de> for WireStages {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = WireStages;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "at most {MAX_STAGES} filter stages")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<WireStages, A::Error> {
                let mut v = Vec::new();
                while let Some(stage) = seq.next_element::<WireStage>()? {
                    if v.len() == MAX_STAGES {
                        return Err(serde::de::Error::custom("too many stages"));
                    }
                    v.push(stage);
                }
                Ok(WireStages(v))
            }
        }
        d.deserialize_seq(V)
    }
}

/// Mirror of `GrowableBloom`'s serde layout (field names are the crate's).
#[derive(Deserialize)]
struct WireFilter {
    b: WireStages,
    e: f64,
    t: u64,
    i: u64,
    c: u64,
    #[serde(default = "default_growth")]
    g: u64,
    #[serde(default = "default_tightening")]
    r: f64,
}

fn default_growth() -> u64 {
    2
}

fn default_tightening() -> f64 {
    0.851_562_5
}

impl WireFilter {
    fn check(&self) -> Result<(), SummaryError> {
        let mut total = 0usize;
        for s in &self.b.0 {
            total = total.saturating_add(s.b.len());
            if s.k == 0 || s.k > MAX_HASHES || (s.b.len() as u64) * 8 < s.k {
                return Err(SummaryError::BadHashCount(s.k));
            }
        }
        if total > MAX_FILTER_BYTES {
            return Err(SummaryError::FilterTooLarge(total));
        }
        if !(self.e > 0.0 && self.e < 1.0) {
            return Err(SummaryError::BadParameter("error rate"));
        }
        if !(2..=MAX_GROWTH).contains(&self.g) {
            return Err(SummaryError::BadParameter("growth factor"));
        }
        if !(self.r > 0.0 && self.r <= 1.0) {
            return Err(SummaryError::BadParameter("tightening ratio"));
        }
        // Counts must fit a 32-bit usize (the crate's type) and be consistent.
        let small = |v: u64| v <= u64::from(u32::MAX);
        if !(small(self.t) && small(self.i) && small(self.c)) || self.i > self.c {
            return Err(SummaryError::BadParameter("insertion counts"));
        }
        Ok(())
    }
}

/// A salted Bloom filter over pieces (`growable-bloom-filter`), with validated bounds.
#[derive(Clone)]
pub struct BloomFilter {
    salt: Salt,
    inner: GrowableBloom,
    /// Inserts beyond this are dropped so the filter never grows past one stage.
    max_items: usize,
}

impl PartialEq for BloomFilter {
    fn eq(&self, other: &Self) -> bool {
        self.salt == other.salt && self.inner == other.inner
    }
}

impl std::fmt::Debug for BloomFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BloomFilter({} items)", self.inner.len())
    }
}

impl BloomFilter {
    /// A filter sized for `items` pieces at false-positive rate `fp_rate` (clamped to
    /// `1e-4..=0.5`). The single stage never exceeds [`MAX_FILTER_BYTES`]: for more items
    /// the rate rises (down to one hash), and beyond what one hash fits (about 11.6 million
    /// pieces) further inserts are dropped, so those pieces are only announced by `Have`.
    pub fn for_items(salt: Salt, items: usize, fp_rate: f64) -> Self {
        let items = items.max(1);
        let max_bits = (MAX_FILTER_BYTES * 8) as f64;
        let slice_bits = (items as f64 / std::f64::consts::LN_2).ceil();
        // The crate uses k = ceil(log2(1/p)) slices of `slice_bits` bits each.
        let wanted_k = libm::ceil(libm::log2(1.0 / fp_rate.clamp(1e-4, 0.5)));
        let k = wanted_k.min(libm::floor(max_bits / slice_bits)).max(1.0);
        let max_items = if slice_bits > max_bits {
            (max_bits * std::f64::consts::LN_2) as usize
        } else {
            items
        };
        let inner = GrowableBloomBuilder::new()
            .estimated_insertions(max_items)
            .desired_error_ratio(libm::exp2(-k) * 1.0001)
            .build();
        BloomFilter {
            salt,
            inner,
            max_items,
        }
    }

    /// Decodes a received filter's bytes, checking every bound before the filter is built.
    pub fn decode(salt: Salt, bytes: &[u8]) -> Result<Self, SummaryError> {
        if bytes.len() > MAX_FILTER_ENCODED {
            return Err(SummaryError::FilterTooLarge(bytes.len()));
        }
        let wire: WireFilter =
            cbor::serde::decode_exact(bytes).map_err(SummaryError::FilterLayout)?;
        wire.check()?;
        let inner: GrowableBloom =
            cbor::serde::decode_exact(bytes).map_err(SummaryError::FilterLayout)?;
        Ok(BloomFilter {
            salt,
            max_items: inner.len(),
            inner,
        })
    }

    /// The serialised filter, as carried in a summary.
    pub fn encode(&self) -> Vec<u8> {
        cbor::serde::encode(&self.inner)
    }

    /// The salt.
    pub fn salt(&self) -> &Salt {
        &self.salt
    }

    /// Pieces inserted.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Adds a piece (dropped once the filter holds what it was sized for).
    pub fn insert(&mut self, piece: PieceRef) {
        if self.inner.len() < self.max_items {
            self.inner.insert(FilterKey::new(&self.salt, piece));
        }
    }

    /// Whether the piece may be in the set (never false for an inserted piece).
    pub fn contains(&self, piece: PieceRef) -> bool {
        self.inner.contains(FilterKey::new(&self.salt, piece))
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
        cbor::array(out, 9);
        cbor::bytes(out, &self.filter.salt);
        cbor::bytes(out, &self.filter.encode());
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
        r.array_exact("summary", 9)?;
        let salt = r.fixed::<16>("salt")?;
        let bytes = r.bytes("filter", usize::MAX)?;
        let filter = BloomFilter::decode(salt, bytes)?;
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
    /// Advertised predictabilities are taken as `min(p, cap) × weight`.
    predictability_cap: f32,
    predictability_weight: f32,
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
            predictability_cap: 1.0,
            predictability_weight: 1.0,
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

    /// Believe the peer's predictabilities only up to `cap` (what the PRoPHET model can
    /// produce: `1 − δ`), and then only by `weight` (how far its past claims held).
    pub fn discount_predictabilities(&mut self, cap: f32, weight: f32) {
        self.predictability_cap = cap.clamp(0.0, 1.0);
        self.predictability_weight = weight.clamp(0.0, 1.0);
    }

    /// Believe at most `max` bytes of advertised carry quota.
    pub fn clamp_carry_quota(&mut self, max: u64) {
        self.carry_quota_bytes = self.carry_quota_bytes.min(max);
    }

    fn believed(&self, p: f32) -> f32 {
        p.min(self.predictability_cap) * self.predictability_weight
    }

    /// The peer's advertised predictability vector as believed (see
    /// [`discount_predictabilities`](Self::discount_predictabilities)), sorted by node id
    /// (for PRoPHET transitivity).
    pub fn predictabilities(&self) -> Vec<(NodeId, f64)> {
        let mut v: Vec<(NodeId, f64)> = self
            .predictabilities
            .iter()
            .map(|(n, p)| (*n, f64::from(self.believed(*p))))
            .collect();
        v.sort_by_key(|e| e.0);
        v
    }

    /// The peer's delivery predictability towards `node` as believed (0 when unknown).
    pub fn predictability(&self, node: &NodeId) -> f32 {
        self.predictabilities
            .get(node)
            .map_or(0.0, |p| self.believed(*p))
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
    use serde::Serialize;

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
        assert!(
            f.encode().len() < 13_000,
            "filter {} bytes",
            f.encode().len()
        );
    }

    #[test]
    fn oversized_item_counts_stay_within_the_limit() {
        // Far more pieces than a 2 MiB stage holds at 1 %: fewer hashes, one stage, and
        // inserts beyond what one hash fits are dropped rather than growing the filter.
        let f = BloomFilter::for_items([1; 16], 5_000_000, 0.01);
        let mut g = BloomFilter::for_items([1; 16], 20_000_000, 0.01);
        for i in 0..20_000_000u32 {
            g.insert(piece(1, i));
        }
        for f in [&f, &g] {
            let bytes = f.encode();
            assert!(bytes.len() <= MAX_FILTER_ENCODED, "{} bytes", bytes.len());
            assert!(BloomFilter::decode([1; 16], &bytes).is_ok());
        }
        assert!(g.len() < 20_000_000 && g.contains(piece(1, 0)));
    }

    /// PROTOCOL.md 3.3.1, written out independently of the crate: h1, h2 and the bits set.
    fn documented_hashes(salt: &Salt, p: PieceRef) -> (u64, u64) {
        use xxhash_rust::xxh3::xxh3_64;
        let mut key = Vec::with_capacity(53);
        key.extend_from_slice(salt);
        key.extend_from_slice(p.bundle.as_bytes());
        key.extend_from_slice(&p.index.to_be_bytes());
        let h1 = xxh3_64(&key);
        key.push(0);
        (h1, xxh3_64(&key).max(1))
    }

    fn documented_bits(salt: &Salt, p: PieceRef, stage_bytes: usize, k: u64) -> Vec<u64> {
        let (mut h1, mut h2) = documented_hashes(salt, p);
        let slice = stage_bytes as u64 * 8 / k;
        (0..k)
            .map(|i| {
                let bit = h1 % slice + i * slice;
                h1 = h1.wrapping_add(h2);
                h2 = h2.wrapping_add(i);
                bit
            })
            .collect()
    }

    #[derive(Serialize)]
    struct HostileStage {
        #[serde(with = "serde_bytes")]
        b: Vec<u8>,
        k: u64,
    }

    #[derive(Serialize)]
    struct HostileFilter {
        b: Vec<HostileStage>,
        e: f64,
        t: u64,
        i: u64,
        c: u64,
        g: u64,
        r: f64,
    }

    impl HostileFilter {
        fn one(bytes: usize, k: u64) -> Self {
            HostileFilter {
                b: vec![HostileStage {
                    b: vec![0; bytes],
                    k,
                }],
                e: 0.01,
                t: 10,
                i: 1,
                c: 10,
                g: 2,
                r: 0.85,
            }
        }
        fn bytes(&self) -> Vec<u8> {
            cbor::serde::encode(self)
        }
    }

    #[test]
    fn the_documented_construction_matches_the_crate() {
        // For random pieces and three filter geometries, a one-piece filter built by the
        // crate has exactly the bits the written-out construction predicts.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for n in [1usize, 10, 1000] {
            let salt = [n as u8; 16];
            for _ in 0..200 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let p = piece((x >> 8) as u8, x as u32);
                let mut one = BloomFilter::for_items(salt, n, 0.01);
                one.insert(p);
                let w: WireFilter = cbor::serde::decode_exact(&one.encode()).unwrap();
                assert_eq!(w.b.0.len(), 1);
                let stage = &w.b.0[0];
                let set: Vec<u64> = (0..stage.b.len() as u64 * 8)
                    .filter(|&j| stage.b[(j / 8) as usize] & (1 << (j % 8)) != 0)
                    .collect();
                let mut want = documented_bits(&salt, p, stage.b.len(), stage.k);
                want.sort_unstable();
                want.dedup();
                assert_eq!(set, want);
            }
        }
    }

    #[test]
    fn test_vector_for_protocol_md() {
        // salt = 16 × 0x00, bundle = 32 × 0x01, index = 7, filter sized for 10 pieces at 1 %.
        let p = piece(1, 7);
        let mut f = BloomFilter::for_items([0; 16], 10, 0.01);
        f.insert(p);
        let w: WireFilter = cbor::serde::decode_exact(&f.encode()).unwrap();
        assert_eq!((w.b.0.len(), w.b.0[0].b.len(), w.b.0[0].k), (1, 14, 7));
        assert_eq!(
            documented_hashes(&[0; 16], p),
            (0xaa80_993d_8650_9ce4, 0x7f0a_ee74_3d09_389f)
        );
        assert_eq!(documented_bits(&[0; 16], p, 14, 7), TEST_VECTOR_BITS);
        assert_eq!(hex(&w.b.0[0].b), TEST_VECTOR_STAGE);
    }

    const TEST_VECTOR_BITS: [u64; 7] = [4, 19, 34, 50, 68, 89, 98];
    const TEST_VECTOR_STAGE: &str = "1000080004000400100000020400";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn hostile_filters_are_rejected_before_use() {
        let dec = |h: &HostileFilter| BloomFilter::decode([0; 16], &h.bytes());
        assert!(dec(&HostileFilter::one(8, 3)).is_ok());
        assert_eq!(
            dec(&HostileFilter::one(8, 0)),
            Err(SummaryError::BadHashCount(0))
        );
        assert_eq!(
            dec(&HostileFilter::one(8, 1 << 40)),
            Err(SummaryError::BadHashCount(1 << 40))
        );
        // A stage with fewer bits than hashes: the crate divides by zero in `contains`.
        let short = HostileFilter::one(1, 9);
        assert_eq!(dec(&short), Err(SummaryError::BadHashCount(9)));
        let raw: GrowableBloom = cbor::serde::decode_exact(&short.bytes()).unwrap();
        let crashed =
            std::panic::catch_unwind(|| raw.contains(FilterKey::new(&[0; 16], piece(1, 1))));
        assert!(
            crashed.is_err(),
            "the crate no longer panics: the check may be relaxed"
        );
        let mut many = HostileFilter::one(8, 3);
        many.b = (0..MAX_STAGES + 1)
            .map(|_| HostileStage {
                b: vec![0; 8],
                k: 3,
            })
            .collect();
        assert!(matches!(dec(&many), Err(SummaryError::FilterLayout(_))));
        let mut big = HostileFilter::one(MAX_FILTER_BYTES / 2 + 8, 3);
        big.b.push(HostileStage {
            b: vec![0; MAX_FILTER_BYTES / 2],
            k: 3,
        });
        assert!(matches!(dec(&big), Err(SummaryError::FilterTooLarge(_))));
        let with = |f: fn(&mut HostileFilter)| {
            let mut h = HostileFilter::one(8, 3);
            f(&mut h);
            h
        };
        for (field, h) in [
            ("error rate", with(|h| h.e = f64::NAN)),
            ("error rate", with(|h| h.e = 1.0)),
            ("growth factor", with(|h| h.g = 1)),
            ("growth factor", with(|h| h.g = 1 << 40)),
            ("tightening ratio", with(|h| h.r = 0.0)),
            ("insertion counts", with(|h| h.i = 11)),
            ("insertion counts", with(|h| h.t = 1 << 40)),
        ] {
            assert_eq!(dec(&h), Err(SummaryError::BadParameter(field)));
        }
        let mut trailing = HostileFilter::one(8, 3).bytes();
        trailing.push(0);
        assert!(matches!(
            BloomFilter::decode([0; 16], &trailing),
            Err(SummaryError::FilterLayout(_))
        ));
        assert!(matches!(
            BloomFilter::decode([0; 16], &[0xff; 40]),
            Err(SummaryError::FilterLayout(_))
        ));
        // Odd sizes and an all-ones filter are fine and cannot panic.
        let mut ones = HostileFilter::one(3, 16);
        ones.b[0].b = vec![0xff; 3];
        assert!(dec(&ones).unwrap().contains(piece(1, 1)));
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
            let g = BloomFilter::decode(salt, &f.encode()).unwrap();
            for p in &pieces {
                prop_assert!(f.contains(*p));
                prop_assert!(g.contains(*p));
            }
        }
    }
}
