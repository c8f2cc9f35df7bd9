//! Checks for values that parse but cannot work.
//!
//! Each rule names the key it is about and, for rules that relate two keys,
//! the other one; the error points at whichever of them the file actually
//! sets, so a value coming from a default is never blamed on a line that does
//! not exist. Rules run in a fixed order and the first failure is reported.

use std::collections::HashSet;

use crate::error::Segment;
use crate::schema::Config;

/// Smallest allowed `store.piece_size_default`, in bytes (the bundle format's minimum).
pub const PIECE_SIZE_MIN: u64 = 4 * 1024;
/// Largest allowed `store.piece_size_default`, in bytes (the bundle format's
/// maximum); `store.quota_bytes`
/// must be at least this, so the store can always hold one whole piece.
pub const PIECE_SIZE_MAX: u64 = 4 * 1024 * 1024;
/// Fastest allowed beacon interval, in milliseconds (a bound on beacon traffic).
pub const BEACON_INTERVAL_FLOOR_MS: u64 = 50;
/// Slowest allowed beacon interval, in milliseconds (10 minutes).
pub const BEACON_INTERVAL_CEILING_MS: u64 = 600_000;
/// Longest accepted `discovery.after_loss_ms` (one hour).
pub const AFTER_LOSS_CEILING_MS: u64 = 3_600_000;
/// Shortest allowed `discovery.bluetooth_silence_ms`, in milliseconds.
pub const SILENCE_FLOOR_MS: u64 = 100;
/// Longest allowed `discovery.peer_silence_ms` and `discovery.bluetooth_silence_ms` (1 hour).
pub const SILENCE_CEILING_MS: u64 = 3_600_000;
/// Shortest allowed session keep-alive interval, in milliseconds.
pub const KEEPALIVE_FLOOR_MS: u64 = 100;
/// Most sessions a node may be configured to hold at once.
pub const MAX_SESSIONS_LIMIT: u32 = 1024;
/// Longest Unix socket path Linux accepts (`sun_path` is 108 bytes with the NUL).
pub const SOCKET_PATH_MAX: usize = 107;
/// Longest interface name Linux accepts (`IFNAMSIZ` is 16 with the NUL).
pub const INTERFACE_NAME_MAX: usize = 15;
/// Longest allowed `store.lock_wait_ms` (ten minutes).
pub const LOCK_WAIT_MAX_MS: u64 = 600_000;
/// Longest allowed `store.on_complete_timeout_s` (one day).
pub const ON_COMPLETE_TIMEOUT_MAX_S: u64 = 86_400;
/// Longest channel name, in bytes.
pub const CHANNEL_NAME_MAX: usize = 255;

/// One failed rule: the key it is about, related keys, and the message.
#[derive(Debug)]
pub(crate) struct Problem {
    /// The key the message is about.
    pub key: Vec<Segment>,
    /// Other keys involved; used for the position when `key` is not in the text.
    pub related: Vec<Vec<Segment>>,
    /// What is wrong.
    pub message: String,
}

fn path(dotted: &str) -> Vec<Segment> {
    dotted
        .split('.')
        .map(|s| Segment::Key(s.to_string()))
        .collect()
}

fn element(dotted: &str, index: usize) -> Vec<Segment> {
    let mut p = path(dotted);
    p.push(Segment::Index(index));
    p
}

fn problem(key: Vec<Segment>, message: String) -> Problem {
    Problem {
        key,
        related: Vec::new(),
        message,
    }
}

fn related(key: &str, other: &str, message: String) -> Problem {
    Problem {
        key: path(key),
        related: vec![path(other)],
        message,
    }
}

/// Runs every rule; the first failure wins.
pub(crate) fn check(c: &Config) -> Result<(), Problem> {
    check_paths(c)?;
    check_discovery(c)?;
    check_session(c)?;
    check_names(c)?;
    check_quotas(c)?;
    check_prediction(c)?;
    check_misc(c)
}

fn check_paths(c: &Config) -> Result<(), Problem> {
    for (key, value) in [
        ("data_dir", c.data_dir.as_ref()),
        ("store.export_dir", c.store.export_dir.as_ref()),
        ("control.socket", c.control.socket.as_ref()),
    ] {
        if value.is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(problem(
                path(key),
                "must not be empty (leave the key out for the default)".into(),
            ));
        }
    }
    if let Some(socket) = &c.control.socket {
        let len = socket.as_os_str().len();
        if len > SOCKET_PATH_MAX {
            return Err(problem(
                path("control.socket"),
                format!(
                    "path is {len} bytes; a Unix socket path must be at most {SOCKET_PATH_MAX}"
                ),
            ));
        }
    }
    Ok(())
}

fn check_discovery(c: &Config) -> Result<(), Problem> {
    let d = &c.discovery;
    for (key, value) in [
        ("discovery.beacon_interval_min_ms", d.beacon_interval_min_ms),
        ("discovery.beacon_interval_ms", d.beacon_interval_ms),
        ("discovery.beacon_interval_max_ms", d.beacon_interval_max_ms),
        ("discovery.after_loss_interval_ms", d.after_loss_interval_ms),
    ] {
        if !(BEACON_INTERVAL_FLOOR_MS..=BEACON_INTERVAL_CEILING_MS).contains(&value) {
            return Err(problem(
                path(key),
                format!(
                    "{value} ms is outside the allowed range {BEACON_INTERVAL_FLOOR_MS}..={BEACON_INTERVAL_CEILING_MS} ms"
                ),
            ));
        }
    }
    if d.beacon_interval_min_ms > d.beacon_interval_ms {
        return Err(related(
            "discovery.beacon_interval_min_ms",
            "discovery.beacon_interval_ms",
            format!(
                "{} ms is larger than discovery.beacon_interval_ms ({} ms); the minimum must not exceed it",
                d.beacon_interval_min_ms, d.beacon_interval_ms
            ),
        ));
    }
    if d.beacon_interval_ms > d.beacon_interval_max_ms {
        return Err(related(
            "discovery.beacon_interval_max_ms",
            "discovery.beacon_interval_ms",
            format!(
                "{} ms is smaller than discovery.beacon_interval_ms ({} ms); the maximum must not be below it",
                d.beacon_interval_max_ms, d.beacon_interval_ms
            ),
        ));
    }
    if d.after_loss_ms > AFTER_LOSS_CEILING_MS {
        return Err(problem(
            path("discovery.after_loss_ms"),
            format!(
                "{} ms is longer than the allowed {AFTER_LOSS_CEILING_MS} ms (0 turns it off)",
                d.after_loss_ms
            ),
        ));
    }
    if d.peer_silence_ms < d.beacon_interval_ms.saturating_mul(2) {
        return Err(related(
            "discovery.peer_silence_ms",
            "discovery.beacon_interval_ms",
            format!(
                "{} ms is shorter than twice discovery.beacon_interval_ms ({} ms): one lost beacon would end a contact",
                d.peer_silence_ms, d.beacon_interval_ms
            ),
        ));
    }
    if !(SILENCE_FLOOR_MS..=SILENCE_CEILING_MS).contains(&d.bluetooth_silence_ms) {
        return Err(problem(
            path("discovery.bluetooth_silence_ms"),
            format!(
                "{} ms is outside the allowed range {SILENCE_FLOOR_MS}..={SILENCE_CEILING_MS} ms",
                d.bluetooth_silence_ms
            ),
        ));
    }
    if d.peer_silence_ms > SILENCE_CEILING_MS {
        return Err(problem(
            path("discovery.peer_silence_ms"),
            format!(
                "{} ms is above the maximum of {SILENCE_CEILING_MS} ms",
                d.peer_silence_ms
            ),
        ));
    }
    if d.beacon_port == 0 {
        return Err(problem(
            path("discovery.beacon_port"),
            "must not be 0: all nodes must agree on a fixed beacon port".into(),
        ));
    }
    if !d.ipv4_group.is_multicast() {
        return Err(problem(
            path("discovery.ipv4_group"),
            format!(
                "{} is not an IPv4 multicast address (224.0.0.0/4)",
                d.ipv4_group
            ),
        ));
    }
    // All discovery off is allowed: such a node meets only `session.peers`
    // and nodes that dial it (a wired hub); the daemon says so at start.
    if let Some(why) = d.bluetooth_adapter.as_deref().and_then(bad_interface_name) {
        return Err(problem(path("discovery.bluetooth_adapter"), why));
    }
    Ok(())
}

fn check_session(c: &Config) -> Result<(), Problem> {
    let s = &c.session;
    if s.listen.is_empty() {
        return Err(problem(
            path("session.listen"),
            "needs at least one address: peers connect to it".into(),
        ));
    }
    let port = s.listen[0].port();
    let mut seen = HashSet::new();
    for (i, addr) in s.listen.iter().enumerate() {
        if addr.port() != port {
            return Err(problem(
                element("session.listen", i),
                format!(
                    "port {} differs from the first address's port {port}: beacons advertise a single session port",
                    addr.port()
                ),
            ));
        }
        if !seen.insert(*addr) {
            return Err(problem(
                element("session.listen", i),
                format!("{addr} is listed twice"),
            ));
        }
    }
    if s.keepalive_ms < KEEPALIVE_FLOOR_MS {
        return Err(problem(
            path("session.keepalive_ms"),
            format!(
                "{} ms is below the minimum of {KEEPALIVE_FLOOR_MS} ms",
                s.keepalive_ms
            ),
        ));
    }
    if s.idle_timeout_ms < s.keepalive_ms.saturating_mul(2) {
        return Err(related(
            "session.idle_timeout_ms",
            "session.keepalive_ms",
            format!(
                "{} ms is shorter than twice session.keepalive_ms ({} ms): one late keep-alive would kill a live session",
                s.idle_timeout_ms, s.keepalive_ms
            ),
        ));
    }
    if !(1..=MAX_SESSIONS_LIMIT).contains(&s.max_sessions) {
        return Err(problem(
            path("session.max_sessions"),
            format!(
                "{} is outside the allowed range 1..={MAX_SESSIONS_LIMIT}",
                s.max_sessions
            ),
        ));
    }
    Ok(())
}

fn bad_interface_name(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("an interface name must not be empty".into());
    }
    if name.len() > INTERFACE_NAME_MAX {
        return Some(format!(
            "{name:?} is {} bytes; interface names have at most {INTERFACE_NAME_MAX}",
            name.len()
        ));
    }
    if let Some(ch) = name
        .chars()
        .find(|c| *c == '/' || c.is_whitespace() || c.is_control())
    {
        return Some(format!(
            "{name:?} contains {ch:?}, which no interface name can contain"
        ));
    }
    None
}

fn check_names(c: &Config) -> Result<(), Problem> {
    let mut seen = HashSet::new();
    for (i, name) in c.discovery.interfaces.iter().enumerate() {
        if let Some(why) = bad_interface_name(name) {
            return Err(problem(element("discovery.interfaces", i), why));
        }
        if !seen.insert(name) {
            return Err(problem(
                element("discovery.interfaces", i),
                format!("{name:?} is listed twice"),
            ));
        }
    }
    let mut seen = HashSet::new();
    for (i, channel) in c.subscriptions.channels.iter().enumerate() {
        let why = if channel.is_empty() {
            Some("a channel name must not be empty".to_string())
        } else if channel.len() > CHANNEL_NAME_MAX {
            Some(format!(
                "channel name is {} bytes; at most {CHANNEL_NAME_MAX}",
                channel.len()
            ))
        } else if channel.chars().any(char::is_control) {
            Some(format!("{channel:?} contains a control character"))
        } else if !seen.insert(channel) {
            Some(format!("{channel:?} is listed twice"))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(problem(element("subscriptions.channels", i), why));
        }
    }
    let mut seen = HashSet::new();
    for (i, key) in c.trust.publishers.iter().enumerate() {
        if !seen.insert(key) {
            return Err(problem(
                element("trust.publishers", i),
                format!("{key} is listed twice"),
            ));
        }
    }
    Ok(())
}

fn check_quotas(c: &Config) -> Result<(), Problem> {
    // TOML integers are signed 64-bit: larger values could not be written back.
    for (key, value) in [
        ("store.quota_bytes", c.store.quota_bytes),
        ("carry.quota_bytes", c.carry.quota_bytes),
        ("trust.untrusted_quota_bytes", c.trust.untrusted_quota_bytes),
        ("discovery.peer_silence_ms", c.discovery.peer_silence_ms),
        ("session.keepalive_ms", c.session.keepalive_ms),
        ("session.idle_timeout_ms", c.session.idle_timeout_ms),
        ("prediction.time_unit_s", c.prediction.time_unit_s),
        ("prediction.i_typ_s", c.prediction.i_typ_s),
        ("store.on_complete_timeout_s", c.store.on_complete_timeout_s),
        (
            "store.health_check_timeout_s",
            c.store.health_check_timeout_s,
        ),
    ] {
        if value > i64::MAX as u64 {
            return Err(problem(
                path(key),
                format!("{value} is larger than {}", i64::MAX),
            ));
        }
    }
    let piece = c.store.piece_size_default;
    if !(PIECE_SIZE_MIN..=PIECE_SIZE_MAX).contains(&piece) {
        return Err(problem(
            path("store.piece_size_default"),
            format!(
                "{piece} bytes is outside the allowed range {PIECE_SIZE_MIN}..={PIECE_SIZE_MAX} bytes"
            ),
        ));
    }
    if c.store.quota_bytes < PIECE_SIZE_MAX {
        return Err(problem(
            path("store.quota_bytes"),
            format!(
                "{} bytes is smaller than one piece: the store must hold at least one piece of the largest size ({PIECE_SIZE_MAX} bytes)",
                c.store.quota_bytes
            ),
        ));
    }
    if c.carry.quota_bytes > c.store.quota_bytes {
        return Err(related(
            "carry.quota_bytes",
            "store.quota_bytes",
            format!(
                "{} bytes is larger than store.quota_bytes ({} bytes); carried bundles live in the store",
                c.carry.quota_bytes, c.store.quota_bytes
            ),
        ));
    }
    if c.trust.carry_untrusted && c.trust.untrusted_quota_bytes > c.carry.quota_bytes {
        return Err(related(
            "trust.untrusted_quota_bytes",
            "carry.quota_bytes",
            format!(
                "{} bytes is larger than carry.quota_bytes ({} bytes); untrusted bundles are carried within it",
                c.trust.untrusted_quota_bytes, c.carry.quota_bytes
            ),
        ));
    }
    Ok(())
}

fn check_prediction(c: &Config) -> Result<(), Problem> {
    let p = &c.prediction;
    // Written so that NaN fails every check.
    for (key, value, open_low, high) in [
        ("prediction.p_encounter_max", p.p_encounter_max, true, 1.0),
        (
            "prediction.p_encounter_first",
            p.p_encounter_first,
            true,
            1.0,
        ),
        (
            "prediction.p_first_threshold",
            p.p_first_threshold,
            false,
            1.0,
        ),
        ("prediction.beta", p.beta, false, 1.0),
        ("prediction.gamma", p.gamma, true, 1.0),
    ] {
        let low_ok = if open_low { value > 0.0 } else { value >= 0.0 };
        if !(low_ok && value <= high) {
            let range = if open_low { "(0, 1]" } else { "[0, 1]" };
            return Err(problem(path(key), format!("{value} is outside {range}")));
        }
    }
    if !(p.delta >= 0.0 && p.delta < 1.0) {
        return Err(problem(
            path("prediction.delta"),
            format!("{} is outside [0, 1)", p.delta),
        ));
    }
    if p.p_encounter_first > 1.0 - p.delta {
        return Err(related(
            "prediction.p_encounter_first",
            "prediction.delta",
            format!(
                "{} is above 1 - prediction.delta ({}), the ceiling of every predictability",
                p.p_encounter_first,
                1.0 - p.delta
            ),
        ));
    }
    if p.p_first_threshold >= p.p_encounter_first {
        return Err(related(
            "prediction.p_first_threshold",
            "prediction.p_encounter_first",
            format!(
                "{} is not below prediction.p_encounter_first ({}): every first encounter would be forgotten at once",
                p.p_first_threshold, p.p_encounter_first
            ),
        ));
    }
    if p.time_unit_s == 0 {
        return Err(problem(
            path("prediction.time_unit_s"),
            "must be at least 1 second".into(),
        ));
    }
    if p.i_typ_s == 0 {
        return Err(problem(
            path("prediction.i_typ_s"),
            "must be at least 1 second".into(),
        ));
    }
    Ok(())
}

fn check_misc(c: &Config) -> Result<(), Problem> {
    let scan = c.media.scan_interval_ms;
    if !(100..=3_600_000).contains(&scan) {
        return Err(problem(
            path("media.scan_interval_ms"),
            format!("{scan} ms is outside 100 to 3600000"),
        ));
    }
    if let Some(i) = c.media.paths.iter().position(|p| !p.starts_with('/')) {
        return Err(problem(
            element("media.paths", i),
            format!("{:?} is not an absolute path", c.media.paths[i]),
        ));
    }
    let fpr = c.summary.false_positive_rate;
    if !(fpr > 0.0 && fpr < 0.5) {
        return Err(problem(
            path("summary.false_positive_rate"),
            format!("{fpr} is outside the open interval (0, 0.5)"),
        ));
    }
    if c.log.level.trim().is_empty() {
        return Err(problem(
            path("log.level"),
            "must not be empty (e.g. \"info\")".into(),
        ));
    }
    for (key, command) in [
        ("store.on_complete", &c.store.on_complete),
        ("store.health_check", &c.store.health_check),
        ("store.on_rollback", &c.store.on_rollback),
    ] {
        let Some(command) = command else { continue };
        match command.first() {
            None => {
                return Err(problem(
                    path(key),
                    "must name a program (leave the key out to run nothing)".into(),
                ));
            }
            Some(program) if program.is_empty() => {
                return Err(problem(
                    element(key, 0),
                    "the program name must not be empty".into(),
                ));
            }
            Some(_) => {}
        }
    }
    if c.store.lock_wait_ms > LOCK_WAIT_MAX_MS {
        return Err(problem(
            path("store.lock_wait_ms"),
            format!(
                "{} is outside the allowed range 0..={LOCK_WAIT_MAX_MS}",
                c.store.lock_wait_ms
            ),
        ));
    }
    for (key, secs) in [
        ("store.on_complete_timeout_s", c.store.on_complete_timeout_s),
        (
            "store.health_check_timeout_s",
            c.store.health_check_timeout_s,
        ),
    ] {
        if !(1..=ON_COMPLETE_TIMEOUT_MAX_S).contains(&secs) {
            return Err(problem(
                path(key),
                format!("{secs} s is outside the allowed range 1..={ON_COMPLETE_TIMEOUT_MAX_S} s"),
            ));
        }
    }
    if c.metrics.enabled && c.metrics.listen.port() == 0 {
        return Err(problem(
            path("metrics.listen"),
            "port 0 would put metrics on an unpredictable port".into(),
        ));
    }
    Ok(())
}
