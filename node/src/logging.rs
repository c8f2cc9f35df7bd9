//! Log output: `tracing` with a target filter.
//!
//! Under systemd (stderr is the journal stream named by `JOURNAL_STREAM`)
//! journald's native protocol: each event's fields become journal fields with
//! a `MULE_` prefix (`MULE_BUNDLE`, `MULE_PEER`, `MULE_ERROR`, …), the level
//! becomes `PRIORITY`, and `TARGET`, `CODE_FILE` and `CODE_LINE` say where it
//! came from, so `journalctl -u mule -p warning` or `MULE_BUNDLE=…` select
//! lines. On a terminal the compact human format with colours; otherwise
//! (files, pipes, or no journald socket) plain lines without timestamps or
//! colours. `RUST_LOG` overrides the configured level; both
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
    let journald = if stderr_is_journal() {
        tracing_journald::layer().ok()
    } else {
        None
    };
    let result = if let Some(journald) = journald {
        let journald = journald
            .with_field_prefix(Some("MULE".to_string()))
            .with_syslog_identifier("mule".to_string());
        tracing_subscriber::registry()
            .with(journald.with_filter(filter))
            .try_init()
    } else if std::io::stderr().is_terminal() {
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

/// Whether stderr is the stream systemd connected to journald for this
/// service: `JOURNAL_STREAM` holds its `device:inode` (systemd.exec(5)); a child
/// whose stderr was redirected elsewhere inherits the variable but not the stream.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: fstat writes into the zeroed struct we own; fd 2 may be closed, which it
    // reports as an error.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev as u64 == dev && st.st_ino as u64 == ino
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

    #[test]
    fn the_journal_is_used_only_when_stderr_is_its_stream() {
        // SAFETY (set_var): this test is the only one in the crate touching JOURNAL_STREAM.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstat(2, &mut st) }, 0);
        unsafe { std::env::set_var("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino)) };
        assert!(stderr_is_journal());
        unsafe { std::env::set_var("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino + 1)) };
        assert!(!stderr_is_journal(), "another stream's inode");
        unsafe { std::env::set_var("JOURNAL_STREAM", "garbage") };
        assert!(!stderr_is_journal());
        unsafe { std::env::remove_var("JOURNAL_STREAM") };
        assert!(!stderr_is_journal());
    }
}
