//! The in-memory read path of verification: key records by hash.
//!
//! Writes made through this node's [`KeyService`](super::KeyService) go
//! through the cache (the new record replaces the old at once), so this node
//! sees its own changes on the very next verification. Changes made by other
//! nodes are seen when the entry is older than the TTL and is reloaded from
//! the store: that bounds their delay.
//!
//! Slots carry the record's version and are replaced only by a newer one, so a
//! slow load that read the store before a change cannot put the old record
//! back. After a reroll the old hash keeps a slot holding the new record; its
//! hash no longer matches, so the old secret is `NOT_FOUND`.
//!
//! Speed: with a million keys, each verification is a chain of cache misses.
//! A slot holds, inline in the map, everything the checks of an unlimited key
//! without a rate limit need (the record's hash, flags, expiry), so that path
//! touches the record itself only to share it with the result.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use dashmap::DashMap;

use super::{KeyHash, KeyRecord};
use crate::clock::Timestamp;
use crate::id::KeyId;

/// A last use is written to the cache at most this often per key (ms).
const LAST_USED_RESOLUTION_MS: i64 = 1_000;

/// A cached record, shared with verifications, with its counter ids.
///
/// Small on purpose: sharing it touches its reference count, and a million
/// small, densely allocated counts stay in cache where a million record-sized
/// allocations would not. The record itself is read only for details.
#[derive(Debug)]
pub(crate) struct Cached {
    pub(crate) record: Box<KeyRecord>,
    pub(crate) remaining_counter: Box<str>,
    pub(crate) ratelimit_counter: Box<str>,
}

const DELETED: u8 = 1;
const ENABLED: u8 = 2;
const LIMITED: u8 = 4;
const RATELIMITED: u8 = 8;
/// The record's hash is not the hash it is filed under (a rerolled key's old hash).
const REPLACED: u8 = 16;

/// What a lookup returns: the facts the checks need, and the shared record.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub(crate) cached: Arc<Cached>,
    expires: i64,
    flags: u8,
}

impl Hit {
    /// Whether the hash this was found under is no longer the key's (after a
    /// reroll). The lookup itself compared hashes in constant time.
    pub(crate) fn replaced(&self) -> bool {
        self.flags & REPLACED != 0
    }

    pub(crate) fn deleted(&self) -> bool {
        self.flags & DELETED != 0
    }

    pub(crate) fn enabled(&self) -> bool {
        self.flags & ENABLED != 0
    }

    pub(crate) fn expired(&self, now: Timestamp) -> bool {
        self.expires <= now.as_millis()
    }

    pub(crate) fn limited(&self) -> bool {
        self.flags & LIMITED != 0
    }

    pub(crate) fn ratelimited(&self) -> bool {
        self.flags & RATELIMITED != 0
    }
}

/// A map slot: the hit's facts inline (48 bytes: with its 32-byte key, a
/// bucket spans two cache lines at most), plus last-use bookkeeping.
#[derive(Debug)]
struct Slot {
    cached: Arc<Cached>,
    expires: i64,
    flags: u8,
    version: u64,
    /// When it was (re)loaded from the store or written through (ms).
    loaded_at: AtomicI64,
    /// Last successful verification seen on this node (ms), 0 if none.
    last_used: AtomicI64,
    /// Whether `last_used` waits in the dirty list to be written to the store.
    dirty: AtomicBool,
}

impl Slot {
    fn new(filed_under: &KeyHash, record: KeyRecord, now: Timestamp) -> Self {
        let mut flags = 0;
        if record.hash != *filed_under {
            flags |= REPLACED;
        }
        if record.deleted_at.is_some() {
            flags |= DELETED;
        }
        if record.enabled {
            flags |= ENABLED;
        }
        if record.remaining_limited {
            flags |= LIMITED;
        }
        if record.ratelimit.is_some() {
            flags |= RATELIMITED;
        }
        Slot {
            version: record.version,
            loaded_at: AtomicI64::new(now.as_millis()),
            last_used: AtomicI64::new(record.last_used_at.map_or(0, Timestamp::as_millis)),
            dirty: AtomicBool::new(false),
            expires: record.expires.map_or(i64::MAX, Timestamp::as_millis),
            flags,
            cached: Arc::new(Cached {
                remaining_counter: record.remaining_counter().into(),
                ratelimit_counter: record.ratelimit_counter().into(),
                record: Box::new(record),
            }),
        }
    }

    fn hit(&self) -> Hit {
        Hit {
            cached: Arc::clone(&self.cached),
            expires: self.expires,
            flags: self.flags,
        }
    }

    fn age_ms(&self, now: Timestamp) -> i64 {
        now.as_millis()
            .saturating_sub(self.loaded_at.load(Ordering::Relaxed))
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

/// Key records by hash, and the last uses waiting to be written.
#[derive(Debug)]
pub(crate) struct KeyCache {
    map: DashMap<KeyHash, Slot, BuildHasherDefault<PassThrough>>,
    ttl_ms: i64,
    dirty: Mutex<Vec<KeyHash>>,
}

impl KeyCache {
    pub(crate) fn new(ttl_ms: i64) -> Self {
        KeyCache {
            map: DashMap::with_hasher(BuildHasherDefault::default()),
            ttl_ms,
            dirty: Mutex::new(Vec::new()),
        }
    }

    /// The hit for `hash` if it was loaded less than the TTL ago.
    #[inline]
    pub(crate) fn fresh(&self, hash: &KeyHash, now: Timestamp) -> Option<Hit> {
        let slot = self.map.get(hash)?;
        (slot.age_ms(now) < self.ttl_ms).then(|| slot.hit())
    }

    /// The last use seen on this node for `hash`, fresh or not.
    pub(crate) fn last_used(&self, hash: &KeyHash) -> Option<Timestamp> {
        match self.map.get(hash)?.last_used.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Timestamp::from_millis(ms)),
        }
    }

    /// Puts `record` under `hash` unless a newer version is there; returns
    /// the hit that is in the cache afterwards.
    pub(crate) fn upsert(&self, hash: KeyHash, record: KeyRecord, now: Timestamp) -> Hit {
        let version = record.version;
        let mut slot = self
            .map
            .entry(hash)
            .or_insert_with(|| Slot::new(&hash, record.clone(), now));
        if slot.version < version {
            let fresh = Slot::new(&hash, record, now);
            // Keep the freshest last use seen here, and its place in the dirty list.
            fresh
                .last_used
                .fetch_max(slot.last_used.load(Ordering::Relaxed), Ordering::Relaxed);
            fresh
                .dirty
                .store(slot.dirty.load(Ordering::Relaxed), Ordering::Relaxed);
            *slot = fresh;
        } else if slot.version == version {
            // Reloaded unchanged: it is fresh again.
            slot.loaded_at.fetch_max(now.as_millis(), Ordering::Relaxed);
        }
        slot.hit()
    }

    /// Drops the slot for `hash` if it still holds at most `version`.
    pub(crate) fn remove_if_not_newer(&self, hash: &KeyHash, version: u64) {
        self.map.remove_if(hash, |_, s| s.version <= version);
    }

    /// The version cached for `hash`, if any.
    pub(crate) fn version(&self, hash: &KeyHash) -> Option<u64> {
        self.map.get(hash).map(|s| s.version)
    }

    /// Records a successful verification at `now` (at most once per second
    /// per key, to keep the hot path free of shared writes).
    pub(crate) fn mark_used(&self, hash: &KeyHash, now: Timestamp) {
        let Some(slot) = self.map.get(hash) else {
            return;
        };
        let ms = now.as_millis();
        if ms - slot.last_used.load(Ordering::Relaxed) < LAST_USED_RESOLUTION_MS {
            return;
        }
        slot.last_used.fetch_max(ms, Ordering::Relaxed);
        if !slot.dirty.load(Ordering::Relaxed) && !slot.dirty.swap(true, Ordering::AcqRel) {
            drop(slot);
            self.dirty
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(*hash);
        }
    }

    /// Takes the last uses waiting to be written: (hash, key id, time).
    pub(crate) fn take_dirty(&self) -> Vec<(KeyHash, KeyId, Timestamp)> {
        let hashes =
            std::mem::take(&mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner));
        hashes
            .into_iter()
            .filter_map(|h| {
                let slot = self.map.get(&h)?;
                slot.dirty.store(false, Ordering::Release);
                let ms = slot.last_used.load(Ordering::Relaxed);
                (ms != 0).then(|| (h, slot.cached.record.id.clone(), Timestamp::from_millis(ms)))
            })
            .collect()
    }

    /// Puts back last uses that could not be written.
    pub(crate) fn requeue(&self, hashes: impl IntoIterator<Item = KeyHash>) {
        let mut dirty = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
        for h in hashes {
            if let Some(slot) = self.map.get(&h)
                && !slot.dirty.swap(true, Ordering::AcqRel)
            {
                dirty.push(h);
            }
        }
    }

    /// Drops every slot older than the TTL; returns how many.
    pub(crate) fn purge_stale(&self, now: Timestamp) -> usize {
        let before = self.map.len();
        self.map
            .retain(|_, s| s.age_ms(now) < self.ttl_ms || s.dirty.load(Ordering::Relaxed));
        before.saturating_sub(self.map.len())
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_spans_at_most_two_cache_lines() {
        assert!(std::mem::size_of::<(KeyHash, Slot)>() <= 80);
    }
}
