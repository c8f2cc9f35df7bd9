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
pub mod identity;
pub mod iface;
pub mod neighbours;
pub mod prediction;
pub mod stream;

/// Node ids; defined in `mule-proto`.
pub mod id {
    pub use mule_proto::NodeId;
}

/// Wall-clock time as a plain value; [`mule_proto::Millis`] under its old name here.
pub mod time {
    pub use mule_proto::Millis as Timestamp;
}

pub use discovery::{CountersSnapshot, Discovery, DiscoveryConfig, DiscoveryError};
pub use id::NodeId;
pub use identity::NodeIdentity;
pub use neighbours::{Event, NeighbourTable, Observation, PeerAddr, Transport};
pub use prediction::{Prophet, ProphetParams};
pub use stream::{AsyncReadWrite, SessionStream};
pub use time::Timestamp;

/// Decodes one CBOR item (cbor4ii's serde layer) that must fill the whole of `buf`; defined in
/// `mule-proto` ([`mule_proto::cbor::serde::decode_exact`]).
pub use mule_proto::cbor::serde::decode_exact as cbor_decode_exact;
