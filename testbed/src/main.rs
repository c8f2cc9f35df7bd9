//! `mule-testbed`: simulate Mule and baselines on contact traces and report with plots.
//!
//! Subcommands: `simulate` (deterministic fleet simulation), `oracle` (the lower bound
//! alone), `gen-trace` (synthetic traces), `emulate` (real daemons in network
//! namespaces, reusing the trace, oracle and report modules) and `cleanup` (leftovers of
//! a killed emulation).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow_free::Result;
use clap::{Parser, Subcommand};
use mule_testbed::run::{Audience, Publish, PublishAt, SimulateArgs, StrategyKind};
use mule_testbed::trace::{self, Format, Trace};
use mule_testbed::units::{Rate, Size, fmt_secs};

/// `main` only needs a boxed error: keep the dependency list short.
mod anyhow_free {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;
}

#[derive(Parser)]
#[command(
    name = "mule-testbed",
    version,
    about = "Replay contact traces: simulate Mule and baselines, report with plots"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct TraceArgs {
    /// Contact trace: CSV `start_s,end_s,node_a,node_b` or The ONE `time CONN a b up|down`.
    #[arg(long)]
    trace: PathBuf,
    /// Trace format (default: guessed from the content).
    #[arg(long)]
    format: Option<Format>,
    /// Node count (default: highest id + 1); ids must be below it.
    #[arg(long)]
    nodes: Option<u32>,
    /// Contacts shorter than this many seconds are extended to it (not dropped).
    #[arg(long, default_value_t = trace::DEFAULT_MIN_CONTACT_S)]
    min_contact: f64,
    /// Only use the trace between these times, `FROM:TO` in seconds.
    #[arg(long, value_parser = parse_window)]
    window: Option<(f64, f64)>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Deterministic simulation of Mule and baselines in virtual time.
    Simulate {
        #[command(flatten)]
        trace: TraceArgs,
        /// Link rate per contact direction, e.g. 8mbit, 1gbit, 500kbit.
        #[arg(long, default_value = "8mbit")]
        rate: Rate,
        /// What to publish where: SIZE@NODE, e.g. 2MB@0.
        #[arg(long)]
        publish: Publish,
        /// When to publish: a fraction of the trace's duration (0.25 or 25%; a bare number
        /// must be between 0 and 1) or seconds after its start with the unit (3600s).
        #[arg(long, default_value = "0.25")]
        publish_at: PublishAt,
        /// Who subscribes: `all` (every node but the origin) or a fraction (0.3, 30%).
        #[arg(long, default_value = "all")]
        audience: Audience,
        /// RNG seed (audience choice, Bloom false positives, tie breaks).
        #[arg(long, default_value_t = 1, conflicts_with = "seeds")]
        seed: u64,
        /// Run once per seed (`1..5` inclusive, or `1,4,7`): each seed's report goes to
        /// OUT/seed-N/, and OUT/seeds.md and OUT/seeds.json give the spread per strategy.
        #[arg(long)]
        seeds: Option<mule_testbed::sweep::Seeds>,
        /// Piece size.
        #[arg(long, default_value = "64KiB")]
        piece_size: Size,
        /// Bytes a node outside the audience may carry (the daemon's default: 256 MiB).
        #[arg(long, default_value = "256MiB")]
        carry_quota: Size,
        /// False-positive rate the Bloom summaries are sized for.
        #[arg(long, default_value_t = 0.01)]
        fpr: f64,
        /// Strategies to compare, comma separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "mule,rarest,epidemic,client-server"
        )]
        strategies: Vec<StrategyKind>,
        /// Turn off social prediction in the Mule strategy.
        #[arg(long)]
        no_prediction: bool,
        /// Capacity model: `per-contact` (each contact direction gets the full rate, as
        /// the oracle assumes) or `shared` (a node's contacts share one transmitter).
        #[arg(long, default_value = "per-contact")]
        radio: mule_testbed::sim::Radio,
        /// What runs mule and rarest: `sessions` (the engine's real sessions over virtual
        /// links) or `pieces` (the faster piece-level model). Epidemic, client-server and
        /// mule-strict are always piece-level, and so is everything with `--radio shared`.
        #[arg(long, default_value = "sessions")]
        model: mule_testbed::sim::Model,
        /// One-way link latency of the real-session model, ms.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Output directory for results.json, nodes.csv, contacts.csv, summary.md, plots.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the oracle bound for each node.
    Oracle {
        #[command(flatten)]
        trace: TraceArgs,
        /// Link rate, e.g. 8mbit.
        #[arg(long, default_value = "8mbit")]
        rate: Rate,
        /// SIZE@NODE.
        #[arg(long)]
        publish: Publish,
        /// A fraction of the trace (0.25, 25%) or seconds with the unit (3600s).
        #[arg(long, default_value = "0.25")]
        publish_at: PublishAt,
    },
    /// Replay a trace on real `mule` daemons, one per network namespace (needs root).
    Emulate(mule_testbed::emulate::EmulateArgs),
    /// Remove namespaces, veths, bridges and processes left behind by a killed emulation.
    Cleanup,
    /// Write a synthetic community trace as CSV.
    GenTrace {
        /// Number of nodes.
        #[arg(long)]
        nodes: u32,
        /// Length in days.
        #[arg(long, default_value_t = 3.0)]
        days: f64,
        /// RNG seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn parse_window(s: &str) -> std::result::Result<(f64, f64), String> {
    let (a, b) = s.split_once(':').ok_or("expected FROM:TO in seconds")?;
    let a: f64 = a.parse().map_err(|_| format!("{a:?} is not a number"))?;
    let b: f64 = b.parse().map_err(|_| format!("{b:?} is not a number"))?;
    Ok((a, b))
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("mule-testbed: error: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Simulate {
            trace,
            rate,
            publish,
            publish_at,
            audience,
            seed,
            piece_size,
            carry_quota,
            fpr,
            strategies,
            no_prediction,
            radio,
            model,
            latency_ms,
            out,
            seeds,
        } => {
            let args = SimulateArgs {
                trace: trace.trace,
                format: trace.format,
                rate,
                publish,
                publish_at,
                audience,
                nodes: trace.nodes,
                min_contact: trace.min_contact,
                window: trace.window,
                seed,
                piece_size,
                carry_quota,
                fpr,
                strategies,
                prediction: !no_prediction,
                radio,
                model,
                latency_ms,
            };
            simulate(args, seeds, &out)?;
        }
        Cmd::Oracle {
            trace,
            rate,
            publish,
            publish_at,
        } => {
            oracle(&trace, rate, publish, publish_at)?;
        }
        Cmd::Emulate(args) => mule_testbed::emulate::main(args)?,
        Cmd::Cleanup => {
            let n = mule_testbed::emulate::cleanup();
            eprintln!("removed {n} leftover object(s)");
        }
        Cmd::GenTrace {
            nodes,
            days,
            seed,
            out,
        } => {
            let t0 = Instant::now();
            let t = mule_testbed::synth::synthetic(nodes, days, seed);
            let csv = t.to_csv();
            match out {
                Some(p) => std::fs::write(&p, csv)?,
                None => std::io::stdout().write_all(csv.as_bytes())?,
            }
            eprintln!(
                "generated {} contacts for {} nodes over {days} days in {:.2} s",
                t.contacts.len(),
                t.nodes,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Prints a progress line on stderr at most twice a second (and at 100 %).
fn progress_line(t0: Instant) -> impl FnMut(&str, f64) {
    let mut last = Instant::now();
    move |name: &str, f: f64| {
        if last.elapsed().as_millis() >= 500 || f >= 1.0 {
            last = Instant::now();
            eprint!(
                "\r{name:>14}: {:5.1}% of contacts  [{:.1} s]   ",
                100.0 * f,
                t0.elapsed().as_secs_f64()
            );
            if f >= 1.0 {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        }
    }
}

/// `simulate`: one run, or one per seed and their spread.
fn simulate(
    mut args: SimulateArgs,
    seeds: Option<mule_testbed::sweep::Seeds>,
    out: &std::path::Path,
) -> Result<()> {
    let t0 = Instant::now();
    let mut progress = progress_line(t0);
    if let Some(seeds) = seeds {
        let mut runs = Vec::new();
        for (i, &seed) in seeds.0.iter().enumerate() {
            eprintln!("seed {seed} ({} of {}):", i + 1, seeds.0.len());
            args.seed = seed;
            let (trace, report) = mule_testbed::run::simulate_run(&args, &mut progress)?;
            let dir = out.join(format!("seed-{seed}"));
            for w in mule_testbed::run::write_report(&report, &trace, &dir)? {
                eprintln!("mule-testbed: warning: {w}");
            }
            runs.push((seed, report));
        }
        return write_seeds(&runs, out, t0);
    }
    let (trace, report) = mule_testbed::run::simulate_run(&args, &mut progress)?;
    for w in mule_testbed::run::write_report(&report, &trace, out)? {
        eprintln!("mule-testbed: warning: {w}");
    }
    println!("{}", report.headline_table());
    eprintln!(
        "simulated {} strategies on {} nodes / {} contacts in {:.2} s; report in {}",
        report.outcomes.len(),
        report.info.nodes,
        report.info.contacts,
        t0.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// The spread over seeds: OUT/seeds.md (also printed) and OUT/seeds.json.
fn write_seeds(
    runs: &[(u64, mule_testbed::report::Report)],
    out: &std::path::Path,
    t0: Instant,
) -> Result<()> {
    let summary = mule_testbed::sweep::SeedSummary::build(runs);
    let title = runs
        .first()
        .map(|(_, r)| r.info.trace.clone())
        .unwrap_or_default();
    let md = summary.markdown(&title);
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("seeds.md"), &md)?;
    std::fs::write(
        out.join("seeds.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    println!("{md}");
    eprintln!(
        "simulated {} seeds in {:.2} s; reports in {}/seed-N, spread in {}",
        runs.len(),
        t0.elapsed().as_secs_f64(),
        out.display(),
        out.join("seeds.md").display()
    );
    Ok(())
}

/// `oracle`: every node's earliest arrival and completion bound, as CSV on stdout.
fn oracle(trace: &TraceArgs, rate: Rate, publish: Publish, publish_at: PublishAt) -> Result<()> {
    let opts = trace::Options {
        min_contact: trace.min_contact,
        nodes: trace.nodes,
        window: trace.window,
    };
    let t = Trace::load(&trace.trace, trace.format, &opts)?;
    if publish.node >= t.nodes {
        return Err(format!("origin {} not in the trace (0..{})", publish.node, t.nodes).into());
    }
    let at = publish_at.time_in(&t);
    if let Some(w) = mule_testbed::run::isolated_origin(&t, publish.node, at) {
        eprintln!("mule-testbed: warning: {w}");
    }
    let o = mule_testbed::oracle::Oracle::compute(&t, publish.node, at, publish.size.0, rate);
    println!("node,earliest_arrival_s,complete_s");
    for v in 0..t.nodes as usize {
        println!("{v},{},{}", o.earliest_arrival[v] - at, o.complete[v] - at);
    }
    eprintln!(
        "{} nodes, min contact {} s, published at {}",
        t.nodes,
        t.min_contact,
        fmt_secs(at)
    );
    Ok(())
}
