//! Scenarios of issuing, changing and verifying keys through
//! [`KeyService`](crate::key::KeyService) on the storage under test.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::{Fixture, Probe};
use crate::clock::{Clock, ManualClock};
use crate::counter::{Refill, RefillInterval};
use crate::error::Error;
use crate::id::KeyId;
use crate::key::{
    KeyRateLimit, KeyService, KeyUpdate, NewKey, PermissionQuery, RateLimitKind, RemainingOp,
    Verification, VerifyCode, VerifyOptions,
};
use crate::keyspace::NewKeyspace;
use crate::patch::Patch;
use crate::storage::{KeyQuery, Storage};

/// Verifies with no keyspace and no permission query.
pub async fn verify(keys: &KeyService, key: &str) -> Verification {
    keys.verify(key, &VerifyOptions::default()).await.unwrap()
}

fn meta(v: Value) -> Option<Map<String, Value>> {
    v.as_object().cloned()
}

fn ratelimit(
    kind: RateLimitKind,
    limit: u64,
    refill_rate: u64,
    refill_interval: u64,
) -> Option<KeyRateLimit> {
    Some(KeyRateLimit {
        kind,
        limit,
        refill_rate,
        refill_interval,
    })
}

/// A valid verification returns every detail of the key.
pub async fn verify_valid_returns_details(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    let expires = f.clock.now().add_millis(3_600_000);
    let k = f
        .keys
        .create(
            &f.admin,
            NewKey {
                name: Some("Customer X".into()),
                owner_id: Some("user_123".into()),
                meta: meta(json!({"stripeCustomerId": "cus_1234", "n": [1, 2]})),
                expires: Some(expires),
                remaining: Some(10),
                ratelimit: ratelimit(RateLimitKind::Consistent, 5, 5, 60_000),
                roles: vec!["admin".into(), "finance".into()],
                permissions: vec!["dns.record.read".into()],
                environment: Some("test".into()),
                ..NewKey::in_keyspace(f.ks.id.clone())
            },
        )
        .await
        .unwrap();
    let v = f
        .keys
        .verify(
            &k.key,
            &VerifyOptions {
                keyspace_id: Some(&f.ks.id),
                permissions: None,
            },
        )
        .await
        .unwrap();
    assert!(v.valid(), "{:?}", v.code());
    assert_eq!(v.code(), VerifyCode::Valid);
    assert_eq!(v.key_id(), Some(&k.key_id));
    assert_eq!(v.keyspace_id(), Some(&f.ks.id));
    assert_eq!(v.name(), Some("Customer X"));
    assert_eq!(v.owner_id(), Some("user_123"));
    assert_eq!(v.meta().unwrap()["stripeCustomerId"], json!("cus_1234"));
    assert_eq!(v.expires(), Some(expires));
    assert_eq!(v.remaining(), Some(9));
    let rl = v.ratelimit().unwrap();
    assert_eq!((rl.limit, rl.remaining), (5, 4));
    assert!(rl.reset > f.clock.now());
    assert_eq!(v.enabled(), Some(true));
    assert_eq!(v.roles(), ["admin", "finance"]);
    assert_eq!(v.permissions(), ["dns.record.read"]);
    assert_eq!(v.environment(), Some("test"));
    let unlimited = f
        .keys
        .create(&f.admin, NewKey::in_keyspace(f.ks.id.clone()))
        .await
        .unwrap();
    let u = verify(&f.keys, &unlimited.key).await;
    assert!(u.valid());
    assert_eq!((u.remaining(), u.ratelimit()), (None, None));
}

/// Every verification code is reachable, and `NOT_FOUND` / `FORBIDDEN`
/// reveal nothing about the key.
pub async fn verify_reaches_every_code(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    let new = || NewKey::in_keyspace(f.ks.id.clone());
    let mut seen = Vec::new();

    let valid = f.keys.create(&f.admin, new()).await.unwrap();
    let v = verify(&f.keys, &valid.key).await;
    seen.push(v.code());

    let v = verify(&f.keys, "sk_5KJvsngHeMpm88rDWeWiMjXq").await;
    assert!(v.key_id().is_none());
    seen.push(v.code());

    let other = f
        .keys
        .create_keyspace(
            &f.admin,
            NewKeyspace {
                name: "other".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let v = f
        .keys
        .verify(
            &valid.key,
            &VerifyOptions {
                keyspace_id: Some(&other.id),
                permissions: None,
            },
        )
        .await
        .unwrap();
    assert!(v.key_id().is_none() && v.name().is_none());
    seen.push(v.code());

    let disabled = f
        .keys
        .create(
            &f.admin,
            NewKey {
                enabled: false,
                ..new()
            },
        )
        .await
        .unwrap();
    let v = verify(&f.keys, &disabled.key).await;
    assert_eq!(v.key_id(), Some(&disabled.key_id));
    seen.push(v.code());

    let expiring = f
        .keys
        .create(
            &f.admin,
            NewKey {
                expires: Some(f.clock.now().add_millis(1_000)),
                ..new()
            },
        )
        .await
        .unwrap();
    assert!(verify(&f.keys, &expiring.key).await.valid());
    f.clock.advance_millis(1_000);
    seen.push(verify(&f.keys, &expiring.key).await.code());

    let perms = f
        .keys
        .create(
            &f.admin,
            NewKey {
                permissions: vec!["read".into()],
                ..new()
            },
        )
        .await
        .unwrap();
    let q = PermissionQuery::from_json(&json!({"and": ["read", "write"]})).unwrap();
    let v = f
        .keys
        .verify(
            &perms.key,
            &VerifyOptions {
                keyspace_id: None,
                permissions: Some(&q),
            },
        )
        .await
        .unwrap();
    seen.push(v.code());
    let q_ok = PermissionQuery::from_json(&json!({"or": ["read", "write"]})).unwrap();
    let ok = f
        .keys
        .verify(
            &perms.key,
            &VerifyOptions {
                keyspace_id: None,
                permissions: Some(&q_ok),
            },
        )
        .await
        .unwrap();
    assert!(ok.valid());

    let limited = f
        .keys
        .create(
            &f.admin,
            NewKey {
                ratelimit: ratelimit(RateLimitKind::Consistent, 1, 1, 60_000),
                ..new()
            },
        )
        .await
        .unwrap();
    assert!(verify(&f.keys, &limited.key).await.valid());
    let v = verify(&f.keys, &limited.key).await;
    assert_eq!(v.ratelimit().unwrap().remaining, 0);
    seen.push(v.code());

    let spent = f
        .keys
        .create(
            &f.admin,
            NewKey {
                remaining: Some(0),
                ..new()
            },
        )
        .await
        .unwrap();
    let v = verify(&f.keys, &spent.key).await;
    assert_eq!(v.remaining(), Some(0));
    seen.push(v.code());

    seen.sort_by_key(|c| VerifyCode::ALL.iter().position(|x| x == c));
    assert_eq!(seen, VerifyCode::ALL);
}

/// Checks run in the documented order, and a refusal before the rate limit
/// spends neither rate limit nor remaining uses.
pub async fn verify_check_order_has_no_side_effects(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    let k = f
        .keys
        .create(
            &f.admin,
            NewKey {
                remaining: Some(1),
                ratelimit: ratelimit(RateLimitKind::Consistent, 1, 1, 60_000),
                permissions: vec!["read".into()],
                expires: Some(f.clock.now().add_millis(100_000)),
                ..NewKey::in_keyspace(f.ks.id.clone())
            },
        )
        .await
        .unwrap();
    let write = PermissionQuery::Permission("write".into());
    let opts = VerifyOptions {
        keyspace_id: None,
        permissions: Some(&write),
    };
    for _ in 0..3 {
        let v = f.keys.verify(&k.key, &opts).await.unwrap();
        assert_eq!(v.code(), VerifyCode::InsufficientPermissions);
    }
    // Neither the rate limit nor the balance was touched.
    let v = verify(&f.keys, &k.key).await;
    assert!(v.valid(), "{:?}", v.code());
    assert_eq!(v.remaining(), Some(0));
    // Rate limit is checked before usage: the exhausted key is RATE_LIMITED.
    assert_eq!(
        verify(&f.keys, &k.key).await.code(),
        VerifyCode::RateLimited
    );
    f.clock.advance_millis(60_000);
    let v = verify(&f.keys, &k.key).await;
    assert_eq!(v.code(), VerifyCode::UsageExceeded);
    assert_eq!(v.remaining(), Some(0));
    // Disabled wins over expired; keyspace mismatch wins over both.
    f.keys
        .set_enabled(&f.admin, &k.key_id, false)
        .await
        .unwrap();
    f.clock.advance_millis(60_000);
    assert_eq!(verify(&f.keys, &k.key).await.code(), VerifyCode::Disabled);
    f.keys.set_enabled(&f.admin, &k.key_id, true).await.unwrap();
    assert_eq!(verify(&f.keys, &k.key).await.code(), VerifyCode::Expired);
    let other = crate::id::KeyspaceId::parse("ks_other").unwrap();
    let v = f
        .keys
        .verify(
            &k.key,
            &VerifyOptions {
                keyspace_id: Some(&other),
                permissions: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(v.code(), VerifyCode::Forbidden);
}

async fn race(keys: &KeyService, key: &str, tasks: usize, each: usize) -> Vec<VerifyCode> {
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let keys = keys.clone();
        let key = key.to_owned();
        handles.push(tokio::spawn(async move {
            let mut codes = Vec::with_capacity(each);
            for _ in 0..each {
                codes.push(
                    keys.verify(&key, &VerifyOptions::default())
                        .await
                        .unwrap()
                        .code(),
                );
            }
            codes
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all
}

/// A key with remaining = R verified by 64 concurrent tasks: exactly R valid.
pub async fn verify_remaining_concurrently_exact(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    let r = 300;
    let k = f
        .keys
        .create(
            &f.admin,
            NewKey {
                remaining: Some(r),
                ..NewKey::in_keyspace(f.ks.id.clone())
            },
        )
        .await
        .unwrap();
    let codes = race(&f.keys, &k.key, 64, 10).await;
    let valid = codes.iter().filter(|c| **c == VerifyCode::Valid).count();
    let exceeded = codes
        .iter()
        .filter(|c| **c == VerifyCode::UsageExceeded)
        .count();
    assert_eq!(valid, usize::try_from(r).unwrap());
    assert_eq!(valid + exceeded, 640);
    assert_eq!(f.keys.get(&k.key_id).await.unwrap().remaining, Some(0));
}

/// A consistent rate limit under 64 concurrent tasks within one window:
/// exactly `limit` valid, on two nodes sharing the store.
pub async fn verify_consistent_ratelimit_concurrently_exact(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    let k = f
        .keys
        .create(
            &f.admin,
            NewKey {
                ratelimit: ratelimit(RateLimitKind::Consistent, 100, 100, 3_600_000),
                ..NewKey::in_keyspace(f.ks.id.clone())
            },
        )
        .await
        .unwrap();
    let node_b = f.other_node(Duration::from_secs(30));
    let (a, b) = tokio::join!(race(&f.keys, &k.key, 32, 5), race(&node_b, &k.key, 32, 5));
    let codes: Vec<VerifyCode> = a.into_iter().chain(b).collect();
    let valid = codes.iter().filter(|c| **c == VerifyCode::Valid).count();
    let limited = codes
        .iter()
        .filter(|c| **c == VerifyCode::RateLimited)
        .count();
    assert_eq!((valid, limited), (100, 220));
}

/// A fast rate limit counts per node and refills in steps.
pub async fn verify_fast_ratelimit_refills(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    let k = f
        .keys
        .create(
            &f.admin,
            NewKey {
                ratelimit: ratelimit(RateLimitKind::Fast, 2, 1, 1_000),
                ..NewKey::in_keyspace(f.ks.id.clone())
            },
        )
        .await
        .unwrap();
    let codes: Vec<VerifyCode> = [
        verify(&f.keys, &k.key).await.code(),
        verify(&f.keys, &k.key).await.code(),
        verify(&f.keys, &k.key).await.code(),
    ]
    .into();
    assert_eq!(
        codes,
        [
            VerifyCode::Valid,
            VerifyCode::Valid,
            VerifyCode::RateLimited
        ]
    );
    let limited = verify(&f.keys, &k.key).await;
    let rl = limited.ratelimit().unwrap();
    assert_eq!((rl.limit, rl.remaining), (2, 0));
    f.clock.set(rl.reset);
    assert!(
        verify(&f.keys, &k.key).await.valid(),
        "one request back per interval"
    );
    assert_eq!(
        verify(&f.keys, &k.key).await.code(),
        VerifyCode::RateLimited
    );
    // Another node starts from the store: before this node syncs it counts
    // on its own (the documented bound); after, it sees this node's count.
    let node_b = f.other_node(Duration::from_secs(30));
    f.keys.maintain().await.unwrap();
    assert_eq!(
        verify(&node_b, &k.key).await.code(),
        VerifyCode::RateLimited,
        "B sees A's synced count"
    );
    f.clock.advance_millis(10_000);
    let v = verify(&f.keys, &k.key).await;
    assert!(v.valid());
    assert_eq!(
        v.ratelimit().unwrap().remaining,
        1,
        "refills cap at the limit"
    );
}

/// Daily refill: the balance resets to the amount at the first use after a
/// UTC midnight, not before.
pub async fn verify_daily_refill_at_utc_midnight(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    // The default manual clock stands at a UTC midnight; move to 13:00.
    f.clock.advance_millis(13 * 3_600_000);
    let k = f
        .keys
        .create(
            &f.admin,
            NewKey {
                remaining: Some(2),
                refill: Some(Refill {
                    interval: RefillInterval::Daily,
                    amount: 5,
                    day: None,
                }),
                ..NewKey::in_keyspace(f.ks.id.clone())
            },
        )
        .await
        .unwrap();
    assert!(verify(&f.keys, &k.key).await.valid());
    assert!(verify(&f.keys, &k.key).await.valid());
    assert_eq!(
        verify(&f.keys, &k.key).await.code(),
        VerifyCode::UsageExceeded
    );
    f.clock.advance_millis(11 * 3_600_000 - 1); // 23:59:59.999
    assert_eq!(
        verify(&f.keys, &k.key).await.code(),
        VerifyCode::UsageExceeded
    );
    assert_eq!(f.keys.get(&k.key_id).await.unwrap().remaining, Some(0));
    f.clock.advance_millis(1); // midnight
    assert_eq!(
        f.keys.get(&k.key_id).await.unwrap().remaining,
        Some(5),
        "reads show the refill"
    );
    let v = verify(&f.keys, &k.key).await;
    assert!(v.valid());
    assert_eq!(v.remaining(), Some(4));
    // Several days idle: one reset to the amount, not an accumulation.
    f.clock.advance_millis(3 * 86_400_000);
    assert_eq!(verify(&f.keys, &k.key).await.remaining(), Some(4));
    let view = f.keys.get(&k.key_id).await.unwrap();
    assert_eq!(view.last_refill_at, Some(f.clock.now()));
}

/// Monthly refill on a day: the 15th, and the 31st clamped to short months.
pub async fn verify_monthly_refill_on_refill_day(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await; // 2025-01-01T00:00Z
    let day = |d| Refill {
        interval: RefillInterval::Monthly,
        amount: 3,
        day: Some(d),
    };
    let create = |d| {
        f.keys.create(
            &f.admin,
            NewKey {
                remaining: Some(0),
                refill: Some(day(d)),
                ..NewKey::in_keyspace(f.ks.id.clone())
            },
        )
    };
    let k15 = create(15).await.unwrap();
    let k31 = create(31).await.unwrap();
    let start = f.clock.now();
    f.clock.set(start.add_millis(14 * 86_400_000 - 1)); // Jan 14 23:59:59.999
    assert_eq!(
        verify(&f.keys, &k15.key).await.code(),
        VerifyCode::UsageExceeded
    );
    f.clock.set(start.add_millis(14 * 86_400_000)); // Jan 15
    assert_eq!(verify(&f.keys, &k15.key).await.remaining(), Some(2));
    f.clock.set(start.add_millis(30 * 86_400_000)); // Jan 31
    assert_eq!(verify(&f.keys, &k31.key).await.remaining(), Some(2));
    f.clock.set(start.add_millis(58 * 86_400_000 - 1)); // Feb 27 23:59:59.999
    assert_eq!(verify(&f.keys, &k31.key).await.remaining(), Some(1));
    f.clock.set(start.add_millis(58 * 86_400_000)); // Feb 28: the 31st clamps
    assert_eq!(verify(&f.keys, &k31.key).await.remaining(), Some(2));
}

/// The verification cache holds at most its capacity, however many keys
/// the store has: every key still verifies (a miss reads the store), a key
/// verified often stays cached, and a change through the service reaches
/// an evicted key too.
pub async fn verify_cache_is_bounded(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    let node = f.bounded_node(8);
    let mut created = Vec::new();
    for _ in 0..40 {
        created.push(
            node.create(&f.admin, NewKey::in_keyspace(f.ks.id.clone()))
                .await
                .unwrap(),
        );
        assert!(node.cached_keys() <= 8, "{}", node.cached_keys());
    }
    let hot = &created[0];
    for round in 0..3 {
        for k in &created {
            assert!(verify(&node, &k.key).await.valid(), "round {round}");
            assert!(verify(&node, &hot.key).await.valid());
            assert!(node.cached_keys() <= 8, "{}", node.cached_keys());
        }
    }
    // Evicted or not, a disable through this node applies at once.
    let cold = &created[20];
    node.set_enabled(&f.admin, &cold.key_id, false)
        .await
        .unwrap();
    for k in created.iter().skip(30) {
        assert!(verify(&node, &k.key).await.valid());
    }
    assert_eq!(verify(&node, &cold.key).await.code(), VerifyCode::Disabled);
    assert!(node.cached_keys() <= 8);
}

/// Disable, update, delete and reroll apply on the very next verification on
/// the node that made them.
pub async fn verify_sees_own_changes_at_once(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    let k = f
        .keys
        .create(&f.admin, NewKey::in_keyspace(f.ks.id.clone()))
        .await
        .unwrap();
    assert!(verify(&f.keys, &k.key).await.valid());
    f.keys
        .set_enabled(&f.admin, &k.key_id, false)
        .await
        .unwrap();
    assert_eq!(verify(&f.keys, &k.key).await.code(), VerifyCode::Disabled);
    f.keys.set_enabled(&f.admin, &k.key_id, true).await.unwrap();
    assert!(verify(&f.keys, &k.key).await.valid());
    f.keys
        .update(
            &f.admin,
            &k.key_id,
            KeyUpdate {
                expires: Patch::Set(f.clock.now()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(verify(&f.keys, &k.key).await.code(), VerifyCode::Expired);
    f.keys
        .update(
            &f.admin,
            &k.key_id,
            KeyUpdate {
                expires: Patch::Clear,
                remaining: Patch::Set(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        verify(&f.keys, &k.key).await.code(),
        VerifyCode::UsageExceeded
    );
    f.keys
        .update(
            &f.admin,
            &k.key_id,
            KeyUpdate {
                remaining: Patch::Clear,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(verify(&f.keys, &k.key).await.valid());
    let rolled = f.keys.reroll(&f.admin, &k.key_id).await.unwrap();
    assert_eq!(verify(&f.keys, &k.key).await.code(), VerifyCode::NotFound);
    assert!(verify(&f.keys, &rolled.key).await.valid());
    f.keys.delete(&f.admin, &k.key_id).await.unwrap();
    assert_eq!(
        verify(&f.keys, &rolled.key).await.code(),
        VerifyCode::NotFound
    );
    f.keys.restore(&f.admin, &k.key_id).await.unwrap();
    assert!(verify(&f.keys, &rolled.key).await.valid());
}

/// A change made on one node reaches another within its cache TTL, not later.
pub async fn verify_other_node_within_ttl(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    let ttl = Duration::from_secs(5);
    let node_b = f.other_node(ttl);
    let k = f
        .keys
        .create(&f.admin, NewKey::in_keyspace(f.ks.id.clone()))
        .await
        .unwrap();
    assert!(
        verify(&node_b, &k.key).await.valid(),
        "node B loads it from the store"
    );
    f.keys
        .set_enabled(&f.admin, &k.key_id, false)
        .await
        .unwrap();
    // Node B still holds the record it loaded; the TTL bounds how long.
    assert!(verify(&node_b, &k.key).await.valid());
    f.clock.advance_millis(4_999);
    assert!(verify(&node_b, &k.key).await.valid());
    f.clock.advance_millis(1);
    assert_eq!(verify(&node_b, &k.key).await.code(), VerifyCode::Disabled);
    let rolled = f.keys.reroll(&f.admin, &k.key_id).await.unwrap();
    f.keys.set_enabled(&f.admin, &k.key_id, true).await.unwrap();
    f.clock.advance_millis(5_000);
    assert_eq!(verify(&node_b, &k.key).await.code(), VerifyCode::NotFound);
    assert!(verify(&node_b, &rolled.key).await.valid());
    f.keys.delete(&f.admin, &k.key_id).await.unwrap();
    f.clock.advance_millis(5_000);
    assert_eq!(
        verify(&node_b, &rolled.key).await.code(),
        VerifyCode::NotFound
    );
}

/// Empty, oversized, non-UTF-8 and wrongly shaped keys are `NOT_FOUND`
/// without touching the store; a well-shaped unknown key only reads.
pub async fn verify_malformed_keys_touch_no_store(storage: Storage, clock: ManualClock) {
    let (probe, storage) = Probe::wrap(storage);
    let f = Fixture::new(storage, clock).await;
    let k = f
        .keys
        .create(&f.admin, NewKey::in_keyspace(f.ks.id.clone()))
        .await
        .unwrap();
    let before = probe.counts();
    let long = format!("sk_{}", "a".repeat(600));
    let mut bad: Vec<Vec<u8>> = vec![
        Vec::new(),
        long.into_bytes(),
        vec![0xff, 0xfe, 0xfd],
        b"sk_\xc3\x28abcdefghijklmnopqrstu".to_vec(),
        b"not a key".to_vec(),
        b"sk_0OIl0OIl0OIl0OIl0OIl".to_vec(),
        b"waytoolongprefix_5KJvsngHeMpm88rDWeWiMj".to_vec(),
        format!("{}\n", k.key).into_bytes(),
        format!("{} ", k.key).into_bytes(),
    ];
    bad.push(k.key.as_bytes()[..k.key.len() - 8].to_vec()); // truncated below 16 chars
    for key in &bad {
        let v = f.keys.verify(key, &VerifyOptions::default()).await.unwrap();
        assert_eq!(
            v.code(),
            VerifyCode::NotFound,
            "{:?}",
            String::from_utf8_lossy(key)
        );
    }
    assert_eq!(
        probe.counts(),
        before,
        "malformed keys never reach the store"
    );
    let unknown = verify(&f.keys, "sk_5KJvsngHeMpm88rDWeWiMjXq").await;
    assert_eq!(unknown.code(), VerifyCode::NotFound);
    let after = probe.counts();
    assert_eq!(
        after.writes, before.writes,
        "no store write for an unknown key"
    );
    assert_eq!(after.reads, before.reads + 1);
    // A known key is served from memory.
    assert!(verify(&f.keys, &k.key).await.valid());
    assert_eq!(probe.counts(), after);
}

/// Reroll: new secret, same id, settings and balance; the old one is gone.
pub async fn reroll_keeps_id_and_balance(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    let k = f
        .keys
        .create(
            &f.admin,
            NewKey {
                remaining: Some(5),
                name: Some("n".into()),
                byte_length: Some(24),
                ..NewKey::in_keyspace(f.ks.id.clone())
            },
        )
        .await
        .unwrap();
    assert!(verify(&f.keys, &k.key).await.valid());
    let rolled = f.keys.reroll(&f.admin, &k.key_id).await.unwrap();
    assert_eq!(rolled.key_id, k.key_id);
    assert_ne!(rolled.key, k.key);
    assert!(rolled.key.starts_with("sk_"));
    assert!(
        rolled.key.len() >= "sk_".len() + 30,
        "24 bytes of base58, as issued"
    );
    let v = verify(&f.keys, &rolled.key).await;
    assert_eq!((v.remaining(), v.name()), (Some(3), Some("n")));
    assert_eq!(verify(&f.keys, &k.key).await.code(), VerifyCode::NotFound);
    let view = f.keys.get(&k.key_id).await.unwrap();
    assert_eq!(view.start, rolled.start);
    let gone = f
        .keys
        .reroll(&f.admin, &KeyId::parse("key_missing").unwrap())
        .await;
    assert!(matches!(gone, Err(Error::NotFound { .. })));
}

/// Updates: absent keeps, null clears, a value sets; remaining null makes
/// the key unlimited (dropping refill); values reach the verification.
pub async fn update_patch_semantics(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    let k = f
        .keys
        .create(
            &f.admin,
            NewKey {
                name: Some("a".into()),
                owner_id: Some("o".into()),
                meta: meta(json!({"x": 1})),
                environment: Some("live".into()),
                remaining: Some(3),
                refill: Some(Refill {
                    interval: RefillInterval::Daily,
                    amount: 3,
                    day: None,
                }),
                ratelimit: ratelimit(RateLimitKind::Fast, 5, 5, 1_000),
                ..NewKey::in_keyspace(f.ks.id.clone())
            },
        )
        .await
        .unwrap();
    let up = f
        .keys
        .update(
            &f.admin,
            &k.key_id,
            KeyUpdate {
                owner_id: Patch::Clear,
                meta: Patch::Set(meta(json!({"y": 2})).unwrap()),
                roles: Some(vec!["r".into()]),
                permissions: Some(vec!["p".into(), "p".into()]),
                ratelimit: Patch::Clear,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(up.name.as_deref(), Some("a"), "absent keeps");
    assert_eq!(up.owner_id, None, "null clears");
    assert_eq!(up.meta, meta(json!({"y": 2})), "a value replaces");
    assert_eq!(up.environment.as_deref(), Some("live"));
    assert_eq!(
        (up.roles.as_slice(), up.permissions.as_slice()),
        (&["r".to_string()][..], &["p".to_string()][..])
    );
    assert_eq!((up.ratelimit, up.remaining), (None, Some(3)));
    let v = verify(&f.keys, &k.key).await;
    assert_eq!(
        (v.owner_id(), v.ratelimit(), v.remaining()),
        (None, None, Some(2))
    );
    let up = f
        .keys
        .update(
            &f.admin,
            &k.key_id,
            KeyUpdate {
                remaining: Patch::Set(10),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((up.remaining, up.refill.is_some()), (Some(10), true));
    let up = f
        .keys
        .update(
            &f.admin,
            &k.key_id,
            KeyUpdate {
                remaining: Patch::Clear,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((up.remaining, up.refill), (None, None));
    assert_eq!(verify(&f.keys, &k.key).await.remaining(), None);
    let up = f
        .keys
        .update(
            &f.admin,
            &k.key_id,
            KeyUpdate {
                remaining: Patch::Set(1),
                enabled: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((up.remaining, up.enabled), (Some(1), false));
    let json_update: KeyUpdate =
        serde_json::from_value(json!({"name": null, "enabled": true})).unwrap();
    let up = f
        .keys
        .update(&f.admin, &k.key_id, json_update)
        .await
        .unwrap();
    assert_eq!((up.name, up.enabled, up.remaining), (None, true, Some(1)));
    let gone = f
        .keys
        .update(
            &f.admin,
            &KeyId::parse("key_x").unwrap(),
            KeyUpdate::default(),
        )
        .await;
    assert!(matches!(gone, Err(Error::NotFound { .. })));
}

/// `updateRemaining`: set, increment, decrement, set null; the rules for
/// unlimited keys and missing values.
pub async fn update_remaining_rules(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    let k = f
        .keys
        .create(&f.admin, NewKey::in_keyspace(f.ks.id.clone()))
        .await
        .unwrap();
    let id = &k.key_id;
    let up = |op, v| f.keys.update_remaining(&f.admin, id, op, v);
    let field = |e: Error| match e {
        Error::InvalidInput { field, .. } => field.into_owned(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        field(up(RemainingOp::Increment, Some(1)).await.unwrap_err()),
        "op"
    );
    assert_eq!(
        field(up(RemainingOp::Increment, None).await.unwrap_err()),
        "value"
    );
    assert_eq!(
        field(up(RemainingOp::Set, Some(-1)).await.unwrap_err()),
        "value"
    );
    assert_eq!(up(RemainingOp::Set, None).await.unwrap(), None);
    assert_eq!(up(RemainingOp::Set, Some(2)).await.unwrap(), Some(2));
    assert_eq!(up(RemainingOp::Increment, Some(3)).await.unwrap(), Some(5));
    assert_eq!(up(RemainingOp::Decrement, Some(1)).await.unwrap(), Some(4));
    assert_eq!(
        up(RemainingOp::Decrement, Some(100)).await.unwrap(),
        Some(0)
    );
    assert_eq!(
        verify(&f.keys, &k.key).await.code(),
        VerifyCode::UsageExceeded
    );
    assert_eq!(up(RemainingOp::Increment, Some(1)).await.unwrap(), Some(1));
    assert!(verify(&f.keys, &k.key).await.valid());
    assert_eq!(up(RemainingOp::Set, None).await.unwrap(), None);
    assert!(verify(&f.keys, &k.key).await.valid());
    assert_eq!(f.keys.get(id).await.unwrap().remaining, None);
    let missing = f
        .keys
        .update_remaining(
            &f.admin,
            &KeyId::parse("key_x").unwrap(),
            RemainingOp::Set,
            Some(1),
        )
        .await;
    assert!(matches!(missing, Err(Error::NotFound { .. })));
}

/// Restoring a key whose unique name was taken meanwhile conflicts and
/// leaves it deleted.
pub async fn restore_conflicts_with_taken_unique_name(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    let named = || NewKey {
        name: Some("n".into()),
        owner_id: Some("o".into()),
        unique_name: true,
        ..NewKey::in_keyspace(f.ks.id.clone())
    };
    let first = f.keys.create(&f.admin, named()).await.unwrap();
    f.keys.delete(&f.admin, &first.key_id).await.unwrap();
    assert!(matches!(
        f.keys.delete(&f.admin, &first.key_id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        f.keys.get(&first.key_id).await,
        Err(Error::NotFound { .. })
    ));
    let second = f.keys.create(&f.admin, named()).await.unwrap();
    let restore = f.keys.restore(&f.admin, &first.key_id).await;
    assert!(
        matches!(restore, Err(Error::Conflict { .. })),
        "{restore:?}"
    );
    assert_eq!(
        verify(&f.keys, &first.key).await.code(),
        VerifyCode::NotFound
    );
    f.keys.delete(&f.admin, &second.key_id).await.unwrap();
    let restored = f.keys.restore(&f.admin, &first.key_id).await.unwrap();
    assert_eq!(restored.deleted_at, None);
    assert!(verify(&f.keys, &first.key).await.valid());
    // Restoring a live key changes nothing.
    let again = f.keys.restore(&f.admin, &first.key_id).await.unwrap();
    assert_eq!(again.last_used_at, Some(f.clock.now()));
    assert_eq!(
        crate::key::Key {
            last_used_at: None,
            ..again
        },
        restored
    );
}

fn invalid_field(r: crate::error::Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(Error::InvalidInput { field, .. }) => field.into_owned(),
        other => panic!("expected invalid input, got {other:?}"),
    }
}

/// Invalid create input is refused naming the field, and stores nothing.
pub async fn create_invalid_input_stores_nothing(storage: Storage, clock: ManualClock) {
    let (probe, storage) = Probe::wrap(storage);
    let f = Fixture::new(storage.clone(), clock).await;
    let base = || NewKey::in_keyspace(f.ks.id.clone());
    let rl = |limit, rate, interval| NewKey {
        ratelimit: ratelimit(RateLimitKind::Consistent, limit, rate, interval),
        ..base()
    };
    let refill = |amount| {
        Some(Refill {
            interval: RefillInterval::Daily,
            amount,
            day: None,
        })
    };
    let cases: Vec<(NewKey, &str)> = vec![
        (
            NewKey {
                prefix: Some("toolongpx".into()),
                ..base()
            },
            "prefix",
        ),
        (
            NewKey {
                prefix: Some("b@d".into()),
                ..base()
            },
            "prefix",
        ),
        (
            NewKey {
                byte_length: Some(15),
                ..base()
            },
            "byteLength",
        ),
        (
            NewKey {
                byte_length: Some(256),
                ..base()
            },
            "byteLength",
        ),
        (
            NewKey {
                remaining: Some(-1),
                ..base()
            },
            "remaining",
        ),
        (
            NewKey {
                refill: refill(5),
                ..base()
            },
            "remaining",
        ),
        (
            NewKey {
                remaining: Some(1),
                refill: refill(0),
                ..base()
            },
            "refill.amount",
        ),
        (
            NewKey {
                remaining: Some(1),
                refill: Some(Refill {
                    interval: RefillInterval::Monthly,
                    amount: 1,
                    day: Some(32),
                }),
                ..base()
            },
            "refill.refillDay",
        ),
        (rl(0, 1, 1), "ratelimit.limit"),
        (rl(1, 0, 1), "ratelimit.refillRate"),
        (rl(1, 1, 0), "ratelimit.refillInterval"),
        (
            NewKey {
                expires: Some(f.clock.now()),
                ..base()
            },
            "expires",
        ),
        (
            NewKey {
                name: Some(String::new()),
                ..base()
            },
            "name",
        ),
        (
            NewKey {
                owner_id: Some("x".repeat(300)),
                ..base()
            },
            "ownerId",
        ),
        (
            NewKey {
                environment: Some("e".repeat(257)),
                ..base()
            },
            "environment",
        ),
        (
            NewKey {
                roles: vec![String::new()],
                ..base()
            },
            "roles",
        ),
        (
            NewKey {
                permissions: vec!["p".repeat(513)],
                ..base()
            },
            "permissions",
        ),
        (
            NewKey {
                meta: meta(json!({"big": "x".repeat(70_000)})),
                ..base()
            },
            "meta",
        ),
    ];
    let before = probe.counts();
    for (new, field) in cases {
        assert_eq!(invalid_field(f.keys.create(&f.admin, new).await), field);
    }
    assert_eq!(
        probe.counts().writes,
        before.writes,
        "invalid input writes nothing"
    );
    let missing_ks = f
        .keys
        .create(
            &f.admin,
            NewKey::in_keyspace(crate::id::KeyspaceId::parse("ks_none").unwrap()),
        )
        .await;
    assert!(matches!(missing_ks, Err(Error::NotFound { .. })));
    // Wire-level input that cannot even be parsed is refused the same way.
    assert_eq!(
        invalid_field("weekly".parse::<RefillInterval>()),
        "refill.interval"
    );
    let bad_json = serde_json::from_value::<NewKey>(json!({
        "keyspaceId": f.ks.id, "remaining": 1, "refill": {"interval": "weekly", "amount": 1}
    }));
    assert!(bad_json.is_err());
    let no_amount = serde_json::from_value::<NewKey>(json!({
        "keyspaceId": f.ks.id, "remaining": 1, "refill": {"interval": "daily"}
    }));
    assert!(no_amount.is_err());
    assert_eq!(probe.counts().writes, before.writes);
    let listed = f.keys.list(&KeyQuery::default()).await.unwrap();
    assert_eq!(listed.total, 0);
}

/// Invalid update input is refused naming the field and changes nothing.
pub async fn update_invalid_input_changes_nothing(storage: Storage, clock: ManualClock) {
    let (probe, storage) = Probe::wrap(storage);
    let f = Fixture::new(storage, clock).await;
    let k = f
        .keys
        .create(
            &f.admin,
            NewKey {
                remaining: Some(4),
                name: Some("n".into()),
                ..NewKey::in_keyspace(f.ks.id.clone())
            },
        )
        .await
        .unwrap();
    let before_view = f.keys.get(&k.key_id).await.unwrap();
    let before = probe.counts();
    let cases: Vec<(KeyUpdate, &str)> = vec![
        (
            KeyUpdate {
                remaining: Patch::Set(-5),
                ..Default::default()
            },
            "remaining",
        ),
        (
            KeyUpdate {
                name: Patch::Set(String::new()),
                ..Default::default()
            },
            "name",
        ),
        (
            KeyUpdate {
                ratelimit: Patch::Set(KeyRateLimit {
                    kind: RateLimitKind::Fast,
                    limit: 0,
                    refill_rate: 1,
                    refill_interval: 1,
                }),
                ..Default::default()
            },
            "ratelimit.limit",
        ),
        (
            KeyUpdate {
                refill: Patch::Set(Refill {
                    interval: RefillInterval::Daily,
                    amount: 0,
                    day: None,
                }),
                ..Default::default()
            },
            "refill.amount",
        ),
        (
            KeyUpdate {
                remaining: Patch::Clear,
                refill: Patch::Set(Refill {
                    interval: RefillInterval::Daily,
                    amount: 1,
                    day: None,
                }),
                ..Default::default()
            },
            "remaining",
        ),
        (
            KeyUpdate {
                roles: Some(vec!["\u{7}".into()]),
                ..Default::default()
            },
            "roles",
        ),
    ];
    for (u, field) in cases {
        assert_eq!(
            invalid_field(f.keys.update(&f.admin, &k.key_id, u).await),
            field
        );
    }
    assert_eq!(probe.counts().writes, before.writes);
    assert_eq!(f.keys.get(&k.key_id).await.unwrap(), before_view);
    // An unlimited key that would become limited by an otherwise invalid update.
    let unlimited = f
        .keys
        .create(&f.admin, NewKey::in_keyspace(f.ks.id.clone()))
        .await
        .unwrap();
    let writes = probe.counts().writes;
    let bad = KeyUpdate {
        remaining: Patch::Set(5),
        name: Patch::Set(String::new()),
        ..Default::default()
    };
    assert_eq!(
        invalid_field(f.keys.update(&f.admin, &unlimited.key_id, bad).await),
        "name"
    );
    assert_eq!(probe.counts().writes, writes);
    assert_eq!(f.keys.get(&unlimited.key_id).await.unwrap().remaining, None);
}

/// Last use is recorded on valid verifications, visible at once through
/// `get`, and written to the store by `flush_last_used`.
pub async fn last_used_is_written_behind(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage.clone(), clock).await;
    let k = f
        .keys
        .create(&f.admin, NewKey::in_keyspace(f.ks.id.clone()))
        .await
        .unwrap();
    assert_eq!(f.keys.get(&k.key_id).await.unwrap().last_used_at, None);
    f.clock.advance_millis(5_000);
    let used_at = f.clock.now();
    assert!(verify(&f.keys, &k.key).await.valid());
    assert_eq!(
        f.keys.get(&k.key_id).await.unwrap().last_used_at,
        Some(used_at)
    );
    assert_eq!(
        storage
            .keys
            .get_key(&k.key_id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        None
    );
    assert_eq!(f.keys.flush_last_used().await.unwrap(), 1);
    assert_eq!(f.keys.flush_last_used().await.unwrap(), 0, "nothing new");
    assert_eq!(
        storage
            .keys
            .get_key(&k.key_id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(used_at)
    );
    // A refused verification is not a use.
    f.keys
        .set_enabled(&f.admin, &k.key_id, false)
        .await
        .unwrap();
    f.clock.advance_millis(5_000);
    assert_eq!(verify(&f.keys, &k.key).await.code(), VerifyCode::Disabled);
    f.keys.maintain().await.unwrap();
    assert_eq!(
        f.keys.get(&k.key_id).await.unwrap().last_used_at,
        Some(used_at)
    );
}

/// Deleting a keyspace soft-deletes its keys and removes it.
pub async fn keyspace_delete_removes_its_keys(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    let a = f
        .keys
        .create(&f.admin, NewKey::in_keyspace(f.ks.id.clone()))
        .await
        .unwrap();
    let b = f
        .keys
        .create(&f.admin, NewKey::in_keyspace(f.ks.id.clone()))
        .await
        .unwrap();
    f.keys.delete_keyspace(&f.admin, &f.ks.id).await.unwrap();
    assert!(matches!(
        f.keys.get_keyspace(&f.ks.id).await,
        Err(Error::NotFound { .. })
    ));
    for k in [&a, &b] {
        assert_eq!(verify(&f.keys, &k.key).await.code(), VerifyCode::NotFound);
    }
    let deleted = f
        .keys
        .list(&KeyQuery {
            keyspace_id: Some(f.ks.id.clone()),
            include_deleted: true,
            ..KeyQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(deleted.total, 2);
    assert!(deleted.items.iter().all(|k| k.deleted_at.is_some()));
    let again = f.keys.delete_keyspace(&f.admin, &f.ks.id).await;
    assert!(matches!(again, Err(Error::NotFound { .. })));
}

/// `scan_keys` pages like `list_keys` (same items and cursors, whatever it
/// answers as `total`), by keyspace, by owner, over every key, with and
/// without deleted keys.
pub async fn keys_scan_pages_like_list(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    let mut ids = Vec::new();
    for i in 0..23 {
        let k = f
            .keys
            .create(
                &f.admin,
                NewKey {
                    owner_id: Some(if i % 3 == 0 { "ann" } else { "bob" }.into()),
                    ..NewKey::in_keyspace(f.ks.id.clone())
                },
            )
            .await
            .unwrap();
        ids.push(k.key_id);
    }
    for id in ids.iter().step_by(4) {
        f.keys.delete(&f.admin, id).await.unwrap();
    }
    let queries = [
        KeyQuery {
            keyspace_id: Some(f.ks.id.clone()),
            ..KeyQuery::default()
        },
        KeyQuery {
            keyspace_id: Some(f.ks.id.clone()),
            include_deleted: true,
            ..KeyQuery::default()
        },
        KeyQuery {
            owner_id: Some("bob".into()),
            ..KeyQuery::default()
        },
        KeyQuery {
            owner_id: Some("ann".into()),
            keyspace_id: Some(f.ks.id.clone()),
            include_deleted: true,
            ..KeyQuery::default()
        },
        KeyQuery::default(),
    ];
    for mut q in queries {
        q.page.limit = 4;
        let mut seen = 0;
        loop {
            let listed = f.storage.keys.list_keys(&q).await.unwrap();
            let scanned = f.storage.keys.scan_keys(&q).await.unwrap();
            let id_list = |p: &crate::storage::Page<crate::key::KeyRecord>| {
                p.items.iter().map(|k| k.id.clone()).collect::<Vec<_>>()
            };
            assert_eq!(id_list(&listed), id_list(&scanned), "{q:?}");
            assert_eq!(listed.cursor, scanned.cursor, "{q:?}");
            seen += listed.items.len();
            match listed.cursor {
                Some(c) => q.page.cursor = Some(c),
                None => break,
            }
        }
        assert!(seen > 0, "{q:?}");
    }
}
