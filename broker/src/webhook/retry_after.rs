//! The `Retry-After` header of a 429 answer (RFC 9110, section 10.2.3):
//! either a number of seconds or an HTTP date. Pure: no clock is read here.

use std::time::{Duration, SystemTime};

/// How long `value` asks the sender to wait, counted from `now`; `None` when
/// it is neither form (then the ordinary backoff applies). A date in the past
/// is no wait at all.
pub fn parse(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    // RFC 9110: delay-seconds = 1*DIGIT. No sign, no fraction.
    if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) {
        // Longer than u64 seconds is "forever": the caller caps it anyway.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn seconds() {
        let now = at(1_700_000_000);
        assert_eq!(parse("1", now), Some(Duration::from_secs(1)));
        assert_eq!(parse(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(parse("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn http_dates_in_each_form_httpdate_reads() {
        // 1994-11-06 08:49:37 UTC, the RFC's example, is 784111777.
        let now = at(784_111_777 - 30);
        let thirty = Some(Duration::from_secs(30));
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT", now), thirty);
        // The obsolete forms a recipient must accept.
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT", now), thirty);
        assert_eq!(parse("Sun Nov  6 08:49:37 1994", now), thirty);
        // A date already past: retry at once.
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:49:37 GMT", at(784_111_777 + 5)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn anything_else_is_no_answer() {
        let now = at(1_700_000_000);
        for value in ["", "-1", "1.5", "+3", "soon", "Sun, 06 Nov 1994", "0x10"] {
            assert_eq!(parse(value, now), None, "{value:?}");
        }
    }
}
