//! `ratelimits.limit`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use maas_core::LimitRequest;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::auth::Root;
use super::wire::{present, scalar_map};
use super::{Json, UnkeyState, reply};
use crate::common::RequestId;

/// A resource named in a limit request (checked for shape, not stored).
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
pub(crate) struct Resource {
    #[serde(rename = "type")]
    kind: String,
    id: String,
    #[serde(default, deserialize_with = "present")]
    name: Option<String>,
    #[serde(default, deserialize_with = "scalar_map")]
    meta: Option<Map<String, Value>>,
}

/// The body of `ratelimits.limit`. `meta` and `resources` are checked for
/// shape and otherwise ignored (maas keeps no per-request analytics).
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
pub(crate) struct Limit {
    #[serde(default, deserialize_with = "present")]
    namespace: Option<String>,
    identifier: String,
    limit: i64,
    duration: i64,
    #[serde(default, deserialize_with = "present")]
    cost: Option<i64>,
    #[serde(rename = "async", default, deserialize_with = "present")]
    fast: Option<bool>,
    #[serde(default, deserialize_with = "scalar_map")]
    meta: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "present")]
    resources: Option<Vec<Resource>>,
}

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
