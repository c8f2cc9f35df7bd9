//! Mule bundles: signed manifests, verified pieces and the crash-safe piece store.
//!
//! - [`manifest`]: the canonical CBOR manifest, [`VerifiedManifest`] (only verification makes
//!   one) and [`verify_piece`].
//! - [`publish`]: cut content into pieces and sign ([`publish()`], [`publish_to_store`]).
//! - [`store`]: the redb piece store ([`Store`]): verified, batched, durable puts; quota with
//!   eviction; trust.
//! - [`complete`]: atomic export, the on-complete command and the health check (with
//!   rollback), in dependency order.
//! - [`release`]: the pure install policy of staged rollouts (cohorts, stages, hold, window).
//! - [`report`]: node-signed install reports (≤ 1 KiB) that ride back on the reports channel.
//! - [`keys`], [`trust`]: key files, the trust list.
//! - [`id`], [`bitfield`]: the ids, [`Priority`] and piece sets, defined in `mule-proto` (the
//!   protocol's leaf crate) and re-exported here at their old paths.
//!
//! ```
//! use mule_bundle::{complete, keys, store::{Origin, Store, StoreOptions}, PublishOptions};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let key = keys::generate().unwrap();
//! let content = vec![7u8; 100_000];
//! let vm = mule_bundle::publish(&content[..], &PublishOptions::new("tool", "1.0", 0), &key)
//!     .unwrap();
//!
//! // A receiving node: trusts the publisher, stores the manifest, then verified pieces.
//! let opts = StoreOptions {
//!     trust: [key.verifying_key().to_bytes()].into_iter().collect(),
//!     ..StoreOptions::default()
//! };
//! let mut store = Store::open(&dir.path().join("data"), opts).unwrap();
//! let vm = mule_bundle::VerifiedManifest::decode(vm.as_bytes()).unwrap();
//! store.insert_manifest(&vm, Origin::Received).unwrap();
//! store.set_wanted(&vm.id(), true).unwrap();
//! let ps = vm.manifest().piece_size as usize;
//! let pieces: Vec<_> = content.chunks(ps).enumerate()
//!     .map(|(i, p)| (vm.id(), i as u32, p)).collect();
//! for r in store.put_pieces(&pieces).unwrap() {
//!     r.unwrap();
//! }
//! let installer = complete::Installer::new(dir.path().join("export"));
//! let done = complete::install_pending(&mut store, &installer, &Default::default(), 0).unwrap();
//! assert_eq!(std::fs::read(done.outcomes[0].1.as_ref().unwrap()).unwrap(), content);
//! ```

pub mod complete;
pub mod keys;
pub mod manifest;
pub mod publish;
pub mod release;
pub mod report;
pub mod store;
pub mod trust;

/// Piece sets; defined in `mule-proto`.
pub mod bitfield {
    pub use mule_proto::bitfield::{Bitfield, BitfieldError};
}

/// Bundle ids, piece indices and priority classes; defined in `mule-proto`.
pub mod id {
    pub use mule_proto::id::{BundleId, ParseIdError, PieceIndex, PieceRef, Priority};
}

pub use bitfield::{Bitfield, BitfieldError};
pub use id::{BundleId, ParseIdError, PieceIndex, PieceRef, Priority};
pub use manifest::{
    DEFAULT_PIECE_SIZE, Lineage, MAX_MANIFEST_BYTES, MAX_PIECE_SIZE, MIN_PIECE_SIZE, Manifest,
    ManifestError, PieceError, Stage, VerifiedManifest, verify_piece,
};
pub use mule_proto::CborError;
pub use publish::{
    PieceReader, PublishError, PublishOptions, publish, publish_file, publish_to_store,
};
pub use store::{
    Block, BundleInfo, Failure, Inserted, LineageInfo, Origin, Put, PutError, ReleaseEvent, State,
    Store, StoreError, StoreFull, StoreOptions, Usage,
};
pub use trust::TrustList;

pub use ed25519_dalek::{SigningKey, VerifyingKey};
