//! Shared plumbing of the catalog services (tiers, models, settings): typed
//! values in [`RecordStore`](crate::storage::RecordStore) records, and the
//! in-memory snapshot their hot paths read.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::audit::{Actor, AuditEvent};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::id::KeyspaceId;
use crate::key::KeyService;
use crate::keyspace::NewKeyspace;
use crate::storage::{MAX_PAGE_SIZE, PageRequest, Record, RecordStore};
use crate::versioned::{self, Versioned};

/// How long a snapshot is used before it is read from the store again,
/// unless configured otherwise.
pub(crate) const DEFAULT_SNAPSHOT_TTL: Duration = Duration::from_secs(30);

/// The record of kind `kind` and id `id` holding `value`.
pub(crate) fn to_record<T: Serialize>(
    kind: &str,
    id: &str,
    value: &T,
    created_at: Timestamp,
    updated_at: Timestamp,
    version: u64,
) -> Result<Record> {
    Ok(Record {
        kind: kind.to_owned(),
        id: id.to_owned(),
        body: to_body(kind, id, value)?,
        created_at,
        updated_at,
        version,
    })
}

/// `value` as the body of the record `id` of `kind`.
pub(crate) fn to_body<T: Serialize>(kind: &str, id: &str, value: &T) -> Result<serde_json::Value> {
    serde_json::to_value(value)
        .map_err(|e| Error::internal(format!("cannot serialize {kind} '{id}': {e}")))
}

/// The value stored in `record`. A body that does not parse is
/// [`Error::Internal`]: the store holds something this version cannot read.
pub(crate) fn from_record<T: DeserializeOwned>(record: &Record) -> Result<T> {
    T::deserialize(&record.body).map_err(|e| {
        Error::internal(format!(
            "stored {} '{}' is unreadable: {e}",
            record.kind, record.id
        ))
    })
}

/// Every record of `kind`, by id (all pages).
pub(crate) async fn load_all(records: &dyn RecordStore, kind: &str) -> Result<Vec<Record>> {
    let mut page = PageRequest::first(MAX_PAGE_SIZE);
    let mut out = Vec::new();
    loop {
        let got = records.list_records(kind, &page).await?;
        out.extend(got.items);
        match got.cursor {
            Some(c) => page.cursor = Some(c),
            None => return Ok(out),
        }
    }
}

/// A typed catalog entry: one record of kind [`Entry::KIND`] per value,
/// every change audited with the value before and after.
pub(crate) trait Entry: Versioned + Serialize + DeserializeOwned {
    /// The record kind, also the audit target kind, the not-found kind and
    /// the prefix of the audit actions (`tier.create`, ...).
    const KIND: &'static str;
    /// The record id.
    fn id(&self) -> &str;
    /// When it was created.
    fn created_at(&self) -> Timestamp;
    /// The value as the audit log shows it.
    fn audit_value(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self).ok()
    }
}

/// The entry `id`, with the stored version. [`Error::NotFound`] if absent.
pub(crate) async fn get_entry<T: Entry>(records: &dyn RecordStore, id: &str) -> Result<T> {
    let record = records
        .get_record(T::KIND, id)
        .await?
        .ok_or_else(|| Error::not_found(T::KIND, id))?;
    let mut value: T = from_record(&record)?;
    value.set_version(record.version);
    Ok(value)
}

/// Every entry of the kind, by id, with their stored versions.
pub(crate) async fn list_entries<T: Entry>(records: &dyn RecordStore) -> Result<Vec<T>> {
    load_all(records, T::KIND)
        .await?
        .iter()
        .map(|r| {
            let mut value: T = from_record(r)?;
            value.set_version(r.version);
            Ok(value)
        })
        .collect()
}

/// Stores a new entry (`KIND.create`). [`Error::Conflict`] if the id is taken.
pub(crate) async fn create_entry<T: Entry>(
    records: &dyn RecordStore,
    actor: &Actor,
    entry: &T,
    now: Timestamp,
) -> Result<()> {
    let record = to_record(T::KIND, entry.id(), entry, now, now, 1)?;
    let audit = AuditEvent::new(
        now,
        actor,
        &format!("{}.create", T::KIND),
        T::KIND,
        entry.id(),
        None,
        entry.audit_value(),
    );
    records.create_record(&record, audit).await
}

/// Reads the entry `id`, applies `change` and stores it as `action`,
/// retrying when a concurrent change won. Returns the entry after.
pub(crate) async fn update_entry<T: Entry>(
    records: &dyn RecordStore,
    actor: &Actor,
    id: &str,
    action: &str,
    now: Timestamp,
    change: impl FnMut(&mut T) -> Result<()>,
) -> Result<T> {
    let (_, after) = versioned::update(
        T::KIND,
        || get_entry::<T>(records, id),
        change,
        move |before: T, after: T| async move {
            let record = to_record(
                T::KIND,
                after.id(),
                &after,
                after.created_at(),
                now,
                after.version(),
            )?;
            let audit = AuditEvent::new(
                now,
                actor,
                action,
                T::KIND,
                after.id(),
                before.audit_value(),
                after.audit_value(),
            );
            records
                .update_record(&record, before.version(), audit)
                .await
        },
    )
    .await?;
    Ok(after)
}

/// Removes the entry `id` (`KIND.delete`, with the value before).
pub(crate) async fn delete_entry<T: Entry>(
    records: &dyn RecordStore,
    actor: &Actor,
    id: &str,
    now: Timestamp,
) -> Result<()> {
    let before: T = get_entry(records, id).await?;
    let audit = AuditEvent::new(
        now,
        actor,
        &format!("{}.delete", T::KIND),
        T::KIND,
        id,
        before.audit_value(),
        None,
    );
    match records.delete_record(T::KIND, id, audit).await {
        Err(Error::NotFound { .. }) => Err(Error::not_found(T::KIND, id)),
        other => other,
    }
}

/// The body of a setting record that names a keyspace: `{"keyspace_id": …}`
/// (the shape of the user keyspace's setting, [`crate::userkeys`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct KeyspaceSetting {
    keyspace_id: KeyspaceId,
}

/// The keyspace the setting record `setting` (kind
/// [`SETTING_KIND`](crate::userkeys::SETTING_KIND)) names, if it exists.
pub(crate) async fn setting_keyspace(
    records: &dyn RecordStore,
    setting: &str,
) -> Result<Option<KeyspaceId>> {
    match records
        .get_record(crate::userkeys::SETTING_KIND, setting)
        .await?
    {
        Some(r) => Ok(Some(from_record::<KeyspaceSetting>(&r)?.keyspace_id)),
        None => Ok(None),
    }
}

/// The keyspace of a deployment-wide setting, created on first need: reads
/// the setting `setting`; if absent, creates the keyspace `new` and then the
/// setting naming it with create-if-absent, so every node agrees on one
/// keyspace (a node that loses the race removes the keyspace it made and
/// returns the winner's). Changes are made as [`Actor::system`].
pub(crate) async fn ensure_setting_keyspace(
    keys: &KeyService,
    setting: &str,
    new: NewKeyspace,
    now: Timestamp,
) -> Result<KeyspaceId> {
    let records = &*keys.storage().records;
    if let Some(id) = setting_keyspace(records, setting).await? {
        return Ok(id);
    }
    let actor = Actor::system();
    let ks = keys.create_keyspace(&actor, new).await?;
    let kind = crate::userkeys::SETTING_KIND;
    let body = KeyspaceSetting {
        keyspace_id: ks.id.clone(),
    };
    let record = to_record(kind, setting, &body, now, now, 1)?;
    let audit = AuditEvent::new(
        now,
        &actor,
        &format!("{kind}.create"),
        kind,
        setting,
        None,
        Some(record.body.clone()),
    );
    match records.create_record(&record, audit).await {
        Ok(()) => Ok(ks.id),
        Err(e) => {
            // Ours is unused: another node won the race, or the write failed.
            let _ = keys.delete_keyspace(&actor, &ks.id).await;
            match e {
                Error::Conflict { .. } => setting_keyspace(records, setting)
                    .await?
                    .ok_or_else(|| Error::internal(format!("the setting '{setting}' vanished"))),
                e => Err(e),
            }
        }
    }
}

/// The milliseconds of `d`, saturating.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A value derived from the store, shared by readers without I/O, reloaded
/// when it is older than the TTL or after a change made through this node.
///
/// Reloads run one at a time, each reading the store after taking the reload
/// lock, so the snapshot installed last was read last: a slow reload never
/// puts an older state back over a newer one.
#[derive(Debug)]
pub(crate) struct SnapshotCell<T> {
    ttl_ms: i64,
    current: RwLock<Option<(Timestamp, Arc<T>)>>,
    reload: tokio::sync::Mutex<()>,
}

impl<T> SnapshotCell<T> {
    /// An empty cell (the first read loads) whose snapshots live `ttl`.
    pub(crate) fn new(ttl: Duration) -> Self {
        SnapshotCell {
            ttl_ms: millis(ttl),
            current: RwLock::new(None),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    /// The snapshot, if one is loaded and not older than the TTL at `now`
    /// (a clock that stepped back before the load counts as stale).
    pub(crate) fn fresh(&self, now: Timestamp) -> Option<Arc<T>> {
        let guard = self.current.read().unwrap_or_else(PoisonError::into_inner);
        match &*guard {
            Some((at, v)) if *at <= now && now.as_millis() - at.as_millis() < self.ttl_ms => {
                Some(Arc::clone(v))
            }
            _ => None,
        }
    }

    fn install(&self, value: Option<(Timestamp, Arc<T>)>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = value;
    }

    /// The fresh snapshot, or a new one from `load` (one reload at a time;
    /// callers that waited for a reload use its result).
    pub(crate) async fn get<F, Fut>(&self, now: Timestamp, load: F) -> Result<Arc<T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        if let Some(v) = self.fresh(now) {
            return Ok(v);
        }
        let _reloading = self.reload.lock().await;
        if let Some(v) = self.fresh(now) {
            return Ok(v);
        }
        let v = Arc::new(load().await?);
        self.install(Some((now, Arc::clone(&v))));
        Ok(v)
    }

    /// Reloads now with `load` (after a change through this node). If the
    /// load fails, the snapshot is dropped so the next read loads again.
    pub(crate) async fn refresh<F, Fut>(&self, now: Timestamp, load: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let _reloading = self.reload.lock().await;
        match load().await {
            Ok(v) => self.install(Some((now, Arc::new(v)))),
            Err(_) => self.install(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn snapshot_is_reused_until_the_ttl() {
        let cell = SnapshotCell::new(Duration::from_secs(30));
        let t0 = Timestamp::from_millis(1_000_000);
        assert!(cell.fresh(t0).is_none());
        let v = cell.get(t0, || async { Ok(1) }).await.unwrap();
        assert_eq!(*v, 1);
        let v = cell.get(t0.add_millis(29_999), || async { Ok(2) }).await;
        assert_eq!(*v.unwrap(), 1);
        let v = cell.get(t0.add_millis(30_000), || async { Ok(3) }).await;
        assert_eq!(*v.unwrap(), 3);
        // A clock that stepped back reloads.
        let v = cell.get(t0, || async { Ok(4) }).await;
        assert_eq!(*v.unwrap(), 4);
        // A failed refresh drops the snapshot; a failed load keeps nothing.
        cell.refresh(t0, || async { Err(Error::internal("x")) })
            .await;
        assert!(cell.fresh(t0).is_none());
        assert!(
            cell.get(t0, || async { Err(Error::internal("x")) })
                .await
                .is_err()
        );
        cell.refresh(t0, || async { Ok(5) }).await;
        assert_eq!(*cell.fresh(t0).unwrap(), 5);
    }
}
