//! `keys.*`, and the older `POST /v1/keys` and `POST /v1/keys/verify`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use maas_core::{
    Error, KeyUpdate, NewKey, Patch, PermissionQuery, RemainingOp, Timestamp, VerifyOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::UnkeyErrorBody;
use super::auth::Root;
use super::params::{EmptyOrInteger, Params};
use super::wire::{
    KeyOut, RateLimitIn, RateLimitUpdate, RefillIn, VerifyOut, VerifyShape, api_id, key_id, present,
};
use super::{Json, UnkeyState, empty, reply};
use crate::common::RequestId;

/// The body of `keys.createKey`. `permissions` is accepted beside the
/// seed's fields (the `Key` schema has them, and `keys.verifyKey` checks
/// them).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UnkeyCreateKey)]
pub(crate) struct CreateKey {
    api_id: String,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    prefix: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    byte_length: Option<u16>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    owner_id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Object, nullable = false)]
    meta: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    roles: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    permissions: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    expires: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    remaining: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    refill: Option<RefillIn>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    ratelimit: Option<RateLimitIn>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    environment: Option<String>,
}

impl CreateKey {
    fn into_new_key(self) -> Result<NewKey, Error> {
        Ok(NewKey {
            // Unkey's empty prefix is no prefix.
            prefix: self.prefix.filter(|p| !p.is_empty()),
            byte_length: self.byte_length,
            name: self.name,
            owner_id: self.owner_id,
            meta: self.meta,
            roles: self.roles.unwrap_or_default(),
            permissions: self.permissions.unwrap_or_default(),
            expires: self.expires.map(Timestamp::from_millis),
            remaining: self.remaining,
            refill: self.refill.map(Into::into),
            ratelimit: self.ratelimit.map(Into::into),
            enabled: self.enabled.unwrap_or(true),
            environment: self.environment,
            ..NewKey::in_keyspace(api_id(&self.api_id)?)
        })
    }
}

/// The body of the older `POST /v1/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UnkeyLegacyCreateKey)]
pub(crate) struct LegacyCreateKey {
    api_id: String,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    prefix: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    byte_length: Option<u16>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    owner_id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Object, nullable = false)]
    meta: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    expires: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    remaining: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    ratelimit: Option<RateLimitIn>,
}

impl From<LegacyCreateKey> for CreateKey {
    fn from(b: LegacyCreateKey) -> Self {
        CreateKey {
            api_id: b.api_id,
            prefix: b.prefix,
            name: b.name,
            byte_length: b.byte_length,
            owner_id: b.owner_id,
            meta: b.meta,
            roles: None,
            permissions: None,
            expires: b.expires,
            remaining: b.remaining,
            refill: None,
            ratelimit: b.ratelimit,
            enabled: None,
            environment: None,
        }
    }
}

/// A new key: its id and the secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UnkeyCreatedKey)]
struct Created {
    /// The key's id.
    key_id: String,
    /// The secret. It is not stored: keep it.
    key: String,
}

async fn create(
    s: &UnkeyState,
    auth: &maas_core::RootAuth,
    body: CreateKey,
) -> Result<Created, Error> {
    let new = body.into_new_key()?;
    let c = s.root_keys.create_key(auth, new).await?;
    Ok(Created {
        key_id: c.key_id.to_string(),
        key: c.key,
    })
}

#[utoipa::path(post, path = "/v1/keys.createKey", operation_id = "keys.createKey", security(("rootKey" = [])),
    request_body = CreateKey,
    responses(
        (status = 200, description = "The key's id and secret (shown once)", body = Created),
        (status = 404, description = "No such api", body = UnkeyErrorBody),
    )
)]
/// `POST /v1/keys.createKey`.
pub(crate) async fn create_key(
    id: RequestId,
    State(s): State<Arc<UnkeyState>>,
    Root(auth): Root,
    json: Json<CreateKey>,
) -> Response {
    let body = json.0;
    reply(&id, create(&s, &auth, body).await)
}

#[utoipa::path(post, path = "/v1/keys", operation_id = "legacy.keys.create", security(("rootKey" = [])),
    request_body = LegacyCreateKey,
    responses(
        (status = 200, description = "The key's id and secret (shown once)", body = Created),
        (status = 404, description = "No such api", body = UnkeyErrorBody),
    )
)]
/// `POST /v1/keys` (the older create).
pub(crate) async fn legacy_create_key(
    id: RequestId,
    State(s): State<Arc<UnkeyState>>,
    Root(auth): Root,
    json: Json<LegacyCreateKey>,
) -> Response {
    let body = json.0;
    reply(&id, create(&s, &auth, body.into()).await)
}

/// `authorization` of `keys.verifyKey`: the permission query is parsed by
/// [`PermissionQuery::from_json`], whose errors name the field.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = UnkeyAuthorization)]
pub(crate) struct Authorization {
    /// A permission, or `{"and": [...]}` / `{"or": [...]}` of queries.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = PermissionQuery, nullable = false)]
    permissions: Option<Value>,
}

/// The body of `keys.verifyKey`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UnkeyVerifyKey)]
pub(crate) struct VerifyKey {
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    api_id: Option<String>,
    key: String,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    authorization: Option<Authorization>,
}

/// The body of the older `POST /v1/keys/verify`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UnkeyLegacyVerifyKey)]
pub(crate) struct LegacyVerifyKey {
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    api_id: Option<String>,
    key: String,
}

async fn verify(
    s: &UnkeyState,
    id: &RequestId,
    key: &str,
    api: Option<&str>,
    permissions: Option<&PermissionQuery>,
    shape: VerifyShape,
) -> Response {
    let run = async {
        if key.is_empty() {
            return Err(Error::invalid("key", "must not be empty"));
        }
        let api = api.map(api_id).transpose()?;
        let opts = VerifyOptions {
            keyspace_id: api.as_ref(),
            permissions,
        };
        s.root_keys.verify(key, &opts).await
    };
    match run.await {
        Ok(v) => super::ok(id, &VerifyOut::new(&v, shape)),
        Err(e) => super::fail(id, &e),
    }
}

#[utoipa::path(post, path = "/v1/keys.verifyKey", operation_id = "keys.verifyKey",
    request_body = VerifyKey,
    responses((status = 200, description = "The verification; `valid` says whether the key may be used, `code` why not", body = VerifyOut))
)]
/// `POST /v1/keys.verifyKey` (no root key needed).
pub(crate) async fn verify_key(
    id: RequestId,
    State(s): State<Arc<UnkeyState>>,
    json: Json<VerifyKey>,
) -> Response {
    let body = json.0;
    let query = body
        .authorization
        .as_ref()
        .and_then(|a| a.permissions.as_ref())
        .map(PermissionQuery::from_json)
        .transpose();
    match query {
        Ok(q) => {
            let api = body.api_id.as_deref();
            verify(&s, &id, &body.key, api, q.as_ref(), VerifyShape::V1).await
        }
        Err(e) => super::fail(&id, &e),
    }
}

#[utoipa::path(post, path = "/v1/keys/verify", operation_id = "legacy.keys.verify",
    request_body = LegacyVerifyKey,
    responses((status = 200, description = "The verification", body = VerifyOut))
)]
/// `POST /v1/keys/verify` (the older verify; no root key needed).
pub(crate) async fn legacy_verify_key(
    id: RequestId,
    State(s): State<Arc<UnkeyState>>,
    json: Json<LegacyVerifyKey>,
) -> Response {
    let body = json.0;
    verify(
        &s,
        &id,
        &body.key,
        body.api_id.as_deref(),
        None,
        VerifyShape::Legacy,
    )
    .await
}

#[utoipa::path(get, path = "/v1/keys.getKey", operation_id = "keys.getKey", security(("rootKey" = [])),
    params(("keyId" = String, Query, description = "The key")),
    responses((status = 200, description = "The key", body = KeyOut), (status = 404, description = "No such key, or not visible to the root key", body = UnkeyErrorBody))
)]
/// `GET /v1/keys.getKey?keyId=`.
pub(crate) async fn get_key(
    id: RequestId,
    State(s): State<Arc<UnkeyState>>,
    Root(auth): Root,
    q: Params,
) -> Response {
    let run = async {
        let key = key_id(q.required("keyId")?)?;
        s.root_keys.get_key(&auth, &key).await
    };
    match run.await {
        Ok(k) => super::ok(&id, &KeyOut::new(&k, &s.workspace_id)),
        Err(e) => super::fail(&id, &e),
    }
}

/// The body of `keys.updateKey`: absent fields are kept, `null` clears the
/// nullable ones. `roles`, `permissions` and `environment` are accepted
/// beside the seed's fields.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UnkeyUpdateKey)]
pub(crate) struct UpdateKey {
    /// The key.
    key_id: String,
    /// A new name, or `null` to clear it.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    name: Patch<String>,
    /// A new owner, or `null` to clear it.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    owner_id: Patch<String>,
    /// New metadata, or `null` to clear it.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    meta: Patch<Map<String, Value>>,
    /// A new expiry (unix ms), or `null` for none.
    #[serde(default)]
    #[schema(value_type = Option<i64>)]
    expires: Patch<i64>,
    /// A new rate limit, or `null` for none.
    #[serde(default)]
    #[schema(value_type = Option<RateLimitUpdate>)]
    ratelimit: Patch<RateLimitUpdate>,
    /// New uses left, or `null` for unlimited.
    #[serde(default)]
    #[schema(value_type = Option<i64>)]
    remaining: Patch<i64>,
    /// A new refill policy, or `null` for none.
    #[serde(default)]
    #[schema(value_type = Option<RefillIn>)]
    refill: Patch<RefillIn>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    roles: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    permissions: Option<Vec<String>>,
    /// A new environment, or `null` to clear it.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    environment: Patch<String>,
}

#[utoipa::path(post, path = "/v1/keys.updateKey", operation_id = "keys.updateKey", security(("rootKey" = [])),
    request_body = UpdateKey,
    responses((status = 200, description = "Updated", body = super::Empty), (status = 404, description = "No such key, or not visible to the root key", body = UnkeyErrorBody))
)]
/// `POST /v1/keys.updateKey`.
pub(crate) async fn update_key(
    id: RequestId,
    State(s): State<Arc<UnkeyState>>,
    Root(auth): Root,
    json: Json<UpdateKey>,
) -> Response {
    let body = json.0;
    let run = async {
        let key = key_id(&body.key_id)?;
        let update = KeyUpdate {
            name: body.name,
            owner_id: body.owner_id,
            meta: body.meta,
            expires: body.expires.map(Timestamp::from_millis),
            remaining: body.remaining,
            refill: body.refill.map(Into::into),
            ratelimit: body.ratelimit.map(Into::into),
            roles: body.roles,
            permissions: body.permissions,
            enabled: body.enabled,
            environment: body.environment,
        };
        s.root_keys
            .update_key(&auth, &key, update)
            .await
            .map(|_| empty())
    };
    reply(&id, run.await)
}

/// The body of `keys.updateRemaining`: `value` is required and nullable
/// (`set` with `null` makes the key unlimited).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UnkeyUpdateRemaining)]
pub(crate) struct UpdateRemaining {
    /// The key.
    key_id: String,
    /// `increment`, `decrement` or `set`.
    op: RemainingOp,
    /// The amount, or `null` with `set` for unlimited.
    #[serde(default)]
    #[schema(value_type = Option<i64>, required = true)]
    value: Patch<i64>,
}

/// Uses left after `keys.updateRemaining`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = UnkeyRemaining)]
struct Remaining {
    /// Uses left, `null` for unlimited.
    #[schema(required = true)]
    remaining: Option<i64>,
}

#[utoipa::path(post, path = "/v1/keys.updateRemaining", operation_id = "keys.updateRemaining", security(("rootKey" = [])),
    request_body = UpdateRemaining,
    responses((status = 200, description = "The uses left", body = Remaining), (status = 404, description = "No such key, or not visible to the root key", body = UnkeyErrorBody))
)]
/// `POST /v1/keys.updateRemaining`.
pub(crate) async fn update_remaining(
    id: RequestId,
    State(s): State<Arc<UnkeyState>>,
    Root(auth): Root,
    json: Json<UpdateRemaining>,
) -> Response {
    let body = json.0;
    let run = async {
        let key = key_id(&body.key_id)?;
        let value = match body.value {
            Patch::Keep => {
                return Err(Error::invalid(
                    "value",
                    "is required: an integer, or null with op set",
                ));
            }
            Patch::Clear => None,
            Patch::Set(v) => Some(v),
        };
        let remaining = s
            .root_keys
            .update_remaining(&auth, &key, body.op, value)
            .await?;
        Ok(Remaining { remaining })
    };
    reply(&id, run.await)
}

/// The body of `keys.deleteKey`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UnkeyDeleteKey)]
pub(crate) struct DeleteKey {
    /// The key.
    key_id: String,
}

#[utoipa::path(post, path = "/v1/keys.deleteKey", operation_id = "keys.deleteKey", security(("rootKey" = [])),
    request_body = DeleteKey,
    responses((status = 200, description = "Deleted", body = super::Empty), (status = 404, description = "No such key, or not visible to the root key", body = UnkeyErrorBody))
)]
/// `POST /v1/keys.deleteKey`.
pub(crate) async fn delete_key(
    id: RequestId,
    State(s): State<Arc<UnkeyState>>,
    Root(auth): Root,
    json: Json<DeleteKey>,
) -> Response {
    let body = json.0;
    let run = async {
        let key = key_id(&body.key_id)?;
        s.root_keys.delete_key(&auth, &key).await.map(|()| empty())
    };
    reply(&id, run.await)
}

/// Verification outcomes per day.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = UnkeyVerifications)]
struct Verifications {
    /// One entry per UTC day with verifications.
    verifications: Vec<maas_core::usage::VerificationDay>,
}

#[utoipa::path(get, path = "/v1/keys.getVerifications", operation_id = "keys.getVerifications", security(("rootKey" = [])),
    params(
        ("keyId" = Option<String>, Query, description = "The key (or `ownerId`)"),
        ("ownerId" = Option<String>, Query, description = "Every key of this owner (or `keyId`)"),
        ("start" = inline(Option<EmptyOrInteger>), Query, description = "From (unix ms); default 30 days before `end`"),
        ("end" = inline(Option<EmptyOrInteger>), Query, description = "To (unix ms, inclusive); default now"),
        ("granularity" = Option<String>, Query, description = "`day`, the only granularity", pattern = "^day$"),
    ),
    responses((status = 200, description = "Outcomes per day", body = Verifications), (status = 404, description = "No such key, or not visible to the root key", body = UnkeyErrorBody))
)]
/// `GET /v1/keys.getVerifications?keyId=&ownerId=&start=&end=&granularity=day`.
pub(crate) async fn get_verifications(
    id: RequestId,
    State(s): State<Arc<UnkeyState>>,
    Root(auth): Root,
    q: Params,
) -> Response {
    let run = async {
        let key = q.non_empty("keyId")?.map(key_id).transpose()?;
        let owner = q.non_empty("ownerId")?;
        let start = q.integer("start", true)?.map(Timestamp::from_millis);
        let end = q.integer("end", true)?.map(Timestamp::from_millis);
        match q.get("granularity")? {
            None | Some("day") => {}
            Some(_) => {
                return Err(Error::invalid(
                    "granularity",
                    "must be \"day\" (the only granularity)",
                ));
            }
        }
        let verifications = s
            .root_keys
            .verifications(&auth, &s.usage, key.as_ref(), owner, start, end)
            .await?;
        Ok(Verifications { verifications })
    };
    reply(&id, run.await)
}
