//! The user portal through `oneshot`: login with a maas token and with an
//! API key into a safe cookie, failed logins limited and audited, the
//! credential never kept nor shown, session expiry and logout, cross-site
//! posts refused, keys created (the secret once) and deleted, the usage
//! table against the ledger, escaping.

#![cfg(feature = "ui")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use maas_core::admission::AdmissionConfig;
use maas_core::fairshare::{FairShare, FairShareConfig};
use maas_core::identity::{Chain, Identity, StaticTokens};
use maas_core::scheduling::Scheduling;
use maas_core::token::{TokenConfig, TokenService};
use maas_core::usage::{RequestOutcome, UsageConfig, UsageLedger, UsageRecord};
use maas_core::{
    Actor, AdmissionLimits, AuditQuery, Authenticator, Gateway, GatewayServices, KeyHasher,
    KeyService, ManualClock, ModelService, NewModel, TierService, Timestamp, UserKeys,
};
use maas_http::maas_api::MaasApiState;
use maas_http::ui::portal::{COOKIE, PortalConfig, router};
use maas_store_memory::MemoryStore;
use ui_common::Page;

mod ui_common;

/// The user listener's host, and its own pages' origin.
const HOST: &str = "127.0.0.1:8080";
const SAME: &str = "http://127.0.0.1:8080";
/// 2025-11-25T00:00:00Z.
const T0: i64 = 1_764_028_800_000;
const HOUR: i64 = 3_600_000;
/// The portal's "now": 2025-11-25T13:30:00Z.
const NOW: i64 = T0 + 13 * HOUR + 30 * 60_000;
const ALICE_OIDC: &str = "alice-oidc-token";
const EVE_OIDC: &str = "eve-oidc-token";
const EVE: &str = "<b>eve</b>";
const NOBODY_OIDC: &str = "nobody-oidc-token";
const BASE: &str = "https://maas.example";

struct Portal {
    router: Router,
    clock: Arc<ManualClock>,
    state: MaasApiState,
    usage: UsageLedger,
    alice: Identity,
}

async fn portal() -> Portal {
    let storage = MemoryStore::new().storage();
    let clock = Arc::new(ManualClock::default());
    clock.set(Timestamp::from_millis(NOW));
    let tokens =
        TokenService::open_with_clock(storage.clone(), TokenConfig::default(), clock.clone())
            .await
            .unwrap();
    let alice = Identity::new("alice", ["premium-users", "system:authenticated"]);
    let statics = StaticTokens::new([
        (ALICE_OIDC.to_owned(), alice.clone()),
        (EVE_OIDC.to_owned(), Identity::new(EVE, ["premium-users"])),
        (
            NOBODY_OIDC.to_owned(),
            Identity::new("nobody", ["no-such-group"]),
        ),
    ])
    .unwrap();
    let identity: Arc<dyn Authenticator> = Arc::new(
        Chain::new()
            .with(Arc::new(statics))
            .with(Arc::new(tokens.clone())),
    );
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
    let usage = UsageLedger::new_with_clock(&storage, UsageConfig::default(), clock.clone());
    let fs = FairShare::with_clock(FairShareConfig::default(), clock.clone()).unwrap();
    let gateway = Gateway::new(
        GatewayServices {
            identity: identity.clone(),
            user_keys: Some(user_keys.clone()),
            tiers: tiers.clone(),
            models: models.clone(),
            admission: AdmissionLimits::with_config(
                storage.clone(),
                AdmissionConfig::default(),
                clock.clone(),
            ),
            scheduling: Scheduling::new(storage.clone(), fs, clock.clone()),
            usage: Some(usage.clone()),
            webhooks: None,
        },
        clock.clone(),
    );
    let state = MaasApiState {
        identity,
        tokens,
        tiers,
        models,
        user_keys,
        storage,
        gateway_url: format!("{BASE}/"),
        gateway,
    };
    Portal {
        router: router(state.clone(), PortalConfig::default(), clock.clone()),
        clock,
        state,
        usage,
        alice,
    }
}

impl Portal {
    async fn send(&self, req: Request<Body>) -> Page {
        ui_common::send(&self.router, req).await
    }

    async fn get(&self, path: &str, session: Option<&str>) -> Page {
        ui_common::get(&self.router, (HOST, COOKIE), path, session).await
    }

    /// A form posted from `origin`.
    async fn post(
        &self,
        path: &str,
        form: &str,
        session: Option<&str>,
        origin: Option<&str>,
    ) -> Page {
        ui_common::post(&self.router, (HOST, COOKIE), path, form, (session, origin)).await
    }

    /// Logs in with `credential`; the session id.
    async fn login(&self, credential: &str) -> String {
        let p = self
            .post(
                "/portal/login",
                &format!("token={}", form_encode(credential)),
                None,
                Some(SAME),
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
        assert_eq!(p.location(), "/portal/");
        let set = p.headers[header::SET_COOKIE].to_str().unwrap().to_owned();
        let id = set
            .strip_prefix(&format!("{COOKIE}="))
            .and_then(|r| r.split(';').next())
            .unwrap()
            .to_owned();
        assert_eq!(id.len(), 64);
        id
    }

    /// A maas token of `who`, valid for `ttl`.
    fn token(&self, who: &Identity, ttl: Duration) -> String {
        self.state.tokens.mint(who, None, ttl).unwrap().token
    }

    async fn audit(&self) -> Vec<maas_core::AuditEvent> {
        self.state
            .storage
            .audit
            .list_audit(&AuditQuery {
                before_seq: None,
                limit: 500,
            })
            .await
            .unwrap()
            .items
    }
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const HOURS_4: Duration = Duration::from_secs(4 * 3600);

#[tokio::test]
async fn login_with_a_maas_token_makes_a_safe_session() {
    let p = portal().await;
    let token = p.token(&p.alice, HOURS_4);
    // Not logged in: to the login form.
    let page = p.get("/portal/", None).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/portal/login");
    assert_eq!(
        p.get("/portal", None).await.location(),
        "/portal/",
        "the bare path"
    );
    let form = p.get("/portal/login", None).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(
        form.body
            .contains(r#"type="password" id="token" name="token""#)
    );
    assert_eq!(
        form.headers[header::CONTENT_SECURITY_POLICY],
        maas_http::ui::CSP
    );
    assert_eq!(form.headers[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(form.headers[header::CACHE_CONTROL], "no-store");

    let res = p
        .post("/portal/login", &format!("token={token}"), None, Some(SAME))
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "/portal/");
    let set = res.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("__Host-maas-portal="), "{set}");
    assert!(
        set.ends_with("; Path=/; HttpOnly; Secure; SameSite=Strict"),
        "{set}"
    );
    assert!(
        !set.contains(&token),
        "the credential is never in the cookie"
    );

    let id = p.login(&token).await;
    let page = p.get("/portal/", Some(&id)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let body = &page.body;
    assert!(!body.contains(&token), "the credential is never in a page");
    assert!(body.contains("<strong>alice</strong>"), "{body}");
    assert!(body.contains("with your maas token."));
    // The tier and what is left of it (nothing used yet).
    assert!(
        body.contains(r#"<h2 id="tier">Tier premium</h2>"#),
        "{body}"
    );
    assert!(body.contains("20 requests and 50000 tokens per minute"));
    assert!(
        body.contains(r#"<td>requests per minute</td><td class="n">20</td><td class="n">20</td>"#)
    );
    assert!(
        body.contains(
            r#"<td>tokens per minute</td><td class="n">50000</td><td class="n">50000</td>"#
        )
    );
    // The tier's model with its snippets, against the public URL, with the
    // key as an environment variable.
    assert!(body.contains("<strong>simulator</strong>"));
    assert!(body.contains("curl &#39;https://maas.example/v1/chat/completions&#39;"));
    assert!(body.contains("Authorization: Bearer $MAAS_TOKEN"));
    assert!(body.contains("base_url=&#34;https://maas.example/v1&#34;"));
    assert!(body.contains("api_key=os.environ[&#34;MAAS_TOKEN&#34;]"));
    assert!(body.contains("<pre><code>"));
    // Scripts and styles only from files of this origin.
    assert!(body.contains(r#"<script src="/portal/static/portal.js" defer></script>"#));
    assert!(!body.contains("<style") && !body.contains("style="));
    for asset in [
        "/portal/static/maas.css",
        "/portal/static/portal.css",
        "/portal/static/portal.js",
    ] {
        assert_eq!(p.get(asset, None).await.status, StatusCode::OK, "{asset}");
    }
    // Nothing of the login kept the credential: not the audit log.
    let events = p.audit().await;
    let login = events.iter().find(|e| e.action == "portal.login").unwrap();
    assert_eq!(login.actor.as_str(), "user:alice");
    assert_eq!(login.after.as_ref().unwrap()["credential"], "maas token");
    assert!(!serde_json::to_string(&events).unwrap().contains(&token));
    // A made-up session is no session.
    let page = p.get("/portal/", Some(&"0".repeat(64))).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    // The dashboard's cookie is not the portal's.
    let req = Request::get("/portal/")
        .header(header::HOST, HOST)
        .header(header::COOKIE, format!("{}={id}", maas_http::ui::COOKIE))
        .body(Body::empty())
        .unwrap();
    assert_eq!(p.send(req).await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn login_with_an_api_key_which_then_cannot_make_keys() {
    let p = portal().await;
    let key = p
        .state
        .user_keys
        .create_for(&p.alice, "laptop")
        .await
        .unwrap();
    let id = p.login(&key.api_key).await;
    let page = p.get("/portal/", Some(&id)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("with your API key."));
    assert!(page.body.contains("<strong>alice</strong>"));
    assert!(page.body.contains(r#"<h2 id="tier">Tier premium</h2>"#));
    assert!(!page.body.contains(&key.api_key), "never the secret");
    assert!(
        page.body
            .contains(&format!("<td>laptop</td><td><code>{}…</code>", key.start))
    );
    // An API key neither makes nor deletes keys (as the MaaS API's /keys).
    assert!(
        page.body
            .contains("log in with a maas token to create or delete keys")
    );
    assert!(!page.body.contains(r#"action="/portal/keys""#));
    let res = p
        .post("/portal/keys", "name=more", Some(&id), Some(SAME))
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    let res = p
        .post("/portal/keys/delete", "name=laptop", Some(&id), Some(SAME))
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(p.state.user_keys.list("alice").await.unwrap().total_keys, 1);
    // The key deleted elsewhere: its session ends.
    p.state.user_keys.delete("alice", "laptop").await.unwrap();
    let page = p.get("/portal/", Some(&id)).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/portal/login");
    assert_eq!(
        p.get("/portal/", Some(&id)).await.status,
        StatusCode::SEE_OTHER
    );
    // And it logs in no more.
    let res = p
        .post(
            "/portal/login",
            &format!("token={}", key.api_key),
            None,
            Some(SAME),
        )
        .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn failed_logins_are_refused_limited_and_audited() {
    let p = portal().await;
    let res = p
        .post("/portal/login", "token=wrong", None, Some(SAME))
        .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert!(
        res.body
            .contains("That is not a valid maas token or API key.")
    );
    assert!(res.headers.get(header::SET_COOKIE).is_none());
    // A valid credential whose groups map to no tier: nothing to show.
    let res = p
        .post(
            "/portal/login",
            &format!("token={NOBODY_OIDC}"),
            None,
            Some(SAME),
        )
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert!(res.body.contains("no tier"));
    assert!(res.headers.get(header::SET_COOKIE).is_none());
    // A key-shaped credential that is no key.
    let res = p
        .post("/portal/login", "token=maas_nosuchkey", None, Some(SAME))
        .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    for _ in 0..7 {
        p.post("/portal/login", "token=wrong", None, Some(SAME))
            .await;
    }
    // The 11th try in the minute is refused, even with a right credential.
    let token = p.token(&p.alice, HOURS_4);
    let res = p
        .post("/portal/login", &format!("token={token}"), None, Some(SAME))
        .await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers[header::RETRY_AFTER], "60");
    p.clock.advance(Duration::from_secs(60));
    p.login(&token).await;
    let events = p.audit().await;
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e.action == "portal.login_failed")
        .collect();
    assert_eq!(failed.len(), 10);
    assert!(failed.iter().all(|e| e.actor.as_str() == "portal:unknown"));
    assert_eq!(
        events.iter().filter(|e| e.action == "portal.login").count(),
        1
    );
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains("wrong") && !all.contains("maas_nosuchkey"));
}

#[tokio::test]
async fn sessions_expire_and_end_at_logout() {
    let p = portal().await;
    let token = p.token(&p.alice, HOURS_4);
    let id = p.login(&token).await;
    p.clock.advance(Duration::from_secs(29 * 60));
    assert_eq!(p.get("/portal/", Some(&id)).await.status, StatusCode::OK);
    p.clock.advance(Duration::from_secs(30 * 60));
    let page = p.get("/portal/", Some(&id)).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "idle for 30 minutes");
    assert_eq!(page.location(), "/portal/login");

    // Logout ends it and clears the cookie.
    let id = p.login(&token).await;
    let res = p.post("/portal/logout", "", Some(&id), Some(SAME)).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(res.location(), "/portal/login");
    let set = res.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("__Host-maas-portal=;") && set.contains("Max-Age=0"));
    assert_eq!(
        p.get("/portal/", Some(&id)).await.status,
        StatusCode::SEE_OTHER
    );

    // A session opened with a maas token ends when the token does.
    let short = p.token(&p.alice, Duration::from_secs(10 * 60));
    let id = p.login(&short).await;
    p.clock.advance(Duration::from_secs(9 * 60));
    assert_eq!(p.get("/portal/", Some(&id)).await.status, StatusCode::OK);
    p.clock.advance(Duration::from_secs(61));
    assert_eq!(
        p.get("/portal/", Some(&id)).await.status,
        StatusCode::SEE_OTHER,
        "the token expired"
    );
}

#[tokio::test]
async fn cross_site_and_cross_port_posts_are_refused() {
    let p = portal().await;
    let token = p.token(&p.alice, HOURS_4);
    let id = p.login(&token).await;
    // The admin listener's origin (same host, another port), another site,
    // and a post that says nothing of its origin.
    for origin in [
        Some("http://127.0.0.1:9090"),
        Some("https://evil.example"),
        Some("null"),
        None,
    ] {
        for (path, form) in [
            ("/portal/logout", String::new()),
            ("/portal/login", format!("token={token}")),
            ("/portal/keys", "name=evil".to_owned()),
            ("/portal/keys/delete", "name=evil".to_owned()),
        ] {
            let res = p.post(path, &form, Some(&id), origin).await;
            assert_eq!(res.status, StatusCode::FORBIDDEN, "{path} from {origin:?}");
            assert_eq!(
                res.headers[header::CONTENT_SECURITY_POLICY],
                maas_http::ui::CSP
            );
        }
    }
    // Fetch Metadata decides when the browser sends it.
    let req = Request::post("/portal/keys")
        .header(header::HOST, HOST)
        .header(header::ORIGIN, SAME)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "same-site")
        .header(header::COOKIE, format!("{COOKIE}={id}"))
        .body(Body::from("name=evil"))
        .unwrap();
    assert_eq!(p.send(req).await.status, StatusCode::FORBIDDEN);
    // Nothing was made, and the session survived every refused logout.
    assert_eq!(p.state.user_keys.list("alice").await.unwrap().total_keys, 0);
    assert_eq!(p.get("/portal/", Some(&id)).await.status, StatusCode::OK);
    // A POST without a session is refused too.
    let res = p.post("/portal/keys", "name=x", None, Some(SAME)).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
}

/// The secret of the key a page shows as just created.
fn created_secret(body: &str) -> String {
    let rest = body
        .split(r#"<div class="created" role="status">"#)
        .nth(1)
        .unwrap();
    let rest = rest.split("<pre><code>").nth(1).unwrap();
    rest.split("</code>").next().unwrap().to_owned()
}

#[tokio::test]
async fn a_key_created_in_the_portal_shows_its_secret_once_and_deleted_is_gone() {
    let p = portal().await;
    let token = p.token(&p.alice, HOURS_4);
    let id = p.login(&token).await;
    let res = p
        .post("/portal/keys", "name=ci+runner", Some(&id), Some(SAME))
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.headers[header::CACHE_CONTROL], "no-store");
    let secret = created_secret(&res.body);
    assert!(secret.starts_with("maas_"), "{secret}");
    assert!(res.body.contains("<strong>ci runner</strong>"));
    // It is a key of alice's, the gateway takes it.
    let caller = p.state.gateway.authenticate(&secret).await.unwrap();
    assert_eq!(caller.identity.user, "alice");
    assert_eq!(caller.tier.name, "premium");
    let listed = p.state.user_keys.list("alice").await.unwrap();
    assert_eq!(listed.total_keys, 1);
    let start = &listed.keys[0].start;
    // Shown once: the page again has its prefix, not its secret.
    let page = p.get("/portal/", Some(&id)).await;
    assert!(!page.body.contains(&secret));
    assert!(
        page.body
            .contains(&format!("<td>ci runner</td><td><code>{start}…</code>"))
    );
    assert!(!page.body.contains(r#"class="created""#));
    // The name is taken now.
    let res = p
        .post("/portal/keys", "name=ci+runner", Some(&id), Some(SAME))
        .await;
    assert_eq!(res.status, StatusCode::CONFLICT);
    assert!(res.body.contains(r#"<p class="error" role="alert">"#));
    assert!(!res.body.contains(&secret));
    // Deleted: gone from the page and from the gateway.
    let res = p
        .post(
            "/portal/keys/delete",
            "name=ci+runner",
            Some(&id),
            Some(SAME),
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "/portal/#keys");
    let page = p.get("/portal/", Some(&id)).await;
    assert!(!page.body.contains("ci runner"));
    assert!(page.body.contains("You have no API key."));
    assert_eq!(p.state.user_keys.list("alice").await.unwrap().total_keys, 0);
    assert!(p.state.gateway.authenticate(&secret).await.is_err());
    // Deleting it again: not found.
    let res = p
        .post(
            "/portal/keys/delete",
            "name=ci+runner",
            Some(&id),
            Some(SAME),
        )
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    // Keys are made for their owner only: bob's are not alice's to delete.
    let bob = Identity::new("bob", ["premium-users"]);
    p.state.user_keys.create_for(&bob, "bobs").await.unwrap();
    let res = p
        .post("/portal/keys/delete", "name=bobs", Some(&id), Some(SAME))
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert_eq!(p.state.user_keys.list("bob").await.unwrap().total_keys, 1);
}

#[tokio::test]
async fn the_usage_table_is_the_ledgers_last_24_hours_of_the_caller() {
    let p = portal().await;
    let record = |at: i64, tenant: &str, input: u64, output: u64, outcome| {
        let mut r = UsageRecord::new(Timestamp::from_millis(at), tenant, "simulator");
        r.input_tokens = input;
        r.output_tokens = output;
        r.outcome = outcome;
        p.usage.record(&r).unwrap();
    };
    use RequestOutcome::{Error, Success};
    // alice: two requests at 10:xx, one failed at 13:xx, one 24 h ago
    // (13:xx yesterday: outside the window, which starts at 14:00).
    record(T0 + 10 * HOUR + 5 * 60_000, "alice", 100, 20, Success);
    record(T0 + 10 * HOUR + 50 * 60_000, "alice", 50, 10, Success);
    record(T0 + 13 * HOUR + 10 * 60_000, "alice", 7, 0, Error);
    record(T0 - 11 * HOUR + 10 * 60_000, "alice", 1_000, 1_000, Success);
    // bob's, in the same hour: not alice's.
    record(T0 + 10 * HOUR + 5 * 60_000, "bob", 9_999, 9_999, Success);
    p.usage.flush().await.unwrap();

    let token = p.token(&p.alice, HOURS_4);
    let id = p.login(&token).await;
    let page = p.get("/portal/", Some(&id)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let table = page
        .body
        .split(r#"<table class="usage">"#)
        .nth(1)
        .unwrap()
        .split("</table>")
        .next()
        .unwrap();
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("<tr><td>"))
        .collect();
    assert_eq!(rows.len(), 24, "{table}");
    assert!(
        rows[0].starts_with("<tr><td>2025-11-24 14:00</td>"),
        "{}",
        rows[0]
    );
    assert!(rows[23].starts_with("<tr><td>2025-11-25 13:00</td>"));
    let row = |hour: &str| {
        rows.iter()
            .find(|r| r.starts_with(&format!("<tr><td>{hour}</td>")))
            .map(|r| {
                r.split("<td class=\"n\">")
                    .skip(1)
                    .map(|c| c.split('<').next().unwrap().parse::<u64>().unwrap())
                    .collect::<Vec<_>>()
            })
            .unwrap()
    };
    // requests, input, output, tokens, errors
    assert_eq!(row("2025-11-25 10:00"), [2, 150, 30, 180, 0]);
    assert_eq!(row("2025-11-25 13:00"), [1, 7, 0, 7, 1]);
    assert_eq!(row("2025-11-25 09:00"), [0, 0, 0, 0, 0]);
    let total: u64 = rows
        .iter()
        .map(|r| r.split("<td class=\"n\">").nth(4).unwrap())
        .map(|c| c.split('<').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 187, "bob's and yesterday's are not in it");
    // The chart draws the same numbers: 24 bars, the highest the 180.
    let svg = page
        .body
        .split("<svg class=\"chart\"")
        .nth(1)
        .unwrap()
        .split("</svg>")
        .next()
        .unwrap();
    assert_eq!(svg.matches("<rect ").count(), 24);
    assert!(svg.contains("(187 in all)"));
    assert!(svg.contains("<title>2025-11-25 10:00 UTC: 180 tokens</title>"));
    assert!(svg.contains("<title>2025-11-25 13:00 UTC: 7 tokens</title>"));
    assert!(svg.contains(r#"y="10" width="20" height="160"><title>2025-11-25 10:00"#));
    // Today's figures count today's usage only.
    assert!(page.body.contains("Today (UTC): 3 requests, 187 tokens"));
}

#[tokio::test]
async fn names_are_escaped() {
    let p = portal().await;
    let mut m = NewModel::new("<i>m", "http://127.0.0.1:9");
    m.name = Some("<script>alert(1)</script>".into());
    p.state.models.create(&Actor::system(), m).await.unwrap();
    // eve's name has markup; she logs in with her identity token.
    let id = p.login(EVE_OIDC).await;
    let res = p
        .post(
            "/portal/keys",
            &format!("name={}", form_encode("<img src=x onerror=alert(1)>")),
            Some(&id),
            Some(SAME),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let page = p.get("/portal/", Some(&id)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let body = &page.body;
    assert!(body.contains("with your identity token."));
    assert!(
        body.contains("&#60;b&#62;eve&#60;/b&#62;") || body.contains("&lt;b&gt;eve"),
        "{body}"
    );
    assert!(!body.contains(EVE));
    assert!(!body.contains("<i>m"));
    assert!(!body.contains("<script>alert"));
    assert!(!body.contains("<img src=x"));
    // The model id is quoted for the shell and for Python as well.
    assert!(
        body.contains("&#34;model&#34;: &#34;&#60;i&#62;m&#34;"),
        "{body}"
    );
}

#[tokio::test]
async fn on_a_data_plane_keys_are_listed_not_made() {
    let p = portal().await;
    let on_data_plane = router(
        p.state.clone(),
        PortalConfig {
            control_plane: Some("https://cp.example".into()),
            ..PortalConfig::default()
        },
        p.clock.clone(),
    );
    let p = Portal {
        router: on_data_plane,
        ..p
    };
    p.state
        .user_keys
        .create_for(&p.alice, "laptop")
        .await
        .unwrap();
    let id = p.login(&p.token(&p.alice, HOURS_4)).await;
    let page = p.get("/portal/", Some(&id)).await;
    assert!(page.body.contains("<td>laptop</td>"));
    assert!(
        page.body
            .contains("API keys are made at the control plane (https://cp.example)")
    );
    assert!(!page.body.contains(r#"action="/portal/keys""#));
    for (path, name) in [("/portal/keys", "new"), ("/portal/keys/delete", "laptop")] {
        let res = p
            .post(path, &format!("name={name}"), Some(&id), Some(SAME))
            .await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(p.state.user_keys.list("alice").await.unwrap().total_keys, 1);
}
