//! Fair-share admission: a two-level weighted Virtual Token Counter (VTC).
//!
//! [`FairShare`] hands out slots: a request runs while it holds one. Tenants
//! have weights and belong to groups, which have weights too. A request asks
//! for a slot with [`FairShare::acquire`] (or [`FairShare::try_acquire`],
//! which never waits): it gets a [`Permit`] at once when a slot of its pool is
//! free and nothing of that pool waits, or waits in its tenant's FIFO queue
//! of that pool.
//!
//! ## Pools
//!
//! Slots belong to pools, one per model (the deployment that serves it):
//! a request names its pool with [`Request::in_pool`], and one without a
//! pool goes to the *default pool*. Pools are created on first use and are
//! independent for slots: a request holding a slot of one pool never keeps a
//! request of another pool waiting, and a slot freed in a pool goes to the
//! next request of that pool (work conservation per pool: a free slot never
//! idles while a request of its pool waits).
//!
//! A pool's capacity:
//!
//! - the default pool has the global `max_in_flight`
//!   ([`FairShareConfig::max_in_flight`], changed live with
//!   [`FairShare::set_max_in_flight`]);
//! - a named pool with capacity `Some(n)` has `n` slots;
//! - a named pool with capacity `None` has the global `max_in_flight` as its
//!   own capacity (each such pool has that many, they do not share them).
//!
//! Each pooled request carries its pool's capacity ([`PoolRef::capacity`]); when
//! it differs from the pool's current one the pool takes it, as does
//! [`FairShare::set_pool_capacity`]. Growing a capacity admits waiting
//! requests of the pool at once; shrinking lets running requests finish and
//! admits no more until fewer run than the new capacity; 0 pauses the pool.
//! [`FairShare::set_max_in_flight`] changes the default pool and every pool
//! with capacity `None`, never a pool with `Some(n)`.
//!
//! ## Selection (VTC, Sheng et al., OSDI 2024, extended to two levels)
//!
//! Every tenant and every group has a counter of weighted service, **shared
//! by all pools**: a tenant's service is what it received in any pool. When
//! a slot of a pool frees, the scheduler takes the group with the lowest
//! counter among groups that have waiting requests in that pool, inside it
//! the tenant with the lowest counter among its tenants waiting in that
//! pool, and admits that tenant's oldest request in that pool (ties:
//! whichever became backlogged in that pool first). Both counters are
//! charged, each divided by its own weight: `w_in · input` tokens at
//! admission and `w_out` per output token as the permit reports them
//! ([`Permit::record_output`], for streaming) or at completion
//! ([`Permit::finish`]). When a tenant (group) becomes backlogged in a pool
//! its counter is lifted to the lowest counter among the tenants of its
//! group (the groups) backlogged in that pool, or, when none is, to the
//! counter of the last one that left that pool's backlog: idle time is not
//! banked. A tenant (group) backlogged in several pools at once is ordered
//! in each by its one counter, so a charge or a lift repositions it in all
//! of them.
//!
//! With [`OutputCharging::Predicted`] the estimated output is charged at
//! admission and reconciled against what was reported when the permit is
//! released (the paper's VTC with length prediction).
//!
//! Every decision costs O(log n) in the number of backlogged tenants and
//! groups (ordered sets keyed by `(counter, sequence)`), plus the number of
//! pools the charged tenant and group are backlogged in; nothing scans.
//! Per-tenant state of a pool (its queue there) exists only while the tenant
//! waits in it.
//!
//! ## Cancellation, timeouts, limits
//!
//! Waiting is cancellation-safe: dropping the future of
//! [`FairShare::acquire`] (or a [`Waiting`]) removes the request from its
//! queue, and if a slot had been granted to it in the meantime the slot is
//! handed on within its pool and the charge refunded. Dropping a [`Permit`]
//! releases its slot and charges what it reported: a guard that acts on drop.
//!
//! A tenant holds at most [`FairShareConfig::max_queue_per_tenant`] waiting
//! requests (over all pools); a request beyond it is rejected at once. With
//! [`FairShareConfig::queue_timeout`] set, [`FairShare::acquire`] gives up
//! after that long, measured with tokio's timer (`tokio::time::timeout`), so
//! tests drive it with `tokio::time::pause()` and `advance` and never sleep;
//! it must then run inside a tokio runtime with the time driver enabled.
//! Callers that want another deadline await [`FairShare::try_acquire`]'s
//! [`Waiting`] under their own timeout. Both rejections are a [`Rejected`]
//! with a reason and a retry hint (from the request's pool: its queue per
//! slot), convertible into [`Error::Unavailable`] (transient).
//!
//! The scheduler is in memory and independent of storage: weights come in
//! through [`FairShare::set_tenant`] and [`FairShare::set_group_weight`].
//! Unknown tenants are admitted with [`DEFAULT_WEIGHT`] in
//! [`DEFAULT_GROUP`]. Its one lock is a std mutex that is never held across
//! an await.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! use maas_core::fairshare::{FairShare, FairShareConfig, Request};
//!
//! let fair = FairShare::new(FairShareConfig { max_in_flight: 1, ..Default::default() })?;
//! fair.set_group_weight("research", 300)?;
//! fair.set_tenant("acme", 200, "research")?;
//! let mut permit = fair.acquire(Request::new("acme", 812, 256)).await?;
//! permit.record_output(1); // per streamed token, or permit.finish(total)
//! let live = fair.snapshot();
//! assert_eq!((live.in_flight, live.queued, live.max_in_flight), (1, 0, 1));
//! drop(permit); // releases the slot (also on disconnect)
//! fair.set_max_in_flight(16); // live
//! assert_eq!(fair.snapshot().in_flight, 0);
//! # Ok::<(), maas_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! Pools, one per model:
//!
//! ```
//! use maas_core::fairshare::{Admission, FairShare, FairShareConfig, PoolCounts, Request};
//!
//! let fair = FairShare::new(FairShareConfig { max_in_flight: 8, ..Default::default() })?;
//! // A model served with 1 slot, and one that follows max_in_flight.
//! let small = |t: &str| Request::new(t, 100, 50).in_pool("small-llm", Some(1));
//! let big = |t: &str| Request::new(t, 100, 50).in_pool("big-llm", None);
//! let Ok(Admission::Admitted(held)) = fair.try_acquire(small("acme")) else { panic!() };
//! // small-llm is full: the next request of it waits...
//! let Ok(Admission::Queued(waiting)) = fair.try_acquire(small("globex")) else { panic!() };
//! // ...while big-llm admits at once.
//! let Ok(Admission::Admitted(_other)) = fair.try_acquire(big("globex")) else { panic!() };
//! let counts = fair.pool_counts("small-llm");
//! assert_eq!(counts, Some(PoolCounts { max_in_flight: 1, in_flight: 1, queued: 1 }));
//! assert_eq!(fair.counts(), (2, 1)); // totals over the pools
//! fair.set_max_in_flight(16); // big-llm follows; small-llm keeps 1 slot
//! assert_eq!(fair.pool_counts("big-llm").map(|c| c.max_in_flight), Some(16));
//! drop(held); // the slot goes to the request waiting in small-llm
//! drop(waiting); // granted but not taken: handed on within small-llm
//! let live = fair.snapshot();
//! let models: Vec<&str> = live.models.iter().map(|m| m.model.as_str()).collect();
//! assert_eq!(models, ["big-llm", "small-llm"]); // named pools only, by name
//! # Ok::<(), maas_core::Error>(())
//! ```

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{SharedClock, SystemClock, Timestamp};
use crate::error::{Error, Result};
use crate::tenant::{DEFAULT_GROUP, DEFAULT_WEIGHT, MAX_WEIGHT};

/// How output tokens are charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputCharging {
    /// Charge output tokens as they are reported (plain VTC).
    #[default]
    Reported,
    /// Charge the request's estimated output at admission; on release,
    /// reconcile with what was reported (VTC with length prediction).
    Predicted,
}

/// Settings of a [`FairShare`] scheduler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FairShareConfig {
    /// Requests that may run at once in the default pool, and in each pool
    /// without a capacity of its own (changeable live).
    pub max_in_flight: usize,
    /// Service charged per input token (`w_in`), default 1.
    pub input_weight: f64,
    /// Service charged per output token (`w_out`), default 2.
    pub output_weight: f64,
    /// Requests a tenant may have waiting (over all pools); one more is
    /// rejected. Default 1,000.
    pub max_queue_per_tenant: usize,
    /// How long [`FairShare::acquire`] waits before rejecting; `None` waits
    /// until cancelled. Default 60 s.
    pub queue_timeout: Option<Duration>,
    /// How output is charged.
    pub output_charging: OutputCharging,
}

impl Default for FairShareConfig {
    fn default() -> Self {
        FairShareConfig {
            max_in_flight: 64,
            input_weight: 1.0,
            output_weight: 2.0,
            max_queue_per_tenant: 1_000,
            queue_timeout: Some(Duration::from_secs(60)),
            output_charging: OutputCharging::Reported,
        }
    }
}

impl FairShareConfig {
    fn validate(&self) -> Result<()> {
        for (field, w) in [
            ("input_weight", self.input_weight),
            ("output_weight", self.output_weight),
        ] {
            if !w.is_finite() || w < 0.0 {
                return Err(Error::invalid(field, "must be a finite number >= 0"));
            }
        }
        Ok(())
    }
}

/// What a request asks admission with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The tenant's name.
    pub tenant: String,
    /// Input (prompt) tokens, charged at admission.
    pub input_tokens: u64,
    /// Estimated output tokens; charged at admission only with
    /// [`OutputCharging::Predicted`].
    pub estimated_output_tokens: u64,
    /// The pool (model) whose slots it runs in; `None`: the default pool.
    pub pool: Option<PoolRef>,
}

impl Request {
    /// A request of `tenant` with `input_tokens` and an output estimate, in
    /// the default pool.
    pub fn new(tenant: impl Into<String>, input_tokens: u64, estimated_output_tokens: u64) -> Self {
        Request {
            tenant: tenant.into(),
            input_tokens,
            estimated_output_tokens,
            pool: None,
        }
    }

    /// The same request in pool `name` (a model), whose capacity is
    /// `capacity`: `Some(n)` slots, or `None` to follow the global
    /// `max_in_flight`. The pool is created on first use and takes this
    /// capacity when it differs from its current one.
    pub fn in_pool(mut self, name: impl Into<Arc<str>>, capacity: Option<usize>) -> Self {
        self.pool = Some(PoolRef {
            name: name.into(),
            capacity,
        });
        self
    }
}

/// A pool of slots (one model) named by a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRef {
    /// The pool's name (the model).
    pub name: Arc<str>,
    /// Its capacity: `Some(n)` slots, or `None` to follow the global
    /// `max_in_flight` (as the pool's own number of slots).
    pub capacity: Option<usize>,
}

/// The load of one pool ([`FairShare::pool_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolCounts {
    /// Its capacity now (slots).
    pub max_in_flight: usize,
    /// Its requests holding a slot (may exceed `max_in_flight` right after
    /// the capacity shrank).
    pub in_flight: usize,
    /// Its requests waiting.
    pub queued: usize,
}

/// Why a request was refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The tenant already had [`FairShareConfig::max_queue_per_tenant`]
    /// requests waiting.
    QueueFull,
    /// The request waited [`FairShareConfig::queue_timeout`] without a slot.
    QueueTimeout,
}

/// A refusal: which tenant, why, and when a retry may succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct Rejected {
    /// The tenant whose request was refused.
    pub tenant: String,
    /// Why.
    pub reason: RejectReason,
    /// The limit that refused it: the queue length, or the timeout in ms.
    pub limit: u64,
    /// A hint: retrying after this long may succeed (derived from how long
    /// permits are held and how many requests wait per slot; 100 ms to 60 s).
    pub retry_after: Duration,
}

impl Rejected {
    fn describe(&self) -> String {
        let what = match self.reason {
            RejectReason::QueueFull => format!(
                "fair-share queue of tenant '{}' is full ({} waiting)",
                self.tenant, self.limit
            ),
            RejectReason::QueueTimeout => format!(
                "no fair-share slot for tenant '{}' within {} ms",
                self.tenant, self.limit
            ),
        };
        format!("{what}; retry after {} ms", self.retry_after.as_millis())
    }
}

impl From<Rejected> for Error {
    /// [`Error::Unavailable`], transient, whose message names the reason and
    /// the retry hint.
    fn from(r: Rejected) -> Self {
        Error::unavailable(r.describe(), true)
    }
}

/// A live view of the scheduler (seed 003 `/fairshare/live`; its totals are
/// `/stats` and `/capacity`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Snapshot {
    /// The global `max_in_flight`: the default pool's slots, and those of
    /// every pool that follows it.
    pub max_in_flight: usize,
    /// Requests holding a slot, in all pools (a pool's may exceed its
    /// capacity right after it shrank).
    pub in_flight: usize,
    /// Requests waiting, in all pools.
    pub queued: usize,
    /// Per group, by name.
    pub groups: Vec<GroupSnapshot>,
    /// Per named pool (model), by name; the default pool is not listed (its
    /// load is the totals less the pools').
    pub models: Vec<PoolSnapshot>,
}

/// A named pool (one model's slots) in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolSnapshot {
    /// The pool's name (the model).
    pub model: String,
    /// Its capacity now (slots).
    pub max_in_flight: usize,
    /// Its requests holding a slot (may exceed `max_in_flight` right after it shrank).
    pub in_flight: usize,
    /// Its requests waiting.
    pub queued: usize,
}

/// A group in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupSnapshot {
    /// Name.
    pub name: String,
    /// Weight.
    pub weight: u32,
    /// Requests of its tenants holding a slot (all pools).
    pub in_flight: usize,
    /// Requests of its tenants waiting (all pools).
    pub queued: usize,
    /// Virtual token counter (weighted service / weight, with lifts).
    pub counter: f64,
    /// Input plus output tokens served to its tenants.
    pub tokens_served: u64,
    /// Per tenant, by name.
    pub tenants: Vec<TenantSnapshot>,
}

/// A tenant in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantSnapshot {
    /// Name.
    pub name: String,
    /// Weight within its group.
    pub weight: u32,
    /// Requests holding a slot (all pools).
    pub in_flight: usize,
    /// Requests waiting (all pools).
    pub queued: usize,
    /// Virtual token counter (weighted service / weight, with lifts).
    pub counter: f64,
    /// Input plus output tokens served.
    pub tokens_served: u64,
    /// Input tokens admitted.
    pub input_tokens: u64,
    /// Output tokens reported.
    pub output_tokens: u64,
}

/// A counter as an ordered key (counters are finite, never NaN).
#[derive(Debug, Clone, Copy)]
struct Key(f64);

impl PartialEq for Key {
    fn eq(&self, o: &Self) -> bool {
        self.0.total_cmp(&o.0).is_eq()
    }
}
impl Eq for Key {}
impl PartialOrd for Key {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Key {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

type Entry = (Key, u64, usize);

/// The default pool: requests without a pool.
const DEFAULT_POOL: usize = 0;

/// A tenant's waiting requests in one pool; it exists only while there are
/// some (the tenant is then backlogged in that pool).
#[derive(Debug)]
struct TenantPool {
    pool: usize,
    /// Sequence of the tenant's entry in its group's backlog of this pool.
    seq: u64,
    /// Waiting request ids, oldest first.
    queue: BTreeSet<u64>,
}

#[derive(Debug)]
struct TenantState {
    name: Arc<str>,
    weight: u32,
    group: usize,
    /// Shared by all pools.
    counter: f64,
    /// The pools where it waits (few: bounded by the pools).
    pools: Vec<TenantPool>,
    /// Waiting requests, all pools.
    queued: usize,
    /// Running requests, all pools.
    in_flight: usize,
    served_in: u64,
    served_out: u64,
}

#[derive(Debug)]
struct GroupState {
    name: Arc<str>,
    weight: u32,
    /// Shared by all pools.
    counter: f64,
    /// The pools where some of its tenants wait, with the sequence of the
    /// group's entry in that pool's backlog.
    pools: Vec<(usize, u64)>,
    in_flight: usize,
    queued: usize,
}

/// A group's tenants in one pool.
#[derive(Debug, Default)]
struct GroupPool {
    /// Its tenants backlogged in the pool, by `(counter, sequence)`.
    backlogged: BTreeSet<Entry>,
    /// The counter of the last of its tenants that left this backlog.
    last_departed: f64,
}

/// One pool of slots.
#[derive(Debug)]
struct PoolState {
    /// `None`: the default pool.
    name: Option<Arc<str>>,
    /// `None`: follows the global `max_in_flight`.
    capacity: Option<usize>,
    in_flight: usize,
    queued: usize,
    /// Groups with waiting requests in this pool, by `(counter, sequence)`.
    backlogged: BTreeSet<Entry>,
    last_group_departed: f64,
    /// Per group that ever waited here (bounded by groups × pools).
    groups: HashMap<usize, GroupPool>,
}

impl PoolState {
    fn new(name: Option<Arc<str>>, capacity: Option<usize>) -> Self {
        PoolState {
            name,
            capacity,
            in_flight: 0,
            queued: 0,
            backlogged: BTreeSet::new(),
            last_group_departed: 0.0,
            groups: HashMap::new(),
        }
    }
}

#[derive(Debug)]
enum WaiterState {
    Waiting(Option<Waker>),
    Granted(Grant),
}

#[derive(Debug, Clone, Copy)]
struct Grant {
    admitted_at: Timestamp,
}

#[derive(Debug)]
struct Waiter {
    tenant: usize,
    pool: usize,
    input: u64,
    estimate: u64,
    state: WaiterState,
}

#[derive(Debug)]
struct State {
    cfg: FairShareConfig,
    /// Totals over all pools.
    in_flight: usize,
    queued: usize,
    tenants: Vec<TenantState>,
    tenant_index: crate::FastMap<Arc<str>, usize>,
    groups: Vec<GroupState>,
    group_index: crate::FastMap<Arc<str>, usize>,
    /// [`DEFAULT_POOL`] first, then the named pools in order of creation.
    pools: Vec<PoolState>,
    pool_index: crate::FastMap<Arc<str>, usize>,
    waiters: HashMap<u64, Waiter>,
    next_seq: u64,
    mean_hold_ms: Option<f64>,
}

fn check_weight(field: &'static str, weight: u32) -> Result<()> {
    if weight == 0 || weight > MAX_WEIGHT {
        return Err(Error::invalid(field, "must be between 1 and 1000000"));
    }
    Ok(())
}

fn check_name(field: &'static str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 128 {
        return Err(Error::invalid(field, "must be 1 to 128 bytes"));
    }
    Ok(())
}

impl State {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn group_idx(&mut self, name: &str) -> usize {
        if let Some(&g) = self.group_index.get(name) {
            return g;
        }
        let name: Arc<str> = Arc::from(name);
        let g = self.groups.len();
        self.groups.push(GroupState {
            name: name.clone(),
            weight: DEFAULT_WEIGHT,
            counter: 0.0,
            pools: Vec::new(),
            in_flight: 0,
            queued: 0,
        });
        self.group_index.insert(name, g);
        g
    }

    fn tenant_idx(&mut self, name: &str) -> usize {
        if let Some(&t) = self.tenant_index.get(name) {
            return t;
        }
        let group = self.group_idx(DEFAULT_GROUP);
        self.new_tenant(name, DEFAULT_WEIGHT, group)
    }

    fn new_tenant(&mut self, name: &str, weight: u32, group: usize) -> usize {
        let name: Arc<str> = Arc::from(name);
        let t = self.tenants.len();
        self.tenants.push(TenantState {
            name: name.clone(),
            weight,
            group,
            counter: 0.0,
            pools: Vec::new(),
            queued: 0,
            in_flight: 0,
            served_in: 0,
            served_out: 0,
        });
        self.tenant_index.insert(name, t);
        t
    }

    /// Named pool `name`, created (with capacity `None`) on first use.
    fn pool_idx(&mut self, name: &str) -> usize {
        if let Some(&p) = self.pool_index.get(name) {
            return p;
        }
        let name: Arc<str> = Arc::from(name);
        let p = self.pools.len();
        self.pools.push(PoolState::new(Some(name.clone()), None));
        self.pool_index.insert(name, p);
        p
    }

    /// Pool `p`'s slots now.
    fn capacity(&self, p: usize) -> usize {
        self.pools
            .get(p)
            .and_then(|pool| pool.capacity)
            .unwrap_or(self.cfg.max_in_flight)
    }

    /// Sets pool `p`'s capacity; growing it admits its waiting requests
    /// (their wakers are returned).
    fn set_capacity(&mut self, p: usize, capacity: Option<usize>, now: Timestamp) -> Vec<Waker> {
        if self.pools[p].capacity == capacity {
            return Vec::new();
        }
        self.pools[p].capacity = capacity;
        self.dispatch_all(p, now)
    }

    fn pool_counts(&self, p: usize) -> PoolCounts {
        PoolCounts {
            max_in_flight: self.capacity(p),
            in_flight: self.pools[p].in_flight,
            queued: self.pools[p].queued,
        }
    }

    /// Sets tenant `t`'s (shared) counter, repositioning its entry in every
    /// pool where it is backlogged.
    fn set_tenant_counter(&mut self, t: usize, value: f64) {
        let ten = &mut self.tenants[t];
        let old = ten.counter;
        for tp in &ten.pools {
            if let Some(gp) = self.pools[tp.pool].groups.get_mut(&ten.group) {
                gp.backlogged.remove(&(Key(old), tp.seq, t));
                gp.backlogged.insert((Key(value), tp.seq, t));
            }
        }
        ten.counter = value;
    }

    /// Sets group `g`'s (shared) counter, repositioning its entry in every
    /// pool where it is backlogged.
    fn set_group_counter(&mut self, g: usize, value: f64) {
        let grp = &mut self.groups[g];
        let old = grp.counter;
        for &(p, seq) in &grp.pools {
            let set = &mut self.pools[p].backlogged;
            set.remove(&(Key(old), seq, g));
            set.insert((Key(value), seq, g));
        }
        grp.counter = value;
    }

    /// Adds `service` (may be negative: a refund) to tenant `t` and its group,
    /// each divided by its weight, keeping the backlog sets ordered.
    fn charge(&mut self, t: usize, service: f64) {
        if service == 0.0 {
            return;
        }
        let ten = &self.tenants[t];
        let g = ten.group;
        let value = ten.counter + service / f64::from(ten.weight);
        self.set_tenant_counter(t, value);
        let grp = &self.groups[g];
        let value = grp.counter + service / f64::from(grp.weight);
        self.set_group_counter(g, value);
    }

    /// Tenant `t`, whose queue in pool `p` is about to become non-empty,
    /// joins its group's backlog there, and the group that of the pool's
    /// groups if it was not in it; each lifted (VTC lift). Returns the
    /// sequence of the tenant's entry, for the [`TenantPool`] the caller
    /// adds (after this call, so the lift does not touch the new entry).
    fn enter(&mut self, t: usize, p: usize) -> u64 {
        let g = self.tenants[t].group;
        if !self.groups[g].pools.iter().any(|&(q, _)| q == p) {
            let pool = &self.pools[p];
            let floor = pool
                .backlogged
                .first()
                .map_or(pool.last_group_departed, |e| e.0.0);
            let value = self.groups[g].counter.max(floor);
            self.set_group_counter(g, value);
            let seq = self.seq();
            self.pools[p].backlogged.insert((Key(value), seq, g));
            self.groups[g].pools.push((p, seq));
        }
        let gp = self.pools[p].groups.entry(g).or_default();
        let floor = gp.backlogged.first().map_or(gp.last_departed, |e| e.0.0);
        let value = self.tenants[t].counter.max(floor);
        self.set_tenant_counter(t, value);
        let seq = self.seq();
        self.pools[p]
            .groups
            .entry(g)
            .or_default()
            .backlogged
            .insert((Key(value), seq, t));
        seq
    }

    /// Tenant `t`, whose [`TenantPool`] of pool `p` (entry `seq`) the caller
    /// has just removed, leaves its group's backlog there; its group leaves
    /// the pool's backlog when it was the last.
    fn exit(&mut self, t: usize, p: usize, seq: u64) {
        let ten = &self.tenants[t];
        let (g, value) = (ten.group, ten.counter);
        let pool = &mut self.pools[p];
        let empty = match pool.groups.get_mut(&g) {
            Some(gp) => {
                gp.backlogged.remove(&(Key(value), seq, t));
                gp.last_departed = value;
                gp.backlogged.is_empty()
            }
            None => true,
        };
        let grp = &mut self.groups[g];
        if empty && let Some(i) = grp.pools.iter().position(|&(q, _)| q == p) {
            let (_, gseq) = grp.pools.swap_remove(i);
            pool.backlogged.remove(&(Key(grp.counter), gseq, g));
            pool.last_group_departed = grp.counter;
        }
    }

    fn admission_charge(&self, input: u64, estimate: u64) -> f64 {
        let mut s = self.cfg.input_weight * input as f64;
        if self.cfg.output_charging == OutputCharging::Predicted {
            s += self.cfg.output_weight * estimate as f64;
        }
        s
    }

    fn start(&mut self, t: usize, p: usize, input: u64, estimate: u64) {
        self.in_flight += 1;
        self.pools[p].in_flight += 1;
        let g = self.tenants[t].group;
        self.groups[g].in_flight += 1;
        let ten = &mut self.tenants[t];
        ten.in_flight += 1;
        ten.served_in = ten.served_in.saturating_add(input);
        let s = self.admission_charge(input, estimate);
        self.charge(t, s);
    }

    fn stop(&mut self, t: usize, p: usize) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let pool = &mut self.pools[p];
        pool.in_flight = pool.in_flight.saturating_sub(1);
        let g = self.tenants[t].group;
        self.groups[g].in_flight = self.groups[g].in_flight.saturating_sub(1);
        let ten = &mut self.tenants[t];
        ten.in_flight = ten.in_flight.saturating_sub(1);
    }

    /// Puts waiting request `id` of tenant `t` at the back of its queue in
    /// pool `p`.
    fn enqueue(&mut self, t: usize, p: usize, id: u64) {
        if let Some(tp) = self.tenants[t].pools.iter_mut().find(|tp| tp.pool == p) {
            tp.queue.insert(id);
        } else {
            let seq = self.enter(t, p);
            self.tenants[t].pools.push(TenantPool {
                pool: p,
                seq,
                queue: BTreeSet::from([id]),
            });
        }
        self.queued += 1;
        self.pools[p].queued += 1;
        let ten = &mut self.tenants[t];
        ten.queued += 1;
        self.groups[ten.group].queued += 1;
    }

    /// Counts one request of tenant `t` in pool `p` as no longer waiting;
    /// its queue there (index `i` in its pools) leaves the backlog when it
    /// became empty.
    fn dequeued(&mut self, t: usize, p: usize, i: usize) {
        self.queued = self.queued.saturating_sub(1);
        let pool = &mut self.pools[p];
        pool.queued = pool.queued.saturating_sub(1);
        let ten = &mut self.tenants[t];
        ten.queued = ten.queued.saturating_sub(1);
        let grp = &mut self.groups[ten.group];
        grp.queued = grp.queued.saturating_sub(1);
        if ten.pools[i].queue.is_empty() {
            let tp = ten.pools.swap_remove(i);
            self.exit(t, p, tp.seq);
        }
    }

    /// Removes waiting request `id` of tenant `t` from its queue in pool `p`.
    fn unqueue(&mut self, t: usize, p: usize, id: u64) -> bool {
        let Some(i) = self.tenants[t].pools.iter().position(|tp| tp.pool == p) else {
            return false;
        };
        if !self.tenants[t].pools[i].queue.remove(&id) {
            return false;
        }
        self.dequeued(t, p, i);
        true
    }

    /// Grants one free slot of pool `p` to its next request by VTC; returns
    /// its waker.
    fn dispatch_one(&mut self, p: usize, now: Timestamp) -> Option<Waker> {
        if self.pools[p].in_flight >= self.capacity(p) {
            return None;
        }
        let pool = &self.pools[p];
        let &(_, _, g) = pool.backlogged.first()?;
        let &(_, _, t) = pool.groups.get(&g)?.backlogged.first()?;
        let i = self.tenants[t].pools.iter().position(|tp| tp.pool == p)?;
        let id = self.tenants[t].pools[i].queue.pop_first()?;
        let (input, estimate) = match self.waiters.get(&id) {
            Some(w) => (w.input, w.estimate),
            None => (0, 0),
        };
        // Charge while still backlogged, so a tenant (group) that leaves the
        // backlog now leaves its charged counter as the last departed one.
        self.start(t, p, input, estimate);
        self.dequeued(t, p, i);
        let w = self.waiters.get_mut(&id)?;
        match std::mem::replace(
            &mut w.state,
            WaiterState::Granted(Grant { admitted_at: now }),
        ) {
            WaiterState::Waiting(waker) => waker,
            WaiterState::Granted(_) => None,
        }
    }

    /// Fills pool `p`'s free slots with its waiting requests.
    fn dispatch_all(&mut self, p: usize, now: Timestamp) -> Vec<Waker> {
        let mut wakers = Vec::new();
        while self.pools[p].in_flight < self.capacity(p) && self.pools[p].queued > 0 {
            let before = self.pools[p].queued;
            if let Some(w) = self.dispatch_one(p, now) {
                wakers.push(w);
            }
            if self.pools[p].queued == before {
                break;
            }
        }
        wakers
    }

    /// The hint of a request of pool `p`: the mean hold time times one plus
    /// the pool's waiting requests per slot.
    fn retry_after(&self, p: usize) -> Duration {
        let hold = self.mean_hold_ms.unwrap_or(1_000.0);
        let queued = self.pools.get(p).map_or(0, |pool| pool.queued);
        let per_slot = queued as f64 / self.capacity(p).max(1) as f64;
        let ms = (hold * (1.0 + per_slot)).clamp(100.0, 60_000.0);
        Duration::from_millis(ms as u64)
    }

    fn record_hold(&mut self, admitted_at: Timestamp, now: Timestamp) {
        let held = (now.as_millis() - admitted_at.as_millis()).max(0) as f64;
        self.mean_hold_ms = Some(match self.mean_hold_ms {
            Some(m) => 0.9 * m + 0.1 * held,
            None => held,
        });
    }

    fn precharged(&self, estimate: u64) -> u64 {
        match self.cfg.output_charging {
            OutputCharging::Reported => 0,
            OutputCharging::Predicted => estimate,
        }
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    clock: SharedClock,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The fair-share scheduler. Cheap to clone; clones share the same slots.
#[derive(Debug, Clone)]
pub struct FairShare {
    shared: Arc<Shared>,
}

/// What [`FairShare::try_acquire`] gives: a slot at once, or a place in the
/// queue.
#[derive(Debug)]
pub enum Admission {
    /// A slot of its pool was free and nothing of that pool waited.
    Admitted(Permit),
    /// The request waits in its tenant's queue of its pool; await the
    /// [`Waiting`] (drop it to leave the queue).
    Queued(Waiting),
}

impl FairShare {
    /// A scheduler with `config`, timing permits with the system clock.
    pub fn new(config: FairShareConfig) -> Result<Self> {
        FairShare::with_clock(config, Arc::new(SystemClock))
    }

    /// A scheduler with `config` and `clock` (used for permit hold times,
    /// which feed the retry hint).
    pub fn with_clock(config: FairShareConfig, clock: SharedClock) -> Result<Self> {
        config.validate()?;
        let mut state = State {
            cfg: config,
            in_flight: 0,
            queued: 0,
            tenants: Vec::new(),
            tenant_index: crate::FastMap::default(),
            groups: Vec::new(),
            group_index: crate::FastMap::default(),
            pools: vec![PoolState::new(None, None)],
            pool_index: crate::FastMap::default(),
            waiters: HashMap::new(),
            next_seq: 0,
            mean_hold_ms: None,
        };
        state.group_idx(DEFAULT_GROUP);
        Ok(FairShare {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                clock,
            }),
        })
    }

    /// The current settings.
    pub fn config(&self) -> FairShareConfig {
        self.shared.lock().cfg.clone()
    }

    /// The global number of slots: the default pool's, and that of every
    /// pool whose capacity is `None`.
    pub fn max_in_flight(&self) -> usize {
        self.shared.lock().cfg.max_in_flight
    }

    /// Changes the global number of slots live: the default pool and every
    /// pool whose capacity is `None` follow it (pools with `Some(n)` do
    /// not). Growing admits waiting requests at once; shrinking lets running
    /// requests finish and admits no more until fewer than `max` run. 0
    /// pauses admission in those pools.
    pub fn set_max_in_flight(&self, max: usize) {
        let now = self.shared.clock.now();
        let wakers = {
            let mut st = self.shared.lock();
            st.cfg.max_in_flight = max;
            let mut wakers = Vec::new();
            for p in 0..st.pools.len() {
                if st.pools[p].capacity.is_none() {
                    wakers.extend(st.dispatch_all(p, now));
                }
            }
            wakers
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Sets the capacity of pool `name` (created if new) live: `Some(n)`
    /// slots, or `None` to follow the global `max_in_flight`. Growing admits
    /// its waiting requests at once; shrinking lets running requests finish.
    /// The next request of the pool that carries another capacity changes it
    /// again.
    pub fn set_pool_capacity(&self, name: &str, capacity: Option<usize>) {
        let now = self.shared.clock.now();
        let wakers = {
            let mut st = self.shared.lock();
            let p = st.pool_idx(name);
            st.set_capacity(p, capacity, now)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Creates or updates group `name` with `weight` (1..=1,000,000). Its
    /// counter is kept; later charges divide by the new weight.
    pub fn set_group_weight(&self, name: &str, weight: u32) -> Result<()> {
        check_name("group", name)?;
        check_weight("weight", weight)?;
        let mut st = self.shared.lock();
        let g = st.group_idx(name);
        st.groups[g].weight = weight;
        Ok(())
    }

    /// Creates or updates tenant `name` with `weight` (1..=1,000,000) in
    /// `group` (created with weight [`DEFAULT_WEIGHT`] if new). Moving a tenant
    /// moves its waiting and running requests, in every pool, to the new
    /// group; its counter is kept (and lifted where it joins the new group's
    /// backlog of a pool).
    pub fn set_tenant(&self, name: &str, weight: u32, group: &str) -> Result<()> {
        check_name("tenant", name)?;
        check_name("group", group)?;
        check_weight("weight", weight)?;
        let mut st = self.shared.lock();
        let g = st.group_idx(group);
        let Some(&t) = st.tenant_index.get(name) else {
            st.new_tenant(name, weight, g);
            return Ok(());
        };
        st.tenants[t].weight = weight;
        let old = st.tenants[t].group;
        if old != g {
            // Leave the old group's backlog in every pool, keeping the queues.
            let mut pools = std::mem::take(&mut st.tenants[t].pools);
            for tp in &pools {
                st.exit(t, tp.pool, tp.seq);
            }
            let (running, waiting) = (st.tenants[t].in_flight, st.tenants[t].queued);
            st.groups[old].in_flight -= running.min(st.groups[old].in_flight);
            st.groups[old].queued -= waiting.min(st.groups[old].queued);
            st.groups[g].in_flight += running;
            st.groups[g].queued += waiting;
            st.tenants[t].group = g;
            // Join the new group's backlog there, one pool at a time (a lift
            // repositions the entries already back).
            for mut tp in pools.drain(..) {
                tp.seq = st.enter(t, tp.pool);
                st.tenants[t].pools.push(tp);
            }
        }
        Ok(())
    }

    /// Asks for a slot of the request's pool without waiting: a [`Permit`]
    /// when a slot of it is free and nothing of it waits, else a place at the
    /// back of the tenant's queue in that pool ([`Admission::Queued`]), or
    /// [`Rejected`] when the tenant already has
    /// [`FairShareConfig::max_queue_per_tenant`] requests waiting. A pooled
    /// request creates its pool on first use and sets the pool's capacity to
    /// the one it carries.
    pub fn try_acquire(&self, request: Request) -> Result<Admission, Rejected> {
        let now = self.shared.clock.now();
        let (admission, wakers) = self.try_acquire_locked(request, now);
        wakers.into_iter().for_each(Waker::wake);
        admission
    }

    fn try_acquire_locked(
        &self,
        request: Request,
        now: Timestamp,
    ) -> (Result<Admission, Rejected>, Vec<Waker>) {
        let mut st = self.shared.lock();
        let (p, mut wakers) = match &request.pool {
            None => (DEFAULT_POOL, Vec::new()),
            Some(pool) => {
                let p = st.pool_idx(&pool.name);
                (p, st.set_capacity(p, pool.capacity, now))
            }
        };
        let pool_name = request.pool.map(|pool| pool.name);
        let t = st.tenant_idx(&request.tenant);
        if st.pools[p].queued == 0 && st.pools[p].in_flight < st.capacity(p) {
            st.start(t, p, request.input_tokens, request.estimated_output_tokens);
            let precharged = st.precharged(request.estimated_output_tokens);
            let permit = Permit {
                shared: self.shared.clone(),
                tenant: t,
                pool: p,
                pool_name,
                input: request.input_tokens,
                precharged,
                reported: 0,
                admitted_at: now,
            };
            return (Ok(Admission::Admitted(permit)), wakers);
        }
        if st.tenants[t].queued >= st.cfg.max_queue_per_tenant {
            let rejected = Rejected {
                tenant: request.tenant,
                reason: RejectReason::QueueFull,
                limit: st.cfg.max_queue_per_tenant as u64,
                retry_after: st.retry_after(p),
            };
            return (Err(rejected), wakers);
        }
        let id = st.seq();
        st.waiters.insert(
            id,
            Waiter {
                tenant: t,
                pool: p,
                input: request.input_tokens,
                estimate: request.estimated_output_tokens,
                state: WaiterState::Waiting(None),
            },
        );
        st.enqueue(t, p, id);
        // Work conservation: a free slot never idles while something of its
        // pool waits.
        wakers.extend(st.dispatch_all(p, now));
        let waiting = Waiting {
            shared: Some(self.shared.clone()),
            id,
            tenant: request.tenant,
            pool: p,
            pool_name,
        };
        (Ok(Admission::Queued(waiting)), wakers)
    }

    /// Waits for a slot in the tenant's queue of the request's pool, for at
    /// most [`FairShareConfig::queue_timeout`] (tokio time; needs a tokio
    /// runtime with time enabled when a timeout is set). Cancellation-safe:
    /// dropping the future leaves the queue.
    pub async fn acquire(&self, request: Request) -> Result<Permit, Rejected> {
        let waiting = match self.try_acquire(request)? {
            Admission::Admitted(p) => return Ok(p),
            Admission::Queued(w) => w,
        };
        let timeout = self.shared.lock().cfg.queue_timeout;
        let Some(limit) = timeout else {
            return Ok(waiting.await);
        };
        let (tenant, pool) = (waiting.tenant.clone(), waiting.pool);
        match tokio::time::timeout(limit, waiting).await {
            Ok(p) => Ok(p),
            Err(_) => Err(Rejected {
                tenant,
                reason: RejectReason::QueueTimeout,
                limit: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
                retry_after: self.shared.lock().retry_after(pool),
            }),
        }
    }

    /// Requests holding a slot and requests waiting, in all pools, without
    /// the per-tenant detail of [`Self::snapshot`] (cheap enough for every
    /// request).
    pub fn counts(&self) -> (usize, usize) {
        let st = self.shared.lock();
        (st.in_flight, st.queued)
    }

    /// The capacity and load of pool `name`; `None` when no request or
    /// [`Self::set_pool_capacity`] has named it yet.
    pub fn pool_counts(&self, name: &str) -> Option<PoolCounts> {
        let st = self.shared.lock();
        let &p = st.pool_index.get(name)?;
        Some(st.pool_counts(p))
    }

    /// A live view: totals, every group and tenant, and every named pool
    /// (each sorted by name).
    pub fn snapshot(&self) -> Snapshot {
        let st = self.shared.lock();
        let mut groups: Vec<GroupSnapshot> = st
            .groups
            .iter()
            .map(|g| GroupSnapshot {
                name: g.name.to_string(),
                weight: g.weight,
                in_flight: g.in_flight,
                queued: g.queued,
                counter: g.counter,
                tokens_served: 0,
                tenants: Vec::new(),
            })
            .collect();
        for t in &st.tenants {
            let served = t.served_in.saturating_add(t.served_out);
            if let Some(g) = groups.get_mut(t.group) {
                g.tokens_served = g.tokens_served.saturating_add(served);
                g.tenants.push(TenantSnapshot {
                    name: t.name.to_string(),
                    weight: t.weight,
                    in_flight: t.in_flight,
                    queued: t.queued,
                    counter: t.counter,
                    tokens_served: served,
                    input_tokens: t.served_in,
                    output_tokens: t.served_out,
                });
            }
        }
        for g in &mut groups {
            g.tenants.sort_by(|a, b| a.name.cmp(&b.name));
        }
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        let mut models: Vec<PoolSnapshot> = (0..st.pools.len())
            .filter_map(|p| {
                let name = st.pools[p].name.as_ref()?;
                let c = st.pool_counts(p);
                Some(PoolSnapshot {
                    model: name.to_string(),
                    max_in_flight: c.max_in_flight,
                    in_flight: c.in_flight,
                    queued: c.queued,
                })
            })
            .collect();
        models.sort_by(|a, b| a.model.cmp(&b.model));
        Snapshot {
            max_in_flight: st.cfg.max_in_flight,
            in_flight: st.in_flight,
            queued: st.queued,
            groups,
            models,
        }
    }
}

/// A request waiting in its tenant's queue of its pool; resolves to a
/// [`Permit`] of that pool.
///
/// Dropping it leaves the queue (and hands on, within its pool, a slot
/// granted but not yet taken, refunding its charge).
#[derive(Debug)]
pub struct Waiting {
    shared: Option<Arc<Shared>>,
    id: u64,
    tenant: String,
    pool: usize,
    pool_name: Option<Arc<str>>,
}

impl Waiting {
    /// The tenant this request waits for.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The pool it waits in; `None`: the default pool.
    pub fn pool(&self) -> Option<&str> {
        self.pool_name.as_deref()
    }
}

impl Future for Waiting {
    type Output = Permit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        let Some(shared) = self.shared.clone() else {
            // Polled after completion: never resolves again.
            return Poll::Pending;
        };
        let mut st = shared.lock();
        let granted = match st.waiters.get_mut(&self.id) {
            Some(Waiter {
                state: WaiterState::Waiting(waker),
                ..
            }) => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                false
            }
            Some(_) => true,
            None => false,
        };
        if !granted {
            return Poll::Pending;
        }
        let Some(w) = st.waiters.remove(&self.id) else {
            return Poll::Pending;
        };
        let WaiterState::Granted(grant) = w.state else {
            return Poll::Pending;
        };
        let precharged = st.precharged(w.estimate);
        drop(st);
        self.shared = None;
        Poll::Ready(Permit {
            shared,
            tenant: w.tenant,
            pool: w.pool,
            pool_name: self.pool_name.clone(),
            input: w.input,
            precharged,
            reported: 0,
            admitted_at: grant.admitted_at,
        })
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let now = shared.clock.now();
        let waker = {
            let mut st = shared.lock();
            let Some(w) = st.waiters.remove(&self.id) else {
                return;
            };
            match w.state {
                WaiterState::Waiting(_) => {
                    st.unqueue(w.tenant, w.pool, self.id);
                    None
                }
                WaiterState::Granted(_) => {
                    // Granted but never taken: refund and hand the slot on
                    // within its pool.
                    let refund = st.admission_charge(w.input, w.estimate);
                    st.charge(w.tenant, -refund);
                    let ten = &mut st.tenants[w.tenant];
                    ten.served_in = ten.served_in.saturating_sub(w.input);
                    st.stop(w.tenant, w.pool);
                    st.dispatch_one(w.pool, now)
                }
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A slot of a pool held by a running request. Report output with
/// [`Permit::record_output`] while streaming, or give totals to
/// [`Permit::finish`]; dropping it releases the slot (to the next request of
/// its pool) and charges what was reported (reconciling a predicted output).
#[derive(Debug)]
pub struct Permit {
    shared: Arc<Shared>,
    tenant: usize,
    pool: usize,
    pool_name: Option<Arc<str>>,
    input: u64,
    precharged: u64,
    reported: u64,
    admitted_at: Timestamp,
}

impl Permit {
    /// Output tokens reported so far.
    pub fn output_tokens(&self) -> u64 {
        self.reported
    }

    /// Input tokens charged.
    pub fn input_tokens(&self) -> u64 {
        self.input
    }

    /// When the slot was granted.
    pub fn admitted_at(&self) -> Timestamp {
        self.admitted_at
    }

    /// The pool whose slot it holds; `None`: the default pool.
    pub fn pool(&self) -> Option<&str> {
        self.pool_name.as_deref()
    }

    /// Reports `tokens` more output tokens, charging `w_out` each (beyond a
    /// predicted output already charged).
    pub fn record_output(&mut self, tokens: u64) {
        if tokens == 0 {
            return;
        }
        let before = self.reported.max(self.precharged);
        self.reported = self.reported.saturating_add(tokens);
        let after = self.reported.max(self.precharged);
        let mut st = self.shared.lock();
        let ten = &mut st.tenants[self.tenant];
        ten.served_out = ten.served_out.saturating_add(tokens);
        let s = st.cfg.output_weight * (after - before) as f64;
        st.charge(self.tenant, s);
    }

    /// Corrects the input token count charged at admission to `actual`
    /// (charging or refunding `w_in` per token of difference).
    pub fn set_input_tokens(&mut self, actual: u64) {
        if actual == self.input {
            return;
        }
        let mut st = self.shared.lock();
        let delta = actual as f64 - self.input as f64;
        let ten = &mut st.tenants[self.tenant];
        ten.served_in = ten
            .served_in
            .saturating_sub(self.input)
            .saturating_add(actual);
        let s = st.cfg.input_weight * delta;
        st.charge(self.tenant, s);
        self.input = actual;
    }

    /// Completes the request with `total_output` tokens in all (those not yet
    /// reported are charged now) and releases the slot.
    pub fn finish(mut self, total_output: u64) {
        let rest = total_output.saturating_sub(self.reported);
        self.record_output(rest);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let now = self.shared.clock.now();
        let waker = {
            let mut st = self.shared.lock();
            if self.reported < self.precharged {
                let refund = st.cfg.output_weight * (self.precharged - self.reported) as f64;
                st.charge(self.tenant, -refund);
            }
            st.stop(self.tenant, self.pool);
            st.record_hold(self.admitted_at, now);
            st.dispatch_one(self.pool, now)
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::clock::ManualClock;

    /// The internal structures agree with each other: every backlog entry is
    /// keyed by its owner's current counter and mirrored by the owner's list
    /// of pools, per-pool tenant state exists only while it waits, and the
    /// counts add up.
    fn check(st: &State) {
        let mut queued_by_pool = vec![0usize; st.pools.len()];
        for (t, ten) in st.tenants.iter().enumerate() {
            let mut queued = 0;
            for tp in &ten.pools {
                assert!(!tp.queue.is_empty(), "empty queue kept");
                queued += tp.queue.len();
                queued_by_pool[tp.pool] += tp.queue.len();
                let gp = &st.pools[tp.pool].groups[&ten.group];
                assert!(gp.backlogged.contains(&(Key(ten.counter), tp.seq, t)));
                for id in &tp.queue {
                    let w = &st.waiters[id];
                    assert_eq!((w.tenant, w.pool), (t, tp.pool));
                    assert!(matches!(w.state, WaiterState::Waiting(_)));
                }
            }
            assert_eq!(queued, ten.queued);
            let mut seen: Vec<usize> = ten.pools.iter().map(|tp| tp.pool).collect();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), ten.pools.len(), "one entry per pool");
        }
        for (g, grp) in st.groups.iter().enumerate() {
            for &(p, seq) in &grp.pools {
                assert!(st.pools[p].backlogged.contains(&(Key(grp.counter), seq, g)));
                assert!(!st.pools[p].groups[&g].backlogged.is_empty());
            }
            let queued: usize = st
                .tenants
                .iter()
                .filter(|t| t.group == g)
                .map(|t| t.queued)
                .sum();
            assert_eq!(queued, grp.queued);
        }
        for (p, pool) in st.pools.iter().enumerate() {
            assert_eq!(pool.queued, queued_by_pool[p]);
            for &(Key(c), seq, g) in &pool.backlogged {
                assert_eq!(c, st.groups[g].counter);
                assert!(st.groups[g].pools.contains(&(p, seq)));
            }
            let groups = pool.groups.values().filter(|gp| !gp.backlogged.is_empty());
            assert_eq!(groups.count(), pool.backlogged.len());
            for (&g, gp) in &pool.groups {
                for &(Key(c), seq, t) in &gp.backlogged {
                    let ten = &st.tenants[t];
                    assert_eq!((ten.group, c), (g, ten.counter));
                    assert!(ten.pools.iter().any(|tp| tp.pool == p && tp.seq == seq));
                }
            }
            if pool.queued > 0 {
                assert!(pool.in_flight >= st.capacity(p), "idle slot in pool {p}");
            }
        }
        assert_eq!(st.queued, queued_by_pool.iter().sum::<usize>());
        assert_eq!(
            st.in_flight,
            st.pools.iter().map(|p| p.in_flight).sum::<usize>()
        );
    }

    #[test]
    fn random_operations_keep_the_internal_structures_consistent() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let cfg = FairShareConfig {
            max_in_flight: 2,
            max_queue_per_tenant: 4,
            queue_timeout: None,
            output_charging: OutputCharging::Predicted,
            ..FairShareConfig::default()
        };
        let s = FairShare::with_clock(cfg, Arc::new(ManualClock::default())).unwrap();
        let names = ["t0", "t1", "t2", "t3"];
        let groups = ["g0", "g1", "g2"];
        let pools = [None, Some("m1"), Some("m2")];
        let mut running: Vec<Permit> = Vec::new();
        let mut waiting: Vec<Waiting> = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..20_000 {
            match rnd(12) {
                0..=3 => {
                    let mut r = Request::new(names[rnd(4) as usize], rnd(300), rnd(200));
                    if let Some(name) = pools[rnd(3) as usize] {
                        r = r.in_pool(name, Some(1 + rnd(2) as usize));
                    }
                    match s.try_acquire(r) {
                        Ok(Admission::Admitted(p)) => running.push(p),
                        Ok(Admission::Queued(w)) => waiting.push(w),
                        Err(_) => {}
                    }
                }
                4..=5 if !running.is_empty() => {
                    let p = running.swap_remove(rnd(running.len() as u64) as usize);
                    p.finish(rnd(300));
                }
                6 if !waiting.is_empty() => {
                    drop(waiting.swap_remove(rnd(waiting.len() as u64) as usize));
                }
                7 if !running.is_empty() => {
                    let i = rnd(running.len() as u64) as usize;
                    running[i].record_output(1 + rnd(30));
                    running[i].set_input_tokens(rnd(300));
                }
                8 => s.set_max_in_flight(rnd(4) as usize),
                9 => {
                    let n = names[rnd(4) as usize];
                    let g = groups[rnd(3) as usize];
                    s.set_tenant(n, 1 + rnd(5) as u32, g).unwrap();
                }
                10 => s
                    .set_group_weight(groups[rnd(3) as usize], 1 + rnd(5) as u32)
                    .unwrap(),
                11 => {
                    let cap = match rnd(4) {
                        0 => None,
                        n => Some(n as usize - 1),
                    };
                    s.set_pool_capacity(["m1", "m2"][rnd(2) as usize], cap);
                }
                _ => {}
            }
            // Take some grants, leave others granted but not taken for a while.
            let mut i = 0;
            while i < waiting.len() {
                if rnd(3) != 0
                    && let Poll::Ready(p) = Pin::new(&mut waiting[i]).poll(&mut cx)
                {
                    running.push(p);
                    waiting.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            check(&s.shared.lock());
        }
        drop(waiting);
        drop(running);
        let st = s.shared.lock();
        check(&st);
        assert_eq!((st.in_flight, st.queued), (0, 0));
        assert!(st.tenants.iter().all(|t| t.pools.is_empty()));
        assert!(st.groups.iter().all(|g| g.pools.is_empty()));
    }
}
