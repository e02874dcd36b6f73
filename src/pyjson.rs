//! JSON as Python writes it: `NaN`, `Infinity` and `-Infinity` are accepted where a value may stand.
//!
//! `serde_json::Value` cannot hold non-finite numbers, so they are carried as marker strings
//! (`NAN`, `POS_INF`, `NEG_INF`) that no real document contains (they start with a NUL). `as_f64` and
//! the Lua conversion turn them back into floats. The scan is linear and leaves strings untouched.
//!
//! Nesting is limited to `MAX_DEPTH` levels (serde_json's recursion limit, which keeps a hostile
//! `[[[[…` from overflowing the stack); `is_too_deep` tells that failure apart from a syntax error, so
//! callers can say "nested too deeply" instead of "not JSON".

use serde_json::Value;

pub const NAN: &str = "\u{0}NaN";
pub const POS_INF: &str = "\u{0}Infinity";
pub const NEG_INF: &str = "\u{0}-Infinity";

/// The deepest nesting of arrays and objects that is read (serde_json's recursion limit).
pub const MAX_DEPTH: usize = 127;

/// Whether a parse failed only because the value is nested deeper than `MAX_DEPTH`.
pub fn is_too_deep(e: &serde_json::Error) -> bool {
    // serde_json has no public error code for this; its message has been the same since 1.0
    e.is_syntax() && e.to_string().starts_with("recursion limit exceeded")
}

/// Parse JSON that may contain Python's non-finite tokens outside strings.
pub fn parse(text: &str) -> Result<Value, serde_json::Error> {
    match protect_non_finite(text) {
        None => serde_json::from_str(text),
        Some(t) => serde_json::from_str(&t),
    }
}

/// Replace bare NaN / Infinity / -Infinity tokens by marker strings. None when there are none.
pub fn protect_non_finite(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut out: Option<String> = None;
    let mut last = 0;
    let mut i = 0;
    let mut in_str = false;
    while i < b.len() {
        let c = b[i];
        if in_str {
            match c {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        let tok: Option<(usize, &str)> = match c {
            b'"' => {
                in_str = true;
                None
            }
            b'N' if b[i..].starts_with(b"NaN") => Some((3, NAN)),
            b'I' if b[i..].starts_with(b"Infinity") => Some((8, POS_INF)),
            b'-' if b[i..].starts_with(b"-Infinity") => Some((9, NEG_INF)),
            _ => None,
        };
        if let Some((len, mark)) = tok {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len() + 32));
            o.push_str(&text[last..i]);
            o.push_str(&serde_json::to_string(mark).expect("marker serializes"));
            i += len;
            last = i;
            continue;
        }
        i += 1;
    }
    out.map(|mut o| {
        o.push_str(&text[last..]);
        o
    })
}

/// The float a JSON value stands for: numbers, the non-finite markers, and numeric strings
/// ("0.5", "nan", "inf") as sloppy writers produce them.
pub fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => non_finite(s).or_else(|| s.trim().parse::<f64>().ok()),
        Value::Bool(_) | Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// The float behind a marker string, if it is one.
pub fn non_finite(s: &str) -> Option<f64> {
    match s {
        NAN => Some(f64::NAN),
        POS_INF => Some(f64::INFINITY),
        NEG_INF => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// A JSON value for a float, using the markers for non-finite values.
pub fn from_f64(x: f64) -> Value {
    if x.is_nan() {
        Value::String(NAN.into())
    } else if x == f64::INFINITY {
        Value::String(POS_INF.into())
    } else if x == f64::NEG_INFINITY {
        Value::String(NEG_INF.into())
    } else {
        serde_json::Number::from_f64(x).map(Value::Number).unwrap_or(Value::Null)
    }
}

/// Serialize, writing the markers back as Python's bare tokens (so Python's json reads them).
pub fn to_string(v: &Value, pretty: bool) -> String {
    let s = if pretty { serde_json::to_string_pretty(v) } else { serde_json::to_string(v) }
        .expect("a Value always serializes");
    if !s.contains("\\u0000") {
        return s;
    }
    s.replace("\"\\u0000NaN\"", "NaN")
        .replace("\"\\u0000Infinity\"", "Infinity")
        .replace("\"\\u0000-Infinity\"", "-Infinity")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_tokens_become_floats_and_strings_stay() {
        let v = parse(r#"{"a": NaN, "b": [Infinity, -Infinity, 1.5], "s": "NaN Infinity"}"#).unwrap();
        assert!(as_f64(&v["a"]).unwrap().is_nan());
        assert_eq!(as_f64(&v["b"][0]), Some(f64::INFINITY));
        assert_eq!(as_f64(&v["b"][1]), Some(f64::NEG_INFINITY));
        assert_eq!(v["s"], "NaN Infinity");
        assert_eq!(to_string(&v, false), r#"{"a":NaN,"b":[Infinity,-Infinity,1.5],"s":"NaN Infinity"}"#);
    }

    #[test]
    fn nesting_past_the_limit_is_told_apart_from_bad_syntax() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(is_too_deep(&parse(&deep).unwrap_err()));
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
        assert!(!is_too_deep(&parse("[1,").unwrap_err()));
    }

    #[test]
    fn escaped_quote_inside_string_does_not_end_it() {
        let v = parse(r#"{"a": "x\"NaN", "b": NaN}"#).unwrap();
        assert_eq!(v["a"], "x\"NaN");
        assert!(as_f64(&v["b"]).unwrap().is_nan());
    }
}
