//! Piece-ingest benchmark: verify + durable (fsync) redb commit, per piece size; manifest sign
//! and verify time; peak memory.
//!
//! `cargo bench -p mule-bundle --bench ingest` (set `MULE_BENCH_DIR` to choose the disk; the
//! default is a temporary directory). Content is a deterministic BLAKE3 XOF stream generated
//! piece by piece, so memory holds one batch, not the content; generation is not timed.
//! Every figure is the median of `RUNS` runs, each on a fresh store.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use mule_bundle::keys::SigningKey;
use mule_bundle::store::{Origin, Store, StoreOptions};
use mule_bundle::{PublishOptions, VerifiedManifest, publish};

const RUNS: usize = 5;
const CONTENT_LEN: u64 = 64 << 20;
const SINGLE_LEN: u64 = 8 << 20;
const BATCH_BYTES: usize = 1 << 20;
const REOPEN_LEN: u64 = 256 << 20;
const SIZES_KIB: [u32; 5] = [16, 32, 64, 128, 256];

/// The content: BLAKE3 XOF output, readable from any offset.
struct Content {
    xof: blake3::OutputReader,
    left: u64,
}

impl Content {
    fn new(len: u64) -> Self {
        Content {
            xof: blake3::Hasher::new().update(b"mule bench").finalize_xof(),
            left: len,
        }
    }

    fn piece(offset: u64, len: usize) -> Vec<u8> {
        let mut xof = blake3::Hasher::new().update(b"mule bench").finalize_xof();
        xof.set_position(offset);
        let mut buf = vec![0; len];
        xof.fill(&mut buf);
        buf
    }
}

impl Read for Content {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        self.xof.fill(&mut buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("MULE_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

/// Ingests every piece of `vm` into a fresh store, `per_commit` pieces per `put_pieces`;
/// returns the time spent in `put_pieces` (verification + commit).
fn ingest(vm: &VerifiedManifest, per_commit: usize, quick_repair: bool) -> Duration {
    let dir = bench_dir();
    let opts = StoreOptions {
        quota_bytes: 1 << 40,
        quick_repair,
        ..StoreOptions::default()
    };
    let mut store = Store::open(dir.path(), opts).unwrap();
    store.insert_manifest(vm, Origin::Published).unwrap();
    let id = vm.id();
    let ps = u64::from(vm.manifest().piece_size);
    let mut spent = Duration::ZERO;
    let indices: Vec<u32> = (0..vm.piece_count()).collect();
    for chunk in indices.chunks(per_commit) {
        let data: Vec<Vec<u8>> = chunk
            .iter()
            .map(|&i| Content::piece(u64::from(i) * ps, vm.piece_len(i).unwrap() as usize))
            .collect();
        let batch: Vec<_> = chunk
            .iter()
            .zip(&data)
            .map(|(&i, d)| (id, i, &d[..]))
            .collect();
        let t = Instant::now();
        for r in store.put_pieces(&batch).unwrap() {
            r.unwrap();
        }
        spent += t.elapsed();
    }
    assert!(store.is_complete(&id).unwrap());
    spent
}

/// The disk's own ceiling: write `batch` bytes to a file and fdatasync, like one commit.
fn raw_fsync(batch: usize, total: u64) -> Duration {
    use std::io::Write;
    let dir = bench_dir();
    let mut f = std::fs::File::create(dir.path().join("raw")).unwrap();
    let buf = Content::piece(0, batch);
    let t = Instant::now();
    let mut written = 0;
    while written < total {
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
        written += batch as u64;
    }
    t.elapsed()
}

fn manifest(len: u64, piece_size: u32, key: &SigningKey) -> VerifiedManifest {
    let mut opts = PublishOptions::new("bench", "1", 1_700_000_000);
    opts.piece_size = piece_size;
    publish(Content::new(len), &opts, key).unwrap()
}

fn row(label: &str, size_kib: u32, per_commit: usize, len: u64, t: Duration) {
    let secs = t.as_secs_f64();
    let pieces = len.div_ceil(u64::from(size_kib) * 1024) as f64;
    println!(
        "{label:<22} {size_kib:>4} KiB  {per_commit:>4} pieces/commit  {:>8.1} MB/s  {:>8.0} pieces/s  {:>6.0} commits/s",
        len as f64 / 1e6 / secs,
        pieces / secs,
        (pieces / per_commit as f64).ceil() / secs,
    );
}

fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Child mode for the reopen measurement: ingest into `dir` until killed, printing a line per
/// committed MiB.
fn crash_child(dir: &str, quick_repair: bool) {
    use std::io::Write;
    let key = SigningKey::from_bytes(&[1; 32]);
    let vm = manifest(REOPEN_LEN, mule_bundle::DEFAULT_PIECE_SIZE, &key);
    let opts = StoreOptions {
        quota_bytes: 1 << 40,
        quick_repair,
        ..StoreOptions::default()
    };
    let mut store = Store::open(Path::new(dir), opts).unwrap();
    store.insert_manifest(&vm, Origin::Published).unwrap();
    let id = vm.id();
    let ps = u64::from(vm.manifest().piece_size);
    let indices: Vec<u32> = (0..vm.piece_count()).collect();
    let mut out = std::io::stdout().lock();
    for chunk in indices.chunks((BATCH_BYTES as u64 / ps) as usize) {
        let data: Vec<Vec<u8>> = chunk
            .iter()
            .map(|&i| Content::piece(u64::from(i) * ps, vm.piece_len(i).unwrap() as usize))
            .collect();
        let batch: Vec<_> = chunk
            .iter()
            .zip(&data)
            .map(|(&i, d)| (id, i, &d[..]))
            .collect();
        store.put_pieces(&batch).unwrap();
        writeln!(out, "committed").unwrap();
        out.flush().unwrap();
    }
    // Keep the process alive (and the file open) until the parent kills it.
    std::thread::sleep(Duration::from_secs(600));
}

/// Time to reopen a store after SIGKILL during ingest, with ~`REOPEN_LEN` bytes in it.
fn reopen_after_kill(quick_repair: bool) -> Duration {
    use std::io::BufRead;
    let dir = bench_dir();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("MULE_BENCH_CHILD", dir.path())
        .env("MULE_BENCH_QUICK", if quick_repair { "1" } else { "0" })
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let target = (REOPEN_LEN as usize / BATCH_BYTES) * 9 / 10;
    let _ = lines.take(target).count();
    child.kill().unwrap();
    child.wait().unwrap();
    let opts = StoreOptions {
        quick_repair,
        ..StoreOptions::default()
    };
    let t = Instant::now();
    let store = Store::open(dir.path(), opts).unwrap();
    let d = t.elapsed();
    drop(store);
    d
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    if let Some(dir) = std::env::var_os("MULE_BENCH_CHILD") {
        let quick = std::env::var("MULE_BENCH_QUICK").as_deref() == Ok("1");
        crash_child(dir.to_str().unwrap(), quick);
        return;
    }
    let key = SigningKey::from_bytes(&[1; 32]);
    println!(
        "durable ingest (verify, write + fdatasync the data file, redb commit with fsync), {} MiB content, median of {RUNS} runs",
        CONTENT_LEN >> 20
    );
    for kib in SIZES_KIB {
        let vm = manifest(CONTENT_LEN, kib * 1024, &key);
        let ps = kib as usize * 1024;
        for (label, per_commit) in [
            ("batch 8 pieces", 8),
            ("batch ~1 MiB", (BATCH_BYTES / ps).max(1)),
            ("batch ~4 MiB", (4 * BATCH_BYTES / ps).max(1)),
        ] {
            let t = median((0..RUNS).map(|_| ingest(&vm, per_commit, true)).collect());
            row(label, kib, per_commit, CONTENT_LEN, t);
        }
    }
    println!(
        "single-piece commits ({} MiB content, median of {RUNS} runs)",
        SINGLE_LEN >> 20
    );
    for kib in SIZES_KIB {
        let vm = manifest(SINGLE_LEN, kib * 1024, &key);
        let t = median((0..RUNS).map(|_| ingest(&vm, 1, true)).collect());
        row("1 piece", kib, 1, SINGLE_LEN, t);
    }
    {
        let kib = mule_bundle::DEFAULT_PIECE_SIZE / 1024;
        println!("default piece size, other commit settings");
        let vm = manifest(CONTENT_LEN, kib * 1024, &key);
        let per_commit = (BATCH_BYTES / (kib as usize * 1024)).max(1);
        let t = median((0..RUNS).map(|_| ingest(&vm, per_commit, false)).collect());
        row("~1 MiB, no quick-repair", kib, per_commit, CONTENT_LEN, t);
        let t = median(
            (0..RUNS)
                .map(|_| ingest(&vm, 4 * per_commit, false))
                .collect(),
        );
        row(
            "~4 MiB, no quick-repair",
            kib,
            4 * per_commit,
            CONTENT_LEN,
            t,
        );
        println!("disk ceiling: plain file write + fdatasync per batch (no redb)");
        for batch in [64 << 10, 1 << 20, 4 << 20] {
            let t = median((0..RUNS).map(|_| raw_fsync(batch, 32 << 20)).collect());
            let secs = t.as_secs_f64();
            println!(
                "raw fsync {:>5} KiB/commit  {:>8.1} MB/s  {:>6.0} commits/s",
                batch >> 10,
                (32u64 << 20) as f64 / 1e6 / secs,
                (32u64 << 20) as f64 / batch as f64 / secs
            );
        }
    }

    println!(
        "reopen after SIGKILL during ingest (~{} MiB stored), median of {RUNS}",
        (REOPEN_LEN * 9 / 10) >> 20
    );
    for quick in [true, false] {
        let t = median((0..RUNS).map(|_| reopen_after_kill(quick)).collect());
        println!(
            "quick-repair {:<5}  reopen {:.1} ms",
            quick,
            t.as_secs_f64() * 1e3
        );
    }

    // Manifest sign / verify, for a 64 MiB bundle at the default piece size.
    let vm = manifest(CONTENT_LEN, mule_bundle::DEFAULT_PIECE_SIZE, &key);
    let m = vm.manifest().clone();
    let n = 200;
    let sign = median(
        (0..n)
            .map(|_| {
                let m = m.clone();
                let t = Instant::now();
                let v = m.sign(&key).unwrap();
                let d = t.elapsed();
                assert_eq!(v.id(), vm.id());
                d
            })
            .collect(),
    );
    let verify = median(
        (0..n)
            .map(|_| {
                let t = Instant::now();
                let v = VerifiedManifest::decode(vm.as_bytes()).unwrap();
                let d = t.elapsed();
                assert_eq!(v.id(), vm.id());
                d
            })
            .collect(),
    );
    println!(
        "manifest ({} pieces, {} bytes): sign {:.1} µs, verify (decode + canonical check + verify_strict) {:.1} µs (median of {n})",
        vm.piece_count(),
        vm.as_bytes().len(),
        sign.as_secs_f64() * 1e6,
        verify.as_secs_f64() * 1e6
    );
    match vm_hwm_kib() {
        Some(k) => println!("peak RSS (VmHWM): {:.1} MiB", k as f64 / 1024.0),
        None => println!("peak RSS: /proc/self/status not readable"),
    }
}
