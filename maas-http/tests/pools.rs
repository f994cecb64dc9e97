//! Models served by pools of upstreams, end to end over loopback: weighted
//! balancing, an upstream killed mid-run, retries (once, never after the
//! first byte), the retry budget, fallbacks billed as the fallback, and
//! per-model capacity. Each upstream is a small OpenAI-compatible server
//! on its own runtime and thread, so killing it closes every connection
//! it had, as a crashed process would. Time for health is a manual clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use maas_core::admission::AdmissionLimits;
use maas_core::fairshare::{FairShare, FairShareConfig};
use maas_core::gateway::{Gateway, GatewayServices};
use maas_core::identity::{Identity, StaticTokens};
use maas_core::model::Upstream;
use maas_core::scheduling::Scheduling;
use maas_core::upstream::{BalancerConfig, HealthState};
use maas_core::usage::{GroupBy, TimeRange, UsageConfig, UsageLedger, UsageScope, UsageSummary};
use maas_core::{
    Actor, Clock, ManualClock, ModelService, NewModel, Pricing, Storage, TierService, Timestamp,
};
use maas_http::gateway::{GatewayConfig, router};
use serde_json::{Value, json};

/// 2025-03-12T10:00:00Z.
const T0: i64 = 1_741_773_600_000;

const OK: u8 = 0;
const FAIL: u8 = 1;
/// Sends the head and one chunk of a stream, then breaks the connection.
const PARTIAL: u8 = 2;
const HANG: u8 = 3;

/// An upstream on its own runtime: `kill` drops the runtime, closing its
/// listener and every connection.
struct Fake {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    mode: Arc<AtomicU8>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone)]
struct FakeState {
    hits: Arc<AtomicUsize>,
    mode: Arc<AtomicU8>,
}

async fn answer(State(s): State<FakeState>, body: axum::body::Bytes) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = req["model"].as_str().unwrap_or("?").to_owned();
    let stream = req["stream"].as_bool().unwrap_or(false);
    match s.mode.load(Ordering::SeqCst) {
        FAIL => (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response(),
        HANG => std::future::pending().await,
        PARTIAL => {
            let first = format!(
                "data: {}\n\n",
                json!({"id": "c", "object": "chat.completion.chunk", "model": model,
                    "choices": [{"index": 0, "delta": {"content": "Hel"}}]})
            );
            // The break comes once the first chunk is on the wire.
            let chunks = futures_util::stream::iter(vec![true, false]).then(move |ok| {
                let first = first.clone();
                async move {
                    if ok {
                        Ok(axum::body::Bytes::from(first))
                    } else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Err(std::io::Error::other("killed mid-stream"))
                    }
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(chunks))
                .unwrap()
        }
        _ if stream => {
            let chunk = json!({"id": "c", "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": {"content": "Hello"}}]});
            let usage = json!({"id": "c", "object": "chat.completion.chunk", "model": model,
                "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}});
            let text = format!("data: {chunk}\n\ndata: {usage}\n\ndata: [DONE]\n\n");
            ([("content-type", "text/event-stream")], text).into_response()
        }
        _ => axum::Json(json!({
            "id": "c", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        }))
        .into_response(),
    }
}

impl Fake {
    fn start() -> Fake {
        Fake::start_on("127.0.0.1:0".parse().unwrap())
    }

    fn start_on(addr: SocketAddr) -> Fake {
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = FakeState {
            hits: Arc::new(AtomicUsize::new(0)),
            mode: Arc::new(AtomicU8::new(OK)),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new()
            .route("/v1/chat/completions", post(answer))
            .with_state(state.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    _ = axum::serve(l, app) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection task: sockets close.
            drop(rt);
        });
        Fake {
            addr,
            hits: state.hits,
            mode: state.mode,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Rig {
    url: String,
    gateway: Gateway,
    ledger: UsageLedger,
    models: ModelService,
    clock: ManualClock,
    client: reqwest::Client,
}

async fn rig(balancing: BalancerConfig) -> Rig {
    rig_with(balancing, FairShareConfig::default().max_in_flight).await
}

/// A gateway whose global capacity is `max_in_flight`.
async fn rig_with(balancing: BalancerConfig, max_in_flight: usize) -> Rig {
    let storage: Storage = maas_store_memory::MemoryStore::new().storage();
    let clock = ManualClock::new(Timestamp::from_millis(T0));
    let c: Arc<dyn Clock> = Arc::new(clock.clone());
    let tiers = TierService::new_with_clock(storage.clone(), c.clone());
    tiers.ensure_defaults(&Actor::new("admin")).await.unwrap();
    // A tier whose limits these tests never reach.
    tiers
        .create(
            &Actor::new("admin"),
            maas_core::tier::NewTier {
                name: "bulk".into(),
                level: 100,
                groups: vec!["bulk-users".into()],
                requests_per_minute: 1_000_000,
                tokens_per_minute: 1_000_000_000,
                max_tokens_per_request: None,
                models: Default::default(),
            },
        )
        .await
        .unwrap();
    let models = ModelService::new_with_clock(storage.clone(), c.clone());
    let ledger = UsageLedger::new_with_clock(&storage, UsageConfig::default(), c.clone());
    let identity = StaticTokens::new([
        (
            "premium-token".to_owned(),
            Identity::new("penny", ["system:authenticated", "bulk-users"]),
        ),
        (
            "free-token".to_owned(),
            Identity::new("freddie", ["system:authenticated"]),
        ),
    ])
    .unwrap();
    let fs = FairShare::with_clock(
        FairShareConfig {
            max_in_flight,
            ..FairShareConfig::default()
        },
        c.clone(),
    )
    .unwrap();
    let gateway = Gateway::with_balancing(
        GatewayServices {
            identity: Arc::new(identity),
            user_keys: None,
            tiers,
            models: models.clone(),
            admission: AdmissionLimits::with_config(
                storage.clone(),
                maas_core::admission::AdmissionConfig::default(),
                c.clone(),
            ),
            scheduling: Scheduling::new(storage.clone(), fs, c.clone()),
            usage: Some(ledger.clone()),
            webhooks: None,
        },
        c,
        balancing,
    );
    let app = router(gateway.clone(), GatewayConfig::default());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    Rig {
        url: format!("http://{a}"),
        gateway,
        ledger,
        models,
        clock,
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
    }
}

fn pool(urls: &[(&Fake, u32)]) -> Vec<Upstream> {
    urls.iter()
        .map(|(f, w)| Upstream {
            url: f.url(),
            weight: *w,
            max_in_flight: None,
        })
        .collect()
}

impl Rig {
    async fn model(&self, id: &str, upstreams: Vec<Upstream>, change: impl FnOnce(&mut NewModel)) {
        let mut m = NewModel::new(id, "");
        m.upstreams = upstreams;
        change(&mut m);
        self.models.create(&Actor::new("admin"), m).await.unwrap();
    }

    async fn chat(&self, model: &str) -> reqwest::Response {
        self.send(model, false).await
    }

    async fn send(&self, model: &str, stream: bool) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth("premium-token")
            .header("content-type", "application/json")
            .body(
                json!({
                    "model": model,
                    "messages": [{"role": "user", "content": "Hello"}],
                    "max_tokens": 8,
                    "stream": stream,
                })
                .to_string(),
            )
            .send()
            .await
            .unwrap()
    }

    async fn usage(&self, model: &str) -> UsageSummary {
        self.gateway.settled().await;
        let range = TimeRange::new(
            Timestamp::from_millis(T0 - 3_600_000),
            Timestamp::from_millis(T0 + 3_600_000),
        );
        self.ledger
            .totals(range, GroupBy::Model, &UsageScope::default())
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.group == model)
            .map(|r| r.usage)
            .unwrap_or_default()
    }

    fn states(&self, model: &str) -> Vec<HealthState> {
        self.gateway
            .upstreams()
            .snapshot()
            .into_iter()
            .find(|p| p.model == model)
            .map(|p| p.upstreams.iter().map(|u| u.state).collect())
            .unwrap_or_default()
    }
}

#[tokio::test]
async fn weighted_balancing_over_a_thousand_requests() {
    let r = rig(BalancerConfig::default()).await;
    let (a, b) = (Fake::start(), Fake::start());
    r.model("m", pool(&[(&a, 1), (&b, 3)]), |_| {}).await;
    for _ in 0..1000 {
        assert_eq!(r.chat("m").await.status(), 200);
    }
    let (ha, hb) = (a.hits(), b.hits());
    assert_eq!(ha + hb, 1000);
    assert!(
        (675..=825).contains(&hb),
        "b (weight 3) served {hb} of 1000"
    );
    assert!(
        (225..=275).contains(&ha),
        "a (weight 1) served {ha} of 1000"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_killed_mid_run_costs_no_client_error_and_comes_back() {
    let r = Arc::new(rig(BalancerConfig::default()).await);
    let (a, b) = (Fake::start(), Fake::start());
    let mut c = Fake::start();
    let c_addr = c.addr;
    r.model("m", pool(&[(&a, 1), (&b, 1), (&c, 1)]), |_| {})
        .await;
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (r, done) = (r.clone(), done.clone());
            tokio::spawn(async move {
                let mut failed = Vec::new();
                for _ in 0..75 {
                    let res = r.chat("m").await;
                    let status = res.status();
                    if status != 200 {
                        let text = res.text().await.unwrap_or_default();
                        failed.push((status, text.chars().take(200).collect::<String>()));
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
                failed
            })
        })
        .collect();
    // Kill c once a third of the requests are served.
    for _ in 0..1000 {
        if done.load(Ordering::SeqCst) >= 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let c_before = c.hits();
    c.kill();
    let mut failed = Vec::new();
    for w in workers {
        failed.extend(w.await.unwrap());
    }
    assert!(
        failed.is_empty(),
        "{} client-visible errors, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(c_before > 0, "c served before it was killed");
    assert_eq!(
        r.states("m"),
        [
            HealthState::Healthy,
            HealthState::Healthy,
            HealthState::Ejected
        ],
        "c ejected after failing"
    );
    // While ejected nothing is sent to it: every request goes to a or b.
    let ab = a.hits() + b.hits();
    for _ in 0..10 {
        assert_eq!(r.chat("m").await.status(), 200);
    }
    assert_eq!(a.hits() + b.hits(), ab + 10);

    // c comes back; after its backoff one request probes it, and it is
    // back in the rotation.
    let c = Fake::start_on(c_addr);
    r.clock.advance(Duration::from_secs(10));
    assert_eq!(r.states("m")[2], HealthState::HalfOpen);
    for _ in 0..9 {
        assert_eq!(r.chat("m").await.status(), 200);
    }
    assert_eq!(r.states("m")[2], HealthState::Healthy);
    assert!(c.hits() >= 2, "c serves again: {}", c.hits());
}

#[tokio::test]
async fn a_failed_attempt_is_retried_once_on_another_upstream_never_after_the_first_byte() {
    let r = rig(BalancerConfig::default()).await;
    let (a, b) = (Fake::start(), Fake::start());
    r.model("m", pool(&[(&a, 1), (&b, 1)]), |m| {
        m.pricing = Some(Pricing::usd(1.0, 2.0));
    })
    .await;
    // a fails: the request is served by b, charged once.
    a.set(FAIL);
    for _ in 0..2 {
        let res = r.chat("m").await;
        assert_eq!(res.status(), 200);
    }
    assert_eq!(a.hits(), 1, "a tried once (then b first)");
    assert_eq!(b.hits(), 2);
    let u = r.usage("m").await;
    assert_eq!((u.requests, u.errors), (2, 0), "one record per request");
    assert_eq!((u.input_tokens, u.output_tokens), (10, 4));

    // Both fail: 502 after exactly two attempts, nothing charged.
    b.set(FAIL);
    let (ha, hb) = (a.hits(), b.hits());
    let res = r.chat("m").await;
    assert_eq!(res.status(), 502);
    let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "upstream_error");
    assert_eq!(a.hits() + b.hits(), ha + hb + 2, "one retry, no more");

    // A stream that broke after its first byte is not retried: the client
    // has its first chunk, the other upstream is not called.
    a.set(PARTIAL);
    b.set(PARTIAL);
    let (ha, hb) = (a.hits(), b.hits());
    let res = r.send("m", true).await;
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut text = String::new();
    while let Some(Ok(chunk)) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.contains("Hel"),
        "the first chunk reached the client: {text}"
    );
    assert_eq!(
        a.hits() + b.hits(),
        ha + hb + 1,
        "never retried after the first byte"
    );
}

#[tokio::test]
async fn the_retry_budget_caps_retries_during_a_full_outage() {
    // Ejection off: every attempt reaches a failing upstream.
    let r = rig(BalancerConfig {
        failures_to_eject: u32::MAX,
        ..BalancerConfig::default()
    })
    .await;
    let ups = [Fake::start(), Fake::start(), Fake::start()];
    for u in &ups {
        u.set(FAIL);
    }
    r.model(
        "m",
        pool(&[(&ups[0], 1), (&ups[1], 1), (&ups[2], 1)]),
        |_| {},
    )
    .await;
    for _ in 0..200 {
        assert_eq!(r.chat("m").await.status(), 502);
    }
    let attempts: usize = ups.iter().map(Fake::hits).sum();
    let retries = attempts - 200;
    // 20% of the requests plus the minimum of 3 per window.
    assert!(retries <= 43, "{retries} retries for 200 requests");
    assert!(retries >= 30, "retries happen within the budget: {retries}");
}

#[tokio::test]
async fn a_fallback_is_served_and_billed_as_the_fallback() {
    let r = rig(BalancerConfig {
        failures_to_eject: 1,
        ..BalancerConfig::default()
    })
    .await;
    let (big, small) = (Fake::start(), Fake::start());
    big.set(FAIL);
    r.model("big", pool(&[(&big, 1)]), |m| {
        m.pricing = Some(Pricing::usd(100.0, 200.0));
        m.fallbacks = vec!["premium-only".into(), "small".into()];
    })
    .await;
    r.model("small", pool(&[(&small, 1)]), |m| {
        m.pricing = Some(Pricing::usd(1.0, 2.0));
    })
    .await;
    // A fallback the caller's tier may not use is skipped.
    r.model("premium-only", pool(&[(&small, 1)]), |m| {
        m.tiers = vec!["free".into()];
    })
    .await;
    // Its first failure ejects big's only upstream (no sibling to retry on).
    assert_eq!(r.chat("big").await.status(), 502);
    assert_eq!(r.states("big"), [HealthState::Ejected]);
    // Now big's requests are served by small, and say so.
    let res = r.chat("big").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-maas-served-model"], "small");
    let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(body["model"], "small", "small was asked by its own id");
    assert_eq!(big.hits(), 1);
    assert_eq!(small.hits(), 1);
    // Billed as small: its tokens at its price; big has only its failure.
    let s = r.usage("small").await;
    assert_eq!((s.requests, s.input_tokens, s.output_tokens), (1, 5, 2));
    assert!((s.cost("USD") - (5.0 * 1.0 + 2.0 * 2.0) / 1e6).abs() < 1e-12);
    let b = r.usage("big").await;
    assert_eq!((b.requests, b.errors), (1, 1));
    assert!(b.cost("USD").abs() < 1e-12);
    // A direct request to small is labelled small too.
    let res = r.chat("small").await;
    assert_eq!(res.headers()["x-maas-served-model"], "small");

    // No usable fallback: 503 with Retry-After until the probe.
    let (only, _keep) = (Fake::start(), ());
    only.set(FAIL);
    r.model("lonely", pool(&[(&only, 1)]), |m| {
        m.fallbacks = vec!["premium-only".into()];
    })
    .await;
    assert_eq!(r.chat("lonely").await.status(), 502);
    let res = r.chat("lonely").await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "10");
    let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "upstream_unavailable");
    assert_eq!(only.hits(), 1, "nothing sent while ejected");
}

/// Waits (bounded) until `model`'s slots show `(in_flight, queued)`.
async fn pool_shows(r: &Rig, model: &str, want: (usize, usize)) {
    for _ in 0..500 {
        let counts = r.gateway.fair_share().pool_counts(model);
        if counts.is_some_and(|c| (c.in_flight, c.queued) == want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{model}: {:?}, want {want:?}",
        r.gateway.fair_share().pool_counts(model)
    );
}

#[tokio::test]
async fn models_have_their_own_capacity_and_do_not_block_each_other() {
    // The global capacity is 1: each model without its own has 1 slot of
    // its own, not a share of one.
    let r = Arc::new(rig_with(BalancerConfig::default(), 1).await);
    let (slow, fast) = (Fake::start(), Fake::start());
    let (sized, sized2) = (Fake::start(), Fake::start());
    slow.set(HANG);
    sized.set(HANG);
    sized2.set(HANG);
    r.model("slow", pool(&[(&slow, 1)]), |_| {}).await;
    r.model("fast", pool(&[(&fast, 1)]), |_| {}).await;
    // Capacity from its upstreams' limits: 2 + 1.
    let limited = |u: &Fake, n| Upstream {
        url: u.url(),
        weight: 1,
        max_in_flight: Some(n),
    };
    r.model(
        "sized",
        vec![limited(&sized, 2), limited(&sized2, 1)],
        |_| {},
    )
    .await;
    let hold = |model: &'static str| {
        let r = r.clone();
        tokio::spawn(async move { r.chat(model).await.status() })
    };
    let first = hold("slow");
    pool_shows(&r, "slow", (1, 0)).await;
    let second = hold("slow");
    pool_shows(&r, "slow", (1, 1)).await;
    // slow's full queue does not hold fast back.
    for _ in 0..5 {
        let res = r.chat("fast").await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-maas-served-model"], "fast");
    }
    // sized has 3 slots of its own, filled by its upstreams' limits.
    let sized_holds: Vec<_> = (0..4).map(|_| hold("sized")).collect();
    pool_shows(&r, "sized", (3, 1)).await;
    for _ in 0..500 {
        if sized.hits() + sized2.hits() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        (sized.hits(), sized2.hits()),
        (2, 1),
        "each upstream's limit"
    );
    let live = r.gateway.fair_share().snapshot();
    let slots: Vec<(&str, usize, usize, usize)> = live
        .models
        .iter()
        .map(|m| (m.model.as_str(), m.max_in_flight, m.in_flight, m.queued))
        .collect();
    assert_eq!(
        slots,
        [("fast", 1, 0, 0), ("sized", 3, 3, 1), ("slow", 1, 1, 1)]
    );
    // Clients that give up free their slot and their place.
    first.abort();
    second.abort();
    sized_holds.iter().for_each(tokio::task::JoinHandle::abort);
    pool_shows(&r, "slow", (0, 0)).await;
    pool_shows(&r, "sized", (0, 0)).await;
}

#[tokio::test]
async fn a_fallback_is_checked_against_its_own_price_and_budget() {
    let r = rig(BalancerConfig {
        failures_to_eject: 1,
        ..BalancerConfig::default()
    })
    .await;
    let (cheap, dear) = (Fake::start(), Fake::start());
    cheap.set(FAIL);
    r.model("cheap", pool(&[(&cheap, 1)]), |m| {
        m.pricing = Some(Pricing::usd(1.0, 1.0));
        m.fallbacks = vec!["dear".into()];
    })
    .await;
    r.model("dear", pool(&[(&dear, 1)]), |m| {
        m.pricing = Some(Pricing::usd(100_000.0, 100_000.0));
    })
    .await;
    // A budget the cheap model's requests fit in, the dear one's do not.
    r.gateway
        .services()
        .admission
        .set_budget(
            &Actor::new("admin"),
            maas_core::BudgetScope::Tenant("penny".into()),
            maas_core::NewBudget {
                amount: 0.5,
                currency: None,
                period: maas_core::counter::Period::Daily,
                soft_threshold: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(r.chat("cheap").await.status(), 502, "fits the budget");
    assert_eq!(r.states("cheap"), [HealthState::Ejected]);
    // Served by the fallback, the request is checked at the fallback's price.
    let res = r.chat("cheap").await;
    assert_eq!(res.status(), 429);
    let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert_eq!(dear.hits(), 0, "nothing sent to the fallback");
}
