//! # maas-server
//!
//! The example server's library part: every API of `maas-http` over one
//! store (memory or sled), on three listeners, with the background tasks a
//! deployment needs and a graceful shutdown. `examples/server.rs` is a thin
//! command line over [`Server::start`]. The choice of storage engine lives
//! here, so the adapter crate `maas-http` depends on `maas-core` alone.
//!
//! | listener | config key | serves |
//! |---|---|---|
//! | public (`127.0.0.1:8080`) | `listen` | the gateway (`…/v1/chat/completions`, `…/v1/completions`, `…/v1/embeddings`), the Unkey-compatible API (`/v1/liveness`, `/v1/keys…`, `/v1/apis…`, `/v1/ratelimits…`), the user portal under `/portal/` (its login form takes a maas token or an API key), the MaaS user API (everything else) |
//! | admin (`127.0.0.1:9090`) | `admin_listen` | `GET /health` (open), `GET /metrics` and the management API under `/api/v1` (admin token), the operator dashboard under `/ui/` (its login form takes the admin token) |
//! | simulator (`127.0.0.1:8081`, loopback only; `simulator_instances` of them on consecutive ports) | `simulator_listen` | the simulated models' upstreams, each with its fault setting (`/simulator/fault`) |
//!
//! The public listener is served by threads of its own, each with a
//! current-thread runtime ([`ServerConfig::listen_threads`], one per core by
//! default); the others by the runtime [`Server::start`] runs on.
//!
//! On start the server opens the store (sled in `data_dir`, or memory),
//! creates seed 002's default tiers if absent, registers two simulated
//! models (`simulator` for every tier, `simulator-premium` for premium and
//! enterprise; their upstreams are set to the simulators' addresses on every
//! start), loads the development identities of the users file, and settles
//! the admin token (see [`AdminTokenSource`]).
//!
//! Background tasks: the usage ledger's flusher, the rate limiter's sync,
//! [`KeyService::maintain`] every second and [`Scheduling::load`] every ten.
//!
//! [`RunningServer::shutdown`] stops accepting on every listener, lets the
//! requests in flight finish (at most `shutdown_grace_secs`, then their
//! connections are cut), waits for the gateway's settlements, flushes usage,
//! rate-limit counters and the store, then closes it. Dropping a
//! [`RunningServer`] stops the listeners too, but waits for nothing.

mod config;
mod listen;

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::WWW_AUTHENTICATE;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use maas_core::fairshare::{FairShare, FairShareConfig};
use maas_core::mcp::McpServers;
use maas_core::model::ModelServiceConfig;
use maas_core::projects::Projects;
use maas_core::rootkeys::RootKeys;
use maas_core::scheduling::Scheduling;
use maas_core::tier::TierServiceConfig;
use maas_core::token::{TokenConfig, TokenService};
use maas_core::usage::{FlusherHandle, UsageConfig, UsageLedger, UsageOutbox};
use maas_core::webhook::{WebhookConfig, Webhooks};
use maas_core::{
    Actor, AdmissionConfig, AdmissionLimits, Authenticator, Chain, Gateway, GatewayServices,
    Identity, KeyHasher, KeyService, KeyServiceConfig, ModelService, ModelUpdate, NewModel,
    RateLimitConfig, RateLimiter, StaticTokens, Storage, TierService, Upstream, UserKeys,
};
use maas_store_memory::MemoryStore;
use maas_store_redis::{RedisConfig, RedisStore};
use maas_store_sled::{SledConfig, SledError, SledStore};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::ServiceExt;

pub use config::{
    ConfigError, DEFAULT_ADMIN_LISTEN, DEFAULT_DATA_DIR, DEFAULT_LISTEN, DEFAULT_SIMULATOR_LISTEN,
    DEFAULT_SLED_CACHE_MB, DEFAULT_USERS, MAX_LISTEN_THREADS, MAX_SIMULATOR_INSTANCES,
    MAX_SLED_CACHE_MB, MIN_ADMIN_TOKEN, ServerConfig,
};

use maas_http::common::{HttpConfig, is_admin, with_common_layers};
use maas_http::gateway::GatewayConfig;
use maas_http::maas_api::{self, MaasApiState};
use maas_http::management::{self, ManagementServices, ManagementState};
use maas_http::unkey::{self, UnkeyState};

/// The simulated model every tier may use.
pub const SIMULATOR_MODEL: &str = "simulator";
/// The simulated model of the premium and enterprise tiers.
pub const SIMULATOR_PREMIUM_MODEL: &str = "simulator-premium";
/// The tiers of [`SIMULATOR_PREMIUM_MODEL`].
pub const PREMIUM_TIERS: [&str; 2] = ["premium", "enterprise"];
/// The admin token's file in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// The API-key hash secret's file in the data directory.
pub const KEY_SECRET_FILE: &str = "key-secret";
/// The prefix of generated admin tokens.
pub const ADMIN_TOKEN_PREFIX: &str = "maas_admin_";

/// How often [`KeyService::maintain`] runs.
const MAINTAIN_EVERY: Duration = Duration::from_secs(1);
/// How often [`Scheduling::load`] picks up stored fair-share settings.
const LOAD_EVERY: Duration = Duration::from_secs(10);
/// On shutdown, how long a listener's connections, cut once the grace has
/// passed, get to end before its task is dropped.
const CUT_WAIT: Duration = Duration::from_secs(1);
/// With Redis, how stale any cached shared state may be: other replicas'
/// changes apply within this.
pub const SHARED_STATE_TTL: Duration = Duration::from_secs(1);

/// How often a control plane looks for configuration changes to deploy.
pub const AUTO_DEPLOY_EVERY: Duration = Duration::from_millis(100);

/// How long a control plane waits for a burst of changes to end before it
/// builds one artifact of them (removals and revocations go at once).
pub const AUTO_DEPLOY_DEBOUNCE: Duration = Duration::from_millis(250);

/// Why the server could not start (or did not stop cleanly), as one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration (or a file it names) is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({key}): {reason}")]
    Bind {
        /// The configuration key of the listener.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// What the system said.
        reason: String,
    },
    /// Another process holds the data directory.
    #[error(
        "data dir {} is in use by another process (is another maas running?)",
        path.display()
    )]
    DataDirLocked {
        /// The data directory.
        path: PathBuf,
    },
    /// The Redis of `redis` cannot be used.
    #[error("cannot use the Redis of `redis`: {reason}")]
    Redis {
        /// What is wrong (the URL is not repeated: it may hold a password).
        reason: String,
    },
    /// The store could not be opened.
    #[error("cannot open data dir {}: {reason}", path.display())]
    Store {
        /// The data directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A secret file of the data directory could not be read or written.
    #[error("cannot {action} {}: {reason}", path.display())]
    File {
        /// What was being done (`read the admin token file`, ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A step of starting or stopping failed.
    #[error("{step}: {source}")]
    Step {
        /// The step (`ensuring the default tiers`, `flushing usage`, ...).
        step: &'static str,
        /// Why.
        source: maas_core::Error,
    },
}

fn step(step: &'static str) -> impl FnOnce(maas_core::Error) -> ServerError {
    move |source| ServerError::Step { step, source }
}

/// Where the admin token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminTokenSource {
    /// [`ServerConfig::admin_token`] (`MAAS_ADMIN_TOKEN`).
    Configured,
    /// Read from this file of the data directory (generated on an earlier
    /// start).
    File(PathBuf),
    /// Generated by this start: stored in this file (mode 0600), or nowhere
    /// with `memory` (`None`). Show it once.
    Generated(Option<PathBuf>),
}

impl AdminTokenSource {
    /// Whether the token was generated by this start (and should be shown).
    pub fn is_generated(&self) -> bool {
        matches!(self, AdminTokenSource::Generated(_))
    }
}

/// The example server; [`Server::start`] runs one.
#[derive(Debug, Clone, Copy)]
pub struct Server;

/// The services of a running server, over its one store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerServices {
    /// The store.
    pub storage: Storage,
    /// The per-request path of the gateway.
    pub gateway: Gateway,
    /// Every key (root, user, project).
    pub keys: KeyService,
    /// Users' API keys.
    pub user_keys: UserKeys,
    /// Root keys (Unkey API).
    pub root_keys: RootKeys,
    /// maas tokens.
    pub tokens: TokenService,
    /// Tiers.
    pub tiers: TierService,
    /// Models.
    pub models: ModelService,
    /// Fair share and tenants.
    pub scheduling: Scheduling,
    /// The usage ledger.
    pub usage: UsageLedger,
    /// Namespace rate limits (Unkey API).
    pub ratelimits: RateLimiter,
    /// Projects, their data planes and artifacts (seed 001).
    pub projects: Projects,
}

/// A running server: its addresses, its admin token, its services;
/// [`shutdown`](Self::shutdown) stops it.
pub struct RunningServer {
    /// The public listener's address (user API, gateway, Unkey API).
    pub public_addr: SocketAddr,
    /// The admin listener's address (management API, `/metrics`).
    pub admin_addr: SocketAddr,
    /// The first simulator's address (the first of
    /// [`simulator_addrs`](Self::simulator_addrs)).
    pub simulator_addr: SocketAddr,
    /// Every simulator's address, in order (`simulator_instances` of them):
    /// the simulated models' upstreams.
    pub simulator_addrs: Vec<SocketAddr>,
    /// The base URL `/v1/models` lists models under.
    pub public_url: String,
    /// The data directory (`None` with `memory` or `redis`).
    pub data_dir: Option<PathBuf>,
    /// Whether the state is in Redis (shared with other replicas).
    pub redis: bool,
    /// Where the admin token came from.
    pub admin_token_source: AdminTokenSource,
    /// Things the operator should know (development tokens loaded, no
    /// users file, ...); also logged.
    pub warnings: Vec<String>,
    admin_token: String,
    services: ServerServices,
    grace: Duration,
    /// What [`RunningServer::shutdown`] stops; `None` once stopped.
    tasks: Option<Tasks>,
}

/// The listeners, the background tasks and the store handle to flush.
struct Tasks {
    stop: watch::Sender<bool>,
    listeners: Vec<(&'static str, listen::Listening)>,
    /// Lets the public listener's threads end their runtimes (sent, or
    /// dropped, once the requests ended there are settled and the store
    /// flushed: a store connection (re)opened on one is driven there).
    release: watch::Sender<bool>,
    upkeep: JoinHandle<()>,
    /// The webhook dispatcher.
    dispatcher: JoinHandle<()>,
    flusher: FlusherHandle,
    sync: maas_core::ratelimit::SyncHandle,
    sled: Option<SledStore>,
    /// The connection to the control plane, on a data plane.
    data_plane: Option<maas_http::dataplane::DataPlaneHandle>,
    /// Artifacts built and deployed as the configuration changes, on a
    /// control plane.
    auto_deploy: Option<JoinHandle<()>>,
}

impl Drop for RunningServer {
    /// Dropped without [`shutdown`](RunningServer::shutdown): the listeners
    /// stop accepting and the background tasks end after a last flush, in
    /// the background; nothing is waited for.
    fn drop(&mut self) {
        if let Some(tasks) = self.tasks.take() {
            let _ = tasks.stop.send(true);
            tasks.upkeep.abort();
            tasks.dispatcher.abort();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let gateway = self.services.gateway.clone();
                let grace = self.grace;
                rt.spawn(async move {
                    let _ = tokio::time::timeout(grace, gateway.settled()).await;
                    let _ = tasks.sync.shutdown().await;
                    let _ = tasks.flusher.shutdown().await;
                    drop(tasks.release);
                });
            }
        }
    }
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("public_addr", &self.public_addr)
            .field("admin_addr", &self.admin_addr)
            .field("simulator_addr", &self.simulator_addr)
            .field("simulator_addrs", &self.simulator_addrs)
            .field("public_url", &self.public_url)
            .field("data_dir", &self.data_dir)
            .field("admin_token_source", &self.admin_token_source)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

/// The stop signal, as the future a listener's graceful shutdown waits on
/// (also when the sender is dropped).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let bind_err = |e: std::io::Error| ServerError::Bind {
        key,
        addr,
        reason: config::io_reason(&e),
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    Ok(listener)
}

/// Binds the `simulator_instances` simulators: instance `i` on
/// `simulator_listen`'s port + `i` (each on a free port when it is 0).
async fn bind_simulators(
    config: &ServerConfig,
) -> Result<Vec<(SocketAddr, TcpListener)>, ServerError> {
    let key = "simulator_listen";
    let mut out = Vec::with_capacity(config.simulator_instances);
    for i in 0..config.simulator_instances {
        let mut addr = config.simulator_listen;
        if addr.port() != 0 {
            // validate() checked that every port fits.
            let port = u16::try_from(i)
                .ok()
                .and_then(|i| addr.port().checked_add(i))
                .ok_or_else(|| ServerError::Bind {
                    key,
                    addr,
                    reason: "port out of range".into(),
                })?;
            addr.set_port(port);
        }
        let listener = bind(key, addr).await?;
        out.push((local_addr(key, addr, &listener)?, listener));
    }
    Ok(out)
}

fn local_addr(
    key: &'static str,
    addr: SocketAddr,
    l: &TcpListener,
) -> Result<SocketAddr, ServerError> {
    l.local_addr().map_err(|e| ServerError::Bind {
        key,
        addr,
        reason: config::io_reason(&e),
    })
}

/// A fresh secret: 32 random bytes in base58.
fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bs58::encode(bytes).into_string()
}

/// Reads a secret file: its content, trimmed. Warns when others may read it.
fn read_secret(
    action: &'static str,
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<String, ServerError> {
    let file_err = |reason: String| ServerError::File {
        action,
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(config::io_reason(&e)))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_or(0o600, |m| m.permissions().mode());
        if mode & 0o077 != 0 {
            warnings.push(format!(
                "{} may be read by other users (mode {:o}); chmod 600 it",
                path.display(),
                mode & 0o777
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = warnings;
    let secret = text.trim().to_owned();
    if secret.is_empty() {
        return Err(file_err("the file is empty".into()));
    }
    Ok(secret)
}

/// Writes a new secret file readable by its owner only; an existing file
/// is not overwritten.
fn write_secret(action: &'static str, path: &Path, secret: &str) -> Result<(), ServerError> {
    let file_err = |e: std::io::Error| ServerError::File {
        action,
        path: path.to_path_buf(),
        reason: config::io_reason(&e),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(file_err)?;
    file.write_all(secret.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(file_err)?;
    Ok(())
}

/// The secret in `dir/name`, generated and written there if absent; `true`
/// when generated.
fn stored_secret(
    dir: &Path,
    name: &str,
    generate: impl FnOnce() -> String,
    what: (&'static str, &'static str),
    warnings: &mut Vec<String>,
) -> Result<(String, PathBuf, bool), ServerError> {
    let path = dir.join(name);
    if path.exists() {
        let secret = read_secret(what.0, &path, warnings)?;
        return Ok((secret, path, false));
    }
    let secret = generate();
    write_secret(what.1, &path, &secret)?;
    Ok((secret, path, true))
}

async fn open_store(config: &ServerConfig) -> Result<(Storage, Option<SledStore>), ServerError> {
    if config.memory {
        return Ok((MemoryStore::new().storage(), None));
    }
    if let Some(url) = &config.redis {
        let redis = |e: maas_core::Error| ServerError::Redis {
            reason: e.to_string(),
        };
        let store = RedisStore::connect(&RedisConfig::new(url.clone()))
            .await
            .map_err(redis)?;
        store.check_eviction().await.map_err(redis)?;
        return Ok((store.storage(), None));
    }
    let sled = SledConfig {
        cache_capacity: config.sled_cache_mb.saturating_mul(1024 * 1024),
        ..SledConfig::at(&config.data_dir)
    };
    let opened = tokio::task::spawn_blocking(move || SledStore::open_with(sled))
        .await
        .map_err(|e| ServerError::Store {
            path: config.data_dir.clone(),
            reason: e.to_string(),
        })?;
    match opened {
        Ok(store) => Ok((store.clone().storage(), Some(store))),
        Err(SledError::Locked { .. }) => Err(ServerError::DataDirLocked {
            path: config.data_dir.clone(),
        }),
        Err(e) => Err(ServerError::Store {
            path: config.data_dir.clone(),
            reason: e.to_string(),
        }),
    }
}

/// Registers a simulated model served by the pool of `urls` (weight 1
/// each), or, if it exists with other upstream URLs, points it at them. Its
/// other settings, changed through the management API, are kept (the
/// upstreams' weights and limits too while their URLs are the same).
async fn ensure_model(
    models: &ModelService,
    id: &str,
    urls: &[String],
    tiers: &[&str],
) -> maas_core::Result<()> {
    let system = Actor::system();
    let first = urls.first().cloned().unwrap_or_default();
    let pool: Vec<Upstream> = urls.iter().map(Upstream::new).collect();
    match models.get(id).await {
        Ok(m) if m.pool().iter().map(|u| &u.url).eq(urls.iter()) => Ok(()),
        Ok(_) => {
            let update = ModelUpdate {
                upstreams: Some(pool),
                ..ModelUpdate::default()
            };
            models.update(&system, id, update).await.map(drop)
        }
        Err(e) if e.is_not_found() => {
            let mut new = NewModel::new(id, first);
            new.upstreams = pool;
            new.tiers = tiers.iter().map(|t| (*t).to_owned()).collect();
            match models.create(&system, new).await {
                Ok(_) | Err(maas_core::Error::Conflict { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// The router of the simulated models.
fn simulator_router(tokens_per_second: f64, max_concurrent: usize) -> maas_core::Result<Router> {
    maas_http::simulator::router(maas_http::simulator::SimulatorConfig {
        tokens_per_second,
        max_concurrent,
        ..Default::default()
    })
}

/// Whether the public listener hands `path` to the gateway: the inference
/// paths, bare or under `/{model}`.
fn is_gateway(path: &str) -> bool {
    maas_http::gateway::serves(path)
}

/// Whether the public listener hands `path` to the user portal.
fn is_portal(path: &str) -> bool {
    path == "/portal" || path.starts_with("/portal/")
}

/// Whether the public listener hands `path` to the Unkey-compatible API.
fn is_unkey(path: &str) -> bool {
    path == "/v1/liveness"
        || ["/v1/keys", "/v1/apis", "/v1/ratelimits"]
            .iter()
            .any(|p| path.starts_with(p))
}

/// The public listener: the gateway's paths ([`is_gateway`], but the
/// portal's) to the gateway's service as they are (no router around it:
/// its hot path is routed by the service itself), the rest to `rest`.
#[derive(Debug, Clone)]
struct PublicApp {
    gateway: maas_http::gateway::GatewayService,
    rest: Router,
}

impl tower::Service<Request> for PublicApp {
    type Response = Response;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        maas_http::gateway::GatewayFuture,
        axum::routing::future::RouteFuture<Infallible>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        // Both are always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        use futures_util::future::Either;
        let path = req.uri().path();
        if !is_portal(path) && is_gateway(path) {
            Either::Left(self.gateway.call(req))
        } else {
            Either::Right(self.rest.call(req))
        }
    }
}

/// One router that hands each request to the router `pick` names.
fn dispatch(routers: Vec<Router>, pick: fn(&str) -> usize) -> Router {
    let routers: Arc<[Router]> = routers.into();
    Router::new().fallback_service(tower::service_fn(move |req: Request<Body>| {
        let i = pick(req.uri().path());
        let router = routers.get(i).or_else(|| routers.last()).cloned();
        async move {
            Ok::<_, Infallible>(match router {
                Some(r) => r.oneshot(req).await.unwrap_or_else(|e| match e {}),
                None => StatusCode::NOT_FOUND.into_response(),
            })
        }
    }))
}

/// `/health` to the first router, the rest to the second.
fn health_first(path: &str) -> usize {
    usize::from(path != "/health")
}

/// A data plane's `/health`: 200 while it serves (from its last good
/// configuration too), with its connection to the control plane and how
/// old its configuration is.
fn data_plane_health(
    status: watch::Receiver<maas_http::dataplane::DataPlaneStatus>,
    url: String,
    clock: maas_core::clock::SharedClock,
    http: &HttpConfig,
) -> Router {
    let handler = move || {
        let s = status.borrow().clone();
        let now = clock.now();
        let age = s
            .applied_at
            .map(|t| (now.as_millis() - t.as_millis()).max(0) / 1000);
        let body = serde_json::json!({
            "status": "ok",
            "control_plane": {
                "url": url,
                "connected": s.connected,
                "data_plane_id": s.data_plane_id,
                "artifact_id": s.applied.as_ref().map(|m| m.artifact_id.clone()),
                "sequence": s.applied.as_ref().map(|m| m.sequence),
                "configuration_age_secs": age,
                "last_rejection": s.last_rejection,
            },
        });
        async move { axum::Json(body) }
    };
    with_common_layers(
        Router::new().route("/health", axum::routing::get(handler)),
        http,
    )
}

/// The request's id: the client's `x-request-id` if worth keeping, else a
/// new one (these refusals answer before the common layers set it).
fn request_id_of(req: &Request) -> maas_http::common::RequestId {
    req.headers()
        .get("x-request-id")
        .and_then(maas_http::common::RequestId::from_header)
        .unwrap_or_else(maas_http::common::RequestId::generate)
}

/// On a data plane: a change through the management API is refused (409,
/// problem+json) naming the control plane that owns the configuration.
async fn refuse_changes(
    State((control_plane, admin)): State<(Arc<str>, Arc<StaticTokens>)>,
    req: Request,
    next: Next,
) -> Response {
    use maas_http::common::Dialect as _;
    let reads = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if reads || !req.uri().path().starts_with("/api/v1/") {
        return next.run(req).await;
    }
    // Not the admin: the management API's own 401 answers.
    let (parts, body) = req.into_parts();
    if !is_admin(&admin, &parts).await {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let req = Request::from_parts(parts, body);
    let id = request_id_of(&req);
    maas_http::management::Problem::render(
        &maas_core::Error::conflict(format!(
            "this server is a data plane: its configuration comes from the control plane at \
             {control_plane}; make the change there"
        )),
        &id,
    )
}

/// On a data plane: the dashboard reads, and refuses changes (409, naming
/// the control plane); logging in and out still work.
async fn refuse_dashboard_changes(
    State(control_plane): State<Arc<str>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if req.method() != axum::http::Method::POST || path == "/ui/login" || path == "/ui/logout" {
        return next.run(req).await;
    }
    (
        StatusCode::CONFLICT,
        format!(
            "this server is a data plane: its configuration comes from the control plane at \
             {control_plane}; make the change there"
        ),
    )
        .into_response()
}

/// Whether a public-listener request changes API keys or Unkey apis: the
/// MaaS API's `POST /keys` and `DELETE /keys/{name}` (also under
/// `/maas-api`), and the Unkey API's key and api changes (not
/// `keys.verifyKey` nor `ratelimits.limit`, which only count).
fn changes_keys(method: &axum::http::Method, path: &str) -> bool {
    use axum::http::Method;
    let path = path.strip_prefix("/maas-api").unwrap_or(path);
    match *method {
        Method::POST => matches!(
            path,
            "/keys"
                | "/v1/keys"
                | "/v1/keys.createKey"
                | "/v1/keys.updateKey"
                | "/v1/keys.updateRemaining"
                | "/v1/keys.deleteKey"
                | "/v1/apis.createApi"
                | "/v1/apis.deleteApi"
        ),
        Method::DELETE => path.starts_with("/keys/"),
        _ => false,
    }
}

/// On a data plane: a change of API keys on the public listener is refused
/// (409, in the API's own error shape) naming the control plane.
async fn refuse_key_changes(
    State(control_plane): State<Arc<str>>,
    req: Request,
    next: Next,
) -> Response {
    use maas_http::common::Dialect as _;
    if !changes_keys(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let id = request_id_of(&req);
    let err = maas_core::Error::conflict(format!(
        "this server is a data plane: API keys are made at the control plane \
         ({control_plane}); make the change there"
    ));
    if req.uri().path().starts_with("/v1/") {
        maas_http::unkey::Unkey::render(&err, &id)
    } else {
        maas_http::maas_api::Goa::render(&err, &id)
    }
}

/// `/metrics` answers only the admin token (401 otherwise).
async fn require_admin(
    State(admin): State<Arc<StaticTokens>>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    if !is_admin(&admin, &parts).await {
        return (
            StatusCode::UNAUTHORIZED,
            [(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
            "admin token required\n",
        )
            .into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

/// The public URL: as configured, or `http://` and the bound address.
fn public_url(config: &ServerConfig, addr: SocketAddr) -> String {
    match &config.public_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => {
            let mut addr = addr;
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                });
            }
            format!("http://{addr}")
        }
    }
}

impl Server {
    /// Starts a server as `config` says (see the [module](self) docs): binds
    /// the three listeners, opens the store, provisions tiers, models,
    /// users and the admin token, starts the background tasks and serves.
    ///
    /// Every failure is one line: a listener's address in use, the data
    /// directory held by another process, a configuration value or file
    /// that is not usable.
    pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
        config.validate()?;
        let mut warnings = Vec::new();
        let clock = config.clock.clone();

        // Listeners first: an address in use is the likeliest mistake.
        let public = bind("listen", config.listen).await?;
        let admin = bind("admin_listen", config.admin_listen).await?;
        let sims = bind_simulators(&config).await?;
        let public_addr = local_addr("listen", config.listen, &public)?;
        let admin_addr = local_addr("admin_listen", config.admin_listen, &admin)?;
        let simulator_addrs: Vec<SocketAddr> = sims.iter().map(|(addr, _)| *addr).collect();
        let simulator_addr = simulator_addrs
            .first()
            .copied()
            .unwrap_or(config.simulator_listen);
        // One router each: each instance has its own slots and fault.
        let simulators = sims
            .into_iter()
            .map(|(_, listener)| {
                simulator_router(config.sim_tokens_per_second, config.sim_max_concurrent)
                    .map(|router| (listener, router))
            })
            .collect::<maas_core::Result<Vec<_>>>()
            .map_err(step("configuring the simulator"))?;

        // Development identities.
        let users_path = config.users.clone();
        let users = match &users_path {
            Some(p) => config::read_users(p)?,
            None => {
                let default = Path::new(DEFAULT_USERS);
                if default.exists() {
                    config::read_users(default)?
                } else {
                    warnings.push(format!(
                        "no users file at {DEFAULT_USERS}: no development identities \
                         (maas tokens and API keys still work)"
                    ));
                    Vec::new()
                }
            }
        };
        if !users.is_empty() {
            let shown = users_path
                .as_deref()
                .unwrap_or(Path::new(DEFAULT_USERS))
                .display();
            warnings.push(format!(
                "{} static token(s) from {shown} are for development only: \
                 anyone who can read that file can call as those users",
                users.len()
            ));
        }

        let (mut storage, sled) = open_store(&config).await?;
        // A data plane's API keys are its control plane's: held in memory
        // as each artifact carries them (replaced whole when one applies),
        // not written into the store one by one.
        let key_table = config
            .control_plane
            .is_some()
            .then(|| Arc::new(maas_core::artifact::KeyTable::new()));
        if let Some(t) = &key_table {
            storage.keys = t.clone();
        }
        // With Redis the secrets are configured (checked): no data dir.
        let data_dir = (!config.memory && config.redis.is_none()).then(|| config.data_dir.clone());

        // Secrets: configured, else stored in the data directory, else new
        // (last of what can fail for a configuration mistake, so a token is
        // not generated by a start that then fails).
        let key_secret = match (&config.key_secret, &data_dir) {
            (Some(s), _) => s.clone(),
            (None, Some(dir)) => {
                stored_secret(
                    dir,
                    KEY_SECRET_FILE,
                    random_secret,
                    ("read the key secret file", "write the key secret file"),
                    &mut warnings,
                )?
                .0
            }
            (None, None) => random_secret(),
        };
        let generate_admin = || format!("{ADMIN_TOKEN_PREFIX}{}", random_secret());
        let (admin_token, admin_token_source) = match (&config.admin_token, &data_dir) {
            (Some(t), _) => (t.clone(), AdminTokenSource::Configured),
            (None, Some(dir)) => {
                let (token, path, generated) = stored_secret(
                    dir,
                    ADMIN_TOKEN_FILE,
                    generate_admin,
                    ("read the admin token file", "write the admin token file"),
                    &mut warnings,
                )?;
                if let Err(reason) = config::check_admin_token(&token) {
                    return Err(ServerError::File {
                        action: "use the admin token file",
                        path,
                        reason: format!("the token {reason}"),
                    });
                }
                let source = if generated {
                    AdminTokenSource::Generated(Some(path))
                } else {
                    AdminTokenSource::File(path)
                };
                (token, source)
            }
            (None, None) => (generate_admin(), AdminTokenSource::Generated(None)),
        };

        // Services. With Redis, other replicas change the state too: every
        // cache of it is read again after at most SHARED_STATE_TTL (one
        // second), so a key disabled, a tier or tenant changed, tokens
        // revoked or the capacity set on one replica apply on all within a
        // second. (On one node, changes go through the node's own services,
        // which refresh their caches at once; the longer defaults only bound
        // other nodes.)
        // A data plane's configuration is written by the artifacts it
        // applies, under its services: they read it again as replicas do.
        let shared =
            (config.redis.is_some() || config.control_plane.is_some()).then_some(SHARED_STATE_TTL);
        let keys = KeyService::new_with_config(
            storage.clone(),
            KeyHasher::from_secret(key_secret.as_bytes()),
            KeyServiceConfig {
                cache_ttl: shared.unwrap_or(KeyServiceConfig::default().cache_ttl),
                ..KeyServiceConfig::default()
            },
            clock.clone(),
        );
        // A data plane's ledger also hands what it writes to the outbox its
        // usage reports to the control plane are made of.
        let outbox = config.control_plane.is_some().then(UsageOutbox::new);
        let usage = match &outbox {
            Some(o) => UsageLedger::on_store(
                o.wrap(Arc::clone(&storage.usage)),
                UsageConfig::default(),
                clock.clone(),
            ),
            None => UsageLedger::new_with_clock(&storage, UsageConfig::default(), clock.clone()),
        };
        keys.attach_usage(usage.clone())
            .map_err(step("attaching the usage ledger"))?;
        maas_http::metrics::observe_verifications(&keys)
            .map_err(step("attaching the verification metrics"))?;
        let root_keys = RootKeys::new_with_clock(keys.clone(), clock.clone());
        let user_keys = UserKeys::new_with_clock(keys.clone(), clock.clone());
        let tiers = TierService::new_with_config(
            storage.clone(),
            TierServiceConfig {
                snapshot_ttl: shared.unwrap_or(TierServiceConfig::default().snapshot_ttl),
            },
            clock.clone(),
        );
        let models = ModelService::new_with_config(
            storage.clone(),
            ModelServiceConfig {
                snapshot_ttl: shared.unwrap_or(ModelServiceConfig::default().snapshot_ttl),
            },
            clock.clone(),
        );
        let token_config = TokenConfig {
            refresh: shared.unwrap_or(TokenConfig::default().refresh),
            ..TokenConfig::default()
        };
        let tokens = TokenService::open_with_clock(storage.clone(), token_config, clock.clone())
            .await
            .map_err(step("opening the token service"))?;
        let fairshare = FairShare::with_clock(
            FairShareConfig {
                max_in_flight: config.max_in_flight,
                max_queue_per_tenant: config.max_queue_per_tenant,
                queue_timeout: Some(Duration::from_secs(config.queue_timeout_secs)),
                ..FairShareConfig::default()
            },
            clock.clone(),
        )
        .map_err(step("configuring fair share"))?;
        let scheduling = Scheduling::new(storage.clone(), fairshare, clock.clone());
        let ratelimit_config = RateLimitConfig {
            override_ttl: shared.unwrap_or(RateLimitConfig::default().override_ttl),
            ..RateLimitConfig::default()
        };
        let ratelimits = RateLimiter::with_config(storage.clone(), ratelimit_config, clock.clone());
        let static_tokens = StaticTokens::new(users).map_err(step("loading the users"))?;
        let identity: Arc<dyn Authenticator> = Arc::new(
            Chain::new()
                .with(Arc::new(static_tokens))
                .with(Arc::new(tokens.clone())),
        );
        let admin_auth = Arc::new(
            StaticTokens::new([(admin_token.clone(), Identity::new("admin", ["maas:admin"]))])
                .map_err(step("setting the admin token"))?,
        );

        // Provisioning.
        let system = Actor::system();
        tiers
            .ensure_defaults(&system)
            .await
            .map_err(step("ensuring the default tiers"))?;
        let sim_urls: Vec<String> = simulator_addrs
            .iter()
            .map(|a| format!("http://{a}"))
            .collect();
        ensure_model(&models, SIMULATOR_MODEL, &sim_urls, &[])
            .await
            .map_err(step("registering the simulator model"))?;
        ensure_model(&models, SIMULATOR_PREMIUM_MODEL, &sim_urls, &PREMIUM_TIERS)
            .await
            .map_err(step("registering the simulator-premium model"))?;
        scheduling
            .load()
            .await
            .map_err(step("loading the fair-share settings"))?;

        let webhooks = Webhooks::with_config(
            storage.clone(),
            KeyHasher::from_secret(key_secret.as_bytes()),
            WebhookConfig::default(),
            clock.clone(),
        );
        // One instance for the gateway and the management API: a budget
        // set through the API applies to the gateway's next request.
        let admission = AdmissionLimits::with_config(
            storage.clone(),
            AdmissionConfig {
                tenant_ttl: shared.unwrap_or(AdmissionConfig::default().tenant_ttl),
                budget_ttl: shared.unwrap_or(AdmissionConfig::default().budget_ttl),
                ..AdmissionConfig::default()
            },
            clock.clone(),
        );
        let gateway = Gateway::new(
            GatewayServices {
                identity: identity.clone(),
                user_keys: Some(user_keys.clone()),
                tiers: tiers.clone(),
                models: models.clone(),
                admission: admission.clone(),
                scheduling: scheduling.clone(),
                usage: Some(usage.clone()),
                webhooks: Some(webhooks.clone()),
            },
            clock.clone(),
        );
        if maas_http::metrics::prometheus().is_none() {
            warnings.push("another metrics recorder is installed: /metrics answers 503".to_owned());
        }

        // Routers.
        let public_url = public_url(&config, public_addr);
        let http = HttpConfig::default();
        let maas_state = MaasApiState {
            identity,
            tokens: tokens.clone(),
            tiers: tiers.clone(),
            models: models.clone(),
            user_keys: user_keys.clone(),
            storage: storage.clone(),
            gateway_url: public_url.clone(),
            gateway: gateway.clone(),
        };
        // The user portal, for callers on the public listener (its own
        // login and sessions); on a data plane it makes no keys.
        let portal = with_common_layers(
            maas_http::ui::portal::router(
                maas_state.clone(),
                maas_http::ui::portal::PortalConfig {
                    control_plane: config.control_plane.clone(),
                    ..Default::default()
                },
                clock.clone(),
            ),
            &http,
        );
        let maas = maas_api::router(maas_state, &http);
        let unkey = unkey::router(
            UnkeyState::new(root_keys.clone(), ratelimits.clone(), usage.clone())
                .with_admin_token(admin_token.clone())
                .with_config(http),
        );
        let gateway_service =
            maas_http::gateway::service(gateway.clone(), GatewayConfig::default());
        // A data plane: the control plane's artifacts, the kept one first.
        let data_plane = match (
            &config.control_plane,
            &config.project_id,
            &config.project_key,
        ) {
            (Some(url), Some(project), Some(key)) => Some(
                maas_http::dataplane::start(
                    maas_http::dataplane::DataPlaneConfig {
                        control_plane: url.clone(),
                        project_id: project.clone(),
                        project_key: key.clone(),
                        name: None,
                        data_dir: (!config.memory).then(|| config.data_dir.join("control-plane")),
                        public_key: None,
                        usage: outbox.clone(),
                    },
                    Arc::new(StoreApplier {
                        storage: storage.clone(),
                        key_table: key_table.clone().unwrap_or_default(),
                        scheduling: scheduling.clone(),
                        keys: keys.clone(),
                        tokens: tokens.clone(),
                        clock: clock.clone(),
                    }),
                    clock.clone(),
                )
                .await,
            ),
            _ => None,
        };

        let projects = Projects::new_with_clock(keys.clone(), clock.clone());
        let projects_kept = projects.clone();
        let control_plane = maas_http::controlplane::router(
            maas_http::controlplane::ControlPlaneState::new(projects.clone())
                .with_usage(usage.clone(), admission.clone()),
            &http,
        );
        let management_state = ManagementState::new(
            &admin_token,
            ManagementServices {
                scheduling: scheduling.clone(),
                tiers: tiers.clone(),
                models: models.clone(),
                user_keys: user_keys.clone(),
                usage: usage.clone(),
                root_keys: root_keys.clone(),
                projects,
                mcp: McpServers::new_with_clock(storage.clone(), clock.clone()),
                storage: storage.clone(),
                admission: admission.clone(),
                webhooks: webhooks.clone(),
            },
        )
        .map_err(step("setting the admin token"))?
        .with_gateway(gateway.clone());
        // The operator dashboard, over the same services (its own login).
        let dashboard = with_common_layers(
            maas_http::ui::router(
                management_state.clone(),
                maas_http::ui::SessionConfig::default(),
                clock.clone(),
            ),
            &http,
        );
        let dashboard = match &config.control_plane {
            Some(url) => dashboard.layer(middleware::from_fn_with_state(
                Arc::<str>::from(url.as_str()),
                refuse_dashboard_changes,
            )),
            None => dashboard,
        };
        let management = management::router(management_state, &http);
        let metrics = with_common_layers(
            maas_http::metrics::router().layer(middleware::from_fn_with_state(
                admin_auth.clone(),
                require_admin,
            )),
            &http,
        );
        // A data plane's /health tells its control-plane connection.
        let (maas_public, maas_admin) = match (&data_plane, &config.control_plane) {
            (Some(dp), Some(url)) => {
                let health = data_plane_health(dp.watch(), url.clone(), clock.clone(), &http);
                (
                    dispatch(vec![health.clone(), maas.clone()], health_first),
                    dispatch(vec![health, maas.clone()], health_first),
                )
            }
            _ => (maas.clone(), maas.clone()),
        };
        // Indices: 0 Unkey, 1 MaaS API, 2 portal.
        let rest = dispatch(vec![unkey, maas_public, portal], |path| {
            if is_portal(path) {
                2
            } else if is_unkey(path) {
                0
            } else {
                1
            }
        });
        // On a data plane, API keys and Unkey apis are the control plane's:
        // made here they would be local state that its artifacts undo (no
        // gateway path changes keys).
        let rest = match &config.control_plane {
            Some(url) => rest.layer(middleware::from_fn_with_state(
                Arc::<str>::from(url.as_str()),
                refuse_key_changes,
            )),
            None => rest,
        };
        // The gateway's paths straight to its service; the rest by router.
        let public_app = PublicApp {
            gateway: gateway_service,
            rest,
        };
        // Indices: 0 metrics, 1 open health (the MaaS API's), 2 management,
        // 3 the data planes' routes (seed 001: project keys, not the admin
        // token).
        // On a data plane the configuration belongs to the control plane:
        // the management API reads, and refuses changes naming it.
        let management = match &config.control_plane {
            Some(url) => management.layer(middleware::from_fn_with_state(
                (Arc::<str>::from(url.as_str()), admin_auth),
                refuse_changes,
            )),
            None => management,
        };
        let admin_app = dispatch(
            vec![metrics, maas_admin, management, control_plane, dashboard],
            |path| match path {
                "/metrics" => 0,
                "/health" => 1,
                "/ws/data-plane" => 3,
                p if p.starts_with("/artifacts/") => 3,
                p if p == "/ui" || p.starts_with("/ui/") => 4,
                _ => 2,
            },
        );

        // Serving and background tasks.
        let (stop, _) = watch::channel(false);
        let (release, _) = watch::channel(false);
        let public = match config.listen_threads {
            0 => listen::serve(public, public_app, &stop),
            n => listen::serve_threads(n, public, public_app, &stop, &release).map_err(|e| {
                ServerError::Bind {
                    key: "listen",
                    addr: public_addr,
                    reason: format!("cannot start its threads: {}", config::io_reason(&e)),
                }
            })?,
        };
        let mut listeners = vec![
            ("listen", public),
            ("admin_listen", listen::serve(admin, admin_app, &stop)),
        ];
        for (listener, router) in simulators {
            listeners.push(("simulator_listen", listen::serve(listener, router, &stop)));
        }
        let flusher = usage.spawn_flusher();
        let sync = ratelimits.spawn_sync();
        // A control plane (any server that is not a data plane) builds and
        // deploys artifacts as its configuration changes.
        let auto_deploy = config.control_plane.is_none().then(|| {
            let projects = projects_kept.clone();
            let stop = stop.subscribe();
            tokio::spawn(async move {
                projects
                    .run_auto_deploy(AUTO_DEPLOY_EVERY, AUTO_DEPLOY_DEBOUNCE, stop)
                    .await;
            })
        });
        let upkeep = tokio::spawn(upkeep(
            keys.clone(),
            scheduling.clone(),
            shared.unwrap_or(LOAD_EVERY),
            stopped(stop.subscribe()),
        ));
        let dispatcher = tokio::spawn(
            maas_http::webhooks::Dispatcher::new(webhooks.clone(), Default::default()).run(
                Some((user_keys.clone(), clock.clone())),
                stopped(stop.subscribe()),
            ),
        );

        for w in &warnings {
            tracing::warn!("{w}");
        }
        tracing::info!(%public_addr, %admin_addr, ?simulator_addrs, "maas server started");
        Ok(RunningServer {
            public_addr,
            admin_addr,
            simulator_addr,
            simulator_addrs,
            public_url,
            data_dir,
            redis: config.redis.is_some(),
            admin_token_source,
            warnings,
            admin_token,
            services: ServerServices {
                storage,
                gateway,
                keys,
                user_keys,
                root_keys,
                tokens,
                tiers,
                models,
                scheduling,
                usage,
                ratelimits,
                projects: projects_kept,
            },
            grace: Duration::from_secs(config.shutdown_grace_secs),
            tasks: Some(Tasks {
                stop,
                listeners,
                release,
                upkeep,
                dispatcher,
                flusher,
                sync,
                sled,
                data_plane,
                auto_deploy,
            }),
        })
    }
}

/// Applies the control plane's artifacts to a data plane's store, then
/// reloads the changed keys and fair share (groups, capacity, tenants) at
/// once; the other services read theirs again within `SHARED_STATE_TTL`.
struct StoreApplier {
    storage: Storage,
    /// The keys, in place of the store's.
    key_table: Arc<maas_core::artifact::KeyTable>,
    scheduling: Scheduling,
    keys: KeyService,
    tokens: TokenService,
    clock: maas_core::clock::SharedClock,
}

#[async_trait::async_trait]
impl maas_http::dataplane::Apply for StoreApplier {
    async fn apply(&self, bytes: &[u8]) -> maas_core::Result<()> {
        // Parsing a large artifact (50 MB for 100k keys) takes a while: off
        // the runtime's workers, so requests are not held behind it.
        let owned = bytes.to_vec();
        let mut content =
            tokio::task::spawn_blocking(move || maas_core::artifact::Content::from_bytes(&owned))
                .await
                .map_err(|e| maas_core::Error::internal(format!("parsing the artifact: {e}")))??;
        let now = self.clock.now();
        // Keyspaces before the keys that name them.
        content
            .apply_config(
                &self.storage,
                &maas_core::audit::Actor::new("control-plane"),
                now,
            )
            .await?;
        // Replaced whole, off the runtime's workers (100k keys: a tenth
        // of a second of indexing).
        let (table, keys) = (
            Arc::clone(&self.key_table),
            std::mem::take(&mut content.keys),
        );
        let changed = tokio::task::spawn_blocking(move || table.replace(keys, now))
            .await
            .map_err(|e| maas_core::Error::internal(format!("applying the keys: {e}")))?;
        // A key disabled or deleted at the control plane is refused here
        // as soon as the artifact is applied, not a cache refresh later.
        self.keys.reload(&changed).await?;
        // maas tokens minted at the control plane verify here too (their
        // revocations came with the records).
        if let Some(jwks) = &content.token_keys {
            self.tokens.trust_jwks(jwks)?;
        }
        self.scheduling.load().await
    }
}

/// Key upkeep every second, fair-share settings every `load_every`, until
/// `stop`.
async fn upkeep(
    keys: KeyService,
    scheduling: Scheduling,
    load_every: Duration,
    stop: impl Future<Output = ()>,
) {
    let mut maintain = tokio::time::interval(MAINTAIN_EVERY);
    let mut load = tokio::time::interval(load_every);
    for t in [&mut maintain, &mut load] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    // Both were just done (or are not due yet).
    load.tick().await;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = maintain.tick() => {
                if let Err(e) = keys.maintain().await {
                    tracing::warn!("key upkeep failed: {e}");
                }
            }
            _ = load.tick() => {
                if let Err(e) = scheduling.load().await {
                    tracing::warn!("reloading fair-share settings failed: {e}");
                }
            }
        }
    }
}

impl RunningServer {
    /// The admin token: the bearer of the management API and `/metrics`,
    /// and the Unkey API's admin token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The services the server runs on.
    pub fn services(&self) -> &ServerServices {
        &self.services
    }

    /// On a data plane, where its connection to the control plane stands.
    pub fn data_plane(&self) -> Option<maas_http::dataplane::DataPlaneStatus> {
        Some(self.tasks.as_ref()?.data_plane.as_ref()?.status())
    }

    /// The gateway's per-request path.
    pub fn gateway(&self) -> &Gateway {
        &self.services.gateway
    }

    /// The store.
    pub fn storage(&self) -> &Storage {
        &self.services.storage
    }

    /// Stops the server: every listener stops accepting; requests in flight
    /// get `shutdown_grace_secs` to finish (then their connections are cut,
    /// and the gateway settles them as cancelled); then the
    /// gateway's settlements, the usage ledger, the rate-limit counters,
    /// key upkeep and the store are flushed, and the store is closed.
    ///
    /// Every step runs even when one fails; the first failure is returned.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        let Some(Tasks {
            stop,
            listeners,
            release,
            upkeep,
            dispatcher,
            flusher,
            sync,
            sled,
            data_plane,
            auto_deploy,
        }) = self.tasks.take()
        else {
            return Ok(());
        };
        let grace = self.grace;
        // Connected data planes are told and closed: their sessions would
        // otherwise hold the admin listener open for the whole grace.
        self.services
            .projects
            .data_planes()
            .close_all("the control plane is shutting down");
        let _ = stop.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        for (key, listen::Listening { mut task, open }) in listeners {
            let ended = match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(ended) => Some(ended),
                Err(_) => {
                    tracing::warn!(
                        "requests on the {key} listener still running after {} s: their connections are cut",
                        grace.as_secs()
                    );
                    // Requests reading or writing fail at once; one still
                    // waiting (for a slot, for the upstream) fails when it
                    // writes its answer, or ends with the listener's threads.
                    open.cut();
                    tokio::time::timeout(CUT_WAIT, &mut task).await.ok()
                }
            };
            match ended {
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => tracing::warn!("the {key} listener failed: {e}"),
                Some(Err(e)) => tracing::warn!("the {key} listener task failed: {e}"),
                None => task.abort(),
            }
        }
        let _ = upkeep.await;
        if let Some(task) = auto_deploy {
            let _ = task.await;
        }
        // An attempt in flight ends within the dispatcher's timeout; one
        // cut short is recorded as not done and made again after a restart.
        if tokio::time::timeout(grace, dispatcher).await.is_err() {
            tracing::warn!(
                "webhook deliveries still running after {} s",
                grace.as_secs()
            );
        }
        let mut first: Option<ServerError> = None;
        let mut note = |r: Result<(), ServerError>| {
            if let Err(e) = r {
                tracing::warn!("{e}");
                first.get_or_insert(e);
            }
        };
        // Dropped requests are settled in the background: give them the
        // grace too, so a hung store cannot hold the shutdown forever.
        let settle = tokio::time::Instant::now() + grace;
        if tokio::time::timeout_at(settle, self.services.gateway.settled())
            .await
            .is_err()
        {
            tracing::warn!(
                "gateway settlements still running after {} s",
                grace.as_secs()
            );
        }
        note(
            self.services
                .keys
                .maintain()
                .await
                .map_err(step("flushing key upkeep")),
        );
        note(sync.shutdown().await.map_err(step("flushing rate limits")));
        note(flusher.shutdown().await.map_err(step("flushing usage")));
        // After the last flush: the usage it wrote is kept as a report, to
        // go to the control plane at the next start.
        if let Some(dp) = data_plane {
            dp.shutdown().await;
        }
        if let Some(store) = &sled {
            note(store.flush().await.map_err(step("flushing the store")));
        }
        drop(sled);
        // Last: a connection to the store (re)opened by a request on one of
        // the public listener's threads is driven by that thread's runtime,
        // and the flushes above may have used it.
        let _ = release.send(true);
        drop(self);
        tracing::info!("maas server stopped");
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_paths_go_to_the_gateway() {
        assert!(is_gateway("/v1/chat/completions"));
        assert!(is_gateway("/v1/completions"));
        assert!(is_gateway("/simulator/v1/chat/completions"));
        assert!(is_gateway("/simulator-premium/v1/completions"));
        assert!(is_gateway("/v1/embeddings"));
        assert!(is_gateway("/simulator/v1/embeddings"));
        assert!(!is_gateway("/a/b/v1/embeddings"));
        assert!(!is_gateway("/v1/models"));
        assert!(!is_gateway("/v1/keys.verifyKey"));
        assert!(is_unkey("/v1/keys.verifyKey"));
        assert!(is_unkey("/v1/liveness"));
        assert!(!is_unkey("/v1/models"));
    }

    #[test]
    fn the_public_url_defaults_to_the_bound_address() {
        let c = ServerConfig::default();
        let a: SocketAddr = "0.0.0.0:8080".parse().unwrap_or(c.listen);
        assert_eq!(public_url(&c, a), "http://127.0.0.1:8080");
        let c = ServerConfig {
            public_url: Some("https://maas.example/".into()),
            ..ServerConfig::default()
        };
        assert_eq!(public_url(&c, a), "https://maas.example");
    }
}
