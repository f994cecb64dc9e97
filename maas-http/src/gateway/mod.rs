//! The OpenAI-compatible inference gateway (work in progress: routes land in
//! the next commit).

use std::time::Duration;

use axum::Router;
use maas_core::Gateway;

use crate::common::HttpConfig;

/// Settings of the gateway router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Body limit and the like.
    pub http: HttpConfig,
    /// The longest an upstream may take to answer (whole response); past it
    /// the client gets 504. Default 300 s.
    pub upstream_timeout: Duration,
    /// The longest connecting to an upstream may take. Default 5 s.
    pub connect_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            http: HttpConfig::default(),
            upstream_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The gateway's routes over `gateway`.
pub fn router(gateway: Gateway, config: GatewayConfig) -> Router {
    let _ = (gateway, config);
    Router::new()
}
