//! API keys: long-lived secrets, stored only as a keyed hash, with the key
//! model of Unkey v1 (expiry, remaining uses with refill, per-key rate limit,
//! roles and permissions, enable/disable, environment, soft delete).
//!
//! [`KeyService`] issues, manages and verifies them.

mod cache;
mod permission;
mod secret;
mod service;
mod verify;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use permission::{
    MAX_DEPTH as MAX_PERMISSION_DEPTH, MAX_TERMS as MAX_PERMISSION_TERMS, PermissionQuery,
};
#[cfg(feature = "testkit")]
pub(crate) use secret::plausible;
pub use secret::{KeyHash, KeyHasher, MAX_KEY_LEN, START_CHARS};
pub use service::{DEFAULT_KEY_CACHE_CAPACITY, KeyService, KeyServiceConfig, VerifyObserver};
pub use verify::{RateLimitState, Verification, VerifyCode, VerifyOptions};

use crate::clock::Timestamp;
use crate::counter::{Refill, WindowSpec};
use crate::error::{Error, Result};
use crate::id::{KeyId, KeyspaceId};
use crate::patch::Patch;
use crate::validate;

/// The largest `meta`, serialized, in bytes.
pub const MAX_META_BYTES: usize = 64 * 1024;
const MAX_NAME: usize = 512;
const MAX_OWNER: usize = 256;
const MAX_ENVIRONMENT: usize = 256;
const MAX_LABEL: usize = 512;
const MAX_LABELS: usize = 1000;

/// How a per-key rate limit is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RateLimitKind {
    /// Decided in process with no I/O (after a node's first use of the key,
    /// which reads the store's count); [`KeyService::maintain`] adds what
    /// the node admitted to the store and brings in the other nodes' counts.
    /// Exact on one node; with `n` nodes a window can admit the limit plus
    /// what the other nodes admitted since their last sync (never more than
    /// `n` times the limit).
    ///
    /// [`KeyService::maintain`]: crate::key::KeyService::maintain
    #[default]
    Fast,
    /// Counted by the [`CounterStore`](crate::storage::CounterStore)'s atomic
    /// operation, shared by every node using the store: exact, at the cost of
    /// a store round trip per verification.
    Consistent,
}

/// A per-key rate limit: a bucket of `limit` requests, `refill_rate` of which
/// come back every `refill_interval` milliseconds (see [`WindowSpec`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRateLimit {
    /// Fast or consistent.
    #[serde(rename = "type", default)]
    pub kind: RateLimitKind,
    /// Burst capacity; at least 1.
    pub limit: u64,
    /// Requests given back per interval; at least 1.
    pub refill_rate: u64,
    /// Interval in milliseconds; at least 1.
    pub refill_interval: u64,
}

impl KeyRateLimit {
    /// Checks that every number is at least 1.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("ratelimit.limit", self.limit),
            ("ratelimit.refillRate", self.refill_rate),
            ("ratelimit.refillInterval", self.refill_interval),
        ] {
            if v == 0 {
                return Err(Error::invalid(field, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// The window this limit counts in.
    pub fn spec(&self) -> WindowSpec {
        WindowSpec {
            limit: self.limit,
            refill: self.refill_rate,
            window_ms: self.refill_interval,
        }
    }
}

/// A key as stored: configuration and the hash of its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    /// Identifier.
    pub id: KeyId,
    /// The keyspace it belongs to.
    pub keyspace_id: KeyspaceId,
    /// Keyed hash of the secret.
    pub hash: KeyHash,
    /// The prefix and first characters of the secret, for identification.
    pub start: String,
    /// The prefix its secret was issued with (kept for rerolls).
    pub prefix: Option<String>,
    /// The random bytes its secret was issued with (kept for rerolls).
    pub byte_length: u16,
    /// The owner (a tenant id or any reference of the caller's).
    pub owner_id: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// Whether the name is unique among live keys of the same keyspace and owner.
    pub unique_name: bool,
    /// Free-form metadata (a JSON object).
    pub meta: Option<Map<String, Value>>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When its configuration last changed.
    pub updated_at: Timestamp,
    /// When it stops verifying (`EXPIRED`); `None` never.
    pub expires: Option<Timestamp>,
    /// Whether uses are limited; the balance is the counter
    /// [`KeyRecord::remaining_counter`].
    pub remaining_limited: bool,
    /// How the balance is refilled.
    pub refill: Option<Refill>,
    /// Per-key rate limit.
    pub ratelimit: Option<KeyRateLimit>,
    /// Roles.
    pub roles: Vec<String>,
    /// Permissions, checked by permission queries.
    pub permissions: Vec<String>,
    /// Disabled keys verify as `DISABLED`.
    pub enabled: bool,
    /// Environment label (`live`, `test`, ...).
    pub environment: Option<String>,
    /// When it last verified successfully (written behind).
    pub last_used_at: Option<Timestamp>,
    /// When it was soft-deleted; `None` if live.
    pub deleted_at: Option<Timestamp>,
    /// Optimistic-concurrency version, 1 at creation.
    pub version: u64,
}

impl KeyRecord {
    /// The id of its remaining-uses balance in the counter store.
    pub fn remaining_counter(&self) -> String {
        format!("rem:{}", self.id)
    }

    /// The id of its consistent rate-limit window in the counter store.
    pub fn ratelimit_counter(&self) -> String {
        format!("rl:{}", self.id)
    }

    /// For keys with `unique_name`, the scope and name that must be unique
    /// among live keys: (keyspace, owner, name).
    pub fn unique_slot(&self) -> Option<(String, String, String)> {
        match (&self.name, self.unique_name, self.deleted_at) {
            (Some(n), true, None) => Some((
                self.keyspace_id.to_string(),
                self.owner_id.clone().unwrap_or_default(),
                n.clone(),
            )),
            _ => None,
        }
    }

    fn validate(&self) -> Result<()> {
        if let Some(n) = &self.name {
            validate::label("name", n, MAX_NAME)?;
        }
        if let Some(o) = &self.owner_id {
            validate::label("ownerId", o, MAX_OWNER)?;
        }
        if let Some(m) = &self.meta {
            let size = serde_json::to_vec(m).map(|v| v.len()).unwrap_or(usize::MAX);
            if size > MAX_META_BYTES {
                return Err(Error::invalid("meta", "must be at most 64 KiB as JSON"));
            }
        }
        if let Some(e) = &self.environment {
            validate::label("environment", e, MAX_ENVIRONMENT)?;
        }
        if let Some(r) = &self.refill {
            r.validate()?;
            if !self.remaining_limited {
                return Err(Error::invalid(
                    "remaining",
                    "must be set when refill is used",
                ));
            }
        }
        if let Some(rl) = &self.ratelimit {
            rl.validate()?;
        }
        if self.unique_name && self.name.is_none() {
            return Err(Error::invalid("name", "is required for a unique name"));
        }
        Ok(())
    }
}

/// A key as callers see it: no hash, the current balance included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Key {
    /// Identifier.
    pub id: KeyId,
    /// The keyspace it belongs to.
    pub keyspace_id: KeyspaceId,
    /// The prefix and first characters of the secret.
    pub start: String,
    /// The owner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<String>,
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Map<String, Value>>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When its configuration last changed.
    pub updated_at: Timestamp,
    /// When it expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
    /// Uses left (refill applied); `None` is unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<i64>,
    /// Refill policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refill: Option<Refill>,
    /// When the balance was last refilled (or created).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_refill_at: Option<Timestamp>,
    /// Per-key rate limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratelimit: Option<KeyRateLimit>,
    /// Roles.
    pub roles: Vec<String>,
    /// Permissions.
    pub permissions: Vec<String>,
    /// Whether it is enabled.
    pub enabled: bool,
    /// Environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// When it last verified successfully.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Timestamp>,
    /// When it was soft-deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Timestamp>,
}

impl Key {
    /// The view of `r` with balance `balance` (already refilled).
    pub fn from_record(r: &KeyRecord, balance: Option<crate::counter::Balance>) -> Self {
        let balance = if r.remaining_limited { balance } else { None };
        Key {
            id: r.id.clone(),
            keyspace_id: r.keyspace_id.clone(),
            start: r.start.clone(),
            owner_id: r.owner_id.clone(),
            name: r.name.clone(),
            meta: r.meta.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            expires: r.expires,
            // A limited key without a balance (a lost write) counts as spent.
            remaining: r
                .remaining_limited
                .then(|| balance.map_or(0, |b| b.remaining)),
            refill: r.refill,
            last_refill_at: balance
                .filter(|_| r.refill.is_some())
                .map(|b| b.refilled_at),
            ratelimit: r.ratelimit,
            roles: r.roles.clone(),
            permissions: r.permissions.clone(),
            enabled: r.enabled,
            environment: r.environment.clone(),
            last_used_at: r.last_used_at,
            deleted_at: r.deleted_at,
        }
    }
}

/// What to create a key with. Start from [`NewKey::in_keyspace`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewKey {
    /// The keyspace; must exist.
    pub keyspace_id: KeyspaceId,
    /// Prefix for this key instead of the keyspace's (1..=8 characters).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Random bytes (16..=255) instead of the keyspace's default.
    #[serde(default)]
    pub byte_length: Option<u16>,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Refuse with a conflict if a live key of the same keyspace and owner has
    /// this name (and keep it so while this key lives).
    #[serde(default)]
    pub unique_name: bool,
    /// Owner.
    #[serde(default)]
    pub owner_id: Option<String>,
    /// Metadata.
    #[serde(default)]
    pub meta: Option<Map<String, Value>>,
    /// Expiry; must be in the future.
    #[serde(default)]
    pub expires: Option<Timestamp>,
    /// Uses allowed (≥ 0); `None` is unlimited.
    #[serde(default)]
    pub remaining: Option<i64>,
    /// Refill policy (needs `remaining`).
    #[serde(default)]
    pub refill: Option<Refill>,
    /// Rate limit.
    #[serde(default)]
    pub ratelimit: Option<KeyRateLimit>,
    /// Roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Permissions.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Enabled; default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Environment.
    #[serde(default)]
    pub environment: Option<String>,
}

fn yes() -> bool {
    true
}

impl NewKey {
    /// A key in `keyspace_id` with every option at its default.
    pub fn in_keyspace(keyspace_id: KeyspaceId) -> Self {
        NewKey {
            keyspace_id,
            prefix: None,
            byte_length: None,
            name: None,
            unique_name: false,
            owner_id: None,
            meta: None,
            expires: None,
            remaining: None,
            refill: None,
            ratelimit: None,
            roles: Vec::new(),
            permissions: Vec::new(),
            enabled: true,
            environment: None,
        }
    }
}

/// A partial update of a key: absent fields are kept, `null` clears.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyUpdate {
    /// Name.
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub name: Patch<String>,
    /// Owner.
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub owner_id: Patch<String>,
    /// Metadata (replaced as a whole).
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub meta: Patch<Map<String, Value>>,
    /// Expiry (may be in the past: the key then expires at once).
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub expires: Patch<Timestamp>,
    /// Uses left; `null` makes the key unlimited.
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub remaining: Patch<i64>,
    /// Refill policy.
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub refill: Patch<Refill>,
    /// Rate limit.
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub ratelimit: Patch<KeyRateLimit>,
    /// Roles (replaced as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    /// Permissions (replaced as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    /// Enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Environment.
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub environment: Patch<String>,
}

/// The operation of [`KeyService::update_remaining`] (`keys.updateRemaining`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RemainingOp {
    /// Add `value` to the balance.
    Increment,
    /// Subtract `value` from the balance (stopping at 0).
    Decrement,
    /// Set the balance to `value`, or make the key unlimited with `null`.
    Set,
}

/// A newly issued key: its id and the secret, shown this once.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedKey {
    /// The key's id.
    pub key_id: KeyId,
    /// The secret. Hand it to the user; it is not stored and cannot be shown again.
    pub key: String,
    /// The identifying start of the secret.
    pub start: String,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("key_id", &self.key_id)
            .field("start", &self.start)
            .field("key", &"<secret>")
            .finish()
    }
}

pub(crate) fn check_labels(field: &'static str, items: Vec<String>) -> Result<Vec<String>> {
    validate::labels(field, items, MAX_LABEL, MAX_LABELS)
}

/// A live key record for tests: id `key_{i:03}`, keyspace `ks_1`, hash
/// `[i; 32]`, no owner.
#[cfg(test)]
pub(crate) fn sample_record(i: u8) -> KeyRecord {
    let hash = KeyHash::from_bytes([i; 32]);
    serde_json::from_value(serde_json::json!({
        "id": format!("key_{i:03}"),
        "keyspaceId": "ks_1",
        "hash": hash.to_hex(),
        "start": "x",
        "byteLength": 16,
        "uniqueName": false,
        "createdAt": 0,
        "updatedAt": 0,
        "remainingLimited": false,
        "roles": [],
        "permissions": [],
        "enabled": true,
        "version": 1
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}
