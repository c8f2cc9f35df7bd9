//! The list of every configuration key with a one-line description, and what
//! is generated from it: the Markdown reference (`config/REFERENCE.md`, the
//! README's configuration section) and the effective-config text printed by
//! `mule config show`.
//!
//! Tests keep this list equal to the schema (every serialised key, nothing
//! else) and to the keys of the shipped `config/mule.toml`.

use crate::schema::Config;

/// One configuration key, as documented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDoc {
    /// Dotted key, e.g. `discovery.beacon_interval_ms`.
    pub key: &'static str,
    /// The value's type and unit, in words.
    pub kind: &'static str,
    /// What the key does, in one sentence or two.
    pub doc: &'static str,
    /// For keys without a default value: what happens when unset. `None` for
    /// keys that always have a value.
    pub unset: Option<&'static str>,
}

const fn key(key: &'static str, kind: &'static str, doc: &'static str) -> KeyDoc {
    KeyDoc {
        key,
        kind,
        doc,
        unset: None,
    }
}

const fn optional(
    key: &'static str,
    kind: &'static str,
    doc: &'static str,
    unset: &'static str,
) -> KeyDoc {
    KeyDoc {
        key,
        kind,
        doc,
        unset: Some(unset),
    }
}

/// Every key, in the order of `config/mule.toml`.
pub const KEYS: &[KeyDoc] = &[
    optional(
        "data_dir",
        "path",
        "Directory for the store, the node key and the control socket; `mule run --data-dir` overrides it.",
        "`$STATE_DIRECTORY` (systemd), else `$XDG_DATA_HOME/mule`, else `~/.local/share/mule`",
    ),
    key(
        "discovery.interfaces",
        "list of interface names",
        "Interfaces to beacon on; empty means every up, multicast-capable, non-loopback interface, re-scanned as they come and go.",
    ),
    key(
        "discovery.beacons",
        "boolean",
        "Send and receive multicast beacons; off for a Bluetooth-only node.",
    ),
    key(
        "discovery.beacon_interval_ms",
        "integer, milliseconds",
        "Beacon interval while a neighbour is up; at most half of `peer_silence_ms` (a third is recommended).",
    ),
    key(
        "discovery.beacon_interval_min_ms",
        "integer, milliseconds",
        "Fastest beacon interval, in bursts when neighbours or interfaces change.",
    ),
    key(
        "discovery.beacon_interval_max_ms",
        "integer, milliseconds",
        "Slowest beacon interval, after a while alone (saves energy).",
    ),
    key(
        "discovery.after_loss_ms",
        "integer, milliseconds",
        "After a neighbour goes silent, beacon every `after_loss_interval_ms` for this long, then twice as slowly each such period until the usual interval or until a neighbour appears; 0 turns it off.",
    ),
    key(
        "discovery.after_loss_interval_ms",
        "integer, milliseconds",
        "Beacon interval right after a neighbour went silent (finds a resumed contact quickly).",
    ),
    key(
        "discovery.peer_silence_ms",
        "integer, milliseconds",
        "A neighbour silent this long is reported down; at least twice `beacon_interval_ms` (three times is recommended).",
    ),
    key(
        "discovery.bluetooth_silence_ms",
        "integer, milliseconds",
        "A neighbour seen only over Bluetooth is reported down after this long without an advertisement.",
    ),
    key(
        "discovery.beacon_port",
        "integer, UDP port",
        "Beacon port, shared by all nodes (and all nodes on one host).",
    ),
    key(
        "discovery.ipv4_group",
        "IPv4 multicast address",
        "IPv4 multicast group of the beacons (TTL 1).",
    ),
    key(
        "discovery.ipv6",
        "boolean",
        "Also beacon on IPv6 link-local all-nodes (`ff02::1`).",
    ),
    key(
        "discovery.mdns",
        "boolean",
        "Advertise and browse `_mule._tcp.local.` over mDNS.",
    ),
    key(
        "discovery.bluetooth",
        "boolean",
        "Discover peers and hold sessions over Bluetooth LE; without an adapter the node starts anyway and warns once.",
    ),
    optional(
        "discovery.bluetooth_adapter",
        "adapter name",
        "Bluetooth adapter to use, e.g. `\"hci0\"`.",
        "the system's default adapter",
    ),
    key(
        "session.listen",
        "list of \"ADDR:PORT\"",
        "Session listener addresses, all on one port (beacons advertise one port); port 0 lets the OS choose.",
    ),
    key(
        "session.keepalive_ms",
        "integer, milliseconds",
        "Send a keep-alive after this long without sending.",
    ),
    key(
        "session.idle_timeout_ms",
        "integer, milliseconds",
        "Close a session that received nothing this long; at least twice `keepalive_ms`.",
    ),
    key(
        "session.max_sessions",
        "integer",
        "Most sessions open at once (1 to 1024).",
    ),
    key(
        "session.peers",
        "list of \"ADDR:PORT\"",
        "Peers dialled whenever no session with them is open, without discovery (wired gateways, loopback tests).",
    ),
    key(
        "subscriptions.channels",
        "list of strings",
        "Channels whose bundles this node wants, exports and installs; empty means it only carries for others.",
    ),
    key(
        "trust.publishers",
        "list of 64-hex-digit ed25519 keys",
        "Publishers whose bundles are stored, exported and forwarded; empty means none is trusted.",
    ),
    key(
        "trust.carry_untrusted",
        "boolean",
        "Also carry (never export or run) correctly signed bundles from other publishers.",
    ),
    key(
        "trust.untrusted_quota_bytes",
        "integer, bytes",
        "Most bytes of untrusted bundles carried, within `carry.quota_bytes`.",
    ),
    key(
        "store.quota_bytes",
        "integer, bytes",
        "Most bytes of piece data stored; at least 4194304 (one piece of the largest size).",
    ),
    key(
        "store.piece_size_default",
        "integer, bytes",
        "Piece size of bundles published here unless `mule publish --piece-size` says otherwise (4096 to 4194304).",
    ),
    optional(
        "store.export_dir",
        "path",
        "Where completed wanted bundles are exported.",
        "`DATA_DIR/export`",
    ),
    optional(
        "store.on_complete",
        "list of strings (program and arguments)",
        "Command run after a wanted, trusted bundle is exported, without a shell; `MULE_BUNDLE_PATH`, `MULE_BUNDLE_ID`, `MULE_BUNDLE_NAME`, `MULE_BUNDLE_VERSION`, `MULE_META_<KEY>` in its environment.",
        "nothing runs",
    ),
    key(
        "store.on_complete_timeout_s",
        "integer, seconds",
        "The on-complete command is killed, and the failure recorded, after this long (1 to 86400).",
    ),
    optional(
        "store.health_check",
        "list of strings (program and arguments)",
        "Command run after the on-complete command, without a shell, same environment; a non-zero exit or a timeout rolls the release back (`on_rollback` runs, the bundle is recorded `rolled_back`).",
        "no check",
    ),
    key(
        "store.health_check_timeout_s",
        "integer, seconds",
        "The health check is killed, and counts as failed, after this long (1 to 86400).",
    ),
    optional(
        "store.on_rollback",
        "list of strings (program and arguments)",
        "Command run when a health check fails, without a shell; the failed bundle's variables plus `MULE_ROLLBACK_PATH` (the previous release's export, empty if none), `MULE_ROLLBACK_ID`, `MULE_ROLLBACK_RELEASE`; killed after `store.on_complete_timeout_s`.",
        "nothing runs",
    ),
    key(
        "store.lock_wait_ms",
        "integer, milliseconds",
        "How long `mule run` waits for a CLI verb that has the store open, and a CLI verb for a daemon that is starting or stopping (0 to 600000).",
    ),
    optional(
        "install.window",
        "string, local time: \"Mon-Fri 01:00-05:00\", \"02:00-04:00\"",
        "Complete releases are installed only inside this window (days Mon..Sun, single or ranges, comma-separated; an end before the start runs past midnight).",
        "any time",
    ),
    key(
        "install.hold",
        "boolean",
        "Pause every install; bundles still arrive and wait, and `mule status` says why.",
    ),
    key(
        "carry.quota_bytes",
        "integer, bytes",
        "Most bytes of bundles carried for others, within `store.quota_bytes`; 0 carries nothing.",
    ),
    key(
        "prediction.enabled",
        "boolean",
        "Use PRoPHET predictabilities to choose carriers; off means epidemic.",
    ),
    key(
        "prediction.p_encounter_max",
        "number in (0, 1]",
        "RFC 6693 P_encounter_max: largest increment of one encounter.",
    ),
    key(
        "prediction.p_encounter_first",
        "number in (0, 1]",
        "RFC 6693 P_encounter_first: predictability after a first encounter.",
    ),
    key(
        "prediction.p_first_threshold",
        "number in [0, 1]",
        "RFC 6693 P_first_threshold: aged predictabilities below it are dropped.",
    ),
    key(
        "prediction.delta",
        "number in [0, 1)",
        "RFC 6693 δ: predictabilities stay at most 1 − δ.",
    ),
    key(
        "prediction.beta",
        "number in [0, 1]",
        "RFC 6693 β: weight of transitive predictabilities.",
    ),
    key(
        "prediction.gamma",
        "number in (0, 1]",
        "RFC 6693 γ: aging factor per time unit.",
    ),
    key(
        "prediction.time_unit_s",
        "integer, seconds",
        "Length of one aging time unit.",
    ),
    key(
        "prediction.i_typ_s",
        "integer, seconds",
        "RFC 6693 I_typ: typical time between encounters.",
    ),
    key(
        "summary.false_positive_rate",
        "number in (0, 0.5)",
        "False-positive rate the session summary's Bloom filter is sized for.",
    ),
    key(
        "metrics.enabled",
        "boolean",
        "Serve Prometheus metrics over HTTP.",
    ),
    key(
        "metrics.listen",
        "\"ADDR:PORT\"",
        "Metrics endpoint address; keep it on loopback unless firewalled.",
    ),
    key(
        "log.level",
        "filter directive",
        "Log filter, e.g. `\"info\"` or `\"warn,mule=debug\"`; `RUST_LOG` overrides it.",
    ),
    key(
        "log.format",
        "\"auto\", \"compact\", \"plain\" or \"json\"",
        "Log format; auto is compact on a terminal and plain (journald-friendly) otherwise.",
    ),
    optional(
        "control.socket",
        "path",
        "Unix control socket used by the `mule` CLI (mode 0660).",
        "`DATA_DIR/mule.sock`",
    ),
    key(
        "media.paths",
        "list of path patterns",
        "Where removable media appear (`*`/`?` per path component, e.g. `/media/*/*`); a directory holding `mule/FORMAT` is imported when it appears. Empty: only `mule media sync` uses media.",
    ),
    key(
        "media.carry_out",
        "boolean",
        "After importing from a medium, write back the bundles this node carries for others and those it published.",
    ),
    key(
        "media.scan_interval_ms",
        "milliseconds, 100 to 3600000",
        "How often `media.paths` are looked at for new media.",
    ),
];

/// The value of a dotted key in a serialised configuration.
pub(crate) fn lookup<'a>(root: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    match dotted.split_once('.') {
        None => root.get(dotted),
        Some((section, leaf)) => root.get(section)?.as_table()?.get(leaf),
    }
}

/// Serialises a configuration to a TOML table.
pub(crate) fn to_table(config: &Config) -> toml::Table {
    // Every field type serialises to TOML (validated integers fit in i64);
    // a failure here is a bug in this crate, not bad input.
    toml::Table::try_from(config).expect("a Config always serialises to a TOML table")
}

/// Renders a value as it is written in TOML (inline).
pub(crate) fn inline(value: &toml::Value) -> String {
    value.to_string()
}

/// The Markdown reference table of every key with its default.
pub fn reference() -> String {
    let defaults = to_table(&Config::default());
    let mut out = String::new();
    out.push_str("# Mule configuration reference\n\n");
    out.push_str("<!-- Generated from mule-config's key list by `MULE_BLESS=1 cargo test -p mule-config`; do not edit. -->\n\n");
    out.push_str(
        "Every key is optional: a missing key takes the default shown here, so `mule run` needs no file. \
         Unknown keys, wrong types and impossible values are rejected with the file, line and key. \
         Sizes are integers in bytes and durations integers in the unit of the key's suffix \
         (`_ms`, `_s`), so values are exact. The fully commented default file is `config/mule.toml`.\n\n",
    );
    out.push_str("| Key | Type | Default | Description |\n");
    out.push_str("|---|---|---|---|\n");
    for k in KEYS {
        let default = match (lookup(&defaults, k.key), k.unset) {
            (Some(v), _) => format!("`{}`", inline(v)),
            (None, Some(unset)) => format!("unset: {unset}"),
            (None, None) => "(none)".to_string(),
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            k.key,
            escape(k.kind),
            escape(&default),
            escape(k.doc)
        ));
    }
    out
}

fn escape(cell: &str) -> String {
    cell.replace('|', "\\|")
}

/// The effective configuration as commented TOML, every key included.
pub(crate) fn render(config: &Config) -> String {
    let table = to_table(config);
    let mut out = String::from("# Effective Mule configuration (every key, defaults included).\n");
    let mut section = "";
    for k in KEYS {
        let (this_section, leaf) = k.key.split_once('.').unwrap_or(("", k.key));
        if this_section != section {
            out.push_str(&format!("\n[{this_section}]\n"));
            section = this_section;
        }
        match (lookup(&table, k.key), k.unset) {
            (Some(v), _) => out.push_str(&format!("{leaf} = {}\n", inline(v))),
            (None, unset) => out.push_str(&format!(
                "# {leaf} is unset: {}\n",
                unset.unwrap_or("no value").replace('`', "")
            )),
        }
    }
    out
}
