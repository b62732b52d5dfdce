//! Every way the web app writes a time, in one place. All times are UTC,
//! taken as microseconds since the epoch; times before 1970 (no telemetry
//! is older) are written as 1970-01-01T00:00:00.
//!
//! | function | example | used for |
//! |---|---|---|
//! | [`rfc3339`] | `2026-11-28T17:42:21Z` | alert times, silences, deliveries (JSON and pages) |
//! | [`rfc3339_micros`] | `2026-11-28T17:42:21.123456Z` | timestamp columns of SQL answers |
//! | [`human`] | `2026-11-28 17:42:21` | times shown in a sentence on a page |
//! | [`minute`] | `2026-11-28T17:42` | a `datetime-local` input's value |
//! | [`chart_tick`] | `17:42`, `11-28 17:42` | a chart's time axis |
//! | [`date`] | `2026-11-28` | the `date` partition of a day |

use parallax_collector::tables::date_hour;

/// The calendar parts of `us`: date, hour, minute, second, microsecond.
fn parts(us: i64) -> (String, i64, i64, i64, i64) {
    let us = us.max(0);
    let (day, hour) = date_hour(us as u64);
    let s = us / 1_000_000;
    (day, i64::from(hour), s % 3_600 / 60, s % 60, us % 1_000_000)
}

/// `2026-11-28T17:42:21Z`: RFC 3339 to the second.
pub fn rfc3339(us: i64) -> String {
    let (d, h, m, s, _) = parts(us);
    format!("{d}T{h:02}:{m:02}:{s:02}Z")
}

/// `2026-11-28T17:42:21.123456Z`: RFC 3339 to the microsecond.
pub fn rfc3339_micros(us: i64) -> String {
    let (d, h, m, s, micros) = parts(us);
    format!("{d}T{h:02}:{m:02}:{s:02}.{micros:06}Z")
}

/// `2026-11-28 17:42:21`: for people (pages say "UTC" beside it).
pub fn human(us: i64) -> String {
    let (d, h, m, s, _) = parts(us);
    format!("{d} {h:02}:{m:02}:{s:02}")
}

/// `2026-11-28T17:42`: the value of a `datetime-local` input (which
/// [`crate::filters::parse_time`] reads back as UTC).
pub fn minute(us: i64) -> String {
    let (d, h, m, _, _) = parts(us);
    format!("{d}T{h:02}:{m:02}")
}

/// A chart's time label of epoch seconds `t`: `17:42`, or `11-28 17:42`
/// when the chart spans more than a day.
pub fn chart_tick(t: i64, long: bool) -> String {
    let (d, h, m, _, _) = parts(t.saturating_mul(1_000_000));
    if long {
        format!("{} {h:02}:{m:02}", &d[5..])
    } else {
        format!("{h:02}:{m:02}")
    }
}

/// `2026-11-28`: the date of day number `day` (days since 1970-01-01),
/// as the collector names its `date` partitions.
pub fn date(day: i64) -> String {
    date_hour(day.max(0) as u64 * 86_400_000_000).0
}

/// `2026-11-28T17:42:21`: an RFC 3339 text cut to the second (its
/// fraction and zone dropped), for a short label.
pub fn to_second(rfc3339: &str) -> &str {
    rfc3339.get(..19).unwrap_or(rfc3339)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-28T17:42:21.123456Z.
    const T: i64 = 1_795_887_741_123_456;

    #[test]
    fn every_format_writes_the_same_instant() {
        assert_eq!(rfc3339(T), "2026-11-28T17:42:21Z");
        assert_eq!(rfc3339_micros(T), "2026-11-28T17:42:21.123456Z");
        assert_eq!(human(T), "2026-11-28 17:42:21");
        assert_eq!(minute(T), "2026-11-28T17:42");
        assert_eq!(chart_tick(T / 1_000_000, false), "17:42");
        assert_eq!(chart_tick(T / 1_000_000, true), "11-28 17:42");
        assert_eq!(date(days_from_civil(2026, 11, 28)), "2026-11-28");
        assert_eq!(to_second(&rfc3339_micros(T)), "2026-11-28T17:42:21");
        assert_eq!(to_second("short"), "short");
    }

    #[test]
    fn the_epoch_and_before_are_the_epoch() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00Z");
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(-3), "1970-01-01");
    }

    #[test]
    fn what_is_written_is_read_back() {
        for us in [0, 1_000_000, T - T % 1_000_000, 951_782_400_000_000] {
            assert_eq!(crate::filters::parse_time("t", &rfc3339(us)).unwrap(), us);
            assert_eq!(
                crate::filters::parse_time("t", &rfc3339_micros(us)).unwrap(),
                us
            );
        }
        let minute_us = T - T % 60_000_000;
        assert_eq!(
            crate::filters::parse_time("t", &minute(T)).unwrap(),
            minute_us
        );
    }
}
