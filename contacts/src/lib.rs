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

/// Decodes one CBOR item (cbor4ii's serde layer) that must fill the whole of `buf`; trailing
/// bytes are an error. The error is the decoder's message.
pub fn cbor_decode_exact<'a, T: serde::Deserialize<'a>>(buf: &'a [u8]) -> Result<T, String> {
    use cbor4ii::core::dec::Read as _;
    let mut de = cbor4ii::serde::Deserializer::new(cbor4ii::core::utils::SliceReader::new(buf));
    let v = T::deserialize(&mut de).map_err(|e| e.to_string())?;
    let mut rest = de.into_inner();
    match rest.fill(1) {
        Ok(r) if r.as_ref().is_empty() => Ok(v),
        _ => Err("trailing bytes".into()),
    }
}
