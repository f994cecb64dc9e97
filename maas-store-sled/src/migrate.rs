//! Migration of a database written by an earlier format version, on open.
//!
//! Format 1 stored tenants, keyspaces, keys, catalog records and audit
//! events as JSON, and audit events with two whole copies of what changed.
//! Format 2 stores them compactly (`crate::records`) and audit events with
//! what changed only. The migration rewrites each value of those trees in
//! place, in batches; every value reads in either encoding, so a migration
//! cut short by a crash is simply resumed by the next open, and the format
//! marker says 2 only once all of them are rewritten and flushed.
//! Counters, usage buckets and index trees are the same in both formats.
//!
//! Format 3 drops the `key_flags` index (every key's deletion mark, by id),
//! which only an unfiltered listing read: it now reads the `keys` tree. A
//! format-1 or -2 database loses the tree on open; until the format marker
//! says 3, nothing reads or writes it.

use maas_core::audit::AuditEvent;
use maas_core::key::KeyRecord;
use maas_core::storage::Record;
use maas_core::{Keyspace, Result, Tenant};
use sled::Tree;

use crate::records::{Stored, decode, encode, is_legacy};
use crate::store::{Trees, map_sled};

/// Values rewritten per sled batch.
const BATCH: usize = 1_000;

/// Rewrites every format-1 value of `tree` as a `T` in the compact encoding,
/// passing each through `fix`; returns how many were rewritten.
fn rewrite<T: Stored>(tree: &Tree, fix: impl Fn(T) -> T) -> Result<u64> {
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    let mut done = 0;
    for kv in tree.iter() {
        let (k, v) = kv.map_err(map_sled)?;
        if !is_legacy(&v) {
            continue;
        }
        let value: T = decode(&v)?;
        batch.insert(k, encode(&fix(value))?);
        in_batch += 1;
        done += 1;
        if in_batch == BATCH {
            tree.apply_batch(std::mem::take(&mut batch))
                .map_err(map_sled)?;
            in_batch = 0;
        }
    }
    if in_batch > 0 {
        tree.apply_batch(batch).map_err(map_sled)?;
    }
    Ok(done)
}

fn keep<T>(v: T) -> T {
    v
}

/// From format `found` to the current one.
pub(crate) fn migrate(t: &Trees, found: u32) -> Result<()> {
    if found < 2 {
        to_compact(t)?;
    }
    if found < 3 {
        without_flag_index(t)?;
    }
    Ok(())
}

/// Format 2 to 3: the `key_flags` tree goes.
fn without_flag_index(t: &Trees) -> Result<()> {
    if t.db().drop_tree(b"key_flags").map_err(map_sled)? {
        t.db().flush().map_err(map_sled)?;
        tracing::info!("maas-store-sled: dropped the key_flags index (format 3)");
    }
    Ok(())
}

/// Format 1 to 2: every record compact, audit events with what changed.
fn to_compact(t: &Trees) -> Result<()> {
    let n = rewrite::<Tenant>(&t.tenants, keep)?
        + rewrite::<Keyspace>(&t.keyspaces, keep)?
        + rewrite::<KeyRecord>(&t.keys, keep)?
        + rewrite::<Record>(&t.records, keep)?
        + rewrite::<AuditEvent>(&t.audit, AuditEvent::changes_only)?;
    t.db().flush().map_err(map_sled)?;
    tracing::info!("maas-store-sled: migrated {n} records to the compact format");
    Ok(())
}
