//! Token lifetimes in Go's duration syntax, as the MaaS API takes them.
//!
//! Accepted: one or more `<number><unit>` terms with no separators, such as
//! `4h`, `30m`, `1h30m`, `1.5h` or `250ms`. Units are `ms`, `s`, `m`, `h`
//! and `d` (a day of 24 hours: not Go, but the seed's documented extension).
//! A number may have a fraction (`1.5h`), as in Go. The result is whole
//! milliseconds (a fraction below a millisecond is dropped).
//!
//! Refused, all with [`TTL_FORMAT_MESSAGE`]: empty input, signs (`-1h`,
//! `+1h`), whitespace, a number without unit or a unit without number, any
//! other unit (`ns`, `us`, `w`, `y`, `H`), a total of zero and a total that
//! does not fit in milliseconds of an `i64`.

use std::time::Duration;

use crate::error::{Error, Result};

/// The message of every malformed TTL, word for word as the MaaS API's
/// `TTLValidationError`.
pub const TTL_FORMAT_MESSAGE: &str = "parameter 'ttl' must be a valid Go duration format (e.g., '1h', '30m', '45s'). Valid time units are \"ms\", \"s\", \"m\", \"h\", \"d\"";

/// The longest TTL text accepted (longer input is refused unread).
const MAX_TTL_LEN: usize = 64;

fn malformed() -> Error {
    Error::invalid("ttl", TTL_FORMAT_MESSAGE)
}

/// Parses a Go duration (see the module documentation).
pub fn parse_duration(s: &str) -> Result<Duration> {
    if s.is_empty() || s.len() > MAX_TTL_LEN {
        return Err(malformed());
    }
    let b = s.as_bytes();
    let mut i = 0;
    // Total in nanoseconds as u128: a term can be at most 64 digits, so
    // overflow is checked, never wrapped.
    let mut total_ns: u128 = 0;
    while i < b.len() {
        let start = i;
        let mut whole: u128 = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            whole = whole
                .checked_mul(10)
                .and_then(|w| w.checked_add(u128::from(b[i] - b'0')))
                .ok_or_else(malformed)?;
            i += 1;
        }
        let int_digits = i - start;
        // Fraction: digits after '.', kept as (numerator, 10^digits).
        let mut frac: u128 = 0;
        let mut scale: u128 = 1;
        let mut frac_digits = 0;
        if i < b.len() && b[i] == b'.' {
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                // Beyond 18 digits nothing changes at nanosecond precision
                // for the units we accept; keep reading but stop scaling.
                if frac_digits < 18 {
                    frac = frac * 10 + u128::from(b[i] - b'0');
                    scale *= 10;
                }
                frac_digits += 1;
                i += 1;
            }
        }
        if int_digits == 0 && frac_digits == 0 {
            return Err(malformed());
        }
        let unit_start = i;
        while i < b.len() && b[i].is_ascii_lowercase() {
            i += 1;
        }
        let unit_ns: u128 = match &s[unit_start..i] {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "d" => 86_400 * 1_000_000_000,
            _ => return Err(malformed()),
        };
        let term = whole
            .checked_mul(unit_ns)
            .and_then(|w| w.checked_add(frac * unit_ns / scale))
            .ok_or_else(malformed)?;
        total_ns = total_ns.checked_add(term).ok_or_else(malformed)?;
    }
    let ms = total_ns / 1_000_000;
    if ms == 0 || ms > i64::MAX as u128 {
        return Err(malformed());
    }
    Ok(Duration::from_millis(ms as u64))
}

/// A TTL for a new token: `None` or an empty string means `default`; longer
/// than `max` is invalid input (field `ttl`) naming the maximum.
pub fn parse_ttl(s: Option<&str>, default: Duration, max: Duration) -> Result<Duration> {
    let ttl = match s {
        None | Some("") => default,
        Some(s) => parse_duration(s)?,
    };
    if ttl > max {
        return Err(Error::invalid(
            "ttl",
            format!("must be at most {}", format_duration(max)),
        ));
    }
    Ok(ttl)
}

/// Formats a duration in the same syntax, largest units first: `4h`,
/// `1h30m`, `1d2h`, `1500ms` becomes `1s500ms`.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1;
    const S: u64 = 1000;
    const M: u64 = 60 * S;
    const H: u64 = 60 * M;
    const D: u64 = 24 * H;

    #[test]
    fn every_unit_and_compound_form() {
        for (text, ms) in [
            ("1ms", MS),
            ("250ms", 250 * MS),
            ("45s", 45 * S),
            ("30m", 30 * M),
            ("1h", H),
            ("4h", 4 * H),
            ("2d", 2 * D),
            ("1h30m", H + 30 * M),
            ("2h45m30s", 2 * H + 45 * M + 30 * S),
            ("1d12h", D + 12 * H),
            ("1m500ms", M + 500),
            ("1.5h", H + 30 * M),
            (".5s", 500),
            ("1.s", S),
            ("0.001s", 1),
            ("0h1s", S),
            ("1h1h", 2 * H),
            ("007m", 7 * M),
            ("1s0.5ms", S),
        ] {
            assert_eq!(
                parse_duration(text).unwrap(),
                Duration::from_millis(ms),
                "{text}"
            );
        }
    }

    #[test]
    fn every_invalid_class_has_the_seed_message() {
        for text in [
            "",
            "0",
            "0s",
            "0h0m",
            "0.0001s",
            "-1h",
            "+1h",
            "1",
            "h",
            "ms",
            ".s",
            "1.h.",
            "1 h",
            " 1h",
            "1h ",
            "1H",
            "1ns",
            "1us",
            "1µs",
            "1w",
            "1y",
            "1hour",
            "1h30",
            "1.5",
            "abc",
            "1e3s",
            "99999999999999999999999999999999999999999999d",
            "0x10s",
            "1h\u{0}",
        ] {
            match parse_duration(text) {
                Err(Error::InvalidInput { field, reason }) => {
                    assert_eq!(field, "ttl", "{text:?}");
                    assert_eq!(reason, TTL_FORMAT_MESSAGE, "{text:?}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert!(parse_duration(&"1".repeat(65)).is_err());
    }

    #[test]
    fn largest_representable_is_accepted() {
        // i64::MAX ms is about 106 751 991 167 days.
        assert!(parse_duration("106751991167d").is_ok());
        assert!(parse_duration("106751991168d").is_err());
    }

    #[test]
    fn default_and_maximum() {
        let def = Duration::from_secs(4 * 3600);
        let max = Duration::from_secs(24 * 3600);
        assert_eq!(parse_ttl(None, def, max).unwrap(), def);
        assert_eq!(parse_ttl(Some(""), def, max).unwrap(), def);
        assert_eq!(
            parse_ttl(Some("15m"), def, max).unwrap(),
            Duration::from_secs(900)
        );
        assert_eq!(parse_ttl(Some("1d"), def, max).unwrap(), max);
        match parse_ttl(Some("25h"), def, max) {
            Err(Error::InvalidInput { field, reason }) => {
                assert_eq!(field, "ttl");
                assert_eq!(reason, "must be at most 1d");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_ttl(Some("-5m"), def, max).is_err());
    }

    #[test]
    fn formats_round_trip() {
        for text in ["4h", "1h30m", "1d2h", "1s500ms", "45s", "7d"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}
