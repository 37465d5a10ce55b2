//! Time: the wall clock in unix milliseconds, and the two text forms keygate reads and writes
//! (RFC 3339 and plain dates). Every module that needs "now" asks here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in unix milliseconds.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A duration in milliseconds, saturating.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A date or an RFC 3339 time as unix milliseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Some((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let date =
        time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp() * 1000)
}

/// Unix milliseconds as RFC 3339 (UTC).
pub fn format_time(ms: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Today's UTC day as `YYYY-MM-DD`.
pub fn today() -> String {
    format_time(now_millis())[..10].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_dates() {
        assert_eq!(format_time(1_893_456_000_000), "2030-01-01T00:00:00Z");
        assert_eq!(parse_time("2030-01-01"), Some(1_893_456_000_000));
        assert_eq!(parse_time("2030-01-01T00:00:01Z"), Some(1_893_456_001_000));
        assert_eq!(parse_time("soon"), None);
        assert_eq!(millis(Duration::from_secs(2)), 2000);
    }
}
