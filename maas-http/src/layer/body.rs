//! The response body of an admitted request: passed through frame by frame
//! while its tokens are counted, and the request completed (usage recorded,
//! reservation reconciled, slot freed) when it ends. Dropped early (the
//! client went away), the [`Admitted`] it holds completes the request as
//! cancelled with the tokens counted so far.

use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use maas_core::gateway::{Admitted, Completion};
use maas_core::usage::RequestOutcome;
use serde::Deserialize;

use super::scan;
use crate::metrics::ModelMeters;

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

/// One event of a chat-completions stream, read without allocating: how
/// many choices it has and how many carry text, and its usage.
#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Choices,
    #[serde(default)]
    usage: Option<Usage>,
}

/// The `choices` of a stream event: how many, how many with text.
#[derive(Debug, Default, PartialEq, Eq)]
struct Choices {
    len: usize,
    with_text: u64,
}

impl<'de> Deserialize<'de> for Choices {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Choices;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of choices")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Choices, A::Error> {
                let mut out = Choices::default();
                while let Some(c) = seq.next_element::<ChunkChoice>()? {
                    out.len += 1;
                    let text = c.delta.and_then(|d| d.content).or(c.text);
                    if text.is_some_and(|t| t.0 > 0) {
                        out.with_text += 1;
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    text: Option<Text>,
}

#[derive(Debug, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<Text>,
}

/// A JSON string, of which only the length (in bytes, unescaped) is kept.
#[derive(Debug, Clone, Copy)]
struct Text(usize);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.len()))
            }
        }
        d.deserialize_str(V)
    }
}

/// A whole chat completion: its usage, and the bytes of text its choices
/// carry (their `message.content`, else `text`).
#[derive(Debug, Deserialize)]
struct Whole {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    choices: Texts<WholeChoice>,
}

/// An array of which only the total bytes of text is kept.
#[derive(Debug)]
struct Texts<T>(usize, std::marker::PhantomData<T>);

impl<T> Default for Texts<T> {
    fn default() -> Self {
        Texts(0, std::marker::PhantomData)
    }
}

/// An item of [`Texts`]: the bytes of text it carries.
trait HasText {
    fn text(&self) -> usize;
}

impl<'de, T: Deserialize<'de> + HasText> Deserialize<'de> for Texts<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + HasText> serde::de::Visitor<'de> for V<T> {
            type Value = Texts<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Texts<T>, A::Error> {
                let mut sum = 0;
                while let Some(item) = seq.next_element::<T>()? {
                    sum += item.text();
                }
                Ok(Texts(sum, std::marker::PhantomData))
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

#[derive(Debug, Deserialize)]
struct WholeChoice {
    #[serde(default)]
    message: Option<Delta>,
    #[serde(default)]
    text: Option<Text>,
}

impl HasText for WholeChoice {
    fn text(&self) -> usize {
        self.message
            .as_ref()
            .and_then(|m| m.content)
            .or(self.text)
            .map_or(0, |t| t.0)
    }
}

#[derive(Debug)]
enum Mode {
    /// Server-sent events; `strip` drops the usage chunk the client did not
    /// ask for.
    Sse {
        pending: BytesMut,
        strip: bool,
        memo: Memo,
    },
    /// A whole JSON answer, kept (up to [`MAX_KEPT`]) to read its usage:
    /// its one part as it came (no copy), or its parts joined.
    Json {
        first: Option<Bytes>,
        kept: BytesMut,
        overflow: bool,
    },
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
                memo: Memo::default(),
            },
            meters,
        )
    }

    pub(crate) fn json(inner: Body, admitted: Box<Admitted>, meters: Arc<ModelMeters>) -> Self {
        Metered::new(
            inner,
            admitted,
            Mode::Json {
                first: None,
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
            Mode::Json {
                first,
                kept,
                overflow,
            } => {
                if !*overflow {
                    let held = first.as_ref().map_or(0, Bytes::len) + kept.len();
                    if held + data.len() > MAX_KEPT {
                        *overflow = true;
                        *first = None;
                        kept.clear();
                    } else if held == 0 {
                        first.replace(data.clone());
                    } else {
                        if let Some(f) = first.take() {
                            kept.extend_from_slice(&f);
                        }
                        kept.extend_from_slice(&data);
                    }
                }
                data
            }
            Mode::Sse {
                pending,
                strip,
                memo,
            } => {
                let strip = *strip;
                let mut tokens = 0;
                let mut reader = EventReader {
                    strip,
                    memo,
                    anthropic: self.anthropic,
                    input: &mut self.anthropic_input,
                    usage: &mut self.usage,
                };
                let out = if pending.is_empty() {
                    // The usual: the part holds whole events. They are passed
                    // on as they came (no copy) unless one is dropped.
                    let mut at = 0;
                    let mut kept: Option<BytesMut> = None;
                    while let Some((end, sep)) = event_end(&data[at..]) {
                        let (t, drop) = reader.read(&data[at..at + end]);
                        tokens += t;
                        match (&mut kept, drop) {
                            (None, true) => kept = Some(BytesMut::from(&data[..at])),
                            (Some(k), false) => k.extend_from_slice(&data[at..at + end + sep]),
                            _ => {}
                        }
                        at += end + sep;
                    }
                    pending.extend_from_slice(&data[at..]);
                    match kept {
                        Some(k) => k.freeze(),
                        None if at == data.len() => data,
                        None => data.slice(..at),
                    }
                } else {
                    pending.extend_from_slice(&data);
                    let mut out = BytesMut::with_capacity(pending.len());
                    while let Some((end, sep)) = event_end(pending) {
                        let event = pending.split_to(end + sep);
                        let (t, drop) = reader.read(&event[..end]);
                        tokens += t;
                        if !drop {
                            out.extend_from_slice(&event);
                        }
                    }
                    out.freeze()
                };
                self.count(tokens);
                out
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
        if let Mode::Json {
            first,
            kept,
            overflow: false,
        } = &self.mode
            && ok
        {
            let whole: &[u8] = match first {
                Some(f) => f,
                None => kept,
            };
            // The usual answer states its usage: read only that (an answer
            // to be cached is parsed whole, so that only valid JSON is kept).
            let quick = (!admitted.cacheable())
                .then(|| quick_usage(whole, self.anthropic))
                .flatten();
            let read = if let Some(usage) = quick {
                Ok((Some(usage), 0))
            } else if self.anthropic {
                serde_json::from_slice::<AnthropicWhole>(whole)
                    .map(|m| (m.usage.map(AnthropicUsage::tokens), m.content.0))
            } else {
                serde_json::from_slice::<Whole>(whole).map(|w| (w.usage, w.choices.0))
            };
            if let Ok((usage, text)) = read {
                self.usage = usage;
                if usage.is_none() {
                    self.counted = maas_core::admission::estimate_prompt_tokens(text);
                }
                if admitted.cacheable() {
                    admitted.cache_answer(Arc::from(whole));
                }
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
        self.meters.load.set(gateway.fair_share().counts());
    }
}

/// The answer's top-level `usage` (OpenAI's or, `anthropic`, Anthropic's),
/// read without parsing the rest ([`scan`]). None when the answer has
/// none, has `null`, or is not of the usual shape: the caller then parses
/// the whole answer.
fn quick_usage(whole: &[u8], anthropic: bool) -> Option<Usage> {
    static USAGE: LazyLock<scan::LastKey> = LazyLock::new(|| scan::LastKey::new("usage"));
    let value = match scan::last_field(whole, &USAGE) {
        Some(v) => v,
        None => scan::field(whole, b"usage")??,
    };
    if anthropic {
        serde_json::from_slice::<Option<AnthropicUsage>>(value)
            .ok()?
            .map(AnthropicUsage::tokens)
    } else {
        match scan_usage(value) {
            Some(usage) => usage,
            None => serde_json::from_slice::<Option<Usage>>(value).ok()?,
        }
    }
}

/// OpenAI's `usage` value read by [`scan`] as serde_json reads an
/// `Option<Usage>` (Some(None): `null`); None where serde_json must decide.
/// Taken: an object of keys in printable ASCII whose counts are plain
/// non-negative integers, each written once, and whose other values are
/// plain integers, `null`, or objects of those (the usual `*_details`);
/// anything else (a sign, a fraction, a string, a field twice, an escaped
/// key) is left to serde_json, so that what it would refuse is refused.
fn scan_usage(v: &[u8]) -> Option<Option<Usage>> {
    if v == b"null" {
        return Some(None);
    }
    let mut usage = Usage::default();
    let (mut prompt, mut completion, mut details) = (false, false, false);
    let mut c = scan::Cursor::new(v);
    c.object(|c, key| {
        if !plain_key(key) {
            return None;
        }
        match key {
            b"prompt_tokens" if !prompt => {
                prompt = true;
                usage.prompt_tokens = scan::unsigned(c.value()?)?;
            }
            b"completion_tokens" if !completion => {
                completion = true;
                usage.completion_tokens = scan::unsigned(c.value()?)?;
            }
            b"prompt_tokens_details" if !details => {
                details = true;
                usage.prompt_tokens_details = match c.peek()? {
                    b'n' => (c.value()? == b"null").then_some(None)?,
                    _ => {
                        let mut cached = None;
                        plain_object(c, |k, v| match k {
                            b"cached_tokens" if cached.is_none() => {
                                cached = Some(scan::unsigned(v)?);
                                Some(())
                            }
                            b"cached_tokens" => None,
                            _ => plain_value(v),
                        })?;
                        Some(Details {
                            cached_tokens: cached.unwrap_or(0),
                        })
                    }
                };
            }
            b"prompt_tokens" | b"completion_tokens" | b"prompt_tokens_details" => return None,
            _ => match c.peek()? {
                b'{' => plain_object(c, |_, v| plain_value(v))?,
                _ => plain_value(c.value()?)?,
            },
        }
        Some(())
    })?;
    c.end()?;
    Some(Some(usage))
}

/// Whether serde_json reads the key `k` (escapes already refused by the
/// scan) as written: printable ASCII.
fn plain_key(k: &[u8]) -> bool {
    k.iter().all(|b| (0x20..0x7f).contains(b))
}

/// Some for a value [`scan_usage`] skips knowing serde_json takes it: a
/// plain non-negative integer, or `null`.
fn plain_value(v: &[u8]) -> Option<()> {
    (v == b"null" || scan::unsigned(v).is_some()).then_some(())
}

/// Reads an object of plain keys ([`plain_key`]), `f` deciding on each
/// key and its value as written (None refuses the object).
fn plain_object(
    c: &mut scan::Cursor<'_>,
    mut f: impl FnMut(&[u8], &[u8]) -> Option<()>,
) -> Option<()> {
    c.object(|c, k| {
        if !plain_key(k) {
            return None;
        }
        f(k, c.value()?)
    })
}

/// Where the first complete event of `buf` ends: (end, separator length).
pub(crate) fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    memchr::memchr_iter(b'\n', buf).find_map(|i| match buf.get(i + 1..)? {
        [b'\n', ..] => Some((i, 2)),
        [b'\r', b'\n', ..] => Some((i, 3)),
        _ => None,
    })
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
    content: Texts<AnthropicBlock>,
}

#[derive(Debug, Deserialize)]
struct AnthropicBlock {
    #[serde(default)]
    text: Option<Text>,
}

impl HasText for AnthropicBlock {
    fn text(&self) -> usize {
        self.text.map_or(0, |t| t.0)
    }
}

#[derive(Debug, Deserialize)]
struct AnthropicEvent<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default)]
    message: Option<AnthropicWhole>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

/// The data of an SSE event: its `data:` lines joined by newlines,
/// borrowed from the event when it has one (the usual), else joined into
/// `scratch`.
fn event_data<'a>(event: &'a [u8], scratch: &'a mut Vec<u8>) -> &'a [u8] {
    let mut first: Option<&[u8]> = None;
    let mut joined = false;
    let mut start = 0;
    loop {
        let end = memchr::memchr(b'\n', &event[start..]).map_or(event.len(), |i| start + i);
        let line = &event[start..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            let data = rest.strip_prefix(b" ").unwrap_or(rest);
            match first {
                None => first = Some(data),
                Some(f) => {
                    if !joined {
                        scratch.extend_from_slice(f);
                        joined = true;
                    }
                    scratch.push(b'\n');
                    scratch.extend_from_slice(data);
                }
            }
        }
        if end == event.len() {
            break;
        }
        start = end + 1;
    }
    match first {
        Some(_) if joined => scratch,
        Some(f) => f,
        None => &[],
    }
}

/// Reads the events of one answer, in its dialect.
struct EventReader<'m> {
    strip: bool,
    /// The last event read by its shape ([`Memo`]).
    memo: &'m mut Memo,
    anthropic: bool,
    /// Anthropic's input tokens, from `message_start`.
    input: &'m mut Option<Usage>,
    /// The answer's usage, once an event carried it.
    usage: &'m mut Option<Usage>,
}

impl EventReader<'_> {
    /// Reads one event: (tokens in it, whether to drop it).
    fn read(&mut self, event: &[u8]) -> (u64, bool) {
        let (t, usage, drop) = if self.anthropic {
            let (t, usage, start) = read_anthropic_event(event);
            if start.is_some() {
                *self.input = start;
            }
            // The end's usage may leave out the input: the start's.
            let usage = usage.map(|mut u| {
                if u.prompt_tokens == 0
                    && let Some(s) = *self.input
                {
                    u.prompt_tokens = s.prompt_tokens;
                    u.prompt_tokens_details = s.prompt_tokens_details;
                }
                u
            });
            (t, usage, false)
        } else {
            read_event(event, self.strip, self.memo)
        };
        if usage.is_some() {
            *self.usage = usage;
        }
        (t, drop)
    }
}

/// Reads one event of Anthropic's stream: (tokens in it, the final usage
/// at `message_delta`, the input at `message_start`).
fn read_anthropic_event(event: &[u8]) -> (u64, Option<Usage>, Option<Usage>) {
    let mut scratch = Vec::new();
    let data = event_data(event, &mut scratch);
    if quick_text_delta(data) == Some(true) {
        return (1, None, None);
    }
    let Ok(e) = serde_json::from_slice::<AnthropicEvent>(data) else {
        return (0, None, None);
    };
    match &*e.kind {
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
fn read_event(event: &[u8], strip: bool, memo: &mut Memo) -> (u64, Option<Usage>, bool) {
    let mut scratch = Vec::new();
    let data = event_data(event, &mut scratch);
    if data.is_empty() || data == b"[DONE]" {
        return (0, None, false);
    }
    let read = memo.read(data).or_else(|| match quick_chunk(data) {
        Some((choices, usage, text)) => {
            if let Some(text) = text {
                memo.keep(data, text, usage);
            }
            Some((choices, usage))
        }
        None => slow_chunk(data),
    });
    let Some((choices, usage)) = read else {
        return (0, None, false);
    };
    let drop = strip && usage.is_some() && choices.len == 0;
    (choices.with_text, usage, drop)
}

/// A chunk's choices and usage, parsed by serde_json (None: unreadable).
fn slow_chunk(data: &[u8]) -> Option<(Choices, Option<Usage>)> {
    let chunk = serde_json::from_slice::<Chunk>(data).ok()?;
    Some((chunk.choices, chunk.usage))
}

/// Where a string is in a text: its content's first byte, and its closing
/// quote.
type TextAt = (usize, usize);

/// The last stream event read whose choices hang on one string (one
/// choice, with `delta.content` a string). An event written byte for byte
/// as it was around a string of its own reads as it did, but for whether
/// that string is empty; a stream's chunks mostly differ from the one
/// before in their text alone (the same id, model, `created` and shape),
/// so most are read by comparing bytes instead of by a scan (issue 24:
/// the scan was ~2.6k instructions an event).
///
/// Why that holds: the bytes before the string are the same, so reading
/// them reaches it in the same state (in a string, at the same place in
/// the same containers); it closes at its first unescaped quote, found as
/// the scan finds it; the bytes after it are the same, read from the same
/// state. Every other value, the usage included, is what it was.
#[derive(Debug, Default)]
struct Memo {
    /// The event's data.
    data: Vec<u8>,
    /// Its string.
    text: Option<TextAt>,
    /// Its usage.
    usage: Option<Usage>,
}

impl Memo {
    /// `data` read as the event kept, when it is written as that one
    /// around a string of its own.
    fn read(&self, data: &[u8]) -> Option<(Choices, Option<Usage>)> {
        let (start, close) = self.text?;
        let (before, after) = (self.data.get(..start)?, self.data.get(close..)?);
        let end = data.len().checked_sub(after.len())?;
        if end < start
            || !data.starts_with(before)
            || !data.ends_with(after)
            || scan::string_close(data, start)? != end
        {
            return None;
        }
        let choices = Choices {
            len: 1,
            with_text: u64::from(end > start),
        };
        Some((choices, self.usage))
    }

    /// Keeps `data`, whose choices hang on the string at `text`.
    fn keep(&mut self, data: &[u8], text: TextAt, usage: Option<Usage>) {
        self.data.clear();
        self.data.extend_from_slice(data);
        self.text = Some(text);
        self.usage = usage;
    }
}

/// A chunk's choices and usage as [`Chunk`] reads them, by [`scan`], and
/// where the string its choices hang on is ([`Memo`]) when they hang on
/// one; None where serde_json must decide (an unusual shape or a repeated
/// field).
fn quick_chunk(data: &[u8]) -> Option<(Choices, Option<Usage>, Option<TextAt>)> {
    let (mut choices, mut usage) = (None, None);
    let mut c = scan::Cursor::new(data);
    c.object(|c, key| {
        match key {
            b"choices" if choices.is_none() => choices = Some(quick_choices(c)?),
            b"usage" if usage.is_none() => {
                let v = c.value()?;
                usage = Some(match scan_usage(v) {
                    Some(usage) => usage,
                    None => serde_json::from_slice::<Option<Usage>>(v).ok()?,
                });
            }
            b"choices" | b"usage" => return None,
            _ => drop(c.value()?),
        }
        Some(())
    })?;
    c.end()?;
    let (choices, text) = choices.unwrap_or_default();
    Some((choices, usage.flatten(), text))
}

/// [`Choices`] read by [`scan`]: each choice's `delta.content`, else its
/// `text`, counted when a non-empty string; and when there is one choice
/// and its `delta.content` is a string, where that string's content
/// starts and its closing quote is.
fn quick_choices(c: &mut scan::Cursor<'_>) -> Option<(Choices, Option<TextAt>)> {
    let mut out = Choices::default();
    let mut first = None;
    c.array(|c| {
        let (mut delta, mut text) = (None, None);
        c.object(|c, key| {
            match key {
                b"delta" if delta.is_none() => {
                    delta = Some(match c.peek()? {
                        b'n' => scan::string_or_null(c.value()?)?,
                        _ => match c.field_at(b"content")? {
                            Some((at, v)) => {
                                let n = scan::string_or_null(v)?;
                                if out.len == 0 && n.is_some() {
                                    first = Some((at + 1, at + v.len() - 1));
                                }
                                n
                            }
                            None => None,
                        },
                    });
                }
                b"text" if text.is_none() => text = Some(scan::string_or_null(c.value()?)?),
                b"delta" | b"text" => return None,
                _ => drop(c.value()?),
            }
            Some(())
        })?;
        out.len += 1;
        if delta.flatten().or(text.flatten()).is_some_and(|n| n > 0) {
            out.with_text += 1;
        }
        Some(())
    })?;
    let text = if out.len == 1 { first } else { None };
    Some((out, text))
}

/// Whether an Anthropic event is a `content_block_delta` (most of a
/// stream), by [`scan`]; None where serde_json must decide (an unusual
/// shape, or the fields of the events that carry usage).
fn quick_text_delta(data: &[u8]) -> Option<bool> {
    let mut kind = None;
    let mut c = scan::Cursor::new(data);
    c.object(|c, key| {
        let v = c.value()?;
        match key {
            b"type" if kind.is_none() => kind = Some(v),
            b"type" | b"message" | b"usage" => return None,
            _ => {}
        }
        Some(())
    })?;
    c.end()?;
    Some(kind == Some(br#""content_block_delta""#))
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
    use proptest::prelude::*;

    #[test]
    fn usage_is_found_at_the_top_level_only() {
        let usage = |json: &str| quick_usage(json.as_bytes(), false).map(|u| u.completion_tokens);
        let answer = r#"{"id":"c1","choices":[{"index":0,"message":{"role":"assistant","content":"say \"usage\": {} [ ] \\"}}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        assert_eq!(usage(answer), Some(4));
        assert_eq!(usage(&format!(" \n{answer}\n")), Some(4));
        // A nested `usage`, or one in a string, is not the answer's.
        assert_eq!(
            usage(
                r#"{"choices":[{"usage":{"completion_tokens":9}}],"usage":{"completion_tokens":2}}"#
            ),
            Some(2)
        );
        assert_eq!(usage(r#"{"meta":{"usage":{"completion_tokens":9}}}"#), None);
        assert_eq!(usage(r#"{"note":"usage","x":["usage",{"usage":1}]}"#), None);
        assert_eq!(usage(r#"{"usage" : {"completion_tokens":5}}"#), Some(5));
        // None: the caller parses the whole answer (escaped key, null,
        // not an object, cut short, not usage's shape).
        assert_eq!(usage(r#"{"us\u0061ge":{"completion_tokens":5}}"#), None);
        assert_eq!(usage(r#"{"usage":null}"#), None);
        assert_eq!(usage(r#"[{"usage":{"completion_tokens":5}}]"#), None);
        assert_eq!(usage(r#"{"choices":[{"content":"cut"#), None);
        assert_eq!(usage(r#"{"usage""#), None);
        assert_eq!(usage(r#"{"usage":"many"}"#), None);
        assert_eq!(usage(""), None);
        // Anthropic's shape, with its cache counts.
        let a = quick_usage(
            br#"{"content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":2,"output_tokens":3,"cache_read_input_tokens":5}}"#,
            true,
        )
        .unwrap();
        assert_eq!((a.prompt_tokens, a.completion_tokens), (7, 3));
        assert_eq!(a.prompt_tokens_details.map(|d| d.cached_tokens), Some(5));
    }

    /// A JSON string strategy: empty, plain, or with escapes and brackets.
    fn text() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(serde_json::json!("")),
            "[a-z ]{1,8}".prop_map(serde_json::Value::from),
            "[\"\\\\{}\\[\\]:,\n\u{e9}a]{1,6}".prop_map(serde_json::Value::from),
        ]
    }

    /// A text field's value: absent (None), null, a string, or a number.
    fn text_field() -> impl Strategy<Value = Option<serde_json::Value>> {
        prop_oneof![
            4 => Just(None),
            2 => Just(Some(serde_json::Value::Null)),
            8 => text().prop_map(Some),
            1 => Just(Some(serde_json::json!(3))),
        ]
    }

    fn choice() -> impl Strategy<Value = serde_json::Value> {
        (text_field(), text_field(), 0..4u8, any::<bool>()).prop_map(|(content, text, delta, extra)| {
            let mut c = serde_json::json!({"index": 0, "finish_reason": null});
            match (delta, content) {
                (0, _) => {}
                (1, _) => c["delta"] = serde_json::Value::Null,
                (_, Some(content)) => c["delta"] = serde_json::json!({"role": "assistant", "content": content}),
                (_, None) => c["delta"] = serde_json::json!({"role": "assistant"}),
            }
            if let Some(t) = text {
                c["text"] = t;
            }
            if extra {
                c["logprobs"] = serde_json::json!({"content": [{"token": "}", "usage": {"completion_tokens": 99}}]});
            }
            c
        })
    }

    fn chunk() -> impl Strategy<Value = serde_json::Value> {
        let usage = prop_oneof![
            Just(None),
            Just(Some(serde_json::Value::Null)),
            (0..1000u64, 0..1000u64, any::<bool>()).prop_map(|(p, c, d)| {
                let mut u = serde_json::json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c});
                if d {
                    u["prompt_tokens_details"] = serde_json::json!({"cached_tokens": p / 2});
                }
                Some(u)
            }),
        ];
        (proptest::collection::vec(choice(), 0..3), usage, text(), 0..3u8).prop_map(|(choices, usage, id, shape)| {
            let mut c = serde_json::json!({"id": id, "object": "chat.completion.chunk", "created": 1, "model": "m"});
            match shape {
                0 => c["choices"] = serde_json::Value::from(choices),
                1 => c["choices"] = serde_json::Value::Null,
                _ => {}
            }
            if let Some(u) = usage {
                c["usage"] = u;
            }
            c
        })
    }

    proptest! {
        /// The scan reads a chunk as serde_json does, or leaves it to it.
        #[test]
        fn chunks_scan_as_serde_reads_them(c in chunk(), pretty in any::<bool>()) {
            let data = if pretty { serde_json::to_vec_pretty(&c) } else { serde_json::to_vec(&c) }.unwrap();
            let slow = slow_chunk(&data);
            match quick_chunk(&data) {
                Some((choices, usage, _)) => prop_assert_eq!(Some((choices, usage)), slow),
                // Left to serde only where serde refuses it too (a number
                // or null where a string or an array belongs).
                None => prop_assert!(slow.is_none(), "{}", String::from_utf8_lossy(&data)),
            }
            // A whole answer's usage is the document's, whatever the rest.
            let usage = serde_json::from_value::<Option<Usage>>(c["usage"].clone()).unwrap();
            prop_assert_eq!(quick_usage(&data, false), usage);
        }
    }

    /// A usage value: its fields of the usual names (and others), each
    /// of the values serde_json takes or refuses, some written twice.
    fn usage_text() -> impl Strategy<Value = String> {
        let number = prop_oneof![
            (0..100_000u64).prop_map(|n| n.to_string()),
            Just(u64::MAX.to_string()),
            Just("18446744073709551616".to_string()),
            Just("007".to_string()),
            Just("-3".to_string()),
            Just("-0".to_string()),
            Just("2.5".to_string()),
            Just("1e3".to_string()),
            Just("null".to_string()),
            Just(r#""12""#.to_string()),
        ];
        let details = prop_oneof![
            Just("null".to_string()),
            Just("{}".to_string()),
            number
                .clone()
                .prop_map(|n| format!(r#"{{"cached_tokens":{n}}}"#)),
            number
                .clone()
                .prop_map(|n| format!(r#"{{"audio_tokens":0, "cached_tokens" : {n}}}"#)),
            Just(r#"{"cached_tokens":1,"cached_tokens":2}"#.to_string()),
            Just("[]".to_string()),
        ];
        let field = prop_oneof![
            number
                .clone()
                .prop_map(|n| format!(r#""prompt_tokens":{n}"#)),
            number
                .clone()
                .prop_map(|n| format!(r#""completion_tokens": {n}"#)),
            number
                .clone()
                .prop_map(|n| format!(r#""total_tokens":{n}"#)),
            details.prop_map(|d| format!(r#""prompt_tokens_details":{d}"#)),
            Just(
                r#""completion_tokens_details":{"reasoning_tokens":0,"x":[1,{"y":"}"}]}"#
                    .to_string()
            ),
            Just(r#""pr\u006fmpt_tokens":4"#.to_string()),
            number
                .clone()
                .prop_map(|n| format!(r#""completion_tokens_details":{{"reasoning_tokens":{n}}}"#)),
            Just(r#""completion_tokens_details":{"x":[1]}"#.to_string()),
            Just(r#""completion_tokens_details":{"x":007}"#.to_string()),
            Just(r#""completion_tokens_details":{"x":1,"x":2}"#.to_string()),
            Just(r#""note":"a""#.to_string()),
            Just(r#""flag":true"#.to_string()),
            Just("\"k\u{1}\":1".to_string()),
            Just("\"k\u{e9}\":1".to_string()),
            Just("\"k\u{e9}\":{\"a\":1}".to_string()),
        ];
        prop_oneof![
            4 => proptest::collection::vec(field, 0..6).prop_map(|f| format!("{{{}}}", f.join(","))),
            1 => Just("null".to_string()),
            1 => Just("[]".to_string()),
            1 => Just("7".to_string()),
        ]
    }

    proptest! {
        /// A usage is scanned as serde_json reads it, or left to it.
        #[test]
        fn usage_scans_as_serde_reads_it(text in usage_text()) {
            let slow = serde_json::from_str::<Option<Usage>>(&text).ok();
            if let Some(quick) = scan_usage(text.as_bytes()) {
                prop_assert_eq!(Some(quick), slow, "{}", text);
            }
        }
    }

    #[test]
    fn usual_usages_are_scanned() {
        let scanned = |t: &str| scan_usage(t.as_bytes());
        let u = scanned(r#"{"prompt_tokens":7,"completion_tokens":16,"total_tokens":23}"#);
        assert_eq!(
            u.flatten().map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((7, 16))
        );
        let u = scanned(
            r#"{"prompt_tokens":7,"prompt_tokens_details":{"cached_tokens":5,"audio_tokens":0}}"#,
        );
        assert_eq!(
            u.flatten().and_then(|u| u.prompt_tokens_details),
            Some(Details { cached_tokens: 5 })
        );
        assert_eq!(scanned("null"), Some(None));
        // Left to serde_json: a count it may refuse, a field twice.
        assert_eq!(scanned(r#"{"prompt_tokens":-1}"#), None);
        assert_eq!(scanned(r#"{"prompt_tokens":1,"prompt_tokens":2}"#), None);
        // A value it skips that serde_json refuses (found by the proptest).
        assert_eq!(scanned(r#"{"total_tokens":007}"#), None);
    }

    /// An SSE event of `data`, a line of `data:` each of its lines.
    fn sse(data: &[u8]) -> Vec<u8> {
        let lines: Vec<Vec<u8>> = data
            .split(|&b| b == b'\n')
            .map(|l| [&b"data: "[..], l].concat())
            .collect();
        lines.join(&b'\n')
    }

    proptest! {
        /// Read one after another (the memo kept from one to the next),
        /// chunks read as serde_json reads each: another chunk, and the
        /// one before with another text.
        #[test]
        fn chunks_read_in_turn_as_serde_reads_them(
            a in chunk(),
            b in chunk(),
            t in text(),
            pretty in any::<bool>(),
        ) {
            let mut retold = a.clone();
            if let Some(delta) = retold
                .get_mut("choices")
                .and_then(|c| c.get_mut(0))
                .and_then(|c| c.get_mut("delta"))
                .filter(|d| d.is_object())
            {
                delta["content"] = t;
            }
            let mut memo = Memo::default();
            for c in [&a, &retold, &b, &a, &retold] {
                let data = if pretty { serde_json::to_vec_pretty(c) } else { serde_json::to_vec(c) }.unwrap();
                let (tokens, usage, _) = read_event(&sse(&data), false, &mut memo);
                let slow = slow_chunk(&data).map_or((0, None), |(c, u)| (c.with_text, u));
                prop_assert_eq!((tokens, usage), slow, "{}", String::from_utf8_lossy(&data));
            }
        }
    }

    #[test]
    fn chunks_written_alike_are_read_by_comparing_bytes() {
        let event = |text: &str| {
            format!(
                r#"{{"choices":[{{"delta":{{"content":{text}}},"finish_reason":null,"index":0}}],"created":1,"id":"c1","model":"m","object":"chat.completion.chunk"}}"#
            )
        };
        let mut memo = Memo::default();
        let first = event(r#""lorem ""#);
        assert_eq!(memo.read(first.as_bytes()), None, "nothing kept yet");
        let read = read_event(&sse(first.as_bytes()), true, &mut memo);
        assert_eq!(read, (1, None, false));
        // The same around another string: read by the memo, as serde reads it.
        for (text, n) in [
            (r#""ipsum ""#, 1),
            (r#""""#, 0),
            (r#""say \"hi\" \\""#, 1),
            (r#""{\"x\":[""#, 1),
        ] {
            let e = event(text);
            let quick = memo.read(e.as_bytes());
            assert_eq!(
                quick,
                Some((
                    Choices {
                        len: 1,
                        with_text: n
                    },
                    None
                )),
                "{e}"
            );
            assert_eq!(quick, slow_chunk(e.as_bytes()), "{e}");
        }
        // Not the same around a string: left to the scan.
        for e in [
            event("null"),
            event(r#""a","x":"b""#),
            first.replace(r#""created":1"#, r#""created":2"#),
            format!(" {first}"),
            first[..first.len() - 1].to_string(),
        ] {
            assert_eq!(memo.read(e.as_bytes()), None, "{e}");
        }
        // Two choices are not kept; the kept one stays.
        let two = r#"{"choices":[{"delta":{"content":"a"}},{"delta":{"content":"b"}}]}"#;
        assert_eq!(read_event(&sse(two.as_bytes()), true, &mut memo).0, 2);
        assert!(memo.read(event(r#""x""#).as_bytes()).is_some());
        // A usage beside the one choice is kept with it.
        let with_usage = |text: &str| {
            format!(
                r#"{{"choices":[{{"delta":{{"content":{text}}}}}],"usage":{{"prompt_tokens":3,"completion_tokens":4}}}}"#
            )
        };
        let read = read_event(&sse(with_usage(r#""a""#).as_bytes()), true, &mut memo);
        assert_eq!((read.0, read.1.map(|u| u.completion_tokens)), (1, Some(4)));
        let quick = memo.read(with_usage(r#""""#).as_bytes());
        assert_eq!(
            quick
                .as_ref()
                .map(|(c, u)| (c.with_text, u.map(|u| u.prompt_tokens))),
            Some((0, Some(3)))
        );
        assert_eq!(quick, slow_chunk(with_usage(r#""""#).as_bytes()));
    }

    #[test]
    fn anthropic_text_deltas_are_scanned() {
        let delta = br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#;
        assert_eq!(quick_text_delta(delta), Some(true));
        assert_eq!(
            read_anthropic_event(&[&b"event: content_block_delta\ndata: "[..], delta].concat()).0,
            1
        );
        assert_eq!(quick_text_delta(br#"{"type":"ping"}"#), Some(false));
        assert_eq!(
            quick_text_delta(br#"{"type":"message_delta","usage":{"output_tokens":7}}"#),
            None
        );
        assert_eq!(
            quick_text_delta(br#"{"type":"content_block_delta","type":"x"}"#),
            None
        );
    }

    #[test]
    fn events_split_and_read() {
        assert_eq!(event_end(b"data: x\n\ndata: y"), Some((7, 2)));
        assert_eq!(event_end(b"data: x\n\r\n"), Some((7, 3)));
        assert_eq!(event_end(b"data: x\n"), None);
        let (t, u, d) = read_event(
            br#"data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}"#,
            true,
            &mut Memo::default(),
        );
        assert_eq!((t, u.is_none(), d), (1, true, false));
        let (t, u, d) = read_event(
            br#"data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            true,
            &mut Memo::default(),
        );
        assert_eq!((t, u.map(|u| u.completion_tokens), d), (0, Some(4), true));
        let (_, _, d) = read_event(
            br#"data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            false,
            &mut Memo::default(),
        );
        assert!(!d, "kept when the client asked for it");
        assert_eq!(
            read_event(b"data: [DONE]", true, &mut Memo::default()),
            (0, None, false)
        );
        assert_eq!(
            read_event(b": keep-alive", true, &mut Memo::default()),
            (0, None, false)
        );
        let (t, _, _) = read_event(
            br#"data: {"choices":[{"text":"a"},{"text":""}]}"#,
            true,
            &mut Memo::default(),
        );
        assert_eq!(t, 1);
        // Escaped text counts; text that is not a string makes the event
        // unreadable (as a typed read did); null choices too.
        let (t, _, _) = read_event(br#"data: {"choices":[{"delta":{"content":"\n"}},{"delta":{"content":null},"text":"x"}]}"#, true, &mut Memo::default());
        assert_eq!(t, 2);
        assert_eq!(
            read_event(
                br#"data: {"choices":[{"text":3}]}"#,
                true,
                &mut Memo::default()
            ),
            (0, None, false)
        );
        assert_eq!(
            read_event(br#"data: {"choices":null}"#, true, &mut Memo::default()),
            (0, None, false)
        );
    }

    #[test]
    fn event_data_is_borrowed_unless_split_over_lines() {
        let mut scratch = Vec::new();
        let event = b"event: x\r\ndata: {\"a\":1}\r\nid: 3";
        let data = event_data(event, &mut scratch);
        assert_eq!(data, br#"{"a":1}"#);
        assert!(std::ptr::eq(data.as_ptr(), event[16..].as_ptr()), "no copy");
        assert_eq!(scratch.capacity(), 0);
        let mut scratch = Vec::new();
        assert_eq!(
            event_data(b"data: {\"a\":\ndata:1}", &mut scratch),
            b"{\"a\":\n1}"
        );
        assert_eq!(event_data(b": comment", &mut Vec::new()), b"");
    }

    #[test]
    fn whole_answers_are_read_for_usage_and_text() {
        let w: Whole = serde_json::from_slice(
            br#"{"choices":[{"message":{"content":"abcd"},"text":"zz"},{"text":"xy"},{}],"usage":null}"#,
        )
        .unwrap();
        assert_eq!((w.usage, w.choices.0), (None, 6));
        let w: Whole = serde_json::from_slice(
            br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":2}}}"#,
        )
        .unwrap();
        assert_eq!(
            w.usage
                .map(|u| (u.completion_tokens, u.prompt_tokens_details)),
            Some((4, Some(Details { cached_tokens: 2 })))
        );
        let m: AnthropicWhole = serde_json::from_slice(
            br#"{"content":[{"type":"text","text":"hey"},{"type":"tool_use","input":{}}]}"#,
        )
        .unwrap();
        assert_eq!((m.usage.is_none(), m.content.0), (true, 3));
        assert_eq!(
            read_anthropic_event(
                b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}"
            )
            .1
            .map(|u| u.completion_tokens),
            Some(7)
        );
    }
}
