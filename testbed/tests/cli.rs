//! End-to-end tests of the `mule-testbed` binary: report files, determinism through
//! the JSON output, and trace errors with line numbers.

use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mule-testbed"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run mule-testbed")
}

/// A small trace: a chain 0-1-2-3 plus a late 0-3 contact, with zero-length sightings.
const TRACE: &str = "start_s,end_s,node_a,node_b
0,100,0,1
50,50,2,3
200,260,1,2
300,300,1,2
400,520,2,3
600,700,0,3
650,650,1,3
";

fn simulate(dir: &Path, trace: &Path, seed: &str, out: &str) -> Output {
    run(&[
        "simulate",
        "--trace",
        trace.to_str().unwrap(),
        "--rate",
        "8mbit",
        "--publish",
        "2MB@0",
        "--publish-at",
        "0.1",
        "--seed",
        seed,
        "--out",
        dir.join(out).to_str().unwrap(),
    ])
}

#[test]
fn simulate_writes_every_report_file() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.csv");
    std::fs::write(&trace, TRACE).unwrap();
    let out = simulate(dir.path(), &trace, "5", "r");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = dir.path().join("r");
    for f in ["results.json", "nodes.csv", "contacts.csv", "summary.md"] {
        let len = std::fs::metadata(r.join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{f} missing or empty");
    }
    let png = mule_testbed::plot::font().is_some();
    if !png {
        eprintln!("NOTE: no font found, PNG plots not checked");
    }
    for p in mule_testbed::plot::PLOTS {
        let svg = std::fs::read_to_string(r.join(format!("{p}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{p}.svg");
        if png {
            let bytes = std::fs::read(r.join(format!("{p}.png"))).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{p}.png");
        }
    }
    let md = std::fs::read_to_string(r.join("summary.md")).unwrap();
    assert!(md.contains("minimum contact length 10 s"), "{md}");
    assert!(
        md.contains("| mule |") && md.contains("| epidemic |"),
        "{md}"
    );
    let nodes = std::fs::read_to_string(r.join("nodes.csv")).unwrap();
    // Header + 4 strategies × 4 nodes.
    assert_eq!(nodes.lines().count(), 1 + 16);
    // The headline table is also printed.
    assert!(String::from_utf8_lossy(&out.stdout).contains("| oracle (bound) |"));
}

#[test]
fn same_seed_gives_identical_json() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.csv");
    std::fs::write(&trace, TRACE).unwrap();
    for name in ["a", "b"] {
        let out = simulate(dir.path(), &trace, "11", name);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let a = std::fs::read(dir.path().join("a/results.json")).unwrap();
    let b = std::fs::read(dir.path().join("b/results.json")).unwrap();
    assert!(a == b, "same seed, different results.json");
    let a = std::fs::read(dir.path().join("a/contacts.csv")).unwrap();
    let b = std::fs::read(dir.path().join("b/contacts.csv")).unwrap();
    assert!(a == b, "same seed, different contacts.csv");
}

#[test]
fn malformed_traces_fail_with_the_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "bad.csv",
            "start_s,end_s,node_a,node_b\n0,10,0,1\n5,x,1,2\n",
            "line 3: bad end_s",
        ),
        (
            "bad.one",
            "0 CONN 0 1 up\n4 CONN 0 1 down\n5 CONN 1 2 down\n",
            "line 3: `down` for pair 1-2",
        ),
        ("neg.csv", "0,10,0,1\n20,10,1,2\n", "line 2: contact ends"),
    ];
    for (name, text, want) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let out = run(&[
            "simulate",
            "--trace",
            p.to_str().unwrap(),
            "--publish",
            "1MB@0",
            "--out",
            dir.path().join("never").to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{name} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{name}: {err}");
    }
    assert!(!dir.path().join("never").exists());
}

#[test]
fn one_format_and_gen_trace_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("g.csv");
    let out = run(&[
        "gen-trace",
        "--nodes",
        "12",
        "--days",
        "0.2",
        "--seed",
        "3",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("start_s,end_s,node_a,node_b\n"));
    // The same contacts in The ONE format give the same oracle.
    let mut one = String::new();
    let mut events: Vec<(f64, String)> = Vec::new();
    for l in text.lines().skip(1) {
        let f: Vec<&str> = l.split(',').collect();
        events.push((
            f[0].parse().unwrap(),
            format!("{} CONN {} {} up", f[0], f[2], f[3]),
        ));
        events.push((
            f[1].parse().unwrap(),
            format!("{} CONN {} {} down", f[1], f[2], f[3]),
        ));
    }
    // Stable: a zero-length contact keeps its `up` before its `down`.
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (_, e) in events {
        one.push_str(&e);
        one.push('\n');
    }
    let onep = dir.path().join("g.one");
    std::fs::write(&onep, one).unwrap();
    let oracle = |p: &Path, fmt: &str| {
        let o = run(&[
            "oracle",
            "--trace",
            p.to_str().unwrap(),
            "--format",
            fmt,
            "--nodes",
            "12",
            "--publish",
            "2MB@0",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    assert_eq!(oracle(&csv, "csv"), oracle(&onep, "one"));
}

/// Issue 11: the spread across seeds needed one run per seed and hand-made tables.
#[test]
fn a_seed_sweep_reports_the_spread_per_strategy() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.csv");
    std::fs::write(&trace, TRACE).unwrap();
    let out = run(&[
        "simulate",
        "--trace",
        trace.to_str().unwrap(),
        "--publish",
        "2MB@0",
        "--publish-at",
        "0.1",
        "--audience",
        "50%",
        "--seeds",
        "1..3",
        "--out",
        dir.path().join("sweep").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sweep = dir.path().join("sweep");
    for seed in 1..=3 {
        let r = sweep.join(format!("seed-{seed}")).join("results.json");
        assert!(r.is_file(), "{} missing", r.display());
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sweep.join("seeds.json")).unwrap()).unwrap();
    assert_eq!(json["seeds"], serde_json::json!([1, 2, 3]));
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows[0]["strategy"], "oracle");
    assert!(rows.iter().any(|r| r["strategy"] == "mule"), "{json}");
    let md = std::fs::read_to_string(sweep.join("seeds.md")).unwrap();
    assert!(
        md.contains("3 seeds (1, 2, 3)") && md.contains("| mule |"),
        "{md}"
    );
}
