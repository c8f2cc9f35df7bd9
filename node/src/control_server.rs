//! The daemon side of the control socket.

use std::sync::Arc;

use mule_bundle::store::Origin;
use mule_bundle::{BundleId, PieceRef, VerifiedManifest};
use tokio::net::{UnixListener, UnixStream};

use crate::control::{Request, Response, read_message, write_message};
use crate::daemon::Ctx;
use crate::daemon::store::PutOutcome;

/// Most control connections served at once.
const MAX_CLIENTS: usize = 16;

/// Serves control connections until `stop`.
pub async fn serve(
    ctx: Arc<Ctx>,
    listener: UnixListener,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        tracing::warn!("too many control connections; refusing one");
                        continue;
                    };
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        client(ctx, stream).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// A control client that sends no complete request for this long is dropped, so
/// idle or stuck clients cannot hold the [`MAX_CLIENTS`] slots forever.
const IDLE_CLIENT: std::time::Duration = std::time::Duration::from_secs(10);

async fn client(ctx: Arc<Ctx>, mut stream: UnixStream) {
    loop {
        let req: Request = match tokio::time::timeout(IDLE_CLIENT, read_message(&mut stream)).await
        {
            Err(_) => return,
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                let _ = write_message(&mut stream, &Response::Error(e.to_string())).await;
                return;
            }
        };
        let resp = match handle(&ctx, req).await {
            Ok(r) => r,
            Err(e) => Response::Error(e),
        };
        if write_message(&mut stream, &resp).await.is_err() {
            return;
        }
    }
}

fn parse_id(s: &str) -> Result<BundleId, String> {
    s.parse::<BundleId>().map_err(|e| e.to_string())
}

async fn handle(ctx: &Arc<Ctx>, req: Request) -> Result<Response, String> {
    let e = |e: crate::daemon::store::CallError| e.to_string();
    Ok(match req {
        Request::Status => Response::Status(Box::new(ctx.status().await.map_err(e)?)),
        Request::Contacts => Response::Contacts(ctx.contacts_view().await),
        Request::ImportManifest {
            manifest,
            published,
        } => {
            let vm = VerifiedManifest::decode(&manifest).map_err(|e| e.to_string())?;
            let origin = if published {
                Origin::Published
            } else {
                Origin::Received
            };
            ctx.accept_manifest(vm.clone(), origin).await.map_err(e)?;
            Response::Id(vm.id().to_string())
        }
        Request::PutPieces {
            bundle,
            first,
            pieces,
        } => {
            let id = parse_id(&bundle)?;
            let mut rxs = Vec::with_capacity(pieces.len());
            for (i, data) in pieces.into_iter().enumerate() {
                let piece = PieceRef {
                    bundle: id,
                    index: first + i as u32,
                };
                let rx = ctx
                    .store
                    .put_piece_deferred(piece, data.into_vec())
                    .await
                    .map_err(|e| e.to_string())?;
                rxs.push((piece, rx));
            }
            for (piece, rx) in rxs {
                match rx.await.map_err(|_| "store stopped".to_string())? {
                    PutOutcome::Stored | PutOutcome::Completed | PutOutcome::AlreadyHad => {
                        let _ = ctx.notices.send(crate::daemon::Notice::PieceStored(piece));
                    }
                    other => return Err(format!("piece {} of {}: {other:?}", piece.index, id)),
                }
            }
            ctx.install.notify_one();
            Response::Done
        }
        Request::Manifest { id } => {
            let id = parse_id(&id)?;
            let vm = ctx
                .store
                .manifest(id)
                .await
                .map_err(e)?
                .ok_or(format!("no bundle {id} in the store"))?;
            Response::Bytes(vm.to_bytes())
        }
        Request::ReadPiece { bundle, index } => {
            let id = parse_id(&bundle)?;
            let data = ctx
                .store
                .read_piece(PieceRef { bundle: id, index })
                .await
                .map_err(e)?
                .ok_or(format!("piece {index} of {id} is not in the store"))?;
            Response::Bytes(data)
        }
        Request::Subscribe { channel } => {
            ctx.set_subscription(&channel, true)
                .await
                .map_err(|e| e.to_string())?;
            Response::Done
        }
        Request::Unsubscribe { channel } => {
            ctx.set_subscription(&channel, false)
                .await
                .map_err(|e| e.to_string())?;
            Response::Done
        }
        Request::MediaSync { dir } => {
            let root = std::path::PathBuf::from(&dir);
            crate::media::check(&root).map_err(|e| e.to_string())?;
            Response::Media(ctx.media_import(&root).await)
        }
        Request::MediaWrite {
            dir,
            bundles,
            channels,
        } => {
            let ids = bundles
                .iter()
                .map(|b| parse_id(b))
                .collect::<Result<Vec<_>, _>>()?;
            let sel = crate::daemon::MediaSelection {
                ids,
                channels,
                outbound_only: false,
            };
            Response::Media(ctx.media_write(std::path::Path::new(&dir), &sel).await)
        }
        Request::Verify { bundle, repair } => crate::verify::serve(ctx, bundle, repair).await?,
    })
}
