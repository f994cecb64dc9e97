//! The inference gateway end to end over loopback: the gateway router and
//! the simulator served on random ports, a real HTTP client, a manual clock
//! for the limits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use maas_core::admission::AdmissionLimits;
use maas_core::fairshare::{FairShare, FairShareConfig};
use maas_core::gateway::{Gateway, GatewayServices};
use maas_core::identity::{Identity, StaticTokens};
use maas_core::model::CacheSettings;
use maas_core::scheduling::Scheduling;
use maas_core::usage::{GroupBy, TimeRange, UsageConfig, UsageLedger, UsageScope, UsageSummary};
use maas_core::{
    Actor, Clock, KeyHasher, KeyService, ManualClock, ModelService, NewModel, Storage, TierService,
    Timestamp, UserKeys,
};
use maas_http::gateway::{GatewayConfig, router};
use maas_http::simulator::{self, SimulatorConfig};
use serde_json::{Value, json};

/// 2025-03-12T10:00:00Z.
const T0: i64 = 1_741_773_600_000;

struct Rig {
    url: String,
    gateway: Gateway,
    ledger: UsageLedger,
    models: ModelService,
    clock: ManualClock,
    user_keys: UserKeys,
    client: reqwest::Client,
}

async fn listen() -> (tokio::net::TcpListener, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// A gateway over the memory store, its simulator generating at `tps`
/// tokens per second (0: at once), with `upstream` overriding the
/// simulator's URL for the `simulator` model.
async fn rig_with(tps: f64, upstream: Option<String>, timeout: Duration) -> Rig {
    let storage: Storage = maas_store_memory::MemoryStore::new().storage();
    let clock = ManualClock::new(Timestamp::from_millis(T0));
    let c: Arc<dyn Clock> = Arc::new(clock.clone());
    let admin = Actor::new("admin");

    let (sl, sa) = listen().await;
    let sim = SimulatorConfig {
        tokens_per_second: tps,
        max_concurrent: 8,
        default_max_tokens: 16,
        ..SimulatorConfig::default()
    };
    tokio::spawn(simulator::serve(sl, sim, std::future::pending()));
    let sim_url = format!("http://{sa}");

    let tiers = TierService::new_with_clock(storage.clone(), c.clone());
    tiers.ensure_defaults(&admin).await.unwrap();
    let models = ModelService::new_with_clock(storage.clone(), c.clone());
    let mut m = NewModel::new("simulator", upstream.unwrap_or_else(|| sim_url.clone()));
    m.pricing = Some(maas_core::Pricing::usd(1.0, 2.0));
    models.create(&admin, m).await.unwrap();
    let mut p = NewModel::new("simulator-premium", sim_url.clone());
    p.tiers = vec!["premium".into(), "enterprise".into()];
    models.create(&admin, p).await.unwrap();

    let keys = KeyService::new_with_clock(storage.clone(), KeyHasher::random(), c.clone());
    let user_keys = UserKeys::new_with_clock(keys, c.clone());
    let ledger = UsageLedger::new_with_clock(&storage, UsageConfig::default(), c.clone());
    let identity = StaticTokens::new([
        (
            "free-token".to_owned(),
            Identity::new("freddie", ["system:authenticated"]),
        ),
        (
            "premium-token".to_owned(),
            Identity::new("penny", ["system:authenticated", "premium-users"]),
        ),
    ])
    .unwrap();
    let fs = FairShare::with_clock(
        FairShareConfig {
            max_in_flight: 4,
            ..FairShareConfig::default()
        },
        c.clone(),
    )
    .unwrap();
    let gateway = Gateway::new(
        GatewayServices {
            identity: Arc::new(identity),
            user_keys: Some(user_keys.clone()),
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
    );
    let app = router(
        gateway.clone(),
        GatewayConfig {
            upstream_timeout: timeout,
            ..GatewayConfig::default()
        },
    );
    let (gl, ga) = listen().await;
    tokio::spawn(async move { axum::serve(gl, app).await });
    Rig {
        url: format!("http://{ga}"),
        gateway,
        ledger,
        models,
        clock,
        user_keys,
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
    }
}

async fn rig() -> Rig {
    rig_with(0.0, None, Duration::from_secs(30)).await
}

impl Rig {
    async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> reqwest::Response {
        let mut r = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.unwrap()
    }

    /// Posts and reads the answer as an error: (status, body).
    async fn fails(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        error_of(self.post(path, token, body).await).await
    }

    async fn usage(&self) -> UsageSummary {
        self.gateway.settled().await;
        let range = TimeRange::new(
            Timestamp::from_millis(T0 - 3_600_000),
            Timestamp::from_millis(T0 + 3_600_000),
        );
        let rows = self
            .ledger
            .totals(range, GroupBy::Model, &UsageScope::default())
            .await
            .unwrap();
        rows.into_iter()
            .find(|r| r.group == "simulator")
            .map(|r| r.usage)
            .unwrap_or_default()
    }

    /// Waits (bounded) until no request holds a slot and every settlement ran.
    async fn idle(&self) {
        for _ in 0..500 {
            if self.gateway.fair_share().counts() == (0, 0) {
                self.gateway.settled().await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("slots still held: {:?}", self.gateway.fair_share().counts());
    }
}

fn chat(model: &str, max_tokens: u64) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Hello, how are you?"}],
        "max_tokens": max_tokens,
    })
}

async fn error_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    (status, body)
}

/// Seed 002: a chat completion at the per-model URL and at `/v1`, with the
/// x-ratelimit headers and the answer's usage recorded exactly.
#[tokio::test]
async fn chat_completion_with_rate_headers_and_usage() {
    let r = rig().await;
    let res = r
        .post(
            "/simulator/v1/chat/completions",
            Some("premium-token"),
            &chat("simulator", 10),
        )
        .await;
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["x-ratelimit-limit-requests"], "20");
    assert_eq!(h["x-ratelimit-remaining-requests"], "19");
    assert_eq!(h["x-ratelimit-limit-tokens"], "50000");
    assert!(h.contains_key("x-ratelimit-remaining-tokens"));
    assert!(h.contains_key("x-ratelimit-reset-requests"));
    assert!(h.contains_key("x-ratelimit-reset-tokens"));
    let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["usage"]["completion_tokens"], 10);
    let prompt = body["usage"]["prompt_tokens"].as_u64().unwrap();

    let res = r
        .post(
            "/v1/completions",
            Some("premium-token"),
            &json!({"model": "simulator", "prompt": "hi", "max_tokens": 3}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(body["object"], "text_completion");

    r.idle().await;
    let u = r.usage().await;
    assert_eq!(
        (u.requests, u.errors, u.cancelled, u.estimated),
        (2, 0, 0, 0)
    );
    assert_eq!(u.output_tokens, 13);
    assert_eq!(u.input_tokens, prompt + 1);
}

/// Streaming passes events through one by one; the usage chunk the gateway
/// asked for is removed unless the client asked for it too; usage is exact.
#[tokio::test]
async fn streaming_passes_events_and_strips_unasked_usage() {
    let r = rig().await;
    for asked in [false, true] {
        let mut body = chat("simulator", 5);
        body["stream"] = json!(true);
        if asked {
            body["stream_options"] = json!({"include_usage": true});
        }
        let res = r
            .post("/v1/chat/completions", Some("premium-token"), &body)
            .await;
        assert_eq!(res.status(), 200);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        assert!(res.headers().contains_key("x-ratelimit-remaining-tokens"));
        let text = String::from_utf8(res.bytes().await.unwrap().to_vec()).unwrap();
        let events: Vec<&str> = text
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap())
            .collect();
        assert_eq!(*events.last().unwrap(), "[DONE]");
        let usage_chunks = events
            .iter()
            .filter(|e| e.contains("\"completion_tokens\""))
            .count();
        assert_eq!(usage_chunks, usize::from(asked), "{text}");
        let content = events
            .iter()
            .filter(|e| e.contains("\"content\":\""))
            .count();
        assert_eq!(content, 5);
    }
    r.idle().await;
    let u = r.usage().await;
    assert_eq!((u.requests, u.output_tokens, u.estimated), (2, 10, 0));
}

/// The simulator over HTTP/2 only (h2c, prior knowledge): its `h2c://`
/// URL and the connections it accepted.
async fn h2c_simulator() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (l, a) = listen().await;
    let app = simulator::router(SimulatorConfig {
        default_max_tokens: 16,
        ..SimulatorConfig::default()
    })
    .unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), service),
            );
        }
    });
    (format!("h2c://{a}"), accepted)
}

/// A model whose upstream speaks HTTP/2 over cleartext (`h2c://`): plain
/// and streamed answers as over HTTP/1.1, usage exact, every request on
/// one shared connection.
#[tokio::test]
async fn an_h2c_upstream_is_served_over_one_connection() {
    let (url, accepted) = h2c_simulator().await;
    let r = rig_with(0.0, Some(url), Duration::from_secs(30)).await;
    let res = r
        .post(
            "/v1/chat/completions",
            Some("premium-token"),
            &chat("simulator", 4),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-ratelimit-remaining-tokens"));
    let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["usage"]["completion_tokens"], 4);

    let mut streamed = chat("simulator", 3);
    streamed["stream"] = json!(true);
    let at_once = (0..3).map(|_| r.post("/v1/chat/completions", Some("premium-token"), &streamed));
    for res in futures_util::future::join_all(at_once).await {
        assert_eq!(res.status(), 200);
        let text = String::from_utf8(res.bytes().await.unwrap().to_vec()).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert_eq!(text.matches("\"content\":\"").count(), 3, "{text}");
    }
    r.idle().await;
    let u = r.usage().await;
    assert_eq!(
        (u.requests, u.output_tokens, u.estimated, u.errors),
        (4, 13, 0, 0)
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// An error case: path, token, body, status, error field, its value.
type ErrorCase<'a> = (&'a str, Option<&'a str>, Value, u16, &'a str, &'a str);

/// Seed 002's errors, in OpenAI's shape.
#[tokio::test]
async fn errors_in_openai_shape() {
    let r = rig().await;
    let premium_from_free = "/simulator-premium/v1/chat/completions";
    let cases: &[ErrorCase] = &[
        (
            "/v1/chat/completions",
            None,
            chat("simulator", 5),
            401,
            "code",
            "invalid_api_key",
        ),
        (
            "/v1/chat/completions",
            None,
            chat("simulator", 5),
            401,
            "type",
            "invalid_request_error",
        ),
        (
            "/v1/chat/completions",
            Some("wrong"),
            chat("simulator", 5),
            401,
            "code",
            "invalid_api_key",
        ),
        (
            "/v1/chat/completions",
            Some("free-token"),
            chat("nope", 5),
            404,
            "code",
            "model_not_found",
        ),
        // Body and URL disagree; bad bodies name the field.
        (
            "/simulator/v1/chat/completions",
            Some("free-token"),
            chat("simulator-premium", 5),
            400,
            "param",
            "model",
        ),
        (
            "/v1/chat/completions",
            Some("free-token"),
            json!({"model": "simulator", "max_tokens": -3}),
            400,
            "param",
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            Some("free-token"),
            json!({"max_tokens": 3}),
            400,
            "param",
            "model",
        ),
    ];
    for (path, token, body, status, field, expected) in cases {
        let (s, e) = r.fails(path, *token, body).await;
        assert_eq!(
            (s, e["error"][field].as_str()),
            (*status, Some(*expected)),
            "{path} {body}"
        );
    }
    // A premium model from the free tier: seed 002's body, word for word.
    let (s, e) = r
        .fails(
            premium_from_free,
            Some("free-token"),
            &chat("simulator-premium", 5),
        )
        .await;
    assert_eq!(s, 403);
    assert_eq!(
        e,
        json!({"error": {
            "message": "Insufficient permissions for this model",
            "type": "permission_error",
            "param": null,
            "code": "access_denied",
        }})
    );
    let res = r
        .client
        .post(format!("{}/v1/chat/completions", r.url))
        .bearer_auth("free-token")
        .body(vec![b' '; 9 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    r.idle().await;
    assert_eq!(r.usage().await.requests, 0, "nothing was admitted");
}

/// The free tier's 5 requests a minute: the sixth is 429 with Retry-After
/// and the headers; a later minute (manual clock) admits again.
#[tokio::test]
async fn free_tier_is_limited_to_five_requests_a_minute() {
    let r = rig().await;
    for i in 0..5 {
        let res = r
            .post(
                "/v1/chat/completions",
                Some("free-token"),
                &chat("simulator", 5),
            )
            .await;
        assert_eq!(res.status(), 200, "request {i}");
        assert_eq!(
            res.headers()["x-ratelimit-remaining-requests"],
            (4 - i).to_string().as_str()
        );
        res.bytes().await.unwrap();
    }
    let res = r
        .post(
            "/v1/chat/completions",
            Some("free-token"),
            &chat("simulator", 5),
        )
        .await;
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(res.headers()["x-ratelimit-remaining-requests"], "0");
    let (_, e) = error_of(res).await;
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
    assert_eq!(e["error"]["type"], "rate_limit_error");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requests per minute")
    );

    // The premium user is not affected; two minutes on, free is served again.
    let res = r
        .post(
            "/v1/chat/completions",
            Some("premium-token"),
            &chat("simulator", 5),
        )
        .await;
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    r.clock.advance(Duration::from_secs(120));
    let res = r
        .post(
            "/v1/chat/completions",
            Some("free-token"),
            &chat("simulator", 5),
        )
        .await;
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
}

/// A user's API key is served as its owner (the owner's tier and tenant),
/// and its usage is counted by key.
#[tokio::test]
async fn api_keys_are_served_as_their_owner() {
    let r = rig().await;
    let key = r
        .user_keys
        .create_for(
            &Identity::new("penny", ["system:authenticated", "premium-users"]),
            "ci",
        )
        .await
        .unwrap();
    let res = r
        .post(
            "/simulator-premium/v1/chat/completions",
            Some(&key.api_key),
            &chat("simulator-premium", 4),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-ratelimit-limit-requests"], "20");
    res.bytes().await.unwrap();
    r.idle().await;
    let range = TimeRange::new(
        Timestamp::from_millis(T0 - 60_000),
        Timestamp::from_millis(T0 + 60_000),
    );
    let rows = r
        .ledger
        .totals(range, GroupBy::Key, &UsageScope::tenant("penny"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].group, key.key_id.to_string());
}

/// A client that goes away mid-stream frees its slot, and the tokens it was
/// sent are counted (estimated, cancelled).
#[tokio::test]
async fn disconnect_mid_stream_frees_the_slot_and_counts_tokens() {
    // 20 tokens a second: 50 tokens would take 2.5 s; the client leaves
    // after 3 events.
    let r = rig_with(20.0, None, Duration::from_secs(30)).await;
    let mut body = chat("simulator", 50);
    body["stream"] = json!(true);
    let res = r
        .post("/v1/chat/completions", Some("premium-token"), &body)
        .await;
    leave_after(&r, res, "\"content\":\"", 3).await;
}

/// Reads the stream of `res` until `marker` was seen `n` times, checks the
/// request holds its slot, goes away, and checks the request was completed
/// as cancelled with the tokens sent (estimated) counted.
async fn leave_after(r: &Rig, res: reqwest::Response, marker: &str, n: usize) {
    assert_eq!(res.status(), 200);
    let mut stream = res.bytes_stream();
    let mut seen = String::new();
    while seen.matches(marker).count() < n {
        let chunk = stream.next().await.unwrap().unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(r.gateway.fair_share().counts(), (1, 0), "holding its slot");
    drop(stream);
    r.idle().await;
    let u = r.usage().await;
    assert_eq!((u.requests, u.cancelled, u.estimated), (1, 1, 1));
    assert!(
        (n as u64..50).contains(&u.output_tokens),
        "the tokens sent were counted: {}",
        u.output_tokens
    );
}

/// An upstream that cannot be reached is 502; one that does not answer in
/// time is 504; either way nothing is held or charged. On paused time: the
/// silent upstream's limit passes with no real wait.
#[tokio::test(start_paused = true)]
async fn upstream_failures_leak_nothing() {
    upstream_failures_leak_nothing_at("http").await;
}

/// The same at `h2c://` URLs (HTTP/2 over cleartext).
#[tokio::test(start_paused = true)]
async fn h2c_upstream_failures_leak_nothing() {
    upstream_failures_leak_nothing_at("h2c").await;
}

async fn upstream_failures_leak_nothing_at(scheme: &str) {
    // A port nobody listens on.
    let (l, a) = listen().await;
    drop(l);
    let r = rig_with(
        0.0,
        Some(format!("{scheme}://{a}")),
        Duration::from_secs(30),
    )
    .await;
    let (s, e) = r
        .fails(
            "/v1/chat/completions",
            Some("premium-token"),
            &chat("simulator", 5),
        )
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (502, Some("upstream_error"))
    );
    r.idle().await;
    let res = r
        .post(
            "/simulator-premium/v1/chat/completions",
            Some("premium-token"),
            &chat("simulator-premium", 5),
        )
        .await;
    assert_eq!(
        res.headers()["x-ratelimit-remaining-requests"],
        "19",
        "the failed request was given back"
    );
    res.bytes().await.unwrap();
    let u = r.usage().await;
    assert_eq!((u.requests, u.errors, u.output_tokens), (1, 1, 0));

    // An upstream that accepts and never answers.
    let (silent, sa) = listen().await;
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(s);
        }
    });
    let r = rig_with(
        0.0,
        Some(format!("{scheme}://{sa}")),
        Duration::from_millis(100),
    )
    .await;
    let (s, e) = r
        .fails(
            "/v1/chat/completions",
            Some("premium-token"),
            &chat("simulator", 5),
        )
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (504, Some("upstream_timeout"))
    );
    // The connection that timed out is not used again (over h2c too,
    // where it is shared): the next request opens another.
    let (s, _) = r
        .fails(
            "/v1/chat/completions",
            Some("premium-token"),
            &chat("simulator", 5),
        )
        .await;
    assert_eq!(s, 504);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    r.idle().await;
}

/// An upstream that pauses longer than the upstream timeout between two
/// parts of its answer: the stream ends (the client sees the part that
/// came, then an error), the request is completed as an error with what
/// was counted, and the slot is given back. On paused time: the limit
/// passes as soon as nothing else can happen, with no real wait.
#[tokio::test(start_paused = true)]
async fn an_upstream_stalling_mid_stream_ends_the_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (l, a) = listen().await;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 8192];
            let _ = s.read(&mut buf).await;
            let event = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n",
                event.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            held.push(s);
        }
    });
    let r = rig_with(0.0, Some(format!("http://{a}")), Duration::from_secs(300)).await;
    let mut body = chat("simulator", 5);
    body["stream"] = json!(true);
    let res = r
        .post("/v1/chat/completions", Some("premium-token"), &body)
        .await;
    assert_eq!(res.status(), 200);
    let mut stream = res.bytes_stream();
    let mut got = Vec::new();
    let mut failed = false;
    while let Some(part) = stream.next().await {
        match part {
            Ok(b) => got.extend_from_slice(&b),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the stream ends with an error, not as if complete");
    assert!(
        String::from_utf8_lossy(&got).contains("\"hi\""),
        "the part that came was passed on"
    );
    r.idle().await;
    let u = r.usage().await;
    assert_eq!((u.requests, u.errors, u.output_tokens), (1, 1, 1));
}

/// A model with a response cache answers a repeated request from it,
/// marked by a header and counted as a hit; the request still counts.
#[tokio::test]
async fn repeated_request_is_served_from_the_cache() {
    let r = rig().await;
    r.models
        .set_cache(
            &Actor::new("admin"),
            "simulator",
            CacheSettings {
                enabled: true,
                ttl_seconds: 60,
                max_entries: 10,
            },
        )
        .await
        .unwrap();
    let first = r
        .post(
            "/v1/chat/completions",
            Some("premium-token"),
            &chat("simulator", 6),
        )
        .await;
    assert_eq!(first.headers()["x-maas-cache"], "miss");
    let first = first.bytes().await.unwrap();
    r.idle().await;
    // The same body, keys in another order.
    let same = json!({
        "max_tokens": 6,
        "messages": [{"content": "Hello, how are you?", "role": "user"}],
        "model": "simulator",
    });
    let second = r
        .post("/v1/chat/completions", Some("premium-token"), &same)
        .await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["x-maas-cache"], "hit");
    assert_eq!(second.headers()["x-ratelimit-remaining-requests"], "18");
    assert_eq!(second.bytes().await.unwrap(), first);
    // A streamed request is never served from the cache.
    let mut streamed = chat("simulator", 6);
    streamed["stream"] = json!(true);
    let res = r
        .post("/v1/chat/completions", Some("premium-token"), &streamed)
        .await;
    assert!(res.headers().get("x-maas-cache").is_none());
    res.bytes().await.unwrap();
    r.idle().await;
    let u = r.usage().await;
    assert_eq!((u.requests, u.cache_hits, u.cache_misses), (3, 1, 1));
    assert_eq!(u.output_tokens, 12, "the hit generated nothing");
}

/// Embeddings go the same path as chat: authenticated, admitted against
/// the tier's limits, forwarded at `/v1` and at the per-model URL, metered
/// (input tokens, no output) and priced; bad input is a 400 naming
/// `input`; `encoding_format` and `dimensions` reach the upstream.
#[tokio::test]
async fn embeddings_are_admitted_metered_and_passed_through() {
    let r = rig().await;
    let res = r
        .post(
            "/v1/embeddings",
            Some("premium-token"),
            &json!({"model": "simulator", "input": ["12345678", "abcd"]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-ratelimit-remaining-tokens"));
    let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    let res = r
        .post(
            "/simulator/v1/embeddings",
            Some("premium-token"),
            &json!({"input": [1, 2, 3, 4], "encoding_format": "base64", "dimensions": 4}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    let b64 = body["data"][0]["embedding"].as_str().unwrap();
    assert_eq!(b64.len(), 24, "4 f32s, base64: {b64}");

    for bad in [
        json!({"model": "simulator"}),
        json!({"model": "simulator", "input": {"a": 1}}),
    ] {
        let (status, e) = r.fails("/v1/embeddings", Some("premium-token"), &bad).await;
        assert_eq!(
            (status, e["error"]["param"].as_str()),
            (400, Some("input")),
            "{e}"
        );
    }
    let (status, _) = r
        .fails(
            "/v1/embeddings",
            None,
            &json!({"model": "simulator", "input": "a"}),
        )
        .await;
    assert_eq!(status, 401);

    r.idle().await;
    let u = r.usage().await;
    assert_eq!((u.requests, u.errors, u.estimated), (2, 0, 0));
    assert_eq!((u.input_tokens, u.output_tokens), (3 + 4, 0));
    assert!(u.cost("USD") > 0.0, "priced as the model is: {u:?}");
}

/// An unknown path is a 404 naming it.
#[tokio::test]
async fn unknown_paths_are_named() {
    let r = rig().await;
    let (status, e) = r
        .fails("/v1/nothing-here", Some("premium-token"), &json!({}))
        .await;
    assert_eq!(status, 404);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/nothing-here"),
        "{e}"
    );
}

fn message(model: &str, max_tokens: u64) -> Value {
    json!({
        "model": model,
        "max_tokens": max_tokens,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hello, how are you?"}],
    })
}

impl Rig {
    /// Posts as Anthropic's clients do: `x-api-key` and `anthropic-version`.
    async fn post_anthropic(
        &self,
        path: &str,
        key: Option<&str>,
        body: &Value,
    ) -> reqwest::Response {
        let mut r = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .body(body.to_string());
        if let Some(k) = key {
            r = r.header("x-api-key", k);
        }
        r.send().await.unwrap()
    }
}

/// Anthropic's Messages through the gateway's whole path, translated for
/// the OpenAI-only simulator: a whole message and an event stream in
/// Anthropic's shapes, usage recorded exactly (the upstream's counts),
/// `x-api-key` and `Authorization` both accepted, the per-model URL too.
#[tokio::test]
async fn messages_are_translated_admitted_and_metered() {
    let r = rig().await;
    let res = r
        .post_anthropic(
            "/v1/messages",
            Some("premium-token"),
            &message("simulator", 7),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-ratelimit-remaining-requests"));
    let m: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (&m["type"], &m["role"]),
        (&json!("message"), &json!("assistant"))
    );
    assert!(m["id"].as_str().unwrap().starts_with("msg_"), "{m}");
    assert_eq!(m["content"][0]["type"], "text");
    assert_eq!(m["stop_reason"], "max_tokens");
    assert_eq!(m["usage"]["output_tokens"], 7);
    let input = m["usage"]["input_tokens"].as_u64().unwrap();
    assert!(input > 0);

    let mut body = message("simulator", 4);
    body["stream"] = json!(true);
    let res = r
        .post("/simulator/v1/messages", Some("premium-token"), &body)
        .await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = res.text().await.unwrap();
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(kinds.first(), Some(&"message_start"), "{text}");
    assert_eq!(kinds.last(), Some(&"message_stop"), "{text}");
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "content_block_delta")
            .count(),
        4,
        "{text}"
    );
    assert!(text.contains(r#""output_tokens":4"#), "{text}");
    assert!(
        !text.contains("chat.completion"),
        "nothing of OpenAI's left: {text}"
    );

    r.idle().await;
    let u = r.usage().await;
    assert_eq!((u.requests, u.errors, u.estimated), (2, 0, 0));
    assert_eq!(u.output_tokens, 7 + 4);
    assert_eq!(u.input_tokens, 2 * input);
}

/// Anthropic's errors on the Messages routes: the right `type` for each
/// status, `retry-after` kept on 429; untranslatable requests are a 400
/// naming the field, and nothing is reserved for them.
#[tokio::test]
async fn messages_errors_are_in_anthropics_shape() {
    let r = rig().await;
    let kind = |v: &Value| v["error"]["type"].as_str().unwrap_or("").to_owned();
    for (path, key, body, status, ty) in [
        (
            "/v1/messages",
            None,
            message("simulator", 5),
            401,
            "authentication_error",
        ),
        (
            "/v1/messages",
            Some("wrong"),
            message("simulator", 5),
            401,
            "authentication_error",
        ),
        (
            "/v1/messages",
            Some("free-token"),
            message("nope", 5),
            404,
            "not_found_error",
        ),
        (
            "/v1/messages",
            Some("free-token"),
            message("simulator-premium", 5),
            403,
            "permission_error",
        ),
        (
            "/v1/messages",
            Some("free-token"),
            json!({"model": "simulator", "messages": [{"role": "user", "content": "hi"}]}),
            400,
            "invalid_request_error",
        ),
        (
            "/v1/messages",
            Some("free-token"),
            json!({"model": "simulator", "max_tokens": 5, "top_k": 3, "messages": [{"role": "user", "content": "hi"}]}),
            400,
            "invalid_request_error",
        ),
    ] {
        let res = r.post_anthropic(path, key, &body).await;
        let status_got = res.status().as_u16();
        let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        assert_eq!((status_got, kind(&v).as_str()), (status, ty), "{body}: {v}");
        assert_eq!(v["type"], "error", "{v}");
    }
    // What was refused reserved nothing: the free tier's five requests are
    // all still there.
    let mut served = 0;
    loop {
        let res = r
            .post_anthropic("/v1/messages", Some("free-token"), &message("simulator", 2))
            .await;
        if res.status() == 429 {
            assert!(res.headers().contains_key("retry-after"));
            let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
            assert_eq!(kind(&v), "rate_limit_error", "{v}");
            break;
        }
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
        served += 1;
        assert!(served <= 5, "the free tier allows five a minute");
    }
    assert_eq!(served, 5);
}

/// count_tokens: the estimate admission uses, for callers allowed the
/// model, with nothing reserved or forwarded.
#[tokio::test]
async fn messages_count_tokens() {
    let r = rig().await;
    let body = json!({"model": "simulator", "messages": [{"role": "user", "content": "12345678"}]});
    let res = r
        .post_anthropic("/v1/messages/count_tokens", Some("free-token"), &body)
        .await;
    assert_eq!(res.status(), 200);
    let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(v, json!({"input_tokens": 2 + 3}));
    let res = r
        .post_anthropic(
            "/v1/messages/count_tokens",
            Some("free-token"),
            &json!({"model": "simulator-premium", "messages": []}),
        )
        .await;
    assert_eq!(res.status(), 403);
    let res = r
        .post_anthropic("/v1/messages/count_tokens", None, &body)
        .await;
    assert_eq!(res.status(), 401);
    r.idle().await;
    assert_eq!(r.usage().await.requests, 0, "counting is not a request");
}

/// A Messages client that goes away mid-stream is charged what it was sent
/// (estimated, cancelled), and its slot is freed.
#[tokio::test]
async fn messages_disconnect_mid_stream_is_charged() {
    let r = rig_with(20.0, None, Duration::from_secs(30)).await;
    let mut body = message("simulator", 50);
    body["stream"] = json!(true);
    let res = r
        .post_anthropic("/v1/messages", Some("premium-token"), &body)
        .await;
    leave_after(&r, res, "text_delta", 3).await;
}

/// OpenAI's Responses API through the gateway's whole path, translated for
/// the chat-only simulator: a whole response and its event stream, usage
/// recorded, `max_output_tokens` capped like `max_tokens`; what needs state
/// the gateway does not keep is a 400 naming it.
#[tokio::test]
async fn responses_are_translated_admitted_and_metered() {
    let r = rig().await;
    let res = r
        .post(
            "/v1/responses",
            Some("premium-token"),
            &json!({"model": "simulator", "instructions": "Be brief.", "input": "Hello", "max_output_tokens": 6}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-ratelimit-remaining-tokens"));
    let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(
        v["status"], "incomplete",
        "stopped at max_output_tokens: {v}"
    );
    assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(v["usage"]["output_tokens"], 6);
    let input = v["usage"]["input_tokens"].as_u64().unwrap();

    let res = r
        .post(
            "/simulator/v1/responses",
            Some("premium-token"),
            &json!({"input": [{"role": "user", "content": "Hello"}], "max_output_tokens": 3, "stream": true}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(kinds.first(), Some(&"response.created"), "{text}");
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "response.output_text.delta")
            .count(),
        3
    );
    assert!(kinds.last().unwrap().starts_with("response."), "{text}");
    assert!(text.contains(r#""output_tokens":3"#), "{text}");

    let (status, e) = r
        .fails(
            "/v1/responses",
            Some("premium-token"),
            &json!({"model": "simulator", "input": "x", "previous_response_id": "resp_1"}),
        )
        .await;
    assert_eq!(
        (status, e["error"]["param"].as_str()),
        (400, Some("previous_response_id"))
    );
    let (status, e) = r
        .fails(
            "/v1/responses",
            Some("premium-token"),
            &json!({"model": "simulator", "input": "x", "max_output_tokens": 0}),
        )
        .await;
    assert_eq!(
        (status, e["error"]["param"].as_str()),
        (400, Some("max_output_tokens"))
    );
    let (status, _) = r
        .fails(
            "/v1/responses",
            None,
            &json!({"model": "simulator", "input": "x"}),
        )
        .await;
    assert_eq!(status, 401);

    r.idle().await;
    let u = r.usage().await;
    assert_eq!((u.requests, u.errors, u.estimated), (2, 0, 0));
    assert_eq!(u.output_tokens, 6 + 3);
    assert!(u.input_tokens >= input);
}

/// An OpenAI-compatible upstream that records what it receives and answers
/// with a text and a tool call (or their stream).
async fn recording_upstream() -> (String, Arc<std::sync::Mutex<Vec<Value>>>) {
    let (url, seen, _) = recording_upstream_with_headers().await;
    (url, seen)
}

/// Request headers an upstream got, in order.
type SeenHeaders = Arc<std::sync::Mutex<Vec<axum::http::HeaderMap>>>;

/// [`recording_upstream`], also keeping each request's headers.
async fn recording_upstream_with_headers()
-> (String, Arc<std::sync::Mutex<Vec<Value>>>, SeenHeaders) {
    let seen: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let headers_seen = SeenHeaders::default();
    let (store, headers_store) = (seen.clone(), headers_seen.clone());
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Value>| {
            let (store, headers_store) = (store.clone(), headers_store.clone());
            async move {
                headers_store.lock().unwrap().push(headers);
                let stream = body["stream"] == true;
                store.lock().unwrap().push(body);
                let usage = json!({"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16});
                if stream {
                    let chunks = [
                        json!({"id": "c9", "model": "simulator", "choices": [{"index": 0, "delta": {"content": "Checking."}}]}),
                        json!({"id": "c9", "model": "simulator", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":"}}]}}]}),
                        json!({"id": "c9", "model": "simulator", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]}}]}),
                        json!({"id": "c9", "model": "simulator", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
                        json!({"id": "c9", "model": "simulator", "choices": [], "usage": usage}),
                    ];
                    let mut body: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
                    body.push_str("data: [DONE]\n\n");
                    return ([("content-type", "text/event-stream")], body).into_response();
                }
                axum::Json(json!({
                    "id": "c8", "object": "chat.completion", "model": "simulator",
                    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                        "role": "assistant", "content": "Checking.",
                        "tool_calls": [{"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}],
                    }}],
                    "usage": usage,
                }))
                .into_response()
            }
        }),
    );
    let (l, a) = listen().await;
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{a}"), seen, headers_seen)
}

use axum::response::IntoResponse as _;

/// Translation, field by field: a table of Messages requests (system,
/// images, tools and tool results, stop sequences, tool choice) as the
/// OpenAI-only upstream received them, and its answer (text and a tool
/// call, whole and streamed) as the client got it; usage is the upstream's.
#[tokio::test]
async fn messages_translation_against_an_openai_upstream() {
    let (url, seen) = recording_upstream().await;
    let r = rig_with(0.0, Some(url), Duration::from_secs(30)).await;
    let tools = json!([{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let cases = [
        (
            json!({"model": "simulator", "max_tokens": 20, "system": "Be brief.", "stop_sequences": ["END"],
                   "messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": tools, "tool_choice": {"type": "tool", "name": "get_weather"}}),
            json!({"model": "simulator", "max_tokens": 20, "stop": ["END"],
                   "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"}],
                   "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
                   "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
        ),
        (
            json!({"model": "simulator", "max_tokens": 20, "messages": [
                {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "look", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "a cat"}], "is_error": false}]},
            ]}),
            json!({"model": "simulator", "max_tokens": 20, "messages": [
                {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "look", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "a cat"},
            ]}),
        ),
    ];
    for (sent, expected) in cases {
        let res = r
            .post_anthropic("/v1/messages", Some("premium-token"), &sent)
            .await;
        assert_eq!(res.status(), 200);
        let m: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        let received = seen.lock().unwrap().pop().unwrap();
        assert_eq!(received, expected, "sent {sent}");
        assert_eq!(
            m["content"],
            json!([{"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "call_7", "name": "get_weather", "input": {"city": "Oslo"}}])
        );
        assert_eq!(
            (&m["stop_reason"], &m["usage"]),
            (
                &json!("tool_use"),
                &json!({"input_tokens": 11, "output_tokens": 5})
            )
        );
    }

    // Streamed: the upstream was asked for its usage; the events carry the
    // text, the tool call's arguments in pieces, the stop reason and usage.
    let mut sent = message("simulator", 20);
    sent["stream"] = json!(true);
    let res = r
        .post_anthropic("/v1/messages", Some("premium-token"), &sent)
        .await;
    let text = res.text().await.unwrap();
    let received = seen.lock().unwrap().pop().unwrap();
    assert_eq!(received["stream_options"], json!({"include_usage": true}));
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let deltas: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "content_block_delta")
        .map(|e| &e["delta"])
        .collect();
    assert_eq!(
        deltas,
        [
            &json!({"type": "text_delta", "text": "Checking."}),
            &json!({"type": "input_json_delta", "partial_json": "{\"city\":"}),
            &json!({"type": "input_json_delta", "partial_json": "\"Oslo\"}"}),
        ]
    );
    let tool = events
        .iter()
        .find(|e| e["type"] == "content_block_start" && e["index"] == 1)
        .unwrap();
    assert_eq!(
        tool["content_block"],
        json!({"type": "tool_use", "id": "call_7", "name": "get_weather", "input": {}})
    );
    let end = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(end["delta"]["stop_reason"], "tool_use");
    assert_eq!(
        end["usage"],
        json!({"input_tokens": 11, "output_tokens": 5})
    );
    r.idle().await;
    let u = r.usage().await;
    assert_eq!((u.requests, u.input_tokens, u.output_tokens), (3, 33, 15));
}

/// A model whose upstream speaks Anthropic's API gets Messages as they are
/// (fields the translation could not carry included) at `/v1/messages`,
/// its answers pass through, and usage is read from Anthropic's events;
/// OpenAI's endpoints to it are a 400 saying which API it speaks.
#[tokio::test]
async fn messages_go_natively_to_an_anthropic_upstream() {
    let (sim_listener, sim_addr) = listen().await;
    tokio::spawn(simulator::serve(
        sim_listener,
        SimulatorConfig {
            tokens_per_second: 0.0,
            max_concurrent: 8,
            default_max_tokens: 16,
            ..SimulatorConfig::default()
        },
        std::future::pending(),
    ));
    let seen: Arc<std::sync::Mutex<Vec<(String, Value)>>> = Arc::default();
    let store = seen.clone();
    let sim = format!("http://{sim_addr}");
    // A recording proxy in front of the simulator's native Messages.
    let app = axum::Router::new().route(
        "/v1/messages",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let (store, sim) = (store.clone(), sim.clone());
            async move {
                store
                    .lock()
                    .unwrap()
                    .push(("/v1/messages".into(), body.clone()));
                let res = reqwest::Client::new()
                    .post(format!("{sim}/v1/messages"))
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
                ([("content-type", ct)], res.bytes().await.unwrap()).into_response()
            }
        }),
    );
    let (l, a) = listen().await;
    tokio::spawn(async move { axum::serve(l, app).await });
    let r = rig().await;
    let mut claude = NewModel::new("claude-sim", format!("http://{a}"));
    claude.api = vec![maas_core::model::ModelApi::Anthropic];
    r.models.create(&Actor::new("admin"), claude).await.unwrap();

    let mut body = message("claude-sim", 5);
    body["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
    let res = r
        .post_anthropic("/v1/messages", Some("premium-token"), &body)
        .await;
    assert_eq!(res.status(), 200);
    let m: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (&m["type"], &m["usage"]["output_tokens"]),
        (&json!("message"), &json!(5))
    );
    let (path, received) = seen.lock().unwrap().pop().unwrap();
    assert_eq!(path, "/v1/messages");
    assert_eq!(received["thinking"], body["thinking"], "passed on as sent");
    assert_eq!(received["system"], "Be brief.");

    body["stream"] = json!(true);
    let res = r
        .post_anthropic("/claude-sim/v1/messages", Some("premium-token"), &body)
        .await;
    let text = res.text().await.unwrap();
    assert!(text.starts_with("event: message_start"), "{text}");
    assert!(text.contains(r#""output_tokens":5"#), "{text}");

    // A response cache keeps the native answer as it came: a repeat is
    // served from it in Anthropic's shape (not translated again).
    r.models
        .set_cache(
            &Actor::new("admin"),
            "claude-sim",
            CacheSettings {
                enabled: true,
                ..CacheSettings::default()
            },
        )
        .await
        .unwrap();
    r.clock.advance(Duration::from_secs(60));
    let plain = message("claude-sim", 3);
    let mut answers = Vec::new();
    for _ in 0..2 {
        let res = r
            .post_anthropic("/v1/messages", Some("premium-token"), &plain)
            .await;
        let cache = res.headers()["x-maas-cache"].to_str().unwrap().to_owned();
        let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        answers.push((cache, v));
    }
    assert_eq!(
        (answers[0].0.as_str(), answers[1].0.as_str()),
        ("miss", "hit")
    );
    assert_eq!(answers[1].1, answers[0].1);
    assert_eq!(answers[1].1["type"], "message");

    let (status, e) = r
        .fails(
            "/v1/chat/completions",
            Some("premium-token"),
            &chat("claude-sim", 5),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Anthropic"),
        "{e}"
    );

    r.idle().await;
    r.gateway.settled().await;
    let range = TimeRange::new(
        Timestamp::from_millis(T0 - 3_600_000),
        Timestamp::from_millis(T0 + 3_600_000),
    );
    let rows = r
        .ledger
        .totals(range, GroupBy::Model, &UsageScope::default())
        .await
        .unwrap();
    let u = rows
        .iter()
        .find(|r| r.group == "claude-sim")
        .unwrap()
        .usage
        .clone();
    assert_eq!(
        (u.requests, u.errors, u.estimated, u.cache_hits),
        (4, 0, 0, 1),
        "{u:?}"
    );
    assert_eq!(u.output_tokens, 5 + 5 + 3);
}

/// The inference paths are routed by the gateway's service itself (not by
/// axum's router): the model of `/{model}/v1/...` decoded as axum decodes
/// path parameters, the request id echoed (the client's when it is worth
/// keeping), only the upstream request's own headers and the client's
/// Accept sent on (the request's header map is reused for them), other
/// shapes 404 as before.
#[tokio::test]
async fn inference_paths_are_routed_as_by_the_router() {
    let (upstream, _, seen) = recording_upstream_with_headers().await;
    let r = rig_with(0.0, Some(upstream), Duration::from_secs(30)).await;
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4});
    let res = r
        .client
        .post(format!("{}/simul%61tor/v1/chat/completions", r.url))
        .bearer_auth("premium-token")
        .header("content-type", "application/json")
        .header("x-secret", "not for the upstream")
        .header("x-request-id", "client-id-1")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-request-id"], "client-id-1");
    assert_eq!(res.headers()["x-maas-served-model"], "simulator");
    assert_eq!(res.headers()["x-ratelimit-limit-requests"], "20");
    assert_eq!(res.headers()["x-ratelimit-remaining-requests"], "19");
    let answer: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "Checking.");
    {
        let seen = seen.lock().unwrap();
        let h = &seen[0];
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["accept", "content-length", "content-type", "host"],
            "{h:?}"
        );
        assert_eq!(h["content-type"], "application/json");
        // The client's Accept is passed on (reqwest's default).
        assert_eq!(h["accept"], "*/*");
    }

    // An id not worth keeping (a space) is replaced by a fresh one.
    let res = r
        .client
        .post(format!("{}/v1/chat/completions", r.url))
        .bearer_auth("premium-token")
        .header("content-type", "application/json")
        .header("x-request-id", "two words")
        .body(chat("simulator", 4).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(id.starts_with("req_") && id.len() > 20, "{id}");
    // A segment that is not UTF-8 once decoded names no model (as axum's
    // path parameters refuse it): the body's is used.
    let res = r
        .post(
            "/%FF/v1/chat/completions",
            Some("premium-token"),
            &chat("simulator", 4),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-maas-served-model"], "simulator");

    let (status, _) = r
        .fails(
            "/a/b/v1/chat/completions",
            Some("premium-token"),
            &chat("simulator", 4),
        )
        .await;
    assert_eq!(status, 404);
    r.idle().await;
    assert_eq!(seen.lock().unwrap().len(), 3);
}
