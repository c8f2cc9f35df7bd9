//! Mule encounters: node identity, discovery, contact history and prediction.

pub mod beacon;
pub mod id;
pub mod identity;
pub mod time;

pub use id::NodeId;
pub use identity::NodeIdentity;
pub use time::Timestamp;
