//! Projects (seed 001's `/projects`): a project is a maas keyspace, with a
//! description, whose API keys carry scopes (permissions), an optional
//! expiry and a unique name; revoking one soft-deletes it.
//!
//! The keyspace holds the name and the keys; a `project` catalog record
//! (id = the keyspace id) marks the keyspace as a project and holds the
//! description, so other keyspaces (Unkey apis, the user and root
//! keyspaces) are not projects.

use serde::{Deserialize, Serialize};

use crate::audit::Actor;
use crate::catalog;
use std::sync::Arc;

use crate::artifact::Artifacts;
use crate::clock::{Clock, SharedClock, SystemClock, Timestamp};
use crate::dataplane::DataPlanes;
use crate::error::{Error, Result};
use crate::id::{KeyId, KeyspaceId};
use crate::key::{Key, KeyService, NewKey};
use crate::keyspace::{KeyspaceUpdate, NewKeyspace};
use crate::patch::Patch;
use crate::storage::{KeyQuery, MAX_PAGE_SIZE, PageRequest};

/// The record kind of projects.
pub const PROJECT_KIND: &str = "project";
/// The prefix of project API keys.
pub const PROJECT_KEY_PREFIX: &str = "mp";
/// The scope of project keys created without scopes.
pub const DEFAULT_SCOPE: &str = "data-plane:connect";
const MAX_DESCRIPTION: usize = 4096;

/// A project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Project {
    /// Its keyspace's id (shown as a UUID, seed 001's form).
    #[serde(with = "crate::id::uuid_form")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = "uuid"))]
    pub id: KeyspaceId,
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// When it was created (RFC 3339).
    #[serde(with = "crate::clock::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// When it was last changed (RFC 3339).
    #[serde(with = "crate::clock::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: Timestamp,
}

/// The project record: what the keyspace does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ProjectRecord {
    id: String,
    description: Option<String>,
    created_at: Timestamp,
    updated_at: Timestamp,
    version: u64,
}

impl crate::versioned::Versioned for ProjectRecord {
    fn version(&self) -> u64 {
        self.version
    }
    fn set_version(&mut self, v: u64) {
        self.version = v;
    }
}

impl catalog::Entry for ProjectRecord {
    const KIND: &'static str = PROJECT_KIND;
    fn id(&self) -> &str {
        &self.id
    }
    fn created_at(&self) -> Timestamp {
        self.created_at
    }
}

/// A project API key as listed: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectKey {
    /// The key's id (shown as a UUID, seed 001's form).
    #[serde(with = "crate::id::uuid_form")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = "uuid"))]
    pub id: KeyId,
    /// The project (shown as a UUID).
    #[serde(with = "crate::id::uuid_form")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = "uuid"))]
    pub project_id: KeyspaceId,
    /// Its name (unique among the project's live keys).
    pub name: String,
    /// The prefix and first characters of the secret.
    pub key_prefix: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// When it expires (RFC 3339).
    #[serde(with = "crate::clock::rfc3339::option")]
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, format = DateTime)
    )]
    pub expires_at: Option<Timestamp>,
    /// When it last verified (RFC 3339).
    #[serde(with = "crate::clock::rfc3339::option")]
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, format = DateTime)
    )]
    pub last_used_at: Option<Timestamp>,
    /// When it was created (RFC 3339).
    #[serde(with = "crate::clock::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// When it was revoked (RFC 3339).
    #[serde(with = "crate::clock::rfc3339::option")]
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, format = DateTime)
    )]
    pub revoked_at: Option<Timestamp>,
}

impl ProjectKey {
    fn of(k: &Key) -> Self {
        ProjectKey {
            id: k.id.clone(),
            project_id: k.keyspace_id.clone(),
            name: k.name.clone().unwrap_or_default(),
            key_prefix: k.start.clone(),
            scopes: k.permissions.clone(),
            expires_at: k.expires,
            last_used_at: k.last_used_at,
            created_at: k.created_at,
            revoked_at: k.deleted_at,
        }
    }
}

/// A new project key, with its secret shown this once.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedProjectKey {
    /// The key as listed.
    #[serde(flatten)]
    pub key: ProjectKey,
    /// The secret.
    #[serde(rename = "key")]
    pub secret: String,
}

impl std::fmt::Debug for CreatedProjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedProjectKey")
            .field("key", &self.key)
            .field("secret", &"<secret>")
            .finish()
    }
}

fn check_description(d: Option<&str>) -> Result<()> {
    match d {
        Some(d) if d.len() > MAX_DESCRIPTION => Err(Error::invalid(
            "description",
            format!("must be at most {MAX_DESCRIPTION} bytes"),
        )),
        _ => Ok(()),
    }
}

/// Projects and their API keys, the data planes connected to them and the
/// artifacts deployed to those. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Projects {
    keys: KeyService,
    clock: SharedClock,
    data_planes: DataPlanes,
    artifacts: Arc<tokio::sync::OnceCell<Artifacts>>,
}

impl Projects {
    /// Projects over `keys` (and its storage), on the system clock.
    pub fn new(keys: KeyService) -> Self {
        Self::new_with_clock(keys, Arc::new(SystemClock))
    }

    /// Projects over `keys`, on `clock`.
    pub fn new_with_clock(keys: KeyService, clock: Arc<dyn Clock>) -> Self {
        Projects {
            keys,
            data_planes: DataPlanes::new(clock.clone(), crate::dataplane::DEFAULT_HEARTBEAT),
            clock,
            artifacts: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// The same projects, telling data planes to heartbeat every
    /// `interval` (default 30 s, seed 001's).
    pub fn with_heartbeat(mut self, interval: std::time::Duration) -> Self {
        self.data_planes = DataPlanes::new(self.clock.clone(), interval);
        self
    }

    /// The data planes connected to this control plane.
    pub fn data_planes(&self) -> &DataPlanes {
        &self.data_planes
    }

    /// The artifacts (opened, with their signing key, on first use).
    pub async fn artifacts(&self) -> Result<&Artifacts> {
        self.artifacts
            .get_or_try_init(|| Artifacts::open(self.keys.storage().clone(), self.clock.clone()))
            .await
    }

    /// Builds and deploys artifacts as the configuration changes, until
    /// `stop` turns true: the audit log is looked at every `every`; a burst
    /// of changes becomes one artifact once quiet for `debounce`, a removal
    /// or revocation goes out at once. Each artifact is made the current
    /// one of every project and announced to their connected data planes.
    pub async fn run_auto_deploy(
        &self,
        every: std::time::Duration,
        debounce: std::time::Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let storage = self.keys.storage().clone();
        let newest = |storage: crate::storage::Storage| async move {
            storage
                .audit
                .list_audit(&crate::audit::AuditQuery {
                    before_seq: None,
                    limit: 1,
                })
                .await
                .map(|p| p.items.first().map_or(0, |e| e.seq))
        };
        let mut seen = newest(storage.clone()).await.unwrap_or(0);
        let mut pending: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            // Nothing new (the usual case): one newest event read, no page.
            let newest_now = newest(storage.clone()).await.unwrap_or(seen);
            if newest_now <= seen && pending.is_none() {
                continue;
            }
            let fresh = newest_now > seen;
            // The configuration changes since `seen`, newest first.
            let mut urgent = false;
            let mut changed = false;
            let mut before = None;
            let mut top = seen;
            if fresh {
                'pages: loop {
                    let page = match storage
                        .audit
                        .list_audit(&crate::audit::AuditQuery {
                            before_seq: before,
                            limit: 200,
                        })
                        .await
                    {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!("auto-deploy: reading the audit log: {e}");
                            break 'pages;
                        }
                    };
                    for e in &page.items {
                        if e.seq <= seen {
                            break 'pages;
                        }
                        top = top.max(e.seq);
                        if crate::dataplane::changes_configuration(&e.target_kind) {
                            changed = true;
                            urgent |= crate::dataplane::is_revocation(&e.action);
                        }
                    }
                    match page.items.last() {
                        Some(last) if page.cursor.is_some() => before = Some(last.seq),
                        _ => break 'pages,
                    }
                }
            }
            seen = top;
            let now = tokio::time::Instant::now();
            if changed {
                pending = Some(if urgent { now - debounce } else { now });
            }
            let Some(since) = pending else { continue };
            if now.duration_since(since) < debounce {
                continue;
            }
            pending = None;
            if let Err(e) = self.deploy_current().await {
                tracing::warn!("auto-deploy: {e}");
                // Try again at the next look.
                pending = Some(now - debounce);
            }
        }
    }

    /// Deploys to project `id`'s data planes: artifact `artifact` if given
    /// (one still kept), else one built now from the configuration. It
    /// becomes the project's current artifact, announced to its connected
    /// data planes; returns it and how many were told.
    pub async fn deploy(
        &self,
        actor: &Actor,
        id: &KeyspaceId,
        artifact: Option<&str>,
    ) -> Result<(crate::artifact::ArtifactMeta, usize)> {
        self.record(id).await?;
        let artifacts = self.artifacts().await?;
        let meta = match artifact {
            Some(a) => {
                let a = a.to_ascii_lowercase();
                match artifacts.get(&a).await? {
                    Some((meta, _)) => meta,
                    None => return Err(Error::not_found("artifact", &a)),
                }
            }
            None => {
                let content = crate::artifact::Content::of(self.keys.storage()).await?;
                artifacts.publish(actor, &content.to_bytes()?).await?
            }
        };
        let told = self
            .data_planes
            .deploy(id, crate::dataplane::Announcement::of(&meta));
        Ok((meta, told))
    }

    /// Builds an artifact of the configuration now, makes it every
    /// project's current one and announces it to their connected data
    /// planes. Returns it and how many data planes were told; `None` (and
    /// nothing built) when there is no project: no data plane to serve.
    pub async fn deploy_current(&self) -> Result<Option<(crate::artifact::ArtifactMeta, usize)>> {
        let projects = self.list().await?;
        if projects.is_empty() {
            return Ok(None);
        }
        let content = crate::artifact::Content::of(self.keys.storage()).await?;
        let meta = self
            .artifacts()
            .await?
            .publish(&Actor::system(), &content.to_bytes()?)
            .await?;
        let announcement = crate::dataplane::Announcement::of(&meta);
        let told = projects
            .iter()
            .map(|p| self.data_planes.deploy(&p.id, announcement.clone()))
            .sum();
        Ok(Some((meta, told)))
    }

    /// Checks a data plane's credentials: `secret` must be a live key of
    /// project `id` with the scope [`DEFAULT_SCOPE`] (`data-plane:connect`).
    /// Returns the key's id; refuses with `Unauthenticated` otherwise
    /// (without saying which part failed).
    pub async fn authorize_data_plane(&self, id: &KeyspaceId, secret: &str) -> Result<KeyId> {
        let (_, key) = self
            .data_plane_key(Some(id), secret)
            .await?
            .ok_or_else(|| Error::Unauthenticated {
                reason: "not a live data-plane:connect key of this project".into(),
            })?;
        Ok(key)
    }

    /// Checks a data plane's key without knowing its project: a live key
    /// with the scope [`DEFAULT_SCOPE`] of some project. Returns the
    /// project and the key.
    pub async fn authorize_any_data_plane(&self, secret: &str) -> Result<(KeyspaceId, KeyId)> {
        let refused = || Error::Unauthenticated {
            reason: "not a live data-plane:connect project key".into(),
        };
        let (project, key) = self
            .data_plane_key(None, secret)
            .await?
            .ok_or_else(refused)?;
        // A key of a project, not of another keyspace.
        self.record(&project).await.map_err(|_| refused())?;
        Ok((project, key))
    }

    /// The keyspace and id of `secret` if it is a live key with the scope
    /// [`DEFAULT_SCOPE`] (of `keyspace`, when given); `None` otherwise.
    async fn data_plane_key(
        &self,
        keyspace: Option<&KeyspaceId>,
        secret: &str,
    ) -> Result<Option<(KeyspaceId, KeyId)>> {
        let v = self
            .keys
            .verify(
                secret,
                &crate::key::VerifyOptions {
                    keyspace_id: keyspace,
                    permissions: None,
                },
            )
            .await?;
        if !v.valid() || !v.permissions().iter().any(|p| p == DEFAULT_SCOPE) {
            return Ok(None);
        }
        Ok(v.keyspace_id().cloned().zip(v.key_id().cloned()))
    }

    fn records(&self) -> &dyn crate::storage::RecordStore {
        &*self.keys.storage().records
    }

    /// Creates a project.
    pub async fn create(
        &self,
        actor: &Actor,
        name: &str,
        description: Option<String>,
    ) -> Result<Project> {
        check_description(description.as_deref())?;
        let ks = self
            .keys
            .create_keyspace(
                actor,
                NewKeyspace {
                    name: name.to_owned(),
                    prefix: Some(PROJECT_KEY_PREFIX.to_owned()),
                    default_byte_length: None,
                },
            )
            .await?;
        let record = ProjectRecord {
            id: ks.id.as_str().to_owned(),
            description,
            created_at: ks.created_at,
            updated_at: ks.created_at,
            version: 1,
        };
        if let Err(e) = catalog::create_entry(self.records(), actor, &record, ks.created_at).await {
            let _ = self.keys.delete_keyspace(actor, &ks.id).await;
            return Err(e);
        }
        Ok(Project {
            id: ks.id,
            name: ks.name,
            description: record.description,
            created_at: ks.created_at,
            updated_at: ks.updated_at,
        })
    }

    async fn record(&self, id: &KeyspaceId) -> Result<ProjectRecord> {
        match catalog::get_entry::<ProjectRecord>(self.records(), id.as_str()).await {
            Err(e) if e.is_not_found() => Err(Error::not_found("project", id.as_str())),
            other => other,
        }
    }

    /// The project `id`.
    pub async fn get(&self, id: &KeyspaceId) -> Result<Project> {
        let r = self.record(id).await?;
        let ks = self.keys.get_keyspace(id).await?;
        Ok(Project {
            id: ks.id,
            name: ks.name,
            description: r.description,
            created_at: ks.created_at,
            updated_at: ks.updated_at.max(r.updated_at),
        })
    }

    /// Every project, by id.
    pub async fn list(&self) -> Result<Vec<Project>> {
        let records: Vec<ProjectRecord> = catalog::list_entries(self.records()).await?;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let id = KeyspaceId::parse(&r.id)?;
            match self.get(&id).await {
                Ok(p) => out.push(p),
                // Deleted between the two reads.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Renames the project and/or changes its description (`Clear`: none).
    pub async fn update(
        &self,
        actor: &Actor,
        id: &KeyspaceId,
        name: Option<String>,
        description: Patch<String>,
    ) -> Result<Project> {
        if let Patch::Set(d) = &description {
            check_description(Some(d))?;
        }
        self.record(id).await?;
        if let Some(name) = name {
            self.keys
                .update_keyspace(
                    actor,
                    id,
                    KeyspaceUpdate {
                        name: Some(name),
                        ..KeyspaceUpdate::default()
                    },
                )
                .await?;
        }
        if !description.is_keep() {
            let now = self.clock.now();
            catalog::update_entry(
                self.records(),
                actor,
                id.as_str(),
                "project.update",
                now,
                |r: &mut ProjectRecord| {
                    description.clone().apply_to(&mut r.description);
                    r.updated_at = now;
                    Ok(())
                },
            )
            .await?;
        }
        self.get(id).await
    }

    /// Deletes the project, its keyspace and every key in it.
    pub async fn delete(&self, actor: &Actor, id: &KeyspaceId) -> Result<()> {
        self.record(id).await?;
        self.keys.delete_keyspace(actor, id).await?;
        self.data_planes.forget_project(id);
        catalog::delete_entry::<ProjectRecord>(self.records(), actor, id.as_str(), self.clock.now())
            .await
    }

    /// The project's keys, live and revoked, by id.
    pub async fn list_keys(&self, id: &KeyspaceId) -> Result<Vec<ProjectKey>> {
        self.record(id).await?;
        let mut query = KeyQuery {
            keyspace_id: Some(id.clone()),
            owner_id: None,
            include_deleted: true,
            page: PageRequest::first(MAX_PAGE_SIZE),
        };
        let mut out = Vec::new();
        loop {
            let page = self.keys.list(&query).await?;
            out.extend(page.items.iter().map(ProjectKey::of));
            match page.cursor {
                Some(c) => query.page.cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// Creates a key named `name` (unique among the project's live keys)
    /// with `scopes` (default [`DEFAULT_SCOPE`]), expiring at `expires_at`
    /// (in the future) if given.
    pub async fn create_key(
        &self,
        actor: &Actor,
        id: &KeyspaceId,
        name: &str,
        scopes: Option<Vec<String>>,
        expires_at: Option<Timestamp>,
    ) -> Result<CreatedProjectKey> {
        self.record(id).await?;
        if expires_at.is_some_and(|e| e <= self.clock.now()) {
            return Err(Error::invalid("expires_at", "must be in the future"));
        }
        let new = NewKey {
            name: Some(name.to_owned()),
            unique_name: true,
            permissions: scopes.unwrap_or_else(|| vec![DEFAULT_SCOPE.to_owned()]),
            expires: expires_at,
            ..NewKey::in_keyspace(id.clone())
        };
        let created = match self.keys.create(actor, new).await {
            Err(Error::Conflict { .. }) => {
                return Err(Error::conflict(format!(
                    "an API key named '{name}' exists in this project"
                )));
            }
            other => other?,
        };
        let key = self.keys.get(&created.key_id).await?;
        Ok(CreatedProjectKey {
            key: ProjectKey::of(&key),
            secret: created.key,
        })
    }

    /// Revokes key `key_id` of the project (a soft delete: it stops
    /// verifying at once).
    pub async fn revoke_key(&self, actor: &Actor, id: &KeyspaceId, key_id: &KeyId) -> Result<()> {
        self.record(id).await?;
        let not_found = || Error::not_found("API key", key_id.as_str());
        let key = match self.keys.get(key_id).await {
            Err(e) if e.is_not_found() => return Err(not_found()),
            other => other?,
        };
        if &key.keyspace_id != id || key.deleted_at.is_some() {
            return Err(not_found());
        }
        self.keys.delete(actor, key_id).await?;
        // Its data planes are disconnected at once (seed 001).
        self.data_planes.disconnect_key(
            key_id,
            "the API key this data plane registered with was revoked",
        );
        Ok(())
    }
}
