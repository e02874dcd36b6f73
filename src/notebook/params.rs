//! Notebook parameters as papermill has them: values typed from the command line (`-p`, `-r`) or read
//! from YAML (`-y`, `-f`), written as a Python cell tagged `injected-parameters` after the cell tagged
//! `parameters`, and recorded in `metadata.papermill.parameters`.
//!
//! Everything here follows papermill 2.x's own code so that the same notebook and parameters give the
//! same injected cell: `cli._resolve_type` for `-p`, PyYAML's `SafeLoader` without timestamps for YAML
//! (YAML 1.1: `yes`/`on` are booleans, `1e5` is a string, `0x1F` and `017` are ints), the Python
//! translator's `# Parameters` header and `name = value` lines (strings escaped with `unicode_escape`),
//! and `parameterize_notebook`'s placement rules. Black is not applied (papermill applies it only when
//! black is installed).

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::Notebook;

/// The tag of the cell whose defaults the injected cell overrides.
pub const PARAMETERS_TAG: &str = "parameters";
/// The tag of the injected cell.
pub const INJECTED_TAG: &str = "injected-parameters";

/// A parameter value: what PyYAML or papermill's CLI typing produces.
#[derive(Debug, Clone, PartialEq)]
pub enum PVal {
    None,
    Bool(bool),
    /// An int of any size, in decimal (`-` then digits, no leading zeros).
    Int(String),
    Float(f64),
    Str(String),
    List(Vec<PVal>),
    /// A dict in insertion order.
    Dict(Vec<(PVal, PVal)>),
}

impl PVal {
    fn int(n: i128) -> PVal {
        PVal::Int(n.to_string())
    }

    fn type_name(&self) -> &'static str {
        match self {
            PVal::None => "null",
            PVal::Bool(_) => "a boolean",
            PVal::Int(_) => "an int",
            PVal::Float(_) => "a float",
            PVal::Str(_) => "a string",
            PVal::List(_) => "a list",
            PVal::Dict(_) => "a mapping",
        }
    }

    /// Python's `str()` of a scalar (what papermill writes for a dict key that is not a string).
    fn py_str(&self) -> String {
        match self {
            PVal::None => "None".into(),
            PVal::Bool(b) => if *b { "True" } else { "False" }.into(),
            PVal::Int(s) => s.clone(),
            PVal::Float(f) => py_float_str(*f),
            PVal::Str(s) => s.clone(),
            PVal::List(_) | PVal::Dict(_) => self.to_python(),
        }
    }

    /// The value as papermill's PythonTranslator writes it.
    pub fn to_python(&self) -> String {
        match self {
            PVal::None => "None".into(),
            PVal::Bool(b) => if *b { "True" } else { "False" }.into(),
            PVal::Int(s) => s.clone(),
            PVal::Float(f) => {
                if f.is_finite() {
                    super::py_float(*f)
                } else if f.is_nan() {
                    "float('nan')".into()
                } else if *f < 0.0 {
                    "float('-inf')".into()
                } else {
                    "float('inf')".into()
                }
            }
            PVal::Str(s) => escaped_str(s),
            PVal::List(a) => format!("[{}]", a.iter().map(PVal::to_python).collect::<Vec<_>>().join(", ")),
            PVal::Dict(d) => format!(
                "{{{}}}",
                d.iter()
                    .map(|(k, v)| {
                        let k = match k {
                            PVal::Str(s) => escaped_str(s),
                            // translate_escaped_str of a non-string: `"{val}"`, unescaped
                            other => format!("\"{}\"", other.py_str()),
                        };
                        format!("{k}: {}", v.to_python())
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// The value as JSON for `metadata.papermill.parameters` (as nbformat writes it; a float that is
    /// not finite is written as the string `NaN`, `Infinity` or `-Infinity`, and an int past 64 bits as
    /// its digits, since strict JSON has neither).
    pub fn to_json(&self) -> Value {
        match self {
            PVal::None => Value::Null,
            PVal::Bool(b) => json!(b),
            PVal::Int(s) => s
                .parse::<i64>()
                .map(Value::from)
                .or_else(|_| s.parse::<u64>().map(Value::from))
                .unwrap_or_else(|_| Value::String(s.clone())),
            PVal::Float(f) => crate::pyjson::from_f64(*f),
            PVal::Str(s) => json!(s),
            PVal::List(a) => Value::Array(a.iter().map(PVal::to_json).collect()),
            PVal::Dict(d) => {
                // nbformat writes JSON with sorted keys
                let mut pairs: Vec<(String, Value)> = Vec::new();
                for (k, v) in d {
                    // json.dumps' key conversion
                    let k = match k {
                        PVal::Str(s) => s.clone(),
                        PVal::Bool(b) => b.to_string(),
                        PVal::None => "null".into(),
                        other => other.py_str(),
                    };
                    match pairs.iter_mut().find(|(x, _)| *x == k) {
                        Some(slot) => slot.1 = v.to_json(),
                        None => pairs.push((k, v.to_json())),
                    }
                }
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(pairs.into_iter().collect())
            }
        }
    }
}

/// Python's `str(float)`, `inf`/`nan` included.
fn py_float_str(f: f64) -> String {
    if f.is_nan() {
        "nan".into()
    } else if f.is_infinite() {
        if f < 0.0 { "-inf" } else { "inf" }.into()
    } else {
        super::py_float(f)
    }
}

/// papermill's `translate_escaped_str`: `s.encode('unicode_escape').decode('utf-8')` with `"` escaped,
/// in double quotes.
pub fn escaped_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        let n = c as u32;
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '"' => out.push_str("\\\""),
            _ if n >= 0x10000 => out.push_str(&format!("\\U{n:08x}")),
            _ if n >= 0x100 => out.push_str(&format!("\\u{n:04x}")),
            _ if !(0x20..0x7f).contains(&n) => out.push_str(&format!("\\x{n:02x}")),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Parameters in the order papermill applies them (a later value of a name replaces an earlier one and
/// keeps its place, as a Python dict's update does).
#[derive(Debug, Clone, Default)]
pub struct Params(pub Vec<(String, PVal)>);

impl Params {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Set `name`; `whence` names the option, for errors.
    pub fn set(&mut self, name: &str, v: PVal, whence: &str) -> Result<()> {
        check_name(name, whence)?;
        match self.0.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = v,
            None => self.0.push((name.to_string(), v)),
        }
        Ok(())
    }

    /// Add every entry of a YAML mapping (from `-y` or `-f`); `whence` names it for errors.
    pub fn update_from_yaml(&mut self, text: &str, whence: &str) -> Result<()> {
        match load_yaml(text).with_context(|| format!("{whence}: not valid YAML"))? {
            PVal::None => Ok(()),
            PVal::Dict(d) => {
                for (k, v) in d {
                    match k {
                        PVal::Str(k) => self.set(&k, v, whence)?,
                        other => bail!(
                            "{whence}: parameter names must be strings, got {} ({})",
                            other.type_name(),
                            other.py_str()
                        ),
                    }
                }
                Ok(())
            }
            other => bail!("{whence}: expected a mapping of parameter names to values, got {}", other.type_name()),
        }
    }

    /// The injected cell's source, as papermill's Python translator writes it.
    pub fn python_source(&self) -> String {
        let mut s = String::from("# Parameters\n");
        for (k, v) in &self.0 {
            s.push_str(&format!("{k} = {}\n", v.to_python()));
        }
        s
    }

    /// The parameters as JSON (for `metadata.papermill.parameters`), keys sorted as nbformat writes them.
    pub fn to_json(&self) -> Value {
        let mut pairs: Vec<(String, Value)> = self.0.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        Value::Object(pairs.into_iter().collect())
    }
}

const PY_KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del",
    "elif", "else", "except", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda", "nonlocal",
    "not", "or", "pass", "raise", "return", "try", "while", "with", "yield",
];

/// A parameter becomes `name = value`: the name must be a Python identifier.
fn check_name(name: &str, whence: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
        && !PY_KEYWORDS.contains(&name);
    if !ok {
        bail!("{whence}: parameter name {name:?} is not a Python identifier (it would be assigned as `{name} = ...`)");
    }
    Ok(())
}

/// papermill's `_resolve_type` for `-p NAME VALUE`: `True`, `False`, `None`, then what Python's
/// `int()` accepts, then what `float()` accepts, else the string itself.
pub fn resolve_cli_type(s: &str) -> PVal {
    match s {
        "True" => return PVal::Bool(true),
        "False" => return PVal::Bool(false),
        "None" => return PVal::None,
        _ => {}
    }
    if let Some(i) = py_int(s) {
        return PVal::Int(i);
    }
    if let Some(f) = py_float_parse(s) {
        return PVal::Float(f);
    }
    PVal::Str(s.to_string())
}

/// Python's whitespace for `int()`/`float()` (str.isspace: Unicode whitespace and \x1c-\x1f).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Digits with single underscores between them (Python's numeric literal rule for `int()`/`float()`),
/// without the underscores; None when an underscore is misplaced.
fn strip_underscores(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    for (i, &c) in b.iter().enumerate() {
        if c == b'_' {
            let before = i > 0 && b[i - 1].is_ascii_digit();
            let after = b.get(i + 1).is_some_and(u8::is_ascii_digit);
            if !(before && after) {
                return None;
            }
        } else {
            out.push(c as char);
        }
    }
    Some(out)
}

/// Python's `int(s)` (base 10) as normalized decimal digits.
fn py_int(s: &str) -> Option<String> {
    let t = s.trim_matches(py_space);
    let (neg, digits) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit() || c == b'_') {
        return None;
    }
    let d = strip_underscores(digits)?;
    let d = d.trim_start_matches('0');
    Some(match (d.is_empty(), neg) {
        (true, _) => "0".into(),
        (false, true) => format!("-{d}"),
        (false, false) => d.to_string(),
    })
}

/// Python's `float(s)`.
fn py_float_parse(s: &str) -> Option<f64> {
    let t = s.trim_matches(py_space);
    let body = t.strip_prefix(['-', '+']).unwrap_or(t);
    let lower = body.to_ascii_lowercase();
    if matches!(lower.as_str(), "inf" | "infinity" | "nan") {
        let v = if lower == "nan" { f64::NAN } else { f64::INFINITY };
        return Some(if t.starts_with('-') { -v } else { v });
    }
    if !body.bytes().all(|c| c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'e' | b'E' | b'+' | b'-')) {
        return None;
    }
    let clean = strip_underscores(t)?;
    clean.parse::<f64>().ok()
}

// ---- YAML, as PyYAML's SafeLoader (minus timestamps) reads it ----

/// Parse one YAML document into a value, resolving plain scalars as PyYAML 6's SafeLoader does (YAML
/// 1.1) with papermill's NoDatesSafeLoader change (dates stay strings). An empty document is None.
pub fn load_yaml(text: &str) -> Result<PVal> {
    // serde_yaml_ng gives a precise message (line and column) for malformed input; the events below
    // are read only once it has parsed.
    let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(text)
        .map(serde::Deserialize::deserialize)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if docs.len() > 1 {
        bail!("expected a single YAML document, found {}", docs.len());
    }
    let events = events::parse(text.as_bytes())?;
    let mut b = Builder { events: events.into_iter().peekable(), anchors: Default::default() };
    b.document()
}

mod events {
    //! The event stream of libyaml (the C parser PyYAML's own CLoader wraps; here its Rust port, the
    //! one serde_yaml_ng uses), with each scalar's style and tag.

    use anyhow::{bail, Result};
    use std::mem::MaybeUninit;
    use unsafe_libyaml as unsafe_yaml;

    #[derive(Debug)]
    pub enum Event {
        Scalar { anchor: Option<String>, tag: Option<String>, value: String, plain: bool },
        SeqStart { anchor: Option<String>, tag: Option<String> },
        SeqEnd,
        MapStart { anchor: Option<String>, tag: Option<String> },
        MapEnd,
        Alias(String),
        Other,
    }

    unsafe fn cstr(p: *const u8) -> Option<String> {
        if p.is_null() {
            return None;
        }
        // SAFETY: libyaml's anchors and tags are NUL-terminated strings it owns until the event is deleted.
        let s = unsafe { std::ffi::CStr::from_ptr(p as *const std::ffi::c_char) };
        Some(s.to_string_lossy().into_owned())
    }

    pub fn parse(input: &[u8]) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        // The parser refers to itself: it lives in one heap place, never moved, until deleted.
        let mut parser: Box<MaybeUninit<unsafe_yaml::yaml_parser_t>> = Box::new(MaybeUninit::uninit());
        let p = parser.as_mut_ptr();
        // SAFETY: the standard libyaml sequence on a parser we own; `input` outlives the parser, every
        // event is deleted after its data is copied, and the parser is deleted on every path.
        unsafe {
            if unsafe_yaml::yaml_parser_initialize(p).fail {
                bail!("cannot start the YAML parser");
            }
            unsafe_yaml::yaml_parser_set_encoding(p, unsafe_yaml::YAML_UTF8_ENCODING);
            unsafe_yaml::yaml_parser_set_input_string(p, input.as_ptr(), input.len() as u64);
            let result = loop {
                let mut ev = MaybeUninit::<unsafe_yaml::yaml_event_t>::uninit();
                if unsafe_yaml::yaml_parser_parse(p, ev.as_mut_ptr()).fail {
                    break Err(anyhow::anyhow!("the YAML parser failed"));
                }
                let e = &*ev.as_ptr();
                let done = e.type_ == unsafe_yaml::YAML_STREAM_END_EVENT;
                let conv = match e.type_ {
                    unsafe_yaml::YAML_SCALAR_EVENT => {
                        let s = e.data.scalar;
                        let bytes = std::slice::from_raw_parts(s.value, s.length as usize);
                        Event::Scalar {
                            anchor: cstr(s.anchor),
                            tag: cstr(s.tag),
                            value: String::from_utf8_lossy(bytes).into_owned(),
                            plain: s.style == unsafe_yaml::YAML_PLAIN_SCALAR_STYLE,
                        }
                    }
                    unsafe_yaml::YAML_SEQUENCE_START_EVENT => Event::SeqStart {
                        anchor: cstr(e.data.sequence_start.anchor),
                        tag: cstr(e.data.sequence_start.tag),
                    },
                    unsafe_yaml::YAML_SEQUENCE_END_EVENT => Event::SeqEnd,
                    unsafe_yaml::YAML_MAPPING_START_EVENT => Event::MapStart {
                        anchor: cstr(e.data.mapping_start.anchor),
                        tag: cstr(e.data.mapping_start.tag),
                    },
                    unsafe_yaml::YAML_MAPPING_END_EVENT => Event::MapEnd,
                    unsafe_yaml::YAML_ALIAS_EVENT => Event::Alias(cstr(e.data.alias.anchor).unwrap_or_default()),
                    _ => Event::Other,
                };
                unsafe_yaml::yaml_event_delete(ev.as_mut_ptr());
                if !matches!(conv, Event::Other) {
                    out.push(conv);
                }
                if done {
                    break Ok(());
                }
            };
            unsafe_yaml::yaml_parser_delete(p);
            result?;
        }
        Ok(out)
    }
}

use events::Event;

struct Builder {
    events: std::iter::Peekable<std::vec::IntoIter<Event>>,
    anchors: std::collections::HashMap<String, PVal>,
}

const TAG: &str = "tag:yaml.org,2002:";

impl Builder {
    fn document(&mut self) -> Result<PVal> {
        if self.events.peek().is_none() {
            return Ok(PVal::None);
        }
        self.node()
    }

    fn node(&mut self) -> Result<PVal> {
        let Some(ev) = self.events.next() else { bail!("unexpected end of YAML") };
        let (anchor, v) = match ev {
            Event::Alias(a) => {
                return self.anchors.get(&a).cloned().with_context(|| format!("found undefined alias {a:?}"))
            }
            Event::Scalar { anchor, tag, value, plain } => (anchor, scalar(&value, tag.as_deref(), plain)?),
            Event::SeqStart { anchor, tag } => {
                check_tag(tag.as_deref(), "seq")?;
                let mut items = Vec::new();
                while !matches!(self.events.peek(), Some(Event::SeqEnd) | None) {
                    items.push(self.node()?);
                }
                self.events.next();
                (anchor, PVal::List(items))
            }
            Event::MapStart { anchor, tag } => {
                check_tag(tag.as_deref(), "map")?;
                let mut own: Vec<(PVal, PVal)> = Vec::new();
                let mut merged: Vec<(PVal, PVal)> = Vec::new();
                while !matches!(self.events.peek(), Some(Event::MapEnd) | None) {
                    let is_merge = matches!(self.events.peek(), Some(Event::Scalar { value, plain: true, tag: None, .. }) if value == "<<");
                    let k = self.node()?;
                    let v = self.node()?;
                    if is_merge {
                        // SafeConstructor.flatten_mapping: merged entries come first, and of a list of
                        // mappings the earlier ones win
                        match v {
                            PVal::Dict(d) => merged.extend(d),
                            PVal::List(l) => {
                                let mut parts = Vec::new();
                                for m in l {
                                    match m {
                                        PVal::Dict(d) => parts.push(d),
                                        other => {
                                            bail!("expected a mapping for merging, but found {}", other.type_name())
                                        }
                                    }
                                }
                                for d in parts.into_iter().rev() {
                                    merged.extend(d);
                                }
                            }
                            other => bail!(
                                "expected a mapping or list of mappings for merging, but found {}",
                                other.type_name()
                            ),
                        }
                        continue;
                    }
                    if matches!(k, PVal::List(_) | PVal::Dict(_)) {
                        bail!("found unhashable key ({})", k.type_name());
                    }
                    own.push((k, v));
                }
                self.events.next();
                let mut d: Vec<(PVal, PVal)> = Vec::new();
                for (k, v) in merged.into_iter().chain(own) {
                    match d.iter_mut().find(|(x, _)| *x == k) {
                        Some(slot) => slot.1 = v,
                        None => d.push((k, v)),
                    }
                }
                (anchor, PVal::Dict(d))
            }
            other => bail!("unexpected YAML event {other:?}"),
        };
        if let Some(a) = anchor {
            self.anchors.insert(a, v.clone());
        }
        Ok(v)
    }
}

fn check_tag(tag: Option<&str>, kind: &str) -> Result<()> {
    match tag {
        None | Some("!") => Ok(()),
        Some(t) if t.strip_prefix(TAG) == Some(kind) => Ok(()),
        Some(t) => bail!("the YAML tag {t} is not supported in parameters"),
    }
}

/// A scalar: resolved by PyYAML's implicit resolvers when plain and untagged, else by its tag.
fn scalar(value: &str, tag: Option<&str>, plain: bool) -> Result<PVal> {
    let kind = match tag {
        Some(t) if t != "!" => match t.strip_prefix(TAG) {
            Some(k @ ("str" | "int" | "float" | "bool" | "null")) => k,
            _ => bail!("the YAML tag {t} is not supported in parameters (value {value:?})"),
        },
        Some(_) => "str",
        None if !plain => "str",
        None => resolve_plain(value),
    };
    Ok(match kind {
        "null" => PVal::None,
        "bool" => match value.to_ascii_lowercase().as_str() {
            "yes" | "true" | "on" => PVal::Bool(true),
            "no" | "false" | "off" => PVal::Bool(false),
            _ => bail!("{value:?} is not a YAML boolean"),
        },
        "int" => yaml_int(value).with_context(|| format!("{value:?} is not a YAML int"))?,
        "float" => PVal::Float(yaml_float(value).with_context(|| format!("{value:?} is not a YAML float"))?),
        _ => PVal::Str(value.to_string()),
    })
}

fn re(p: &str) -> regex::Regex {
    regex::Regex::new(p).expect("valid regex")
}

/// PyYAML's implicit resolvers (resolver.py), timestamps left out as papermill's loader does.
fn resolve_plain(v: &str) -> &'static str {
    use std::sync::OnceLock;
    static R: OnceLock<[regex::Regex; 4]> = OnceLock::new();
    let [b, f, i, n] = R.get_or_init(|| {
        [
            re(r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$"),
            re(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
            re(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$"),
            re(r"^(?:~|null|Null|NULL|)$"),
        ]
    });
    // PyYAML tries the resolvers registered for the first character in the order added: bool, float,
    // int, null (each regex is anchored, so order only matters where two match: none do).
    if b.is_match(v) {
        "bool"
    } else if f.is_match(v) {
        "float"
    } else if i.is_match(v) {
        "int"
    } else if n.is_match(v) {
        "null"
    } else {
        "str"
    }
}

/// SafeConstructor.construct_yaml_int.
fn yaml_int(v: &str) -> Option<PVal> {
    let v = v.replace('_', "");
    let (neg, body) = match v.as_bytes().first()? {
        b'-' => (true, &v[1..]),
        b'+' => (false, &v[1..]),
        _ => (false, v.as_str()),
    };
    let sign = |s: String| if neg && s != "0" { format!("-{s}") } else { s };
    let radix = |digits: &str, r: u32| -> Option<PVal> {
        let n = u128::from_str_radix(digits, r).ok()?;
        Some(PVal::Int(sign(n.to_string())))
    };
    if body == "0" {
        return Some(PVal::int(0));
    }
    if let Some(d) = body.strip_prefix("0b") {
        return radix(d, 2);
    }
    if let Some(d) = body.strip_prefix("0x") {
        return radix(d, 16);
    }
    if body.starts_with('0') {
        return radix(body, 8);
    }
    if body.contains(':') {
        let mut n: u128 = 0;
        for part in body.split(':') {
            n = n.checked_mul(60)?.checked_add(part.parse::<u128>().ok()?)?;
        }
        return Some(PVal::Int(sign(n.to_string())));
    }
    if body.is_empty() || !body.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(PVal::Int(sign(body.trim_start_matches('0').to_string())))
}

/// SafeConstructor.construct_yaml_float.
fn yaml_float(v: &str) -> Option<f64> {
    let v = v.replace('_', "").to_lowercase();
    let (sign, body) = match v.as_bytes().first()? {
        b'-' => (-1.0, &v[1..]),
        b'+' => (1.0, &v[1..]),
        _ => (1.0, v.as_str()),
    };
    if body == ".inf" {
        return Some(sign * f64::INFINITY);
    }
    if body == ".nan" {
        return Some(f64::NAN);
    }
    if body.contains(':') {
        let mut x = 0.0;
        for part in body.split(':') {
            x = x * 60.0 + part.parse::<f64>().ok()?;
        }
        return Some(sign * x);
    }
    Some(sign * body.parse::<f64>().ok()?)
}

/// Where the injected cell went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// It replaced an earlier injected cell (0-based index).
    Replaced(usize),
    /// It follows the cell tagged `parameters`.
    AfterParameters(usize),
    /// There is no `parameters` cell: it is the first cell.
    First,
}

impl Placement {
    /// The 0-based index of the injected cell.
    pub fn index(self) -> usize {
        match self {
            Placement::Replaced(i) => i,
            Placement::AfterParameters(i) => i + 1,
            Placement::First => 0,
        }
    }
}

/// Inject `params` into `nb` as papermill's `parameterize_notebook` does, and record them in
/// `metadata.papermill.parameters`.
pub fn inject(nb: &mut Notebook, params: &Params) -> Result<Placement> {
    let first_tagged = |nb: &Notebook, tag: &str| (0..nb.len()).find(|&i| nb.has_tag(i, tag));
    let place = if let Some(i) = first_tagged(nb, INJECTED_TAG) {
        nb.remove(i)?;
        Placement::Replaced(i)
    } else if let Some(i) = first_tagged(nb, PARAMETERS_TAG) {
        Placement::AfterParameters(i)
    } else {
        Placement::First
    };
    let cell = json!({"cell_type": "code", "metadata": {"tags": [INJECTED_TAG]}, "source": params.python_source()});
    nb.insert(place.index(), cell)?;
    let mut md = nb.metadata().clone();
    let m = md.as_object_mut().expect("metadata is an object");
    if !m.get("papermill").is_some_and(Value::is_object) {
        super::insert_sorted(m, "papermill", json!({}));
    }
    let pm = m.get_mut("papermill").and_then(Value::as_object_mut).expect("object");
    super::insert_sorted(pm, "parameters", params.to_json());
    nb.set_metadata(md)?;
    Ok(place)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_values_are_typed_as_papermill_types_them() {
        let py = |s: &str| resolve_cli_type(s).to_python();
        assert_eq!(py("True"), "True");
        assert_eq!(py("true"), "\"true\"");
        assert_eq!(py("None"), "None");
        assert_eq!(py("007"), "7");
        assert_eq!(py(" -1_000 "), "-1000");
        assert_eq!(py("123456789012345678901234567890"), "123456789012345678901234567890");
        assert_eq!(py("1e3"), "1000.0");
        assert_eq!(py("1_0.5"), "10.5");
        assert_eq!(py("1__0"), "\"1__0\"");
        assert_eq!(py("-inf"), "float('-inf')");
        assert_eq!(py("NaN"), "float('nan')");
        assert_eq!(py("1e400"), "float('inf')");
        assert_eq!(py("0x10"), "\"0x10\"");
        assert_eq!(py("1e-5"), "1e-05");
        assert_eq!(py("it's \"q\" \\ é 😀\t"), r#""it's \"q\" \\ \xe9 \U0001f600\t""#);
    }

    #[test]
    fn yaml_is_read_as_pyyaml_reads_it() {
        let v =
            load_yaml("{a: yes, b: 1e5, c: 1.0e+3, d: 0x1F, e: 017, f: 1:30, g: '5', h: ~, i: 2020-01-01, j: .inf}")
                .unwrap();
        assert_eq!(
            v.to_python(),
            r#"{"a": True, "b": "1e5", "c": 1000.0, "d": 31, "e": 15, "f": 90, "g": "5", "h": None, "i": "2020-01-01", "j": float('inf')}"#
        );
        let v = load_yaml("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 3\n").unwrap();
        assert_eq!(v.to_python(), r#"{"base": {"x": 1, "y": 2}, "d": {"x": 1, "y": 3}}"#);
        assert!(load_yaml("a: [1, 2").is_err());
        assert_eq!(load_yaml("").unwrap(), PVal::None);
    }
}
