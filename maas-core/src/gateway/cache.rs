//! The response cache: answers of non-streaming requests, per model, keyed
//! by the request's normalized body, kept for the model's TTL and bounded in
//! entries (the oldest go first).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use crate::clock::Timestamp;
use crate::model::CacheSettings;

/// The largest answer kept, in bytes; larger ones are served but not cached.
pub const MAX_CACHED_BODY: usize = 4 << 20;

/// What identifies a request to the response cache: a keyed-free blake3 hash
/// of its body in canonical form (object keys sorted, no insignificant
/// whitespace), without the fields that do not change the answer's content
/// (`stream`, `stream_options`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The key of request body `body` (a JSON object).
    pub fn of(body: &serde_json::Value) -> Self {
        let mut h = blake3::Hasher::new();
        canonical(body, &mut h, true);
        CacheKey(*h.finalize().as_bytes())
    }

    /// The key of request body `body`, given as its object.
    pub fn of_object(body: &serde_json::Map<String, serde_json::Value>) -> Self {
        let mut h = blake3::Hasher::new();
        object(body, &mut h, true);
        CacheKey(*h.finalize().as_bytes())
    }
}

fn object(map: &serde_json::Map<String, serde_json::Value>, h: &mut blake3::Hasher, top: bool) {
    let mut keys: Vec<&String> = map
        .keys()
        .filter(|k| !(top && matches!(k.as_str(), "stream" | "stream_options")))
        .collect();
    keys.sort();
    h.update(b"{");
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            h.update(b",");
        }
        canonical(&serde_json::Value::String(k.clone()), h, false);
        h.update(b":");
        if let Some(x) = map.get(k) {
            canonical(x, h, false);
        }
    }
    h.update(b"}");
}

/// Feeds `v` to `h` in canonical form; `top` drops the streaming fields of
/// the top-level object.
fn canonical(v: &serde_json::Value, h: &mut blake3::Hasher, top: bool) {
    use serde_json::Value;
    match v {
        Value::Object(map) => object(map, h, top),
        Value::Array(items) => {
            h.update(b"[");
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    h.update(b",");
                }
                canonical(x, h, false);
            }
            h.update(b"]");
        }
        // Scalars serialize canonically on their own.
        scalar => {
            h.update(scalar.to_string().as_bytes());
        }
    }
}

#[derive(Debug, Default)]
struct ModelCache {
    entries: HashMap<CacheKey, (Arc<[u8]>, Timestamp)>,
    /// Insertion order, for eviction; an item whose entry was replaced since
    /// is skipped.
    order: VecDeque<(CacheKey, Timestamp)>,
}

/// Cached answers of every model. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct ResponseCache {
    models: Arc<Mutex<HashMap<String, ModelCache>>>,
}

impl ResponseCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ModelCache>> {
        self.models.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The answer cached for `key` on `model`, if the model caches and the
    /// answer is younger than its TTL. A model whose cache was turned off
    /// loses its entries.
    pub fn get(
        &self,
        model: &str,
        settings: &CacheSettings,
        key: &CacheKey,
        now: Timestamp,
    ) -> Option<Arc<[u8]>> {
        let mut models = self.lock();
        if !settings.enabled {
            models.remove(model);
            return None;
        }
        let m = models.get_mut(model)?;
        let (body, at) = m.entries.get(key)?;
        let ttl_ms = i64::try_from(settings.ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        if now.as_millis().saturating_sub(at.as_millis()) < ttl_ms {
            Some(body.clone())
        } else {
            m.entries.remove(key);
            None
        }
    }

    /// Keeps `body` as the answer for `key` on `model` (if the model caches
    /// and the body is at most [`MAX_CACHED_BODY`]), evicting the oldest
    /// answers beyond the model's `max_entries`.
    pub fn put(
        &self,
        model: &str,
        settings: &CacheSettings,
        key: CacheKey,
        body: Arc<[u8]>,
        now: Timestamp,
    ) {
        if !settings.enabled || body.len() > MAX_CACHED_BODY {
            return;
        }
        let mut models = self.lock();
        let m = models.entry(model.to_owned()).or_default();
        m.entries.insert(key, (body, now));
        m.order.push_back((key, now));
        let max = usize::try_from(settings.max_entries).unwrap_or(usize::MAX);
        while m.entries.len() > max {
            let Some((k, at)) = m.order.pop_front() else {
                break;
            };
            if m.entries.get(&k).is_some_and(|(_, t)| *t == at) {
                m.entries.remove(&k);
            }
        }
        // Stale order items (replaced entries) are bounded too.
        if m.order.len() > max.saturating_mul(2).max(16) {
            let live = &m.entries;
            m.order
                .retain(|(k, at)| live.get(k).is_some_and(|(_, t)| t == at));
        }
    }

    /// How many answers are kept for `model`.
    pub fn len(&self, model: &str) -> usize {
        self.lock().get(model).map_or(0, |m| m.entries.len())
    }

    /// Drops every answer of `model`.
    pub fn clear(&self, model: &str) {
        self.lock().remove(model);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(ttl: u64, max: u64) -> CacheSettings {
        CacheSettings {
            enabled: true,
            ttl_seconds: ttl,
            max_entries: max,
        }
    }

    fn key(s: &str) -> CacheKey {
        CacheKey::of(&serde_json::json!({ "prompt": s }))
    }

    #[test]
    fn keys_ignore_order_whitespace_and_streaming_fields() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
                .unwrap_or_default();
        let b: serde_json::Value = serde_json::from_str(
            r#"{ "messages" : [ {"content":"hi", "role":"user"} ], "stream": false, "model":"m" }"#,
        )
        .unwrap_or_default();
        let c: serde_json::Value =
            serde_json::from_str(r#"{"model":"m","messages":[{"role":"user","content":"ho"}]}"#)
                .unwrap_or_default();
        assert_eq!(CacheKey::of(&a), CacheKey::of(&b));
        assert_ne!(CacheKey::of(&a), CacheKey::of(&c));
        // A nested "stream" is content, not the streaming flag.
        let d = serde_json::json!({"model":"m","x":{"stream":true}});
        let e = serde_json::json!({"model":"m","x":{}});
        assert_ne!(CacheKey::of(&d), CacheKey::of(&e));
    }

    #[test]
    fn ttl_bound_and_disable() {
        let c = ResponseCache::new();
        let s = on(10, 2);
        let t0 = Timestamp::from_millis(1_000_000);
        c.put("m", &s, key("a"), Arc::from(&b"A"[..]), t0);
        assert_eq!(
            c.get("m", &s, &key("a"), t0.add_millis(9_999)).as_deref(),
            Some(&b"A"[..])
        );
        assert!(c.get("m", &s, &key("a"), t0.add_millis(10_000)).is_none());
        assert!(c.get("other", &s, &key("a"), t0).is_none());

        // Bounded: the oldest goes first.
        for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
            c.put(
                "m",
                &s,
                key(k),
                Arc::from(k.as_bytes()),
                t0.add_millis(i as i64),
            );
        }
        assert_eq!(c.len("m"), 2);
        assert!(c.get("m", &s, &key("a"), t0).is_none());
        assert!(c.get("m", &s, &key("c"), t0).is_some());

        // Many replacements of one key keep the order queue bounded.
        for i in 0..1000 {
            c.put("m", &s, key("c"), Arc::from(&b"C"[..]), t0.add_millis(i));
        }
        assert!(c.lock().get("m").is_some_and(|m| m.order.len() <= 32));

        // Turning the cache off drops the entries.
        let off = CacheSettings {
            enabled: false,
            ..s
        };
        assert!(c.get("m", &off, &key("c"), t0).is_none());
        assert_eq!(c.len("m"), 0);
        c.put("m", &off, key("c"), Arc::from(&b"C"[..]), t0);
        assert_eq!(c.len("m"), 0);
    }
}
