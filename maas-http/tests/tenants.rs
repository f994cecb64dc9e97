//! Tenants as callers, over real loopback HTTP on the example server (seed
//! 003's flow): a tenant created through the management API gets an `sk_`
//! key, and that key calls models at the tenant's tier — the lowest-level
//! tier while the tenant has none.

#![cfg(feature = "server")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use maas_core::ManualClock;
use maas_http::server::{
    RunningServer, SIMULATOR_MODEL, SIMULATOR_PREMIUM_MODEL, Server, ServerConfig,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn users_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/users.toml")
}

async fn server() -> RunningServer {
    Server::start(ServerConfig {
        memory: true,
        listen: any_port(),
        admin_listen: any_port(),
        simulator_listen: any_port(),
        users: Some(users_file()),
        shutdown_grace_secs: 5,
        clock: Arc::new(ManualClock::default()),
        ..ServerConfig::default()
    })
    .await
    .unwrap()
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
    let mut ids: Vec<String> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
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
