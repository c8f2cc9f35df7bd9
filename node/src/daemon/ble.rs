//! The Bluetooth transport of sessions: an L2CAP LE listener and connector
//! around `mule_contacts::bluetooth`, giving the same [`Conn`] TCP sessions
//! get.
//!
//! Both ends are bound to the configured adapter (`discovery.bluetooth_adapter`,
//! else BlueZ's default adapter): with several adapters in one machine, a
//! listener on "any" address would take the PSM of all of them, and a second
//! node on the same machine could not listen at all. While the adapter cannot
//! be found (no `bluetoothd` yet, adapter missing) the listener retries quietly;
//! discovery is the part that warns once. A bound listener survives the adapter
//! being powered off and on.

use std::sync::Arc;
#[cfg(feature = "bluetooth")]
use std::time::Duration;

use mule_contacts::PeerAddr;
#[cfg(feature = "bluetooth")]
use mule_engine::session::Role;

use super::Ctx;
use super::session::Conn;

/// How long the listener waits before looking for its adapter again.
#[cfg(feature = "bluetooth")]
const BIND_RETRY: Duration = Duration::from_secs(3);

/// Accepts Bluetooth L2CAP sessions on the configured adapter until `stop`.
/// Without Bluetooth it keeps trying to bind in the background (debug logs
/// only: discovery already warned once); other transports are not affected.
#[cfg(feature = "bluetooth")]
pub async fn accept_loop(ctx: Arc<Ctx>, stop: impl std::future::Future<Output = ()>) {
    let psm = mule_contacts::discovery::DEFAULT_BLE_PSM;
    let adapter = ctx.cfg.discovery.bluetooth_adapter.clone();
    tokio::pin!(stop);
    let l = loop {
        let bound = async {
            let local = mule_contacts::bluetooth::adapter_address(adapter.as_deref()).await?;
            let l = mule_contacts::bluetooth::BleListener::bind_on(local, psm).await?;
            Ok::<_, std::io::Error>((l, local))
        };
        match bound.await {
            Ok((l, local)) => {
                tracing::info!(psm, adapter = ?adapter, address = %local, "Bluetooth L2CAP session listener up");
                break l;
            }
            Err(e) => {
                tracing::debug!(error = %e, psm, adapter = ?adapter, "Bluetooth session listener unavailable; retrying");
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(BIND_RETRY) => {}
        }
    };
    loop {
        tokio::select! {
            _ = &mut stop => return,
            r = l.accept() => match r {
                Ok((stream, addr)) => {
                    tracing::debug!(device = %addr, "Bluetooth session accepted");
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let conn = Conn::bluetooth(Box::new(stream), addr.to_string());
                        super::session::run(ctx, conn, Role::Responder, None).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Bluetooth accept failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// One Bluetooth dial at a time per node: the kernel runs one LE connection
/// attempt per adapter anyway, and dials that pile up while a peer is out of
/// range would all complete when it is back, as duplicate sessions.
#[cfg(feature = "bluetooth")]
static DIALING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Opens an L2CAP LE session stream to a neighbour's advertised PSM, from the
/// configured adapter. Gives up before the connection manager forgets the dial
/// (`2 × CONNECT_TIMEOUT`), so it never runs two dials to the same peer.
#[cfg(feature = "bluetooth")]
pub async fn connect(ctx: &Arc<Ctx>, peer: &PeerAddr) -> Result<Conn, String> {
    let PeerAddr::Ble { addr, psm } = peer else {
        return Err(format!("not a Bluetooth address: {peer}"));
    };
    let Ok(_one) = DIALING.try_lock() else {
        return Err("another Bluetooth connect is in progress".into());
    };
    let adapter = ctx.cfg.discovery.bluetooth_adapter.as_deref();
    let limit = super::conn::CONNECT_TIMEOUT * 2 - Duration::from_millis(500);
    let dial = async {
        let local = mule_contacts::bluetooth::adapter_address(adapter)
            .await
            .map_err(|e| format!("Bluetooth adapter {}: {e}", adapter.unwrap_or("(default)")))?;
        mule_contacts::bluetooth::connect_from(Some(local), *addr, *psm, false, Default::default())
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(limit, dial).await {
        Ok(r) => r.map(|s| Conn::bluetooth(Box::new(s), peer.to_string())),
        Err(_) => Err(format!("Bluetooth connect timed out after {limit:?}")),
    }
}

/// Without the `bluetooth` feature there is no Bluetooth transport.
#[cfg(not(feature = "bluetooth"))]
pub async fn connect(_: &Arc<Ctx>, _: &PeerAddr) -> Result<Conn, String> {
    Err("built without Bluetooth support".into())
}
