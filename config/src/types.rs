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
        deserializer.deserialize_str(ParseVisitor::new("64 hex digits (an ed25519 public key)"))
    }
}

/// Deserializes a string through the type's `FromStr`, so that the error carries the span
/// of the string it came from.
struct ParseVisitor<T> {
    expecting: &'static str,
    parsed: std::marker::PhantomData<T>,
}

impl<T> ParseVisitor<T> {
    fn new(expecting: &'static str) -> Self {
        ParseVisitor {
            expecting,
            parsed: std::marker::PhantomData,
        }
    }
}

impl<T: FromStr> serde::de::Visitor<'_> for ParseVisitor<T>
where
    T::Err: fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

/// A local-time window in which installs may run, e.g. `"Mon-Fri 01:00-05:00"`,
/// `"Sat,Sun 00:00-24:00"` or `"02:00-04:00"` (every day). Days are `Mon`..`Sun`, as single
/// days or ranges, comma-separated; a window whose end is before its start runs past
/// midnight into the next day (the day names the start).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstallWindow {
    /// Bit `d` set: the window opens on weekday `d` (0 = Monday).
    days: u8,
    /// Minutes after local midnight when it opens (0..1440).
    start: u16,
    /// Minutes after local midnight when it closes (1..=1440).
    end: u16,
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

impl InstallWindow {
    /// Whether local time `weekday` (0 = Monday) at `minute` (after midnight) is inside.
    pub fn contains(&self, weekday: u8, minute: u16) -> bool {
        let on = |d: u8| self.days & (1 << (d % 7)) != 0;
        if self.start < self.end {
            on(weekday) && (self.start..self.end).contains(&minute)
        } else {
            // Past midnight: the evening part belongs to today, the morning to yesterday.
            (on(weekday) && minute >= self.start) || (on(weekday + 6) && minute < self.end)
        }
    }
}

/// Why a text is not an install window.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} (expected e.g. \"Mon-Fri 01:00-05:00\" or \"02:00-04:00\")")]
pub struct InstallWindowError(String);

fn parse_minute(t: &str) -> Option<u16> {
    let (h, m) = t.split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0)) && t.len() == 5).then_some(h * 60 + m)
}

impl FromStr for InstallWindow {
    type Err = InstallWindowError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |m: String| InstallWindowError(m);
        let (days_text, times) = match s.trim().rsplit_once(' ') {
            Some((d, t)) => (Some(d.trim()), t),
            None => (None, s.trim()),
        };
        let day = |n: &str| {
            DAYS.iter()
                .position(|d| d.eq_ignore_ascii_case(n.trim()))
                .ok_or_else(|| err(format!("unknown day {n:?} (use Mon..Sun)")))
        };
        let mut days = 0u8;
        match days_text {
            None => days = 0x7f,
            Some(list) => {
                for part in list.split(',') {
                    let (a, b) = match part.split_once('-') {
                        Some((a, b)) => (day(a)?, day(b)?),
                        None => (day(part)?, day(part)?),
                    };
                    let mut d = a;
                    loop {
                        days |= 1 << d;
                        if d == b {
                            break;
                        }
                        d = (d + 1) % 7;
                    }
                }
            }
        }
        let (a, b) = times
            .split_once('-')
            .ok_or_else(|| err(format!("{times:?} is not HH:MM-HH:MM")))?;
        let bad_time = |t: &str| err(format!("{t:?} is not a time HH:MM (00:00 to 24:00)"));
        let start = parse_minute(a)
            .filter(|&m| m < 1440)
            .ok_or_else(|| bad_time(a))?;
        let end = parse_minute(b).ok_or_else(|| bad_time(b))?;
        if start == end {
            return Err(err("the window opens and closes at the same time".into()));
        }
        Ok(InstallWindow { days, start, end })
    }
}

impl fmt::Display for InstallWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.days != 0x7f {
            let names: Vec<&str> = (0..7)
                .filter(|d| self.days & (1 << d) != 0)
                .map(|d| DAYS[d])
                .collect();
            write!(f, "{} ", names.join(","))?;
        }
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", hm(self.start), hm(self.end))
    }
}

impl fmt::Debug for InstallWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstallWindow({self})")
    }
}

impl Serialize for InstallWindow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for InstallWindow {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParseVisitor::new(
            "an install window such as \"Mon-Fri 01:00-05:00\"",
        ))
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

    #[test]
    fn install_windows() {
        let w: InstallWindow = "Mon-Fri 01:00-05:00".parse().unwrap();
        assert_eq!(w.to_string(), "Mon,Tue,Wed,Thu,Fri 01:00-05:00");
        assert_eq!(w.to_string().parse::<InstallWindow>().unwrap(), w);
        assert!(w.contains(0, 60) && w.contains(4, 299));
        assert!(!w.contains(0, 59) && !w.contains(0, 300) && !w.contains(5, 120));
        // Past midnight, and every day.
        let night: InstallWindow = "Sat,Sun 23:00-02:00".parse().unwrap();
        assert!(night.contains(5, 23 * 60) && night.contains(6, 60) && night.contains(0, 60));
        assert!(!night.contains(5, 60) && !night.contains(0, 23 * 60));
        let daily: InstallWindow = "02:00-24:00".parse().unwrap();
        assert!((0..7).all(|d| daily.contains(d, 1439) && !daily.contains(d, 119)));
        assert_eq!(daily.to_string(), "02:00-24:00");
        let wrap: InstallWindow = "Fri-Mon 01:00-02:00".parse().unwrap();
        assert!(wrap.contains(6, 90) && wrap.contains(0, 90) && !wrap.contains(1, 90));
        for bad in [
            "",
            "Mon",
            "Mon 1:00-2:00",
            "Mon 01:00-01:00",
            "Xyz 01:00-02:00",
            "25:00-26:00",
            "01:00",
        ] {
            assert!(bad.parse::<InstallWindow>().is_err(), "{bad:?} accepted");
        }
    }
}
