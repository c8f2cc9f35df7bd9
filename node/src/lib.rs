//! Mule: a delay-tolerant, opportunistic networking node for Linux gateways.
//!
//! This crate is the daemon and CLI around the sans-IO core in `mule-engine`:
//! [`daemon::run`] starts a node; [`commands`] implements the `mule` verbs;
//! [`control`] is the local control protocol between them.

pub mod cli;
pub mod commands;
pub mod control;
mod control_server;
pub mod daemon;
pub mod human;
pub mod lock;
pub mod logging;
pub mod media;
pub mod metrics;
pub mod paths;
pub mod verify;
pub mod view;

use std::path::PathBuf;

use mule_config::Config;

/// `mule run`: logs, the runtime, signals, then [`daemon::run`].
pub fn run_daemon(cfg: Config, data_dir: PathBuf) -> anyhow::Result<()> {
    logging::init(&cfg.log.level);
    // One thread for every socket, timer and session: the per-byte work (hashing, writes)
    // happens on the store thread, and a second worker cost idle memory (its stack, a malloc
    // arena, the work-stealing scheduler's code) without making transfers faster.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The data directory's lock is held until the process ends (after the runtime has wound
    // down below), so no CLI finds it free while this process is still there.
    let mut lock = None;
    let result = rt.block_on(async {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
            }
        };
        let deadline = std::time::Instant::now() + cfg.store.lock_wait();
        let held = lock.insert(daemon::lock_data_dir(&data_dir, deadline).await?);
        daemon::run_locked(
            daemon::RunOptions {
                config: cfg,
                data_dir,
            },
            held,
            shutdown,
        )
        .await
    });
    // Tasks still winding down (a session on a dead link) are dropped, not
    // waited for: the store has already committed and stopped.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    drop(lock);
    result?;
    Ok(())
}
