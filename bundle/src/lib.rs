//! Mule bundles: signed manifests, verified pieces and the crash-safe piece store.

pub mod bitfield;
mod cbor;
pub mod complete;
pub mod id;
pub mod keys;
pub mod manifest;
pub mod publish;
pub mod store;
pub mod trust;

pub use bitfield::{Bitfield, BitfieldError};
pub use cbor::CborError;
pub use id::{BundleId, ParseIdError, PieceIndex, PieceRef, Priority};
pub use manifest::{
    DEFAULT_PIECE_SIZE, MAX_MANIFEST_BYTES, MAX_PIECE_SIZE, MIN_PIECE_SIZE, Manifest,
    ManifestError, PieceError, VerifiedManifest, verify_piece,
};
pub use publish::{
    PieceReader, PublishError, PublishOptions, publish, publish_file, publish_to_store,
};
pub use store::{
    BundleInfo, Failure, Inserted, Origin, Put, PutError, State, Store, StoreError, StoreFull,
    StoreOptions, Usage,
};
pub use trust::TrustList;
