//! Key verification on the memory backend, beside two floors measured in the
//! same run (group `verify`):
//!
//! - `blake3_keyed_hash`: the keyed hash of a typical key (`sk_` + 22 base58
//!   characters), which every verification computes;
//! - `hashmap_lookup_1m`: a lookup of a random present key in a std
//!   `HashMap<[u8; 32], u64>` of as many entries as there are keys;
//! - `verify_random_of_1m`: [`KeyService::verify`] of a random key among all
//!   the keys (unlimited, no rate limit, `VerifyOptions::default()`);
//! - `verify_hot_1k`: the same, among the first 1,000 keys only.
//!
//! `cargo bench -- verify/`. `MAAS_BENCH_KEYS=<n>` issues `n` keys
//! instead of 1,000,000 (the names then say `n`): e.g.
//! `MAAS_BENCH_KEYS=2000 cargo bench -- verify/ --test` runs each
//! benchmark once, as a smoke test.
//!
//! The keys are issued once, before the group runs, and shared by both verify
//! benchmarks. The service's cache TTL is an hour, so that no entry warmed in
//! setup goes stale during the run: the figures are the in-memory path that
//! every verification between two reloads takes. A reload (once per key per
//! TTL, 30 s by default) is a store read and is not measured here.
//!
//! The async `verify` is driven by criterion's `to_async` on a current-thread
//! tokio runtime: one `block_on` per sample, the iterations polled inside it.
//! Calling `rt.block_on` in `iter` instead enters the runtime once per
//! iteration: on a 2-core dev machine that measured about 200 ns more per
//! verification (hot set: 367 ns against 169 ns), more than the verification
//! itself, so `to_async` it is.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::cell::LazyCell;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group};
use maas::core::{
    Actor, KeyHasher, KeyService, KeyServiceConfig, NewKey, NewKeyspace, SystemClock, VerifyOptions,
};
use maas::memory::MemoryStore;
use rand::Rng;
use tokio::runtime::Runtime;

use crate::common;
use common::{Pick, key_count, label};

/// A key service over a memory store holding `n` unlimited keys of one
/// keyspace (prefix `sk`), each verified once; their secrets.
fn fixture(rt: &Runtime, n: usize) -> (KeyService, Vec<String>) {
    let keys = KeyService::new_with_config(
        MemoryStore::new().storage(),
        KeyHasher::from_secret(b"bench"),
        KeyServiceConfig {
            cache_ttl: Duration::from_secs(3_600),
            // Every key in memory: these benches measure the cached path.
            cache_capacity: usize::MAX,
        },
        Arc::new(SystemClock),
    );
    let admin = Actor::new("bench");
    let secrets = rt.block_on(async {
        let ks = keys
            .create_keyspace(
                &admin,
                NewKeyspace {
                    name: "bench".into(),
                    prefix: Some("sk".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let mut secrets = Vec::with_capacity(n);
        for _ in 0..n {
            let k = keys
                .create(&admin, NewKey::in_keyspace(ks.id.clone()))
                .await
                .unwrap();
            secrets.push(k.key);
        }
        // `create` writes through the cache; verify once anyway, so that every
        // entry has been read on the verify path before measuring.
        let opts = VerifyOptions::default();
        for s in &secrets {
            assert!(keys.verify(s, &opts).await.unwrap().valid());
        }
        // As `maintain` would in production: write the last uses behind.
        keys.flush_last_used().await.unwrap();
        secrets
    });
    assert_eq!(keys.cached_keys(), n);
    (keys, secrets)
}

fn bench_verify(c: &mut Criterion) {
    let n = key_count();
    let hot = n.min(1_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // Issued on first use, so a filter that selects only the floors skips
    // the minute it takes to issue a million keys.
    let fx = LazyCell::new(|| fixture(&rt, n));
    let pick = Pick::new();

    let mut group = c.benchmark_group("verify");
    group
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));

    // Floor: the keyed hash of a generated key.
    let hash_key = [7u8; 32];
    // A key of the fixture's shape (prefix, separator, 16 random bytes in
    // base58: 22 characters), without issuing the fixture.
    let sample = format!("sk_{}", "3".repeat(22));
    group.bench_function("blake3_keyed_hash", |b| {
        b.iter(|| blake3::keyed_hash(black_box(&hash_key), black_box(sample.as_bytes())))
    });

    // Floor: a random present entry of a map as large as the key set.
    {
        let mut rng = rand::rng();
        let raw_keys: Vec<[u8; 32]> = (0..n)
            .map(|_| {
                let mut k = [0u8; 32];
                rng.fill_bytes(&mut k);
                k
            })
            .collect();
        let raw: HashMap<[u8; 32], u64> = raw_keys.iter().copied().zip(0..).collect();
        group.bench_function(format!("hashmap_lookup_{}", label(n)), |b| {
            b.iter(|| raw.get(black_box(&raw_keys[pick.below(n)])).copied())
        });
    }

    let opts = VerifyOptions::default();
    for (name, among) in [
        (format!("verify_random_of_{}", label(n)), n),
        (format!("verify_hot_{}", label(hot)), hot),
    ] {
        group.bench_function(name, |b| {
            let (keys, secrets) = &*fx;
            b.to_async(&rt).iter(|| async {
                let v = keys
                    .verify(secrets[pick.below(among)].as_bytes(), &opts)
                    .await
                    .unwrap();
                assert!(v.valid());
                v
            })
        });
    }
    group.finish();
    // Freeing a million keys and their audit trail takes seconds and measures
    // nothing: leave it to the process exit.
    std::mem::forget(fx);
}

criterion_group!(benches, bench_verify);
