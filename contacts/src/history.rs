//! Contact history in redb: every contact with every peer, and statistics derived from it.
//!
//! The history lives in one table of a redb database the caller owns (the node's database, or
//! a file of its own via [`History::open`]): table `contacts_v1`, key `(peer id, start ms)`,
//! value a fixed 33-byte record `[format 1][end ms u64][transport u8][bytes sent u64]
//! [bytes received u64][flags u8][6 reserved zero bytes]` (little endian; flag bit 0: the
//! contact was seen by discovery). A new format gets a new table name. A second table,
//! `peers_v1`, indexes the peers: key peer id, value `[flags u8][contacts u32][last seen ms
//! u64][3 reserved zero bytes]` (flag bit 0: some contact was seen by discovery); it is
//! rebuilt from `contacts_v1` when missing.
//!
//! Write a contact when it starts (`end == start`) and again when it ends: [`History::record`]
//! is an upsert keyed by `(peer, start)`. At most `max_per_peer` contacts are kept per peer
//! (oldest dropped first) and at most `max_peers` peers: when a new peer goes beyond that,
//! a whole peer is forgotten, *strangers first* (peers never seen by discovery, such as nodes
//! that only dialled us), then those with the fewest contacts, then the least recently seen.
//! So a neighbour churning through fresh keys evicts only its own throw-away ids, never the
//! history of the nodes this one really meets.
//!
//! Calls are blocking (redb commits fsync with `Durability::Immediate`); from async code run
//! them on a blocking thread. Statistics are computed by the pure [`Stats::from_contacts`], so
//! the simulator can use them without a database.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::NodeId;
use crate::neighbours::Transport;
use crate::prediction::{self, Forecast, Span};
use crate::time::Timestamp;

const CONTACTS: TableDefinition<([u8; 32], u64), [u8; 33]> = TableDefinition::new("contacts_v1");
const PEERS: TableDefinition<[u8; 32], [u8; 16]> = TableDefinition::new("peers_v1");
const FORMAT: u8 = 1;
const DISCOVERED: u8 = 1;

/// Errors of the history store.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The database failed.
    #[error("contact history database: {0}")]
    Db(#[from] redb::Error),
    /// A stored record has a format this build does not know.
    #[error("contact history record for {peer} at {start} has unknown format {format}")]
    BadRecord {
        /// Peer of the record.
        peer: NodeId,
        /// Start of the record (ms).
        start: u64,
        /// Format byte found.
        format: u8,
    },
}

/// One contact with a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contact {
    /// The peer.
    pub peer: NodeId,
    /// When the contact started.
    pub start: Timestamp,
    /// When it ended (equal to `start` while it is going on).
    pub end: Timestamp,
    /// How the peer was reached.
    pub transport: Transport,
    /// Bytes we sent during the contact.
    pub bytes_sent: u64,
    /// Bytes we received during the contact.
    pub bytes_received: u64,
    /// Whether the peer is known to this node: seen by discovery, or a configured static
    /// peer (false: it only dialled us). Peers never known so are evicted first.
    pub discovered: bool,
}

impl Contact {
    /// The contact's length.
    pub fn duration(&self) -> Duration {
        self.end.since(self.start)
    }
}

/// Statistics about one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Number of contacts on record.
    pub count: usize,
    /// Median contact duration.
    pub median_duration: Duration,
    /// Duration of the most recent contact.
    pub recent_duration: Duration,
    /// Median time between the end of one contact and the start of the next (None with fewer
    /// than two contacts).
    pub median_inter_contact: Option<Duration>,
    /// End of the most recent contact.
    pub last_seen: Timestamp,
    /// Total bytes exchanged (both directions).
    pub bytes: u64,
}

impl Stats {
    /// Statistics over `contacts` of one peer, sorted by start; `None` if empty.
    pub fn from_contacts(contacts: &[Contact]) -> Option<Stats> {
        let last = contacts.last()?;
        let durations: Vec<u64> = contacts
            .iter()
            .map(|c| c.duration().as_millis() as u64)
            .collect();
        let gaps: Vec<u64> = contacts
            .windows(2)
            .map(|w| w[1].start.0.saturating_sub(w[0].end.0))
            .collect();
        Some(Stats {
            count: contacts.len(),
            median_duration: Duration::from_millis(prediction::median(&durations).unwrap_or(0)),
            recent_duration: last.duration(),
            median_inter_contact: prediction::median(&gaps).map(Duration::from_millis),
            last_seen: contacts.iter().map(|c| c.end).max().unwrap_or(last.end),
            bytes: contacts
                .iter()
                .map(|c| c.bytes_sent.saturating_add(c.bytes_received))
                .fold(0u64, u64::saturating_add),
        })
    }
}

/// Opens the database again after an I/O error.
type Opener = Arc<dyn Fn() -> Result<Database, redb::Error> + Send + Sync>;

/// The contact history store.
///
/// redb refuses every call after an I/O error of its file ("Previous I/O error occurred")
/// until the database is closed and opened again. A history opened from a file
/// ([`History::open`], [`History::with_opener`]) does exactly that: after a failed call it
/// drops the database, and the next call opens it again, so a full disk that was freed or
/// a passing I/O error costs the calls made meanwhile, not the history for the life of the
/// process. (A database handed in with [`History::new`] belongs to the caller and is not
/// reopened.)
#[derive(Clone)]
pub struct History {
    handle: Arc<std::sync::Mutex<Handle>>,
    max_per_peer: usize,
    max_peers: usize,
}

struct Handle {
    db: Option<Arc<Database>>,
    open: Option<Opener>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("max_per_peer", &self.max_per_peer)
            .field("max_peers", &self.max_peers)
            .finish()
    }
}

/// Creates the tables if needed, and the peer index from the contacts if it is missing.
fn create_table(db: &Database) -> Result<(), HistoryError> {
    let tx = db.begin_write().map_err(redb::Error::from)?;
    {
        let contacts = tx.open_table(CONTACTS).map_err(redb::Error::from)?;
        let mut peers = tx.open_table(PEERS).map_err(redb::Error::from)?;
        if peers.is_empty().map_err(redb::Error::from)?
            && !contacts.is_empty().map_err(redb::Error::from)?
        {
            let mut index: std::collections::BTreeMap<[u8; 32], PeerRow> = Default::default();
            for r in contacts.iter().map_err(redb::Error::from)? {
                let (k, v) = r.map_err(redb::Error::from)?;
                let c = decode(k.value(), &v.value())?;
                let row = index.entry(c.peer.0).or_default();
                row.count += 1;
                row.discovered |= c.discovered;
                row.last_seen = row.last_seen.max(c.end.0);
            }
            for (id, row) in index {
                peers.insert(id, row.encode()).map_err(redb::Error::from)?;
            }
        }
    }
    tx.commit().map_err(redb::Error::from)?;
    Ok(())
}

/// Whether the database has to be reopened after this error.
fn is_io(e: &HistoryError) -> bool {
    matches!(
        e,
        HistoryError::Db(redb::Error::Io(_) | redb::Error::PreviousIo)
    )
}

impl History {
    /// Default bound on contacts kept per peer.
    pub const DEFAULT_MAX_PER_PEER: usize = 1000;
    /// Default bound on peers kept.
    pub const DEFAULT_MAX_PEERS: usize = 4096;

    /// Uses a database the caller already opened (creates the tables if needed, and the
    /// peer index from the contacts if it is missing).
    pub fn new(db: Arc<Database>) -> Result<History, HistoryError> {
        create_table(&db)?;
        Ok(History {
            handle: Arc::new(std::sync::Mutex::new(Handle {
                db: Some(db),
                open: None,
            })),
            max_per_peer: Self::DEFAULT_MAX_PER_PEER,
            max_peers: Self::DEFAULT_MAX_PEERS,
        })
    }

    /// Changes the bound on peers kept (at least 1).
    pub fn with_max_peers(mut self, n: usize) -> History {
        self.max_peers = n.max(1);
        self
    }

    /// Opens (or creates) a database file of its own, reopened after I/O errors.
    pub fn open(path: &Path) -> Result<History, HistoryError> {
        let path = path.to_owned();
        Self::with_opener(move || Database::create(&path).map_err(redb::Error::from))
    }

    /// Opens a database with `open` now and again after each I/O error (for a custom
    /// storage backend; [`History::open`] is this with a file).
    pub fn with_opener(
        open: impl Fn() -> Result<Database, redb::Error> + Send + Sync + 'static,
    ) -> Result<History, HistoryError> {
        let h = History {
            handle: Arc::new(std::sync::Mutex::new(Handle {
                db: None,
                open: Some(Arc::new(open)),
            })),
            max_per_peer: Self::DEFAULT_MAX_PER_PEER,
            max_peers: Self::DEFAULT_MAX_PEERS,
        };
        h.db()?;
        Ok(h)
    }

    /// Like [`History::open`], but does not open the file yet: the first call does (and
    /// fails, and the next call tries again, while the file cannot be opened). For a caller
    /// that must not lose the history for good because the disk was full at start-up.
    pub fn open_deferred(path: &Path) -> History {
        let path = path.to_owned();
        History {
            handle: Arc::new(std::sync::Mutex::new(Handle {
                db: None,
                open: Some(Arc::new(move || {
                    Database::create(&path).map_err(redb::Error::from)
                })),
            })),
            max_per_peer: Self::DEFAULT_MAX_PER_PEER,
            max_peers: Self::DEFAULT_MAX_PEERS,
        }
    }

    /// The open database, opened (again) if it was dropped after an error.
    fn db(&self) -> Result<Arc<Database>, HistoryError> {
        let mut h = self.handle.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = &h.db {
            return Ok(db.clone());
        }
        let open = h
            .open
            .clone()
            .ok_or(HistoryError::Db(redb::Error::PreviousIo))?;
        let db = Arc::new(open()?);
        create_table(&db)?;
        h.db = Some(db.clone());
        Ok(db)
    }

    /// Runs `op` on the database. After an I/O error the database is dropped so the next
    /// call reopens it; if the error was only redb's memory of an earlier one, the call is
    /// retried once on the reopened database.
    fn run<T>(&self, op: impl Fn(&Database) -> Result<T, HistoryError>) -> Result<T, HistoryError> {
        let db = self.db()?;
        let r = op(&db);
        let Err(e) = &r else { return r };
        if !is_io(e) {
            return r;
        }
        let previous = matches!(e, HistoryError::Db(redb::Error::PreviousIo));
        {
            let mut h = self.handle.lock().unwrap_or_else(|e| e.into_inner());
            if h.open.is_none() {
                return r;
            }
            if h.db.as_ref().is_some_and(|d| Arc::ptr_eq(d, &db)) {
                h.db = None;
            }
        }
        drop(db);
        if previous {
            // The database closes when the last handle goes; a call still running elsewhere
            // keeps it open, and then the reopen fails and the next call tries again.
            return op(&*self.db()?);
        }
        r
    }

    /// Changes the per-peer bound (at least 1).
    pub fn with_max_per_peer(mut self, n: usize) -> History {
        self.max_per_peer = n.max(1);
        self
    }

    /// Inserts or updates a contact (keyed by peer and start).
    pub fn record(&self, c: &Contact) -> Result<(), HistoryError> {
        self.run(|db| self.record_in(db, c))
    }

    fn record_in(&self, db: &Database, c: &Contact) -> Result<(), HistoryError> {
        let tx = db.begin_write().map_err(redb::Error::from)?;
        {
            let mut t = tx.open_table(CONTACTS).map_err(redb::Error::from)?;
            t.insert((c.peer.0, c.start.0), encode(c))
                .map_err(redb::Error::from)?;
            let keys: Vec<u64> = t
                .range((c.peer.0, 0)..=(c.peer.0, u64::MAX))
                .map_err(redb::Error::from)?
                .map(|r| r.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()
                .map_err(redb::Error::from)?;
            let excess = keys.len().saturating_sub(self.max_per_peer);
            for start in &keys[..excess] {
                t.remove((c.peer.0, *start)).map_err(redb::Error::from)?;
            }
            let mut peers = tx.open_table(PEERS).map_err(redb::Error::from)?;
            let old = peers
                .get(c.peer.0)
                .map_err(redb::Error::from)?
                .map(|v| PeerRow::decode(&v.value()));
            let is_new = old.is_none();
            let old = old.unwrap_or_default();
            let row = PeerRow {
                discovered: old.discovered || c.discovered,
                count: (keys.len() - excess) as u32,
                last_seen: old.last_seen.max(c.end.0),
            };
            peers
                .insert(c.peer.0, row.encode())
                .map_err(redb::Error::from)?;
            if is_new {
                while peers.len().map_err(redb::Error::from)? > self.max_peers as u64 {
                    // Eviction rank, smallest first: strangers, fewest contacts, oldest.
                    let mut victim: Option<(EvictionRank, [u8; 32])> = None;
                    for r in peers.iter().map_err(redb::Error::from)? {
                        let (k, v) = r.map_err(redb::Error::from)?;
                        let id = k.value();
                        if id == c.peer.0 {
                            continue;
                        }
                        let p = PeerRow::decode(&v.value());
                        let rank = (p.discovered, p.count, p.last_seen, id);
                        if victim.as_ref().is_none_or(|(best, _)| rank < *best) {
                            victim = Some((rank, id));
                        }
                    }
                    let Some((_, id)) = victim else {
                        break;
                    };
                    peers.remove(id).map_err(redb::Error::from)?;
                    let starts: Vec<u64> = t
                        .range((id, 0)..=(id, u64::MAX))
                        .map_err(redb::Error::from)?
                        .map(|r| r.map(|(k, _)| k.value().1))
                        .collect::<Result<_, _>>()
                        .map_err(redb::Error::from)?;
                    for start in starts {
                        t.remove((id, start)).map_err(redb::Error::from)?;
                    }
                }
            }
        }
        tx.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// All contacts with `peer`, sorted by start.
    pub fn contacts(&self, peer: &NodeId) -> Result<Vec<Contact>, HistoryError> {
        self.run(|db| Self::contacts_in(db, peer))
    }

    fn contacts_in(db: &Database, peer: &NodeId) -> Result<Vec<Contact>, HistoryError> {
        let tx = db.begin_read().map_err(redb::Error::from)?;
        let t = tx.open_table(CONTACTS).map_err(redb::Error::from)?;
        let mut out = Vec::new();
        for r in t
            .range((peer.0, 0)..=(peer.0, u64::MAX))
            .map_err(redb::Error::from)?
        {
            let (k, v) = r.map_err(redb::Error::from)?;
            out.push(decode(k.value(), &v.value())?);
        }
        Ok(out)
    }

    /// Every contact that started at or after `since`, in (peer, start) order.
    pub fn all_since(&self, since: Timestamp) -> Result<Vec<Contact>, HistoryError> {
        self.run(|db| Self::all_since_in(db, since))
    }

    fn all_since_in(db: &Database, since: Timestamp) -> Result<Vec<Contact>, HistoryError> {
        let tx = db.begin_read().map_err(redb::Error::from)?;
        let t = tx.open_table(CONTACTS).map_err(redb::Error::from)?;
        let mut out = Vec::new();
        for r in t.iter().map_err(redb::Error::from)? {
            let (k, v) = r.map_err(redb::Error::from)?;
            let key = k.value();
            if key.1 >= since.0 {
                out.push(decode(key, &v.value())?);
            }
        }
        Ok(out)
    }

    /// Every peer with at least one contact on record.
    pub fn peers(&self) -> Result<Vec<NodeId>, HistoryError> {
        self.run(Self::peers_in)
    }

    fn peers_in(db: &Database) -> Result<Vec<NodeId>, HistoryError> {
        let tx = db.begin_read().map_err(redb::Error::from)?;
        let t = tx.open_table(CONTACTS).map_err(redb::Error::from)?;
        let mut out: Vec<NodeId> = Vec::new();
        for r in t.iter().map_err(redb::Error::from)? {
            let (k, _) = r.map_err(redb::Error::from)?;
            let id = NodeId(k.value().0);
            if out.last() != Some(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Statistics for `peer` (`None` if never met).
    pub fn stats(&self, peer: &NodeId) -> Result<Option<Stats>, HistoryError> {
        Ok(Stats::from_contacts(&self.contacts(peer)?))
    }

    /// Forecast of the next contact with `peer` (see [`prediction::forecast`]).
    pub fn forecast(
        &self,
        peer: &NodeId,
        now: Timestamp,
        in_contact: bool,
        window: usize,
    ) -> Result<Forecast, HistoryError> {
        let spans: Vec<Span> = self
            .contacts(peer)?
            .iter()
            .map(|c| Span {
                start: c.start,
                end: c.end,
            })
            .collect();
        Ok(prediction::forecast(&spans, now, in_contact, window))
    }
}

/// Order in which peers are forgotten: (discovered, contacts, last seen, id), smallest first.
type EvictionRank = (bool, u32, u64, [u8; 32]);

/// A row of the peer index.
#[derive(Clone, Copy, Debug, Default)]
struct PeerRow {
    discovered: bool,
    count: u32,
    last_seen: u64,
}

impl PeerRow {
    fn encode(&self) -> [u8; 16] {
        let mut v = [0u8; 16];
        v[0] = if self.discovered { DISCOVERED } else { 0 };
        v[1..5].copy_from_slice(&self.count.to_le_bytes());
        v[5..13].copy_from_slice(&self.last_seen.to_le_bytes());
        v
    }

    fn decode(v: &[u8; 16]) -> PeerRow {
        PeerRow {
            discovered: v[0] & DISCOVERED != 0,
            count: u32::from_le_bytes(v[1..5].try_into().expect("4 bytes")),
            last_seen: u64::from_le_bytes(v[5..13].try_into().expect("8 bytes")),
        }
    }
}

fn encode(c: &Contact) -> [u8; 33] {
    let mut v = [0u8; 33];
    v[0] = FORMAT;
    v[1..9].copy_from_slice(&c.end.0.to_le_bytes());
    v[9] = match c.transport {
        Transport::Beacon => 0,
        Transport::Mdns => 1,
        Transport::Ble => 2,
    };
    v[10..18].copy_from_slice(&c.bytes_sent.to_le_bytes());
    v[18..26].copy_from_slice(&c.bytes_received.to_le_bytes());
    v[26] = if c.discovered { DISCOVERED } else { 0 };
    v
}

fn decode(key: ([u8; 32], u64), v: &[u8; 33]) -> Result<Contact, HistoryError> {
    let peer = NodeId(key.0);
    let bad = |format| HistoryError::BadRecord {
        peer,
        start: key.1,
        format,
    };
    if v[0] != FORMAT {
        return Err(bad(v[0]));
    }
    let u = |r: std::ops::Range<usize>| u64::from_le_bytes(v[r].try_into().expect("8 bytes"));
    let transport = match v[9] {
        0 => Transport::Beacon,
        1 => Transport::Mdns,
        2 => Transport::Ble,
        _ => return Err(bad(v[0])),
    };
    Ok(Contact {
        peer,
        start: Timestamp(key.1),
        end: Timestamp(u(1..9)),
        transport,
        bytes_sent: u(10..18),
        bytes_received: u(18..26),
        discovered: v[26] & DISCOVERED != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(peer: u8, start: u64, end: u64) -> Contact {
        Contact {
            peer: NodeId([peer; 32]),
            start: Timestamp::from_secs(start),
            end: Timestamp::from_secs(end),
            transport: Transport::Beacon,
            bytes_sent: 10,
            bytes_received: 5,
            discovered: true,
        }
    }

    #[test]
    fn records_upserts_and_derives_stats() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.redb");
        {
            let h = History::open(&path).unwrap();
            h.record(&c(1, 100, 100)).unwrap(); // started
            h.record(&c(1, 100, 160)).unwrap(); // ended: same key
            h.record(&c(1, 1000, 1030)).unwrap();
            h.record(&c(1, 2000, 2100)).unwrap();
            h.record(&c(2, 50, 55)).unwrap();
        }
        let h = History::open(&path).unwrap();
        let list = h.contacts(&NodeId([1; 32])).unwrap();
        assert_eq!(list.len(), 3);
        let s = h.stats(&NodeId([1; 32])).unwrap().unwrap();
        assert_eq!(s.count, 3);
        assert_eq!(s.median_duration, Duration::from_secs(60));
        assert_eq!(s.recent_duration, Duration::from_secs(100));
        assert_eq!(s.median_inter_contact, Some(Duration::from_secs(905)));
        assert_eq!(s.last_seen, Timestamp::from_secs(2100));
        assert_eq!(s.bytes, 45);
        assert_eq!(h.peers().unwrap(), vec![NodeId([1; 32]), NodeId([2; 32])]);
        assert_eq!(h.all_since(Timestamp::from_secs(900)).unwrap().len(), 2);
        assert!(h.stats(&NodeId([3; 32])).unwrap().is_none());
        let f = h
            .forecast(&NodeId([1; 32]), Timestamp::from_secs(2200), false, 8)
            .unwrap();
        assert_eq!(f.next_duration, Some(Duration::from_secs(60)));
    }

    /// A memory-backed redb storage whose writes can be made to fail (a full disk).
    #[derive(Debug, Clone)]
    struct Flaky {
        mem: Arc<redb::backends::InMemoryBackend>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Flaky {
        fn check(&self) -> std::io::Result<()> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            Ok(())
        }
    }

    impl redb::StorageBackend for Flaky {
        fn len(&self) -> std::io::Result<u64> {
            self.mem.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.mem.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.mem.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.check()?;
            self.mem.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.mem.write(offset, data)
        }
    }

    #[test]
    fn recovers_after_a_transient_io_error() {
        let backend = Flaky {
            mem: Arc::new(redb::backends::InMemoryBackend::new()),
            fail: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let opener = backend.clone();
        let h = History::with_opener(move || {
            Database::builder()
                .create_with_backend(opener.clone())
                .map_err(redb::Error::from)
        })
        .unwrap();
        h.record(&c(1, 100, 160)).unwrap();
        // The disk fills: the write fails, and so do calls while it stays full.
        backend
            .fail
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(h.record(&c(1, 200, 260)).is_err());
        assert!(h.record(&c(1, 300, 360)).is_err());
        // Space returns: the history works again without restarting anything.
        backend
            .fail
            .store(false, std::sync::atomic::Ordering::SeqCst);
        h.record(&c(1, 400, 460)).unwrap();
        let starts: Vec<u64> = h
            .contacts(&NodeId([1; 32]))
            .unwrap()
            .iter()
            .map(|x| x.start.0 / 1000)
            .collect();
        assert_eq!(starts, vec![100, 400]);
    }

    #[test]
    fn a_deferred_history_opens_once_it_can() {
        let dir = tempfile::tempdir().unwrap();
        // The directory does not exist yet: the file cannot be created.
        let path = dir.path().join("later").join("h.redb");
        let h = History::open_deferred(&path);
        assert!(h.record(&c(1, 100, 160)).is_err());
        std::fs::create_dir(dir.path().join("later")).unwrap();
        h.record(&c(1, 200, 260)).unwrap();
        assert_eq!(h.contacts(&NodeId([1; 32])).unwrap().len(), 1);
    }

    #[test]
    fn keeps_at_most_max_per_peer() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(&dir.path().join("h.redb"))
            .unwrap()
            .with_max_per_peer(3);
        for i in 0..10 {
            h.record(&c(1, i * 10, i * 10 + 5)).unwrap();
        }
        let list = h.contacts(&NodeId([1; 32])).unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[0].start, Timestamp::from_secs(70));
    }

    #[test]
    fn key_churning_strangers_evict_only_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.redb");
        let h = History::open(&path).unwrap().with_max_peers(8);
        // Three neighbours discovery sees, met a few times each, long ago.
        for peer in 1..=3u8 {
            for i in 0..3 {
                h.record(&c(peer, i * 100, i * 100 + 10)).unwrap();
            }
        }
        // 200 throw-away ids that dialled us once each, all more recent.
        for i in 0..200u32 {
            let mut id = [0xee; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            h.record(&Contact {
                peer: NodeId(id),
                discovered: false,
                ..c(0, 10_000 + u64::from(i), 10_000 + u64::from(i) + 1)
            })
            .unwrap();
        }
        let peers = h.peers().unwrap();
        assert_eq!(peers.len(), 8, "peers kept: {}", peers.len());
        for peer in 1..=3u8 {
            assert_eq!(h.contacts(&NodeId([peer; 32])).unwrap().len(), 3);
        }
        // The strangers kept are the most recent ones.
        let mut newest = [0xee; 32];
        newest[..4].copy_from_slice(&199u32.to_le_bytes());
        assert!(peers.contains(&NodeId(newest)));
        assert_eq!(h.all_since(Timestamp(0)).unwrap().len(), 9 + 5);
        // The index survives a reopen, and is rebuilt if it is lost.
        drop(h);
        let h = History::open(&path).unwrap().with_max_peers(8);
        assert_eq!(h.peers().unwrap().len(), 8);
        {
            let tx = h.db().unwrap().begin_write().unwrap();
            tx.delete_table(PEERS).unwrap();
            tx.commit().unwrap();
        }
        drop(h);
        let h = History::open(&path).unwrap().with_max_peers(8);
        h.record(&Contact {
            peer: NodeId([0xaa; 32]),
            discovered: false,
            ..c(0, 20_000, 20_001)
        })
        .unwrap();
        assert_eq!(h.peers().unwrap().len(), 8);
        assert_eq!(h.contacts(&NodeId([1; 32])).unwrap().len(), 3);
    }

    #[test]
    fn discovered_peers_go_last_and_then_the_least_met() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(&dir.path().join("h.redb"))
            .unwrap()
            .with_max_peers(2);
        h.record(&c(1, 0, 1)).unwrap();
        h.record(&c(1, 10, 11)).unwrap();
        h.record(&c(2, 20, 21)).unwrap();
        // A third discovered peer: the one met least (2) goes.
        h.record(&c(3, 30, 31)).unwrap();
        assert_eq!(h.peers().unwrap(), vec![NodeId([1; 32]), NodeId([3; 32])]);
    }
}
