//! Test support (feature `testing`): a `redis-server` of the test's own —
//! a free loopback port, a temporary directory, no persistence — stopped
//! when dropped, or one shared by a test process ([`shared_url`]). The
//! binary is installed with apt-get when it is missing (Debian's
//! `redis-server`), so `cargo test` alone passes on a fresh machine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

static INSTALL: Once = Once::new();

fn installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure `redis-server` is on the PATH, installing it if it is not.
fn ensure_installed() {
    INSTALL.call_once(|| {
        if installed() {
            return;
        }
        let quiet = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let ok = quiet(&["install", "-y", "-qq", "redis-server"])
            || (quiet(&["update", "-qq"]) && quiet(&["install", "-y", "-qq", "redis-server"]));
        assert!(
            ok && installed(),
            "the Redis tests need redis-server and could not install it \
             (apt-get install redis-server)"
        );
    });
}

/// A running `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    /// `redis://127.0.0.1:{port}/`.
    pub url: String,
    port: u16,
    persistent: bool,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one without persistence and waits until it answers (at most
    /// 10 s).
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// Starts one that keeps everything it answered in an append-only file
    /// synced on every write (`appendfsync always`), so [`Self::stop`] and
    /// [`Self::restart`] keep the data.
    pub async fn start_persistent() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(persistent: bool) -> Self {
        ensure_installed();
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = RedisServer {
            child: None,
            url: format!("redis://127.0.0.1:{port}/"),
            port,
            persistent,
            dir,
        };
        s.restart().await;
        s
    }

    /// Stops the server (SIGKILL: what it answered is in its append-only
    /// file if it is persistent).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again, on the same port and directory, and waits
    /// until it answers.
    pub async fn restart(&mut self) {
        self.stop();
        let aof: &[&str] = if self.persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(aof)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let (url, port) = (self.url.clone(), self.port);
        let started = Instant::now();
        loop {
            if let Ok(client) = redis::Client::open(url.as_str())
                && let Ok(mut con) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut con)
                    .await
                    .is_ok()
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not answer on port {port}"
            );
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The URL of one `redis-server` shared by every test of this process,
/// started on first use; it stops when the test process ends (a shell
/// beside it watches the parent), since statics are never dropped.
pub fn shared_url() -> &'static str {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        ensure_installed();
        let dir = std::env::temp_dir().join(format!("maas-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = format!(
            "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no --dir '{}' & \
             rs=$!; while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill $rs; rm -rf '{}'",
            dir.display(),
            dir.display(),
            parent = std::process::id()
        );
        // Never waited for: it outlives every test and ends after the
        // process (the loop above); the OS reaps it then.
        #[allow(clippy::zombie_processes)]
        let _watcher = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh starts redis-server");
        let url = format!("redis://127.0.0.1:{port}/");
        let started = Instant::now();
        loop {
            let ping = redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ping.is_ok() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        url
    })
}
