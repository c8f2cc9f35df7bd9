//! Throw-away Linux network topologies for tests: namespaces, bridges and veth links that
//! clean up after themselves.
//!
//! # Goals
//! - Let many tests run **in parallel** (cargo runs tests on threads, several test binaries
//!   may run at once): every name comes from [`unique_name`] (prefix + pid + counter, at most
//!   15 bytes, the kernel's interface name limit), so two tests never collide.
//! - Touch **nothing on the host**: the usual topology puts the bridge in its own "switch"
//!   namespace ([`Bridge::new_in`]) and one end of each [`Veth`] in the switch, the other end
//!   in a node namespace. The root namespace is used only if a test asks for it
//!   ([`Bridge::new_root`], [`Veth::new`] with `switch = None`).
//! - **Clean up even on panic**: every object deletes what it created in `Drop`; deleting a
//!   namespace kills the processes this crate spawned into it first. [`cleanup_leftovers`]
//!   removes what a killed test run (SIGKILL skips `Drop`) left behind.
//!
//! # Non-goals
//! No netlink library: everything shells out to `ip` and `tc` (iproute2), which every CI image
//! running these tests has; failures carry the command line and its stderr.
//!
//! # Typical use
//! ```no_run
//! use mule_netns::{assert_root, Bridge, Netns, Veth};
//! // In a test marked #[ignore = "needs root"]:
//! assert_root("my_test");
//! let switch = Netns::new("sw").unwrap();
//! let bridge = Bridge::new_in(&switch, "br").unwrap();
//! let a = Netns::new("a").unwrap();
//! let link = Veth::new(Some(&switch), &a, "10.77.0.1/24").unwrap();
//! link.attach(&bridge).unwrap();            // link up
//! let out = a.exec(&["ip", "addr"]).unwrap(); // run something inside
//! link.detach().unwrap();                     // silent cut: carrier stays up
//! ```
//!
//! Drop order matters only for speed, not correctness: dropping a namespace removes the
//! interfaces inside it, and dropping a [`Veth`] whose ends are already gone is a no-op.

use std::io;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Per-process counter behind [`unique_name`].
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Every name this crate creates starts with this, so [`cleanup_leftovers`] can find them.
pub const NAME_PREFIX: &str = "mn";

/// A name unique across processes and threads: `mn` + `prefix` (cut to 3 bytes) + pid in base 36
/// + a per-process counter in base 36. At most 15 bytes, so it is a valid interface name.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let p: String = prefix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(3)
        .collect();
    let name = format!(
        "{NAME_PREFIX}{p}{}x{}",
        base36(std::process::id()),
        base36(n)
    );
    debug_assert!(name.len() <= 15, "{name} too long");
    name
}

fn base36(mut v: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

/// Whether this process runs as root (so namespaces can be created).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// For tests marked `#[ignore = "needs root"]` (that reason, word for word: `.ci/run` runs
/// the ignored tests whose reason starts with it): panics unless running as root. Plain
/// `cargo test` lists such a test as ignored, never as passed; it runs only when asked for
/// (`cargo test -- --ignored`), and then a missing privilege is a failure, not a silent pass.
pub fn assert_root(test_name: &str) {
    assert!(
        is_root(),
        "{test_name}: needs root (network namespaces); run it as root (`sudo -E cargo test -- --ignored`)"
    );
}

/// For benchmarks and tools that have a part without namespaces: true when running as root.
/// Otherwise prints `SKIPPED: <what>: needs root (network namespaces)` to stderr and returns
/// false, except when the environment variable `CI` is `true`: there the part must really run,
/// so this panics. Tests use `#[ignore = "needs root"]` and [`assert_root`] instead (a test's
/// stderr is captured, so a skip printed there is invisible).
pub fn require_root(test_name: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test_name}: needs root (network namespaces) and CI=true forbids skipping");
    }
    eprintln!("SKIPPED: {test_name}: needs root (network namespaces)");
    false
}

/// Runs a command and turns a non-zero exit into an error naming the command and its stderr.
pub fn run(args: &[&str]) -> io::Result<Output> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

/// Runs a command, ignoring its result (cleanup paths).
fn run_quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Removes namespaces and root-namespace interfaces whose names start with
/// [`NAME_PREFIX`]`prefix` (e.g. what a SIGKILLed test run left); `prefix` is the one given
/// to [`unique_name`] / [`Netns::new`] (only its first 3 alphanumerics count, as there). An
/// empty prefix removes everything this crate ever created on the machine. Processes still inside such
/// a namespace are killed first. Returns how many objects were removed.
pub fn cleanup_leftovers(prefix: &str) -> usize {
    // The same cut as in `unique_name`: only the first 3 alphanumeric characters count.
    let p: String = prefix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(3)
        .collect();
    let full = format!("{NAME_PREFIX}{p}");
    let mut removed = 0;
    if let Ok(out) = run(&["ip", "netns", "list"]) {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if !name.is_empty() && name.starts_with(&full) {
                kill_all_in(name);
                run_quiet(&["ip", "netns", "delete", name]);
                removed += 1;
            }
        }
    }
    if let Ok(out) = run(&["ip", "-o", "link", "show"]) {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "12: name@peer: <...>"
            let Some(name) = line.split(':').nth(1) else {
                continue;
            };
            let name = name.trim().split('@').next().unwrap_or("");
            if !name.is_empty() && name.starts_with(&full) {
                run_quiet(&["ip", "link", "delete", name]);
                removed += 1;
            }
        }
    }
    removed
}

/// Kills every process inside namespace `name` (they are ours: we created the namespace).
fn kill_all_in(name: &str) {
    if let Ok(out) = run(&["ip", "netns", "pids", name]) {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: plain syscall on a pid inside our own namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// A network namespace created by this test, deleted (with the processes inside) on drop.
/// IPv6 duplicate address detection is switched off inside, so link-local addresses are usable
/// at once after a link comes up.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a fresh namespace named [`unique_name`]`(prefix)` with its loopback up.
    pub fn new(prefix: &str) -> io::Result<Netns> {
        // A SIGKILLed earlier process with the same pid may have left a namespace of the
        // same name: take the next counter value then.
        let mut attempt = 0;
        let name = loop {
            let name = unique_name(prefix);
            match run(&["ip", "netns", "add", &name]) {
                Ok(_) => break name,
                Err(e) if attempt < 8 && e.to_string().contains("exists") => attempt += 1,
                Err(e) => return Err(e),
            }
        };
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        for key in [
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ] {
            // Best effort: without IPv6 the tests still run on IPv4.
            let _ = ns.exec(&["sysctl", "-qw", key]);
        }
        Ok(ns)
    }

    /// The namespace's name (as given to `ip netns`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `Command` that runs `program` inside the namespace (`ip netns exec <ns> program`).
    /// Add arguments, then spawn or run it yourself.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `args` inside the namespace and waits; a non-zero exit is an error.
    pub fn exec(&self, args: &[&str]) -> io::Result<Output> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Starts `args` inside the namespace with stdout piped and stderr inherited. The child is
    /// killed when the namespace is dropped at the latest; wrap it in [`ChildGuard`] to kill it
    /// earlier on panic.
    pub fn spawn(&self, args: &[&str]) -> io::Result<Child> {
        self.command(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
    }

    /// The rx/tx byte counters of `iface` inside this namespace.
    pub fn counters(&self, iface: &str) -> io::Result<Counters> {
        let read = |what: &str| -> io::Result<u64> {
            let out = self.exec(&["cat", &format!("/sys/class/net/{iface}/statistics/{what}")])?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|e| io::Error::other(format!("{iface} {what}: {e}")))
        };
        Ok(Counters {
            rx_bytes: read("rx_bytes")?,
            tx_bytes: read("tx_bytes")?,
            rx_packets: read("rx_packets")?,
            tx_packets: read("tx_packets")?,
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name);
        run_quiet(&["ip", "netns", "delete", &self.name]);
    }
}

/// Interface byte and packet counters (from `/sys/class/net/<if>/statistics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
}

/// Kills and reaps a child process on drop (for processes spawned with [`Netns::spawn`]).
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Linux bridge with STP off (ports forward as soon as they are attached), in the root
/// namespace or in a dedicated switch namespace. Deleted on drop.
#[derive(Debug)]
pub struct Bridge {
    name: String,
    ns: Option<String>,
}

impl Bridge {
    /// Creates a bridge inside `switch` (the recommended, host-invisible way).
    pub fn new_in(switch: &Netns, prefix: &str) -> io::Result<Bridge> {
        Self::create(Some(switch.name().to_string()), prefix)
    }

    /// Creates a bridge in the root namespace.
    pub fn new_root(prefix: &str) -> io::Result<Bridge> {
        Self::create(None, prefix)
    }

    fn create(ns: Option<String>, prefix: &str) -> io::Result<Bridge> {
        let name = unique_name(prefix);
        let b = Bridge { name, ns };
        b.ip(&["link", "add", &b.name, "type", "bridge", "stp_state", "0"])?;
        b.ip(&["link", "set", &b.name, "up"])?;
        Ok(b)
    }

    /// The bridge's interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn ip(&self, args: &[&str]) -> io::Result<Output> {
        ip_in(self.ns.as_deref(), args)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.ip(&["link", "delete", &self.name]);
    }
}

/// Runs `ip <args>` in namespace `ns` (root when `None`).
fn ip_in(ns: Option<&str>, args: &[&str]) -> io::Result<Output> {
    let mut full = vec!["ip"];
    if let Some(ns) = ns {
        full.extend_from_slice(&["-n", ns]);
    }
    full.extend_from_slice(args);
    run(&full)
}

/// A veth pair: the *switch end* stays in the switch namespace (or the root namespace), the
/// *node end* lives in a node namespace with an address and is up. The switch end starts **up
/// and detached** (no bridge). Deleted on drop.
#[derive(Debug)]
pub struct Veth {
    switch_end: String,
    node_end: String,
    switch_ns: Option<String>,
    node_ns: String,
}

impl Veth {
    /// Creates the pair, moves the node end into `node`, gives it `addr_cidr`
    /// (e.g. `10.77.0.1/24`; empty = no IPv4 address) and brings both ends up.
    pub fn new(switch: Option<&Netns>, node: &Netns, addr_cidr: &str) -> io::Result<Veth> {
        let switch_end = unique_name("s");
        let node_end = unique_name("n");
        let v = Veth {
            switch_end,
            node_end,
            switch_ns: switch.map(|s| s.name().to_string()),
            node_ns: node.name().to_string(),
        };
        v.sw(&[
            "link",
            "add",
            &v.switch_end,
            "type",
            "veth",
            "peer",
            "name",
            &v.node_end,
            "netns",
            &v.node_ns,
        ])?;
        // The switch end is a bridge port and needs no addresses; without IPv6
        // it sends no neighbour or multicast-listener traffic of its own, so
        // the node end's counters see only what the nodes send.
        let key = format!("net.ipv6.conf.{}.disable_ipv6=1", v.switch_end);
        let _ = match &v.switch_ns {
            Some(ns) => run(&["ip", "netns", "exec", ns, "sysctl", "-qw", &key]),
            None => run(&["sysctl", "-qw", &key]),
        };
        if !addr_cidr.is_empty() {
            v.nd(&["addr", "add", addr_cidr, "dev", &v.node_end])?;
        }
        v.nd(&["link", "set", &v.node_end, "up"])?;
        v.sw(&["link", "set", &v.switch_end, "up"])?;
        Ok(v)
    }

    /// The interface name of the end inside the node namespace.
    pub fn node_end(&self) -> &str {
        &self.node_end
    }

    /// The interface name of the end in the switch (or root) namespace.
    pub fn switch_end(&self) -> &str {
        &self.switch_end
    }

    fn sw(&self, args: &[&str]) -> io::Result<Output> {
        ip_in(self.switch_ns.as_deref(), args)
    }

    fn nd(&self, args: &[&str]) -> io::Result<Output> {
        ip_in(Some(&self.node_ns), args)
    }

    /// Enslaves the switch end to `bridge` (link up; no carrier change on the node end).
    pub fn attach(&self, bridge: &Bridge) -> io::Result<()> {
        self.sw(&["link", "set", &self.switch_end, "master", bridge.name()])
            .map(drop)
    }

    /// Enslaves the switch end to `bridge` and sets it up in one command: if the switch end was
    /// down, the node end sees its carrier come up at the same moment (like joining a Wi-Fi).
    pub fn attach_up(&self, bridge: &Bridge) -> io::Result<()> {
        self.sw(&[
            "link",
            "set",
            &self.switch_end,
            "master",
            bridge.name(),
            "up",
        ])
        .map(drop)
    }

    /// Silent cut: detaches the switch end from its bridge (`nomaster`). The node end keeps
    /// its carrier, so the node gets no interface event, exactly like walking out of range.
    pub fn detach(&self) -> io::Result<()> {
        self.sw(&["link", "set", &self.switch_end, "nomaster"])
            .map(drop)
    }

    /// Sets the switch end administratively up or down; the node end's carrier follows.
    pub fn set_switch_up(&self, up: bool) -> io::Result<()> {
        let state = if up { "up" } else { "down" };
        self.sw(&["link", "set", &self.switch_end, state]).map(drop)
    }

    /// Sets the node end administratively up or down.
    pub fn set_node_up(&self, up: bool) -> io::Result<()> {
        let state = if up { "up" } else { "down" };
        self.nd(&["link", "set", &self.node_end, state]).map(drop)
    }

    /// Shapes traffic leaving the node end with a token bucket (`tc qdisc replace ... tbf`),
    /// e.g. `shape("1mbit", "32kbit", "50ms")`.
    pub fn shape(&self, rate: &str, burst: &str, latency: &str) -> io::Result<()> {
        run(&[
            "tc",
            "-n",
            &self.node_ns,
            "qdisc",
            "replace",
            "dev",
            &self.node_end,
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            burst,
            "latency",
            latency,
        ])
        .map(drop)
    }

    /// Removes shaping from the node end.
    pub fn unshape(&self) -> io::Result<()> {
        run(&[
            "tc",
            "-n",
            &self.node_ns,
            "qdisc",
            "del",
            "dev",
            &self.node_end,
            "root",
        ])
        .map(drop)
    }

    /// Byte/packet counters of the node end (`ip -s` semantics: as seen by the node).
    pub fn node_counters(&self) -> io::Result<Counters> {
        let out = self.nd(&["-s", "-o", "link", "show", "dev", &self.node_end])?;
        parse_ip_s(&String::from_utf8_lossy(&out.stdout))
            .ok_or_else(|| io::Error::other(format!("cannot parse `ip -s` for {}", self.node_end)))
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Deleting either end deletes the pair; one of them may already be gone with its
        // namespace.
        if self.sw(&["link", "delete", &self.switch_end]).is_err() {
            let _ = self.nd(&["link", "delete", &self.node_end]);
        }
    }
}

/// Parses one-line `ip -s -o link show` output: after `RX:` and `TX:` header lines come
/// `bytes packets ...` rows (joined with `\` in one-line mode).
fn parse_ip_s(text: &str) -> Option<Counters> {
    let parts: Vec<&str> = text.split('\\').map(str::trim).collect();
    let rx_i = parts.iter().position(|p| p.starts_with("RX:"))?;
    let tx_i = parts.iter().position(|p| p.starts_with("TX:"))?;
    let nums = |i: usize| -> Option<(u64, u64)> {
        let mut it = parts.get(i + 1)?.split_whitespace();
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    let (rx_bytes, rx_packets) = nums(rx_i)?;
    let (tx_bytes, tx_packets) = nums(tx_i)?;
    Some(Counters {
        rx_bytes,
        tx_bytes,
        rx_packets,
        tx_packets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_short() {
        let a = unique_name("abcdef");
        let b = unique_name("abcdef");
        assert_ne!(a, b);
        assert!(a.len() <= 15 && a.starts_with("mnabc"), "{a}");
    }

    #[test]
    fn parses_ip_s_output() {
        let line = "5: v@if4: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 1a:2b:3c:4d:5e:6f brd ff:ff:ff:ff:ff:ff link-netns x\\    RX:  bytes packets errors dropped  missed   mcast           \\          1234      10      0       0       0       3 \\    TX:  bytes packets errors dropped carrier collsns           \\          5678      20      0       0       0       0 ";
        let c = parse_ip_s(line).unwrap();
        assert_eq!(
            c,
            Counters {
                rx_bytes: 1234,
                rx_packets: 10,
                tx_bytes: 5678,
                tx_packets: 20
            }
        );
    }

    #[test]
    #[ignore = "needs root"]
    fn cleanup_leftovers_removes_forgotten_namespaces() {
        assert_root("cleanup_leftovers_removes_forgotten_namespaces");
        // A unique prefix so parallel tests' objects are never touched.
        let prefix = format!("z{}", base36(std::process::id() % 1000));
        let ns = Netns::new(&prefix).unwrap();
        let name = ns.name().to_string();
        std::mem::forget(ns); // as if the test had been killed
        assert!(cleanup_leftovers(&prefix) >= 1);
        let list = String::from_utf8(run(&["ip", "netns", "list"]).unwrap().stdout).unwrap();
        assert!(!list.contains(&name), "{list}");
    }

    #[test]
    #[ignore = "needs root"]
    fn topology_builds_and_cleans_up() {
        assert_root("topology_builds_and_cleans_up");
        let (sw_name, a_name);
        {
            let switch = Netns::new("sw").unwrap();
            let bridge = Bridge::new_in(&switch, "br").unwrap();
            let a = Netns::new("a").unwrap();
            let b = Netns::new("b").unwrap();
            let la = Veth::new(Some(&switch), &a, "10.201.0.1/24").unwrap();
            let lb = Veth::new(Some(&switch), &b, "10.201.0.2/24").unwrap();
            la.attach(&bridge).unwrap();
            lb.attach(&bridge).unwrap();
            let send = || a.exec(&["bash", "-c", "echo hi > /dev/udp/10.201.0.2/9"]);
            send().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
            let c = la.node_counters().unwrap();
            assert!(c.tx_bytes > 0 && c.rx_bytes > 0, "{c:?}");
            // The node end has IPv6 on, so the kernel may send a router solicitation or an
            // MLD report between two reads: compare only a reading bracketed by two equal
            // sysfs readings of the same interface.
            let mut agreed = false;
            for _ in 0..10 {
                let first = a.counters(la.node_end()).unwrap().tx_packets;
                let via_ip = la.node_counters().unwrap().tx_packets;
                let last = a.counters(la.node_end()).unwrap().tx_packets;
                if first == last {
                    assert_eq!(via_ip, first, "ip -s and sysfs disagree");
                    agreed = true;
                    break;
                }
            }
            assert!(agreed, "tx counter never held still across three reads");
            let before = lb.node_counters().unwrap();
            assert!(before.rx_packets > 0, "{before:?}");
            lb.detach().unwrap();
            send().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
            assert_eq!(lb.node_counters().unwrap().rx_packets, before.rx_packets);
            la.shape("1mbit", "32kbit", "50ms").unwrap();
            la.unshape().unwrap();
            sw_name = switch.name().to_string();
            a_name = a.name().to_string();
        }
        let list = String::from_utf8(run(&["ip", "netns", "list"]).unwrap().stdout).unwrap();
        assert!(
            !list.contains(&sw_name) && !list.contains(&a_name),
            "{list}"
        );
    }
}
