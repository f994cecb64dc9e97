//! Issue 23's goal, the server's side: every dashboard page's server time
//! with `--keys` tenant keys (default 100,000) and `--tenants` tenants
//! (default 10,000) in a sled store, beside the same pages with 10 keys and
//! 10 tenants (the floor, same run). Each page is asked `--rounds` times
//! through the `/ui` router (logged in, as a browser would be); the median
//! and the worst are printed, and written as JSON to `--out`.
//!
//! ```sh
//! cargo run --release --example ui_scale -- --keys 100000 --tenants 10000
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use clap::Parser;
use futures_util::StreamExt as _;
use http_body_util::BodyExt as _;
use maas_core::fairshare::{FairShare, FairShareConfig};
use maas_core::mcp::McpServers;
use maas_core::projects::Projects;
use maas_core::rootkeys::RootKeys;
use maas_core::scheduling::Scheduling;
use maas_core::tenant::NewTenant;
use maas_core::usage::{UsageConfig, UsageLedger, UsageRecord};
use maas_core::{
    Actor, Clock, KeyHasher, KeyService, ModelService, NewModel, Storage, SystemClock, TierService,
    UserKeys,
};
use maas_http::management::{ManagementServices, ManagementState};
use maas_http::ui::SessionConfig;
use maas_store_sled::SledStore;
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// Time the dashboard's pages with many keys and tenants.
#[derive(Debug, Parser)]
struct Args {
    /// Tenant keys in the store (10..=1,000,000).
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Tenants in the store (10..=100,000).
    #[arg(long, default_value_t = 10_000)]
    tenants: usize,
    /// Requests per page (1..=1,000).
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Also load each page in headless chromium (`chromium` and
    /// `chromedriver` on the PATH) and report the full load: navigation
    /// start to the load event, as the browser measures it.
    #[arg(long)]
    browser: bool,
    /// Where to write the figures as JSON.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// Serves `app` on a loopback port; its address.
async fn serve(app: Router) -> Result<std::net::SocketAddr, Box<dyn std::error::Error>> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move { axum::serve(l, app).await });
    Ok(addr)
}

/// A headless chromium through a chromedriver of our own (killed on drop).
struct Browser {
    client: fantoccini::Client,
    driver: std::process::Child,
}

impl Browser {
    async fn start() -> Result<Browser, Box<dyn std::error::Error>> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut driver = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let url = format!("http://127.0.0.1:{port}");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                            "--disable-gpu", "--window-size=1280,1000"]}),
        );
        for _ in 0..200 {
            if let Ok(client) = fantoccini::ClientBuilder::rustls()?
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                return Ok(Browser { client, driver });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = driver.kill();
        let _ = driver.wait();
        Err("chromedriver did not start".into())
    }

    /// Logs in at `origin`'s dashboard.
    async fn login(&self, origin: &str) -> Result<(), Box<dyn std::error::Error>> {
        use fantoccini::Locator;
        let c = &self.client;
        c.goto(&format!("{origin}/ui/login")).await?;
        c.find(Locator::Css("input[name=token]"))
            .await?
            .send_keys(ADMIN)
            .await?;
        c.find(Locator::Css("button[type=submit]"))
            .await?
            .click()
            .await?;
        c.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("header nav"))
            .await?;
        Ok(())
    }

    /// The median full load of `origin` + `path`, in ms.
    async fn load(
        &self,
        origin: &str,
        path: &str,
        rounds: usize,
    ) -> Result<f64, Box<dyn std::error::Error>> {
        let mut took = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            self.client.goto(&format!("{origin}{path}")).await?;
            let ms = self
                .client
                .execute(
                    "const n = performance.getEntriesByType('navigation')[0]; \
                     return n.loadEventEnd - n.startTime;",
                    vec![],
                )
                .await?;
            took.push(ms.as_f64().unwrap_or(f64::NAN));
        }
        took.sort_by(f64::total_cmp);
        Ok(took[took.len() / 2])
    }

    async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

const ADMIN: &str = "ui-scale-admin-token-0123456789";

/// A store with `tenants` tenants and `keys` keys spread over them, some
/// usage, and the dashboard over it.
async fn dashboard(
    storage: Storage,
    tenants: usize,
    keys: usize,
) -> Result<Router, Box<dyn std::error::Error>> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let admin = Actor::new("ui-scale");
    let fs = FairShare::with_clock(FairShareConfig::default(), clock.clone())?;
    let key_service = KeyService::new_with_clock(
        storage.clone(),
        KeyHasher::from_secret(b"ui-scale-secret"),
        clock.clone(),
    );
    let services = ManagementServices {
        scheduling: Scheduling::new(storage.clone(), fs, clock.clone()),
        tiers: TierService::new_with_clock(storage.clone(), clock.clone()),
        models: ModelService::new_with_clock(storage.clone(), clock.clone()),
        user_keys: UserKeys::new_with_clock(key_service.clone(), clock.clone()),
        usage: UsageLedger::new_with_clock(&storage, UsageConfig::default(), clock.clone()),
        mcp: McpServers::new_with_clock(storage.clone(), clock.clone()),
        root_keys: RootKeys::new_with_clock(key_service.clone(), clock.clone()),
        projects: Projects::new_with_clock(key_service, clock.clone()),
        webhooks: maas_core::webhook::Webhooks::new(storage.clone(), KeyHasher::random()),
        admission: maas_core::AdmissionLimits::new(storage.clone()),
        storage,
    };
    services.tiers.ensure_defaults(&admin).await?;
    services
        .models
        .create(&admin, NewModel::new("llama", "http://127.0.0.1:9"))
        .await?;
    let names: Vec<String> = (0..tenants).map(|i| format!("tenant-{i:06}")).collect();
    let made: Vec<_> = futures_util::stream::iter(names.clone())
        .map(|name| {
            let (s, admin) = (services.scheduling.clone(), admin.clone());
            async move {
                s.create_tenant(
                    &admin,
                    NewTenant {
                        name,
                        ..NewTenant::default()
                    },
                )
                .await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    made.into_iter().collect::<Result<Vec<_>, _>>()?;
    let made: Vec<_> = futures_util::stream::iter(0..keys)
        .map(|i| {
            let (k, admin) = (services.user_keys.clone(), admin.clone());
            let tenant = names[i % names.len()].clone();
            async move {
                k.create_tenant_key(&admin, &tenant, &format!("key-{i}"))
                    .await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    made.into_iter().collect::<Result<Vec<_>, _>>()?;
    let now = clock.now();
    for (i, name) in names.iter().enumerate().take(1_000) {
        services.usage.record(&UsageRecord {
            input_tokens: 100 + i as u64,
            output_tokens: 50,
            ..UsageRecord::new(now, name.as_str(), "llama")
        })?;
    }
    services.usage.flush().await?;
    let state = ManagementState::new(ADMIN, services)?;
    Ok(maas_http::ui::router(
        state,
        SessionConfig::default(),
        clock,
    ))
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, usize) {
    let res = match app.clone().oneshot(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    let (status, headers) = (res.status(), res.headers().clone());
    let len = res
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    (status, headers, len)
}

async fn login(app: &Router) -> Result<String, Box<dyn std::error::Error>> {
    let req = Request::post("/ui/login")
        .header(header::HOST, "127.0.0.1:9090")
        .header(header::ORIGIN, "http://127.0.0.1:9090")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={ADMIN}")))?;
    let (status, headers, _) = send(app, req).await;
    let set = headers
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .ok_or(format!("login failed: {status}"))?;
    Ok(set.split(';').next().unwrap_or_default().to_owned())
}

/// Median and worst server time of `path`, in µs.
async fn time(
    app: &Router,
    cookie: &str,
    path: &str,
    rounds: usize,
) -> Result<(f64, f64, usize), Box<dyn std::error::Error>> {
    let mut took = Vec::with_capacity(rounds);
    let mut bytes = 0;
    for _ in 0..rounds {
        let req = Request::get(path)
            .header(header::HOST, "127.0.0.1:9090")
            .header(header::COOKIE, cookie)
            .body(Body::empty())?;
        let started = Instant::now();
        let (status, _, len) = send(app, req).await;
        took.push(started.elapsed());
        if status != StatusCode::OK {
            return Err(format!("{path}: {status}").into());
        }
        bytes = len;
    }
    took.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Ok((us(took[took.len() / 2]), us(took[took.len() - 1]), bytes))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let keys = args.keys.clamp(10, 1_000_000);
    let tenants = args.tenants.clamp(10, 100_000);
    let rounds = args.rounds.clamp(1, 1_000);
    let dirs = (tempfile::tempdir()?, tempfile::tempdir()?);
    let started = Instant::now();
    let big = dashboard(
        SledStore::open(dirs.0.path().join("big.db"))?.storage(),
        tenants,
        keys,
    )
    .await?;
    println!(
        "setup: {tenants} tenants, {keys} keys in {:?}",
        started.elapsed()
    );
    let small = dashboard(
        SledStore::open(dirs.1.path().join("small.db"))?.storage(),
        10,
        10,
    )
    .await?;
    let (big_cookie, small_cookie) = (login(&big).await?, login(&small).await?);
    let browser = if args.browser {
        let origins = (
            format!("http://{}", serve(big.clone()).await?),
            format!("http://{}", serve(small.clone()).await?),
        );
        let b = Browser::start().await?;
        b.login(&origins.0).await?;
        let b2 = Browser::start().await?;
        b2.login(&origins.1).await?;
        Some((b, b2, origins))
    } else {
        None
    };
    let pages = [
        ("overview", "/ui/".to_owned()),
        ("tenants", "/ui/tenants".to_owned()),
        ("tenants, search", "/ui/tenants?q=tenant-0099".to_owned()),
        ("keys", "/ui/keys".to_owned()),
        (
            "keys of a tenant",
            "/ui/keys?tenant=tenant-000007".to_owned(),
        ),
        ("models", "/ui/models".to_owned()),
        (
            "usage, day by tenant",
            "/ui/usage?range=day&group=tenant".to_owned(),
        ),
        ("audit", "/ui/audit".to_owned()),
    ];
    let mut rows = Vec::new();
    println!(
        "{:<24} {:>12} {:>12} {:>12} {:>10} {:>12} {:>12}",
        "page", "median µs", "worst µs", "10 keys µs", "bytes", "load ms", "10 keys ms"
    );
    for (name, path) in &pages {
        let (m, worst, bytes) = time(&big, &big_cookie, path, rounds).await?;
        let (floor, _, _) = time(&small, &small_cookie, path, rounds).await?;
        let mut row = json!({"page": name, "path": path, "median_us": m.round(),
                             "worst_us": worst.round(), "floor_us": floor.round(), "bytes": bytes});
        let (mut load, mut load_floor) = (f64::NAN, f64::NAN);
        if let Some((b, b2, (o1, o2))) = &browser {
            load = b.load(o1, path, 5).await?;
            load_floor = b2.load(o2, path, 5).await?;
            row["load_ms"] = json!(load.round());
            row["load_floor_ms"] = json!(load_floor.round());
        }
        println!(
            "{name:<24} {m:>12.0} {worst:>12.0} {floor:>12.0} {bytes:>10} {load:>12.0} {load_floor:>12.0}"
        );
        rows.push(row);
    }
    if let Some((b, b2, _)) = browser {
        b.stop().await;
        b2.stop().await;
    }
    let result: Value = json!({"keys": keys, "tenants": tenants, "rounds": rounds, "pages": rows});
    if let Some(out) = args.out {
        std::fs::write(out, result.to_string())?;
    }
    Ok(())
}
