//! What the layer reads from, and changes in, an OpenAI request body.

use std::borrow::Cow;

use bytes::Bytes;
use maas_core::admission::estimate_prompt_tokens;
use maas_core::gateway::CacheKey;
use serde_json::{Map, Value};

use super::error::GatewayError;
use super::peek::{Edit, Input, Mode, New, Peeked, Scalar, peek};

/// Which OpenAI API a request is for, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
    /// `/v1/embeddings`.
    Embeddings,
    /// `/v1/messages` (Anthropic's Messages, translated to a chat
    /// completion: [`crate::anthropic`]).
    Messages,
    /// `/v1/responses` (OpenAI's Responses API, translated to a chat
    /// completion: [`crate::responses`]).
    Responses,
}

impl Endpoint {
    /// The endpoint of a request path (`/v1/…` or `/{model}/v1/…`); chat
    /// for any other.
    pub fn of_path(path: &str) -> Self {
        if path.ends_with("/v1/embeddings") {
            Endpoint::Embeddings
        } else if path.ends_with("/v1/messages") {
            Endpoint::Messages
        } else if path.ends_with("/v1/responses") {
            Endpoint::Responses
        } else if path.ends_with("/v1/completions") {
            Endpoint::Completions
        } else {
            Endpoint::Chat
        }
    }

    /// The path to call on the model's upstream.
    pub fn upstream_path(self) -> &'static str {
        match self {
            Endpoint::Chat | Endpoint::Messages | Endpoint::Responses => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
        }
    }
}

/// A request body as admission reads it.
// Boxing the large variant would cost the allocation the borrowed pass
// saves; a `Body` is moved a few times per request, within `admit`'s future.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Body<'a> {
    /// Read in one borrowed pass: forwarded as sent, but for the values
    /// the gateway splices in.
    Raw(Peeked<'a>),
    /// A JSON object: the chat completion a Messages or Responses request
    /// translates to, or a body the borrowed pass left to serde_json's
    /// `Map`. Forwarded as written again.
    Object(Map<String, Value>),
}

/// The facts of a request body admission needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inspected<'a> {
    /// The API it is for.
    pub endpoint: Endpoint,
    /// A Messages request for an upstream that speaks Anthropic's API: the
    /// body is Anthropic's, forwarded as it is (but for `model` and the
    /// capped `max_tokens`) to `/v1/messages`.
    pub native: bool,
    /// The body.
    pub body: Body<'a>,
    /// `model`, if the body has one.
    pub model: Option<Cow<'a, str>>,
    /// `stream`.
    pub stream: bool,
    /// The client's `max_completion_tokens` or `max_tokens`.
    pub max_tokens: Option<u64>,
    /// Whether the client asked for the usage chunk of a stream.
    pub wants_usage: bool,
    /// Estimated prompt tokens.
    pub prompt_tokens: u64,
}

fn bytes_of_content(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p {
                Value::String(s) => s.len(),
                Value::Object(o) => o.get("text").and_then(Value::as_str).map_or(0, str::len),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// The tokens of an embeddings `input`: a string (estimated from its
/// size), an array of strings, an array of token ids (counted) or an array
/// of such arrays; `None` if it is none of these.
fn embedding_tokens(input: &Value) -> Option<u64> {
    let ids =
        |v: &[Value]| (!v.is_empty() && v.iter().all(Value::is_u64)).then_some(v.len() as u64);
    match input {
        Value::String(s) if !s.is_empty() => Some(estimate_prompt_tokens(s.len()).max(1)),
        Value::Array(items) if !items.is_empty() => match &items[0] {
            Value::Number(_) => ids(items),
            _ => items.iter().try_fold(0u64, |sum, i| {
                let n = match i {
                    Value::String(s) if !s.is_empty() => estimate_prompt_tokens(s.len()).max(1),
                    Value::Array(v) => ids(v)?,
                    _ => return None,
                };
                Some(sum.saturating_add(n))
            }),
        },
        _ => None,
    }
}

/// Reads `body` whole, at most `limit` bytes (past it: the error is
/// [`LengthLimitError`](http_body_util::LengthLimitError)); trailers are
/// ignored. A body in one part (the usual: a small request, the layer's
/// rewritten one) is that part as it is: no list of parts, no copy.
pub(crate) async fn read_whole<B>(body: B, limit: usize) -> Result<Bytes, tower::BoxError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<tower::BoxError>,
{
    use http_body_util::BodyExt as _;
    let mut body = std::pin::pin!(http_body_util::Limited::new(body, limit));
    let mut first: Option<Bytes> = None;
    let mut joined: Option<bytes::BytesMut> = None;
    while let Some(frame) = body.as_mut().frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        match (&first, &mut joined) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let mut all = bytes::BytesMut::with_capacity(f.len() + data.len());
                all.extend_from_slice(f);
                all.extend_from_slice(&data);
                joined = Some(all);
            }
            (Some(_), Some(all)) => all.extend_from_slice(&data),
        }
    }
    Ok(match joined {
        Some(all) => all.freeze(),
        None => first.unwrap_or_default(),
    })
}

/// Reads `bytes` as a request of `endpoint` (a Messages one for an upstream
/// that speaks OpenAI's API). Only what admission needs is checked; the
/// upstream judges the rest.
#[cfg(test)]
pub(crate) fn inspect(bytes: &[u8], endpoint: Endpoint) -> Result<Inspected<'_>, GatewayError> {
    inspect_read(read(bytes, endpoint)?, endpoint, false)
}

/// A request body, read: in one borrowed pass where it is forwarded as it
/// was sent, as a JSON object where it is translated.
#[allow(clippy::large_enum_variant)] // As `Body`.
#[derive(Debug)]
pub(crate) enum Read<'a> {
    /// Read in one borrowed pass.
    Peeked(Peeked<'a>),
    /// Parsed into a JSON object: a Responses body (and, in theory, one the
    /// borrowed pass could not read that serde_json's `Map` takes).
    Object(Map<String, Value>),
}

impl Read<'_> {
    /// The body's `model`, if it is a string.
    pub(crate) fn model(&self) -> Option<&str> {
        match self {
            Read::Peeked(p) => match &p.model {
                Scalar::Str(m) => Some(m),
                _ => None,
            },
            Read::Object(body) => body.get("model").and_then(Value::as_str),
        }
    }
}

/// Reads the body of a request of `endpoint`: a JSON object, or the 400
/// that says why it is not one.
pub(crate) fn read(bytes: &[u8], endpoint: Endpoint) -> Result<Read<'_>, GatewayError> {
    let mode = match endpoint {
        Endpoint::Chat | Endpoint::Completions => Mode::Chat,
        Endpoint::Embeddings => Mode::Embeddings,
        // Read natively or translated: which, the model's catalog entry
        // says (`inspect_read`).
        Endpoint::Messages => Mode::Messages,
        Endpoint::Responses => return parse(bytes).map(Read::Object),
    };
    match peek(bytes, mode) {
        Ok(p) => Ok(Read::Peeked(p)),
        // serde_json's own words for what is wrong (and should the pass
        // ever refuse what serde_json takes, the object it reads).
        Err(_) => parse(bytes).map(Read::Object),
    }
}

/// A request body as a JSON object.
pub(crate) fn parse(bytes: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(GatewayError::invalid(
            "body",
            "the body must be a JSON object",
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| GatewayError::invalid("body", format!("the body is not valid JSON: {e}")))
}

/// Inspects a body read for `endpoint`; `native`: a Messages request for
/// an upstream that speaks Anthropic's API.
pub(crate) fn inspect_read(
    read: Read<'_>,
    endpoint: Endpoint,
    native: bool,
) -> Result<Inspected<'_>, GatewayError> {
    match read {
        Read::Object(body) if native => inspect_native(body),
        Read::Object(body) => inspect_object(body, endpoint),
        Read::Peeked(p) if native => inspect_native_peeked(p),
        // Translated: a new body, built from the object.
        Read::Peeked(p) if matches!(endpoint, Endpoint::Messages | Endpoint::Responses) => {
            inspect_object(parse(p.bytes)?, endpoint)
        }
        Read::Peeked(p) => inspect_peeked(p, endpoint),
    }
}

/// [`model_of`] of a body read in the borrowed pass.
fn peeked_model<'a>(model: Scalar<'a>) -> Result<Option<Cow<'a, str>>, GatewayError> {
    match model {
        Scalar::Absent | Scalar::Null => Ok(None),
        Scalar::Str(m) if !m.is_empty() => Ok(Some(m)),
        _ => Err(model_not_string()),
    }
}

/// [`stream_of`] of a body read in the borrowed pass.
fn peeked_stream(stream: &Scalar<'_>) -> Result<bool, GatewayError> {
    match stream {
        Scalar::Absent | Scalar::Null => Ok(false),
        Scalar::Bool(b) => Ok(*b),
        _ => Err(stream_not_boolean()),
    }
}

/// [`inspect_native`] of a body read in the borrowed pass.
fn inspect_native_peeked(mut p: Peeked<'_>) -> Result<Inspected<'_>, GatewayError> {
    let model = peeked_model(std::mem::take(&mut p.model))?;
    let max_tokens = match p.max_tokens {
        Scalar::Unsigned(n) if n > 0 => n,
        Scalar::Absent => {
            return Err(max_tokens_required());
        }
        _ => {
            return Err(not_positive("max_tokens"));
        }
    };
    let stream = peeked_stream(&p.stream)?;
    let (bytes, turns) = p.messages.unwrap_or((0, 0));
    let prompt_tokens = estimate_prompt_tokens(p.system + bytes)
        .saturating_add(3 * turns as u64)
        .max(1);
    Ok(Inspected {
        endpoint: Endpoint::Messages,
        native: true,
        body: Body::Raw(p),
        model,
        stream,
        max_tokens: Some(max_tokens),
        wants_usage: true,
        prompt_tokens,
    })
}

/// [`inspect_object`] of a chat, completions or embeddings body read in the
/// borrowed pass.
fn inspect_peeked(mut p: Peeked<'_>, endpoint: Endpoint) -> Result<Inspected<'_>, GatewayError> {
    let model = peeked_model(std::mem::take(&mut p.model))?;
    if endpoint == Endpoint::Embeddings {
        let prompt_tokens = match p.input {
            Input::Absent | Input::Null => {
                return Err(input_required());
            }
            Input::Tokens(t) => t.ok_or_else(input_unreadable)?,
        };
        return Ok(Inspected {
            endpoint,
            native: false,
            body: Body::Raw(p),
            model,
            stream: false,
            max_tokens: Some(1),
            wants_usage: false,
            prompt_tokens,
        });
    }
    let stream = peeked_stream(&p.stream)?;
    let mut max_tokens = None;
    for (field, value) in [
        ("max_tokens", &p.max_tokens),
        ("max_completion_tokens", &p.max_completion_tokens),
    ] {
        match value {
            Scalar::Absent | Scalar::Null => {}
            Scalar::Unsigned(n) if *n > 0 => max_tokens = Some(*n),
            _ => {
                return Err(not_positive(field));
            }
        }
    }
    let wants_usage = p.stream_options.usage();
    let (text, messages) = p.messages.unwrap_or((0, 0));
    let text = text + p.prompt;
    let prompt_tokens = chat_prompt_tokens(text, messages);
    Ok(Inspected {
        endpoint,
        native: false,
        body: Body::Raw(p),
        model,
        stream,
        max_tokens,
        wants_usage,
        prompt_tokens,
    })
}

/// The body's `model`, if it names one.
fn model_of(body: &Map<String, Value>) -> Result<Option<String>, GatewayError> {
    match body.get("model") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(m)) if !m.is_empty() => Ok(Some(m.clone())),
        Some(_) => Err(model_not_string()),
    }
}

/// The body's `stream` (absent: false).
fn stream_of(body: &Map<String, Value>) -> Result<bool, GatewayError> {
    match body.get("stream") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(stream_not_boolean()),
    }
}

/// The text bytes and turns of an Anthropic Messages body (its `system`,
/// text blocks and tool results), for the prompt estimate.
fn anthropic_text(body: &Map<String, Value>) -> (usize, usize) {
    fn text(v: &Value) -> usize {
        match v {
            Value::String(s) => s.len(),
            Value::Array(blocks) => blocks
                .iter()
                .map(|b| {
                    b.get("text").map_or(0, text)
                        + b.get("content").map_or(0, text)
                        + b.get("input").map_or(0, |i| i.to_string().len())
                })
                .sum(),
            _ => 0,
        }
    }
    let system = body.get("system").map_or(0, text);
    let (bytes, turns) = match body.get("messages") {
        Some(Value::Array(ms)) => (
            ms.iter().map(|m| m.get("content").map_or(0, text)).sum(),
            ms.len(),
        ),
        _ => (0, 0),
    };
    (system + bytes, turns)
}

/// Reads a Messages request for an upstream that speaks Anthropic's API:
/// checked for what admission needs, kept as it is.
pub(crate) fn inspect_native<'a>(body: Map<String, Value>) -> Result<Inspected<'a>, GatewayError> {
    let model = model_of(&body)?.map(Cow::Owned);
    let max_tokens = match body.get("max_tokens") {
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => n,
            _ => {
                return Err(not_positive("max_tokens"));
            }
        },
        None => {
            return Err(max_tokens_required());
        }
    };
    let stream = stream_of(&body)?;
    let (bytes, turns) = anthropic_text(&body);
    Ok(Inspected {
        endpoint: Endpoint::Messages,
        native: true,
        body: Body::Object(body),
        model,
        stream,
        max_tokens: Some(max_tokens),
        wants_usage: true,
        prompt_tokens: estimate_prompt_tokens(bytes)
            .saturating_add(3 * turns as u64)
            .max(1),
    })
}

/// [`inspect`] of a body already parsed.
pub(crate) fn inspect_object<'a>(
    body: Map<String, Value>,
    endpoint: Endpoint,
) -> Result<Inspected<'a>, GatewayError> {
    let model = model_of(&body)?.map(Cow::Owned);
    if endpoint == Endpoint::Messages {
        // Anthropic requires max_tokens; the rest is read as the chat
        // completion it translates to. The usage chunk is kept: the
        // answer's translation reads it.
        match body.get("max_tokens") {
            Some(v) if v.as_u64().is_some_and(|n| n > 0) => {}
            None | Some(Value::Null) => {
                return Err(max_tokens_required());
            }
            Some(_) => {
                return Err(not_positive("max_tokens"));
            }
        }
        let chat = crate::anthropic::to_chat(&body)
            .map_err(|e| GatewayError::invalid(&e.field, e.message))?;
        let mut i = inspect_object(chat, Endpoint::Chat)?;
        i.endpoint = Endpoint::Messages;
        i.wants_usage = true;
        return Ok(i);
    }
    if endpoint == Endpoint::Responses {
        // Read as the chat completion it translates to (`max_output_tokens`
        // becomes its capped `max_tokens`); the usage chunk is kept for the
        // answer's translation.
        let chat = crate::responses::to_chat(&body)
            .map_err(|e| GatewayError::invalid(&e.field, e.message))?;
        let mut i = inspect_object(chat, Endpoint::Chat).map_err(|mut e| {
            if e.error.param.as_deref() == Some("max_tokens") {
                e.error.param = Some("max_output_tokens".into());
                e.error.message = "'max_output_tokens' must be a positive integer".into();
            }
            e
        })?;
        i.endpoint = Endpoint::Responses;
        i.wants_usage = true;
        return Ok(i);
    }
    if endpoint == Endpoint::Embeddings {
        // One forward pass: the input is what is served; one output token
        // is reserved (admission reserves at least one) and given back.
        let prompt_tokens = match body.get("input") {
            None | Some(Value::Null) => {
                return Err(input_required());
            }
            Some(v) => embedding_tokens(v).ok_or_else(input_unreadable)?,
        };
        return Ok(Inspected {
            endpoint,
            native: false,
            body: Body::Object(body),
            model,
            stream: false,
            max_tokens: Some(1),
            wants_usage: false,
            prompt_tokens,
        });
    }
    let stream = stream_of(&body)?;
    let mut max_tokens = None;
    for field in ["max_tokens", "max_completion_tokens"] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => max_tokens = Some(n),
                _ => {
                    return Err(not_positive(field));
                }
            },
        }
    }
    let wants_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut text = 0usize;
    let mut messages = 0usize;
    if let Some(Value::Array(ms)) = body.get("messages") {
        messages = ms.len();
        text = ms
            .iter()
            .map(|m| m.get("content").map_or(0, bytes_of_content))
            .sum();
    }
    if let Some(p) = body.get("prompt") {
        text += bytes_of_content(p);
    }
    let prompt_tokens = chat_prompt_tokens(text, messages);
    Ok(Inspected {
        endpoint,
        native: false,
        body: Body::Object(body),
        model,
        stream,
        max_tokens,
        wants_usage,
        prompt_tokens,
    })
}

impl Inspected<'_> {
    /// The response cache's key of the body: of the translated body for a
    /// Messages or Responses request, else of the body sent (parsed again,
    /// only for models with a response cache).
    pub(crate) fn cache_key(&self) -> Option<CacheKey> {
        match &self.body {
            Body::Object(body) => Some(CacheKey::of_object(body)),
            Body::Raw(p) => serde_json::from_slice::<Map<String, Value>>(p.bytes)
                .ok()
                .map(|body| CacheKey::of_object(&body)),
        }
    }
}

/// The body to forward: the model named, output capped at what was
/// reserved, and a stream asked to report its usage.
pub(crate) fn rewrite(i: Inspected<'_>, model: &str, max_output: u64) -> Vec<u8> {
    let capped = i.max_tokens.map_or(max_output, |m| m.min(max_output));
    match i.body {
        Body::Raw(p) => splice(&p, i.endpoint, i.native, i.stream, model, capped),
        Body::Object(body) => rewrite_object(body, i.endpoint, i.native, i.stream, model, capped),
    }
}

/// [`rewrite`] of a body read in the borrowed pass: the body sent with the
/// values it changes spliced in; `capped`: the output cap.
fn splice(
    p: &Peeked<'_>,
    endpoint: Endpoint,
    native: bool,
    stream: bool,
    model: &str,
    capped: u64,
) -> Vec<u8> {
    let model = Edit {
        key: "model",
        value: New::Str(model),
        at: &p.model_at,
    };
    if endpoint == Endpoint::Embeddings {
        // Passed on as sent (`encoding_format`, `dimensions`, …).
        return p.splice(&[model]);
    }
    let capped = New::Unsigned(capped);
    if native {
        // Anthropic's body as sent, its output capped.
        return p.splice(&[
            model,
            Edit {
                key: "max_tokens",
                value: capped,
                at: &p.max_tokens_at,
            },
        ]);
    }
    let cap = if p.max_completion_tokens_at.is_empty() {
        Edit {
            key: "max_tokens",
            value: capped,
            at: &p.max_tokens_at,
        }
    } else {
        Edit {
            key: "max_completion_tokens",
            value: capped,
            at: &p.max_completion_tokens_at,
        }
    };
    if stream {
        p.splice(&[
            model,
            cap,
            Edit {
                key: "stream_options",
                value: New::UsageOn,
                at: &p.stream_options_at,
            },
        ])
    } else {
        p.splice(&[model, cap])
    }
}

/// [`rewrite`] of a body held as a JSON object: written again.
fn rewrite_object(
    mut body: Map<String, Value>,
    endpoint: Endpoint,
    native: bool,
    stream: bool,
    model: &str,
    capped: u64,
) -> Vec<u8> {
    body.insert("model".into(), Value::String(model.to_owned()));
    if endpoint == Endpoint::Embeddings {
        // Passed on as sent (`encoding_format`, `dimensions`, …).
        return serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
    }
    if native {
        // Anthropic's body as sent, its output capped.
        body.insert("max_tokens".into(), Value::from(capped));
        return serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
    }
    let field = if body.contains_key("max_completion_tokens") {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    body.insert(field.into(), Value::from(capped));
    if stream {
        let opts = body
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if !opts.is_object() {
            *opts = Value::Object(Map::new());
        }
        if let Value::Object(o) = opts {
            o.insert("include_usage".into(), Value::Bool(true));
        }
    }
    serde_json::to_vec(&Value::Object(body)).unwrap_or_default()
}

/// The prompt tokens of a chat or completions request with `text` bytes of
/// text in `messages` messages: the simulator's rule (and a fair guess for
/// others), a token per 4 bytes and 3 more per message; 1 for none.
fn chat_prompt_tokens(text: usize, messages: usize) -> u64 {
    if text == 0 && messages == 0 {
        1
    } else {
        estimate_prompt_tokens(text).saturating_add(3 * messages as u64)
    }
}

/// 400: `max_tokens` is missing (Anthropic requires it).
fn max_tokens_required() -> GatewayError {
    GatewayError::invalid("max_tokens", "max_tokens: Field required")
}

/// 400: `field` is not a positive integer.
fn not_positive(field: &str) -> GatewayError {
    GatewayError::invalid(field, format!("'{field}' must be a positive integer"))
}

/// 400: `stream` is not a boolean.
fn stream_not_boolean() -> GatewayError {
    GatewayError::invalid("stream", "'stream' must be a boolean")
}

/// 400: `model` is not a non-empty string.
fn model_not_string() -> GatewayError {
    GatewayError::invalid("model", "'model' must be a non-empty string")
}

/// 400: `input` is missing.
fn input_required() -> GatewayError {
    GatewayError::invalid("input", "'input' is required")
}

/// 400: `input` is none of the forms embeddings take.
fn input_unreadable() -> GatewayError {
    GatewayError::invalid(
        "input",
        "'input' must be a non-empty string, an array of strings, an array of token ids or an array of token-id arrays",
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn inspects_and_rewrites() {
        let i = inspect(
            br#"{"model":"m","messages":[{"role":"user","content":"12345678"}],"max_tokens":500,"stream":true}"#,
            Endpoint::Chat,
        )
        .unwrap();
        assert_eq!(i.model.as_deref(), Some("m"));
        assert!(i.stream && !i.wants_usage);
        assert_eq!(i.max_tokens, Some(500));
        assert_eq!(i.prompt_tokens, 2 + 3);
        let out: Value = serde_json::from_slice(&rewrite(i, "m", 100)).unwrap();
        assert_eq!(out["max_tokens"], 100);
        assert_eq!(out["stream_options"]["include_usage"], true);

        let i = inspect(
            br#"{"prompt":"abcd","max_completion_tokens":5}"#,
            Endpoint::Completions,
        )
        .unwrap();
        assert_eq!((i.model, i.max_tokens, i.prompt_tokens), (None, Some(5), 1));
        let i = inspect(br#"{"prompt":["ab","cd"]}"#, Endpoint::Completions).unwrap();
        let out: Value = serde_json::from_slice(&rewrite(i, "x", 7)).unwrap();
        assert_eq!(
            (out["model"].as_str(), out["max_tokens"].as_u64()),
            (Some("x"), Some(7))
        );
    }

    #[test]
    fn refuses_what_admission_cannot_read() {
        for (body, param) in [
            (&b"[]"[..], "body"),
            (b"", "body"),
            (b"{", "body"),
            (br#"{"model":3}"#, "model"),
            (br#"{"model":""}"#, "model"),
            (br#"{"stream":"yes"}"#, "stream"),
            (br#"{"max_tokens":0}"#, "max_tokens"),
            (br#"{"max_tokens":-1}"#, "max_tokens"),
            (br#"{"max_completion_tokens":1.5}"#, "max_completion_tokens"),
        ] {
            let e = inspect(body, Endpoint::Chat).unwrap_err();
            assert_eq!(e.error.param.as_deref(), Some(param), "{body:?}");
        }
        for body in [
            &br#"{"model":"m"}"#[..],
            br#"{"input":""}"#,
            br#"{"input":[]}"#,
            br#"{"input":[1,"a"]}"#,
            br#"{"input":["a",2]}"#,
            br#"{"input":[[1],[]]}"#,
            br#"{"input":{"text":"a"}}"#,
        ] {
            let e = inspect(body, Endpoint::Embeddings).unwrap_err();
            assert_eq!(e.error.param.as_deref(), Some("input"), "{body:?}");
        }
    }

    #[test]
    fn embeddings_count_their_input_and_pass_the_rest_on() {
        for (body, tokens) in [
            (&br#"{"input":"12345678"}"#[..], 2),
            (br#"{"input":["1234","12345678","x"]}"#, 4),
            (br#"{"input":[5,6,7]}"#, 3),
            (br#"{"input":[[5,6],[7]]}"#, 3),
        ] {
            let i = inspect(body, Endpoint::Embeddings).unwrap();
            assert_eq!(
                (i.prompt_tokens, i.max_tokens, i.stream),
                (tokens, Some(1), false)
            );
        }
        let i = inspect(
            br#"{"input":"a","encoding_format":"base64","dimensions":8,"stream":true}"#,
            Endpoint::Embeddings,
        )
        .unwrap();
        let out: Value = serde_json::from_slice(&rewrite(i, "e", 1)).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"model":"e","input":"a","encoding_format":"base64","dimensions":8,"stream":true})
        );
        assert_eq!(Endpoint::of_path("/m/v1/embeddings"), Endpoint::Embeddings);
        assert_eq!(Endpoint::of_path("/v1/chat/completions"), Endpoint::Chat);
        assert_eq!(Endpoint::of_path("/v1/completions"), Endpoint::Completions);
    }
}

/// The borrowed reading and the splice against the `Map`-based reading and
/// rewrite they replace.
#[cfg(test)]
mod borrowed_tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    /// The `Map`-based reading: parsed, then inspected.
    fn old(
        bytes: &[u8],
        endpoint: Endpoint,
        native: bool,
    ) -> Result<Inspected<'static>, GatewayError> {
        let body = parse(bytes)?;
        if native {
            inspect_native(body)
        } else {
            inspect_object(body, endpoint)
        }
    }

    /// The reading `admit` does.
    fn new(bytes: &[u8], endpoint: Endpoint, native: bool) -> Result<Inspected<'_>, GatewayError> {
        inspect_read(read(bytes, endpoint)?, endpoint, native)
    }

    /// What admission uses of an [`Inspected`]: endpoint, native, model,
    /// stream, max tokens, usage asked for, prompt tokens.
    type Facts = (Endpoint, bool, Option<String>, bool, Option<u64>, bool, u64);

    /// The [`Facts`] of `i`.
    fn facts(i: &Inspected<'_>) -> Facts {
        (
            i.endpoint,
            i.native,
            i.model.as_deref().map(str::to_owned),
            i.stream,
            i.max_tokens,
            i.wants_usage,
            i.prompt_tokens,
        )
    }

    /// Checks that both readings agree on `bytes` (the same error, or the
    /// same facts and forwarded bodies that parse to the same value), and
    /// that the splice filled exactly the buffer it allocated. The new
    /// reading's spliced body, when it has one.
    fn same(
        bytes: &[u8],
        endpoint: Endpoint,
        native: bool,
        model: &str,
        max_output: u64,
    ) -> Option<Vec<u8>> {
        match (old(bytes, endpoint, native), new(bytes, endpoint, native)) {
            (Err(a), Err(b)) => {
                assert_eq!(a, b, "{}", String::from_utf8_lossy(bytes));
                None
            }
            (Ok(a), Ok(b)) => {
                assert_eq!(facts(&a), facts(&b), "{}", String::from_utf8_lossy(bytes));
                let translated =
                    !native && matches!(endpoint, Endpoint::Messages | Endpoint::Responses);
                assert_eq!(
                    matches!(b.body, Body::Raw(_)),
                    !translated,
                    "{}",
                    String::from_utf8_lossy(bytes)
                );
                if !translated {
                    assert_eq!(a.cache_key(), b.cache_key());
                }
                let raw = matches!(b.body, Body::Raw(_));
                let (a, b) = (rewrite(a, model, max_output), rewrite(b, model, max_output));
                if raw {
                    assert_eq!(b.len(), b.capacity(), "{}", String::from_utf8_lossy(&b));
                }
                let (va, vb): (Value, Value) = (
                    serde_json::from_slice(&a).unwrap(),
                    serde_json::from_slice(&b)
                        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&b))),
                );
                assert_eq!(va, vb, "{}", String::from_utf8_lossy(bytes));
                raw.then_some(b)
            }
            (a, b) => panic!(
                "{}: the Map reading gives {a:?}, the borrowed one {b:?}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }

    /// The chat body spliced for model `m` with 100 tokens reserved, as
    /// text (checked against the `Map` rewrite).
    fn chat(body: &str) -> String {
        String::from_utf8(same(body.as_bytes(), Endpoint::Chat, false, "m", 100).unwrap()).unwrap()
    }

    #[test]
    fn absent_fields_are_inserted_after_the_brace() {
        assert_eq!(chat("{}"), r#"{"model":"m","max_tokens":100}"#);
        assert_eq!(
            chat(" \n{ }"),
            r#" 
{"model":"m","max_tokens":100 }"#
        );
        assert_eq!(
            chat(r#"{"messages":[]}"#),
            r#"{"model":"m","max_tokens":100,"messages":[]}"#
        );
        assert_eq!(
            chat(r#"{"stream":true}"#),
            r#"{"model":"m","max_tokens":100,"stream_options":{"include_usage":true},"stream":true}"#
        );
        assert_eq!(
            chat(r#"{"stream":false,"stream_options":{"include_usage":false}}"#),
            r#"{"model":"m","max_tokens":100,"stream":false,"stream_options":{"include_usage":false}}"#
        );
    }

    #[test]
    fn values_are_replaced_where_they_are() {
        assert_eq!(
            chat("{ \"model\" :\t\"x\" , \"max_tokens\" :  500 ,\"n\":1}"),
            "{ \"model\" :\t\"m\" , \"max_tokens\" :  100 ,\"n\":1}"
        );
        // The client's cap is kept when it is lower.
        assert_eq!(
            chat(r#"{"max_tokens":7,"model":"x"}"#),
            r#"{"max_tokens":7,"model":"m"}"#
        );
        // Escapes around the values are left as they are.
        assert_eq!(
            chat(r#"{"a\"":"\"","model":"x\"\u00e9","b":"\\","max_tokens":null}"#),
            r#"{"a\"":"\"","model":"m","b":"\\","max_tokens":100}"#
        );
        // A key spelled with escapes is the field.
        assert_eq!(
            chat(r#"{"mod\u0065l":"x","max_tokens":1000}"#),
            r#"{"mod\u0065l":"m","max_tokens":100}"#
        );
    }

    #[test]
    fn every_occurrence_of_a_key_gets_the_value() {
        assert_eq!(
            chat(r#"{"model":"a","max_tokens":5,"model":"b","max_tokens":900}"#),
            r#"{"model":"m","max_tokens":100,"model":"m","max_tokens":100}"#
        );
        // Only the last counts: an invalid first one is not looked at.
        assert_eq!(
            chat(r#"{"max_tokens":0,"max_tokens":50,"stream":"x","stream":true}"#),
            r#"{"model":"m","stream_options":{"include_usage":true},"max_tokens":50,"max_tokens":50,"stream":"x","stream":true}"#
        );
        // The last stream_options, its include_usage set, everywhere.
        assert_eq!(
            chat(
                r#"{"stream":true,"stream_options":{"include_usage":false},"stream_options":{"a":1,"include_usage":false,"include_usage":0}}"#
            ),
            r#"{"model":"m","max_tokens":100,"stream":true,"stream_options":{"a":1,"include_usage":true,"include_usage":true},"stream_options":{"a":1,"include_usage":true,"include_usage":true}}"#
        );
    }

    #[test]
    fn stream_options_get_include_usage() {
        for (options, spliced, usage) in [
            ("5", r#"{"include_usage":true}"#, false),
            ("null", r#"{"include_usage":true}"#, false),
            (
                r#"[{"include_usage":true}]"#,
                r#"{"include_usage":true}"#,
                false,
            ),
            ("{}", r#"{"include_usage":true}"#, false),
            ("{ }", r#"{"include_usage":true }"#, false),
            (
                r#"{"x":{"include_usage":1}}"#,
                r#"{"include_usage":true,"x":{"include_usage":1}}"#,
                false,
            ),
            (
                r#"{"include_usage":false}"#,
                r#"{"include_usage":true}"#,
                false,
            ),
            (
                r#"{ "include_usage" : null }"#,
                r#"{ "include_usage" : true }"#,
                false,
            ),
            (
                r#"{"include_usage":true,"y":2}"#,
                r#"{"include_usage":true,"y":2}"#,
                true,
            ),
        ] {
            let body = format!(r#"{{"model":"x","stream":true,"stream_options":{options}}}"#);
            assert_eq!(
                inspect(body.as_bytes(), Endpoint::Chat)
                    .unwrap()
                    .wants_usage,
                usage
            );
            assert_eq!(
                chat(&body),
                format!(
                    r#"{{"max_tokens":100,"model":"m","stream":true,"stream_options":{spliced}}}"#
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn max_completion_tokens_is_preferred() {
        assert_eq!(
            chat(r#"{"max_tokens":50,"max_completion_tokens":null}"#),
            r#"{"model":"m","max_tokens":50,"max_completion_tokens":50}"#
        );
        assert_eq!(
            chat(r#"{"max_completion_tokens":500,"max_tokens":20}"#),
            r#"{"model":"m","max_completion_tokens":100,"max_tokens":20}"#
        );
    }

    #[test]
    fn the_model_is_written_escaped() {
        let model = "a\"b\\c\n\u{1}\u{7f}é😀/";
        let out = same(br#"{"model":"x"}"#, Endpoint::Chat, false, model, 9).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                r#"{{"max_tokens":9,"model":{}}}"#,
                serde_json::to_string(model).unwrap()
            )
        );
        let out = same(b"{}", Endpoint::Embeddings, false, model, 9);
        assert_eq!(out, None, "embeddings need an input");
        let out = same(br#"{"input":"a"}"#, Endpoint::Embeddings, false, model, 9).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                r#"{{"model":{},"input":"a"}}"#,
                serde_json::to_string(model).unwrap()
            )
        );
    }

    #[test]
    fn embeddings_and_native_messages_change_only_their_fields() {
        let out = same(
            br#"{"input":[1,2],"stream":"x","max_tokens":0,"model":"e"}"#,
            Endpoint::Embeddings,
            false,
            "m",
            1,
        )
        .unwrap();
        assert_eq!(
            out,
            br#"{"input":[1,2],"stream":"x","max_tokens":0,"model":"m"}"#
        );
        let out = same(
            br#"{"model":"c","max_tokens":4096,"stream":true,"stream_options":5,"max_completion_tokens":3,"system":"abcd","messages":[{"role":"user","content":[{"type":"text","text":"12345678"},{"type":"tool_use","input":{"b":[1.0,2],"a":"\u00e9"}}]}]}"#,
            Endpoint::Messages,
            true,
            "m",
            1000,
        )
        .unwrap();
        assert_eq!(
            out,
            br#"{"model":"m","max_tokens":1000,"stream":true,"stream_options":5,"max_completion_tokens":3,"system":"abcd","messages":[{"role":"user","content":[{"type":"text","text":"12345678"},{"type":"tool_use","input":{"b":[1.0,2],"a":"\u00e9"}}]}]}"#
        );
    }

    #[test]
    fn refusals_are_the_maps() {
        let mut deep_options = String::from(r#"{"model":"m","stream":true,"stream_options":"#);
        let mut deep_model = String::from(r#"{"model":"#);
        let mut deep_usage = String::from(r#"{"stream_options":{"include_usage":"#);
        let mut deep_other = String::from(r#"{"x":"#);
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        for n in 1..=128 {
            deep_options.push('[');
            deep_model.push('[');
            deep_usage.push('[');
            deep_other.push('[');
            if n >= 120 {
                let close = "]".repeat(n);
                bodies.push(format!("{deep_options}{close}}}").into_bytes());
                bodies.push(format!("{deep_model}{close}}}").into_bytes());
                bodies.push(format!("{deep_usage}{close}}}}}").into_bytes());
                bodies.push(format!("{deep_other}{close}}}").into_bytes());
            }
        }
        for body in [
            &b""[..],
            b"  ",
            b"[]",
            b"\x0c{}",
            b"{",
            b"{}}",
            b"{} x",
            br#"{"model":"m",}"#,
            br#"{"model":"\ud800"}"#,
            br#"{"x":"\ud800"}"#,
            br#"{"messages":[{"content":"\udc00"}]}"#,
            br#"{"stream_options":{"include_usage":"\ud800"}}"#,
            br#"{"x":1e400}"#,
            br#"{"max_tokens":1e400}"#,
            br#"{"stream_options":{"include_usage":-1e999}}"#,
            br#"{"model":01}"#,
            br#"{"model":"a
b"}"#,
            b"{\"model\":\"\xff\"}",
            b"{\"x\":\"\xc3\"}",
            br#"{"model":tru}"#,
            br#"{"model":"m" "max_tokens":1}"#,
            br#"{"model":3}"#,
            br#"{"model":""}"#,
            br#"{"model":null,"stream":1}"#,
            br#"{"stream":"yes","max_tokens":0}"#,
            br#"{"max_tokens":0,"max_completion_tokens":-1}"#,
            br#"{"max_tokens":5.0}"#,
            br#"{"max_tokens":-0}"#,
            br#"{"max_completion_tokens":18446744073709551616}"#,
            br#"{"max_completion_tokens":18446744073709551615}"#,
            br#"{"input":null}"#,
            br#"{"input":[[]]}"#,
            br#"{"input":[-1]}"#,
            br#"{"input":[1.5]}"#,
            br#"{"input":["a",[1,2],""]}"#,
            br#"{"input":["a",[1,2]],"stream":"nope"}"#,
            br#"{"max_tokens":null,"model":"m"}"#,
            br#"{"model":"m"}"#,
            br#"{"model":"m","max_tokens":"1"}"#,
        ]
        .into_iter()
        .map(<[u8]>::to_vec)
        .chain(bodies)
        {
            for (endpoint, native) in [
                (Endpoint::Chat, false),
                (Endpoint::Completions, false),
                (Endpoint::Embeddings, false),
                (Endpoint::Messages, true),
                (Endpoint::Messages, false),
                (Endpoint::Responses, false),
            ] {
                same(&body, endpoint, native, "m", 10);
            }
        }
    }

    #[test]
    fn prompts_are_counted_as_before() {
        for body in [
            r#"{"messages":[{"content":"12345678"},{"content":["abcd",{"text":"ef"},{"text":5},3,{"text":"x","text":"yz"}]},"x",{"content":{"text":"abc"}},{"content":"a","content":7}]}"#,
            r#"{"messages":{"content":"abc"},"prompt":["ab",{"text":"\u00e9\n"}]}"#,
            r#"{"messages":[],"prompt":""}"#,
            r#"{"messages":[],"messages":5,"prompt":"abc","prompt":null}"#,
            r#"{"prompt":[["abc"]],"messages":[{"content":[["abc"]]}]}"#,
            r#"{"system":[{"text":"abc","content":[{"text":"de"}]},{"input":null},{"input":{"z":1,"a":[1e2,-0,1.50]},"input":"x"}],"messages":[{"content":[{"type":"tool_result","content":"abcdef"}]},{"content":"xy"},{"x":1}]}"#,
            r#"{"system":"abc","system":{"text":"abc"},"messages":[{"content":[{"text":["abc",{"text":"d"}]}]}]}"#,
        ] {
            for (endpoint, native) in [
                (Endpoint::Chat, false),
                (Endpoint::Completions, false),
                (Endpoint::Embeddings, false),
                (Endpoint::Messages, true),
            ] {
                let body = body.replacen('{', r#"{"max_tokens":3,"#, 1);
                same(body.as_bytes(), endpoint, native, "m", 10);
            }
        }
    }

    /// A JSON value, written by [`write`] with chosen whitespace and escapes.
    #[derive(Debug, Clone)]
    enum J {
        /// `null`.
        Null,
        /// A boolean.
        Bool(bool),
        /// A number, as written.
        Num(String),
        /// A string.
        Str(String),
        /// An array.
        Arr(Vec<J>),
        /// An object, its entries in order (duplicates kept).
        Obj(Vec<(String, J)>),
    }

    /// Writes `j` to `out`, `noise` choosing the whitespace between tokens
    /// and how each character of a string is written.
    fn write(j: &J, out: &mut String, noise: &mut impl Iterator<Item = u8>) {
        /// Whitespace, or none.
        fn ws(out: &mut String, noise: &mut impl Iterator<Item = u8>) {
            out.push_str(match noise.next().unwrap_or(0) % 8 {
                0 => " ",
                1 => "\n\t ",
                2 => "\r\n",
                _ => "",
            });
        }
        /// `s` as a JSON string, some characters escaped.
        fn string(s: &str, out: &mut String, noise: &mut impl Iterator<Item = u8>) {
            out.push('"');
            for c in s.chars() {
                let how = noise.next().unwrap_or(0) % 4;
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '/' if how == 0 => out.push_str("\\/"),
                    '\n' if how < 2 => out.push_str("\\n"),
                    c if (c as u32) < 0x20 || how == 3 => {
                        let mut units = [0u16; 2];
                        for u in c.encode_utf16(&mut units) {
                            out.push_str(&format!("\\u{u:04X}"));
                        }
                    }
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        ws(out, noise);
        match j {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(n),
            J::Str(s) => string(s, out, noise),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out, noise);
                }
                ws(out, noise);
                out.push(']');
            }
            J::Obj(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    ws(out, noise);
                    string(k, out, noise);
                    ws(out, noise);
                    out.push(':');
                    write(v, out, noise);
                }
                ws(out, noise);
                out.push('}');
            }
        }
        ws(out, noise);
    }

    /// Strings, some with characters JSON escapes.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z ]{0,12}",
            "[a\"\\\\/\n\t\u{0}\u{1f}\u{7f}é€😀]{0,6}",
            Just(String::new()),
        ]
    }

    /// Number literals: mostly token counts, some that are not.
    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => (0u64..2000).prop_map(|n| n.to_string()),
            1 => any::<u64>().prop_map(|n| n.to_string()),
            1 => prop::sample::select(vec![
                "0", "-1", "-0", "1.5", "5.0", "1e2", "1E+2", "-3e-2", "18446744073709551616",
                "-9223372036854775809",
            ])
            .prop_map(str::to_owned),
        ]
    }

    /// Any JSON value, its object keys the ones the readings look at.
    fn value() -> impl Strategy<Value = J> {
        let leaf = prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            number().prop_map(J::Num),
            text().prop_map(J::Str),
        ];
        leaf.prop_recursive(4, 24, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(J::Arr),
                prop::collection::vec(
                    (
                        prop_oneof![
                            prop::sample::select(vec![
                                "text",
                                "content",
                                "input",
                                "role",
                                "type",
                                "include_usage",
                            ])
                            .prop_map(str::to_owned),
                            text(),
                        ],
                        inner
                    ),
                    0..5
                )
                .prop_map(J::Obj),
            ]
        })
    }

    /// A chat message: a role and a content of the shapes chat takes.
    fn message() -> impl Strategy<Value = J> {
        let part = prop_oneof![
            text().prop_map(J::Str),
            text().prop_map(|t| J::Obj(vec![
                ("type".into(), J::Str("text".into())),
                ("text".into(), J::Str(t))
            ])),
            value(),
        ];
        let content = prop_oneof![
            3 => text().prop_map(J::Str),
            2 => prop::collection::vec(part, 0..4).prop_map(J::Arr),
            1 => value(),
        ];
        (content, prop::option::of(value())).prop_map(|(content, extra)| {
            let mut m = vec![
                ("role".into(), J::Str("user".into())),
                ("content".into(), content),
            ];
            if let Some(x) = extra {
                m.push(("name".into(), x));
            }
            J::Obj(m)
        })
    }

    /// A request body: the fields admission reads (mostly valid), random
    /// others, in any order, some twice.
    fn body() -> impl Strategy<Value = J> {
        let model = prop_oneof![
            6 => "[a-z0-9/\\\\\"é.-]{1,12}".prop_map(J::Str),
            2 => text().prop_map(J::Str),
            1 => value(),
        ];
        let cap = prop_oneof![8 => number().prop_map(J::Num), 1 => value()];
        let stream = prop_oneof![8 => any::<bool>().prop_map(J::Bool), 1 => value()];
        let options = prop_oneof![
            4 => (prop::option::of(any::<bool>()), prop::collection::vec((text(), value()), 0..3))
                .prop_map(|(usage, mut rest)| {
                    if let Some(u) = usage {
                        rest.insert(0, ("include_usage".into(), J::Bool(u)));
                    }
                    J::Obj(rest)
                }),
            1 => value(),
        ];
        let messages = prop_oneof![
            8 => prop::collection::vec(message(), 0..4).prop_map(J::Arr),
            1 => value(),
        ];
        let input = prop_oneof![
            text().prop_map(J::Str),
            prop::collection::vec(text().prop_map(J::Str), 0..3).prop_map(J::Arr),
            prop::collection::vec(number().prop_map(J::Num), 0..3).prop_map(J::Arr),
            value(),
        ];
        let known = (
            prop::option::of(model),
            prop::option::of(cap.clone()),
            prop::option::of(cap),
            prop::option::of(stream),
            prop::option::of(options),
            prop::option::of(messages),
            prop::option::of(value()),
            prop::option::of(input),
        );
        let other = prop::collection::vec(
            (
                prop_oneof![
                    1 => prop::sample::select(vec![
                        "model",
                        "stream",
                        "max_tokens",
                        "max_completion_tokens",
                        "stream_options",
                        "messages",
                        "prompt",
                        "input",
                        "system",
                        "temperature",
                    ])
                    .prop_map(str::to_owned),
                    3 => text(),
                ],
                value(),
            ),
            0..4,
        );
        (known, other)
            .prop_flat_map(
                |((model, max, maxc, stream, options, messages, prompt, input), other)| {
                    let mut entries: Vec<(String, J)> = other;
                    for (k, v) in [
                        ("model", model),
                        ("max_tokens", max),
                        ("max_completion_tokens", maxc),
                        ("stream", stream),
                        ("stream_options", options),
                        ("messages", messages),
                        ("prompt", prompt.clone()),
                        ("system", prompt),
                        ("input", input),
                    ] {
                        if let Some(v) = v {
                            entries.push((k.to_owned(), v));
                        }
                    }
                    Just(entries).prop_shuffle()
                },
            )
            .prop_map(J::Obj)
    }

    /// Each endpoint a body may be read for, with `native`.
    const READINGS: [(Endpoint, bool); 5] = [
        (Endpoint::Chat, false),
        (Endpoint::Completions, false),
        (Endpoint::Embeddings, false),
        (Endpoint::Messages, true),
        (Endpoint::Messages, false),
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn the_borrowed_reading_is_the_maps(
            body in body(),
            noise in prop::collection::vec(any::<u8>(), 0..64),
            model in prop_oneof![Just("simulator".to_owned()), text()],
            max_output in 1u64..2000,
        ) {
            let mut text = String::new();
            let mut n = noise.iter().copied().cycle().chain(std::iter::repeat(0));
            write(&body, &mut text, &mut n);
            for (endpoint, native) in READINGS {
                same(text.as_bytes(), endpoint, native, &model, max_output);
            }
        }

        #[test]
        fn broken_bodies_are_refused_alike(
            body in body(),
            cut in any::<prop::sample::Index>(),
            insert in prop::sample::select(vec!["", ",", "}", "]", "\"", ":", "x", "\\", "\u{1}", "{", "[", "-"]),
        ) {
            let mut text = String::new();
            write(&body, &mut text, &mut [0u8, 5, 1, 6, 3, 7].into_iter().cycle());
            let mut bytes = text.into_bytes();
            let at = cut.index(bytes.len() + 1);
            if insert.is_empty() {
                bytes.truncate(at);
            } else {
                bytes.splice(at..at, insert.bytes());
            }
            for (endpoint, native) in READINGS {
                same(&bytes, endpoint, native, "m", 10);
            }
        }
    }
}
