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
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod paths;
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
    let result = rt.block_on(async move {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
            }
        };
        daemon::run(
            daemon::RunOptions {
                config: cfg,
                data_dir,
            },
            shutdown,
        )
        .await
    });
    // Tasks still winding down (a session on a dead link) are dropped, not
    // waited for: the store has already committed and stopped.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result?;
    Ok(())
}
