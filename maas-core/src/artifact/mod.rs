//! Configuration artifacts for data planes: canonical bytes, their SHA-256,
//! a sequence number that only grows (kept in the store, so it survives
//! restarts) and an Ed25519 signature data planes check with the control
//! plane's public key.
//!
//! [`Artifacts::publish`] stores an artifact built from configuration
//! (what goes in is the caller's: never a secret); [`Artifacts::get`]
//! serves it for download; [`verify`] is what a data plane runs before it
//! applies one.

use std::sync::Arc;

mod keys;
pub use keys::KeyTable;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::{Actor, AuditEvent};
use crate::clock::{SharedClock, Timestamp};
use crate::error::{Error, Result};
use crate::storage::{Record, Storage};

/// The record kind of stored artifacts.
pub const ARTIFACT_KIND: &str = "artifact";
const HEAD_KIND: &str = "artifact_head";
const KEY_KIND: &str = "artifact_signing_key";
const SINGLETON: &str = "current";
/// How many artifacts are kept (the newest); older ones are deleted.
pub const KEEP: usize = 3;

/// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410), before its
/// 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// What describes an artifact (its bytes aside).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactMeta {
    /// Its id (a UUID).
    pub artifact_id: String,
    /// Its sequence number: each artifact's is greater than the last's.
    pub sequence: u64,
    /// SHA-256 of its bytes, lower-case hex.
    pub sha256: String,
    /// Ed25519 signature of its `sha256` (the 64 lower-case hex digits
    /// as ASCII), base64url without padding: signing the digest keeps the
    /// signature's cost independent of the artifact's size.
    pub signature: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was built.
    pub created_at: Timestamp,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    meta: ArtifactMeta,
    /// The bytes, base64url.
    bytes: String,
}

#[derive(Serialize, Deserialize)]
struct Head {
    sequence: u64,
    /// The ids kept, oldest first.
    kept: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct SigningSeed {
    /// 32 bytes, base64url.
    seed: String,
}

/// Builds, signs, stores and serves artifacts. Cheap to clone (clones
/// share the newest artifact read or published, kept in memory, so every
/// data plane downloading it does not read and decode it from the store).
#[derive(Clone)]
pub struct Artifacts {
    storage: Storage,
    clock: SharedClock,
    signer: Arc<(EncodingKey, String)>,
    newest: Arc<std::sync::Mutex<Option<Cached>>>,
}

/// An artifact kept in memory.
type Cached = (ArtifactMeta, Arc<Vec<u8>>);

impl std::fmt::Debug for Artifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifacts")
            .field("public_key", &self.signer.1)
            .finish_non_exhaustive()
    }
}

/// `bytes`' SHA-256, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks an artifact as a data plane must before applying it: its size,
/// its SHA-256 and its signature by `public_key` (base64url Ed25519, as
/// [`Artifacts::public_key`] gives it).
pub fn verify(meta: &ArtifactMeta, bytes: &[u8], public_key: &str) -> Result<()> {
    if u64::try_from(bytes.len()).ok() != Some(meta.size) {
        return Err(Error::invalid(
            "artifact",
            format!("is {} bytes, announced {}", bytes.len(), meta.size),
        ));
    }
    if sha256_hex(bytes) != meta.sha256 {
        return Err(Error::invalid("artifact", "does not match its sha256"));
    }
    let key = DecodingKey::from_ed_components(public_key)
        .map_err(|_| Error::invalid("public_key", "is not an Ed25519 public key"))?;
    match jsonwebtoken::crypto::verify(
        &meta.signature,
        meta.sha256.as_bytes(),
        &key,
        Algorithm::EdDSA,
    ) {
        Ok(true) => Ok(()),
        _ => Err(Error::invalid(
            "artifact",
            "its signature does not verify with the control plane's key",
        )),
    }
}

impl Artifacts {
    /// Artifacts kept in `storage`, signed with the deployment's artifact
    /// key (generated and stored on first use).
    pub async fn open(storage: Storage, clock: SharedClock) -> Result<Self> {
        let seed = match storage.records.get_record(KEY_KIND, SINGLETON).await? {
            Some(r) => {
                let s: SigningSeed = serde_json::from_value(r.body)
                    .map_err(|_| Error::internal("the artifact signing key is unreadable"))?;
                URL_SAFE_NO_PAD
                    .decode(s.seed)
                    .map_err(|_| Error::internal("the artifact signing key is unreadable"))?
            }
            None => {
                let mut seed = [0u8; 32];
                rand::rng().fill_bytes(&mut seed);
                let now = clock.now();
                let record = Record {
                    kind: KEY_KIND.into(),
                    id: SINGLETON.into(),
                    body: serde_json::json!({"seed": URL_SAFE_NO_PAD.encode(seed)}),
                    created_at: now,
                    updated_at: now,
                    version: 1,
                };
                let event = AuditEvent::new(
                    now,
                    &Actor::system(),
                    "artifact_key.create",
                    KEY_KIND,
                    SINGLETON,
                    None,
                    None,
                );
                match storage.records.create_record(&record, event).await {
                    Ok(()) => seed.to_vec(),
                    // Another node made it first: use that one.
                    Err(Error::Conflict { .. }) => {
                        return Box::pin(Self::open(storage, clock)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        if seed.len() != 32 {
            return Err(Error::internal("the artifact signing key is not 32 bytes"));
        }
        let mut der = ED25519_PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        let key = EncodingKey::from_ed_der(&der);
        let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::EdDSA)
            .map_err(|e| Error::internal(format!("the artifact signing key: {e}")))?;
        let public = match jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(p) => p.x,
            _ => return Err(Error::internal("the artifact signing key is not Ed25519")),
        };
        Ok(Artifacts {
            storage,
            clock,
            signer: Arc::new((key, public)),
            newest: Arc::default(),
        })
    }

    /// The public key that verifies artifacts: Ed25519, base64url (a JWK's
    /// `x`).
    pub fn public_key(&self) -> &str {
        &self.signer.1
    }

    /// Signs and stores `bytes` as the next artifact; the oldest beyond
    /// [`KEEP`] are deleted.
    pub async fn publish(&self, actor: &Actor, bytes: &[u8]) -> Result<ArtifactMeta> {
        let sha256 = sha256_hex(bytes);
        let signature =
            jsonwebtoken::crypto::sign(sha256.as_bytes(), &self.signer.0, Algorithm::EdDSA)
                .map_err(|e| Error::internal(format!("cannot sign an artifact: {e}")))?;
        for _ in 0..16 {
            let now = self.clock.now();
            let head_rec = self
                .storage
                .records
                .get_record(HEAD_KIND, SINGLETON)
                .await?;
            let (mut head, version) = match &head_rec {
                Some(r) => (
                    serde_json::from_value::<Head>(r.body.clone())
                        .map_err(|_| Error::internal("the artifact head is unreadable"))?,
                    r.version,
                ),
                None => (
                    Head {
                        sequence: 0,
                        kept: Vec::new(),
                    },
                    0,
                ),
            };
            let meta = ArtifactMeta {
                artifact_id: crate::id::KeyId::generate(now)
                    .to_uuid()
                    .unwrap_or_default(),
                sequence: head.sequence + 1,
                sha256: sha256.clone(),
                signature: signature.clone(),
                size: u64::try_from(bytes.len()).unwrap_or(u64::MAX),
                created_at: now,
            };
            // The sequence first: whoever moves the head owns the number.
            head.sequence = meta.sequence;
            head.kept.push(meta.artifact_id.clone());
            let dropped: Vec<String> = if head.kept.len() > KEEP {
                head.kept.drain(..head.kept.len() - KEEP).collect()
            } else {
                Vec::new()
            };
            let body = serde_json::to_value(&head)
                .map_err(|e| Error::internal(format!("cannot encode the artifact head: {e}")))?;
            let after = serde_json::to_value(&meta).ok();
            let event = |action: &str, id: &str| {
                AuditEvent::new(now, actor, action, HEAD_KIND, id, None, after.clone())
            };
            let r = Record {
                kind: HEAD_KIND.into(),
                id: SINGLETON.into(),
                body,
                created_at: head_rec.as_ref().map_or(now, |h| h.created_at),
                updated_at: now,
                version: version + 1,
            };
            let moved = match head_rec {
                Some(_) => {
                    self.storage
                        .records
                        .update_record(&r, version, event("artifact.publish", &meta.artifact_id))
                        .await
                }
                None => {
                    self.storage
                        .records
                        .create_record(&r, event("artifact.publish", &meta.artifact_id))
                        .await
                }
            };
            match moved {
                Ok(_) => {}
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
            let stored = Stored {
                meta: meta.clone(),
                bytes: URL_SAFE_NO_PAD.encode(bytes),
            };
            let record = Record {
                kind: ARTIFACT_KIND.into(),
                id: meta.artifact_id.clone(),
                body: serde_json::to_value(&stored)
                    .map_err(|e| Error::internal(format!("cannot encode an artifact: {e}")))?,
                created_at: now,
                updated_at: now,
                version: 1,
            };
            self.storage
                .records
                .create_record(
                    &record,
                    AuditEvent::new(
                        now,
                        actor,
                        "artifact.create",
                        ARTIFACT_KIND,
                        &meta.artifact_id,
                        None,
                        None,
                    ),
                )
                .await?;
            self.remember(&meta, Arc::new(bytes.to_vec()));
            for id in dropped {
                let gone = AuditEvent::new(
                    now,
                    actor,
                    "artifact.delete",
                    ARTIFACT_KIND,
                    &id,
                    None,
                    None,
                );
                match self
                    .storage
                    .records
                    .delete_record(ARTIFACT_KIND, &id, gone)
                    .await
                {
                    Err(e) if !e.is_not_found() => return Err(e),
                    _ => {}
                }
            }
            return Ok(meta);
        }
        Err(Error::unavailable(
            "artifacts kept being published concurrently",
            true,
        ))
    }

    fn cached(&self, id: &str) -> Option<Cached> {
        let newest = self
            .newest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        newest
            .as_ref()
            .filter(|(m, _)| m.artifact_id == id)
            .map(|(m, b)| (m.clone(), Arc::clone(b)))
    }

    /// Keeps `meta` in memory if it is the newest seen.
    fn remember(&self, meta: &ArtifactMeta, bytes: Arc<Vec<u8>>) {
        let mut newest = self
            .newest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if newest
            .as_ref()
            .is_none_or(|(m, _)| m.sequence < meta.sequence)
        {
            *newest = Some((meta.clone(), bytes));
        }
    }

    /// Artifact `id` and its bytes, if kept.
    pub async fn get(&self, id: &str) -> Result<Option<(ArtifactMeta, Arc<Vec<u8>>)>> {
        if let Some(c) = self.cached(id) {
            return Ok(Some(c));
        }
        let Some(r) = self.storage.records.get_record(ARTIFACT_KIND, id).await? else {
            return Ok(None);
        };
        let stored: Stored = serde_json::from_value(r.body)
            .map_err(|_| Error::internal(format!("artifact {id} is unreadable")))?;
        let bytes = Arc::new(
            URL_SAFE_NO_PAD
                .decode(stored.bytes)
                .map_err(|_| Error::internal(format!("artifact {id} is unreadable")))?,
        );
        self.remember(&stored.meta, Arc::clone(&bytes));
        Ok(Some((stored.meta, bytes)))
    }

    /// The newest artifact's description, if any.
    pub async fn latest(&self) -> Result<Option<ArtifactMeta>> {
        let Some(r) = self
            .storage
            .records
            .get_record(HEAD_KIND, SINGLETON)
            .await?
        else {
            return Ok(None);
        };
        let head: Head = serde_json::from_value(r.body)
            .map_err(|_| Error::internal("the artifact head is unreadable"))?;
        match head.kept.last() {
            Some(id) => Ok(self.get(id).await?.map(|(m, _)| m)),
            None => Ok(None),
        }
    }
}

/// Whether `a` and `b` are the same key but for what a data plane keeps of
/// its own (its version and last use).
fn same_key(a: &crate::key::KeyRecord, b: &crate::key::KeyRecord) -> bool {
    // Every field named: a field added to keys is compared or skipped on
    // purpose.
    let crate::key::KeyRecord {
        id,
        keyspace_id,
        hash,
        start,
        prefix,
        byte_length,
        owner_id,
        name,
        unique_name,
        meta,
        created_at,
        updated_at,
        expires,
        remaining_limited,
        refill,
        ratelimit,
        roles,
        permissions,
        enabled,
        environment,
        last_used_at: _,
        deleted_at,
        version: _,
    } = b;
    a.id == *id
        && a.keyspace_id == *keyspace_id
        && a.hash == *hash
        && a.start == *start
        && a.prefix == *prefix
        && a.byte_length == *byte_length
        && a.owner_id == *owner_id
        && a.name == *name
        && a.unique_name == *unique_name
        && a.meta == *meta
        && a.created_at == *created_at
        && a.updated_at == *updated_at
        && a.expires == *expires
        && a.remaining_limited == *remaining_limited
        && a.refill == *refill
        && a.ratelimit == *ratelimit
        && a.roles == *roles
        && a.permissions == *permissions
        && a.enabled == *enabled
        && a.environment == *environment
        && a.deleted_at == *deleted_at
}

/// The record kinds an artifact carries: the configuration a data plane
/// serves from. Never the token key ring (it holds private keys), webhooks
/// or projects (the control plane's own business).
pub const CONFIG_KINDS: &[&str] = &[
    crate::tier::TIER_KIND,
    crate::model::MODEL_KIND,
    crate::scheduling::GROUP_KIND,
    crate::scheduling::CAPACITY_KIND,
    crate::admission::BUDGET_KIND,
    crate::ratelimit::OVERRIDE_KIND,
    crate::userkeys::SETTING_KIND,
    crate::token::REVOCATION_KIND,
];

/// What an artifact holds (format 1): configuration records of
/// [`CONFIG_KINDS`] (the settings name the user and root keyspaces), the
/// tenants, and the keyspaces that are not projects with their live keys
/// (as stored: the keyed hash of each secret, never the secret), each list
/// in id order, so the same configuration gives the same bytes. A data
/// plane verifies those keys with the deployment's key secret
/// (`MAAS_KEY_SECRET`), which stays outside artifacts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Content {
    /// 1.
    pub format: u32,
    /// The records, by kind then id.
    pub records: Vec<Record>,
    /// The tenants, by id.
    pub tenants: Vec<crate::tenant::Tenant>,
    /// The keyspaces that are not projects, by id.
    #[serde(default)]
    pub keyspaces: Vec<crate::keyspace::Keyspace>,
    /// Their live keys, by id.
    #[serde(default)]
    pub keys: Vec<crate::key::KeyRecord>,
    /// The public keys that verify maas tokens minted here (a JWKS
    /// document; never the private ones).
    #[serde(default)]
    pub token_keys: Option<serde_json::Value>,
}

impl Content {
    /// The configuration now in `storage`.
    pub async fn of(storage: &Storage) -> Result<Self> {
        Self::read(storage, true).await
    }

    /// The configuration in `storage`; its keys only if `with_keys`.
    async fn read(storage: &Storage, with_keys: bool) -> Result<Self> {
        let mut records = Vec::new();
        for kind in CONFIG_KINDS {
            let mut page = crate::storage::PageRequest::first(crate::storage::MAX_PAGE_SIZE);
            loop {
                let got = storage.records.list_records(kind, &page).await?;
                records.extend(got.items);
                match got.cursor {
                    Some(c) => page.cursor = Some(c),
                    None => break,
                }
            }
        }
        records.sort_by(|a, b| (&a.kind, &a.id).cmp(&(&b.kind, &b.id)));
        let mut tenants = Vec::new();
        let mut page = crate::storage::PageRequest::first(crate::storage::MAX_PAGE_SIZE);
        loop {
            let got = storage.tenants.list_tenants(&page).await?;
            tenants.extend(got.items);
            match got.cursor {
                Some(c) => page.cursor = Some(c),
                None => break,
            }
        }
        tenants.sort_by(|a, b| a.id.cmp(&b.id));
        let mut projects = std::collections::HashSet::new();
        let mut page = crate::storage::PageRequest::first(crate::storage::MAX_PAGE_SIZE);
        loop {
            let got = storage
                .records
                .list_records(crate::projects::PROJECT_KIND, &page)
                .await?;
            projects.extend(got.items.into_iter().map(|r| r.id));
            match got.cursor {
                Some(c) => page.cursor = Some(c),
                None => break,
            }
        }
        let mut keyspaces = Vec::new();
        let mut page = crate::storage::PageRequest::first(crate::storage::MAX_PAGE_SIZE);
        loop {
            let got = storage.keyspaces.list_keyspaces(&page).await?;
            keyspaces.extend(
                got.items
                    .into_iter()
                    .filter(|k| !projects.contains(k.id.as_str())),
            );
            match got.cursor {
                Some(c) => page.cursor = Some(c),
                None => break,
            }
        }
        keyspaces.sort_by(|a, b| a.id.cmp(&b.id));
        let mut keys = Vec::new();
        for ks in keyspaces.iter().filter(|_| with_keys) {
            let mut query = crate::storage::KeyQuery {
                keyspace_id: Some(ks.id.clone()),
                owner_id: None,
                include_deleted: false,
                page: crate::storage::PageRequest::first(crate::storage::MAX_PAGE_SIZE),
            };
            loop {
                let got = storage.keys.scan_keys(&query).await?;
                keys.extend(got.items);
                match got.cursor {
                    Some(c) => query.page.cursor = Some(c),
                    None => break,
                }
            }
        }
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Content {
            format: 1,
            records,
            tenants,
            keyspaces,
            keys,
            token_keys: crate::token::public_jwks(storage).await?,
        })
    }

    /// Canonical bytes (compact JSON).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::internal(format!("cannot encode: {e}")))
    }

    /// Reads bytes an artifact carries.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let c: Content = serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid("artifact", format!("unreadable: {e}")))?;
        if c.format != 1 {
            return Err(Error::invalid(
                "artifact",
                format!("format {} is not one this data plane reads", c.format),
            ));
        }
        if let Some(r) = c
            .records
            .iter()
            .find(|r| !CONFIG_KINDS.contains(&r.kind.as_str()))
        {
            return Err(Error::invalid(
                "artifact",
                format!("carries a record of kind '{}'", r.kind),
            ));
        }
        Ok(c)
    }

    /// Makes `storage`'s configuration this one but for the keys: records,
    /// tenants and keyspaces created, replaced or removed to match (each
    /// change one store operation, audited as `actor`); a local keyspace
    /// not in the artifact is left. The keys go to a data plane's
    /// [`KeyTable`] ([`KeyTable::replace`], after this: keys name their
    /// keyspaces); what caches hold is read again within their refresh.
    pub async fn apply_config(
        &self,
        storage: &Storage,
        actor: &Actor,
        now: Timestamp,
    ) -> Result<()> {
        let ours = Content::read(storage, false).await?;
        let event = |action: &str, kind: &str, id: &str| {
            AuditEvent::new(now, actor, action, kind, id, None, None)
        };
        let mut have: std::collections::HashMap<(&str, &str), &Record> = ours
            .records
            .iter()
            .map(|r| ((r.kind.as_str(), r.id.as_str()), r))
            .collect();
        for r in &self.records {
            match have.remove(&(r.kind.as_str(), r.id.as_str())) {
                Some(old) if old.body == r.body => {}
                Some(old) => {
                    let new = Record {
                        version: old.version + 1,
                        ..r.clone()
                    };
                    storage
                        .records
                        .update_record(&new, old.version, event("artifact.apply", &r.kind, &r.id))
                        .await?;
                }
                None => {
                    let new = Record {
                        version: 1,
                        ..r.clone()
                    };
                    storage
                        .records
                        .create_record(&new, event("artifact.apply", &r.kind, &r.id))
                        .await?;
                }
            }
        }
        for ((kind, id), _) in have {
            match storage
                .records
                .delete_record(kind, id, event("artifact.apply", kind, id))
                .await
            {
                Err(e) if !e.is_not_found() => return Err(e),
                _ => {}
            }
        }
        let mut tenants: std::collections::HashMap<&crate::id::TenantId, &crate::tenant::Tenant> =
            ours.tenants.iter().map(|t| (&t.id, t)).collect();
        for t in &self.tenants {
            match tenants.remove(&t.id) {
                Some(old)
                    if *old
                        == (crate::tenant::Tenant {
                            version: old.version,
                            ..t.clone()
                        }) => {}
                Some(old) => {
                    let new = crate::tenant::Tenant {
                        version: old.version + 1,
                        ..t.clone()
                    };
                    storage
                        .tenants
                        .update_tenant(
                            &new,
                            old.version,
                            event("artifact.apply", "tenant", t.id.as_str()),
                        )
                        .await?;
                }
                None => {
                    let new = crate::tenant::Tenant {
                        version: 1,
                        ..t.clone()
                    };
                    storage
                        .tenants
                        .create_tenant(&new, event("artifact.apply", "tenant", t.id.as_str()))
                        .await?;
                }
            }
        }
        for (id, _) in tenants {
            match storage
                .tenants
                .delete_tenant(id, event("artifact.apply", "tenant", id.as_str()))
                .await
            {
                Err(e) if !e.is_not_found() => return Err(e),
                _ => {}
            }
        }
        // Keyspaces (the keys, applied after, name theirs); a local
        // keyspace not in the artifact is left.
        let have: std::collections::HashMap<_, _> =
            ours.keyspaces.iter().map(|k| (k.id.clone(), k)).collect();
        for k in &self.keyspaces {
            match have.get(&k.id) {
                Some(old)
                    if **old
                        == (crate::keyspace::Keyspace {
                            version: old.version,
                            ..k.clone()
                        }) => {}
                Some(old) => {
                    let new = crate::keyspace::Keyspace {
                        version: old.version + 1,
                        ..k.clone()
                    };
                    storage
                        .keyspaces
                        .update_keyspace(
                            &new,
                            old.version,
                            event("artifact.apply", "keyspace", k.id.as_str()),
                        )
                        .await?;
                }
                None => {
                    let new = crate::keyspace::Keyspace {
                        version: 1,
                        ..k.clone()
                    };
                    storage
                        .keyspaces
                        .create_keyspace(&new, event("artifact.apply", "keyspace", k.id.as_str()))
                        .await?;
                }
            }
        }
        Ok(())
    }
}
