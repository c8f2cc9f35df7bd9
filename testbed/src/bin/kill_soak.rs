//! Kill soak (issue 18): SIGKILL a receiving daemon again and again while it fetches bundles
//! over a namespace link, restart it on the same data directory, and check after every
//! restart that nothing it acknowledged was lost and that `mule verify` finds its store
//! sound. Reports the bytes that crossed the link against the content delivered.
//!
//! Topology (testbed/netns helpers): a switch namespace with a bridge, namespace A (the
//! publisher, `mule run`, egress shaped to `--rate`, default 80 Mbit/s) and namespace B (the
//! receiver), each with a veth to the bridge;
//! addresses from 10.x.y.0/24, unique per run. B dials A statically. Everything is removed at
//! the end, also when the soak fails.
//!
//! Each round A publishes a fresh bundle (random content); B, subscribed to its channel,
//! fetches it and is killed each time it has gained a random 25–75 % of a bundle's size
//! since its last start. When a bundle is complete the next round starts. After each
//! restart: pieces held ≥ pieces held just before the kill (an acknowledged piece lost is
//! an integrity failure), then `mule verify` through the daemon must pass. Every
//! `--recycle` rounds (default 4) both stores are emptied between rounds (daemons stopped,
//! store deleted, started again with the same keys), so disk use and the time of each
//! `mule verify` stay bounded over 1,000 kills.
//!
//! Not run in CI (it takes a long time); see testbed/README.md. Run as root:
//! `testbed/soak/kill-soak.sh [--kills N] [--size BYTES]`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mule_netns::{Bridge, Netns, Veth};

struct Args {
    mule: PathBuf,
    kills: u32,
    size: usize,
    seed: u64,
    rate: String,
    /// Rounds between store recycles (see `Daemon::wipe_store`).
    recycle: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        mule: PathBuf::from("target/debug/mule"),
        kills: 1000,
        size: 64 << 20,
        recycle: 4,
        seed: 1,
        rate: "80mbit".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--mule" => a.mule = PathBuf::from(v()?),
            "--kills" => a.kills = v()?.parse().map_err(|e| format!("--kills: {e}"))?,
            "--size" => a.size = v()?.parse().map_err(|e| format!("--size: {e}"))?,
            "--seed" => a.seed = v()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--rate" => a.rate = v()?,
            "--recycle" => {
                a.recycle = v()?.parse().map_err(|e| format!("--recycle: {e}"))?;
                if a.recycle == 0 {
                    return Err("--recycle must be at least 1".into());
                }
            }
            "-h" | "--help" => {
                return Err(
                    "usage: mule-kill-soak [--mule PATH] [--kills N] [--size BYTES] \
                            [--seed N] [--rate TC_RATE] [--recycle ROUNDS]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// A tiny deterministic generator (xorshift64*), so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One daemon: its directory, config and (while running) its process inside `ns`.
struct Daemon {
    dir: PathBuf,
    ns: String,
    mule: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.mule)
            .arg("--config")
            .arg(self.dir.join("mule.toml"))
            .arg("--data-dir")
            .arg(self.data())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running mule")
    }

    fn json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.cli(&a);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(&self.mule)
            .arg("--config")
            .arg(self.dir.join("mule.toml"))
            .arg("--data-dir")
            .arg(self.data())
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning mule run");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(60);
        while self.json(&["status"]).is_none() {
            assert!(Instant::now() < end, "daemon in {} did not start", self.ns);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // `ip netns exec` execs mule in place: this is mule's own pid.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Between rounds, with the daemon stopped: deletes its store (manifests, pieces, export
    /// directory), keeping its key and contact history. Without this both stores grow by a
    /// bundle per round: 1,000 kills of 32 MiB bundles would need ~80 GB, and `mule verify`
    /// after each kill would read all of it.
    fn wipe_store(&self) {
        for e in std::fs::read_dir(self.data()).expect("data dir").flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("store") || name == "export" {
                let p = e.path();
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
    }

    fn pieces(&self, id: &str) -> Option<(u64, u64)> {
        let list = self.json(&["bundles"])?;
        let b = list.as_array()?.iter().find(|b| b["id"] == id)?.clone();
        Some((b["pieces_have"].as_u64()?, b["pieces_total"].as_u64()?))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(publisher: &str, peers: &[String], channels: &[&str]) -> String {
    let list = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ch: Vec<String> = channels.iter().map(|s| s.to_string()).collect();
    format!(
        "[discovery]\nbeacons = false\nmdns = false\nbluetooth = false\n\n\
         [session]\nlisten = [\"0.0.0.0:7600\"]\npeers = [{}]\n\n\
         [store]\nquota_bytes = 68719476736\n\n\
         [trust]\npublishers = [{publisher:?}]\n\n\
         [subscriptions]\nchannels = [{}]\n\n[log]\nlevel = \"info\"\n",
        list(peers),
        list(&ch)
    )
}

fn write_random(path: &Path, len: usize, rng: &mut Rng) {
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        data.extend_from_slice(&rng.next().to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(path, data).expect("content");
}

/// The network: a bridge in a switch namespace, namespaces `a` and `b` each with a veth to
/// it (A's shaped). Fields drop in order: veths, bridge, namespaces, switch.
struct Lab {
    _la: Veth,
    lb: Veth,
    _bridge: Bridge,
    na: Netns,
    nb: Netns,
    _switch: Netns,
    /// The /24 of the two veths, as `10.X.Y`.
    net: String,
}

fn build_lab(rate: &str) -> Lab {
    let switch = Netns::new("sw").expect("switch namespace");
    let bridge = Bridge::new_in(&switch, "br").expect("bridge");
    let (na, nb) = (
        Netns::new("a").expect("namespace"),
        Netns::new("b").expect("namespace"),
    );
    let net = format!(
        "10.{}.{}",
        150 + std::process::id() % 50,
        std::process::id() % 250
    );
    let la = Veth::new(Some(&switch), &na, &format!("{net}.1/24")).expect("veth");
    let lb = Veth::new(Some(&switch), &nb, &format!("{net}.2/24")).expect("veth");
    // A's egress shaped (tbf with a short queue), so a kill lands mid-transfer and little
    // sits queued in the shaper when it does.
    la.shape(rate, "64kb", "50ms").expect("tc tbf");
    la.attach(&bridge).expect("attach");
    lb.attach(&bridge).expect("attach");
    Lab {
        _la: la,
        lb,
        _bridge: bridge,
        na,
        nb,
        _switch: switch,
        net,
    }
}

/// Generates the publisher key and starts publisher A and subscriber B (which dials A).
fn start_daemons(lab: &Lab, tmp: &Path, mule: &Path) -> (Daemon, Daemon, PathBuf) {
    let key = tmp.join("publisher.key");
    let out = Command::new(mule)
        .args(["key", "gen", "--out"])
        .arg(&key)
        .output()
        .expect("mule key gen");
    let publisher = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mk = |name: &str, ns: &Netns, peers: &[String], channels: &[&str]| {
        let dir = tmp.join(name);
        std::fs::create_dir_all(dir.join("data")).expect("dir");
        std::fs::write(dir.join("mule.toml"), config(&publisher, peers, channels)).expect("cfg");
        Daemon {
            dir,
            ns: ns.name().to_string(),
            mule: mule.to_owned(),
            child: None,
        }
    };
    let mut a = mk("a", &lab.na, &[], &[]);
    let mut b = mk("b", &lab.nb, &[format!("{}.1:7600", lab.net)], &["soak"]);
    a.start();
    b.start();
    (a, b, key)
}

/// What the soak counted.
#[derive(Default)]
struct Tally {
    kills: u32,
    rounds: u32,
    delivered: u64,
    lost: u32,
    verify_failures: u32,
}

/// Publishes round `round`'s bundle of random content at A; returns its id.
fn publish(a: &Daemon, tmp: &Path, key: &Path, size: usize, round: u32, rng: &mut Rng) -> String {
    let file = tmp.join("content.bin");
    write_random(&file, size, rng);
    let out = a.cli(&[
        "publish",
        file.to_str().expect("path"),
        "--name",
        "soak",
        "--version",
        &round.to_string(),
        "--key",
        key.to_str().expect("path"),
        "--audience",
        "soak",
    ]);
    assert!(
        out.status.success(),
        "publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits until B gained `gain` more pieces of `id` than `since` (or holds it whole);
/// returns `(have, total)`.
fn wait_gain(b: &Daemon, id: &str, since: u64, gain: u64, kills: u32) -> (u64, u64) {
    let end = Instant::now() + Duration::from_secs(600);
    loop {
        if let Some((have, total)) = b.pieces(id)
            && (have >= since + gain.max(1) || have == total)
        {
            return (have, total);
        }
        assert!(Instant::now() < end, "no progress for 600 s (kill {kills})");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGKILLs B and restarts it; counts pieces lost (fewer than `have` held after the
/// restart) and `mule verify` failures. Returns the pieces held after the restart.
fn kill_and_check(b: &mut Daemon, id: &str, have: u64, t: &mut Tally) -> u64 {
    b.kill();
    t.kills += 1;
    let kills = t.kills;
    b.start();
    let after = b.pieces(id).map_or(0, |p| p.0);
    if after < have {
        t.lost += 1;
        println!("kill {kills}: LOST pieces: {have} reported before the kill, {after} after");
    }
    let v = b.cli(&["verify"]);
    if !v.status.success() {
        t.verify_failures += 1;
        println!(
            "kill {kills}: mule verify FAILED:\n{}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
    }
    after
}

/// One bundle: publish it and kill B at random points of its transfer until it arrived
/// whole or the kills are used up. Returns false once the kills are used up.
fn round(
    args: &Args,
    ctx: (&Daemon, &Path, &Path),
    b: &mut Daemon,
    rng: &mut Rng,
    t: &mut Tally,
    started: Instant,
) -> bool {
    let (a, tmp, key) = ctx;
    t.rounds += 1;
    let id = publish(a, tmp, key, args.size, t.rounds, rng);
    let piece = 65_536u64;
    loop {
        // Kill after a random 25–75 % of a bundle's size more has arrived.
        let since = b.pieces(&id).map_or(0, |p| p.0);
        let gain = (args.size as u64 / piece) * (25 + rng.next() % 51) / 100;
        let (have, total) = wait_gain(b, &id, since, gain, t.kills);
        if have == total {
            t.delivered += args.size as u64;
            return true;
        }
        let after = kill_and_check(b, &id, have, t);
        let kills = t.kills;
        if kills.is_multiple_of(10) || kills == args.kills {
            println!(
                "kill {kills}/{}: round {}, {after}/{total} pieces after restart, {:.0} s",
                args.kills,
                t.rounds,
                started.elapsed().as_secs_f64()
            );
        }
        if kills >= args.kills {
            // Let the last bundle finish so the byte count covers whole bundles.
            let end = Instant::now() + Duration::from_secs(600);
            while b.pieces(&id).is_none_or(|p| p.0 < p.1) {
                assert!(Instant::now() < end, "last bundle did not complete");
                std::thread::sleep(Duration::from_millis(20));
            }
            t.delivered += args.size as u64;
            return false;
        }
    }
}

/// Prints the figures; returns whether the soak passed.
fn report(args: &Args, t: &Tally, rx: u64, packets: u64, started: Instant) -> bool {
    // Ethernet (14) + IPv4 (20) + TCP with timestamps (32) per packet as counted on the veth.
    let payload = rx.saturating_sub(packets * 66);
    let (kills, rounds, delivered) = (t.kills, t.rounds, t.delivered);
    println!(
        "kill-soak: {kills} SIGKILLs of the receiver, {rounds} bundles of {} bytes",
        args.size
    );
    println!(
        "  content delivered {delivered} bytes; link rx {rx} bytes in {packets} packets \
         ({:.3} x); after TCP/IP headers {payload} bytes ({:.3} x, target <= 1.10)",
        rx as f64 / delivered.max(1) as f64,
        payload as f64 / delivered.max(1) as f64
    );
    println!(
        "  acknowledged pieces lost: {}; mule verify failures: {}; {:.0} s",
        t.lost,
        t.verify_failures,
        started.elapsed().as_secs_f64()
    );
    t.lost == 0 && t.verify_failures == 0 && (payload as f64) <= 1.10 * delivered as f64
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if !mule_netns::require_root("kill-soak") {
        eprintln!("kill-soak needs root (network namespaces)");
        std::process::exit(2);
    }
    let mule = std::fs::canonicalize(&args.mule).expect("the mule binary (--mule)");
    let tmp = tempfile::Builder::new()
        .prefix("mule-kill-soak-")
        .tempdir()
        .expect("tempdir");
    let lab = build_lab(&args.rate);
    let (mut a, mut b, key) = start_daemons(&lab, tmp.path(), &mule);

    let mut rng = Rng(args.seed.max(1));
    let started = Instant::now();
    let link0 = lab.lb.node_counters().expect("counters");
    let mut t = Tally::default();
    while t.kills < args.kills {
        if t.rounds > 0 && t.rounds.is_multiple_of(args.recycle) {
            // Both stopped before either starts again: otherwise the one restarted first
            // hands the other's old releases back to it (the publisher's wiped store then
            // numbers its next bundle release 1 again, and the fleet already has one:
            // equivocation, refused at publish).
            b.kill();
            a.kill();
            a.wipe_store();
            b.wipe_store();
            a.start();
            b.start();
        }
        if !round(
            &args,
            (&a, tmp.path(), &key),
            &mut b,
            &mut rng,
            &mut t,
            started,
        ) {
            break;
        }
    }
    let link = lab.lb.node_counters().expect("counters");
    let rx = link.rx_bytes - link0.rx_bytes;
    let packets = link.rx_packets - link0.rx_packets;
    let ok = report(&args, &t, rx, packets, started);
    drop(b);
    drop(a);
    drop(lab);
    std::process::exit(if ok { 0 } else { 1 });
}
