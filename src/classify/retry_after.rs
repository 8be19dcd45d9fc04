//! How long the service asked us to wait.
//!
//! `Retry-After` is either delay-seconds or an HTTP date (RFC 9110 §10.2.3). Azure services also
//! send `retry-after-ms` / `x-ms-retry-after-ms` with finer resolution; those win when present,
//! as the Azure SDKs do. The value is reported uncapped — the engine applies the policy's cap —
//! but parsing it must not overflow, so absurd values saturate instead.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// Millisecond headers, in the order they are preferred over `Retry-After`.
const MILLIS_HEADERS: [&str; 2] = ["retry-after-ms", "x-ms-retry-after-ms"];

/// The delay the response asks for, if any.
///
/// Integer seconds and HTTP dates are read from `Retry-After` (a date in the past means "now",
/// `Some(0)`); `retry-after-ms` and `x-ms-retry-after-ms` are preferred when present and valid.
/// Negative, fractional or garbage values are ignored.
///
/// ```
/// use std::time::Duration;
/// use http::HeaderMap;
/// use reqwest_conflict::classify::retry_after;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("retry-after", "30".parse().unwrap());
/// assert_eq!(retry_after(&headers), Some(Duration::from_secs(30)));
/// headers.insert("x-ms-retry-after-ms", "1500".parse().unwrap());
/// assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));
/// ```
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, SystemTime::now())
}

/// [`retry_after`] with an explicit clock, so dates can be tested.
fn retry_after_at(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = MILLIS_HEADERS
        .iter()
        .find_map(|name| value(name).and_then(digits))
    {
        return Some(Duration::from_millis(ms));
    }
    let raw = value("retry-after")?;
    if let Some(secs) = digits(raw) {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(raw).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An unsigned decimal integer, saturating at `u64::MAX`; `None` for anything else (a sign, a
/// fraction, an empty string), so `-5` is not mistaken for a delay.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn at(pairs: &[(&'static str, &'static str)]) -> Option<Duration> {
        // 2024-01-01T00:00:00Z
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200);
        retry_after_at(&headers(pairs), now)
    }

    #[test]
    fn seconds() {
        assert_eq!(at(&[("retry-after", "10")]), Some(Duration::from_secs(10)));
        assert_eq!(at(&[("Retry-After", " 0 ")]), Some(Duration::ZERO));
    }

    #[test]
    fn absent_is_none() {
        assert_eq!(at(&[]), None);
    }

    #[test]
    fn huge_saturates() {
        let huge = at(&[("retry-after", "99999999999999999999999999")]);
        assert_eq!(huge, Some(Duration::from_secs(u64::MAX)));
        let huge_ms = at(&[("retry-after-ms", "99999999999999999999999999")]);
        assert_eq!(huge_ms, Some(Duration::from_millis(u64::MAX)));
    }

    #[test]
    fn negative_fraction_and_garbage_are_none() {
        for bad in ["-5", "+5", "1.5", "soon", "", "10s", "0x10"] {
            assert_eq!(at(&[("retry-after", bad)]), None, "{bad:?}");
        }
    }

    #[test]
    fn future_date() {
        let d = at(&[("retry-after", "Mon, 01 Jan 2024 00:01:30 GMT")]);
        assert_eq!(d, Some(Duration::from_secs(90)));
    }

    #[test]
    fn past_date_is_zero() {
        let d = at(&[("retry-after", "Sun, 31 Dec 2023 23:00:00 GMT")]);
        assert_eq!(d, Some(Duration::ZERO));
    }

    #[test]
    fn millis_preferred() {
        let d = at(&[("retry-after", "10"), ("x-ms-retry-after-ms", "250")]);
        assert_eq!(d, Some(Duration::from_millis(250)));
        let d = at(&[("retry-after-ms", "100"), ("x-ms-retry-after-ms", "250")]);
        assert_eq!(d, Some(Duration::from_millis(100)));
    }

    #[test]
    fn bad_millis_fall_back_to_seconds() {
        let d = at(&[("retry-after", "7"), ("retry-after-ms", "-1")]);
        assert_eq!(d, Some(Duration::from_secs(7)));
    }

    #[test]
    fn first_value_wins() {
        let d = at(&[("retry-after", "3"), ("retry-after", "9")]);
        assert_eq!(d, Some(Duration::from_secs(3)));
    }
}
