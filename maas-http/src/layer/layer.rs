//! [`MaasLayer`]: wraps an inference service in the gateway's per-request
//! path.

use maas_core::Gateway;
use tower::Layer;

use super::service::MaasService;
use crate::metrics::Meters;

/// The default limit of inference request bodies: 8 MiB (long contexts).
pub const DEFAULT_BODY_LIMIT: usize = 8 << 20;

/// Settings of [`MaasLayer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerConfig {
    /// The largest request body read, in bytes; larger ones get 413.
    pub body_limit: usize,
}

impl Default for LayerConfig {
    fn default() -> Self {
        LayerConfig {
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }
}

/// A tower layer putting maas in front of an OpenAI-compatible inference
/// service (see the [module](super) docs for what each request goes
/// through).
#[derive(Debug, Clone)]
pub struct MaasLayer {
    gateway: Gateway,
    config: LayerConfig,
    meters: Meters,
}

impl MaasLayer {
    /// The layer over `gateway`, with default settings. Its metrics'
    /// handles are taken from the recorder installed at each model's first
    /// request: install yours before serving.
    pub fn new(gateway: Gateway) -> Self {
        MaasLayer {
            gateway,
            config: LayerConfig::default(),
            meters: Meters::default(),
        }
    }

    /// The layer counting into `meters` (shared with the router's upstream
    /// call, one set of handles).
    pub(crate) fn with_meters(mut self, meters: Meters) -> Self {
        self.meters = meters;
        self
    }

    /// The layer with `config`.
    pub fn with_config(mut self, config: LayerConfig) -> Self {
        self.config = config;
        self
    }
}

impl<S> Layer<S> for MaasLayer {
    type Service = MaasService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MaasService::new(
            inner,
            self.gateway.clone(),
            self.config,
            self.meters.clone(),
        )
    }
}
