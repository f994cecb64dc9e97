//! The user portal (`/portal/`, on the user listener), feature `ui`.
//!
//! Where a caller of the gateway sees, in one page, what it may do: its
//! tier and its limits with what is left of them right now, its models with
//! a copyable `curl` and Python SDK snippet each, its own API keys (listed,
//! created with the secret shown once, deleted), and its usage over the
//! last 24 hours as a bar chart with a table of the same numbers.
//!
//! ## Login and sessions
//!
//! `GET /portal/login` is a form with one password field, `token`: a maas
//! token or an API key (any credential the gateway takes, checked exactly
//! as it checks them: [`Gateway::authenticate`]). A valid one starts a
//! server-side session of the portal's own ([`Sessions`]; cookie
//! [`COOKIE`], `__Host-` prefixed, HttpOnly, Secure, SameSite=Strict)
//! that keeps who the caller is (user, groups), the credential's kind and,
//! for an API key, its id — never the credential. (Logging in with an API
//! key that has limited uses spends one, as any request does.) A session ends after
//! 30 minutes unused, 12 hours in all, when the maas token it was opened
//! with expires, when the API key it was opened with is deleted, disabled
//! or expires, or at logout (`POST /portal/logout`). Failed logins are
//! limited per client address and audited (`portal.login`,
//! `portal.login_failed`).
//!
//! API keys are created and deleted only in a session opened with an
//! identity credential (a maas token, an identity token), as the MaaS
//! API's `/keys` routes require: a leaked API key cannot mint keys that
//! outlive it.
//!
//! ## Cross-site requests
//!
//! As the dashboard: every POST is refused (403) unless it comes from this
//! origin's own pages, and every answer carries a Content-Security-Policy
//! of `'self'` (no inline script or style) and `no-store`.
//!
//! [`Gateway::authenticate`]: maas_core::Gateway::authenticate

use std::sync::Arc;

use askama::Template;
use axum::Form;
use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maas_core::clock::SharedClock;
use maas_core::gateway::{Account, Caller};
use maas_core::identity::Identity;
use maas_core::{Actor, AuditEvent, Error, KeyId, Timestamp};
use serde::Deserialize;

use super::chart::{Day, last_day};
use super::guard::{self, cookie, cookie_of, see_other};
use super::pages::{failed, render};
use super::session::{NewSession, Session, SessionConfig, Sessions};
use super::{FORM_LIMIT, client_of};
use crate::maas_api::MaasApiState;

/// The portal's session cookie.
pub const COOKIE: &str = "__Host-maas-portal";

/// The kind of credential a session was opened with: a maas token.
pub const MAAS_TOKEN: &str = "maas token";
/// The kind of credential a session was opened with: a user's API key.
pub const API_KEY: &str = "API key";
/// The kind of credential a session was opened with: a tenant's API key.
pub const TENANT_KEY: &str = "tenant API key";
/// The kind of credential a session was opened with: an identity token
/// (OIDC, a configured token).
pub const IDENTITY_TOKEN: &str = "identity token";

/// How the portal runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortalConfig {
    /// How long sessions last, and the login limit.
    pub sessions: SessionConfig,
    /// On a data plane: the control plane where API keys are made. The
    /// portal then lists keys but neither creates nor deletes them.
    pub control_plane: Option<String>,
}

/// What the portal's handlers share.
#[derive(Debug, Clone)]
struct Portal {
    state: MaasApiState,
    sessions: Sessions,
    clock: SharedClock,
    control_plane: Option<Arc<str>>,
}

/// The portal's routes (`/portal`, `/portal/…`) over the MaaS API's
/// services (its gateway authenticates logins and tells the limits left;
/// its `gateway_url` is the base URL of the snippets), timing sessions
/// with `clock`.
pub fn router(state: MaasApiState, config: PortalConfig, clock: SharedClock) -> Router {
    let portal = Portal {
        state,
        sessions: Sessions::new(config.sessions, Arc::clone(&clock)),
        clock,
        control_plane: config.control_plane.map(Arc::from),
    };
    Router::new()
        .route("/portal", get(|| async { see_other("/portal/") }))
        .route("/portal/", get(home))
        .route("/portal/login", get(login_form).post(login))
        .route("/portal/logout", post(logout))
        .route("/portal/keys", post(create_key))
        .route("/portal/keys/delete", post(delete_key))
        .route("/portal/static/maas.css", get(super::stylesheet))
        .route(
            "/portal/static/portal.css",
            get(|| async {
                asset(
                    "text/css; charset=utf-8",
                    include_str!("../../static/portal/portal.css"),
                )
            }),
        )
        .route(
            "/portal/static/portal.js",
            get(|| async {
                asset(
                    "text/javascript; charset=utf-8",
                    include_str!("../../static/portal/portal.js"),
                )
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such page") })
        .layer(axum::extract::DefaultBodyLimit::max(FORM_LIMIT))
        .layer(middleware::from_fn(guard::protect))
        .with_state(portal)
}

/// A compiled-in file, cacheable for an hour.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("max-age=3600")),
        ],
        body,
    )
        .into_response()
}

// ----- sessions -------------------------------------------------------------

/// A request in a live portal session (else a redirect to the login page,
/// or 403 for a POST).
struct Member {
    id: String,
    session: Session,
}

impl FromRequestParts<Portal> for Member {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, p: &Portal) -> Result<Self, Self::Rejection> {
        let found = cookie_of(&parts.headers, COOKIE)
            .and_then(|id| p.sessions.get(id).map(|s| (id.to_owned(), s)));
        match found {
            Some((id, session)) => Ok(Member { id, session }),
            None if parts.method == Method::GET => Err(see_other("/portal/login")),
            None => Err((StatusCode::FORBIDDEN, "log in first").into_response()),
        }
    }
}

/// To the login page, the session's cookie cleared.
fn to_login() -> Response {
    let mut res = see_other("/portal/login");
    res.headers_mut().insert(SET_COOKIE, cookie(COOKIE, None));
    res
}

impl Portal {
    /// The caller of `m`'s session as the gateway would serve it now: its
    /// identity, the tier its groups map to now, and the API key it logged
    /// in with, which must still be live (else the session ends).
    async fn caller(&self, m: &Member) -> Result<Caller, Response> {
        let s = &m.session;
        let identity = Identity {
            user: s.subject.clone(),
            groups: s.groups.clone(),
        };
        let key_id = match s.key_id.as_deref().map(KeyId::parse) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => {
                self.sessions.end(&m.id);
                return Err(to_login());
            }
        };
        if let Some(id) = &key_id {
            let now = self.clock.now();
            match self.state.user_keys.key_service().get(id).await {
                Ok(k) if k.enabled && k.expires.is_none_or(|e| now < e) => {}
                Ok(_) | Err(Error::NotFound { .. }) => {
                    self.sessions.end(&m.id);
                    return Err(to_login());
                }
                Err(e) => return Err(failed(&e)),
            }
        }
        let tier = match self.state.tiers.tier_of(&identity).await {
            Ok(t) => t,
            Err(e) if e.is_not_found() || matches!(e, Error::Forbidden { .. }) => {
                let mut res = render(&Problem {
                    title: "No tier",
                    message: "Your groups map to no tier: you may use no model. Ask your operator.",
                });
                *res.status_mut() = StatusCode::FORBIDDEN;
                return Err(res);
            }
            Err(e) => return Err(failed(&e)),
        };
        Ok(Caller {
            identity,
            tier,
            key_id,
        })
    }

    async fn audit(&self, actor: Actor, action: &str, after: serde_json::Value) {
        let event = AuditEvent::new(
            self.clock.now(),
            &actor,
            action,
            "session",
            "portal",
            None,
            Some(after),
        );
        if let Err(e) = self.state.storage.audit.append_audit(event).await {
            tracing::warn!(error = %e, "a portal login was not audited");
        }
    }

    /// Why keys cannot be created or deleted in `m`'s session, if they
    /// cannot.
    fn keys_locked(&self, m: &Member) -> Option<String> {
        if let Some(cp) = &self.control_plane {
            return Some(format!(
                "This server is a data plane: API keys are made at the control plane ({cp})."
            ));
        }
        m.session.key_id.is_some().then(|| {
            "You logged in with an API key: log in with a maas token to create or delete keys."
                .to_owned()
        })
    }
}

// ----- login ----------------------------------------------------------------

#[derive(Template)]
#[template(path = "portal/login.html")]
struct Login<'a> {
    error: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "portal/problem.html")]
struct Problem<'a> {
    title: &'a str,
    message: &'a str,
}

fn login_page(status: StatusCode, error: Option<&str>) -> Response {
    let mut res = render(&Login { error });
    *res.status_mut() = status;
    res
}

async fn login_form() -> Response {
    login_page(StatusCode::OK, None)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(p): State<Portal>, req: Request) -> Response {
    let client = client_of(&req);
    if !p.sessions.may_try(&client) {
        let mut res = login_page(
            StatusCode::TOO_MANY_REQUESTS,
            Some("Too many failed logins: try again in a minute."),
        );
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("60"));
        return res;
    }
    let form = match Form::<LoginForm>::from_request(req, &()).await {
        Ok(Form(f)) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, e.body_text()).into_response(),
    };
    let credential = form.token.trim();
    let caller = match p.state.gateway.authenticate(credential).await {
        Ok(c) => c,
        Err(Error::Unauthenticated { .. }) => {
            return refuse(
                &p,
                &client,
                StatusCode::UNAUTHORIZED,
                "invalid",
                "That is not a valid maas token or API key.",
            )
            .await;
        }
        Err(Error::Forbidden { .. }) => {
            return refuse(
                &p,
                &client,
                StatusCode::FORBIDDEN,
                "no tier",
                "Your groups map to no tier: ask your operator.",
            )
            .await;
        }
        Err(Error::RateLimited { .. } | Error::QuotaExceeded { .. }) => {
            return refuse(
                &p,
                &client,
                StatusCode::TOO_MANY_REQUESTS,
                "key limited",
                "That API key is rate-limited or has no uses left.",
            )
            .await;
        }
        Err(e) => return failed(&e),
    };
    let (kind, until) = match &caller.key_id {
        Some(_) if credential.starts_with("sk_") => (TENANT_KEY, None),
        Some(_) => (API_KEY, None),
        None => match p.state.tokens.check(credential).await {
            Ok(Ok(t)) => (MAAS_TOKEN, Some(t.expires_at)),
            _ => (IDENTITY_TOKEN, None),
        },
    };
    let user = caller.identity.user.clone();
    p.audit(
        Actor::new(format!("user:{user}")),
        "portal.login",
        serde_json::json!({ "credential": kind, "client": client }),
    )
    .await;
    let id = p.sessions.start_for(NewSession {
        subject: user,
        groups: caller.identity.groups,
        detail: kind.to_owned(),
        key_id: caller.key_id.map(|k| k.as_str().to_owned()),
        until,
    });
    let mut res = see_other("/portal/");
    res.headers_mut()
        .insert(SET_COOKIE, cookie(COOKIE, Some(&id)));
    res
}

/// A refused login: counted against `client`, audited, the form again.
async fn refuse(
    p: &Portal,
    client: &str,
    status: StatusCode,
    reason: &str,
    message: &str,
) -> Response {
    p.sessions.failed(client);
    p.audit(
        Actor::new(format!("portal:{client}")),
        "portal.login_failed",
        serde_json::json!({ "reason": reason }),
    )
    .await;
    login_page(status, Some(message))
}

async fn logout(State(p): State<Portal>, req: Request) -> Response {
    if let Some(id) = cookie_of(req.headers(), COOKIE) {
        p.sessions.end(id);
    }
    to_login()
}

// ----- the page -------------------------------------------------------------

struct LimitView {
    name: &'static str,
    limit: u64,
    remaining: u64,
    resets_in: String,
}

struct BudgetRow {
    scope: &'static str,
    amount: String,
    period: String,
    spent: String,
    left: String,
    resets_at: String,
}

struct ModelView {
    id: String,
    name: String,
    apis: String,
    curl: String,
    python: String,
    sdk: &'static str,
}

struct KeyView {
    name: String,
    start: String,
    created_at: String,
    last_used_at: String,
}

/// A key just created: its secret, shown in this answer only.
struct Created {
    name: String,
    secret: String,
}

#[derive(Template)]
#[template(path = "portal/home.html")]
struct Home {
    user: String,
    groups: String,
    credential: String,
    base_url: String,
    tier: maas_core::gateway::AccountTier,
    limits: Vec<LimitView>,
    key_remaining: Option<i64>,
    budgets: Vec<BudgetRow>,
    today_requests: u64,
    today_tokens: u64,
    today_cost: String,
    models: Vec<ModelView>,
    keys: Vec<KeyView>,
    keys_locked: Option<String>,
    created: Option<Created>,
    key_error: Option<String>,
    day: Day,
    usage_recorded: bool,
}

async fn home(State(p): State<Portal>, m: Member) -> Response {
    let caller = match p.caller(&m).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    page(&p, &m, &caller, None, None).await
}

/// `s` quoted for a POSIX shell (single quotes).
fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `s` as a JSON (and Python) string literal.
fn literal(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn snippets(base: &str, m: &maas_core::Model) -> (String, String, &'static str) {
    use maas_core::model::ModelApi;
    let id = literal(&m.id);
    if m.speaks(ModelApi::Openai) || !m.speaks(ModelApi::Anthropic) {
        let body =
            format!(r#"{{"model": {id}, "messages": [{{"role": "user", "content": "Hello!"}}]}}"#);
        let curl = format!(
            "curl {url} \\\n  -H \"Authorization: Bearer $MAAS_TOKEN\" \\\n  -H \"Content-Type: application/json\" \\\n  -d {body}",
            url = sh(&format!("{base}/v1/chat/completions")),
            body = sh(&body),
        );
        let python = format!(
            "import os\n\nfrom openai import OpenAI\n\nclient = OpenAI(\n    base_url={url},\n    api_key=os.environ[\"MAAS_TOKEN\"],\n)\nresponse = client.chat.completions.create(\n    model={id},\n    messages=[{{\"role\": \"user\", \"content\": \"Hello!\"}}],\n)\nprint(response.choices[0].message.content)",
            url = literal(&format!("{base}/v1")),
        );
        (curl, python, "OpenAI SDK")
    } else {
        let body = format!(
            r#"{{"model": {id}, "max_tokens": 256, "messages": [{{"role": "user", "content": "Hello!"}}]}}"#
        );
        let curl = format!(
            "curl {url} \\\n  -H \"x-api-key: $MAAS_TOKEN\" \\\n  -H \"anthropic-version: 2023-06-01\" \\\n  -H \"Content-Type: application/json\" \\\n  -d {body}",
            url = sh(&format!("{base}/v1/messages")),
            body = sh(&body),
        );
        let python = format!(
            "import os\n\nfrom anthropic import Anthropic\n\nclient = Anthropic(\n    base_url={url},\n    api_key=os.environ[\"MAAS_TOKEN\"],\n)\nmessage = client.messages.create(\n    model={id},\n    max_tokens=256,\n    messages=[{{\"role\": \"user\", \"content\": \"Hello!\"}}],\n)\nprint(message.content[0].text)",
            url = literal(base),
        );
        (curl, python, "Anthropic SDK")
    }
}

fn resets_in(now: Timestamp, at: Timestamp) -> String {
    let ms = (at.as_millis() - now.as_millis()).max(0);
    format!("{} s", (ms + 999) / 1000)
}

fn money(amount: f64, currency: &str) -> String {
    format!("{amount:.4} {currency}")
}

fn limits_of(a: &Account, now: Timestamp) -> Vec<LimitView> {
    let mut v = vec![
        LimitView {
            name: "requests per minute",
            limit: a.limits.requests.limit,
            remaining: a.limits.requests.remaining,
            resets_in: resets_in(now, a.limits.requests.reset),
        },
        LimitView {
            name: "tokens per minute",
            limit: a.limits.tokens.limit,
            remaining: a.limits.tokens.remaining,
            resets_in: resets_in(now, a.limits.tokens.reset),
        },
    ];
    if let Some(q) = &a.limits.tenant_quota {
        v.push(LimitView {
            name: "your quota of tokens per minute",
            limit: q.limit,
            remaining: q.remaining,
            resets_in: resets_in(now, q.reset),
        });
    }
    v
}

/// The caller's last 24 hours of usage (`None` when this server records
/// none).
async fn usage_of(p: &Portal, user: &str, now: Timestamp) -> Result<Option<Day>, Error> {
    match &p.state.gateway.services().usage {
        Some(ledger) => last_day(ledger, user, now).await.map(Some),
        None => Ok(None),
    }
}

/// The portal's page for `caller`, with a key just created or an error of
/// the keys' form.
async fn page(
    p: &Portal,
    m: &Member,
    caller: &Caller,
    created: Option<Created>,
    key_error: Option<String>,
) -> Response {
    let s = &p.state;
    let now = p.clock.now();
    let account = match s.gateway.account(caller).await {
        Ok(a) => a,
        Err(e) => return failed(&e),
    };
    let models = match s.models.list_for_tier(&caller.tier).await {
        Ok(m) => m,
        Err(e) => return failed(&e),
    };
    let keys = match s.user_keys.list(&caller.identity.user).await {
        Ok(k) => k.keys,
        Err(Error::InvalidInput { .. }) => Vec::new(),
        Err(e) => return failed(&e),
    };
    let hours = match usage_of(p, &caller.identity.user, now).await {
        Ok(h) => h,
        Err(e) => return failed(&e),
    };
    let base = s.gateway_url.trim_end_matches('/').to_owned();
    let models = models
        .iter()
        .map(|m| {
            let (curl, python, sdk) = snippets(&base, m);
            ModelView {
                id: m.id.clone(),
                name: m.name.clone(),
                apis: super::pages::apis_of(m),
                curl,
                python,
                sdk,
            }
        })
        .collect();
    let keys = keys
        .into_iter()
        .map(|k| KeyView {
            name: k.name,
            start: k.start,
            created_at: k.created_at.to_string(),
            last_used_at: k
                .last_used_at
                .map_or_else(|| "never".to_owned(), |t| t.to_string()),
        })
        .collect();
    let budgets = account
        .limits
        .budgets
        .iter()
        .map(|b| BudgetRow {
            scope: if b.scope == "key" { "this key" } else { "you" },
            amount: money(b.amount, &b.currency),
            period: format!("{:?}", b.period).to_lowercase(),
            spent: money(b.spent + b.reserved, &b.currency),
            left: money(b.left, &b.currency),
            resets_at: b.resets_at.to_string(),
        })
        .collect();
    let today_cost = if account.today.costs.is_empty() {
        "nothing".to_owned()
    } else {
        account
            .today
            .costs
            .iter()
            .map(|c| money(c.amount, &c.currency))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let usage_recorded = hours.is_some();
    render(&Home {
        user: account.user.clone(),
        groups: if account.groups.is_empty() {
            "none".to_owned()
        } else {
            account.groups.join(", ")
        },
        credential: m.session.detail.clone(),
        base_url: base,
        limits: limits_of(&account, now),
        key_remaining: account.key_remaining,
        budgets,
        today_requests: account.today.requests,
        today_tokens: account.today.input_tokens + account.today.output_tokens,
        today_cost,
        tier: account.tier,
        models,
        keys,
        keys_locked: p.keys_locked(m),
        created,
        key_error,
        day: hours.unwrap_or_else(Day::empty),
        usage_recorded,
    })
}

// ----- keys -----------------------------------------------------------------

#[derive(Deserialize)]
struct KeyForm {
    name: String,
}

/// The form of a key route, with the caller, when keys may change in this
/// session.
async fn key_request(p: &Portal, m: &Member, req: Request) -> Result<(Caller, String), Response> {
    let caller = p.caller(m).await?;
    if let Some(why) = p.keys_locked(m) {
        let mut res = render(&Problem {
            title: "Keys",
            message: &why,
        });
        *res.status_mut() = StatusCode::FORBIDDEN;
        return Err(res);
    }
    match Form::<KeyForm>::from_request(req, &()).await {
        Ok(Form(f)) => Ok((caller, f.name.trim().to_owned())),
        Err(e) => Err((StatusCode::BAD_REQUEST, e.body_text()).into_response()),
    }
}

/// The page with the keys form's error, answered with `status`.
async fn key_failure(p: &Portal, m: &Member, caller: &Caller, e: &Error) -> Response {
    let status = match e {
        Error::Conflict { .. } => StatusCode::CONFLICT,
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::InvalidInput { .. } => StatusCode::BAD_REQUEST,
        _ => return failed(e),
    };
    let mut res = page(p, m, caller, None, Some(e.to_string())).await;
    if res.status().is_success() {
        *res.status_mut() = status;
    }
    res
}

async fn create_key(State(p): State<Portal>, m: Member, req: Request) -> Response {
    let (caller, name) = match key_request(&p, &m, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match p.state.user_keys.create_for(&caller.identity, &name).await {
        // The secret is in this answer only (no-store): a reload posts again
        // and is refused, the name being taken.
        Ok(k) => {
            let created = Created {
                name: k.name.clone(),
                secret: k.api_key.clone(),
            };
            page(&p, &m, &caller, Some(created), None).await
        }
        Err(e) => key_failure(&p, &m, &caller, &e).await,
    }
}

async fn delete_key(State(p): State<Portal>, m: Member, req: Request) -> Response {
    let (caller, name) = match key_request(&p, &m, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match p.state.user_keys.delete(&caller.identity.user, &name).await {
        Ok(()) => see_other("/portal/#keys"),
        Err(e) => key_failure(&p, &m, &caller, &e).await,
    }
}
