//! `llm.extract_json`: the JSON value an LLM meant, from the forms models really write: fenced blocks
//! (any case, CRLF, a fence inside a JSON string), `<think>` blocks (braces inside them too), prose
//! before and after (with braces in it), Python dict literals (single quotes, True/False/None,
//! triple-quoted strings, tuples), raw newlines and tabs inside strings, trailing commas, comments,
//! bare lists.
//!
//! It must never invent: a truncated or absent value is an error (`truncated` / `no_json`), never a
//! repaired guess. It must stay linear: every scan is charged to a work budget proportional to the
//! text, so a 2 MB reply (or a pathological `{{{{…`) is handled in milliseconds.
//!
//! How: strip `<think>` blocks; try the whole text as JSON; otherwise find candidate values, each a
//! `{`/`[` whose matching bracket is found by a string-aware scanner, parse each strictly and then
//! through a normalizer that rewrites the Python/JS leniencies into strict JSON. A candidate opened
//! right after a ``` fence wins over bare ones; among equals the largest wins (so `[1]` citations or a
//! small example in the prose do not beat the answer).

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtractErrorKind {
    /// No JSON object or array in the text.
    NoJson,
    /// A JSON value starts but is cut off (unbalanced brackets or an unterminated string).
    Truncated,
    /// The value is complete but nested deeper than `pyjson::MAX_DEPTH` levels.
    TooDeep,
}

impl ExtractErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExtractErrorKind::NoJson => "no_json",
            ExtractErrorKind::Truncated => "truncated",
            ExtractErrorKind::TooDeep => "too_deep",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExtractError {
    pub kind: ExtractErrorKind,
    pub message: String,
}

impl std::fmt::Display for ExtractError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for ExtractError {}

/// Extract the JSON value an LLM reply holds. Python's NaN/Infinity come back as `pyjson` markers.
pub fn extract_json(text: &str) -> Result<Value, ExtractError> {
    extract_json_repaired(text).map(|(v, _)| v)
}

/// [`extract_json`], and whether the value needed repairs to be read: anything but a reply that is
/// exactly one JSON value (a fence, prose around it, a `<think>` block, Python literals, a double-encoded
/// string...). Counted by the pipeline to see how often structured outputs are not honoured.
pub fn extract_json_repaired(text: &str) -> Result<(Value, bool), ExtractError> {
    let (stripped, cut_in_think) = strip_think(text);
    let think_removed = stripped.as_ref() != text;
    let text: &str = &stripped;
    let trimmed = text.trim();
    let too_deep_err = || ExtractError {
        kind: ExtractErrorKind::TooDeep,
        message: format!(
            "the reply's JSON is nested too deeply: more than {} levels of arrays and objects inside each other \
             ({} chars); no real answer needs that",
            crate::pyjson::MAX_DEPTH,
            text.len()
        ),
    };
    let whole = crate::pyjson::parse(trimmed);
    if matches!(&whole, Err(e) if crate::pyjson::is_too_deep(e)) {
        // the whole reply is one JSON value: any part of it would be a guess
        return Err(too_deep_err());
    }
    if let Ok(v) = whole {
        // a reply that is one JSON string holding the JSON (double-encoded) means the inner value
        if let Value::String(inner) = &v {
            let t = inner.trim();
            if t.starts_with(['{', '[']) {
                if let Some(x) = parse_lenient(t).filter(|x| x.is_object() || x.is_array()) {
                    return Ok((x, true));
                }
            }
        }
        return Ok((v, think_removed));
    }
    let b = text.as_bytes();
    let fences = fence_starts(b);
    let mut budget: usize = 4 * b.len() + 65_536;
    // (span length, value) of the best candidate opened by a fence / anywhere
    let mut best_fenced: Option<(usize, Value)> = None;
    let mut best_bare: Option<(usize, Value)> = None;
    // the longest candidate that runs off the end of the text and looks like JSON
    let mut cut: Option<(usize, bool)> = None; // (start, fenced)
    let mut deepest: Option<usize> = None; // span of the largest complete candidate nested too deeply
                                           // brackets known to stay open to the end of the text (from an earlier unclosed scan): scanning
                                           // from them again would only run to the end again, which made `{{{{…` quadratic
    let mut open_to_end = std::collections::BTreeSet::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if (c != b'{' && c != b'[') || open_to_end.contains(&i) {
            i += 1;
            continue;
        }
        let fenced = fences.binary_search(&i).is_ok();
        match scan_balanced(b, i, &mut budget) {
            Scan::Closed(end) => {
                let slice = &text[i..end];
                budget = budget.saturating_sub(slice.len());
                let parsed = parse_candidate(slice);
                if let Err(true) = parsed {
                    // skip it whole: a shallower value inside it is a piece, not the answer
                    deepest = deepest.max(Some(end - i));
                    i = end;
                    continue;
                }
                if let Ok(v) = parsed {
                    let span = end - i;
                    let whole = slice.len() == trimmed.len();
                    if fenced || whole || acceptable_bare(&v) {
                        let slot = if fenced { &mut best_fenced } else { &mut best_bare };
                        if slot.as_ref().is_none_or(|(s, _)| span > *s) {
                            *slot = Some((span, v));
                        }
                    }
                    i = end;
                    continue;
                }
                i += 1;
            }
            Scan::Unclosed(still_open) => {
                open_to_end.extend(still_open);
                if (fenced || looks_like_json_start(b, i)) && cut.is_none() {
                    cut = Some((i, fenced));
                }
                i += 1;
            }
            Scan::Mismatch => i += 1,
            Scan::OutOfBudget => break,
        }
        if budget == 0 {
            break;
        }
    }
    let cut_err = || ExtractError {
        kind: ExtractErrorKind::Truncated,
        message: format!(
            "the reply's JSON is cut off (unbalanced brackets or an unterminated string at the end of {} chars); \
             raise max_tokens or ask for less",
            text.len()
        ),
    };
    if let Some((_, v)) = best_fenced {
        return Ok((v, true));
    }
    if let Some((start, fenced)) = cut {
        // A cut-off fenced block, or a cut-off value bigger than anything complete: the answer was
        // truncated, and a smaller complete value elsewhere would be a guess.
        if fenced || best_bare.as_ref().is_none_or(|(span, _)| b.len() - start > *span) {
            return Err(cut_err());
        }
    }
    if let Some(span) = deepest {
        if best_bare.as_ref().is_none_or(|(s, _)| span > *s) {
            return Err(too_deep_err());
        }
    }
    if let Some((_, v)) = best_bare {
        return Ok((v, true));
    }
    if cut_in_think {
        return Err(ExtractError {
            kind: ExtractErrorKind::Truncated,
            message: "the reply ended inside a <think> block, before any answer; raise max_tokens".into(),
        });
    }
    Err(ExtractError {
        kind: ExtractErrorKind::NoJson,
        message: format!("no JSON object or array in the reply ({} chars): {}", text.len(), preview(trimmed, 80)),
    })
}

/// A short one-line preview of a text for error messages.
pub fn preview(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return format!("'{flat}'");
    }
    let head: String = flat.chars().take(max).collect();
    format!("'{head}…'")
}

/// A bare (not fenced, not the whole text) candidate must look like data, not prose: `[1]` citations
/// and `[]` are skipped.
fn acceptable_bare(v: &Value) -> bool {
    match v {
        Value::Object(_) => true,
        Value::Array(a) => a.len() > 1 || a.iter().any(|x| x.is_object() || x.is_array()),
        _ => false,
    }
}

/// `{"`, `{'`, `{}` or `[` + `{ [ " ' digit -`: an unclosed candidate like this is a cut-off value,
/// not a stray brace in prose.
fn looks_like_json_start(b: &[u8], i: usize) -> bool {
    let next = b[i + 1..].iter().copied().find(|c| !c.is_ascii_whitespace());
    match (b[i], next) {
        (_, None) => false,
        (b'{', Some(n)) => matches!(n, b'"' | b'\'' | b'}'),
        (_, Some(n)) => matches!(n, b'{' | b'[' | b'"' | b'\'' | b'-') || n.is_ascii_digit(),
    }
}

/// Remove `<think>…</think>` (and `<thinking>`) blocks, case-insensitively. A closing tag with no
/// opening one (templates that eat the opening tag) drops everything before it. An opening tag that
/// is never closed means the reply was cut off while thinking: the rest is dropped (a value in the
/// thoughts is a draft, not the answer) and the flag is set.
pub fn strip_think(text: &str) -> (std::borrow::Cow<'_, str>, bool) {
    let lower = text.to_ascii_lowercase();
    if !lower.contains("think") {
        return (std::borrow::Cow::Borrowed(text), false);
    }
    let mut cut = false;
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    let first_open = find_open_think(&lower, 0).map(|(s, _)| s);
    if let Some(close) = lower.find("</think") {
        if first_open.is_none_or(|o| o > close) {
            if let Some(gt) = lower[close..].find('>') {
                pos = close + gt + 1;
            }
        }
    }
    while let Some((start, after)) = find_open_think(&lower, pos) {
        out.push_str(&text[pos..start]);
        let close = lower[after..].find("</think").map(|c| after + c);
        match close.and_then(|c| lower[c..].find('>').map(|gt| c + gt + 1)) {
            Some(end) => pos = end,
            None => {
                cut = true;
                pos = text.len();
                break;
            }
        }
    }
    out.push_str(&text[pos..]);
    (std::borrow::Cow::Owned(out), cut)
}

fn find_open_think(lower: &str, from: usize) -> Option<(usize, usize)> {
    let mut at = from;
    while let Some(off) = lower[at..].find("<think") {
        let s = at + off;
        let rest = &lower[s + 6..];
        if rest.starts_with('>') {
            return Some((s, s + 7));
        }
        if rest.starts_with("ing>") {
            return Some((s, s + 10));
        }
        at = s + 6;
    }
    None
}

/// Positions of the `{`/`[` that directly follow a ``` fence and its language tag.
fn fence_starts(b: &[u8]) -> Vec<usize> {
    let mut v = Vec::new();
    let mut i = 0;
    while i + 3 <= b.len() {
        if &b[i..i + 3] != b"```" {
            i += 1;
            continue;
        }
        let mut j = i + 3;
        while j < b.len() && b[j] == b'`' {
            j += 1;
        }
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'-' || b[j] == b'+') {
            j += 1;
        }
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if j < b.len() && (b[j] == b'{' || b[j] == b'[') {
            v.push(j);
        }
        i = j.max(i + 3);
    }
    v
}

enum Scan {
    /// The matching bracket was found; the index just after it.
    Closed(usize),
    /// The text ended inside the value; the brackets still open then.
    Unclosed(Vec<usize>),
    /// A closing bracket of the wrong kind: not a value.
    Mismatch,
    OutOfBudget,
}

/// Find the bracket matching `b[start]`, skipping strings (double, single, triple quoted) and comments.
fn scan_balanced(b: &[u8], start: usize, budget: &mut usize) -> Scan {
    let mut stack: Vec<(u8, usize)> = Vec::with_capacity(16);
    let still_open = |stack: Vec<(u8, usize)>| Scan::Unclosed(stack.into_iter().map(|(_, p)| p).collect());
    let mut i = start;
    let mut prev_sig = b'\0';
    while i < b.len() {
        if *budget == 0 {
            return Scan::OutOfBudget;
        }
        *budget -= 1;
        let c = b[i];
        match c {
            b'{' | b'[' | b'(' => {
                stack.push((c, i));
                i += 1;
            }
            b'}' | b']' | b')' => {
                let want = match c {
                    b'}' => b'{',
                    b']' => b'[',
                    _ => b'(',
                };
                match stack.pop() {
                    Some((open, _)) if open == want => {}
                    _ => return Scan::Mismatch,
                }
                i += 1;
                if stack.is_empty() {
                    return Scan::Closed(i);
                }
            }
            b'"' | b'\'' => {
                if c == b'\'' && !matches!(prev_sig, b'{' | b'[' | b',' | b':' | b'(') {
                    i += 1; // an apostrophe in prose, not a string
                } else {
                    match string_end(b, i, false) {
                        Some((end, _)) => {
                            *budget = budget.saturating_sub(end - i);
                            i = end;
                        }
                        None => return still_open(stack),
                    }
                }
            }
            b'#' => i = line_end(b, i),
            b'/' if b.get(i + 1) == Some(&b'/') => i = line_end(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => match find(b, i + 2, b"*/") {
                Some(e) => i = e + 2,
                None => return still_open(stack),
            },
            _ => i += 1,
        }
        if !c.is_ascii_whitespace() {
            prev_sig = c;
        }
    }
    still_open(stack)
}

fn line_end(b: &[u8], i: usize) -> usize {
    b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |p| i + p)
}

fn find(b: &[u8], from: usize, pat: &[u8]) -> Option<usize> {
    if from > b.len() {
        return None;
    }
    b[from..].windows(pat.len()).position(|w| w == pat).map(|p| from + p)
}

/// Where the string opening at `b[i]` (a quote) ends: (index after the closing quote, triple?).
/// A lone quote inside a one-line-quoted string ends it only when what follows (after spaces) could
/// follow a string in JSON (`, } ] :`, a comment or the end); otherwise it is a quote the model forgot
/// to escape. Valid JSON is unaffected: in it a closing quote is always followed by one of these.
fn string_end(b: &[u8], i: usize, raw: bool) -> Option<(usize, bool)> {
    let q = b[i];
    let triple = b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q);
    if triple {
        let mut j = i + 3;
        while j < b.len() {
            if b[j] == b'\\' && !raw {
                j += 2;
                continue;
            }
            if b[j] == q && b.get(j + 1) == Some(&q) && b.get(j + 2) == Some(&q) {
                // """a"""" : extra quotes belong to the content
                let mut e = j + 3;
                while b.get(e) == Some(&q) {
                    e += 1;
                }
                return Some((e, true));
            }
            j += 1;
        }
        return None;
    }
    if b.get(i + 1) == Some(&q) {
        return Some((i + 2, false)); // "" (empty string)
    }
    let mut j = i + 1;
    while j < b.len() {
        let c = b[j];
        if c == b'\\' && !raw {
            j += 2;
            continue;
        }
        if c == q && closes_string(b, j + 1, q) {
            return Some((j + 1, false));
        }
        j += 1;
    }
    None
}

fn closes_string(b: &[u8], from: usize, q: u8) -> bool {
    match b[from..].iter().copied().find(|c| *c != b' ' && *c != b'\t' && *c != b'\r' && *c != b'\n') {
        None => true,
        // `)` ends a string only in Python's quotes (a tuple); in double quotes it is far more often
        // code like `print("hi")` with the inner quotes unescaped
        Some(n) => matches!(n, b',' | b'}' | b']' | b':' | b'#' | b'/') || (n == b')' && q == b'\''),
    }
}

/// Parse a candidate: strict JSON (with NaN/Infinity) first, else through the normalizer.
pub fn parse_lenient(s: &str) -> Option<Value> {
    parse_candidate(s).ok()
}

/// `parse_lenient`, with why it failed: Err(true) when the value is nested too deeply.
fn parse_candidate(s: &str) -> Result<Value, bool> {
    match crate::pyjson::parse(s) {
        Ok(v) => return Ok(v),
        Err(e) if crate::pyjson::is_too_deep(&e) => return Err(true),
        Err(_) => {}
    }
    let norm = normalize(s).ok_or(false)?;
    crate::pyjson::parse(&norm).map_err(|e| crate::pyjson::is_too_deep(&e))
}

/// Rewrite Python-literal / JS-ish / sloppy JSON into strict JSON. None when something cannot be
/// rewritten without guessing (a bare word that is not a key, an unterminated string…).
fn normalize(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len() + 16);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' => {
                i = emit_string(b, i, false, &mut out)?;
            }
            b'{' | b'[' | b':' | b',' => {
                out.push(c);
                i += 1;
            }
            b'(' => {
                out.push(b'[');
                i += 1;
            }
            b'}' | b']' | b')' => {
                while out.last().is_some_and(|x| x.is_ascii_whitespace()) {
                    out.pop();
                }
                if out.last() == Some(&b',') {
                    out.pop(); // trailing comma
                }
                out.push(if c == b')' { b']' } else { c });
                i += 1;
            }
            b'#' => i = line_end(b, i),
            b'/' if b.get(i + 1) == Some(&b'/') => i = line_end(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => i = find(b, i + 2, b"*/")? + 2,
            b'-' | b'+' | b'.' | b'0'..=b'9' => {
                let start = i;
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || matches!(b[j], b'.' | b'-' | b'+' | b'_')) {
                    j += 1;
                }
                let tok: String = s[start..j].chars().filter(|&ch| ch != '_').collect();
                let tok = tok.strip_prefix('+').unwrap_or(&tok);
                let (sign, body) = match tok.strip_prefix('-') {
                    Some(r) => ("-", r),
                    None => ("", tok),
                };
                let body = match body {
                    "inf" | "Infinity" => "Infinity".to_string(),
                    "nan" | "NaN" => "NaN".to_string(),
                    _ => {
                        if !body.starts_with(|ch: char| ch.is_ascii_digit() || ch == '.') {
                            return None;
                        }
                        let mut t = body.to_string();
                        if t.starts_with('.') {
                            t.insert(0, '0');
                        }
                        if t.ends_with('.') {
                            t.push('0');
                        }
                        t = t.replace(".e", ".0e").replace(".E", ".0E");
                        t
                    }
                };
                out.extend_from_slice(sign.as_bytes());
                out.extend_from_slice(body.as_bytes());
                i = j;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                let word = &s[i..j];
                let next = b.get(j).copied();
                if matches!(next, Some(b'"') | Some(b'\''))
                    && word.len() <= 2
                    && word.chars().all(|ch| matches!(ch, 'r' | 'R' | 'b' | 'B' | 'u' | 'U' | 'f' | 'F'))
                {
                    let raw = word.contains(['r', 'R']);
                    i = emit_string(b, j, raw, &mut out)?;
                    continue;
                }
                let lit = match word {
                    "True" | "true" => Some("true"),
                    "False" | "false" => Some("false"),
                    "None" | "null" | "undefined" => Some("null"),
                    "NaN" | "nan" => Some("NaN"),
                    "Infinity" | "inf" => Some("Infinity"),
                    _ => None,
                };
                match lit {
                    Some(l) => out.extend_from_slice(l.as_bytes()),
                    None => {
                        let after = b[j..].iter().copied().find(|ch| !ch.is_ascii_whitespace());
                        if after != Some(b':') {
                            return None;
                        }
                        out.push(b'"');
                        out.extend_from_slice(word.as_bytes());
                        out.push(b'"');
                    }
                }
                i = j;
            }
            c if c.is_ascii_whitespace() => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Emit the string starting at `b[i]` as a strict JSON string; returns the index after it.
fn emit_string(b: &[u8], i: usize, raw: bool, out: &mut Vec<u8>) -> Option<usize> {
    let (end, triple) = string_end(b, i, raw)?;
    let q = b[i];
    let (from, to) = if triple {
        // closing run may hold extra quotes that belong to the content: the last three close
        (i + 3, end - 3)
    } else {
        (i + 1, end - 1)
    };
    out.push(b'"');
    let mut j = from;
    while j < to {
        let c = b[j];
        match c {
            b'\\' if raw => out.extend_from_slice(b"\\\\"),
            b'\\' => {
                let n = b.get(j + 1).copied().unwrap_or(b'\\');
                match n {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                        out.push(b'\\');
                        out.push(n);
                    }
                    b'u' if j + 6 <= to && b[j + 2..j + 6].iter().all(|h| h.is_ascii_hexdigit()) => {
                        out.extend_from_slice(&b[j..j + 6]);
                        j += 6;
                        continue;
                    }
                    b'x' if j + 4 <= to && b[j + 2..j + 4].iter().all(|h| h.is_ascii_hexdigit()) => {
                        out.extend_from_slice(b"\\u00");
                        out.extend_from_slice(&b[j + 2..j + 4]);
                        j += 4;
                        continue;
                    }
                    b'\'' => out.push(b'\''),
                    b'\n' => {}
                    b'0' => out.extend_from_slice(b"\\u0000"),
                    _ => {
                        // an escape JSON does not know (`\d` from a regex): keep the backslash
                        out.extend_from_slice(b"\\\\");
                        j += 1;
                        continue;
                    }
                }
                j += 2;
                continue;
            }
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            c if c < 0x20 => out.extend_from_slice(format!("\\u{c:04x}").as_bytes()),
            _ => out.push(c),
        }
        j += 1;
    }
    let _ = q;
    out.push(b'"');
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_reply_that_is_exactly_json_counts_as_unrepaired() {
        let r = |t: &str| extract_json_repaired(t).unwrap().1;
        assert!(!r(r#"{"a": 1}"#));
        assert!(!r(r#"  {"think": "the word think in a value"}  "#));
        assert!(r("Here it is:\n```json\n{\"a\": 1}\n```"));
        assert!(r("<think>hmm</think>{\"a\": 1}"));
        assert!(r("{'a': True}"));
    }
    use serde_json::json;

    fn ok(text: &str) -> Value {
        match extract_json(text) {
            Ok(v) => v,
            Err(e) => panic!("expected JSON from {text:?}, got {e}"),
        }
    }

    fn err(text: &str) -> ExtractErrorKind {
        match extract_json(text) {
            Ok(v) => panic!("expected an error from {text:?}, got {v}"),
            Err(e) => e.kind,
        }
    }

    #[test]
    fn plain_object_and_bare_list() {
        assert_eq!(ok(r#"{"a": 1}"#), json!({"a": 1}));
        assert_eq!(ok("  [1, 2, 3]\n"), json!([1, 2, 3]));
        assert_eq!(ok(r#"[{"id": "c1", "code": "x=1"}]"#), json!([{"id": "c1", "code": "x=1"}]));
    }

    #[test]
    fn fenced_blocks_any_case_and_crlf() {
        assert_eq!(ok("Here you go:\n```json\n{\"a\": 1}\n```\nDone."), json!({"a": 1}));
        assert_eq!(ok("```JSON\r\n{\"a\": [1,\r\n 2]}\r\n```\r\n"), json!({"a": [1, 2]}));
        assert_eq!(ok("```\n[{\"x\": true}]\n```"), json!([{"x": true}]));
        assert_eq!(ok("```json {\"inline\": 1}```"), json!({"inline": 1}));
        assert_eq!(ok("````json\n{\"four\": 4}\n````"), json!({"four": 4}));
    }

    #[test]
    fn fence_inside_a_json_string() {
        let t = "```json\n{\"cells\": [{\"id\": \"c1\", \"code\": \"s = '''\n```python\nprint(1)\n```\n'''\"}]}\n```";
        let v = ok(t);
        assert_eq!(v["cells"][0]["code"], "s = '''\n```python\nprint(1)\n```\n'''");
        let t2 = "```json\n{\"doc\": \"use ```json fences``` like this\", \"n\": 2}\n```";
        assert_eq!(ok(t2)["n"], 2);
    }

    #[test]
    fn fenced_block_wins_over_prose_example() {
        let t = "The format is {\"cells\": []} as usual. Answer:\n```json\n{\"cells\": [{\"id\": \"a\"}]}\n```";
        assert_eq!(ok(t), json!({"cells": [{"id": "a"}]}));
    }

    #[test]
    fn python_block_before_json_block() {
        let t = "```python\nd = {'a': 1}\nprint(d)\n```\nAnd the result:\n```json\n{\"ok\": true}\n```";
        assert_eq!(ok(t), json!({"ok": true}));
    }

    #[test]
    fn think_blocks_with_braces() {
        let t = "<think>I should output {\"wrong\": 1} maybe? or [1,2,3]... {unbalanced</think>\n{\"right\": 2}";
        assert_eq!(ok(t), json!({"right": 2}));
        let t = "<THINK>\nlet me think { [ \n</THINK>```json\n{\"a\": 1}\n```";
        assert_eq!(ok(t), json!({"a": 1}));
        let t = "<thinking>{\"draft\": 0}</thinking> final: {\"final\": 1}";
        assert_eq!(ok(t), json!({"final": 1}));
        // the template ate the opening tag
        let t = "reasoning with {\"draft\": {\"x\": [1, 2, 3, 4, 5, 6]}}</think>{\"final\": 1}";
        assert_eq!(ok(t), json!({"final": 1}));
        // two think blocks
        let t = "<think>{\"a\":1}</think>x<think>{\"b\":2, \"c\": 3}</think>{\"c\": 3}";
        assert_eq!(ok(t), json!({"c": 3}));
        // cut off while thinking: the draft in the thoughts is not the answer
        assert_eq!(err("<think>I will answer {\"cells\": []} once I have checked"), ExtractErrorKind::Truncated);
    }

    #[test]
    fn prose_before_and_after_with_braces() {
        let t = "Sure! I used {curly} braces in prose, and set {x: y. Here it is: {\"a\": {\"b\": [1, 2]}} \
                 Hope this helps {:)}";
        assert_eq!(ok(t), json!({"a": {"b": [1, 2]}}));
        let t = "As shown in [1] and [2], the answer is {\"score\": 0.5}.";
        assert_eq!(ok(t), json!({"score": 0.5}));
        let t = "Don't worry, it's {\"quote\": \"it's fine\"} isn't it";
        assert_eq!(ok(t), json!({"quote": "it's fine"}));
    }

    #[test]
    fn python_dict_literals() {
        let t = "{'cells': [{'id': 'c1', 'ok': True, 'skip': False, 'note': None, 'shape': (3, 4)}]}";
        assert_eq!(ok(t), json!({"cells": [{"id": "c1", "ok": true, "skip": false, "note": null, "shape": [3, 4]}]}));
        let t = "{'code': \"print('hi')\", 'q': 'say \"x\"', 'esc': 'it\\'s'}";
        assert_eq!(ok(t), json!({"code": "print('hi')", "q": "say \"x\"", "esc": "it's"}));
    }

    #[test]
    fn triple_quoted_strings() {
        let t = "{'cells': [{'id': 'c1', 'code': '''import numpy as np\nx = {\"a\": 1}\nprint(f'{x}')\n'''}]}";
        assert_eq!(ok(t)["cells"][0]["code"], "import numpy as np\nx = {\"a\": 1}\nprint(f'{x}')\n");
        let t = "{\"code\": \"\"\"def f():\n    return \"ok\"\n\"\"\", \"n\": 1}";
        assert_eq!(ok(t), json!({"code": "def f():\n    return \"ok\"\n", "n": 1}));
    }

    #[test]
    fn raw_newlines_tabs_and_unknown_escapes_in_strings() {
        let t = "{\"code\": \"for i in range(3):\n\tprint(i)\n\", \"re\": \"\\d+\\.\\w\"}";
        assert_eq!(ok(t), json!({"code": "for i in range(3):\n\tprint(i)\n", "re": "\\d+\\.\\w"}));
    }

    #[test]
    fn unescaped_quotes_inside_strings() {
        let t = "{\"code\": \"print(\"hello world\")\", \"id\": \"c1\"}";
        assert_eq!(ok(t), json!({"code": "print(\"hello world\")", "id": "c1"}));
    }

    #[test]
    fn trailing_commas_comments_and_bare_keys() {
        let t = "{\n  \"a\": [1, 2, 3,],\n  // a comment\n  \"b\": {\"c\": 1,}, # python comment\n}";
        assert_eq!(ok(t), json!({"a": [1, 2, 3], "b": {"c": 1}}));
        assert_eq!(
            ok("{edits: [{cell_index: 2, source: 'x = 1'}]}"),
            json!({"edits": [{"cell_index": 2, "source": "x = 1"}]})
        );
    }

    #[test]
    fn numbers_python_writes() {
        let v = ok("{'a': NaN, 'b': -Infinity, 'c': .5, 'd': 1_000, 'e': +2, 'f': 3.}");
        assert!(crate::pyjson::as_f64(&v["a"]).unwrap().is_nan());
        assert_eq!(crate::pyjson::as_f64(&v["b"]), Some(f64::NEG_INFINITY));
        assert_eq!(v["c"], json!(0.5));
        assert_eq!(v["d"], json!(1000));
        assert_eq!(v["e"], json!(2));
        assert_eq!(v["f"], json!(3.0));
    }

    #[test]
    fn unicode_passes_through() {
        assert_eq!(ok("Voilà : {'名前': 'データ ✓', \"e\": \"\\u00e9\"}"), json!({"名前": "データ ✓", "e": "é"}));
    }

    #[test]
    fn truncated_is_an_error_not_a_guess() {
        assert_eq!(err("```json\n{\"cells\": [{\"id\": \"c1\", \"code\": \"x = 1"), ExtractErrorKind::Truncated);
        assert_eq!(err("{\"cells\": [{\"id\": \"c1\"}, {\"id\": "), ExtractErrorKind::Truncated);
        assert_eq!(err("[{\"a\": 1}, {\"b\": 2"), ExtractErrorKind::Truncated);
        // a small complete example in the prose does not stand in for a cut-off answer
        assert_eq!(
            err("Format: {\"a\": 1}. Answer: {\"cells\": [{\"id\": \"c1\", \"code\": \"import numpy"),
            ExtractErrorKind::Truncated
        );
        assert_eq!(err("```json\n{\"a\": 1, \"b\": [1, 2"), ExtractErrorKind::Truncated);
    }

    #[test]
    fn absent_is_an_error() {
        assert_eq!(err(""), ExtractErrorKind::NoJson);
        assert_eq!(err("I cannot help with that."), ExtractErrorKind::NoJson);
        assert_eq!(err("use {braces} and [1] refs {like this"), ExtractErrorKind::NoJson);
        assert_eq!(err("<think>{\"a\": 1}</think>Sorry, no answer."), ExtractErrorKind::NoJson);
        assert_eq!(err("{not: json here}"), ExtractErrorKind::NoJson);
    }

    #[test]
    fn scalar_when_the_whole_reply_is_one() {
        assert_eq!(ok("42"), json!(42));
        assert_eq!(ok("\"s\""), json!("s"));
        assert_eq!(ok("[]"), json!([]));
    }

    #[test]
    fn double_encoded_reply_means_the_inner_value() {
        assert_eq!(ok(r#""{\"cells\": [1, 2]}""#), json!({"cells": [1, 2]}));
        assert_eq!(ok(r#""just text""#), json!("just text"));
    }

    #[test]
    fn several_fenced_blocks_the_largest_wins() {
        let t = "Format:\n```json\n{\"id\": 0}\n```\nAnswer:\n```json\n{\"cells\": [{\"id\": 1}, {\"id\": 2}]}\n```";
        assert_eq!(ok(t)["cells"][1]["id"], 2);
        let t = "json\n{\"leaked\": \"lang tag\"}";
        assert_eq!(ok(t), json!({"leaked": "lang tag"}));
    }

    #[test]
    fn largest_bare_candidate_wins() {
        let t = "Example: {\"id\": 1}. Real: {\"cells\": [{\"id\": 1}, {\"id\": 2}], \"hypergraph\": {}} end";
        assert_eq!(ok(t)["cells"][1]["id"], 2);
    }

    #[test]
    fn generation_reply_in_the_wild() {
        let t = "<think>\nThe user wants cells. I'll write {\"cells\": ...}\n</think>\n\nHere is the notebook:\n\n\
                 ```json\n{\n  \"cells\": [\n    {\"id\": \"c1\", \"name\": \"load\", \"purpose\": \"load data\",\n     \
                 \"code\": \"import h5py\nwith h5py.File(STAGE1_H5_PATH) as f:\n    print(list(f.keys()))\"},\n    \
                 {\"id\": \"c2\", \"name\": \"fit\", \"purpose\": \"fit\", \"code\": \"d = {'a': [1, 2]}\\nprint(d)\"},\n  ],\n  \
                 \"hypergraph\": {\"hyperedges\": [{\"tail\": [\"c1\"], \"head\": \"c2\"}]}\n}\n```\n\nLet me know!";
        let v = ok(t);
        assert_eq!(v["cells"].as_array().unwrap().len(), 2);
        assert!(v["cells"][0]["code"].as_str().unwrap().contains("with h5py.File(STAGE1_H5_PATH) as f:\n    print"));
        assert_eq!(v["hypergraph"]["hyperedges"][0]["head"], "c2");
    }

    #[test]
    fn pathological_input_stays_linear() {
        let t = "{".repeat(200_000);
        let start = std::time::Instant::now();
        let _ = extract_json(&t);
        let t2 = format!("{}{}", "[a] {b ".repeat(50_000), "{\"ok\": 1}");
        let v = extract_json(&t2);
        // not a timing assertion: this guards against an accidental quadratic blow-up (minutes)
        assert!(start.elapsed().as_secs() < 30);
        assert_eq!(v.unwrap(), json!({"ok": 1}));
    }

    #[test]
    fn a_reply_nested_200k_deep_is_called_too_deep_not_absent() {
        let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
        let e = extract_json(&deep).unwrap_err();
        assert_eq!(e.kind, ExtractErrorKind::TooDeep, "{e}");
        assert!(e.message.contains("nested too deeply"), "{e}");
        let e = extract_json(&format!("Here it is:\n```json\n{{\"a\": {deep}}}\n```\nDone.")).unwrap_err();
        assert_eq!(e.kind, ExtractErrorKind::TooDeep, "{e}");
        let e = extract_json(&format!("Sure: {{'a': {deep}}} and [1, 2]")).unwrap_err();
        assert_eq!(e.kind, ExtractErrorKind::TooDeep, "a small value beside it is not the answer: {e}");
    }

    #[test]
    fn large_reply() {
        let code = "x = 1\n".repeat(50_000);
        let cells: Vec<Value> = (0..6).map(|i| json!({"id": format!("c{i}"), "code": code})).collect();
        let body = serde_json::to_string_pretty(&json!({"cells": cells})).unwrap();
        let t = format!("Sure.\n```json\n{body}\n```\n");
        assert!(t.len() > 2_000_000);
        assert_eq!(ok(&t)["cells"].as_array().unwrap().len(), 6);
    }
}
