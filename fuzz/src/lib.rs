//! Shared parts of the fuzz targets: the runtime, an input reader, and the
//! fixtures (a populated key store, token services, the Unkey-compatible and
//! management routers over a memory store).
//!
//! Every fixture runs on a [`ManualClock`] fixed at [`T0`], so a crashing
//! input replays the same way.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, Uri, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::BodyExt;
use maas_core::fairshare::{FairShare, FairShareConfig};
use maas_core::mcp::McpServers;
use maas_core::projects::Projects;
use maas_core::ratelimit::RateLimitConfig;
use maas_core::rootkeys::RootKeys;
use maas_core::scheduling::Scheduling;
use maas_core::usage::{UsageConfig, UsageLedger};
use maas_core::{
    Clock, KeyHasher, KeyService, ManualClock, ModelService, RateLimiter, TierService, Timestamp,
    UserKeys,
};
use maas_http::HttpConfig;
use maas_http::management::{self, ManagementServices, ManagementState};
use maas_http::unkey::{self, UnkeyState};
use maas_store_memory::MemoryStore;
use serde_json::Value;
use tokio::runtime::{Builder, Runtime};
use tower::ServiceExt;

/// 2025-11-25T00:00:00Z: the fixtures' time.
pub const T0: i64 = 1_764_028_800_000;

/// The admin bearer token of both routers.
pub const ADMIN: &str = "fuzz-admin-token-0123456789";

/// One current-thread runtime per process.
pub fn rt() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// A clock fixed at [`T0`].
pub fn clock() -> ManualClock {
    ManualClock::new(Timestamp::from_millis(T0))
}

/// Reads an input front to back; past the end every read is zero / empty.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// The reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// The next byte (0 past the end).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// The next `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// base64url without padding, as JWT segments are.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Replaces every `from` in `body` by `to`.
pub fn replace(body: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    if from.is_empty() {
        return body.to_vec();
    }
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    out
}

/// What a router answered.
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The body as JSON (`Null` when empty or not JSON).
    pub body: Value,
}

/// Sends one request through `router` with `oneshot`. `None` when the URI
/// does not parse (the fuzzer made a query string no client could send).
pub async fn send(
    router: &Router,
    method: Method,
    uri: &str,
    bearer: Option<&str>,
    body: Vec<u8>,
) -> Option<Reply> {
    let uri: Uri = uri.parse().ok()?;
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(b) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {b}"));
    }
    let req = req
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .ok()?;
    let res = router
        .clone()
        .oneshot(req)
        .await
        .unwrap_or_else(|e| match e {});
    let status = res.status();
    let bytes = res
        .into_body()
        .collect()
        .await
        .expect("a router's body never fails")
        .to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Some(Reply { status, body })
}

/// A fixture's setup request: POSTs `body` as the admin and returns the
/// answer's JSON; panics unless it succeeded.
async fn fixture_post(router: Router, path: String, body: String) -> Value {
    let r = send(&router, Method::POST, &path, Some(ADMIN), body.into_bytes())
        .await
        .expect("fixture request");
    assert!(
        r.status.is_success(),
        "fixture {path}: {} {}",
        r.status,
        r.body
    );
    r.body
}

/// Panics on a 5xx other than 503 (storage unavailable).
pub fn check_status(what: &str, reply: &Reply) {
    if reply.status.is_server_error() {
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{what}: {} {}",
            reply.status,
            reply.body
        );
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("fixture: no {path:?} in {v}"))
}

/// The Unkey-compatible router over a fresh memory store, with an api and a
/// key in it, and a root key limited to reading and verifying.
#[derive(Debug)]
pub struct UnkeyFixture {
    /// The router (admin token [`ADMIN`]).
    pub router: Router,
    /// The api's id.
    pub api_id: String,
    /// The key's id.
    pub key_id: String,
    /// The key's secret.
    pub key: String,
    /// A root key with `api.*.read_key` and `api.*.read_api`.
    pub root_key: String,
}

/// Builds an [`UnkeyFixture`].
pub async fn unkey_fixture() -> UnkeyFixture {
    let clock = clock();
    let c: Arc<dyn Clock> = Arc::new(clock);
    let storage = MemoryStore::new().storage();
    let keys = KeyService::new_with_clock(
        storage.clone(),
        KeyHasher::from_secret(b"fuzz-unkey-hasher-secret-0123456"),
        Arc::clone(&c),
    );
    let ledger = UsageLedger::new_with_clock(&storage, UsageConfig::default(), Arc::clone(&c));
    keys.attach_usage(ledger.clone()).expect("attach usage");
    let root = RootKeys::new_with_clock(keys, Arc::clone(&c));
    let limiter = RateLimiter::with_config(storage.clone(), RateLimitConfig::default(), c);
    let router =
        unkey::router(UnkeyState::new(root.clone(), limiter, ledger).with_admin_token(ADMIN));
    let post =
        |path: &'static str, body: String| fixture_post(router.clone(), path.to_owned(), body);
    let api = post("/v1/apis.createApi", r#"{"name":"fuzz-api"}"#.into()).await;
    let api_id = str_at(&api, &["apiId"]).to_owned();
    let key = post(
        "/v1/keys.createKey",
        format!(
            r#"{{"apiId":"{api_id}","prefix":"fz","name":"k1","ownerId":"user_1","remaining":5,"ratelimit":{{"type":"fast","limit":3,"refillRate":3,"refillInterval":60000}},"roles":["admin"],"permissions":["dns.record.read"],"meta":{{"a":1}}}}"#
        ),
    )
    .await;
    let root_key = root
        .create(
            &maas_core::Actor::system(),
            "fuzz-reader",
            vec!["api.*.read_key".into(), "api.*.read_api".into()],
        )
        .await
        .expect("a root key");
    UnkeyFixture {
        router,
        api_id,
        key_id: str_at(&key, &["keyId"]).to_owned(),
        key: str_at(&key, &["key"]).to_owned(),
        root_key: root_key.key,
    }
}

/// The management router over a fresh memory store, with one of each
/// thing the routes' paths name.
#[derive(Debug)]
pub struct ManagementFixture {
    /// The router (admin token [`ADMIN`]).
    pub router: Router,
    /// Placeholders of the paths (`{tenant}`, ...) and their values.
    pub ids: Vec<(&'static str, String)>,
}

/// Builds a [`ManagementFixture`].
pub async fn management_fixture() -> ManagementFixture {
    let clock = clock();
    let c: Arc<dyn Clock> = Arc::new(clock);
    let storage = MemoryStore::new().storage();
    let fs = FairShare::with_clock(FairShareConfig::default(), Arc::clone(&c)).expect("fair share");
    let keys = KeyService::new_with_clock(
        storage.clone(),
        KeyHasher::from_secret(b"fuzz-mgmt-hasher-secret-01234567"),
        Arc::clone(&c),
    );
    let services = ManagementServices {
        scheduling: Scheduling::new(storage.clone(), fs, Arc::clone(&c)),
        tiers: TierService::new_with_clock(storage.clone(), Arc::clone(&c)),
        models: ModelService::new_with_clock(storage.clone(), Arc::clone(&c)),
        user_keys: UserKeys::new_with_clock(keys.clone(), Arc::clone(&c)),
        usage: UsageLedger::new_with_clock(&storage, UsageConfig::default(), Arc::clone(&c)),
        mcp: McpServers::new_with_clock(storage.clone(), Arc::clone(&c)),
        root_keys: RootKeys::new_with_clock(keys.clone(), Arc::clone(&c)),
        projects: Projects::new_with_clock(keys, Arc::clone(&c)),
        webhooks: maas_core::webhook::Webhooks::new(storage.clone(), maas_core::KeyHasher::random()),
        admission: maas_core::AdmissionLimits::with_config(
            storage.clone(),
            maas_core::AdmissionConfig::default(),
            Arc::clone(&c),
        ),
        storage,
    };
    let router = management::router(
        ManagementState::new(ADMIN, services).expect("management state"),
        &HttpConfig::default(),
    );
    let post =
        |path: String, body: &'static str| fixture_post(router.clone(), path, body.to_owned());
    post(
        "/api/v1/fairshare/groups".into(),
        r#"{"name":"gold","weight":300}"#,
    )
    .await;
    let tenant = post(
        "/api/v1/tenants".into(),
        r#"{"name":"acme","group":"gold"}"#,
    )
    .await;
    let tenant = str_at(&tenant, &["id"]).to_owned();
    post(
        "/api/v1/tiers".into(),
        r#"{"name":"premium","level":3,"groups":["premium-users"],"requests_per_minute":100,"tokens_per_minute":100000,"max_tokens_per_request":4096,"models":["*"]}"#,
    )
    .await;
    post(
        "/api/v1/models".into(),
        r#"{"id":"llama","name":"Llama","url":"http://127.0.0.1:8000","owned_by":"ops","tiers":[],"pricing":{"input_per_million":0.5,"output_per_million":1.5,"currency":"USD"}}"#,
    )
    .await;
    let key = post(
        format!("/api/v1/tenants/{tenant}/keys"),
        r#"{"name":"prod-key"}"#,
    )
    .await;
    let key = str_at(&key, &["key", "id"]).to_owned();
    let project = post(
        "/api/v1/projects".into(),
        r#"{"name":"edge","description":"d"}"#,
    )
    .await;
    let project = str_at(&project, &["id"]).to_owned();
    let pkey = post(
        format!("/api/v1/projects/{project}/api-keys"),
        r#"{"name":"dp-1"}"#,
    )
    .await;
    let pkey = str_at(&pkey, &["id"]).to_owned();
    let mcp = post(
        "/api/v1/mcp-servers".into(),
        r#"{"name":"search","url":"https://mcp.example/search","transport":"sse","tiers":["premium"],"enabled":true}"#,
    )
    .await;
    let mcp = str_at(&mcp, &["id"]).to_owned();
    let root = post(
        "/api/v1/root-keys".into(),
        r#"{"name":"ci","permissions":["api.*.create_key"]}"#,
    )
    .await;
    let root = str_at(&root, &["id"]).to_owned();
    ManagementFixture {
        router,
        ids: vec![
            ("{tenant}", tenant),
            ("{group}", "gold".into()),
            ("{tier}", "premium".into()),
            ("{model}", "llama".into()),
            ("{key}", key),
            ("{project}", project),
            ("{pkey}", pkey),
            ("{mcp}", mcp),
            ("{root}", root),
        ],
    }
}

/// How many inputs share one HTTP fixture before it is built afresh
/// (`MAAS_FUZZ_FRESH=1`: every input gets a fresh one, for replaying an
/// input whose outcome depends on what inputs before it changed).
pub fn fixture_uses() -> usize {
    static USES: OnceLock<usize> = OnceLock::new();
    *USES.get_or_init(|| match std::env::var("MAAS_FUZZ_FRESH").as_deref() {
        Ok("1") => 1,
        _ => 64,
    })
}

/// The fixture of a target and how many inputs used it.
pub type Slot<T> = std::cell::RefCell<Option<(usize, Arc<T>)>>;

/// The fixture in `slot` for this input, built with `build` every
/// [`fixture_uses`] inputs: building the routers and their contents costs
/// more than an input, and rebuilding keeps what the inputs create (and
/// delete) from piling up.
pub async fn recycled<T: 'static, F: std::future::Future<Output = T>>(
    slot: &'static std::thread::LocalKey<Slot<T>>,
    build: impl FnOnce() -> F,
) -> Arc<T> {
    let current = slot.with(|s| {
        let mut s = s.borrow_mut();
        match s.as_mut() {
            Some((uses, f)) if *uses < fixture_uses() => {
                *uses += 1;
                Some(Arc::clone(f))
            }
            _ => None,
        }
    });
    if let Some(f) = current {
        return f;
    }
    let fresh = Arc::new(build().await);
    slot.with(|s| *s.borrow_mut() = Some((1, Arc::clone(&fresh))));
    fresh
}
