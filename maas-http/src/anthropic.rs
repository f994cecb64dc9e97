//! Anthropic's Messages API on an OpenAI-compatible upstream: a Messages
//! request translated to a chat completion ([`to_chat`]), the answer
//! translated back ([`message_of`], and [`StreamTranslator`] for the event
//! stream), and Anthropic's error shape ([`error_body`]).
//!
//! What is translated: `system` (a string or text blocks), `messages` whose
//! content is a string or `text`, `image` (base64 or URL), `tool_use` and
//! `tool_result` blocks; `max_tokens`, `stop_sequences`, `temperature`,
//! `top_p`, `stream`, `tools`, `tool_choice` and `metadata.user_id`. What
//! has no chat-completions equivalent (`top_k`, `thinking`, documents, …) is
//! refused with a 400 naming it, never dropped.

use serde_json::{Map, Value, json};

/// A request that cannot be translated: the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untranslatable {
    /// The request field at fault (`messages.2.content.0.type`, …).
    pub field: String,
    /// Why.
    pub message: String,
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> Untranslatable {
    Untranslatable {
        field: field.into(),
        message: message.into(),
    }
}

/// Top-level fields a Messages request may carry here.
pub const KNOWN: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "stop_sequences",
    "temperature",
    "top_p",
    "stream",
    "tools",
    "tool_choice",
    "metadata",
];

/// The text of a string or of an array of `text` blocks (`field` names it).
fn text_of(v: &Value, field: &str) -> Result<String, Untranslatable> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut out = String::new();
            for (i, b) in blocks.iter().enumerate() {
                match (b.get("type").and_then(Value::as_str), b.get("text")) {
                    (Some("text"), Some(Value::String(t))) => {
                        if !out.is_empty() {
                            out.push('\n');
                        }
                        out.push_str(t);
                    }
                    (t, _) => {
                        return Err(refuse(
                            format!("{field}.{i}.type"),
                            format!(
                                "only text blocks can be translated here, not '{}'",
                                t.unwrap_or("?")
                            ),
                        ));
                    }
                }
            }
            Ok(out)
        }
        _ => Err(refuse(field, "must be a string or an array of text blocks")),
    }
}

/// An image block as an OpenAI `image_url` part.
fn image_part(b: &Value, field: &str) -> Result<Value, Untranslatable> {
    let source = b
        .get("source")
        .ok_or_else(|| refuse(field, "an image needs a source"))?;
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = source.get("media_type").and_then(Value::as_str);
            let data = source.get("data").and_then(Value::as_str);
            match (media, data) {
                (Some(m), Some(d)) => format!("data:{m};base64,{d}"),
                _ => return Err(refuse(field, "a base64 image needs media_type and data")),
            }
        }
        Some("url") => source
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| refuse(field, "a URL image needs its url"))?
            .to_owned(),
        other => {
            return Err(refuse(
                format!("{field}.source.type"),
                format!(
                    "image source '{}' cannot be translated",
                    other.unwrap_or("?")
                ),
            ));
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// A user turn: its text and image parts as one chat message, each
/// `tool_result` as a `tool` message (before it, as OpenAI wants tool
/// answers right after the call).
fn user_turn(content: &Value, field: &str, out: &mut Vec<Value>) -> Result<(), Untranslatable> {
    let blocks = match content {
        Value::String(s) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Value::Array(b) => b,
        _ => return Err(refuse(field, "must be a string or an array of blocks")),
    };
    let mut parts = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        let at = format!("{field}.{i}");
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(
                json!({"type": "text", "text": b.get("text").cloned().unwrap_or(Value::Null)}),
            ),
            Some("image") => parts.push(image_part(b, &at)?),
            Some("tool_result") => {
                let id = b
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| refuse(format!("{at}.tool_use_id"), "is required"))?;
                let text = match b.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(c) => text_of(c, &format!("{at}.content"))?,
                };
                let text = if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                    format!("Error: {text}")
                } else {
                    text
                };
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            other => {
                return Err(refuse(
                    format!("{at}.type"),
                    format!(
                        "a '{}' block cannot be translated for an OpenAI-compatible upstream",
                        other.unwrap_or("?")
                    ),
                ));
            }
        }
    }
    if !parts.is_empty() {
        // Text only: a plain string, as every chat server reads it.
        let all_text = parts.iter().all(|p| p["type"] == "text");
        let content = if all_text {
            Value::String(
                parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        } else {
            Value::Array(parts)
        };
        out.push(json!({"role": "user", "content": content}));
    }
    Ok(())
}

/// An assistant turn: its text, and its `tool_use` blocks as tool calls.
fn assistant_turn(content: &Value, field: &str) -> Result<Value, Untranslatable> {
    let blocks = match content {
        Value::String(s) => return Ok(json!({"role": "assistant", "content": s})),
        Value::Array(b) => b,
        _ => return Err(refuse(field, "must be a string or an array of blocks")),
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        let at = format!("{field}.{i}");
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => {
                let id = b.get("id").and_then(Value::as_str);
                let name = b.get("name").and_then(Value::as_str);
                let (Some(id), Some(name)) = (id, name) else {
                    return Err(refuse(at, "a tool_use block needs an id and a name"));
                };
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": input.to_string()},
                }));
            }
            other => {
                return Err(refuse(
                    format!("{at}.type"),
                    format!(
                        "a '{}' block cannot be translated for an OpenAI-compatible upstream",
                        other.unwrap_or("?")
                    ),
                ));
            }
        }
    }
    let mut m = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        m["tool_calls"] = Value::Array(calls);
    }
    Ok(m)
}

/// A chat-completions body of `body`'s model, `messages`, and the fields
/// of `body` named in `copied` (from, to) that are set.
pub(crate) fn chat_body(
    body: &Map<String, Value>,
    messages: Vec<Value>,
    copied: &[(&str, &str)],
) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert(
        "model".into(),
        body.get("model").cloned().unwrap_or(Value::Null),
    );
    out.insert("messages".into(), Value::Array(messages));
    for (from, to) in copied {
        if let Some(v) = body.get(*from).filter(|v| !v.is_null()) {
            out.insert((*to).into(), v.clone());
        }
    }
    out
}

/// A Messages request as a chat-completions request (see the
/// [module](self) documentation for what is translated).
pub fn to_chat(body: &Map<String, Value>) -> Result<Map<String, Value>, Untranslatable> {
    if let Some(k) = body.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(refuse(
            k.as_str(),
            format!("'{k}' cannot be translated for an OpenAI-compatible upstream"),
        ));
    }
    let mut messages = Vec::new();
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(s) => messages.push(json!({"role": "system", "content": text_of(s, "system")?})),
    }
    let Some(Value::Array(turns)) = body.get("messages") else {
        return Err(refuse("messages", "'messages' must be an array"));
    };
    for (i, t) in turns.iter().enumerate() {
        let field = format!("messages.{i}.content");
        let content = t.get("content").unwrap_or(&Value::Null);
        match t.get("role").and_then(Value::as_str) {
            Some("user") => user_turn(content, &field, &mut messages)?,
            Some("assistant") => messages.push(assistant_turn(content, &field)?),
            _ => {
                return Err(refuse(
                    format!("messages.{i}.role"),
                    "must be 'user' or 'assistant'",
                ));
            }
        }
    }
    let mut out = chat_body(
        body,
        messages,
        &[
            ("max_tokens", "max_tokens"),
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("stream", "stream"),
            ("stop_sequences", "stop"),
        ],
    );
    if let Some(Value::Array(tools)) = body.get("tools") {
        let mut fns = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            if t.get("type")
                .and_then(Value::as_str)
                .is_some_and(|ty| ty != "custom")
            {
                return Err(refuse(
                    format!("tools.{i}.type"),
                    "only client tools (name, description, input_schema) can be translated",
                ));
            }
            let name = t
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| refuse(format!("tools.{i}.name"), "is required"))?;
            let mut f = json!({"name": name, "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"}))});
            if let Some(d) = t.get("description") {
                f["description"] = d.clone();
            }
            fns.push(json!({"type": "function", "function": f}));
        }
        out.insert("tools".into(), Value::Array(fns));
    }
    if let Some(tc) = body.get("tool_choice").filter(|v| !v.is_null()) {
        let choice = match tc.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => match tc.get("name").and_then(Value::as_str) {
                Some(n) => json!({"type": "function", "function": {"name": n}}),
                None => return Err(refuse("tool_choice.name", "is required")),
            },
            _ => {
                return Err(refuse(
                    "tool_choice.type",
                    "must be auto, any, tool or none",
                ));
            }
        };
        out.insert("tool_choice".into(), choice);
    }
    if let Some(u) = body
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), Value::String(u.to_owned()));
    }
    Ok(out)
}

/// Anthropic's `stop_reason` for an OpenAI `finish_reason`.
fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// A message id in Anthropic's form from an upstream's id.
fn message_id(upstream: Option<&str>) -> String {
    let raw = upstream.unwrap_or("");
    let tail: String = raw
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(24)
        .collect();
    format!("msg_{}", if tail.is_empty() { "0".into() } else { tail })
}

/// A whole chat completion as a Messages answer.
pub fn message_of(chat: &Value, model: &str) -> Value {
    let choice = &chat["choices"][0];
    let msg = &choice["message"];
    let mut content = Vec::new();
    if let Some(t) = msg["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": t}));
    }
    for call in msg["tool_calls"].as_array().into_iter().flatten() {
        let args = call["function"]["arguments"].as_str().unwrap_or("{}");
        content.push(json!({
            "type": "tool_use",
            "id": call["id"],
            "name": call["function"]["name"],
            "input": serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({})),
        }));
    }
    json!({
        "id": message_id(chat["id"].as_str()),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str()),
        "stop_sequence": null,
        "usage": {
            "input_tokens": chat["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            "output_tokens": chat["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        },
    })
}

/// Which content block of the answer is open in a translated stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text(usize),
    Tool { block: usize, call: u64 },
}

/// Turns a chat-completions event stream into a Messages event stream,
/// event by event.
#[derive(Debug)]
pub struct StreamTranslator {
    model: String,
    started: bool,
    open: Open,
    blocks: usize,
    stop: Option<&'static str>,
    finished: bool,
}

/// `s` as a JSON string (quoted, escaped).
fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A chat-completions stream chunk, read in place.
mod wire {
    use std::borrow::Cow;

    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(super) struct Chunk<'a> {
        #[serde(borrow, default)]
        pub id: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        pub choices: Vec<Choice<'a>>,
        #[serde(default)]
        pub usage: Option<Usage>,
    }

    #[derive(Deserialize)]
    pub(super) struct Choice<'a> {
        #[serde(borrow, default)]
        pub delta: Delta<'a>,
        #[serde(borrow, default)]
        pub finish_reason: Option<Cow<'a, str>>,
    }

    #[derive(Deserialize, Default)]
    pub(super) struct Delta<'a> {
        #[serde(borrow, default)]
        pub content: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        pub tool_calls: Vec<ToolCall<'a>>,
    }

    #[derive(Deserialize)]
    pub(super) struct ToolCall<'a> {
        #[serde(default)]
        pub index: u64,
        #[serde(borrow, default)]
        pub id: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        pub function: Option<Function<'a>>,
    }

    #[derive(Deserialize)]
    pub(super) struct Function<'a> {
        #[serde(borrow, default)]
        pub name: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        pub arguments: Option<Cow<'a, str>>,
    }

    #[derive(Deserialize, Clone, Copy)]
    pub(super) struct Usage {
        #[serde(default)]
        pub prompt_tokens: u64,
        #[serde(default)]
        pub completion_tokens: u64,
    }
}

fn event(kind: &str, data: &Value) -> String {
    format!("event: {kind}\ndata: {data}\n\n")
}

impl StreamTranslator {
    /// A translator of a stream answering for `model`.
    pub fn new(model: impl Into<String>) -> Self {
        StreamTranslator {
            model: model.into(),
            started: false,
            open: Open::None,
            blocks: 0,
            stop: None,
            finished: false,
        }
    }

    fn start(&mut self, id: Option<&str>, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        out.push_str(&event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": message_id(id), "type": "message", "role": "assistant",
                "model": self.model, "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        ));
    }

    fn close(&mut self, out: &mut String) {
        let index = match self.open {
            Open::None => return,
            Open::Text(i) | Open::Tool { block: i, .. } => i,
        };
        out.push_str(&event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ));
        self.open = Open::None;
    }

    /// The Messages events for one chat-completions event's `data`
    /// (`[DONE]` included); empty when it adds nothing.
    pub fn translate(&mut self, data: &[u8]) -> String {
        let mut out = String::new();
        if self.finished {
            return out;
        }
        if data == b"[DONE]" {
            self.finish(None, &mut out);
            return out;
        }
        // Read in place (borrowed strings), written with the text escaped
        // once: a stream's events are many.
        let Ok(chunk) = serde_json::from_slice::<wire::Chunk<'_>>(data) else {
            return out;
        };
        self.start(chunk.id.as_deref(), &mut out);
        for choice in &chunk.choices {
            if let Some(t) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
                if !matches!(self.open, Open::Text(_)) {
                    self.close(&mut out);
                    let index = self.blocks;
                    self.blocks += 1;
                    self.open = Open::Text(index);
                    out.push_str(&format!(
                        "event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":{index},\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}\n\n"
                    ));
                }
                if let Open::Text(index) = self.open {
                    out.push_str(&format!(
                        "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":{index},\"delta\":{{\"type\":\"text_delta\",\"text\":{}}}}}\n\n",
                        json_str(t)
                    ));
                }
            }
            for call in &choice.delta.tool_calls {
                let n = call.index;
                let same = matches!(self.open, Open::Tool { call, .. } if call == n);
                if !same {
                    self.close(&mut out);
                    let index = self.blocks;
                    self.blocks += 1;
                    self.open = Open::Tool {
                        block: index,
                        call: n,
                    };
                    let f = call.function.as_ref();
                    out.push_str(&event(
                        "content_block_start",
                        &json!({"type": "content_block_start", "index": index, "content_block": {
                            "type": "tool_use", "id": call.id.as_deref(), "name": f.and_then(|f| f.name.as_deref()), "input": {},
                        }}),
                    ));
                }
                if let (Open::Tool { block, .. }, Some(args)) = (
                    self.open,
                    call.function.as_ref().and_then(|f| f.arguments.as_deref()),
                ) && !args.is_empty()
                {
                    out.push_str(&format!(
                        "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":{block},\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":{}}}}}\n\n",
                        json_str(args)
                    ));
                }
            }
            if let Some(f) = choice.finish_reason.as_deref() {
                self.close(&mut out);
                self.stop = Some(stop_reason(Some(f)));
            }
        }
        if let Some(u) = chunk.usage {
            let usage =
                json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens});
            self.finish(Some(&usage), &mut out);
        }
        out
    }

    /// The closing events: the stop reason and usage, then `message_stop`.
    fn finish(&mut self, usage: Option<&Value>, out: &mut String) {
        if self.finished {
            return;
        }
        self.start(None, out);
        self.close(out);
        self.finished = true;
        let usage = usage.map_or_else(
            || json!({"output_tokens": 0}),
            |u| {
                json!({
                    "input_tokens": u["prompt_tokens"].as_u64().unwrap_or(0),
                    "output_tokens": u["completion_tokens"].as_u64().unwrap_or(0),
                })
            },
        );
        out.push_str(&event(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": self.stop.unwrap_or("end_turn"), "stop_sequence": null}, "usage": usage}),
        ));
        out.push_str(&event("message_stop", &json!({"type": "message_stop"})));
    }
}

/// Anthropic's error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

/// Anthropic's error body for `status` saying `message`.
pub fn error_body(status: u16, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn requests_translate_field_by_field() {
        let chat = to_chat(&obj(json!({
            "model": "m",
            "max_tokens": 100,
            "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["END"],
            "temperature": 0.5,
            "metadata": {"user_id": "u1"},
            "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "any"},
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                    {"type": "text", "text": "Thanks"},
                ]},
            ],
        })))
        .unwrap();
        assert_eq!(
            Value::Object(chat),
            json!({
                "model": "m",
                "max_tokens": 100,
                "temperature": 0.5,
                "stop": ["END"],
                "user": "u1",
                "tool_choice": "required",
                "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                    ]},
                    {"role": "assistant", "content": "Let me check.", "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    ]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"},
                    {"role": "user", "content": "Thanks"},
                ],
            })
        );
    }

    #[test]
    fn what_cannot_be_translated_is_refused_naming_it() {
        for (body, field) in [
            (json!({"model": "m", "messages": [], "top_k": 5}), "top_k"),
            (
                json!({"model": "m", "messages": [], "thinking": {"type": "enabled"}}),
                "thinking",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
                "messages.0.content.0.type",
            ),
            (
                json!({"model": "m", "messages": [{"role": "assistant", "content": [{"type": "thinking", "thinking": "x"}]}]}),
                "messages.0.content.0.type",
            ),
            (
                json!({"model": "m", "messages": [{"role": "system", "content": "x"}]}),
                "messages.0.role",
            ),
            (
                json!({"model": "m", "messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "tools.0.type",
            ),
        ] {
            let e = to_chat(&obj(body.clone())).unwrap_err();
            assert_eq!(e.field, field, "{body}: {e:?}");
        }
    }

    #[test]
    fn whole_answers_translate_back() {
        let m = message_of(
            &json!({"id": "chatcmpl-abc", "choices": [{"message": {"role": "assistant", "content": "Hi", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3}}),
            "m",
        );
        assert_eq!(m["id"], "msg_chatcmplabc");
        assert_eq!(m["stop_reason"], "tool_use");
        assert_eq!(m["content"][0], json!({"type": "text", "text": "Hi"}));
        assert_eq!(m["content"][1]["input"], json!({"a": 1}));
        assert_eq!(m["usage"], json!({"input_tokens": 7, "output_tokens": 3}));
    }

    #[test]
    fn streams_translate_event_by_event() {
        let mut t = StreamTranslator::new("m");
        let mut all = String::new();
        for data in [
            r#"{"id":"c1","choices":[{"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"id":"c1","choices":[{"delta":{"content":"Hel"}}]}"#,
            r#"{"id":"c1","choices":[{"delta":{"content":"lo"}}]}"#,
            r#"{"id":"c1","choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_1","function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"id":"c1","choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":"}}]}}]}"#,
            r#"{"id":"c1","choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]}}]}"#,
            r#"{"id":"c1","choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":4}}"#,
            "[DONE]",
        ] {
            all.push_str(&t.translate(data.as_bytes()));
        }
        let kinds: Vec<&str> = all
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert!(all.contains(r#""partial_json":"{\"a\":""#), "{all}");
        assert!(all.contains(r#""stop_reason":"tool_use""#), "{all}");
        assert!(all.contains(r#""output_tokens":4"#), "{all}");
    }

    #[test]
    fn errors_have_anthropics_types() {
        assert_eq!(
            error_body(429, "slow down"),
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
        );
        assert_eq!(error_type(401), "authentication_error");
        assert_eq!(error_type(502), "api_error");
    }
}
