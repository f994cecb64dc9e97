//! `ratelimits.limit`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use maas_core::LimitRequest;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::auth::Root;
use super::wire::{present, scalar_map};
use super::{Json, UnkeyState, reply};
use crate::common::RequestId;

/// A resource named in a limit request (checked for shape, not stored).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
#[schema(as = UnkeyRatelimitResource)]
pub(crate) struct Resource {
    /// Its type.
    #[serde(rename = "type")]
    kind: String,
    /// Its id.
    id: String,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    name: Option<String>,
    #[serde(default, deserialize_with = "scalar_map")]
    #[schema(value_type = Object, nullable = false)]
    meta: Option<Map<String, Value>>,
}

/// The body of `ratelimits.limit`. `meta` and `resources` are checked for
/// shape and otherwise ignored (maas keeps no per-request analytics).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
#[schema(as = UnkeyRatelimit)]
pub(crate) struct Limit {
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    namespace: Option<String>,
    identifier: String,
    limit: i64,
    duration: i64,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    cost: Option<i64>,
    #[serde(rename = "async", default, deserialize_with = "present")]
    #[schema(nullable = false)]
    fast: Option<bool>,
    #[serde(default, deserialize_with = "scalar_map")]
    #[schema(value_type = Object, nullable = false)]
    meta: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    resources: Option<Vec<Resource>>,
}

#[utoipa::path(post, path = "/v1/ratelimits.limit", operation_id = "ratelimits.limit", security(("rootKey" = [])),
    request_body = Limit,
    responses((status = 200, description = "The decision: `success` false when refused (nothing taken)", body = maas_core::LimitResponse))
)]
/// `POST /v1/ratelimits.limit`: 200 with `success` false when refused.
pub(crate) async fn limit(
    id: RequestId,
    State(s): State<Arc<UnkeyState>>,
    Root(auth): Root,
    json: Json<Limit>,
) -> Response {
    let body = json.0;
    let req = LimitRequest {
        namespace: body.namespace,
        identifier: body.identifier,
        limit: body.limit,
        duration: body.duration,
        cost: body.cost,
        fast: body.fast.unwrap_or(false),
    };
    reply(&id, s.root_keys.limit(&auth, &s.ratelimits, &req).await)
}
