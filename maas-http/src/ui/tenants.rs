//! The Tenants pages: the list (search, paging, a form to create one) and
//! one tenant (its settings in forms, its budget, its usage of the last 24
//! hours). Every change goes through the same services, with the same
//! actor, as the management API's tenant routes.

use std::collections::HashMap;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maas_core::admission::{BudgetScope, BudgetView, NewBudget};
use maas_core::counter::Period;
use maas_core::{Actor, Error, NewTenant, Patch, Tenant, TenantId, TenantUpdate};
use serde::Deserialize;

use super::chart::{Day, last_day};
use super::guard::see_other;
use super::pages::{failed, form_encode, render};
use super::{Operator, Ui};

/// Rows per page of the dashboard's lists (and the most a `limit` may ask).
pub(crate) const PAGE: usize = 50;
/// Tenants read at most by one search before it offers to go on.
const SCAN: usize = 2_000;
/// Tenants read per store page while searching.
const SCAN_PAGE: usize = 500;

/// Who the dashboard's changes are audited as: the admin, as the management
/// API's.
pub(crate) fn admin_actor() -> Actor {
    Actor::new("admin")
}

/// The status of a refused change (bad input, a conflict, something not
/// found); `None` for a failure of the store.
pub(crate) fn refusal(e: &Error) -> Option<StatusCode> {
    match e {
        Error::InvalidInput { .. } => Some(StatusCode::BAD_REQUEST),
        Error::Conflict { .. } => Some(StatusCode::CONFLICT),
        e if e.is_not_found() => Some(StatusCode::NOT_FOUND),
        _ => None,
    }
}

/// A service's refusal as a sentence for the page.
pub(crate) fn message(e: &Error) -> String {
    match e {
        Error::InvalidInput { field, reason } => format!("{field} {reason}"),
        Error::Conflict { message } => message.clone(),
        e => e.to_string(),
    }
}

/// The page size asked for, clamped to 1..=[`PAGE`].
pub(crate) fn page_size(limit: Option<usize>) -> usize {
    limit.unwrap_or(PAGE).clamp(1, PAGE)
}

/// `&limit=n` when the page size asked for is not the default.
pub(crate) fn limit_param(size: usize) -> String {
    if size == PAGE {
        String::new()
    } else {
        format!("&limit={size}")
    }
}

/// An empty field as `None`.
fn filled(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

// ----- the list -------------------------------------------------------------

struct TenantRow {
    href: String,
    name: String,
    weight: u32,
    group: String,
    tier: String,
    quota: String,
    budget: String,
}

struct Choice {
    value: String,
    selected: bool,
}

#[derive(Template)]
#[template(path = "ui/tenants.html")]
struct TenantsPage {
    title: &'static str,
    q: String,
    rows: Vec<TenantRow>,
    next: Option<String>,
    /// How many tenants a search that stopped early had read.
    scanned: Option<usize>,
    error: Option<String>,
    new_name: String,
    new_weight: String,
    groups: Vec<Choice>,
    tiers: Vec<Choice>,
}

/// The query of `GET /ui/tenants`.
#[derive(Deserialize, Default)]
pub(crate) struct ListParams {
    /// Part of the name (any case).
    #[serde(default)]
    q: String,
    /// The previous page's last tenant id.
    #[serde(default)]
    cursor: Option<String>,
    /// Rows per page (1..=50).
    #[serde(default)]
    limit: Option<usize>,
}

/// The page of tenants `p` asks for: its rows, the cursor of the next page
/// and, for a search that stopped at [`SCAN`], how many it read.
async fn find(
    ui: &Ui,
    p: &ListParams,
    size: usize,
) -> maas_core::Result<(Vec<Tenant>, Option<String>, Option<usize>)> {
    let tenants = ui.state.scheduling.tenants();
    let q = p.q.trim().to_lowercase();
    let cursor = p.cursor.clone().filter(|c| !c.is_empty());
    if q.is_empty() {
        let page = tenants
            .list(&maas_core::PageRequest {
                cursor,
                limit: size,
            })
            .await?;
        return Ok((page.items, page.cursor, None));
    }
    let mut found: Vec<Tenant> = Vec::new();
    let mut cursor = cursor;
    let mut scanned = 0;
    loop {
        let page = tenants
            .list(&maas_core::PageRequest {
                cursor: cursor.clone(),
                limit: SCAN_PAGE,
            })
            .await?;
        for t in page.items {
            if t.name.to_lowercase().contains(&q) {
                if found.len() == size {
                    // One more matches: the next page starts after the last shown.
                    let next = found.last().map(|t| t.id.as_str().to_owned());
                    return Ok((found, next, None));
                }
                found.push(t.clone());
            }
            scanned += 1;
            cursor = Some(t.id.as_str().to_owned());
        }
        if page.cursor.is_none() {
            return Ok((found, None, None));
        }
        if scanned >= SCAN {
            return Ok((found, cursor, Some(scanned)));
        }
    }
}

fn choices(all: Vec<String>, current: Option<&str>) -> Vec<Choice> {
    all.into_iter()
        .map(|value| Choice {
            selected: Some(value.as_str()) == current,
            value,
        })
        .collect()
}

/// The group and tier names to choose from.
async fn options(
    ui: &Ui,
    group: Option<&str>,
    tier: Option<&str>,
) -> maas_core::Result<(Vec<Choice>, Vec<Choice>)> {
    let groups = ui.state.scheduling.list_groups().await?;
    let tiers = ui.state.tiers.list().await?;
    Ok((
        choices(groups.into_iter().map(|g| g.name).collect(), group),
        choices(tiers.into_iter().map(|t| t.name).collect(), tier),
    ))
}

fn period_name(p: Period) -> &'static str {
    match p {
        Period::Daily => "daily",
        Period::Weekly => "weekly",
        Period::Monthly => "monthly",
    }
}

fn budget_text(amount: f64, currency: &str, period: Period) -> String {
    format!("{amount} {currency} {}", period_name(period))
}

async fn list_page(
    ui: &Ui,
    p: ListParams,
    error: Option<(StatusCode, String)>,
    new: &CreateForm,
) -> Response {
    let size = page_size(p.limit);
    let (tenants, next, scanned) = match find(ui, &p, size).await {
        Ok(found) => found,
        Err(e) if refusal(&e).is_some() => {
            return text(StatusCode::BAD_REQUEST, &message(&e));
        }
        Err(e) => return failed(&e),
    };
    let budgets: HashMap<String, String> = match ui.state.admission.list_budgets().await {
        Ok(all) => all
            .into_iter()
            .map(|b| (b.id, budget_text(b.amount, &b.currency, b.period)))
            .collect(),
        Err(e) => return failed(&e),
    };
    let (groups, tiers) = match options(ui, filled(&new.group), filled(&new.tier)).await {
        Ok(o) => o,
        Err(e) => return failed(&e),
    };
    let rows = tenants
        .into_iter()
        .map(|t| TenantRow {
            href: format!("/ui/tenants/{}", form_encode(t.id.as_str())),
            budget: budgets
                .get(&BudgetScope::Tenant(t.name.clone()).record_id())
                .cloned()
                .unwrap_or_else(|| "—".to_owned()),
            weight: t.weight,
            tier: t.tier.unwrap_or_else(|| "—".to_owned()),
            quota: t
                .tokens_per_minute
                .map_or_else(|| "unlimited".to_owned(), |n| n.to_string()),
            group: t.group,
            name: t.name,
        })
        .collect();
    let next = next.map(|c| {
        format!(
            "/ui/tenants?q={}&cursor={}{}",
            form_encode(&p.q),
            form_encode(&c),
            limit_param(size)
        )
    });
    let (status, error) = match error {
        Some((s, e)) => (s, Some(e)),
        None => (StatusCode::OK, None),
    };
    let mut res = render(&TenantsPage {
        title: "Tenants",
        q: p.q,
        rows,
        next,
        scanned,
        error,
        new_name: new.name.clone(),
        new_weight: new.weight.clone(),
        groups,
        tiers,
    });
    if res.status() == StatusCode::OK {
        *res.status_mut() = status;
    }
    res
}

fn text(status: StatusCode, msg: &str) -> Response {
    use axum::response::IntoResponse;
    (status, msg.to_owned()).into_response()
}

/// `GET /ui/tenants`: tenants by id, 50 a page, or those whose name holds
/// `q`.
pub(crate) async fn list(
    _op: Operator,
    State(ui): State<Ui>,
    Query(p): Query<ListParams>,
) -> Response {
    list_page(&ui, p, None, &CreateForm::default()).await
}

/// The form of `POST /ui/tenants`.
#[derive(Deserialize, Default)]
pub(crate) struct CreateForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    weight: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    tier: String,
}

const WEIGHT_WRONG: &str = "weight must be a whole number between 1 and 1000000";

fn parse_weight(s: &str) -> Result<u32, String> {
    s.trim()
        .parse::<i64>()
        .ok()
        .and_then(|w| maas_core::scheduling::check_weight(w).ok())
        .ok_or_else(|| WEIGHT_WRONG.to_owned())
}

/// `POST /ui/tenants`: creates a tenant, then shows it.
pub(crate) async fn create(
    _op: Operator,
    State(ui): State<Ui>,
    Form(f): Form<CreateForm>,
) -> Response {
    let weight = match filled(&f.weight).map(parse_weight).transpose() {
        Ok(w) => w,
        Err(e) => {
            return list_page(
                &ui,
                ListParams::default(),
                Some((StatusCode::BAD_REQUEST, e)),
                &f,
            )
            .await;
        }
    };
    let new = NewTenant {
        name: f.name.clone(),
        weight,
        group: filled(&f.group).map(str::to_owned),
        tier: filled(&f.tier).map(str::to_owned),
        tokens_per_minute: None,
    };
    match ui.state.scheduling.create_tenant(&admin_actor(), new).await {
        Ok(t) => {
            // A gateway request may have found no tenant of that name: not any more.
            ui.state.tiers.forget_tenant_tiers();
            see_other(&format!(
                "/ui/tenants/{}?saved=created",
                form_encode(t.id.as_str())
            ))
        }
        Err(e) => match refusal(&e) {
            Some(status) => {
                let status = if status == StatusCode::NOT_FOUND {
                    StatusCode::BAD_REQUEST
                } else {
                    status
                };
                list_page(&ui, ListParams::default(), Some((status, message(&e))), &f).await
            }
            None => failed(&e),
        },
    }
}

// ----- one tenant ----------------------------------------------------------

struct BudgetShown {
    amount: f64,
    currency: String,
    period: &'static str,
    soft_limit: String,
    spent: String,
    reserved: String,
    left: String,
    resets: String,
}

#[derive(Template)]
#[template(path = "ui/tenant.html")]
struct TenantPage {
    title: &'static str,
    t: Tenant,
    quota: String,
    saved: Option<&'static str>,
    error: Option<String>,
    keys_href: String,
    /// Where the forms post: this page.
    action: String,
    groups: Vec<Choice>,
    tiers: Vec<Choice>,
    budget: Option<BudgetShown>,
    periods: Vec<Choice>,
    day: Day,
}

/// The query of `GET /ui/tenants/{id}`.
#[derive(Deserialize, Default)]
pub(crate) struct ShowParams {
    /// What was just changed.
    #[serde(default)]
    saved: String,
}

/// What a change said it saved, from a fixed list (nothing of the query is
/// echoed).
fn saved_text(s: &str) -> Option<&'static str> {
    Some(match s {
        "created" => "Tenant created.",
        "weight" => "Weight saved.",
        "group" => "Group saved.",
        "tier" => "Tier saved.",
        "quota" => "Quota saved.",
        "budget" => "Budget saved.",
        "budget_delete" => "Budget removed.",
        _ => return None,
    })
}

async fn tenant_page(
    ui: &Ui,
    t: Tenant,
    saved: Option<&'static str>,
    error: Option<(StatusCode, String)>,
) -> Response {
    let s = &ui.state;
    let (groups, tiers) = match options(ui, Some(&t.group), t.tier.as_deref()).await {
        Ok(o) => o,
        Err(e) => return failed(&e),
    };
    let budget = match s
        .admission
        .budget_status(&BudgetScope::Tenant(t.name.clone()))
        .await
    {
        Ok(st) => {
            let v = BudgetView::from(st);
            Some(BudgetShown {
                amount: v.amount,
                period: period_name(v.period),
                soft_limit: v.soft_limit.map_or_else(String::new, |s| s.to_string()),
                spent: format!("{:.4}", v.spent),
                reserved: format!("{:.4}", v.reserved),
                left: format!("{:.4}", v.left),
                resets: v.resets_at.to_string(),
                currency: v.currency,
            })
        }
        Err(e) if e.is_not_found() => None,
        Err(e) => return failed(&e),
    };
    let current_period = budget.as_ref().map_or("daily", |b| b.period);
    let periods = choices(
        vec!["daily".into(), "weekly".into(), "monthly".into()],
        Some(current_period),
    );
    let day = match last_day(&s.usage, &t.name, ui.clock.now()).await {
        Ok(d) => d,
        Err(e) => return failed(&e),
    };
    let (status, error) = match error {
        Some((s, e)) => (s, Some(e)),
        None => (StatusCode::OK, None),
    };
    let mut res = render(&TenantPage {
        title: "Tenants",
        quota: t
            .tokens_per_minute
            .map_or_else(String::new, |n| n.to_string()),
        keys_href: format!("/ui/keys?tenant={}", form_encode(&t.name)),
        action: format!("/ui/tenants/{}", form_encode(t.id.as_str())),
        t,
        saved,
        error,
        groups,
        tiers,
        budget,
        periods,
        day,
    });
    if res.status() == StatusCode::OK {
        *res.status_mut() = status;
    }
    res
}

/// The tenant `raw`, or the page saying there is none.
async fn tenant_of(ui: &Ui, raw: &str) -> Result<Tenant, Response> {
    let not_found = || text(StatusCode::NOT_FOUND, "no such tenant");
    let id = TenantId::parse(raw).map_err(|_| not_found())?;
    match ui.state.scheduling.tenants().get(&id).await {
        Ok(t) => Ok(t),
        Err(e) if e.is_not_found() => Err(not_found()),
        Err(e) => Err(failed(&e)),
    }
}

/// `GET /ui/tenants/{id}`: one tenant, its settings and its last 24 hours.
pub(crate) async fn show(
    _op: Operator,
    State(ui): State<Ui>,
    Path(raw): Path<String>,
    Query(p): Query<ShowParams>,
) -> Response {
    match tenant_of(&ui, &raw).await {
        Ok(t) => tenant_page(&ui, t, saved_text(&p.saved), None).await,
        Err(res) => res,
    }
}

/// The forms of `POST /ui/tenants/{id}`: `what` says which setting.
#[derive(Deserialize, Default)]
pub(crate) struct ChangeForm {
    #[serde(default)]
    what: String,
    #[serde(default)]
    weight: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    tier: String,
    #[serde(default)]
    tokens_per_minute: String,
    #[serde(default)]
    amount: String,
    #[serde(default)]
    currency: String,
    #[serde(default)]
    period: String,
    #[serde(default)]
    soft_limit: String,
}

/// A setting to change, read from a form.
enum Change {
    Tenant(TenantUpdate),
    Budget(NewBudget),
    NoBudget,
}

fn parse_change(f: &ChangeForm) -> Result<Change, String> {
    let update = |u: TenantUpdate| Ok(Change::Tenant(u));
    match f.what.as_str() {
        "weight" => update(TenantUpdate {
            weight: Some(parse_weight(&f.weight)?),
            ..TenantUpdate::default()
        }),
        "group" => match filled(&f.group) {
            Some(g) => update(TenantUpdate {
                group: Some(g.to_owned()),
                ..TenantUpdate::default()
            }),
            None => Err("group must be chosen".to_owned()),
        },
        "tier" => update(TenantUpdate {
            tier: filled(&f.tier).map_or(Patch::Clear, |t| Patch::Set(t.to_owned())),
            ..TenantUpdate::default()
        }),
        "quota" => {
            let quota = match filled(&f.tokens_per_minute) {
                None => Patch::Clear,
                Some(n) => {
                    Patch::Set(n.parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        "tokens per minute must be a whole number of at least 1 \
                         (empty for unlimited)"
                            .to_owned()
                    })?)
                }
            };
            update(TenantUpdate {
                tokens_per_minute: quota,
                ..TenantUpdate::default()
            })
        }
        "budget" => {
            let amount = filled(&f.amount)
                .and_then(|a| a.parse::<f64>().ok())
                .filter(|a| a.is_finite() && *a > 0.0)
                .ok_or_else(|| "amount must be a number greater than 0".to_owned())?;
            let period = filled(&f.period)
                .unwrap_or_default()
                .parse::<Period>()
                .map_err(|e| message(&e))?;
            let soft = filled(&f.soft_limit)
                .map(|s| {
                    s.parse::<f64>()
                        .map_err(|_| "soft limit must be a number (empty for none)".to_owned())
                })
                .transpose()?;
            NewBudget::with_soft_limit(amount, filled(&f.currency).map(str::to_owned), period, soft)
                .map(Change::Budget)
                .map_err(|e| message(&e))
        }
        "budget_delete" => Ok(Change::NoBudget),
        _ => Err("no such setting".to_owned()),
    }
}

/// `POST /ui/tenants/{id}`: changes one setting (`what`), then shows the
/// tenant again (303); bad input shows the page with the reason (400) and
/// changes nothing.
pub(crate) async fn change(
    _op: Operator,
    State(ui): State<Ui>,
    Path(raw): Path<String>,
    Form(f): Form<ChangeForm>,
) -> Response {
    let t = match tenant_of(&ui, &raw).await {
        Ok(t) => t,
        Err(res) => return res,
    };
    let change = match parse_change(&f) {
        Ok(c) => c,
        Err(e) => return tenant_page(&ui, t, None, Some((StatusCode::BAD_REQUEST, e))).await,
    };
    let s = &ui.state;
    let scope = BudgetScope::Tenant(t.name.clone());
    let done = match change {
        Change::Tenant(update) => s
            .scheduling
            .update_tenant(&admin_actor(), &t.id, update)
            .await
            .map(|_| {
                // The tenant's tier applies to its keys' next requests on this node.
                s.tiers.forget_tenant_tiers();
            }),
        Change::Budget(new) => s
            .admission
            .set_budget(&admin_actor(), scope, new)
            .await
            .map(|_| ()),
        Change::NoBudget => s.admission.delete_budget(&admin_actor(), &scope).await,
    };
    match done {
        Ok(()) => see_other(&format!(
            "/ui/tenants/{}?saved={}",
            form_encode(t.id.as_str()),
            form_encode(&f.what)
        )),
        Err(e) => match refusal(&e) {
            Some(status) => {
                // The tenant exists: what is not found is what the form named.
                let status = if status == StatusCode::NOT_FOUND {
                    StatusCode::BAD_REQUEST
                } else {
                    status
                };
                tenant_page(&ui, t, None, Some((status, message(&e)))).await
            }
            None => failed(&e),
        },
    }
}
