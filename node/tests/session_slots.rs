//! Session slots (issue 18, the gap left after items 5 and 6): authenticated sessions with
//! throwaway keys must not hold every `session.max_sessions` slot. Real `mule run`
//! processes on loopback; the attacker is this test, driving real engine sessions with
//! fresh keys from loopback addresses of its own (127.0.0.0/8 is all loopback on Linux), so
//! that its sources differ from the honest node's 127.0.0.1.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{Node, NodeConfig, Peer, content, fresh_key, publisher_key, wait_for};

/// What the attacker's sessions came to.
#[derive(Default)]
struct Outcomes {
    /// Sessions the daemon closed: (source, the daemon's `Bye` detail).
    refused: Mutex<Vec<(IpAddr, String)>>,
    stop: AtomicBool,
}

/// Opens `n` authenticated sessions with fresh keys from `from` to `target` and holds each
/// one idle (answering only keep-alives) until the daemon closes it or `out.stop`.
fn hold_sessions(
    rt: &tokio::runtime::Handle,
    target: SocketAddr,
    from: IpAddr,
    n: usize,
    out: &Arc<Outcomes>,
) {
    for _ in 0..n {
        let out = out.clone();
        rt.spawn(async move {
            let mut p = Peer::connect_from(target, from, fresh_key()).await;
            while !out.stop.load(Ordering::SeqCst) {
                p.step().await;
                if p.closed.is_some() || p.eof {
                    let detail = p
                        .closed
                        .as_ref()
                        .map(|c| c.detail.clone())
                        .unwrap_or_else(|| "connection ended".into());
                    out.refused.lock().expect("outcomes").push((from, detail));
                    return;
                }
            }
        });
    }
}

fn active_sessions(metrics: u16) -> Option<f64> {
    support::sample(&support::scrape(metrics), "mule_sessions_active")
}

/// A runtime on a thread of its own for the attacker's sessions, running until `out.stop`.
fn attacker_runtime(out: &Arc<Outcomes>) -> (tokio::runtime::Handle, std::thread::JoinHandle<()>) {
    let (htx, hrx) = std::sync::mpsc::channel();
    let out = out.clone();
    let runner = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        htx.send(rt.handle().clone()).expect("handle");
        rt.block_on(async {
            while !out.stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    });
    (hrx.recv().expect("attacker runtime"), runner)
}

/// A neighbour of `a` (it has `a` as its static peer) that brought `a` a bundle in a first,
/// clean session, so that `a` knows its key; returned stopped, its session with `a` over.
fn known_neighbour(a: &Node, metrics: u16, key: &std::path::Path, pub_hex: &str) -> Node {
    let mut cfg_b = NodeConfig::fw(pub_hex);
    cfg_b.peers = vec![a.listen().to_string()];
    let mut b = Node::started(&cfg_b);
    let first = content(31, 100_000);
    let first_id = b.publish(key, "before-attack", "a.bin", &first, &[]);
    wait_for(
        "the neighbour's first bundle",
        Duration::from_secs(30),
        || {
            let have = a.bundle(&first_id)?;
            (have["pieces_have"] == have["pieces_total"]).then_some(())
        },
    );
    b.stop();
    wait_for(
        "the neighbour's session to end",
        Duration::from_secs(10),
        || (active_sessions(metrics)? == 0.0).then_some(()),
    );
    b
}

/// `b` (stopped) starts and publishes a bundle for `a`: it must arrive intact. `b` dials
/// `a` (its static peer) every second until a session is up; a handshake and 300 kB on
/// loopback take well under a second, so 30 s (the suite's bound for a delivery under
/// attack) is ample.
fn delivers(b: &mut Node, a: &Node, key: &std::path::Path) {
    b.start();
    let data = content(32, 300_000);
    let id = b.publish(key, "during-attack", "b.bin", &data, &[]);
    wait_for(
        "the known neighbour's bundle to arrive while strangers hold sessions",
        Duration::from_secs(30),
        || {
            let have = a.bundle(&id)?;
            (have["pieces_have"] == have["pieces_total"]).then_some(())
        },
    );
    assert_eq!(a.export(&id), data, "the neighbour's bundle differs");
}

/// A daemon with `max_sessions = 4`: an attacker opens 3 idle sessions with fresh keys from
/// one address, then 3 more from another. Strangers get at most half the slots (2) and at
/// most 2 per address, and the rest are refused with a `Bye` that says why. A neighbour the
/// daemon knows (it brought a bundle in an earlier session) still gets a session and
/// delivers a bundle while the attacker holds its sessions. Before the slot policy the
/// attacker held all 4 slots and the neighbour was refused at every dial.
#[test]
fn throwaway_keys_do_not_lock_a_known_neighbour_out_of_the_session_slots() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, key, pub_hex) = publisher_key(keys.path(), "publisher.key");
    let metrics = support::free_port();
    let mut a = Node::started(&NodeConfig {
        metrics_port: Some(metrics),
        session_extra: vec!["max_sessions = 4".into()],
        ..NodeConfig::fw(&pub_hex)
    });
    let mut b = known_neighbour(&a, metrics, &key, &pub_hex);

    // The attacker: 3 throwaway keys from one address, then 3 from another.
    let out = Arc::new(Outcomes::default());
    let (rt, runner) = attacker_runtime(&out);
    let one = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    let decided = |n: usize| {
        let refused = out.refused.lock().expect("outcomes").len();
        let active = active_sessions(metrics)? as usize;
        (refused + active == n).then_some((refused, active))
    };
    hold_sessions(&rt, a.listen(), one, 3, &out);
    wait_for(
        "the daemon to admit or refuse the first 3 sessions",
        Duration::from_secs(15),
        || decided(3),
    );
    hold_sessions(&rt, a.listen(), other, 3, &out);
    let (_, held) = wait_for(
        "the daemon to admit or refuse all 6 sessions",
        Duration::from_secs(15),
        || decided(6),
    );

    // The known neighbour comes back while the attacker holds its sessions.
    delivers(&mut b, &a, &key);

    // Strangers held their share, at most 2 per address; the rest were told why.
    assert_eq!(held, 2, "strangers hold {held} of 4 session slots");
    let refused = out.refused.lock().expect("outcomes").clone();
    let from = |ip: IpAddr, why: &str| {
        refused
            .iter()
            .filter(|(s, d)| *s == ip && d.contains(why))
            .count()
    };
    assert_eq!(
        from(one, "too many sessions from this address"),
        1,
        "refusals: {refused:?}"
    );
    assert_eq!(
        from(other, "session slots for unknown peers are full"),
        3,
        "refusals: {refused:?}"
    );
    out.stop.store(true, Ordering::SeqCst);
    runner.join().expect("attacker thread");
    b.stop();
    assert!(a.is_running(), "the daemon died under the attack");
    a.stop();
}

/// `max_sessions = 1`, held by a stranger's idle session: a known neighbour that comes back
/// takes the slot. The stranger's session is closed with a `Bye` saying so, and the
/// neighbour delivers a bundle.
#[test]
fn a_known_neighbour_displaces_an_idle_stranger_from_a_full_pool() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, key, pub_hex) = publisher_key(keys.path(), "publisher.key");
    let metrics = support::free_port();
    let mut a = Node::started(&NodeConfig {
        metrics_port: Some(metrics),
        session_extra: vec!["max_sessions = 1".into()],
        ..NodeConfig::fw(&pub_hex)
    });
    let mut b = known_neighbour(&a, metrics, &key, &pub_hex);
    let out = Arc::new(Outcomes::default());
    let (rt, runner) = attacker_runtime(&out);
    let stranger = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
    hold_sessions(&rt, a.listen(), stranger, 1, &out);
    wait_for(
        "the stranger's session to take the only slot",
        Duration::from_secs(15),
        || (active_sessions(metrics)? == 1.0).then_some(()),
    );
    delivers(&mut b, &a, &key);
    let refused = out.refused.lock().expect("outcomes").clone();
    assert_eq!(
        refused,
        vec![(
            stranger,
            "session slot given to a known neighbour".to_string()
        )],
        "the stranger's session did not end for the neighbour"
    );
    let displaced = support::sample(&support::scrape(metrics), "mule_sessions_displaced_total");
    assert_eq!(displaced, Some(1.0));
    out.stop.store(true, Ordering::SeqCst);
    runner.join().expect("attacker thread");
    b.stop();
    assert!(a.is_running(), "the daemon died");
    a.stop();
}
