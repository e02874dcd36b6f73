//! What every Lua module can see of the host: the config, where scripts are looked up, the event log,
//! verbosity, record/replay settings. Stored as Lua app data (`HostCtx::get(lua)`).

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::events::EventLog;
use crate::secret::Secret;

pub struct HostCtx {
    /// The loaded config, when there is one (`cellsci script` may run without).
    pub config: Option<Arc<Config>>,
    /// Folders searched for Lua modules before the project's `scripts/`/`stdlib/` and the embedded
    /// copies: the running script's folder and `--scripts DIR`.
    pub user_dirs: Vec<PathBuf>,
    /// The project folder (the current directory): its `scripts/` and `stdlib/` are searched next.
    pub project_dir: PathBuf,
    /// -1 quiet, 0 normal, 1+ verbose.
    pub verbosity: i8,
    /// Show progress bars (stderr is a terminal and not quiet).
    pub progress: bool,
    /// Record every LLM exchange to this cassette.
    pub record: Option<PathBuf>,
    /// Replay LLM exchanges from this cassette instead of the network.
    pub replay: Option<PathBuf>,
    /// The LLM's key (config or `OPENAI_API_KEY`; Azure's key or token) and the section's other secrets,
    /// masked out of everything shown or written.
    pub secret: Secret,
    /// The current trial's event log (shared with the LLM engine).
    pub events: Arc<EventLog>,
}

impl HostCtx {
    pub fn new(config: Option<Arc<Config>>) -> Self {
        let secret = match &config {
            Some(c) => crate::llm::resolve_secret(&c.llm),
            None => Secret::resolve(None),
        };
        HostCtx {
            config,
            user_dirs: Vec::new(),
            project_dir: std::env::current_dir().unwrap_or_default(),
            verbosity: 0,
            progress: false,
            record: None,
            replay: None,
            events: Arc::new(EventLog::new(secret.clone())),
            secret,
        }
    }

    /// The host context of a Lua state (set by `lua::Runtime::new`).
    pub fn get(lua: &mlua::Lua) -> Arc<HostCtx> {
        lua.app_data_ref::<Arc<HostCtx>>().map(|c| c.clone()).expect("HostCtx is set when the runtime is created")
    }

    /// All folders searched for modules, in order: user folders, then the project's scripts/stdlib.
    pub fn search_dirs(&self) -> Vec<PathBuf> {
        let mut v = self.user_dirs.clone();
        for d in ["scripts", "stdlib"] {
            v.push(self.project_dir.join(d));
        }
        v
    }
}
