//! The emulated network: one switch namespace holding a bridge per node pair, one namespace
//! per node, a shaped veth from each node of a pair into the pair's bridge (see the module
//! docs of [`super`] for why), and the `ip` commands that switch contacts and read counters.

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use mule_netns::{Bridge, Netns, Veth};

use super::cleanup::WORKDIR_PREFIX;
use super::daemons::{Daemon, stop_daemons};
use super::error::io_err;
use super::signals::stopped;
use super::{EmulateError, PREFIX};
use crate::trace::NodeIx;
use crate::units::Rate;

/// The two veths and the bridge of one node pair.
pub(super) struct Pair {
    pub(super) a: NodeIx,
    pub(super) b: NodeIx,
    pub(super) va: Veth,
    pub(super) vb: Veth,
    pub(super) bridge: Bridge,
}

/// Everything an emulation creates. Dropping it tears everything down, in this order:
/// daemons (so no process keeps a namespace alive), then the node and switch namespaces
/// (which deletes every veth and bridge inside them), then the work directory.
pub(super) struct Topology {
    pub(super) daemons: Vec<Daemon>,
    pub(super) pairs: Vec<Pair>,
    pub(super) nodes: Vec<Netns>,
    pub(super) switch: Option<Netns>,
    pub(super) workdir: Option<PathBuf>,
}

impl Topology {
    /// An empty topology owning a fresh work directory `$TMPDIR/mule-emulate-<pid>-<n>`.
    pub(super) fn with_workdir() -> Result<Topology, EmulateError> {
        let mut topo = Topology {
            daemons: Vec::new(),
            pairs: Vec::new(),
            nodes: Vec::new(),
            switch: None,
            workdir: None,
        };
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let workdir = std::env::temp_dir().join(format!(
            "{WORKDIR_PREFIX}{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&workdir).map_err(io_err(&workdir))?;
        topo.workdir = Some(workdir);
        Ok(topo)
    }

    /// The work directory (data dirs, the key, the published file).
    pub(super) fn workdir(&self) -> &Path {
        self.workdir
            .as_deref()
            .expect("the work directory lives as long as the topology")
    }

    /// Creates the switch namespace and one namespace per node; returns the names of all
    /// of them, the switch's first.
    pub(super) fn add_namespaces(&mut self, nodes: u32) -> Result<Vec<String>, EmulateError> {
        let switch = Netns::new(PREFIX).map_err(EmulateError::Topology)?;
        let switch_name = switch.name().to_owned();
        self.switch = Some(switch);
        for _ in 0..nodes {
            let ns = Netns::new(PREFIX).map_err(EmulateError::Topology)?;
            self.nodes.push(ns);
        }
        Ok(std::iter::once(switch_name)
            .chain(self.nodes.iter().map(|n| n.name().to_owned()))
            .collect())
    }

    /// Creates the bridge and the two shaped veths of every pair, in order (stops early on
    /// Ctrl-C).
    pub(super) fn add_pairs(
        &mut self,
        pairs: &[(NodeIx, NodeIx)],
        rate: Rate,
    ) -> Result<(), EmulateError> {
        let topo_err = EmulateError::Topology;
        let (rate_s, burst_s) = (tc_rate(rate), tc_burst(rate));
        for (p, &(a, b)) in pairs.iter().enumerate() {
            if stopped() {
                break;
            }
            let sw = self.switch.as_ref().expect("switch exists");
            let bridge = Bridge::new_in(sw, PREFIX).map_err(topo_err)?;
            let va =
                Veth::new(Some(sw), &self.nodes[a as usize], &pair_addr(p, 0)).map_err(topo_err)?;
            let vb =
                Veth::new(Some(sw), &self.nodes[b as usize], &pair_addr(p, 1)).map_err(topo_err)?;
            va.shape(&rate_s, &burst_s, "100ms").map_err(topo_err)?;
            vb.shape(&rate_s, &burst_s, "100ms").map_err(topo_err)?;
            self.pairs.push(Pair {
                a,
                b,
                va,
                vb,
                bridge,
            });
        }
        Ok(())
    }

    /// The switch namespace's name.
    pub(super) fn switch_name(&self) -> &str {
        self.switch.as_ref().expect("switch exists").name()
    }

    /// Tears everything down (see the type's docs); idempotent. Returns the nodes whose
    /// daemon ignored SIGTERM for [`super::STOP_TIMEOUT`] and was killed.
    pub(super) fn teardown(&mut self) -> Vec<usize> {
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
pub(super) fn ip_batch(ns: &str, commands: &str) -> io::Result<()> {
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
pub(super) fn link_counters(ns: &str) -> io::Result<HashMap<String, (u64, u64)>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulate::MAX_PAIRS;

    #[test]
    fn pair_addresses_are_distinct_slash30s() {
        assert_eq!(pair_addr(0, 0), "10.200.0.1/30");
        assert_eq!(pair_addr(0, 1), "10.200.0.2/30");
        assert_eq!(pair_addr(1, 0), "10.200.0.5/30");
        assert_eq!(pair_addr(64, 1), "10.200.1.2/30");
        assert_eq!(pair_addr(MAX_PAIRS - 1, 1), "10.200.63.254/30");
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
}
