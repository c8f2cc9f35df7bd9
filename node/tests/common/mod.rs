//! Shared helpers for the daemon's integration tests (`node/tests/*.rs`) and the transfer
//! benchmark (`node/benches/transfer.rs`, which includes this file by path).
//!
//! - [`Node`]: one real `mule run` process, on loopback or inside a network namespace, with a
//!   generated configuration ([`NodeConfig`]) and its own temporary data directory. It is
//!   killed when dropped; on panic the tail of its log is printed first.
//! - [`Node::status`] / [`Node::bundle`] talk to the daemon over its control socket
//!   (`DATA_DIR/mule.sock`, the same protocol the CLI uses), cheap enough to poll every 10 ms.
//!   Publishing and key generation go through the real CLI.
//! - [`Lan`] / [`Host`]: a bridge in a switch namespace and one namespace per node with a veth
//!   link that can be attached (contact) and detached silently (`nomaster`: the carrier stays
//!   up, as when a vehicle drives out of Wi-Fi range), shaped with `tbf`, and whose interface
//!   counters are the ground truth for bytes on the link.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mule::control::{Client, Request, Response};
use mule::view::{Bundle, Status};
#[allow(unused_imports)]
pub use mule_netns::{Bridge, Counters, Netns, Veth, assert_root, require_root};

/// The `mule` binary cargo built for these tests (or the benchmark).
pub fn mule_bin() -> &'static str {
    env!("CARGO_BIN_EXE_mule")
}

/// Link rate of the shaped netns links (tc units: 8 000 000 bit/s).
pub const RATE: &str = "8mbit";
/// Link rate in bytes per second, matching [`RATE`].
pub const RATE_BYTES_PER_S: f64 = 1_000_000.0;
/// Token bucket size (32 KiB: a few frames at line rate after an idle moment).
///
/// Accounting note: `tbf` charges a GSO packet for all its segments' headers, so the rate is
/// the real wire rate. The veth byte counters, however, count a GSO packet (TCP sends 2–3
/// segments per packet at 8 Mbit/s) with one set of headers, so "bytes on the link" from the
/// counters is a little below what an MTU-1500 radio would carry (each 1448-byte segment costs
/// 66 bytes of Ethernet/IP/TCP header there). The tests use the counters as the issue asks.
pub const BURST: &str = "32kb";
/// Most time a packet may wait in the token bucket queue: 1 s, about 1 MB at 8 Mbit/s. This
/// models an ordinary device queue (Linux's default `txqueuelen` of 1000 full frames holds
/// 1.5 s at this rate; Wi-Fi drivers buffer similarly). With a shallow 100 ms queue, the
/// kernel's default congestion control here (BBR) overshoots in start-up, the sender's own qdisc
/// drops, and retransmission timeouts resend segments that were only queued: the receiver then
/// counts up to 5 % duplicate TCP segments, an artefact of the emulated link, not of Mule.
/// `MULE_TEST_TBF_LATENCY` overrides it (e.g. `100ms`) for experiments.
pub const LATENCY: &str = "1000ms";

/// Per-process counter for subnets.
static SUBNET: AtomicU32 = AtomicU32::new(0);

/// Settings that differ between test nodes; everything else is the shipped default.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `session.listen`.
    pub listen: String,
    /// `session.peers`.
    pub peers: Vec<String>,
    /// `discovery.beacons` (mDNS and Bluetooth are always off in tests).
    pub beacons: bool,
    /// `discovery.beacon_interval_max_ms`, if not the default.
    pub beacon_interval_max_ms: Option<u64>,
    /// `subscriptions.channels`.
    pub channels: Vec<String>,
    /// `trust.publishers` (hex public keys).
    pub publishers: Vec<String>,
    /// `log.level`.
    pub log_level: String,
}

impl NodeConfig {
    /// A node on loopback: no discovery (a test must only send to loopback), listens on an
    /// OS-chosen port of 127.0.0.1, dials `peers`.
    pub fn loopback(publisher: &str) -> NodeConfig {
        NodeConfig {
            listen: "127.0.0.1:0".into(),
            peers: Vec::new(),
            beacons: false,
            beacon_interval_max_ms: None,
            channels: Vec::new(),
            publishers: vec![publisher.to_string()],
            log_level: log_level(),
        }
    }

    /// A node inside its own network namespace: multicast beacons on every interface there
    /// (just its veth), IPv4 only, session port chosen by the OS.
    pub fn netns(publisher: &str) -> NodeConfig {
        NodeConfig {
            listen: "0.0.0.0:0".into(),
            beacons: true,
            ..NodeConfig::loopback(publisher)
        }
    }

    /// Subscribes to `channel`.
    pub fn subscribe(mut self, channel: &str) -> NodeConfig {
        self.channels.push(channel.to_string());
        self
    }

    /// The configuration file's text.
    pub fn to_toml(&self) -> String {
        let list = |v: &[String]| {
            let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
            format!("[{}]", items.join(", "))
        };
        let mut t = String::new();
        t += "[discovery]\nmdns = false\nbluetooth = false\nipv6 = false\n";
        t += &format!("beacons = {}\n", self.beacons);
        if let Some(ms) = self.beacon_interval_max_ms {
            t += &format!("beacon_interval_max_ms = {ms}\n");
        }
        t += &format!(
            "[session]\nlisten = [{:?}]\npeers = {}\n",
            self.listen,
            list(&self.peers)
        );
        t += &format!("[subscriptions]\nchannels = {}\n", list(&self.channels));
        t += &format!("[trust]\npublishers = {}\n", list(&self.publishers));
        t += &format!("[log]\nlevel = {:?}\nformat = \"plain\"\n", self.log_level);
        t
    }
}

/// `MULE_TEST_LOG` overrides the daemons' log level (e.g. `info,mule=debug`).
fn log_level() -> String {
    std::env::var("MULE_TEST_LOG").unwrap_or_else(|_| "info".into())
}

/// A publisher key made with `mule key gen`.
pub struct Publisher {
    _dir: tempfile::TempDir,
    /// The key file.
    pub key: PathBuf,
    /// Its public key in hex (what goes into `trust.publishers`).
    pub public_hex: String,
}

impl Publisher {
    /// Generates a fresh key through the CLI.
    pub fn new() -> Publisher {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join("publisher.key");
        let out = mule(&["key", "gen", "--out", key.to_str().expect("utf-8 path")]);
        let public_hex = out.trim().to_string();
        assert_eq!(
            public_hex.len(),
            64,
            "unexpected `mule key gen` output: {out:?}"
        );
        Publisher {
            _dir: dir,
            key,
            public_hex,
        }
    }
}

/// Runs the `mule` CLI and returns its stdout; a failure panics with its stderr.
pub fn mule(args: &[&str]) -> String {
    let out = Command::new(mule_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running mule");
    assert!(
        out.status.success(),
        "mule {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One `mule run` process with its own data directory; killed on drop.
pub struct Node {
    /// Name used in messages ("A", "B", ...).
    pub label: String,
    dir: tempfile::TempDir,
    ns: Option<String>,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
}

impl Node {
    /// Starts a node (in namespace `ns`, or on the host when `None`) and waits until its
    /// control socket answers.
    pub fn start(label: &str, cfg: &NodeConfig, ns: Option<&Netns>) -> Node {
        let dir = tempfile::Builder::new()
            .prefix(&format!("mule-test-{label}-"))
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir(dir.path().join("data")).expect("data dir");
        std::fs::write(dir.path().join("mule.toml"), cfg.to_toml()).expect("config file");
        let mut node = Node {
            label: label.to_string(),
            dir,
            ns: ns.map(|n| n.name().to_string()),
            child: None,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            client: None,
        };
        node.spawn();
        node
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("mule.toml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    /// (Re)starts the daemon on the same data directory and waits for its control socket.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{}: already running", self.label);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut cmd = match &self.ns {
            // `ip netns exec` execs the program in place: the child's pid is mule's pid.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, mule_bin()]);
                c
            }
            None => Command::new(mule_bin()),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(self.config_path())
            .arg("--data-dir")
            .arg(self.data_dir())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        // If the test process dies without running its destructors (SIGKILL, a timeout), the
        // daemon must not outlive it.
        // SAFETY: prctl is async-signal-safe and touches only the child being set up.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("spawning mule run"));
        self.client = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.try_status().is_some() {
                return;
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{}: mule run exited during start-up ({st}):\n{}",
                    self.label,
                    self.log_tail(40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: control socket did not answer within 60 s:\n{}",
                self.label,
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGKILL (no chance to flush anything) and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.client = None;
    }

    /// SIGTERM and wait (at most `limit`) for a clean exit; returns the exit status, or
    /// panics (after SIGKILL) when the daemon does not stop in time.
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        self.client = None;
        // SAFETY: plain syscall on the pid of a child this helper spawned and has not reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "{}: did not exit within {limit:?} of SIGTERM:\n{}",
                    self.label,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident set size so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// The daemon's status, or `None` when it does not answer (yet).
    pub fn try_status(&mut self) -> Option<Status> {
        if self.client.is_none() {
            let dir = self.data_dir();
            self.client = self.rt.block_on(Client::connect(&dir)).ok();
        }
        let client = self.client.as_mut()?;
        let r = self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), client.call(&Request::Status)).await
        });
        match r {
            Ok(Ok(Response::Status(st))) => Some(*st),
            _ => {
                self.client = None;
                None
            }
        }
    }

    /// The daemon's status; panics when it does not answer.
    pub fn status(&mut self) -> Status {
        for _ in 0..3 {
            if let Some(s) = self.try_status() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{}: no answer on the control socket:\n{}",
            self.label,
            self.log_tail(40)
        )
    }

    /// One bundle's entry, if the node knows it.
    pub fn bundle(&mut self, id: &str) -> Option<Bundle> {
        self.status().bundles.into_iter().find(|b| b.id == id)
    }

    /// Pieces held of bundle `id` (0 when unknown).
    pub fn pieces_have(&mut self, id: &str) -> u32 {
        self.bundle(id).map_or(0, |b| b.pieces_have)
    }

    /// Publishes `file` through the CLI (into this running daemon) for channel `audience`;
    /// returns the bundle id.
    pub fn publish(&self, file: &Path, key: &Publisher, name: &str, audience: &str) -> String {
        let out = mule(&[
            "publish",
            file.to_str().expect("utf-8 path"),
            "--name",
            name,
            "--version",
            "1",
            "--key",
            key.key.to_str().expect("utf-8 path"),
            "--audience",
            audience,
            "--config",
            self.config_path().to_str().expect("utf-8 path"),
            "--data-dir",
            self.data_dir().to_str().expect("utf-8 path"),
        ]);
        let id = out.lines().last().unwrap_or("").trim().to_string();
        assert_eq!(id.len(), 64, "unexpected `mule publish` output: {out:?}");
        id
    }

    /// Polls every `every` until `done` holds for bundle `id` or `limit` passes; returns the
    /// last state seen and whether `done` held.
    pub fn wait_bundle(
        &mut self,
        id: &str,
        limit: Duration,
        every: Duration,
        mut done: impl FnMut(&Bundle) -> bool,
    ) -> (Option<Bundle>, bool) {
        let deadline = Instant::now() + limit;
        loop {
            let b = self.bundle(id);
            if b.as_ref().is_some_and(&mut done) {
                return (b, true);
            }
            if Instant::now() >= deadline {
                return (b, false);
            }
            std::thread::sleep(every);
        }
    }

    /// The file the node exported for bundle `id` (`DATA_DIR/export/NAME-VERSION-IDPREFIX`).
    pub fn exported(&self, id: &str) -> Option<PathBuf> {
        let dir = self.data_dir().join("export");
        let entries = std::fs::read_dir(&dir).ok()?;
        entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(&id[..8]) && !n.ends_with(".tmp"))
        })
    }

    /// Waits until the bundle is installed, then checks the exported file equals `original`.
    pub fn assert_exported_identical(&mut self, id: &str, original: &Path) {
        let (b, ok) = self.wait_bundle(
            id,
            Duration::from_secs(30),
            Duration::from_millis(100),
            |b| b.state == "installed",
        );
        assert!(
            ok,
            "{}: bundle not installed: {b:?}\n{}",
            self.label,
            self.log_tail(30)
        );
        let path = self
            .exported(id)
            .unwrap_or_else(|| panic!("{}: no exported file for {id}", self.label));
        assert!(
            files_equal(&path, original),
            "{}: {} differs from the published file",
            self.label,
            path.display()
        );
    }

    /// The last `n` lines of the daemon's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- log of node {} ({}) ----\n{}",
                self.label,
                self.data_dir().display(),
                self.log_tail(60)
            );
        }
    }
}

/// A `/proc/PID/status` field in KiB (0 when absent).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Writes `len` pseudo-random bytes (xorshift seeded from the clock and pid, printed so a
/// failure can be reproduced) to a new file in `dir`.
pub fn random_file(dir: &Path, name: &str, len: usize) -> PathBuf {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ u64::from(std::process::id()) << 32
        | 1;
    eprintln!("{name}: {len} random bytes, seed {seed:#x}");
    let mut x = seed;
    let path = dir.join(name);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).expect("write");
        left -= n;
    }
    f.flush().expect("flush");
    path
}

/// Byte-for-byte comparison of two files.
pub fn files_equal(a: &Path, b: &Path) -> bool {
    let (Ok(mut fa), Ok(mut fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

/// A switch namespace with a bridge: the "air" nodes meet in.
pub struct Lan {
    /// The bridge (dropped before its namespace).
    pub bridge: Bridge,
    /// The switch namespace.
    pub switch: Netns,
    /// Third and fourth octets' prefix: hosts get `10.<a>.<b>.<index>/24`.
    subnet: (u8, u8),
}

impl Lan {
    /// Creates the switch namespace and bridge (unique names; removed on drop).
    pub fn new() -> Lan {
        let switch = Netns::new("sw").expect("switch namespace");
        let bridge = Bridge::new_in(&switch, "br").expect("bridge");
        let n = SUBNET.fetch_add(1, Ordering::Relaxed);
        let subnet = (100 + (std::process::id() % 100) as u8, (n % 250) as u8);
        Lan {
            bridge,
            switch,
            subnet,
        }
    }

    /// A node namespace with a veth to the switch, **detached** (no contact yet).
    pub fn host(&self, label: &str, index: u8) -> Host {
        let ns = Netns::new(label).expect("node namespace");
        let ip = format!("10.{}.{}.{index}", self.subnet.0, self.subnet.1);
        let link = Veth::new(Some(&self.switch), &ns, &format!("{ip}/24")).expect("veth");
        Host { link, ns, ip }
    }
}

/// A node's namespace and its link to the [`Lan`].
pub struct Host {
    /// The link (switch end in the switch namespace, node end here).
    pub link: Veth,
    /// The namespace.
    pub ns: Netns,
    /// Its IPv4 address.
    pub ip: String,
}

impl Host {
    /// Shapes the node's egress to [`RATE`] with `tbf`.
    pub fn shape(&self) {
        let latency = std::env::var("MULE_TEST_TBF_LATENCY").unwrap_or_else(|_| LATENCY.into());
        self.link.shape(RATE, BURST, &latency).expect("tc tbf");
    }

    /// Contact: attach to the bridge.
    pub fn up(&self, lan: &Lan) {
        self.link.attach(&lan.bridge).expect("attach");
    }

    /// Silent cut: detach from the bridge (carrier stays up).
    pub fn cut(&self) {
        self.link.detach().expect("detach");
    }

    /// rx + tx bytes of the node end.
    pub fn link_bytes(&self) -> u64 {
        let c = self.link.node_counters().expect("counters");
        c.rx_bytes + c.tx_bytes
    }

    /// The node end's counters.
    pub fn counters(&self) -> Counters {
        self.link.node_counters().expect("counters")
    }
}
