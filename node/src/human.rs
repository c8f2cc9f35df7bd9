//! Numbers as people read them: sizes in units, durations in the largest
//! units that matter, dates in UTC. Only the CLI's text output uses these;
//! `--json` keeps the raw values (bytes, seconds, Unix times).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A byte count in binary units: `512 B`, `1.5 KiB`, `20.0 MiB`, `3.25 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    let digits = if v < 10.0 {
        2
    } else if v < 100.0 {
        1
    } else {
        0
    };
    format!("{v:.digits$} {}", UNITS[unit])
}

/// A transfer rate: `bytes(n)` per second.
pub fn rate(bytes_per_s: f64) -> String {
    if !bytes_per_s.is_finite() || bytes_per_s <= 0.0 {
        return "-".into();
    }
    format!("{}/s", bytes(bytes_per_s.round() as u64))
}

/// A duration in its two largest units: `45 s`, `3 min 20 s`, `2 h 5 min`, `4 d 3 h`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    let (d_, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if s < 60 {
        format!("{sec} s")
    } else if s < 3600 {
        if sec == 0 {
            format!("{m} min")
        } else {
            format!("{m} min {sec} s")
        }
    } else if s < 86_400 {
        if m == 0 {
            format!("{h} h")
        } else {
            format!("{h} h {m} min")
        }
    } else if h == 0 {
        format!("{d_} d")
    } else {
        format!("{d_} d {h} h")
    }
}

/// A Unix time (seconds) as an RFC 3339 UTC date with how far it is from
/// `now`: `2026-12-02T01:30:00Z (in 29 d 23 h)`, `… (3 h 5 min ago)`.
pub fn date_from(unix_s: u64, now_unix_s: u64) -> String {
    let when = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_s));
    let rel = if unix_s > now_unix_s {
        format!("in {}", duration(Duration::from_secs(unix_s - now_unix_s)))
    } else {
        format!("{} ago", duration(Duration::from_secs(now_unix_s - unix_s)))
    };
    format!("{when} ({rel})")
}

/// [`date_from`] against the wall clock.
pub fn date(unix_s: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    date_from(unix_s, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_pick_a_unit() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.00 KiB");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(20_000_000), "19.1 MiB");
        assert_eq!(bytes(1 << 30), "1.00 GiB");
        assert_eq!(bytes(500 << 30), "500 GiB");
        assert_eq!(bytes(u64::MAX), "16384 PiB");
    }

    #[test]
    fn durations_use_two_units() {
        assert_eq!(duration(Duration::from_secs(0)), "0 s");
        assert_eq!(duration(Duration::from_secs(59)), "59 s");
        assert_eq!(duration(Duration::from_secs(60)), "1 min");
        assert_eq!(duration(Duration::from_secs(200)), "3 min 20 s");
        assert_eq!(duration(Duration::from_secs(7500)), "2 h 5 min");
        assert_eq!(
            duration(Duration::from_secs(86_400 * 4 + 3 * 3600 + 59)),
            "4 d 3 h"
        );
        assert_eq!(duration(Duration::from_secs(86_400 * 30)), "30 d");
    }

    #[test]
    fn dates_are_utc_with_a_relative_part() {
        assert_eq!(
            date_from(1_796_000_000, 1_796_000_000 - 3600),
            "2026-11-30T00:53:20Z (in 1 h)"
        );
        assert_eq!(date_from(0, 90), "1970-01-01T00:00:00Z (1 min 30 s ago)");
    }

    #[test]
    fn rates_need_a_positive_figure() {
        assert_eq!(rate(0.0), "-");
        assert_eq!(rate(f64::NAN), "-");
        assert_eq!(rate(1_048_576.0), "1.00 MiB/s");
    }
}
