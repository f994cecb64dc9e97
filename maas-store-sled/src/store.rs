//! The storage traits of `maas-core` on sled trees.

use std::fmt;
use std::ops::Bound;
use std::path::Path;

use maas_core::audit::{AuditEvent, AuditQuery};
use maas_core::key::{KeyHash, KeyRecord};
use maas_core::storage::{KeyQuery, Page, PageRequest, Record, audit_page_size, version_conflict};
use maas_core::{Error, KeyId, Keyspace, KeyspaceId, Result, Tenant, TenantId, Timestamp};
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
    TransactionalTree,
};
use sled::{Db, Transactional, Tree};

use crate::codec::{joined, last_part};
use crate::journal::{Entry, Journal, Journaled};
use crate::overlay::Overlay;
use crate::records::{Stored, decode, encode};
use crate::{FORMAT_VERSION, SledError};

const META_FORMAT: &[u8] = b"format_version";
const META_AUDIT_COUNT: &[u8] = b"audit_count";
const LIVE: u8 = 0;
const DELETED: u8 = 1;

/// Maps a sled failure into the core error: I/O may be transient, the rest not.
pub(crate) fn map_sled(e: sled::Error) -> Error {
    match e {
        sled::Error::Io(io) => Error::unavailable(format!("sled I/O: {io}"), true),
        sled::Error::Corruption { .. } => Error::unavailable("sled: corruption detected", false),
        other => Error::internal(format!("sled: {other}")),
    }
}

type TxResult<T> = ConflictableTransactionResult<T, Error>;

fn abort<T>(e: Error) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn ab<T>(r: Result<T>) -> TxResult<T> {
    r.map_err(ConflictableTransactionError::Abort)
}

pub(crate) fn finish<T>(r: std::result::Result<T, TransactionError<Error>>) -> Result<T> {
    match r {
        Ok(v) => Ok(v),
        Err(TransactionError::Abort(e)) => Err(e),
        Err(TransactionError::Storage(e)) => Err(map_sled(e)),
    }
}

fn be_i64(bytes: &[u8]) -> i64 {
    bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, i64::from_be_bytes)
}

fn be_u64(bytes: &[u8]) -> u64 {
    bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

/// Appends `event` inside a transaction: its sequence number is the count of
/// events so far plus one, so the log is gap-free and ordered by commit.
///
/// (Not sled's `generate_id`: inside a transaction it may block on a flush
/// that needs the background flusher, which waits for the transaction's
/// lock: a deadlock seen under concurrent tests.)
fn tx_audit(
    audit: &TransactionalTree,
    meta: &TransactionalTree,
    event: &AuditEvent,
) -> TxResult<u64> {
    let seq = meta.get(META_AUDIT_COUNT)?.map_or(0, |v| be_u64(&v)) + 1;
    let mut e = event.clone();
    e.seq = seq;
    audit.insert(&seq.to_be_bytes(), ab(encode(&e))?)?;
    meta.insert(META_AUDIT_COUNT, &seq.to_be_bytes())?;
    Ok(seq)
}

/// Every tree of the database.
pub(crate) struct Trees {
    db: Db,
    /// The database directory (sled's files and the journal).
    dir: std::path::PathBuf,
    pub(crate) meta: Tree,
    pub(crate) tenants: Tree,
    pub(crate) tenant_names: Tree,
    pub(crate) keyspaces: Tree,
    pub(crate) keys: Tree,
    pub(crate) key_hashes: Tree,
    pub(crate) key_unique: Tree,
    pub(crate) by_keyspace: Tree,
    pub(crate) by_owner: Tree,
    pub(crate) last_used: Tree,
    pub(crate) audit: Tree,
    pub(crate) balances: Tree,
    pub(crate) windows: Tree,
    /// Catalog records under `kind \0 id`.
    pub(crate) records: Tree,
    /// Usage buckets (see `crate::usage`).
    pub(crate) usage: Tree,
    /// Verification buckets (see `crate::usage`).
    pub(crate) verifications: Tree,
    /// The last sequence added of each usage-report source: key = the
    /// source, value = 8 bytes big-endian.
    pub(crate) reports: Tree,
    /// Journaled values not yet written into the four trees above
    /// (`crate::overlay`).
    pub(crate) overlay: Overlay,
}

impl fmt::Debug for Trees {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // sled's own Debug of a tree prints its contents: never do that.
        f.debug_struct("Trees")
            .field("was_recovered", &self.db.was_recovered())
            .finish_non_exhaustive()
    }
}

/// The trees a key change writes together.
struct KeyTx<'a> {
    keys: &'a TransactionalTree,
    hashes: &'a TransactionalTree,
    unique: &'a TransactionalTree,
    by_keyspace: &'a TransactionalTree,
    by_owner: &'a TransactionalTree,
}

fn flag(k: &KeyRecord) -> u8 {
    if k.deleted_at.is_some() {
        DELETED
    } else {
        LIVE
    }
}

fn unique_key(k: &KeyRecord) -> Option<Vec<u8>> {
    k.unique_slot()
        .map(|(ks, owner, name)| joined(&[&ks, &owner, &name]))
}

fn owner_value(k: &KeyRecord) -> Vec<u8> {
    let mut v = vec![flag(k)];
    v.extend_from_slice(k.keyspace_id.as_str().as_bytes());
    v
}

impl KeyTx<'_> {
    /// Refuses a key whose hash or unique name another key holds.
    fn check_free(&self, k: &KeyRecord) -> TxResult<()> {
        let id = k.id.as_str().as_bytes();
        if let Some(holder) = self.hashes.get(k.hash.as_bytes())?
            && holder != id
        {
            return abort(Error::conflict("the secret collides with another key"));
        }
        if let Some(slot) = unique_key(k)
            && let Some(holder) = self.unique.get(&slot)?
            && holder != id
        {
            return abort(Error::conflict(format!(
                "a key named '{}' already exists for this owner",
                k.name.as_deref().unwrap_or_default()
            )));
        }
        Ok(())
    }

    fn index(&self, k: &KeyRecord) -> TxResult<()> {
        let id = k.id.as_str();
        self.hashes.insert(k.hash.as_bytes(), id.as_bytes())?;
        if let Some(slot) = unique_key(k) {
            self.unique.insert(slot, id.as_bytes())?;
        }
        let f = [flag(k)];
        self.by_keyspace
            .insert(joined(&[k.keyspace_id.as_str(), id]), &f)?;
        if let Some(o) = &k.owner_id {
            self.by_owner.insert(joined(&[o, id]), owner_value(k))?;
        }
        Ok(())
    }

    fn unindex(&self, k: &KeyRecord) -> TxResult<()> {
        let id = k.id.as_str();
        if self
            .hashes
            .get(k.hash.as_bytes())?
            .is_some_and(|h| h == id.as_bytes())
        {
            self.hashes.remove(k.hash.as_bytes())?;
        }
        if let Some(slot) = unique_key(k)
            && self.unique.get(&slot)?.is_some_and(|h| h == id.as_bytes())
        {
            self.unique.remove(slot)?;
        }
        self.by_keyspace
            .remove(joined(&[k.keyspace_id.as_str(), id]))?;
        if let Some(o) = &k.owner_id {
            self.by_owner.remove(joined(&[o, id]))?;
        }
        Ok(())
    }
}

/// The ids of one page of a key listing, in index order: every match is
/// counted, the page's ids (and one more, to tell whether more follow) kept.
struct IdPage<'q> {
    size: usize,
    cursor: Option<&'q [u8]>,
    include_deleted: bool,
    ids: Vec<Vec<u8>>,
    total: u64,
}

impl<'q> IdPage<'q> {
    fn new(query: &'q KeyQuery) -> Self {
        IdPage {
            size: query.page.size(),
            cursor: query.page.cursor.as_deref().map(str::as_bytes),
            include_deleted: query.include_deleted,
            ids: Vec::new(),
            total: 0,
        }
    }

    fn offer(&mut self, id: &[u8], deleted: bool) {
        if deleted && !self.include_deleted {
            return;
        }
        self.total += 1;
        if self.ids.len() <= self.size && self.cursor.is_none_or(|c| id > c) {
            self.ids.push(id.to_vec());
        }
    }

    /// Whether it holds the page and one more (there is a next page).
    fn full(&self) -> bool {
        self.ids.len() > self.size
    }

    fn done(self) -> (Vec<Vec<u8>>, u64) {
        (self.ids, self.total)
    }
}

/// Where an index entry holds the key id it points at.
#[derive(Clone, Copy)]
enum IdAt {
    Value,
    LastPart,
}

/// What [`SledStore::check_integrity`](crate::SledStore::check_integrity) found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IntegrityReport {
    /// Key records read.
    pub keys: u64,
    /// Index entries read.
    pub index_entries: u64,
    /// Every disagreement found; empty when the database is consistent.
    pub problems: Vec<String>,
}

impl IntegrityReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Trees {
    pub(crate) fn open(db: Db, dir: std::path::PathBuf) -> std::result::Result<Self, SledError> {
        Ok(Trees {
            dir,
            meta: db.open_tree("meta")?,
            tenants: db.open_tree("tenants")?,
            tenant_names: db.open_tree("tenant_names")?,
            keyspaces: db.open_tree("keyspaces")?,
            keys: db.open_tree("keys")?,
            key_hashes: db.open_tree("key_hashes")?,
            key_unique: db.open_tree("key_unique")?,
            by_keyspace: db.open_tree("keys_by_keyspace")?,
            by_owner: db.open_tree("keys_by_owner")?,
            last_used: db.open_tree("key_last_used")?,
            audit: db.open_tree("audit")?,
            balances: db.open_tree("balances")?,
            windows: db.open_tree("windows")?,
            records: db.open_tree("records")?,
            usage: db.open_tree("usage")?,
            verifications: db.open_tree("verifications")?,
            reports: db.open_tree("usage_reports")?,
            overlay: Overlay::default(),
            db,
        })
    }

    /// Stamps a new database with [`FORMAT_VERSION`], migrates an older
    /// one (see `crate::migrate`), refuses a newer one.
    pub(crate) fn check_format(&self, path: &Path) -> std::result::Result<(), SledError> {
        match self.meta.get(META_FORMAT)? {
            None => {
                self.meta
                    .insert(META_FORMAT, &FORMAT_VERSION.to_be_bytes())?;
                self.db.flush()?;
                Ok(())
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| SledError::Corrupt {
                        path: path.to_path_buf(),
                        detail: "the format version record is malformed".into(),
                    })?;
                if found > FORMAT_VERSION {
                    return Err(SledError::NewerFormat {
                        path: path.to_path_buf(),
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
                if found == 0 {
                    return Err(SledError::Corrupt {
                        path: path.to_path_buf(),
                        detail: "format version 0 does not exist".into(),
                    });
                }
                if found < FORMAT_VERSION {
                    crate::migrate::migrate(self, found).map_err(|e| SledError::Corrupt {
                        path: path.to_path_buf(),
                        detail: format!(
                            "migrating from format {found} to {FORMAT_VERSION} failed (the \
                             database is unchanged where it was not migrated; opening it \
                             again resumes): {e}"
                        ),
                    })?;
                    self.meta
                        .insert(META_FORMAT, &FORMAT_VERSION.to_be_bytes())?;
                    self.db.flush()?;
                }
                Ok(())
            }
        }
    }

    /// The database.
    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// The database directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tree a journaled change belongs to.
    pub(crate) fn journaled(&self, which: Journaled) -> &Tree {
        match which {
            Journaled::Balances => &self.balances,
            Journaled::Windows => &self.windows,
            Journaled::Usage => &self.usage,
            Journaled::Verifications => &self.verifications,
            Journaled::Reports => &self.reports,
        }
    }

    /// Sets `key` of a journaled tree to `value` (`None`: removes) and notes
    /// it in the round's journal record. The value waits in the overlay until
    /// it is drained into sled (see `crate::overlay`).
    pub(crate) fn put_journaled(
        &self,
        j: &mut Journal,
        which: Journaled,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<()> {
        self.overlay.put(which, key, value);
        j.note(which, key, value);
        Ok(())
    }

    /// The value of `key` in a journaled tree: the overlay's, else sled's.
    pub(crate) fn get_journaled(&self, which: Journaled, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.overlay.get(which, key) {
            Some(v) => Ok(v),
            None => Ok(self
                .journaled(which)
                .get(key)
                .map_err(map_sled)?
                .map(|v| v.to_vec())),
        }
    }

    /// The entries of a journaled tree with keys in `[lo, hi)`, in key order:
    /// sled's, with the overlay's over them. (The overlay is read first: an
    /// entry drained into sled meanwhile is then found in sled.)
    pub(crate) fn range_journaled(
        &self,
        which: Journaled,
        lo: &[u8],
        hi: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let over = self.overlay.range(which, lo, hi);
        let mut all: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = self
            .journaled(which)
            .range(lo..hi)
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<std::result::Result<_, _>>()
            .map_err(map_sled)?;
        for (k, v) in over {
            match v {
                Some(v) => all.insert(k, v),
                None => all.remove(&k),
            };
        }
        Ok(all.into_iter().collect())
    }

    /// Writes `value` (`None`: removes) under `key` of a journaled tree.
    fn apply(&self, which: Journaled, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let tree = self.journaled(which);
        match value {
            Some(v) => tree.insert(key, v).map(drop),
            None => tree.remove(key).map(drop),
        }
        .map_err(map_sled)
    }

    /// Applies the journal's entries (on open, before anything else runs).
    pub(crate) fn replay(&self, entries: &[Entry]) -> Result<()> {
        for (which, key, value) in entries {
            self.apply(*which, key, value.as_deref())?;
        }
        Ok(())
    }

    pub(crate) fn get<T: Stored>(&self, tree: &Tree, id: &[u8]) -> Result<Option<T>> {
        match tree.get(id).map_err(map_sled)? {
            Some(v) => decode(&v).map(Some),
            None => Ok(None),
        }
    }

    /// One page of a tree keyed by id, after the cursor; total = tree length.
    pub(crate) fn page<T: Stored>(&self, tree: &Tree, page: &PageRequest) -> Result<Page<T>> {
        let size = page.size();
        let iter = match &page.cursor {
            Some(c) => tree.range::<&[u8], _>((Bound::Excluded(c.as_bytes()), Bound::Unbounded)),
            None => tree.iter(),
        };
        let mut items = Vec::new();
        let mut last = None;
        for kv in iter.take(size + 1) {
            let (k, v) = kv.map_err(map_sled)?;
            if items.len() == size {
                let cursor = last.map(|l: sled::IVec| String::from_utf8_lossy(&l).into_owned());
                return Ok(Page {
                    items,
                    cursor,
                    total: tree.len() as u64,
                });
            }
            items.push(decode(&v)?);
            last = Some(k);
        }
        Ok(Page {
            items,
            cursor: None,
            total: tree.len() as u64,
        })
    }

    pub(crate) fn with_last_used(&self, mut k: KeyRecord) -> Result<KeyRecord> {
        if let Some(v) = self.last_used.get(k.id.as_str()).map_err(map_sled)? {
            let at = Timestamp::from_millis(be_i64(&v));
            k.last_used_at = k.last_used_at.max(Some(at));
        }
        Ok(k)
    }

    pub(crate) fn check_integrity(&self) -> Result<IntegrityReport> {
        let mut r = IntegrityReport::default();
        let has = |tree: &Tree, k: &[u8], want: Option<&[u8]>| -> Result<bool> {
            Ok(match tree.get(k).map_err(map_sled)? {
                Some(v) => want.is_none_or(|w| v == w),
                None => false,
            })
        };
        for kv in self.keys.iter() {
            let (id, v) = kv.map_err(map_sled)?;
            let k: KeyRecord = decode(&v)?;
            r.keys += 1;
            let ids = k.id.as_str();
            if id != ids.as_bytes() {
                r.problems.push(format!(
                    "key stored under '{}' has id {ids}",
                    String::from_utf8_lossy(&id)
                ));
            }
            let f = [flag(&k)];
            if !has(&self.key_hashes, k.hash.as_bytes(), Some(ids.as_bytes()))? {
                r.problems
                    .push(format!("key {ids}: hash index missing or wrong"));
            }
            if !has(
                &self.by_keyspace,
                &joined(&[k.keyspace_id.as_str(), ids]),
                Some(&f),
            )? {
                r.problems
                    .push(format!("key {ids}: keyspace index missing or wrong"));
            }
            if let Some(o) = &k.owner_id
                && !has(&self.by_owner, &joined(&[o, ids]), Some(&owner_value(&k)))?
            {
                r.problems
                    .push(format!("key {ids}: owner index missing or wrong"));
            }
            if let Some(slot) = unique_key(&k)
                && !has(&self.key_unique, &slot, Some(ids.as_bytes()))?
            {
                r.problems
                    .push(format!("key {ids}: unique-name index missing or wrong"));
            }
        }
        for (tree, name, id_at) in [
            (&self.key_hashes, "hash index", IdAt::Value),
            (&self.key_unique, "unique-name index", IdAt::Value),
            (&self.by_keyspace, "keyspace index", IdAt::LastPart),
            (&self.by_owner, "owner index", IdAt::LastPart),
        ] {
            for kv in tree.iter() {
                let (k, v) = kv.map_err(map_sled)?;
                r.index_entries += 1;
                let id: &[u8] = match id_at {
                    IdAt::Value => &v,
                    IdAt::LastPart => last_part(&k),
                };
                if !self.keys.contains_key(id).map_err(map_sled)? {
                    r.problems.push(format!(
                        "{name} entry '{}' points at missing key '{}'",
                        String::from_utf8_lossy(&k),
                        String::from_utf8_lossy(id)
                    ));
                }
            }
        }
        Ok(r)
    }
}

/// Configuration changes: each is one sled transaction with its audit event,
/// run on the writer thread holding the gate exclusively.
impl Trees {
    fn transact<T>(
        &self,
        run: impl FnOnce() -> std::result::Result<T, TransactionError<Error>>,
    ) -> Result<T> {
        finish(crate::writer::exclusive(run))
    }

    pub(crate) fn create_tenant(&self, tenant: &Tenant, audit: &AuditEvent) -> Result<()> {
        let id = tenant.id.as_str().as_bytes();
        let bytes = encode(tenant)?;
        self.transact(|| {
            (&self.tenants, &self.tenant_names, &self.audit, &self.meta).transaction(
                |(tenants, names, log, meta)| {
                    if tenants.get(id)?.is_some() {
                        return abort(Error::conflict(format!("tenant '{}' exists", tenant.id)));
                    }
                    if names.get(tenant.name.as_bytes())?.is_some() {
                        return abort(Error::conflict(format!(
                            "a tenant named '{}' exists",
                            tenant.name
                        )));
                    }
                    tenants.insert(id, bytes.as_slice())?;
                    names.insert(tenant.name.as_bytes(), id)?;
                    tx_audit(log, meta, audit)?;
                    Ok(())
                },
            )
        })
    }

    pub(crate) fn get_tenant_by_name(&self, name: &str) -> Result<Option<Tenant>> {
        match self.tenant_names.get(name.as_bytes()).map_err(map_sled)? {
            Some(id) => self.get(&self.tenants, &id),
            None => Ok(None),
        }
    }

    pub(crate) fn update_tenant(
        &self,
        tenant: &Tenant,
        expected_version: u64,
        audit: &AuditEvent,
    ) -> Result<()> {
        let id = tenant.id.as_str().as_bytes();
        let mut stored = tenant.clone();
        stored.version = expected_version + 1;
        let bytes = encode(&stored)?;
        self.transact(|| {
            (&self.tenants, &self.tenant_names, &self.audit, &self.meta).transaction(
                |(tenants, names, log, meta)| {
                    let Some(cur) = tenants.get(id)? else {
                        return abort(Error::not_found("tenant", tenant.id.as_str()));
                    };
                    let cur: Tenant = ab(decode(&cur))?;
                    if cur.version != expected_version {
                        return abort(version_conflict("tenant", tenant.id.as_str()));
                    }
                    if cur.name != tenant.name {
                        if names.get(tenant.name.as_bytes())?.is_some() {
                            return abort(Error::conflict(format!(
                                "a tenant named '{}' exists",
                                tenant.name
                            )));
                        }
                        names.remove(cur.name.as_bytes())?;
                        names.insert(tenant.name.as_bytes(), id)?;
                    }
                    tenants.insert(id, bytes.as_slice())?;
                    tx_audit(log, meta, audit)?;
                    Ok(())
                },
            )
        })
    }

    pub(crate) fn delete_tenant(&self, id: &TenantId, audit: &AuditEvent) -> Result<()> {
        let key = id.as_str().as_bytes();
        self.transact(|| {
            (&self.tenants, &self.tenant_names, &self.audit, &self.meta).transaction(
                |(tenants, names, log, meta)| {
                    let Some(cur) = tenants.remove(key)? else {
                        return abort(Error::not_found("tenant", id.as_str()));
                    };
                    let cur: Tenant = ab(decode(&cur))?;
                    names.remove(cur.name.as_bytes())?;
                    tx_audit(log, meta, audit)?;
                    Ok(())
                },
            )
        })
    }

    pub(crate) fn create_keyspace(&self, keyspace: &Keyspace, audit: &AuditEvent) -> Result<()> {
        let id = keyspace.id.as_str().as_bytes();
        let bytes = encode(keyspace)?;
        self.transact(|| {
            (&self.keyspaces, &self.audit, &self.meta).transaction(|(spaces, log, meta)| {
                if spaces.get(id)?.is_some() {
                    return abort(Error::conflict(format!(
                        "keyspace '{}' exists",
                        keyspace.id
                    )));
                }
                spaces.insert(id, bytes.as_slice())?;
                tx_audit(log, meta, audit)?;
                Ok(())
            })
        })
    }

    pub(crate) fn update_keyspace(
        &self,
        keyspace: &Keyspace,
        expected_version: u64,
        audit: &AuditEvent,
    ) -> Result<()> {
        let id = keyspace.id.as_str().as_bytes();
        let mut stored = keyspace.clone();
        stored.version = expected_version + 1;
        let bytes = encode(&stored)?;
        self.transact(|| {
            (&self.keyspaces, &self.audit, &self.meta).transaction(|(spaces, log, meta)| {
                let Some(cur) = spaces.get(id)? else {
                    return abort(Error::not_found("keyspace", keyspace.id.as_str()));
                };
                let cur: Keyspace = ab(decode(&cur))?;
                if cur.version != expected_version {
                    return abort(version_conflict("keyspace", keyspace.id.as_str()));
                }
                spaces.insert(id, bytes.as_slice())?;
                tx_audit(log, meta, audit)?;
                Ok(())
            })
        })
    }

    pub(crate) fn delete_keyspace(&self, id: &KeyspaceId, audit: &AuditEvent) -> Result<()> {
        self.transact(|| {
            (&self.keyspaces, &self.audit, &self.meta).transaction(|(spaces, log, meta)| {
                if spaces.remove(id.as_str().as_bytes())?.is_none() {
                    return abort(Error::not_found("keyspace", id.as_str()));
                }
                tx_audit(log, meta, audit)?;
                Ok(())
            })
        })
    }

    /// Runs `f` in a transaction over every key tree plus the audit log.
    fn key_transaction(
        &self,
        f: impl Fn(&KeyTx<'_>, &TransactionalTree, &TransactionalTree) -> TxResult<()>,
    ) -> Result<()> {
        self.transact(|| {
            (
                &self.keys,
                &self.key_hashes,
                &self.key_unique,
                &self.by_keyspace,
                &self.by_owner,
                &self.audit,
                &self.meta,
            )
                .transaction(
                    |(keys, hashes, unique, by_keyspace, by_owner, log, meta)| {
                        let tx = KeyTx {
                            keys,
                            hashes,
                            unique,
                            by_keyspace,
                            by_owner,
                        };
                        f(&tx, log, meta)
                    },
                )
        })
    }

    /// Ids matching `query` from the narrowest index, with the total.
    /// The ids of `query`'s page (one more than the page, if there is more)
    /// and, when `count` is set, how many match in all; without `count` the
    /// scan starts at the cursor and stops after the page.
    fn matching_ids(&self, query: &KeyQuery, count: bool) -> Result<(Vec<Vec<u8>>, u64)> {
        let mut page = IdPage::new(query);
        let cursor = query.page.cursor.as_deref().unwrap_or_default().as_bytes();
        let (tree, prefix) = match (&query.owner_id, &query.keyspace_id) {
            (Some(o), _) => (&self.by_owner, joined(&[o, ""])),
            (None, Some(ks)) => (&self.by_keyspace, joined(&[ks.as_str(), ""])),
            (None, None) => {
                // No index holds every key: the `keys` tree itself, each
                // record read for its deletion mark (only when it matters).
                let iter = if count {
                    self.keys.iter()
                } else {
                    self.keys.range(cursor..)
                };
                for kv in iter {
                    let (id, v) = kv.map_err(map_sled)?;
                    let deleted =
                        !query.include_deleted && decode::<KeyRecord>(&v)?.deleted_at.is_some();
                    page.offer(&id, deleted);
                    if !count && page.full() {
                        break;
                    }
                }
                return Ok(page.done());
            }
        };
        let iter = if count {
            tree.scan_prefix(&prefix)
        } else {
            let mut from = prefix.clone();
            from.extend_from_slice(cursor);
            tree.range(from..)
        };
        for kv in iter {
            let (k, v) = kv.map_err(map_sled)?;
            if !k.starts_with(&prefix) || (!count && page.full()) {
                break;
            }
            if let (Some(_), Some(ks)) = (&query.owner_id, &query.keyspace_id)
                && v.get(1..) != Some(ks.as_str().as_bytes())
            {
                continue;
            }
            page.offer(last_part(&k), v.first() == Some(&DELETED));
        }
        Ok(page.done())
    }

    pub(crate) fn create_key(&self, key: &KeyRecord, audit: &AuditEvent) -> Result<()> {
        let id = key.id.as_str().as_bytes();
        let bytes = encode(key)?;
        self.key_transaction(|tx, log, meta| {
            if tx.keys.get(id)?.is_some() {
                return abort(Error::conflict(format!("key '{}' exists", key.id)));
            }
            tx.check_free(key)?;
            tx.index(key)?;
            tx.keys.insert(id, bytes.as_slice())?;
            tx_audit(log, meta, audit)?;
            Ok(())
        })
    }

    pub(crate) fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>> {
        match self.get(&self.keys, id.as_str().as_bytes())? {
            Some(k) => self.with_last_used(k).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn get_key_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>> {
        match self.key_hashes.get(hash.as_bytes()).map_err(map_sled)? {
            Some(id) => match self.get::<KeyRecord>(&self.keys, &id)? {
                Some(k) => self.with_last_used(k).map(Some),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// A page of keys; `count`: with the number of all that match (a scan
    /// of the whole index), else `total` is 0.
    pub(crate) fn list_keys(&self, query: &KeyQuery, count: bool) -> Result<Page<KeyRecord>> {
        let (ids, total) = self.matching_ids(query, count)?;
        let mut items = Vec::with_capacity(ids.len());
        for id in &ids {
            if let Some(k) = self.get::<KeyRecord>(&self.keys, id)? {
                items.push(self.with_last_used(k)?);
            }
        }
        let size = query.page.size();
        let more = items.len() > size;
        items.truncate(size);
        let cursor = if more {
            items.last().map(|k| k.id.to_string())
        } else {
            None
        };
        Ok(Page {
            items,
            cursor,
            total,
        })
    }

    pub(crate) fn update_key(
        &self,
        key: &KeyRecord,
        expected_version: u64,
        audit: &AuditEvent,
    ) -> Result<()> {
        let id = key.id.as_str().as_bytes();
        let mut stored = key.clone();
        stored.version = expected_version + 1;
        let bytes = encode(&stored)?;
        self.key_transaction(|tx, log, meta| {
            let Some(cur) = tx.keys.get(id)? else {
                return abort(Error::not_found("key", key.id.as_str()));
            };
            let cur: KeyRecord = ab(decode(&cur))?;
            if cur.version != expected_version {
                return abort(version_conflict("key", key.id.as_str()));
            }
            tx.check_free(&stored)?;
            tx.unindex(&cur)?;
            tx.index(&stored)?;
            tx.keys.insert(id, bytes.as_slice())?;
            tx_audit(log, meta, audit)?;
            Ok(())
        })
    }

    /// Last uses, each the later of the stored and the given time. Not a
    /// transaction: each key stands alone.
    pub(crate) fn touch_keys(&self, used: &[(KeyId, Timestamp)]) -> Result<()> {
        for (id, at) in used {
            let key = id.as_str().as_bytes();
            if !self.keys.contains_key(key).map_err(map_sled)? {
                continue;
            }
            let at = at.as_millis();
            self.last_used
                .update_and_fetch(key, |old| {
                    let prev =
                        old.map_or(i64::MIN, |v| i64::from_be_bytes(be_u64(v).to_be_bytes()));
                    Some(prev.max(at).to_be_bytes().to_vec())
                })
                .map_err(map_sled)?;
        }
        Ok(())
    }

    pub(crate) fn append_audit(&self, event: &AuditEvent) -> Result<u64> {
        self.transact(|| {
            (&self.audit, &self.meta).transaction(|(log, meta)| tx_audit(log, meta, event))
        })
    }

    pub(crate) fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEvent>> {
        let size = audit_page_size(query);
        let iter = match query.before_seq {
            Some(seq) => self.audit.range(..seq.to_be_bytes()),
            None => self.audit.iter(),
        };
        let mut items: Vec<AuditEvent> = Vec::new();
        let mut more = false;
        for kv in iter.rev() {
            let (_, v) = kv.map_err(map_sled)?;
            if items.len() == size {
                more = true;
                break;
            }
            items.push(decode(&v)?);
        }
        let cursor = if more {
            items.last().map(|e| e.seq.to_string())
        } else {
            None
        };
        let total = self
            .meta
            .get(META_AUDIT_COUNT)
            .map_err(map_sled)?
            .map_or(0, |v| be_u64(&v));
        Ok(Page {
            items,
            cursor,
            total,
        })
    }

    pub(crate) fn create_record(&self, record: &Record, audit: &AuditEvent) -> Result<()> {
        let key = joined(&[&record.kind, &record.id]);
        let bytes = encode(record)?;
        self.transact(|| {
            (&self.records, &self.audit, &self.meta).transaction(|(records, log, meta)| {
                if records.get(&key)?.is_some() {
                    return abort(Error::conflict(format!(
                        "{} '{}' exists",
                        record.kind, record.id
                    )));
                }
                records.insert(key.as_slice(), bytes.as_slice())?;
                tx_audit(log, meta, audit)?;
                Ok(())
            })
        })
    }

    pub(crate) fn list_records(&self, kind: &str, page: &PageRequest) -> Result<Page<Record>> {
        let mut prefix = kind.as_bytes().to_vec();
        prefix.push(0);
        let mut total = 0u64;
        let mut all = Vec::new();
        for kv in self.records.scan_prefix(&prefix) {
            let (k, v) = kv.map_err(map_sled)?;
            total += 1;
            let id = &k[prefix.len()..];
            let after_cursor = page.cursor.as_deref().is_none_or(|c| id > c.as_bytes());
            if after_cursor && all.len() <= page.size() {
                all.push(decode::<Record>(&v)?);
            }
        }
        Ok(page.paginate(all, |r| &r.id, total))
    }

    pub(crate) fn update_record(
        &self,
        record: &Record,
        expected_version: u64,
        audit: &AuditEvent,
    ) -> Result<()> {
        let key = joined(&[&record.kind, &record.id]);
        let mut stored = record.clone();
        stored.version = expected_version + 1;
        let bytes = encode(&stored)?;
        self.transact(|| {
            (&self.records, &self.audit, &self.meta).transaction(|(records, log, meta)| {
                let Some(cur) = records.get(&key)? else {
                    return abort(Error::not_found(
                        "record",
                        format!("{}/{}", record.kind, record.id),
                    ));
                };
                let cur: Record = ab(decode(&cur))?;
                if cur.version != expected_version {
                    return abort(version_conflict(&record.kind, &record.id));
                }
                records.insert(key.as_slice(), bytes.as_slice())?;
                tx_audit(log, meta, audit)?;
                Ok(())
            })
        })
    }

    pub(crate) fn delete_record(&self, kind: &str, id: &str, audit: &AuditEvent) -> Result<()> {
        let key = joined(&[kind, id]);
        self.transact(|| {
            (&self.records, &self.audit, &self.meta).transaction(|(records, log, meta)| {
                if records.remove(key.as_slice())?.is_none() {
                    return abort(Error::not_found("record", format!("{kind}/{id}")));
                }
                tx_audit(log, meta, audit)?;
                Ok(())
            })
        })
    }
}
