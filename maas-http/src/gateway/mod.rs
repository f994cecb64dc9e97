//! The OpenAI-compatible inference gateway: [`router`] serves
//!
//! | route | model from |
//! |---|---|
//! | `POST /v1/chat/completions` | the body's `model` |
//! | `POST /v1/completions` | the body's `model` |
//! | `POST /{model}/v1/chat/completions` | the path (the `url` `/v1/models` lists) |
//! | `POST /{model}/v1/completions` | the path |
//! | `POST /v1/embeddings` | the body's `model` |
//! | `POST /{model}/v1/embeddings` | the path |
//! | `POST /v1/messages` (Anthropic) | the body's `model` |
//! | `POST /{model}/v1/messages` | the path |
//! | `POST /v1/messages/count_tokens` | the body's `model` (nothing forwarded) |
//! | `POST /v1/responses` (OpenAI's Responses API) | the body's `model` |
//! | `POST /{model}/v1/responses` | the path |
//!
//! behind [`MaasLayer`] (authentication, tier, model access, limits,
//! response cache, fair share, fallbacks, usage: see [`crate::layer`]),
//! forwarding to an upstream of the model's pool (picked by
//! [`maas_core::upstream`]: weighted least outstanding requests, passive
//! health) + the same path (`/v1/chat/completions`, `/v1/completions` or
//! `/v1/embeddings`) with a pooled HTTP client and streaming the answer
//! back. An attempt that fails before anything reached the client (the
//! upstream cannot be reached, answers 5xx, or does not answer within
//! [`GatewayConfig::upstream_timeout`]) is retried once on another
//! upstream of the pool, within the pool's retry budget; when none could
//! answer, the client gets 502 `upstream_error` (or 504 `upstream_timeout`),
//! and 503 `upstream_unavailable` while every upstream is ejected. 4xx
//! answers (a context too long, ...) are passed on as they are. Either way
//! the slot and the reservation are given back.

use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use maas_core::Gateway;
use maas_core::upstream::{Outcome, Pick};

mod client;
pub(crate) mod messages;

use crate::common::HttpConfig;
use crate::layer::{AdmittedModel, GatewayError, LayerConfig, MaasLayer};
use crate::metrics;
use crate::openai::OpenAiError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Settings of the gateway router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Request body limit (default [`crate::layer::DEFAULT_BODY_LIMIT`]).
    pub http: HttpConfig,
    /// The longest an upstream may take to send its response head, and the
    /// longest it may then pause between two parts of its body; past it the
    /// client gets 504 (or the stream ends). Default 300 s.
    pub upstream_timeout: Duration,
    /// The longest connecting to an upstream may take. Default 5 s.
    pub connect_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            http: HttpConfig {
                body_limit: crate::layer::DEFAULT_BODY_LIMIT,
            },
            upstream_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The inference paths served, each also under `/{model}`.
pub const PATHS: &[&str] = &["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

/// The Responses API's path (also under `/{model}`; a chat-completions
/// upstream serves it, translated: [`crate::responses`]).
pub const RESPONSES_PATH: &str = "/v1/responses";

/// Anthropic's paths served (`/v1/messages` also under `/{model}`).
pub const ANTHROPIC_PATHS: &[&str] = &["/v1/messages", "/v1/messages/count_tokens"];

/// Whether [`router`] serves `path` (a composing server hands these to it).
pub fn serves(path: &str) -> bool {
    path == "/v1/messages/count_tokens"
        || PATHS
            .iter()
            .chain(&ANTHROPIC_PATHS[..1])
            .chain(std::iter::once(&RESPONSES_PATH))
            .any(|p| {
                path == *p
                    || path
                        .strip_suffix(p)
                        .and_then(|m| m.strip_prefix('/'))
                        .is_some_and(|m| !m.is_empty() && !m.contains('/'))
            })
}

/// Forwards admitted requests to their model's upstreams: plain-http
/// upstreams (the usual: a model server on the private network) through
/// a lean pooled client driven in the request's task ([`client`]), as
/// `h2c://` ones (HTTP/2 over cleartext, one shared connection each);
/// `https` ones through reqwest (rustls, the platform's roots).
#[derive(Debug, Clone)]
struct Upstream {
    http: client::Client,
    tls: reqwest::Client,
    timeout: Duration,
    pools: maas_core::Upstreams,
    meters: metrics::Meters,
}

/// Idle keep-alive connections kept per upstream, at most.
const IDLE_PER_UPSTREAM: usize = 512;

/// The gateway's routes over `gateway`, as an axum router ([`service`]
/// under a router's fallback). Its metrics' handles are taken from the
/// recorder installed when a model is first served ([`metrics`]): install
/// yours (or call [`metrics::prometheus`]) before serving.
pub fn router(gateway: Gateway, config: GatewayConfig) -> Router {
    Router::new().fallback_service(service(gateway, config))
}

/// The gateway's routes over `gateway` as one tower service, the same as
/// [`router`] without axum's router around it (which costs every request
/// its routing: path parameters, boxed services cloned): for a server
/// that hands the gateway's paths ([`serves`]) to it itself, as the
/// example server does. Metrics as [`router`]'s.
pub fn service(gateway: Gateway, config: GatewayConfig) -> GatewayService {
    let http = client::Client::new(config.connect_timeout, IDLE_PER_UPSTREAM);
    // Pooled keep-alive connections per upstream; no proxy from the
    // environment (upstreams are usually on a private network).
    let tls = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(config.connect_timeout)
        .read_timeout(config.upstream_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
        .unwrap_or_else(|e| {
            // Only a TLS backend that cannot start fails here.
            tracing::error!(error = %e, "upstream client settings refused; using defaults");
            reqwest::Client::new()
        });
    let meters = metrics::Meters::default();
    let upstream = Upstream {
        http,
        tls,
        timeout: config.upstream_timeout,
        pools: gateway.upstreams().clone(),
        meters: meters.clone(),
    };
    metrics::observe_upstreams(gateway.upstreams());
    let layer = MaasLayer::new(gateway.clone())
        .with_config(LayerConfig {
            body_limit: config.http.body_limit,
        })
        .with_meters(meters);
    let mut app = Router::new();
    for path in PATHS {
        app = app
            .route(path, post(forward))
            .route(&format!("/{{model}}{path}"), post(forward));
    }
    let anthropic = messages::routes(post(forward), layer.clone(), gateway, upstream.clone());
    let responses = messages::responses_routes(post(forward), layer.clone(), upstream.clone());
    let rest = app
        .with_state(upstream.clone())
        .route_layer(layer.clone())
        .merge(anthropic)
        .merge(responses)
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(config.http.body_limit));
    let hot = tower::Layer::layer(&layer, Forward(upstream)).models_in_path();
    let trace = tower_http::trace::TraceLayer::new_for_http();
    GatewayService {
        hot: crate::common::RequestIdService::header_only(tower::Layer::layer(&trace, hot)),
        rest: tower::Layer::layer(
            &crate::common::RequestIdLayer,
            tower::Layer::layer(&trace, rest),
        ),
    }
}

/// The upstream call as a plain tower service (what `post(forward)` is on
/// the router's routes).
#[derive(Debug, Clone)]
struct Forward(Upstream);

impl tower::Service<Request> for Forward {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let up = self.0.clone();
        Box::pin(async move { Ok(forward(State(up), req).await) })
    }
}

/// Whether `path` is one of [`PATHS`], bare or under `/{model}` (one
/// non-empty segment, as axum's `{model}` matches).
fn is_hot(path: &str) -> bool {
    PATHS.iter().any(|p| {
        path == *p
            || path
                .strip_suffix(p)
                .and_then(|m| m.strip_prefix('/'))
                .is_some_and(|m| !m.is_empty() && !m.contains('/'))
    })
}

/// The model of a `/{model}/v1/...` path of the gateway, decoded as axum
/// decodes its path parameters; `None` for a bare path (or a segment that
/// does not decode to UTF-8, which axum's parameters would refuse).
pub(crate) fn model_in_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    let (segment, tail) = rest.split_at(rest.find('/')?);
    if segment.is_empty() || !tail.starts_with("/v1/") {
        return None;
    }
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

/// [`crate::common::with_common_layers`] but the body limit (the layer's
/// own on the hot path, axum's on the rest) around `S`.
type Layered<S> = crate::common::RequestIdService<
    tower_http::trace::Trace<
        S,
        tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    >,
>;

/// The hot path: `POST` on [`PATHS`] (bare or under `/{model}`) straight
/// to the layer over the upstream call, its request id only echoed (axum's
/// router would clone a boxed service per layer and route and insert its
/// path parameters per request).
type Hot = Layered<crate::layer::MaasService<Forward>>;

/// The rest (Anthropic's and the Responses API's paths, 404, and other
/// methods on the hot paths, which the router also has: there the layer
/// answers first, as it always did) through axum's router.
type Rest = Layered<Router>;

/// The gateway as a tower service ([`service`]): `Clone` (cheap: shared
/// state), always ready, never failing (errors are answers).
#[derive(Debug, Clone)]
pub struct GatewayService {
    hot: Hot,
    rest: Rest,
}

/// A response of [`Hot`] or [`Rest`] (the same type) with its body boxed
/// as axum's.
type Boxing = fn(<Rest as tower::Service<Request>>::Response) -> Response;

fn boxed(res: <Rest as tower::Service<Request>>::Response) -> Response {
    res.map(Body::new)
}

pin_project_lite::pin_project! {
    /// The response future of [`GatewayService`].
    pub struct GatewayFuture {
        #[pin]
        inner: futures_util::future::MapOk<
            futures_util::future::Either<
                <Hot as tower::Service<Request>>::Future,
                <Rest as tower::Service<Request>>::Future,
            >,
            Boxing,
        >,
    }
}

impl std::fmt::Debug for GatewayFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayFuture").finish_non_exhaustive()
    }
}

impl std::future::Future for GatewayFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

impl<B> tower::Service<axum::http::Request<B>> for GatewayService
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GatewayFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::http::Request<B>) -> GatewayFuture {
        use futures_util::TryFutureExt as _;
        use futures_util::future::Either;
        let req = req.map(Body::new);
        let inner = if req.method() == axum::http::Method::POST && is_hot(req.uri().path()) {
            Either::Left(self.hot.call(req))
        } else {
            Either::Right(self.rest.call(req))
        };
        GatewayFuture {
            inner: inner.map_ok(boxed as Boxing),
        }
    }
}

async fn not_found(uri: axum::extract::OriginalUri) -> Response {
    OpenAiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("not_found"),
        format!("no route '{}'", crate::common::unrouted_path(&uri)),
    )
    .into_response()
}

fn upstream_error(status: StatusCode, code: &'static str, message: String) -> Response {
    OpenAiError::new(status, "server_error", Some(code), message).into_response()
}

/// Why an attempt on an upstream failed (before anything was passed on).
enum Failure {
    Unreachable(BoxError),
    Status(StatusCode),
    TimedOut,
}

impl Failure {
    /// A client error: a timeout (connecting, or reqwest's read timeout)
    /// or an upstream that could not be reached.
    fn of(e: BoxError) -> Self {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*e);
        while let Some(c) = cause {
            let timed_out = c
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
                || c.downcast_ref::<reqwest::Error>()
                    .is_some_and(reqwest::Error::is_timeout);
            if timed_out {
                return Failure::TimedOut;
            }
            cause = c.source();
        }
        Failure::Unreachable(e)
    }
}

/// The upstream's answer: its head, and its body with how long it may
/// pause between two parts (`None`: the client enforces it, as reqwest
/// does).
type Answer = (axum::http::response::Parts, Body, Option<Duration>);

/// An upstream URL the lean client reaches ([`lean`]).
struct Lean<'a> {
    /// HTTP/2 over cleartext (`h2c://`), else HTTP/1.1.
    h2: bool,
    /// Its `host:port`.
    authority: &'a str,
    /// Its path, without a trailing `/` (empty for none).
    prefix: &'a str,
}

/// How the lean client reaches `url`: plain http or h2c, without
/// credentials in it; `None` for the rest (https, user:password@), which
/// goes through reqwest. Schemes are case-insensitive (the model's URL
/// check lets any case in).
fn lean(url: &str) -> Option<Lean<'_>> {
    let base = url.trim_end_matches('/');
    let after = |scheme: &str| {
        base.get(..scheme.len())
            .filter(|s| s.eq_ignore_ascii_case(scheme))
            .and_then(|_| base.get(scheme.len()..))
    };
    let (h2, rest) = match after("http://") {
        Some(rest) => (false, rest),
        None => (true, after("h2c://")?),
    };
    let (authority, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    (!authority.contains('@')).then_some(Lean {
        h2,
        authority,
        prefix,
    })
}

/// One attempt on the upstream at `url` + `suffix`.
async fn attempt(
    up: &Upstream,
    url: &str,
    suffix: &'static str,
    body: &Bytes,
    accept: Option<&HeaderValue>,
    spare: &mut HeaderMap,
) -> Result<Answer, BoxError> {
    if let Some(Lean {
        h2,
        authority,
        prefix,
    }) = lean(url)
    {
        let path = if prefix.is_empty() {
            Uri::from_static(suffix)
        } else {
            Uri::try_from(format!("{prefix}{suffix}"))?
        };
        let (parts, body) = if h2 {
            // Boxed: its future is larger than the HTTP/1 one by ~700
            // bytes, which every request's boxed future would otherwise
            // carry (and copy), HTTP/1 or not; HTTP/2 allocates per
            // stream anyway.
            Box::pin(up.http.post_h2(authority, path, body, accept, spare)).await?
        } else {
            up.http.post(authority, path, body, accept, spare).await?
        };
        Ok((parts, Body::new(body), Some(up.timeout)))
    } else {
        let base = url.trim_end_matches('/');
        let mut call = up
            .tls
            .post(format!("{base}{suffix}"))
            .header(CONTENT_TYPE, "application/json")
            .body(body.clone());
        if let Some(a) = accept {
            call = call.header(ACCEPT, a.clone());
        }
        let res = axum::http::Response::from(call.send().await?);
        let (parts, body) = res.into_parts();
        Ok((parts, Body::new(body), None))
    }
}

/// The upstream call of an admitted request: an upstream of the model's
/// pool is picked; if it fails before anything reached the client (cannot
/// be reached, 5xx, timeout) and the pool's retry budget allows, the
/// request is sent once more to another upstream. The pick is held until
/// the answer's body ends (it counts as in flight on that upstream).
async fn forward(State(up): State<Upstream>, req: Request) -> Response {
    let Some(AdmittedModel(model)) = req.extensions().get::<AdmittedModel>().cloned() else {
        // Only reachable if the router is assembled without the layer.
        return upstream_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the request was not admitted".into(),
        );
    };
    let suffix = match req.extensions().get::<crate::layer::UpstreamPath>() {
        Some(p) => p.0,
        None => crate::layer::Endpoint::of_path(req.uri().path()).upstream_path(),
    };
    let (parts, body) = req.into_parts();
    let accept = parts.headers.get(ACCEPT).cloned();
    // The request's header map, done with, holds the upstream request's.
    let mut spare = parts.headers;
    // The layer gave us the rewritten body, already in memory.
    let body = match crate::layer::read_whole(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            return OpenAiError::invalid("body", format!("cannot read the body: {e}"))
                .into_response();
        }
    };
    let pool = up.pools.pool(&model);
    let Some(mut pick) = pool.pick() else {
        // Every upstream was ejected since admission looked.
        return no_upstream(&model.id, pool.retry_after().unwrap_or_default());
    };
    let meters = up.meters.model(&model.id);
    let mut retried = false;
    loop {
        let started = Instant::now();
        let sent = tokio::time::timeout(
            up.timeout,
            attempt(&up, pick.url(), suffix, &body, accept.as_ref(), &mut spare),
        )
        .await;
        meters.upstream_latency(pick.url(), started.elapsed().as_secs_f64());
        let failure = match sent {
            Ok(Ok(answer)) if !answer.0.status.is_server_error() => {
                pick.record(Outcome::Answered);
                return pass_on(answer, pick);
            }
            Ok(Ok(answer)) => Failure::Status(answer.0.status),
            Ok(Err(e)) => Failure::of(e),
            Err(_) => {
                // A shared HTTP/2 connection that let a request time out
                // may be stuck (an upstream that stopped reading it): the
                // next request opens another (those on it go on).
                if let Some(Lean {
                    h2: true,
                    authority,
                    ..
                }) = lean(pick.url())
                {
                    up.http.forget_h2(authority);
                }
                Failure::TimedOut
            }
        };
        if let Some(out) = pick.record(Outcome::Failed) {
            tracing::warn!(
                model = %model.id,
                upstream = %out.url,
                seconds = out.length.as_secs(),
                "upstream ejected after failing"
            );
        }
        match &failure {
            Failure::Unreachable(e) => {
                tracing::warn!(model = %model.id, upstream = %pick.url(), error = %e, "upstream failed");
            }
            Failure::Status(status) => {
                tracing::warn!(model = %model.id, upstream = %pick.url(), %status, "upstream answered an error");
            }
            Failure::TimedOut => {
                tracing::warn!(model = %model.id, upstream = %pick.url(), "upstream timed out");
            }
        }
        if !retried && let Some(next) = pool.try_retry(&pick) {
            meters.retried();
            retried = true;
            pick = next;
            continue;
        }
        return match failure {
            Failure::TimedOut => timed_out(&model.id, up.timeout),
            Failure::Unreachable(_) => upstream_error(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("the upstream of model '{}' could not be reached", model.id),
            ),
            Failure::Status(status) => upstream_error(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("the upstream of model '{}' failed ({status})", model.id),
            ),
        };
    }
}

/// Headers of an answer: the upstream's two passed on and the layer's
/// rate-limit headers, without growing the map.
const ANSWER_HEADERS: usize = 16;

/// The upstream's answer, streamed to the client frame by frame as it
/// comes (no copy); `pick` is released when the body ends or the client
/// goes away.
fn pass_on((head, body, idle): Answer, pick: Pick) -> Response {
    let mut headers = HeaderMap::with_capacity(ANSWER_HEADERS);
    let mut upstream = head.headers;
    for h in [CONTENT_TYPE, CACHE_CONTROL] {
        if let Some(v) = upstream.remove(&h) {
            headers.insert(h, v);
        }
    }
    let mut res = Response::new(Body::new(Held::new(body, pick, idle)));
    *res.status_mut() = head.status;
    *res.headers_mut() = headers;
    res
}

pin_project_lite::pin_project! {
    /// An answer's body holding its upstream pick, and ending with an
    /// error when the upstream pauses longer than its limit between two
    /// parts.
    struct Held {
        #[pin]
        inner: Body,
        #[pin]
        idle: Option<tokio::time::Sleep>,
        limit: Duration,
        last: tokio::time::Instant,
        done: bool,
        pick: Pick,
    }
}

impl Held {
    fn new(inner: Body, pick: Pick, limit: Option<Duration>) -> Self {
        let last = tokio::time::Instant::now();
        Held {
            inner,
            idle: limit.map(|l| tokio::time::sleep_until(last + l)),
            limit: limit.unwrap_or_default(),
            last,
            done: false,
            pick,
        }
    }
}

impl HttpBody for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            if this.idle.is_some() {
                *this.last = tokio::time::Instant::now();
            }
            return Poll::Ready(frame);
        }
        // The timer was set from the part before last; a later part moves
        // it (here, when it fires, not at every part).
        if let Some(mut sleep) = this.idle.as_pin_mut() {
            while sleep.as_mut().poll(cx).is_ready() {
                let deadline = *this.last + *this.limit;
                if deadline <= tokio::time::Instant::now() {
                    *this.done = true;
                    return Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the upstream paused longer than its limit",
                    )))));
                }
                sleep.as_mut().reset(deadline);
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn no_upstream(model: &str, retry_after: Duration) -> Response {
    GatewayError::refused(
        &maas_core::Refused::NoUpstream {
            model: model.to_owned(),
            retry_after,
        },
        maas_core::Timestamp::from_millis(0),
    )
    .into_response()
}

fn timed_out(model: &str, limit: Duration) -> Response {
    upstream_error(
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
        format!(
            "the upstream of model '{model}' did not answer within {} s",
            limit.as_secs()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain http and h2c URLs (any case) go to the lean client with their
    /// authority and path; https and credentials do not.
    #[test]
    fn lean_urls() {
        let read = |url| lean(url).map(|l| (l.h2, l.authority, l.prefix));
        assert_eq!(read("http://a:8000"), Some((false, "a:8000", "")));
        assert_eq!(read("HTTP://a/v1/"), Some((false, "a", "/v1")));
        assert_eq!(read("h2c://[::1]:9/x"), Some((true, "[::1]:9", "/x")));
        assert_eq!(read("H2C://b"), Some((true, "b", "")));
        assert_eq!(read("https://a"), None);
        assert_eq!(read("http://u:p@a"), None);
        assert_eq!(read("h2c://u@a"), None);
    }

    /// The hot path takes exactly what the router's `POST` routes on
    /// [`PATHS`] matched, and reads their model as `{model}` decodes.
    #[test]
    fn hot_paths_are_the_routes_on_paths() {
        for p in [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/m/v1/chat/completions",
            "/v1/v1/completions",
            "/a%2Fb/v1/embeddings",
        ] {
            assert!(is_hot(p), "{p}");
        }
        for p in [
            "/v1/chat/completions/",
            "//v1/chat/completions",
            "/a/b/v1/chat/completions",
            "/v1/messages",
            "/m/v1/responses",
            "/v1/chat",
        ] {
            assert!(!is_hot(p), "{p}");
        }
        assert_eq!(model_in_path("/v1/chat/completions"), None);
        assert_eq!(model_in_path("/v1/completions"), None);
        assert_eq!(model_in_path("/m/v1/completions").as_deref(), Some("m"));
        assert_eq!(model_in_path("/v1/v1/completions").as_deref(), Some("v1"));
        assert_eq!(
            model_in_path("/a%2Fb%20c/v1/embeddings").as_deref(),
            Some("a/b c")
        );
        assert_eq!(model_in_path("/%FF/v1/embeddings"), None);
    }
}
