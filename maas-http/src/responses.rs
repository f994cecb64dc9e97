//! OpenAI's Responses API on a chat-completions upstream: a Responses
//! request translated to a chat completion ([`to_chat`]), the answer
//! translated back ([`response_of`], and [`StreamTranslator`] for the event
//! stream). Errors keep OpenAI's shape.
//!
//! What is translated: `input` (a string, or message items whose content is
//! a string or `input_text` / `input_image` / `output_text` parts, and
//! `function_call` / `function_call_output` items), `instructions`,
//! `max_output_tokens`, `temperature`, `top_p`, `stream`, function `tools`,
//! `tool_choice`, `user` and `metadata`. What needs state or a tool the
//! gateway does not run (`previous_response_id`, `store: true` semantics
//! aside, built-in tools, `reasoning`, …) is refused with a 400 naming it.

use serde_json::{Map, Value, json};

use crate::anthropic::Untranslatable;

fn refuse(field: impl Into<String>, message: impl Into<String>) -> Untranslatable {
    Untranslatable {
        field: field.into(),
        message: message.into(),
    }
}

/// Top-level fields a Responses request may carry here.
const KNOWN: &[&str] = &[
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "temperature",
    "top_p",
    "stream",
    "tools",
    "tool_choice",
    "user",
    "metadata",
    "store",
    "parallel_tool_calls",
];

/// A message item's content as chat content.
fn content_of(v: &Value, field: &str) -> Result<Value, Untranslatable> {
    let parts = match v {
        Value::String(s) => return Ok(Value::String(s.clone())),
        Value::Array(p) => p,
        _ => return Err(refuse(field, "must be a string or an array of parts")),
    };
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        match p.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text" | "text") => {
                out.push(
                    json!({"type": "text", "text": p.get("text").cloned().unwrap_or(Value::Null)}),
                );
            }
            Some("input_image") => {
                let url = p
                    .get("image_url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| refuse(format!("{field}.{i}.image_url"), "is required"))?;
                out.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            other => {
                return Err(refuse(
                    format!("{field}.{i}.type"),
                    format!("a '{}' part cannot be translated", other.unwrap_or("?")),
                ));
            }
        }
    }
    if out.iter().all(|p| p["type"] == "text") {
        let text: Vec<&str> = out.iter().filter_map(|p| p["text"].as_str()).collect();
        return Ok(Value::String(text.join("\n")));
    }
    Ok(Value::Array(out))
}

/// A Responses request as a chat-completions request (see the
/// [module](self) documentation for what is translated).
pub fn to_chat(body: &Map<String, Value>) -> Result<Map<String, Value>, Untranslatable> {
    if let Some(k) = body.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(refuse(
            k.as_str(),
            format!("'{k}' cannot be served by this gateway"),
        ));
    }
    let mut messages = Vec::new();
    if let Some(i) = body.get("instructions").filter(|v| !v.is_null()) {
        let text = i
            .as_str()
            .ok_or_else(|| refuse("instructions", "must be a string"))?;
        messages.push(json!({"role": "system", "content": text}));
    }
    match body.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let at = format!("input.{i}");
                match item.get("type").and_then(Value::as_str) {
                    None | Some("message") => {
                        let role = match item.get("role").and_then(Value::as_str) {
                            Some(r @ ("user" | "assistant" | "system")) => r,
                            Some("developer") => "system",
                            _ => {
                                return Err(refuse(
                                    format!("{at}.role"),
                                    "must be user, assistant, system or developer",
                                ));
                            }
                        };
                        let content = content_of(
                            item.get("content").unwrap_or(&Value::Null),
                            &format!("{at}.content"),
                        )?;
                        messages.push(json!({"role": role, "content": content}));
                    }
                    Some("function_call") => {
                        let id = item.get("call_id").and_then(Value::as_str);
                        let name = item.get("name").and_then(Value::as_str);
                        let (Some(id), Some(name)) = (id, name) else {
                            return Err(refuse(at, "a function_call needs call_id and name"));
                        };
                        let args = item
                            .get("arguments")
                            .and_then(Value::as_str)
                            .unwrap_or("{}");
                        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
                            {"id": id, "type": "function", "function": {"name": name, "arguments": args}},
                        ]}));
                    }
                    Some("function_call_output") => {
                        let id = item
                            .get("call_id")
                            .and_then(Value::as_str)
                            .ok_or_else(|| refuse(format!("{at}.call_id"), "is required"))?;
                        let output = match item.get("output") {
                            Some(Value::String(s)) => s.clone(),
                            Some(v) => v.to_string(),
                            None => String::new(),
                        };
                        messages
                            .push(json!({"role": "tool", "tool_call_id": id, "content": output}));
                    }
                    Some(other) => {
                        return Err(refuse(
                            format!("{at}.type"),
                            format!("an '{other}' item cannot be translated"),
                        ));
                    }
                }
            }
        }
        _ => {
            return Err(refuse(
                "input",
                "'input' must be a string or an array of items",
            ));
        }
    }
    let mut out = crate::anthropic::chat_body(
        body,
        messages,
        &[
            ("max_output_tokens", "max_tokens"),
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("stream", "stream"),
            ("user", "user"),
            ("parallel_tool_calls", "parallel_tool_calls"),
        ],
    );
    if let Some(Value::Array(tools)) = body.get("tools") {
        let mut fns = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(refuse(
                    format!("tools.{i}.type"),
                    "only function tools can be served by this gateway",
                ));
            }
            let mut f = json!({"name": t.get("name").cloned().unwrap_or(Value::Null)});
            for k in ["description", "parameters", "strict"] {
                if let Some(v) = t.get(k) {
                    f[k] = v.clone();
                }
            }
            fns.push(json!({"type": "function", "function": f}));
        }
        out.insert("tools".into(), Value::Array(fns));
    }
    if let Some(tc) = body.get("tool_choice").filter(|v| !v.is_null()) {
        let choice = match tc {
            Value::String(s) if ["auto", "none", "required"].contains(&s.as_str()) => tc.clone(),
            Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
                json!({"type": "function", "function": {"name": o.get("name").cloned().unwrap_or(Value::Null)}})
            }
            _ => {
                return Err(refuse(
                    "tool_choice",
                    "must be auto, none, required or a function",
                ));
            }
        };
        out.insert("tool_choice".into(), choice);
    }
    Ok(out)
}

fn id_of(prefix: &str, upstream: Option<&str>) -> String {
    let tail: String = upstream
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect();
    format!(
        "{prefix}_{}",
        if tail.is_empty() { "0".into() } else { tail }
    )
}

/// The fields every response object carries.
fn envelope(
    id: &str,
    created: u64,
    model: &str,
    status: &str,
    output: Vec<Value>,
    usage: Value,
) -> Value {
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": null,
        "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        "instructions": null,
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "tools": [],
        "metadata": {},
        "usage": usage,
    })
}

fn usage_of(u: &Value) -> Value {
    let input = u["prompt_tokens"].as_u64().unwrap_or(0);
    let output = u["completion_tokens"].as_u64().unwrap_or(0);
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0)},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output,
    })
}

fn text_item(id: &str, text: &str) -> Value {
    json!({
        "type": "message", "id": id, "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

/// A whole chat completion as a response object.
pub fn response_of(chat: &Value, model: &str) -> Value {
    let choice = &chat["choices"][0];
    let msg = &choice["message"];
    let upstream = chat["id"].as_str();
    let mut output = Vec::new();
    if let Some(t) = msg["content"].as_str().filter(|t| !t.is_empty()) {
        output.push(text_item(&id_of("msg", upstream), t));
    }
    for call in msg["tool_calls"].as_array().into_iter().flatten() {
        output.push(json!({
            "type": "function_call",
            "id": id_of("fc", call["id"].as_str()),
            "call_id": call["id"],
            "name": call["function"]["name"],
            "arguments": call["function"]["arguments"],
            "status": "completed",
        }));
    }
    let status = if choice["finish_reason"] == "length" {
        "incomplete"
    } else {
        "completed"
    };
    envelope(
        &id_of("resp", upstream),
        chat["created"].as_u64().unwrap_or(0),
        model,
        status,
        output,
        usage_of(&chat["usage"]),
    )
}

/// Turns a chat-completions event stream into a Responses event stream
/// (text answers; tool calls come whole in `response.completed`).
#[derive(Debug)]
pub struct StreamTranslator {
    model: String,
    id: String,
    item: String,
    /// The upstream's `created` (unix seconds).
    created: u64,
    seq: u64,
    started: bool,
    text: Option<String>,
    calls: Vec<Value>,
    finish: Option<String>,
    finished: bool,
}

impl StreamTranslator {
    /// A translator of a stream answering for `model`.
    pub fn new(model: impl Into<String>) -> Self {
        StreamTranslator {
            model: model.into(),
            id: id_of("resp", None),
            item: id_of("msg", None),
            created: 0,
            seq: 0,
            started: false,
            text: None,
            calls: Vec::new(),
            finish: None,
            finished: false,
        }
    }

    fn emit(&mut self, out: &mut String, mut data: Value) {
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        let kind = data["type"].as_str().unwrap_or("").to_owned();
        out.push_str(&format!("event: {kind}\ndata: {data}\n\n"));
    }

    fn start(&mut self, upstream: Option<&str>, created: u64, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        self.id = id_of("resp", upstream);
        self.item = id_of("msg", upstream);
        self.created = created;
        let r = envelope(
            &self.id,
            created,
            &self.model,
            "in_progress",
            vec![],
            Value::Null,
        );
        self.emit(out, json!({"type": "response.created", "response": r}));
        self.emit(out, json!({"type": "response.in_progress", "response": r}));
    }

    /// The Responses events for one chat-completions event's `data`
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
        let Ok(chunk) = serde_json::from_slice::<Value>(data) else {
            return out;
        };
        self.start(
            chunk["id"].as_str(),
            chunk["created"].as_u64().unwrap_or(0),
            &mut out,
        );
        for choice in chunk["choices"].as_array().into_iter().flatten() {
            let delta = &choice["delta"];
            if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
                if self.text.is_none() {
                    self.text = Some(String::new());
                    let item = json!({"type": "message", "id": self.item, "status": "in_progress", "role": "assistant", "content": []});
                    self.emit(&mut out, json!({"type": "response.output_item.added", "output_index": 0, "item": item}));
                    let part = json!({"type": "output_text", "text": "", "annotations": []});
                    self.emit(&mut out, json!({"type": "response.content_part.added", "item_id": self.item, "output_index": 0, "content_index": 0, "part": part}));
                }
                if let Some(text) = &mut self.text {
                    text.push_str(t);
                }
                let item = self.item.clone();
                self.emit(&mut out, json!({"type": "response.output_text.delta", "item_id": item, "output_index": 0, "content_index": 0, "delta": t}));
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let n = usize::try_from(call["index"].as_u64().unwrap_or(0)).unwrap_or(0);
                while self.calls.len() <= n {
                    self.calls
                        .push(json!({"id": "", "name": "", "arguments": ""}));
                }
                let c = &mut self.calls[n];
                if let Some(id) = call["id"].as_str() {
                    c["id"] = json!(id);
                }
                if let Some(name) = call["function"]["name"].as_str() {
                    c["name"] = json!(name);
                }
                if let Some(a) = call["function"]["arguments"].as_str() {
                    let so_far = c["arguments"].as_str().unwrap_or("").to_owned();
                    c["arguments"] = json!(so_far + a);
                }
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                self.finish = Some(f.to_owned());
            }
        }
        if chunk["usage"].is_object() {
            self.finish(Some(&chunk["usage"]), &mut out);
        }
        out
    }

    fn finish(&mut self, usage: Option<&Value>, out: &mut String) {
        if self.finished {
            return;
        }
        self.start(None, 0, out);
        self.finished = true;
        let mut output = Vec::new();
        if let Some(text) = self.text.take() {
            let item = self.item.clone();
            self.emit(out, json!({"type": "response.output_text.done", "item_id": item, "output_index": 0, "content_index": 0, "text": text}));
            let part = json!({"type": "output_text", "text": text, "annotations": []});
            self.emit(out, json!({"type": "response.content_part.done", "item_id": item, "output_index": 0, "content_index": 0, "part": part}));
            let done = text_item(&item, &text);
            self.emit(
                out,
                json!({"type": "response.output_item.done", "output_index": 0, "item": done}),
            );
            output.push(done);
        }
        for c in std::mem::take(&mut self.calls) {
            output.push(json!({
                "type": "function_call", "id": id_of("fc", c["id"].as_str()), "call_id": c["id"],
                "name": c["name"], "arguments": c["arguments"], "status": "completed",
            }));
        }
        let status = if self.finish.as_deref() == Some("length") {
            "incomplete"
        } else {
            "completed"
        };
        let usage = usage.map_or(Value::Null, usage_of);
        let r = envelope(&self.id, self.created, &self.model, status, output, usage);
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(out, json!({"type": kind, "response": r}));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_translate_field_by_field() {
        let chat = to_chat(
            json!({
                "model": "m",
                "instructions": "Be brief.",
                "max_output_tokens": 50,
                "input": [
                    {"role": "developer", "content": "Use metric units."},
                    {"role": "user", "content": [
                        {"type": "input_text", "text": "Weather?"},
                        {"type": "input_image", "image_url": "https://x/y.png"},
                    ]},
                    {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                    {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
                ],
                "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
                "tool_choice": "auto",
            })
            .as_object()
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            Value::Object(chat),
            json!({
                "model": "m",
                "max_tokens": 50,
                "tool_choice": "auto",
                "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "system", "content": "Use metric units."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "Weather?"},
                        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    ]},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
                ],
            })
        );
        for (body, field) in [
            (
                json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
            (
                json!({"model": "m", "input": "x", "reasoning": {"effort": "low"}}),
                "reasoning",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
                "tools.0.type",
            ),
            (
                json!({"model": "m", "input": [{"type": "reasoning"}]}),
                "input.0.type",
            ),
            (json!({"model": "m"}), "input"),
        ] {
            let e = to_chat(body.as_object().unwrap()).unwrap_err();
            assert_eq!(e.field, field, "{body}");
        }
    }

    #[test]
    fn answers_and_streams_translate_back() {
        let r = response_of(
            &json!({"id": "chatcmpl-1", "choices": [{"message": {"content": "Hi"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 2}}),
            "m",
        );
        assert_eq!(
            (&r["object"], &r["status"]),
            (&json!("response"), &json!("completed"))
        );
        assert_eq!(r["output"][0]["content"][0]["text"], "Hi");
        assert_eq!(r["usage"]["total_tokens"], 7);

        let mut t = StreamTranslator::new("m");
        let mut all = String::new();
        for d in [
            r#"{"id":"c1","choices":[{"delta":{"content":"He"}}]}"#,
            r#"{"id":"c1","choices":[{"delta":{"content":"y"}}]}"#,
            r#"{"id":"c1","choices":[{"delta":{},"finish_reason":"length"}]}"#,
            r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
            "[DONE]",
        ] {
            all.push_str(&t.translate(d.as_bytes()));
        }
        let kinds: Vec<&str> = all
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.incomplete",
            ]
        );
        assert!(all.contains(r#""text":"Hey""#), "{all}");
        assert!(all.contains(r#""output_tokens":2"#), "{all}");
    }
}
