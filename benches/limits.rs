//! Rate-limit decisions and admission, each beside its peer or floor
//! measured in the same run.
//!
//! Group `ratelimit_decision/100k` (memory backend, 100,000 identifiers, a
//! random one per iteration, limits never reached so every decision takes):
//! - `governor_keyed`: governor's keyed limiter (`check_key` on a
//!   `DefaultKeyedStateStore<String>`), the peer;
//! - `maas_fast`: [`RateLimiter::limit`] with `async: true` (decided in
//!   process, on a counter seeded from the store), given a request built
//!   from the same identifier string (as a caller does: one copy of it).
//!   Goal: at most 1.5 times governor;
//! - `maas_consistent`: the same with `async: false` (one atomic reservation
//!   in the store per decision).
//!
//! Group `admission` (memory backend, 1,000 tenants, a random one per
//! iteration):
//! - `reserve_reconcile_3_limits`: [`AdmissionLimits::reserve`] of one
//!   request against the tier's requests and tokens per minute and the
//!   tenant's quota, then [`Reservation::reconcile`]. Goal: median ≤ 1 µs;
//! - `dashmap_3_updates`: three `DashMap` entry updates of the same ids, the
//!   least touching three counters can cost.
//!
//! `cargo bench -- "ratelimit|admission"`; `cargo bench -- "ratelimit|admission" --test` runs
//! each once.
//!
//! [`Reservation::reconcile`]: maas::core::Reservation::reconcile

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;

use common::Pick;
use criterion::{Criterion, criterion_group};
use dashmap::DashMap;
use governor::{Quota, RateLimiter as Governor};
use maas::core::ratelimit::{LimitRequest, RateLimiter};
use maas::core::tier::{ModelAccess, Tier};
use maas::core::{
    ActualUsage, AdmissionLimits, AdmissionRequest, NewTenant, SystemClock, TenantService,
    Timestamp,
};
use maas::memory::MemoryStore;
use tokio::runtime::Runtime;

const IDENTIFIERS: usize = 100_000;
const TENANTS: usize = 1_000;

fn rt() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn ratelimit(c: &mut Criterion) {
    let rt = rt();
    let ids: Vec<String> = (0..IDENTIFIERS).map(|i| format!("user_{i:06}")).collect();
    let mut g = c.benchmark_group(format!("ratelimit_decision/{}", common::label(IDENTIFIERS)));

    let quota = Quota::per_minute(NonZeroU32::new(1_000_000_000).unwrap());
    let governor = Governor::keyed(quota);
    for id in &ids {
        governor.check_key(id).unwrap();
    }
    let pick = Pick::new();
    g.bench_function("governor_keyed", |b| {
        b.iter(|| {
            let id = &ids[pick.below(IDENTIFIERS)];
            black_box(governor.check_key(id).is_ok())
        })
    });

    for fast in [true, false] {
        let limiter = RateLimiter::new(MemoryStore::new().storage());
        // The request a caller builds from the identifier it holds (the
        // same string governor is given).
        let request = |id: &String| LimitRequest {
            namespace: None,
            identifier: id.clone(),
            limit: 1_000_000_000,
            duration: 60_000,
            cost: None,
            fast,
        };
        rt.block_on(async {
            for id in &ids {
                assert!(limiter.limit(&request(id)).await.unwrap().success);
            }
        });
        let pick = Pick::new();
        let name = if fast { "maas_fast" } else { "maas_consistent" };
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let r = request(&ids[pick.below(IDENTIFIERS)]);
                let limiter = &limiter;
                async move { black_box(limiter.limit(&r).await.unwrap().success) }
            })
        });
    }
    g.finish();
}

/// One request of 200 prompt tokens and up to 256 output tokens, admitted
/// and reconciled with 300 tokens used.
async fn admit_once(limits: &AdmissionLimits, tier: &Tier, tenant: &str) {
    let r = AdmissionRequest {
        tenant,
        key_id: None,
        tier,
        pricing: None,
        prompt_tokens: 200,
        max_tokens: Some(256),
    };
    let held = limits.reserve(&r).await.unwrap().unwrap();
    let usage = ActualUsage {
        input_tokens: 200,
        output_tokens: 100,
        cached_tokens: 0,
    };
    held.reconcile(usage).await.unwrap();
}

fn admission(c: &mut Criterion) {
    let rt = rt();
    let storage = MemoryStore::new().storage();
    let names: Vec<&'static str> = (0..TENANTS)
        .map(|i| &*format!("tenant_{i:04}").leak())
        .collect();
    let tenants = TenantService::new(storage.clone());
    rt.block_on(async {
        for n in &names {
            tenants
                .create(
                    &maas::core::Actor::new("bench"),
                    NewTenant {
                        name: (*n).to_owned(),
                        tokens_per_minute: Some(u64::MAX / 4),
                        ..NewTenant::default()
                    },
                )
                .await
                .unwrap();
        }
    });
    let tier = Tier {
        name: "bench".into(),
        level: 0,
        groups: vec!["g".into()],
        requests_per_minute: u64::MAX / 4,
        tokens_per_minute: u64::MAX / 4,
        max_tokens_per_request: Some(512),
        models: ModelAccess::All,
        created_at: Timestamp::EPOCH,
        updated_at: Timestamp::EPOCH,
        version: 1,
    };
    let limits = AdmissionLimits::with_config(
        storage,
        maas::core::AdmissionConfig {
            tenant_ttl: std::time::Duration::from_secs(3600),
            ..Default::default()
        },
        Arc::new(SystemClock),
    );
    let request = |tenant: &'static str| admit_once(&limits, &tier, tenant);
    rt.block_on(async {
        for n in &names {
            request(n).await;
        }
    });

    let mut g = c.benchmark_group("admission");
    let pick = Pick::new();
    g.bench_function("reserve_reconcile_3_limits", |b| {
        b.to_async(&rt).iter(|| request(names[pick.below(TENANTS)]))
    });

    let floor: DashMap<String, u64> = DashMap::new();
    let ids: Vec<[String; 3]> = names
        .iter()
        .map(|n| {
            [
                format!("rpm\x1f{n}"),
                format!("tpm\x1f{n}"),
                format!("quota\x1f{n}"),
            ]
        })
        .collect();
    for [a, b, c] in &ids {
        for k in [a, b, c] {
            floor.insert(k.clone(), 0);
        }
    }
    let pick = Pick::new();
    g.bench_function("dashmap_3_updates", |b| {
        b.iter(|| {
            for k in &ids[pick.below(TENANTS)] {
                *floor.get_mut(k.as_str()).unwrap() += 1;
            }
        })
    });
    g.finish();
}

criterion_group!(benches, ratelimit, admission);
