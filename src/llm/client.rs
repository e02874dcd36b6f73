//! One HTTP exchange with an OpenAI-compatible endpoint (`POST {base_url}/chat/completions`), streaming
//! or not, and the classification of its outcome into a [`Kind`]. It never retries (that is the Lua
//! policy's job), never waits without a timeout, and ends promptly on Ctrl-C. The key goes into the
//! Authorization header and nowhere else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::Semaphore;

use super::{Adapt, CallOpts, Failure, Kind, Reply, Request, Usage};

/// A base URL with its HTTP client (connection pool), its concurrency limit, and what was learnt about
/// it (it refuses streaming).
pub struct Endpoint {
    pub base_url: String,
    client: reqwest::Client,
    limit: Arc<Semaphore>,
    refuses_stream: AtomicBool,
}

impl Endpoint {
    pub fn new(base_url: &str, connect_timeout: Duration, max_concurrency: usize) -> Result<Endpoint, String> {
        // Proxies: reqwest honours HTTP_PROXY / HTTPS_PROXY / ALL_PROXY / NO_PROXY, except for loopback.
        let client = crate::http::client_builder(base_url, connect_timeout)
            .pool_idle_timeout(Duration::from_secs(50))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {}", crate::http::error_chain(&e)))?;
        Ok(Endpoint {
            base_url: base_url.to_string(),
            client,
            // tokio panics above MAX_PERMITS (a config may say 1e30 for "no limit")
            limit: Arc::new(Semaphore::new(max_concurrency.clamp(1, Semaphore::MAX_PERMITS))),
            refuses_stream: AtomicBool::new(false),
        })
    }
}

/// Where and how one request is sent: the chat completions URL (the provider's shape, Azure's
/// `api-version` included), the headers (the credential in the provider's header, `llm.headers`), and the
/// secrets to mask out of what comes back.
pub struct Wire<'a> {
    pub url: String,
    pub headers: reqwest::header::HeaderMap,
    pub secret: &'a crate::secret::Secret,
}

/// The largest reply accepted by default (`llm.max_reply_bytes`): a whole generated notebook is a few
/// hundred kilobytes; a runaway or hostile server must not fill the memory.
pub const DEFAULT_MAX_REPLY_BYTES: u64 = 8 * 1024 * 1024;

/// The longest silence of a stream by default (`llm.idle_timeout`), or `llm.timeout` when shorter.
pub const DEFAULT_IDLE_TIMEOUT: f64 = 300.0;

/// How many times `llm.timeout` a whole stream may last by default (with no idle timeout set and no
/// `llm.stream_timeout`): a long reply that keeps coming gets room, a trickle that never ends does not.
pub const STREAM_TIMEOUTS: u32 = 2;

/// The largest error body read (a 4xx/5xx page is summarized in one line).
const MAX_ERROR_BODY: u64 = 1024 * 1024;

fn too_large(limit: u64, what: &str) -> Failure {
    Failure::new(
        Kind::Truncated,
        format!(
            "{what} passed llm.max_reply_bytes ({}) and was cut off there (raise llm.max_reply_bytes for \
             replies this long)",
            crate::kernel::outputs::human_bytes(limit)
        ),
    )
}

/// A body read whole, at most `limit` bytes (0: no limit), by `deadline`. Err(None): over the limit.
async fn bounded_body(
    mut resp: reqwest::Response,
    limit: u64,
    deadline: tokio::time::Instant,
) -> Result<Result<Vec<u8>, reqwest::Error>, Option<()>> {
    let mut body = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Err(_) => return Err(Some(())),
            Ok(Err(e)) => return Ok(Err(e)),
            Ok(Ok(None)) => return Ok(Ok(body)),
            Ok(Ok(Some(c))) => {
                if limit > 0 && (body.len() + c.len()) as u64 > limit {
                    return Err(None);
                }
                body.extend_from_slice(&c);
            }
        }
    }
}

fn interrupted() -> Failure {
    Failure::new(Kind::Interrupted, "interrupted (Ctrl-C) while waiting for the LLM")
}

/// One request, waiting for a free slot of the endpoint first. A server that refuses streaming is
/// asked again without it (and not asked to stream again).
pub async fn chat(
    ep: &Endpoint,
    wire: &Wire<'_>,
    req: &Request,
    adapt: &Adapt,
    opts: &CallOpts,
) -> Result<Reply, Failure> {
    let token = crate::signals::token();
    let _permit = tokio::select! {
        _ = token.cancelled() => return Err(interrupted()),
        p = ep.limit.acquire() => p.map_err(|_| Failure::new(Kind::Config, "the endpoint is closed"))?,
    };
    let spinner = crate::ui::spinner(format!("{}: waiting for the reply", req.model));
    let stream = opts.stream && !adapt.no_stream && !ep.refuses_stream.load(Ordering::Relaxed);
    let mut r = tokio::select! {
        _ = token.cancelled() => Err(interrupted()),
        r = exchange(ep, wire, req, adapt, opts, stream, &spinner) => r,
    };
    if stream && matches!(&r, Err(f) if f.refused_stream) {
        ep.refuses_stream.store(true, Ordering::Relaxed);
        tracing::info!("{} refuses streaming; asking again without it", ep.base_url);
        r = tokio::select! {
            _ = token.cancelled() => Err(interrupted()),
            r = exchange(ep, wire, req, adapt, opts, false, &spinner) => r,
        };
    }
    spinner.finish_and_clear();
    r
}

fn secs(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}s")
    } else {
        format!("{x:.3}").trim_end_matches('0').trim_end_matches('.').to_string() + "s"
    }
}

async fn exchange(
    ep: &Endpoint,
    wire: &Wire<'_>,
    req: &Request,
    adapt: &Adapt,
    opts: &CallOpts,
    stream: bool,
    spinner: &indicatif::ProgressBar,
) -> Result<Reply, Failure> {
    let url = wire.url.as_str();
    let t = crate::duration_secs(opts.timeout.max(0.001));
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + t;
    let mut rb = ep.client.post(url).headers(wire.headers.clone()).json(&adapt.body(req, stream));
    if stream {
        rb = rb.header(reqwest::header::ACCEPT, "text/event-stream");
    }
    // streaming: a server that says nothing for `idle` has stalled; the whole reply, streamed or not,
    // lasts at most the timeout
    let idle = match opts.idle_timeout {
        Some(i) => crate::duration_secs(i.max(0.001)),
        None => crate::duration_secs(DEFAULT_IDLE_TIMEOUT).min(t),
    };
    let (cap, cap_key) = match (opts.stream_timeout, opts.idle_timeout) {
        (Some(s), _) => (crate::duration_secs(s.max(0.001)), "llm.stream_timeout"),
        (None, Some(_)) => (t, "llm.timeout"),
        (None, None) => (t * STREAM_TIMEOUTS, "2 x llm.timeout"),
    };
    let headers_by = if stream { deadline.min(tokio::time::Instant::now() + idle) } else { deadline };
    let resp = match tokio::time::timeout_at(headers_by, rb.send()).await {
        Err(_) => {
            let waited = if headers_by < deadline { idle.as_secs_f64() } else { opts.timeout };
            return Err(Failure::new(Kind::Timeout, format!("no response from {url} within {}", secs(waited))));
        }
        Ok(Err(e)) => return Err(from_reqwest(&e, url)),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    let retry_after = retry_after(resp.headers());
    let ctype = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !status.is_success() {
        let body = match bounded_body(resp, MAX_ERROR_BODY, deadline).await {
            // masked before it is summarized (cut short): a key echoed across the cut would not be found whole
            Ok(Ok(b)) => wire.secret.mask(&String::from_utf8_lossy(&b)).into_bytes(),
            _ => Vec::new(),
        };
        let mut f = from_status(status, &body);
        // a delay in a header wins over one the body names
        f.retry_after = retry_after.or(f.retry_after);
        f.refused_stream = stream
            && f.kind != Kind::ContentFilter
            && matches!(status.as_u16(), 400 | 404 | 405 | 406 | 415 | 422 | 501)
            && String::from_utf8_lossy(&body).to_ascii_lowercase().contains("stream");
        return Err(f);
    }
    if stream && ctype.contains("text/event-stream") {
        return read_stream(resp, req, (idle, cap, cap_key, opts.max_reply_bytes), started, spinner).await;
    }
    // a body holds the reply as JSON (quotes and line breaks escaped): it may be twice the reply's size
    let body_limit = if opts.max_reply_bytes > 0 { opts.max_reply_bytes.saturating_mul(2) + 65_536 } else { 0 };
    if let Some(n) = resp.content_length().filter(|&n| body_limit > 0 && n > body_limit) {
        let mut f = too_large(opts.max_reply_bytes, &format!("the reply ({})", crate::kernel::outputs::human_bytes(n)));
        f.message = format!("{} (not read)", f.message);
        return Err(f);
    }
    let body = match bounded_body(resp, body_limit, deadline).await {
        Err(Some(())) => {
            return Err(Failure::new(
                Kind::Timeout,
                format!("the reply from {url} did not arrive in full within {}", secs(opts.timeout)),
            ))
        }
        Err(None) => return Err(too_large(opts.max_reply_bytes, "the reply")),
        Ok(Err(e)) => return Err(from_reqwest(&e, url)),
        Ok(Ok(b)) => b,
    };
    if stream && body.trim_ascii_start().starts_with(b"data:") {
        // an event stream sent with another content type
        let mut st = StreamState::default();
        for line in body.split(|&b| b == b'\n') {
            st.feed_line(line)?;
        }
        return st.finish(req, started);
    }
    parse_completion(&body, req, started.elapsed().as_secs_f64(), status.as_u16())
}

fn from_reqwest(e: &reqwest::Error, url: &str) -> Failure {
    // reqwest's own top line ("error sending request for url (…)") only repeats the URL: keep the causes
    let msg = match std::error::Error::source(e) {
        Some(src) => crate::http::error_chain(src),
        None => e.to_string(),
    };
    let low = msg.to_ascii_lowercase();
    if e.is_timeout() {
        return Failure::new(Kind::Timeout, format!("{url} timed out: {msg}"));
    }
    if e.is_connect() {
        return Failure::new(Kind::Connect, format!("cannot connect to {url}: {msg}"));
    }
    if e.is_builder() {
        return Failure::new(Kind::Config, format!("cannot build the request: {msg}"));
    }
    if ["reset", "broken pipe", "closed", "incomplete", "eof", "aborted"].iter().any(|w| low.contains(w)) {
        return Failure::new(
            Kind::Reset,
            format!("the connection to {url} was closed before the reply was complete: {msg}"),
        );
    }
    Failure::new(Kind::Reset, format!("the exchange with {url} failed: {msg}"))
}

/// Seconds from `Retry-After` (seconds or an HTTP date) or `retry-after-ms`.
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<f64> {
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = get("retry-after-ms").and_then(|s| s.parse::<f64>().ok()) {
        return Some((ms / 1000.0).clamp(0.0, 86_400.0));
    }
    let v = get("retry-after")?;
    if let Ok(s) = v.parse::<f64>() {
        return s.is_finite().then_some(s.clamp(0.0, 86_400.0));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let secs = (when.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds() as f64 / 1000.0;
    Some(secs.clamp(0.0, 86_400.0))
}

/// The error object of an error body: OpenAI's `{"error": {...}}`, Gemini's list `[{"error": {...}}]`,
/// a bare `{"message": ...}`; None when the body holds none.
fn error_object(v: &Value) -> Option<&Value> {
    let v = match v {
        Value::Array(items) => items.first()?,
        v => v,
    };
    match v.get("error") {
        Some(e @ Value::Object(_)) => Some(e),
        Some(_) => Some(v),
        None if v.get("message").is_some() || v.get("detail").is_some() => Some(v),
        None => None,
    }
}

/// What an error object says, in one line: its message (`error` when it is a plain string).
fn error_message(e: &Value) -> Option<String> {
    let m = e.get("message").or_else(|| e.get("detail")).or_else(|| e.get("error")).filter(|m| !m.is_null())?;
    Some(m.as_str().map_or_else(|| m.to_string(), str::to_string))
}

/// What a body says, in one short line: an API error message, an HTML page's title, or its start.
pub fn body_summary(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let t = text.trim();
    if t.is_empty() {
        return "(empty body)".into();
    }
    if let Ok(v) = serde_json::from_str::<Value>(t) {
        if let Some(m) = error_object(&v).and_then(error_message) {
            return super::head(&one_line(&m), 300);
        }
        return super::head(&one_line(t), 200);
    }
    let low = t.to_ascii_lowercase();
    if low.contains("<html") || low.contains("<!doctype") || low.contains("<title") || low.contains("<body") {
        let title = low.find("<title").and_then(|s| {
            let open = s + low[s..].find('>')? + 1;
            let close = open + low[open..].find("</title")?;
            Some(t[open..close].trim().to_string())
        });
        let stripped = strip_tags(t);
        return match title.filter(|x| !x.is_empty()) {
            Some(title) => format!("an HTML page titled '{}'", super::head(&one_line(&title), 120)),
            None => format!("an HTML page: {}", super::head(&one_line(&stripped), 160)),
        };
    }
    super::head(&one_line(t), 200)
}

/// A duration as providers write it: protobuf's `"30s"` / `"1.5s"`, Go's `"1m30s"`, `"250ms"`,
/// `"20 seconds"`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Option<f64> {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(r"(?i)(\d+(?:\.\d+)?)\s*(milliseconds?|ms|minutes?|mins?|m|seconds?|secs?|s|hours?|h)?")
            .expect("valid regex")
    });
    let s = s.trim();
    let mut total = 0.0;
    let mut end = 0;
    let mut any = false;
    for c in re.captures_iter(s) {
        let m = c.get(0)?;
        if !s[end..m.start()].trim().is_empty() {
            break;
        }
        end = m.end();
        let x: f64 = c[1].parse().ok()?;
        let unit = c.get(2).map_or("s", |u| u.as_str()).to_ascii_lowercase();
        total += x * match unit.as_str() {
            "ms" | "millisecond" | "milliseconds" => 0.001,
            u if u.starts_with('m') => 60.0,
            u if u.starts_with('h') => 3600.0,
            _ => 1.0,
        };
        any = true;
    }
    (any && total.is_finite()).then_some(total.clamp(0.0, 86_400.0))
}

/// The delay an error body asks for when no Retry-After header says it: Gemini's `RetryInfo`
/// (`"retryDelay": "30s"` among `error.details`), a `retry_after` field (seconds), or a message saying
/// "try again in 20s" / "Please retry in 1.5s" / "retry after 20 seconds".
pub fn body_retry_delay(v: &Value) -> Option<f64> {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let e = error_object(v)?;
    let details = e.get("details").and_then(Value::as_array).into_iter().flatten();
    for d in details {
        let t = d.get("@type").and_then(Value::as_str).unwrap_or("");
        if let Some(r) = d.get("retryDelay").filter(|_| t.is_empty() || t.ends_with("RetryInfo")) {
            let secs = match r {
                Value::String(s) => parse_duration(s),
                Value::Object(o) => Some(
                    o.get("seconds").and_then(crate::pyjson::as_f64).unwrap_or(0.0)
                        + o.get("nanos").and_then(crate::pyjson::as_f64).unwrap_or(0.0) / 1e9,
                ),
                other => crate::pyjson::as_f64(other),
            };
            if secs.is_some() {
                return secs;
            }
        }
    }
    for holder in [e, v] {
        for k in ["retry_after", "retryAfter", "retry_after_seconds"] {
            if let Some(x) = holder.get(k) {
                let secs = match x {
                    Value::String(s) => parse_duration(s),
                    other => crate::pyjson::as_f64(other).filter(|x| x.is_finite()).map(|x| x.clamp(0.0, 86_400.0)),
                };
                if secs.is_some() {
                    return secs;
                }
            }
        }
    }
    let msg = error_message(e)?;
    let re = RE.get_or_init(|| {
        regex::Regex::new(
            r"(?i)\b(?:try again|retry)\s+(?:in|after)\s+((?:\d+(?:\.\d+)?\s*(?:milliseconds?|ms|minutes?|mins?|m|seconds?|secs?|s|hours?|h)?\s*)+)",
        )
        .expect("valid regex")
    });
    parse_duration(re.captures(&msg)?.get(1)?.as_str())
}

/// A content filter's refusal in an error object: Azure's `code: "content_filter"` (its
/// `innererror.code` `ResponsibleAIPolicyViolation`). Returns what was filtered (`hate (medium)`), when
/// the body says.
fn content_filter_of(e: &Value) -> Option<String> {
    let code = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_ascii_lowercase).unwrap_or_default();
    let inner = e.get("innererror").or_else(|| e.get("inner_error"));
    let hit = code(e.get("code")) == "content_filter"
        || code(inner.and_then(|i| i.get("code"))) == "responsibleaipolicyviolation";
    if !hit {
        return None;
    }
    Some(filtered_categories(
        inner.and_then(|i| i.get("content_filter_result").or_else(|| i.get("content_filter_results"))),
    ))
}

/// `hate (medium), jailbreak`: the categories a content filter result marks as filtered.
fn filtered_categories(r: Option<&Value>) -> String {
    let Some(Value::Object(m)) = r else { return String::new() };
    m.iter()
        .filter(|(_, v)| v.get("filtered").and_then(Value::as_bool) == Some(true))
        .map(|(k, v)| match v.get("severity").and_then(Value::as_str) {
            Some(sev) => format!("{k} ({sev})"),
            None => k.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A failure from an error object (an error body, or one sent with HTTP 200 or in a stream): a content
/// filter's refusal, a rate limit (code 429, `RESOURCE_EXHAUSTED`), or a server error; with the delay
/// and the parameter it names.
fn from_error_object(v: &Value, e: &Value, what: &str, status: Option<u16>) -> Failure {
    let msg = super::head(&one_line(&error_message(e).unwrap_or_else(|| e.to_string())), 300);
    let code = e.get("code").map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_string)).unwrap_or_default();
    let gstatus = e.get("status").and_then(Value::as_str).unwrap_or("");
    let mut f = if let Some(cats) = content_filter_of(e) {
        content_filter_failure(&msg, &cats, "refused the prompt")
    } else if code == "429" || gstatus == "RESOURCE_EXHAUSTED" || code == "rate_limit_exceeded" {
        Failure::new(Kind::RateLimited, format!("{what}: {msg}"))
    } else {
        Failure::new(Kind::Server, format!("{what}: {msg}"))
    };
    f.retry_after = body_retry_delay(v);
    f.param = e.get("param").and_then(Value::as_str).filter(|p| !p.is_empty()).map(str::to_string);
    if let Some(s) = status {
        f = f.with_status(s);
    }
    f
}

fn content_filter_failure(msg: &str, categories: &str, did: &str) -> Failure {
    let cats = if categories.is_empty() { String::new() } else { format!(" (filtered: {categories})") };
    Failure::new(Kind::ContentFilter, format!("the provider's content filter {did}{cats}: {msg}"))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn strip_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

fn from_status(status: reqwest::StatusCode, body: &[u8]) -> Failure {
    let code = status.as_u16();
    let low = String::from_utf8_lossy(body).to_ascii_lowercase();
    let kind = match code {
        // OpenAI sends an exhausted quota as 429 too, but waiting does not refill it
        429 if low.contains("insufficient_quota") => Kind::Client,
        429 => Kind::RateLimited,
        408 => Kind::Timeout,
        500..=599 => Kind::Server,
        _ => Kind::Client,
    };
    let reason = status.canonical_reason().unwrap_or("");
    let mut f = Failure::new(kind, format!("HTTP {code} {reason}: {}", body_summary(body))).with_status(code);
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(e) = error_object(&v) {
            if let Some(cats) = content_filter_of(e) {
                let msg = error_message(e).unwrap_or_default();
                let mut cf = content_filter_failure(&super::head(&one_line(&msg), 300), &cats, "refused the prompt");
                cf.message = format!("HTTP {code} {reason}: {}", cf.message);
                f.kind = cf.kind;
                f.message = cf.message;
            }
            f.retry_after = body_retry_delay(&v);
            f.param = e.get("param").and_then(Value::as_str).filter(|p| !p.is_empty()).map(str::to_string);
        }
    }
    f
}

fn content_text(c: Option<&Value>) -> String {
    match c {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str).or_else(|| p.as_str()))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// Parse a non-streamed completion body.
pub fn parse_completion(body: &[u8], req: &Request, latency: f64, status: u16) -> Result<Reply, Failure> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            return Err(Failure::new(
                Kind::BadBody,
                format!("HTTP {status}, but the body is not a JSON completion: {}", body_summary(body)),
            )
            .with_status(status))
        }
    };
    if v.get("choices").is_none() {
        if let Some(e) = error_object(&v).filter(|_| v.is_array() || v.get("error").is_some()) {
            return Err(from_error_object(&v, e, &format!("HTTP {status} with an error"), Some(status)));
        }
        return Err(Failure::new(
            Kind::BadBody,
            format!("HTTP {status}, but the reply has no choices: {}", body_summary(body)),
        )
        .with_status(status));
    }
    let Some(choice) = v.pointer("/choices/0") else {
        return Err(Failure::new(Kind::BadBody, format!("HTTP {status}, but the reply's choices are empty"))
            .with_status(status));
    };
    let content = content_text(choice.pointer("/message/content").or_else(|| choice.get("text")));
    let (text, inline) = super::split_reasoning(&content);
    let field = choice
        .pointer("/message/reasoning_content")
        .or_else(|| choice.pointer("/message/reasoning"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let reply = Reply {
        text,
        reasoning: join_reasoning(field, &inline),
        finish_reason: choice.get("finish_reason").and_then(Value::as_str).unwrap_or("").to_string(),
        usage: v.get("usage").and_then(Usage::from_json).unwrap_or_default(),
        model: v.get("model").and_then(Value::as_str).unwrap_or(&req.model).to_string(),
        latency,
        streamed: false,
        replayed: false,
    };
    check_reply(reply, req).map_err(|mut f| {
        if f.kind == Kind::ContentFilter {
            let cats = filtered_categories(choice.get("content_filter_results"));
            if !cats.is_empty() {
                f.message = f.message.replacen(" (finish_reason", &format!(" (filtered: {cats}; finish_reason"), 1);
            }
        }
        f.with_status(status)
    })
}

fn join_reasoning(a: &str, b: &str) -> String {
    match (a.trim().is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (false, true) => a.to_string(),
        (false, false) => format!("{a}\n\n{b}"),
    }
}

/// A completion that arrived but cannot be used: cut off, stopped by a content filter, or no content.
pub fn check_reply(reply: Reply, req: &Request) -> Result<Reply, Failure> {
    if reply.finish_reason == "content_filter" {
        let mut f = Failure::new(
            Kind::ContentFilter,
            format!(
                "the provider's content filter stopped the reply after {} chars (finish_reason content_filter)",
                reply.text.chars().count()
            ),
        );
        f.reply = Some(Box::new(reply));
        return Err(f);
    }
    if reply.finish_reason == "length" {
        let limit = req.max_tokens.map_or_else(|| "the server's limit".to_string(), |m| format!("max_tokens = {m}"));
        let mut f = Failure::new(
            Kind::Truncated,
            format!(
                "the reply was cut off at {limit} after {} completion tokens ({} chars; finish_reason length)",
                reply.usage.completion_tokens,
                reply.text.chars().count()
            ),
        );
        f.reply = Some(Box::new(reply));
        return Err(f);
    }
    if reply.text.trim().is_empty() {
        let why = if reply.finish_reason.is_empty() { "none".to_string() } else { reply.finish_reason.clone() };
        let mut f = Failure::new(Kind::Empty, format!("the reply has no content (finish_reason {why})"));
        f.reply = Some(Box::new(reply));
        return Err(f);
    }
    Ok(reply)
}

/// Accumulates a server-sent-events completion.
#[derive(Default)]
struct StreamState {
    text: String,
    reasoning: String,
    finish: Option<String>,
    usage: Option<Usage>,
    model: Option<String>,
    chunks: u64,
    done: bool,
}

impl StreamState {
    fn feed_line(&mut self, line: &[u8]) -> Result<(), Failure> {
        let line = String::from_utf8_lossy(line);
        let line = line.trim();
        let Some(payload) = line.strip_prefix("data:") else { return Ok(()) };
        let payload = payload.trim();
        if payload == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        if payload.is_empty() {
            return Ok(());
        }
        let v: Value = serde_json::from_str(payload).map_err(|_| {
            Failure::new(Kind::BadBody, format!("a streamed chunk is not JSON: {}", super::head(payload, 160)))
        })?;
        if v.get("choices").is_none() && (v.is_array() || v.get("error").is_some()) {
            if let Some(e) = error_object(&v) {
                return Err(from_error_object(&v, e, "the stream ended with an error", None));
            }
        }
        if let Some(m) = v.get("model").and_then(Value::as_str) {
            self.model = Some(m.to_string());
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()).and_then(Usage::from_json) {
            self.usage = Some(u);
        }
        if let Some(c) = v.pointer("/choices/0") {
            let thought = c.pointer("/delta/reasoning_content").or_else(|| c.pointer("/delta/reasoning"));
            if let Some(d) = thought.and_then(Value::as_str) {
                if !d.is_empty() {
                    self.reasoning.push_str(d);
                    self.chunks += 1;
                }
            }
            if let Some(d) = c.pointer("/delta/content").and_then(Value::as_str) {
                if !d.is_empty() {
                    self.text.push_str(d);
                    self.chunks += 1;
                }
            }
            if let Some(f) = c.get("finish_reason").and_then(Value::as_str) {
                self.finish = Some(f.to_string());
            }
        }
        Ok(())
    }
}

async fn read_stream(
    resp: reqwest::Response,
    req: &Request,
    (idle, cap, cap_key, max_bytes): (Duration, Duration, &str, u64),
    started: Instant,
    spinner: &indicatif::ProgressBar,
) -> Result<Reply, Failure> {
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut st = StreamState::default();
    let partial = |st: &StreamState, mut f: Failure| {
        if !st.text.is_empty() {
            f.message =
                format!("{} (after {} streamed chunks, {} chars)", f.message, st.chunks, st.text.chars().count());
        }
        f
    };
    // a server that trickles keep-alive bytes forever must not hold the run: the whole stream may
    // last at most `cap` (llm.timeout); its text and reasoning may hold at most `max_bytes`, and so may
    // a line of it (the event framing of a token is often forty times the token: it is not counted)
    let end = tokio::time::Instant::now() + cap.saturating_sub(started.elapsed());
    let mut last_data = Instant::now();
    while !st.done {
        let stall = tokio::time::Instant::now() + idle;
        let next = match tokio::time::timeout_at(stall.min(end), body.next()).await {
            // the deadline came while data was still coming (the last silence well short of the idle gap)
            Err(_) if stall >= end && last_data.elapsed() < idle.mul_f64(0.75) => {
                let f = Failure::new(
                    Kind::Timeout,
                    format!("the stream went on for more than {} ({cap_key})", secs(cap.as_secs_f64())),
                );
                return Err(partial(&st, f));
            }
            Err(_) => {
                let f = Failure::new(
                    Kind::Timeout,
                    format!(
                        "the stream stalled: no data for {}",
                        secs(last_data.elapsed().as_secs_f64().min(idle.as_secs_f64()))
                    ),
                );
                return Err(partial(&st, f));
            }
            Ok(n) => n,
        };
        match next {
            None => break,
            Some(Err(e)) => {
                let mut f = from_reqwest(&e, "the stream");
                if f.kind == Kind::Timeout {
                    f.kind = Kind::Reset;
                }
                return Err(partial(&st, f));
            }
            Some(Ok(bytes)) => {
                last_data = Instant::now();
                buf.extend_from_slice(&bytes);
                let mut start = 0;
                while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
                    st.feed_line(&buf[start..start + pos])?;
                    start += pos + 1;
                    if st.done {
                        break;
                    }
                }
                buf.drain(..start);
                let kept = (st.text.len() + st.reasoning.len()).max(buf.len()) as u64;
                if max_bytes > 0 && kept > max_bytes {
                    let mut f = partial(&st, too_large(max_bytes, "the streamed reply"));
                    // what came is kept for the failure files
                    if let Ok(r) = std::mem::take(&mut st).finish(req, started) {
                        f.reply = Some(Box::new(r));
                    }
                    return Err(f);
                }
                spinner.set_message(format!("{}: {} tokens so far", req.model, st.chunks));
            }
        }
    }
    if !buf.is_empty() && !st.done {
        let rest = std::mem::take(&mut buf);
        st.feed_line(&rest)?;
    }
    if !st.done && st.finish.is_none() {
        let f =
            Failure::new(Kind::Reset, "the stream ended before the reply was complete (no [DONE], no finish_reason)");
        return Err(partial(&st, f));
    }
    st.finish(req, started)
}

impl StreamState {
    fn finish(self, req: &Request, started: Instant) -> Result<Reply, Failure> {
        let usage = self.usage.unwrap_or(Usage {
            // the server sent no usage: estimate (a chunk is about a token; 4 chars per prompt token)
            prompt_tokens: (req.chars() / 4) as u64,
            completion_tokens: self.chunks,
            total_tokens: (req.chars() / 4) as u64 + self.chunks,
            reasoning_tokens: 0,
        });
        let (text, inline) = super::split_reasoning(&self.text);
        let reply = Reply {
            text,
            reasoning: join_reasoning(&self.reasoning, &inline),
            finish_reason: self.finish.unwrap_or_else(|| "stop".into()),
            usage,
            model: self.model.unwrap_or_else(|| req.model.clone()),
            latency: started.elapsed().as_secs_f64(),
            streamed: true,
            replayed: false,
        };
        check_reply(reply, req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_https_client_builds_with_the_ring_provider() {
        Endpoint::new("https://api.openai.com/v1", Duration::from_secs(5), 4).expect("client builds");
    }

    #[test]
    fn summaries() {
        assert_eq!(body_summary(br#"{"error": {"message": "bad model"}}"#), "bad model");
        assert_eq!(
            body_summary(b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>x</body></html>"),
            "an HTML page titled '502 Bad Gateway'"
        );
        assert_eq!(body_summary(b""), "(empty body)");
    }

    const GEMINI_429: &str = r#"[{"error": {"code": 429, "message": "You exceeded your current quota, please check your plan and billing details.", "status": "RESOURCE_EXHAUSTED", "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests"}]}, {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "31s"}]}}]"#;

    #[test]
    fn gemini_list_shaped_errors_are_read_with_their_delay() {
        assert_eq!(
            body_summary(GEMINI_429.as_bytes()),
            "You exceeded your current quota, please check your plan and billing details."
        );
        let f = from_status(reqwest::StatusCode::TOO_MANY_REQUESTS, GEMINI_429.as_bytes());
        assert_eq!((f.kind, f.status, f.retry_after), (Kind::RateLimited, Some(429), Some(31.0)));
        assert!(f.message.starts_with("HTTP 429 Too Many Requests: You exceeded your current quota"), "{}", f.message);
        // a list-shaped error sent with HTTP 200 is an error, not "no choices"
        let f = parse_completion(GEMINI_429.as_bytes(), &req(), 0.1, 200).unwrap_err();
        assert_eq!((f.kind, f.retry_after), (Kind::RateLimited, Some(31.0)), "{}", f.message);
        let bad = br#"[{"error": {"code": 400, "message": "Invalid JSON payload received. Unknown name \"seed\": Cannot find field.", "status": "INVALID_ARGUMENT"}}]"#;
        let f = from_status(reqwest::StatusCode::BAD_REQUEST, bad);
        assert_eq!(f.kind, Kind::Client);
        assert!(f.message.contains("Unknown name \"seed\""), "{}", f.message);
    }

    #[test]
    fn retry_delays_named_in_error_bodies() {
        let d = |b: &str| body_retry_delay(&serde_json::from_str(b).unwrap());
        assert_eq!(
            d(r#"{"error": {"message": "Rate limit reached for gpt-4o. Please try again in 20s."}}"#),
            Some(20.0)
        );
        assert_eq!(d(r#"{"error": {"message": "Please try again in 1.5s. Visit ..."}}"#), Some(1.5));
        assert_eq!(d(r#"{"error": {"message": "Limit 30000, Used 29950. Please try again in 120ms."}}"#), Some(0.12));
        assert_eq!(d(r#"{"error": {"message": "Please try again in 1m30s."}}"#), Some(90.0));
        assert_eq!(d(r#"[{"error": {"message": "Quota exceeded. Please retry in 1.527046s."}}]"#), Some(1.527046));
        assert_eq!(
            d(
                r#"{"error": {"code": "429", "message": "Requests to the ChatCompletions_Create Operation have exceeded the rate limit. Please retry after 7 seconds."}}"#
            ),
            Some(7.0)
        );
        assert_eq!(d(r#"{"error": {"message": "slow down", "retry_after": 12}}"#), Some(12.0));
        assert_eq!(d(r#"{"error": "slow down", "retry_after": "3"}"#), Some(3.0));
        assert_eq!(
            d(
                r#"{"error": {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": {"seconds": 4, "nanos": 500000000}}]}}"#
            ),
            Some(4.5)
        );
        assert_eq!(d(r#"{"error": {"message": "Rate limit reached"}}"#), None);
        assert_eq!(d(r#"{"error": {"message": "retry in a moment"}}"#), None);
    }

    const AZURE_FILTER: &str = r#"{"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry.", "type": null, "param": "prompt", "code": "content_filter", "status": 400, "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {"hate": {"filtered": true, "severity": "high"}, "jailbreak": {"filtered": false, "detected": false}, "self_harm": {"filtered": false, "severity": "safe"}, "violence": {"filtered": true, "severity": "medium"}}}}}"#;

    #[test]
    fn a_content_filter_refusal_is_its_own_kind() {
        let f = from_status(reqwest::StatusCode::BAD_REQUEST, AZURE_FILTER.as_bytes());
        assert_eq!((f.kind, f.status), (Kind::ContentFilter, Some(400)));
        assert_eq!(
            f.message,
            "HTTP 400 Bad Request: the provider's content filter refused the prompt (filtered: hate (high), violence \
             (medium)): The response was filtered due to the prompt triggering Azure OpenAI's content management \
             policy. Please modify your prompt and retry."
        );
        let body = json!({"choices": [{"index": 0, "finish_reason": "content_filter",
            "message": {"role": "assistant", "content": "Step 1: the"},
            "content_filter_results": {"violence": {"filtered": true, "severity": "high"}}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}});
        let f = parse_completion(body.to_string().as_bytes(), &req(), 0.1, 200).unwrap_err();
        assert_eq!(f.kind, Kind::ContentFilter);
        assert!(
            f.message
                .contains("stopped the reply after 11 chars (filtered: violence (high); finish_reason content_filter)"),
            "{}",
            f.message
        );
        assert_eq!(f.reply.unwrap().text, "Step 1: the");
    }

    fn req() -> Request {
        Request {
            model: "m".into(),
            messages: vec![json!({"role": "user", "content": "hi"})],
            temperature: None,
            max_tokens: None,
            json: false,
            json_schema: None,
            extra: Default::default(),
        }
    }

    #[test]
    fn retry_after_forms() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(3.0));
        h.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_after(&h), Some(1.5));
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), Some(0.0));
    }
}
