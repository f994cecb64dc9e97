//! The per-request path of an inference gateway, in three calls:
//!
//! 1. [`Gateway::authenticate`]: a bearer credential (a maas token, an
//!    identity token or a user's API key) becomes a [`Caller`]: who, at which
//!    tier, with which key. The caller is served as the tenant of its user
//!    name, created on first use (default weight, default group) so
//!    operators can set its weight, group and quota later. Its existence is
//!    checked again after [`TENANT_RECHECK`], so a tenant deleted through
//!    the management API (on this node or another) comes back on its next
//!    request within that time.
//! 2. [`Gateway::admit`]: the model must exist and be in the caller's tier;
//!    the request's tokens are reserved against every limit (all or none);
//!    a repeated non-streaming request may be answered from the response
//!    cache; otherwise the request waits (bounded) for a fair-share slot.
//! 3. [`Admitted::complete`]: the actual usage reconciles the reservation,
//!    charges fair share, frees the slot and is recorded in the usage
//!    ledger. Code that cannot await (a response body's `poll_frame`) calls
//!    [`Admitted::complete_detached`] instead. An [`Admitted`] dropped
//!    without completing (the client went away, the task was cancelled)
//!    does the same with the output counted so far, marked estimated and
//!    cancelled: nothing leaks. [`Gateway::settled`] waits for settlements
//!    left to the background.
//!
//! `maas-http`'s tower layer and gateway router are built on these calls;
//! a gateway that is not tower-based (Pingora, hyper directly) calls them
//! itself (see `examples/embed_core.rs`).

mod account;
pub mod activity;
mod cache;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub use account::{Account, AccountTier, CallerKind};
pub use cache::{CacheKey, MAX_CACHED_BODY, ResponseCache};

use crate::admission::{
    ActualUsage, AdmissionLimits, AdmissionRequest, BudgetScope, BudgetWarning, Denied, LimitKind,
    RateHeaders, Reservation,
};
use crate::audit::Actor;
use crate::clock::{SharedClock, Timestamp};
use crate::error::{Error, Result};
use crate::fairshare::{FairShare, Permit, Rejected, Request};
use crate::id::KeyId;
use crate::identity::{Authenticator, Identity};
use crate::model::{Model, ModelApi, ModelService};
use crate::scheduling::Scheduling;
use crate::storage::Storage;
use crate::tenant::NewTenant;
use crate::tier::{Tier, TierService};
use crate::upstream::{BalancerConfig, Upstreams};
use crate::usage::{CacheOutcome, RequestOutcome, UsageLedger, UsageSums};
use crate::userkeys::UserKeys;
use crate::webhook::{Event, EventType, Webhooks};

/// The message of a 403 for a model outside the caller's tier (seed 002).
pub const ACCESS_DENIED: &str = "Insufficient permissions for this model";

/// What a [`Gateway`] is made of.
#[derive(Debug, Clone)]
pub struct GatewayServices {
    /// Identity credentials: maas tokens, OIDC tokens, configured tokens.
    pub identity: Arc<dyn Authenticator>,
    /// Users' API keys (`maas_…`), tried first; `None` accepts none.
    pub user_keys: Option<UserKeys>,
    /// Tiers, resolved from the caller's groups.
    pub tiers: TierService,
    /// The model catalog.
    pub models: ModelService,
    /// Rate limits, quotas and budgets.
    pub admission: AdmissionLimits,
    /// Fair share, and the tenants created on first use.
    pub scheduling: Scheduling,
    /// Where usage is recorded; `None` records nothing.
    pub usage: Option<UsageLedger>,
    /// Webhooks told when a budget passes its soft limit or is exhausted
    /// (in the background, once per budget period), if any.
    pub webhooks: Option<Webhooks>,
}

impl GatewayServices {
    /// Every service over `storage` with default settings and the system
    /// clock: user keys, tiers, models, limits, a fair-share scheduler of
    /// [`FairShareConfig::default`](crate::fairshare::FairShareConfig), and
    /// a usage ledger (call its
    /// [`spawn_flusher`](UsageLedger::spawn_flusher) to persist usage).
    pub fn defaults(storage: &Storage, identity: Arc<dyn Authenticator>) -> Result<Self> {
        let clock: SharedClock = Arc::new(crate::clock::SystemClock);
        let keys = crate::key::KeyService::new(storage.clone(), crate::key::KeyHasher::random());
        let fairshare = FairShare::with_clock(
            crate::fairshare::FairShareConfig::default(),
            Arc::clone(&clock),
        )?;
        Ok(GatewayServices {
            identity,
            user_keys: Some(UserKeys::new(keys)),
            tiers: TierService::new(storage.clone()),
            models: ModelService::new(storage.clone()),
            admission: AdmissionLimits::new(storage.clone()),
            scheduling: Scheduling::new(storage.clone(), fairshare, Arc::clone(&clock)),
            usage: Some(UsageLedger::new(
                storage,
                crate::usage::UsageConfig::default(),
            )),
            webhooks: None,
        })
    }
}

/// How long the gateway trusts that a tenant it created or found still
/// exists before checking the store again (one read per tenant per period).
pub const TENANT_RECHECK: Duration = Duration::from_secs(60);

/// At most this many tenants are remembered as existing; beyond it the
/// stale entries, then all, are forgotten (and checked again on use).
const KNOWN_TENANTS_MAX: usize = 100_000;

/// The per-request path (see the [module](self) docs). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    services: GatewayServices,
    clock: SharedClock,
    cache: ResponseCache,
    upstreams: Upstreams,
    activity: activity::Activity,
    /// Tenants known to exist in the store, with when that was checked.
    known_tenants: Mutex<HashMap<String, Timestamp>>,
    /// Budget events this node has queued (their once-keys), so requests
    /// past a soft limit do not each spawn a store read to learn it again.
    budget_events: Mutex<std::collections::HashSet<String>>,
    /// Settlements of detached or dropped requests still running in the
    /// background.
    settling: AtomicUsize,
    settled: Notify,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    /// Who (for an API key: its owner, with the groups of its creation).
    pub identity: Identity,
    /// The tier their groups resolve to.
    pub tier: Arc<Tier>,
    /// The API key used, if the credential was one.
    pub key_id: Option<KeyId>,
}

impl Caller {
    /// The tenant served: the identity's user name.
    pub fn tenant(&self) -> &str {
        &self.identity.user
    }
}

/// An inference request, as admission needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceRequest<'a> {
    /// The model id asked for.
    pub model: &'a str,
    /// Estimated prompt tokens (see
    /// [`estimate_prompt_tokens`](crate::admission::estimate_prompt_tokens)).
    pub prompt_tokens: u64,
    /// The client's `max_tokens`, if any.
    pub max_tokens: Option<u64>,
    /// The response-cache key, for requests that may be answered from the
    /// cache (non-streaming ones); `None` bypasses the cache.
    pub cache_key: Option<CacheKey>,
    /// The API the request will be sent upstream in: a fallback model must
    /// speak it.
    pub api: ModelApi,
}

/// Why a request was not admitted, in a way worth telling the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// A rate limit, quota or budget (429 with `Retry-After`).
    Limit(Denied),
    /// The fair-share queue was full or the wait timed out (429 or 503).
    Queue {
        /// The scheduler's answer.
        rejected: Rejected,
        /// The caller's x-ratelimit values (its reservation was released).
        headers: RateHeaders,
    },
    /// Every upstream of the model (and of each fallback the caller may
    /// use) is ejected after failing (503 with `Retry-After`).
    NoUpstream {
        /// The model asked for.
        model: String,
        /// When the first upstream may be probed again.
        retry_after: Duration,
    },
}

/// An admitted request: answered from the cache, or holding a slot.
#[derive(Debug)]
pub enum Admission {
    /// Run it upstream, then [`Admitted::complete`].
    Admitted(Box<Admitted>),
    /// The response cache had the answer; it is already accounted for.
    Cached(CachedAnswer),
}

/// An answer from the response cache.
#[derive(Debug, Clone)]
pub struct CachedAnswer {
    /// The cached response body.
    pub body: Arc<[u8]>,
    /// The x-ratelimit values.
    pub headers: RateHeaders,
    /// The model.
    pub model: Arc<Model>,
}

/// What a request used, when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Prompt tokens served from the upstream's prompt cache.
    pub cached_tokens: u64,
    /// Whether the counts are estimates (the upstream reported none).
    pub estimated: bool,
    /// How it ended. [`RequestOutcome::Error`] with no output gives the
    /// whole reservation back (the upstream failed: the caller is not
    /// charged); a failure midway keeps what was produced charged.
    pub outcome: RequestOutcome,
}

impl Completion {
    /// A successful request that used these tokens, as the upstream reported.
    pub fn success(input_tokens: u64, output_tokens: u64) -> Self {
        Completion {
            input_tokens,
            output_tokens,
            cached_tokens: 0,
            estimated: false,
            outcome: RequestOutcome::Success,
        }
    }

    /// A request that failed upstream before producing anything.
    pub fn failed() -> Self {
        Completion {
            input_tokens: 0,
            output_tokens: 0,
            cached_tokens: 0,
            estimated: false,
            outcome: RequestOutcome::Error,
        }
    }
}

impl Gateway {
    /// A gateway over `services`, timing with `clock`.
    pub fn new(services: GatewayServices, clock: SharedClock) -> Self {
        Self::with_balancing(services, clock, BalancerConfig::default())
    }

    /// A gateway over `services` whose models' upstreams are balanced with
    /// `balancing` (health checks, retry budget).
    pub fn with_balancing(
        services: GatewayServices,
        clock: SharedClock,
        balancing: BalancerConfig,
    ) -> Self {
        Gateway {
            inner: Arc::new(Inner {
                services,
                upstreams: Upstreams::new(balancing, Arc::clone(&clock)),
                activity: activity::Activity::default(),
                clock,
                cache: ResponseCache::new(),
                known_tenants: Mutex::new(HashMap::new()),
                budget_events: Mutex::new(std::collections::HashSet::new()),
                settling: AtomicUsize::new(0),
                settled: Notify::new(),
            }),
        }
    }

    /// The services it runs on.
    pub fn services(&self) -> &GatewayServices {
        &self.inner.services
    }

    /// The fair-share scheduler.
    pub fn fair_share(&self) -> &FairShare {
        self.inner.services.scheduling.fairshare()
    }

    /// Counts an answer of HTTP `status` in [`Self::activity`] (the tower
    /// layer does, for every inference answer).
    pub fn record_answer(&self, status: u16) {
        self.inner.activity.record(self.now(), status);
    }

    /// The answers of the last minute: all, refused (429), failed (5xx).
    pub fn activity(&self) -> activity::Minute {
        self.inner.activity.last_minute(self.now())
    }

    /// The models' pools of upstreams (balancing, health).
    pub fn upstreams(&self) -> &Upstreams {
        &self.inner.upstreams
    }

    /// The response cache.
    pub fn cache(&self) -> &ResponseCache {
        &self.inner.cache
    }

    /// The time on the gateway's clock.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// Authenticates `credential` (the bearer token) and resolves the
    /// caller's tier ([`TierService::tier_of`]: a user's groups, or a
    /// tenant key's tenant). Invalid credentials are
    /// [`Error::Unauthenticated`]; a caller whose groups map to no tier is
    /// [`Error::Forbidden`]; an API
    /// key out of uses or rate-limited is [`Error::QuotaExceeded`] or
    /// [`Error::RateLimited`].
    pub async fn authenticate(&self, credential: &str) -> Result<Caller> {
        let s = &self.inner.services;
        let mut found = None;
        if let Some(keys) = &s.user_keys {
            found = keys.authenticate_key(credential).await?;
        }
        let (identity, key_id) = match found {
            Some((identity, key)) => (identity, Some(key)),
            // Through the `dyn` itself: `Arc`'s own impl would box the
            // future once more.
            None => match (*s.identity).authenticate(credential).await? {
                Some(identity) => (identity, None),
                None => {
                    return Err(Error::Unauthenticated {
                        reason: "credential not recognized".into(),
                    });
                }
            },
        };
        let tier = match s.tiers.tier_of(&identity).await {
            Ok(t) => t,
            Err(e) if e.is_not_found() => {
                return Err(Error::Forbidden {
                    reason: "no tier is mapped to your groups".into(),
                });
            }
            Err(e) => return Err(e),
        };
        self.ensure_tenant(&identity.user).await?;
        Ok(Caller {
            identity,
            tier,
            key_id,
        })
    }

    /// Creates tenant `name` on its first use (default weight and group),
    /// and again when it was deleted since it was last checked.
    async fn ensure_tenant(&self, name: &str) -> Result<()> {
        let now = self.now();
        let fresh = |at: Timestamp| {
            at <= now && now.as_millis() - at.as_millis() < TENANT_RECHECK.as_millis() as i64
        };
        let known = self
            .inner
            .known_tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .copied();
        if known.is_some_and(fresh) {
            return Ok(());
        }
        let scheduling = &self.inner.services.scheduling;
        match scheduling.tenants().get_by_name(name).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                let new = NewTenant {
                    name: name.to_owned(),
                    ..NewTenant::default()
                };
                match scheduling.create_tenant(&Actor::system(), new).await {
                    // Created by a concurrent first request: as good.
                    Ok(_) | Err(Error::Conflict { .. }) => {}
                    // A name the catalog cannot hold (too long, control
                    // characters): served with fair share's defaults,
                    // without a record to configure.
                    Err(Error::InvalidInput { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        let mut known = self
            .inner
            .known_tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if known.len() >= KNOWN_TENANTS_MAX {
            // Bounded: stale entries go first; they are only re-checked.
            known.retain(|_, at| fresh(*at));
            if known.len() >= KNOWN_TENANTS_MAX {
                known.clear();
            }
        }
        known.insert(name.to_owned(), now);
        Ok(())
    }

    /// Model `name` if `caller` may use it now: [`Error::NotFound`] if it
    /// does not exist, [`Error::Forbidden`] ([`ACCESS_DENIED`]) outside the
    /// caller's tier, [`Error::Unavailable`] while it is not ready. What
    /// [`Self::admit`] checks first (for a request that reserves nothing,
    /// as counting tokens).
    pub async fn model_for(&self, caller: &Caller, name: &str) -> Result<Arc<Model>> {
        let model = self.inner.services.models.get_cached(name).await?;
        if !model.usable_by(&caller.tier) {
            return Err(Error::Forbidden {
                reason: ACCESS_DENIED.into(),
            });
        }
        if !model.ready {
            return Err(Error::unavailable(
                format!("model '{}' is not ready", model.id),
                true,
            ));
        }
        Ok(model)
    }

    /// Admits `req` of `caller`: model and access, limits, the response
    /// cache, then a fair-share slot of the model (waiting at most the
    /// scheduler's queue timeout). `Ok(Err(refused))` is a limit or the
    /// queue saying no; a model that does not exist is [`Error::NotFound`],
    /// one outside the tier [`Error::Forbidden`] ([`ACCESS_DENIED`]), one
    /// not ready [`Error::Unavailable`].
    ///
    /// When the model cannot serve — every upstream ejected, its queue full
    /// or its wait timed out — the request goes to the first of its
    /// `fallbacks` that exists, is ready, is usable by the caller's tier and
    /// speaks [`InferenceRequest::api`], with limits and budget checked for
    /// it; the [`Admitted`] then names the fallback as its model (usage and
    /// cost are recorded under it).
    pub async fn admit(
        &self,
        caller: &Caller,
        req: &InferenceRequest<'_>,
    ) -> Result<Result<Admission, Refused>> {
        let requested = self.model_for(caller, req.model).await?;
        let mut fallbacks = requested.fallbacks.iter();
        let mut model = Arc::clone(&requested);
        loop {
            let pool = self.inner.upstreams.pool(&model);
            let refused = if pool.available() {
                match self.admit_to(caller, req, &model, &pool).await? {
                    Ok(admission) => return Ok(Ok(admission)),
                    Err(refused @ Refused::Limit(_)) => return Ok(Err(refused)),
                    Err(refused) => refused,
                }
            } else {
                Refused::NoUpstream {
                    model: model.id.clone(),
                    retry_after: pool.retry_after().unwrap_or_default(),
                }
            };
            match self.next_fallback(caller, req, &mut fallbacks).await? {
                Some(f) => {
                    tracing::debug!(model = %model.id, fallback = %f.id, "falling back");
                    model = f;
                }
                None => return Ok(Err(refused)),
            }
        }
    }

    /// The next of `fallbacks` that `caller` may use for `req` now.
    async fn next_fallback(
        &self,
        caller: &Caller,
        req: &InferenceRequest<'_>,
        fallbacks: &mut std::slice::Iter<'_, String>,
    ) -> Result<Option<Arc<Model>>> {
        for name in fallbacks {
            match self.model_for(caller, name).await {
                Ok(m) if m.speaks(req.api) => return Ok(Some(m)),
                Ok(_) | Err(Error::NotFound { .. } | Error::Forbidden { .. }) => {}
                Err(e @ Error::Unavailable { .. }) => {
                    tracing::debug!(fallback = %name, error = %e, "fallback skipped");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// [`Self::admit`] to `model` itself (whose upstreams are `pool`):
    /// limits, cache, its slot.
    async fn admit_to(
        &self,
        caller: &Caller,
        req: &InferenceRequest<'_>,
        model: &Arc<Model>,
        pool: &crate::upstream::Pool,
    ) -> Result<Result<Admission, Refused>> {
        let s = &self.inner.services;
        let model = Arc::clone(model);
        let key_id = caller.key_id.as_ref().map(|k| k.to_string());
        let reservation = match s
            .admission
            .reserve(&AdmissionRequest {
                tenant: caller.tenant(),
                key_id: key_id.as_deref(),
                tier: &caller.tier,
                pricing: model.pricing.as_ref(),
                prompt_tokens: req.prompt_tokens,
                max_tokens: req.max_tokens,
            })
            .await?
        {
            Ok(r) => r,
            Err(denied) => {
                self.budget_exhausted(caller, &denied);
                return Ok(Err(Refused::Limit(denied)));
            }
        };
        self.budget_warnings(reservation.warnings());
        let headers = *reservation.headers();
        let cache_key = req.cache_key.filter(|_| model.cache.enabled);
        if let Some(key) = &cache_key {
            let hit = self
                .inner
                .cache
                .get(&model.id, &model.cache, key, self.now());
            if let Some(body) = hit {
                // Served without the upstream: the request counts, its
                // tokens are given back.
                // Boxed (as below): a few KB that the usual request's
                // future need not carry.
                Box::pin(reservation.reconcile(ActualUsage::default())).await?;
                self.record(
                    caller.tenant(),
                    key_id.as_deref(),
                    &model,
                    UsageSums::of_request(
                        RequestOutcome::Success,
                        (0, 0, 0),
                        false,
                        Some(CacheOutcome::Hit),
                        model.pricing.as_ref(),
                    ),
                );
                return Ok(Ok(Admission::Cached(CachedAnswer {
                    body,
                    headers,
                    model,
                })));
            }
        }
        let started = Instant::now();
        // The model's own slots; a tenant's service counts across models.
        let ask = Request::new(
            caller.tenant(),
            req.prompt_tokens,
            reservation.max_output_tokens(),
        )
        .in_pool(Arc::clone(pool.model_id()), model.capacity());
        let permit = match self.fair_share().acquire(ask).await {
            Ok(p) => p,
            Err(rejected) => {
                Box::pin(reservation.release()).await?;
                return Ok(Err(Refused::Queue { rejected, headers }));
            }
        };
        Ok(Ok(Admission::Admitted(Box::new(Admitted {
            gateway: self.clone(),
            tenant: Arc::clone(reservation.tenant()),
            key_id,
            model,
            reservation: Some(reservation),
            permit: Some(permit),
            prompt_tokens: req.prompt_tokens,
            output_seen: 0,
            queue_wait: started.elapsed(),
            cache_key,
            headers,
        }))))
    }

    /// Tells the webhooks, in the background and once per budget period,
    /// that the budget which refused `denied` is exhausted.
    fn budget_exhausted(&self, caller: &Caller, denied: &Denied) {
        let scope = match denied.kind {
            LimitKind::TenantBudget => BudgetScope::Tenant(caller.tenant().to_owned()),
            LimitKind::KeyBudget => match &caller.key_id {
                Some(k) => BudgetScope::Key(k.to_string()),
                None => return,
            },
            _ => return,
        };
        self.budget_event(EventType::BudgetExhausted, &scope, denied.reset, None);
    }

    /// As [`Self::budget_exhausted`], for budgets past their soft limit.
    fn budget_warnings(&self, warnings: &[BudgetWarning]) {
        for w in warnings {
            self.budget_event(
                EventType::BudgetSoftLimitReached,
                &w.scope,
                w.reset,
                Some(w.used_fraction),
            );
        }
    }

    fn budget_event(
        &self,
        kind: EventType,
        scope: &BudgetScope,
        reset: Timestamp,
        used_fraction: Option<f64>,
    ) {
        let Some(hooks) = self.inner.services.webhooks.clone() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (scope_name, subject) = match scope {
            BudgetScope::Tenant(n) => ("tenant", n.clone()),
            BudgetScope::Key(k) => ("key", k.clone()),
        };
        let once = format!(
            "{}:{}:{}",
            kind.as_str(),
            scope.record_id(),
            reset.as_millis()
        );
        {
            let mut seen = self
                .inner
                .budget_events
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if seen.contains(&once) {
                return;
            }
            if seen.len() >= KNOWN_TENANTS_MAX {
                seen.clear();
            }
            seen.insert(once.clone());
        }
        let mut data = serde_json::json!({
            "scope": scope_name,
            "subject": subject,
            "resets_at": reset,
        });
        if let Some(f) = used_fraction {
            data["used_fraction"] = serde_json::json!(f);
        }
        let event = Event::new(kind, self.now(), data);
        let gateway = self.clone();
        rt.spawn(async move {
            if let Err(e) = hooks.emit_once(&once, &event).await {
                tracing::warn!(error = %e, event = kind.as_str(), "webhook event not queued");
                // The next request past the limit tries again.
                gateway
                    .inner
                    .budget_events
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&once);
            }
        });
    }

    /// Waits until the reservations of requests completed without waiting
    /// ([`Admitted::complete_detached`], or dropped) and settled in the
    /// background are all settled (before shutting down, or in tests).
    pub async fn settled(&self) {
        loop {
            let notified = self.inner.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.settling.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Records one request's `sums` of `tenant` (with `key_id`) on
    /// `model`, now, if usage is recorded: into the bucket its
    /// [`UsageRecord`](crate::usage::UsageRecord) would go to, without
    /// building one (its names are borrowed).
    fn record(&self, tenant: &str, key_id: Option<&str>, model: &Model, sums: UsageSums) {
        if let Some(ledger) = &self.inner.services.usage {
            let currency = model.pricing.as_ref().map_or("", |p| p.currency.as_str());
            // A record the ledger refuses (an over-long name) is not worth
            // failing a served request for.
            let _ = ledger.record_parts(
                self.now(),
                [tenant, key_id.unwrap_or_default(), &model.id, currency],
                &sums,
            );
        }
    }
}

/// What a request that ended as `done` used, for its reservation: `None`
/// (everything given back) when it failed without producing anything.
fn usage_of(done: &Completion) -> Option<ActualUsage> {
    if done.outcome == RequestOutcome::Error && done.output_tokens == 0 {
        None
    } else {
        Some(ActualUsage {
            input_tokens: done.input_tokens,
            output_tokens: done.output_tokens,
            cached_tokens: done.cached_tokens,
        })
    }
}

/// A request holding its reservation and its fair-share slot. Complete it
/// with [`Self::complete`]; dropping it completes it as cancelled with the
/// output reported so far (see the [module](self) docs).
#[derive(Debug)]
pub struct Admitted {
    gateway: Gateway,
    tenant: Arc<str>,
    key_id: Option<String>,
    model: Arc<Model>,
    reservation: Option<Reservation>,
    permit: Option<Permit>,
    prompt_tokens: u64,
    output_seen: u64,
    queue_wait: Duration,
    cache_key: Option<CacheKey>,
    headers: RateHeaders,
}

impl Admitted {
    /// The model (its upstream, pricing, cache settings).
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The gateway that admitted it.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The tenant served.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The most output tokens the request may produce (forward it upstream
    /// as `max_tokens`).
    pub fn max_output_tokens(&self) -> u64 {
        self.reservation
            .as_ref()
            .map_or(0, Reservation::max_output_tokens)
    }

    /// The estimated prompt tokens admitted.
    pub fn prompt_tokens(&self) -> u64 {
        self.prompt_tokens
    }

    /// The x-ratelimit values after admission.
    pub fn headers(&self) -> &RateHeaders {
        &self.headers
    }

    /// How long the request waited for its slot.
    pub fn queue_wait(&self) -> Duration {
        self.queue_wait
    }

    /// Whether the answer may be stored in the response cache
    /// ([`Self::cache_answer`]).
    pub fn cacheable(&self) -> bool {
        self.cache_key.is_some()
    }

    /// Output tokens reported so far with [`Self::record_output`].
    pub fn output_tokens(&self) -> u64 {
        self.output_seen
    }

    /// Reports `tokens` more output while the answer streams: fair share is
    /// charged as it goes, and a request dropped midway is accounted with
    /// what was reported.
    pub fn record_output(&mut self, tokens: u64) {
        self.output_seen = self.output_seen.saturating_add(tokens);
        if let Some(p) = &mut self.permit {
            p.record_output(tokens);
        }
    }

    /// Keeps `body` as the answer to this request in the response cache, if
    /// it is cacheable.
    pub fn cache_answer(&self, body: Arc<[u8]>) {
        if let Some(key) = self.cache_key {
            let now = self.gateway.now();
            self.gateway
                .inner
                .cache
                .put(&self.model.id, &self.model.cache, key, body, now);
        }
    }

    /// Completes the request: reconciles its reservation with `done` (or
    /// releases it, for an error), charges fair share, frees the slot and
    /// records the usage.
    pub async fn complete(mut self, done: Completion) -> Result<()> {
        let Some(r) = self.finish(&done) else {
            return Ok(());
        };
        drop(self);
        // The store's settlement is boxed: its future is a few KB, and a
        // caller's future holding this one inline would be that much larger
        // (and copied whole where it is moved) on every request, not only
        // on those that complete here.
        Box::pin(Self::settle(r, done)).await
    }

    /// Completes the request without waiting, for callers that cannot
    /// await (a response body's `poll_frame`, `Drop`): the slot is freed and
    /// the usage recorded now, and the reservation is settled at once when
    /// the limits' store answers without waiting (the in-memory counters do),
    /// or else in a background task that [`Gateway::settled`] waits for.
    pub fn complete_detached(mut self, done: Completion) {
        self.settle_detached(&done);
    }

    fn settle_detached(&mut self, done: &Completion) {
        let Some(r) = self.finish(done) else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime: the reservation releases itself as it can.
            return drop(r);
        };
        // In-process counters: settled now, nothing to poll.
        let mut r = r;
        if r.settle_in_place(usage_of(done)) {
            return;
        }
        // A store failure here loses a give-back, never a charge beyond the
        // reservation.
        let mut settle = Box::pin(Self::settle(r, *done));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if settle.as_mut().poll(&mut cx).is_ready() {
            return;
        }
        // The store must wait: the task polls it again with a real waker.
        let inner = Arc::clone(&self.gateway.inner);
        inner.settling.fetch_add(1, Ordering::AcqRel);
        rt.spawn(async move {
            let _ = settle.await;
            inner.settling.fetch_sub(1, Ordering::AcqRel);
            inner.settled.notify_waiters();
        });
    }

    /// Settles `r` as `done` says: released when nothing was produced,
    /// reconciled otherwise.
    async fn settle(r: Reservation, done: Completion) -> Result<()> {
        match usage_of(&done) {
            None => r.release().await,
            Some(usage) => r.reconcile(usage).await,
        }
    }

    /// Frees the slot, records usage; gives the reservation back to settle.
    fn finish(&mut self, done: &Completion) -> Option<Reservation> {
        if let Some(mut p) = self.permit.take() {
            p.set_input_tokens(done.input_tokens);
            p.finish(done.output_tokens);
        }
        let reservation = self.reservation.take()?;
        self.gateway.record(
            &self.tenant,
            self.key_id.as_deref(),
            &self.model,
            UsageSums::of_request(
                done.outcome,
                (done.input_tokens, done.output_tokens, done.cached_tokens),
                done.estimated,
                self.cache_key.map(|_| CacheOutcome::Miss),
                self.model.pricing.as_ref(),
            ),
        );
        Some(reservation)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.reservation.is_none() {
            return;
        }
        let done = Completion {
            input_tokens: self.prompt_tokens,
            output_tokens: self.output_seen,
            cached_tokens: 0,
            estimated: true,
            outcome: RequestOutcome::Cancelled,
        };
        self.settle_detached(&done);
    }
}
