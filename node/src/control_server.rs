//! The daemon side of the control socket.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mule_bundle::store::Origin;
use mule_bundle::{BundleId, PieceRef, VerifiedManifest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, watch};

use crate::control::{Request, Response, read_message, write_message};
use crate::daemon::Ctx;
use crate::daemon::store::PutOutcome;

/// Most control connections served at once.
const MAX_CLIENTS: usize = 16;

/// A control client that sends no complete request for this long is dropped.
const IDLE_CLIENT: Duration = Duration::from_secs(10);

/// The control connections being served, for the slot policy: when all [`MAX_CLIENTS`]
/// slots are taken, a new connection takes the slot of the client that has been waiting
/// for its next request the longest (an idle or stuck CLI, a local client that never
/// speaks); clients busy with a request keep theirs, and only when every one is busy is
/// the newcomer turned away. So idle clients can never lock the CLI out, and one that is
/// publishing (a request every few milliseconds) is never the one reclaimed.
#[derive(Default)]
struct Clients {
    next: u64,
    served: Vec<Slot>,
}

struct Slot {
    id: u64,
    /// Since when the client has been waiting for its next request (`None`: busy).
    idle_since: Option<Instant>,
    reclaim: Arc<Notify>,
}

impl Clients {
    /// A slot for a new client, reclaiming the longest-idle one if all are taken; `None`
    /// when every client is busy.
    fn admit(&mut self, now: Instant) -> Option<(u64, Arc<Notify>)> {
        if self.served.len() >= MAX_CLIENTS {
            let (i, _) = self
                .served
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.idle_since.map(|t| (i, t)))
                .min_by_key(|(_, t)| *t)?;
            let old = self.served.swap_remove(i);
            old.reclaim.notify_one();
            tracing::debug!("control slots full; reclaiming the longest-idle client's");
        }
        self.next += 1;
        let reclaim = Arc::new(Notify::new());
        self.served.push(Slot {
            id: self.next,
            idle_since: Some(now),
            reclaim: reclaim.clone(),
        });
        Some((self.next, reclaim))
    }

    fn set_idle(&mut self, id: u64, idle_since: Option<Instant>) {
        if let Some(s) = self.served.iter_mut().find(|s| s.id == id) {
            s.idle_since = idle_since;
        }
    }

    fn leave(&mut self, id: u64) {
        self.served.retain(|s| s.id != id);
    }
}

/// Serves control connections until `stop`; then lets every client finish the request it
/// is handling (the store still runs), closes the idle ones and returns. A CLI whose
/// connection is closed that way sees the daemon gone and turns to the store itself.
pub async fn serve(
    ctx: Arc<Ctx>,
    listener: UnixListener,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let clients = Arc::new(Mutex::new(Clients::default()));
    let (stopping_tx, stopping) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            r = listener.accept() => match r {
                Ok((mut stream, _)) => {
                    let admitted = clients.lock().expect("control clients").admit(Instant::now());
                    let Some((id, reclaim)) = admitted else {
                        tracing::warn!("every control connection is busy; refusing one");
                        let busy = Response::Error("the daemon is busy with other control clients; try again".into());
                        tasks.spawn(async move {
                            let _ = tokio::time::timeout(Duration::from_secs(1), write_message(&mut stream, &busy)).await;
                        });
                        continue;
                    };
                    let (ctx, clients, stopping) = (ctx.clone(), clients.clone(), stopping.clone());
                    tasks.spawn(async move {
                        client(&ctx, stream, id, &clients, &reclaim, stopping).await;
                        clients.lock().expect("control clients").leave(id);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    while tasks.join_next().await.is_some() {}
}

async fn client(
    ctx: &Arc<Ctx>,
    mut stream: UnixStream,
    id: u64,
    clients: &Mutex<Clients>,
    reclaim: &Notify,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        clients
            .lock()
            .expect("control clients")
            .set_idle(id, Some(Instant::now()));
        let req: Request = tokio::select! {
            biased;
            _ = async { let _ = stopping.wait_for(|s| *s).await; } => return,
            _ = reclaim.notified() => return,
            r = tokio::time::timeout(IDLE_CLIENT, read_message(&mut stream)) => match r {
                Err(_) => return,
                Ok(Ok(Some(r))) => r,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    let _ = write_message(&mut stream, &Response::Error(e.to_string())).await;
                    return;
                }
            },
        };
        clients.lock().expect("control clients").set_idle(id, None);
        let resp = match handle(ctx, req).await {
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
        } => put_pieces(ctx, &bundle, first, pieces).await?,
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

/// `PutPieces`: hands every piece to the store thread, then waits for each outcome (a piece
/// the store refused fails the request); stored pieces are announced to the sessions.
async fn put_pieces(
    ctx: &Arc<Ctx>,
    bundle: &str,
    first: u32,
    pieces: Vec<serde_bytes::ByteBuf>,
) -> Result<Response, String> {
    let id = parse_id(bundle)?;
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
    Ok(Response::Done)
}
