//! One cell's messages turned into its result, whatever carried them (ZeroMQ sockets of a local kernel,
//! a gateway's WebSocket): a cell is done when both its `execute_reply` and its iopub `idle` have come,
//! in either order; outputs are built as nbclient builds them ([`super::outputs`]). The transports own
//! the waiting (timeouts, deaths, reconnects); this part only counts what arrived.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::outputs::{strip_ansi, timing_map, OutputBuilder};
use super::{ExecOptions, ExecResult, ExecStatus, ExitInfo};

/// A decoded kernel message: what the executor needs, content kept as raw JSON.
#[derive(Debug)]
pub struct Msg {
    pub msg_type: String,
    pub parent_id: Option<String>,
    pub date: Option<String>,
    pub content: Value,
}

/// How long to wait for a cell's iopub `idle` once its execute_reply has arrived (nbclient's
/// iopub_timeout): a dropped idle must not hang the cell.
pub const IOPUB_GRACE: Duration = Duration::from_secs(4);

/// What one running cell has received so far.
pub struct Cell {
    /// The msg_id of its execute_request.
    pub id: String,
    pub started: Instant,
    ob: OutputBuilder,
    timing: HashMap<&'static str, String>,
    reply: Option<Value>,
    idle: bool,
    count: Option<i64>,
    reply_at: Option<Instant>,
}

impl Cell {
    /// `max_output`: what each stream of the cell may keep (bytes; 0: everything), see
    /// [`super::outputs::DEFAULT_MAX_OUTPUT_BYTES`].
    pub fn new(id: String, started: Instant, max_output: usize) -> Cell {
        Cell {
            id,
            started,
            ob: OutputBuilder::with_cap(max_output),
            timing: HashMap::new(),
            reply: None,
            idle: false,
            count: None,
            reply_at: None,
        }
    }

    /// Both the reply and the idle status have come.
    pub fn done(&self) -> bool {
        self.reply.is_some() && self.idle
    }

    /// When to stop waiting for the idle status of a cell that has replied.
    pub fn idle_deadline(&self) -> Option<Instant> {
        self.reply_at.map(|t| t + IOPUB_GRACE)
    }

    fn mine(&self, m: &Msg) -> bool {
        m.parent_id.as_deref() == Some(self.id.as_str())
    }

    /// An iopub message (others' are ignored); `on_output` hears every output created or changed.
    pub fn iopub(&mut self, m: Msg, opts: &mut ExecOptions<'_>) {
        if !self.mine(&m) {
            return;
        }
        match m.msg_type.as_str() {
            "status" => match m.content.get("execution_state").and_then(Value::as_str) {
                Some("idle") => {
                    self.idle = true;
                    if let Some(d) = m.date {
                        self.timing.insert("iopub.status.idle", d);
                    }
                }
                Some("busy") => {
                    if let Some(d) = m.date {
                        self.timing.insert("iopub.status.busy", d);
                    }
                }
                _ => {}
            },
            "execute_input" => {
                self.count = m.content.get("execution_count").and_then(Value::as_i64).or(self.count);
                if let Some(d) = m.date {
                    self.timing.insert("iopub.execute_input", d);
                }
            }
            t => {
                // Streams are merged, so the callback gets the new piece, not the whole text.
                if t == "stream" {
                    if let Some(cb) = opts.on_output.as_mut() {
                        let piece = serde_json::json!({
                            "name": m.content.get("name").cloned().unwrap_or(Value::Null),
                            "output_type": "stream",
                            "text": m.content.get("text").cloned().unwrap_or(Value::Null),
                        });
                        cb(&piece, t);
                    }
                    self.ob.handle(t, m.content);
                } else if let Some(i) = self.ob.handle(t, m.content) {
                    if let Some(cb) = opts.on_output.as_mut() {
                        if let Some(o) = self.ob.outputs.get(i) {
                            cb(o, t)
                        }
                    }
                }
            }
        }
    }

    /// An output that arrived after the kernel died: kept, no callback.
    pub fn late(&mut self, m: Msg) {
        if self.mine(&m) {
            self.ob.handle(&m.msg_type.clone(), m.content);
        }
    }

    /// A shell message (others' are ignored).
    pub fn shell(&mut self, m: Msg) {
        if self.mine(&m) && m.msg_type == "execute_reply" {
            if let Some(d) = m.date {
                self.timing.insert("shell.execute_reply", d);
            }
            self.count = m.content.get("execution_count").and_then(Value::as_i64).or(self.count);
            self.reply = Some(m.content);
            self.reply_at = Some(Instant::now());
        }
    }

    /// Whether the reply has come (the kernel finished the cell).
    pub fn replied(&self) -> bool {
        self.reply.is_some()
    }

    /// What the cell produced so far, as a result of `status` with `ename`/`evalue` (a cut-short cell:
    /// Ctrl-C, a timeout that restarted the kernel).
    pub fn cut(self, status: ExecStatus, ename: &str, evalue: String) -> ExecResult {
        let mut r = ExecResult::failed(status, "", self.started);
        r.execution_count = self.count;
        r.timing = timing_map(&self.timing);
        r.outputs = self.ob.finish();
        r.ename = Some(ename.into());
        r.message = Some(evalue.clone());
        r.evalue = Some(evalue);
        r
    }

    /// The cell ended with its kernel: status `dead`, `message` saying how, the outputs it had made.
    pub fn dead(self, message: String, exit: Option<ExitInfo>) -> ExecResult {
        let mut r = self.finish(None);
        r.status = ExecStatus::Dead;
        r.ename = Some("DeadKernelError".into());
        r.evalue = Some(message.clone());
        r.message = Some(message);
        r.traceback = Vec::new();
        r.exit = exit;
        r
    }

    /// The result of a cell that ended: ok or error from its reply; `timed_out` (the timeout it had)
    /// when it was interrupted for running too long.
    pub fn finish(self, timed_out: Option<Duration>) -> ExecResult {
        let mut r = ExecResult::failed(ExecStatus::Ok, "", self.started);
        r.execution_count = self.count;
        r.timing = timing_map(&self.timing);
        let built = self.ob.finish_all();
        r.display_ids = built.display_ids;
        r.display_updates = built.display_updates;
        let outputs = built.outputs;
        let reply = self.reply.unwrap_or(Value::Null);
        let status = reply.get("status").and_then(Value::as_str).unwrap_or("ok");
        if status != "ok" || timed_out.is_some() {
            let last_err = outputs.iter().rev().find(|o| o.get("output_type").and_then(Value::as_str) == Some("error"));
            let pick = |k: &str| -> Option<Value> {
                reply.get(k).filter(|v| !v.is_null()).cloned().or_else(|| last_err.and_then(|o| o.get(k).cloned()))
            };
            r.status = ExecStatus::Error;
            r.ename = pick("ename").and_then(|v| v.as_str().map(String::from));
            r.evalue = pick("evalue").and_then(|v| v.as_str().map(String::from));
            r.traceback = pick("traceback")
                .and_then(|v| v.as_array().cloned())
                .map(|a| a.iter().filter_map(Value::as_str).map(strip_ansi).collect())
                .unwrap_or_default();
            if status == "aborted" {
                r.ename.get_or_insert_with(|| "ExecutionAborted".into());
            }
            if let Some(t) = timed_out {
                r.status = ExecStatus::Timeout;
                r.message =
                    Some(format!("the cell did not finish within {:.1} s and was interrupted", t.as_secs_f64()));
                r.ename = Some("CellTimeoutError".into());
                r.evalue = r.message.clone();
            }
        }
        r.outputs = outputs;
        r.duration = self.started.elapsed().as_secs_f64();
        r
    }
}

/// The evalue of a timed-out cell whose kernel ignored the interrupt and was restarted.
pub fn restarted_after_timeout(timeout: Option<Duration>) -> String {
    format!(
        "the cell did not finish within {:.1} s and ignored the interrupt; the kernel was restarted (its state is lost)",
        timeout.unwrap_or_default().as_secs_f64()
    )
}
