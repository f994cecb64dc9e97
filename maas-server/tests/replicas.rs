//! Three example servers on one Redis are replicas of one deployment: what
//! one counts, the others see, and the limits hold across all of them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use maas_core::ManualClock;
use maas_server::{RunningServer, Server, ServerConfig};
use maas_store_redis::testing::RedisServer;
use reqwest::StatusCode;
use serde_json::{Value, json};

const ADMIN: &str = "replica-admin-token-0123456789";

async fn replicas(redis: &RedisServer, n: usize) -> Vec<RunningServer> {
    replicas_on(redis, n, Arc::new(ManualClock::default())).await
}

async fn replicas_on(redis: &RedisServer, n: usize, clock: Arc<ManualClock>) -> Vec<RunningServer> {
    let mut out = Vec::new();
    for _ in 0..n {
        let config = ServerConfig {
            memory: false,
            redis: Some(redis.url.clone()),
            admin_token: Some(ADMIN.into()),
            key_secret: Some("replica-key-secret".into()),
            ..common::config_on(clock.clone())
        };
        out.push(Server::start(config).await.unwrap());
    }
    out
}

async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    bearer: &str,
    body: Value,
) -> (StatusCode, Value) {
    let res = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .bearer_auth(bearer)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = res.status();
    (
        status,
        serde_json::from_str(&res.text().await.unwrap()).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_one_redis_count_as_one() {
    let redis = RedisServer::start().await;
    let servers = replicas(&redis, 3).await;

    // A key created on one replica, with 50 uses, verified 150 times spread
    // over the three: exactly 50 VALID.
    let (status, api) = post(
        servers[0].public_addr,
        "/v1/apis.createApi",
        ADMIN,
        json!({"name": "shared"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{api}");
    let (status, key) = post(
        servers[1].public_addr,
        "/v1/keys.createKey",
        ADMIN,
        json!({"apiId": api["apiId"], "remaining": 50}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{key}");
    let secret = key["key"].as_str().unwrap().to_owned();
    let addrs: Vec<_> = servers.iter().map(|s| s.public_addr).collect();
    let tasks: Vec<_> = (0..150)
        .map(|i| {
            let (addr, secret) = (addrs[i % 3], secret.clone());
            tokio::spawn(async move {
                let (_, v) = post(addr, "/v1/keys.verifyKey", ADMIN, json!({"key": secret})).await;
                v["valid"] == true
            })
        })
        .collect();
    let mut valid = 0;
    for t in tasks {
        valid += usize::from(t.await.unwrap());
    }
    assert_eq!(valid, 50);

    // The free tier's 5 requests a minute, across the three replicas: 5
    // chat completions admitted, the rest 429.
    let mut admitted = 0;
    for i in 0..15 {
        let (status, body) = post(
            addrs[i % 3],
            "/v1/chat/completions",
            "dev-free-token",
            json!({"model": "simulator", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
        )
        .await;
        match status {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(admitted, 5);

    // A tenant created through one replica's management API is read by
    // another's.
    let (status, t) = post(
        servers[2].admin_addr,
        "/api/v1/tenants",
        ADMIN,
        json!({"name": "acme"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    let got = reqwest::Client::new()
        .get(format!(
            "http://{}/api/v1/tenants/{}",
            servers[0].admin_addr,
            t["id"].as_str().unwrap()
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn redis_needs_both_secrets_and_a_non_evicting_policy() {
    let redis = RedisServer::start().await;
    let base = || ServerConfig {
        memory: false,
        redis: Some(redis.url.clone()),
        ..common::config_on(Arc::new(ManualClock::default()))
    };
    let e = Server::start(base()).await.unwrap_err().to_string();
    assert!(
        e.contains("MAAS_ADMIN_TOKEN") && e.contains("MAAS_KEY_SECRET"),
        "{e}"
    );
    // allkeys-lru may evict counters, volatile-ttl the markers of
    // counter writes: both refused, naming the setting.
    let mut con = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for policy in ["allkeys-lru", "volatile-ttl"] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg(policy)
            .query_async(&mut con)
            .await
            .unwrap();
        let e = Server::start(ServerConfig {
            admin_token: Some(ADMIN.into()),
            key_secret: Some("s".into()),
            ..base()
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("maxmemory-policy") && e.contains(policy), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_a_503_and_back_is_200_with_the_data_kept() {
    let mut redis = RedisServer::start_persistent().await;
    let server = replicas(&redis, 1).await.remove(0);
    let addr = server.public_addr;
    let (_, api) = post(addr, "/v1/apis.createApi", ADMIN, json!({"name": "kept"})).await;
    let (status, key) = post(
        addr,
        "/v1/keys.createKey",
        ADMIN,
        json!({"apiId": api["apiId"], "remaining": 10}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{key}");
    let secret = key["key"].as_str().unwrap().to_owned();
    let verify = || post(addr, "/v1/keys.verifyKey", ADMIN, json!({"key": secret}));
    let (status, v) = verify().await;
    assert_eq!(
        (status, &v["remaining"]),
        (StatusCode::OK, &json!(9)),
        "{v}"
    );

    // Down: a spend needs Redis, so the answer is a 503 in the API's own
    // shape, not a hang or a verification served from one replica's memory.
    redis.stop();
    let (status, v) = verify().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(v["error"]["code"].is_string(), "{v}");

    // Back (same data, from its append-only file): served again, the uses
    // spent before the outage still spent.
    redis.restart().await;
    let mut tries = 0;
    let v = loop {
        let (status, v) = verify().await;
        if status == StatusCode::OK {
            break v;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        tries += 1;
        assert!(tries < 1_000, "the replica did not reconnect");
        tokio::task::yield_now().await;
    };
    assert_eq!(v["remaining"], 8, "{v}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_replica_applies_on_the_others_within_a_second() {
    let redis = RedisServer::start().await;
    let clock = Arc::new(ManualClock::default());
    let servers = replicas_on(&redis, 2, clock.clone()).await;
    let (a, b) = (&servers[0], &servers[1]);
    let (_, api) = post(
        a.public_addr,
        "/v1/apis.createApi",
        ADMIN,
        json!({"name": "prop"}),
    )
    .await;
    let (_, key) = post(
        a.public_addr,
        "/v1/keys.createKey",
        ADMIN,
        json!({"apiId": api["apiId"]}),
    )
    .await;
    let secret = key["key"].as_str().unwrap().to_owned();
    let verify_on_b = || {
        post(
            b.public_addr,
            "/v1/keys.verifyKey",
            ADMIN,
            json!({"key": secret}),
        )
    };
    assert_eq!(verify_on_b().await.1["valid"], true);

    // Disabled through A: B, which has it cached, refuses it a second later.
    let (status, body) = post(
        a.public_addr,
        "/v1/keys.updateKey",
        ADMIN,
        json!({"keyId": key["keyId"], "enabled": false}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    clock.advance(maas_server::SHARED_STATE_TTL);
    let (_, v) = verify_on_b().await;
    assert_eq!(
        (&v["valid"], &v["code"]),
        (&json!(false), &json!("DISABLED")),
        "{v}"
    );

    // A tier created through A's management API serves B's callers a
    // second later.
    let tier = json!({"name": "gold", "level": 9, "groups": ["system:authenticated"],
        "requests_per_minute": 1000, "tokens_per_minute": 1000000, "models": ["*"]});
    let (status, body) = post(a.admin_addr, "/api/v1/tiers", ADMIN, tier).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    clock.advance(maas_server::SHARED_STATE_TTL);
    let me = reqwest::Client::new()
        .get(format!("http://{}/v1/me", b.public_addr))
        .bearer_auth("dev-free-token")
        .send()
        .await
        .unwrap();
    let me: Value = serde_json::from_str(&me.text().await.unwrap()).unwrap();
    assert_eq!(me["tier"]["name"], "gold", "{me}");
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

async fn send(
    method: reqwest::Method,
    addr: std::net::SocketAddr,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("http://{addr}{path}"))
        .bearer_auth(ADMIN);
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    (
        status,
        serde_json::from_str(&res.text().await.unwrap()).unwrap_or(Value::Null),
    )
}

/// Set in the environment of the replica that
/// [`a_replica_killed_between_reserve_and_settle_holds_nothing_forever`]
/// starts as a process of its own (this test binary, run again): the Redis
/// URL it serves from.
const CHILD: &str = "MAAS_TEST_REPLICA_REDIS";

/// The child's part: a replica on `redis_url` (the manual clock at its
/// default start, like the parent's; a simulator streaming one token a
/// second), announced on stdout, then kept running until it is killed.
async fn child_replica(redis_url: String) {
    let config = ServerConfig {
        memory: false,
        redis: Some(redis_url),
        admin_token: Some(ADMIN.into()),
        key_secret: Some("replica-key-secret".into()),
        sim_tokens_per_second: 1.0,
        ..common::config_on(Arc::new(ManualClock::default()))
    };
    let server = Server::start(config).await.unwrap();
    println!("REPLICA {}", server.public_addr);
    // Bounded: the parent kills it long before.
    tokio::time::sleep(std::time::Duration::from_secs(300)).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_between_reserve_and_settle_holds_nothing_forever() {
    use tokio::io::AsyncBufReadExt;
    if let Ok(url) = std::env::var(CHILD) {
        return child_replica(url).await;
    }
    let redis = RedisServer::start().await;
    let clock = Arc::new(ManualClock::default());
    let a = replicas_on(&redis, 1, clock.clone()).await.remove(0);

    // A tenant at a tier no count reaches, its key, a daily budget of 1,000
    // USD and the simulated model at 1 USD a token: a request's hold is its
    // prompt estimate plus its max_tokens, in dollars.
    let tier = json!({"name": "bulk", "level": 9, "groups": ["bulk-users"],
        "requests_per_minute": 100000, "tokens_per_minute": 100000000, "models": ["*"]});
    let (status, body) = post(a.admin_addr, "/api/v1/tiers", ADMIN, tier).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, t) = post(
        a.admin_addr,
        "/api/v1/tenants",
        ADMIN,
        json!({"name": "acme", "tier": "bulk"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    let tid = t["id"].as_str().unwrap().to_owned();
    let (status, k) = post(
        a.admin_addr,
        &format!("/api/v1/tenants/{tid}/keys"),
        ADMIN,
        json!({"name": "prod"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{k}");
    let secret = k["secret"].as_str().unwrap().to_owned();
    let (status, body) = send(
        reqwest::Method::PUT,
        a.admin_addr,
        &format!("/api/v1/models/{}", maas_server::SIMULATOR_MODEL),
        Some(json!({"pricing": {"input_per_million": 1e6, "output_per_million": 1e6, "currency": "USD"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let budget = format!("/api/v1/tenants/{tid}/budget");
    let (status, body) = send(
        reqwest::Method::PUT,
        a.admin_addr,
        &budget,
        Some(json!({"amount": 1000.0, "currency": "USD", "period": "daily"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Replica B: this test binary again, a process of its own.
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "a_replica_killed_between_reserve_and_settle_holds_nothing_forever",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD, &redis.url)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let b_addr = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(addr) = line.strip_prefix("REPLICA ") {
                return addr.parse::<std::net::SocketAddr>().unwrap();
            }
        }
        panic!("the replica process ended without serving");
    })
    .await
    .expect("the replica process serves within a minute");

    // A streamed request on B (100 tokens at one a second): once its first
    // event is here it is admitted, its budget held in Redis. B is killed.
    let body = json!({"model": maas_server::SIMULATOR_MODEL, "stream": true, "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}]});
    let mut res = reqwest::Client::new()
        .post(format!("http://{b_addr}/v1/chat/completions"))
        .bearer_auth(&secret)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let first = res.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "), "{first:?}");
    let (_, held) = send(reqwest::Method::GET, a.admin_addr, &budget, None).await;
    let reserved = held["reserved"].as_f64().unwrap();
    assert!(reserved >= 100.0, "{held}");
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert!(
        res.chunk().await.is_err() || res.chunk().await.unwrap().is_none(),
        "B is gone"
    );

    // Nobody settles it: A still shows it held, until the hold's lease
    // ends; then it is charged as reserved (the upstream may have run).
    let (_, b) = send(reqwest::Method::GET, a.admin_addr, &budget, None).await;
    assert_eq!(b["reserved"], held["reserved"], "{b}");
    clock.advance(maas_core::admission::HOLD_LEASE);
    let (_, b) = send(reqwest::Method::GET, a.admin_addr, &budget, None).await;
    assert_eq!(b["reserved"], 0.0, "{b}");
    assert_eq!(b["spent"].as_f64().unwrap(), reserved, "{b}");
    assert_eq!(b["left"].as_f64().unwrap(), 1000.0 - reserved, "{b}");
    a.shutdown().await.unwrap();
}
