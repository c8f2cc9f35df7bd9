//! A fixed-length set of piece indices: which pieces of one bundle a node holds.

use mule_bundle::PieceIndex;

/// A fixed-length bit set over the pieces `0..len` of one bundle.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bitfield {
    len: u32,
    ones: u32,
    words: Vec<u64>,
}

impl std::fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitfield({}/{})", self.ones, self.len)
    }
}

impl Bitfield {
    /// An empty set over `len` pieces.
    pub fn new(len: u32) -> Self {
        Bitfield {
            len,
            ones: 0,
            words: vec![0; (len as usize).div_ceil(64)],
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

    /// Number of pieces the set ranges over.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the set ranges over no pieces at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of pieces in the set.
    pub fn count(&self) -> u32 {
        self.ones
    }

    /// Whether every piece is in the set.
    pub fn is_complete(&self) -> bool {
        self.ones == self.len
    }

    /// Whether piece `i` is in the set (false when out of range).
    pub fn get(&self, i: PieceIndex) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Adds piece `i`; returns false if it was already present or is out of range.
    pub fn set(&mut self, i: PieceIndex) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.words[(i / 64) as usize] |= 1 << (i % 64);
        self.ones += 1;
        true
    }

    /// Removes piece `i`; returns whether it was present.
    pub fn clear(&mut self, i: PieceIndex) -> bool {
        if !self.get(i) {
            return false;
        }
        self.words[(i / 64) as usize] &= !(1 << (i % 64));
        self.ones -= 1;
        true
    }

    /// The pieces in the set, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = PieceIndex> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_count() {
        let mut b = Bitfield::new(130);
        assert!(b.set(0) && b.set(64) && b.set(129));
        assert!(!b.set(129) && !b.set(130));
        assert_eq!(b.count(), 3);
        assert!(b.get(64) && !b.get(65) && !b.get(1000));
        assert_eq!(b.iter().collect::<Vec<_>>(), [0, 64, 129]);
        assert!(b.clear(64) && !b.clear(64));
        assert!(Bitfield::full(70).is_complete());
    }
}
