//! End to end: five real `mule` daemons in network namespaces replay a one-minute synthetic
//! trace; every audience node must end with a byte-identical export, the report and plots
//! must exist, and nothing (namespace, process) may be left behind.
//!
//! Needs root (network namespaces): the tests are `#[ignore = "needs root"]` and fail when run
//! without it (`sudo -E cargo test -p mule-testbed --test emulate -- --ignored`; `.ci/run` runs them).
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

/// `v` in base 36, as `mule_netns::unique_name` writes pids.
fn base36(mut v: u32) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}

/// No namespace an emulation of this process created, and no process started with a config
/// under `out`, is left. (Only this test creates emulation namespaces named after this
/// process: the cleanup test names its live one after pid 1.)
fn assert_no_leftovers(out: &Path) {
    let mine = format!(
        "{}{}{}x",
        mule_netns::NAME_PREFIX,
        emulate::PREFIX,
        base36(std::process::id())
    );
    let list = netns_list();
    assert!(!list.contains(&mine), "namespaces {mine}* left: {list}");
    let needle = out.display().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            assert!(
                !(cmd.contains(&needle) && proc_state(pid).is_some_and(|s| s != 'Z')),
                "process {pid} left: {cmd}"
            );
        }
    }
}

#[test]
#[ignore = "needs root"]
fn five_namespaces_replay_a_minute_and_everyone_gets_identical_bytes() {
    mule_netns::assert_root("five_namespaces_replay_a_minute");
    let mule = mule_binary();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.csv");
    std::fs::write(&trace, TRACE).unwrap();
    let out = dir.path().join("out");
    let opts = |out: PathBuf| EmulateOptions {
        trace: trace.clone(),
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
        mule: mule.clone(),
        piece_size: Size(64 << 10),
        carry_quota: Size(256 << 20),
        grace: 5.0,
        seed: 7,
        out,
    };

    // A panic in the middle of a run (here: in the progress callback, once the daemons are
    // up) must tear everything down as well.
    let panic_out = dir.path().join("panic");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        emulate::run(opts(panic_out.clone()), |_| {
            panic!("deliberate panic mid-run")
        })
    }));
    assert!(result.is_err(), "the run should have panicked");
    assert_no_leftovers(&panic_out);

    let mut lines = 0;
    let rep = emulate::run(opts(out.clone()), |p| {
        lines += 1;
        eprintln!("{}", p.line());
    })
    .expect("emulation runs");
    eprintln!(
        "{}",
        std::fs::read_to_string(out.join("summary.md")).unwrap()
    );

    // Nothing left behind, whatever else happened.
    assert_no_leftovers(&out);
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

/// Runs `mule-testbed emulate` with the arguments in `$MULE_EMULATE_ARGS` (whitespace
/// separated), for long runs on real traces before the subcommand is wired into the CLI:
///
/// ```text
/// MULE_EMULATE_ARGS='--trace ../shared/traces/intel.csv --time-scale 600 --rate 80mbit \
///   --publish 2MB@0 --publish-at 0.25 --out /tmp/emu-intel' \
///   cargo test -p mule-testbed --test emulate -- --ignored emulate_from_env --nocapture
/// ```
#[test]
#[ignore = "manual: a long emulation driven by $MULE_EMULATE_ARGS"]
fn emulate_from_env() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: emulate::EmulateArgs,
    }
    let line = std::env::var("MULE_EMULATE_ARGS")
        .expect("emulate_from_env is a manual run: set MULE_EMULATE_ARGS (see its doc comment)");
    mule_netns::assert_root("emulate_from_env");
    let mut cli = Cli::parse_from(std::iter::once("emulate").chain(line.split_whitespace()));
    if cli.args.mule.is_none() {
        cli.args.mule = Some(mule_binary());
    }
    emulate::main(cli.args).expect("emulation");
}

/// Stand-in for an emulation killed with SIGKILL: creates a namespace named like the
/// emulation's, a process inside it and a work directory, reports them on stdout, and waits
/// to be killed. Run only by `cleanup_removes_what_a_killed_run_left`.
#[test]
#[ignore = "helper process of cleanup_removes_what_a_killed_run_left"]
fn killed_run_helper() {
    if std::env::var_os("MULE_EMULATE_HELPER").is_none() {
        return;
    }
    let ns = mule_netns::Netns::new(emulate::PREFIX).unwrap();
    // Never waited for: the process must outlive this one (killed by cleanup).
    #[allow(clippy::zombie_processes)]
    let child = ns.spawn(&["sleep", "600"]).unwrap();
    let work = std::env::temp_dir().join(format!("mule-emulate-{}-99", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    println!("NS {}", ns.name());
    println!("PID {}", child.id());
    println!("WORK {}", work.display());
    println!("READY");
    std::thread::sleep(std::time::Duration::from_secs(600));
}

/// Process state letter from /proc (None: gone).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim().chars().next()
}

#[test]
#[ignore = "needs root"]
fn cleanup_removes_what_a_killed_run_left_and_spares_live_runs() {
    use std::io::BufRead;
    mule_netns::assert_root("cleanup_removes_what_a_killed_run_left");
    // A live "run" (named after pid 1, which is always alive; not after this process, so the
    // leftover checks of the other test stay exact): cleanup must leave it alone.
    struct Live(String);
    impl Drop for Live {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.0])
                .status();
        }
    }
    let ours = Live(format!(
        "{}{}1x{}",
        mule_netns::NAME_PREFIX,
        emulate::PREFIX,
        base36(std::process::id())
    ));
    mule_netns::run(&["ip", "netns", "add", &ours.0]).unwrap();
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "killed_run_helper", "--nocapture"])
        .env("MULE_EMULATE_HELPER", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (mut ns, mut pid, mut work) = (String::new(), 0u32, PathBuf::new());
    for line in std::io::BufReader::new(helper.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(v) = line.strip_prefix("NS ") {
            ns = v.to_owned();
        } else if let Some(v) = line.strip_prefix("PID ") {
            pid = v.parse().unwrap();
        } else if let Some(v) = line.strip_prefix("WORK ") {
            work = PathBuf::from(v);
        } else if line == "READY" {
            break;
        }
    }
    helper.kill().unwrap();
    helper.wait().unwrap();
    assert!(!ns.is_empty() && pid > 0, "helper did not report");
    assert!(
        netns_list().contains(&ns),
        "the killed run's namespace should still exist"
    );
    assert!(work.is_dir());

    let removed = emulate::cleanup();
    assert!(removed >= 2, "removed {removed}");
    assert!(!netns_list().contains(&ns), "{ns} survived cleanup");
    assert!(!work.exists(), "{} survived cleanup", work.display());
    // Killed (a zombie until init reaps it, or gone).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while matches!(proc_state(pid), Some(s) if s != 'Z') {
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} inside survived"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        netns_list().contains(&ours.0),
        "cleanup removed a live run's namespace"
    );
}
