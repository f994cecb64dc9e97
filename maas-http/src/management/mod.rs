//! The management API (seed 003) under `/api/v1`, for operators: tenants,
//! fair share, capacity, tiers, models, audit. Every route, and every path
//! that is not a route, requires `Authorization: Bearer <admin token>`:
//! without it the answer is 401, with no hint whether the path exists.
//! Errors are RFC 9457 problem details ([`Problem`]).
//!
//! Lists are JSON arrays; paginated ones (tenants, keys, audit) answer
//! `{"data": [...], "cursor": ...}` (`cursor` is `null` on the last page).
//!
//! `GET /api/v1/openapi.json` serves the OpenAPI 3.1 document of every
//! router of this crate ([`crate::openapi::document`]).

// `Result<Response, Response>` is axum's handler idiom; the error is a
// response about to be sent, not worth boxing.
#![allow(clippy::result_large_err)]

pub(crate) mod problem;

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use maas_core::admission::{BudgetScope, BudgetView, NewBudget};
use maas_core::audit::AuditQuery;
use maas_core::counter::Period;
use maas_core::identity::{Identity, StaticTokens};
use maas_core::mcp::{McpServers, NewMcpServer};
use maas_core::projects::Projects;
use maas_core::rootkeys::RootKeys;
use maas_core::scheduling::Scheduling;
use maas_core::tier::{NewTier, TierService, TierUpdate};
use maas_core::usage::{Granularity, GroupBy, TimeRange, UsageLedger, UsageScope};
use maas_core::webhook::{Delivery, Event, NewWebhook, Webhook, Webhooks};
use maas_core::{
    Actor, AdmissionLimits, CacheSettings, Error, KeyId, KeyQuery, KeyUpdate, KeyspaceId,
    ModelService, ModelUpdate, NewModel, NewTenant, PageRequest, Patch, Storage, TenantId,
    TenantUpdate, Timestamp, UserKeys,
};
use serde::{Deserialize, Serialize};
use utoipa::openapi::OpenApi;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::common::{ApiJson, Health, HttpConfig, RequestId, is_admin, with_common_layers};
pub use problem::{FieldProblem, PROBLEM_JSON, Problem, ProblemDetails};

/// What the management API serves from.
#[derive(Debug, Clone)]
pub struct ManagementState {
    /// The admin token's check (constant-time, over keyed hashes).
    admin: Arc<StaticTokens>,
    /// Fair share, capacity and tenants.
    pub scheduling: Scheduling,
    /// Tiers.
    pub tiers: TierService,
    /// Models.
    pub models: ModelService,
    /// API keys of tenants (the user keyspace: a tenant's key is served as
    /// that tenant).
    pub user_keys: UserKeys,
    /// Usage and costs.
    pub usage: UsageLedger,
    /// Root keys of the Unkey-compatible API.
    pub root_keys: RootKeys,
    /// Projects (seed 001).
    pub projects: Projects,
    /// MCP servers.
    pub mcp: McpServers,
    /// The store (health, audit).
    pub storage: Storage,
    /// Admission limits (budgets).
    pub admission: AdmissionLimits,
    /// Webhooks.
    pub webhooks: Webhooks,
    /// The gateway whose pools of upstreams `/stats` shows and whose
    /// recent answers the dashboard shows (see [`Self::with_gateway`]).
    pub gateway: Option<maas_core::Gateway>,
}

/// The services the management API drives.
#[derive(Debug, Clone)]
pub struct ManagementServices {
    /// Fair share, capacity and tenants.
    pub scheduling: Scheduling,
    /// Tiers.
    pub tiers: TierService,
    /// Models.
    pub models: ModelService,
    /// API keys of tenants.
    pub user_keys: UserKeys,
    /// Usage and costs.
    pub usage: UsageLedger,
    /// Root keys of the Unkey-compatible API.
    pub root_keys: RootKeys,
    /// Projects (seed 001).
    pub projects: Projects,
    /// MCP servers.
    pub mcp: McpServers,
    /// The store.
    pub storage: Storage,
    /// Admission limits: budgets (share the gateway's, so a budget set here
    /// applies to its next request).
    pub admission: AdmissionLimits,
    /// Webhooks.
    pub webhooks: Webhooks,
}

impl ManagementState {
    /// The state, accepting `admin_token` as the bearer of every route.
    pub fn new(admin_token: &str, services: ManagementServices) -> maas_core::Result<Self> {
        if admin_token.len() < 16 {
            return Err(Error::invalid(
                "admin_token",
                "must be at least 16 characters",
            ));
        }
        let admin = StaticTokens::new([(
            admin_token.to_owned(),
            Identity::new("admin", ["maas:admin"]),
        )])?;
        let ManagementServices {
            scheduling,
            tiers,
            models,
            user_keys,
            usage,
            mcp,
            root_keys,
            projects,
            storage,
            admission,
            webhooks,
        } = services;
        Ok(ManagementState {
            admin: Arc::new(admin),
            scheduling,
            tiers,
            models,
            user_keys,
            usage,
            mcp,
            root_keys,
            projects,
            storage,
            admission,
            webhooks,
            gateway: None,
        })
    }

    /// The identity of `token` when it is the admin token (compared in
    /// constant time, over keyed hashes); `None` otherwise.
    pub async fn admin_identity(&self, token: &str) -> Option<Identity> {
        use maas_core::Authenticator;
        self.admin.authenticate(token).await.ok().flatten()
    }

    /// The state of the gateway's pools of upstreams, by model (none
    /// without [`Self::with_gateway`]).
    pub fn upstream_pools(&self) -> Vec<maas_core::upstream::PoolSnapshot> {
        self.gateway
            .as_ref()
            .map(|g| g.upstreams().snapshot())
            .unwrap_or_default()
    }

    /// Shows `gateway`'s upstreams' health in `/stats` and its recent
    /// answers on the dashboard.
    pub fn with_gateway(mut self, gateway: maas_core::Gateway) -> Self {
        self.gateway = Some(gateway);
        self
    }
}

/// Where the management API is served.
pub const BASE: &str = "/api/v1";

/// The routes and their OpenAPI operations, from the same `#[utoipa::path]`
/// attributes: a route cannot be served undocumented, nor documented
/// unserved.
fn api() -> OpenApiRouter<ManagementState> {
    let api = OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(openapi_json))
        .routes(routes!(list_tenants, create_tenant))
        .routes(routes!(get_tenant))
        .routes(routes!(set_tenant_weight))
        .routes(routes!(set_tenant_quota))
        .routes(routes!(set_tenant_group))
        .routes(routes!(set_tenant_tier))
        .routes(routes!(
            get_tenant_budget,
            set_tenant_budget,
            delete_tenant_budget
        ))
        .routes(routes!(get_key_budget, set_key_budget, delete_key_budget))
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(delete_webhook))
        .routes(routes!(webhook_deliveries))
        .routes(routes!(test_webhook))
        .routes(routes!(fairshare_live))
        .routes(routes!(list_groups, create_group))
        .routes(routes!(set_group_weight))
        .routes(routes!(stats))
        .routes(routes!(get_capacity, set_capacity))
        .routes(routes!(audit))
        .routes(routes!(list_tiers, create_tier))
        .routes(routes!(get_tier, update_tier, delete_tier))
        .routes(routes!(list_models, create_model))
        .routes(routes!(get_model, update_model, delete_model))
        .routes(routes!(set_model_cache))
        .routes(routes!(create_tenant_key))
        .routes(routes!(list_keys))
        .routes(routes!(delete_key))
        .routes(routes!(set_key_disabled))
        .routes(routes!(usage_totals))
        .routes(routes!(usage_keys))
        .routes(routes!(usage_models))
        .routes(routes!(usage_series))
        .routes(routes!(usage_series_tenants))
        .routes(routes!(usage_cache))
        .routes(routes!(costs))
        .routes(routes!(list_projects, create_project))
        .routes(routes!(get_project, update_project, delete_project))
        .routes(routes!(list_project_keys, create_project_key))
        .routes(routes!(revoke_project_key))
        .routes(routes!(list_data_planes))
        .routes(routes!(get_data_plane, delete_data_plane))
        .routes(routes!(deploy))
        .routes(routes!(list_root_keys, create_root_key))
        .routes(routes!(delete_root_key))
        .routes(routes!(list_mcp, create_mcp))
        .routes(routes!(get_mcp, update_mcp, delete_mcp));
    OpenApiRouter::new().nest(BASE, api)
}

/// The management API under `/api/v1`, behind the admin token, with
/// request ids, tracing and the body limit of `config`.
pub fn router(state: ManagementState, config: &HttpConfig) -> Router {
    let (routes, _) = api().split_for_parts();
    let app = routes
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), require_admin))
        .with_state(state);
    with_common_layers(app, config)
}

/// The OpenAPI operations of [`router`]'s routes (tag `management`, the
/// admin token on each).
pub fn openapi() -> OpenApi {
    let mut doc = api().into_openapi();
    crate::openapi::finish_api(&mut doc, crate::openapi::MANAGEMENT);
    doc
}

type Body<T> = ApiJson<T, Problem>;
type Reply = Result<Response, Response>;

fn fail(id: &RequestId) -> impl Fn(Error) -> Response + '_ {
    move |e| problem::render(&e, id)
}

fn ok<T: serde::Serialize>(v: T) -> Reply {
    Ok(Json(v).into_response())
}

fn created<T: serde::Serialize>(v: T) -> Reply {
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// A page of a paginated list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Paged<T> {
    /// The items of this page.
    pub data: Vec<T>,
    /// The cursor of the next page (`cursor=`), `null` on the last page.
    pub cursor: Option<String>,
}

/// A paginated list: `{"data": [...], "cursor": ...}`.
fn paged<T: serde::Serialize>(data: Vec<T>, cursor: Option<String>) -> Reply {
    ok(Paged { data, cursor })
}

fn admin_actor() -> Actor {
    Actor::new("admin")
}

/// Every request, routed or not, needs the admin token first.
async fn require_admin(
    State(s): State<ManagementState>,
    id: RequestId,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    if !is_admin(&s.admin, &parts).await {
        return problem::render(
            &Error::Unauthenticated {
                reason: "admin token required".into(),
            },
            &id,
        );
    }
    next.run(Request::from_parts(parts, body)).await
}

/// The OpenAPI 3.1 document of every API of maas-http (this one, the MaaS
/// user API and the Unkey-compatible API), one tag each.
#[utoipa::path(get, path = "/openapi.json", responses(
    (status = 200, description = "The document", content_type = "application/json", body = Object),
))]
async fn openapi_json() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        crate::openapi::document_json(),
    )
        .into_response()
}

async fn not_found(id: RequestId, uri: axum::extract::OriginalUri) -> Response {
    problem::render(
        &Error::not_found("route", crate::common::unrouted_path(&uri)),
        &id,
    )
}

/// Checks that the service and its store are up.
#[utoipa::path(get, path = "/health", responses(
    (status = 200, description = "Up", body = Health),
    (status = 503, description = "The store is unavailable", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn health(State(s): State<ManagementState>, id: RequestId) -> Reply {
    s.storage
        .records
        .get_record("setting", "health")
        .await
        .map_err(fail(&id))?;
    ok(Health::OK)
}

// ----- tenants --------------------------------------------------------------

/// Pagination: `cursor` from the previous page, `limit` items (default
/// and most 1000).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PageParams {
    /// The previous page's `cursor`.
    #[serde(default)]
    cursor: Option<String>,
    /// How many items (1..=1000).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

fn page_of(p: &PageParams) -> Result<PageRequest, Error> {
    match p.limit {
        Some(0) => Err(Error::invalid("limit", "must be at least 1")),
        Some(l) if l > maas_core::storage::MAX_PAGE_SIZE => Err(Error::invalid(
            "limit",
            format!("must be at most {}", maas_core::storage::MAX_PAGE_SIZE),
        )),
        l => Ok(PageRequest {
            cursor: p.cursor.clone(),
            limit: l.unwrap_or(0),
        }),
    }
}

fn params<T: serde::de::DeserializeOwned>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
    id: &RequestId,
) -> Result<T, Response> {
    q.map(|Query(v)| v)
        .map_err(|e| problem::render(&Error::invalid("query", e.body_text()), id))
}

fn tenant_id(raw: &str, id: &RequestId) -> Result<TenantId, Response> {
    TenantId::parse(raw).map_err(|_| problem::render(&Error::not_found("tenant", raw), id))
}

/// Lists tenants, a page at a time.
#[utoipa::path(get, path = "/tenants", params(PageParams), responses(
    (status = 200, description = "A page of tenants", body = Paged<maas_core::Tenant>),
))]
async fn list_tenants(
    State(s): State<ManagementState>,
    id: RequestId,
    q: Result<Query<PageParams>, axum::extract::rejection::QueryRejection>,
) -> Reply {
    let p = params(q, &id)?;
    let page = page_of(&p).map_err(fail(&id))?;
    let got = s
        .scheduling
        .tenants()
        .list(&page)
        .await
        .map_err(fail(&id))?;
    paged(got.items, got.cursor)
}

/// Creates a tenant.
#[utoipa::path(post, path = "/tenants", request_body = NewTenant, responses(
    (status = 201, description = "The tenant", body = maas_core::Tenant),
    (status = 409, description = "A tenant of that name exists", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn create_tenant(
    State(s): State<ManagementState>,
    id: RequestId,
    body: Body<NewTenant>,
) -> Reply {
    let t = s
        .scheduling
        .create_tenant(&admin_actor(), body.0)
        .await
        .map_err(fail(&id))?;
    // A gateway request may have found no tenant of that name: not any more.
    s.tiers.forget_tenant_tiers();
    created(t)
}

/// A tenant.
#[utoipa::path(get, path = "/tenants/{id}", params(("id" = String, Path, description = "The tenant id")), responses(
    (status = 200, description = "The tenant", body = maas_core::Tenant),
    (status = 404, description = "No such tenant", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn get_tenant(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
) -> Reply {
    let tid = tenant_id(&raw, &id)?;
    ok(s.scheduling.tenants().get(&tid).await.map_err(fail(&id))?)
}

async fn update_tenant(
    s: &ManagementState,
    id: &RequestId,
    raw: &str,
    update: TenantUpdate,
) -> Reply {
    let tid = tenant_id(raw, id)?;
    let t = s
        .scheduling
        .update_tenant(&admin_actor(), &tid, update)
        .await
        .map_err(fail(id))?;
    // The tenant's tier applies to its keys' next requests on this node.
    s.tiers.forget_tenant_tiers();
    ok(t)
}

/// A weight: `{"weight": 1..=1000000}`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = WeightChange)]
struct Weight {
    /// The new weight.
    #[schema(minimum = 1, maximum = 1_000_000)]
    weight: i64,
}

/// Sets a tenant's fair-share weight.
#[utoipa::path(patch, path = "/tenants/{id}/weight", params(("id" = String, Path, description = "The tenant id")), request_body = Weight, responses(
    (status = 200, description = "The tenant", body = maas_core::Tenant),
    (status = 404, description = "No such tenant", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn set_tenant_weight(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
    body: Body<Weight>,
) -> Reply {
    let weight = maas_core::scheduling::check_weight(body.0.weight).map_err(fail(&id))?;
    let update = TenantUpdate {
        weight: Some(weight),
        ..TenantUpdate::default()
    };
    update_tenant(&s, &id, &raw, update).await
}

/// A tenant's quota: `{"tokens_per_minute": n}`, `null` for unlimited.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = QuotaChange)]
struct Quota {
    /// Tokens per minute (at least 1), `null` for unlimited. Required: a
    /// body without it (a misspelt field) must not lift the quota.
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 1, required = true)]
    tokens_per_minute: Patch<i64>,
}

/// Sets a tenant's tokens-per-minute quota (`null`: unlimited).
#[utoipa::path(put, path = "/tenants/{id}/quota", params(("id" = String, Path, description = "The tenant id")), request_body = Quota, responses(
    (status = 200, description = "The tenant", body = maas_core::Tenant),
    (status = 404, description = "No such tenant", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn set_tenant_quota(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
    body: Body<Quota>,
) -> Reply {
    let quota = match body.0.tokens_per_minute {
        Patch::Keep => {
            return Err(problem::render(
                &Error::invalid("tokens_per_minute", "is required (null for unlimited)"),
                &id,
            ));
        }
        Patch::Clear => Patch::Clear,
        Patch::Set(n) => Patch::Set(
            u64::try_from(n)
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    Error::invalid(
                        "tokens_per_minute",
                        "must be at least 1 (null for unlimited)",
                    )
                })
                .map_err(fail(&id))?,
        ),
    };
    let update = TenantUpdate {
        tokens_per_minute: quota,
        ..TenantUpdate::default()
    };
    update_tenant(&s, &id, &raw, update).await
}

/// A tenant's tier: `{"tier": name}`, `null` for none.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = TierChange)]
struct TierChange {
    /// An existing tier's name, or `null`: none (the tenant's keys are then
    /// served at the lowest-level tier). Required: a body without it (a
    /// misspelt field) must not clear the tier.
    #[serde(default)]
    #[schema(value_type = Option<String>, required = true)]
    tier: Patch<String>,
}

/// Sets the tier a tenant's keys are served at (`null`: the lowest-level
/// tier). Audited as `tenant.update`.
#[utoipa::path(put, path = "/tenants/{id}/tier", params(("id" = String, Path, description = "The tenant id")), request_body = TierChange, responses(
    (status = 200, description = "The tenant", body = maas_core::Tenant),
    (status = 400, description = "No tier of that name, or no `tier` field", body = ProblemDetails, content_type = PROBLEM_JSON),
    (status = 404, description = "No such tenant", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn set_tenant_tier(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
    body: Body<TierChange>,
) -> Reply {
    if body.0.tier.is_keep() {
        return Err(problem::render(
            &Error::invalid("tier", "is required (null for none)"),
            &id,
        ));
    }
    let update = TenantUpdate {
        tier: body.0.tier,
        ..TenantUpdate::default()
    };
    update_tenant(&s, &id, &raw, update).await
}

/// A tenant's fair-share group: `{"group": name}`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = GroupChange)]
struct Group {
    /// An existing group's name.
    group: String,
}

/// Moves a tenant to another fair-share group.
#[utoipa::path(patch, path = "/tenants/{id}/group", params(("id" = String, Path, description = "The tenant id")), request_body = Group, responses(
    (status = 200, description = "The tenant", body = maas_core::Tenant),
    (status = 404, description = "No such tenant", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn set_tenant_group(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
    body: Body<Group>,
) -> Reply {
    let update = TenantUpdate {
        group: Some(body.0.group),
        ..TenantUpdate::default()
    };
    update_tenant(&s, &id, &raw, update).await
}

// ----- budgets --------------------------------------------------------------

/// A budget to set: `{"amount", "currency", "period", "soft_limit"}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BudgetChange)]
struct BudgetBody {
    /// The most that may be spent per period (greater than 0).
    #[schema(example = 5.0)]
    amount: f64,
    /// ISO 4217 code; default `USD`. Only models priced in it count.
    #[serde(default)]
    #[schema(example = "USD")]
    currency: Option<String>,
    /// When it starts over: `daily`, `weekly` (Monday) or `monthly`, at 00:00 UTC.
    #[schema(value_type = String, example = "daily")]
    period: Period,
    /// Past this much spent or reserved, `budget.soft_limit_reached` is
    /// raised (greater than 0, less than `amount`); none if absent.
    #[serde(default)]
    #[schema(example = 4.0)]
    soft_limit: Option<f64>,
}

/// The budget scope of a tenant (by its name) or of a tenant's key.
async fn tenant_scope(
    s: &ManagementState,
    raw: &str,
    id: &RequestId,
) -> Result<BudgetScope, Response> {
    let tid = tenant_id(raw, id)?;
    let tenant = s.scheduling.tenants().get(&tid).await.map_err(fail(id))?;
    Ok(BudgetScope::Tenant(tenant.name))
}

async fn key_scope(
    s: &ManagementState,
    raw: &str,
    id: &RequestId,
) -> Result<BudgetScope, Response> {
    let key_id = tenant_key(s, raw, id).await?;
    Ok(BudgetScope::Key(key_id.to_string()))
}

async fn get_budget(s: &ManagementState, scope: &BudgetScope, id: &RequestId) -> Reply {
    ok(BudgetView::from(
        s.admission.budget_status(scope).await.map_err(fail(id))?,
    ))
}

async fn set_budget(
    s: &ManagementState,
    scope: BudgetScope,
    body: BudgetBody,
    id: &RequestId,
) -> Reply {
    let new = NewBudget::with_soft_limit(body.amount, body.currency, body.period, body.soft_limit)
        .map_err(fail(id))?;
    s.admission
        .set_budget(&admin_actor(), scope.clone(), new)
        .await
        .map_err(fail(id))?;
    get_budget(s, &scope, id).await
}

async fn delete_budget(s: &ManagementState, scope: &BudgetScope, id: &RequestId) -> Reply {
    s.admission
        .delete_budget(&admin_actor(), scope)
        .await
        .map_err(fail(id))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A tenant's budget, with what is spent and reserved of it in this period.
#[utoipa::path(get, path = "/tenants/{id}/budget", params(("id" = String, Path, description = "The tenant id")), responses(
    (status = 200, description = "The budget", body = BudgetView),
    (status = 404, description = "No such tenant, or it has no budget", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn get_tenant_budget(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
) -> Reply {
    let scope = tenant_scope(&s, &raw, &id).await?;
    get_budget(&s, &scope, &id).await
}

/// Sets (creates or replaces) a tenant's budget; audited.
#[utoipa::path(put, path = "/tenants/{id}/budget", params(("id" = String, Path, description = "The tenant id")), request_body = BudgetBody, responses(
    (status = 200, description = "The budget", body = BudgetView),
    (status = 400, description = "Bad input, naming the field; nothing changed", body = ProblemDetails, content_type = PROBLEM_JSON),
    (status = 404, description = "No such tenant", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn set_tenant_budget(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
    body: Body<BudgetBody>,
) -> Reply {
    let scope = tenant_scope(&s, &raw, &id).await?;
    set_budget(&s, scope, body.0, &id).await
}

/// Removes a tenant's budget; audited.
#[utoipa::path(delete, path = "/tenants/{id}/budget", params(("id" = String, Path, description = "The tenant id")), responses(
    (status = 204, description = "Removed"),
    (status = 404, description = "No such tenant, or it has no budget", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn delete_tenant_budget(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
) -> Reply {
    let scope = tenant_scope(&s, &raw, &id).await?;
    delete_budget(&s, &scope, &id).await
}

/// A tenant key's budget, with what is spent and reserved of it in this period.
#[utoipa::path(get, path = "/keys/{id}/budget", params(("id" = String, Path, description = "The key id")), responses(
    (status = 200, description = "The budget", body = BudgetView),
    (status = 404, description = "No such key, or it has no budget", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn get_key_budget(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
) -> Reply {
    let scope = key_scope(&s, &raw, &id).await?;
    get_budget(&s, &scope, &id).await
}

/// Sets (creates or replaces) a tenant key's budget; audited.
#[utoipa::path(put, path = "/keys/{id}/budget", params(("id" = String, Path, description = "The key id")), request_body = BudgetBody, responses(
    (status = 200, description = "The budget", body = BudgetView),
    (status = 400, description = "Bad input, naming the field; nothing changed", body = ProblemDetails, content_type = PROBLEM_JSON),
    (status = 404, description = "No such key", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn set_key_budget(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
    body: Body<BudgetBody>,
) -> Reply {
    let scope = key_scope(&s, &raw, &id).await?;
    set_budget(&s, scope, body.0, &id).await
}

/// Removes a tenant key's budget; audited.
#[utoipa::path(delete, path = "/keys/{id}/budget", params(("id" = String, Path, description = "The key id")), responses(
    (status = 204, description = "Removed"),
    (status = 404, description = "No such key, or it has no budget", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn delete_key_budget(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
) -> Reply {
    let scope = key_scope(&s, &raw, &id).await?;
    delete_budget(&s, &scope, &id).await
}

// ----- webhooks -------------------------------------------------------------

/// A webhook as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WebhookOut)]
struct WebhookOut {
    /// Its id (`whk_…`).
    id: String,
    /// Where events are posted.
    url: String,
    /// What it receives.
    events: Vec<maas_core::webhook::EventType>,
    /// When it was created (unix ms).
    #[schema(value_type = i64)]
    created_at: Timestamp,
}

impl From<Webhook> for WebhookOut {
    fn from(w: Webhook) -> Self {
        WebhookOut {
            id: w.id,
            url: w.url,
            events: w.events,
            created_at: w.created_at,
        }
    }
}

/// A new webhook, with its signing secret shown this once.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CreatedWebhook)]
struct CreatedWebhookOut {
    /// The webhook.
    webhook: WebhookOut,
    /// The signing secret (`whsec_…`): each delivery carries
    /// `x-maas-signature: sha256=<hex HMAC-SHA256 of the raw body with it>`.
    /// Not stored: keep it.
    secret: String,
}

/// Subscribes a URL to events; the signing secret is in this answer only.
#[utoipa::path(post, path = "/webhooks", request_body = NewWebhook, responses(
    (status = 201, description = "The webhook, with its secret", body = CreatedWebhookOut),
    (status = 400, description = "Bad input, naming the field; nothing changed", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn create_webhook(
    State(s): State<ManagementState>,
    id: RequestId,
    body: Body<NewWebhook>,
) -> Reply {
    let c = s
        .webhooks
        .create(&admin_actor(), body.0)
        .await
        .map_err(fail(&id))?;
    created(CreatedWebhookOut {
        webhook: c.webhook.into(),
        secret: c.secret,
    })
}

/// Every webhook (never their secrets).
#[utoipa::path(get, path = "/webhooks", responses(
    (status = 200, description = "The webhooks", body = Vec<WebhookOut>),
))]
async fn list_webhooks(State(s): State<ManagementState>, id: RequestId) -> Reply {
    let all = s.webhooks.list().await.map_err(fail(&id))?;
    ok(all.into_iter().map(WebhookOut::from).collect::<Vec<_>>())
}

/// Removes a webhook; its pending deliveries are dropped.
#[utoipa::path(delete, path = "/webhooks/{id}", params(("id" = String, Path, description = "The webhook id")), responses(
    (status = 204, description = "Removed"),
    (status = 404, description = "No such webhook", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn delete_webhook(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
) -> Reply {
    s.webhooks
        .delete(&admin_actor(), &raw)
        .await
        .map_err(fail(&id))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A webhook's deliveries, each with every attempt (status code, error, time).
#[utoipa::path(get, path = "/webhooks/{id}/deliveries", params(("id" = String, Path, description = "The webhook id")), responses(
    (status = 200, description = "The deliveries, oldest event first", body = Vec<Delivery>),
    (status = 404, description = "No such webhook", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn webhook_deliveries(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
) -> Reply {
    ok(s.webhooks.deliveries(&raw).await.map_err(fail(&id))?)
}

/// Sends a `webhook.test` event to the webhook (delivered in the background).
#[utoipa::path(post, path = "/webhooks/{id}/test", params(("id" = String, Path, description = "The webhook id")), responses(
    (status = 202, description = "The event, queued", body = Event),
    (status = 404, description = "No such webhook", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn test_webhook(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
) -> Reply {
    let event = s.webhooks.test(&raw).await.map_err(fail(&id))?;
    Ok((StatusCode::ACCEPTED, Json(event)).into_response())
}

// ----- fair share, capacity -------------------------------------------------

/// The live state of fair share: slots, requests in flight and queued, per group and tenant.
#[utoipa::path(get, path = "/fairshare/live", responses(
    (status = 200, description = "The snapshot", body = maas_core::Snapshot),
))]
async fn fairshare_live(State(s): State<ManagementState>) -> Reply {
    ok(s.scheduling.live())
}

/// A new fair-share group.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = NewFairShareGroup)]
struct NewGroup {
    /// Unique name.
    name: String,
    /// Weight among groups.
    #[schema(minimum = 1, maximum = 1_000_000)]
    weight: i64,
}

/// Creates a fair-share group.
#[utoipa::path(post, path = "/fairshare/groups", request_body = NewGroup, responses(
    (status = 201, description = "The group", body = maas_core::scheduling::FairShareGroup),
    (status = 409, description = "A group of that name exists", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn create_group(
    State(s): State<ManagementState>,
    id: RequestId,
    body: Body<NewGroup>,
) -> Reply {
    let g = s
        .scheduling
        .create_group(&admin_actor(), &body.0.name, body.0.weight)
        .await
        .map_err(fail(&id))?;
    created(g)
}

/// Lists the fair-share groups.
#[utoipa::path(get, path = "/fairshare/groups", responses(
    (status = 200, description = "The groups", body = Vec<maas_core::scheduling::FairShareGroup>),
))]
async fn list_groups(State(s): State<ManagementState>, id: RequestId) -> Reply {
    ok(s.scheduling.list_groups().await.map_err(fail(&id))?)
}

/// Sets a fair-share group's weight.
#[utoipa::path(patch, path = "/fairshare/groups/{name}/weight", params(("name" = String, Path, description = "The group's name")), request_body = Weight, responses(
    (status = 200, description = "The group", body = maas_core::scheduling::FairShareGroup),
    (status = 404, description = "No such group", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn set_group_weight(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(name): Path<String>,
    body: Body<Weight>,
) -> Reply {
    ok(s.scheduling
        .set_group_weight(&admin_actor(), &name, body.0.weight)
        .await
        .map_err(fail(&id))?)
}

/// The scheduler's totals, and each model's.
#[derive(Debug, Serialize, ToSchema)]
struct Stats {
    /// Requests holding a slot.
    in_flight: usize,
    /// Requests waiting for one.
    queued: usize,
    /// Slots (the global capacity; a model without its own has as many).
    max_in_flight: usize,
    /// Per model served since the start, by id.
    models: Vec<ModelStats>,
}

/// One model's slots and upstreams in [`Stats`].
#[derive(Debug, Serialize, ToSchema)]
struct ModelStats {
    /// The model.
    model: String,
    /// Its slots.
    max_in_flight: usize,
    /// Its requests holding a slot.
    in_flight: usize,
    /// Its requests waiting for one.
    queued: usize,
    /// Its upstreams: health, requests in flight, attempts and errors (as
    /// this node saw them).
    upstreams: Vec<maas_core::upstream::UpstreamSnapshot>,
}

/// Live scheduler totals: requests in flight and queued, and the slots;
/// per model, its slots, queue and upstreams.
#[utoipa::path(get, path = "/stats", responses((status = 200, description = "The totals", body = Stats)))]
async fn stats(State(s): State<ManagementState>) -> Reply {
    let live = s.scheduling.live();
    let mut pools = s.upstream_pools();
    let models = live
        .models
        .into_iter()
        .map(|m| {
            let upstreams = pools
                .iter_mut()
                .find(|p| p.model == m.model)
                .map(|p| std::mem::take(&mut p.upstreams))
                .unwrap_or_default();
            ModelStats {
                model: m.model,
                max_in_flight: m.max_in_flight,
                in_flight: m.in_flight,
                queued: m.queued,
                upstreams,
            }
        })
        .collect();
    ok(Stats {
        in_flight: live.in_flight,
        queued: live.queued,
        max_in_flight: live.max_in_flight,
        models,
    })
}

/// The number of requests that may run at once.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CapacitySetting)]
struct CapacityOut {
    /// Slots.
    max_in_flight: usize,
}

/// The scheduler's capacity.
#[utoipa::path(get, path = "/capacity", responses((status = 200, description = "The capacity", body = CapacityOut)))]
async fn get_capacity(State(s): State<ManagementState>) -> Reply {
    ok(CapacityOut {
        max_in_flight: s.scheduling.capacity(),
    })
}

/// A new capacity: `{"max_in_flight": 1..=100000}`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = CapacityChange)]
struct Capacity {
    /// Slots.
    #[schema(minimum = 1, maximum = 100_000)]
    max_in_flight: i64,
}

/// Sets the scheduler's capacity, applied at once.
#[utoipa::path(put, path = "/capacity", request_body = Capacity, responses(
    (status = 200, description = "The capacity", body = CapacityOut),
))]
async fn set_capacity(
    State(s): State<ManagementState>,
    id: RequestId,
    body: Body<Capacity>,
) -> Reply {
    let max = s
        .scheduling
        .set_capacity(&admin_actor(), body.0.max_in_flight)
        .await
        .map_err(fail(&id))?;
    ok(CapacityOut { max_in_flight: max })
}

// ----- audit ----------------------------------------------------------------

/// The audit log, newest first, a page at a time.
#[utoipa::path(get, path = "/audit", params(PageParams), responses(
    (status = 200, description = "A page of audit events", body = Paged<maas_core::AuditEvent>),
))]
async fn audit(
    State(s): State<ManagementState>,
    id: RequestId,
    q: Result<Query<PageParams>, axum::extract::rejection::QueryRejection>,
) -> Reply {
    let p = params(q, &id)?;
    let page = page_of(&p).map_err(fail(&id))?;
    let before_seq = match &page.cursor {
        None => None,
        Some(c) => Some(c.parse::<u64>().map_err(|_| {
            problem::render(
                &Error::invalid("cursor", "is not a cursor of this list"),
                &id,
            )
        })?),
    };
    let got = s
        .storage
        .audit
        .list_audit(&AuditQuery {
            before_seq,
            limit: page.limit,
        })
        .await
        .map_err(fail(&id))?;
    paged(got.items, got.cursor)
}

// ----- tiers ----------------------------------------------------------------

/// Lists tiers.
#[utoipa::path(get, path = "/tiers", responses(
    (status = 200, description = "The tiers", body = Vec<maas_core::Tier>),
))]
async fn list_tiers(State(s): State<ManagementState>, id: RequestId) -> Reply {
    ok(s.tiers.list().await.map_err(fail(&id))?)
}

/// Creates a tier.
#[utoipa::path(post, path = "/tiers", request_body = NewTier, responses(
    (status = 201, description = "The tier", body = maas_core::Tier),
    (status = 409, description = "A tier of that name exists", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn create_tier(
    State(s): State<ManagementState>,
    id: RequestId,
    body: Body<NewTier>,
) -> Reply {
    created(
        s.tiers
            .create(&admin_actor(), body.0)
            .await
            .map_err(fail(&id))?,
    )
}

/// A tier.
#[utoipa::path(get, path = "/tiers/{name}", params(("name" = String, Path, description = "The tier's name")), responses(
    (status = 200, description = "The tier", body = maas_core::Tier),
    (status = 404, description = "No such tier", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn get_tier(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(name): Path<String>,
) -> Reply {
    ok(s.tiers.get(&name).await.map_err(fail(&id))?)
}

/// Changes a tier; absent fields are kept.
#[utoipa::path(put, path = "/tiers/{name}", params(("name" = String, Path, description = "The tier's name")), request_body = TierUpdate, responses(
    (status = 200, description = "The tier", body = maas_core::Tier),
    (status = 404, description = "No such tier", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn update_tier(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(name): Path<String>,
    body: Body<TierUpdate>,
) -> Reply {
    ok(s.tiers
        .update(&admin_actor(), &name, body.0)
        .await
        .map_err(fail(&id))?)
}

/// Deletes a tier.
#[utoipa::path(delete, path = "/tiers/{name}", params(("name" = String, Path, description = "The tier's name")), responses(
    (status = 204, description = "Deleted"),
    (status = 404, description = "No such tier", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn delete_tier(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(name): Path<String>,
) -> Reply {
    s.tiers
        .delete(&admin_actor(), &name)
        .await
        .map_err(fail(&id))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ----- models ---------------------------------------------------------------

/// A model as the management API shows it (`url` for the upstream).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Model)]
struct ModelOut<'a> {
    /// Unique id.
    id: &'a str,
    /// Display name.
    name: &'a str,
    /// Where requests for it are sent: the first of `upstreams`.
    url: &'a str,
    /// The servers requests are balanced over.
    #[schema(value_type = Vec<maas_core::model::Upstream>)]
    upstreams: std::borrow::Cow<'a, [maas_core::model::Upstream]>,
    /// Its own fair-share capacity, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_in_flight: Option<u32>,
    /// The models served instead when it cannot serve (in order).
    fallbacks: &'a [String],
    /// Its fair-share capacity in force: `max_in_flight`, else the sum of
    /// its upstreams' limits, else the global capacity (`null`).
    capacity: Option<usize>,
    /// The APIs its upstream speaks.
    api: &'a [maas_core::model::ModelApi],
    /// Who owns it.
    owned_by: &'a str,
    /// When it was published.
    created: Timestamp,
    /// Whether it is ready to serve.
    ready: bool,
    /// The tiers allowed to use it; empty for every tier that allows it.
    tiers: &'a [String],
    /// Its price, if it has one.
    pricing: Option<&'a maas_core::Pricing>,
    /// Response-cache settings.
    cache: CacheSettings,
    /// When it was registered.
    created_at: Timestamp,
    /// When it was last changed.
    updated_at: Timestamp,
    /// Optimistic-concurrency version.
    version: u64,
}

fn model_json(m: &maas_core::Model) -> ModelOut<'_> {
    let maas_core::Model {
        id,
        name,
        upstream_url,
        upstreams: _,
        max_in_flight,
        fallbacks,
        api,
        owned_by,
        created,
        ready,
        tiers,
        pricing,
        cache,
        created_at,
        updated_at,
        version,
    } = m;
    ModelOut {
        id,
        name,
        url: upstream_url,
        upstreams: m.pool(),
        max_in_flight: *max_in_flight,
        fallbacks,
        capacity: m.capacity(),
        api,
        owned_by,
        created: *created,
        ready: *ready,
        tiers,
        pricing: pricing.as_ref(),
        cache: *cache,
        created_at: *created_at,
        updated_at: *updated_at,
        version: *version,
    }
}

/// Lists the model catalog.
#[utoipa::path(get, path = "/models", responses(
    (status = 200, description = "The models", body = Vec<ModelOut>),
))]
async fn list_models(State(s): State<ManagementState>, id: RequestId) -> Reply {
    let models = s.models.list().await.map_err(fail(&id))?;
    let data: Vec<ModelOut<'_>> = models.iter().map(model_json).collect();
    ok(data)
}

/// Registers a model.
#[utoipa::path(post, path = "/models", request_body = NewModel, responses(
    (status = 201, description = "The model", body = ModelOut),
    (status = 409, description = "A model of that id exists", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn create_model(
    State(s): State<ManagementState>,
    id: RequestId,
    body: Body<NewModel>,
) -> Reply {
    let m = s
        .models
        .create(&admin_actor(), body.0)
        .await
        .map_err(fail(&id))?;
    created(model_json(&m))
}

/// A model.
#[utoipa::path(get, path = "/models/{id}", params(("id" = String, Path, description = "The model id")), responses(
    (status = 200, description = "The model", body = ModelOut),
    (status = 404, description = "No such model", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn get_model(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(mid): Path<String>,
) -> Reply {
    ok(model_json(&s.models.get(&mid).await.map_err(fail(&id))?))
}

/// Changes a model; absent fields are kept.
#[utoipa::path(put, path = "/models/{id}", params(("id" = String, Path, description = "The model id")), request_body = ModelUpdate, responses(
    (status = 200, description = "The model", body = ModelOut),
    (status = 404, description = "No such model", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn update_model(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(mid): Path<String>,
    body: Body<ModelUpdate>,
) -> Reply {
    let m = s
        .models
        .update(&admin_actor(), &mid, body.0)
        .await
        .map_err(fail(&id))?;
    ok(model_json(&m))
}

/// Deletes a model.
#[utoipa::path(delete, path = "/models/{id}", params(("id" = String, Path, description = "The model id")), responses(
    (status = 204, description = "Deleted"),
    (status = 404, description = "No such model", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn delete_model(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(mid): Path<String>,
) -> Reply {
    s.models
        .delete(&admin_actor(), &mid)
        .await
        .map_err(fail(&id))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Sets a model's response-cache settings.
#[utoipa::path(put, path = "/models/{id}/cache", params(("id" = String, Path, description = "The model id")), request_body = CacheSettings, responses(
    (status = 200, description = "The model", body = ModelOut),
    (status = 404, description = "No such model", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn set_model_cache(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(mid): Path<String>,
    body: Body<CacheSettings>,
) -> Reply {
    let m = s
        .models
        .set_cache(&admin_actor(), &mid, body.0)
        .await
        .map_err(fail(&id))?;
    ok(model_json(&m))
}

// ----- keys -----------------------------------------------------------------

/// A new tenant key.
#[derive(Debug, Deserialize, ToSchema)]
struct NewTenantKey {
    /// Its name, unique among the tenant's keys.
    name: String,
}

/// A tenant's key as listed: never the secret.
#[derive(Debug, Serialize, ToSchema)]
struct TenantKey<'a> {
    /// The key's id.
    id: &'a KeyId,
    /// The prefix and first characters of the secret.
    key_prefix: &'a str,
    /// Its name.
    name: Option<&'a str>,
    /// The tenant's name.
    tenant: Option<&'a str>,
    /// Whether it verifies.
    enabled: bool,
    /// When it was created.
    created_at: Timestamp,
    /// When it last verified.
    last_used_at: Option<Timestamp>,
    /// When it expires.
    expires_at: Option<Timestamp>,
}

/// A key as listed: never the secret.
fn key_json(k: &maas_core::Key) -> TenantKey<'_> {
    TenantKey {
        id: &k.id,
        key_prefix: &k.start,
        name: k.name.as_deref(),
        tenant: k.owner_id.as_deref(),
        enabled: k.enabled,
        created_at: k.created_at,
        last_used_at: k.last_used_at,
        expires_at: k.expires,
    }
}

/// A new tenant key, with its secret shown this once.
#[derive(Debug, Serialize, ToSchema)]
struct CreatedTenantKey<'a> {
    /// The key as listed.
    key: TenantKey<'a>,
    /// The secret. It is not stored: keep it.
    secret: &'a str,
}

/// Creates an API key for a tenant; the secret is in this answer only.
#[utoipa::path(post, path = "/tenants/{id}/keys", params(("id" = String, Path, description = "The tenant id")), request_body = NewTenantKey, responses(
    (status = 201, description = "The key, with its secret", body = CreatedTenantKey),
    (status = 404, description = "No such tenant", body = ProblemDetails, content_type = PROBLEM_JSON),
    (status = 409, description = "The tenant has a key of that name", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn create_tenant_key(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
    body: Body<NewTenantKey>,
) -> Reply {
    let tid = tenant_id(&raw, &id)?;
    let tenant = s.scheduling.tenants().get(&tid).await.map_err(fail(&id))?;
    let k = s
        .user_keys
        .create_tenant_key(&admin_actor(), &tenant.name, &body.0.name)
        .await
        .map_err(fail(&id))?;
    let record = s
        .user_keys
        .key_service()
        .get(&k.key_id)
        .await
        .map_err(fail(&id))?;
    created(CreatedTenantKey {
        key: key_json(&record),
        secret: &k.api_key,
    })
}

/// The filter and page of `GET /keys`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct KeyParams {
    /// Only the keys of this tenant (its name).
    #[serde(default)]
    tenant: Option<String>,
    /// The previous page's `cursor`.
    #[serde(default)]
    cursor: Option<String>,
    /// How many items (1..=1000).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Lists tenants' keys (never their secrets), a page at a time.
#[utoipa::path(get, path = "/keys", params(KeyParams), responses(
    (status = 200, description = "A page of keys", body = Paged<TenantKey>),
))]
async fn list_keys(
    State(s): State<ManagementState>,
    id: RequestId,
    q: Result<Query<KeyParams>, axum::extract::rejection::QueryRejection>,
) -> Reply {
    let p = params(q, &id)?;
    let page = page_of(&PageParams {
        cursor: p.cursor,
        limit: p.limit,
    })
    .map_err(fail(&id))?;
    let keyspace = s.user_keys.keyspace().await.map_err(fail(&id))?;
    let got = s
        .user_keys
        .key_service()
        .list(&KeyQuery {
            keyspace_id: Some(keyspace),
            owner_id: p.tenant,
            include_deleted: false,
            page,
        })
        .await
        .map_err(fail(&id))?;
    let data: Vec<TenantKey<'_>> = got.items.iter().map(key_json).collect();
    paged(data, got.cursor)
}

/// A key of the tenant keyspace (others are not the management API's).
async fn tenant_key(s: &ManagementState, raw: &str, id: &RequestId) -> Result<KeyId, Response> {
    let not_found = || problem::render(&Error::not_found("key", raw), id);
    let key_id = KeyId::parse(raw).map_err(|_| not_found())?;
    let keyspace = s.user_keys.keyspace().await.map_err(fail(id))?;
    let k = s
        .user_keys
        .key_service()
        .get(&key_id)
        .await
        .map_err(fail(id))?;
    if k.keyspace_id != keyspace || k.deleted_at.is_some() {
        return Err(not_found());
    }
    Ok(key_id)
}

/// Deletes a tenant's key.
#[utoipa::path(delete, path = "/keys/{id}", params(("id" = String, Path, description = "The key id")), responses(
    (status = 204, description = "Deleted"),
    (status = 404, description = "No such key", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn delete_key(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
) -> Reply {
    let key_id = tenant_key(&s, &raw, &id).await?;
    s.user_keys
        .key_service()
        .delete(&admin_actor(), &key_id)
        .await
        .map_err(fail(&id))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Whether a key is disabled: `{"disabled": bool}`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = KeyDisabled)]
struct Disabled {
    /// `true` stops the key verifying; `false` lets it verify again.
    disabled: bool,
}

/// Disables or enables a tenant's key.
#[utoipa::path(put, path = "/keys/{id}/disabled", params(("id" = String, Path, description = "The key id")), request_body = Disabled, responses(
    (status = 200, description = "The key", body = TenantKey),
    (status = 404, description = "No such key", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn set_key_disabled(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
    body: Body<Disabled>,
) -> Reply {
    let key_id = tenant_key(&s, &raw, &id).await?;
    let keys = s.user_keys.key_service();
    keys.update(
        &admin_actor(),
        &key_id,
        KeyUpdate {
            enabled: Some(!body.0.disabled),
            ..KeyUpdate::default()
        },
    )
    .await
    .map_err(fail(&id))?;
    let record = keys.get(&key_id).await.map_err(fail(&id))?;
    ok(key_json(&record))
}

// ----- usage and costs ------------------------------------------------------

/// `from`, `to` (unix ms or RFC 3339; default: the last 24 hours up to now),
/// `granularity` (`minute`, `hour`, `day`; default `hour`), `group_by`, and
/// the filters `tenant`, `key`, `model`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct UsageParams {
    /// Start, unix milliseconds or RFC 3339; default 24 hours before `to`.
    #[serde(default)]
    from: Option<String>,
    /// End, unix milliseconds or RFC 3339; default now.
    #[serde(default)]
    to: Option<String>,
    /// Step of series: `minute`, `hour` (default) or `day`.
    #[serde(default)]
    #[param(pattern = "^(minute|hour|day)$")]
    granularity: Option<String>,
    /// What to total by: `tenant`, `key` or `model` (default per route).
    #[serde(default)]
    #[param(pattern = "^(tenant|key|model)$")]
    group_by: Option<String>,
    /// Only this tenant.
    #[serde(default)]
    tenant: Option<String>,
    /// Only this key id (empty: requests without a key).
    #[serde(default)]
    key: Option<String>,
    /// Only this model.
    #[serde(default)]
    model: Option<String>,
}

const DAY_MS: i64 = 86_400_000;

fn instant(field: &'static str, raw: &str) -> Result<Timestamp, Error> {
    if let Ok(ms) = raw.parse::<i64>() {
        return Ok(Timestamp::from_millis(ms));
    }
    time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map(Timestamp::from_datetime)
        .map_err(|_| Error::invalid(field, "must be unix milliseconds or an RFC 3339 time"))
}

impl UsageParams {
    fn range(&self, now: Timestamp) -> Result<TimeRange, Error> {
        let to = match &self.to {
            Some(t) => instant("to", t)?,
            None => now,
        };
        let from = match &self.from {
            Some(f) => instant("from", f)?,
            None => Timestamp::from_millis(to.as_millis().saturating_sub(DAY_MS)),
        };
        Ok(TimeRange::new(from, to))
    }

    fn granularity(&self) -> Result<Granularity, Error> {
        self.granularity.as_deref().unwrap_or("hour").parse()
    }

    fn group_by(&self, default: GroupBy) -> Result<GroupBy, Error> {
        match &self.group_by {
            Some(g) => g.parse(),
            None => Ok(default),
        }
    }

    fn scope(&self) -> UsageScope {
        UsageScope {
            tenant: self.tenant.clone(),
            key_id: self.key.clone(),
            model: self.model.clone(),
        }
    }
}

type UsageQuery = Result<Query<UsageParams>, axum::extract::rejection::QueryRejection>;

/// The usage parameters, `granularity` and `group_by` checked on every
/// route (a route that does not use one still refuses a bad one).
fn usage_params(q: UsageQuery, id: &RequestId) -> Result<UsageParams, Response> {
    let p = params(q, id)?;
    p.granularity().map_err(fail(id))?;
    p.group_by(GroupBy::Tenant).map_err(fail(id))?;
    Ok(p)
}

async fn totals_by(s: &ManagementState, id: &RequestId, q: UsageQuery, default: GroupBy) -> Reply {
    let p = usage_params(q, id)?;
    let range = p.range(s.usage.now()).map_err(fail(id))?;
    let group_by = p.group_by(default).map_err(fail(id))?;
    let rows = s
        .usage
        .totals(range, group_by, &p.scope())
        .await
        .map_err(fail(id))?;
    ok(rows)
}

/// Usage totals, by tenant unless `group_by` says otherwise.
#[utoipa::path(get, path = "/usage", params(UsageParams), responses(
    (status = 200, description = "The usage", body = Vec<maas_core::usage::UsageRow>),
))]
async fn usage_totals(State(s): State<ManagementState>, id: RequestId, q: UsageQuery) -> Reply {
    totals_by(&s, &id, q, GroupBy::Tenant).await
}

/// Usage totals, by key unless `group_by` says otherwise.
#[utoipa::path(get, path = "/usage/keys", params(UsageParams), responses(
    (status = 200, description = "The usage", body = Vec<maas_core::usage::UsageRow>),
))]
async fn usage_keys(State(s): State<ManagementState>, id: RequestId, q: UsageQuery) -> Reply {
    totals_by(&s, &id, q, GroupBy::Key).await
}

/// Usage totals, by model unless `group_by` says otherwise.
#[utoipa::path(get, path = "/usage/models", params(UsageParams), responses(
    (status = 200, description = "The usage", body = Vec<maas_core::usage::UsageRow>),
))]
async fn usage_models(State(s): State<ManagementState>, id: RequestId, q: UsageQuery) -> Reply {
    totals_by(&s, &id, q, GroupBy::Model).await
}

/// Usage as a time series (of `tenant` if given).
#[utoipa::path(get, path = "/usage/series", params(UsageParams), responses(
    (status = 200, description = "The usage", body = Vec<maas_core::usage::SeriesPoint>),
))]
async fn usage_series(State(s): State<ManagementState>, id: RequestId, q: UsageQuery) -> Reply {
    let p = usage_params(q, &id)?;
    let range = p.range(s.usage.now()).map_err(fail(&id))?;
    let g = p.granularity().map_err(fail(&id))?;
    let points = s
        .usage
        .series(range, g, p.tenant.as_deref())
        .await
        .map_err(fail(&id))?;
    ok(points)
}

/// Usage as one time series per tenant.
#[utoipa::path(get, path = "/usage/series/tenants", params(UsageParams), responses(
    (status = 200, description = "The usage", body = Vec<maas_core::usage::TenantSeries>),
))]
async fn usage_series_tenants(
    State(s): State<ManagementState>,
    id: RequestId,
    q: UsageQuery,
) -> Reply {
    let p = usage_params(q, &id)?;
    let range = p.range(s.usage.now()).map_err(fail(&id))?;
    let g = p.granularity().map_err(fail(&id))?;
    let series = s
        .usage
        .series_by_tenant(range, g)
        .await
        .map_err(fail(&id))?;
    ok(series)
}

/// Response-cache hits and misses per model.
#[utoipa::path(get, path = "/usage/cache", params(UsageParams), responses(
    (status = 200, description = "The usage", body = Vec<maas_core::usage::CacheRow>),
))]
async fn usage_cache(State(s): State<ManagementState>, id: RequestId, q: UsageQuery) -> Reply {
    let p = usage_params(q, &id)?;
    let range = p.range(s.usage.now()).map_err(fail(&id))?;
    ok(s.usage.cache(range).await.map_err(fail(&id))?)
}

/// Costs, by tenant unless `group_by` says otherwise, per currency.
#[utoipa::path(get, path = "/costs", params(UsageParams), responses(
    (status = 200, description = "The usage", body = Vec<maas_core::usage::CostRow>),
))]
async fn costs(State(s): State<ManagementState>, id: RequestId, q: UsageQuery) -> Reply {
    let p = usage_params(q, &id)?;
    let range = p.range(s.usage.now()).map_err(fail(&id))?;
    let group_by = p.group_by(GroupBy::Tenant).map_err(fail(&id))?;
    ok(s.usage.costs(range, group_by).await.map_err(fail(&id))?)
}

// ----- MCP servers ----------------------------------------------------------

/// Lists MCP servers.
#[utoipa::path(get, path = "/mcp-servers", responses(
    (status = 200, description = "The servers", body = Vec<maas_core::mcp::McpServer>),
))]
async fn list_mcp(State(s): State<ManagementState>, id: RequestId) -> Reply {
    ok(s.mcp.list().await.map_err(fail(&id))?)
}

/// Registers an MCP server.
#[utoipa::path(post, path = "/mcp-servers", request_body = NewMcpServer, responses(
    (status = 201, description = "The server", body = maas_core::mcp::McpServer),
    (status = 409, description = "A server of that name exists", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn create_mcp(
    State(s): State<ManagementState>,
    id: RequestId,
    body: Body<NewMcpServer>,
) -> Reply {
    created(
        s.mcp
            .create(&admin_actor(), body.0)
            .await
            .map_err(fail(&id))?,
    )
}

/// An MCP server.
#[utoipa::path(get, path = "/mcp-servers/{id}", params(("id" = String, Path, description = "The MCP server id")), responses(
    (status = 200, description = "The server", body = maas_core::mcp::McpServer),
    (status = 404, description = "No such server", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn get_mcp(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(sid): Path<String>,
) -> Reply {
    ok(s.mcp.get(&sid).await.map_err(fail(&id))?)
}

/// Replaces an MCP server's settings (every field, as `PUT` does).
#[utoipa::path(put, path = "/mcp-servers/{id}", params(("id" = String, Path, description = "The MCP server id")), request_body = NewMcpServer, responses(
    (status = 200, description = "The server", body = maas_core::mcp::McpServer),
    (status = 404, description = "No such server", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn update_mcp(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(sid): Path<String>,
    body: Body<NewMcpServer>,
) -> Reply {
    ok(s.mcp
        .update(&admin_actor(), &sid, body.0)
        .await
        .map_err(fail(&id))?)
}

/// Deletes an MCP server.
#[utoipa::path(delete, path = "/mcp-servers/{id}", params(("id" = String, Path, description = "The MCP server id")), responses(
    (status = 204, description = "Deleted"),
    (status = 404, description = "No such server", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn delete_mcp(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(sid): Path<String>,
) -> Reply {
    s.mcp
        .delete(&admin_actor(), &sid)
        .await
        .map_err(fail(&id))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ----- root keys ------------------------------------------------------------

/// A new root key of the Unkey-compatible API.
#[derive(Debug, Deserialize, ToSchema)]
struct NewRootKey {
    /// Its name.
    name: String,
    /// Unkey-style permissions: `api.*.create_key`, `api.<apiId>.read_key`,
    /// `ratelimit.<namespace>.limit`, ...
    #[serde(default)]
    permissions: Vec<String>,
}

/// A new root key, with its secret shown this once.
#[derive(Debug, Serialize, ToSchema)]
struct CreatedRootKeyOut<'a> {
    /// The key's id.
    id: &'a KeyId,
    /// Its name.
    name: &'a str,
    /// The prefix and first characters of the secret.
    start: &'a str,
    /// The secret (`root_…`). It is not stored: keep it.
    key: &'a str,
}

/// Creates a root key of the Unkey-compatible API; the secret is in this answer only.
#[utoipa::path(post, path = "/root-keys", request_body = NewRootKey, responses(
    (status = 201, description = "The root key, with its secret", body = CreatedRootKeyOut),
))]
async fn create_root_key(
    State(s): State<ManagementState>,
    id: RequestId,
    body: Body<NewRootKey>,
) -> Reply {
    let NewRootKey { name, permissions } = body.0;
    let k = s
        .root_keys
        .create(&admin_actor(), &name, permissions)
        .await
        .map_err(fail(&id))?;
    created(CreatedRootKeyOut {
        id: &k.key_id,
        name: &k.name,
        start: &k.start,
        key: &k.key,
    })
}

/// Lists root keys (never their secrets).
#[utoipa::path(get, path = "/root-keys", responses(
    (status = 200, description = "The root keys", body = Vec<maas_core::RootKey>),
))]
async fn list_root_keys(State(s): State<ManagementState>, id: RequestId) -> Reply {
    ok(s.root_keys.list().await.map_err(fail(&id))?)
}

/// Deletes a root key.
#[utoipa::path(delete, path = "/root-keys/{id}", params(("id" = String, Path, description = "The root key id")), responses(
    (status = 204, description = "Deleted"),
    (status = 404, description = "No such root key", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn delete_root_key(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
) -> Reply {
    let key_id = KeyId::parse(&raw)
        .map_err(|_| problem::render(&Error::not_found("root key", &raw), &id))?;
    s.root_keys
        .delete(&admin_actor(), &key_id)
        .await
        .map_err(fail(&id))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ----- projects (seed 001) --------------------------------------------------

/// A project id from a path: its UUID form (seed 001's) or maas's own.
fn project_id(raw: &str, id: &RequestId) -> Result<KeyspaceId, Response> {
    KeyspaceId::parse_any(raw).map_err(|_| problem::render(&Error::not_found("project", raw), id))
}

/// A new project.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewProject {
    /// Its name.
    name: String,
    /// What it is for.
    #[serde(default)]
    description: Option<String>,
}

/// A change of a project: absent fields are kept.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ProjectChange {
    /// A new name.
    #[serde(default)]
    name: Option<String>,
    /// A new description, or `null` to clear it.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    description: Patch<String>,
}

/// Lists projects.
#[utoipa::path(get, path = "/projects", responses(
    (status = 200, description = "The projects", body = Vec<maas_core::projects::Project>),
))]
async fn list_projects(State(s): State<ManagementState>, id: RequestId) -> Reply {
    ok(s.projects.list().await.map_err(fail(&id))?)
}

/// Creates a project.
#[utoipa::path(post, path = "/projects", request_body = NewProject, responses(
    (status = 201, description = "The project", body = maas_core::projects::Project),
    (status = 409, description = "A project of that name exists", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn create_project(
    State(s): State<ManagementState>,
    id: RequestId,
    body: Body<NewProject>,
) -> Reply {
    let NewProject { name, description } = body.0;
    created(
        s.projects
            .create(&admin_actor(), &name, description)
            .await
            .map_err(fail(&id))?,
    )
}

/// A project.
#[utoipa::path(get, path = "/projects/{id}", params(("id" = String, Path, description = "The project id")), responses(
    (status = 200, description = "The project", body = maas_core::projects::Project),
    (status = 404, description = "No such project", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn get_project(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
) -> Reply {
    let pid = project_id(&raw, &id)?;
    ok(s.projects.get(&pid).await.map_err(fail(&id))?)
}

/// Changes a project; absent fields are kept.
#[utoipa::path(put, path = "/projects/{id}", params(("id" = String, Path, description = "The project id")), request_body = ProjectChange, responses(
    (status = 200, description = "The project", body = maas_core::projects::Project),
    (status = 404, description = "No such project", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn update_project(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
    body: Body<ProjectChange>,
) -> Reply {
    let pid = project_id(&raw, &id)?;
    let ProjectChange { name, description } = body.0;
    ok(s.projects
        .update(&admin_actor(), &pid, name, description)
        .await
        .map_err(fail(&id))?)
}

/// Deletes a project and its keys.
#[utoipa::path(delete, path = "/projects/{id}", params(("id" = String, Path, description = "The project id")), responses(
    (status = 204, description = "Deleted"),
    (status = 404, description = "No such project", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn delete_project(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
) -> Reply {
    let pid = project_id(&raw, &id)?;
    s.projects
        .delete(&admin_actor(), &pid)
        .await
        .map_err(fail(&id))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Lists a project's API keys (prefixes only, never the secrets).
#[utoipa::path(get, path = "/projects/{id}/api-keys", params(("id" = String, Path, description = "The project id")), responses(
    (status = 200, description = "The keys", body = Vec<maas_core::projects::ProjectKey>),
    (status = 404, description = "No such project", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn list_project_keys(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
) -> Reply {
    let pid = project_id(&raw, &id)?;
    ok(s.projects.list_keys(&pid).await.map_err(fail(&id))?)
}

/// A new project API key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewProjectKey {
    /// Its name, unique among the project's live keys.
    name: String,
    /// Granted scopes; default `["data-plane:connect"]`.
    #[serde(default)]
    scopes: Option<Vec<String>>,
    /// When it expires (RFC 3339 or unix milliseconds, in the future).
    #[serde(default)]
    #[schema(format = DateTime)]
    expires_at: Option<String>,
}

/// Creates a project API key; the full key is in this answer only.
#[utoipa::path(post, path = "/projects/{id}/api-keys", params(("id" = String, Path, description = "The project id")), request_body = NewProjectKey, responses(
    (status = 201, description = "The key, with its secret", body = maas_core::projects::CreatedProjectKey),
    (status = 404, description = "No such project", body = ProblemDetails, content_type = PROBLEM_JSON),
    (status = 409, description = "The project has a live key of that name", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn create_project_key(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
    body: Body<NewProjectKey>,
) -> Reply {
    let pid = project_id(&raw, &id)?;
    let NewProjectKey {
        name,
        scopes,
        expires_at,
    } = body.0;
    let expires_at = match expires_at {
        Some(t) => Some(instant("expires_at", &t).map_err(fail(&id))?),
        None => None,
    };
    created(
        s.projects
            .create_key(&admin_actor(), &pid, &name, scopes, expires_at)
            .await
            .map_err(fail(&id))?,
    )
}

/// Revokes a project API key.
#[utoipa::path(delete, path = "/projects/{id}/api-keys/{key}", params(("id" = String, Path, description = "The project id"), ("key" = String, Path, description = "The key id")), responses(
    (status = 204, description = "Revoked"),
    (status = 404, description = "No such project or key", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn revoke_project_key(
    State(s): State<ManagementState>,
    id: RequestId,
    Path((raw, key)): Path<(String, String)>,
) -> Reply {
    let pid = project_id(&raw, &id)?;
    let key_id = KeyId::parse_any(&key)
        .map_err(|_| problem::render(&Error::not_found("API key", &key), &id))?;
    s.projects
        .revoke_key(&admin_actor(), &pid, &key_id)
        .await
        .map_err(fail(&id))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ----- data planes (seed 001) -------------------------------------------------

/// The data planes of a project: connected now, or since (offline).
#[utoipa::path(get, path = "/projects/{id}/data-planes", params(("id" = String, Path, description = "The project id (a UUID)")), responses(
    (status = 200, description = "The data planes", body = Vec<maas_core::dataplane::DataPlane>),
    (status = 404, description = "No such project", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn list_data_planes(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
) -> Reply {
    let pid = project_id(&raw, &id)?;
    s.projects.get(&pid).await.map_err(fail(&id))?;
    ok(s.projects.data_planes().list(&pid))
}

/// One data plane of a project.
#[utoipa::path(get, path = "/projects/{id}/data-planes/{dp}", params(("id" = String, Path, description = "The project id (a UUID)"), ("dp" = String, Path, description = "The data plane id (a UUID)")), responses(
    (status = 200, description = "The data plane", body = maas_core::dataplane::DataPlane),
    (status = 404, description = "No such project or data plane", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn get_data_plane(
    State(s): State<ManagementState>,
    id: RequestId,
    Path((raw, dp)): Path<(String, String)>,
) -> Reply {
    let pid = project_id(&raw, &id)?;
    s.projects.get(&pid).await.map_err(fail(&id))?;
    match s.projects.data_planes().get(&pid, &dp.to_ascii_lowercase()) {
        Some(d) => ok(d),
        None => Err(problem::render(&Error::not_found("data plane", &dp), &id)),
    }
}

/// Disconnects a data plane (its WebSocket closes at once) and forgets it.
#[utoipa::path(delete, path = "/projects/{id}/data-planes/{dp}", params(("id" = String, Path, description = "The project id (a UUID)"), ("dp" = String, Path, description = "The data plane id (a UUID)")), responses(
    (status = 204, description = "Disconnected"),
    (status = 404, description = "No such project or data plane", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn delete_data_plane(
    State(s): State<ManagementState>,
    id: RequestId,
    Path((raw, dp)): Path<(String, String)>,
) -> Reply {
    let pid = project_id(&raw, &id)?;
    s.projects.get(&pid).await.map_err(fail(&id))?;
    if s.projects
        .data_planes()
        .remove(&pid, &dp.to_ascii_lowercase())
    {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(problem::render(&Error::not_found("data plane", &dp), &id))
    }
}

/// Seed 001's `DeployRequest`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    /// The artifact to deploy (a UUID); the current configuration, built
    /// now, when absent.
    #[serde(default)]
    #[schema(format = "uuid")]
    artifact_id: Option<String>,
}

/// Seed 001's `DeployResponse`.
#[derive(Debug, Serialize, ToSchema)]
struct DeployResponse {
    /// The artifact deployed.
    #[schema(format = "uuid")]
    artifact_id: String,
    /// How many connected data planes were told.
    data_planes_notified: usize,
}

/// Deploys to a project's data planes: the artifact named, or (empty body)
/// one built now from the current configuration. Every connected data
/// plane is told at once (`artifact_available`); those connecting later
/// get it when they register.
#[utoipa::path(post, path = "/projects/{id}/deploy", params(("id" = String, Path, description = "The project id (a UUID)")), request_body(content = DeployRequest, description = "Optional: an empty body deploys the current configuration"), responses(
    (status = 200, description = "Deployment initiated", body = DeployResponse),
    (status = 404, description = "No such project or artifact", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
async fn deploy(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
    body: axum::body::Bytes,
) -> Reply {
    let pid = project_id(&raw, &id)?;
    // No body, `null` or `{}`: the current configuration.
    let request: DeployRequest =
        if body.iter().all(u8::is_ascii_whitespace) || body.trim_ascii() == b"null" {
            DeployRequest::default()
        } else {
            serde_json::from_slice(&body).map_err(|e| {
                problem::render(
                    &Error::invalid("body", format!("not a DeployRequest: {e}")),
                    &id,
                )
            })?
        };
    let (meta, notified) = s
        .projects
        .deploy(&admin_actor(), &pid, request.artifact_id.as_deref())
        .await
        .map_err(fail(&id))?;
    ok(DeployResponse {
        artifact_id: meta.artifact_id,
        data_planes_notified: notified,
    })
}
