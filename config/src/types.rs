//! Value types of the configuration that are more than a number or a string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ed25519 public key of a trusted publisher, written in the file as 64
/// hexadecimal digits (upper or lower case; shown in lower case).
///
/// Parsing checks the length, the digits, and that the 32 bytes are a valid
/// ed25519 point, so a typo is caught when the file is loaded rather than
/// when the first bundle fails to verify.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublisherKey([u8; 32]);

impl PublisherKey {
    /// Wraps 32 bytes, checking that they are a valid ed25519 public key.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, PublisherKeyError> {
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| PublisherKeyError::NotAPoint)?;
        Ok(PublisherKey(bytes))
    }

    /// The raw 32 bytes of the key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Why a text is not a publisher key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublisherKeyError {
    /// The text does not have exactly 64 characters.
    #[error("expected 64 hex digits (an ed25519 public key), got {0} characters")]
    Length(usize),
    /// A character is not a hex digit.
    #[error("invalid hex digit {ch:?} at position {position} (expected 64 hex digits)")]
    Digit {
        /// The offending character.
        ch: char,
        /// Its 1-based position in the text.
        position: usize,
    },
    /// The 32 bytes do not decode to an ed25519 curve point.
    #[error("64 hex digits, but not a valid ed25519 public key")]
    NotAPoint,
}

impl FromStr for PublisherKey {
    type Err = PublisherKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // A stray character (a `0x` prefix, a space) is the more useful report.
        if let Some((i, ch)) = s.chars().enumerate().find(|(_, c)| !c.is_ascii_hexdigit()) {
            return Err(PublisherKeyError::Digit {
                ch,
                position: i + 1,
            });
        }
        let n = s.chars().count();
        if n != 64 {
            return Err(PublisherKeyError::Length(n));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| PublisherKeyError::Length(n))?;
        PublisherKey::from_bytes(bytes)
    }
}

impl fmt::Display for PublisherKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublisherKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublisherKey({self})")
    }
}

impl Serialize for PublisherKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublisherKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Parsing inside the visitor lets the TOML deserializer attach the
        // span of this very string (an array element) to the error.
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl serde::de::Visitor<'_> for KeyVisitor {
    type Value = PublisherKey;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("64 hex digits (an ed25519 public key)")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PublisherKey, E> {
        v.parse().map_err(E::custom)
    }
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `compact` on a terminal, `plain` otherwise (journald, files, pipes).
    #[default]
    Auto,
    /// Human-readable lines with timestamps and colours.
    Compact,
    /// One line per event, no timestamp and no colours: journald stamps
    /// every line itself.
    Plain,
    /// One JSON object per line, for log collectors.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    // The public key of RFC 8032's first test vector (a valid point).
    const RFC8032_KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    #[test]
    fn publisher_key_round_trips() {
        let key: PublisherKey = RFC8032_KEY.parse().unwrap();
        assert_eq!(key.to_string(), RFC8032_KEY);
        let upper: PublisherKey = RFC8032_KEY.to_uppercase().parse().unwrap();
        assert_eq!(upper, key);
    }

    #[test]
    fn publisher_key_errors_are_precise() {
        assert_eq!(
            "abc".parse::<PublisherKey>(),
            Err(PublisherKeyError::Length(3))
        );
        let mut bad = RFC8032_KEY.to_string();
        bad.replace_range(9..10, "g");
        assert_eq!(
            bad.parse::<PublisherKey>(),
            Err(PublisherKeyError::Digit {
                ch: 'g',
                position: 10
            })
        );
        assert_eq!(
            format!("{RFC8032_KEY}00").parse::<PublisherKey>(),
            Err(PublisherKeyError::Length(66))
        );
        // y = 2 (little endian) is not on the curve.
        let mut not_point = "02".to_string();
        not_point.push_str(&"0".repeat(62));
        assert_eq!(
            not_point.parse::<PublisherKey>(),
            Err(PublisherKeyError::NotAPoint)
        );
    }
}
