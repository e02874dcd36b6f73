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
    /// Which dialect the endpoint speaks (URL shape and auth header).
    pub provider: Provider,
    /// Azure's `api-version` query parameter (sent with the deployments form always, with v1 when set).
    pub api_version: Option<String>,
    /// Azure's deployment (deployments form: the URL's; v1: the body's `model`); None: the request's model.
    pub deployment: Option<String>,
    /// Azure: the secret is an Entra ID token (sent as a bearer token) rather than an `api-key`.
    pub azure_ad: bool,
    /// `llm.reasoning_effort`, sent with every request unless a call says otherwise.
    pub reasoning_effort: Option<String>,
    /// `OpenAI-Organization` / `OpenAI-Project`.
    pub organization: Option<String>,
    pub project: Option<String>,
    /// `llm.headers`, in the config's order, and which of them hold secrets.
    pub headers: Vec<(String, String)>,
    pub secret_headers: Vec<String>,
}

/// The dialect an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// OpenAI and every OpenAI-compatible endpoint (Gemini's, proxies, vLLM, Ollama...):
    /// `POST {base_url}/chat/completions`, `Authorization: Bearer KEY`.
    OpenAi,
    /// Azure OpenAI, deployments form: `POST {resource}/openai/deployments/{deployment}/chat/completions
    /// ?api-version=V`, `api-key: KEY` (or an Entra ID bearer token).
    AzureDeployments,
    /// Azure OpenAI, v1 form: `POST {resource}/openai/v1/chat/completions` with the deployment as `model`.
    AzureV1,
}

impl Provider {
    pub fn is_azure(self) -> bool {
        self != Provider::OpenAi
    }
}

/// The `api-version` sent to an Azure deployment when `llm.api_version` is not set: the newest generally
/// available data-plane version.
pub const AZURE_API_VERSION: &str = "2024-10-21";

/// Host names of Azure OpenAI resources (the provider is Azure without `llm.provider`).
const AZURE_HOSTS: &[&str] = &[".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com"];

fn str_key<'a>(llm: &'a LlmConfig, k: &str) -> Option<&'a str> {
    llm.extra.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// Whether the config's endpoint is Azure OpenAI: `llm.provider = "azure"`, or (with no provider) an Azure
/// resource's host name in `base_url`.
pub fn is_azure(llm: &LlmConfig) -> bool {
    match str_key(llm, "provider") {
        Some(p) => p.eq_ignore_ascii_case("azure"),
        None => reqwest::Url::parse(&clean_url(&llm.base_url))
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
            .is_some_and(|h| AZURE_HOSTS.iter().any(|s| h.ends_with(s))),
    }
}

/// The Entra ID token of an Azure config: `llm.azure_ad_token`, else `AZURE_OPENAI_AD_TOKEN`.
fn azure_token(llm: &LlmConfig) -> Secret {
    Secret::resolve_from(str_key(llm, "azure_ad_token"), &["AZURE_OPENAI_AD_TOKEN"])
}

/// The secret a run's LLM calls send, and every other secret of the `llm` section masked with it.
/// OpenAI-compatible: `llm.api_key`, else `OPENAI_API_KEY`. Azure: an Entra ID token
/// (`llm.azure_ad_token`, else `AZURE_OPENAI_AD_TOKEN`) when there is one, else `llm.api_key`, else
/// `AZURE_OPENAI_API_KEY`. The values of the secret `llm.headers` are masked too.
pub fn resolve_secret(llm: &LlmConfig) -> Secret {
    let headers: Vec<String> = llm
        .secret_headers
        .iter()
        .filter_map(|k| llm.extra.get("headers")?.get(k)?.as_str().map(str::to_string))
        .collect();
    if !is_azure(llm) {
        return Secret::resolve(llm.api_key.as_deref()).also_masking(headers);
    }
    let key = Secret::resolve_from(llm.api_key.as_deref(), &["AZURE_OPENAI_API_KEY"]);
    let token = azure_token(llm);
    match token.expose() {
        // both set: the token is sent (as openai-python's AzureOpenAI does), the key still masked
        Some(_) => token.also_masking(headers.into_iter().chain(key.expose().map(str::to_string))),
        None => key.also_masking(headers),
    }
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
        let azure = is_azure(llm);
        let (base_url, provider, url_deployment, url_version) = if azure {
            azure_base_url(&llm.base_url)?
        } else {
            (normalize_base_url(&llm.base_url)?, Provider::OpenAi, None, None)
        };
        let api_version = str_key(llm, "api_version").map(str::to_string).or(url_version);
        let deployment = str_key(llm, "deployment").map(str::to_string).or(url_deployment);
        let headers: Vec<(String, String)> = match extra.get("headers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v.as_str() {
                    Some(s) => Ok((k.clone(), s.to_string())),
                    None => Err(format!("llm.headers.{k} must be a string")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("llm.headers must be a mapping of header names to strings".into()),
        };
        let model = match (provider, &deployment) {
            // v1: the deployment is the body's model
            (Provider::AzureV1, Some(d)) => d.clone(),
            _ => llm.model.clone(),
        };
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
            model,
            provider,
            api_version: match provider {
                Provider::AzureDeployments => Some(api_version.unwrap_or_else(|| AZURE_API_VERSION.to_string())),
                _ => api_version,
            },
            deployment,
            azure_ad: azure && azure_token(llm).is_set(),
            reasoning_effort: str_key(llm, "reasoning_effort").map(str::to_string),
            organization: str_key(llm, "organization").map(str::to_string),
            project: str_key(llm, "project").map(str::to_string),
            headers,
            secret_headers: llm.secret_headers.clone(),
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

    /// Where a request to `model` goes: `{base_url}/chat/completions`, or for an Azure deployment
    /// `{base_url}/deployments/{deployment or model}/chat/completions?api-version=V`.
    pub fn chat_url(&self, model: &str) -> String {
        let mut url = match reqwest::Url::parse(&self.base_url) {
            Ok(u) => u,
            Err(_) => return format!("{}/chat/completions", self.base_url),
        };
        if let Ok(mut seg) = url.path_segments_mut() {
            seg.pop_if_empty();
            if self.provider == Provider::AzureDeployments {
                seg.push("deployments").push(self.deployment.as_deref().unwrap_or(model));
            }
            seg.push("chat").push("completions");
        }
        if let Some(v) = self.api_version.as_ref().filter(|_| self.provider.is_azure()) {
            url.query_pairs_mut().append_pair("api-version", v);
        }
        url.to_string()
    }

    /// The headers of every request: the credential in the provider's header (`Authorization: Bearer`, or
    /// Azure's `api-key`), `OpenAI-Organization` / `OpenAI-Project`, then `llm.headers` (which win).
    pub fn request_headers(&self) -> Result<reqwest::header::HeaderMap, String> {
        use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
        let mut h = HeaderMap::new();
        let secret_value = |v: &str| -> Result<HeaderValue, String> {
            let mut v = HeaderValue::from_str(v)
                .map_err(|_| "the API key holds characters a header cannot carry".to_string())?;
            v.set_sensitive(true);
            Ok(v)
        };
        if let Some(k) = self.secret.expose() {
            if self.provider.is_azure() && !self.azure_ad {
                h.insert("api-key", secret_value(k)?);
            } else {
                h.insert(reqwest::header::AUTHORIZATION, secret_value(&format!("Bearer {k}"))?);
            }
        }
        for (name, v) in [("openai-organization", &self.organization), ("openai-project", &self.project)] {
            if let Some(v) = v {
                let v =
                    HeaderValue::from_str(v).map_err(|_| format!("llm.{}: not a valid header value", &name[7..]))?;
                h.insert(name, v);
            }
        }
        for (k, v) in &self.headers {
            let name =
                HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("llm.headers: '{k}' is not a header name"))?;
            let mut v = HeaderValue::from_str(v).map_err(|_| format!("llm.headers.{k}: not a valid header value"))?;
            v.set_sensitive(self.secret_headers.contains(k));
            h.insert(name, v);
        }
        Ok(h)
    }

    /// Whether `llm.headers` carries the credential itself (then no key is needed).
    pub fn headers_authenticate(&self) -> bool {
        self.headers.iter().any(|(k, _)| {
            let k = k.to_ascii_lowercase();
            ["auth", "key", "token"].iter().any(|w| k.contains(w))
        })
    }

    /// The settings as a script may see them (the key only as "set" / masked).
    pub fn to_json(&self) -> Value {
        let headers: serde_json::Map<String, Value> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let v = if self.secret_headers.contains(k) { "***".to_string() } else { self.mask(v) };
                (k.clone(), Value::String(v))
            })
            .collect();
        json!({
            "provider": if self.provider.is_azure() { "azure" } else { "openai" },
            "azure_api": match self.provider {
                Provider::AzureDeployments => Some("deployments"),
                Provider::AzureV1 => Some("v1"),
                Provider::OpenAi => None,
            },
            "chat_url": self.chat_url(&self.model),
            "api_version": self.api_version, "deployment": self.deployment,
            "auth": if !self.secret.is_set() { "none" } else if self.provider.is_azure() && !self.azure_ad { "api-key" } else { "bearer" },
            "reasoning_effort": self.reasoning_effort, "organization": self.organization, "project": self.project,
            "headers": headers,
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

/// What users paste as a URL without its wrapping: a markdown link `[text](url)`, `<url>`, quotes.
fn clean_url(raw: &str) -> String {
    let mut s = raw.trim().to_string();
    if let (Some(open), true) = (s.find("]("), s.ends_with(')')) {
        s = s[open + 2..s.len() - 1].trim().to_string();
    }
    s.trim_matches(|c| c == '<' || c == '>' || c == '"' || c == '\'').trim().to_string()
}

/// An Azure OpenAI base_url: the resource (`https://R.openai.azure.com`), its `/openai`, its v1 API
/// (`/openai/v1`), or a pasted deployment URL (`.../openai/deployments/D[/chat/completions][?api-version=V]`).
/// Returns the base (`…/openai` or `…/openai/v1`), the form, and the deployment and api-version the URL
/// names.
pub fn azure_base_url(raw: &str) -> Result<(String, Provider, Option<String>, Option<String>), String> {
    let s = clean_url(raw);
    if !s.contains("://") {
        return Err(format!("llm.base_url '{s}' is not a URL (expected https://RESOURCE.openai.azure.com)"));
    }
    let mut url = reqwest::Url::parse(&s).map_err(|e| format!("llm.base_url '{s}' is not a valid URL: {e}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("llm.base_url '{s}' must use http or https"));
    }
    let version = url.query_pairs().find(|(k, _)| k == "api-version").map(|(_, v)| v.into_owned());
    url.set_query(None);
    url.set_fragment(None);
    let segs: Vec<String> =
        url.path_segments().map(|p| p.filter(|s| !s.is_empty()).map(str::to_string).collect()).unwrap_or_default();
    let mut segs = segs;
    for tail in [["chat", "completions"].as_slice(), ["completions"].as_slice()] {
        if segs.ends_with(&tail.iter().map(|s| s.to_string()).collect::<Vec<_>>()) {
            segs.truncate(segs.len() - tail.len());
        }
    }
    // a pasted deployment URL keeps what comes before `deployments` as it is (an API gateway may serve
    // Azure's API under another prefix); a resource URL gets `/openai`, as Azure's SDKs add it
    let (form, deployment) = if let Some(i) = segs.iter().position(|s| s == "deployments") {
        let d = segs.get(i + 1).map(|d| percent_encoding::percent_decode_str(d).decode_utf8_lossy().into_owned());
        segs.truncate(i);
        (Provider::AzureDeployments, d)
    } else if segs.last().is_some_and(|s| s == "v1") {
        (Provider::AzureV1, None)
    } else {
        if segs.last().is_none_or(|s| s != "openai") {
            segs.push("openai".into());
        }
        (Provider::AzureDeployments, None)
    };
    url.set_path(&segs.join("/"));
    Ok((url.to_string().trim_end_matches('/').to_string(), form, deployment, version))
}

/// Accept what users paste as base_url: with or without `/v1`, a trailing slash, the full
/// `/chat/completions` URL, a markdown link `[text](url)` or `<url>`.
pub fn normalize_base_url(raw: &str) -> Result<String, String> {
    let s = clean_url(raw);
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
