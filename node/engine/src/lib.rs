//! Mule's sans-IO core: session protocol, Bloom summaries, piece scheduler.
//!
//! Nothing in this crate touches sockets, clocks, threads or files: time (`now`, in
//! milliseconds since any fixed origin, the session-clock convention of
//! [`mule_proto::Millis`]) and randomness (salts, challenges) are inputs, and every output is a
//! value the caller acts on. The same code runs in the daemon, the deterministic simulator
//! and the tests.
//!
//! Pure by dependency as well as by lint: the only crate of ours below it is the leaf
//! `mule-proto` (ids, [`PieceRef`](mule_proto::PieceRef), [`Priority`](mule_proto::Priority),
//! [`Bitfield`], [`CborError`] and the canonical CBOR codec). `tests/deps.rs` fails if
//! `cargo tree -p mule-engine` ever shows tokio, redb, mdns-sd, socket2, tracing-subscriber,
//! bluer, `mule-bundle` or `mule-contacts`.
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
//!                                mule-proto   (leaf: ids, Millis, cbor, Bitfield)
//! ```
//!
//! - [`frame`]: length-prefixed canonical CBOR frames with hard limits.
//! - [`summary`]: the salted Bloom summary of held pieces and what a peer holds.
//! - [`scheduler`]: the pure function deciding what to move first, and [`RarityTracker`].
//! - [`session`]: the contact state machine (`handle_*` in, `poll_*` out).
//! - [`claims`]: node-wide piece claims so several neighbours are downloaded from at once
//!   without requesting a piece twice.
//! - [`penalty`]: per-peer penalties, backoff and bans.
//! - [`credibility`]: how far each peer's claims held, weighing what it advertises.
//! - [`harness`]: an in-memory world of nodes and links in virtual time (tests, benches,
//!   simulator).
//!
//! The wire protocol is specified in `node/PROTOCOL.md`.

pub mod claims;
pub mod credibility;
pub mod frame;
pub mod harness;
pub mod penalty;
pub mod scheduler;
pub mod session;
pub mod summary;

pub use mule_proto::{Bitfield, CborError, LineageId};
pub use scheduler::RarityTracker;
