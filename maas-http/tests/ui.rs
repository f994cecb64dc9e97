//! The operator dashboard through `oneshot`: login and its cookie, session
//! expiry and logout, cross-site posts refused, escaping, the audit of
//! logins, the security headers.

#![cfg(feature = "ui")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

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
    Actor, KeyHasher, KeyService, ManualClock, ModelService, NewModel, TierService, Timestamp,
    UserKeys,
};
use maas_http::management::{ManagementServices, ManagementState};
use maas_http::ui::{COOKIE, SessionConfig, router};
use maas_store_memory::MemoryStore;
use tower::ServiceExt;

const ADMIN: &str = "admin-token-0123456789";
const HOST: &str = "127.0.0.1:9090";
/// 2025-11-25T00:00:00Z.
const T0: i64 = 1_764_028_800_000;

struct Ui {
    router: Router,
    clock: Arc<ManualClock>,
    models: ModelService,
}

fn ui() -> Ui {
    let clock = Arc::new(ManualClock::default());
    clock.set(Timestamp::from_millis(T0));
    let storage = MemoryStore::new().storage();
    let fs = FairShare::with_clock(FairShareConfig::default(), clock.clone()).unwrap();
    let keys = KeyService::new_with_clock(storage.clone(), KeyHasher::random(), clock.clone());
    let models = ModelService::new_with_clock(storage.clone(), clock.clone());
    let services = ManagementServices {
        scheduling: Scheduling::new(storage.clone(), fs, clock.clone()),
        tiers: TierService::new_with_clock(storage.clone(), clock.clone()),
        models: models.clone(),
        user_keys: UserKeys::new_with_clock(keys.clone(), clock.clone()),
        usage: UsageLedger::new_with_clock(&storage, UsageConfig::default(), clock.clone()),
        mcp: McpServers::new_with_clock(storage.clone(), clock.clone()),
        root_keys: RootKeys::new_with_clock(keys.clone(), clock.clone()),
        projects: Projects::new_with_clock(keys, clock.clone()),
        webhooks: maas_core::webhook::Webhooks::new(storage.clone(), KeyHasher::random()),
        admission: maas_core::AdmissionLimits::new(storage.clone()),
        storage,
    };
    let state = ManagementState::new(ADMIN, services).unwrap();
    Ui {
        router: router(state, SessionConfig::default(), clock.clone()),
        clock,
        models,
    }
}

struct Page {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Ui {
    async fn send(&self, req: Request<Body>) -> Page {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        Page {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, path: &str, session: Option<&str>) -> Page {
        let mut req = Request::get(path).header(header::HOST, HOST);
        if let Some(s) = session {
            req = req.header(header::COOKIE, format!("{COOKIE}={s}"));
        }
        self.send(req.body(Body::empty()).unwrap()).await
    }

    /// A form posted from `origin` (this origin's pages: `http://` + HOST).
    async fn post(
        &self,
        path: &str,
        form: &str,
        session: Option<&str>,
        origin: Option<&str>,
    ) -> Page {
        let mut req = Request::post(path)
            .header(header::HOST, HOST)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(o) = origin {
            req = req.header(header::ORIGIN, o);
        }
        if let Some(s) = session {
            req = req.header(header::COOKIE, format!("{COOKIE}={s}"));
        }
        self.send(req.body(Body::from(form.to_owned())).unwrap())
            .await
    }

    /// Logs in; the session id.
    async fn login(&self) -> String {
        let p = self
            .post("/ui/login", &format!("token={ADMIN}"), None, Some(SAME))
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
        let set = p.headers[header::SET_COOKIE].to_str().unwrap().to_owned();
        let id = set
            .strip_prefix(&format!("{COOKIE}="))
            .and_then(|r| r.split(';').next())
            .unwrap()
            .to_owned();
        assert_eq!(id.len(), 64);
        id
    }
}

const SAME: &str = "http://127.0.0.1:9090";

#[tokio::test]
async fn login_makes_a_server_side_session_in_a_safe_cookie() {
    let ui = ui();
    // Not logged in: to the login form.
    let p = ui.get("/ui/", None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(p.headers[header::LOCATION], "/ui/login");
    let form = ui.get("/ui/login", None).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(
        form.body
            .contains(r#"type="password" id="token" name="token""#)
    );
    assert!(
        form.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .starts_with("default-src 'self'")
    );
    assert_eq!(form.headers[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(form.headers[header::CACHE_CONTROL], "no-store");

    let p = ui
        .post("/ui/login", &format!("token={ADMIN}"), None, Some(SAME))
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(p.headers[header::LOCATION], "/ui/");
    let set = p.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("__Host-maas-ui="), "{set}");
    assert!(
        set.ends_with("; Path=/; HttpOnly; Secure; SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains(ADMIN), "the token is never in the cookie");
    let id = ui.login().await;
    let page = ui.get("/ui/", Some(&id)).await;
    assert_eq!(page.status, StatusCode::OK);
    for name in ["Overview", "Tenants", "Keys", "Models", "Usage", "Audit"] {
        assert!(page.body.contains(&format!(">{name}</a>")), "nav {name}");
    }
    assert!(!page.body.contains(ADMIN), "the token is never in a page");
    // A made-up session is no session.
    let p = ui.get("/ui/", Some(&"0".repeat(64))).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn failed_logins_are_refused_limited_and_audited() {
    let ui = ui();
    let p = ui.post("/ui/login", "token=wrong", None, Some(SAME)).await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    assert!(p.body.contains("That is not the admin token."));
    assert!(p.headers.get(header::SET_COOKIE).is_none());
    for _ in 0..9 {
        ui.post("/ui/login", "token=wrong", None, Some(SAME)).await;
    }
    // The 11th try in the minute is refused, even with the right token.
    let p = ui
        .post("/ui/login", &format!("token={ADMIN}"), None, Some(SAME))
        .await;
    assert_eq!(p.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(p.headers[header::RETRY_AFTER], "60");
    ui.clock.advance(Duration::from_secs(60));
    let id = ui.login().await;
    // Both kinds are in the audit log, shown by the Audit page.
    let audit = ui.get("/ui/audit?action=ui.login", Some(&id)).await;
    assert_eq!(audit.status, StatusCode::OK);
    assert_eq!(audit.body.matches("ui.login_failed").count(), 10);
    assert!(audit.body.contains("<td>ui.login</td>"));
    // A bad query is a clear 400.
    let p = ui.get("/ui/audit?before=yesterday", Some(&id)).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn sessions_expire_and_end_at_logout() {
    let ui = ui();
    let id = ui.login().await;
    ui.clock.advance(Duration::from_secs(29 * 60));
    assert_eq!(ui.get("/ui/models", Some(&id)).await.status, StatusCode::OK);
    ui.clock.advance(Duration::from_secs(30 * 60));
    let p = ui.get("/ui/models", Some(&id)).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "idle for 30 minutes");

    let id = ui.login().await;
    let p = ui.post("/ui/logout", "", Some(&id), Some(SAME)).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert!(
        p.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        ui.get("/ui/", Some(&id)).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn cross_site_and_cross_port_posts_are_refused() {
    let ui = ui();
    let id = ui.login().await;
    // The user listener's origin (same host, another port), another site,
    // and a post that says nothing of its origin.
    for origin in [
        Some("http://127.0.0.1:8080"),
        Some("https://evil.example"),
        Some("null"),
        None,
    ] {
        let p = ui.post("/ui/logout", "", Some(&id), origin).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{origin:?}");
        let p = ui
            .post("/ui/login", &format!("token={ADMIN}"), None, origin)
            .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{origin:?}");
    }
    // Fetch Metadata decides when the browser sends it.
    let req = Request::post("/ui/logout")
        .header(header::HOST, HOST)
        .header(header::ORIGIN, SAME)
        .header("sec-fetch-site", "same-site")
        .header(header::COOKIE, format!("{COOKIE}={id}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(ui.send(req).await.status, StatusCode::FORBIDDEN);
    // The session survived every refused logout.
    assert_eq!(ui.get("/ui/", Some(&id)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn names_are_escaped() {
    let ui = ui();
    let mut m = NewModel::new("<i>m", "http://127.0.0.1:9");
    m.name = Some("<script>alert(1)</script>".into());
    ui.models.create(&Actor::new("admin"), m).await.unwrap();
    let id = ui.login().await;
    let p = ui.get("/ui/models", Some(&id)).await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(
        p.body.contains("&#60;i&#62;m") || p.body.contains("&lt;i&gt;m"),
        "{}",
        p.body
    );
    assert!(!p.body.contains("<i>m"));
    let audit = ui.get("/ui/audit", Some(&id)).await;
    assert!(!audit.body.contains("<script>"), "{}", audit.body);
}
