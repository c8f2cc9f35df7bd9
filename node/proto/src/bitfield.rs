//! A fixed-length set of piece indices: which pieces of one bundle a node holds.
//!
//! One type for both users: the store keeps it next to the pieces (one write transaction
//! changes both) and the engine keeps one per bundle and per peer for scheduling. Bit `i` is
//! bit `i % 8` (least significant first) of byte `i / 8`; bits past the length are zero, so
//! equal sets have equal bytes. The count of present pieces is kept alongside, because the
//! scheduler asks for it on every plan.

use std::fmt;

use crate::id::PieceIndex;

/// Which of `len` pieces are present.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Bitfield {
    len: u32,
    /// Pieces present (the number of ones in `bits`).
    ones: u32,
    bits: Vec<u8>,
}

impl fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitfield({}/{})", self.ones, self.len)
    }
}

/// Why bytes are not a bitfield of the given length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitfieldError {
    /// Wrong number of bytes for the length.
    #[error("a bitfield of {len} pieces is {expected} bytes, got {got}")]
    WrongSize {
        /// Number of pieces.
        len: u32,
        /// Bytes needed.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// A bit past the end is set.
    #[error("bits past the end of a bitfield of {len} pieces are set")]
    PaddingSet {
        /// Number of pieces.
        len: u32,
    },
}

impl Bitfield {
    /// An empty set over `len` pieces.
    pub fn new(len: u32) -> Self {
        Bitfield {
            len,
            ones: 0,
            bits: vec![0; (len as usize).div_ceil(8)],
        }
    }

    /// A full set over `len` pieces.
    pub fn full(len: u32) -> Self {
        let mut b = Bitfield::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    /// Parses the bytes made by [`Bitfield::as_bytes`].
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Result<Self, BitfieldError> {
        let expected = (len as usize).div_ceil(8);
        if bytes.len() != expected {
            return Err(BitfieldError::WrongSize {
                len,
                expected,
                got: bytes.len(),
            });
        }
        let tail = len % 8;
        if tail != 0 && bytes[expected - 1] >> tail != 0 {
            return Err(BitfieldError::PaddingSet { len });
        }
        Ok(Bitfield {
            len,
            ones: bytes.iter().map(|b| b.count_ones()).sum(),
            bits: bytes.to_vec(),
        })
    }

    /// The packed bits.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Number of pieces the set ranges over.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the set ranges over no pieces at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether piece `i` is present (false past the end).
    pub fn get(&self, i: PieceIndex) -> bool {
        i < self.len && self.bits[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Marks piece `i` present; returns whether it was absent. Ignores indices past the end.
    pub fn set(&mut self, i: PieceIndex) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.bits[(i / 8) as usize] |= 1 << (i % 8);
        self.ones += 1;
        true
    }

    /// Marks piece `i` absent; returns whether it was present.
    pub fn clear(&mut self, i: PieceIndex) -> bool {
        if !self.get(i) {
            return false;
        }
        self.bits[(i / 8) as usize] &= !(1 << (i % 8));
        self.ones -= 1;
        true
    }

    /// Number of pieces present.
    pub fn count(&self) -> u32 {
        self.ones
    }

    /// Whether every piece is present.
    pub fn is_complete(&self) -> bool {
        self.count() == self.len
    }

    /// Indices of present pieces, ascending.
    pub fn iter_present(&self) -> impl Iterator<Item = PieceIndex> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }

    /// Indices of missing pieces, ascending.
    pub fn iter_missing(&self) -> impl Iterator<Item = PieceIndex> + '_ {
        (0..self.len).filter(|&i| !self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_count_and_bytes() {
        let mut b = Bitfield::new(11);
        assert_eq!(b.as_bytes().len(), 2);
        assert!(b.set(0));
        assert!(!b.set(0));
        assert!(b.set(10));
        assert!(!b.set(11));
        assert!(b.get(10) && !b.get(11) && !b.get(5));
        assert_eq!(b.count(), 2);
        assert_eq!(b.iter_present().collect::<Vec<_>>(), vec![0, 10]);
        assert_eq!(b.iter_missing().count(), 9);
        let back = Bitfield::from_bytes(11, b.as_bytes()).unwrap();
        assert_eq!(back, b);
        assert!(Bitfield::full(11).is_complete());
        assert!(Bitfield::new(0).is_complete());
        b.clear(10);
        assert_eq!(b.count(), 1);
        assert!(matches!(
            Bitfield::from_bytes(11, &[0, 0, 0]),
            Err(BitfieldError::WrongSize { .. })
        ));
        assert_eq!(
            Bitfield::from_bytes(11, &[0, 0b1000_0000]),
            Err(BitfieldError::PaddingSet { len: 11 })
        );
    }

    #[test]
    fn count_follows_set_and_clear_across_bytes() {
        let mut b = Bitfield::new(130);
        assert!(b.set(0) && b.set(64) && b.set(129));
        assert!(!b.set(129) && !b.set(130));
        assert_eq!(b.count(), 3);
        assert!(b.get(64) && !b.get(65) && !b.get(1000));
        assert_eq!(b.iter_present().collect::<Vec<_>>(), [0, 64, 129]);
        assert!(b.clear(64) && !b.clear(64) && !b.clear(1000));
        assert_eq!(b.count(), 2);
        let back = Bitfield::from_bytes(130, b.as_bytes()).unwrap();
        assert_eq!((back.count(), &back), (2, &b));
        assert!(Bitfield::full(70).is_complete());
    }
}
