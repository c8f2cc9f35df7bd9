//! Translating the store's records into the engine's view of local state.

use std::sync::Arc;

use mule_bundle::{Bitfield as StoreBits, VerifiedManifest};
use mule_contacts::NodeId;
use mule_engine::Bitfield;
use mule_engine::scheduler::BundleMeta;
use mule_engine::session::LocalBundle;

/// Whether an audience entry names a node (64 hex digits) rather than a channel.
pub fn audience_node(entry: &str) -> Option<NodeId> {
    entry.parse::<NodeId>().ok()
}

/// The scheduling metadata of a verified manifest: the first channel of its
/// audience (empty when it names only nodes) and the nodes it names.
pub fn meta(vm: &VerifiedManifest) -> BundleMeta {
    let m = vm.manifest();
    let channel = m
        .audience
        .iter()
        .find(|a| audience_node(a).is_none())
        .cloned()
        .unwrap_or_default();
    let audience = m.audience.iter().filter_map(|a| audience_node(a)).collect();
    BundleMeta {
        id: vm.id(),
        priority: m.priority,
        deps: m.dependencies.clone(),
        channel,
        audience,
        pieces: vm.piece_count(),
        piece_size: m.piece_size,
        len: m.content_len,
        release: m
            .is_numbered()
            .then(|| (m.release_lineage().id(), m.release)),
        replaces: m.lineage.clone(),
        publisher: m.publisher,
    }
}

/// A bundle as a session sees it.
pub fn local_bundle(vm: &VerifiedManifest, have: &StoreBits) -> LocalBundle {
    let mut bits = Bitfield::new(have.len());
    for i in have.iter_present() {
        bits.set(i);
    }
    LocalBundle {
        meta: meta(vm),
        have: bits,
        manifest: Arc::from(vm.as_bytes()),
    }
}

/// Whether a node with these subscriptions wants the bundle for itself: one
/// of its channels, or its own node id, is in the audience.
pub fn wanted_by(vm: &VerifiedManifest, me: &NodeId, channels: &[String]) -> bool {
    vm.manifest()
        .audience
        .iter()
        .any(|a| channels.iter().any(|c| c == a) || audience_node(a).is_some_and(|n| n == *me))
}

/// The newest release per lineage the store knows (seen or installed), for
/// [`LocalView::newest_releases`](mule_engine::session::LocalView::newest_releases).
pub fn newest_releases(
    lineages: &[mule_bundle::store::LineageInfo],
) -> std::collections::HashMap<mule_engine::LineageId, u64> {
    lineages
        .iter()
        .filter_map(|l| {
            let mut publisher = [0u8; 32];
            hex::decode_to_slice(&l.publisher, &mut publisher).ok()?;
            let lineage = mule_bundle::manifest::Lineage {
                publisher,
                name: l.name.clone(),
            };
            Some((lineage.id(), l.newest.max(l.installed)))
        })
        .collect()
}
