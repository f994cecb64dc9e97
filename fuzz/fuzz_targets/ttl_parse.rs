//! The TTL parser (Go duration syntax): `parse_duration`, `parse_ttl` and
//! `TokenService::ttl`'s arithmetic on arbitrary UTF-8.
//!
//! Checks: no panic; an accepted duration is positive, whole milliseconds,
//! fits an `i64` of milliseconds, formats to text that parses back to it;
//! `parse_ttl` never returns more than the maximum and agrees with
//! `parse_duration`.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use maas_core::token::{format_duration, parse_duration, parse_ttl};

const DEFAULT: Duration = Duration::from_secs(4 * 3600);
const MAX: Duration = Duration::from_secs(30 * 24 * 3600);

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_duration(s);
    if let Ok(d) = parsed {
        assert!(!d.is_zero(), "{s:?}: zero accepted");
        assert_eq!(d.subsec_nanos() % 1_000_000, 0, "{s:?}: not whole ms");
        assert!(d.as_millis() <= i64::MAX as u128, "{s:?}: {d:?} too long");
        assert!(s.len() <= 64, "{s:?}: longer than 64 bytes accepted");
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_digit() || b == b'.' || b.is_ascii_lowercase()),
            "{s:?}: a character outside digits, '.' and units accepted"
        );
        let text = format_duration(d);
        assert_eq!(parse_duration(&text).ok(), Some(d), "{s:?} -> {text:?}");
    }
    match parse_ttl(Some(s), DEFAULT, MAX) {
        Ok(d) => {
            assert!(d <= MAX, "{s:?}: {d:?} over the maximum");
            if s.is_empty() {
                assert_eq!(d, DEFAULT);
            } else {
                assert_eq!(parsed.as_ref().ok(), Some(&d), "{s:?}");
            }
        }
        Err(_) => assert!(
            !s.is_empty() && parsed.as_ref().map_or(true, |d| *d > MAX),
            "{s:?}: refused though parse_duration gave {parsed:?}"
        ),
    }
});
