//! A fixed-size set of piece indices (a bitset): what a simulated node holds, what a
//! sender believes its peer holds, which pieces are in flight to a node.

use serde::{Deserialize, Serialize};

/// A set of piece indices `0..len`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceSet {
    words: Vec<u64>,
    len: u32,
    count: u32,
}

impl PieceSet {
    /// The empty set over `len` pieces.
    pub fn new(len: u32) -> PieceSet {
        PieceSet {
            words: vec![0; (len as usize).div_ceil(64)],
            len,
            count: 0,
        }
    }

    /// The full set over `len` pieces.
    pub fn full(len: u32) -> PieceSet {
        let mut s = PieceSet::new(len);
        for i in 0..len {
            s.insert(i);
        }
        s
    }

    /// Number of pieces the set ranges over.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Number of members.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// True if no member.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// True if every piece is a member.
    pub fn is_full(&self) -> bool {
        self.count == self.len
    }

    /// Membership.
    pub fn contains(&self, i: u32) -> bool {
        debug_assert!(i < self.len);
        self.words[(i / 64) as usize] >> (i % 64) & 1 == 1
    }

    /// Adds `i`; returns true if it was new.
    pub fn insert(&mut self, i: u32) -> bool {
        let w = &mut self.words[(i / 64) as usize];
        let bit = 1u64 << (i % 64);
        if *w & bit != 0 {
            return false;
        }
        *w |= bit;
        self.count += 1;
        true
    }

    /// Removes `i`; returns true if it was present.
    pub fn remove(&mut self, i: u32) -> bool {
        let w = &mut self.words[(i / 64) as usize];
        let bit = 1u64 << (i % 64);
        if *w & bit == 0 {
            return false;
        }
        *w &= !bit;
        self.count -= 1;
        true
    }

    /// Members in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros();
                w &= w - 1;
                Some(wi as u32 * 64 + b)
            })
        })
    }

    /// Members of `self` that are in neither `a` nor `b`, in increasing order.
    pub fn iter_minus2<'a>(
        &'a self,
        a: &'a PieceSet,
        b: &'a PieceSet,
    ) -> impl Iterator<Item = u32> + 'a {
        self.words.iter().enumerate().flat_map(move |(wi, &w)| {
            let mut w = w & !a.words[wi] & !b.words[wi];
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros();
                w &= w - 1;
                Some(wi as u32 * 64 + bit)
            })
        })
    }

    /// The first member of `self` that is in neither `a` nor `b`, scanning cyclically
    /// from index `from` (word at a time).
    pub fn first_minus2_from(&self, a: &PieceSet, b: &PieceSet, from: u32) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let from = from % self.len;
        let nw = self.words.len();
        let w0 = (from / 64) as usize;
        for k in 0..=nw {
            let wi = (w0 + k) % nw;
            let mut w = self.words[wi] & !a.words[wi] & !b.words[wi];
            if k == 0 {
                w &= !0u64 << (from % 64);
            } else if k == nw {
                w &= !(!0u64 << (from % 64));
            }
            if w != 0 {
                return Some(wi as u32 * 64 + w.trailing_zeros());
            }
        }
        None
    }

    /// Makes `self` the union of `a` and `b` (all three over the same length).
    pub fn assign_union(&mut self, a: &PieceSet, b: &PieceSet) {
        let mut count = 0;
        for ((w, x), y) in self.words.iter_mut().zip(&a.words).zip(&b.words) {
            *w = x | y;
            count += w.count_ones();
        }
        self.count = count;
    }

    /// Adds every member of `other`.
    pub fn union_with(&mut self, other: &PieceSet) {
        let mut count = 0;
        for (w, o) in self.words.iter_mut().zip(&other.words) {
            *w |= o;
            count += w.count_ones();
        }
        self.count = count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations() {
        let mut s = PieceSet::new(130);
        assert!(s.insert(0) && s.insert(64) && s.insert(129));
        assert!(!s.insert(64));
        assert_eq!(s.count(), 3);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 64, 129]);
        let mut a = PieceSet::new(130);
        a.insert(64);
        let b = PieceSet::new(130);
        assert_eq!(s.iter_minus2(&a, &b).collect::<Vec<_>>(), vec![0, 129]);
        assert_eq!(s.first_minus2_from(&a, &b, 1), Some(129));
        assert_eq!(s.first_minus2_from(&a, &b, 130), Some(0));
        assert_eq!(s.first_minus2_from(&a, &b, 0), Some(0));
        let mut only_low = PieceSet::new(130);
        only_low.insert(3);
        assert_eq!(only_low.first_minus2_from(&a, &b, 100), Some(3));
        assert_eq!(only_low.first_minus2_from(&a, &only_low, 100), None);
        assert!(s.remove(0) && !s.remove(0));
        let mut u = PieceSet::new(130);
        u.assign_union(&a, &s);
        assert_eq!(u.count(), 2);
        a.union_with(&s);
        assert_eq!(a.count(), 2);
        assert!(PieceSet::full(130).is_full());
        assert_eq!(PieceSet::full(130).count(), 130);
    }
}
