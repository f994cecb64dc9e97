//! The key verifier: arbitrary bytes as a key against a populated store
//! (two keyspaces, 100 keys with every kind of limit; some disabled,
//! expired, deleted or rerolled), and real keys mutated by the input.
//!
//! Checks: `verify` returns `Ok` and never panics; anything but a live key's
//! exact secret is `NOT_FOUND`; only a live key's secret can be `VALID`.

#![no_main]

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use maas_core::counter::{Refill, RefillInterval};
use maas_core::key::{KeyRateLimit, NewKey, PermissionQuery, RateLimitKind, VerifyOptions};
use maas_core::keyspace::NewKeyspace;
use maas_core::{Actor, Clock, KeyHasher, KeyService, KeyspaceId, Timestamp, VerifyCode};
use maas_fuzz::{Input, T0, clock, rt};
use maas_store_memory::MemoryStore;
use serde_json::json;

struct Fixture {
    keys: KeyService,
    keyspaces: Vec<KeyspaceId>,
    /// Secrets of live keys.
    live: Vec<String>,
    live_set: HashSet<Vec<u8>>,
    /// Secrets that once were keys (deleted, rerolled away).
    dead: Vec<String>,
    queries: Vec<PermissionQuery>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| rt().block_on(build()))
}

async fn build() -> Fixture {
    let clock = clock();
    let c: Arc<dyn Clock> = Arc::new(clock.clone());
    let storage = MemoryStore::new().storage();
    let keys = KeyService::new_with_clock(
        storage,
        KeyHasher::from_secret(b"fuzz-key-verify-hasher-secret-01"),
        c,
    );
    let admin = Actor::system();
    let mut keyspaces = Vec::new();
    for (name, prefix, len) in [("prefixed", Some("sk"), Some(16)), ("bare", None, None)] {
        let ks = keys
            .create_keyspace(
                &admin,
                NewKeyspace {
                    name: name.into(),
                    prefix: prefix.map(Into::into),
                    default_byte_length: len,
                },
            )
            .await
            .expect("a keyspace");
        keyspaces.push(ks.id);
    }
    let mut live = Vec::new();
    let mut dead = Vec::new();
    let prefixes = [None, Some("fz"), Some("a-b_C"), Some("12345678")];
    let lengths = [None, Some(16), Some(32), Some(64), Some(255)];
    for i in 0..100usize {
        let mut new = NewKey::in_keyspace(keyspaces[i % 2].clone());
        new.prefix = prefixes[i % prefixes.len()].map(Into::into);
        new.byte_length = lengths[i % lengths.len()];
        new.name = Some(format!("key-{i}"));
        new.owner_id = (i % 3 == 0).then(|| format!("user_{}", i % 7));
        if i % 4 == 1 {
            new.remaining = Some((i % 5) as i64);
        }
        if i % 8 == 5 {
            new.remaining = Some(2);
            new.refill = Some(Refill {
                interval: if i % 16 == 5 {
                    RefillInterval::Daily
                } else {
                    RefillInterval::Monthly
                },
                amount: 3,
                day: (i % 16 != 5).then_some(31),
            });
        }
        if i % 5 == 2 {
            new.ratelimit = Some(KeyRateLimit {
                kind: if i % 10 == 2 {
                    RateLimitKind::Fast
                } else {
                    RateLimitKind::Consistent
                },
                limit: 2,
                refill_rate: 1,
                refill_interval: 60_000,
            });
        }
        if i % 6 == 3 {
            new.roles = vec!["admin".into()];
            new.permissions = vec!["dns.record.read".into(), "dns.record.update".into()];
        }
        if i % 11 == 4 {
            new.enabled = false;
        }
        if i % 13 == 6 {
            // Expires before the clock is moved on below.
            new.expires = Some(Timestamp::from_millis(T0 + 1_000));
        }
        if i % 9 == 7 {
            new.meta = json!({"n": i, "s": "x"}).as_object().cloned();
            new.environment = Some("test".into());
        }
        let created = keys.create(&admin, new).await.expect("a key");
        match i % 17 {
            8 => {
                keys.delete(&admin, &created.key_id).await.expect("delete");
                dead.push(created.key);
            }
            9 => {
                let rerolled = keys.reroll(&admin, &created.key_id).await.expect("reroll");
                dead.push(created.key);
                live.push(rerolled.key);
            }
            _ => live.push(created.key),
        }
    }
    clock.set(Timestamp::from_millis(T0 + 2_000));
    let queries = [
        json!("dns.record.read"),
        json!({"and": ["dns.record.read", "dns.record.update"]}),
        json!({"or": ["nope", {"and": ["dns.record.read"]}]}),
    ]
    .iter()
    .map(|q| PermissionQuery::from_json(q).expect("a query"))
    .collect();
    let live_set = live.iter().map(|k| k.as_bytes().to_vec()).collect();
    Fixture {
        keys,
        keyspaces,
        live,
        live_set,
        dead,
        queries,
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut input = Input::new(data);
    let mode = input.byte();
    let opts = input.byte();
    let candidate: Vec<u8> = match mode % 5 {
        // The bytes as they are (the mode and option bytes included).
        0 => data.to_vec(),
        // A real key (live or dead), its suffix from `at` replaced.
        1 => {
            let pool = if opts & 0x80 == 0 { &f.live } else { &f.dead };
            let k = pool[usize::from(input.byte()) % pool.len()].as_bytes();
            let at = usize::from(input.byte()) % (k.len() + 1);
            let mut v = k[..at].to_vec();
            v.extend_from_slice(input.rest());
            v
        }
        // A real key with bytes overwritten at (position, value) pairs.
        2 => {
            let k = &f.live[usize::from(input.byte()) % f.live.len()];
            let mut v = k.as_bytes().to_vec();
            while let [pos, val] = input.take(2) {
                let i = usize::from(*pos) % v.len();
                v[i] = *val;
            }
            v
        }
        // A real key's prefix and separator with an arbitrary random part.
        3 => {
            let k = &f.live[usize::from(input.byte()) % f.live.len()];
            let head = k.rfind('_').map_or("", |i| &k[..=i]);
            let mut v = head.as_bytes().to_vec();
            v.extend_from_slice(input.rest());
            v
        }
        // A real key, exactly (reaches every code with the options).
        _ => {
            let pool = if opts & 0x80 == 0 { &f.live } else { &f.dead };
            pool[usize::from(input.byte()) % pool.len()]
                .as_bytes()
                .to_vec()
        }
    };
    let keyspace = match opts & 3 {
        0 | 3 => None,
        n => Some(&f.keyspaces[usize::from(n) - 1]),
    };
    let permissions = match (opts >> 2) & 3 {
        0 => None,
        n => Some(&f.queries[usize::from(n) - 1]),
    };
    let v = rt()
        .block_on(f.keys.verify(
            &candidate,
            &VerifyOptions {
                keyspace_id: keyspace,
                permissions,
            },
        ))
        .expect("verify is Ok on a memory store");
    let code = v.code();
    if !f.live_set.contains(&candidate) {
        assert_eq!(
            code,
            VerifyCode::NotFound,
            "not a live key but {code:?}: {:?}",
            String::from_utf8_lossy(&candidate)
        );
        assert!(v.key_id().is_none());
    } else {
        assert_ne!(code, VerifyCode::NotFound, "a live key not found");
    }
});
