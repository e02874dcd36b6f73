//! Running one cell: send the `execute_request`, then hand iopub and shell messages to a
//! [`Cell`] until it is done, while watching for a timeout, a dead kernel and Ctrl-C.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jupyter_protocol::{ExecuteRequest, JupyterMessage};

use super::{wait_exit, LocalKernel};
use crate::kernel::cell::{restarted_after_timeout, Cell};
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
        let mut cell = Cell::new(req.header.msg_id.clone(), started, opts.max_output_bytes);
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
        let timeout_at = opts.timeout.map(|t| started + t);
        let mut grace_at: Option<Instant> = None;
        let far = started + Duration::from_secs(86400 * 365);
        let mut dead: Option<ExitInfo> = None;
        while !cell.done() {
            let wake = grace_at.or(timeout_at).unwrap_or(far);
            let idle_by = cell.idle_deadline();
            // Ctrl-C and the cell's timeout first: a cell printing without end keeps a message always
            // ready, and must not keep them from firing.
            tokio::select! {
                biased;
                _ = crate::signals::token().cancelled() => {
                    let _ = self.shared.interrupt().await;
                    // keep what the cell printed so far: the caller may still save it
                    let r = cell.cut(ExecStatus::Error, "KeyboardInterrupt", "interrupted (Ctrl-C)".into());
                    bail!(KernelError::InterruptedCell(Box::new(r)));
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    if grace_at.is_none() {
                        tracing::debug!("cell timed out; interrupting the kernel");
                        let _ = self.shared.interrupt().await;
                        grace_at = Some(Instant::now() + self.opts.interrupt_grace);
                    } else if cell.replied() {
                        // The interrupt worked (the reply came): what it printed before is still
                        // arriving; the idle status (or IOPUB_GRACE) ends the cell.
                        grace_at = Some(far);
                    } else {
                        // The kernel ignored the interrupt: kill it and start a fresh one.
                        let mut r = cell.cut(ExecStatus::Timeout, "CellTimeoutError", restarted_after_timeout(opts.timeout));
                        r.restarted = true;
                        self.restart().await.context("restarting the kernel after a timeout")?;
                        r.duration = started.elapsed().as_secs_f64();
                        return Ok(r);
                    }
                }
                m = p.iopub_rx.recv() => {
                    let Some(m) = m else { dead = Some(wait_exit(p).await); break };
                    cell.iopub(m, &mut opts);
                }
                m = p.shell_rx.recv() => {
                    let Some(m) = m else { dead = Some(wait_exit(p).await); break };
                    cell.shell(m);
                }
                _ = tokio::time::sleep_until(idle_by.unwrap_or(far).into()), if idle_by.is_some() => {
                    tracing::warn!("the kernel replied but sent no idle status in time; taking the cell as done");
                    break;
                }
                _ = p.exit_rx.changed() => {
                    // Outputs already sent may still be in flight: collect them briefly.
                    let until = Instant::now() + Duration::from_millis(50);
                    while let Ok(Some(m)) = tokio::time::timeout_at(until.into(), p.iopub_rx.recv()).await {
                        cell.late(m);
                    }
                    dead = p.exited();
                    break;
                }
            }
        }
        if let Some(e) = dead {
            p.disconnect();
            *self.shared.control.lock().await = None;
            // The pid may be reused by another process: never signal it again.
            *self.shared.pid.lock().unwrap_or_else(|e| e.into_inner()) = None;
            let tail = p.log_tail(5);
            let mut msg = format!("the kernel died: it {}", e.describe());
            if !tail.is_empty() {
                msg.push_str(&format!("; its last output:\n{tail}"));
            }
            return Ok(cell.dead(msg, Some(e)));
        }
        Ok(cell.finish(grace_at.map(|_| opts.timeout.unwrap_or_default())))
    }
}
