//! The Unkey-compatible key API through its router, each route beside the
//! trivial one of the same router in the same run (group `unkey_http`):
//!
//! - `liveness`: `GET /v1/liveness` through `oneshot` (request id, tracing
//!   span, body limit, a small JSON body): the floor of any route;
//! - `verify_key`: `POST /v1/keys.verifyKey` of a valid key among 1,000
//!   (memory backend, cached, a usage ledger attached as in production,
//!   nothing flushed while measuring), with `apiId`: JSON body parsed,
//!   key verified, response serialized. Goal: at least 60% of the
//!   trivial route's throughput, i.e. a time at most 1/0.6 of `liveness`;
//! - `verify_key_core`: [`RootKeys::verify`] of the same keys without
//!   HTTP, what the route adds to.
//!
//! Each HTTP iteration builds its request, clones the router (reference
//! counts) and reads the whole response body.
//!
//! `cargo bench -- unkey_http/`; `-- --test` runs each once.
//!
//! [`RootKeys::verify`]: maas::core::RootKeys::verify

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::Pick;
use criterion::{Criterion, criterion_group};
use http_body_util::BodyExt;
use maas::core::ratelimit::RateLimitConfig;
use maas::core::usage::{UsageConfig, UsageLedger};
use maas::core::{
    KeyHasher, KeyService, NewKey, RateLimiter, RootAuth, RootKeys, SystemClock, VerifyOptions,
};
use maas::memory::MemoryStore;
use maas_http::unkey::{self, UnkeyState};
use tokio::runtime::Runtime;
use tower::ServiceExt;

const KEYS: usize = 1_000;

fn rt() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn call(router: &Router, req: Request<Body>) -> usize {
    let res = router.clone().oneshot(req).await.unwrap();
    debug_assert_eq!(res.status(), StatusCode::OK);
    res.into_body().collect().await.unwrap().to_bytes().len()
}

fn http(c: &mut Criterion) {
    let rt = rt();
    let storage = MemoryStore::new().storage();
    let clock = Arc::new(SystemClock);
    let keys = KeyService::new_with_clock(storage.clone(), KeyHasher::random(), clock.clone());
    let config = UsageConfig {
        flush_interval: Duration::from_secs(3600),
        ..UsageConfig::default()
    };
    let ledger = UsageLedger::new_with_clock(&storage, config, clock.clone());
    keys.attach_usage(ledger.clone()).unwrap();
    let root = RootKeys::new_with_clock(keys.clone(), clock.clone());
    let limiter = RateLimiter::with_config(storage, RateLimitConfig::default(), clock);
    let state = UnkeyState::new(root.clone(), limiter, ledger).with_admin_token("bench");
    let router = unkey::router(state);

    let (api, bodies, secrets) = rt.block_on(async {
        let api = root.create_api(&RootAuth::Admin, "bench").await.unwrap().id;
        let mut bodies = Vec::with_capacity(KEYS);
        let mut secrets = Vec::with_capacity(KEYS);
        for _ in 0..KEYS {
            let new = NewKey {
                owner_id: Some("user_123".into()),
                ..NewKey::in_keyspace(api.clone())
            };
            let k = root.create_key(&RootAuth::Admin, new).await.unwrap();
            bodies.push(format!(r#"{{"apiId":"{api}","key":"{}"}}"#, k.key));
            secrets.push(k.key);
        }
        (api, bodies, secrets)
    });
    let verify_req = |body: &String| {
        Request::post("/v1/keys.verifyKey")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.clone()))
            .unwrap()
    };
    let liveness_req = || Request::get("/v1/liveness").body(Body::empty()).unwrap();
    // Warm: every key cached, and the response is what the bench expects.
    rt.block_on(async {
        for b in &bodies {
            let res = router.clone().oneshot(verify_req(b)).await.unwrap();
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            assert!(bytes.starts_with(br#"{"keyId""#), "{bytes:?}");
            assert!(
                std::str::from_utf8(&bytes)
                    .unwrap()
                    .contains(r#""valid":true"#)
            );
        }
        assert!(call(&router, liveness_req()).await > 0);
    });

    let mut g = c.benchmark_group("unkey_http");
    g.bench_function("liveness", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(call(&router, liveness_req()).await) })
    });
    let pick = Pick::new();
    g.bench_function("verify_key", |b| {
        b.to_async(&rt).iter(|| {
            let req = verify_req(&bodies[pick.below(KEYS)]);
            let router = &router;
            async move { black_box(call(router, req).await) }
        })
    });
    let pick = Pick::new();
    let opts_api = api.clone();
    g.bench_function("verify_key_core", |b| {
        b.to_async(&rt).iter(|| {
            let key = &secrets[pick.below(KEYS)];
            let root = &root;
            let api = &opts_api;
            async move {
                let opts = VerifyOptions {
                    keyspace_id: Some(api),
                    permissions: None,
                };
                black_box(root.verify(key, &opts).await.unwrap().valid())
            }
        })
    });
    g.finish();
}

criterion_group!(benches, http);
