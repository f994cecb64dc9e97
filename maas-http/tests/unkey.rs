//! The Unkey v1-compatible key API through its router (`oneshot`, memory
//! backend, manual clock): every route's success and documented errors,
//! root-key auth (missing, wrong, insufficient), the error envelope, the
//! create -> verify -> updateRemaining -> updateKey flow, and bad input
//! that is refused naming the field without changing anything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use maas_core::audit::AuditQuery;
use maas_core::ratelimit::RateLimitConfig;
use maas_core::usage::UsageConfig;
use maas_core::{
    Actor, Clock, Error, KeyHasher, KeyService, ManualClock, RateLimiter, RootKeys, Storage,
    UsageLedger,
};
use maas_http::HttpConfig;
use maas_http::common::RequestId;
use maas_http::unkey::{self, UnkeyCode, UnkeyError, UnkeyState};
use maas_store_memory::MemoryStore;
use serde_json::{Value, json};
use tower::ServiceExt;

const ADMIN: &str = "test-admin-token";

struct App {
    router: Router,
    clock: ManualClock,
    root: RootKeys,
    storage: Storage,
}

struct Reply {
    status: StatusCode,
    body: Value,
    request_id: String,
    content_type: String,
}

impl Reply {
    /// Asserts the status and Unkey's error envelope with `code`.
    #[track_caller]
    fn error(&self, status: u16, code: &str) -> &str {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert_eq!(self.content_type, "application/json");
        let e = self.body["error"].as_object().expect("an error envelope");
        assert_eq!(self.body.as_object().unwrap().len(), 1, "{}", self.body);
        assert_eq!(e.len(), 4, "{}", self.body);
        assert_eq!(e["code"], code, "{}", self.body);
        assert_eq!(
            e["docs"],
            format!("https://unkey.dev/docs/api-reference/errors/code/{code}")
        );
        assert_eq!(e["requestId"], self.request_id.as_str());
        let message = e["message"].as_str().unwrap();
        assert!(!message.is_empty());
        message
    }

    /// Asserts a 400 naming `field`.
    #[track_caller]
    fn bad_request(&self, field: &str) {
        let m = self.error(400, "BAD_REQUEST");
        assert!(m.contains(&format!("'{field}'")), "{m} should name {field}");
    }

    #[track_caller]
    fn ok(&self) -> &Value {
        assert_eq!(self.status, StatusCode::OK, "{}", self.body);
        assert_eq!(self.content_type, "application/json");
        &self.body
    }
}

fn state(storage: &Storage, clock: &ManualClock) -> (UnkeyState, RootKeys) {
    let c: Arc<dyn Clock> = Arc::new(clock.clone());
    let keys = KeyService::new_with_clock(storage.clone(), KeyHasher::random(), Arc::clone(&c));
    let ledger = UsageLedger::new_with_clock(storage, UsageConfig::default(), Arc::clone(&c));
    keys.attach_usage(ledger.clone()).unwrap();
    let root = RootKeys::new_with_clock(keys, Arc::clone(&c));
    let limiter = RateLimiter::with_config(storage.clone(), RateLimitConfig::default(), c);
    let state = UnkeyState::new(root.clone(), limiter, ledger).with_admin_token(ADMIN);
    (state, root)
}

fn app() -> App {
    app_with(|s| s)
}

fn app_with(f: impl FnOnce(UnkeyState) -> UnkeyState) -> App {
    let clock = ManualClock::default();
    let storage = MemoryStore::new().storage();
    let (s, root) = state(&storage, &clock);
    App {
        router: unkey::router(f(s)),
        clock,
        root,
        storage,
    }
}

impl App {
    async fn send(&self, req: Request<Body>) -> Reply {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let request_id = res
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
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
            body,
            request_id,
            content_type,
        }
    }

    async fn post_raw(&self, uri: &str, auth: Option<&str>, body: &str) -> Reply {
        let mut req = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, format!("Bearer {a}"));
        }
        self.send(req.body(Body::from(body.to_owned())).unwrap())
            .await
    }

    async fn post(&self, uri: &str, auth: Option<&str>, body: Value) -> Reply {
        self.post_raw(uri, auth, &body.to_string()).await
    }

    async fn get(&self, uri: &str, auth: Option<&str>) -> Reply {
        let mut req = Request::get(uri);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, format!("Bearer {a}"));
        }
        self.send(req.body(Body::empty()).unwrap()).await
    }

    async fn create_api(&self, name: &str) -> String {
        let r = self
            .post("/v1/apis.createApi", Some(ADMIN), json!({ "name": name }))
            .await;
        r.ok()["apiId"].as_str().unwrap().to_owned()
    }

    async fn create_key(&self, body: Value) -> (String, String) {
        let r = self.post("/v1/keys.createKey", Some(ADMIN), body).await;
        let b = r.ok();
        (
            b["keyId"].as_str().unwrap().to_owned(),
            b["key"].as_str().unwrap().to_owned(),
        )
    }

    async fn verify(&self, body: Value) -> Value {
        self.post("/v1/keys.verifyKey", None, body)
            .await
            .ok()
            .clone()
    }

    async fn get_key(&self, key_id: &str) -> Value {
        self.get(&format!("/v1/keys.getKey?keyId={key_id}"), Some(ADMIN))
            .await
            .ok()
            .clone()
    }

    /// A root key with `permissions`.
    async fn root_key(&self, permissions: &[&str]) -> String {
        let perms = permissions.iter().map(|p| p.to_string()).collect();
        self.root
            .create(&Actor::new("test"), "test", perms)
            .await
            .unwrap()
            .key
    }

    /// How many changes the store has recorded.
    async fn changes(&self) -> u64 {
        let q = AuditQuery {
            before_seq: None,
            limit: 1,
        };
        self.storage.audit.list_audit(&q).await.unwrap().total
    }
}

// ----- liveness, envelope, request ids ----------------------------------------

#[tokio::test]
async fn liveness_needs_no_key_and_names_the_services() {
    let app = app();
    let r = app.get("/v1/liveness", None).await;
    let b = r.ok();
    assert_eq!(b["status"], "ok");
    for s in ["metrics", "logger", "ratelimit", "usagelimit", "analytics"] {
        assert!(b["services"][s].is_string(), "{s}");
    }
    assert!(r.request_id.starts_with("req_"));
}

#[tokio::test]
async fn errors_carry_the_clients_request_id() {
    let app = app();
    let req = Request::get("/v1/keys.getKey?keyId=key_1")
        .header("x-request-id", "client-id-42")
        .body(Body::empty())
        .unwrap();
    let r = app.send(req).await;
    assert_eq!(r.request_id, "client-id-42");
    r.error(401, "UNAUTHORIZED");
}

#[test]
fn core_errors_map_to_unkey_codes() {
    let id = RequestId("req_1".into());
    let cases = [
        (Error::invalid("name", "x"), 400, UnkeyCode::BadRequest),
        (Error::not_found("key", "k"), 404, UnkeyCode::NotFound),
        (Error::conflict("dup"), 409, UnkeyCode::Conflict),
        (
            Error::Unauthenticated { reason: "x".into() },
            401,
            UnkeyCode::Unauthorized,
        ),
        (
            Error::Forbidden { reason: "x".into() },
            403,
            UnkeyCode::Forbidden,
        ),
        (
            Error::QuotaExceeded {
                message: "x".into(),
            },
            429,
            UnkeyCode::TooManyRequests,
        ),
        (
            Error::unavailable("disk", true),
            503,
            UnkeyCode::InternalServerError,
        ),
        (Error::internal("bug"), 500, UnkeyCode::InternalServerError),
    ];
    for (err, status, code) in cases {
        let e = UnkeyError::from_core(&err, &id);
        assert_eq!((e.status.as_u16(), e.code), (status, code), "{err}");
        assert_eq!(e.request_id, "req_1");
    }
    // Internal details stay in the logs.
    let e = UnkeyError::from_core(&Error::internal("secret detail"), &id);
    assert!(!e.message.contains("secret detail"));
    let e = UnkeyError::from_core(&Error::not_found("keyspace", "ks_1"), &id);
    assert_eq!(e.message, "api 'ks_1' not found");
}

#[tokio::test]
async fn fallback_answers_unknown_paths_in_the_envelope() {
    let clock = ManualClock::default();
    let storage = MemoryStore::new().storage();
    let (s, _) = state(&storage, &clock);
    let router = unkey::router(s).fallback(unkey::fallback);
    let res = router
        .oneshot(Request::get("/v1/nope").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let body: Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"]["code"], "NOT_FOUND");
}

// ----- root-key auth ------------------------------------------------------------

/// Every route that needs a root key, with a body or query that would
/// otherwise be valid-looking.
fn root_routes() -> Vec<(Method, &'static str, Value)> {
    vec![
        (Method::POST, "/v1/keys.createKey", json!({"apiId": "ks_x"})),
        (Method::GET, "/v1/keys.getKey?keyId=key_x", Value::Null),
        (
            Method::POST,
            "/v1/keys.updateKey",
            json!({"keyId": "key_x"}),
        ),
        (
            Method::POST,
            "/v1/keys.updateRemaining",
            json!({"keyId": "key_x", "op": "set", "value": 1}),
        ),
        (
            Method::POST,
            "/v1/keys.deleteKey",
            json!({"keyId": "key_x"}),
        ),
        (
            Method::GET,
            "/v1/keys.getVerifications?keyId=key_x",
            Value::Null,
        ),
        (
            Method::POST,
            "/v1/apis.createApi",
            json!({"name": "my-api"}),
        ),
        (Method::GET, "/v1/apis.getApi?apiId=ks_x", Value::Null),
        (Method::GET, "/v1/apis.listKeys?apiId=ks_x", Value::Null),
        (Method::POST, "/v1/apis.deleteApi", json!({"apiId": "ks_x"})),
        (
            Method::POST,
            "/v1/ratelimits.limit",
            json!({"identifier": "u", "limit": 1, "duration": 1000}),
        ),
        (Method::POST, "/v1/keys", json!({"apiId": "ks_x"})),
        (Method::GET, "/v1/apis/ks_x/keys", Value::Null),
    ]
}

async fn call(app: &App, method: &Method, uri: &str, body: &Value, auth: Option<&str>) -> Reply {
    let mut req = Request::builder().method(method.clone()).uri(uri);
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, a);
    }
    let req = if method == Method::POST {
        req.header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
    } else {
        req.body(Body::empty())
    };
    app.send(req.unwrap()).await
}

#[tokio::test]
async fn every_root_route_refuses_missing_wrong_and_insufficient_keys() {
    let app = app();
    let powerless = app.root_key(&[]).await;
    let test = Actor::new("test");
    let gone = app
        .root
        .create(&test, "gone", vec!["api.*.read_key".into()])
        .await
        .unwrap();
    app.root.delete(&test, &gone.key_id).await.unwrap();
    let deleted = gone.key;
    let before = app.changes().await;
    for (method, uri, body) in root_routes() {
        for auth in [
            None,
            Some("Bearer".to_owned()),
            Some(format!("Basic {ADMIN}")),
            Some("Bearer not-a-root-key".to_owned()),
            Some("Bearer root_2bXyYq8vQkzfJcM3CwKJxR".to_owned()),
            Some(format!("Bearer {ADMIN}x")),
            Some(format!("Bearer {deleted}")),
        ] {
            let r = call(&app, &method, uri, &body, auth.as_deref()).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} {auth:?}"
            );
            r.error(401, "UNAUTHORIZED");
        }
        let r = call(
            &app,
            &method,
            uri,
            &body,
            Some(&format!("Bearer {powerless}")),
        )
        .await;
        let m = r.error(403, "FORBIDDEN");
        assert!(m.contains("permission"), "{m}");
    }
    assert_eq!(app.changes().await, before, "refused calls change nothing");
}

#[tokio::test]
async fn auth_is_checked_before_the_body() {
    let app = app();
    let r = app.post_raw("/v1/keys.createKey", None, "{not json").await;
    r.error(401, "UNAUTHORIZED");
}

#[tokio::test]
async fn an_empty_admin_token_accepts_nothing() {
    let app = app_with(|s| s.with_admin_token(""));
    let req = Request::get("/v1/apis.getApi?apiId=ks_x")
        .header(header::AUTHORIZATION, "Bearer ")
        .body(Body::empty())
        .unwrap();
    app.send(req).await.error(401, "UNAUTHORIZED");
    let none = app_with(|mut s| {
        s.admin_token = None;
        s
    });
    none.get("/v1/apis.getApi?apiId=ks_x", Some(ADMIN))
        .await
        .error(401, "UNAUTHORIZED");
}

#[tokio::test]
async fn permissions_are_per_api() {
    let app = app();
    let a = app.create_api("api-a").await;
    let b = app.create_api("api-b").await;
    let (ka, _) = app.create_key(json!({"apiId": a})).await;
    let (kb, _) = app.create_key(json!({"apiId": b})).await;
    let reader = app
        .root_key(&[
            format!("api.{a}.read_key").as_str(),
            format!("api.{a}.create_key").as_str(),
        ])
        .await;
    let reader = Some(reader.as_str());
    app.get(&format!("/v1/keys.getKey?keyId={ka}"), reader)
        .await
        .ok();
    let m = app
        .get(&format!("/v1/keys.getKey?keyId={kb}"), reader)
        .await
        .error(403, "FORBIDDEN")
        .to_owned();
    assert!(m.contains(&format!("api.{b}.read_key")), "{m}");
    app.get(&format!("/v1/apis.listKeys?apiId={a}"), reader)
        .await
        .ok();
    app.get(&format!("/v1/apis.listKeys?apiId={b}"), reader)
        .await
        .error(403, "FORBIDDEN");
    app.post("/v1/keys.createKey", reader, json!({"apiId": a}))
        .await
        .ok();
    app.post("/v1/keys.createKey", reader, json!({"apiId": b}))
        .await
        .error(403, "FORBIDDEN");
    // Readable, but not updatable or deletable.
    app.post("/v1/keys.updateKey", reader, json!({"keyId": ka}))
        .await
        .error(403, "FORBIDDEN");
    app.post("/v1/keys.deleteKey", reader, json!({"keyId": ka}))
        .await
        .error(403, "FORBIDDEN");
    // Unknown key with the permission somewhere: 404, not 403.
    app.get("/v1/keys.getKey?keyId=key_nope", reader)
        .await
        .error(404, "NOT_FOUND");
    // A wildcard key and a ratelimit namespace permission.
    let all = app
        .root_key(&["api.*.read_key", "ratelimit.email.limit"])
        .await;
    let all = Some(all.as_str());
    app.get(&format!("/v1/keys.getKey?keyId={kb}"), all)
        .await
        .ok();
    let limit =
        |ns: &str| json!({"namespace": ns, "identifier": "u", "limit": 5, "duration": 1000});
    app.post("/v1/ratelimits.limit", all, limit("email"))
        .await
        .ok();
    app.post("/v1/ratelimits.limit", all, limit("sms"))
        .await
        .error(403, "FORBIDDEN");
}

#[tokio::test]
async fn the_root_keyspace_is_invisible() {
    let app = app();
    let root_key = app.root_key(&["api.*.create_key", "api.*.read_key"]).await;
    let root_ks = app.root.keyspace().await.unwrap();
    let root_id = app.root.list().await.unwrap()[0].key_id.clone();
    app.get(&format!("/v1/apis.getApi?apiId={root_ks}"), Some(ADMIN))
        .await
        .error(404, "NOT_FOUND");
    app.get(&format!("/v1/apis.listKeys?apiId={root_ks}"), Some(ADMIN))
        .await
        .error(404, "NOT_FOUND");
    app.get(&format!("/v1/keys.getKey?keyId={root_id}"), Some(ADMIN))
        .await
        .error(404, "NOT_FOUND");
    // A root key cannot mint another root key.
    app.post(
        "/v1/keys.createKey",
        Some(&root_key),
        json!({"apiId": root_ks.to_string(), "permissions": ["api.*.delete_api"]}),
    )
    .await
    .error(404, "NOT_FOUND");
    for body in [
        json!({"key": root_key}),
        json!({"key": root_key, "apiId": root_ks.to_string()}),
    ] {
        let v = app.verify(body).await;
        assert_eq!(v, json!({"valid": false, "code": "NOT_FOUND"}));
    }
}

// ----- apis -----------------------------------------------------------------------

#[tokio::test]
async fn apis_create_get_delete() {
    let app = app();
    let api = app.create_api("my-api").await;
    assert!(api.starts_with("ks_"), "{api}");
    let r = app
        .get(&format!("/v1/apis.getApi?apiId={api}"), Some(ADMIN))
        .await;
    assert_eq!(
        r.ok(),
        &json!({"id": api, "workspaceId": "ws_maas", "name": "my-api"})
    );
    let (key_id, key) = app.create_key(json!({"apiId": api})).await;
    let r = app
        .post("/v1/apis.deleteApi", Some(ADMIN), json!({"apiId": api}))
        .await;
    assert_eq!(r.ok(), &json!({}));
    app.get(&format!("/v1/apis.getApi?apiId={api}"), Some(ADMIN))
        .await
        .error(404, "NOT_FOUND");
    app.post("/v1/apis.deleteApi", Some(ADMIN), json!({"apiId": api}))
        .await
        .error(404, "NOT_FOUND");
    // Its keys went with it.
    app.get(&format!("/v1/keys.getKey?keyId={key_id}"), Some(ADMIN))
        .await
        .error(404, "NOT_FOUND");
    assert_eq!(app.verify(json!({"key": key})).await["code"], "NOT_FOUND");

    app.post("/v1/apis.createApi", Some(ADMIN), json!({"name": "ab"}))
        .await
        .bad_request("name");
    app.post("/v1/apis.createApi", Some(ADMIN), json!({}))
        .await
        .bad_request("name");
    app.get("/v1/apis.getApi", Some(ADMIN))
        .await
        .bad_request("apiId");
    app.get("/v1/apis.getApi?apiId=", Some(ADMIN))
        .await
        .bad_request("apiId");
    app.get("/v1/apis.getApi?apiId=a&apiId=b", Some(ADMIN))
        .await
        .bad_request("apiId");
    let m = app
        .get("/v1/apis.getApi?apiId=ks_nope", Some(ADMIN))
        .await
        .error(404, "NOT_FOUND")
        .to_owned();
    assert_eq!(m, "api 'ks_nope' not found");
    app.post("/v1/apis.deleteApi", Some(ADMIN), json!({"apiId": ""}))
        .await
        .bad_request("apiId");
}

#[tokio::test]
async fn list_keys_pages_filters_and_totals() {
    let app = app();
    let api = app.create_api("listed").await;
    let other = app.create_api("other").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let owner = if i % 2 == 0 { "alice" } else { "bob" };
        let (id, _) = app
            .create_key(json!({"apiId": api, "ownerId": owner, "name": format!("k{i}")}))
            .await;
        ids.push(id);
        app.clock.advance(Duration::from_millis(1));
    }
    app.create_key(json!({"apiId": other})).await;

    let r = app
        .get(
            &format!("/v1/apis.listKeys?apiId={api}&limit=2"),
            Some(ADMIN),
        )
        .await;
    let b = r.ok().clone();
    assert_eq!(b["total"], 5);
    let got: Vec<&str> = b["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[0].as_str(), ids[1].as_str()]);
    assert_eq!(b["keys"][0]["apiId"], api.as_str());
    assert_eq!(b["keys"][0]["workspaceId"], "ws_maas");
    let cursor = b["cursor"].as_str().unwrap();
    let r = app
        .get(
            &format!("/v1/apis.listKeys?apiId={api}&limit=2&cursor={cursor}"),
            Some(ADMIN),
        )
        .await;
    assert_eq!(r.ok()["keys"][0]["id"], ids[2].as_str());
    let r = app
        .get(
            &format!("/v1/apis.listKeys?apiId={api}&ownerId=alice"),
            Some(ADMIN),
        )
        .await;
    let b = r.ok();
    assert_eq!(b["keys"].as_array().unwrap().len(), 3);
    assert_eq!(b["total"], 5);
    assert!(b.get("cursor").is_none(), "no cursor on the last page");

    // The older route pages by offset and has no cursor.
    let r = app
        .get(
            &format!("/v1/apis/{api}/keys?limit=2&offset=3"),
            Some(ADMIN),
        )
        .await;
    let b = r.ok();
    assert_eq!(b["keys"][0]["id"], ids[3].as_str());
    assert_eq!(b["keys"].as_array().unwrap().len(), 2);
    assert_eq!(b["total"], 5);
    assert!(b.get("cursor").is_none());
    let r = app
        .get(&format!("/v1/apis/{api}/keys?offset="), Some(ADMIN))
        .await;
    assert_eq!(r.ok()["keys"].as_array().unwrap().len(), 5);

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("limit=", "limit"),
        ("ownerId=", "ownerId"),
        ("cursor=a%0Ab", "cursor"),
    ] {
        app.get(
            &format!("/v1/apis.listKeys?apiId={api}&{query}"),
            Some(ADMIN),
        )
        .await
        .bad_request(field);
    }
    app.get("/v1/apis.listKeys", Some(ADMIN))
        .await
        .bad_request("apiId");
    app.get(&format!("/v1/apis/{api}/keys?offset=-1"), Some(ADMIN))
        .await
        .bad_request("offset");
    app.get(&format!("/v1/apis/{api}/keys?offset=1.5"), Some(ADMIN))
        .await
        .bad_request("offset");
    app.get("/v1/apis.listKeys?apiId=ks_nope", Some(ADMIN))
        .await
        .error(404, "NOT_FOUND");
    app.get("/v1/apis/ks_nope/keys", Some(ADMIN))
        .await
        .error(404, "NOT_FOUND");
    app.get("/v1/apis/ks%0Anope/keys", Some(ADMIN))
        .await
        .bad_request("apiId");
}

// ----- keys ------------------------------------------------------------------------

#[tokio::test]
async fn create_key_with_every_field_and_read_it_back() {
    let app = app();
    let api = app.create_api("full").await;
    let expires = app.clock.now().as_millis() + 86_400_000;
    let (key_id, key) = app
        .create_key(json!({
            "apiId": api,
            "prefix": "sk_live",
            "name": "Customer X",
            "byteLength": 32,
            "ownerId": "user_123",
            "meta": {"billingTier": "PRO", "trial": null},
            "roles": ["admin", "finance"],
            "permissions": ["dns.record.read"],
            "expires": expires,
            "remaining": 100,
            "refill": {"interval": "daily", "amount": 100},
            "ratelimit": {"limit": 10, "refillRate": 1, "refillInterval": 60000},
            "enabled": true,
            "environment": "test",
        }))
        .await;
    assert!(key.starts_with("sk_live_"), "{key}");
    assert!(key.len() > "sk_live_".len() + 40, "32 random bytes: {key}");
    let k = app.get_key(&key_id).await;
    let created_at = k["createdAt"].as_i64().unwrap();
    assert_eq!(created_at, app.clock.now().as_millis());
    assert_eq!(
        k,
        json!({
            "id": key_id,
            "start": k["start"],
            "workspaceId": "ws_maas",
            "apiId": api,
            "name": "Customer X",
            "ownerId": "user_123",
            "meta": {"billingTier": "PRO", "trial": null},
            "createdAt": created_at,
            "expires": expires,
            "remaining": 100,
            "refill": {"interval": "daily", "amount": 100, "lastRefillAt": created_at},
            "ratelimit": {"type": "fast", "limit": 10, "refillRate": 1, "refillInterval": 60000},
            "roles": ["admin", "finance"],
            "permissions": ["dns.record.read"],
            "enabled": true,
        })
    );
    assert!(key.starts_with(k["start"].as_str().unwrap()));

    // Defaults: no prefix, 16 bytes, enabled, nothing optional.
    let (plain_id, plain) = app.create_key(json!({"apiId": api})).await;
    assert!(!plain.contains('_'), "{plain}");
    let k = app.get_key(&plain_id).await;
    assert_eq!(k["enabled"], true);
    assert_eq!(k["roles"], json!([]));
    for absent in [
        "name",
        "ownerId",
        "meta",
        "expires",
        "remaining",
        "refill",
        "ratelimit",
        "deletedAt",
    ] {
        assert!(k.get(absent).is_none(), "{absent}: {k}");
    }
    // An empty prefix is no prefix; a disabled key is created disabled.
    let (id, key) = app
        .create_key(json!({"apiId": api, "prefix": "", "enabled": false}))
        .await;
    assert!(!key.contains('_'));
    assert_eq!(app.get_key(&id).await["enabled"], false);
}

#[tokio::test]
async fn create_key_refuses_bad_fields() {
    let app = app();
    let api = app.create_api("strict").await;
    let before = app.changes().await;
    let past = app.clock.now().as_millis() - 1;
    for (body, field) in [
        (json!({}), "apiId"),
        (json!({"apiId": ""}), "apiId"),
        (json!({"apiId": 7}), "apiId"),
        (json!({"apiId": api, "prefix": "123456789"}), "prefix"),
        (json!({"apiId": api, "prefix": "s k"}), "prefix"),
        (json!({"apiId": api, "byteLength": 15}), "byteLength"),
        (json!({"apiId": api, "byteLength": 256}), "byteLength"),
        (json!({"apiId": api, "byteLength": 70000}), "byteLength"),
        (json!({"apiId": api, "byteLength": "16"}), "byteLength"),
        (json!({"apiId": api, "name": null}), "name"),
        (json!({"apiId": api, "name": ""}), "name"),
        (json!({"apiId": api, "meta": [1]}), "meta"),
        (json!({"apiId": api, "roles": [""]}), "roles"),
        (json!({"apiId": api, "roles": "admin"}), "roles"),
        (json!({"apiId": api, "expires": past}), "expires"),
        (json!({"apiId": api, "expires": 1.5}), "expires"),
        (json!({"apiId": api, "remaining": -1}), "remaining"),
        (
            json!({"apiId": api, "remaining": 1, "refill": {"interval": "weekly", "amount": 1}}),
            "refill.interval",
        ),
        (
            json!({"apiId": api, "remaining": 1, "refill": {"interval": "daily", "amount": 0}}),
            "refill.amount",
        ),
        (
            json!({"apiId": api, "refill": {"interval": "daily", "amount": 5}}),
            "remaining",
        ),
        (
            json!({"apiId": api, "ratelimit": {"type": "slow", "limit": 1, "refillRate": 1, "refillInterval": 1}}),
            "ratelimit.type",
        ),
        (
            json!({"apiId": api, "ratelimit": {"limit": 0, "refillRate": 1, "refillInterval": 1}}),
            "ratelimit.limit",
        ),
        (
            json!({"apiId": api, "ratelimit": {"limit": 1, "refillInterval": 1}}),
            "ratelimit.refillRate",
        ),
        (json!({"apiId": api, "enabled": "yes"}), "enabled"),
        (
            json!({"apiId": api, "ratelimit": ["fast", 1, 1, 1]}),
            "ratelimit",
        ),
        (json!({"apiId": api, "refill": ["daily", 5]}), "refill"),
        (
            json!({"apiId": api, "environment": "e".repeat(257)}),
            "environment",
        ),
    ] {
        app.post("/v1/keys.createKey", Some(ADMIN), body.clone())
            .await
            .bad_request(field);
    }
    assert_eq!(app.changes().await, before, "nothing was created");
    app.post(
        "/v1/keys.createKey",
        Some(ADMIN),
        json!({"apiId": "ks_nope"}),
    )
    .await
    .error(404, "NOT_FOUND");
}

#[tokio::test]
async fn legacy_create_key_and_verify() {
    let app = app();
    let api = app.create_api("legacy").await;
    let r = app
        .post(
            "/v1/keys",
            Some(ADMIN),
            json!({"apiId": api, "prefix": "old", "ownerId": "o", "remaining": 3,
                   "ratelimit": {"type": "consistent", "limit": 5, "refillRate": 5, "refillInterval": 1000}}),
        )
        .await;
    let key = r.ok()["key"].as_str().unwrap().to_owned();
    let key_id = r.ok()["keyId"].as_str().unwrap().to_owned();
    assert!(key.starts_with("old_"));
    let v = app
        .post("/v1/keys/verify", None, json!({"key": key, "apiId": api}))
        .await
        .ok()
        .clone();
    assert_eq!(v["valid"], true);
    assert_eq!(v["keyId"], key_id.as_str());
    assert_eq!(v["ownerId"], "o");
    assert_eq!(v["remaining"], 2);
    assert_eq!(v["createdAt"], app.clock.now().as_millis());
    assert_eq!(v["ratelimit"]["limit"], 5);
    assert_eq!(v["ratelimit"]["remaining"], 4);
    for absent in ["code", "enabled", "permissions", "environment"] {
        assert!(v.get(absent).is_none(), "{absent}: {v}");
    }
    let v = app
        .post("/v1/keys/verify", None, json!({"key": "nope"}))
        .await
        .ok()
        .clone();
    assert_eq!(v, json!({"valid": false, "code": "NOT_FOUND"}));
    app.post("/v1/keys/verify", None, json!({}))
        .await
        .bad_request("key");
    app.post(
        "/v1/keys",
        Some(ADMIN),
        json!({"apiId": api, "byteLength": 8}),
    )
    .await
    .bad_request("byteLength");
}

#[tokio::test]
async fn verify_key_answers_200_with_a_code() {
    let app = app();
    let api = app.create_api("verify").await;
    let other = app.create_api("other").await;
    let expires = app.clock.now().as_millis() + 60_000;
    let (key_id, key) = app
        .create_key(json!({
            "apiId": api, "name": "n", "ownerId": "o", "meta": {"a": 1},
            "permissions": ["dns.record.read", "dns.record.update"],
            "environment": "test", "expires": expires,
            "ratelimit": {"type": "consistent", "limit": 2, "refillRate": 2, "refillInterval": 60000},
        }))
        .await;
    let v = app.verify(json!({"key": key, "apiId": api})).await;
    assert_eq!(
        v,
        json!({
            "keyId": key_id, "valid": true, "name": "n", "ownerId": "o", "meta": {"a": 1},
            "expires": expires,
            "ratelimit": {"limit": 2, "remaining": 1, "reset": v["ratelimit"]["reset"]},
            "enabled": true, "permissions": ["dns.record.read", "dns.record.update"],
            "environment": "test",
        })
    );
    assert!(v["ratelimit"]["reset"].as_i64().unwrap() > app.clock.now().as_millis());
    // Another api: FORBIDDEN without details. Unknown key: NOT_FOUND.
    let v = app.verify(json!({"key": key, "apiId": other})).await;
    assert_eq!(v, json!({"valid": false, "code": "FORBIDDEN"}));
    let v = app
        .verify(json!({"key": "sk_unknown123456789012345"}))
        .await;
    assert_eq!(v, json!({"valid": false, "code": "NOT_FOUND"}));
    // Permission queries, nested as the seed's example.
    let q = json!({"or": [{"and": ["dns.record.read", "dns.record.update"]}, "admin"]});
    let v = app
        .verify(json!({"key": key, "authorization": {"permissions": q}}))
        .await;
    assert_eq!(v["valid"], true);
    let v = app
        .verify(json!({"key": key, "authorization": {"permissions": "admin"}}))
        .await;
    assert_eq!(v["valid"], false);
    assert_eq!(v["code"], "INSUFFICIENT_PERMISSIONS");
    assert_eq!(v["keyId"], key_id.as_str());
    // The rate limit: one left, then refused.
    let v = app.verify(json!({"key": key})).await;
    assert_eq!(v["valid"], false);
    assert_eq!(v["code"], "RATE_LIMITED");
    assert_eq!(v["ratelimit"]["remaining"], 0);
    // Expired: NOT_FOUND ("does not exist or has expired").
    app.clock.advance(Duration::from_secs(120));
    let v = app.verify(json!({"key": key})).await;
    assert_eq!(v, json!({"valid": false, "code": "NOT_FOUND"}));

    for (body, field) in [
        (json!({}), "key"),
        (json!({"key": ""}), "key"),
        (json!({"key": 1}), "key"),
        (json!({"key": "k", "apiId": ""}), "apiId"),
        (json!({"key": "k", "apiId": null}), "apiId"),
        (
            json!({"key": "k", "authorization": {"permissions": {"xor": ["a"]}}}),
            "authorization.permissions",
        ),
        (
            json!({"key": "k", "authorization": {"permissions": 5}}),
            "authorization.permissions",
        ),
        // Found by schemathesis: serde reads a struct from an array too.
        (json!({"key": "k", "authorization": ["p"]}), "authorization"),
    ] {
        app.post("/v1/keys.verifyKey", None, body)
            .await
            .bad_request(field);
    }
}

/// The flow of issue 7: create -> verify -> updateRemaining -> verify
/// (USAGE_EXCEEDED) -> updateKey(enabled=false) -> verify (DISABLED), and
/// the verifications it leaves.
#[tokio::test]
async fn create_verify_update_remaining_disable_flow() {
    let app = app();
    let api = app.create_api("flow").await;
    let (key_id, key) = app
        .create_key(json!({"apiId": api, "remaining": 5, "ownerId": "acme"}))
        .await;
    let v = app.verify(json!({"key": key, "apiId": api})).await;
    assert_eq!(v["valid"], true);
    assert_eq!(v["remaining"], 4);
    assert!(v.get("code").is_none());

    let r = app
        .post(
            "/v1/keys.updateRemaining",
            Some(ADMIN),
            json!({"keyId": key_id, "op": "set", "value": 0}),
        )
        .await;
    assert_eq!(r.ok(), &json!({"remaining": 0}));
    let v = app.verify(json!({"key": key, "apiId": api})).await;
    assert_eq!(v["valid"], false);
    assert_eq!(v["code"], "USAGE_EXCEEDED");
    assert_eq!(v["remaining"], 0);
    assert_eq!(v["keyId"], key_id.as_str());

    let r = app
        .post(
            "/v1/keys.updateKey",
            Some(ADMIN),
            json!({"keyId": key_id, "enabled": false}),
        )
        .await;
    assert_eq!(r.ok(), &json!({}));
    let v = app.verify(json!({"key": key, "apiId": api})).await;
    assert_eq!(v["valid"], false);
    assert_eq!(v["code"], "DISABLED");
    assert_eq!(v["enabled"], false);

    let day = app.clock.now().as_millis() / 86_400_000 * 86_400_000;
    let expected = json!({"verifications": [
        {"time": day, "success": 1, "rateLimited": 0, "usageExceeded": 1}
    ]});
    let r = app
        .get(
            &format!("/v1/keys.getVerifications?keyId={key_id}"),
            Some(ADMIN),
        )
        .await;
    assert_eq!(r.ok(), &expected);
    let r = app
        .get(
            "/v1/keys.getVerifications?ownerId=acme&granularity=day",
            Some(ADMIN),
        )
        .await;
    assert_eq!(r.ok(), &expected);
}

#[tokio::test]
async fn update_key_tells_absent_from_null() {
    let app = app();
    let api = app.create_api("patch").await;
    let (id, key) = app
        .create_key(json!({
            "apiId": api, "name": "n", "ownerId": "o", "meta": {"a": 1},
            "expires": app.clock.now().as_millis() + 60_000, "remaining": 3,
            "refill": {"interval": "monthly", "amount": 10},
            "ratelimit": {"limit": 5, "refillRate": 5, "refillInterval": 1000},
        }))
        .await;
    let update = |body: Value| {
        let mut body = body;
        body["keyId"] = json!(id);
        app.post("/v1/keys.updateKey", Some(ADMIN), body)
    };
    // Nothing but the id: everything kept.
    let before = app.get_key(&id).await;
    assert_eq!(update(json!({})).await.ok(), &json!({}));
    assert_eq!(app.get_key(&id).await, before);
    // Values set.
    update(json!({"name": "m", "ownerId": "p", "meta": {"b": 2},
                  "ratelimit": {"type": "consistent", "limit": 9, "refillRate": 1, "refillInterval": 10},
                  "roles": ["r"], "permissions": ["x.y"], "environment": "live"}))
    .await
    .ok();
    let k = app.get_key(&id).await;
    assert_eq!(k["name"], "m");
    assert_eq!(k["ownerId"], "p");
    assert_eq!(k["meta"], json!({"b": 2}));
    assert_eq!(k["ratelimit"]["type"], "consistent");
    assert_eq!(k["roles"], json!(["r"]));
    assert_eq!(k["permissions"], json!(["x.y"]));
    assert_eq!(app.verify(json!({"key": key})).await["environment"], "live");
    // Nulls clear.
    update(
        json!({"name": null, "ownerId": null, "meta": null, "expires": null,
                  "ratelimit": null, "remaining": null, "refill": null}),
    )
    .await
    .ok();
    let k = app.get_key(&id).await;
    for cleared in [
        "name",
        "ownerId",
        "meta",
        "expires",
        "ratelimit",
        "remaining",
        "refill",
    ] {
        assert!(k.get(cleared).is_none(), "{cleared}: {k}");
    }
    assert_eq!(k["roles"], json!(["r"]), "absent fields are kept");
    // Remaining back on, with a refill.
    update(json!({"remaining": 7, "refill": {"interval": "daily", "amount": 7}}))
        .await
        .ok();
    let k = app.get_key(&id).await;
    assert_eq!(k["remaining"], 7);
    assert_eq!(k["refill"]["interval"], "daily");

    let before = app.changes().await;
    for (body, field) in [
        (json!({"enabled": null}), "enabled"),
        (json!({"enabled": "no"}), "enabled"),
        (
            json!({"ratelimit": {"limit": 1, "refillRate": 1, "refillInterval": 1}}),
            "ratelimit.type",
        ),
        (
            json!({"ratelimit": {"type": "fast", "limit": 1, "refillRate": 0, "refillInterval": 1}}),
            "ratelimit.refillRate",
        ),
        (
            json!({"refill": {"interval": "hourly", "amount": 1}}),
            "refill.interval",
        ),
        (
            json!({"refill": {"interval": "daily", "amount": 0}}),
            "refill.amount",
        ),
        (json!({"remaining": -5}), "remaining"),
        (json!({"remaining": "5"}), "remaining"),
        (
            json!({"remaining": null, "refill": {"interval": "daily", "amount": 1}}),
            "remaining",
        ),
        (json!({"meta": "x"}), "meta"),
        (json!({"name": ""}), "name"),
        (json!({"expires": "tomorrow"}), "expires"),
        (json!({"roles": null}), "roles"),
    ] {
        update(body).await.bad_request(field);
    }
    app.post("/v1/keys.updateKey", Some(ADMIN), json!({}))
        .await
        .bad_request("keyId");
    app.post("/v1/keys.updateKey", Some(ADMIN), json!({"keyId": ""}))
        .await
        .bad_request("keyId");
    assert_eq!(app.changes().await, before);
    assert_eq!(app.get_key(&id).await["remaining"], 7, "nothing changed");
    app.post(
        "/v1/keys.updateKey",
        Some(ADMIN),
        json!({"keyId": "key_nope"}),
    )
    .await
    .error(404, "NOT_FOUND");
}

#[tokio::test]
async fn update_remaining_ops() {
    let app = app();
    let api = app.create_api("remaining").await;
    let (id, _) = app.create_key(json!({"apiId": api, "remaining": 10})).await;
    let op = |op: &str, value: Value| {
        app.post(
            "/v1/keys.updateRemaining",
            Some(ADMIN),
            json!({"keyId": id, "op": op, "value": value}),
        )
    };
    assert_eq!(op("increment", json!(5)).await.ok()["remaining"], 15);
    assert_eq!(op("decrement", json!(20)).await.ok()["remaining"], 0);
    assert_eq!(op("set", json!(3)).await.ok()["remaining"], 3);
    assert_eq!(
        op("set", Value::Null).await.ok(),
        &json!({"remaining": null})
    );
    assert!(app.get_key(&id).await.get("remaining").is_none());
    // An unlimited key cannot be incremented.
    op("increment", json!(1)).await.bad_request("op");
    let before = app.changes().await;
    op("multiply", json!(1)).await.bad_request("op");
    op("set", json!(-1)).await.bad_request("value");
    op("set", json!(1.5)).await.bad_request("value");
    op("increment", Value::Null).await.bad_request("value");
    app.post(
        "/v1/keys.updateRemaining",
        Some(ADMIN),
        json!({"keyId": id, "op": "set"}),
    )
    .await
    .bad_request("value");
    app.post(
        "/v1/keys.updateRemaining",
        Some(ADMIN),
        json!({"keyId": id, "value": 1}),
    )
    .await
    .bad_request("op");
    assert_eq!(app.changes().await, before);
    app.post(
        "/v1/keys.updateRemaining",
        Some(ADMIN),
        json!({"keyId": "key_nope", "op": "set", "value": 1}),
    )
    .await
    .error(404, "NOT_FOUND");
}

#[tokio::test]
async fn delete_key_revokes_at_once() {
    let app = app();
    let api = app.create_api("delete").await;
    let (id, key) = app.create_key(json!({"apiId": api})).await;
    assert_eq!(app.verify(json!({"key": key})).await["valid"], true);
    let r = app
        .post("/v1/keys.deleteKey", Some(ADMIN), json!({"keyId": id}))
        .await;
    assert_eq!(r.ok(), &json!({}));
    assert_eq!(
        app.verify(json!({"key": key})).await,
        json!({"valid": false, "code": "NOT_FOUND"})
    );
    app.get(&format!("/v1/keys.getKey?keyId={id}"), Some(ADMIN))
        .await
        .error(404, "NOT_FOUND");
    app.post("/v1/keys.deleteKey", Some(ADMIN), json!({"keyId": id}))
        .await
        .error(404, "NOT_FOUND");
    app.post("/v1/keys.deleteKey", Some(ADMIN), json!({"keyId": ""}))
        .await
        .bad_request("keyId");
    app.post("/v1/keys.deleteKey", Some(ADMIN), json!({"keyId": null}))
        .await
        .bad_request("keyId");
    app.get("/v1/keys.getKey", Some(ADMIN))
        .await
        .bad_request("keyId");
    app.get("/v1/keys.getKey?keyId=", Some(ADMIN))
        .await
        .bad_request("keyId");
}

#[tokio::test]
async fn get_verifications_scopes_and_ranges() {
    let app = app();
    let api = app.create_api("usage").await;
    let (id, key) = app
        .create_key(json!({"apiId": api, "ownerId": "acme",
                           "ratelimit": {"limit": 1, "refillRate": 1, "refillInterval": 86400000}}))
        .await;
    let now = app.clock.now().as_millis();
    app.verify(json!({"key": key})).await;
    app.verify(json!({"key": key})).await;
    let day = now / 86_400_000 * 86_400_000;
    let one = json!({"verifications": [{"time": day, "success": 1, "rateLimited": 1, "usageExceeded": 0}]});
    let a = &app;
    let get = |q: String| async move {
        a.get(&format!("/v1/keys.getVerifications?{q}"), Some(ADMIN))
            .await
    };
    assert_eq!(get(format!("keyId={id}")).await.ok(), &one);
    assert_eq!(
        get(format!("keyId={id}&start={now}&end={now}")).await.ok(),
        &one
    );
    assert_eq!(
        get(format!("keyId={id}&start=&end=")).await.ok(),
        &one,
        "empty is null"
    );
    let later = now + 3_600_000;
    assert_eq!(
        get(format!("keyId={id}&start={later}&end={}", later + 1))
            .await
            .ok(),
        &json!({"verifications": []})
    );
    assert_eq!(
        get("ownerId=nobody".into()).await.ok(),
        &json!({"verifications": []})
    );
    get(String::new()).await.bad_request("keyId");
    get(format!("keyId={id}&granularity=hour"))
        .await
        .bad_request("granularity");
    get(format!("keyId={id}&start=abc"))
        .await
        .bad_request("start");
    get(format!("keyId={id}&end=1.5")).await.bad_request("end");
    get(format!("keyId={id}&start={later}&end={now}"))
        .await
        .bad_request("start");
    get(format!("keyId={id}&start=0"))
        .await
        .bad_request("start");
    get("keyId=key_nope".into()).await.error(404, "NOT_FOUND");
    // A key-scoped root key reads its api's keys, not an owner across apis.
    let narrow = app
        .root_key(&[format!("api.{api}.read_key").as_str()])
        .await;
    app.get(
        &format!("/v1/keys.getVerifications?keyId={id}"),
        Some(&narrow),
    )
    .await
    .ok();
    app.get("/v1/keys.getVerifications?ownerId=acme", Some(&narrow))
        .await
        .error(403, "FORBIDDEN");
}

// ----- ratelimits ------------------------------------------------------------------

#[tokio::test]
async fn ratelimits_limit_admits_then_refuses() {
    let app = app();
    let body = json!({"namespace": "email.outbound", "identifier": "user_123", "limit": 2,
                      "duration": 60000, "meta": {"a": "b", "n": 1, "t": true, "z": null},
                      "resources": [{"type": "project", "id": "p_123", "name": "dub"}]});
    let r = app
        .post("/v1/ratelimits.limit", Some(ADMIN), body.clone())
        .await;
    let b = r.ok().clone();
    assert_eq!(b["success"], true);
    assert_eq!(b["limit"], 2);
    assert_eq!(b["remaining"], 1);
    assert!(b["reset"].as_i64().unwrap() > app.clock.now().as_millis());
    let mut costly = body.clone();
    costly["cost"] = json!(2);
    let r = app.post("/v1/ratelimits.limit", Some(ADMIN), costly).await;
    assert_eq!(r.ok()["success"], false, "refused with 200");
    app.post("/v1/ratelimits.limit", Some(ADMIN), body.clone())
        .await
        .ok();
    let r = app.post("/v1/ratelimits.limit", Some(ADMIN), body).await;
    assert_eq!(r.ok()["success"], false);
    assert_eq!(r.ok()["remaining"], 0);
    // The window passes.
    app.clock.advance(Duration::from_secs(121));
    let fast = json!({"identifier": "user_123", "limit": 1, "duration": 1000, "async": true});
    assert_eq!(
        app.post("/v1/ratelimits.limit", Some(ADMIN), fast.clone())
            .await
            .ok()["success"],
        true
    );
    assert_eq!(
        app.post("/v1/ratelimits.limit", Some(ADMIN), fast)
            .await
            .ok()["success"],
        false
    );

    for (body, field) in [
        (json!({"limit": 1, "duration": 1000}), "identifier"),
        (
            json!({"identifier": "", "limit": 1, "duration": 1000}),
            "identifier",
        ),
        (json!({"identifier": "u", "duration": 1000}), "limit"),
        (
            json!({"identifier": "u", "limit": 0, "duration": 1000}),
            "limit",
        ),
        (
            json!({"identifier": "u", "limit": "1", "duration": 1000}),
            "limit",
        ),
        (
            json!({"identifier": "u", "limit": 1, "duration": 999}),
            "duration",
        ),
        (
            json!({"identifier": "u", "limit": 1, "duration": 1000, "cost": 0}),
            "cost",
        ),
        (
            json!({"identifier": "u", "limit": 1, "duration": 1000, "async": "yes"}),
            "async",
        ),
        (
            json!({"identifier": "u", "limit": 1, "duration": 1000, "namespace": null}),
            "namespace",
        ),
        (
            json!({"identifier": "u", "limit": 1, "duration": 1000, "meta": {"a": {"b": 1}}}),
            "meta",
        ),
        (
            json!({"identifier": "u", "limit": 1, "duration": 1000, "resources": [{"type": "t"}]}),
            "resources[0].id",
        ),
    ] {
        app.post("/v1/ratelimits.limit", Some(ADMIN), body)
            .await
            .bad_request(field);
    }
}

// ----- bad input, every body route ----------------------------------------------------

/// Each body route with a valid body, and a table of bad bodies: each is a
/// 4xx in the envelope, naming the field where there is one, and leaves
/// the store unchanged.
#[tokio::test]
async fn bad_bodies_are_refused_without_changes() {
    let app = app_with(|s| s.with_config(HttpConfig { body_limit: 4096 }));
    let api = app.create_api("bad-input").await;
    let (key_id, _) = app.create_key(json!({"apiId": api, "remaining": 1})).await;
    let routes: Vec<(&str, Value)> = vec![
        ("/v1/keys.createKey", json!({"apiId": api})),
        ("/v1/keys", json!({"apiId": api})),
        ("/v1/keys.verifyKey", json!({"key": "k"})),
        ("/v1/keys/verify", json!({"key": "k"})),
        ("/v1/keys.updateKey", json!({"keyId": key_id})),
        (
            "/v1/keys.updateRemaining",
            json!({"keyId": key_id, "op": "set", "value": 1}),
        ),
        ("/v1/keys.deleteKey", json!({"keyId": key_id})),
        ("/v1/apis.createApi", json!({"name": "new-api"})),
        ("/v1/apis.deleteApi", json!({"apiId": api})),
        (
            "/v1/ratelimits.limit",
            json!({"identifier": "u", "limit": 1, "duration": 1000}),
        ),
    ];
    let before = app.changes().await;
    let oversized = format!("{{\"pad\": \"{}\"}}", "x".repeat(8192));
    for (uri, valid) in &routes {
        let first_field = valid.as_object().unwrap().keys().next().unwrap().clone();
        // Malformed JSON, not an object, empty.
        for raw in ["{\"a\": ", "[1, 2]", "", "null", "{\"a\": 1,}"] {
            let r = app.post_raw(uri, Some(ADMIN), raw).await;
            r.error(400, "BAD_REQUEST");
        }
        // A required field missing.
        let mut missing = valid.clone();
        missing.as_object_mut().unwrap().remove(&first_field);
        let r = app.post(uri, Some(ADMIN), missing).await;
        let m = r.error(400, "BAD_REQUEST");
        assert!(m.contains(&first_field), "{uri}: {m}");
        // The wrong type.
        let mut wrong = valid.clone();
        wrong[&first_field] = json!({"nested": true});
        app.post(uri, Some(ADMIN), wrong)
            .await
            .bad_request(&first_field);
        // Too large: 413 in the envelope, code BAD_REQUEST.
        let r = app.post_raw(uri, Some(ADMIN), &oversized).await;
        r.error(413, "BAD_REQUEST");
        // Not JSON: 415.
        let req = Request::post(*uri)
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
            .body(Body::from(valid.to_string()))
            .unwrap();
        app.send(req).await.error(415, "BAD_REQUEST");
        let req = Request::post(*uri)
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(valid.to_string()))
            .unwrap();
        app.send(req).await.error(415, "BAD_REQUEST");
    }
    // Unknown enum values and out-of-range numbers.
    for (uri, body, field) in [
        (
            "/v1/keys.updateRemaining",
            json!({"keyId": key_id, "op": "double", "value": 1}),
            "op",
        ),
        (
            "/v1/keys.createKey",
            json!({"apiId": api, "ratelimit": {"type": "eventual", "limit": 1, "refillRate": 1, "refillInterval": 1}}),
            "ratelimit.type",
        ),
        (
            "/v1/keys.createKey",
            json!({"apiId": api, "byteLength": 300}),
            "byteLength",
        ),
        (
            "/v1/keys.createKey",
            json!({"apiId": api, "remaining": 1e30}),
            "remaining",
        ),
        (
            "/v1/ratelimits.limit",
            json!({"identifier": "u", "limit": -1, "duration": 1000}),
            "limit",
        ),
    ] {
        app.post(uri, Some(ADMIN), body).await.bad_request(field);
    }
    let huge = r#"{"identifier": "u", "limit": 1, "duration": 99999999999999999999}"#;
    app.post_raw("/v1/ratelimits.limit", Some(ADMIN), huge)
        .await
        .bad_request("duration");
    assert_eq!(
        app.changes().await,
        before,
        "no bad request changed anything"
    );
    assert_eq!(app.get_key(&key_id).await["remaining"], 1);
    // The valid bodies do work (in an order that keeps the api alive).
    for (uri, valid) in routes {
        let r = app.post(uri, Some(ADMIN), valid).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.body);
    }
}
