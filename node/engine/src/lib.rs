//! Mule's sans-IO core: session protocol, Bloom summaries, piece scheduler.
//!
//! Nothing in this crate touches sockets, clocks, threads or files: time (`now`, in
//! milliseconds since any fixed origin) and randomness (salts, challenges) are inputs, and
//! every output is a value the caller acts on. The same code runs in the daemon, the
//! deterministic simulator and the tests.
//!
//! - [`frame`]: length-prefixed canonical CBOR frames with hard limits.
//! - [`summary`]: the salted Bloom summary of held pieces and what a peer holds.

mod cbor;

pub mod bitfield;
pub mod claims;
pub mod frame;
pub mod harness;
pub mod penalty;
pub mod scheduler;
pub mod session;
pub mod summary;

pub use bitfield::Bitfield;
pub use cbor::CborError;
pub use scheduler::RarityTracker;
