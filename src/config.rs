//! The phase-2 config file (`generate_execution_config.json`), loaded as users have it.
//!
//! The whole document is kept as JSON (`Config::value`, unknown sections included) after `${name}`
//! expansion and path resolution, and the sections the host itself needs are also parsed into typed
//! structs. Loading must never lose a key a user wrote.
//!
//! Order of work: parse (syntax errors give `file:line:column`), expand `${name}` in every string (the
//! config's own top-level scalars first, then the environment; unknown names stay as written, because
//! prompt text like `${cuda_device_str}` is expanded later by the pipeline), check the types of the
//! keys the host knows (errors name the key path and, when it can be found, the line), resolve relative
//! paths against the current folder (as the Python original did, and as CellScientist's runner relies on:
//! its merged config lives in `_pipeline_cache/` and holds paths meant from the phase folder), and fill
//! in defaults. `${config_dir}` is the config file's folder, for configs that want paths relative to
//! themselves. The API key is kept only in the typed
//! `LlmConfig`; it is removed from `value`, so a script can never print or log it by dumping the config.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::template::expand;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The loaded config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file (absolute).
    pub path: PathBuf,
    /// Its folder (what `${config_dir}` expands to).
    pub dir: PathBuf,
    /// The folder relative paths resolved against: the current folder when the config was loaded.
    pub base: PathBuf,
    /// The whole document after expansion, path resolution and defaults; unknown sections kept.
    pub value: Value,
    pub dataset_name: String,
    pub paths: PathsConfig,
    pub llm: LlmConfig,
    pub experiment: ExperimentConfig,
    pub prompt_branch: PromptBranchConfig,
    pub exec: ExecConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PathsConfig {
    pub baseline_source_dir: Option<String>,
    pub stage1_analysis_dir: Option<String>,
    pub design_execution_root: Option<String>,
    pub literature_dir: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LlmConfig {
    pub model: String,
    pub base_url: String,
    /// Never printed: the host wraps it in a `crate::secret::Secret`, which masks it.
    #[serde(skip_serializing)]
    pub api_key: Option<String>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    /// Seconds per request.
    pub timeout: f64,
    /// Extra keys (budgets, record/replay, concurrency...) kept for the llm module to read.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
    /// Names of the `llm.headers` whose values are secrets (taken from the environment with `${VAR}`, or
    /// credentials by their name): masked like the key, and shown to scripts as `***`.
    #[serde(skip)]
    pub secret_headers: Vec<String>,
}

/// Whether a `llm.headers` value is a secret: it came from the environment (`${VAR}` as written), or
/// its header carries credentials by its name (Authorization, api-key, X-…-Token...).
pub fn is_secret_header(name: &str, raw: &str) -> bool {
    let n = name.to_ascii_lowercase();
    raw.contains("${") || ["auth", "key", "token", "secret", "cookie", "password"].iter().any(|w| n.contains(w))
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            model: "gpt-4o-mini".into(),
            base_url: "https://api.openai.com/v1".into(),
            api_key: None,
            max_tokens: None,
            temperature: None,
            timeout: 600.0,
            extra: Default::default(),
            secret_headers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ExperimentConfig {
    pub primary_metric: String,
    pub max_iterations: u64,
    pub success_threshold: f64,
    /// "higher" or "lower"; None = inferred from the metric name (MSE, RMSE, MAE, loss: lower).
    pub direction: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        ExperimentConfig {
            primary_metric: "PCC".into(),
            max_iterations: 3,
            success_threshold: 0.0,
            direction: None,
            extra: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PromptBranchConfig {
    pub prompt_file: Option<String>,
    pub idea_file: Option<String>,
    pub save_root: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u64>,
    pub strict_json_only: bool,
    pub json_retries: u64,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl Default for PromptBranchConfig {
    fn default() -> Self {
        PromptBranchConfig {
            prompt_file: None,
            idea_file: None,
            save_root: None,
            temperature: None,
            max_tokens: None,
            strict_json_only: true,
            json_retries: 2,
            extra: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecConfig {
    pub timeout_seconds: f64,
    pub max_fix_rounds: u64,
    pub enable_llm_autofix: bool,
    pub enable_hypergraph_viz: bool,
    pub viz_format: String,
    pub cuda_device_id: i64,
    /// Kernel to run notebooks in (a kernelspec name).
    pub kernel_name: String,
    /// Packages installed into a kernel venv that cellsci provisions itself.
    pub kernel_packages: Vec<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            timeout_seconds: 3600.0,
            max_fix_rounds: 3,
            enable_llm_autofix: true,
            enable_hypergraph_viz: true,
            viz_format: "mermaid".into(),
            cuda_device_id: 0,
            kernel_name: "python3".into(),
            kernel_packages: Vec::new(),
            extra: Default::default(),
        }
    }
}

/// What a known key must hold. Numbers written as numeric strings ("5") are accepted and converted,
/// as the original's `int(...)`/`float(...)` did; `null` counts as missing.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Num,
    UInt,
    Int,
    Bool,
    StrList,
    /// A whole number >= 1 (a count that cannot be zero: `search.branches`).
    Pos,
    /// A number from 0 to 1 (a probability).
    Prob,
    /// One of a few words.
    OneOf(&'static [&'static str]),
    /// A list of whole numbers >= 0 (GPU ids); a single number counts as a list of one.
    UIntList,
    /// A mapping of string to string (`exec.gateway_paths`).
    StrMap,
    /// HTTP headers: a mapping of valid header names to valid header values (`llm.headers`).
    Headers,
}

/// The keys the host reads, with their types. Keys not listed are kept as written.
const SCHEMA: &[(&str, &str, Kind)] = &[
    ("paths", "baseline_source_dir", Kind::Str),
    ("paths", "stage1_analysis_dir", Kind::Str),
    ("paths", "design_execution_root", Kind::Str),
    ("paths", "literature_dir", Kind::Str),
    ("llm", "model", Kind::Str),
    ("llm", "base_url", Kind::Str),
    ("llm", "api_key", Kind::Str),
    ("llm", "max_tokens", Kind::UInt),
    ("llm", "temperature", Kind::Num),
    ("llm", "timeout", Kind::Num),
    ("llm", "provider", Kind::OneOf(&["openai", "azure"])),
    ("llm", "api_version", Kind::Str),
    ("llm", "deployment", Kind::Str),
    ("llm", "azure_ad_token", Kind::Str),
    ("llm", "reasoning_effort", Kind::Str),
    ("llm", "organization", Kind::Str),
    ("llm", "project", Kind::Str),
    ("llm", "headers", Kind::Headers),
    ("experiment", "primary_metric", Kind::Str),
    ("experiment", "max_iterations", Kind::UInt),
    ("experiment", "success_threshold", Kind::Num),
    ("experiment", "direction", Kind::Str),
    ("experiment", "criterion", Kind::Str),
    ("experiment", "alpha", Kind::Num),
    ("experiment", "confirm_seeds", Kind::UInt),
    ("prompt_branch", "prompt_file", Kind::Str),
    ("prompt_branch", "idea_file", Kind::Str),
    ("prompt_branch", "save_root", Kind::Str),
    ("prompt_branch", "temperature", Kind::Num),
    ("prompt_branch", "max_tokens", Kind::UInt),
    ("prompt_branch", "strict_json_only", Kind::Bool),
    ("prompt_branch", "json_retries", Kind::UInt),
    ("exec", "timeout_seconds", Kind::Num),
    ("exec", "max_fix_rounds", Kind::UInt),
    ("exec", "enable_llm_autofix", Kind::Bool),
    ("exec", "enable_hypergraph_viz", Kind::Bool),
    ("exec", "viz_format", Kind::Str),
    ("exec", "cuda_device_id", Kind::Int),
    ("exec", "kernel_name", Kind::Str),
    ("exec", "kernel_packages", Kind::StrList),
    ("exec", "transport", Kind::Str),
    ("exec", "gpus", Kind::UIntList),
    ("exec", "gateway_url", Kind::Str),
    ("exec", "gateway_token", Kind::Str),
    ("exec", "gateway_paths", Kind::StrMap),
    ("exec", "gateway_reconnect_timeout", Kind::Num),
    ("exec", "gateway_kind", Kind::OneOf(&["auto", "kernel", "enterprise"])),
    ("exec", "gateway_username", Kind::Str),
    ("exec", "gateway_hosts", Kind::StrList),
    ("exec", "local_slots", Kind::UInt),
    ("exec", "max_output_bytes", Kind::UInt),
    ("search", "strategy", Kind::Str),
    ("search", "branches", Kind::Pos),
    ("search", "drafts", Kind::UInt),
    ("search", "max_debug_depth", Kind::UInt),
    ("search", "debug_prob", Kind::Prob),
    ("search", "max_nodes", Kind::UInt),
    ("search", "time_limit", Kind::Num),
    ("search", "on_success", Kind::OneOf(&["stop", "finish"])),
    ("search", "feedback", Kind::Bool),
    ("search", "memory", Kind::OneOf(&["off", "lineage", "run"])),
    ("search", "memory_chars", Kind::UInt),
    ("search", "exploration", Kind::Num),
    ("search", "num_children", Kind::Pos),
    ("search", "population", Kind::Pos),
    ("search", "crossover_prob", Kind::Prob),
    ("search", "seed", Kind::Int),
];

/// The highest GPU id a config may name: a typo (`1000` for `0`) fails the config check, not a kernel.
const MAX_GPU_ID: f64 = 63.0;

/// The sections the host reads; each must be an object when present.
const SECTIONS: &[&str] = &["paths", "llm", "experiment", "prompt_branch", "exec", "search"];

/// Keys (in any section, at any depth) whose string values are paths: besides every string in `paths`.
const PATH_SUFFIXES: &[&str] = &["_dir", "_file", "_root", "_path"];

impl Config {
    /// A value by dotted key path (`"exec.max_fix_rounds"`), after expansion and defaults.
    pub fn get(&self, dotted: &str) -> Option<&Value> {
        dotted.split('.').try_fold(&self.value, |v, k| v.get(k))
    }

    /// Where trials are written: `prompt_branch.save_root`, else `paths.design_execution_root`, else the
    /// current folder (as the Python original did).
    pub fn save_root(&self) -> PathBuf {
        self.prompt_branch
            .save_root
            .as_deref()
            .or(self.paths.design_execution_root.as_deref())
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::current_dir().unwrap_or_else(|_| self.dir.clone()))
    }
}

/// Load a config file. Errors name the file and, where it applies, line:column or the key path.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let shown = crate::files::display_path(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!("config file not found: {shown}"),
        Err(e) => anyhow::bail!("cannot read config file {shown}: {e}"),
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let value = crate::pyjson::parse(text).map_err(|e| anyhow::anyhow!("{shown}:{}", syntax_error(&e)))?;
    from_text(path, &shown, text, value)
}

/// `line:column: message` of a JSON syntax error (serde_json puts the position at the end).
fn syntax_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let msg = msg.strip_suffix(&suffix).unwrap_or(&msg);
    format!("{}:{}: invalid JSON: {msg}", e.line(), e.column())
}

/// Build a `Config` from an already parsed document.
pub fn from_value(path: &Path, value: Value) -> anyhow::Result<Config> {
    let shown = path.display().to_string();
    from_text(path, &shown, "", value)
}

fn from_text(path: &Path, shown: &str, text: &str, mut value: Value) -> anyhow::Result<Config> {
    let path = crate::files::normalize(&std::path::absolute(path)?);
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = std::env::current_dir().context("cannot read the current folder")?;
    let where_ = |keys: &[&str]| match locate(text, keys) {
        Some(line) => format!("{shown}:{line}"),
        None => shown.to_string(),
    };
    let Value::Object(top) = &value else {
        anyhow::bail!("{shown}: the config must be a JSON object, got {}", describe(&value));
    };
    let vars = top_level_vars(top, &dir);
    // llm.headers as written: which values come from the environment (secrets) and which `${VAR}` is unset
    let raw_headers = value.pointer("/llm/headers").cloned();
    expand_all(&mut value, &vars);
    // Types of the known keys.
    for section in SECTIONS {
        match value.get(*section) {
            None | Some(Value::Object(_)) => {}
            Some(Value::Null) => {
                value.as_object_mut().map(|o| o.remove(*section));
            }
            Some(other) => {
                anyhow::bail!("{}: {section}: expected an object, got {}", where_(&[section]), describe(other))
            }
        }
    }
    if let Some(v) = value.get("dataset_name") {
        if !v.is_string() && !v.is_null() {
            anyhow::bail!("{}: dataset_name: expected a string, got {}", where_(&["dataset_name"]), describe(v));
        }
    }
    for (section, key, kind) in SCHEMA {
        let Some(obj) = value.get_mut(*section).and_then(Value::as_object_mut) else { continue };
        let Some(v) = obj.get(*key) else { continue };
        if v.is_null() {
            obj.remove(*key);
            continue;
        }
        match check(v, *kind) {
            Ok(Some(fixed)) => {
                obj.insert(key.to_string(), fixed);
            }
            Ok(None) => {}
            Err(expected) => {
                // Never echo a secret, even a mistyped one.
                let got = if matches!(*key, "api_key" | "azure_ad_token") {
                    "a value of another type".to_string()
                } else {
                    describe(v)
                };
                anyhow::bail!("{}: {section}.{key}: expected {expected}, got {got}", where_(&[section, key]))
            }
        }
    }
    let secret_headers = check_headers(&value, raw_headers.as_ref(), &where_)?;
    resolve_paths(&mut value, &base);
    let section = |k: &str| value.get(k).cloned().unwrap_or(Value::Object(Default::default()));
    let typed = |k: &str, e: serde_json::Error| anyhow::anyhow!("{}: {k}: {e}", where_(&[k]));
    let mut llm: LlmConfig = serde_json::from_value(section("llm")).map_err(|e| typed("llm", e))?;
    // An empty key, or a `${VAR}` whose variable is not set, is no key (the client then tries OPENAI_API_KEY).
    if llm.api_key.as_deref().is_some_and(|k| k.trim().is_empty() || k.contains("${")) {
        llm.api_key = None;
    }
    llm.secret_headers = secret_headers;
    let cfg = Config {
        dataset_name: value.get("dataset_name").and_then(Value::as_str).unwrap_or("").to_string(),
        paths: serde_json::from_value(section("paths")).map_err(|e| typed("paths", e))?,
        llm,
        experiment: serde_json::from_value(section("experiment")).map_err(|e| typed("experiment", e))?,
        prompt_branch: serde_json::from_value(section("prompt_branch")).map_err(|e| typed("prompt_branch", e))?,
        exec: serde_json::from_value(section("exec")).map_err(|e| typed("exec", e))?,
        path,
        dir,
        base,
        value: Value::Null,
    };
    // Defaults become visible to scripts; the key never does.
    let defaults = [
        ("paths", serde_json::to_value(&cfg.paths)?),
        ("llm", serde_json::to_value(&cfg.llm)?),
        ("experiment", serde_json::to_value(&cfg.experiment)?),
        ("prompt_branch", serde_json::to_value(&cfg.prompt_branch)?),
        ("exec", serde_json::to_value(&cfg.exec)?),
    ];
    let top = value.as_object_mut().expect("checked above");
    for (name, d) in defaults {
        let sec = top.entry(name).or_insert_with(|| Value::Object(Default::default()));
        if let (Some(sec), Value::Object(d)) = (sec.as_object_mut(), d) {
            for (k, v) in d {
                if !v.is_null() && !sec.contains_key(&k) {
                    sec.insert(k, v);
                }
            }
        }
    }
    if let Some(llm) = top.get_mut("llm").and_then(Value::as_object_mut) {
        llm.remove("api_key");
        llm.remove("azure_ad_token");
        if let Some(h) = llm.get_mut("headers").and_then(Value::as_object_mut) {
            for name in &cfg.llm.secret_headers {
                h.insert(name.clone(), Value::String("***".into()));
            }
        }
    }
    // the gateway's token, like the API key, stays in the typed config: scripts never see it
    if let Some(exec) = top.get_mut("exec").and_then(Value::as_object_mut) {
        exec.remove("gateway_token");
    }
    top.entry("dataset_name").or_insert_with(|| Value::String(String::new()));
    Ok(Config { value, ..cfg })
}

/// `llm.headers` after expansion: a `${VAR}` still there names a variable that is not set (an error naming
/// the header: a request without it would be refused, or worse, sent unauthenticated). Returns the
/// names of the headers whose values are secrets.
fn check_headers(
    value: &Value,
    raw: Option<&Value>,
    where_: &dyn Fn(&[&str]) -> String,
) -> anyhow::Result<Vec<String>> {
    static VAR: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let var = VAR.get_or_init(|| regex::Regex::new(r"\$\{([^}]*)\}").expect("valid regex"));
    let Some(h) = value.pointer("/llm/headers").and_then(Value::as_object) else { return Ok(Vec::new()) };
    let mut secret = Vec::new();
    for (name, v) in h {
        let v = v.as_str().unwrap_or_default();
        if let Some(c) = var.captures(v) {
            anyhow::bail!(
                "{}: llm.headers.{name}: ${{{}}} is not set in the environment (nor a top-level key of the config)",
                where_(&["llm", "headers", name]),
                &c[1]
            );
        }
        let written = raw.and_then(|r| r.get(name)).and_then(Value::as_str).unwrap_or(v);
        if is_secret_header(name, written) {
            secret.push(name.clone());
        }
    }
    Ok(secret)
}

/// The values `${name}` can refer to: top-level strings, numbers and booleans, themselves expanded
/// (they may refer to each other and to the environment; a cycle stops after a few rounds).
fn top_level_vars(top: &serde_json::Map<String, Value>, dir: &Path) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = top
        .iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k.clone(), s.clone())),
            Value::Number(n) => Some((k.clone(), n.to_string())),
            Value::Bool(b) => Some((k.clone(), b.to_string())),
            _ => None,
        })
        .collect();
    // `${config_dir}` is the config's folder whatever a top-level key of that name says.
    vars.retain(|(k, _)| k != "config_dir");
    vars.push(("config_dir".to_string(), dir.display().to_string()));
    for _ in 0..8 {
        let snapshot = vars.clone();
        let mut changed = false;
        for (_, v) in vars.iter_mut() {
            let new = expand(v, &snapshot);
            if new != *v {
                *v = new;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    vars
}

fn expand_all(v: &mut Value, vars: &[(String, String)]) {
    match v {
        Value::String(s) if s.contains("${") => *s = expand(s, vars),
        Value::Array(a) => a.iter_mut().for_each(|x| expand_all(x, vars)),
        Value::Object(m) => m.values_mut().for_each(|x| expand_all(x, vars)),
        _ => {}
    }
}

/// Check one value against its kind: Ok(None) fine as is, Ok(Some(v)) converted, Err(what was expected).
fn check(v: &Value, kind: Kind) -> Result<Option<Value>, std::borrow::Cow<'static, str>> {
    let num = |v: &Value| -> Option<f64> {
        match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok().filter(|x| x.is_finite()),
            _ => None,
        }
    };
    match kind {
        Kind::Str => v.is_string().then_some(None).ok_or("a string".into()),
        Kind::Bool => v.is_boolean().then_some(None).ok_or("true or false".into()),
        Kind::Num => match v {
            Value::Number(_) => Ok(None),
            _ => num(v).map(|x| Some(serde_json::json!(x))).ok_or("a number".into()),
        },
        Kind::Prob => {
            let x = num(v).ok_or("a number from 0 to 1")?;
            if !(0.0..=1.0).contains(&x) {
                return Err("a number from 0 to 1".into());
            }
            Ok((!v.is_number()).then(|| serde_json::json!(x)))
        }
        Kind::OneOf(words) => {
            match v.as_str() {
                Some(w) if words.contains(&w) => Ok(None),
                _ => Err(format!("one of {}", words.iter().map(|w| format!("\"{w}\"")).collect::<Vec<_>>().join(", "))
                    .into()),
            }
        }
        Kind::UInt | Kind::Int | Kind::Pos => {
            let expected = match kind {
                Kind::UInt => "a whole number >= 0",
                Kind::Pos => "a whole number >= 1",
                _ => "a whole number",
            };
            let x = num(v).ok_or(expected)?;
            if x.fract() != 0.0
                || (matches!(kind, Kind::UInt) && x < 0.0)
                || (matches!(kind, Kind::Pos) && x < 1.0)
                || x.abs() > 9.0e15
            {
                return Err(expected.into());
            }
            match v {
                Value::Number(n) if n.is_i64() || n.is_u64() => Ok(None),
                _ => Ok(Some(serde_json::json!(x as i64))),
            }
        }
        Kind::Headers => {
            let m = v.as_object().ok_or("a mapping of HTTP header names to strings")?;
            for (k, x) in m {
                if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
                    return Err(format!(
                        "valid HTTP header names ('{}' is not one)",
                        describe(&Value::String(k.clone())).trim_matches('"')
                    )
                    .into());
                }
                match x.as_str() {
                    Some(s) if reqwest::header::HeaderValue::from_str(s).is_ok() => {}
                    Some(_) => {
                        return Err(format!("header values without line breaks or control characters ({k})").into())
                    }
                    None => return Err(format!("string header values ({k} is not a string)").into()),
                }
            }
            Ok(None)
        }
        Kind::StrMap => match v {
            Value::Object(m) if m.values().all(Value::is_string) => Ok(None),
            _ => Err("a mapping of strings (local prefix: gateway prefix)".into()),
        },
        Kind::StrList => match v {
            Value::Array(a) if a.iter().all(Value::is_string) => Ok(None),
            Value::String(s) => Ok(Some(serde_json::json!([s]))),
            _ => Err("a list of strings".into()),
        },
        Kind::UIntList => {
            // GPU ids: each a whole number from 0 to MAX_GPU_ID, no id twice; errors name the element.
            let one = |i: Option<usize>, x: &Value| -> Result<Value, std::borrow::Cow<'static, str>> {
                let at = i.map(|i| format!(" (element {i}: {})", describe(x))).unwrap_or_default();
                let c = check(x, Kind::UInt).map_err(|_| format!("a list of whole numbers >= 0{at}"))?;
                let y = c.unwrap_or_else(|| x.clone());
                if y.as_f64().is_some_and(|g| g > MAX_GPU_ID) {
                    return Err(format!("GPU ids from 0 to {MAX_GPU_ID}{at}").into());
                }
                Ok(y)
            };
            match v {
                Value::Array(a) => {
                    let v = a.iter().enumerate().map(|(i, x)| one(Some(i), x)).collect::<Result<Vec<_>, _>>()?;
                    for (i, g) in v.iter().enumerate() {
                        if v[..i].contains(g) {
                            return Err(format!("a list of distinct GPU ids (element {i}: {g} appears twice)").into());
                        }
                    }
                    Ok((v != *a).then(|| Value::Array(v)))
                }
                x => one(None, x).map(|x| Some(Value::Array(vec![x]))),
            }
        }
    }
}

/// A short rendering of a wrong value for an error message.
fn describe(v: &Value) -> String {
    let s = match v {
        Value::Object(_) => return "an object".into(),
        Value::Array(_) => return "a list".into(),
        Value::Null => return "null".into(),
        other => other.to_string(),
    };
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

/// Resolve relative paths against `dir` (the current folder): every string in `paths`, and any string under a
/// key ending in `_dir`, `_file`, `_root` or `_path` (or a `python` with a slash) in the other sections. `~/` means the home folder;
/// URLs and empty strings are left alone.
fn resolve_paths(value: &mut Value, dir: &Path) {
    let Some(top) = value.as_object_mut() else { return };
    for (name, sec) in top.iter_mut() {
        if name == "paths" {
            if let Some(m) = sec.as_object_mut() {
                for v in m.values_mut() {
                    resolve_one(v, dir);
                }
            }
        } else {
            resolve_in(sec, dir, 0);
        }
    }
}

fn resolve_in(v: &mut Value, dir: &Path, depth: usize) {
    let Some(m) = v.as_object_mut() else { return };
    if depth > 8 {
        return;
    }
    for (k, x) in m.iter_mut() {
        // `python` is a path when it has a slash; a bare `python3` is a command looked up on PATH.
        let python = k == "python" && x.as_str().is_some_and(|s| s.contains('/'));
        if x.is_string() && (python || PATH_SUFFIXES.iter().any(|s| k.ends_with(s))) {
            resolve_one(x, dir);
        } else if x.is_object() {
            resolve_in(x, dir, depth + 1);
        }
    }
}

fn resolve_one(v: &mut Value, dir: &Path) {
    let Value::String(s) = v else { return };
    if s.is_empty() || s.contains("://") {
        return;
    }
    let p = match s.strip_prefix("~/") {
        Some(rest) => match dirs::home_dir() {
            Some(h) => h.join(rest),
            None => return,
        },
        None => PathBuf::from(&*s),
    };
    let p = if p.is_absolute() { p } else { dir.join(p) };
    *s = crate::files::normalize(&p).display().to_string();
}

/// The line of `"a": { ... "b": ...` in the source text, best effort (None when not found, so a
/// message never points at a wrong line it guessed).
fn locate(text: &str, keys: &[&str]) -> Option<usize> {
    let mut from = 0;
    for k in keys {
        let pat = regex::Regex::new(&format!(r#""{}"\s*:"#, regex::escape(k))).ok()?;
        from += pat.find(&text[from..])?.start();
    }
    Some(text[..from].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_leaves_unknown_names_and_stray_dollars() {
        let vars = vec![("dataset_name".to_string(), "BBBC".to_string())];
        assert_eq!(expand("${dataset_name}/x", &vars), "BBBC/x");
        assert_eq!(expand("cuda ${cuda_device_str} $x ${ ${", &vars), "cuda ${cuda_device_str} $x ${ ${");
        assert_eq!(expand("a${dataset_name}${dataset_name}b", &vars), "aBBBCBBBCb");
    }

    #[test]
    fn locate_finds_nested_key_line() {
        let text = "{\n \"llm\": {\"timeout\": 1},\n \"exec\": {\n  \"timeout\": 2\n }\n}";
        assert_eq!(locate(text, &["exec", "timeout"]), Some(4));
        assert_eq!(locate(text, &["nope"]), None);
    }

    #[test]
    fn wrong_type_names_the_key_path() {
        let v = serde_json::json!({"exec": {"max_fix_rounds": "five"}});
        let e = from_value(Path::new("/tmp/c.json"), v).unwrap_err().to_string();
        assert!(e.ends_with("exec.max_fix_rounds: expected a whole number >= 0, got \"five\""), "{e}");
    }
}
