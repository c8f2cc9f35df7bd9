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

/// Holds `DATA_DIR/mule.lock` as the line `line` says (as a starting daemon or a CLI verb
/// would), until dropped.
fn hold_lock(node: &Node, line: &str) -> std::fs::File {
    use std::io::Write;
    std::fs::create_dir_all(&node.data).expect("data dir");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(node.data.join("mule.lock"))
        .expect("lock file");
    f.try_lock().expect("the lock is free");
    f.write_all(line.as_bytes()).expect("write the holder line");
    f
}

fn with_lock_wait(node: &Node, ms: u64) {
    let text = format!(
        "{}\n[store]\nlock_wait_ms = {ms}\n",
        NodeConfig::default().toml()
    );
    std::fs::write(&node.config, text).expect("write config");
}

/// A daemon that is starting (it holds the lock, its socket does not answer yet) and takes
/// longer than `store.lock_wait_ms`: `status` says exactly that, and `bundles` names it,
/// instead of "no mule daemon is running" or a redb lock error.
#[test]
fn cli_says_a_slow_daemon_is_starting() {
    let node = Node::new(&NodeConfig::default());
    with_lock_wait(&node, 300);
    let _held = hold_lock(&node, &format!("daemon {} starting\n", std::process::id()));
    for verb in ["status", "bundles"] {
        let out = node.mule(&[verb, "--json"]);
        let text = stderr(&out);
        assert!(!out.status.success(), "`{verb}` succeeded without a daemon");
        assert!(
            text.contains(&format!(
                "the mule daemon (pid {}), which is starting",
                std::process::id()
            )),
            "`{verb}` did not say the daemon is starting: {text}"
        );
        assert!(
            !text.contains("no mule daemon is running")
                && !text.contains("in use by another process"),
            "`{verb}`: {text}"
        );
    }
}

/// `mule run` finds the store held by a CLI verb: it says once whom it waits for, and
/// starts as soon as the verb is done.
#[test]
fn daemon_waits_for_a_cli_verb_and_names_it() {
    let node = Node::new(&NodeConfig::default());
    let held = hold_lock(&node, "cli 4242 publish\n");
    let mut child = KillOnDrop(node.spawn_run());
    support::wait_for(
        "the daemon to say whom it waits for",
        Duration::from_secs(10),
        || {
            node.log_text()
                .contains("holder=`mule publish` (pid 4242)")
                .then_some(())
        },
    );
    assert!(
        child.0.try_wait().expect("wait").is_none(),
        "the daemon gave up"
    );
    drop(held);
    wait_started(&node, &mut child.0).expect("the daemon started once the verb was done");
    let waits = node
        .log_text()
        .lines()
        .filter(|l| l.contains("waiting for it"))
        .count();
    assert_eq!(
        waits,
        1,
        "the wait was not logged exactly once:\n{}",
        node.log_text()
    );
    terminate(&mut child.0);
}
