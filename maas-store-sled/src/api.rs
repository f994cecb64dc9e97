//! The storage traits of `maas-core` on [`SledStore`]: changes go to the
//! writer thread (see `crate::writer`), reads to its reader threads (see
//! `crate::readers`), so no sled call, which may wait on disk, runs on a runtime worker thread.
//! Configuration is durable through a sled flush, counters and usage
//! through the journal (see `crate::journal`).

use async_trait::async_trait;
use maas_core::audit::{AuditEvent, AuditQuery};
use maas_core::counter::{
    Balance, BalanceOp, LimitOp, LimitSpec, LimitState, Refill, Reserved, SettleOp, Spend,
    WindowSpec, WindowTake,
};
use maas_core::key::{KeyHash, KeyRecord};
use maas_core::storage::{
    AuditStore, CounterStore, KeyQuery, KeyStore, KeyspaceStore, Page, PageRequest, Record,
    RecordStore, TenantStore, UsageStore,
};
use maas_core::usage::{UsageBucket, UsageFilter, VerificationBucket, VerificationFilter};
use maas_core::{KeyId, Keyspace, KeyspaceId, Result, Tenant, TenantId, Timestamp};

use crate::SledStore;
use crate::codec::joined;
use crate::journal::Journaled;
use crate::usage::{add, usage_entries, verification_entries};
use crate::writer::{Durable, Lane};

#[async_trait]
impl TenantStore for SledStore {
    async fn create_tenant(&self, tenant: &Tenant, audit: AuditEvent) -> Result<()> {
        let tenant = tenant.clone();
        self.configure(move |t| t.create_tenant(&tenant, &audit))
            .await
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>> {
        let id = id.clone();
        self.read(move |t| t.get(&t.tenants, id.as_str().as_bytes()))
            .await
    }

    async fn get_tenant_by_name(&self, name: &str) -> Result<Option<Tenant>> {
        let name = name.to_owned();
        self.read(move |t| t.get_tenant_by_name(&name)).await
    }

    async fn list_tenants(&self, page: &PageRequest) -> Result<Page<Tenant>> {
        let page = page.clone();
        self.read(move |t| t.page(&t.tenants, &page)).await
    }

    async fn update_tenant(
        &self,
        tenant: &Tenant,
        expected_version: u64,
        audit: AuditEvent,
    ) -> Result<()> {
        let tenant = tenant.clone();
        self.configure(move |t| t.update_tenant(&tenant, expected_version, &audit))
            .await
    }

    async fn delete_tenant(&self, id: &TenantId, audit: AuditEvent) -> Result<()> {
        let id = id.clone();
        self.configure(move |t| t.delete_tenant(&id, &audit)).await
    }
}

#[async_trait]
impl KeyspaceStore for SledStore {
    async fn create_keyspace(&self, keyspace: &Keyspace, audit: AuditEvent) -> Result<()> {
        let keyspace = keyspace.clone();
        self.configure(move |t| t.create_keyspace(&keyspace, &audit))
            .await
    }

    async fn get_keyspace(&self, id: &KeyspaceId) -> Result<Option<Keyspace>> {
        let id = id.clone();
        self.read(move |t| t.get(&t.keyspaces, id.as_str().as_bytes()))
            .await
    }

    async fn list_keyspaces(&self, page: &PageRequest) -> Result<Page<Keyspace>> {
        let page = page.clone();
        self.read(move |t| t.page(&t.keyspaces, &page)).await
    }

    async fn update_keyspace(
        &self,
        keyspace: &Keyspace,
        expected_version: u64,
        audit: AuditEvent,
    ) -> Result<()> {
        let keyspace = keyspace.clone();
        self.configure(move |t| t.update_keyspace(&keyspace, expected_version, &audit))
            .await
    }

    async fn delete_keyspace(&self, id: &KeyspaceId, audit: AuditEvent) -> Result<()> {
        let id = id.clone();
        self.configure(move |t| t.delete_keyspace(&id, &audit))
            .await
    }
}

#[async_trait]
impl KeyStore for SledStore {
    async fn create_key(&self, key: &KeyRecord, audit: AuditEvent) -> Result<()> {
        let key = key.clone();
        self.configure(move |t| t.create_key(&key, &audit)).await
    }

    async fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>> {
        let id = id.clone();
        self.read(move |t| t.get_key(&id)).await
    }

    async fn get_key_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>> {
        let hash = *hash;
        self.read(move |t| t.get_key_by_hash(&hash)).await
    }

    async fn list_keys(&self, query: &KeyQuery) -> Result<Page<KeyRecord>> {
        let query = query.clone();
        self.read(move |t| t.list_keys(&query, true)).await
    }

    async fn scan_keys(&self, query: &KeyQuery) -> Result<Page<KeyRecord>> {
        let query = query.clone();
        self.read(move |t| t.list_keys(&query, false)).await
    }

    async fn update_key(
        &self,
        key: &KeyRecord,
        expected_version: u64,
        audit: AuditEvent,
    ) -> Result<()> {
        let key = key.clone();
        self.configure(move |t| t.update_key(&key, expected_version, &audit))
            .await
    }

    async fn touch_keys(&self, used: &[(KeyId, Timestamp)]) -> Result<()> {
        // Written behind, off the writer thread: last-used times are a tree
        // of their own that nothing else writes, and each key stands alone.
        let used = used.to_vec();
        self.read(move |t| t.touch_keys(&used)).await
    }
}

#[async_trait]
impl CounterStore for SledStore {
    async fn balance(&self, id: &str) -> Result<Option<Balance>> {
        let id = id.to_owned();
        self.read(move |t| t.balance(&id)).await
    }

    async fn put_balance(&self, id: &str, balance: Option<Balance>) -> Result<()> {
        let id = id.to_owned();
        self.count(move |t, j| t.put_balance(j, &id, balance)).await
    }

    async fn spend(
        &self,
        id: &str,
        cost: u64,
        refill: Option<&Refill>,
        now: Timestamp,
    ) -> Result<Spend> {
        let (id, refill) = (id.to_owned(), refill.cloned());
        self.count(move |t, j| t.spend(j, &id, cost, refill.as_ref(), now))
            .await
    }

    async fn adjust(
        &self,
        id: &str,
        op: BalanceOp,
        refill: Option<&Refill>,
        now: Timestamp,
    ) -> Result<Option<Balance>> {
        let (id, refill) = (id.to_owned(), refill.cloned());
        self.count(move |t, j| t.adjust(j, &id, op, refill.as_ref(), now))
            .await
    }

    async fn take(
        &self,
        id: &str,
        spec: &WindowSpec,
        cost: u64,
        now: Timestamp,
    ) -> Result<WindowTake> {
        let (id, spec) = (id.to_owned(), LimitSpec::Bucket(*spec));
        self.count(move |t, j| t.take_limit(j, &id, &spec, cost, now))
            .await
    }

    async fn reset_window(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.count(move |t, j| t.reset_window(j, &id)).await
    }

    async fn reserve(&self, ops: &[LimitOp], now: Timestamp) -> Result<Reserved> {
        let ops = ops.to_vec();
        self.count(move |t, j| t.reserve(j, &ops, now)).await
    }

    async fn settle(&self, ops: &[SettleOp], now: Timestamp) -> Result<Vec<LimitState>> {
        let ops = ops.to_vec();
        self.count(move |t, j| t.settle(j, &ops, now)).await
    }
}

#[async_trait]
impl AuditStore for SledStore {
    async fn append_audit(&self, event: AuditEvent) -> Result<u64> {
        self.configure(move |t| t.append_audit(&event)).await
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEvent>> {
        let query = *query;
        self.read(move |t| t.list_audit(&query)).await
    }
}

#[async_trait]
impl RecordStore for SledStore {
    async fn create_record(&self, record: &Record, audit: AuditEvent) -> Result<()> {
        let record = record.clone();
        self.configure(move |t| t.create_record(&record, &audit))
            .await
    }

    async fn get_record(&self, kind: &str, id: &str) -> Result<Option<Record>> {
        let key = joined(&[kind, id]);
        self.read(move |t| t.get(&t.records, &key)).await
    }

    async fn list_records(&self, kind: &str, page: &PageRequest) -> Result<Page<Record>> {
        let (kind, page) = (kind.to_owned(), page.clone());
        self.read(move |t| t.list_records(&kind, &page)).await
    }

    async fn update_record(
        &self,
        record: &Record,
        expected_version: u64,
        audit: AuditEvent,
    ) -> Result<()> {
        let record = record.clone();
        self.configure(move |t| t.update_record(&record, expected_version, &audit))
            .await
    }

    async fn delete_record(&self, kind: &str, id: &str, audit: AuditEvent) -> Result<()> {
        let (kind, id) = (kind.to_owned(), id.to_owned());
        self.configure(move |t| t.delete_record(&kind, &id, &audit))
            .await
    }
}

#[async_trait]
impl UsageStore for SledStore {
    async fn add_usage(&self, buckets: &[UsageBucket]) -> Result<()> {
        let entries = usage_entries(buckets)?;
        self.writer()
            .run(Lane::Background, Durable::Journal, move |t, j| {
                add(t, j, Journaled::Usage, "usage", &entries)
            })
            .await
    }

    async fn add_verifications(&self, buckets: &[VerificationBucket]) -> Result<()> {
        let entries = verification_entries(buckets)?;
        self.writer()
            .run(Lane::Background, Durable::Journal, move |t, j| {
                add(t, j, Journaled::Verifications, "verification", &entries)
            })
            .await
    }

    async fn add_report(&self, report: &maas_core::usage::UsageReport) -> Result<bool> {
        let usage = usage_entries(&report.usage)?;
        let verifications = verification_entries(&report.verifications)?;
        let (source, sequence) = (report.source.clone(), report.sequence);
        self.writer()
            .run(Lane::Background, Durable::Journal, move |t, j| {
                crate::usage::add_report(t, j, &source, sequence, &usage, &verifications)
            })
            .await
    }

    async fn usage_buckets(&self, filter: &UsageFilter) -> Result<Vec<UsageBucket>> {
        let filter = filter.clone();
        self.read(move |t| t.usage_buckets(&filter)).await
    }

    async fn verification_buckets(
        &self,
        filter: &VerificationFilter,
    ) -> Result<Vec<VerificationBucket>> {
        let filter = filter.clone();
        self.read(move |t| t.verification_buckets(&filter)).await
    }
}
