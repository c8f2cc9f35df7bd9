//! `mule verify [--repair] [ID…]`: read back every stored piece and check it against its
//! manifest's BLAKE3 hash.
//!
//! It works on the store directly when no daemon runs, and through the daemon's control
//! socket when one does: the store thread reads, one bundle per request, so the daemon keeps
//! serving in between. Each bad piece is printed (bundle id, piece index, what is wrong) and
//! the command exits non-zero if there was one. With `--repair` the bad pieces are dropped
//! from their bitfields: the bundle is incomplete again and the node fetches them from
//! peers. When every piece is good (or was dropped), the store's whole consistency check
//! runs too (manifest signatures, counters, data without its bundle).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use mule_bundle::BundleId;
use mule_bundle::store::{BadPiece, Store};
use mule_config::Config;

use crate::commands::{Target, bundle_view, resolve, target};
use crate::control::{Client, Request, Response};
use crate::daemon::Ctx;
use crate::view;

/// Runs the verb (see the module docs).
pub async fn run(ids: &[String], repair: bool, cfg: &Config, data_dir: &Path) -> Result<()> {
    let (bundles, bad, consistent) =
        match target(cfg, data_dir, crate::commands::Access::Read).await? {
            Target::Direct(mut s) => direct(&mut s, ids, repair, cfg.store.quota_bytes)?,
            Target::Daemon(mut c) => through_daemon(&mut c, ids, repair).await?,
        };
    for b in &bad {
        println!(
            "BAD bundle {} piece {}: {}{}",
            b.bundle,
            b.index,
            b.reason,
            if repair {
                " (dropped: it will be fetched again)"
            } else {
                ""
            }
        );
    }
    if let Err(e) = &consistent {
        println!("INCONSISTENT store: {e}");
    }
    match (bad.len(), consistent) {
        (0, Ok(())) => {
            println!("ok: {bundles} bundle(s), every stored piece verifies");
            Ok(())
        }
        (0, Err(_)) => bail!("the store is inconsistent (see above)"),
        (n, _) if repair => {
            bail!("{n} bad piece(s) found and dropped; the node fetches them again from peers")
        }
        (n, _) => bail!("{n} bad piece(s); run `mule verify --repair` to drop them"),
    }
}

type Outcome = (usize, Vec<view::BadPiece>, Result<(), String>);

fn bad_view(b: BadPiece) -> view::BadPiece {
    view::BadPiece {
        bundle: b.bundle.to_string(),
        index: b.index,
        reason: b.reason,
    }
}

/// The bundles named by `ids` (all when empty).
fn chosen(ids: &[String], list: &[view::Bundle]) -> Result<Vec<BundleId>> {
    if ids.is_empty() {
        return list.iter().map(|b| Ok(b.id.parse()?)).collect();
    }
    ids.iter().map(|id| resolve(id, list)).collect()
}

fn direct(s: &mut Store, ids: &[String], repair: bool, quota: u64) -> Result<Outcome> {
    let list: Vec<view::Bundle> = s.bundles()?.iter().map(|b| bundle_view(b, quota)).collect();
    let chosen = chosen(ids, &list)?;
    let mut bad = Vec::new();
    for id in &chosen {
        bad.extend(s.verify_bundle(id, repair)?.into_iter().map(bad_view));
    }
    let consistent = if bad.is_empty() || repair {
        s.verify_all().map(|_| ()).map_err(|e| e.to_string())
    } else {
        Ok(())
    };
    Ok((chosen.len(), bad, consistent))
}

async fn through_daemon(c: &mut Client, ids: &[String], repair: bool) -> Result<Outcome> {
    let Response::Status(st) = c.call(&Request::Status).await? else {
        bail!("unexpected answer")
    };
    let chosen = chosen(ids, &st.bundles)?;
    let mut bad = Vec::new();
    for id in &chosen {
        let req = Request::Verify {
            bundle: Some(id.to_string()),
            repair,
        };
        let Response::BadPieces(list) = c.call(&req).await? else {
            bail!("unexpected answer")
        };
        bad.extend(list);
    }
    let consistent = if bad.is_empty() || repair {
        match c
            .call(&Request::Verify {
                bundle: None,
                repair: false,
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(crate::control::Error::Remote(e)) => Err(e),
            Err(e) => return Err(anyhow!(e)),
        }
    } else {
        Ok(())
    };
    Ok((chosen.len(), bad, consistent))
}

/// The daemon's side of [`Request::Verify`].
pub(crate) async fn serve(
    ctx: &Arc<Ctx>,
    bundle: Option<String>,
    repair: bool,
) -> Result<Response, String> {
    let Some(id) = bundle else {
        ctx.store.verify_all().await.map_err(|e| e.to_string())?;
        return Ok(Response::BadPieces(Vec::new()));
    };
    let id: BundleId = id
        .parse()
        .map_err(|e: mule_bundle::ParseIdError| e.to_string())?;
    let bad = ctx
        .store
        .verify(id, repair)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Response::BadPieces(bad.into_iter().map(bad_view).collect()))
}
