//! The three APIs of maas-http on one loopback listener, over the memory
//! backend, for contract testing against the served OpenAPI document
//! (`scripts/schemathesis.sh` runs schemathesis against it).
//!
//! ```sh
//! cargo run --example openapi_server -- --addr 127.0.0.1:8089 --seconds 300
//! cargo run --example openapi_server -- --print-openapi > openapi.json
//! ```
//!
//! Requests under `/api/v1` go to the management router, `/v1/liveness`,
//! `/v1/keys…`, `/v1/apis…` and `/v1/ratelimits…` to the Unkey-compatible
//! router, everything else to the MaaS user API. One bearer token (default
//! [`DEFAULT_TOKEN`], or `MAAS_ADMIN_TOKEN`) is the management admin token,
//! the Unkey admin token and a MaaS identity (groups `premium-users` and
//! `system:authenticated`). The server stops after `--seconds` (default
//! 600) so that a forgotten one does not linger.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use maas::core::fairshare::{FairShare, FairShareConfig};
use maas::core::identity::{Chain, Identity, StaticTokens};
use maas::core::mcp::McpServers;
use maas::core::projects::Projects;
use maas::core::scheduling::Scheduling;
use maas::core::token::{TokenConfig, TokenService};
use maas::core::usage::{UsageConfig, UsageLedger};
use maas::core::{
    Actor, Clock, KeyHasher, KeyService, ModelService, NewModel, RateLimitConfig, RateLimiter,
    RootKeys, SystemClock, TierService, UserKeys,
};
use maas::core::{Authenticator, Gateway, GatewayServices};
use maas::memory::MemoryStore;
use maas_http::HttpConfig;
use maas_http::maas_api::{self, MaasApiState};
use maas_http::management::{self, ManagementServices, ManagementState};
use maas_http::unkey::{self, UnkeyState};
use tower::ServiceExt;

/// The bearer token when `MAAS_ADMIN_TOKEN` is not set.
const DEFAULT_TOKEN: &str = "openapi-admin-token-0123456789";

struct Args {
    addr: SocketAddr,
    seconds: u64,
    print_openapi: bool,
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 8089)),
        seconds: 600,
        print_openapi: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--addr" => {
                let v = it.next().ok_or("--addr needs a value")?;
                out.addr = v.parse().map_err(|e| format!("--addr {v}: {e}"))?;
            }
            "--seconds" => {
                let v = it.next().ok_or("--seconds needs a value")?;
                out.seconds = v.parse().map_err(|e| format!("--seconds {v}: {e}"))?;
            }
            "--print-openapi" => out.print_openapi = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !out.addr.ip().is_loopback() {
        return Err(format!("{}: only loopback addresses are served", out.addr));
    }
    Ok(out)
}

/// The three routers over one memory store.
async fn routers(token: &str) -> maas::core::Result<(Router, Router, Router)> {
    let storage = MemoryStore::new().storage();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let system = Actor::system();

    let keys = KeyService::new(storage.clone(), KeyHasher::random());
    let usage = UsageLedger::new(&storage, UsageConfig::default());
    keys.attach_usage(usage.clone())?;
    let root_keys = RootKeys::new(keys.clone());
    let user_keys = UserKeys::new(keys.clone());
    let tiers = TierService::new(storage.clone());
    tiers.ensure_defaults(&system).await?;
    let models = ModelService::new(storage.clone());
    models
        .create(
            &system,
            NewModel::new("simulator", "http://127.0.0.1:9/sim"),
        )
        .await?;
    let tokens = TokenService::open(storage.clone(), TokenConfig::default()).await?;

    let identity = Chain::new()
        .with(Arc::new(StaticTokens::new([(
            token.to_owned(),
            Identity::new("openapi", ["premium-users", "system:authenticated"]),
        )])?))
        .with(Arc::new(tokens.clone()));
    let identity: Arc<dyn Authenticator> = Arc::new(identity);
    let mut services = GatewayServices::defaults(&storage, identity.clone())?;
    services.tiers = tiers.clone();
    services.models = models.clone();
    services.user_keys = Some(user_keys.clone());
    let maas = maas_api::router(
        MaasApiState {
            identity,
            tokens,
            tiers: tiers.clone(),
            models: models.clone(),
            user_keys: user_keys.clone(),
            storage: storage.clone(),
            gateway_url: "http://127.0.0.1:8080".into(),
            gateway: Gateway::new(services, Arc::new(maas::core::SystemClock)),
        },
        &HttpConfig::default(),
    );

    let limiter =
        RateLimiter::with_config(storage.clone(), RateLimitConfig::default(), clock.clone());
    let unkey = unkey::router(
        UnkeyState::new(root_keys.clone(), limiter, usage.clone()).with_admin_token(token),
    );

    let fairshare = FairShare::new(FairShareConfig::default())?;
    let services = ManagementServices {
        scheduling: Scheduling::new(storage.clone(), fairshare, clock),
        tiers,
        models,
        user_keys,
        usage,
        root_keys,
        projects: Projects::new(keys),
        mcp: McpServers::new(storage.clone()),
        webhooks: maas::core::webhook::Webhooks::new(
            storage.clone(),
            maas::core::KeyHasher::random(),
        ),
        admission: maas::core::AdmissionLimits::new(storage.clone()),
        storage,
    };
    let management = management::router(
        ManagementState::new(token, services)?,
        &HttpConfig::default(),
    );
    Ok((maas, unkey, management))
}

fn is_unkey(path: &str) -> bool {
    path == "/v1/liveness"
        || ["/v1/keys", "/v1/apis", "/v1/ratelimits"]
            .iter()
            .any(|p| path.starts_with(p))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    if args.print_openapi {
        println!(
            "{}",
            serde_json::to_string_pretty(&maas_http::openapi::document())?
        );
        return Ok(());
    }
    let token = std::env::var("MAAS_ADMIN_TOKEN").unwrap_or_else(|_| DEFAULT_TOKEN.to_owned());
    let (maas, unkey, management) = routers(&token).await?;
    let app = Router::new().fallback_service(tower::service_fn(move |req: Request<Body>| {
        let path = req.uri().path();
        let router = if path.starts_with(management::BASE) {
            management.clone()
        } else if is_unkey(path) {
            unkey.clone()
        } else {
            maas.clone()
        };
        async move { Ok::<_, Infallible>(router.oneshot(req).await.unwrap_or_else(|e| match e {})) }
    }));
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let serve = axum::serve(listener, app);
    match tokio::time::timeout(Duration::from_secs(args.seconds), serve).await {
        Ok(r) => r?,
        Err(_) => eprintln!("stopping after {} s", args.seconds),
    }
    Ok(())
}
