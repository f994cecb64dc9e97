//! Allocations per request on the gateway's plain chat path (issue 24),
//! counted by a global allocator of this bench's own: `cargo bench --bench
//! allocs` prints them (and writes `target/load/allocs.json` for
//! BENCHMARKS.md).
//!
//! The gateway's service (`maas_http::gateway::service`, what the example
//! server hands the gateway's paths to; memory store, usage recorded, a
//! static token, the instant simulator as the upstream on loopback)
//! answers 2,000 plain chat completions (`ALLOCS_REQUESTS`: another
//! count), each sent with `oneshot`
//! (no client or server socket on the inbound side). Beside it, the floor:
//! the same request sent straight to the simulator by hyper-util's pooled
//! client (hyper's HTTP/1.1 connections, as the gateway's own client),
//! which is the upstream hop the gateway makes. The difference is what
//! maas adds.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, header};
use http_body_util::BodyExt as _;
use maas::core::admission::{AdmissionConfig, AdmissionLimits};
use maas::core::fairshare::{FairShare, FairShareConfig};
use maas::core::gateway::{Gateway, GatewayServices};
use maas::core::identity::{Identity, StaticTokens};
use maas::core::scheduling::Scheduling;
use maas::core::tier::NewTier;
use maas::core::{Actor, Clock, ModelService, NewModel, Storage, SystemClock, TierService};
use maas_http::gateway::{GatewayConfig, service};
use maas_http::simulator::{self, SimulatorConfig};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tower::ServiceExt as _;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const BODY: &str = r#"{"model":"simulator","messages":[{"role":"user","content":"Hello, how are you?"}],"max_tokens":16}"#;

/// Allocations (with reallocations) and bytes allocated so far.
fn counts() -> (u64, u64) {
    let s = GLOBAL.stats();
    (
        (s.allocations + s.reallocations) as u64,
        (s.bytes_allocated + s.bytes_reallocated.max(0) as usize) as u64,
    )
}

fn main() {
    // `cargo test --benches` runs bench targets with `--test`: nothing to count.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let requests: u64 = std::env::var("ALLOCS_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim_url = format!("http://{}", l.local_addr().unwrap());
        let sim = SimulatorConfig {
            tokens_per_second: 0.0,
            max_concurrent: 64,
            ..SimulatorConfig::default()
        };
        tokio::spawn(simulator::serve(l, sim, std::future::pending()));

        let storage: Storage = maas_store_memory::MemoryStore::new().storage();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let admin = Actor::new("allocs");
        let tiers = TierService::new_with_clock(storage.clone(), clock.clone());
        tiers
            .create(
                &admin,
                NewTier {
                    name: "bulk".into(),
                    level: 1,
                    groups: vec!["bulk".into()],
                    requests_per_minute: 1_000_000_000,
                    tokens_per_minute: 1_000_000_000_000,
                    max_tokens_per_request: None,
                    models: Default::default(),
                },
            )
            .await
            .unwrap();
        let models = ModelService::new_with_clock(storage.clone(), clock.clone());
        models
            .create(&admin, NewModel::new("simulator", sim_url.clone()))
            .await
            .unwrap();
        let identity =
            StaticTokens::new([("bench-token".to_owned(), Identity::new("bench", ["bulk"]))])
                .unwrap();
        let fair = FairShare::with_clock(FairShareConfig::default(), clock.clone()).unwrap();
        let gateway = Gateway::new(
            GatewayServices {
                identity: Arc::new(identity),
                user_keys: None,
                tiers,
                models,
                admission: AdmissionLimits::with_config(
                    storage.clone(),
                    AdmissionConfig::default(),
                    clock.clone(),
                ),
                scheduling: Scheduling::new(storage.clone(), fair, clock.clone()),
                // As the example server: usage recorded (memory store).
                usage: Some(maas::core::usage::UsageLedger::new_with_clock(
                    &storage,
                    maas::core::usage::UsageConfig::default(),
                    clock.clone(),
                )),
                webhooks: None,
            },
            clock,
        );
        // What the example server serves its gateway paths with.
        let app = service(gateway, GatewayConfig::default());
        let through_gateway = || {
            let app = app.clone();
            async move {
                let req = Request::post("/v1/chat/completions")
                    .header(header::AUTHORIZATION, "Bearer bench-token")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(BODY))
                    .unwrap();
                let res = app.oneshot(req).await.unwrap();
                assert!(res.status().is_success(), "{}", res.status());
                res.into_body().collect().await.unwrap();
            }
        };
        let client = hyper_util::client::legacy::Client::builder(
            hyper_util::rt::TokioExecutor::new(),
        )
        .build_http::<http_body_util::Full<axum::body::Bytes>>();
        let url: axum::http::Uri = format!("{sim_url}/v1/chat/completions").parse().unwrap();
        let direct = || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let req = Request::post(url)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(http_body_util::Full::new(axum::body::Bytes::from_static(
                        BODY.as_bytes(),
                    )))
                    .unwrap();
                let res = client.request(req).await.unwrap();
                assert!(res.status().is_success());
                res.into_body().collect().await.unwrap();
            }
        };
        // Warm both paths (pools, caches, lazily built state).
        for _ in 0..200 {
            through_gateway().await;
            direct().await;
        }
        // `ALLOCS_ONLY=gateway` (or `direct`) sends only that path's
        // requests and prints nothing: for a profiler (`heaptrack`) to
        // tell the call sites of one path from the other's, or to count
        // instructions (scripts/load/instructions.sh).
        match std::env::var("ALLOCS_ONLY").as_deref() {
            Ok("gateway") => {
                for _ in 0..requests {
                    through_gateway().await;
                }
                return;
            }
            Ok("direct") => {
                for _ in 0..requests {
                    direct().await;
                }
                return;
            }
            _ => {}
        }
        let before = counts();
        for _ in 0..requests {
            direct().await;
        }
        let floor = counts();
        for _ in 0..requests {
            through_gateway().await;
        }
        let after = counts();
        let per = |a: (u64, u64), b: (u64, u64)| {
            let n = requests.max(1);
            ((b.0 - a.0) / n, (b.1 - a.1) / n)
        };
        let (floor_allocs, floor_bytes) = per(before, floor);
        let (gw_allocs, gw_bytes) = per(floor, after);
        println!(
            "allocations per plain chat request: gateway {gw_allocs} ({gw_bytes} bytes), \
             the upstream hop alone {floor_allocs} ({floor_bytes} bytes): maas adds {} ({} bytes)",
            gw_allocs.saturating_sub(floor_allocs),
            gw_bytes.saturating_sub(floor_bytes)
        );
        let json = format!(
            r#"{{"requests":{requests},"gateway_allocs":{gw_allocs},"gateway_bytes":{gw_bytes},"floor_allocs":{floor_allocs},"floor_bytes":{floor_bytes}}}"#
        );
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/load");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("allocs.json"), json).unwrap();
    });
}
