//! Mule bundles: signed manifests, verified pieces and the crash-safe piece store.

mod cbor;
pub mod id;
pub mod manifest;

pub use cbor::CborError;
pub use id::{BundleId, ParseIdError, PieceIndex, PieceRef, Priority};
pub use manifest::{
    DEFAULT_PIECE_SIZE, MAX_MANIFEST_BYTES, MAX_PIECE_SIZE, MIN_PIECE_SIZE, Manifest,
    ManifestError, PieceError, VerifiedManifest, verify_piece,
};
