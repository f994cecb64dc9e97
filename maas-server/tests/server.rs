//! The example server's library part over real loopback HTTP: listeners,
//! the admin token, the tiers' views of the simulated models, the pool of
//! simulators with one failing, and the one-line errors of bad
//! configurations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use maas_core::ManualClock;
use maas_server::{
    ADMIN_TOKEN_FILE, AdminTokenSource, KEY_SECRET_FILE, RunningServer, SIMULATOR_MODEL,
    SIMULATOR_PREMIUM_MODEL, Server, ServerConfig, ServerError,
};
use reqwest::StatusCode;
use serde_json::Value;

const FREE: &str = "dev-free-token";
const PREMIUM: &str = "dev-premium-token";
const ENTERPRISE: &str = "dev-enterprise-token";

mod common;
use common::{any_port, config_on, model_ids};

/// A memory-backed server on ephemeral loopback ports, with the example
/// users and a manual clock.
fn config() -> ServerConfig {
    config_on(Arc::new(ManualClock::default()))
}

fn sled_config(dir: &Path) -> ServerConfig {
    ServerConfig {
        memory: false,
        data_dir: dir.to_path_buf(),
        ..config()
    }
}

async fn get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (StatusCode, String) {
    let mut req = reqwest::Client::new().get(format!("http://{addr}{path}"));
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    (status, res.text().await.unwrap())
}

async fn get_json(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (StatusCode, Value) {
    let (status, body) = get(addr, path, bearer).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A maas token for the identity behind `dev_token` (seed 000's flow:
/// `/v1/models` takes maas tokens and API keys, not identity tokens).
async fn maas_token(s: &RunningServer, dev_token: &str) -> String {
    let res = reqwest::Client::new()
        .post(format!("http://{}/v1/tokens", s.public_addr))
        .bearer_auth(dev_token)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = res.status();
    let body: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// The model ids `/v1/models` lists for the identity behind `dev_token`.
async fn models(s: &RunningServer, dev_token: &str) -> Vec<String> {
    let token = maas_token(s, dev_token).await;
    let (status, body) = get_json(s.public_addr, "/v1/models", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    model_ids(&body)
}

#[tokio::test]
async fn health_answers_on_the_public_and_the_admin_listener() {
    let s = Server::start(config()).await.unwrap();
    let (status, body) = get_json(s.public_addr, "/health", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok");
    let (status, body) = get_json(s.admin_addr, "/health", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok");
    // The Unkey-compatible API is on the public listener too.
    let (status, _) = get(s.public_addr, "/v1/liveness", None).await;
    assert_eq!(status, StatusCode::OK);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_portal_is_on_the_public_listener_and_the_dashboard_on_the_admin_one() {
    let s = Server::start(config()).await.unwrap();
    let form = r#"type="password" id="token" name="token""#;
    // The portal: on the public listener only.
    let (status, body) = get(s.public_addr, "/portal/login", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains(form) && body.contains("maas portal"),
        "{body}"
    );
    // (On the admin listener the path falls to the management API, which
    // refuses it.)
    let (status, body) = get(s.admin_addr, "/portal/login", None).await;
    assert!(
        matches!(status, StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED),
        "{status} {body}"
    );
    assert!(!body.contains(form));
    // The dashboard: on the admin listener only.
    let (status, body) = get(s.admin_addr, "/ui/login", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains(form) && body.contains("admin token"),
        "{body}"
    );
    let (status, body) = get(s.public_addr, "/ui/login", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(!body.contains(form));

    // A caller logs in to the portal with a maas token, over the wire.
    let token = maas_token(&s, PREMIUM).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let origin = format!("http://{}", s.public_addr);
    let res = client
        .post(format!("{origin}/portal/login"))
        .header("origin", &origin)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("__Host-maas-portal="), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_owned();
    let res = client
        .get(format!("{origin}/portal/"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let page = res.text().await.unwrap();
    assert!(
        page.contains(r#"<h2 id="tier">Tier premium</h2>"#),
        "{page}"
    );
    assert!(page.contains(&format!("{}/v1/chat/completions", s.public_url)));
    assert!(page.contains(&format!("<strong>{SIMULATOR_PREMIUM_MODEL}</strong>")));
    assert!(!page.contains(&token));
    // The portal's session is no dashboard session.
    let res = client
        .get(format!("http://{}/ui/", s.admin_addr))
        .header(
            "cookie",
            session.replace("__Host-maas-portal", "__Host-maas-ui"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_management_api_needs_the_admin_token() {
    let s = Server::start(config()).await.unwrap();
    let (status, _) = get(s.admin_addr, "/api/v1/tiers", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = get(s.admin_addr, "/api/v1/tiers", Some(FREE)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = get_json(s.admin_addr, "/api/v1/tiers", Some(s.admin_token())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut names: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["enterprise", "free", "premium"]);
    // Not served on the public listener.
    let (status, _) = get(s.public_addr, "/api/v1/tiers", Some(s.admin_token())).await;
    assert_ne!(status, StatusCode::OK);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_need_the_admin_token() {
    let s = Server::start(config()).await.unwrap();
    let (status, _) = get(s.admin_addr, "/metrics", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = get(s.admin_addr, "/metrics", Some("not-the-admin-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = get(s.admin_addr, "/metrics", Some(s.admin_token())).await;
    assert_eq!(status, StatusCode::OK);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn each_tier_sees_its_simulated_models() {
    let s = Server::start(config()).await.unwrap();
    assert_eq!(models(&s, FREE).await, [SIMULATOR_MODEL]);
    assert_eq!(
        models(&s, PREMIUM).await,
        [SIMULATOR_MODEL, SIMULATOR_PREMIUM_MODEL]
    );
    assert_eq!(
        models(&s, ENTERPRISE).await,
        [SIMULATOR_MODEL, SIMULATOR_PREMIUM_MODEL]
    );
    let (status, _) = get(s.public_addr, "/v1/models", Some("nobody")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The development tokens are identity tokens: the gateway takes them,
    // `/v1/models` (seed 000) wants the maas token they mint.
    let (status, _) = get(s.public_addr, "/v1/models", Some(FREE)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The models' upstream is the simulator's listener (one by default).
    assert_eq!(s.simulator_addrs, [s.simulator_addr]);
    let sim = s.services().models.get(SIMULATOR_MODEL).await.unwrap();
    assert_eq!(sim.upstream_url, format!("http://{}", s.simulator_addr));
    let (status, _) = get(s.simulator_addr, "/health", None).await;
    assert_eq!(status, StatusCode::OK);
    // Static tokens are announced as development-only.
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("for development only")),
        "{:?}",
        s.warnings
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_public_url_is_where_models_are_listed() {
    let s = Server::start(ServerConfig {
        public_url: Some("https://maas.example/".into()),
        ..config()
    })
    .await
    .unwrap();
    assert_eq!(s.public_url, "https://maas.example");
    let token = maas_token(&s, FREE).await;
    let (_, body) = get_json(s.public_addr, "/v1/models", Some(&token)).await;
    let url = body["data"][0]["url"].as_str().unwrap_or_default();
    assert!(url.starts_with("https://maas.example/"), "{body}");
    s.shutdown().await.unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn a_generated_admin_token_is_stored_0600_and_read_back() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = data.join(ADMIN_TOKEN_FILE);

    let s = Server::start(sled_config(&data)).await.unwrap();
    assert_eq!(
        s.admin_token_source,
        AdminTokenSource::Generated(Some(file.clone()))
    );
    let token = s.admin_token().to_owned();
    assert!(token.starts_with("maas_admin_"), "{token}");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
    for f in [ADMIN_TOKEN_FILE, KEY_SECRET_FILE] {
        let mode = std::fs::metadata(data.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let first_sim = s.simulator_addr;
    s.shutdown().await.unwrap();
    // A token file others may read is used, with a warning.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();

    // A second start (another simulator port) reads the same token back and
    // points the simulated models at the new port.
    let s = Server::start(sled_config(&data)).await.unwrap();
    assert_eq!(s.admin_token_source, AdminTokenSource::File(file));
    assert!(!s.admin_token_source.is_generated());
    assert_eq!(s.admin_token(), token);
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("may be read by other users")),
        "{:?}",
        s.warnings
    );
    let (status, _) = get(s.admin_addr, "/api/v1/health", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    for id in [SIMULATOR_MODEL, SIMULATOR_PREMIUM_MODEL] {
        let m = s.services().models.get(id).await.unwrap();
        assert_eq!(m.upstream_url, format!("http://{}", s.simulator_addr));
    }
    if s.simulator_addr != first_sim {
        let m = s.services().models.get(SIMULATOR_MODEL).await.unwrap();
        assert!(m.version > 1, "the upstream was updated in place");
    }
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_configured_admin_token_is_used_and_a_memory_token_is_not_written() {
    let s = Server::start(ServerConfig {
        admin_token: Some("configured-admin-token-0123".into()),
        ..config()
    })
    .await
    .unwrap();
    assert_eq!(s.admin_token_source, AdminTokenSource::Configured);
    let (status, _) = get(
        s.admin_addr,
        "/metrics",
        Some("configured-admin-token-0123"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    s.shutdown().await.unwrap();

    let s = Server::start(config()).await.unwrap();
    assert_eq!(s.admin_token_source, AdminTokenSource::Generated(None));
    assert!(s.data_dir.is_none());
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_address_in_use_is_one_clear_line() {
    let taken = std::net::TcpListener::bind(any_port()).unwrap();
    let addr = taken.local_addr().unwrap();
    let e = Server::start(ServerConfig {
        admin_listen: addr,
        ..config()
    })
    .await
    .unwrap_err();
    assert!(matches!(e, ServerError::Bind { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("cannot listen on {addr} (admin_listen): address already in use")
    );
}

#[tokio::test]
async fn a_data_dir_in_use_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Server::start(sled_config(&data)).await.unwrap();
    let e = Server::start(sled_config(&data)).await.unwrap_err();
    assert!(matches!(e, ServerError::DataDirLocked { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "data dir {} is in use by another process (is another maas running?)",
            data.display()
        )
    );
    // The first one is unharmed.
    let (status, _) = get(first.public_addr, "/health", None).await;
    assert_eq!(status, StatusCode::OK);
    first.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_config_file_with_an_unknown_key_is_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("maas.toml");
    std::fs::write(&path, "memory = true\n\nlisen = \"127.0.0.1:1\"\n").unwrap();
    let e = ServerConfig::from_toml_file(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "config file {}, line 3: unknown key `lisen`",
            path.display()
        )),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");

    let missing = dir.path().join("absent.toml");
    let e = ServerConfig::from_toml_file(&missing)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "cannot read config file {}: no such file or directory",
            missing.display()
        )
    );
}

#[tokio::test]
async fn a_users_file_named_but_missing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("users.toml");
    let e = Server::start(ServerConfig {
        users: Some(missing.clone()),
        ..config()
    })
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        format!(
            "cannot read users file {}: no such file or directory",
            missing.display()
        )
    );
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let s = Server::start(config()).await.unwrap();
    let (public, admin) = (s.public_addr, s.admin_addr);
    // A kept-alive connection does not hold the shutdown.
    let client = reqwest::Client::new();
    let res = client
        .get(format!("http://{public}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    s.shutdown().await.unwrap();
    for addr in [public, admin] {
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "{addr} still accepts"
        );
    }
}

/// A chat completion of `max_tokens` (streamed when `stream`) through
/// `s`'s gateway for the enterprise user: its head read.
async fn chat(s: &RunningServer, max_tokens: u32, stream: bool) -> reqwest::Response {
    let body = serde_json::json!({"model": SIMULATOR_MODEL, "max_tokens": max_tokens,
                                  "stream": stream,
                                  "messages": [{"role": "user", "content": "hi"}]});
    reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", s.public_addr))
        .bearer_auth(ENTERPRISE)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// A streamed chat completion of `max_tokens` through `s`'s gateway, its
/// head read: the answer is under way.
async fn streaming(s: &RunningServer, max_tokens: u32) -> reqwest::Response {
    let res = chat(s, max_tokens, true).await;
    assert_eq!(res.status(), StatusCode::OK);
    res
}

/// A request under way when the shutdown begins is answered to its end,
/// whether the public listener has threads of its own or shares the main
/// runtime; then the listener stops accepting.
#[tokio::test]
async fn a_request_under_way_is_answered_to_its_end_on_shutdown() {
    for listen_threads in [0, 2] {
        let s = Server::start(ServerConfig {
            listen_threads,
            // 10 tokens at 50 a second: a fifth of a second.
            sim_tokens_per_second: 50.0,
            ..config()
        })
        .await
        .unwrap();
        let public = s.public_addr;
        let res = streaming(&s, 10).await;
        let (stopped, text) = tokio::join!(s.shutdown(), res.text());
        stopped.unwrap();
        let text = text.unwrap();
        assert!(
            text.ends_with("data: [DONE]\n\n"),
            "listen_threads {listen_threads}: {text}"
        );
        assert!(
            tokio::net::TcpStream::connect(public).await.is_err(),
            "listen_threads {listen_threads}: still accepts"
        );
    }
}

/// A request still running when the grace has passed is cut off: the
/// shutdown does not wait for it, on the listener's threads either.
#[tokio::test]
async fn a_request_past_the_grace_is_cut_off() {
    for listen_threads in [0, 2] {
        let s = Server::start(ServerConfig {
            listen_threads,
            // 1000 tokens at 2 a second, and no grace: the request under
            // way is past it as soon as the shutdown begins (nothing waits
            // a grace out).
            sim_tokens_per_second: 2.0,
            shutdown_grace_secs: 0,
            ..config()
        })
        .await
        .unwrap();
        let res = streaming(&s, 1000).await;
        // Uncut, the answer would take 500 s: a minute bounds the failure.
        let (stopped, text) = tokio::join!(
            s.shutdown(),
            tokio::time::timeout(std::time::Duration::from_secs(60), res.text())
        );
        stopped.unwrap();
        let text = text.unwrap_or_else(|_| panic!("listen_threads {listen_threads}: not cut"));
        assert!(
            text.is_err(),
            "listen_threads {listen_threads}: answered in full: {text:?}"
        );
    }
}

/// The example server is a control plane: a project key registers a data
/// plane on the admin listener's `/ws/data-plane`; the public listener
/// publishes the token keys for third parties.
#[tokio::test]
async fn the_admin_listener_takes_data_planes_and_the_public_one_publishes_token_keys() {
    use futures_util::{SinkExt, StreamExt};
    let s = Server::start(config()).await.unwrap();
    let admin = |method: reqwest::Method, path: &str, body: Value| {
        let url = format!("http://{}{path}", s.admin_addr);
        let token = s.admin_token().to_owned();
        async move {
            let res = reqwest::Client::new()
                .request(method, url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            serde_json::from_str::<Value>(&res.text().await.unwrap()).unwrap()
        }
    };
    let project = admin(
        reqwest::Method::POST,
        "/api/v1/projects",
        serde_json::json!({"name": "edge"}),
    )
    .await;
    let pid = project["id"].as_str().unwrap().to_owned();
    let key = admin(
        reqwest::Method::POST,
        &format!("/api/v1/projects/{pid}/api-keys"),
        serde_json::json!({"name": "dp"}),
    )
    .await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws/data-plane", s.admin_addr))
            .await
            .unwrap();
    let register =
        serde_json::json!({"type": "register", "project_id": pid, "api_key": key["key"]});
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        register.to_string().into(),
    ))
    .await
    .unwrap();
    let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(m))) = ws.next().await else {
        panic!("no answer");
    };
    let m: Value = serde_json::from_str(&m).unwrap();
    assert_eq!(m["type"], "registered", "{m}");
    assert_eq!(m["heartbeat_interval_secs"], 30);

    let (status, jwks) = get_json(s.public_addr, "/.well-known/jwks.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA", "{jwks}");
    let (status, conf) = get_json(s.public_addr, "/.well-known/openid-configuration", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        conf["jwks_uri"]
            .as_str()
            .unwrap()
            .ends_with("/.well-known/jwks.json"),
        "{conf}"
    );
    // Shutting down closes the data plane's socket, telling it why (instead
    // of holding the listener open for the grace period).
    s.shutdown().await.unwrap();
    let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(m))) = ws.next().await else {
        panic!("no disconnect");
    };
    assert!(m.contains("disconnect"), "{m}");
}

/// The value of `metric`'s series for `upstream` in a Prometheus text.
fn upstream_metric(text: &str, metric: &str, upstream: &str) -> Option<f64> {
    let label = format!("upstream=\"{upstream}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(&label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Three simulators: the simulated models are a pool of all three; with one
/// answering 503, every request still succeeds (a failed attempt is retried
/// on another simulator, and the failing one is ejected), served by the
/// model asked for.
#[tokio::test]
async fn the_simulated_models_are_balanced_over_the_simulators_and_survive_one_failing() {
    let s = Server::start(ServerConfig {
        simulator_instances: 3,
        sim_tokens_per_second: 0.0,
        ..config()
    })
    .await
    .unwrap();
    assert_eq!(s.simulator_addrs.len(), 3);
    assert_eq!(s.simulator_addr, s.simulator_addrs[0]);
    let urls: Vec<String> = s
        .simulator_addrs
        .iter()
        .map(|a| format!("http://{a}"))
        .collect();
    for id in [SIMULATOR_MODEL, SIMULATOR_PREMIUM_MODEL] {
        let (status, model) = get_json(
            s.admin_addr,
            &format!("/api/v1/models/{id}"),
            Some(s.admin_token()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{model}");
        let listed: Vec<(&str, u64)> = model["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| (u["url"].as_str().unwrap(), u["weight"].as_u64().unwrap()))
            .collect();
        let expected: Vec<(&str, u64)> = urls.iter().map(|u| (u.as_str(), 1)).collect();
        assert_eq!(listed, expected, "{model}");
    }

    // Each simulator has its own fault: the second one fails.
    let client = reqwest::Client::new();
    let res = client
        .put(format!("{}/simulator/fault", urls[1]))
        .body(r#"{"mode":"error"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    for (addr, mode) in s.simulator_addrs.iter().zip(["none", "error", "none"]) {
        let (_, fault) = get_json(*addr, "/simulator/fault", None).await;
        assert_eq!(fault["mode"], mode, "{addr}");
    }

    for i in 0..30 {
        let res = chat(&s, 4, false).await;
        let status = res.status();
        let served = res
            .headers()
            .get("x-maas-served-model")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = res.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "request {i}: {text}");
        assert_eq!(served.as_deref(), Some(SIMULATOR_MODEL), "request {i}");
    }

    // The operator's view: the failing simulator failed and was ejected,
    // the others served.
    let (status, metrics) = get(s.admin_addr, "/metrics", Some(s.admin_token())).await;
    assert_eq!(status, StatusCode::OK);
    let metric = |name: &str, url: &str| upstream_metric(&metrics, name, url);
    assert_eq!(
        metric("maas_upstream_ejections_total", &urls[1]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(metric("maas_upstream_healthy", &urls[1]), Some(0.0));
    assert!(metric("maas_upstream_errors_total", &urls[1]) >= Some(5.0));
    for url in [&urls[0], &urls[2]] {
        assert_eq!(metric("maas_upstream_healthy", url), Some(1.0), "{url}");
        assert_eq!(
            metric("maas_upstream_errors_total", url),
            Some(0.0),
            "{url}"
        );
        assert!(
            metric("maas_upstream_requests_total", url) >= Some(10.0),
            "{url}"
        );
    }
    s.shutdown().await.unwrap();
}
