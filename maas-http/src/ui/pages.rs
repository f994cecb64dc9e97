//! The dashboard's pages: each reads through the management API's
//! services and renders a template.

use askama::Template;
use axum::Form;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use maas_core::audit::{Actor, AuditEvent, AuditQuery};
use maas_core::usage::{GroupBy, TimeRange, UsageScope};
use maas_core::{Identity, Timestamp};
use serde::Deserialize;

use super::guard::{cookie, cookie_of, see_other};
use super::{COOKIE, Operator, Ui, client_of};

/// Renders `t`, or a 500 naming the page when it cannot.
pub(crate) fn render<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a page could not be rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

/// A failure reading the store, as a page.
pub(crate) fn failed(e: &maas_core::Error) -> Response {
    tracing::warn!(error = %e, "dashboard read failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("cannot read the store: {e}"),
    )
        .into_response()
}

// ----- login ---------------------------------------------------------------

#[derive(Template)]
#[template(path = "ui/login.html")]
struct Login<'a> {
    what: &'a str,
    label: &'a str,
    action: &'a str,
    error: Option<&'a str>,
}

const WHAT: &str = "The operator dashboard. Log in with the admin token.";

pub(crate) async fn login_form() -> Response {
    render(&Login {
        what: WHAT,
        label: "Admin token",
        action: "/ui/login",
        error: None,
    })
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

async fn audit_login(ui: &Ui, action: &str, client: &str) {
    let event = AuditEvent::new(
        ui.clock.now(),
        &Actor::new(format!("ui:{client}")),
        action,
        "session",
        "ui",
        None,
        None,
    );
    if let Err(e) = ui.state.storage.audit.append_audit(event).await {
        tracing::warn!(error = %e, "a dashboard login was not audited");
    }
}

pub(crate) async fn login(State(ui): State<Ui>, req: Request) -> Response {
    let client = client_of(&req);
    if !ui.sessions.may_try(&client) {
        let mut res = render(&Login {
            what: WHAT,
            label: "Admin token",
            action: "/ui/login",
            error: Some("Too many failed logins: try again in a minute."),
        });
        *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        res.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from_static("60"),
        );
        return res;
    }
    let form = match Form::<LoginForm>::from_request(req, &()).await {
        Ok(Form(f)) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, e.body_text()).into_response(),
    };
    let admin: Option<Identity> = ui.state.admin_identity(&form.token).await;
    let Some(who) = admin else {
        ui.sessions.failed(&client);
        audit_login(&ui, "ui.login_failed", &client).await;
        let mut res = render(&Login {
            what: WHAT,
            label: "Admin token",
            action: "/ui/login",
            error: Some("That is not the admin token."),
        });
        *res.status_mut() = StatusCode::UNAUTHORIZED;
        return res;
    };
    audit_login(&ui, "ui.login", &client).await;
    let id = ui.sessions.start(&who.user, "admin token");
    let mut res = see_other("/ui/");
    res.headers_mut()
        .insert(SET_COOKIE, cookie(COOKIE, Some(&id)));
    res
}

pub(crate) async fn logout(State(ui): State<Ui>, req: Request) -> Response {
    if let Some(id) = cookie_of(req.headers(), COOKIE) {
        ui.sessions.end(id);
    }
    let mut res = see_other("/ui/login");
    res.headers_mut().insert(SET_COOKIE, cookie(COOKIE, None));
    res
}

// ----- overview -------------------------------------------------------------

struct ModelRow {
    model: String,
    max_in_flight: usize,
    in_flight: usize,
    queued: usize,
    healthy: usize,
    upstreams: usize,
}

#[derive(Template)]
#[template(path = "ui/overview.html")]
struct Overview {
    title: &'static str,
    requests_per_s: f64,
    tokens_per_s: f64,
    refused_pct: f64,
    error_pct: f64,
    in_flight: usize,
    queued: usize,
    models: Vec<ModelRow>,
    groups: Vec<maas_core::GroupSnapshot>,
}

pub(crate) async fn overview(_op: Operator, State(ui): State<Ui>) -> Response {
    let s = &ui.state;
    let live = s.scheduling.live();
    let pools = s.upstream_pools();
    let models = live
        .models
        .iter()
        .map(|m| {
            let ups = pools.iter().find(|p| p.model == m.model);
            ModelRow {
                model: m.model.clone(),
                max_in_flight: m.max_in_flight,
                in_flight: m.in_flight,
                queued: m.queued,
                healthy: ups.map_or(0, |p| {
                    p.upstreams
                        .iter()
                        .filter(|u| u.state == maas_core::upstream::HealthState::Healthy)
                        .count()
                }),
                upstreams: ups.map_or(0, |p| p.upstreams.len()),
            }
        })
        .collect();
    let now = ui.clock.now();
    // The last 60 s, with the minute now is in (ranges end before `to`).
    let to = Timestamp::from_millis(now.as_millis() + 1);
    let minute = TimeRange::new(Timestamp::from_millis(to.as_millis() - 60_000), to);
    let rows = match s
        .usage
        .totals(minute, GroupBy::Model, &UsageScope::default())
        .await
    {
        Ok(r) => r,
        Err(e) => return failed(&e),
    };
    let (mut requests, mut tokens, mut errors) = (0u64, 0u64, 0u64);
    for r in &rows {
        requests += r.usage.requests;
        tokens += r.usage.input_tokens + r.usage.output_tokens;
        errors += r.usage.errors;
    }
    // The gateway's answers of the last minute (refusals included), when
    // this server has one; else what the usage ledger recorded.
    let (answered, refused, failed) = match &s.gateway {
        Some(g) => {
            let a = g.activity();
            (a.answered, a.refused, a.errors)
        }
        None => (requests, 0, errors),
    };
    let pct = |n: u64| {
        if answered == 0 {
            0.0
        } else {
            100.0 * n as f64 / answered as f64
        }
    };
    render(&Overview {
        title: "Overview",
        requests_per_s: answered as f64 / 60.0,
        tokens_per_s: tokens as f64 / 60.0,
        refused_pct: pct(refused),
        error_pct: pct(failed),
        in_flight: live.in_flight,
        queued: live.queued,
        models,
        groups: live.groups,
    })
}

// ----- models and tiers -----------------------------------------------------

struct ModelView {
    id: String,
    ready: bool,
    apis: String,
    upstreams: Vec<maas_core::Upstream>,
    capacity: Option<usize>,
    fallbacks: String,
    price: String,
    tiers: String,
}

struct TierView {
    name: String,
    level: u32,
    groups: String,
    requests_per_minute: u64,
    tokens_per_minute: u64,
    models: String,
}

#[derive(Template)]
#[template(path = "ui/models.html")]
struct Models {
    title: &'static str,
    models: Vec<ModelView>,
    tiers: Vec<TierView>,
}

fn list_or(items: &[String], empty: &str) -> String {
    if items.is_empty() {
        empty.to_owned()
    } else {
        items.join(", ")
    }
}

pub(crate) async fn models(_op: Operator, State(ui): State<Ui>) -> Response {
    let s = &ui.state;
    let (models, tiers) = match (s.models.list().await, s.tiers.list().await) {
        (Ok(m), Ok(t)) => (m, t),
        (Err(e), _) | (_, Err(e)) => return failed(&e),
    };
    let models = models
        .iter()
        .map(|m| ModelView {
            id: m.id.clone(),
            ready: m.ready,
            apis: apis_of(m),
            upstreams: m.pool().into_owned(),
            capacity: m.capacity(),
            fallbacks: list_or(&m.fallbacks, "—"),
            price: m.pricing.as_ref().map_or_else(
                || "—".to_owned(),
                |p| {
                    format!(
                        "{} / {} {}",
                        p.input_per_million, p.output_per_million, p.currency
                    )
                },
            ),
            tiers: list_or(&m.tiers, "every tier that allows it"),
        })
        .collect();
    let tiers = tiers
        .iter()
        .map(|t| TierView {
            name: t.name.clone(),
            level: t.level,
            groups: list_or(&t.groups, "—"),
            requests_per_minute: t.requests_per_minute,
            tokens_per_minute: t.tokens_per_minute,
            models: match &t.models {
                maas_core::tier::ModelAccess::All => "all".to_owned(),
                maas_core::tier::ModelAccess::List(l) => list_or(l, "none"),
            },
        })
        .collect();
    render(&Models {
        title: "Models",
        models,
        tiers,
    })
}

// ----- audit ----------------------------------------------------------------

struct EventView {
    seq: u64,
    at: String,
    actor: String,
    action: String,
    target: String,
    change: String,
}

#[derive(Template)]
#[template(path = "ui/audit.html")]
struct Audit {
    title: &'static str,
    action: String,
    actor: String,
    events: Vec<EventView>,
    next: Option<String>,
}

#[derive(Deserialize, Default)]
pub(crate) struct AuditParams {
    #[serde(default)]
    action: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    before: Option<u64>,
}

/// Events per page.
const AUDIT_PAGE: usize = 50;
/// Events read at most to fill one filtered page.
const AUDIT_SCAN: usize = 5_000;

pub(crate) async fn audit(
    _op: Operator,
    State(ui): State<Ui>,
    Query(p): Query<AuditParams>,
) -> Response {
    let mut events = Vec::new();
    let mut before = p.before;
    let mut scanned = 0;
    let mut more = false;
    'pages: while scanned < AUDIT_SCAN {
        let page = match ui
            .state
            .storage
            .audit
            .list_audit(&AuditQuery {
                before_seq: before,
                limit: 500,
            })
            .await
        {
            Ok(p) => p,
            Err(e) => return failed(&e),
        };
        for e in &page.items {
            scanned += 1;
            before = Some(e.seq);
            if e.action.starts_with(p.action.trim()) && e.actor.as_str().contains(p.actor.trim()) {
                if events.len() == AUDIT_PAGE {
                    more = true;
                    break 'pages;
                }
                events.push(EventView {
                    seq: e.seq,
                    at: e.at.to_string(),
                    actor: e.actor.as_str().to_owned(),
                    action: e.action.clone(),
                    target: format!("{} {}", e.target_kind, e.target_id),
                    change: match (&e.before, &e.after) {
                        (None, None) => String::new(),
                        (b, a) => format!(
                            "{} → {}",
                            b.as_ref().map_or("—".into(), ToString::to_string),
                            a.as_ref().map_or("—".into(), ToString::to_string)
                        ),
                    },
                });
            }
        }
        if page.cursor.is_none() || page.items.is_empty() {
            break;
        }
        more = scanned >= AUDIT_SCAN;
    }
    let next = more
        .then(|| events.last().map(|e| e.seq))
        .flatten()
        .map(|seq| {
            format!(
                "/ui/audit?action={}&actor={}&before={seq}",
                form_encode(&p.action),
                form_encode(&p.actor)
            )
        });
    render(&Audit {
        title: "Audit",
        action: p.action,
        actor: p.actor,
        events,
        next,
    })
}

/// The APIs `m`'s upstream speaks, by name (`OpenAI, Anthropic`).
pub(crate) fn apis_of(m: &maas_core::Model) -> String {
    m.api
        .iter()
        .map(|a| match a {
            maas_core::model::ModelApi::Openai => "OpenAI",
            maas_core::model::ModelApi::Anthropic => "Anthropic",
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `s` percent-encoded for a query string.
pub(crate) fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
