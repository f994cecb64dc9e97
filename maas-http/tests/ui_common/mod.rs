//! The dashboard tests' harness: the `/ui` router over the memory store and
//! a manual clock, driven with `oneshot` (shared by the `ui*` test files).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

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
    KeyHasher, KeyService, ManualClock, ModelService, TierService, Timestamp, UserKeys,
};
use maas_http::management::{ManagementServices, ManagementState};
use maas_http::ui::{COOKIE, SessionConfig, router};
use maas_store_memory::MemoryStore;
use tower::ServiceExt;

pub(crate) const ADMIN: &str = "admin-token-0123456789";
pub(crate) const HOST: &str = "127.0.0.1:9090";
/// 2025-11-25T00:00:00Z.
pub(crate) const T0: i64 = 1_764_028_800_000;

pub(crate) struct Ui {
    pub(crate) router: Router,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) models: ModelService,
    /// The services the dashboard drives (to seed and to check).
    pub(crate) state: ManagementState,
}

pub(crate) fn ui() -> Ui {
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
        router: router(state.clone(), SessionConfig::default(), clock.clone()),
        clock,
        models,
        state,
    }
}

pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) headers: axum::http::HeaderMap,
    pub(crate) body: String,
}

impl Page {
    /// Where a redirect points (`""` if it is none).
    pub(crate) fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .map_or("", |v| v.to_str().unwrap())
    }
}

/// `req` through `router`, read whole.
pub(crate) async fn send(router: &Router, req: Request<Body>) -> Page {
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    Page {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// `GET path` on `host`, with the session `cookie=session` if any.
pub(crate) async fn get(
    router: &Router,
    (host, cookie): (&str, &str),
    path: &str,
    session: Option<&str>,
) -> Page {
    let mut req = Request::get(path).header(header::HOST, host);
    if let Some(s) = session {
        req = req.header(header::COOKIE, format!("{cookie}={s}"));
    }
    send(router, req.body(Body::empty()).unwrap()).await
}

/// A form posted to `host` from `origin` (its own pages: `http://` +
/// host), with the session `cookie=session` if any.
pub(crate) async fn post(
    router: &Router,
    (host, cookie): (&str, &str),
    path: &str,
    form: &str,
    (session, origin): (Option<&str>, Option<&str>),
) -> Page {
    let mut req = Request::post(path)
        .header(header::HOST, host)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(o) = origin {
        req = req.header(header::ORIGIN, o);
    }
    if let Some(s) = session {
        req = req.header(header::COOKIE, format!("{cookie}={s}"));
    }
    send(router, req.body(Body::from(form.to_owned())).unwrap()).await
}

impl Ui {
    pub(crate) async fn send(&self, req: Request<Body>) -> Page {
        send(&self.router, req).await
    }

    pub(crate) async fn get(&self, path: &str, session: Option<&str>) -> Page {
        get(&self.router, (HOST, COOKIE), path, session).await
    }

    /// A form posted from `origin` (this origin's pages: `http://` + HOST).
    pub(crate) async fn post(
        &self,
        path: &str,
        form: &str,
        session: Option<&str>,
        origin: Option<&str>,
    ) -> Page {
        post(&self.router, (HOST, COOKIE), path, form, (session, origin)).await
    }

    /// Logs in; the session id.
    pub(crate) async fn login(&self) -> String {
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

pub(crate) const SAME: &str = "http://127.0.0.1:9090";
