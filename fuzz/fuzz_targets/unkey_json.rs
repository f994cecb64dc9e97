//! The JSON bodies (and query strings) of the Unkey-compatible API, through
//! the router with `oneshot`, on a memory store holding an api, a key and a
//! limited root key (rebuilt every 64 inputs; every input with
//! `MAAS_FUZZ_FRESH=1`, to replay an input that depends on earlier ones).
//!
//! Input: the first byte picks the route (low 4 bits, modulo the list) and
//! the bearer (top 2 bits: the admin token, the limited root key, or a plain
//! key); the rest is the body (the query string of GET routes), where `$API`,
//! `$KEYID` and `$KEY` stand for the fixture's api id, key id and key.
//!
//! Checks: no panic; no 5xx but 503.

#![no_main]

use axum::http::Method;
use libfuzzer_sys::fuzz_target;
use maas_fuzz::{
    ADMIN, Input, Slot, UnkeyFixture, check_status, recycled, replace, rt, send, unkey_fixture,
};

const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/keys.createKey"),
    ("POST", "/v1/keys.verifyKey"),
    ("POST", "/v1/keys.updateKey"),
    ("POST", "/v1/keys.updateRemaining"),
    ("POST", "/v1/keys.deleteKey"),
    ("POST", "/v1/apis.createApi"),
    ("POST", "/v1/apis.deleteApi"),
    ("POST", "/v1/ratelimits.limit"),
    ("POST", "/v1/keys"),
    ("POST", "/v1/keys/verify"),
    ("GET", "/v1/keys.getKey"),
    ("GET", "/v1/apis.getApi"),
    ("GET", "/v1/apis.listKeys"),
    ("GET", "/v1/keys.getVerifications"),
    ("GET", "/v1/apis/$API/keys"),
    ("POST", "/v1/keys.verifyKey"),
];

thread_local! {
    static FIXTURE: Slot<UnkeyFixture> = const { std::cell::RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let sel = input.byte();
    let (method, path) = ROUTES[usize::from(sel & 0x0f) % ROUTES.len()];
    let body = input.rest();
    rt().block_on(async {
        let f = recycled(&FIXTURE, unkey_fixture).await;
        let subst = |b: &[u8]| {
            let b = replace(b, b"$API", f.api_id.as_bytes());
            let b = replace(&b, b"$KEYID", f.key_id.as_bytes());
            replace(&b, b"$KEY", f.key.as_bytes())
        };
        let bearer = match sel >> 6 {
            0 | 1 => ADMIN,
            2 => f.root_key.as_str(),
            _ => f.key.as_str(),
        };
        let path = String::from_utf8(subst(path.as_bytes())).expect("utf-8");
        let body = subst(body);
        let (method, uri, body) = if method == "GET" {
            let q = String::from_utf8_lossy(&body).into_owned();
            (Method::GET, format!("{path}?{q}"), Vec::new())
        } else {
            (Method::POST, path, body)
        };
        if let Some(r) = send(&f.router, method, &uri, Some(bearer), body).await {
            check_status(&uri, &r);
        }
    });
});
