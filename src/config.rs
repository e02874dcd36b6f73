//! The phase-2 config file (`generate_execution_config.json`), loaded as users have it.
//!
//! The whole document is kept as JSON (`Config::value`, unknown sections included) after `${name}`
//! expansion and path resolution, and the sections the host itself needs are also parsed into typed
//! structs. Loading must never lose a key a user wrote.
//!
//! NOTE (skeleton): expansion, defaults, path resolution and precise error messages are filled in by
//! the host issue; the typed structs below are the interface other modules rely on.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The loaded config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file (absolute).
    pub path: PathBuf,
    /// Its folder: relative paths in the file resolve against it.
    pub dir: PathBuf,
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
    /// Never printed: use `crate::llm::mask` for anything that may show it.
    #[serde(skip_serializing)]
    pub api_key: Option<String>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    /// Seconds per request.
    pub timeout: f64,
    /// Extra keys (budgets, record/replay, concurrency...) kept for the llm module to read.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
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

/// Load a config file. Errors name the file and, where it applies, line:column or the key path.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    let value: Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    from_value(path, value)
}

/// Build a `Config` from an already parsed document.
pub fn from_value(path: &Path, value: Value) -> anyhow::Result<Config> {
    let path = std::path::absolute(path)?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let section = |k: &str| value.get(k).cloned().unwrap_or(Value::Object(Default::default()));
    Ok(Config {
        dataset_name: value.get("dataset_name").and_then(Value::as_str).unwrap_or("").to_string(),
        paths: serde_json::from_value(section("paths"))?,
        llm: serde_json::from_value(section("llm"))?,
        experiment: serde_json::from_value(section("experiment"))?,
        prompt_branch: serde_json::from_value(section("prompt_branch"))?,
        exec: serde_json::from_value(section("exec"))?,
        path,
        dir,
        value,
    })
}
