//! Seed 004's shapes: parsing helpers for request fields and the response
//! bodies built from maas-core's types.

use maas_core::counter::{Refill, RefillInterval};
use maas_core::key::RateLimitState;
use maas_core::{
    Error, Key, KeyId, KeyRateLimit, KeyspaceId, RateLimitKind, Verification, VerifyCode,
};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

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
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UnkeyRefill)]
pub(crate) struct RefillIn {
    /// How often.
    interval: RefillInterval,
    /// The uses it sets `remaining` back to.
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
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UnkeyNewRateLimit)]
pub(crate) struct RateLimitIn {
    /// `fast` (default) or `consistent`.
    #[serde(rename = "type", default, deserialize_with = "present")]
    kind: Option<RateLimitKind>,
    /// Burst capacity (at least 1).
    limit: u64,
    /// Requests given back per interval (at least 1).
    refill_rate: u64,
    /// The interval, in milliseconds.
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
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UnkeyRateLimitUpdate)]
pub(crate) struct RateLimitUpdate {
    /// `fast` or `consistent`.
    #[serde(rename = "type")]
    kind: RateLimitKind,
    /// Burst capacity (at least 1).
    limit: u64,
    /// Requests given back per interval (at least 1).
    refill_rate: u64,
    /// The interval, in milliseconds.
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

/// A key's refill policy.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UnkeyKeyRefill)]
struct RefillOut {
    /// How often.
    interval: RefillInterval,
    /// The uses it sets `remaining` back to.
    amount: u64,
    /// When it last refilled (unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    last_refill_at: Option<i64>,
}

/// A key's rate limit.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UnkeyKeyRateLimit)]
struct KeyRateLimitOut {
    /// `fast` or `consistent`.
    #[serde(rename = "type")]
    kind: RateLimitKind,
    /// Burst capacity.
    limit: u64,
    /// Requests given back per interval.
    refill_rate: u64,
    /// The interval, in milliseconds.
    refill_interval: u64,
}

/// Seed 004's `Key`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UnkeyKey)]
pub(crate) struct KeyOut<'a> {
    /// The key's id.
    id: &'a str,
    /// The prefix and first characters of the secret.
    start: &'a str,
    /// The workspace.
    workspace_id: &'a str,
    /// The api (keyspace) it belongs to.
    api_id: &'a str,
    /// Its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    name: Option<&'a str>,
    /// Its owner.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    owner_id: Option<&'a str>,
    /// Free-form metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object, nullable = false)]
    meta: Option<&'a Map<String, Value>>,
    /// When it was created (unix ms).
    created_at: i64,
    /// When it was deleted (unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    deleted_at: Option<i64>,
    /// When it expires (unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    expires: Option<i64>,
    /// Uses left; absent for unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    remaining: Option<i64>,
    /// Its refill policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    refill: Option<RefillOut>,
    /// Its rate limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    ratelimit: Option<KeyRateLimitOut>,
    /// Its roles.
    roles: &'a [String],
    /// Its permissions.
    permissions: &'a [String],
    /// Whether it verifies.
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

/// The state of a key's rate limit after a verification.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = UnkeyRateLimitState)]
struct RateLimitStateOut {
    /// Burst capacity.
    limit: u64,
    /// Requests left.
    remaining: u64,
    /// When the next requests come back (unix ms).
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
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UnkeyVerification)]
pub(crate) struct VerifyOut<'a> {
    /// The key's id (absent for `NOT_FOUND` and `FORBIDDEN`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    key_id: Option<&'a str>,
    /// Whether the key is valid.
    valid: bool,
    /// The key's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    name: Option<&'a str>,
    /// The key's owner.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    owner_id: Option<&'a str>,
    /// The key's metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object, nullable = false)]
    meta: Option<&'a Map<String, Value>>,
    /// When the key was created (unix ms; the older verify only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    created_at: Option<i64>,
    /// When the key expires (unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    expires: Option<i64>,
    /// The key's rate limit after this verification.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    ratelimit: Option<RateLimitStateOut>,
    /// Uses left; absent for unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    remaining: Option<i64>,
    /// Why the key is not valid (absent when it is).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = VerifyCode, nullable = false)]
    code: Option<&'static str>,
    /// Whether the key is enabled (`keys.verifyKey` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    enabled: Option<bool>,
    /// The key's permissions (`keys.verifyKey` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    permissions: Option<&'a [String]>,
    /// The key's environment (`keys.verifyKey` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
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
