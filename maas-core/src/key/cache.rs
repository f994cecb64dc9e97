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
//! Size: at most `capacity` keys (see
//! [`KeyServiceConfig::cache_capacity`](super::KeyServiceConfig::cache_capacity)),
//! whatever the store holds. A key loaded into a full cache evicts the
//! oldest loaded key not verified since it was last looked at (second-chance
//! FIFO: each hit sets a mark, an eviction clears it and moves the key to
//! the back once); an evicted key's last use not yet written waits in a
//! list of its own until the next write.
//!
//! Speed: with a million keys, each verification is a chain of cache misses.
//! A slot holds, inline in the map, everything the checks of an unlimited key
//! without a rate limit need (the record's hash, flags, expiry), so that path
//! touches the record itself only to share it with the result.

use std::collections::VecDeque;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

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
    /// Hit since eviction last looked at it (second chance).
    referenced: AtomicBool,
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
            referenced: AtomicBool::new(false),
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

/// Slots an insertion into a full cache looks at, at most, for one to evict.
const EVICTION_TRIES: usize = 16;

/// Key records by hash, and the last uses waiting to be written.
#[derive(Debug)]
pub(crate) struct KeyCache {
    map: DashMap<KeyHash, Slot, BuildHasherDefault<PassThrough>>,
    ttl_ms: i64,
    capacity: usize,
    /// Hashes in the order they were inserted (eviction candidates first).
    /// Taken before a map shard, never while one is held.
    order: Mutex<VecDeque<KeyHash>>,
    dirty: Mutex<Vec<KeyHash>>,
    /// Last uses of evicted keys, not yet written.
    orphans: Mutex<Vec<(KeyId, Timestamp)>>,
}

/// A last use waiting to be written: the hash of its cached key (`None` once
/// the key was evicted), the key, the time.
pub(crate) type Pending = (Option<KeyHash>, KeyId, Timestamp);

impl KeyCache {
    /// A cache of at most `capacity` keys (at least 1), each used for
    /// `ttl_ms` before it is loaded again.
    pub(crate) fn new(ttl_ms: i64, capacity: usize) -> Self {
        KeyCache {
            map: DashMap::with_hasher(BuildHasherDefault::default()),
            ttl_ms,
            capacity: capacity.max(1),
            order: Mutex::new(VecDeque::new()),
            dirty: Mutex::new(Vec::new()),
            orphans: Mutex::new(Vec::new()),
        }
    }

    /// The hit for `hash` if it was loaded less than the TTL ago.
    #[inline]
    pub(crate) fn fresh(&self, hash: &KeyHash, now: Timestamp) -> Option<Hit> {
        let slot = self.map.get(hash)?;
        if !slot.referenced.load(Ordering::Relaxed) {
            slot.referenced.store(true, Ordering::Relaxed);
        }
        (slot.age_ms(now) < self.ttl_ms).then(|| slot.hit())
    }

    /// Makes room for one more key: evicts the first key in insertion order
    /// not hit since it was last looked at (the others go to the back, their
    /// mark cleared), or after [`EVICTION_TRIES`] the first one anyway.
    fn evict_one(&self) {
        let mut order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        let mut tries = 0;
        while let Some(h) = order.pop_front() {
            let Some(slot) = self.map.get(&h) else {
                continue; // already gone
            };
            tries += 1;
            if tries < EVICTION_TRIES && slot.referenced.swap(false, Ordering::Relaxed) {
                drop(slot);
                order.push_back(h);
                continue;
            }
            drop(slot);
            if let Some((_, gone)) = self.map.remove(&h)
                && gone.dirty.load(Ordering::Relaxed)
            {
                let ms = gone.last_used.load(Ordering::Relaxed);
                self.orphans
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((gone.cached.record.id.clone(), Timestamp::from_millis(ms)));
            }
            return;
        }
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
        if self.map.len() >= self.capacity && !self.map.contains_key(&hash) {
            self.evict_one();
        }
        // Lock order: a map shard is never held while `order` is taken
        // (eviction and purging hold `order` and then take shards).
        let (hit, inserted) = match self.map.entry(hash) {
            Entry::Vacant(v) => (v.insert(Slot::new(&hash, record, now)).hit(), true),
            Entry::Occupied(o) => {
                let mut slot = o.into_ref();
                if slot.version < version {
                    let fresh = Slot::new(&hash, record, now);
                    // Keep the freshest last use seen here, and its place in
                    // the dirty list.
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
                (slot.hit(), false)
            }
        };
        if inserted {
            self.order
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_back(hash);
        }
        hit
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

    /// Takes the last uses waiting to be written.
    pub(crate) fn take_dirty(&self) -> Vec<Pending> {
        let hashes =
            std::mem::take(&mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner));
        let orphans =
            std::mem::take(&mut *self.orphans.lock().unwrap_or_else(PoisonError::into_inner));
        hashes
            .into_iter()
            .filter_map(|h| {
                let slot = self.map.get(&h)?;
                slot.dirty.store(false, Ordering::Release);
                let ms = slot.last_used.load(Ordering::Relaxed);
                (ms != 0).then(|| {
                    (
                        Some(h),
                        slot.cached.record.id.clone(),
                        Timestamp::from_millis(ms),
                    )
                })
            })
            .chain(orphans.into_iter().map(|(id, at)| (None, id, at)))
            .collect()
    }

    /// Puts back last uses that could not be written.
    pub(crate) fn requeue(&self, pending: Vec<Pending>) {
        let mut dirty = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
        let mut orphans = self.orphans.lock().unwrap_or_else(PoisonError::into_inner);
        for (h, id, at) in pending {
            match h.and_then(|h| self.map.get(&h).map(|slot| (h, slot))) {
                Some((h, slot)) => {
                    if !slot.dirty.swap(true, Ordering::AcqRel) {
                        dirty.push(h);
                    }
                }
                None => orphans.push((id, at)),
            }
        }
    }

    /// Drops every slot older than the TTL; returns how many.
    pub(crate) fn purge_stale(&self, now: Timestamp) -> usize {
        let before = self.map.len();
        self.map
            .retain(|_, s| s.age_ms(now) < self.ttl_ms || s.dirty.load(Ordering::Relaxed));
        let removed = before.saturating_sub(self.map.len());
        if removed > 0 {
            // Forget the order of what is gone (it would only be skipped).
            self.order
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|h| self.map.contains_key(h));
        }
        removed
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

    fn record(i: u8) -> (KeyHash, KeyRecord) {
        let r = crate::key::sample_record(i);
        (r.hash, r)
    }

    /// Insertions, evictions, hits, last uses and purges from several
    /// threads at once finish (a lock-order inversion between a map shard
    /// and the eviction order once hung the example server) and keep the
    /// bound.
    #[test]
    fn concurrent_inserts_evictions_and_purges_never_deadlock() {
        let cache = Arc::new(KeyCache::new(5, 16));
        let records: Arc<Vec<(KeyHash, KeyRecord)>> = Arc::new((0..=255).map(record).collect());
        let (done, finished) = std::sync::mpsc::channel();
        for t in 0..4u8 {
            let (cache, records, done) = (cache.clone(), records.clone(), done.clone());
            std::thread::spawn(move || {
                for i in 0..20_000usize {
                    let (h, r) = &records[(i * 7 + usize::from(t) * 31) % 256];
                    let now = Timestamp::from_millis(i as i64);
                    cache.upsert(*h, r.clone(), now);
                    cache.fresh(h, now);
                    cache.mark_used(h, Timestamp::from_millis(i as i64 * 1_000));
                    if i % 64 == 0 {
                        cache.purge_stale(now);
                        let pending = cache.take_dirty();
                        cache.requeue(pending);
                    }
                }
                let _ = done.send(());
            });
        }
        for _ in 0..4 {
            finished
                .recv_timeout(std::time::Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("the cache deadlocked"));
        }
        assert!(cache.len() <= 16 + 4, "{}", cache.len());
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity_and_keeps_what_is_hit() {
        let now = Timestamp::from_millis(1_000);
        let cache = KeyCache::new(30_000, 4);
        for i in 0..4 {
            let (h, r) = record(i);
            cache.upsert(h, r, now);
        }
        // Key 0 is hit: the next insertions pass it over.
        assert!(cache.fresh(&KeyHash::from_bytes([0; 32]), now).is_some());
        for i in 4..40 {
            let (h, r) = record(i);
            cache.upsert(h, r, now);
            assert!(cache.len() <= 4, "{} keys after {i}", cache.len());
            assert!(cache.fresh(&KeyHash::from_bytes([0; 32]), now).is_some());
        }
        // A key evicted with a last use to write still has it written.
        cache.mark_used(&KeyHash::from_bytes([39; 32]), now);
        for i in 40..60 {
            let (h, r) = record(i);
            cache.upsert(h, r, now);
            assert!(cache.len() <= 4);
        }
        let pending = cache.take_dirty();
        assert_eq!(pending.len(), 1);
        assert_eq!((pending[0].0, pending[0].1.as_str()), (None, "key_039"));
        cache.requeue(pending);
        assert_eq!(cache.take_dirty().len(), 1, "kept after a failed write");
        // Re-upserting a cached key neither evicts nor grows.
        let (h, r) = record(59);
        cache.upsert(h, r, now);
        assert_eq!(cache.len(), 4);
    }
}
