//! Signed bundle manifests: the wire format, its canonical form and verification.
//!
//! A bundle is a signed manifest plus content cut into fixed-size pieces. The manifest names the
//! bundle, says who published it, which bundles it replaces and needs, who wants it, and carries
//! the BLAKE3 hash of every piece and of the whole content, so every piece can be checked on
//! arrival, before it is stored.
//!
//! # Goals
//! - One byte string per manifest: the encoding is canonical, decoding re-encodes and compares,
//!   so two different byte strings never carry the same manifest and the bundle id (the BLAKE3
//!   hash of the signed bytes) is a stable identity.
//! - Every byte a peer sends is checked before use: size limit first, then structure, canonical
//!   form, field limits and finally the ed25519 signature (`verify_strict`).
//! - [`VerifiedManifest`] can only be built by [`VerifiedManifest::decode`] or [`Manifest::sign`],
//!   so holding one proves the checks passed.
//!
//! # Non-goals
//! Deciding whether the publisher is trusted (see [`crate::trust`]), or whether the manifest has
//! expired (that needs the clock; see [`Manifest::is_expired`]).
//!
//! # Wire format (format version 2; version 1 is still read)
//! The signed envelope is a CBOR array of two byte strings:
//! `[body: bstr, signature: bstr(64)]`. The body is itself the CBOR encoding of a 17-element
//! array (15 in format version 1, which ends after field 14), in this fixed order:
//!
//! | # | field | CBOR |
//! |---|---|---|
//! | 0 | format version (= 1) | uint |
//! | 1 | name | text, 1..=255 bytes |
//! | 2 | version label | text, 1..=255 bytes |
//! | 3 | lineage (ids replaced) | array of bstr(32), at most 64 |
//! | 4 | publisher ed25519 key | bstr(32) |
//! | 5 | created, unix seconds | uint |
//! | 6 | expires, unix seconds | uint (> created) or null (never) |
//! | 7 | priority | uint: 0 critical, 1 high, 2 normal, 3 bulk |
//! | 8 | dependencies | array of bstr(32), at most 64, no duplicates |
//! | 9 | audience | array of text (1..=255 bytes), at most 64 |
//! | 10 | content length | uint |
//! | 11 | piece size | uint, [`MIN_PIECE_SIZE`]..=[`MAX_PIECE_SIZE`] |
//! | 12 | piece hashes | one bstr: the 32-byte BLAKE3 hashes concatenated |
//! | 13 | content hash | bstr(32), BLAKE3 of the whole content |
//! | 14 | metadata | map text -> text, at most 64 entries, values up to 4096 bytes |
//! | 15 | release number (v2) | uint >= 1, strictly increasing within the release lineage |
//! | 16 | install stages (v2) | array (at most 16) of `[share: uint, delay: uint]` |
//!
//! A release lineage is (publisher key, name): [`Manifest::release_lineage`]. Field 3 names
//! bundles replaced across lineages (a rename). A stage `[share, delay]` lets the nodes whose
//! cohort is below `share` basis points (1..=10000; 10000 = everyone) install once `delay`
//! seconds have passed since `created`; shares strictly increase and delays never decrease
//! from one stage to the next. No stages: every node installs at once. A format 1 manifest
//! has release number 0 ("unnumbered") and no stages; the release rules skip it.
//!
//! Canonical rules (RFC 8949 §4.2.1 core deterministic encoding): every integer and length in
//! its shortest form, only definite lengths, map keys sorted by their bytes with no duplicates,
//! no trailing bytes after the envelope or inside it. The whole envelope is at most
//! [`MAX_MANIFEST_BYTES`].
//!
//! The signature is ed25519 over `SIGNING_DOMAIN || body`; the domain string keeps a manifest
//! signature from ever being valid as any other Mule signature made with the same key.
//! The bundle id is `BLAKE3(envelope)`.

use std::collections::BTreeMap;
use std::sync::Arc;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use mule_proto::cbor::{self, CborError, Reader};

use crate::id::{BundleId, PieceIndex, Priority};

/// The manifest format version this build writes.
pub const FORMAT_VERSION: u64 = 2;
/// The first format version: no release number, no stages. Still read (and re-encoded
/// byte for byte, so its bundle id stays the same).
pub const FORMAT_V1: u64 = 1;
/// Most install stages in a manifest.
pub const MAX_STAGES: usize = 16;
/// A stage share of everyone, in basis points.
pub const ALL_BP: u32 = 10_000;
/// Largest signed manifest accepted, in bytes (enough for 32 000 piece hashes).
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// Smallest piece size a publisher may choose.
pub const MIN_PIECE_SIZE: u32 = 4 * 1024;
/// Largest piece size a publisher may choose.
pub const MAX_PIECE_SIZE: u32 = 4 * 1024 * 1024;
/// Default piece size, chosen by `benches/ingest.rs` (see DESIGN.md).
pub const DEFAULT_PIECE_SIZE: u32 = 64 * 1024;
/// Longest name, version label, audience entry or metadata key, in bytes.
pub const MAX_LABEL_BYTES: usize = 255;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_BYTES: usize = 4096;
/// Most entries in lineage, dependencies, audience or metadata.
pub const MAX_LIST_ENTRIES: usize = 64;
/// Prefix of every signed message, so a manifest signature is never valid for anything else.
pub const SIGNING_DOMAIN: &[u8] = b"mule manifest signature v1\0";

const BODY_FIELDS_V1: usize = 15;
const BODY_FIELDS: usize = 17;

/// One install phase: nodes whose cohort is below `share_bp` (basis points of the fleet)
/// install once `delay_secs` have passed since the manifest's creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stage {
    /// Share of the fleet in this phase and all earlier ones, in basis points (1..=10000).
    pub share_bp: u32,
    /// Seconds after `created` when this phase opens.
    pub delay_secs: u64,
}

impl std::str::FromStr for Stage {
    type Err = String;

    /// `PERCENT%@DELAY`, e.g. `5%@0`, `50%@2d`, `100%@90s` (delay in humantime-like units
    /// s, m, h, d; a bare number is seconds).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("stage {s:?}: expected PERCENT%@DELAY, e.g. 5%@0 or 50%@2d");
        let (share, delay) = s.split_once('@').ok_or_else(bad)?;
        let pct: f64 = share
            .trim()
            .strip_suffix('%')
            .ok_or_else(bad)?
            .parse()
            .map_err(|_| bad())?;
        if !(pct > 0.0 && pct <= 100.0) {
            return Err(format!(
                "stage {s:?}: the share must be above 0% and at most 100%"
            ));
        }
        let delay = delay.trim();
        let (num, unit) = match delay.find(|c: char| !c.is_ascii_digit()) {
            Some(i) => delay.split_at(i),
            None => (delay, "s"),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        Ok(Stage {
            share_bp: ((pct * 100.0).round() as u32).clamp(1, ALL_BP),
            delay_secs: n.checked_mul(mult).ok_or_else(bad)?,
        })
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}%@{}s",
            f64::from(self.share_bp) / 100.0,
            self.delay_secs
        )
    }
}

/// A release lineage: the publisher key and the bundle name. Release numbers increase within
/// one lineage.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lineage {
    /// The publisher's ed25519 key.
    pub publisher: [u8; 32],
    /// The bundle name.
    pub name: String,
}

impl Lineage {
    /// A stable key: the publisher key followed by the name's bytes.
    pub fn key(&self) -> Vec<u8> {
        let mut k = self.publisher.to_vec();
        k.extend_from_slice(self.name.as_bytes());
        k
    }

    /// The lineage as a fixed-size id (BLAKE3 of [`Lineage::key`]), as the engine sees it.
    pub fn id(&self) -> mule_proto::LineageId {
        mule_proto::LineageId(*blake3::hash(&self.key()).as_bytes())
    }

    /// The inverse of [`Lineage::key`].
    pub fn from_key(k: &[u8]) -> Option<Lineage> {
        let publisher: [u8; 32] = k.get(..32)?.try_into().ok()?;
        let name = std::str::from_utf8(&k[32..]).ok()?.to_owned();
        Some(Lineage { publisher, name })
    }
}

impl std::fmt::Display for Lineage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} by {}", self.name, &hex::encode(self.publisher)[..16])
    }
}

/// The content of a manifest: what the publisher signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Format version; always [`FORMAT_VERSION`] for manifests this build produces.
    pub format_version: u64,
    /// Bundle name (e.g. the package name).
    pub name: String,
    /// Version label (free-form; ordering comes from `lineage`).
    pub version: String,
    /// Ids of the bundles this one replaces.
    pub lineage: Vec<BundleId>,
    /// The publisher's ed25519 public key.
    pub publisher: [u8; 32],
    /// Creation time, unix seconds.
    pub created: u64,
    /// Expiry time, unix seconds; `None` never expires.
    pub expires: Option<u64>,
    /// Priority class.
    pub priority: Priority,
    /// Ids of bundles that must be complete and installed before this one.
    pub dependencies: Vec<BundleId>,
    /// Channels/topics or node ids (hex) that want this bundle.
    pub audience: Vec<String>,
    /// Content length in bytes.
    pub content_len: u64,
    /// Piece size in bytes; every piece but the last has exactly this length.
    pub piece_size: u32,
    /// BLAKE3 hash of every piece, in order.
    pub piece_hashes: Vec<[u8; 32]>,
    /// BLAKE3 hash of the whole content.
    pub content_hash: [u8; 32],
    /// Free-form metadata (e.g. what to run on completion).
    pub metadata: BTreeMap<String, String>,
    /// Release number within the lineage (publisher, name); 0 only in format 1 manifests.
    pub release: u64,
    /// Install phases (format 2); empty: every node installs at once.
    pub stages: Vec<Stage>,
}

/// Why bytes are not a valid signed manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Larger than [`MAX_MANIFEST_BYTES`]; rejected before parsing.
    #[error("manifest is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// Size received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not the CBOR structure of a signed manifest (including truncation).
    #[error("manifest is not well-formed: {0}")]
    Malformed(#[from] CborError),
    /// Bytes left over after the envelope or after the body.
    #[error("{count} trailing bytes after the {what}")]
    TrailingBytes {
        /// Envelope or body.
        what: &'static str,
        /// How many bytes were left.
        count: usize,
    },
    /// A format version this build does not know.
    #[error("unknown manifest format version {found} (this build understands {FORMAT_VERSION})")]
    UnknownVersion {
        /// The version found.
        found: u64,
    },
    /// Well-formed but not in canonical form (a second spelling of some manifest).
    #[error("manifest is not canonically encoded ({0})")]
    NonCanonical(&'static str),
    /// A field breaks a rule (limit, consistency between lengths and hashes, ...).
    #[error("invalid manifest: {0}")]
    Invalid(String),
    /// The publisher key is not a valid ed25519 point.
    #[error("publisher key is not a valid ed25519 public key")]
    BadPublisherKey,
    /// The signature does not verify under the publisher key.
    #[error("manifest signature does not verify")]
    BadSignature,
    /// The signing key does not match the publisher field.
    #[error("signing key does not match the manifest's publisher key")]
    WrongSigningKey,
}

/// Why a piece is not the piece the manifest describes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PieceError {
    /// The index is past the last piece.
    #[error("piece {index} does not exist (bundle has {count} pieces)")]
    NoSuchPiece {
        /// Index asked for.
        index: PieceIndex,
        /// Pieces in the bundle.
        count: u32,
    },
    /// The piece has the wrong length (every piece but the last is exactly the piece size).
    #[error("piece {index} is {got} bytes, expected {expected}")]
    WrongLength {
        /// Index of the piece.
        index: PieceIndex,
        /// Length the manifest implies.
        expected: u32,
        /// Length received.
        got: usize,
    },
    /// The piece's BLAKE3 hash differs from the manifest's.
    #[error("piece {index} does not match its hash")]
    HashMismatch {
        /// Index of the piece.
        index: PieceIndex,
    },
}

/// Number of pieces for `content_len` bytes cut into `piece_size` pieces.
pub fn piece_count(content_len: u64, piece_size: u32) -> u64 {
    if piece_size == 0 {
        return 0;
    }
    content_len.div_ceil(u64::from(piece_size))
}

impl Manifest {
    /// Number of pieces.
    pub fn piece_count(&self) -> u32 {
        // validate() guarantees this fits; saturate rather than wrap for unvalidated values.
        u32::try_from(self.piece_hashes.len()).unwrap_or(u32::MAX)
    }

    /// Length of piece `index`, or `None` if there is no such piece.
    pub fn piece_len(&self, index: PieceIndex) -> Option<u32> {
        let count = self.piece_count();
        if index >= count {
            return None;
        }
        let start = u64::from(index) * u64::from(self.piece_size);
        // Saturating: a hand-built, unvalidated manifest may list more hashes than it has bytes.
        let len = self
            .content_len
            .saturating_sub(start)
            .min(u64::from(self.piece_size));
        Some(len as u32)
    }

    /// Byte offset of piece `index` within the content.
    pub fn piece_offset(&self, index: PieceIndex) -> u64 {
        u64::from(index) * u64::from(self.piece_size)
    }

    /// The release lineage: publisher and name.
    pub fn release_lineage(&self) -> Lineage {
        Lineage {
            publisher: self.publisher,
            name: self.name.clone(),
        }
    }

    /// Whether the manifest carries a release number (format 2); format 1 manifests do not
    /// and are outside the release rules.
    pub fn is_numbered(&self) -> bool {
        self.release > 0
    }

    /// Whether the manifest has expired at `now` (unix seconds).
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }

    /// Checks every field rule of the format (everything but the signature).
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |s: String| Err(ManifestError::Invalid(s));
        match self.format_version {
            FORMAT_V1 if self.release != 0 || !self.stages.is_empty() => {
                return bad("a format 1 manifest has no release number and no stages".into());
            }
            FORMAT_V1 => {}
            FORMAT_VERSION => self.validate_release()?,
            found => return Err(ManifestError::UnknownVersion { found }),
        }
        for (what, s) in [("name", &self.name), ("version label", &self.version)] {
            if s.is_empty() || s.len() > MAX_LABEL_BYTES {
                return bad(format!(
                    "{what} must be 1..={MAX_LABEL_BYTES} bytes, is {}",
                    s.len()
                ));
            }
            if s.chars().any(char::is_control) {
                return bad(format!("{what} contains a control character"));
            }
        }
        for (what, list) in [
            ("lineage", &self.lineage),
            ("dependencies", &self.dependencies),
        ] {
            if list.len() > MAX_LIST_ENTRIES {
                return bad(format!(
                    "{what} has {} entries, at most {MAX_LIST_ENTRIES} allowed",
                    list.len()
                ));
            }
            let mut sorted = list.clone();
            sorted.sort();
            sorted.dedup();
            if sorted.len() != list.len() {
                return bad(format!("{what} lists the same bundle twice"));
            }
        }
        if self.audience.len() > MAX_LIST_ENTRIES {
            return bad(format!(
                "audience has {} entries, at most {MAX_LIST_ENTRIES} allowed",
                self.audience.len()
            ));
        }
        if let Some(a) = self
            .audience
            .iter()
            .find(|a| a.is_empty() || a.len() > MAX_LABEL_BYTES)
        {
            return bad(format!(
                "audience entry must be 1..={MAX_LABEL_BYTES} bytes, is {}",
                a.len()
            ));
        }
        if self.metadata.len() > MAX_LIST_ENTRIES {
            return bad(format!(
                "metadata has {} entries, at most {MAX_LIST_ENTRIES} allowed",
                self.metadata.len()
            ));
        }
        for (k, v) in &self.metadata {
            if k.is_empty() || k.len() > MAX_LABEL_BYTES {
                return bad(format!(
                    "metadata key must be 1..={MAX_LABEL_BYTES} bytes, is {}",
                    k.len()
                ));
            }
            if v.len() > MAX_METADATA_VALUE_BYTES {
                return bad(format!(
                    "metadata value of {k:?} is {} bytes, at most {MAX_METADATA_VALUE_BYTES} allowed",
                    v.len()
                ));
            }
        }
        if let Some(e) = self.expires
            && e <= self.created
        {
            return bad(format!(
                "expires ({e}) must be later than created ({})",
                self.created
            ));
        }
        if !(MIN_PIECE_SIZE..=MAX_PIECE_SIZE).contains(&self.piece_size) {
            return bad(format!(
                "piece size {} is outside {MIN_PIECE_SIZE}..={MAX_PIECE_SIZE}",
                self.piece_size
            ));
        }
        let count = piece_count(self.content_len, self.piece_size);
        if count != self.piece_hashes.len() as u64 {
            return bad(format!(
                "{} bytes in pieces of {} need {count} piece hashes, found {}",
                self.content_len,
                self.piece_size,
                self.piece_hashes.len()
            ));
        }
        Ok(())
    }

    /// The release rules of format 2: a release number, and stages that widen over time.
    fn validate_release(&self) -> Result<(), ManifestError> {
        let bad = |s: String| Err(ManifestError::Invalid(s));
        if self.release == 0 {
            return bad("release number must be at least 1".into());
        }
        if self.stages.len() > MAX_STAGES {
            return bad(format!(
                "{} stages, at most {MAX_STAGES} allowed",
                self.stages.len()
            ));
        }
        let mut prev: Option<Stage> = None;
        for s in &self.stages {
            if s.share_bp == 0 || s.share_bp > ALL_BP {
                return bad(format!(
                    "stage share {} is outside 1..={ALL_BP}",
                    s.share_bp
                ));
            }
            if let Some(p) = prev
                && (s.share_bp <= p.share_bp || s.delay_secs < p.delay_secs)
            {
                return bad(format!(
                    "stage {s} after {p}: shares must grow and delays must not shrink"
                ));
            }
            prev = Some(*s);
        }
        Ok(())
    }

    /// The canonical encoding of the body (what is signed).
    pub fn encode_body(&self) -> Vec<u8> {
        let v1 = self.format_version == FORMAT_V1;
        let mut e = Vec::new();
        cbor::array(&mut e, if v1 { BODY_FIELDS_V1 } else { BODY_FIELDS });
        cbor::uint(&mut e, self.format_version);
        cbor::text(&mut e, &self.name);
        cbor::text(&mut e, &self.version);
        cbor::array(&mut e, self.lineage.len());
        for id in &self.lineage {
            cbor::bytes(&mut e, &id.0);
        }
        cbor::bytes(&mut e, &self.publisher);
        cbor::uint(&mut e, self.created);
        cbor::opt_uint(&mut e, self.expires);
        cbor::uint(&mut e, priority_code(self.priority));
        cbor::array(&mut e, self.dependencies.len());
        for id in &self.dependencies {
            cbor::bytes(&mut e, &id.0);
        }
        cbor::array(&mut e, self.audience.len());
        for a in &self.audience {
            cbor::text(&mut e, a);
        }
        cbor::uint(&mut e, self.content_len);
        cbor::uint(&mut e, u64::from(self.piece_size));
        cbor::bytes(&mut e, self.piece_hashes.as_flattened());
        cbor::bytes(&mut e, &self.content_hash);
        cbor::map(&mut e, self.metadata.len());
        for (k, v) in &self.metadata {
            cbor::text(&mut e, k);
            cbor::text(&mut e, v);
        }
        if !v1 {
            cbor::uint(&mut e, self.release);
            cbor::array(&mut e, self.stages.len());
            for s in &self.stages {
                cbor::array(&mut e, 2);
                cbor::uint(&mut e, u64::from(s.share_bp));
                cbor::uint(&mut e, s.delay_secs);
            }
        }
        e
    }

    /// Decodes a body, checking the format version first. Every head is checked for canonical
    /// form on the way; the whole (map key order) only by the caller's re-encoding.
    fn decode_body(body: &[u8]) -> Result<Manifest, ManifestError> {
        Manifest::read_body(body).map_err(spelled_twice("body"))
    }

    fn read_body(body: &[u8]) -> Result<Manifest, ManifestError> {
        let mut d = Reader::new(body);
        let fields = d.array("manifest body", ANY)?;
        // The version comes first so that a future format with other fields is reported as
        // such, not as a structural error.
        let format_version = d.uint("format version", u64::MAX)?;
        let expected = match format_version {
            FORMAT_V1 => BODY_FIELDS_V1,
            FORMAT_VERSION => BODY_FIELDS,
            found => return Err(ManifestError::UnknownVersion { found }),
        };
        if fields != expected {
            return Err(CborError::ArrayLength {
                what: "manifest body",
                expected: expected as u64,
                found: fields as u64,
            }
            .into());
        }
        let name = d.text("name", ANY)?.to_owned();
        let version = d.text("version label", ANY)?.to_owned();
        let lineage = decode_ids(&mut d, "lineage")?;
        let publisher = d.fixed::<32>("publisher key")?;
        let created = d.uint("created", u64::MAX)?;
        let expires = d.opt_uint("expires", u64::MAX)?;
        let priority = match d.uint("priority", u64::MAX)? {
            0 => Priority::Critical,
            1 => Priority::High,
            2 => Priority::Normal,
            3 => Priority::Bulk,
            p => {
                return Err(ManifestError::Invalid(format!(
                    "priority code {p} is not 0..=3"
                )));
            }
        };
        let dependencies = decode_ids(&mut d, "dependencies")?;
        let n = bounded_len(d.array("audience", ANY)?, "audience")?;
        let mut audience = Vec::with_capacity(n);
        for _ in 0..n {
            audience.push(d.text("audience entry", ANY)?.to_owned());
        }
        let content_len = d.uint("content length", u64::MAX)?;
        let piece_size = u32::try_from(d.uint("piece size", u64::MAX)?)
            .map_err(|_| ManifestError::Invalid("piece size does not fit 32 bits".into()))?;
        let hashes = d.bytes("piece hashes", ANY)?;
        if hashes.len() % 32 != 0 {
            return Err(ManifestError::Invalid(format!(
                "piece hash list is {} bytes, not a multiple of 32",
                hashes.len()
            )));
        }
        let piece_hashes = hashes
            .chunks_exact(32)
            .map(|c| c.try_into().expect("chunks_exact(32) yields 32 bytes"))
            .collect();
        let content_hash = d.fixed::<32>("content hash")?;
        let n = bounded_len(d.map("metadata", ANY)?, "metadata")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n {
            let k = d.text("metadata key", ANY)?.to_owned();
            let v = d.text("metadata value", ANY)?.to_owned();
            if metadata.insert(k, v).is_some() {
                return Err(ManifestError::NonCanonical("duplicate metadata key"));
            }
        }
        let (release, stages) = if format_version == FORMAT_V1 {
            (0, Vec::new())
        } else {
            decode_release(&mut d)?
        };
        if d.remaining() != 0 {
            return Err(ManifestError::TrailingBytes {
                what: "manifest body",
                count: d.remaining(),
            });
        }
        Ok(Manifest {
            format_version,
            name,
            version,
            lineage,
            publisher,
            created,
            expires,
            priority,
            dependencies,
            audience,
            content_len,
            piece_size,
            piece_hashes,
            content_hash,
            metadata,
            release,
            stages,
        })
    }

    /// Validates and signs the manifest with `key`, which must match [`Manifest::publisher`].
    pub fn sign(self, key: &SigningKey) -> Result<VerifiedManifest, ManifestError> {
        self.validate()?;
        if key.verifying_key().to_bytes() != self.publisher {
            return Err(ManifestError::WrongSigningKey);
        }
        let body = self.encode_body();
        let signature = key.sign(&signing_message(&body));
        let bytes = encode_envelope(&body, &signature.to_bytes());
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                len: bytes.len(),
                max: MAX_MANIFEST_BYTES,
            });
        }
        Ok(VerifiedManifest::new(self, bytes))
    }
}

fn priority_code(p: Priority) -> u64 {
    match p {
        Priority::Critical => 0,
        Priority::High => 1,
        Priority::Normal => 2,
        Priority::Bulk => 3,
    }
}

/// No bound of the reader's own on a length: every length is bounded by the input (at most
/// [`MAX_MANIFEST_BYTES`]), and list lengths are checked by [`bounded_len`] with a precise error.
const ANY: usize = usize::MAX;

fn bounded_len(n: usize, what: &'static str) -> Result<usize, ManifestError> {
    if n > MAX_LIST_ENTRIES {
        return Err(ManifestError::Invalid(format!(
            "{what} has {n} entries, at most {MAX_LIST_ENTRIES} allowed"
        )));
    }
    Ok(n)
}

fn decode_ids(d: &mut Reader<'_>, what: &'static str) -> Result<Vec<BundleId>, ManifestError> {
    let n = bounded_len(d.array(what, ANY)?, what)?;
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(BundleId(d.fixed::<32>(what)?));
    }
    Ok(ids)
}

/// The envelope's body and signature, its heads checked for canonical form.
fn read_envelope(bytes: &[u8]) -> Result<(&[u8], [u8; 64]), ManifestError> {
    let read = || {
        let mut d = Reader::new(bytes);
        d.array_exact("signed manifest envelope", 2)?;
        let body = d.bytes("manifest body", ANY)?;
        let signature = d.fixed::<64>("signature")?;
        if d.remaining() != 0 {
            return Err(ManifestError::TrailingBytes {
                what: "signed manifest",
                count: d.remaining(),
            });
        }
        Ok((body, signature))
    };
    read().map_err(spelled_twice("envelope"))
}

/// A non-canonical head (the reader's error) is a second spelling of a manifest: reported as
/// [`ManifestError::NonCanonical`], like what the re-encoding catches.
fn spelled_twice(part: &'static str) -> impl Fn(ManifestError) -> ManifestError {
    move |e| match e {
        ManifestError::Malformed(CborError::NonCanonical { .. }) => {
            ManifestError::NonCanonical(part)
        }
        e => e,
    }
}

/// Fields 15 and 16 of a format 2 body: the release number and the stages.
fn decode_release(d: &mut Reader<'_>) -> Result<(u64, Vec<Stage>), ManifestError> {
    let release = d.uint("release number", u64::MAX)?;
    let n = d.array("stages", ANY)?;
    if n > MAX_STAGES {
        return Err(ManifestError::Invalid(format!(
            "{n} stages, at most {MAX_STAGES} allowed"
        )));
    }
    let mut stages = Vec::with_capacity(n);
    for _ in 0..n {
        d.array_exact("stage", 2)?;
        let share = d.uint("stage share", u64::MAX)?;
        let share_bp = u32::try_from(share)
            .map_err(|_| ManifestError::Invalid(format!("stage share {share} is too large")))?;
        stages.push(Stage {
            share_bp,
            delay_secs: d.uint("stage delay", u64::MAX)?,
        });
    }
    Ok((release, stages))
}

fn signing_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_DOMAIN.len() + body.len());
    m.extend_from_slice(SIGNING_DOMAIN);
    m.extend_from_slice(body);
    m
}

fn encode_envelope(body: &[u8], signature: &[u8; 64]) -> Vec<u8> {
    let mut e = Vec::new();
    cbor::array(&mut e, 2);
    cbor::bytes(&mut e, body);
    cbor::bytes(&mut e, signature);
    e
}

/// A manifest whose encoding, fields and signature have been checked.
///
/// Only [`VerifiedManifest::decode`] and [`Manifest::sign`] construct one. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedManifest(Arc<Inner>);

#[derive(Debug, PartialEq, Eq)]
struct Inner {
    id: BundleId,
    manifest: Manifest,
    bytes: Vec<u8>,
}

impl VerifiedManifest {
    fn new(manifest: Manifest, bytes: Vec<u8>) -> Self {
        let id = BundleId(*blake3::hash(&bytes).as_bytes());
        VerifiedManifest(Arc::new(Inner {
            id,
            manifest,
            bytes,
        }))
    }

    /// Parses and verifies a signed manifest (the envelope bytes).
    ///
    /// Checks, in order: size, envelope structure, trailing bytes, format version, body
    /// structure, canonical encoding, field rules, publisher key and signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                len: bytes.len(),
                max: MAX_MANIFEST_BYTES,
            });
        }
        let (body, signature) = read_envelope(bytes)?;
        let manifest = Manifest::decode_body(body)?;
        if manifest.encode_body() != body {
            return Err(ManifestError::NonCanonical("body"));
        }
        if encode_envelope(body, &signature) != bytes {
            return Err(ManifestError::NonCanonical("envelope"));
        }
        manifest.validate()?;
        let key = VerifyingKey::from_bytes(&manifest.publisher)
            .map_err(|_| ManifestError::BadPublisherKey)?;
        key.verify_strict(&signing_message(body), &Signature::from_bytes(&signature))
            .map_err(|_| ManifestError::BadSignature)?;
        Ok(VerifiedManifest::new(manifest, bytes.to_vec()))
    }

    /// Re-reads a manifest this node verified before storing it: every check of
    /// [`VerifiedManifest::decode`] except the signature, and the id is taken as given. Only
    /// for bytes read back from our own store (which only verified manifests enter); a full
    /// re-verification is [`crate::store::Store::verify_all`]'s job.
    pub(crate) fn decode_stored(bytes: &[u8], id: BundleId) -> Result<Self, ManifestError> {
        let (body, _signature) = read_envelope(bytes)?;
        let manifest = Manifest::decode_body(body)?;
        manifest.validate()?;
        Ok(VerifiedManifest(Arc::new(Inner {
            id,
            manifest,
            bytes: bytes.to_vec(),
        })))
    }

    /// The bundle id: BLAKE3 of the signed bytes.
    pub fn id(&self) -> BundleId {
        self.0.id
    }

    /// The verified content.
    pub fn manifest(&self) -> &Manifest {
        &self.0.manifest
    }

    /// The signed bytes (what [`VerifiedManifest::decode`] accepts and peers exchange).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0.bytes
    }

    /// A copy of the signed bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.bytes.clone()
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> u32 {
        self.0.manifest.piece_count()
    }

    /// Length of piece `index`, or `None` if there is no such piece.
    pub fn piece_len(&self, index: PieceIndex) -> Option<u32> {
        self.0.manifest.piece_len(index)
    }
}

/// Checks that `data` is piece `index` of the bundle: right length (every piece but the last is
/// exactly the piece size) and right BLAKE3 hash.
pub fn verify_piece(
    manifest: &VerifiedManifest,
    index: PieceIndex,
    data: &[u8],
) -> Result<(), PieceError> {
    let m = manifest.manifest();
    let Some(expected) = m.piece_len(index) else {
        return Err(PieceError::NoSuchPiece {
            index,
            count: m.piece_count(),
        });
    };
    if data.len() != expected as usize {
        return Err(PieceError::WrongLength {
            index,
            expected,
            got: data.len(),
        });
    }
    if blake3::hash(data).as_bytes() != &m.piece_hashes[index as usize] {
        return Err(PieceError::HashMismatch { index });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    /// A manifest for `content` with default fields, unsigned.
    pub(crate) fn manifest_for(content: &[u8], piece_size: u32, key: &SigningKey) -> Manifest {
        let piece_hashes = content
            .chunks(piece_size as usize)
            .map(|c| *blake3::hash(c).as_bytes())
            .collect();
        Manifest {
            format_version: FORMAT_VERSION,
            name: "tool".into(),
            version: "1.0".into(),
            lineage: vec![],
            publisher: key.verifying_key().to_bytes(),
            created: 1_700_000_000,
            expires: Some(1_800_000_000),
            priority: Priority::Normal,
            dependencies: vec![],
            audience: vec!["updates".into()],
            content_len: content.len() as u64,
            piece_size,
            piece_hashes,
            content_hash: *blake3::hash(content).as_bytes(),
            metadata: BTreeMap::from([("run".into(), "install.sh".into())]),
            release: 1,
            stages: vec![],
        }
    }

    fn arb_manifest() -> impl Strategy<Value = Manifest> {
        let ids = proptest::collection::vec(any::<[u8; 32]>().prop_map(BundleId), 0..4);
        let label = "[a-zA-Z0-9 ._-]{1,40}";
        (
            (label, label, ids.clone(), ids),
            (any::<u32>(), proptest::option::of(1u64..1 << 40)),
            (0usize..4, proptest::collection::vec(label, 0..4)),
            (0u64..300_000, MIN_PIECE_SIZE..=3 * MIN_PIECE_SIZE),
            proptest::collection::btree_map(label, "\\PC{0,50}", 0..5),
            (
                any::<bool>(),
                1u64..u64::MAX,
                proptest::collection::vec((1u32..=100, 0u64..1000), 0..4),
            ),
        )
            .prop_map(
                |(
                    (name, version, lineage, mut deps),
                    (created, exp),
                    (p, audience),
                    (len, ps),
                    metadata,
                    (v1, release, raw_stages),
                )| {
                    // Stages as a publisher builds them: shares growing, delays not shrinking.
                    let mut stages: Vec<Stage> = Vec::new();
                    let (mut share, mut delay) = (0u32, 0u64);
                    for (s, d) in raw_stages {
                        share = (share + s * 100).min(ALL_BP);
                        delay += d;
                        if stages.last().is_none_or(|l| l.share_bp < share) {
                            stages.push(Stage {
                                share_bp: share,
                                delay_secs: delay,
                            });
                        }
                    }
                    deps.sort();
                    deps.dedup();
                    let mut lineage = lineage;
                    lineage.sort();
                    lineage.dedup();
                    let created = u64::from(created);
                    let n = piece_count(len, ps);
                    Manifest {
                        format_version: if v1 { FORMAT_V1 } else { FORMAT_VERSION },
                        name,
                        version,
                        lineage,
                        publisher: key(7).verifying_key().to_bytes(),
                        created,
                        expires: exp.map(|e| created + e),
                        priority: Priority::ALL[p],
                        dependencies: deps,
                        audience,
                        content_len: len,
                        piece_size: ps,
                        piece_hashes: (0..n)
                            .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
                            .collect(),
                        content_hash: [9; 32],
                        metadata,
                        release: if v1 { 0 } else { release },
                        stages: if v1 { vec![] } else { stages },
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn round_trip_and_unique_encoding(m in arb_manifest()) {
            let v = m.clone().sign(&key(7)).unwrap();
            let back = VerifiedManifest::decode(v.as_bytes()).unwrap();
            prop_assert_eq!(back.manifest(), &m);
            prop_assert_eq!(back.id(), v.id());
            // Decoding then re-encoding gives the identical bytes.
            prop_assert_eq!(back.manifest().encode_body(), m.encode_body());
            prop_assert_eq!(back.as_bytes(), v.as_bytes());
        }

        #[test]
        fn any_single_bit_flip_of_a_piece_is_rejected(
            len in 1usize..3 * MIN_PIECE_SIZE as usize,
            fill in any::<u8>(),
            pick in any::<usize>(),
        ) {
            let content: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_add(fill)).collect();
            let v = manifest_for(&content, MIN_PIECE_SIZE, &key(7)).sign(&key(7)).unwrap();
            let bit = pick % (len * 8);
            let index = (bit / 8 / MIN_PIECE_SIZE as usize) as u32;
            let start = index as usize * MIN_PIECE_SIZE as usize;
            let mut piece = content[start..(start + MIN_PIECE_SIZE as usize).min(len)].to_vec();
            prop_assert!(verify_piece(&v, index, &piece).is_ok());
            piece[bit / 8 - start] ^= 1 << (bit % 8);
            prop_assert_eq!(
                verify_piece(&v, index, &piece),
                Err(PieceError::HashMismatch { index })
            );
        }

        #[test]
        fn any_single_bit_flip_is_rejected(m in arb_manifest(), pick in any::<usize>()) {
            let v = m.sign(&key(7)).unwrap();
            let mut bytes = v.to_bytes();
            let bit = pick % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(VerifiedManifest::decode(&bytes).is_err(), "bit {} accepted", bit);
        }
    }

    #[test]
    fn every_bit_flip_of_one_manifest_is_rejected() {
        let content = vec![5u8; 10_000];
        let v = manifest_for(&content, MIN_PIECE_SIZE, &key(1))
            .sign(&key(1))
            .unwrap();
        let bytes = v.to_bytes();
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(VerifiedManifest::decode(&b).is_err(), "bit {bit} accepted");
        }
    }

    #[test]
    fn piece_checks() {
        let content: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let v = manifest_for(&content, MIN_PIECE_SIZE, &key(1))
            .sign(&key(1))
            .unwrap();
        assert_eq!(v.piece_count(), 3);
        assert_eq!(v.piece_len(2), Some(10_000 - 2 * 4096));
        for (i, chunk) in content.chunks(4096).enumerate() {
            verify_piece(&v, i as u32, chunk).unwrap();
            let mut bad = chunk.to_vec();
            for bit in [0, 7, bad.len() * 8 - 1] {
                bad[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(
                    verify_piece(&v, i as u32, &bad),
                    Err(PieceError::HashMismatch { index: i as u32 })
                );
                bad[bit / 8] ^= 1 << (bit % 8);
            }
        }
        // The short last piece must be exactly its length, in both directions.
        let last = &content[8192..];
        assert_eq!(
            verify_piece(&v, 2, &content[8192..9999]),
            Err(PieceError::WrongLength {
                index: 2,
                expected: last.len() as u32,
                got: 1807
            })
        );
        let mut long = last.to_vec();
        long.push(0);
        assert!(matches!(
            verify_piece(&v, 2, &long),
            Err(PieceError::WrongLength { .. })
        ));
        assert!(matches!(
            verify_piece(&v, 0, &content[..4095]),
            Err(PieceError::WrongLength { .. })
        ));
        assert_eq!(
            verify_piece(&v, 3, &[]),
            Err(PieceError::NoSuchPiece { index: 3, count: 3 })
        );
    }

    /// Re-signs a hand-made body so that only the encoding rule under test is violated.
    fn envelope_with_body(body: &[u8], k: &SigningKey) -> Vec<u8> {
        let sig = k.sign(&signing_message(body));
        encode_envelope(body, &sig.to_bytes())
    }

    #[test]
    fn non_canonical_variants_are_rejected() {
        let k = key(3);
        let m = manifest_for(b"hello world", MIN_PIECE_SIZE, &k);
        let body = m.encode_body();
        assert!(VerifiedManifest::decode(&envelope_with_body(&body, &k)).is_ok());

        // created (1_700_000_000) as a 64-bit integer instead of 32-bit: same value, longer.
        let created = [0x1a, 0x65, 0x53, 0xf1, 0x00];
        let pos = body
            .windows(5)
            .position(|w| w == created)
            .expect("created is encoded as a 32-bit uint");
        let mut long = body[..pos].to_vec();
        long.extend_from_slice(&[0x1b, 0, 0, 0, 0, 0x65, 0x53, 0xf1, 0x00]);
        long.extend_from_slice(&body[pos + 5..]);
        assert_eq!(
            VerifiedManifest::decode(&envelope_with_body(&long, &k)),
            Err(ManifestError::NonCanonical("body"))
        );

        // Body array header as indefinite length.
        let mut indef = vec![0x9f];
        indef.extend_from_slice(&body[1..]);
        indef.push(0xff);
        assert!(matches!(
            VerifiedManifest::decode(&envelope_with_body(&indef, &k)),
            Err(ManifestError::NonCanonical("body"))
        ));

        // Unsorted metadata keys.
        let mut m2 = m.clone();
        m2.metadata = BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]);
        let b2 = m2.encode_body();
        let sorted = [0x61, b'a', 0x61, b'1', 0x61, b'b', 0x61, b'2'];
        let pos = b2.windows(8).position(|w| w == sorted).unwrap();
        let mut swapped = b2[..pos].to_vec();
        swapped.extend_from_slice(&[0x61, b'b', 0x61, b'2', 0x61, b'a', 0x61, b'1']);
        swapped.extend_from_slice(&b2[pos + 8..]);
        assert_eq!(
            VerifiedManifest::decode(&envelope_with_body(&swapped, &k)),
            Err(ManifestError::NonCanonical("body"))
        );

        // Envelope with a non-shortest length for the signature.
        let good = envelope_with_body(&body, &k);
        let sig_at = good.len() - 64 - 2;
        assert_eq!(&good[sig_at..sig_at + 2], &[0x58, 0x40]);
        let mut env = good[..sig_at].to_vec();
        env.extend_from_slice(&[0x59, 0x00, 0x40]);
        env.extend_from_slice(&good[sig_at + 2..]);
        assert_eq!(
            VerifiedManifest::decode(&env),
            Err(ManifestError::NonCanonical("envelope"))
        );
    }

    #[test]
    fn bad_inputs_give_precise_errors() {
        let k = key(4);
        let v = manifest_for(&[1u8; 9000], MIN_PIECE_SIZE, &k)
            .sign(&k)
            .unwrap();
        let bytes = v.to_bytes();
        for cut in 0..bytes.len() {
            let e = VerifiedManifest::decode(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(e, ManifestError::Malformed(CborError::Truncated)),
                "cut at {cut}: {e}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            VerifiedManifest::decode(&trailing),
            Err(ManifestError::TrailingBytes {
                what: "signed manifest",
                count: 1
            })
        );
        let huge = vec![0u8; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            VerifiedManifest::decode(&huge),
            Err(ManifestError::TooLarge { .. })
        ));
        assert!(matches!(
            VerifiedManifest::decode(b"garbage!"),
            Err(ManifestError::Malformed(_))
        ));

        let mut m = manifest_for(b"x", MIN_PIECE_SIZE, &k);
        m.format_version = 3;
        let body = m.encode_body();
        let e = VerifiedManifest::decode(&envelope_with_body(&body, &k)).unwrap_err();
        assert_eq!(e, ManifestError::UnknownVersion { found: 3 });
        assert!(e.to_string().contains("unknown manifest format version 3"));
        assert_eq!(
            m.sign(&k).unwrap_err(),
            ManifestError::UnknownVersion { found: 3 }
        );

        // Wrong number of piece hashes, signed correctly: a field rule, not a signature error.
        let mut m = manifest_for(&[0u8; 5000], MIN_PIECE_SIZE, &k);
        m.piece_hashes.pop();
        let e = VerifiedManifest::decode(&envelope_with_body(&m.encode_body(), &k)).unwrap_err();
        assert!(matches!(e, ManifestError::Invalid(_)), "{e}");

        // Signed by someone else.
        let m = manifest_for(b"abc", MIN_PIECE_SIZE, &k);
        assert_eq!(
            m.clone().sign(&key(5)).unwrap_err(),
            ManifestError::WrongSigningKey
        );
        assert_eq!(
            VerifiedManifest::decode(&envelope_with_body(&m.encode_body(), &key(5))),
            Err(ManifestError::BadSignature)
        );
    }

    #[test]
    fn release_and_stages_round_trip_and_format_1_still_reads() {
        let k = key(6);
        let mut m = manifest_for(&[7u8; 9000], MIN_PIECE_SIZE, &k);
        m.release = 42;
        m.stages = ["5%@0", "50%@2d", "100%@4d"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let v = m.clone().sign(&k).unwrap();
        let back = VerifiedManifest::decode(v.as_bytes()).unwrap();
        assert_eq!(back.manifest().release, 42);
        assert_eq!(
            back.manifest().stages,
            vec![
                Stage {
                    share_bp: 500,
                    delay_secs: 0
                },
                Stage {
                    share_bp: 5000,
                    delay_secs: 2 * 86_400
                },
                Stage {
                    share_bp: ALL_BP,
                    delay_secs: 4 * 86_400
                },
            ]
        );
        assert_eq!(
            back.manifest().release_lineage(),
            Lineage {
                publisher: k.verifying_key().to_bytes(),
                name: "tool".into()
            }
        );
        let l = back.manifest().release_lineage();
        assert_eq!(Lineage::from_key(&l.key()), Some(l));

        // A format 1 manifest (as an older build signed it): 15 fields, read as unnumbered,
        // and re-encoded to the same bytes, so its bundle id is unchanged.
        let mut old = manifest_for(&[7u8; 9000], MIN_PIECE_SIZE, &k);
        old.format_version = FORMAT_V1;
        old.release = 0;
        let body = old.encode_body();
        assert_eq!(body[0], 0x80 | 15, "format 1 bodies are 15-element arrays");
        let bytes = envelope_with_body(&body, &k);
        let back = VerifiedManifest::decode(&bytes).unwrap();
        assert!(!back.manifest().is_numbered());
        assert!(back.manifest().stages.is_empty());
        assert_eq!(back.as_bytes(), &bytes[..]);
        assert_eq!(back.id(), BundleId(*blake3::hash(&bytes).as_bytes()));

        // Release rules.
        let mut bad = m.clone();
        bad.release = 0;
        assert!(matches!(bad.sign(&k), Err(ManifestError::Invalid(_))));
        let mut bad = m.clone();
        bad.stages.swap(0, 1);
        assert!(matches!(bad.sign(&k), Err(ManifestError::Invalid(_))));
        let mut bad = old.clone();
        bad.release = 3;
        assert!(matches!(bad.sign(&k), Err(ManifestError::Invalid(_))));
    }

    #[test]
    fn stage_syntax() {
        let s = |t: &str| t.parse::<Stage>();
        assert_eq!(
            s("5%@0"),
            Ok(Stage {
                share_bp: 500,
                delay_secs: 0
            })
        );
        assert_eq!(
            s("0.5%@90s"),
            Ok(Stage {
                share_bp: 50,
                delay_secs: 90
            })
        );
        assert_eq!(
            s("100%@60"),
            Ok(Stage {
                share_bp: ALL_BP,
                delay_secs: 60
            })
        );
        assert_eq!(
            s("50%@3h"),
            Ok(Stage {
                share_bp: 5000,
                delay_secs: 3 * 3600
            })
        );
        for bad in ["50", "50@1d", "0%@0", "101%@0", "50%@1w", "50%@", "x%@1d"] {
            assert!(s(bad).is_err(), "{bad} accepted");
        }
    }
}
