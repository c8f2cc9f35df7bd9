//! Inbound lockout (issue 18, item 6): an attacker that holds idle, never-authenticating TCP
//! connections to a daemon's session port, and renews each one as soon as the daemon closes
//! it, must not keep legitimate peers out. Real `mule run` processes on loopback; the
//! attacker is this test, connecting from loopback addresses of its own (127.0.0.0/8 is all
//! loopback on Linux) so that its source differs from the honest peer's 127.0.0.1.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::{Node, NodeConfig, content, publisher_key, wait_for};
use tokio::io::AsyncReadExt;

/// Counters of the attacker's connections.
#[derive(Default)]
struct Attack {
    /// Connections made so far.
    made: AtomicUsize,
    /// Connections open right now.
    open: AtomicUsize,
    stop: AtomicBool,
}

/// A connection closed by the daemon after at least this long timed out: the attacker takes
/// the slot back at once. One closed sooner was refused or reclaimed: the attacker retries
/// after [`BACKOFF`] (so it does not spin).
const HELD: Duration = Duration::from_secs(1);
/// See [`HELD`].
const BACKOFF: Duration = Duration::from_secs(1);

/// Holds `n` idle connections to `target`, connection `i` from `source(i)`; each one is
/// renewed as soon as the daemon closes it after holding it (see [`HELD`]). Runs until
/// `attack.stop`.
async fn hold_idle(
    target: SocketAddr,
    n: usize,
    source: impl Fn(usize) -> IpAddr,
    attack: Arc<Attack>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let attack = attack.clone();
        let src = SocketAddr::new(source(i), 0);
        tasks.spawn(async move {
            while !attack.stop.load(Ordering::SeqCst) {
                let sock = tokio::net::TcpSocket::new_v4().expect("socket");
                sock.bind(src).expect("bind the attacker's source address");
                let Ok(mut s) = sock.connect(target).await else {
                    tokio::time::sleep(BACKOFF).await;
                    continue;
                };
                let since = std::time::Instant::now();
                attack.made.fetch_add(1, Ordering::SeqCst);
                attack.open.fetch_add(1, Ordering::SeqCst);
                // Idle: read (and discard) until the daemon closes the connection.
                let mut buf = [0u8; 4096];
                loop {
                    tokio::select! {
                        r = s.read(&mut buf) => match r {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        },
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {
                            if attack.stop.load(Ordering::SeqCst) { break }
                        }
                    }
                }
                attack.open.fetch_sub(1, Ordering::SeqCst);
                if since.elapsed() < HELD {
                    tokio::time::sleep(BACKOFF).await;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Runs the attack on its own thread (its own runtime) until the returned guard drops.
struct AttackGuard {
    attack: Arc<Attack>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AttackGuard {
    fn start(
        target: SocketAddr,
        n: usize,
        source: impl Fn(usize) -> IpAddr + Send + 'static,
    ) -> AttackGuard {
        let attack = Arc::new(Attack::default());
        let a = attack.clone();
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(hold_idle(target, n, source, a));
        });
        AttackGuard {
            attack,
            thread: Some(thread),
        }
    }
}

impl Drop for AttackGuard {
    fn drop(&mut self) {
        self.attack.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A honest node `b` dials `a` (a static peer) and publishes a bundle for `a`'s channel:
/// it must arrive complete and intact within 30 s.
fn honest_peer_delivers(a: &Node, pub_hex: &str, key: &std::path::Path) {
    let mut cfg_b = NodeConfig::fw(pub_hex);
    cfg_b.peers = vec![a.listen().to_string()];
    let mut b = Node::new(&cfg_b);
    b.start();
    let data = content(18, 300_000);
    let file = b.path("x.bin");
    std::fs::write(&file, &data).expect("write content");
    let id = b
        .ok(&[
            "publish",
            file.to_str().expect("path"),
            "--name",
            "during-attack",
            "--version",
            "1",
            "--key",
            key.to_str().expect("path"),
            "--audience",
            "fw",
        ])
        .trim()
        .to_string();
    wait_for(
        "the honest node's bundle to arrive despite the attack",
        Duration::from_secs(30),
        || {
            let have = a.bundle(&id)?;
            (have["pieces_have"] == have["pieces_total"]).then_some(())
        },
    );
    assert_eq!(
        a.export(&id),
        data,
        "the bundle from the honest node differs"
    );
    b.stop();
}

/// 40 idle connections from one address (more than the 32 that locked every peer out),
/// each renewed as soon as the daemon closes it: an honest peer still gets a session and
/// delivers a bundle.
#[test]
fn idle_connections_from_one_address_do_not_lock_out_peers() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, key, pub_hex) = publisher_key(keys.path(), "publisher.key");
    let mut a = Node::new(&NodeConfig::fw(&pub_hex));
    a.start();
    let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let guard = AttackGuard::start(a.listen(), 40, move |_| attacker);
    wait_for(
        "the attacker's connections",
        Duration::from_secs(10),
        || (guard.attack.made.load(Ordering::SeqCst) >= 40).then_some(()),
    );
    honest_peer_delivers(&a, &pub_hex, &key);
    assert!(
        guard.attack.made.load(Ordering::SeqCst) >= 40,
        "the attack stopped"
    );
    drop(guard);
    assert!(a.is_running(), "the daemon died under the attack");
    a.stop();
}

/// 40 idle connections, each from an address of its own (per-address limits do not help),
/// each renewed as soon as the daemon closes it: the oldest unauthenticated connections are
/// reclaimed, and an honest peer still gets a session and delivers a bundle.
#[test]
fn idle_connections_from_many_addresses_do_not_lock_out_peers() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, key, pub_hex) = publisher_key(keys.path(), "publisher.key");
    let mut a = Node::new(&NodeConfig::fw(&pub_hex));
    a.start();
    let guard = AttackGuard::start(a.listen(), 40, |i| {
        IpAddr::V4(Ipv4Addr::new(127, 0, 18, 1 + i as u8))
    });
    wait_for(
        "the attacker's connections",
        Duration::from_secs(10),
        || (guard.attack.made.load(Ordering::SeqCst) >= 40).then_some(()),
    );
    honest_peer_delivers(&a, &pub_hex, &key);
    drop(guard);
    assert!(a.is_running(), "the daemon died under the attack");
    a.stop();
}
