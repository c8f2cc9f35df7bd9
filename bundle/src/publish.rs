//! Making a bundle: cut content into pieces, hash them and sign the manifest.
//!
//! Content is read once, streaming, one piece at a time: memory stays at one piece plus the
//! hash list, whatever the content size.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;

use ed25519_dalek::SigningKey;

use crate::id::{BundleId, Priority};
use crate::manifest::{
    DEFAULT_PIECE_SIZE, FORMAT_VERSION, Manifest, ManifestError, VerifiedManifest,
};

/// Everything about a new bundle except its content and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishOptions {
    /// Bundle name.
    pub name: String,
    /// Version label.
    pub version: String,
    /// Priority class.
    pub priority: Priority,
    /// Bundles that must be installed first.
    pub depends: Vec<BundleId>,
    /// Channels or node ids (hex) that want it.
    pub audience: Vec<String>,
    /// Expiry, unix seconds; `None` never expires.
    pub expires: Option<u64>,
    /// Piece size in bytes.
    pub piece_size: u32,
    /// Bundles this one replaces.
    pub lineage: Vec<BundleId>,
    /// Free-form metadata.
    pub metadata: BTreeMap<String, String>,
    /// Creation time, unix seconds (an input: the library never reads the clock).
    pub now: u64,
    /// Release number within the lineage (publisher key, name); at least 1.
    pub release: u64,
    /// Install phases; empty: every node installs at once.
    pub stages: Vec<crate::manifest::Stage>,
}

impl PublishOptions {
    /// Options with the defaults: normal priority, default piece size, no expiry, nothing else.
    pub fn new(name: impl Into<String>, version: impl Into<String>, now: u64) -> Self {
        PublishOptions {
            name: name.into(),
            version: version.into(),
            priority: Priority::Normal,
            depends: Vec::new(),
            audience: Vec::new(),
            expires: None,
            piece_size: DEFAULT_PIECE_SIZE,
            lineage: Vec::new(),
            metadata: BTreeMap::new(),
            now,
            release: 1,
            stages: Vec::new(),
        }
    }
}

/// Why a bundle could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Reading the content failed.
    #[error("reading content: {0}")]
    Io(#[from] io::Error),
    /// The options or content break a manifest rule (piece size, limits, too many pieces...).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Storing the manifest failed ([`publish_to_store`] only).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Storing the content failed, e.g. the file changed while publishing or the store is
    /// full ([`publish_to_store`] only).
    #[error("storing content: {0}")]
    Put(#[from] crate::store::PutError),
}

/// Reads content one piece at a time into a reused buffer.
pub struct PieceReader<R> {
    reader: R,
    buf: Vec<u8>,
    piece_size: usize,
    done: bool,
}

impl<R: Read> PieceReader<R> {
    /// Cuts `reader` into pieces of `piece_size` bytes (the last may be shorter).
    pub fn new(reader: R, piece_size: u32) -> Self {
        PieceReader {
            reader,
            buf: Vec::with_capacity(piece_size as usize),
            piece_size: piece_size as usize,
            done: false,
        }
    }

    /// The next piece, or `None` at the end of the content.
    pub fn next_piece(&mut self) -> io::Result<Option<&[u8]>> {
        if self.done {
            return Ok(None);
        }
        self.buf.clear();
        let want = self.piece_size as u64;
        (&mut self.reader).take(want).read_to_end(&mut self.buf)?;
        if self.buf.len() < self.piece_size {
            self.done = true;
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        Ok(Some(&self.buf))
    }
}

/// Makes and signs the manifest for `content`, hashing it piece by piece.
///
/// The publisher key is `key`'s public key. The pieces themselves are not kept: store them
/// with [`crate::store::Store::put_content`] after inserting the manifest.
pub fn publish<R: Read>(
    content: R,
    opts: &PublishOptions,
    key: &SigningKey,
) -> Result<VerifiedManifest, PublishError> {
    // Check the piece size before reading anything: a zero size would never end.
    let mut probe = Manifest {
        format_version: FORMAT_VERSION,
        name: opts.name.clone(),
        version: opts.version.clone(),
        lineage: opts.lineage.clone(),
        publisher: key.verifying_key().to_bytes(),
        created: opts.now,
        expires: opts.expires,
        priority: opts.priority,
        dependencies: opts.depends.clone(),
        audience: opts.audience.clone(),
        content_len: 0,
        piece_size: opts.piece_size,
        piece_hashes: Vec::new(),
        content_hash: *blake3::hash(b"").as_bytes(),
        metadata: opts.metadata.clone(),
        release: opts.release,
        stages: opts.stages.clone(),
    };
    probe.validate()?;
    let max_pieces = crate::manifest::MAX_MANIFEST_BYTES / 32;
    let mut whole = blake3::Hasher::new();
    let mut pieces = PieceReader::new(content, opts.piece_size);
    while let Some(piece) = pieces.next_piece()? {
        if probe.piece_hashes.len() >= max_pieces {
            return Err(ManifestError::Invalid(format!(
                "content needs more than {max_pieces} pieces of {} bytes; use a larger piece size",
                opts.piece_size
            ))
            .into());
        }
        whole.update(piece);
        probe.piece_hashes.push(*blake3::hash(piece).as_bytes());
        probe.content_len += piece.len() as u64;
    }
    probe.content_hash = *whole.finalize().as_bytes();
    Ok(probe.sign(key)?)
}

/// [`publish`] for a file.
pub fn publish_file(
    path: &Path,
    opts: &PublishOptions,
    key: &SigningKey,
) -> Result<VerifiedManifest, PublishError> {
    let file = std::fs::File::open(path)?;
    publish(io::BufReader::with_capacity(1 << 16, file), opts, key)
}

/// Publishes a file into a store: [`publish_file`], then the manifest is stored as
/// [`crate::store::Origin::Published`] and the content is stored piece by piece (the file is
/// read twice, streaming; if it changed in between, the pieces fail to verify and this errs).
pub fn publish_to_store(
    store: &mut crate::store::Store,
    path: &Path,
    opts: &PublishOptions,
    key: &SigningKey,
) -> Result<VerifiedManifest, PublishError> {
    let vm = publish_file(path, opts, key)?;
    store.insert_manifest(&vm, crate::store::Origin::Published)?;
    let file = std::fs::File::open(path)?;
    store.put_content(&vm.id(), io::BufReader::with_capacity(1 << 16, file))?;
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{MIN_PIECE_SIZE, verify_piece};

    #[test]
    fn publish_hashes_every_piece() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let content: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let mut opts = PublishOptions::new("pkg", "2.0", 1000);
        opts.piece_size = MIN_PIECE_SIZE;
        opts.expires = Some(2000);
        let v = publish(&content[..], &opts, &key).unwrap();
        let m = v.manifest();
        assert_eq!(m.content_len, 100_000);
        assert_eq!(m.piece_count(), 25);
        assert_eq!(m.content_hash, *blake3::hash(&content).as_bytes());
        for (i, c) in content.chunks(MIN_PIECE_SIZE as usize).enumerate() {
            verify_piece(&v, i as u32, c).unwrap();
        }
        assert_eq!(VerifiedManifest::decode(v.as_bytes()).unwrap(), v);

        let empty = publish(&[][..], &opts, &key).unwrap();
        assert_eq!(empty.piece_count(), 0);

        opts.piece_size = 0;
        assert!(matches!(
            publish(&content[..], &opts, &key),
            Err(PublishError::Manifest(ManifestError::Invalid(_)))
        ));
        opts.piece_size = MIN_PIECE_SIZE;
        opts.expires = Some(10);
        assert!(publish(&content[..], &opts, &key).is_err());
    }

    #[test]
    fn publish_to_store_stores_everything() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pkg.tar");
        let content: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&file, &content).unwrap();
        let mut store =
            crate::store::Store::open(&dir.path().join("data"), Default::default()).unwrap();
        let key = SigningKey::from_bytes(&[2; 32]);
        let vm =
            publish_to_store(&mut store, &file, &PublishOptions::new("p", "1", 5), &key).unwrap();
        let info = store.info(&vm.id()).unwrap().unwrap();
        assert!(info.published && info.trusted);
        assert_eq!(info.state, crate::store::State::Complete);
        let out = dir.path().join("out");
        crate::complete::export_to(&mut store, &vm.id(), &out).unwrap();
        assert_eq!(std::fs::read(out).unwrap(), content);
    }

    #[test]
    fn exact_multiple_of_piece_size() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let content = vec![3u8; 3 * MIN_PIECE_SIZE as usize];
        let mut opts = PublishOptions::new("pkg", "2.0", 1000);
        opts.piece_size = MIN_PIECE_SIZE;
        let v = publish(&content[..], &opts, &key).unwrap();
        assert_eq!(v.piece_count(), 3);
        assert_eq!(v.piece_len(2), Some(MIN_PIECE_SIZE));
    }
}
