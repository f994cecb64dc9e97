//! Seed 001's data-plane protocol against the control plane on a loopback
//! listener, with a plain WebSocket client: a bad key is refused; register
//! → registered; heartbeat → heartbeat_ack; the data plane listed online
//! with the seed's fields; deploy → artifact_available, whose download
//! matches its sha256 and signature; revoking the key closes the socket;
//! DELETE disconnects.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use maas_core::artifact::{ArtifactMeta, verify};
use maas_core::fairshare::{FairShare, FairShareConfig};
use maas_core::mcp::McpServers;
use maas_core::projects::Projects;
use maas_core::rootkeys::RootKeys;
use maas_core::scheduling::Scheduling;
use maas_core::usage::{UsageConfig, UsageLedger};
use maas_core::{
    KeyHasher, KeyService, ManualClock, ModelService, TierService, Timestamp, UserKeys,
};
use maas_http::HttpConfig;
use maas_http::controlplane::{self, ControlPlaneState};
use maas_http::management::{self, ManagementServices, ManagementState};
use maas_store_memory::MemoryStore;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const ADMIN: &str = "admin-token-0123456789";

struct ControlPlane {
    base: String,
    ws: String,
    clock: Arc<ManualClock>,
    usage: UsageLedger,
    admission: maas_core::AdmissionLimits,
}

async fn control_plane() -> ControlPlane {
    let clock = Arc::new(ManualClock::default());
    clock.set(Timestamp::from_millis(1_764_028_800_000));
    let storage = MemoryStore::new().storage();
    let fs = FairShare::with_clock(FairShareConfig::default(), clock.clone()).unwrap();
    let keys = KeyService::new_with_clock(storage.clone(), KeyHasher::random(), clock.clone());
    let projects = Projects::new_with_clock(keys.clone(), clock.clone())
        .with_heartbeat(Duration::from_secs(10));
    let usage = UsageLedger::new_with_clock(&storage, UsageConfig::default(), clock.clone());
    let admission = maas_core::AdmissionLimits::with_config(
        storage.clone(),
        maas_core::admission::AdmissionConfig::default(),
        clock.clone(),
    );
    let services = ManagementServices {
        scheduling: Scheduling::new(storage.clone(), fs, clock.clone()),
        tiers: TierService::new_with_clock(storage.clone(), clock.clone()),
        models: ModelService::new_with_clock(storage.clone(), clock.clone()),
        user_keys: UserKeys::new_with_clock(keys.clone(), clock.clone()),
        usage: usage.clone(),
        mcp: McpServers::new_with_clock(storage.clone(), clock.clone()),
        root_keys: RootKeys::new_with_clock(keys, clock.clone()),
        projects: projects.clone(),
        webhooks: maas_core::webhook::Webhooks::new(storage.clone(), KeyHasher::random()),
        admission: admission.clone(),
        storage,
    };
    let state = ManagementState::new(ADMIN, services).unwrap();
    let config = HttpConfig::default();
    let app = management::router(state, &config).merge(controlplane::router(
        ControlPlaneState::new(projects).with_usage(usage.clone(), admission.clone()),
        &config,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    ControlPlane {
        base: format!("http://{addr}"),
        ws: format!("ws://{addr}/ws/data-plane"),
        clock,
        usage,
        admission,
    }
}

async fn admin(
    cp: &ControlPlane,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", cp.base))
        .bearer_auth(ADMIN);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn say(ws: &mut Socket, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON message; `None` once the socket closed.
async fn hear(ws: &mut Socket) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer within 10 s");
        match msg {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_protocol_step_by_step() {
    let cp = control_plane().await;
    let (status, project) = admin(
        &cp,
        reqwest::Method::POST,
        "/api/v1/projects",
        Some(json!({"name": "edge"})),
    )
    .await;
    assert_eq!(status, 201, "{project}");
    let pid = project["id"].as_str().unwrap().to_owned();
    let (_, key) = admin(
        &cp,
        reqwest::Method::POST,
        &format!("/api/v1/projects/{pid}/api-keys"),
        Some(json!({"name": "dp"})),
    )
    .await;
    let secret = key["key"].as_str().unwrap().to_owned();
    let (_, other) = admin(
        &cp,
        reqwest::Method::POST,
        &format!("/api/v1/projects/{pid}/api-keys"),
        Some(json!({"name": "read-only", "scopes": ["artifacts:read"]})),
    )
    .await;

    // Refused: a wrong key, a key without data-plane:connect, no register.
    for bad in [
        json!({"type": "register", "project_id": pid, "api_key": "mp_nope"}),
        json!({"type": "register", "project_id": pid, "api_key": other["key"]}),
        json!({"type": "heartbeat"}),
    ] {
        let (mut ws, _) = tokio_tungstenite::connect_async(&cp.ws).await.unwrap();
        say(&mut ws, bad.clone()).await;
        let m = hear(&mut ws).await.unwrap();
        assert_eq!(m["type"], "error", "{bad}: {m}");
        assert!(hear(&mut ws).await.is_none(), "closed after {bad}");
    }

    // Register → registered.
    let (mut ws, _) = tokio_tungstenite::connect_async(&cp.ws).await.unwrap();
    say(
        &mut ws,
        json!({"type": "register", "project_id": pid, "api_key": secret, "name": "edge-1",
               "metadata": {"version": "0.1.0"}}),
    )
    .await;
    let m = hear(&mut ws).await.unwrap();
    assert_eq!(m["type"], "registered", "{m}");
    assert_eq!(m["heartbeat_interval_secs"], 10);
    let dp = m["data_plane_id"].as_str().unwrap().to_owned();
    assert_eq!(dp.len(), 36, "a UUID: {dp}");
    let public_key = m["artifact_public_key"].as_str().unwrap().to_owned();

    // Heartbeat → heartbeat_ack; listed online with the seed's fields.
    say(&mut ws, json!({"type": "heartbeat"})).await;
    assert_eq!(
        hear(&mut ws).await.unwrap(),
        json!({"type": "heartbeat_ack"})
    );
    let (status, list) = admin(
        &cp,
        reqwest::Method::GET,
        &format!("/api/v1/projects/{pid}/data-planes"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let d = &list[0];
    assert_eq!(
        (&d["id"], &d["project_id"], &d["name"], &d["status"]),
        (&json!(dp), &json!(pid), &json!("edge-1"), &json!("online")),
        "{list}"
    );
    for field in ["last_seen", "connected_at", "created_at"] {
        assert!(d[field].as_str().unwrap().ends_with('Z'), "{field}: {d}");
    }
    assert_eq!(d["metadata"], json!({"version": "0.1.0"}));
    assert_eq!(d["artifact_id"], Value::Null);
    let (status, one) = admin(
        &cp,
        reqwest::Method::GET,
        &format!("/api/v1/projects/{pid}/data-planes/{dp}"),
        None,
    )
    .await;
    assert_eq!((status, &one["id"]), (200, &json!(dp)));

    // Deploy (empty body: the current configuration) → artifact_available.
    let (_, tier) = admin(
        &cp,
        reqwest::Method::POST,
        "/api/v1/tiers",
        Some(
            json!({"name": "gold", "level": 5, "groups": ["g"], "requests_per_minute": 10,
                    "tokens_per_minute": 1000, "models": ["*"]}),
        ),
    )
    .await;
    assert_eq!(tier["name"], "gold", "{tier}");
    let (status, deployed) = admin(
        &cp,
        reqwest::Method::POST,
        &format!("/api/v1/projects/{pid}/deploy"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{deployed}");
    assert_eq!(deployed["data_planes_notified"], 1);
    let artifact = deployed["artifact_id"].as_str().unwrap().to_owned();
    let m = hear(&mut ws).await.unwrap();
    assert_eq!(m["type"], "artifact_available", "{m}");
    assert_eq!(m["artifact_id"], artifact.as_str());
    assert_eq!(
        m["download_url"],
        format!("/artifacts/{artifact}/download").as_str()
    );
    assert_eq!(m["sequence"], 1);

    // The download, to the project key: its sha256 and signature check.
    let url = format!("{}{}", cp.base, m["download_url"].as_str().unwrap());
    let res = reqwest::Client::new().get(&url).send().await.unwrap();
    assert_eq!(res.status(), 401, "needs the key");
    let res = reqwest::Client::new()
        .get(&url)
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "the admin token is not a project key");
    let res = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let bytes = res.bytes().await.unwrap().to_vec();
    let meta = ArtifactMeta {
        artifact_id: artifact.clone(),
        sequence: 1,
        sha256: m["sha256"].as_str().unwrap().to_owned(),
        signature: m["signature"].as_str().unwrap().to_owned(),
        size: m["size"].as_u64().unwrap(),
        created_at: Timestamp::from_millis(0),
    };
    verify(&meta, &bytes, &public_key).unwrap();
    let content: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(content["format"], 1);
    assert!(
        content["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "tier" && r["id"] == "gold"),
        "{content}"
    );
    // No secret in it: neither key's secret nor the admin token.
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(!text.contains(&secret) && !text.contains(ADMIN));
    // Tampered or signed by another key: refused.
    let mut bad = bytes.clone();
    bad[10] ^= 1;
    assert!(verify(&meta, &bad, &public_key).is_err());
    let other_key = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    assert!(verify(&meta, &bytes, other_key).is_err());

    // Applied: online on it; a second deploy of that artifact by id.
    say(
        &mut ws,
        json!({"type": "heartbeat", "artifact_id": artifact}),
    )
    .await;
    assert_eq!(hear(&mut ws).await.unwrap()["type"], "heartbeat_ack");
    let (_, one) = admin(
        &cp,
        reqwest::Method::GET,
        &format!("/api/v1/projects/{pid}/data-planes/{dp}"),
        None,
    )
    .await;
    assert_eq!(
        (&one["status"], &one["artifact_id"]),
        (&json!("online"), &json!(artifact))
    );
    let (status, again) = admin(
        &cp,
        reqwest::Method::POST,
        &format!("/api/v1/projects/{pid}/deploy"),
        Some(json!({"artifact_id": artifact})),
    )
    .await;
    assert_eq!((status, &again["artifact_id"]), (200, &json!(artifact)));
    assert_eq!(
        hear(&mut ws).await.unwrap()["artifact_id"],
        artifact.as_str()
    );
    let (status, missing) = admin(
        &cp,
        reqwest::Method::POST,
        &format!("/api/v1/projects/{pid}/deploy"),
        Some(json!({"artifact_id": "0190d6f0-0000-7000-8000-000000000000"})),
    )
    .await;
    assert_eq!(status, 404, "{missing}");

    // Silent for 1.5 intervals: offline.
    cp.clock.advance(Duration::from_secs(16));
    let (_, one) = admin(
        &cp,
        reqwest::Method::GET,
        &format!("/api/v1/projects/{pid}/data-planes/{dp}"),
        None,
    )
    .await;
    assert_eq!(one["status"], "offline");

    // The key revoked: told, closed at once; listed offline.
    let kid = key["id"].as_str().unwrap();
    let (status, _) = admin(
        &cp,
        reqwest::Method::DELETE,
        &format!("/api/v1/projects/{pid}/api-keys/{kid}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let m = hear(&mut ws).await.unwrap();
    assert_eq!(m["type"], "disconnect", "{m}");
    assert!(hear(&mut ws).await.is_none());
    let res = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "a revoked key downloads nothing");

    // A new key, a new connection (same id asked back); DELETE disconnects.
    let (_, key2) = admin(
        &cp,
        reqwest::Method::POST,
        &format!("/api/v1/projects/{pid}/api-keys"),
        Some(json!({"name": "dp-2"})),
    )
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(&cp.ws).await.unwrap();
    say(
        &mut ws,
        json!({"type": "register", "project_id": pid, "api_key": key2["key"], "data_plane_id": dp}),
    )
    .await;
    let m = hear(&mut ws).await.unwrap();
    assert_eq!(m["data_plane_id"], dp.as_str());
    // The current artifact comes at once.
    assert_eq!(
        hear(&mut ws).await.unwrap()["artifact_id"],
        artifact.as_str()
    );
    let (status, _) = admin(
        &cp,
        reqwest::Method::DELETE,
        &format!("/api/v1/projects/{pid}/data-planes/{dp}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(hear(&mut ws).await.unwrap()["type"], "disconnect");
    let (status, list) = admin(
        &cp,
        reqwest::Method::GET,
        &format!("/api/v1/projects/{pid}/data-planes"),
        None,
    )
    .await;
    assert_eq!((status, list), (200, json!([])));
    let (status, _) = admin(
        &cp,
        reqwest::Method::GET,
        &format!("/api/v1/projects/{pid}/data-planes/{dp}"),
        None,
    )
    .await;
    assert_eq!(status, 404);
}

/// A data plane's usage reports: acknowledged, added once (a report sent
/// again is acknowledged and not counted), charged to the tenant's budget;
/// an invalid one is refused for good and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reports_are_counted_once_and_charged_to_budgets() {
    use maas_core::admission::{BudgetScope, NewBudget};
    use maas_core::usage::{GroupBy, TimeRange, UsageScope};

    let cp = control_plane().await;
    let (_, project) = admin(
        &cp,
        reqwest::Method::POST,
        "/api/v1/projects",
        Some(json!({"name": "edge"})),
    )
    .await;
    let pid = project["id"].as_str().unwrap().to_owned();
    let (_, key) = admin(
        &cp,
        reqwest::Method::POST,
        &format!("/api/v1/projects/{pid}/api-keys"),
        Some(json!({"name": "dp"})),
    )
    .await;
    cp.admission
        .set_budget(
            &maas_core::Actor::new("admin"),
            BudgetScope::Tenant("acme".into()),
            NewBudget {
                amount: 10.0,
                currency: Some("USD".into()),
                period: maas_core::counter::Period::Daily,
                soft_threshold: None,
            },
        )
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(&cp.ws).await.unwrap();
    say(
        &mut ws,
        json!({"type": "register", "project_id": pid, "api_key": key["key"]}),
    )
    .await;
    assert_eq!(hear(&mut ws).await.unwrap()["type"], "registered");

    let now = maas_core::Clock::now(&*cp.clock).as_millis();
    let minute = now - now % 60_000;
    let report = |sequence: u64| {
        json!({
            "type": "usage_report",
            "source": "0190a6e0-0000-4000-8000-000000000001",
            "sequence": sequence,
            "usage": [{
                "key": {"minute": minute, "tenant": "acme", "key_id": "key_1", "model": "m", "currency": "USD"},
                "sums": {"requests": 3, "errors": 0, "cancelled": 0, "input_tokens": 30,
                         "output_tokens": 60, "cached_tokens": 0, "estimated": 0,
                         "cache_hits": 0, "cache_misses": 0, "cost_nanos": 2_500_000_000u64},
            }],
            "verifications": [{
                "key": {"minute": minute, "keyspace_id": "ks_1", "key_id": "key_1", "owner_id": ""},
                "sums": {"success": 3, "rate_limited": 1, "usage_exceeded": 0, "other": 0},
            }],
        })
    };
    // Skip anything else the control plane sends (the current artifact).
    async fn answer(ws: &mut Socket) -> Value {
        loop {
            let m = hear(ws).await.unwrap();
            if m["type"].as_str().unwrap().starts_with("usage_") {
                return m;
            }
        }
    }
    say(&mut ws, report(1)).await;
    assert_eq!(
        answer(&mut ws).await,
        json!({"type": "usage_ack", "sequence": 1, "added": true})
    );
    // The acknowledgement was lost, say: sent again, acknowledged, not added.
    say(&mut ws, report(1)).await;
    assert_eq!(
        answer(&mut ws).await,
        json!({"type": "usage_ack", "sequence": 1, "added": false})
    );
    // Invalid: refused for good, nothing changes.
    let mut bad = report(2);
    bad["usage"][0]["key"]["tenant"] = json!("");
    say(&mut ws, bad).await;
    let m = answer(&mut ws).await;
    assert_eq!(
        (&m["type"], &m["sequence"]),
        (&json!("usage_rejected"), &json!(2)),
        "{m}"
    );
    assert!(m["reason"].as_str().unwrap().contains("tenant"), "{m}");
    say(&mut ws, json!({"type": "usage_report", "sequence": 3})).await;
    assert_eq!(answer(&mut ws).await["type"], "usage_rejected");

    let range = TimeRange::new(
        maas_core::Timestamp::from_millis(minute),
        maas_core::Timestamp::from_millis(minute + 60_000),
    );
    let rows = cp
        .usage
        .totals(range, GroupBy::Tenant, &UsageScope::default())
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].group.as_str(), rows[0].usage.requests),
        ("acme", 3)
    );
    let v = cp
        .usage
        .verifications(range, &maas_core::usage::VerificationScope::key("key_1"))
        .await
        .unwrap();
    assert_eq!(v.iter().map(|d| d.success).sum::<u64>(), 3, "{v:?}");
    assert_eq!(v.iter().map(|d| d.rate_limited).sum::<u64>(), 1, "{v:?}");
    let budget = cp
        .admission
        .budget_status(&BudgetScope::Tenant("acme".into()))
        .await
        .unwrap();
    assert!((budget.spent - 2.5).abs() < 1e-9, "{budget:?}");
}
