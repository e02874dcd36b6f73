//! What goes into and comes out of one chat exchange: the request, the reply and its usage, the
//! classified failure (`Kind`, which scripts branch on as `err.kind`), and the text helpers that keep
//! what is echoed or shown short (`head`, `clip`).

use serde::Serialize;
use serde_json::{json, Value};

/// Why an attempt failed. Scripts branch on `err.kind` (these names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// HTTP 429 (Retry-After, when sent, is in `Failure::retry_after`).
    RateLimited,
    /// HTTP 5xx, or an error object in place of a reply.
    Server,
    /// No response (or no streamed data) within the timeout.
    Timeout,
    /// The connection could not be made.
    Connect,
    /// The connection was closed or reset before the reply was complete.
    Reset,
    /// A reply that is not an OpenAI completion (not JSON, an HTML page, no choices).
    BadBody,
    /// A completion with no content.
    Empty,
    /// A completion cut off by max_tokens (finish_reason "length").
    Truncated,
    /// Another 4xx: the request itself is wrong (bad model name, bad key...). Never retried.
    Client,
    /// The provider's content filter refused the prompt (Azure's 400 `content_filter`) or cut the reply
    /// (`finish_reason: "content_filter"`): the same request would be refused again.
    ContentFilter,
    /// A configured budget (max_total_tokens, max_calls) is used up.
    Budget,
    /// Replaying a cassette that holds no exchange for this request.
    ReplayMiss,
    /// Ctrl-C / SIGTERM.
    Interrupted,
    /// Missing key, unusable base_url, unreadable cassette.
    Config,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::RateLimited => "rate_limited",
            Kind::Server => "server",
            Kind::Timeout => "timeout",
            Kind::Connect => "connect",
            Kind::Reset => "reset",
            Kind::BadBody => "bad_body",
            Kind::Empty => "empty",
            Kind::Truncated => "truncated",
            Kind::Client => "client",
            Kind::ContentFilter => "content_filter",
            Kind::Budget => "budget",
            Kind::ReplayMiss => "replay_miss",
            Kind::Interrupted => "interrupted",
            Kind::Config => "config",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "rate_limited" => Kind::RateLimited,
            "server" => Kind::Server,
            "timeout" => Kind::Timeout,
            "connect" => Kind::Connect,
            "reset" => Kind::Reset,
            "bad_body" => Kind::BadBody,
            "empty" => Kind::Empty,
            "truncated" => Kind::Truncated,
            "client" => Kind::Client,
            "content_filter" => Kind::ContentFilter,
            "budget" => Kind::Budget,
            "replay_miss" => Kind::ReplayMiss,
            "interrupted" => Kind::Interrupted,
            "config" => Kind::Config,
            _ => return None,
        })
    }
}

/// Token counts as the API reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Of the completion tokens, those spent thinking (`completion_tokens_details.reasoning_tokens`),
    /// when the endpoint says.
    pub reasoning_tokens: u64,
}

impl Usage {
    pub fn from_json(v: &Value) -> Option<Usage> {
        let o = v.as_object()?;
        let g = |k: &str| o.get(k).and_then(Value::as_u64).unwrap_or(0);
        let (p, c) = (g("prompt_tokens"), g("completion_tokens"));
        let t = o.get("total_tokens").and_then(Value::as_u64).unwrap_or(p + c);
        let r = v.pointer("/completion_tokens_details/reasoning_tokens").and_then(Value::as_u64).unwrap_or(0);
        Some(Usage { prompt_tokens: p, completion_tokens: c, total_tokens: t, reasoning_tokens: r })
    }

    pub fn to_json(self) -> Value {
        let mut v = json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
               "total_tokens": self.total_tokens});
        if self.reasoning_tokens > 0 {
            // in the API's own shape, so a recorded usage reads back the same
            v["completion_tokens_details"] = json!({"reasoning_tokens": self.reasoning_tokens});
        }
        v
    }
}

/// A completed exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The answer: reasoning (`reasoning_content`, `<think>` blocks) is never part of it.
    pub text: String,
    /// What the model thought before answering, when the endpoint sent it (kept for the event log).
    pub reasoning: String,
    pub finish_reason: String,
    pub usage: Usage,
    /// The model the server says answered (else the one asked for).
    pub model: String,
    /// Seconds from sending the request to the end of the reply.
    pub latency: f64,
    /// Whether the reply was streamed.
    pub streamed: bool,
    /// Whether it came from a cassette.
    pub replayed: bool,
}

impl Reply {
    pub fn to_json(&self) -> Value {
        let mut v = json!({"text": self.text, "finish_reason": self.finish_reason, "usage": self.usage.to_json(),
               "model": self.model});
        if !self.reasoning.is_empty() {
            v["reasoning"] = json!(self.reasoning);
        }
        v
    }

    pub fn from_json(v: &Value) -> Option<Reply> {
        Some(Reply {
            text: v.get("text")?.as_str()?.to_string(),
            reasoning: v.get("reasoning").and_then(Value::as_str).unwrap_or("").to_string(),
            finish_reason: v.get("finish_reason").and_then(Value::as_str).unwrap_or("stop").to_string(),
            usage: v.get("usage").and_then(Usage::from_json).unwrap_or_default(),
            model: v.get("model").and_then(Value::as_str).unwrap_or("").to_string(),
            latency: 0.0,
            streamed: false,
            replayed: true,
        })
    }
}

/// A failed attempt. `message` is already masked.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: Kind,
    pub status: Option<u16>,
    /// Seconds the server asked us to wait (Retry-After / retry-after-ms, else the delay its error body
    /// names: `retryDelay`, `retry_after`, "try again in 20s").
    pub retry_after: Option<f64>,
    /// The request field the error body names (`error.param`), when it names one.
    pub param: Option<String>,
    pub message: String,
    /// What did arrive, for `empty` and `truncated` (the partial text and the tokens paid for).
    pub reply: Option<Box<Reply>>,
    /// The server refused a streaming request (the client then asks again without streaming).
    pub(crate) refused_stream: bool,
}

impl Failure {
    pub fn new(kind: Kind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            status: None,
            retry_after: None,
            param: None,
            message: message.into(),
            reply: None,
            refused_stream: false,
        }
    }

    pub fn with_status(mut self, status: u16) -> Failure {
        self.status = Some(status);
        self
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// One chat request as sent (what a cassette matches on).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    pub model: String,
    pub messages: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Ask for a JSON object (`response_format: json_object`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub json: bool,
    /// Ask for JSON of this shape (`response_format: {type: json_schema, json_schema: <this>}`, the
    /// `{name, schema, strict?, description?}` object); wins over `json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<Value>,
    /// Extra body fields (top_p, seed, stop...), sent as given.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, Value>,
}

impl Request {
    /// The wire body.
    pub fn body(&self, stream: bool) -> Value {
        let mut b = serde_json::Map::new();
        b.insert("model".into(), json!(self.model));
        b.insert("messages".into(), Value::Array(self.messages.clone()));
        if let Some(t) = self.temperature {
            b.insert("temperature".into(), json!(t));
        }
        if let Some(m) = self.max_tokens {
            b.insert("max_tokens".into(), json!(m));
        }
        if let Some(schema) = &self.json_schema {
            b.insert("response_format".into(), json!({"type": "json_schema", "json_schema": schema}));
        } else if self.json {
            b.insert("response_format".into(), json!({"type": "json_object"}));
        }
        if stream {
            b.insert("stream".into(), json!(true));
            b.insert("stream_options".into(), json!({"include_usage": true}));
        }
        for (k, v) in &self.extra {
            b.insert(k.clone(), v.clone());
        }
        Value::Object(b)
    }

    /// The request as a cassette stores and matches it.
    pub fn key(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Characters in all message contents (for summaries).
    pub fn chars(&self) -> usize {
        self.messages.iter().map(|m| m.get("content").map_or(0, content_chars)).sum()
    }
}

fn content_chars(c: &Value) -> usize {
    match c {
        Value::String(s) => s.chars().count(),
        other => other.to_string().len(),
    }
}

/// Per-call options that are not part of the request itself.
#[derive(Debug, Clone)]
pub struct CallOpts {
    /// Seconds the whole exchange may last, streamed or not.
    pub timeout: f64,
    /// Streaming: seconds without a byte before the attempt is a stall. None:
    /// [`super::client::DEFAULT_IDLE_TIMEOUT`] (or `timeout`, when shorter).
    pub idle_timeout: Option<f64>,
    /// The largest reply accepted, in bytes (body or stream, reasoning included); 0: no limit.
    pub max_reply_bytes: u64,
    /// Streaming: the longest a whole stream may last (seconds). None: `timeout` when an idle timeout
    /// is set, else [`super::client::STREAM_TIMEOUTS`] times `timeout`.
    pub stream_timeout: Option<f64>,
    pub stream: bool,
    /// The trial's event log this call belongs to (its exchanges and usage go there), instead of the
    /// run's current one: concurrent branches each keep their own.
    pub events: Option<std::sync::Arc<crate::events::EventLog>>,
}

/// The answer and the reasoning of a reply's content: `<think>…</think>` blocks (and, from proxies that
/// drop the opening tag, everything before a lone `</think>`) are reasoning; an unclosed `<think>` runs
/// to the end (a reply cut off while thinking has no answer).
pub fn split_reasoning(content: &str) -> (String, String) {
    if !content.contains("<think>") && !content.contains("</think>") {
        return (content.to_string(), String::new());
    }
    let (mut answer, mut thought) = (String::new(), Vec::<&str>::new());
    let mut rest = content;
    if let (Some(close), None) = (rest.find("</think>"), rest.find("<think>")) {
        thought.push(rest[..close].trim());
        rest = &rest[close + "</think>".len()..];
    }
    while let Some(open) = rest.find("<think>") {
        answer.push_str(&rest[..open]);
        let inner = &rest[open + "<think>".len()..];
        match inner.find("</think>") {
            Some(close) => {
                thought.push(inner[..close].trim());
                rest = &inner[close + "</think>".len()..];
            }
            None => {
                thought.push(inner.trim());
                rest = "";
            }
        }
    }
    answer.push_str(rest);
    (answer.trim_start().to_string(), thought.join("\n\n"))
}

/// The first `n` characters of a text, marked when cut.
pub fn head(s: &str, n: usize) -> String {
    let mut it = s.char_indices();
    match it.nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// At most `head` bytes from the start and `tail` bytes from the end of `text` (cut at character
/// boundaries), with a marker in between saying how many bytes were left out; and that number (0 when
/// the text fits). Prompts echo model output and error text with this, so one runaway reply or
/// traceback cannot make every later request megabytes long.
pub fn clip(text: &str, head: usize, tail: usize) -> (String, usize) {
    if text.len() <= head.saturating_add(tail) {
        return (text.to_string(), 0);
    }
    let mut h = head;
    while !text.is_char_boundary(h) {
        h -= 1;
    }
    let mut t = text.len() - tail;
    while !text.is_char_boundary(t) {
        t += 1;
    }
    let cut = t - h;
    (format!("{}\n[… {cut} bytes cut …]\n{}", &text[..h], &text[t..]), cut)
}

/// How requests to one model are changed before they are sent, learnt from 400s that named a parameter
/// (the Lua policy `stdlib/adapt.lua` decides; see `Engine::adapt`). Applied to the wire body only: a
/// cassette still matches the request as the script made it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Adapt {
    /// Body fields sent under another name (`max_tokens` → `max_completion_tokens`).
    pub rename: std::collections::BTreeMap<String, String>,
    /// Body fields not sent (`temperature`).
    pub drop: std::collections::BTreeSet<String>,
    /// Body fields replaced (`response_format` downgraded to `{"type": "json_object"}`).
    pub set: serde_json::Map<String, Value>,
    /// Never stream to this model.
    pub no_stream: bool,
}

impl Adapt {
    pub fn is_empty(&self) -> bool {
        *self == Adapt::default()
    }

    /// This adaptation with `other`'s on top.
    pub fn merged(&self, other: &Adapt) -> Adapt {
        let mut a = self.clone();
        for (k, v) in &other.rename {
            a.rename.insert(k.clone(), v.clone());
        }
        for k in &other.drop {
            a.set.remove(k);
            a.drop.insert(k.clone());
        }
        for (k, v) in &other.set {
            if !a.drop.contains(k) {
                a.set.insert(k.clone(), v.clone());
            }
        }
        a.no_stream |= other.no_stream;
        a
    }

    /// The wire body of `req` with this adaptation applied.
    pub fn body(&self, req: &Request, stream: bool) -> Value {
        let mut b = req.body(stream && !self.no_stream);
        let Value::Object(m) = &mut b else { return b };
        for (k, v) in &self.set {
            if m.contains_key(k) {
                m.insert(k.clone(), v.clone());
            }
        }
        for k in &self.drop {
            m.remove(k);
        }
        for (from, to) in &self.rename {
            if let Some(v) = m.remove(from) {
                m.insert(to.clone(), v);
            }
        }
        b
    }

    /// What is changed, for the event log and the warning.
    pub fn to_json(&self) -> Value {
        json!({"rename": self.rename, "drop": self.drop, "set": self.set, "no_stream": self.no_stream})
    }

    /// One line: `max_tokens sent as max_completion_tokens, temperature not sent`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.rename.iter().map(|(a, b)| format!("{a} sent as {b}")).collect();
        parts.extend(self.drop.iter().map(|k| format!("{k} not sent")));
        parts.extend(self.set.iter().map(|(k, v)| format!("{k} sent as {v}")));
        if self.no_stream {
            parts.push("no streaming".into());
        }
        parts.join(", ")
    }
}
