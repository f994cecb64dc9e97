//! The example server's settings ([`ServerConfig`]) and the one-line errors
//! of the files it reads ([`ConfigError`]).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use maas_core::clock::SharedClock;
use maas_core::scheduling::MAX_CAPACITY;
use maas_core::{Identity, SystemClock};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The data directory when none is configured.
pub const DEFAULT_DATA_DIR: &str = "./maas-data";
/// The users file when none is configured (a missing one is a warning).
pub const DEFAULT_USERS: &str = "examples/users.toml";
/// The user API, gateway and Unkey-compatible API listener by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The management API and `/metrics` listener by default.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// The simulator's listener by default (loopback only).
pub const DEFAULT_SIMULATOR_LISTEN: &str = "127.0.0.1:8081";
/// The most simulator instances ([`ServerConfig::simulator_instances`]).
pub const MAX_SIMULATOR_INSTANCES: usize = 16;
/// The most threads serving the public listener
/// ([`ServerConfig::listen_threads`]).
pub const MAX_LISTEN_THREADS: usize = 256;
/// The sled page cache by default, in MiB.
pub const DEFAULT_SLED_CACHE_MB: u64 = 64;
/// The largest sled page cache accepted, in MiB (1 TiB).
pub const MAX_SLED_CACHE_MB: u64 = 1 << 20;
/// The shortest admin token accepted.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// The example server's settings.
///
/// Every field has a default, so an empty file (or none) is a valid
/// configuration. Read from TOML with [`ServerConfig::from_toml_file`]; the
/// keys are the field names, and an unknown key is an error. The secrets
/// ([`admin_token`](Self::admin_token), [`key_secret`](Self::key_secret))
/// and the [`clock`](Self::clock) are not read from the file: secrets come
/// from the environment (`MAAS_ADMIN_TOKEN`, `MAAS_KEY_SECRET`) or the data
/// directory, so that a configuration file can be shared or committed.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The sled database directory, which also holds the generated admin
    /// token (`admin-token`) and API-key hash secret (`key-secret`).
    /// Default `./maas-data`. Unused with [`memory`](Self::memory).
    pub data_dir: PathBuf,
    /// Keep everything in memory (nothing is written, nothing survives a
    /// restart). Default false.
    pub memory: bool,
    /// Keep everything in this Redis (`redis://host:port/db`, `rediss://`
    /// for TLS) instead of sled: servers started with the same `redis`, the
    /// same admin token and the same key secret are replicas of one
    /// deployment. Both secrets must then be configured (they stay outside
    /// the store). Default none.
    pub redis: Option<String>,
    /// Serve as a data plane of this control plane (its admin listener,
    /// `http://host:port`): the configuration (tiers, models, fair share,
    /// tenants) comes from the artifacts it deploys, the last good one kept
    /// in `{data_dir}/control-plane`. Needs `project_id` and
    /// `project_key`. Default none.
    pub control_plane: Option<String>,
    /// The project this data plane belongs to (its UUID), with
    /// `control_plane`.
    pub project_id: Option<String>,
    /// A project key with the scope `data-plane:connect`, with
    /// `control_plane`. Not read from the file (`MAAS_PROJECT_KEY` in the
    /// example).
    #[serde(skip)]
    pub project_key: Option<String>,
    /// sled's page cache, in MiB (at least 1). Beyond the server's own key
    /// cache, a verification of a key not in it reads sled: with 1M keys a
    /// 256 MiB cache served about 25% more random verifications than the
    /// default 64 MiB, for about 320 MB more RSS. Default 64.
    pub sled_cache_mb: u64,
    /// The user API, the inference gateway and the Unkey-compatible API.
    /// Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// The management API (`/api/v1`), `/metrics` and `/health`. Default
    /// `127.0.0.1:9090`.
    pub admin_listen: SocketAddr,
    /// The simulated models' server; must be a loopback address (it has no
    /// authentication: clients reach it through the gateway). Default
    /// `127.0.0.1:8081`.
    pub simulator_listen: SocketAddr,
    /// How many simulators to run (1 to [`MAX_SIMULATOR_INSTANCES`]):
    /// instance `i` (from 0) listens on `simulator_listen`'s port + `i` (each
    /// on a free port when that port is 0), and the simulated models are
    /// balanced over all of them. Each has its own fault setting
    /// (`/simulator/fault`). Default 1.
    pub simulator_instances: usize,
    /// How many threads serve the public listener (the gateway, the user
    /// and Unkey APIs), each with a runtime of its own (0 to
    /// [`MAX_LISTEN_THREADS`]): a connection is served start to end by one
    /// thread (the one with the fewest open when it came), as nginx's
    /// workers serve theirs, so that no request waits for another thread
    /// to wake. 0: served by the runtime
    /// [`Server::start`](super::Server::start) runs on, as the admin and
    /// simulator listeners are. Default: one per core.
    pub listen_threads: usize,
    /// The development identities (TOML, `[[users]]` with `token`, `user`,
    /// `groups`). `None`: `examples/users.toml` if it exists (a warning if
    /// not); a file named here must exist.
    pub users: Option<PathBuf>,
    /// The base URL `/v1/models` lists models under. Default
    /// `http://{listen}` (with the port actually bound, and `127.0.0.1` for
    /// an unspecified address).
    pub public_url: Option<String>,
    /// Tokens the simulator generates per second per request; 0 answers at
    /// once. Default 50.
    pub sim_tokens_per_second: f64,
    /// Requests the simulator generates at once; more wait. Default 8.
    pub sim_max_concurrent: usize,
    /// Fair-share slots: requests forwarded upstream at once. A capacity
    /// set through the management API (stored) takes precedence. Default 64.
    pub max_in_flight: usize,
    /// Requests one tenant may have waiting for a slot; one more gets 429.
    /// Default 1000.
    pub max_queue_per_tenant: usize,
    /// How long a request waits for a slot before 503, in seconds (at least
    /// 1). Default 60.
    pub queue_timeout_secs: u64,
    /// On shutdown, how long requests in flight may take to finish before
    /// their connections are dropped, in seconds. Default 10.
    pub shutdown_grace_secs: u64,
    /// The admin token (at least 16 characters): the bearer of the
    /// management API and `/metrics`, and the Unkey API's admin token. Not
    /// read from the file (`MAAS_ADMIN_TOKEN` in the example). `None`: the
    /// one stored in the data directory, generated on first start.
    #[serde(skip)]
    pub admin_token: Option<String>,
    /// The secret API keys are hashed with; keys created under another
    /// secret no longer verify. Not read from the file (`MAAS_KEY_SECRET` in
    /// the example). `None`: the one stored in the data directory,
    /// generated on first start (a random one with `memory`).
    #[serde(skip)]
    pub key_secret: Option<String>,
    /// The clock of every service (tests set a `ManualClock`). Default the
    /// system clock; not read from the file.
    #[serde(skip, default = "system_clock")]
    pub clock: SharedClock,
}

fn system_clock() -> SharedClock {
    Arc::new(SystemClock)
}

/// The cores this process may run on (1 when that is not known).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

fn addr(s: &str) -> SocketAddr {
    // The defaults are literals that parse; the fallback is never taken.
    s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            memory: false,
            redis: None,
            control_plane: None,
            project_id: None,
            project_key: None,
            sled_cache_mb: DEFAULT_SLED_CACHE_MB,
            listen: addr(DEFAULT_LISTEN),
            admin_listen: addr(DEFAULT_ADMIN_LISTEN),
            simulator_listen: addr(DEFAULT_SIMULATOR_LISTEN),
            simulator_instances: 1,
            listen_threads: cores(),
            users: None,
            public_url: None,
            sim_tokens_per_second: 50.0,
            sim_max_concurrent: 8,
            max_in_flight: 64,
            max_queue_per_tenant: 1_000,
            queue_timeout_secs: 60,
            shutdown_grace_secs: 10,
            admin_token: None,
            key_secret: None,
            clock: system_clock(),
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("ServerConfig")
            .field("data_dir", &self.data_dir)
            .field("memory", &self.memory)
            .field("redis", &self.redis.as_ref().map(|_| "<url>"))
            .field("control_plane", &self.control_plane)
            .field("project_id", &self.project_id)
            .field(
                "project_key",
                &self.project_key.as_ref().map(|_| "<secret>"),
            )
            .field("sled_cache_mb", &self.sled_cache_mb)
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("simulator_listen", &self.simulator_listen)
            .field("simulator_instances", &self.simulator_instances)
            .field("listen_threads", &self.listen_threads)
            .field("users", &self.users)
            .field("public_url", &self.public_url)
            .field("sim_tokens_per_second", &self.sim_tokens_per_second)
            .field("sim_max_concurrent", &self.sim_max_concurrent)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_queue_per_tenant", &self.max_queue_per_tenant)
            .field("queue_timeout_secs", &self.queue_timeout_secs)
            .field("shutdown_grace_secs", &self.shutdown_grace_secs)
            .field("admin_token", &secret(&self.admin_token))
            .field("key_secret", &secret(&self.key_secret))
            .field("clock", &self.clock)
            .finish()
    }
}

impl ServerConfig {
    /// Reads a TOML configuration file. Every key is optional; an unknown
    /// key, a value of the wrong type or an unreadable file is a
    /// [`ConfigError`] naming the file (and the line). The values are not
    /// checked here: [`validate`](Self::validate) does (and
    /// [`Server::start`](super::Server::start) calls it).
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        read_toml(CONFIG_FILE, path.as_ref())
    }

    /// Parses a TOML configuration from `text` (as if read from `path`,
    /// which errors name).
    pub fn from_toml_str(text: &str, path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        parse_toml(CONFIG_FILE, path.as_ref(), text)
    }

    /// Checks the values: the simulator on loopback (with 1 to
    /// [`MAX_SIMULATOR_INSTANCES`] instances whose ports fit), positive sizes and
    /// timeouts, an http(s) public URL, an admin token long enough.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        if !self.simulator_listen.ip().is_loopback() {
            return invalid(
                "simulator_listen",
                format!(
                    "{} is not a loopback address (the simulator has no authentication)",
                    self.simulator_listen
                ),
            );
        }
        if !(1..=MAX_SIMULATOR_INSTANCES).contains(&self.simulator_instances) {
            return invalid(
                "simulator_instances",
                format!("must be between 1 and {MAX_SIMULATOR_INSTANCES}"),
            );
        }
        let port = usize::from(self.simulator_listen.port());
        if port != 0 && port + self.simulator_instances - 1 > usize::from(u16::MAX) {
            return invalid(
                "simulator_instances",
                format!(
                    "{} instances from port {port} go past port {}",
                    self.simulator_instances,
                    u16::MAX
                ),
            );
        }
        if self.listen_threads > MAX_LISTEN_THREADS {
            return invalid(
                "listen_threads",
                format!("must be between 0 and {MAX_LISTEN_THREADS}"),
            );
        }
        if !self.sim_tokens_per_second.is_finite() || self.sim_tokens_per_second < 0.0 {
            return invalid(
                "sim_tokens_per_second",
                "must be a finite number, 0 or more".into(),
            );
        }
        if !(1..=MAX_SLED_CACHE_MB).contains(&self.sled_cache_mb) {
            return invalid(
                "sled_cache_mb",
                format!("must be between 1 and {MAX_SLED_CACHE_MB}"),
            );
        }
        if self.sim_max_concurrent == 0 {
            return invalid("sim_max_concurrent", "must be at least 1".into());
        }
        if self.max_in_flight == 0 || self.max_in_flight as u64 > MAX_CAPACITY {
            return invalid(
                "max_in_flight",
                format!("must be between 1 and {MAX_CAPACITY}"),
            );
        }
        if self.max_queue_per_tenant == 0 {
            return invalid("max_queue_per_tenant", "must be at least 1".into());
        }
        if self.queue_timeout_secs == 0 {
            return invalid("queue_timeout_secs", "must be at least 1".into());
        }
        if let Some(url) = &self.public_url {
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            if !scheme_ok || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return invalid(
                    "public_url",
                    format!("{url:?} is not an http:// or https:// URL"),
                );
            }
        }
        if let Some(token) = &self.admin_token {
            check_admin_token(token).map_err(|reason| ConfigError::Invalid {
                key: "admin_token",
                reason,
            })?;
        }
        if self.key_secret.as_deref().is_some_and(str::is_empty) {
            return invalid("key_secret", "must not be empty".into());
        }
        if let Some(url) = &self.control_plane {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return invalid(
                    "control_plane",
                    "must be the control plane's admin listener, an http:// or https:// URL".into(),
                );
            }
            if self.project_id.is_none() || self.project_key.is_none() {
                return invalid(
                    "control_plane",
                    "needs project_id and MAAS_PROJECT_KEY (a data-plane:connect key of that project)"
                        .into(),
                );
            }
            if self.redis.is_some() {
                return invalid("control_plane", "cannot be used with redis yet".into());
            }
        }
        if let Some(url) = &self.redis {
            let schemes = ["redis://", "rediss://", "redis+unix://", "unix://"];
            if !schemes.iter().any(|s| url.starts_with(s)) {
                return invalid(
                    "redis",
                    "must be a redis://, rediss:// or redis+unix:// URL".into(),
                );
            }
            if self.memory {
                return invalid("redis", "cannot be used with memory".into());
            }
            if self.admin_token.is_none() || self.key_secret.is_none() {
                return invalid(
                    "redis",
                    "needs MAAS_ADMIN_TOKEN and MAAS_KEY_SECRET: replicas must share both, \
                     and they stay outside the store"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

/// Why an admin token is not acceptable, if it is not.
pub(crate) fn check_admin_token(token: &str) -> Result<(), String> {
    if token.chars().count() < MIN_ADMIN_TOKEN {
        return Err(format!("must be at least {MIN_ADMIN_TOKEN} characters"));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".into());
    }
    Ok(())
}

const CONFIG_FILE: &str = "config file";
const USERS_FILE: &str = "users file";

/// A configuration problem, as one line: the file (and line) or the key at
/// fault, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {what} {}: {reason}", path.display())]
    Read {
        /// Which file (`config file`, `users file`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What the system said.
        reason: String,
    },
    /// A file is not valid TOML, or not of the expected shape.
    #[error("{what} {}{}: {message}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Parse {
        /// Which file (`config file`, `users file`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The line at fault, when known.
        line: Option<usize>,
        /// What is wrong, on one line (e.g. ``unknown key `lisen` ``).
        message: String,
    },
    /// A setting has a value out of range.
    #[error("invalid setting `{key}`: {reason}")]
    Invalid {
        /// The setting (the configuration key).
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The users file is well-formed but not usable.
    #[error("users file {}: {reason}", path.display())]
    Users {
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// What the system said about an I/O error, without the `(os error n)`.
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::NotFound => "no such file or directory".into(),
        ErrorKind::PermissionDenied => "permission denied".into(),
        ErrorKind::AddrInUse => "address already in use".into(),
        ErrorKind::AddrNotAvailable => "address not available on this machine".into(),
        ErrorKind::AlreadyExists => "already exists".into(),
        _ => {
            let s = e.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_owned(),
                None => s,
            }
        }
    }
}

fn read_toml<T: DeserializeOwned>(what: &'static str, path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        what,
        path: path.to_path_buf(),
        reason: io_reason(&e),
    })?;
    parse_toml(what, path, &text)
}

fn parse_toml<T: DeserializeOwned>(
    what: &'static str,
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .and_then(|s| text.get(..s.start))
            .map(|before| before.matches('\n').count() + 1);
        ConfigError::Parse {
            what,
            path: path.to_path_buf(),
            line,
            message: one_line(e.message()),
        }
    })
}

/// toml's message on one line, in the words of a configuration file.
fn one_line(message: &str) -> String {
    let flat = message.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.strip_prefix("unknown field") {
        Some(rest) => format!("unknown key{rest}"),
        None => flat,
    }
}

/// The users file: development identities behind static tokens.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<UserEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    token: String,
    user: String,
    #[serde(default)]
    groups: Vec<String>,
}

/// Reads the users file at `path`: each token with its identity. An empty
/// token or user, or a token given twice, is an error.
pub(crate) fn read_users(path: &Path) -> Result<Vec<(String, Identity)>, ConfigError> {
    let file: UsersFile = read_toml(USERS_FILE, path)?;
    let bad = |reason: String| ConfigError::Users {
        path: path.to_path_buf(),
        reason,
    };
    let mut out: Vec<(String, Identity)> = Vec::with_capacity(file.users.len());
    for (i, u) in file.users.into_iter().enumerate() {
        let n = i + 1;
        if u.user.trim().is_empty() {
            return Err(bad(format!("user {n} has an empty `user`")));
        }
        if u.token.trim().is_empty() {
            return Err(bad(format!("user `{}` has an empty `token`", u.user)));
        }
        if let Some((_, other)) = out.iter().find(|(t, _)| *t == u.token) {
            return Err(bad(format!(
                "users `{}` and `{}` have the same token",
                other.user, u.user
            )));
        }
        out.push((u.token, Identity::new(u.user, u.groups)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        let c = ServerConfig::from_toml_str("", "x.toml").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(c.simulator_listen.to_string(), DEFAULT_SIMULATOR_LISTEN);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.max_in_flight, 64);
        assert_eq!(c.simulator_instances, 1);
        assert_eq!(c.listen_threads, cores());
        assert!(c.listen_threads >= 1);
        c.validate().unwrap();
    }

    #[test]
    fn every_key_is_read() {
        let c = ServerConfig::from_toml_str(
            r#"
            data_dir = "/tmp/d"
            memory = true
            sled_cache_mb = 7
            listen = "0.0.0.0:1"
            admin_listen = "127.0.0.1:2"
            simulator_listen = "127.0.0.1:3"
            simulator_instances = 4
            listen_threads = 3
            users = "u.toml"
            public_url = "https://maas.example"
            sim_tokens_per_second = 0
            sim_max_concurrent = 2
            max_in_flight = 3
            max_queue_per_tenant = 4
            queue_timeout_secs = 5
            shutdown_grace_secs = 6
            "#,
            "x.toml",
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/tmp/d"));
        assert!(c.memory);
        assert_eq!(c.sled_cache_mb, 7);
        assert_eq!(c.listen.to_string(), "0.0.0.0:1");
        assert_eq!(c.admin_listen.port(), 2);
        assert_eq!(c.simulator_listen.port(), 3);
        assert_eq!(c.simulator_instances, 4);
        assert_eq!(c.listen_threads, 3);
        assert_eq!(c.users, Some(PathBuf::from("u.toml")));
        assert_eq!(c.public_url.as_deref(), Some("https://maas.example"));
        assert_eq!(c.sim_tokens_per_second, 0.0);
        assert_eq!(
            (
                c.sim_max_concurrent,
                c.max_in_flight,
                c.max_queue_per_tenant,
                c.queue_timeout_secs,
                c.shutdown_grace_secs
            ),
            (2, 3, 4, 5, 6)
        );
        c.validate().unwrap();
    }

    #[test]
    fn a_value_of_the_wrong_type_is_one_line() {
        let e = ServerConfig::from_toml_str("memory = true\nmax_in_flight = \"many\"\n", "m.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config file m.toml, line 2: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn an_unknown_key_names_the_key_and_the_line() {
        let e = ServerConfig::from_toml_str("memory = true\nlisen = \"x\"\n", "maas.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config file maas.toml, line 2: unknown key `lisen`"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn secrets_are_not_read_from_the_file() {
        let e = ServerConfig::from_toml_str("admin_token = \"0123456789abcdefg\"\n", "m.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key `admin_token`"), "{e}");
    }

    #[test]
    fn values_are_checked() {
        let mut c = ServerConfig {
            simulator_listen: "0.0.0.0:8081".parse().unwrap(),
            ..ServerConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("simulator_listen")
        );
        c.simulator_listen = "127.0.0.1:0".parse().unwrap();
        c.admin_token = Some("short".into());
        let e = c.validate().unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid setting `admin_token`: must be at least 16 characters"
        );
        c.admin_token = None;
        c.max_in_flight = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_in_flight")
        );
        c.max_in_flight = 1;
        for bad in [0, MAX_SLED_CACHE_MB + 1] {
            c.sled_cache_mb = bad;
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("sled_cache_mb") && e.contains("1048576"), "{e}");
        }
        c.sled_cache_mb = DEFAULT_SLED_CACHE_MB;
        c.public_url = Some("ftp://x".into());
        assert!(c.validate().unwrap_err().to_string().contains("public_url"));
    }

    #[test]
    fn listen_threads_are_bounded() {
        for n in [0, 1, MAX_LISTEN_THREADS] {
            let c = ServerConfig {
                listen_threads: n,
                ..ServerConfig::default()
            };
            c.validate().unwrap();
        }
        let c = ServerConfig {
            listen_threads: MAX_LISTEN_THREADS + 1,
            ..ServerConfig::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid setting `listen_threads`: must be between 0 and 256"
        );
        let e = ServerConfig::from_toml_str("\nlisten_threads = -1\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "config file x.toml, line 2: invalid value: integer `-1`, expected usize"
        );
    }

    #[test]
    fn simulator_instances_are_bounded_and_their_ports_fit() {
        let with = |n: usize, port: u16| ServerConfig {
            simulator_instances: n,
            simulator_listen: SocketAddr::from(([127, 0, 0, 1], port)),
            ..ServerConfig::default()
        };
        for n in [1, 3, MAX_SIMULATOR_INSTANCES] {
            with(n, 8081).validate().unwrap();
            with(n, 0).validate().unwrap();
        }
        for n in [0, MAX_SIMULATOR_INSTANCES + 1] {
            let e = with(n, 8081).validate().unwrap_err().to_string();
            assert_eq!(
                e,
                "invalid setting `simulator_instances`: must be between 1 and 16"
            );
        }
        with(2, u16::MAX - 1).validate().unwrap();
        let e = with(3, u16::MAX - 1).validate().unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid setting `simulator_instances`: 3 instances from port 65534 go past port 65535"
        );
        // Parsed from the file; a value of the wrong type names its line.
        let c = ServerConfig::from_toml_str("simulator_instances = 16\n", "x.toml").unwrap();
        assert_eq!(c.simulator_instances, 16);
        let e = ServerConfig::from_toml_str("\nsimulator_instances = -1\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config file x.toml, line 2: "), "{e}");
        let e = ServerConfig::from_toml_str("simulator_instances = \"3\"\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config file x.toml, line 1: "), "{e}");
    }

    #[test]
    fn the_debug_form_hides_the_secrets() {
        let c = ServerConfig {
            admin_token: Some("do-not-print-this-token".into()),
            key_secret: Some("nor-this-one".into()),
            ..ServerConfig::default()
        };
        let d = format!("{c:?}");
        assert!(
            !d.contains("do-not-print") && !d.contains("nor-this"),
            "{d}"
        );
    }

    #[test]
    fn the_example_users_file_reads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/users.toml");
        let users = read_users(&path).unwrap();
        let groups = |u: &str| {
            users
                .iter()
                .find(|(_, i)| i.user == u)
                .map(|(_, i)| i.groups.clone())
                .unwrap()
        };
        assert_eq!(groups("free-user"), ["system:authenticated"]);
        assert!(groups("premium-user").contains(&"premium-users".to_owned()));
        assert!(groups("enterprise-user").contains(&"enterprise-users".to_owned()));
    }

    #[test]
    fn a_users_file_with_a_repeated_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.toml");
        std::fs::write(
            &path,
            "[[users]]\ntoken = \"t\"\nuser = \"a\"\n[[users]]\ntoken = \"t\"\nuser = \"b\"\n",
        )
        .unwrap();
        let e = read_users(&path).unwrap_err().to_string();
        assert!(e.ends_with("users `a` and `b` have the same token"), "{e}");
    }
}
