//! The `mule` CLI (issue 6): every verb round-trips through a running daemon's control
//! socket with its `--json` output parsed; daemon-only verbs say plainly when no daemon runs
//! and how to start one; offline verbs open the store directly; keys, config check/show and
//! the one-daemon-per-data-directory rule behave as documented.

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::Value;
use support::{Node, NodeConfig, content, publisher_key, wait_for};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Publishes `data` into `node` (through the daemon when one runs) and returns the id.
fn publish(node: &Node, key: &std::path::Path, name: &str, data: &[u8]) -> String {
    let id = support::publish(
        node,
        key,
        name,
        "2.1",
        data,
        &["--meta", "run=/usr/sbin/apply"],
    );
    assert!(is_hex64(&id), "publish printed {id:?}, not a bundle id");
    id
}

#[test]
fn key_gen_writes_0600_refuses_overwrite_and_show_matches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::new(&NodeConfig::default());
    let path = dir.path().join("pub.key");
    let p = path.to_str().expect("path");
    let printed = node.ok(&["key", "gen", "--out", p]).trim().to_string();
    assert!(is_hex64(&printed), "key gen printed {printed:?}");
    let mode = std::fs::metadata(&path)
        .expect("key file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "key file mode {mode:o}");
    assert_eq!(node.ok(&["key", "show", p]).trim(), printed);
    let before = std::fs::read(&path).expect("read key");
    let again = node.mule(&["key", "gen", "--out", p]);
    assert!(!again.status.success(), "key gen overwrote an existing key");
    assert!(
        stderr(&again).contains(p),
        "refusal does not name the file: {}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read(&path).expect("read key"),
        before,
        "key changed"
    );
    let missing = node.mule(&[
        "key",
        "show",
        dir.path().join("nope").to_str().expect("path"),
    ]);
    assert!(
        !missing.status.success(),
        "key show of a missing file succeeded"
    );
}

#[test]
fn config_check_names_file_line_and_key_and_show_round_trips() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, _, hex) = publisher_key(keys.path(), "pub.key");
    let node = Node::new(&NodeConfig::fw(&hex));
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/mule.toml");
    let out = node.mule(&["config", "check", shipped]);
    assert!(
        out.status.success(),
        "shipped config rejected: {}",
        stderr(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
    // The test nodes' own config is valid too.
    node.ok(&["config", "check", node.config.to_str().expect("path")]);

    let bad = [
        (
            "unknown key",
            "[session]\nlisten = [\"127.0.0.1:0\"]\nlisen = 3\n",
            3,
            "lisen",
        ),
        (
            "wrong type",
            "[discovery]\n\nbeacons = \"yes\"\n",
            3,
            "beacons",
        ),
        (
            "impossible quota",
            "[store]\npiece_size_default = 65536\nquota_bytes = 1000\n",
            3,
            "quota_bytes",
        ),
        (
            "bad publisher key",
            "[trust]\npublishers = [\"abc\"]\n",
            2,
            "publishers",
        ),
    ];
    for (what, text, line, key) in bad {
        let file = node.path(&format!("{}.toml", what.replace(' ', "-")));
        std::fs::write(&file, text).expect("write");
        let out = node.mule(&["config", "check", file.to_str().expect("path")]);
        assert!(!out.status.success(), "{what}: config check accepted it");
        let err = stderr(&out);
        let at = format!("{}:{line}:", file.display());
        assert!(err.contains(&at), "{what}: message lacks {at:?}: {err}");
        assert!(
            err.contains(key),
            "{what}: message lacks the key {key:?}: {err}"
        );
    }

    // `config show` is TOML that parses back to the effective configuration.
    let shown = node.ok(&["config", "show"]);
    let parsed = mule_config::Config::from_toml_str(&shown, "config show")
        .unwrap_or_else(|e| panic!("config show is not a valid config: {e}\n{shown}"));
    let mut effective = mule_config::Config::load(&node.config).expect("node config");
    // The effective data directory is the one --data-dir named.
    effective.data_dir = Some(node.data.clone());
    assert_eq!(
        parsed, effective,
        "config show differs from the loaded file"
    );
    assert_eq!(parsed.subscriptions.channels, ["fw"]);
    assert_eq!(parsed.trust.publishers.len(), 1);
    // Without --config: the embedded defaults.
    let out = std::process::Command::new(support::mule_bin())
        .args(["config", "show"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let mut parsed =
        mule_config::Config::from_toml_str(&String::from_utf8_lossy(&out.stdout), "show")
            .expect("default show parses");
    assert!(parsed.data_dir.is_some(), "show names the data directory");
    parsed.data_dir = None;
    assert_eq!(parsed, mule_config::Config::default());
}

/// Issue 11: `config show` printed the file's configuration, not the one a daemon would
/// run with: it ignored `--data-dir` and the subscriptions changed at run time.
#[test]
fn config_show_is_the_effective_configuration() {
    let mut a = Node::new(&NodeConfig {
        channels: vec!["fw".into()],
        ..NodeConfig::default()
    });
    a.start();
    a.ok(&["subscribe", "maps"]);
    a.ok(&["unsubscribe", "fw"]);
    a.stop();
    let shown = a.ok(&["config", "show"]);
    let parsed = mule_config::Config::from_toml_str(&shown, "config show").expect("parses");
    assert_eq!(
        parsed.data_dir.as_deref(),
        Some(a.data.as_path()),
        "{shown}"
    );
    assert_eq!(parsed.subscriptions.channels, ["maps"], "{shown}");
}

/// Issue 11: a missing file printed its cause twice (`... (os error 2): ... (os error 2)`),
/// and reading verbs on a data directory that holds no store created an empty one there.
#[test]
fn errors_say_each_cause_once_and_reading_verbs_create_no_store() {
    let node = Node::new(&NodeConfig::default());
    for args in [
        &["key", "show", "/nonexistent/mule-test.key"][..],
        &["config", "check", "/nonexistent/mule-test.toml"],
    ] {
        let out = node.mule(args);
        assert!(!out.status.success(), "mule {args:?} succeeded");
        let err = stderr(&out);
        assert_eq!(
            err.matches("os error 2").count(),
            1,
            "mule {args:?}: cause not said exactly once: {err}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let none = dir.path().join("no-node-here");
    // Listing a directory no node has used shows no bundles, and creates nothing.
    let out = std::process::Command::new(support::mule_bin())
        .arg("--data-dir")
        .arg(&none)
        .args(["bundles", "--json"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    assert!(!none.exists(), "mule bundles created {}", none.display());
    for verb in [
        &["inspect", "abcd"][..],
        &["export", "abcd", "--out", "/dev/null"],
        &["verify"],
    ] {
        let out = std::process::Command::new(support::mule_bin())
            .arg("--data-dir")
            .arg(&none)
            .args(verb)
            .output()
            .expect("run");
        assert!(!out.status.success(), "mule {verb:?} succeeded on no store");
        let err = stderr(&out);
        assert!(
            err.contains("no store in") || err.contains("no bundle"),
            "mule {verb:?}: {err}"
        );
        assert!(!none.exists(), "mule {verb:?} created {}", none.display());
    }
}

#[test]
fn daemon_only_verbs_without_a_daemon_say_how_to_start_one() {
    let node = Node::new(&NodeConfig::default());
    for args in [
        &["status", "--json"][..],
        &["status"],
        &["peers", "--json"],
        &["contacts", "--json"],
        &["subscribe", "fw"],
        &["unsubscribe", "fw"],
    ] {
        let out = node.mule(args);
        assert!(
            !out.status.success(),
            "mule {args:?} succeeded without a daemon"
        );
        let err = stderr(&out);
        assert!(
            err.contains("no mule daemon is running") && err.contains("mule run"),
            "mule {args:?}: unhelpful message: {err}"
        );
    }
}

#[test]
fn offline_verbs_open_the_store_directly() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, key, hex) = publisher_key(keys.path(), "pub.key");
    let node = Node::new(&NodeConfig::fw(&hex));
    let data = content(11, 100_000);
    let id = publish(&node, &key, "offline", &data);
    let list = node.bundles();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["pieces_have"], list[0]["pieces_total"]);
    assert_eq!(list[0]["pieces_total"], 7, "100 000 bytes in 16 KiB pieces");
    assert_eq!(list[0]["published"], true);
    let info = node.json(&["inspect", &id[..10]]);
    assert_eq!(info["id"], id.as_str(), "inspect by unique prefix");
    assert_eq!(info["content_len"], 100_000);
    assert!(info["created"].is_u64(), "--json keeps the raw Unix time");
    // Issue 11: the text form printed raw Unix seconds and byte counts.
    let text = node.ok(&["inspect", &id]);
    let created = text
        .lines()
        .find(|l| l.starts_with("created"))
        .expect("created line");
    assert!(
        created.contains('T') && created.ends_with("ago)") && created.contains('Z'),
        "created is not a date: {created}"
    );
    let len = text
        .lines()
        .find(|l| l.starts_with("content_len"))
        .expect("content_len line");
    assert!(len.contains("97.7 KiB"), "size without a unit: {len}");
    assert_eq!(node.export(&id), data, "offline export");
    let m = node.path("offline.manifest");
    node.ok(&["manifest", &id, "--out", m.to_str().expect("path")]);
    assert!(mule_bundle::VerifiedManifest::decode(&std::fs::read(&m).expect("read")).is_ok());
    // No daemon was ever started here.
    assert!(
        !node.data.join("mule.sock").exists(),
        "a control socket appeared"
    );
}

#[test]
fn every_verb_round_trips_through_the_daemon() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, key, hex) = publisher_key(keys.path(), "pub.key");
    let mut a = Node::new(&NodeConfig::fw(&hex));
    a.start();

    // The control socket: owner and group only.
    let sock = a.data.join("mule.sock");
    let mode = std::fs::metadata(&sock)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        mode & 0o007,
        0,
        "control socket is open to others: {mode:o}"
    );

    // status --json
    let st = a.status();
    let node_id = st["node_id"].as_str().expect("node_id").to_string();
    assert!(is_hex64(&node_id), "node_id {node_id:?}");
    let listen: Vec<SocketAddr> = st["listen"]
        .as_array()
        .expect("listen array")
        .iter()
        .map(|v| v.as_str().expect("string").parse().expect("socket address"))
        .collect();
    assert!(
        !listen.is_empty() && listen.iter().all(|l| l.ip().is_loopback() && l.port() != 0),
        "listen {listen:?}"
    );
    assert_eq!(st["subscriptions"], serde_json::json!(["fw"]));
    assert_eq!(st["bundles"], serde_json::json!([]));

    // publish into the running daemon (its store is locked: this must use the socket).
    let data = content(12, 200_000);
    let id = publish(&a, &key, "app", &data);
    let st = a.status();
    let b = st["bundles"]
        .as_array()
        .expect("bundles")
        .iter()
        .find(|b| b["id"] == id.as_str())
        .unwrap_or_else(|| panic!("status lacks the published bundle: {st}"))
        .clone();
    assert_eq!(b["pieces_have"], 13);
    assert_eq!(b["pieces_total"], 13);

    // The human-readable forms work too.
    let text = a.ok(&["status"]);
    assert!(
        text.contains(&node_id) && text.contains(&id[..16]),
        "status text:\n{text}"
    );
    assert!(a.ok(&["bundles"]).contains("13/13"), "bundles text");

    // bundles --json
    let list = a.bundles();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["name"], "app");
    assert_eq!(list[0]["version"], "2.1");
    assert_eq!(list[0]["size"], 200_000);
    assert_eq!(list[0]["published"], true);
    assert_eq!(list[0]["trusted"], true);

    // inspect --json
    let info = a.json(&["inspect", &id]);
    assert_eq!(info["name"], "app");
    assert_eq!(info["publisher"], hex.as_str());
    assert_eq!(info["audience"], serde_json::json!(["fw"]));
    assert_eq!(info["piece_size"], 16384);
    assert_eq!(info["pieces"], 13);
    assert_eq!(info["pieces_have"], 13);
    assert_eq!(info["metadata"]["run"], "/usr/sbin/apply");
    assert_eq!(
        info["content_hash"],
        blake3::hash(&data).to_hex().as_str(),
        "inspect shows the content hash"
    );

    // export --out: byte-identical
    assert_eq!(a.export(&id), data, "export through the daemon");

    // manifest --out, then import-manifest into a second, stopped node.
    let m = a.path("app.manifest");
    a.ok(&["manifest", &id, "--out", m.to_str().expect("path")]);
    let c = Node::new(&NodeConfig::fw(&hex));
    let imported = c.ok(&["import-manifest", m.to_str().expect("path")]);
    assert_eq!(imported.trim(), id);
    let cb = c.bundle(&id).expect("imported bundle listed");
    assert_eq!(cb["pieces_have"], 0);
    assert_eq!(cb["pieces_total"], 13);
    assert!(
        !c.data.join("mule.sock").exists(),
        "import-manifest started a daemon"
    );
    let corrupt = c.path("corrupt.manifest");
    let mut bytes = std::fs::read(&m).expect("read");
    *bytes.last_mut().expect("bytes") ^= 1;
    std::fs::write(&corrupt, &bytes).expect("write");
    let out = c.mule(&["import-manifest", corrupt.to_str().expect("path")]);
    assert!(!out.status.success(), "a corrupted manifest was imported");
    assert!(
        stderr(&out).contains("not a valid signed manifest"),
        "{}",
        stderr(&out)
    );

    // peers / contacts: a second node dials this one as a static peer and gets the bundle.
    let mut cfg_b = NodeConfig::fw(&hex);
    cfg_b.peers = vec![listen[0].to_string()];
    let mut bn = Node::new(&cfg_b);
    bn.start();
    let b_id = bn.status()["node_id"].as_str().expect("id").to_string();
    let peer = wait_for("the peer in `mule peers`", Duration::from_secs(15), || {
        let peers = a.json(&["peers"]);
        peers
            .as_array()
            .expect("peers --json is an array")
            .iter()
            .find(|p| p["node_id"] == b_id.as_str())
            .cloned()
    });
    assert_eq!(peer["in_session"], true, "{peer}");
    assert_eq!(peer["session_transport"], "tcp", "{peer}");
    wait_for(
        "the published bundle to spread",
        Duration::from_secs(30),
        || {
            let b = bn.bundle(&id)?;
            (b["pieces_have"] == 13).then_some(())
        },
    );
    assert_eq!(bn.export(&id), data, "spread bundle differs");
    bn.stop();
    let contact = wait_for(
        "the peer in `mule contacts`",
        Duration::from_secs(15),
        || {
            let list = a.json(&["contacts"]);
            list.as_array()
                .expect("contacts --json is an array")
                .iter()
                .find(|p| p["node_id"] == b_id.as_str())
                .cloned()
        },
    );
    assert!(
        contact["contacts"].as_u64().expect("count") >= 1,
        "{contact}"
    );
    assert!(
        contact["bytes"].as_u64().expect("bytes") > 200_000,
        "{contact}"
    );

    // subscribe / unsubscribe, shown in status and kept across a restart.
    let subs = |n: &Node| -> Vec<String> {
        let mut v: Vec<String> = n.status()["subscriptions"]
            .as_array()
            .expect("subscriptions")
            .iter()
            .map(|c| c.as_str().expect("string").to_string())
            .collect();
        v.sort();
        v
    };
    a.ok(&["subscribe", "cam"]);
    a.ok(&["subscribe", "maps"]);
    assert_eq!(subs(&a), ["cam", "fw", "maps"]);
    a.ok(&["unsubscribe", "cam"]);
    assert_eq!(subs(&a), ["fw", "maps"]);
    let bad = a.mule(&["subscribe", ""]);
    assert!(!bad.status.success(), "an empty channel name was accepted");
    a.stop();
    a.start();
    assert_eq!(subs(&a), ["fw", "maps"], "subscriptions after a restart");
    let st = a.status();
    assert_eq!(
        st["node_id"],
        node_id.as_str(),
        "node id changed across a restart"
    );
    assert_eq!(a.pieces_have(&id), 13, "bundle lost across a restart");
    a.stop();
}

#[test]
fn a_second_daemon_on_the_same_data_dir_fails_clearly() {
    let mut a = Node::new(&NodeConfig::default());
    a.start();
    let before = a.status();
    let mut second = support::KillOnDrop(a.spawn_run());
    let status = wait_for("the second daemon to exit", Duration::from_secs(15), || {
        second.0.try_wait().expect("wait")
    });
    assert!(
        !status.success(),
        "a second daemon started on the same data directory"
    );
    let log = a.log_text();
    assert!(
        log.contains("already") || log.contains("in use") || log.contains("locked"),
        "the second daemon did not say why it failed: {log}"
    );
    // The first one is unaffected and still owns its control socket.
    assert!(a.is_running(), "the first daemon died");
    let after = a.status();
    assert_eq!(after["node_id"], before["node_id"]);
    a.stop();
}

/// Subscriptions set in the config file can be dropped at run time, and that sticks.
#[test]
fn unsubscribing_a_configured_channel_survives_a_restart() {
    let mut a = Node::new(&NodeConfig {
        channels: vec!["fw".into()],
        ..NodeConfig::default()
    });
    a.start();
    a.ok(&["unsubscribe", "fw"]);
    assert_eq!(a.status()["subscriptions"], serde_json::json!([]));
    // Issue 11: unsubscribing from a channel never subscribed said it succeeded.
    let again = a.mule(&["unsubscribe", "fw"]);
    assert!(!again.status.success(), "unsubscribing twice succeeded");
    assert!(
        stderr(&again).contains("not subscribed to"),
        "{}",
        stderr(&again)
    );
    a.stop();
    a.start();
    let subs: Value = a.status()["subscriptions"].clone();
    a.stop();
    assert_eq!(
        subs,
        serde_json::json!([]),
        "`fw` came back after a restart"
    );
}

/// `control.socket` moves the control socket; the CLI must find the daemon there.
#[test]
fn cli_finds_a_daemon_on_a_configured_control_socket() {
    let a = Node::new(&NodeConfig::default());
    let sock = a.path("ctl.sock");
    let text = format!(
        "{}\n[control]\nsocket = {:?}\n",
        NodeConfig::default().toml(),
        sock.to_str().expect("path")
    );
    std::fs::write(&a.config, text).expect("write config");
    let child = support::KillOnDrop(a.spawn_run());
    wait_for(
        "the configured control socket",
        Duration::from_secs(15),
        || sock.exists().then_some(()),
    );
    let out = a.mule(&["status", "--json"]);
    drop(child);
    assert!(
        out.status.success(),
        "status did not reach the daemon on {}: {}",
        sock.display(),
        stderr(&out)
    );
}

/// Reads from a control connection until the daemon closes it (or 5 s); returns the bytes.
fn drain(s: &mut std::os::unix::net::UnixStream) -> (Vec<u8>, bool) {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(_) => return (out, false),
        }
    }
}

/// A hostile or broken local client on the control socket gets an error and a closed
/// connection; the daemon stays up and keeps serving the CLI.
#[test]
fn control_socket_refuses_garbage_and_oversized_messages() {
    use std::io::Write;
    let mut a = Node::new(&NodeConfig::default());
    a.start();
    let sock = a.data.join("mule.sock");
    for (what, bytes) in [
        ("a 4 GiB length prefix", vec![0xff, 0xff, 0xff, 0xff]),
        ("garbage CBOR", vec![0, 0, 0, 3, 0xff, 0x00, 0x13]),
        ("an unknown request", {
            let mut v = vec![0, 0, 0, 5];
            v.extend_from_slice(b"\x64nope");
            v
        }),
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
        s.write_all(&bytes).expect("write");
        let (answer, closed) = drain(&mut s);
        assert!(closed, "{what}: the daemon kept the connection open");
        assert!(!answer.is_empty(), "{what}: no error answer");
        assert!(a.is_running(), "{what}: the daemon died");
        a.status();
    }
    a.stop();
}

/// Idle control connections (a stuck or suspended CLI, a local client that never speaks)
/// must not lock the CLI out of the daemon: with 20 of them held (more than the daemon
/// serves at once), `mule status` is answered within 2 s.
#[test]
fn idle_control_connections_do_not_lock_out_the_cli() {
    let mut a = Node::new(&NodeConfig::default());
    a.start();
    let sock = a.data.join("mule.sock");
    let idle: Vec<_> = (0..20)
        .map(|_| std::os::unix::net::UnixStream::connect(&sock).expect("connect"))
        .collect();
    // Wait until the daemon has taken them all up: it serves 16 at once, so it has closed
    // 4 of them (the newest before this change, the longest idle after it).
    for s in &idle {
        s.set_nonblocking(true).expect("nonblocking");
    }
    let mut closed = vec![false; idle.len()];
    wait_for(
        "the daemon to take up the idle clients",
        Duration::from_secs(10),
        || {
            use std::io::Read;
            for (s, c) in idle.iter().zip(closed.iter_mut()) {
                let mut b = [0u8; 64];
                match (&*s).read(&mut b) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    _ => *c = true,
                }
            }
            (closed.iter().filter(|c| **c).count() >= 4).then_some(())
        },
    );
    let start = std::time::Instant::now();
    let out = a.mule(&["status", "--json"]);
    let took = start.elapsed();
    drop(idle);
    assert!(
        out.status.success(),
        "status failed with idle clients held: {}",
        stderr(&out)
    );
    assert!(
        took < Duration::from_secs(2),
        "status took {took:?} with idle clients held"
    );
    a.stop();
}
