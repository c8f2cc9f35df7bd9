//! Canonical CBOR (RFC 8949): the one writer and strict reader for everything Mule signs,
//! hashes or frames — session frames and summaries (`mule-engine`), manifests and store
//! records (`mule-bundle`).
//!
//! Only the subset the protocol uses: unsigned integers (major 0), byte strings (2), text
//! strings (3), arrays (4), maps (5), and from major 7 `null` and single-precision floats.
//! The writer always produces the canonical form of RFC 8949 §4.2.1 (shortest-form heads,
//! definite lengths). The reader accepts **only** that form: shortest-form heads, definite
//! lengths, no tags, every length bounded by the caller. Anything else is a typed
//! [`CborError`], never a panic, so a peer cannot make two different byte strings mean the
//! same value and cannot make the decoder allocate more than the input holds. What the
//! reader cannot see item by item (map keys sorted and unique) is the caller's to check;
//! `mule-bundle` does it for manifests by re-encoding and comparing bytes.
//!
//! Why not `cbor4ii` + serde for these: it accepts trailing bytes and non-canonical input,
//! its serde form of `Vec<u8>` is an array of integers (5–9 % larger than a byte string
//! unless an extra crate is added), and a piece's payload would be copied through serde. This
//! module lets the piece frame be a hand-written head followed by the raw payload bytes.
//!
//! The [`self::serde`] submodule is the one bridge to cbor4ii's serde layer, for the
//! payloads that are serde types by nature (the third-party Bloom filter in a summary, the
//! discovery beacon): same rule of one item and no trailing bytes, but not canonical by
//! construction, so nothing is signed or hashed through it.

use std::fmt;

/// Why bytes are not the canonical CBOR the protocol expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    /// The input ended inside an item.
    #[error("truncated CBOR item")]
    Truncated,
    /// An item of another type was found than the one the field needs.
    #[error("expected {expected}, found major type {major} (info {info})")]
    UnexpectedType {
        /// What the field needs.
        expected: &'static str,
        /// The major type found.
        major: u8,
        /// Its additional information bits.
        info: u8,
    },
    /// A head used more bytes than needed (not canonical) or an indefinite length.
    #[error("non-canonical CBOR head (major {major}, info {info})")]
    NonCanonical {
        /// The major type.
        major: u8,
        /// Its additional information bits.
        info: u8,
    },
    /// An integer or length is out of the range the field allows.
    #[error("{field} out of range: {value} (max {max})")]
    OutOfRange {
        /// Which field.
        field: &'static str,
        /// The value found.
        value: u64,
        /// The largest value allowed.
        max: u64,
    },
    /// An array had another length than the message layout needs.
    #[error("{what}: expected an array of {expected} items, found {found}")]
    ArrayLength {
        /// Which item.
        what: &'static str,
        /// Items expected.
        expected: u64,
        /// Items found.
        found: u64,
    },
    /// A fixed-size byte string had the wrong length.
    #[error("{field}: expected {expected} bytes, found {found}")]
    FixedLength {
        /// Which field.
        field: &'static str,
        /// Bytes expected.
        expected: usize,
        /// Bytes found.
        found: u64,
    },
    /// A text string was not UTF-8.
    #[error("text string is not UTF-8")]
    Utf8,
    /// Bytes were left after the last item of the frame.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

const UINT: u8 = 0;
const BYTES: u8 = 2;
const TEXT: u8 = 3;
const ARRAY: u8 = 4;
const MAP: u8 = 5;
const SIMPLE: u8 = 7;

/// Appends a canonical (shortest-form) head.
fn head(out: &mut Vec<u8>, major: u8, value: u64) {
    let m = major << 5;
    if value < 24 {
        out.push(m | value as u8);
    } else if value <= u8::MAX as u64 {
        out.push(m | 24);
        out.push(value as u8);
    } else if value <= u16::MAX as u64 {
        out.push(m | 25);
        out.extend_from_slice(&(value as u16).to_be_bytes());
    } else if value <= u32::MAX as u64 {
        out.push(m | 26);
        out.extend_from_slice(&(value as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&value.to_be_bytes());
    }
}

/// Appends an unsigned integer.
pub fn uint(out: &mut Vec<u8>, v: u64) {
    head(out, UINT, v);
}

/// Appends a byte string.
pub fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, BYTES, b.len() as u64);
    out.extend_from_slice(b);
}

/// Appends only the head of a byte string of `len` bytes; the caller appends the bytes.
pub fn bytes_head(out: &mut Vec<u8>, len: usize) {
    head(out, BYTES, len as u64);
}

/// Appends a text string.
pub fn text(out: &mut Vec<u8>, s: &str) {
    head(out, TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends an array head of `len` items.
pub fn array(out: &mut Vec<u8>, len: usize) {
    head(out, ARRAY, len as u64);
}

/// Appends a map head of `len` entries; the caller appends key, value, key, value, ... with the
/// keys in canonical (bytewise sorted) order.
pub fn map(out: &mut Vec<u8>, len: usize) {
    head(out, MAP, len as u64);
}

/// Appends an unsigned integer, or `null` for `None`.
pub fn opt_uint(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => uint(out, v),
        None => null(out),
    }
}

/// Appends a single-precision float.
pub fn f32(out: &mut Vec<u8>, v: f32) {
    out.push((SIMPLE << 5) | 26);
    out.extend_from_slice(&v.to_bits().to_be_bytes());
}

/// Appends `null`.
pub fn null(out: &mut Vec<u8>) {
    out.push((SIMPLE << 5) | 22);
}

/// Reads canonical CBOR items from a borrowed slice.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reader(pos {} of {})", self.pos, self.buf.len())
    }
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn byte(&mut self) -> Result<u8, CborError> {
        let b = *self.buf.get(self.pos).ok_or(CborError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CborError> {
        let end = self.pos.checked_add(n).ok_or(CborError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(CborError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn peek(&self) -> Result<u8, CborError> {
        self.buf.get(self.pos).copied().ok_or(CborError::Truncated)
    }

    /// Reads a head of the given major type and returns its value.
    fn head(&mut self, major: u8, expected: &'static str) -> Result<u64, CborError> {
        let b = self.byte()?;
        let (m, info) = (b >> 5, b & 0x1f);
        if m != major {
            return Err(CborError::UnexpectedType {
                expected,
                major: m,
                info,
            });
        }
        let (value, min) = match info {
            0..=23 => return Ok(info as u64),
            24 => (self.take(1)?[0] as u64, 24),
            25 => {
                let s = self.take(2)?;
                (u16::from_be_bytes([s[0], s[1]]) as u64, 0x100)
            }
            26 => {
                let s = self.take(4)?;
                (
                    u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as u64,
                    0x1_0000,
                )
            }
            27 => {
                let s = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(s);
                (u64::from_be_bytes(a), 0x1_0000_0000)
            }
            _ => return Err(CborError::NonCanonical { major: m, info }),
        };
        if value < min {
            return Err(CborError::NonCanonical { major: m, info });
        }
        Ok(value)
    }

    /// Reads a head of the given major type whose value is at most `max`.
    fn bounded(
        &mut self,
        major: u8,
        expected: &'static str,
        field: &'static str,
        max: u64,
    ) -> Result<u64, CborError> {
        let value = self.head(major, expected)?;
        if value > max {
            return Err(CborError::OutOfRange { field, value, max });
        }
        Ok(value)
    }

    /// Reads an unsigned integer no larger than `max`.
    pub fn uint(&mut self, field: &'static str, max: u64) -> Result<u64, CborError> {
        self.bounded(UINT, "unsigned integer", field, max)
    }

    /// Reads a byte string of at most `max` bytes, borrowed from the input.
    pub fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], CborError> {
        let len = self.bounded(BYTES, "byte string", field, max as u64)?;
        self.take(len as usize)
    }

    /// Reads a byte string of exactly `N` bytes.
    pub fn fixed<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], CborError> {
        let len = self.head(BYTES, "byte string")?;
        if len != N as u64 {
            return Err(CborError::FixedLength {
                field,
                expected: N,
                found: len,
            });
        }
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads a UTF-8 text string of at most `max` bytes.
    pub fn text(&mut self, field: &'static str, max: usize) -> Result<&'a str, CborError> {
        let len = self.bounded(TEXT, "text string", field, max as u64)?;
        std::str::from_utf8(self.take(len as usize)?).map_err(|_| CborError::Utf8)
    }

    /// Reads an array head with at most `max` items and returns the count.
    pub fn array(&mut self, field: &'static str, max: usize) -> Result<usize, CborError> {
        Ok(self.bounded(ARRAY, "array", field, max as u64)? as usize)
    }

    /// Reads an array head that must have exactly `n` items.
    pub fn array_exact(&mut self, what: &'static str, n: u64) -> Result<(), CborError> {
        let len = self.head(ARRAY, "array")?;
        if len != n {
            return Err(CborError::ArrayLength {
                what,
                expected: n,
                found: len,
            });
        }
        Ok(())
    }

    /// Reads a map head with at most `max` entries and returns the count.
    pub fn map(&mut self, field: &'static str, max: usize) -> Result<usize, CborError> {
        Ok(self.bounded(MAP, "map", field, max as u64)? as usize)
    }

    /// Reads an unsigned integer no larger than `max`, or `null` as `None`.
    pub fn opt_uint(&mut self, field: &'static str, max: u64) -> Result<Option<u64>, CborError> {
        if self.null()? {
            return Ok(None);
        }
        self.uint(field, max).map(Some)
    }

    /// Reads a single-precision float.
    pub fn f32(&mut self) -> Result<f32, CborError> {
        let b = self.byte()?;
        if b != (SIMPLE << 5) | 26 {
            return Err(CborError::UnexpectedType {
                expected: "single-precision float",
                major: b >> 5,
                info: b & 0x1f,
            });
        }
        let s = self.take(4)?;
        Ok(f32::from_bits(u32::from_be_bytes([s[0], s[1], s[2], s[3]])))
    }

    /// Consumes a `null` if one is next and says whether it did.
    pub fn null(&mut self) -> Result<bool, CborError> {
        if self.peek()? == (SIMPLE << 5) | 22 {
            self.pos += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Bytes not consumed yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<(), CborError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(CborError::Trailing(n)),
        }
    }
}

/// The bridge to cbor4ii's serde layer, for payloads that are serde types (see the module doc).
pub mod serde {
    use cbor4ii::core::dec::Read as _;

    /// Encodes `v` with cbor4ii's serde layer.
    pub fn encode<T: ::serde::Serialize>(v: &T) -> Vec<u8> {
        // The writer is a Vec: it can fail only by running out of memory, which aborts anyway.
        cbor4ii::serde::to_vec(Vec::new(), v).expect("a Vec never fails to grow")
    }

    /// Decodes one item that must fill the whole of `buf`; trailing bytes are an error. The
    /// error is the decoder's message.
    pub fn decode_exact<'a, T: ::serde::Deserialize<'a>>(buf: &'a [u8]) -> Result<T, String> {
        let mut de = cbor4ii::serde::Deserializer::new(cbor4ii::core::utils::SliceReader::new(buf));
        let v = T::deserialize(&mut de).map_err(|e| e.to_string())?;
        let mut rest = de.into_inner();
        match rest.fill(1) {
            Ok(r) if r.as_ref().is_empty() => Ok(v),
            _ => Err("trailing bytes".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_shortest_and_round_trip() {
        for v in [
            0u64,
            23,
            24,
            255,
            256,
            65535,
            65536,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            uint(&mut out, v);
            let mut r = Reader::new(&out);
            assert_eq!(r.uint("v", u64::MAX).unwrap(), v);
            r.finish().unwrap();
        }
        let mut out = Vec::new();
        uint(&mut out, 24);
        assert_eq!(out, [0x18, 24]);
    }

    #[test]
    fn non_canonical_and_indefinite_are_rejected() {
        // 5 encoded in one extra byte.
        assert!(matches!(
            Reader::new(&[0x18, 5]).uint("v", 100),
            Err(CborError::NonCanonical { .. })
        ));
        // Indefinite-length byte string.
        assert!(matches!(
            Reader::new(&[0x5f]).bytes("b", 100),
            Err(CborError::NonCanonical { .. })
        ));
        // Length that claims more than the input holds.
        assert_eq!(
            Reader::new(&[0x5a, 0xff, 0xff, 0xff, 0xff]).bytes("b", usize::MAX),
            Err(CborError::Truncated)
        );
    }

    #[test]
    fn bounds_and_trailing_bytes_are_enforced() {
        let mut out = Vec::new();
        bytes(&mut out, &[1, 2, 3]);
        assert!(matches!(
            Reader::new(&out).bytes("b", 2),
            Err(CborError::OutOfRange { .. })
        ));
        out.push(0);
        let mut r = Reader::new(&out);
        r.bytes("b", 3).unwrap();
        assert_eq!(r.finish(), Err(CborError::Trailing(1)));
    }

    #[test]
    fn maps_and_optional_integers_round_trip() {
        let mut out = Vec::new();
        map(&mut out, 1);
        text(&mut out, "k");
        opt_uint(&mut out, None);
        opt_uint(&mut out, Some(300));
        assert_eq!(out, [0xa1, 0x61, b'k', 0xf6, 0x19, 0x01, 0x2c]);
        let mut r = Reader::new(&out);
        assert_eq!(r.map("m", 1).unwrap(), 1);
        assert_eq!(r.text("k", 1).unwrap(), "k");
        assert_eq!(r.opt_uint("a", 0).unwrap(), None);
        assert_eq!(r.remaining(), 3);
        assert!(matches!(
            r.opt_uint("b", 299),
            Err(CborError::OutOfRange { .. })
        ));
        assert!(matches!(
            Reader::new(&out).map("m", 0),
            Err(CborError::OutOfRange { .. })
        ));
    }

    #[test]
    fn serde_bridge_rejects_trailing_bytes() {
        let mut bytes = serde::encode(&(7u32, "x"));
        assert_eq!(
            serde::decode_exact::<(u32, String)>(&bytes).unwrap(),
            (7, "x".into())
        );
        bytes.push(0);
        assert_eq!(
            serde::decode_exact::<(u32, String)>(&bytes).unwrap_err(),
            "trailing bytes"
        );
    }
}
