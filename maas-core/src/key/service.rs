//! [`KeyService`]: keyspaces and keys — issue, manage, verify.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};

use super::cache::{Hit, KeyCache};
use super::secret::{self, KeyHasher};
use super::verify::{RateLimitState, Verification, VerifyCode, VerifyOptions};
use super::{
    CreatedKey, Key, KeyRateLimit, KeyRecord, KeyUpdate, NewKey, RateLimitKind, RemainingOp,
    check_labels,
};
use crate::audit::{Actor, AuditEvent};
use crate::clock::{Clock, SharedClock, SystemClock, Timestamp};
use crate::counter::{Balance, BalanceOp, LimitSpec};
use crate::error::{Error, Result};
use crate::id::{KeyId, KeyspaceId};
use crate::keyspace::{
    DEFAULT_BYTE_LENGTH, Keyspace, KeyspaceUpdate, NewKeyspace, check_byte_length, check_prefix,
};
use crate::patch::Patch;
use crate::ratelimit::SyncedCounters;
use crate::storage::{KeyQuery, Page, PageRequest, Storage};
use crate::usage::UsageLedger;
use crate::versioned;

/// Settings of a [`KeyService`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyServiceConfig {
    /// How long a cached key is used before it is read from the store again.
    /// This bounds how long a change made on another node (disable, delete,
    /// reroll, update) takes to reach this one. Changes made through this
    /// service apply on this node at once. Default 30 s.
    pub cache_ttl: Duration,
    /// The most keys the verification cache holds, whatever the store
    /// holds: a key loaded into a full cache evicts one that was not
    /// verified lately. About 0.5 to 1 KiB each (a key's record and its
    /// slot). Default 100,000.
    pub cache_capacity: usize,
}

/// The default of [`KeyServiceConfig::cache_capacity`].
pub const DEFAULT_KEY_CACHE_CAPACITY: usize = 100_000;

impl Default for KeyServiceConfig {
    fn default() -> Self {
        KeyServiceConfig {
            cache_ttl: Duration::from_secs(30),
            cache_capacity: DEFAULT_KEY_CACHE_CAPACITY,
        }
    }
}

/// Keyspaces and keys: issue, manage and verify API keys.
///
/// Cheap to clone (shared state). Verification reads from an in-memory cache
/// (see [`KeyServiceConfig::cache_ttl`]); every change is audited.
///
/// Call [`KeyService::maintain`] periodically (every few seconds) to write
/// last-use times behind and drop stale cache entries.
#[derive(Clone)]
pub struct KeyService {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Storage,
    clock: SharedClock,
    hasher: KeyHasher,
    cache: KeyCache,
    fast: SyncedCounters,
    usage: OnceLock<UsageLedger>,
    observer: OnceLock<VerifyObserver>,
}

/// A function told the code of every verification (for metrics).
pub type VerifyObserver = Arc<dyn Fn(VerifyCode) + Send + Sync>;

impl fmt::Debug for KeyService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyService")
            .field("storage", &self.inner.storage)
            .field("clock", &self.inner.clock)
            .field("cached", &self.inner.cache.len())
            .finish_non_exhaustive()
    }
}

fn audit_value(r: &KeyRecord) -> Option<Value> {
    let mut v = serde_json::to_value(r).ok()?;
    if let Some(o) = v.as_object_mut() {
        for secretish in ["hash", "version", "lastUsedAt"] {
            o.remove(secretish);
        }
    }
    Some(v)
}

/// A created key as its audit event records it: what was set, without the
/// times the event itself carries and the flags left at their default.
fn created_audit_value(r: &KeyRecord) -> Option<Value> {
    let mut v = audit_value(r)?;
    if let Some(o) = v.as_object_mut() {
        o.remove("createdAt");
        o.remove("updatedAt");
        for flag in ["uniqueName", "remainingLimited"] {
            if o.get(flag) == Some(&Value::Bool(false)) {
                o.remove(flag);
            }
        }
    }
    Some(v)
}

fn keyspace_audit(k: &Keyspace) -> Option<Value> {
    serde_json::to_value(k).ok()
}

impl KeyService {
    /// A service over `storage`, hashing keys with `hasher`, on the system clock.
    pub fn new(storage: Storage, hasher: KeyHasher) -> Self {
        Self::new_with_clock(storage, hasher, Arc::new(SystemClock))
    }

    /// A service over `storage`, hashing keys with `hasher`, on `clock`.
    pub fn new_with_clock(storage: Storage, hasher: KeyHasher, clock: Arc<dyn Clock>) -> Self {
        Self::new_with_config(storage, hasher, KeyServiceConfig::default(), clock)
    }

    /// A service with explicit settings, on `clock`.
    pub fn new_with_config(
        storage: Storage,
        hasher: KeyHasher,
        config: KeyServiceConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let ttl_ms = i64::try_from(config.cache_ttl.as_millis()).unwrap_or(i64::MAX);
        KeyService {
            inner: Arc::new(Inner {
                storage,
                clock,
                hasher,
                cache: KeyCache::new(ttl_ms, config.cache_capacity),
                fast: SyncedCounters::default(),
                usage: OnceLock::new(),
                observer: OnceLock::new(),
            }),
        }
    }

    /// Records every verification's outcome into `ledger` from now on (this
    /// service and its clones): each verification of an existing key counts
    /// in [`UsageLedger::verifications`] under the key, its keyspace and
    /// owner, at the service's clock. Unknown and malformed keys
    /// (`NOT_FOUND`) have no key to count against and are not recorded.
    ///
    /// A service takes one ledger: [`Error::Conflict`] if one is attached.
    pub fn attach_usage(&self, ledger: UsageLedger) -> Result<()> {
        self.inner
            .usage
            .set(ledger)
            .map_err(|_| Error::conflict("a usage ledger is already attached"))
    }

    /// Calls `observer` with the code of every verification, malformed and
    /// unknown keys included (a metrics counter, typically). A service takes
    /// one observer: [`Error::Conflict`] if one is attached.
    pub fn observe_verifications(&self, observer: VerifyObserver) -> Result<()> {
        self.inner
            .observer
            .set(observer)
            .map_err(|_| Error::conflict("a verification observer is already attached"))
    }

    /// The usage ledger verifications are recorded into, if any.
    pub fn usage(&self) -> Option<&UsageLedger> {
        self.inner.usage.get()
    }

    /// Records a verification of `key` with `code`, if a ledger is attached.
    fn note(&self, now: Timestamp, key: &KeyRecord, code: VerifyCode) {
        if let Some(ledger) = self.inner.usage.get() {
            // Stored keys' ids hold no control characters and the clock is
            // after the epoch: the ledger refuses nothing it is given here.
            let _ = ledger.verification(
                now,
                key.keyspace_id.as_str(),
                key.id.as_str(),
                key.owner_id.as_deref(),
                code,
            );
        }
    }

    /// The storage this service uses.
    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    // ----- keyspaces -------------------------------------------------------

    /// Creates a keyspace.
    pub async fn create_keyspace(&self, actor: &Actor, new: NewKeyspace) -> Result<Keyspace> {
        let now = self.now();
        let ks = Keyspace {
            id: KeyspaceId::generate(now),
            name: new.name,
            prefix: new.prefix,
            default_byte_length: new.default_byte_length.unwrap_or(DEFAULT_BYTE_LENGTH),
            created_at: now,
            updated_at: now,
            version: 1,
        };
        ks.validate()?;
        let audit = AuditEvent::new(
            now,
            actor,
            "keyspace.create",
            "keyspace",
            ks.id.as_str(),
            None,
            keyspace_audit(&ks),
        );
        self.inner
            .storage
            .keyspaces
            .create_keyspace(&ks, audit)
            .await?;
        Ok(ks)
    }

    /// The keyspace `id`.
    pub async fn get_keyspace(&self, id: &KeyspaceId) -> Result<Keyspace> {
        self.inner
            .storage
            .keyspaces
            .get_keyspace(id)
            .await?
            .ok_or_else(|| Error::not_found("keyspace", id.as_str()))
    }

    /// Keyspaces by id.
    pub async fn list_keyspaces(&self, page: &PageRequest) -> Result<Page<Keyspace>> {
        self.inner.storage.keyspaces.list_keyspaces(page).await
    }

    /// Changes a keyspace; new settings apply to keys created afterwards.
    pub async fn update_keyspace(
        &self,
        actor: &Actor,
        id: &KeyspaceId,
        update: KeyspaceUpdate,
    ) -> Result<Keyspace> {
        let now = self.now();
        let keyspaces = &self.inner.storage.keyspaces;
        let (_, after) = versioned::update(
            "keyspace",
            || self.get_keyspace(id),
            |k| {
                if let Some(n) = &update.name {
                    k.name = n.clone();
                }
                update.prefix.clone().apply_to(&mut k.prefix);
                if let Some(b) = update.default_byte_length {
                    k.default_byte_length = b;
                }
                k.updated_at = now;
                k.validate()
            },
            move |before, after| async move {
                let audit = AuditEvent::new(
                    now,
                    actor,
                    "keyspace.update",
                    "keyspace",
                    id.as_str(),
                    keyspace_audit(&before),
                    keyspace_audit(&after),
                );
                keyspaces
                    .update_keyspace(&after, before.version, audit)
                    .await
            },
        )
        .await?;
        Ok(after)
    }

    /// Deletes a keyspace: soft-deletes each of its live keys (each audited),
    /// then removes the keyspace.
    pub async fn delete_keyspace(&self, actor: &Actor, id: &KeyspaceId) -> Result<()> {
        let ks = self.get_keyspace(id).await?;
        let query = KeyQuery {
            keyspace_id: Some(ks.id.clone()),
            page: PageRequest::first(crate::storage::MAX_PAGE_SIZE),
            ..KeyQuery::default()
        };
        loop {
            // Deleted keys leave the query, so the first page is always the next batch.
            let page = self.inner.storage.keys.list_keys(&query).await?;
            if page.items.is_empty() {
                break;
            }
            for k in page.items {
                match self.delete(actor, &k.id).await {
                    Ok(()) | Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let audit = AuditEvent::new(
            self.now(),
            actor,
            "keyspace.delete",
            "keyspace",
            id.as_str(),
            keyspace_audit(&ks),
            None,
        );
        self.inner
            .storage
            .keyspaces
            .delete_keyspace(id, audit)
            .await
    }

    // ----- keys: issue and read ---------------------------------------------

    /// Issues a key. The secret is in the result and nowhere else.
    ///
    /// Invalid input is refused naming the field, before anything is stored.
    pub async fn create(&self, actor: &Actor, new: NewKey) -> Result<CreatedKey> {
        let now = self.now();
        let ks = self.get_keyspace(&new.keyspace_id).await?;
        if let Some(p) = &new.prefix {
            check_prefix(p)?;
        }
        let prefix = new.prefix.or(ks.prefix);
        let byte_length = new.byte_length.unwrap_or(ks.default_byte_length);
        check_byte_length(byte_length)?;
        if new.expires.is_some_and(|e| e <= now) {
            return Err(Error::invalid("expires", "must be in the future"));
        }
        if new.remaining.is_some_and(|r| r < 0) {
            return Err(Error::invalid("remaining", "must not be negative"));
        }
        let secret = secret::generate(prefix.as_deref(), byte_length);
        let hash = self.inner.hasher.hash(secret.key.as_bytes());
        let record = KeyRecord {
            id: KeyId::generate(now),
            keyspace_id: ks.id,
            hash,
            start: secret.start.clone(),
            prefix,
            byte_length,
            owner_id: new.owner_id,
            name: new.name,
            unique_name: new.unique_name,
            meta: new.meta,
            created_at: now,
            updated_at: now,
            expires: new.expires,
            remaining_limited: new.remaining.is_some(),
            refill: new.refill,
            ratelimit: new.ratelimit,
            roles: check_labels("roles", new.roles)?,
            permissions: check_labels("permissions", new.permissions)?,
            enabled: new.enabled,
            environment: new.environment,
            last_used_at: None,
            deleted_at: None,
            version: 1,
        };
        record.validate()?;
        let counters = &self.inner.storage.counters;
        let balance_id = record.remaining_counter();
        if let Some(r) = new.remaining {
            // The balance exists before the key can be verified.
            counters
                .put_balance(&balance_id, Some(Balance::new(r, now)))
                .await?;
        }
        let audit = AuditEvent::new(
            now,
            actor,
            "key.create",
            "key",
            record.id.as_str(),
            None,
            created_audit_value(&record),
        );
        if let Err(e) = self.inner.storage.keys.create_key(&record, audit).await {
            if new.remaining.is_some() {
                // Best effort: the balance of a key that was never stored is unreachable anyway.
                let _ = counters.put_balance(&balance_id, None).await;
            }
            return Err(e);
        }
        let key_id = record.id.clone();
        self.inner.cache.upsert(hash, record, now);
        Ok(CreatedKey {
            key_id,
            key: secret.key,
            start: secret.start,
        })
    }

    async fn record(&self, id: &KeyId) -> Result<KeyRecord> {
        self.inner
            .storage
            .keys
            .get_key(id)
            .await?
            .ok_or_else(|| Error::not_found("key", id.as_str()))
    }

    async fn live_record(&self, id: &KeyId) -> Result<KeyRecord> {
        let r = self.record(id).await?;
        if r.deleted_at.is_some() {
            return Err(Error::not_found("key", id.as_str()));
        }
        Ok(r)
    }

    /// The view of `r`: its balance (refill applied) and the latest last use.
    async fn view(&self, r: &KeyRecord) -> Result<Key> {
        let now = self.now();
        let balance = if r.remaining_limited {
            self.inner
                .storage
                .counters
                .balance(&r.remaining_counter())
                .await?
                .map(|b| b.refilled(r.refill.as_ref(), now))
        } else {
            None
        };
        let mut key = Key::from_record(r, balance);
        key.last_used_at = key.last_used_at.max(self.inner.cache.last_used(&r.hash));
        Ok(key)
    }

    /// The live key `id` (soft-deleted keys are not found).
    pub async fn get(&self, id: &KeyId) -> Result<Key> {
        let r = self.live_record(id).await?;
        self.view(&r).await
    }

    /// Keys matching `query`, by id, with the total count.
    pub async fn list(&self, query: &KeyQuery) -> Result<Page<Key>> {
        let page = self.inner.storage.keys.list_keys(query).await?;
        self.views(page).await
    }

    /// [`Self::list`] without the count (`total` may be 0): for reading
    /// every page, in time proportional to the pages on every backend
    /// ([`KeyStore::scan_keys`](crate::storage::KeyStore::scan_keys)).
    pub async fn scan(&self, query: &KeyQuery) -> Result<Page<Key>> {
        let page = self.inner.storage.keys.scan_keys(query).await?;
        self.views(page).await
    }

    async fn views(&self, page: Page<KeyRecord>) -> Result<Page<Key>> {
        let mut items = Vec::with_capacity(page.items.len());
        for r in &page.items {
            items.push(self.view(r).await?);
        }
        Ok(Page {
            items,
            cursor: page.cursor,
            total: page.total,
        })
    }

    // ----- keys: change -----------------------------------------------------

    /// Reads, changes with `change`, and stores the key with an audit event;
    /// retried when a concurrent change wins. Writes the result through the
    /// cache. Returns the record before and after.
    async fn modify(
        &self,
        actor: &Actor,
        id: &KeyId,
        action: &str,
        include_deleted: bool,
        mut change: impl FnMut(&mut KeyRecord, Timestamp) -> Result<()>,
    ) -> Result<(KeyRecord, KeyRecord)> {
        let now = self.now();
        let keys = &self.inner.storage.keys;
        let (before, after) = versioned::update(
            "key",
            || async move {
                if include_deleted {
                    self.record(id).await
                } else {
                    self.live_record(id).await
                }
            },
            |k| {
                change(k, now)?;
                k.updated_at = now;
                k.validate()
            },
            move |before, after| async move {
                let audit = AuditEvent::new(
                    now,
                    actor,
                    action,
                    "key",
                    id.as_str(),
                    audit_value(&before),
                    audit_value(&after),
                );
                keys.update_key(&after, before.version, audit).await
            },
        )
        .await?;
        self.inner.cache.upsert(after.hash, after.clone(), now);
        if before.hash != after.hash {
            // The old hash now resolves to a record it does not match.
            self.inner.cache.upsert(before.hash, after.clone(), now);
        }
        Ok((before, after))
    }

    /// Applies `update` to the live key `id`. Absent fields are kept, nulls
    /// clear. Setting `remaining` sets the balance; `null` makes the key
    /// unlimited.
    pub async fn update(&self, actor: &Actor, id: &KeyId, update: KeyUpdate) -> Result<Key> {
        if let Patch::Set(r) = update.remaining
            && r < 0
        {
            return Err(Error::invalid("remaining", "must not be negative"));
        }
        let roles = update
            .roles
            .clone()
            .map(|r| check_labels("roles", r))
            .transpose()?;
        let permissions = update
            .permissions
            .clone()
            .map(|p| check_labels("permissions", p))
            .transpose()?;
        let apply = |k: &mut KeyRecord| -> Result<()> {
            let u = update.clone();
            u.name.apply_to(&mut k.name);
            u.owner_id.apply_to(&mut k.owner_id);
            u.meta.apply_to(&mut k.meta);
            u.expires.apply_to(&mut k.expires);
            u.refill.apply_to(&mut k.refill);
            u.ratelimit.apply_to(&mut k.ratelimit);
            u.environment.apply_to(&mut k.environment);
            if let Some(r) = &roles {
                k.roles = r.clone();
            }
            if let Some(p) = &permissions {
                k.permissions = p.clone();
            }
            if let Some(e) = u.enabled {
                k.enabled = e;
            }
            match u.remaining {
                Patch::Keep => {}
                Patch::Clear => {
                    k.remaining_limited = false;
                    if update.refill.is_keep() {
                        // A refill without a balance means nothing.
                        k.refill = None;
                    }
                }
                Patch::Set(_) => k.remaining_limited = true,
            }
            k.validate()
        };
        // Refuse invalid input before anything is written.
        let current = self.live_record(id).await?;
        apply(&mut current.clone())?;
        let counters = &self.inner.storage.counters;
        // A key that becomes limited gets its balance before the record says
        // so, as verification treats a limited key without one as spent.
        let mut opened = None;
        if let Patch::Set(v) = update.remaining
            && !current.remaining_limited
        {
            let cid = current.remaining_counter();
            counters
                .put_balance(&cid, Some(Balance::new(v, self.now())))
                .await?;
            opened = Some(cid);
        }
        let result = self
            .modify(actor, id, "key.update", false, |k, _| apply(k))
            .await;
        let (before, after) = match result {
            Ok(r) => r,
            Err(e) => {
                if let Some(cid) = opened {
                    // Best effort: the key is still unlimited, the balance unused.
                    let _ = counters.put_balance(&cid, None).await;
                }
                return Err(e);
            }
        };
        let now = self.now();
        match update.remaining {
            Patch::Set(v) => self.set_balance(&after, v, now).await?,
            Patch::Clear if before.remaining_limited => {
                counters
                    .put_balance(&after.remaining_counter(), None)
                    .await?;
            }
            _ => {}
        }
        self.view(&after).await
    }

    /// Sets the balance of `key` to `v` (refill bookkeeping kept if it exists).
    async fn set_balance(&self, key: &KeyRecord, v: i64, now: Timestamp) -> Result<()> {
        let counters = &self.inner.storage.counters;
        let id = key.remaining_counter();
        if counters
            .adjust(&id, BalanceOp::Set(v), key.refill.as_ref(), now)
            .await?
            .is_none()
        {
            counters
                .put_balance(&id, Some(Balance::new(v, now)))
                .await?;
        }
        Ok(())
    }

    /// Changes the remaining uses of the live key `id` (`keys.updateRemaining`)
    /// and returns the new balance (`None`: unlimited).
    ///
    /// - `set` with a value sets the balance (a key without one becomes
    ///   limited); `set` with `None` makes the key unlimited (and drops refill).
    /// - `increment` / `decrement` need a value ≥ 0 and a limited key; the
    ///   balance stays within `0..=i64::MAX`.
    pub async fn update_remaining(
        &self,
        actor: &Actor,
        id: &KeyId,
        op: RemainingOp,
        value: Option<i64>,
    ) -> Result<Option<i64>> {
        if value.is_some_and(|v| v < 0) {
            return Err(Error::invalid("value", "must not be negative"));
        }
        let key = self.live_record(id).await?;
        let now = self.now();
        let counters = &self.inner.storage.counters;
        match (op, value) {
            (RemainingOp::Set, None) => {
                if key.remaining_limited {
                    let (_, after) = self
                        .modify(actor, id, "key.update_remaining", false, |k, _| {
                            k.remaining_limited = false;
                            k.refill = None;
                            Ok(())
                        })
                        .await?;
                    counters
                        .put_balance(&after.remaining_counter(), None)
                        .await?;
                }
                Ok(None)
            }
            (RemainingOp::Set, Some(v)) if !key.remaining_limited => {
                // Balance first: a limited key must never lack one.
                counters
                    .put_balance(&key.remaining_counter(), Some(Balance::new(v, now)))
                    .await?;
                self.modify(actor, id, "key.update_remaining", false, |k, _| {
                    k.remaining_limited = true;
                    Ok(())
                })
                .await?;
                Ok(Some(v))
            }
            (RemainingOp::Increment | RemainingOp::Decrement, None) => Err(Error::invalid(
                "value",
                "is required for increment and decrement",
            )),
            (_, Some(_)) if !key.remaining_limited => Err(Error::invalid(
                "op",
                "cannot increment or decrement an unlimited key; set a value first",
            )),
            (op, Some(v)) => {
                let bop = match op {
                    RemainingOp::Increment => BalanceOp::Increment(v),
                    RemainingOp::Decrement => BalanceOp::Decrement(v),
                    RemainingOp::Set => BalanceOp::Set(v),
                };
                let cid = key.remaining_counter();
                let after = match counters.adjust(&cid, bop, key.refill.as_ref(), now).await? {
                    Some(b) => b,
                    None => {
                        // A limited key lost its balance (a crash between writes): start from 0.
                        let b = bop.apply(Balance::new(0, now));
                        counters.put_balance(&cid, Some(b)).await?;
                        b
                    }
                };
                let op_name = match op {
                    RemainingOp::Increment => "increment",
                    RemainingOp::Decrement => "decrement",
                    RemainingOp::Set => "set",
                };
                let audit = AuditEvent::new(
                    now,
                    actor,
                    "key.update_remaining",
                    "key",
                    id.as_str(),
                    None,
                    Some(json!({"op": op_name, "value": v, "remaining": after.remaining})),
                );
                self.inner.storage.audit.append_audit(audit).await?;
                Ok(Some(after.remaining))
            }
        }
    }

    /// Soft-deletes the key `id`: it stops verifying (`NOT_FOUND`) at once on
    /// this node, and can be restored. Deleting a deleted key is `NotFound`.
    pub async fn delete(&self, actor: &Actor, id: &KeyId) -> Result<()> {
        self.modify(actor, id, "key.delete", false, |k, now| {
            k.deleted_at = Some(now);
            Ok(())
        })
        .await
        .map(|_| ())
    }

    /// Restores a soft-deleted key with all its settings and balance.
    /// Restoring a live key changes nothing. [`Error::Conflict`] if its unique
    /// name was taken meanwhile.
    pub async fn restore(&self, actor: &Actor, id: &KeyId) -> Result<Key> {
        let current = self.record(id).await?;
        if current.deleted_at.is_none() {
            return self.view(&current).await;
        }
        let (_, after) = self
            .modify(actor, id, "key.restore", true, |k, _| {
                k.deleted_at = None;
                Ok(())
            })
            .await?;
        self.view(&after).await
    }

    /// Enables or disables the live key `id`.
    pub async fn set_enabled(&self, actor: &Actor, id: &KeyId, enabled: bool) -> Result<Key> {
        let action = if enabled { "key.enable" } else { "key.disable" };
        let (_, after) = self
            .modify(actor, id, action, false, |k, _| {
                k.enabled = enabled;
                Ok(())
            })
            .await?;
        self.view(&after).await
    }

    /// Gives the live key `id` a new secret, keeping its id, settings and
    /// balance. The old secret stops verifying at once on this node.
    pub async fn reroll(&self, actor: &Actor, id: &KeyId) -> Result<CreatedKey> {
        let mut issued = None;
        let hasher = &self.inner.hasher;
        let (_, after) = self
            .modify(actor, id, "key.reroll", false, |k, _| {
                let s = secret::generate(k.prefix.as_deref(), k.byte_length);
                k.hash = hasher.hash(s.key.as_bytes());
                k.start = s.start.clone();
                issued = Some(s);
                Ok(())
            })
            .await?;
        let s = issued.ok_or_else(|| Error::internal("reroll produced no secret"))?;
        Ok(CreatedKey {
            key_id: after.id,
            key: s.key,
            start: s.start,
        })
    }

    // ----- keys: verify -----------------------------------------------------

    /// Verifies `key` (see [`VerifyCode`] for the checks and their order).
    ///
    /// Any byte string is accepted: malformed input is `NOT_FOUND` without a
    /// store access. `Err` only when storage fails.
    pub async fn verify(
        &self,
        key: impl AsRef<[u8]>,
        opts: &VerifyOptions<'_>,
    ) -> Result<Verification> {
        let v = self.verify_unobserved(key.as_ref(), opts).await?;
        if let Some(observe) = self.inner.observer.get() {
            observe(v.code());
        }
        Ok(v)
    }

    async fn verify_unobserved(
        &self,
        key: &[u8],
        opts: &VerifyOptions<'_>,
    ) -> Result<Verification> {
        if !secret::plausible(key) {
            return Ok(Verification::bare(VerifyCode::NotFound));
        }
        let hash = self.inner.hasher.hash(key);
        let now = self.now();
        let hit = match self.inner.cache.fresh(&hash, now) {
            Some(h) => h,
            None => match self.load(hash, now).await? {
                Some(h) => h,
                None => return Ok(Verification::bare(VerifyCode::NotFound)),
            },
        };
        // After a reroll the old hash maps to the new record, marked replaced.
        if hit.replaced() || hit.deleted() {
            return Ok(Verification::bare(VerifyCode::NotFound));
        }
        // Checks read the slot's facts; the record only where an option or
        // a limit needs it. The result takes the hit's reference to the record.
        macro_rules! done {
            ($code:expr, $remaining:expr, $ratelimit:expr) => {{
                self.note(now, &hit.cached.record, $code);
                return Ok(Verification::new(
                    $code,
                    Some(hit.cached),
                    $remaining,
                    $ratelimit,
                ));
            }};
        }
        if let Some(ks) = opts.keyspace_id
            && *ks != hit.cached.record.keyspace_id
        {
            self.note(now, &hit.cached.record, VerifyCode::Forbidden);
            return Ok(Verification::bare(VerifyCode::Forbidden));
        }
        if !hit.enabled() {
            done!(VerifyCode::Disabled, None, None);
        }
        if hit.expired(now) {
            done!(VerifyCode::Expired, None, None);
        }
        if let Some(q) = opts.permissions
            && !q.is_satisfied_by(&hit.cached.record.permissions)
        {
            done!(VerifyCode::InsufficientPermissions, None, None);
        }
        let mut ratelimit = None;
        if hit.ratelimited()
            && let Some(rl) = &hit.cached.record.ratelimit
        {
            let state = self
                .take_ratelimit(&hit.cached.ratelimit_counter, rl, now)
                .await?;
            if !state.allowed {
                done!(VerifyCode::RateLimited, None, Some(state.into()));
            }
            ratelimit = Some(RateLimitState::from(state));
        }
        let mut remaining = None;
        if hit.limited() {
            let cached = &hit.cached;
            let spend = self
                .inner
                .storage
                .counters
                .spend(
                    &cached.remaining_counter,
                    1,
                    cached.record.refill.as_ref(),
                    now,
                )
                .await?;
            let left = spend.balance.map_or(0, |b| b.remaining);
            if !spend.spent {
                done!(VerifyCode::UsageExceeded, Some(left), ratelimit);
            }
            remaining = Some(left);
        }
        self.inner.cache.mark_used(&hash, now);
        done!(VerifyCode::Valid, remaining, ratelimit);
    }

    async fn take_ratelimit(
        &self,
        counter: &str,
        rl: &KeyRateLimit,
        now: Timestamp,
    ) -> Result<crate::counter::WindowTake> {
        let spec = rl.spec();
        match rl.kind {
            RateLimitKind::Fast => {
                let spec = LimitSpec::Bucket(spec);
                self.inner
                    .fast
                    .take(
                        &self.inner.storage,
                        counter,
                        || counter.to_owned(),
                        &spec,
                        1,
                        now,
                    )
                    .await
            }
            RateLimitKind::Consistent => {
                self.inner
                    .storage
                    .counters
                    .take(counter, &spec, 1, now)
                    .await
            }
        }
    }

    /// Loads the record for `hash` from the store into the cache.
    async fn load(&self, hash: super::KeyHash, now: Timestamp) -> Result<Option<Hit>> {
        let seen = self.inner.cache.version(&hash);
        match self.inner.storage.keys.get_key_by_hash(&hash).await? {
            Some(r) => Ok(Some(self.inner.cache.upsert(hash, r, now))),
            None => {
                if let Some(v) = seen {
                    self.inner.cache.remove_if_not_newer(&hash, v);
                }
                Ok(None)
            }
        }
    }

    // ----- upkeep -----------------------------------------------------------

    /// Writes last-use times seen since the previous call to the store;
    /// returns how many keys were written.
    pub async fn flush_last_used(&self) -> Result<usize> {
        let batch = self.inner.cache.take_dirty();
        if batch.is_empty() {
            return Ok(0);
        }
        let used: Vec<(KeyId, Timestamp)> =
            batch.iter().map(|(_, id, t)| (id.clone(), *t)).collect();
        if let Err(e) = self.inner.storage.keys.touch_keys(&used).await {
            // Keep them for the next call.
            self.inner.cache.requeue(batch);
            return Err(e);
        }
        Ok(used.len())
    }

    /// Periodic upkeep: writes last-use times behind, syncs `fast` rate
    /// limits with the store (what this node admitted goes in, what other
    /// nodes admitted comes back) and drops cache entries older than the
    /// TTL. Call every second or so: the error bound of `fast` rate limits
    /// across nodes grows with the interval.
    pub async fn maintain(&self) -> Result<()> {
        let synced = self.inner.fast.sync(&self.inner.storage, self.now()).await;
        self.flush_last_used().await?;
        self.inner.cache.purge_stale(self.now());
        synced
    }

    /// Reads keys `ids` from the store into the verification cache now, if
    /// cached: a change written under this service (an artifact applied on
    /// a data plane) then applies at once instead of within `cache_ttl`.
    pub async fn reload(&self, ids: &[KeyId]) -> Result<()> {
        let now = self.now();
        for id in ids {
            if let Some(r) = self.inner.storage.keys.get_key(id).await?
                && self.inner.cache.version(&r.hash).is_some()
            {
                self.inner.cache.upsert(r.hash, r, now);
            }
        }
        Ok(())
    }

    /// How many keys the verification cache holds.
    pub fn cached_keys(&self) -> usize {
        self.inner.cache.len()
    }
}
