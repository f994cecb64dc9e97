//! Anthropic's Messages API on the gateway: `POST /v1/messages` (and
//! `/{model}/v1/messages`) through the same path as chat — the request is
//! translated to a chat completion before admission (so it is limited,
//! scheduled and metered as one), forwarded, and the answer translated back
//! ([`crate::anthropic`]); `POST /v1/messages/count_tokens` counts a
//! request's input tokens (authenticated, the model's access checked,
//! nothing reserved). On these routes the credential may come as
//! `x-api-key` (Anthropic's clients send it) as well as `Authorization:
//! Bearer`, and every error is in Anthropic's shape.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use maas_core::Gateway;
use serde_json::{Value, json};

use crate::anthropic::{error_body, message_of};

/// The most of a whole answer read to translate it.
const MAX_ANSWER: usize = 16 << 20;

/// The header Anthropic's clients send their key in.
const X_API_KEY: &str = "x-api-key";

/// An error in Anthropic's shape, with `headers` kept (`retry-after`, the
/// rate-limit headers).
fn anthropic_error(status: StatusCode, message: &str, headers: &HeaderMap) -> Response {
    let mut res = (status, axum::Json(error_body(status.as_u16(), message))).into_response();
    for (name, value) in headers {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            res.headers_mut().insert(name.clone(), value.clone());
        }
    }
    res
}

/// A dialect an answer of a chat-completions upstream is translated to.
pub(crate) trait Dialect: Send + 'static {
    /// A stream translator for `model`.
    fn stream(model: String) -> Self;
    /// The events for one chat-completions event's `data`.
    fn event(&mut self, data: &[u8]) -> String;
    /// A whole answer.
    fn whole(chat: &Value, model: &str) -> Value;
}

impl Dialect for crate::anthropic::StreamTranslator {
    fn stream(model: String) -> Self {
        Self::new(model)
    }
    fn event(&mut self, data: &[u8]) -> String {
        self.translate(data)
    }
    fn whole(chat: &Value, model: &str) -> Value {
        message_of(chat, model)
    }
}

impl Dialect for crate::responses::StreamTranslator {
    fn stream(model: String) -> Self {
        Self::new(model)
    }
    fn event(&mut self, data: &[u8]) -> String {
        self.translate(data)
    }
    fn whole(chat: &Value, model: &str) -> Value {
        crate::responses::response_of(chat, model)
    }
}

/// Takes the credential from `x-api-key` when there is no `Authorization`,
/// and puts every answer in Anthropic's shape: errors, whole messages and
/// event streams.
pub(crate) async fn adapter(mut req: Request, next: Next) -> Response {
    if let Some(key) = req.headers_mut().remove(X_API_KEY)
        && !req.headers().contains_key(AUTHORIZATION)
        && let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", key.to_str().unwrap_or("")))
    {
        req.headers_mut().insert(AUTHORIZATION, v);
    }
    let count_tokens = req.uri().path().ends_with("/count_tokens");
    let res = next.run(req).await;
    let (parts, body) = res.into_parts();
    if !parts.status.is_success() {
        return in_anthropic_shape(parts, body).await;
    }
    if count_tokens
        || parts
            .extensions
            .get::<crate::layer::NativeAnswer>()
            .is_some()
    {
        return Response::from_parts(parts, body);
    }
    translate_answer::<crate::anthropic::StreamTranslator>(parts, body).await
}

/// An error answer (OpenAI's shape, or anything) in Anthropic's shape,
/// its message and headers kept.
pub(crate) async fn in_anthropic_shape(parts: axum::http::response::Parts, body: Body) -> Response {
    let bytes = axum::body::to_bytes(body, MAX_ANSWER)
        .await
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            parts
                .status
                .canonical_reason()
                .unwrap_or("error")
                .to_owned()
        });
    anthropic_error(parts.status, &message, &parts.headers)
}

/// Puts the successful answers of the Responses routes in the Responses
/// API's shape (errors are OpenAI's already).
pub(crate) async fn responses_adapter(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    if !res.status().is_success() {
        return res;
    }
    let (parts, body) = res.into_parts();
    translate_answer::<crate::responses::StreamTranslator>(parts, body).await
}

/// A successful chat-completions answer in dialect `D`: an event stream
/// event by event, a whole answer at once.
pub(crate) async fn translate_answer<D: Dialect>(
    mut parts: axum::http::response::Parts,
    body: Body,
) -> Response {
    let sse = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    parts.headers.remove(CONTENT_LENGTH);
    if sse {
        return Response::from_parts(parts, Body::from_stream(translated::<D>(body)));
    }
    let bytes = match axum::body::to_bytes(body, MAX_ANSWER).await {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::BAD_GATEWAY,
                format!("the upstream's answer could not be read: {e}"),
            )
                .into_response();
        }
    };
    let chat: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let model = chat["model"].as_str().unwrap_or_default().to_owned();
    let out = serde_json::to_vec(&D::whole(&chat, &model)).unwrap_or_default();
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(out))
}

/// A chat-completions event stream in dialect `D`.
fn translated<D: Dialect>(
    body: Body,
) -> impl futures_util::Stream<Item = Result<Bytes, axum::Error>> + Send + 'static {
    struct State<D> {
        inner: axum::body::BodyDataStream,
        pending: BytesMut,
        translator: Option<D>,
        done: bool,
    }
    let state = State::<D> {
        inner: body.into_data_stream(),
        pending: BytesMut::new(),
        translator: None,
        done: false,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            let mut out = String::new();
            while let Some((end, sep)) = crate::layer::event_end(&s.pending) {
                let event = s.pending.split_to(end + sep);
                let data = sse_data(&event[..end]);
                if data.is_empty() {
                    continue;
                }
                let t = s.translator.get_or_insert_with(|| {
                    D::stream(
                        serde_json::from_slice::<Value>(&data)
                            .ok()
                            .and_then(|v| v["model"].as_str().map(str::to_owned))
                            .unwrap_or_default(),
                    )
                });
                out.push_str(&t.event(&data));
            }
            if !out.is_empty() {
                return Some((Ok(Bytes::from(out)), s));
            }
            match s.inner.next().await {
                Some(Ok(chunk)) => s.pending.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    s.done = true;
                    return Some((Err(e), s));
                }
                None => {
                    s.done = true;
                    // A stream cut before its end still closes the answer.
                    let t = s.translator.get_or_insert_with(|| D::stream(String::new()));
                    let rest = t.event(b"[DONE]");
                    if rest.is_empty() {
                        return None;
                    }
                    return Some((Ok(Bytes::from(rest)), s));
                }
            }
        }
    })
}

/// The `data:` of one server-sent event, lines joined.
fn sse_data(event: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    data
}

/// `POST /v1/messages/count_tokens`: the input tokens of a Messages
/// request, as the gateway estimates them for admission.
pub(crate) async fn count_tokens(State(gateway): State<Gateway>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let invalid = |m: &str| anthropic_error(StatusCode::BAD_REQUEST, m, &HeaderMap::new());
    let Some(credential) = crate::common::bearer(&parts) else {
        return anthropic_error(
            StatusCode::UNAUTHORIZED,
            "x-api-key header is required",
            &HeaderMap::new(),
        );
    };
    let caller = match gateway.authenticate(credential).await {
        Ok(c) => c,
        Err(e) => {
            let e = crate::layer::GatewayError::from_core(&e);
            return anthropic_error(e.error.status, &e.error.message, &HeaderMap::new());
        }
    };
    let Ok(bytes) = axum::body::to_bytes(body, crate::layer::DEFAULT_BODY_LIMIT).await else {
        return invalid("the body could not be read or is too large");
    };
    // Counting needs no max_tokens: give it one for the inspection.
    let mut v: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        _ => return invalid("the body must be a JSON object"),
    };
    v["max_tokens"] = json!(1);
    let Some(name) = v["model"].as_str().map(str::to_owned) else {
        return invalid("model: Field required");
    };
    let model = match gateway.model_for(&caller, &name).await {
        Ok(m) => m,
        Err(e) => {
            let e = crate::layer::GatewayError::from_core(&e);
            return anthropic_error(e.error.status, &e.error.message, &HeaderMap::new());
        }
    };
    let native = model.speaks(maas_core::model::ModelApi::Anthropic);
    let inspected = match crate::layer::inspect_messages(&v, native) {
        Ok(i) => i,
        Err(e) => return anthropic_error(e.error.status, &e.error.message, &HeaderMap::new()),
    };
    axum::Json(json!({"input_tokens": inspected.1})).into_response()
}

/// Routes `POST /v1/messages` and `/{model}/v1/messages` to `forward`
/// behind `admission` (the gateway's layer), and count_tokens.
pub(crate) fn routes<S>(
    forward: axum::routing::MethodRouter<S>,
    admission: crate::layer::MaasLayer,
    gateway: Gateway,
    state: S,
) -> Router
where
    S: Clone + Send + Sync + 'static,
{
    let admitted = Router::new()
        .route("/v1/messages", forward.clone())
        .route("/{model}/v1/messages", forward)
        .with_state(state)
        .route_layer(admission);
    let counted = Router::new()
        .route(
            "/v1/messages/count_tokens",
            axum::routing::post(count_tokens),
        )
        .with_state(gateway);
    admitted
        .merge(counted)
        .route_layer(axum::middleware::from_fn(adapter))
}

/// Routes `POST /v1/responses` and `/{model}/v1/responses` to `forward`
/// behind `admission`, their answers put in the Responses API's shape.
pub(crate) fn responses_routes<S>(
    forward: axum::routing::MethodRouter<S>,
    admission: crate::layer::MaasLayer,
    state: S,
) -> Router
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/v1/responses", forward.clone())
        .route("/{model}/v1/responses", forward)
        .with_state(state)
        .route_layer(admission)
        .route_layer(axum::middleware::from_fn(responses_adapter))
}
