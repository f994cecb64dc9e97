//! Shared plumbing of the catalog services (tiers, models, settings): typed
//! values in [`RecordStore`](crate::storage::RecordStore) records, and the
//! in-memory snapshot their hot paths read.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::storage::{MAX_PAGE_SIZE, PageRequest, Record, RecordStore};

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
    let body = serde_json::to_value(value)
        .map_err(|e| Error::internal(format!("cannot serialize {kind} '{id}': {e}")))?;
    Ok(Record {
        kind: kind.to_owned(),
        id: id.to_owned(),
        body,
        created_at,
        updated_at,
        version,
    })
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
