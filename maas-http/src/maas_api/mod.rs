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
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use maas_core::identity::{Authenticator, Chain, Identity};
use maas_core::{
    Actor, Error, ModelService, Storage, TierService, Timestamp, TokenService, UserKeys,
};
use serde::Deserialize;
use serde_json::json;

use crate::common::{ApiJson, Dialect, HttpConfig, RequestId, bearer, with_common_layers};
pub use error::{GOA_ERROR, Goa, GoaError};

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
}

/// The MaaS API, with request ids, tracing and the body limit of `config`.
pub fn router(state: MaasApiState, config: &HttpConfig) -> Router {
    let routes = || {
        Router::new()
            .route("/health", get(health))
            .route("/keys", get(list_keys).post(create_key))
            .route("/keys/{name}", delete(delete_key))
            .route("/tiers/lookup", post(tier_lookup))
            .route("/tokens", post(issue_token).delete(revoke_tokens))
            .route("/v1/tokens", post(issue_token_v1))
            .route("/v1/models", get(list_models))
    };
    let app = routes()
        .nest("/maas-api", routes())
        .fallback(not_found)
        .with_state(state);
    with_common_layers(app, config)
}

type Body<T> = ApiJson<T, Goa>;

fn goa(err: &Error, id: &RequestId) -> Response {
    Goa::render(err, id)
}

/// RFC 3339, as the MaaS API writes times.
fn rfc3339(t: Timestamp) -> String {
    t.to_string()
}

async fn not_found(id: RequestId) -> Response {
    goa(&Error::not_found("route", "this path"), &id)
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

async fn health(State(s): State<MaasApiState>, id: RequestId) -> Response {
    match s.storage.records.get_record("setting", "health").await {
        Ok(_) => Json(json!({"status": "ok"})).into_response(),
        Err(e) => goa(&e, &id),
    }
}

async fn list_keys(State(s): State<MaasApiState>, id: RequestId, Caller(who): Caller) -> Response {
    match s.user_keys.list(&who.user).await {
        Ok(list) => {
            let keys: Vec<serde_json::Value> = list
                .keys
                .iter()
                .map(|k| {
                    json!({
                        "name": k.name,
                        "start": k.start,
                        "created_at": rfc3339(k.created_at),
                        "last_used_at": k.last_used_at.map(rfc3339),
                    })
                })
                .collect();
            Json(json!({"keys": keys, "total_keys": list.total_keys})).into_response()
        }
        Err(e) => goa(&e, &id),
    }
}

#[derive(Debug, Deserialize)]
struct CreateKey {
    name: String,
}

async fn create_key(
    State(s): State<MaasApiState>,
    id: RequestId,
    Caller(who): Caller,
    body: Body<CreateKey>,
) -> Response {
    match s.user_keys.create_for(&who, &body.0.name).await {
        Ok(k) => Json(json!({
            "api_key": k.api_key,
            "name": k.name,
            "created_at": rfc3339(k.created_at),
        }))
        .into_response(),
        Err(e) => goa(&e, &id),
    }
}

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

#[derive(Debug, Deserialize)]
struct Lookup {
    groups: Vec<String>,
}

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
        Ok(tier) => Json(json!({"tier": tier.name})).into_response(),
        Err(e) => goa(&e, &id),
    }
}

#[derive(Debug, Deserialize)]
struct TokenRequest {
    #[serde(default)]
    ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TokenRequestV1 {
    #[serde(default)]
    expiration: Option<String>,
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
    let tier = match s.tiers.lookup(&who.groups).await {
        Ok(t) => Some(t),
        Err(e) if e.is_not_found() => None,
        Err(e) => return goa(&e, id),
    };
    match s
        .tokens
        .mint(who, tier.as_deref().map(|t| t.name.as_str()), ttl)
    {
        Ok(t) => (
            StatusCode::CREATED,
            Json(json!({"token": t.token, "expires_at": rfc3339(t.expires_at)})),
        )
            .into_response(),
        Err(e) => goa(&e, id),
    }
}

async fn issue_token(
    State(s): State<MaasApiState>,
    id: RequestId,
    Caller(who): Caller,
    body: Body<TokenRequest>,
) -> Response {
    mint(&s, &id, &who, body.0.ttl.as_deref(), "ttl").await
}

async fn issue_token_v1(
    State(s): State<MaasApiState>,
    id: RequestId,
    Caller(who): Caller,
    body: Body<TokenRequestV1>,
) -> Response {
    mint(&s, &id, &who, body.0.expiration.as_deref(), "expiration").await
}

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

async fn list_models(State(s): State<MaasApiState>, id: RequestId, parts: Parts) -> Response {
    // A maas token or a user API key.
    let chain = Chain::new()
        .with(Arc::new(s.tokens.clone()))
        .with(Arc::new(s.user_keys.clone()));
    let who = match authenticate(&parts, &chain, &id).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let tier = match s.tiers.lookup(&who.groups).await {
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
