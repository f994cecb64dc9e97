//! Data planes connected to this control plane (seed 001): who is
//! connected, for which project, with which key, what artifact each has
//! applied — and the channel to push to each.
//!
//! The registry is this process's: a data plane is connected to one
//! control-plane process, and registers again when it reconnects. Status
//! follows seed 001's `DataPlane` schema: `online` while it heartbeats
//! (silent for at most 1.5 heartbeat intervals) with the project's current
//! artifact applied, `deploying` while it heartbeats with another (or none
//! yet), `offline` once its socket closed or it went silent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::clock::{SharedClock, Timestamp};
use crate::id::{KeyId, KeyspaceId};

/// How often data planes are told to heartbeat. Seed 001 says every 30 s.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);

/// At most this many data planes are remembered per project (the oldest
/// offline ones are forgotten first).
pub const MAX_PER_PROJECT: usize = 1_000;

/// A data plane as listed (seed 001's `DataPlane`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DataPlane {
    /// Its id (a UUID).
    #[cfg_attr(feature = "openapi", schema(format = "uuid"))]
    pub id: String,
    /// Its project (a UUID).
    #[cfg_attr(feature = "openapi", schema(format = "uuid"))]
    pub project_id: String,
    /// The name it gave.
    pub name: Option<String>,
    /// The artifact it last said it applied.
    #[cfg_attr(feature = "openapi", schema(format = "uuid"))]
    pub artifact_id: Option<String>,
    /// `online`, `offline` or `deploying`.
    pub status: DataPlaneStatus,
    /// Its last heartbeat (RFC 3339).
    #[serde(with = "crate::clock::rfc3339::option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub last_seen: Option<Timestamp>,
    /// When its connection opened (RFC 3339).
    #[serde(with = "crate::clock::rfc3339::option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub connected_at: Option<Timestamp>,
    /// What it told of itself (version, hostname, …).
    pub metadata: serde_json::Value,
    /// When it first registered (RFC 3339).
    #[serde(with = "crate::clock::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
}

/// A data plane's connection status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DataPlaneStatus {
    /// Connected, heartbeating, the current artifact applied.
    Online,
    /// Disconnected, or silent for more than 1.5 heartbeat intervals.
    Offline,
    /// Connected, heartbeating, not (yet) on the current artifact.
    Deploying,
}

/// What the control plane pushes to one data plane's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// A new artifact to download and apply (seed 001's
    /// `artifact_available`).
    Artifact(Announcement),
    /// Close the connection, telling it why.
    Close(String),
}

/// An artifact announced to data planes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The artifact (a UUID).
    pub artifact_id: String,
    /// Where to download it (a path on the control plane's listener).
    pub download_url: String,
    /// The SHA-256 of its bytes, hex.
    pub sha256: String,
    /// Its sequence number (monotonic: a data plane never applies a lower
    /// one).
    pub sequence: u64,
    /// Its size in bytes.
    pub size: u64,
    /// The Ed25519 signature of its bytes (base64url).
    pub signature: String,
}

impl Announcement {
    /// What data planes are told of artifact `meta`: downloaded from
    /// [`download_url`].
    pub fn of(meta: &crate::artifact::ArtifactMeta) -> Self {
        Announcement {
            artifact_id: meta.artifact_id.clone(),
            download_url: download_url(&meta.artifact_id),
            sha256: meta.sha256.clone(),
            sequence: meta.sequence,
            size: meta.size,
            signature: meta.signature.clone(),
        }
    }
}

/// Where artifact `id` is downloaded from (a path on the control plane's
/// admin listener, seed 001's form).
pub fn download_url(id: &str) -> String {
    format!("/artifacts/{id}/download")
}

/// Whether an audited change (by its target's kind) changes what data
/// planes serve: configuration records and tenants.
pub fn changes_configuration(target_kind: &str) -> bool {
    // `signing_key`: the token ring rotated; `subject`: tokens revoked.
    matches!(
        target_kind,
        "tenant" | "key" | "keyspace" | "signing_key" | "subject"
    ) || crate::artifact::CONFIG_KINDS.contains(&target_kind)
}

/// Whether an audited change must reach data planes at once (a removal or
/// a revocation), not after the debounce.
pub fn is_revocation(action: &str) -> bool {
    action.ends_with(".delete")
        || action.ends_with(".retire")
        || action.contains("revoke")
        || action.contains("disable")
}

struct Entry {
    project: KeyspaceId,
    key: KeyId,
    name: Option<String>,
    metadata: serde_json::Value,
    artifact: Option<String>,
    created_at: Timestamp,
    connected_at: Option<Timestamp>,
    last_seen: Option<Timestamp>,
    /// `None` once disconnected.
    tx: Option<mpsc::UnboundedSender<Push>>,
    /// Which connection this is, so a late "disconnected" of an old one
    /// does not mark a newer one.
    session: u64,
}

#[derive(Default)]
struct Inner {
    planes: HashMap<String, Entry>,
    /// The artifact each project's data planes should run.
    current: HashMap<KeyspaceId, Announcement>,
    sessions: u64,
}

/// The data planes of every project. Cheap to clone.
#[derive(Clone)]
pub struct DataPlanes {
    inner: Arc<Mutex<Inner>>,
    clock: SharedClock,
    heartbeat: Duration,
}

impl std::fmt::Debug for DataPlanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlanes")
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

/// A registered connection: its id and what is pushed to it.
#[derive(Debug)]
pub struct Registered {
    /// The data plane's id (a UUID).
    pub id: String,
    /// Pushes for this connection, until it is closed or replaced.
    pub pushes: mpsc::UnboundedReceiver<Push>,
    /// This connection, for [`DataPlanes::disconnected`].
    pub session: u64,
    /// The project's current artifact, if one was deployed: to send at
    /// once.
    pub current: Option<Announcement>,
}

impl DataPlanes {
    /// An empty registry on `clock`, telling data planes to heartbeat every
    /// `heartbeat`.
    pub fn new(clock: SharedClock, heartbeat: Duration) -> Self {
        DataPlanes {
            inner: Arc::new(Mutex::new(Inner::default())),
            clock,
            heartbeat: heartbeat.max(Duration::from_secs(1)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The heartbeat interval data planes are given.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// Registers a connection of `project` authenticated by `key`. `again`
    /// is the id a reconnecting data plane had (kept if it belongs to the
    /// same project), else a new one is made.
    pub fn register(
        &self,
        project: &KeyspaceId,
        key: &KeyId,
        name: Option<String>,
        metadata: serde_json::Value,
        again: Option<&str>,
    ) -> Registered {
        let now = self.clock.now();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        inner.sessions += 1;
        let session = inner.sessions;
        let reuse = again
            .filter(|id| inner.planes.get(*id).is_some_and(|e| &e.project == project))
            .map(str::to_owned);
        let id = reuse.unwrap_or_else(|| {
            crate::id::KeyId::generate(now)
                .to_uuid()
                .unwrap_or_default()
        });
        let created_at = inner.planes.get(&id).map_or(now, |e| e.created_at);
        if let Some(old) = inner.planes.get(&id).and_then(|e| e.tx.clone()) {
            let _ = old.send(Push::Close("replaced by a new connection".into()));
        }
        inner.planes.insert(
            id.clone(),
            Entry {
                project: project.clone(),
                key: key.clone(),
                name,
                metadata,
                artifact: None,
                created_at,
                connected_at: Some(now),
                last_seen: Some(now),
                tx: Some(tx),
                session,
            },
        );
        Self::trim(&mut inner, project);
        let current = inner.current.get(project).cloned();
        Registered {
            id,
            pushes: rx,
            session,
            current,
        }
    }

    /// Forgets the oldest offline data planes of `project` past
    /// [`MAX_PER_PROJECT`].
    fn trim(inner: &mut Inner, project: &KeyspaceId) {
        let mut offline: Vec<(Timestamp, String)> = inner
            .planes
            .iter()
            .filter(|(_, e)| &e.project == project)
            .filter(|(_, e)| e.tx.is_none())
            .map(|(id, e)| (e.last_seen.unwrap_or(e.created_at), id.clone()))
            .collect();
        let total = inner
            .planes
            .values()
            .filter(|e| &e.project == project)
            .count();
        if total <= MAX_PER_PROJECT {
            return;
        }
        offline.sort();
        for (_, id) in offline.into_iter().take(total - MAX_PER_PROJECT) {
            inner.planes.remove(&id);
        }
    }

    /// A heartbeat of data plane `id`, which has `artifact` applied.
    pub fn heartbeat_of(&self, id: &str, artifact: Option<String>) {
        let now = self.clock.now();
        if let Some(e) = self.lock().planes.get_mut(id) {
            e.last_seen = Some(now);
            if artifact.is_some() {
                e.artifact = artifact;
            }
        }
    }

    /// Connection `session` of data plane `id` ended.
    pub fn disconnected(&self, id: &str, session: u64) {
        if let Some(e) = self.lock().planes.get_mut(id)
            && e.session == session
        {
            e.tx = None;
            e.connected_at = None;
        }
    }

    fn view(&self, id: &str, e: &Entry, inner: &Inner, now: Timestamp) -> DataPlane {
        let silent_ms = i64::try_from(self.heartbeat.as_millis() * 3 / 2).unwrap_or(i64::MAX);
        let alive = e.tx.is_some()
            && e.last_seen
                .is_some_and(|t| now.as_millis() - t.as_millis() <= silent_ms);
        let current = inner.current.get(&e.project).map(|a| &a.artifact_id);
        let status = match (alive, current) {
            (false, _) => DataPlaneStatus::Offline,
            (true, Some(c)) if e.artifact.as_ref() != Some(c) => DataPlaneStatus::Deploying,
            (true, _) => DataPlaneStatus::Online,
        };
        DataPlane {
            id: id.to_owned(),
            project_id: e
                .project
                .to_uuid()
                .unwrap_or_else(|| e.project.as_str().to_owned()),
            name: e.name.clone(),
            artifact_id: e.artifact.clone(),
            status,
            last_seen: e.last_seen,
            connected_at: e.connected_at,
            metadata: e.metadata.clone(),
            created_at: e.created_at,
        }
    }

    /// The data planes of `project`, oldest first.
    pub fn list(&self, project: &KeyspaceId) -> Vec<DataPlane> {
        let now = self.clock.now();
        let inner = self.lock();
        let mut out: Vec<DataPlane> = inner
            .planes
            .iter()
            .filter(|(_, e)| &e.project == project)
            .map(|(id, e)| self.view(id, e, &inner, now))
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        out
    }

    /// Data plane `id` of `project`.
    pub fn get(&self, project: &KeyspaceId, id: &str) -> Option<DataPlane> {
        let now = self.clock.now();
        let inner = self.lock();
        let e = inner.planes.get(id).filter(|e| &e.project == project)?;
        Some(self.view(id, e, &inner, now))
    }

    /// Disconnects and forgets data plane `id` of `project`; whether it
    /// was there.
    pub fn remove(&self, project: &KeyspaceId, id: &str) -> bool {
        let mut inner = self.lock();
        if inner.planes.get(id).is_none_or(|e| &e.project != project) {
            return false;
        }
        if let Some(tx) = inner.planes.remove(id).and_then(|e| e.tx) {
            let _ = tx.send(Push::Close("disconnected by the control plane".into()));
        }
        true
    }

    /// Closes every connection registered with `key`; how many.
    pub fn disconnect_key(&self, key: &KeyId, reason: &str) -> usize {
        let mut inner = self.lock();
        let mut n = 0;
        for e in inner.planes.values_mut().filter(|e| &e.key == key) {
            if let Some(tx) = e.tx.take() {
                let _ = tx.send(Push::Close(reason.to_owned()));
                e.connected_at = None;
                n += 1;
            }
        }
        n
    }

    /// Closes and forgets every data plane of `project` (it was deleted).
    pub fn forget_project(&self, project: &KeyspaceId) {
        let mut inner = self.lock();
        inner.planes.retain(|_, e| {
            if &e.project == project {
                if let Some(tx) = e.tx.take() {
                    let _ = tx.send(Push::Close("the project was deleted".into()));
                }
                return false;
            }
            true
        });
        inner.current.remove(project);
    }

    /// Closes every connection (the control plane is stopping); they stay
    /// listed, offline.
    pub fn close_all(&self, reason: &str) {
        let mut inner = self.lock();
        for e in inner.planes.values_mut() {
            if let Some(tx) = e.tx.take() {
                let _ = tx.send(Push::Close(reason.to_owned()));
                e.connected_at = None;
            }
        }
    }

    /// Makes `artifact` the one `project`'s data planes should run and
    /// tells every connected one; how many were told.
    pub fn deploy(&self, project: &KeyspaceId, artifact: Announcement) -> usize {
        let mut inner = self.lock();
        let mut n = 0;
        for e in inner.planes.values().filter(|e| &e.project == project) {
            if let Some(tx) = &e.tx
                && tx.send(Push::Artifact(artifact.clone())).is_ok()
            {
                n += 1;
            }
        }
        inner.current.insert(project.clone(), artifact);
        n
    }

    /// The artifact `project`'s data planes should run, if one was
    /// deployed.
    pub fn current(&self, project: &KeyspaceId) -> Option<Announcement> {
        self.lock().current.get(project).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    fn announcement(id: &str) -> Announcement {
        Announcement {
            artifact_id: id.into(),
            download_url: format!("/a/{id}"),
            sha256: "00".into(),
            sequence: 1,
            size: 2,
            signature: "s".into(),
        }
    }

    #[test]
    fn status_follows_heartbeats_artifacts_and_connections() {
        let clock = Arc::new(ManualClock::default());
        let dps = DataPlanes::new(clock.clone(), Duration::from_secs(10));
        let p = KeyspaceId::generate(clock.now());
        let k = KeyId::generate(clock.now());
        let mut r = dps.register(&p, &k, Some("edge".into()), serde_json::json!({}), None);
        assert_eq!(dps.list(&p)[0].status, DataPlaneStatus::Online);
        // A deployment: told, deploying until it says it applied it.
        assert_eq!(dps.deploy(&p, announcement("a1")), 1);
        assert!(matches!(r.pushes.try_recv(), Ok(Push::Artifact(a)) if a.artifact_id == "a1"));
        assert_eq!(
            dps.get(&p, &r.id).unwrap().status,
            DataPlaneStatus::Deploying
        );
        dps.heartbeat_of(&r.id, Some("a1".into()));
        assert_eq!(dps.get(&p, &r.id).unwrap().status, DataPlaneStatus::Online);
        // Silent for more than 1.5 intervals: offline.
        clock.advance(Duration::from_secs(16));
        assert_eq!(dps.get(&p, &r.id).unwrap().status, DataPlaneStatus::Offline);
        dps.heartbeat_of(&r.id, None);
        assert_eq!(dps.get(&p, &r.id).unwrap().status, DataPlaneStatus::Online);
        // Its key revoked: closed, offline, still listed.
        assert_eq!(dps.disconnect_key(&k, "revoked"), 1);
        assert!(matches!(r.pushes.try_recv(), Ok(Push::Close(_))));
        assert_eq!(dps.get(&p, &r.id).unwrap().status, DataPlaneStatus::Offline);
        // Reconnects under the same id; the old session's end changes nothing.
        let r2 = dps.register(&p, &k, None, serde_json::json!({}), Some(&r.id));
        assert_eq!(r2.id, r.id);
        assert_eq!(r2.current.unwrap().artifact_id, "a1");
        dps.disconnected(&r.id, r.session);
        assert_ne!(dps.get(&p, &r.id).unwrap().status, DataPlaneStatus::Offline);
        // Removed: closed and gone; another project never sees it.
        assert!(dps.get(&KeyspaceId::generate(clock.now()), &r.id).is_none());
        assert!(dps.remove(&p, &r.id));
        assert!(dps.list(&p).is_empty());
        assert!(!dps.remove(&p, &r.id));
    }
}
