//! Shared helpers of the `hostile` and `cli` integration tests: real `mule` daemons on
//! loopback (no discovery), the CLI run against their data directories, and a scripted
//! protocol peer built on the sans-IO [`Session`].
//!
//! Every daemon is a child process this test started; [`Node`]'s `Drop` kills it by its own
//! handle (never by name) so a panicking test leaves nothing behind.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use mule_bundle::{PublishOptions, VerifiedManifest};
use mule_contacts::NodeId;
use mule_engine::RarityTracker;
use mule_engine::claims::PieceClaims;
use mule_engine::frame::{self, ByeCode, Message};
use mule_engine::scheduler::BundleMeta;
use mule_engine::session::{
    CloseReason, Event, LocalBundle, LocalView, Role, Session, SessionConfig, SessionSeed,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The `mule` binary under test.
pub fn mule_bin() -> &'static str {
    env!("CARGO_BIN_EXE_mule")
}

/// 32 random bytes from the OS.
pub fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("OS randomness");
    b
}

/// A fresh ed25519 key.
pub fn fresh_key() -> SigningKey {
    SigningKey::from_bytes(&random32())
}

/// Deterministic pseudo-random content of `len` bytes (differs per `seed`).
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut ctr = 0u64;
    while out.len() < len {
        let mut h = blake3::Hasher::new();
        h.update(&seed.to_le_bytes());
        h.update(&ctr.to_le_bytes());
        out.extend_from_slice(h.finalize().as_bytes());
        ctr += 1;
    }
    out.truncate(len);
    out
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Settings of a test node's config file.
#[derive(Debug, Clone, Default)]
pub struct NodeConfig {
    /// Trusted publisher keys (hex).
    pub publishers: Vec<String>,
    /// Subscribed channels.
    pub channels: Vec<String>,
    /// Static peers to dial (`addr:port`).
    pub peers: Vec<String>,
    /// Extra raw lines for the `[session]` table (e.g. `max_sessions = 4`).
    pub session_extra: Vec<String>,
    /// Serve Prometheus metrics on this loopback port.
    pub metrics_port: Option<u16>,
    /// Extra raw lines for the `[store]` table (e.g. `on_complete = [...]`).
    pub store_extra: Vec<String>,
    /// Raw TOML appended at the end (whole tables, e.g. `[media]\npaths = [...]`).
    pub tail: String,
}

impl NodeConfig {
    /// A node trusting `publisher` and subscribed to `fw`.
    pub fn fw(publisher: &str) -> Self {
        NodeConfig {
            publishers: vec![publisher.to_string()],
            channels: vec!["fw".into()],
            ..NodeConfig::default()
        }
    }

    /// The TOML text: loopback only, no discovery.
    pub fn toml(&self) -> String {
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "[discovery]\nbeacons = false\nmdns = false\nbluetooth = false\n\n\
             [session]\nlisten = [\"127.0.0.1:0\"]\npeers = [{}]\n{}\n\
             [trust]\npublishers = [{}]\n\n\
             [subscriptions]\nchannels = [{}]\n\n\
             {}\
             [log]\nlevel = \"info\"\n{}",
            list(&self.peers),
            self.session_extra.join("\n"),
            list(&self.publishers),
            list(&self.channels),
            if self.store_extra.is_empty() {
                String::new()
            } else {
                format!("[store]\n{}\n\n", self.store_extra.join("\n"))
            },
            match self.metrics_port {
                Some(p) => format!("\n[metrics]\nenabled = true\nlisten = \"127.0.0.1:{p}\"\n"),
                None => String::new(),
            }
        ) + "\n"
            + &self.tail
    }
}

/// A loopback TCP port that was free a moment ago (for endpoints whose port must be
/// configured up front, such as metrics).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET /metrics` from `127.0.0.1:port`: the exposition text.
pub fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    assert!(text.starts_with("HTTP/1.1 200"), "metrics answer: {text}");
    text
}

/// The value of one sample (`name{labels}` exactly as exposed) in a scrape, if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A data directory with a config file, and possibly a running daemon on it.
pub struct Node {
    /// Temporary directory holding everything (removed on drop).
    pub tmp: tempfile::TempDir,
    /// The data directory.
    pub data: PathBuf,
    /// The config file.
    pub config: PathBuf,
    /// The daemon's stderr (its logs), appended across restarts.
    pub log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// A stopped node with `cfg` written to its config file.
    pub fn new(cfg: &NodeConfig) -> Node {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let config = tmp.path().join("mule.toml");
        std::fs::write(&config, cfg.toml()).expect("writing config");
        let log = tmp.path().join("daemon.log");
        Node {
            tmp,
            data,
            config,
            log,
            child: None,
        }
    }

    /// Replaces the config file (takes effect at the next start).
    pub fn set_config(&self, cfg: &NodeConfig) {
        std::fs::write(&self.config, cfg.toml()).expect("writing config");
    }

    /// Starts `mule run` and waits until its control socket answers `status`.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = self.spawn_run();
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!(
                    "daemon exited at start with {st}; log:\n{}",
                    self.log_text()
                );
            }
            let out = self.mule(&["status", "--json"]);
            if out.status.success() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "daemon did not answer status within 20 s; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A node with `cfg`, started (see [`Node::start`]).
    pub fn started(cfg: &NodeConfig) -> Node {
        let mut n = Node::new(cfg);
        n.start();
        n
    }

    /// Publishes `data`, written to `file` in the node's directory, as version 1 of bundle
    /// `name` for channel `fw`, signed with the key file `key`, with `extra` CLI arguments;
    /// returns the bundle id.
    pub fn publish(
        &self,
        key: &Path,
        name: &str,
        file: &str,
        data: &[u8],
        extra: &[&str],
    ) -> String {
        let file = self.path(file);
        std::fs::write(&file, data).expect("write content");
        let mut args = vec![
            "publish",
            file.to_str().expect("path"),
            "--name",
            name,
            "--version",
            "1",
            "--key",
            key.to_str().expect("path"),
            "--audience",
            "fw",
        ];
        args.extend_from_slice(extra);
        self.ok(&args).trim().to_string()
    }

    /// Spawns `mule run` on this node's data directory without waiting (logs to `log`).
    pub fn spawn_run(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        Command::new(mule_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("run")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning mule run")
    }

    /// Whether the daemon process is still alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops the daemon with SIGTERM and waits for it (kills it after 15 s).
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SAFETY: plain kill(2) on the pid of a child this test spawned and has not reaped.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                assert!(
                    st.success(),
                    "daemon exited with {st} after SIGTERM; log:\n{}",
                    self.log_text()
                );
                return;
            }
            if Instant::now() > end {
                let _ = c.kill();
                let _ = c.wait();
                panic!("daemon did not exit within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `mule --config C --data-dir D ARGS…`.
    pub fn mule(&self, args: &[&str]) -> Output {
        Command::new(mule_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("running mule")
    }

    /// Runs a verb that must succeed and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.mule(args);
        assert!(
            out.status.success(),
            "mule {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs a verb with `--json` appended and parses its stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.ok(&a);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("mule {a:?} printed invalid JSON ({e}):\n{text}"))
    }

    /// `mule status --json`.
    pub fn status(&self) -> Value {
        self.json(&["status"])
    }

    /// The first session listen address of the running daemon.
    pub fn listen(&self) -> std::net::SocketAddr {
        let st = self.status();
        let l = st["listen"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("status has no listen address: {st}"));
        l.parse().expect("listen address parses")
    }

    /// `mule bundles --json` as (id → bundle object).
    pub fn bundles(&self) -> Vec<Value> {
        self.json(&["bundles"])
            .as_array()
            .cloned()
            .expect("bundles --json is an array")
    }

    /// The bundle `id` from `mule bundles --json`, if present.
    pub fn bundle(&self, id: &str) -> Option<Value> {
        self.bundles().into_iter().find(|b| b["id"] == id)
    }

    /// Pieces held of bundle `id` (0 if absent).
    pub fn pieces_have(&self, id: &str) -> u64 {
        self.bundle(id)
            .and_then(|b| b["pieces_have"].as_u64())
            .unwrap_or(0)
    }

    /// Exports bundle `id` and returns its bytes.
    pub fn export(&self, id: &str) -> Vec<u8> {
        let out = self
            .tmp
            .path()
            .join(format!("export-{}-{}", &id[..12], random32()[0]));
        self.ok(&["export", id, "--out", out.to_str().expect("utf-8 path")]);
        let bytes = std::fs::read(&out).expect("reading the export");
        let _ = std::fs::remove_file(&out);
        bytes
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A path inside this node's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A child process killed (by its own handle) and reaped when dropped, so a failing test
/// leaves nothing running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Publishes `data` as `name` `version` for channel `fw` into `node` (through its daemon
/// when one runs) with 16 KiB pieces and the `extra` flags; returns the printed bundle id.
pub fn publish(
    node: &Node,
    key: &Path,
    name: &str,
    version: &str,
    data: &[u8],
    extra: &[&str],
) -> String {
    let file = node.path(&format!("{name}-{version}.bin"));
    std::fs::write(&file, data).expect("write content");
    let mut args = vec![
        "publish",
        file.to_str().expect("path"),
        "--name",
        name,
        "--version",
        version,
        "--key",
        key.to_str().expect("path"),
        "--audience",
        "fw",
        "--piece-size",
        "16384",
    ];
    args.extend_from_slice(extra);
    node.ok(&args).trim().to_string()
}

/// A publisher key written to `dir/name` (mode 0600), and its public hex.
pub fn publisher_key(dir: &Path, name: &str) -> (SigningKey, PathBuf, String) {
    let key = mule_bundle::keys::generate().expect("key");
    let path = dir.join(name);
    mule_bundle::keys::write_key_file(&path, &key).expect("writing key");
    let hex = mule_bundle::keys::public_hex(&key);
    (key, path, hex)
}

/// A bundle made in the test: its verified manifest and content.
#[derive(Clone)]
pub struct TestBundle {
    /// The signed manifest.
    pub vm: VerifiedManifest,
    /// The content.
    pub data: Vec<u8>,
}

impl TestBundle {
    /// Signs `data` as bundle `name` for channel `channel` with `key`, in pieces of `piece_size`.
    pub fn new(
        key: &SigningKey,
        name: &str,
        channel: &str,
        data: Vec<u8>,
        piece_size: u32,
    ) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let mut opts = PublishOptions::new(name, "1.0", now);
        opts.audience = vec![channel.to_string()];
        opts.piece_size = piece_size;
        opts.expires = Some(now + 86_400);
        let vm = mule_bundle::publish(&data[..], &opts, key).expect("publishing");
        TestBundle { vm, data }
    }

    /// The bundle id in hex.
    pub fn id(&self) -> String {
        self.vm.id().to_string()
    }

    /// Piece `i`'s data.
    pub fn piece(&self, i: u32) -> &[u8] {
        let size = self.vm.manifest().piece_size as usize;
        let start = i as usize * size;
        let end = (start + size).min(self.data.len());
        &self.data[start..end]
    }

    /// The bundle as a session's local view sees it, with the pieces in `have`.
    pub fn local(&self, have: impl IntoIterator<Item = u32>) -> LocalBundle {
        let m = self.vm.manifest();
        let meta = BundleMeta {
            id: self.vm.id(),
            priority: m.priority,
            deps: m.dependencies.clone(),
            channel: m.audience.first().cloned().unwrap_or_default(),
            audience: Vec::new(),
            pieces: self.vm.piece_count(),
            piece_size: m.piece_size,
            len: m.content_len,
            release: m
                .is_numbered()
                .then(|| (m.release_lineage().id(), m.release)),
            replaces: m.lineage.clone(),
            publisher: m.publisher,
        };
        let mut bits = mule_engine::Bitfield::new(self.vm.piece_count());
        for i in have {
            bits.set(i);
        }
        LocalBundle {
            meta,
            have: bits,
            manifest: Arc::from(self.vm.as_bytes()),
        }
    }
}

/// Reads every frame the peer sends until it closes the connection (or `timeout`); returns
/// the decoded messages, whether the connection ended (EOF/reset) and how long that took.
/// Undecodable input is returned as far as it decoded.
pub async fn read_until_closed(
    stream: &mut TcpStream,
    timeout: Duration,
) -> (Vec<Message>, bool, Duration) {
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut msgs = Vec::new();
    let closed = loop {
        let left = timeout.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let mut rest = &buf[..];
    while let Ok(Some((m, used))) = frame::decode_frame(rest) {
        msgs.push(m);
        rest = &rest[used..];
    }
    (msgs, closed, start.elapsed())
}

/// The code of the last `Bye` among `msgs`, if any.
pub fn bye_code(msgs: &[Message]) -> Option<ByeCode> {
    msgs.iter().rev().find_map(|m| match m {
        Message::Bye { code, .. } => Some(*code),
        _ => None,
    })
}

/// A protocol peer driven by a real [`Session`] over TCP, which the test can also use to
/// write hand-made frames between the session's own.
pub struct Peer {
    /// The session state machine.
    pub session: Session,
    /// The connection.
    pub stream: TcpStream,
    /// Events drained so far and not yet taken by the test.
    pub events: Vec<Event>,
    /// Set once the session reported `Closed`.
    pub closed: Option<CloseReason>,
    /// Set once the transport reached EOF.
    pub eof: bool,
    claims: PieceClaims,
    rarity: RarityTracker,
    origin: Instant,
    buf: Vec<u8>,
}

impl Peer {
    /// Connects to `addr` as node `key` holding `bundles`, subscribed to `channels`.
    pub async fn connect(
        addr: std::net::SocketAddr,
        key: SigningKey,
        bundles: Vec<LocalBundle>,
        channels: Vec<String>,
    ) -> Peer {
        let stream = TcpStream::connect(addr).await.expect("connect to daemon");
        stream.set_nodelay(true).expect("nodelay");
        let mut view = LocalView {
            channels,
            carry_quota_bytes: 1 << 30,
            ..LocalView::default()
        };
        for b in bundles {
            view.bundles.insert(b.meta.id, b);
        }
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&random32()[..16]);
        let seed = SessionSeed {
            challenge: random32(),
            salt,
        };
        let session = Session::new(
            SessionConfig::default(),
            key,
            Role::Initiator,
            0,
            seed,
            view,
        );
        Peer {
            session,
            stream,
            events: Vec::new(),
            closed: None,
            eof: false,
            claims: PieceClaims::new(),
            rarity: RarityTracker::new(32),
            origin: Instant::now(),
            buf: vec![0u8; 256 * 1024],
        }
    }

    /// Our node id.
    pub fn id(&self) -> NodeId {
        self.session.local_id()
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Writes whatever the session has to send.
    pub async fn flush(&mut self) {
        self.session.plan_requests(&mut self.claims, &self.rarity);
        while let Some(ev) = self.session.poll_event() {
            if let Event::Closed { reason, .. } = &ev {
                self.closed = Some(reason.clone());
            }
            self.events.push(ev);
        }
        while let Some(bytes) = self.session.poll_transmit() {
            if self.stream.write_all(&bytes).await.is_err() {
                self.eof = true;
                return;
            }
        }
    }

    /// Writes raw bytes (e.g. a hand-made frame) to the connection.
    pub async fn inject(&mut self, bytes: &[u8]) {
        self.flush().await;
        let _ = self.stream.write_all(bytes).await;
    }

    /// Writes a message encoded with the engine's own encoder, bypassing the session.
    pub async fn inject_message(&mut self, msg: &Message) {
        let mut out = Vec::new();
        msg.encode(&mut out);
        self.inject(&out).await;
    }

    /// One round: flush, then wait up to 50 ms for input or a timer.
    pub async fn step(&mut self) {
        self.flush().await;
        if self.eof {
            return;
        }
        let wait = match self.session.poll_timeout() {
            Some(t) => Duration::from_millis(t.saturating_sub(self.now()).min(50)),
            None => Duration::from_millis(50),
        };
        match tokio::time::timeout(wait, self.stream.read(&mut self.buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                let now = self.now();
                self.session.handle_transport_closed(now);
            }
            Ok(Ok(n)) => {
                let now = self.now();
                let bytes = self.buf[..n].to_vec();
                self.session.handle_bytes(now, &bytes);
            }
            Err(_) => {
                let now = self.now();
                self.session.handle_timeout(now);
            }
        }
        self.flush().await;
    }

    /// Steps until `f` picks something out of the drained events (removing it), or panics
    /// after `timeout`. The session ending counts as failure unless `f` accepts `Closed`.
    pub async fn until<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Event) -> Option<T>,
    ) -> T {
        let end = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.events.iter().position(|e| f(e).is_some()) {
                let ev = self.events.remove(pos);
                return f(&ev).expect("matched above");
            }
            assert!(
                self.closed.is_none() && !self.eof,
                "session ended ({:?}, eof {}) while waiting for {what}",
                self.closed,
                self.eof
            );
            assert!(Instant::now() < end, "timed out waiting for {what}");
            self.step().await;
        }
    }

    /// Steps until the session is closed and the connection ended (or `timeout`); returns
    /// the close reason.
    pub async fn until_closed(&mut self, timeout: Duration) -> CloseReason {
        let end = Instant::now() + timeout;
        while !(self.closed.is_some() && self.eof) {
            assert!(
                Instant::now() < end,
                "session not closed within {timeout:?} (closed {:?}, eof {})",
                self.closed,
                self.eof
            );
            if self.closed.is_some() {
                // Our side is done; just wait for the daemon to drop the connection.
                match tokio::time::timeout(
                    Duration::from_millis(50),
                    self.stream.read(&mut self.buf),
                )
                .await
                {
                    Ok(Ok(0)) | Ok(Err(_)) => self.eof = true,
                    _ => {}
                }
            } else {
                self.step().await;
            }
        }
        self.closed.clone().expect("closed")
    }

    /// Completes the handshake and waits for the daemon's summary.
    pub async fn handshake(&mut self) {
        self.until("the daemon's summary", Duration::from_secs(10), |e| {
            matches!(e, Event::SummaryReceived { .. }).then_some(())
        })
        .await;
        self.flush().await;
    }
}
