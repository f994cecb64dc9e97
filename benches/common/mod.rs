//! Helpers shared by the benches.

#![allow(dead_code)]

use std::cell::Cell;

/// How many keys to issue: `MAAS_BENCH_KEYS`, else 1,000,000.
pub(crate) fn key_count() -> usize {
    std::env::var("MAAS_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1_000_000)
}

/// `1m`, `1k`, or the number itself.
pub(crate) fn label(n: usize) -> String {
    match n {
        _ if n >= 1_000_000 && n.is_multiple_of(1_000_000) => format!("{}m", n / 1_000_000),
        _ if n >= 1_000 && n.is_multiple_of(1_000) => format!("{}k", n / 1_000),
        _ => n.to_string(),
    }
}

/// A cheap random index per iteration (xorshift64*), so that the pick costs
/// a few cycles and no call into a RNG.
pub(crate) struct Pick(Cell<u64>);

impl Pick {
    pub(crate) fn new() -> Self {
        Pick(Cell::new(0x9E37_79B9_7F4A_7C15))
    }

    #[inline]
    pub(crate) fn below(&self, n: usize) -> usize {
        let mut x = self.0.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}
