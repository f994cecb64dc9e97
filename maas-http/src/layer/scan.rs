//! Reading a few fields out of a JSON answer or stream event by its shape
//! alone, in one pass, without parsing the rest (issue 24: serde_json
//! reading every id, choice and chunk for a usage and a count of choices
//! with text was the largest share of maas's instructions per request).
//!
//! The scan skips strings (with their escapes) and nested values by their
//! brackets; it does not check that scalars or UTF-8 are valid. Where an
//! answer is not of the usual shape (a key written with escapes, a value
//! of another type than the usual), a reader returns `None` and its caller
//! parses the whole text with serde_json, which decides as before.

/// The bytes where skipping a container stops: quotes and brackets.
static STOPS: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'{' as usize] = true;
    t[b'[' as usize] = true;
    t[b'}' as usize] = true;
    t[b']' as usize] = true;
    t
};

/// `b` in each of a word's eight bytes.
const fn splat(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

/// Where the first quote or backslash of `s` at or after `i` is. Eight
/// bytes at a time, in a word (most strings of an answer are keys and ids
/// of a few bytes, where a vectorised search spends more setting up than
/// searching); the rest one by one.
#[inline]
fn quote_or_backslash(s: &[u8], mut i: usize) -> Option<usize> {
    const LOW: u64 = splat(0x01);
    const HIGH: u64 = splat(0x80);
    while let Some(&word) = s.get(i..).and_then(|r| r.first_chunk::<8>()) {
        let w = u64::from_le_bytes(word);
        // A byte of `q` (or `b`) is zero where `w` has a quote (or a
        // backslash); the lowest byte flagged is the first such byte
        // (flags above a zero byte may be false, never below).
        let q = w ^ splat(b'"');
        let b = w ^ splat(b'\\');
        let found = (q.wrapping_sub(LOW) & !q | b.wrapping_sub(LOW) & !b) & HIGH;
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    let rest = s.get(i..)?;
    rest.iter()
        .position(|&c| c == b'"' || c == b'\\')
        .map(|p| i + p)
}

/// A position in a JSON text, read forward.
pub(super) struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    /// At the start of `s`.
    pub(super) fn new(s: &'a [u8]) -> Self {
        Cursor { s, i: 0 }
    }

    /// Skips whitespace.
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte that is not whitespace (not consumed).
    pub(super) fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    /// Reads a string's content, the opening quote already read: the
    /// content as written and whether it has escapes.
    #[inline]
    fn string_body(&mut self) -> Option<(&'a [u8], bool)> {
        let start = self.i;
        let mut escaped = false;
        loop {
            let at = quote_or_backslash(self.s, self.i)?;
            if self.s[at] == b'"' {
                self.i = at + 1;
                return Some((&self.s[start..at], escaped));
            }
            escaped = true;
            self.i = at + 2;
        }
    }

    /// Reads the next value, whatever it is, and returns its bytes: a
    /// string to its closing quote, an object or array to its matching
    /// bracket, a scalar to the next delimiter.
    pub(super) fn value(&mut self) -> Option<&'a [u8]> {
        self.value_at().map(|(_, v)| v)
    }

    /// [`value`](Self::value), with where in the text the value starts.
    pub(super) fn value_at(&mut self) -> Option<(usize, &'a [u8])> {
        self.ws();
        let start = self.i;
        match *self.s.get(self.i)? {
            b'"' => {
                self.i += 1;
                self.string_body()?;
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    while !STOPS[usize::from(*self.s.get(self.i)?)] {
                        self.i += 1;
                    }
                    match self.s[self.i] {
                        b'"' => {
                            self.i += 1;
                            self.string_body()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        _ => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                break;
                            }
                        }
                    }
                    self.i += 1;
                }
            }
            b'}' | b']' | b',' | b':' => return None,
            _ => {
                while let Some(b) = self.s.get(self.i) {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.i += 1;
                }
            }
        }
        Some((start, &self.s[start..self.i]))
    }

    /// Reads an object: `f` gets each key (as written, without quotes)
    /// and must read its value (with [`value`](Self::value), or
    /// [`object`](Self::object) / [`array`](Self::array) to look inside).
    /// None when the next value is not an object of that shape, a key has
    /// an escape, or `f` returns None.
    pub(super) fn object(
        &mut self,
        mut f: impl FnMut(&mut Self, &'a [u8]) -> Option<()>,
    ) -> Option<()> {
        self.items(b'{', b'}', |c| {
            if c.s.get(c.i) != Some(&b'"') {
                return None;
            }
            c.i += 1;
            let (key, escaped) = c.string_body()?;
            c.ws();
            if escaped || c.s.get(c.i) != Some(&b':') {
                return None;
            }
            c.i += 1;
            f(c, key)
        })
    }

    /// Reads an array: `f` must read each element (see
    /// [`object`](Self::object)).
    pub(super) fn array(&mut self, f: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.items(b'[', b']', f)
    }

    /// The items between `open` and `close`, separated by commas.
    fn items(
        &mut self,
        open: u8,
        close: u8,
        mut f: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        if self.peek()? != open {
            return None;
        }
        self.i += 1;
        if self.peek()? == close {
            self.i += 1;
            return Some(());
        }
        loop {
            f(self)?;
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.ws();
                }
                b if b == close => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Reads an object and returns the value of `key` in it (None inside:
    /// it has none); None when it is not an object or has the key twice
    /// (serde_json refuses a repeated field).
    pub(super) fn field(&mut self, key: &[u8]) -> Option<Option<&'a [u8]>> {
        Some(self.field_at(key)?.map(|(_, v)| v))
    }

    /// [`field`](Self::field), with where in the text the value starts.
    pub(super) fn field_at(&mut self, key: &[u8]) -> Option<Option<(usize, &'a [u8])>> {
        let mut found = None;
        self.object(|c, k| {
            let v = c.value_at()?;
            if k == key {
                if found.is_some() {
                    return None;
                }
                found = Some(v);
            }
            Some(())
        })?;
        Some(found)
    }

    /// Some when nothing but whitespace is left.
    pub(super) fn end(mut self) -> Option<()> {
        self.ws();
        (self.i == self.s.len()).then_some(())
    }
}

/// The value of `key` in the JSON object `s`, which is nothing else
/// ([`Cursor::field`]).
pub(super) fn field<'a>(s: &'a [u8], key: &[u8]) -> Option<Option<&'a [u8]>> {
    let mut c = Cursor::new(s);
    let found = c.field(key)?;
    c.end()?;
    Some(found)
}

/// A key to find as the last member of an object ([`last_field`]): a
/// search for it quoted, built once (building one costs more than
/// searching an answer).
pub(super) struct LastKey {
    len: usize,
    forward: memchr::memmem::Finder<'static>,
}

impl LastKey {
    /// `key` as written (it must need no escape).
    pub(super) fn new(key: &str) -> Self {
        let quoted = format!("\"{key}\"");
        LastKey {
            len: quoted.len(),
            forward: memchr::memmem::Finder::new(quoted.as_bytes()).into_owned(),
        }
    }
}

/// The value of `key` in the JSON object `s` when it is the object's last
/// member, found from the end without reading the members before it (a
/// usual answer states its `usage` last). None when that cannot be told
/// that way: the key is not written exactly once and plainly, `s` has a
/// `\u` escape (a key could spell it otherwise), or its value is not
/// followed by the object's end. The caller then reads the whole object
/// ([`field`]), which decides alike.
///
/// Why that suffices in a JSON text: the one `"key"` found is preceded by
/// `{` or `,` (so its quote is not escaped: it opens a string, a key since
/// a `:` follows), and the `}` after its value is the text's last byte,
/// which closes the top-level value: the object the key is in. (Of a text
/// that is not JSON before that member, the value may be read where a
/// whole read gives up.)
pub(super) fn last_field<'a>(s: &'a [u8], key: &LastKey) -> Option<&'a [u8]> {
    let at = key.forward.find(s)?;
    // Once: none after it (one may share its last quote).
    if key.forward.find(&s[at + 1..]).is_some()
        || memchr::memchr_iter(b'\\', s).any(|i| s.get(i + 1) == Some(&b'u'))
    {
        return None;
    }
    let before = s[..at]
        .iter()
        .rev()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))?;
    if !matches!(before, b'{' | b',') {
        return None;
    }
    let mut c = Cursor::new(s);
    c.i = at + key.len;
    if c.peek()? != b':' {
        return None;
    }
    c.i += 1;
    let value = c.value()?;
    if c.peek()? != b'}' {
        return None;
    }
    c.i += 1;
    c.end()?;
    Some(value)
}

/// Where the string of `s` whose content starts at `i` (its opening quote
/// just before) ends: the index of its closing quote.
pub(super) fn string_close(s: &[u8], i: usize) -> Option<usize> {
    let mut c = Cursor { s, i };
    c.string_body()?;
    Some(c.i - 1)
}

/// The number `v` when it is written as a plain non-negative integer that
/// fits a `u64` (no sign, fraction, exponent or leading zero); None for
/// anything else, which the caller leaves to serde_json.
pub(super) fn unsigned(v: &[u8]) -> Option<u64> {
    match v {
        [b'0'] => Some(0),
        [b'1'..=b'9', ..] if v.len() <= 20 => v.iter().try_fold(0u64, |n, &d| {
            if !d.is_ascii_digit() {
                return None;
            }
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        }),
        _ => None,
    }
}

/// What a string-or-null value holds: `Some(None)` for null, `Some(Some(n))`
/// for a string of `n` bytes as written (0 only for `""`), None for any
/// other value.
pub(super) fn string_or_null(v: &[u8]) -> Option<Option<usize>> {
    match v {
        b"null" => Some(None),
        [b'"', .., b'"'] => Some(Some(v.len() - 2)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(s: &str) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut c = Cursor::new(s.as_bytes());
        c.object(|c, k| {
            let v = c.value()?;
            out.push((
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ));
            Some(())
        })?;
        c.end()?;
        Some(out)
    }

    #[test]
    fn fields_and_elements_are_read_by_shape() {
        let got = fields(
            r#" { "a" : 1 , "b":"x\"}y\\", "c":{"d":[1,{"e":"]"}]},"f":[], "g":null,"h":-1.5e3 } "#,
        )
        .unwrap();
        let want = [
            ("a", "1"),
            ("b", r#""x\"}y\\""#),
            ("c", r#"{"d":[1,{"e":"]"}]}"#),
            ("f", "[]"),
            ("g", "null"),
            ("h", "-1.5e3"),
        ];
        assert_eq!(
            got,
            want.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec()
        );
        assert_eq!(fields("{}"), Some(vec![]));
        let mut n = Vec::new();
        let mut c = Cursor::new(br#"[ {"a":[]}, "s", 3 ]"#);
        c.array(|c| {
            n.push(c.value()?.len());
            Some(())
        })
        .unwrap();
        assert_eq!(n, [8, 3, 1]);
        assert_eq!(c.end(), Some(()));
        assert_eq!(Cursor::new(b" [ ] ").array(|_| None), Some(()));
        // Looking inside a value instead of skipping it.
        let mut inner = Vec::new();
        let mut c = Cursor::new(br#"{"a":{"b":[1,2]},"c":3}"#);
        c.object(|c, k| match k {
            b"a" => c.object(|c, _| {
                c.array(|c| {
                    inner.push(c.value()?.to_vec());
                    Some(())
                })
            }),
            _ => c.value().map(drop),
        })
        .unwrap();
        assert_eq!(inner, [b"1".to_vec(), b"2".to_vec()]);
    }

    #[test]
    fn unusual_shapes_are_left_to_serde() {
        for s in [
            "",
            "[]",
            "null",
            r#"{"a":1"#,
            r#"{"a":"1}"#,
            r#"{"a" 1}"#,
            r#"{"a":1,}"#,
            r#"{"a":1} x"#,
            r#"{"a":{"b":1}"#,
            r#"{"\u0061":1}"#,
            r#"{a:1}"#,
            r#"{"a":}"#,
            r#"{"a":"\"#,
        ] {
            assert_eq!(fields(s), None, "{s}");
        }
        assert_eq!(Cursor::new(b"{}").array(|_| Some(())), None);
        // A stop asked by the callback.
        assert_eq!(Cursor::new(br#"{"a":1}"#).object(|_, _| None), None);
    }

    proptest::proptest! {
        /// The word-at-a-time search finds what a byte-by-byte one finds,
        /// from any start, in any bytes (those next to a quote or a
        /// backslash, zero and high bytes among them).
        #[test]
        fn quotes_and_backslashes_are_found_as_one_by_one(
            s in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(&b"\"\\!#[]\x00\x01\x7f\x80\xdc\xff a"[..]),
                    proptest::prelude::any::<u8>(),
                ],
                0..40,
            ),
            from in 0usize..42,
        ) {
            let naive = s
                .get(from..)
                .and_then(|r| r.iter().position(|&c| c == b'"' || c == b'\\'))
                .map(|p| from + p);
            proptest::prop_assert_eq!(quote_or_backslash(&s, from), naive);
        }
    }

    #[test]
    fn a_last_field_is_read_from_the_end() {
        let usage = LastKey::new("usage");
        let last = |s: &str| last_field(s.as_bytes(), &usage).map(|v| v.to_vec());
        assert_eq!(
            last(r#"{"a":[1,{"b":"}"}],"usage":{"n":1}}"#),
            Some(br#"{"n":1}"#.to_vec())
        );
        assert_eq!(
            last(" {\"a\":1 ,\n \"usage\" : null } \n"),
            Some(b"null".to_vec())
        );
        for s in [
            // Not last, nested, twice, in a string, escaped, cut short.
            r#"{"usage":1,"a":2}"#,
            r#"{"a":{"usage":1}}"#,
            r#"{"a":[{"usage":1}]}"#,
            r#"{"usage":1,"usage":2}"#,
            r#"{"a":"x","b":"\"usage\":1}"}"#,
            r#"{"a\"usage":1}"#,
            r#"{"\u0075sage":1,"usage":2}"#,
            r#"{"a":"\u00e9","usage":2}"#,
            r#"{"usage":}"#,
            r#"{"usage":1"#,
            r#"{"usage":1} x"#,
            r#"["usage",1]"#,
            "",
        ] {
            assert_eq!(last(s), None, "{s}");
        }
    }

    proptest::proptest! {
        /// Whenever the value is found from the end, it is the one a
        /// whole read finds, for objects with `usage` anywhere (nested,
        /// in strings, repeated, escaped).
        #[test]
        fn a_last_field_is_the_field(members in proptest::collection::vec(
            (
                proptest::sample::select(vec!["usage", "a", "us\\u0061ge", "x\\\"usage"]),
                proptest::prop_oneof![
                    proptest::strategy::Just("1".to_owned()),
                    proptest::strategy::Just(r#""usage""#.to_owned()),
                    proptest::strategy::Just(r#"{"usage":{"n":2}}"#.to_owned()),
                    proptest::strategy::Just(r#"["}",{"usage":3}]"#.to_owned()),
                    proptest::strategy::Just(r#""\"usage\":4}""#.to_owned()),
                ],
            ),
            0..4,
        ), spaced in proptest::prelude::any::<bool>()) {
            let sep = if spaced { " , " } else { "," };
            let body: Vec<String> = members.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let s = format!("{{{}}}", body.join(sep));
            if let Some(v) = last_field(s.as_bytes(), &LastKey::new("usage")) {
                proptest::prop_assert_eq!(field(s.as_bytes(), b"usage"), Some(Some(v)), "{}", s);
            }
        }
    }

    #[test]
    fn a_field_is_found_once() {
        assert_eq!(
            field(br#"{"a":1,"b":{"a":2}}"#, b"a"),
            Some(Some(&b"1"[..]))
        );
        assert_eq!(field(br#"{"b":{"a":2}}"#, b"a"), Some(None));
        assert_eq!(field(br#"{"a":1,"a":2}"#, b"a"), None);
        assert_eq!(string_or_null(b"null"), Some(None));
        assert_eq!(string_or_null(br#""""#), Some(Some(0)));
        assert_eq!(string_or_null(br#""\n""#), Some(Some(2)));
        assert_eq!(string_or_null(b"3"), None);
        assert_eq!(string_or_null(br#"""#), None);
    }
}
