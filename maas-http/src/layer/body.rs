//! The response body of an admitted request: passed through frame by frame
//! while its tokens are counted, and the request completed (usage recorded,
//! reservation reconciled, slot freed) when it ends. Dropped early (the
//! client went away), the [`Admitted`] it holds completes the request as
//! cancelled with the tokens counted so far.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use maas_core::gateway::{Admitted, Completion};
use maas_core::usage::RequestOutcome;
use serde::Deserialize;

use crate::metrics::{self, ModelMeters};

/// The most of a non-streamed answer kept to read its usage (and cache it).
const MAX_KEPT: usize = 8 << 20;

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<Details>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
struct Details {
    #[serde(default)]
    cached_tokens: u64,
}

#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Whole {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    choices: Vec<WholeChoice>,
}

#[derive(Debug, Deserialize)]
struct WholeChoice {
    #[serde(default)]
    message: Option<Delta>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug)]
enum Mode {
    /// Server-sent events; `strip` drops the usage chunk the client did not
    /// ask for.
    Sse { pending: BytesMut, strip: bool },
    /// A whole JSON answer, kept (up to [`MAX_KEPT`]) to read its usage.
    Json { kept: BytesMut, overflow: bool },
}

/// The metered response body (see the [module](self) docs).
#[derive(Debug)]
pub(crate) struct Metered {
    inner: Body,
    mode: Mode,
    admitted: Option<Box<Admitted>>,
    usage: Option<Usage>,
    counted: u64,
    /// Anthropic's Messages dialect (events `message_start`,
    /// `content_block_delta`, `message_delta`; `input_tokens` and
    /// `output_tokens`) instead of OpenAI's.
    anthropic: bool,
    /// Anthropic's input tokens, from `message_start`.
    anthropic_input: Option<Usage>,
    /// Where the tokens are counted.
    meters: Arc<ModelMeters>,
}

impl Metered {
    pub(crate) fn sse(
        inner: Body,
        admitted: Box<Admitted>,
        strip_usage: bool,
        meters: Arc<ModelMeters>,
    ) -> Self {
        Metered::new(
            inner,
            admitted,
            Mode::Sse {
                pending: BytesMut::new(),
                strip: strip_usage,
            },
            meters,
        )
    }

    pub(crate) fn json(inner: Body, admitted: Box<Admitted>, meters: Arc<ModelMeters>) -> Self {
        Metered::new(
            inner,
            admitted,
            Mode::Json {
                kept: BytesMut::new(),
                overflow: false,
            },
            meters,
        )
    }

    fn new(inner: Body, admitted: Box<Admitted>, mode: Mode, meters: Arc<ModelMeters>) -> Self {
        Metered {
            meters,
            inner,
            mode,
            admitted: Some(admitted),
            usage: None,
            counted: 0,
            anthropic: false,
            anthropic_input: None,
        }
    }

    /// The same body, read in Anthropic's Messages dialect.
    pub(crate) fn anthropic(mut self) -> Self {
        self.anthropic = true;
        self
    }

    /// Takes a frame of data; returns what to pass on.
    fn on_data(&mut self, data: Bytes) -> Bytes {
        match &mut self.mode {
            Mode::Json { kept, overflow } => {
                if !*overflow {
                    if kept.len() + data.len() <= MAX_KEPT {
                        kept.extend_from_slice(&data);
                    } else {
                        *overflow = true;
                        kept.clear();
                    }
                }
                data
            }
            Mode::Sse { pending, strip } => {
                let strip = *strip;
                pending.extend_from_slice(&data);
                let mut out = BytesMut::with_capacity(pending.len());
                let mut tokens = 0;
                while let Some((end, sep)) = event_end(pending) {
                    let event = pending.split_to(end + sep).freeze();
                    let (t, usage, drop) = if self.anthropic {
                        let (t, usage, start) = read_anthropic_event(&event[..end]);
                        if start.is_some() {
                            self.anthropic_input = start;
                        }
                        // The end's usage may leave out the input: the start's.
                        let usage = usage.map(|mut u| {
                            if u.prompt_tokens == 0
                                && let Some(s) = self.anthropic_input
                            {
                                u.prompt_tokens = s.prompt_tokens;
                                u.prompt_tokens_details = s.prompt_tokens_details;
                            }
                            u
                        });
                        (t, usage, false)
                    } else {
                        read_event(&event[..end], strip)
                    };
                    tokens += t;
                    if usage.is_some() {
                        self.usage = usage;
                    }
                    if !drop {
                        out.extend_from_slice(&event);
                    }
                }
                self.count(tokens);
                out.freeze()
            }
        }
    }

    fn count(&mut self, tokens: u64) {
        if tokens > 0 {
            self.counted += tokens;
            if let Some(a) = &mut self.admitted {
                a.record_output(tokens);
            }
        }
    }

    /// The answer ended (`ok`: completely): complete the request.
    fn finish(&mut self, ok: bool) {
        let Some(admitted) = self.admitted.take() else {
            return;
        };
        if let Mode::Json { kept, overflow } = &mut self.mode
            && ok
            && !*overflow
            && self.anthropic
        {
            if let Ok(m) = serde_json::from_slice::<AnthropicWhole>(kept) {
                self.usage = m.usage.map(AnthropicUsage::tokens);
                if self.usage.is_none() {
                    let bytes: usize = m
                        .content
                        .iter()
                        .map(|c| c.text.as_deref().map_or(0, str::len))
                        .sum();
                    self.counted = maas_core::admission::estimate_prompt_tokens(bytes);
                }
                if admitted.cacheable() {
                    admitted.cache_answer(Arc::from(&kept[..]));
                }
            }
        } else if let Mode::Json { kept, overflow } = &mut self.mode
            && ok
            && !*overflow
            && let Ok(w) = serde_json::from_slice::<Whole>(kept)
        {
            self.usage = w.usage;
            if w.usage.is_none() {
                let bytes: usize = w
                    .choices
                    .iter()
                    .map(|c| {
                        c.message
                            .as_ref()
                            .and_then(|m| m.content.as_ref())
                            .or(c.text.as_ref())
                            .map_or(0, String::len)
                    })
                    .sum();
                self.counted = maas_core::admission::estimate_prompt_tokens(bytes);
            }
            if admitted.cacheable() {
                admitted.cache_answer(Arc::from(&kept[..]));
            }
        }
        let done = match self.usage {
            Some(u) => Completion {
                input_tokens: u.prompt_tokens,
                output_tokens: u.completion_tokens,
                cached_tokens: u.prompt_tokens_details.map_or(0, |d| d.cached_tokens),
                estimated: false,
                outcome: if ok {
                    RequestOutcome::Success
                } else {
                    RequestOutcome::Error
                },
            },
            None => Completion {
                input_tokens: admitted.prompt_tokens(),
                output_tokens: self.counted.max(admitted.output_tokens()),
                cached_tokens: 0,
                estimated: true,
                outcome: if ok {
                    RequestOutcome::Success
                } else {
                    RequestOutcome::Error
                },
            },
        };
        self.meters.tokens(done.input_tokens, done.output_tokens);
        let gateway = admitted.gateway().clone();
        admitted.complete_detached(done);
        record_load(gateway.fair_share().counts());
    }
}

/// Sets the in-flight and queued gauges.
pub(crate) fn record_load((in_flight, queued): (usize, usize)) {
    ::metrics::gauge!(metrics::IN_FLIGHT).set(in_flight as f64);
    ::metrics::gauge!(metrics::QUEUED).set(queued as f64);
}

/// Where the first complete event of `buf` ends: (end, separator length).
pub(crate) fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some((i, 2));
            }
            if buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
                return Some((i, 3));
            }
        }
        i += 1;
    }
    None
}

/// Anthropic's usage: input tokens (besides those read from or written to
/// its prompt cache) and output tokens.
#[derive(Debug, Deserialize, Default, Clone, Copy)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// As OpenAI counts: every prompt token, the cached ones among them.
    fn tokens(self) -> Usage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: self
                .input_tokens
                .saturating_add(cached)
                .saturating_add(self.cache_creation_input_tokens.unwrap_or(0)),
            completion_tokens: self.output_tokens,
            prompt_tokens_details: (cached > 0).then_some(Details {
                cached_tokens: cached,
            }),
        }
    }
}

#[derive(Debug, Deserialize)]
struct AnthropicWhole {
    #[serde(default)]
    usage: Option<AnthropicUsage>,
    #[serde(default)]
    content: Vec<AnthropicBlock>,
}

#[derive(Debug, Deserialize)]
struct AnthropicBlock {
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AnthropicEvent {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: Option<AnthropicWhole>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

/// Reads one event of Anthropic's stream: (tokens in it, the final usage
/// at `message_delta`, the input at `message_start`).
fn read_anthropic_event(event: &[u8]) -> (u64, Option<Usage>, Option<Usage>) {
    let mut data = Vec::new();
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            data.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    let Ok(e) = serde_json::from_slice::<AnthropicEvent>(&data) else {
        return (0, None, None);
    };
    match e.kind.as_str() {
        "message_start" => (
            0,
            None,
            e.message.and_then(|m| m.usage).map(AnthropicUsage::tokens),
        ),
        "content_block_delta" => (1, None, None),
        "message_delta" => (0, e.usage.map(AnthropicUsage::tokens), None),
        _ => (0, None, None),
    }
}

/// Reads one event: (tokens in it, its usage, whether to drop it).
fn read_event(event: &[u8], strip: bool) -> (u64, Option<Usage>, bool) {
    let mut data = Vec::new();
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(rest);
        }
    }
    if data.is_empty() || data == b"[DONE]" {
        return (0, None, false);
    }
    let Ok(chunk) = serde_json::from_slice::<Chunk>(&data) else {
        return (0, None, false);
    };
    let tokens = chunk
        .choices
        .iter()
        .filter(|c| {
            let content = c.delta.as_ref().and_then(|d| d.content.as_deref());
            content.or(c.text.as_deref()).is_some_and(|s| !s.is_empty())
        })
        .count() as u64;
    let drop = strip && chunk.usage.is_some() && chunk.choices.is_empty();
    (tokens, chunk.usage, drop)
}

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let mut out = this.on_data(data);
                        let last = this.inner.is_end_stream();
                        if last {
                            // The last part (a client may stop polling once
                            // the body says it ended): complete now, with an
                            // unterminated last event passed on as it is.
                            if let Mode::Sse { pending, .. } = &mut this.mode
                                && !pending.is_empty()
                            {
                                let mut all = BytesMut::from(out);
                                all.extend_from_slice(pending);
                                pending.clear();
                                out = all.freeze();
                            }
                            this.finish(true);
                        }
                        if out.is_empty() {
                            if last {
                                return Poll::Ready(None);
                            }
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                Poll::Ready(Some(Err(e))) => {
                    this.finish(false);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    // An unterminated last event is passed on as it is.
                    let rest = match &mut this.mode {
                        Mode::Sse { pending, .. } if !pending.is_empty() => {
                            Some(pending.split().freeze())
                        }
                        _ => None,
                    };
                    this.finish(true);
                    return Poll::Ready(rest.map(|r| Ok(Frame::data(r))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Not before the request is completed (at the last part, or at the
        // end the next poll finds).
        self.admitted.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.mode {
            // Stripping may shorten it.
            Mode::Sse { .. } => SizeHint::default(),
            Mode::Json { .. } => self.inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_and_read() {
        assert_eq!(event_end(b"data: x\n\ndata: y"), Some((7, 2)));
        assert_eq!(event_end(b"data: x\n\r\n"), Some((7, 3)));
        assert_eq!(event_end(b"data: x\n"), None);
        let (t, u, d) = read_event(
            br#"data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}"#,
            true,
        );
        assert_eq!((t, u.is_none(), d), (1, true, false));
        let (t, u, d) = read_event(
            br#"data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            true,
        );
        assert_eq!((t, u.map(|u| u.completion_tokens), d), (0, Some(4), true));
        let (_, _, d) = read_event(
            br#"data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            false,
        );
        assert!(!d, "kept when the client asked for it");
        assert_eq!(read_event(b"data: [DONE]", true), (0, None, false));
        assert_eq!(read_event(b": keep-alive", true), (0, None, false));
        let (t, _, _) = read_event(br#"data: {"choices":[{"text":"a"},{"text":""}]}"#, true);
        assert_eq!(t, 1);
    }
}
