//! # maas-store-memory
//!
//! The in-memory storage backend of maas: for tests, single-process
//! deployments and embedding. Nothing survives the process.
//!
//! All configuration (tenants, keyspaces, keys, catalog records, audit) lives under one
//! read-write lock, so a change and its audit event are applied together and
//! indexes never disagree with records. Counters live in a lock-striped
//! [`LocalCounters`], whose operations are atomic per counter. Usage
//! aggregates live in a [`MemoryUsageStore`] (two ordered maps, each batch
//! added under one lock).
//!
//! ```
//! let storage = maas_store_memory::MemoryStore::new().storage();
//! # let _ = storage;
//! ```

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use maas_core::audit::{AuditEvent, AuditQuery};
use maas_core::counter::{
    Balance, BalanceOp, LimitOp, LimitState, LocalCounters, Refill, Reserved, SettleOp, Spend,
    WindowSpec, WindowTake,
};
use maas_core::key::{KeyHash, KeyRecord};
use maas_core::storage::{
    AuditStore, CounterStore, KeyQuery, KeyStore, KeyspaceStore, Page, PageRequest, Record,
    RecordStore, Storage, TenantStore, audit_page_size, version_conflict,
};
use maas_core::usage::{
    MemoryUsageStore, UsageBucket, UsageFilter, UsageStore, VerificationBucket, VerificationFilter,
};
use maas_core::{Error, KeyId, Keyspace, KeyspaceId, Result, Tenant, TenantId, Timestamp};

/// The in-memory backend. Implements every storage trait of `maas-core`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: RwLock<State>,
    counters: LocalCounters,
    usage: MemoryUsageStore,
}

#[derive(Debug, Default)]
struct State {
    tenants: BTreeMap<TenantId, Tenant>,
    tenant_names: HashMap<String, TenantId>,
    keyspaces: BTreeMap<KeyspaceId, Keyspace>,
    keys: BTreeMap<KeyId, KeyRecord>,
    key_hashes: HashMap<KeyHash, KeyId>,
    unique_names: HashMap<(String, String, String), KeyId>,
    by_keyspace: HashMap<KeyspaceId, BTreeSet<KeyId>>,
    by_owner: HashMap<String, BTreeSet<KeyId>>,
    records: BTreeMap<String, BTreeMap<String, Record>>,
    audit: Vec<AuditEvent>,
}

impl State {
    fn append(&mut self, mut event: AuditEvent) -> u64 {
        let seq = self.audit.len() as u64 + 1;
        event.seq = seq;
        self.audit.push(event);
        seq
    }

    /// Claims the unique name of `key` (if it has one) for its id.
    fn check_unique(&self, key: &KeyRecord) -> Result<()> {
        if let Some(slot) = key.unique_slot()
            && let Some(holder) = self.unique_names.get(&slot)
            && *holder != key.id
        {
            return Err(Error::conflict(format!(
                "a key named '{}' already exists for this owner",
                slot.2
            )));
        }
        Ok(())
    }

    fn index_key(&mut self, key: &KeyRecord) {
        self.key_hashes.insert(key.hash, key.id.clone());
        if let Some(slot) = key.unique_slot() {
            self.unique_names.insert(slot, key.id.clone());
        }
        self.by_keyspace
            .entry(key.keyspace_id.clone())
            .or_default()
            .insert(key.id.clone());
        if let Some(o) = &key.owner_id {
            self.by_owner
                .entry(o.clone())
                .or_default()
                .insert(key.id.clone());
        }
    }

    fn unindex_key(&mut self, key: &KeyRecord) {
        self.key_hashes.remove(&key.hash);
        if let Some(slot) = key.unique_slot()
            && self.unique_names.get(&slot) == Some(&key.id)
        {
            self.unique_names.remove(&slot);
        }
        if let Some(set) = self.by_keyspace.get_mut(&key.keyspace_id) {
            set.remove(&key.id);
        }
        if let Some(o) = &key.owner_id
            && let Some(set) = self.by_owner.get_mut(o)
        {
            set.remove(&key.id);
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new empty store as the [`Storage`] bundle services are built on.
    pub fn storage(self) -> Storage {
        Storage::from_backend(Arc::new(self))
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied change:
        // every write checks first and mutates after, without panicking paths.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl TenantStore for MemoryStore {
    async fn create_tenant(&self, tenant: &Tenant, audit: AuditEvent) -> Result<()> {
        let mut s = self.write();
        if s.tenants.contains_key(&tenant.id) {
            return Err(Error::conflict(format!("tenant '{}' exists", tenant.id)));
        }
        if s.tenant_names.contains_key(&tenant.name) {
            return Err(Error::conflict(format!(
                "a tenant named '{}' exists",
                tenant.name
            )));
        }
        s.tenant_names
            .insert(tenant.name.clone(), tenant.id.clone());
        s.tenants.insert(tenant.id.clone(), tenant.clone());
        s.append(audit);
        Ok(())
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>> {
        Ok(self.read().tenants.get(id).cloned())
    }

    async fn get_tenant_by_name(&self, name: &str) -> Result<Option<Tenant>> {
        let s = self.read();
        Ok(s.tenant_names
            .get(name)
            .and_then(|id| s.tenants.get(id))
            .cloned())
    }

    async fn list_tenants(&self, page: &PageRequest) -> Result<Page<Tenant>> {
        let s = self.read();
        let total = s.tenants.len() as u64;
        Ok(page
            .paginate(s.tenants.values(), |t| t.id.as_str(), total)
            .map(Clone::clone))
    }

    async fn update_tenant(
        &self,
        tenant: &Tenant,
        expected_version: u64,
        audit: AuditEvent,
    ) -> Result<()> {
        let mut s = self.write();
        let current = s
            .tenants
            .get(&tenant.id)
            .ok_or_else(|| Error::not_found("tenant", tenant.id.as_str()))?;
        if current.version != expected_version {
            return Err(version_conflict("tenant", tenant.id.as_str()));
        }
        let old_name = current.name.clone();
        if old_name != tenant.name && s.tenant_names.contains_key(&tenant.name) {
            return Err(Error::conflict(format!(
                "a tenant named '{}' exists",
                tenant.name
            )));
        }
        s.tenant_names.remove(&old_name);
        s.tenant_names
            .insert(tenant.name.clone(), tenant.id.clone());
        let mut stored = tenant.clone();
        stored.version = expected_version + 1;
        s.tenants.insert(tenant.id.clone(), stored);
        s.append(audit);
        Ok(())
    }

    async fn delete_tenant(&self, id: &TenantId, audit: AuditEvent) -> Result<()> {
        let mut s = self.write();
        let t = s
            .tenants
            .remove(id)
            .ok_or_else(|| Error::not_found("tenant", id.as_str()))?;
        s.tenant_names.remove(&t.name);
        s.append(audit);
        Ok(())
    }
}

#[async_trait]
impl KeyspaceStore for MemoryStore {
    async fn create_keyspace(&self, keyspace: &Keyspace, audit: AuditEvent) -> Result<()> {
        let mut s = self.write();
        if s.keyspaces.contains_key(&keyspace.id) {
            return Err(Error::conflict(format!(
                "keyspace '{}' exists",
                keyspace.id
            )));
        }
        s.keyspaces.insert(keyspace.id.clone(), keyspace.clone());
        s.append(audit);
        Ok(())
    }

    async fn get_keyspace(&self, id: &KeyspaceId) -> Result<Option<Keyspace>> {
        Ok(self.read().keyspaces.get(id).cloned())
    }

    async fn list_keyspaces(&self, page: &PageRequest) -> Result<Page<Keyspace>> {
        let s = self.read();
        let total = s.keyspaces.len() as u64;
        Ok(page
            .paginate(s.keyspaces.values(), |k| k.id.as_str(), total)
            .map(Clone::clone))
    }

    async fn update_keyspace(
        &self,
        keyspace: &Keyspace,
        expected_version: u64,
        audit: AuditEvent,
    ) -> Result<()> {
        let mut s = self.write();
        let current = s
            .keyspaces
            .get(&keyspace.id)
            .ok_or_else(|| Error::not_found("keyspace", keyspace.id.as_str()))?;
        if current.version != expected_version {
            return Err(version_conflict("keyspace", keyspace.id.as_str()));
        }
        let mut stored = keyspace.clone();
        stored.version = expected_version + 1;
        s.keyspaces.insert(keyspace.id.clone(), stored);
        s.append(audit);
        Ok(())
    }

    async fn delete_keyspace(&self, id: &KeyspaceId, audit: AuditEvent) -> Result<()> {
        let mut s = self.write();
        s.keyspaces
            .remove(id)
            .ok_or_else(|| Error::not_found("keyspace", id.as_str()))?;
        s.append(audit);
        Ok(())
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn create_key(&self, key: &KeyRecord, audit: AuditEvent) -> Result<()> {
        let mut s = self.write();
        if s.keys.contains_key(&key.id) || s.key_hashes.contains_key(&key.hash) {
            return Err(Error::conflict(format!("key '{}' exists", key.id)));
        }
        s.check_unique(key)?;
        s.index_key(key);
        s.keys.insert(key.id.clone(), key.clone());
        s.append(audit);
        Ok(())
    }

    async fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>> {
        Ok(self.read().keys.get(id).cloned())
    }

    async fn get_key_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>> {
        let s = self.read();
        Ok(s.key_hashes
            .get(hash)
            .and_then(|id| s.keys.get(id))
            .cloned())
    }

    async fn list_keys(&self, query: &KeyQuery) -> Result<Page<KeyRecord>> {
        let s = self.read();
        Ok(query
            .page_of(&s.keys, &s.by_keyspace, &s.by_owner)
            .map(Clone::clone))
    }

    async fn update_key(
        &self,
        key: &KeyRecord,
        expected_version: u64,
        audit: AuditEvent,
    ) -> Result<()> {
        let mut s = self.write();
        let current = s
            .keys
            .get(&key.id)
            .ok_or_else(|| Error::not_found("key", key.id.as_str()))?
            .clone();
        if current.version != expected_version {
            return Err(version_conflict("key", key.id.as_str()));
        }
        if current.hash != key.hash
            && let Some(other) = s.key_hashes.get(&key.hash)
            && *other != key.id
        {
            return Err(Error::conflict("the new secret collides with another key"));
        }
        s.check_unique(key)?;
        s.unindex_key(&current);
        s.index_key(key);
        let mut stored = key.clone();
        stored.version = expected_version + 1;
        stored.last_used_at = stored.last_used_at.max(current.last_used_at);
        s.keys.insert(key.id.clone(), stored);
        s.append(audit);
        Ok(())
    }

    async fn touch_keys(&self, used: &[(KeyId, Timestamp)]) -> Result<()> {
        let mut s = self.write();
        for (id, at) in used {
            if let Some(k) = s.keys.get_mut(id) {
                k.last_used_at = k.last_used_at.max(Some(*at));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl CounterStore for MemoryStore {
    async fn balance(&self, id: &str) -> Result<Option<Balance>> {
        Ok(self.counters.balance(id))
    }

    async fn put_balance(&self, id: &str, balance: Option<Balance>) -> Result<()> {
        self.counters.put_balance(id, balance);
        Ok(())
    }

    async fn spend(
        &self,
        id: &str,
        cost: u64,
        refill: Option<&Refill>,
        now: Timestamp,
    ) -> Result<Spend> {
        Ok(self.counters.spend(id, cost, refill, now))
    }

    async fn adjust(
        &self,
        id: &str,
        op: BalanceOp,
        refill: Option<&Refill>,
        now: Timestamp,
    ) -> Result<Option<Balance>> {
        Ok(self.counters.adjust(id, op, refill, now))
    }

    async fn take(
        &self,
        id: &str,
        spec: &WindowSpec,
        cost: u64,
        now: Timestamp,
    ) -> Result<WindowTake> {
        Ok(self.counters.take(id, spec, cost, now))
    }

    async fn reset_window(&self, id: &str) -> Result<()> {
        self.counters.reset_window(id);
        Ok(())
    }

    async fn reserve(&self, ops: &[LimitOp], now: Timestamp) -> Result<Reserved> {
        Ok(self.counters.reserve(ops, now))
    }

    async fn settle(&self, ops: &[SettleOp], now: Timestamp) -> Result<Vec<LimitState>> {
        Ok(self.counters.settle(ops, now))
    }

    fn local_counters(&self) -> Option<&LocalCounters> {
        Some(&self.counters)
    }
}

#[async_trait]
impl AuditStore for MemoryStore {
    async fn append_audit(&self, event: AuditEvent) -> Result<u64> {
        Ok(self.write().append(event))
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEvent>> {
        let s = self.read();
        let size = audit_page_size(query);
        let end = match query.before_seq {
            // seq n is at index n - 1: events before it are [0, n - 1).
            Some(seq) => usize::try_from(seq.saturating_sub(1))
                .unwrap_or(usize::MAX)
                .min(s.audit.len()),
            None => s.audit.len(),
        };
        let start = end.saturating_sub(size);
        let items: Vec<AuditEvent> = s.audit[start..end].iter().rev().cloned().collect();
        let cursor = if start > 0 {
            items.last().map(|e| e.seq.to_string())
        } else {
            None
        };
        Ok(Page {
            items,
            cursor,
            total: s.audit.len() as u64,
        })
    }
}

#[async_trait]
impl RecordStore for MemoryStore {
    async fn create_record(&self, record: &Record, audit: AuditEvent) -> Result<()> {
        let mut s = self.write();
        let kind = s.records.entry(record.kind.clone()).or_default();
        if kind.contains_key(&record.id) {
            return Err(Error::conflict(format!(
                "{} '{}' exists",
                record.kind, record.id
            )));
        }
        kind.insert(record.id.clone(), record.clone());
        s.append(audit);
        Ok(())
    }

    async fn get_record(&self, kind: &str, id: &str) -> Result<Option<Record>> {
        Ok(self
            .read()
            .records
            .get(kind)
            .and_then(|k| k.get(id))
            .cloned())
    }

    async fn list_records(&self, kind: &str, page: &PageRequest) -> Result<Page<Record>> {
        let s = self.read();
        let Some(records) = s.records.get(kind) else {
            return Ok(page.paginate(Vec::<Record>::new(), |r| &r.id, 0));
        };
        Ok(page.paginate(records.values().cloned(), |r| &r.id, records.len() as u64))
    }

    async fn update_record(
        &self,
        record: &Record,
        expected_version: u64,
        audit: AuditEvent,
    ) -> Result<()> {
        let mut s = self.write();
        let current = s
            .records
            .get_mut(&record.kind)
            .and_then(|k| k.get_mut(&record.id))
            .ok_or_else(|| Error::not_found("record", format!("{}/{}", record.kind, record.id)))?;
        if current.version != expected_version {
            return Err(version_conflict(&record.kind, &record.id));
        }
        *current = record.clone();
        current.version = expected_version + 1;
        s.append(audit);
        Ok(())
    }

    async fn delete_record(&self, kind: &str, id: &str, audit: AuditEvent) -> Result<()> {
        let mut s = self.write();
        if s.records.get_mut(kind).and_then(|k| k.remove(id)).is_none() {
            return Err(Error::not_found("record", format!("{kind}/{id}")));
        }
        s.append(audit);
        Ok(())
    }
}

#[async_trait]
impl UsageStore for MemoryStore {
    async fn add_usage(&self, buckets: &[UsageBucket]) -> Result<()> {
        self.usage.add_usage(buckets).await
    }

    async fn add_verifications(&self, buckets: &[VerificationBucket]) -> Result<()> {
        self.usage.add_verifications(buckets).await
    }

    async fn add_report(&self, report: &maas_core::usage::UsageReport) -> Result<bool> {
        self.usage.add_report(report).await
    }

    async fn usage_buckets(&self, filter: &UsageFilter) -> Result<Vec<UsageBucket>> {
        self.usage.usage_buckets(filter).await
    }

    async fn verification_buckets(
        &self,
        filter: &VerificationFilter,
    ) -> Result<Vec<VerificationBucket>> {
        self.usage.verification_buckets(filter).await
    }
}
