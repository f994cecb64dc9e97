//! `keys.*`, and the older `POST /v1/keys` and `POST /v1/keys/verify`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use maas_core::{
    Error, KeyUpdate, NewKey, Patch, PermissionQuery, RemainingOp, Timestamp, VerifyOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::auth::Root;
use super::params::Params;
use super::wire::{
    KeyOut, RateLimitIn, RateLimitUpdate, RefillIn, VerifyOut, VerifyShape, api_id, key_id, present,
};
use super::{Json, UnkeyState, empty, reply};
use crate::common::RequestId;

/// The body of `keys.createKey`. `permissions` is accepted beside the
/// seed's fields (the `Key` schema has them, and `keys.verifyKey` checks
/// them).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateKey {
    api_id: String,
    #[serde(default, deserialize_with = "present")]
    prefix: Option<String>,
    #[serde(default, deserialize_with = "present")]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    byte_length: Option<u16>,
    #[serde(default, deserialize_with = "present")]
    owner_id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    meta: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "present")]
    roles: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    permissions: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    expires: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    remaining: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    refill: Option<RefillIn>,
    #[serde(default, deserialize_with = "present")]
    ratelimit: Option<RateLimitIn>,
    #[serde(default, deserialize_with = "present")]
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "present")]
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
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LegacyCreateKey {
    api_id: String,
    #[serde(default, deserialize_with = "present")]
    prefix: Option<String>,
    #[serde(default, deserialize_with = "present")]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    byte_length: Option<u16>,
    #[serde(default, deserialize_with = "present")]
    owner_id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    meta: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "present")]
    expires: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    remaining: Option<i64>,
    #[serde(default, deserialize_with = "present")]
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

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Created {
    key_id: String,
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
#[derive(Debug, Deserialize)]
pub(crate) struct Authorization {
    #[serde(default, deserialize_with = "present")]
    permissions: Option<Value>,
}

/// The body of `keys.verifyKey`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VerifyKey {
    #[serde(default, deserialize_with = "present")]
    api_id: Option<String>,
    key: String,
    #[serde(default, deserialize_with = "present")]
    authorization: Option<Authorization>,
}

/// The body of the older `POST /v1/keys/verify`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LegacyVerifyKey {
    #[serde(default, deserialize_with = "present")]
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
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdateKey {
    key_id: String,
    #[serde(default)]
    name: Patch<String>,
    #[serde(default)]
    owner_id: Patch<String>,
    #[serde(default)]
    meta: Patch<Map<String, Value>>,
    #[serde(default)]
    expires: Patch<i64>,
    #[serde(default)]
    ratelimit: Patch<RateLimitUpdate>,
    #[serde(default)]
    remaining: Patch<i64>,
    #[serde(default)]
    refill: Patch<RefillIn>,
    #[serde(default, deserialize_with = "present")]
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    roles: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    permissions: Option<Vec<String>>,
    #[serde(default)]
    environment: Patch<String>,
}

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
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdateRemaining {
    key_id: String,
    op: RemainingOp,
    #[serde(default)]
    value: Patch<i64>,
}

#[derive(Debug, Serialize)]
struct Remaining {
    remaining: Option<i64>,
}

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
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeleteKey {
    key_id: String,
}

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

#[derive(Debug, Serialize)]
struct Verifications {
    verifications: Vec<maas_core::usage::VerificationDay>,
}

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
