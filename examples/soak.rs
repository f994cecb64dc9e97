//! A fixed-rate load loop, bounded in time: POSTs a small chat completion to
//! `--url` at `--rate` requests per second for `--seconds`, and prints the
//! requests sent, the errors (transport failures and non-2xx answers) and
//! the latency percentiles. Exits 1 if any request failed.
//! `scripts/soak.sh` runs it against the example server for 10 minutes.
//!
//! ```sh
//! cargo run --release --example soak -- --url http://127.0.0.1:8080/v1/chat/completions \
//!   --token dev-premium-token --rate 100 --seconds 60
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::sync::Mutex;

/// Fixed-rate load against an OpenAI-compatible endpoint.
#[derive(Debug, Parser)]
struct Args {
    /// The chat completions URL.
    #[arg(long)]
    url: String,
    /// Bearer token.
    #[arg(long)]
    token: String,
    /// Requests per second (1..=10000).
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// How long, in seconds (1..=3600).
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// The model.
    #[arg(long, default_value = "simulator")]
    model: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if !(1..=10_000).contains(&args.rate) || !(1..=3_600).contains(&args.seconds) {
        eprintln!("soak: --rate must be 1..=10000 and --seconds 1..=3600");
        return std::process::ExitCode::from(2);
    }
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("soak: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let body = format!(
        r#"{{"model":"{}","messages":[{{"role":"user","content":"Hello, how are you?"}}],"max_tokens":16}}"#,
        args.model
    );
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    while Instant::now() < end {
        tick.tick().await;
        let (client, url, token, body) = (
            client.clone(),
            args.url.clone(),
            args.token.clone(),
            body.clone(),
        );
        let (sent, errors, latencies) = (sent.clone(), errors.clone(), latencies.clone());
        tasks.spawn(async move {
            sent.fetch_add(1, Ordering::Relaxed);
            let start = Instant::now();
            let res = client
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let ok = match res {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                Ok(r) => {
                    eprintln!("soak: {}", r.status());
                    false
                }
                Err(e) => {
                    eprintln!("soak: {e}");
                    false
                }
            };
            if !ok {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
            latencies.lock().await.push(us);
        });
        // Reap finished tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut l = latencies.lock().await.clone();
    l.sort_unstable();
    let pct = |p: usize| {
        l.get((l.len() * p / 100).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let (sent, errors) = (sent.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    println!(
        "SOAK sent={sent} errors={errors} p50_us={} p99_us={} max_us={}",
        pct(50),
        pct(99),
        l.last().copied().unwrap_or(0)
    );
    if errors == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}
