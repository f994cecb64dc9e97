//! What every API of this crate shares: request ids, body limits, tracing,
//! and JSON bodies whose problems are answered in each API's own error
//! dialect.

use std::marker::PhantomData;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use maas_core::Error;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower_http::trace::TraceLayer;
use utoipa::ToSchema;

/// The request id header: taken from the request when it is a sensible
/// one, generated otherwise, echoed on every response and used in error
/// bodies.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The default limit of request bodies: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;

/// Settings shared by the routers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpConfig {
    /// The largest request body accepted, in bytes; larger ones get 413 in
    /// the API's error shape. Default [`DEFAULT_BODY_LIMIT`].
    pub body_limit: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }
}

/// The id of the request being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// A fresh id: `req_` and 22 base58 digits.
const ID_LEN: usize = 4 + 22;

/// Bitcoin's base58 alphabet (no `0`, `O`, `I` or `l`).
const BASE58: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// 128 random bits as 22 base58 digits: two 64-bit halves of 11 digits
/// each (58^11 > 2^64), a division by a constant per digit. (Base58 of
/// a byte string, as the bs58 crate does it, takes a pass over the digits
/// per byte: ~4,000 instructions for 16 bytes, callgrind counted, against
/// ~200 here; one per request, on the gateway's path.)
pub(crate) fn random_base58() -> [u8; 22] {
    let halves: [u64; 2] = rand::random();
    let mut out = [b'1'; 22];
    for (mut n, digits) in halves.into_iter().zip(out.chunks_exact_mut(11)) {
        for d in digits.iter_mut().rev() {
            *d = BASE58[(n % 58) as usize];
            n /= 58;
        }
    }
    out
}

/// A fresh id written into `buf`: `req_` and 22 base58 digits of 128
/// random bits, on the stack.
fn fresh(buf: &mut [u8; ID_LEN]) -> &[u8] {
    buf[..4].copy_from_slice(b"req_");
    buf[4..].copy_from_slice(&random_base58());
    buf
}

impl RequestId {
    /// A fresh id: `req_` and 22 base58 digits (128 random bits).
    pub fn generate() -> Self {
        let mut buf = [0u8; ID_LEN];
        // base58's alphabet is ASCII.
        RequestId(
            std::str::from_utf8(fresh(&mut buf))
                .unwrap_or("req_")
                .to_owned(),
        )
    }

    /// A fresh id as a header value only (one allocation).
    fn fresh_header() -> HeaderValue {
        let mut buf = [0u8; ID_LEN];
        HeaderValue::from_bytes(fresh(&mut buf)).unwrap_or(HeaderValue::from_static("req_"))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A client-sent id worth keeping: 1..=128 visible ASCII characters.
    pub fn from_header(v: &HeaderValue) -> Option<Self> {
        let s = v.to_str().ok()?;
        Self::keeps(v).then(|| RequestId(s.to_owned()))
    }

    /// Whether a client-sent id is worth keeping ([`Self::from_header`]).
    fn keeps(v: &HeaderValue) -> bool {
        let b = v.as_bytes();
        !b.is_empty() && b.len() <= 128 && b.iter().all(u8::is_ascii_graphic)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::generate))
    }
}

/// Middleware: assigns the request id and echoes it on the response.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(RequestId::from_header)
        .unwrap_or_else(RequestId::generate);
    req.extensions_mut().insert(id.clone());
    let mut res = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    res
}

/// Wraps `router` in the layers every API uses: the request id, a tracing
/// span per request and the body limit (on each route: the result can be
/// merged with other routers).
pub fn with_common_layers(router: Router, config: &HttpConfig) -> Router {
    router
        .layer(axum::extract::DefaultBodyLimit::max(config.body_limit))
        .layer(TraceLayer::new_for_http())
        .layer(RequestIdLayer)
}

/// The layer of [`request_id`] as a plain tower layer (no boxed future):
/// assigns the request id ([`RequestId`] in the request's extensions) and
/// echoes it on the response as [`REQUEST_ID`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService {
            inner,
            extension: true,
        }
    }
}

/// The service of [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
    /// Whether the id is also put in the request's extensions (for the
    /// handlers that render it); without, only echoed.
    extension: bool,
}

impl<S> RequestIdService<S> {
    /// The service echoing the id (the client's, or a fresh one) without
    /// putting it in the request's extensions: for a path nothing of which
    /// renders it (the gateway's inference paths: OpenAI's errors carry
    /// none), one allocation per request instead of four.
    pub(crate) fn header_only(inner: S) -> Self {
        RequestIdService {
            inner,
            extension: false,
        }
    }
}

impl<S, B, R> tower::Service<axum::http::Request<B>> for RequestIdService<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> Self::Future {
        if !self.extension {
            let header = match req.headers().get(&REQUEST_ID) {
                Some(v) if RequestId::keeps(v) => v.clone(),
                _ => RequestId::fresh_header(),
            };
            return RequestIdFuture {
                inner: self.inner.call(req),
                header: Some(header),
            };
        }
        let (id, header) = match req.headers().get(&REQUEST_ID) {
            Some(v) => match RequestId::from_header(v) {
                Some(id) => (id, Some(v.clone())),
                None => fresh_id(),
            },
            None => fresh_id(),
        };
        req.extensions_mut().insert(id);
        RequestIdFuture {
            inner: self.inner.call(req),
            header,
        }
    }
}

/// A new id and its header value.
fn fresh_id() -> (RequestId, Option<HeaderValue>) {
    let id = RequestId::generate();
    let header = HeaderValue::from_str(id.as_str()).ok();
    (id, header)
}

pin_project_lite::pin_project! {
    /// The response future of [`RequestIdService`].
    #[derive(Debug)]
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        header: Option<HeaderValue>,
    }
}

impl<F, R, E> std::future::Future for RequestIdFuture<F>
where
    F: std::future::Future<Output = Result<axum::http::Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if let Some(v) = this.header.take() {
            res.headers_mut().insert(REQUEST_ID, v);
        }
        std::task::Poll::Ready(Ok(res))
    }
}

/// The body of a health check that passed: `{"status": "ok"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

impl Health {
    /// `{"status": "ok"}`.
    pub const OK: Health = Health { status: "ok" };
}

/// How an API renders a problem with a request, in its own error shape.
pub trait Dialect: Send + Sync + 'static {
    /// The response for `err` while serving request `id`.
    fn render(err: &Error, id: &RequestId) -> Response;

    /// The response for a body larger than the limit (413).
    fn too_large(limit_message: &str, id: &RequestId) -> Response;

    /// The response for a body that is not JSON (415).
    fn unsupported_media_type(id: &RequestId) -> Response;
}

/// A JSON object request body of `T`, whose problems (not JSON, too large,
/// not an object, malformed, a field of the wrong type or missing) are
/// answered in dialect `D` naming the field, before any handler code runs.
#[derive(Debug)]
pub struct ApiJson<T, D>(pub T, PhantomData<D>);

impl<T, D> ApiJson<T, D> {
    /// The body.
    pub fn into_inner(self) -> T {
        self.0
    }
}

/// Deserializes `bytes` as JSON `T`; a failure is invalid input naming the
/// field (a JSON pointer-like dotted path) or `body`. Structs are read from
/// JSON objects only (serde alone also reads them from arrays).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid("body", "a JSON body is required"));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(crate::strict::Strict(de)).map_err(|e| {
        let path = e.path().to_string();
        let path = match path.as_str() {
            "" | "." | "?" => None,
            p => Some(p.to_owned()),
        };
        let message = e.into_inner().to_string();
        // serde reports a missing field at its parent: name the field.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned);
        match (path, missing) {
            (Some(p), Some(m)) => Error::invalid(format!("{p}.{m}"), "is required"),
            (None, Some(m)) => Error::invalid(m, "is required"),
            (Some(p), None) => Error::invalid(p, format!("is invalid: {message}")),
            (None, None) => Error::invalid("body", format!("is not valid JSON: {message}")),
        }
    })
}

fn is_json(req: &Request) -> bool {
    let Some(ct) = req.headers().get(CONTENT_TYPE) else {
        return false;
    };
    let Ok(ct) = ct.to_str() else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<S, T, D> FromRequest<S> for ApiJson<T, D>
where
    S: Send + Sync,
    T: DeserializeOwned,
    D: Dialect,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let id = req
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::generate);
        if !is_json(&req) {
            return Err(D::unsupported_media_type(&id));
        }
        let bytes = match Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(rejection) => {
                let status = rejection.status();
                return Err(if status == StatusCode::PAYLOAD_TOO_LARGE {
                    D::too_large(&rejection.body_text(), &id)
                } else {
                    D::render(&Error::invalid("body", rejection.body_text()), &id)
                });
            }
        };
        // serde reads a struct from a JSON array too (`[]` would be a body
        // of defaults): every body of these APIs is an object.
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| *b != b'{') {
            return Err(D::render(
                &Error::invalid("body", "must be a JSON object"),
                &id,
            ));
        }
        match parse_json(&bytes) {
            Ok(v) => Ok(ApiJson(v, PhantomData)),
            Err(e) => Err(D::render(&e, &id)),
        }
    }
}

/// A bearer credential from the `Authorization` header, if there is one.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether the request's bearer token is one of `admin`'s (compared by
/// keyed hash, in constant time). The one check behind every admin route.
pub async fn is_admin(admin: &maas_core::StaticTokens, parts: &Parts) -> bool {
    use maas_core::Authenticator;
    match bearer(parts) {
        Some(token) => matches!(admin.authenticate(token).await, Ok(Some(_))),
        None => false,
    }
}

/// A response of `status` with a JSON body and the given content type.
pub fn json_response(
    status: StatusCode,
    content_type: &'static str,
    body: &serde_json::Value,
) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static(content_type))],
        bytes,
    )
        .into_response()
}

/// The path of a request no route matched, for its 404 message: as the
/// client sent it (before any nesting stripped a prefix), at most 200
/// bytes.
pub(crate) fn unrouted_path(uri: &axum::extract::OriginalUri) -> String {
    let path = uri.0.path();
    match path.char_indices().nth(200) {
        Some((end, _)) => format!("{}…", &path[..end]),
        None => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        inner: Inner,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        n: u8,
    }

    /// Fresh ids: `req_` and 22 base58 digits, each id its own.
    #[test]
    fn fresh_ids_are_base58_and_differ() {
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| RequestId::generate().0).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            let digits = id.strip_prefix("req_").unwrap_or_default();
            assert_eq!(digits.len(), 22, "{id}");
            assert!(digits.bytes().all(|d| BASE58.contains(&d)), "{id}");
        }
        // Every digit of the alphabet turns up (the low ones of each half
        // are uniform).
        let seen: std::collections::HashSet<u8> = ids.iter().flat_map(|i| i.bytes()).collect();
        assert!(BASE58.iter().all(|d| seen.contains(d)));
        assert_eq!(RequestId::fresh_header().len(), ID_LEN);
    }

    #[test]
    fn json_errors_name_the_field() {
        let field = |b: &[u8]| match parse_json::<Body>(b) {
            Err(Error::InvalidInput { field, .. }) => field.into_owned(),
            other => panic!("{other:?}"),
        };
        assert_eq!(field(br#"{"name": 1, "inner": {"n": 1}}"#), "name");
        assert_eq!(field(br#"{"name": "a", "inner": {"n": 300}}"#), "inner.n");
        assert_eq!(field(br#"{"name": "a"}"#), "inner");
        assert_eq!(field(br#"{"name": "a", "inner": {}}"#), "inner.n");
        assert_eq!(field(b"{"), "body");
        assert_eq!(field(b"  "), "body");
    }

    #[test]
    fn client_request_ids_are_kept_only_when_sane() {
        let ok = HeaderValue::from_static("abc-123");
        assert_eq!(RequestId::from_header(&ok).unwrap().as_str(), "abc-123");
        let spaced = HeaderValue::from_static("a b");
        assert!(RequestId::from_header(&spaced).is_none());
        assert!(RequestId::generate().as_str().starts_with("req_"));
    }
}
