//! The LLM engine: an OpenAI-compatible chat client that runs for hours on a paid API.
//!
//! It must never hang (every await has a timeout and watches Ctrl-C), never give up early for a
//! reason that would pass (every failure is classified so a retry policy can decide), never retry on
//! its own (the policy is Lua: `stdlib/retry.lua`, consulted by `src/lua/llm.rs`), and never leak the
//! API key: the key is only ever put in the Authorization header; everything printed, logged, recorded
//! or returned goes through [`mask`].
//!
//! Layout: [`client`] does one HTTP exchange (streaming or not) and classifies its outcome;
//! [`Engine`] adds what every attempt needs around it (budgets, the concurrency limit, record/replay,
//! telemetry, the event log); [`extract`] is `llm.extract_json`.

pub mod cassette;
pub mod client;
pub mod extract;
pub mod telemetry;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};

use crate::config::LlmConfig;
use crate::events::EventLog;
use crate::secret::Secret;

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
}

impl Usage {
    pub fn from_json(v: &Value) -> Option<Usage> {
        let o = v.as_object()?;
        let g = |k: &str| o.get(k).and_then(Value::as_u64).unwrap_or(0);
        let (p, c) = (g("prompt_tokens"), g("completion_tokens"));
        let t = o.get("total_tokens").and_then(Value::as_u64).unwrap_or(p + c);
        Some(Usage { prompt_tokens: p, completion_tokens: c, total_tokens: t })
    }

    pub fn to_json(self) -> Value {
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
               "total_tokens": self.total_tokens})
    }
}

/// A completed exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub text: String,
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
        json!({"text": self.text, "finish_reason": self.finish_reason, "usage": self.usage.to_json(),
               "model": self.model})
    }

    pub fn from_json(v: &Value) -> Option<Reply> {
        Some(Reply {
            text: v.get("text")?.as_str()?.to_string(),
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
    /// Seconds the server asked us to wait (Retry-After / retry-after-ms).
    pub retry_after: Option<f64>,
    pub message: String,
    /// What did arrive, for `empty` and `truncated` (the partial text and the tokens paid for).
    pub reply: Option<Box<Reply>>,
    /// The server refused a streaming request (the client then asks again without streaming).
    pub(crate) refused_stream: bool,
}

impl Failure {
    pub fn new(kind: Kind, message: impl Into<String>) -> Failure {
        Failure { kind, status: None, retry_after: None, message: message.into(), reply: None, refused_stream: false }
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
        if self.json {
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
    /// Seconds without a response (or, streaming, without a chunk) before the attempt is a timeout.
    pub timeout: f64,
    pub stream: bool,
}

/// The resolved `llm` settings: config section, environment, CLI flags.
#[derive(Clone)]
pub struct Settings {
    pub model: String,
    /// Normalized: scheme://host[:port]/path without a trailing slash, `/v1` added when no path.
    pub base_url: String,
    secret: Secret,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub timeout: f64,
    pub connect_timeout: f64,
    pub max_total_tokens: Option<u64>,
    pub max_calls: Option<u64>,
    pub max_concurrency: usize,
    /// None: stream when progress is shown (a terminal).
    pub stream: Option<bool>,
    pub record: Option<PathBuf>,
    pub replay: Option<PathBuf>,
    /// Options for `require("retry").new(...)` when a call gives no `retry`.
    pub retry: Option<Value>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("model", &self.model)
            .field("base_url", &self.base_url)
            .field("api_key", &self.secret)
            .finish_non_exhaustive()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from_llm_config(&LlmConfig::default(), None, Secret::default(), None, None)
            .expect("defaults are valid")
    }
}

impl Settings {
    /// Settings from the config's `llm` section, the key the host resolved, and the CLI's `--record` /
    /// `--replay` (which win over the config's `record` / `replay`). Relative cassette paths resolve
    /// against `base` (the folder the config's paths resolve against).
    pub fn from_llm_config(
        llm: &LlmConfig,
        base: Option<&Path>,
        secret: Secret,
        record: Option<PathBuf>,
        replay: Option<PathBuf>,
    ) -> Result<Settings, String> {
        let extra = &llm.extra;
        let num = |k: &str| -> Result<Option<f64>, String> {
            match extra.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => crate::pyjson::as_f64(v)
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .map(Some)
                    .ok_or_else(|| format!("llm.{k} must be a non-negative number, got {v}")),
            }
        };
        let path = |k: &str| -> Option<PathBuf> {
            let s = extra.get(k)?.as_str()?;
            if s.is_empty() {
                return None;
            }
            let p = PathBuf::from(s);
            Some(match base {
                Some(b) if p.is_relative() => b.join(p),
                _ => p,
            })
        };
        let base_url = normalize_base_url(&llm.base_url)?;
        let stream = match extra.get("stream") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => return Err(format!("llm.stream must be true or false, got {v}")),
        };
        let retry = match extra.get("retry") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(v) => return Err(format!("llm.retry must be an object of retry policy options, got {v}")),
        };
        if llm.timeout.is_nan() || llm.timeout <= 0.0 {
            return Err(format!("llm.timeout must be a positive number of seconds, got {}", llm.timeout));
        }
        Ok(Settings {
            model: llm.model.clone(),
            base_url,
            secret,
            max_tokens: llm.max_tokens,
            temperature: llm.temperature,
            timeout: llm.timeout,
            connect_timeout: num("connect_timeout")?.unwrap_or(10.0).max(0.001),
            max_total_tokens: num("max_total_tokens")?.map(|x| x as u64),
            max_calls: num("max_calls")?.map(|x| x as u64),
            max_concurrency: num("max_concurrency")?.map_or(8, |x| (x as usize).max(1)),
            stream,
            record: record.or_else(|| path("record")),
            replay: replay.or_else(|| path("replay")),
            retry,
        })
    }

    /// Use this key (e.g. from a test or a library caller).
    pub fn with_api_key(mut self, key: Option<String>) -> Settings {
        self.secret = Secret::new(key);
        self
    }

    /// Use this secret (the host's).
    pub fn with_secret(mut self, secret: Secret) -> Settings {
        self.secret = secret;
        self
    }

    pub fn has_api_key(&self) -> bool {
        self.secret.is_set()
    }

    /// Replace the key (and anything key-like) in a text that may be shown or written.
    pub fn mask(&self, s: &str) -> String {
        self.secret.mask(s)
    }

    /// The settings as a script may see them (the key only as "set" / masked).
    pub fn to_json(&self) -> Value {
        json!({
            "model": self.model, "base_url": self.base_url,
            "api_key": self.secret.masked(),
            "max_tokens": self.max_tokens, "temperature": self.temperature, "timeout": self.timeout,
            "connect_timeout": self.connect_timeout, "max_total_tokens": self.max_total_tokens,
            "max_calls": self.max_calls, "max_concurrency": self.max_concurrency, "stream": self.stream,
            "record": self.record.as_ref().map(|p| p.display().to_string()),
            "replay": self.replay.as_ref().map(|p| p.display().to_string()),
        })
    }
}

/// Accept what users paste as base_url: with or without `/v1`, a trailing slash, the full
/// `/chat/completions` URL, a markdown link `[text](url)` or `<url>`.
pub fn normalize_base_url(raw: &str) -> Result<String, String> {
    let mut s = raw.trim().to_string();
    if let (Some(open), true) = (s.find("]("), s.ends_with(')')) {
        s = s[open + 2..s.len() - 1].trim().to_string();
    }
    s = s.trim_matches(|c| c == '<' || c == '>' || c == '"' || c == '\'').trim().to_string();
    if s.is_empty() {
        return Err("llm.base_url is empty".into());
    }
    if !s.contains("://") {
        return Err(format!("llm.base_url '{s}' is not a URL (expected http:// or https://)"));
    }
    let url = reqwest::Url::parse(&s).map_err(|e| format!("llm.base_url '{s}' is not a valid URL: {e}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("llm.base_url '{s}' must use http or https"));
    }
    let mut out = s.trim_end_matches('/').to_string();
    for suffix in ["/chat/completions", "/completions"] {
        if let Some(stripped) = out.strip_suffix(suffix) {
            out = stripped.to_string();
        }
    }
    let path = url.path().trim_end_matches('/');
    if path.is_empty() {
        out.push_str("/v1");
    }
    Ok(out.trim_end_matches('/').to_string())
}

/// A local endpoint (Ollama, vLLM on this machine) that needs no key.
pub fn is_loopback(base_url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(base_url) else { return false };
    let Some(host) = u.host_str() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip.is_unspecified(),
        Err(_) => host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost"),
    }
}

/// Everything around one attempt: budgets, concurrency, record/replay, telemetry, events.
/// Shared by every coroutine of a run (and usable from Rust directly).
pub struct Engine {
    pub settings: Settings,
    /// Why the settings could not be built, reported on the first call (kind "config").
    pub settings_error: Option<String>,
    pub telemetry: Mutex<telemetry::Telemetry>,
    recorder: Mutex<Option<cassette::Recorder>>,
    player: Mutex<Option<Result<cassette::Player, String>>>,
    endpoints: Mutex<std::collections::HashMap<String, Arc<client::Endpoint>>>,
    /// Where each exchange is logged (the current trial's event log), when there is one.
    events: Option<Arc<EventLog>>,
    /// Progress is shown (a terminal): the default is then to stream.
    progress: bool,
}

impl Engine {
    pub fn new(settings: Settings, events: Option<Arc<EventLog>>, progress: bool) -> Engine {
        Engine {
            settings,
            settings_error: None,
            telemetry: Mutex::new(Default::default()),
            recorder: Mutex::new(None),
            player: Mutex::new(None),
            endpoints: Mutex::new(Default::default()),
            events,
            progress,
        }
    }

    fn tel(&self) -> std::sync::MutexGuard<'_, telemetry::Telemetry> {
        self.telemetry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the default is to stream (progress on a terminal), unless the config says.
    pub fn default_stream(&self) -> bool {
        self.settings.stream.unwrap_or(self.progress)
    }

    /// Check the budgets before sending a request.
    fn check_budget(&self) -> Result<(), Failure> {
        let t = self.tel();
        let s = &self.settings;
        if let Some(max) = s.max_total_tokens {
            if t.total.total_tokens >= max {
                return Err(Failure::new(
                    Kind::Budget,
                    format!(
                        "LLM token budget used up: {} tokens used of llm.max_total_tokens = {max} (raise it or remove it \
                         from the config to go on)",
                        t.total.total_tokens
                    ),
                ));
            }
        }
        if let Some(max) = s.max_calls {
            if t.total.requests >= max {
                return Err(Failure::new(
                    Kind::Budget,
                    format!(
                        "LLM call budget used up: {} requests made of llm.max_calls = {max} (raise it or remove it from \
                         the config to go on)",
                        t.total.requests
                    ),
                ));
            }
        }
        Ok(())
    }

    /// One attempt: budget check, replay or HTTP (+ record), telemetry and an event.
    pub async fn attempt(&self, req: &Request, opts: &CallOpts, attempt: u32) -> Result<Reply, Failure> {
        if let Some(e) = &self.settings_error {
            return Err(Failure::new(Kind::Config, e.clone()));
        }
        self.check_budget()?;
        let started = Instant::now();
        let result = if self.settings.replay.is_some() {
            self.replay(req)
        } else {
            let r = self.http(req, opts).await;
            self.record(req, &r);
            r
        };
        let latency = started.elapsed().as_secs_f64();
        if !matches!(&result, Err(f) if matches!(f.kind, Kind::Budget | Kind::Config | Kind::ReplayMiss)) {
            self.tel().record_attempt(&req.model, &result, latency);
        }
        self.emit(req, &result, attempt, latency);
        result
    }

    async fn http(&self, req: &Request, opts: &CallOpts) -> Result<Reply, Failure> {
        let s = &self.settings;
        if !s.secret.is_set() && !is_loopback(&s.base_url) {
            return Err(Failure::new(
                Kind::Config,
                format!(
                    "no API key: set llm.api_key in the config or the OPENAI_API_KEY environment variable \
                     (base_url {} is not a local endpoint, so it needs one)",
                    s.base_url
                ),
            ));
        }
        let ep = self.endpoint().map_err(|e| Failure::new(Kind::Config, self.settings.mask(&e)))?;
        client::chat(&ep, s.secret.expose(), req, opts).await.map_err(|mut f| {
            f.message = s.mask(&f.message);
            f
        })
    }

    /// The endpoint of the configured base_url (its client, pool and concurrency limit).
    pub fn endpoint(&self) -> Result<Arc<client::Endpoint>, String> {
        let s = &self.settings;
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ep) = map.get(&s.base_url) {
            return Ok(ep.clone());
        }
        let ep =
            Arc::new(client::Endpoint::new(&s.base_url, crate::duration_secs(s.connect_timeout), s.max_concurrency)?);
        map.insert(s.base_url.clone(), ep.clone());
        Ok(ep)
    }

    fn replay(&self, req: &Request) -> Result<Reply, Failure> {
        let path = self.settings.replay.clone().unwrap_or_default();
        let mut guard = self.player.lock().unwrap_or_else(|e| e.into_inner());
        let player = guard.get_or_insert_with(|| cassette::Player::load(&path));
        match player {
            Err(e) => Err(Failure::new(Kind::Config, e.clone())),
            Ok(p) => p.lookup(&req.key()),
        }
    }

    fn record(&self, req: &Request, r: &Result<Reply, Failure>) {
        let Some(path) = &self.settings.record else { return };
        let mut guard = self.recorder.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            match cassette::Recorder::open(path) {
                Ok(rec) => *guard = Some(rec),
                Err(e) => {
                    crate::ui::eline(&format!("warning: cannot record LLM exchanges: {e}"));
                    return;
                }
            }
        }
        if let Some(rec) = guard.as_mut() {
            // only the key itself: the look-alike patterns of `mask` could alter a prompt and break replay
            let key = self.settings.secret.expose().map(str::to_string);
            let exact = move |s: &str| match key.as_deref() {
                Some(k) if k.len() >= 4 => s.replace(k, "***"),
                _ => s.to_string(),
            };
            if let Err(e) = rec.write(req, r, &exact) {
                crate::ui::eline(&format!("warning: cannot record LLM exchange to {}: {e}", path.display()));
            }
        }
    }

    fn emit(&self, req: &Request, r: &Result<Reply, Failure>, attempt: u32, latency: f64) {
        let Some(events) = &self.events else { return };
        let last_user = req
            .messages
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .and_then(|m| m.get("content"))
            .map(|c| match c {
                Value::String(s) => s.clone(),
                o => o.to_string(),
            })
            .unwrap_or_default();
        let mut ev = json!({
            "model": req.model,
            "attempt": attempt,
            "latency": (latency * 1000.0).round() / 1000.0,
            "request": {
                "messages": req.messages.len(),
                "chars": req.chars(),
                "temperature": req.temperature,
                "max_tokens": req.max_tokens,
                "json": req.json,
                "last_user": head(&self.settings.mask(&last_user), 300),
            },
        });
        match r {
            Ok(rep) => {
                ev["outcome"] = json!("ok");
                ev["replayed"] = json!(rep.replayed);
                ev["response"] = json!({
                    "chars": rep.text.chars().count(), "finish_reason": rep.finish_reason,
                    "usage": rep.usage.to_json(), "model": rep.model,
                    "text": head(&self.settings.mask(&rep.text), 300),
                });
            }
            Err(f) => {
                ev["outcome"] = json!("error");
                ev["error"] =
                    json!({"kind": f.kind.as_str(), "status": f.status, "message": self.settings.mask(&f.message)});
                if let Some(rep) = &f.reply {
                    ev["response"] = json!({"chars": rep.text.chars().count(), "finish_reason": rep.finish_reason,
                        "usage": rep.usage.to_json()});
                }
            }
        }
        events.emit("llm", ev);
    }

    /// Account for one `llm.chat` call as a whole (after its retries).
    pub fn record_call(&self, model: &str, ok: bool, attempts: u32) {
        self.tel().record_call(model, ok, attempts);
    }

    /// `llm.usage()`.
    pub fn usage(&self) -> Value {
        self.tel().usage()
    }

    /// `llm.usage_snapshot{reset=}`: counts since the previous reset.
    pub fn usage_snapshot(&self, reset: bool) -> Value {
        self.tel().snapshot(reset)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_both_ends_and_whole_characters() {
        assert_eq!(clip("short", 10, 10), ("short".to_string(), 0));
        let (c, cut) = clip("ééééé", 3, 3);
        assert_eq!(cut, 6);
        assert_eq!(c, "é\n[… 6 bytes cut …]\né");
        let (c, cut) = clip(&"x".repeat(1000), 0, 10);
        assert_eq!((c.as_str(), cut), ("\n[… 990 bytes cut …]\nxxxxxxxxxx", 990));
    }

    #[test]
    fn base_url_forms() {
        let n = |s: &str| normalize_base_url(s).unwrap();
        assert_eq!(n("https://api.openai.com"), "https://api.openai.com/v1");
        assert_eq!(n("https://api.openai.com/"), "https://api.openai.com/v1");
        assert_eq!(n("https://api.openai.com/v1/"), "https://api.openai.com/v1");
        assert_eq!(n("[api](https://api.openai.com/v1)"), "https://api.openai.com/v1");
        assert_eq!(n("[https://x.org/v1](https://x.org/v1/)"), "https://x.org/v1");
        assert_eq!(n(" <http://localhost:11434> "), "http://localhost:11434/v1");
        assert_eq!(n("http://h:4000/openai/v1/chat/completions"), "http://h:4000/openai/v1");
        assert_eq!(n("http://h/api"), "http://h/api");
        assert!(normalize_base_url("api.openai.com").is_err());
        assert!(normalize_base_url("").is_err());
    }

    #[test]
    fn loopback() {
        assert!(is_loopback("http://127.0.0.1:8000/v1"));
        assert!(is_loopback("http://localhost:11434/v1"));
        assert!(is_loopback("http://[::1]:8000/v1"));
        assert!(!is_loopback("https://api.openai.com/v1"));
        assert!(!is_loopback("http://10.0.0.2/v1"));
    }

    #[test]
    fn request_body() {
        let r = Request {
            model: "m".into(),
            messages: vec![json!({"role": "user", "content": "hi"})],
            temperature: Some(0.2),
            max_tokens: Some(10),
            json: true,
            extra: [("seed".to_string(), json!(1))].into_iter().collect(),
        };
        let b = r.body(true);
        assert_eq!(b["response_format"]["type"], "json_object");
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["seed"], 1);
        assert!(r.body(false).get("stream").is_none());
    }
}
