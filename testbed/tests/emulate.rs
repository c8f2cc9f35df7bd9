//! End to end: five real `mule` daemons in network namespaces replay a one-minute synthetic
//! trace; every audience node must end with a byte-identical export, the report and plots
//! must exist, and nothing (namespace, process) may be left behind.
//!
//! Needs root (network namespaces): prints `SKIPPED` otherwise, fails when `CI=true`.
//!
//! **Finding the daemon.** `$MULE_BIN` if set. Otherwise the test runs
//! `cargo build -p mule --bin mule --message-format=json` with the cargo that runs the test
//! (`env!("CARGO")`) and takes the executable's path from cargo's own `compiler-artifact`
//! message. That is robust where guessing is not: it honours `CARGO_TARGET_DIR`, `--target`,
//! profiles and `build.target-dir` in cargo config exactly as the outer build did, and a stale
//! binary is rebuilt first. (`CARGO_BIN_EXE_*` only exists for binaries of the package under
//! test, and a binary cannot be a dependency.) It is a no-op when `mule` is up to date.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mule_testbed::emulate::{self, EmulateOptions, Finish};
use mule_testbed::run::{Audience, Publish, PublishAt};
use mule_testbed::units::{Rate, Size};

/// Five nodes, about a minute. Node 0 publishes at t = 0. Node 4 meets nobody before
/// t = 30 s, so it cannot complete earlier unless contacts leak; the 0-1 contact ends while
/// 1-2 is up, 3-4 overlaps 2-4, and 1-3 comes after everybody may be done.
const TRACE: &str = "start_s,end_s,node_a,node_b
0,20,0,1
5,25,1,2
10,28,0,3
30,50,2,4
35,55,3,4
40,60,1,3
";

fn mule_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MULE_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "-p",
            "mule",
            "--bin",
            "mule",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(&root)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build -p mule");
    assert!(out.status.success(), "cargo build -p mule failed");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact"
            && v["target"]["name"] == "mule"
            && let Some(exe) = v["executable"].as_str()
        {
            return PathBuf::from(exe);
        }
    }
    panic!("cargo build -p mule reported no executable for `mule`");
}

fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `pid` is (still) a `mule run` process.
fn is_mule_process(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("mule"))
        .unwrap_or(false)
}

#[test]
fn five_namespaces_replay_a_minute_and_everyone_gets_identical_bytes() {
    if !mule_netns::require_root("five_namespaces_replay_a_minute") {
        return;
    }
    let mule = mule_binary();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.csv");
    std::fs::write(&trace, TRACE).unwrap();
    let out = dir.path().join("out");
    let opts = EmulateOptions {
        trace,
        format: None,
        rate: "8mbit".parse::<Rate>().unwrap(),
        time_scale: 1.0,
        publish: Publish {
            size: Size(1_000_000),
            node: 0,
        },
        publish_at: PublishAt::Seconds(0.0),
        audience: Audience::All,
        nodes: None,
        min_contact: 10.0,
        mule,
        piece_size: Size(64 << 10),
        carry_quota: Size(256 << 20),
        grace: 5.0,
        seed: 7,
        out: out.clone(),
    };
    let mut lines = 0;
    let rep = emulate::run(opts, |p| {
        lines += 1;
        eprintln!("{}", p.line());
    })
    .expect("emulation runs");
    eprintln!(
        "{}",
        std::fs::read_to_string(out.join("summary.md")).unwrap()
    );

    // Nothing left behind, whatever else happened.
    let list = netns_list();
    assert_eq!(rep.namespaces.len(), 6, "switch + 5 nodes");
    for ns in &rep.namespaces {
        assert!(!list.contains(ns.as_str()), "namespace {ns} left: {list}");
    }
    assert_eq!(rep.daemon_pids.len(), 5);
    for &pid in &rep.daemon_pids {
        assert!(!is_mule_process(pid), "daemon {pid} still running");
    }

    // Everyone in the audience completed with the published bytes.
    assert_eq!(rep.finish, Finish::AllComplete, "{rep:#?}");
    assert_eq!(rep.audience(), 4);
    assert_eq!(rep.completed_identical(), 4, "{:#?}", rep.nodes);
    for n in rep.nodes.iter().filter(|n| n.in_audience) {
        assert_eq!(n.identical, Some(true), "node {}", n.node);
        assert!(
            n.rx_bytes >= 1_000_000,
            "node {} received {} B",
            n.node,
            n.rx_bytes
        );
    }
    // Contacts really are switched: node 4 meets nobody before t = 30 s, node 2 before 5 s.
    let at = |v: usize| rep.nodes[v].complete_s.unwrap();
    assert!(at(4) >= 29.5, "node 4 complete at {} s", at(4));
    assert!(at(2) >= 4.5, "node 2 complete at {} s", at(2));
    assert!(rep.nodes[0].tx_bytes >= 1_000_000, "{:?}", rep.nodes[0]);
    assert!(lines > 0, "no progress reported");

    // Report files and plots.
    for f in [
        "results.json",
        "nodes.csv",
        "contacts.csv",
        "summary.md",
        "emulation.json",
        "emulation_nodes.csv",
        "completion.svg",
        "completion_cdf.svg",
        "bytes_per_node.svg",
        "contact_utilisation.svg",
    ] {
        let p = out.join(f);
        assert!(
            p.is_file() && std::fs::metadata(&p).unwrap().len() > 0,
            "{f} missing"
        );
    }
    let csv = std::fs::read_to_string(out.join("emulation_nodes.csv")).unwrap();
    assert_eq!(csv.lines().count(), 6, "{csv}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("emulation.json")).unwrap()).unwrap();
    assert_eq!(json["finish"], "all-complete");
}
