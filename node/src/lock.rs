//! The data directory's lock (`DATA_DIR/mule.lock`): who has the store.
//!
//! A `mule run` daemon holds it (an exclusive `flock`) for its whole life, from before it
//! opens the store until it exits; a CLI verb that opens the store itself (no daemon runs)
//! holds it while it has the store open. The kernel releases it however the holder ends, so
//! a killed daemon never leaves it stale.
//!
//! The holder writes one line saying who it is (`daemon 1234 starting`, `daemon 1234
//! running`, `daemon 1234 stopping`, `cli 1234 bundles`). That line only tells waiters what
//! they are waiting for (in logs and messages): whether the store is free is decided by the
//! lock alone, so a stale or half-written line can do no harm beyond a vaguer message.
//!
//! Why a lock beside redb's own: redb refuses a second opener at once, with nothing to say
//! who holds the file or whether it will be free in a moment. A CLI that finds this lock
//! taken by a starting or stopping daemon waits for it (or for its control socket) instead
//! of failing, and a starting daemon waits for a CLI that has the store for a moment.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

/// A daemon's life as its lock line tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonState {
    /// Opening the store, binding sockets: its control socket does not answer yet.
    Starting,
    /// Serving: its control socket answers.
    Running,
    /// Closing sessions and flushing the store: it no longer answers, and exits soon.
    Stopping,
}

impl DaemonState {
    fn as_str(self) -> &'static str {
        match self {
            DaemonState::Starting => "starting",
            DaemonState::Running => "running",
            DaemonState::Stopping => "stopping",
        }
    }
}

/// Who holds (or last held) the lock, as its line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A `mule run` daemon.
    Daemon {
        /// Its process id.
        pid: u32,
        /// What it is doing.
        state: DaemonState,
    },
    /// A CLI verb with the store open.
    Cli {
        /// Its process id.
        pid: u32,
        /// The verb (`bundles`, `publish`, …).
        verb: String,
    },
    /// The line is missing or unreadable (being written, or an older `mule`).
    Unknown,
}

impl Holder {
    /// This process as a daemon in `state`.
    pub fn daemon(state: DaemonState) -> Holder {
        Holder::Daemon {
            pid: std::process::id(),
            state,
        }
    }

    /// This process as the CLI running `verb`.
    pub fn cli(verb: &str) -> Holder {
        Holder::Cli {
            pid: std::process::id(),
            verb: verb.to_string(),
        }
    }

    /// The holder's process id, if known.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Holder::Daemon { pid, .. } | Holder::Cli { pid, .. } => Some(*pid),
            Holder::Unknown => None,
        }
    }

    fn line(&self) -> String {
        match self {
            Holder::Daemon { pid, state } => format!("daemon {pid} {}\n", state.as_str()),
            Holder::Cli { pid, verb } => format!("cli {pid} {verb}\n"),
            Holder::Unknown => String::new(),
        }
    }

    fn parse(text: &str) -> Holder {
        let mut w = text.split_whitespace();
        let (Some(kind), Some(pid), Some(what)) = (w.next(), w.next(), w.next()) else {
            return Holder::Unknown;
        };
        let Ok(pid) = pid.parse() else {
            return Holder::Unknown;
        };
        match kind {
            "daemon" => {
                let state = match what {
                    "starting" => DaemonState::Starting,
                    "running" => DaemonState::Running,
                    "stopping" => DaemonState::Stopping,
                    _ => return Holder::Unknown,
                };
                Holder::Daemon { pid, state }
            }
            "cli" => Holder::Cli {
                pid,
                verb: what.to_string(),
            },
            _ => Holder::Unknown,
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Daemon { pid, state } => {
                write!(
                    f,
                    "the mule daemon (pid {pid}), which is {}",
                    state.as_str()
                )
            }
            Holder::Cli { pid, verb } => write!(f, "`mule {verb}` (pid {pid})"),
            Holder::Unknown => write!(f, "another mule process"),
        }
    }
}

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DirLock {
    file: File,
    /// False for a lock file only readable to us (an operator in the daemon's group): the
    /// lock works on it all the same, only the line cannot be written.
    writable: bool,
}

impl DirLock {
    /// Takes the lock of `dir` as `me` if it is free; otherwise says who holds it.
    pub fn try_acquire(dir: &Path, me: &Holder) -> std::io::Result<Result<DirLock, Holder>> {
        let (file, writable) = open(dir)?;
        match file.try_lock() {
            Ok(()) => {
                let mut l = DirLock { file, writable };
                l.set(me)?;
                Ok(Ok(l))
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(Err(holder(dir))),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Takes the lock of `dir` as `me`, waiting for it as long as it takes (on a thread of
    /// its own: the wait blocks). The kernel hands a released lock to a blocked waiter at
    /// once, so a daemon waiting here is not starved by a loop of short CLI calls.
    pub fn acquire_blocking(dir: &Path, me: &Holder) -> std::io::Result<DirLock> {
        let (file, writable) = open(dir)?;
        file.lock()?;
        let mut l = DirLock { file, writable };
        l.set(me)?;
        Ok(l)
    }

    /// Rewrites the holder line (e.g. a daemon that goes from starting to running).
    pub fn set(&mut self, me: &Holder) -> std::io::Result<()> {
        if !self.writable {
            return Ok(());
        }
        let line = me.line();
        self.file.set_len(0)?;
        self.file.rewind()?;
        // One small write, so a reader sees the old line, nothing, or the whole new line.
        self.file.write_all(line.as_bytes())?;
        Ok(())
    }
}

/// The lock file, and whether we may write it (read-only for a user in the daemon's group
/// under the shipped unit's `UMask=0027`).
fn open(dir: &Path) -> std::io::Result<(File, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(crate::paths::LOCK_FILE);
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o660)
        .open(&path)
    {
        Ok(f) => Ok((f, true)),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Ok((File::open(&path)?, false))
        }
        Err(e) => Err(e),
    }
}

/// Who the lock line of `dir` names (whether or not the lock is held now).
pub fn holder(dir: &Path) -> Holder {
    let mut text = String::new();
    match File::open(dir.join(crate::paths::LOCK_FILE))
        .and_then(|mut f| f.read_to_string(&mut text))
    {
        Ok(_) => Holder::parse(&text),
        Err(_) => Holder::Unknown,
    }
}

/// Whether process `pid` exists (a line naming a dead process is stale).
pub fn alive(pid: u32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_lines_round_trip() {
        for h in [
            Holder::Daemon {
                pid: 7,
                state: DaemonState::Starting,
            },
            Holder::Daemon {
                pid: 8,
                state: DaemonState::Running,
            },
            Holder::Daemon {
                pid: 9,
                state: DaemonState::Stopping,
            },
            Holder::Cli {
                pid: 10,
                verb: "bundles".into(),
            },
        ] {
            assert_eq!(Holder::parse(&h.line()), h);
        }
        assert_eq!(Holder::parse(""), Holder::Unknown);
        assert_eq!(Holder::parse("daemon x running"), Holder::Unknown);
        assert_eq!(Holder::parse("daemon 1 dancing"), Holder::Unknown);
    }

    #[test]
    fn a_second_holder_is_refused_and_told_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = DirLock::try_acquire(dir.path(), &Holder::cli("bundles"))
            .unwrap()
            .unwrap();
        let who = DirLock::try_acquire(dir.path(), &Holder::daemon(DaemonState::Starting))
            .unwrap()
            .unwrap_err();
        assert_eq!(who, Holder::cli("bundles"));
        first.set(&Holder::daemon(DaemonState::Running)).unwrap();
        assert_eq!(holder(dir.path()), Holder::daemon(DaemonState::Running));
        drop(first);
        DirLock::try_acquire(dir.path(), &Holder::cli("status"))
            .unwrap()
            .unwrap();
    }
}
