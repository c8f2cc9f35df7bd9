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

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mule_netns::{Bridge, Netns, Veth};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::oracle::Oracle;
use crate::report::{Report, ReportError, RunInfo};
use crate::run::{Audience, Publish, PublishAt};
use crate::sim::{ContactUse, NodeStats, Outcome, Overheads, Radio, Scenario};
use crate::trace::{self, Format, NodeIx, Trace, TraceError};
use crate::units::{Rate, Size, fmt_secs};

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

/// Arguments of `mule-testbed emulate` (flatten into a clap subcommand).
#[derive(clap::Args, Clone, Debug)]
pub struct EmulateArgs {
    /// Contact trace: CSV `start_s,end_s,node_a,node_b` or The ONE `time CONN a b up|down`.
    #[arg(long)]
    pub trace: PathBuf,
    /// Trace format (default: guessed from the content).
    #[arg(long)]
    pub format: Option<Format>,
    /// Link rate on the emulated wire (real time) per contact direction, e.g. 8mbit. In trace
    /// time a contact carries rate ÷ time-scale (see the module docs).
    #[arg(long, default_value = "8mbit")]
    pub rate: Rate,
    /// Time compression K: a contact of d trace seconds lasts d/K real seconds.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// What to publish where: SIZE@NODE, e.g. 1MB@0.
    #[arg(long)]
    pub publish: Publish,
    /// When to publish: a fraction of the trace (0.25, 25%; a bare number must be between 0
    /// and 1) or trace seconds with the unit (3600s).
    #[arg(long, default_value = "0")]
    pub publish_at: PublishAt,
    /// Who subscribes: `all` (every node but the origin) or a fraction (0.3, 30%).
    #[arg(long, default_value = "all")]
    pub audience: Audience,
    /// Node count (default: highest id in the trace + 1).
    #[arg(long)]
    pub nodes: Option<u32>,
    /// Contacts shorter than this many trace seconds are extended to it (not dropped).
    #[arg(long, default_value_t = trace::DEFAULT_MIN_CONTACT_S)]
    pub min_contact: f64,
    /// The `mule` binary (default: $MULE_BIN, else `mule` next to this program, else PATH).
    #[arg(long)]
    pub mule: Option<PathBuf>,
    /// Piece size of the published bundle.
    #[arg(long, default_value = "64KiB")]
    pub piece_size: Size,
    /// Bytes a node outside the audience may carry.
    #[arg(long, default_value = "256MiB")]
    pub carry_quota: Size,
    /// Real seconds to keep going after the trace ended, for transfers in flight.
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,
    /// Seed of the audience choice and of the published file's content.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output directory: results.json, nodes.csv, contacts.csv, summary.md, emulation.json,
    /// emulation_nodes.csv, plots, logs/ and config/.
    #[arg(long)]
    pub out: PathBuf,
}

/// A fully specified emulation (what [`run`] needs).
#[derive(Clone, Debug)]
pub struct EmulateOptions {
    /// The trace file.
    pub trace: PathBuf,
    /// Its format (`None`: guess).
    pub format: Option<Format>,
    /// Link rate per contact direction on the emulated wire (real time).
    pub rate: Rate,
    /// Time compression `K` (`> 0`).
    pub time_scale: f64,
    /// Bundle size and origin.
    pub publish: Publish,
    /// When to publish.
    pub publish_at: PublishAt,
    /// Who subscribes.
    pub audience: Audience,
    /// Declared node count.
    pub nodes: Option<u32>,
    /// Minimum contact length, trace seconds.
    pub min_contact: f64,
    /// The `mule` binary.
    pub mule: PathBuf,
    /// Piece size.
    pub piece_size: Size,
    /// Carry quota of every node.
    pub carry_quota: Size,
    /// Real seconds after the trace's end before giving up.
    pub grace: f64,
    /// Seed (audience, file content).
    pub seed: u64,
    /// Output directory.
    pub out: PathBuf,
}

impl EmulateArgs {
    /// Resolves defaults (the `mule` binary) into options.
    pub fn options(&self) -> EmulateOptions {
        EmulateOptions {
            trace: self.trace.clone(),
            format: self.format,
            rate: self.rate,
            time_scale: self.time_scale,
            publish: self.publish,
            publish_at: self.publish_at,
            audience: self.audience,
            nodes: self.nodes,
            min_contact: self.min_contact,
            mule: self.mule.clone().unwrap_or_else(default_mule),
            piece_size: self.piece_size,
            carry_quota: self.carry_quota,
            grace: self.grace,
            seed: self.seed,
            out: self.out.clone(),
        }
    }
}

/// `$MULE_BIN`, else `mule` next to the running executable, else `mule` (searched in PATH).
pub fn default_mule() -> PathBuf {
    if let Some(p) = std::env::var_os("MULE_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        for d in [Some(dir), dir.parent()].into_iter().flatten() {
            let p = d.join("mule");
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from("mule")
}

/// Why an emulation failed.
#[derive(Debug, thiserror::Error)]
pub enum EmulateError {
    /// The trace was rejected.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// An option makes no sense for this trace.
    #[error("{0}")]
    Invalid(String),
    /// Not running as root: network namespaces cannot be created.
    #[error("emulation needs root (it creates network namespaces); run with sudo")]
    NotRoot,
    /// Building the topology (namespaces, veths, bridges, shaping) failed.
    #[error("topology: {0}")]
    Topology(io::Error),
    /// A daemon or a `mule` command failed.
    #[error("{what}: {why}")]
    Daemon {
        /// What we were doing.
        what: String,
        /// The error (command line, exit status, stderr).
        why: String,
    },
    /// A file in the output or work directory could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// The report could not be written.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// Ctrl-C or SIGTERM arrived; everything was torn down and a partial report written.
    #[error("interrupted; partial report written to {0}")]
    Interrupted(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> EmulateError + '_ {
    move |source| EmulateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What the progress callback sees, about once per real second.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Real seconds since the replay began.
    pub real_s: f64,
    /// Current trace time (seconds from the trace start).
    pub trace_s: f64,
    /// Trace duration in seconds.
    pub trace_len_s: f64,
    /// Whether the bundle has been published yet.
    pub published: bool,
    /// Contacts up right now.
    pub contacts_up: usize,
    /// Audience nodes that completed (verified export).
    pub complete: usize,
    /// Audience size.
    pub audience: usize,
    /// Pieces held, summed over the audience.
    pub pieces_have: u64,
    /// Pieces needed, summed over the audience.
    pub pieces_total: u64,
}

impl Progress {
    /// A one-line rendering for a terminal (no newline).
    pub fn line(&self) -> String {
        let frac = if self.trace_len_s > 0.0 {
            100.0 * self.trace_s / self.trace_len_s
        } else {
            100.0
        };
        let bar_len = 20usize;
        let done = (self.complete * bar_len)
            .checked_div(self.audience)
            .unwrap_or(bar_len);
        format!(
            "[{}{}] {}/{} complete | pieces {}/{} | trace {} ({:.0}%) | real {:.1} s | {} up{}",
            "#".repeat(done),
            "-".repeat(bar_len - done),
            self.complete,
            self.audience,
            self.pieces_have,
            self.pieces_total,
            fmt_secs(self.trace_s),
            frac.min(100.0),
            self.real_s,
            self.contacts_up,
            if self.published {
                ""
            } else {
                " | not published yet"
            }
        )
    }
}

/// How an emulation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Finish {
    /// Every audience node completed.
    AllComplete,
    /// The trace (plus grace) ended first.
    TraceEnded,
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

/// Per-node result of an emulation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeResult {
    /// Node index in the trace.
    pub node: NodeIx,
    /// Subscribed to the bundle.
    pub in_audience: bool,
    /// The publishing node.
    pub origin: bool,
    /// Seconds of trace time from publishing until the export appeared (audience), or until
    /// the node held every piece (others, at 1 s real polling resolution).
    pub complete_s: Option<f64>,
    /// The same in real seconds since publishing.
    pub complete_real_s: Option<f64>,
    /// Export compared byte for byte with the published file (`None`: no export).
    pub identical: Option<bool>,
    /// Pieces held at the end (last poll).
    pub pieces_have: u64,
    /// Pieces of the bundle.
    pub pieces_total: u64,
    /// Bundle state at the end, as `mule bundles` reports it.
    pub state: String,
    /// Bytes this node sent during contacts (interface counters, everything on the wire).
    pub tx_bytes: u64,
    /// Bytes this node received during contacts.
    pub rx_bytes: u64,
    /// Bytes this node sent on all its interfaces over the whole run, including beacons sent
    /// while no partner was attached.
    pub tx_bytes_total: u64,
}

/// The outcome of [`run`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EmulateReport {
    /// How it ended.
    pub finish: Finish,
    /// Per node.
    pub nodes: Vec<NodeResult>,
    /// Real seconds from the replay's start to its end.
    pub real_s: f64,
    /// Real seconds from the replay's start to publishing.
    pub published_real_s: Option<f64>,
    /// The published bundle's id.
    pub bundle_id: Option<String>,
    /// Real seconds `mule publish` took (cutting, hashing, signing, storing).
    pub publish_command_s: f64,
    /// Link rate on the wire (real time), bytes/s.
    pub rate_bytes_per_s: f64,
    /// Time compression.
    pub time_scale: f64,
    /// Effective rate in trace time (`rate / K`), bytes/s.
    pub effective_rate_bytes_per_s: f64,
    /// Distinct pairs (bridges) built.
    pub pairs: usize,
    /// Contacts replayed (switched up).
    pub contacts_replayed: usize,
    /// Contacts shorter than one real second after compression.
    pub contacts_under_1s_real: usize,
    /// Largest delay between a contact switch's due time and when it happened, real seconds.
    pub max_switch_lag_s: f64,
    /// Seconds spent building the topology and starting the daemons.
    pub setup_s: f64,
    /// Seconds spent tearing down.
    pub teardown_s: f64,
    /// Nodes whose daemon did not exit within 5 s of SIGTERM and was killed (a daemon bug
    /// worth a look in its log).
    pub killed_after_sigterm: Vec<NodeIx>,
    /// Names of the namespaces created (all deleted by the time [`run`] returns).
    pub namespaces: Vec<String>,
    /// Process ids of the daemons (all reaped by the time [`run`] returns).
    pub daemon_pids: Vec<u32>,
    /// Files written into the output directory.
    pub files: Vec<String>,
    /// Warnings (e.g. PNG plots skipped for lack of a font).
    pub warnings: Vec<String>,
    /// The shared report (headline figures, oracle), as written to results.json.
    #[serde(skip)]
    pub report: Option<Report>,
}

impl EmulateReport {
    /// Audience nodes that completed with a byte-identical export.
    pub fn completed_identical(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.in_audience && n.identical == Some(true))
            .count()
    }

    /// Audience size.
    pub fn audience(&self) -> usize {
        self.nodes.iter().filter(|n| n.in_audience).count()
    }
}

/// Removes what killed emulations left behind (`mule-testbed cleanup`): namespaces named
/// `mnmtb…` (with every veth and bridge inside, after killing the daemons in them) and work
/// directories `$TMPDIR/mule-emulate-<pid>-…`, but only those whose creating process is gone,
/// so it is safe while other emulations run. Returns how many objects were removed.
pub fn cleanup() -> usize {
    cleanup_where(|pids| !pids.iter().any(|&p| process_alive(p)))
}

/// Like [`cleanup`] but also removes the namespaces and work directories of emulations that
/// are still running (theirs or this process's own).
pub fn cleanup_all() -> usize {
    cleanup_where(|_| true)
}

fn cleanup_where(stale: impl Fn(&[u32]) -> bool) -> usize {
    let mut removed = 0;
    let full = format!("{}{PREFIX}", mule_netns::NAME_PREFIX);
    if let Ok(out) = mule_netns::run(&["ip", "netns", "list"]) {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(rest) = name.strip_prefix(&full) else {
                continue;
            };
            if !stale(&creator_pids(rest)) {
                continue;
            }
            if let Ok(out) = mule_netns::run(&["ip", "netns", "pids", name]) {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<libc::pid_t>() {
                        // SAFETY: a plain syscall on a process inside a namespace that an
                        // emulation created and whose creator is gone: a leftover daemon.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            if mule_netns::run(&["ip", "netns", "delete", name]).is_ok() {
                removed += 1;
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(WORKDIR_PREFIX) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse().ok()) else {
                continue;
            };
            if stale(&[pid]) && std::fs::remove_dir_all(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Work directories (data dirs, keys, the published file) are `$TMPDIR/<this><pid>-<n>`.
const WORKDIR_PREFIX: &str = "mule-emulate-";

/// The pids that may have created a namespace named `mnmtb` + `rest`: `rest` is the pid in
/// base 36, an `x`, and a counter in base 36; base 36 digits include `x`, so every split at an
/// `x` is a candidate (a namespace counts as live if any candidate is alive: conservative).
fn creator_pids(rest: &str) -> Vec<u32> {
    rest.match_indices('x')
        .filter_map(|(i, _)| u32::from_str_radix(&rest[..i], 36).ok())
        .collect()
}

/// Whether a process with this pid exists.
fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
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

/// Set by the SIGINT/SIGTERM handler, read by the main loop. A process-wide flag is the only
/// thing a signal handler may safely touch.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Installs the flag-setting handler for SIGINT and SIGTERM; restores the previous handlers
/// on drop.
struct SignalGuard {
    old: [(libc::c_int, libc::sighandler_t); 2],
}

impl SignalGuard {
    fn install() -> SignalGuard {
        STOP.store(false, Ordering::SeqCst);
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        let mut old = [
            (libc::SIGINT, libc::SIG_DFL),
            (libc::SIGTERM, libc::SIG_DFL),
        ];
        for (sig, prev) in &mut old {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            *prev = unsafe { libc::signal(*sig, handler) };
        }
        SignalGuard { old }
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for (sig, prev) in self.old {
            if prev != libc::SIG_ERR {
                // SAFETY: restores what `signal` returned before.
                unsafe { libc::signal(sig, prev) };
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Topology

/// The two veths and the bridge of one node pair.
struct Pair {
    a: NodeIx,
    b: NodeIx,
    va: Veth,
    vb: Veth,
    bridge: Bridge,
}

/// A running daemon; stopped (SIGTERM, then SIGKILL) on drop.
struct Daemon {
    child: Child,
    data_dir: PathBuf,
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Stops daemons: SIGTERM to all, wait up to [`STOP_TIMEOUT`], SIGKILL the rest, reap all.
/// Returns the indices of the daemons that had to be killed.
fn stop_daemons(daemons: &mut [Daemon]) -> Vec<usize> {
    let mut killed = Vec::new();
    for d in daemons.iter_mut() {
        if let Ok(None) = d.child.try_wait() {
            // SAFETY: plain syscall on a child we spawned and have not reaped.
            unsafe { libc::kill(d.child.id() as libc::pid_t, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for (i, d) in daemons.iter_mut().enumerate() {
        loop {
            match d.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = d.child.kill();
                    let _ = d.child.wait();
                    killed.push(i);
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    killed
}

/// Everything an emulation creates. Dropping it tears everything down, in this order:
/// daemons (so no process keeps a namespace alive), then the node and switch namespaces
/// (which deletes every veth and bridge inside them), then the work directory.
struct Topology {
    daemons: Vec<Daemon>,
    pairs: Vec<Pair>,
    nodes: Vec<Netns>,
    switch: Option<Netns>,
    workdir: Option<PathBuf>,
}

impl Topology {
    /// Tears everything down (see the type's docs); idempotent. Returns the nodes whose
    /// daemon ignored SIGTERM for [`STOP_TIMEOUT`] and was killed.
    fn teardown(&mut self) -> Vec<usize> {
        let killed = stop_daemons(&mut self.daemons);
        self.daemons.clear();
        // Deleting the namespaces removes both ends of every veth and every bridge; the Rust
        // handles would only retry deletions that can no longer succeed (two failing `ip`
        // commands each), so they are forgotten once their namespaces are gone.
        // Should a namespace survive its deletion, its interfaces stay inside it, where
        // `cleanup` finds them by the namespace's name.
        drop(std::mem::take(&mut self.nodes));
        drop(self.switch.take());
        for p in self.pairs.drain(..) {
            std::mem::forget(p);
        }
        if let Some(w) = self.workdir.take() {
            let _ = std::fs::remove_dir_all(w);
        }
        killed
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Address of node `side` (0 or 1) of pair number `p`: `10.200.0.0/14` cut into `/30`s.
fn pair_addr(p: usize, side: usize) -> String {
    let base = (10u32 << 24) | (200u32 << 16);
    let a = base + (p as u32) * 4 + 1 + side as u32;
    format!(
        "{}.{}.{}.{}/30",
        a >> 24,
        (a >> 16) & 255,
        (a >> 8) & 255,
        a & 255
    )
}

/// `tc` rate string (bits per second) for a rate in bytes per second.
fn tc_rate(rate: Rate) -> String {
    format!("{}bit", (rate.bytes_per_s() * 8.0).round() as u64)
}

/// tbf burst: at least one full-size frame plus headroom, and ~10 ms of traffic at the rate.
fn tc_burst(rate: Rate) -> String {
    let b = ((rate.bytes_per_s() / 100.0) as u64).max(16 * 1024);
    format!("{b}b")
}

/// Runs `ip -n ns -batch -` with `commands` (one per line) on stdin.
fn ip_batch(ns: &str, commands: &str) -> io::Result<()> {
    if commands.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(commands.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`ip -n {ns} -batch -` failed ({}): {} (commands: {})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            commands.trim().replace('\n', "; ")
        )));
    }
    Ok(())
}

/// Reads the byte counters of every interface in namespace `ns` with one command.
fn link_counters(ns: &str) -> io::Result<HashMap<String, (u64, u64)>> {
    let out = mule_netns::run(&["ip", "-n", ns, "-s", "-o", "link", "show"])?;
    Ok(parse_link_counters(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses `ip -s -o link show` (one interface per line, sections joined by `\`):
/// name → `(rx_bytes, tx_bytes)`.
fn parse_link_counters(text: &str) -> HashMap<String, (u64, u64)> {
    let mut map = HashMap::new();
    for line in text.lines() {
        let Some(name) = line.split(':').nth(1) else {
            continue;
        };
        let name = name.trim().split('@').next().unwrap_or("").to_owned();
        let parts: Vec<&str> = line.split('\\').map(str::trim).collect();
        let num = |hdr: &str| -> Option<u64> {
            let i = parts.iter().position(|p| p.starts_with(hdr))?;
            parts.get(i + 1)?.split_whitespace().next()?.parse().ok()
        };
        if let (Some(rx), Some(tx)) = (num("RX:"), num("TX:")) {
            map.insert(name, (rx, tx));
        }
    }
    map
}

// ---------------------------------------------------------------------------------------
// The `mule` CLI

/// Runs `mule args…` (in the host namespace: control sockets are files) and returns stdout.
fn mule_cmd(mule: &Path, args: &[&str]) -> Result<String, EmulateError> {
    let out = Command::new(mule)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| EmulateError::Daemon {
            what: format!("running {}", mule.display()),
            why: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(EmulateError::Daemon {
            what: format!("`mule {}`", args.join(" ")),
            why: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One row of `mule bundles --json` (only the fields we use).
#[derive(Clone, Debug, Default, Deserialize)]
struct BundleRow {
    id: String,
    #[serde(default)]
    pieces_have: u64,
    #[serde(default)]
    pieces_total: u64,
    #[serde(default)]
    state: String,
}

/// Config of one emulated node.
fn node_config(subscribe: bool, publisher: &str, carry_quota: u64) -> String {
    let channels = if subscribe {
        format!("[\"{CHANNEL}\"]")
    } else {
        "[]".to_owned()
    };
    format!(
        "# Generated by mule-testbed emulate.\n\
         [discovery]\n\
         interfaces = []\n\
         beacons = true\n\
         mdns = false\n\
         bluetooth = false\n\
         ipv6 = false\n\
         beacon_interval_ms = 200\n\
         beacon_interval_min_ms = 100\n\
         beacon_interval_max_ms = 400\n\
         peer_silence_ms = 1000\n\n\
         [session]\n\
         listen = [\"0.0.0.0:47701\"]\n\
         keepalive_ms = 200\n\
         idle_timeout_ms = 1000\n\
         max_sessions = 64\n\n\
         [subscriptions]\n\
         channels = {channels}\n\n\
         [trust]\n\
         publishers = [\"{publisher}\"]\n\n\
         [store]\n\
         quota_bytes = {store}\n\n\
         [carry]\n\
         quota_bytes = {carry_quota}\n\n\
         [log]\n\
         level = \"info\"\n\
         format = \"plain\"\n",
        store = (carry_quota.max(1 << 20) * 2).max(64 << 20),
    )
}

// ---------------------------------------------------------------------------------------
// The run

/// A contact switch due at trace time `t`.
#[derive(Clone, Copy, Debug)]
struct Switch {
    t: f64,
    up: bool,
    pair: usize,
    contact: usize,
}

/// Live state of a contact that is up.
struct Open {
    contact: usize,
    /// Switch-end counters `(rx, tx)` of `va` and `vb` when it came up.
    base: [(u64, u64); 2],
}

/// Runs an emulation (see the module docs). `progress` is called about once per real second.
/// Everything created is torn down before this returns, also on error; on Ctrl-C the report
/// covers what happened so far and `finish` is [`Finish::Interrupted`].
pub fn run(
    opts: EmulateOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<EmulateReport, EmulateError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(EmulateError::NotRoot);
    }
    if !(opts.time_scale > 0.0 && opts.time_scale.is_finite()) {
        return Err(EmulateError::Invalid(format!(
            "--time-scale {} must be a positive number",
            opts.time_scale
        )));
    }
    if !(opts.grace >= 0.0 && opts.grace.is_finite()) {
        return Err(EmulateError::Invalid(format!(
            "--grace {} must be a non-negative number of seconds",
            opts.grace
        )));
    }
    let topts = trace::Options {
        min_contact: opts.min_contact,
        nodes: opts.nodes,
        window: None,
    };
    let trace = Trace::load(&opts.trace, opts.format, &topts)?;
    if trace.nodes > MAX_NODES {
        return Err(EmulateError::Invalid(format!(
            "{} nodes: emulation starts one daemon per node and is limited to {MAX_NODES}; \
             use `simulate` for larger fleets",
            trace.nodes
        )));
    }
    let origin = opts.publish.node;
    if origin >= trace.nodes {
        return Err(EmulateError::Invalid(format!(
            "--publish: origin node {origin} is not in the trace (nodes 0..{})",
            trace.nodes
        )));
    }
    if opts.publish.size.0 == 0 {
        return Err(EmulateError::Invalid(
            "--publish: the bundle size must be positive".into(),
        ));
    }
    let ps = opts.piece_size.0;
    if !(4096..=4 << 20).contains(&ps) {
        return Err(EmulateError::Invalid(format!(
            "--piece-size {} is outside 4 KiB..4 MiB (the daemon's limits)",
            opts.piece_size
        )));
    }
    let publish_at = opts
        .publish_at
        .resolve(&trace)
        .map_err(EmulateError::Invalid)?;
    if let Some(w) = crate::run::isolated_origin(&trace, origin, publish_at) {
        eprintln!("mule-testbed: warning: {w}");
    }
    if !opts.mule.is_file() && opts.mule.components().count() > 1 {
        return Err(EmulateError::Invalid(format!(
            "--mule {}: no such file (build it with `cargo build -p mule`)",
            opts.mule.display()
        )));
    }
    let k = opts.time_scale;
    let eff_rate = Rate(opts.rate.bytes_per_s() / k);
    let audience = match opts.audience {
        Audience::All => (0..trace.nodes).map(|v| v != origin).collect::<Vec<_>>(),
        Audience::Fraction(f) => Scenario::pick_audience(trace.nodes, origin, f, opts.seed),
    };
    let scenario = Scenario {
        rate: eff_rate,
        bundle: opts.publish.size.0,
        piece_size: ps as u32,
        origin,
        publish_at,
        audience: audience.clone(),
        carry_quota_pieces: (opts.carry_quota.0 / ps).min(u32::MAX as u64) as u32,
        fpr: 0.01,
        overheads: Overheads::mule(ps.min(256 << 10) as u32),
        radio: Radio::PerContact,
        seed: opts.seed,
    };

    // Distinct pairs, in order of first contact.
    let mut pair_of: HashMap<(NodeIx, NodeIx), usize> = HashMap::new();
    let mut pair_list: Vec<(NodeIx, NodeIx)> = Vec::new();
    for c in &trace.contacts {
        let key = (c.a.min(c.b), c.a.max(c.b));
        if let std::collections::hash_map::Entry::Vacant(e) = pair_of.entry(key) {
            e.insert(pair_list.len());
            pair_list.push(key);
        }
    }
    if pair_list.len() > MAX_PAIRS {
        return Err(EmulateError::Invalid(format!(
            "{} distinct node pairs in the trace; the emulation builds one bridge per pair and \
             is limited to {MAX_PAIRS}",
            pair_list.len()
        )));
    }
    let mut switches: Vec<Switch> = Vec::with_capacity(2 * trace.contacts.len());
    for (i, c) in trace.contacts.iter().enumerate() {
        let pair = pair_of[&(c.a.min(c.b), c.a.max(c.b))];
        switches.push(Switch {
            t: c.start,
            up: true,
            pair,
            contact: i,
        });
        switches.push(Switch {
            t: c.end,
            up: false,
            pair,
            contact: i,
        });
    }
    // Downs before ups at the same instant, so a pair never looks connected twice.
    switches.sort_by(|x, y| x.t.total_cmp(&y.t).then(x.up.cmp(&y.up)));
    let under_1s = trace
        .contacts
        .iter()
        .filter(|c| c.duration() / k < 1.0)
        .count();

    let out = opts.out.clone();
    std::fs::create_dir_all(out.join("logs")).map_err(io_err(&out))?;
    std::fs::create_dir_all(out.join("config")).map_err(io_err(&out))?;

    let _signals = SignalGuard::install();
    let setup_t0 = Instant::now();
    let mut topo = Topology {
        daemons: Vec::new(),
        pairs: Vec::new(),
        nodes: Vec::new(),
        switch: None,
        workdir: None,
    };
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let workdir = std::env::temp_dir().join(format!(
        "{WORKDIR_PREFIX}{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&workdir).map_err(io_err(&workdir))?;
    topo.workdir = Some(workdir.clone());

    // Topology.
    let topo_err = EmulateError::Topology;
    let switch = Netns::new(PREFIX).map_err(topo_err)?;
    let switch_name = switch.name().to_owned();
    topo.switch = Some(switch);
    for _ in 0..trace.nodes {
        let ns = Netns::new(PREFIX).map_err(topo_err)?;
        topo.nodes.push(ns);
    }
    let namespaces: Vec<String> = std::iter::once(switch_name.clone())
        .chain(topo.nodes.iter().map(|n| n.name().to_owned()))
        .collect();
    let (rate_s, burst_s) = (tc_rate(opts.rate), tc_burst(opts.rate));
    for (p, &(a, b)) in pair_list.iter().enumerate() {
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        let sw = topo.switch.as_ref().expect("switch exists");
        let bridge = Bridge::new_in(sw, PREFIX).map_err(topo_err)?;
        let va =
            Veth::new(Some(sw), &topo.nodes[a as usize], &pair_addr(p, 0)).map_err(topo_err)?;
        let vb =
            Veth::new(Some(sw), &topo.nodes[b as usize], &pair_addr(p, 1)).map_err(topo_err)?;
        va.shape(&rate_s, &burst_s, "100ms").map_err(topo_err)?;
        vb.shape(&rate_s, &burst_s, "100ms").map_err(topo_err)?;
        topo.pairs.push(Pair {
            a,
            b,
            va,
            vb,
            bridge,
        });
    }

    // Publisher key and daemons.
    let key = workdir.join("publisher.key");
    let key_s = key.display().to_string();
    let printed = mule_cmd(&opts.mule, &["key", "gen", "--out", &key_s])?;
    let publisher = printed
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|w| w.len() == 64)
        .ok_or_else(|| EmulateError::Daemon {
            what: "`mule key gen`".into(),
            why: format!("no 64-hex-digit public key in its output {printed:?}"),
        })?
        .to_owned();
    for (v, &subscribes) in audience.iter().enumerate() {
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        let cfg = out.join("config").join(format!("node-{v}.toml"));
        std::fs::write(
            &cfg,
            node_config(subscribes, &publisher, opts.carry_quota.0),
        )
        .map_err(io_err(&cfg))?;
        let data_dir = workdir.join(format!("n{v}"));
        std::fs::create_dir_all(&data_dir).map_err(io_err(&data_dir))?;
        let log = out.join("logs").join(format!("node-{v}.log"));
        let logf = std::fs::File::create(&log).map_err(io_err(&log))?;
        let logf2 = logf.try_clone().map_err(io_err(&log))?;
        let child = topo.nodes[v]
            .command(&opts.mule.display().to_string())
            .args(["run", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(&data_dir)
            .stdin(Stdio::null())
            .stdout(logf)
            .stderr(logf2)
            // Own process group: a terminal's Ctrl-C reaches only us; we stop them in order.
            .process_group(0)
            .spawn()
            .map_err(|e| EmulateError::Daemon {
                what: format!("starting the daemon of node {v}"),
                why: e.to_string(),
            })?;
        topo.daemons.push(Daemon { child, data_dir });
    }
    let daemon_pids: Vec<u32> = topo.daemons.iter().map(Daemon::pid).collect();
    let deadline = Instant::now() + START_TIMEOUT;
    for (v, d) in topo.daemons.iter_mut().enumerate() {
        loop {
            if STOP.load(Ordering::SeqCst) {
                break;
            }
            if let Ok(Some(st)) = d.child.try_wait() {
                return Err(EmulateError::Daemon {
                    what: format!("daemon of node {v}"),
                    why: format!(
                        "exited at start-up ({st}); see {}/logs/node-{v}.log",
                        out.display()
                    ),
                });
            }
            if d.data_dir.join("mule.sock").exists() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(EmulateError::Daemon {
                    what: format!("daemon of node {v}"),
                    why: format!(
                        "no control socket after {} s; see {}/logs/node-{v}.log",
                        START_TIMEOUT.as_secs(),
                        out.display()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let setup_s = setup_t0.elapsed().as_secs_f64();

    // The file to publish.
    let mut content = vec![0u8; opts.publish.size.0 as usize];
    SmallRng::seed_from_u64(opts.seed ^ 0x00C0_FFEE).fill_bytes(&mut content);
    let src = workdir.join("update.bin");
    std::fs::write(&src, &content).map_err(io_err(&src))?;

    // Replay.
    let n = trace.nodes as usize;
    let t0 = Instant::now();
    let real_of = |t: f64| Duration::from_secs_f64(((t - trace.start) / k).max(0.0));
    let trace_of = |d: Duration| trace.start + d.as_secs_f64() * k;
    let end_real = real_of(trace.end) + Duration::from_secs_f64(opts.grace);
    let publish_real = real_of(publish_at);
    let mut next_switch = 0usize;
    let mut open: HashMap<usize, Open> = HashMap::new();
    let mut uses: Vec<ContactUse> = Vec::new();
    let mut per_node_tx = vec![0u64; n];
    let mut per_node_rx = vec![0u64; n];
    let mut rx_from_origin = vec![0u64; n];
    let mut replayed = 0usize;
    let mut max_lag = 0f64;
    let mut bundle_id: Option<String> = None;
    let mut published_real: Option<Duration> = None;
    let mut complete_real: Vec<Option<Duration>> = vec![None; n];
    let mut identical: Vec<Option<bool>> = vec![None; n];
    let mut rows: Vec<BundleRow> = vec![BundleRow::default(); n];
    let mut next_poll = Duration::ZERO;
    let data_dirs: Vec<PathBuf> = topo.daemons.iter().map(|d| d.data_dir.clone()).collect();
    type Poll = Vec<Vec<BundleRow>>;
    let mut poller: Option<(Duration, std::thread::JoinHandle<Poll>)> = None;
    type Published = Result<String, EmulateError>;
    let mut publisher: Option<(Duration, std::thread::JoinHandle<Published>)> = None;
    let mut publish_cmd_s = 0.0;
    let audience_n = audience.iter().filter(|&&a| a).count();
    let sw_name = switch_name.clone();

    // Applies contact switch `s` given the switch-end counters `snap` read just before.
    let apply = |s: &Switch,
                 topo: &Topology,
                 snap: &HashMap<String, (u64, u64)>,
                 open: &mut HashMap<usize, Open>,
                 uses: &mut Vec<ContactUse>,
                 tx: &mut [u64],
                 rx: &mut [u64],
                 from_origin: &mut [u64],
                 batch: &mut String| {
        let p = &topo.pairs[s.pair];
        let ctr = |v: &Veth| snap.get(v.switch_end()).copied().unwrap_or((0, 0));
        if s.up {
            for v in [&p.va, &p.vb] {
                let _ = writeln!(
                    batch,
                    "link set {} master {}",
                    v.switch_end(),
                    p.bridge.name()
                );
            }
            open.insert(
                s.pair,
                Open {
                    contact: s.contact,
                    base: [ctr(&p.va), ctr(&p.vb)],
                },
            );
        } else {
            for v in [&p.va, &p.vb] {
                let _ = writeln!(batch, "link set {} nomaster", v.switch_end());
            }
            if let Some(o) = open.remove(&s.pair) {
                // Switch end rx = what the node sent; switch end tx = what it received.
                let (ra, ta) = ctr(&p.va);
                let (rb, tb) = ctr(&p.vb);
                let a_sent = ra.saturating_sub(o.base[0].0);
                let a_recv = ta.saturating_sub(o.base[0].1);
                let b_sent = rb.saturating_sub(o.base[1].0);
                let b_recv = tb.saturating_sub(o.base[1].1);
                let c = &trace.contacts[o.contact];
                if c.end > publish_at {
                    tx[p.a as usize] += a_sent;
                    rx[p.a as usize] += a_recv;
                    tx[p.b as usize] += b_sent;
                    rx[p.b as usize] += b_recv;
                    if p.a == origin {
                        from_origin[p.b as usize] += b_recv;
                    }
                    if p.b == origin {
                        from_origin[p.a as usize] += a_recv;
                    }
                    // Trace contacts have a < b, like pairs.
                    uses.push(ContactUse {
                        contact: o.contact as u32,
                        usable_s: c.end - c.start.max(publish_at),
                        bytes: [a_sent, b_sent],
                    });
                }
            }
        }
    };

    let finish = loop {
        let now = t0.elapsed();
        if STOP.load(Ordering::SeqCst) {
            break Finish::Interrupted;
        }
        // Contact switches due now.
        if next_switch < switches.len() && real_of(switches[next_switch].t) <= now {
            let snap = link_counters(&sw_name).map_err(EmulateError::Topology)?;
            let mut batch = String::new();
            while next_switch < switches.len() && real_of(switches[next_switch].t) <= now {
                let s = switches[next_switch];
                let lag = (now - real_of(s.t)).as_secs_f64();
                max_lag = max_lag.max(lag);
                apply(
                    &s,
                    &topo,
                    &snap,
                    &mut open,
                    &mut uses,
                    &mut per_node_tx,
                    &mut per_node_rx,
                    &mut rx_from_origin,
                    &mut batch,
                );
                if s.up {
                    replayed += 1;
                }
                next_switch += 1;
            }
            // All switches due at once in one `ip` process: at high time compression several
            // contacts change within a few milliseconds, and one process per change would
            // delay the later ones.
            ip_batch(&sw_name, &batch).map_err(EmulateError::Topology)?;
        }
        // Publishing, on a helper thread: `mule publish` cuts, hashes and signs the file,
        // which takes seconds in a debug build; the contact switches must not wait for it.
        // Completion times count from the command's start (the trace's publish time).
        if published_real.is_none() && publisher.is_none() && now >= publish_real {
            let dd = topo.daemons[origin as usize].data_dir.display().to_string();
            let args: Vec<String> = [
                "publish",
                &src.display().to_string(),
                "--name",
                BUNDLE_NAME,
                "--version",
                "1",
                "--key",
                &key_s,
                "--audience",
                CHANNEL,
                "--piece-size",
                &ps.to_string(),
                "--data-dir",
                &dd,
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            let mule = opts.mule.clone();
            publisher = Some((
                now,
                std::thread::spawn(move || {
                    let a: Vec<&str> = args.iter().map(String::as_str).collect();
                    mule_cmd(&mule, &a)
                }),
            ));
        }
        if publisher.as_ref().is_some_and(|(_, h)| h.is_finished())
            && let Some((started, h)) = publisher.take()
        {
            let out_id = h.join().map_err(|_| EmulateError::Daemon {
                what: "`mule publish`".into(),
                why: "its thread panicked".into(),
            })??;
            bundle_id = out_id
                .split(|c: char| !c.is_ascii_hexdigit())
                .find(|w| w.len() == 64)
                .map(str::to_owned);
            published_real = Some(started);
            publish_cmd_s = (t0.elapsed() - started).as_secs_f64();
            complete_real[origin as usize] = published_real;
            next_poll = Duration::ZERO;
        }
        // Exports (cheap: one directory listing per audience node).
        if let Some(pub_at) = published_real {
            for v in 0..n {
                if !audience[v] || complete_real[v].is_some() {
                    continue;
                }
                if let Some(file) = exported_file(&topo.daemons[v].data_dir) {
                    let at = t0.elapsed();
                    complete_real[v] = Some(at.max(pub_at));
                    identical[v] = Some(std::fs::read(&file).is_ok_and(|b| b == content));
                }
            }
        }
        // Polling runs on its own thread (a round of `mule bundles` takes a few hundred
        // milliseconds of process start-ups, which would delay contact switches).
        if poller.as_ref().is_some_and(|(_, h)| h.is_finished())
            && let Some((started, h)) = poller.take()
            && let (Ok(polled), Some(id)) = (h.join(), &bundle_id)
        {
            for v in 0..n {
                if let Some(r) = polled[v].iter().find(|r| &r.id == id) {
                    rows[v] = r.clone();
                    if !audience[v]
                        && complete_real[v].is_none()
                        && r.pieces_total > 0
                        && r.pieces_have == r.pieces_total
                    {
                        complete_real[v] = Some(started);
                    }
                }
            }
        }
        // Progress.
        if now >= next_poll {
            next_poll = now + POLL_EVERY;
            if bundle_id.is_some() && poller.is_none() {
                let (mule, dirs) = (opts.mule.clone(), data_dirs.clone());
                poller = Some((now, std::thread::spawn(move || poll_bundles(&mule, &dirs))));
            }
            let (have, total) = (0..n).filter(|&v| audience[v]).fold((0, 0), |acc, v| {
                let total = rows[v].pieces_total.max(scenario.pieces() as u64);
                let have = if complete_real[v].is_some() {
                    total
                } else {
                    rows[v].pieces_have
                };
                (acc.0 + have, acc.1 + total)
            });
            progress(&Progress {
                real_s: now.as_secs_f64(),
                trace_s: trace_of(now).min(trace.end) - trace.start,
                trace_len_s: trace.duration(),
                published: published_real.is_some(),
                contacts_up: open.len(),
                complete: (0..n)
                    .filter(|&v| audience[v] && complete_real[v].is_some())
                    .count(),
                audience: audience_n,
                pieces_have: have,
                pieces_total: total,
            });
        }
        let done = (0..n).all(|v| !audience[v] || complete_real[v].is_some());
        if published_real.is_some() && done {
            break Finish::AllComplete;
        }
        if now >= end_real {
            break Finish::TraceEnded;
        }
        // Sleep until the next thing due, at most one tick.
        let mut wake = now + TICK;
        if next_switch < switches.len() {
            wake = wake.min(real_of(switches[next_switch].t));
        }
        let now2 = t0.elapsed();
        if wake > now2 {
            std::thread::sleep(wake - now2);
        }
    };
    let real_end = t0.elapsed();

    // Close the contacts still up (their bytes count) and take final counters.
    let snap = link_counters(&sw_name).map_err(EmulateError::Topology)?;
    let still_open: Vec<usize> = open.keys().copied().collect();
    for pair in still_open {
        let contact = open[&pair].contact;
        let s = Switch {
            t: trace_of(real_end),
            up: false,
            pair,
            contact,
        };
        apply(
            &s,
            &topo,
            &snap,
            &mut open,
            &mut uses,
            &mut per_node_tx,
            &mut per_node_rx,
            &mut rx_from_origin,
            &mut String::new(),
        );
    }
    let mut tx_total = vec![0u64; n];
    for p in &topo.pairs {
        let rx_of = |v: &Veth| snap.get(v.switch_end()).map(|c| c.0).unwrap_or(0);
        tx_total[p.a as usize] += rx_of(&p.va);
        tx_total[p.b as usize] += rx_of(&p.vb);
    }
    // A last poll for the final piece counts.
    if let Some(id) = &bundle_id {
        if let Some((_, h)) = poller.take() {
            let _ = h.join();
        }
        let polled = poll_bundles(&opts.mule, &data_dirs);
        for v in 0..n {
            if let Some(r) = polled[v].iter().find(|r| &r.id == id) {
                rows[v] = r.clone();
            }
        }
    }

    // Teardown.
    let td0 = Instant::now();
    let killed = topo.teardown();
    drop(topo);
    let teardown_s = td0.elapsed().as_secs_f64();

    // Results.
    let pub_real = published_real.unwrap_or(real_end);
    let nodes: Vec<NodeResult> = (0..n)
        .map(|v| {
            let creal = complete_real[v].map(|c| c.saturating_sub(pub_real).as_secs_f64());
            NodeResult {
                node: v as NodeIx,
                in_audience: audience[v],
                origin: v as NodeIx == origin,
                complete_s: creal.map(|r| r * k),
                complete_real_s: creal,
                identical: identical[v],
                pieces_have: rows[v].pieces_have,
                pieces_total: rows[v].pieces_total,
                state: rows[v].state.clone(),
                tx_bytes: per_node_tx[v],
                rx_bytes: per_node_rx[v],
                tx_bytes_total: tx_total[v],
            }
        })
        .collect();
    let outcome = Outcome {
        strategy: STRATEGY.to_owned(),
        nodes: nodes
            .iter()
            .map(|r| {
                let v = r.node as usize;
                NodeStats {
                    complete_at: if v as NodeIx == origin {
                        Some(publish_at)
                    } else {
                        r.complete_s.map(|c| publish_at + c)
                    },
                    bytes_sent: r.tx_bytes,
                    bytes_recv: r.rx_bytes,
                    pieces_new: if v as NodeIx == origin {
                        0
                    } else {
                        r.pieces_have
                    },
                    useful_from_origin: rx_from_origin[v],
                    useful_from_others: r.rx_bytes.saturating_sub(rx_from_origin[v]),
                    // Not observable from outside the daemons (see the module docs): pieces
                    // sent, duplicates, rejections, refusals stay zero.
                    ..NodeStats::default()
                }
            })
            .collect(),
        contacts: uses,
        events: replayed as u64,
    };
    let oracle = Oracle::compute(&trace, origin, publish_at, scenario.bundle, eff_rate);
    let name = opts
        .trace
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = name
        .trim_end_matches(".csv")
        .trim_end_matches(".txt")
        .trim_end_matches(".one")
        .to_owned();
    let notes = vec![
        format!(
            "Emulation: one real `mule` daemon per network namespace, one bridge and veth pair per \
             node pair, contacts switched silently (bridge detach, carrier stays up); links shaped \
             with tc tbf at {} per contact direction on the wire.",
            opts.rate
        ),
        format!(
            "Time compressed by K = {k}: a contact of d trace seconds lasted d/K real seconds, so in \
             trace time each contact direction carried at most {} (wire rate ÷ K); the oracle uses \
             that effective rate. {} of {} contacts lasted under one real second. Discovery and \
             session set-up take about 0.2-1 s of real time, i.e. K times that in trace time, \
             which the oracle does not pay: at large K short contacts carry little and the first \
             completions lag the bound.",
            eff_rate,
            under_1s,
            trace.contacts.len()
        ),
        format!(
            "Contacts shorter than {} s were extended to {} s (not dropped); overlapping contacts \
             of a pair were merged.",
            trace.min_contact, trace.min_contact
        ),
        "Bytes are interface counters during contacts (beacons, handshakes, summaries, pieces, \
         TCP/IP headers); the daemons expose no per-piece duplicate or per-sender counts, so \
         duplicates are 0 and offload is a share of bytes on the wire, not of payload."
            .to_owned(),
    ];
    let info = RunInfo {
        trace: name,
        nodes: trace.nodes,
        contacts: trace.contacts.len(),
        start_s: trace.start,
        duration_s: trace.duration(),
        min_contact_s: trace.min_contact,
        contacts_extended: trace.stats.extended,
        scenario,
        audience_spec: opts.audience.to_string(),
        prediction: true,
        notes,
    };
    let report = Report::build(info, oracle, vec![outcome]);
    let mut rep = EmulateReport {
        finish,
        nodes,
        real_s: real_end.as_secs_f64(),
        published_real_s: published_real.map(|d| d.as_secs_f64()),
        bundle_id,
        publish_command_s: publish_cmd_s,
        rate_bytes_per_s: opts.rate.bytes_per_s(),
        time_scale: k,
        effective_rate_bytes_per_s: eff_rate.bytes_per_s(),
        pairs: pair_list.len(),
        contacts_replayed: replayed,
        contacts_under_1s_real: under_1s,
        max_switch_lag_s: max_lag,
        setup_s,
        teardown_s,
        killed_after_sigterm: killed.iter().map(|&v| v as NodeIx).collect(),
        namespaces,
        daemon_pids,
        files: Vec::new(),
        warnings: Vec::new(),
        report: None,
    };
    write_all(&mut rep, &report, &trace, &out)?;
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

/// The exported file of the (single) published bundle, if the daemon has written it.
fn exported_file(data_dir: &Path) -> Option<PathBuf> {
    let dir = std::fs::read_dir(data_dir.join("export")).ok()?;
    dir.filter_map(Result::ok)
        .find(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
}

/// `mule bundles --json` on every node, concurrently. A node whose command fails gets an
/// empty list (progress is best effort; completion comes from the export directory).
fn poll_bundles(mule: &Path, data_dirs: &[PathBuf]) -> Vec<Vec<BundleRow>> {
    let children: Vec<Option<Child>> = data_dirs
        .iter()
        .map(|d| {
            Command::new(mule)
                .args(["bundles", "--json", "--data-dir"])
                .arg(d)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .ok()
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            c.and_then(|c| c.wait_with_output().ok())
                .filter(|o| o.status.success())
                .and_then(|o| serde_json::from_slice::<Vec<BundleRow>>(&o.stdout).ok())
                .unwrap_or_default()
        })
        .collect()
}

/// Writes the shared report files (results.json, nodes.csv, contacts.csv), plots, and the
/// emulation's own files (emulation.json, emulation_nodes.csv, summary.md).
fn write_all(
    rep: &mut EmulateReport,
    report: &Report,
    trace: &Trace,
    out: &Path,
) -> Result<(), EmulateError> {
    report.write(out, trace)?;
    rep.warnings = crate::plot::write_all(report, trace, out)?;
    let p = out.join("emulation_nodes.csv");
    std::fs::write(&p, nodes_csv(&rep.nodes)).map_err(io_err(&p))?;
    let p = out.join("summary.md");
    std::fs::write(&p, markdown(rep, report)).map_err(io_err(&p))?;
    let mut files: Vec<String> = [
        "results.json",
        "nodes.csv",
        "contacts.csv",
        "summary.md",
        "emulation.json",
        "emulation_nodes.csv",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for name in crate::plot::PLOTS {
        for ext in ["svg", "png"] {
            let f = format!("{name}.{ext}");
            if out.join(&f).is_file() {
                files.push(f);
            }
        }
    }
    rep.files = files;
    let p = out.join("emulation.json");
    let json = serde_json::to_string_pretty(rep).expect("report serialises");
    std::fs::write(&p, json).map_err(io_err(&p))?;
    Ok(())
}

/// Per-node CSV of the emulation.
fn nodes_csv(nodes: &[NodeResult]) -> String {
    let mut s = String::from(
        "node,in_audience,origin,complete_s,complete_real_s,identical,pieces_have,pieces_total,state,tx_bytes,rx_bytes,tx_bytes_total\n",
    );
    let opt = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_default();
    for r in nodes {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{}",
            r.node,
            r.in_audience,
            r.origin,
            opt(r.complete_s),
            opt(r.complete_real_s),
            r.identical.map(|b| b.to_string()).unwrap_or_default(),
            r.pieces_have,
            r.pieces_total,
            r.state,
            r.tx_bytes,
            r.rx_bytes,
            r.tx_bytes_total
        );
    }
    s
}

/// The Markdown summary: emulation parameters and per-node table, then the shared report's
/// headline table and notes.
fn markdown(rep: &EmulateReport, report: &Report) -> String {
    let mut s = String::new();
    let i = &report.info;
    let _ = writeln!(s, "# Mule emulation: {}\n", i.trace);
    let _ = writeln!(
        s,
        "{} nodes (one `mule` daemon each, in its own network namespace), {} pairs; trace of {} \
         with {} contacts, replayed at time scale K = {} until trace t = {} ({} contacts switched \
         up) in {:.1} s real; finished: **{:?}**.\n",
        i.nodes,
        rep.pairs,
        fmt_secs(i.duration_s),
        i.contacts,
        rep.time_scale,
        fmt_secs(rep.real_s * rep.time_scale),
        rep.contacts_replayed,
        rep.real_s,
        rep.finish
    );
    let _ = writeln!(
        s,
        "**Link rate** {} per contact direction on the wire (tc tbf), i.e. **{} in trace time** \
         (rate ÷ K): a contact of d trace seconds could carry at most rate × d ÷ K bytes. To \
         give contacts the bytes they would carry in reality at rate r, run with rate = r × K.\n",
        Rate(rep.rate_bytes_per_s),
        Rate(rep.effective_rate_bytes_per_s)
    );
    let _ = writeln!(
        s,
        "**Minimum contact length {} s** ({} contacts extended to it). {} contacts lasted under \
         one real second after compression. Largest contact-switch lag: {:.3} s real. Setup \
         {:.1} s, teardown {:.1} s; daemons killed after ignoring SIGTERM for 5 s: {:?}.\n",
        i.min_contact_s,
        i.contacts_extended,
        rep.contacts_under_1s_real,
        rep.max_switch_lag_s,
        rep.setup_s,
        rep.teardown_s,
        rep.killed_after_sigterm
    );
    let _ = writeln!(
        s,
        "Bundle {} published at node {} at trace t = {} (`mule publish` took {:.2} s real); \
         audience {} ({} nodes); {}/{} audience nodes completed with a byte-identical export.\n",
        Size(i.scenario.bundle),
        i.scenario.origin,
        fmt_secs(i.scenario.publish_at),
        rep.publish_command_s,
        i.audience_spec,
        rep.audience(),
        rep.completed_identical(),
        rep.audience()
    );
    s.push_str(
        "| node | audience | complete (trace) | complete (real) | identical | pieces | sent | received |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in &rep.nodes {
        let _ = writeln!(
            s,
            "| {}{} | {} | {} | {} | {} | {}/{} | {} | {} |",
            r.node,
            if r.origin { " (origin)" } else { "" },
            if r.in_audience { "yes" } else { "no" },
            r.complete_s.map(fmt_secs).unwrap_or_else(|| "–".into()),
            r.complete_real_s
                .map(|x| format!("{x:.1} s"))
                .unwrap_or_else(|| "–".into()),
            match r.identical {
                Some(true) => "yes",
                Some(false) => "**NO**",
                None => "–",
            },
            r.pieces_have,
            r.pieces_total,
            Size(r.tx_bytes),
            Size(r.rx_bytes)
        );
    }
    s.push_str("\n## Headline (trace time, from publishing)\n\n");
    s.push_str(&report.headline_table());
    s.push('\n');
    for n in &i.notes {
        let _ = writeln!(s, "- {n}");
    }
    s.push_str(
        "\nPlots: completion.svg, completion_cdf.svg, bytes_per_node.svg, \
         contact_utilisation.svg (and .png when a font is available).\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_addresses_are_distinct_slash30s() {
        assert_eq!(pair_addr(0, 0), "10.200.0.1/30");
        assert_eq!(pair_addr(0, 1), "10.200.0.2/30");
        assert_eq!(pair_addr(1, 0), "10.200.0.5/30");
        assert_eq!(pair_addr(64, 1), "10.200.1.2/30");
        assert_eq!(pair_addr(MAX_PAIRS - 1, 1), "10.200.63.254/30");
    }

    #[test]
    fn creator_pids_try_every_split() {
        let name = mule_netns::unique_name(PREFIX);
        let rest = name.strip_prefix("mnmtb").unwrap();
        assert!(creator_pids(rest).contains(&std::process::id()), "{name}");
        // pid 1221 is "xx" in base 36: candidates "x" (33) and "xx" (1221).
        assert_eq!(creator_pids("xxx0"), vec![33, 1221]);
        assert!(creator_pids("").is_empty());
    }

    #[test]
    fn tc_strings() {
        let r: Rate = "8mbit".parse().unwrap();
        assert_eq!(tc_rate(r), "8000000bit");
        assert_eq!(tc_burst(r), "16384b");
        let r: Rate = "1gbit".parse().unwrap();
        assert_eq!(tc_burst(r), "1250000b");
    }

    #[test]
    fn parses_link_counters_of_many_interfaces() {
        let text = "1: lo: <LOOPBACK> mtu 65536 qdisc noop state DOWN\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\\    RX:  bytes packets errors dropped  missed   mcast\\             0       0      0       0       0       0\\    TX:  bytes packets errors dropped carrier collsns\\             0       0      0       0       0       0\n\
                    7: mns1x2@if6: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500\\    link/ether aa:bb:cc:dd:ee:ff\\    RX:  bytes packets errors dropped  missed   mcast\\          4242      10      0       0       0       3\\    TX:  bytes packets errors dropped carrier collsns\\           777      20      0       0       0       0\n";
        let m = parse_link_counters(text);
        assert_eq!(m["lo"], (0, 0));
        assert_eq!(m["mns1x2"], (4242, 777));
        assert_eq!(m.len(), 2);
    }

    /// The public key of RFC 8032's first test vector (a valid ed25519 point).
    const RFC8032_KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    #[test]
    fn node_config_is_valid_for_the_daemon() {
        let text = node_config(true, RFC8032_KEY, 256 << 20);
        let cfg = mule_config::Config::from_toml_str(&text, "generated");
        assert!(cfg.is_ok(), "{cfg:?}\n{text}");
        let text = node_config(false, RFC8032_KEY, 0);
        assert!(
            mule_config::Config::from_toml_str(&text, "generated").is_ok(),
            "{text}"
        );
    }

    #[test]
    fn progress_line_shows_the_bar_and_counts() {
        let p = Progress {
            real_s: 3.0,
            trace_s: 30.0,
            trace_len_s: 60.0,
            published: true,
            contacts_up: 2,
            complete: 2,
            audience: 4,
            pieces_have: 40,
            pieces_total: 64,
        };
        let l = p.line();
        assert!(l.starts_with("[##########----------] 2/4 complete"), "{l}");
        assert!(l.contains("(50%)"), "{l}");
    }
}
