//! The control plane's side of seed 001's data-plane protocol, on the
//! management API's listener: `GET /ws/data-plane` (the WebSocket data
//! planes register, heartbeat and hear of artifacts on) and
//! `GET /artifacts/{id}/download` (the artifact's bytes, to a data plane's
//! project key). The REST routes (list, get, disconnect, deploy) are the
//! management API's.
//!
//! Protocol (seed 001; extra fields and messages are allowed):
//! - data plane → control plane: `{"type":"register","project_id","api_key",
//!   "name"?,"metadata"?,"data_plane_id"?}` first, within 10 s; then
//!   `{"type":"heartbeat","artifact_id"?}`, `artifact_applied` /
//!   `artifact_rejected` (`artifact_id`, `reason`), and `{"type":
//!   "usage_report","source","sequence","usage":[…],"verifications":[…]}`
//!   (a [`UsageReport`]: what the data plane served, added here once per
//!   source and sequence, then charged to budgets).
//! - control plane → data plane: `{"type":"registered","data_plane_id",
//!   "heartbeat_interval_secs","artifact_public_key"}`, `{"type":
//!   "heartbeat_ack"}`, `{"type":"artifact_available","artifact_id",
//!   "download_url","sha256","sequence","size","signature"}`, the answer to
//!   each usage report — `{"type":"usage_ack","sequence"}` (added, or added
//!   before), `{"type":"usage_rejected","sequence","reason"}` (invalid: do
//!   not send it again) or `{"type":"usage_retry","sequence","reason"}` (the
//!   store failed: send it again later) — and before a close
//!   `{"type":"disconnect","reason"}` or `{"type":"error","message"}`.

use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maas_core::admission::AdmissionLimits;
use maas_core::dataplane::{Announcement, Push};
use maas_core::projects::Projects;
use maas_core::usage::{UsageLedger, UsageReport};
use maas_core::{Error, KeyspaceId};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::common::{HttpConfig, RequestId, with_common_layers};
use crate::management::problem;

/// How long a new connection has to register.
const REGISTER_WITHIN: Duration = Duration::from_secs(10);

/// The largest message a data plane may send (a usage report of a few
/// thousand buckets fits).
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// What the control-plane routes need.
#[derive(Debug, Clone)]
pub struct ControlPlaneState {
    /// Projects, their keys, data planes and artifacts.
    pub projects: Projects,
    /// Where data planes' usage reports are added (`None`: they are refused
    /// with `usage_rejected`).
    pub usage: Option<UsageLedger>,
    /// Whose budgets reported usage is charged to.
    pub admission: Option<AdmissionLimits>,
}

impl ControlPlaneState {
    /// Routes for `projects`, taking no usage reports.
    pub fn new(projects: Projects) -> Self {
        ControlPlaneState {
            projects,
            usage: None,
            admission: None,
        }
    }

    /// Adds data planes' usage reports to `usage` and charges them to the
    /// budgets of `admission`.
    pub fn with_usage(mut self, usage: UsageLedger, admission: AdmissionLimits) -> Self {
        self.usage = Some(usage);
        self.admission = Some(admission);
        self
    }
}

/// `GET /ws/data-plane` and `GET /artifacts/{id}/download`, with request
/// ids, tracing and the body limit of `config`. Merge it into the
/// management API's listener: these routes authenticate with project keys,
/// not the admin token.
pub fn router(state: ControlPlaneState, config: &HttpConfig) -> Router {
    let (routes, _) = api().split_for_parts();
    with_common_layers(routes.with_state(state), config)
}

fn api() -> OpenApiRouter<ControlPlaneState> {
    OpenApiRouter::new()
        .routes(routes!(upgrade))
        .routes(routes!(download))
}

/// The OpenAPI operations of [`router`]'s routes (tag `management`, a
/// project key on each).
pub fn openapi() -> OpenApi {
    let mut doc = api().into_openapi();
    crate::openapi::finish_api(&mut doc, crate::openapi::MANAGEMENT);
    doc
}

pub use maas_core::dataplane::download_url;

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
    #[serde(default)]
    data_plane_id: Option<String>,
    #[serde(default)]
    artifact_id: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Serialize)]
struct ArtifactAvailable<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    artifact: &'a Announcement,
}

/// The WebSocket data planes connect on (seed 001's protocol, in this
/// module's documentation): `register` with a project id and a project key
/// with the scope `data-plane:connect` first; a bad one gets an `error`
/// message and the socket closes.
#[utoipa::path(
    get,
    path = "/ws/data-plane",
    operation_id = "dataPlaneWebSocket",
    security(()),
    responses(
        (status = 101, description = "WebSocket upgrade successful"),
        (status = 400, description = "Not a WebSocket upgrade"),
    )
)]
async fn upgrade(State(s): State<ControlPlaneState>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| session(s, socket))
}

async fn send(socket: &mut WebSocket, v: serde_json::Value) -> bool {
    socket
        .send(Message::Text(v.to_string().into()))
        .await
        .is_ok()
}

/// Tells the peer why, and closes.
async fn refuse(socket: &mut WebSocket, message: &str) {
    let _ = send(socket, json!({"type": "error", "message": message})).await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: 1008,
            reason: "refused".into(),
        })))
        .await;
}

/// The next text message, skipping pings; `None` when the socket ends.
async fn next_text(socket: &mut WebSocket) -> Option<String> {
    loop {
        match socket.recv().await? {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Binary(_)) => return Some(String::new()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn session(s: ControlPlaneState, mut socket: WebSocket) {
    let Ok(Some(first)) = tokio::time::timeout(REGISTER_WITHIN, next_text(&mut socket)).await
    else {
        refuse(&mut socket, "register first, within 10 seconds").await;
        return;
    };
    let register = match serde_json::from_str::<Incoming>(&first) {
        Ok(m) if m.kind == "register" => m,
        _ => {
            refuse(
                &mut socket,
                "the first message must be {\"type\":\"register\",\"project_id\",\"api_key\"}",
            )
            .await;
            return;
        }
    };
    let (Some(raw_project), Some(secret)) = (register.project_id, register.api_key) else {
        refuse(&mut socket, "register needs project_id and api_key").await;
        return;
    };
    let Ok(project) = KeyspaceId::parse_any(&raw_project) else {
        refuse(&mut socket, "invalid API key or project").await;
        return;
    };
    let key = match s.projects.authorize_data_plane(&project, &secret).await {
        Ok(k) => k,
        Err(Error::Unavailable { .. }) => {
            refuse(
                &mut socket,
                "the control plane's store is unavailable; retry",
            )
            .await;
            return;
        }
        Err(_) => {
            refuse(&mut socket, "invalid API key or project").await;
            return;
        }
    };
    let planes = s.projects.data_planes();
    let (public_key, latest) = match s.projects.artifacts().await {
        Ok(a) => (a.public_key().to_owned(), a.latest().await.ok().flatten()),
        Err(_) => {
            refuse(
                &mut socket,
                "the control plane's store is unavailable; retry",
            )
            .await;
            return;
        }
    };
    let metadata = register.metadata.unwrap_or_else(|| json!({}));
    let mut reg = planes.register(
        &project,
        &key,
        register.name,
        metadata,
        register.data_plane_id.as_deref(),
    );
    let id = reg.id.clone();
    let registered = json!({
        "type": "registered",
        "data_plane_id": id,
        "heartbeat_interval_secs": planes.heartbeat().as_secs(),
        "artifact_public_key": public_key,
    });
    if !send(&mut socket, registered).await {
        planes.disconnected(&id, reg.session);
        return;
    }
    // The project's current artifact; after a restart of the control
    // plane, the newest one built.
    if let Some(a) = reg
        .current
        .take()
        .or_else(|| latest.as_ref().map(Announcement::of))
    {
        let msg = ArtifactAvailable {
            kind: "artifact_available",
            artifact: &a,
        };
        if !send(&mut socket, json!(msg)).await {
            planes.disconnected(&id, reg.session);
            return;
        }
    }
    loop {
        tokio::select! {
            msg = next_text(&mut socket) => {
                let Some(text) = msg else { break };
                let Ok(m) = serde_json::from_str::<Incoming>(&text) else {
                    let _ = send(&mut socket, json!({"type": "error", "message": "not a message of this protocol"})).await;
                    continue;
                };
                match m.kind.as_str() {
                    "usage_report" => {
                        let answer = take_report(&s, &id, &text).await;
                        if !send(&mut socket, answer).await {
                            break;
                        }
                    }
                    "heartbeat" => {
                        planes.heartbeat_of(&id, m.artifact_id.map(|a| a.to_ascii_lowercase()));
                        if !send(&mut socket, json!({"type": "heartbeat_ack"})).await {
                            break;
                        }
                    }
                    "artifact_applied" => planes.heartbeat_of(&id, m.artifact_id.map(|a| a.to_ascii_lowercase())),
                    "artifact_rejected" => {
                        planes.heartbeat_of(&id, None);
                        tracing::warn!(
                            data_plane = %id,
                            artifact = m.artifact_id.as_deref().unwrap_or("?"),
                            reason = m.reason.as_deref().unwrap_or("?"),
                            "a data plane rejected an artifact"
                        );
                    }
                    _ => {
                        let _ = send(&mut socket, json!({"type": "error", "message": format!("unknown message type '{}'", m.kind)})).await;
                    }
                }
            }
            push = reg.pushes.recv() => match push {
                Some(Push::Artifact(a)) => {
                    let msg = ArtifactAvailable { kind: "artifact_available", artifact: &a };
                    if !send(&mut socket, json!(msg)).await {
                        break;
                    }
                }
                Some(Push::Close(reason)) => {
                    let _ = send(&mut socket, json!({"type": "disconnect", "reason": reason})).await;
                    let _ = socket.send(Message::Close(Some(CloseFrame { code: 1000, reason: "disconnected".into() }))).await;
                    break;
                }
                None => break,
            },
        }
    }
    planes.disconnected(&id, reg.session);
}

/// Adds a data plane's usage report (once per source and sequence) and
/// charges its cost to budgets; the answer to send back.
async fn take_report(s: &ControlPlaneState, data_plane: &str, text: &str) -> serde_json::Value {
    let report = match serde_json::from_str::<UsageReport>(text) {
        Ok(r) => r,
        Err(e) => {
            let sequence = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v["sequence"].as_u64());
            return json!({"type": "usage_rejected", "sequence": sequence, "reason": format!("not a usage report: {e}")});
        }
    };
    let sequence = report.sequence;
    let Some(ledger) = &s.usage else {
        return json!({"type": "usage_rejected", "sequence": sequence, "reason": "this control plane takes no usage reports"});
    };
    match ledger.add_report(&report).await {
        Ok(added) => {
            if added
                && let Some(admission) = &s.admission
                && let Err(e) = admission.charge_reported(&report.usage).await
            {
                // Counted in usage; the budgets miss it (they are
                // counters of their own, checked before requests).
                tracing::warn!(data_plane, "reported usage not charged to budgets: {e}");
            }
            json!({"type": "usage_ack", "sequence": sequence, "added": added})
        }
        Err(e @ Error::InvalidInput { .. }) => {
            tracing::warn!(data_plane, "a usage report refused: {e}");
            json!({"type": "usage_rejected", "sequence": sequence, "reason": e.to_string()})
        }
        Err(e) => json!({"type": "usage_retry", "sequence": sequence, "reason": e.to_string()}),
    }
}

/// An artifact's bytes, to a live data-plane key of a project (bearer):
/// what `artifact_available` announced, with its SHA-256, sequence and
/// signature as headers.
#[utoipa::path(
    get,
    path = "/artifacts/{id}/download",
    operation_id = "downloadArtifact",
    params(("id" = String, Path, description = "The artifact id (a UUID)")),
    security(("projectKey" = [])),
    responses(
        (status = 200, description = "The artifact's bytes (JSON)", content_type = "application/json"),
        (status = 401, description = "Not a live data-plane:connect project key", body = crate::management::ProblemDetails, content_type = crate::management::PROBLEM_JSON),
        (status = 404, description = "No such artifact (only the newest three are kept)", body = crate::management::ProblemDetails, content_type = crate::management::PROBLEM_JSON),
    )
)]
async fn download(
    State(s): State<ControlPlaneState>,
    id: RequestId,
    Path(artifact): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let unauthenticated = || {
        problem::render(
            &Error::Unauthenticated {
                reason: "a data-plane:connect project key is required as the bearer".into(),
            },
            &id,
        )
    };
    let Some(secret) = bearer_of(&headers) else {
        return unauthenticated();
    };
    if s.projects.authorize_any_data_plane(&secret).await.is_err() {
        return unauthenticated();
    }
    let artifacts = match s.projects.artifacts().await {
        Ok(a) => a,
        Err(e) => return problem::render(&e, &id),
    };
    let artifact = artifact.to_ascii_lowercase();
    match artifacts.get(&artifact).await {
        Ok(Some((meta, bytes))) => {
            // Served from the shared copy, not copied per download.
            let mut res = (StatusCode::OK, bytes::Bytes::from_owner(Shared(bytes))).into_response();
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            for (name, value) in [
                ("x-maas-artifact-sha256", meta.sha256),
                ("x-maas-artifact-sequence", meta.sequence.to_string()),
                ("x-maas-artifact-signature", meta.signature),
            ] {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    h.insert(name, v);
                }
            }
            res
        }
        Ok(None) => problem::render(&Error::not_found("artifact", &artifact), &id),
        Err(e) => problem::render(&e, &id),
    }
}

/// An artifact's shared bytes as a response body.
struct Shared(std::sync::Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn bearer_of(headers: &axum::http::HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}
