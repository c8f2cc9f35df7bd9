//! A minimal, strict CBOR (RFC 8949) writer and reader for the session frames.
//!
//! Only the subset the protocol uses: unsigned integers (major 0), byte strings (2),
//! text strings (3), arrays (4), and from major 7 `false`, `true`, `null` and
//! single-precision floats. The reader accepts **only the canonical form** the writer
//! produces: shortest-form heads, definite lengths, no tags, no maps. Anything else is a
//! typed [`CborError`], never a panic, so a peer cannot make two different byte strings
//! mean the same frame and cannot make the decoder allocate more than the frame holds.
//!
//! Why not `cbor4ii` + serde: it accepts trailing bytes and non-canonical input, its serde
//! form of `Vec<u8>` is an array of integers (5–9 % larger than a byte string unless an
//! extra crate is added), and a piece's payload would be copied through serde. This
//! module lets the piece frame be a hand-written head followed by the raw payload bytes.

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
const SIMPLE: u8 = 7;

/// Appends a canonical (shortest-form) head.
pub(crate) fn head(out: &mut Vec<u8>, major: u8, value: u64) {
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
pub(crate) fn uint(out: &mut Vec<u8>, v: u64) {
    head(out, UINT, v);
}

/// Appends a byte string.
pub(crate) fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, BYTES, b.len() as u64);
    out.extend_from_slice(b);
}

/// Appends only the head of a byte string of `len` bytes; the caller appends the bytes.
pub(crate) fn bytes_head(out: &mut Vec<u8>, len: usize) {
    head(out, BYTES, len as u64);
}

/// Appends a text string.
pub(crate) fn text(out: &mut Vec<u8>, s: &str) {
    head(out, TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends an array head of `len` items.
pub(crate) fn array(out: &mut Vec<u8>, len: usize) {
    head(out, ARRAY, len as u64);
}

/// Appends a single-precision float.
pub(crate) fn f32(out: &mut Vec<u8>, v: f32) {
    out.push((SIMPLE << 5) | 26);
    out.extend_from_slice(&v.to_bits().to_be_bytes());
}

/// Appends `null`.
pub(crate) fn null(out: &mut Vec<u8>) {
    out.push((SIMPLE << 5) | 22);
}

/// Reads canonical CBOR items from a borrowed slice.
pub(crate) struct Reader<'a> {
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
    pub(crate) fn new(buf: &'a [u8]) -> Self {
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

    /// Reads an unsigned integer no larger than `max`.
    pub(crate) fn uint(&mut self, field: &'static str, max: u64) -> Result<u64, CborError> {
        let v = self.head(UINT, "unsigned integer")?;
        if v > max {
            return Err(CborError::OutOfRange {
                field,
                value: v,
                max,
            });
        }
        Ok(v)
    }

    /// Reads a byte string of at most `max` bytes, borrowed from the input.
    pub(crate) fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], CborError> {
        let len = self.head(BYTES, "byte string")?;
        if len > max as u64 {
            return Err(CborError::OutOfRange {
                field,
                value: len,
                max: max as u64,
            });
        }
        self.take(len as usize)
    }

    /// Reads a byte string of exactly `N` bytes.
    pub(crate) fn fixed<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], CborError> {
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
    pub(crate) fn text(&mut self, field: &'static str, max: usize) -> Result<&'a str, CborError> {
        let len = self.head(TEXT, "text string")?;
        if len > max as u64 {
            return Err(CborError::OutOfRange {
                field,
                value: len,
                max: max as u64,
            });
        }
        std::str::from_utf8(self.take(len as usize)?).map_err(|_| CborError::Utf8)
    }

    /// Reads an array head with at most `max` items and returns the count.
    pub(crate) fn array(&mut self, field: &'static str, max: usize) -> Result<usize, CborError> {
        let len = self.head(ARRAY, "array")?;
        if len > max as u64 {
            return Err(CborError::OutOfRange {
                field,
                value: len,
                max: max as u64,
            });
        }
        Ok(len as usize)
    }

    /// Reads an array head that must have exactly `n` items.
    pub(crate) fn array_exact(&mut self, what: &'static str, n: u64) -> Result<(), CborError> {
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

    /// Reads a single-precision float.
    pub(crate) fn f32(&mut self) -> Result<f32, CborError> {
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
    pub(crate) fn null(&mut self) -> Result<bool, CborError> {
        if self.peek()? == (SIMPLE << 5) | 22 {
            self.pos += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(&self) -> Result<(), CborError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(CborError::Trailing(n)),
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
}
