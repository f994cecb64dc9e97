//! Scenarios of the usage store and the usage ledger on the storage under
//! test: bucket arithmetic, filters, concurrency, write-behind, costs at
//! recorded prices, verification outcomes from the key service, and the
//! proptest that totals equal the sum of recorded requests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::{Fixture, Probe, run_prop};
use crate::audit::Actor;
use crate::clock::{Clock, ManualClock, Timestamp};
use crate::key::{KeyRateLimit, NewKey, RateLimitKind, VerifyCode, VerifyOptions};
use crate::keyspace::NewKeyspace;
use crate::model::{ModelService, ModelUpdate, NewModel, Pricing};
use crate::patch::Patch;
use crate::storage::Storage;
use crate::usage::{
    CacheOutcome, DAY_MS, Granularity, GroupBy, HOUR_MS, MINUTE_MS, RequestOutcome, TimeRange,
    UsageBucket, UsageConfig, UsageFilter, UsageKey, UsageLedger, UsageRecord, UsageReport,
    UsageScope, UsageSums, VerificationBucket, VerificationFilter, VerificationKey,
    VerificationScope, VerificationSums,
};

fn ukey(minute: Timestamp, tenant: &str, key: &str, model: &str, currency: &str) -> UsageKey {
    UsageKey {
        minute,
        tenant: tenant.into(),
        key_id: key.into(),
        model: model.into(),
        currency: currency.into(),
    }
}

fn sums(requests: u64, input: u64, cost_nanos: u64) -> UsageSums {
    UsageSums {
        requests,
        errors: requests / 2,
        cancelled: 1,
        input_tokens: input,
        output_tokens: input * 2,
        cached_tokens: input / 10,
        estimated: 1,
        cache_hits: 2,
        cache_misses: 3,
        cost_nanos,
    }
}

fn ub(key: UsageKey, sums: UsageSums) -> UsageBucket {
    UsageBucket { key, sums }
}

fn minute(clock: &ManualClock, n: i64) -> Timestamp {
    let now = clock.now().as_millis();
    Timestamp::from_millis(now - now % MINUTE_MS + n * MINUTE_MS)
}

async fn all_usage(storage: &Storage) -> Vec<UsageBucket> {
    storage
        .usage
        .usage_buckets(&UsageFilter::range(
            Timestamp::EPOCH,
            Timestamp::from_millis(i64::MAX),
        ))
        .await
        .unwrap()
}

/// Adds merge into the stored bucket with the same key, field by field
/// (within one call too), saturating; other keys are other buckets; reads
/// come sorted by key.
pub async fn usage_adds_merge_into_buckets(storage: Storage, clock: ManualClock) {
    let m = minute(&clock, 0);
    let a = ukey(m, "acme", "key_1", "llama", "USD");
    storage
        .usage
        .add_usage(&[ub(a.clone(), sums(2, 10, 500))])
        .await
        .unwrap();
    storage
        .usage
        .add_usage(&[
            ub(a.clone(), sums(4, 100, 1_000)),
            ub(ukey(m, "acme", "key_1", "llama", "EUR"), sums(1, 1, 1)),
            ub(a.clone(), sums(2, 1_000, 2_000)),
            ub(ukey(m, "acme", "", "llama", ""), sums(1, 7, 0)),
            ub(ukey(m, "ac", "key_1", "llama", "USD"), sums(1, 1, 1)),
        ])
        .await
        .unwrap();
    storage.usage.add_usage(&[]).await.unwrap();
    let all = all_usage(&storage).await;
    let keys: Vec<&UsageKey> = all.iter().map(|b| &b.key).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "buckets come sorted by key");
    assert_eq!(all.len(), 4);
    let got = all.iter().find(|b| b.key == a).unwrap().sums;
    let mut want = sums(2, 10, 500);
    want.add(&sums(4, 100, 1_000));
    want.add(&sums(2, 1_000, 2_000));
    assert_eq!(got, want);
    assert_eq!((got.requests, got.errors, got.cancelled), (8, 4, 3));
    let keyless = all.iter().find(|b| b.key.key_id.is_empty()).unwrap();
    assert_eq!(keyless.key.currency, "");
    assert_eq!(keyless.sums.input_tokens, 7);

    // Saturation instead of overflow.
    let big = ukey(m, "big", "", "m", "USD");
    let near_max = UsageSums {
        requests: u64::MAX - 1,
        cost_nanos: u64::MAX,
        ..UsageSums::default()
    };
    storage
        .usage
        .add_usage(&[ub(big.clone(), near_max)])
        .await
        .unwrap();
    storage
        .usage
        .add_usage(&[ub(big.clone(), sums(5, 1, 5))])
        .await
        .unwrap();
    let all = all_usage(&storage).await;
    let got = all.iter().find(|b| b.key == big).unwrap().sums;
    assert_eq!((got.requests, got.cost_nanos), (u64::MAX, u64::MAX));
}

/// Filters select by tenant, key (`""`: no key) and model; ranges are
/// half-open on the minute start.
pub async fn usage_filters_and_half_open_ranges(storage: Storage, clock: ManualClock) {
    let (m0, m1, m2) = (minute(&clock, 0), minute(&clock, 1), minute(&clock, 2));
    let mut buckets = Vec::new();
    for (i, m) in [m0, m1, m2].into_iter().enumerate() {
        for tenant in ["a", "b"] {
            for key in ["", "k1"] {
                for model in ["x", "y"] {
                    buckets.push(ub(
                        ukey(m, tenant, key, model, "USD"),
                        sums(i as u64 + 1, 1, 1),
                    ));
                }
            }
        }
    }
    storage.usage.add_usage(&buckets).await.unwrap();
    let read = |f: UsageFilter| {
        let storage = storage.clone();
        async move { storage.usage.usage_buckets(&f).await.unwrap() }
    };
    let all = read(UsageFilter::range(m0, m2.add_millis(MINUTE_MS))).await;
    assert_eq!(all.len(), 24);
    let middle = read(UsageFilter::range(m1, m2)).await;
    assert_eq!(middle.len(), 8);
    assert!(middle.iter().all(|b| b.key.minute == m1));
    // A minute counts when it starts inside: from inside m0 leaves m0 out.
    let from_inside = read(UsageFilter::range(m0.add_millis(1), m2)).await;
    assert!(from_inside.iter().all(|b| b.key.minute == m1));
    assert!(read(UsageFilter::range(m1, m1)).await.is_empty());
    assert!(read(UsageFilter::range(m2, m0)).await.is_empty());
    let from_before_epoch = read(UsageFilter::range(Timestamp::from_millis(-5), m1)).await;
    assert_eq!(from_before_epoch.len(), 8);
    let f = UsageFilter {
        tenant: Some("b".into()),
        key_id: Some(String::new()),
        model: Some("y".into()),
        ..UsageFilter::range(m0, m2.add_millis(MINUTE_MS))
    };
    let one_each = read(f).await;
    assert_eq!(one_each.len(), 3);
    assert!(
        one_each
            .iter()
            .all(|b| b.key.tenant == "b" && b.key.key_id.is_empty() && b.key.model == "y")
    );
    assert_eq!(
        one_each.iter().map(|b| b.sums.requests).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let by_key = read(UsageFilter {
        key_id: Some("k1".into()),
        ..UsageFilter::range(m0, m1)
    })
    .await;
    assert_eq!(by_key.len(), 4);
    let unknown = read(UsageFilter {
        tenant: Some("nobody".into()),
        ..UsageFilter::range(m0, m2)
    })
    .await;
    assert!(unknown.is_empty());
}

/// 16 tasks add into one shared bucket and their own ones at once: every
/// add lands.
pub async fn usage_concurrent_adds_all_land(storage: Storage, clock: ManualClock) {
    let m = minute(&clock, 0);
    let mut tasks = Vec::new();
    for t in 0..16 {
        let usage = Arc::clone(&storage.usage);
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                usage
                    .add_usage(&[
                        ub(ukey(m, "hot", "", "m", "USD"), sums(1, 3, 7)),
                        ub(
                            ukey(m, &format!("own{t:02}"), "", "m", "USD"),
                            sums(1, 1, 1),
                        ),
                    ])
                    .await
                    .unwrap();
                usage
                    .add_verifications(&[VerificationBucket {
                        key: VerificationKey {
                            minute: m,
                            keyspace_id: "ks".into(),
                            key_id: "hot".into(),
                            owner_id: String::new(),
                        },
                        sums: VerificationSums::of(VerifyCode::Valid),
                    }])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = all_usage(&storage).await;
    assert_eq!(all.len(), 17);
    let hot = all.iter().find(|b| b.key.tenant == "hot").unwrap().sums;
    assert_eq!(
        (hot.requests, hot.input_tokens, hot.cost_nanos),
        (400, 1_200, 2_800)
    );
    assert!(
        all.iter()
            .filter(|b| b.key.tenant != "hot")
            .all(|b| b.sums.requests == 25)
    );
    let v = storage
        .usage
        .verification_buckets(&VerificationFilter::range(m, m.add_millis(MINUTE_MS)))
        .await
        .unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].sums.success, 400);
}

fn report(source: &str, sequence: u64, m: Timestamp, tenant: &str) -> UsageReport {
    UsageReport {
        source: source.into(),
        sequence,
        usage: vec![
            ub(ukey(m, tenant, "key_1", "llama", "USD"), sums(2, 10, 500)),
            ub(ukey(m, "shared", "", "llama", ""), sums(1, 1, 0)),
        ],
        verifications: vec![VerificationBucket {
            key: VerificationKey {
                minute: m,
                keyspace_id: "ks".into(),
                key_id: "key_1".into(),
                owner_id: String::new(),
            },
            sums: VerificationSums::of(VerifyCode::Valid),
        }],
    }
}

async fn verifications_in(storage: &Storage, m: Timestamp) -> u64 {
    storage
        .usage
        .verification_buckets(&VerificationFilter::range(m, m.add_millis(MINUTE_MS)))
        .await
        .unwrap()
        .iter()
        .map(|b| b.sums.success)
        .sum()
}

/// A report is added once: sent again, or older than the last one of its
/// source, it adds nothing and answers `false`; sources are independent;
/// usage and verifications land together.
pub async fn usage_reports_add_once(storage: Storage, clock: ManualClock) {
    let m = minute(&clock, 0);
    let usage = &storage.usage;
    assert!(
        usage
            .add_report(&report("dp-a", 1, m, "acme"))
            .await
            .unwrap()
    );
    assert!(
        !usage
            .add_report(&report("dp-a", 1, m, "acme"))
            .await
            .unwrap()
    );
    assert!(
        usage
            .add_report(&report("dp-a", 3, m, "acme"))
            .await
            .unwrap()
    );
    // A gap is allowed (the sender may have lost reports); older is not.
    assert!(
        !usage
            .add_report(&report("dp-a", 2, m, "acme"))
            .await
            .unwrap()
    );
    assert!(
        usage
            .add_report(&report("dp-b", 1, m, "beta"))
            .await
            .unwrap()
    );
    // An empty report moves the sequence on.
    let empty = UsageReport {
        usage: vec![],
        verifications: vec![],
        ..report("dp-b", 2, m, "beta")
    };
    assert!(usage.add_report(&empty).await.unwrap());
    assert!(
        !usage
            .add_report(&report("dp-b", 2, m, "beta"))
            .await
            .unwrap()
    );
    let all = all_usage(&storage).await;
    let of = |t: &str| {
        all.iter()
            .find(|b| b.key.tenant == t)
            .map(|b| b.sums.requests)
    };
    assert_eq!(of("acme"), Some(4));
    assert_eq!(of("beta"), Some(2));
    assert_eq!(of("shared"), Some(3));
    assert_eq!(verifications_in(&storage, m).await, 3);
}

/// Eight tasks send the same twenty reports of one source at once, as a
/// data plane resending after a lost acknowledgement to two control-plane
/// replicas might: each report is counted exactly once.
pub async fn usage_reports_concurrent_resends_count_once(storage: Storage, clock: ManualClock) {
    let m = minute(&clock, 0);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let usage = Arc::clone(&storage.usage);
        tasks.push(tokio::spawn(async move {
            let mut added = 0u64;
            for seq in 1..=20 {
                if usage
                    .add_report(&report("dp", seq, m, "acme"))
                    .await
                    .unwrap()
                {
                    added += 1;
                }
            }
            added
        }));
    }
    let mut added = 0;
    for t in tasks {
        added += t.await.unwrap();
    }
    // Each task sends in order, so every sequence is added by the first
    // task to send it, and by no other.
    assert_eq!(added, 20);
    let all = all_usage(&storage).await;
    let acme = all.iter().find(|b| b.key.tenant == "acme").unwrap().sums;
    assert_eq!(acme.requests, 2 * added);
    assert_eq!(acme.cost_nanos, 500 * added);
    assert_eq!(verifications_in(&storage, m).await, added);
    assert!(
        !storage
            .usage
            .add_report(&report("dp", 20, m, "acme"))
            .await
            .unwrap()
    );
}

/// Verification buckets merge, filter by keyspace, key and owner, and
/// select minutes half-open, sorted by key.
pub async fn usage_verification_buckets(storage: Storage, clock: ManualClock) {
    let (m0, m1) = (minute(&clock, 0), minute(&clock, 1));
    let vk = |m: Timestamp, ks: &str, key: &str, owner: &str| VerificationKey {
        minute: m,
        keyspace_id: ks.into(),
        key_id: key.into(),
        owner_id: owner.into(),
    };
    let vb = |key: VerificationKey, code: VerifyCode| VerificationBucket {
        key,
        sums: VerificationSums::of(code),
    };
    storage
        .usage
        .add_verifications(&[
            vb(vk(m1, "ks1", "k2", "alice"), VerifyCode::Valid),
            vb(vk(m0, "ks1", "k1", "alice"), VerifyCode::Valid),
            vb(vk(m0, "ks1", "k1", "alice"), VerifyCode::RateLimited),
            vb(vk(m0, "ks2", "k3", ""), VerifyCode::Disabled),
        ])
        .await
        .unwrap();
    storage
        .usage
        .add_verifications(&[vb(vk(m0, "ks1", "k1", "alice"), VerifyCode::UsageExceeded)])
        .await
        .unwrap();
    let read = |f: VerificationFilter| {
        let storage = storage.clone();
        async move { storage.usage.verification_buckets(&f).await.unwrap() }
    };
    let end = m1.add_millis(MINUTE_MS);
    let all = read(VerificationFilter::range(m0, end)).await;
    let keys: Vec<&VerificationKey> = all.iter().map(|b| &b.key).collect();
    assert_eq!(
        keys,
        vec![
            &vk(m0, "ks1", "k1", "alice"),
            &vk(m0, "ks2", "k3", ""),
            &vk(m1, "ks1", "k2", "alice"),
        ]
    );
    assert_eq!(
        all[0].sums,
        VerificationSums {
            success: 1,
            rate_limited: 1,
            usage_exceeded: 1,
            other: 0
        }
    );
    assert_eq!(all[1].sums.other, 1);
    let alice = read(VerificationFilter {
        owner_id: Some("alice".into()),
        ..VerificationFilter::range(m0, end)
    })
    .await;
    assert_eq!(alice.len(), 2);
    let k2 = read(VerificationFilter {
        key_id: Some("k2".into()),
        ..VerificationFilter::range(m0, end)
    })
    .await;
    assert_eq!(k2.len(), 1);
    let ks2 = read(VerificationFilter {
        keyspace_id: Some("ks2".into()),
        ..VerificationFilter::range(m0, end)
    })
    .await;
    assert_eq!(ks2.len(), 1);
    assert_eq!(read(VerificationFilter::range(m0, m1)).await.len(), 2);
    assert_eq!(read(VerificationFilter::range(m1, end)).await.len(), 1);
    assert!(read(VerificationFilter::range(end, end)).await.is_empty());
}

/// The ledger writes nothing until it flushes, serves queries from what is
/// pending meanwhile, and writes everything in one call per batch on flush;
/// the flusher's shutdown flushes what is left.
pub async fn usage_ledger_writes_behind(storage: Storage, clock: ManualClock) {
    let (probe, storage) = Probe::wrap(storage);
    let ledger = UsageLedger::new_with_clock(
        &storage,
        UsageConfig {
            flush_interval: Duration::from_secs(3_600),
            ..UsageConfig::default()
        },
        Arc::new(clock.clone()),
    );
    let now = clock.now();
    let before = probe.counts();
    for i in 0..100 {
        ledger
            .record(&UsageRecord {
                key_id: Some(format!("key_{}", i % 3)),
                input_tokens: 10,
                output_tokens: 1,
                ..UsageRecord::new(now.add_millis(i * 1_000), "acme", "llama")
            })
            .unwrap();
    }
    assert_eq!(probe.counts(), before, "recording touches no store");
    assert!(all_usage(&storage).await.is_empty());
    let range = TimeRange::new(now, now.add_millis(DAY_MS));
    let rows = ledger
        .totals(range, GroupBy::Key, &UsageScope::tenant("acme"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows.iter().map(|r| r.usage.requests).sum::<u64>(), 100);
    let writes = probe.counts().writes;
    ledger.flush().await.unwrap();
    assert_eq!(probe.counts().writes, writes + 1, "one batch");
    let stored = all_usage(&storage).await;
    assert_eq!(stored.iter().map(|b| b.sums.requests).sum::<u64>(), 100);
    assert_eq!(
        stored.iter().map(|b| b.sums.input_tokens).sum::<u64>(),
        1_000
    );
    let again = ledger
        .totals(range, GroupBy::Key, &UsageScope::tenant("acme"))
        .await
        .unwrap();
    assert_eq!(again, rows);

    let flusher = ledger.spawn_flusher();
    ledger
        .record(&UsageRecord::new(now, "late", "llama"))
        .unwrap();
    flusher.shutdown().await.unwrap();
    let stored = all_usage(&storage).await;
    assert!(stored.iter().any(|b| b.key.tenant == "late"));
    assert_eq!(ledger.status().pending_usage, 0);
}

/// Costs use each model's price at the time of the request: requests before
/// a price change keep the old price, after it the new one; a range over
/// the change reflects both, and ranges on either side one each.
pub async fn usage_costs_with_a_price_change(storage: Storage, clock: ManualClock) {
    let admin = Actor::new("admin");
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let models = ModelService::new_with_clock(storage.clone(), Arc::clone(&shared));
    let ledger = UsageLedger::new_with_clock(&storage, UsageConfig::default(), shared);
    models
        .create(
            &admin,
            NewModel {
                pricing: Some(Pricing::usd(3.0, 15.0)),
                ..NewModel::new("llama", "http://llama:8000")
            },
        )
        .await
        .unwrap();
    let start = clock.now();
    // As a gateway does: the model's current price goes with each record.
    let serve = |tenant: &'static str, input: u64, output: u64| {
        let models = models.clone();
        let ledger = ledger.clone();
        async move {
            let model = models.get("llama").await.unwrap();
            ledger
                .record(&UsageRecord {
                    input_tokens: input,
                    output_tokens: output,
                    pricing: model.pricing.clone(),
                    ..UsageRecord::new(ledger.now(), tenant, "llama")
                })
                .unwrap();
        }
    };
    serve("acme", 1_000_000, 100_000).await; // 3 + 1.5 = 4.5 USD
    clock.advance(Duration::from_secs(600));
    serve("beta", 200_000, 0).await; // 0.6 USD
    ledger.flush().await.unwrap();
    clock.advance(Duration::from_secs(600));
    let change = clock.now();
    models
        .update(
            &admin,
            "llama",
            ModelUpdate {
                pricing: Patch::Set(Pricing::usd(1.0, 2.0)),
                ..ModelUpdate::default()
            },
        )
        .await
        .unwrap();
    serve("acme", 1_000_000, 100_000).await; // 1 + 0.2 = 1.2 USD
    clock.advance(Duration::from_secs(600));
    serve("beta", 500_000, 500_000).await; // 0.5 + 1 = 1.5 USD
    let end = clock.now().add_millis(MINUTE_MS);

    let both = TimeRange::new(start, end);
    let by_tenant = ledger.costs(both, GroupBy::Tenant).await.unwrap();
    let got: Vec<(&str, &str, u64)> = by_tenant
        .iter()
        .map(|r| (r.group.as_str(), r.currency.as_str(), r.nanos))
        .collect();
    assert_eq!(
        got,
        vec![
            ("acme", "USD", 5_700_000_000),
            ("beta", "USD", 2_100_000_000)
        ]
    );
    assert_eq!(by_tenant[0].amount, 5.7);
    assert_eq!(by_tenant[0].input_tokens, 2_000_000);
    let by_model = ledger.costs(both, GroupBy::Model).await.unwrap();
    assert_eq!(by_model.len(), 1);
    assert_eq!(by_model[0].nanos, 7_800_000_000);
    assert_eq!(by_model[0].requests, 4);
    let before = ledger
        .costs(TimeRange::new(start, change), GroupBy::Model)
        .await
        .unwrap();
    assert_eq!(before[0].nanos, 5_100_000_000);
    let after = ledger
        .costs(TimeRange::new(change, end), GroupBy::Model)
        .await
        .unwrap();
    assert_eq!(after[0].nanos, 2_700_000_000);
    let totals = ledger
        .totals(both, GroupBy::Model, &UsageScope::default())
        .await
        .unwrap();
    assert_eq!(totals[0].usage.cost("USD"), 7.8);
    // Flushing changes nothing: the price is stored with the usage.
    ledger.flush().await.unwrap();
    assert_eq!(ledger.costs(both, GroupBy::Model).await.unwrap(), by_model);
}

/// A key service with a ledger attached records each verification's code
/// under the key, its keyspace and owner, per UTC day; unknown keys are not
/// recorded; a second ledger is refused.
pub async fn usage_records_key_verifications(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    let ledger = UsageLedger::new_with_clock(
        &f.storage,
        UsageConfig::default(),
        Arc::new(f.clock.clone()),
    );
    f.keys.attach_usage(ledger.clone()).unwrap();
    assert!(f.keys.attach_usage(ledger.clone()).is_err());
    let new = || NewKey {
        owner_id: Some("alice".into()),
        ..NewKey::in_keyspace(f.ks.id.clone())
    };
    let verify = |key: String| {
        let keys = f.keys.clone();
        async move {
            keys.verify(&key, &VerifyOptions::default())
                .await
                .unwrap()
                .code()
        }
    };
    let limited = f
        .keys
        .create(
            &f.admin,
            NewKey {
                ratelimit: Some(KeyRateLimit {
                    kind: RateLimitKind::Fast,
                    limit: 2,
                    refill_rate: 2,
                    refill_interval: 3_600_000,
                }),
                remaining: Some(1),
                ..new()
            },
        )
        .await
        .unwrap();
    // VALID, USAGE_EXCEEDED, RATE_LIMITED, RATE_LIMITED.
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(verify(limited.key.clone()).await);
    }
    assert_eq!(
        codes,
        vec![
            VerifyCode::Valid,
            VerifyCode::UsageExceeded,
            VerifyCode::RateLimited,
            VerifyCode::RateLimited
        ]
    );
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
    assert_eq!(verify(disabled.key.clone()).await, VerifyCode::Disabled);
    let other_ks = f
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
    let forbidden = f
        .keys
        .verify(
            &disabled.key,
            &VerifyOptions {
                keyspace_id: Some(&other_ks.id),
                permissions: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(forbidden.code(), VerifyCode::Forbidden);
    assert_eq!(
        verify("sk_5KJvsngHeMpm88rDWeWiMjXq".into()).await,
        VerifyCode::NotFound
    );
    // The next UTC day.
    let today = Granularity::Day.floor(f.clock.now());
    f.clock.set(today.add_millis(DAY_MS + HOUR_MS));
    let plain = f
        .keys
        .create(&f.admin, NewKey::in_keyspace(f.ks.id.clone()))
        .await
        .unwrap();
    assert_eq!(verify(plain.key.clone()).await, VerifyCode::Valid);
    assert_eq!(verify(limited.key.clone()).await, VerifyCode::UsageExceeded);

    let range = TimeRange::new(today, today.add_millis(3 * DAY_MS));
    let days = ledger
        .verifications(range, &VerificationScope::key(limited.key_id.as_str()))
        .await
        .unwrap();
    let got: Vec<(Timestamp, u64, u64, u64)> = days
        .iter()
        .map(|d| (d.time, d.success, d.rate_limited, d.usage_exceeded))
        .collect();
    assert_eq!(
        got,
        vec![(today, 1, 2, 1), (today.add_millis(DAY_MS), 0, 0, 1)]
    );
    let alice = ledger
        .verifications(range, &VerificationScope::owner("alice"))
        .await
        .unwrap();
    assert_eq!(alice.len(), 2);
    assert_eq!(alice[0].other, 2, "DISABLED and FORBIDDEN");
    assert_eq!(alice[0].success, 1);
    let json = serde_json::to_value(alice[0]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "time": today.as_millis(), "success": 1, "rateLimited": 2, "usageExceeded": 1
        })
    );
    // Everything lands in the store on flush, under the keyspace too.
    ledger.flush().await.unwrap();
    let stored = f
        .storage
        .usage
        .verification_buckets(&VerificationFilter {
            keyspace_id: Some(f.ks.id.to_string()),
            ..VerificationFilter::range(range.from, range.to)
        })
        .await
        .unwrap();
    let total: u64 = stored
        .iter()
        .map(|b| b.sums.success + b.sums.rate_limited + b.sums.usage_exceeded + b.sums.other)
        .sum();
    assert_eq!(total, 8);
    assert!(stored.iter().any(|b| b.key.owner_id.is_empty()));
}

// ----- the proptest -----------------------------------------------------------

/// Case windows: each case records into its own 10 days, so cases on one
/// store never see each other's usage.
static CASE: AtomicI64 = AtomicI64::new(0);

#[derive(Debug, Clone)]
struct Rec {
    offset_ms: i64,
    tenant: usize,
    key: usize,
    model: usize,
    input: u64,
    output: u64,
    cached: u64,
    outcome: RequestOutcome,
    estimated: bool,
    cache: Option<CacheOutcome>,
    price: usize,
    flush_after: bool,
}

const TENANTS: [&str; 3] = ["acme", "beta", "gamma"];
const KEYS: [Option<&str>; 3] = [None, Some("key_1"), Some("key_2")];
const MODELS: [&str; 2] = ["llama", "mistral"];

fn price(i: usize) -> Option<Pricing> {
    match i {
        0 => None,
        1 => Some(Pricing::usd(3.0, 15.0)),
        2 => Some(Pricing {
            cached_input_per_million: Some(0.075),
            ..Pricing::usd(0.15, 0.6)
        }),
        _ => Some(Pricing {
            currency: "EUR".into(),
            ..Pricing::usd(0.5, 1.25)
        }),
    }
}

fn rec() -> impl Strategy<Value = Rec> {
    (
        (
            prop_oneof![
                1 => 0..3 * DAY_MS,
                // Most records in a few minutes, so that buckets are hit
                // again after they were flushed.
                3 => (0..3i64, 0..MINUTE_MS).prop_map(|(m, ms)| m * 61 * MINUTE_MS + ms),
            ],
            0..3usize,
            0..3usize,
            0..2usize,
        ),
        (0..20_000u64, 0..5_000u64, 0..1_000u64),
        (
            prop_oneof![
                6 => Just(RequestOutcome::Success),
                1 => Just(RequestOutcome::Error),
                1 => Just(RequestOutcome::Cancelled)
            ],
            any::<bool>(),
            prop_oneof![
                Just(None),
                Just(Some(CacheOutcome::Hit)),
                Just(Some(CacheOutcome::Miss))
            ],
            0..4usize,
            proptest::bool::weighted(0.15),
        ),
    )
        .prop_map(
            |(
                (offset_ms, tenant, key, model),
                (input, output, cached),
                (outcome, estimated, cache, price, flush_after),
            )| Rec {
                offset_ms,
                tenant,
                key,
                model,
                input,
                output,
                cached,
                outcome,
                estimated,
                cache,
                price,
                flush_after,
            },
        )
}

/// The naive model: plain sums per group, from the records themselves.
#[derive(Debug, Default, PartialEq)]
struct Naive {
    requests: u64,
    errors: u64,
    cancelled: u64,
    input: u64,
    output: u64,
    cached: u64,
    estimated: u64,
    hits: u64,
    misses: u64,
    costs: BTreeMap<String, u64>,
}

impl Naive {
    fn add(&mut self, r: &UsageRecord) {
        self.requests += 1;
        self.errors += u64::from(r.outcome == RequestOutcome::Error);
        self.cancelled += u64::from(r.outcome == RequestOutcome::Cancelled);
        self.input += r.input_tokens;
        self.output += r.output_tokens;
        self.cached += r.cached_tokens;
        self.estimated += u64::from(r.estimated);
        self.hits += u64::from(r.cache == Some(CacheOutcome::Hit));
        self.misses += u64::from(r.cache == Some(CacheOutcome::Miss));
        if let Some(p) = &r.pricing {
            *self.costs.entry(p.currency.clone()).or_default() +=
                crate::usage::billed_nanos(p, r.input_tokens, r.cached_tokens, r.output_tokens);
        }
    }

    fn of(s: &crate::usage::UsageSummary) -> Naive {
        Naive {
            requests: s.requests,
            errors: s.errors,
            cancelled: s.cancelled,
            input: s.input_tokens,
            output: s.output_tokens,
            cached: s.cached_tokens,
            estimated: s.estimated,
            hits: s.cache_hits,
            misses: s.cache_misses,
            costs: s
                .costs
                .iter()
                .map(|c| (c.currency.clone(), c.nanos))
                .collect(),
        }
    }
}

/// For any records, flushed at any points: totals by tenant, key and model,
/// hourly series, costs and the stored buckets all equal plain sums of the
/// records, over the whole window and over a random sub-range.
pub async fn prop_usage_totals_equal_sum_of_records(storage: Storage, clock: ManualClock) {
    let strategy = (
        proptest::collection::vec(rec(), 0..60),
        0..3 * DAY_MS,
        0..3 * DAY_MS,
    );
    let base = {
        let now = clock.now().as_millis();
        now - now % DAY_MS
    };
    run_prop(48, strategy, |(recs, a, b)| {
        let storage = storage.clone();
        let clock = clock.clone();
        async move {
            let case = CASE.fetch_add(1, Ordering::Relaxed);
            let start = Timestamp::from_millis(base + case * 10 * DAY_MS);
            let ledger =
                UsageLedger::new_with_clock(&storage, UsageConfig::default(), Arc::new(clock));
            let mut records = Vec::new();
            for r in &recs {
                let rec = UsageRecord {
                    at: start.add_millis(r.offset_ms),
                    tenant: TENANTS[r.tenant].to_owned(),
                    key_id: KEYS[r.key].map(str::to_owned),
                    model: MODELS[r.model].to_owned(),
                    input_tokens: r.input,
                    output_tokens: r.output,
                    cached_tokens: r.cached,
                    outcome: r.outcome,
                    estimated: r.estimated,
                    cache: r.cache,
                    pricing: price(r.price),
                };
                ledger
                    .record(&rec)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                if r.flush_after {
                    ledger
                        .flush()
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                records.push(rec);
            }
            let whole = TimeRange::new(start, start.add_millis(3 * DAY_MS));
            let (lo, hi) = (a.min(b), a.max(b));
            let sub = TimeRange::new(start.add_millis(lo), start.add_millis(hi));
            for range in [whole, sub] {
                // A record counts when its minute starts inside the range.
                let inside = |r: &&UsageRecord| {
                    let m = Granularity::Minute.floor(r.at);
                    range.from <= m && m < range.to
                };
                for group_by in [GroupBy::Tenant, GroupBy::Key, GroupBy::Model] {
                    let mut want: BTreeMap<String, Naive> = BTreeMap::new();
                    for r in records.iter().filter(inside) {
                        let g = match group_by {
                            GroupBy::Tenant => r.tenant.clone(),
                            GroupBy::Key => r.key_id.clone().unwrap_or_default(),
                            GroupBy::Model => r.model.clone(),
                        };
                        want.entry(g).or_default().add(r);
                    }
                    let rows = ledger
                        .totals(range, group_by, &UsageScope::default())
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let got: BTreeMap<String, Naive> = rows
                        .iter()
                        .map(|r| (r.group.clone(), Naive::of(&r.usage)))
                        .collect();
                    prop_assert_eq!(&got, &want, "totals by {}", group_by);

                    let costs = ledger
                        .costs(range, group_by)
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let got: BTreeMap<(String, String), u64> = costs
                        .iter()
                        .map(|c| ((c.group.clone(), c.currency.clone()), c.nanos))
                        .collect();
                    let want: BTreeMap<(String, String), u64> = want
                        .iter()
                        .flat_map(|(g, n)| {
                            n.costs.iter().map(|(c, v)| ((g.clone(), c.clone()), *v))
                        })
                        .collect();
                    prop_assert_eq!(got, want, "costs by {}", group_by);
                }
                let mut want: BTreeMap<Timestamp, Naive> = BTreeMap::new();
                for r in records.iter().filter(inside) {
                    want.entry(Granularity::Hour.floor(r.at))
                        .or_default()
                        .add(r);
                }
                let series = ledger
                    .series(range, Granularity::Hour, None)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let got: BTreeMap<Timestamp, Naive> = series
                    .iter()
                    .map(|p| (p.time, Naive::of(&p.usage)))
                    .collect();
                prop_assert_eq!(got, want, "hourly series");
            }
            // After a last flush the store alone holds it all.
            ledger
                .flush()
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let stored = storage
                .usage
                .usage_buckets(&UsageFilter::range(whole.from, whole.to))
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut total = UsageSums::default();
            for b in &stored {
                total.add(&b.sums);
            }
            let mut want = Naive::default();
            for r in &records {
                want.add(r);
            }
            prop_assert_eq!(
                (total.requests, total.input_tokens, total.output_tokens),
                (want.requests, want.input, want.output)
            );
            prop_assert_eq!(total.cost_nanos, want.costs.values().sum::<u64>());
            Ok(())
        }
    });
}
