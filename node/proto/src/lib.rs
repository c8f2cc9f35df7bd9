//! Mule's protocol value types: the leaf every other crate builds on.
//!
//! ```text
//!   mule-proto     ids, PieceRef, Priority, Millis, canonical CBOR, Bitfield  (this crate)
//!     ▲   ▲   ▲
//!     │   │   └── mule-engine    sans-IO session, summaries, scheduler (depends on nothing else of ours)
//!     │   └────── mule-contacts  identity, discovery, history, prediction (re-exports NodeId, Timestamp)
//!     └────────── mule-bundle    manifests, pieces, the store (re-exports BundleId, PieceRef, Priority, Bitfield)
//! ```
//!
//! - [`id`]: [`NodeId`], [`BundleId`], [`PieceIndex`], [`PieceRef`], [`Priority`].
//! - [`time`]: [`Millis`], the one time type (milliseconds; origin conventions in its doc).
//! - [`cbor`]: the canonical CBOR writer and strict reader for everything signed, hashed or
//!   framed, and the serde bridge for the two payloads that are serde types.
//! - [`bitfield`]: [`Bitfield`], which pieces of one bundle a node holds.
//!
//! Goals: plain values, no I/O, no async runtime, no storage, no logging back end, so the
//! engine can be pure by dependency and not only by lint (`tests/deps.rs` fails otherwise).
//! Non-goals: behaviour. Anything that decides (sessions, scheduling, prediction, the store)
//! lives in the crates above.

#![warn(missing_docs)]

pub mod bitfield;
pub mod cbor;
pub mod id;
pub mod time;

pub use bitfield::{Bitfield, BitfieldError};
pub use cbor::CborError;
pub use id::{BundleId, NodeId, ParseIdError, PieceIndex, PieceRef, Priority};
pub use time::Millis;
