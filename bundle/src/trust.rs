//! The trust list: publisher keys whose bundles this node installs.
//!
//! Bundles from other publishers are never exported or installed. The store carries them for
//! other nodes only when the operator allows it, within a separate, bounded carry quota (see
//! [`crate::store::StoreOptions`]).

use std::collections::BTreeSet;

/// A set of trusted ed25519 publisher keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustList {
    keys: BTreeSet<[u8; 32]>,
}

/// Why a string is not a publisher key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a publisher key is 64 hex digits, got {0:?}")]
pub struct ParseKeyError(pub String);

impl TrustList {
    /// An empty list: nothing is trusted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key; returns whether it was new.
    pub fn insert(&mut self, key: [u8; 32]) -> bool {
        self.keys.insert(key)
    }

    /// Adds a key given as 64 hex digits (the form `mule key show` prints).
    pub fn insert_hex(&mut self, hex_key: &str) -> Result<bool, ParseKeyError> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(hex_key.trim(), &mut key)
            .map_err(|_| ParseKeyError(hex_key.to_owned()))?;
        Ok(self.insert(key))
    }

    /// Whether bundles signed by `key` are trusted.
    pub fn contains(&self, key: &[u8; 32]) -> bool {
        self.keys.contains(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl FromIterator<[u8; 32]> for TrustList {
    fn from_iter<I: IntoIterator<Item = [u8; 32]>>(iter: I) -> Self {
        TrustList {
            keys: iter.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_keys() {
        let mut t = TrustList::new();
        assert!(t.insert_hex(&"ab".repeat(32)).unwrap());
        assert!(t.contains(&[0xab; 32]));
        assert!(!t.contains(&[0; 32]));
        assert!(t.insert_hex("abc").is_err());
        assert_eq!(t.len(), 1);
    }
}
