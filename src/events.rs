//! The event log of a trial: one JSON object per line (`events.jsonl`), appended as things happen,
//! so a run can be audited, replayed and compared. Every LLM exchange, cell run and fix round lands here.
//! It must never hold the API key: callers pass already masked data.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use serde_json::{json, Value};

#[derive(Default)]
pub struct EventLog {
    path: Mutex<Option<PathBuf>>,
    /// The API key, masked out of every line as a last line of defence (a script may log anything).
    secret: Mutex<Option<String>>,
}

impl EventLog {
    /// Direct events to `path` (None stops logging).
    pub fn set_path(&self, path: Option<PathBuf>) {
        *self.path.lock().unwrap_or_else(|e| e.into_inner()) = path;
    }

    /// The key to mask out of every event (set by the LLM engine).
    pub fn set_secret(&self, key: Option<String>) {
        *self.secret.lock().unwrap_or_else(|e| e.into_inner()) = key;
    }

    pub fn path(&self) -> Option<PathBuf> {
        self.path.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Append one event `{"ts", "kind", ...fields}`. Logging failures are reported, never fatal.
    pub fn emit(&self, kind: &str, fields: Value) {
        let Some(path) = self.path() else { return };
        let mut obj = json!({"ts": chrono::Local::now().to_rfc3339(), "kind": kind});
        if let (Some(o), Value::Object(f)) = (obj.as_object_mut(), fields) {
            o.extend(f);
        }
        let line = match serde_json::to_string(&obj) {
            Ok(l) => crate::llm::mask(&l, self.secret.lock().unwrap_or_else(|e| e.into_inner()).as_deref()),
            Err(e) => return tracing::warn!("event log: {e}"),
        };
        let res =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = res {
            tracing::warn!("event log {}: {e}", path.display());
        }
    }
}
