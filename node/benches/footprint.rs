//! Footprint of a running node: binary size, idle RSS and CPU with two
//! neighbours, peak RSS while receiving a 20 MB bundle.
//!
//! `cargo bench -p mule --bench footprint` (as root: it builds three network
//! namespaces on a bridge and runs three real `mule run` processes with the
//! default configuration plus a subscription and a trust list).
//! Targets (issue "Operating Mule on gateways"): idle RSS ≤ 8 MiB, peak RSS
//! during the transfer ≤ 32 MiB, idle CPU ≤ 0.5 % of one core, stripped
//! binary ≤ 8 MB.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mule_netns::{Bridge, ChildGuard, Netns, Veth, require_root};

const IDLE: Duration = Duration::from_secs(60);
const BUNDLE: usize = 20_000_000;

fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let st: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ut + st
}

fn mule(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mule"))
        .args(args)
        .output()
        .expect("running mule");
    assert!(
        out.status.success(),
        "mule {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn main() {
    let bin = Path::new(env!("CARGO_BIN_EXE_mule"));
    let size = std::fs::metadata(bin).map(|m| m.len()).unwrap_or(0);
    let tmp = tempfile::tempdir().expect("temp dir");
    let stripped = tmp.path().join("mule-stripped");
    std::fs::copy(bin, &stripped).expect("copy binary");
    let stripped_size = Command::new("strip")
        .arg(&stripped)
        .status()
        .ok()
        .filter(|s| s.success())
        .and_then(|_| std::fs::metadata(&stripped).ok())
        .map(|m| m.len());
    println!(
        "binary (release profile, as shipped): {:.2} MB",
        size as f64 / 1e6
    );
    match stripped_size {
        Some(s) => println!(
            "binary after strip: {:.2} MB (target <= 8 MB) {}",
            s as f64 / 1e6,
            verdict(s as f64 <= 8e6)
        ),
        None => println!("binary stripped: `strip` not available"),
    }

    if !require_root("footprint bench (needs network namespaces)") {
        return;
    }
    let key = tmp.path().join("pub.key");
    let pubhex = mule(&["key", "gen", "--out", key.to_str().unwrap()])
        .trim()
        .to_string();
    let switch = Netns::new("fsw").expect("switch ns");
    let bridge = Bridge::new_in(&switch, "fbr").expect("bridge");
    let mut nodes = Vec::new();
    for i in 0..3 {
        let ns = Netns::new("fn").expect("ns");
        let veth = Veth::new(
            Some(&switch),
            &ns,
            &format!("10.203.{}.{}/16", std::process::id() % 200, i + 1),
        )
        .expect("veth");
        veth.attach_up(&bridge).expect("attach");
        let dir = tmp.path().join(format!("n{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("mule.toml");
        let mut f = std::fs::File::create(&cfg).unwrap();
        writeln!(
            f,
            "[subscriptions]\nchannels = [\"fw\"]\n[trust]\npublishers = [\"{pubhex}\"]"
        )
        .unwrap();
        let child = ns
            .command(bin.to_str().unwrap())
            .args([
                "run",
                "--config",
                cfg.to_str().unwrap(),
                "--data-dir",
                dir.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mule");
        nodes.push((ns, veth, dir, ChildGuard(child)));
    }
    // Let discovery settle, then measure an idle minute.
    std::thread::sleep(Duration::from_secs(5));
    let pid = nodes[0].3.0.id();
    let iface = nodes[0].1.node_end().to_string();
    let c0 = nodes[0].0.counters(&iface).expect("counters");
    let t0 = cpu_ticks(pid);
    let start = Instant::now();
    std::thread::sleep(IDLE);
    let secs = start.elapsed().as_secs_f64();
    let t1 = cpu_ticks(pid);
    let c1 = nodes[0].0.counters(&iface).expect("counters");
    let hz = 100.0; // USER_HZ on Linux
    let cpu_pct = (t1 - t0) as f64 / hz / secs * 100.0;
    let rss = status_kib(pid, "VmRSS:");
    let peers = mule(&[
        "peers",
        "--json",
        "--data-dir",
        nodes[0].2.to_str().unwrap(),
    ]);
    let neighbours = serde_json::from_str::<serde_json::Value>(&peers)
        .ok()
        .and_then(|v| v.as_array().map(|a| a.len()))
        .unwrap_or(0);
    println!("neighbours seen by node 0: {neighbours}");
    println!(
        "idle RSS after {:.0} s: {:.1} MiB (target <= 8 MiB) {}",
        secs + 5.0,
        rss as f64 / 1024.0,
        verdict(rss <= 8 * 1024)
    );
    println!(
        "idle CPU: {:.3} % of one core ({} ticks in {:.0} s; target <= 0.5 %) {}",
        cpu_pct,
        t1 - t0,
        secs,
        verdict(cpu_pct <= 0.5)
    );
    println!(
        "idle traffic on node 0's link: {:.0} B/s sent, {:.0} B/s received (beacons, mDNS)",
        (c1.tx_bytes - c0.tx_bytes) as f64 / secs,
        (c1.rx_bytes - c0.rx_bytes) as f64 / secs
    );

    // Peak RSS of a receiver during a 20 MB transfer.
    let content = tmp.path().join("bundle.bin");
    let mut data = vec![0u8; BUNDLE];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&content, &data).unwrap();
    let publisher = nodes[2].2.to_str().unwrap().to_string();
    mule(&[
        "publish",
        content.to_str().unwrap(),
        "--name",
        "fw",
        "--version",
        "1",
        "--key",
        key.to_str().unwrap(),
        "--audience",
        "fw",
        "--data-dir",
        &publisher,
    ]);
    let receiver = nodes[1].2.to_str().unwrap().to_string();
    let rpid = nodes[1].3.0.id();
    let t = Instant::now();
    let mut done = false;
    while t.elapsed() < Duration::from_secs(120) {
        let list = mule(&["bundles", "--json", "--data-dir", &receiver]);
        if list.contains("\"installed\"") {
            done = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let hwm = status_kib(rpid, "VmHWM:");
    println!(
        "20 MB bundle {} in {:.1} s; receiver peak RSS {:.1} MiB (target <= 32 MiB) {}",
        if done { "received" } else { "NOT received" },
        t.elapsed().as_secs_f64(),
        hwm as f64 / 1024.0,
        verdict(done && hwm <= 32 * 1024)
    );
    drop(nodes);
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}
