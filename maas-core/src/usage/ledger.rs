//! [`UsageLedger`]: records in memory, writes behind, answers queries.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::{Notify, RwLock, oneshot};
use tokio::task::JoinHandle;

use super::report::{self, GroupBy, UsageScope, VerificationScope};
use super::{
    CacheRow, CostRow, Granularity, TenantSeries, TimeRange, UsageBucket, UsageFilter, UsageKey,
    UsageRecord, UsageReport, UsageRow, UsageSums, VerificationBucket, VerificationDay,
    VerificationFilter, VerificationKey, VerificationRecord, VerificationSums, check_part,
    minute_of,
};
use crate::clock::{Clock, SharedClock, SystemClock, Timestamp};
use crate::error::{Error, Result};
use crate::key::VerifyCode;
use crate::storage::{Storage, UsageStore};
use crate::usage::SeriesPoint;

/// How many buckets one store call adds at most.
const BATCH: usize = 512;

/// Settings of a [`UsageLedger`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageConfig {
    /// How often the task of [`UsageLedger::spawn_flusher`] writes pending
    /// usage to the store: the most usage a crash of this node can lose
    /// while the store is reachable. Default 50 ms (a flush with nothing
    /// pending costs nothing; a busy node writes a batch per tick).
    pub flush_interval: Duration,
    /// The longest range a query may cover; longer ones are invalid input
    /// naming `to`. Default 400 days.
    pub max_range: Duration,
    /// When this many distinct buckets are pending, the flusher task flushes
    /// at once instead of waiting for the interval; 0 never flushes early.
    /// Default 100,000.
    pub max_pending: usize,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            flush_interval: Duration::from_millis(50),
            max_range: Duration::from_secs(400 * 86_400),
            max_pending: 100_000,
        }
    }
}

/// The usage ledger: records requests and verifications in memory, writes
/// them behind to the [`UsageStore`], and answers usage, verification, cache
/// and cost queries (see the [module documentation](super)).
///
/// Cheap to clone (shared state). Recording takes no lock but one shard of a
/// concurrent map and does no I/O.
#[derive(Clone)]
pub struct UsageLedger {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn UsageStore>,
    clock: SharedClock,
    config: UsageConfig,
    max_range_ms: i64,
    usage: Buckets<UsageSums>,
    verifications: Buckets<VerificationSums>,
    /// Distinct buckets pending in both maps.
    pending: AtomicUsize,
    /// Wakes the flusher early (pending reached `max_pending`).
    wake: Notify,
    /// Flushes hold it exclusively, queries shared: a query never sees a
    /// bucket both pending and stored, nor neither.
    gate: RwLock<()>,
    status: Mutex<Flushed>,
}

#[derive(Debug, Clone, Default)]
struct Flushed {
    at: Option<Timestamp>,
    error: Option<Error>,
}

impl fmt::Debug for UsageLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageLedger")
            .field("store", &self.inner.store)
            .field("config", &self.inner.config)
            .field("pending", &self.inner.pending.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What a ledger holds and when it last wrote ([`UsageLedger::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerStatus {
    /// Usage buckets not yet written to the store.
    pub pending_usage: usize,
    /// Verification buckets not yet written to the store.
    pub pending_verifications: usize,
    /// When the last successful flush finished (ledger clock).
    pub last_flush: Option<Timestamp>,
    /// The error of the last flush, if it failed.
    pub last_error: Option<Error>,
}

// ----- pending buckets --------------------------------------------------------

/// The pending buckets of one kind, by slot. Hashed with foldhash, as the
/// gateway's other hot maps are ([`crate::FastMap`]: SipHash cost ~400
/// instructions of a recorded request): the parts of a slot are validated
/// names of tenants, keys and models, and the seed is random per process.
type Buckets<S> = DashMap<Slot, S, foldhash::fast::RandomState>;

/// A pending bucket's key: the minute and up to four parts (usage: tenant,
/// key, model, currency; verifications: keyspace, key, owner, "").
///
/// The map is looked up by a borrowed [`SlotRef`] through the [`View`] trait
/// object, so recording into an existing bucket allocates nothing.
#[derive(Debug)]
struct Slot {
    minute: i64,
    parts: [String; 4],
}

#[derive(Clone, Copy)]
struct SlotRef<'a> {
    minute: i64,
    parts: [&'a str; 4],
}

trait View {
    fn view(&self) -> SlotRef<'_>;
}

impl View for Slot {
    fn view(&self) -> SlotRef<'_> {
        let [a, b, c, d] = &self.parts;
        SlotRef {
            minute: self.minute,
            parts: [a, b, c, d],
        }
    }
}

impl View for SlotRef<'_> {
    fn view(&self) -> SlotRef<'_> {
        *self
    }
}

impl SlotRef<'_> {
    fn owned(self) -> Slot {
        Slot {
            minute: self.minute,
            parts: self.parts.map(str::to_owned),
        }
    }

    fn hash_into<H: Hasher>(self, state: &mut H) {
        self.minute.hash(state);
        for p in self.parts {
            p.hash(state);
        }
    }
}

impl Hash for dyn View + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.view().hash_into(state);
    }
}

impl SlotRef<'_> {
    fn same(self, other: SlotRef<'_>) -> bool {
        // Empty parts (no key, no currency, no owner, the padding) are
        // compared by length only: `memcmp` of zero bytes at a dangling
        // pointer costs a fault-suppression assist on some x86 CPUs (masked
        // AVX-512 loads), which doubled the time of a warm record.
        self.minute == other.minute
            && self
                .parts
                .iter()
                .zip(other.parts)
                .all(|(a, b)| a.len() == b.len() && (a.is_empty() || a.as_bytes() == b.as_bytes()))
    }
}

impl PartialEq for dyn View + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.view().same(other.view())
    }
}

impl Eq for dyn View + '_ {}

impl Hash for Slot {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.view().hash_into(state);
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.view().same(other.view())
    }
}

impl Eq for Slot {}

impl<'a> Borrow<dyn View + 'a> for Slot {
    fn borrow(&self) -> &(dyn View + 'a) {
        self
    }
}

impl Slot {
    fn usage_key(self) -> UsageKey {
        let [tenant, key_id, model, currency] = self.parts;
        UsageKey {
            minute: Timestamp::from_millis(self.minute),
            tenant,
            key_id,
            model,
            currency,
        }
    }

    fn from_usage_key(k: UsageKey) -> Self {
        Slot {
            minute: k.minute.as_millis(),
            parts: [k.tenant, k.key_id, k.model, k.currency],
        }
    }

    fn verification_key(self) -> VerificationKey {
        let [keyspace_id, key_id, owner_id, _] = self.parts;
        VerificationKey {
            minute: Timestamp::from_millis(self.minute),
            keyspace_id,
            key_id,
            owner_id,
        }
    }

    fn from_verification_key(k: VerificationKey) -> Self {
        Slot {
            minute: k.minute.as_millis(),
            parts: [k.keyspace_id, k.key_id, k.owner_id, String::new()],
        }
    }
}

/// Sums that add up.
trait Sums: Copy + Default {
    fn add_from(&mut self, other: &Self);
}

impl Sums for UsageSums {
    fn add_from(&mut self, other: &Self) {
        self.add(other);
    }
}

impl Sums for VerificationSums {
    fn add_from(&mut self, other: &Self) {
        self.add(other);
    }
}

/// Adds `sums` into the bucket `key` of `map`; whether it was created.
///
/// `check` validates the key's parts, and runs only when the bucket does
/// not exist yet: every bucket in the map passed it when it was created, so
/// a key equal to one of them needs no check (the hot path of a warm
/// bucket is one lookup).
fn add_into<S: Sums>(
    map: &Buckets<S>,
    key: SlotRef<'_>,
    sums: &S,
    check: impl FnOnce() -> Result<()>,
) -> Result<bool> {
    if let Some(mut e) = map.get_mut(&key as &dyn View) {
        e.add_from(sums);
        return Ok(false);
    }
    check()?;
    Ok(add_owned(map, key.owned(), sums))
}

fn add_owned<S: Sums>(map: &Buckets<S>, key: Slot, sums: &S) -> bool {
    match map.entry(key) {
        Entry::Occupied(mut o) => {
            o.get_mut().add_from(sums);
            false
        }
        Entry::Vacant(v) => {
            v.insert(*sums);
            true
        }
    }
}

/// Removes every bucket of `map`. A record racing with the drain lands
/// either in the drained set or in the map, never in both nor in neither.
fn drain<S: Sums>(map: &Buckets<S>) -> Vec<(Slot, S)> {
    let mut out = Vec::with_capacity(map.len());
    map.retain(|k, v| {
        out.push((
            Slot {
                minute: k.minute,
                parts: k.parts.clone(),
            },
            *v,
        ));
        false
    });
    out
}

/// Drained buckets on their way to the store. Whatever was not written when
/// it is dropped (a refused batch, or a flush future dropped half-way) goes
/// back into the ledger.
struct InFlight<'a> {
    ledger: &'a Inner,
    usage: Vec<UsageBucket>,
    verifications: Vec<VerificationBucket>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        for b in self.usage.drain(..) {
            if add_owned(&self.ledger.usage, Slot::from_usage_key(b.key), &b.sums) {
                self.ledger.pending.fetch_add(1, Ordering::Relaxed);
            }
        }
        for b in self.verifications.drain(..) {
            if add_owned(
                &self.ledger.verifications,
                Slot::from_verification_key(b.key),
                &b.sums,
            ) {
                self.ledger.pending.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

// ----- the ledger --------------------------------------------------------------

impl UsageLedger {
    /// A ledger writing to `storage.usage`, on the system clock.
    pub fn new(storage: &Storage, config: UsageConfig) -> Self {
        Self::new_with_clock(storage, config, Arc::new(SystemClock))
    }

    /// A ledger writing to `storage.usage`, on `clock`.
    pub fn new_with_clock(storage: &Storage, config: UsageConfig, clock: Arc<dyn Clock>) -> Self {
        Self::on_store(Arc::clone(&storage.usage), config, clock)
    }

    /// A ledger writing to `store`, on `clock`.
    pub fn on_store(
        store: Arc<dyn UsageStore>,
        config: UsageConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        UsageLedger {
            inner: Arc::new(Inner {
                store,
                clock,
                config,
                max_range_ms: i64::try_from(config.max_range.as_millis()).unwrap_or(i64::MAX),
                usage: Buckets::default(),
                verifications: Buckets::default(),
                pending: AtomicUsize::new(0),
                wake: Notify::new(),
                gate: RwLock::new(()),
                status: Mutex::new(Flushed::default()),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &UsageConfig {
        &self.inner.config
    }

    /// The current time on the ledger's clock (to stamp records with).
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// Records one completed request into its minute's bucket, in memory.
    ///
    /// Invalid input (nothing is recorded): `at` before the epoch; `tenant`
    /// or `model` empty; `tenant`, `key_id`, `model` or
    /// `pricing.currency` longer than [`MAX_PART`](super::MAX_PART) bytes
    /// or holding control characters.
    pub fn record(&self, r: &UsageRecord) -> Result<()> {
        self.record_parts(
            r.at,
            [
                &r.tenant,
                r.key_id.as_deref().unwrap_or_default(),
                &r.model,
                r.pricing.as_ref().map_or("", |p| p.currency.as_str()),
            ],
            &UsageSums::of(r),
        )
    }

    /// [`Self::record`] from borrowed parts: `sums` at `at` in the bucket
    /// of `[tenant, key_id, model, currency]` (the key id and currency ""
    /// when none). The gateway's path: no allocation when the bucket
    /// exists.
    pub(crate) fn record_parts(
        &self,
        at: Timestamp,
        parts: [&str; 4],
        sums: &UsageSums,
    ) -> Result<()> {
        let minute = minute_of(at)?;
        let [tenant, key_id, model, currency] = parts;
        let key = SlotRef { minute, parts };
        let created = add_into(&self.inner.usage, key, sums, || {
            check_part("tenant", tenant, true)?;
            check_part("model", model, true)?;
            check_part("key_id", key_id, false)?;
            check_part("pricing.currency", currency, false)
        })?;
        if created {
            self.created();
        }
        Ok(())
    }

    /// Records one verification outcome into its minute's bucket, in memory.
    ///
    /// Invalid input (nothing is recorded): `at` before the epoch;
    /// `keyspace_id` or `key_id` empty; a part longer than
    /// [`MAX_PART`](super::MAX_PART) bytes or holding control characters.
    pub fn record_verification(&self, r: &VerificationRecord) -> Result<()> {
        self.verification(
            r.at,
            &r.keyspace_id,
            &r.key_id,
            r.owner_id.as_deref(),
            r.code,
        )
    }

    /// [`Self::record_verification`] from borrowed parts (the key service's
    /// path: no allocation when the bucket exists).
    pub(crate) fn verification(
        &self,
        at: Timestamp,
        keyspace_id: &str,
        key_id: &str,
        owner_id: Option<&str>,
        code: VerifyCode,
    ) -> Result<()> {
        let minute = minute_of(at)?;
        let owner_id = owner_id.unwrap_or_default();
        let key = SlotRef {
            minute,
            parts: [keyspace_id, key_id, owner_id, ""],
        };
        let created = add_into(
            &self.inner.verifications,
            key,
            &VerificationSums::of(code),
            || {
                check_part("keyspace_id", keyspace_id, true)?;
                check_part("key_id", key_id, true)?;
                check_part("owner_id", owner_id, false)
            },
        )?;
        if created {
            self.created();
        }
        Ok(())
    }

    fn created(&self) {
        // Wrapping: a flush may drain a bucket (and count it off) between
        // its insertion and this count, so the count can dip below zero for
        // a moment.
        let n = self
            .inner
            .pending
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        if n == self.inner.config.max_pending {
            self.inner.wake.notify_one();
        }
    }

    /// Adds another node's report straight to the store (not through the
    /// pending buckets), once per source sequence: `Ok(false)` when it was
    /// added before. Checked first ([`UsageReport::check`]); invalid input
    /// adds nothing.
    pub async fn add_report(&self, report: &UsageReport) -> Result<bool> {
        report.check()?;
        self.inner.store.add_report(report).await
    }

    /// How much is pending and how the last flush went.
    pub fn status(&self) -> LedgerStatus {
        let flushed = self
            .inner
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        LedgerStatus {
            pending_usage: self.inner.usage.len(),
            pending_verifications: self.inner.verifications.len(),
            last_flush: flushed.at,
            last_error: flushed.error,
        }
    }

    /// Writes every pending bucket to the store, in batches of at most 512.
    ///
    /// On a store error the batches not written stay pending (they are
    /// retried by the next flush) and the error is returned. Dropping the
    /// returned future half-way also puts back what was not written. One
    /// flush runs at a time.
    pub async fn flush(&self) -> Result<()> {
        let inner = &*self.inner;
        let _exclusive = inner.gate.write().await;
        let usage = drain(&inner.usage);
        let verifications = drain(&inner.verifications);
        inner
            .pending
            .fetch_sub(usage.len() + verifications.len(), Ordering::Relaxed);
        let mut flight = InFlight {
            ledger: inner,
            usage: usage
                .into_iter()
                .map(|(k, sums)| UsageBucket {
                    key: k.usage_key(),
                    sums,
                })
                .collect(),
            verifications: verifications
                .into_iter()
                .map(|(k, sums)| VerificationBucket {
                    key: k.verification_key(),
                    sums,
                })
                .collect(),
        };
        // Sorted batches: a backend that locks per key takes them in order.
        flight.usage.sort_unstable_by(|a, b| b.key.cmp(&a.key));
        flight
            .verifications
            .sort_unstable_by(|a, b| b.key.cmp(&a.key));
        let result = self.write(&mut flight).await;
        let mut status = inner.status.lock().unwrap_or_else(PoisonError::into_inner);
        match &result {
            Ok(()) => {
                status.at = Some(inner.clock.now());
                status.error = None;
            }
            Err(e) => status.error = Some(e.clone()),
        }
        result
    }

    /// Writes `flight`'s buckets from the end, batch by batch, removing each
    /// batch once the store took it.
    async fn write(&self, flight: &mut InFlight<'_>) -> Result<()> {
        let store = &self.inner.store;
        while !flight.usage.is_empty() {
            let at = flight.usage.len().saturating_sub(BATCH);
            let mut batch = flight.usage[at..].to_vec();
            batch.reverse();
            store.add_usage(&batch).await?;
            flight.usage.truncate(at);
        }
        while !flight.verifications.is_empty() {
            let at = flight.verifications.len().saturating_sub(BATCH);
            let mut batch = flight.verifications[at..].to_vec();
            batch.reverse();
            store.add_verifications(&batch).await?;
            flight.verifications.truncate(at);
        }
        Ok(())
    }

    /// Starts a tokio task that flushes every
    /// [`UsageConfig::flush_interval`] (and at once when
    /// [`UsageConfig::max_pending`] buckets are pending). A failed flush is
    /// retried at the next tick; its error shows in [`Self::status`].
    ///
    /// [`FlusherHandle::shutdown`] stops it after a last flush. Dropping the
    /// handle stops it too (after a last flush, in the background). Must be
    /// called inside a tokio runtime.
    pub fn spawn_flusher(&self) -> FlusherHandle {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let ledger = self.clone();
        let period = self
            .inner
            .config
            .flush_interval
            .max(Duration::from_millis(1));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                    () = ledger.inner.wake.notified() => {}
                }
                // The error is kept in the status; the next tick retries.
                let _ = ledger.flush().await;
            }
            ledger.flush().await
        });
        FlusherHandle {
            stop: Some(stop),
            task: Some(task),
        }
    }

    // ----- queries -------------------------------------------------------------

    fn check(&self, range: &TimeRange) -> Result<()> {
        range.check(self.inner.max_range_ms)
    }

    /// The usage buckets `filter` selects: the store's with this node's
    /// pending ones added, sorted by key. The range is not checked against
    /// [`UsageConfig::max_range`].
    pub async fn usage_buckets(&self, filter: &UsageFilter) -> Result<Vec<UsageBucket>> {
        let mut merged: BTreeMap<UsageKey, UsageSums> = BTreeMap::new();
        self.each_usage(filter, |key, sums| {
            merged.entry(key).or_default().add(&sums);
        })
        .await?;
        Ok(merged
            .into_iter()
            .map(|(key, sums)| UsageBucket { key, sums })
            .collect())
    }

    /// The verification buckets `filter` selects: the store's with this
    /// node's pending ones added, sorted by key.
    pub async fn verification_buckets(
        &self,
        filter: &VerificationFilter,
    ) -> Result<Vec<VerificationBucket>> {
        let mut merged: BTreeMap<VerificationKey, VerificationSums> = BTreeMap::new();
        self.each_verification(filter, |key, sums| {
            merged.entry(key).or_default().add(&sums);
        })
        .await?;
        Ok(merged
            .into_iter()
            .map(|(key, sums)| VerificationBucket { key, sums })
            .collect())
    }

    /// Calls `f` with every stored and pending usage bucket `filter`
    /// selects (a key may come twice: stored and pending).
    async fn each_usage(
        &self,
        filter: &UsageFilter,
        mut f: impl FnMut(UsageKey, UsageSums),
    ) -> Result<()> {
        let _shared = self.inner.gate.read().await;
        for b in self.inner.store.usage_buckets(filter).await? {
            f(b.key, b.sums);
        }
        for e in self.inner.usage.iter() {
            let s = e.key().view();
            let [tenant, key_id, model, _] = s.parts;
            let m = Timestamp::from_millis(s.minute);
            if filter.from <= m
                && m < filter.to
                && filter.tenant.as_deref().is_none_or(|t| t == tenant)
                && filter.key_id.as_deref().is_none_or(|t| t == key_id)
                && filter.model.as_deref().is_none_or(|t| t == model)
            {
                f(
                    Slot {
                        minute: s.minute,
                        parts: e.key().parts.clone(),
                    }
                    .usage_key(),
                    *e.value(),
                );
            }
        }
        Ok(())
    }

    async fn each_verification(
        &self,
        filter: &VerificationFilter,
        mut f: impl FnMut(VerificationKey, VerificationSums),
    ) -> Result<()> {
        let _shared = self.inner.gate.read().await;
        for b in self.inner.store.verification_buckets(filter).await? {
            f(b.key, b.sums);
        }
        for e in self.inner.verifications.iter() {
            let s = e.key().view();
            let [keyspace_id, key_id, owner_id, _] = s.parts;
            let m = Timestamp::from_millis(s.minute);
            if filter.from <= m
                && m < filter.to
                && filter
                    .keyspace_id
                    .as_deref()
                    .is_none_or(|t| t == keyspace_id)
                && filter.key_id.as_deref().is_none_or(|t| t == key_id)
                && filter.owner_id.as_deref().is_none_or(|t| t == owner_id)
            {
                f(
                    Slot {
                        minute: s.minute,
                        parts: e.key().parts.clone(),
                    }
                    .verification_key(),
                    *e.value(),
                );
            }
        }
        Ok(())
    }

    fn usage_filter(range: &TimeRange, scope: &UsageScope) -> UsageFilter {
        UsageFilter {
            from: range.from,
            to: range.to,
            tenant: scope.tenant.clone(),
            key_id: scope.key_id.clone(),
            model: scope.model.clone(),
        }
    }

    /// Totals over `range` per tenant, key or model (`group_by`), of the
    /// usage `scope` selects, sorted by group. Requests without a key group
    /// under key `""`.
    pub async fn totals(
        &self,
        range: TimeRange,
        group_by: GroupBy,
        scope: &UsageScope,
    ) -> Result<Vec<UsageRow>> {
        self.check(&range)?;
        let mut acc = report::Grouped::default();
        self.each_usage(&Self::usage_filter(&range, scope), |k, s| {
            acc.add(group_by.of(&k).to_owned(), &k.currency, &s);
        })
        .await?;
        Ok(acc.rows())
    }

    /// A time series over `range`: one point per UTC minute, hour or day
    /// that has usage (of `tenant`, or of every tenant), in time order.
    pub async fn series(
        &self,
        range: TimeRange,
        granularity: Granularity,
        tenant: Option<&str>,
    ) -> Result<Vec<SeriesPoint>> {
        self.check(&range)?;
        let scope = UsageScope {
            tenant: tenant.map(str::to_owned),
            ..UsageScope::default()
        };
        let mut acc = report::Series::default();
        self.each_usage(&Self::usage_filter(&range, &scope), |k, s| {
            acc.add(granularity.floor(k.minute), &k.currency, &s);
        })
        .await?;
        Ok(acc.points())
    }

    /// [`Self::series`] of each tenant with usage in `range`, by tenant.
    pub async fn series_by_tenant(
        &self,
        range: TimeRange,
        granularity: Granularity,
    ) -> Result<Vec<TenantSeries>> {
        self.check(&range)?;
        let mut acc: BTreeMap<String, report::Series> = BTreeMap::new();
        self.each_usage(&UsageFilter::range(range.from, range.to), |k, s| {
            acc.entry(k.tenant)
                .or_default()
                .add(granularity.floor(k.minute), &k.currency, &s);
        })
        .await?;
        Ok(acc
            .into_iter()
            .map(|(tenant, s)| TenantSeries {
                tenant,
                points: s.points(),
            })
            .collect())
    }

    /// Verification outcomes per UTC day over `range` of the keys `scope`
    /// selects (seed 004 `keys.getVerifications`), days with verifications
    /// only, in time order.
    pub async fn verifications(
        &self,
        range: TimeRange,
        scope: &VerificationScope,
    ) -> Result<Vec<VerificationDay>> {
        self.check(&range)?;
        let filter = VerificationFilter {
            from: range.from,
            to: range.to,
            keyspace_id: scope.keyspace_id.clone(),
            key_id: scope.key_id.clone(),
            owner_id: scope.owner_id.clone(),
        };
        let mut days: BTreeMap<Timestamp, VerificationSums> = BTreeMap::new();
        self.each_verification(&filter, |k, s| {
            days.entry(Granularity::Day.floor(k.minute))
                .or_default()
                .add(&s);
        })
        .await?;
        Ok(days
            .into_iter()
            .map(|(time, s)| VerificationDay {
                time,
                success: s.success,
                rate_limited: s.rate_limited,
                usage_exceeded: s.usage_exceeded,
                other: s.other,
            })
            .collect())
    }

    /// Response-cache hits and misses per model over `range`, models with a
    /// cache lookup only, by model.
    pub async fn cache(&self, range: TimeRange) -> Result<Vec<CacheRow>> {
        self.check(&range)?;
        let mut models: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        self.each_usage(&UsageFilter::range(range.from, range.to), |k, s| {
            if s.cache_hits > 0 || s.cache_misses > 0 {
                let e = models.entry(k.model).or_default();
                e.0 = e.0.saturating_add(s.cache_hits);
                e.1 = e.1.saturating_add(s.cache_misses);
            }
        })
        .await?;
        Ok(models
            .into_iter()
            .map(|(model, (hits, misses))| CacheRow {
                model,
                hits,
                misses,
            })
            .collect())
    }

    /// Costs over `range` per tenant, key or model (`group_by`) and
    /// currency, by group then currency; unpriced usage is left out. Each
    /// request counts at the price it was recorded with.
    pub async fn costs(&self, range: TimeRange, group_by: GroupBy) -> Result<Vec<CostRow>> {
        self.check(&range)?;
        let mut acc: BTreeMap<(String, String), UsageSums> = BTreeMap::new();
        self.each_usage(&UsageFilter::range(range.from, range.to), |k, s| {
            if !k.currency.is_empty() {
                let g = group_by.of(&k).to_owned();
                acc.entry((g, k.currency)).or_default().add(&s);
            }
        })
        .await?;
        Ok(acc
            .into_iter()
            .map(|((group, currency), s)| CostRow::new(group, currency, &s))
            .collect())
    }
}

/// The flusher task of [`UsageLedger::spawn_flusher`].
#[derive(Debug)]
pub struct FlusherHandle {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<()>>>,
}

impl FlusherHandle {
    /// Stops the task and waits for its last flush; returns that flush's
    /// result (what it could not write stays pending in the ledger).
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|e| Error::internal(format!("the usage flusher failed: {e}")))?,
            None => Ok(()),
        }
    }
}
