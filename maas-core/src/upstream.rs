//! Balancing a model's requests over its pool of upstreams, with passive
//! health checks and a retry budget.
//!
//! [`Upstreams`] keeps one [`Pool`] per model (built from
//! [`Model::pool`](crate::model::Model::pool), rebuilt when the model
//! changes, keeping each remaining upstream's health). A request asks its
//! pool for an upstream with [`Pool::pick`] and reports how the upstream
//! answered on the [`Pick`] it got; dropping the pick ends the request on
//! that upstream.
//!
//! ## Balancing: weighted least outstanding requests
//!
//! Each candidate's effective weight is `weight / (in_flight + 1)`; the
//! pick is smooth weighted round robin over the effective weights (each
//! candidate's credit grows by its effective weight, the one with the most
//! credit is chosen and pays the sum). When every upstream is idle this is
//! exactly weighted round robin (upstreams of weights 1 and 3 get 1/4 and
//! 3/4 of the requests, evenly interleaved); under load, busy upstreams are
//! chosen less. An upstream at its own `max_in_flight` is not a candidate
//! while another one has room.
//!
//! ## Passive health
//!
//! An upstream that fails ([`Outcome::Failed`]: could not be reached,
//! answered 5xx, or timed out) [`BalancerConfig::failures_to_eject`] times
//! in a row is ejected for a backoff period
//! ([`BalancerConfig::base_ejection`], doubling with each ejection since it
//! was last healthy, at most [`BalancerConfig::max_ejection`]). When the
//! period ends it is half-open: the next request it is picked for is its
//! probe (one at a time); success makes it healthy again, failure ejects
//! it again for longer. When every upstream is ejected, [`Pool::pick`]
//! answers `None` and [`Pool::retry_after`] says when the first probe may
//! go: the gateway then falls back to another model, or refuses with 503.
//!
//! ## Retry budget
//!
//! A request whose upstream failed before anything reached the client may
//! be retried once on another upstream ([`Pool::try_retry`]), while the
//! pool's retries over the last [`BalancerConfig::retry_window`] stay
//! below [`BalancerConfig::retry_ratio`] of its requests plus
//! [`BalancerConfig::min_retries`]: during a full outage retries add at
//! most that fraction to the load.
//!
//! Time comes from the [`Clock`](crate::clock::Clock); every decision is
//! O(upstreams) under the pool's one mutex, never held across an await.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{SharedClock, Timestamp};
use crate::model::{Model, Upstream};

/// Settings of balancing, health and retries.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BalancerConfig {
    /// Failures in a row that eject an upstream. Default 5.
    pub failures_to_eject: u32,
    /// The first ejection's length. Default 10 s.
    pub base_ejection: Duration,
    /// The longest ejection. Default 300 s.
    pub max_ejection: Duration,
    /// Retries allowed per request over the window. Default 0.2.
    pub retry_ratio: f64,
    /// Retries allowed per window whatever the traffic. Default 3.
    pub min_retries: u32,
    /// The window the retry budget counts over. Default 10 s.
    pub retry_window: Duration,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            failures_to_eject: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            retry_ratio: 0.2,
            min_retries: 3,
            retry_window: Duration::from_secs(10),
        }
    }
}

/// How an upstream answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It answered (any status below 500).
    Answered,
    /// It could not be reached, answered 5xx or timed out.
    Failed,
}

/// The pools of every model served so far. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Upstreams {
    inner: Arc<UpstreamsInner>,
}

#[derive(Debug)]
struct UpstreamsInner {
    config: BalancerConfig,
    clock: SharedClock,
    pools: RwLock<crate::FastMap<String, Arc<Pool>>>,
}

/// Identifies the model record a pool was built from.
type Built = (Timestamp, Timestamp, u64);

fn built(model: &Model) -> Built {
    (model.created_at, model.updated_at, model.version)
}

impl Upstreams {
    /// No pools yet; balancing with `config`, timing with `clock`.
    pub fn new(config: BalancerConfig, clock: SharedClock) -> Self {
        Upstreams {
            inner: Arc::new(UpstreamsInner {
                config,
                clock,
                pools: RwLock::default(),
            }),
        }
    }

    /// A reference that does not keep the pools alive.
    pub fn downgrade(&self) -> WeakUpstreams {
        WeakUpstreams(Arc::downgrade(&self.inner))
    }

    /// The settings.
    pub fn config(&self) -> &BalancerConfig {
        &self.inner.config
    }

    /// The pool of `model`: the one built for this version of it, or a new
    /// one (an upstream it keeps keeps its health).
    pub fn pool(&self, model: &Model) -> Arc<Pool> {
        let key = built(model);
        let current = |pools: &crate::FastMap<String, Arc<Pool>>| {
            pools
                .get(&model.id)
                .filter(|p| p.built == key)
                .map(Arc::clone)
        };
        let found = current(
            &self
                .inner
                .pools
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if let Some(p) = found {
            return p;
        }
        let mut pools = self
            .inner
            .pools
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Built meanwhile by another request?
        if let Some(p) = current(&pools) {
            return p;
        }
        let old = pools.get(&model.id).cloned();
        let pool = Arc::new(Pool::new(
            model,
            key,
            self.inner.config,
            Arc::clone(&self.inner.clock),
            old.as_deref(),
        ));
        pools.insert(model.id.clone(), Arc::clone(&pool));
        pool
    }

    /// Forgets pools of models not in `models` (deleted ones).
    pub fn retain(&self, models: &[&str]) {
        self.inner
            .pools
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|id, _| models.contains(&id.as_str()));
    }

    /// The state of every pool, by model id.
    pub fn snapshot(&self) -> Vec<PoolSnapshot> {
        let pools: Vec<Arc<Pool>> = self
            .inner
            .pools
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut out: Vec<PoolSnapshot> = pools.iter().map(|p| p.snapshot()).collect();
        out.sort_by(|a, b| a.model.cmp(&b.model));
        out
    }
}

/// [`Upstreams`] without keeping it alive ([`Upstreams::downgrade`]).
#[derive(Debug, Clone)]
pub struct WeakUpstreams(std::sync::Weak<UpstreamsInner>);

impl WeakUpstreams {
    /// The pools, while something else holds them.
    pub fn upgrade(&self) -> Option<Upstreams> {
        self.0.upgrade().map(|inner| Upstreams { inner })
    }

    /// Whether both refer to the same pools.
    pub fn same(&self, other: &WeakUpstreams) -> bool {
        std::sync::Weak::ptr_eq(&self.0, &other.0)
    }
}

/// One model's upstreams (see the [module](self) docs).
#[derive(Debug)]
pub struct Pool {
    model: Arc<str>,
    built: Built,
    config: BalancerConfig,
    clock: SharedClock,
    state: Mutex<PoolState>,
}

#[derive(Debug)]
struct PoolState {
    upstreams: Vec<UpState>,
    budget: RetryBudget,
}

#[derive(Debug, Clone)]
struct UpState {
    url: Arc<str>,
    weight: u32,
    max_in_flight: Option<u32>,
    in_flight: u32,
    /// Smooth weighted round robin credit.
    credit: f64,
    failures: u32,
    /// Set while ejected; past it, half-open.
    ejected_until: Option<Timestamp>,
    /// Ejections since it was last healthy (the backoff's exponent).
    ejections: u32,
    probing: bool,
    requests: u64,
    errors: u64,
    ejections_total: u64,
}

impl UpState {
    fn new(u: &Upstream) -> Self {
        UpState {
            url: Arc::from(u.url.as_str()),
            weight: u.weight.max(1),
            max_in_flight: u.max_in_flight,
            in_flight: 0,
            credit: 0.0,
            failures: 0,
            ejected_until: None,
            ejections: 0,
            probing: false,
            requests: 0,
            errors: 0,
            ejections_total: 0,
        }
    }

    /// Whether it may be picked now, and whether that pick is a probe.
    fn candidate(&self, now: Timestamp) -> Option<bool> {
        match self.ejected_until {
            None => Some(false),
            Some(t) if t <= now && !self.probing => Some(true),
            Some(_) => None,
        }
    }

    fn has_room(&self) -> bool {
        self.max_in_flight.is_none_or(|m| self.in_flight < m)
    }
}

#[derive(Debug, Default)]
struct RetryBudget {
    window_start: Option<Timestamp>,
    requests: u64,
    retries: u64,
    prev_requests: u64,
    prev_retries: u64,
}

impl RetryBudget {
    /// Moves the window to `now`.
    fn roll(&mut self, now: Timestamp, window: Duration) {
        let w = i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1);
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.as_millis() - start.as_millis();
        if elapsed >= 2 * w {
            *self = RetryBudget {
                window_start: Some(now),
                ..RetryBudget::default()
            };
        } else if elapsed >= w {
            self.prev_requests = self.requests;
            self.prev_retries = self.retries;
            self.requests = 0;
            self.retries = 0;
            self.window_start = Some(Timestamp::from_millis(start.as_millis() + w));
        }
    }

    /// Requests and retries over the last window (the previous window
    /// weighted by how much of it is still inside).
    fn counts(&self, now: Timestamp, window: Duration) -> (f64, f64) {
        let w = window.as_millis().max(1) as f64;
        let into = self
            .window_start
            .map_or(0.0, |s| (now.as_millis() - s.as_millis()) as f64);
        let keep = (1.0 - into / w).clamp(0.0, 1.0);
        (
            self.requests as f64 + keep * self.prev_requests as f64,
            self.retries as f64 + keep * self.prev_retries as f64,
        )
    }
}

/// What [`Pool::pick`] chose: an upstream for one attempt of a request.
/// Report the answer with [`Self::record`]; drop it when the request is
/// done with that upstream (its body read to the end, or abandoned).
#[derive(Debug)]
pub struct Pick {
    pool: Arc<Pool>,
    index: usize,
    url: Arc<str>,
    probe: bool,
    recorded: bool,
}

impl Pool {
    fn new(
        model: &Model,
        built: Built,
        config: BalancerConfig,
        clock: SharedClock,
        old: Option<&Pool>,
    ) -> Self {
        let previous: Vec<UpState> = old.map(|o| o.lock().upstreams.clone()).unwrap_or_default();
        let upstreams = model
            .pool()
            .iter()
            .map(|u| {
                let mut s = UpState::new(u);
                if let Some(p) = previous.iter().find(|p| *p.url == *u.url) {
                    // Health and counts carry over; requests in flight stay
                    // counted by the old pool.
                    s.failures = p.failures;
                    s.ejected_until = p.ejected_until;
                    s.ejections = p.ejections;
                    s.requests = p.requests;
                    s.errors = p.errors;
                    s.ejections_total = p.ejections_total;
                }
                s
            })
            .collect();
        Pool {
            model: Arc::from(model.id.as_str()),
            built,
            config,
            clock,
            state: Mutex::new(PoolState {
                upstreams,
                budget: RetryBudget::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The model it serves.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// [`Self::model`], shared.
    pub(crate) fn model_id(&self) -> &Arc<str> {
        &self.model
    }

    /// How many upstreams it has.
    pub fn len(&self) -> usize {
        self.lock().upstreams.len()
    }

    /// Whether it has no upstream (never, for a validated model).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Picks an upstream for a request's first attempt (counted in the
    /// retry budget), or `None` when every upstream is ejected.
    pub fn pick(self: &Arc<Self>) -> Option<Pick> {
        self.choose(None, true)
    }

    /// Picks an upstream other than `failed`'s for a retry, if the retry
    /// budget allows one and another upstream may be picked. Consumes
    /// nothing when it answers `None`.
    pub fn try_retry(self: &Arc<Self>, failed: &Pick) -> Option<Pick> {
        self.choose(Some(failed.index), false)
    }

    fn choose(self: &Arc<Self>, exclude: Option<usize>, first: bool) -> Option<Pick> {
        let now = self.clock.now();
        let cfg = &self.config;
        let mut st = self.lock();
        st.budget.roll(now, cfg.retry_window);
        if !first {
            let (requests, retries) = st.budget.counts(now, cfg.retry_window);
            if retries + 1.0 > cfg.retry_ratio * requests + f64::from(cfg.min_retries) {
                return None;
            }
        }
        let eligible = |i: usize, u: &UpState| Some(i) != exclude && u.candidate(now).is_some();
        let any_room = st
            .upstreams
            .iter()
            .enumerate()
            .any(|(i, u)| eligible(i, u) && u.has_room());
        let mut total = 0.0;
        let mut best: Option<usize> = None;
        for i in 0..st.upstreams.len() {
            let u = &st.upstreams[i];
            if !eligible(i, u) || (any_room && !u.has_room()) {
                continue;
            }
            let eff = f64::from(u.weight) / f64::from(u.in_flight.saturating_add(1));
            total += eff;
            st.upstreams[i].credit += eff;
            if best.is_none_or(|b| st.upstreams[i].credit > st.upstreams[b].credit) {
                best = Some(i);
            }
        }
        let best = best?;
        if first {
            st.budget.requests += 1;
        } else {
            st.budget.retries += 1;
        }
        let u = &mut st.upstreams[best];
        u.credit -= total;
        u.in_flight = u.in_flight.saturating_add(1);
        u.requests += 1;
        let probe = u.ejected_until.is_some();
        if probe {
            u.probing = true;
        }
        let url = Arc::clone(&u.url);
        drop(st);
        Some(Pick {
            pool: Arc::clone(self),
            index: best,
            url,
            probe,
            recorded: false,
        })
    }

    /// Whether some upstream may be picked now (healthy, or half-open with
    /// no probe running).
    pub fn available(&self) -> bool {
        let now = self.clock.now();
        self.lock()
            .upstreams
            .iter()
            .any(|u| u.candidate(now).is_some())
    }

    /// When every upstream is ejected: how long until the first may be
    /// probed (zero while a probe runs). `None` when one may be picked now.
    pub fn retry_after(&self) -> Option<Duration> {
        let now = self.clock.now();
        let st = self.lock();
        if st.upstreams.iter().any(|u| u.candidate(now).is_some()) {
            return None;
        }
        let wait = st
            .upstreams
            .iter()
            .filter_map(|u| u.ejected_until)
            .map(|t| t.as_millis() - now.as_millis())
            .min()
            .unwrap_or(0)
            .max(0);
        Some(Duration::from_millis(u64::try_from(wait).unwrap_or(0)))
    }

    /// The pool's state.
    pub fn snapshot(&self) -> PoolSnapshot {
        let now = self.clock.now();
        let st = self.lock();
        PoolSnapshot {
            model: self.model.to_string(),
            upstreams: st
                .upstreams
                .iter()
                .map(|u| UpstreamSnapshot {
                    url: u.url.to_string(),
                    weight: u.weight,
                    max_in_flight: u.max_in_flight,
                    in_flight: u.in_flight,
                    state: match u.ejected_until {
                        None => HealthState::Healthy,
                        Some(t) if t <= now => HealthState::HalfOpen,
                        Some(_) => HealthState::Ejected,
                    },
                    ejected_until: u.ejected_until.filter(|t| *t > now),
                    consecutive_failures: u.failures,
                    requests: u.requests,
                    errors: u.errors,
                    ejections: u.ejections_total,
                })
                .collect(),
        }
    }

    fn record(&self, index: usize, probe: bool, outcome: Outcome) -> Option<Ejected> {
        let now = self.clock.now();
        let cfg = &self.config;
        let mut st = self.lock();
        let u = st.upstreams.get_mut(index)?;
        if probe {
            u.probing = false;
        }
        match outcome {
            Outcome::Answered => {
                u.failures = 0;
                if probe || u.ejected_until.is_some_and(|t| t <= now) {
                    u.ejected_until = None;
                    u.ejections = 0;
                }
                None
            }
            Outcome::Failed => {
                u.errors += 1;
                u.failures = u.failures.saturating_add(1);
                let eject = if probe {
                    true
                } else {
                    u.ejected_until.is_none() && u.failures >= cfg.failures_to_eject.max(1)
                };
                if !eject {
                    return None;
                }
                let factor = 1u32.checked_shl(u.ejections.min(16)).unwrap_or(u32::MAX);
                let length = cfg
                    .base_ejection
                    .saturating_mul(factor)
                    .min(cfg.max_ejection);
                let until = Timestamp::from_millis(
                    now.as_millis()
                        .saturating_add(i64::try_from(length.as_millis()).unwrap_or(i64::MAX)),
                );
                u.ejected_until = Some(until);
                u.ejections = u.ejections.saturating_add(1);
                u.ejections_total += 1;
                Some(Ejected {
                    url: Arc::clone(&u.url),
                    length,
                })
            }
        }
    }

    fn release(&self, index: usize, probe: bool, recorded: bool) {
        let mut st = self.lock();
        if let Some(u) = st.upstreams.get_mut(index) {
            u.in_flight = u.in_flight.saturating_sub(1);
            if probe && !recorded {
                // The probe ended without an answer (cancelled): the next
                // request probes.
                u.probing = false;
            }
        }
    }
}

/// An upstream just ejected: which, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ejected {
    /// Its URL.
    pub url: Arc<str>,
    /// How long it is out.
    pub length: Duration,
}

impl Pick {
    /// The upstream's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The shared URL (for metric labels).
    pub fn url_arc(&self) -> &Arc<str> {
        &self.url
    }

    /// Whether this attempt probes an upstream that was ejected.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The pool it was picked from.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Reports how the upstream answered (the first report counts):
    /// failures in a row eject it; an answer makes it healthy again. Tells
    /// which upstream this ejected, if it did.
    pub fn record(&mut self, outcome: Outcome) -> Option<Ejected> {
        if self.recorded {
            return None;
        }
        self.recorded = true;
        self.pool.record(self.index, self.probe, outcome)
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.pool.release(self.index, self.probe, self.recorded);
    }
}

/// The state of one model's upstreams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolSnapshot {
    /// The model.
    pub model: String,
    /// Its upstreams, in the model's order.
    pub upstreams: Vec<UpstreamSnapshot>,
}

/// An upstream's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum HealthState {
    /// Serving.
    Healthy,
    /// Out until `ejected_until`.
    Ejected,
    /// Its ejection is over: the next request picked for it probes it.
    HalfOpen,
}

/// One upstream in a [`PoolSnapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpstreamSnapshot {
    /// Its URL.
    pub url: String,
    /// Its weight.
    pub weight: u32,
    /// Its own limit, if any.
    pub max_in_flight: Option<u32>,
    /// Requests on it now.
    pub in_flight: u32,
    /// Its health.
    pub state: HealthState,
    /// While ejected: until when.
    pub ejected_until: Option<Timestamp>,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Attempts sent to it (by this node, since it started).
    pub requests: u64,
    /// Attempts that failed.
    pub errors: u64,
    /// Times it was ejected.
    pub ejections: u64,
}
