//! The store actor: one dedicated thread owns the redb [`Store`]; everything
//! else talks to it through a bounded channel.
//!
//! Piece writes are batched: the actor takes every `PutPiece` already queued
//! (up to [`MAX_BATCH_BYTES`]) and stores them with one durable commit, so a
//! busy link costs a few fsyncs per second while a lone piece is committed at
//! once. The queue is bounded, so a full or slow store pushes back on sessions
//! instead of letting memory grow.
//!
//! Faults of the disk: a batch that fails because the disk (or a disk quota) is full is
//! answered [`PutOutcome::DiskFull`], not as a store failure, so sessions refuse politely
//! and stop requesting; after an I/O error that leaves redb refusing every call, the thread
//! reopens the database. Pieces the store drops as bad (a hash mismatch on reading) are
//! reported to the `on_dropped` callback given at [`StoreHandle::spawn`], release events
//! (equivocation, refused rollbacks, rollbacks) to `on_release`.

use std::path::PathBuf;

use mule_bundle::complete::{self, Installer};
use mule_bundle::store::{
    BadPiece, BundleInfo, Inserted, LineageInfo, Origin, Put, PutError, ReleaseEvent, Store,
    StoreError, Usage,
};

/// What became of one piece handed to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored.
    Stored,
    /// Stored, and it completed its bundle.
    Completed,
    /// The store had it already.
    AlreadyHad,
    /// The data failed verification (wrong length or hash).
    Invalid(String),
    /// No manifest for its bundle.
    UnknownBundle,
    /// No room even after eviction.
    Full(String),
    /// The disk (or a disk quota) is full: nothing of the batch was stored.
    DiskFull(String),
    /// The store failed; the piece was not stored.
    Failed(String),
}

impl From<Result<Put, PutError>> for PutOutcome {
    fn from(r: Result<Put, PutError>) -> Self {
        match r {
            Ok(Put::Stored) => PutOutcome::Stored,
            Ok(Put::Completed) => PutOutcome::Completed,
            Ok(Put::AlreadyHad) => PutOutcome::AlreadyHad,
            Err(PutError::Piece(e)) => PutOutcome::Invalid(e.to_string()),
            Err(PutError::UnknownBundle(_)) => PutOutcome::UnknownBundle,
            Err(PutError::Full(e)) => PutOutcome::Full(e.to_string()),
            Err(PutError::Store(e)) if e.is_no_space() => PutOutcome::DiskFull(e.to_string()),
            Err(e) => PutOutcome::Failed(e.to_string()),
        }
    }
}
use mule_bundle::{Bitfield, BundleId, PieceRef, VerifiedManifest};
use tokio::sync::{mpsc, oneshot};

/// Capacity of the command queue.
pub const QUEUE: usize = 256;
/// Most piece bytes committed in one transaction.
pub const MAX_BATCH_BYTES: usize = 8 << 20;

type Reply<T> = oneshot::Sender<T>;
/// Every bundle's manifest, bitfield and bookkeeping (a session's starting view).
pub type SnapshotRows = Vec<(VerifiedManifest, Bitfield, BundleInfo)>;
/// What an install round did: each bundle installed (or the error that stopped it), and the
/// earliest time (unix seconds) a deferred bundle's stage opens.
#[derive(Debug, Default)]
pub struct InstallResults {
    /// Each attempt's outcome.
    pub done: Vec<(BundleId, Result<PathBuf, String>)>,
    /// When to look again for a staged bundle, if one waits for its stage.
    pub next_wake: Option<u64>,
}

/// A request to the store thread.
pub enum Cmd {
    /// Verify and store a piece (batched with others).
    PutPiece(PieceRef, Vec<u8>, Reply<PutOutcome>),
    /// Read a piece.
    ReadPiece(PieceRef, Reply<Result<Option<Vec<u8>>, StoreError>>),
    /// Store a verified manifest.
    InsertManifest(
        VerifiedManifest,
        Origin,
        Reply<Result<Inserted, StoreError>>,
    ),
    /// A stored manifest.
    Manifest(
        BundleId,
        Reply<Result<Option<VerifiedManifest>, StoreError>>,
    ),
    /// Every bundle's bookkeeping.
    Bundles(Reply<Result<Vec<BundleInfo>, StoreError>>),
    /// Every release lineage's bookkeeping.
    Lineages(Reply<Result<Vec<LineageInfo>, StoreError>>),
    /// Manifests and bitfields of every bundle (a session's starting view).
    Snapshot(Reply<Result<SnapshotRows, StoreError>>),
    /// Mark a bundle wanted or not.
    SetWanted(BundleId, bool, Reply<Result<(), StoreError>>),
    /// Bytes used.
    Usage(Reply<Result<Usage, StoreError>>),
    /// Finish what was queued before, then stop the thread (shutdown).
    Shutdown(Reply<()>),
    /// Export and install every ready bundle (dependencies first).
    InstallPending(Reply<Result<InstallResults, StoreError>>),
    /// Read back and verify one bundle's pieces; with `true`, drop the bad ones.
    Verify(BundleId, bool, Reply<Result<Vec<BadPiece>, StoreError>>),
    /// The whole store's consistency check ([`Store::verify_all`]): pieces checked.
    VerifyAll(Reply<Result<u64, StoreError>>),
}

/// Told about pieces the store dropped as bad (on the store thread: keep it quick).
pub type OnDropped = Box<dyn Fn(Vec<BadPiece>) + Send>;
/// Told about release events (on the store thread: keep it quick).
pub type OnRelease = Box<dyn Fn(Vec<ReleaseEvent>) + Send>;

/// Handle to the store thread; cheap to clone.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Cmd>,
}

/// The store thread is gone (it failed or shut down).
#[derive(Debug, thiserror::Error)]
#[error("the store thread has stopped")]
pub struct Gone;

/// Failure of a store call: the actor is gone or the store said no.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The actor is gone.
    #[error(transparent)]
    Gone(#[from] Gone),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where completed bundles go, what runs then, and when installs may run.
pub struct Completion {
    /// Export directory, hooks and node id.
    pub installer: Installer,
    /// `install.hold` and `install.window`.
    pub install: mule_config::Install,
    /// Told about release events.
    pub on_release: OnRelease,
}

impl StoreHandle {
    /// Starts the store thread around an open store. The thread ends (after
    /// committing what it holds) when every handle is dropped.
    pub fn spawn(
        store: Store,
        completion: Completion,
        on_dropped: OnDropped,
    ) -> (StoreHandle, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let join = std::thread::Builder::new()
            .name("mule-store".into())
            .spawn(move || actor(store, rx, completion, on_dropped))
            .expect("spawning the store thread");
        (StoreHandle { tx }, join)
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, Gone> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    /// Verifies and stores a piece.
    pub async fn put_piece(&self, piece: PieceRef, data: Vec<u8>) -> Result<PutOutcome, Gone> {
        self.call(|r| Cmd::PutPiece(piece, data, r)).await
    }

    /// Queues a piece and returns the receiver of its outcome without waiting for it.
    pub async fn put_piece_deferred(
        &self,
        piece: PieceRef,
        data: Vec<u8>,
    ) -> Result<oneshot::Receiver<PutOutcome>, Gone> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::PutPiece(piece, data, tx))
            .await
            .map_err(|_| Gone)?;
        Ok(rx)
    }

    /// Reads a piece.
    pub async fn read_piece(&self, piece: PieceRef) -> Result<Option<Vec<u8>>, CallError> {
        Ok(self.call(|r| Cmd::ReadPiece(piece, r)).await??)
    }

    /// Stores a verified manifest.
    pub async fn insert_manifest(
        &self,
        vm: VerifiedManifest,
        origin: Origin,
    ) -> Result<Inserted, CallError> {
        Ok(self.call(|r| Cmd::InsertManifest(vm, origin, r)).await??)
    }

    /// A stored manifest.
    pub async fn manifest(&self, id: BundleId) -> Result<Option<VerifiedManifest>, CallError> {
        Ok(self.call(|r| Cmd::Manifest(id, r)).await??)
    }

    /// Every bundle's bookkeeping.
    pub async fn bundles(&self) -> Result<Vec<BundleInfo>, CallError> {
        Ok(self.call(Cmd::Bundles).await??)
    }

    /// Every release lineage's bookkeeping.
    pub async fn lineages(&self) -> Result<Vec<LineageInfo>, CallError> {
        Ok(self.call(Cmd::Lineages).await??)
    }

    /// Manifests and bitfields of every bundle.
    pub async fn snapshot(&self) -> Result<SnapshotRows, CallError> {
        Ok(self.call(Cmd::Snapshot).await??)
    }

    /// Marks a bundle wanted or not.
    pub async fn set_wanted(&self, id: BundleId, wanted: bool) -> Result<(), CallError> {
        Ok(self.call(|r| Cmd::SetWanted(id, wanted, r)).await??)
    }

    /// Bytes used.
    pub async fn usage(&self) -> Result<Usage, CallError> {
        Ok(self.call(Cmd::Usage).await??)
    }

    /// Stops the store thread after everything queued before this call has
    /// been committed. Later calls fail with [`Gone`]: tasks still winding
    /// down cannot keep the store (and the process) alive.
    pub async fn shutdown(&self) -> Result<(), Gone> {
        self.call(Cmd::Shutdown).await
    }

    /// Exports and installs every ready bundle.
    pub async fn install_pending(&self) -> Result<InstallResults, CallError> {
        Ok(self.call(Cmd::InstallPending).await??)
    }

    /// Reads back and verifies one bundle's pieces; with `repair` the bad ones are dropped.
    pub async fn verify(&self, id: BundleId, repair: bool) -> Result<Vec<BadPiece>, CallError> {
        Ok(self.call(|r| Cmd::Verify(id, repair, r)).await??)
    }

    /// The whole store's consistency check.
    pub async fn verify_all(&self) -> Result<u64, CallError> {
        Ok(self.call(Cmd::VerifyAll).await??)
    }
}

fn actor(
    mut store: Store,
    mut rx: mpsc::Receiver<Cmd>,
    completion: Completion,
    on_dropped: OnDropped,
) {
    let mut puts: Vec<(PieceRef, Vec<u8>, Reply<PutOutcome>)> = Vec::new();
    let mut deferred: Option<Cmd> = None;
    loop {
        let dropped = store.take_dropped();
        if !dropped.is_empty() {
            on_dropped(dropped);
        }
        let events = store.take_release_events();
        if !events.is_empty() {
            (completion.on_release)(events);
        }
        let cmd = match deferred.take() {
            Some(c) => c,
            None => match rx.blocking_recv() {
                Some(c) => c,
                None => break,
            },
        };
        if store.is_closed() {
            reopen(&mut store);
        }
        if let Cmd::PutPiece(p, d, r) = cmd {
            // Gather every put already waiting into one commit.
            let mut bytes = d.len();
            puts.push((p, d, r));
            while bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(Cmd::PutPiece(p, d, r)) => {
                        bytes += d.len();
                        puts.push((p, d, r));
                    }
                    Ok(other) => {
                        deferred = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            commit_puts(&mut store, &mut puts);
            continue;
        }
        if let Cmd::Shutdown(reply) = cmd {
            let _ = reply.send(());
            break;
        }
        handle(&mut store, cmd, &completion);
    }
    tracing::debug!("store thread finished");
}

fn commit_puts(store: &mut Store, puts: &mut Vec<(PieceRef, Vec<u8>, Reply<PutOutcome>)>) {
    let batch: Vec<(BundleId, u32, &[u8])> = puts
        .iter()
        .map(|(p, d, _)| (p.bundle, p.index, d.as_slice()))
        .collect();
    match store.put_pieces(&batch) {
        Ok(results) => {
            drop(batch);
            for ((_, _, reply), result) in puts.drain(..).zip(results) {
                let _ = reply.send(result.into());
            }
        }
        Err(e) => {
            drop(batch);
            let text = e.to_string();
            let outcome = if e.is_no_space() {
                // Sessions refuse politely and say so once; no error per batch.
                tracing::debug!(error = %e, pieces = puts.len(), "disk full; batch not stored");
                PutOutcome::DiskFull(text)
            } else {
                tracing::error!(error = %e, pieces = puts.len(), "store commit failed");
                PutOutcome::Failed(text)
            };
            for (_, _, reply) in puts.drain(..) {
                let _ = reply.send(outcome.clone());
            }
            if e.needs_reopen() {
                reopen(store);
            }
        }
    }
}

/// Reopens the database after an I/O error made redb refuse every call (the last commit is
/// intact). A failure leaves it closed; the next command tries again.
fn reopen(store: &mut Store) {
    match store.reopen() {
        Ok(()) => tracing::info!("store database reopened after an I/O error"),
        Err(e) => tracing::debug!(error = %e, "reopening the store database failed"),
    }
}

fn handle(store: &mut Store, cmd: Cmd, completion: &Completion) {
    match cmd {
        Cmd::PutPiece(..) | Cmd::Shutdown(_) => unreachable!("handled by the actor loop"),
        Cmd::ReadPiece(p, r) => {
            let _ = r.send(store.read_piece(&p.bundle, p.index));
        }
        Cmd::InsertManifest(vm, origin, r) => {
            let _ = r.send(store.insert_manifest(&vm, origin));
        }
        Cmd::Manifest(id, r) => {
            let _ = r.send(store.manifest(&id));
        }
        Cmd::Bundles(r) => {
            let _ = r.send(store.bundles());
        }
        Cmd::Lineages(r) => {
            let _ = r.send(store.lineages());
        }
        Cmd::Snapshot(r) => {
            let _ = r.send(snapshot(store));
        }
        Cmd::SetWanted(id, w, r) => {
            let _ = r.send(store.set_wanted(&id, w));
        }
        Cmd::Usage(r) => {
            let _ = r.send(store.usage());
        }
        Cmd::InstallPending(r) => {
            let now = (store.options().clock)();
            let gate = super::install::gate(&completion.install, now);
            let result =
                complete::install_pending(store, &completion.installer, &gate, now).map(|round| {
                    InstallResults {
                        next_wake: round.next_wake(),
                        done: round
                            .outcomes
                            .into_iter()
                            .map(|(id, res)| (id, res.map_err(|e| e.to_string())))
                            .collect(),
                    }
                });
            let _ = r.send(result);
        }
        Cmd::Verify(id, repair, r) => {
            let _ = r.send(store.verify_bundle(&id, repair));
        }
        Cmd::VerifyAll(r) => {
            let _ = r.send(store.verify_all());
        }
    }
}

fn snapshot(store: &mut Store) -> Result<SnapshotRows, StoreError> {
    let mut out = Vec::new();
    for info in store.bundles()? {
        let (Some(vm), Some(bits)) = (store.manifest(&info.id)?, store.bitfield(&info.id)?) else {
            continue;
        };
        out.push((vm, bits, info));
    }
    Ok(out)
}
