//! Mule's sans-IO core: session protocol, Bloom summaries, piece scheduler.
//!
//! Nothing in this crate touches sockets, clocks, threads or files: time (`now`, in
//! milliseconds since any fixed origin) and randomness (salts, challenges) are inputs, and
//! every output is a value the caller acts on. The same code runs in the daemon, the
//! deterministic simulator and the tests.
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

pub use mule_proto::{Bitfield, CborError};
pub use scheduler::RarityTracker;
