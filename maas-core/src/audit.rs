//! The audit log: one event per configuration change — who, what, when,
//! before and after.
//!
//! Events are written by the storage backend in the same atomic step as the
//! change they describe: a change is never stored without its event, nor an
//! event without its change. Secrets never appear in events (keys are recorded
//! without their hash).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

/// Who made a change: an administrator, a user, a key, or the system itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Actor(String);

impl Actor {
    /// An actor described by `who` (e.g. `"admin"`, `"user:alice"`, `"key:key_…"`).
    pub fn new(who: impl Into<String>) -> Self {
        Actor(who.into())
    }

    /// maas itself (refills, migrations, generated defaults).
    pub fn system() -> Self {
        Actor("system".to_owned())
    }

    /// The actor as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One configuration change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEvent {
    /// Position in the log, assigned by the store on append (strictly
    /// increasing); the value passed to the store is ignored.
    pub seq: u64,
    /// When the change was made.
    pub at: Timestamp,
    /// Who made it.
    pub actor: Actor,
    /// What was done, as `kind.verb`: `key.create`, `tenant.update`, ...
    pub action: String,
    /// The kind of the changed thing: `key`, `keyspace`, `tenant`.
    pub target_kind: String,
    /// The id of the changed thing.
    pub target_id: String,
    /// The state before (`None` for a creation).
    pub before: Option<serde_json::Value>,
    /// The state after (`None` for a removal).
    pub after: Option<serde_json::Value>,
}

impl AuditEvent {
    /// An event for `action` on `target_kind`/`target_id`; `seq` is left for the store.
    pub fn new(
        at: Timestamp,
        actor: &Actor,
        action: &str,
        target_kind: &str,
        target_id: &str,
        before: Option<serde_json::Value>,
        after: Option<serde_json::Value>,
    ) -> Self {
        AuditEvent {
            seq: 0,
            at,
            actor: actor.clone(),
            action: action.to_owned(),
            target_kind: target_kind.to_owned(),
            target_id: target_id.to_owned(),
            before,
            after,
        }
    }
}

/// A request for one page of the audit log, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuditQuery {
    /// Return events older than this `seq` (the previous page's cursor).
    pub before_seq: Option<u64>,
    /// At most this many events (clamped to 1..=1000; 0 means 100).
    pub limit: usize,
}
