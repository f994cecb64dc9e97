//! # maas-core
//!
//! The domain of maas, a Model-as-a-Service access layer: who may call which
//! model, how often, with how many tokens, and what it cost.
//!
//! This crate has no HTTP, no storage engine and no global clock:
//! - storage is a set of object-safe async traits ([`storage`]), implemented
//!   by backend crates (`maas-store-memory`, ...) and checked by one
//!   conformance suite ([`testkit`], feature `testkit`);
//! - time comes from a [`Clock`]; tests use a [`ManualClock`];
//! - errors are one enum by meaning, [`Error`].
//!
//! The `maas` facade crate's documentation shows the whole flow with a backend.

#![forbid(unsafe_code)]

pub mod admission;
pub mod artifact;
pub mod audit;
mod catalog;
pub mod clock;
pub mod counter;
pub mod dataplane;
pub mod error;
pub mod fairshare;
pub mod gateway;
pub mod id;
pub mod identity;
pub mod key;
pub mod keyspace;
pub mod mcp;
pub mod model;
pub mod patch;
pub mod projects;
pub mod ratelimit;
pub mod rootkeys;
pub mod scheduling;
pub mod storage;
pub mod tenant;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tier;
pub mod token;
pub mod upstream;
pub mod usage;
pub mod userkeys;
mod validate;
mod versioned;
pub mod webhook;

/// A map looked up by name on the gateway's hot path: std's map with
/// foldhash's hasher (SipHash costs several times as much per lookup,
/// callgrind counted). Its keys are names from the operator's configuration
/// or of authenticated tenants, and foldhash is seeded at random per
/// process, so keys that collide cannot be chosen from outside.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use admission::{
    ActualUsage, AdmissionConfig, AdmissionLimits, AdmissionRequest, Budget, BudgetScope,
    BudgetStatus, BudgetWarning, Denied, LimitKind, NewBudget, RateHeaders, Reservation,
    estimate_prompt_tokens,
};
pub use audit::{Actor, AuditEvent, AuditQuery};
pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use counter::{Balance, BalanceOp, LocalCounters, Refill, RefillInterval, WindowSpec};
pub use error::{Error, Result};
pub use fairshare::{
    Admission, FairShare, FairShareConfig, GroupSnapshot, OutputCharging, Permit, PoolCounts,
    PoolRef, PoolSnapshot, RejectReason, Rejected, Request, Snapshot, TenantSnapshot, Waiting,
};
pub use gateway::{
    Admitted, CachedAnswer, Caller, Completion, Gateway, GatewayServices, InferenceRequest,
    Refused, TENANT_RECHECK,
};
pub use id::{KeyId, KeyspaceId, TenantId};
pub use identity::{Authenticator, Chain, Identity, StaticTokens};
pub use key::{
    CreatedKey, Key, KeyHasher, KeyRateLimit, KeyRecord, KeyService, KeyServiceConfig, KeyUpdate,
    NewKey, PermissionQuery, RateLimitKind, RemainingOp, Verification, VerifyCode, VerifyOptions,
};
pub use keyspace::{Keyspace, KeyspaceUpdate, NewKeyspace};
pub use model::{
    CacheSettings, Model, ModelEntry, ModelIndex, ModelList, ModelService, ModelServiceConfig,
    ModelUpdate, NewModel, Pricing, Upstream,
};
pub use patch::Patch;
pub use ratelimit::{
    LimitRequest, LimitResponse, OverrideLimit, RateLimitConfig, RateLimitOverride, RateLimiter,
};
pub use rootkeys::{CreatedRootKey, RootAction, RootAuth, RootKey, RootKeys};
pub use storage::{KeyQuery, Page, PageRequest, Storage};
pub use tenant::{NewTenant, Tenant, TenantService, TenantUpdate};
pub use tier::{
    ModelAccess, NewTier, Tier, TierIndex, TierService, TierServiceConfig, TierUpdate,
    default_tiers, select_tier,
};
pub use token::{
    MintedToken, SigningAlgorithm, TokenConfig, TokenRejection, TokenService, VerifiedToken,
};
pub use upstream::{BalancerConfig, Outcome, Pick, Pool, Upstreams};
pub use usage::{
    Granularity, RequestOutcome, TimeRange, UsageConfig, UsageLedger, UsageRecord,
    VerificationRecord,
};
pub use userkeys::{CreatedUserKey, UserKey, UserKeyList, UserKeys};

/// Compile-time check: the services' futures are `Send`, so they can run on
/// any executor thread (axum handlers, `tokio::spawn`).
#[cfg(test)]
#[allow(dead_code)]
mod send_check {
    use super::*;

    fn send<T: Send>(_: T) {}

    fn keys(s: &KeyService, a: &Actor, id: &KeyId, ks: &KeyspaceId) {
        send(s.verify("k", &VerifyOptions::default()));
        send(s.create(a, NewKey::in_keyspace(ks.clone())));
        send(s.update(a, id, KeyUpdate::default()));
        send(s.update_remaining(a, id, RemainingOp::Set, None));
        send(s.reroll(a, id));
        send(s.delete(a, id));
        send(s.restore(a, id));
        send(s.update_keyspace(a, ks, KeyspaceUpdate::default()));
        send(s.delete_keyspace(a, ks));
        send(s.maintain());
    }

    fn catalog(t: &TierService, m: &ModelService, u: &UserKeys, a: &Actor, tier: &Tier) {
        send(t.lookup(&[]));
        send(t.create(a, default_tiers().remove(0)));
        send(t.update(a, "t", TierUpdate::default()));
        send(t.delete(a, "t"));
        send(t.ensure_defaults(a));
        send(m.create(a, NewModel::new("m", "http://m")));
        send(m.update(a, "m", ModelUpdate::default()));
        send(m.set_cache(a, "m", CacheSettings::default()));
        send(m.check_access(tier, "m"));
        send(m.openai_list(tier, "http://gw"));
        send(u.create("u", "k"));
        send(u.list("u"));
        send(u.delete("u", "k"));
    }

    fn rootkeys(r: &RootKeys, a: &Actor, auth: &RootAuth, id: &KeyId, ks: &KeyspaceId) {
        send(r.create(a, "ci", Vec::new()));
        send(r.list());
        send(r.delete(a, id));
        send(r.authenticate(Some("k"), None));
        send(r.verify("k", &VerifyOptions::default()));
        send(r.create_key(auth, NewKey::in_keyspace(ks.clone())));
        send(r.update_key(auth, id, KeyUpdate::default()));
        send(r.list_api_keys(auth, ks, None, rootkeys::ListFrom::Offset(1), 1));
    }

    fn ratelimit(r: &RateLimiter, req: &LimitRequest, a: &Actor) {
        send(r.limit(req));
        send(r.sync());
        send(r.set_override(
            a,
            "ns",
            "id",
            OverrideLimit {
                limit: 1,
                duration: 1000,
                fast: None,
            },
        ));
    }

    fn admission(l: &AdmissionLimits, r: &AdmissionRequest<'_>, res: Reservation) {
        send(l.reserve(r));
        send(res.reconcile(ActualUsage::default()));
    }

    fn fairshare(f: &FairShare) {
        send(f.acquire(Request::new("t", 1, 1)));
    }

    fn usage(l: &UsageLedger, r: TimeRange) {
        use crate::usage::{GroupBy, UsageScope, VerificationScope};
        send(l.flush());
        send(l.totals(r, GroupBy::Tenant, &UsageScope::default()));
        send(l.series(r, Granularity::Hour, None));
        send(l.series_by_tenant(r, Granularity::Day));
        send(l.verifications(r, &VerificationScope::default()));
        send(l.cache(r));
        send(l.costs(r, GroupBy::Model));
        send(l.spawn_flusher().shutdown());
    }

    fn tenants(s: &TenantService, a: &Actor, id: &TenantId) {
        send(s.update(a, id, TenantUpdate::default()));
        send(s.create(a, NewTenant::default()));
    }
}
