//! Numbers and times for people: byte counts, ages, RFC 3339 instants.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `1.5MiB`, `512B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// `45s`, `3m12s`, `5h4m`, `2d3h` (kubectl's style); negative as `-5m`.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Age in milliseconds, as the admin API reports it.
pub fn age_ms(ms: u64) -> String {
    age(Duration::from_millis(ms))
}

/// Seconds from now until `instant` (negative when past), or `None` if it is
/// not RFC 3339.
pub fn seconds_until(instant: &str, now: OffsetDateTime) -> Option<i64> {
    let t = OffsetDateTime::parse(instant, &Rfc3339).ok()?;
    Some((t - now).whole_seconds())
}

/// `in 5h4m` or `5h4m ago`.
pub fn relative(seconds: i64) -> String {
    let d = Duration::from_secs(seconds.unsigned_abs());
    if seconds >= 0 {
        format!("in {}", age(d))
    } else {
        format!("{} ago", age(d))
    }
}

/// The current time.
pub fn now() -> OffsetDateTime {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    OffsetDateTime::UNIX_EPOCH + since
}

/// The current time, RFC 3339.
pub fn now_rfc3339() -> String {
    now().format(&Rfc3339).unwrap_or_default()
}

/// A Unix-milliseconds timestamp as RFC 3339 (UTC).
pub fn unix_ms(ms: u64) -> String {
    (OffsetDateTime::UNIX_EPOCH + Duration::from_millis(ms))
        .format(&Rfc3339)
        .unwrap_or_else(|_| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanized() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(1536), "1.5KiB");
        assert_eq!(bytes(3 << 20), "3.0MiB");
        assert_eq!(age(Duration::from_secs(59)), "59s");
        assert_eq!(age(Duration::from_secs(192)), "3m12s");
        assert_eq!(age(Duration::from_secs(5 * 3600 + 240)), "5h4m");
        assert_eq!(age(Duration::from_secs(2 * 86400 + 3 * 3600)), "2d3h");
        assert_eq!(relative(-60), "1m0s ago");
        assert_eq!(relative(30), "in 30s");
        assert_eq!(unix_ms(1_000), "1970-01-01T00:00:01Z");
        let epoch = OffsetDateTime::UNIX_EPOCH;
        assert_eq!(seconds_until("1970-01-01T00:01:00Z", epoch), Some(60));
        assert_eq!(seconds_until("not a time", epoch), None);
    }
}
