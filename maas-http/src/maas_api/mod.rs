//! The MaaS user API (seed 000, with seed 002's variants), errors in Goa's
//! shape ([`GoaError`]).
//!
//! | route | bearer | answer |
//! |---|---|---|
//! | `GET /health` | none | 200 `{"status":"ok"}`; 503 when the store is down |
//! | `GET /keys` | identity | 200 `{keys:[{name,start,created_at,last_used_at}], total_keys}` |
//! | `POST /keys` `{name}` | identity | 200 `{api_key,name,created_at}` (the secret once); 409 taken |
//! | `DELETE /keys/{name}` | identity | 200; 404 unknown |
//! | `POST /tiers/lookup` `{groups}` | identity | 200 `{tier}`; 400 empty; 404 no mapping |
//! | `POST /tokens` `{ttl}` | identity | 201 `{token,expires_at}`; 400 `TTLValidationError` |
//! | `POST /v1/tokens` `{expiration}` | identity | as `POST /tokens` (seed 002) |
//! | `DELETE /tokens` | identity | 204: every token of the caller is revoked |
//! | `GET /v1/models` | maas token or API key | 200 the OpenAI list of the caller's tier |
//!
//! Every route is also served under `/maas-api` (seed 002's paths). A
//! missing or invalid credential is 401; a caller whose groups map to no
//! tier gets 403 from `/v1/models`.

mod error;

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use maas_core::identity::{Authenticator, Chain, Identity};
use maas_core::{
    Actor, Error, Gateway, ModelService, Storage, TierService, Timestamp, TokenService, UserKeys,
};
use serde::{Deserialize, Serialize};
use utoipa::openapi::OpenApi;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::common::{ApiJson, Dialect, Health, HttpConfig, RequestId, bearer, with_common_layers};
pub use error::{GOA_ERROR, Goa, GoaError, GoaErrorBody};

/// What the MaaS API serves from.
#[derive(Debug, Clone)]
pub struct MaasApiState {
    /// Turns identity credentials (an OIDC token, a configured token, a
    /// maas token...) into the caller.
    pub identity: Arc<dyn Authenticator>,
    /// Mints, verifies and revokes maas tokens.
    pub tokens: TokenService,
    /// Tiers, for lookups and `/v1/models`.
    pub tiers: TierService,
    /// The model catalog.
    pub models: ModelService,
    /// Users' API keys.
    pub user_keys: UserKeys,
    /// The store, for the health check.
    pub storage: Storage,
    /// The gateway's base URL: `/v1/models` lists each model at
    /// `{gateway_url}/{id}`.
    pub gateway_url: String,
    /// The gateway: `/v1/me` takes every credential it takes and shows
    /// what its admission counts.
    pub gateway: Gateway,
}

/// The prefix under which every route is served a second time (seed 002's
/// paths).
pub const SEED_002_PREFIX: &str = "/maas-api";

/// The routes and their OpenAPI operations, from the same `#[utoipa::path]`
/// attributes: a route cannot be served undocumented, nor documented
/// unserved.
fn api() -> OpenApiRouter<MaasApiState> {
    let routes = || {
        OpenApiRouter::new()
            .routes(routes!(health))
            .routes(routes!(list_keys, create_key))
            .routes(routes!(delete_key))
            .routes(routes!(tier_lookup))
            .routes(routes!(issue_token, revoke_tokens))
            .routes(routes!(issue_token_v1))
            .routes(routes!(list_models))
            .routes(routes!(me))
    };
    // The second copy's operations need ids of their own.
    let mut again = routes();
    crate::openapi::suffix_operation_ids(again.get_openapi_mut(), ".maas-api");
    routes()
        .nest(SEED_002_PREFIX, again)
        .routes(routes!(jwks))
        .routes(routes!(openid_configuration))
}

/// How long a JWT-verifying proxy may cache the key set and the discovery
/// document, in seconds.
const JWKS_MAX_AGE_SECS: u64 = 60;

/// The public keys that verify maas tokens, as a JWKS document, so any
/// JWT-verifying proxy (Envoy `jwt_authn`, Authorino, Kong) checks maas
/// tokens without calling maas. Cacheable for a minute; retired keys leave
/// when retired (retire a key only after the longest token it signed has
/// expired).
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    operation_id = "wellknown#jwks",
    responses((status = 200, description = "The public keys (RFC 7517)", body = Object)),
)]
async fn jwks(State(s): State<MaasApiState>) -> Response {
    cacheable(s.tokens.jwks())
}

/// `body` as JSON, cacheable for [`JWKS_MAX_AGE_SECS`].
fn cacheable(body: serde_json::Value) -> Response {
    (
        [(
            axum::http::header::CACHE_CONTROL,
            format!("public, max-age={JWKS_MAX_AGE_SECS}"),
        )],
        Json(body),
    )
        .into_response()
}

/// OpenID discovery (the parts a JWT verifier reads): the issuer of maas
/// tokens and where their keys are.
#[utoipa::path(
    get,
    path = "/.well-known/openid-configuration",
    operation_id = "wellknown#openidConfiguration",
    responses((status = 200, description = "The issuer and its key set", body = Object)),
)]
async fn openid_configuration(State(s): State<MaasApiState>) -> Response {
    let base = s.gateway_url.trim_end_matches('/');
    let keys = s.tokens.jwks();
    let mut algs: Vec<String> = keys
        .get("keys")
        .and_then(|k| k.as_array())
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k.get("alg").and_then(|a| a.as_str()).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    algs.sort_unstable();
    algs.dedup();
    cacheable(serde_json::json!({
        "issuer": s.tokens.config().issuer,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "id_token_signing_alg_values_supported": algs,
        "subject_types_supported": ["public"],
        "response_types_supported": ["token"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "groups", "tier"],
    }))
}

/// The MaaS API, with request ids, tracing and the body limit of `config`.
pub fn router(state: MaasApiState, config: &HttpConfig) -> Router {
    let (routes, _) = api().split_for_parts();
    let app = routes.fallback(not_found).with_state(state);
    with_common_layers(app, config)
}

/// The OpenAPI operations of [`router`]'s routes (tag `maas-api`).
pub fn openapi() -> OpenApi {
    let mut doc = api().into_openapi();
    crate::openapi::finish_api(&mut doc, crate::openapi::MAAS_API);
    doc
}

type Body<T> = ApiJson<T, Goa>;

fn goa(err: &Error, id: &RequestId) -> Response {
    Goa::render(err, id)
}

/// RFC 3339, as the MaaS API writes times.
fn rfc3339(t: Timestamp) -> String {
    t.to_string()
}

async fn not_found(id: RequestId, uri: axum::extract::OriginalUri) -> Response {
    goa(
        &Error::not_found("route", crate::common::unrouted_path(&uri)),
        &id,
    )
}

/// The authenticated caller of an identity route.
#[derive(Debug)]
pub struct Caller(pub Identity);

async fn authenticate(
    parts: &Parts,
    authn: &dyn Authenticator,
    id: &RequestId,
) -> Result<Identity, Response> {
    let unauthenticated = |reason: &'static str| {
        goa(
            &Error::Unauthenticated {
                reason: reason.into(),
            },
            id,
        )
    };
    let Some(credential) = bearer(parts) else {
        return Err(unauthenticated("a bearer credential is required"));
    };
    match authn.authenticate(credential).await {
        Ok(Some(identity)) => Ok(identity),
        Ok(None) => Err(unauthenticated("the credential is not valid")),
        Err(e) => Err(goa(&e, id)),
    }
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    MaasApiState: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = MaasApiState::from_ref(state);
        let id = RequestId::from_request_parts(parts, &())
            .await
            .unwrap_or_else(|e| match e {});
        authenticate(parts, &*state.identity, &id).await.map(Caller)
    }
}

/// Checks that the service and its store are up.
#[utoipa::path(
    get,
    path = "/health",
    operation_id = "health#healthcheck",
    responses(
        (status = 200, description = "The service is up", body = Health),
        (status = 503, description = "The store is unavailable", body = GoaErrorBody, content_type = GOA_ERROR),
    )
)]
async fn health(State(s): State<MaasApiState>, id: RequestId) -> Response {
    match s.storage.records.get_record("setting", "health").await {
        Ok(_) => Json(Health::OK).into_response(),
        Err(e) => goa(&e, &id),
    }
}

/// A user key as listed: never the secret.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = UserKeySummary)]
struct UserKeyOut {
    /// Its name.
    name: String,
    /// The prefix and first characters of the secret.
    start: String,
    /// When it was created (RFC 3339).
    #[schema(format = DateTime)]
    created_at: String,
    /// When it last verified (RFC 3339), or `null`.
    #[schema(format = DateTime)]
    last_used_at: Option<String>,
}

/// The caller's keys.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = UserKeys)]
struct UserKeysOut {
    /// The keys, oldest first.
    keys: Vec<UserKeyOut>,
    /// How many keys the caller has.
    total_keys: u64,
}

/// Lists the caller's API keys (never their secrets).
#[utoipa::path(
    get,
    path = "/keys",
    operation_id = "keys#list_user_keys",
    security(("maasIdentity" = [])),
    responses((status = 200, description = "The caller's keys", body = UserKeysOut))
)]
async fn list_keys(State(s): State<MaasApiState>, id: RequestId, Caller(who): Caller) -> Response {
    match s.user_keys.list(&who.user).await {
        Ok(list) => {
            let keys = list
                .keys
                .iter()
                .map(|k| UserKeyOut {
                    name: k.name.clone(),
                    start: k.start.clone(),
                    created_at: rfc3339(k.created_at),
                    last_used_at: k.last_used_at.map(rfc3339),
                })
                .collect();
            Json(UserKeysOut {
                keys,
                total_keys: list.total_keys,
            })
            .into_response()
        }
        Err(e) => goa(&e, &id),
    }
}

/// The body of `POST /keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = CreateUserKey)]
struct CreateKey {
    /// The key's name, unique among the caller's keys.
    name: String,
}

/// A new user key, with its secret shown this once.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CreatedUserKey)]
struct CreatedKeyOut {
    /// The secret. It is not stored: keep it.
    api_key: String,
    /// Its name.
    name: String,
    /// When it was created (RFC 3339).
    #[schema(format = DateTime)]
    created_at: String,
}

/// Creates an API key for the caller; the secret is in this answer only.
#[utoipa::path(
    post,
    path = "/keys",
    operation_id = "keys#create_user_key",
    security(("maasIdentity" = [])),
    request_body = CreateKey,
    responses(
        (status = 200, description = "The key, with its secret", body = CreatedKeyOut),
        (status = 409, description = "The caller has a key of that name", body = GoaErrorBody, content_type = GOA_ERROR),
    )
)]
async fn create_key(
    State(s): State<MaasApiState>,
    id: RequestId,
    Caller(who): Caller,
    body: Body<CreateKey>,
) -> Response {
    match s.user_keys.create_for(&who, &body.0.name).await {
        Ok(k) => Json(CreatedKeyOut {
            api_key: k.api_key,
            name: k.name,
            created_at: rfc3339(k.created_at),
        })
        .into_response(),
        Err(e) => goa(&e, &id),
    }
}

/// The key of `DELETE /keys/{name}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct KeyName {
    /// The key's name.
    name: String,
}

/// Deletes one of the caller's keys.
#[utoipa::path(
    delete,
    path = "/keys/{name}",
    operation_id = "keys#delete_user_key",
    security(("maasIdentity" = [])),
    params(KeyName),
    responses(
        (status = 200, description = "Deleted (no body)"),
        (status = 404, description = "The caller has no key of that name", body = GoaErrorBody, content_type = GOA_ERROR),
    )
)]
async fn delete_key(
    State(s): State<MaasApiState>,
    id: RequestId,
    Caller(who): Caller,
    Path(name): Path<String>,
) -> Response {
    match s.user_keys.delete(&who.user, &name).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => goa(&e, &id),
    }
}

/// The body of `POST /tiers/lookup`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = TierLookup)]
struct Lookup {
    /// The groups to map (not empty).
    groups: Vec<String>,
}

/// The tier of a set of groups.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TierLookupResult)]
struct LookupOut {
    /// The highest tier the groups map to.
    tier: String,
}

/// The highest tier that a set of groups maps to.
#[utoipa::path(
    post,
    path = "/tiers/lookup",
    operation_id = "tiers#lookup",
    security(("maasIdentity" = [])),
    request_body = Lookup,
    responses(
        (status = 200, description = "The tier", body = LookupOut),
        (status = 404, description = "No tier maps the groups", body = GoaErrorBody, content_type = GOA_ERROR),
    )
)]
async fn tier_lookup(
    State(s): State<MaasApiState>,
    id: RequestId,
    _caller: Caller,
    body: Body<Lookup>,
) -> Response {
    let groups = body.0.groups;
    if groups.is_empty() {
        return goa(&Error::invalid("groups", "must not be empty"), &id);
    }
    match s.tiers.lookup(&groups).await {
        Ok(tier) => Json(LookupOut {
            tier: tier.name.clone(),
        })
        .into_response(),
        Err(e) => goa(&e, &id),
    }
}

/// The body of `POST /tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = TokenRequest)]
struct TokenRequest {
    /// The token's lifetime as a Go duration (`4h`, `30m`, `1h30m`);
    /// default the configured one.
    #[serde(default)]
    #[schema(example = "4h")]
    ttl: Option<String>,
}

/// The body of `POST /v1/tokens` (seed 002).
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = TokenRequestV1)]
struct TokenRequestV1 {
    /// The token's lifetime as a Go duration; default the configured one.
    #[serde(default)]
    #[schema(example = "4h")]
    expiration: Option<String>,
}

/// A minted maas token.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = MintedToken)]
struct TokenOut {
    /// The token (a bearer secret).
    token: String,
    /// When it expires (RFC 3339).
    #[schema(format = DateTime)]
    expires_at: String,
}

/// Mints a token for `who`, with the TTL named `field` in the request.
async fn mint(
    s: &MaasApiState,
    id: &RequestId,
    who: &Identity,
    ttl: Option<&str>,
    field: &str,
) -> Response {
    let ttl = match s.tokens.ttl(ttl) {
        Ok(t) => t,
        Err(e) => {
            // The seed's TTLValidationError: Goa's fields, as application/json.
            let mut err = GoaError::from_core(&e, id);
            err.message = err.message.replace("'ttl'", &format!("'{field}'"));
            let mut res = err.into_response();
            res.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            );
            return res;
        }
    };
    let tier = match s.tiers.tier_of(who).await {
        Ok(t) => Some(t),
        Err(e) if e.is_not_found() || matches!(e, Error::Forbidden { .. }) => None,
        Err(e) => return goa(&e, id),
    };
    match s
        .tokens
        .mint(who, tier.as_deref().map(|t| t.name.as_str()), ttl)
    {
        Ok(t) => (
            StatusCode::CREATED,
            Json(TokenOut {
                token: t.token,
                expires_at: rfc3339(t.expires_at),
            }),
        )
            .into_response(),
        Err(e) => goa(&e, id),
    }
}

/// Mints a maas token for the caller, with the tier of its groups.
#[utoipa::path(
    post,
    path = "/tokens",
    operation_id = "tokens#issue",
    security(("maasIdentity" = [])),
    request_body = TokenRequest,
    responses(
        (status = 201, description = "The token", body = TokenOut),
        (status = 400, description = "The TTL is not a valid Go duration within the limits (`TTLValidationError`, as `application/json`) or the body is invalid", content(
            (GoaErrorBody = "application/json"),
            (GoaErrorBody = "application/vnd.goa.error"),
        )),
    )
)]
async fn issue_token(
    State(s): State<MaasApiState>,
    id: RequestId,
    Caller(who): Caller,
    body: Body<TokenRequest>,
) -> Response {
    mint(&s, &id, &who, body.0.ttl.as_deref(), "ttl").await
}

/// Mints a maas token for the caller (seed 002's body: `expiration`).
#[utoipa::path(
    post,
    path = "/v1/tokens",
    operation_id = "tokens#issue_v1",
    security(("maasIdentity" = [])),
    request_body = TokenRequestV1,
    responses(
        (status = 201, description = "The token", body = TokenOut),
        (status = 400, description = "The expiration is not a valid Go duration within the limits, or the body is invalid", content(
            (GoaErrorBody = "application/json"),
            (GoaErrorBody = "application/vnd.goa.error"),
        )),
    )
)]
async fn issue_token_v1(
    State(s): State<MaasApiState>,
    id: RequestId,
    Caller(who): Caller,
    body: Body<TokenRequestV1>,
) -> Response {
    mint(&s, &id, &who, body.0.expiration.as_deref(), "expiration").await
}

/// Revokes every maas token of the caller.
#[utoipa::path(
    delete,
    path = "/tokens",
    operation_id = "tokens#revoke_all",
    security(("maasIdentity" = [])),
    responses((status = 204, description = "Every token of the caller is revoked"))
)]
async fn revoke_tokens(
    State(s): State<MaasApiState>,
    id: RequestId,
    Caller(who): Caller,
) -> Response {
    let actor = Actor::new(format!("user:{}", who.user));
    match s.tokens.revoke_all(&actor, &who.user).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => goa(&e, &id),
    }
}

/// The models the caller's tier may use, as an OpenAI model list.
#[utoipa::path(
    get,
    path = "/v1/models",
    operation_id = "models#list",
    security(("maasToken" = []), ("userApiKey" = [])),
    responses(
        (status = 200, description = "The models", body = maas_core::ModelList),
        (status = 403, description = "The caller's groups map to no tier", body = GoaErrorBody, content_type = GOA_ERROR),
    )
)]
async fn list_models(State(s): State<MaasApiState>, id: RequestId, parts: Parts) -> Response {
    // A maas token or a user API key.
    let chain = Chain::new()
        .with(Arc::new(s.tokens.clone()))
        .with(Arc::new(s.user_keys.clone()));
    let who = match authenticate(&parts, &chain, &id).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let tier = match s.tiers.tier_of(&who).await {
        Ok(t) => t,
        Err(e) if e.is_not_found() => {
            return goa(
                &Error::Forbidden {
                    reason: format!("{e}: no models are available").into(),
                },
                &id,
            );
        }
        Err(e) => return goa(&e, &id),
    };
    match s.models.openai_list(&tier, &s.gateway_url).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => goa(&e, &id),
    }
}

/// Who the caller is and what it has left right now: its tier and what is
/// left of its requests and tokens this minute, its tenant's quota, the
/// tenant's and the key's budgets, the key's remaining uses, and today's
/// usage and cost. Takes every credential the gateway takes (a maas token,
/// an identity token, a user's or a tenant's API key); reads only.
#[utoipa::path(
    get,
    path = "/v1/me",
    operation_id = "me#get",
    security(("maasToken" = []), ("userApiKey" = [])),
    responses(
        (status = 200, description = "The caller and what it has left", body = maas_core::gateway::Account),
        (status = 401, description = "No credential, or one that is not valid", body = GoaErrorBody, content_type = GOA_ERROR),
        (status = 403, description = "The caller maps to no tier", body = GoaErrorBody, content_type = GOA_ERROR),
    )
)]
async fn me(State(s): State<MaasApiState>, id: RequestId, parts: Parts) -> Response {
    let Some(credential) = bearer(&parts) else {
        return goa(
            &Error::Unauthenticated {
                reason: "a bearer credential is required".into(),
            },
            &id,
        );
    };
    let caller = match s.gateway.authenticate(credential).await {
        Ok(c) => c,
        Err(e) => return goa(&e, &id),
    };
    match s.gateway.account(&caller).await {
        Ok(a) => Json(a).into_response(),
        Err(e) => goa(&e, &id),
    }
}
