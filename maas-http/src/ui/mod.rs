//! The operator dashboard (`/ui/`, on the admin listener), feature `ui`.
//!
//! Server-rendered pages ([askama] templates compiled into the binary,
//! escaped by default; one stylesheet of our own; no script is needed to
//! read any page, and nothing is fetched from elsewhere), reached from a
//! navigation: Overview, Tenants, Keys, Models, Usage, Audit.
//!
//! ## Login and sessions
//!
//! `GET /ui/login` is a form with one password field, `token`: the admin
//! token. A right one starts a server-side session ([`session`]): a random
//! id in a `__Host-maas-ui` cookie (HttpOnly, Secure, SameSite=Strict,
//! Path=/), ended after 30 minutes unused, 12 hours in all, or at logout
//! (`POST /ui/logout`). The token itself is never put in a cookie or a
//! page. Failed logins are limited per client address (10 a minute, then
//! 429) and every login, good or bad, is in the audit log
//! (`ui.login`, `ui.login_failed`).
//!
//! ## Cross-site requests
//!
//! Every request that changes state is a POST, refused with 403 unless it
//! comes from this origin's own pages ([`guard::same_origin`]: Fetch
//! Metadata, else `Origin` against `Host`) — a form served by the user
//! listener (another port of the same host) cannot post here. Every answer
//! carries a Content-Security-Policy of `'self'`, `X-Frame-Options: DENY`,
//! `nosniff`, `no-referrer` and `no-store`.

mod chart;
mod guard;
mod keys;
mod pages;
pub mod portal;
pub mod session;
mod tenants;
mod usage;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maas_core::clock::SharedClock;

pub use guard::{CSP, same_origin};
pub use session::{Session, SessionConfig, Sessions};

use crate::management::ManagementState;

/// The dashboard's session cookie.
pub const COOKIE: &str = "__Host-maas-ui";

/// The largest form body read, in bytes.
const FORM_LIMIT: usize = 16 * 1024;

/// What the dashboard's handlers share.
#[derive(Debug, Clone)]
pub(crate) struct Ui {
    pub(crate) state: ManagementState,
    pub(crate) sessions: Sessions,
    pub(crate) clock: SharedClock,
}

/// The dashboard's routes (`/ui`, `/ui/…`) over the management API's
/// services, timing sessions with `clock`.
pub fn router(state: ManagementState, config: SessionConfig, clock: SharedClock) -> Router {
    let ui = Ui {
        state,
        sessions: Sessions::new(config, Arc::clone(&clock)),
        clock,
    };
    Router::new()
        .route("/ui", get(|| async { guard::see_other("/ui/") }))
        .route("/ui/", get(pages::overview))
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/tenants", get(tenants::list).post(tenants::create))
        .route("/ui/tenants/{id}", get(tenants::show).post(tenants::change))
        .route("/ui/keys", get(keys::list).post(keys::create))
        .route("/ui/keys/{id}/disable", post(keys::disable))
        .route("/ui/keys/{id}/enable", post(keys::enable))
        .route("/ui/keys/{id}/delete", post(keys::delete))
        .route("/ui/models", get(pages::models))
        .route("/ui/audit", get(pages::audit))
        .route("/ui/usage", get(usage::page))
        .route("/ui/usage.csv", get(usage::csv))
        .route("/ui/static/maas.css", get(stylesheet))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such page") })
        .layer(axum::extract::DefaultBodyLimit::max(FORM_LIMIT))
        .layer(middleware::from_fn(guard::protect))
        .with_state(ui)
}

/// The stylesheet, compiled in.
async fn stylesheet() -> Response {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            ),
            (
                axum::http::header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=3600"),
            ),
        ],
        include_str!("../../static/ui/maas.css"),
    )
        .into_response()
}

/// The client's address as the rate limit of logins keys it (the peer's IP
/// when the server records it, else one key for all).
fn client_of(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string())
}

/// A request of a logged-in operator (else a redirect to the login page,
/// or 403 for a POST).
pub(crate) struct Operator;

impl FromRequestParts<Ui> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ui: &Ui) -> Result<Self, Self::Rejection> {
        let found = guard::cookie_of(&parts.headers, COOKIE).and_then(|id| ui.sessions.get(id));
        match found {
            Some(_) => Ok(Operator),
            None if parts.method == axum::http::Method::GET => Err(guard::see_other("/ui/login")),
            None => Err((StatusCode::FORBIDDEN, "log in first").into_response()),
        }
    }
}
