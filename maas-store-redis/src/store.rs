//! The configuration stores on Redis: tenants, keyspaces, keys, catalog
//! records, the audit log and usage buckets.
//!
//! Every change is read, decided in Rust (the same rules as the memory
//! backend), and written by one script that first checks what the decision
//! rested on — a version, a key still absent, an index entry free or ours —
//! and then writes the entity, its index entries and its audit event
//! together, or nothing. A check that fails is answered as the memory
//! backend would (conflict, not found); a version that moved because of a
//! concurrent change is a conflict the services already retry.
//!
//! Layout under the prefix: entities are hashes `{v, s}` (version, JSON) at
//! `t:{id}` (tenants), `k:{id}` (keyspaces), `key:{id}` (keys),
//! `r:{kind}:{id}` (records); id-ordered sets (score 0, lexicographic) at
//! `tenants`, `keyspaces`, `keys`, `kks:{keyspace}`, `kown:{owner}`,
//! `rk:{kind}`; index strings `tn:{name}`, `kh:{hash}`, `ku:{slot}`; the
//! audit log at `audit:seq` (counter), `audit` (hash seq → JSON) and
//! `audit:idx` (set scored by seq); key last-used times in `klu`; usage and
//! verification buckets as `{v, s}` hashes at `u:{key}` / `vb:{key}`,
//! indexed by minute in `u:idx` / `vb:idx`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use maas_core::audit::{AuditEvent, AuditQuery};
use maas_core::storage::{
    AuditStore, KeyQuery, KeyStore, KeyspaceStore, Page, PageRequest, Record, RecordStore,
    TenantStore, UsageStore, audit_page_size, version_conflict,
};
use maas_core::usage::{
    UsageBucket, UsageFilter, UsageKey, UsageReport, UsageSums, VerificationBucket,
    VerificationFilter, VerificationKey, VerificationSums,
};
use maas_core::{
    Error, KeyId, KeyRecord, KeyspaceId, Result, Tenant, TenantId, Timestamp, keyspace::Keyspace,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{RedisStore, unavailable};

/// Checks, then writes; see [`Tx`].
const TX: &str = r#"
local function nargs(op)
  if op == 'X' or op == 'D' then return 1 end
  if op == 'V' or op == 'O' or op == 'Z' or op == 'R' or op == 'S' then return 2 end
  if op == 'H' then return 3 end
  if op == 'A' then return 4 end
  return error('unknown op ' .. op)
end
local checks = 0
local i = 1
while i <= #ARGV do
  local op = ARGV[i]
  local k = KEYS[tonumber(ARGV[i + 1])]
  if op == 'X' or op == 'V' or op == 'O' then
    checks = checks + 1
    if op == 'X' and redis.call('EXISTS', k) == 1 then return {checks, 0} end
    if op == 'V' and (redis.call('HGET', k, 'v') or '0') ~= ARGV[i + 2] then return {checks, 0} end
    if op == 'O' then
      local held = redis.call('GET', k)
      if held and held ~= ARGV[i + 2] then return {checks, 0} end
    end
  end
  i = i + 1 + nargs(op)
end
local seq = 0
i = 1
while i <= #ARGV do
  local op = ARGV[i]
  local k = KEYS[tonumber(ARGV[i + 1])]
  if op == 'H' then redis.call('HSET', k, 'v', ARGV[i + 2], 's', ARGV[i + 3])
  elseif op == 'D' then redis.call('DEL', k)
  elseif op == 'Z' then redis.call('ZADD', k, 0, ARGV[i + 2])
  elseif op == 'R' then redis.call('ZREM', k, ARGV[i + 2])
  elseif op == 'S' then redis.call('SET', k, ARGV[i + 2])
  elseif op == 'A' then
    seq = redis.call('INCR', k)
    redis.call('HSET', KEYS[tonumber(ARGV[i + 2])], seq, ARGV[i + 4])
    redis.call('ZADD', KEYS[tonumber(ARGV[i + 3])], seq, seq)
  end
  i = i + 1 + nargs(op)
end
return {0, seq}
"#;

/// A change: checks (each with the error to answer if it fails), then
/// writes, run by [`TX`] all or nothing.
pub(crate) struct Tx {
    keys: Vec<String>,
    args: Vec<String>,
    failures: Vec<Error>,
}

impl Tx {
    pub(crate) fn new() -> Self {
        Tx {
            keys: Vec::new(),
            args: Vec::new(),
            failures: Vec::new(),
        }
    }

    fn key(&mut self, k: String) -> String {
        let i = match self.keys.iter().position(|x| *x == k) {
            Some(i) => i,
            None => {
                self.keys.push(k);
                self.keys.len() - 1
            }
        };
        (i + 1).to_string()
    }

    fn op(&mut self, op: &str, key: String, args: &[&str]) {
        let k = self.key(key);
        self.args.push(op.to_owned());
        self.args.push(k);
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
    }

    /// `key` must not exist.
    pub(crate) fn absent(&mut self, key: String, or: Error) {
        self.op("X", key, &[]);
        self.failures.push(or);
    }

    /// The entity at `key` must be at `version` (0: absent).
    pub(crate) fn version(&mut self, key: String, version: u64, or: Error) {
        self.op("V", key, &[&version.to_string()]);
        self.failures.push(or);
    }

    /// The index entry `key` must be free or hold `owner`.
    pub(crate) fn free_or(&mut self, key: String, owner: &str, or: Error) {
        self.op("O", key, &[owner]);
        self.failures.push(or);
    }

    pub(crate) fn put<T: Serialize>(&mut self, key: String, version: u64, value: &T) -> Result<()> {
        let json = to_json(value)?;
        self.op("H", key, &[&version.to_string(), &json]);
        Ok(())
    }

    pub(crate) fn del(&mut self, key: String) {
        self.op("D", key, &[]);
    }

    pub(crate) fn zadd(&mut self, key: String, member: &str) {
        self.op("Z", key, &[member]);
    }

    pub(crate) fn zrem(&mut self, key: String, member: &str) {
        self.op("R", key, &[member]);
    }

    pub(crate) fn set(&mut self, key: String, value: &str) {
        self.op("S", key, &[value]);
    }

    pub(crate) fn audit(&mut self, s: &RedisStore, event: &AuditEvent) -> Result<()> {
        let json = to_json(event)?;
        let (h, idx) = (self.key(s.k("audit")), self.key(s.k("audit:idx")));
        self.op("A", s.k("audit:seq"), &[&h, &idx, &json]);
        Ok(())
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::internal(format!("cannot encode: {e}")))
}

fn from_json<T: DeserializeOwned>(key: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|_| Error::internal(format!("{key} in redis is unreadable")))
}

impl RedisStore {
    /// Runs `tx`: `Ok(seq)` (the audit event's, 0 if none) or the failure
    /// of its first failing check.
    pub(crate) async fn run(&self, tx: Tx) -> Result<u64> {
        let mut call = self.inner.tx.prepare_invoke();
        for k in &tx.keys {
            call.key(k);
        }
        for a in &tx.args {
            call.arg(a);
        }
        let mut con = self.inner.con.clone();
        let (failed, seq): (usize, u64) = call
            .invoke_async(&mut con)
            .await
            .map_err(|e| unavailable(&e))?;
        if failed == 0 {
            return Ok(seq);
        }
        Err(tx
            .failures
            .into_iter()
            .nth(failed - 1)
            .unwrap_or_else(|| Error::internal("redis: a check failed that does not exist")))
    }

    /// The entities at `keys` (absent: `None`).
    pub(crate) async fn get_many<T: DeserializeOwned>(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<T>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("HGET").arg(k).arg("s");
        }
        let mut con = self.inner.con.clone();
        let raw: Vec<Option<String>> = pipe
            .query_async(&mut con)
            .await
            .map_err(|e| unavailable(&e))?;
        keys.iter()
            .zip(raw)
            .map(|(k, s)| s.map(|s| from_json(k, &s)).transpose())
            .collect()
    }

    pub(crate) async fn get_one<T: DeserializeOwned>(&self, key: String) -> Result<Option<T>> {
        Ok(self.get_many(&[key]).await?.pop().flatten())
    }

    async fn get_string(&self, key: String) -> Result<Option<String>> {
        let mut con = self.inner.con.clone();
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut con)
            .await
            .map_err(|e| unavailable(&e))
    }

    /// Members of the id-ordered set `set`, all of them.
    async fn members(&self, set: String) -> Result<Vec<String>> {
        let mut con = self.inner.con.clone();
        redis::cmd("ZRANGE")
            .arg(set)
            .arg(0)
            .arg(-1)
            .query_async(&mut con)
            .await
            .map_err(|e| unavailable(&e))
    }

    /// One page of the id-ordered set `set` after the cursor, with its size.
    async fn page_of(&self, set: String, page: &PageRequest) -> Result<(Vec<String>, u64)> {
        let size = page.size();
        let from = match &page.cursor {
            Some(c) => format!("({c}"),
            None => "-".to_owned(),
        };
        let mut con = self.inner.con.clone();
        let (ids, total): (Vec<String>, u64) = redis::pipe()
            .cmd("ZRANGE")
            .arg(&set)
            .arg(from)
            .arg("+")
            .arg("BYLEX")
            .arg("LIMIT")
            .arg(0)
            .arg(size + 1)
            .cmd("ZCARD")
            .arg(&set)
            .query_async(&mut con)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok((ids, total))
    }

    async fn paged<T: DeserializeOwned>(
        &self,
        set: String,
        page: &PageRequest,
        key_of: impl Fn(&str) -> String,
        id_of: impl Fn(&T) -> &str,
    ) -> Result<Page<T>> {
        let (ids, total) = self.page_of(set, page).await?;
        let keys: Vec<String> = ids.iter().map(|i| key_of(i)).collect();
        let items: Vec<T> = self.get_many(&keys).await?.into_iter().flatten().collect();
        // The page's own cursor rule (ids after the cursor, one more to
        // know whether there is a next page).
        let first = PageRequest {
            cursor: None,
            ..page.clone()
        };
        Ok(first.paginate(items, id_of, total))
    }
}

fn tenant_exists(t: &Tenant) -> Error {
    Error::conflict(format!("tenant '{}' exists", t.id))
}

fn name_taken(name: &str) -> Error {
    Error::conflict(format!("a tenant named '{name}' exists"))
}

#[async_trait]
impl TenantStore for RedisStore {
    async fn create_tenant(&self, tenant: &Tenant, audit: AuditEvent) -> Result<()> {
        let mut tx = Tx::new();
        tx.absent(self.k(&format!("t:{}", tenant.id)), tenant_exists(tenant));
        tx.absent(
            self.k(&format!("tn:{}", tenant.name)),
            name_taken(&tenant.name),
        );
        tx.put(self.k(&format!("t:{}", tenant.id)), tenant.version, tenant)?;
        tx.set(self.k(&format!("tn:{}", tenant.name)), tenant.id.as_str());
        tx.zadd(self.k("tenants"), tenant.id.as_str());
        tx.audit(self, &audit)?;
        self.run(tx).await.map(drop)
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>> {
        self.get_one(self.k(&format!("t:{id}"))).await
    }

    async fn get_tenant_by_name(&self, name: &str) -> Result<Option<Tenant>> {
        match self.get_string(self.k(&format!("tn:{name}"))).await? {
            Some(id) => self.get_one(self.k(&format!("t:{id}"))).await,
            None => Ok(None),
        }
    }

    async fn list_tenants(&self, page: &PageRequest) -> Result<Page<Tenant>> {
        self.paged(
            self.k("tenants"),
            page,
            |id| self.k(&format!("t:{id}")),
            |t: &Tenant| t.id.as_str(),
        )
        .await
    }

    async fn update_tenant(
        &self,
        tenant: &Tenant,
        expected_version: u64,
        audit: AuditEvent,
    ) -> Result<()> {
        let key = self.k(&format!("t:{}", tenant.id));
        let current: Tenant = self
            .get_one(key.clone())
            .await?
            .ok_or_else(|| Error::not_found("tenant", tenant.id.as_str()))?;
        if current.version != expected_version {
            return Err(version_conflict("tenant", tenant.id.as_str()));
        }
        let mut tx = Tx::new();
        tx.version(
            key.clone(),
            expected_version,
            version_conflict("tenant", tenant.id.as_str()),
        );
        if current.name != tenant.name {
            tx.absent(
                self.k(&format!("tn:{}", tenant.name)),
                name_taken(&tenant.name),
            );
            tx.del(self.k(&format!("tn:{}", current.name)));
            tx.set(self.k(&format!("tn:{}", tenant.name)), tenant.id.as_str());
        }
        let stored = Tenant {
            version: expected_version + 1,
            ..tenant.clone()
        };
        tx.put(key, stored.version, &stored)?;
        tx.audit(self, &audit)?;
        self.run(tx).await.map(drop)
    }

    async fn delete_tenant(&self, id: &TenantId, audit: AuditEvent) -> Result<()> {
        let key = self.k(&format!("t:{id}"));
        let current: Tenant = self
            .get_one(key.clone())
            .await?
            .ok_or_else(|| Error::not_found("tenant", id.as_str()))?;
        let mut tx = Tx::new();
        tx.version(
            key.clone(),
            current.version,
            version_conflict("tenant", id.as_str()),
        );
        tx.del(key);
        tx.del(self.k(&format!("tn:{}", current.name)));
        tx.zrem(self.k("tenants"), id.as_str());
        tx.audit(self, &audit)?;
        self.run(tx).await.map(drop)
    }
}

#[async_trait]
impl KeyspaceStore for RedisStore {
    async fn create_keyspace(&self, keyspace: &Keyspace, audit: AuditEvent) -> Result<()> {
        let key = self.k(&format!("k:{}", keyspace.id));
        let mut tx = Tx::new();
        tx.absent(
            key.clone(),
            Error::conflict(format!("keyspace '{}' exists", keyspace.id)),
        );
        tx.put(key, keyspace.version, keyspace)?;
        tx.zadd(self.k("keyspaces"), keyspace.id.as_str());
        tx.audit(self, &audit)?;
        self.run(tx).await.map(drop)
    }

    async fn get_keyspace(&self, id: &KeyspaceId) -> Result<Option<Keyspace>> {
        self.get_one(self.k(&format!("k:{id}"))).await
    }

    async fn list_keyspaces(&self, page: &PageRequest) -> Result<Page<Keyspace>> {
        self.paged(
            self.k("keyspaces"),
            page,
            |id| self.k(&format!("k:{id}")),
            |k: &Keyspace| k.id.as_str(),
        )
        .await
    }

    async fn update_keyspace(
        &self,
        keyspace: &Keyspace,
        expected_version: u64,
        audit: AuditEvent,
    ) -> Result<()> {
        let key = self.k(&format!("k:{}", keyspace.id));
        let current: Keyspace = self
            .get_one(key.clone())
            .await?
            .ok_or_else(|| Error::not_found("keyspace", keyspace.id.as_str()))?;
        if current.version != expected_version {
            return Err(version_conflict("keyspace", keyspace.id.as_str()));
        }
        let stored = Keyspace {
            version: expected_version + 1,
            ..keyspace.clone()
        };
        let mut tx = Tx::new();
        tx.version(
            key.clone(),
            expected_version,
            version_conflict("keyspace", keyspace.id.as_str()),
        );
        tx.put(key, stored.version, &stored)?;
        tx.audit(self, &audit)?;
        self.run(tx).await.map(drop)
    }

    async fn delete_keyspace(&self, id: &KeyspaceId, audit: AuditEvent) -> Result<()> {
        let key = self.k(&format!("k:{id}"));
        let current: Keyspace = self
            .get_one(key.clone())
            .await?
            .ok_or_else(|| Error::not_found("keyspace", id.as_str()))?;
        let mut tx = Tx::new();
        tx.version(
            key.clone(),
            current.version,
            version_conflict("keyspace", id.as_str()),
        );
        tx.del(key);
        tx.zrem(self.k("keyspaces"), id.as_str());
        tx.audit(self, &audit)?;
        self.run(tx).await.map(drop)
    }
}

impl RedisStore {
    fn key_key(&self, id: &str) -> String {
        self.k(&format!("key:{id}"))
    }

    fn slot_key(&self, slot: &(String, String, String)) -> String {
        self.k(&format!("ku:{}\u{1f}{}\u{1f}{}", slot.0, slot.1, slot.2))
    }

    /// The writes that index `key`.
    fn index(&self, tx: &mut Tx, key: &KeyRecord) {
        let id = key.id.as_str();
        tx.set(self.k(&format!("kh:{}", key.hash.to_hex())), id);
        if let Some(slot) = key.unique_slot() {
            tx.set(self.slot_key(&slot), id);
        }
        tx.zadd(self.k("keys"), id);
        tx.zadd(self.k(&format!("kks:{}", key.keyspace_id)), id);
        if let Some(o) = &key.owner_id {
            tx.zadd(self.k(&format!("kown:{o}")), id);
        }
    }

    /// The writes that unindex `key` (the unique slot only if it is its own,
    /// which the caller checked).
    fn unindex(&self, tx: &mut Tx, key: &KeyRecord) {
        let id = key.id.as_str();
        tx.del(self.k(&format!("kh:{}", key.hash.to_hex())));
        if let Some(slot) = key.unique_slot() {
            tx.del(self.slot_key(&slot));
        }
        tx.zrem(self.k(&format!("kks:{}", key.keyspace_id)), id);
        if let Some(o) = &key.owner_id {
            tx.zrem(self.k(&format!("kown:{o}")), id);
        }
    }

    fn unique_taken(slot: &(String, String, String)) -> Error {
        Error::conflict(format!(
            "a key named '{}' already exists for this owner",
            slot.2
        ))
    }

    /// Key records with their last-used times applied.
    async fn with_last_used(&self, mut keys: Vec<KeyRecord>) -> Result<Vec<KeyRecord>> {
        if keys.is_empty() {
            return Ok(keys);
        }
        let mut con = self.inner.con.clone();
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.k("klu"));
        for k in &keys {
            cmd.arg(k.id.as_str());
        }
        let times: Vec<Option<i64>> = cmd
            .query_async(&mut con)
            .await
            .map_err(|e| unavailable(&e))?;
        for (k, t) in keys.iter_mut().zip(times) {
            if let Some(ms) = t {
                k.last_used_at = k.last_used_at.max(Some(Timestamp::from_millis(ms)));
            }
        }
        Ok(keys)
    }
}

/// Raises a stored last-used time, never lowers it: `KEYS[1]` the hash,
/// `ARGV` pairs of id and unix ms.
const TOUCH: &str = r#"
for i = 1, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > cur then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
"#;

#[async_trait]
impl KeyStore for RedisStore {
    async fn create_key(&self, key: &KeyRecord, audit: AuditEvent) -> Result<()> {
        let exists = || Error::conflict(format!("key '{}' exists", key.id));
        let mut tx = Tx::new();
        tx.absent(self.key_key(key.id.as_str()), exists());
        tx.absent(self.k(&format!("kh:{}", key.hash.to_hex())), exists());
        if let Some(slot) = key.unique_slot() {
            tx.absent(self.slot_key(&slot), Self::unique_taken(&slot));
        }
        tx.put(self.key_key(key.id.as_str()), key.version, key)?;
        self.index(&mut tx, key);
        tx.audit(self, &audit)?;
        self.run(tx).await.map(drop)
    }

    async fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>> {
        match self.get_one(self.key_key(id.as_str())).await? {
            Some(k) => Ok(self.with_last_used(vec![k]).await?.pop()),
            None => Ok(None),
        }
    }

    async fn get_key_by_hash(&self, hash: &maas_core::key::KeyHash) -> Result<Option<KeyRecord>> {
        match self
            .get_string(self.k(&format!("kh:{}", hash.to_hex())))
            .await?
        {
            Some(id) => match self.get_one(self.key_key(&id)).await? {
                Some(k) => Ok(self.with_last_used(vec![k]).await?.pop()),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    async fn list_keys(&self, query: &KeyQuery) -> Result<Page<KeyRecord>> {
        // The narrowest index, then the filters (the memory backend's rule).
        let set = match (&query.keyspace_id, &query.owner_id) {
            (Some(ks), _) => self.k(&format!("kks:{ks}")),
            (None, Some(o)) => self.k(&format!("kown:{o}")),
            (None, None) => self.k("keys"),
        };
        let ids = self.members(set).await?;
        let keys: Vec<String> = ids.iter().map(|i| self.key_key(i)).collect();
        let matching: Vec<KeyRecord> = self
            .get_many::<KeyRecord>(&keys)
            .await?
            .into_iter()
            .flatten()
            .filter(|k| query.matches(k))
            .collect();
        let total = matching.len() as u64;
        let page = query.page.paginate(matching, |k| k.id.as_str(), total);
        let items = self.with_last_used(page.items).await?;
        Ok(Page { items, ..page })
    }

    async fn update_key(
        &self,
        key: &KeyRecord,
        expected_version: u64,
        audit: AuditEvent,
    ) -> Result<()> {
        let k = self.key_key(key.id.as_str());
        let current: KeyRecord = self
            .get_one(k.clone())
            .await?
            .ok_or_else(|| Error::not_found("key", key.id.as_str()))?;
        if current.version != expected_version {
            return Err(version_conflict("key", key.id.as_str()));
        }
        let mut tx = Tx::new();
        tx.version(
            k.clone(),
            expected_version,
            version_conflict("key", key.id.as_str()),
        );
        if current.hash != key.hash {
            tx.free_or(
                self.k(&format!("kh:{}", key.hash.to_hex())),
                key.id.as_str(),
                Error::conflict("the new secret collides with another key"),
            );
        }
        if let Some(slot) = key.unique_slot() {
            tx.free_or(
                self.slot_key(&slot),
                key.id.as_str(),
                Self::unique_taken(&slot),
            );
        }
        self.unindex(&mut tx, &current);
        let stored = KeyRecord {
            version: expected_version + 1,
            last_used_at: key.last_used_at.max(current.last_used_at),
            ..key.clone()
        };
        tx.put(k, stored.version, &stored)?;
        self.index(&mut tx, &stored);
        tx.audit(self, &audit)?;
        self.run(tx).await.map(drop)
    }

    async fn touch_keys(&self, used: &[(KeyId, Timestamp)]) -> Result<()> {
        if used.is_empty() {
            return Ok(());
        }
        let mut call = self.inner.touch.prepare_invoke();
        call.key(self.k("klu"));
        for (id, at) in used {
            call.arg(id.as_str()).arg(at.as_millis());
        }
        let mut con = self.inner.con.clone();
        let _: i64 = call
            .invoke_async(&mut con)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(())
    }
}

#[async_trait]
impl AuditStore for RedisStore {
    async fn append_audit(&self, event: AuditEvent) -> Result<u64> {
        let mut tx = Tx::new();
        tx.audit(self, &event)?;
        self.run(tx).await
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEvent>> {
        let size = audit_page_size(query);
        let max = match query.before_seq {
            Some(seq) => format!("({seq}"),
            None => "+inf".to_owned(),
        };
        let mut con = self.inner.con.clone();
        let (seqs, total): (Vec<u64>, u64) = redis::pipe()
            .cmd("ZRANGE")
            .arg(self.k("audit:idx"))
            .arg(max)
            .arg("-inf")
            .arg("BYSCORE")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(size + 1)
            .cmd("ZCARD")
            .arg(self.k("audit:idx"))
            .query_async(&mut con)
            .await
            .map_err(|e| unavailable(&e))?;
        let more = seqs.len() > size;
        let seqs = &seqs[..seqs.len().min(size)];
        let mut items = Vec::with_capacity(seqs.len());
        if !seqs.is_empty() {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(self.k("audit"));
            for s in seqs {
                cmd.arg(*s);
            }
            let raw: Vec<Option<String>> = cmd
                .query_async(&mut con)
                .await
                .map_err(|e| unavailable(&e))?;
            for (seq, json) in seqs.iter().zip(raw) {
                let Some(json) = json else { continue };
                let mut e: AuditEvent = from_json("an audit event", &json)?;
                e.seq = *seq;
                items.push(e);
            }
        }
        let cursor = if more {
            items.last().map(|e| e.seq.to_string())
        } else {
            None
        };
        Ok(Page {
            items,
            cursor,
            total,
        })
    }
}

impl RedisStore {
    fn record_key(&self, kind: &str, id: &str) -> String {
        self.k(&format!("r:{kind}:{id}"))
    }
}

#[async_trait]
impl RecordStore for RedisStore {
    async fn create_record(&self, record: &Record, audit: AuditEvent) -> Result<()> {
        let key = self.record_key(&record.kind, &record.id);
        let mut tx = Tx::new();
        tx.absent(
            key.clone(),
            Error::conflict(format!("{} '{}' exists", record.kind, record.id)),
        );
        tx.put(key, record.version, record)?;
        tx.zadd(self.k(&format!("rk:{}", record.kind)), &record.id);
        tx.audit(self, &audit)?;
        self.run(tx).await.map(drop)
    }

    async fn get_record(&self, kind: &str, id: &str) -> Result<Option<Record>> {
        self.get_one(self.record_key(kind, id)).await
    }

    async fn list_records(&self, kind: &str, page: &PageRequest) -> Result<Page<Record>> {
        self.paged(
            self.k(&format!("rk:{kind}")),
            page,
            |id| self.record_key(kind, id),
            |r: &Record| r.id.as_str(),
        )
        .await
    }

    async fn update_record(
        &self,
        record: &Record,
        expected_version: u64,
        audit: AuditEvent,
    ) -> Result<()> {
        let key = self.record_key(&record.kind, &record.id);
        let not_found = || Error::not_found("record", format!("{}/{}", record.kind, record.id));
        let current: Record = self.get_one(key.clone()).await?.ok_or_else(not_found)?;
        if current.version != expected_version {
            return Err(version_conflict(&record.kind, &record.id));
        }
        let stored = Record {
            version: expected_version + 1,
            ..record.clone()
        };
        let mut tx = Tx::new();
        tx.version(
            key.clone(),
            expected_version,
            version_conflict(&record.kind, &record.id),
        );
        tx.put(key, stored.version, &stored)?;
        tx.audit(self, &audit)?;
        self.run(tx).await.map(drop)
    }

    async fn delete_record(&self, kind: &str, id: &str, audit: AuditEvent) -> Result<()> {
        let key = self.record_key(kind, id);
        let not_found = || Error::not_found("record", format!("{kind}/{id}"));
        let current: Record = self.get_one(key.clone()).await?.ok_or_else(not_found)?;
        let mut tx = Tx::new();
        tx.version(key.clone(), current.version, not_found());
        tx.del(key);
        tx.zrem(self.k(&format!("rk:{kind}")), id);
        tx.audit(self, &audit)?;
        self.run(tx).await.map(drop)
    }
}

/// A usage or verification bucket as stored: its key and sums.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored<K, S> {
    key: K,
    sums: S,
}

/// Buckets to add into one space (`u` or `vb`): one per key, summed, each
/// with its Redis key.
struct Staged<K, S> {
    space: &'static str,
    entries: Vec<(String, K, S)>,
}

/// What a bucket space needs: its keys' minute and its sums' addition.
trait Space: Sized {
    type Sums: Serialize + DeserializeOwned + Default + Copy;
    fn minute(&self) -> i64;
    fn add(a: &mut Self::Sums, b: &Self::Sums);
}

impl Space for UsageKey {
    type Sums = UsageSums;
    fn minute(&self) -> i64 {
        self.minute.as_millis()
    }
    fn add(a: &mut UsageSums, b: &UsageSums) {
        a.add(b);
    }
}

impl Space for VerificationKey {
    type Sums = VerificationSums;
    fn minute(&self) -> i64 {
        self.minute.as_millis()
    }
    fn add(a: &mut VerificationSums, b: &VerificationSums) {
        a.add(b);
    }
}

impl<K> Staged<K, K::Sums>
where
    K: Space + Serialize + DeserializeOwned + Ord + Clone,
{
    fn new(
        s: &RedisStore,
        space: &'static str,
        entries: impl IntoIterator<Item = (K, K::Sums)>,
    ) -> Result<Self> {
        let mut merged: BTreeMap<K, K::Sums> = BTreeMap::new();
        for (k, sums) in entries {
            K::add(merged.entry(k).or_default(), &sums);
        }
        let entries = merged
            .into_iter()
            .map(|(k, sums)| Ok((s.k(&format!("{space}:{}", to_json(&k)?)), k, sums)))
            .collect::<Result<_>>()?;
        Ok(Staged { space, entries })
    }

    fn names(&self) -> impl Iterator<Item = &String> {
        self.entries.iter().map(|(n, ..)| n)
    }

    /// Asks for each bucket's version and stored value.
    fn read(&self, pipe: &mut redis::Pipeline) {
        for n in self.names() {
            pipe.cmd("HMGET").arg(n).arg("v").arg("s");
        }
    }

    /// Writes each bucket, its stored sums (as `rows` read them) plus what
    /// is added, on the condition that nothing moved since.
    fn write(
        &self,
        s: &RedisStore,
        tx: &mut Tx,
        rows: impl Iterator<Item = (Option<u64>, Option<String>)>,
    ) -> Result<()> {
        for ((name, key, add_sums), (version, json)) in self.entries.iter().zip(rows) {
            let version = version.unwrap_or(0);
            let mut sums = match json {
                Some(j) => from_json::<Stored<K, K::Sums>>(name, &j)?.sums,
                None => K::Sums::default(),
            };
            K::add(&mut sums, add_sums);
            tx.version(name.clone(), version, Error::conflict("moved"));
            tx.put(
                name.clone(),
                version + 1,
                &Stored {
                    key: key.clone(),
                    sums,
                },
            )?;
            tx.op(
                "Z",
                s.k(&format!("{}:idx", self.space)),
                &[&format!("{:020}\u{1f}{}", key.minute(), to_json(key)?)],
            );
        }
        Ok(())
    }
}

type Row = (Option<u64>, Option<String>);

impl RedisStore {
    /// Adds `staged` into its stored buckets: read, add (saturating, the
    /// model's `add`), write if nothing moved, retried.
    async fn add_buckets<K>(&self, staged: Staged<K, K::Sums>) -> Result<()>
    where
        K: Space + Serialize + DeserializeOwned + Ord + Clone,
    {
        if staged.entries.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = staged.names().cloned().collect();
        let _held = self.lock(&names).await;
        for _ in 0..crate::MAX_TRIES {
            let mut pipe = redis::pipe();
            staged.read(&mut pipe);
            let mut con = self.inner.con.clone();
            let rows: Vec<Row> = pipe
                .query_async(&mut con)
                .await
                .map_err(|e| unavailable(&e))?;
            let mut tx = Tx::new();
            staged.write(self, &mut tx, rows.into_iter())?;
            match self.run(tx).await {
                Ok(_) => return Ok(()),
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::unavailable(
            "redis: usage buckets kept changing",
            true,
        ))
    }

    /// [`UsageStore::add_report`]: the buckets of both spaces and the
    /// source's last sequence (`rep:{source}`, its version and the sequence)
    /// in one conditional transaction.
    async fn add_report_tx(&self, report: &UsageReport) -> Result<bool> {
        let usage = Staged::new(
            self,
            "u",
            report.usage.iter().map(|b| (b.key.clone(), b.sums)),
        )?;
        let verifications = Staged::new(
            self,
            "vb",
            report.verifications.iter().map(|b| (b.key.clone(), b.sums)),
        )?;
        let marker = self.k(&format!("rep:{}", report.source));
        let mut names: Vec<String> = usage
            .names()
            .chain(verifications.names())
            .cloned()
            .collect();
        names.push(marker.clone());
        let _held = self.lock(&names).await;
        for _ in 0..crate::MAX_TRIES {
            let mut pipe = redis::pipe();
            usage.read(&mut pipe);
            verifications.read(&mut pipe);
            pipe.cmd("HMGET").arg(&marker).arg("v").arg("s");
            let mut con = self.inner.con.clone();
            let mut rows: Vec<Row> = pipe
                .query_async(&mut con)
                .await
                .map_err(|e| unavailable(&e))?;
            let (version, last) = rows.pop().unwrap_or((None, None));
            let last: u64 = match last {
                Some(j) => from_json(&marker, &j)?,
                None => 0,
            };
            if last >= report.sequence {
                return Ok(false);
            }
            let mut rows = rows.into_iter();
            let mut tx = Tx::new();
            usage.write(self, &mut tx, rows.by_ref().take(usage.entries.len()))?;
            verifications.write(self, &mut tx, rows)?;
            let version = version.unwrap_or(0);
            tx.version(marker.clone(), version, Error::conflict("moved"));
            tx.put(marker.clone(), version + 1, &report.sequence)?;
            match self.run(tx).await {
                Ok(_) => return Ok(true),
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::unavailable(
            "redis: usage buckets kept changing",
            true,
        ))
    }

    /// The stored buckets of `space` with minutes in `[from, to)`, sorted.
    async fn buckets_in<K, S>(
        &self,
        space: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<(K, S)>>
    where
        K: DeserializeOwned + Ord,
        S: DeserializeOwned,
    {
        if from >= to {
            return Ok(Vec::new());
        }
        let lo = format!("[{:020}", from.as_millis().max(0));
        let hi = format!("({:020}", to.as_millis().max(0));
        let mut con = self.inner.con.clone();
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.k(&format!("{space}:idx")))
            .arg(lo)
            .arg(hi)
            .arg("BYLEX")
            .query_async(&mut con)
            .await
            .map_err(|e| unavailable(&e))?;
        let names: Vec<String> = members
            .iter()
            .filter_map(|m| m.split_once('\u{1f}'))
            .map(|(_, key)| self.k(&format!("{space}:{key}")))
            .collect();
        let mut out: Vec<(K, S)> = self
            .get_many::<Stored<K, S>>(&names)
            .await?
            .into_iter()
            .flatten()
            .map(|s| (s.key, s.sums))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

#[async_trait]
impl UsageStore for RedisStore {
    async fn add_usage(&self, buckets: &[UsageBucket]) -> Result<()> {
        self.add_buckets(Staged::new(
            self,
            "u",
            buckets.iter().map(|b| (b.key.clone(), b.sums)),
        )?)
        .await
    }

    async fn add_verifications(&self, buckets: &[VerificationBucket]) -> Result<()> {
        self.add_buckets(Staged::new(
            self,
            "vb",
            buckets.iter().map(|b| (b.key.clone(), b.sums)),
        )?)
        .await
    }

    async fn add_report(&self, report: &UsageReport) -> Result<bool> {
        self.add_report_tx(report).await
    }

    async fn usage_buckets(&self, filter: &UsageFilter) -> Result<Vec<UsageBucket>> {
        Ok(self
            .buckets_in::<UsageKey, UsageSums>("u", filter.from, filter.to)
            .await?
            .into_iter()
            .filter(|(k, _)| filter.matches(k))
            .map(|(key, sums)| UsageBucket { key, sums })
            .collect())
    }

    async fn verification_buckets(
        &self,
        filter: &VerificationFilter,
    ) -> Result<Vec<VerificationBucket>> {
        Ok(self
            .buckets_in::<VerificationKey, VerificationSums>("vb", filter.from, filter.to)
            .await?
            .into_iter()
            .filter(|(k, _)| filter.matches(k))
            .map(|(key, sums)| VerificationBucket { key, sums })
            .collect())
    }
}

pub(crate) const TOUCH_SCRIPT: &str = TOUCH;
pub(crate) const TX_SCRIPT: &str = TX;
