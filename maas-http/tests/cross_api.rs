//! The APIs together, as one deployment mounts them: a root key minted
//! through the management API drives the Unkey-compatible API within its
//! permissions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use maas_core::fairshare::{FairShare, FairShareConfig};
use maas_core::mcp::McpServers;
use maas_core::projects::Projects;
use maas_core::rootkeys::RootKeys;
use maas_core::scheduling::Scheduling;
use maas_core::usage::{UsageConfig, UsageLedger};
use maas_core::{
    KeyHasher, KeyService, ManualClock, ModelService, RateLimiter, TierService, UserKeys,
};
use maas_http::HttpConfig;
use maas_http::management::{self, ManagementServices, ManagementState};
use maas_http::unkey::{self, UnkeyState};
use maas_store_memory::MemoryStore;
use serde_json::{Value, json};
use tower::ServiceExt;

const ADMIN: &str = "admin-token-0123456789";

struct Deployment {
    management: Router,
    unkey: Router,
    user_keys: UserKeys,
}

fn deployment() -> Deployment {
    let storage = MemoryStore::new().storage();
    let clock = Arc::new(ManualClock::default());
    let keys = KeyService::new_with_clock(storage.clone(), KeyHasher::random(), clock.clone());
    let usage = UsageLedger::new_with_clock(&storage, UsageConfig::default(), clock.clone());
    let root_keys = RootKeys::new_with_clock(keys.clone(), clock.clone());
    let user_keys = UserKeys::new_with_clock(keys.clone(), clock.clone());
    let services = ManagementServices {
        scheduling: Scheduling::new(
            storage.clone(),
            FairShare::with_clock(FairShareConfig::default(), clock.clone()).unwrap(),
            clock.clone(),
        ),
        tiers: TierService::new_with_clock(storage.clone(), clock.clone()),
        models: ModelService::new_with_clock(storage.clone(), clock.clone()),
        user_keys: user_keys.clone(),
        usage: usage.clone(),
        mcp: McpServers::new_with_clock(storage.clone(), clock.clone()),
        root_keys: root_keys.clone(),
        projects: Projects::new_with_clock(keys, clock),
        webhooks: maas_core::webhook::Webhooks::new(storage.clone(), KeyHasher::random()),
        admission: maas_core::AdmissionLimits::new(storage.clone()),
        storage: storage.clone(),
    };
    let management = management::router(
        ManagementState::new(ADMIN, services).unwrap(),
        &HttpConfig::default(),
    );
    let unkey = unkey::router(
        UnkeyState::new(root_keys, RateLimiter::new(storage), usage).with_admin_token(ADMIN),
    );
    Deployment {
        management,
        unkey,
        user_keys,
    }
}

async fn post(r: &Router, path: &str, bearer: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::post(path)
        .header(header::AUTHORIZATION, format!("Bearer {bearer}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let res = r.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_root_key_from_the_management_api_drives_the_unkey_api() {
    let d = deployment();
    let (status, created) = post(
        &d.management,
        "/api/v1/root-keys",
        ADMIN,
        json!({"name": "provisioner", "permissions": ["api.*.create_api", "api.*.create_key"]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let root = created["key"].as_str().unwrap().to_owned();

    let (status, api) = post(
        &d.unkey,
        "/v1/apis.createApi",
        &root,
        json!({"name": "payments"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{api}");
    let api_id = api["apiId"].as_str().unwrap().to_owned();
    let (status, key) = post(
        &d.unkey,
        "/v1/keys.createKey",
        &root,
        json!({"apiId": api_id, "prefix": "pay"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{key}");
    let (status, verified) = post(
        &d.unkey,
        "/v1/keys.verifyKey",
        "unused",
        json!({"apiId": api_id, "key": key["key"]}),
    )
    .await;
    assert_eq!(
        (status, verified["valid"].clone()),
        (StatusCode::OK, json!(true)),
        "{verified}"
    );

    // Outside its permissions: 403 in Unkey's envelope.
    let (status, denied) = post(
        &d.unkey,
        "/v1/apis.deleteApi",
        &root,
        json!({"apiId": api_id}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{denied}");
    assert_eq!(denied["error"]["code"], "FORBIDDEN");
    // The admin token is a root key with every permission.
    let (status, _) = post(
        &d.unkey,
        "/v1/apis.deleteApi",
        ADMIN,
        json!({"apiId": api_id}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

/// The keyspace of users' and tenants' keys is not an Unkey api: even the
/// admin token cannot read its keys or delete it through the Unkey API
/// (found by schemathesis: deleting it broke `/keys` and tenant keys).
#[tokio::test]
async fn the_user_keyspace_is_out_of_the_unkey_apis_reach() {
    let d = deployment();
    let (_, tenant) = post(
        &d.management,
        "/api/v1/tenants",
        ADMIN,
        json!({"name": "acme"}),
    )
    .await;
    let tid = tenant["id"].as_str().unwrap();
    let (status, key) = post(
        &d.management,
        &format!("/api/v1/tenants/{tid}/keys"),
        ADMIN,
        json!({"name": "k"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let ks = d.user_keys.keyspace().await.unwrap();

    let (status, body) = post(
        &d.unkey,
        "/v1/apis.deleteApi",
        ADMIN,
        json!({"apiId": ks.as_str()}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = post(
        &d.unkey,
        "/v1/keys.deleteKey",
        ADMIN,
        json!({"keyId": key["key"]["id"]}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Still there: the tenant can get another key.
    let (status, _) = post(
        &d.management,
        &format!("/api/v1/tenants/{tid}/keys"),
        ADMIN,
        json!({"name": "k2"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
}
