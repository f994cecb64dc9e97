//! Group `translate`: what serving Anthropic's Messages on an
//! OpenAI-compatible upstream adds per request (issue 21's goal: ≤ 20 µs of
//! CPU) — the request translated to a chat completion, and the answer back
//! (a whole message, and a 16-token event stream event by event) — beside
//! its floor: parsing and writing the equivalent chat request, which the
//! chat path does anyway.

use criterion::{Criterion, criterion_group};
use maas_http::anthropic::{StreamTranslator, message_of, to_chat};
use serde_json::{Map, Value, json};
use std::hint::black_box;

fn request() -> Vec<u8> {
    json!({
        "model": "simulator",
        "max_tokens": 256,
        "system": "You are a helpful assistant. Answer briefly.",
        "messages": [
            {"role": "user", "content": "What is the weather in Oslo today? Please be precise."},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 21 degrees"}]},
        ],
        "tools": [{"name": "get_weather", "description": "The weather in a city", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
    })
    .to_string()
    .into_bytes()
}

fn translate(c: &mut Criterion) {
    let anthropic = request();
    let chat_equivalent =
        serde_json::to_vec(&to_chat(&serde_json::from_slice(&anthropic).unwrap()).unwrap())
            .unwrap();
    let answer = json!({"id": "chatcmpl-1", "model": "simulator", "choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": "It is sunny and 21 degrees in Oslo today."}}],
        "usage": {"prompt_tokens": 60, "completion_tokens": 12}});
    let events: Vec<Vec<u8>> = (0..16)
        .map(|i| json!({"id": "c1", "model": "simulator", "choices": [{"index": 0, "delta": {"content": format!("w{i} ")}}]}).to_string().into_bytes())
        .chain([
            json!({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).to_string().into_bytes(),
            json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 60, "completion_tokens": 16}}).to_string().into_bytes(),
            b"[DONE]".to_vec(),
        ])
        .collect();
    let mut g = c.benchmark_group("translate");
    g.bench_function("floor_chat_request_parse_write", |b| {
        b.iter(|| {
            let m: Map<String, Value> =
                serde_json::from_slice(black_box(&chat_equivalent)).unwrap();
            black_box(serde_json::to_vec(&m).unwrap())
        })
    });
    g.bench_function("messages_request_to_chat", |b| {
        b.iter(|| {
            let m: Map<String, Value> = serde_json::from_slice(black_box(&anthropic)).unwrap();
            black_box(serde_json::to_vec(&to_chat(&m).unwrap()).unwrap())
        })
    });
    g.bench_function("messages_whole_answer_back", |b| {
        b.iter(|| {
            black_box(serde_json::to_vec(&message_of(black_box(&answer), "simulator")).unwrap())
        })
    });
    g.bench_function("messages_stream_16_tokens_back", |b| {
        b.iter(|| {
            let mut t = StreamTranslator::new("simulator");
            let mut n = 0;
            for e in &events {
                n += t.translate(black_box(e)).len();
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, translate);
