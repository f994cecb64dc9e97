//! A control plane and a data plane, both example servers on loopback
//! (seed 001): the data plane registers, applies the artifacts deployed
//! and serves from them; with the control plane gone it keeps serving, and
//! restarted meanwhile it starts from its last good artifact; the control
//! plane back on its address, the data plane reconnects.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use maas_core::{Clock, ManualClock};
use maas_server::{RunningServer, SHARED_STATE_TTL, Server, ServerConfig};
use serde_json::{Value, json};

async fn admin(s: &RunningServer, method: reqwest::Method, path: &str, body: Value) -> Value {
    let res = reqwest::Client::new()
        .request(method, format!("http://{}{path}", s.admin_addr))
        .bearer_auth(s.admin_token())
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = res.status();
    let v: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}

/// The model ids a user of the free tier sees on `s` (with a maas token
/// minted there).
async fn models(s: &RunningServer) -> Vec<String> {
    let res = reqwest::Client::new()
        .post(format!("http://{}/v1/tokens", s.public_addr))
        .bearer_auth("dev-free-token")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let token: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    let res = reqwest::Client::new()
        .get(format!("http://{}/v1/models", s.public_addr))
        .bearer_auth(token["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let body: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    assert!(body["data"].is_array(), "{body}");
    common::model_ids(&body)
}

/// Asks `probe` every 20 ms, at most 10 s, until `done` holds of its
/// answer (an event, not a window: no time is waited out); the last answer
/// and how long it took.
async fn eventually<T, F, Fut>(mut probe: F, done: impl Fn(&T) -> bool) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let started = std::time::Instant::now();
    let mut last = probe().await;
    for _ in 0..500 {
        if done(&last) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        last = probe().await;
    }
    (last, started.elapsed())
}

/// Waits until `s`'s data plane has applied sequence `n`.
async fn applied(s: &RunningServer, n: u64) {
    let (seq, _) = eventually(
        || async { s.data_plane().and_then(|d| d.applied).map(|m| m.sequence) },
        |seq| seq.is_some_and(|q| q >= n),
    )
    .await;
    assert!(
        seq.is_some_and(|q| q >= n),
        "artifact {n} not applied: {:?}",
        s.data_plane()
    );
}

/// Waits until `s` serves model `id`, moving the manual clock past its
/// caches' refresh each time; how long it took.
async fn served(s: &RunningServer, clock: &ManualClock, id: &str) -> Duration {
    let (ids, took) = eventually(
        || async {
            clock.advance(SHARED_STATE_TTL);
            models(s).await
        },
        |ids| ids.iter().any(|m| m == id),
    )
    .await;
    assert!(
        ids.iter().any(|m| m == id),
        "{id} not served: {:?}",
        s.data_plane()
    );
    took
}

/// A data plane's `/health` (public listener).
async fn health(s: &RunningServer) -> Value {
    let res = reqwest::get(format!("http://{}/health", s.public_addr))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    serde_json::from_str(&res.text().await.unwrap()).unwrap()
}

/// The `field` of `group`'s usage in a `/api/v1/usage` answer (0 if absent).
fn usage_of(rows: &Value, group: &str, field: &str) -> u64 {
    rows.as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["group"] == group)
        .map(|r| r["usage"][field].as_u64().unwrap_or(0))
        .sum()
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_serves_what_the_control_plane_deploys() {
    let cp_dir = tempfile::tempdir().unwrap();
    let dp_dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    let cp_admin = free_port();
    // The deployment's key secret: data planes hash API keys as the
    // control plane does (it is never in an artifact).
    const KEY_SECRET: &str = "deployment-key-secret";
    let cp_config = || ServerConfig {
        memory: false,
        data_dir: cp_dir.path().to_path_buf(),
        admin_listen: cp_admin,
        admin_token: Some("control-plane-admin-token".into()),
        key_secret: Some(KEY_SECRET.into()),
        ..common::config_on(clock.clone())
    };
    let cp = Server::start(cp_config()).await.unwrap();
    let project = admin(
        &cp,
        reqwest::Method::POST,
        "/api/v1/projects",
        json!({"name": "edge"}),
    )
    .await;
    let pid = project["id"].as_str().unwrap().to_owned();
    let key = admin(
        &cp,
        reqwest::Method::POST,
        &format!("/api/v1/projects/{pid}/api-keys"),
        json!({"name": "dp"}),
    )
    .await;
    admin(
        &cp,
        reqwest::Method::POST,
        "/api/v1/models",
        json!({"id": "edge-model", "url": "http://127.0.0.1:9/v1"}),
    )
    .await;
    let deployed = admin(
        &cp,
        reqwest::Method::POST,
        &format!("/api/v1/projects/{pid}/deploy"),
        Value::Null,
    )
    .await;
    assert_eq!(deployed["data_planes_notified"], 0, "nobody connected yet");

    let dp_config = || ServerConfig {
        memory: false,
        data_dir: dp_dir.path().to_path_buf(),
        control_plane: Some(format!("http://{cp_admin}")),
        project_id: Some(pid.clone()),
        project_key: Some(key["key"].as_str().unwrap().to_owned()),
        key_secret: Some(KEY_SECRET.into()),
        ..common::config_on(clock.clone())
    };
    let dp = Server::start(dp_config()).await.unwrap();
    // A second data plane of the project, on memory (nothing kept).
    let dp2 = Server::start(ServerConfig {
        memory: true,
        ..dp_config()
    })
    .await
    .unwrap();
    assert!(
        !models(&dp).await.contains(&"edge-model".to_owned()),
        "not before the artifact"
    );
    // Registered: given the current artifact at once, applied, served.
    applied(&dp, 1).await;
    clock.advance(SHARED_STATE_TTL);
    assert!(models(&dp).await.contains(&"edge-model".to_owned()));
    let status = dp.data_plane().unwrap();
    assert!(status.connected);
    let listed = admin(
        &cp,
        reqwest::Method::GET,
        &format!("/api/v1/projects/{pid}/data-planes"),
        Value::Null,
    )
    .await;
    let dp_id = status.data_plane_id.unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == dp_id.as_str()),
        "{listed}"
    );
    let h = health(&dp).await;
    assert_eq!(h["status"], "ok");
    assert_eq!(h["control_plane"]["connected"], true, "{h}");
    assert!(h["control_plane"]["sequence"].as_u64().unwrap() >= 1);
    let metrics = reqwest::Client::new()
        .get(format!("http://{}/metrics", dp.admin_addr))
        .bearer_auth(dp.admin_token())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "maas_data_plane_connected 1",
        "maas_data_plane_artifact_sequence ",
        "maas_data_plane_artifact_applied_timestamp_seconds ",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }

    // Its configuration is the control plane's: changes are refused there,
    // naming it (reads answer; without the admin token, 401 as ever).
    let refused = reqwest::Client::new()
        .post(format!("http://{}/api/v1/models", dp.admin_addr))
        .bearer_auth(dp.admin_token())
        .header("content-type", "application/json")
        .body(json!({"id": "local", "url": "http://127.0.0.1:9/v1"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 409);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let detail = refused.text().await.unwrap();
    assert!(detail.contains(&cp_admin.to_string()), "{detail}");
    let anonymous = reqwest::Client::new()
        .post(format!("http://{}/api/v1/models", dp.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    admin(&dp, reqwest::Method::GET, "/api/v1/models", Value::Null).await;
    // The dashboard: one logs in and reads, a change is refused, naming the
    // control plane.
    let origin = format!("http://{}", dp.admin_addr);
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = no_redirects
        .post(format!("{origin}/ui/login"))
        .header("origin", &origin)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", dp.admin_token()))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303, "the dashboard's login works");
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = no_redirects
        .get(format!("{origin}/ui/models"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "reads");
    let change = no_redirects
        .post(format!("{origin}/ui/tenants"))
        .header("origin", &origin)
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=local")
        .send()
        .await
        .unwrap();
    assert_eq!(change.status(), 409);
    assert!(change.text().await.unwrap().contains(&cp_admin.to_string()));
    // API keys too, on the public listener, in each API's own shape.
    for (path, shape) in [("/keys", "name"), ("/v1/keys.createKey", "error")] {
        let res = reqwest::Client::new()
            .post(format!("http://{}{path}", dp.public_addr))
            .bearer_auth("dev-free-token")
            .header("content-type", "application/json")
            .body(json!({"name": "mine", "apiId": "x"}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 409, "{path}");
        let body: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
        assert!(body.get(shape).is_some(), "{path}: {body}");
        assert!(body.to_string().contains(&cp_admin.to_string()), "{body}");
    }

    // A change at the control plane: built, deployed and served without a
    // deploy call (the control plane deploys what changes).
    admin(
        &cp,
        reqwest::Method::POST,
        "/api/v1/models",
        json!({"id": "edge-model-2", "url": "http://127.0.0.1:9/v1"}),
    )
    .await;
    let took = served(&dp, &clock, "edge-model-2").await;
    let took2 = served(&dp2, &clock, "edge-model-2").await;
    eprintln!(
        "a model created at the control plane was served by the data planes after {took:?} and {took2:?}"
    );
    // An explicit deploy tells the connected data plane.
    let deployed = admin(
        &cp,
        reqwest::Method::POST,
        &format!("/api/v1/projects/{pid}/deploy"),
        Value::Null,
    )
    .await;
    assert_eq!(deployed["data_planes_notified"], 2, "both");

    // A tenant's API key made at the control plane works on the data plane;
    // deleted there, it is refused here too.
    let tenant = admin(
        &cp,
        reqwest::Method::POST,
        "/api/v1/tenants",
        json!({"name": "acme"}),
    )
    .await;
    let tkey = admin(
        &cp,
        reqwest::Method::POST,
        &format!("/api/v1/tenants/{}/keys", tenant["id"].as_str().unwrap()),
        json!({"name": "prod"}),
    )
    .await;
    let secret = tkey["secret"].as_str().unwrap().to_owned();
    let me = |s: &RunningServer| {
        let url = format!("http://{}/v1/me", s.public_addr);
        let secret = secret.clone();
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(secret)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let both = || async {
        clock.advance(SHARED_STATE_TTL);
        (me(&dp).await, me(&dp2).await)
    };
    let (status, took) = eventually(both, |s| *s == (200, 200)).await;
    assert_eq!(status, (200, 200), "the key works on both data planes");
    eprintln!("a key created at the control plane worked on the data plane after {took:?}");

    // Usage served on the data planes shows at the control plane: each
    // reports what it served (batched every second, acknowledged, counted
    // once there).
    for s in [&dp, &dp2] {
        let res = reqwest::Client::new()
            .post(format!("http://{}/v1/chat/completions", s.public_addr))
            .bearer_auth(&secret)
            .header("content-type", "application/json")
            .body(
                json!({"model": "simulator", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        let status = res.status();
        assert_eq!(status, 200, "{}", res.text().await.unwrap());
    }
    let now = clock.now().as_millis();
    let usage_path = format!(
        "/api/v1/usage?from={}&to={}",
        now - 3_600_000,
        now + 3_600_000
    );
    let acme_requests = |rows: &Value| usage_of(rows, "acme", "requests");
    let (rows, took) = eventually(
        || admin(&cp, reqwest::Method::GET, &usage_path, Value::Null),
        |rows| acme_requests(rows) >= 2,
    )
    .await;
    assert_eq!(
        acme_requests(&rows),
        2,
        "both data planes' requests, once: {rows}"
    );
    eprintln!("usage served on the data planes showed at the control plane after {took:?}");
    let kid = tkey["key"]["id"].as_str().unwrap();
    let res = reqwest::Client::new()
        .delete(format!("http://{}/api/v1/keys/{kid}", cp.admin_addr))
        .bearer_auth(cp.admin_token())
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    // No cache refresh needed (the clock stays): applying the artifact
    // reloads the changed keys.
    let (status, took) = eventually(
        || async { (me(&dp).await, me(&dp2).await) },
        |s| *s == (401, 401),
    )
    .await;
    assert_eq!(
        status,
        (401, 401),
        "deleted at the control plane, refused on both"
    );
    eprintln!("a key deleted at the control plane was refused on the data plane after {took:?}");

    // A maas token minted at the control plane verifies on the data plane
    // (the control plane's public keys came with the artifact); revoked
    // there (`DELETE /tokens`), it is refused here too.
    let minted: Value = serde_json::from_str(
        &reqwest::Client::new()
            .post(format!("http://{}/v1/tokens", cp.public_addr))
            .bearer_auth("dev-free-token")
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let token = minted["token"].as_str().unwrap().to_owned();
    let list_models = |s: &RunningServer| {
        let url = format!("http://{}/v1/models", s.public_addr);
        let token = token.clone();
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        list_models(&dp).await,
        200,
        "a control-plane token on the data plane"
    );
    assert_eq!(list_models(&dp2).await, 200);
    let res = reqwest::Client::new()
        .delete(format!("http://{}/tokens", cp.public_addr))
        .bearer_auth("dev-free-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let (refused, took) = eventually(
        || async {
            clock.advance(SHARED_STATE_TTL);
            (list_models(&dp).await, list_models(&dp2).await)
        },
        |s| *s == (401, 401),
    )
    .await;
    assert_eq!(
        refused,
        (401, 401),
        "revoked at the control plane, refused on both"
    );
    eprintln!(
        "tokens revoked at the control plane were refused on both data planes after {took:?}"
    );

    let listed = admin(
        &cp,
        reqwest::Method::GET,
        &format!("/api/v1/projects/{pid}/data-planes"),
        Value::Null,
    )
    .await;
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "online"),
        "{listed}"
    );
    dp2.shutdown().await.unwrap();

    // The control plane gone: the data plane keeps serving; restarted
    // meanwhile, it starts from its kept artifact.
    cp.shutdown().await.unwrap();
    assert!(models(&dp).await.contains(&"edge-model-2".to_owned()));
    let (h, _) = eventually(|| health(&dp), |h| h["control_plane"]["connected"] == false).await;
    assert_eq!(
        (&h["status"], &h["control_plane"]["connected"]),
        (&json!("ok"), &json!(false)),
        "serving without its control plane: {h}"
    );
    // What it serves meanwhile (the upstream is the control plane's
    // simulator, gone too: a 502, still a request to account for) is kept
    // across its restart and reported once the control plane is back.
    let res = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", dp.public_addr))
        .bearer_auth("dev-free-token")
        .header("content-type", "application/json")
        .body(json!({"model": "simulator", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    dp.shutdown().await.unwrap();
    let dp = Server::start(dp_config()).await.unwrap();
    let status = dp.data_plane().unwrap();
    assert!(status.applied.is_some(), "the kept one");
    assert!(!status.connected);
    clock.advance(SHARED_STATE_TTL);
    assert!(models(&dp).await.contains(&"edge-model-2".to_owned()));

    // The control plane back on its address: the data plane reconnects
    // (backoff at most a few seconds here) and is listed again.
    let cp = Server::start(cp_config()).await.unwrap();
    let (online, _) = eventually(
        || async { dp.data_plane().is_some_and(|d| d.connected) },
        |online| *online,
    )
    .await;
    assert!(online, "reconnected: {:?}", dp.data_plane());
    let dp_id = dp.data_plane().unwrap().data_plane_id.unwrap();
    let list_path = format!("/api/v1/projects/{pid}/data-planes");
    let (listed, _) = eventually(
        || admin(&cp, reqwest::Method::GET, &list_path, Value::Null),
        |l| {
            l.as_array()
                .into_iter()
                .flatten()
                .any(|d| d["id"] == dp_id.as_str() && d["status"] == "online")
        },
    )
    .await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == dp_id.as_str() && d["status"] == "online"),
        "listed online again by the restarted control plane: {listed}"
    );
    let free_user = |rows: &Value| usage_of(rows, "free-user", "errors");
    let (rows, _) = eventually(
        || admin(&cp, reqwest::Method::GET, &usage_path, Value::Null),
        |rows| free_user(rows) >= 1,
    )
    .await;
    assert_eq!(
        free_user(&rows),
        1,
        "served while the control plane was down, reported after: {rows}"
    );
    dp.shutdown().await.unwrap();
    cp.shutdown().await.unwrap();
}
