//! Admission limits for inference: before a request is forwarded, its
//! estimated tokens (and cost) are reserved against every limit that applies,
//! all or none; when it completes the reservation is reconciled with what it
//! actually used; when it fails or is cancelled, released.
//!
//! The limits of one request:
//! - the tier's requests per minute, per identity;
//! - the tier's tokens per minute, per identity;
//! - the tenant's tokens-per-minute quota ([`Tenant::tokens_per_minute`]);
//! - the tenant's and the key's money [`Budget`]s, per calendar period.
//!
//! Minute limits are sliding windows of 60 s; budgets count nano-units of
//! their currency per UTC day, week or month. Because every limit takes the
//! request's whole estimate before the request runs, the sum of admitted
//! reservations never exceeds a limit, whatever the concurrency and however
//! many nodes share the store. A request's output is bounded by the
//! estimate ([`Reservation::max_output_tokens`]; the gateway passes it
//! upstream as `max_tokens`), so only a prompt estimated too low can make a
//! request use more than it reserved; the excess is then charged (and delays
//! later requests) rather than forgotten.
//!
//! [`Tenant::tokens_per_minute`]: crate::tenant::Tenant::tokens_per_minute

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::audit::Actor;
use crate::catalog::{self, SnapshotCell};
use crate::clock::{Clock, SharedClock, SystemClock, Timestamp};
use crate::counter::{
    CounterKey, Decision, LimitOp, LimitOpRef, LimitSpec, LocalCounters, Period, PeriodSpec,
    SettleOp, SlidingSpec, WindowSpec,
};
use crate::error::{Error, Result};
use crate::model::Pricing;
use crate::storage::Storage;
use crate::tier::Tier;
use crate::usage::{UsageBucket, billed_nanos, nanos_to_amount, worst_case_nanos};
use crate::validate;

/// How long a budget hold of a request that is never settled counts as
/// `reserved` at most (holds are leases aligned on multiples of this since
/// the epoch; a request still running at a boundary shows as spent from
/// then until it settles). An hour: longer than any request's upstream
/// timeout.
pub const HOLD_LEASE: Duration = Duration::from_secs(3600);
const HOLD_LEASE_MS: u64 = 3_600_000;

/// The record kind of [`Budget`]s.
pub const BUDGET_KIND: &str = "budget";
const MINUTE_MS: u64 = 60_000;
const NANOS: f64 = 1e9;

/// Which limit a request counted against (and, when denied, which refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// The tier's requests per minute.
    Requests,
    /// The tier's tokens per minute.
    Tokens,
    /// The tenant's tokens-per-minute quota.
    TenantTokens,
    /// The tenant's budget.
    TenantBudget,
    /// The key's budget.
    KeyBudget,
}

impl LimitKind {
    /// A short name, e.g. `tokens_per_minute`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests_per_minute",
            LimitKind::Tokens => "tokens_per_minute",
            LimitKind::TenantTokens => "tenant_tokens_per_minute",
            LimitKind::TenantBudget => "tenant_budget",
            LimitKind::KeyBudget => "key_budget",
        }
    }
}

/// Who a budget applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "scope", content = "subject", rename_all = "lowercase")]
pub enum BudgetScope {
    /// A tenant, by name.
    Tenant(String),
    /// An API key, by id.
    Key(String),
}

impl BudgetScope {
    /// The record id: `tenant:<name>` or `key:<id>`.
    pub fn record_id(&self) -> String {
        match self {
            BudgetScope::Tenant(n) => format!("tenant:{n}"),
            BudgetScope::Key(k) => format!("key:{k}"),
        }
    }

    fn counter_id(&self) -> String {
        match self {
            BudgetScope::Tenant(n) => format!("budget\x1ftenant\x1f{n}"),
            BudgetScope::Key(k) => format!("budget\x1fkey\x1f{k}"),
        }
    }

    /// The counter of what requests in flight hold of the budget (taken
    /// with the budget, given back whole at settlement): what separates
    /// `reserved` from `spent`.
    fn held_id(&self) -> String {
        match self {
            BudgetScope::Tenant(n) => format!("held\x1ftenant\x1f{n}"),
            BudgetScope::Key(k) => format!("held\x1fkey\x1f{k}"),
        }
    }
}

/// A money budget per calendar period, for a tenant or a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// `tenant:<name>` or `key:<id>`.
    pub id: String,
    /// Who it applies to.
    #[serde(flatten)]
    pub scope: BudgetScope,
    /// The most that may be spent per period, in `currency`.
    pub amount: f64,
    /// ISO 4217 code; only models priced in it count against the budget.
    pub currency: String,
    /// When the budget starts over.
    pub period: Period,
    /// The fraction of `amount` (0 < f ≤ 1) past which admissions carry a
    /// [`BudgetWarning`]; `None` for no warning.
    #[serde(default)]
    pub soft_threshold: Option<f64>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last changed.
    pub updated_at: Timestamp,
    /// Optimistic-concurrency version.
    pub version: u64,
}

impl crate::versioned::Versioned for Budget {
    fn version(&self) -> u64 {
        self.version
    }
    fn set_version(&mut self, v: u64) {
        self.version = v;
    }
}

impl catalog::Entry for Budget {
    const KIND: &'static str = BUDGET_KIND;
    fn id(&self) -> &str {
        &self.id
    }
    fn created_at(&self) -> Timestamp {
        self.created_at
    }
}

/// What to set a budget to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewBudget {
    /// The most that may be spent per period (> 0).
    pub amount: f64,
    /// ISO 4217 code; default `USD`.
    #[serde(default)]
    pub currency: Option<String>,
    /// When the budget starts over.
    pub period: Period,
    /// Warn past this fraction of the amount (0 < f ≤ 1).
    #[serde(default)]
    pub soft_threshold: Option<f64>,
}

impl NewBudget {
    /// A budget with its soft limit given as an amount, as the management
    /// API takes it: [`Error::InvalidInput`] (`soft_limit`) unless it is
    /// greater than 0 and less than `amount` (the other fields are checked
    /// by [`AdmissionLimits::set_budget`]).
    pub fn with_soft_limit(
        amount: f64,
        currency: Option<String>,
        period: Period,
        soft_limit: Option<f64>,
    ) -> Result<Self> {
        let soft_threshold = match soft_limit {
            None => None,
            Some(soft) if soft.is_finite() && soft > 0.0 && soft < amount => Some(soft / amount),
            Some(_) => {
                return Err(Error::invalid(
                    "soft_limit",
                    "must be greater than 0 and less than amount",
                ));
            }
        };
        Ok(NewBudget {
            amount,
            currency,
            period,
            soft_threshold,
        })
    }
}

impl Budget {
    fn limit_nanos(&self) -> u64 {
        to_nanos(self.amount).max(1)
    }

    fn spec(&self) -> LimitSpec {
        LimitSpec::Period(PeriodSpec {
            limit: self.limit_nanos(),
            period: self.period,
        })
    }

    /// The spec of the [`BudgetScope::held_id`] counter: never refuses, and
    /// its holds are leases of at most [`HOLD_LEASE`]: a hold no settlement
    /// gave back (the node serving the request died) lapses at the next
    /// lease boundary, its money staying charged as reserved (the upstream
    /// may have run).
    fn held_spec(&self) -> LimitSpec {
        LimitSpec::Bucket(WindowSpec::fixed(u64::MAX, HOLD_LEASE_MS))
    }
}

fn to_nanos(amount: f64) -> u64 {
    let n = (amount * NANOS).round();
    if n.is_finite() && n > 0.0 {
        // Saturating float-to-int conversion.
        n as u64
    } else {
        0
    }
}

fn check_new_budget(new: &NewBudget) -> Result<String> {
    if !new.amount.is_finite() || new.amount <= 0.0 || new.amount > 1e9 {
        return Err(Error::invalid(
            "amount",
            "must be a number greater than 0 (at most 1e9)",
        ));
    }
    if let Some(f) = new.soft_threshold
        && !(f.is_finite() && f > 0.0 && f <= 1.0)
    {
        return Err(Error::invalid(
            "soft_threshold",
            "must be greater than 0 and at most 1",
        ));
    }
    let currency = new.currency.clone().unwrap_or_else(|| "USD".to_owned());
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Error::invalid(
            "currency",
            "must be a 3-letter upper-case currency code",
        ));
    }
    Ok(currency)
}

/// A request to admit.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionRequest<'a> {
    /// The tenant served (the identity's user, or the key's owner).
    pub tenant: &'a str,
    /// The API key used, if any (for its budget).
    pub key_id: Option<&'a str>,
    /// The caller's tier.
    pub tier: &'a Tier,
    /// The model's price, if it has one (for budgets).
    pub pricing: Option<&'a Pricing>,
    /// Estimated prompt tokens.
    pub prompt_tokens: u64,
    /// The `max_tokens` the client asked for, if any.
    pub max_tokens: Option<u64>,
}

/// Estimated prompt tokens of a prompt of `bytes` bytes of text: one token per
/// 4 bytes, rounded up (OpenAI's rule of thumb for English), at least 1.
pub fn estimate_prompt_tokens(bytes: usize) -> u64 {
    u64::try_from(bytes.div_ceil(4)).unwrap_or(u64::MAX).max(1)
}

/// The x-ratelimit values of a request: its requests limit and its tightest
/// tokens limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeaders {
    /// Requests per minute: limit, remaining, reset.
    pub requests: Decision,
    /// Tokens per minute (the tier's or the tenant's, whichever has less left).
    pub tokens: Decision,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The limit that refused.
    pub kind: LimitKind,
    /// That limit's capacity.
    pub limit: u64,
    /// What it has left.
    pub remaining: u64,
    /// What the request needed of it.
    pub requested: u64,
    /// When it resets (for `Retry-After`).
    pub reset: Timestamp,
    /// Seconds until `reset`, rounded up (at least 1).
    pub retry_after_secs: u64,
    /// False when the request can never fit (it needs more than the whole
    /// limit): retrying is pointless, ask for fewer tokens.
    pub retryable: bool,
    /// The x-ratelimit values at refusal.
    pub headers: RateHeaders,
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.retryable {
            write!(
                f,
                "{} exceeded: {} of {} left, {} needed; resets in {} s",
                self.kind.as_str(),
                self.remaining,
                self.limit,
                self.requested,
                self.retry_after_secs
            )
        } else {
            write!(
                f,
                "request needs {} but {} is {}",
                self.requested,
                self.kind.as_str(),
                self.limit
            )
        }
    }
}

impl From<Denied> for Error {
    fn from(d: Denied) -> Self {
        match d.kind {
            LimitKind::TenantBudget | LimitKind::KeyBudget => Error::QuotaExceeded {
                message: d.to_string(),
            },
            _ => Error::RateLimited {
                limit: d.limit,
                remaining: d.remaining,
                reset: d.reset,
            },
        }
    }
}

/// A budget past its soft threshold after an admission.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetWarning {
    /// Whose budget.
    pub scope: BudgetScope,
    /// The fraction of the budget used or reserved, 0..=1.
    pub used_fraction: f64,
    /// When its period ends.
    pub reset: Timestamp,
}

/// What a request actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ActualUsage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Of the prompt tokens, those served from the upstream's prompt cache
    /// (billed at the cached price).
    pub cached_tokens: u64,
}

/// The state of a budget in its current period.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetStatus {
    /// The budget.
    pub budget: Budget,
    /// Spent or reserved in this period, in its currency.
    pub used: f64,
    /// Of `used`: charged by completed requests.
    pub spent: f64,
    /// Of `used`: held by requests in flight (their worst case).
    pub reserved: f64,
    /// Left in this period.
    pub remaining: f64,
    /// When the period ends.
    pub reset: Timestamp,
}

/// A budget as the APIs show it: its settings, and what is spent, held
/// and left of it in the current period (amounts to the nano-unit the
/// counters keep).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BudgetView {
    /// `tenant` or `key`.
    pub scope: &'static str,
    /// The tenant's name or the key's id.
    pub subject: String,
    /// The most that may be spent per period.
    pub amount: f64,
    /// Its currency (ISO 4217); only models priced in it count.
    pub currency: String,
    /// `daily`, `weekly` (from Monday) or `monthly`, from 00:00 UTC.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub period: Period,
    /// Past this much spent or reserved, admissions warn; none if absent.
    pub soft_limit: Option<f64>,
    /// Charged in this period by completed requests.
    pub spent: f64,
    /// Held in this period by requests in flight (their worst case).
    pub reserved: f64,
    /// What is left: `amount - spent - reserved`, at least 0.
    pub left: f64,
    /// When the period ends and the budget starts over (unix ms).
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub resets_at: Timestamp,
    /// When the budget was last changed (unix ms).
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub updated_at: Timestamp,
}

/// An amount rounded to the nano-unit.
fn nano_rounded(x: f64) -> f64 {
    (x * NANOS).round() / NANOS
}

impl From<BudgetStatus> for BudgetView {
    fn from(st: BudgetStatus) -> Self {
        let b = st.budget;
        let (scope, subject) = match b.scope {
            BudgetScope::Tenant(n) => ("tenant", n),
            BudgetScope::Key(k) => ("key", k),
        };
        BudgetView {
            scope,
            subject,
            amount: b.amount,
            currency: b.currency,
            period: b.period,
            soft_limit: b.soft_threshold.map(|f| nano_rounded(f * b.amount)),
            spent: nano_rounded(st.spent),
            reserved: nano_rounded(st.reserved),
            left: nano_rounded(st.remaining),
            resets_at: st.reset,
            updated_at: b.updated_at,
        }
    }
}

/// How much of a limit is left right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Allowance {
    /// The limit.
    pub limit: u64,
    /// What is left of it.
    pub remaining: u64,
    /// When it is whole again at the latest (unix ms).
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub reset: Timestamp,
}

impl From<Decision> for Allowance {
    fn from(d: Decision) -> Self {
        Allowance {
            limit: d.limit,
            remaining: d.remaining,
            reset: d.reset,
        }
    }
}

/// What a caller has left of every limit admission counts it against.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Allowances {
    /// The tier's requests per minute.
    pub requests: Allowance,
    /// The tier's tokens per minute.
    pub tokens: Allowance,
    /// The tenant's tokens-per-minute quota, if it has one.
    pub tenant_quota: Option<Allowance>,
    /// The tenant's budget and the key's, those that exist.
    pub budgets: Vec<BudgetView>,
}

/// Settings of [`AdmissionLimits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Output tokens reserved when neither the client nor the tier caps
    /// them. Default 4096.
    pub default_max_tokens: u64,
    /// How long a tenant's quota is used before it is read again. Default 10 s.
    pub tenant_ttl: Duration,
    /// How long the snapshot of budgets is used before it is read again.
    /// Default 30 s.
    pub budget_ttl: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            default_max_tokens: 4096,
            tenant_ttl: Duration::from_secs(10),
            budget_ttl: catalog::DEFAULT_SNAPSHOT_TTL,
        }
    }
}

/// Budgets by whom they apply to, with their counters' ids.
#[derive(Debug, Default)]
struct BudgetIndex {
    /// The budgets of record id `tenant:<name>`, by name.
    tenants: std::collections::HashMap<String, IndexedBudget>,
    /// The budgets of record id `key:<id>`, by key id.
    keys: std::collections::HashMap<String, IndexedBudget>,
}

/// A budget and the ids of its counters, built once per snapshot.
#[derive(Debug)]
struct IndexedBudget {
    budget: Budget,
    /// [`BudgetScope::counter_id`] of the scope its record id names.
    counter: Arc<str>,
    /// [`BudgetScope::held_id`] of that scope.
    held: Arc<str>,
}

impl BudgetIndex {
    fn new(all: Vec<Budget>) -> Self {
        let mut index = BudgetIndex::default();
        // Later records win, as they did by id.
        for budget in all {
            let (map, scope) = if let Some(n) = budget.id.strip_prefix("tenant:") {
                (&mut index.tenants, BudgetScope::Tenant(n.to_owned()))
            } else if let Some(k) = budget.id.strip_prefix("key:") {
                (&mut index.keys, BudgetScope::Key(k.to_owned()))
            } else {
                // No scope's record id: no request finds it.
                continue;
            };
            let (BudgetScope::Tenant(subject) | BudgetScope::Key(subject)) = &scope;
            map.insert(
                subject.clone(),
                IndexedBudget {
                    counter: scope.counter_id().into(),
                    held: scope.held_id().into(),
                    budget,
                },
            );
        }
        index
    }

    fn is_empty(&self) -> bool {
        self.tenants.is_empty() && self.keys.is_empty()
    }

    /// The budget whose record id is `scope`'s.
    fn get(&self, scope: &BudgetScope) -> Option<&IndexedBudget> {
        match scope {
            BudgetScope::Tenant(n) => self.tenants.get(n),
            BudgetScope::Key(k) => self.keys.get(k),
        }
    }
}

/// At most this many tenants' quotas and counter ids are cached; beyond it
/// the cache starts over (each is read again on its next use).
const TENANTS_CACHED: usize = 100_000;

/// A tenant's cached quota, and the ids of its minute counters (built once).
#[derive(Debug)]
struct TenantEntry {
    at: Timestamp,
    quota: Option<u64>,
    ids: MinuteIds,
}

/// The ids of a tenant's minute counters, shared by its reservations.
#[derive(Debug, Clone)]
struct MinuteIds {
    tenant: Arc<str>,
    requests: Arc<str>,
    tokens: Arc<str>,
    quota: Arc<str>,
    /// The keys of `requests`, `tokens` and `quota` in the store's
    /// in-process counters, when it keeps them so (hashed once a tenant,
    /// not once a request).
    keys: Option<[CounterKey; 3]>,
}

impl MinuteIds {
    fn of(tenant: &str, local: Option<&LocalCounters>) -> Self {
        let requests: Arc<str> = format!("rpm\x1f{tenant}").into();
        let tokens: Arc<str> = format!("tpm\x1f{tenant}").into();
        let quota: Arc<str> = format!("quota\x1f{tenant}").into();
        MinuteIds {
            keys: local.map(|l| [&requests, &tokens, &quota].map(|id| l.key_of(&**id))),
            tenant: tenant.into(),
            requests,
            tokens,
            quota,
        }
    }
}

/// The most counters one request holds: three minute limits, two budgets
/// and their two holds.
const MAX_OPS: usize = 7;

/// One counter a reservation holds.
#[derive(Debug, Clone)]
struct Held {
    /// The limit it is; `None` for a budget hold ([`BudgetScope::held_id`]).
    kind: Option<LimitKind>,
    id: Arc<str>,
    /// Its key in the store's in-process counters, once known
    /// ([`LocalCounters::key_of`] `id`): kept from the reservation to its
    /// settlement.
    key: Option<CounterKey>,
    spec: LimitSpec,
    cost: u64,
}

/// The counters of a reservation, in order, without a heap allocation.
#[derive(Debug, Default)]
struct HeldOps {
    ops: [Option<Held>; MAX_OPS],
}

impl HeldOps {
    fn push(&mut self, op: Held) -> Result<()> {
        match self.ops.iter_mut().find(|o| o.is_none()) {
            Some(slot) => {
                *slot = Some(op);
                Ok(())
            }
            None => Err(Error::internal("too many limits for one request")),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Held> {
        self.ops.iter().map_while(Option::as_ref)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Held> {
        self.ops.iter_mut().map_while(Option::as_mut)
    }

    fn len(&self) -> usize {
        self.iter().count()
    }

    fn get(&self, i: usize) -> Option<&Held> {
        self.ops.get(i)?.as_ref()
    }
}

/// A placeholder to fill decision buffers with.
const NO_DECISION: Decision = Decision {
    allowed: false,
    limit: 0,
    remaining: 0,
    reset: Timestamp::EPOCH,
};

/// The decisions of a reservation: in place, or as a store returned them.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "a stack value, inline so that the in-process path does not allocate"
)]
enum Decisions {
    Inline([Decision; MAX_OPS], usize),
    Store(Vec<Decision>),
}

impl Decisions {
    fn as_slice(&self) -> &[Decision] {
        match self {
            Decisions::Inline(d, n) => d.get(..*n).unwrap_or(d),
            Decisions::Store(d) => d,
        }
    }
}

/// Reserves, reconciles and releases the limits of inference requests.
/// Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct AdmissionLimits {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    storage: Storage,
    clock: SharedClock,
    config: AdmissionConfig,
    quotas: DashMap<String, TenantEntry>,
    budgets: SnapshotCell<BudgetIndex>,
}

/// An admitted request's hold on its limits. Reconcile it with what the
/// request used ([`Self::reconcile`]) or release it ([`Self::release`]); if
/// it is dropped unsettled (a client went away, a task was cancelled), it is
/// released in the background on the current tokio runtime.
#[derive(Debug)]
pub struct Reservation {
    limits: AdmissionLimits,
    tenant: Arc<str>,
    /// The limits, then the budget holds.
    ops: HeldOps,
    taken_at: Timestamp,
    pricing: Option<Pricing>,
    prompt_tokens: u64,
    max_output_tokens: u64,
    headers: RateHeaders,
    warnings: Vec<BudgetWarning>,
    settled: bool,
}

impl Reservation {
    /// The x-ratelimit values after this admission.
    pub fn headers(&self) -> &RateHeaders {
        &self.headers
    }

    /// The most output tokens the request may produce: what was reserved
    /// for output. Forward it upstream as `max_tokens`.
    pub fn max_output_tokens(&self) -> u64 {
        self.max_output_tokens
    }

    /// Tokens reserved (prompt estimate + output).
    pub fn reserved_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.max_output_tokens)
    }

    /// Budgets past their soft threshold.
    pub fn warnings(&self) -> &[BudgetWarning] {
        &self.warnings
    }

    /// When the reservation was taken.
    pub fn taken_at(&self) -> Timestamp {
        self.taken_at
    }

    /// The tenant served, as the admission's counters name it.
    pub(crate) fn tenant(&self) -> &Arc<str> {
        &self.tenant
    }

    /// The counters held (taken out of the reservation) and what each
    /// used: `None` gives everything back.
    fn settlement(&mut self, usage: Option<ActualUsage>) -> (HeldOps, [u64; MAX_OPS]) {
        self.settled = true;
        let tokens = usage.map(|u| u.input_tokens.saturating_add(u.output_tokens));
        let ops = std::mem::take(&mut self.ops);
        let mut used = [0; MAX_OPS];
        for (u, op) in used.iter_mut().zip(ops.iter()) {
            *u = match (usage, op.kind) {
                // A budget hold is given back whole; so is everything
                // of a request that used nothing.
                (None, _) | (_, None) => 0,
                (Some(_), Some(LimitKind::Requests)) => op.cost,
                (Some(_), Some(LimitKind::Tokens | LimitKind::TenantTokens)) => tokens.unwrap_or(0),
                (Some(u), Some(LimitKind::TenantBudget | LimitKind::KeyBudget)) => {
                    self.pricing.as_ref().map_or(0, |p| {
                        billed_nanos(p, u.input_tokens, u.cached_tokens, u.output_tokens)
                    })
                }
            };
        }
        (ops, used)
    }

    /// The request completed having used `usage`: what it reserved beyond
    /// that is given back, what it used beyond its reservation is charged.
    pub async fn reconcile(mut self, usage: ActualUsage) -> Result<()> {
        let (ops, used) = self.settlement(Some(usage));
        self.limits.settle_held(&ops, &used, self.taken_at).await
    }

    /// The request failed or was cancelled before using anything: everything
    /// it reserved, the request included, is given back.
    pub async fn release(mut self) -> Result<()> {
        let (ops, used) = self.settlement(None);
        self.limits.settle_held(&ops, &used, self.taken_at).await
    }

    /// Settles it at once as [`Self::reconcile`] (`Some`) or
    /// [`Self::release`] (`None`) would, when the store keeps its counters
    /// in process (nothing to wait for); returns whether it did. Otherwise
    /// the reservation is left as it was.
    pub(crate) fn settle_in_place(&mut self, usage: Option<ActualUsage>) -> bool {
        if self.settled || self.limits.local().is_none() {
            return false;
        }
        let (ops, used) = self.settlement(usage);
        self.limits.settle_local(&ops, &used, self.taken_at)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // Nowhere to settle it in the background.
            self.settled = true;
            return;
        };
        if self.settle_in_place(None) {
            return;
        }
        let (ops, used) = self.settlement(None);
        let limits = self.limits.clone();
        let taken_at = self.taken_at;
        rt.spawn(async move {
            // Nothing to report to: the caller is gone. A failure leaves
            // the units counted until their window passes.
            let _ = limits.settle_held(&ops, &used, taken_at).await;
        });
    }
}

impl AdmissionLimits {
    /// Admission limits over `storage`, with the system clock and defaults.
    pub fn new(storage: Storage) -> Self {
        Self::with_config(storage, AdmissionConfig::default(), Arc::new(SystemClock))
    }

    /// Admission limits with `config` and `clock`.
    pub fn with_config(storage: Storage, config: AdmissionConfig, clock: Arc<dyn Clock>) -> Self {
        AdmissionLimits {
            inner: Arc::new(Inner {
                storage,
                clock,
                config,
                quotas: DashMap::new(),
                budgets: SnapshotCell::new(config.budget_ttl),
            }),
        }
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    async fn settle(&self, ops: &[SettleOp]) -> Result<()> {
        self.inner.storage.counters.settle(ops, self.now()).await?;
        Ok(())
    }

    /// The store's in-process counters, if it keeps them so.
    fn local(&self) -> Option<&LocalCounters> {
        self.inner.storage.counters.local_counters()
    }

    /// Takes `ops` (all or none) as [`CounterStore::reserve`] does: on the
    /// store's in-process counters when it has them, without allocating.
    ///
    /// [`CounterStore::reserve`]: crate::storage::CounterStore::reserve
    async fn take(&self, ops: &mut HeldOps, now: Timestamp) -> Result<Decisions> {
        if let Some(local) = self.local() {
            let blank = LimitOpRef {
                id: "",
                spec: LimitSpec::Period(PeriodSpec {
                    limit: 0,
                    period: Period::Daily,
                }),
                cost: 0,
            };
            let mut refs = [blank; MAX_OPS];
            let mut keys = [CounterKey::default(); MAX_OPS];
            let mut n = 0;
            for ((r, k), op) in refs.iter_mut().zip(&mut keys).zip(ops.iter_mut()) {
                // Kept for the settlement.
                *k = *op.key.get_or_insert_with(|| local.key_of(&*op.id));
                let op: &Held = op;
                *r = LimitOpRef {
                    id: &op.id,
                    spec: op.spec,
                    cost: op.cost,
                };
                n += 1;
            }
            let mut decisions = [NO_DECISION; MAX_OPS];
            let (Some(refs), Some(keys), Some(out)) =
                (refs.get(..n), keys.get(..n), decisions.get_mut(..n))
            else {
                return Err(Error::internal("too many limits for one request"));
            };
            local.reserve_keyed(refs, keys, now, out);
            return Ok(Decisions::Inline(decisions, n));
        }
        let owned: Vec<LimitOp> = ops
            .iter()
            .map(|op| LimitOp {
                id: op.id.to_string(),
                spec: op.spec,
                cost: op.cost,
            })
            .collect();
        let r = self.inner.storage.counters.reserve(&owned, now).await?;
        Ok(Decisions::Store(r.decisions))
    }

    /// Settles `ops` taken at `taken_at`, each having used `used[i]`, on
    /// the store's in-process counters; false (nothing done) if it has none.
    fn settle_local(&self, ops: &HeldOps, used: &[u64], taken_at: Timestamp) -> bool {
        let Some(local) = self.local() else {
            return false;
        };
        let now = self.now();
        for (op, &used) in ops.iter().zip(used) {
            let key = op.key.unwrap_or_else(|| local.key_of(&*op.id));
            local.settle_keyed(key, &op.id, &op.spec, taken_at, op.cost, used, now);
        }
        true
    }

    /// Settles `ops` as [`Self::settle_local`] does, through the store when
    /// it keeps its counters elsewhere.
    async fn settle_held(&self, ops: &HeldOps, used: &[u64], taken_at: Timestamp) -> Result<()> {
        if self.settle_local(ops, used, taken_at) {
            return Ok(());
        }
        let owned: Vec<SettleOp> = ops
            .iter()
            .zip(used)
            .map(|(op, &used)| SettleOp {
                id: op.id.to_string(),
                spec: op.spec,
                taken_at,
                reserved: op.cost,
                used,
            })
            .collect();
        self.settle(&owned).await
    }

    /// The tenant's tokens-per-minute quota, cached for `tenant_ttl`, and
    /// the ids of its minute counters.
    async fn tenant_quota(&self, tenant: &str, now: Timestamp) -> Result<(Option<u64>, MinuteIds)> {
        let ttl = catalog::millis(self.inner.config.tenant_ttl);
        if let Some(e) = self.inner.quotas.get(tenant)
            && e.at <= now
            && now.as_millis() - e.at.as_millis() < ttl
        {
            return Ok((e.quota, e.ids.clone()));
        }
        let quota = self
            .inner
            .storage
            .tenants
            .get_tenant_by_name(tenant)
            .await?
            .and_then(|t| t.tokens_per_minute);
        if let Some(mut e) = self.inner.quotas.get_mut(tenant) {
            e.at = now;
            e.quota = quota;
            return Ok((quota, e.ids.clone()));
        }
        let ids = MinuteIds::of(tenant, self.local());
        if self.inner.quotas.len() >= TENANTS_CACHED {
            self.inner.quotas.clear();
        }
        self.inner.quotas.insert(
            tenant.to_owned(),
            TenantEntry {
                at: now,
                quota,
                ids: ids.clone(),
            },
        );
        Ok((quota, ids))
    }

    async fn load_budgets(&self) -> Result<BudgetIndex> {
        let all: Vec<Budget> = catalog::list_entries(&*self.inner.storage.records).await?;
        Ok(BudgetIndex::new(all))
    }

    async fn budgets(&self, now: Timestamp) -> Result<Arc<BudgetIndex>> {
        match self.inner.budgets.fresh(now) {
            Some(b) => Ok(b),
            None => self.inner.budgets.get(now, || self.load_budgets()).await,
        }
    }

    /// Reserves the request's estimate against every limit that applies,
    /// all or none. `Ok(Err(denied))` names the limit that refused; nothing
    /// was taken then. Store failures are `Err`.
    pub async fn reserve(&self, req: &AdmissionRequest<'_>) -> Result<Result<Reservation, Denied>> {
        let now = self.now();
        let tier = req.tier;
        let mut output = req
            .max_tokens
            .unwrap_or(self.inner.config.default_max_tokens);
        if let Some(cap) = tier.max_tokens_per_request {
            output = output.min(cap);
        }
        let (quota, ids) = self.tenant_quota(req.tenant, now).await?;
        // Never reserve more output than a whole minute of the tightest
        // tokens limit leaves after the prompt: the request is served with
        // that as its `max_tokens` (the free tier's 100 tokens/min would
        // otherwise refuse every request asking for 100 tokens). A prompt
        // that alone exceeds the limit is refused as never fitting.
        for limit in std::iter::once(tier.tokens_per_minute).chain(quota) {
            if req.prompt_tokens < limit {
                output = output.min(limit - req.prompt_tokens);
            }
        }
        let output = output.max(1);
        let tokens = req.prompt_tokens.saturating_add(output);
        let mut ops = minute_ops(&ids, tier, quota, 1, tokens)?;
        let budgets = self.budgets(now).await?;
        // The index of each budget's op, and the budget.
        let mut budget_of: [Option<(usize, &IndexedBudget)>; 2] = [None, None];
        let mut holds: [Option<Held>; 2] = [None, None];
        if !budgets.is_empty() {
            let found = [
                budgets
                    .tenants
                    .get(req.tenant)
                    .map(|b| (LimitKind::TenantBudget, b)),
                req.key_id
                    .and_then(|k| budgets.keys.get(k))
                    .map(|b| (LimitKind::KeyBudget, b)),
            ];
            for ((found, of), hold) in found.into_iter().zip(&mut budget_of).zip(&mut holds) {
                let Some((kind, b)) = found else {
                    continue;
                };
                let cost = match req.pricing {
                    Some(p) if p.currency == b.budget.currency => {
                        worst_case_nanos(p, req.prompt_tokens, output)
                    }
                    // Free, or priced in another currency: not counted.
                    _ => continue,
                };
                *of = Some((ops.len(), b));
                ops.push(Held {
                    kind: Some(kind),
                    id: Arc::clone(&b.counter),
                    key: None,
                    spec: b.budget.spec(),
                    cost,
                })?;
                *hold = Some(Held {
                    kind: None,
                    id: Arc::clone(&b.held),
                    key: None,
                    spec: b.budget.held_spec(),
                    cost,
                });
            }
        }
        // After every limit.
        for hold in holds.into_iter().flatten() {
            ops.push(hold)?;
        }
        let decisions = self.take(&mut ops, now).await?;
        let decisions = decisions.as_slice();
        let headers = headers_of(&ops, decisions, now);
        if let Some(i) = decisions.iter().position(|d| !d.allowed) {
            let (
                Some(Held {
                    kind: Some(kind),
                    cost,
                    ..
                }),
                Some(d),
            ) = (ops.get(i), decisions.get(i))
            else {
                return Err(Error::internal("reserve returned too few decisions"));
            };
            let wait = (d.reset.as_millis() - now.as_millis()).max(0);
            return Ok(Err(Denied {
                kind: *kind,
                limit: d.limit,
                remaining: d.remaining,
                requested: *cost,
                reset: d.reset,
                retry_after_secs: u64::try_from(wait).unwrap_or(0).div_ceil(1000).max(1),
                retryable: *cost <= d.limit,
                headers,
            }));
        }
        let warnings = budget_of
            .iter()
            .flatten()
            .filter_map(|&(i, b)| {
                let d = decisions.get(i)?;
                let threshold = b.budget.soft_threshold?;
                let used = d.limit.saturating_sub(d.remaining) as f64 / d.limit.max(1) as f64;
                (used >= threshold).then(|| BudgetWarning {
                    scope: b.budget.scope.clone(),
                    used_fraction: used.min(1.0),
                    reset: d.reset,
                })
            })
            .collect();
        Ok(Ok(Reservation {
            limits: self.clone(),
            tenant: ids.tenant,
            ops,
            taken_at: now,
            pricing: req.pricing.cloned(),
            prompt_tokens: req.prompt_tokens,
            max_output_tokens: output,
            headers,
            warnings,
            settled: false,
        }))
    }

    // ----- budgets ----------------------------------------------------------

    /// Charges the budgets of usage served elsewhere (a data plane's
    /// report): each bucket's cost counts against its tenant's and its key's
    /// budgets in the bucket's currency, in the period of its minute. Nothing
    /// is held or refused: the requests were served already.
    pub async fn charge_reported(&self, usage: &[UsageBucket]) -> Result<()> {
        let budgets = self.budgets(self.now()).await?;
        if budgets.is_empty() {
            return Ok(());
        }
        let mut ops = Vec::new();
        for b in usage.iter().filter(|b| b.sums.cost_nanos > 0) {
            let scopes = std::iter::once(BudgetScope::Tenant(b.key.tenant.clone()))
                .chain((!b.key.key_id.is_empty()).then(|| BudgetScope::Key(b.key.key_id.clone())));
            for scope in scopes {
                match budgets.get(&scope).map(|i| &i.budget) {
                    Some(budget) if budget.currency == b.key.currency => ops.push(SettleOp {
                        id: scope.counter_id(),
                        spec: budget.spec(),
                        taken_at: b.key.minute,
                        reserved: 0,
                        used: b.sums.cost_nanos,
                    }),
                    _ => {}
                }
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        self.settle(&ops).await
    }

    /// Sets (creates or replaces) the budget of `scope`.
    pub async fn set_budget(
        &self,
        actor: &Actor,
        scope: BudgetScope,
        new: NewBudget,
    ) -> Result<Budget> {
        match &scope {
            BudgetScope::Tenant(n) => validate::label("tenant", n, 128)?,
            BudgetScope::Key(k) => validate::label("key_id", k, 128)?,
        }
        let currency = check_new_budget(&new)?;
        let now = self.now();
        let id = scope.record_id();
        let records = &*self.inner.storage.records;
        let out = match catalog::get_entry::<Budget>(records, &id).await {
            Ok(_) => {
                catalog::update_entry(
                    records,
                    actor,
                    &id,
                    "budget.update",
                    now,
                    |b: &mut Budget| {
                        b.amount = new.amount;
                        b.currency = currency.clone();
                        b.period = new.period;
                        b.soft_threshold = new.soft_threshold;
                        b.updated_at = now;
                        Ok(())
                    },
                )
                .await?
            }
            Err(e) if e.is_not_found() => {
                let b = Budget {
                    id,
                    scope,
                    amount: new.amount,
                    currency,
                    period: new.period,
                    soft_threshold: new.soft_threshold,
                    created_at: now,
                    updated_at: now,
                    version: 1,
                };
                catalog::create_entry(records, actor, &b, now).await?;
                b
            }
            Err(e) => return Err(e),
        };
        self.refresh_budgets().await;
        Ok(out)
    }

    /// The budget of `scope`, with what is used of it in this period.
    pub async fn budget_status(&self, scope: &BudgetScope) -> Result<BudgetStatus> {
        let budget: Budget =
            catalog::get_entry(&*self.inner.storage.records, &scope.record_id()).await?;
        let now = self.now();
        let r = self
            .inner
            .storage
            .counters
            .reserve(
                &[
                    LimitOp {
                        id: scope.counter_id(),
                        spec: budget.spec(),
                        cost: 0,
                    },
                    LimitOp {
                        id: scope.held_id(),
                        spec: budget.held_spec(),
                        cost: 0,
                    },
                ],
                now,
            )
            .await?;
        let (Some(d), Some(h)) = (r.decisions.first(), r.decisions.get(1)) else {
            return Err(Error::internal("reserve returned too few decisions"));
        };
        let used = d.limit.saturating_sub(d.remaining);
        // A hold can outlast its charge only across a period's end, where
        // both start over: never more than what is used.
        let reserved = h.limit.saturating_sub(h.remaining).min(used);
        Ok(BudgetStatus {
            used: nanos_to_amount(used),
            spent: nanos_to_amount(used - reserved),
            reserved: nanos_to_amount(reserved),
            remaining: nanos_to_amount(d.remaining),
            reset: d.reset,
            budget,
        })
    }

    /// Every budget, by id.
    pub async fn list_budgets(&self) -> Result<Vec<Budget>> {
        let mut all: Vec<Budget> = catalog::list_entries(&*self.inner.storage.records).await?;
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all)
    }

    /// Removes the budget of `scope`.
    pub async fn delete_budget(&self, actor: &Actor, scope: &BudgetScope) -> Result<()> {
        catalog::delete_entry::<Budget>(
            &*self.inner.storage.records,
            actor,
            &scope.record_id(),
            self.now(),
        )
        .await?;
        self.refresh_budgets().await;
        Ok(())
    }

    async fn refresh_budgets(&self) {
        self.inner
            .budgets
            .refresh(self.now(), || self.load_budgets())
            .await;
    }

    /// What `tenant` (calling with `key_id`, at `tier`) has left right now
    /// of every limit [`Self::reserve`] counts: reads only.
    pub async fn allowances(
        &self,
        tenant: &str,
        key_id: Option<&str>,
        tier: &Tier,
    ) -> Result<Allowances> {
        let now = self.now();
        let (quota, ids) = self.tenant_quota(tenant, now).await?;
        // The counters reserve takes, taking nothing.
        let mut ops = minute_ops(&ids, tier, quota, 0, 0)?;
        let decisions = self.take(&mut ops, now).await?;
        let d = |i: usize| {
            decisions
                .as_slice()
                .get(i)
                .copied()
                .map(Allowance::from)
                .ok_or_else(|| Error::internal("reserve returned too few decisions"))
        };
        let (requests, tokens) = (d(0)?, d(1)?);
        let tenant_quota = if quota.is_some() { Some(d(2)?) } else { None };
        let index = self.budgets(now).await?;
        let mut budgets = Vec::new();
        let scopes = std::iter::once(BudgetScope::Tenant(tenant.to_owned()))
            .chain(key_id.map(|k| BudgetScope::Key(k.to_owned())));
        for scope in scopes {
            if index.get(&scope).is_some() {
                match self.budget_status(&scope).await {
                    Ok(st) => budgets.push(st.into()),
                    // Removed since the snapshot was taken.
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Allowances {
            requests,
            tokens,
            tenant_quota,
            budgets,
        })
    }

    /// Forgets cached tenant quotas (after a quota change through this node).
    pub fn forget_quota(&self, tenant: &str) {
        self.inner.quotas.remove(tenant);
    }
}

/// The per-minute counters of a request of the tenant of `ids` at `tier`:
/// requests, tokens and, with a quota, the tenant's tokens; `requests` and
/// `tokens` are what each takes.
fn minute_ops(
    ids: &MinuteIds,
    tier: &Tier,
    quota: Option<u64>,
    requests: u64,
    tokens: u64,
) -> Result<HeldOps> {
    let minute = |limit: u64| {
        LimitSpec::Sliding(SlidingSpec {
            limit: limit.max(1),
            window_ms: MINUTE_MS,
        })
    };
    let mut ops = HeldOps::default();
    let key = |i: usize| ids.keys.and_then(|k| k.get(i).copied());
    ops.push(Held {
        kind: Some(LimitKind::Requests),
        id: Arc::clone(&ids.requests),
        key: key(0),
        spec: minute(tier.requests_per_minute),
        cost: requests,
    })?;
    ops.push(Held {
        kind: Some(LimitKind::Tokens),
        id: Arc::clone(&ids.tokens),
        key: key(1),
        spec: minute(tier.tokens_per_minute),
        cost: tokens,
    })?;
    if let Some(quota) = quota {
        ops.push(Held {
            kind: Some(LimitKind::TenantTokens),
            id: Arc::clone(&ids.quota),
            key: key(2),
            spec: minute(quota),
            cost: tokens,
        })?;
    }
    Ok(ops)
}

/// The x-ratelimit values of the limits among `ops` (holds have none).
fn headers_of(ops: &HeldOps, decisions: &[Decision], now: Timestamp) -> RateHeaders {
    let unlimited = Decision {
        allowed: true,
        limit: 0,
        remaining: 0,
        reset: now,
    };
    let mut requests = None;
    let mut tokens: Option<Decision> = None;
    for (op, d) in ops.iter().zip(decisions) {
        match op.kind {
            Some(LimitKind::Requests) => requests = Some(*d),
            Some(LimitKind::Tokens | LimitKind::TenantTokens)
                if tokens.is_none_or(|t| d.remaining < t.remaining) =>
            {
                tokens = Some(*d);
            }
            _ => {}
        }
    }
    RateHeaders {
        requests: requests.unwrap_or(unlimited),
        tokens: tokens.unwrap_or(unlimited),
    }
}
