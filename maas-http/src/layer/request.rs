//! What the layer reads from, and changes in, an OpenAI request body.

use maas_core::admission::estimate_prompt_tokens;
use serde_json::{Map, Value};

use super::error::GatewayError;

/// The facts of a request body admission needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inspected {
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

/// Reads `bytes` as an OpenAI chat or completions request. Only what
/// admission needs is checked; the upstream judges the rest.
pub(crate) fn inspect(bytes: &[u8]) -> Result<Inspected, GatewayError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(GatewayError::invalid(
            "body",
            "the body must be a JSON object",
        ));
    }
    let body: Map<String, Value> = serde_json::from_slice(bytes)
        .map_err(|e| GatewayError::invalid("body", format!("the body is not valid JSON: {e}")))?;
    let model = match body.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) if !m.is_empty() => Some(m.clone()),
        Some(_) => {
            return Err(GatewayError::invalid(
                "model",
                "'model' must be a non-empty string",
            ));
        }
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(GatewayError::invalid(
                "stream",
                "'stream' must be a boolean",
            ));
        }
    };
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
        )
        .unwrap();
        assert_eq!(i.model.as_deref(), Some("m"));
        assert!(i.stream && !i.wants_usage);
        assert_eq!(i.max_tokens, Some(500));
        assert_eq!(i.prompt_tokens, 2 + 3);
        let out: Value = serde_json::from_slice(&rewrite(i, "m", 100)).unwrap();
        assert_eq!(out["max_tokens"], 100);
        assert_eq!(out["stream_options"]["include_usage"], true);

        let i = inspect(br#"{"prompt":"abcd","max_completion_tokens":5}"#).unwrap();
        assert_eq!((i.model, i.max_tokens, i.prompt_tokens), (None, Some(5), 1));
        let i = inspect(br#"{"prompt":["ab","cd"]}"#).unwrap();
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
            let e = inspect(body).unwrap_err();
            assert_eq!(e.error.param.as_deref(), Some(param), "{body:?}");
        }
    }
}
