//! Limits of every shape behind one interface, so a request can reserve
//! against several at once (all or none) and settle them afterwards.
//!
//! A [`LimitSpec`] is a token bucket ([`WindowSpec`]), a sliding window
//! ([`SlidingSpec`]) or a calendar period ([`PeriodSpec`], for budgets). Each
//! has a stored [`LimitState`] and the same three pure operations, which a
//! backend runs inside its atomic section:
//! - [`LimitSpec::take`]: take `cost` units if they fit;
//! - [`LimitSpec::settle`]: a reservation of `reserved` units, taken at
//!   `taken_at`, actually used `used`: give the difference back to the window
//!   (or period) it was taken in, or charge the excess now;
//! - [`LimitSpec::peek`]: what is left, changing nothing.
//!
//! Giving back never makes a window admit more than its limit: units return
//! only to the window they were counted in, and only while it still counts.
//! A window that has moved on keeps them spent (conservative).

use serde::{Deserialize, Serialize};
use time::{Date, Month};

use super::{SlidingSpec, SlidingState, WindowSpec, WindowState, WindowTake};
use crate::clock::Timestamp;
use crate::error::{Error, Result};

const DAY_MS: i64 = 86_400_000;

/// The outcome of an operation on a limit: whether it was allowed, the
/// limit, what is left and when the window resets (for response headers).
pub type Decision = WindowTake;

/// A calendar period of a budget, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// From 00:00 UTC to the next midnight.
    Daily,
    /// From Monday 00:00 UTC to the next Monday.
    Weekly,
    /// From the 1st 00:00 UTC to the 1st of the next month.
    Monthly,
}

impl std::str::FromStr for Period {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "daily" => Ok(Period::Daily),
            "weekly" => Ok(Period::Weekly),
            "monthly" => Ok(Period::Monthly),
            _ => Err(Error::invalid(
                "period",
                "must be \"daily\", \"weekly\" or \"monthly\"",
            )),
        }
    }
}

impl Period {
    /// The period containing `now`: its start and its end (exclusive).
    pub fn bounds(self, now: Timestamp) -> (Timestamp, Timestamp) {
        let ms = now.as_millis();
        let day = ms.div_euclid(DAY_MS);
        match self {
            Period::Daily => (
                Timestamp::from_millis(day.saturating_mul(DAY_MS)),
                Timestamp::from_millis(day.saturating_add(1).saturating_mul(DAY_MS)),
            ),
            Period::Weekly => {
                // 1970-01-01 was a Thursday: Monday-based weekday = (day + 3) mod 7.
                let monday = day - (day + 3).rem_euclid(7);
                (
                    Timestamp::from_millis(monday.saturating_mul(DAY_MS)),
                    Timestamp::from_millis(monday.saturating_add(7).saturating_mul(DAY_MS)),
                )
            }
            Period::Monthly => {
                let Some(dt) = now.to_datetime() else {
                    return (Timestamp::EPOCH, Timestamp::from_millis(i64::MAX));
                };
                let (y, m) = (dt.year(), dt.month());
                let (ny, nm) = if m == Month::December {
                    (y + 1, Month::January)
                } else {
                    (y, m.next())
                };
                (first_of(y, m), first_of(ny, nm))
            }
        }
    }
}

fn first_of(year: i32, month: Month) -> Timestamp {
    match Date::from_calendar_date(year, month, 1) {
        Ok(d) => Timestamp::from_datetime(d.midnight().assume_utc()),
        Err(_) => Timestamp::from_millis(i64::MAX),
    }
}

/// A budget-like limit: at most `limit` units per calendar [`Period`]; the
/// count starts over at each period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeriodSpec {
    /// Units per period; at least 1.
    pub limit: u64,
    /// The period.
    pub period: Period,
}

/// The stored state of a period counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodState {
    /// The start of the period counted (unix ms).
    pub start: i64,
    /// Units used in it.
    pub used: u64,
}

/// Any limit a request can be counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum LimitSpec {
    /// A token bucket refilled in steps at epoch-aligned windows (with
    /// `refill == limit`, a fixed window).
    Bucket(WindowSpec),
    /// A sliding window.
    Sliding(SlidingSpec),
    /// A calendar period (budgets).
    Period(PeriodSpec),
}

/// The stored state of a limit counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitState {
    /// Of a [`LimitSpec::Bucket`].
    Bucket(WindowState),
    /// Of a [`LimitSpec::Sliding`].
    Sliding(SlidingState),
    /// Of a [`LimitSpec::Period`].
    Period(PeriodState),
}

/// One counter of a reservation: take `cost` units from counter `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitOp {
    /// The counter's id in the store.
    pub id: String,
    /// Its limit.
    pub spec: LimitSpec,
    /// Units to take.
    pub cost: u64,
}

impl LimitOp {
    /// The op with its id borrowed.
    pub fn borrowed(&self) -> LimitOpRef<'_> {
        LimitOpRef {
            id: &self.id,
            spec: self.spec,
            cost: self.cost,
        }
    }
}

/// A [`LimitOp`] whose id is borrowed, for callers that keep their ids
/// (see [`LocalCounters::reserve_refs`](super::LocalCounters::reserve_refs)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitOpRef<'a> {
    /// The counter's id in the store.
    pub id: &'a str,
    /// Its limit.
    pub spec: LimitSpec,
    /// Units to take.
    pub cost: u64,
}

/// What [`reserve_into`] needs of an op, owned or borrowed.
pub(crate) trait OpView {
    fn id(&self) -> &str;
    fn spec(&self) -> &LimitSpec;
    fn cost(&self) -> u64;
}

impl OpView for LimitOp {
    fn id(&self) -> &str {
        &self.id
    }
    fn spec(&self) -> &LimitSpec {
        &self.spec
    }
    fn cost(&self) -> u64 {
        self.cost
    }
}

impl OpView for LimitOpRef<'_> {
    fn id(&self) -> &str {
        self.id
    }
    fn spec(&self) -> &LimitSpec {
        &self.spec
    }
    fn cost(&self) -> u64 {
        self.cost
    }
}

/// A value to fill decision buffers with before they are written.
pub(crate) const NO_DECISION: Decision = Decision {
    allowed: false,
    limit: 0,
    remaining: 0,
    reset: Timestamp::EPOCH,
};

/// A value to fill state buffers with before they are written.
pub(crate) const NO_STATE: LimitState = LimitState::Period(PeriodState { start: 0, used: 0 });

/// One counter of a settlement: `reserved` units taken at `taken_at` were
/// actually `used`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleOp {
    /// The counter's id in the store.
    pub id: String,
    /// Its limit.
    pub spec: LimitSpec,
    /// When the reservation was taken.
    pub taken_at: Timestamp,
    /// Units reserved.
    pub reserved: u64,
    /// Units actually used: less gives the rest back, more charges the excess.
    pub used: u64,
}

/// The outcome of [`CounterStore::reserve`](crate::storage::CounterStore::reserve).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    /// Whether every op was taken; if not, none was.
    pub admitted: bool,
    /// One decision per op, in order. When not admitted, each says whether
    /// that op alone would have fitted, and what is left without any take.
    pub decisions: Vec<Decision>,
}

impl Reserved {
    /// The index of the first op that did not fit.
    pub fn first_denied(&self) -> Option<usize> {
        self.decisions.iter().position(|d| !d.allowed)
    }
}

impl LimitSpec {
    /// Checks the spec: limits, refills and windows at least 1.
    pub fn validate(&self) -> Result<()> {
        let (limit, window) = match self {
            LimitSpec::Bucket(w) => {
                if w.refill == 0 {
                    return Err(Error::invalid("refill", "must be at least 1"));
                }
                (w.limit, w.window_ms)
            }
            LimitSpec::Sliding(s) => (s.limit, s.window_ms),
            LimitSpec::Period(p) => (p.limit, 1),
        };
        if limit == 0 {
            return Err(Error::invalid("limit", "must be at least 1"));
        }
        if window == 0 {
            return Err(Error::invalid("duration", "must be at least 1 ms"));
        }
        Ok(())
    }

    /// The capacity of the limit.
    pub fn limit(&self) -> u64 {
        match self {
            LimitSpec::Bucket(w) => w.limit,
            LimitSpec::Sliding(s) => s.limit,
            LimitSpec::Period(p) => p.limit,
        }
    }

    /// Takes `cost` units at `now` if they fit (a `cost` of 0 only reads).
    /// A state of another shape than the spec (the limit was reconfigured)
    /// counts as fresh. A refused take changes no count.
    pub fn take(
        &self,
        state: Option<LimitState>,
        cost: u64,
        now: Timestamp,
    ) -> (LimitState, Decision) {
        match (self, state) {
            (LimitSpec::Bucket(spec), s) => {
                let s = match s {
                    Some(LimitState::Bucket(s)) => Some(s),
                    _ => None,
                };
                let (next, d) = WindowState::take(s, spec, cost, now);
                (LimitState::Bucket(next), d)
            }
            (LimitSpec::Sliding(spec), s) => {
                let s = match s {
                    Some(LimitState::Sliding(s)) => Some(s),
                    _ => None,
                };
                let (next, d) = SlidingState::take(s, spec, cost, now);
                (LimitState::Sliding(next), d)
            }
            (LimitSpec::Period(spec), s) => {
                let mut p = period_at(s, spec, now);
                let allowed = p.used.checked_add(cost).is_some_and(|u| u <= spec.limit);
                if allowed {
                    p.used += cost;
                }
                (
                    LimitState::Period(p),
                    period_decision(&p, spec, now, allowed),
                )
            }
        }
    }

    /// What is left at `now`, without taking anything.
    pub fn peek(&self, state: Option<LimitState>, now: Timestamp) -> Decision {
        self.take(state, 0, now).1
    }

    /// Settles a reservation: gives back `reserved - used` to the window it
    /// was taken in (if that window still counts), or charges `used -
    /// reserved` now, even past the limit (the work was done; the excess
    /// delays later requests instead of being forgotten).
    pub fn settle(
        &self,
        state: Option<LimitState>,
        taken_at: Timestamp,
        reserved: u64,
        used: u64,
        now: Timestamp,
    ) -> (LimitState, Decision) {
        let (state, _) = self.take(state, 0, now);
        let next = match (self, state) {
            (LimitSpec::Bucket(spec), LimitState::Bucket(mut s)) => {
                if used < reserved {
                    if s.window == spec.window_of(taken_at) {
                        s.available = s.available.saturating_add(reserved - used).min(spec.limit);
                    }
                } else {
                    s.available = s.available.saturating_sub(used - reserved);
                }
                LimitState::Bucket(s)
            }
            (LimitSpec::Sliding(spec), LimitState::Sliding(s)) => {
                if used < reserved {
                    LimitState::Sliding(
                        SlidingState::give_back(Some(s), spec, reserved - used, taken_at, now).0,
                    )
                } else {
                    LimitState::Sliding(SlidingState {
                        current: s.current.saturating_add(used - reserved),
                        ..s
                    })
                }
            }
            (LimitSpec::Period(spec), LimitState::Period(mut p)) => {
                if used < reserved {
                    if p.start == spec.period.bounds(taken_at).0.as_millis() {
                        p.used = p.used.saturating_sub(reserved - used);
                    }
                } else {
                    p.used = p.used.saturating_add(used - reserved);
                }
                LimitState::Period(p)
            }
            // `take` returned the spec's own shape.
            (_, other) => other,
        };
        (next, self.peek(Some(next), now))
    }
}

fn period_at(state: Option<LimitState>, spec: &PeriodSpec, now: Timestamp) -> PeriodState {
    let start = spec.period.bounds(now).0.as_millis();
    match state {
        // Same period, or the clock stepped back: count against the stored one.
        Some(LimitState::Period(p)) if p.start >= start => p,
        _ => PeriodState { start, used: 0 },
    }
}

fn period_decision(p: &PeriodState, spec: &PeriodSpec, now: Timestamp, allowed: bool) -> Decision {
    let start = Timestamp::from_millis(p.start.max(spec.period.bounds(now).0.as_millis()));
    Decision {
        allowed,
        limit: spec.limit,
        remaining: spec.limit.saturating_sub(p.used),
        reset: spec.period.bounds(start).1,
    }
}

/// Runs a reservation over states fetched by `get`: all ops fit, or none is
/// taken. Returns the outcome and, when admitted, the new state of each op
/// (in op order). Backends call this inside their atomic section; an id
/// appearing twice sees its own earlier take.
pub fn reserve_all(
    ops: &[LimitOp],
    now: Timestamp,
    get: impl FnMut(&str) -> Option<LimitState>,
) -> (Reserved, Vec<LimitState>) {
    let mut decisions = vec![NO_DECISION; ops.len()];
    let mut states = vec![NO_STATE; ops.len()];
    let admitted = reserve_into(ops, now, get, &mut decisions, &mut states);
    if !admitted {
        states.clear();
    }
    (
        Reserved {
            admitted,
            decisions,
        },
        states,
    )
}

/// [`reserve_all`] into buffers: writes the decision of each op into
/// `decisions` and, when admitted, its new state into `states` (as many
/// as each holds; both are meant to be at least `ops.len()` long, and
/// `states` must be for the outcome to count repeated ids). Returns whether
/// every op was taken.
pub(crate) fn reserve_into<O: OpView>(
    ops: &[O],
    now: Timestamp,
    mut get: impl FnMut(&str) -> Option<LimitState>,
    decisions: &mut [Decision],
    states: &mut [LimitState],
) -> bool {
    let mut admitted = true;
    for (i, op) in ops.iter().enumerate() {
        // A repeated id continues from the state this reservation produced.
        let before = ops[..i]
            .iter()
            .rposition(|o| o.id() == op.id())
            .and_then(|j| states.get(j).copied())
            .or_else(|| get(op.id()));
        let (next, d) = op.spec().take(before, op.cost(), now);
        admitted &= d.allowed;
        if let Some(slot) = decisions.get_mut(i) {
            *slot = d;
        }
        if let Some(slot) = states.get_mut(i) {
            *slot = next;
        }
    }
    if !admitted {
        // Report each op against its untouched state.
        for (op, slot) in ops.iter().zip(decisions.iter_mut()) {
            let state = get(op.id());
            let fits = op.spec().take(state, op.cost(), now).1.allowed;
            *slot = Decision {
                allowed: fits,
                ..op.spec().peek(state, now)
            };
        }
    }
    admitted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        let dt =
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap();
        Timestamp::from_datetime(dt)
    }

    #[test]
    fn period_bounds_are_utc_calendar() {
        let now = ts("2025-03-12T13:45:00Z"); // a Wednesday
        assert_eq!(
            Period::Daily.bounds(now),
            (ts("2025-03-12T00:00:00Z"), ts("2025-03-13T00:00:00Z"))
        );
        assert_eq!(
            Period::Weekly.bounds(now),
            (ts("2025-03-10T00:00:00Z"), ts("2025-03-17T00:00:00Z"))
        );
        assert_eq!(
            Period::Weekly.bounds(ts("2025-03-10T00:00:00Z")).0,
            ts("2025-03-10T00:00:00Z")
        );
        assert_eq!(
            Period::Monthly.bounds(ts("2024-12-31T23:59:59Z")),
            (ts("2024-12-01T00:00:00Z"), ts("2025-01-01T00:00:00Z"))
        );
        assert_eq!(
            Period::Weekly.bounds(Timestamp::EPOCH).0,
            ts("1969-12-29T00:00:00Z")
        );
        assert!("hourly".parse::<Period>().is_err());
    }

    #[test]
    fn period_resets_and_gives_back_within_its_period() {
        let spec = LimitSpec::Period(PeriodSpec {
            limit: 100,
            period: Period::Daily,
        });
        let t0 = ts("2025-03-12T10:00:00Z");
        let (s, d) = spec.take(None, 80, t0);
        assert!(d.allowed);
        assert_eq!((d.remaining, d.reset), (20, ts("2025-03-13T00:00:00Z")));
        assert!(!spec.take(Some(s), 21, t0).1.allowed);
        // Used 50 of the 80 reserved: 30 come back.
        let (s, d) = spec.settle(Some(s), t0, 80, 50, t0);
        assert_eq!(d.remaining, 50);
        // Next day: full again; a settlement of yesterday's take gives nothing back.
        let t1 = ts("2025-03-13T00:00:00Z");
        let (s, _) = spec.take(Some(s), 10, t1);
        let (_, d) = spec.settle(Some(s), t0, 80, 0, t1);
        assert_eq!(d.remaining, 90);
    }

    #[test]
    fn bucket_gives_back_only_in_its_window() {
        let spec = LimitSpec::Bucket(WindowSpec::fixed(10, 1000));
        let t = Timestamp::from_millis;
        let (s, _) = spec.take(None, 8, t(100));
        let (s, d) = spec.settle(Some(s), t(100), 8, 3, t(500));
        assert_eq!(d.remaining, 7);
        // Overuse is charged, even past the limit.
        let (s, d) = spec.settle(Some(s), t(100), 1, 20, t(600));
        assert_eq!(d.remaining, 0);
        // The next window refills; a give-back from the old window is dropped,
        // so the new window never holds more than the limit.
        let (s, _) = spec.take(Some(s), 4, t(1100));
        let (_, d) = spec.settle(Some(s), t(100), 5, 0, t(1200));
        assert_eq!(d.remaining, 6);
    }

    #[test]
    fn sliding_settles_excess_and_give_back() {
        let spec = LimitSpec::Sliding(SlidingSpec {
            limit: 10,
            window_ms: 1000,
        });
        let t = Timestamp::from_millis;
        let (s, _) = spec.take(None, 6, t(100));
        let (s, d) = spec.settle(Some(s), t(100), 6, 2, t(200));
        assert_eq!(d.remaining, 8);
        let (_, d) = spec.settle(Some(s), t(100), 2, 12, t(300));
        assert_eq!(d.remaining, 0);
    }

    #[test]
    fn reserve_all_is_all_or_none() {
        let a = LimitSpec::Bucket(WindowSpec::fixed(10, 1000));
        let b = LimitSpec::Sliding(SlidingSpec {
            limit: 5,
            window_ms: 1000,
        });
        let ops = vec![
            LimitOp {
                id: "a".into(),
                spec: a,
                cost: 4,
            },
            LimitOp {
                id: "b".into(),
                spec: b,
                cost: 6,
            },
        ];
        let (r, states) = reserve_all(&ops, Timestamp::from_millis(0), |_| None);
        assert!(!r.admitted);
        assert!(states.is_empty());
        assert_eq!(r.first_denied(), Some(1));
        assert!(r.decisions[0].allowed);
        assert_eq!(r.decisions[0].remaining, 10, "nothing taken from a");

        // The same id twice sees its own first take.
        let twice = vec![
            LimitOp {
                id: "a".into(),
                spec: a,
                cost: 6,
            },
            LimitOp {
                id: "a".into(),
                spec: a,
                cost: 6,
            },
        ];
        let (r, _) = reserve_all(&twice, Timestamp::from_millis(0), |_| None);
        assert!(!r.admitted);
    }

    #[test]
    fn a_reshaped_limit_starts_fresh() {
        let sliding = LimitSpec::Sliding(SlidingSpec {
            limit: 5,
            window_ms: 1000,
        });
        let bucket = LimitSpec::Bucket(WindowSpec::fixed(3, 1000));
        let (s, _) = sliding.take(None, 5, Timestamp::EPOCH);
        let (_, d) = bucket.take(Some(s), 3, Timestamp::EPOCH);
        assert!(d.allowed);
    }

    #[test]
    fn validate_names_the_field() {
        let bad = LimitSpec::Sliding(SlidingSpec {
            limit: 0,
            window_ms: 1000,
        });
        assert!(
            matches!(bad.validate(), Err(Error::InvalidInput { field, .. }) if field == "limit")
        );
    }
}
