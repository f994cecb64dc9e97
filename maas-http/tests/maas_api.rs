//! The MaaS user API through `oneshot`: every route, its documented errors,
//! auth missing / wrong, the Goa error shape, and seed 002's token flow.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use maas_core::identity::{Chain, Identity, StaticTokens};
use maas_core::storage::{Page, PageRequest, Record, RecordStore};
use maas_core::token::{TokenConfig, TokenService};
use maas_core::{
    Actor, AuditEvent, Error, KeyHasher, KeyService, ManualClock, ModelService, NewModel,
    TierService, UserKeys,
};
use maas_core::{Authenticator, Gateway, GatewayServices};
use maas_http::HttpConfig;
use maas_http::maas_api::{MaasApiState, router};
use maas_store_memory::MemoryStore;
use serde_json::{Value, json};
use tower::ServiceExt;

const ALICE: &str = "alice-oidc-token";
const NOBODY: &str = "nobody-oidc-token";

struct App {
    router: Router,
    state: MaasApiState,
}

async fn app_with(config: HttpConfig) -> App {
    let storage = MemoryStore::new().storage();
    let clock = Arc::new(ManualClock::default());
    clock.set(maas_core::Timestamp::from_millis(1_764_000_000_000));
    let tokens =
        TokenService::open_with_clock(storage.clone(), TokenConfig::default(), clock.clone())
            .await
            .unwrap();
    let statics = StaticTokens::new([
        (
            ALICE.to_owned(),
            Identity::new("alice", ["premium-users", "system:authenticated"]),
        ),
        (
            NOBODY.to_owned(),
            Identity::new("nobody", ["no-such-group"]),
        ),
    ])
    .unwrap();
    let identity = Chain::new()
        .with(Arc::new(statics))
        .with(Arc::new(tokens.clone()));
    let tiers = TierService::new_with_clock(storage.clone(), clock.clone());
    tiers.ensure_defaults(&Actor::system()).await.unwrap();
    let models = ModelService::new_with_clock(storage.clone(), clock.clone());
    models
        .create(
            &Actor::system(),
            NewModel::new("simulator", "http://127.0.0.1:9/sim"),
        )
        .await
        .unwrap();
    let keys = KeyService::new_with_clock(storage.clone(), KeyHasher::random(), clock.clone());
    let user_keys = UserKeys::new_with_clock(keys, clock.clone());
    let identity: Arc<dyn Authenticator> = Arc::new(identity);
    let mut services = GatewayServices::defaults(&storage, identity.clone()).unwrap();
    services.tiers = tiers.clone();
    services.models = models.clone();
    services.user_keys = Some(user_keys.clone());
    let gateway = Gateway::new(services, clock.clone());
    let state = MaasApiState {
        identity,
        tokens,
        tiers,
        models,
        user_keys,
        storage,
        gateway_url: "http://gateway.test".into(),
        gateway,
    };
    App {
        router: router(state.clone(), &config),
        state,
    }
}

async fn app() -> App {
    app_with(HttpConfig::default()).await
}

struct Reply {
    status: StatusCode,
    content_type: String,
    request_id: String,
    body: Value,
}

async fn call(
    r: &Router,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(b) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {b}"));
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_owned())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    send(r, req).await
}

async fn send(r: &Router, req: Request<Body>) -> Reply {
    let res = r.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let request_id = res
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Reply {
        status,
        content_type,
        request_id,
        body,
    }
}

/// Asserts a Goa error of `status` and `name`, whose id is the request id.
fn assert_goa(r: &Reply, status: StatusCode, name: &str) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.content_type, "application/vnd.goa.error");
    for field in ["name", "id", "message", "temporary", "timeout", "fault"] {
        assert!(r.body.get(field).is_some(), "missing {field}: {}", r.body);
    }
    assert_eq!(r.body["name"], name, "{}", r.body);
    assert_eq!(r.body["id"], r.request_id.as_str());
    assert!(r.request_id.starts_with("req_") || !r.request_id.is_empty());
}

#[tokio::test]
async fn health_answers_ok() {
    let a = app().await;
    for path in ["/health", "/maas-api/health"] {
        let r = call(&a.router, "GET", path, None, None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, json!({"status": "ok"}));
        assert!(r.request_id.starts_with("req_"));
    }
}

/// A record store that is down.
#[derive(Debug)]
struct Down;

#[async_trait::async_trait]
impl RecordStore for Down {
    async fn create_record(&self, _: &Record, _: AuditEvent) -> maas_core::Result<()> {
        Err(Error::unavailable("disk on fire", true))
    }
    async fn get_record(&self, _: &str, _: &str) -> maas_core::Result<Option<Record>> {
        Err(Error::unavailable("disk on fire", true))
    }
    async fn list_records(&self, _: &str, _: &PageRequest) -> maas_core::Result<Page<Record>> {
        Err(Error::unavailable("disk on fire", true))
    }
    async fn update_record(&self, _: &Record, _: u64, _: AuditEvent) -> maas_core::Result<()> {
        Err(Error::unavailable("disk on fire", true))
    }
    async fn delete_record(&self, _: &str, _: &str, _: AuditEvent) -> maas_core::Result<()> {
        Err(Error::unavailable("disk on fire", true))
    }
}

#[tokio::test]
async fn health_is_503_when_the_store_is_down() {
    let a = app().await;
    let mut state = a.state.clone();
    state.storage.records = Arc::new(Down);
    let down = router(state, &HttpConfig::default());
    let r = call(&down, "GET", "/health", None, None).await;
    assert_goa(&r, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert_eq!(r.body["temporary"], true);
    assert!(r.body["message"].as_str().unwrap().contains("disk on fire"));
}

#[tokio::test]
async fn request_ids_are_echoed() {
    let a = app().await;
    let req = Request::get("/health")
        .header("x-request-id", "client-42")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&a.router, req).await.request_id, "client-42");
    let r = call(&a.router, "GET", "/keys", None, None).await;
    assert_goa(&r, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn user_keys_lifecycle_over_http() {
    let a = app().await;
    let r = call(&a.router, "GET", "/keys", Some(ALICE), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"keys": [], "total_keys": 0}));

    let r = call(
        &a.router,
        "POST",
        "/keys",
        Some(ALICE),
        Some(r#"{"name":"johns-personal-key"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let secret = r.body["api_key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("maas_"));
    assert_eq!(r.body["name"], "johns-personal-key");
    assert!(r.body["created_at"].as_str().unwrap().ends_with('Z'));

    let dup = call(
        &a.router,
        "POST",
        "/keys",
        Some(ALICE),
        Some(r#"{"name":"johns-personal-key"}"#),
    )
    .await;
    assert_goa(&dup, StatusCode::CONFLICT, "conflict");

    let r = call(&a.router, "GET", "/maas-api/keys", Some(ALICE), None).await;
    assert_eq!(r.body["total_keys"], 1);
    let listed = &r.body["keys"][0];
    assert_eq!(listed["name"], "johns-personal-key");
    assert!(secret.starts_with(listed["start"].as_str().unwrap()));
    assert!(!r.body.to_string().contains(&secret), "never the secret");

    // The key lists models at its owner's tier.
    let r = call(&a.router, "GET", "/v1/models", Some(&secret), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["data"][0]["id"], "simulator");

    let r = call(
        &a.router,
        "DELETE",
        "/keys/johns-personal-key",
        Some(ALICE),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(
        &a.router,
        "DELETE",
        "/keys/johns-personal-key",
        Some(ALICE),
        None,
    )
    .await;
    assert_goa(&r, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(r.body["message"], "API key 'johns-personal-key' not found");
    let r = call(&a.router, "GET", "/v1/models", Some(&secret), None).await;
    assert_goa(&r, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn bad_bodies_are_goa_errors_naming_the_field() {
    let a = app_with(HttpConfig { body_limit: 256 }).await;
    let cases: [(&str, StatusCode, &str); 6] = [
        (r#"{"name": 5}"#, StatusCode::BAD_REQUEST, "name"),
        (r#"{}"#, StatusCode::BAD_REQUEST, "name"),
        (r#"{"name": "#, StatusCode::BAD_REQUEST, "name"),
        (r#""x""#, StatusCode::BAD_REQUEST, "body"),
        (r#"{"name": ""}"#, StatusCode::BAD_REQUEST, "name"),
        ("", StatusCode::BAD_REQUEST, "body"),
    ];
    for (body, status, field) in cases {
        let r = call(&a.router, "POST", "/keys", Some(ALICE), Some(body)).await;
        assert_goa(&r, status, "bad_request");
        assert!(
            r.body["message"]
                .as_str()
                .unwrap()
                .contains(&format!("'{field}'")),
            "{body}: {}",
            r.body
        );
    }
    let big = format!(r#"{{"name": "{}"}}"#, "x".repeat(1000));
    let r = call(&a.router, "POST", "/keys", Some(ALICE), Some(&big)).await;
    assert_goa(&r, StatusCode::PAYLOAD_TOO_LARGE, "request_too_large");
    let req = Request::post("/keys")
        .header(header::AUTHORIZATION, format!("Bearer {ALICE}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(r#"{"name":"k"}"#))
        .unwrap();
    assert_goa(
        &send(&a.router, req).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    // Nothing was created by any of them.
    let r = call(&a.router, "GET", "/keys", Some(ALICE), None).await;
    assert_eq!(r.body["total_keys"], 0);
}

#[tokio::test]
async fn tier_lookup() {
    let a = app().await;
    let r = call(
        &a.router,
        "POST",
        "/tiers/lookup",
        Some(ALICE),
        Some(r#"{"groups":["system:authenticated","premium-users"]}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"tier": "premium"}));
    let r = call(
        &a.router,
        "POST",
        "/tiers/lookup",
        Some(ALICE),
        Some(r#"{"groups":[]}"#),
    )
    .await;
    assert_goa(&r, StatusCode::BAD_REQUEST, "bad_request");
    let r = call(
        &a.router,
        "POST",
        "/tiers/lookup",
        Some(ALICE),
        Some(r#"{"groups":"x"}"#),
    )
    .await;
    assert_goa(&r, StatusCode::BAD_REQUEST, "bad_request");
    let r = call(
        &a.router,
        "POST",
        "/tiers/lookup",
        Some(ALICE),
        Some(r#"{"groups":["unknown-group"]}"#),
    )
    .await;
    assert_goa(&r, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        r.body["message"],
        "No tier mapping found for groups: ['unknown-group']"
    );
    let r = call(
        &a.router,
        "POST",
        "/tiers/lookup",
        Some("wrong"),
        Some(r#"{"groups":["a"]}"#),
    )
    .await;
    assert_goa(&r, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn tokens_issue_validate_and_revoke() {
    let a = app().await;
    let r = call(
        &a.router,
        "POST",
        "/tokens",
        Some(ALICE),
        Some(r#"{"ttl":"1h"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let token = r.body["token"].as_str().unwrap().to_owned();
    assert!(r.body["expires_at"].as_str().unwrap().ends_with('Z'));
    let r = call(&a.router, "POST", "/tokens", Some(ALICE), Some(r#"{}"#)).await;
    assert_eq!(r.status, StatusCode::CREATED, "default TTL");

    for ttl in ["1x", "-1h", "", "abc"] {
        let body = json!({"ttl": ttl}).to_string();
        let r = call(&a.router, "POST", "/tokens", Some(ALICE), Some(&body)).await;
        if ttl.is_empty() {
            assert_eq!(r.status, StatusCode::CREATED, "empty means the default");
            continue;
        }
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{ttl}");
        assert_eq!(
            r.content_type, "application/json",
            "the seed's TTLValidationError"
        );
        assert_eq!(r.body["name"], "bad_request");
        assert_eq!(
            r.body["message"],
            "parameter 'ttl' must be a valid Go duration format (e.g., '1h', '30m', '45s'). Valid time units are \"ms\", \"s\", \"m\", \"h\", \"d\""
        );
        assert_eq!(
            (r.body["fault"].clone(), r.body["temporary"].clone()),
            (json!(false), json!(false))
        );
    }
    let r = call(
        &a.router,
        "POST",
        "/tokens",
        Some(ALICE),
        Some(r#"{"ttl":"9999d"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // The token works, then is revoked with every other token of the caller.
    let r = call(&a.router, "GET", "/v1/models", Some(&token), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(&a.router, "DELETE", "/tokens", Some(ALICE), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.body, Value::Null);
    let r = call(&a.router, "GET", "/v1/models", Some(&token), None).await;
    assert_goa(&r, StatusCode::UNAUTHORIZED, "unauthorized");
}

/// Seed 002: identity token -> `POST /maas-api/v1/tokens` -> `GET
/// /v1/models` with the token -> each model's URL under the gateway.
#[tokio::test]
async fn seed_002_token_flow() {
    let a = app().await;
    let r = call(
        &a.router,
        "POST",
        "/maas-api/v1/tokens",
        Some(ALICE),
        Some(r#"{"expiration": "15m"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let access = r.body["token"].as_str().unwrap().to_owned();
    let r = call(&a.router, "GET", "/v1/models", Some(&access), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["object"], "list");
    let m = &r.body["data"][0];
    assert_eq!(m["id"], "simulator");
    assert_eq!(m["url"], "http://gateway.test/simulator");
    assert_eq!(m["object"], "model");

    let r = call(
        &a.router,
        "POST",
        "/maas-api/v1/tokens",
        Some(ALICE),
        Some(r#"{"expiration": "fortnight"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .starts_with("parameter 'expiration'")
    );

    // No credential, a wrong one, an identity credential that is not a
    // maas token or API key, and a caller with no tier.
    assert_goa(
        &call(&a.router, "GET", "/v1/models", None, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_goa(
        &call(&a.router, "GET", "/v1/models", Some("garbage"), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_goa(
        &call(&a.router, "GET", "/v1/models", Some(ALICE), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let r = call(
        &a.router,
        "POST",
        "/v1/tokens",
        Some(NOBODY),
        Some(r#"{"expiration": "15m"}"#),
    )
    .await;
    let nobody = r.body["token"].as_str().unwrap().to_owned();
    assert_goa(
        &call(&a.router, "GET", "/v1/models", Some(&nobody), None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
}

#[tokio::test]
async fn unknown_routes_are_goa_404s() {
    let a = app().await;
    let r = call(&a.router, "GET", "/nope", Some(ALICE), None).await;
    assert_goa(&r, StatusCode::NOT_FOUND, "not_found");
}

/// Found by schemathesis: serde reads a struct from a JSON array, so `[]`
/// minted a token with the default TTL.
#[tokio::test]
async fn bodies_must_be_json_objects() {
    let a = app().await;
    for path in ["/tokens", "/v1/tokens", "/maas-api/tokens"] {
        for body in ["[]", "[null]", "null", "1"] {
            let r = call(&a.router, "POST", path, Some(ALICE), Some(body)).await;
            assert_goa(&r, StatusCode::BAD_REQUEST, "bad_request");
            assert!(
                r.body["message"].as_str().unwrap().contains("'body'"),
                "{path} {body}: {}",
                r.body
            );
        }
    }
}

/// A third party verifies maas tokens with what maas publishes: the
/// discovery document names the issuer and the key set, and the key set
/// verifies a minted token's signature (EdDSA), with no call to maas.
#[tokio::test]
async fn maas_tokens_verify_with_the_published_jwks() {
    let a = app().await;
    let r = call(
        &a.router,
        "POST",
        "/tokens",
        Some(ALICE),
        Some(r#"{"ttl":"1h"}"#),
    )
    .await;
    let token = r.body["token"].as_str().unwrap().to_owned();

    let conf = call(
        &a.router,
        "GET",
        "/.well-known/openid-configuration",
        None,
        None,
    )
    .await;
    assert_eq!(conf.status, StatusCode::OK);
    assert_eq!(conf.body["issuer"], "maas");
    assert_eq!(
        conf.body["jwks_uri"],
        "http://gateway.test/.well-known/jwks.json"
    );
    assert_eq!(
        conf.body["id_token_signing_alg_values_supported"],
        json!(["EdDSA"])
    );
    let set = call(&a.router, "GET", "/.well-known/jwks.json", None, None).await;
    assert_eq!(set.status, StatusCode::OK);
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(set.body).unwrap();
    assert_eq!(set.keys.len(), 1);
    for k in &set.keys {
        // Public keys only.
        assert!(
            matches!(
                k.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_)
            ),
            "{k:?}"
        );
    }

    let header = jsonwebtoken::decode_header(&token).unwrap();
    let jwk = set.find(header.kid.as_deref().unwrap()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_issuer(&["maas"]);
    v.set_audience(&["maas"]);
    v.validate_exp = false; // minted on the test's manual clock
    let claims = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &v,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["sub"], "alice");
    // Claims changed under the same signature do not verify.
    use base64::Engine as _;
    let parts: Vec<&str> = token.split('.').collect();
    let mut changed = claims.clone();
    changed["sub"] = json!("mallory");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(changed.to_string()),
        parts[2]
    );
    assert!(
        jsonwebtoken::decode::<Value>(
            &forged,
            &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
            &v
        )
        .is_err()
    );
}
