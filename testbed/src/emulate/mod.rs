//! Emulation with real processes: replay a contact trace on real `mule` daemons, one per
//! Linux network namespace, and report like the simulator does.
//!
//! # What it does
//! 1. Loads the trace with [`crate::trace`] (same `--min-contact` rule as `simulate`).
//! 2. Builds the topology (below), writes one config per node, generates a publisher key,
//!    starts `mule run` in every node namespace and waits for every control socket.
//! 3. Replays the trace with time compressed by `K` (`--time-scale`): a contact from `s` to
//!    `e` trace seconds is up from `(s - start)/K` to `(e - start)/K` real seconds after the
//!    replay began. At the publish time it publishes a random file of `SIZE` at the origin
//!    (`mule publish` through the origin's control socket).
//! 4. Watches progress: each node's export directory every loop turn (~20 Hz; a completed,
//!    verified bundle appears there atomically by rename, so this gives completion times to
//!    within 50 ms real), `mule bundles --json` on every node once per real second on a
//!    helper thread (pieces held, for the progress line and for nodes outside the audience;
//!    off the main thread so that process start-ups never delay a contact switch). Each
//!    export is compared byte for byte with the published file as soon as it appears.
//!
//! `mule-testbed emulate --help` lists the flags ([`EmulateArgs`]); the library entry point
//! is [`run`], and [`cleanup`] backs `mule-testbed cleanup`. Output in `--out`: the shared
//! report files (`results.json`, `nodes.csv`, `contacts.csv`, plots: see
//! [`crate::report`], [`crate::plot`]), `summary.md` (emulation parameters, a per-node table,
//! the headline table), `emulation.json` / `emulation_nodes.csv` (per-node completion in
//! trace and real seconds, byte identity, pieces, bytes sent/received), and `config/`,
//! `logs/` (each daemon's generated config and log).
//! 5. Stops when every audience node completed, or at the end of the trace plus a grace
//!    period (`--grace`, real seconds), or on Ctrl-C / SIGTERM; tears everything down and
//!    writes the report.
//!
//! # Topology: one bridge per pair (and why)
//! All bridges and the switch ends of all veths live in one dedicated *switch* namespace;
//! nothing is created in the host's namespace. For every pair `{a, b}` that has at least one
//! contact in the trace there is a bridge `br_ab` and two veths: one from node `a`'s namespace
//! and one from node `b`'s, each with an address of the pair's own `/30` subnet
//! (`10.200.0.0/14` cut into `/30`s, so up to 262,144 pairs). A contact up enslaves both switch
//! ends to `br_ab`; a contact down detaches them (`nomaster`): the node ends keep their carrier,
//! exactly like walking out of radio range, and the daemons notice only by silence.
//!
//! The alternative, one veth per node into a shared bridge plus per-pair drop rules
//! (ebtables/nftables bridge filtering), would need a filtering tool that is not guaranteed to
//! exist and, worse, a shared link shaped by one `tbf` per node would make a node's contacts
//! share one transmitter. With a veth per pair:
//! - a contact's capacity is exactly the oracle's model (each direction of each contact is its
//!   own pipe of `--rate`), so ratios to [`crate::oracle`] are meaningful;
//! - the switch ends' byte counters give the bytes of *each contact* in each direction for free
//!   (read for all interfaces with one `ip -s -o link show` per batch of events);
//! - routing is unambiguous: each pair has its own subnet.
//!
//! The veths are created **up front** for every pair of the trace, before the daemons start,
//! rather than lazily on first contact: the daemons then see all their interfaces at start-up
//! and discovery does not depend on how fast they re-scan interfaces. The cost is setup time
//! (a few `ip` commands per pair: about a second for the 36 pairs of the intel trace) and
//! interfaces (a node has one per partner); [`MAX_PAIRS`] bounds it.
//!
//! # Rate and time compression
//! Each node end is shaped with `tc qdisc replace … root tbf rate R burst B latency 100ms`
//! (no netem on the target kernel), so every contact direction carries at most `R` bytes per
//! **real** second, where `R` is `--rate`. A contact of `d` trace seconds lasts `d/K` real
//! seconds and can therefore carry `R·d/K` bytes: in trace time the emulated link rate is
//! `R/K`. The oracle and the report use this effective rate `R/K`, and the summary states both.
//! To give each contact the bytes it would carry in reality at rate `r`, pass `--rate` =
//! `r·K` (e.g. 8 Mbit/s at `K = 10` → `--rate 80mbit`); the kernel's tbf and the daemons then
//! have to keep up with the faster rate. We keep `--rate` literal (the rate on the emulated
//! wire) rather than scaling it silently, because what a real process achieves at a given wire
//! rate is the thing this emulation measures.
//!
//! Discovery and sessions run in real time: beacons every 200 ms (100–400 ms adaptive), a
//! neighbour is declared gone after 1 s of silence, sessions keep alive every 200 ms and end
//! after 1 s of silence. A contact shorter than about one real second (trace duration `d` with
//! `d/K < ~1 s`) therefore carries little or nothing: at large `K` only long contacts matter.
//! The summary reports how many contacts were shorter than one real second.
//!
//! # Teardown
//! Everything the run creates is owned by a `Topology` value whose `Drop` stops the daemons
//! (SIGTERM, then SIGKILL after 5 s) and deletes the namespaces (which removes every veth and
//! bridge inside them), so completion, errors, Ctrl-C (a SIGINT/SIGTERM handler only sets a
//! flag; the main loop sees it within 50 ms and returns) and panics all clean up. Daemons are
//! started in their own process group so a Ctrl-C at the terminal reaches only this process,
//! which then stops them in order. A run killed with SIGKILL leaves namespaces named
//! `mnmtb…`; [`cleanup`] (`mule-testbed cleanup`) removes them and the processes inside.
//!
//! # What the report can and cannot say
//! Completion times and bytes on the wire (interface counters, including beacons, handshakes
//! and TCP/IP headers, during contacts) are measured. The daemons do not expose per-piece
//! duplicate counts or which peer served which piece, so those columns are zero, and origin
//! offload is computed from bytes on the wire (bytes the audience received from nodes other
//! than the origin ÷ all bytes it received during contacts), which includes protocol overhead.
//! The shared [`crate::report::Report`] is filled with one outcome, `mule-emulated`, next to
//! the oracle bound computed at the effective rate.

use std::io::{self, Write as _};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

mod cleanup;
mod daemons;
mod error;
mod options;
mod plan;
mod replay;
mod report;
mod signals;
mod summary;
mod tally;
mod topology;

pub use cleanup::{cleanup, cleanup_all};
pub use error::EmulateError;
pub use options::{EmulateArgs, EmulateOptions, default_mule};
pub use report::{EmulateReport, Finish, NodeResult, Progress};

use error::io_err;
use plan::Plan;
use replay::Replay;
use report::Lifecycle;
use signals::SignalGuard;
use topology::Topology;

/// Name prefix (after `mule_netns::NAME_PREFIX`) of every namespace an emulation creates, so
/// [`cleanup`] finds them: namespaces are called `mnmtb<pid>x<n>`.
pub const PREFIX: &str = "mtb";

/// Most node pairs (bridges) an emulation builds; a trace with more distinct pairs is refused
/// (each pair costs two veths and a bridge, and the setup time grows with it).
pub const MAX_PAIRS: usize = 4096;

/// Most nodes an emulation starts (each is a real daemon process).
pub const MAX_NODES: u32 = 256;

/// Strategy name of the emulated outcome in the shared report.
pub const STRATEGY: &str = "mule-emulated";

/// Subscription channel of the published bundle.
const CHANNEL: &str = "emulate";

/// Name of the published bundle.
const BUNDLE_NAME: &str = "mtb-update";

/// How often the main loop wakes up at most (export checks, contact switches, Ctrl-C).
const TICK: Duration = Duration::from_millis(50);

/// How often every node's `mule bundles --json` is polled.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// How long daemons get to open their control socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long daemons get to stop after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs an emulation (see the module docs). `progress` is called about once per real second.
/// Everything created is torn down before this returns, also on error; on Ctrl-C the report
/// covers what happened so far and `finish` is [`Finish::Interrupted`].
pub fn run(
    opts: EmulateOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<EmulateReport, EmulateError> {
    let plan = Plan::new(&opts)?;
    let out = opts.out.clone();
    std::fs::create_dir_all(out.join("logs")).map_err(io_err(&out))?;
    std::fs::create_dir_all(out.join("config")).map_err(io_err(&out))?;

    // Set up: namespaces, pairs, key, daemons.
    let _signals = SignalGuard::install();
    let setup_t0 = Instant::now();
    let mut topo = Topology::with_workdir()?;
    let namespaces = topo.add_namespaces(plan.trace.nodes)?;
    topo.add_pairs(&plan.pairs, opts.rate)?;
    let (key, publisher) = daemons::publisher_key(&opts.mule, topo.workdir())?;
    daemons::start_daemons(&mut topo, &opts, &plan.audience, &publisher)?;
    let daemon_pids: Vec<u32> = topo.daemons.iter().map(|d| d.pid()).collect();
    daemons::wait_for_sockets(&mut topo.daemons, &out)?;
    let setup_s = setup_t0.elapsed().as_secs_f64();

    // The file to publish, then the replay.
    let (content, src) = publish_file(&opts, topo.workdir())?;
    let measured = Replay::new(&plan, &opts, &topo, content, src, key).run(&topo, &mut progress)?;

    // Teardown.
    let td0 = Instant::now();
    let killed = topo.teardown();
    drop(topo);
    let teardown_s = td0.elapsed().as_secs_f64();

    // Results.
    let life = Lifecycle {
        setup_s,
        teardown_s,
        killed,
        namespaces,
        daemon_pids,
    };
    let (mut rep, report) = report::build(&opts, &plan, measured, life);
    summary::write_all(&mut rep, &report, &plan.trace, &out)?;
    if !rep.killed_after_sigterm.is_empty() {
        rep.warnings.push(format!(
            "daemons of nodes {:?} did not stop within {} s of SIGTERM and were killed; see \
             {}/logs/",
            rep.killed_after_sigterm,
            STOP_TIMEOUT.as_secs(),
            out.display()
        ));
    }
    rep.report = Some(report);
    Ok(rep)
}

/// Writes the file to publish (`--publish` size, content from the seed) into the work
/// directory; returns its content and path.
fn publish_file(
    opts: &EmulateOptions,
    workdir: &std::path::Path,
) -> Result<(Vec<u8>, std::path::PathBuf), EmulateError> {
    let mut content = vec![0u8; opts.publish.size.0 as usize];
    SmallRng::seed_from_u64(opts.seed ^ 0x00C0_FFEE).fill_bytes(&mut content);
    let src = workdir.join("update.bin");
    std::fs::write(&src, &content).map_err(io_err(&src))?;
    Ok((content, src))
}

/// `mule-testbed emulate`: runs with a progress line on stderr, prints the headline table on
/// stdout. For `main.rs`.
pub fn main(args: EmulateArgs) -> Result<(), EmulateError> {
    let opts = args.options();
    let out = opts.out.clone();
    let mut last_len = 0usize;
    let rep = run(opts, |p| {
        let line = p.line();
        let pad = last_len.saturating_sub(line.len());
        last_len = line.len();
        eprint!("\r{line}{}", " ".repeat(pad));
        let _ = io::stderr().flush();
    })?;
    eprintln!();
    for w in &rep.warnings {
        eprintln!("mule-testbed: warning: {w}");
    }
    if let Some(r) = &rep.report {
        println!("{}", r.headline_table());
    }
    eprintln!(
        "emulated {} nodes ({} pairs, {} contacts) in {:.1} s real (+{:.1} s setup, {:.1} s teardown): \
         {}/{} audience nodes complete and byte-identical; {:?}; report in {}",
        rep.nodes.len(),
        rep.pairs,
        rep.contacts_replayed,
        rep.real_s,
        rep.setup_s,
        rep.teardown_s,
        rep.completed_identical(),
        rep.audience(),
        rep.finish,
        out.display()
    );
    if rep.finish == Finish::Interrupted {
        return Err(EmulateError::Interrupted(out.display().to_string()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Signals
