//! The shipped files, the defaults, the error messages and the reference.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use mule_config::{Config, ConfigError, DEFAULT_TOML, KEYS, LogFormat, PublisherKey, reference};

const KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// The error's full message for `text` loaded as `origin`.
fn error(text: &str) -> String {
    match Config::from_toml_str(text, "test.toml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn default_equals_the_shipped_file() {
    let parsed = Config::from_toml_str(DEFAULT_TOML, "mule.toml").unwrap();
    assert_eq!(parsed, Config::default());
    // The embedded text is the file on disk.
    let on_disk = std::fs::read_to_string(shipped("mule.toml")).unwrap();
    assert_eq!(on_disk, DEFAULT_TOML);
    Config::default().validate().unwrap();
}

#[test]
fn an_empty_file_is_the_default() {
    assert_eq!(
        Config::from_toml_str("", "empty.toml").unwrap(),
        Config::default()
    );
}

#[test]
fn every_shipped_file_parses() {
    let pi = Config::load(&shipped("raspberry-pi.toml")).unwrap();
    assert_eq!(pi.store.quota_bytes, 256 << 20);
    assert!(pi.discovery.bluetooth);
    assert!(pi.discovery.beacon_interval_ms > Config::default().discovery.beacon_interval_ms);
    assert_eq!(pi.log.format, LogFormat::Plain);

    let car = Config::load(&shipped("vehicle-gateway.toml")).unwrap();
    assert_eq!(car.store.quota_bytes, 8 << 30);
    assert_eq!(car.discovery.interfaces, ["wlan0", "wlan1", "eth1"]);
    assert!(car.discovery.beacon_interval_ms < Config::default().discovery.beacon_interval_ms);

    // Every .toml in config/ is one of the above.
    let mut names: Vec<String> = std::fs::read_dir(env!("CARGO_MANIFEST_DIR"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml") && n != "Cargo.toml")
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["mule.toml", "raspberry-pi.toml", "vehicle-gateway.toml"]
    );
}

#[test]
fn contract_keys_exist() {
    let text = format!(
        "data_dir = \"/srv/mule\"\n\
         [discovery]\ninterfaces = [\"wlan0\"]\nbeacon_interval_ms = 800\n\
         [session]\nlisten = [\"127.0.0.1:0\"]\n\
         [subscriptions]\nchannels = [\"fw\"]\n\
         [trust]\npublishers = [\"{KEY}\"]\n\
         [store]\nquota_bytes = 8388608\n\
         [carry]\nquota_bytes = 4194304\n"
    );
    let c = Config::from_toml_str(&text, "contract.toml").unwrap();
    assert_eq!(c.data_dir.as_deref(), Some(Path::new("/srv/mule")));
    assert_eq!(c.discovery.interfaces, ["wlan0"]);
    assert_eq!(c.discovery.beacon_interval_ms, 800);
    assert_eq!(c.session.listen, ["127.0.0.1:0".parse().unwrap()]);
    assert_eq!(c.subscriptions.channels, ["fw"]);
    assert_eq!(c.trust.publishers, [KEY.parse::<PublisherKey>().unwrap()]);
    assert_eq!(c.store.quota_bytes, 8 << 20);
    assert_eq!(c.carry.quota_bytes, 4 << 20);
}

#[test]
fn unknown_keys_are_rejected_with_line_and_key() {
    assert_eq!(
        error("[discovery]\nbeacon_interval_ms = 1000\nbeacon_intervall = 5\n"),
        "test.toml:3:1: discovery.beacon_intervall: unknown key `beacon_intervall`, expected one of \
         `interfaces`, `beacons`, `beacon_interval_ms`, `beacon_interval_min_ms`, `beacon_interval_max_ms`, \
         `after_loss_ms`, `after_loss_interval_ms`, `peer_silence_ms`, `bluetooth_silence_ms`, `beacon_port`, `ipv4_group`, `ipv6`, `mdns`, `bluetooth`, `bluetooth_adapter`"
    );
    let e = error("# a comment\n\n[storage]\nquota_bytes = 1\n");
    assert!(
        e.starts_with(
            "test.toml:3:2: storage: unknown key `storage`, expected one of `data_dir`, "
        ),
        "{e}"
    );
    let e = error("store = { quota_bytes = 8388608, quota = 1 }\n");
    assert!(
        e.starts_with("test.toml:1:34: store.quota: unknown key `quota`"),
        "{e}"
    );
}

#[test]
fn wrong_types_are_rejected_with_line_and_key() {
    assert_eq!(
        error("[store]\nquota_bytes = \"1 GiB\"\n"),
        "test.toml:2:15: store.quota_bytes: invalid type: string \"1 GiB\", expected a non-negative integer"
    );
    assert_eq!(
        error("[discovery]\nmdns = \"yes\"\n"),
        "test.toml:2:8: discovery.mdns: invalid type: string \"yes\", expected true or false"
    );
    assert_eq!(
        error("[discovery]\ninterfaces = \"wlan0\"\n"),
        "test.toml:2:14: discovery.interfaces: invalid type: string \"wlan0\", expected a sequence"
    );
    assert_eq!(
        error("[carry]\nquota_bytes = -5\n"),
        "test.toml:2:15: carry.quota_bytes: invalid value: integer `-5`, expected a non-negative integer"
    );
    assert_eq!(
        error("[log]\nformat = \"xml\"\n"),
        "test.toml:2:10: log.format: unknown variant `xml`, expected one of `auto`, `compact`, `plain`, `json`"
    );
}

#[test]
fn syntax_errors_have_a_position() {
    let e = error("[session]\nlisten = [\"0.0.0.0:1\"\n");
    assert!(e.starts_with("test.toml:2:"), "{e}");
}

#[test]
fn bad_addresses_are_rejected_with_line_and_key() {
    assert_eq!(
        error("[session]\nlisten = [\"0.0.0.0:47701\", \"localhost:47701\"]\n"),
        "test.toml:2:28: session.listen[1]: invalid socket address syntax (expected \"ADDR:PORT\", IPv6 as \"[ADDR]:PORT\")"
    );
    assert_eq!(
        error("[metrics]\nlisten = \"127.0.0.1\"\n"),
        "test.toml:2:10: metrics.listen: invalid socket address syntax (expected \"ADDR:PORT\", IPv6 as \"[ADDR]:PORT\")"
    );
    assert_eq!(
        error("[discovery]\nipv4_group = \"10.0.0.1\"\n"),
        "test.toml:2:1: discovery.ipv4_group: 10.0.0.1 is not an IPv4 multicast address (224.0.0.0/4)"
    );
    assert_eq!(
        error("[session]\nlisten = [\"0.0.0.0:47701\", \"[::]:47702\"]\n"),
        "test.toml:2:28: session.listen[1]: port 47702 differs from the first address's port 47701: \
         beacons advertise a single session port"
    );
    assert_eq!(
        error("[session]\nlisten = []\n"),
        "test.toml:2:1: session.listen: needs at least one address: peers connect to it"
    );
}

#[test]
fn bad_publisher_keys_are_rejected_with_line_and_key() {
    let short = &KEY[..63];
    assert_eq!(
        error(&format!(
            "[trust]\npublishers = [\n  \"{KEY}\",\n  \"{short}\",\n]\n"
        )),
        "test.toml:4:3: trust.publishers[1]: expected 64 hex digits (an ed25519 public key), got 63 characters"
    );
    let prefixed = format!("0x{}", &KEY[2..]);
    assert_eq!(
        error(&format!("[trust]\npublishers = [\"{prefixed}\"]\n")),
        "test.toml:2:15: trust.publishers[0]: invalid hex digit 'x' at position 2 (expected 64 hex digits)"
    );
    let not_point = format!("02{}", "0".repeat(62));
    assert_eq!(
        error(&format!("[trust]\npublishers = [\"{not_point}\"]\n")),
        "test.toml:2:15: trust.publishers[0]: 64 hex digits, but not a valid ed25519 public key"
    );
    assert_eq!(
        error(&format!(
            "[trust]\npublishers = [\"{KEY}\", \"{}\"]\n",
            KEY.to_uppercase()
        )),
        format!("test.toml:2:83: trust.publishers[1]: {KEY} is listed twice")
    );
}

#[test]
fn impossible_values_are_rejected_with_line_and_key() {
    assert_eq!(
        error("[store]\n\nquota_bytes = 1000\n"),
        "test.toml:3:1: store.quota_bytes: 1000 bytes is smaller than one piece: the store must hold at \
         least one piece of the largest size (4194304 bytes)"
    );
    assert_eq!(
        error("[discovery]\nbeacon_interval_min_ms = 2000\n"),
        "test.toml:2:1: discovery.beacon_interval_min_ms: 2000 ms is larger than discovery.beacon_interval_ms \
         (1000 ms); the minimum must not exceed it"
    );
    assert_eq!(
        error("[discovery]\nafter_loss_ms = 7200000\n"),
        "test.toml:2:1: discovery.after_loss_ms: 7200000 ms is longer than the allowed 3600000 ms (0 turns it off)"
    );
    assert_eq!(
        error("[discovery]\nafter_loss_interval_ms = 10\n"),
        "test.toml:2:1: discovery.after_loss_interval_ms: 10 ms is outside the allowed range 50..=600000 ms"
    );
    assert_eq!(
        error("[discovery]\npeer_silence_ms = 1500\n"),
        "test.toml:2:1: discovery.peer_silence_ms: 1500 ms is shorter than twice discovery.beacon_interval_ms \
         (1000 ms): one lost beacon would end a contact"
    );
    assert_eq!(
        error("[summary]\nfalse_positive_rate = 0.5\n"),
        "test.toml:2:1: summary.false_positive_rate: 0.5 is outside the open interval (0, 0.5)"
    );
    assert_eq!(
        error("[summary]\nfalse_positive_rate = nan\n"),
        "test.toml:2:1: summary.false_positive_rate: NaN is outside the open interval (0, 0.5)"
    );
    assert_eq!(
        error("[prediction]\np_first_threshold = 0.6\n"),
        "test.toml:2:1: prediction.p_first_threshold: 0.6 is not below prediction.p_encounter_first (0.5): \
         every first encounter would be forgotten at once"
    );
    assert_eq!(
        error("[discovery]\ninterfaces = [\"eth0\", \"a-very-long-interface-name\"]\n"),
        "test.toml:2:23: discovery.interfaces[1]: \"a-very-long-interface-name\" is 26 bytes; interface names \
         have at most 15"
    );
}

#[test]
fn a_rule_broken_by_a_default_points_at_the_key_that_was_set() {
    // carry.quota_bytes is set, store.quota_bytes is the default 1 GiB.
    assert_eq!(
        error("[carry]\nquota_bytes = 2147483648\n"),
        "test.toml:2:1: carry.quota_bytes: 2147483648 bytes is larger than store.quota_bytes (1073741824 bytes); \
         carried bundles live in the store"
    );
    // Here only store.quota_bytes is set: the rule's key (carry) is a default.
    assert_eq!(
        error("[store]\nquota_bytes = 67108864\n"),
        "test.toml:2:1: carry.quota_bytes: 268435456 bytes is larger than store.quota_bytes (67108864 bytes); \
         carried bundles live in the store (carry.quota_bytes is not set here, so its default applies; set by \
         store.quota_bytes)"
    );
}

#[test]
fn programmatic_configs_are_validated_too() {
    let mut c = Config::default();
    c.session.idle_timeout_ms = 1500;
    let e = c.validate().unwrap_err();
    assert!(matches!(e, ConfigError::Invalid(_)));
    assert_eq!(
        e.to_string(),
        "<config>: session.idle_timeout_ms: 1500 ms is shorter than twice session.keepalive_ms (1000 ms): one \
         late keep-alive would kill a live session"
    );
    let d = e.diagnostic().unwrap();
    assert_eq!(d.key.as_deref(), Some("session.idle_timeout_ms"));
    assert_eq!(d.position, None);
}

#[test]
fn a_missing_file_names_the_path() {
    let e = Config::load(Path::new("/nonexistent/mule.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/mule.toml: cannot read the configuration file: "),
        "{e}"
    );
}

#[test]
fn load_names_the_file_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[metrics]\nenabled = 1\n").unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:2:11: metrics.enabled: invalid type: integer `1`, expected true or false",
            path.display()
        )
    );
}

/// A configuration with every optional key set, and no value at its default.
fn everything_set() -> Config {
    let text = format!(
        "data_dir = \"/srv/mule\"\n\
         [discovery]\nbluetooth_adapter = \"hci1\"\ninterfaces = [\"wlan0\", \"eth1\"]\n\
         [session]\nlisten = [\"[::1]:0\"]\n\
         [subscriptions]\nchannels = [\"fw/a b\", \"maps\"]\n\
         [trust]\npublishers = [\"{KEY}\"]\ncarry_untrusted = true\n\
         [store]\nexport_dir = \"/srv/export\"\non_complete = [\"/bin/echo\", \"done\"]\n\
         health_check = [\"/bin/true\"]\non_rollback = [\"/bin/echo\", \"back\"]\n\
         [install]\nwindow = \"Mon-Fri 01:00-05:00\"\n\
         [control]\nsocket = \"/run/mule/mule.sock\"\n\
         [log]\nlevel = \"warn,mule=debug\"\nformat = \"json\"\n"
    );
    Config::from_toml_str(&text, "all.toml").unwrap()
}

#[test]
fn show_output_parses_back_to_the_same_config() {
    for c in [
        Config::default(),
        everything_set(),
        Config::load(&shipped("raspberry-pi.toml")).unwrap(),
        Config::load(&shipped("vehicle-gateway.toml")).unwrap(),
    ] {
        let text = c.to_toml_string();
        assert_eq!(Config::from_toml_str(&text, "show").unwrap(), c, "{text}");
    }
    let text = Config::default().to_toml_string();
    assert!(
        text.contains("\n[discovery]\ninterfaces = []\nbeacons = true\n"),
        "{text}"
    );
    assert!(
        text.contains("# data_dir is unset: $STATE_DIRECTORY (systemd)"),
        "{text}"
    );
}

/// Leaf keys of a TOML table, dotted (arrays are leaves).
fn leaves(table: &toml::Table) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (k, v) in table {
        match v {
            toml::Value::Table(t) => out.extend(t.keys().map(|leaf| format!("{k}.{leaf}"))),
            _ => {
                out.insert(k.clone());
            }
        }
    }
    out
}

#[test]
fn key_list_covers_exactly_the_schema() {
    let documented: BTreeSet<String> = KEYS.iter().map(|k| k.key.to_string()).collect();
    assert_eq!(documented.len(), KEYS.len(), "a key is listed twice");
    let schema = leaves(&toml::Table::try_from(everything_set()).unwrap());
    assert_eq!(documented, schema);
    // Exactly the keys without a default are marked optional.
    let with_default = leaves(&toml::Table::try_from(Config::default()).unwrap());
    for k in KEYS {
        assert_eq!(k.unset.is_none(), with_default.contains(k.key), "{}", k.key);
    }
}

#[test]
fn key_list_covers_exactly_the_default_file() {
    let set = leaves(&DEFAULT_TOML.parse::<toml::Table>().unwrap());
    let expected: BTreeSet<String> = KEYS
        .iter()
        .filter(|k| k.unset.is_none())
        .map(|k| k.key.to_string())
        .collect();
    assert_eq!(set, expected);
    // Optional keys appear as commented-out examples in their section, and
    // every key in the file is preceded by a comment.
    let mut section = String::new();
    let mut commented = BTreeSet::new();
    let mut previous = "";
    for line in DEFAULT_TOML.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((leaf, _)) = line.strip_prefix("# ").and_then(|l| l.split_once(" = ")) {
            let dotted = if section.is_empty() {
                leaf.to_string()
            } else {
                format!("{section}.{leaf}")
            };
            commented.insert(dotted);
        } else if let Some((leaf, _)) = line.split_once(" = ") {
            assert!(
                previous.starts_with('#'),
                "`{leaf}` in [{section}] has no comment above it"
            );
        }
        previous = line;
    }
    for k in KEYS.iter().filter(|k| k.unset.is_some()) {
        assert!(
            commented.contains(k.key),
            "{} is not shown commented out in mule.toml",
            k.key
        );
    }
}

#[test]
fn reference_md_is_up_to_date() {
    let path = shipped("REFERENCE.md");
    let generated = reference();
    if std::env::var_os("MULE_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "config/REFERENCE.md is stale: run `MULE_BLESS=1 cargo test -p mule-config --test config`"
    );
    for k in KEYS {
        assert!(generated.contains(&format!("| `{}` |", k.key)));
    }
    assert!(
        generated.contains("| `discovery.beacon_interval_ms` | integer, milliseconds | `1000` |")
    );
    assert!(generated.contains(
        "| `session.listen` | list of \"ADDR:PORT\" | `[\"0.0.0.0:47701\", \"[::]:47701\"]` |"
    ));
}
