//! The simulator through `oneshot`: answer shapes and token counts, the
//! streamed events, OpenAI-shaped 400s naming the field, and pacing and
//! concurrency on paused tokio time (no test really sleeps); the injected
//! faults, through `oneshot` and over loopback TCP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use maas_http::simulator::{FAULT_PATH, Fault, FaultMode, SimulatorConfig, router};
use serde_json::{Value, json};
use tokio::time::Instant;
use tower::ServiceExt;

/// A simulator answering at once.
fn instant() -> Router {
    sim(0.0, 8)
}

fn sim(tokens_per_second: f64, max_concurrent: usize) -> Router {
    router(SimulatorConfig {
        tokens_per_second,
        max_concurrent,
        default_max_tokens: 7,
        ..SimulatorConfig::default()
    })
    .unwrap()
}

async fn send(app: &Router, path: &str, body: impl Into<String>) -> Response<Body> {
    let req = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.into()))
        .unwrap();
    app.clone().oneshot(req).await.unwrap()
}

async fn post(app: &Router, path: &str, body: &Value) -> Response<Body> {
    send(app, path, body.to_string()).await
}

async fn json_of(res: Response<Body>) -> Value {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// Reads the server-sent events of a body, one per frame.
struct Events(Body);

impl Events {
    fn of(res: Response<Body>) -> Self {
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-cache");
        Events(res.into_body())
    }

    /// The data of the next event; each frame holds exactly one.
    async fn next(&mut self) -> Option<String> {
        let frame = self.0.frame().await?.unwrap();
        let data = frame.into_data().unwrap();
        let text = std::str::from_utf8(&data).unwrap();
        let event = text.strip_prefix("data: ").unwrap();
        let event = event.strip_suffix("\n\n").unwrap();
        assert!(!event.contains("\n\n"), "one event per frame: {text:?}");
        Some(event.to_owned())
    }

    /// Every remaining event: JSON chunks, then `[DONE]` (checked, not
    /// returned).
    async fn rest(&mut self) -> Vec<Value> {
        let mut events = Vec::new();
        while let Some(e) = self.next().await {
            events.push(e);
        }
        assert_eq!(events.pop().as_deref(), Some("[DONE]"), "[DONE] comes last");
        events
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect()
    }
}

fn chat_body(max_tokens: u64, stream: bool) -> Value {
    json!({
        "model": "granite-3b",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hello there, simulator!"},
        ],
        "max_tokens": max_tokens,
        "stream": stream,
    })
}

/// Prompt tokens of [`chat_body`]: (14 + 23) bytes / 4, rounded up, + 3 per
/// message.
const CHAT_PROMPT_TOKENS: u64 = 10 + 2 * 3;

#[tokio::test]
async fn chat_answer_has_openai_shape_and_usage() {
    let app = instant();
    let res = post(&app, "/v1/chat/completions", &chat_body(5, false)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
    let body = json_of(res).await;
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(body["model"], "granite-3b");
    assert_eq!(
        body["choices"],
        json!([{
            "index": 0,
            "message": {"role": "assistant", "content": "lorem ipsum dolor sit amet "},
            "finish_reason": "length",
        }])
    );
    assert_eq!(
        body["usage"],
        json!({
            "prompt_tokens": CHAT_PROMPT_TOKENS,
            "completion_tokens": 5,
            "total_tokens": CHAT_PROMPT_TOKENS + 5,
        })
    );
}

#[tokio::test]
async fn chat_defaults_content_parts_and_max_completion_tokens() {
    let app = instant();
    // No limit: the default length, finishing with `stop`; content parts
    // count their text only.
    let body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "abcdefgh"},
            {"type": "image_url", "image_url": {"url": "data:,"}},
            {"type": "text", "text": "x"},
        ]}],
    });
    let body = json_of(post(&app, "/v1/chat/completions", &body).await).await;
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 7);
    assert_eq!(body["usage"]["prompt_tokens"], 3 + 3);
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content.split_whitespace().count(), 7);

    // max_completion_tokens wins over max_tokens; a tool-calling assistant
    // turn may have no content.
    let body = json!({
        "model": "m",
        "messages": [
            {"role": "user", "content": ""},
            {"role": "assistant", "content": null, "tool_calls": []},
        ],
        "max_tokens": 9,
        "max_completion_tokens": 2,
    });
    let body = json_of(post(&app, "/v1/chat/completions", &body).await).await;
    assert_eq!(body["usage"]["completion_tokens"], 2);
    assert_eq!(body["usage"]["prompt_tokens"], 6);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn completions_answer_has_openai_shape_and_usage() {
    let app = instant();
    let body = json!({"model": "m", "prompt": "Once upon a time", "max_tokens": 3});
    let res = post(&app, "/v1/completions", &body).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = json_of(res).await;
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "m");
    assert_eq!(
        body["choices"],
        json!([{
            "index": 0,
            "text": "lorem ipsum dolor ",
            "finish_reason": "length",
            "logprobs": null,
        }])
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7})
    );

    // An array of strings is one prompt; an empty prompt still counts 1.
    for (prompt, tokens) in [(json!(["ab", "cde"]), 2), (json!(""), 1)] {
        let body = json!({"model": "m", "prompt": prompt});
        let body = json_of(post(&app, "/v1/completions", &body).await).await;
        assert_eq!(body["usage"]["prompt_tokens"], tokens, "{prompt}");
        assert_eq!(body["usage"]["completion_tokens"], 7);
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
    }
}

#[tokio::test]
async fn large_limits_are_capped() {
    let body = json!({"model": "m", "prompt": "x", "max_tokens": 1_000_000});
    let body = json_of(post(&instant(), "/v1/completions", &body).await).await;
    assert_eq!(body["usage"]["completion_tokens"], 100_000);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn chat_stream_is_one_event_per_token_then_finish_then_done() {
    let app = instant();
    let res = post(&app, "/v1/chat/completions", &chat_body(4, true)).await;
    let chunks = Events::of(res).rest().await;
    assert_eq!(chunks.len(), 4 + 1, "4 tokens and the finish chunk");
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    let mut content = String::new();
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "granite-3b");
        assert!(chunk.get("usage").is_none(), "no usage unless asked");
        let choice = &chunk["choices"][0];
        assert_eq!(choice["index"], 0);
        if i < 4 {
            assert_eq!(choice["finish_reason"], Value::Null);
            assert_eq!(choice["delta"].get("role").is_some(), i == 0);
            content.push_str(choice["delta"]["content"].as_str().unwrap());
        }
    }
    assert_eq!(content, "lorem ipsum dolor sit ");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        chunks[4]["choices"],
        json!([{"index": 0, "delta": {}, "finish_reason": "length"}])
    );
}

#[tokio::test]
async fn stream_usage_comes_last_only_when_asked() {
    let app = instant();
    let mut body = chat_body(3, true);
    body["stream_options"] = json!({"include_usage": true});
    let chunks = Events::of(post(&app, "/v1/chat/completions", &body).await)
        .rest()
        .await;
    assert_eq!(chunks.len(), 3 + 1 + 1);
    for chunk in &chunks[..4] {
        assert_eq!(chunk["usage"], Value::Null);
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }
    let last = &chunks[4];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"],
        json!({
            "prompt_tokens": CHAT_PROMPT_TOKENS,
            "completion_tokens": 3,
            "total_tokens": CHAT_PROMPT_TOKENS + 3,
        })
    );

    body["stream_options"] = json!({"include_usage": false});
    let chunks = Events::of(post(&app, "/v1/chat/completions", &body).await)
        .rest()
        .await;
    assert_eq!(chunks.len(), 3 + 1);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
}

#[tokio::test]
async fn completions_stream() {
    let app = instant();
    let body = json!({
        "model": "m",
        "prompt": "abcd",
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let chunks = Events::of(post(&app, "/v1/completions", &body).await)
        .rest()
        .await;
    assert_eq!(chunks.len(), 7 + 1 + 1);
    let text: String = chunks[..7]
        .iter()
        .map(|c| {
            assert_eq!(c["object"], "text_completion");
            assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
            c["choices"][0]["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(text, "lorem ipsum dolor sit amet consectetur adipiscing ");
    assert!(chunks[0]["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(chunks[7]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[7]["choices"][0]["text"], "");
    assert_eq!(
        chunks[8]["usage"],
        json!({"prompt_tokens": 1, "completion_tokens": 7, "total_tokens": 8})
    );
}

#[tokio::test]
async fn bad_bodies_are_400_in_openai_shape_naming_the_param() {
    let app = instant();
    let chat = "/v1/chat/completions";
    let cmpl = "/v1/completions";
    let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
    let cases: Vec<(&str, String, &str)> = vec![
        (chat, String::new(), "body"),
        (chat, "{".into(), "body"),
        (chat, "not json".into(), "body"),
        (chat, "[]".into(), "body"),
        (chat, "42".into(), "body"),
        (chat, format!("{{{msgs}}}"), "model"),
        (chat, format!(r#"{{"model":5,{msgs}}}"#), "model"),
        (chat, format!(r#"{{"model":"",{msgs}}}"#), "model"),
        (chat, r#"{"model":"m"}"#.into(), "messages"),
        (chat, r#"{"model":"m","messages":[]}"#.into(), "messages"),
        (chat, r#"{"model":"m","messages":"hi"}"#.into(), "messages"),
        (
            chat,
            r#"{"model":"m","messages":[1]}"#.into(),
            "messages[0]",
        ),
        (
            chat,
            r#"{"model":"m","messages":[{"content":"hi"}]}"#.into(),
            "messages[0].role",
        ),
        (
            chat,
            r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"user"}]}"#.into(),
            "messages[1].content",
        ),
        (
            chat,
            r#"{"model":"m","messages":[{"role":"user","content":5}]}"#.into(),
            "messages[0].content",
        ),
        (
            chat,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}"#.into(),
            "messages[0].content[0].text",
        ),
        (
            chat,
            r#"{"model":"m","messages":[{"role":"user","content":[{"text":"a"}]}]}"#.into(),
            "messages[0].content[0].type",
        ),
        (
            chat,
            format!(r#"{{"model":"m",{msgs},"max_tokens":0}}"#),
            "max_tokens",
        ),
        (
            chat,
            format!(r#"{{"model":"m",{msgs},"max_tokens":-1}}"#),
            "max_tokens",
        ),
        (
            chat,
            format!(r#"{{"model":"m",{msgs},"max_tokens":1.5}}"#),
            "max_tokens",
        ),
        (
            chat,
            format!(r#"{{"model":"m",{msgs},"max_tokens":"5"}}"#),
            "max_tokens",
        ),
        (
            chat,
            format!(r#"{{"model":"m",{msgs},"max_completion_tokens":0}}"#),
            "max_completion_tokens",
        ),
        (
            chat,
            format!(r#"{{"model":"m",{msgs},"stream":"yes"}}"#),
            "stream",
        ),
        (
            chat,
            format!(r#"{{"model":"m",{msgs},"stream":true,"stream_options":1}}"#),
            "stream_options",
        ),
        (
            chat,
            format!(
                r#"{{"model":"m",{msgs},"stream":true,"stream_options":{{"include_usage":1}}}}"#
            ),
            "stream_options.include_usage",
        ),
        (cmpl, r#"{"model":"m"}"#.into(), "prompt"),
        (cmpl, r#"{"model":"m","prompt":5}"#.into(), "prompt"),
        (cmpl, r#"{"model":"m","prompt":[]}"#.into(), "prompt"),
        (cmpl, r#"{"model":"m","prompt":["a",1]}"#.into(), "prompt"),
        (cmpl, r#"{"prompt":"a"}"#.into(), "model"),
        (
            cmpl,
            r#"{"model":"m","prompt":"a","max_tokens":0}"#.into(),
            "max_tokens",
        ),
    ];
    for (path, body, param) in cases {
        let res = send(&app, path, body.clone()).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path} {body}");
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        let err = json_of(res).await;
        let err = &err["error"];
        assert_eq!(err["type"], "invalid_request_error", "{body}");
        assert_eq!(err["param"], param, "{path} {body}");
        assert!(!err["message"].as_str().unwrap().is_empty());
        assert_eq!(err["code"], Value::Null);
    }
}

#[tokio::test]
async fn health_models_and_unknown_routes() {
    let app = instant();
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let res = app.clone().oneshot(get("/health")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().contains_key("x-request-id"));
    assert_eq!(json_of(res).await, json!({"status": "ok"}));

    let res = app.clone().oneshot(get("/v1/models")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = json_of(res).await;
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], "simulator");
    assert_eq!(body["data"][0]["object"], "model");

    let res = app.clone().oneshot(get("/v2/nothing")).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let e = json_of(res).await;
    assert_eq!(e["error"]["code"], "not_found");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'/v2/nothing'"),
        "{e}"
    );

    let res = app
        .clone()
        .oneshot(get("/v1/chat/completions"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(json_of(res).await["error"]["code"], "method_not_allowed");
}

/// `at` is `expected` after `start`, to the timer's millisecond.
fn assert_at(start: Instant, at: Instant, expected: Duration) {
    let elapsed = at - start;
    assert!(
        elapsed >= expected && elapsed < expected + Duration::from_millis(2),
        "{elapsed:?} instead of {expected:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn tokens_are_paced_on_a_fixed_schedule() {
    let app = sim(10.0, 8);
    let start = Instant::now();
    let mut events = Events::of(post(&app, "/v1/chat/completions", &chat_body(5, true)).await);
    for k in 1..=5 {
        events.next().await.unwrap();
        assert_at(start, Instant::now(), Duration::from_millis(100 * k));
    }
    // The finish chunk and [DONE] follow the last token at once.
    assert_eq!(events.rest().await.len(), 1);
    assert_at(start, Instant::now(), Duration::from_millis(500));

    // A late reader gets the tokens that are due at once, then the rest on
    // the original schedule (no drift).
    let start = Instant::now();
    let mut events = Events::of(post(&app, "/v1/chat/completions", &chat_body(5, true)).await);
    events.next().await.unwrap();
    tokio::time::advance(Duration::from_millis(250)).await;
    let late = Instant::now();
    events.next().await.unwrap();
    events.next().await.unwrap();
    assert_eq!(Instant::now(), late, "tokens 2 and 3 were due");
    events.next().await.unwrap();
    assert_at(start, Instant::now(), Duration::from_millis(400));

    // A whole answer comes when its last token is due.
    let start = Instant::now();
    let res = post(&app, "/v1/chat/completions", &chat_body(5, false)).await;
    assert_at(start, Instant::now(), Duration::from_millis(500));
    assert_eq!(json_of(res).await["usage"]["completion_tokens"], 5);
}

#[tokio::test(start_paused = true)]
async fn a_stream_waits_for_a_slot_until_the_previous_one_finishes() {
    let app = sim(1.0, 1);
    let start = Instant::now();
    let mut first = Events::of(post(&app, "/v1/chat/completions", &chat_body(3, true)).await);
    first.next().await.unwrap();
    assert_at(start, Instant::now(), Duration::from_secs(1));

    // The second is answered (headers) but generates nothing while the
    // first holds the only slot, however long that takes.
    let mut second = Events::of(post(&app, "/v1/chat/completions", &chat_body(2, true)).await);
    let waited = tokio::time::timeout(Duration::from_secs(60), second.next()).await;
    assert!(waited.is_err(), "no token before the first one finishes");

    // The first finishes: its remaining tokens were due long ago.
    assert_eq!(first.rest().await.len(), 2 + 1);
    let freed = Instant::now();
    // The second starts now: its first token is due a second later.
    second.next().await.unwrap();
    assert_at(freed, Instant::now(), Duration::from_secs(1));
    assert_eq!(second.rest().await.len(), 1 + 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_stream_frees_its_slot() {
    let app = sim(1.0, 1);
    let mut first = Events::of(post(&app, "/v1/chat/completions", &chat_body(50, true)).await);
    first.next().await.unwrap();
    let mut second = Events::of(post(&app, "/v1/chat/completions", &chat_body(2, true)).await);
    assert!(
        tokio::time::timeout(Duration::from_secs(10), second.next())
            .await
            .is_err()
    );
    // The client of the first goes away.
    drop(first);
    let freed = Instant::now();
    second.next().await.unwrap();
    assert_at(freed, Instant::now(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn whole_answers_take_turns_in_arrival_order() {
    let app = sim(1.0, 1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for max_tokens in [2, 3, 1] {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let res = post(&app, "/v1/chat/completions", &chat_body(max_tokens, false)).await;
            assert_eq!(res.status(), StatusCode::OK);
            Instant::now()
        }));
        // Arrive in this order.
        tokio::task::yield_now().await;
    }
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.unwrap());
    }
    assert_at(start, done[0], Duration::from_secs(2));
    assert_at(start, done[1], Duration::from_secs(2 + 3));
    assert_at(start, done[2], Duration::from_secs(2 + 3 + 1));
}

#[tokio::test(start_paused = true)]
async fn slots_are_shared_up_to_max_concurrent() {
    let app = sim(1.0, 2);
    let start = Instant::now();
    let mut a = Events::of(
        post(
            &app,
            "/v1/completions",
            &json!({"model": "m", "prompt": "a", "stream": true}),
        )
        .await,
    );
    let mut b = Events::of(
        post(
            &app,
            "/v1/completions",
            &json!({"model": "m", "prompt": "b", "stream": true}),
        )
        .await,
    );
    let mut c = Events::of(
        post(
            &app,
            "/v1/completions",
            &json!({"model": "m", "prompt": "c", "stream": true}),
        )
        .await,
    );
    // a and b generate side by side; c waits for a slot.
    // (A body generates as it is read, as hyper reads it: read both.)
    let (first_a, first_b) = tokio::join!(a.next(), b.next());
    assert!(first_a.is_some() && first_b.is_some());
    assert_at(start, Instant::now(), Duration::from_secs(1));
    assert!(
        tokio::time::timeout(Duration::from_secs(30), c.next())
            .await
            .is_err()
    );
    drop(b);
    let freed = Instant::now();
    c.next().await.unwrap();
    assert_at(freed, Instant::now(), Duration::from_secs(1));
    drop(a);
}

#[tokio::test]
async fn serve_answers_over_tcp_and_shuts_down() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(maas_http::simulator::serve(
        listener,
        SimulatorConfig::default(),
        async {
            let _ = rx.await;
        },
    ));
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.write_all(b"GET /health HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        answer
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(r#"{"status":"ok"}"#), "{answer}");
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad = SimulatorConfig {
        max_concurrent: 0,
        ..SimulatorConfig::default()
    };
    let err = maas_http::simulator::serve(listener, bad, async {})
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

/// Embeddings: a unit vector per input, equal inputs embed equally, token
/// ids and base64 accepted, usage counted; bad input names its param.
#[tokio::test]
async fn embeddings_have_openai_shape_and_usage() {
    let app = instant();
    let res = post(
        &app,
        "/v1/embeddings",
        &json!({"model": "e", "input": ["12345678", "abc", "12345678"]}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = json_of(res).await;
    assert_eq!(
        (&body["object"], &body["model"]),
        (&json!("list"), &json!("e"))
    );
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    let v: Vec<f64> = data[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(v.len(), maas_http::simulator::EMBEDDING_DIMENSIONS);
    let norm: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "{norm}");
    assert_eq!(data[0]["embedding"], data[2]["embedding"]);
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 2 + 1 + 2, "total_tokens": 5})
    );

    let res = post(
        &app,
        "/v1/embeddings",
        &json!({"model": "e", "input": [[1, 2, 3], [4]], "encoding_format": "base64", "dimensions": 3}),
    )
    .await;
    let body = json_of(res).await;
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    assert_eq!(body["data"][1]["embedding"].as_str().unwrap().len(), 16);

    for (bad, param) in [
        (json!({"model": "e"}), "input"),
        (json!({"model": "e", "input": ""}), "input"),
        (json!({"model": "e", "input": [1, "a"]}), "input"),
        (json!({"input": "a"}), "model"),
        (
            json!({"model": "e", "input": "a", "dimensions": 0}),
            "dimensions",
        ),
        (
            json!({"model": "e", "input": "a", "encoding_format": "hex"}),
            "encoding_format",
        ),
    ] {
        let res = post(&app, "/v1/embeddings", &bad).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(json_of(res).await["error"]["param"], param, "{bad}");
    }
}

/// Anthropic's Messages answered natively: a message with its usage, or
/// its event stream; errors in Anthropic's shape; options it does not model
/// ignored.
#[tokio::test]
async fn messages_are_answered_in_anthropics_shapes() {
    let app = instant();
    let body = json!({"model": "claude", "max_tokens": 4, "system": "Be brief.", "thinking": {"type": "enabled", "budget_tokens": 1024},
                      "messages": [{"role": "user", "content": "12345678"}]});
    let res = post(&app, "/v1/messages", &body).await;
    assert_eq!(res.status(), StatusCode::OK);
    let m = json_of(res).await;
    assert_eq!(
        (&m["type"], &m["model"]),
        (&json!("message"), &json!("claude"))
    );
    assert_eq!(m["content"][0]["text"], "lorem ipsum dolor sit ");
    assert_eq!(m["usage"]["output_tokens"], 4);
    assert_eq!(m["stop_reason"], "max_tokens");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let res = post(&app, "/v1/messages", &streamed).await;
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(kinds.first(), Some(&"message_start"));
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "content_block_delta")
            .count(),
        4
    );
    assert_eq!(kinds.last(), Some(&"message_stop"));
    assert!(text.contains(r#""output_tokens":4"#), "{text}");

    let res = post(
        &app,
        "/v1/messages",
        &json!({"model": "claude", "messages": []}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let e = json_of(res).await;
    assert_eq!(
        (&e["type"], &e["error"]["type"]),
        (&json!("error"), &json!("invalid_request_error"))
    );
}

/// The Responses API answered: a response object with its usage, or its
/// event stream.
#[tokio::test]
async fn responses_are_answered() {
    let app = instant();
    let res = post(
        &app,
        "/v1/responses",
        &json!({"model": "m", "input": "Hi", "max_output_tokens": 3}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let r = json_of(res).await;
    assert_eq!(
        (&r["object"], &r["usage"]["output_tokens"]),
        (&json!("response"), &json!(3))
    );
    assert_eq!(r["output"][0]["content"][0]["text"], "lorem ipsum dolor ");
    let res = post(
        &app,
        "/v1/responses",
        &json!({"model": "m", "input": "Hi", "max_output_tokens": 2, "stream": true}),
    )
    .await;
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("event: response.created"), "{text}");
    assert_eq!(text.matches("event: response.output_text.delta").count(), 2);
    let res = post(
        &app,
        "/v1/responses",
        &json!({"model": "m", "input": "Hi", "previous_response_id": "r"}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(res).await["error"]["param"], "previous_response_id");
}

// ---------------------------------------------------------------- faults

async fn send_to(app: &Router, method: &str, path: &str, body: &str) -> Response<Body> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    app.clone().oneshot(req).await.unwrap()
}

async fn put_fault(app: &Router, body: &str) -> Response<Body> {
    send_to(app, "PUT", FAULT_PATH, body).await
}

/// The fault is read and set through `/simulator/fault`; `error` answers its
/// status on every inference route (Anthropic's shape on Messages), the
/// other routes keep answering; `none` restores; bad bodies are 400s naming
/// the field.
#[tokio::test]
async fn an_error_fault_answers_its_status_until_none_restores() {
    let app = instant();
    let res = send_to(&app, "GET", FAULT_PATH, "").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(json_of(res).await, json!({"mode": "none", "status": 503}));

    let res = put_fault(&app, r#"{"mode": "error"}"#).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(json_of(res).await, json!({"mode": "error", "status": 503}));
    let res = send_to(&app, "GET", FAULT_PATH, "").await;
    assert_eq!(json_of(res).await, json!({"mode": "error", "status": 503}));

    let res = post(&app, "/v1/chat/completions", &chat_body(3, false)).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
    let e = json_of(res).await;
    assert_eq!(
        (&e["error"]["type"], &e["error"]["code"]),
        (&json!("server_error"), &json!("simulated_fault")),
        "{e}"
    );
    for (path, body) in [
        ("/v1/completions", json!({"model": "m", "prompt": "hi"})),
        ("/v1/embeddings", json!({"model": "e", "input": "hi"})),
        ("/v1/responses", json!({"model": "m", "input": "hi"})),
        // Even a bad request: the instance is down.
        ("/v1/chat/completions", json!({})),
    ] {
        let res = post(&app, path, &body).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
    }
    let messages = json!({"model": "claude", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]});
    let res = post(&app, "/v1/messages", &messages).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json_of(res).await["type"], "error");
    // Not the inference routes: unaffected.
    for path in ["/health", "/v1/models"] {
        let res = send_to(&app, "GET", path, "").await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }

    let res = put_fault(&app, r#"{"mode": "error", "status": 500}"#).await;
    assert_eq!(json_of(res).await, json!({"mode": "error", "status": 500}));
    let res = post(&app, "/v1/chat/completions", &chat_body(3, false)).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);

    for (bad, param) in [
        ("", "body"),
        ("nope", "body"),
        ("[]", "body"),
        (r#"{"status": 503}"#, "mode"),
        (r#"{"mode": "explode"}"#, "mode"),
        (r#"{"mode": 1}"#, "mode"),
        (r#"{"mode": "error", "status": 200}"#, "status"),
        (r#"{"mode": "error", "status": 70000}"#, "status"),
        (r#"{"mode": "error", "status": "503"}"#, "status"),
        (r#"{"mode": "none", "delay": 1}"#, "delay"),
    ] {
        let res = put_fault(&app, bad).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
        let e = json_of(res).await;
        assert_eq!(e["error"]["param"], param, "{bad}: {e}");
        assert_eq!(e["error"]["type"], "invalid_request_error", "{bad}");
    }
    // A bad body changed nothing.
    let res = send_to(&app, "GET", FAULT_PATH, "").await;
    assert_eq!(json_of(res).await, json!({"mode": "error", "status": 500}));
    let res = send_to(&app, "DELETE", FAULT_PATH, "").await;
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);

    let res = put_fault(&app, r#"{"mode": "none"}"#).await;
    assert_eq!(json_of(res).await, json!({"mode": "none", "status": 503}));
    let res = post(&app, "/v1/chat/completions", &chat_body(3, false)).await;
    assert_eq!(res.status(), StatusCode::OK);
}

/// A fault set at start applies from the first request.
#[tokio::test]
async fn a_fault_can_be_set_at_start() {
    let app = router(SimulatorConfig {
        tokens_per_second: 0.0,
        fault: Fault::error(429),
        ..SimulatorConfig::default()
    })
    .unwrap();
    let res = post(&app, "/v1/chat/completions", &chat_body(3, false)).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json_of(res).await["error"]["type"], "rate_limit_error");
    let bad = SimulatorConfig {
        fault: Fault::error(200),
        ..SimulatorConfig::default()
    };
    assert!(router(bad).is_err());
    assert_eq!(
        SimulatorConfig::default().fault,
        Fault::new(FaultMode::None)
    );
}

/// A simulator served on a loopback port, its URL and a client.
async fn served() -> (String, reqwest::Client) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = SimulatorConfig {
        tokens_per_second: 0.0,
        ..SimulatorConfig::default()
    };
    tokio::spawn(maas_http::simulator::serve(
        listener,
        config,
        std::future::pending(),
    ));
    (url, reqwest::Client::new())
}

async fn set_fault(client: &reqwest::Client, url: &str, body: &str) {
    let res = client
        .put(format!("{url}{FAULT_PATH}"))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
}

fn chat_request(client: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
    client
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat_body(3, false).to_string())
}

/// `close` drops the connection without an answer: the client gets an
/// error, not a response; `none` restores.
#[tokio::test]
async fn a_close_fault_drops_the_connection_without_an_answer() {
    let (url, client) = served().await;
    set_fault(&client, &url, r#"{"mode": "close"}"#).await;
    for _ in 0..3 {
        let e = chat_request(&client, &url).send().await.unwrap_err();
        assert!(!e.is_timeout() && e.status().is_none(), "{e:?}");
    }
    // Streamed requests too: not even the headers come.
    let e = client
        .post(format!("{url}/v1/chat/completions"))
        .body(chat_body(3, true).to_string())
        .send()
        .await
        .unwrap_err();
    assert!(e.status().is_none(), "{e:?}");
    set_fault(&client, &url, r#"{"mode": "none"}"#).await;
    let res = chat_request(&client, &url).send().await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
}

/// `hang` never answers: a client giving up after 300 ms gets its timeout;
/// the request ends with it (the simulator can still shut down); `none`
/// restores.
#[tokio::test]
async fn a_hang_fault_never_answers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(maas_http::simulator::serve(
        listener,
        SimulatorConfig {
            tokens_per_second: 0.0,
            // One slot: a hung request must not hold it.
            max_concurrent: 1,
            fault: Fault::new(FaultMode::Hang),
            ..SimulatorConfig::default()
        },
        async {
            let _ = stopped.await;
        },
    ));
    let client = reqwest::Client::new();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let e = chat_request(&impatient, &url).send().await.unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    // The fault route itself answers while inference hangs.
    let res = client
        .get(format!("{url}{FAULT_PATH}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.text().await.unwrap(), r#"{"mode":"hang","status":503}"#);
    set_fault(&client, &url, r#"{"mode": "none"}"#).await;
    let res = chat_request(&impatient, &url).send().await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    // The hung request ended with its client: the graceful shutdown has
    // nothing to wait for (the idle keep-alive connections close at once).
    drop((client, impatient));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the hung request ended with its client")
        .unwrap()
        .unwrap();
}
