//! Time as a plain value: [`Millis`], the one time type of the protocol crates.
//!
//! Pure code never reads a clock; it is handed `now` as a [`Millis`]. A `Millis` counts
//! milliseconds from an **origin fixed by whoever produced it**; values from two origins are
//! never compared. The conventions:
//!
//! - **Wall clock (Unix epoch).** Whatever outlives a process or crosses the air as a point in
//!   time (contact history, PRoPHET ageing, beacon times) counts from the Unix epoch. Drivers
//!   read it with [`Millis::now`]; simulators start their virtual clock at a trace's epoch.
//! - **Session clock (any fixed origin).** The engine's timers (`now` in `mule-engine`, today
//!   still a bare `u64` of milliseconds) only need an origin that stays fixed for one driver's
//!   lifetime, e.g. the daemon's start or a simulation's zero; the engine takes differences
//!   and deadlines only, never wall-clock dates.
//!
//! Durations are [`std::time::Duration`]; `Millis` is a point in time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A point in time, in milliseconds since an origin (see the module doc for which).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    /// The current wall-clock time since the Unix epoch (drivers only; pure code gets time
    /// passed in, and the engine's clippy configuration forbids calling this there).
    pub fn now() -> Millis {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Millis(d.as_millis() as u64)
    }

    /// `secs` seconds after the origin (handy in tests and simulations).
    pub fn from_secs(secs: u64) -> Millis {
        Millis(secs.saturating_mul(1000))
    }

    /// Milliseconds since the origin.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, saturating.
    pub fn saturating_add(self, d: Duration) -> Millis {
        Millis(self.0.saturating_add(d.as_millis() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        let t = Millis::from_secs(2);
        assert_eq!(t.as_millis(), 2000);
        assert_eq!(t.since(Millis(500)), Duration::from_millis(1500));
        assert_eq!(Millis(500).since(t), Duration::ZERO);
        assert_eq!(
            Millis(u64::MAX - 1).saturating_add(Duration::from_secs(1)),
            Millis(u64::MAX)
        );
        assert_eq!(Millis::from_secs(u64::MAX), Millis(u64::MAX));
    }
}
