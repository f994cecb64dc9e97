//! What the layer reads from, and changes in, an OpenAI request body.

use maas_core::admission::estimate_prompt_tokens;
use serde_json::{Map, Value};

use super::error::GatewayError;

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

/// The facts of a request body admission needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inspected {
    /// The API it is for.
    pub endpoint: Endpoint,
    /// A Messages request for an upstream that speaks Anthropic's API: the
    /// body is Anthropic's, forwarded as it is (but for `model` and the
    /// capped `max_tokens`) to `/v1/messages`.
    pub native: bool,
    /// The body, as a JSON object.
    pub body: Map<String, Value>,
    /// `model`, if the body has one.
    pub model: Option<String>,
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

/// Reads `bytes` as a request of `endpoint`. Only what admission needs is
/// checked; the upstream judges the rest.
#[cfg(test)]
pub(crate) fn inspect(bytes: &[u8], endpoint: Endpoint) -> Result<Inspected, GatewayError> {
    inspect_object(parse(bytes)?, endpoint)
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

/// The body's `model`, if it names one.
fn model_of(body: &Map<String, Value>) -> Result<Option<String>, GatewayError> {
    match body.get("model") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(m)) if !m.is_empty() => Ok(Some(m.clone())),
        Some(_) => Err(GatewayError::invalid(
            "model",
            "'model' must be a non-empty string",
        )),
    }
}

/// The body's `stream` (absent: false).
fn stream_of(body: &Map<String, Value>) -> Result<bool, GatewayError> {
    match body.get("stream") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(GatewayError::invalid(
            "stream",
            "'stream' must be a boolean",
        )),
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
pub(crate) fn inspect_native(body: Map<String, Value>) -> Result<Inspected, GatewayError> {
    let model = model_of(&body)?;
    let max_tokens = match body.get("max_tokens") {
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => n,
            _ => {
                return Err(GatewayError::invalid(
                    "max_tokens",
                    "'max_tokens' must be a positive integer",
                ));
            }
        },
        None => {
            return Err(GatewayError::invalid(
                "max_tokens",
                "max_tokens: Field required",
            ));
        }
    };
    let stream = stream_of(&body)?;
    let (bytes, turns) = anthropic_text(&body);
    Ok(Inspected {
        endpoint: Endpoint::Messages,
        native: true,
        body,
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
pub(crate) fn inspect_object(
    body: Map<String, Value>,
    endpoint: Endpoint,
) -> Result<Inspected, GatewayError> {
    let model = model_of(&body)?;
    if endpoint == Endpoint::Messages {
        // Anthropic requires max_tokens; the rest is read as the chat
        // completion it translates to. The usage chunk is kept: the
        // answer's translation reads it.
        match body.get("max_tokens") {
            Some(v) if v.as_u64().is_some_and(|n| n > 0) => {}
            None | Some(Value::Null) => {
                return Err(GatewayError::invalid(
                    "max_tokens",
                    "max_tokens: Field required",
                ));
            }
            Some(_) => {
                return Err(GatewayError::invalid(
                    "max_tokens",
                    "'max_tokens' must be a positive integer",
                ));
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
                return Err(GatewayError::invalid("input", "'input' is required"));
            }
            Some(v) => embedding_tokens(v).ok_or_else(|| {
                GatewayError::invalid(
                    "input",
                    "'input' must be a non-empty string, an array of strings, an array of token ids or an array of token-id arrays",
                )
            })?,
        };
        return Ok(Inspected {
            endpoint,
            native: false,
            body,
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
                    return Err(GatewayError::invalid(
                        field,
                        format!("'{field}' must be a positive integer"),
                    ));
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
    let prompt_tokens = if text == 0 && messages == 0 {
        1
    } else {
        // The simulator's rule (and a fair guess for others): a token per 4
        // bytes, 3 more per chat message.
        estimate_prompt_tokens(text).saturating_add(3 * messages as u64)
    };
    Ok(Inspected {
        endpoint,
        native: false,
        body,
        model,
        stream,
        max_tokens,
        wants_usage,
        prompt_tokens,
    })
}

/// The body to forward: the model named, output capped at what was
/// reserved, and a stream asked to report its usage.
pub(crate) fn rewrite(mut i: Inspected, model: &str, max_output: u64) -> Vec<u8> {
    i.body
        .insert("model".into(), Value::String(model.to_owned()));
    if i.endpoint == Endpoint::Embeddings {
        // Passed on as sent (`encoding_format`, `dimensions`, …).
        return serde_json::to_vec(&Value::Object(i.body)).unwrap_or_default();
    }
    if i.native {
        // Anthropic's body as sent, its output capped.
        let capped = i.max_tokens.map_or(max_output, |m| m.min(max_output));
        i.body.insert("max_tokens".into(), Value::from(capped));
        return serde_json::to_vec(&Value::Object(i.body)).unwrap_or_default();
    }
    let field = if i.body.contains_key("max_completion_tokens") {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let capped = i.max_tokens.map_or(max_output, |m| m.min(max_output));
    i.body.insert(field.into(), Value::from(capped));
    if i.stream {
        let opts = i
            .body
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if !opts.is_object() {
            *opts = Value::Object(Map::new());
        }
        if let Value::Object(o) = opts {
            o.insert("include_usage".into(), Value::Bool(true));
        }
    }
    serde_json::to_vec(&Value::Object(i.body)).unwrap_or_default()
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
