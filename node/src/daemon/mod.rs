//! The `mule run` daemon: thin tokio drivers around the sans-IO core.
//!
//! ```text
//!  discovery (beacons, mDNS, BLE) ──PeerUp/Down──▶ connection manager ──dial──┐
//!  TCP listener ──accept────────────────────────────────────────────────────────┤
//!                                                                              ▼
//!                                   one task per session: mule_engine::Session
//!                                      │ pieces/manifests ▲ notices (broadcast)
//!                                      ▼                  │
//!                           store thread (redb, batched durable commits)
//!  control socket (mule CLI) ──────────▶ same store handle and node state
//! ```
//!
//! One owner per piece of state: the store thread owns the database; the
//! node-wide scheduling state (piece claims, rarity, penalties, session
//! registry, predictions) sits behind one short-held mutex in [`Ctx`].

mod admission;
mod ble;
mod conn;
mod install;
mod media;
mod progress;
mod session;
mod space;
pub mod store;
mod view;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mule_bundle::store::{Origin, Store, StoreOptions};
use mule_bundle::{PieceRef, TrustList, VerifiedManifest};
use mule_config::Config;
use mule_contacts::{NodeId, NodeIdentity, Prophet, ProphetParams, Timestamp};
use mule_engine::RarityTracker;
use mule_engine::claims::PieceClaims;
use mule_engine::penalty::{PenaltyBook, PenaltyConfig};
use mule_engine::session::{LocalBundle, LocalView, SessionConfig};
use tokio::sync::{broadcast, mpsc, watch};

use crate::lock::{DaemonState as LockState, DirLock, Holder};
use crate::metrics::Metrics;
use mule_contacts::history::{Contact, History};

/// redb page cache of the daemon's store.
pub const STORE_CACHE_BYTES: usize = 4 << 20;

/// Capacity of the store-notice broadcast ring (see where it is created).
const NOTICE_RING: usize = 2048;

/// File of the contact history database inside the data directory.
pub const HISTORY_FILE: &str = "contacts.redb";
/// File of the subscriptions added at run time (`mule subscribe`), one per line.
pub const SUBSCRIPTIONS_FILE: &str = "subscriptions";

/// The effective subscriptions: the configured channels, then the changes made
/// at run time (`+channel` added, `-channel` removed; a bare line is an addition).
pub(crate) fn load_subscriptions(data_dir: &Path, configured: &[String]) -> Vec<String> {
    let mut channels = configured.to_vec();
    let text = std::fs::read_to_string(data_dir.join(SUBSCRIPTIONS_FILE)).unwrap_or_default();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.strip_prefix('-') {
            Some(c) => channels.retain(|x| x != c),
            None => {
                let c = line.strip_prefix('+').unwrap_or(line);
                if !channels.iter().any(|x| x == c) {
                    channels.push(c.to_string());
                }
            }
        }
    }
    channels
}
use crate::view as v;
pub use media::Selection as MediaSelection;
pub use store::{Completion, StoreHandle};

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory could not be created.
    #[error("cannot create data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    /// The data directory's lock file could not be used.
    #[error("cannot lock data directory {0}: {1}")]
    Lock(PathBuf, std::io::Error),
    /// Another daemon runs on this data directory.
    #[error(
        "another mule daemon (pid {pid}) is already running for data directory {dir} (see `mule status`)"
    )]
    AlreadyRunning {
        /// The data directory.
        dir: PathBuf,
        /// The other daemon's process id.
        pid: u32,
    },
    /// Another process kept the store longer than `store.lock_wait_ms`.
    #[error(
        "the store in {dir} is still in use by {holder} after waiting {waited_ms} ms (store.lock_wait_ms)"
    )]
    StoreBusy {
        /// The data directory.
        dir: PathBuf,
        /// Who holds it, in words.
        holder: String,
        /// How long the daemon waited.
        waited_ms: u64,
    },
    /// The node key could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] mule_contacts::identity::IdentityError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] mule_bundle::store::StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    /// The control socket could not be bound.
    #[error("control socket {0}: {1}")]
    Control(PathBuf, std::io::Error),
    /// Discovery failed to start.
    #[error("discovery: {0}")]
    Discovery(String),
}

/// A change every session must hear about.
#[derive(Debug, Clone)]
pub enum Notice {
    /// A piece was stored (from any session or the CLI).
    PieceStored(PieceRef),
    /// A manifest was stored (shared: every session's receiver would clone it).
    ManifestStored(Arc<LocalBundle>),
    /// A stored piece failed its hash and was dropped: fetch it again.
    PieceLost(PieceRef),
}

/// A session as the registry knows it.
struct SessionEntry {
    sid: u64,
    initiated_by_us: bool,
    close: mpsc::Sender<()>,
    transport: &'static str,
    address: String,
    since: Instant,
}

/// A neighbour as discovery reported it.
#[derive(Clone, Debug)]
pub(crate) struct NeighbourInfo {
    pub transport: mule_contacts::Transport,
    pub addr: mule_contacts::PeerAddr,
    pub since: Instant,
    pub since_wall: Timestamp,
    /// Bytes exchanged in sessions during this contact.
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// Node-wide state shared by sessions (held briefly, never across `.await`).
pub(crate) struct Shared {
    pub claims: PieceClaims,
    pub rarity: RarityTracker,
    pub penalties: PenaltyBook,
    /// How far each peer's holdings claims held (weighs its advertised predictabilities).
    pub credibility: mule_engine::credibility::CredibilityBook,
    sessions: HashMap<NodeId, SessionEntry>,
    pub dialing: HashMap<NodeId, Instant>,
    pub neighbours: BTreeMap<NodeId, NeighbourInfo>,
    pub prophet: Prophet,
    pub channels: Vec<String>,
    /// Node ids of statically configured peers, learnt from their sessions.
    pub static_nodes: HashMap<SocketAddr, NodeId>,
}

/// Everything a session task or the control server needs.
pub struct Ctx {
    pub(crate) identity: NodeIdentity,
    pub(crate) cfg: Config,
    pub(crate) store: StoreHandle,
    pub(crate) shared: Mutex<Shared>,
    pub(crate) notices: broadcast::Sender<Notice>,
    pub(crate) install: tokio::sync::Notify,
    pub(crate) metrics: Arc<Metrics>,
    origin: Instant,
    next_sid: AtomicU64,
    pub(crate) listen: Vec<SocketAddr>,
    started: Instant,
    pub(crate) session_cfg: SessionConfig,
    pub(crate) discovery: Mutex<Option<mule_contacts::discovery::Discovery>>,
    history: Option<Arc<History>>,
    data_dir: PathBuf,
    /// Stored-byte rates per bundle (rate and ETA in `mule status`).
    pub(crate) progress: Mutex<progress::Progress>,
    /// Whether the store is full (disk or quota): sessions stop requesting while it is.
    pub(crate) store_full: watch::Sender<bool>,
    space: Mutex<space::Space>,
}

impl Ctx {
    /// Milliseconds since the daemon started (the sans-IO core's clock).
    pub(crate) fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// The instant of a core time.
    pub(crate) fn instant(&self, ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.origin + Duration::from_millis(ms))
    }

    pub(crate) fn node_id(&self) -> NodeId {
        self.identity.id()
    }

    fn new_sid(&self) -> u64 {
        self.next_sid.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The starting view of a new session.
    pub(crate) async fn local_view(&self) -> Result<LocalView, store::CallError> {
        let snap = self.store.snapshot().await?;
        let lineages = self.store.lineages().await?;
        let me = self.node_id();
        let sh = self.shared.lock().expect("shared state");
        let mut view = LocalView {
            channels: sh.channels.clone(),
            predictabilities: sh
                .prophet
                .top(mule_engine::summary::MAX_PREDICTABILITIES)
                .into_iter()
                .map(|(n, p)| (n, p as f32))
                .collect(),
            carry_quota_bytes: self.cfg.carry.quota_bytes,
            peer_weights: sh.credibility.discounted(),
            ..LocalView::default()
        };
        // Room left for bundles carried for others (neither wanted nor ours).
        let carried: u64 = snap
            .iter()
            .filter(|(_, _, i)| !i.wanted && !i.published)
            .map(|(_, _, i)| i.bytes)
            .sum();
        view.carry_quota_bytes = self.cfg.carry.quota_bytes.saturating_sub(carried);
        for (vm, bits, info) in snap {
            if info.trusted && view::wanted_by(&vm, &me, &[]) {
                view.want_bundles.push(vm.id());
            }
            view.bundles.insert(vm.id(), view::local_bundle(&vm, &bits));
        }
        view.newest_releases = view::newest_releases(&lineages);
        Ok(view)
    }

    /// Stores a verified manifest, marks it wanted when it is for us, and
    /// tells every session. Returns whether it was new.
    pub(crate) async fn accept_manifest(
        &self,
        vm: VerifiedManifest,
        origin: Origin,
    ) -> Result<bool, store::CallError> {
        let inserted = self.store.insert_manifest(vm.clone(), origin).await?;
        let wanted = {
            let sh = self.shared.lock().expect("shared state");
            origin == Origin::Received && view::wanted_by(&vm, &self.node_id(), &sh.channels)
        };
        if wanted {
            // Untrusted bundles cannot be wanted; the store says so and that is fine.
            if let Err(e) = self.store.set_wanted(vm.id(), true).await {
                tracing::debug!(bundle = %vm.id().short(), error = %e, "not wanted");
            }
        }
        let new = inserted == mule_bundle::store::Inserted::New;
        if new {
            let bits = mule_bundle::Bitfield::new(vm.piece_count());
            let _ = self
                .notices
                .send(Notice::ManifestStored(Arc::new(view::local_bundle(
                    &vm, &bits,
                ))));
            tracing::info!(bundle = %vm.id().short(), name = %vm.manifest().name,
                version = %vm.manifest().version, wanted, "manifest stored");
        }
        Ok(new)
    }

    /// Re-evaluates which bundles are wanted after a subscription change.
    pub(crate) async fn rewant(&self) -> Result<(), store::CallError> {
        let channels = self.shared.lock().expect("shared state").channels.clone();
        let me = self.node_id();
        for (vm, _, info) in self.store.snapshot().await? {
            if info.published || !info.trusted {
                continue;
            }
            let want = view::wanted_by(&vm, &me, &channels);
            if want != info.wanted {
                self.store.set_wanted(vm.id(), want).await?;
            }
        }
        self.install.notify_one();
        Ok(())
    }

    /// Current state for `mule status`.
    pub(crate) async fn status(&self) -> Result<v::Status, store::CallError> {
        let bundles = self.store.bundles().await?;
        let usage = self.store.usage().await?;
        let releases = self.store.lineages().await?;
        let sh = self.shared.lock().expect("shared state");
        let mut neighbours: Vec<v::Neighbour> = sh
            .neighbours
            .iter()
            .map(|(id, n)| v::Neighbour {
                node_id: id.to_string(),
                transport: n.transport.name().to_string(),
                address: n.addr.to_string(),
                contact_age_s: n.since.elapsed().as_secs(),
                in_session: sh.sessions.contains_key(id),
                session_transport: sh.sessions.get(id).map(|e| e.transport.to_string()),
            })
            .collect();
        // Peers in session that discovery does not know (static peers, incoming).
        for (id, e) in sh
            .sessions
            .iter()
            .filter(|(id, _)| !sh.neighbours.contains_key(id))
        {
            neighbours.push(v::Neighbour {
                node_id: id.to_string(),
                transport: "session".to_string(),
                address: e.address.clone(),
                contact_age_s: e.since.elapsed().as_secs(),
                in_session: true,
                session_transport: Some(e.transport.to_string()),
            });
        }
        Ok(v::Status {
            node_id: self.node_id().to_string(),
            listen: self.listen.iter().map(|a| a.to_string()).collect(),
            uptime_s: self.started.elapsed().as_secs(),
            neighbours,
            bundles: {
                let now = self.now_ms();
                let mut pr = self.progress.lock().expect("progress");
                bundles
                    .iter()
                    .map(|b| {
                        let mut view = crate::commands::bundle_view(b, self.cfg.store.quota_bytes);
                        if b.pieces_have < b.pieces_total {
                            view.rate_bytes_per_s = pr.rate(&b.id, now).unwrap_or(0.0);
                            let left = b.content_len.saturating_sub(b.bytes);
                            view.eta_s = progress::eta_s(left, view.rate_bytes_per_s);
                        } else {
                            pr.forget(&b.id);
                        }
                        view
                    })
                    .collect()
            },
            store_full: self.store_full_reason(),
            store_bytes: usage.total,
            store_quota_bytes: self.cfg.store.quota_bytes,
            subscriptions: sh.channels.clone(),
            sessions: sh.sessions.len(),
            releases,
            release_events: self.metrics.release_counts(),
        })
    }
}

impl Ctx {
    /// Adds or removes a subscription, persists it and re-evaluates wants.
    /// Removing a channel the node does not subscribe to is an error that
    /// names the subscriptions it has; adding one twice is not.
    pub(crate) async fn set_subscription(&self, channel: &str, on: bool) -> std::io::Result<()> {
        if channel.is_empty() || channel.len() > 255 || channel.contains('\n') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a channel name is 1 to 255 bytes, one line",
            ));
        }
        let channels = {
            let mut sh = self.shared.lock().expect("shared state");
            if !on && !sh.channels.iter().any(|c| c == channel) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "not subscribed to {channel:?} (subscriptions: {})",
                        if sh.channels.is_empty() {
                            "none".to_string()
                        } else {
                            sh.channels.join(", ")
                        }
                    ),
                ));
            }
            sh.channels.retain(|c| c != channel);
            if on {
                sh.channels.push(channel.to_string());
            }
            sh.channels.clone()
        };
        let configured = &self.cfg.subscriptions.channels;
        let added = channels
            .iter()
            .filter(|c| !configured.contains(c))
            .map(|c| format!("+{c}\n"));
        let removed = configured
            .iter()
            .filter(|c| !channels.contains(c))
            .map(|c| format!("-{c}\n"));
        let text: String = added.chain(removed).collect();
        let path = self.data_dir.join(SUBSCRIPTIONS_FILE);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        if let Err(e) = self.rewant().await {
            tracing::warn!(error = %e, "re-evaluating wanted bundles failed");
        }
        Ok(())
    }

    /// Accounts a finished session: its bytes go to the current contact with
    /// the peer; a session with a peer discovery does not know (a static
    /// peer) is a contact of its own in the history.
    pub(crate) fn record_session(
        &self,
        peer: NodeId,
        transport: &'static str,
        start: Timestamp,
        sent: u64,
        received: u64,
    ) {
        let configured = {
            let mut sh = self.shared.lock().expect("shared state");
            if let Some(n) = sh.neighbours.get_mut(&peer) {
                n.bytes_sent += sent;
                n.bytes_received += received;
                return;
            }
            sh.static_nodes.values().any(|n| *n == peer)
        };
        let transport = if transport == "bluetooth" {
            mule_contacts::Transport::Ble
        } else {
            mule_contacts::Transport::Beacon
        };
        self.record_history(Contact {
            peer,
            start,
            end: Timestamp::now(),
            transport,
            bytes_sent: sent,
            bytes_received: received,
            // A configured static peer is no stranger; a node that merely dialled us is
            // (it goes first when the history is full).
            discovered: configured,
        });
    }

    /// A contact ended (`PeerDown`): into the history.
    pub(crate) fn record_contact(&self, peer: NodeId, n: NeighbourInfo) {
        self.record_history(Contact {
            peer,
            start: n.since_wall,
            end: Timestamp::now(),
            transport: n.transport,
            bytes_sent: n.bytes_sent,
            bytes_received: n.bytes_received,
            discovered: true,
        });
    }

    fn record_history(&self, c: Contact) {
        let Some(h) = self.history.clone() else {
            return;
        };
        tokio::task::spawn_blocking(move || {
            if let Err(e) = h.record(&c) {
                tracing::warn!(error = %e, "recording a contact failed");
            }
        });
    }

    /// Contact statistics and predictions for `mule contacts`.
    pub(crate) async fn contacts_view(&self) -> Vec<v::PeerContacts> {
        let Some(h) = self.history.clone() else {
            return Vec::new();
        };
        let stats =
            tokio::task::spawn_blocking(move || -> Vec<(NodeId, mule_contacts::history::Stats)> {
                let peers = h.peers().unwrap_or_default();
                peers
                    .into_iter()
                    .filter_map(|p| h.stats(&p).ok().flatten().map(|s| (p, s)))
                    .collect()
            })
            .await
            .unwrap_or_default();
        let sh = self.shared.lock().expect("shared state");
        let now = Timestamp::now();
        stats
            .into_iter()
            .map(|(p, s)| v::PeerContacts {
                node_id: p.to_string(),
                contacts: s.count as u64,
                median_contact_s: s.median_duration.as_secs_f64(),
                median_intercontact_s: s
                    .median_inter_contact
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0),
                last_seen_s_ago: now.since(s.last_seen).as_secs(),
                bytes: s.bytes,
                predictability: sh.prophet.predictability(&p),
            })
            .collect()
    }
}

/// How the daemon (and the CLI, when no daemon runs) opens the store.
pub fn store_options(cfg: &Config) -> StoreOptions {
    let mut trust = TrustList::new();
    for k in &cfg.trust.publishers {
        trust.insert(*k.as_bytes());
    }
    StoreOptions {
        quota_bytes: cfg.store.quota_bytes,
        carry_quota_bytes: if cfg.trust.carry_untrusted {
            cfg.trust.untrusted_quota_bytes
        } else {
            0
        },
        carry_untrusted: cfg.trust.carry_untrusted,
        trust,
        // Pieces are written once and read rarely: a small page cache keeps
        // the daemon's memory within a gateway's means (RSS target 32 MiB).
        cache_bytes: STORE_CACHE_BYTES,
        ..StoreOptions::default()
    }
}

/// Resolved start-up parameters.
pub struct RunOptions {
    /// The configuration.
    pub config: Config,
    /// The data directory.
    pub data_dir: PathBuf,
}

/// Runs a node until `shutdown` completes; then closes sessions, flushes the
/// store and returns. Takes the data directory's lock first ([`lock_data_dir`]) and
/// releases it on return.
pub async fn run(
    opts: RunOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let deadline = Instant::now() + opts.config.store.lock_wait();
    let mut lock = lock_data_dir(&opts.data_dir, deadline).await?;
    run_locked(opts, &mut lock, shutdown).await
}

/// [`run`] with the data directory's lock already held by the caller, who keeps it: `mule
/// run` releases it only when the process exits, so that a CLI never finds the lock free
/// while the daemon's process is still there.
pub async fn run_locked(
    opts: RunOptions,
    dir_lock: &mut DirLock,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let RunOptions {
        config: cfg,
        data_dir,
    } = opts;
    // Another opener of the store that does not take the lock (an older `mule`) is waited
    // for as long as a lock holder would be.
    let lock_deadline = Instant::now() + cfg.store.lock_wait();
    let identity = NodeIdentity::load_or_create(&data_dir)?;
    let node = identity.id();
    tracing::info!(node = %node, data_dir = %data_dir.display(), "starting");

    let store_opts = store_options(&cfg);
    let store = open_store(&data_dir, store_opts, lock_deadline).await?;
    let mut completion = Completion {
        installer: install::installer(&cfg, &data_dir, *node.as_bytes()),
        install: cfg.install.clone(),
        on_release: Box::new(|_| {}),
    };
    // The ring is allocated up front (slots of ~70 bytes): 2048 notices are ~0.4 s of pieces
    // at 300 MB/s, and a session that lags further only misses some Have updates.
    let (notices, _) = broadcast::channel(NOTICE_RING);
    let metrics = Arc::new(Metrics::new());
    let on_dropped: store::OnDropped = {
        let (notices, metrics) = (notices.clone(), metrics.clone());
        Box::new(move |bad| {
            for b in bad {
                // The store logged it (bundle, index, reason); count it and fetch it again.
                metrics.inc_pieces_corrupt();
                let _ = notices.send(Notice::PieceLost(PieceRef {
                    bundle: b.bundle,
                    index: b.index,
                }));
            }
        })
    };
    completion.on_release = {
        let metrics = metrics.clone();
        // The store logged each event; count it.
        Box::new(move |events| events.iter().for_each(|e| metrics.inc_release_event(e)))
    };
    let (store_handle, store_thread) = StoreHandle::spawn(store, completion, on_dropped);

    // Session listeners: every configured address, one shared port.
    let (listeners, listen) = conn::bind_all(&cfg.session.listen).await?;
    let control_socket = cfg.control.socket_in(&data_dir);
    let control = crate::control::bind_path(&control_socket)
        .await
        .map_err(|e| Error::Control(cfg.control.socket_in(&data_dir), e))?;

    let p = &cfg.prediction;
    let params = ProphetParams {
        p_encounter_max: p.p_encounter_max,
        p_encounter_first: p.p_encounter_first,
        p_first_threshold: p.p_first_threshold,
        delta: p.delta,
        beta: p.beta,
        gamma: p.gamma,
        time_unit: p.time_unit(),
        i_typ: p.i_typ(),
        ..ProphetParams::default()
    };
    let session_cfg = SessionConfig {
        keepalive_interval_ms: cfg.session.keepalive_ms,
        idle_timeout_ms: cfg.session.idle_timeout_ms,
        bloom_fp_rate: cfg.summary.false_positive_rate,
        // No peer can carry more for us than we could hold ourselves.
        max_peer_carry_quota_bytes: cfg.store.quota_bytes,
        ..SessionConfig::default()
    };
    let history = match History::open(&data_dir.join(HISTORY_FILE)) {
        Ok(h) => Some(Arc::new(h)),
        Err(e) => {
            // A full disk at start must not cost the history for the life of the process:
            // it is opened at its first use once that works.
            tracing::warn!(error = %e, "contact history unavailable for now; predictions start empty");
            Some(Arc::new(History::open_deferred(
                &data_dir.join(HISTORY_FILE),
            )))
        }
    };
    let channels = load_subscriptions(&data_dir, &cfg.subscriptions.channels);
    metrics.set_store_quota_bytes(cfg.store.quota_bytes);
    let ctx = Arc::new(Ctx {
        shared: Mutex::new(Shared {
            claims: PieceClaims::new(),
            rarity: RarityTracker::new(64),
            penalties: PenaltyBook::new(PenaltyConfig::default()),
            credibility: Default::default(),
            sessions: HashMap::new(),
            dialing: HashMap::new(),
            neighbours: BTreeMap::new(),
            prophet: Prophet::new(node, params),
            channels,
            static_nodes: HashMap::new(),
        }),
        discovery: Mutex::new(None),
        history,
        data_dir: data_dir.clone(),
        progress: Mutex::new(progress::Progress::default()),
        store_full: watch::channel(false).0,
        space: Mutex::new(space::Space::default()),
        identity: identity.clone(),
        store: store_handle,
        notices,
        install: tokio::sync::Notify::new(),
        metrics: metrics.clone(),
        origin: Instant::now(),
        next_sid: AtomicU64::new(0),
        listen: listen.clone(),
        started: Instant::now(),
        session_cfg,
        cfg,
    });
    // Bundles completed before a restart are installed now.
    ctx.install.notify_one();

    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let mut tasks = tokio::task::JoinSet::new();
    // One pool of unauthenticated slots for every listener (v4 and v6 alike).
    let admission = admission::Admission::new();
    for l in listeners {
        tasks.spawn(conn::accept_loop(ctx.clone(), l, admission.clone(), stop()));
    }
    tasks.spawn(crate::control_server::serve(ctx.clone(), control, stop()));
    tasks.spawn(installer(ctx.clone(), stop()));
    tasks.spawn(media::watch(ctx.clone(), stop()));
    tasks.spawn(space::watch(ctx.clone(), stop()));
    if ctx.cfg.metrics.enabled {
        match tokio::net::TcpListener::bind(ctx.cfg.metrics.listen).await {
            Ok(l) => {
                tracing::info!(listen = %ctx.cfg.metrics.listen, "metrics endpoint up");
                tasks.spawn(crate::metrics::serve(l, metrics.clone(), stop()));
            }
            Err(e) => return Err(Error::Listen(ctx.cfg.metrics.listen.to_string(), e)),
        }
    }
    #[cfg(feature = "bluetooth")]
    if ctx.cfg.discovery.bluetooth {
        tasks.spawn(ble::accept_loop(ctx.clone(), stop()));
    }
    let port = listen.first().map(|a| a.port()).unwrap_or(0);
    let events = conn::start_discovery(ctx.clone(), port, stop()).await;
    tasks.spawn(conn::manage(ctx.clone(), events, stop()));

    set_lock_state(dir_lock, LockState::Running);
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    tracing::info!(node = %node, listen = ?listen, "ready");

    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    let mut tick = tokio::time::interval(
        watchdog
            .unwrap_or(Duration::from_secs(5))
            .min(Duration::from_secs(5)),
    );
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                if watchdog.is_some() {
                    notify_systemd(&[sd_notify::NotifyState::Watchdog]);
                }
                let status = {
                    let sh = ctx.shared.lock().expect("shared state");
                    format!("{} neighbours, {} sessions", sh.neighbours.len(), sh.sessions.len())
                };
                notify_systemd(&[sd_notify::NotifyState::Status(&status)]);
            }
        }
    }

    tracing::info!("shutting down: closing sessions and flushing the store");
    set_lock_state(dir_lock, LockState::Stopping);
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    let deadline = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = tasks.join_next() => if r.is_none() { break },
            _ = &mut deadline => {
                tracing::warn!("tasks still running after 5 s; aborting them");
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
    // Commit what is queued and stop the store thread, even if a session task
    // that is still winding down holds a handle.
    if tokio::time::timeout(Duration::from_secs(10), ctx.store.shutdown())
        .await
        .is_err()
    {
        tracing::error!("the store did not finish its queue within 10 s");
    }
    drop(ctx);
    let _ = tokio::task::spawn_blocking(move || store_thread.join()).await;
    let _ = std::fs::remove_file(&control_socket);
    tracing::info!("stopped");
    Ok(())
}

/// Creates the data directory if needed and takes its lock (see [`crate::lock`]). A CLI
/// verb that has the store open, or a daemon that is stopping, is waited for until
/// `deadline` (said once in the log); a daemon that is starting or running is another
/// daemon on the same directory, and this one gives up at once.
pub async fn lock_data_dir(dir: &Path, deadline: Instant) -> Result<DirLock, Error> {
    crate::paths::ensure_dir(dir).map_err(|e| Error::DataDir(dir.to_path_buf(), e))?;
    let me = Holder::daemon(LockState::Starting);
    let lock_err = |e| Error::Lock(dir.to_path_buf(), e);
    let holder = match DirLock::try_acquire(dir, &me).map_err(lock_err)? {
        Ok(l) => return Ok(l),
        Err(h) => h,
    };
    let other_daemon = |h: &Holder| match h {
        // (Our own line, once the waiting thread has taken the lock, is not another daemon.)
        Holder::Daemon { pid, state }
            if *state != LockState::Stopping
                && *pid != std::process::id()
                && crate::lock::alive(*pid) =>
        {
            Some(*pid)
        }
        _ => None,
    };
    if let Some(pid) = other_daemon(&holder) {
        return Err(Error::AlreadyRunning {
            dir: dir.to_path_buf(),
            pid,
        });
    }
    let started = Instant::now();
    tracing::info!(holder = %holder, wait_ms = deadline.saturating_duration_since(started).as_millis() as u64,
        "the store is in use; waiting for it");
    // A blocked flock is handed the lock as soon as it is released, ahead of a loop of CLI
    // calls that each try once. If this daemon gives up, the thread drops the lock again.
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let (d, m) = (dir.to_path_buf(), me.clone());
    std::thread::spawn(move || {
        let _ = tx.send(DirLock::acquire_blocking(&d, &m));
    });
    let mut check = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            r = &mut rx => {
                let l = r
                    .map_err(|_| lock_err(std::io::Error::other("lock thread ended")))?
                    .map_err(lock_err)?;
                tracing::info!(waited_ms = started.elapsed().as_millis() as u64, "store lock taken");
                return Ok(l);
            }
            _ = check.tick() => {
                let h = crate::lock::holder(dir);
                if let Some(pid) = other_daemon(&h) {
                    return Err(Error::AlreadyRunning { dir: dir.to_path_buf(), pid });
                }
                if Instant::now() >= deadline {
                    return Err(Error::StoreBusy {
                        dir: dir.to_path_buf(),
                        holder: h.to_string(),
                        waited_ms: started.elapsed().as_millis() as u64,
                    });
                }
            }
        }
    }
}

/// Opens the store; while another process has it open (one that does not take the data
/// directory's lock, such as an older `mule`), retries until `deadline`.
async fn open_store(dir: &Path, opts: StoreOptions, deadline: Instant) -> Result<Store, Error> {
    let mut said = false;
    loop {
        match Store::open(dir, opts.clone()) {
            Err(mule_bundle::store::StoreError::Locked(p)) if Instant::now() < deadline => {
                if !said {
                    tracing::info!(store = %p.display(), "the store is open in another process; waiting for it");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return Ok(r?),
        }
    }
}

fn set_lock_state(lock: &mut DirLock, state: LockState) {
    if let Err(e) = lock.set(&Holder::daemon(state)) {
        tracing::debug!(error = %e, "cannot update the lock file");
    }
}

fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    let _ = sd_notify::notify(states);
}

/// Installs completed bundles whenever a piece completes one (or on start), every minute
/// (install windows, retries), and when a waiting release's stage opens.
async fn installer(ctx: Arc<Ctx>, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    let mut wait = Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ctx.install.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        wait = Duration::from_secs(60);
        match ctx.store.install_pending().await {
            Ok(round) => {
                if let Some(at) = round.next_wake {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    wait = wait.min(Duration::from_secs(at.saturating_sub(now)));
                }
                for (id, r) in round.done {
                    match r {
                        Ok(path) => {
                            tracing::info!(bundle = %id.short(), path = %path.display(), "bundle complete and installed")
                        }
                        Err(e) => {
                            tracing::warn!(bundle = %id.short(), error = %e, "install failed; retried later with backoff")
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "install check failed"),
        }
        if let Ok(infos) = ctx.store.bundles().await {
            ctx.metrics.set_bundle_states(&infos);
        }
        if let Ok(u) = ctx.store.usage().await {
            ctx.metrics.set_store_bytes(u.total);
        }
    }
}
