//! The OpenAPI document against the routers: every documented operation is
//! routed, every routed one documented, and the document is structurally
//! valid OpenAPI 3.1 (references resolve, path parameters are declared,
//! operation ids are unique).
//!
//! How coverage holds: each router is built from utoipa-axum's
//! `OpenApiRouter`, whose `routes!(handler)` registers the handler at the
//! method and path of its `#[utoipa::path]` attribute and adds the same
//! operation to the document. So this test checks, from the outside:
//! 1. every documented (method, path) answers through the router with
//!    something other than the fallback's 404 or a 405;
//! 2. on every documented path, every undocumented method is a 405 (a
//!    method routed but not documented would answer otherwise);
//! 3. no source file of the crate registers a route around `routes!`
//!    (plain `.route(`, `.route_service(`, `.nest_service(`), which is
//!    the only way to serve a path the document cannot see.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use maas_core::fairshare::{FairShare, FairShareConfig};
use maas_core::identity::{Chain, Identity, StaticTokens};
use maas_core::mcp::McpServers;
use maas_core::projects::Projects;
use maas_core::scheduling::Scheduling;
use maas_core::token::{TokenConfig, TokenService};
use maas_core::usage::{UsageConfig, UsageLedger};
use maas_core::{
    Actor, Clock, KeyHasher, KeyService, ManualClock, ModelService, RateLimitConfig, RateLimiter,
    RootKeys, TierService, Timestamp, UserKeys,
};
use maas_core::{Authenticator, Gateway, GatewayServices};
use maas_http::HttpConfig;
use maas_http::maas_api::{self, MaasApiState};
use maas_http::management::{self, ManagementServices, ManagementState};
use maas_http::unkey::{self, UnkeyState};
use maas_store_memory::MemoryStore;
use serde_json::Value;
use tower::ServiceExt;

const TOKEN: &str = "openapi-test-token-0123456789";
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

struct Apps {
    maas: Router,
    unkey: Router,
    management: Router,
}

async fn apps() -> Apps {
    let storage = MemoryStore::new().storage();
    let clock = Arc::new(ManualClock::default());
    clock.set(Timestamp::from_millis(1_764_028_800_000));
    let c: Arc<dyn Clock> = clock.clone();
    let keys = KeyService::new_with_clock(storage.clone(), KeyHasher::random(), c.clone());
    let usage = UsageLedger::new_with_clock(&storage, UsageConfig::default(), c.clone());
    keys.attach_usage(usage.clone()).unwrap();
    let root_keys = RootKeys::new_with_clock(keys.clone(), c.clone());
    let user_keys = UserKeys::new_with_clock(keys.clone(), c.clone());
    let tiers = TierService::new_with_clock(storage.clone(), c.clone());
    tiers.ensure_defaults(&Actor::system()).await.unwrap();
    let models = ModelService::new_with_clock(storage.clone(), c.clone());
    let tokens = TokenService::open_with_clock(storage.clone(), TokenConfig::default(), c.clone())
        .await
        .unwrap();
    let identity = Chain::new()
        .with(Arc::new(
            StaticTokens::new([(TOKEN.to_owned(), Identity::new("tester", ["premium-users"]))])
                .unwrap(),
        ))
        .with(Arc::new(tokens.clone()));
    let identity: Arc<dyn Authenticator> = Arc::new(identity);
    let mut services = GatewayServices::defaults(&storage, identity.clone()).unwrap();
    services.tiers = tiers.clone();
    services.models = models.clone();
    services.user_keys = Some(user_keys.clone());
    let maas = maas_api::router(
        MaasApiState {
            identity,
            tokens,
            tiers: tiers.clone(),
            models: models.clone(),
            user_keys: user_keys.clone(),
            storage: storage.clone(),
            gateway_url: "http://gateway.test".into(),
            gateway: Gateway::new(services, c.clone()),
        },
        &HttpConfig::default(),
    );
    let limiter = RateLimiter::with_config(storage.clone(), RateLimitConfig::default(), c.clone());
    let unkey = unkey::router(
        UnkeyState::new(root_keys.clone(), limiter, usage.clone()).with_admin_token(TOKEN),
    );
    let fs = FairShare::with_clock(FairShareConfig::default(), clock.clone()).unwrap();
    let projects = Projects::new_with_clock(keys, c.clone());
    let services = ManagementServices {
        scheduling: Scheduling::new(storage.clone(), fs, c.clone()),
        tiers,
        models,
        user_keys,
        usage,
        root_keys,
        projects: projects.clone(),
        mcp: McpServers::new_with_clock(storage.clone(), c),
        webhooks: maas_core::webhook::Webhooks::new(storage.clone(), KeyHasher::random()),
        admission: maas_core::AdmissionLimits::new(storage.clone()),
        storage,
    };
    // The control plane's data-plane routes share the admin listener.
    let management = management::router(
        ManagementState::new(TOKEN, services).unwrap(),
        &HttpConfig::default(),
    )
    .merge(maas_http::controlplane::router(
        maas_http::controlplane::ControlPlaneState::new(projects),
        &HttpConfig::default(),
    ));
    Apps {
        maas,
        unkey,
        management,
    }
}

fn document() -> Value {
    serde_json::to_value(maas_http::openapi::document()).unwrap()
}

/// Every (method, path template, tag) of the document.
fn operations(doc: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let tags = op["tags"].as_array().expect("every operation has a tag");
            assert_eq!(tags.len(), 1, "{method} {path}: one tag, its API's");
            out.push((
                method.clone(),
                path.clone(),
                tags[0].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

fn router_of<'a>(apps: &'a Apps, tag: &str) -> &'a Router {
    match tag {
        "maas-api" => &apps.maas,
        "unkey" => &apps.unkey,
        "management" => &apps.management,
        other => panic!("unknown tag {other}"),
    }
}

/// `template` with every `{param}` replaced by a value.
fn concrete(template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').unwrap() + open;
        out.push_str("probe");
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The status and body of `method path` with the token and an empty JSON
/// object as body.
async fn probe(router: &Router, method: &str, path: &str) -> (StatusCode, String) {
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Whether an answer is "no such route": a 405, a fallback's 404 (which
/// names the route), or axum's empty 404.
fn not_routed(status: StatusCode, body: &str) -> bool {
    status == StatusCode::METHOD_NOT_ALLOWED
        || (status == StatusCode::NOT_FOUND && (body.is_empty() || body.contains("route '/")))
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let apps = apps().await;
    let doc = document();
    let ops = operations(&doc);
    assert!(ops.len() >= 80, "only {} operations", ops.len());
    let mut per_tag = BTreeMap::<String, usize>::new();
    for (method, template, tag) in &ops {
        *per_tag.entry(tag.clone()).or_default() += 1;
        let path = concrete(template);
        let (status, body) = probe(router_of(&apps, tag), method, &path).await;
        assert!(
            !not_routed(status, &body),
            "{method} {template} is documented but not routed: {status} {body}"
        );
        // The token is an identity, a root key and the admin token, not a
        // maas token, a user API key (`/v1/models`) or a project key.
        let security = doc["paths"][template][method]["security"].to_string();
        if !security.contains("maasToken") && !security.contains("projectKey") {
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
        }
        assert!(
            !status.is_server_error(),
            "{method} {path}: {status} {body}"
        );
    }
    assert_eq!(
        per_tag.keys().collect::<Vec<_>>(),
        ["maas-api", "management", "unkey"],
        "every API has operations"
    );
}

#[tokio::test]
async fn no_method_is_routed_undocumented_on_a_documented_path() {
    let apps = apps().await;
    let doc = document();
    let mut documented = BTreeMap::<(String, String), BTreeSet<String>>::new();
    for (method, path, tag) in operations(&doc) {
        documented.entry((path, tag)).or_default().insert(method);
    }
    for ((template, tag), methods) in &documented {
        let path = concrete(template);
        for method in METHODS.iter().filter(|m| !methods.contains(**m)) {
            let (status, body) = probe(router_of(&apps, tag), method, &path).await;
            assert_eq!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {template} answers but is not documented: {body}"
            );
        }
    }
}

#[test]
fn no_route_is_registered_around_the_document() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src.clone()];
    let mut offenders = Vec::new();
    let mut seen = 0;
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if p.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        // Routes that are not an API of maas, in no maas document: the
        // simulator and the gateway serve OpenAI's routes, metrics serves
        // Prometheus' `/metrics`, the webhook dispatcher only posts, and the
        // dashboard and the portal serve HTML pages.
        let rel = p.strip_prefix(&src).unwrap_or(&p);
        if rel.starts_with("webhooks")
            || rel.starts_with("ui")
            || rel.starts_with("gateway")
            || rel.starts_with("layer")
            || ["simulator.rs", "metrics.rs"]
                .iter()
                .any(|n| rel == std::path::Path::new(n))
        {
            continue;
        }
        seen += 1;
        let text = std::fs::read_to_string(&p).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for call in [
                ".route(",
                ".route_service(",
                ".nest_service(",
                "Router::new()",
            ] {
                // `OpenApiRouter::new()` is the way; `Router::new()` alone is not.
                let plain = code.match_indices(call).any(|(i, _)| {
                    !code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                });
                if plain {
                    offenders.push(format!("{}:{}: {}", p.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(seen > 5, "read {seen} files");
    assert!(
        offenders.is_empty(),
        "register routes with OpenApiRouter::routes(routes!(..)) so they are documented:\n{}",
        offenders.join("\n")
    );
}

#[tokio::test]
async fn the_management_api_serves_the_whole_document() {
    let apps = apps().await;
    let get = |auth: Option<&'static str>| {
        let mut req = Request::builder().uri("/api/v1/openapi.json");
        if let Some(t) = auth {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        apps.management
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
    };
    let res = get(None).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = get(Some(TOKEN)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "application/json",
        "content type"
    );
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let served: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(served, document());
    let tags: Vec<&str> = served["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(tags, ["maas-api", "unkey", "management"]);
}

// ----- structural validity ----------------------------------------------------

#[test]
fn the_document_is_openapi_3_1() {
    let doc = document();
    let version = doc["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1."), "{version}");
    assert!(doc["info"]["title"].is_string());
    assert!(doc["info"]["version"].is_string());
    assert!(doc["paths"].as_object().is_some_and(|p| !p.is_empty()));
}

/// Every `$ref` in `v`, with where it was found.
fn refs<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                if k == "$ref"
                    && let Some(r) = child.as_str()
                {
                    out.push((at.clone(), r));
                }
                refs(child, format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                refs(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_ref_resolves() {
    let doc = document();
    let mut found = Vec::new();
    refs(&doc, String::new(), &mut found);
    assert!(found.len() > 50, "{} refs", found.len());
    for (at, r) in found {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: {r} is not local"));
        assert!(doc.pointer(pointer).is_some(), "{at}: {r} does not resolve");
    }
}

#[test]
fn path_parameters_match_the_templates() {
    let doc = document();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let in_template: BTreeSet<String> = path
            .split('{')
            .skip(1)
            .map(|s| s.split('}').next().unwrap().to_owned())
            .collect();
        for (method, op) in item.as_object().unwrap() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let mut declared = BTreeSet::new();
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "path" {
                    assert_eq!(p["required"], true, "{method} {path}: {p}");
                    declared.insert(p["name"].as_str().unwrap().to_owned());
                }
            }
            assert_eq!(declared, in_template, "{method} {path}");
        }
    }
}

#[test]
fn operations_have_unique_ids_success_responses_and_known_tags() {
    let doc = document();
    let tags: BTreeSet<&str> = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    let schemes: BTreeSet<&String> = doc["components"]["securitySchemes"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            let responses = op["responses"].as_object().unwrap();
            // A WebSocket's success is its upgrade.
            assert!(
                responses.keys().any(|s| s.starts_with('2'))
                    || (path.starts_with("/ws/") && responses.contains_key("101")),
                "{method} {path}: no success response"
            );
            assert!(responses.contains_key("default"), "{method} {path}");
            for t in op["tags"].as_array().unwrap() {
                assert!(
                    tags.contains(t.as_str().unwrap()),
                    "{method} {path}: tag {t}"
                );
            }
            for req in op["security"].as_array().into_iter().flatten() {
                for name in req.as_object().unwrap().keys() {
                    assert!(schemes.contains(name), "{method} {path}: scheme {name}");
                }
            }
            if op.get("requestBody").is_some() {
                assert!(
                    op["requestBody"]["content"]["application/json"]["schema"].is_object(),
                    "{method} {path}: a JSON body schema"
                );
            }
        }
    }
}

#[test]
fn every_management_operation_needs_the_admin_token() {
    let doc = document();
    for (method, path, tag) in operations(&doc) {
        let op = &doc["paths"][&path][&method];
        // The data-plane routes of the control plane (seed 001) take a
        // project key, not the admin token.
        if tag == "management" && path == "/artifacts/{id}/download" {
            assert_eq!(op["security"], serde_json::json!([{"projectKey": []}]));
            continue;
        }
        if tag == "management" && path == "/ws/data-plane" {
            assert_eq!(
                op["security"],
                serde_json::json!([{}]),
                "registers with a key"
            );
            continue;
        }
        if tag == "management" {
            assert!(path.starts_with("/api/v1/"), "{path}");
            assert_eq!(
                op["security"],
                serde_json::json!([{"adminToken": []}]),
                "{method} {path}"
            );
            assert_eq!(
                op["responses"]["401"]["$ref"], "#/components/responses/Problem401",
                "{method} {path}"
            );
        }
    }
}
