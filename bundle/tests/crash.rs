//! The crash test: a child process ingests pieces into the store in batches and is SIGKILLed at
//! random moments; after every kill the store must reopen consistent (every reported piece
//! present and verifying, bitfield equal to the stored pieces), ingest resumes, and the final
//! export is byte-identical to the source.
//!
//! The child is this test binary itself, re-executed with `CHILD_ENV` set and told to run only
//! `crash_child`. Kill timings come from a seeded RNG; the seed is printed and can be pinned
//! with `MULE_CRASH_SEED`. Both commit modes are tested (quick-repair on and off).
//!
//! A SIGKILL leaves the kernel's page cache intact, so a kill during `fsync` often keeps the
//! batch (the test counts these "committed before reported" cases); it does not simulate a
//! power cut, for which we rely on redb's fsync ordering and checksummed commit slots.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mule_bundle::complete;
use mule_bundle::store::{Origin, Store, StoreOptions};
use mule_bundle::{PublishOptions, VerifiedManifest, publish};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

const CHILD_ENV: &str = "MULE_CRASH_CHILD_DIR";
const PIECE_SIZE: u32 = 16 * 1024;
const CONTENT_LEN: usize = 4 * 1024 * 1024 + 1234;
const BATCH: usize = 8;
const KILLS: usize = 60;

const QUICK_ENV: &str = "MULE_CRASH_QUICK_REPAIR";

fn options(quick_repair: bool) -> StoreOptions {
    StoreOptions {
        trust: [key().verifying_key().to_bytes()].into_iter().collect(),
        quick_repair,
        ..StoreOptions::default()
    }
}

fn key() -> mule_bundle::keys::SigningKey {
    mule_bundle::keys::SigningKey::from_bytes(&[42; 32])
}

/// Child mode: resume ingest from whatever the store has, report each committed batch.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    let content = std::fs::read(dir.join("source")).unwrap();
    let vm = VerifiedManifest::decode(&std::fs::read(dir.join("manifest")).unwrap()).unwrap();
    let id = vm.id();
    let quick = std::env::var(QUICK_ENV).as_deref() == Ok("1");
    let mut store = Store::open(&dir.join("data"), options(quick)).unwrap();
    let missing: Vec<u32> = store
        .bitfield(&id)
        .unwrap()
        .unwrap()
        .iter_missing()
        .collect();
    let mut out = std::io::stdout().lock();
    for chunk in missing.chunks(BATCH) {
        let batch: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let start = i as usize * PIECE_SIZE as usize;
                let end = (start + PIECE_SIZE as usize).min(content.len());
                (id, i, &content[start..end])
            })
            .collect();
        for r in store.put_pieces(&batch).unwrap() {
            r.unwrap();
        }
        // Reported only after the commit returned: these must survive any crash.
        let list: Vec<String> = chunk.iter().map(u32::to_string).collect();
        writeln!(out, "MULE-COMMITTED {}", list.join(",")).unwrap();
        out.flush().unwrap();
    }
    writeln!(out, "MULE-DONE").unwrap();
    out.flush().unwrap();
}

/// Adds the indices of a `MULE-COMMITTED` line to `reported`. The test harness may have
/// printed `test crash_child ... ` on the same line first.
fn parse_report(line: &str, reported: &mut Vec<u32>) -> bool {
    let Some(at) = line.find("MULE-COMMITTED ") else {
        return false;
    };
    let list = &line[at + "MULE-COMMITTED ".len()..];
    reported.extend(list.split(',').map(|s| s.parse::<u32>().unwrap()));
    true
}

/// Reopens the store and checks it against what the child reported.
fn check(dir: &Path, vm: &VerifiedManifest, reported: &[u32], quick: bool) -> u32 {
    let mut store = Store::open(&dir.join("data"), options(quick)).unwrap();
    let checked = store.verify_all().expect("store consistent after SIGKILL");
    let bf = store.bitfield(&vm.id()).unwrap().unwrap();
    for &i in reported {
        assert!(bf.get(i), "piece {i} was reported committed but is missing");
    }
    assert_eq!(u64::from(bf.count()), checked);
    bf.count()
}

#[test]
fn sigkill_during_ingest_never_loses_committed_pieces() {
    crash_test(true, KILLS);
}

/// The same without quick-repair (one fsync per commit, full repair on reopen).
#[test]
fn sigkill_without_quick_repair() {
    crash_test(false, KILLS);
}

fn crash_test(quick: bool, kills_wanted: usize) {
    let seed: u64 = std::env::var("MULE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6d75_6c65);
    eprintln!("crash test seed: {seed} (set MULE_CRASH_SEED to replay)");
    let mut rng = SmallRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut content = vec![0u8; CONTENT_LEN];
    rng.fill_bytes(&mut content);
    std::fs::write(dir.join("source"), &content).unwrap();
    let mut opts = PublishOptions::new("crash", "1", 1_700_000_000);
    opts.piece_size = PIECE_SIZE;
    let vm = publish(&content[..], &opts, &key()).unwrap();
    std::fs::write(dir.join("manifest"), vm.as_bytes()).unwrap();
    let reset = |store_dir: &Path| {
        let mut s = Store::open(store_dir, options(quick)).unwrap();
        s.remove(&vm.id()).unwrap();
        s.insert_manifest(&vm, Origin::Received).unwrap();
        s.set_wanted(&vm.id(), true).unwrap();
    };
    reset(&dir.join("data"));

    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let (mut kills, mut rounds, mut committed_unreported) = (0, 0, 0);
    let mut reported: Vec<u32> = Vec::new();
    while kills < kills_wanted {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir)
            .env(QUICK_ENV, if quick { "1" } else { "0" })
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill after a random number of committed batches plus a random delay, so kills land
        // during opening, hashing, writing and fsync alike.
        let after = rng.random_range(0..6);
        let delay = Duration::from_micros(rng.random_range(0..3000));
        let mut seen = 0;
        let mut done = false;
        while seen < after {
            match lines.next() {
                Some(Ok(l)) if parse_report(&l, &mut reported) => seen += 1,
                Some(Ok(l)) if l.ends_with("MULE-DONE") => {
                    done = true;
                    break;
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        if !done {
            std::thread::sleep(delay);
            child.kill().unwrap();
            kills += 1;
        }
        // Whatever it reported before dying counts too.
        for l in lines.map_while(Result::ok) {
            if !parse_report(&l, &mut reported) && l.ends_with("MULE-DONE") {
                done = true;
            }
        }
        let status = child.wait().unwrap();
        if !done {
            assert!(!status.success(), "child was killed");
        }
        let have = check(dir, &vm, &reported, quick);
        // Batches commit atomically: a crash never leaves part of a batch visible.
        assert!(
            (have as usize).is_multiple_of(BATCH) || have == vm.piece_count(),
            "partial batch visible: {have} pieces"
        );
        let mut unique = reported.clone();
        unique.sort_unstable();
        unique.dedup();
        if have as usize > unique.len() {
            // Committed but killed before it could report: the kill hit between the commit
            // and the print, and the store still kept it.
            committed_unreported += 1;
        }
        if done {
            // A finished round: export must be byte-identical; then start over.
            assert_eq!(have, vm.piece_count());
            let mut s = Store::open(&dir.join("data"), options(quick)).unwrap();
            let out = dir.join(format!("export-{rounds}"));
            complete::export_to(&mut s, &vm.id(), &out).unwrap();
            assert!(std::fs::read(&out).unwrap() == content, "export differs");
            drop(s);
            reset(&dir.join("data"));
            reported.clear();
            rounds += 1;
        }
    }
    // Finish the last round without interruption.
    let status = Command::new(&exe)
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(QUICK_ENV, if quick { "1" } else { "0" })
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(check(dir, &vm, &reported, quick), vm.piece_count());
    let mut s = Store::open(&dir.join("data"), options(quick)).unwrap();
    let out = dir.join("export-final");
    complete::export_to(&mut s, &vm.id(), &out).unwrap();
    assert!(
        std::fs::read(&out).unwrap() == content,
        "final export differs"
    );
    eprintln!(
        "crash test (quick-repair {quick}): {kills} SIGKILLs, {rounds} full rounds before the last, \
         {committed_unreported} kills hit after a commit but before its report, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
