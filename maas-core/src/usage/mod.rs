//! The usage ledger: what every completed request consumed, every key
//! verification's outcome, and what it cost.
//!
//! # Recording
//!
//! A gateway calls [`UsageLedger::record`] once per completed (or failed, or
//! cancelled) inference request with a [`UsageRecord`]: tenant, key, model,
//! input, output and cached tokens, outcome, response-cache outcome, and the
//! model's [`Pricing`] at that moment. A [`KeyService`](crate::key::KeyService)
//! with a ledger attached ([`KeyService::attach_usage`](crate::key::KeyService::attach_usage))
//! records every verification's [`VerifyCode`] with
//! [`UsageLedger::record_verification`].
//!
//! Records are added into per-minute aggregates ([`UsageBucket`],
//! [`VerificationBucket`]) in memory, with no I/O on the caller's path, and
//! written behind to the [`UsageStore`]: by [`UsageLedger::flush`], or every
//! [`UsageConfig::flush_interval`] by the task of
//! [`UsageLedger::spawn_flusher`].
//!
//! # What a crash can lose
//!
//! Usage is written behind. A process that dies without
//! [`FlusherHandle::shutdown`] (or a last [`UsageLedger::flush`]) loses the
//! usage and verifications recorded on that node since its last successful
//! flush: at most one [`UsageConfig::flush_interval`] (default 50 ms) while
//! the store is reachable; while it is not, everything pending since the last
//! successful flush (pending data is kept in memory and retried, never
//! dropped). Nothing flushed is lost: a backend answers an add once it is
//! durable (the sled backend syncs it to its journal first). A flush is never
//! applied twice: a backend adds each batch atomically, and a batch the store
//! refused is kept and sent again.
//!
//! # Costs
//!
//! The cost of a request is computed when it is recorded, from the pricing
//! passed with it ([`Pricing::cost`] of its input and output tokens; cached
//! tokens are part of the input and are not priced separately), rounded to
//! the nearest 10⁻⁹ of the currency and summed exactly as integers
//! ([`UsageSums::cost_nanos`]). A later price change does not rewrite what
//! was recorded. Buckets are kept per currency.
//!
//! # Queries
//!
//! Queries read the store and add this node's pending buckets (a node reads
//! its own writes at once; other nodes' usage appears once they flush).
//! Ranges ([`TimeRange`]) are half-open and resolved per minute: a minute is
//! in `[from, to)` when its start is. A range longer than
//! [`UsageConfig::max_range`], or one that ends before it starts, is invalid
//! input.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! use maas_core::usage::{GroupBy, TimeRange, UsageConfig, UsageLedger, UsageRecord, UsageScope};
//! use maas_core::{Pricing, Timestamp};
//! # let store = std::sync::Arc::new(maas_core::usage::MemoryUsageStore::default());
//! let ledger = UsageLedger::on_store(store, UsageConfig::default(), std::sync::Arc::new(maas_core::SystemClock));
//! let flusher = ledger.spawn_flusher();
//! let at = Timestamp::from_millis(1_735_689_600_000);
//! ledger.record(&UsageRecord {
//!     input_tokens: 812,
//!     output_tokens: 256,
//!     pricing: Some(Pricing::usd(3.0, 15.0)),
//!     ..UsageRecord::new(at, "acme", "llama-3-8b")
//! })?;
//! let day = TimeRange::new(at, at.add_millis(86_400_000));
//! let rows = ledger.totals(day, GroupBy::Tenant, &UsageScope::default()).await?;
//! assert_eq!(rows[0].group, "acme");
//! assert_eq!(rows[0].usage.input_tokens, 812);
//! flusher.shutdown().await?; // a last flush
//! # Ok::<(), maas_core::Error>(())
//! # }).unwrap();
//! ```

mod ledger;
mod memory;
mod outbox;
mod report;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::key::VerifyCode;
use crate::model::Pricing;

pub use crate::storage::UsageStore;
pub use ledger::{FlusherHandle, LedgerStatus, UsageConfig, UsageLedger};
pub use memory::MemoryUsageStore;
pub use outbox::UsageOutbox;
pub use report::{
    CacheRow, Cost, CostRow, GroupBy, SeriesPoint, TenantSeries, UsageRow, UsageScope,
    UsageSummary, VerificationDay, VerificationScope,
};

/// One minute, in milliseconds: the resolution of stored usage.
pub const MINUTE_MS: i64 = 60_000;
/// One hour, in milliseconds.
pub const HOUR_MS: i64 = 3_600_000;
/// One day, in milliseconds.
pub const DAY_MS: i64 = 86_400_000;
/// The longest tenant, key, model, keyspace, owner id or currency a record
/// may carry, in bytes.
pub const MAX_PART: usize = 256;

/// How an inference request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestOutcome {
    /// The upstream answered.
    Success,
    /// The request failed (upstream error, timeout, ...).
    Error,
    /// The client went away before the end.
    Cancelled,
}

/// Whether the response cache answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    /// Served from the response cache.
    Hit,
    /// Looked up in the response cache and not found.
    Miss,
}

/// One completed inference request, as the gateway saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// When it completed (its minute is the bucket it counts in); not before
    /// the Unix epoch.
    pub at: Timestamp,
    /// Who consumed (a tenant id or name; 1..=[`MAX_PART`] bytes, no control
    /// characters).
    pub tenant: String,
    /// The API key it was made with, if any.
    pub key_id: Option<String>,
    /// The model id.
    pub model: String,
    /// Prompt tokens (cached ones included).
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Prompt tokens served from the upstream's prompt cache.
    pub cached_tokens: u64,
    /// How the request ended.
    pub outcome: RequestOutcome,
    /// Whether the token counts are estimates (the upstream reported none).
    pub estimated: bool,
    /// The response cache's answer; `None` when the model has no response
    /// cache.
    pub cache: Option<CacheOutcome>,
    /// The model's price when the request was served; `None` if unpriced
    /// (the request then costs nothing).
    pub pricing: Option<Pricing>,
}

impl UsageRecord {
    /// A successful request of `tenant` on `model` at `at`, with no key, no
    /// tokens, no cache and no pricing: set the other fields with `..`.
    pub fn new(at: Timestamp, tenant: impl Into<String>, model: impl Into<String>) -> Self {
        UsageRecord {
            at,
            tenant: tenant.into(),
            key_id: None,
            model: model.into(),
            input_tokens: 0,
            output_tokens: 0,
            cached_tokens: 0,
            outcome: RequestOutcome::Success,
            estimated: false,
            cache: None,
            pricing: None,
        }
    }

    /// The cost of this request in 10⁻⁹ of its pricing's currency (0 when
    /// unpriced), see [`cost_nanos`].
    pub fn cost_nanos(&self) -> u64 {
        self.pricing.as_ref().map_or(0, |p| {
            billed_nanos(p, self.input_tokens, self.cached_tokens, self.output_tokens)
        })
    }
}

/// The cost of `input` and `output` tokens at `pricing`
/// ([`Pricing::cost`]), in 10⁻⁹ of its currency, rounded to the nearest
/// (saturating; a negative or non-finite price costs 0).
pub fn cost_nanos(pricing: &Pricing, input: u64, output: u64) -> u64 {
    billed_nanos(pricing, input, 0, output)
}

/// The cost of `input` prompt tokens of which `cached` were cached (billed
/// once, at [`Pricing::cached_input_price`]; the rest at the input price)
/// and `output` tokens, in 10⁻⁹ of the currency, rounded to the nearest
/// (saturating; a negative or non-finite price costs 0).
pub fn billed_nanos(pricing: &Pricing, input: u64, cached: u64, output: u64) -> u64 {
    let cached = cached.min(input);
    // cost × 10⁹ = (tokens × price per million) / 10⁶ × 10⁹
    let nanos = ((input - cached) as f64 * pricing.input_per_million
        + cached as f64 * pricing.cached_input_price()
        + output as f64 * pricing.output_per_million)
        * 1_000.0;
    // `as` saturates, and maps NaN to 0.
    nanos.round() as u64
}

/// The most `input` prompt tokens (however many turn out cached) and
/// `output` tokens can cost: each prompt token at the higher of the input
/// and cached prices. What a reservation holds of a budget.
pub fn worst_case_nanos(pricing: &Pricing, input: u64, output: u64) -> u64 {
    let dearest = Pricing {
        input_per_million: pricing.input_per_million.max(pricing.cached_input_price()),
        cached_input_per_million: None,
        ..pricing.clone()
    };
    billed_nanos(&dearest, input, 0, output)
}

/// Nanos (10⁻⁹ units) as an amount of currency: the nearest `f64` up to
/// 2⁵³ nanos (about 9 million units), within one rounding beyond.
pub fn nanos_to_amount(nanos: u64) -> f64 {
    const EXACT: u64 = 1 << 53;
    if nanos <= EXACT {
        // One correctly rounded division of exact values.
        nanos as f64 / 1e9
    } else {
        (nanos / 1_000_000_000) as f64 + (nanos % 1_000_000_000) as f64 / 1e9
    }
}

/// One key verification's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationRecord {
    /// When it was verified; not before the Unix epoch.
    pub at: Timestamp,
    /// The key's keyspace.
    pub keyspace_id: String,
    /// The key.
    pub key_id: String,
    /// The key's owner, if it has one.
    pub owner_id: Option<String>,
    /// The outcome.
    pub code: VerifyCode,
}

/// Where a bucket of usage counts: its minute and what it is about.
///
/// Ordered by minute, then tenant, key, model and currency: the order of
/// [`UsageStore::usage_buckets`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UsageKey {
    /// The start of the minute (a multiple of [`MINUTE_MS`], not negative).
    pub minute: Timestamp,
    /// The tenant.
    pub tenant: String,
    /// The key id; empty for requests made without a key.
    pub key_id: String,
    /// The model.
    pub model: String,
    /// The currency of [`UsageSums::cost_nanos`]; empty for unpriced usage.
    pub currency: String,
}

/// What a bucket of usage sums. Every field adds up (saturating).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UsageSums {
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
    /// Cost in 10⁻⁹ of the bucket's currency.
    pub cost_nanos: u64,
}

impl UsageSums {
    /// The sums of one record.
    pub fn of(r: &UsageRecord) -> Self {
        Self::of_request(
            r.outcome,
            (r.input_tokens, r.output_tokens, r.cached_tokens),
            r.estimated,
            r.cache,
            r.pricing.as_ref(),
        )
    }

    /// The sums of one request from its figures (input, output, cached
    /// tokens): [`Self::of`] without a record's names (see
    /// [`UsageLedger::record_parts`]).
    pub(crate) fn of_request(
        outcome: RequestOutcome,
        (input_tokens, output_tokens, cached_tokens): (u64, u64, u64),
        estimated: bool,
        cache: Option<CacheOutcome>,
        pricing: Option<&Pricing>,
    ) -> Self {
        UsageSums {
            requests: 1,
            errors: u64::from(outcome == RequestOutcome::Error),
            cancelled: u64::from(outcome == RequestOutcome::Cancelled),
            input_tokens,
            output_tokens,
            cached_tokens,
            estimated: u64::from(estimated),
            cache_hits: u64::from(cache == Some(CacheOutcome::Hit)),
            cache_misses: u64::from(cache == Some(CacheOutcome::Miss)),
            cost_nanos: pricing.map_or(0, |p| {
                billed_nanos(p, input_tokens, cached_tokens, output_tokens)
            }),
        }
    }

    /// Adds `other` into these sums (saturating).
    pub fn add(&mut self, other: &UsageSums) {
        let UsageSums {
            requests,
            errors,
            cancelled,
            input_tokens,
            output_tokens,
            cached_tokens,
            estimated,
            cache_hits,
            cache_misses,
            cost_nanos,
        } = *other;
        self.requests = self.requests.saturating_add(requests);
        self.errors = self.errors.saturating_add(errors);
        self.cancelled = self.cancelled.saturating_add(cancelled);
        self.input_tokens = self.input_tokens.saturating_add(input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(output_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(cached_tokens);
        self.estimated = self.estimated.saturating_add(estimated);
        self.cache_hits = self.cache_hits.saturating_add(cache_hits);
        self.cache_misses = self.cache_misses.saturating_add(cache_misses);
        self.cost_nanos = self.cost_nanos.saturating_add(cost_nanos);
    }

    /// The fields in declaration order (for fixed-width encodings).
    pub fn to_array(&self) -> [u64; 10] {
        [
            self.requests,
            self.errors,
            self.cancelled,
            self.input_tokens,
            self.output_tokens,
            self.cached_tokens,
            self.estimated,
            self.cache_hits,
            self.cache_misses,
            self.cost_nanos,
        ]
    }

    /// The sums from [`Self::to_array`]'s order.
    pub fn from_array(a: [u64; 10]) -> Self {
        let [
            requests,
            errors,
            cancelled,
            input_tokens,
            output_tokens,
            cached_tokens,
            estimated,
            cache_hits,
            cache_misses,
            cost_nanos,
        ] = a;
        UsageSums {
            requests,
            errors,
            cancelled,
            input_tokens,
            output_tokens,
            cached_tokens,
            estimated,
            cache_hits,
            cache_misses,
            cost_nanos,
        }
    }
}

/// A minute of usage for one tenant, key, model and currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageBucket {
    /// Where it counts.
    pub key: UsageKey,
    /// What it sums.
    pub sums: UsageSums,
}

/// Where a bucket of verifications counts.
///
/// Ordered by minute, then keyspace, key and owner: the order of
/// [`UsageStore::verification_buckets`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VerificationKey {
    /// The start of the minute (a multiple of [`MINUTE_MS`], not negative).
    pub minute: Timestamp,
    /// The key's keyspace.
    pub keyspace_id: String,
    /// The key.
    pub key_id: String,
    /// The key's owner; empty if it has none.
    pub owner_id: String,
}

/// Verification outcomes of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VerificationSums {
    /// `VALID`.
    pub success: u64,
    /// `RATE_LIMITED`.
    pub rate_limited: u64,
    /// `USAGE_EXCEEDED`.
    pub usage_exceeded: u64,
    /// Every other code (`DISABLED`, `EXPIRED`, `FORBIDDEN`,
    /// `INSUFFICIENT_PERMISSIONS`; `NOT_FOUND` has no key to count against).
    pub other: u64,
}

impl VerificationSums {
    /// The sums of one verification with `code`.
    pub fn of(code: VerifyCode) -> Self {
        let mut s = VerificationSums::default();
        match code {
            VerifyCode::Valid => s.success = 1,
            VerifyCode::RateLimited => s.rate_limited = 1,
            VerifyCode::UsageExceeded => s.usage_exceeded = 1,
            VerifyCode::NotFound
            | VerifyCode::Forbidden
            | VerifyCode::Disabled
            | VerifyCode::Expired
            | VerifyCode::InsufficientPermissions => s.other = 1,
        }
        s
    }

    /// Adds `o` into these sums (saturating).
    pub fn add(&mut self, o: &VerificationSums) {
        self.success = self.success.saturating_add(o.success);
        self.rate_limited = self.rate_limited.saturating_add(o.rate_limited);
        self.usage_exceeded = self.usage_exceeded.saturating_add(o.usage_exceeded);
        self.other = self.other.saturating_add(o.other);
    }

    /// The fields in declaration order (for fixed-width encodings).
    pub fn to_array(&self) -> [u64; 4] {
        [
            self.success,
            self.rate_limited,
            self.usage_exceeded,
            self.other,
        ]
    }

    /// The sums from [`Self::to_array`]'s order.
    pub fn from_array([success, rate_limited, usage_exceeded, other]: [u64; 4]) -> Self {
        VerificationSums {
            success,
            rate_limited,
            usage_exceeded,
            other,
        }
    }
}

/// A minute of verifications of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationBucket {
    /// Where it counts.
    pub key: VerificationKey,
    /// What it sums.
    pub sums: VerificationSums,
}

/// Usage and verifications another node counted, sent to be added here once
/// (a data plane's report to its control plane): the buckets of `sequence`
/// of the stream `source`. [`UsageStore::add_report`] adds it only when
/// `sequence` is above the last one added from `source`, so a report sent
/// again after a lost acknowledgement is not counted twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// The stream: who counted (1..=64 ASCII letters, digits, `-`, `_`,
    /// `.`, `:`).
    pub source: String,
    /// The report's place in its stream, from 1; each report's is above the
    /// one before.
    pub sequence: u64,
    /// Usage buckets.
    #[serde(default)]
    pub usage: Vec<UsageBucket>,
    /// Verification buckets.
    #[serde(default)]
    pub verifications: Vec<VerificationBucket>,
}

impl UsageReport {
    /// The longest source name.
    pub const MAX_SOURCE: usize = 64;

    /// Checks the source, the sequence and every bucket's key (as
    /// [`UsageLedger::record`] checks records).
    pub fn check(&self) -> Result<()> {
        if self.source.is_empty()
            || self.source.len() > Self::MAX_SOURCE
            || !self
                .source
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(Error::invalid(
                "source",
                "must be 1 to 64 ASCII letters, digits, '-', '_', '.' or ':'",
            ));
        }
        if self.sequence == 0 {
            return Err(Error::invalid("sequence", "must be at least 1"));
        }
        for b in &self.usage {
            check_minute(b.key.minute)?;
            check_part("tenant", &b.key.tenant, true)?;
            check_part("model", &b.key.model, true)?;
            check_part("key_id", &b.key.key_id, false)?;
            check_part("currency", &b.key.currency, false)?;
        }
        for b in &self.verifications {
            check_minute(b.key.minute)?;
            check_part("keyspace_id", &b.key.keyspace_id, true)?;
            check_part("key_id", &b.key.key_id, true)?;
            check_part("owner_id", &b.key.owner_id, false)?;
        }
        Ok(())
    }
}

/// Which usage buckets to read: minutes in `[from, to)` matching every
/// filter that is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageFilter {
    /// The first minute (inclusive; a minute counts when its start is at or
    /// after `from`).
    pub from: Timestamp,
    /// The end (exclusive: a minute starting at `to` is out).
    pub to: Timestamp,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only this key (`""`: requests without a key).
    pub key_id: Option<String>,
    /// Only this model.
    pub model: Option<String>,
}

impl UsageFilter {
    /// Every bucket of minutes in `[from, to)`.
    pub fn range(from: Timestamp, to: Timestamp) -> Self {
        UsageFilter {
            from,
            to,
            tenant: None,
            key_id: None,
            model: None,
        }
    }

    /// Whether the bucket `k` is selected.
    pub fn matches(&self, k: &UsageKey) -> bool {
        self.from <= k.minute
            && k.minute < self.to
            && self.tenant.as_deref().is_none_or(|t| t == k.tenant)
            && self.key_id.as_deref().is_none_or(|t| t == k.key_id)
            && self.model.as_deref().is_none_or(|t| t == k.model)
    }
}

/// Which verification buckets to read: minutes in `[from, to)` matching
/// every filter that is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationFilter {
    /// The first minute (inclusive).
    pub from: Timestamp,
    /// The end (exclusive).
    pub to: Timestamp,
    /// Only this keyspace.
    pub keyspace_id: Option<String>,
    /// Only this key.
    pub key_id: Option<String>,
    /// Only keys of this owner.
    pub owner_id: Option<String>,
}

impl VerificationFilter {
    /// Every bucket of minutes in `[from, to)`.
    pub fn range(from: Timestamp, to: Timestamp) -> Self {
        VerificationFilter {
            from,
            to,
            keyspace_id: None,
            key_id: None,
            owner_id: None,
        }
    }

    /// Whether the bucket `k` is selected.
    pub fn matches(&self, k: &VerificationKey) -> bool {
        self.from <= k.minute
            && k.minute < self.to
            && self
                .keyspace_id
                .as_deref()
                .is_none_or(|t| t == k.keyspace_id)
            && self.key_id.as_deref().is_none_or(|t| t == k.key_id)
            && self.owner_id.as_deref().is_none_or(|t| t == k.owner_id)
    }
}

/// A half-open range of time `[from, to)` to query, in Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TimeRange {
    /// The start (inclusive).
    pub from: Timestamp,
    /// The end (exclusive).
    pub to: Timestamp,
}

impl TimeRange {
    /// `[from, to)`.
    pub fn new(from: Timestamp, to: Timestamp) -> Self {
        TimeRange { from, to }
    }

    /// Checks the range: `from` after `to` is invalid input naming `from`;
    /// longer than `max_ms` is invalid input naming `to`.
    pub fn check(&self, max_ms: i64) -> Result<()> {
        if self.from > self.to {
            return Err(Error::invalid("from", "must not be after 'to'"));
        }
        let len = i128::from(self.to.as_millis()) - i128::from(self.from.as_millis());
        if len > i128::from(max_ms) {
            return Err(Error::invalid(
                "to",
                format!("the range must be at most {max_ms} ms long"),
            ));
        }
        Ok(())
    }
}

/// The step of a time series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One point per UTC minute.
    Minute,
    /// One point per UTC hour.
    Hour,
    /// One point per UTC day.
    Day,
}

impl Granularity {
    /// The step in milliseconds.
    pub fn millis(self) -> i64 {
        match self {
            Granularity::Minute => MINUTE_MS,
            Granularity::Hour => HOUR_MS,
            Granularity::Day => DAY_MS,
        }
    }

    /// The start of the step `t` is in (UTC).
    pub fn floor(self, t: Timestamp) -> Timestamp {
        let step = self.millis();
        Timestamp::from_millis(t.as_millis().div_euclid(step) * step)
    }

    /// The name: `minute`, `hour` or `day`.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Granularity {
    type Err = Error;

    /// `minute`, `hour` or `day`; anything else is invalid input naming
    /// `granularity`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "minute" => Ok(Granularity::Minute),
            "hour" => Ok(Granularity::Hour),
            "day" => Ok(Granularity::Day),
            _ => Err(Error::invalid(
                "granularity",
                "must be one of 'minute', 'hour', 'day'",
            )),
        }
    }
}

/// Checks one part of a bucket key: at most [`MAX_PART`] bytes, no control
/// characters (backends join parts with NUL), non-empty if `required`.
fn check_part(field: &'static str, s: &str, required: bool) -> Result<()> {
    if required && s.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if s.len() > MAX_PART {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_PART} bytes"),
        ));
    }
    if s.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Checks a bucket's minute: a minute's start, not before the epoch.
fn check_minute(minute: Timestamp) -> Result<()> {
    if minute_of(minute)? != minute.as_millis() {
        return Err(Error::invalid("minute", "must be the start of a minute"));
    }
    Ok(())
}

/// The minute `at` is in; invalid input naming `at` before the epoch.
fn minute_of(at: Timestamp) -> Result<i64> {
    let ms = at.as_millis();
    if ms < 0 {
        return Err(Error::invalid("at", "must not be before 1970-01-01"));
    }
    Ok(ms - ms % MINUTE_MS)
}
