//! Removable media as a transport (issue 11), with a loop-mounted ext4 image as the
//! stick: `mule media write` fills it from a publisher's store; a node watching
//! `media.paths` imports it when it is mounted, refuses a corrupted piece file,
//! keeps every verified piece when the stick is pulled out mid-import, and gets the
//! rest when the stick comes back; a carrier with `media.carry_out` writes what it
//! carries to a second medium, and `mule media sync` brings that to its audience.
//!
//! Needs root (mount): ignored by plain `cargo test`; `.ci/run` runs it with the
//! other root tests.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{Node, NodeConfig, content, publisher_key, wait_for};

/// A loop-mounted ext4 image, unmounted (lazily) on drop.
struct Stick {
    image: PathBuf,
    /// The mount point the nodes watch.
    mnt: PathBuf,
    /// Where it is mounted now.
    mnt_now: PathBuf,
    mounted: bool,
}

impl Stick {
    fn new(dir: &Path, mib: u64) -> Stick {
        let image = dir.join("stick.img");
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).expect("mount point");
        let f = std::fs::File::create(&image).expect("image");
        f.set_len(mib << 20).expect("image size");
        sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
        let mut s = Stick {
            image,
            mnt_now: mnt.clone(),
            mnt,
            mounted: false,
        };
        s.insert();
        s
    }

    fn insert(&mut self) {
        let mnt = self.mnt.clone();
        self.insert_at(&mnt);
    }

    /// Mounts the stick at `at` (e.g. a mount point no node watches).
    fn insert_at(&mut self, at: &Path) {
        sh(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&self.image)
            .arg(at));
        self.mnt_now = at.to_path_buf();
        self.mounted = true;
    }

    /// Pulls the stick out: the mount goes away at once, even with files open.
    fn pull(&mut self) {
        sh(Command::new("umount").arg("-l").arg(&self.mnt_now));
        self.mounted = false;
    }
}

impl Drop for Stick {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt_now).status();
        }
    }
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bundle(node: &Node, id: &str) -> Option<Value> {
    node.status()["bundles"]
        .as_array()?
        .iter()
        .find(|b| b["id"] == id)
        .cloned()
}

fn have(node: &Node, id: &str) -> u64 {
    bundle(node, id).map_or(0, |b| b["pieces_have"].as_u64().unwrap_or(0))
}

fn media_cfg(publisher: &str, paths: &[&Path], channels: &[&str], carry_out: bool) -> NodeConfig {
    let list: Vec<String> = paths
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    NodeConfig {
        publishers: vec![publisher.to_string()],
        channels: channels.iter().map(|c| c.to_string()).collect(),
        tail: format!(
            "[media]\npaths = [{}]\ncarry_out = {carry_out}\nscan_interval_ms = 100\n",
            list.join(", ")
        ),
        ..NodeConfig::default()
    }
}

#[test]
#[ignore = "needs root (loop-mounts a filesystem image as the stick)"]
fn a_usb_stick_carries_bundles_verified_and_survives_being_pulled() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, key, hex) = publisher_key(tmp.path(), "pub.key");

    // The publisher's store (no daemon): a 48 MiB bundle in 64 KiB pieces.
    let a = Node::new(&NodeConfig::fw(&hex));
    let data = content(21, 48 << 20);
    let file = a.path("fw.bin");
    std::fs::write(&file, &data).expect("content");
    let id = a
        .ok(&[
            "publish",
            file.to_str().expect("utf-8"),
            "--name",
            "fw",
            "--version",
            "3.0",
            "--key",
            key.to_str().expect("utf-8"),
            "--audience",
            "fw",
        ])
        .trim()
        .to_string();
    let total = 768u64;

    let mut stick = Stick::new(tmp.path(), 128);
    let mnt = stick.mnt.clone();
    let wrote: Value =
        serde_json::from_str(&a.ok(&["media", "write", mnt.to_str().expect("utf-8"), "--json"]))
            .expect("media write --json");
    assert_eq!(wrote["pieces"], total, "{wrote}");
    let piece5 = mnt.join("mule").join(&id).join("00000005.piece");
    let good5 = std::fs::read(&piece5).expect("piece 5 on the stick");
    let mut bad5 = good5.clone();
    bad5[1000] ^= 0x40;
    std::fs::write(&piece5, &bad5).expect("corrupting piece 5");
    stick.pull();

    // B watches the mount point; the stick goes in, and is pulled out mid-import.
    let mut b = Node::new(&media_cfg(&hex, &[&mnt], &["fw"], false));
    b.start();
    stick.insert();
    let at_pull = wait_for(
        "B to import part of the stick",
        Duration::from_secs(60),
        || {
            let n = have(&b, &id);
            (n > 0).then_some(n)
        },
    );
    stick.pull();
    wait_for(
        "B to notice the stick is gone",
        Duration::from_secs(60),
        || {
            b.log_text()
                .lines()
                .any(|l| l.contains("medium imported") && l.contains("gone=true"))
                .then_some(())
        },
    );
    let after_pull = have(&b, &id);
    assert!(
        after_pull >= at_pull && after_pull < total,
        "pull at {at_pull}, then {after_pull} of {total}: the pull was not mid-import"
    );

    // Back in: everything but the corrupted piece, which is refused and named.
    stick.insert();
    wait_for(
        "B to take every good piece",
        Duration::from_secs(60),
        || (have(&b, &id) == total - 1).then_some(()),
    );
    wait_for("the refusal in B's log", Duration::from_secs(10), || {
        b.log_text()
            .lines()
            .any(|l| l.contains("piece on medium refused") && l.contains("00000005.piece"))
            .then_some(())
    });
    assert_eq!(have(&b, &id), total - 1, "a corrupted piece was stored");

    // The publisher rewrites the stick at a mount point B does not watch: the bad file is
    // found and replaced; back in B's slot, B completes from the stick alone (no network
    // link exists between A and B). B must have seen the stick go, or it would not read it
    // again.
    stick.pull();
    wait_for(
        "B to notice the stick is out",
        Duration::from_secs(60),
        || b.log_text().contains("medium removed").then_some(()),
    );
    let at_a = tmp.path().join("mnt-publisher");
    std::fs::create_dir_all(&at_a).expect("mount point");
    stick.insert_at(&at_a);
    let rewrite: Value =
        serde_json::from_str(&a.ok(&["media", "write", at_a.to_str().expect("utf-8"), "--json"]))
            .expect("media write --json");
    assert_eq!(
        rewrite["pieces"], 1,
        "only the corrupted piece is rewritten: {rewrite}"
    );
    stick.pull();
    stick.insert();
    wait_for(
        "B to complete from the stick",
        Duration::from_secs(60),
        || {
            bundle(&b, &id)
                .filter(|x| x["pieces_have"] == total && x["state"] == "installed")
                .map(|_| ())
        },
    );
    assert!(
        b.export(&id) == data,
        "B's export differs from the published file"
    );

    // A carrier (not subscribed) imports the bundle and, with carry_out, writes it to a
    // second medium; a subscriber takes it from there with `mule media sync`.
    let second = tmp.path().join("second-medium");
    std::fs::create_dir_all(&second).expect("second medium");
    let mut c = Node::new(&media_cfg(&hex, &[&mnt, &second], &[], true));
    c.start();
    wait_for("C to carry the bundle", Duration::from_secs(60), || {
        (have(&c, &id) == total).then_some(())
    });
    stick.pull();
    // An empty medium appears: C writes what it carries onto it.
    std::fs::create_dir_all(second.join("mule")).expect("medium dir");
    std::fs::write(second.join("mule/FORMAT"), "mule-media 1\n").expect("marker");
    wait_for(
        "C to write the carried bundle out",
        Duration::from_secs(60),
        || {
            (std::fs::read_dir(second.join("mule").join(&id))
                .map(|d| {
                    d.filter(|e| {
                        e.as_ref()
                            .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".piece"))
                    })
                    .count()
                })
                .unwrap_or(0) as u64
                == total)
                .then_some(())
        },
    );
    c.stop();
    let mut d = Node::new(&NodeConfig::fw(&hex));
    d.start();
    let synced: Value =
        serde_json::from_str(&d.ok(&["media", "sync", second.to_str().expect("utf-8"), "--json"]))
            .expect("media sync --json");
    assert_eq!(synced["pieces"], total, "{synced}");
    wait_for("D to install it", Duration::from_secs(60), || {
        bundle(&d, &id)
            .filter(|x| x["state"] == "installed")
            .map(|_| ())
    });
    assert!(d.export(&id) == data, "D's export differs");
    b.stop();
    d.stop();
}
