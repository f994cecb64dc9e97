//! The outcome of verifying a key.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::PermissionQuery;
use super::cache::Cached;
use crate::clock::Timestamp;
use crate::counter::WindowTake;
use crate::id::{KeyId, KeyspaceId};

/// Why a key did or did not verify.
///
/// Checks run in this order; the first that fails decides the code, and
/// nothing after it runs:
///
/// 1. `NOT_FOUND` — malformed (empty, over 512 bytes, not UTF-8, wrong
///    shape), unknown, or soft-deleted. Malformed keys are refused before any
///    lookup.
/// 2. `FORBIDDEN` — the key belongs to another keyspace than the one asked
///    for. No details of the key are returned.
/// 3. `DISABLED` — the key is disabled.
/// 4. `EXPIRED` — the key's `expires` is at or before now.
/// 5. `INSUFFICIENT_PERMISSIONS` — the permission query is not satisfied.
/// 6. `RATE_LIMITED` — the key's rate limit has no request left in this
///    window (this check takes one request from the window when it passes).
/// 7. `USAGE_EXCEEDED` — no uses remain (this check spends one use when it
///    passes).
/// 8. `VALID`.
///
/// Checks 1–5 have no side effects. Remaining uses are spent only by a
/// verification that ends `VALID`; a request refused for usage has still
/// taken one request from the rate-limit window, as it was an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum VerifyCode {
    /// The key is valid.
    Valid,
    /// The key does not exist or was deleted.
    NotFound,
    /// The key belongs to another keyspace.
    Forbidden,
    /// The key is disabled.
    Disabled,
    /// The key has expired.
    Expired,
    /// The key lacks the permissions asked for.
    InsufficientPermissions,
    /// The key's rate limit is exhausted for now.
    RateLimited,
    /// The key has no remaining uses.
    UsageExceeded,
}

impl VerifyCode {
    /// Every code, in check order.
    pub const ALL: [VerifyCode; 8] = [
        VerifyCode::NotFound,
        VerifyCode::Forbidden,
        VerifyCode::Disabled,
        VerifyCode::Expired,
        VerifyCode::InsufficientPermissions,
        VerifyCode::RateLimited,
        VerifyCode::UsageExceeded,
        VerifyCode::Valid,
    ];

    /// The wire name (`VALID`, `NOT_FOUND`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyCode::Valid => "VALID",
            VerifyCode::NotFound => "NOT_FOUND",
            VerifyCode::Forbidden => "FORBIDDEN",
            VerifyCode::Disabled => "DISABLED",
            VerifyCode::Expired => "EXPIRED",
            VerifyCode::InsufficientPermissions => "INSUFFICIENT_PERMISSIONS",
            VerifyCode::RateLimited => "RATE_LIMITED",
            VerifyCode::UsageExceeded => "USAGE_EXCEEDED",
        }
    }
}

impl fmt::Display for VerifyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a key's rate limit after a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitState {
    /// Capacity of the limit.
    pub limit: u64,
    /// Requests left.
    pub remaining: u64,
    /// When the window resets (the next refill).
    pub reset: Timestamp,
}

impl From<WindowTake> for RateLimitState {
    fn from(t: WindowTake) -> Self {
        RateLimitState {
            limit: t.limit,
            remaining: t.remaining,
            reset: t.reset,
        }
    }
}

/// What to check besides the key itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions<'a> {
    /// The keyspace the key must belong to (else `FORBIDDEN`).
    pub keyspace_id: Option<&'a KeyspaceId>,
    /// The permissions the key must have (else `INSUFFICIENT_PERMISSIONS`).
    pub permissions: Option<&'a PermissionQuery>,
}

/// The result of a verification. Details of the key are present for every
/// code but `NOT_FOUND` and `FORBIDDEN`.
#[derive(Debug, Clone)]
pub struct Verification {
    code: VerifyCode,
    key: Option<Arc<Cached>>,
    remaining: Option<i64>,
    ratelimit: Option<RateLimitState>,
}

impl Verification {
    pub(crate) fn new(
        code: VerifyCode,
        key: Option<Arc<Cached>>,
        remaining: Option<i64>,
        ratelimit: Option<RateLimitState>,
    ) -> Self {
        Verification {
            code,
            key,
            remaining,
            ratelimit,
        }
    }

    pub(crate) fn bare(code: VerifyCode) -> Self {
        Verification::new(code, None, None, None)
    }

    /// Whether the key is valid.
    pub fn valid(&self) -> bool {
        self.code == VerifyCode::Valid
    }

    /// Why.
    pub fn code(&self) -> VerifyCode {
        self.code
    }

    /// The key's id.
    pub fn key_id(&self) -> Option<&KeyId> {
        self.key.as_deref().map(|c| &c.record).map(|k| &k.id)
    }

    /// The key's keyspace.
    pub fn keyspace_id(&self) -> Option<&KeyspaceId> {
        self.key
            .as_deref()
            .map(|c| &c.record)
            .map(|k| &k.keyspace_id)
    }

    /// The key's name.
    pub fn name(&self) -> Option<&str> {
        self.key
            .as_deref()
            .map(|c| &c.record)
            .and_then(|k| k.name.as_deref())
    }

    /// The key's owner.
    pub fn owner_id(&self) -> Option<&str> {
        self.key
            .as_deref()
            .map(|c| &c.record)
            .and_then(|k| k.owner_id.as_deref())
    }

    /// The key's metadata.
    pub fn meta(&self) -> Option<&Map<String, Value>> {
        self.key
            .as_deref()
            .map(|c| &c.record)
            .and_then(|k| k.meta.as_ref())
    }

    /// When the key was created.
    pub fn created_at(&self) -> Option<Timestamp> {
        self.key.as_deref().map(|c| &c.record).map(|k| k.created_at)
    }

    /// When the key expires.
    pub fn expires(&self) -> Option<Timestamp> {
        self.key
            .as_deref()
            .map(|c| &c.record)
            .and_then(|k| k.expires)
    }

    /// Uses left after this verification; `None` if unlimited (or unknown key).
    pub fn remaining(&self) -> Option<i64> {
        self.remaining
    }

    /// The rate limit after this verification, if the key has one and the
    /// check was reached.
    pub fn ratelimit(&self) -> Option<RateLimitState> {
        self.ratelimit
    }

    /// Whether the key is enabled.
    pub fn enabled(&self) -> Option<bool> {
        self.key.as_deref().map(|c| &c.record).map(|k| k.enabled)
    }

    /// The key's roles.
    pub fn roles(&self) -> &[String] {
        self.key
            .as_deref()
            .map(|c| &c.record)
            .map_or(&[], |k| &k.roles)
    }

    /// The key's permissions.
    pub fn permissions(&self) -> &[String] {
        self.key
            .as_deref()
            .map(|c| &c.record)
            .map_or(&[], |k| &k.permissions)
    }

    /// The key's environment.
    pub fn environment(&self) -> Option<&str> {
        self.key
            .as_deref()
            .map(|c| &c.record)
            .and_then(|k| k.environment.as_deref())
    }
}
