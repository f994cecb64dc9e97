//! The management API through `oneshot`: admin auth on every path, the
//! problem+json shape, tenants, fair share, capacity, audit, tiers, models.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use maas_core::Clock as _;
use maas_core::fairshare::{FairShare, FairShareConfig};
use maas_core::mcp::McpServers;
use maas_core::projects::Projects;
use maas_core::rootkeys::RootKeys;
use maas_core::scheduling::Scheduling;
use maas_core::usage::{UsageConfig, UsageLedger, UsageRecord};
use maas_core::{
    KeyHasher, KeyService, ManualClock, ModelService, Pricing, TierService, Timestamp, UserKeys,
};
use maas_http::HttpConfig;
use maas_http::management::{ManagementServices, ManagementState, router};
use maas_store_memory::MemoryStore;
use serde_json::{Value, json};
use tower::ServiceExt;

const ADMIN: &str = "admin-token-0123456789";
/// 2025-11-25T00:00:00Z.
const T0: i64 = 1_764_028_800_000;

struct Parts {
    router: Router,
    usage: UsageLedger,
    clock: Arc<ManualClock>,
}

fn services(clock: Arc<ManualClock>) -> ManagementServices {
    let storage = MemoryStore::new().storage();
    let fs = FairShare::with_clock(FairShareConfig::default(), clock.clone()).unwrap();
    let keys = KeyService::new_with_clock(storage.clone(), KeyHasher::random(), clock.clone());
    let root_keys = RootKeys::new_with_clock(keys.clone(), clock.clone());
    let projects = Projects::new_with_clock(keys.clone(), clock.clone());
    ManagementServices {
        scheduling: Scheduling::new(storage.clone(), fs, clock.clone()),
        tiers: TierService::new_with_clock(storage.clone(), clock.clone()),
        models: ModelService::new_with_clock(storage.clone(), clock.clone()),
        user_keys: UserKeys::new_with_clock(keys, clock.clone()),
        usage: UsageLedger::new_with_clock(&storage, UsageConfig::default(), clock.clone()),
        mcp: McpServers::new_with_clock(storage.clone(), clock),
        root_keys,
        projects,
        webhooks: maas_core::webhook::Webhooks::new(storage.clone(), KeyHasher::random()),
        admission: maas_core::AdmissionLimits::new(storage.clone()),
        storage,
    }
}

fn parts() -> Parts {
    let clock = Arc::new(ManualClock::default());
    clock.set(Timestamp::from_millis(T0));
    let services = services(clock.clone());
    let usage = services.usage.clone();
    let state = ManagementState::new(ADMIN, services).unwrap();
    Parts {
        router: router(state, &HttpConfig::default()),
        usage,
        clock,
    }
}

fn app() -> Router {
    parts().router
}

struct Reply {
    status: StatusCode,
    content_type: String,
    body: Value,
}

async fn call_as(
    r: &Router,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let res = r.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    Reply {
        status,
        content_type,
        body,
    }
}

async fn call(r: &Router, method: &str, path: &str, body: Option<Value>) -> Reply {
    call_as(r, Some(ADMIN), method, path, body).await
}

fn assert_problem(r: &Reply, status: StatusCode) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.content_type, "application/problem+json");
    assert_eq!(r.body["status"], status.as_u16());
    for f in ["type", "title", "detail", "instance"] {
        assert!(r.body[f].is_string(), "{f}: {}", r.body);
    }
}

fn assert_invalid(r: &Reply, location: &str) {
    assert_problem(r, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["errors"][0]["location"], location, "{}", r.body);
    assert_eq!(r.body["errors"][0]["code"], "invalid");
}

#[tokio::test]
async fn every_path_needs_the_admin_token() {
    let a = app();
    for path in [
        "/api/v1/tenants",
        "/api/v1/health",
        "/api/v1/no-such-route",
        "/elsewhere",
    ] {
        for token in [None, Some("wrong-token-0123456789")] {
            let r = call_as(&a, token, "GET", path, None).await;
            assert_problem(&r, StatusCode::UNAUTHORIZED);
            assert_eq!(
                r.body["detail"], "a valid admin token is required",
                "no hint about {path}"
            );
        }
    }
    let r = call(&a, "GET", "/api/v1/health", None).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    assert_problem(
        &call(&a, "GET", "/api/v1/no-such-route", None).await,
        StatusCode::NOT_FOUND,
    );
    let short = ManagementState::new("short", services(Arc::new(ManualClock::default())));
    assert!(short.is_err(), "admin tokens are at least 16 characters");
}

#[tokio::test]
async fn tenants_and_fair_share() {
    let a = app();
    let r = call(
        &a,
        "POST",
        "/api/v1/tenants",
        Some(json!({"name": "acme", "weight": 200, "tokens_per_minute": 100000})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (r.body["weight"].clone(), r.body["group"].clone()),
        (json!(200), json!("default"))
    );
    assert_problem(
        &call(&a, "POST", "/api/v1/tenants", Some(json!({"name": "acme"}))).await,
        StatusCode::CONFLICT,
    );

    let r = call(&a, "GET", "/api/v1/tenants", None).await;
    assert_eq!(r.body["data"][0]["name"], "acme");
    assert_eq!(r.body["cursor"], Value::Null);
    let r = call(&a, "GET", &format!("/api/v1/tenants/{id}"), None).await;
    assert_eq!(r.body["tokens_per_minute"], 100000);
    assert_problem(
        &call(&a, "GET", "/api/v1/tenants/not-an-id", None).await,
        StatusCode::NOT_FOUND,
    );

    let r = call(
        &a,
        "PATCH",
        &format!("/api/v1/tenants/{id}/weight"),
        Some(json!({"weight": 500})),
    )
    .await;
    assert_eq!(r.body["weight"], 500);
    for bad in [
        json!({"weight": 0}),
        json!({"weight": -3}),
        json!({"weight": 2_000_000}),
    ] {
        let r = call(
            &a,
            "PATCH",
            &format!("/api/v1/tenants/{id}/weight"),
            Some(bad),
        )
        .await;
        assert_invalid(&r, "/weight");
    }
    let r = call(
        &a,
        "PATCH",
        &format!("/api/v1/tenants/{id}/weight"),
        Some(json!({"weight": "x"})),
    )
    .await;
    assert_invalid(&r, "/weight");
    let r = call(
        &a,
        "PUT",
        &format!("/api/v1/tenants/{id}/quota"),
        Some(json!({"tokens_per_minute": null})),
    )
    .await;
    assert_eq!(r.body["tokens_per_minute"], Value::Null);
    let r = call(
        &a,
        "PUT",
        &format!("/api/v1/tenants/{id}/quota"),
        Some(json!({"tokens_per_minute": -1})),
    )
    .await;
    assert_invalid(&r, "/tokens_per_minute");
    let r = call(
        &a,
        "PATCH",
        &format!("/api/v1/tenants/{id}/group"),
        Some(json!({"group": "gold"})),
    )
    .await;
    assert_invalid(&r, "/group");

    let r = call(
        &a,
        "POST",
        "/api/v1/fairshare/groups",
        Some(json!({"name": "gold", "weight": 300})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_problem(
        &call(
            &a,
            "POST",
            "/api/v1/fairshare/groups",
            Some(json!({"name": "gold", "weight": 1})),
        )
        .await,
        StatusCode::CONFLICT,
    );
    let r = call(
        &a,
        "PATCH",
        &format!("/api/v1/tenants/{id}/group"),
        Some(json!({"group": "gold"})),
    )
    .await;
    assert_eq!(r.body["group"], "gold");
    let r = call(
        &a,
        "PATCH",
        "/api/v1/fairshare/groups/gold/weight",
        Some(json!({"weight": 400})),
    )
    .await;
    assert_eq!(r.body["weight"], 400);
    assert_problem(
        &call(
            &a,
            "PATCH",
            "/api/v1/fairshare/groups/nope/weight",
            Some(json!({"weight": 4})),
        )
        .await,
        StatusCode::NOT_FOUND,
    );
    let r = call(&a, "GET", "/api/v1/fairshare/groups", None).await;
    let names: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "gold"]);
    let r = call(&a, "GET", "/api/v1/fairshare/live", None).await;
    let gold = r.body["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "gold")
        .unwrap()
        .clone();
    assert_eq!(
        (
            gold["weight"].clone(),
            gold["tenants"][0]["name"].clone(),
            gold["tenants"][0]["weight"].clone()
        ),
        (json!(400), json!("acme"), json!(500))
    );
}

#[tokio::test]
async fn capacity_is_live_and_bounded() {
    let a = app();
    let r = call(&a, "GET", "/api/v1/capacity", None).await;
    assert_eq!(r.body, json!({"max_in_flight": 64}));
    let r = call(
        &a,
        "PUT",
        "/api/v1/capacity",
        Some(json!({"max_in_flight": 8})),
    )
    .await;
    assert_eq!(r.body, json!({"max_in_flight": 8}));
    let r = call(&a, "GET", "/api/v1/stats", None).await;
    assert_eq!(
        r.body,
        json!({"in_flight": 0, "queued": 0, "max_in_flight": 8, "models": []})
    );
    for bad in [
        json!({"max_in_flight": 0}),
        json!({"max_in_flight": 10_000_000}),
        json!({"max_in_flight": -1}),
    ] {
        assert_invalid(
            &call(&a, "PUT", "/api/v1/capacity", Some(bad)).await,
            "/max_in_flight",
        );
    }
    assert_invalid(
        &call(&a, "PUT", "/api/v1/capacity", Some(json!({}))).await,
        "/max_in_flight",
    );
    assert_eq!(
        call(&a, "GET", "/api/v1/capacity", None).await.body,
        json!({"max_in_flight": 8})
    );
}

#[tokio::test]
async fn tiers_and_models() {
    let a = app();
    let tier = json!({"name": "gold", "level": 3, "groups": ["gold-users"], "requests_per_minute": 100, "tokens_per_minute": 100000, "max_tokens_per_request": 4096, "models": ["*"]});
    let r = call(&a, "POST", "/api/v1/tiers", Some(tier)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["models"], json!(["*"]));
    let r = call(
        &a,
        "PUT",
        "/api/v1/tiers/gold",
        Some(json!({"models": ["m1"], "requests_per_minute": 5})),
    )
    .await;
    assert_eq!(
        (
            r.body["models"].clone(),
            r.body["requests_per_minute"].clone()
        ),
        (json!(["m1"]), json!(5))
    );
    assert_invalid(
        &call(
            &a,
            "PUT",
            "/api/v1/tiers/gold",
            Some(json!({"requests_per_minute": 0})),
        )
        .await,
        "/requests_per_minute",
    );
    assert_eq!(
        call(&a, "GET", "/api/v1/tiers", None).await.body[0]["name"],
        "gold"
    );
    assert_eq!(
        call(&a, "DELETE", "/api/v1/tiers/gold", None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_problem(
        &call(&a, "GET", "/api/v1/tiers/gold", None).await,
        StatusCode::NOT_FOUND,
    );

    let model = json!({"id": "llama", "name": "Llama", "url": "http://127.0.0.1:8000", "owned_by": "ops", "tiers": [], "pricing": {"input_per_million": 0.5, "output_per_million": 1.5, "currency": "USD"}});
    let r = call(&a, "POST", "/api/v1/models", Some(model.clone())).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["url"], "http://127.0.0.1:8000");
    assert_problem(
        &call(&a, "POST", "/api/v1/models", Some(model)).await,
        StatusCode::CONFLICT,
    );
    let r = call(
        &a,
        "PUT",
        "/api/v1/models/llama",
        Some(json!({"url": "http://127.0.0.1:9000"})),
    )
    .await;
    assert_eq!(r.body["url"], "http://127.0.0.1:9000");
    let r = call(
        &a,
        "PUT",
        "/api/v1/models/llama/cache",
        Some(json!({"enabled": true, "ttl_seconds": 60, "max_entries": 100})),
    )
    .await;
    assert_eq!(r.body["cache"]["enabled"], true, "{}", r.body);
    // A pool of upstreams, its capacity and fallbacks.
    let pool = json!({"id": "pool", "upstreams": [
        {"url": "http://10.0.0.1:8000", "weight": 3, "max_in_flight": 8},
        {"url": "http://10.0.0.2:8000", "max_in_flight": 4},
    ], "fallbacks": ["llama"]});
    let r = call(&a, "POST", "/api/v1/models", Some(pool)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["url"], "http://10.0.0.1:8000", "the first upstream");
    assert_eq!(
        r.body["upstreams"],
        json!([
            {"url": "http://10.0.0.1:8000", "weight": 3, "max_in_flight": 8},
            {"url": "http://10.0.0.2:8000", "weight": 1, "max_in_flight": 4},
        ])
    );
    assert_eq!(r.body["capacity"], 12, "the sum of the upstreams' limits");
    assert_eq!(r.body["fallbacks"], json!(["llama"]));
    let r = call(
        &a,
        "PUT",
        "/api/v1/models/pool",
        Some(json!({"max_in_flight": 2, "fallbacks": []})),
    )
    .await;
    assert_eq!(
        (r.body["capacity"].clone(), r.body["fallbacks"].clone()),
        (json!(2), json!([]))
    );
    // A plain url makes it a pool of one again.
    let r = call(
        &a,
        "PUT",
        "/api/v1/models/pool",
        Some(json!({"url": "http://10.0.0.3:8000", "max_in_flight": null})),
    )
    .await;
    assert_eq!(
        r.body["upstreams"],
        json!([{"url": "http://10.0.0.3:8000", "weight": 1}])
    );
    assert_eq!(r.body["capacity"], Value::Null, "the global capacity");
    for (bad, field) in [
        (json!({"id": "p2"}), "/upstreams"),
        (
            json!({"id": "p2", "upstreams": [{"url": "ftp://x"}]}),
            "/upstreams/url",
        ),
        (
            json!({"id": "p2", "upstreams": [{"url": "http://a", "weight": 0}]}),
            "/upstreams/weight",
        ),
        (
            json!({"id": "p2", "upstreams": [{"url": "http://a"}, {"url": "http://a"}]}),
            "/upstreams/url",
        ),
        (
            json!({"id": "p2", "url": "http://b", "upstreams": [{"url": "http://a"}]}),
            "/upstream_url",
        ),
        (
            json!({"id": "p2", "url": "http://a", "fallbacks": ["p2"]}),
            "/fallbacks",
        ),
        (
            json!({"id": "p2", "url": "http://a", "max_in_flight": 0}),
            "/max_in_flight",
        ),
    ] {
        assert_invalid(&call(&a, "POST", "/api/v1/models", Some(bad)).await, field);
    }
    assert_eq!(
        call(&a, "DELETE", "/api/v1/models/pool", None).await.status,
        StatusCode::NO_CONTENT
    );
    let bad = json!({"id": "x", "url": "http://a", "pricing": {"input_per_million": -1, "output_per_million": 1}});
    assert_invalid(
        &call(&a, "POST", "/api/v1/models", Some(bad)).await,
        "/pricing/input_per_million",
    );
    assert_eq!(
        call(&a, "GET", "/api/v1/models", None)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        call(&a, "DELETE", "/api/v1/models/llama", None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_problem(
        &call(&a, "GET", "/api/v1/models/llama", None).await,
        StatusCode::NOT_FOUND,
    );
}

#[tokio::test]
async fn every_mutation_is_in_the_audit_log_by_pages() {
    let a = app();
    call(&a, "POST", "/api/v1/tenants", Some(json!({"name": "t1"}))).await;
    call(
        &a,
        "POST",
        "/api/v1/fairshare/groups",
        Some(json!({"name": "g", "weight": 5})),
    )
    .await;
    call(
        &a,
        "PUT",
        "/api/v1/capacity",
        Some(json!({"max_in_flight": 3})),
    )
    .await;
    let first = call(&a, "GET", "/api/v1/audit?limit=2", None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let items = first.body["data"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["action"], "capacity.create");
    assert_eq!(items[0]["actor"], "admin");
    assert_eq!(items[0]["target_kind"], "capacity");
    assert!(items[0]["after"].is_object());
    let cursor = first.body["cursor"].as_str().unwrap();
    let rest = call(
        &a,
        "GET",
        &format!("/api/v1/audit?limit=2&cursor={cursor}"),
        None,
    )
    .await;
    let items = rest.body["data"].as_array().unwrap();
    assert_eq!(items[0]["action"], "tenant.create");
    assert_eq!(rest.body["cursor"], Value::Null);
    assert_invalid(
        &call(&a, "GET", "/api/v1/audit?cursor=zzz", None).await,
        "/cursor",
    );
    assert_invalid(
        &call(&a, "GET", "/api/v1/audit?limit=0", None).await,
        "/limit",
    );
    assert_invalid(
        &call(&a, "GET", "/api/v1/audit?limit=x", None).await,
        "/query",
    );
}

#[tokio::test]
async fn bad_bodies_change_nothing() {
    let a = app();
    let req = Request::post("/api/v1/tenants")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(r#"{"name":"x"}"#))
        .unwrap();
    let res = a.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_invalid(
        &call(&a, "POST", "/api/v1/tenants", Some(json!({"name": 3}))).await,
        "/name",
    );
    assert_invalid(
        &call(&a, "POST", "/api/v1/tenants", Some(json!({}))).await,
        "/name",
    );
    assert_invalid(
        &call(
            &a,
            "POST",
            "/api/v1/tenants",
            Some(json!({"name": "a", "weight": 0})),
        )
        .await,
        "/weight",
    );
    assert_eq!(
        call(&a, "GET", "/api/v1/tenants", None).await.body["data"],
        json!([])
    );
    assert_eq!(
        call(&a, "GET", "/api/v1/audit", None).await.body["data"],
        json!([])
    );
}

#[tokio::test]
async fn tenant_keys() {
    let a = app();
    let r = call(&a, "POST", "/api/v1/tenants", Some(json!({"name": "acme"}))).await;
    let tenant = r.body["id"].as_str().unwrap().to_owned();
    let r = call(
        &a,
        "POST",
        &format!("/api/v1/tenants/{tenant}/keys"),
        Some(json!({"name": "prod-key"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let secret = r.body["secret"].as_str().unwrap().to_owned();
    let key_id = r.body["key"]["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with(r.body["key"]["key_prefix"].as_str().unwrap()));
    assert_eq!(r.body["key"]["tenant"], "acme");
    assert_problem(
        &call(
            &a,
            "POST",
            &format!("/api/v1/tenants/{tenant}/keys"),
            Some(json!({"name": "prod-key"})),
        )
        .await,
        StatusCode::CONFLICT,
    );
    assert_problem(
        &call(
            &a,
            "POST",
            "/api/v1/tenants/nope/keys",
            Some(json!({"name": "k"})),
        )
        .await,
        StatusCode::NOT_FOUND,
    );

    let r = call(&a, "GET", "/api/v1/keys?tenant=acme", None).await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 1);
    assert!(!r.body.to_string().contains(&secret), "no secrets in lists");
    assert_eq!(
        call(&a, "GET", "/api/v1/keys?tenant=other", None)
            .await
            .body["data"],
        json!([])
    );

    let r = call(
        &a,
        "PUT",
        &format!("/api/v1/keys/{key_id}/disabled"),
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!(r.body["enabled"], false, "{}", r.body);
    let r = call(
        &a,
        "PUT",
        &format!("/api/v1/keys/{key_id}/disabled"),
        Some(json!({"disabled": "yes"})),
    )
    .await;
    assert_invalid(&r, "/disabled");
    assert_eq!(
        call(&a, "DELETE", &format!("/api/v1/keys/{key_id}"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_problem(
        &call(&a, "DELETE", &format!("/api/v1/keys/{key_id}"), None).await,
        StatusCode::NOT_FOUND,
    );
    assert_problem(
        &call(&a, "DELETE", "/api/v1/keys/garbage", None).await,
        StatusCode::NOT_FOUND,
    );
}

#[tokio::test]
async fn usage_and_costs() {
    let p = parts();
    let a = &p.router;
    let price = Pricing::usd(1.0, 2.0);
    for (tenant, model, input, output) in [
        ("acme", "llama", 1_000_000, 0),
        ("acme", "qwen", 0, 500_000),
        ("beta", "llama", 2_000, 1_000),
    ] {
        p.usage
            .record(&UsageRecord {
                input_tokens: input,
                output_tokens: output,
                pricing: Some(price.clone()),
                ..UsageRecord::new(p.clock.now(), tenant, model)
            })
            .unwrap();
    }
    p.clock.advance(std::time::Duration::from_secs(60));
    let r = call(a, "GET", "/api/v1/usage", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let rows = r.body.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{}", r.body);
    let r = call(a, "GET", "/api/v1/usage/models", None).await;
    assert_eq!(r.body.as_array().unwrap().len(), 2);
    let r = call(a, "GET", "/api/v1/usage/series?granularity=day", None).await;
    assert_eq!(r.body.as_array().unwrap().len(), 1, "{}", r.body);
    let r = call(
        a,
        "GET",
        "/api/v1/usage/series/tenants?granularity=minute",
        None,
    )
    .await;
    assert_eq!(r.body.as_array().unwrap().len(), 2);
    let r = call(a, "GET", "/api/v1/costs?group_by=model", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.to_string().contains("USD"), "{}", r.body);
    assert_eq!(
        call(a, "GET", "/api/v1/usage/cache", None).await.body,
        json!([])
    );
    let from = T0 - 1000;
    let r = call(
        a,
        "GET",
        &format!("/api/v1/usage?from={from}&to=2025-11-25T00:10:00Z"),
        None,
    )
    .await;
    assert_eq!(r.body.as_array().unwrap().len(), 2, "{}", r.body);

    assert_invalid(
        &call(a, "GET", "/api/v1/usage/series?granularity=week", None).await,
        "/granularity",
    );
    assert_invalid(
        &call(a, "GET", "/api/v1/usage?from=yesterday", None).await,
        "/from",
    );
    assert_invalid(
        &call(
            a,
            "GET",
            &format!("/api/v1/usage?from={}&to={}", T0, T0 - 1),
            None,
        )
        .await,
        "/from",
    );
    assert_invalid(&call(a, "GET", "/api/v1/usage?from=0", None).await, "/to");
    assert_invalid(
        &call(a, "GET", "/api/v1/costs?group_by=planet", None).await,
        "/group_by",
    );
}

#[tokio::test]
async fn mcp_servers() {
    let a = app();
    let body = json!({"name": "search", "url": "https://mcp.example/search", "transport": "sse", "description": "web search", "tiers": ["premium"], "enabled": true});
    let r = call(&a, "POST", "/api/v1/mcp-servers", Some(body.clone())).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["transport"], "sse");
    assert_problem(
        &call(&a, "POST", "/api/v1/mcp-servers", Some(body)).await,
        StatusCode::CONFLICT,
    );
    assert_invalid(
        &call(
            &a,
            "POST",
            "/api/v1/mcp-servers",
            Some(json!({"name": "x", "url": "ftp://x"})),
        )
        .await,
        "/url",
    );
    assert_invalid(
        &call(
            &a,
            "POST",
            "/api/v1/mcp-servers",
            Some(json!({"name": "x", "url": "http://x", "transport": "pigeon"})),
        )
        .await,
        "/transport",
    );
    let r = call(
        &a,
        "PUT",
        &format!("/api/v1/mcp-servers/{id}"),
        Some(json!({"name": "search", "url": "http://127.0.0.1:7000", "enabled": false})),
    )
    .await;
    assert_eq!(
        (
            r.body["enabled"].clone(),
            r.body["transport"].clone(),
            r.body["version"].clone()
        ),
        (json!(false), json!("streamable-http"), json!(2)),
        "{}",
        r.body
    );
    assert_eq!(
        call(&a, "GET", &format!("/api/v1/mcp-servers/{id}"), None)
            .await
            .body["url"],
        "http://127.0.0.1:7000"
    );
    assert_eq!(
        call(&a, "GET", "/api/v1/mcp-servers", None)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        call(&a, "DELETE", &format!("/api/v1/mcp-servers/{id}"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_problem(
        &call(&a, "GET", &format!("/api/v1/mcp-servers/{id}"), None).await,
        StatusCode::NOT_FOUND,
    );
    let audit = call(&a, "GET", "/api/v1/audit", None).await;
    let actions: Vec<&str> = audit.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "mcp_server.delete",
            "mcp_server.update",
            "mcp_server.create"
        ]
    );
}

#[tokio::test]
async fn root_keys() {
    let a = app();
    let r = call(
        &a,
        "POST",
        "/api/v1/root-keys",
        Some(json!({"name": "ci", "permissions": ["api.*.create_key", "api.*.read_key"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let secret = r.body["key"].as_str().unwrap().to_owned();
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with(r.body["start"].as_str().unwrap()));
    assert_invalid(
        &call(
            &a,
            "POST",
            "/api/v1/root-keys",
            Some(json!({"name": "bad", "permissions": ["fly.to.moon"]})),
        )
        .await,
        "/permissions",
    );
    let r = call(&a, "GET", "/api/v1/root-keys", None).await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    assert_eq!(
        r.body[0]["permissions"],
        json!(["api.*.create_key", "api.*.read_key"])
    );
    assert!(!r.body.to_string().contains(&secret));
    assert_eq!(
        call(&a, "DELETE", &format!("/api/v1/root-keys/{id}"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_problem(
        &call(&a, "DELETE", &format!("/api/v1/root-keys/{id}"), None).await,
        StatusCode::NOT_FOUND,
    );
    assert_eq!(
        call(&a, "GET", "/api/v1/root-keys", None).await.body,
        json!([])
    );
}

#[tokio::test]
async fn projects_and_their_keys() {
    let a = app();
    assert_eq!(
        call(&a, "GET", "/api/v1/projects", None).await.body,
        json!([])
    );
    let r = call(
        &a,
        "POST",
        "/api/v1/projects",
        Some(json!({"name": "edge", "description": "edge data planes"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let pid = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["description"], "edge data planes");
    // Seed 001 types ids as UUIDs: shown as one, maas's own form accepted too.
    let ks = maas_core::KeyspaceId::from_uuid(&pid).expect("a UUID");
    assert_eq!(&pid[14..15], "7", "a UUIDv7: {pid}");
    let r2 = call(&a, "GET", &format!("/api/v1/projects/{ks}"), None).await;
    assert_eq!(r2.body["id"], pid.as_str(), "{}", r2.body);
    assert_invalid(
        &call(
            &a,
            "POST",
            "/api/v1/projects",
            Some(json!({"description": "no name"})),
        )
        .await,
        "/name",
    );
    let r = call(
        &a,
        "PUT",
        &format!("/api/v1/projects/{pid}"),
        Some(json!({"name": "edge-2", "description": null})),
    )
    .await;
    assert_eq!(
        (r.body["name"].clone(), r.body["description"].clone()),
        (json!("edge-2"), Value::Null),
        "{}",
        r.body
    );
    assert_eq!(
        call(&a, "GET", "/api/v1/projects", None).await.body[0]["name"],
        "edge-2"
    );
    assert_problem(
        &call(&a, "GET", "/api/v1/projects/ks_nope", None).await,
        StatusCode::NOT_FOUND,
    );

    let keys = format!("/api/v1/projects/{pid}/api-keys");
    let r = call(&a, "POST", &keys, Some(json!({"name": "dp-1"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let secret = r.body["key"].as_str().unwrap().to_owned();
    let kid = r.body["id"].as_str().unwrap().to_owned();
    assert!(maas_core::KeyId::from_uuid(&kid).is_some(), "{kid}");
    assert_eq!(r.body["project_id"], pid.as_str());
    assert_eq!(r.body["scopes"], json!(["data-plane:connect"]));
    assert!(secret.starts_with(r.body["key_prefix"].as_str().unwrap()));
    assert_problem(
        &call(&a, "POST", &keys, Some(json!({"name": "dp-1"}))).await,
        StatusCode::CONFLICT,
    );
    assert_invalid(
        &call(
            &a,
            "POST",
            &keys,
            Some(json!({"name": "dp-2", "expires_at": "2000-01-01T00:00:00Z"})),
        )
        .await,
        "/expires_at",
    );
    assert_invalid(
        &call(
            &a,
            "POST",
            &keys,
            Some(json!({"name": "dp-2", "expires_at": "soon"})),
        )
        .await,
        "/expires_at",
    );
    let r = call(
        &a,
        "POST",
        &keys,
        Some(json!({"name": "dp-2", "scopes": ["a", "b"], "expires_at": "2030-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(r.body["scopes"], json!(["a", "b"]), "{}", r.body);
    let listed = call(&a, "GET", &keys, None).await.body;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains(&secret));
    assert_eq!(
        call(&a, "DELETE", &format!("{keys}/{kid}"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_problem(
        &call(&a, "DELETE", &format!("{keys}/{kid}"), None).await,
        StatusCode::NOT_FOUND,
    );
    let listed = call(&a, "GET", &keys, None).await.body;
    let revoked = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == kid.as_str())
        .unwrap()
        .clone();
    assert!(
        revoked["revoked_at"].as_str().unwrap().ends_with('Z'),
        "{revoked}"
    );
    assert!(
        revoked["created_at"].as_str().unwrap().starts_with("20"),
        "{revoked}"
    );

    assert_eq!(
        call(&a, "DELETE", &format!("/api/v1/projects/{pid}"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_problem(
        &call(&a, "GET", &format!("/api/v1/projects/{pid}"), None).await,
        StatusCode::NOT_FOUND,
    );
    assert_problem(&call(&a, "GET", &keys, None).await, StatusCode::NOT_FOUND);
}

/// Found by schemathesis: a JSON array was read as a body of defaults, a
/// quota body without its field lifted the quota, and usage routes that do
/// not use `granularity` or `group_by` ignored bad ones.
#[tokio::test]
async fn bodies_quota_and_usage_parameters_are_checked() {
    let a = app();
    let r = call(&a, "POST", "/api/v1/tenants", Some(json!({"name": "acme"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let quota = format!("/api/v1/tenants/{id}/quota");
    let r = call(&a, "PUT", &quota, Some(json!({"tokens_per_minute": 500}))).await;
    assert_eq!(r.body["tokens_per_minute"], 500, "{}", r.body);

    for body in [json!([]), json!([null, null]), json!(null), json!(1)] {
        let r = call(&a, "PUT", &quota, Some(body.clone())).await;
        assert_invalid(&r, "/body");
        let r = call(&a, "PUT", "/api/v1/tiers/free", Some(body)).await;
        assert_invalid(&r, "/body");
    }
    let r = call(&a, "PUT", &quota, Some(json!({"tokens_per_min": 5}))).await;
    assert_invalid(&r, "/tokens_per_minute");
    let r = call(&a, "GET", &format!("/api/v1/tenants/{id}"), None).await;
    assert_eq!(r.body["tokens_per_minute"], 500, "unchanged: {}", r.body);

    for path in [
        "/api/v1/usage",
        "/api/v1/usage/keys",
        "/api/v1/usage/models",
        "/api/v1/usage/series",
        "/api/v1/usage/series/tenants",
        "/api/v1/usage/cache",
        "/api/v1/costs",
    ] {
        let r = call(&a, "GET", &format!("{path}?granularity=week"), None).await;
        assert_invalid(&r, "/granularity");
        let r = call(&a, "GET", &format!("{path}?group_by=planet"), None).await;
        assert_invalid(&r, "/group_by");
        let r = call(
            &a,
            "GET",
            &format!("{path}?granularity=day&group_by=model"),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
    }
}

/// Every mutating route leaves at least one audit event naming the admin.
#[tokio::test]
async fn every_mutation_route_is_audited() {
    let a = app();
    let audited = |a: &Router| {
        let a = a.clone();
        async move {
            let r = call(&a, "GET", "/api/v1/audit?limit=1000", None).await;
            r.body["data"].as_array().unwrap().len()
        }
    };
    let tenant = call(&a, "POST", "/api/v1/tenants", Some(json!({"name": "t"})))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(audited(&a).await, 1);
    let project = call(&a, "POST", "/api/v1/projects", Some(json!({"name": "p"})))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let steps: Vec<(&str, String, Value)> = vec![
        (
            "PATCH",
            format!("/api/v1/tenants/{tenant}/weight"),
            json!({"weight": 7}),
        ),
        (
            "PUT",
            format!("/api/v1/tenants/{tenant}/quota"),
            json!({"tokens_per_minute": 9}),
        ),
        (
            "POST",
            "/api/v1/fairshare/groups".into(),
            json!({"name": "g", "weight": 2}),
        ),
        (
            "PATCH",
            format!("/api/v1/tenants/{tenant}/group"),
            json!({"group": "g"}),
        ),
        (
            "PATCH",
            "/api/v1/fairshare/groups/g/weight".into(),
            json!({"weight": 3}),
        ),
        (
            "PUT",
            "/api/v1/capacity".into(),
            json!({"max_in_flight": 5}),
        ),
        (
            "POST",
            format!("/api/v1/tenants/{tenant}/keys"),
            json!({"name": "k"}),
        ),
        (
            "POST",
            "/api/v1/tiers".into(),
            json!({"name": "x", "level": 1, "groups": ["x"], "requests_per_minute": 1, "tokens_per_minute": 1, "models": ["*"]}),
        ),
        ("PUT", "/api/v1/tiers/x".into(), json!({"level": 2})),
        (
            "POST",
            "/api/v1/models".into(),
            json!({"id": "m", "url": "http://127.0.0.1:1"}),
        ),
        ("PUT", "/api/v1/models/m".into(), json!({"name": "M"})),
        (
            "PUT",
            "/api/v1/models/m/cache".into(),
            json!({"enabled": true}),
        ),
        (
            "POST",
            "/api/v1/mcp-servers".into(),
            json!({"name": "s", "url": "http://127.0.0.1:2"}),
        ),
        (
            "POST",
            "/api/v1/root-keys".into(),
            json!({"name": "r", "permissions": ["api.*.read_key"]}),
        ),
        (
            "PUT",
            format!("/api/v1/projects/{project}"),
            json!({"description": "d"}),
        ),
        (
            "POST",
            format!("/api/v1/projects/{project}/api-keys"),
            json!({"name": "pk"}),
        ),
        ("DELETE", "/api/v1/tiers/x".into(), Value::Null),
        ("DELETE", "/api/v1/models/m".into(), Value::Null),
        ("DELETE", format!("/api/v1/projects/{project}"), Value::Null),
    ];
    for (method, path, body) in steps {
        let before = audited(&a).await;
        let body = (!body.is_null()).then_some(body);
        let r = call(&a, method, &path, body).await;
        assert!(r.status.is_success(), "{method} {path}: {}", r.body);
        assert!(
            audited(&a).await > before,
            "{method} {path} left no audit event"
        );
    }
    let r = call(&a, "GET", "/api/v1/audit?limit=1000", None).await;
    for e in r.body["data"].as_array().unwrap() {
        assert!(e["actor"] == "admin" || e["actor"] == "system", "{e}");
        assert!(
            e["action"].is_string() && e["target_kind"].is_string() && e["target_id"].is_string()
        );
        assert!(e["at"].is_number(), "{e}");
    }
}
