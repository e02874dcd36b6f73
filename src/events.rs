//! The event log of a trial: one JSON object per line (`events.jsonl`), appended as things happen,
//! so a run can be audited, replayed and compared. Every LLM exchange, cell run and fix round lands here.
//! It must never hold the API key: callers pass already masked data.
//!
//! Each line is written whole or not at all (a full disk cuts the file back to the last whole line),
//! never through a symlink the notebook put in its place, and a failure is reported once, not once
//! per event: logging is never fatal and never floods the terminal.

use std::path::PathBuf;
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::secret::Secret;

#[derive(Default)]
pub struct EventLog {
    path: Mutex<Option<PathBuf>>,
    /// The API key, masked out of every line as a last line of defence (a script may log anything).
    secret: Secret,
    /// Serializes writers (coroutines of one run share the log) and remembers whether the current
    /// failure was reported, so a full disk gives one warning until a line is written again.
    failing: Mutex<bool>,
    /// What the LLM calls logged here used.
    usage: Mutex<SinkUsage>,
}

/// Tokens, calls, seconds and money of the LLM calls that logged to one event log (one trial).
#[derive(Debug, Clone, Copy, Default)]
pub struct SinkUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub calls: u64,
    pub latency: f64,
    /// What the priced calls cost (per the price table).
    pub cost: f64,
    /// Calls that used tokens of a model with no price (not in `cost`).
    pub unpriced: u64,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog").field("path", &self.path()).finish_non_exhaustive()
    }
}

impl EventLog {
    /// Direct events to `path` (None stops logging).
    pub fn set_path(&self, path: Option<PathBuf>) {
        *self.path.lock().unwrap_or_else(|e| e.into_inner()) = path;
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }

    /// The same log under its trial's new (archived) name: it keeps its state, so a failure already
    /// reported is not reported again.
    pub fn move_to(&self, path: PathBuf) {
        *self.path.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
    }

    /// A log that masks `secret` out of every line.
    pub fn new(secret: Secret) -> EventLog {
        EventLog { secret, ..Default::default() }
    }

    /// Count one LLM attempt that logged here (`cost` None: the model has no price).
    pub fn add_usage(&self, prompt: u64, completion: u64, latency: f64, cost: Option<f64>) {
        let mut u = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        u.prompt_tokens += prompt;
        u.completion_tokens += completion;
        u.calls += 1;
        u.latency += latency;
        match cost {
            Some(c) => u.cost += c,
            None if prompt + completion > 0 => u.unpriced += 1,
            None => {}
        }
    }

    /// What the LLM calls that logged here used.
    pub fn usage(&self) -> SinkUsage {
        *self.usage.lock().unwrap_or_else(|e| e.into_inner())
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
        let mut line = match serde_json::to_string(&obj) {
            // JSON leaves U+2028/U+2029 raw inside strings; a reader splitting on them (Python's
            // str.splitlines) would cut the line: escaped, as JSON allows.
            Ok(l) => self.secret.mask(&l).replace('\u{2028}', "\\u2028").replace('\u{2029}', "\\u2029"),
            Err(e) => return tracing::warn!("event log: {e}"),
        };
        line.push('\n');
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        let res =
            crate::files::open_append_nofollow(&path).and_then(|f| crate::files::append_whole(&f, line.as_bytes()));
        match res {
            Ok(()) => *failing = false,
            Err(e) if !*failing => {
                *failing = true;
                let why = if e.raw_os_error() == Some(libc::ELOOP) {
                    "it is a symbolic link, which is never written through".to_string()
                } else {
                    e.to_string()
                };
                crate::ui::eline(&format!(
                    "warning: cannot append to the event log {}: {why} (events are dropped until a write succeeds)",
                    path.display()
                ));
            }
            Err(_) => {}
        }
    }
}
