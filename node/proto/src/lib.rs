//! Mule's protocol value types: the leaf every other crate builds on.
//!
//! `mule-bundle` and `mule-contacts` re-export these types at their old paths
//! (`mule_bundle::BundleId`, `mule_contacts::NodeId`, `mule_contacts::Timestamp` = [`Millis`],
//! ...); the engine imports them from here and depends on neither.
//!
//! ```text
//!   mule (daemon, CLI)      mule-testbed (simulator, emulator)
//!        │                        │          each uses all three below
//!        ▼                        ▼
//!   mule-bundle        mule-contacts        mule-engine
//!   (store: redb)      (discovery: tokio)   (sans-IO core)
//!        │                  │                    │
//!        └──────────────────┴─────────┬──────────┘
//!                                     ▼
//!                                mule-proto   (this crate)
//! ```
//!
//! - [`id`]: [`NodeId`], [`BundleId`], [`PieceIndex`], [`PieceRef`], [`Priority`].
//! - [`time`]: [`Millis`], the one time type (milliseconds; origin conventions in its doc).
//! - [`cbor`]: the canonical CBOR writer and strict reader for everything signed, hashed or
//!   framed, and the serde bridge for the two payloads that are serde types.
//! - [`bitfield`]: [`Bitfield`], which pieces of one bundle a node holds.
//!
//! Goals: plain values, no I/O (the one clock read, [`Millis::now`], is for drivers and
//! forbidden in the engine by clippy), no async runtime, no storage, no logging back end, so
//! the engine can be pure by dependency and not only by lint (`node/engine/tests/deps.rs`
//! fails otherwise).
//! Non-goals: behaviour. Anything that decides (sessions, scheduling, prediction, the store)
//! lives in the crates above.

#![warn(missing_docs)]

pub mod bitfield;
pub mod cbor;
pub mod id;
pub mod time;

pub use bitfield::{Bitfield, BitfieldError};
pub use cbor::CborError;
pub use id::{BundleId, LineageId, NodeId, ParseIdError, PieceIndex, PieceRef, Priority};
pub use time::Millis;
