//! Times on the wire: RFC 3339 instants and `YYYY-MM-DD` days, to and from the engine's UTC
//! milliseconds and day numbers. The calendar work is chrono's; this file only picks the formats.

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Utc};

use crate::domain::event::{DAY_MS, day_of};

/// Parses an RFC 3339 time with a `Z` or numeric offset, fractional seconds allowed, into UTC
/// milliseconds since the Unix epoch. Digits below the millisecond are dropped (floored).
/// Instants outside the years 0000–9999 in UTC (reachable through an offset, such as
/// `9999-12-31T23:00:00-05:00`) are refused: they could not be written back in RFC 3339.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    parse_canonical_utc(s.as_bytes())
        .or_else(|| {
            DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.timestamp_millis())
        })
        .filter(|ms| (FIRST_MS..END_MS).contains(ms))
}

/// 0000-01-01T00:00:00Z and 10000-01-01T00:00:00Z in milliseconds since the Unix epoch.
const FIRST_MS: i64 = -62_167_219_200_000;
const END_MS: i64 = 253_402_300_800_000;

/// The shape nearly every producer sends, `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, read without going
/// through chrono's general parser (which costs more than the rest of decoding an event). Only
/// the digits are lexed here; the calendar checks and arithmetic are still chrono's. Anything
/// else (offsets, leap seconds, lower-case `t`/`z`, over-long fractions) returns `None` and takes
/// the general path, so this never accepts what chrono would refuse.
fn parse_canonical_utc(b: &[u8]) -> Option<i64> {
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[b.len() - 1] != b'Z'
    {
        return None;
    }
    let milli = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', frac @ ..] if (1..=9).contains(&frac.len()) => {
            digits(frac)?;
            // The first three fractional digits, padded: ".5" is 500 ms; the rest is dropped.
            frac.iter()
                .chain([b'0'; 2].iter())
                .take(3)
                .fold(0, |v, c| v * 10 + u32::from(c - b'0'))
        }
        _ => return None,
    };
    let date = NaiveDate::from_ymd_opt(
        digits(&b[0..4])? as i32,
        digits(&b[5..7])?,
        digits(&b[8..10])?,
    )?;
    let t = date.and_hms_milli_opt(
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
        milli,
    )?;
    Some(t.and_utc().timestamp_millis())
}

/// The value of a run of ASCII digits, or `None` if any byte is not one.
fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |v, &c| {
        c.is_ascii_digit().then(|| v * 10 + u32::from(c - b'0'))
    })
}

/// Formats UTC milliseconds as RFC 3339 in UTC: `2026-11-20T10:15:00Z`, or
/// `2026-11-20T10:15:00.123Z` when the milliseconds are not zero.
///
/// Values beyond chrono's range (about ±262,000 years) are clamped to it; `parse_rfc3339_ms`
/// never produces them.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let mut out = Vec::with_capacity(24);
    write_rfc3339_ms(ms, &mut out);
    String::from_utf8(out).expect("ASCII")
}

/// [`format_rfc3339_ms`] appended to `out`. Output records carry several of these, so years
/// 0000–9999 are written digit by digit here (the calendar is still chrono's) rather than
/// through chrono's formatting machinery; other years take chrono's path.
pub fn write_rfc3339_ms(ms: i64, out: &mut Vec<u8>) {
    let day = ms.div_euclid(DAY_MS);
    let date = i32::try_from(day)
        .ok()
        .and_then(NaiveDate::from_epoch_days)
        .filter(|d| (0..=9999).contains(&d.year()));
    let Some(date) = date else {
        out.extend_from_slice(format_rfc3339_ms_chrono(ms).as_bytes());
        return;
    };
    let in_day = ms.rem_euclid(DAY_MS);
    let (secs, milli) = (in_day / 1000, in_day % 1000);
    let two = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&[b'0' + (v / 10) as u8, b'0' + (v % 10) as u8]);
    let y = date.year() as u32;
    two(out, y / 100);
    two(out, y % 100);
    out.push(b'-');
    two(out, date.month());
    out.push(b'-');
    two(out, date.day());
    out.push(b'T');
    two(out, (secs / 3600) as u32);
    out.push(b':');
    two(out, (secs / 60 % 60) as u32);
    out.push(b':');
    two(out, (secs % 60) as u32);
    if milli != 0 {
        let m = milli as u32;
        out.extend_from_slice(&[b'.', b'0' + (m / 100) as u8, b'0' + (m / 10 % 10) as u8, b'0' + (m % 10) as u8]);
    }
    out.push(b'Z');
}

fn format_rfc3339_ms_chrono(ms: i64) -> String {
    let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or(if ms < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    });
    let precision = if ms.rem_euclid(1000) == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Millis
    };
    t.to_rfc3339_opts(precision, true)
}

/// Parses a calendar day `YYYY-MM-DD` (or a full RFC 3339 time, whose UTC day is taken) into the
/// UTC day number since the Unix epoch.
pub fn parse_date_day(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    // Lexed by hand rather than with `parse_from_str(s, "%Y-%m-%d")`, which is several times
    // slower and also takes signs and longer years; chrono still validates the date.
    if b.len() == 10 && b[4] == b'-' && b[7] == b'-' {
        let date = NaiveDate::from_ymd_opt(
            digits(&b[0..4])? as i32,
            digits(&b[5..7])?,
            digits(&b[8..10])?,
        )?;
        return Some(date.to_epoch_days());
    }
    parse_rfc3339_ms(s).map(day_of)
}

/// Formats a UTC day number as `YYYY-MM-DD`. Days beyond chrono's range are clamped to it.
pub fn format_day(day: i32) -> String {
    let d = NaiveDate::from_epoch_days(day).unwrap_or(if day < 0 {
        NaiveDate::MIN
    } else {
        NaiveDate::MAX
    });
    d.format("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn instants_outside_years_0000_to_9999_in_utc_are_refused() {
        use super::*;
        assert_eq!(parse_rfc3339_ms("9999-12-31T23:00:00-05:00"), None);
        assert_eq!(parse_rfc3339_ms("0000-01-01T00:00:00+01:00"), None);
        assert_eq!(parse_date_day("9999-12-31T23:00:00-05:00"), None);
        let last = parse_rfc3339_ms("9999-12-31T23:59:59.999Z").unwrap();
        assert_eq!(format_rfc3339_ms(last), "9999-12-31T23:59:59.999Z");
        let first = parse_rfc3339_ms("0000-01-01T01:00:00+01:00").unwrap();
        assert_eq!(format_rfc3339_ms(first), "0000-01-01T00:00:00Z");
    }

    use super::*;

    #[test]
    fn parses_utc_offsets_and_fractions() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2026-11-20T10:15:00Z"),
            Some(1_795_169_700_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-20T12:15:00+02:00"),
            Some(1_795_169_700_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-20T10:15:00.123Z"),
            Some(1_795_169_700_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-20T10:15:00.123999999Z"),
            Some(1_795_169_700_123)
        );
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59.5Z"), Some(-500));
    }

    #[test]
    fn rejects_what_is_not_rfc3339() {
        for s in [
            "",
            "yesterday",
            "2026-11-20",
            "2026-11-20T10:15:00",
            "2026-13-01T00:00:00Z",
            "1795169700000",
        ] {
            assert_eq!(parse_rfc3339_ms(s), None, "{s:?}");
        }
    }

    #[test]
    fn formats_with_millis_only_when_needed() {
        assert_eq!(format_rfc3339_ms(1_795_169_700_000), "2026-11-20T10:15:00Z");
        assert_eq!(
            format_rfc3339_ms(1_795_169_700_123),
            "2026-11-20T10:15:00.123Z"
        );
        assert_eq!(format_rfc3339_ms(-500), "1969-12-31T23:59:59.500Z");
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00Z");
        // Clamped rather than panicking.
        assert!(!format_rfc3339_ms(i64::MAX).is_empty());
        assert!(!format_rfc3339_ms(i64::MIN).is_empty());
    }

    proptest::proptest! {
        /// The digit-by-digit writer agrees with chrono's formatting everywhere.
        #[test]
        fn writer_agrees_with_chrono(ms in proptest::prop_oneof![
            -62_167_219_200_000i64..253_402_300_800_000,
            proptest::num::i64::ANY,
        ]) {
            proptest::prop_assert_eq!(format_rfc3339_ms(ms), format_rfc3339_ms_chrono(ms));
        }
    }

    #[test]
    fn writer_agrees_with_chrono_at_the_edges() {
        for ms in [
            0,
            -1,
            999,
            -62_167_219_200_000,
            -62_167_219_200_001,
            253_402_300_799_999,
            253_402_300_800_000,
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(format_rfc3339_ms(ms), format_rfc3339_ms_chrono(ms), "{ms}");
        }
    }

    #[test]
    fn rfc3339_round_trips() {
        for ms in [
            0,
            1,
            999,
            1000,
            -1,
            -1001,
            1_795_169_700_123,
            253_402_300_799_999,
        ] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms), "{ms}");
        }
    }

    #[test]
    fn general_path_still_used_for_other_shapes() {
        assert_eq!(
            parse_rfc3339_ms("2026-11-20t10:15:00z"),
            Some(1_795_169_700_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-20T10:15:00.1234567891Z"),
            Some(1_795_169_700_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2016-12-31T23:59:60Z"),
            parse_rfc3339_ms("2017-01-01T00:00:00Z")
        );
        for s in [
            "2026-11-20T24:00:00Z",
            "2026-11-20T10:60:00Z",
            "2026-02-29T10:15:00Z",
            "2026-11-20T10:15:00.Z",
            "2026-11-20T10:15:00+1Z",
            "２026-11-20T10:15:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(s), None, "{s}");
        }
    }

    proptest::proptest! {
        /// The fast path agrees with chrono's general parser wherever it answers.
        #[test]
        fn fast_path_agrees_with_chrono(
            y in 0u32..10_000, mo in 0u32..14, d in 0u32..33, h in 0u32..25, mi in 0u32..61, s in 0u32..61,
            frac in proptest::option::of("[0-9]{1,9}"),
        ) {
            let text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}Z", frac.map(|f| format!(".{f}")).unwrap_or_default());
            let chrono = DateTime::parse_from_rfc3339(&text).ok().map(|t| t.timestamp_millis());
            proptest::prop_assert_eq!(parse_canonical_utc(text.as_bytes()).or(chrono), chrono, "{}", text);
            let day = format!("{y:04}-{mo:02}-{d:02}");
            let chrono_day = NaiveDate::parse_from_str(&day, "%Y-%m-%d").ok().map(|d| d.to_epoch_days());
            proptest::prop_assert_eq!(parse_date_day(&day), chrono_day, "{}", day);
        }
    }

    #[test]
    fn days() {
        assert_eq!(parse_date_day("1970-01-01"), Some(0));
        assert_eq!(parse_date_day("1969-12-31"), Some(-1));
        assert_eq!(parse_date_day("2027-01-31"), Some(20_849));
        assert_eq!(parse_date_day("2027-01-31T23:30:00-01:00"), Some(20_850));
        assert_eq!(parse_date_day("2027-02-30"), None);
        assert_eq!(parse_date_day("+027-01-31"), None);
        assert_eq!(parse_date_day("soon"), None);
        assert_eq!(format_day(20_849), "2027-01-31");
        assert_eq!(format_day(-1), "1969-12-31");
        for d in [-719_162, -1, 0, 1, 20_849, 2_932_896] {
            assert_eq!(parse_date_day(&format_day(d)), Some(d), "{d}");
        }
        assert!(!format_day(i32::MAX).is_empty());
    }
}
