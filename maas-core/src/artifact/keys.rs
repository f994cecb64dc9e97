//! [`KeyTable`]: a data plane's API keys, served from memory as its control
//! plane's artifact carries them.
//!
//! A data plane does not own its keys: every one comes with an artifact.
//! Writing 100k of them into a store's indexes, one durable write each,
//! took 13 s on sled; replacing a table in memory takes a fraction of a
//! second, at once for every reader (an artifact's keys are in force
//! together or not at all). Put it in place of the store's
//! [`KeyStore`](crate::storage::KeyStore) on a data plane; the keys come
//! back from the kept artifact at start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use dashmap::DashMap;

use crate::audit::AuditEvent;
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::id::{KeyId, KeyspaceId};
use crate::key::{KeyHash, KeyRecord};
use crate::storage::{KeyQuery, KeyStore, Page};

/// A data plane's keys, as the last artifact applied carries them, in
/// memory; a [`KeyStore`] whose writes are refused (keys change at the
/// control plane). A key the next artifact no longer carries stays as
/// retired (deleted when it left), so a cache holding it learns it is gone.
/// Last uses are this data plane's own, kept here.
#[derive(Debug, Default)]
pub struct KeyTable {
    table: RwLock<Arc<Table>>,
    last_used: DashMap<KeyId, Timestamp>,
}

#[derive(Debug, Default)]
struct Table {
    keys: BTreeMap<KeyId, KeyRecord>,
    by_hash: HashMap<KeyHash, KeyId>,
    by_keyspace: HashMap<KeyspaceId, BTreeSet<KeyId>>,
    by_owner: HashMap<String, BTreeSet<KeyId>>,
}

impl Table {
    /// Adds `k`; found by its hash only while live (as in the stores).
    fn insert(&mut self, k: KeyRecord) {
        if k.deleted_at.is_none() {
            self.by_hash.insert(k.hash, k.id.clone());
        }
        self.by_keyspace
            .entry(k.keyspace_id.clone())
            .or_default()
            .insert(k.id.clone());
        if let Some(o) = &k.owner_id {
            self.by_owner
                .entry(o.clone())
                .or_default()
                .insert(k.id.clone());
        }
        self.keys.insert(k.id.clone(), k);
    }
}

impl KeyTable {
    /// An empty table (no key verifies until an artifact is applied).
    pub fn new() -> Self {
        Self::default()
    }

    fn current(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// How many keys it holds, retired ones included.
    pub fn len(&self) -> usize {
        self.current().keys.len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes `keys` (an artifact's live keys) the keys in force, all at
    /// once; a key held and not among them is retired (deleted at `now`).
    /// Returns the keys that changed or were retired (for
    /// [`KeyService::reload`](crate::KeyService::reload)).
    pub fn replace(&self, keys: Vec<KeyRecord>, now: Timestamp) -> Vec<KeyId> {
        let old = self.current();
        let mut next = Table::default();
        let mut changed = Vec::new();
        for k in keys {
            if old.keys.get(&k.id).is_some_and(|o| !super::same_key(o, &k)) {
                changed.push(k.id.clone());
            }
            next.insert(k);
        }
        for (id, o) in &old.keys {
            if next.keys.contains_key(id) {
                continue;
            }
            let mut gone = o.clone();
            if gone.deleted_at.is_none() {
                // A new version: caches take it over the live one.
                gone.deleted_at = Some(now);
                gone.version += 1;
                changed.push(id.clone());
            }
            next.insert(gone);
        }
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        changed
    }

    fn with_last_used(&self, mut k: KeyRecord) -> KeyRecord {
        if let Some(at) = self.last_used.get(&k.id) {
            k.last_used_at = Some(k.last_used_at.map_or(*at, |t| t.max(*at)));
        }
        k
    }
}

fn refused() -> Error {
    Error::conflict(
        "API keys on a data plane come from its control plane's artifacts: change them there",
    )
}

#[async_trait]
impl KeyStore for KeyTable {
    async fn create_key(&self, _: &KeyRecord, _: AuditEvent) -> Result<()> {
        Err(refused())
    }

    async fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>> {
        Ok(self
            .current()
            .keys
            .get(id)
            .cloned()
            .map(|k| self.with_last_used(k)))
    }

    async fn get_key_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>> {
        let t = self.current();
        Ok(t.by_hash
            .get(hash)
            .and_then(|id| t.keys.get(id))
            .cloned()
            .map(|k| self.with_last_used(k)))
    }

    async fn list_keys(&self, query: &KeyQuery) -> Result<Page<KeyRecord>> {
        let t = self.current();
        Ok(query
            .page_of(&t.keys, &t.by_keyspace, &t.by_owner)
            .map(|k| self.with_last_used(k.clone())))
    }

    async fn update_key(&self, _: &KeyRecord, _: u64, _: AuditEvent) -> Result<()> {
        Err(refused())
    }

    async fn touch_keys(&self, used: &[(KeyId, Timestamp)]) -> Result<()> {
        for (id, at) in used {
            self.last_used
                .entry(id.clone())
                .and_modify(|t| *t = (*t).max(*at))
                .or_insert(*at);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Actor;
    use crate::storage::PageRequest;

    fn key(i: u8, ks: &str, owner: Option<&str>) -> KeyRecord {
        let mut r = crate::key::sample_record(i);
        r.keyspace_id = serde_json::from_value(serde_json::json!(ks)).unwrap();
        r.owner_id = owner.map(str::to_owned);
        r
    }

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[tokio::test]
    async fn replaced_whole_with_changes_and_retirements_reported() {
        let t = KeyTable::new();
        assert!(t.is_empty());
        let first: Vec<_> = (1..=5).map(|i| key(i, "ks_a", Some("ann"))).collect();
        assert!(
            t.replace(first.clone(), at(1)).is_empty(),
            "nothing held before"
        );
        let by_hash = t.get_key_by_hash(&first[0].hash).await.unwrap().unwrap();
        assert_eq!(by_hash.id, first[0].id);

        // Key 2 disabled, key 3 gone, key 6 new.
        let mut next = first.clone();
        next[1].enabled = false;
        next[1].version = 2;
        next.remove(2);
        next.push(key(6, "ks_a", None));
        let mut changed = t.replace(next, at(2));
        changed.sort();
        assert_eq!(changed, [first[1].id.clone(), first[2].id.clone()]);
        let gone = t.get_key(&first[2].id).await.unwrap().unwrap();
        assert_eq!((gone.deleted_at, gone.version), (Some(at(2)), 2));
        assert!(
            t.get_key_by_hash(&first[2].hash).await.unwrap().is_none(),
            "a retired key is not found by its secret"
        );
        assert!(!t.get_key(&first[1].id).await.unwrap().unwrap().enabled);
        // Retired once: the next artifact reports it no more.
        assert!(t.replace(t_live(&t).await, at(3)).is_empty());
        assert_eq!(t.len(), 6);
    }

    async fn t_live(t: &KeyTable) -> Vec<KeyRecord> {
        t.list_keys(&KeyQuery::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|k| k.deleted_at.is_none())
            .collect()
    }

    #[tokio::test]
    async fn lists_by_keyspace_and_owner_in_pages() {
        let t = KeyTable::new();
        let keys: Vec<_> = (1..=9)
            .map(|i| {
                key(
                    i,
                    if i % 2 == 0 { "ks_even" } else { "ks_odd" },
                    (i % 3 == 0).then_some("carol"),
                )
            })
            .collect();
        t.replace(keys, at(1));
        let mut query = KeyQuery {
            keyspace_id: Some(serde_json::from_str::<KeyspaceId>("\"ks_odd\"").unwrap()),
            page: PageRequest::first(2),
            ..KeyQuery::default()
        };
        let mut ids = Vec::new();
        loop {
            let page = t.list_keys(&query).await.unwrap();
            assert_eq!(page.total, 5);
            ids.extend(page.items.into_iter().map(|k| k.id.to_string()));
            match page.cursor {
                Some(c) => query.page.cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(ids, ["key_001", "key_003", "key_005", "key_007", "key_009"]);
        let carol = t
            .scan_keys(&KeyQuery {
                owner_id: Some("carol".into()),
                ..KeyQuery::default()
            })
            .await
            .unwrap();
        let ids: Vec<_> = carol.items.iter().map(|k| k.id.to_string()).collect();
        assert_eq!(ids, ["key_003", "key_006", "key_009"]);
    }

    #[tokio::test]
    async fn writes_are_refused_and_last_uses_kept() {
        let t = KeyTable::new();
        let k = key(1, "ks_a", None);
        t.replace(vec![k.clone()], at(1));
        let audit = AuditEvent::new(
            at(1),
            &Actor::new("a"),
            "key.create",
            "key",
            "k",
            None,
            None,
        );
        assert!(matches!(
            t.create_key(&key(2, "ks_a", None), audit.clone()).await,
            Err(Error::Conflict { .. })
        ));
        assert!(matches!(
            t.update_key(&k, 1, audit).await,
            Err(Error::Conflict { .. })
        ));
        t.touch_keys(&[(k.id.clone(), at(50)), (k.id.clone(), at(40))])
            .await
            .unwrap();
        let got = t.get_key(&k.id).await.unwrap().unwrap();
        assert_eq!(got.last_used_at, Some(at(50)));
        // A new artifact keeps the last use (it is this data plane's).
        t.replace(vec![k.clone()], at(2));
        let got = t.get_key_by_hash(&k.hash).await.unwrap().unwrap();
        assert_eq!(got.last_used_at, Some(at(50)));
    }
}
