//! Start and stop of `mule run` against CLI verbs that run at the same time (issue 18,
//! item 1): real processes on one data directory. A script that lists bundles in a loop must
//! not stop the daemon from starting; CLI verbs must not fail with a lock error while the
//! daemon starts or stops; `mule status` must never say that no daemon is running while one
//! holds the store.

mod support;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{KillOnDrop, Node, NodeConfig};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Sets the flag when dropped, so a panicking test body still stops its helper threads
/// (and `std::thread::scope` can join them).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Waits until `mule status` answers (Ok) or the daemon exits (Err with its status).
fn wait_started(node: &Node, child: &mut std::process::Child) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("exited with {st}"));
        }
        if node.mule(&["status", "--json"]).status.success() {
            return Ok(());
        }
        assert!(
            Instant::now() < end,
            "daemon neither answered nor exited in 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, then waits for the exit (kills after 15 s).
fn terminate(child: &mut std::process::Child) {
    // SAFETY: plain kill(2) on the pid of a child this test spawned and has not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let end = Instant::now() + Duration::from_secs(15);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("daemon did not exit within 15 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether process `pid` is alive (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// How many times the daemon logged that it started (one line per start).
fn starts_logged(node: &Node) -> usize {
    node.log_text()
        .lines()
        .filter(|l| l.contains(" starting node="))
        .count()
}

/// How many times the daemon logged that it stopped: done with the store (one line per
/// clean stop).
fn stops_logged(node: &Node) -> usize {
    node.log_text()
        .lines()
        .filter(|l| l.trim_end().ends_with("mule::daemon: stopped"))
        .count()
}

/// An operator's script runs `mule bundles` in a loop while `mule run` starts: the daemon
/// waits for the store instead of failing ("store … is in use by another process"), in each
/// of 10 tries, and no `mule bundles` call fails meanwhile.
#[test]
fn daemon_starts_while_a_script_lists_bundles() {
    let node = Node::new(&NodeConfig::default());
    node.ok(&["bundles"]);
    let stop = AtomicBool::new(false);
    let calls = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::<String>::new());
    let mut failed_starts = Vec::new();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let out = node.mule(&["bundles", "--json"]);
                calls.fetch_add(1, Ordering::SeqCst);
                if !out.status.success() {
                    failures.lock().expect("lock").push(stderr(&out));
                }
            }
        });
        for i in 0..10 {
            // Let the script make a few calls first, so the daemon starts among them.
            let before = calls.load(Ordering::SeqCst);
            support::wait_for("the script to run", Duration::from_secs(20), || {
                (calls.load(Ordering::SeqCst) >= before + 3).then_some(())
            });
            let mut child = KillOnDrop(node.spawn_run());
            if let Err(why) = wait_started(&node, &mut child.0) {
                failed_starts.push(format!("try {i}: {why}"));
                continue;
            }
            terminate(&mut child.0);
        }
    });
    let failures = failures.into_inner().expect("lock");
    assert!(
        failed_starts.is_empty(),
        "{} of 10 starts failed while `mule bundles` ran in a loop: {failed_starts:?}; log:\n{}",
        failed_starts.len(),
        node.log_text()
    );
    assert!(
        failures.is_empty(),
        "`mule bundles` failed {} of {} times while the daemon started and stopped; first: {}",
        failures.len(),
        calls.load(Ordering::SeqCst),
        failures[0]
    );
}

/// While the daemon starts and stops (8 times), `mule status` and `mule bundles` run in a
/// loop: `bundles` never fails, and `status` never says "no mule daemon is running" when the
/// call began after the daemon logged its start and ended before it logged that it stopped
/// (done with the store).
#[test]
fn status_never_denies_a_daemon_that_is_starting_or_stopping() {
    let node = Node::new(&NodeConfig::default());
    node.ok(&["bundles"]);
    let stop = AtomicBool::new(false);
    // (pid, starts logged before it, stops logged before it) of the current cycle's daemon.
    let current = Mutex::new(None::<(u32, usize, usize)>);
    let calls = AtomicUsize::new(0);
    let denials = Mutex::new(Vec::<String>::new());
    let bundle_failures = Mutex::new(Vec::<String>::new());
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let cycle = *current.lock().expect("lock");
                let began_after_start = cycle.is_some_and(|(_, k, _)| starts_logged(&node) > k);
                let out = node.mule(&["status", "--json"]);
                calls.fetch_add(1, Ordering::SeqCst);
                let text = stderr(&out);
                if !out.status.success()
                    && text.contains("no mule daemon is running")
                    && began_after_start
                    && cycle
                        .is_some_and(|(pid, _, stops)| stops_logged(&node) == stops && alive(pid))
                {
                    denials.lock().expect("lock").push(text);
                }
                let out = node.mule(&["bundles", "--json"]);
                if !out.status.success() {
                    bundle_failures.lock().expect("lock").push(stderr(&out));
                }
            }
        });
        // 8 cycles that started (a start the loop's `bundles` made fail is another test's
        // subject, daemon_starts_while_a_script_lists_bundles: here it is just retried).
        let mut k = 0;
        for _attempt in 0..40 {
            if k == 8 {
                break;
            }
            let mut child = KillOnDrop(node.spawn_run());
            *current.lock().expect("lock") =
                Some((child.0.id(), starts_logged(&node), stops_logged(&node)));
            if wait_started(&node, &mut child.0).is_ok() {
                terminate(&mut child.0);
                k += 1;
            }
            *current.lock().expect("lock") = None;
            // A few calls with no daemon at all between cycles.
            let before = calls.load(Ordering::SeqCst);
            support::wait_for("the loop to run", Duration::from_secs(20), || {
                (calls.load(Ordering::SeqCst) >= before + 2).then_some(())
            });
        }
        assert_eq!(k, 8, "the daemon started only {k} times in 40 attempts");
    });
    let denials = denials.into_inner().expect("lock");
    let bundle_failures = bundle_failures.into_inner().expect("lock");
    assert!(
        denials.is_empty(),
        "`mule status` denied a live daemon {} of {} times; first: {}",
        denials.len(),
        calls.load(Ordering::SeqCst),
        denials[0]
    );
    assert!(
        bundle_failures.is_empty(),
        "`mule bundles` failed {} of {} times; first: {}",
        bundle_failures.len(),
        calls.load(Ordering::SeqCst),
        bundle_failures[0]
    );
}
