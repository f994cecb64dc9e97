//! Seed 002 end to end against the example server started in-process on
//! random loopback ports (memory store, manual clock): an access token, the
//! models of the tier, chat at the per-model URL, streaming, the x-ratelimit
//! headers, a 429; the metrics that leaves; and the official OpenAI Python
//! SDK driving the same server unchanged (`scripts/openai_sdk.py`; the test installs
//! the `openai` package with pip when it is missing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use maas_core::{ManualClock, Timestamp};
use maas_server::{RunningServer, Server, ServerConfig};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn start(clock: &ManualClock) -> RunningServer {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Server::start(ServerConfig {
        memory: true,
        listen: any,
        admin_listen: any,
        simulator_listen: any,
        users: Some(repo().join("examples/users.toml")),
        sim_tokens_per_second: 0.0,
        shutdown_grace_secs: 5,
        clock: Arc::new(clock.clone()),
        ..ServerConfig::default()
    })
    .await
    .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn access_token(base: &str, identity: &str) -> String {
    let res = client()
        .post(format!("{base}/maas-api/v1/tokens"))
        .bearer_auth(identity)
        .header("content-type", "application/json")
        .body(r#"{"expiration": "15m"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    v["token"].as_str().unwrap().to_owned()
}

async fn chat(url: &str, token: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_002_flow_against_the_example_server() {
    let clock = ManualClock::new(Timestamp::from_millis(1_795_000_000_000));
    let server = start(&clock).await;
    let base = server.public_url.clone();

    // Step 2: an access token for the identity.
    let premium = access_token(&base, "dev-premium-token").await;
    // Discovering models: the per-model URL.
    let res = client()
        .get(format!("{base}/v1/models"))
        .bearer_auth(&premium)
        .send()
        .await
        .unwrap();
    let models: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    let first = &models["data"][0];
    let (model, url) = (
        first["id"].as_str().unwrap(),
        first["url"].as_str().unwrap(),
    );
    assert_eq!(model, "simulator");
    assert_eq!(url, format!("{base}/simulator"));

    // Basic chat completion.
    let hello = json!({
        "model": model,
        "messages": [{"role": "user", "content": "Hello, how are you?"}],
        "max_tokens": 100,
    });
    let res = chat(url, &premium, &hello).await;
    assert_eq!(res.status(), 200);
    for h in [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    ] {
        assert!(res.headers().contains_key(h), "{h}");
    }
    let answer: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 100);

    // Streaming.
    let mut streamed = hello.clone();
    streamed["stream"] = json!(true);
    streamed["max_tokens"] = json!(4);
    let res = chat(url, &premium, &streamed).await;
    let text = res.text().await.unwrap();
    assert_eq!(text.matches("\"content\":\"").count(), 4);
    assert!(text.trim_end().ends_with("data: [DONE]"));

    // The free tier: 100 tokens a minute; seed 002's request takes them all
    // (its 100 max_tokens are capped to what the minute leaves), the next is
    // a 429 naming the limit; a minute later it is served again.
    let free = access_token(&base, "dev-free-token").await;
    let res = chat(url, &free, &hello).await;
    assert_eq!(res.status(), 200);
    let capped: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    let used = capped["usage"]["total_tokens"].as_u64().unwrap();
    assert_eq!(used, 100, "capped to the tier's tokens per minute");
    let res = chat(url, &free, &hello).await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let e: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
    assert_eq!(e["error"]["type"], "rate_limit_error");
    clock.advance(Duration::from_secs(120));
    let res = chat(url, &free, &hello).await;
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();

    // The tenant was created on first use and is configurable.
    let admin = server.admin_token().to_owned();
    let res = client()
        .get(format!("http://{}/api/v1/tenants", server.admin_addr))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let tenants = res.text().await.unwrap();
    assert!(
        tenants.contains("\"premium-user\"") && tenants.contains("\"free-user\""),
        "{tenants}"
    );

    // Metrics on the admin listener.
    let metrics = client()
        .get(format!("http://{}/metrics", server.admin_addr))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "maas_requests_total{model=\"simulator\",status=\"429\"}",
        "maas_tokens_total{model=\"simulator\",direction=\"out\"}",
        "maas_admission_wait_seconds_bucket",
        "maas_upstream_latency_seconds_bucket",
        "maas_in_flight",
    ] {
        assert!(metrics.contains(needle), "{needle} in\n{metrics}");
    }
    server.shutdown().await.unwrap();
}

/// Where the `openai` package is importable from: already installed, or
/// installed by pip into this test's scratch directory (once).
fn openai_package() -> PathBuf {
    python_package("openai", "pydeps")
}

/// Where Python package `name` is importable from: already installed in
/// `dir` (under this test's scratch directory), or installed there by pip.
fn python_package(name: &str, dir: &str) -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join(dir);
    let importable = |path: &Path| {
        std::process::Command::new("python3")
            .env("PYTHONPATH", path)
            .args(["-c", &format!("import {name}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if importable(&target) {
        return target;
    }
    let pip = std::process::Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--target"])
        .arg(&target)
        .arg(name)
        .output();
    assert!(
        importable(&target),
        "this test needs python3 and the {name} package; pip install into {} failed: {:?}",
        target.display(),
        pip.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
    );
    target
}

/// Runs an SDK check script (`scripts/{script}`) against the example
/// server with `pythonpath`, and asserts it ends saying `done`.
async fn run_sdk_check(script: &str, pythonpath: PathBuf, done: &str) {
    let clock = ManualClock::new(Timestamp::from_millis(1_795_000_000_000));
    let server = start(&clock).await;
    let base = server.public_url.clone();
    let out = tokio::process::Command::new("python3")
        .env("PYTHONPATH", pythonpath)
        .arg(repo().join("scripts").join(script))
        .args(["--base-url", &base])
        .args(["--free-token", "dev-free-token"])
        .args(["--premium-token", "dev-premium-token"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(done), "{stdout}");
    server.shutdown().await.unwrap();
}

/// The official OpenAI Python SDK against the example server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_works_unchanged() {
    run_sdk_check(
        "openai_sdk.py",
        openai_package(),
        "the OpenAI SDK works unchanged",
    )
    .await;
}

/// The official Anthropic Python SDK against the example server (Messages
/// translated for its OpenAI-compatible simulator).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_python_sdk_works_unchanged() {
    run_sdk_check(
        "anthropic_sdk.py",
        python_package("anthropic", "pydeps-anthropic"),
        "the Anthropic SDK works unchanged",
    )
    .await;
}
