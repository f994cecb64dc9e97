//! Unit tests of the ledger on [`MemoryUsageStore`] and a failing double.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::clock::ManualClock;
use crate::error::Error;

/// A usage store that counts adds and refuses them once `allowed` reaches
/// 0 (negative: never refuses).
#[derive(Debug)]
struct Flaky {
    inner: MemoryUsageStore,
    allowed: AtomicI64,
    adds: AtomicU64,
}

impl Flaky {
    fn new() -> Arc<Self> {
        Arc::new(Flaky {
            inner: MemoryUsageStore::default(),
            allowed: AtomicI64::new(-1),
            adds: AtomicU64::new(0),
        })
    }

    fn allow(&self, n: i64) {
        self.allowed.store(n, Ordering::SeqCst);
    }

    fn gate(&self) -> crate::Result<()> {
        let left = self.allowed.load(Ordering::SeqCst);
        if left == 0 {
            return Err(Error::unavailable("the test store is down", true));
        }
        if left > 0 {
            self.allowed.fetch_sub(1, Ordering::SeqCst);
        }
        self.adds.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn stored(&self) -> Vec<UsageBucket> {
        self.inner
            .usage_buckets(&UsageFilter::range(
                Timestamp::EPOCH,
                Timestamp::from_millis(i64::MAX),
            ))
            .await
            .unwrap()
    }
}

#[async_trait]
impl UsageStore for Flaky {
    async fn add_usage(&self, b: &[UsageBucket]) -> crate::Result<()> {
        self.gate()?;
        self.inner.add_usage(b).await
    }
    async fn add_verifications(&self, b: &[VerificationBucket]) -> crate::Result<()> {
        self.gate()?;
        self.inner.add_verifications(b).await
    }
    async fn add_report(&self, r: &super::UsageReport) -> crate::Result<bool> {
        self.gate()?;
        self.inner.add_report(r).await
    }
    async fn usage_buckets(&self, f: &UsageFilter) -> crate::Result<Vec<UsageBucket>> {
        self.inner.usage_buckets(f).await
    }
    async fn verification_buckets(
        &self,
        f: &VerificationFilter,
    ) -> crate::Result<Vec<VerificationBucket>> {
        self.inner.verification_buckets(f).await
    }
}

const T0: i64 = 1_735_689_600_000; // 2025-01-01T00:00:00Z

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(T0 + ms)
}

fn ledger_on(store: Arc<Flaky>, config: UsageConfig) -> UsageLedger {
    UsageLedger::on_store(store, config, Arc::new(ManualClock::default()))
}

fn day() -> TimeRange {
    TimeRange::new(at(0), at(DAY_MS))
}

fn req(ms: i64, tenant: &str, model: &str, input: u64, output: u64) -> UsageRecord {
    UsageRecord {
        input_tokens: input,
        output_tokens: output,
        ..UsageRecord::new(at(ms), tenant, model)
    }
}

fn field(e: Error) -> String {
    match e {
        Error::InvalidInput { field, .. } => field.into_owned(),
        other => panic!("not invalid input: {other:?}"),
    }
}

#[test]
fn granularity_parses_and_aligns() {
    assert_eq!(
        "minute".parse::<Granularity>().unwrap(),
        Granularity::Minute
    );
    assert_eq!("hour".parse::<Granularity>().unwrap(), Granularity::Hour);
    assert_eq!("day".parse::<Granularity>().unwrap(), Granularity::Day);
    for bad in ["week", "", "Day", "minutes"] {
        assert_eq!(
            field(bad.parse::<Granularity>().unwrap_err()),
            "granularity"
        );
    }
    assert_eq!(field("team".parse::<GroupBy>().unwrap_err()), "group_by");
    let t = at(DAY_MS + 3 * HOUR_MS + 5 * MINUTE_MS + 7_000);
    assert_eq!(
        Granularity::Minute.floor(t),
        at(DAY_MS + 3 * HOUR_MS + 5 * MINUTE_MS)
    );
    assert_eq!(Granularity::Hour.floor(t), at(DAY_MS + 3 * HOUR_MS));
    assert_eq!(Granularity::Day.floor(t), at(DAY_MS));
    assert_eq!(Granularity::Hour.to_string(), "hour");
}

#[test]
fn costs_are_exact_nanos() {
    let p = Pricing::usd(3.0, 15.0);
    // 812 × 3 / 10⁶ + 256 × 15 / 10⁶ = 0.006276
    assert_eq!(cost_nanos(&p, 812, 256), 6_276_000);
    assert_eq!(cost_nanos(&Pricing::usd(0.1, 0.0), 1, 0), 100);
    assert_eq!(cost_nanos(&Pricing::usd(0.0001, 0.0), 4, 0), 0); // 0.4 nano
    assert_eq!(cost_nanos(&Pricing::usd(0.0001, 0.0), 6, 0), 1); // 0.6 nano
    assert_eq!(cost_nanos(&Pricing::usd(f64::NAN, -1.0), 5, 5), 0);
    // Cached prompt tokens are billed once, at the cached price (1,000 of
    // 4,000 prompt tokens: 3,000 x 2 + 1,000 x 0.5 + 100 x 8 per million).
    let cached = Pricing {
        cached_input_per_million: Some(0.5),
        ..Pricing::usd(2.0, 8.0)
    };
    assert_eq!(billed_nanos(&cached, 4000, 1000, 100), 7_300_000);
    assert_eq!(
        billed_nanos(&cached, 4000, 0, 100),
        cost_nanos(&cached, 4000, 100)
    );
    // More cached than prompt tokens (a confused upstream): all cached, once.
    assert_eq!(billed_nanos(&cached, 10, 50, 0), 5_000);
    // Without a cached price: the input price.
    let plain = Pricing::usd(2.0, 8.0);
    assert_eq!(
        billed_nanos(&plain, 4000, 1000, 100),
        cost_nanos(&plain, 4000, 100)
    );
    // The worst case prices every prompt token at the dearer of the two.
    assert_eq!(
        worst_case_nanos(&cached, 4000, 100),
        cost_nanos(&cached, 4000, 100)
    );
    let dear_cache = Pricing {
        cached_input_per_million: Some(3.0),
        ..Pricing::usd(2.0, 8.0)
    };
    assert_eq!(worst_case_nanos(&dear_cache, 1000, 0), 3_000_000);
    assert!(billed_nanos(&dear_cache, 1000, 1000, 0) <= worst_case_nanos(&dear_cache, 1000, 0));
    assert_eq!(nanos_to_amount(6_276_000), 0.006276);
    assert_eq!(nanos_to_amount(u64::MAX), 18_446_744_073.709_553);
}

#[tokio::test]
async fn bad_ranges_name_the_field() {
    let store = Flaky::new();
    let ledger = ledger_on(
        store,
        UsageConfig {
            max_range: Duration::from_secs(86_400),
            ..UsageConfig::default()
        },
    );
    let backwards = TimeRange::new(at(1), at(0));
    let e = ledger
        .totals(backwards, GroupBy::Tenant, &UsageScope::default())
        .await
        .unwrap_err();
    assert_eq!(field(e), "from");
    let too_long = TimeRange::new(at(0), at(DAY_MS + 1));
    for e in [
        ledger
            .series(too_long, Granularity::Hour, None)
            .await
            .unwrap_err(),
        ledger
            .series_by_tenant(too_long, Granularity::Day)
            .await
            .unwrap_err(),
        ledger
            .verifications(too_long, &VerificationScope::key("k"))
            .await
            .unwrap_err(),
        ledger.cache(too_long).await.unwrap_err(),
        ledger.costs(too_long, GroupBy::Model).await.unwrap_err(),
    ] {
        assert_eq!(field(e), "to");
    }
    // Exactly the maximum, and empty ranges, are fine.
    assert!(ledger.cache(day()).await.unwrap().is_empty());
    assert!(
        ledger
            .cache(TimeRange::new(at(5), at(5)))
            .await
            .unwrap()
            .is_empty()
    );
    // Extreme values do not overflow.
    let huge = TimeRange::new(
        Timestamp::from_millis(i64::MIN),
        Timestamp::from_millis(i64::MAX),
    );
    assert_eq!(field(ledger.cache(huge).await.unwrap_err()), "to");
}

#[tokio::test]
async fn bad_records_are_refused_and_record_nothing() {
    let store = Flaky::new();
    let ledger = ledger_on(store.clone(), UsageConfig::default());
    let ok = req(0, "acme", "llama", 1, 1);
    let cases: Vec<(UsageRecord, &str)> = vec![
        (
            UsageRecord {
                at: Timestamp::from_millis(-1),
                ..ok.clone()
            },
            "at",
        ),
        (
            UsageRecord {
                tenant: String::new(),
                ..ok.clone()
            },
            "tenant",
        ),
        (
            UsageRecord {
                model: "a\0b".into(),
                ..ok.clone()
            },
            "model",
        ),
        (
            UsageRecord {
                key_id: Some("k".repeat(MAX_PART + 1)),
                ..ok.clone()
            },
            "key_id",
        ),
        (
            UsageRecord {
                pricing: Some(Pricing {
                    currency: "US\nD".into(),
                    ..Pricing::usd(1.0, 1.0)
                }),
                ..ok.clone()
            },
            "pricing.currency",
        ),
    ];
    for (r, f) in cases {
        assert_eq!(field(ledger.record(&r).unwrap_err()), f);
    }
    let v = VerificationRecord {
        at: at(0),
        keyspace_id: "ks".into(),
        key_id: String::new(),
        owner_id: None,
        code: VerifyCode::Valid,
    };
    assert_eq!(field(ledger.record_verification(&v).unwrap_err()), "key_id");
    let status = ledger.status();
    assert_eq!((status.pending_usage, status.pending_verifications), (0, 0));
    ledger.flush().await.unwrap();
    assert!(store.stored().await.is_empty());
    assert_eq!(store.adds.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn usage_is_written_behind_and_read_back_once() {
    let store = Flaky::new();
    let ledger = ledger_on(store.clone(), UsageConfig::default());
    for i in 0..10 {
        ledger
            .record(&req(i * 1_000, "acme", "llama", 10, 5))
            .unwrap();
    }
    ledger
        .record(&req(MINUTE_MS, "beta", "llama", 1, 1))
        .unwrap();
    // Nothing is in the store before a flush...
    assert!(store.stored().await.is_empty());
    assert_eq!(store.adds.load(Ordering::SeqCst), 0);
    assert_eq!(ledger.status().pending_usage, 2);
    // ...but queries on this node see it.
    let rows = ledger
        .totals(day(), GroupBy::Tenant, &UsageScope::default())
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].group.as_str(), rows[0].usage.requests),
        ("acme", 10)
    );
    assert_eq!(rows[0].usage.input_tokens, 100);
    ledger.flush().await.unwrap();
    assert_eq!(store.stored().await.len(), 2);
    let status = ledger.status();
    assert_eq!(status.pending_usage, 0);
    assert!(status.last_flush.is_some() && status.last_error.is_none());
    // After the flush the same totals, counted once.
    let after = ledger
        .totals(day(), GroupBy::Tenant, &UsageScope::default())
        .await
        .unwrap();
    assert_eq!(after, rows);
    // Stored and pending parts of one bucket add up.
    ledger.record(&req(2_000, "acme", "llama", 1, 0)).unwrap();
    let b = ledger
        .usage_buckets(&UsageFilter {
            tenant: Some("acme".into()),
            ..UsageFilter::range(at(0), at(DAY_MS))
        })
        .await
        .unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].sums.requests, b[0].sums.input_tokens), (11, 101));
    // An empty flush writes nothing.
    ledger.flush().await.unwrap();
    let adds = store.adds.load(Ordering::SeqCst);
    ledger.flush().await.unwrap();
    assert_eq!(store.adds.load(Ordering::SeqCst), adds);
}

#[tokio::test]
async fn a_failing_store_keeps_pending_usage() {
    let store = Flaky::new();
    let ledger = ledger_on(store.clone(), UsageConfig::default());
    // 1,200 buckets: three batches; the store takes one, then fails.
    for i in 0..1_200 {
        ledger
            .record(&req(0, &format!("t{i:04}"), "llama", 1, 0))
            .unwrap();
    }
    ledger
        .record_verification(&VerificationRecord {
            at: at(0),
            keyspace_id: "ks".into(),
            key_id: "k".into(),
            owner_id: None,
            code: VerifyCode::Valid,
        })
        .unwrap();
    store.allow(1);
    let e = ledger.flush().await.unwrap_err();
    assert!(e.is_transient());
    assert_eq!(store.stored().await.len(), 512);
    let status = ledger.status();
    assert_eq!(status.pending_usage, 1_200 - 512);
    assert_eq!(status.pending_verifications, 1);
    assert_eq!(status.last_error, Some(e));
    // Queries still count everything exactly once.
    let all = ledger
        .totals(day(), GroupBy::Model, &UsageScope::default())
        .await
        .unwrap();
    assert_eq!(all[0].usage.requests, 1_200);
    // Recording goes on while the store is down, into the kept buckets.
    ledger.record(&req(0, "t1199", "llama", 1, 0)).unwrap();
    store.allow(-1);
    ledger.flush().await.unwrap();
    let stored = store.stored().await;
    assert_eq!(stored.len(), 1_200);
    assert_eq!(stored.iter().map(|b| b.sums.requests).sum::<u64>(), 1_201);
    assert_eq!(stored.last().unwrap().sums.requests, 2);
    let days = ledger
        .verifications(day(), &VerificationScope::key("k"))
        .await
        .unwrap();
    assert_eq!(days.len(), 1);
    assert_eq!(days[0].success, 1);
    assert_eq!(ledger.status().last_error, None);
}

#[tokio::test(start_paused = true)]
async fn the_flusher_flushes_every_interval_and_on_shutdown() {
    let store = Flaky::new();
    let ledger = ledger_on(
        store.clone(),
        UsageConfig {
            flush_interval: Duration::from_secs(5),
            ..UsageConfig::default()
        },
    );
    let flusher = ledger.spawn_flusher();
    ledger.record(&req(0, "acme", "llama", 1, 1)).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(store.stored().await.is_empty());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(store.stored().await.len(), 1);
    ledger.record(&req(0, "beta", "llama", 1, 1)).unwrap();
    flusher.shutdown().await.unwrap();
    assert_eq!(store.stored().await.len(), 2);
    assert_eq!(ledger.status().pending_usage, 0);
}

#[tokio::test(start_paused = true)]
async fn the_flusher_flushes_early_beyond_max_pending() {
    let store = Flaky::new();
    let ledger = ledger_on(
        store.clone(),
        UsageConfig {
            flush_interval: Duration::from_secs(3_600),
            max_pending: 3,
            ..UsageConfig::default()
        },
    );
    let flusher = ledger.spawn_flusher();
    let start = tokio::time::Instant::now();
    for t in ["a", "b", "c"] {
        ledger.record(&req(0, t, "m", 1, 1)).unwrap();
    }
    // Yielding keeps the runtime busy, so paused time does not advance.
    while store.stored().await.len() < 3 {
        tokio::task::yield_now().await;
    }
    assert!(start.elapsed() < Duration::from_secs(1));
    // A dropped handle still flushes on its way out.
    ledger.record(&req(0, "d", "m", 1, 1)).unwrap();
    drop(flusher);
    while store.stored().await.len() < 4 {
        tokio::task::yield_now().await;
    }
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn series_align_to_utc_steps_and_split_tenants() {
    let store = Flaky::new();
    let ledger = ledger_on(store, UsageConfig::default());
    ledger.record(&req(5_000, "a", "m", 1, 0)).unwrap();
    ledger.record(&req(59_999, "a", "m", 2, 0)).unwrap();
    ledger.record(&req(MINUTE_MS, "b", "m", 4, 0)).unwrap();
    ledger.record(&req(HOUR_MS + 1, "a", "m", 8, 0)).unwrap();
    ledger.record(&req(DAY_MS, "a", "m", 16, 0)).unwrap(); // outside the day
    ledger.flush().await.unwrap();
    ledger.record(&req(HOUR_MS + 2, "b", "m", 32, 0)).unwrap();
    let points = |p: Vec<SeriesPoint>| -> Vec<(i64, u64)> {
        p.into_iter()
            .map(|p| (p.time.as_millis() - T0, p.usage.input_tokens))
            .collect()
    };
    let minute = ledger
        .series(day(), Granularity::Minute, None)
        .await
        .unwrap();
    assert_eq!(points(minute), vec![(0, 3), (MINUTE_MS, 4), (HOUR_MS, 40)]);
    let hour = ledger.series(day(), Granularity::Hour, None).await.unwrap();
    assert_eq!(points(hour), vec![(0, 7), (HOUR_MS, 40)]);
    let two_days = TimeRange::new(at(0), at(2 * DAY_MS));
    let daily = ledger
        .series(two_days, Granularity::Day, Some("a"))
        .await
        .unwrap();
    assert_eq!(points(daily), vec![(0, 11), (DAY_MS, 16)]);
    let by_tenant = ledger
        .series_by_tenant(day(), Granularity::Hour)
        .await
        .unwrap();
    let flat: Vec<(String, Vec<(i64, u64)>)> = by_tenant
        .into_iter()
        .map(|t| (t.tenant, points(t.points)))
        .collect();
    assert_eq!(
        flat,
        vec![
            ("a".to_owned(), vec![(0, 3), (HOUR_MS, 8)]),
            ("b".to_owned(), vec![(0, 4), (HOUR_MS, 32)]),
        ]
    );
    // A range is resolved per minute: a minute counts when it starts inside.
    let from_mid_minute = TimeRange::new(at(1), at(HOUR_MS));
    let p = ledger
        .series(from_mid_minute, Granularity::Minute, None)
        .await
        .unwrap();
    assert_eq!(points(p), vec![(MINUTE_MS, 4)]);
}

#[tokio::test]
async fn outcomes_cache_and_currencies_are_counted() {
    let store = Flaky::new();
    let ledger = ledger_on(store, UsageConfig::default());
    let usd = Pricing::usd(2.0, 4.0);
    let eur = Pricing {
        currency: "EUR".into(),
        ..Pricing::usd(1.0, 1.0)
    };
    let base = |model: &str| UsageRecord {
        key_id: Some("key_1".into()),
        input_tokens: 1_000,
        output_tokens: 500,
        cached_tokens: 100,
        ..UsageRecord::new(at(0), "acme", model)
    };
    ledger
        .record(&UsageRecord {
            cache: Some(CacheOutcome::Hit),
            pricing: Some(usd.clone()),
            ..base("m1")
        })
        .unwrap();
    ledger
        .record(&UsageRecord {
            cache: Some(CacheOutcome::Miss),
            outcome: RequestOutcome::Error,
            estimated: true,
            pricing: Some(usd.clone()),
            ..base("m1")
        })
        .unwrap();
    ledger
        .record(&UsageRecord {
            outcome: RequestOutcome::Cancelled,
            pricing: Some(eur.clone()),
            key_id: None,
            ..base("m2")
        })
        .unwrap();
    ledger.record(&base("m3")).unwrap(); // unpriced
    let rows = ledger
        .totals(day(), GroupBy::Tenant, &UsageScope::default())
        .await
        .unwrap();
    let u = &rows[0].usage;
    assert_eq!(
        (u.requests, u.errors, u.cancelled, u.estimated),
        (4, 1, 1, 1)
    );
    assert_eq!(
        (u.input_tokens, u.output_tokens, u.cached_tokens),
        (4_000, 2_000, 400)
    );
    assert_eq!((u.cache_hits, u.cache_misses), (1, 1));
    // USD: 2 × (1000 × 2 + 500 × 4) / 10⁶ = 0.008; EUR: 1500 / 10⁶.
    assert_eq!(u.cost_nanos("USD"), 8_000_000);
    assert_eq!(u.cost("EUR"), 0.0015);
    assert_eq!(u.costs.len(), 2);
    let by_key = ledger
        .totals(day(), GroupBy::Key, &UsageScope::default())
        .await
        .unwrap();
    let keys: Vec<(&str, u64)> = by_key
        .iter()
        .map(|r| (r.group.as_str(), r.usage.requests))
        .collect();
    assert_eq!(keys, vec![("", 1), ("key_1", 3)]);
    let only_m1 = ledger
        .totals(day(), GroupBy::Key, &UsageScope::model("m1"))
        .await
        .unwrap();
    assert_eq!(only_m1.len(), 1);
    assert_eq!(only_m1[0].usage.requests, 2);
    let cache = ledger.cache(day()).await.unwrap();
    assert_eq!(
        cache,
        vec![CacheRow {
            model: "m1".into(),
            hits: 1,
            misses: 1
        }]
    );
    let costs = ledger.costs(day(), GroupBy::Model).await.unwrap();
    let c: Vec<(&str, &str, u64, u64)> = costs
        .iter()
        .map(|r| (r.group.as_str(), r.currency.as_str(), r.nanos, r.requests))
        .collect();
    assert_eq!(
        c,
        vec![("m1", "USD", 8_000_000, 2), ("m2", "EUR", 1_500_000, 1)]
    );
    assert_eq!(costs[0].amount, 0.008);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_records_and_flushes_count_exactly_once() {
    let store = Flaky::new();
    let ledger = ledger_on(store.clone(), UsageConfig::default());
    let mut tasks = Vec::new();
    for t in 0..8 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..5_000i64 {
                let tenant = format!("t{}", (t + i) % 5);
                ledger
                    .record(&req(i % 7 * MINUTE_MS, &tenant, "m", 1, 2))
                    .unwrap();
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    let flusher = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            for _ in 0..50 {
                ledger.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    flusher.await.unwrap();
    ledger.flush().await.unwrap();
    let stored = store.stored().await;
    assert_eq!(stored.iter().map(|b| b.sums.requests).sum::<u64>(), 40_000);
    assert_eq!(
        stored.iter().map(|b| b.sums.output_tokens).sum::<u64>(),
        80_000
    );
    assert_eq!(ledger.status().pending_usage, 0);
}
