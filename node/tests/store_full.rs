//! A full store (issue 18, item 2).
//!
//! - A receiver whose data directory sits on a 30 MiB tmpfs is offered a 60 MB bundle: out
//!   of space is a `StoreFull` refusal, requests stop (bytes on the link stay far below what
//!   a receiver that keeps requesting would pull), the log has a bounded number of error and
//!   warning lines, and once the file system grows (`mount -o remount,size=…`) the transfer
//!   finishes by itself, without a restart. Needs root (mount); run with `--ignored`.
//! - A wanted bundle larger than the store quota is reported as such, not as "incomplete".
//!
//! Daemons on loopback only; the tmpfs is mounted under a fresh temporary directory and
//! unmounted by a guard even when the test fails.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Node, NodeConfig, content, free_port, publisher_key, sample, scrape, wait_for};

/// A tmpfs mounted for the test; unmounted (lazily, so a process still inside cannot keep
/// it) when dropped.
struct Tmpfs {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("mule-store-full-")
            .tempdir()
            .expect("tempdir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        run(
            &[
                "mount",
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
            ],
            &mnt,
        );
        Tmpfs { mnt, _dir: dir }
    }

    fn resize(&self, size: &str) {
        run(&["mount", "-o", &format!("remount,size={size}")], &self.mnt);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

fn run(args: &[&str], path: &Path) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .arg(path)
        .status()
        .expect("running mount");
    assert!(st.success(), "{args:?} {} failed: {st}", path.display());
}

fn publish(node: &Node, key: &Path, data: &[u8]) -> String {
    let file = node.path("content.bin");
    std::fs::write(&file, data).expect("write content");
    let out = node.ok(&[
        "publish",
        file.to_str().expect("path"),
        "--name",
        "big",
        "--version",
        "1",
        "--key",
        key.to_str().expect("path"),
        "--audience",
        "fw",
    ]);
    out.trim().to_string()
}

fn lines_with(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

#[test]
#[ignore = "needs root"]
fn a_full_disk_is_store_full_and_the_transfer_resumes_when_it_grows() {
    const SIZE: usize = 60_000_000;
    // Declared first: dropped last, after the daemon on it has been killed.
    let fs = Tmpfs::mount("30m");
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, key, hex) = publisher_key(keys.path(), "pub.key");
    let data = content(9, SIZE);
    let mut a = Node::new(&NodeConfig::fw(&hex));
    a.start();
    let id = publish(&a, &key, &data);
    let total = a.pieces_have(&id);

    let port = free_port();
    let mut b = Node::new(&NodeConfig {
        peers: vec![a.listen().to_string()],
        metrics_port: Some(port),
        ..NodeConfig::fw(&hex)
    });
    b.data = fs.mnt.join("data");
    b.start();
    let pid = b.pid();
    let received = || {
        sample(
            &scrape(port),
            "mule_bytes_received_total{transport=\"tcp\"}",
        )
        .unwrap_or(0.0)
    };

    // The disk fills: B refuses and stops requesting.
    wait_for("B's store full", Duration::from_secs(60), || {
        (sample(&scrape(port), "mule_store_full") == Some(1.0)).then_some(())
    });
    let st = b.status();
    let why = st["store_full"].as_str().unwrap_or_default().to_string();
    assert!(why.starts_with("disk full"), "status: {st}");
    // Refused as StoreFull (what goes to the peer as Refuse(StoreFull)), not as a failure.
    let m = scrape(port);
    let refused = sample(&m, "mule_pieces_rejected_total{reason=\"store_full\"}").unwrap_or(0.0);
    let failed = sample(&m, "mule_pieces_rejected_total{reason=\"store_error\"}").unwrap_or(0.0);
    assert!(
        refused >= 1.0 && failed == 0.0,
        "store_full {refused}, store_error {failed}"
    );
    let have_full = b.pieces_have(&id);
    assert!(have_full < total, "all {total} pieces fit in 30 MiB?");
    // Wait for a probe (5 s after filling) to have come and gone: it asks for one window
    // more, which fails again and sets the state again.
    wait_for("a probe while full", Duration::from_secs(60), || {
        let log = b.log_text();
        (lines_with(&log, "requesting pieces again") >= 1
            && sample(&scrape(port), "mule_store_full") == Some(1.0))
        .then_some(())
    });
    let bytes_full = received();
    eprintln!("full: {have_full}/{total} pieces, {bytes_full} bytes received; {why}");
    // 30 MiB fit; a receiver that kept requesting would pull the whole 60 MB and more.
    assert!(
        bytes_full < 45e6,
        "{bytes_full} bytes received with a 30 MiB disk"
    );
    let log = b.log_text();
    let (errors, warnings) = (lines_with(&log, "ERROR"), lines_with(&log, "WARN"));
    eprintln!("B's log while full: {errors} ERROR, {warnings} WARN lines");
    assert!(errors <= 2, "{errors} ERROR lines:\n{log}");
    assert!(warnings <= 10, "{warnings} WARN lines:\n{log}");
    assert!(
        !log.contains("cannot create data directory"),
        "misleading message:\n{log}"
    );

    // The file system grows: the transfer resumes without a restart.
    fs.resize("200m");
    let grew = Instant::now();
    while b.pieces_have(&id) < total {
        if grew.elapsed() > Duration::from_secs(120) {
            let log = b.log_text();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            panic!(
                "B not complete 120 s after the disk grew: {} of {total} pieces; B's log, last lines:\n{}",
                b.pieces_have(&id),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(b.pid(), pid, "B was restarted");
    assert!(b.is_running());
    assert_eq!(b.export(&id), data);
    let out = b.mule(&["verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let after = received();
    eprintln!("complete: {after} bytes received in all for {SIZE} bytes of content");
    assert!(after < 1.2 * SIZE as f64, "{after} bytes received");
    let st = b.status();
    assert!(st["store_full"].is_null(), "still full: {st}");
    b.stop();
    a.stop();
}

#[test]
fn a_wanted_bundle_larger_than_the_quota_is_reported_as_too_large() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, key, hex) = publisher_key(keys.path(), "pub.key");
    let mut a = Node::new(&NodeConfig::fw(&hex));
    a.start();
    let id = publish(&a, &key, &content(2, 8_000_000));
    let cfg = NodeConfig {
        peers: vec![a.listen().to_string()],
        ..NodeConfig::fw(&hex)
    };
    let mut b = Node::new(&cfg);
    let mut toml = cfg.toml();
    toml.push_str("\n[store]\nquota_bytes = 5000000\n[carry]\nquota_bytes = 1000000\n");
    std::fs::write(&b.config, toml).expect("config");
    b.start();
    // B stores the manifest, then marks the bundle wanted (a second store call): wait for
    // the wanted bundle, which is the one reported as too large.
    let bundle = wait_for("B wants the bundle", Duration::from_secs(30), || {
        b.bundle(&id).filter(|x| x["wanted"] == true)
    });
    let state = bundle["state"].as_str().unwrap_or_default().to_string();
    assert!(state.starts_with("too large"), "{bundle}");
    assert!(
        state.contains("8000000") && state.contains("5000000"),
        "{state}"
    );
    let info = b.json(&["inspect", &id]);
    assert!(
        info["state"]
            .as_str()
            .unwrap_or_default()
            .starts_with("too large"),
        "{info}"
    );
    let st = b.status();
    let listed = st["bundles"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["id"] == id.as_str()).cloned())
        .expect("in status");
    assert_eq!(listed["state"], state.as_str());
    // It fills the quota and then refuses politely.
    wait_for("B's quota full", Duration::from_secs(30), || {
        let st = b.status();
        st["store_full"]
            .as_str()
            .is_some_and(|w| w.starts_with("quota full"))
            .then_some(())
    });
    b.stop();
    a.stop();
}
