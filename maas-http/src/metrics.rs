//! Gateway metrics, through the `metrics` facade: whatever recorder the
//! embedder installs receives them. [`prometheus`] installs a Prometheus
//! recorder (once per process) and [`router`] serves its text at
//! `GET /metrics` (the example server mounts it on the admin listener,
//! behind the admin token).
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `maas_requests_total` | counter | `model`, `status` |
//! | `maas_key_verifications_total` | counter | `code` |
//! | `maas_admission_wait_seconds` | histogram | |
//! | `maas_in_flight` | gauge | |
//! | `maas_queued` | gauge | |
//! | `maas_tokens_total` | counter | `model`, `direction` (`in`, `out`) |
//! | `maas_upstream_latency_seconds` | histogram | `model`, `upstream` |
//! | `maas_upstream_retries_total` | counter | `model` |
//! | `maas_upstream_requests_total` | counter | `model`, `upstream` |
//! | `maas_upstream_errors_total` | counter | `model`, `upstream` |
//! | `maas_upstream_ejections_total` | counter | `model`, `upstream` |
//! | `maas_upstream_in_flight` | gauge | `model`, `upstream` |
//! | `maas_upstream_healthy` | gauge (1 healthy, 0 ejected or half-open) | `model`, `upstream` |
//!
//! The per-upstream series but latency and retries are read from the
//! gateway's pools ([`observe_upstreams`]) when `/metrics` is rendered (or
//! by [`publish_upstreams`]), so the request path pays nothing for them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Inference requests answered, by model and HTTP status.
pub const REQUESTS: &str = "maas_requests_total";
/// API-key verifications, by code (`VALID`, `NOT_FOUND`, ...).
pub const VERIFICATIONS: &str = "maas_key_verifications_total";
/// Time waited for a fair-share slot, in seconds.
pub const ADMISSION_WAIT: &str = "maas_admission_wait_seconds";
/// Requests holding a fair-share slot.
pub const IN_FLIGHT: &str = "maas_in_flight";
/// Requests waiting for a fair-share slot.
pub const QUEUED: &str = "maas_queued";
/// Tokens, by model and direction (`in`: prompt, `out`: completion).
pub const TOKENS: &str = "maas_tokens_total";
/// Time from forwarding a request upstream to its response head, in seconds.
pub const UPSTREAM_LATENCY: &str = "maas_upstream_latency_seconds";
/// Requests sent a second time, to another upstream, after the first failed.
pub const UPSTREAM_RETRIES: &str = "maas_upstream_retries_total";
/// Attempts sent to an upstream.
pub const UPSTREAM_REQUESTS: &str = "maas_upstream_requests_total";
/// Attempts on an upstream that failed (unreachable, 5xx, timeout).
pub const UPSTREAM_ERRORS: &str = "maas_upstream_errors_total";
/// Times an upstream was ejected after failing.
pub const UPSTREAM_EJECTIONS: &str = "maas_upstream_ejections_total";
/// Requests on an upstream now.
pub const UPSTREAM_IN_FLIGHT: &str = "maas_upstream_in_flight";
/// 1 while an upstream is healthy, 0 while ejected or half-open.
pub const UPSTREAM_HEALTHY: &str = "maas_upstream_healthy";
/// Gauge: on a data plane, 1 while registered with its control plane.
pub const DATA_PLANE_CONNECTED: &str = "maas_data_plane_connected";
/// Gauge: on a data plane, the sequence of the artifact in force.
pub const DATA_PLANE_SEQUENCE: &str = "maas_data_plane_artifact_sequence";
/// Gauge: on a data plane, when the artifact in force was applied (unix
/// seconds; its configuration's age is `time() -` this).
pub const DATA_PLANE_APPLIED_AT: &str = "maas_data_plane_artifact_applied_timestamp_seconds";
/// Gauge: on a data plane, usage reports waiting for the control plane's
/// acknowledgement.
pub const DATA_PLANE_REPORTS_WAITING: &str = "maas_data_plane_usage_reports_waiting";

/// Histogram buckets, in seconds: 100 µs to 60 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(REQUESTS, "Inference requests answered, by model and status");
    describe_counter!(VERIFICATIONS, "API-key verifications, by code");
    describe_histogram!(
        ADMISSION_WAIT,
        Unit::Seconds,
        "Time waited for a fair-share slot"
    );
    describe_gauge!(IN_FLIGHT, "Requests holding a fair-share slot");
    describe_gauge!(QUEUED, "Requests waiting for a fair-share slot");
    describe_counter!(TOKENS, "Tokens by model and direction (in, out)");
    describe_histogram!(
        UPSTREAM_LATENCY,
        Unit::Seconds,
        "Time to the upstream's response head"
    );
    describe_counter!(
        UPSTREAM_RETRIES,
        "Requests retried on another upstream after the first failed"
    );
    describe_counter!(UPSTREAM_REQUESTS, "Attempts sent to an upstream");
    describe_counter!(UPSTREAM_ERRORS, "Attempts on an upstream that failed");
    describe_counter!(UPSTREAM_EJECTIONS, "Times an upstream was ejected");
    describe_gauge!(UPSTREAM_IN_FLIGHT, "Requests on an upstream now");
    describe_gauge!(
        UPSTREAM_HEALTHY,
        "1 while an upstream is healthy, 0 while ejected or half-open"
    );
    describe_gauge!(
        DATA_PLANE_CONNECTED,
        "On a data plane: 1 while registered with its control plane"
    );
    describe_gauge!(
        DATA_PLANE_SEQUENCE,
        "On a data plane: the sequence of the artifact in force"
    );
    describe_gauge!(
        DATA_PLANE_APPLIED_AT,
        Unit::Seconds,
        "On a data plane: when the artifact in force was applied (unix time)"
    );
    describe_gauge!(
        DATA_PLANE_REPORTS_WAITING,
        "On a data plane: usage reports waiting for the control plane's acknowledgement"
    );
}

/// The request path's labelled series, their handles resolved once per
/// model (and status, upstream) and kept: a request looks them up under a
/// read lock and builds no label strings. Handles are taken from the
/// recorder installed when a model is first seen: install the recorder
/// before the first request (the example server does it before building
/// its routers). Bounded by the models and statuses served.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meters(Arc<MetersInner>);

#[derive(Debug, Default)]
struct MetersInner {
    models: RwLock<HashMap<Box<str>, Arc<ModelMeters>, foldhash::fast::RandomState>>,
    load: OnceLock<Load>,
}

/// The unlabelled series of the request path.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    in_flight: metrics::Gauge,
    queued: metrics::Gauge,
    wait: Histogram,
}

impl Load {
    /// Sets [`IN_FLIGHT`] and [`QUEUED`].
    pub(crate) fn set(&self, (in_flight, queued): (usize, usize)) {
        self.in_flight.set(in_flight as f64);
        self.queued.set(queued as f64);
    }

    /// Records a wait for a fair-share slot ([`ADMISSION_WAIT`]).
    pub(crate) fn waited(&self, seconds: f64) {
        self.wait.record(seconds);
    }
}

impl Meters {
    /// The unlabelled series.
    pub(crate) fn load(&self) -> &Load {
        self.0.load.get_or_init(|| Load {
            in_flight: metrics::gauge!(IN_FLIGHT),
            queued: metrics::gauge!(QUEUED),
            wait: metrics::histogram!(ADMISSION_WAIT),
        })
    }

    /// The series of `model` (a catalog model, or `""` for requests that
    /// named none).
    pub(crate) fn model(&self, model: &str) -> Arc<ModelMeters> {
        if let Some(m) = self
            .0
            .models
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(model)
        {
            return Arc::clone(m);
        }
        let load = self.load().clone();
        let mut all = self
            .0
            .models
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            all.entry(model.into())
                .or_insert_with(|| Arc::new(ModelMeters::new(model, load))),
        )
    }
}

/// The series of one model.
#[derive(Debug)]
pub(crate) struct ModelMeters {
    model: Arc<str>,
    tokens_in: Counter,
    tokens_out: Counter,
    retries: Counter,
    /// [`REQUESTS`] by status.
    statuses: RwLock<Vec<(u16, Counter)>>,
    /// [`UPSTREAM_LATENCY`] by upstream URL.
    latency: RwLock<Vec<(Box<str>, Histogram)>>,
    /// The unlabelled series.
    pub(crate) load: Load,
    /// The model's id as a header value (`x-maas-served-model`), made once:
    /// a clone shares its bytes.
    pub(crate) served: Option<axum::http::HeaderValue>,
}

impl ModelMeters {
    fn new(model: &str, load: Load) -> Self {
        let model: Arc<str> = model.into();
        let label = || metrics::SharedString::from(Arc::clone(&model));
        ModelMeters {
            tokens_in: metrics::counter!(TOKENS, "model" => label(), "direction" => "in"),
            tokens_out: metrics::counter!(TOKENS, "model" => label(), "direction" => "out"),
            retries: metrics::counter!(UPSTREAM_RETRIES, "model" => label()),
            statuses: RwLock::default(),
            latency: RwLock::default(),
            load,
            served: axum::http::HeaderValue::from_str(&model).ok(),
            model,
        }
    }

    /// Counts an answer with `status` ([`REQUESTS`]).
    pub(crate) fn answered(&self, status: u16) {
        let found = self
            .statuses
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, c)| c.clone());
        let counter = found.unwrap_or_else(|| {
            let mut all = self
                .statuses
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some((_, c)) = all.iter().find(|(s, _)| *s == status) {
                return c.clone();
            }
            let c = metrics::counter!(
                REQUESTS,
                "model" => metrics::SharedString::from(Arc::clone(&self.model)),
                "status" => status.to_string()
            );
            all.push((status, c.clone()));
            c
        });
        counter.increment(1);
    }

    /// Adds the tokens of an answer ([`TOKENS`]).
    pub(crate) fn tokens(&self, input: u64, output: u64) {
        self.tokens_in.increment(input);
        self.tokens_out.increment(output);
    }

    /// Counts a retry on another upstream ([`UPSTREAM_RETRIES`]).
    pub(crate) fn retried(&self) {
        self.retries.increment(1);
    }

    /// Records the time `upstream` took to its response head
    /// ([`UPSTREAM_LATENCY`]).
    pub(crate) fn upstream_latency(&self, upstream: &str, seconds: f64) {
        let found = self
            .latency
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(u, _)| &**u == upstream)
            .map(|(_, h)| h.clone());
        let histogram = found.unwrap_or_else(|| {
            let mut all = self.latency.write().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, h)) = all.iter().find(|(u, _)| &**u == upstream) {
                return h.clone();
            }
            let h = metrics::histogram!(
                UPSTREAM_LATENCY,
                "model" => metrics::SharedString::from(Arc::clone(&self.model)),
                "upstream" => upstream.to_owned()
            );
            all.push((upstream.into(), h.clone()));
            h
        });
        histogram.record(seconds);
    }
}

/// Counts every verification of `keys` in [`VERIFICATIONS`] by code (the
/// gateway's API keys and the Unkey API's `keys.verifyKey` alike).
pub fn observe_verifications(keys: &maas_core::KeyService) -> maas_core::Result<()> {
    keys.observe_verifications(std::sync::Arc::new(|code: maas_core::VerifyCode| {
        metrics::counter!(VERIFICATIONS, "code" => code.as_str()).increment(1);
    }))
}

/// Pools published at each render of `/metrics`.
static OBSERVED: Mutex<Vec<maas_core::upstream::WeakUpstreams>> = Mutex::new(Vec::new());

/// Publishes the per-upstream series of `upstreams` whenever `/metrics` is
/// rendered (the gateway router calls it for its gateway).
pub fn observe_upstreams(upstreams: &maas_core::Upstreams) {
    let weak = upstreams.downgrade();
    let mut observed = OBSERVED.lock().unwrap_or_else(PoisonError::into_inner);
    observed.retain(|u| u.upgrade().is_some());
    if !observed.iter().any(|u| u.same(&weak)) {
        observed.push(weak);
    }
}

/// Sets the per-upstream series (requests, errors, ejections, in flight,
/// healthy) from `upstreams` now, in whatever recorder is installed (call
/// it before an embedder's own recorder exports).
pub fn publish_upstreams(upstreams: &maas_core::Upstreams) {
    use maas_core::upstream::HealthState;
    for pool in upstreams.snapshot() {
        for u in pool.upstreams {
            let labels = [("model", pool.model.clone()), ("upstream", u.url)];
            metrics::counter!(UPSTREAM_REQUESTS, &labels).absolute(u.requests);
            metrics::counter!(UPSTREAM_ERRORS, &labels).absolute(u.errors);
            metrics::counter!(UPSTREAM_EJECTIONS, &labels).absolute(u.ejections);
            metrics::gauge!(UPSTREAM_IN_FLIGHT, &labels).set(f64::from(u.in_flight));
            let healthy = if u.state == HealthState::Healthy {
                1.0
            } else {
                0.0
            };
            metrics::gauge!(UPSTREAM_HEALTHY, &labels).set(healthy);
        }
    }
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus recorder, installed on first call as the global
/// `metrics` recorder. `None` when another recorder was installed first (the
/// embedder's own: metrics go there).
pub fn prometheus() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

/// `GET /metrics`: the Prometheus text of [`prometheus`]'s recorder (503
/// when another recorder is installed).
pub fn router() -> Router {
    Router::new().route("/metrics", get(render))
}

async fn render() -> Response {
    let observed: Vec<maas_core::Upstreams> = OBSERVED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter_map(maas_core::upstream::WeakUpstreams::upgrade)
        .collect();
    observed.iter().for_each(publish_upstreams);
    match prometheus() {
        Some(h) => (
            [(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            )],
            h.render(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics go to another recorder",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The kept handles count into the series a request used to build its
    /// labels for: per model, status, direction and upstream.
    #[test]
    fn kept_handles_count_into_their_series() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let meters = Meters::default();
            for status in [200, 200, 429] {
                meters.model("m").answered(status);
            }
            meters.model("").answered(401);
            let m = meters.model("m");
            assert!(Arc::ptr_eq(&m, &meters.model("m")), "resolved once");
            m.tokens(3, 5);
            m.tokens(1, 2);
            m.retried();
            m.upstream_latency("http://a", 0.25);
            m.upstream_latency("http://b", 0.5);
            m.upstream_latency("http://a", 0.75);
            meters.load().set((3, 2));
            m.load.set((1, 0));
            meters.load().waited(0.5);
        });
        let text = handle.render();
        for line in [
            r#"maas_requests_total{model="m",status="200"} 2"#,
            r#"maas_requests_total{model="m",status="429"} 1"#,
            r#"maas_requests_total{model="",status="401"} 1"#,
            r#"maas_tokens_total{model="m",direction="in"} 4"#,
            r#"maas_tokens_total{model="m",direction="out"} 7"#,
            r#"maas_upstream_retries_total{model="m"} 1"#,
            r#"maas_upstream_latency_seconds_count{model="m",upstream="http://a"} 2"#,
            r#"maas_upstream_latency_seconds_count{model="m",upstream="http://b"} 1"#,
            "maas_in_flight 1",
            "maas_queued 0",
            "maas_admission_wait_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
