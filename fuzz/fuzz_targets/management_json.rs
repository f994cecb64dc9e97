//! The JSON bodies (and query strings) of the management API, through the
//! router with `oneshot` and the admin token, on a memory store holding a
//! tenant, a group, a tier, a model, a tenant key, a project with a key, an
//! MCP server and a root key (rebuilt every 64 inputs; every input with
//! `MAAS_FUZZ_FRESH=1`, to replay an input that depends on earlier ones).
//!
//! Input: the first byte picks the route (low 7 bits, modulo the list); with
//! the top bit set, the body's first line replaces the id in the path. The
//! rest is the body (the query string of GET routes).
//!
//! Checks: no panic; no 5xx but 503.

#![no_main]

use axum::http::Method;
use libfuzzer_sys::fuzz_target;
use maas_fuzz::{
    ADMIN, Input, ManagementFixture, Slot, check_status, management_fixture, recycled, rt, send,
};

const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/tenants"),
    ("PATCH", "/api/v1/tenants/{tenant}/weight"),
    ("PUT", "/api/v1/tenants/{tenant}/quota"),
    ("PATCH", "/api/v1/tenants/{tenant}/group"),
    ("POST", "/api/v1/fairshare/groups"),
    ("PATCH", "/api/v1/fairshare/groups/{group}/weight"),
    ("PUT", "/api/v1/capacity"),
    ("POST", "/api/v1/tiers"),
    ("PUT", "/api/v1/tiers/{tier}"),
    ("POST", "/api/v1/models"),
    ("PUT", "/api/v1/models/{model}"),
    ("PUT", "/api/v1/models/{model}/cache"),
    ("POST", "/api/v1/tenants/{tenant}/keys"),
    ("PUT", "/api/v1/keys/{key}/disabled"),
    ("POST", "/api/v1/projects"),
    ("PUT", "/api/v1/projects/{project}"),
    ("POST", "/api/v1/projects/{project}/api-keys"),
    ("POST", "/api/v1/root-keys"),
    ("POST", "/api/v1/mcp-servers"),
    ("PUT", "/api/v1/mcp-servers/{mcp}"),
    ("GET", "/api/v1/tenants"),
    ("GET", "/api/v1/keys"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/usage"),
    ("GET", "/api/v1/usage/keys"),
    ("GET", "/api/v1/usage/models"),
    ("GET", "/api/v1/usage/series"),
    ("GET", "/api/v1/usage/series/tenants"),
    ("GET", "/api/v1/usage/cache"),
    ("GET", "/api/v1/costs"),
    ("GET", "/api/v1/tenants/{tenant}"),
    ("GET", "/api/v1/projects/{project}/api-keys"),
    ("DELETE", "/api/v1/tiers/{tier}"),
    ("DELETE", "/api/v1/models/{model}"),
    ("DELETE", "/api/v1/keys/{key}"),
    ("DELETE", "/api/v1/projects/{project}"),
    ("DELETE", "/api/v1/projects/{project}/api-keys/{pkey}"),
    ("DELETE", "/api/v1/mcp-servers/{mcp}"),
    ("DELETE", "/api/v1/root-keys/{root}"),
];

thread_local! {
    static FIXTURE: Slot<ManagementFixture> = const { std::cell::RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let sel = input.byte();
    let (method, template) = ROUTES[usize::from(sel & 0x7f) % ROUTES.len()];
    let mut body = input.rest();
    let mut path_id = None;
    if sel & 0x80 != 0 {
        let line = body.iter().position(|b| *b == b'\n').unwrap_or(body.len());
        path_id = Some(String::from_utf8_lossy(&body[..line]).into_owned());
        body = body.get(line + 1..).unwrap_or_default();
    }
    rt().block_on(async {
        let f = recycled(&FIXTURE, management_fixture).await;
        let mut path = template.to_owned();
        for (name, value) in &f.ids {
            path = path.replace(name, path_id.as_deref().unwrap_or(value));
        }
        let method: Method = method.parse().expect("a method");
        let (uri, body) = if method == Method::GET {
            (
                format!("{path}?{}", String::from_utf8_lossy(body)),
                Vec::new(),
            )
        } else {
            (path, body.to_vec())
        };
        if let Some(r) = send(&f.router, method, &uri, Some(ADMIN), body).await {
            check_status(&uri, &r);
        }
    });
});
