//! Counters that must be exact: balances (remaining uses, refilled on a
//! calendar) and windows (rate limits).
//!
//! The arithmetic lives here, as pure functions on small state values. Each
//! storage backend runs them inside its own atomic section (a lock, a
//! compare-and-swap loop, a transaction) — see
//! [`CounterStore`](crate::storage::CounterStore) — so every backend counts the
//! same way and none of them reads, then writes, from the core.
//!
//! [`LocalCounters`] is the in-process implementation: the memory backend
//! stores its counters in one, and `fast` per-key rate limits use one per node.

mod limit;
mod sliding;

pub use limit::{
    Decision, LimitOp, LimitOpRef, LimitSpec, LimitState, Period, PeriodSpec, PeriodState,
    Reserved, SettleOp, reserve_all,
};

use limit::{NO_DECISION, NO_STATE, OpView, reserve_into};
pub use sliding::{SlidingSpec, SlidingState};

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use time::{Date, Month};

use crate::clock::Timestamp;
use crate::error::{Error, Result};

const DAY_MS: i64 = 86_400_000;

/// How often a balance is refilled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RefillInterval {
    /// Every day at 00:00 UTC.
    Daily,
    /// Every month at 00:00 UTC of the refill day.
    Monthly,
}

impl std::str::FromStr for RefillInterval {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "daily" => Ok(RefillInterval::Daily),
            "monthly" => Ok(RefillInterval::Monthly),
            _ => Err(Error::invalid(
                "refill.interval",
                "must be \"daily\" or \"monthly\"",
            )),
        }
    }
}

impl fmt::Display for RefillInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefillInterval::Daily => "daily",
            RefillInterval::Monthly => "monthly",
        })
    }
}

/// A refill policy: at every boundary of `interval`, the balance is reset to
/// `amount` (not increased by it, as in Unkey).
///
/// Refills are applied lazily: the next operation on the balance after a
/// boundary has passed sees the refilled value. Boundaries are UTC midnights;
/// monthly ones fall on `day` (default the 1st), or on the last day of months
/// shorter than that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refill {
    /// How often.
    pub interval: RefillInterval,
    /// The balance after a refill; at least 1.
    pub amount: u64,
    /// For monthly refills, the day of the month (1..=31); `None` means the 1st.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<u8>,
}

impl Refill {
    /// Checks the policy: `amount` ≥ 1, `day` in 1..=31 and only for monthly.
    pub fn validate(&self) -> Result<()> {
        if self.amount == 0 {
            return Err(Error::invalid("refill.amount", "must be at least 1"));
        }
        if self.amount > i64::MAX as u64 {
            return Err(Error::invalid("refill.amount", "is too large"));
        }
        match (self.interval, self.day) {
            (_, None) => Ok(()),
            (RefillInterval::Monthly, Some(1..=31)) => Ok(()),
            (RefillInterval::Monthly, Some(_)) => Err(Error::invalid(
                "refill.refillDay",
                "must be between 1 and 31",
            )),
            (RefillInterval::Daily, Some(_)) => Err(Error::invalid(
                "refill.refillDay",
                "applies only to monthly refills",
            )),
        }
    }

    /// The latest refill boundary at or before `now`.
    pub fn last_boundary(&self, now: Timestamp) -> Timestamp {
        let midnight = Timestamp::from_millis(now.as_millis() - now.as_millis().rem_euclid(DAY_MS));
        match self.interval {
            RefillInterval::Daily => midnight,
            RefillInterval::Monthly => {
                let Some(dt) = now.to_datetime() else {
                    return midnight;
                };
                let day = self.day.unwrap_or(1);
                let this = month_day(dt.year(), dt.month(), day);
                if this <= now {
                    this
                } else {
                    let (y, m) = if dt.month() == Month::January {
                        (dt.year() - 1, Month::December)
                    } else {
                        (dt.year(), dt.month().previous())
                    };
                    month_day(y, m, day)
                }
            }
        }
    }
}

/// Midnight UTC of `day` (clamped to the month's length) in `year`/`month`.
fn month_day(year: i32, month: Month, day: u8) -> Timestamp {
    let day = day.clamp(1, month.length(year));
    match Date::from_calendar_date(year, month, day) {
        Ok(d) => Timestamp::from_datetime(d.midnight().assume_utc()),
        Err(_) => Timestamp::EPOCH,
    }
}

/// A balance of uses: decremented by verifications, refilled by its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Balance {
    /// Uses left; never negative.
    pub remaining: i64,
    /// When the balance was created or last refilled.
    pub refilled_at: Timestamp,
}

impl Balance {
    /// A balance of `remaining` (clamped at 0) as of `now`.
    pub fn new(remaining: i64, now: Timestamp) -> Self {
        Balance {
            remaining: remaining.max(0),
            refilled_at: now,
        }
    }

    /// The balance with a refill applied if a boundary passed since the last one.
    pub fn refilled(self, refill: Option<&Refill>, now: Timestamp) -> Balance {
        match refill {
            Some(r) if self.refilled_at < r.last_boundary(now) => Balance {
                remaining: i64::try_from(r.amount).unwrap_or(i64::MAX),
                refilled_at: now,
            },
            _ => self,
        }
    }

    /// Decrement-if-enough: spends `cost` if at least that much remains.
    /// Returns whether it was spent, and the balance after.
    pub fn spend(self, cost: u64) -> (bool, Balance) {
        let cost = i64::try_from(cost).unwrap_or(i64::MAX);
        if self.remaining >= cost {
            (
                true,
                Balance {
                    remaining: self.remaining - cost,
                    ..self
                },
            )
        } else {
            (false, self)
        }
    }
}

/// An administrative change of a balance (`keys.updateRemaining`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceOp {
    /// Set to this value.
    Set(i64),
    /// Add this much (saturating).
    Increment(i64),
    /// Subtract this much, stopping at 0.
    Decrement(i64),
}

impl BalanceOp {
    /// The balance after the change; the result stays within `0..=i64::MAX`.
    pub fn apply(self, b: Balance) -> Balance {
        let remaining = match self {
            BalanceOp::Set(v) => v,
            BalanceOp::Increment(v) => b.remaining.saturating_add(v),
            BalanceOp::Decrement(v) => b.remaining.saturating_sub(v),
        }
        .max(0);
        Balance { remaining, ..b }
    }
}

/// The outcome of [`CounterStore::spend`](crate::storage::CounterStore::spend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spend {
    /// Whether the cost was taken.
    pub spent: bool,
    /// The balance after the operation; `None` if the counter does not exist.
    pub balance: Option<Balance>,
}

/// A windowed limit: up to `limit` units, of which `refill` come back at the
/// start of every window of `window_ms` milliseconds.
///
/// Windows are aligned to the epoch (window `n` covers
/// `[n * window_ms, (n + 1) * window_ms)`), so every node agrees on them. With
/// `refill == limit` this is a fixed-window counter; with `refill < limit` it is
/// a token bucket of capacity `limit` refilled in steps, as Unkey's per-key
/// `ratelimit {limit, refillRate, refillInterval}` describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WindowSpec {
    /// Capacity: the most units available at once; at least 1.
    pub limit: u64,
    /// Units given back at each window boundary; at least 1.
    pub refill: u64,
    /// Window length in milliseconds; at least 1.
    pub window_ms: u64,
}

impl WindowSpec {
    /// A fixed window of `limit` units per `window_ms`.
    pub fn fixed(limit: u64, window_ms: u64) -> Self {
        WindowSpec {
            limit,
            refill: limit,
            window_ms,
        }
    }

    fn window_of(&self, now: Timestamp) -> i64 {
        let w = i64::try_from(self.window_ms.max(1)).unwrap_or(i64::MAX);
        now.as_millis().div_euclid(w)
    }

    fn reset_of(&self, window: i64) -> Timestamp {
        let w = i64::try_from(self.window_ms.max(1)).unwrap_or(i64::MAX);
        Timestamp::from_millis(window.saturating_add(1).saturating_mul(w))
    }
}

/// The stored state of a window counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowState {
    /// The index of the window this state was last brought up to date in.
    pub window: i64,
    /// Units available in that window.
    pub available: u64,
}

/// The outcome of taking from a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowTake {
    /// Whether the units were taken.
    pub allowed: bool,
    /// The capacity of the limit.
    pub limit: u64,
    /// Units left after this operation.
    pub remaining: u64,
    /// When the current window ends (the next refill).
    pub reset: Timestamp,
}

impl WindowState {
    /// Takes `cost` units at `now` from `state` (`None`: a fresh, full counter).
    /// Returns the new state and the outcome. A `cost` of 0 only reads.
    pub fn take(
        state: Option<WindowState>,
        spec: &WindowSpec,
        cost: u64,
        now: Timestamp,
    ) -> (WindowState, WindowTake) {
        let window = spec.window_of(now);
        let mut s = match state {
            None => WindowState {
                window,
                available: spec.limit,
            },
            Some(s) if window > s.window => {
                let windows = u64::try_from(window - s.window).unwrap_or(u64::MAX);
                WindowState {
                    window,
                    available: s
                        .available
                        .saturating_add(spec.refill.saturating_mul(windows)),
                }
            }
            // Same window, or the clock stepped back: count against the stored one.
            Some(s) => s,
        };
        s.available = s.available.min(spec.limit);
        let allowed = s.available >= cost;
        if allowed {
            s.available -= cost;
        }
        let take = WindowTake {
            allowed,
            limit: spec.limit,
            remaining: s.available,
            reset: spec.reset_of(s.window.max(window)),
        };
        (s, take)
    }
}

/// In-process counters: exact within one process, lock-striped, no I/O.
///
/// Each operation holds the lock of its counter's stripe (several stripes,
/// taken in index order, for a multi-counter reservation) for the few
/// nanoseconds of its arithmetic, so concurrent operations on one counter are
/// serialized and none is lost, and a reservation is all or none.
#[derive(Debug)]
pub struct LocalCounters {
    balances: DashMap<String, Balance>,
    limits: Stripes,
}

impl Default for LocalCounters {
    fn default() -> Self {
        Self::new()
    }
}

const STRIPES: usize = 64;
// The stripes a reservation locks are a bit set in a `u64`.
const _: () = assert!(STRIPES <= 64);

/// Ops of a reservation whose keys and states fit on the stack; more take
/// a heap buffer.
const INLINE_OPS: usize = 8;

/// A limit counter held in process: its state, and what was taken here
/// since it was last synced with the store (fast mode).
#[derive(Debug, Clone)]
struct Slot {
    id: Box<str>,
    state: LimitState,
    spec: Option<LimitSpec>,
    unsynced: u64,
    touched: bool,
}

impl Slot {
    fn new(id: &str, state: LimitState) -> Self {
        Slot {
            id: id.into(),
            state,
            spec: None,
            unsynced: 0,
            touched: false,
        }
    }
}

/// A counter's key in its stripe: a 128-bit hash of its id under two
/// random per-process SipHash keys. Two ids share a key with probability
/// about `n² / 2¹²⁹` (10⁻²⁹ for 100,000 counters) and cannot be made to
/// collide without the keys; in exchange a lookup never dereferences a
/// stored id (one cache miss less per decision) and no hash is computed
/// twice.
type Key = u128;

/// The in-process key of a limit counter ([`LocalCounters::key_of`]): lets a
/// caller that builds a counter's id from parts skip building the string on
/// its hot path.
///
/// Kept as two words (alignment 8, not a `u128`'s 16): a reservation holds
/// one for each of its counters, and is moved about with its request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CounterKey([u64; 2]);

impl CounterKey {
    fn new(k: Key) -> Self {
        CounterKey([(k >> 64) as u64, k as u64])
    }

    fn raw(self) -> Key {
        (u128::from(self.0[0]) << 64) | u128::from(self.0[1])
    }
}

/// Uses the key's high half as the hash (the low half picks the stripe).
#[derive(Debug, Default, Clone, Copy)]
struct KeyHash(u64);

impl std::hash::Hasher for KeyHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used by `Key`; fold anything else in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = (v >> 64) as u64;
    }
}

type Stripe = HashMap<Key, Slot, std::hash::BuildHasherDefault<KeyHash>>;

/// A limit counter to sync with the store ([`LocalCounters::drain_unsynced`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsynced {
    /// The counter's in-process key.
    pub key: CounterKey,
    /// The counter's id in the store.
    pub id: String,
    /// Its limit.
    pub spec: LimitSpec,
    /// Units taken in process since the last sync.
    pub units: u64,
}

#[derive(Debug)]
struct Stripes {
    hashers: (RandomState, RandomState),
    stripes: Box<[Mutex<Stripe>]>,
}

impl Stripes {
    fn new() -> Self {
        Stripes {
            hashers: (RandomState::new(), RandomState::new()),
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
        }
    }

    fn key(&self, id: &str) -> Key {
        self.key_of(id)
    }

    fn key_of<H: std::hash::Hash + ?Sized>(&self, parts: &H) -> Key {
        (u128::from(self.hashers.0.hash_one(parts)) << 64)
            | u128::from(self.hashers.1.hash_one(parts))
    }

    fn with_key<R>(&self, k: Key, f: impl FnOnce(&mut Stripe) -> R) -> R {
        f(&mut self.lock(Self::index(k)))
    }

    fn index(key: Key) -> usize {
        (key as u64 % STRIPES as u64) as usize
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Stripe> {
        // The sections hold no invariant a panic could break halfway.
        match self.stripes[i % STRIPES].lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn with<R>(&self, id: &str, f: impl FnOnce(&mut Stripe, Key) -> R) -> R {
        let k = self.key(id);
        f(&mut self.lock(Self::index(k)), k)
    }

    /// Locks the stripes of `keys` in index order (no deadlock between two
    /// reservations).
    fn lock_all(&self, keys: &[Key]) -> Locked<'_> {
        let mask = keys.iter().fold(0u64, |m, &k| m | (1u64 << Self::index(k)));
        let mut guards: [Option<MutexGuard<'_, Stripe>>; STRIPES] = std::array::from_fn(|_| None);
        for (i, g) in guards.iter_mut().enumerate() {
            if mask & (1u64 << i) != 0 {
                *g = Some(self.lock(i));
            }
        }
        Locked { guards }
    }
}

/// The stripes a reservation holds, by index.
struct Locked<'a> {
    guards: [Option<MutexGuard<'a, Stripe>>; STRIPES],
}

impl Locked<'_> {
    /// The stripe of `k`, if it is held.
    fn stripe(&mut self, k: Key) -> Option<&mut Stripe> {
        self.guards.get_mut(Stripes::index(k))?.as_deref_mut()
    }
}

fn put(m: &mut Stripe, k: Key, id: &str, state: LimitState) {
    match m.get_mut(&k) {
        Some(slot) => slot.state = state,
        None => {
            m.insert(k, Slot::new(id, state));
        }
    }
}

impl LocalCounters {
    /// Empty counters.
    pub fn new() -> Self {
        LocalCounters {
            balances: DashMap::new(),
            limits: Stripes::new(),
        }
    }

    /// The balance `id`, if it exists.
    pub fn balance(&self, id: &str) -> Option<Balance> {
        self.balances.get(id).map(|b| *b)
    }

    /// Creates, replaces (`Some`) or removes (`None`) the balance `id`.
    pub fn put_balance(&self, id: &str, balance: Option<Balance>) {
        match balance {
            Some(b) => {
                self.balances.insert(id.to_owned(), b);
            }
            None => {
                self.balances.remove(id);
            }
        }
    }

    /// Refills if due, then spends `cost` if enough remains. Atomic.
    pub fn spend(&self, id: &str, cost: u64, refill: Option<&Refill>, now: Timestamp) -> Spend {
        match self.balances.get_mut(id) {
            None => Spend {
                spent: false,
                balance: None,
            },
            Some(mut b) => {
                let (spent, after) = b.refilled(refill, now).spend(cost);
                *b = after;
                Spend {
                    spent,
                    balance: Some(after),
                }
            }
        }
    }

    /// Refills if due, then applies `op`. Atomic. `None` if the balance does not exist.
    pub fn adjust(
        &self,
        id: &str,
        op: BalanceOp,
        refill: Option<&Refill>,
        now: Timestamp,
    ) -> Option<Balance> {
        let mut b = self.balances.get_mut(id)?;
        let after = op.apply(b.refilled(refill, now));
        *b = after;
        Some(after)
    }

    /// Takes `cost` units from the window counter `id`. Atomic.
    pub fn take(&self, id: &str, spec: &WindowSpec, cost: u64, now: Timestamp) -> WindowTake {
        self.take_limit(id, &LimitSpec::Bucket(*spec), cost, now)
    }

    /// Takes `cost` units from the limit counter `id` ([`LimitSpec::take`]). Atomic.
    pub fn take_limit(&self, id: &str, spec: &LimitSpec, cost: u64, now: Timestamp) -> Decision {
        self.limits.with(id, |m, k| {
            let before = m.get(&k).map(|s| s.state);
            let (next, d) = spec.take(before, cost, now);
            put(m, k, id, next);
            d
        })
    }

    /// The key of a counter identified by `parts` (hashed as a whole, e.g.
    /// a tuple of strings) for [`Self::take_unsynced`] and
    /// [`Self::seed_limit`]. Keys of different parts collide with
    /// negligible probability (see the stripe's key).
    pub fn key_of<H: std::hash::Hash + ?Sized>(&self, parts: &H) -> CounterKey {
        CounterKey::new(self.limits.key_of(parts))
    }

    /// Like [`Self::take_limit`] on a counter held here, and remembers what
    /// was taken for the next [`Self::drain_unsynced`] (fast mode: decided
    /// here, synced later). `None` if the counter is not held: seed it
    /// ([`Self::seed_limit`]) from the store first.
    pub fn take_unsynced(
        &self,
        key: CounterKey,
        spec: &LimitSpec,
        cost: u64,
        now: Timestamp,
    ) -> Option<Decision> {
        self.limits.with_key(key.raw(), |m| {
            let slot = m.get_mut(&key.raw())?;
            let (next, d) = spec.take(Some(slot.state), cost, now);
            slot.state = next;
            slot.spec = Some(*spec);
            slot.touched = true;
            if d.allowed {
                slot.unsynced = slot.unsynced.saturating_add(cost);
            }
            Some(d)
        })
    }

    /// Installs `state` for the counter `key`, whose id in the store is
    /// `id`, unless it is already held (a concurrent first use seeded it
    /// first). Returns whether it was held.
    pub fn seed_limit(&self, key: CounterKey, id: &str, state: LimitState) -> bool {
        self.limits
            .with_key(key.raw(), |m| match m.entry(key.raw()) {
                std::collections::hash_map::Entry::Occupied(_) => true,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Slot::new(id, state));
                    false
                }
            })
    }

    /// Takes what every counter used through [`Self::take_unsynced`] took
    /// since the last drain (counters used but with nothing taken come with
    /// 0 units, to be refreshed). Counters not used since the last drain are
    /// dropped: the store holds all they know, and their next use seeds them
    /// again with what other nodes did meanwhile.
    pub fn drain_unsynced(&self) -> Vec<Unsynced> {
        let mut out = Vec::new();
        for i in 0..STRIPES {
            let mut m = self.limits.lock(i);
            m.retain(|k, slot| {
                let Some(spec) = slot.spec else {
                    return true;
                };
                if slot.touched {
                    out.push(Unsynced {
                        key: CounterKey::new(*k),
                        id: slot.id.to_string(),
                        spec,
                        units: slot.unsynced,
                    });
                    slot.unsynced = 0;
                    slot.touched = false;
                    true
                } else {
                    false
                }
            });
        }
        out
    }

    /// Puts `units` back as unsynced after a failed sync.
    pub fn restore_unsynced(&self, u: &Unsynced) {
        self.limits.with_key(u.key.raw(), |m| {
            if let Some(slot) = m.get_mut(&u.key.raw()) {
                slot.unsynced = slot.unsynced.saturating_add(u.units);
                slot.touched = true;
            }
        })
    }

    /// Replaces the state of the counter of `u` by the store's `synced`
    /// state plus what was taken here since the drain that produced `u`.
    pub fn merge_synced(&self, u: &Unsynced, synced: LimitState, now: Timestamp) {
        self.limits
            .with_key(u.key.raw(), |m| match m.get_mut(&u.key.raw()) {
                Some(slot) => {
                    slot.state = if slot.unsynced > 0 {
                        u.spec.settle(Some(synced), now, 0, slot.unsynced, now).0
                    } else {
                        synced
                    };
                }
                None => {
                    m.insert(u.key.raw(), Slot::new(&u.id, synced));
                }
            })
    }

    /// Takes every op or none ([`reserve_all`]). Atomic over all of them.
    pub fn reserve(&self, ops: &[LimitOp], now: Timestamp) -> Reserved {
        let mut decisions = vec![NO_DECISION; ops.len()];
        let admitted = self.reserve_ops(ops, now, &mut decisions);
        Reserved {
            admitted,
            decisions,
        }
    }

    /// [`Self::reserve`] over borrowed ids, without allocating (for up to
    /// 8 ops): writes one decision per op, in order, into `decisions` (as
    /// many as it holds) and returns whether every op was taken.
    pub fn reserve_refs(
        &self,
        ops: &[LimitOpRef<'_>],
        now: Timestamp,
        decisions: &mut [Decision],
    ) -> bool {
        self.reserve_ops(ops, now, decisions)
    }

    fn reserve_ops<O: OpView>(
        &self,
        ops: &[O],
        now: Timestamp,
        decisions: &mut [Decision],
    ) -> bool {
        if let [op] = ops {
            let d = self.take_limit(op.id(), op.spec(), op.cost(), now);
            if let Some(slot) = decisions.first_mut() {
                *slot = d;
            }
            return d.allowed;
        }
        if ops.len() <= INLINE_OPS {
            let mut keys = [0; INLINE_OPS];
            let mut states = [NO_STATE; INLINE_OPS];
            let n = ops.len();
            self.reserve_in(ops, now, decisions, &mut keys[..n], &mut states[..n])
        } else {
            let mut keys = vec![0; ops.len()];
            let mut states = vec![NO_STATE; ops.len()];
            self.reserve_in(ops, now, decisions, &mut keys, &mut states)
        }
    }

    /// The reservation of `ops` with `keys` and `states` (each as long as
    /// `ops`) as its buffers.
    fn reserve_in<O: OpView>(
        &self,
        ops: &[O],
        now: Timestamp,
        decisions: &mut [Decision],
        keys: &mut [Key],
        states: &mut [LimitState],
    ) -> bool {
        for (k, op) in keys.iter_mut().zip(ops) {
            *k = self.limits.key(op.id());
        }
        self.reserve_with(ops, now, decisions, keys, states)
    }

    /// [`Self::reserve_refs`] with each op's key given: `keys[i]` must be
    /// [`Self::key_of`] the id of `ops[i]` (hashed once by a caller that
    /// keeps it to settle with, [`Self::settle_keyed`]).
    pub fn reserve_keyed(
        &self,
        ops: &[LimitOpRef<'_>],
        keys: &[CounterKey],
        now: Timestamp,
        decisions: &mut [Decision],
    ) -> bool {
        let n = ops.len();
        if n > INLINE_OPS || keys.len() != n {
            return self.reserve_refs(ops, now, decisions);
        }
        let mut raw = [0; INLINE_OPS];
        for (r, k) in raw.iter_mut().zip(keys) {
            *r = k.raw();
        }
        let mut states = [NO_STATE; INLINE_OPS];
        self.reserve_with(ops, now, decisions, &raw[..n], &mut states[..n])
    }

    /// The reservation of `ops`, whose keys are `keys`, with `states` as
    /// its buffer (each as long as `ops`).
    fn reserve_with<O: OpView>(
        &self,
        ops: &[O],
        now: Timestamp,
        decisions: &mut [Decision],
        keys: &[Key],
        states: &mut [LimitState],
    ) -> bool {
        let mut locked = self.limits.lock_all(keys);
        let admitted = reserve_into(
            ops,
            now,
            |id| {
                let k = *keys.get(ops.iter().position(|o| o.id() == id)?)?;
                locked.stripe(k)?.get(&k).map(|s| s.state)
            },
            decisions,
            states,
        );
        if admitted {
            for ((op, state), &k) in ops.iter().zip(states.iter()).zip(keys.iter()) {
                if let Some(m) = locked.stripe(k) {
                    put(m, k, op.id(), *state);
                }
            }
        }
        admitted
    }

    /// Settles each op ([`LimitSpec::settle`]), each atomically; returns the
    /// state after each.
    pub fn settle(&self, ops: &[SettleOp], now: Timestamp) -> Vec<LimitState> {
        ops.iter()
            .map(|op| self.settle_limit(&op.id, &op.spec, op.taken_at, op.reserved, op.used, now))
            .collect()
    }

    /// Settles one op of a reservation ([`LimitSpec::settle`]) on counter
    /// `id`: `reserved` units taken at `taken_at` were actually `used`.
    /// Atomic; returns the state after it.
    pub fn settle_limit(
        &self,
        id: &str,
        spec: &LimitSpec,
        taken_at: Timestamp,
        reserved: u64,
        used: u64,
        now: Timestamp,
    ) -> LimitState {
        self.settle_keyed(self.key_of(id), id, spec, taken_at, reserved, used, now)
    }

    /// [`Self::settle_limit`] on the counter whose key is `key`, which must
    /// be [`Self::key_of`] `id` (kept from [`Self::reserve_keyed`]).
    #[allow(clippy::too_many_arguments, reason = "settle_limit's, and the key")]
    pub fn settle_keyed(
        &self,
        key: CounterKey,
        id: &str,
        spec: &LimitSpec,
        taken_at: Timestamp,
        reserved: u64,
        used: u64,
        now: Timestamp,
    ) -> LimitState {
        let k = key.raw();
        self.limits.with_key(k, |m| {
            let before = m.get(&k).map(|s| s.state);
            let (next, _) = spec.settle(before, taken_at, reserved, used, now);
            put(m, k, id, next);
            next
        })
    }

    /// The stored state of limit counter `id`.
    pub fn limit_state(&self, id: &str) -> Option<LimitState> {
        self.limits.with(id, |m, k| m.get(&k).map(|s| s.state))
    }

    /// Replaces (`Some`) or removes (`None`) the state of limit counter `id`.
    pub fn put_limit_state(&self, id: &str, state: Option<LimitState>) {
        self.limits.with(id, |m, k| match state {
            Some(s) => put(m, k, id, s),
            None => {
                m.remove(&k);
            }
        })
    }

    /// Removes the window counter `id` (the next take starts full).
    pub fn reset_window(&self, id: &str) {
        self.put_limit_state(id, None);
    }

    /// How many limit counters are held.
    pub fn limit_count(&self) -> usize {
        (0..STRIPES).map(|i| self.limits.lock(i).len()).sum()
    }
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
    fn daily_boundary_is_utc_midnight() {
        let r = Refill {
            interval: RefillInterval::Daily,
            amount: 5,
            day: None,
        };
        assert_eq!(
            r.last_boundary(ts("2025-03-10T13:45:00Z")),
            ts("2025-03-10T00:00:00Z")
        );
        assert_eq!(
            r.last_boundary(ts("2025-03-10T00:00:00Z")),
            ts("2025-03-10T00:00:00Z")
        );
    }

    #[test]
    fn monthly_boundary_clamps_to_short_months() {
        let r = Refill {
            interval: RefillInterval::Monthly,
            amount: 5,
            day: Some(31),
        };
        assert_eq!(
            r.last_boundary(ts("2025-03-10T13:45:00Z")),
            ts("2025-02-28T00:00:00Z")
        );
        assert_eq!(
            r.last_boundary(ts("2024-03-01T00:00:00Z")),
            ts("2024-02-29T00:00:00Z")
        );
        let first = Refill { day: None, ..r };
        assert_eq!(
            first.last_boundary(ts("2025-01-15T00:00:00Z")),
            ts("2025-01-01T00:00:00Z")
        );
        let fifteenth = Refill { day: Some(15), ..r };
        assert_eq!(
            fifteenth.last_boundary(ts("2025-01-14T23:59:59Z")),
            ts("2024-12-15T00:00:00Z")
        );
    }

    #[test]
    fn refill_validation_names_fields() {
        let bad = Refill {
            interval: RefillInterval::Monthly,
            amount: 0,
            day: None,
        };
        assert!(
            matches!(bad.validate(), Err(Error::InvalidInput { field, .. }) if field == "refill.amount")
        );
        let bad_day = Refill {
            interval: RefillInterval::Daily,
            amount: 1,
            day: Some(3),
        };
        assert!(bad_day.validate().is_err());
        assert!("weekly".parse::<RefillInterval>().is_err());
    }

    #[test]
    fn window_refills_in_steps_and_caps_at_limit() {
        let spec = WindowSpec {
            limit: 3,
            refill: 1,
            window_ms: 1_000,
        };
        let t = Timestamp::from_millis(10_500);
        let (s, a) = WindowState::take(None, &spec, 3, t);
        assert!(a.allowed);
        assert_eq!((a.remaining, a.reset), (0, Timestamp::from_millis(11_000)));
        let (s, b) = WindowState::take(Some(s), &spec, 1, t);
        assert!(!b.allowed);
        let (s, c) = WindowState::take(Some(s), &spec, 1, Timestamp::from_millis(11_000));
        assert!(c.allowed);
        assert_eq!(c.remaining, 0);
        let (_, d) = WindowState::take(Some(s), &spec, 0, Timestamp::from_millis(99_000));
        assert_eq!(d.remaining, 3);
    }

    #[test]
    fn balance_ops_saturate() {
        let b = Balance::new(5, Timestamp::EPOCH);
        assert_eq!(BalanceOp::Decrement(9).apply(b).remaining, 0);
        assert_eq!(BalanceOp::Increment(i64::MAX).apply(b).remaining, i64::MAX);
        assert_eq!(b.spend(6), (false, b));
        assert_eq!(b.spend(5).1.remaining, 0);
    }

    #[test]
    fn local_fast_counters_seed_drain_and_merge() {
        let c = LocalCounters::new();
        let spec = LimitSpec::Sliding(SlidingSpec {
            limit: 10,
            window_ms: 60_000,
        });
        let now = Timestamp::from_millis(120_000);
        let key = c.key_of(&("ns", 60_000u64, "alice"));
        assert_eq!(c.take_unsynced(key, &spec, 1, now), None, "not seeded");
        // Seeded with 2 units another node took.
        let (seed, _) = spec.take(None, 2, now);
        assert!(!c.seed_limit(key, "rl:alice", seed));
        assert!(
            c.seed_limit(key, "rl:alice", seed),
            "a second seed is ignored"
        );
        assert!(c.take_unsynced(key, &spec, 5, now).unwrap().allowed);
        assert!(!c.take_unsynced(key, &spec, 4, now).unwrap().allowed);
        let drained = c.drain_unsynced();
        assert_eq!(drained.len(), 1);
        assert_eq!((drained[0].id.as_str(), drained[0].units), ("rl:alice", 5));
        // Meanwhile 1 more here; the store says 9 (2 + our 5 + 2 elsewhere).
        assert!(c.take_unsynced(key, &spec, 1, now).unwrap().allowed);
        let (synced, _) = spec.take(None, 9, now);
        c.merge_synced(&drained[0], synced, now);
        let left = c.take_unsynced(key, &spec, 0, now).unwrap().remaining;
        assert_eq!(left, 0, "9 synced + 1 unsynced");
        // Used since the drain: kept; then idle for a whole drain: dropped.
        assert_eq!(c.drain_unsynced()[0].units, 1);
        assert!(c.drain_unsynced().is_empty());
        assert_eq!(c.limit_count(), 0);
    }

    #[test]
    fn keyed_reservations_are_the_counters_of_their_ids() {
        let (keyed, by_id) = (LocalCounters::new(), LocalCounters::new());
        let spec = LimitSpec::Sliding(SlidingSpec {
            limit: 10,
            window_ms: 60_000,
        });
        let now = Timestamp::from_millis(120_000);
        let ops =
            [("rpm\x1fa", 1), ("tpm\x1fa", 6)].map(|(id, cost)| LimitOpRef { id, spec, cost });
        let keys = ops.map(|op| keyed.key_of(op.id));
        for _ in 0..2 {
            let (mut a, mut b) = ([NO_DECISION; 2], [NO_DECISION; 2]);
            let took = keyed.reserve_keyed(&ops, &keys, now, &mut a);
            assert_eq!(took, by_id.reserve_refs(&ops, now, &mut b));
            assert_eq!(a, b);
        }
        for (op, key) in ops.iter().zip(keys) {
            assert_eq!(keyed.limit_state(op.id), by_id.limit_state(op.id));
            let settled = keyed.settle_keyed(key, op.id, &spec, now, op.cost, 0, now);
            assert_eq!(
                settled,
                by_id.settle_limit(op.id, &spec, now, op.cost, 0, now)
            );
            assert_eq!(
                Some(settled),
                keyed.limit_state(op.id),
                "settled where the id is"
            );
        }
        // Keys that do not match the ops: decided as by their ids.
        let (mut a, mut b) = ([NO_DECISION; 2], [NO_DECISION; 2]);
        assert_eq!(
            keyed.reserve_keyed(&ops, &keys[..1], now, &mut a),
            by_id.reserve_refs(&ops, now, &mut b)
        );
        assert_eq!(a, b);
    }
}
