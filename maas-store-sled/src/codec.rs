//! Encodings of counters (fixed 16-byte big-endian) and the byte layouts of
//! index keys; records are in `crate::records`.

use maas_core::Timestamp;
use maas_core::counter::{Balance, LimitState, PeriodState, SlidingState, WindowState};

fn two_i64(bytes: &[u8]) -> Option<(i64, i64)> {
    let a: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let b: [u8; 8] = bytes.get(8..16)?.try_into().ok()?;
    Some((i64::from_be_bytes(a), i64::from_be_bytes(b)))
}

fn pack(a: i64, b: i64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

pub(crate) fn encode_balance(b: &Balance) -> [u8; 16] {
    pack(b.remaining, b.refilled_at.as_millis())
}

/// A balance; `None` if the bytes are not one (treated as absent).
pub(crate) fn decode_balance(bytes: &[u8]) -> Option<Balance> {
    two_i64(bytes).map(|(remaining, at)| Balance {
        remaining,
        refilled_at: Timestamp::from_millis(at),
    })
}

pub(crate) fn encode_window(w: &WindowState) -> [u8; 16] {
    pack(w.window, i64::from_be_bytes(w.available.to_be_bytes()))
}

pub(crate) fn decode_window(bytes: &[u8]) -> Option<WindowState> {
    two_i64(bytes).map(|(window, available)| WindowState {
        window,
        available: u64::from_be_bytes(available.to_be_bytes()),
    })
}

const SLIDING: u8 = b'S';
const PERIOD: u8 = b'P';

fn u(v: i64) -> u64 {
    u64::from_be_bytes(v.to_be_bytes())
}

fn i(v: u64) -> i64 {
    i64::from_be_bytes(v.to_be_bytes())
}

/// A limit counter's state. Buckets keep the 16-byte window layout of
/// earlier versions; the other shapes carry a tag byte first.
pub(crate) fn encode_limit(s: &LimitState) -> Vec<u8> {
    match s {
        LimitState::Bucket(w) => encode_window(w).to_vec(),
        LimitState::Sliding(s) => {
            let mut out = Vec::with_capacity(25);
            out.push(SLIDING);
            out.extend_from_slice(&pack(s.window, i(s.current)));
            out.extend_from_slice(&s.previous.to_be_bytes());
            out
        }
        LimitState::Period(p) => {
            let mut out = Vec::with_capacity(17);
            out.push(PERIOD);
            out.extend_from_slice(&pack(p.start, i(p.used)));
            out
        }
    }
}

/// A limit counter's state; `None` if the bytes are not one (treated as a
/// fresh counter).
pub(crate) fn decode_limit(bytes: &[u8]) -> Option<LimitState> {
    match (bytes.len(), bytes.first()) {
        (16, _) => decode_window(bytes).map(LimitState::Bucket),
        (25, Some(&SLIDING)) => {
            let (window, current) = two_i64(&bytes[1..17])?;
            let previous: [u8; 8] = bytes.get(17..25)?.try_into().ok()?;
            Some(LimitState::Sliding(SlidingState {
                window,
                current: u(current),
                previous: u64::from_be_bytes(previous),
            }))
        }
        (17, Some(&PERIOD)) => {
            let (start, used) = two_i64(&bytes[1..])?;
            Some(LimitState::Period(PeriodState {
                start,
                used: u(used),
            }))
        }
        _ => None,
    }
}

/// `a \0 b`: index keys whose parts contain no NUL (ids and labels never
/// hold control characters), so a prefix scan of `a \0` finds exactly `a`'s
/// entries, in `b` order.
pub(crate) fn joined(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(p.as_bytes());
    }
    out
}

/// The part of an index key after its last NUL.
pub(crate) fn last_part(key: &[u8]) -> &[u8] {
    match key.iter().rposition(|&b| b == 0) {
        Some(i) => &key[i + 1..],
        None => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_roundtrip() {
        let b = Balance {
            remaining: i64::MAX,
            refilled_at: Timestamp::from_millis(-5),
        };
        assert_eq!(decode_balance(&encode_balance(&b)), Some(b));
        let w = WindowState {
            window: 42,
            available: u64::MAX,
        };
        assert_eq!(decode_window(&encode_window(&w)), Some(w));
        assert_eq!(decode_balance(b"short"), None);
        for l in [
            LimitState::Bucket(w),
            LimitState::Sliding(SlidingState {
                window: -3,
                current: u64::MAX,
                previous: 7,
            }),
            LimitState::Period(PeriodState {
                start: 1_700_000_000_000,
                used: 12,
            }),
        ] {
            assert_eq!(decode_limit(&encode_limit(&l)), Some(l));
        }
        assert_eq!(decode_limit(b"S123"), None);
    }

    #[test]
    fn joined_keys() {
        let k = joined(&["ks_1", "key_2"]);
        assert_eq!(k, b"ks_1\0key_2");
        assert_eq!(last_part(&k), b"key_2");
        assert_eq!(last_part(b"plain"), b"plain");
    }
}
