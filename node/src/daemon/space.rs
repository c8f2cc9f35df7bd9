//! Running out of room: the node-wide "store full" state.
//!
//! A piece refused because the store is full (its quota taken by bundles it may not evict,
//! or the disk or a disk quota full) sets the state, and the node says so once in the log
//! (a warning at most every [`WARN_EVERY`]), not once per piece. The session that got the
//! refusal cancels its requests, tells its peer `Refuse(StoreFull)` and requests nothing
//! more (the engine's `set_store_full`). A full *disk* stops every session, and sessions
//! that start while it lasts: nothing can be stored. A full *quota* stops only the session
//! that hit it: whether a piece fits depends on its bundle (carry quota, priority against
//! what could be evicted), so other transfers go on.
//!
//! The state clears by itself, so a transfer resumes without a restart:
//! - a full disk as soon as the file system has room for a batch again ([`RESUME_FREE`],
//!   checked every [`CHECK_EVERY`] with `statvfs`);
//! - a full quota (or a disk that stays short of a batch) by probing after a backoff of
//!   [`PROBE_MIN`] doubling up to [`PROBE_MAX`]: sessions request again, and a piece refused
//!   again sets the state again. A probe costs at most one request window per session.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Ctx;

/// How often the state is checked while the store is full.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Free bytes on the data directory's file system that end a "disk full" state: room for
/// one full batch of the store thread.
pub const RESUME_FREE: u64 = super::store::MAX_BATCH_BYTES as u64;
/// First wait before probing a full store again.
pub const PROBE_MIN: Duration = Duration::from_secs(5);
/// Longest wait between probes.
pub const PROBE_MAX: Duration = Duration::from_secs(300);
/// Most one "store full" warning per this long; later ones are debug lines.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// What is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The store quota (nothing may be evicted for the piece).
    Quota,
    /// The file system or a disk quota (ENOSPC, EDQUOT).
    Disk,
}

/// The state, behind a mutex in [`Ctx`] (held briefly, never across `.await`).
#[derive(Debug, Default)]
pub(crate) struct Space {
    full: Option<Full>,
    backoff: Duration,
    last_warn: Option<Instant>,
    cleared_at: Option<Instant>,
}

#[derive(Debug)]
struct Full {
    kind: Kind,
    why: String,
    probe_at: Instant,
}

impl Ctx {
    fn space(&self) -> std::sync::MutexGuard<'_, Space> {
        self.space.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A piece was refused because the store is full.
    pub(crate) fn note_store_full(&self, kind: Kind, why: &str) {
        let now = Instant::now();
        let mut sp = self.space();
        if let Some(f) = &mut sp.full {
            // A full disk is what a probe has to wait for, whatever filled first.
            if kind == Kind::Disk && f.kind != Kind::Disk {
                f.kind = Kind::Disk;
                drop(sp);
                self.store_full.send_replace(true);
            }
            return;
        }
        // Refused again soon after a probe: wait longer before the next one.
        let again = sp
            .cleared_at
            .is_some_and(|t| now.duration_since(t) < PROBE_MAX);
        sp.backoff = if again {
            (sp.backoff * 2).clamp(PROBE_MIN, PROBE_MAX)
        } else {
            PROBE_MIN
        };
        let probe_at = now + sp.backoff;
        sp.full = Some(Full {
            kind,
            why: why.to_string(),
            probe_at,
        });
        let warn = sp
            .last_warn
            .is_none_or(|t| now.duration_since(t) >= WARN_EVERY);
        if warn {
            sp.last_warn = Some(now);
        }
        let backoff = sp.backoff;
        drop(sp);
        if warn {
            tracing::warn!(?kind, why, retry_in = ?backoff,
                "store full: refusing pieces and requesting none until there is room");
        } else {
            tracing::debug!(?kind, why, "store full again");
        }
        self.metrics.set_store_full(true);
        if kind == Kind::Disk {
            self.store_full.send_replace(true);
        }
    }

    /// Why the store is full now, for `mule status` (`None` when it has room).
    pub(crate) fn store_full_reason(&self) -> Option<String> {
        self.space().full.as_ref().map(|f| match f.kind {
            Kind::Disk => format!("disk full: {}", f.why),
            Kind::Quota => format!("quota full: {}", f.why),
        })
    }

    /// Ends the "full" state if there is room again (or it is time to probe).
    fn check_space(&self, now: Instant) {
        let mut sp = self.space();
        let Some(f) = &sp.full else {
            return;
        };
        let room = free_bytes(&self.data_dir);
        let resume = now >= f.probe_at || (f.kind == Kind::Disk && room >= Some(RESUME_FREE));
        if !resume {
            return;
        }
        let kind = f.kind;
        sp.full = None;
        sp.cleared_at = Some(now);
        drop(sp);
        tracing::info!(
            ?kind,
            free_bytes = room,
            "store has room again (or probing); requesting pieces again"
        );
        self.metrics.set_store_full(false);
        // Also wakes the sessions a full quota stopped, so they probe too.
        self.store_full.send_replace(false);
    }
}

/// Checks the state every [`CHECK_EVERY`] until `stop`.
pub(crate) async fn watch(ctx: Arc<Ctx>, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(CHECK_EVERY) => ctx.check_space(Instant::now()),
        }
    }
}

/// Bytes an unprivileged process can still write on the file system of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `st` is a
    // plain C struct statvfs fills in; it is read only when the call succeeded.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(path.as_ptr(), &mut st) == 0).then_some(st)
    }?;
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_bytes_of_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(super::free_bytes(dir.path()).is_some_and(|b| b > 0));
        assert!(super::free_bytes(&dir.path().join("missing")).is_none());
    }
}
