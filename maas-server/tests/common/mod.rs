//! What the loopback tests of the example server share: a memory-backed
//! configuration on ephemeral ports with the example users, and reading an
//! OpenAI model list.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use maas_core::ManualClock;
use maas_server::ServerConfig;
use serde_json::Value;

/// A loopback address on a port the system picks.
pub(crate) fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The example users (static identity tokens of free, premium and
/// enterprise users).
pub(crate) fn users_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/users.toml")
}

/// A memory-backed server on ephemeral loopback ports, with the example
/// users and `clock`.
pub(crate) fn config_on(clock: Arc<ManualClock>) -> ServerConfig {
    ServerConfig {
        memory: true,
        listen: any_port(),
        admin_listen: any_port(),
        simulator_listen: any_port(),
        users: Some(users_file()),
        shutdown_grace_secs: 5,
        clock,
        ..ServerConfig::default()
    }
}

/// The model ids of an OpenAI model list (`/v1/models`), sorted.
pub(crate) fn model_ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}
