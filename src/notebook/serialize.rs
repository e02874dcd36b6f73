//! The serializer: notebook JSON written byte for byte as Jupyter writes it (Python's
//! `json.dumps(indent=1, ensure_ascii=False)`: one-space indent, sorted keys where Jupyter sorts them,
//! multi-line strings as line lists, floats as Python prints them), streamed piece by piece so a large
//! output is never held twice.

use std::io::Write;

use serde_json::{Map, Value};

use super::*;

/// JSON as Python's `json.dumps(indent=1, ensure_ascii=False)` writes it, with every line after the
/// first indented by `level` more spaces (for its place inside the document).
pub fn pretty(v: &Value, level: usize) -> String {
    pretty_with(v, v, level)
}

pub(super) fn pretty_with<T: serde::Serialize + ?Sized>(x: &T, v: &Value, level: usize) -> String {
    // Sized up front: growing a 20 MB buffer by doubling would hold ~1.5 copies of it at once.
    let mut buf = Vec::with_capacity(estimate(v, level + 1) + 64);
    write_pretty(x, level, &mut buf).expect("writing to memory cannot fail");
    String::from_utf8(buf).expect("serde_json writes UTF-8")
}

/// Serialize `x` as `pretty` does, into `out`, indenting while serializing (no second copy).
pub(super) fn write_pretty<T: serde::Serialize + ?Sized>(
    x: &T,
    level: usize,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let pad = vec![b' '; level];
    let w = Indent { out, pad: &pad };
    let fmt = PyFormatter(serde_json::ser::PrettyFormatter::with_indent(b" "));
    let mut ser = serde_json::Serializer::with_formatter(w, fmt);
    serde::Serialize::serialize(x, &mut ser).map_err(std::io::Error::other)
}

// Outputs are held with their text joined (one string, not one JSON value per line: 400k printed
// lines would otherwise cost ~30 MB of small allocations) and split into line lists, as Jupyter
// writes them, only while serializing. Values that are already lists are written as they are.

/// A cell, serialized with its source and output text split into lines.
pub(super) struct CellSer<'a>(pub(super) &'a Value);
pub(super) struct OutputsSer<'a>(&'a [Value]);
pub(super) struct OutputSer<'a>(&'a Value);
pub(super) struct DataSer<'a>(&'a Map<String, Value>);
/// A string as a list of its lines (`str.splitlines(True)`), without copying it.
pub(super) struct Lines<'a>(&'a str);

impl serde::Serialize for Lines<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(line_slices(self.0))
    }
}

/// Python's `str.splitlines(True)` for \n, \r\n and \r, as slices.
pub(super) fn line_slices(s: &str) -> impl Iterator<Item = &str> {
    let b = s.as_bytes();
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= b.len() {
            return None;
        }
        let mut i = start;
        while i < b.len() {
            match b[i] {
                b'\n' => break,
                b'\r' => {
                    if i + 1 < b.len() && b[i + 1] == b'\n' {
                        i += 1;
                    }
                    break;
                }
                _ => i += 1,
            }
        }
        let end = (i + 1).min(b.len());
        let line = &s[start..end];
        start = end;
        Some(line)
    })
}

impl serde::Serialize for CellSer<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Some(m) = self.0.as_object() else { return self.0.serialize(s) };
        let mut map = s.serialize_map(Some(m.len()))?;
        for (k, v) in m {
            match (k.as_str(), v) {
                ("source", Value::String(t)) => map.serialize_entry(k, &Lines(t))?,
                ("outputs", Value::Array(a)) => map.serialize_entry(k, &OutputsSer(a))?,
                _ => map.serialize_entry(k, v)?,
            }
        }
        map.end()
    }
}

impl serde::Serialize for OutputsSer<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(OutputSer))
    }
}

impl serde::Serialize for OutputSer<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Some(m) = self.0.as_object() else { return self.0.serialize(s) };
        let stream = m.get("output_type").and_then(Value::as_str) == Some("stream");
        let mut map = s.serialize_map(Some(m.len()))?;
        for (k, v) in m {
            match (k.as_str(), v) {
                ("text", Value::String(t)) if stream => map.serialize_entry(k, &Lines(t))?,
                ("data", Value::Object(d)) => map.serialize_entry(k, &DataSer(d))?,
                _ => map.serialize_entry(k, v)?,
            }
        }
        map.end()
    }
}

impl serde::Serialize for DataSer<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            match v {
                Value::String(t) if splits_mime(k) => map.serialize_entry(k, &Lines(t))?,
                _ => map.serialize_entry(k, v)?,
            }
        }
        map.end()
    }
}

/// A close upper estimate of the pretty-printed size of `v` at indent `depth`.
pub(super) fn estimate(v: &Value, depth: usize) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 24,
        Value::String(s) => s.len() + s.len() / 16 + 2,
        Value::Array(a) => 4 + depth + a.iter().map(|x| estimate(x, depth + 1) + depth + 3).sum::<usize>(),
        Value::Object(m) => {
            4 + depth + m.iter().map(|(k, x)| k.len() + 6 + depth + estimate(x, depth + 1)).sum::<usize>()
        }
    }
}

/// A writer that adds `pad` after every newline. JSON strings never hold a raw newline (it is
/// escaped), so every '\n' starts a new line of JSON.
pub(super) struct Indent<'a> {
    out: &'a mut dyn Write,
    pad: &'a [u8],
}

impl Write for Indent<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.pad.is_empty() {
            self.out.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut rest = buf;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            self.out.write_all(&rest[..=i])?;
            self.out.write_all(self.pad)?;
            rest = &rest[i + 1..];
        }
        self.out.write_all(rest)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// `repr(float)` as Python writes it: fixed notation for exponents -4..16 (with a `.0` on whole
/// numbers), otherwise `1e-05` / `1.5e+16`; the digits are the shortest that round-trip in both.
pub fn py_float(x: f64) -> String {
    if !x.is_finite() {
        return crate::pyjson::from_f64(x).to_string();
    }
    let sci = format!("{x:e}");
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let e: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&e) {
        let s = format!("{x}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        format!("{mant}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
    }
}

/// serde_json's pretty printer with Python's float spelling.
pub(super) struct PyFormatter<'a>(serde_json::ser::PrettyFormatter<'a>);

macro_rules! delegate {
    ($($name:ident($($arg:ident: $t:ty),*);)*) => {$(
        fn $name<W: ?Sized + Write>(&mut self, w: &mut W $(, $arg: $t)*) -> std::io::Result<()> {
            self.0.$name(w $(, $arg)*)
        }
    )*};
}

impl serde_json::ser::Formatter for PyFormatter<'_> {
    fn write_f64<W: ?Sized + Write>(&mut self, w: &mut W, value: f64) -> std::io::Result<()> {
        w.write_all(py_float(value).as_bytes())
    }
    delegate! {
        begin_array();
        end_array();
        begin_array_value(first: bool);
        end_array_value();
        begin_object();
        end_object();
        begin_object_key(first: bool);
        begin_object_value();
        end_object_value();
    }
}
