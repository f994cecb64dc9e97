//! The in-memory read path of verification: key records by hash.
//!
//! Writes made through this node's [`KeyService`](super::KeyService) go
//! through the cache (the new record replaces the old at once), so this node
//! sees its own changes on the very next verification. Changes made by other
//! nodes are seen when the entry is older than the TTL and is reloaded from
//! the store: that bounds their delay.
//!
//! Entries carry the record's version and are replaced only by an equal or
//! newer one, so a slow load that read the store before a change cannot put
//! the old record back. After a reroll the old hash keeps an entry holding the
//! new record; its hash no longer matches, so the old secret is `NOT_FOUND`.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use dashmap::DashMap;

use super::{KeyHash, KeyRecord};
use crate::clock::Timestamp;

/// A cached key.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) record: Arc<KeyRecord>,
    /// When it was (re)loaded from the store or written through (ms).
    loaded_at: AtomicI64,
    pub(crate) remaining_counter: String,
    pub(crate) ratelimit_counter: String,
    /// Last successful verification seen on this node (ms), 0 if none.
    pub(crate) last_used: AtomicI64,
    /// Whether `last_used` waits to be written to the store.
    pub(crate) dirty: AtomicBool,
}

impl Entry {
    pub(crate) fn new(record: Arc<KeyRecord>, loaded_at: Timestamp) -> Self {
        Entry {
            remaining_counter: record.remaining_counter(),
            ratelimit_counter: record.ratelimit_counter(),
            last_used: AtomicI64::new(record.last_used_at.map_or(0, Timestamp::as_millis)),
            dirty: AtomicBool::new(false),
            record,
            loaded_at: AtomicI64::new(loaded_at.as_millis()),
        }
    }

    fn age_ms(&self, now: Timestamp) -> i64 {
        now.as_millis()
            .saturating_sub(self.loaded_at.load(Ordering::Relaxed))
    }

    pub(crate) fn last_used(&self) -> Option<Timestamp> {
        match self.last_used.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Timestamp::from_millis(ms)),
        }
    }
}

/// Hashes a [`KeyHash`] by passing its (already uniform) first 8 bytes through.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by KeyHash; a fallback that still mixes every byte.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Key records by hash.
#[derive(Debug)]
pub(crate) struct KeyCache {
    map: DashMap<KeyHash, Arc<Entry>, BuildHasherDefault<PassThrough>>,
    ttl_ms: i64,
}

impl KeyCache {
    pub(crate) fn new(ttl_ms: i64) -> Self {
        KeyCache {
            map: DashMap::with_hasher(BuildHasherDefault::default()),
            ttl_ms,
        }
    }

    /// The entry for `hash` if it was loaded less than the TTL ago.
    #[inline]
    pub(crate) fn fresh(&self, hash: &KeyHash, now: Timestamp) -> Option<Arc<Entry>> {
        let e = self.map.get(hash)?;
        if e.age_ms(now) < self.ttl_ms {
            Some(Arc::clone(&e))
        } else {
            None
        }
    }

    /// Any entry for `hash`, fresh or not.
    pub(crate) fn any(&self, hash: &KeyHash) -> Option<Arc<Entry>> {
        self.map.get(hash).map(|e| Arc::clone(&e))
    }

    /// Puts `record` under `hash` unless a newer version is there; returns
    /// the entry that is in the cache afterwards.
    pub(crate) fn upsert(
        &self,
        hash: KeyHash,
        record: Arc<KeyRecord>,
        now: Timestamp,
    ) -> Arc<Entry> {
        let mut slot = self
            .map
            .entry(hash)
            .or_insert_with(|| Arc::new(Entry::new(Arc::clone(&record), now)));
        if slot.record.version < record.version {
            let fresh = Entry::new(record, now);
            // Keep the freshest last use seen here.
            let seen = slot.last_used.load(Ordering::Relaxed);
            fresh.last_used.fetch_max(seen, Ordering::Relaxed);
            *slot = Arc::new(fresh);
        } else if slot.record.version == record.version {
            // Reloaded unchanged: it is fresh again.
            slot.loaded_at.fetch_max(now.as_millis(), Ordering::Relaxed);
        }
        Arc::clone(&slot)
    }

    /// Drops the entry for `hash` if it still holds at most `version`.
    pub(crate) fn remove_if_not_newer(&self, hash: &KeyHash, version: u64) {
        self.map.remove_if(hash, |_, e| e.record.version <= version);
    }

    /// Drops every entry older than the TTL; returns how many.
    pub(crate) fn purge_stale(&self, now: Timestamp) -> usize {
        let before = self.map.len();
        self.map.retain(|_, e| e.age_ms(now) < self.ttl_ms);
        before.saturating_sub(self.map.len())
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
