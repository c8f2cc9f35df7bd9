//! Discovery measurements in network namespaces (needs root):
//!
//! ```text
//! cargo bench -p mule-contacts --bench discovery            # all, ~4 minutes
//! TRIALS=12 IDLE_SECS=30 cargo bench -p mule-contacts --bench discovery
//! ```
//! Prints, with the default configuration (`DiscoveryConfig::default()`):
//! - link-up → `PeerUp` over beacons, median and p95, at the joining node and at the peer
//!   already on the link. "Link-up" = the joining node's veth is attached to the bridge and
//!   its switch end set up in one `ip` command, so the node sees its carrier come up (as when
//!   a Wi-Fi association completes);
//! - the same for a *silent* attach (attached while its carrier was already up: no interface
//!   event, only periodic beacons can find the peer);
//! - link-up → `PeerUp` over mDNS alone (beacons off; a fresh node process per trial, so no
//!   mDNS cache helps);
//! - silent cut (veth detached from the bridge, carrier stays up) → `PeerDown`;
//! - idle traffic per node (4 nodes, so beacons carry the full 3 met ids) from interface counters (beacons only, and beacons + mDNS), and
//!   idle CPU of a node from `/proc/<pid>/stat`.
//!
//! Each figure includes the time `ip` takes to change the link (a few ms).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Host, Node, Switch};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn stats(name: &str, v: &mut [Duration]) {
    if v.is_empty() {
        println!("{name:<58} no samples");
        return;
    }
    v.sort();
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    println!(
        "{name:<58} n={:<3} median={:>7.1} ms  p95={:>7.1} ms  min={:>7.1} ms  max={:>7.1} ms",
        v.len(),
        q(0.5).as_secs_f64() * 1e3,
        q(0.95).as_secs_f64() * 1e3,
        v[0].as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3
    );
}

const BEACONS_ONLY: &[&str] = &["--no-mdns", "--no-ble"];
const MDNS_ONLY: &[&str] = &["--no-beacons", "--no-ble"];
const WAIT: Duration = Duration::from_secs(10);

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    if !mule_netns::require_root("discovery bench") {
        return;
    }
    let trials = env_num("TRIALS", 12) as usize;
    let idle_secs = env_num("IDLE_SECS", 30);
    println!(
        "discovery bench: {trials} trials per figure, idle window {idle_secs} s, default config"
    );

    beacon_trials(trials);
    mdns_trials(trials);
    idle(idle_secs, BEACONS_ONLY, "beacons only");
    idle(idle_secs, &["--no-ble"], "beacons + mDNS");
}

fn beacon_trials(trials: usize) {
    let sw = Switch::new();
    let a_host = Host::new(&sw, 1);
    let b_host = Host::new(&sw, 2);
    b_host.attach(&sw);
    a_host.link.set_switch_up(false).unwrap();
    let mut a = Node::start(&a_host, BEACONS_ONLY);
    let mut b = Node::start(&b_host, BEACONS_ONLY);
    let (a_id, b_id) = (a.id.clone(), b.id.clone());
    let (mut up_joiner, mut up_peer, mut down, mut silent_up) = (vec![], vec![], vec![], vec![]);
    for t in 0..trials {
        // Link up with carrier event.
        a.clear();
        b.clear();
        let t0 = Instant::now();
        a_host.link.attach_up(&sw.bridge).unwrap();
        let ua = a.wait_event("up", &b_id, WAIT).expect("A saw B");
        let ub = b.wait_event("up", &a_id, WAIT).expect("B saw A");
        up_joiner.push(ua.0 - t0);
        up_peer.push(ub.0 - t0);
        std::thread::sleep(Duration::from_millis(1500 + 97 * t as u64 % 700));
        // Silent cut.
        let t1 = Instant::now();
        a_host.link.detach().unwrap();
        let d = a.wait_event("down", &b_id, WAIT).expect("A lost B");
        b.wait_event("down", &a_id, WAIT).expect("B lost A");
        down.push(d.0 - t1);
        // Silent attach: carrier already up, no interface event.
        std::thread::sleep(Duration::from_millis(300 + 131 * t as u64 % 900));
        a.clear();
        b.clear();
        let t2 = Instant::now();
        a_host.link.attach(&sw.bridge).unwrap();
        let s = a
            .wait_event("up", &b_id, WAIT)
            .expect("A saw B (silent attach)");
        silent_up.push(s.0 - t2);
        std::thread::sleep(Duration::from_millis(500));
        // Back to "no link": detached, switch end down; wait for both to notice.
        a_host.link.detach().unwrap();
        a_host.link.set_switch_up(false).unwrap();
        a.wait_event("down", &b_id, WAIT).expect("A lost B again");
        b.wait_event("down", &a_id, WAIT).expect("B lost A again");
        std::thread::sleep(Duration::from_millis(200));
    }
    stats(
        "beacons: link-up -> PeerUp at the joining node",
        &mut up_joiner,
    );
    stats(
        "beacons: link-up -> PeerUp at the peer on the link",
        &mut up_peer,
    );
    stats(
        "beacons: silent attach (no carrier event) -> PeerUp",
        &mut silent_up,
    );
    stats("beacons: silent cut -> PeerDown", &mut down);
}

fn mdns_trials(trials: usize) {
    let sw = Switch::new();
    let b_host = Host::new(&sw, 2);
    b_host.attach(&sw);
    let mut b = Node::start(&b_host, MDNS_ONLY);
    let b_id = b.id.clone();
    let (mut up_joiner, mut up_peer) = (vec![], vec![]);
    for t in 0..trials {
        let a_host = Host::new(&sw, 1);
        a_host.link.set_switch_up(false).unwrap();
        let mut a = Node::start(&a_host, MDNS_ONLY);
        std::thread::sleep(Duration::from_millis(700 + 89 * t as u64 % 400));
        b.clear();
        let t0 = Instant::now();
        a_host.link.attach_up(&sw.bridge).unwrap();
        match a.wait_event("up", &b_id, WAIT) {
            Some((at, _)) => up_joiner.push(at - t0),
            None => println!("  mDNS trial {t}: joining node found nobody within {WAIT:?}"),
        }
        let a_id = a.id.clone();
        if let Some((at, _)) = b.wait_event("up", &a_id, WAIT) {
            up_peer.push(at - t0);
        }
        drop(a);
        drop(a_host);
    }
    stats(
        "mDNS only: link-up -> PeerUp at the joining node",
        &mut up_joiner,
    );
    stats(
        "mDNS only: link-up -> PeerUp at the peer on the link",
        &mut up_peer,
    );
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is field 14, stime 15.
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

fn idle(secs: u64, args: &[&str], label: &str) {
    let sw = Switch::new();
    // Four nodes: each beacon carries the full three met ids (its largest size).
    let hosts: Vec<Host> = (1..=4).map(|i| Host::new(&sw, i)).collect();
    for h in &hosts {
        h.attach(&sw);
    }
    let mut nodes: Vec<Node> = hosts.iter().map(|h| Node::start(h, args)).collect();
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    for (i, n) in nodes.iter_mut().enumerate() {
        for (j, id) in ids.iter().enumerate() {
            if i != j {
                n.wait_event("up", id, WAIT)
                    .expect("neighbours up before idling");
            }
        }
    }
    // Let the interval settle to its steady state.
    std::thread::sleep(Duration::from_secs(5));
    let before: Vec<_> = hosts
        .iter()
        .map(|h| h.link.node_counters().unwrap())
        .collect();
    let cpu0: Vec<u64> = nodes.iter().map(|n| cpu_ticks(n.pid)).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let el = t0.elapsed().as_secs_f64();
    let after: Vec<_> = hosts
        .iter()
        .map(|h| h.link.node_counters().unwrap())
        .collect();
    let cpu1: Vec<u64> = nodes.iter().map(|n| cpu_ticks(n.pid)).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut tx: Vec<f64> = (0..hosts.len())
        .map(|i| (after[i].tx_bytes - before[i].tx_bytes) as f64 / el)
        .collect();
    let pkts: Vec<f64> = (0..hosts.len())
        .map(|i| (after[i].tx_packets - before[i].tx_packets) as f64 / el)
        .collect();
    let mut cpu: Vec<f64> = (0..hosts.len())
        .map(|i| (cpu1[i] - cpu0[i]) as f64 / hz / el * 100.0)
        .collect();
    let downs = nodes
        .iter()
        .flat_map(|n| n.seen.iter())
        .filter(|(_, v)| v["event"] == "down")
        .count();
    tx.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    println!(
        "idle, {} nodes, {label:<15}: tx per node {:.1} / {:.1} / {:.1} B/s (min/median/max), {:.2} packets/s, CPU per node {:.2} / {:.2} / {:.2} % (min/median/max), spurious PeerDowns: {downs}",
        tx.len(),
        tx[0],
        tx[tx.len() / 2],
        tx[tx.len() - 1],
        pkts.iter().sum::<f64>() / pkts.len() as f64,
        cpu[0],
        cpu[cpu.len() / 2],
        cpu[cpu.len() - 1]
    );
}
