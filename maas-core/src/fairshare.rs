//! Fair-share admission: a two-level weighted Virtual Token Counter (VTC).
//!
//! [`FairShare`] owns `max_in_flight` slots (changed live with
//! [`FairShare::set_max_in_flight`]; shrinking lets running requests finish).
//! Tenants have weights and belong to groups, which have weights too. A
//! request asks for a slot with [`FairShare::acquire`] (or
//! [`FairShare::try_acquire`], which never waits): it gets a [`Permit`] at
//! once when a slot is free and nothing waits, or waits in its tenant's FIFO
//! queue.
//!
//! ## Selection (VTC, Sheng et al., OSDI 2024, extended to two levels)
//!
//! Every tenant and every group has a counter of weighted service. When a
//! slot frees, the scheduler takes the group with the lowest counter among
//! groups that have waiting requests, inside it the tenant with the lowest
//! counter, and admits that tenant's oldest request (ties: whichever became
//! backlogged first). Both counters are charged, each divided by its own
//! weight: `w_in · input` tokens at admission and `w_out` per output token as
//! the permit reports them ([`Permit::record_output`], for streaming) or at
//! completion ([`Permit::finish`]). When a tenant (group) becomes backlogged
//! its counter is lifted to the lowest counter among the backlogged tenants of
//! its group (backlogged groups), or, when none is backlogged, to the counter
//! of the last one that left the backlog: idle time is not banked.
//!
//! With [`OutputCharging::Predicted`] the estimated output is charged at
//! admission and reconciled against what was reported when the permit is
//! released (the paper's VTC with length prediction).
//!
//! Every decision costs O(log n) in the number of backlogged tenants and
//! groups (ordered sets keyed by `(counter, sequence)`); nothing scans.
//!
//! ## Cancellation, timeouts, limits
//!
//! Waiting is cancellation-safe: dropping the future of
//! [`FairShare::acquire`] (or a [`Waiting`]) removes the request from its
//! queue, and if a slot had been granted to it in the meantime the slot is
//! handed on and the charge refunded. Dropping a [`Permit`] releases its slot
//! and charges what it reported: a guard that acts on drop.
//!
//! A tenant's queue holds at most [`FairShareConfig::max_queue_per_tenant`]
//! requests; a request beyond it is rejected at once. With
//! [`FairShareConfig::queue_timeout`] set, [`FairShare::acquire`] gives up
//! after that long, measured with tokio's timer (`tokio::time::timeout`), so
//! tests drive it with `tokio::time::pause()` and `advance` and never sleep;
//! it must then run inside a tokio runtime with the time driver enabled.
//! Callers that want another deadline await [`FairShare::try_acquire`]'s
//! [`Waiting`] under their own timeout. Both rejections are a [`Rejected`]
//! with a reason and a retry hint, convertible into
//! [`Error::Unavailable`] (transient).
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
    /// Requests that may run at once (changeable live).
    pub max_in_flight: usize,
    /// Service charged per input token (`w_in`), default 1.
    pub input_weight: f64,
    /// Service charged per output token (`w_out`), default 2.
    pub output_weight: f64,
    /// Requests a tenant may have waiting; one more is rejected. Default 1,000.
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
}

impl Request {
    /// A request of `tenant` with `input_tokens` and an output estimate.
    pub fn new(tenant: impl Into<String>, input_tokens: u64, estimated_output_tokens: u64) -> Self {
        Request {
            tenant: tenant.into(),
            input_tokens,
            estimated_output_tokens,
        }
    }
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
    /// Slots (`max_in_flight`).
    pub max_in_flight: usize,
    /// Requests holding a slot (may exceed `max_in_flight` right after it shrank).
    pub in_flight: usize,
    /// Requests waiting.
    pub queued: usize,
    /// Per group, by name.
    pub groups: Vec<GroupSnapshot>,
}

/// A group in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupSnapshot {
    /// Name.
    pub name: String,
    /// Weight.
    pub weight: u32,
    /// Requests of its tenants holding a slot.
    pub in_flight: usize,
    /// Requests of its tenants waiting.
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
    /// Requests holding a slot.
    pub in_flight: usize,
    /// Requests waiting.
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

#[derive(Debug)]
struct TenantState {
    name: Arc<str>,
    weight: u32,
    group: usize,
    counter: f64,
    /// Waiting request ids, oldest first.
    queue: BTreeSet<u64>,
    /// Sequence of this tenant's entry in its group's backlog, while backlogged.
    backlog_seq: Option<u64>,
    in_flight: usize,
    served_in: u64,
    served_out: u64,
}

#[derive(Debug)]
struct GroupState {
    name: Arc<str>,
    weight: u32,
    counter: f64,
    backlogged: BTreeSet<Entry>,
    last_departed: f64,
    backlog_seq: Option<u64>,
    in_flight: usize,
    queued: usize,
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
    input: u64,
    estimate: u64,
    state: WaiterState,
}

#[derive(Debug)]
struct State {
    cfg: FairShareConfig,
    in_flight: usize,
    queued: usize,
    tenants: Vec<TenantState>,
    tenant_index: HashMap<Arc<str>, usize>,
    groups: Vec<GroupState>,
    group_index: HashMap<Arc<str>, usize>,
    backlogged: BTreeSet<Entry>,
    last_group_departed: f64,
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
            backlogged: BTreeSet::new(),
            last_departed: 0.0,
            backlog_seq: None,
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
            queue: BTreeSet::new(),
            backlog_seq: None,
            in_flight: 0,
            served_in: 0,
            served_out: 0,
        });
        self.tenant_index.insert(name, t);
        t
    }

    /// Adds `service` (may be negative: a refund) to tenant `t` and its group,
    /// each divided by its weight, keeping the backlog sets ordered.
    fn charge(&mut self, t: usize, service: f64) {
        if service == 0.0 {
            return;
        }
        let g = self.tenants[t].group;
        let ten = &mut self.tenants[t];
        let grp = &mut self.groups[g];
        if let Some(seq) = ten.backlog_seq {
            grp.backlogged.remove(&(Key(ten.counter), seq, t));
            ten.counter += service / f64::from(ten.weight);
            grp.backlogged.insert((Key(ten.counter), seq, t));
        } else {
            ten.counter += service / f64::from(ten.weight);
        }
        if let Some(seq) = grp.backlog_seq {
            self.backlogged.remove(&(Key(grp.counter), seq, g));
            grp.counter += service / f64::from(grp.weight);
            self.backlogged.insert((Key(grp.counter), seq, g));
        } else {
            grp.counter += service / f64::from(grp.weight);
        }
    }

    /// Tenant `t` (whose queue just became non-empty) joins the backlog of
    /// its group, and the group that of groups; each lifted (VTC lift).
    fn join_backlog(&mut self, t: usize) {
        let g = self.tenants[t].group;
        if self.groups[g].backlog_seq.is_none() {
            let floor = self
                .backlogged
                .first()
                .map_or(self.last_group_departed, |e| e.0.0);
            let seq = self.seq();
            let grp = &mut self.groups[g];
            grp.counter = grp.counter.max(floor);
            grp.backlog_seq = Some(seq);
            self.backlogged.insert((Key(grp.counter), seq, g));
        }
        let seq = self.seq();
        let grp = &mut self.groups[g];
        let floor = grp.backlogged.first().map_or(grp.last_departed, |e| e.0.0);
        let ten = &mut self.tenants[t];
        ten.counter = ten.counter.max(floor);
        ten.backlog_seq = Some(seq);
        grp.backlogged.insert((Key(ten.counter), seq, t));
    }

    /// Tenant `t` (whose queue just became empty) leaves the backlog; its
    /// group leaves too when it was the last.
    fn leave_backlog(&mut self, t: usize) {
        let g = self.tenants[t].group;
        let ten = &mut self.tenants[t];
        let grp = &mut self.groups[g];
        if let Some(seq) = ten.backlog_seq.take() {
            grp.backlogged.remove(&(Key(ten.counter), seq, t));
            grp.last_departed = ten.counter;
        }
        if grp.backlogged.is_empty()
            && let Some(seq) = grp.backlog_seq.take()
        {
            self.backlogged.remove(&(Key(grp.counter), seq, g));
            self.last_group_departed = grp.counter;
        }
    }

    fn admission_charge(&self, input: u64, estimate: u64) -> f64 {
        let mut s = self.cfg.input_weight * input as f64;
        if self.cfg.output_charging == OutputCharging::Predicted {
            s += self.cfg.output_weight * estimate as f64;
        }
        s
    }

    fn start(&mut self, t: usize, input: u64, estimate: u64) {
        self.in_flight += 1;
        let g = self.tenants[t].group;
        self.groups[g].in_flight += 1;
        let ten = &mut self.tenants[t];
        ten.in_flight += 1;
        ten.served_in = ten.served_in.saturating_add(input);
        let s = self.admission_charge(input, estimate);
        self.charge(t, s);
    }

    fn stop(&mut self, t: usize) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let g = self.tenants[t].group;
        self.groups[g].in_flight = self.groups[g].in_flight.saturating_sub(1);
        let ten = &mut self.tenants[t];
        ten.in_flight = ten.in_flight.saturating_sub(1);
    }

    /// Removes waiting request `id` of tenant `t` from its queue.
    fn unqueue(&mut self, t: usize, id: u64) -> bool {
        if !self.tenants[t].queue.remove(&id) {
            return false;
        }
        self.queued = self.queued.saturating_sub(1);
        let g = self.tenants[t].group;
        self.groups[g].queued = self.groups[g].queued.saturating_sub(1);
        if self.tenants[t].queue.is_empty() {
            self.leave_backlog(t);
        }
        true
    }

    /// Grants one free slot to the next request by VTC; returns its waker.
    fn dispatch_one(&mut self, now: Timestamp) -> Option<Waker> {
        if self.in_flight >= self.cfg.max_in_flight {
            return None;
        }
        let &(_, _, g) = self.backlogged.first()?;
        let &(_, _, t) = self.groups[g].backlogged.first()?;
        let id = self.tenants[t].queue.pop_first()?;
        self.queued = self.queued.saturating_sub(1);
        self.groups[g].queued = self.groups[g].queued.saturating_sub(1);
        let (input, estimate) = match self.waiters.get(&id) {
            Some(w) => (w.input, w.estimate),
            None => (0, 0),
        };
        // Charge while still backlogged, so a tenant (group) that leaves the
        // backlog now leaves its charged counter as the last departed one.
        self.start(t, input, estimate);
        if self.tenants[t].queue.is_empty() {
            self.leave_backlog(t);
        }
        let w = self.waiters.get_mut(&id)?;
        match std::mem::replace(
            &mut w.state,
            WaiterState::Granted(Grant { admitted_at: now }),
        ) {
            WaiterState::Waiting(waker) => waker,
            WaiterState::Granted(_) => None,
        }
    }

    fn dispatch_all(&mut self, now: Timestamp) -> Vec<Waker> {
        let mut wakers = Vec::new();
        while self.in_flight < self.cfg.max_in_flight && self.queued > 0 {
            let before = self.queued;
            if let Some(w) = self.dispatch_one(now) {
                wakers.push(w);
            }
            if self.queued == before {
                break;
            }
        }
        wakers
    }

    fn retry_after(&self) -> Duration {
        let hold = self.mean_hold_ms.unwrap_or(1_000.0);
        let per_slot = self.queued as f64 / self.cfg.max_in_flight.max(1) as f64;
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
    /// A slot was free and nothing waited.
    Admitted(Permit),
    /// The request waits in its tenant's queue; await the [`Waiting`] (drop
    /// it to leave the queue).
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
            tenant_index: HashMap::new(),
            groups: Vec::new(),
            group_index: HashMap::new(),
            backlogged: BTreeSet::new(),
            last_group_departed: 0.0,
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

    /// The number of slots.
    pub fn max_in_flight(&self) -> usize {
        self.shared.lock().cfg.max_in_flight
    }

    /// Changes the number of slots live. Growing admits waiting requests at
    /// once; shrinking lets running requests finish and admits no more until
    /// fewer than `max` run. 0 pauses admission.
    pub fn set_max_in_flight(&self, max: usize) {
        let now = self.shared.clock.now();
        let wakers = {
            let mut st = self.shared.lock();
            st.cfg.max_in_flight = max;
            st.dispatch_all(now)
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
    /// moves its waiting and running requests to the new group; its counter
    /// is kept (and lifted if it joins the new group's backlog).
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
            let backlogged = st.tenants[t].backlog_seq.is_some();
            if backlogged {
                st.leave_backlog(t);
            }
            let (running, waiting) = (st.tenants[t].in_flight, st.tenants[t].queue.len());
            st.groups[old].in_flight -= running.min(st.groups[old].in_flight);
            st.groups[old].queued -= waiting.min(st.groups[old].queued);
            st.groups[g].in_flight += running;
            st.groups[g].queued += waiting;
            st.tenants[t].group = g;
            if backlogged {
                st.join_backlog(t);
            }
        }
        Ok(())
    }

    /// Asks for a slot without waiting: a [`Permit`] when a slot is free and
    /// nothing waits, else a place at the back of the tenant's queue
    /// ([`Admission::Queued`]), or [`Rejected`] when that queue is full.
    pub fn try_acquire(&self, request: Request) -> Result<Admission, Rejected> {
        let now = self.shared.clock.now();
        let mut st = self.shared.lock();
        let t = st.tenant_idx(&request.tenant);
        if st.queued == 0 && st.in_flight < st.cfg.max_in_flight {
            st.start(t, request.input_tokens, request.estimated_output_tokens);
            let precharged = st.precharged(request.estimated_output_tokens);
            drop(st);
            return Ok(Admission::Admitted(Permit {
                shared: self.shared.clone(),
                tenant: t,
                input: request.input_tokens,
                precharged,
                reported: 0,
                admitted_at: now,
            }));
        }
        if st.tenants[t].queue.len() >= st.cfg.max_queue_per_tenant {
            return Err(Rejected {
                tenant: request.tenant,
                reason: RejectReason::QueueFull,
                limit: st.cfg.max_queue_per_tenant as u64,
                retry_after: st.retry_after(),
            });
        }
        let id = st.seq();
        st.waiters.insert(
            id,
            Waiter {
                tenant: t,
                input: request.input_tokens,
                estimate: request.estimated_output_tokens,
                state: WaiterState::Waiting(None),
            },
        );
        let was_empty = st.tenants[t].queue.is_empty();
        st.tenants[t].queue.insert(id);
        st.queued += 1;
        let g = st.tenants[t].group;
        st.groups[g].queued += 1;
        if was_empty {
            st.join_backlog(t);
        }
        // Work conservation: a free slot never idles while something waits.
        let wakers = st.dispatch_all(now);
        drop(st);
        wakers.into_iter().for_each(Waker::wake);
        Ok(Admission::Queued(Waiting {
            shared: Some(self.shared.clone()),
            id,
            tenant: request.tenant,
        }))
    }

    /// Waits for a slot in the tenant's queue, for at most
    /// [`FairShareConfig::queue_timeout`] (tokio time; needs a tokio runtime
    /// with time enabled when a timeout is set). Cancellation-safe: dropping
    /// the future leaves the queue.
    pub async fn acquire(&self, request: Request) -> Result<Permit, Rejected> {
        let waiting = match self.try_acquire(request)? {
            Admission::Admitted(p) => return Ok(p),
            Admission::Queued(w) => w,
        };
        let timeout = self.shared.lock().cfg.queue_timeout;
        let Some(limit) = timeout else {
            return Ok(waiting.await);
        };
        let tenant = waiting.tenant.clone();
        match tokio::time::timeout(limit, waiting).await {
            Ok(p) => Ok(p),
            Err(_) => Err(Rejected {
                tenant,
                reason: RejectReason::QueueTimeout,
                limit: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
                retry_after: self.shared.lock().retry_after(),
            }),
        }
    }

    /// Requests holding a slot and requests waiting, without the per-tenant
    /// detail of [`Self::snapshot`] (cheap enough for every request).
    pub fn counts(&self) -> (usize, usize) {
        let st = self.shared.lock();
        (st.in_flight, st.queued)
    }

    /// A live view: totals, and every group and tenant (sorted by name).
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
                    queued: t.queue.len(),
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
        Snapshot {
            max_in_flight: st.cfg.max_in_flight,
            in_flight: st.in_flight,
            queued: st.queued,
            groups,
        }
    }
}

impl State {
    fn precharged(&self, estimate: u64) -> u64 {
        match self.cfg.output_charging {
            OutputCharging::Reported => 0,
            OutputCharging::Predicted => estimate,
        }
    }
}

/// A request waiting in its tenant's queue; resolves to a [`Permit`].
///
/// Dropping it leaves the queue (and hands on a slot granted but not yet
/// taken, refunding its charge).
#[derive(Debug)]
pub struct Waiting {
    shared: Option<Arc<Shared>>,
    id: u64,
    tenant: String,
}

impl Waiting {
    /// The tenant this request waits for.
    pub fn tenant(&self) -> &str {
        &self.tenant
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
                    st.unqueue(w.tenant, self.id);
                    None
                }
                WaiterState::Granted(_) => {
                    // Granted but never taken: refund and hand the slot on.
                    let refund = st.admission_charge(w.input, w.estimate);
                    st.charge(w.tenant, -refund);
                    let ten = &mut st.tenants[w.tenant];
                    ten.served_in = ten.served_in.saturating_sub(w.input);
                    st.stop(w.tenant);
                    st.dispatch_one(now)
                }
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A slot held by a running request. Report output with
/// [`Permit::record_output`] while streaming, or give totals to
/// [`Permit::finish`]; dropping it releases the slot and charges what was
/// reported (reconciling a predicted output).
#[derive(Debug)]
pub struct Permit {
    shared: Arc<Shared>,
    tenant: usize,
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
            st.stop(self.tenant);
            st.record_hold(self.admitted_at, now);
            st.dispatch_one(now)
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}
