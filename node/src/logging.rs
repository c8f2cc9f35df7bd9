//! Log output: `tracing` with an env filter.
//!
//! On a terminal the compact human format with colours; otherwise (journald,
//! files, pipes) plain lines without timestamps or colours, because journald
//! stamps every line itself. `RUST_LOG` overrides the configured level.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is an env-filter directive such as
/// `info` or `mule=debug,warn`. Safe to call once per process.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if std::io::stderr().is_terminal() {
        builder.compact().try_init()
    } else {
        builder.without_time().with_ansi(false).try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
