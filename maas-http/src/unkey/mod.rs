//! The Unkey v1-compatible key API (seed 004), so existing Unkey v1 clients
//! and SDKs work against maas unchanged.
//!
//! [`router`] serves every path of the seed, wrapped in
//! [`with_common_layers`] (request id, tracing span, body limit):
//!
//! | route | root key permission |
//! |---|---|
//! | `GET /v1/liveness` | none |
//! | `POST /v1/keys.verifyKey`, `POST /v1/keys/verify` | none |
//! | `POST /v1/keys.createKey`, `POST /v1/keys` | `api.*.create_key` or `api.<apiId>.create_key` |
//! | `GET /v1/keys.getKey` | `api.*.read_key` or `api.<apiId>.read_key` |
//! | `POST /v1/keys.updateKey`, `POST /v1/keys.updateRemaining` | `api.*.update_key` or `api.<apiId>.update_key` |
//! | `POST /v1/keys.deleteKey` | `api.*.delete_key` or `api.<apiId>.delete_key` |
//! | `GET /v1/keys.getVerifications` | `read_key` on the key's api; `api.*.read_key` by `ownerId` alone |
//! | `POST /v1/apis.createApi` | `api.*.create_api` |
//! | `GET /v1/apis.getApi` | `api.*.read_api` or `api.<apiId>.read_api` |
//! | `GET /v1/apis.listKeys`, `GET /v1/apis/{apiId}/keys` | `api.*.read_key` or `api.<apiId>.read_key` |
//! | `POST /v1/apis.deleteApi` | `api.*.delete_api` or `api.<apiId>.delete_api` |
//! | `POST /v1/ratelimits.limit` | `ratelimit.*.limit` or `ratelimit.<namespace>.limit` |
//!
//! The bearer credential is a root key
//! ([`RootKeys`]) or the deployment's admin token
//! ([`UnkeyState::with_admin_token`]), which has every permission. A
//! missing or invalid one is 401 `UNAUTHORIZED`, checked before the body;
//! a valid one lacking the permission is 403 `FORBIDDEN`.
//!
//! An Unkey "api" is a maas keyspace. Errors are Unkey's envelope
//! `{"error":{"code","docs","message","requestId"}}` ([`Unkey`]); bad input
//! is a 400 `BAD_REQUEST` naming the field (413 and 415 keep their status
//! with code `BAD_REQUEST`) and changes nothing.
//!
//! Where the seed is silent:
//! - `workspaceId` is [`DEFAULT_WORKSPACE_ID`] unless set with
//!   [`UnkeyState::with_workspace_id`];
//! - a valid key's verification has no `code` (the seed's codes are
//!   reasons for being invalid); an expired key is `NOT_FOUND`;
//! - `keys.createKey` also takes `permissions`, `keys.updateKey` also
//!   `roles`, `permissions` and `environment`; roles are free labels;
//! - the older `POST /v1/keys` and `GET /v1/apis/{apiId}/keys` need a root
//!   key like their newer twins;
//! - `apis.listKeys`' `total` counts every live key of the api, whatever
//!   `ownerId` filters;
//! - `keys.getVerifications` reads `start..=end`; `end` defaults to now and
//!   `start` to 30 days before `end`;
//! - storage being unavailable is 503 with code `INTERNAL_SERVER_ERROR`.
//!
//! Unknown paths get axum's empty 404; an embedder that wants Unkey's
//! envelope there sets [`fallback`] as its router's fallback.

mod apis;
mod auth;
mod error;
mod keys;
mod params;
mod ratelimits;
mod wire;

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use maas_core::{Error, RateLimiter, RootKeys, UsageLedger};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use apis::MAX_LIST_LIMIT;
pub use auth::Root;
pub(crate) use error::UnkeyErrorBody;
pub use error::{DOCS_BASE, Unkey, UnkeyCode, UnkeyError};

use crate::common::{Dialect, HttpConfig, RequestId, with_common_layers};

/// The `workspaceId` of keys and apis unless configured.
pub const DEFAULT_WORKSPACE_ID: &str = "ws_maas";

/// What the key API serves from.
#[derive(Clone)]
pub struct UnkeyState {
    /// Root keys, and the key API's operations under their authority (its
    /// [`KeyService`](maas_core::KeyService) issues and verifies the keys).
    pub root_keys: RootKeys,
    /// `ratelimits.limit`.
    pub ratelimits: RateLimiter,
    /// `keys.getVerifications` reads it. Attach the same ledger to the key
    /// service ([`KeyService::attach_usage`](maas_core::KeyService::attach_usage))
    /// so that verifications are recorded.
    pub usage: UsageLedger,
    /// A bearer token accepted as a root key with every permission
    /// (compared in constant time); `None` or empty accepts none.
    pub admin_token: Option<String>,
    /// Body limit.
    pub config: HttpConfig,
    /// The `workspaceId` of keys and apis.
    pub workspace_id: String,
}

impl fmt::Debug for UnkeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnkeyState")
            .field("root_keys", &self.root_keys)
            .field("ratelimits", &self.ratelimits)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<secret>"),
            )
            .field("config", &self.config)
            .field("workspace_id", &self.workspace_id)
            .finish_non_exhaustive()
    }
}

impl UnkeyState {
    /// A state without admin token, with the default [`HttpConfig`].
    pub fn new(root_keys: RootKeys, ratelimits: RateLimiter, usage: UsageLedger) -> Self {
        UnkeyState {
            root_keys,
            ratelimits,
            usage,
            admin_token: None,
            config: HttpConfig::default(),
            workspace_id: DEFAULT_WORKSPACE_ID.to_owned(),
        }
    }

    /// Accepts `token` as a root key with every permission (the example
    /// server passes `MAAS_ADMIN_TOKEN`).
    pub fn with_admin_token(mut self, token: impl Into<String>) -> Self {
        self.admin_token = Some(token.into());
        self
    }

    /// Uses `config` (body limit).
    pub fn with_config(mut self, config: HttpConfig) -> Self {
        self.config = config;
        self
    }

    /// Answers `workspace_id` as the `workspaceId` of keys and apis.
    pub fn with_workspace_id(mut self, workspace_id: impl Into<String>) -> Self {
        self.workspace_id = workspace_id.into();
        self
    }
}

/// A JSON body whose problems are answered in Unkey's envelope.
type Json<T> = crate::common::ApiJson<T, Unkey>;

/// The routes and their OpenAPI operations, from the same `#[utoipa::path]`
/// attributes: a route cannot be served undocumented, nor documented
/// unserved.
fn api() -> OpenApiRouter<Arc<UnkeyState>> {
    OpenApiRouter::new()
        .routes(routes!(liveness))
        .routes(routes!(keys::create_key))
        .routes(routes!(keys::verify_key))
        .routes(routes!(keys::get_key))
        .routes(routes!(keys::update_key))
        .routes(routes!(keys::update_remaining))
        .routes(routes!(keys::delete_key))
        .routes(routes!(keys::get_verifications))
        .routes(routes!(apis::create_api))
        .routes(routes!(apis::get_api))
        .routes(routes!(apis::list_keys))
        .routes(routes!(apis::delete_api))
        .routes(routes!(ratelimits::limit))
        .routes(routes!(keys::legacy_create_key))
        .routes(routes!(keys::legacy_verify_key))
        .routes(routes!(apis::legacy_list_keys))
}

/// The key API over `state`, with the common layers applied.
pub fn router(state: UnkeyState) -> Router {
    let config = state.config;
    let (routes, _) = api().split_for_parts();
    let routes = routes.with_state(Arc::new(state));
    with_common_layers(routes, &config)
}

/// The OpenAPI operations of [`router`]'s routes (tag `unkey`).
pub fn openapi() -> OpenApi {
    let mut doc = api().into_openapi();
    crate::openapi::finish_api(&mut doc, crate::openapi::UNKEY);
    doc
}

/// A 404 `NOT_FOUND` in Unkey's envelope, for an embedder's fallback.
pub async fn fallback(id: RequestId, uri: axum::extract::OriginalUri) -> Response {
    UnkeyError::new(
        StatusCode::NOT_FOUND,
        UnkeyCode::NotFound,
        format!("no route '{}'", crate::common::unrouted_path(&uri)),
        &id,
    )
    .into_response()
}

/// The service is up, and what serves each of Unkey's services.
#[derive(Serialize, ToSchema)]
#[schema(as = UnkeyLiveness)]
struct Liveness {
    /// `ok`.
    status: &'static str,
    /// What serves each service.
    services: Services,
}

/// What serves each of Unkey's services.
#[derive(Serialize, ToSchema)]
#[schema(as = UnkeyServices)]
struct Services {
    /// Metrics.
    metrics: &'static str,
    /// Logging.
    logger: &'static str,
    /// Rate limits.
    ratelimit: &'static str,
    /// Usage limits.
    usagelimit: &'static str,
    /// Analytics.
    analytics: &'static str,
}

#[utoipa::path(get, path = "/v1/liveness", operation_id = "liveness",
    responses((status = 200, description = "The service is up", body = Liveness))
)]
/// `GET /v1/liveness`.
async fn liveness(id: RequestId) -> Response {
    let body = Liveness {
        status: "ok",
        services: Services {
            metrics: "none",
            logger: "tracing",
            ratelimit: "maas RateLimiter",
            usagelimit: "maas KeyService",
            analytics: "maas UsageLedger",
        },
    };
    ok(&id, &body)
}

/// 200 with `body` as JSON.
fn ok<T: Serialize>(id: &RequestId, body: &T) -> Response {
    // Most bodies fit: one allocation instead of a growing vector's.
    let mut bytes = Vec::with_capacity(256);
    match serde_json::to_writer(&mut bytes, body) {
        Ok(()) => (StatusCode::OK, [(CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => fail(id, &Error::internal(format!("cannot serialize: {e}"))),
    }
}

/// `err` in Unkey's envelope.
fn fail(id: &RequestId, err: &Error) -> Response {
    Unkey::render(err, id)
}

/// 200 with the value, or the error in Unkey's envelope.
fn reply<T: Serialize>(id: &RequestId, r: Result<T, Error>) -> Response {
    match r {
        Ok(v) => ok(id, &v),
        Err(e) => fail(id, &e),
    }
}

/// The empty object of the routes that answer `{}`.
#[derive(Serialize, ToSchema)]
#[schema(as = UnkeyEmpty)]
struct Empty {}

fn empty() -> Empty {
    Empty {}
}
