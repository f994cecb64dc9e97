//! The data plane's side of seed 001's protocol: connect to a control
//! plane's `/ws/data-plane`, register with a project key, heartbeat at the
//! interval given, and apply every artifact announced — downloaded, checked
//! (size, SHA-256, Ed25519 signature, a sequence above the one applied) and
//! handed to an [`Apply`]; a bad one is refused and reported, the one in
//! force stays. The last good artifact is kept in a directory (written,
//! synced, renamed) and applied at start, before the control plane is
//! reached, so a data plane restarted while the control plane is down
//! serves its last configuration. A lost connection is retried with
//! jittered exponential backoff (100 ms to 30 s).
//!
//! Given a [`UsageOutbox`] (between the data plane's usage ledger and its
//! store), it reports what it served to the control plane: see
//! `reports` — batched every second, kept until
//! acknowledged, sent again until then, counted once there.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use maas_core::artifact::{ArtifactMeta, verify};
use maas_core::clock::{SharedClock, Timestamp};
use maas_core::usage::UsageOutbox;
use maas_core::{Error, Result};
use rand::RngExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Mutex, Notify, watch};
use tokio_tungstenite::tungstenite::Message;

mod reports;
use reports::ReportQueue;
pub use reports::{MAX_BUCKETS, MAX_QUEUED};

/// How often what the ledger wrote is taken into a usage report.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// How long a usage report may go unanswered before it is sent again.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a data plane connects and how it identifies itself.
#[derive(Clone)]
pub struct DataPlaneConfig {
    /// The control plane's admin listener, `http://host:port` (or https).
    pub control_plane: String,
    /// The project (its UUID or maas id).
    pub project_id: String,
    /// A project key with the scope `data-plane:connect`.
    pub project_key: String,
    /// A name shown in the control plane's list.
    pub name: Option<String>,
    /// Where the last good artifact is kept (`None`: nowhere).
    pub data_dir: Option<PathBuf>,
    /// The control plane's artifact key (base64url Ed25519), pinned; when
    /// `None`, the key the control plane gives at registration is used
    /// (and kept with the artifact).
    pub public_key: Option<String>,
    /// What the data plane's usage ledger wrote, to report to the control
    /// plane (`None`: nothing is reported). Reports wait in
    /// `{data_dir}/usage-reports` until acknowledged.
    pub usage: Option<UsageOutbox>,
}

impl std::fmt::Debug for DataPlaneConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlaneConfig")
            .field("control_plane", &self.control_plane)
            .field("project_id", &self.project_id)
            .field("project_key", &"<secret>")
            .field("name", &self.name)
            .field("data_dir", &self.data_dir)
            .field("usage", &self.usage.is_some())
            .finish_non_exhaustive()
    }
}

/// Applies an artifact's bytes, already checked, to what the data plane
/// serves from.
#[async_trait]
pub trait Apply: Send + Sync {
    /// Makes `bytes` the configuration in force, or fails leaving the one
    /// in force.
    async fn apply(&self, bytes: &[u8]) -> Result<()>;
}

/// Where the data plane stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataPlaneStatus {
    /// Whether it is registered with the control plane now.
    pub connected: bool,
    /// Its id at the control plane, once registered.
    pub data_plane_id: Option<String>,
    /// The artifact in force.
    pub applied: Option<ArtifactMeta>,
    /// When it was applied here.
    pub applied_at: Option<Timestamp>,
    /// Why the last artifact offered was refused, if it was.
    pub last_rejection: Option<String>,
}

/// A running data-plane connection.
#[derive(Debug)]
pub struct DataPlaneHandle {
    status: watch::Receiver<DataPlaneStatus>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    collector: Option<tokio::task::JoinHandle<()>>,
}

impl DataPlaneHandle {
    /// Where it stands now.
    pub fn status(&self) -> DataPlaneStatus {
        self.status.borrow().clone()
    }

    /// A receiver of every change of status.
    pub fn watch(&self) -> watch::Receiver<DataPlaneStatus> {
        self.status.clone()
    }

    /// Closes the connection and stops; usage collected and not reported
    /// yet is kept in the data dir for the next start.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if let Some(c) = self.collector {
            let _ = c.await;
        }
    }
}

/// The last good artifact as kept: one file, so it is replaced whole.
#[derive(Serialize, Deserialize)]
struct Kept {
    meta: ArtifactMeta,
    public_key: String,
    /// The bytes, base64url.
    bytes: String,
}

const KEPT_FILE: &str = "artifact.json";

/// Starts the data plane: applies the kept artifact, if any, then connects
/// and keeps connecting until shut down.
pub async fn start(
    config: DataPlaneConfig,
    applier: Arc<dyn Apply>,
    clock: SharedClock,
) -> DataPlaneHandle {
    let (tx, rx) = watch::channel(DataPlaneStatus::default());
    let (stop, stopped) = watch::channel(false);
    let mut collector = None;
    let reports = match config.usage.clone() {
        Some(outbox) => {
            let queue =
                ReportQueue::open(config.data_dir.as_ref().map(|d| d.join("usage-reports"))).await;
            let reports = Reports {
                queue: Arc::new(Mutex::new(queue)),
                ready: Arc::new(Notify::new()),
            };
            collector = Some(tokio::spawn(collect(
                outbox,
                reports.clone(),
                stopped.clone(),
            )));
            Some(reports)
        }
        None => None,
    };
    let mut run = Runner {
        http: reqwest::Client::new(),
        config,
        applier,
        clock,
        status: tx,
        public_key: None,
        reports,
    };
    run.load_kept().await;
    let task = tokio::spawn(async move { run.run(stopped).await });
    DataPlaneHandle {
        status: rx,
        stop,
        task,
        collector,
    }
}

/// The usage reports and the signal that one is ready to go.
#[derive(Clone)]
struct Reports {
    queue: Arc<Mutex<ReportQueue>>,
    ready: Arc<Notify>,
}

/// Takes what the ledger wrote into reports every [`REPORT_EVERY`], and a
/// last time when stopped (so a data plane shut down keeps it for its next
/// start).
async fn collect(outbox: UsageOutbox, reports: Reports, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stop = tokio::select! {
            _ = tick.tick() => false,
            _ = stopped.changed() => true,
        };
        if !outbox.is_empty() {
            reports.queue.lock().await.collect(&outbox).await;
            reports.ready.notify_one();
        }
        if stop || *stopped.borrow() {
            return;
        }
    }
}

struct Runner {
    http: reqwest::Client,
    config: DataPlaneConfig,
    applier: Arc<dyn Apply>,
    clock: SharedClock,
    status: watch::Sender<DataPlaneStatus>,
    /// The key artifacts are checked with (pinned, or learned).
    public_key: Option<String>,
    /// Usage reports to send, if any.
    reports: Option<Reports>,
}

/// An announced artifact (seed 001's `artifact_available` and its extra
/// fields).
#[derive(Deserialize)]
struct Available {
    artifact_id: String,
    download_url: String,
    sha256: String,
    #[serde(default)]
    sequence: u64,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    signature: String,
}

impl Runner {
    fn set(&self, f: impl FnOnce(&mut DataPlaneStatus)) {
        self.status.send_modify(f);
        let s = self.status.borrow();
        ::metrics::gauge!(crate::metrics::DATA_PLANE_CONNECTED).set(if s.connected {
            1.0
        } else {
            0.0
        });
        if let Some(m) = &s.applied {
            ::metrics::gauge!(crate::metrics::DATA_PLANE_SEQUENCE).set(m.sequence as f64);
        }
        if let Some(t) = s.applied_at {
            ::metrics::gauge!(crate::metrics::DATA_PLANE_APPLIED_AT)
                .set(t.as_millis() as f64 / 1000.0);
        }
    }

    /// Applies the artifact kept in the data dir, if any and good.
    async fn load_kept(&mut self) {
        let Some(dir) = self.config.data_dir.clone() else {
            return;
        };
        let Ok(file) = tokio::fs::read(dir.join(KEPT_FILE)).await else {
            return;
        };
        use base64::Engine as _;
        let Some((kept, bytes)) = serde_json::from_slice::<Kept>(&file).ok().and_then(|k| {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&k.bytes)
                .ok()?;
            Some((k, bytes))
        }) else {
            tracing::warn!("the kept artifact is unreadable; ignored");
            return;
        };
        let key = self
            .config
            .public_key
            .clone()
            .unwrap_or(kept.public_key.clone());
        if let Err(e) = verify(&kept.meta, &bytes, &key) {
            tracing::warn!("the kept artifact does not check ({e}); ignored");
            return;
        }
        match self.applier.apply(&bytes).await {
            Ok(()) => {
                self.public_key = Some(key);
                let now = self.clock.now();
                tracing::info!(
                    artifact = %kept.meta.artifact_id,
                    sequence = kept.meta.sequence,
                    "serving the kept artifact until the control plane is reached"
                );
                self.set(|s| {
                    s.applied = Some(kept.meta);
                    s.applied_at = Some(now);
                });
            }
            Err(e) => tracing::warn!("the kept artifact does not apply ({e}); ignored"),
        }
    }

    fn ws_url(&self) -> String {
        let base = self.config.control_plane.trim_end_matches('/');
        let base = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base.to_owned()
        };
        format!("{base}/ws/data-plane")
    }

    async fn run(&mut self, mut stopped: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if *stopped.borrow() {
                return;
            }
            // The session watches `stopped` itself (to close cleanly).
            let connected = self.session(&mut stopped).await;
            self.set(|s| s.connected = false);
            match connected {
                Ok(true) => return,
                // Registered, then lost: start again soon.
                Ok(false) => backoff = Duration::from_millis(100),
                Err(e) => tracing::warn!("control plane: {e}"),
            }
            // Jittered: half to all of the backoff.
            let wait = backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// One connection: `Ok(true)` when stopped, `Ok(false)` when it ended
    /// after registering, `Err` when it could not register.
    async fn session(&mut self, stopped: &mut watch::Receiver<bool>) -> Result<bool> {
        let unavailable = |what: &str, e: String| Error::unavailable(format!("{what}: {e}"), true);
        let (mut ws, _) = tokio::select! {
            r = tokio::time::timeout(
                Duration::from_secs(10),
                tokio_tungstenite::connect_async(self.ws_url()),
            ) => r
                .map_err(|_| Error::unavailable("connecting timed out", true))?
                .map_err(|e| unavailable("connecting", e.to_string()))?,
            _ = stopped.changed() => return Ok(true),
        };
        let status = self.status.borrow().clone();
        let register = json!({
            "type": "register",
            "project_id": self.config.project_id,
            "api_key": self.config.project_key,
            "name": self.config.name,
            "data_plane_id": status.data_plane_id,
            "metadata": {"version": env!("CARGO_PKG_VERSION")},
        });
        ws.send(Message::Text(register.to_string().into()))
            .await
            .map_err(|e| unavailable("registering", e.to_string()))?;
        let registered = tokio::time::timeout(Duration::from_secs(10), next_json(&mut ws))
            .await
            .map_err(|_| Error::unavailable("no answer to register", true))?
            .ok_or_else(|| Error::unavailable("closed before registering", true))?;
        if registered["type"] != "registered" {
            return Err(Error::Unauthenticated {
                reason: format!(
                    "the control plane refused to register: {}",
                    registered["message"].as_str().unwrap_or("no reason")
                )
                .into(),
            });
        }
        let id = registered["data_plane_id"].as_str().map(str::to_owned);
        let interval = Duration::from_secs(
            registered["heartbeat_interval_secs"]
                .as_u64()
                .unwrap_or(30)
                .max(1),
        );
        if self.config.public_key.is_none()
            && let Some(k) = registered["artifact_public_key"].as_str()
        {
            self.public_key = Some(k.to_owned());
        } else if let Some(k) = &self.config.public_key {
            self.public_key = Some(k.clone());
        }
        self.set(|s| {
            s.connected = true;
            s.data_plane_id = id;
        });
        tracing::info!("registered with the control plane");
        let mut beat = tokio::time::interval(interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The usage report sent and not answered yet, and when to send it
        // again if no answer comes.
        let mut in_flight: Option<(u64, tokio::time::Instant)> = None;
        let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
        if !self.send_report(&mut ws, &mut in_flight).await {
            return Ok(false);
        }
        loop {
            let ready = self.reports.as_ref().map(|r| Arc::clone(&r.ready));
            let resend_at = in_flight.map_or_else(far, |(_, at)| at);
            tokio::select! {
                () = async { match &ready { Some(r) => r.notified().await, None => std::future::pending().await } }, if in_flight.is_none() => {
                    if !self.send_report(&mut ws, &mut in_flight).await {
                        return Ok(false);
                    }
                }
                () = tokio::time::sleep_until(resend_at), if in_flight.is_some() => {
                    in_flight = None;
                    if !self.send_report(&mut ws, &mut in_flight).await {
                        return Ok(false);
                    }
                }
                _ = beat.tick() => {
                    let applied = self.status.borrow().applied.as_ref().map(|m| m.artifact_id.clone());
                    let hb = json!({"type": "heartbeat", "artifact_id": applied});
                    if ws.send(Message::Text(hb.to_string().into())).await.is_err() {
                        return Ok(false);
                    }
                }
                msg = next_json(&mut ws) => {
                    let Some(msg) = msg else { return Ok(false) };
                    match msg["type"].as_str() {
                        Some("artifact_available") => {
                            let Ok(a) = serde_json::from_value::<Available>(msg.clone()) else {
                                tracing::warn!("an artifact_available without its fields: {msg}");
                                continue;
                            };
                            let reply = match self.take(&a).await {
                                Ok(true) => Some(json!({"type": "artifact_applied", "artifact_id": a.artifact_id})),
                                Ok(false) => None,
                                Err(e) => {
                                    let reason = e.to_string();
                                    tracing::warn!(artifact = %a.artifact_id, "artifact refused: {reason}");
                                    self.set(|s| s.last_rejection = Some(reason.clone()));
                                    Some(json!({"type": "artifact_rejected", "artifact_id": a.artifact_id, "reason": reason}))
                                }
                            };
                            if let Some(r) = reply
                                && ws.send(Message::Text(r.to_string().into())).await.is_err()
                            {
                                return Ok(false);
                            }
                        }
                        Some(kind @ ("usage_ack" | "usage_rejected" | "usage_retry")) => {
                            let sequence = msg["sequence"].as_u64();
                            if in_flight.map(|(s, _)| s) != sequence {
                                continue;
                            }
                            in_flight = None;
                            let Some(seq) = sequence else { continue };
                            if kind == "usage_retry" {
                                // Sent again in a second.
                                tracing::warn!(sequence = seq, "the control plane could not take a usage report yet: {}", msg["reason"]);
                                in_flight = Some((seq, tokio::time::Instant::now() + REPORT_EVERY));
                                continue;
                            }
                            if kind == "usage_rejected" {
                                tracing::warn!(sequence = seq, "the control plane refused a usage report for good: {}", msg["reason"]);
                            }
                            if let Some(r) = &self.reports {
                                r.queue.lock().await.done(seq).await;
                            }
                            if !self.send_report(&mut ws, &mut in_flight).await {
                                return Ok(false);
                            }
                        }
                        Some("disconnect") => {
                            tracing::warn!("the control plane disconnected us: {}", msg["reason"]);
                            return Ok(false);
                        }
                        Some("error") => tracing::warn!("the control plane says: {}", msg["message"]),
                        _ => {}
                    }
                }
                _ = stopped.changed() => {
                    let _ = ws.close(None).await;
                    return Ok(true);
                }
            }
        }
    }

    /// Sends the first usage report waiting, if any and none is in flight;
    /// `false` when the socket failed.
    async fn send_report<S>(
        &self,
        ws: &mut S,
        in_flight: &mut Option<(u64, tokio::time::Instant)>,
    ) -> bool
    where
        S: futures_util::Sink<Message> + Unpin,
    {
        if in_flight.is_some() {
            return true;
        }
        let Some(reports) = &self.reports else {
            return true;
        };
        let msg = {
            let mut q = reports.queue.lock().await;
            let Some(report) = q.next_to_send() else {
                return true;
            };
            let mut v = json!(report);
            v["type"] = json!("usage_report");
            *in_flight = Some((
                report.sequence,
                tokio::time::Instant::now() + REPORT_TIMEOUT,
            ));
            v.to_string()
        };
        ws.send(Message::Text(msg.into())).await.is_ok()
    }

    /// Downloads, checks and applies `a`: `Ok(true)` applied, `Ok(false)`
    /// already in force.
    async fn take(&mut self, a: &Available) -> Result<bool> {
        let applied = self.status.borrow().applied.clone();
        if let Some(m) = &applied {
            if m.artifact_id == a.artifact_id {
                return Ok(false);
            }
            if a.sequence <= m.sequence {
                return Err(Error::invalid(
                    "artifact",
                    format!(
                        "sequence {} is not above the one in force ({})",
                        a.sequence, m.sequence
                    ),
                ));
            }
        }
        let key = self
            .public_key
            .clone()
            .ok_or_else(|| Error::invalid("artifact", "no key to check it with"))?;
        let url = format!(
            "{}{}",
            self.config.control_plane.trim_end_matches('/'),
            a.download_url
        );
        let res = self
            .http
            .get(&url)
            .bearer_auth(&self.config.project_key)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| Error::unavailable(format!("downloading: {e}"), true))?;
        if !res.status().is_success() {
            return Err(Error::unavailable(
                format!("downloading: {}", res.status()),
                true,
            ));
        }
        let bytes = res
            .bytes()
            .await
            .map_err(|e| Error::unavailable(format!("downloading: {e}"), true))?;
        let meta = ArtifactMeta {
            artifact_id: a.artifact_id.clone(),
            sequence: a.sequence,
            sha256: a.sha256.clone(),
            signature: a.signature.clone(),
            size: a.size,
            created_at: self.clock.now(),
        };
        // Hashing a large artifact takes a while: off the runtime's workers.
        let checked = {
            let (meta, bytes, key) = (meta.clone(), bytes.clone(), key.clone());
            tokio::task::spawn_blocking(move || verify(&meta, &bytes, &key))
                .await
                .map_err(|e| Error::internal(format!("checking the artifact: {e}")))
        };
        checked??;
        self.applier.apply(&bytes).await?;
        if let Some(dir) = &self.config.data_dir
            && let Err(e) = keep(dir, &meta, &key, &bytes).await
        {
            tracing::warn!("the artifact is applied but could not be kept: {e}");
        }
        let now = self.clock.now();
        tracing::info!(artifact = %meta.artifact_id, sequence = meta.sequence, "artifact applied");
        self.set(|s| {
            s.applied = Some(meta);
            s.applied_at = Some(now);
            s.last_rejection = None;
        });
        Ok(true)
    }
}

/// Keeps `bytes` and its description in `dir`: one file written beside
/// the last, synced, renamed over it, the directory synced.
async fn keep(dir: &Path, meta: &ArtifactMeta, key: &str, bytes: &[u8]) -> std::io::Result<()> {
    use base64::Engine as _;
    // Encoding a large artifact takes a while: off the runtime's workers.
    let (meta, key, bytes) = (meta.clone(), key.to_owned(), bytes.to_vec());
    let kept = tokio::task::spawn_blocking(move || {
        serde_json::to_vec(&Kept {
            meta,
            public_key: key,
            bytes: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        })
    })
    .await
    .map_err(std::io::Error::other)?
    .map_err(std::io::Error::other)?;
    write_durably(dir, KEPT_FILE, kept).await
}

/// Writes `bytes` to `dir/name` whole or not at all: written beside, synced,
/// renamed over, the directory synced.
async fn write_durably(dir: &Path, name: &str, bytes: Vec<u8>) -> std::io::Result<()> {
    let dir = dir.to_owned();
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!("{name}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(&name))?;
        std::fs::File::open(&dir)?.sync_all()
    })
    .await
    .map_err(std::io::Error::other)?
}

async fn next_json<S>(ws: &mut S) -> Option<Value>
where
    S: futures_util::Stream<
            Item = std::result::Result<Message, tokio_tungstenite::tungstenite::Error>,
        > + Unpin,
{
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => {
                if let Ok(v) = serde_json::from_str(&t) {
                    return Some(v);
                }
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}
