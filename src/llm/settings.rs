//! The LLM settings of a run, built from the config's `llm` section, the host's secret and the CLI's
//! cassette flags; and what is accepted as a `base_url`.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::config::LlmConfig;
use crate::secret::Secret;

/// The resolved `llm` settings: config section, environment, CLI flags.
#[derive(Clone)]
pub struct Settings {
    pub model: String,
    /// Normalized: scheme://host[:port]/path without a trailing slash, `/v1` added when no path.
    pub base_url: String,
    pub(super) secret: Secret,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub timeout: f64,
    /// Streaming: the longest silence (seconds) before a stream is a stall (None: 300 s, or `timeout`
    /// when shorter); `timeout` bounds the whole reply, streamed or not.
    pub idle_timeout: Option<f64>,
    /// The largest reply accepted (bytes, streamed or not); 0: no limit.
    pub max_reply_bytes: u64,
    /// The longest a whole streamed reply may last (seconds); None: see `CallOpts::stream_timeout`.
    pub stream_timeout: Option<f64>,
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
    /// Money budget of the run, in the price table's currency.
    pub max_cost: Option<f64>,
    /// `llm.prices`: entries that override the price table (`stdlib/prices.lua`).
    pub prices: std::collections::BTreeMap<String, Price>,
}

/// What a model costs per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Reasoning tokens (part of the completion tokens), when priced apart from the output.
    pub reasoning: Option<f64>,
}

impl Price {
    /// `{input = , output = , reasoning = }` (per million tokens), checked; `what` names it in errors.
    pub fn from_json(v: &Value, what: &str) -> Result<Price, String> {
        let o = v.as_object().ok_or_else(|| format!("{what} must be an object {{input, output}}, got {v}"))?;
        for k in o.keys() {
            if !matches!(k.as_str(), "input" | "output" | "reasoning") {
                return Err(format!("{what}: unknown key '{k}' (expected input, output, reasoning)"));
            }
        }
        let num = |k: &str, need: bool| -> Result<Option<f64>, String> {
            match o.get(k) {
                None | Some(Value::Null) if !need => Ok(None),
                None | Some(Value::Null) => Err(format!("{what}: '{k}' (price per million tokens) is missing")),
                Some(x) => crate::pyjson::as_f64(x)
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .map(Some)
                    .ok_or_else(|| format!("{what}.{k} must be a non-negative number, got {x}")),
            }
        };
        Ok(Price {
            input: num("input", true)?.unwrap_or(0.0),
            output: num("output", true)?.unwrap_or(0.0),
            reasoning: num("reasoning", false)?,
        })
    }

    /// The cost of this usage.
    pub fn cost(&self, u: &super::Usage) -> f64 {
        let reasoning = u.reasoning_tokens.min(u.completion_tokens);
        let (out, think) = match self.reasoning {
            Some(r) => ((u.completion_tokens - reasoning) as f64 * self.output, reasoning as f64 * r),
            None => (u.completion_tokens as f64 * self.output, 0.0),
        };
        (u.prompt_tokens as f64 * self.input + out + think) / 1e6
    }
}

/// The price of `model` in `table`: its own entry, else the longest entry its name starts with
/// (`claude-sonnet-4-20250514-thinking` is priced as `claude-sonnet-4-20250514`).
pub fn price_of<'a>(table: &'a std::collections::BTreeMap<String, Price>, model: &str) -> Option<&'a Price> {
    if let Some(p) = table.get(model) {
        return Some(p);
    }
    table
        .iter()
        .filter(|(k, _)| !k.is_empty() && model.starts_with(k.as_str()))
        .max_by_key(|(k, _)| k.len())
        .map(|(_, p)| p)
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
        let mut prices = std::collections::BTreeMap::new();
        match extra.get("prices") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (model, v) in m {
                    prices.insert(model.clone(), Price::from_json(v, &format!("llm.prices.{model}"))?);
                }
            }
            Some(v) => return Err(format!("llm.prices must be an object {{model: {{input, output}}}}, got {v}")),
        }
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
            idle_timeout: match num("idle_timeout")? {
                Some(x) if x <= 0.0 => return Err(format!("llm.idle_timeout must be positive seconds, got {x}")),
                x => x,
            },
            stream_timeout: match num("stream_timeout")? {
                Some(x) if x <= 0.0 => return Err(format!("llm.stream_timeout must be positive seconds, got {x}")),
                x => x,
            },
            max_reply_bytes: match num("max_reply_bytes")? {
                None => super::client::DEFAULT_MAX_REPLY_BYTES,
                Some(x) if x >= 0.0 && x.fract() == 0.0 => x as u64,
                Some(x) => return Err(format!("llm.max_reply_bytes must be a whole number of bytes >= 0, got {x}")),
            },
            connect_timeout: num("connect_timeout")?.unwrap_or(10.0).max(0.001),
            max_total_tokens: num("max_total_tokens")?.map(|x| x as u64),
            max_calls: num("max_calls")?.map(|x| x as u64),
            max_concurrency: num("max_concurrency")?.map_or(8, |x| (x as usize).max(1)),
            stream,
            record: record.or_else(|| path("record")),
            replay: replay.or_else(|| path("replay")),
            retry,
            max_cost: num("max_cost")?,
            prices,
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
            "max_tokens": self.max_tokens, "temperature": self.temperature, "timeout": self.timeout, "idle_timeout": self.idle_timeout, "max_reply_bytes": self.max_reply_bytes, "stream_timeout": self.stream_timeout,
            "connect_timeout": self.connect_timeout, "max_total_tokens": self.max_total_tokens,
            "max_calls": self.max_calls, "max_cost": self.max_cost, "max_concurrency": self.max_concurrency, "stream": self.stream,
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
