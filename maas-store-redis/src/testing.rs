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
    cluster: bool,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one without persistence and waits until it answers (at most
    /// 10 s).
    pub async fn start() -> Self {
        Self::start_with(false, false).await
    }

    /// Starts a Redis Cluster of one node that serves all 16384 slots:
    /// like a real cluster, it refuses a script or pipeline whose keys are
    /// in different slots (`CROSSSLOT`), so a store that passes its tests
    /// on it lays its keys out for a cluster.
    pub async fn start_cluster() -> Self {
        Self::start_with(false, true).await
    }

    /// Starts one that keeps everything it answered in an append-only file
    /// synced on every write (`appendfsync always`), so [`Self::stop`] and
    /// [`Self::restart`] keep the data.
    pub async fn start_persistent() -> Self {
        Self::start_with(true, false).await
    }

    async fn start_with(persistent: bool, cluster: bool) -> Self {
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
            cluster,
            dir,
        };
        s.restart().await;
        if cluster {
            s.assign_all_slots().await;
        }
        s
    }

    /// Gives this one-node cluster every slot and waits until it says
    /// `cluster_state:ok` (at most 10 s).
    async fn assign_all_slots(&self) {
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(0)
            .arg(16383)
            .query_async::<()>(&mut con)
            .await
            .unwrap();
        let started = Instant::now();
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut con)
                .await
                .unwrap();
            if info.contains("cluster_state:ok") {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the one-node cluster did not come up: {info}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
        let cluster: &[&str] = if self.cluster {
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]
        } else {
            &[]
        };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(aof)
            .args(cluster)
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
    URL.get_or_init(|| shared(false))
}

/// Like [`shared_url`], a one-node Redis Cluster serving every slot (see
/// [`RedisServer::start_cluster`]).
pub fn shared_cluster_url() -> &'static str {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| shared(true))
}

fn shared(cluster: bool) -> String {
    {
        ensure_installed();
        let kind = if cluster { "cluster" } else { "redis" };
        let dir = std::env::temp_dir().join(format!("maas-{kind}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = format!(
            "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no {flags} --dir '{}' & \
             rs=$!; while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill $rs; rm -rf '{}'",
            dir.display(),
            dir.display(),
            parent = std::process::id(),
            flags = if cluster {
                "--cluster-enabled yes --cluster-config-file nodes.conf"
            } else {
                ""
            },
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
        if cluster {
            let mut con = redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .unwrap();
            redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(0)
                .arg(16383)
                .query::<()>(&mut con)
                .unwrap();
            while !redis::cmd("CLUSTER")
                .arg("INFO")
                .query::<String>(&mut con)
                .unwrap()
                .contains("cluster_state:ok")
            {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the one-node cluster on port {port} did not come up"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        url
    }
}
