//! The borrowed reading of a request body that is forwarded as it was sent
//! (chat, completions, embeddings, and Anthropic's Messages for an upstream
//! that speaks them), and the splice that makes the body forwarded.
//!
//! One pass of serde_json over the bytes reads what admission needs without
//! building the body: strings are measured where they lie (or in serde_json's
//! scratch buffer, when they have escapes), arrays are summed as they pass,
//! and the values the gateway changes (`model`, the output cap,
//! `stream_options`) are kept as their byte spans. The body forwarded is the
//! one sent with those spans replaced, and the fields it lacks inserted after
//! its opening brace, written into one buffer of the size it needs.
//!
//! The pass refuses exactly what parsing the body into a `serde_json::Map`
//! refuses: every value is walked with `deserialize_any` (serde_json's skip,
//! `IgnoredAny`, takes lone surrogates and numbers out of range), and the
//! values taken as raw spans are parsed again, their nesting checked against
//! serde_json's recursion limit. A caller that gets an error asks
//! serde_json's `Map` for its words.

use std::borrow::Cow;
use std::fmt;

use maas_core::admission::estimate_prompt_tokens;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// How deep serde_json lets a document nest: the container at this depth
/// (the top-level one being at 1) is refused.
const RECURSION_LIMIT: usize = 128;

/// The fields a body is read for: which ones admission checks and which
/// count towards the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A chat completion or a completion: `messages` and `prompt`.
    Chat,
    /// Embeddings: `input`.
    Embeddings,
    /// Anthropic's Messages: `system` and `messages`.
    Messages,
}

/// A byte range of the body: where a value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    /// The value's first byte.
    pub start: usize,
    /// One past its last byte.
    pub end: usize,
}

impl Span {
    /// Its length in bytes.
    fn len(self) -> usize {
        self.end - self.start
    }
}

/// Where a field's value is, for each time the field occurs (serde_json's
/// `Map` keeps the last; the splice writes over them all). The second and
/// later ones are rare: only they allocate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Spans {
    /// The first.
    first: Option<Span>,
    /// The others, in order.
    more: Vec<Span>,
}

impl Spans {
    /// Adds the next.
    fn push(&mut self, s: Span) {
        if self.first.is_none() {
            self.first = Some(s);
        } else {
            self.more.push(s);
        }
    }

    /// Whether the field is absent.
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// The spans, in the body's order.
    fn iter(&self) -> impl Iterator<Item = Span> + '_ {
        self.first.into_iter().chain(self.more.iter().copied())
    }

    /// The span of the value serde_json keeps: the last.
    fn last(&self) -> Option<Span> {
        self.more.last().copied().or(self.first)
    }
}

/// A value admission checks, as far as it matters: its kind, and the number
/// or the string it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) enum Scalar<'a> {
    /// The field is absent.
    #[default]
    Absent,
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A non-negative integer that fits in a `u64` (serde_json's `as_u64`).
    Unsigned(u64),
    /// A string (kept only where it is read: `model`).
    Str(Cow<'a, str>),
    /// Anything else.
    Other,
}

/// `stream_options`, as far as the splice and admission need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum StreamOptions {
    /// The field is absent.
    #[default]
    Absent,
    /// It is not an object.
    NotObject,
    /// An object.
    Object {
        /// Whether its `include_usage` is `true`.
        usage: bool,
        /// Where its `include_usage` values are.
        at: Spans,
        /// Whether it has fields.
        entries: bool,
    },
}

impl StreamOptions {
    /// Whether the client asked for the usage chunk.
    pub(crate) fn usage(&self) -> bool {
        matches!(self, StreamOptions::Object { usage: true, .. })
    }
}

/// The embeddings `input`, as far as admission needs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Input {
    /// The field is absent.
    #[default]
    Absent,
    /// `null`.
    Null,
    /// Its tokens, `None` if it is not an input embeddings take.
    Tokens(Option<u64>),
}

/// What one borrowed pass over a request body read: the facts admission
/// checks and where the values the gateway changes are.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Peeked<'a> {
    /// The body, as sent.
    pub bytes: &'a [u8],
    /// Where the top-level object's fields begin: just after its `{`.
    pub open: usize,
    /// Whether the top-level object has fields.
    pub entries: bool,
    /// `model`.
    pub model: Scalar<'a>,
    /// Where `model` is.
    pub model_at: Spans,
    /// `stream` (not read for embeddings).
    pub stream: Scalar<'a>,
    /// `max_tokens` (not read for embeddings).
    pub max_tokens: Scalar<'a>,
    /// Where `max_tokens` is.
    pub max_tokens_at: Spans,
    /// `max_completion_tokens` (chat only).
    pub max_completion_tokens: Scalar<'a>,
    /// Where `max_completion_tokens` is.
    pub max_completion_tokens_at: Spans,
    /// `stream_options` (chat only).
    pub stream_options: StreamOptions,
    /// Where `stream_options` is.
    pub stream_options_at: Spans,
    /// The text bytes of `messages` and how many there are, if it is an
    /// array (chat: the `content` strings and text parts; Messages: the text
    /// blocks, tool results and tool inputs).
    pub messages: Option<(usize, usize)>,
    /// The text bytes of `prompt` (chat).
    pub prompt: usize,
    /// The text bytes of `system` (Messages).
    pub system: usize,
    /// `input` (embeddings).
    pub input: Input,
}

impl<'a> Peeked<'a> {
    /// Nothing read yet of `bytes`, whose fields begin at `open`.
    fn new(bytes: &'a [u8], open: usize) -> Self {
        Peeked {
            bytes,
            open,
            entries: false,
            model: Scalar::Absent,
            model_at: Spans::default(),
            stream: Scalar::Absent,
            max_tokens: Scalar::Absent,
            max_tokens_at: Spans::default(),
            max_completion_tokens: Scalar::Absent,
            max_completion_tokens_at: Spans::default(),
            stream_options: StreamOptions::Absent,
            stream_options_at: Spans::default(),
            messages: None,
            prompt: 0,
            system: 0,
            input: Input::Absent,
        }
    }
}

/// Reads `bytes`, a JSON object, in one borrowed pass for `mode`. An error
/// says only that serde_json's `Map` would not take the body either (or, in
/// theory, that the pass could not read it): ask the `Map` for the words.
pub(crate) fn peek(bytes: &[u8], mode: Mode) -> Result<Peeked<'_>, serde_json::Error> {
    let open = match bytes.iter().position(|b| !b.is_ascii_whitespace()) {
        Some(i) if bytes[i] == b'{' => i + 1,
        _ => return Err(de::Error::custom("the body must be a JSON object")),
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let peeked = Seed(Top {
        base: bytes,
        open,
        mode,
    })
    .deserialize(&mut de)?;
    de.end()?;
    peeked.ok_or_else(|| de::Error::custom("the body must be a JSON object"))
}

/// A value the gateway writes into a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum New<'v> {
    /// A string (written JSON-escaped).
    Str(&'v str),
    /// A number.
    Unsigned(u64),
    /// `stream_options` with `include_usage: true`: the body's own object
    /// with it set, or `{"include_usage":true}`.
    UsageOn,
}

/// A field the gateway writes: over each value it has, or inserted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Edit<'v> {
    /// Its name (plain ASCII, written as it is).
    pub key: &'static str,
    /// Its value.
    pub value: New<'v>,
    /// Where its values are; inserted when there are none.
    pub at: &'v Spans,
}

/// The `stream_options` written when the body's is not an object.
const USAGE_ON: &[u8] = br#"{"include_usage":true}"#;
/// What is put at the start of a `stream_options` object without
/// `include_usage`.
const INCLUDE_USAGE: &[u8] = br#""include_usage":true"#;

impl Peeked<'_> {
    /// The body with `edits` made, in one buffer of the size it needs.
    pub(crate) fn splice(&self, edits: &[Edit<'_>]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.spliced_len(edits));
        out.extend_from_slice(&self.bytes[..self.open]);
        let mut inserted = false;
        for e in edits.iter().filter(|e| e.at.is_empty()) {
            if inserted {
                out.push(b',');
            }
            inserted = true;
            out.push(b'"');
            out.extend_from_slice(e.key.as_bytes());
            out.extend_from_slice(b"\":");
            self.write(&mut out, e.value);
        }
        if inserted && self.entries {
            out.push(b',');
        }
        let mut pos = self.open;
        while let Some((s, value)) = next_span(edits, pos) {
            out.extend_from_slice(&self.bytes[pos..s.start]);
            self.write(&mut out, value);
            pos = s.end;
        }
        out.extend_from_slice(&self.bytes[pos..]);
        out
    }

    /// The length of [`Peeked::splice`]'s body.
    fn spliced_len(&self, edits: &[Edit<'_>]) -> usize {
        let mut len = self.bytes.len();
        let mut inserted = 0;
        for e in edits {
            let value = self.value_len(e.value);
            if e.at.is_empty() {
                len += e.key.len() + 3 + value;
                inserted += 1;
            } else {
                for s in e.at.iter() {
                    len = len + value - s.len();
                }
            }
        }
        if inserted > 0 {
            len += inserted - 1 + usize::from(self.entries);
        }
        len
    }

    /// The length of `value` written.
    fn value_len(&self, value: New<'_>) -> usize {
        match value {
            New::Str(s) => json_str_len(s),
            New::Unsigned(n) => unsigned_len(n),
            New::UsageOn => match (&self.stream_options, self.stream_options_at.last()) {
                (StreamOptions::Object { at, entries, .. }, Some(last)) => {
                    if at.is_empty() {
                        last.len() + INCLUDE_USAGE.len() + usize::from(*entries)
                    } else {
                        at.iter().fold(last.len(), |len, s| len + 4 - s.len())
                    }
                }
                _ => USAGE_ON.len(),
            },
        }
    }

    /// Writes `value`.
    fn write(&self, out: &mut Vec<u8>, value: New<'_>) {
        match value {
            New::Str(s) => write_json_str(out, s),
            New::Unsigned(n) => write_unsigned(out, n),
            New::UsageOn => match (&self.stream_options, self.stream_options_at.last()) {
                (StreamOptions::Object { at, entries, .. }, Some(last)) => {
                    if at.is_empty() {
                        // Its `{`, then the field.
                        out.push(self.bytes[last.start]);
                        out.extend_from_slice(INCLUDE_USAGE);
                        if *entries {
                            out.push(b',');
                        }
                        out.extend_from_slice(&self.bytes[last.start + 1..last.end]);
                    } else {
                        let mut pos = last.start;
                        for s in at.iter() {
                            out.extend_from_slice(&self.bytes[pos..s.start]);
                            out.extend_from_slice(b"true");
                            pos = s.end;
                        }
                        out.extend_from_slice(&self.bytes[pos..last.end]);
                    }
                }
                _ => out.extend_from_slice(USAGE_ON),
            },
        }
    }
}

/// The first span of `edits` at or after `pos`, with the value written
/// over it.
fn next_span<'v>(edits: &[Edit<'v>], pos: usize) -> Option<(Span, New<'v>)> {
    edits
        .iter()
        .flat_map(|e| e.at.iter().map(move |s| (s, e.value)))
        .filter(|(s, _)| s.start >= pos)
        .min_by_key(|(s, _)| s.start)
}

/// The length of `s` written as a JSON string, as serde_json writes it.
fn json_str_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | 0x08 | 0x09 | 0x0a | 0x0c | 0x0d => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// Writes `s` as a JSON string, escaped as serde_json escapes it.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x09 => b't',
            0x0a => b'n',
            0x0c => b'f',
            0x0d => b'r',
            0..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            out.extend_from_slice(b"00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// The number of digits of `n`.
fn unsigned_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Writes `n` in decimal.
fn write_unsigned(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Where `part`, a slice of `base`, lies in it.
fn span_of(base: &[u8], part: &str) -> Option<Span> {
    let start = (part.as_ptr() as usize).checked_sub(base.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= base.len()).then_some(Span { start, end })
}

/// How deeply `json` (a valid JSON value) nests: 0 for a scalar, 1 for a
/// flat array or object.
fn nesting(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_str, mut escaped) = (false, false);
    for b in json.bytes() {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The next value of `map` as its span in `base` and what `r` reads of it.
/// The value is `depth` containers deep in the body (1 for a top-level
/// field's): serde_json skipped it to take its span, so it is parsed again,
/// strictly, within what is left of the recursion limit.
fn spanned<'a, A, R>(
    map: &mut A,
    base: &'a [u8],
    depth: usize,
    r: R,
) -> Result<(Span, R::Out), A::Error>
where
    A: MapAccess<'a>,
    R: Reader<'a>,
{
    let raw: &'a RawValue = map.next_value()?;
    let text = raw.get();
    let span = span_of(base, text).ok_or_else(|| de::Error::custom("a value outside the body"))?;
    if text.starts_with(['[', '{']) && depth + nesting(text) >= RECURSION_LIMIT {
        return Err(de::Error::custom("recursion limit exceeded"));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let out = Seed(r).deserialize(&mut de).map_err(de::Error::custom)?;
    de.end().map_err(de::Error::custom)?;
    Ok((span, out))
}

/// What is read of one JSON value: the value's kind decides which method is
/// called; those not overridden walk the value (validating it) and give
/// [`Reader::other`].
trait Reader<'de>: Sized {
    /// What is read.
    type Out;

    /// What is read of a value of a kind not read otherwise.
    fn other(self) -> Self::Out;

    /// `null`.
    fn null(self) -> Self::Out {
        self.other()
    }

    /// A boolean.
    fn boolean(self, _: bool) -> Self::Out {
        self.other()
    }

    /// A non-negative integer that fits in a `u64`.
    fn unsigned(self, _: u64) -> Self::Out {
        self.other()
    }

    /// Any other number.
    fn number(self) -> Self::Out {
        self.other()
    }

    /// A string (in serde_json's scratch buffer when it has escapes).
    fn string(self, _: &str) -> Self::Out {
        self.other()
    }

    /// A string without escapes, borrowed from the body.
    fn borrowed(self, s: &'de str) -> Self::Out {
        self.string(s)
    }

    /// An array.
    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Out, A::Error> {
        while seq.next_element_seed(Seed(Skip))?.is_some() {}
        Ok(self.other())
    }

    /// An object.
    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        while map.next_key_seed(Seed(Skip))?.is_some() {
            map.next_value_seed(Seed(Skip))?;
        }
        Ok(self.other())
    }
}

/// A [`Reader`] as serde's seed and visitor: `deserialize_any`, so that the
/// value is parsed, not skipped.
struct Seed<R>(R);

impl<'de, R: Reader<'de>> DeserializeSeed<'de> for Seed<R> {
    type Value = R::Out;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<R::Out, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, R: Reader<'de>> Visitor<'de> for Seed<R> {
    type Value = R::Out;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<R::Out, E> {
        Ok(self.0.boolean(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<R::Out, E> {
        Ok(match u64::try_from(v) {
            Ok(n) => self.0.unsigned(n),
            Err(_) => self.0.number(),
        })
    }

    fn visit_u64<E>(self, v: u64) -> Result<R::Out, E> {
        Ok(self.0.unsigned(v))
    }

    fn visit_f64<E>(self, _: f64) -> Result<R::Out, E> {
        Ok(self.0.number())
    }

    fn visit_str<E>(self, v: &str) -> Result<R::Out, E> {
        Ok(self.0.string(v))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<R::Out, E> {
        Ok(self.0.borrowed(v))
    }

    fn visit_unit<E>(self) -> Result<R::Out, E> {
        Ok(self.0.null())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<R::Out, A::Error> {
        self.0.seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<R::Out, A::Error> {
        self.0.map(map)
    }
}

/// Walks a value and keeps nothing.
struct Skip;

impl Reader<'_> for Skip {
    type Out = ();

    fn other(self) {}
}

/// The field a key names, among `names`.
struct KeyIn(&'static [&'static str]);

impl Reader<'_> for KeyIn {
    type Out = Option<usize>;

    fn other(self) -> Option<usize> {
        None
    }

    fn string(self, s: &str) -> Option<usize> {
        self.0.iter().position(|n| *n == s)
    }
}

/// A value as a [`Scalar`]; strings kept only when `keep_strings`.
#[derive(Clone, Copy)]
struct Classify {
    /// Whether a string is kept (else it is [`Scalar::Other`]).
    keep_strings: bool,
}

impl<'de> Reader<'de> for Classify {
    type Out = Scalar<'de>;

    fn other(self) -> Scalar<'de> {
        Scalar::Other
    }

    fn null(self) -> Scalar<'de> {
        Scalar::Null
    }

    fn boolean(self, b: bool) -> Scalar<'de> {
        Scalar::Bool(b)
    }

    fn unsigned(self, n: u64) -> Scalar<'de> {
        Scalar::Unsigned(n)
    }

    fn string(self, s: &str) -> Scalar<'de> {
        if self.keep_strings {
            Scalar::Str(Cow::Owned(s.to_owned()))
        } else {
            Scalar::Other
        }
    }

    fn borrowed(self, s: &'de str) -> Scalar<'de> {
        if self.keep_strings {
            Scalar::Str(Cow::Borrowed(s))
        } else {
            Scalar::Other
        }
    }
}

/// The length of a string; 0 for anything else.
#[derive(Clone, Copy)]
struct StrLen;

impl Reader<'_> for StrLen {
    type Out = usize;

    fn other(self) -> usize {
        0
    }

    fn string(self, s: &str) -> usize {
        s.len()
    }
}

/// A string (its bytes), or an array of items read by `R`, summed.
#[derive(Clone, Copy)]
struct SumOf<R>(R);

impl<'de, R: Reader<'de, Out = usize> + Copy> Reader<'de> for SumOf<R> {
    type Out = usize;

    fn other(self) -> usize {
        0
    }

    fn string(self, s: &str) -> usize {
        s.len()
    }

    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut sum = 0usize;
        while let Some(n) = seq.next_element_seed(Seed(self.0))? {
            sum += n;
        }
        Ok(sum)
    }
}

/// A chat `content` or a completions `prompt`: a string, or an array of
/// strings and objects with a `text`.
const CONTENT: SumOf<Part> = SumOf(Part);

/// A part of a chat `content`: a string or an object's (last) `text`.
#[derive(Clone, Copy)]
struct Part;

impl<'de> Reader<'de> for Part {
    type Out = usize;

    fn other(self) -> usize {
        0
    }

    fn string(self, s: &str) -> usize {
        s.len()
    }

    fn map<A: MapAccess<'de>>(self, map: A) -> Result<usize, A::Error> {
        last_of(map, &["text"], StrLen)
    }
}

/// The (last) `key` (one name) of an object, read by `r`; `r.other()` without one.
fn last_of<'de, A, R>(mut map: A, key: &'static [&'static str], r: R) -> Result<R::Out, A::Error>
where
    A: MapAccess<'de>,
    R: Reader<'de> + Copy,
{
    let mut out = None;
    while let Some(k) = map.next_key_seed(Seed(KeyIn(key)))? {
        if k.is_some() {
            out = Some(map.next_value_seed(Seed(r))?);
        } else {
            map.next_value_seed(Seed(Skip))?;
        }
    }
    Ok(out.unwrap_or_else(|| r.other()))
}

/// A message: its (last) `content`, read by `R` ([`CONTENT`] for a chat
/// message, [`TEXT`] for an Anthropic one).
#[derive(Clone, Copy)]
struct Message<R>(R);

impl<'de, R: Reader<'de, Out = usize> + Copy> Reader<'de> for Message<R> {
    type Out = usize;

    fn other(self) -> usize {
        0
    }

    fn map<A: MapAccess<'de>>(self, map: A) -> Result<usize, A::Error> {
        last_of(map, &["content"], self.0)
    }
}

/// A `messages` array: its text bytes and its length, read by `R`;
/// `None` if it is not an array.
#[derive(Clone, Copy)]
struct Turns<R>(R);

impl<'de, R: Reader<'de, Out = usize> + Copy> Reader<'de> for Turns<R> {
    type Out = Option<(usize, usize)>;

    fn other(self) -> Option<(usize, usize)> {
        None
    }

    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Out, A::Error> {
        let (mut bytes, mut turns) = (0usize, 0usize);
        while let Some(n) = seq.next_element_seed(Seed(self.0))? {
            bytes += n;
            turns += 1;
        }
        Ok(Some((bytes, turns)))
    }
}

/// Anthropic's text: a string, or an array of blocks whose `text`,
/// `content` (each text again) and `input` (its JSON) count.
const TEXT: SumOf<Block> = SumOf(Block);

/// An Anthropic block: its (last) `text` and `content` as [`TEXT`], its
/// (last) `input` as the length of its JSON, as serde_json writes it.
#[derive(Clone, Copy)]
struct Block;

impl<'de> Reader<'de> for Block {
    type Out = usize;

    fn other(self) -> usize {
        0
    }

    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let (mut text, mut content, mut input) = (0, 0, 0);
        while let Some(k) = map.next_key_seed(Seed(KeyIn(&["text", "content", "input"])))? {
            match k {
                Some(0) => text = map.next_value_seed(Seed(TEXT))?,
                Some(1) => content = map.next_value_seed(Seed(TEXT))?,
                Some(_) => {
                    // Rare (tool calls): the value itself, to be exact.
                    input = map.next_value::<serde_json::Value>()?.to_string().len();
                }
                None => map.next_value_seed(Seed(Skip))?,
            }
        }
        Ok(text + content + input)
    }
}

/// The embeddings `input`: a non-empty string, an array of them, an array
/// of token ids, or an array of non-empty arrays of token ids.
struct EmbeddingInput;

impl<'de> Reader<'de> for EmbeddingInput {
    type Out = Input;

    fn other(self) -> Input {
        Input::Tokens(None)
    }

    fn null(self) -> Input {
        Input::Null
    }

    fn string(self, s: &str) -> Input {
        Input::Tokens((!s.is_empty()).then(|| estimate_prompt_tokens(s.len()).max(1)))
    }

    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Input, A::Error> {
        // The first item decides: token ids, or strings and id arrays.
        let mut ids = None;
        let (mut ok, mut items, mut sum) = (true, 0u64, 0u64);
        while let Some(item) = seq.next_element_seed(Seed(InputItem))? {
            items += 1;
            if *ids.get_or_insert(matches!(item, Item::Number(_))) {
                ok &= item == Item::Number(true);
            } else {
                match item {
                    Item::Str(n) if n > 0 => {
                        sum = sum.saturating_add(estimate_prompt_tokens(n).max(1));
                    }
                    Item::Ids(Some(n)) => sum = sum.saturating_add(n),
                    _ => ok = false,
                }
            }
        }
        Ok(Input::Tokens(match ids {
            None => None,
            Some(true) => ok.then_some(items),
            Some(false) => ok.then_some(sum),
        }))
    }
}

/// An item of an embeddings `input` array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    /// A number: whether it is a token id (a `u64`).
    Number(bool),
    /// A string: its length.
    Str(usize),
    /// An array: its length, if it is a non-empty array of token ids.
    Ids(Option<u64>),
    /// Anything else.
    Other,
}

/// Reads an item of an embeddings `input` array.
struct InputItem;

impl<'de> Reader<'de> for InputItem {
    type Out = Item;

    fn other(self) -> Item {
        Item::Other
    }

    fn unsigned(self, _: u64) -> Item {
        Item::Number(true)
    }

    fn number(self) -> Item {
        Item::Number(false)
    }

    fn string(self, s: &str) -> Item {
        Item::Str(s.len())
    }

    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item, A::Error> {
        let (mut ok, mut n) = (true, 0u64);
        while let Some(id) = seq.next_element_seed(Seed(InputItem))? {
            ok &= id == Item::Number(true);
            n += 1;
        }
        Ok(Item::Ids((ok && n > 0).then_some(n)))
    }
}

/// `stream_options`: whether its (last) `include_usage` is `true`, and
/// where its `include_usage` values are.
struct Options<'a> {
    /// The body it is in.
    base: &'a [u8],
}

impl<'a> Reader<'a> for Options<'a> {
    type Out = StreamOptions;

    fn other(self) -> StreamOptions {
        StreamOptions::NotObject
    }

    fn map<A: MapAccess<'a>>(self, mut map: A) -> Result<StreamOptions, A::Error> {
        let (mut usage, mut at, mut entries) = (false, Spans::default(), false);
        while let Some(k) = map.next_key_seed(Seed(KeyIn(&["include_usage"])))? {
            entries = true;
            if k.is_some() {
                let (span, v) = spanned(
                    &mut map,
                    self.base,
                    2,
                    Classify {
                        keep_strings: false,
                    },
                )?;
                usage = v == Scalar::Bool(true);
                at.push(span);
            } else {
                map.next_value_seed(Seed(Skip))?;
            }
        }
        Ok(StreamOptions::Object { usage, at, entries })
    }
}

/// The top-level fields read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// `model`.
    Model,
    /// `stream`.
    Stream,
    /// `max_tokens`.
    MaxTokens,
    /// `max_completion_tokens`.
    MaxCompletionTokens,
    /// `stream_options`.
    StreamOptions,
    /// `messages`.
    Messages,
    /// `prompt`.
    Prompt,
    /// `input`.
    Input,
    /// `system`.
    System,
    /// A field not read.
    Other,
}

/// A top-level key, as the field it is for `mode`.
struct Key(Mode);

impl Reader<'_> for Key {
    type Out = Field;

    fn other(self) -> Field {
        Field::Other
    }

    fn string(self, s: &str) -> Field {
        match (self.0, s) {
            (_, "model") => Field::Model,
            (Mode::Chat | Mode::Messages, "stream") => Field::Stream,
            (Mode::Chat | Mode::Messages, "max_tokens") => Field::MaxTokens,
            (Mode::Chat | Mode::Messages, "messages") => Field::Messages,
            (Mode::Chat, "max_completion_tokens") => Field::MaxCompletionTokens,
            (Mode::Chat, "stream_options") => Field::StreamOptions,
            (Mode::Chat, "prompt") => Field::Prompt,
            (Mode::Embeddings, "input") => Field::Input,
            (Mode::Messages, "system") => Field::System,
            _ => Field::Other,
        }
    }
}

/// The top-level object.
struct Top<'a> {
    /// The body.
    base: &'a [u8],
    /// Just after its `{`.
    open: usize,
    /// The fields read.
    mode: Mode,
}

impl<'a> Reader<'a> for Top<'a> {
    type Out = Option<Peeked<'a>>;

    fn other(self) -> Option<Peeked<'a>> {
        None
    }

    fn map<A: MapAccess<'a>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        let mut p = Peeked::new(self.base, self.open);
        let scalar = Classify {
            keep_strings: false,
        };
        while let Some(field) = map.next_key_seed(Seed(Key(self.mode)))? {
            p.entries = true;
            match field {
                Field::Model => {
                    let (span, v) =
                        spanned(&mut map, self.base, 1, Classify { keep_strings: true })?;
                    p.model = v;
                    p.model_at.push(span);
                }
                Field::Stream => p.stream = map.next_value_seed(Seed(scalar))?,
                Field::MaxTokens => {
                    let (span, v) = spanned(&mut map, self.base, 1, scalar)?;
                    p.max_tokens = v;
                    p.max_tokens_at.push(span);
                }
                Field::MaxCompletionTokens => {
                    let (span, v) = spanned(&mut map, self.base, 1, scalar)?;
                    p.max_completion_tokens = v;
                    p.max_completion_tokens_at.push(span);
                }
                Field::StreamOptions => {
                    let (span, v) = spanned(&mut map, self.base, 1, Options { base: self.base })?;
                    p.stream_options = v;
                    p.stream_options_at.push(span);
                }
                Field::Messages => {
                    p.messages = match self.mode {
                        Mode::Messages => map.next_value_seed(Seed(Turns(Message(TEXT))))?,
                        _ => map.next_value_seed(Seed(Turns(Message(CONTENT))))?,
                    };
                }
                Field::Prompt => p.prompt = map.next_value_seed(Seed(CONTENT))?,
                Field::Input => p.input = map.next_value_seed(Seed(EmbeddingInput))?,
                Field::System => p.system = map.next_value_seed(Seed(TEXT))?,
                Field::Other => map.next_value_seed(Seed(Skip))?,
            }
        }
        Ok(Some(p))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut all: String = (0u8..=0x7f).map(char::from).collect();
        all.push_str("é€😀\u{2028}");
        for s in [all.as_str(), "", "simulator", "a\"b", "\\", "\u{1f}x"] {
            let mut out = Vec::new();
            write_json_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
            assert_eq!(json_str_len(s), out.len(), "{s:?}");
        }
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 1, 9, 10, 99, 100, 4096, u64::MAX / 10, u64::MAX] {
            let mut out = Vec::new();
            write_unsigned(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
            assert_eq!(unsigned_len(n), out.len());
        }
    }

    #[test]
    fn nesting_is_counted_outside_strings() {
        for (json, depth) in [
            ("1", 0),
            ("[]", 1),
            ("{}", 1),
            (r#"[{"a":[1]},[]]"#, 3),
            (r#"["[[[", "\"[[", "\\"]"#, 1),
            (r#"{"a\\":"]]]","b":[[]]}"#, 3),
        ] {
            assert_eq!(nesting(json), depth, "{json}");
        }
    }

    #[test]
    fn spans_are_where_the_values_are() {
        let body = br#" {"model" : "a\"b" ,"max_tokens":7, "stream_options":{"include_usage" :false},"model":null}"#;
        let p = peek(body, Mode::Chat).unwrap();
        let at = |s: &Spans| -> Vec<&str> {
            s.iter()
                .map(|s| std::str::from_utf8(&body[s.start..s.end]).unwrap())
                .collect()
        };
        assert_eq!((p.open, p.entries), (2, true));
        assert_eq!(at(&p.model_at), [r#""a\"b""#, "null"]);
        assert_eq!(p.model, Scalar::Null);
        assert_eq!(at(&p.max_tokens_at), ["7"]);
        assert_eq!(p.max_tokens, Scalar::Unsigned(7));
        assert_eq!(at(&p.stream_options_at), [r#"{"include_usage" :false}"#]);
        let StreamOptions::Object {
            usage,
            at: usage_at,
            entries,
        } = &p.stream_options
        else {
            panic!("{:?}", p.stream_options);
        };
        assert_eq!((*usage, *entries), (false, true));
        assert_eq!(at(usage_at), ["false"]);
        assert!(p.max_completion_tokens_at.is_empty());
        // Escaped strings are read without being kept where they need not be.
        let p = peek(br#"{"model":"a\u0062","stream":"\n"}"#, Mode::Chat).unwrap();
        assert_eq!(p.model, Scalar::Str(Cow::Owned("ab".into())));
        assert_eq!(p.stream, Scalar::Other);
        let p = peek(br#"{"model":"ab"}"#, Mode::Chat).unwrap();
        assert!(matches!(p.model, Scalar::Str(Cow::Borrowed("ab"))));
    }
}
