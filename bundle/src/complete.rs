//! Completion: exporting complete bundles and running the on-complete command, in dependency
//! order.
//!
//! # What the daemon calls
//! After a batch of pieces completes a bundle (or on a timer, or on the operator's `retry`),
//! call [`install_pending`] (or [`pending`], then [`install`] for each id in order). Each call is
//! bounded: one export (streamed piece by piece) and at most one command with a timeout per
//! bundle.
//!
//! # Rules
//! - Only bundles that are complete, wanted and trusted are installed; untrusted bundles never
//!   are (nor exported).
//! - A bundle waits until every dependency is installed. [`pending`] lists ready bundles in an
//!   order where dependencies come first (ties: most urgent priority first, then id).
//! - Export is atomic: a temporary file in the target directory, written piece by piece with
//!   every piece and the whole-content hash verified, fsynced, renamed over the target, and the
//!   directory fsynced. A crash leaves either the old file or the new one, never a mix.
//! - A failed export or command is recorded in the store ([`crate::store::BundleInfo::failure`])
//!   and retried only after a backoff ([`retry_after`]: 10 minutes, doubling, at most 6 hours)
//!   or when the operator clears it with [`crate::store::Store::retry`]. Never in a tight loop.
//! - Releases: a bundle the store blocks ([`crate::store::Store::release_block`]: equivocal,
//!   a rollback to a release at or below the installed one, superseded) is never installed;
//!   one the install policy defers ([`crate::release::decide`]: staged rollout, hold,
//!   window) waits, and the round says why and until when ([`Round`]).
//! - Health check: after the on-complete command, the optional health check runs (with its
//!   own timeout). If it fails, the optional rollback command runs with the export of the
//!   previously installed release of the lineage (`MULE_ROLLBACK_PATH`), the bundle is
//!   recorded `rolled_back`, and the installed release stays the previous one.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::id::BundleId;
use crate::manifest::{Manifest, PieceError, VerifiedManifest};
use crate::release::{Gate, Wait};
use crate::store::{Block, State, Store, StoreError};

/// First retry delay after a failure, in seconds; doubles per failed attempt.
pub const RETRY_BASE_SECS: u64 = 600;
/// Longest retry delay, in seconds.
pub const RETRY_MAX_SECS: u64 = 6 * 3600;
/// How much of a failed command's stderr is kept (its end).
pub const STDERR_TAIL_BYTES: usize = 2048;

/// Seconds to wait after the `attempts`-th failure before trying again.
pub fn retry_after(attempts: u32) -> u64 {
    let doublings = attempts.saturating_sub(1).min(16);
    (RETRY_BASE_SECS << doublings).min(RETRY_MAX_SECS)
}

/// The on-complete command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    /// Program to run.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Killed if it runs longer than this.
    pub timeout: Duration,
}

/// Why the on-complete command failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// It could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// It exited unsuccessfully.
    #[error("command failed ({status}): {stderr}")]
    Failed {
        /// Exit status as text (code or signal).
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// It ran past its timeout and was killed.
    #[error("command timed out after {0:?} and was killed")]
    Timeout(Duration),
}

/// Why a bundle could not be exported or installed.
#[derive(Debug, thiserror::Error)]
pub enum CompleteError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such bundle.
    #[error("no bundle {0} in the store")]
    UnknownBundle(BundleId),
    /// Pieces are missing.
    #[error("bundle {id} is not complete ({have} of {total} pieces)")]
    NotComplete {
        /// The bundle.
        id: BundleId,
        /// Pieces present.
        have: u32,
        /// Pieces in the bundle.
        total: u32,
    },
    /// Untrusted bundles are never exported or installed.
    #[error("bundle {0} is from an untrusted publisher; it is never exported or installed")]
    Untrusted(BundleId),
    /// Some dependencies are not installed yet.
    #[error("bundle {id} waits for dependencies {missing:?}")]
    DependenciesPending {
        /// The bundle.
        id: BundleId,
        /// Dependencies not installed.
        missing: Vec<BundleId>,
    },
    /// A stored piece is missing or does not verify (store damaged outside Mule).
    #[error("stored piece is bad: {0}")]
    Piece(#[from] PieceError),
    /// The assembled content does not match the manifest's content hash.
    #[error("assembled content of {0} does not match its content hash")]
    ContentHash(BundleId),
    /// Writing the export failed.
    #[error("exporting to {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The on-complete command failed.
    #[error("on-complete {0}")]
    Hook(#[from] HookError),
    /// The store's release rules forbid installing it.
    #[error(transparent)]
    Blocked(#[from] Block),
    /// The health check failed; the previous release was put back.
    #[error("health check {check}; {rollback}")]
    RolledBack {
        /// How the health check failed.
        check: HookError,
        /// What the rollback did.
        rollback: String,
    },
}

/// How this node installs: where exports go, what runs, and who it is (for cohorts).
#[derive(Clone, Debug, Default)]
pub struct Installer {
    /// Export directory.
    pub export_dir: PathBuf,
    /// The on-complete command.
    pub on_complete: Option<Hook>,
    /// The health check, run after the on-complete command.
    pub health_check: Option<Hook>,
    /// Run when the health check fails, with the previous release's export.
    pub on_rollback: Option<Hook>,
    /// This node's id (its cohort in staged rollouts).
    pub node: [u8; 32],
}

impl Installer {
    /// An installer that exports to `export_dir` and runs nothing.
    pub fn new(export_dir: impl Into<PathBuf>) -> Self {
        Installer {
            export_dir: export_dir.into(),
            ..Installer::default()
        }
    }
}

/// What one install round did and found.
#[derive(Debug, Default)]
pub struct Round {
    /// Each install attempt's outcome.
    pub outcomes: Vec<InstallOutcome>,
    /// Complete bundles the install policy defers, and why.
    pub waiting: Vec<(BundleId, Wait)>,
}

impl Round {
    /// The earliest time (unix seconds) a deferred bundle's stage opens, if any.
    pub fn next_wake(&self) -> Option<u64> {
        self.waiting.iter().filter_map(|(_, w)| w.until()).min()
    }
}

/// Ids of bundles ready to install now, dependencies first.
///
/// Ready: wanted, trusted, every piece present, not installed, not waiting out a failure
/// backoff, and every dependency installed or listed earlier.
pub fn pending(store: &mut Store, now: u64) -> Result<Vec<BundleId>, StoreError> {
    let all = store.bundles()?;
    let installed: BTreeSet<BundleId> = all
        .iter()
        .filter(|b| b.state == State::Installed)
        .map(|b| b.id)
        .collect();
    let ready: HashMap<BundleId, _> = all
        .iter()
        .filter(|b| b.wanted && b.trusted)
        .filter(|b| match b.state {
            State::Complete => true,
            State::Failed => b
                .failure
                .as_ref()
                .is_none_or(|f| now >= f.at.saturating_add(retry_after(f.attempts))),
            State::Incomplete | State::Installed | State::RolledBack => false,
        })
        .map(|b| (b.id, b))
        .collect();
    // Kahn's algorithm over the ready set; a bundle whose dependency is neither installed nor
    // ready (or sits in a cycle) never becomes available and so is not listed.
    let mut done = installed;
    let mut out = Vec::new();
    loop {
        let mut next: Vec<_> = ready
            .values()
            .filter(|b| !done.contains(&b.id))
            .filter(|b| b.dependencies.iter().all(|d| done.contains(d)))
            .map(|b| (b.priority, b.id))
            .collect();
        if next.is_empty() {
            break;
        }
        next.sort();
        for (_, id) in next {
            done.insert(id);
            out.push(id);
        }
    }
    Ok(out)
}

/// The default export file name for a bundle: `name-version-<first 8 hex digits of the id>`,
/// with every character outside `[A-Za-z0-9._+-]` replaced by `_` (names come from peers).
pub fn export_file_name(manifest: &Manifest, id: &BundleId) -> String {
    let clean = |s: &str| -> String {
        let s: String = s
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .take(100)
            .collect();
        // Never "." or "..", never hidden.
        s.trim_start_matches('.').to_owned()
    };
    format!(
        "{}-{}-{}",
        clean(&manifest.name),
        clean(&manifest.version),
        id.short()
    )
}

/// Exports a complete, trusted bundle into `export_dir` under [`export_file_name`]; returns
/// the path. Does not touch the store's records (see [`install`]).
pub fn export(
    store: &mut Store,
    id: &BundleId,
    export_dir: &Path,
) -> Result<PathBuf, CompleteError> {
    let vm = store
        .manifest(id)?
        .ok_or(CompleteError::UnknownBundle(*id))?;
    let path = export_dir.join(export_file_name(vm.manifest(), id));
    export_to(store, id, &path)?;
    Ok(path)
}

/// Exports a complete, trusted bundle to exactly `out` (atomically, see the module docs).
pub fn export_to(store: &mut Store, id: &BundleId, out: &Path) -> Result<(), CompleteError> {
    let vm = store
        .manifest(id)?
        .ok_or(CompleteError::UnknownBundle(*id))?;
    let info = store.info(id)?.ok_or(CompleteError::UnknownBundle(*id))?;
    if !info.trusted {
        return Err(CompleteError::Untrusted(*id));
    }
    if info.pieces_have != info.pieces_total {
        return Err(CompleteError::NotComplete {
            id: *id,
            have: info.pieces_have,
            total: info.pieces_total,
        });
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CompleteError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| id.to_string());
    let tmp = dir.join(format!(".{file_name}.mule-tmp-{}", std::process::id()));
    let result = write_verified(store, &vm, &tmp).and_then(|()| {
        std::fs::rename(&tmp, out).map_err(io(out))?;
        // Make the rename itself durable.
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_verified(
    store: &mut Store,
    vm: &VerifiedManifest,
    tmp: &Path,
) -> Result<(), CompleteError> {
    let io = |source| CompleteError::Io {
        path: tmp.to_owned(),
        source,
    };
    let id = vm.id();
    let mut file = std::io::BufWriter::with_capacity(1 << 16, File::create(tmp).map_err(io)?);
    let mut whole = blake3::Hasher::new();
    for index in 0..vm.piece_count() {
        // export_to checked that every bit is set. A piece that rotted on disk is dropped
        // (fetched again, then the export is retried) instead of failing the export for good.
        let piece = match store.check_claimed(vm, index)? {
            Ok(piece) => piece,
            Err(bad) => {
                store.drop_pieces(&id, std::slice::from_ref(&bad))?;
                return Err(CompleteError::NotComplete {
                    id,
                    have: vm.piece_count() - 1,
                    total: vm.piece_count(),
                });
            }
        };
        whole.update(&piece);
        file.write_all(&piece).map_err(io)?;
    }
    if whole.finalize().as_bytes() != &vm.manifest().content_hash {
        return Err(CompleteError::ContentHash(id));
    }
    let file = file.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(())
}

/// The environment the on-complete command gets: `MULE_BUNDLE_ID`, `MULE_BUNDLE_NAME`,
/// `MULE_BUNDLE_VERSION`, `MULE_BUNDLE_PATH`, and `MULE_META_<KEY>` per metadata entry (key
/// upper-cased, characters outside `[A-Z0-9_]` replaced by `_`).
pub fn hook_env(vm: &VerifiedManifest, path: &Path) -> Vec<(String, String)> {
    let m = vm.manifest();
    let mut env = vec![
        ("MULE_BUNDLE_ID".to_owned(), vm.id().to_string()),
        ("MULE_BUNDLE_NAME".to_owned(), m.name.clone()),
        ("MULE_BUNDLE_VERSION".to_owned(), m.version.clone()),
        (
            "MULE_BUNDLE_PATH".to_owned(),
            path.to_string_lossy().into_owned(),
        ),
    ];
    for (k, v) in &m.metadata {
        let key: String = k
            .chars()
            .map(|c| {
                let c = c.to_ascii_uppercase();
                if c.is_ascii_alphanumeric() { c } else { '_' }
            })
            .collect();
        // A NUL cannot be passed in the environment; such a value is dropped.
        if !v.contains('\0') {
            env.push((format!("MULE_META_{key}"), v.clone()));
        }
    }
    env
}

/// Runs the on-complete command for an exported bundle, with [`hook_env`], stdin closed,
/// stdout discarded, and the end of stderr kept for the failure message.
pub fn run_hook(hook: &Hook, vm: &VerifiedManifest, path: &Path) -> Result<(), HookError> {
    run_command(hook, hook_env(vm, path))
}

/// Runs a command with `env`, stdin closed, stdout discarded, killed (with its process
/// group) at its timeout; the end of stderr is kept for the failure message.
fn run_command(hook: &Hook, env: Vec<(String, String)>) -> Result<(), HookError> {
    let mut cmd = Command::new(&hook.program);
    // Its own process group, so a timeout kills whatever it started too (a grandchild would
    // otherwise keep running and hold stderr open).
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .args(&hook.args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| HookError::Spawn {
            program: hook.program.display().to_string(),
            source,
        })?;
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut tail: Vec<u8> = Vec::new();
        let mut buf = [0u8; 4096];
        while let Some(Ok(n @ 1..)) = stderr.as_mut().map(|s| s.read(&mut buf)) {
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 2 * STDERR_TAIL_BYTES {
                tail.drain(..tail.len() - STDERR_TAIL_BYTES);
            }
        }
        let start = tail.len().saturating_sub(STDERR_TAIL_BYTES);
        String::from_utf8_lossy(&tail[start..]).trim().to_owned()
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() < hook.timeout => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Ok(None) | Err(_) => {
                kill_group(&mut child);
                break None;
            }
        }
    };
    let stderr = reader.join().unwrap_or_default();
    match status {
        None => Err(HookError::Timeout(hook.timeout)),
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(HookError::Failed {
            status: s.to_string(),
            stderr,
        }),
    }
}

/// Kills the command and its process group (which we created for it), then reaps it.
fn kill_group(child: &mut std::process::Child) {
    #[cfg(unix)]
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) has no memory-safety preconditions. The group id is our own child's
        // pid (process_group(0) made it a group leader), and it is not reaped yet, so the id
        // cannot have been reused by an unrelated process.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Exports a ready bundle, runs the on-complete command and the health check (if any) and
/// records the outcome in the store: installed; failed with its message (retried after
/// [`retry_after`]); or rolled back. A bundle the release rules block is refused.
pub fn install(
    store: &mut Store,
    id: &BundleId,
    inst: &Installer,
    now: u64,
) -> Result<PathBuf, CompleteError> {
    let info = store.info(id)?.ok_or(CompleteError::UnknownBundle(*id))?;
    if !info.trusted {
        return Err(CompleteError::Untrusted(*id));
    }
    let mut missing = Vec::new();
    for dep in &info.dependencies {
        if store.info(dep)?.is_none_or(|d| d.state != State::Installed) {
            missing.push(*dep);
        }
    }
    if !missing.is_empty() {
        return Err(CompleteError::DependenciesPending { id: *id, missing });
    }
    if let Some(block) = store.release_block(id)? {
        if matches!(block, Block::Rollback { .. }) {
            store.refuse_rollback(id)?;
        } else {
            store.set_wanted(id, false)?;
        }
        tracing::warn!(bundle = %id.short(), reason = %block, "not installed");
        return Err(block.into());
    }
    let vm = store
        .manifest(id)?
        .ok_or(CompleteError::UnknownBundle(*id))?;
    let result = export(store, id, &inst.export_dir).and_then(|path| {
        store.record_export(id, &path)?;
        if let Some(hook) = &inst.on_complete {
            run_hook(hook, &vm, &path)?;
        }
        if let Some(check) = &inst.health_check
            && let Err(e) = run_hook(check, &vm, &path)
        {
            return Err(roll_back(store, &vm, &path, inst, e)?);
        }
        Ok(path)
    });
    match &result {
        Ok(path) => {
            store.record_installed(id)?;
            tracing::info!(bundle = %id.short(), path = %path.display(), "bundle installed");
        }
        // A store error is no fault of the bundle, and a piece dropped as bad during the
        // export is fetched again: neither is a failed install.
        Err(CompleteError::Store(_) | CompleteError::NotComplete { .. }) => {}
        Err(e @ CompleteError::RolledBack { .. }) => {
            store.record_rolled_back(id, &e.to_string(), now)?;
            tracing::warn!(bundle = %id.short(), error = %e, "health check failed; rolled back");
        }
        Err(e) => {
            store.record_failure(id, &e.to_string(), now)?;
            tracing::warn!(bundle = %id.short(), error = %e, "bundle install failed");
        }
    }
    result
}

/// After a failed health check: runs the rollback command (if any) with the export of the
/// lineage's installed release in `MULE_ROLLBACK_PATH` (empty when none was installed),
/// `MULE_ROLLBACK_ID` and `MULE_ROLLBACK_RELEASE`, beside the failed bundle's variables.
/// Returns the error that records the rollback.
fn roll_back(
    store: &mut Store,
    vm: &VerifiedManifest,
    path: &Path,
    inst: &Installer,
    check: HookError,
) -> Result<CompleteError, StoreError> {
    let m = vm.manifest();
    let previous = if m.is_numbered() {
        store.installed_release(&m.release_lineage())?
    } else {
        None
    };
    let rollback = match (&inst.on_rollback, &previous) {
        (None, _) => "no store.on_rollback command is set".to_owned(),
        (Some(hook), prev) => {
            let mut env = hook_env(vm, path);
            let (pid, prel, ppath) = match prev {
                Some((id, rel, p)) => (id.to_string(), rel.to_string(), p.display().to_string()),
                None => (String::new(), String::new(), String::new()),
            };
            env.push(("MULE_ROLLBACK_ID".into(), pid));
            env.push(("MULE_ROLLBACK_RELEASE".into(), prel.clone()));
            env.push(("MULE_ROLLBACK_PATH".into(), ppath));
            match run_command(hook, env) {
                Ok(()) if prev.is_some() => format!("rolled back to release {prel}"),
                Ok(()) => "on_rollback ran; no earlier release was installed".to_owned(),
                Err(e) => format!("on_rollback {e}"),
            }
        }
    };
    Ok(CompleteError::RolledBack { check, rollback })
}

/// One bundle's install attempt: its id and the exported path or the error.
pub type InstallOutcome = (BundleId, Result<PathBuf, CompleteError>);

/// Installs every ready bundle in dependency order ([`pending`], the install policy
/// [`crate::release::decide`] with the node's `gate`, then [`install`] each); a bundle whose
/// dependency failed or waits in this round waits too. The reasons bundles wait are also
/// handed to the store for `mule status` ([`Store::set_waiting`]).
pub fn install_pending(
    store: &mut Store,
    inst: &Installer,
    gate: &Gate,
    now: u64,
) -> Result<Round, StoreError> {
    let mut round = Round::default();
    for id in pending(store, now)? {
        let Some(vm) = store.manifest(&id)? else {
            continue;
        };
        if let Err(wait) = crate::release::decide(vm.manifest(), &inst.node, now, gate) {
            round.waiting.push((id, wait));
            continue;
        }
        match install(store, &id, inst, now) {
            Err(CompleteError::Store(e)) => return Err(e),
            // A dependency failed or waits: it waits, nothing to report.
            Err(CompleteError::DependenciesPending { .. }) => {}
            r => round.outcomes.push((id, r)),
        }
    }
    store.set_waiting(
        round
            .waiting
            .iter()
            .map(|(id, w)| (*id, w.to_string()))
            .collect(),
    );
    Ok(round)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Priority;
    use crate::manifest::MIN_PIECE_SIZE;
    use crate::manifest::tests::{key, manifest_for};
    use crate::store::{Origin, StoreOptions};

    fn store(dir: &Path) -> Store {
        let opts = StoreOptions {
            trust: [key(1).verifying_key().to_bytes()].into_iter().collect(),
            carry_untrusted: true,
            clock: std::sync::Arc::new(|| 1_700_000_100),
            ..StoreOptions::default()
        };
        Store::open(dir, opts).unwrap()
    }

    fn add(
        s: &mut Store,
        name: &str,
        len: usize,
        deps: Vec<BundleId>,
        signer: u8,
        fill: bool,
    ) -> (VerifiedManifest, Vec<u8>) {
        let c: Vec<u8> = (0..len).map(|i| (i * 13 + name.len()) as u8).collect();
        let mut m = manifest_for(&c, MIN_PIECE_SIZE, &key(signer));
        m.name = name.into();
        m.dependencies = deps;
        m.metadata.insert("run-as".into(), "root".into());
        let vm = m.sign(&key(signer)).unwrap();
        s.insert_manifest(&vm, Origin::Received).unwrap();
        if signer == 1 {
            s.set_wanted(&vm.id(), true).unwrap();
        }
        if fill {
            s.put_content(&vm.id(), &c[..]).unwrap();
        }
        (vm, c)
    }

    fn sh(script: &str) -> Hook {
        Hook {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            timeout: Duration::from_secs(10),
        }
    }

    /// One install round with `hook` as the on-complete command and nothing deferred.
    fn round(s: &mut Store, out: &Path, hook: &Hook, now: u64) -> Vec<InstallOutcome> {
        let inst = Installer {
            on_complete: Some(hook.clone()),
            ..Installer::new(out)
        };
        install_pending(s, &inst, &Gate::default(), now)
            .unwrap()
            .outcomes
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("mule-tmp"))
            .collect()
    }

    #[test]
    fn export_is_byte_identical_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("export");
        let mut s = store(&dir.path().join("data"));
        let (vm, c) = add(&mut s, "a/../../etc", 50_000, vec![], 1, true);
        let path = export(&mut s, &vm.id(), &out).unwrap();
        assert_eq!(path.parent().unwrap(), out);
        assert!(!path.file_name().unwrap().to_string_lossy().contains('/'));
        assert_eq!(std::fs::read(&path).unwrap(), c);
        // Re-export replaces the file in one step, leaving no temporary file.
        std::fs::write(&path, b"old").unwrap();
        export_to(&mut s, &vm.id(), &path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), c);
        assert!(leftovers(&out).is_empty());

        // An incomplete bundle is refused and the existing file is untouched.
        let (partial, pc) = add(&mut s, "partial", 20_000, vec![], 1, false);
        s.put_piece(&partial.id(), 0, &pc[..MIN_PIECE_SIZE as usize])
            .unwrap();
        let target = out.join("partial");
        std::fs::write(&target, b"previous").unwrap();
        assert!(matches!(
            export_to(&mut s, &partial.id(), &target),
            Err(CompleteError::NotComplete {
                have: 1,
                total: 5,
                ..
            })
        ));
        assert_eq!(std::fs::read(&target).unwrap(), b"previous");
        assert!(leftovers(&out).is_empty());

        // Untrusted bundles are never exported.
        let (untrusted, _) = add(&mut s, "u", 100, vec![], 2, true);
        assert!(matches!(
            export(&mut s, &untrusted.id(), &out),
            Err(CompleteError::Untrusted(_))
        ));
    }

    #[test]
    fn dependency_order_and_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("export");
        let log = dir.path().join("log");
        let mut s = store(&dir.path().join("data"));
        let (a, ac) = add(&mut s, "a", 100, vec![], 1, false);
        let (b, _) = add(&mut s, "b", 100, vec![a.id()], 1, true);
        let (c, _) = add(&mut s, "c", 100, vec![b.id(), a.id()], 1, true);
        let (lonely, _) = add(&mut s, "d", 100, vec![BundleId([7; 32])], 1, true);
        // a is incomplete: b and c wait; d waits forever for a bundle we do not have.
        assert!(pending(&mut s, 0).unwrap().is_empty());
        s.put_content(&a.id(), &ac[..]).unwrap();
        assert_eq!(pending(&mut s, 0).unwrap(), vec![a.id(), b.id(), c.id()]);
        // Installing out of order is refused.
        assert!(matches!(
            install(&mut s, &c.id(), &Installer::new(&out), 0),
            Err(CompleteError::DependenciesPending { .. })
        ));
        let hook = sh(&format!("echo \"$MULE_BUNDLE_NAME\" >> {}", log.display()));
        let results = round(&mut s, &out, &hook, 0);
        assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "a\nb\nc\n");
        for id in [a.id(), b.id(), c.id()] {
            assert_eq!(s.info(&id).unwrap().unwrap().state, State::Installed);
        }
        assert_eq!(
            s.info(&lonely.id()).unwrap().unwrap().state,
            State::Complete
        );
        assert!(pending(&mut s, 0).unwrap().is_empty());
    }

    #[test]
    fn hook_gets_env_and_failure_is_recorded_with_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("export");
        let seen = dir.path().join("seen");
        let mut s = store(&dir.path().join("data"));
        let (vm, c) = add(&mut s, "pkg", 9000, vec![], 1, true);
        let (dep, _) = add(&mut s, "dependent", 10, vec![vm.id()], 1, true);
        let hook = sh(&format!(
            "cmp \"$MULE_BUNDLE_PATH\" - < \"$MULE_BUNDLE_PATH\" && \
             echo \"$MULE_BUNDLE_ID $MULE_BUNDLE_NAME $MULE_BUNDLE_VERSION $MULE_META_RUN_AS\" > {} && \
             echo bad things >&2 && exit 3",
            seen.display()
        ));
        let t0 = 1000;
        let results = round(&mut s, &out, &hook, t0);
        assert_eq!(results.len(), 1, "the dependent is not even attempted");
        assert_eq!(
            std::fs::read_to_string(&seen).unwrap().trim(),
            format!("{} pkg 1.0 root", vm.id())
        );
        let info = s.info(&vm.id()).unwrap().unwrap();
        assert_eq!(info.state, State::Failed);
        let f = info.failure.unwrap();
        assert_eq!((f.at, f.attempts), (t0, 1));
        assert!(f.message.contains("exit status: 3"), "{}", f.message);
        assert!(f.message.contains("bad things"), "{}", f.message);
        let exported = info.export_path.unwrap();
        assert_eq!(std::fs::read(exported).unwrap(), c);
        // Not retried before the backoff, retried after it.
        assert!(
            pending(&mut s, t0 + RETRY_BASE_SECS - 1)
                .unwrap()
                .is_empty()
        );
        // Listed with its dependent, which is attempted only if it succeeds.
        assert_eq!(
            pending(&mut s, t0 + RETRY_BASE_SECS).unwrap(),
            vec![vm.id(), dep.id()]
        );
        round(&mut s, &out, &hook, t0 + RETRY_BASE_SECS);
        let f = s.info(&vm.id()).unwrap().unwrap().failure.unwrap();
        assert_eq!(f.attempts, 2);
        assert!(
            pending(&mut s, t0 + RETRY_BASE_SECS + 2 * RETRY_BASE_SECS - 1)
                .unwrap()
                .is_empty()
        );
        // The operator's retry makes it ready at once; a working hook installs both.
        s.retry(&vm.id()).unwrap();
        assert_eq!(
            pending(&mut s, t0 + RETRY_BASE_SECS + 1).unwrap(),
            vec![vm.id(), dep.id()]
        );
        let ok = sh("true");
        let results = round(&mut s, &out, &ok, t0 + 2000);
        assert!(results.iter().all(|(_, r)| r.is_ok()));
        assert_eq!(s.info(&dep.id()).unwrap().unwrap().state, State::Installed);
    }

    #[test]
    fn hook_timeout_and_missing_program() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(&dir.path().join("data"));
        let (vm, _) = add(&mut s, "slow", 10, vec![], 1, true);
        let mut slow = sh("sleep 5");
        slow.timeout = Duration::from_millis(200);
        let started = Instant::now();
        assert!(matches!(
            run_hook(&slow, &vm, dir.path()),
            Err(HookError::Timeout(_))
        ));
        assert!(started.elapsed() < Duration::from_secs(4));
        let missing = Hook {
            program: dir.path().join("nope"),
            args: vec![],
            timeout: Duration::from_secs(1),
        };
        assert!(matches!(
            run_hook(&missing, &vm, dir.path()),
            Err(HookError::Spawn { .. })
        ));
        assert_eq!(retry_after(1), RETRY_BASE_SECS);
        assert_eq!(retry_after(2), 2 * RETRY_BASE_SECS);
        assert_eq!(retry_after(100), RETRY_MAX_SECS);
        assert_eq!(Priority::default(), Priority::Normal);
    }

    /// Release `n` of lineage (key(1), "fw"), complete and wanted.
    fn fw(s: &mut Store, n: u64, stages: &[&str]) -> VerifiedManifest {
        let c = vec![n as u8; 5000];
        let mut m = manifest_for(&c, MIN_PIECE_SIZE, &key(1));
        m.name = "fw".into();
        m.version = format!("{n}.0");
        m.release = n;
        m.stages = stages.iter().map(|t| t.parse().unwrap()).collect();
        let vm = m.sign(&key(1)).unwrap();
        s.insert_manifest(&vm, Origin::Received).unwrap();
        s.set_wanted(&vm.id(), true).unwrap();
        s.put_content(&vm.id(), &c[..]).unwrap();
        vm
    }

    #[test]
    fn failed_health_check_rolls_back_to_the_previous_export() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("export");
        let log = dir.path().join("rollback.log");
        let mut s = store(&dir.path().join("data"));
        let inst = Installer {
            on_complete: Some(sh("true")),
            // Release 2 is bad: its export starts with byte 2.
            health_check: Some(sh(
                "test \"$(head -c1 \"$MULE_BUNDLE_PATH\" | od -An -tu1 | tr -d ' ')\" != 2",
            )),
            on_rollback: Some(sh(&format!(
                "echo \"$MULE_BUNDLE_VERSION $MULE_ROLLBACK_RELEASE $MULE_ROLLBACK_PATH\" >> {}",
                log.display()
            ))),
            ..Installer::new(&out)
        };
        let r1 = fw(&mut s, 1, &[]);
        let done = install_pending(&mut s, &inst, &Gate::default(), 10).unwrap();
        let p1 = done.outcomes[0].1.as_ref().unwrap().clone();
        let r2 = fw(&mut s, 2, &[]);
        let done = install_pending(&mut s, &inst, &Gate::default(), 20).unwrap();
        assert!(matches!(
            done.outcomes[..],
            [(id, Err(CompleteError::RolledBack { .. }))] if id == r2.id()
        ));
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            format!("2.0 1 {}\n", p1.display())
        );
        let info = s.info(&r2.id()).unwrap().unwrap();
        assert_eq!(info.state, State::RolledBack);
        assert!(
            info.failure
                .unwrap()
                .message
                .contains("rolled back to release 1")
        );
        // The previous release is still the installed one, and its export is in place.
        assert_eq!(s.lineages().unwrap()[0].installed, 1);
        assert_eq!(std::fs::read(&p1).unwrap(), vec![1u8; 5000]);
        assert_eq!(s.info(&r1.id()).unwrap().unwrap().state, State::Installed);
        assert!(matches!(
            s.take_release_events()[..],
            [crate::store::ReleaseEvent::RolledBack { release: 2, .. }]
        ));
        // Not retried on its own.
        assert!(pending(&mut s, u64::MAX / 2).unwrap().is_empty());
        // Release 3 passes and becomes the installed release.
        let r3 = fw(&mut s, 3, &[]);
        let done = install_pending(&mut s, &inst, &Gate::default(), 30).unwrap();
        assert!(done.outcomes[0].1.is_ok());
        assert_eq!(s.info(&r3.id()).unwrap().unwrap().state, State::Installed);
        assert_eq!(s.lineages().unwrap()[0].installed, 3);
    }

    #[test]
    fn an_older_release_is_never_installed_and_staged_ones_wait() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(&dir.path().join("data"));
        let inst = Installer::new(dir.path().join("export"));
        let r2 = fw(&mut s, 2, &[]);
        install_pending(&mut s, &inst, &Gate::default(), 10).unwrap();
        assert_eq!(s.info(&r2.id()).unwrap().unwrap().state, State::Installed);
        // Release 1 published later: refused on arrival, never pending, never installed.
        let r1 = fw(&mut s, 1, &[]);
        assert!(pending(&mut s, 10).unwrap().is_empty());
        assert!(matches!(
            install(&mut s, &r1.id(), &inst, 10),
            Err(CompleteError::Blocked(Block::Rollback {
                release: 1,
                installed: 2
            }))
        ));
        assert_eq!(s.lineages().unwrap()[0].rollback_refused, 2);
        assert_eq!(s.take_release_events().len(), 2);

        // A staged release waits for its stage and says so; hold defers it further.
        let r3 = fw(&mut s, 3, &["100%@60s"]);
        let created = r3.manifest().created;
        let round = install_pending(&mut s, &inst, &Gate::default(), created).unwrap();
        assert!(round.outcomes.is_empty());
        assert_eq!(round.next_wake(), Some(created + 60));
        let waiting = s.info(&r3.id()).unwrap().unwrap().waiting.unwrap();
        assert!(waiting.starts_with("staged rollout"), "{waiting}");
        let hold = Gate {
            hold: true,
            outside_window: None,
        };
        let round = install_pending(&mut s, &inst, &hold, created + 60).unwrap();
        assert!(round.outcomes.is_empty());
        assert_eq!(
            s.info(&r3.id()).unwrap().unwrap().waiting.as_deref(),
            Some("install.hold is set")
        );
        let round = install_pending(&mut s, &inst, &Gate::default(), created + 60).unwrap();
        assert!(round.outcomes[0].1.is_ok());
        assert_eq!(s.info(&r3.id()).unwrap().unwrap().waiting, None);
    }
}
