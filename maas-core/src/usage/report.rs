//! What usage queries return, and how buckets fold into it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{UsageKey, UsageSums, nanos_to_amount};
use crate::clock::Timestamp;
use crate::error::{Error, Result};

/// What to total usage or costs by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// Per tenant.
    Tenant,
    /// Per API key (`""` for requests without one).
    Key,
    /// Per model.
    Model,
}

impl GroupBy {
    /// The group of the bucket `k`.
    pub fn of(self, k: &UsageKey) -> &str {
        match self {
            GroupBy::Tenant => &k.tenant,
            GroupBy::Key => &k.key_id,
            GroupBy::Model => &k.model,
        }
    }

    /// The name: `tenant`, `key` or `model`.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Tenant => "tenant",
            GroupBy::Key => "key",
            GroupBy::Model => "model",
        }
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GroupBy {
    type Err = Error;

    /// `tenant`, `key` or `model`; anything else is invalid input naming
    /// `group_by`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tenant" => Ok(GroupBy::Tenant),
            "key" => Ok(GroupBy::Key),
            "model" => Ok(GroupBy::Model),
            _ => Err(Error::invalid(
                "group_by",
                "must be one of 'tenant', 'key', 'model'",
            )),
        }
    }
}

/// Which usage a query covers: every filter that is set must match.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UsageScope {
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only this key (`""`: requests without a key).
    pub key_id: Option<String>,
    /// Only this model.
    pub model: Option<String>,
}

impl UsageScope {
    /// The usage of `tenant`.
    pub fn tenant(tenant: impl Into<String>) -> Self {
        UsageScope {
            tenant: Some(tenant.into()),
            ..UsageScope::default()
        }
    }

    /// The usage of the key `key_id`.
    pub fn key(key_id: impl Into<String>) -> Self {
        UsageScope {
            key_id: Some(key_id.into()),
            ..UsageScope::default()
        }
    }

    /// The usage of `model`.
    pub fn model(model: impl Into<String>) -> Self {
        UsageScope {
            model: Some(model.into()),
            ..UsageScope::default()
        }
    }
}

/// Which keys' verifications a query covers: every filter that is set must
/// match (seed 004 asks for a key or an owner).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VerificationScope {
    /// Only keys of this keyspace.
    pub keyspace_id: Option<String>,
    /// Only this key.
    pub key_id: Option<String>,
    /// Only keys of this owner.
    pub owner_id: Option<String>,
}

impl VerificationScope {
    /// The verifications of the key `key_id`.
    pub fn key(key_id: impl Into<String>) -> Self {
        VerificationScope {
            key_id: Some(key_id.into()),
            ..VerificationScope::default()
        }
    }

    /// The verifications of every key of `owner_id`.
    pub fn owner(owner_id: impl Into<String>) -> Self {
        VerificationScope {
            owner_id: Some(owner_id.into()),
            ..VerificationScope::default()
        }
    }
}

/// An amount of money.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Cost {
    /// ISO 4217 code.
    pub currency: String,
    /// The amount in currency units (from `nanos`, rounded once).
    pub amount: f64,
    /// The exact amount in 10⁻⁹ currency units.
    pub nanos: u64,
}

impl Cost {
    fn new(currency: String, nanos: u64) -> Self {
        Cost {
            currency,
            amount: nanos_to_amount(nanos),
            nanos,
        }
    }
}

/// Sums of usage over a group or a time step.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageSummary {
    /// Requests, whatever their outcome.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Requests the client cancelled.
    pub cancelled: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cached input tokens.
    pub cached_tokens: u64,
    /// Requests whose token counts were estimated.
    pub estimated: u64,
    /// Response-cache hits.
    pub cache_hits: u64,
    /// Response-cache misses.
    pub cache_misses: u64,
    /// What it cost, per currency (by code); unpriced usage costs nothing.
    pub costs: Vec<Cost>,
}

impl UsageSummary {
    /// The cost in `currency`, in currency units (0 if none).
    pub fn cost(&self, currency: &str) -> f64 {
        self.costs
            .iter()
            .find(|c| c.currency == currency)
            .map_or(0.0, |c| c.amount)
    }

    /// The cost in `currency`, in 10⁻⁹ currency units (0 if none).
    pub fn cost_nanos(&self, currency: &str) -> u64 {
        self.costs
            .iter()
            .find(|c| c.currency == currency)
            .map_or(0, |c| c.nanos)
    }
}

/// Sums and costs per currency, folding buckets.
#[derive(Debug, Clone, Default)]
pub(crate) struct Acc {
    sums: UsageSums,
    costs: BTreeMap<String, u64>,
}

impl Acc {
    pub(crate) fn add(&mut self, currency: &str, s: &UsageSums) {
        self.sums.add(s);
        if !currency.is_empty() {
            match self.costs.get_mut(currency) {
                Some(n) => *n = n.saturating_add(s.cost_nanos),
                None => {
                    self.costs.insert(currency.to_owned(), s.cost_nanos);
                }
            }
        }
    }

    pub(crate) fn summary(self) -> UsageSummary {
        let s = self.sums;
        UsageSummary {
            requests: s.requests,
            errors: s.errors,
            cancelled: s.cancelled,
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            cached_tokens: s.cached_tokens,
            estimated: s.estimated,
            cache_hits: s.cache_hits,
            cache_misses: s.cache_misses,
            costs: self
                .costs
                .into_iter()
                .map(|(c, n)| Cost::new(c, n))
                .collect(),
        }
    }
}

/// Accumulators per group.
#[derive(Debug, Default)]
pub(crate) struct Grouped(BTreeMap<String, Acc>);

impl Grouped {
    pub(crate) fn add(&mut self, group: String, currency: &str, s: &UsageSums) {
        self.0.entry(group).or_default().add(currency, s);
    }

    pub(crate) fn rows(self) -> Vec<UsageRow> {
        self.0
            .into_iter()
            .map(|(group, a)| UsageRow {
                group,
                usage: a.summary(),
            })
            .collect()
    }
}

/// Accumulators per time step.
#[derive(Debug, Default)]
pub(crate) struct Series(BTreeMap<Timestamp, Acc>);

impl Series {
    pub(crate) fn add(&mut self, time: Timestamp, currency: &str, s: &UsageSums) {
        self.0.entry(time).or_default().add(currency, s);
    }

    pub(crate) fn points(self) -> Vec<SeriesPoint> {
        self.0
            .into_iter()
            .map(|(time, a)| SeriesPoint {
                time,
                usage: a.summary(),
            })
            .collect()
    }
}

/// The usage of one group ([`UsageLedger::totals`](super::UsageLedger::totals)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageRow {
    /// The tenant, key or model.
    pub group: String,
    /// Its usage.
    pub usage: UsageSummary,
}

/// One step of a time series ([`UsageLedger::series`](super::UsageLedger::series)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SeriesPoint {
    /// The start of the step (UTC minute, hour or day).
    pub time: Timestamp,
    /// The usage in it.
    pub usage: UsageSummary,
}

/// The time series of one tenant
/// ([`UsageLedger::series_by_tenant`](super::UsageLedger::series_by_tenant)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantSeries {
    /// The tenant.
    pub tenant: String,
    /// Its steps with usage, in time order.
    pub points: Vec<SeriesPoint>,
}

/// Verification outcomes of one UTC day, as seed 004's
/// `keys.getVerifications` answers them (`time`, `success`, `rateLimited`,
/// `usageExceeded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VerificationDay {
    /// The start of the day (Unix ms, UTC).
    pub time: Timestamp,
    /// `VALID` verifications.
    pub success: u64,
    /// `RATE_LIMITED` verifications.
    pub rate_limited: u64,
    /// `USAGE_EXCEEDED` verifications.
    pub usage_exceeded: u64,
    /// Verifications with any other code (not part of seed 004's answer).
    #[serde(skip_serializing, default)]
    pub other: u64,
}

/// Response-cache outcomes of one model ([`UsageLedger::cache`](super::UsageLedger::cache)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CacheRow {
    /// The model.
    pub model: String,
    /// Requests served from the cache.
    pub hits: u64,
    /// Requests looked up and not found.
    pub misses: u64,
}

/// The cost of one group in one currency ([`UsageLedger::costs`](super::UsageLedger::costs)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CostRow {
    /// The tenant, key or model.
    pub group: String,
    /// ISO 4217 code.
    pub currency: String,
    /// The amount in currency units (from `nanos`, rounded once).
    pub amount: f64,
    /// The exact amount in 10⁻⁹ currency units.
    pub nanos: u64,
    /// Priced requests.
    pub requests: u64,
    /// Their input tokens.
    pub input_tokens: u64,
    /// Their output tokens.
    pub output_tokens: u64,
}

impl CostRow {
    pub(crate) fn new(group: String, currency: String, s: &UsageSums) -> Self {
        CostRow {
            group,
            currency,
            amount: nanos_to_amount(s.cost_nanos),
            nanos: s.cost_nanos,
            requests: s.requests,
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
        }
    }
}
