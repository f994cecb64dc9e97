//! Sliding-window counters: pure arithmetic that backends run inside their
//! atomic section, like [`WindowState::take`](super::WindowState::take).
//!
//! The window of `window_ms` slides continuously. Its use is estimated from
//! two epoch-aligned fixed windows: all of the current one plus the part of
//! the previous one the sliding window still overlaps, in proportion:
//! `used = previous * (window_ms - elapsed) / window_ms + current`. This is
//! the counter Cloudflare and Unkey use: O(1) state, no burst of twice the
//! limit at a fixed-window boundary, and every node agrees on the windows.
//!
//! What it guarantees, in integers (the previous window's share is rounded
//! up): the units admitted in any one fixed window never exceed `limit`
//! (proved by a proptest below), and the estimate is exact when the previous
//! window's units were spread evenly. It is an estimate otherwise: units
//! taken at the very end of the previous window are assumed spread over it,
//! so an arbitrary interval of `window_ms` can hold up to
//! `limit * (1 + f)` units, `f` being how far into the current window it
//! ends (always less than `2 * limit`, against `2 * limit` for a plain fixed
//! window).

use serde::{Deserialize, Serialize};

use super::WindowTake;
use crate::clock::Timestamp;

/// A sliding window: at most `limit` units in any `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SlidingSpec {
    /// Units allowed per window; at least 1.
    pub limit: u64,
    /// Window length in milliseconds; at least 1.
    pub window_ms: u64,
}

/// The stored state of a sliding-window counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SlidingState {
    /// The index of the current fixed window (`now / window_ms`).
    pub window: i64,
    /// Units taken in the current fixed window.
    pub current: u64,
    /// Units taken in the fixed window before it.
    pub previous: u64,
}

impl SlidingSpec {
    fn width(&self) -> i64 {
        i64::try_from(self.window_ms.max(1)).unwrap_or(i64::MAX)
    }

    fn window_of(&self, now: Timestamp) -> i64 {
        now.as_millis().div_euclid(self.width())
    }
}

impl SlidingState {
    /// The state brought forward to the window of `now`.
    pub(crate) fn at(
        state: Option<SlidingState>,
        spec: &SlidingSpec,
        now: Timestamp,
    ) -> SlidingState {
        let window = spec.window_of(now);
        match state {
            None => SlidingState {
                window,
                current: 0,
                previous: 0,
            },
            Some(s) if window == s.window + 1 => SlidingState {
                window,
                current: 0,
                previous: s.current,
            },
            Some(s) if window > s.window => SlidingState {
                window,
                current: 0,
                previous: 0,
            },
            // Same window, or the clock stepped back: count against the
            // stored one.
            Some(s) => s,
        }
    }

    /// Units in use at `now` for this (brought forward) state, rounding the
    /// previous window's share up.
    fn used(&self, spec: &SlidingSpec, now: Timestamp) -> u64 {
        if self.previous == 0 {
            return self.current;
        }
        let width = spec.window_ms.max(1);
        let start = self.window.saturating_mul(spec.width());
        let elapsed = u64::try_from(now.as_millis().saturating_sub(start))
            .unwrap_or(0)
            .min(width);
        let rest = width - elapsed;
        // In u64 when the product fits (always, for realistic limits); the
        // 128-bit division is several times slower.
        let share = match self.previous.checked_mul(rest) {
            Some(p) => p.div_ceil(width),
            None => u64::try_from(
                (u128::from(self.previous) * u128::from(rest)).div_ceil(u128::from(width)),
            )
            .unwrap_or(u64::MAX),
        };
        share.saturating_add(self.current)
    }

    fn outcome(&self, spec: &SlidingSpec, now: Timestamp, allowed: bool) -> WindowTake {
        WindowTake {
            allowed,
            limit: spec.limit,
            remaining: spec.limit.saturating_sub(self.used(spec, now)),
            reset: Timestamp::from_millis(
                self.window.saturating_add(1).saturating_mul(spec.width()),
            ),
        }
    }

    /// Takes `cost` units at `now` if they fit; a `cost` of 0 only reads.
    /// Returns the new state and the outcome; a refused take changes nothing
    /// but bringing the state forward.
    pub fn take(
        state: Option<SlidingState>,
        spec: &SlidingSpec,
        cost: u64,
        now: Timestamp,
    ) -> (SlidingState, WindowTake) {
        let mut s = Self::at(state, spec, now);
        let allowed = s
            .used(spec, now)
            .checked_add(cost)
            .is_some_and(|u| u <= spec.limit);
        if allowed {
            s.current += cost;
        }
        let out = s.outcome(spec, now, allowed);
        (s, out)
    }

    /// Gives back `units` taken at `taken_at` (a reservation reconciled
    /// lower, or released): they leave the fixed window they were counted
    /// in, if it still counts. Never goes below zero.
    pub fn give_back(
        state: Option<SlidingState>,
        spec: &SlidingSpec,
        units: u64,
        taken_at: Timestamp,
        now: Timestamp,
    ) -> (SlidingState, WindowTake) {
        let mut s = Self::at(state, spec, now);
        let w = spec.window_of(taken_at);
        if w == s.window {
            s.current = s.current.saturating_sub(units);
        } else if w + 1 == s.window {
            s.previous = s.previous.saturating_sub(units);
        }
        let out = s.outcome(spec, now, true);
        (s, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    const SPEC: SlidingSpec = SlidingSpec {
        limit: 10,
        window_ms: 1000,
    };

    #[test]
    fn slides_out_in_proportion() {
        let (s, out) = SlidingState::take(None, &SPEC, 10, t(0));
        assert!(out.allowed);
        assert_eq!((out.remaining, out.reset), (0, t(1000)));
        let (s, out) = SlidingState::take(Some(s), &SPEC, 1, t(999));
        assert!(!out.allowed);
        // A quarter into the next window, three quarters of the previous
        // window's 10 still count (7.5, rounded up to 8).
        let (s, out) = SlidingState::take(Some(s), &SPEC, 0, t(1250));
        assert_eq!(out.remaining, 2);
        let (s, out) = SlidingState::take(Some(s), &SPEC, 3, t(1250));
        assert!(!out.allowed, "no burst at the boundary");
        let (s, out) = SlidingState::take(Some(s), &SPEC, 2, t(1250));
        assert!(out.allowed);
        assert_eq!(out.reset, t(2000));
        // Two windows later everything has slid out.
        let (_, out) = SlidingState::take(Some(s), &SPEC, 10, t(3000));
        assert!(out.allowed);
    }

    #[test]
    fn give_back_returns_units_to_their_window() {
        let (s, _) = SlidingState::take(None, &SPEC, 8, t(100));
        let (s, out) = SlidingState::give_back(Some(s), &SPEC, 5, t(100), t(200));
        assert_eq!((s.current, out.remaining), (3, 7));
        // Taken in the previous window: comes off `previous`.
        let (s, _) = SlidingState::take(Some(s), &SPEC, 0, t(1100));
        assert_eq!((s.previous, s.current), (3, 0));
        let (s, _) = SlidingState::give_back(Some(s), &SPEC, 10, t(900), t(1100));
        assert_eq!(s.previous, 0);
        // Older than that: nothing left to give back.
        let (s2, _) = SlidingState::give_back(Some(s), &SPEC, 1, t(0), t(5000));
        assert_eq!((s2.previous, s2.current), (0, 0));
    }

    #[test]
    fn clock_stepping_back_counts_against_the_stored_window() {
        let (s, _) = SlidingState::take(None, &SPEC, 6, t(5500));
        let (_, out) = SlidingState::take(Some(s), &SPEC, 5, t(4000));
        assert!(!out.allowed);
    }

    proptest! {
        /// The u64 fast path of `used` agrees with the exact 128-bit formula,
        /// overflowing products included.
        #[test]
        fn used_matches_the_exact_formula(
            previous in prop_oneof![0u64..10_000, any::<u64>()],
            current in any::<u64>(),
            window_ms in prop_oneof![1u64..120_000, any::<u64>()],
            window in -3i64..1_000_000,
            offset in -5i64..200_000,
        ) {
            let spec = SlidingSpec { limit: 1, window_ms };
            let s = SlidingState { window, current, previous };
            let start = window.saturating_mul(spec.width());
            let now = t(start.saturating_add(offset));
            let width = u128::from(window_ms.max(1));
            let elapsed = u128::try_from(now.as_millis().saturating_sub(start).max(0))
                .unwrap_or(0)
                .min(width);
            let share = (u128::from(previous) * (width - elapsed)).div_ceil(width);
            let exact = u64::try_from(share).unwrap_or(u64::MAX).saturating_add(current);
            prop_assert_eq!(s.used(&spec, now), exact);
        }
    }

    proptest! {
        /// Whatever the sequence of takes and give-backs, the units counted
        /// in any one fixed window never exceed the limit, `remaining` never
        /// exceeds the limit, and a refused take changes no count.
        #[test]
        fn never_over_admits(
            limit in 1u64..50,
            window_ms in 1u64..2000,
            ops in prop::collection::vec((0i64..700, 0u64..20, any::<bool>()), 1..200),
        ) {
            let spec = SlidingSpec { limit, window_ms };
            let mut state = None;
            let mut now = 1_000_000i64;
            let mut per_window: std::collections::HashMap<i64, u64> = Default::default();
            let mut taken: Vec<(i64, u64)> = Vec::new();
            for (dt, cost, give) in ops {
                now += dt;
                if give && !taken.is_empty() {
                    let (at, units) = taken.remove(0);
                    let (s, out) = SlidingState::give_back(state, &spec, units, t(at), t(now));
                    prop_assert!(out.remaining <= limit);
                    let w = at.div_euclid(window_ms as i64);
                    if w + 1 >= s.window
                        && let Some(n) = per_window.get_mut(&w) {
                            *n -= units.min(*n);
                        }
                    state = Some(s);
                    continue;
                }
                let before = SlidingState::at(state, &spec, t(now));
                let (s, out) = SlidingState::take(state, &spec, cost, t(now));
                prop_assert!(out.remaining <= limit);
                if out.allowed {
                    let n = per_window.entry(s.window).or_default();
                    *n += cost;
                    prop_assert!(*n <= limit, "window {} holds {} > {}", s.window, n, limit);
                    taken.push((now, cost));
                } else {
                    prop_assert_eq!(s, before);
                    prop_assert!(cost > 0);
                }
                state = Some(s);
            }
        }
    }
}
