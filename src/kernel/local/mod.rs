//! A kernel process on this machine, driven over ZeroMQ with runtimed's jupyter-zmq-client.
//!
//! Three parts, each readable alone: [`launch`] starts the process and connects to it (folder,
//! connection file, spawn, readiness), [`execute`] runs one cell and turns what comes back into a
//! result, and [`wire`] decodes signed kernel messages off the sockets. This file holds what they
//! share: the running process ([`Proc`]), its lifecycle (restart, shutdown, kill) and the state an
//! interrupt needs while a cell runs. Stopping or dropping the kernel kills it and everything it
//! started, and a kernel dies with cellsci even when cellsci is SIGKILLed (see [`super::reaper`]): no
//! kernel outlives cellsci. The kernel folder (connection file with its HMAC key, IPC sockets, log) is
//! owner-only and removed with the kernel.

mod execute;
mod launch;
pub mod wire;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use jupyter_protocol::{InterruptRequest, JupyterMessage, ShutdownRequest};
use jupyter_zmq_client as jzc;
use tokio::sync::{mpsc, watch};

use super::reaper;
use super::spec::{InterruptMode, KernelSpec};
use super::{ExitInfo, StartOptions};
use wire::Msg;

pub use launch::secret_env_names;

/// State a concurrent `interrupt()` needs while an execution holds the kernel.
struct Shared {
    pid: Mutex<Option<u32>>,
    mode: InterruptMode,
    control: tokio::sync::Mutex<Option<jzc::ClientControlConnection>>,
}

impl Shared {
    async fn interrupt(&self) -> Result<()> {
        match self.mode {
            InterruptMode::Signal => {
                let pid = *self.pid.lock().unwrap_or_else(|e| e.into_inner());
                let pid = pid.ok_or_else(|| anyhow!("the kernel is not running"))?;
                // SAFETY: signalling the process group we created for the kernel.
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGINT);
                }
                Ok(())
            }
            InterruptMode::Message => {
                let mut c = self.control.lock().await;
                let c = c.as_mut().ok_or_else(|| anyhow!("the kernel is not running"))?;
                // bounded: a kernel that stopped reading its control socket must not hang the caller
                tokio::time::timeout(CONTROL_SEND, c.send(JupyterMessage::new(InterruptRequest {}, None)))
                    .await
                    .map_err(|_| anyhow!("the kernel did not take the interrupt request within {CONTROL_SEND:?}"))??;
                Ok(())
            }
        }
    }
}

struct Proc {
    pid: u32,
    /// The kernel's `CELLSCI_KERNEL_TAG`, inherited by everything it starts.
    tag: String,
    _dir: tempfile::TempDir,
    log: PathBuf,
    /// Bytes of the log written while starting (the banner); tails show only what came after.
    log_start: u64,
    shell: Option<jzc::DealerSendConnection>,
    shell_rx: mpsc::UnboundedReceiver<Msg>,
    iopub_rx: mpsc::UnboundedReceiver<Msg>,
    exit_rx: watch::Receiver<Option<ExitInfo>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Proc {
    fn exited(&self) -> Option<ExitInfo> {
        self.exit_rx.borrow().clone()
    }

    /// Kill the kernel and everything it started: its process group, the tree below it (children that
    /// called `setsid` included) and every process carrying its tag (orphans included).
    fn kill(&self, before: &[(i32, u64)]) {
        reaper::kill_snapshot(before);
        let exited = self.exited().is_some();
        // SAFETY: plain syscalls on the process group we created; failure (already gone) is fine.
        unsafe {
            libc::kill(-(self.pid as i32), libc::SIGKILL);
            if !exited {
                libc::kill(self.pid as i32, libc::SIGKILL);
            }
        }
        // Once reaped, the kernel's pid may belong to someone else: then the tag alone decides.
        reaper::kill_tagged(&self.tag, (!exited).then_some(self.pid as i32));
    }

    /// Close our sockets: a dead kernel's sockets would otherwise try to reconnect forever.
    fn disconnect(&mut self) {
        self.shell = None;
        for t in self.tasks.iter().skip(1) {
            t.abort();
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let from = (self.log_start as usize).min(bytes.len());
        let text = String::from_utf8_lossy(&bytes[from..]);
        let v: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill(&[]);
        // Wait (briefly) until the process is reaped, so that when cellsci exits its kernels are gone.
        // The waiter task runs on the runtime's worker threads, not on this one.
        let until = Instant::now() + Duration::from_millis(500);
        while self.exited().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
        crate::signals::unregister_child(self.pid);
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub struct LocalKernel {
    spec: KernelSpec,
    opts: StartOptions,
    /// The start options' folder and environment before `enter`.
    base: Option<crate::kernel::Place>,
    proc: Option<Proc>,
    shared: Arc<Shared>,
    /// The content of the kernel's `kernel_info_reply` at its (last) start.
    info: Option<serde_json::Value>,
}

/// Interrupts a kernel, and tells its pid, while an execution holds the kernel itself.
#[derive(Clone)]
pub struct Interrupter(Arc<Shared>);

impl Interrupter {
    pub async fn interrupt(&self) -> Result<()> {
        self.0.interrupt().await
    }

    /// The kernel's process id; None once it has died or been shut down (its pid may be reused by then).
    pub fn pid(&self) -> Option<u32> {
        *self.0.pid.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn exit_info(st: &std::process::ExitStatus) -> ExitInfo {
    use std::os::unix::process::ExitStatusExt;
    ExitInfo { code: st.code(), signal: st.signal() }
}

impl LocalKernel {
    pub async fn start(spec: KernelSpec, opts: StartOptions) -> Result<LocalKernel> {
        let shared = Arc::new(Shared {
            pid: Mutex::new(None),
            mode: spec.interrupt_mode,
            control: tokio::sync::Mutex::new(None),
        });
        let mut k = LocalKernel { spec, opts, base: None, proc: None, shared, info: None };
        k.launch().await?;
        Ok(k)
    }

    pub fn spec(&self) -> &KernelSpec {
        &self.spec
    }

    /// The content of the kernel's `kernel_info_reply` (its `language_info`, implementation, banner).
    pub fn info(&self) -> Option<&serde_json::Value> {
        self.info.as_ref()
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid)
    }

    /// A handle that can interrupt the kernel while an execution holds `&mut self`.
    pub fn interrupter(&self) -> Interrupter {
        Interrupter(self.shared.clone())
    }

    pub fn alive(&self) -> bool {
        self.proc.as_ref().is_some_and(|p| p.exited().is_none())
    }

    pub async fn interrupt(&self) -> Result<()> {
        self.shared.interrupt().await
    }

    /// Kill the kernel (if running) and start a fresh one.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop(false).await;
        self.launch().await
    }

    async fn stop(&mut self, polite: bool) {
        if let Some(mut p) = self.proc.take() {
            let tree = if p.exited().is_none() { reaper::tree_snapshot(p.pid as i32) } else { Vec::new() };
            p.disconnect();
            if polite && p.exited().is_none() {
                let mut c = self.shared.control.lock().await;
                if let Some(c) = c.as_mut() {
                    let shutdown = c.send(JupyterMessage::new(ShutdownRequest { restart: false }, None));
                    let _ = tokio::time::timeout(CONTROL_SEND, shutdown).await;
                }
                drop(c);
                let _ = tokio::time::timeout(Duration::from_secs(3), p.exit_rx.wait_for(|e| e.is_some())).await;
                *self.shared.control.lock().await = None;
            }
            p.kill(&tree);
            let _ = tokio::time::timeout(Duration::from_secs(2), p.exit_rx.wait_for(|e| e.is_some())).await;
        }
        *self.shared.control.lock().await = None;
        *self.shared.pid.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub async fn shutdown(&mut self) {
        self.stop(true).await;
    }

    /// Move the running kernel into `cwd` with `env` set; a restart starts it there too.
    pub async fn enter(&mut self, cwd: &std::path::Path, env: &[(String, String)]) -> Result<()> {
        self.opts.enter(&mut self.base, cwd, env);
        let code = crate::kernel::setup_code(Some(&cwd.display().to_string()), env, None);
        let timeout = Some(self.opts.startup_timeout);
        let r = self.execute(&code, crate::kernel::ExecOptions { timeout, silent: true, ..Default::default() }).await?;
        if r.status != crate::kernel::ExecStatus::Ok {
            anyhow::bail!(
                "the kernel's set-up failed: {}: {}",
                r.ename.unwrap_or_default(),
                r.evalue.or(r.message).unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Forget `enter`: the next restart starts the kernel as it was first started.
    pub fn leave(&mut self) {
        self.opts.leave(&mut self.base);
    }
}

/// How long sending on the control channel (interrupt, shutdown) may take.
const CONTROL_SEND: Duration = Duration::from_secs(2);

async fn wait_exit(p: &mut Proc) -> ExitInfo {
    let _ = tokio::time::timeout(Duration::from_millis(500), p.exit_rx.wait_for(|e| e.is_some())).await;
    p.exited().unwrap_or(ExitInfo { code: None, signal: None })
}
