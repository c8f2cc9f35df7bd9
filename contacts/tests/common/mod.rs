//! Shared helpers for the namespace tests and the discovery benchmark: a switch namespace
//! with a bridge, node namespaces linked to it, and `mule-discover` processes whose JSON
//! lines are collected with arrival times.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mule_netns::{Bridge, ChildGuard, Netns, Veth};

/// Path of the discovery tool built for this test run.
pub const DISCOVER: &str = env!("CARGO_BIN_EXE_mule-discover");

/// A bridge inside its own switch namespace.
pub struct Switch {
    pub bridge: Bridge,
    pub ns: Netns,
}

impl Switch {
    pub fn new() -> Switch {
        let ns = Netns::new("sw").expect("switch namespace");
        let bridge = Bridge::new_in(&ns, "br").expect("bridge");
        Switch { bridge, ns }
    }
}

/// A node namespace with one veth link to the switch (detached until attached).
pub struct Host {
    pub link: Veth,
    pub ns: Netns,
}

impl Host {
    pub fn new(sw: &Switch, i: u8) -> Host {
        let ns = Netns::new("n").expect("node namespace");
        let link = Veth::new(Some(&sw.ns), &ns, &format!("10.77.0.{i}/24")).expect("veth");
        Host { link, ns }
    }

    pub fn attach(&self, sw: &Switch) {
        self.link.attach(&sw.bridge).expect("attach");
    }
}

/// A running `mule-discover` and its output lines.
pub struct Node {
    pub id: String,
    pub lines: mpsc::Receiver<(Instant, serde_json::Value)>,
    pub seen: Vec<(Instant, serde_json::Value)>,
    pub pid: u32,
    _child: ChildGuard,
}

impl Node {
    /// Starts the tool in `host` with extra `args`; waits for its `ready` line.
    pub fn start(host: &Host, args: &[&str]) -> Node {
        Self::start_in(&host.ns, args)
    }

    pub fn start_in(ns: &Netns, args: &[&str]) -> Node {
        let mut child = ns
            .command(DISCOVER)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mule-discover");
        let pid = child.id();
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let at = Instant::now();
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) => {
                        if tx.send((at, v)).is_err() {
                            break;
                        }
                    }
                    Err(e) => eprintln!("bad line from mule-discover: {line:?}: {e}"),
                }
            }
        });
        let mut node = Node {
            id: String::new(),
            lines: rx,
            seen: Vec::new(),
            pid,
            _child: ChildGuard(child),
        };
        let (_, ready) = node
            .wait(Duration::from_secs(10), |v| v["event"] == "ready")
            .expect("mule-discover did not get ready");
        node.id = ready["node"].as_str().expect("node id").to_string();
        node
    }

    /// Stops the tool with SIGTERM (a clean shutdown, as `systemctl restart` does) and waits
    /// until it has exited.
    pub fn stop(mut self) {
        // SAFETY: plain kill(2) on the child we spawned and still own.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let status = self._child.0.wait().expect("wait for mule-discover");
        assert!(status.success(), "mule-discover exited with {status}");
    }

    /// Waits up to `timeout` for a line matching `pred` (lines already seen count too).
    pub fn wait(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<(Instant, serde_json::Value)> {
        if let Some(hit) = self.seen.iter().find(|(_, v)| pred(v)) {
            return Some(hit.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, v)) => {
                    let hit = pred(&v);
                    self.seen.push((at, v.clone()));
                    if hit {
                        return Some((at, v));
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Forgets lines seen so far (so `wait` only looks at new ones).
    pub fn clear(&mut self) {
        while let Ok(x) = self.lines.try_recv() {
            self.seen.push(x);
        }
        self.seen.clear();
    }

    /// Waits for an event `kind` (`up`/`down`/`changed`) about `peer`.
    pub fn wait_event(
        &mut self,
        kind: &str,
        peer: &str,
        timeout: Duration,
    ) -> Option<(Instant, serde_json::Value)> {
        self.wait(timeout, |v| v["event"] == kind && v["node"] == peer)
    }
}
