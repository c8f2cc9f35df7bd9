//! Identifiers shared by every layer: node ids, bundle ids, piece indices and priority classes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Defines a 32-byte id: the raw bytes, hex `Display`, a short `Debug` of the first eight hex
/// digits, and serde as the bare array.
macro_rules! id32 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The first eight hex digits, for log lines and tables.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.short())
            }
        }
    };
}

/// 64 hex digits (surrounding whitespace ignored) as 32 bytes.
fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out).ok()?;
    Some(out)
}

id32! {
    /// A node's identity: its ed25519 public key (32 bytes). Being the key itself,
    /// it lets any peer verify what the node signs without a lookup.
    NodeId
}

impl FromStr for NodeId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s)
            .map(NodeId)
            .ok_or_else(|| format!("a node id is 64 hex digits, got {s:?}"))
    }
}

id32! {
    /// A bundle's identity: the BLAKE3 hash of its canonical signed manifest.
    BundleId
}

id32! {
    /// A release lineage (publisher key and bundle name) as a fixed-size id: the BLAKE3
    /// hash of the publisher key followed by the name's bytes. Release numbers increase
    /// within one lineage; the engine compares them to tell which bundles are superseded.
    LineageId
}

/// Why a string is not a bundle id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a bundle id is 64 hex digits, got {0:?}")]
pub struct ParseIdError(pub String);

impl FromStr for BundleId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s)
            .map(BundleId)
            .ok_or_else(|| ParseIdError(s.to_owned()))
    }
}

/// Index of a piece within its bundle (0-based).
pub type PieceIndex = u32;

/// A piece of a bundle: the unit that is summarised, scheduled, sent and verified.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct PieceRef {
    /// The bundle the piece belongs to.
    pub bundle: BundleId,
    /// Its index within the bundle.
    pub index: PieceIndex,
}

/// Priority class of a bundle. Ordered most urgent first: `Critical < High < Normal < Bulk`.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Security and safety fixes: sent before anything else.
    Critical,
    /// Important updates.
    High,
    /// Ordinary updates (the default).
    #[default]
    Normal,
    /// Large, non-urgent content: sent last, evicted first.
    Bulk,
}

impl Priority {
    /// All classes, most urgent first.
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Bulk,
    ];

    /// The lowercase name used in the CLI, config and manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Bulk => "bulk",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!("unknown priority {s:?} (expected critical, high, normal or bulk)")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_hex_round_trip() {
        let id = NodeId([0x5c; 32]);
        assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        assert!("5c5c".parse::<NodeId>().is_err());
        assert_eq!(format!("{id:?}"), "NodeId(5c5c5c5c)");
    }

    #[test]
    fn bundle_id_hex_round_trip() {
        let id = BundleId([0xab; 32]);
        assert_eq!(id.to_string().parse::<BundleId>().unwrap(), id);
        assert!("abc".parse::<BundleId>().is_err());
        assert_eq!(id.short(), "abababab");
    }

    #[test]
    fn priority_order_is_most_urgent_first() {
        assert!(Priority::Critical < Priority::High);
        assert!(Priority::Normal < Priority::Bulk);
        assert_eq!("bulk".parse::<Priority>().unwrap(), Priority::Bulk);
        assert!("urgent".parse::<Priority>().is_err());
    }
}
