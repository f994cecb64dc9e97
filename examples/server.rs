//! The maas example server: every API over one sled store, two simulated
//! models, development users.
//!
//! ```sh
//! cargo run --release --example server
//! cargo run --release --example server -- --memory --listen 127.0.0.1:8000
//! cargo run --release --example server -- --config maas.toml
//! ```
//!
//! - `127.0.0.1:8080`: the user API, the OpenAI-compatible gateway and the
//!   Unkey-compatible API;
//! - `127.0.0.1:9090`: the management API (`/api/v1`) and `/metrics`, behind
//!   the admin token, and an open `/health`;
//! - `127.0.0.1:8081` (loopback only): the simulator, upstream of the models
//!   `simulator` (every tier) and `simulator-premium` (premium, enterprise);
//!   with `--simulator-instances N`, N simulators on ports 8081, 8082, ...,
//!   the models balanced over them.
//!
//! Settings come from flags, then environment variables, then the
//! configuration file (`--config`, TOML, keys as in the table), then the
//! defaults:
//!
//! | flag | environment | file key | default |
//! |---|---|---|---|
//! | `--config FILE` | `MAAS_CONFIG` | | none |
//! | `--data-dir DIR` | `MAAS_DATA_DIR` | `data_dir` | `./maas-data` |
//! | `--memory` | `MAAS_MEMORY` (`true`/`false`, `1`/`0`, ...) | `memory` | false |
//! | `--sled-cache-mb N` | `MAAS_SLED_CACHE_MB` | `sled_cache_mb` | 64 |
//! | `--redis URL` | `MAAS_REDIS_URL` | `redis` | none: sled (needs both secrets below when set) |
//! | `--control-plane URL` | `MAAS_CONTROL_PLANE` | `control_plane` | none: configured here (set: a data plane of that control plane's admin listener) |
//! | `--project-id ID` | `MAAS_PROJECT_ID` | `project_id` | none (with `--control-plane`) |
//! | | `MAAS_PROJECT_KEY` | | none (with `--control-plane`: a `data-plane:connect` key of the project) |
//! | `--listen ADDR` | `MAAS_LISTEN` | `listen` | `127.0.0.1:8080` |
//! | `--admin-listen ADDR` | `MAAS_ADMIN_LISTEN` | `admin_listen` | `127.0.0.1:9090` |
//! | `--simulator-listen ADDR` | `MAAS_SIMULATOR_LISTEN` | `simulator_listen` | `127.0.0.1:8081` |
//! | `--simulator-instances N` | `MAAS_SIMULATOR_INSTANCES` | `simulator_instances` | 1 (up to 16, on consecutive ports) |
//! | `--listen-threads N` | `MAAS_LISTEN_THREADS` | `listen_threads` | one per core (0 to 256; 0: the main runtime serves `--listen`) |
//! | `--users FILE` | `MAAS_USERS` | `users` | `examples/users.toml` |
//! | `--public-url URL` | `MAAS_PUBLIC_URL` | `public_url` | `http://{listen}` |
//! | `--sim-tokens-per-second N` | `MAAS_SIM_TOKENS_PER_SECOND` | `sim_tokens_per_second` | 50 |
//! | `--sim-max-concurrent N` | `MAAS_SIM_MAX_CONCURRENT` | `sim_max_concurrent` | 8 |
//! | `--max-in-flight N` | `MAAS_MAX_IN_FLIGHT` | `max_in_flight` | 64 |
//! | `--max-queue-per-tenant N` | `MAAS_MAX_QUEUE_PER_TENANT` | `max_queue_per_tenant` | 1000 |
//! | `--queue-timeout-secs N` | `MAAS_QUEUE_TIMEOUT_SECS` | `queue_timeout_secs` | 60 |
//! | `--shutdown-grace-secs N` | `MAAS_SHUTDOWN_GRACE_SECS` | `shutdown_grace_secs` | 10 |
//! | | `MAAS_ADMIN_TOKEN` | | generated, in `{data_dir}/admin-token` |
//! | | `MAAS_KEY_SECRET` | | generated, in `{data_dir}/key-secret` |
//!
//! The public listener (the gateway) is served by `listen_threads`
//! threads, each with a runtime of its own: a connection stays on one
//! thread (the one with the fewest open when it came), and so do the
//! upstream connections its requests open, as nginx's workers work. The rest (the admin and simulator
//! listeners, background tasks) runs on a runtime with a worker thread per
//! core (tokio's `TOKIO_WORKER_THREADS` sets another count). On a 2-core
//! machine, with the upstream in a process of its own, the threads cut the
//! CPU a lone client's chat completion costs through the gateway by 28–37%
//! (five runs) against the work-stealing runtime (`--listen-threads 0`),
//! whose two workers wake each other, and by 8–10% at 64 connections; at
//! 16 connections and streamed the two were even
//! (`scripts/load/hotpath.sh` measures both).
//!
//! Without `MAAS_ADMIN_TOKEN` an admin token is generated on first start,
//! stored in the data directory (mode 0600) and printed once with its path.
//! SIGINT or SIGTERM stops the server gracefully (a second one stops it at
//! once). A bad configuration exits with status 2 and one line on stderr.
//! Logs go to stderr, filtered by `RUST_LOG` (default `info`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use maas_server::{AdminTokenSource, ConfigError, RunningServer, Server, ServerConfig};
use tokio::signal::unix::{SignalKind, signal};

/// mimalloc: glibc malloc's arena locks showed up in profiles under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The maas example server.
#[derive(Debug, Parser)]
#[command(name = "maas-server", version, about)]
struct Cli {
    /// Configuration file (TOML); flags and environment variables win over it.
    #[arg(long, env = "MAAS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (sled database, admin token, key secret).
    #[arg(long, env = "MAAS_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Keep everything in memory; nothing survives a restart
    /// (MAAS_MEMORY: true/false, 1/0, yes/no, on/off).
    #[arg(long, env = "MAAS_MEMORY", value_parser = clap::builder::BoolishValueParser::new())]
    memory: bool,
    /// sled's page cache in MiB (more keeps more keys' pages in memory).
    #[arg(long, env = "MAAS_SLED_CACHE_MB", value_name = "N")]
    sled_cache_mb: Option<u64>,
    /// Keep all state in this Redis (redis://host:port/db): servers with the
    /// same --redis, MAAS_ADMIN_TOKEN and MAAS_KEY_SECRET are replicas.
    #[arg(long, env = "MAAS_REDIS_URL", value_name = "URL")]
    redis: Option<String>,
    /// Serve as a data plane of this control plane (its admin listener,
    /// http://host:port); needs --project-id and MAAS_PROJECT_KEY.
    #[arg(long, env = "MAAS_CONTROL_PLANE", value_name = "URL")]
    control_plane: Option<String>,
    /// The project this data plane belongs to (its UUID).
    #[arg(long, env = "MAAS_PROJECT_ID", value_name = "ID")]
    project_id: Option<String>,
    /// User API, gateway and Unkey API listener.
    #[arg(long, env = "MAAS_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Management API and /metrics listener.
    #[arg(long, env = "MAAS_ADMIN_LISTEN", value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// Simulator listener (loopback only).
    #[arg(long, env = "MAAS_SIMULATOR_LISTEN", value_name = "ADDR")]
    simulator_listen: Option<SocketAddr>,
    /// Simulators to run (1 to 16), on consecutive ports from
    /// --simulator-listen's; the simulated models are balanced over them.
    #[arg(long, env = "MAAS_SIMULATOR_INSTANCES", value_name = "N")]
    simulator_instances: Option<usize>,
    /// Threads serving --listen, each with a runtime of its own (0: the
    /// main runtime's workers serve it).
    #[arg(long, env = "MAAS_LISTEN_THREADS", value_name = "N")]
    listen_threads: Option<usize>,
    /// Development users (TOML with [[users]] token, user, groups).
    #[arg(long, env = "MAAS_USERS", value_name = "FILE")]
    users: Option<PathBuf>,
    /// Base URL that /v1/models lists models under.
    #[arg(long, env = "MAAS_PUBLIC_URL", value_name = "URL")]
    public_url: Option<String>,
    /// Tokens per second the simulator generates per request (0: at once).
    #[arg(long, env = "MAAS_SIM_TOKENS_PER_SECOND", value_name = "N")]
    sim_tokens_per_second: Option<f64>,
    /// Requests the simulator generates at once.
    #[arg(long, env = "MAAS_SIM_MAX_CONCURRENT", value_name = "N")]
    sim_max_concurrent: Option<usize>,
    /// Fair-share slots: requests forwarded upstream at once.
    #[arg(long, env = "MAAS_MAX_IN_FLIGHT", value_name = "N")]
    max_in_flight: Option<usize>,
    /// Requests one tenant may have waiting for a slot.
    #[arg(long, env = "MAAS_MAX_QUEUE_PER_TENANT", value_name = "N")]
    max_queue_per_tenant: Option<usize>,
    /// Seconds a request waits for a slot before 503.
    #[arg(long, env = "MAAS_QUEUE_TIMEOUT_SECS", value_name = "N")]
    queue_timeout_secs: Option<u64>,
    /// Seconds requests in flight get to finish on shutdown.
    #[arg(long, env = "MAAS_SHUTDOWN_GRACE_SECS", value_name = "N")]
    shutdown_grace_secs: Option<u64>,
}

/// A secret from the environment: unset or empty is `None`.
fn secret_env(name: &str) -> Result<Option<String>, String> {
    match std::env::var(name) {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8")),
    }
}

/// Flags and environment over the file over the defaults.
fn config(cli: Cli) -> Result<ServerConfig, String> {
    let mut c = match &cli.config {
        Some(path) => ServerConfig::from_toml_file(path).map_err(|e| e.to_string())?,
        None => ServerConfig::default(),
    };
    macro_rules! set {
        ($($field:ident),*) => {$(
            if let Some(v) = cli.$field {
                c.$field = v;
            }
        )*};
    }
    set!(
        data_dir,
        sled_cache_mb,
        listen,
        admin_listen,
        simulator_listen,
        simulator_instances,
        listen_threads,
        sim_tokens_per_second,
        sim_max_concurrent,
        max_in_flight,
        max_queue_per_tenant,
        queue_timeout_secs,
        shutdown_grace_secs
    );
    if cli.memory {
        c.memory = true;
    }
    if cli.users.is_some() {
        c.users = cli.users;
    }
    if cli.redis.is_some() {
        c.redis = cli.redis;
    }
    if cli.control_plane.is_some() {
        c.control_plane = cli.control_plane;
    }
    if cli.project_id.is_some() {
        c.project_id = cli.project_id;
    }
    c.project_key = secret_env("MAAS_PROJECT_KEY")?;
    if cli.public_url.is_some() {
        c.public_url = cli.public_url;
    }
    c.admin_token = secret_env("MAAS_ADMIN_TOKEN")?;
    c.key_secret = secret_env("MAAS_KEY_SECRET")?;
    // Name the secrets' variables, not their (unwritable) keys.
    c.validate().map_err(|e| match e {
        ConfigError::Invalid {
            key: "admin_token",
            reason,
        } => {
            format!("MAAS_ADMIN_TOKEN {reason}")
        }
        ConfigError::Invalid {
            key: "key_secret",
            reason,
        } => {
            format!("MAAS_KEY_SECRET {reason}")
        }
        e => e.to_string(),
    })?;
    Ok(c)
}

fn announce(s: &RunningServer) {
    println!(
        "maas: user API, gateway, Unkey API on http://{} (public URL {})",
        s.public_addr, s.public_url
    );
    println!(
        "maas: management API (/api/v1) and /metrics on http://{}",
        s.admin_addr
    );
    let sims: Vec<String> = s
        .simulator_addrs
        .iter()
        .map(|a| format!("http://{a}"))
        .collect();
    match sims.len() {
        1 => println!("maas: simulator on {}", sims.join("")),
        n => println!(
            "maas: {n} simulators (PUT /simulator/fault on one to make it fail) on {}",
            sims.join(", ")
        ),
    }
    match &s.data_dir {
        Some(dir) => println!("maas: data in {}", dir.display()),
        None if s.redis => println!("maas: data in Redis (shared with the other replicas)"),
        None => println!("maas: data in memory (nothing is kept)"),
    }
    match &s.admin_token_source {
        AdminTokenSource::Configured => println!("maas: admin token from MAAS_ADMIN_TOKEN"),
        AdminTokenSource::File(path) => println!("maas: admin token in {}", path.display()),
        AdminTokenSource::Generated(Some(path)) => println!(
            "maas: generated the admin token (shown once, stored in {}):\n\n    {}\n",
            path.display(),
            s.admin_token()
        ),
        AdminTokenSource::Generated(None) => println!(
            "maas: generated the admin token (shown once, not stored: --memory):\n\n    {}\n",
            s.admin_token()
        ),
    }
}

/// clap's error as one line (help and version are printed as they are).
fn cli() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|e| {
        use clap::error::ErrorKind;
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        let text = e.to_string();
        let line = text.lines().next().unwrap_or("invalid arguments");
        eprintln!("maas: {}", line.strip_prefix("error: ").unwrap_or(line));
        ExitCode::from(2)
    })
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("maas: {message}");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match cli() {
        Ok(c) => c,
        Err(code) => return code,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match config(cli) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    // Before starting, so that a failure here leaves nothing running.
    let (mut interrupt, mut terminate) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => return fail(format!("cannot handle signals: {e}")),
    };
    let server = match Server::start(config).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    announce(&server);

    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("maas: stopping (again to stop at once)");
    tokio::select! {
        r = server.shutdown() => match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("maas: {e}");
                ExitCode::FAILURE
            }
        },
        _ = interrupt.recv() => ExitCode::from(130),
        _ = terminate.recv() => ExitCode::from(143),
    }
}
