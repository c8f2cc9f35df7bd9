//! The daemon's side of removable media ([`crate::media`] has the layout):
//! importing a medium that appears under `media.paths` (or is named by
//! `mule media sync`), writing bundles to one (`mule media write`, and
//! `media.carry_out` after an import).
//!
//! Import takes, for every bundle directory on the medium: the manifest (verified,
//! then subject to the node's trust and carry policy like one from a neighbour),
//! then each piece the node lacks (verified by the store before it is kept). While
//! a piece is read from the medium it is claimed, so no session requests it from a
//! neighbour at the same time: a local medium beats any link. Each piece is
//! committed on its own, so a medium pulled out mid-import leaves every stored
//! piece whole and verified, and nothing claimed.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mule_bundle::store::Origin;
use mule_bundle::{PieceRef, VerifiedManifest};
use mule_engine::claims::ClaimOwner;

use super::store::PutOutcome;
use super::{Ctx, Notice};
use crate::media;
use crate::view::MediaReport;

/// The claim owner of media imports (sessions get small sequential ids).
const MEDIA_OWNER: ClaimOwner = u64::MAX - 1;

/// Which bundles `mule media write` puts on a medium.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// These bundles (full ids); empty: no filter by id.
    pub ids: Vec<mule_bundle::BundleId>,
    /// Bundles whose audience names one of these channels; empty: no filter.
    pub channels: Vec<String>,
    /// Only bundles this node carries for others or published (`carry_out`).
    pub outbound_only: bool,
}

impl Selection {
    /// Whether a bundle with manifest `vm` goes on the medium.
    pub fn chooses(&self, vm: &VerifiedManifest, published: bool, wanted: bool) -> bool {
        (self.ids.is_empty() || self.ids.contains(&vm.id()))
            && (self.channels.is_empty()
                || vm
                    .manifest()
                    .audience
                    .iter()
                    .any(|a| self.channels.contains(a)))
            && (!self.outbound_only || published || !wanted)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

impl Ctx {
    /// Imports everything the node wants or may carry from the medium at `root`.
    pub(crate) async fn media_import(&self, root: &Path) -> MediaReport {
        let mut rep = MediaReport {
            medium: root.display().to_string(),
            ..MediaReport::default()
        };
        let r = root.to_path_buf();
        let list = match blocking(move || media::bundles(&r)).await {
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                rep.errors.push(e.to_string());
                return rep;
            }
            None => return rep,
        };
        let have = match self.store.snapshot().await {
            Ok(rows) => rows
                .into_iter()
                .map(|(vm, bits, _)| (vm.id(), bits))
                .collect::<std::collections::HashMap<_, _>>(),
            Err(e) => {
                rep.errors.push(format!("store: {e}"));
                return rep;
            }
        };
        for (id, dir) in list {
            let d = dir.clone();
            let vm = match blocking(move || media::read_manifest(&id, &d)).await {
                Some(Ok(Ok(vm))) => vm,
                Some(Ok(Err(why))) => {
                    tracing::warn!(medium = %root.display(), %why, "manifest on medium refused");
                    rep.manifests_refused += 1;
                    continue;
                }
                Some(Err(e)) => {
                    rep.errors.push(e.to_string());
                    rep.medium_gone = !root.exists();
                    if rep.medium_gone {
                        break;
                    }
                    continue;
                }
                None => break,
            };
            if let Err(e) = self.accept_manifest(vm.clone(), Origin::Received).await {
                tracing::info!(bundle = %id.short(), error = %e, "bundle on medium not taken");
                rep.manifests_refused += 1;
                continue;
            }
            rep.manifests += 1;
            let held = have.get(&id).cloned();
            if !self.import_pieces(&vm, &dir, held, &mut rep).await {
                break;
            }
        }
        if !rep.medium_gone && media::check(root).is_err() {
            rep.medium_gone = true;
        }
        if rep.pieces > 0 {
            self.install.notify_one();
        }
        tracing::info!(medium = %root.display(), manifests = rep.manifests,
            pieces = rep.pieces, refused = rep.pieces_refused + rep.manifests_refused,
            gone = rep.medium_gone, "medium imported");
        rep
    }

    /// The pieces of one bundle; false when the medium is gone.
    async fn import_pieces(
        &self,
        vm: &VerifiedManifest,
        dir: &Path,
        held: Option<mule_bundle::Bitfield>,
        rep: &mut MediaReport,
    ) -> bool {
        let id = vm.id();
        for index in 0..vm.piece_count() {
            if held.as_ref().is_some_and(|b| b.get(index)) {
                continue;
            }
            let piece = PieceRef { bundle: id, index };
            if !self.claim_for_media(piece) {
                // A session is fetching it already; the medium is not needed for it.
                continue;
            }
            let (d, m) = (dir.to_path_buf(), vm.clone());
            let read = blocking(move || media::read_piece(&d, &m, index)).await;
            let data = match read {
                Some(Ok(Some(data))) => data,
                Some(Ok(None)) => {
                    self.release_media_claim(piece);
                    // A missing file is a piece the medium lacks, unless the medium
                    // itself went away (a pulled stick leaves an empty mount point).
                    if !dir.join("manifest").exists() {
                        rep.medium_gone = true;
                        return false;
                    }
                    continue;
                }
                Some(Err(e)) => {
                    self.release_media_claim(piece);
                    rep.errors.push(e.to_string());
                    rep.medium_gone = !dir.exists();
                    return !rep.medium_gone;
                }
                None => {
                    self.release_media_claim(piece);
                    return false;
                }
            };
            let outcome = self.store.put_piece(piece, data).await;
            self.release_media_claim(piece);
            match outcome {
                Ok(PutOutcome::Stored | PutOutcome::Completed) => {
                    rep.pieces += 1;
                    let _ = self.notices.send(Notice::PieceStored(piece));
                }
                Ok(PutOutcome::AlreadyHad) => {}
                Ok(PutOutcome::Invalid(why)) => {
                    tracing::warn!(bundle = %id.short(), index, %why,
                        file = %media::piece_path(dir, index).display(), "piece on medium refused");
                    rep.pieces_refused += 1;
                }
                Ok(PutOutcome::Full(why)) => {
                    rep.errors.push(format!("store full: {why}"));
                    return true;
                }
                Ok(other) => {
                    rep.errors
                        .push(format!("piece {index} of {}: {other:?}", id.short()));
                }
                Err(_) => return false,
            }
        }
        true
    }

    fn claim_for_media(&self, piece: PieceRef) -> bool {
        let mut sh = self.shared.lock().expect("shared state");
        sh.claims.try_claim(piece, MEDIA_OWNER)
    }

    fn release_media_claim(&self, piece: PieceRef) {
        let mut sh = self.shared.lock().expect("shared state");
        sh.claims.release(piece, MEDIA_OWNER);
    }

    /// Writes the selected bundles (manifest and every piece held) to `root`.
    pub(crate) async fn media_write(&self, root: &Path, sel: &Selection) -> MediaReport {
        let mut rep = MediaReport {
            medium: root.display().to_string(),
            ..MediaReport::default()
        };
        let r = root.to_path_buf();
        match blocking(move || media::init(&r)).await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                rep.errors.push(e.to_string());
                return rep;
            }
            None => return rep,
        }
        let rows = match self.store.snapshot().await {
            Ok(rows) => rows,
            Err(e) => {
                rep.errors.push(format!("store: {e}"));
                return rep;
            }
        };
        for (vm, bits, info) in rows {
            let id = vm.id();
            if !sel.chooses(&vm, info.published, info.wanted) || bits.count() == 0 {
                continue;
            }
            let (r, m) = (root.to_path_buf(), vm.clone());
            let dir = match blocking(move || media::write_manifest(&r, &m)).await {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    rep.errors.push(e.to_string());
                    return rep;
                }
                None => return rep,
            };
            rep.manifests += 1;
            for index in bits.iter_present() {
                let (d, m) = (dir.clone(), vm.clone());
                if blocking(move || media::has_piece(&d, &m, index)).await == Some(true) {
                    continue;
                }
                let data = match self.store.read_piece(PieceRef { bundle: id, index }).await {
                    Ok(Some(d)) => d,
                    _ => continue,
                };
                let len = data.len() as u64;
                let p = media::piece_path(&dir, index);
                match blocking(move || media::write_atomic(&p, &data)).await {
                    Some(Ok(())) => {
                        rep.pieces += 1;
                        rep.bytes += len;
                    }
                    Some(Err(e)) => {
                        rep.errors.push(e.to_string());
                        return rep;
                    }
                    None => return rep,
                }
            }
        }
        let r = root.to_path_buf();
        if let Some(Err(e)) = blocking(move || media::sync(&r)).await {
            rep.errors.push(e.to_string());
        }
        tracing::info!(medium = %root.display(), bundles = rep.manifests, pieces = rep.pieces,
            bytes = rep.bytes, "medium written");
        rep
    }
}

/// Watches `media.paths`: imports each medium once when it appears (and, with
/// `media.carry_out`, writes outbound bundles back to it); a medium that goes
/// away and comes back is imported again.
pub(crate) async fn watch(ctx: Arc<Ctx>, stop: impl Future<Output = ()>) {
    if ctx.cfg.media.paths.is_empty() {
        return;
    }
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_millis(ctx.cfg.media.scan_interval_ms));
    let mut present: BTreeSet<PathBuf> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        let patterns = ctx.cfg.media.paths.clone();
        let Some(found) = blocking(move || media::find(&patterns)).await else {
            continue;
        };
        present.retain(|p| {
            let still = found.contains(p);
            if !still {
                tracing::info!(medium = %p.display(), "medium removed");
            }
            still
        });
        for root in found {
            if present.contains(&root) {
                continue;
            }
            tracing::info!(medium = %root.display(), "medium appeared");
            let rep = ctx.media_import(&root).await;
            if ctx.cfg.media.carry_out && !rep.medium_gone {
                let sel = Selection {
                    outbound_only: true,
                    ..Selection::default()
                };
                ctx.media_write(&root, &sel).await;
            }
            // A medium pulled out mid-import is not marked seen: if it comes back it is
            // read again.
            if !rep.medium_gone {
                present.insert(root);
            }
        }
    }
}
