//! Scale figures for the simulator (not a pass/fail test): wall time of a full
//! `simulate` (oracle + mule, rarest, epidemic, client-server) on the real traces and on
//! synthetic fleets of 100 and 1,000 nodes. Prints the median of `MULE_BENCH_RUNS`
//! (default 3) runs, on the piece-level model unless `MULE_SCALE_MODEL=sessions`. Run with
//! `cargo run --release -p mule-testbed --bin mule-testbed-scale`.

use std::path::PathBuf;
use std::time::Instant;

use mule_testbed::run::{Audience, Publish, PublishAt, SimulateArgs, StrategyKind};
use mule_testbed::units::{Rate, Size};

fn args(trace: PathBuf, nodes: Option<u32>) -> SimulateArgs {
    SimulateArgs {
        trace,
        format: None,
        rate: Rate(1e6),
        publish: Publish {
            size: Size(2_000_000),
            node: 0,
        },
        publish_at: PublishAt::Fraction(0.25),
        audience: Audience::All,
        nodes,
        min_contact: mule_testbed::trace::DEFAULT_MIN_CONTACT_S,
        window: None,
        seed: 1,
        piece_size: Size(64 * 1024),
        carry_quota: Size(256 << 20),
        fpr: 0.01,
        strategies: vec![
            StrategyKind::Mule,
            StrategyKind::Rarest,
            StrategyKind::Epidemic,
            StrategyKind::ClientServer,
        ],
        prediction: true,
        radio: mule_testbed::sim::Radio::PerContact,
        // The README's scale table is the piece-level model's; `MULE_SCALE_MODEL=sessions`
        // measures the real-session model instead.
        model: std::env::var("MULE_SCALE_MODEL")
            .ok()
            .and_then(|m| m.parse().ok())
            .unwrap_or(mule_testbed::sim::Model::Pieces),
        latency_ms: 0,
    }
}

fn measure(name: &str, a: &SimulateArgs, runs: usize) {
    let mut times = Vec::new();
    let mut contacts = 0;
    let mut nodes = 0;
    let mut per_strategy = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        let mut last = t0;
        let mut split = Vec::new();
        let mut cur = String::new();
        let (_, report) = mule_testbed::run::simulate_run(a, &mut |s, f| {
            if f >= 1.0 && cur != s {
                split.push((s.to_owned(), last.elapsed().as_secs_f64()));
                last = Instant::now();
                cur = s.to_owned();
            }
        })
        .expect("simulate");
        times.push(t0.elapsed().as_secs_f64());
        contacts = report.info.contacts;
        nodes = report.info.nodes;
        per_strategy = split;
    }
    times.sort_by(f64::total_cmp);
    let split: Vec<String> = per_strategy
        .iter()
        .map(|(s, t)| format!("{s} {t:.2}s"))
        .collect();
    println!(
        "{name:<28} {nodes:>5} nodes {contacts:>8} contacts  median {:.2} s (min {:.2}, max {:.2}, {runs} runs)  [{}]",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        split.join(", ")
    );
}

fn main() {
    let runs: usize = std::env::var("MULE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    if let Some(dir) = mule_testbed::trace::shared_traces_or_skip("real traces") {
        for t in ["intel", "infocom05", "cambridge_students"] {
            measure(t, &args(dir.join(format!("{t}.csv")), None), runs);
        }
    }
    let tmp = std::env::temp_dir().join(format!("mule-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    for (nodes, days) in [(100u32, 3.0), (1000, 3.0)] {
        let t0 = Instant::now();
        let trace = mule_testbed::synth::synthetic(nodes, days, 7);
        let gen_s = t0.elapsed().as_secs_f64();
        let p = tmp.join(format!("synth-{nodes}.csv"));
        std::fs::write(&p, trace.to_csv()).expect("write trace");
        println!(
            "gen-trace {nodes} nodes {days} days: {} contacts in {gen_s:.2} s",
            trace.contacts.len()
        );
        measure(
            &format!("synthetic {nodes}n {days}d"),
            &args(p, Some(nodes)),
            runs,
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
