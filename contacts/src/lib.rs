//! Mule encounters: node identity, discovery, contact history and prediction.

pub mod id;

pub use id::NodeId;
