//! The management API (seed 003) under `/api/v1`, for operators: tenants,
//! fair share, capacity, tiers, models, audit. Every route, and every path
//! that is not a route, requires `Authorization: Bearer <admin token>`:
//! without it the answer is 401, with no hint whether the path exists.
//! Errors are RFC 9457 problem details ([`Problem`]).
//!
//! Lists are JSON arrays; paginated ones (tenants, keys, audit) answer
//! `{"data": [...], "cursor": ...}` (`cursor` is `null` on the last page).
//!
//! Still to come (issue 8): the served OpenAPI document.

// `Result<Response, Response>` is axum's handler idiom; the error is a
// response about to be sent, not worth boxing.
#![allow(clippy::result_large_err)]

mod problem;

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use axum::{Json, Router};
use maas_core::audit::AuditQuery;
use maas_core::identity::{Authenticator, Identity, StaticTokens};
use maas_core::mcp::{McpServers, NewMcpServer};
use maas_core::projects::Projects;
use maas_core::rootkeys::RootKeys;
use maas_core::scheduling::Scheduling;
use maas_core::tier::{NewTier, TierService, TierUpdate};
use maas_core::usage::{Granularity, GroupBy, TimeRange, UsageLedger, UsageScope};
use maas_core::{
    Actor, CacheSettings, Error, KeyId, KeyQuery, KeyUpdate, KeyspaceId, ModelService, ModelUpdate,
    NewModel, NewTenant, PageRequest, Patch, Storage, TenantId, TenantUpdate, Timestamp, UserKeys,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::common::{ApiJson, HttpConfig, RequestId, bearer, with_common_layers};
pub use problem::{PROBLEM_JSON, Problem};

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
        })
    }
}

/// The management API under `/api/v1`, behind the admin token, with
/// request ids, tracing and the body limit of `config`.
pub fn router(state: ManagementState, config: &HttpConfig) -> Router {
    let api = Router::new()
        .route("/health", get(health))
        .route("/tenants", get(list_tenants).post(create_tenant))
        .route("/tenants/{id}", get(get_tenant))
        .route("/tenants/{id}/weight", patch(set_tenant_weight))
        .route("/tenants/{id}/quota", put(set_tenant_quota))
        .route("/tenants/{id}/group", patch(set_tenant_group))
        .route("/fairshare/live", get(fairshare_live))
        .route("/fairshare/groups", get(list_groups).post(create_group))
        .route("/fairshare/groups/{name}/weight", patch(set_group_weight))
        .route("/stats", get(stats))
        .route("/capacity", get(get_capacity).put(set_capacity))
        .route("/audit", get(audit))
        .route("/tiers", get(list_tiers).post(create_tier))
        .route(
            "/tiers/{name}",
            get(get_tier).put(update_tier).delete(delete_tier),
        )
        .route("/models", get(list_models).post(create_model))
        .route(
            "/models/{id}",
            get(get_model).put(update_model).delete(delete_model),
        )
        .route("/models/{id}/cache", put(set_model_cache))
        .route("/tenants/{id}/keys", post(create_tenant_key))
        .route("/keys", get(list_keys))
        .route("/keys/{id}", delete(delete_key))
        .route("/keys/{id}/disabled", put(set_key_disabled))
        .route("/usage", get(usage_totals))
        .route("/usage/keys", get(usage_keys))
        .route("/usage/models", get(usage_models))
        .route("/usage/series", get(usage_series))
        .route("/usage/series/tenants", get(usage_series_tenants))
        .route("/usage/cache", get(usage_cache))
        .route("/costs", get(costs))
        .route("/projects", get(list_projects).post(create_project))
        .route(
            "/projects/{id}",
            get(get_project).put(update_project).delete(delete_project),
        )
        .route(
            "/projects/{id}/api-keys",
            get(list_project_keys).post(create_project_key),
        )
        .route("/projects/{id}/api-keys/{key}", delete(revoke_project_key))
        .route("/root-keys", get(list_root_keys).post(create_root_key))
        .route("/root-keys/{id}", delete(delete_root_key))
        .route("/mcp-servers", get(list_mcp).post(create_mcp))
        .route(
            "/mcp-servers/{id}",
            get(get_mcp).put(update_mcp).delete(delete_mcp),
        );
    let app = Router::new()
        .nest("/api/v1", api)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), require_admin))
        .with_state(state);
    with_common_layers(app, config)
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

/// A paginated list: `{"data": [...], "cursor": ...}`.
fn paged<T: serde::Serialize>(items: T, cursor: Option<String>) -> Reply {
    ok(json!({"data": items, "cursor": cursor}))
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
    let allowed = match bearer(&parts) {
        Some(token) => matches!(s.admin.authenticate(token).await, Ok(Some(_))),
        None => false,
    };
    if !allowed {
        return problem::render(
            &Error::Unauthenticated {
                reason: "admin token required".into(),
            },
            &id,
        );
    }
    next.run(Request::from_parts(parts, body)).await
}

async fn not_found(id: RequestId) -> Response {
    problem::render(&Error::not_found("route", "this path"), &id)
}

async fn health(State(s): State<ManagementState>, id: RequestId) -> Reply {
    s.storage
        .records
        .get_record("setting", "health")
        .await
        .map_err(fail(&id))?;
    ok(json!({"status": "ok"}))
}

// ----- tenants --------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct PageParams {
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
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
    created(t)
}

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
    ok(s.scheduling
        .update_tenant(&admin_actor(), &tid, update)
        .await
        .map_err(fail(id))?)
}

#[derive(Debug, Deserialize)]
struct Weight {
    weight: i64,
}

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

#[derive(Debug, Deserialize)]
struct Quota {
    tokens_per_minute: Option<i64>,
}

async fn set_tenant_quota(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
    body: Body<Quota>,
) -> Reply {
    let quota = match body.0.tokens_per_minute {
        None => Patch::Clear,
        Some(n) => Patch::Set(
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

#[derive(Debug, Deserialize)]
struct Group {
    group: String,
}

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

// ----- fair share, capacity -------------------------------------------------

async fn fairshare_live(State(s): State<ManagementState>) -> Reply {
    ok(s.scheduling.live())
}

#[derive(Debug, Deserialize)]
struct NewGroup {
    name: String,
    weight: i64,
}

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

async fn list_groups(State(s): State<ManagementState>, id: RequestId) -> Reply {
    ok(s.scheduling.list_groups().await.map_err(fail(&id))?)
}

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

async fn stats(State(s): State<ManagementState>) -> Reply {
    let live = s.scheduling.live();
    ok(json!({
        "in_flight": live.in_flight,
        "queued": live.queued,
        "max_in_flight": live.max_in_flight,
    }))
}

async fn get_capacity(State(s): State<ManagementState>) -> Reply {
    ok(json!({"max_in_flight": s.scheduling.capacity()}))
}

#[derive(Debug, Deserialize)]
struct Capacity {
    max_in_flight: i64,
}

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
    ok(json!({"max_in_flight": max}))
}

// ----- audit ----------------------------------------------------------------

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

async fn list_tiers(State(s): State<ManagementState>, id: RequestId) -> Reply {
    ok(s.tiers.list().await.map_err(fail(&id))?)
}

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

async fn get_tier(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(name): Path<String>,
) -> Reply {
    ok(s.tiers.get(&name).await.map_err(fail(&id))?)
}

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
fn model_json(m: &maas_core::Model) -> Value {
    let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut()
        && let Some(url) = o.remove("upstream_url")
    {
        o.insert("url".into(), url);
    }
    v
}

async fn list_models(State(s): State<ManagementState>, id: RequestId) -> Reply {
    let models = s.models.list().await.map_err(fail(&id))?;
    let data: Vec<Value> = models.iter().map(model_json).collect();
    ok(data)
}

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

async fn get_model(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(mid): Path<String>,
) -> Reply {
    ok(model_json(&s.models.get(&mid).await.map_err(fail(&id))?))
}

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

#[derive(Debug, Deserialize)]
struct NewTenantKey {
    name: String,
}

/// A key as listed: never the secret.
fn key_json(k: &maas_core::Key) -> Value {
    json!({
        "id": k.id,
        "key_prefix": k.start,
        "name": k.name,
        "tenant": k.owner_id,
        "enabled": k.enabled,
        "created_at": k.created_at,
        "last_used_at": k.last_used_at,
        "expires_at": k.expires,
    })
}

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
        .create(&tenant.name, &body.0.name)
        .await
        .map_err(fail(&id))?;
    let record = s
        .user_keys
        .key_service()
        .get(&k.key_id)
        .await
        .map_err(fail(&id))?;
    created(json!({"key": key_json(&record), "secret": k.api_key}))
}

#[derive(Debug, Deserialize)]
struct KeyParams {
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

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
    let data: Vec<Value> = got.items.iter().map(key_json).collect();
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

#[derive(Debug, Deserialize)]
struct Disabled {
    disabled: bool,
}

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
#[derive(Debug, Deserialize)]
struct UsageParams {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    granularity: Option<String>,
    #[serde(default)]
    group_by: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    key: Option<String>,
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

async fn totals_by(s: &ManagementState, id: &RequestId, q: UsageQuery, default: GroupBy) -> Reply {
    let p = params(q, id)?;
    let range = p.range(s.usage.now()).map_err(fail(id))?;
    let group_by = p.group_by(default).map_err(fail(id))?;
    let rows = s
        .usage
        .totals(range, group_by, &p.scope())
        .await
        .map_err(fail(id))?;
    ok(rows)
}

async fn usage_totals(State(s): State<ManagementState>, id: RequestId, q: UsageQuery) -> Reply {
    totals_by(&s, &id, q, GroupBy::Tenant).await
}

async fn usage_keys(State(s): State<ManagementState>, id: RequestId, q: UsageQuery) -> Reply {
    totals_by(&s, &id, q, GroupBy::Key).await
}

async fn usage_models(State(s): State<ManagementState>, id: RequestId, q: UsageQuery) -> Reply {
    totals_by(&s, &id, q, GroupBy::Model).await
}

async fn usage_series(State(s): State<ManagementState>, id: RequestId, q: UsageQuery) -> Reply {
    let p = params(q, &id)?;
    let range = p.range(s.usage.now()).map_err(fail(&id))?;
    let g = p.granularity().map_err(fail(&id))?;
    let points = s
        .usage
        .series(range, g, p.tenant.as_deref())
        .await
        .map_err(fail(&id))?;
    ok(points)
}

async fn usage_series_tenants(
    State(s): State<ManagementState>,
    id: RequestId,
    q: UsageQuery,
) -> Reply {
    let p = params(q, &id)?;
    let range = p.range(s.usage.now()).map_err(fail(&id))?;
    let g = p.granularity().map_err(fail(&id))?;
    let series = s
        .usage
        .series_by_tenant(range, g)
        .await
        .map_err(fail(&id))?;
    ok(series)
}

async fn usage_cache(State(s): State<ManagementState>, id: RequestId, q: UsageQuery) -> Reply {
    let p = params(q, &id)?;
    let range = p.range(s.usage.now()).map_err(fail(&id))?;
    ok(s.usage.cache(range).await.map_err(fail(&id))?)
}

async fn costs(State(s): State<ManagementState>, id: RequestId, q: UsageQuery) -> Reply {
    let p = params(q, &id)?;
    let range = p.range(s.usage.now()).map_err(fail(&id))?;
    let group_by = p.group_by(GroupBy::Tenant).map_err(fail(&id))?;
    ok(s.usage.costs(range, group_by).await.map_err(fail(&id))?)
}

// ----- MCP servers ----------------------------------------------------------

async fn list_mcp(State(s): State<ManagementState>, id: RequestId) -> Reply {
    ok(s.mcp.list().await.map_err(fail(&id))?)
}

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

async fn get_mcp(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(sid): Path<String>,
) -> Reply {
    ok(s.mcp.get(&sid).await.map_err(fail(&id))?)
}

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

#[derive(Debug, Deserialize)]
struct NewRootKey {
    name: String,
    #[serde(default)]
    permissions: Vec<String>,
}

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
    created(json!({"id": k.key_id, "name": k.name, "start": k.start, "key": k.key}))
}

async fn list_root_keys(State(s): State<ManagementState>, id: RequestId) -> Reply {
    ok(s.root_keys.list().await.map_err(fail(&id))?)
}

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

fn project_id(raw: &str, id: &RequestId) -> Result<KeyspaceId, Response> {
    KeyspaceId::parse(raw).map_err(|_| problem::render(&Error::not_found("project", raw), id))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProject {
    name: String,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectChange {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Patch<String>,
}

async fn list_projects(State(s): State<ManagementState>, id: RequestId) -> Reply {
    ok(s.projects.list().await.map_err(fail(&id))?)
}

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

async fn get_project(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
) -> Reply {
    let pid = project_id(&raw, &id)?;
    ok(s.projects.get(&pid).await.map_err(fail(&id))?)
}

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

async fn list_project_keys(
    State(s): State<ManagementState>,
    id: RequestId,
    Path(raw): Path<String>,
) -> Reply {
    let pid = project_id(&raw, &id)?;
    ok(s.projects.list_keys(&pid).await.map_err(fail(&id))?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProjectKey {
    name: String,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    expires_at: Option<String>,
}

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

async fn revoke_project_key(
    State(s): State<ManagementState>,
    id: RequestId,
    Path((raw, key)): Path<(String, String)>,
) -> Reply {
    let pid = project_id(&raw, &id)?;
    let key_id =
        KeyId::parse(&key).map_err(|_| problem::render(&Error::not_found("API key", &key), &id))?;
    s.projects
        .revoke_key(&admin_actor(), &pid, &key_id)
        .await
        .map_err(fail(&id))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
