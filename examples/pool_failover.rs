//! Issue 22's failover goal, measured: a model served by three simulator
//! instances (each on its own runtime and thread) behind the gateway, under
//! steady load from `--connections` clients for `--seconds`; at
//! `--kill-at` one instance is killed (its runtime dropped: its listener
//! and every connection close, as a crashed process's would). Prints the
//! client-visible errors, the retries and each upstream's attempts, errors
//! and health, and writes them as JSON to `--out` (for BENCHMARKS.md).
//!
//! ```sh
//! cargo run --release --example pool_failover -- --seconds 20 --kill-at 5
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use maas_core::admission::AdmissionLimits;
use maas_core::fairshare::{FairShare, FairShareConfig};
use maas_core::gateway::{Gateway, GatewayServices};
use maas_core::identity::{Identity, StaticTokens};
use maas_core::model::Upstream;
use maas_core::scheduling::Scheduling;
use maas_core::tier::NewTier;
use maas_core::{Actor, Clock, ModelService, NewModel, Storage, SystemClock, TierService};
use maas_http::gateway::{GatewayConfig, router};
use maas_http::simulator::{self, SimulatorConfig};
use serde_json::json;

/// Kill one of three upstreams under steady load.
#[derive(Debug, Parser)]
struct Args {
    /// Length of the run, in seconds (2..=600).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// When the third upstream is killed, in seconds from the start.
    #[arg(long, default_value_t = 5)]
    kill_at: u64,
    /// Concurrent clients (1..=256).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Tokens each answer has (the simulator generates 200 per second, so
    /// requests are in flight when the upstream dies).
    #[arg(long, default_value_t = 8)]
    tokens: u64,
    /// Stream the answers (a stream cut by the kill is a client-visible
    /// error: it cannot be retried after its first byte).
    #[arg(long)]
    stream: bool,
    /// Where to write the figures as JSON.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// A simulator on its own runtime; dropping the sender kills it.
struct Instance {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Instance {
    fn start() -> std::io::Result<Instance> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(l) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let config = SimulatorConfig {
                    tokens_per_second: 200.0,
                    max_concurrent: 256,
                    ..SimulatorConfig::default()
                };
                tokio::select! {
                    _ = simulator::serve(l, config, std::future::pending()) => {}
                    _ = stopped => {}
                }
            });
            // Every connection task is dropped with the runtime.
            drop(rt);
        });
        Ok(Instance {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn kill(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if !(2..=600).contains(&args.seconds) || !(1..=256).contains(&args.connections) {
        return Err("--seconds must be 2..=600 and --connections 1..=256".into());
    }
    let mut instances = vec![Instance::start()?, Instance::start()?, Instance::start()?];

    let storage: Storage = maas_store_memory::MemoryStore::new().storage();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let admin = Actor::new("admin");
    let tiers = TierService::new_with_clock(storage.clone(), clock.clone());
    tiers
        .create(
            &admin,
            NewTier {
                name: "load".into(),
                level: 1,
                groups: vec!["load".into()],
                requests_per_minute: 100_000_000,
                tokens_per_minute: 100_000_000_000,
                max_tokens_per_request: None,
                models: Default::default(),
            },
        )
        .await?;
    let models = ModelService::new_with_clock(storage.clone(), clock.clone());
    let mut m = NewModel::new("pooled", "");
    m.upstreams = instances
        .iter()
        .map(|i| Upstream::new(format!("http://{}", i.addr)))
        .collect();
    models.create(&admin, m).await?;
    let identity =
        StaticTokens::new([("load-token".to_owned(), Identity::new("loader", ["load"]))])?;
    let fair = FairShare::with_clock(
        FairShareConfig {
            max_in_flight: 1024,
            ..FairShareConfig::default()
        },
        clock.clone(),
    )?;
    let gateway = Gateway::new(
        GatewayServices {
            identity: Arc::new(identity),
            user_keys: None,
            tiers,
            models,
            admission: AdmissionLimits::with_config(
                storage.clone(),
                maas_core::admission::AdmissionConfig::default(),
                clock.clone(),
            ),
            scheduling: Scheduling::new(storage.clone(), fair, clock.clone()),
            usage: None,
            webhooks: None,
        },
        clock,
    );
    let app = router(gateway.clone(), GatewayConfig::default());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/chat/completions", l.local_addr()?);
    tokio::spawn(async move { axum::serve(l, app).await });

    let client = reqwest::Client::builder().no_proxy().build()?;
    let body = json!({
        "model": "pooled",
        "messages": [{"role": "user", "content": "Tell me about pools."}],
        "max_tokens": args.tokens,
        "stream": args.stream,
    })
    .to_string();
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let end = started + Duration::from_secs(args.seconds);
    let mut clients = Vec::new();
    for _ in 0..args.connections {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        let (sent, failed) = (sent.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let mut first_error: Option<String> = None;
            while Instant::now() < end {
                let res = client
                    .post(&url)
                    .bearer_auth("load-token")
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                sent.fetch_add(1, Ordering::Relaxed);
                let error = match res {
                    Ok(r) if r.status().is_success() => match r.bytes().await {
                        Ok(b) if !b.is_empty() => None,
                        Ok(_) => Some("empty body".to_owned()),
                        Err(e) => Some(format!("body: {e}")),
                    },
                    Ok(r) => Some(format!("status {}", r.status())),
                    Err(e) => Some(format!("request: {e}")),
                };
                if let Some(e) = error {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                }
            }
            first_error
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.kill_at.min(args.seconds - 1))).await;
    let before = sent.load(Ordering::Relaxed);
    instances[2].kill();
    let killed_at = started.elapsed();
    let mut first_errors = Vec::new();
    for c in clients {
        if let Ok(Some(e)) = c.await {
            first_errors.push(e);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let pools = gateway.upstreams().snapshot();
    let upstreams: Vec<serde_json::Value> = pools
        .iter()
        .flat_map(|p| p.upstreams.iter())
        .map(|u| {
            json!({
                "url": u.url, "attempts": u.requests, "errors": u.errors,
                "ejections": u.ejections, "state": u.state,
            })
        })
        .collect();
    let attempts: u64 = pools
        .iter()
        .flat_map(|p| p.upstreams.iter())
        .map(|u| u.requests)
        .sum();
    let result = json!({
        "seconds": args.seconds,
        "kill_at_s": (killed_at.as_secs_f64() * 10.0).round() / 10.0,
        "connections": args.connections,
        "tokens": args.tokens,
        "stream": args.stream,
        "requests": sent,
        "requests_before_kill": before,
        "errors": failed,
        "error_rate": failed as f64 / sent.max(1) as f64,
        "retries": attempts.saturating_sub(sent),
        "rps": (sent as f64 / elapsed).round(),
        "first_errors": first_errors.iter().take(3).collect::<Vec<_>>(),
        "upstreams": upstreams,
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    if let Some(out) = args.out {
        std::fs::write(out, result.to_string())?;
    }
    for i in &mut instances {
        i.kill();
    }
    Ok(())
}
