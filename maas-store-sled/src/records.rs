//! Compact records: keys, tenants, keyspaces, catalog records and audit
//! events in postcard (a varint binary serde format), one tag byte first.
//!
//! Each stored type has a row here, a plain struct in field order, so the
//! bytes do not depend on how the core types serialize to JSON. Free-form
//! JSON (a key's `meta`, a catalog record's body, an audit event's before
//! and after) is kept as JSON text inside the row, because binary formats
//! cannot read an arbitrary JSON value back; so are a key's refill and rate
//! limit (small, optional, and JSON keeps them readable by any version).
//!
//! A stored value starts with [`COMPACT_V2`]. Format version 1 stored JSON
//! (its first byte is always `{`): [`decode`] still reads it, so a database
//! is readable while it is being migrated (see `crate::migrate`), and a
//! value that is neither is refused, never misread.

use maas_core::audit::{Actor, AuditEvent};
use maas_core::key::{KeyHash, KeyRecord};
use maas_core::storage::Record;
use maas_core::{Error, KeyId, Keyspace, KeyspaceId, Result, Tenant, TenantId, Timestamp};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The tag byte of a format-2 (postcard) value.
pub(crate) const COMPACT_V2: u8 = 2;
/// The first byte of every format-1 (JSON) value.
const JSON_V1: u8 = b'{';

/// A type stored as a compact row.
pub(crate) trait Stored: Sized + Serialize + DeserializeOwned {
    /// Its row.
    type Row: Serialize + DeserializeOwned;
    /// What it is called in errors.
    const WHAT: &'static str;
    /// The row of a value.
    fn to_row(&self) -> Result<Self::Row>;
    /// The value of a row.
    fn from_row(row: Self::Row) -> Result<Self>;
}

/// The stored bytes of `v`.
pub(crate) fn encode<T: Stored>(v: &T) -> Result<Vec<u8>> {
    let row = v.to_row()?;
    postcard::to_extend(&row, vec![COMPACT_V2])
        .map_err(|e| Error::internal(format!("cannot encode a {}: {e}", T::WHAT)))
}

/// A value from its stored bytes, compact or (format 1) JSON.
pub(crate) fn decode<T: Stored>(bytes: &[u8]) -> Result<T> {
    let unreadable = |e: &dyn std::fmt::Display| {
        Error::internal(format!("a stored {} is unreadable: {e}", T::WHAT))
    };
    match bytes.first() {
        Some(&COMPACT_V2) => {
            let row: T::Row = postcard::from_bytes(&bytes[1..]).map_err(|e| unreadable(&e))?;
            T::from_row(row)
        }
        Some(&JSON_V1) => serde_json::from_slice(bytes).map_err(|e| unreadable(&e)),
        _ => Err(unreadable(&"unknown encoding")),
    }
}

/// Whether stored bytes are in the format-1 JSON encoding.
pub(crate) fn is_legacy(bytes: &[u8]) -> bool {
    bytes.first() == Some(&JSON_V1)
}

fn json_text<T: Serialize>(what: &str, v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::internal(format!("cannot encode {what}: {e}")))
}

fn from_json_text<T: DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s)
        .map_err(|e| Error::internal(format!("stored {what} is unreadable: {e}")))
}

fn ts(t: Timestamp) -> i64 {
    t.as_millis()
}

fn opt_ts(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::as_millis)
}

fn parse_id<T>(what: &str, s: &str, parse: fn(&str) -> Result<T>) -> Result<T> {
    parse(s).map_err(|_| Error::internal(format!("a stored {what} id is unreadable")))
}

/// A key record's row.
#[derive(Serialize, Deserialize)]
pub(crate) struct KeyRow {
    id: String,
    keyspace_id: String,
    hash: [u8; 32],
    start: String,
    prefix: Option<String>,
    byte_length: u16,
    owner_id: Option<String>,
    name: Option<String>,
    unique_name: bool,
    meta: Option<String>,
    created_at: i64,
    updated_at: i64,
    expires: Option<i64>,
    remaining_limited: bool,
    refill: Option<String>,
    ratelimit: Option<String>,
    roles: Vec<String>,
    permissions: Vec<String>,
    enabled: bool,
    environment: Option<String>,
    last_used_at: Option<i64>,
    deleted_at: Option<i64>,
    version: u64,
}

impl Stored for KeyRecord {
    type Row = KeyRow;
    const WHAT: &'static str = "key";

    fn to_row(&self) -> Result<KeyRow> {
        Ok(KeyRow {
            id: self.id.as_str().to_owned(),
            keyspace_id: self.keyspace_id.as_str().to_owned(),
            hash: *self.hash.as_bytes(),
            start: self.start.clone(),
            prefix: self.prefix.clone(),
            byte_length: self.byte_length,
            owner_id: self.owner_id.clone(),
            name: self.name.clone(),
            unique_name: self.unique_name,
            meta: self
                .meta
                .as_ref()
                .map(|m| json_text("meta", m))
                .transpose()?,
            created_at: ts(self.created_at),
            updated_at: ts(self.updated_at),
            expires: opt_ts(self.expires),
            remaining_limited: self.remaining_limited,
            refill: self
                .refill
                .as_ref()
                .map(|r| json_text("refill", r))
                .transpose()?,
            ratelimit: self
                .ratelimit
                .as_ref()
                .map(|r| json_text("ratelimit", r))
                .transpose()?,
            roles: self.roles.clone(),
            permissions: self.permissions.clone(),
            enabled: self.enabled,
            environment: self.environment.clone(),
            last_used_at: opt_ts(self.last_used_at),
            deleted_at: opt_ts(self.deleted_at),
            version: self.version,
        })
    }

    fn from_row(r: KeyRow) -> Result<Self> {
        Ok(KeyRecord {
            id: parse_id("key", &r.id, KeyId::parse)?,
            keyspace_id: parse_id("keyspace", &r.keyspace_id, KeyspaceId::parse)?,
            hash: KeyHash::from_bytes(r.hash),
            start: r.start,
            prefix: r.prefix,
            byte_length: r.byte_length,
            owner_id: r.owner_id,
            name: r.name,
            unique_name: r.unique_name,
            meta: r.meta.map(|m| from_json_text("meta", &m)).transpose()?,
            created_at: Timestamp::from_millis(r.created_at),
            updated_at: Timestamp::from_millis(r.updated_at),
            expires: r.expires.map(Timestamp::from_millis),
            remaining_limited: r.remaining_limited,
            refill: r.refill.map(|x| from_json_text("refill", &x)).transpose()?,
            ratelimit: r
                .ratelimit
                .map(|x| from_json_text("ratelimit", &x))
                .transpose()?,
            roles: r.roles,
            permissions: r.permissions,
            enabled: r.enabled,
            environment: r.environment,
            last_used_at: r.last_used_at.map(Timestamp::from_millis),
            deleted_at: r.deleted_at.map(Timestamp::from_millis),
            version: r.version,
        })
    }
}

/// A tenant's row.
#[derive(Serialize, Deserialize)]
pub(crate) struct TenantRow {
    id: String,
    name: String,
    weight: u32,
    group: String,
    tier: Option<String>,
    tokens_per_minute: Option<u64>,
    created_at: i64,
    updated_at: i64,
    version: u64,
}

impl Stored for Tenant {
    type Row = TenantRow;
    const WHAT: &'static str = "tenant";

    fn to_row(&self) -> Result<TenantRow> {
        Ok(TenantRow {
            id: self.id.as_str().to_owned(),
            name: self.name.clone(),
            weight: self.weight,
            group: self.group.clone(),
            tier: self.tier.clone(),
            tokens_per_minute: self.tokens_per_minute,
            created_at: ts(self.created_at),
            updated_at: ts(self.updated_at),
            version: self.version,
        })
    }

    fn from_row(r: TenantRow) -> Result<Self> {
        Ok(Tenant {
            id: parse_id("tenant", &r.id, TenantId::parse)?,
            name: r.name,
            weight: r.weight,
            group: r.group,
            tier: r.tier,
            tokens_per_minute: r.tokens_per_minute,
            created_at: Timestamp::from_millis(r.created_at),
            updated_at: Timestamp::from_millis(r.updated_at),
            version: r.version,
        })
    }
}

/// A keyspace's row.
#[derive(Serialize, Deserialize)]
pub(crate) struct KeyspaceRow {
    id: String,
    name: String,
    prefix: Option<String>,
    default_byte_length: u16,
    created_at: i64,
    updated_at: i64,
    version: u64,
}

impl Stored for Keyspace {
    type Row = KeyspaceRow;
    const WHAT: &'static str = "keyspace";

    fn to_row(&self) -> Result<KeyspaceRow> {
        Ok(KeyspaceRow {
            id: self.id.as_str().to_owned(),
            name: self.name.clone(),
            prefix: self.prefix.clone(),
            default_byte_length: self.default_byte_length,
            created_at: ts(self.created_at),
            updated_at: ts(self.updated_at),
            version: self.version,
        })
    }

    fn from_row(r: KeyspaceRow) -> Result<Self> {
        Ok(Keyspace {
            id: parse_id("keyspace", &r.id, KeyspaceId::parse)?,
            name: r.name,
            prefix: r.prefix,
            default_byte_length: r.default_byte_length,
            created_at: Timestamp::from_millis(r.created_at),
            updated_at: Timestamp::from_millis(r.updated_at),
            version: r.version,
        })
    }
}

/// A catalog record's row (its body is free-form JSON).
#[derive(Serialize, Deserialize)]
pub(crate) struct RecordRow {
    kind: String,
    id: String,
    body: String,
    created_at: i64,
    updated_at: i64,
    version: u64,
}

impl Stored for Record {
    type Row = RecordRow;
    const WHAT: &'static str = "record";

    fn to_row(&self) -> Result<RecordRow> {
        Ok(RecordRow {
            kind: self.kind.clone(),
            id: self.id.clone(),
            body: json_text("a record body", &self.body)?,
            created_at: ts(self.created_at),
            updated_at: ts(self.updated_at),
            version: self.version,
        })
    }

    fn from_row(r: RecordRow) -> Result<Self> {
        Ok(Record {
            kind: r.kind,
            id: r.id,
            body: from_json_text("record body", &r.body)?,
            created_at: Timestamp::from_millis(r.created_at),
            updated_at: Timestamp::from_millis(r.updated_at),
            version: r.version,
        })
    }
}

/// An audit event's row (before and after are free-form JSON).
#[derive(Serialize, Deserialize)]
pub(crate) struct AuditRow {
    seq: u64,
    at: i64,
    actor: String,
    action: String,
    target_kind: String,
    target_id: String,
    before: Option<String>,
    after: Option<String>,
}

impl Stored for AuditEvent {
    type Row = AuditRow;
    const WHAT: &'static str = "audit event";

    fn to_row(&self) -> Result<AuditRow> {
        Ok(AuditRow {
            seq: self.seq,
            at: ts(self.at),
            actor: self.actor.as_str().to_owned(),
            action: self.action.clone(),
            target_kind: self.target_kind.clone(),
            target_id: self.target_id.clone(),
            before: self
                .before
                .as_ref()
                .map(|v| json_text("before", v))
                .transpose()?,
            after: self
                .after
                .as_ref()
                .map(|v| json_text("after", v))
                .transpose()?,
        })
    }

    fn from_row(r: AuditRow) -> Result<Self> {
        Ok(AuditEvent {
            seq: r.seq,
            at: Timestamp::from_millis(r.at),
            actor: Actor::new(r.actor),
            action: r.action,
            target_kind: r.target_kind,
            target_id: r.target_id,
            before: r.before.map(|v| from_json_text("before", &v)).transpose()?,
            after: r.after.map(|v| from_json_text("after", &v)).transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn key() -> KeyRecord {
        serde_json::from_value(json!({
            "id": "key_01JGF9ZZZZZZZZZZZZZZZZZZZZ",
            "keyspaceId": "ks_01JGF9ZZZZZZZZZZZZZZZZZZZZ",
            "hash": "00".repeat(31) + "ff",
            "start": "fx_3Xc",
            "prefix": "fx",
            "byteLength": 16,
            "ownerId": "owner-1",
            "name": "full key",
            "uniqueName": true,
            "meta": {"plan": "pro", "n": [1, 2.5, null], "nested": {"ok": true}},
            "createdAt": 1_780_272_000_000i64,
            "updatedAt": 1_780_272_000_001i64,
            "expires": 4_102_444_800_000i64,
            "remainingLimited": true,
            "refill": {"interval": "monthly", "amount": 10, "day": 15},
            "ratelimit": {"type": "consistent", "limit": 5, "refillRate": 5, "refillInterval": 60_000},
            "roles": ["admin"],
            "permissions": ["api.read", "api.write"],
            "enabled": true,
            "environment": "test",
            "lastUsedAt": null,
            "deletedAt": null,
            "version": 3
        }))
        .unwrap()
    }

    #[test]
    fn a_key_roundtrips_and_is_a_fraction_of_its_json() {
        let k = key();
        let bytes = encode(&k).unwrap();
        assert_eq!(bytes[0], COMPACT_V2);
        assert_eq!(decode::<KeyRecord>(&bytes).unwrap(), k);
        let json = serde_json::to_vec(&k).unwrap();
        assert!(is_legacy(&json));
        // Format-1 bytes still read.
        assert_eq!(decode::<KeyRecord>(&json).unwrap(), k);
        assert!(
            bytes.len() * 10 < json.len() * 6,
            "{} vs {}",
            bytes.len(),
            json.len()
        );
        // A key as keys.createKey makes it with only an api: under a third.
        let mut bare = k;
        bare.meta = None;
        bare.refill = None;
        bare.ratelimit = None;
        bare.roles.clear();
        bare.permissions.clear();
        bare.owner_id = None;
        bare.name = None;
        bare.environment = None;
        bare.expires = None;
        let (bytes, json) = (encode(&bare).unwrap(), serde_json::to_vec(&bare).unwrap());
        assert!(
            bytes.len() * 3 < json.len(),
            "{} vs {}",
            bytes.len(),
            json.len()
        );
        assert!(bytes.len() < 140, "{}", bytes.len());
    }

    #[test]
    fn anything_else_is_refused() {
        assert!(decode::<KeyRecord>(&[]).is_err());
        assert!(decode::<KeyRecord>(&[9, 1, 2]).is_err());
        assert!(decode::<KeyRecord>(&[COMPACT_V2, 1]).is_err());
    }

    #[test]
    fn the_other_types_roundtrip() {
        let at = Timestamp::from_millis(1_780_272_000_000);
        let t = Tenant {
            id: TenantId::generate(at),
            name: "acme".into(),
            weight: 3,
            group: "gold".into(),
            tier: Some("premium".into()),
            tokens_per_minute: None,
            created_at: at,
            updated_at: at,
            version: 1,
        };
        assert_eq!(decode::<Tenant>(&encode(&t).unwrap()).unwrap(), t);
        let ks = Keyspace {
            id: KeyspaceId::generate(at),
            name: "fixture".into(),
            prefix: None,
            default_byte_length: 16,
            created_at: at,
            updated_at: at,
            version: 2,
        };
        assert_eq!(decode::<Keyspace>(&encode(&ks).unwrap()).unwrap(), ks);
        let r = Record {
            kind: "tier".into(),
            id: "free".into(),
            body: json!({"level": 0, "models": ["*"]}),
            created_at: at,
            updated_at: at,
            version: 1,
        };
        assert_eq!(decode::<Record>(&encode(&r).unwrap()).unwrap(), r);
        let mut e = AuditEvent::new(
            at,
            &Actor::new("admin"),
            "key.update",
            "key",
            "key_1",
            Some(json!({"name": "a"})),
            Some(json!({"name": "b"})),
        );
        e.seq = 7;
        assert_eq!(decode::<AuditEvent>(&encode(&e).unwrap()).unwrap(), e);
    }
}
