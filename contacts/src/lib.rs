//! Mule encounters: node identity, discovery (multicast beacons, mDNS, Bluetooth LE), the
//! neighbour table, contact history and prediction.
//!
//! Pure, sans-IO parts (time is an input): [`beacon`] (wire format, filter, interval),
//! [`neighbours`], [`prediction`], the payload and id mapping of [`bluetooth`]. Drivers:
//! [`discovery`] (tokio), [`history`] (redb), [`identity`] (key file).

#![warn(missing_docs)]

pub mod beacon;
pub mod bluetooth;
pub mod discovery;
pub mod history;
pub mod id;
pub mod identity;
pub mod iface;
pub mod neighbours;
pub mod prediction;
pub mod stream;
pub mod time;

pub use discovery::{CountersSnapshot, Discovery, DiscoveryConfig, DiscoveryError};
pub use id::NodeId;
pub use identity::NodeIdentity;
pub use neighbours::{Event, NeighbourTable, Observation, PeerAddr, Transport};
pub use prediction::{Prophet, ProphetParams};
pub use stream::{AsyncReadWrite, SessionStream};
pub use time::Timestamp;
