//! Storage traits, one per aggregate, and the [`Storage`] bundle services are
//! built on.
//!
//! Each trait is object safe and used as `Arc<dyn …>`. A backend implements all
//! of them (usually on one type) and passes the conformance suite in
//! [`testkit`](crate::testkit) (feature `testkit`).
//!
//! Rules every backend keeps:
//! - A configuration change (create, update, delete of a tenant, keyspace or
//!   key) and its [`AuditEvent`] are stored together or not at all.
//! - Updates are optimistic: the caller passes the version it read, and the
//!   store refuses with [`Error::Conflict`] if the stored version differs; on
//!   success the stored version is `expected + 1`.
//! - Counter operations are atomic: concurrent calls on one counter behave as
//!   if run one after another, using the arithmetic of [`crate::counter`].
//! - Failures of the backend map to [`Error::Unavailable`] (saying whether
//!   they are transient) or [`Error::Internal`].

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::audit::{AuditEvent, AuditQuery};
use crate::clock::Timestamp;
use crate::counter::{
    Balance, BalanceOp, LimitOp, LimitState, LocalCounters, Refill, Reserved, SettleOp, Spend,
    WindowSpec, WindowTake,
};
use crate::error::{Error, Result};
use crate::id::{KeyId, KeyspaceId, TenantId};
use crate::key::{KeyHash, KeyRecord};
use crate::keyspace::Keyspace;
use crate::tenant::Tenant;
use crate::usage::{UsageBucket, UsageFilter, VerificationBucket, VerificationFilter};

/// One page of a list, with the total over all pages.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items of this page, in list order.
    pub items: Vec<T>,
    /// Pass this to get the next page; `None` on the last page.
    pub cursor: Option<String>,
    /// How many items match the query across all pages.
    pub total: u64,
}

impl<T> Page<T> {
    /// The page with each item mapped.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            cursor: self.cursor,
            total: self.total,
        }
    }
}

/// The default page size.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The largest page size; larger requests are clamped.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Which page of a list to return: items after `cursor` (ids ascending).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PageRequest {
    /// The cursor of the previous page; `None` for the first page.
    pub cursor: Option<String>,
    /// At most this many items; 0 means [`DEFAULT_PAGE_SIZE`], larger than
    /// [`MAX_PAGE_SIZE`] is clamped.
    pub limit: usize,
}

impl PageRequest {
    /// The first page of `limit` items.
    pub fn first(limit: usize) -> Self {
        PageRequest {
            cursor: None,
            limit,
        }
    }

    /// The effective page size.
    pub fn size(&self) -> usize {
        match self.limit {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        }
    }

    /// Builds a page from items sorted by id: skips those at or before the
    /// cursor, takes [`Self::size`] and sets the next cursor.
    ///
    /// A helper for backends that hold a sorted, filtered sequence.
    pub fn paginate<T>(
        &self,
        sorted: impl IntoIterator<Item = T>,
        id: impl Fn(&T) -> &str,
        total: u64,
    ) -> Page<T> {
        let size = self.size();
        let mut items: Vec<T> = sorted
            .into_iter()
            .filter(|t| self.cursor.as_deref().is_none_or(|c| id(t) > c))
            .take(size + 1)
            .collect();
        let more = items.len() > size;
        items.truncate(size);
        let cursor = if more {
            items.last().map(|t| id(t).to_owned())
        } else {
            None
        };
        Page {
            items,
            cursor,
            total,
        }
    }
}

/// Tenants: who consumes.
#[async_trait]
pub trait TenantStore: Send + Sync + fmt::Debug {
    /// Stores a new tenant. [`Error::Conflict`] if the id or the name is taken.
    async fn create_tenant(&self, tenant: &Tenant, audit: AuditEvent) -> Result<()>;
    /// The tenant `id`.
    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>>;
    /// The tenant named `name`.
    async fn get_tenant_by_name(&self, name: &str) -> Result<Option<Tenant>>;
    /// Tenants by id.
    async fn list_tenants(&self, page: &PageRequest) -> Result<Page<Tenant>>;
    /// Replaces the tenant if its stored version is `expected_version`; stores
    /// it with version `expected_version + 1`. [`Error::Conflict`] on a version
    /// mismatch or a taken name; [`Error::NotFound`] if it does not exist.
    async fn update_tenant(
        &self,
        tenant: &Tenant,
        expected_version: u64,
        audit: AuditEvent,
    ) -> Result<()>;
    /// Removes the tenant. [`Error::NotFound`] if it does not exist.
    async fn delete_tenant(&self, id: &TenantId, audit: AuditEvent) -> Result<()>;
}

/// Keyspaces: namespaces of keys (Unkey "APIs").
#[async_trait]
pub trait KeyspaceStore: Send + Sync + fmt::Debug {
    /// Stores a new keyspace. [`Error::Conflict`] if the id is taken.
    async fn create_keyspace(&self, keyspace: &Keyspace, audit: AuditEvent) -> Result<()>;
    /// The keyspace `id`.
    async fn get_keyspace(&self, id: &KeyspaceId) -> Result<Option<Keyspace>>;
    /// Keyspaces by id.
    async fn list_keyspaces(&self, page: &PageRequest) -> Result<Page<Keyspace>>;
    /// Replaces the keyspace (optimistic, as [`TenantStore::update_tenant`]).
    async fn update_keyspace(
        &self,
        keyspace: &Keyspace,
        expected_version: u64,
        audit: AuditEvent,
    ) -> Result<()>;
    /// Removes the keyspace. [`Error::NotFound`] if it does not exist.
    async fn delete_keyspace(&self, id: &KeyspaceId, audit: AuditEvent) -> Result<()>;
}

/// A query over keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyQuery {
    /// Only keys of this keyspace.
    pub keyspace_id: Option<KeyspaceId>,
    /// Only keys of this owner.
    pub owner_id: Option<String>,
    /// Include soft-deleted keys.
    pub include_deleted: bool,
    /// Which page.
    pub page: PageRequest,
}

impl KeyQuery {
    /// Whether `k` matches the filters of this query (not the page).
    pub fn matches(&self, k: &KeyRecord) -> bool {
        self.keyspace_id
            .as_ref()
            .is_none_or(|ks| &k.keyspace_id == ks)
            && self
                .owner_id
                .as_deref()
                .is_none_or(|o| k.owner_id.as_deref() == Some(o))
            && (self.include_deleted || k.deleted_at.is_none())
    }

    /// This query's page of keys held in memory: `keys` by id, with the ids
    /// of each keyspace and of each owner (the narrowest index that applies
    /// is walked). A helper for stores that hold keys in memory.
    pub fn page_of<'a>(
        &self,
        keys: &'a std::collections::BTreeMap<KeyId, KeyRecord>,
        by_keyspace: &'a std::collections::HashMap<KeyspaceId, std::collections::BTreeSet<KeyId>>,
        by_owner: &'a std::collections::HashMap<String, std::collections::BTreeSet<KeyId>>,
    ) -> Page<&'a KeyRecord> {
        let ids: Box<dyn Iterator<Item = &KeyId>> = match (&self.keyspace_id, &self.owner_id) {
            (Some(ks), _) => Box::new(by_keyspace.get(ks).into_iter().flatten()),
            (None, Some(o)) => Box::new(by_owner.get(o).into_iter().flatten()),
            (None, None) => Box::new(keys.keys()),
        };
        let matching: Vec<&KeyRecord> = ids
            .filter_map(|id| keys.get(id))
            .filter(|k| self.matches(k))
            .collect();
        let total = matching.len() as u64;
        self.page.paginate(matching, |k| k.id.as_str(), total)
    }
}

/// Keys: records of long-lived secrets (the secret itself is never stored).
#[async_trait]
pub trait KeyStore: Send + Sync + fmt::Debug {
    /// Stores a new key. [`Error::Conflict`] if the id or hash is taken, or if
    /// the key has `unique_name` and a live key with `unique_name` of the same
    /// keyspace and owner already has that name ([`KeyRecord::unique_slot`]).
    async fn create_key(&self, key: &KeyRecord, audit: AuditEvent) -> Result<()>;
    /// The key `id`, deleted or not.
    async fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>>;
    /// The key whose secret hashes to `hash`, deleted or not.
    async fn get_key_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>>;
    /// Keys matching `query`, by id.
    async fn list_keys(&self, query: &KeyQuery) -> Result<Page<KeyRecord>>;
    /// [`Self::list_keys`] for a caller that reads page after page and
    /// needs no count (building an artifact): the same items and cursor,
    /// but `total` may be 0, so a backend whose count costs a scan of the
    /// whole index answers in time proportional to the page.
    async fn scan_keys(&self, query: &KeyQuery) -> Result<Page<KeyRecord>> {
        self.list_keys(query).await
    }
    /// Replaces the key (optimistic, as [`TenantStore::update_tenant`]). This
    /// covers every change: fields, enable/disable, reroll (a new hash: the old
    /// one stops resolving), soft delete and restore (`deleted_at`). Unique
    /// names are enforced among live keys, so a restore can conflict.
    async fn update_key(
        &self,
        key: &KeyRecord,
        expected_version: u64,
        audit: AuditEvent,
    ) -> Result<()>;
    /// Records when keys were last used. Not configuration: no audit, no
    /// version change; unknown ids are ignored; a time older than the stored
    /// one is ignored. May be written behind.
    async fn touch_keys(&self, used: &[(KeyId, Timestamp)]) -> Result<()>;
}

/// Counters that must be exact. Every operation is atomic.
#[async_trait]
pub trait CounterStore: Send + Sync + fmt::Debug {
    /// The balance `id` as stored (refills not applied).
    async fn balance(&self, id: &str) -> Result<Option<Balance>>;
    /// Creates or replaces (`Some`) or removes (`None`) the balance `id`.
    async fn put_balance(&self, id: &str, balance: Option<Balance>) -> Result<()>;
    /// Decrement-if-enough: applies a due refill, then takes `cost` if that
    /// much remains ([`Balance::refilled`], [`Balance::spend`]). Returns the
    /// new state; a missing balance is not created.
    async fn spend(
        &self,
        id: &str,
        cost: u64,
        refill: Option<&Refill>,
        now: Timestamp,
    ) -> Result<Spend>;
    /// Applies a due refill, then `op` ([`BalanceOp::apply`]). `None` if the
    /// balance does not exist (nothing is created).
    async fn adjust(
        &self,
        id: &str,
        op: BalanceOp,
        refill: Option<&Refill>,
        now: Timestamp,
    ) -> Result<Option<Balance>>;
    /// Windowed increment: takes `cost` units from the window counter `id`
    /// ([`WindowState::take`](crate::counter::WindowState::take)); a missing
    /// counter starts full.
    async fn take(
        &self,
        id: &str,
        spec: &WindowSpec,
        cost: u64,
        now: Timestamp,
    ) -> Result<WindowTake>;
    /// Removes the window counter `id`.
    async fn reset_window(&self, id: &str) -> Result<()>;
    /// Reserves against several limit counters at once, all or none
    /// ([`reserve_all`](crate::counter::reserve_all)): either every op's
    /// cost is taken, or nothing is written. Missing counters start fresh.
    /// Window counters and limit counters share one id space.
    async fn reserve(&self, ops: &[LimitOp], now: Timestamp) -> Result<Reserved>;
    /// Settles reservations ([`LimitSpec::settle`](crate::counter::LimitSpec::settle)),
    /// each op atomically; returns the state of each counter after its op.
    async fn settle(&self, ops: &[SettleOp], now: Timestamp) -> Result<Vec<LimitState>>;
    /// The in-process counters this store keeps its limit counters in, if
    /// it keeps them so (the memory store): a hot path may then reserve
    /// ([`LocalCounters::reserve_refs`]) and settle
    /// ([`LocalCounters::settle_limit`]) on them directly, to the same
    /// effect as [`Self::reserve`] and [`Self::settle`] but without owned
    /// ids or a boxed future. `None`, the default, for every other store,
    /// and for wrappers that must see each call.
    fn local_counters(&self) -> Option<&LocalCounters> {
        None
    }
}

/// A configuration record of the catalog: one typed value (a tier, a model,
/// a signing key, a revocation, ...) stored as JSON under `(kind, id)`.
///
/// Services own the typing and the validation; a backend stores records
/// opaquely, so a new kind of configuration needs no backend change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// What the record is, e.g. `"tier"`; one namespace of ids per kind.
    pub kind: String,
    /// The id within the kind.
    pub id: String,
    /// The value.
    pub body: serde_json::Value,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last changed.
    pub updated_at: Timestamp,
    /// Incremented by the store on every update (1 when created).
    pub version: u64,
}

/// Catalog records (see [`Record`]): tiers, models, signing keys, revocations
/// and the other configuration services keep, each change audited.
#[async_trait]
pub trait RecordStore: Send + Sync + fmt::Debug {
    /// Stores a new record. [`Error::Conflict`] if `(kind, id)` is taken.
    async fn create_record(&self, record: &Record, audit: AuditEvent) -> Result<()>;
    /// The record `id` of `kind`.
    async fn get_record(&self, kind: &str, id: &str) -> Result<Option<Record>>;
    /// Records of `kind`, by id; the total counts records of that kind only.
    async fn list_records(&self, kind: &str, page: &PageRequest) -> Result<Page<Record>>;
    /// Replaces the record (optimistic, as [`TenantStore::update_tenant`]).
    async fn update_record(
        &self,
        record: &Record,
        expected_version: u64,
        audit: AuditEvent,
    ) -> Result<()>;
    /// Removes the record. [`Error::NotFound`] if it does not exist.
    async fn delete_record(&self, kind: &str, id: &str, audit: AuditEvent) -> Result<()>;
}

/// The audit log.
#[async_trait]
pub trait AuditStore: Send + Sync + fmt::Debug {
    /// Appends an event outside of any other change; returns its `seq`.
    async fn append_audit(&self, event: AuditEvent) -> Result<u64>;
    /// One page, newest first; the cursor is the `seq` of the last event.
    async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEvent>>;
}

/// Usage aggregates: per-minute buckets of requests, tokens and costs, and
/// of key verification outcomes, written by the
/// [`UsageLedger`](crate::usage::UsageLedger).
///
/// Every add is an increment: each bucket is added into the stored bucket
/// with the same key (created if missing), field by field, saturating. A
/// call is atomic: on error nothing of it was added, so the ledger can send
/// a refused batch again without counting anything twice. Concurrent adds
/// (from many tasks or nodes) all land.
///
/// Minutes are not negative (the ledger refuses records before the epoch);
/// key parts hold no control characters.
#[async_trait]
pub trait UsageStore: Send + Sync + fmt::Debug {
    /// Adds each usage bucket into the stored one with its key.
    async fn add_usage(&self, buckets: &[UsageBucket]) -> Result<()>;
    /// Adds each verification bucket into the stored one with its key.
    async fn add_verifications(&self, buckets: &[VerificationBucket]) -> Result<()>;
    /// Adds `report`'s buckets, as [`Self::add_usage`] and
    /// [`Self::add_verifications`] together, if its sequence is above the
    /// last one added from its source, and remembers that sequence — all
    /// atomically: `Ok(false)` (nothing added) for a report already added
    /// or older; concurrent calls with one report add it once. The caller
    /// has checked it ([`UsageReport::check`](crate::usage::UsageReport::check)).
    async fn add_report(&self, report: &crate::usage::UsageReport) -> Result<bool>;
    /// The stored usage buckets `filter` selects, sorted by key.
    async fn usage_buckets(&self, filter: &UsageFilter) -> Result<Vec<UsageBucket>>;
    /// The stored verification buckets `filter` selects, sorted by key.
    async fn verification_buckets(
        &self,
        filter: &VerificationFilter,
    ) -> Result<Vec<VerificationBucket>>;
}

/// Everything a backend provides, as trait objects: what services are built on.
#[derive(Clone)]
pub struct Storage {
    /// Tenants.
    pub tenants: Arc<dyn TenantStore>,
    /// Keyspaces.
    pub keyspaces: Arc<dyn KeyspaceStore>,
    /// Keys.
    pub keys: Arc<dyn KeyStore>,
    /// Counters.
    pub counters: Arc<dyn CounterStore>,
    /// Audit log.
    pub audit: Arc<dyn AuditStore>,
    /// Catalog records.
    pub records: Arc<dyn RecordStore>,
    /// Usage aggregates.
    pub usage: Arc<dyn UsageStore>,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// A backend that implements every storage trait on one type.
pub trait Backend:
    TenantStore
    + KeyspaceStore
    + KeyStore
    + CounterStore
    + AuditStore
    + RecordStore
    + UsageStore
    + 'static
{
}

impl<T> Backend for T where
    T: TenantStore
        + KeyspaceStore
        + KeyStore
        + CounterStore
        + AuditStore
        + RecordStore
        + UsageStore
        + 'static
{
}

impl Storage {
    /// The bundle of one backend implementing every trait.
    pub fn from_backend<B: Backend>(backend: Arc<B>) -> Self {
        Storage {
            tenants: backend.clone(),
            keyspaces: backend.clone(),
            keys: backend.clone(),
            counters: backend.clone(),
            audit: backend.clone(),
            records: backend.clone(),
            usage: backend,
        }
    }
}

/// The limit of an [`AuditQuery`] as a page size.
pub fn audit_page_size(q: &AuditQuery) -> usize {
    PageRequest::first(q.limit).size()
}

/// [`Error::Conflict`] for a version mismatch on `kind` `id`.
pub fn version_conflict(kind: &str, id: &str) -> Error {
    Error::conflict(format!(
        "{kind} '{id}' was changed concurrently; read it again"
    ))
}
