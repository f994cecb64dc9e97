//! The data plane's client against a control plane that announces bad
//! artifacts on purpose (a loopback axum server speaking seed 001's
//! protocol): a corrupted, an unsigned, a foreign-signed and a replayed
//! artifact are each refused and reported (`artifact_rejected` with the
//! reason), and the configuration in force stays; a good one then applies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maas_core::artifact::{ArtifactMeta, Artifacts};
use maas_core::{Actor, ManualClock};
use maas_http::dataplane::{Apply, DataPlaneConfig, start};
use maas_store_memory::MemoryStore;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// What the fake control plane serves and hears.
#[derive(Clone)]
struct Fake {
    public_key: String,
    /// Artifact id → bytes served for it.
    bytes: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    /// Announcements to send, in order.
    announce: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Value>>>,
    /// What the data plane says after registering.
    heard: mpsc::UnboundedSender<Value>,
}

async fn ws(State(f): State<Fake>, up: WebSocketUpgrade) -> Response {
    up.on_upgrade(move |s| session(f, s))
}

async fn session(f: Fake, mut socket: WebSocket) {
    let Some(Ok(Message::Text(_register))) = socket.recv().await else {
        return;
    };
    let registered = json!({"type": "registered", "data_plane_id": "00000000-0000-4000-8000-000000000001",
                            "heartbeat_interval_secs": 30, "artifact_public_key": f.public_key});
    if socket
        .send(Message::Text(registered.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    let mut announce = f.announce.lock().await;
    loop {
        tokio::select! {
            a = announce.recv() => {
                let Some(a) = a else { return };
                if socket.send(Message::Text(a.to_string().into())).await.is_err() {
                    return;
                }
            }
            m = socket.recv() => match m {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] != "heartbeat" {
                        let _ = f.heard.send(v);
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}

async fn download(State(f): State<Fake>, Path(id): Path<String>) -> Response {
    match f.bytes.lock().unwrap().get(&id) {
        Some(b) => b.clone().into_response(),
        None => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}

/// Records what it is given to apply.
#[derive(Default)]
struct Recorder(Mutex<Vec<Vec<u8>>>);

#[async_trait]
impl Apply for Recorder {
    async fn apply(&self, bytes: &[u8]) -> maas_core::Result<()> {
        self.0.lock().unwrap().push(bytes.to_vec());
        Ok(())
    }
}

fn announcement(meta: &ArtifactMeta) -> Value {
    json!({
        "type": "artifact_available",
        "artifact_id": meta.artifact_id,
        "download_url": maas_core::dataplane::download_url(&meta.artifact_id),
        "sha256": meta.sha256,
        "sequence": meta.sequence,
        "size": meta.size,
        "signature": meta.signature,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_artifacts_are_refused_and_reported_and_the_old_one_stays() {
    let clock = Arc::new(ManualClock::default());
    let ours = Artifacts::open(MemoryStore::new().storage(), clock.clone())
        .await
        .unwrap();
    let foreign = Artifacts::open(MemoryStore::new().storage(), clock.clone())
        .await
        .unwrap();
    let admin = Actor::new("admin");
    let one = ours.publish(&admin, b"{\"n\":1}").await.unwrap();
    let two = ours.publish(&admin, b"{\"n\":2}").await.unwrap();
    let (announce, to_announce) = mpsc::unbounded_channel();
    let (heard, mut hear) = mpsc::unbounded_channel();
    let fake = Fake {
        public_key: ours.public_key().to_owned(),
        bytes: Arc::default(),
        announce: Arc::new(tokio::sync::Mutex::new(to_announce)),
        heard,
    };
    {
        let mut b = fake.bytes.lock().unwrap();
        b.insert(one.artifact_id.clone(), b"{\"n\":1}".to_vec());
        b.insert(two.artifact_id.clone(), b"{\"n\":2}".to_vec());
    }
    let app = Router::new()
        .route("/ws/data-plane", get(ws))
        .route("/artifacts/{id}/download", get(download))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let applied = Arc::new(Recorder::default());
    let dp = start(
        DataPlaneConfig {
            control_plane: format!("http://{addr}"),
            project_id: "00000000-0000-4000-8000-000000000002".into(),
            project_key: "mp_test".into(),
            name: None,
            data_dir: None,
            public_key: None,
            usage: None,
        },
        applied.clone(),
        clock.clone(),
    )
    .await;
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), hear.recv())
            .await
            .expect("the data plane answers within 10 s")
            .unwrap()
    };

    // The first, good: applied.
    announce.send(announcement(&one)).unwrap();
    let m = next().await;
    assert_eq!(
        (&m["type"], &m["artifact_id"]),
        (&json!("artifact_applied"), &json!(one.artifact_id))
    );
    assert_eq!(dp.status().applied.unwrap().sequence, one.sequence);

    // Each bad one: refused with its reason, nothing applied.
    let corrupted = two.clone();
    fake.bytes
        .lock()
        .unwrap()
        .insert(two.artifact_id.clone(), b"{\"n\":3}".to_vec());
    let mut unsigned = two.clone();
    unsigned.signature = String::new();
    let by_another_key = ArtifactMeta {
        signature: foreign
            .publish(&admin, b"{\"n\":2}")
            .await
            .unwrap()
            .signature,
        ..two.clone()
    };
    let older = ArtifactMeta {
        artifact_id: "00000000-0000-4000-8000-0000000000aa".into(),
        sequence: one.sequence,
        ..one.clone()
    };
    for (bad, why) in [
        (&corrupted, "sha256"),
        (&unsigned, "signature"),
        (&by_another_key, "signature"),
        (&older, "sequence"),
    ] {
        if why != "sha256" {
            fake.bytes
                .lock()
                .unwrap()
                .insert(two.artifact_id.clone(), b"{\"n\":2}".to_vec());
        }
        announce.send(announcement(bad)).unwrap();
        let m = next().await;
        assert_eq!(m["type"], "artifact_rejected", "{why}: {m}");
        assert!(m["reason"].as_str().unwrap().contains(why), "{why}: {m}");
        let status = dp.status();
        assert_eq!(
            status.applied.unwrap().sequence,
            one.sequence,
            "{why}: the old one stays"
        );
        assert!(status.last_rejection.unwrap().contains(why));
    }
    assert_eq!(
        applied.0.lock().unwrap().len(),
        1,
        "only the good one applied"
    );

    // The good second one: applied.
    announce.send(announcement(&two)).unwrap();
    let m = next().await;
    assert_eq!(m["type"], "artifact_applied", "{m}");
    assert_eq!(dp.status().applied.unwrap().sequence, two.sequence);
    assert_eq!(
        applied.0.lock().unwrap().last().unwrap().as_slice(),
        b"{\"n\":2}"
    );
    dp.shutdown().await;
}
