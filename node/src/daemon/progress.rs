//! Download rates per bundle, for `mule status` (rate and ETA).
//!
//! Every stored piece is noted with its size and the core's clock; a bundle's
//! rate is the bytes stored in the last [`WINDOW_MS`] over the time covered.
//! Pure bookkeeping with time passed in; bounded: at most [`MAX_BUNDLES`]
//! bundles are tracked (the least recently active is dropped), and a bundle
//! with nothing stored for a window has no rate.

use std::collections::{HashMap, VecDeque};

use mule_bundle::BundleId;

/// How far back a rate looks.
pub const WINDOW_MS: u64 = 10_000;
/// Bundles tracked at once.
pub const MAX_BUNDLES: usize = 256;
/// Samples kept per bundle (one per stored piece, coalesced per 100 ms).
const MAX_SAMPLES: usize = 128;
/// Samples closer than this are merged.
const COALESCE_MS: u64 = 100;

#[derive(Debug, Default)]
struct Track {
    /// (time, bytes stored in the slot that starts then), oldest first.
    samples: VecDeque<(u64, u64)>,
    /// When the first piece of the current run of activity was stored.
    first_ms: u64,
}

/// Per-bundle stored-byte rates.
#[derive(Debug, Default)]
pub struct Progress {
    tracks: HashMap<BundleId, Track>,
}

impl Progress {
    /// `bytes` of `bundle` were stored at `now_ms`.
    pub fn note(&mut self, bundle: BundleId, bytes: u64, now_ms: u64) {
        if !self.tracks.contains_key(&bundle) && self.tracks.len() >= MAX_BUNDLES {
            let oldest = self
                .tracks
                .iter()
                .min_by_key(|(_, t)| t.samples.back().map_or(0, |s| s.0))
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.tracks.remove(&id);
            }
        }
        let t = self.tracks.entry(bundle).or_default();
        prune(t, now_ms);
        if t.samples.is_empty() {
            t.first_ms = now_ms;
        }
        match t.samples.back_mut() {
            Some((at, b)) if now_ms.saturating_sub(*at) < COALESCE_MS => *b += bytes,
            _ => {
                if t.samples.len() == MAX_SAMPLES {
                    t.samples.pop_front();
                }
                t.samples.push_back((now_ms, bytes));
            }
        }
    }

    /// Bytes per second stored for `bundle` over the last window, if any
    /// piece of it was stored in that window.
    pub fn rate(&mut self, bundle: &BundleId, now_ms: u64) -> Option<f64> {
        let t = self.tracks.get_mut(bundle)?;
        prune(t, now_ms);
        if t.samples.is_empty() {
            self.tracks.remove(bundle);
            return None;
        }
        let bytes: u64 = t.samples.iter().map(|s| s.1).sum();
        // The time covered: from the start of the window, or of this run of
        // activity if it began later; at least one second, so that the first
        // piece does not read as an absurd rate.
        let start = t.first_ms.max(now_ms.saturating_sub(WINDOW_MS));
        let span_ms = now_ms.saturating_sub(start).max(1000);
        Some(bytes as f64 * 1000.0 / span_ms as f64)
    }

    /// The bundle is complete or gone: forget it.
    pub fn forget(&mut self, bundle: &BundleId) {
        self.tracks.remove(bundle);
    }
}

fn prune(t: &mut Track, now_ms: u64) {
    while t
        .samples
        .front()
        .is_some_and(|s| now_ms.saturating_sub(s.0) > WINDOW_MS)
    {
        t.samples.pop_front();
    }
}

/// Seconds until `remaining` bytes are stored at `rate` bytes per second.
pub fn eta_s(remaining: u64, rate: f64) -> Option<u64> {
    (rate > 0.0 && rate.is_finite()).then(|| (remaining as f64 / rate).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> BundleId {
        BundleId([n; 32])
    }

    #[test]
    fn steady_arrivals_give_their_rate() {
        let mut p = Progress::default();
        // 64 KiB every 100 ms for 20 s: 640 KiB/s.
        for i in 0..200u64 {
            p.note(id(1), 65_536, i * 100);
        }
        let r = p.rate(&id(1), 19_900).expect("active");
        assert!((r - 655_360.0).abs() / 655_360.0 < 0.02, "{r}");
        assert_eq!(eta_s(6_553_600, r), Some(10));
    }

    #[test]
    fn a_stalled_bundle_has_no_rate() {
        let mut p = Progress::default();
        p.note(id(1), 1000, 0);
        assert!(p.rate(&id(1), 500).is_some());
        assert_eq!(p.rate(&id(1), WINDOW_MS + 1), None);
        assert_eq!(p.rate(&id(2), 0), None);
    }

    #[test]
    fn the_first_piece_is_not_an_absurd_rate() {
        let mut p = Progress::default();
        p.note(id(1), 65_536, 5_000);
        assert_eq!(p.rate(&id(1), 5_001), Some(65_536.0));
    }

    #[test]
    fn tracking_is_bounded() {
        let mut p = Progress::default();
        for n in 0..(MAX_BUNDLES as u64 + 10) {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&n.to_be_bytes());
            p.note(BundleId(b), 1, n);
        }
        assert_eq!(p.tracks.len(), MAX_BUNDLES);
    }

    #[test]
    fn no_eta_without_a_rate() {
        assert_eq!(eta_s(10, 0.0), None);
        assert_eq!(eta_s(0, 5.0), Some(0));
    }
}
