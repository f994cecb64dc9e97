//! Namespace rate limits (Unkey's `ratelimits.limit`): at most `limit` units
//! per `duration` for one identifier of a namespace, on a sliding window.
//!
//! Two modes, chosen per request:
//! - **consistent** (the default): the decision is one atomic operation of
//!   the store ([`CounterStore::reserve`](crate::storage::CounterStore::reserve)),
//!   exact across every node sharing it.
//! - **fast** (`async: true` in Unkey's API): the decision is taken in
//!   process, on a counter seeded from the store the first time this node
//!   sees the identifier; what it admits is added to the store by
//!   [`RateLimiter::sync`] (every [`RateLimitConfig::sync_interval`] with
//!   [`RateLimiter::spawn_sync`]), which also brings in what other nodes
//!   admitted. Error bound: on one node the decisions are exact. With `n`
//!   nodes, a node does not see what the others admitted since their last
//!   sync, so one window can admit up to `limit` plus what the other nodes
//!   admitted in one sync interval (never more than `n × limit`). A crash
//!   loses at most one sync interval of this node's counts.
//!
//! Overrides ([`RateLimitOverride`]) replace the limit, duration and mode of
//! one identifier of a namespace; they are catalog records, read from an
//! in-memory snapshot refreshed every [`RateLimitConfig::override_ttl`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::audit::Actor;
use crate::catalog::{self, SnapshotCell};
use crate::clock::{Clock, SharedClock, SystemClock, Timestamp};
use crate::counter::{LimitOp, LimitSpec, LocalCounters, SettleOp, SlidingSpec};
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::validate;

/// The namespace of requests that name none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The record kind of [`RateLimitOverride`]s.
pub const OVERRIDE_KIND: &str = "ratelimit_override";
/// The shortest window, in milliseconds.
pub const MIN_DURATION_MS: i64 = 1000;
/// The longest identifier, in bytes.
pub const MAX_IDENTIFIER: usize = 256;
const MAX_NAMESPACE: usize = 128;

/// One rate-limit check (the body of Unkey's `ratelimits.limit`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LimitRequest {
    /// The namespace; default [`DEFAULT_NAMESPACE`].
    #[serde(default)]
    pub namespace: Option<String>,
    /// Who is limited: a user id, an email, an IP...
    pub identifier: String,
    /// Units per window; at least 1.
    pub limit: i64,
    /// The window in milliseconds; at least [`MIN_DURATION_MS`].
    pub duration: i64,
    /// Units this request takes; default 1, at least 1.
    #[serde(default)]
    pub cost: Option<i64>,
    /// Fast mode (Unkey's `async`): decided in process, synced later.
    #[serde(default, rename = "async")]
    pub fast: bool,
}

/// The decision (the response of Unkey's `ratelimits.limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LimitResponse {
    /// Whether the request may proceed; if not, nothing was taken.
    pub success: bool,
    /// The limit applied (an override's, if one matched).
    pub limit: u64,
    /// Units left in the window.
    pub remaining: u64,
    /// When the current window ends (unix ms).
    pub reset: Timestamp,
}

/// A limit for one identifier of a namespace, replacing what requests ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitOverride {
    /// `namespace:identifier`.
    pub id: String,
    /// The namespace.
    pub namespace: String,
    /// The identifier it applies to.
    pub identifier: String,
    /// Units per window; at least 1.
    pub limit: u64,
    /// The window in milliseconds; at least [`MIN_DURATION_MS`].
    pub duration: u64,
    /// Forces fast (`Some(true)`) or consistent mode; `None` keeps the request's.
    #[serde(default, rename = "async")]
    pub fast: Option<bool>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last changed.
    pub updated_at: Timestamp,
    /// Optimistic-concurrency version.
    pub version: u64,
}

impl crate::versioned::Versioned for RateLimitOverride {
    fn version(&self) -> u64 {
        self.version
    }
    fn set_version(&mut self, v: u64) {
        self.version = v;
    }
}

impl catalog::Entry for RateLimitOverride {
    const KIND: &'static str = OVERRIDE_KIND;
    fn id(&self) -> &str {
        &self.id
    }
    fn created_at(&self) -> Timestamp {
        self.created_at
    }
}

/// What an override sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideLimit {
    /// Units per window; at least 1.
    pub limit: i64,
    /// The window in milliseconds; at least [`MIN_DURATION_MS`].
    pub duration: i64,
    /// Forces a mode; `None` keeps the request's.
    #[serde(default, rename = "async")]
    pub fast: Option<bool>,
}

fn check_namespace(ns: &str) -> Result<()> {
    validate::label("namespace", ns, MAX_NAMESPACE)?;
    if ns.contains(':') {
        return Err(Error::invalid("namespace", "must not contain ':'"));
    }
    Ok(())
}

fn check_identifier(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid("identifier", "must not be empty"));
    }
    if id.len() > MAX_IDENTIFIER {
        return Err(Error::invalid(
            "identifier",
            format!("must be at most {MAX_IDENTIFIER} bytes"),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(Error::invalid(
            "identifier",
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn check_limit(limit: i64) -> Result<u64> {
    u64::try_from(limit)
        .ok()
        .filter(|l| *l >= 1)
        .ok_or_else(|| Error::invalid("limit", "must be greater than 0"))
}

fn check_duration(duration: i64) -> Result<u64> {
    if duration < MIN_DURATION_MS {
        return Err(Error::invalid(
            "duration",
            "must be at least 1000 (milliseconds)",
        ));
    }
    u64::try_from(duration).map_err(|_| Error::invalid("duration", "is out of range"))
}

fn check_cost(cost: Option<i64>) -> Result<u64> {
    match cost {
        None => Ok(1),
        Some(c) => u64::try_from(c)
            .ok()
            .filter(|c| *c >= 1)
            .ok_or_else(|| Error::invalid("cost", "must be at least 1")),
    }
}

/// Overrides by namespace, then identifier.
#[derive(Debug, Default)]
struct OverrideIndex {
    by_namespace: HashMap<String, HashMap<String, RateLimitOverride>>,
}

impl OverrideIndex {
    fn get(&self, ns: &str, identifier: &str) -> Option<&RateLimitOverride> {
        self.by_namespace.get(ns)?.get(identifier)
    }
}

/// Settings of a [`RateLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// How often [`RateLimiter::spawn_sync`] syncs fast-mode counters; the
    /// error bound of fast mode across nodes grows with it. Default 1 s.
    pub sync_interval: Duration,
    /// How long the snapshot of overrides is used before it is read again;
    /// other nodes' override changes apply within it. Default 30 s.
    pub override_ttl: Duration,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            sync_interval: Duration::from_secs(1),
            override_ttl: catalog::DEFAULT_SNAPSHOT_TTL,
        }
    }
}

/// Fast-mode counters: decided in process on counters seeded from the
/// store, with what they admit added to the store by [`Self::sync`] (which
/// also brings in other nodes' counts). Shared by namespace limits and the
/// keys' `fast` rate limits; see the module docs for the error bound.
#[derive(Debug, Default)]
pub(crate) struct SyncedCounters {
    local: LocalCounters,
}

impl SyncedCounters {
    /// Takes `cost` from the counter whose in-process key hashes `parts` and
    /// whose store id `id()` builds (called only on this node's first use).
    pub(crate) async fn take<H: std::hash::Hash + ?Sized>(
        &self,
        storage: &Storage,
        parts: &H,
        id: impl FnOnce() -> String,
        spec: &LimitSpec,
        cost: u64,
        now: Timestamp,
    ) -> Result<crate::counter::Decision> {
        let key = self.local.key_of(parts);
        if let Some(d) = self.local.take_unsynced(key, spec, cost, now) {
            return Ok(d);
        }
        // First use on this node: start from what the store knows.
        let id = id();
        let seeded = storage
            .counters
            .settle(
                &[SettleOp {
                    id: id.clone(),
                    spec: *spec,
                    taken_at: now,
                    reserved: 0,
                    used: 0,
                }],
                now,
            )
            .await?;
        let state = seeded
            .first()
            .copied()
            .ok_or_else(|| Error::internal("settle returned no state"))?;
        self.local.seed_limit(key, &id, state);
        self.local
            .take_unsynced(key, spec, cost, now)
            .ok_or_else(|| Error::internal("a seeded counter is not held"))
    }

    /// Adds what was admitted here since the last sync to the store and
    /// brings in what other nodes admitted. On a store error the unsynced
    /// units are kept for the next sync and the error returned.
    pub(crate) async fn sync(&self, storage: &Storage, now: Timestamp) -> Result<()> {
        let drained = self.local.drain_unsynced();
        for (i, u) in drained.iter().enumerate() {
            let op = SettleOp {
                id: u.id.clone(),
                spec: u.spec,
                taken_at: now,
                reserved: 0,
                used: u.units,
            };
            match storage.counters.settle(&[op], now).await {
                Ok(states) => {
                    if let Some(s) = states.first() {
                        self.local.merge_synced(u, *s, now);
                    }
                }
                Err(e) => {
                    for rest in &drained[i..] {
                        self.local.restore_unsynced(rest);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// How many counters are held in process.
    pub(crate) fn len(&self) -> usize {
        self.local.limit_count()
    }
}

/// Namespace rate limits. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    storage: Storage,
    clock: SharedClock,
    config: RateLimitConfig,
    fast: SyncedCounters,
    overrides: SnapshotCell<OverrideIndex>,
}

/// Stops a [`RateLimiter::spawn_sync`] task.
#[derive(Debug)]
pub struct SyncHandle {
    limiter: RateLimiter,
    task: JoinHandle<()>,
}

impl SyncHandle {
    /// Stops the task, then syncs once more so nothing admitted is lost.
    pub async fn shutdown(self) -> Result<()> {
        self.task.abort();
        let _ = self.task.await;
        self.limiter.sync().await
    }
}

impl RateLimiter {
    /// A limiter over `storage` with the system clock and default settings.
    pub fn new(storage: Storage) -> Self {
        Self::with_config(storage, RateLimitConfig::default(), Arc::new(SystemClock))
    }

    /// A limiter with `config` and `clock`.
    pub fn with_config(storage: Storage, config: RateLimitConfig, clock: Arc<dyn Clock>) -> Self {
        RateLimiter {
            inner: Arc::new(Inner {
                storage,
                clock,
                config,
                fast: SyncedCounters::default(),
                overrides: SnapshotCell::new(config.override_ttl),
            }),
        }
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    async fn load_overrides(&self) -> Result<OverrideIndex> {
        let all: Vec<RateLimitOverride> =
            catalog::list_entries(&*self.inner.storage.records).await?;
        let mut index = OverrideIndex::default();
        for o in all {
            index
                .by_namespace
                .entry(o.namespace.clone())
                .or_default()
                .insert(o.identifier.clone(), o);
        }
        Ok(index)
    }

    async fn overrides(&self, now: Timestamp) -> Result<Arc<OverrideIndex>> {
        match self.inner.overrides.fresh(now) {
            Some(o) => Ok(o),
            None => {
                self.inner
                    .overrides
                    .get(now, || self.load_overrides())
                    .await
            }
        }
    }

    /// Checks and, if allowed, takes `cost` units for `identifier`. A request
    /// that does not fit is refused and takes nothing. Invalid input (limit
    /// < 1, duration < 1000 ms, cost < 1, empty identifier...) is an
    /// [`Error::InvalidInput`] naming the field, and takes nothing.
    pub async fn limit(&self, req: &LimitRequest) -> Result<LimitResponse> {
        let ns = req.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        check_namespace(ns)?;
        check_identifier(&req.identifier)?;
        let mut limit = check_limit(req.limit)?;
        let mut duration = check_duration(req.duration)?;
        let cost = check_cost(req.cost)?;
        let mut fast = req.fast;
        let now = self.now();
        let overrides = self.overrides(now).await?;
        if let Some(o) = overrides.get(ns, &req.identifier) {
            limit = o.limit;
            duration = o.duration;
            fast = o.fast.unwrap_or(fast);
        }
        let spec = LimitSpec::Sliding(SlidingSpec {
            limit,
            window_ms: duration,
        });
        let d = if fast {
            let identifier = req.identifier.as_str();
            // Hashing the parts saves building the id on the hot path.
            self.inner
                .fast
                .take(
                    &self.inner.storage,
                    &(ns, duration, identifier),
                    || counter_id(ns, duration, identifier),
                    &spec,
                    cost,
                    now,
                )
                .await?
        } else {
            let op = LimitOp {
                id: counter_id(ns, duration, &req.identifier),
                spec,
                cost,
            };
            let r = self.inner.storage.counters.reserve(&[op], now).await?;
            r.decisions
                .first()
                .copied()
                .ok_or_else(|| Error::internal("reserve returned no decision"))?
        };
        Ok(LimitResponse {
            success: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            reset: d.reset,
        })
    }

    /// Adds what fast mode admitted on this node since the last sync to the
    /// store, and brings in what other nodes admitted. On a store error the
    /// unsynced units are kept for the next sync and the error returned.
    pub async fn sync(&self) -> Result<()> {
        self.inner.fast.sync(&self.inner.storage, self.now()).await
    }

    /// Runs [`Self::sync`] every [`RateLimitConfig::sync_interval`] on the
    /// current tokio runtime until the handle is shut down.
    pub fn spawn_sync(&self) -> SyncHandle {
        let limiter = self.clone();
        let every = self
            .inner
            .config
            .sync_interval
            .max(Duration::from_millis(1));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                // A failure keeps the counts for the next round.
                let _ = limiter.sync().await;
            }
        });
        SyncHandle {
            limiter: self.clone(),
            task,
        }
    }

    /// How many fast-mode counters this node holds.
    pub fn local_counters(&self) -> usize {
        self.inner.fast.len()
    }

    // ----- overrides --------------------------------------------------------

    /// Sets (creates or replaces) the override of `identifier` in `namespace`.
    pub async fn set_override(
        &self,
        actor: &Actor,
        namespace: &str,
        identifier: &str,
        set: OverrideLimit,
    ) -> Result<RateLimitOverride> {
        check_namespace(namespace)?;
        check_identifier(identifier)?;
        let limit = check_limit(set.limit)?;
        let duration = check_duration(set.duration)?;
        let now = self.now();
        let id = format!("{namespace}:{identifier}");
        let records = &*self.inner.storage.records;
        let out = match catalog::get_entry::<RateLimitOverride>(records, &id).await {
            Ok(_) => {
                catalog::update_entry(
                    records,
                    actor,
                    &id,
                    "ratelimit_override.update",
                    now,
                    |o: &mut RateLimitOverride| {
                        o.limit = limit;
                        o.duration = duration;
                        o.fast = set.fast;
                        o.updated_at = now;
                        Ok(())
                    },
                )
                .await?
            }
            Err(e) if e.is_not_found() => {
                let o = RateLimitOverride {
                    id,
                    namespace: namespace.to_owned(),
                    identifier: identifier.to_owned(),
                    limit,
                    duration,
                    fast: set.fast,
                    created_at: now,
                    updated_at: now,
                    version: 1,
                };
                catalog::create_entry(records, actor, &o, now).await?;
                o
            }
            Err(e) => return Err(e),
        };
        self.refresh().await;
        Ok(out)
    }

    /// The override of `identifier` in `namespace`, read from the store.
    pub async fn get_override(
        &self,
        namespace: &str,
        identifier: &str,
    ) -> Result<RateLimitOverride> {
        catalog::get_entry(
            &*self.inner.storage.records,
            &format!("{namespace}:{identifier}"),
        )
        .await
    }

    /// Every override of `namespace`, by identifier.
    pub async fn list_overrides(&self, namespace: &str) -> Result<Vec<RateLimitOverride>> {
        let all: Vec<RateLimitOverride> =
            catalog::list_entries(&*self.inner.storage.records).await?;
        let mut out: Vec<RateLimitOverride> = all
            .into_iter()
            .filter(|o| o.namespace == namespace)
            .collect();
        out.sort_by(|a, b| a.identifier.cmp(&b.identifier));
        Ok(out)
    }

    /// Removes the override of `identifier` in `namespace`.
    pub async fn delete_override(
        &self,
        actor: &Actor,
        namespace: &str,
        identifier: &str,
    ) -> Result<()> {
        let id = format!("{namespace}:{identifier}");
        catalog::delete_entry::<RateLimitOverride>(
            &*self.inner.storage.records,
            actor,
            &id,
            self.now(),
        )
        .await?;
        self.refresh().await;
        Ok(())
    }

    async fn refresh(&self) {
        self.inner
            .overrides
            .refresh(self.now(), || self.load_overrides())
            .await;
    }
}

/// The counter of `identifier` in `ns` for windows of `duration`: a new
/// duration starts a new counter (its windows do not line up with the old).
fn counter_id(ns: &str, duration: u64, identifier: &str) -> String {
    use std::fmt::Write as _;
    // Namespaces and identifiers hold no control characters: \x1f separates.
    let mut id = String::with_capacity(ns.len() + identifier.len() + 26);
    id.push_str("rl\x1f");
    id.push_str(ns);
    // Writing to a String cannot fail.
    let _ = write!(id, "\x1f{duration}\x1f");
    id.push_str(identifier);
    id
}
