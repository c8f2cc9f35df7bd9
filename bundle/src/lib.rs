//! Mule bundles: signed manifests, verified pieces and the crash-safe piece store.

pub mod id;

pub use id::{BundleId, ParseIdError, PieceIndex, PieceRef, Priority};
