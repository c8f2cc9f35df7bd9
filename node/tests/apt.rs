//! An apt repository fed by Mule (issue 11): a Debian package built here with
//! `dpkg-deb` is published into node A, crosses to node B over loopback, B's
//! on-complete hook (`systemd/hooks/mule-apt-repo`, shipped in the .deb) adds it
//! to a local repository, and real `apt-get` installs it from there into a
//! throw-away root.
//!
//! Needs root (dpkg and apt-get writing a root of their own) and Debian's
//! dpkg-dev and apt: ignored by plain `cargo test`; `.ci/run` runs it (as root)
//! with the other root tests.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{Node, NodeConfig, publisher_key, wait_for};

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds `NAME_1.0_all.deb` holding one text file.
fn tiny_deb(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let root = dir.join("pkg");
    std::fs::create_dir_all(root.join("DEBIAN")).expect("mkdir");
    std::fs::create_dir_all(root.join(format!("usr/share/{name}"))).expect("mkdir");
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: 1.0\nArchitecture: all\n\
             Maintainer: Mule tests <tests@example.invalid>\n\
             Description: a package delivered by Mule in a test\n"
        ),
    )
    .expect("control");
    std::fs::write(root.join(format!("usr/share/{name}/hello.txt")), text).expect("file");
    let deb = dir.join(format!("{name}_1.0_all.deb"));
    run(Command::new("dpkg-deb")
        .arg("--root-owner-group")
        .arg("--build")
        .arg(&root)
        .arg(&deb));
    deb
}

#[test]
#[ignore = "needs root (dpkg and apt-get into a throw-away root)"]
fn a_package_delivered_by_mule_installs_with_apt_get() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let name = format!("mule-apt-test-{}", std::process::id());
    let text = format!("delivered by mule to {name}\n");
    let deb = tiny_deb(tmp.path(), &name, &text);

    let (_, key, hex) = publisher_key(tmp.path(), "pub.key");
    let mut a = Node::new(&NodeConfig::fw(&hex));
    a.start();
    let listen = a.status()["listen"][0]
        .as_str()
        .expect("listen address")
        .to_string();

    let repo = tmp.path().join("repo");
    let hook = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/hooks/mule-apt-repo"
    );
    let mut cfg_b = NodeConfig::fw(&hex);
    cfg_b.peers = vec![listen];
    cfg_b.store_extra = vec![format!(
        "on_complete = [{hook:?}, {:?}]",
        repo.display().to_string()
    )];
    let mut b = Node::new(&cfg_b);
    b.start();

    let id = a
        .ok(&[
            "publish",
            deb.to_str().expect("utf-8"),
            "--name",
            &name,
            "--version",
            "1.0",
            "--key",
            key.to_str().expect("utf-8"),
            "--audience",
            "fw",
        ])
        .trim()
        .to_string();

    // B installs the bundle: the hook has then added the package to the repository.
    wait_for(
        "B's on-complete hook to run",
        Duration::from_secs(60),
        || {
            let st = b.status();
            let entry = st["bundles"]
                .as_array()?
                .iter()
                .find(|e| e["id"] == id.as_str())?
                .clone();
            match entry["state"].as_str()? {
                "installed" => Some(()),
                s if s.starts_with("failed") => {
                    panic!("B's hook failed: {entry}\n{}", b.log_text())
                }
                _ => None,
            }
        },
    );
    let packages = std::fs::read_to_string(repo.join("Packages")).expect("Packages");
    assert!(packages.contains(&format!("Package: {name}")), "{packages}");
    assert!(repo.join("Release").is_file(), "no Release file");
    a.stop();
    b.stop();

    // Real apt-get, against a root of its own.
    let r = tmp.path().join("root");
    for d in [
        "etc/apt/sources.list.d",
        "etc/apt/apt.conf.d",
        "etc/apt/preferences.d",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "var/log",
    ] {
        std::fs::create_dir_all(r.join(d)).expect("mkdir");
    }
    std::fs::write(r.join("var/lib/dpkg/status"), "").expect("status");
    std::fs::write(
        r.join("etc/apt/sources.list"),
        format!("deb [trusted=yes] file:{} ./\n", repo.display()),
    )
    .expect("sources.list");
    let apt = |args: &[&str]| {
        let rs = r.display().to_string();
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-o", &format!("Dir={rs}")])
            .args([
                "-o",
                &format!("Dir::State::status={rs}/var/lib/dpkg/status"),
            ])
            .args(["-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root"])
            .args(["-o", &format!("DPkg::Options::=--root={rs}")])
            .args([
                "-o",
                &format!("DPkg::Options::=--log={rs}/var/log/dpkg.log"),
            ])
            .args(args))
    };
    apt(&["update"]);
    apt(&["install", "-y", "--no-install-recommends", &name]);
    let installed = std::fs::read_to_string(r.join(format!("usr/share/{name}/hello.txt")))
        .expect("the package's file in the throw-away root");
    assert_eq!(installed, text);
    let status = run(Command::new("dpkg")
        .arg(format!("--root={}", r.display()))
        .args(["-s", &name]));
    assert!(status.contains("Status: install ok installed"), "{status}");
}
