//! The `mule` verbs. Each works through the running daemon's control socket
//! when one is running for the data directory, and on the store directly
//! otherwise (the store is locked while a daemon has it open).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use mule_bundle::store::{BundleInfo, Origin, Store};
use mule_bundle::{BundleId, PublishOptions, VerifiedManifest, keys};
use mule_config::Config;

use crate::cli::{Cli, Command, ConfigCommand, KeyCommand, MediaCommand, PublishArgs};
use crate::control::{self, Client, Request, Response};
use crate::human;
use crate::lock::{DirLock, Holder};
use crate::view::{self, progress_bar};

/// Bytes of pieces sent to the daemon per control request.
const PUT_BATCH_BYTES: usize = 4 << 20;

/// Loads the configuration named on the command line, or the embedded default.
pub fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::default()),
    }
}

/// Runs a verb.
pub fn dispatch(cli: Cli) -> Result<()> {
    let cfg = load_config(cli.global.config.as_deref())?;
    let data_dir = crate::paths::data_dir(cli.global.data_dir.as_deref(), cfg.data_dir.as_deref());
    match cli.command {
        Command::Run => crate::run_daemon(cfg, data_dir),
        Command::Key(KeyCommand::Gen { out }) => {
            let key = keys::generate()?;
            keys::write_key_file(&out, &key)?;
            println!("{}", keys::public_hex(&key));
            eprintln!(
                "wrote {} (mode 0600); the line above is its public key",
                out.display()
            );
            Ok(())
        }
        Command::Key(KeyCommand::Show { file }) => {
            println!("{}", keys::public_hex(&keys::read_key_file(&file)?));
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => {
            Config::load(&file)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Config(ConfigCommand::Show) => {
            // What a daemon started with these flags would run with: the data
            // directory as resolved, subscriptions as changed at run time.
            let mut effective = cfg.clone();
            effective.data_dir = Some(data_dir.clone());
            effective.subscriptions.channels =
                crate::daemon::load_subscriptions(&data_dir, &cfg.subscriptions.channels);
            println!(
                "# effective configuration for data directory {} (subscriptions include \
                 `mule subscribe`/`unsubscribe` changes stored there)",
                data_dir.display()
            );
            print!("{}", effective.to_toml_string());
            Ok(())
        }
        other => rt()?.block_on(async {
            // The daemon stopped while serving this verb: again, now through the next daemon
            // or the store itself (every verb can be repeated safely); a few times, since a
            // daemon that restarts may go away again.
            let mut tries = 0;
            loop {
                match verb(other.clone(), &cfg, &data_dir).await {
                    Err(e) if is_closed(&e) && tries < 3 => tries += 1,
                    r => break r,
                }
            }
        }),
    }
}

/// Whether `e` is a daemon that closed its control connection without answering.
fn is_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<control::Error>(),
            Some(control::Error::Closed)
        )
    })
}

fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Where a verb runs: the daemon or the store itself.
pub(crate) enum Target {
    Daemon(Client),
    Direct(Direct),
}

/// The store opened by the CLI, with the data directory's lock held for as long as it is
/// open (fields drop in order: the store closes before the lock is released).
pub(crate) struct Direct {
    store: Box<Store>,
    _lock: Option<DirLock>,
}

impl std::ops::Deref for Direct {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

impl std::ops::DerefMut for Direct {
    fn deref_mut(&mut self) -> &mut Store {
        &mut self.store
    }
}

/// Whether a verb may create the store when none exists yet (publish and
/// import do; reading verbs say that there is none instead of creating one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Reading verbs: no store is an error.
    Read,
    /// Publish, import: the store is created if needed.
    Write,
}

/// Whether no node has used `data_dir` yet: no store, no lock, no daemon.
async fn no_node_yet(cfg: &Config, data_dir: &Path) -> bool {
    !data_dir.join(mule_bundle::store::STORE_FILE_NAME).exists()
        && !data_dir.join(crate::paths::LOCK_FILE).exists()
        && Client::connect_at(data_dir, &cfg.control.socket_in(data_dir))
            .await
            .is_err()
}

pub(crate) async fn target(cfg: &Config, data_dir: &Path, access: Access) -> Result<Target> {
    if access == Access::Read && no_node_yet(cfg, data_dir).await {
        bail!(
            "no store in {}: no node has used this data directory yet and no daemon runs \
             for it (wrong --data-dir or --config?)",
            data_dir.display()
        );
    }
    crate::paths::ensure_dir(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    Ok(match reach(cfg, data_dir).await? {
        Reach::Daemon(c) => Target::Daemon(c),
        Reach::Free(lock) => Target::Direct(Direct {
            store: Box::new(open_store(cfg, data_dir)?),
            _lock: lock,
        }),
    })
}

/// What [`reach`] found.
enum Reach {
    /// The daemon answers.
    Daemon(Client),
    /// No daemon runs: the data directory's lock, now ours (`None`: we may not even read
    /// the lock file, so cannot take part; as before the lock existed).
    Free(Option<DirLock>),
}

/// Finds the daemon of `data_dir`, or takes the data directory's lock when none runs (see
/// [`crate::lock`]). While the lock is held by a daemon that is starting (its socket does
/// not answer yet) or stopping, or by another CLI verb, this waits (up to
/// `store.lock_wait_ms`, said once on stderr) instead of failing or saying that no daemon
/// runs.
async fn reach(cfg: &Config, data_dir: &Path) -> Result<Reach> {
    let socket = cfg.control.socket_in(data_dir);
    let start = std::time::Instant::now();
    let deadline = start + cfg.store.lock_wait();
    let me = Holder::cli(&verb_name());
    let mut said = false;
    loop {
        match Client::connect_at(data_dir, &socket).await {
            Ok(c) => return Ok(Reach::Daemon(c)),
            Err(control::Error::NotRunning { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        // A daemon binds its socket only once it holds the lock: if the lock is free, no
        // daemon runs.
        let holder = match DirLock::try_acquire(data_dir, &me) {
            Ok(Ok(lock)) => return Ok(Reach::Free(Some(lock))),
            Ok(Err(h)) => h,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::NotFound
                ) =>
            {
                return Ok(Reach::Free(None));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("locking data directory {}", data_dir.display())));
            }
        };
        if std::time::Instant::now() >= deadline {
            let waited = start.elapsed().as_millis();
            return Err(match holder {
                Holder::Daemon { .. } => anyhow!(
                    "{holder} for data directory {}, did not answer on {} within {waited} ms \
                     (store.lock_wait_ms); try again in a moment",
                    data_dir.display(),
                    socket.display()
                ),
                _ => anyhow!(
                    "the store in {} is in use by {holder}, still after {waited} ms \
                     (store.lock_wait_ms)",
                    data_dir.display()
                ),
            });
        }
        if !said {
            eprintln!("mule: waiting for {holder}");
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The verb this process runs (for the lock line, which tells a waiting daemon whom it
/// waits for).
fn verb_name() -> String {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    std::env::args()
        .skip(1)
        .find(|a| names.contains(a))
        .unwrap_or_else(|| "cli".to_string())
}

/// Opens the store the way the daemon would.
pub fn open_store(cfg: &Config, data_dir: &Path) -> Result<Store> {
    let opts = crate::daemon::store_options(cfg);
    Store::open(data_dir, opts)
        .with_context(|| format!("opening the store in {}", data_dir.display()))
}

async fn daemon_only(cfg: &Config, data_dir: &Path, what: &str) -> Result<Client> {
    let not_running = || {
        let socket = cfg.control.socket_in(data_dir);
        control::Error::NotRunning {
            dir: data_dir.display().to_string(),
            socket: socket.display().to_string(),
        }
    };
    if !data_dir.is_dir() {
        bail!("`mule {what}` needs the running daemon: {}", not_running());
    }
    match reach(cfg, data_dir).await {
        Ok(Reach::Daemon(c)) => Ok(c),
        Ok(Reach::Free(_)) => bail!("`mule {what}` needs the running daemon: {}", not_running()),
        Err(e) => Err(e.context(format!("`mule {what}` needs the running daemon"))),
    }
}

async fn verb(cmd: Command, cfg: &Config, data_dir: &Path) -> Result<()> {
    match cmd {
        Command::Publish(args) => publish(*args, cfg, data_dir).await,
        Command::Bundles(j) => {
            let list = bundle_list(cfg, data_dir).await?;
            if j.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print_bundles(&list);
            }
            Ok(())
        }
        Command::Inspect { id, json } => inspect(&id, json, cfg, data_dir).await,
        Command::Export { id, out } => export(&id, &out, cfg, data_dir).await,
        Command::Manifest { id, out } => write_manifest(&id, &out, cfg, data_dir).await,
        Command::ImportManifest { file } => import_manifest(&file, cfg, data_dir).await,
        Command::Status(j) => status(j.json, false, cfg, data_dir).await,
        Command::Peers(j) => status(j.json, true, cfg, data_dir).await,
        Command::Contacts(j) => contacts(j.json, cfg, data_dir).await,
        Command::Subscribe { channel } => subscription(channel, true, cfg, data_dir).await,
        Command::Unsubscribe { channel } => subscription(channel, false, cfg, data_dir).await,
        Command::Media(m) => media_verb(m, cfg, data_dir).await,
        Command::Verify { repair, ids } => crate::verify::run(&ids, repair, cfg, data_dir).await,
        Command::Run | Command::Key(_) | Command::Config(_) => {
            unreachable!("handled synchronously")
        }
    }
}

/// `mule manifest ID --out FILE`: the signed manifest as stored.
async fn write_manifest(id: &str, out: &Path, cfg: &Config, data_dir: &Path) -> Result<()> {
    let vm = manifest_of(id, cfg, data_dir).await?;
    write_atomic(out, vm.as_bytes())?;
    eprintln!(
        "wrote the signed manifest of {} to {}",
        vm.id(),
        out.display()
    );
    Ok(())
}

/// `mule import-manifest FILE`: verify it, then hand it to the daemon or the store.
async fn import_manifest(file: &Path, cfg: &Config, data_dir: &Path) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let vm = VerifiedManifest::decode(&bytes)
        .with_context(|| format!("{} is not a valid signed manifest", file.display()))?;
    match target(cfg, data_dir, Access::Write).await? {
        Target::Daemon(mut c) => {
            c.call(&Request::ImportManifest {
                manifest: bytes,
                published: false,
            })
            .await?;
        }
        Target::Direct(mut s) => {
            s.insert_manifest(&vm, Origin::Received)?;
        }
    }
    println!("{}", vm.id());
    Ok(())
}

/// `mule status` (or, with `peers`, `mule peers`: only the neighbours).
async fn status(json: bool, peers: bool, cfg: &Config, data_dir: &Path) -> Result<()> {
    let what = if peers { "peers" } else { "status" };
    let mut c = daemon_only(cfg, data_dir, what).await?;
    let Response::Status(st) = c.call(&Request::Status).await? else {
        bail!("unexpected answer")
    };
    match (json, peers) {
        (true, false) => println!("{}", serde_json::to_string_pretty(&st)?),
        (true, true) => println!("{}", serde_json::to_string_pretty(&st.neighbours)?),
        (false, false) => print_status(&st),
        (false, true) => print_neighbours(&st.neighbours),
    }
    Ok(())
}

/// `mule contacts`: the contact history per peer.
async fn contacts(json: bool, cfg: &Config, data_dir: &Path) -> Result<()> {
    let mut c = daemon_only(cfg, data_dir, "contacts").await?;
    let Response::Contacts(list) = c.call(&Request::Contacts).await? else {
        bail!("unexpected answer")
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<16} {:>8} {:>14} {:>14} {:>14} {:>10} {:>6}",
        "PEER", "CONTACTS", "MEDIAN", "INTERCONTACT", "LAST_SEEN", "BYTES", "P"
    );
    let d = |s: f64| human::duration(std::time::Duration::from_secs_f64(s.max(0.0)));
    for p in list {
        println!(
            "{:<16} {:>8} {:>14} {:>14} {:>14} {:>10} {:>6.3}",
            &p.node_id[..16],
            p.contacts,
            d(p.median_contact_s),
            if p.contacts > 1 {
                d(p.median_intercontact_s)
            } else {
                "-".into()
            },
            format!("{} ago", d(p.last_seen_s_ago as f64)),
            human::bytes(p.bytes),
            p.predictability
        );
    }
    Ok(())
}

/// `mule subscribe CHANNEL` (`on`) or `mule unsubscribe CHANNEL`.
async fn subscription(channel: String, on: bool, cfg: &Config, data_dir: &Path) -> Result<()> {
    let what = if on { "subscribe" } else { "unsubscribe" };
    let mut c = daemon_only(cfg, data_dir, what).await?;
    let req = if on {
        Request::Subscribe {
            channel: channel.clone(),
        }
    } else {
        Request::Unsubscribe {
            channel: channel.clone(),
        }
    };
    c.call(&req).await?;
    if on {
        eprintln!("subscribed to {channel}");
    } else {
        eprintln!("unsubscribed from {channel}");
    }
    Ok(())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn publish(a: PublishArgs, cfg: &Config, data_dir: &Path) -> Result<()> {
    let key = keys::read_key_file(&a.key)?;
    let now = now_secs();
    let mut opts = PublishOptions::new(a.name.clone(), a.version, now);
    opts.stages = a.stages.clone();
    opts.priority = a.priority.parse().map_err(|e: String| anyhow!(e))?;
    opts.depends = parse_ids(&a.depends, "--depends")?;
    opts.lineage = parse_ids(&a.replaces, "--replaces")?;
    opts.audience = a.audience;
    let life = humantime::parse_duration(&a.expires)
        .with_context(|| format!("--expires {:?}: use e.g. 30d, 12h", a.expires))?;
    opts.expires = Some(now + life.as_secs());
    opts.piece_size = a.piece_size.unwrap_or(cfg.store.piece_size_default as u32);
    for m in a.meta {
        let (k, v) = m
            .split_once('=')
            .ok_or_else(|| anyhow!("--meta {m:?}: expected KEY=VALUE"))?;
        opts.metadata.insert(k.to_string(), v.to_string());
    }
    let lineage = mule_bundle::Lineage {
        publisher: key.verifying_key().to_bytes(),
        name: a.name,
    };
    let mut target = target(cfg, data_dir, Access::Write).await?;
    opts.release = match a.release {
        Some(n) => n,
        None => newest_release(&mut target, &lineage).await? + 1,
    };
    let vm = mule_bundle::publish_file(&a.file, &opts, &key)
        .with_context(|| format!("publishing {}", a.file.display()))?;
    let id = vm.id();
    eprintln!("release {} of {}", opts.release, lineage.name);
    match target {
        Target::Direct(mut s) => {
            s.insert_manifest(&vm, Origin::Published)?;
            let f = std::fs::File::open(&a.file)?;
            s.put_content(&id, std::io::BufReader::with_capacity(1 << 20, f))?;
        }
        Target::Daemon(mut c) => {
            c.call(&Request::ImportManifest {
                manifest: vm.to_bytes(),
                published: true,
            })
            .await?;
            let mut f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&a.file)?);
            let size = vm.manifest().piece_size as usize;
            let per = (PUT_BATCH_BYTES / size).max(1);
            let total = vm.piece_count();
            let mut index = 0u32;
            while index < total {
                let mut pieces = Vec::with_capacity(per);
                for _ in 0..per {
                    if index + pieces.len() as u32 >= total {
                        break;
                    }
                    let len = vm.piece_len(index + pieces.len() as u32).unwrap_or(0) as usize;
                    let mut buf = vec![0u8; len];
                    f.read_exact(&mut buf)
                        .context("the file changed while it was being published")?;
                    pieces.push(serde_bytes::ByteBuf::from(buf));
                }
                let n = pieces.len() as u32;
                c.call(&Request::PutPieces {
                    bundle: id.to_string(),
                    first: index,
                    pieces,
                })
                .await?;
                index += n;
                if total > 64 {
                    eprint!(
                        "\rpublishing {} {}/{}",
                        progress_bar(index, total, 30),
                        index,
                        total
                    );
                }
            }
            if total > 64 {
                eprintln!();
            }
        }
    }
    println!("{id}");
    Ok(())
}

/// The highest release of `lineage` the publisher's own store knows (0: none).
async fn newest_release(target: &mut Target, lineage: &mule_bundle::Lineage) -> Result<u64> {
    Ok(match target {
        Target::Direct(s) => s.newest_release(lineage)?,
        Target::Daemon(c) => {
            let Response::Status(st) = c.call(&Request::Status).await? else {
                bail!("unexpected answer")
            };
            let publisher = hex::encode(lineage.publisher);
            st.releases
                .iter()
                .filter(|r| r.publisher == publisher && r.name == lineage.name)
                .map(|r| r.newest)
                .max()
                .unwrap_or(0)
        }
    })
}

fn parse_ids(v: &[String], flag: &str) -> Result<Vec<BundleId>> {
    v.iter()
        .map(|s| s.parse::<BundleId>().map_err(|e| anyhow!("{flag}: {e}")))
        .collect()
}

/// The view of a bundle for tables and JSON (`quota_bytes`: the store quota, to tell a
/// wanted bundle that can never fit from one that is merely incomplete).
pub fn bundle_view(b: &BundleInfo, quota_bytes: u64) -> view::Bundle {
    use mule_bundle::store::State;
    let state = match &b.failure {
        Some(f) if b.state == State::Failed => format!("failed: {}", f.message),
        Some(f) if b.state == State::RolledBack => format!("rolled_back: {}", f.message),
        _ if b.equivocal => {
            "equivocal: the publisher signed another bundle with this release; not installed"
                .to_string()
        }
        _ if b.superseded && b.state != State::Installed => {
            "superseded: a newer release is known; not installed".to_string()
        }
        _ if b.waiting.is_some() && b.state == State::Complete => {
            format!("waiting: {}", b.waiting.as_deref().unwrap_or_default())
        }
        _ if b.wanted
            && b.state == mule_bundle::store::State::Incomplete
            && b.content_len > quota_bytes =>
        {
            format!(
                "too large: {} bytes exceed the store quota of {quota_bytes}",
                b.content_len
            )
        }
        _ => b.state.as_str().to_string(),
    };
    view::Bundle {
        id: b.id.to_string(),
        name: b.name.clone(),
        version: b.version.clone(),
        priority: b.priority.to_string(),
        pieces_have: b.pieces_have,
        pieces_total: b.pieces_total,
        size: b.content_len,
        state,
        release: b.release,
        wanted: b.wanted,
        published: b.published,
        trusted: b.trusted,
        rate_bytes_per_s: 0.0,
        eta_s: None,
    }
}

async fn bundle_list(cfg: &Config, data_dir: &Path) -> Result<Vec<view::Bundle>> {
    // A data directory no node has used holds no bundles: say so without creating a store
    // there (a script may list bundles before the node's first start).
    if no_node_yet(cfg, data_dir).await {
        return Ok(Vec::new());
    }
    Ok(match target(cfg, data_dir, Access::Read).await? {
        Target::Daemon(mut c) => {
            let Response::Status(st) = c.call(&Request::Status).await? else {
                bail!("unexpected answer")
            };
            st.bundles
        }
        Target::Direct(mut s) => s
            .bundles()?
            .iter()
            .map(|b| bundle_view(b, cfg.store.quota_bytes))
            .collect(),
    })
}

/// Resolves a full id or a unique prefix against the bundles present.
pub(crate) fn resolve(id: &str, list: &[view::Bundle]) -> Result<BundleId> {
    if let Ok(full) = id.parse::<BundleId>() {
        return Ok(full);
    }
    let id = id.to_ascii_lowercase();
    let hits: Vec<&view::Bundle> = list.iter().filter(|b| b.id.starts_with(&id)).collect();
    match hits.as_slice() {
        [one] => Ok(one.id.parse()?),
        [] => bail!("no bundle with id {id:?} in the store (see `mule bundles`)"),
        _ => bail!("{id:?} matches {} bundles; give more digits", hits.len()),
    }
}

async fn manifest_of(id: &str, cfg: &Config, data_dir: &Path) -> Result<VerifiedManifest> {
    let list = bundle_list(cfg, data_dir).await?;
    let id = resolve(id, &list)?;
    match target(cfg, data_dir, Access::Read).await? {
        Target::Daemon(mut c) => {
            let Response::Bytes(b) = c.call(&Request::Manifest { id: id.to_string() }).await?
            else {
                bail!("unexpected answer")
            };
            Ok(VerifiedManifest::decode(&b)?)
        }
        Target::Direct(mut s) => s
            .manifest(&id)?
            .ok_or_else(|| anyhow!("no bundle {id} in the store")),
    }
}

async fn inspect(id: &str, json: bool, cfg: &Config, data_dir: &Path) -> Result<()> {
    let list = bundle_list(cfg, data_dir).await?;
    let full = resolve(id, &list)?;
    let vm = manifest_of(&full.to_string(), cfg, data_dir).await?;
    let info = list
        .into_iter()
        .find(|b| b.id == full.to_string())
        .unwrap_or_default();
    let m = vm.manifest();
    let doc = serde_json::json!({
        "id": full.to_string(),
        "name": m.name,
        "version": m.version,
        "format_version": m.format_version,
        "publisher": hex::encode(m.publisher),
        "created": m.created,
        "expires": m.expires,
        "priority": m.priority.to_string(),
        "replaces": m.lineage.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        "depends": m.dependencies.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        "audience": m.audience,
        "content_len": m.content_len,
        "piece_size": m.piece_size,
        "pieces": vm.piece_count(),
        "content_hash": hex::encode(m.content_hash),
        "metadata": m.metadata.iter().collect::<BTreeMap<_, _>>(),
        "release": m.release,
        "stages": m.stages.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "manifest_bytes": vm.as_bytes().len(),
        "pieces_have": info.pieces_have,
        "state": info.state,
        "wanted": info.wanted,
        "published": info.published,
        "trusted": info.trusted,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let obj = doc.as_object().expect("object");
        for (k, v) in obj {
            // Raw values stay in `--json`; here times are dates and sizes have units.
            let text = match (k.as_str(), v) {
                ("created" | "expires", serde_json::Value::Number(n)) => {
                    n.as_u64().map_or_else(|| n.to_string(), human::date)
                }
                ("expires", serde_json::Value::Null) => "never".to_string(),
                ("content_len" | "piece_size" | "manifest_bytes", serde_json::Value::Number(n)) => {
                    match n.as_u64() {
                        Some(b) if b >= 1024 => format!("{} ({b} bytes)", human::bytes(b)),
                        Some(b) => format!("{b} bytes"),
                        None => n.to_string(),
                    }
                }
                (_, serde_json::Value::String(s)) => s.clone(),
                (_, v) => v.to_string(),
            };
            println!("{k:<15} {text}");
        }
        println!(
            "{:<15} {} {}/{}",
            "progress",
            progress_bar(info.pieces_have, vm.piece_count(), 30),
            info.pieces_have,
            vm.piece_count()
        );
    }
    Ok(())
}

async fn export(id: &str, out: &Path, cfg: &Config, data_dir: &Path) -> Result<()> {
    let list = bundle_list(cfg, data_dir).await?;
    let full = resolve(id, &list)?;
    match target(cfg, data_dir, Access::Read).await? {
        Target::Direct(mut s) => {
            mule_bundle::complete::export_to(&mut s, &full, out)?;
        }
        Target::Daemon(mut c) => {
            let Response::Bytes(b) = c
                .call(&Request::Manifest {
                    id: full.to_string(),
                })
                .await?
            else {
                bail!("unexpected answer")
            };
            let vm = VerifiedManifest::decode(&b)?;
            let tmp = tmp_path(out);
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?,
            );
            let mut hasher = blake3::Hasher::new();
            let result: Result<()> = async {
                for index in 0..vm.piece_count() {
                    let Response::Bytes(piece) = c
                        .call(&Request::ReadPiece {
                            bundle: full.to_string(),
                            index,
                        })
                        .await?
                    else {
                        bail!("unexpected answer")
                    };
                    mule_bundle::verify_piece(&vm, index, &piece)?;
                    hasher.update(&piece);
                    f.write_all(&piece)?;
                }
                if *hasher.finalize().as_bytes() != vm.manifest().content_hash {
                    bail!("assembled content does not match the manifest's content hash");
                }
                let file = f.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                std::fs::rename(&tmp, out)?;
                Ok(())
            }
            .await;
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result?;
        }
    }
    eprintln!("exported {} to {}", full, out.display());
    Ok(())
}

fn tmp_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    out.with_file_name(format!(".{name}.mule-tmp.{}", std::process::id()))
}

fn write_atomic(out: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(out);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(())
}

fn print_bundles(list: &[view::Bundle]) {
    if list.is_empty() {
        println!("no bundles");
        return;
    }
    println!(
        "{:<16} {:<20} {:<10} {:<8} {:>10} {:<24} {:>11} STATE",
        "ID", "NAME", "VERSION", "PRIO", "SIZE", "PROGRESS", "PIECES"
    );
    for b in list {
        // While a bundle downloads: its rate and the time left at that rate.
        let moving = match b.eta_s {
            Some(eta) if b.rate_bytes_per_s > 0.0 => format!(
                " {}, {} left",
                human::rate(b.rate_bytes_per_s),
                human::duration(std::time::Duration::from_secs(eta))
            ),
            _ => String::new(),
        };
        println!(
            "{:<16} {:<20} {:<10} {:<8} {:>10} {:<24} {:>11} {}{}{moving}",
            &b.id[..16],
            b.name,
            b.version,
            b.priority,
            human::bytes(b.size),
            progress_bar(b.pieces_have, b.pieces_total, 20),
            format!("{}/{}", b.pieces_have, b.pieces_total),
            b.state,
            if b.published {
                " (published)"
            } else if b.wanted {
                " (wanted)"
            } else if !b.trusted {
                " (carried, untrusted)"
            } else {
                " (carried)"
            }
        );
    }
}

fn print_neighbours(n: &[view::Neighbour]) {
    if n.is_empty() {
        println!("no neighbours");
        return;
    }
    println!(
        "{:<16} {:<10} {:<32} {:>12} SESSION",
        "PEER", "TRANSPORT", "ADDRESS", "CONTACT"
    );
    for p in n {
        println!(
            "{:<16} {:<10} {:<32} {:>12} {}",
            &p.node_id[..16],
            p.transport,
            p.address,
            human::duration(std::time::Duration::from_secs(p.contact_age_s)),
            if p.in_session { "yes" } else { "no" }
        );
    }
}

fn print_status(st: &view::Status) {
    println!("node        {}", st.node_id);
    println!("listening   {}", st.listen.join(", "));
    println!(
        "uptime      {}",
        human::duration(std::time::Duration::from_secs(st.uptime_s))
    );
    println!(
        "store       {} of {} ({:.1}%)",
        human::bytes(st.store_bytes),
        human::bytes(st.store_quota_bytes),
        100.0 * st.store_bytes as f64 / st.store_quota_bytes.max(1) as f64
    );
    println!(
        "subscribed  {}",
        if st.subscriptions.is_empty() {
            "-".to_string()
        } else {
            st.subscriptions.join(", ")
        }
    );
    println!("sessions    {}", st.sessions);
    if let Some(why) = &st.store_full {
        println!("STORE FULL  {why}");
    }
    println!();
    print_neighbours(&st.neighbours);
    println!();
    print_bundles(&st.bundles);
    print_releases(st);
}

fn print_releases(st: &view::Status) {
    if st.releases.is_empty() {
        return;
    }
    println!();
    println!("releases (name, publisher, installed / newest known):");
    for r in &st.releases {
        let flag = if r.equivocal.is_empty() {
            String::new()
        } else {
            format!(
                "  PUBLISHER KEY FLAGGED: equivocated on release(s) {:?}",
                r.equivocal
            )
        };
        let refused = if r.rollback_refused > 0 {
            format!("  {} rollback(s) refused", r.rollback_refused)
        } else {
            String::new()
        };
        println!(
            "  {:<16} {}  {} / {}{refused}{flag}",
            r.name,
            &r.publisher[..16.min(r.publisher.len())],
            r.installed,
            r.newest
        );
    }
    let c = &st.release_events;
    println!(
        "since start: {} rollback(s) refused, {} equivocation(s), {} rolled back",
        c.rollback_refused, c.equivocations, c.rolled_back
    );
}

async fn media_verb(cmd: MediaCommand, cfg: &Config, data_dir: &Path) -> Result<()> {
    let (report, json) = match cmd {
        MediaCommand::Sync { dir, json } => {
            crate::media::check(&dir)?;
            let mut c = daemon_only(cfg, data_dir, "media sync").await?;
            let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
            let Response::Media(r) = c
                .call(&Request::MediaSync {
                    dir: dir.display().to_string(),
                })
                .await?
            else {
                bail!("unexpected answer")
            };
            (r, json)
        }
        MediaCommand::Write {
            dir,
            bundles,
            channels,
            json,
        } => {
            let ids = if bundles.is_empty() {
                Vec::new()
            } else {
                let list = bundle_list(cfg, data_dir).await?;
                bundles
                    .iter()
                    .map(|b| resolve(b, &list))
                    .collect::<Result<Vec<_>>>()?
            };
            let dir = std::fs::canonicalize(&dir)
                .with_context(|| format!("{}: the medium's directory", dir.display()))?;
            let r = match target(cfg, data_dir, Access::Read).await? {
                Target::Daemon(mut c) => {
                    let Response::Media(r) = c
                        .call(&Request::MediaWrite {
                            dir: dir.display().to_string(),
                            bundles: ids.iter().map(|i| i.to_string()).collect(),
                            channels,
                        })
                        .await?
                    else {
                        bail!("unexpected answer")
                    };
                    r
                }
                Target::Direct(mut s) => {
                    let sel = crate::daemon::MediaSelection {
                        ids,
                        channels,
                        outbound_only: false,
                    };
                    media_write_direct(&mut s, &dir, &sel)?
                }
            };
            (r, json)
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: {} manifests, {} pieces ({}){}{}",
            report.medium,
            report.manifests,
            report.pieces,
            human::bytes(report.bytes),
            if report.manifests_refused + report.pieces_refused > 0 {
                format!(
                    "; refused {} manifests and {} pieces that did not verify or were not wanted",
                    report.manifests_refused, report.pieces_refused
                )
            } else {
                String::new()
            },
            if report.medium_gone {
                "; the medium went away"
            } else {
                ""
            }
        );
    }
    if let Some(first) = report.errors.first() {
        bail!(
            "{} problem(s) with the medium, the first: {first}",
            report.errors.len()
        );
    }
    Ok(())
}

/// `mule media write` without a daemon: straight from the store.
fn media_write_direct(
    s: &mut Store,
    dir: &Path,
    sel: &crate::daemon::MediaSelection,
) -> Result<view::MediaReport> {
    let mut rep = view::MediaReport {
        medium: dir.display().to_string(),
        ..view::MediaReport::default()
    };
    crate::media::init(dir)?;
    for info in s.bundles()? {
        if info.pieces_have == 0 {
            continue;
        }
        let Some(vm) = s.manifest(&info.id)? else {
            continue;
        };
        if !sel.chooses(&vm, info.published, info.wanted) {
            continue;
        }
        let bdir = crate::media::write_manifest(dir, &vm)?;
        rep.manifests += 1;
        for index in 0..vm.piece_count() {
            if crate::media::has_piece(&bdir, &vm, index) {
                continue;
            }
            if let Some(data) = s.read_piece(&info.id, index)? {
                crate::media::write_atomic(&crate::media::piece_path(&bdir, index), &data)?;
                rep.pieces += 1;
                rep.bytes += data.len() as u64;
            }
        }
    }
    crate::media::sync(dir)?;
    Ok(rep)
}
