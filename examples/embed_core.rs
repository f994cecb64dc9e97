//! maas in a gateway that is not tower-based (Pingora, hyper directly, a
//! proxy of your own): the whole per-request path is three core calls.
//!
//! 1. `gateway.authenticate(bearer)`: who, at which tier, with which key;
//! 2. `gateway.admit(&caller, &request)`: model access, limits reserved,
//!    response cache, a fair-share slot;
//! 3. `admitted.complete(usage)`: limits reconciled, slot freed, usage
//!    recorded (dropping `admitted` instead, e.g. when the client goes
//!    away, completes it as cancelled).
//!
//! The program starts the simulator as the upstream, serves one request
//! through the three calls with a plain HTTP client, and prints the usage
//! recorded.
//!
//! ```sh
//! cargo run --example embed_core
//! ```

use std::sync::Arc;

use maas::core::admission::estimate_prompt_tokens;
use maas::core::gateway::{Admission, Completion, Gateway, InferenceRequest, Refused};
use maas::core::usage::{GroupBy, TimeRange, UsageScope};
use maas::core::{Actor, Clock, GatewayServices, Identity, NewModel, StaticTokens, SystemClock};
use maas_http::simulator::{self, SimulatorConfig};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sim = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream = format!("http://{}", sim.local_addr()?);
    tokio::spawn(simulator::serve(
        sim,
        SimulatorConfig::default(),
        std::future::pending(),
    ));

    // Set-up, once.
    let storage = maas::memory::MemoryStore::new().storage();
    let dev = Identity::new("alice", ["system:authenticated"]);
    let identity = Arc::new(StaticTokens::new([("dev-token".to_owned(), dev)])?);
    let services = GatewayServices::defaults(&storage, identity)?;
    services.tiers.ensure_defaults(&Actor::system()).await?;
    services
        .models
        .create(&Actor::system(), NewModel::new("simulator", upstream))
        .await?;
    let ledger = services.usage.clone();
    let gateway = Gateway::new(services, Arc::new(SystemClock));

    // A request as your proxy received it.
    let bearer = "dev-token";
    let body = json!({"model": "simulator", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8});

    // 1. Authenticate.
    let caller = gateway.authenticate(bearer).await?; // 401 on error
    // 2. Admit.
    let request = InferenceRequest {
        model: "simulator",
        prompt_tokens: estimate_prompt_tokens(body.to_string().len()),
        max_tokens: Some(8),
        cache_key: None,
        api: maas::core::model::ModelApi::Openai,
    };
    let mut admitted = match gateway.admit(&caller, &request).await? {
        Ok(Admission::Admitted(a)) => a,
        Ok(Admission::Cached(hit)) => {
            println!("from the cache: {} bytes", hit.body.len());
            return Ok(());
        }
        Err(Refused::Limit(denied)) => {
            println!("429: {denied}, retry after {} s", denied.retry_after_secs);
            return Ok(());
        }
        Err(Refused::Queue { rejected, .. }) => {
            println!("queue: {rejected}");
            return Ok(());
        }
        Err(Refused::NoUpstream { model, retry_after }) => {
            println!("503: every upstream of {model} is failing; retry in {retry_after:?}");
            return Ok(());
        }
    };
    // Forward, capping the output at what was reserved.
    let mut forwarded = body.clone();
    forwarded["max_tokens"] = json!(admitted.max_output_tokens());
    // (The model's first upstream; maas-http's gateway balances over all of
    // them with `gateway.upstreams().pool(model).pick()`.)
    let url = format!("{}/v1/chat/completions", admitted.model().upstream_url);
    let answer: Value = reqwest::Client::new()
        .post(url)
        .json_body(&forwarded)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap_or(Value::Null))?;
    println!("answer: {}", answer["choices"][0]["message"]["content"]);
    // While streaming, report progress: admitted.record_output(n).
    admitted.record_output(0);
    // 3. Complete with what the upstream reported.
    let usage = &answer["usage"];
    let done = Completion::success(
        usage["prompt_tokens"]
            .as_u64()
            .unwrap_or(request.prompt_tokens),
        usage["completion_tokens"].as_u64().unwrap_or(0),
    );
    admitted.complete(done).await?;

    if let Some(ledger) = ledger {
        let now = SystemClock.now();
        let range = TimeRange::new(now.add_millis(-60_000), now.add_millis(60_000));
        for row in ledger
            .totals(range, GroupBy::Tenant, &UsageScope::default())
            .await?
        {
            let u = row.usage;
            println!(
                "usage of {}: {} request(s), {} tokens in, {} out",
                row.group, u.requests, u.input_tokens, u.output_tokens
            );
        }
    }
    Ok(())
}

/// A JSON body without reqwest's `json` feature.
trait JsonBody {
    fn json_body(self, v: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(v.to_string())
    }
}
