//! The piece store: manifests, piece bitfields and bookkeeping in one redb file, piece data in
//! one flat file per bundle beside it.
//!
//! # Goals
//! - **Nothing unverified is stored.** A piece is hashed against its manifest before anything
//!   is written; a bad piece is rejected with a typed error and never touches a file.
//! - **Crash safety.** The bitfield is the only claim that a piece is present. A batch writes
//!   its pieces into the bundles' data files at `index × piece_size` and `fdatasync`s them
//!   first; only then does one redb write transaction (committed with
//!   `Durability::Immediate`) set the bits and update the bookkeeping. A crash at any instant
//!   leaves the last committed transaction: every piece the bitfield reports was durable before
//!   its bit was, and bytes of an uncommitted batch sit in the files unclaimed (the piece is
//!   fetched and written again). Claimed ranges are never rewritten. Quick-repair is on, so
//!   reopening after a crash takes milliseconds, not a full file walk.
//! - **No write amplification.** Piece data written once, where it belongs. (Earlier versions
//!   kept 64 KiB pieces as redb values; copy-on-write of those leaves wrote each piece about
//!   three times and read it once more, which capped durable ingest near 300 MB/s.)
//! - **Bounded.** A byte quota over all piece data, a smaller carry quota for bundles from
//!   untrusted publishers, a cap on the number of bundles, a bounded manifest cache.
//! - **Batched commits.** [`Store::put_pieces`] verifies a batch, then commits once: an fsync per
//!   batch instead of per piece.
//!
//! # Non-goals
//! Concurrency. A `Store` is `Send`, owned by one thread (the daemon wraps it in an actor);
//! redb itself refuses a second process opening the same file ([`StoreError::Locked`]).
//!
//! # Tables (format version [`STORE_FORMAT`])
//! | table | key | value |
//! |---|---|---|
//! | `mule_meta` | `&str` | `u64`; `"format"` = store format version |
//! | `manifests_v1` | bundle id | signed manifest bytes |
//! | `bitfields_v1` | bundle id | [`Bitfield`] bytes |
//! | `bundles_v1` | bundle id | bookkeeping record (CBOR array, see `Record`) |
//! | `lineages_v1` | publisher key ‖ name | release bookkeeping (CBOR array, see `LineageRecord`) |
//! | `releases_v1` | BLAKE3(publisher key ‖ name) ‖ release (u64 big-endian) | id of the first bundle seen with that release |
//!
//! Piece data: `<db file stem>.pieces/<bundle id hex>`, sparse, piece `i` at
//! `i × piece_size`. Removing a bundle deletes its file after the commit; files of bundles
//! without a record (left by a crash in between) are deleted at open.
//!
//! Table names carry the format version. A format 2 store (before release numbers) is
//! migrated at [`Store::open`]: the two release tables are created (empty: format 1
//! manifests carry no release number) and the format becomes 3, in one transaction. Bundle
//! records of format 2 (11 fields) are read as they are and written back with the 12th field
//! (`superseded`) when next changed. Any other version is refused with
//! [`StoreError::UnsupportedFormat`].
//!
//! # Releases
//! A numbered manifest (format 2) belongs to the lineage (publisher, name). The store keeps,
//! per lineage and in the same transactions as the bundle records, the highest release known
//! and the highest installed (crash-safe rollback protection), and per (lineage, release) the
//! first bundle id seen. A second, different bundle with a known (lineage, release) is
//! refused when this node publishes it, and is *equivocation* when received: it is stored,
//! the release is flagged and neither bundle is wanted or installed. A release older than the
//! newest known is *superseded*: not wanted, evicted before anything else, never installed;
//! one at or below the installed release is also counted as a refused rollback.
//!
//! # Eviction
//! When a piece would exceed the quota, whole bundles are evicted in one transaction with the
//! put, in this order: expired bundles first, then bundles from untrusted publishers, then the
//! least urgent priority, then the oldest received. Never evicted: a bundle this node
//! published, a bundle it still wants (unless expired), a bundle in the batch being stored, or
//! a bundle more urgent than the incoming piece's. If that frees too little, the put fails with
//! [`PutError::Full`] and nothing is evicted.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mule_proto::cbor::{self, CborError, Reader};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};

use crate::bitfield::Bitfield;
use crate::id::{BundleId, PieceIndex, Priority};
use crate::manifest::{Lineage, PieceError, VerifiedManifest, verify_piece};
use crate::publish::PieceReader;
use crate::trust::TrustList;

/// Store format version written into `mule_meta`.
pub const STORE_FORMAT: u64 = 3;
/// The previous store format, migrated at open (see the module docs).
const STORE_FORMAT_V2: u64 = 2;
/// Most equivocating releases remembered per lineage.
const MAX_EQUIVOCAL: usize = 16;
/// File name of the database inside the data directory.
pub const STORE_FILE_NAME: &str = "store.redb";
/// Batch size [`Store::put_content`] commits at, and the batch size we recommend to callers of
/// [`Store::put_pieces`] (commit at this many bytes or after ~100 ms, whichever comes first):
/// durable ingest is bound by fsyncs per second, see DESIGN.md.
pub const CONTENT_BATCH_BYTES: usize = 4 << 20;
const MANIFEST_CACHE_ENTRIES: usize = 256;

const META: TableDefinition<&str, u64> = TableDefinition::new("mule_meta");
const MANIFESTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("manifests_v1");
const BITFIELDS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("bitfields_v1");
const BUNDLES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("bundles_v1");
const LINEAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("lineages_v1");
const RELEASES: TableDefinition<&[u8; 40], &[u8; 32]> = TableDefinition::new("releases_v1");
/// Renames across lineages: replaced bundle id -> the replacing manifest's publisher key.
/// Written for trusted manifests only; a replaced bundle arriving later is superseded at
/// once if its publisher is that key. Entries outlive the replacing bundle (a rename is
/// never undone), at most 64 per stored manifest.
const REPLACED: TableDefinition<&[u8; 32], &[u8; 32]> = TableDefinition::new("replaced_v1");

/// Reads the current time in unix seconds. The store needs it to stamp arrivals and to tell
/// expired bundles; tests pass a fake one.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock as a [`Clock`].
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    })
}

/// How a store is opened.
#[derive(Clone)]
pub struct StoreOptions {
    /// Most bytes of piece data kept, over all bundles.
    pub quota_bytes: u64,
    /// Most bytes of piece data kept for bundles from untrusted publishers (part of
    /// `quota_bytes`). Zero with `carry_untrusted` off.
    pub carry_quota_bytes: u64,
    /// Whether bundles from untrusted publishers are carried for other nodes at all.
    pub carry_untrusted: bool,
    /// Publishers whose bundles may be installed.
    pub trust: TrustList,
    /// Most bundles kept (manifests count even without pieces).
    pub max_bundles: usize,
    /// redb page cache size in bytes.
    pub cache_bytes: usize,
    /// Save allocator state at each commit so a crash needs no full repair on reopen.
    pub quick_repair: bool,
    /// The clock.
    pub clock: Clock,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            quota_bytes: 1 << 30,
            carry_quota_bytes: 64 << 20,
            carry_untrusted: false,
            trust: TrustList::new(),
            max_bundles: 10_000,
            cache_bytes: 32 << 20,
            quick_repair: true,
            clock: system_clock(),
        }
    }
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field("quota_bytes", &self.quota_bytes)
            .field("carry_quota_bytes", &self.carry_quota_bytes)
            .field("carry_untrusted", &self.carry_untrusted)
            .field("trust", &self.trust)
            .field("max_bundles", &self.max_bundles)
            .field("cache_bytes", &self.cache_bytes)
            .field("quick_repair", &self.quick_repair)
            .finish_non_exhaustive()
    }
}

/// How a bundle came to this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// This node published it (never evicted, always trusted).
    Published,
    /// A peer or the operator handed it over; trust comes from the trust list.
    Received,
}

/// Where a bundle is in its life on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Pieces are missing.
    Incomplete,
    /// Every piece is present; not (yet) exported and installed.
    Complete,
    /// Exported and its on-complete command (if any) succeeded.
    Installed,
    /// Export or on-complete command failed; see [`BundleInfo::failure`].
    Failed,
    /// Installed, then its health check failed and the previous release was put back (see
    /// [`BundleInfo::failure`]); not retried unless the operator asks.
    RolledBack,
}

impl State {
    /// Lowercase name for tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Incomplete => "incomplete",
            State::Complete => "complete",
            State::Installed => "installed",
            State::Failed => "failed",
            State::RolledBack => "rolled_back",
        }
    }

    fn code(self) -> u64 {
        match self {
            State::Incomplete => 0,
            State::Complete => 1,
            State::Installed => 2,
            State::Failed => 3,
            State::RolledBack => 4,
        }
    }

    /// The largest [`State::code`].
    const MAX_CODE: u64 = 4;

    fn from_code(c: u64) -> Option<State> {
        Some(match c {
            0 => State::Incomplete,
            1 => State::Complete,
            2 => State::Installed,
            3 => State::Failed,
            4 => State::RolledBack,
            _ => return None,
        })
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last failed attempt to export or install a bundle.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    /// When it failed, unix seconds.
    pub at: u64,
    /// Failed attempts so far (drives the retry backoff).
    pub attempts: u32,
    /// What went wrong (exit status and the end of stderr, or the export error).
    pub message: String,
}

/// What the store knows about one bundle. Serializes (e.g. to JSON for `mule bundles --json`)
/// with ids as hex strings.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BundleInfo {
    /// Bundle id.
    #[serde(serialize_with = "hex_id")]
    pub id: BundleId,
    /// Name from the manifest.
    pub name: String,
    /// Version label from the manifest.
    pub version: String,
    /// Priority class.
    pub priority: Priority,
    /// Pieces in the bundle.
    pub pieces_total: u32,
    /// Pieces stored.
    pub pieces_have: u32,
    /// Life-cycle state.
    pub state: State,
    /// Bytes of piece data stored.
    pub bytes: u64,
    /// Content length.
    pub content_len: u64,
    /// Whether this node wants it installed.
    pub wanted: bool,
    /// Whether this node published it.
    pub published: bool,
    /// Whether its publisher is trusted (or this node published it).
    pub trusted: bool,
    /// When the manifest arrived, unix seconds.
    pub received_at: u64,
    /// Expiry from the manifest.
    pub expires: Option<u64>,
    /// Dependencies from the manifest.
    #[serde(serialize_with = "hex_ids")]
    pub dependencies: Vec<BundleId>,
    /// Where the content was exported, once it was.
    pub export_path: Option<PathBuf>,
    /// The last failure of export or on-complete command, if the last attempt failed.
    pub failure: Option<Failure>,
    /// Release number within its lineage (0: a format 1 manifest, unnumbered).
    pub release: u64,
    /// A newer release of its lineage is known (or it is at or below the installed one).
    pub superseded: bool,
    /// Another bundle carries the same lineage and release: neither is installed.
    pub equivocal: bool,
    /// Why this complete bundle is not installed yet (staged rollout, hold, window), as the
    /// last install round found.
    pub waiting: Option<String>,
}

/// What the store knows about one release lineage (`mule status`, which sends it as is).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LineageInfo {
    /// Publisher key, hex.
    pub publisher: String,
    /// Bundle name.
    pub name: String,
    /// Highest release installed (0: none).
    pub installed: u64,
    /// Highest release known.
    pub newest: u64,
    /// Releases for which two different bundles were seen: the publisher equivocated and
    /// its key is flagged.
    pub equivocal: Vec<u64>,
    /// Older releases refused because a newer one was installed (since the store began).
    pub rollback_refused: u64,
}

/// Something about releases the daemon reports (log, metrics): see [`Store::take_release_events`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReleaseEvent {
    /// Two different bundles with the same lineage and release.
    Equivocation {
        /// The lineage.
        lineage: Lineage,
        /// The release number.
        release: u64,
        /// The bundle seen first and the newcomer.
        bundles: [BundleId; 2],
    },
    /// A release at or below the installed one arrived or was about to be installed.
    RollbackRefused {
        /// The refused bundle.
        bundle: BundleId,
        /// Its release.
        release: u64,
        /// The installed release.
        installed: u64,
    },
    /// A release failed its health check and the previous one was put back.
    RolledBack {
        /// The bundle that failed.
        bundle: BundleId,
        /// Its release.
        release: u64,
    },
}

/// Why a bundle must not be installed, from what the store knows of its lineage.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Block {
    /// Another bundle has the same lineage and release.
    #[error("release {release} is equivocal: the publisher signed two different bundles for it")]
    Equivocal {
        /// The release.
        release: u64,
    },
    /// At or below the installed release.
    #[error("rollback refused: release {release} is not above the installed release {installed}")]
    Rollback {
        /// The release.
        release: u64,
        /// The installed release.
        installed: u64,
    },
    /// A newer release is known.
    #[error("superseded: release {release} is older than the known release {newest}")]
    Superseded {
        /// The release.
        release: u64,
        /// The newest release known.
        newest: u64,
    },
}

/// The release bookkeeping of one lineage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct LineageRecord {
    installed: u64,
    installed_id: Option<BundleId>,
    installed_export: Option<String>,
    newest: u64,
    equivocal: Vec<u64>,
    refused: u64,
}

impl LineageRecord {
    fn encode(&self) -> Vec<u8> {
        let mut e = Vec::new();
        cbor::array(&mut e, 6);
        cbor::uint(&mut e, self.installed);
        match &self.installed_id {
            Some(id) => cbor::bytes(&mut e, &id.0),
            None => cbor::null(&mut e),
        }
        match &self.installed_export {
            Some(p) => cbor::text(&mut e, p),
            None => cbor::null(&mut e),
        }
        cbor::uint(&mut e, self.newest);
        cbor::array(&mut e, self.equivocal.len());
        for r in &self.equivocal {
            cbor::uint(&mut e, *r);
        }
        cbor::uint(&mut e, self.refused);
        e
    }

    fn decode(bytes: &[u8]) -> Result<LineageRecord, CborError> {
        // Lengths are bounded by the record itself, which the store wrote.
        const ANY: usize = usize::MAX;
        let mut d = Reader::new(bytes);
        d.array_exact("lineage record", 6)?;
        let installed = d.uint("installed", u64::MAX)?;
        let installed_id = if d.null()? {
            None
        } else {
            Some(BundleId(d.fixed::<32>("installed_id")?))
        };
        let installed_export = if d.null()? {
            None
        } else {
            Some(d.text("installed_export", ANY)?.to_owned())
        };
        let newest = d.uint("newest", u64::MAX)?;
        let n = d.array("equivocal", MAX_EQUIVOCAL)?;
        let mut equivocal = Vec::with_capacity(n);
        for _ in 0..n {
            equivocal.push(d.uint("equivocal release", u64::MAX)?);
        }
        let refused = d.uint("refused", u64::MAX)?;
        Ok(LineageRecord {
            installed,
            installed_id,
            installed_export,
            newest,
            equivocal,
            refused,
        })
    }

    /// Why release `release` must not be installed, if it must not.
    fn block(&self, release: u64) -> Option<Block> {
        if self.equivocal.contains(&release) {
            Some(Block::Equivocal { release })
        } else if release <= self.installed {
            Some(Block::Rollback {
                release,
                installed: self.installed,
            })
        } else if release < self.newest {
            Some(Block::Superseded {
                release,
                newest: self.newest,
            })
        } else {
            None
        }
    }
}

/// The key of a (lineage, release) in the releases table.
fn release_key(lineage: &Lineage, release: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(blake3::hash(&lineage.key()).as_bytes());
    k[32..].copy_from_slice(&release.to_be_bytes());
    k
}

fn hex_id<S: serde::Serializer>(id: &BundleId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

fn hex_ids<S: serde::Serializer>(ids: &[BundleId], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ids.iter().map(|id| id.to_string()))
}

/// Result of [`Store::insert_manifest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// The bundle is new.
    New,
    /// The store had it already (nothing changed, except `Published` marks it ours).
    AlreadyPresent,
}

/// Result of storing one piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// Stored.
    Stored,
    /// Stored, and it was the last missing piece of its bundle.
    Completed,
    /// The store had it already.
    AlreadyHad,
}

/// Bytes of piece data stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// All piece data.
    pub total: u64,
    /// Piece data of bundles from untrusted publishers.
    pub carry: u64,
    /// Number of bundles.
    pub bundles: usize,
}

/// Not enough room for a piece even after evicting everything the rules allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("store full: {needed} more bytes do not fit in the {which} quota of {quota} ({used} used)")]
pub struct StoreFull {
    /// Bytes the piece needs.
    pub needed: u64,
    /// Bytes in use.
    pub used: u64,
    /// The quota that is exhausted.
    pub quota: u64,
    /// `"total"` or `"carry"`.
    pub which: &'static str,
}

/// Why a store operation failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing a file of the store failed (creating the data directory, a data
    /// file's write or sync, ...). [`StoreError::is_no_space`] tells a full disk.
    #[error("store I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another process (probably the daemon) has the store open.
    #[error("store {0} is in use by another process (is the daemon running?)")]
    Locked(PathBuf),
    /// The store was written by another store format version.
    #[error(
        "store {path} has format version {found}, this build reads only version {supported}; \
         refusing to open it (move it aside to start afresh)"
    )]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// Version found.
        found: u64,
        /// Version this build reads.
        supported: u64,
    },
    /// The file is a redb database but not a Mule store.
    #[error("{0} is not a Mule store (it has tables but no format version)")]
    NotAStore(PathBuf),
    /// redb failed (I/O error, corrupted file, ...).
    #[error("store database error: {0}")]
    Db(#[from] redb::Error),
    /// A record in the store does not decode: the file was altered outside Mule.
    #[error("store record {what} of bundle {id} is corrupt: {detail}")]
    Corrupt {
        /// The bundle.
        id: BundleId,
        /// Which record.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// No such bundle in the store.
    #[error("no bundle {0} in the store")]
    UnknownBundle(BundleId),
    /// The publisher is not trusted and carrying untrusted bundles is off (or it was asked to
    /// be installed).
    #[error("bundle {id} is from untrusted publisher {publisher}")]
    Untrusted {
        /// The bundle.
        id: BundleId,
        /// Publisher key, hex.
        publisher: String,
    },
    /// The received manifest has already expired.
    #[error("bundle {0} has expired")]
    Expired(BundleId),
    /// The store holds its maximum number of bundles.
    #[error("store holds its maximum of {0} bundles")]
    TooManyBundles(usize),
    /// This node publishes a bundle whose lineage and release another bundle has already.
    #[error(
        "release {release} of {lineage} is already bundle {existing}; a second, different \
         bundle with the same release would be equivocation (use the next release number)"
    )]
    Equivocation {
        /// The lineage.
        lineage: Lineage,
        /// The release.
        release: u64,
        /// The bundle that has it.
        existing: BundleId,
    },
    /// The database was closed after an I/O error and reopening it failed; the next call
    /// tries again ([`Store::reopen`]).
    #[error("store database {0} is closed after an I/O error (reopening failed)")]
    Closed(PathBuf),
}

/// `ENOSPC` and `EDQUOT`: the file system (or the user's disk quota) is full.
fn io_is_no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
}

impl StoreError {
    /// Whether the error means the disk (or a disk quota) is full: the store itself is fine,
    /// and the operation can succeed once space returns.
    pub fn is_no_space(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => io_is_no_space(source),
            StoreError::Db(redb::Error::Io(e)) => io_is_no_space(e),
            _ => false,
        }
    }

    /// Whether the database must be closed and opened again before it works again: redb
    /// fails every call after an I/O error of its file until it is reopened.
    pub fn needs_reopen(&self) -> bool {
        matches!(
            self,
            StoreError::Db(redb::Error::Io(_) | redb::Error::PreviousIo) | StoreError::Closed(_)
        )
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Why one piece was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The store has no manifest for the bundle.
    #[error("no bundle {0} in the store")]
    UnknownBundle(BundleId),
    /// The piece does not verify against the manifest.
    #[error(transparent)]
    Piece(#[from] PieceError),
    /// No room even after eviction.
    #[error(transparent)]
    Full(#[from] StoreFull),
    /// The store failed as a whole (only from the single-piece and content helpers).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading content failed (only from [`Store::put_content`]).
    #[error("reading content: {0}")]
    Read(std::io::Error),
}

/// The bookkeeping record of one bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    state: State,
    wanted: bool,
    published: bool,
    trusted: bool,
    received_at: u64,
    bytes: u64,
    have: u32,
    export_path: Option<String>,
    failure: Option<Failure>,
    priority: Priority,
    expires: Option<u64>,
    /// A newer release of its lineage is known (format 3; absent in format 2 records).
    superseded: bool,
}

impl Record {
    /// The state of a bundle whose last missing piece just arrived: complete, unless it was
    /// installed (or its install failed) before some of its pieces were dropped as bad; its
    /// export is still in place then, so it is not exported and installed a second time.
    fn completed_state(&self) -> State {
        match (&self.failure, &self.export_path) {
            (Some(_), _) => State::Failed,
            (None, Some(_)) => State::Installed,
            (None, None) => State::Complete,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut e = Vec::new();
        cbor::array(&mut e, 12);
        cbor::uint(&mut e, self.state.code());
        cbor::uint(&mut e, u64::from(self.wanted));
        cbor::uint(&mut e, u64::from(self.published));
        cbor::uint(&mut e, u64::from(self.trusted));
        cbor::uint(&mut e, self.received_at);
        cbor::uint(&mut e, self.bytes);
        cbor::uint(&mut e, u64::from(self.have));
        match &self.export_path {
            Some(p) => cbor::text(&mut e, p),
            None => cbor::null(&mut e),
        }
        match &self.failure {
            Some(f) => {
                cbor::array(&mut e, 3);
                cbor::uint(&mut e, f.at);
                cbor::uint(&mut e, u64::from(f.attempts));
                cbor::text(&mut e, &f.message);
            }
            None => cbor::null(&mut e),
        }
        cbor::uint(
            &mut e,
            Priority::ALL
                .iter()
                .position(|p| *p == self.priority)
                .unwrap_or(2) as u64,
        );
        cbor::opt_uint(&mut e, self.expires);
        cbor::uint(&mut e, u64::from(self.superseded));
        e
    }

    fn decode(bytes: &[u8]) -> Result<Record, CborError> {
        // Lengths are bounded by the record itself, which the store wrote.
        const ANY: usize = usize::MAX;
        let mut d = Reader::new(bytes);
        // 11 fields: a format 2 record; 12: format 3 (with `superseded`).
        let fields = d.array("record", ANY)?;
        if fields != 11 && fields != 12 {
            return Err(CborError::ArrayLength {
                what: "record",
                expected: 12,
                found: fields as u64,
            });
        }
        let bad = |field, value, max| CborError::OutOfRange { field, value, max };
        let state = d.uint("state", State::MAX_CODE)?;
        let state = State::from_code(state).ok_or(bad("state", state, State::MAX_CODE))?;
        let wanted = d.uint("wanted", 1)? != 0;
        let published = d.uint("published", 1)? != 0;
        let trusted = d.uint("trusted", 1)? != 0;
        let received_at = d.uint("received_at", u64::MAX)?;
        let bytes_ = d.uint("bytes", u64::MAX)?;
        let have = d.uint("have", u32::MAX.into())? as u32;
        let export_path = if d.null()? {
            None
        } else {
            Some(d.text("export_path", ANY)?.to_owned())
        };
        let failure = if d.null()? {
            None
        } else {
            d.array_exact("failure", 3)?;
            Some(Failure {
                at: d.uint("failure.at", u64::MAX)?,
                attempts: d.uint("failure.attempts", u32::MAX.into())? as u32,
                message: d.text("failure.message", ANY)?.to_owned(),
            })
        };
        let priority = d.uint("priority", 3)?;
        let priority = *Priority::ALL
            .get(priority as usize)
            .ok_or(bad("priority", priority, 3))?;
        let expires = d.opt_uint("expires", u64::MAX)?;
        let superseded = fields == 12 && d.uint("superseded", 1)? != 0;
        Ok(Record {
            state,
            wanted,
            published,
            trusted,
            received_at,
            bytes: bytes_,
            have,
            export_path,
            failure,
            priority,
            expires,
            superseded,
        })
    }
}

/// The piece store. See the module documentation.
pub struct Store {
    /// `None` only between closing a database that failed and reopening it ([`Store::reopen`]).
    db: Option<Database>,
    path: PathBuf,
    opts: StoreOptions,
    manifests: HashMap<BundleId, VerifiedManifest>,
    evicted: Vec<BundleId>,
    /// Piece bytes in use, kept across puts so a batch does not scan every record; `None`
    /// after anything else changed bytes or trust, then recomputed.
    usage_cache: Option<Usage>,
    /// Directory of the per-bundle data files.
    pieces_dir: PathBuf,
    /// Open data files (bounded: cleared when it reaches [`OPEN_FILES`]).
    files: HashMap<BundleId, std::fs::File>,
    /// Stored pieces found bad and dropped since the last [`Store::take_dropped`].
    dropped: Vec<BadPiece>,
    /// Release events since the last [`Store::take_release_events`].
    release_events: Vec<ReleaseEvent>,
    /// Why complete bundles wait, from the last install round ([`Store::set_waiting`]).
    waiting: HashMap<BundleId, String>,
}

/// A stored piece that failed its check (read back, its BLAKE3 hash does not match the
/// manifest, or it could not be read at all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadPiece {
    /// The bundle.
    pub bundle: BundleId,
    /// The piece index.
    pub index: PieceIndex,
    /// What was wrong.
    pub reason: String,
}

impl fmt::Display for BadPiece {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bundle {} piece {}: {}",
            self.bundle, self.index, self.reason
        )
    }
}

/// Most dropped pieces remembered for [`Store::take_dropped`].
const DROPPED_MEMORY: usize = 4096;

/// Most data files kept open.
const OPEN_FILES: usize = 64;

/// Most evicted ids remembered for [`Store::take_evicted`].
const EVICTED_MEMORY: usize = 1024;

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// Maps an I/O error on `path` to [`StoreError::Io`] (for `map_err`).
fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + use<> {
    let path = path.to_owned();
    move |source| StoreError::Io { path, source }
}

fn corrupt(id: BundleId, what: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        id,
        what,
        detail: detail.to_string(),
    }
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir` (file [`STORE_FILE_NAME`]).
    pub fn open(data_dir: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(io_err(data_dir))?;
        Store::open_file(&data_dir.join(STORE_FILE_NAME), opts)
    }

    /// Opens (creating if needed) the store in the database file `path`.
    ///
    /// After a crash redb repairs the file here (quickly, with quick-repair on). A store of
    /// another format version is refused.
    pub fn open_file(path: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        let db = Self::open_db(path, &opts)?;
        let pieces_dir = path.with_extension("pieces");
        std::fs::create_dir_all(&pieces_dir).map_err(io_err(&pieces_dir))?;
        let store = Store {
            db: Some(db),
            path: path.to_owned(),
            opts,
            manifests: HashMap::new(),
            evicted: Vec::new(),
            usage_cache: None,
            pieces_dir,
            files: HashMap::new(),
            dropped: Vec::new(),
            release_events: Vec::new(),
            waiting: HashMap::new(),
        };
        store.check_format()?;
        store.sweep_orphans()?;
        Ok(store)
    }

    fn open_db(path: &Path, opts: &StoreOptions) -> Result<Database, StoreError> {
        Database::builder()
            .set_cache_size(opts.cache_bytes)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(path.to_owned()),
                e => e.into(),
            })
    }

    fn db(&self) -> Result<&Database, StoreError> {
        self.db
            .as_ref()
            .ok_or_else(|| StoreError::Closed(self.path.clone()))
    }

    /// Closes the database and opens it again (and forgets open data files and cached
    /// counters). redb refuses every call after an I/O error of its file (a full disk during
    /// a commit, say) until it is reopened; the last committed transaction is intact, so
    /// reopening is all it takes. If opening fails, calls fail with [`StoreError::Closed`]
    /// until a later `reopen` succeeds.
    pub fn reopen(&mut self) -> Result<(), StoreError> {
        // The old handle must be gone first: it holds the file lock.
        self.db = None;
        self.files.clear();
        self.usage_cache = None;
        self.manifests.clear();
        self.db = Some(Self::open_db(&self.path, &self.opts)?);
        self.check_format()?;
        Ok(())
    }

    /// Whether the database is closed after a failed [`Store::reopen`].
    pub fn is_closed(&self) -> bool {
        self.db.is_none()
    }

    /// Path of a bundle's data file.
    fn data_path(&self, id: &BundleId) -> PathBuf {
        self.pieces_dir.join(id.to_string())
    }

    /// Data files whose bundle is not among `records` (file name, path).
    fn orphan_files(
        &self,
        records: &[(BundleId, Record)],
    ) -> Result<Vec<(String, PathBuf)>, StoreError> {
        let known: std::collections::HashSet<String> =
            records.iter().map(|(id, _)| id.to_string()).collect();
        let mut orphans = Vec::new();
        for entry in std::fs::read_dir(&self.pieces_dir).map_err(io_err(&self.pieces_dir))? {
            let entry = entry.map_err(io_err(&self.pieces_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                orphans.push((name, entry.path()));
            }
        }
        Ok(orphans)
    }

    /// Deletes data files whose bundle has no record (a crash between a removal's commit and
    /// the file's deletion leaves one).
    fn sweep_orphans(&self) -> Result<(), StoreError> {
        for (_, path) in self.orphan_files(&self.records()?)? {
            tracing::info!(file = %path.display(), "deleting data of a removed bundle");
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// The open data file of a bundle, created if needed (and the directory synced, so the
    /// file outlives a crash once pieces in it are claimed).
    fn data_file(&mut self, id: &BundleId) -> Result<&std::fs::File, StoreError> {
        if !self.files.contains_key(id) {
            if self.files.len() >= OPEN_FILES {
                self.files.clear();
            }
            let path = self.data_path(id);
            let existed = path.exists();
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err(&path))?;
            if !existed {
                std::fs::File::open(&self.pieces_dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err(&self.pieces_dir))?;
            }
            self.files.insert(*id, f);
        }
        Ok(&self.files[id])
    }

    /// Runs `op` on a bundle's data file (opened or created as needed), naming the file in
    /// an error.
    fn with_data_file<T>(
        &mut self,
        id: &BundleId,
        op: impl FnOnce(&std::fs::File) -> std::io::Result<T>,
    ) -> Result<T, StoreError> {
        let r = op(self.data_file(id)?);
        r.map_err(io_err(&self.data_path(id)))
    }

    /// Deletes the data files of bundles whose removal was committed.
    fn delete_data(&mut self, ids: &[BundleId]) -> Result<(), StoreError> {
        for id in ids {
            self.files.remove(id);
            let path = self.data_path(id);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Ok(())
    }

    fn check_format(&self) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        let other_tables = txn.list_tables()?.count();
        let found = {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("format")?.map(|v| v.value());
            match found {
                None if other_tables > 0 => {
                    return Err(StoreError::NotAStore(self.path.clone()));
                }
                None => {
                    meta.insert("format", STORE_FORMAT)?;
                }
                Some(_) => {}
            }
            found
        };
        match found {
            None | Some(STORE_FORMAT) => {}
            Some(STORE_FORMAT_V2) => {
                // Format 2 knew no release numbers, and format 1 manifests carry none: the
                // release tables start empty (created below) and old records read as they are.
                tracing::info!(store = %self.path.display(), "migrating the store from format 2 to 3");
                txn.open_table(META)?.insert("format", STORE_FORMAT)?;
            }
            Some(found) => {
                return Err(StoreError::UnsupportedFormat {
                    path: self.path.clone(),
                    found,
                    supported: STORE_FORMAT,
                });
            }
        }
        txn.open_table(MANIFESTS)?;
        txn.open_table(BITFIELDS)?;
        txn.open_table(BUNDLES)?;
        txn.open_table(LINEAGES)?;
        txn.open_table(RELEASES)?;
        txn.commit()?;
        Ok(())
    }

    fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db()?.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        txn.set_quick_repair(self.opts.quick_repair);
        Ok(txn)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    fn now(&self) -> u64 {
        (self.opts.clock)()
    }

    fn is_trusted(&self, vm: &VerifiedManifest) -> bool {
        self.opts.trust.contains(&vm.manifest().publisher)
    }

    /// Stores a verified manifest. Pieces can be put afterwards.
    ///
    /// A received manifest from an untrusted publisher is refused unless carrying is allowed;
    /// a received manifest that has expired is refused. New bundles start not wanted: call
    /// [`Store::set_wanted`].
    pub fn insert_manifest(
        &mut self,
        vm: &VerifiedManifest,
        origin: Origin,
    ) -> Result<Inserted, StoreError> {
        let id = vm.id();
        let now = self.now();
        let published = origin == Origin::Published;
        let trusted = published || self.is_trusted(vm);
        // Marking a carried bundle as ours moves its bytes out of the carry quota.
        self.usage_cache = None;
        let txn = self.begin_write()?;
        {
            let mut bundles = txn.open_table(BUNDLES)?;
            let existing = bundles.get(&id.0)?.map(|v| v.value().to_vec());
            if let Some(bytes) = existing {
                if published {
                    let mut rec = Record::decode(&bytes).map_err(|e| corrupt(id, "record", e))?;
                    if !rec.published {
                        rec.published = true;
                        rec.trusted = true;
                        bundles.insert(&id.0, rec.encode().as_slice())?;
                    }
                }
                drop(bundles);
                txn.commit()?;
                return Ok(Inserted::AlreadyPresent);
            }
            if !trusted && !self.opts.carry_untrusted {
                return Err(StoreError::Untrusted {
                    id,
                    publisher: hex::encode(vm.manifest().publisher),
                });
            }
            if !published && vm.manifest().is_expired(now) {
                return Err(StoreError::Expired(id));
            }
            if bundles.len()? as usize >= self.opts.max_bundles {
                return Err(StoreError::TooManyBundles(self.opts.max_bundles));
            }
            drop(bundles);
            let superseded = self.note_release(&txn, vm, published)?
                | Self::note_replaces(&txn, vm, trusted || published)?;
            let mut bundles = txn.open_table(BUNDLES)?;
            let count = vm.piece_count();
            let rec = Record {
                state: if count == 0 {
                    State::Complete
                } else {
                    State::Incomplete
                },
                wanted: false,
                published,
                trusted,
                received_at: now,
                bytes: 0,
                have: 0,
                export_path: None,
                failure: None,
                priority: vm.manifest().priority,
                expires: vm.manifest().expires,
                superseded,
            };
            bundles.insert(&id.0, rec.encode().as_slice())?;
            txn.open_table(MANIFESTS)?.insert(&id.0, vm.as_bytes())?;
            txn.open_table(BITFIELDS)?
                .insert(&id.0, Bitfield::new(count).as_bytes())?;
        }
        txn.commit()?;
        self.cache(vm.clone());
        tracing::debug!(bundle = %id.short(), trusted, published, "manifest stored");
        Ok(Inserted::New)
    }

    /// The release bookkeeping of a new bundle, in its insert transaction: detects
    /// equivocation (refused for our own bundles), raises the lineage's newest release and
    /// marks older releases superseded (and not wanted). Returns whether the new bundle is
    /// itself superseded (or blocked). Unnumbered (format 1) manifests are left alone.
    fn note_release(
        &mut self,
        txn: &WriteTransaction,
        vm: &VerifiedManifest,
        published: bool,
    ) -> Result<bool, StoreError> {
        let m = vm.manifest();
        if !m.is_numbered() {
            return Ok(false);
        }
        let (id, lineage, release) = (vm.id(), m.release_lineage(), m.release);
        let mut lineages = txn.open_table(LINEAGES)?;
        let mut releases = txn.open_table(RELEASES)?;
        let key = lineage.key();
        let mut rec = match lineages.get(key.as_slice())? {
            Some(v) => LineageRecord::decode(v.value()).map_err(|e| corrupt(id, "lineage", e))?,
            None => LineageRecord::default(),
        };
        let rkey = release_key(&lineage, release);
        let existing = releases.get(&rkey)?.map(|v| BundleId(*v.value()));
        match existing {
            Some(other) if other != id && published => {
                return Err(StoreError::Equivocation {
                    lineage,
                    release,
                    existing: other,
                });
            }
            Some(other) if other != id => {
                tracing::warn!(lineage = %lineage, release, first = %other.short(),
                    second = %id.short(), "equivocation: two different bundles with one release; neither is installed");
                if !rec.equivocal.contains(&release) && rec.equivocal.len() < MAX_EQUIVOCAL {
                    rec.equivocal.push(release);
                }
                self.push_event(ReleaseEvent::Equivocation {
                    lineage: lineage.clone(),
                    release,
                    bundles: [other, id],
                });
                // The first one stops being wanted too.
                let mut bundles = txn.open_table(BUNDLES)?;
                if let Some(mut r) = Self::record_in(&bundles, &other)? {
                    r.wanted = false;
                    r.superseded = true;
                    bundles.insert(&other.0, r.encode().as_slice())?;
                }
            }
            Some(_) => {}
            None => {
                releases.insert(&rkey, &id.0)?;
            }
        }
        if !published && release <= rec.installed {
            tracing::warn!(lineage = %lineage, release, installed = rec.installed,
                bundle = %id.short(), "rollback refused: an older release arrived");
            rec.refused += 1;
            self.push_event(ReleaseEvent::RollbackRefused {
                bundle: id,
                release,
                installed: rec.installed,
            });
        }
        if release > rec.newest {
            let older = rec.newest;
            rec.newest = release;
            if older > 0 {
                Self::supersede_below(txn, &releases, &lineage, release)?;
            }
        }
        let blocked = rec.block(release).is_some();
        lineages.insert(key.as_slice(), rec.encode().as_slice())?;
        Ok(blocked)
    }

    /// Renames (the manifest's replaced ids, across lineages), in the insert transaction of
    /// a new bundle: a trusted manifest supersedes the stored bundles it names replaced
    /// that have the same publisher, and is remembered for those arriving later. Returns
    /// whether the new bundle is itself replaced by one stored before it. Only a rename by
    /// the same key counts: anyone can sign a manifest naming another's bundle.
    fn note_replaces(
        txn: &WriteTransaction,
        vm: &VerifiedManifest,
        trusted: bool,
    ) -> Result<bool, StoreError> {
        let m = vm.manifest();
        let mut replaced = txn.open_table(REPLACED)?;
        let itself = replaced
            .get(&vm.id().0)?
            .is_some_and(|by| *by.value() == m.publisher);
        if itself {
            tracing::info!(bundle = %vm.id().short(), "superseded: a stored bundle replaces it");
        }
        if !trusted || m.lineage.is_empty() {
            return Ok(itself);
        }
        let mut bundles = txn.open_table(BUNDLES)?;
        let manifests = txn.open_table(MANIFESTS)?;
        for old in &m.lineage {
            if *old == vm.id() {
                continue;
            }
            replaced.insert(&old.0, &m.publisher)?;
            let same_publisher = manifests
                .get(&old.0)?
                .and_then(|v| VerifiedManifest::decode(v.value()).ok())
                .map(|vm| vm.manifest().publisher)
                .is_some_and(|p| p == m.publisher);
            if let Some(mut r) = Self::record_in(&bundles, old)?
                && same_publisher
                && !r.superseded
            {
                r.superseded = true;
                r.wanted = false;
                bundles.insert(&old.0, r.encode().as_slice())?;
                tracing::info!(bundle = %old.short(), by = %vm.id().short(), "superseded: replaced by a rename");
            }
        }
        Ok(itself)
    }

    /// Marks every stored bundle of `lineage` with a release below `release` superseded and
    /// not wanted.
    fn supersede_below(
        txn: &WriteTransaction,
        releases: &impl ReadableTable<&'static [u8; 40], &'static [u8; 32]>,
        lineage: &Lineage,
        release: u64,
    ) -> Result<(), StoreError> {
        let (from, to) = (release_key(lineage, 0), release_key(lineage, release));
        let mut bundles = txn.open_table(BUNDLES)?;
        for entry in releases.range::<&[u8; 40]>(&from..&to)? {
            let id = BundleId(*entry?.1.value());
            if let Some(mut r) = Self::record_in(&bundles, &id)?
                && !r.superseded
            {
                r.superseded = true;
                r.wanted = false;
                bundles.insert(&id.0, r.encode().as_slice())?;
                tracing::info!(bundle = %id.short(), lineage = %lineage, newer = release, "superseded");
            }
        }
        Ok(())
    }

    fn push_event(&mut self, e: ReleaseEvent) {
        if self.release_events.len() < EVICTED_MEMORY {
            self.release_events.push(e);
        }
    }

    /// Release events (equivocation, refused rollbacks, rollbacks) since the last call, so
    /// the daemon can count and report them.
    pub fn take_release_events(&mut self) -> Vec<ReleaseEvent> {
        std::mem::take(&mut self.release_events)
    }

    fn lineage_record(&self, lineage: &Lineage) -> Result<Option<LineageRecord>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(LINEAGES)?;
        let v = table.get(lineage.key().as_slice())?;
        v.map(|v| {
            LineageRecord::decode(v.value()).map_err(|e| corrupt(BundleId([0; 32]), "lineage", e))
        })
        .transpose()
    }

    /// Why a stored bundle must not be installed (equivocal, a rollback, superseded), if it
    /// must not; `None` for unnumbered bundles and the newest release.
    pub fn release_block(&mut self, id: &BundleId) -> Result<Option<Block>, StoreError> {
        let vm = self.manifest(id)?.ok_or(StoreError::UnknownBundle(*id))?;
        let m = vm.manifest();
        if !m.is_numbered() {
            return Ok(None);
        }
        Ok(self
            .lineage_record(&m.release_lineage())?
            .and_then(|r| r.block(m.release)))
    }

    /// The highest release of `lineage` this store knows (0: none), for the publisher's next
    /// release number.
    pub fn newest_release(&self, lineage: &Lineage) -> Result<u64, StoreError> {
        Ok(self.lineage_record(lineage)?.map_or(0, |r| r.newest))
    }

    /// The export of the installed release of the bundle's lineage (what a rollback puts
    /// back), with its id and release.
    pub fn installed_release(
        &mut self,
        lineage: &Lineage,
    ) -> Result<Option<(BundleId, u64, PathBuf)>, StoreError> {
        Ok(self.lineage_record(lineage)?.and_then(|r| {
            Some((
                r.installed_id?,
                r.installed,
                PathBuf::from(r.installed_export?),
            ))
        }))
    }

    /// Every release lineage the store knows.
    pub fn lineages(&self) -> Result<Vec<LineageInfo>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let mut out = Vec::new();
        for entry in txn.open_table(LINEAGES)?.iter()? {
            let (k, v) = entry?;
            let Some(l) = Lineage::from_key(k.value()) else {
                continue;
            };
            let r = LineageRecord::decode(v.value())
                .map_err(|e| corrupt(BundleId([0; 32]), "lineage", e))?;
            out.push(LineageInfo {
                publisher: hex::encode(l.publisher),
                name: l.name,
                installed: r.installed,
                newest: r.newest,
                equivocal: r.equivocal,
                rollback_refused: r.refused,
            });
        }
        Ok(out)
    }

    /// Notes a refused rollback found at install time (counted like one at arrival).
    pub fn refuse_rollback(&mut self, id: &BundleId) -> Result<(), StoreError> {
        let vm = self.manifest(id)?.ok_or(StoreError::UnknownBundle(*id))?;
        let m = vm.manifest();
        let lineage = m.release_lineage();
        let txn = self.begin_write()?;
        let installed = {
            let mut lineages = txn.open_table(LINEAGES)?;
            let key = lineage.key();
            let mut rec = match lineages.get(key.as_slice())? {
                Some(v) => {
                    LineageRecord::decode(v.value()).map_err(|e| corrupt(*id, "lineage", e))?
                }
                None => LineageRecord::default(),
            };
            rec.refused += 1;
            lineages.insert(key.as_slice(), rec.encode().as_slice())?;
            let mut bundles = txn.open_table(BUNDLES)?;
            if let Some(mut r) = Self::record_in(&bundles, id)? {
                r.wanted = false;
                r.superseded = true;
                bundles.insert(&id.0, r.encode().as_slice())?;
            }
            rec.installed
        };
        txn.commit()?;
        self.push_event(ReleaseEvent::RollbackRefused {
            bundle: *id,
            release: m.release,
            installed,
        });
        Ok(())
    }

    /// Replaces the reasons complete bundles wait (the install round's findings).
    pub fn set_waiting(&mut self, waiting: HashMap<BundleId, String>) {
        self.waiting = waiting;
    }

    fn cache(&mut self, vm: VerifiedManifest) {
        if self.manifests.len() >= MANIFEST_CACHE_ENTRIES {
            self.manifests.clear();
        }
        self.manifests.insert(vm.id(), vm);
    }

    /// The verified manifest of a stored bundle.
    pub fn manifest(&mut self, id: &BundleId) -> Result<Option<VerifiedManifest>, StoreError> {
        if let Some(vm) = self.manifests.get(id) {
            return Ok(Some(vm.clone()));
        }
        let txn = self.db()?.begin_read()?;
        let Some(bytes) = txn
            .open_table(MANIFESTS)?
            .get(&id.0)?
            .map(|v| v.value().to_vec())
        else {
            return Ok(None);
        };
        // Verified before it was stored: parse it again, but skip the signature (listing
        // thousands of bundles would otherwise spend ~100 µs each); verify_all re-verifies.
        let vm = VerifiedManifest::decode_stored(&bytes, *id)
            .map_err(|e| corrupt(*id, "manifest", e))?;
        self.cache(vm.clone());
        Ok(Some(vm))
    }

    fn record_in(
        table: &impl ReadableTable<&'static [u8; 32], &'static [u8]>,
        id: &BundleId,
    ) -> Result<Option<Record>, StoreError> {
        match table.get(&id.0)? {
            None => Ok(None),
            Some(v) => Record::decode(v.value())
                .map(Some)
                .map_err(|e| corrupt(*id, "record", e)),
        }
    }

    fn bitfield_in(
        table: &impl ReadableTable<&'static [u8; 32], &'static [u8]>,
        id: &BundleId,
        len: u32,
    ) -> Result<Bitfield, StoreError> {
        match table.get(&id.0)? {
            None => Err(corrupt(*id, "bitfield", "missing")),
            Some(v) => {
                Bitfield::from_bytes(len, v.value()).map_err(|e| corrupt(*id, "bitfield", e))
            }
        }
    }

    fn records(&self) -> Result<Vec<(BundleId, Record)>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(BUNDLES)?;
        Self::all_records(&table)
    }

    fn all_records(
        table: &impl ReadableTable<&'static [u8; 32], &'static [u8]>,
    ) -> Result<Vec<(BundleId, Record)>, StoreError> {
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let id = BundleId(*k.value());
            out.push((
                id,
                Record::decode(v.value()).map_err(|e| corrupt(id, "record", e))?,
            ));
        }
        Ok(out)
    }

    fn info_from(&mut self, id: BundleId, rec: Record) -> Result<BundleInfo, StoreError> {
        let vm = self
            .manifest(&id)?
            .ok_or_else(|| corrupt(id, "manifest", "missing"))?;
        let m = vm.manifest();
        let equivocal = m.is_numbered()
            && self
                .lineage_record(&m.release_lineage())?
                .is_some_and(|r| r.equivocal.contains(&m.release));
        Ok(BundleInfo {
            id,
            name: m.name.clone(),
            version: m.version.clone(),
            priority: m.priority,
            pieces_total: m.piece_count(),
            pieces_have: rec.have,
            state: rec.state,
            bytes: rec.bytes,
            content_len: m.content_len,
            wanted: rec.wanted,
            published: rec.published,
            trusted: rec.trusted,
            received_at: rec.received_at,
            expires: m.expires,
            dependencies: m.dependencies.clone(),
            export_path: rec.export_path.map(PathBuf::from),
            failure: rec.failure,
            release: m.release,
            superseded: rec.superseded,
            equivocal,
            waiting: self.waiting.get(&id).cloned(),
        })
    }

    /// Every stored bundle, ordered by id.
    pub fn bundles(&mut self) -> Result<Vec<BundleInfo>, StoreError> {
        let recs = self.records()?;
        recs.into_iter()
            .map(|(id, rec)| self.info_from(id, rec))
            .collect()
    }

    /// One stored bundle.
    pub fn info(&mut self, id: &BundleId) -> Result<Option<BundleInfo>, StoreError> {
        let rec = {
            let txn = self.db()?.begin_read()?;
            Self::record_in(&txn.open_table(BUNDLES)?, id)?
        };
        rec.map(|r| self.info_from(*id, r)).transpose()
    }

    /// Which pieces of a bundle are stored.
    pub fn bitfield(&mut self, id: &BundleId) -> Result<Option<Bitfield>, StoreError> {
        let Some(vm) = self.manifest(id)? else {
            return Ok(None);
        };
        let txn = self.db()?.begin_read()?;
        Self::bitfield_in(&txn.open_table(BITFIELDS)?, id, vm.piece_count()).map(Some)
    }

    /// Whether every piece of a bundle is stored.
    pub fn is_complete(&mut self, id: &BundleId) -> Result<bool, StoreError> {
        Ok(self.bitfield(id)?.is_some_and(|b| b.is_complete()))
    }

    /// A stored piece, checked against its manifest's hash on the way out.
    ///
    /// A piece was verified before it was stored, but a disk can rot: a piece that reads back
    /// with another hash (or cannot be read) is dropped from the bitfield at once, so the
    /// bundle is incomplete again and the piece is fetched anew, and `None` is returned as
    /// for a piece not held. The node never hands out data that fails its hash. Dropped
    /// pieces are reported by [`Store::take_dropped`].
    pub fn read_piece(
        &mut self,
        id: &BundleId,
        index: PieceIndex,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(vm) = self.manifest(id)? else {
            return Ok(None);
        };
        if !self.bitfield(id)?.is_some_and(|b| b.get(index)) {
            return Ok(None);
        }
        match self.check_claimed(&vm, index)? {
            Ok(data) => Ok(Some(data)),
            Err(bad) => {
                self.drop_pieces(id, &[bad])?;
                Ok(None)
            }
        }
    }

    /// Reads a claimed piece and verifies it: the data, or what is wrong with it. Only
    /// failures that mean this piece is bad (its hash, a short file, a read error of the
    /// medium) are a [`BadPiece`]; other I/O errors are the caller's.
    pub(crate) fn check_claimed(
        &mut self,
        vm: &VerifiedManifest,
        index: PieceIndex,
    ) -> Result<Result<Vec<u8>, BadPiece>, StoreError> {
        let bad = |reason: String| BadPiece {
            bundle: vm.id(),
            index,
            reason,
        };
        let data = match self.read_claimed(vm, index) {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(Err(bad("index past the end of the bundle".into()))),
            Err(StoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::UnexpectedEof
                    || source.raw_os_error() == Some(libc::EIO) =>
            {
                return Ok(Err(bad(format!("unreadable: {source}"))));
            }
            Err(e) => return Err(e),
        };
        Ok(match verify_piece(vm, index, &data) {
            Ok(()) => Ok(data),
            Err(e) => Err(bad(e.to_string())),
        })
    }

    /// Drops pieces found bad from their bundles' bitfields and counters in one durable
    /// commit (the bundle becomes incomplete; an installed one turns installed again once the
    /// pieces are back, without being exported again). Pieces not claimed are skipped. The
    /// data in the file stays until the piece is written again. Returns how many were
    /// dropped; each is reported by [`Store::take_dropped`].
    pub fn drop_pieces(&mut self, id: &BundleId, bad: &[BadPiece]) -> Result<u32, StoreError> {
        let Some(vm) = self.manifest(id)? else {
            return Ok(0);
        };
        let txn = self.begin_write()?;
        let mut dropped = Vec::new();
        {
            let mut bundles = txn.open_table(BUNDLES)?;
            let mut bitfields = txn.open_table(BITFIELDS)?;
            let Some(mut rec) = Self::record_in(&bundles, id)? else {
                return Ok(0);
            };
            let mut bf = Self::bitfield_in(&bitfields, id, vm.piece_count())?;
            for b in bad.iter().filter(|b| b.bundle == *id) {
                if !bf.get(b.index) {
                    continue;
                }
                bf.clear(b.index);
                let len = u64::from(vm.manifest().piece_len(b.index).unwrap_or(0));
                rec.have = rec.have.saturating_sub(1);
                rec.bytes = rec.bytes.saturating_sub(len);
                dropped.push(b.clone());
            }
            if dropped.is_empty() {
                return Ok(0);
            }
            if rec.state == State::Complete {
                // Not installed yet: the next completion exports it afresh.
                rec.export_path = None;
            }
            rec.state = State::Incomplete;
            bundles.insert(&id.0, rec.encode().as_slice())?;
            bitfields.insert(&id.0, bf.as_bytes())?;
        }
        txn.commit()?;
        self.usage_cache = None;
        let n = dropped.len() as u32;
        for b in dropped {
            tracing::warn!(bundle = %b.bundle, index = b.index, reason = %b.reason,
                "stored piece is bad; dropped, it will be fetched again");
            if self.dropped.len() < DROPPED_MEMORY {
                self.dropped.push(b);
            }
        }
        Ok(n)
    }

    /// Pieces dropped as bad since the last call (at most the first 4096), so the caller can
    /// count them and update what it advertises.
    pub fn take_dropped(&mut self) -> Vec<BadPiece> {
        std::mem::take(&mut self.dropped)
    }

    /// Reads back and verifies every claimed piece of one bundle; returns the bad ones, and
    /// with `repair` drops them ([`Store::drop_pieces`]) so they are fetched again.
    pub fn verify_bundle(
        &mut self,
        id: &BundleId,
        repair: bool,
    ) -> Result<Vec<BadPiece>, StoreError> {
        let vm = self.manifest(id)?.ok_or(StoreError::UnknownBundle(*id))?;
        let bf = self
            .bitfield(id)?
            .ok_or_else(|| corrupt(*id, "bitfield", "missing"))?;
        let mut bad = Vec::new();
        for index in bf.iter_present() {
            if let Err(b) = self.check_claimed(&vm, index)? {
                bad.push(b);
            }
        }
        if repair && !bad.is_empty() {
            self.drop_pieces(id, &bad)?;
        }
        Ok(bad)
    }

    /// Reads piece `index` from the data file; the caller has checked that its bit is set
    /// (`None` only for an index past the end).
    pub(crate) fn read_claimed(
        &mut self,
        vm: &VerifiedManifest,
        index: PieceIndex,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        use std::os::unix::fs::FileExt;
        let Some(len) = vm.manifest().piece_len(index) else {
            return Ok(None);
        };
        let id = vm.id();
        let offset = u64::from(index) * u64::from(vm.manifest().piece_size);
        let mut data = vec![0u8; len as usize];
        self.with_data_file(&id, |f| f.read_exact_at(&mut data, offset))?;
        Ok(Some(data))
    }

    /// Marks a bundle wanted (to be exported and installed) or not. Only trusted bundles can
    /// be wanted; a superseded (or equivocal, or rolled-back-to-older) release stays unwanted
    /// without an error, so re-evaluating subscriptions may ask for every bundle.
    pub fn set_wanted(&mut self, id: &BundleId, wanted: bool) -> Result<(), StoreError> {
        let r = self.update_record(id, |rec| {
            if wanted && !rec.trusted {
                return Err(());
            }
            rec.wanted = wanted && !rec.superseded;
            Ok(())
        })?;
        if r.is_err() {
            let publisher = self
                .manifest(id)?
                .map(|vm| hex::encode(vm.manifest().publisher))
                .unwrap_or_default();
            return Err(StoreError::Untrusted { id: *id, publisher });
        }
        Ok(())
    }

    /// Applies `f` to a bundle's record in its own transaction; `f`'s `Err` aborts.
    fn update_record<E>(
        &mut self,
        id: &BundleId,
        f: impl FnOnce(&mut Record) -> Result<(), E>,
    ) -> Result<Result<(), E>, StoreError> {
        let txn = self.begin_write()?;
        {
            let mut table = txn.open_table(BUNDLES)?;
            let mut rec = Self::record_in(&table, id)?.ok_or(StoreError::UnknownBundle(*id))?;
            if let Err(e) = f(&mut rec) {
                return Ok(Err(e));
            }
            table.insert(&id.0, rec.encode().as_slice())?;
        }
        txn.commit()?;
        Ok(Ok(()))
    }

    /// Replaces the trust list and re-evaluates which stored bundles are trusted. Bundles that
    /// lost trust stop being wanted.
    pub fn set_trust(&mut self, trust: TrustList) -> Result<(), StoreError> {
        self.opts.trust = trust;
        self.usage_cache = None;
        let recs = self.records()?;
        let txn = self.begin_write()?;
        {
            let mut table = txn.open_table(BUNDLES)?;
            for (id, mut rec) in recs {
                let vm = self
                    .manifest(&id)?
                    .ok_or_else(|| corrupt(id, "manifest", "missing"))?;
                let trusted = rec.published || self.is_trusted(&vm);
                if trusted != rec.trusted {
                    rec.trusted = trusted;
                    rec.wanted &= trusted;
                    table.insert(&id.0, rec.encode().as_slice())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes a bundle and all its pieces; returns whether it was there.
    pub fn remove(&mut self, id: &BundleId) -> Result<bool, StoreError> {
        let txn = self.begin_write()?;
        let found = Self::remove_in(&txn, id)?;
        self.usage_cache = None;
        txn.commit()?;
        self.manifests.remove(id);
        self.delete_data(&[*id])?;
        Ok(found)
    }

    /// Removes a bundle's records in `txn`; its data file goes after the commit
    /// ([`Self::delete_data`]). The tables must not be open.
    fn remove_in(txn: &WriteTransaction, id: &BundleId) -> Result<bool, StoreError> {
        let found = txn.open_table(BUNDLES)?.remove(&id.0)?.is_some();
        txn.open_table(MANIFESTS)?.remove(&id.0)?;
        txn.open_table(BITFIELDS)?.remove(&id.0)?;
        Ok(found)
    }

    /// Bytes of piece data stored.
    pub fn usage(&self) -> Result<Usage, StoreError> {
        let recs = self.records()?;
        Ok(usage_of(&recs))
    }

    /// Ids of bundles evicted since the last call (at most the first 1024), so the caller can
    /// update what it advertises.
    pub fn take_evicted(&mut self) -> Vec<BundleId> {
        std::mem::take(&mut self.evicted)
    }

    /// Stores one piece (verify, then one durable commit).
    pub fn put_piece(
        &mut self,
        id: &BundleId,
        index: PieceIndex,
        data: &[u8],
    ) -> Result<Put, PutError> {
        let mut results = self.put_pieces(&[(*id, index, data)])?;
        results.pop().unwrap_or(Ok(Put::AlreadyHad))
    }

    /// Verifies a batch of pieces, stores the good ones and commits once.
    ///
    /// Returns one result per piece, in order; a bad piece (unknown bundle, wrong length or
    /// hash, no room) is rejected on its own and the others are still stored. The outer error
    /// means the whole batch failed and nothing of it was stored.
    pub fn put_pieces(
        &mut self,
        pieces: &[(BundleId, PieceIndex, &[u8])],
    ) -> Result<Vec<Result<Put, PutError>>, StoreError> {
        // Verify outside the transaction.
        let (mut results, batch) = self.verify_batch(pieces)?;
        if !results.iter().any(|r| r.is_ok()) {
            return Ok(results);
        }
        let now = self.now();
        let txn = self.begin_write()?;
        let mut evicted = Vec::new();
        let usage = {
            let mut state = Self::batch_state(&txn, &batch)?;
            let mut usage = match self.usage_cache {
                Some(u) => u,
                None => usage_of(&Self::all_records(&txn.open_table(BUNDLES)?)?),
            };
            // Loaded only if something has to be evicted.
            let mut others: Option<Vec<(BundleId, Record)>> = None;
            let mut touched: Vec<BundleId> = Vec::new();
            for ((id, index, data), result) in pieces.iter().zip(results.iter_mut()) {
                if result.is_err() {
                    continue;
                }
                let Some((rec, bf)) = state.get_mut(id) else {
                    *result = Err(PutError::UnknownBundle(*id));
                    continue;
                };
                if bf.get(*index) {
                    *result = Ok(Put::AlreadyHad);
                    continue;
                }
                let need = data.len() as u64;
                if let Err(full) = self.make_room(
                    &txn,
                    &mut others,
                    &batch,
                    &mut usage,
                    need,
                    rec,
                    now,
                    &mut evicted,
                )? {
                    *result = Err(PutError::Full(full));
                    continue;
                }
                // Written (not yet claimed) before the commit; synced below.
                let offset = u64::from(*index) * u64::from(batch[id].manifest().piece_size);
                {
                    use std::os::unix::fs::FileExt;
                    self.with_data_file(id, |f| f.write_all_at(data, offset))?;
                }
                if !touched.contains(id) {
                    touched.push(*id);
                }
                bf.set(*index);
                rec.bytes += need;
                rec.have += 1;
                usage.total += need;
                if !rec.trusted {
                    usage.carry += need;
                }
                if bf.is_complete() {
                    rec.state = rec.completed_state();
                    *result = Ok(Put::Completed);
                }
            }
            // Durable before any bit claims them.
            for id in &touched {
                self.with_data_file(id, std::fs::File::sync_data)?;
            }
            let mut bundles = txn.open_table(BUNDLES)?;
            let mut bitfields = txn.open_table(BITFIELDS)?;
            for (id, (rec, bf)) in &state {
                bundles.insert(&id.0, rec.encode().as_slice())?;
                bitfields.insert(&id.0, bf.as_bytes())?;
            }
            usage
        };
        txn.commit()?;
        self.usage_cache = Some(usage);
        self.forget_evicted(evicted)?;
        Ok(results)
    }

    /// Verifies each piece against its bundle's manifest (read once per bundle): one result
    /// per piece, and the manifests of the bundles named.
    fn verify_batch(
        &mut self,
        pieces: &[(BundleId, PieceIndex, &[u8])],
    ) -> Result<VerifiedBatch, StoreError> {
        let mut results: Vec<Result<Put, PutError>> = Vec::with_capacity(pieces.len());
        let mut batch: HashMap<BundleId, VerifiedManifest> = HashMap::new();
        for (id, index, data) in pieces {
            let vm = match batch.get(id) {
                Some(vm) => Some(vm.clone()),
                None => self.manifest(id)?,
            };
            results.push(match vm {
                None => Err(PutError::UnknownBundle(*id)),
                Some(vm) => {
                    let r = verify_piece(&vm, *index, data).map(|()| Put::Stored);
                    batch.insert(*id, vm);
                    r.map_err(PutError::from)
                }
            });
        }
        Ok((results, batch))
    }

    /// The record and bitfield, in this transaction, of every bundle of a batch.
    fn batch_state(
        txn: &WriteTransaction,
        batch: &HashMap<BundleId, VerifiedManifest>,
    ) -> Result<HashMap<BundleId, (Record, Bitfield)>, StoreError> {
        let mut state = HashMap::new();
        let bundles = txn.open_table(BUNDLES)?;
        let bitfields = txn.open_table(BITFIELDS)?;
        for (id, vm) in batch {
            // A bundle can vanish between verification and here only if evicted
            // earlier; treat it as unknown.
            if let Some(rec) = Self::record_in(&bundles, id)? {
                let bf = Self::bitfield_in(&bitfields, id, vm.piece_count())?;
                state.insert(*id, (rec, bf));
            }
        }
        Ok(state)
    }

    /// After the commit that evicted them: deletes the bundles' data files and forgets
    /// their manifests (remembering a bounded number of evicted ids).
    fn forget_evicted(&mut self, evicted: Vec<BundleId>) -> Result<(), StoreError> {
        self.delete_data(&evicted)?;
        for id in evicted {
            self.manifests.remove(&id);
            tracing::info!(bundle = %id.short(), "evicted to make room");
            if self.evicted.len() < EVICTED_MEMORY {
                self.evicted.push(id);
            }
        }
        Ok(())
    }

    /// Evicts bundles from `others` (in this transaction) until `need` more bytes fit for a
    /// piece of the bundle `rec`, or reports which quota is full (evicting nothing then).
    #[allow(clippy::too_many_arguments)]
    fn make_room(
        &self,
        txn: &WriteTransaction,
        others: &mut Option<Vec<(BundleId, Record)>>,
        exclude: &HashMap<BundleId, VerifiedManifest>,
        usage: &mut Usage,
        need: u64,
        rec: &Record,
        now: u64,
        evicted: &mut Vec<BundleId>,
    ) -> Result<Result<(), StoreFull>, StoreError> {
        let carry = !rec.trusted;
        let fits = |u: &Usage| {
            u.total + need <= self.opts.quota_bytes
                && (!carry || u.carry + need <= self.opts.carry_quota_bytes)
        };
        if fits(usage) {
            return Ok(Ok(()));
        }
        let others = match others {
            Some(list) => list,
            None => others.insert(
                Self::all_records(&txn.open_table(BUNDLES)?)?
                    .into_iter()
                    .filter(|(id, _)| !exclude.contains_key(id))
                    .collect(),
            ),
        };
        let expired = |r: &Record| r.expires.is_some_and(|e| now >= e);
        let mut candidates: Vec<usize> = (0..others.len())
            .filter(|&i| {
                let r = &others[i].1;
                r.bytes > 0
                    && !r.published
                    && (expired(r)
                        || r.superseded
                        || (!r.wanted && (!r.trusted || r.priority >= rec.priority)))
                    // Only untrusted bundles free carry quota; when only the carry quota is
                    // short, evicting a trusted bundle would not help.
                    && (!carry || !r.trusted || usage.total + need > self.opts.quota_bytes)
            })
            .collect();
        candidates.sort_by_key(|&i| {
            let r = &others[i].1;
            (
                // Superseded releases go before anything else.
                !r.superseded,
                !expired(r),
                r.trusted,
                std::cmp::Reverse(r.priority),
                r.received_at,
            )
        });
        // Plan first, so that nothing is evicted when the piece cannot fit anyway.
        let mut plan = Vec::new();
        let mut after = *usage;
        for i in candidates {
            if fits(&after) {
                break;
            }
            let r = &others[i].1;
            after.total -= r.bytes;
            if !r.trusted {
                after.carry -= r.bytes;
            }
            plan.push(i);
        }
        if !fits(&after) {
            let (which, used, quota) = if usage.total + need > self.opts.quota_bytes {
                ("total", usage.total, self.opts.quota_bytes)
            } else {
                ("carry", usage.carry, self.opts.carry_quota_bytes)
            };
            return Ok(Err(StoreFull {
                needed: need,
                used,
                quota,
                which,
            }));
        }
        plan.sort_unstable_by(|a, b| b.cmp(a));
        for i in plan {
            let (id, _) = others.swap_remove(i);
            // An error aborts the whole batch: the transaction is dropped uncommitted.
            Self::remove_in(txn, &id)?;
            evicted.push(id);
        }
        *usage = after;
        Ok(Ok(()))
    }

    /// Stores content read from `reader` as the pieces of bundle `id` (for a bundle this node
    /// publishes or imports from a file), committing every [`CONTENT_BATCH_BYTES`].
    /// Returns the number of pieces newly stored. Stops at the first bad piece.
    pub fn put_content<R: Read>(&mut self, id: &BundleId, reader: R) -> Result<u32, PutError> {
        let vm = self.manifest(id)?.ok_or(PutError::UnknownBundle(*id))?;
        let per_batch = (CONTENT_BATCH_BYTES / vm.manifest().piece_size as usize).max(1);
        let mut pieces = PieceReader::new(reader, vm.manifest().piece_size);
        let mut index = 0u32;
        let mut stored = 0;
        let mut batch: Vec<(PieceIndex, Vec<u8>)> = Vec::with_capacity(per_batch);
        loop {
            let piece = pieces.next_piece().map_err(PutError::Read)?;
            let end = piece.is_none();
            if let Some(p) = piece {
                batch.push((index, p.to_vec()));
                index += 1;
            }
            if batch.len() == per_batch || (end && !batch.is_empty()) {
                let refs: Vec<_> = batch.iter().map(|(i, d)| (*id, *i, &d[..])).collect();
                for r in self.put_pieces(&refs)? {
                    if r? != Put::AlreadyHad {
                        stored += 1;
                    }
                }
                batch.clear();
            }
            if end {
                break;
            }
        }
        if index != vm.piece_count() {
            return Err(PutError::Read(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("content ended after {index} of {} pieces", vm.piece_count()),
            )));
        }
        Ok(stored)
    }

    /// Checks the whole store: every bitfield bit has a piece that verifies, no data file or
    /// table entry outlives its bundle record, and the counters match. Returns the number of
    /// pieces checked. (Bytes in a data file without their bit are an uncommitted batch's,
    /// and allowed.)
    pub fn verify_all(&mut self) -> Result<u64, StoreError> {
        let recs = self.records()?;
        if let Some(cached) = self.usage_cache {
            let real = usage_of(&recs);
            if (cached.total, cached.carry) != (real.total, real.carry) {
                let id = recs.first().map_or(BundleId([0; 32]), |(id, _)| *id);
                return Err(corrupt(
                    id,
                    "usage",
                    format!("cached {cached:?}, real {real:?}"),
                ));
            }
        }
        let known: std::collections::HashSet<BundleId> = recs.iter().map(|(id, _)| *id).collect();
        {
            // Nothing may outlive its bundle record.
            if let Some((name, _)) = self.orphan_files(&recs)?.into_iter().next() {
                let id = name.parse().unwrap_or(BundleId([0; 32]));
                return Err(corrupt(id, "piece", "stored without a bundle record"));
            }
            let txn = self.db()?.begin_read()?;
            for (table, what) in [(MANIFESTS, "manifest"), (BITFIELDS, "bitfield")] {
                for entry in txn.open_table(table)?.iter()? {
                    let id = BundleId(*entry?.0.value());
                    if !known.contains(&id) {
                        return Err(corrupt(id, what, "stored without a bundle record"));
                    }
                }
            }
        }
        let mut checked = 0;
        for (id, rec) in recs {
            let bytes = {
                let txn = self.db()?.begin_read()?;
                let table = txn.open_table(MANIFESTS)?;
                let v = table.get(&id.0)?;
                v.map(|v| v.value().to_vec())
                    .ok_or_else(|| corrupt(id, "manifest", "missing"))?
            };
            // Full verification here, signature included, and the id must match.
            let vm = VerifiedManifest::decode(&bytes).map_err(|e| corrupt(id, "manifest", e))?;
            if vm.id() != id {
                return Err(corrupt(id, "manifest", "stored under the wrong id"));
            }
            let bf = self
                .bitfield(&id)?
                .ok_or_else(|| corrupt(id, "bitfield", "missing"))?;
            let mut bytes = 0;
            for index in (0..vm.piece_count()).filter(|&i| bf.get(i)) {
                let data = self
                    .read_claimed(&vm, index)?
                    .ok_or_else(|| corrupt(id, "piece", "claimed but unreadable"))?;
                verify_piece(&vm, index, &data).map_err(|e| corrupt(id, "piece", e))?;
                bytes += data.len() as u64;
                checked += 1;
            }
            if rec.have != bf.count() || rec.bytes != bytes {
                return Err(corrupt(id, "record", "counters do not match the pieces"));
            }
            if bf.is_complete() == (rec.state == State::Incomplete) {
                return Err(corrupt(id, "record", "state does not match the bitfield"));
            }
        }
        Ok(checked)
    }

    /// Records where a bundle was exported.
    pub fn record_export(&mut self, id: &BundleId, path: &Path) -> Result<(), StoreError> {
        let p = path.to_string_lossy().into_owned();
        self.update_record(id, |rec| {
            rec.export_path = Some(p);
            Ok::<(), ()>(())
        })
        .map(|_| ())
    }

    /// Records that the bundle is installed (export done, on-complete command and health
    /// check succeeded). For a numbered release the lineage's installed release (rollback
    /// protection) moves up in the same transaction, so a crash cannot separate the two.
    pub fn record_installed(&mut self, id: &BundleId) -> Result<(), StoreError> {
        let vm = self.manifest(id)?.ok_or(StoreError::UnknownBundle(*id))?;
        let m = vm.manifest();
        let txn = self.begin_write()?;
        {
            let mut table = txn.open_table(BUNDLES)?;
            let mut rec = Self::record_in(&table, id)?.ok_or(StoreError::UnknownBundle(*id))?;
            rec.state = State::Installed;
            rec.failure = None;
            table.insert(&id.0, rec.encode().as_slice())?;
            if m.is_numbered() {
                let mut lineages = txn.open_table(LINEAGES)?;
                let key = m.release_lineage().key();
                let mut l = match lineages.get(key.as_slice())? {
                    Some(v) => {
                        LineageRecord::decode(v.value()).map_err(|e| corrupt(*id, "lineage", e))?
                    }
                    None => LineageRecord::default(),
                };
                if m.release > l.installed {
                    l.installed = m.release;
                    l.installed_id = Some(*id);
                    l.installed_export = rec.export_path.clone();
                    l.newest = l.newest.max(m.release);
                }
                lineages.insert(key.as_slice(), l.encode().as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Records that the bundle failed its health check after installing and was rolled back
    /// (`message` says why and to what). It is not retried automatically.
    pub fn record_rolled_back(
        &mut self,
        id: &BundleId,
        message: &str,
        at: u64,
    ) -> Result<(), StoreError> {
        let release = self.manifest(id)?.map_or(0, |vm| vm.manifest().release);
        self.record_failure(id, message, at)?;
        self.update_record(id, |rec| {
            rec.state = State::RolledBack;
            Ok::<(), ()>(())
        })?
        .ok();
        self.push_event(ReleaseEvent::RolledBack {
            bundle: *id,
            release,
        });
        Ok(())
    }

    /// Records a failed export or on-complete command at `at` (unix seconds).
    pub fn record_failure(
        &mut self,
        id: &BundleId,
        message: &str,
        at: u64,
    ) -> Result<(), StoreError> {
        // Bound what a chatty command can put into the store.
        let mut message = message.to_owned();
        if message.len() > 4096 {
            let mut cut = 4096;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        self.update_record(id, |rec| {
            let attempts = rec.failure.as_ref().map_or(0, |f| f.attempts) + 1;
            rec.state = State::Failed;
            rec.failure = Some(Failure {
                at,
                attempts,
                message,
            });
            Ok::<(), ()>(())
        })
        .map(|_| ())
    }

    /// Clears a failure so the bundle is retried at once (the operator's explicit trigger).
    pub fn retry(&mut self, id: &BundleId) -> Result<(), StoreError> {
        self.update_record(id, |rec| {
            if matches!(rec.state, State::Failed | State::RolledBack) {
                rec.state = State::Complete;
                if let Some(f) = &mut rec.failure {
                    f.at = 0;
                }
            }
            Ok::<(), ()>(())
        })
        .map(|_| ())
    }
}

fn usage_of(recs: &[(BundleId, Record)]) -> Usage {
    let mut u = Usage {
        bundles: recs.len(),
        ..Usage::default()
    };
    for (_, r) in recs {
        u.total += r.bytes;
        if !r.trusted {
            u.carry += r.bytes;
        }
    }
    u
}

/// One verification result per piece of a batch, and the manifests of its bundles.
type VerifiedBatch = (
    Vec<Result<Put, PutError>>,
    HashMap<BundleId, VerifiedManifest>,
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::MIN_PIECE_SIZE;
    use crate::manifest::tests::{key, manifest_for};
    use std::sync::atomic::{AtomicU64, Ordering};

    const PS: u32 = MIN_PIECE_SIZE;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        time: Arc<AtomicU64>,
    }

    fn options(quota: u64, carry: u64, time: &Arc<AtomicU64>) -> StoreOptions {
        let t = time.clone();
        StoreOptions {
            quota_bytes: quota,
            carry_quota_bytes: carry,
            carry_untrusted: true,
            trust: [key(1).verifying_key().to_bytes()].into_iter().collect(),
            clock: Arc::new(move || t.load(Ordering::SeqCst)),
            ..StoreOptions::default()
        }
    }

    fn fixture(quota: u64, carry: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let time = Arc::new(AtomicU64::new(1_700_000_100));
        let store = Store::open(dir.path(), options(quota, carry, &time)).unwrap();
        Fixture {
            _dir: dir,
            store,
            time,
        }
    }

    fn content(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn bundle(seed: u8, len: usize, signer: u8, prio: Priority) -> (VerifiedManifest, Vec<u8>) {
        let c = content(seed, len);
        let mut m = manifest_for(&c, PS, &key(signer));
        m.priority = prio;
        m.name = format!("b{seed}");
        (m.sign(&key(signer)).unwrap(), c)
    }

    fn fill(store: &mut Store, vm: &VerifiedManifest, c: &[u8]) {
        store.put_content(&vm.id(), c).unwrap();
        assert!(store.is_complete(&vm.id()).unwrap());
    }

    #[test]
    fn batch_put_keeps_good_pieces_and_rejects_bad_ones() {
        let mut f = fixture(1 << 30, 0);
        let (vm, c) = bundle(1, 3 * PS as usize + 100, 1, Priority::Normal);
        let id = vm.id();
        assert_eq!(
            f.store.insert_manifest(&vm, Origin::Received).unwrap(),
            Inserted::New
        );
        assert_eq!(
            f.store.insert_manifest(&vm, Origin::Received).unwrap(),
            Inserted::AlreadyPresent
        );
        let p = |i: usize| &c[i * PS as usize..((i + 1) * PS as usize).min(c.len())];
        let mut flipped = p(1).to_vec();
        flipped[100] ^= 0x10;
        let unknown = BundleId([9; 32]);
        let r = f
            .store
            .put_pieces(&[
                (id, 0, p(0)),
                (id, 1, &flipped),
                (id, 3, &p(3)[..50]),
                (unknown, 0, p(0)),
                (id, 7, p(0)),
                (id, 2, p(2)),
            ])
            .unwrap();
        assert!(matches!(r[0], Ok(Put::Stored)));
        assert!(matches!(
            r[1],
            Err(PutError::Piece(PieceError::HashMismatch { index: 1 }))
        ));
        assert!(matches!(
            r[2],
            Err(PutError::Piece(PieceError::WrongLength { index: 3, .. }))
        ));
        assert!(matches!(r[3], Err(PutError::UnknownBundle(u)) if u == unknown));
        assert!(matches!(
            r[4],
            Err(PutError::Piece(PieceError::NoSuchPiece { .. }))
        ));
        assert!(matches!(r[5], Ok(Put::Stored)));
        let bf = f.store.bitfield(&id).unwrap().unwrap();
        assert_eq!(bf.iter_present().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(f.store.read_piece(&id, 1).unwrap(), None);
        assert_eq!(f.store.read_piece(&id, 2).unwrap().unwrap(), p(2));
        assert_eq!(f.store.verify_all().unwrap(), 2);

        // A batch made only of bad pieces changes nothing.
        let before = f.store.bundles().unwrap();
        let r = f.store.put_pieces(&[(id, 1, &flipped)]).unwrap();
        assert!(r[0].is_err());
        assert_eq!(f.store.bundles().unwrap(), before);

        assert!(matches!(
            f.store.put_piece(&id, 0, p(0)),
            Ok(Put::AlreadyHad)
        ));
        assert!(matches!(f.store.put_piece(&id, 1, p(1)), Ok(Put::Stored)));
        assert!(matches!(
            f.store.put_piece(&id, 3, p(3)),
            Ok(Put::Completed)
        ));
        let info = f.store.info(&id).unwrap().unwrap();
        assert_eq!(info.state, State::Complete);
        assert_eq!(info.pieces_have, 4);
        assert_eq!(info.bytes, c.len() as u64);
        assert_eq!(f.store.usage().unwrap().total, c.len() as u64);
        assert_eq!(f.store.verify_all().unwrap(), 4);
    }

    #[test]
    fn reopen_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let time = Arc::new(AtomicU64::new(1_700_000_100));
        let (vm, c) = bundle(2, 5 * PS as usize, 1, Priority::High);
        {
            let mut s = Store::open(dir.path(), options(1 << 30, 0, &time)).unwrap();
            s.insert_manifest(&vm, Origin::Received).unwrap();
            s.set_wanted(&vm.id(), true).unwrap();
            s.put_pieces(&[(vm.id(), 4, &c[4 * PS as usize..])])
                .unwrap();
            // Still open: a second open is refused.
            assert!(matches!(
                Store::open(dir.path(), options(1 << 30, 0, &time)),
                Err(StoreError::Locked(_))
            ));
        }
        let mut s = Store::open(dir.path(), options(1 << 30, 0, &time)).unwrap();
        let info = s.info(&vm.id()).unwrap().unwrap();
        assert!(info.wanted && info.trusted && !info.published);
        assert_eq!(info.pieces_have, 1);
        assert_eq!(s.manifest(&vm.id()).unwrap().unwrap(), vm);
        assert!(s.remove(&vm.id()).unwrap());
        assert!(!s.remove(&vm.id()).unwrap());
        assert_eq!(s.read_piece(&vm.id(), 4).unwrap(), None);
        assert!(s.bundles().unwrap().is_empty());
        s.verify_all().unwrap();
        // Data without its bundle (what a crash between a removal's commit and the file's
        // deletion leaves) is caught, and deleted at the next open.
        let orphan = dir.path().join("store.pieces").join(vm.id().to_string());
        std::fs::write(&orphan, &c[4 * PS as usize..]).unwrap();
        assert!(matches!(
            s.verify_all(),
            Err(StoreError::Corrupt { what: "piece", .. })
        ));
        drop(s);
        let mut s = Store::open(dir.path(), options(1 << 30, 0, &time)).unwrap();
        assert!(!orphan.exists());
        s.verify_all().unwrap();
        drop(s);

        // A manifest altered on disk (last signature byte) is caught by the full check.
        let (vm2, _) = bundle(3, PS as usize, 1, Priority::Normal);
        let mut s2 = {
            let dir2 = dir.path().join("second");
            Store::open(&dir2, options(1 << 30, 0, &time)).unwrap()
        };
        s2.insert_manifest(&vm2, Origin::Received).unwrap();
        s2.verify_all().unwrap();
        let mut bytes = vm2.to_bytes();
        *bytes.last_mut().unwrap() ^= 1;
        let txn = s2.db().unwrap().begin_write().unwrap();
        txn.open_table(MANIFESTS)
            .unwrap()
            .insert(&vm2.id().0, bytes.as_slice())
            .unwrap();
        txn.commit().unwrap();
        assert!(matches!(
            s2.verify_all(),
            Err(StoreError::Corrupt {
                what: "manifest",
                ..
            })
        ));
    }

    /// A numbered release of lineage (key(1), "fw") with `len` bytes of content `seed`.
    fn release(n: u64, seed: u8, len: usize) -> (VerifiedManifest, Vec<u8>) {
        let c = content(seed, len);
        let mut m = manifest_for(&c, PS, &key(1));
        m.name = "fw".into();
        m.release = n;
        (m.sign(&key(1)).unwrap(), c)
    }

    /// A bundle named `name` by `signer` that names `replaced` replaced (a rename).
    fn renamed(name: &str, signer: u8, replaced: &[BundleId]) -> VerifiedManifest {
        let c = content(40, 100);
        let mut m = manifest_for(&c, PS, &key(signer));
        m.name = name.into();
        m.release = 1;
        m.lineage = replaced.to_vec();
        m.sign(&key(signer)).unwrap()
    }

    #[test]
    fn a_rename_by_the_same_key_supersedes_in_either_order_and_another_key_cannot() {
        let (r1, _) = release(1, 1, 100);
        // Replacer first, replaced later.
        let mut f = fixture(1 << 30, 0);
        f.store
            .insert_manifest(&renamed("firmware", 1, &[r1.id()]), Origin::Received)
            .unwrap();
        f.store.insert_manifest(&r1, Origin::Received).unwrap();
        f.store.set_wanted(&r1.id(), true).unwrap();
        let i = f.store.info(&r1.id()).unwrap().unwrap();
        assert!(i.superseded && !i.wanted, "{i:?}");
        // Replaced first, replacer later.
        let mut f = fixture(1 << 30, 0);
        f.store.insert_manifest(&r1, Origin::Received).unwrap();
        f.store.set_wanted(&r1.id(), true).unwrap();
        f.store
            .insert_manifest(&renamed("firmware", 1, &[r1.id()]), Origin::Received)
            .unwrap();
        let i = f.store.info(&r1.id()).unwrap().unwrap();
        assert!(i.superseded && !i.wanted, "{i:?}");
        // An untrusted key (carried only) naming it replaced changes nothing, in either
        // order; nor does a trusted manifest naming another publisher's bundle.
        let mut f = fixture(1 << 30, 0);
        f.store
            .insert_manifest(&renamed("evil", 2, &[r1.id()]), Origin::Received)
            .unwrap();
        f.store.insert_manifest(&r1, Origin::Received).unwrap();
        assert!(!f.store.info(&r1.id()).unwrap().unwrap().superseded);
        let (other, _) = bundle(5, 100, 2, Priority::Normal);
        f.store.insert_manifest(&other, Origin::Received).unwrap();
        f.store
            .insert_manifest(
                &renamed("b5-new", 1, &[other.id(), r1.id()]),
                Origin::Received,
            )
            .unwrap();
        assert!(!f.store.info(&other.id()).unwrap().unwrap().superseded);
        assert!(f.store.info(&r1.id()).unwrap().unwrap().superseded);
    }

    #[test]
    fn equivocation_is_refused_at_publish_and_flagged_from_the_network() {
        let mut f = fixture(1 << 30, 0);
        let (r1, _) = release(1, 1, 100);
        let (r1_other, _) = release(1, 2, 100);
        f.store.insert_manifest(&r1, Origin::Published).unwrap();
        // Publishing a second bundle with the same lineage and release is refused.
        assert!(matches!(
            f.store.insert_manifest(&r1_other, Origin::Published),
            Err(StoreError::Equivocation { release: 1, existing, .. }) if existing == r1.id()
        ));
        // The same bundle again is fine.
        f.store.insert_manifest(&r1, Origin::Published).unwrap();
        assert_eq!(
            f.store
                .newest_release(&r1.manifest().release_lineage())
                .unwrap(),
            1
        );

        // From the network: stored, both flagged, neither wanted nor installable.
        let mut g = fixture(1 << 30, 0);
        g.store.insert_manifest(&r1, Origin::Received).unwrap();
        g.store.set_wanted(&r1.id(), true).unwrap();
        assert!(g.store.info(&r1.id()).unwrap().unwrap().wanted);
        g.store
            .insert_manifest(&r1_other, Origin::Received)
            .unwrap();
        for id in [r1.id(), r1_other.id()] {
            g.store.set_wanted(&id, true).unwrap();
            let info = g.store.info(&id).unwrap().unwrap();
            assert!(info.equivocal && !info.wanted, "{info:?}");
            assert_eq!(
                g.store.release_block(&id).unwrap(),
                Some(Block::Equivocal { release: 1 })
            );
        }
        assert_eq!(
            g.store.take_release_events(),
            vec![ReleaseEvent::Equivocation {
                lineage: r1.manifest().release_lineage(),
                release: 1,
                bundles: [r1.id(), r1_other.id()],
            }]
        );
        let l = g.store.lineages().unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(
            (l[0].name.as_str(), l[0].equivocal.as_slice()),
            ("fw", &[1][..])
        );
        assert_eq!(
            l[0].publisher,
            hex::encode(key(1).verifying_key().to_bytes())
        );
    }

    #[test]
    fn newer_release_supersedes_and_older_after_install_is_a_refused_rollback() {
        let mut f = fixture(1 << 30, 0);
        let (r1, c1) = release(1, 1, 3 * PS as usize);
        let (r2, c2) = release(2, 2, 3 * PS as usize);
        let (r3, _) = release(3, 3, 100);
        f.store.insert_manifest(&r1, Origin::Received).unwrap();
        f.store.set_wanted(&r1.id(), true).unwrap();
        fill(&mut f.store, &r1, &c1);
        // Release 2's manifest alone supersedes release 1.
        f.store.insert_manifest(&r2, Origin::Received).unwrap();
        f.store.set_wanted(&r2.id(), true).unwrap();
        let i1 = f.store.info(&r1.id()).unwrap().unwrap();
        assert!(i1.superseded && !i1.wanted);
        assert_eq!(
            f.store.release_block(&r1.id()).unwrap(),
            Some(Block::Superseded {
                release: 1,
                newest: 2
            })
        );
        assert_eq!(f.store.release_block(&r2.id()).unwrap(), None);
        // Re-wanting it (a subscription change) leaves it unwanted, without an error.
        f.store.set_wanted(&r1.id(), true).unwrap();
        assert!(!f.store.info(&r1.id()).unwrap().unwrap().wanted);

        fill(&mut f.store, &r2, &c2);
        f.store
            .record_export(&r2.id(), Path::new("/x/fw-2"))
            .unwrap();
        f.store.record_installed(&r2.id()).unwrap();
        assert!(f.store.take_release_events().is_empty());
        // Release 1 again (say, re-published after release 2): a refused rollback, counted.
        f.store.remove(&r1.id()).unwrap();
        f.store.insert_manifest(&r1, Origin::Received).unwrap();
        assert_eq!(
            f.store.release_block(&r1.id()).unwrap(),
            Some(Block::Rollback {
                release: 1,
                installed: 2
            })
        );
        assert!(matches!(
            f.store.take_release_events()[..],
            [ReleaseEvent::RollbackRefused {
                release: 1,
                installed: 2,
                ..
            }]
        ));
        let lineage = r2.manifest().release_lineage();
        assert_eq!(
            f.store.installed_release(&lineage).unwrap(),
            Some((r2.id(), 2, PathBuf::from("/x/fw-2")))
        );
        // The installed release survives a reopen (crash-safe: same commit as the record).
        let dir = f._dir.path().to_owned();
        drop(f.store);
        let mut s = Store::open(&dir, options(1 << 30, 0, &f.time)).unwrap();
        assert_eq!(s.lineages().unwrap()[0].installed, 2);
        assert_eq!(s.lineages().unwrap()[0].rollback_refused, 1);
        s.insert_manifest(&r3, Origin::Received).unwrap();
        assert_eq!(s.release_block(&r3.id()).unwrap(), None);
        assert!(s.info(&r2.id()).unwrap().unwrap().superseded);
    }

    #[test]
    fn superseded_releases_are_evicted_before_anything_else() {
        // Room for two bundles of 3 pieces.
        let mut f = fixture(6 * PS as u64, 0);
        let (old, c_old) = release(1, 1, 3 * PS as usize);
        let (carried, c_carried) = bundle(9, 3 * PS as usize, 1, Priority::Bulk);
        f.store.insert_manifest(&old, Origin::Received).unwrap();
        f.store.set_wanted(&old.id(), true).unwrap();
        fill(&mut f.store, &old, &c_old);
        f.store.insert_manifest(&carried, Origin::Received).unwrap();
        fill(&mut f.store, &carried, &c_carried);
        // Release 2 arrives: release 1, wanted until now and more urgent than the carried
        // bulk bundle, goes first.
        let (new, c_new) = release(2, 2, 3 * PS as usize);
        f.store.insert_manifest(&new, Origin::Received).unwrap();
        f.store.set_wanted(&new.id(), true).unwrap();
        fill(&mut f.store, &new, &c_new);
        assert_eq!(f.store.take_evicted(), vec![old.id()]);
        assert!(f.store.info(&carried.id()).unwrap().is_some());
    }

    #[test]
    fn a_format_2_store_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let time = Arc::new(AtomicU64::new(1_700_000_100));
        let (vm, _) = bundle(4, 100, 1, Priority::Normal);
        {
            let mut s = Store::open(dir.path(), options(1 << 30, 0, &time)).unwrap();
            s.insert_manifest(&vm, Origin::Received).unwrap();
            // Write it back as format 2 left it: 11-field records, no release tables.
            let db = s.db().unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(BUNDLES).unwrap();
                let rec = t.get(&vm.id().0).unwrap().unwrap().value().to_vec();
                assert_eq!((rec[0], rec[rec.len() - 1]), (0x8c, 0));
                let mut old = rec[..rec.len() - 1].to_vec();
                old[0] = 0x8b;
                t.insert(&vm.id().0, old.as_slice()).unwrap();
                txn.open_table(META).unwrap().insert("format", 2).unwrap();
            }
            txn.delete_table(LINEAGES).unwrap();
            txn.delete_table(RELEASES).unwrap();
            txn.commit().unwrap();
        }
        let mut s = Store::open(dir.path(), options(1 << 30, 0, &time)).unwrap();
        let info = s.info(&vm.id()).unwrap().unwrap();
        assert!(!info.superseded && info.release == 1);
        s.set_wanted(&vm.id(), true).unwrap();
        s.verify_all().unwrap();
        let txn = s.db().unwrap().begin_read().unwrap();
        let format = txn
            .open_table(META)
            .unwrap()
            .get("format")
            .unwrap()
            .unwrap()
            .value();
        assert_eq!(format, STORE_FORMAT);
    }

    #[test]
    fn other_format_versions_are_refused() {
        // 1: pieces inside redb (before the data files); 4: from the future. (2 is migrated.)
        for found in [0u64, 1, 4] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(STORE_FILE_NAME);
            drop(Store::open(dir.path(), StoreOptions::default()).unwrap());
            {
                let db = Database::create(&path).unwrap();
                let txn = db.begin_write().unwrap();
                txn.open_table(META)
                    .unwrap()
                    .insert("format", found)
                    .unwrap();
                txn.commit().unwrap();
            }
            let e = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
            assert!(
                matches!(e, StoreError::UnsupportedFormat { found: f, supported: STORE_FORMAT, .. } if f == found),
                "{e}"
            );
            assert!(e.to_string().contains(&format!("format version {found}")));
        }
        // A redb file that is not a Mule store.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE_NAME);
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            let t: TableDefinition<u64, u64> = TableDefinition::new("something_else");
            txn.open_table(t).unwrap().insert(1, 2).unwrap();
            txn.commit().unwrap();
        }
        assert!(matches!(
            Store::open(dir.path(), StoreOptions::default()),
            Err(StoreError::NotAStore(_))
        ));
        // Not a database at all.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STORE_FILE_NAME), vec![0x55; 10_000]).unwrap();
        assert!(Store::open(dir.path(), StoreOptions::default()).is_err());
    }

    #[test]
    fn trust_rules() {
        let mut f = fixture(1 << 30, 3 * PS as u64);
        let (trusted, _) = bundle(1, PS as usize, 1, Priority::Normal);
        let (untrusted, uc) = bundle(2, 5 * PS as usize, 2, Priority::Normal);
        f.store.insert_manifest(&trusted, Origin::Received).unwrap();
        f.store
            .insert_manifest(&untrusted, Origin::Received)
            .unwrap();
        assert!(f.store.set_wanted(&trusted.id(), true).is_ok());
        assert!(matches!(
            f.store.set_wanted(&untrusted.id(), true),
            Err(StoreError::Untrusted { .. })
        ));
        // Carried only within the carry quota: the batch keeps what fits, the rest is refused.
        let r = f.store.put_content(&untrusted.id(), &uc[..]);
        assert!(
            matches!(r, Err(PutError::Full(StoreFull { which: "carry", .. }))),
            "{r:?}"
        );
        assert_eq!(
            f.store.bitfield(&untrusted.id()).unwrap().unwrap().count(),
            3
        );
        assert!(matches!(
            f.store
                .put_piece(&untrusted.id(), 3, &uc[3 * PS as usize..4 * PS as usize]),
            Err(PutError::Full(StoreFull { which: "carry", .. }))
        ));
        assert_eq!(f.store.usage().unwrap().carry, 3 * PS as u64);

        // With carrying off, untrusted manifests are refused.
        let mut opts = f.store.options().clone();
        opts.carry_untrusted = false;
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), opts).unwrap();
        assert!(matches!(
            s.insert_manifest(&untrusted, Origin::Received),
            Err(StoreError::Untrusted { .. })
        ));
        // Our own bundles are trusted whatever the list says.
        s.insert_manifest(&untrusted, Origin::Published).unwrap();
        assert!(s.info(&untrusted.id()).unwrap().unwrap().trusted);
        // Dropping a key from the trust list un-trusts and un-wants.
        f.store.set_trust(TrustList::new()).unwrap();
        let info = f.store.info(&trusted.id()).unwrap().unwrap();
        assert!(!info.trusted && !info.wanted);
    }

    #[test]
    fn eviction_order_and_protection() {
        let ps = PS as u64;
        let mut f = fixture(8 * ps, 8 * ps);
        let now = f.time.load(Ordering::SeqCst);
        // Two pieces each.
        let mk = |seed: u8, prio: Priority, expires: Option<u64>| {
            let c = content(seed, 2 * PS as usize);
            let mut m = manifest_for(&c, PS, &key(1));
            m.priority = prio;
            m.name = format!("b{seed}");
            m.expires = expires;
            m.created = now - 10;
            (m.sign(&key(1)).unwrap(), c)
        };
        let published = mk(1, Priority::Bulk, None);
        let wanted = mk(2, Priority::Bulk, None);
        let bulk = mk(3, Priority::Bulk, None);
        let expiring = mk(4, Priority::Critical, Some(now + 5));
        let s = &mut f.store;
        s.insert_manifest(&published.0, Origin::Published).unwrap();
        fill(s, &published.0, &published.1);
        for b in [&wanted, &bulk, &expiring] {
            s.insert_manifest(&b.0, Origin::Received).unwrap();
            fill(s, &b.0, &b.1);
        }
        s.set_wanted(&wanted.0.id(), true).unwrap();
        assert_eq!(s.usage().unwrap().total, 8 * ps);

        // Expiry passes: the expired critical bundle goes first, before the bulk one.
        f.time.store(now + 10, Ordering::SeqCst);
        let normal = mk(5, Priority::Normal, None);
        s.insert_manifest(&normal.0, Origin::Received).unwrap();
        s.put_piece(&normal.0.id(), 0, &normal.1[..PS as usize])
            .unwrap();
        assert!(s.info(&expiring.0.id()).unwrap().is_none());
        assert!(s.info(&bulk.0.id()).unwrap().is_some());
        assert_eq!(s.take_evicted(), vec![expiring.0.id()]);
        assert!(s.take_evicted().is_empty());
        // Evicted means gone entirely: no piece left behind.
        assert_eq!(s.read_piece(&expiring.0.id(), 0).unwrap(), None);
        s.verify_all().unwrap();
        s.put_piece(&normal.0.id(), 1, &normal.1[PS as usize..])
            .unwrap();
        assert_eq!(s.usage().unwrap().total, 8 * ps);

        // Next: the unwanted bulk bundle (less urgent than the incoming normal one).
        f.time.store(now + 12, Ordering::SeqCst);
        let normal2 = mk(6, Priority::Normal, None);
        s.insert_manifest(&normal2.0, Origin::Received).unwrap();
        s.put_piece(&normal2.0.id(), 0, &normal2.1[..PS as usize])
            .unwrap();
        assert!(s.info(&bulk.0.id()).unwrap().is_none());
        s.put_piece(&normal2.0.id(), 1, &normal2.1[PS as usize..])
            .unwrap();

        // A bulk piece may not evict the normal bundles; published and wanted are protected:
        // the store is full and says so, and nothing is lost.
        let bulk2 = mk(7, Priority::Bulk, None);
        s.insert_manifest(&bulk2.0, Origin::Received).unwrap();
        let before = s.bundles().unwrap().len();
        let e = s
            .put_piece(&bulk2.0.id(), 0, &bulk2.1[..PS as usize])
            .unwrap_err();
        assert!(
            matches!(e, PutError::Full(StoreFull { which: "total", .. })),
            "{e}"
        );
        assert_eq!(s.bundles().unwrap().len(), before);
        assert_eq!(s.verify_all().unwrap(), 8);
        assert_eq!(s.usage().unwrap().total, 8 * ps);
        for b in [&published, &wanted] {
            assert!(s.is_complete(&b.0.id()).unwrap());
        }
        // A critical piece may evict a normal unwanted bundle (the oldest first).
        let crit = mk(8, Priority::Critical, None);
        s.insert_manifest(&crit.0, Origin::Received).unwrap();
        f.time.store(now + 20, Ordering::SeqCst);
        s.put_piece(&crit.0.id(), 0, &crit.1[..PS as usize])
            .unwrap();
        assert!(s.info(&normal.0.id()).unwrap().is_none());
        assert!(s.info(&normal2.0.id()).unwrap().is_some());
    }

    #[test]
    fn expired_and_too_many_bundles_refused() {
        let mut f = fixture(1 << 30, 0);
        let (vm, _) = bundle(1, 100, 1, Priority::Normal);
        f.time.store(1_800_000_000, Ordering::SeqCst);
        assert!(matches!(
            f.store.insert_manifest(&vm, Origin::Received),
            Err(StoreError::Expired(_))
        ));
        let mut opts = f.store.options().clone();
        opts.max_bundles = 1;
        opts.clock = Arc::new(|| 0);
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), opts).unwrap();
        s.insert_manifest(&vm, Origin::Received).unwrap();
        let (vm2, _) = bundle(2, 100, 1, Priority::Normal);
        assert!(matches!(
            s.insert_manifest(&vm2, Origin::Received),
            Err(StoreError::TooManyBundles(1))
        ));
    }

    #[test]
    fn failures_are_recorded_and_retry_clears_backoff() {
        let mut f = fixture(1 << 30, 0);
        let (vm, c) = bundle(1, 100, 1, Priority::Normal);
        f.store.insert_manifest(&vm, Origin::Received).unwrap();
        fill(&mut f.store, &vm, &c);
        f.store
            .record_failure(&vm.id(), "exit 3: boom", 50)
            .unwrap();
        f.store
            .record_failure(&vm.id(), "exit 3: boom", 60)
            .unwrap();
        let info = f.store.info(&vm.id()).unwrap().unwrap();
        assert_eq!(info.state, State::Failed);
        let fail = info.failure.unwrap();
        assert_eq!((fail.at, fail.attempts), (60, 2));
        f.store.retry(&vm.id()).unwrap();
        assert_eq!(
            f.store.info(&vm.id()).unwrap().unwrap().state,
            State::Complete
        );
        f.store.record_installed(&vm.id()).unwrap();
        let info = f.store.info(&vm.id()).unwrap().unwrap();
        assert_eq!(info.state, State::Installed);
        assert!(info.failure.is_none());
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["id"], vm.id().to_string());
        assert_eq!(json["state"], "installed");
        assert_eq!(json["priority"], "normal");
    }

    /// Flips one byte of piece `index` in the bundle's data file, as bit rot would.
    fn rot(store: &Store, vm: &VerifiedManifest, index: PieceIndex) {
        use std::os::unix::fs::FileExt;
        let path = store.data_path(&vm.id());
        let f = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(&path)
            .unwrap();
        let at = u64::from(index) * u64::from(vm.manifest().piece_size) + 7;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
    }

    #[test]
    fn a_rotten_piece_is_dropped_when_read_and_fetched_again() {
        let mut f = fixture(1 << 30, 0);
        let (vm, c) = bundle(1, 4 * PS as usize, 1, Priority::Normal);
        let id = vm.id();
        f.store.insert_manifest(&vm, Origin::Received).unwrap();
        fill(&mut f.store, &vm, &c);
        rot(&f.store, &vm, 2);
        // Never handed out; dropped from the bitfield and reported.
        assert_eq!(f.store.read_piece(&id, 2).unwrap(), None);
        let dropped = f.store.take_dropped();
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        assert_eq!((dropped[0].bundle, dropped[0].index), (id, 2));
        assert!(f.store.take_dropped().is_empty());
        let info = f.store.info(&id).unwrap().unwrap();
        assert_eq!((info.state, info.pieces_have), (State::Incomplete, 3));
        assert_eq!(info.bytes, 3 * u64::from(PS));
        assert!(!f.store.bitfield(&id).unwrap().unwrap().get(2));
        assert_eq!(f.store.verify_all().unwrap(), 3);
        // The good pieces still read; the bad one is accepted again and completes it.
        assert_eq!(
            f.store.read_piece(&id, 1).unwrap().unwrap(),
            &c[PS as usize..2 * PS as usize]
        );
        let p2 = &c[2 * PS as usize..3 * PS as usize];
        assert!(matches!(f.store.put_piece(&id, 2, p2), Ok(Put::Completed)));
        assert_eq!(f.store.read_piece(&id, 2).unwrap().unwrap(), p2);
        assert_eq!(f.store.info(&id).unwrap().unwrap().state, State::Complete);
        assert_eq!(f.store.verify_all().unwrap(), 4);
    }

    #[test]
    fn verify_bundle_names_bad_pieces_and_repair_drops_them() {
        let mut f = fixture(1 << 30, 0);
        let (vm, c) = bundle(1, 5 * PS as usize, 1, Priority::Normal);
        let id = vm.id();
        f.store.insert_manifest(&vm, Origin::Received).unwrap();
        fill(&mut f.store, &vm, &c);
        assert!(f.store.verify_bundle(&id, false).unwrap().is_empty());
        rot(&f.store, &vm, 1);
        rot(&f.store, &vm, 4);
        let bad = f.store.verify_bundle(&id, false).unwrap();
        assert_eq!(bad.iter().map(|b| b.index).collect::<Vec<_>>(), vec![1, 4]);
        assert!(bad[0].to_string().contains(&id.to_string()), "{}", bad[0]);
        // Without repair nothing changes (and the full check still fails).
        assert!(f.store.is_complete(&id).unwrap());
        assert!(f.store.take_dropped().is_empty());
        assert!(f.store.verify_all().is_err());
        let bad = f.store.verify_bundle(&id, true).unwrap();
        assert_eq!(bad.len(), 2);
        assert_eq!(f.store.take_dropped().len(), 2);
        assert_eq!(f.store.bitfield(&id).unwrap().unwrap().count(), 3);
        assert_eq!(f.store.verify_all().unwrap(), 3);
        assert!(f.store.verify_bundle(&id, false).unwrap().is_empty());
        // A data file cut short (a piece that cannot be read at all) is bad too.
        let path = f.store.data_path(&id);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(u64::from(PS) / 2)
            .unwrap();
        f.store.files.clear();
        let bad = f.store.verify_bundle(&id, true).unwrap();
        assert_eq!(
            bad.iter().map(|b| b.index).collect::<Vec<_>>(),
            vec![0, 2, 3]
        );
        assert_eq!(f.store.verify_all().unwrap(), 0);
    }

    #[test]
    fn an_installed_bundle_that_rotted_is_installed_again_once_repaired() {
        let mut f = fixture(1 << 30, 0);
        let (vm, c) = bundle(1, 3 * PS as usize, 1, Priority::Normal);
        let id = vm.id();
        f.store.insert_manifest(&vm, Origin::Received).unwrap();
        fill(&mut f.store, &vm, &c);
        f.store.record_export(&id, Path::new("/tmp/x")).unwrap();
        f.store.record_installed(&id).unwrap();
        rot(&f.store, &vm, 0);
        assert_eq!(f.store.read_piece(&id, 0).unwrap(), None);
        assert_eq!(f.store.info(&id).unwrap().unwrap().state, State::Incomplete);
        f.store.verify_all().unwrap();
        assert!(matches!(
            f.store.put_piece(&id, 0, &c[..PS as usize]),
            Ok(Put::Completed)
        ));
        // Its export is still there: not exported and installed a second time.
        assert_eq!(f.store.info(&id).unwrap().unwrap().state, State::Installed);
        f.store.verify_all().unwrap();
    }

    #[test]
    fn a_full_disk_is_told_apart_and_the_store_reopens() {
        let mut f = fixture(1 << 30, 0);
        let (vm, c) = bundle(1, 2 * PS as usize, 1, Priority::Normal);
        let id = vm.id();
        f.store.insert_manifest(&vm, Origin::Received).unwrap();
        // Writes to /dev/full fail with ENOSPC, like a full file system.
        let path = f.store.data_path(&id);
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let e = f
            .store
            .put_pieces(&[(id, 0, &c[..PS as usize])])
            .unwrap_err();
        assert!(e.is_no_space(), "{e}");
        assert!(!e.to_string().contains("create data directory"), "{e}");
        assert_eq!(f.store.bitfield(&id).unwrap().unwrap().count(), 0);
        // Space returns: the same put succeeds, after a reopen too.
        std::fs::remove_file(&path).unwrap();
        f.store.reopen().unwrap();
        assert!(!f.store.is_closed());
        assert!(matches!(
            f.store.put_piece(&id, 0, &c[..PS as usize]),
            Ok(Put::Stored)
        ));
        assert_eq!(f.store.verify_all().unwrap(), 1);
        let other = StoreError::TooManyBundles(1);
        assert!(!other.is_no_space() && !other.needs_reopen());
    }

    #[test]
    fn store_is_send() {
        fn is_send<T: Send>() {}
        is_send::<Store>();
    }
}
