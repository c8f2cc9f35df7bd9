//! Log output: `tracing` with a target filter.
//!
//! On a terminal the compact human format with colours; otherwise (journald,
//! files, pipes) plain lines without timestamps or colours, because journald
//! stamps every line itself. `RUST_LOG` overrides the configured level; both
//! take `LEVEL` or `target=LEVEL,…` directives (e.g. `info,mule=debug`).
//! The filter is `tracing_subscriber`'s `Targets` rather than `EnvFilter`:
//! the same directive syntax without span filters, and no regex engine in
//! the binary (about a megabyte on a gateway's flash).

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// Parses a filter directive such as `info` or `mule=debug,warn`.
pub fn parse_filter(directives: &str) -> Result<Targets, String> {
    directives
        .parse::<Targets>()
        .map_err(|e| format!("bad log filter {directives:?}: {e}"))
}

/// Installs the global subscriber. `level` comes from the configuration;
/// `RUST_LOG`, when set and valid, wins. Safe to call more than once (the
/// first subscriber stays).
pub fn init(level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| parse_filter(&v).ok())
        .or_else(|| parse_filter(level).ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let result = if std::io::stderr().is_terminal() {
        tracing_subscriber::registry()
            .with(fmt.compact().with_filter(filter))
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(fmt.without_time().with_ansi(false).with_filter(filter))
            .try_init()
    };
    let _ = result;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_bad_ones_are_refused() {
        assert!(parse_filter("info").is_ok());
        assert!(parse_filter("warn,mule=debug,mule_contacts=trace").is_ok());
        assert!(parse_filter("mule=loud").is_err());
    }
}
