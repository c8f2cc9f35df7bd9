//! Mule encounters: node identity, discovery, contact history and prediction.

pub mod beacon;
pub mod history;
pub mod id;
pub mod identity;
pub mod neighbours;
pub mod prediction;
pub mod time;

pub use id::NodeId;
pub use identity::NodeIdentity;
pub use neighbours::{Event, NeighbourTable, Observation, PeerAddr, Transport};
pub use prediction::{Prophet, ProphetParams};
pub use time::Timestamp;
