//! The small subset of CBOR (RFC 8949) that Mule's on-disk and on-wire records use, on top of
//! cbor4ii's core encoder and decoder.
//!
//! Canonical form is not checked here item by item: callers decode, re-encode with [`Enc`] and
//! compare bytes, which rejects every non-shortest integer or length, indefinite-length item,
//! unsorted or duplicate map key and any other second spelling of the same value at once.

use std::convert::Infallible;

use cbor4ii::core::dec::{self, Decode, Reference};
use cbor4ii::core::enc::{self, Encode};
use cbor4ii::core::error::{DecodeError, EncodeError, Len};
use cbor4ii::core::types;

/// Nesting limit of the decoder; Mule's records nest at most three deep.
const MAX_DEPTH: usize = 8;

/// A growable buffer that never fails, so encoding has no error path.
pub(crate) struct Enc(pub(crate) Vec<u8>);

struct VecWriter<'a>(&'a mut Vec<u8>);

impl enc::Write for VecWriter<'_> {
    type Error = Infallible;

    fn push(&mut self, input: &[u8]) -> Result<(), Infallible> {
        self.0.extend_from_slice(input);
        Ok(())
    }
}

fn infallible(r: Result<(), EncodeError<Infallible>>) {
    match r {
        Ok(()) => {}
        Err(EncodeError::Write(never)) => match never {},
        // `EncodeError` is non-exhaustive, but cbor4ii only ever reports the writer's error and
        // our writer cannot fail; nothing to do.
        Err(_) => {}
    }
}

impl Enc {
    pub(crate) fn new() -> Self {
        Enc(Vec::new())
    }

    pub(crate) fn array(&mut self, len: usize) {
        infallible(types::Array::bounded(len, &mut VecWriter(&mut self.0)));
    }

    pub(crate) fn map(&mut self, len: usize) {
        infallible(types::Map::bounded(len, &mut VecWriter(&mut self.0)));
    }

    pub(crate) fn uint(&mut self, v: u64) {
        infallible(v.encode(&mut VecWriter(&mut self.0)));
    }

    pub(crate) fn null(&mut self) {
        infallible(types::Null.encode(&mut VecWriter(&mut self.0)));
    }

    pub(crate) fn opt_uint(&mut self, v: Option<u64>) {
        match v {
            Some(v) => self.uint(v),
            None => self.null(),
        }
    }

    pub(crate) fn text(&mut self, v: &str) {
        infallible(v.encode(&mut VecWriter(&mut self.0)));
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) {
        infallible(types::Bytes(v).encode(&mut VecWriter(&mut self.0)));
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Why bytes are not the expected CBOR item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    /// The input ended inside an item.
    #[error("truncated: input ends inside {0}")]
    Truncated(&'static str),
    /// Any other decoding failure (wrong type, bad UTF-8, too deep, ...).
    #[error("malformed CBOR while reading {what}: {detail}")]
    Malformed {
        /// What was being read.
        what: &'static str,
        /// cbor4ii's description.
        detail: String,
    },
    /// An array or map had a different number of entries than required.
    #[error("{what} must have {expected} entries, found {found}")]
    WrongLength {
        /// What was being read.
        what: &'static str,
        /// Required count.
        expected: usize,
        /// Count found.
        found: usize,
    },
    /// Indefinite-length items are never canonical.
    #[error("{0} uses an indefinite length, which is not canonical")]
    Indefinite(&'static str),
    /// A byte string had the wrong length.
    #[error("{what} must be {expected} bytes, found {found}")]
    WrongByteLength {
        /// What was being read.
        what: &'static str,
        /// Required length.
        expected: usize,
        /// Length found.
        found: usize,
    },
}

/// A slice reader that knows its position, so trailing bytes can be reported precisely.
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'de> dec::Read<'de> for Dec<'de> {
    type Error = Infallible;

    fn fill<'short>(&'short mut self, want: usize) -> Result<Reference<'de, 'short>, Infallible> {
        let rest = &self.buf[self.pos..];
        Ok(Reference::Long(&rest[..want.min(rest.len())]))
    }

    fn advance(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
    }

    fn step_in(&mut self) -> bool {
        if self.depth < MAX_DEPTH {
            self.depth += 1;
            true
        } else {
            false
        }
    }

    fn step_out(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }
}

fn map_err(what: &'static str, e: DecodeError<Infallible>) -> CborError {
    match e {
        DecodeError::Eof { .. } => CborError::Truncated(what),
        DecodeError::RequireLength {
            found: Len::Indefinite,
            ..
        } => CborError::Indefinite(what),
        // Our reader always lends everything left, so a definite-length string that needs more
        // than that was cut short.
        DecodeError::RequireLength { .. } => CborError::Truncated(what),
        other => CborError::Malformed {
            what,
            detail: other.to_string(),
        },
    }
}

impl<'a> Dec<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Dec {
            buf,
            pos: 0,
            depth: 0,
        }
    }

    /// Bytes not consumed yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn decode<T: Decode<'a>>(&mut self, what: &'static str) -> Result<T, CborError> {
        T::decode(self).map_err(|e| map_err(what, e))
    }

    /// A definite-length array header; returns the entry count.
    pub(crate) fn array(&mut self, what: &'static str) -> Result<usize, CborError> {
        match types::Array::len(self).map_err(|e| map_err(what, e))? {
            Some(n) => Ok(n),
            None => Err(CborError::Indefinite(what)),
        }
    }

    /// A definite-length array header with exactly `expected` entries.
    pub(crate) fn array_of(
        &mut self,
        what: &'static str,
        expected: usize,
    ) -> Result<(), CborError> {
        let found = self.array(what)?;
        if found != expected {
            return Err(CborError::WrongLength {
                what,
                expected,
                found,
            });
        }
        Ok(())
    }

    /// A definite-length map header; returns the entry count.
    pub(crate) fn map(&mut self, what: &'static str) -> Result<usize, CborError> {
        match types::Map::len(self).map_err(|e| map_err(what, e))? {
            Some(n) => Ok(n),
            None => Err(CborError::Indefinite(what)),
        }
    }

    pub(crate) fn uint(&mut self, what: &'static str) -> Result<u64, CborError> {
        self.decode::<u64>(what)
    }

    pub(crate) fn opt_uint(&mut self, what: &'static str) -> Result<Option<u64>, CborError> {
        self.decode::<Option<u64>>(what)
    }

    /// Consumes a CBOR null if one comes next; returns whether it did.
    pub(crate) fn null(&mut self) -> Result<bool, CborError> {
        if self.buf.get(self.pos) == Some(&0xf6) {
            self.pos += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    pub(crate) fn text(&mut self, what: &'static str) -> Result<&'a str, CborError> {
        self.decode::<&'a str>(what)
    }

    pub(crate) fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], CborError> {
        self.decode::<types::Bytes<&'a [u8]>>(what).map(|b| b.0)
    }

    pub(crate) fn bytes_n<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], CborError> {
        let b = self.bytes(what)?;
        b.try_into().map_err(|_| CborError::WrongByteLength {
            what,
            expected: N,
            found: b.len(),
        })
    }
}
