//! Running one cell: send the `execute_request`, then gather iopub and shell messages for it until
//! both its `execute_reply` and its iopub `idle` have arrived, while watching for a timeout, a dead
//! kernel and Ctrl-C. Outputs are built as nbclient builds them ([`crate::kernel::outputs`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jupyter_protocol::{ExecuteRequest, JupyterMessage};
use serde_json::Value;

use super::{wait_exit, LocalKernel, IOPUB_GRACE};
use crate::kernel::outputs::{strip_ansi, timing_map, OutputBuilder};
use crate::kernel::{ExecOptions, ExecResult, ExecStatus, ExitInfo, KernelError};

impl LocalKernel {
    pub async fn execute(&mut self, code: &str, mut opts: ExecOptions<'_>) -> Result<ExecResult> {
        let started = Instant::now();
        let Some(p) = self.proc.as_mut() else {
            return Ok(ExecResult::failed(ExecStatus::Dead, "the kernel is not running (call k:restart())", started));
        };
        if let Some(e) = p.exited() {
            return Ok(ExecResult {
                exit: Some(e.clone()),
                ..ExecResult::failed(
                    ExecStatus::Dead,
                    &format!("the kernel is not running: it {}", e.describe()),
                    started,
                )
            });
        }
        // Late messages of earlier requests are of no use now.
        while p.iopub_rx.try_recv().is_ok() {}
        while p.shell_rx.try_recv().is_ok() {}
        let req = JupyterMessage::new(
            ExecuteRequest {
                code: code.to_string(),
                silent: opts.silent,
                store_history: !opts.silent,
                user_expressions: None,
                allow_stdin: false,
                stop_on_error: !opts.allow_errors,
            },
            None,
        );
        let id = req.header.msg_id.clone();
        match p.shell.as_mut() {
            Some(s) => s.send(req).await?,
            None => {
                return Ok(ExecResult::failed(
                    ExecStatus::Dead,
                    "the kernel is not running (call k:restart())",
                    started,
                ))
            }
        }
        let mut ob = OutputBuilder::default();
        let mut timing: HashMap<&'static str, String> = HashMap::new();
        let mut reply: Option<Value> = None;
        let mut idle = false;
        let mut count: Option<i64> = None;
        let timeout_at = opts.timeout.map(|t| started + t);
        let mut grace_at: Option<Instant> = None;
        let far = started + Duration::from_secs(86400 * 365);
        let mut dead: Option<ExitInfo> = None;
        // When the execute_reply came but the iopub `idle` never does (a dropped iopub message), the cell
        // is still done: wait IOPUB_GRACE for it, as nbclient's iopub_timeout does, never forever.
        let mut reply_at: Option<Instant> = None;
        while !(reply.is_some() && idle) {
            let wake = grace_at.or(timeout_at).unwrap_or(far);
            let idle_by = reply_at.map_or(far, |t| t + IOPUB_GRACE);
            tokio::select! {
                biased;
                m = p.iopub_rx.recv() => {
                    let Some(m) = m else { dead = Some(wait_exit(p).await); break };
                    if m.parent_id.as_deref() != Some(id.as_str()) { continue }
                    match m.msg_type.as_str() {
                        "status" => {
                            match m.content.get("execution_state").and_then(Value::as_str) {
                                Some("idle") => { idle = true; if let Some(d) = m.date { timing.insert("iopub.status.idle", d); } }
                                Some("busy") => if let Some(d) = m.date { timing.insert("iopub.status.busy", d); },
                                _ => {}
                            }
                        }
                        "execute_input" => {
                            count = m.content.get("execution_count").and_then(Value::as_i64).or(count);
                            if let Some(d) = m.date { timing.insert("iopub.execute_input", d); }
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
                                ob.handle(t, m.content);
                            } else if let Some(i) = ob.handle(t, m.content) {
                                if let Some(cb) = opts.on_output.as_mut() {
                                    if let Some(o) = ob.outputs.get(i) { cb(o, t) }
                                }
                            }
                        }
                    }
                }
                m = p.shell_rx.recv() => {
                    let Some(m) = m else { dead = Some(wait_exit(p).await); break };
                    if m.parent_id.as_deref() == Some(id.as_str()) && m.msg_type == "execute_reply" {
                        if let Some(d) = m.date { timing.insert("shell.execute_reply", d); }
                        count = m.content.get("execution_count").and_then(Value::as_i64).or(count);
                        reply = Some(m.content);
                        reply_at = Some(Instant::now());
                    }
                }
                _ = tokio::time::sleep_until(idle_by.into()), if reply_at.is_some() => {
                    tracing::warn!("the kernel replied but sent no idle status within {IOPUB_GRACE:?}; taking the cell as done");
                    break;
                }
                _ = p.exit_rx.changed() => {
                    // Outputs already sent may still be in flight: collect them briefly.
                    let until = Instant::now() + Duration::from_millis(50);
                    while let Ok(Some(m)) = tokio::time::timeout_at(until.into(), p.iopub_rx.recv()).await {
                        if m.parent_id.as_deref() == Some(id.as_str()) {
                            ob.handle(&m.msg_type.clone(), m.content);
                        }
                    }
                    dead = p.exited();
                    break;
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    if grace_at.is_none() {
                        tracing::debug!("cell timed out; interrupting the kernel");
                        let _ = self.shared.interrupt().await;
                        grace_at = Some(Instant::now() + self.opts.interrupt_grace);
                    } else {
                        // The kernel ignored the interrupt: kill it and start a fresh one.
                        let mut r = ExecResult::failed(ExecStatus::Timeout, "", started);
                        r.outputs = ob.finish();
                        r.execution_count = count;
                        r.timing = timing_map(&timing);
                        r.ename = Some("CellTimeoutError".into());
                        r.evalue = Some(format!(
                            "the cell did not finish within {:.1} s and ignored the interrupt; the kernel was restarted (its state is lost)",
                            opts.timeout.unwrap_or_default().as_secs_f64()
                        ));
                        r.message = r.evalue.clone();
                        r.restarted = true;
                        self.restart().await.context("restarting the kernel after a timeout")?;
                        r.duration = started.elapsed().as_secs_f64();
                        return Ok(r);
                    }
                }
                _ = crate::signals::token().cancelled() => {
                    let _ = self.shared.interrupt().await;
                    // keep what the cell printed so far: the caller may still save it
                    let mut r = ExecResult::failed(ExecStatus::Error, "interrupted (Ctrl-C)", started);
                    r.outputs = ob.finish();
                    r.execution_count = count;
                    r.timing = timing_map(&timing);
                    r.ename = Some("KeyboardInterrupt".into());
                    r.evalue = Some("interrupted (Ctrl-C)".into());
                    bail!(KernelError::InterruptedCell(Box::new(r)));
                }
            }
        }
        let mut r = ExecResult::failed(ExecStatus::Ok, "", started);
        r.message = None;
        r.execution_count = count;
        r.timing = timing_map(&timing);
        let built = ob.finish_all();
        let outputs = built.outputs;
        r.display_ids = built.display_ids;
        r.display_updates = built.display_updates;
        if let Some(e) = dead {
            p.disconnect();
            *self.shared.control.lock().await = None;
            // The pid may be reused by another process: never signal it again.
            *self.shared.pid.lock().unwrap_or_else(|e| e.into_inner()) = None;
            r.status = ExecStatus::Dead;
            let tail = p.log_tail(5);
            let mut msg = format!("the kernel died: it {}", e.describe());
            if !tail.is_empty() {
                msg.push_str(&format!("; its last output:\n{tail}"));
            }
            r.ename = Some("DeadKernelError".into());
            r.evalue = Some(msg.clone());
            r.message = Some(msg);
            r.exit = Some(e);
            r.outputs = outputs;
            r.duration = started.elapsed().as_secs_f64();
            return Ok(r);
        }
        let reply = reply.unwrap_or(Value::Null);
        let status = reply.get("status").and_then(Value::as_str).unwrap_or("ok");
        if status != "ok" || grace_at.is_some() {
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
            if grace_at.is_some() {
                r.status = ExecStatus::Timeout;
                let secs = opts.timeout.unwrap_or_default().as_secs_f64();
                r.message = Some(format!("the cell did not finish within {secs:.1} s and was interrupted"));
                r.ename = Some("CellTimeoutError".into());
                r.evalue = r.message.clone();
            }
        }
        r.outputs = outputs;
        r.duration = started.elapsed().as_secs_f64();
        Ok(r)
    }
}
