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
//! # Wire format (format version 1)
//! The signed envelope is a CBOR array of two byte strings:
//! `[body: bstr, signature: bstr(64)]`. The body is itself the CBOR encoding of a 15-element
//! array, in this fixed order:
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

/// The only manifest format version this build understands.
pub const FORMAT_VERSION: u64 = 1;
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

const BODY_FIELDS: usize = 15;

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

    /// Whether the manifest has expired at `now` (unix seconds).
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }

    /// Checks every field rule of the format (everything but the signature).
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |s: String| Err(ManifestError::Invalid(s));
        if self.format_version != FORMAT_VERSION {
            return Err(ManifestError::UnknownVersion {
                found: self.format_version,
            });
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

    /// The canonical encoding of the body (what is signed).
    pub fn encode_body(&self) -> Vec<u8> {
        let mut e = Vec::new();
        cbor::array(&mut e, BODY_FIELDS);
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
        if format_version != FORMAT_VERSION {
            return Err(ManifestError::UnknownVersion {
                found: format_version,
            });
        }
        if fields != BODY_FIELDS {
            return Err(CborError::ArrayLength {
                what: "manifest body",
                expected: BODY_FIELDS as u64,
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
        )
            .prop_map(
                |(
                    (name, version, lineage, mut deps),
                    (created, exp),
                    (p, audience),
                    (len, ps),
                    metadata,
                )| {
                    deps.sort();
                    deps.dedup();
                    let mut lineage = lineage;
                    lineage.sort();
                    lineage.dedup();
                    let created = u64::from(created);
                    let n = piece_count(len, ps);
                    Manifest {
                        format_version: FORMAT_VERSION,
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
        m.format_version = 2;
        let body = m.encode_body();
        let e = VerifiedManifest::decode(&envelope_with_body(&body, &k)).unwrap_err();
        assert_eq!(e, ManifestError::UnknownVersion { found: 2 });
        assert!(e.to_string().contains("unknown manifest format version 2"));
        assert_eq!(
            m.sign(&k).unwrap_err(),
            ManifestError::UnknownVersion { found: 2 }
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
}
