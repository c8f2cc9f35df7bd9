//! Releases (issue 13): release numbers at publish, equivocation at publish and from the
//! network, rollback protection, staged installs over a 10-node loopback fleet, and a failed
//! health check rolling back to the previous export.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    Node, NodeConfig, content, free_port, publish, publisher_key, sample, scrape, wait_for,
};

fn state(node: &Node, id: &str) -> String {
    node.bundle(id)
        .and_then(|b| b["state"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn wait_state(node: &Node, id: &str, prefix: &str, timeout: Duration) {
    wait_for(
        &format!("bundle {} to be {prefix}", &id[..12]),
        timeout,
        || state(node, id).starts_with(prefix).then_some(()),
    );
}

/// The lineage entry `name` of `mule status --json`.
fn lineage(st: &Value, name: &str) -> Option<Value> {
    st["releases"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
        .cloned()
}

fn node_id(node: &Node) -> [u8; 32] {
    let hex = node.status()["node_id"]
        .as_str()
        .expect("node id")
        .to_string();
    hex::decode(hex).expect("hex").try_into().expect("32 bytes")
}

#[test]
fn publish_numbers_releases_and_refuses_a_second_bundle_with_a_used_number() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, key, hex) = publisher_key(keys.path(), "pub.key");
    let node = Node::new(&NodeConfig::fw(&hex));
    let r1 = publish(&node, &key, "fw", "1.0", &content(1, 40_000), &[]);
    let r2 = publish(&node, &key, "fw", "1.1", &content(2, 40_000), &[]);
    let release = |id: &str| node.json(&["inspect", id])["release"].as_u64();
    assert_eq!((release(&r1), release(&r2)), (Some(1), Some(2)));
    // Another name is another lineage: it starts at 1.
    let other = publish(&node, &key, "tool", "1.0", &content(3, 1000), &[]);
    assert_eq!(release(&other), Some(1));
    // An explicit number that is taken, with other content: refused, nothing stored.
    let file = node.path("evil.bin");
    std::fs::write(&file, content(4, 40_000)).expect("write");
    let out = node.mule(&[
        "publish",
        file.to_str().expect("path"),
        "--name",
        "fw",
        "--version",
        "1.1b",
        "--key",
        key.to_str().expect("path"),
        "--release",
        "2",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("equivocation"), "{err}");
    assert_eq!(node.bundles().len(), 3);
    // An explicit free number is fine, and staged.
    let r7 = publish(
        &node,
        &key,
        "fw",
        "2.0",
        &content(5, 100),
        &["--release", "7", "--stage", "5%@0", "--stage", "100%@2d"],
    );
    let doc = node.json(&["inspect", &r7]);
    assert_eq!(doc["release"], 7);
    assert_eq!(doc["stages"], serde_json::json!(["5%@0s", "100%@172800s"]));
    assert_eq!(
        release(&publish(&node, &key, "fw", "2.1", &content(6, 100), &[])),
        Some(8)
    );
}

#[test]
fn an_older_release_after_a_newer_one_is_refused_and_counted() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, key, hex) = publisher_key(keys.path(), "pub.key");
    let mut a = Node::new(&NodeConfig::fw(&hex));
    a.start();
    // C holds only the old release: A knows release 2 and no longer offers release 1
    // (supersession), so the old release reaches B from a node that never saw release 2.
    let mut c = Node::new(&NodeConfig::default());
    c.start();
    let port = free_port();
    let mut b = Node::new(&NodeConfig {
        peers: vec![a.listen().to_string(), c.listen().to_string()],
        metrics_port: Some(port),
        ..NodeConfig::fw(&hex)
    });
    b.start();
    let r2 = publish(
        &a,
        &key,
        "fw",
        "2.0",
        &content(1, 60_000),
        &["--release", "2"],
    );
    wait_state(&b, &r2, "installed", Duration::from_secs(60));
    let r1 = publish(
        &c,
        &key,
        "fw",
        "1.0",
        &content(2, 60_000),
        &["--release", "1"],
    );
    wait_for(
        "the refused rollback to be counted",
        Duration::from_secs(60),
        || (sample(&scrape(port), "mule_rollback_refused_total") == Some(1.0)).then_some(()),
    );
    let st = b.status();
    assert_eq!(st["release_events"]["rollback_refused"], 1);
    let l = lineage(&st, "fw").expect("lineage fw in status");
    assert_eq!(
        (l["installed"].as_u64(), l["newest"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(l["rollback_refused"], 1);
    let s1 = state(&b, &r1);
    assert!(s1.starts_with("superseded"), "release 1 on B: {s1}");
    assert!(b.log_text().contains("rollback refused"));
    b.stop();
    c.stop();
    a.stop();
}

#[test]
fn equivocation_from_the_network_installs_neither_and_flags_the_key() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, key, hex) = publisher_key(keys.path(), "pub.key");
    // Two stores of the same publisher key each sign a release 1 of fw.
    let mut a = Node::new(&NodeConfig::fw(&hex));
    let mut c = Node::new(&NodeConfig::fw(&hex));
    a.start();
    c.start();
    let x = publish(
        &a,
        &key,
        "fw",
        "1.0",
        &content(1, 30_000),
        &["--release", "1"],
    );
    let y = publish(
        &c,
        &key,
        "fw",
        "1.0-other",
        &content(2, 30_000),
        &["--release", "1"],
    );
    let port = free_port();
    // B holds installs, so that the first to arrive is not installed before the second is
    // known (with both known, neither is installable; the hold only orders the test).
    let mut b = Node::new(&NodeConfig {
        peers: vec![a.listen().to_string(), c.listen().to_string()],
        metrics_port: Some(port),
        tail: "[install]\nhold = true\n".into(),
        ..NodeConfig::fw(&hex)
    });
    b.start();
    wait_for("equivocation flagged on B", Duration::from_secs(60), || {
        let l = lineage(&b.status(), "fw")?;
        (l["equivocal"] == serde_json::json!([1])).then_some(())
    });
    for id in [&x, &y] {
        let s = state(&b, id);
        assert!(s.starts_with("equivocal"), "{s}");
        assert_eq!(b.bundle(id).expect("bundle")["wanted"], false);
    }
    assert_eq!(sample(&scrape(port), "mule_equivocations_total"), Some(1.0));
    let text = b.ok(&["status"]);
    assert!(text.contains("PUBLISHER KEY FLAGGED"), "{text}");
    assert!(b.log_text().contains("equivocation"));
    b.stop();
    a.stop();
    c.stop();
}

#[test]
fn a_failed_health_check_rolls_back_to_the_previous_export() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, key, hex) = publisher_key(keys.path(), "pub.key");
    let mut a = Node::new(&NodeConfig::fw(&hex));
    a.start();
    let scratch = tempfile::tempdir().expect("tempdir");
    let log = scratch.path().join("rollback");
    let mut b = Node::new(&NodeConfig {
        peers: vec![a.listen().to_string()],
        store_extra: vec![
            // Version 2.0 is broken.
            r#"health_check = ["/bin/sh", "-c", "test \"$MULE_BUNDLE_VERSION\" != 2.0"]"#.into(),
            format!(
                r#"on_rollback = ["/bin/sh", "-c", "echo \"$MULE_ROLLBACK_RELEASE $MULE_ROLLBACK_PATH\" > {}"]"#,
                log.display()
            ),
        ],
        ..NodeConfig::fw(&hex)
    });
    b.start();
    let v1 = content(1, 50_000);
    let r1 = publish(&a, &key, "fw", "1.0", &v1, &[]);
    wait_state(&b, &r1, "installed", Duration::from_secs(60));
    let r2 = publish(&a, &key, "fw", "2.0", &content(2, 50_000), &[]);
    wait_state(&b, &r2, "rolled_back", Duration::from_secs(60));
    let line = std::fs::read_to_string(&log).expect("on_rollback ran");
    let (release, path) = line.trim().split_once(' ').expect("release and path");
    assert_eq!(release, "1");
    assert_eq!(std::fs::read(path).expect("previous export kept"), v1);
    let st = b.status();
    assert_eq!(lineage(&st, "fw").expect("lineage")["installed"], 1);
    assert_eq!(st["release_events"]["rolled_back"], 1);
    assert!(state(&b, &r2).contains("rolled back to release 1"));
    b.stop();
    a.stop();
}

/// Ten nodes: a publisher and nine subscribers dialling it. With `--stage 50%@0 --stage
/// 100%@20s` the nodes whose cohort is below 50% install at once and the others wait for
/// the second stage, saying so in `mule status`; the same split holds for the next release.
#[test]
fn staged_install_over_ten_nodes_keeps_cohorts_across_releases() {
    const DELAY: u64 = 20;
    let keys = tempfile::tempdir().expect("tempdir");
    let (sk, key, hex) = publisher_key(keys.path(), "pub.key");
    let mut a = Node::new(&NodeConfig::fw(&hex));
    a.start();
    let mut fleet: Vec<Node> = (0..9)
        .map(|_| {
            Node::new(&NodeConfig {
                peers: vec![a.listen().to_string()],
                ..NodeConfig::fw(&hex)
            })
        })
        .collect();
    for n in &mut fleet {
        n.start();
    }
    let ids: Vec<[u8; 32]> = fleet.iter().map(node_id).collect();
    // A name whose cohorts split these nine nodes at least 3/6 either way (node ids are
    // random; the name is free).
    let publisher = sk.verifying_key().to_bytes();
    let early_of = |name: &str| -> Vec<bool> {
        let l = mule_bundle::Lineage {
            publisher,
            name: name.into(),
        };
        ids.iter()
            .map(|n| mule_bundle::release::cohort(n, &l) < 5000)
            .collect()
    };
    let name = (0..)
        .map(|i| format!("fw{i}"))
        .find(|n| (3..=6).contains(&early_of(n).iter().filter(|e| **e).count()))
        .expect("a name that splits the fleet");
    let early = early_of(&name);
    let stages = ["--stage", "50%@0", "--stage", "100%@20s"];
    for (round, version) in ["1.0", "2.0"].into_iter().enumerate() {
        let id = publish(
            &a,
            &key,
            &name,
            version,
            &content(round as u64, 20_000),
            &stages,
        );
        let created = a.json(&["inspect", &id])["created"]
            .as_u64()
            .expect("created");
        let mut installed_at: Vec<Option<u64>> = vec![None; fleet.len()];
        let mut said_waiting = vec![false; fleet.len()];
        let end = Instant::now() + Duration::from_secs(120);
        while installed_at.iter().any(Option::is_none) {
            assert!(
                Instant::now() < end,
                "release {version} not installed everywhere: {installed_at:?}"
            );
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs();
            for (i, n) in fleet.iter().enumerate() {
                let s = state(n, &id);
                if s.starts_with("waiting: staged rollout") {
                    said_waiting[i] = true;
                }
                if s == "installed" && installed_at[i].is_none() {
                    installed_at[i] = Some(now);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for i in 0..fleet.len() {
            let at = installed_at[i].expect("installed");
            if early[i] {
                assert!(
                    at < created + DELAY,
                    "release {version}: early node {i} installed at +{}s",
                    at - created
                );
                assert!(!said_waiting[i], "release {version}: early node {i} waited");
            } else {
                assert!(
                    at >= created + DELAY,
                    "release {version}: late node {i} installed at +{}s",
                    at - created
                );
                assert!(
                    said_waiting[i],
                    "release {version}: late node {i} never said it waits"
                );
            }
        }
    }
    for n in &mut fleet {
        n.stop();
    }
    a.stop();
}
