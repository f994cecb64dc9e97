//! Tenants as callers, over real loopback HTTP on the example server (seed
//! 003's flow): a tenant created through the management API gets an `sk_`
//! key, and that key calls models at the tenant's tier — the lowest-level
//! tier while the tenant has none.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use std::sync::Arc;

use maas_core::ManualClock;
use maas_server::{RunningServer, SIMULATOR_MODEL, SIMULATOR_PREMIUM_MODEL, Server, ServerConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

mod common;
use common::config_on;

async fn server() -> RunningServer {
    server_on(Arc::new(ManualClock::default())).await
}

async fn server_on(clock: Arc<ManualClock>) -> RunningServer {
    Server::start(config_on(clock)).await.unwrap()
}

/// The audit actions on targets of `kind`, newest first.
async fn audit_actions(s: &RunningServer, kind: &str) -> Vec<String> {
    let (status, audit) = admin(s, reqwest::Method::GET, "/api/v1/audit", None).await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target_kind"] == kind)
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

async fn send(
    method: reqwest::Method,
    addr: SocketAddr,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("http://{addr}{path}"))
        .bearer_auth(bearer);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn admin(
    s: &RunningServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    send(method, s.admin_addr, path, s.admin_token(), body).await
}

async fn chat(s: &RunningServer, key: &str, model: &str) -> (StatusCode, Value) {
    let body =
        json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    send(
        reqwest::Method::POST,
        s.public_addr,
        "/v1/chat/completions",
        key,
        Some(body),
    )
    .await
}

async fn model_ids(s: &RunningServer, key: &str) -> Vec<String> {
    let (status, body) = send(reqwest::Method::GET, s.public_addr, "/v1/models", key, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    common::model_ids(&body)
}

#[tokio::test]
async fn a_tenant_key_calls_models_at_its_tenants_tier() {
    let s = server().await;
    let (status, tenant) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/tenants",
        Some(json!({"name": "acme", "weight": 200, "tokens_per_minute": 100000})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{tenant}");
    let tid = tenant["id"].as_str().unwrap().to_owned();
    let (status, created) = admin(
        &s,
        reqwest::Method::POST,
        &format!("/api/v1/tenants/{tid}/keys"),
        Some(json!({"name": "prod"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("sk_"), "{secret}");
    assert!(
        created["key"]["key_prefix"]
            .as_str()
            .unwrap()
            .starts_with("sk_"),
        "{created}"
    );

    // No tier: the lowest-level one (free: the simulator model only).
    assert_eq!(model_ids(&s, &secret).await, [SIMULATOR_MODEL]);
    let (status, body) = chat(&s, &secret, SIMULATOR_MODEL).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = chat(&s, &secret, SIMULATOR_PREMIUM_MODEL).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // The tenant's tier, set through the management API: at once.
    let (status, body) = admin(
        &s,
        reqwest::Method::PUT,
        &format!("/api/v1/tenants/{tid}/tier"),
        Some(json!({"tier": "premium"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tier"], "premium");
    assert_eq!(
        model_ids(&s, &secret).await,
        [SIMULATOR_MODEL, SIMULATOR_PREMIUM_MODEL]
    );
    let (status, body) = chat(&s, &secret, SIMULATOR_PREMIUM_MODEL).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Bad input changes nothing.
    for bad in [json!({"tier": "gold"}), json!({}), json!({"tier": 7})] {
        let (status, body) = admin(
            &s,
            reqwest::Method::PUT,
            &format!("/api/v1/tenants/{tid}/tier"),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (_, now) = admin(
        &s,
        reqwest::Method::GET,
        &format!("/api/v1/tenants/{tid}"),
        None,
    )
    .await;
    assert_eq!(now["tier"], "premium");

    // `null` clears it: the lowest tier again.
    let (status, body) = admin(
        &s,
        reqwest::Method::PUT,
        &format!("/api/v1/tenants/{tid}/tier"),
        Some(json!({"tier": null})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tier"], Value::Null);
    assert_eq!(model_ids(&s, &secret).await, [SIMULATOR_MODEL]);

    // Each change is audited.
    let (status, audit) = admin(&s, reqwest::Method::GET, "/api/v1/audit", None).await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let tier_changes = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "tenant.update" && e["target_id"] == tid.as_str())
        .count();
    assert_eq!(tier_changes, 2, "{audit}");

    // A tenant created with a tier; an unknown one is refused.
    let (status, body) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/tenants",
        Some(json!({"name": "globex", "tier": "nope"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/tenants",
        Some(json!({"name": "globex", "tier": "enterprise"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let gid = body["id"].as_str().unwrap().to_owned();
    let (_, created) = admin(
        &s,
        reqwest::Method::POST,
        &format!("/api/v1/tenants/{gid}/keys"),
        Some(json!({"name": "prod"})),
    )
    .await;
    let globex = created["secret"].as_str().unwrap().to_owned();
    let (status, body) = chat(&s, &globex, SIMULATOR_PREMIUM_MODEL).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s.shutdown().await.unwrap();
}

/// A tenant and one `sk_` key of it, at a tier no request count reaches.
async fn bulk_tenant(s: &RunningServer, name: &str) -> (String, String, String) {
    let tier = json!({"name": "bulk", "level": 9, "groups": ["bulk-users"],
        "requests_per_minute": 100000, "tokens_per_minute": 100000000, "models": ["*"]});
    let (status, body) = admin(s, reqwest::Method::POST, "/api/v1/tiers", Some(tier)).await;
    assert!(
        status == StatusCode::CREATED || status == StatusCode::CONFLICT,
        "{body}"
    );
    let (status, t) = admin(
        s,
        reqwest::Method::POST,
        "/api/v1/tenants",
        Some(json!({"name": name, "tier": "bulk"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    let tid = t["id"].as_str().unwrap().to_owned();
    let (status, k) = admin(
        s,
        reqwest::Method::POST,
        &format!("/api/v1/tenants/{tid}/keys"),
        Some(json!({"name": "prod"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{k}");
    let key_id = k["key"]["id"].as_str().unwrap().to_owned();
    (tid, key_id, k["secret"].as_str().unwrap().to_owned())
}

/// The simulator model at 1 USD per token, in and out: a request's worst
/// case is its prompt estimate plus its `max_tokens` in dollars.
async fn price_per_token(s: &RunningServer) {
    let (status, body) = admin(
        s,
        reqwest::Method::PUT,
        &format!("/api/v1/models/{SIMULATOR_MODEL}"),
        Some(json!({"pricing": {"input_per_million": 1e6, "output_per_million": 1e6, "currency": "USD"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn budgets_over_http_are_never_overspent_and_start_over() {
    let clock = Arc::new(ManualClock::default());
    let s = server_on(clock.clone()).await;
    let (tid, _, secret) = bulk_tenant(&s, "acme").await;
    price_per_token(&s).await;
    let path = format!("/api/v1/tenants/{tid}/budget");
    let (status, body) = admin(&s, reqwest::Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, b) = admin(
        &s,
        reqwest::Method::PUT,
        &path,
        Some(json!({"amount": 60.0, "currency": "USD", "period": "daily", "soft_limit": 40.0})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(
        (&b["amount"], &b["currency"], &b["period"], &b["soft_limit"]),
        (&json!(60.0), &json!("USD"), &json!("daily"), &json!(40.0))
    );
    assert_eq!(
        (&b["spent"], &b["reserved"], &b["left"]),
        (&json!(0.0), &json!(0.0), &json!(60.0))
    );
    // 2025-01-01 00:00 UTC on the manual clock: the day ends 86,400 s later.
    let resets_at = b["resets_at"].as_i64().unwrap();
    assert_eq!(resets_at, 1_735_689_600_000 + 86_400_000);

    // Bad input: a 400 naming the field, and nothing changes.
    for (bad, field) in [
        (json!({"amount": -1.0, "period": "daily"}), "amount"),
        (
            json!({"amount": 5.0, "period": "daily", "soft_limit": 5.0}),
            "soft_limit",
        ),
        (
            json!({"amount": 5.0, "period": "daily", "soft_limit": 0.0}),
            "soft_limit",
        ),
        (json!({"amount": 5.0, "period": "yearly"}), "period"),
        (
            json!({"amount": 5.0, "period": "daily", "currency": "usd"}),
            "currency",
        ),
        (json!({"amount": 5.0}), "period"),
    ] {
        let (status, body) = admin(&s, reqwest::Method::PUT, &path, Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body.to_string().contains(field), "{bad}: {body}");
    }
    let (_, same) = admin(&s, reqwest::Method::GET, &path, None).await;
    assert_eq!(same["amount"], 60.0);
    assert_eq!(same["soft_limit"], 40.0);

    // Concurrent requests until the budget refuses: never past the amount.
    let mut spent_by_answers = 0.0;
    let mut refused = None;
    for _ in 0..10 {
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let secret = secret.clone();
                let addr = s.public_addr;
                tokio::spawn(async move {
                    let body = json!({"model": SIMULATOR_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
                    let res = reqwest::Client::new()
                        .post(format!("http://{addr}/v1/chat/completions"))
                        .bearer_auth(&secret)
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await
                        .unwrap();
                    let status = res.status();
                    let retry = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                    let body: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
                    (status, retry, body)
                })
            })
            .collect();
        for c in calls {
            let (status, retry, body) = c.await.unwrap();
            match status {
                StatusCode::OK => {
                    let u = &body["usage"];
                    spent_by_answers += u["prompt_tokens"].as_f64().unwrap()
                        + u["completion_tokens"].as_f64().unwrap();
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
                    refused = Some(retry.unwrap().parse::<i64>().unwrap());
                }
                other => panic!("{other}: {body}"),
            }
        }
        if refused.is_some() {
            break;
        }
    }
    let retry_after = refused.expect("the budget refused at last");
    assert_eq!(retry_after, 86_400, "until the day ends");
    let (_, b) = admin(&s, reqwest::Method::GET, &path, None).await;
    let spent = b["spent"].as_f64().unwrap();
    assert!(spent <= 60.0, "{b}");
    assert!(
        (spent - spent_by_answers).abs() < 1e-6,
        "{b} vs {spent_by_answers}"
    );
    assert_eq!(b["reserved"], 0.0, "{b}");
    assert!(
        (b["left"].as_f64().unwrap() - (60.0 - spent)).abs() < 1e-6,
        "{b}"
    );

    // The next day starts over.
    clock.advance(std::time::Duration::from_secs(86_400));
    let (status, body) = chat(&s, &secret, SIMULATOR_MODEL).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, b) = admin(&s, reqwest::Method::GET, &path, None).await;
    assert_eq!(b["resets_at"], resets_at + 86_400_000, "{b}");
    assert!(b["spent"].as_f64().unwrap() < spent, "{b}");

    // Removed: requests are not counted against it any more.
    let (status, _) = admin(&s, reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = admin(&s, reqwest::Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = admin(&s, reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Each change audited.
    assert_eq!(
        audit_actions(&s, "budget").await,
        ["budget.delete", "budget.create"]
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_key_budget_refuses_that_key_only() {
    let s = server().await;
    let (tid, key_id, secret) = bulk_tenant(&s, "acme").await;
    let (_, k2) = admin(
        &s,
        reqwest::Method::POST,
        &format!("/api/v1/tenants/{tid}/keys"),
        Some(json!({"name": "second"})),
    )
    .await;
    let other = k2["secret"].as_str().unwrap().to_owned();
    price_per_token(&s).await;
    let path = format!("/api/v1/keys/{key_id}/budget");
    // Less than one request's worst case: that key is refused at once.
    let (status, b) = admin(
        &s,
        reqwest::Method::PUT,
        &path,
        Some(json!({"amount": 2.0, "period": "monthly"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(
        (&b["scope"], &b["subject"]),
        (&json!("key"), &json!(key_id))
    );
    assert_eq!(b["resets_at"], 1_738_368_000_000_i64, "2025-02-01");
    let (status, body) = chat(&s, &secret, SIMULATOR_MODEL).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_quota");
    let (status, body) = chat(&s, &other, SIMULATOR_MODEL).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A key that is not a tenant's (or no key at all): 404.
    let (status, _) = admin(
        &s,
        reqwest::Method::GET,
        "/api/v1/keys/key_nope/budget",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn me_shows_a_user_a_user_key_and_a_tenant_key_what_they_have_left() {
    let s = server().await;
    // A user (an identity token of the example users: premium).
    let (status, me) = send(
        reqwest::Method::GET,
        s.public_addr,
        "/v1/me",
        "dev-premium-token",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["kind"], "user");
    assert_eq!(me["tier"]["name"], "premium");
    assert_eq!(me["key_id"], Value::Null);
    assert_eq!(me["requests"]["limit"], 20);
    assert_eq!(me["requests"]["remaining"], 20);
    let user = me["user"].as_str().unwrap().to_owned();

    // Their own API key: the same tier, the key named; a request counts.
    let (status, k) = send(
        reqwest::Method::POST,
        s.public_addr,
        "/keys",
        "dev-premium-token",
        Some(json!({"name": "laptop"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{k}");
    let user_key = k["api_key"].as_str().unwrap().to_owned();
    let (status, body) = chat(&s, &user_key, SIMULATOR_MODEL).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, me) = send(
        reqwest::Method::GET,
        s.public_addr,
        "/v1/me",
        &user_key,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!((&me["kind"], &me["user"]), (&json!("user"), &json!(user)));
    assert_eq!(me["tier"]["name"], "premium");
    assert!(me["key_id"].as_str().unwrap().starts_with("key_"), "{me}");
    assert_eq!(me["requests"]["remaining"], 19, "{me}");
    assert_eq!(me["key_remaining"], Value::Null);

    // A tenant's key: the tenant's tier, quota and budget.
    let (tid, _, secret) = bulk_tenant(&s, "acme").await;
    let (status, body) = admin(
        &s,
        reqwest::Method::PUT,
        &format!("/api/v1/tenants/{tid}/quota"),
        Some(json!({"tokens_per_minute": 5000})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    price_per_token(&s).await;
    let (status, body) = admin(
        &s,
        reqwest::Method::PUT,
        &format!("/api/v1/tenants/{tid}/budget"),
        Some(json!({"amount": 100.0, "period": "monthly"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, answer) = chat(&s, &secret, SIMULATOR_MODEL).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let used = answer["usage"]["prompt_tokens"].as_u64().unwrap()
        + answer["usage"]["completion_tokens"].as_u64().unwrap();
    let (status, me) = send(reqwest::Method::GET, s.public_addr, "/v1/me", &secret, None).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(
        (&me["kind"], &me["user"]),
        (&json!("tenant"), &json!("acme"))
    );
    assert_eq!(me["groups"], json!([]));
    assert_eq!(me["tier"]["name"], "bulk");
    assert_eq!(me["tenant_quota"]["limit"], 5000);
    assert_eq!(me["tenant_quota"]["remaining"], 5000 - used, "{me}");
    let budget = &me["budgets"][0];
    assert_eq!(
        (&budget["scope"], &budget["amount"]),
        (&json!("tenant"), &json!(100.0))
    );
    assert_eq!(budget["spent"].as_f64().unwrap(), used as f64, "{me}");
    assert_eq!(budget["reserved"], 0.0);
    // Today's usage and cost: the one request.
    let today = &me["today"];
    assert_eq!(today["requests"], 1, "{me}");
    assert_eq!(
        today["input_tokens"].as_u64().unwrap() + today["output_tokens"].as_u64().unwrap(),
        used,
        "{me}"
    );
    assert_eq!(
        today["costs"][0]["amount"].as_f64().unwrap(),
        used as f64,
        "{me}"
    );

    // Nothing without a valid credential.
    let (status, _) = send(
        reqwest::Method::GET,
        s.public_addr,
        "/v1/me",
        "sk_nope",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    s.shutdown().await.unwrap();
}

/// A webhook receiver on a free loopback port: each POST is handed over
/// (headers, body) and answered with the next of `answers` (200 after).
async fn receiver(
    answers: Vec<u16>,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(axum::http::HeaderMap, Vec<u8>)>,
) {
    use axum::http::StatusCode as S;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let answers = Arc::new(std::sync::Mutex::new(answers.into_iter()));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let tx = tx.clone();
                let answers = Arc::clone(&answers);
                async move {
                    let _ = tx.send((headers, body.to_vec()));
                    let code = answers.lock().unwrap().next().unwrap_or(200);
                    S::from_u16(code).unwrap()
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), rx)
}

/// The next delivery the receiver got: its event, after checking its
/// signature with `secret`.
async fn next_event(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(axum::http::HeaderMap, Vec<u8>)>,
    secret: &str,
) -> Value {
    let (headers, body) = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("a delivery within 10 s")
        .unwrap();
    let signature = headers["x-maas-signature"].to_str().unwrap();
    assert_eq!(signature, maas_core::webhook::sign(secret, &body));
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(headers["x-maas-event"].to_str().unwrap(), event["type"]);
    event
}

/// The webhook's deliveries once its first has `n` attempts recorded.
async fn attempts(s: &RunningServer, hook: &str, n: usize) -> Value {
    let path = format!("/api/v1/webhooks/{hook}/deliveries");
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let (_, d) = admin(s, reqwest::Method::GET, &path, None).await;
            if d[0]["attempts"].as_array().map_or(0, Vec::len) >= n {
                return d;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the attempt recorded within 10 s")
}

#[tokio::test]
async fn webhooks_are_signed_retried_and_told_of_budgets_once() {
    let clock = Arc::new(ManualClock::default());
    let s = server_on(clock.clone()).await;
    // The first delivery fails with a 500; the rest succeed.
    let (url, mut rx) = receiver(vec![500]).await;

    for (bad, field) in [
        (json!({"url": "ftp://x", "events": ["webhook.test"]}), "url"),
        (json!({"url": url, "events": []}), "events"),
        (json!({"url": url, "events": ["budget.nope"]}), "events"),
        (json!({"events": ["webhook.test"]}), "url"),
    ] {
        let (status, body) = admin(
            &s,
            reqwest::Method::POST,
            "/api/v1/webhooks",
            Some(bad.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body.to_string().contains(field), "{bad}: {body}");
    }
    let (_, none) = admin(&s, reqwest::Method::GET, "/api/v1/webhooks", None).await;
    assert_eq!(none, json!([]));
    let (status, created) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/webhooks",
        Some(json!({"url": url, "events": ["budget.soft_limit_reached", "budget.exhausted", "webhook.test"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    let hook = created["webhook"]["id"].as_str().unwrap().to_owned();
    let (_, listed) = admin(&s, reqwest::Method::GET, "/api/v1/webhooks", None).await;
    assert_eq!(listed[0]["id"], hook.as_str());
    assert!(!listed.to_string().contains(&secret), "{listed}");

    // A test event: the first attempt answered 500, retried 1 s later.
    let (status, event) = admin(
        &s,
        reqwest::Method::POST,
        &format!("/api/v1/webhooks/{hook}/test"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{event}");
    let first = next_event(&mut rx, &secret).await;
    assert_eq!(
        (&first["type"], &first["id"]),
        (&json!("webhook.test"), &event["id"])
    );
    // Once the failed attempt is recorded (retry due 1 s later), 1 s passes.
    attempts(&s, &hook, 1).await;
    clock.advance(std::time::Duration::from_secs(1));
    let again = next_event(&mut rx, &secret).await;
    assert_eq!(again["id"], first["id"], "the same event, retried");
    let deliveries = attempts(&s, &hook, 2).await;
    assert_eq!(deliveries[0]["state"], "delivered", "{deliveries}");
    let codes: Vec<&Value> = deliveries[0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status"])
        .collect();
    assert_eq!(codes, [&json!(500), &json!(200)], "{deliveries}");

    // A budget with a soft limit: passing it and running out are each told
    // once, however many requests pass or are refused.
    let (tid, _, key) = bulk_tenant(&s, "acme").await;
    price_per_token(&s).await;
    let (status, body) = admin(
        &s,
        reqwest::Method::PUT,
        &format!("/api/v1/tenants/{tid}/budget"),
        Some(json!({"amount": 40.0, "period": "daily", "soft_limit": 20.0})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut refused = 0;
    for _ in 0..12 {
        let (status, body) = chat(&s, &key, SIMULATOR_MODEL).await;
        match status {
            StatusCode::OK => {}
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("{other}: {body}"),
        }
    }
    assert!(
        refused >= 2,
        "the budget ran out and refused more than once"
    );
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let e = next_event(&mut rx, &secret).await;
        assert_eq!(
            (&e["data"]["scope"], &e["data"]["subject"]),
            (&json!("tenant"), &json!("acme")),
            "{e}"
        );
        assert_eq!(
            e["data"]["resets_at"],
            1_735_689_600_000_i64 + 86_400_000,
            "{e}"
        );
        kinds.push(e["type"].as_str().unwrap().to_owned());
    }
    kinds.sort();
    assert_eq!(kinds, ["budget.exhausted", "budget.soft_limit_reached"]);
    // Stored once each, whatever the number of refusals: with the test
    // event, three deliveries in all.
    let (_, all) = admin(
        &s,
        reqwest::Method::GET,
        &format!("/api/v1/webhooks/{hook}/deliveries"),
        None,
    )
    .await;
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");

    // Removed: listed no more, its deliveries gone with it.
    let (status, _) = admin(
        &s,
        reqwest::Method::DELETE,
        &format!("/api/v1/webhooks/{hook}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = admin(
        &s,
        reqwest::Method::GET,
        &format!("/api/v1/webhooks/{hook}/deliveries"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Created and removed, audited.
    assert_eq!(
        audit_actions(&s, "webhook").await,
        ["webhook.delete", "webhook.create"]
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_pending_delivery_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let on_sled = |clock: Arc<ManualClock>| ServerConfig {
        memory: false,
        data_dir: dir.path().join("data"),
        ..config_on(clock)
    };
    // A receiver that is not up yet: its port, free for now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = Server::start(on_sled(Arc::new(ManualClock::default())))
        .await
        .unwrap();
    let (status, created) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/webhooks",
        Some(json!({"url": format!("http://127.0.0.1:{port}/hook"), "events": ["webhook.test"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    let hook = created["webhook"]["id"].as_str().unwrap().to_owned();
    let (_, event) = admin(
        &s,
        reqwest::Method::POST,
        &format!("/api/v1/webhooks/{hook}/test"),
        None,
    )
    .await;
    let d = attempts(&s, &hook, 1).await;
    assert_eq!(d[0]["state"], "pending", "{d}");
    assert_eq!(d[0]["attempts"][0]["status"], Value::Null, "{d}");
    s.shutdown().await.unwrap();

    // The receiver comes up, the server starts again on the same data: the
    // delivery is made when its retry comes due.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((headers, body.to_vec()));
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let clock = Arc::new(ManualClock::default());
    clock.advance(std::time::Duration::from_secs(1));
    let s = Server::start(on_sled(clock)).await.unwrap();
    let got = next_event(&mut rx, &secret).await;
    assert_eq!(got["id"], event["id"]);
    let d = attempts(&s, &hook, 2).await;
    assert_eq!(d[0]["state"], "delivered", "{d}");
    s.shutdown().await.unwrap();
}

/// An upstream that answers every chat completion with 1,000 prompt tokens
/// of which 800 were cached, and 10 completion tokens.
async fn caching_upstream() -> String {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            axum::Json(json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "cachey",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1000, "completion_tokens": 10, "total_tokens": 1010,
                          "prompt_tokens_details": {"cached_tokens": 800}}
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn cached_prompt_tokens_are_billed_once_at_the_cached_price() {
    let s = server().await;
    let upstream = caching_upstream().await;
    // Per million: input 1,000, cached input 100, output 10,000 (USD).
    let (status, body) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/models",
        Some(json!({"id": "cachey", "url": upstream, "pricing": {
            "input_per_million": 1000.0, "cached_input_per_million": 100.0,
            "output_per_million": 10000.0, "currency": "USD"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["pricing"]["cached_input_per_million"], 100.0, "{body}");
    let (tid, _, key) = bulk_tenant(&s, "acme").await;
    let (status, body) = admin(
        &s,
        reqwest::Method::PUT,
        &format!("/api/v1/tenants/{tid}/budget"),
        Some(json!({"amount": 10.0, "period": "daily"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, answer) = chat(&s, &key, "cachey").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // 200 uncached x 1,000 + 800 cached x 100 + 10 x 10,000 per million:
    // 0.2 + 0.08 + 0.1 = 0.38, charged once.
    let (_, b) = admin(
        &s,
        reqwest::Method::GET,
        &format!("/api/v1/tenants/{tid}/budget"),
        None,
    )
    .await;
    assert!((b["spent"].as_f64().unwrap() - 0.38).abs() < 1e-9, "{b}");
    assert_eq!(b["reserved"], 0.0, "{b}");
    let (status, me) = send(reqwest::Method::GET, s.public_addr, "/v1/me", &key, None).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["today"]["cached_tokens"], 800, "{me}");
    assert!(
        (me["today"]["costs"][0]["amount"].as_f64().unwrap() - 0.38).abs() < 1e-9,
        "{me}"
    );
    // A cached price below zero is refused, naming the field.
    let (status, body) = admin(
        &s,
        reqwest::Method::PUT,
        "/api/v1/models/cachey",
        Some(
            json!({"pricing": {"input_per_million": 1.0, "cached_input_per_million": -1.0,
            "output_per_million": 1.0}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.to_string().contains("cached_input_per_million"),
        "{body}"
    );
    s.shutdown().await.unwrap();
}
