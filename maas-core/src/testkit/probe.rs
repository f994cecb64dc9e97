//! [`Probe`]: a storage wrapper that counts reads and writes, so scenarios can
//! prove that an operation touched (or did not touch) the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::audit::{AuditEvent, AuditQuery};
use crate::clock::Timestamp;
use crate::counter::{
    Balance, BalanceOp, LimitOp, LimitState, Refill, Reserved, SettleOp, Spend, WindowSpec,
    WindowTake,
};
use crate::error::Result;
use crate::id::{KeyId, KeyspaceId, TenantId};
use crate::key::{KeyHash, KeyRecord};
use crate::keyspace::Keyspace;
use crate::storage::{
    AuditStore, CounterStore, KeyQuery, KeyStore, KeyspaceStore, Page, PageRequest, Record,
    RecordStore, Storage, TenantStore, UsageStore,
};
use crate::tenant::Tenant;
use crate::usage::{UsageBucket, UsageFilter, VerificationBucket, VerificationFilter};

/// Counts of store calls seen by a [`Probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProbeCounts {
    /// Calls that only read.
    pub reads: u64,
    /// Calls that may change state.
    pub writes: u64,
}

/// Wraps a [`Storage`] and counts every call.
#[derive(Debug)]
pub struct Probe {
    inner: Storage,
    reads: AtomicU64,
    writes: AtomicU64,
    yield_on_write: bool,
}

impl Probe {
    /// Wraps `inner`; returns the probe and a storage that goes through it.
    pub fn wrap(inner: Storage) -> (Arc<Probe>, Storage) {
        Self::build(inner, false)
    }

    /// Like [`Self::wrap`], but every call that may change state first
    /// yields to the scheduler once, as a store across a network would: a
    /// caller that polls it once sees it pending.
    pub fn wrap_yielding(inner: Storage) -> (Arc<Probe>, Storage) {
        Self::build(inner, true)
    }

    fn build(inner: Storage, yield_on_write: bool) -> (Arc<Probe>, Storage) {
        let probe = Arc::new(Probe {
            inner,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            yield_on_write,
        });
        let storage = Storage::from_backend(Arc::clone(&probe));
        (probe, storage)
    }

    /// The counts so far.
    pub fn counts(&self) -> ProbeCounts {
        ProbeCounts {
            reads: self.reads.load(Ordering::SeqCst),
            writes: self.writes.load(Ordering::SeqCst),
        }
    }

    fn r(&self) {
        self.reads.fetch_add(1, Ordering::SeqCst);
    }

    async fn w(&self) {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if self.yield_on_write {
            tokio::task::yield_now().await;
        }
    }
}

#[async_trait]
impl TenantStore for Probe {
    async fn create_tenant(&self, t: &Tenant, a: AuditEvent) -> Result<()> {
        self.w().await;
        self.inner.tenants.create_tenant(t, a).await
    }
    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>> {
        self.r();
        self.inner.tenants.get_tenant(id).await
    }
    async fn get_tenant_by_name(&self, name: &str) -> Result<Option<Tenant>> {
        self.r();
        self.inner.tenants.get_tenant_by_name(name).await
    }
    async fn list_tenants(&self, p: &PageRequest) -> Result<Page<Tenant>> {
        self.r();
        self.inner.tenants.list_tenants(p).await
    }
    async fn update_tenant(&self, t: &Tenant, v: u64, a: AuditEvent) -> Result<()> {
        self.w().await;
        self.inner.tenants.update_tenant(t, v, a).await
    }
    async fn delete_tenant(&self, id: &TenantId, a: AuditEvent) -> Result<()> {
        self.w().await;
        self.inner.tenants.delete_tenant(id, a).await
    }
}

#[async_trait]
impl KeyspaceStore for Probe {
    async fn create_keyspace(&self, k: &Keyspace, a: AuditEvent) -> Result<()> {
        self.w().await;
        self.inner.keyspaces.create_keyspace(k, a).await
    }
    async fn get_keyspace(&self, id: &KeyspaceId) -> Result<Option<Keyspace>> {
        self.r();
        self.inner.keyspaces.get_keyspace(id).await
    }
    async fn list_keyspaces(&self, p: &PageRequest) -> Result<Page<Keyspace>> {
        self.r();
        self.inner.keyspaces.list_keyspaces(p).await
    }
    async fn update_keyspace(&self, k: &Keyspace, v: u64, a: AuditEvent) -> Result<()> {
        self.w().await;
        self.inner.keyspaces.update_keyspace(k, v, a).await
    }
    async fn delete_keyspace(&self, id: &KeyspaceId, a: AuditEvent) -> Result<()> {
        self.w().await;
        self.inner.keyspaces.delete_keyspace(id, a).await
    }
}

#[async_trait]
impl KeyStore for Probe {
    async fn create_key(&self, k: &KeyRecord, a: AuditEvent) -> Result<()> {
        self.w().await;
        self.inner.keys.create_key(k, a).await
    }
    async fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>> {
        self.r();
        self.inner.keys.get_key(id).await
    }
    async fn get_key_by_hash(&self, h: &KeyHash) -> Result<Option<KeyRecord>> {
        self.r();
        self.inner.keys.get_key_by_hash(h).await
    }
    async fn list_keys(&self, q: &KeyQuery) -> Result<Page<KeyRecord>> {
        self.r();
        self.inner.keys.list_keys(q).await
    }
    async fn update_key(&self, k: &KeyRecord, v: u64, a: AuditEvent) -> Result<()> {
        self.w().await;
        self.inner.keys.update_key(k, v, a).await
    }
    async fn touch_keys(&self, used: &[(KeyId, Timestamp)]) -> Result<()> {
        self.w().await;
        self.inner.keys.touch_keys(used).await
    }
}

#[async_trait]
impl CounterStore for Probe {
    async fn balance(&self, id: &str) -> Result<Option<Balance>> {
        self.r();
        self.inner.counters.balance(id).await
    }
    async fn put_balance(&self, id: &str, b: Option<Balance>) -> Result<()> {
        self.w().await;
        self.inner.counters.put_balance(id, b).await
    }
    async fn spend(&self, id: &str, c: u64, r: Option<&Refill>, now: Timestamp) -> Result<Spend> {
        self.w().await;
        self.inner.counters.spend(id, c, r, now).await
    }
    async fn adjust(
        &self,
        id: &str,
        op: BalanceOp,
        r: Option<&Refill>,
        now: Timestamp,
    ) -> Result<Option<Balance>> {
        self.w().await;
        self.inner.counters.adjust(id, op, r, now).await
    }
    async fn take(&self, id: &str, s: &WindowSpec, c: u64, now: Timestamp) -> Result<WindowTake> {
        self.w().await;
        self.inner.counters.take(id, s, c, now).await
    }
    async fn reset_window(&self, id: &str) -> Result<()> {
        self.w().await;
        self.inner.counters.reset_window(id).await
    }
    async fn reserve(&self, ops: &[LimitOp], now: Timestamp) -> Result<Reserved> {
        self.w().await;
        self.inner.counters.reserve(ops, now).await
    }
    async fn settle(&self, ops: &[SettleOp], now: Timestamp) -> Result<Vec<LimitState>> {
        self.w().await;
        self.inner.counters.settle(ops, now).await
    }
}

#[async_trait]
impl AuditStore for Probe {
    async fn append_audit(&self, e: AuditEvent) -> Result<u64> {
        self.w().await;
        self.inner.audit.append_audit(e).await
    }
    async fn list_audit(&self, q: &AuditQuery) -> Result<Page<AuditEvent>> {
        self.r();
        self.inner.audit.list_audit(q).await
    }
}

#[async_trait]
impl RecordStore for Probe {
    async fn create_record(&self, r: &Record, a: AuditEvent) -> Result<()> {
        self.w().await;
        self.inner.records.create_record(r, a).await
    }
    async fn get_record(&self, kind: &str, id: &str) -> Result<Option<Record>> {
        self.r();
        self.inner.records.get_record(kind, id).await
    }
    async fn list_records(&self, kind: &str, p: &PageRequest) -> Result<Page<Record>> {
        self.r();
        self.inner.records.list_records(kind, p).await
    }
    async fn update_record(&self, r: &Record, v: u64, a: AuditEvent) -> Result<()> {
        self.w().await;
        self.inner.records.update_record(r, v, a).await
    }
    async fn delete_record(&self, kind: &str, id: &str, a: AuditEvent) -> Result<()> {
        self.w().await;
        self.inner.records.delete_record(kind, id, a).await
    }
}

#[async_trait]
impl UsageStore for Probe {
    async fn add_usage(&self, b: &[UsageBucket]) -> Result<()> {
        self.w().await;
        self.inner.usage.add_usage(b).await
    }
    async fn add_verifications(&self, b: &[VerificationBucket]) -> Result<()> {
        self.w().await;
        self.inner.usage.add_verifications(b).await
    }
    async fn add_report(&self, r: &crate::usage::UsageReport) -> Result<bool> {
        self.w().await;
        self.inner.usage.add_report(r).await
    }
    async fn usage_buckets(&self, f: &UsageFilter) -> Result<Vec<UsageBucket>> {
        self.r();
        self.inner.usage.usage_buckets(f).await
    }
    async fn verification_buckets(
        &self,
        f: &VerificationFilter,
    ) -> Result<Vec<VerificationBucket>> {
        self.r();
        self.inner.usage.verification_buckets(f).await
    }
}
