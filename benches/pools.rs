//! Models served by pools of upstreams (issue 22): what balancing and
//! passive health add to a request, beside the single-upstream path it
//! replaced in the same run.
//!
//! - `floor_single_upstream_url`: the old path — the URL built from the
//!   model's one `upstream_url`.
//! - `pick_record_release/N`: the new path for a pool of N upstreams — the
//!   pool looked up for the model, an upstream picked (weighted least
//!   outstanding over the healthy ones), the URL built, the answer reported
//!   (health), the pick released. Goal: adds ≤ 2 µs.
//! - `fairshare_uncontended/{default,model}`: a fair-share slot taken and
//!   given back in the default pool and in a model's own pool.
//!
//! `cargo bench -- pools/`; `-- --test` runs each once.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group};
use maas::core::fairshare::{Admission, FairShare, FairShareConfig, Request};
use maas::core::model::{Model, ModelApi, Upstream};
use maas::core::upstream::{BalancerConfig, Outcome, Upstreams};
use maas::core::{SystemClock, Timestamp};

fn model(upstreams: usize) -> Model {
    let pool: Vec<Upstream> = (0..upstreams)
        .map(|i| Upstream {
            url: format!("http://10.0.0.{i}:8000"),
            weight: 1 + (i as u32 % 3),
            max_in_flight: None,
        })
        .collect();
    Model {
        id: "llama-3-70b".into(),
        name: "llama".into(),
        upstream_url: pool[0].url.clone(),
        upstreams: pool,
        max_in_flight: None,
        fallbacks: Vec::new(),
        api: vec![ModelApi::Openai],
        owned_by: "o".into(),
        created: Timestamp::from_millis(0),
        ready: true,
        tiers: Vec::new(),
        pricing: None,
        cache: Default::default(),
        created_at: Timestamp::from_millis(0),
        updated_at: Timestamp::from_millis(0),
        version: 1,
    }
}

const SUFFIX: &str = "/v1/chat/completions";

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pools");
    let one = model(1);
    g.bench_function("floor_single_upstream_url", |b| {
        b.iter(|| {
            let m = black_box(&one);
            black_box(format!("{}{SUFFIX}", m.upstream_url.trim_end_matches('/')))
        })
    });
    let upstreams = Upstreams::new(BalancerConfig::default(), Arc::new(SystemClock));
    for n in [1usize, 3, 16] {
        let m = model(n);
        g.bench_function(format!("pick_record_release/{n}"), |b| {
            b.iter(|| {
                let pool = upstreams.pool(black_box(&m));
                let mut pick = pool.pick().unwrap();
                let url = format!("{}{SUFFIX}", pick.url().trim_end_matches('/'));
                black_box(url);
                pick.record(Outcome::Answered);
                drop(pick);
            })
        });
    }
    let fair = FairShare::new(FairShareConfig::default()).unwrap();
    let name: Arc<str> = Arc::from("llama-3-70b");
    for (id, pooled) in [("default", false), ("model", true)] {
        g.bench_function(format!("fairshare_uncontended/{id}"), |b| {
            b.iter(|| {
                let mut r = Request::new("tenant-1", 256, 256);
                if pooled {
                    r = r.in_pool(Arc::clone(&name), None);
                }
                let Ok(Admission::Admitted(p)) = fair.try_acquire(r) else {
                    panic!("expected a slot");
                };
                drop(black_box(p));
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
