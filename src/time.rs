//! RFC 3339 timestamps in UTC, the one date form resevent writes, and the
//! durations the pipeline file writes (`1d12h`).
//!
//! Owns conversion between epoch milliseconds and RFC 3339 text, and parsing of
//! the date strings connectors and PMSs produce. Pure arithmetic (only
//! `now_millis` reads the clock), no I/O, no date library (the civil-calendar
//! algorithm below is Howard Hinnant's public-domain `days_from_civil`,
//! re-derived here).

use std::fmt::Write as _;

/// Milliseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The earliest instant RFC 3339 can write, 0000-01-01T00:00:00Z, in epoch ms.
pub const MIN_WRITABLE_MS: i64 = -62_167_219_200_000;
/// The last instant RFC 3339 can write, 9999-12-31T23:59:59.999Z. BSON's own
/// range (±292 million years) is wider; a date past this one is a bad value,
/// since no business event could carry it.
pub const MAX_WRITABLE_MS: i64 = 253_402_300_799_999;

/// Whether RFC 3339 can write the instant `ms` (years 0000–9999).
pub fn writable(ms: i64) -> bool {
    (MIN_WRITABLE_MS..=MAX_WRITABLE_MS).contains(&ms)
}

/// Formats epoch milliseconds as RFC 3339 UTC: `2026-11-20T00:00:00Z`, with
/// `.mmm` only when the milliseconds are not zero (the form PRODUCT.md shows).
pub fn format_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (sod / 3600, (sod % 3600) / 60, sod % 60);
    if !(0..=9999).contains(&y) {
        return format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{milli:03}Z");
    }
    // Hand-rolled digits: this runs for every date of every change, and the
    // formatting machinery was a measurable share of the core benchmark.
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y);
    put(5, 2, m);
    put(8, 2, d);
    put(11, 2, hh);
    put(14, 2, mm);
    put(17, 2, ss);
    put(20, 3, milli);
    let text = if milli == 0 { [&b[..19], b"Z"].concat() } else { b.to_vec() };
    String::from_utf8(text).expect("ASCII digits")
}

/// Parses an RFC 3339 timestamp (any offset, optional fraction) or a bare
/// `YYYY-MM-DD` date (taken as midnight UTC) into epoch milliseconds.
/// Returns `None` for anything else; callers keep such text as it was given.
pub fn parse_millis(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let year = num(0..4)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let (month, day) = (num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if b.len() == 10 {
        return Some(days * 86_400_000);
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) || b.get(13) != Some(&b':') {
        return None;
    }
    let (hh, mi) = (num(11..13)?, num(14..16)?);
    let (ss, mut at) = if b.get(16) == Some(&b':') { (num(17..19)?, 19) } else { (0, 16) };
    if hh > 23 || mi > 59 || ss > 60 {
        return None;
    }
    let mut millis = 0i64;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return None;
        }
        let digits = &text[start..at.min(start + 3)];
        millis = digits.parse::<i64>().ok()? * 10i64.pow(3 - digits.len() as u32);
    }
    let offset_secs = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if at + 6 == b.len() && b[at + 3] == b':' => {
            let s = num(at + 1..at + 3)? * 3600 + num(at + 4..at + 6)? * 60;
            if *sign == b'+' { s } else { -s }
        }
        None => 0, // no zone: a PMS writing local-less timestamps means UTC
        _ => return None,
    };
    let secs = days * 86_400 + hh * 3600 + mi * 60 + ss - offset_secs;
    Some(secs * 1000 + millis)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A duration as the pipeline file writes it: `1d`, `12h`, `1d12h`, `90m`,
/// `30s`, `0s`, optionally negative (`-2h`). In milliseconds.
pub fn parse_duration(text: &str) -> Option<i64> {
    let t = text.trim();
    let (negative, mut rest) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t),
    };
    if rest.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        let unit = match rest[digits..].chars().next()? {
            'd' => 86_400_000,
            'h' => 3_600_000,
            'm' => 60_000,
            's' => 1_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
        rest = &rest[digits + 1..];
    }
    Some(if negative { -total } else { total })
}

/// Milliseconds as the file writes them (`1d12h`, `0s`).
pub fn format_duration(ms: i64) -> String {
    let mut out = String::new();
    if ms < 0 {
        out.push('-');
    }
    let mut rest = ms.unsigned_abs();
    for (unit, size) in [('d', 86_400_000u64), ('h', 3_600_000), ('m', 60_000), ('s', 1_000)] {
        if rest >= size {
            let _ = write!(out, "{}{unit}", rest / size);
            rest %= size;
        }
    }
    if out.is_empty() || out == "-" {
        out = "0s".into();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_print_alike() {
        for (text, ms) in [("1d", 86_400_000), ("12h", 43_200_000), ("1d12h", 129_600_000), ("90m", 5_400_000), ("-2h", -7_200_000), ("0s", 0)] {
            assert_eq!(parse_duration(text), Some(ms), "{text}");
            assert_eq!(parse_duration(&format_duration(ms)), Some(ms), "{text}");
        }
        for bad in ["", "-", "1", "d", "1w", "1.5h", "h1"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_writable_range_is_years_0000_to_9999() {
        assert_eq!(format_millis(MIN_WRITABLE_MS), "0000-01-01T00:00:00Z");
        assert_eq!(format_millis(MAX_WRITABLE_MS), "9999-12-31T23:59:59.999Z");
        assert!(writable(0) && !writable(MIN_WRITABLE_MS - 1) && !writable(MAX_WRITABLE_MS + 1));
    }

    #[test]
    fn formats_known_instants() {
        // 1683793627000 is the legacy-JSON example of the connector docs: 2023-05-11T08:27:07Z.
        assert_eq!(format_millis(1_683_793_627_000), "2023-05-11T08:27:07Z");
        assert_eq!(format_millis(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_millis(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_millis(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn parses_the_forms_connectors_write() {
        assert_eq!(parse_millis("2022-10-13T17:06:23.409Z"), Some(1_665_680_783_409));
        assert_eq!(parse_millis("2022-10-13T19:06:23.409+02:00"), Some(1_665_680_783_409));
        assert_eq!(parse_millis("2026-11-20"), parse_millis("2026-11-20T00:00:00Z"));
        assert_eq!(parse_millis("2026-11-20T00:00:00.5Z"), Some(parse_millis("2026-11-20").unwrap() + 500));
        assert_eq!(parse_millis("2023-02-29T00:00:00Z"), None);
        assert_eq!(parse_millis("tomorrow"), None);
        assert_eq!(parse_millis("2026-11-20T00:00:00Zjunk"), None);
        assert_eq!(parse_millis("2026-1a-20"), None);
    }

    #[test]
    fn round_trips_every_day_of_four_centuries() {
        for day in (-200_000i64..200_000).step_by(37) {
            let ms = day * 86_400_000 + 45_296_007;
            assert_eq!(parse_millis(&format_millis(ms)), Some(ms), "day {day}");
        }
    }
}
