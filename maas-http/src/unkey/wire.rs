//! Seed 004's shapes: parsing helpers for request fields and the response
//! bodies built from maas-core's types.

use maas_core::counter::{Refill, RefillInterval};
use maas_core::key::RateLimitState;
use maas_core::{
    Error, Key, KeyId, KeyRateLimit, KeyspaceId, RateLimitKind, Verification, VerifyCode,
};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// For optional fields that are not nullable: absent is `None` (with
/// `#[serde(default)]`), `null` is refused as the wrong type.
pub(crate) fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// An object whose values are strings, numbers, booleans or null
/// (`ratelimits.limit`'s `meta`); absent is `None`, `null` refused.
pub(crate) fn scalar_map<'de, D>(d: D) -> Result<Option<Map<String, Value>>, D::Error>
where
    D: Deserializer<'de>,
{
    let map = Map::<String, Value>::deserialize(d)?;
    if map.values().any(|v| v.is_array() || v.is_object()) {
        return Err(serde::de::Error::custom(
            "values must be strings, numbers, booleans or null",
        ));
    }
    Ok(Some(map))
}

/// An api id from a request (`apiId`).
pub(crate) fn api_id(s: &str) -> Result<KeyspaceId, Error> {
    KeyspaceId::parse(s)
        .map_err(|_| Error::invalid("apiId", "must be 1 to 128 bytes without control characters"))
}

/// A key id from a request (`keyId`).
pub(crate) fn key_id(s: &str) -> Result<KeyId, Error> {
    KeyId::parse(s)
}

/// A refill policy in a request.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RefillIn {
    interval: RefillInterval,
    amount: u64,
}

impl From<RefillIn> for Refill {
    fn from(r: RefillIn) -> Self {
        Refill {
            interval: r.interval,
            amount: r.amount,
            day: None,
        }
    }
}

/// A per-key rate limit in `keys.createKey` and `POST /v1/keys`: `type`
/// defaults to `fast`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RateLimitIn {
    #[serde(rename = "type", default, deserialize_with = "present")]
    kind: Option<RateLimitKind>,
    limit: u64,
    refill_rate: u64,
    refill_interval: u64,
}

impl From<RateLimitIn> for KeyRateLimit {
    fn from(r: RateLimitIn) -> Self {
        KeyRateLimit {
            kind: r.kind.unwrap_or_default(),
            limit: r.limit,
            refill_rate: r.refill_rate,
            refill_interval: r.refill_interval,
        }
    }
}

/// A per-key rate limit in `keys.updateKey`: `type` is required.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RateLimitUpdate {
    #[serde(rename = "type")]
    kind: RateLimitKind,
    limit: u64,
    refill_rate: u64,
    refill_interval: u64,
}

impl From<RateLimitUpdate> for KeyRateLimit {
    fn from(r: RateLimitUpdate) -> Self {
        KeyRateLimit {
            kind: r.kind,
            limit: r.limit,
            refill_rate: r.refill_rate,
            refill_interval: r.refill_interval,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RefillOut {
    interval: RefillInterval,
    amount: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_refill_at: Option<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct KeyRateLimitOut {
    #[serde(rename = "type")]
    kind: RateLimitKind,
    limit: u64,
    refill_rate: u64,
    refill_interval: u64,
}

/// Seed 004's `Key`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KeyOut<'a> {
    id: &'a str,
    start: &'a str,
    workspace_id: &'a str,
    api_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a Map<String, Value>>,
    created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refill: Option<RefillOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratelimit: Option<KeyRateLimitOut>,
    roles: &'a [String],
    permissions: &'a [String],
    enabled: bool,
}

impl<'a> KeyOut<'a> {
    /// `k` as seed 004's `Key`, in workspace `workspace_id`.
    pub(crate) fn new(k: &'a Key, workspace_id: &'a str) -> Self {
        KeyOut {
            id: k.id.as_str(),
            start: &k.start,
            workspace_id,
            api_id: k.keyspace_id.as_str(),
            name: k.name.as_deref(),
            owner_id: k.owner_id.as_deref(),
            meta: k.meta.as_ref(),
            created_at: k.created_at.as_millis(),
            deleted_at: k.deleted_at.map(|t| t.as_millis()),
            expires: k.expires.map(|t| t.as_millis()),
            remaining: k.remaining,
            refill: k.refill.map(|r| RefillOut {
                interval: r.interval,
                amount: r.amount,
                last_refill_at: k.last_refill_at.map(|t| t.as_millis()),
            }),
            ratelimit: k.ratelimit.map(|r| KeyRateLimitOut {
                kind: r.kind,
                limit: r.limit,
                refill_rate: r.refill_rate,
                refill_interval: r.refill_interval,
            }),
            roles: &k.roles,
            permissions: &k.permissions,
            enabled: k.enabled,
        }
    }
}

#[derive(Debug, Serialize)]
struct RateLimitStateOut {
    limit: u64,
    remaining: u64,
    reset: i64,
}

impl From<RateLimitState> for RateLimitStateOut {
    fn from(s: RateLimitState) -> Self {
        RateLimitStateOut {
            limit: s.limit,
            remaining: s.remaining,
            reset: s.reset.as_millis(),
        }
    }
}

/// Which verification response: `keys.verifyKey`'s, or the older
/// `POST /v1/keys/verify`'s (with `createdAt`, without `enabled`,
/// `permissions` and `environment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VerifyShape {
    V1,
    Legacy,
}

/// Seed 004's `V1KeysVerifyKeyResponse` (and the older verify response).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VerifyOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<&'a str>,
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratelimit: Option<RateLimitStateOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    permissions: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<&'a str>,
}

impl<'a> VerifyOut<'a> {
    /// The response for `v`.
    ///
    /// A valid key has no `code` (seed 004's codes name reasons for being
    /// invalid). An expired key is `NOT_FOUND` ("does not exist or has
    /// expired"); `NOT_FOUND` and `FORBIDDEN` carry no details of the key.
    pub(crate) fn new(v: &'a Verification, shape: VerifyShape) -> Self {
        let code = match v.code() {
            VerifyCode::Valid => None,
            VerifyCode::Expired => Some(VerifyCode::NotFound),
            c => Some(c),
        };
        let bare = matches!(code, Some(VerifyCode::NotFound | VerifyCode::Forbidden));
        if bare {
            return VerifyOut {
                key_id: None,
                valid: false,
                name: None,
                owner_id: None,
                meta: None,
                created_at: None,
                expires: None,
                ratelimit: None,
                remaining: None,
                code: code.map(VerifyCode::as_str),
                enabled: None,
                permissions: None,
                environment: None,
            };
        }
        let v1 = shape == VerifyShape::V1;
        VerifyOut {
            key_id: v.key_id().map(KeyId::as_str),
            valid: v.valid(),
            name: v.name(),
            owner_id: v.owner_id(),
            meta: v.meta(),
            created_at: if v1 {
                None
            } else {
                v.created_at().map(|t| t.as_millis())
            },
            expires: v.expires().map(|t| t.as_millis()),
            ratelimit: v.ratelimit().map(RateLimitStateOut::from),
            remaining: v.remaining(),
            code: code.map(VerifyCode::as_str),
            enabled: if v1 { v.enabled() } else { None },
            permissions: if v1 { Some(v.permissions()) } else { None },
            environment: if v1 { v.environment() } else { None },
        }
    }
}
