//! The Bluetooth transport of sessions: an L2CAP LE listener and connector
//! around `mule_contacts::bluetooth`, giving the same byte stream type TCP
//! sessions use.

use std::sync::Arc;
#[cfg(feature = "bluetooth")]
use std::time::Duration;

use mule_contacts::PeerAddr;
#[cfg(feature = "bluetooth")]
use mule_engine::session::Role;

use super::Ctx;

/// Accepts Bluetooth L2CAP sessions until `stop`; without Bluetooth in the
/// kernel or adapter, logs one warning and returns (other transports go on).
#[cfg(feature = "bluetooth")]
pub async fn accept_loop(ctx: Arc<Ctx>, stop: impl std::future::Future<Output = ()>) {
    let psm = mule_contacts::discovery::DEFAULT_BLE_PSM;
    let l = match mule_contacts::bluetooth::BleListener::bind(psm).await {
        Ok(l) => l,
        Err(e) => {
            // Discovery already warned once that Bluetooth is unavailable.
            tracing::debug!(error = %e, psm, "Bluetooth session listener unavailable");
            return;
        }
    };
    tracing::info!(psm, "Bluetooth L2CAP session listener up");
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            r = l.accept() => match r {
                Ok((stream, addr)) => {
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        super::session::run(ctx, Box::new(stream), Role::Responder, None, "bluetooth", addr.to_string()).await;
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

/// Opens an L2CAP LE session stream to a neighbour's advertised PSM.
#[cfg(feature = "bluetooth")]
pub async fn connect(ctx: &Arc<Ctx>, addr: &PeerAddr) -> Result<super::session::Stream, String> {
    let PeerAddr::Ble { addr, psm } = addr else { unreachable!() };
    let _ = ctx;
    mule_contacts::bluetooth::connect(*addr, *psm, false, Default::default())
        .await
        .map(|s| Box::new(s) as super::session::Stream)
        .map_err(|e| e.to_string())
}

/// Without the `bluetooth` feature there is no Bluetooth transport.
#[cfg(not(feature = "bluetooth"))]
pub async fn connect(_: &Arc<Ctx>, _: &PeerAddr) -> Result<super::session::Stream, String> {
    Err("built without Bluetooth support".into())
}

