//! The audit log: one event per configuration change — who, what, when,
//! and what changed.
//!
//! An event carries what changed, not two whole copies of the thing: for an
//! update, `before` and `after` hold only the top-level fields whose values
//! differ (a field on one side only stays on that side); a creation's
//! `after` and a removal's `before` hold the thing, without its empty
//! fields (`null`, `[]`, `{}`).
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
    /// What the changed fields were (`None` for a creation; the whole thing,
    /// without empty fields, for a removal).
    pub before: Option<serde_json::Value>,
    /// What the changed fields became (`None` for a removal; the whole
    /// thing, without empty fields, for a creation).
    pub after: Option<serde_json::Value>,
}

impl AuditEvent {
    /// An event for `action` on `target_kind`/`target_id`; `seq` is left
    /// for the store. `before` and `after` are the whole states: the event
    /// keeps what changed (see the module's documentation).
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
        .changes_only()
    }

    /// The event with `before` and `after` cut down to what changed (as
    /// [`AuditEvent::new`] does; for events stored before it did).
    pub fn changes_only(mut self) -> Self {
        let (before, after) = changed(self.before.take(), self.after.take());
        self.before = before;
        self.after = after;
        self
    }
}

fn is_empty(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => true,
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// What changed between two states (see the module's documentation).
fn changed(
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> (Option<serde_json::Value>, Option<serde_json::Value>) {
    use serde_json::Value::Object;
    match (before, after) {
        (Some(Object(mut b)), Some(Object(mut a))) => {
            let same: Vec<String> = b
                .iter()
                .filter(|(k, v)| a.get(k.as_str()) == Some(*v))
                .map(|(k, _)| k.clone())
                .collect();
            for k in &same {
                b.remove(k);
                a.remove(k);
            }
            (Some(Object(b)), Some(Object(a)))
        }
        (None, Some(Object(mut a))) => {
            a.retain(|_, v| !is_empty(v));
            (None, Some(Object(a)))
        }
        (Some(Object(mut b)), None) => {
            b.retain(|_, v| !is_empty(v));
            (Some(Object(b)), None)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(before: Option<serde_json::Value>, after: Option<serde_json::Value>) -> AuditEvent {
        AuditEvent::new(
            Timestamp::from_millis(0),
            &Actor::system(),
            "key.update",
            "key",
            "key_1",
            before,
            after,
        )
    }

    #[test]
    fn an_update_keeps_what_changed() {
        let e = event(
            Some(json!({"name": "a", "enabled": true, "roles": ["x"], "gone": 1})),
            Some(json!({"name": "b", "enabled": true, "roles": ["x"], "new": null})),
        );
        assert_eq!(e.before, Some(json!({"name": "a", "gone": 1})));
        assert_eq!(e.after, Some(json!({"name": "b", "new": null})));
    }

    #[test]
    fn a_creation_and_a_removal_drop_empty_fields() {
        let state =
            json!({"name": "a", "enabled": false, "roles": [], "meta": {}, "owner": null, "n": 0});
        let kept = json!({"name": "a", "enabled": false, "n": 0});
        assert_eq!(event(None, Some(state.clone())).after, Some(kept.clone()));
        assert_eq!(event(Some(state), None).before, Some(kept));
        // Not objects: kept as they are.
        assert_eq!(event(Some(json!(1)), Some(json!(1))).after, Some(json!(1)));
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
