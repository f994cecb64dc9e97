//! Recording usage: [`UsageLedger::record`] of a typical request, beside a
//! floor measured in the same run (group `usage`):
//!
//! - `dashmap_update_warm`: `get_mut` of one existing key in a
//!   `DashMap<String, [u64; 10]>` (the key is the bucket's parts joined, as
//!   one string) and adding ten sums into it: the least a concurrent,
//!   in-memory aggregate can cost;
//! - `record_warm`: `ledger.record` of one request (tenant, key, model,
//!   input/output/cached tokens, cache miss, pricing) into its existing
//!   minute bucket: the checks of the record, its cost from the pricing, a
//!   borrowed lookup and the addition, no allocation;
//! - `dashmap_update_of_10k` and `record_of_10k_tenants`: the same, each
//!   iteration into a random one of 10,000 existing buckets (one per
//!   tenant), so the map no longer sits in the L1 cache;
//! - `record_verification_warm`: a verification record into its existing
//!   bucket;
//! - `verify_hot_1k` and `verify_hot_1k_with_usage`: `KeyService::verify`
//!   of a random key among 1,000 (memory backend, cached), without and with
//!   a ledger attached: what recording every verification's outcome adds to
//!   the verify hot path.
//!
//! Nothing is flushed while measuring (the flush interval is an hour), as in
//! production between two flushes: recording does no I/O.
//!
//! `cargo bench -- usage/`; `-- --test` runs each once.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group};
use dashmap::DashMap;
use maas::core::usage::{CacheOutcome, UsageConfig, UsageLedger, UsageRecord, VerificationRecord};
use maas::core::{
    Actor, KeyHasher, KeyService, KeyServiceConfig, NewKey, NewKeyspace, Pricing, SystemClock,
    Timestamp, VerifyCode, VerifyOptions,
};
use maas::memory::MemoryStore;

use crate::common;
use common::Pick;

const TENANTS: usize = 10_000;

fn typical(at: Timestamp, tenant: &str) -> UsageRecord {
    UsageRecord {
        key_id: Some("key_2dZ1zH5kQm7rN8vX4pLc".into()),
        input_tokens: 812,
        output_tokens: 256,
        cached_tokens: 128,
        cache: Some(CacheOutcome::Miss),
        pricing: Some(Pricing::usd(3.0, 15.0)),
        ..UsageRecord::new(at, tenant, "meta-llama/Llama-3.1-8B-Instruct")
    }
}

fn joined(r: &UsageRecord) -> String {
    let currency = r.pricing.as_ref().map_or("", |p| p.currency.as_str());
    [
        r.tenant.as_str(),
        r.key_id.as_deref().unwrap_or_default(),
        &r.model,
        currency,
    ]
    .join("\0")
}

fn add(into: &mut [u64; 10], r: &UsageRecord) {
    let cost = r.pricing.as_ref().map_or(0, |p| {
        (p.cost(r.input_tokens, r.output_tokens) * 1e9) as u64
    });
    let add = [
        1,
        0,
        0,
        r.input_tokens,
        r.output_tokens,
        r.cached_tokens,
        0,
        0,
        1,
        cost,
    ];
    for (a, b) in into.iter_mut().zip(add) {
        *a = a.saturating_add(b);
    }
}

fn bench_usage(c: &mut Criterion) {
    let storage = MemoryStore::new().storage();
    let ledger = UsageLedger::new_with_clock(
        &storage,
        UsageConfig {
            flush_interval: Duration::from_secs(3_600),
            max_pending: 0,
            ..UsageConfig::default()
        },
        Arc::new(SystemClock),
    );
    let at = Timestamp::from_millis(1_735_689_600_000);
    let records: Vec<UsageRecord> = (0..TENANTS)
        .map(|i| typical(at, &format!("tenant-{i:05}")))
        .collect();
    for r in &records {
        ledger.record(r).unwrap();
    }
    let floor: DashMap<String, [u64; 10]> =
        records.iter().map(|r| (joined(r), [0u64; 10])).collect();
    let joined_keys: Vec<String> = records.iter().map(joined).collect();
    let verification = VerificationRecord {
        at,
        keyspace_id: "ks_3xTqN1mB7vR2cL9pWz".into(),
        key_id: "key_2dZ1zH5kQm7rN8vX4pLc".into(),
        owner_id: Some("user-4242".into()),
        code: VerifyCode::Valid,
    };
    ledger.record_verification(&verification).unwrap();
    let pick = Pick::new();

    let mut group = c.benchmark_group("usage");

    let hot = &records[0];
    let hot_key = joined_keys[0].as_str();
    group.bench_function("dashmap_update_warm", |b| {
        b.iter(|| {
            let mut e = floor.get_mut(black_box(hot_key)).unwrap();
            add(&mut e, black_box(hot));
        })
    });
    group.bench_function("record_warm", |b| {
        b.iter(|| ledger.record(black_box(hot)).unwrap())
    });
    group.bench_function("dashmap_update_of_10k", |b| {
        b.iter(|| {
            let i = pick.below(TENANTS);
            let mut e = floor.get_mut(black_box(joined_keys[i].as_str())).unwrap();
            add(&mut e, black_box(&records[i]));
        })
    });
    group.bench_function("record_of_10k_tenants", |b| {
        b.iter(|| {
            ledger
                .record(black_box(&records[pick.below(TENANTS)]))
                .unwrap()
        })
    });
    group.bench_function("record_verification_warm", |b| {
        b.iter(|| {
            ledger
                .record_verification(black_box(&verification))
                .unwrap()
        })
    });

    // The verify hot path, without and with a ledger attached.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let hasher = KeyHasher::from_secret(b"bench");
    let service = || {
        KeyService::new_with_config(
            storage.clone(),
            hasher.clone(),
            KeyServiceConfig {
                cache_ttl: Duration::from_secs(3_600),
                // Every key in memory: these benches measure the cached path.
                cache_capacity: usize::MAX,
            },
            Arc::new(SystemClock),
        )
    };
    let (plain, with_usage) = (service(), service());
    with_usage.attach_usage(ledger.clone()).unwrap();
    let opts = VerifyOptions::default();
    let secrets: Vec<String> = rt.block_on(async {
        let admin = Actor::new("bench");
        let ks = plain
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
        let mut secrets = Vec::new();
        for i in 0..1_000 {
            let k = plain
                .create(
                    &admin,
                    NewKey {
                        owner_id: Some(format!("user-{i}")),
                        ..NewKey::in_keyspace(ks.id.clone())
                    },
                )
                .await
                .unwrap();
            secrets.push(k.key);
        }
        for s in &secrets {
            assert!(plain.verify(s, &opts).await.unwrap().valid());
            assert!(with_usage.verify(s, &opts).await.unwrap().valid());
        }
        secrets
    });
    for (name, keys) in [
        ("verify_hot_1k", &plain),
        ("verify_hot_1k_with_usage", &with_usage),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let v = keys
                    .verify(secrets[pick.below(1_000)].as_bytes(), &opts)
                    .await
                    .unwrap();
                assert!(v.valid());
                v
            })
        });
    }
    group.finish();
    // Every record landed in an existing bucket (10,000 usage buckets; the
    // verifications all fall in the minutes of the setup and the run).
    assert_eq!(ledger.status().pending_usage, TENANTS);
}

criterion_group!(benches, bench_usage);
