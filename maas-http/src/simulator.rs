//! A built-in OpenAI-compatible model server, so the example server works
//! with no GPU and fair share is visible.
//!
//! [`router`] answers `POST /v1/chat/completions`, `POST /v1/completions`,
//! `POST /v1/embeddings`, `POST /v1/responses`, Anthropic's `POST
//! /v1/messages`, `GET /v1/models`, `GET /health` and `GET`/`PUT
//! /simulator/fault` (see [Faults](#faults)); [`serve`] runs it on a
//! listener.
//! Any model name is accepted. Answers are deterministic: the completion is
//! a cycle of lorem-ipsum words, one word (and a space) per token, and the
//! prompt's token count is an estimate from its size:
//!
//! - prompt tokens: the bytes of every message's text (or of the prompt)
//!   divided by 4, rounded up, plus 3 per chat message, at least 1;
//! - completion tokens: `max_completion_tokens` (chat), else `max_tokens`,
//!   else [`SimulatorConfig::default_max_tokens`], capped at
//!   [`MAX_COMPLETION_TOKENS`]; `finish_reason` is `length` when the
//!   request's limit was reached, `stop` otherwise.
//!
//! Generation is paced at [`SimulatorConfig::tokens_per_second`] per
//! request: token `i` (from 1) is due `i / tokens_per_second` seconds after
//! generation starts, on a fixed schedule (late polls do not shift the
//! later tokens). At most [`SimulatorConfig::max_concurrent`] requests
//! generate at once; the others wait their turn in arrival order. A
//! streamed answer takes its turn when its body is first polled (the
//! headers go out at once, as from a real server with a queue) and gives
//! it back after its last token, or when the body is dropped (the client
//! went away).
//!
//! Streaming (`"stream": true`) answers `text/event-stream`: one event per
//! token, then one with the `finish_reason`, then, when
//! `stream_options.include_usage` is true, one with empty `choices` and the
//! `usage` (the other chunks then carry `"usage": null`, as OpenAI's do),
//! then `data: [DONE]`. Each event is its own body frame.
//!
//! Only one choice is generated (`n` is ignored); a `prompt` array of
//! several strings is read as one prompt. Bad requests are answered 400 in
//! OpenAI's error shape naming the `param` at fault.
//!
//! Embeddings: one vector per input (a string, an array of strings, an
//! array of token ids or an array of such arrays), of
//! [`EMBEDDING_DIMENSIONS`] (or `dimensions`) unit-length floats drawn
//! from the input's hash, so equal inputs embed equally; as JSON numbers,
//! or base64 of little-endian `f32`s with `"encoding_format": "base64"`.
//! Prompt tokens: a string's bytes divided by 4, rounded up (at least 1),
//! or a token array's length. An embedding takes a generation slot for the
//! time of one token.
//!
//! Messages: answered as the chat completion of the same conversation
//! (same words, pacing and slots), in Anthropic's shapes — a message, or
//! its event stream (`message_start`, a `content_block_delta` per token,
//! `message_delta` with the usage, `message_stop`); errors in Anthropic's
//! shape. Options it does not model (`top_k`, `thinking`, …) are ignored.
//! Responses likewise: the chat completion of its input, as a response
//! object or the Responses event stream.
//!
//! # Faults
//!
//! To see a gateway's failover, retries and fallbacks without a real outage,
//! a simulator can be told to fail. The [`Fault`] starts as
//! [`SimulatorConfig::fault`] (none by default) and is changed live through
//! the simulator's own API:
//!
//! ```sh
//! curl -X PUT http://127.0.0.1:8081/simulator/fault -d '{"mode": "error", "status": 503}'
//! curl http://127.0.0.1:8081/simulator/fault     # {"mode":"error","status":503}
//! curl -X PUT http://127.0.0.1:8081/simulator/fault -d '{"mode": "none"}'
//! ```
//!
//! The body is the whole setting: `mode` (required) and `status` (400 to
//! 599, default 503, used by `error` only). `PUT` answers the new setting;
//! a bad body is a 400 in OpenAI's error shape naming the `param` at fault.
//! The modes ([`FaultMode`]):
//!
//! - `none`: answer normally;
//! - `error`: answer `status` at once with an OpenAI-shaped error (code
//!   `simulated_fault`; Anthropic's shape on `/v1/messages`);
//! - `close`: drop the connection without answering (the client sees the
//!   connection closed before a response);
//! - `hang`: never answer; the request ends when its client gives up (it
//!   holds no generation slot).
//!
//! Only the inference routes (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/messages`, `/v1/responses`) fail; `/v1/models`,
//! `/health` and `/simulator/fault` always answer. Requests already past
//! the check (generating) are not affected by a change.

use axum::serve::ListenerExt;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use maas_core::Error;
use serde_json::{Map, Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::common::Health;
use crate::openai::OpenAiError;

/// The longest completion generated, in tokens; larger limits are capped.
pub const MAX_COMPLETION_TOKENS: u64 = 100_000;

/// The largest request body accepted: 16 MiB (long prompts are welcome).
pub const BODY_LIMIT: usize = 16 << 20;

/// The model id listed by `GET /v1/models` (any model name is served).
pub const MODEL_ID: &str = "simulator";

/// The length of an embedding unless the request asks for `dimensions`.
pub const EMBEDDING_DIMENSIONS: usize = 16;

/// The most `dimensions` an embedding request may ask for.
pub const MAX_EMBEDDING_DIMENSIONS: u64 = 8192;

/// The words of completions, in order, cycled.
const WORDS: &[&str] = &[
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua",
];

/// The longest wait for one token, so a tiny rate cannot overflow a
/// deadline: one year.
const MAX_DELAY_SECS: f64 = 365.0 * 86_400.0;

/// Settings of the simulator.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatorConfig {
    /// Tokens generated per second per request; 0 = instant (no pacing).
    /// Default 50.
    pub tokens_per_second: f64,
    /// Requests generated at once; more wait their turn (FIFO). Default 8.
    pub max_concurrent: usize,
    /// Completion length when the request has no `max_tokens`, at most
    /// [`MAX_COMPLETION_TOKENS`]. Default 64.
    pub default_max_tokens: u64,
    /// The fault injected at start (changed live through `PUT
    /// /simulator/fault`, see [Faults](self#faults)). Default none.
    pub fault: Fault,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            tokens_per_second: 50.0,
            max_concurrent: 8,
            default_max_tokens: 64,
            fault: Fault::default(),
        }
    }
}

/// The status a [`FaultMode::Error`] answers unless told otherwise.
pub const DEFAULT_FAULT_STATUS: u16 = 503;

/// How a simulator fails its inference requests (see [Faults](self#faults)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultMode {
    /// Answer normally.
    #[default]
    None,
    /// Answer [`Fault::status`] with an error body.
    Error,
    /// Drop the connection without answering.
    Close,
    /// Never answer (until the client gives up).
    Hang,
}

impl FaultMode {
    /// Every mode, in the order of their names.
    pub const ALL: [FaultMode; 4] = [
        FaultMode::None,
        FaultMode::Error,
        FaultMode::Close,
        FaultMode::Hang,
    ];

    /// Its name in the API: `none`, `error`, `close` or `hang`.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultMode::None => "none",
            FaultMode::Error => "error",
            FaultMode::Close => "close",
            FaultMode::Hang => "hang",
        }
    }

    /// The mode named `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        FaultMode::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

/// A simulator's fault setting: its [`mode`](Self::mode) and the
/// [`status`](Self::status) an `error` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// How inference requests fail.
    pub mode: FaultMode,
    /// The status of [`FaultMode::Error`]'s answers, 400 to 599. Default
    /// [`DEFAULT_FAULT_STATUS`].
    pub status: u16,
}

impl Default for Fault {
    fn default() -> Self {
        Fault::NONE
    }
}

impl Fault {
    /// No fault.
    pub const NONE: Fault = Fault {
        mode: FaultMode::None,
        status: DEFAULT_FAULT_STATUS,
    };

    /// A fault of `mode`, answering [`DEFAULT_FAULT_STATUS`] if it is an
    /// error.
    pub fn new(mode: FaultMode) -> Self {
        Fault {
            mode,
            status: DEFAULT_FAULT_STATUS,
        }
    }

    /// Answering `status` to every inference request.
    pub fn error(status: u16) -> Self {
        Fault {
            mode: FaultMode::Error,
            status,
        }
    }

    /// Checks the status: 400 to 599.
    pub fn validate(&self) -> Result<(), Error> {
        if !(400..=599).contains(&self.status) {
            return Err(Error::invalid("status", "must be between 400 and 599"));
        }
        Ok(())
    }

    /// Its JSON form, as `GET /simulator/fault` answers it:
    /// `{"mode": "error", "status": 503}`.
    pub fn to_json(&self) -> Value {
        json!({"mode": self.mode.as_str(), "status": self.status})
    }

    /// Reads the JSON form (see [Faults](self#faults)): `mode` required,
    /// `status` optional; any other field, or a value out of range, is
    /// invalid input naming the field.
    pub fn from_json(body: &Value) -> Result<Self, Error> {
        let Value::Object(map) = body else {
            return Err(Error::invalid("body", "must be a JSON object"));
        };
        if let Some(other) = map.keys().find(|k| *k != "mode" && *k != "status") {
            return Err(Error::invalid(
                other.clone(),
                "is not a fault setting (expected 'mode' and 'status')",
            ));
        }
        let names = "must be one of 'none', 'error', 'close' and 'hang'";
        let mode = match map.get("mode") {
            Some(Value::String(name)) => {
                FaultMode::from_name(name).ok_or_else(|| Error::invalid("mode", names))?
            }
            v if absent(v) => return Err(Error::invalid("mode", "is required")),
            _ => return Err(Error::invalid("mode", names)),
        };
        let status = match map.get("status") {
            None | Some(Value::Null) => DEFAULT_FAULT_STATUS,
            Some(v) => v
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| Error::invalid("status", "must be between 400 and 599"))?,
        };
        let fault = Fault { mode, status };
        fault.validate()?;
        Ok(fault)
    }
}

impl SimulatorConfig {
    /// Checks the settings: `tokens_per_second` finite and not negative,
    /// `max_concurrent` at least 1 (and at most what a tokio semaphore
    /// holds), `default_max_tokens` in `1..=MAX_COMPLETION_TOKENS`.
    pub fn validate(&self) -> Result<(), Error> {
        if !self.tokens_per_second.is_finite() || self.tokens_per_second < 0.0 {
            return Err(Error::invalid(
                "tokens_per_second",
                "must be a finite number, 0 or more",
            ));
        }
        if self.max_concurrent == 0 || self.max_concurrent > Semaphore::MAX_PERMITS {
            return Err(Error::invalid(
                "max_concurrent",
                format!("must be between 1 and {}", Semaphore::MAX_PERMITS),
            ));
        }
        if self.default_max_tokens == 0 || self.default_max_tokens > MAX_COMPLETION_TOKENS {
            return Err(Error::invalid(
                "default_max_tokens",
                format!("must be between 1 and {MAX_COMPLETION_TOKENS}"),
            ));
        }
        self.fault
            .validate()
            .map_err(|_| Error::invalid("fault.status", "must be between 400 and 599"))
    }
}

/// The path of a simulator's fault setting (`GET` reads it, `PUT` sets
/// it; see [Faults](self#faults)).
pub const FAULT_PATH: &str = "/simulator/fault";

/// The router of the simulator, or invalid input when `config` does not
/// [validate](SimulatorConfig::validate).
pub fn router(config: SimulatorConfig) -> Result<Router, Error> {
    config.validate()?;
    let sim = Arc::new(Sim {
        permits: Arc::new(Semaphore::new(config.max_concurrent)),
        fault: Mutex::new(config.fault),
        config,
    });
    Ok(Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/messages", post(messages))
        .route("/v1/responses", post(responses))
        // The routes above (the inference routes) fail as the fault says.
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&sim),
            inject_fault,
        ))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route(FAULT_PATH, get(get_fault).put(put_fault))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(sim)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Its 5xx are simulated faults, not the server's errors: the gateway
        // in front logs what it makes of them.
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(axum::middleware::from_fn(crate::common::request_id)))
}

/// Serves the simulator on `listener` until `shutdown` completes, then
/// waits for the requests in flight. Invalid settings are an
/// [`InvalidInput`](std::io::ErrorKind::InvalidInput) error.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: SimulatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(config)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    // Each streamed token goes out at once (no Nagle delay).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The shared state: the settings, the generation slots and the fault.
#[derive(Debug)]
struct Sim {
    config: SimulatorConfig,
    permits: Arc<Semaphore>,
    /// The fault now (starts as `config.fault`).
    fault: Mutex<Fault>,
}

impl Sim {
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner) = fault;
    }
}

/// Which API a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

/// A validated request, ready to generate.
#[derive(Debug)]
struct Job {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    finish_reason: &'static str,
    stream: bool,
    include_usage: bool,
}

impl Job {
    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens.saturating_add(self.completion_tokens),
        })
    }

    fn object(&self) -> &'static str {
        match (self.kind, self.stream) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    /// The whole (non-streamed) answer.
    fn answer(&self) -> Value {
        let text: String = (0..self.completion_tokens).map(token).collect();
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": self.finish_reason,
            }),
            Kind::Completion => json!({
                "index": 0,
                "text": text,
                "finish_reason": self.finish_reason,
                "logprobs": null,
            }),
        };
        json!({
            "id": self.id,
            "object": self.object(),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(),
        })
    }

    /// A streamed chunk of `choices`, with `"usage": null` when the usage
    /// comes last.
    fn chunk(&self, choices: Value) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": self.object(),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let (true, Some(map)) = (self.include_usage, chunk.as_object_mut()) {
            map.insert("usage".into(), Value::Null);
        }
        chunk
    }

    /// The chunk of token `i`.
    fn token_chunk(&self, i: u64) -> Value {
        let choice = match self.kind {
            Kind::Chat if i == 0 => json!({
                "index": 0,
                "delta": {"role": "assistant", "content": token(i)},
                "finish_reason": null,
            }),
            Kind::Chat => json!({
                "index": 0,
                "delta": {"content": token(i)},
                "finish_reason": null,
            }),
            Kind::Completion => json!({
                "index": 0,
                "text": token(i),
                "finish_reason": null,
                "logprobs": null,
            }),
        };
        self.chunk(json!([choice]))
    }

    /// The chunk with the finish reason.
    fn finish_chunk(&self) -> Value {
        let choice = match self.kind {
            // No token chunk said the role: this one does.
            Kind::Chat if self.completion_tokens == 0 => json!({
                "index": 0,
                "delta": {"role": "assistant"},
                "finish_reason": self.finish_reason,
            }),
            Kind::Chat => json!({
                "index": 0,
                "delta": {},
                "finish_reason": self.finish_reason,
            }),
            Kind::Completion => json!({
                "index": 0,
                "text": "",
                "finish_reason": self.finish_reason,
                "logprobs": null,
            }),
        };
        self.chunk(json!([choice]))
    }

    /// The last chunk before `[DONE]` when usage is asked for.
    fn usage_chunk(&self) -> Value {
        json!({
            "id": self.id,
            "object": self.object(),
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": self.usage(),
        })
    }
}

/// Token `i` of every completion: a word and a space.
fn token(i: u64) -> String {
    let len = WORDS.len() as u64;
    let word = usize::try_from(i % len)
        .ok()
        .and_then(|k| WORDS.get(k))
        .copied()
        .unwrap_or("lorem");
    format!("{word} ")
}

/// When token `i` (from 1) is due: `i / tps` seconds after `start`.
fn deadline(start: Instant, i: u64, tps: f64) -> Instant {
    let secs = (i as f64 / tps).min(MAX_DELAY_SECS);
    if !secs.is_finite() || secs < 0.0 {
        return start;
    }
    start
        .checked_add(Duration::from_secs_f64(secs))
        .unwrap_or(start)
}

/// `chatcmpl-…` / `cmpl-…` and 22 base58 digits of 128 random bits.
fn new_id(kind: Kind) -> String {
    let prefix = match kind {
        Kind::Chat => "chatcmpl",
        Kind::Completion => "cmpl",
    };
    let digits = crate::common::random_base58();
    let mut id = String::with_capacity(prefix.len() + 1 + digits.len());
    id.push_str(prefix);
    id.push('-');
    // The alphabet is ASCII.
    id.extend(digits.iter().map(|&d| char::from(d)));
    id
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---------------------------------------------------------------- parsing

/// The request body as a JSON object.
fn body_object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, OpenAiError> {
    let bytes = match body {
        Ok(b) => b,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(OpenAiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                Some("request_too_large"),
                rejection.body_text(),
            ));
        }
        Err(rejection) => return Err(OpenAiError::invalid("body", rejection.body_text())),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(OpenAiError::invalid("body", "a JSON body is required"));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(OpenAiError::invalid(
            "body",
            "the body must be a JSON object",
        )),
        Err(e) => Err(OpenAiError::invalid(
            "body",
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

/// A field that is absent or `null`.
fn absent(v: Option<&Value>) -> bool {
    matches!(v, None | Some(Value::Null))
}

fn model(body: &Map<String, Value>) -> Result<String, OpenAiError> {
    match body.get("model") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        v if absent(v) => Err(OpenAiError::invalid("model", "'model' is required")),
        _ => Err(OpenAiError::invalid(
            "model",
            "'model' must be a non-empty string",
        )),
    }
}

/// An optional positive integer field.
fn positive(body: &Map<String, Value>, field: &str) -> Result<Option<u64>, OpenAiError> {
    let v = body.get(field);
    if absent(v) {
        return Ok(None);
    }
    match v.and_then(Value::as_u64) {
        Some(n) if n >= 1 => Ok(Some(n)),
        _ => Err(OpenAiError::invalid(
            field,
            format!("'{field}' must be a positive integer"),
        )),
    }
}

/// An optional boolean field (absent or `null` is false).
fn flag(obj: &Map<String, Value>, field: &str, param: &str) -> Result<bool, OpenAiError> {
    match obj.get(field) {
        Some(Value::Bool(b)) => Ok(*b),
        v if absent(v) => Ok(false),
        _ => Err(OpenAiError::invalid(
            param,
            format!("'{param}' must be a boolean"),
        )),
    }
}

/// The text bytes and the number of messages of `messages`.
fn chat_prompt(body: &Map<String, Value>) -> Result<(u64, u64), OpenAiError> {
    let messages = match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(OpenAiError::invalid(
                "messages",
                "'messages' must not be empty",
            ));
        }
        v if absent(v) => {
            return Err(OpenAiError::invalid("messages", "'messages' is required"));
        }
        _ => {
            return Err(OpenAiError::invalid(
                "messages",
                "'messages' must be an array of messages",
            ));
        }
    };
    let mut bytes: u64 = 0;
    for (i, message) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Value::Object(message) = message else {
            return Err(OpenAiError::invalid(
                param.clone(),
                format!("'{param}' must be an object"),
            ));
        };
        let role = match message.get("role") {
            Some(Value::String(r)) if !r.is_empty() => r.as_str(),
            _ => {
                let param = format!("{param}.role");
                return Err(OpenAiError::invalid(
                    param.clone(),
                    format!("'{param}' must be a non-empty string"),
                ));
            }
        };
        let param = format!("{param}.content");
        let content = message.get("content");
        let n = match content {
            Some(Value::String(s)) => s.len(),
            Some(Value::Array(parts)) => parts_bytes(parts, &param)?,
            // An assistant turn that only called tools has no content.
            v if absent(v) && role == "assistant" => 0,
            v if absent(v) => {
                return Err(OpenAiError::invalid(
                    param.clone(),
                    format!("'{param}' is required"),
                ));
            }
            _ => {
                return Err(OpenAiError::invalid(
                    param.clone(),
                    format!("'{param}' must be a string or an array of content parts"),
                ));
            }
        };
        bytes = bytes.saturating_add(n as u64);
    }
    Ok((bytes, messages.len() as u64))
}

/// The text bytes of content parts; parts other than text count nothing.
fn parts_bytes(parts: &[Value], param: &str) -> Result<usize, OpenAiError> {
    let mut bytes: usize = 0;
    for (j, part) in parts.iter().enumerate() {
        let param = format!("{param}[{j}]");
        let Some(part) = part.as_object() else {
            return Err(OpenAiError::invalid(
                param.clone(),
                format!("'{param}' must be an object"),
            ));
        };
        match part.get("type") {
            Some(Value::String(t)) if t == "text" => match part.get("text") {
                Some(Value::String(text)) => bytes = bytes.saturating_add(text.len()),
                _ => {
                    let param = format!("{param}.text");
                    return Err(OpenAiError::invalid(
                        param.clone(),
                        format!("'{param}' must be a string"),
                    ));
                }
            },
            Some(Value::String(_)) => {}
            _ => {
                let param = format!("{param}.type");
                return Err(OpenAiError::invalid(
                    param.clone(),
                    format!("'{param}' must be a string"),
                ));
            }
        }
    }
    Ok(bytes)
}

/// The text bytes of `prompt`.
fn completion_prompt(body: &Map<String, Value>) -> Result<u64, OpenAiError> {
    let wrong = || {
        OpenAiError::invalid(
            "prompt",
            "'prompt' must be a string or a non-empty array of strings",
        )
    };
    match body.get("prompt") {
        Some(Value::String(s)) => Ok(s.len() as u64),
        Some(Value::Array(items)) if !items.is_empty() => {
            items.iter().try_fold(0u64, |acc, item| match item {
                Value::String(s) => Ok(acc.saturating_add(s.len() as u64)),
                _ => Err(wrong()),
            })
        }
        v if absent(v) => Err(OpenAiError::invalid("prompt", "'prompt' is required")),
        _ => Err(wrong()),
    }
}

/// Validates a request of `kind` and sizes its answer.
fn parse(
    kind: Kind,
    body: Result<Bytes, BytesRejection>,
    config: &SimulatorConfig,
) -> Result<Job, OpenAiError> {
    let body = body_object(body)?;
    let model = model(&body)?;
    let (prompt_tokens, limit) = match kind {
        Kind::Chat => {
            let (bytes, messages) = chat_prompt(&body)?;
            let max_tokens = positive(&body, "max_tokens")?;
            let max_completion = positive(&body, "max_completion_tokens")?;
            let estimate = bytes.div_ceil(4).saturating_add(messages.saturating_mul(3));
            (estimate, max_completion.or(max_tokens))
        }
        Kind::Completion => {
            let bytes = completion_prompt(&body)?;
            (bytes.div_ceil(4), positive(&body, "max_tokens")?)
        }
    };
    let stream = flag(&body, "stream", "stream")?;
    let include_usage = match body.get("stream_options") {
        Some(Value::Object(options)) => {
            flag(options, "include_usage", "stream_options.include_usage")?
        }
        v if absent(v) => false,
        _ => {
            return Err(OpenAiError::invalid(
                "stream_options",
                "'stream_options' must be an object",
            ));
        }
    };
    let completion_tokens = limit
        .unwrap_or(config.default_max_tokens)
        .min(MAX_COMPLETION_TOKENS);
    let finish_reason = if limit == Some(completion_tokens) {
        "length"
    } else {
        "stop"
    };
    Ok(Job {
        kind,
        id: new_id(kind),
        created: unix_now(),
        model,
        prompt_tokens: prompt_tokens.max(1),
        completion_tokens,
        finish_reason,
        stream,
        // Usage is only ever streamed when streaming.
        include_usage: stream && include_usage,
    })
}

// ---------------------------------------------------------------- handlers

async fn chat(State(sim): State<Arc<Sim>>, body: Result<Bytes, BytesRejection>) -> Response {
    answer(sim, Kind::Chat, body).await
}

async fn completions(State(sim): State<Arc<Sim>>, body: Result<Bytes, BytesRejection>) -> Response {
    answer(sim, Kind::Completion, body).await
}

/// A validated embeddings request.
#[derive(Debug)]
struct Embedding {
    model: String,
    /// Each input's bytes to hash, and its tokens.
    inputs: Vec<(Vec<u8>, u64)>,
    dimensions: usize,
    base64: bool,
}

/// Reads an embeddings request.
fn parse_embedding(body: Result<Bytes, BytesRejection>) -> Result<Embedding, OpenAiError> {
    let body = body_object(body)?;
    let model = model(&body)?;
    let wrong = || {
        OpenAiError::invalid(
            "input",
            "'input' must be a non-empty string, an array of strings, an array of token ids or an array of token-id arrays",
        )
    };
    let tokens = |ids: &[Value]| -> Result<(Vec<u8>, u64), OpenAiError> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for id in ids {
            let n = id.as_u64().ok_or_else(wrong)?;
            bytes.extend_from_slice(&n.to_le_bytes());
        }
        Ok((bytes, ids.len() as u64))
    };
    let text = |s: &str| (s.as_bytes().to_vec(), (s.len() as u64).div_ceil(4).max(1));
    let inputs = match body.get("input") {
        Some(Value::String(s)) if !s.is_empty() => vec![text(s)],
        Some(Value::Array(items)) if !items.is_empty() => match &items[0] {
            Value::String(_) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) if !s.is_empty() => Ok(text(s)),
                    _ => Err(wrong()),
                })
                .collect::<Result<_, _>>()?,
            Value::Number(_) => vec![tokens(items)?],
            Value::Array(_) => items
                .iter()
                .map(|i| match i {
                    Value::Array(ids) if !ids.is_empty() => tokens(ids),
                    _ => Err(wrong()),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(wrong()),
        },
        v if absent(v) => return Err(OpenAiError::invalid("input", "'input' is required")),
        _ => return Err(wrong()),
    };
    let dimensions = match positive(&body, "dimensions")? {
        Some(d) if d > MAX_EMBEDDING_DIMENSIONS => {
            return Err(OpenAiError::invalid(
                "dimensions",
                format!("'dimensions' must be at most {MAX_EMBEDDING_DIMENSIONS}"),
            ));
        }
        Some(d) => usize::try_from(d).unwrap_or(EMBEDDING_DIMENSIONS),
        None => EMBEDDING_DIMENSIONS,
    };
    let base64 = match body.get("encoding_format") {
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        v if absent(v) => false,
        _ => {
            return Err(OpenAiError::invalid(
                "encoding_format",
                "'encoding_format' must be 'float' or 'base64'",
            ));
        }
    };
    Ok(Embedding {
        model,
        inputs,
        dimensions,
        base64,
    })
}

/// A unit vector of `n` floats drawn from `seed`'s FNV-1a hash.
fn vector(seed: &[u8], n: usize) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut v: Vec<f32> = (0..n)
        .map(|_| {
            // xorshift64*
            h ^= h >> 12;
            h ^= h << 25;
            h ^= h >> 27;
            let x = h.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
            (x as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

async fn embeddings(State(sim): State<Arc<Sim>>, body: Result<Bytes, BytesRejection>) -> Response {
    let job = match parse_embedding(body) {
        Ok(job) => job,
        Err(e) => return e.into_response(),
    };
    // One forward pass: a slot for the time of one token.
    let Ok(permit) = sim.permits.clone().acquire_owned().await else {
        return closed().into_response();
    };
    let tps = sim.config.tokens_per_second;
    if tps > 0.0 {
        tokio::time::sleep_until(deadline(Instant::now(), 1, tps)).await;
    }
    drop(permit);
    let data: Vec<Value> = job
        .inputs
        .iter()
        .enumerate()
        .map(|(i, (seed, _))| {
            let v = vector(seed, job.dimensions);
            let embedding = if job.base64 {
                use base64::Engine as _;
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens: u64 = job.inputs.iter().map(|(_, t)| t).sum();
    Json(json!({
        "object": "list",
        "data": data,
        "model": job.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response()
}

async fn messages(State(sim): State<Arc<Sim>>, body: Result<Bytes, BytesRejection>) -> Response {
    let refuse = |e: OpenAiError| {
        (
            e.status,
            Json(crate::anthropic::error_body(e.status.as_u16(), &e.message)),
        )
            .into_response()
    };
    let mut body = match body_object(body) {
        Ok(b) => b,
        Err(e) => return refuse(e),
    };
    if absent(body.get("max_tokens")) {
        return refuse(OpenAiError::invalid(
            "max_tokens",
            "max_tokens: Field required",
        ));
    }
    // What it does not model it ignores, as a real server would honour it.
    body.retain(|k, _| crate::anthropic::KNOWN.contains(&k.as_str()));
    let mut chat = match crate::anthropic::to_chat(&body) {
        Ok(c) => c,
        Err(e) => return refuse(OpenAiError::invalid(&e.field, e.message)),
    };
    if chat.get("stream") == Some(&Value::Bool(true)) {
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let chat = Bytes::from(serde_json::to_vec(&chat).unwrap_or_default());
    let res = answer(sim, Kind::Chat, Ok(chat)).await;
    let (parts, body) = res.into_parts();
    if !parts.status.is_success() {
        return crate::gateway::messages::in_anthropic_shape(parts, body).await;
    }
    crate::gateway::messages::translate_answer::<crate::anthropic::StreamTranslator>(parts, body)
        .await
}

async fn responses(State(sim): State<Arc<Sim>>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body_object(body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let mut chat = match crate::responses::to_chat(&body) {
        Ok(c) => c,
        Err(e) => return OpenAiError::invalid(&e.field, e.message).into_response(),
    };
    if chat.get("stream") == Some(&Value::Bool(true)) {
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let chat = Bytes::from(serde_json::to_vec(&chat).unwrap_or_default());
    let res = answer(sim, Kind::Chat, Ok(chat)).await;
    if !res.status().is_success() {
        return res;
    }
    let (parts, body) = res.into_parts();
    crate::gateway::messages::translate_answer::<crate::responses::StreamTranslator>(parts, body)
        .await
}

// ---------------------------------------------------------------- faults

/// Middleware of the inference routes: fails the request as the fault
/// says, or passes it on.
async fn inject_fault(State(sim): State<Arc<Sim>>, req: Request, next: Next) -> Response {
    let fault = sim.fault();
    match fault.mode {
        FaultMode::None => next.run(req).await,
        FaultMode::Error => {
            let status =
                StatusCode::from_u16(fault.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let message = format!(
                "simulated fault: this simulator answers {} (PUT {FAULT_PATH} to change it)",
                status.as_u16()
            );
            if req.uri().path() == "/v1/messages" {
                return (
                    status,
                    Json(crate::anthropic::error_body(status.as_u16(), &message)),
                )
                    .into_response();
            }
            let kind = match status {
                StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
                s if s.is_server_error() => "server_error",
                _ => "invalid_request_error",
            };
            OpenAiError::new(status, kind, Some("simulated_fault"), message).into_response()
        }
        FaultMode::Close => {
            tracing::debug!("simulated fault: closing the connection");
            // A body that fails before its first byte: hyper drops the
            // connection without writing the (still buffered) head.
            let failing = futures_util::stream::once(async {
                Err::<Bytes, _>(std::io::Error::other("simulated fault: connection closed"))
            });
            Body::from_stream(failing).into_response()
        }
        FaultMode::Hang => {
            tracing::debug!("simulated fault: hanging");
            // The body read to its end, hyper watches the connection and
            // drops this future when the client goes away.
            let _ = axum::body::to_bytes(req.into_body(), BODY_LIMIT).await;
            std::future::pending::<Response>().await
        }
    }
}

async fn get_fault(State(sim): State<Arc<Sim>>) -> Json<Value> {
    Json(sim.fault().to_json())
}

async fn put_fault(State(sim): State<Arc<Sim>>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body_object(body) {
        Ok(b) => Value::Object(b),
        Err(e) => return e.into_response(),
    };
    match Fault::from_json(&body) {
        Ok(fault) => {
            sim.set_fault(fault);
            tracing::info!(
                mode = fault.mode.as_str(),
                status = fault.status,
                "simulator fault set"
            );
            Json(fault.to_json()).into_response()
        }
        Err(e) => OpenAiError::from_core(&e).into_response(),
    }
}

async fn models() -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": MODEL_ID,
            "object": "model",
            "created": 0,
            "owned_by": "maas",
        }],
    }))
}

async fn health() -> Json<Health> {
    Json(Health::OK)
}

async fn not_found(uri: axum::extract::OriginalUri) -> OpenAiError {
    OpenAiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("not_found"),
        format!("no route '{}'", crate::common::unrouted_path(&uri)),
    )
}

async fn method_not_allowed() -> OpenAiError {
    OpenAiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        Some("method_not_allowed"),
        "method not allowed on this route",
    )
}

fn closed() -> OpenAiError {
    OpenAiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        Some("service_unavailable"),
        "the simulator is shutting down",
    )
}

async fn answer(sim: Arc<Sim>, kind: Kind, body: Result<Bytes, BytesRejection>) -> Response {
    let job = match parse(kind, body, &sim.config) {
        Ok(job) => job,
        Err(e) => return e.into_response(),
    };
    tracing::debug!(
        model = %job.model,
        prompt_tokens = job.prompt_tokens,
        completion_tokens = job.completion_tokens,
        stream = job.stream,
        "simulated request"
    );
    if job.stream {
        return streamed(sim, job);
    }
    // Dropped with the future when the client goes away.
    let Ok(permit) = sim.permits.clone().acquire_owned().await else {
        return closed().into_response();
    };
    let tps = sim.config.tokens_per_second;
    if tps > 0.0 {
        tokio::time::sleep_until(deadline(Instant::now(), job.completion_tokens, tps)).await;
    }
    drop(permit);
    Json(job.answer()).into_response()
}

/// Where a streamed answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Waiting for a generation slot.
    Queued,
    /// Token `i` (from 0) comes next.
    Token(u64),
    /// The chunk with the finish reason comes next.
    Finish,
    /// The usage chunk comes next.
    Usage,
    /// `[DONE]` comes next.
    Done,
    /// Nothing more.
    End,
}

/// The state of a streamed answer; the permit lives here, so dropping the
/// body gives the slot back.
#[derive(Debug)]
struct Streamer {
    sim: Arc<Sim>,
    job: Job,
    step: Step,
    permit: Option<OwnedSemaphorePermit>,
    start: Instant,
}

fn event(data: &Value) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_default();
    Bytes::from(format!("data: {json}\n\n"))
}

impl Streamer {
    /// The next event, or `None` at the end.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            match self.step {
                Step::Queued => {
                    let permit = self.sim.permits.clone().acquire_owned().await.ok()?;
                    self.permit = Some(permit);
                    self.start = Instant::now();
                    self.step = if self.job.completion_tokens > 0 {
                        Step::Token(0)
                    } else {
                        Step::Finish
                    };
                }
                Step::Token(i) => {
                    let tps = self.sim.config.tokens_per_second;
                    if tps > 0.0 {
                        tokio::time::sleep_until(deadline(self.start, i.saturating_add(1), tps))
                            .await;
                    }
                    let chunk = self.job.token_chunk(i);
                    if i.saturating_add(1) < self.job.completion_tokens {
                        self.step = Step::Token(i.saturating_add(1));
                    } else {
                        // The last token: the slot is free for the next.
                        self.permit = None;
                        self.step = Step::Finish;
                    }
                    return Some(event(&chunk));
                }
                Step::Finish => {
                    self.permit = None;
                    self.step = if self.job.include_usage {
                        Step::Usage
                    } else {
                        Step::Done
                    };
                    return Some(event(&self.job.finish_chunk()));
                }
                Step::Usage => {
                    self.step = Step::Done;
                    return Some(event(&self.job.usage_chunk()));
                }
                Step::Done => {
                    self.step = Step::End;
                    return Some(Bytes::from_static(b"data: [DONE]\n\n"));
                }
                Step::End => return None,
            }
        }
    }
}

fn streamed(sim: Arc<Sim>, job: Job) -> Response {
    let streamer = Streamer {
        sim,
        job,
        step: Step::Queued,
        permit: None,
        start: Instant::now(),
    };
    let events = futures_util::stream::unfold(streamer, |mut s| async move {
        let bytes = s.next().await?;
        Some((Ok::<_, Infallible>(bytes), s))
    });
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(events),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated() {
        assert!(SimulatorConfig::default().validate().is_ok());
        let bad = |c: SimulatorConfig| match c.validate() {
            Err(Error::InvalidInput { field, .. }) => field.into_owned(),
            other => panic!("{other:?}"),
        };
        let base = SimulatorConfig::default();
        for tps in [f64::NAN, f64::INFINITY, -1.0] {
            let c = SimulatorConfig {
                tokens_per_second: tps,
                ..base.clone()
            };
            assert_eq!(bad(c), "tokens_per_second");
        }
        for max_concurrent in [0, usize::MAX] {
            let c = SimulatorConfig {
                max_concurrent,
                ..base.clone()
            };
            assert_eq!(bad(c), "max_concurrent");
        }
        for default_max_tokens in [0, MAX_COMPLETION_TOKENS + 1] {
            let c = SimulatorConfig {
                default_max_tokens,
                ..base.clone()
            };
            assert_eq!(bad(c), "default_max_tokens");
        }
        for status in [200, 399, 600] {
            let c = SimulatorConfig {
                fault: Fault::error(status),
                ..base.clone()
            };
            assert_eq!(bad(c), "fault.status");
        }
        assert!(
            router(SimulatorConfig {
                max_concurrent: 0,
                ..base
            })
            .is_err()
        );
    }

    #[test]
    fn faults_read_and_write_their_json() {
        for mode in FaultMode::ALL {
            assert_eq!(FaultMode::from_name(mode.as_str()), Some(mode));
            let f = Fault::new(mode);
            assert_eq!(Fault::from_json(&f.to_json()).ok(), Some(f));
        }
        assert_eq!(FaultMode::from_name("None"), None);
        assert_eq!(
            Fault::from_json(&json!({"mode": "error", "status": 502})).ok(),
            Some(Fault::error(502))
        );
        assert_eq!(
            Fault::from_json(&json!({"mode": "hang", "status": null})).ok(),
            Some(Fault::new(FaultMode::Hang))
        );
        assert_eq!(Fault::default(), Fault::NONE);
    }

    #[test]
    fn deadlines_are_bounded_and_exact() {
        let start = Instant::now();
        assert_eq!(deadline(start, 3, 10.0), start + Duration::from_millis(300));
        assert_eq!(deadline(start, 0, 10.0), start);
        // A vanishing rate waits long, but does not overflow.
        let far = deadline(start, MAX_COMPLETION_TOKENS, f64::MIN_POSITIVE);
        assert_eq!(far, start + Duration::from_secs_f64(MAX_DELAY_SECS));
    }

    #[test]
    fn tokens_cycle_the_words() {
        assert_eq!(token(0), "lorem ");
        assert_eq!(token(1), "ipsum ");
        assert_eq!(token(WORDS.len() as u64), "lorem ");
    }
}
