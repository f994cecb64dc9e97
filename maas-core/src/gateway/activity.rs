//! What the gateway answered lately, by kind, per minute: the operator's
//! live rates (requests, refusals, errors) without a metrics backend.

use std::sync::{Mutex, PoisonError};

use crate::clock::Timestamp;

/// Answers of one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minute {
    /// Every answer.
    pub answered: u64,
    /// 429s: a limit, a quota, a budget or a full queue refused.
    pub refused: u64,
    /// 5xx: the upstream or the gateway failed.
    pub errors: u64,
}

/// The answers of the current and the previous UTC minute (cheap: one
/// uncontended lock per answer).
#[derive(Debug, Default)]
pub struct Activity {
    minutes: Mutex<[(i64, Minute); 2]>,
}

impl Activity {
    /// Counts an answer of HTTP `status` at `now`.
    pub fn record(&self, now: Timestamp, status: u16) {
        let minute = now.as_millis().div_euclid(60_000);
        let mut m = self.minutes.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = minute.rem_euclid(2) as usize;
        if m[slot].0 != minute {
            m[slot] = (minute, Minute::default());
        }
        let c = &mut m[slot].1;
        c.answered += 1;
        if status == 429 {
            c.refused += 1;
        } else if status >= 500 {
            c.errors += 1;
        }
    }

    /// The answers of the last 60 seconds before `now`: the current
    /// minute's, plus the previous minute's weighted by how much of it is
    /// still inside.
    pub fn last_minute(&self, now: Timestamp) -> Minute {
        let minute = now.as_millis().div_euclid(60_000);
        let into = now.as_millis().rem_euclid(60_000) as f64 / 60_000.0;
        let m = self.minutes.lock().unwrap_or_else(PoisonError::into_inner);
        let at = |k: i64| {
            m.iter()
                .find(|(mm, _)| *mm == k)
                .map_or(Minute::default(), |(_, c)| *c)
        };
        let (cur, prev) = (at(minute), at(minute - 1));
        let w = |a: u64, b: u64| a + (b as f64 * (1.0 - into)).round() as u64;
        Minute {
            answered: w(cur.answered, prev.answered),
            refused: w(cur.refused, prev.refused),
            errors: w(cur.errors, prev.errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_by_kind_over_the_last_minute() {
        let a = Activity::default();
        let t0 = 1_764_028_800_000; // a minute boundary
        for s in [200, 200, 429, 503, 404] {
            a.record(Timestamp::from_millis(t0 + 1_000), s);
        }
        let m = a.last_minute(Timestamp::from_millis(t0 + 30_000));
        assert_eq!(
            m,
            Minute {
                answered: 5,
                refused: 1,
                errors: 1
            }
        );
        // Half a minute into the next: half of the previous one counts.
        a.record(Timestamp::from_millis(t0 + 60_000 + 10), 429);
        let m = a.last_minute(Timestamp::from_millis(t0 + 90_000));
        assert_eq!(
            m,
            Minute {
                answered: 1 + 3,
                refused: 1 + 1,
                errors: 1
            }
        );
        // Two minutes on: nothing.
        let m = a.last_minute(Timestamp::from_millis(t0 + 180_000));
        assert_eq!(m, Minute::default());
    }
}
