//! `mule-discover`: runs the real discovery service and prints one JSON object per line on
//! stdout. Used by the network-namespace tests and the discovery benchmark; handy by hand.
//!
//! ```text
//! mule-discover [--data-dir DIR] [--session-port N] [--beacon-port N] [--iface NAME]...
//!               [--silence-ms N] [--interval-min-ms N] [--keepalive-ms N] [--interval-max-ms N]
//!               [--mdns-hold-ms N] [--no-beacons] [--no-mdns] [--no-ble] [--no-ipv4] [--no-ipv6]
//!               [--counters-ms N] [--log]
//! ```
//! Lines: `{"event":"ready","node":..}`, `{"event":"up","node":..,"transport":..,"addr":..}`,
//! `{"event":"changed",..}`, `{"event":"down","node":..}`, and with `--counters-ms` periodic
//! `{"event":"counters",..}`. Every line has `"t_ms"`, milliseconds since the Unix epoch.
//! Stops on SIGINT/SIGTERM. Without `--data-dir` the node key is fresh and not stored; with it,
//! the key and the beacon replay window (`DIR/beacon-replay`) are kept across restarts.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use mule_contacts::beacon::{DropReason, HoldingsDigest};
use mule_contacts::{Discovery, DiscoveryConfig, Event, NodeIdentity, Timestamp};

/// The replay window's file in `--data-dir` (the daemon uses the same name in its data dir).
const REPLAY_FILE: &str = "beacon-replay";

fn usage(msg: &str) -> ! {
    eprintln!("mule-discover: {msg} (see the source header for options)");
    std::process::exit(2)
}

fn main() {
    let mut cfg = DiscoveryConfig::default();
    let mut data_dir: Option<PathBuf> = None;
    let mut counters_every: Option<Duration> = None;
    let mut log = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| -> String {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        let mut ms = |name: &str| -> Duration {
            let v = val(name);
            Duration::from_millis(
                v.parse()
                    .unwrap_or_else(|_| usage(&format!("{name}: {v:?} is not a number"))),
            )
        };
        match a.as_str() {
            "--data-dir" => data_dir = Some(PathBuf::from(val("--data-dir"))),
            "--session-port" => {
                cfg.session_port = val("--session-port")
                    .parse()
                    .unwrap_or_else(|_| usage("bad --session-port"))
            }
            "--beacon-port" => {
                cfg.beacon_port = val("--beacon-port")
                    .parse()
                    .unwrap_or_else(|_| usage("bad --beacon-port"))
            }
            "--iface" => cfg.interfaces.push(val("--iface")),
            "--silence-ms" => cfg.table.silence = ms("--silence-ms"),
            "--interval-min-ms" => cfg.interval.min = ms("--interval-min-ms"),
            "--keepalive-ms" => cfg.interval.keepalive = ms("--keepalive-ms"),
            "--interval-max-ms" => cfg.interval.max = ms("--interval-max-ms"),
            "--mdns-hold-ms" => cfg.table.mdns_hold = ms("--mdns-hold-ms"),
            "--counters-ms" => counters_every = Some(ms("--counters-ms")),
            "--no-beacons" => cfg.beacons = false,
            "--no-mdns" => cfg.mdns = false,
            "--no-ble" => cfg.bluetooth = false,
            "--no-ipv4" => cfg.ipv4 = false,
            "--no-ipv6" => cfg.ipv6 = false,
            "--log" => log = true,
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if log {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "mule_contacts=debug".into()),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    cfg.replay_state = data_dir.as_ref().map(|d| d.join(REPLAY_FILE));
    let identity = match &data_dir {
        Some(d) => NodeIdentity::load_or_create(d),
        None => NodeIdentity::generate(),
    }
    .unwrap_or_else(|e| usage(&e.to_string()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(cfg, identity, counters_every));
}

fn emit(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn run(cfg: DiscoveryConfig, identity: NodeIdentity, counters_every: Option<Duration>) {
    let (_digest_tx, digest_rx) = tokio::sync::watch::channel(HoldingsDigest::default());
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let (disc, mut events) = match Discovery::start(cfg, identity, digest_rx, shutdown).await {
        Ok(x) => x,
        Err(e) => usage(&e.to_string()),
    };
    emit(format!(
        r#"{{"event":"ready","node":"{}","t_ms":{}}}"#,
        disc.node(),
        Timestamp::now().0
    ));
    let mut tick = tokio::time::interval(counters_every.unwrap_or(Duration::from_secs(3600)));
    loop {
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                let t = Timestamp::now().0;
                emit(match ev {
                    Event::PeerUp { node, transport, addr, .. } => format!(
                        r#"{{"event":"up","node":"{node}","transport":"{}","addr":"{addr}","t_ms":{t}}}"#,
                        transport.name()
                    ),
                    Event::PeerChanged { node, transport, addr, .. } => format!(
                        r#"{{"event":"changed","node":"{node}","transport":"{}","addr":"{addr}","t_ms":{t}}}"#,
                        transport.name()
                    ),
                    Event::PeerDown { node } => {
                        format!(r#"{{"event":"down","node":"{node}","t_ms":{t}}}"#)
                    }
                });
            }
            _ = tick.tick(), if counters_every.is_some() => {
                let c = disc.counters();
                let dropped: Vec<String> = DropReason::ALL
                    .iter()
                    .map(|r| format!(r#""{}":{}"#, r.name(), c.dropped(*r)))
                    .collect();
                emit(format!(
                    r#"{{"event":"counters","sent":{},"sent_bytes":{},"accepted":{},"send_errors":{},"mdns":{},"link_events":{},"dropped":{{{}}},"t_ms":{}}}"#,
                    c.beacons_sent,
                    c.beacon_bytes_sent,
                    c.beacons_accepted,
                    c.send_errors,
                    c.mdns_observations,
                    c.link_events,
                    dropped.join(","),
                    Timestamp::now().0
                ));
            }
        }
    }
    disc.stopped().await;
}
