//! Human-friendly quantities on the command line: link rates (`8mbit`, `1gbit`,
//! `500kbit`), byte sizes (`2MB`, `2MiB`, `64KiB`) and durations in seconds.
//!
//! Rates follow networking usage: `k`/`m`/`g` are powers of ten and the unit is
//! bits per second (`bit`, `bps`) unless it ends in `B`/`Bps` (bytes per
//! second). Sizes follow storage usage: `KB`/`MB`/`GB` are powers of ten,
//! `KiB`/`MiB`/`GiB` powers of two; a bare number is bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a rate or size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// The numeric part is missing or not a finite, positive number.
    #[error("{0:?}: expected a positive number followed by a unit")]
    BadNumber(String),
    /// The unit suffix is not one we know.
    #[error("{input:?}: unknown unit {unit:?} (expected {expected})")]
    BadUnit {
        /// The whole input.
        input: String,
        /// The suffix that was not understood.
        unit: String,
        /// The units that are accepted.
        expected: &'static str,
    },
}

/// A link rate in bytes per second (stored as a float: rates like 500 kbit/s
/// are not whole bytes per millisecond and the simulator works in seconds).
#[derive(Clone, Copy, PartialEq, PartialOrd, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rate(pub f64);

impl Rate {
    /// Bytes per second.
    pub fn bytes_per_s(self) -> f64 {
        self.0
    }

    /// Seconds needed to move `bytes` at this rate.
    pub fn secs_for(self, bytes: u64) -> f64 {
        bytes as f64 / self.0
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.0 * 8.0;
        if bits >= 1e9 {
            write!(f, "{} Gbit/s", trim(bits / 1e9))
        } else if bits >= 1e6 {
            write!(f, "{} Mbit/s", trim(bits / 1e6))
        } else if bits >= 1e3 {
            write!(f, "{} kbit/s", trim(bits / 1e3))
        } else {
            write!(f, "{} bit/s", trim(bits))
        }
    }
}

impl FromStr for Rate {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (num, unit) = split_number(s)?;
        let lower = unit.to_ascii_lowercase();
        // Bytes per second only when the unit is spelt with a capital B.
        let bytes = unit.ends_with('B') || unit.ends_with("Bps") || unit.ends_with("B/s");
        let (mult, rest) = match lower.chars().next() {
            Some('k') => (1e3, &lower[1..]),
            Some('m') => (1e6, &lower[1..]),
            Some('g') => (1e9, &lower[1..]),
            _ => (1.0, lower.as_str()),
        };
        let known = ["", "bit", "bits", "bps", "bit/s", "b", "b/s"];
        if !known.contains(&rest) {
            return Err(UnitError::BadUnit {
                input: s.to_owned(),
                unit: unit.to_owned(),
                expected: "bit, kbit, mbit, gbit (bits/s) or kB, MB, GB (bytes/s)",
            });
        }
        let per_s = num * mult;
        Ok(Rate(if bytes { per_s } else { per_s / 8.0 }))
    }
}

/// A size in bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        if self.0 >= 1 << 30 && self.0.is_multiple_of(1 << 20) {
            write!(f, "{} GiB", trim(b / (1u64 << 30) as f64))
        } else if self.0 >= 1 << 20 && self.0.is_multiple_of(1 << 10) {
            write!(f, "{} MiB", trim(b / (1u64 << 20) as f64))
        } else if self.0 >= 1 << 10 && self.0.is_multiple_of(1 << 10) {
            write!(f, "{} KiB", trim(b / 1024.0))
        } else if self.0 >= 1_000_000 {
            write!(f, "{} MB", trim(b / 1e6))
        } else {
            write!(f, "{} B", self.0)
        }
    }
}

impl FromStr for Size {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Zero is a valid size (e.g. "carry nothing"); callers that need more check.
        if s.trim() == "0" {
            return Ok(Size(0));
        }
        let (num, unit) = split_number(s)?;
        let mult: f64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kb" => 1e3,
            "m" | "mb" => 1e6,
            "g" | "gb" => 1e9,
            "kib" => 1024.0,
            "mib" => (1u64 << 20) as f64,
            "gib" => (1u64 << 30) as f64,
            _ => {
                return Err(UnitError::BadUnit {
                    input: s.to_owned(),
                    unit: unit.to_owned(),
                    expected: "B, KB, MB, GB, KiB, MiB or GiB",
                });
            }
        };
        let bytes = (num * mult).round();
        if !(1.0..=1e15).contains(&bytes) {
            return Err(UnitError::BadNumber(s.to_owned()));
        }
        Ok(Size(bytes as u64))
    }
}

/// Splits `"8.5mbit"` into `(8.5, "mbit")`; rejects non-positive or non-finite numbers.
fn split_number(s: &str) -> Result<(f64, &str), UnitError> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    let num: f64 = num
        .replace('_', "")
        .parse()
        .map_err(|_| UnitError::BadNumber(s.to_owned()))?;
    if !num.is_finite() || num <= 0.0 {
        return Err(UnitError::BadNumber(s.to_owned()));
    }
    Ok((num, unit.trim()))
}

/// Formats a float without trailing zeros (`8`, `2.5`).
fn trim(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Formats a duration in seconds as the largest sensible unit (`42 s`, `3.1 h`).
pub fn fmt_secs(s: f64) -> String {
    if !s.is_finite() {
        "never".to_owned()
    } else if s.abs() < 120.0 {
        format!("{s:.1} s")
    } else if s.abs() < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.2} h", s / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_as_bits_unless_capital_b() {
        assert_eq!("8mbit".parse::<Rate>().unwrap().bytes_per_s(), 1e6);
        assert_eq!("1gbit".parse::<Rate>().unwrap().bytes_per_s(), 1.25e8);
        assert_eq!("500kbit".parse::<Rate>().unwrap().bytes_per_s(), 62_500.0);
        assert_eq!("8Mbps".parse::<Rate>().unwrap().bytes_per_s(), 1e6);
        assert_eq!("1MB".parse::<Rate>().unwrap().bytes_per_s(), 1e6);
        assert_eq!("1000".parse::<Rate>().unwrap().bytes_per_s(), 125.0);
        assert!("8 furlongs".parse::<Rate>().is_err());
        assert!("0mbit".parse::<Rate>().is_err());
        assert!("mbit".parse::<Rate>().is_err());
        assert_eq!("8mbit".parse::<Rate>().unwrap().to_string(), "8 Mbit/s");
    }

    #[test]
    fn sizes_distinguish_decimal_and_binary() {
        assert_eq!("2MB".parse::<Size>().unwrap(), Size(2_000_000));
        assert_eq!("2MiB".parse::<Size>().unwrap(), Size(2 << 20));
        assert_eq!("64KiB".parse::<Size>().unwrap(), Size(65_536));
        assert_eq!("1.5kb".parse::<Size>().unwrap(), Size(1500));
        assert_eq!("123".parse::<Size>().unwrap(), Size(123));
        assert_eq!("0".parse::<Size>().unwrap(), Size(0));
        assert!("2XB".parse::<Size>().is_err());
        assert!("-3MB".parse::<Size>().is_err());
        assert_eq!(Size(2 << 20).to_string(), "2 MiB");
        assert_eq!(Size(2_000_000).to_string(), "2 MB");
    }

    #[test]
    fn durations_pick_a_readable_unit() {
        assert_eq!(fmt_secs(42.0), "42.0 s");
        assert_eq!(fmt_secs(600.0), "10.0 min");
        assert_eq!(fmt_secs(3.0 * 3600.0), "3.00 h");
        assert_eq!(fmt_secs(f64::INFINITY), "never");
    }
}
