//! A kernel process on this machine, driven over ZeroMQ with runtimed's jupyter-zmq-client.
//!
//! Launch order matters (see the spike notes): reserve ports, write the connection file, *drop* the
//! port listeners, spawn (in its own process group, output to a log file), poll the shell port, connect
//! all sockets at once, then wait until a `kernel_info_reply` and an iopub message for that request
//! have both arrived. iopub and shell are read by background tasks that decode messages into raw JSON
//! (outputs stay exactly what the kernel sent) and forward them over channels; a third task waits on
//! the process so a death is seen within milliseconds. A cell is done when both its `execute_reply`
//! and its iopub `idle` have arrived. Stopping or dropping the kernel kills it and everything it
//! started, and a kernel dies with cellsci even when cellsci is SIGKILLed (see [`super::reaper`]): no
//! kernel outlives cellsci. The kernel folder (connection file with its HMAC key, log) is owner-only.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use jupyter_protocol::connection_info::Transport;
use jupyter_protocol::{
    ConnectionInfo, ExecuteRequest, InterruptRequest, JupyterMessage, KernelInfoRequest, ShutdownRequest,
};
use jupyter_zmq_client as jzc;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use zeromq::SocketRecv;

use super::outputs::{strip_ansi, timing_map, OutputBuilder};
use super::reaper;
use super::spec::{InterruptMode, KernelSpec};
use super::{ExecOptions, ExecResult, ExecStatus, ExitInfo, KernelError, StartOptions};

/// A decoded kernel message: what the executor needs, content kept as raw JSON.
#[derive(Debug)]
pub struct Msg {
    pub msg_type: String,
    pub parent_id: Option<String>,
    pub date: Option<String>,
    pub content: Value,
}

/// Split a multipart message, check its signature and decode it. This is jupyter-zmq-client's
/// `RawMessage::from_multipart` without its copy of the signed parts into one buffer: the HMAC is
/// computed part by part, so a 20 MB output is never held twice while it is checked.
fn decode(zmsg: zeromq::ZmqMessage, mac: &Option<ring::hmac::Key>) -> Result<Msg> {
    let parts = zmsg.into_vec();
    let d = parts.iter().position(|p| &p[..] == b"<IDS|MSG>").context("kernel message without delimiter")?;
    if parts.len() < d + 6 {
        bail!("short kernel message");
    }
    let j = &parts[d + 2..];
    if let Some(key) = mac {
        let mut ctx = ring::hmac::Context::with_key(key);
        for p in &j[..4] {
            ctx.update(p);
        }
        let tag = ctx.sign();
        let expected = unhex(&parts[d + 1]).context("kernel message with a malformed signature")?;
        let got = tag.as_ref();
        // constant-time comparison
        let diff = expected.len() ^ got.len() | expected.iter().zip(got).fold(0u8, |a, (x, y)| a | (x ^ y)) as usize;
        if diff != 0 {
            bail!("kernel message with a bad signature");
        }
    }
    #[derive(serde::Deserialize)]
    struct H {
        #[serde(default)]
        msg_type: String,
        #[serde(default)]
        date: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct P {
        #[serde(default)]
        msg_id: Option<String>,
    }
    let h: H = parse_lossy(&j[0])?;
    let p: P = parse_lossy(&j[1]).unwrap_or(P { msg_id: None });
    let content: Value = parse_lossy(&j[3])?;
    Ok(Msg { msg_type: h.msg_type, parent_id: p.msg_id, date: h.date, content })
}

/// Parse a message part; when it is not strict JSON because of unpaired surrogates, parse it again
/// with those replaced by U+FFFD, as Jupyter's own clients do.
///
/// Python strings may hold lone surrogates (`'\udcfe'`, or bytes decoded with `surrogateescape`).
/// jupyter_client encodes them as raw invalid UTF-8 bytes (its `surrogateescape` encoder), or, for
/// surrogates it cannot encode that way, as `\udXXX` escapes; serde_json rejects both, and a rejected
/// `execute_reply` left its cell waiting until the timeout. The strict parse runs first, so a
/// well-formed (multi-megabyte) output is never copied.
fn parse_lossy<T: serde::de::DeserializeOwned>(part: &[u8]) -> Result<T> {
    match serde_json::from_slice(part) {
        Ok(v) => Ok(v),
        Err(strict) => serde_json::from_str(&replace_lone_surrogates(&String::from_utf8_lossy(part)))
            .with_context(|| format!("kernel message part is not JSON ({strict})")),
    }
}

/// JSON text with every `\uXXXX` escape of an unpaired surrogate replaced by `\ufffd`; a properly
/// paired high+low escape and an escaped backslash followed by `u` are kept.
fn replace_lone_surrogates(s: &str) -> String {
    let b = s.as_bytes();
    let hex4 = |i: usize| -> Option<u32> {
        let h = b.get(i..i + 4)?;
        u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok().filter(|_| h.iter().all(u8::is_ascii_hexdigit))
    };
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        if b.get(i + 1) != Some(&b'u') {
            i += 2; // any other escape, `\\` included
            continue;
        }
        let Some(v) = hex4(i + 2) else {
            i += 2;
            continue;
        };
        let paired = (0xD800..0xDC00).contains(&v)
            && b.get(i + 6) == Some(&b'\\')
            && b.get(i + 7) == Some(&b'u')
            && hex4(i + 8).is_some_and(|w| (0xDC00..0xE000).contains(&w));
        if paired {
            i += 12;
        } else if (0xD800..0xE000).contains(&v) {
            out.push_str(&s[last..i]);
            out.push_str("\\ufffd");
            i += 6;
            last = i;
        } else {
            i += 6;
        }
    }
    out.push_str(&s[last..]);
    out
}

fn unhex(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let v = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    s.chunks(2).map(|p| Some(v(p[0])? << 4 | v(p[1])?)).collect()
}

/// Read messages from a socket forever, forwarding them; ends when the socket or the receiver does.
fn reader<S: SocketRecv + Send + 'static>(
    mut socket: S,
    mac: Option<ring::hmac::Key>,
    tx: mpsc::UnboundedSender<Msg>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok(zmsg) = socket.recv().await else { break };
            let msg = match decode(zmsg, &mac) {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!("dropping a kernel message that does not decode: {e:#}");
                    continue;
                }
            };
            if tx.send(msg).is_err() {
                break;
            }
        }
    })
}

/// Create a file only its owner can read, with that mode from the start (no moment where it is 0644).
fn private_file(p: &Path) -> Result<std::fs::File> {
    Ok(std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(p)?)
}

/// Variables that hold the LLM's or a gateway's credentials; a kernel runs generated code that may
/// print its environment into the archived notebook, so it never inherits them.
const SECRET_VARS: &[&str] =
    &["OPENAI_API_KEY", "JUPYTER_GATEWAY_TOKEN", "JUPYTER_GATEWAY_AUTH_TOKEN", "CELLSCI_GATEWAY_TOKEN"];

/// The names of host environment variables a kernel must not inherit: the known secret variables, and
/// any variable whose value is one of those secrets or one of `extra` (the configured API key), since
/// a key copied into `MY_KEY` is just as secret.
pub fn secret_env_names(extra: &[String]) -> Vec<std::ffi::OsString> {
    let mut values: Vec<Vec<u8>> = extra.iter().map(|s| s.trim().as_bytes().to_vec()).collect();
    for name in SECRET_VARS {
        if let Some(v) = std::env::var_os(name) {
            values.push(v.as_encoded_bytes().trim_ascii().to_vec());
        }
    }
    // Short values ("1", "true") would match unrelated variables; no real key is that short.
    values.retain(|v| v.len() >= 8);
    std::env::vars_os()
        .filter(|(k, v)| {
            SECRET_VARS.iter().any(|s| k.as_encoded_bytes() == s.as_bytes())
                || values.iter().any(|x| v.as_encoded_bytes().trim_ascii() == x.as_slice())
        })
        .map(|(k, _)| k)
        .collect()
}

/// State a concurrent `interrupt()` needs while an execution holds the kernel.
pub struct Shared {
    pub pid: Mutex<Option<u32>>,
    pub mode: InterruptMode,
    pub control: tokio::sync::Mutex<Option<jzc::ClientControlConnection>>,
}

impl Shared {
    pub async fn interrupt(&self) -> Result<()> {
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
    proc: Option<Proc>,
    pub shared: Arc<Shared>,
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
        let mut k = LocalKernel { spec, opts, proc: None, shared };
        k.launch().await?;
        Ok(k)
    }

    pub fn spec(&self) -> &KernelSpec {
        &self.spec
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid)
    }

    async fn launch(&mut self) -> Result<()> {
        let started = Instant::now();
        // The folder holds the connection file, whose HMAC key lets anyone who reads it run code in
        // the kernel: owner-only from the moment it exists, as Jupyter makes its runtime dir.
        // Its name carries the owner's pid and start time, so a later run can tell a leftover of a
        // killed run from the folder of a live one.
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(reaper::remove_stale_dirs);
        reaper::ensure_watchdog();
        let dir = tempfile::Builder::new()
            .prefix(&reaper::kernel_dir_prefix())
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .context("cannot create the kernel's temp dir")?;
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (ports, listeners) = jzc::peek_ports_with_listeners(ip, 5).await?;
        let info = ConnectionInfo {
            transport: Transport::TCP,
            ip: ip.to_string(),
            shell_port: ports[0],
            iopub_port: ports[1],
            stdin_port: ports[2],
            control_port: ports[3],
            hb_port: ports[4],
            signature_scheme: "hmac-sha256".into(),
            key: uuid::Uuid::new_v4().to_string(),
            kernel_name: Some(self.spec.name.clone()),
        };
        let cf = dir.path().join("connection.json");
        private_file(&cf)
            .and_then(|mut f| f.write_all(&serde_json::to_vec(&info)?).map_err(Into::into))
            .with_context(|| format!("cannot write the connection file {}", cf.display()))?;
        let log = dir.path().join("kernel.log");
        let logf = private_file(&log).with_context(|| format!("cannot create the kernel log {}", log.display()))?;
        let mut argv: Vec<String> = self
            .spec
            .argv
            .iter()
            .map(|a| if a == "{connection_file}" { cf.display().to_string() } else { a.clone() })
            .collect();
        // As nbclient and papermill do: an IPython kernel keeps its input history in memory. The default
        // SQLite file on disk costs a synced write per cell (half of a trivial cell's time) and locks
        // up when several kernels run at once.
        if argv.iter().any(|a| a.starts_with("ipykernel"))
            && !argv.iter().any(|a| a.contains("HistoryManager.hist_file"))
        {
            argv.push("--HistoryManager.hist_file=:memory:".into());
        }
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .process_group(0)
            .kill_on_drop(true);
        // ipykernel exits on its own when this parent dies, even by SIGKILL (jupyter_client sets it too);
        // but its poller needs the GIL, so a kernel inside a long C call lives on: see pre_exec below.
        cmd.env("JPY_PARENT_PID", std::process::id().to_string());
        for name in secret_env_names(&self.opts.secrets) {
            cmd.env_remove(name);
        }
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let tag = reaper::kernel_tag();
        cmd.env(reaper::TAG_VAR, &tag);
        #[cfg(target_os = "linux")]
        {
            let parent = std::process::id() as libc::pid_t;
            // SAFETY: only async-signal-safe calls (prctl, getppid, raise) between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    // SIGKILL when the thread that forked us ends. That is the thread driving the
                    // kernel: the main thread for cellsci's LocalSet, or a runtime worker, both of
                    // which live as long as the runtime (never a short-lived blocking-pool thread).
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
                    // cellsci may have died before the prctl took effect.
                    if libc::getppid() != parent {
                        libc::raise(libc::SIGKILL);
                    }
                    Ok(())
                });
            }
        }
        if let Some(cwd) = &self.opts.cwd {
            if !cwd.is_dir() {
                bail!("kernel working directory {} does not exist", cwd.display());
            }
            cmd.current_dir(cwd);
        }
        // The listeners must be closed before the kernel starts, or its first connect can reach our
        // own listening socket and be reset (spike gotcha 1).
        drop(listeners);
        let mut child = cmd.spawn().with_context(|| format!("cannot start the kernel ({})", argv[0]))?;
        let pid = child.id().context("kernel exited at once")?;
        crate::signals::register_child(pid);
        let (exit_tx, exit_rx) = watch::channel(None);
        let waiter = tokio::spawn(async move {
            let st = child.wait().await;
            crate::signals::unregister_child(pid);
            let info = match st {
                Ok(st) => exit_info(&st),
                Err(_) => ExitInfo { code: None, signal: None },
            };
            let _ = exit_tx.send(Some(info));
        });
        let mut proc = Proc {
            pid,
            tag,
            _dir: dir,
            log,
            log_start: 0,
            shell: None,
            shell_rx: mpsc::unbounded_channel().1,
            iopub_rx: mpsc::unbounded_channel().1,
            exit_rx,
            tasks: vec![waiter],
        };
        let deadline = started + self.opts.startup_timeout;
        let fail = |proc: &Proc, what: &str| -> anyhow::Error {
            let tail = proc.log_tail(15);
            let exit = proc.exited().map(|e| format!(" ({})", e.describe())).unwrap_or_default();
            let mut msg = format!("kernel '{}' {what}{exit}", self.spec.name);
            if !tail.is_empty() {
                msg.push_str(&format!("; its output:\n{tail}"));
            }
            if tail.contains("No module named ipykernel") {
                msg.push_str(&format!(
                    "\n(install ipykernel in that environment: {} -m pip install ipykernel)",
                    argv[0]
                ));
            }
            anyhow!(msg)
        };
        // Wait until the kernel listens (10 ms polls) so zeromq's connect does not back off.
        let shell_addr = std::net::SocketAddr::new(ip, ports[0]);
        loop {
            if proc.exited().is_some() {
                return Err(fail(&proc, "exited while starting"));
            }
            if Instant::now() > deadline {
                return Err(fail(&proc, &format!("did not start within {:?}", self.opts.startup_timeout)));
            }
            if crate::signals::interrupted() {
                bail!(KernelError::Interrupted);
            }
            if tokio::net::TcpStream::connect(shell_addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let sid = uuid::Uuid::new_v4().to_string();
        let identity = jzc::peer_identity_for_session(&sid)?;
        let connect = async {
            tokio::try_join!(
                jzc::create_client_iopub_connection(&info, "", &sid),
                jzc::create_client_shell_connection_with_identity(&info, &sid, identity),
                jzc::create_client_control_connection(&info, &sid),
            )
        };
        let (iopub, shell, control) = tokio::select! {
            r = connect => r.map_err(|e| anyhow!("cannot connect to the kernel: {e}"))?,
            _ = tokio::time::sleep_until(deadline.into()) => return Err(fail(&proc, "did not accept connections")),
        };
        let (iopub_tx, iopub_rx) = mpsc::unbounded_channel();
        proc.tasks.push(reader(iopub.socket, iopub.mac, iopub_tx));
        let (shell_send, shell_recv) = shell.split();
        let (shell_tx, shell_rx) = mpsc::unbounded_channel();
        proc.tasks.push(reader(shell_recv.socket, shell_recv.mac, shell_tx));
        proc.shell = Some(shell_send);
        proc.shell_rx = shell_rx;
        proc.iopub_rx = iopub_rx;
        *self.shared.control.lock().await = Some(control);
        *self.shared.pid.lock().unwrap_or_else(|e| e.into_inner()) = Some(pid);

        // Ready = a kernel_info_reply and an iopub message for one of our requests (the iopub
        // subscription is live). Re-ask every 500 ms: early iopub messages can be missed.
        let mut sent: Vec<String> = Vec::new();
        let (mut got_reply, mut got_iopub) = (false, false);
        let mut next_ask = Instant::now();
        while !(got_reply && got_iopub) {
            if Instant::now() >= next_ask {
                let req = JupyterMessage::new(KernelInfoRequest {}, None);
                sent.push(req.header.msg_id.clone());
                proc.shell.as_mut().expect("connected").send(req).await?;
                next_ask = Instant::now() + Duration::from_millis(500);
            }
            let ours = |m: &Msg| m.parent_id.as_ref().is_some_and(|p| sent.contains(p));
            tokio::select! {
                // A reader that ended lost its socket: fail now rather than at the deadline.
                m = proc.shell_rx.recv() => match m {
                    Some(m) => if ours(&m) && m.msg_type == "kernel_info_reply" { got_reply = true },
                    None => return Err(fail(&proc, "lost its shell connection while starting")),
                },
                m = proc.iopub_rx.recv() => match m {
                    Some(m) => if ours(&m) { got_iopub = true },
                    None => return Err(fail(&proc, "lost its iopub connection while starting")),
                },
                _ = proc.exit_rx.changed() => return Err(fail(&proc, "exited while starting")),
                _ = tokio::time::sleep_until(next_ask.into()) => {},
                _ = tokio::time::sleep_until(deadline.into()) => {
                    return Err(fail(&proc, &format!("did not become ready within {:?}", self.opts.startup_timeout)))
                },
                _ = crate::signals::token().cancelled() => bail!(KernelError::Interrupted),
            }
        }
        // Drain what the readiness exchange left behind.
        tokio::time::sleep(Duration::from_millis(1)).await;
        while proc.iopub_rx.try_recv().is_ok() {}
        while proc.shell_rx.try_recv().is_ok() {}
        proc.log_start = std::fs::metadata(&proc.log).map(|m| m.len()).unwrap_or(0);
        tracing::debug!("kernel {} ready in {:?} (pid {pid})", self.spec.name, started.elapsed());
        self.proc = Some(proc);
        Ok(())
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
                stop_on_error: true,
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
        let outputs = ob.finish();
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

/// How long sending on the control channel (interrupt, shutdown) may take.
const CONTROL_SEND: Duration = Duration::from_secs(2);

/// How long to wait for a cell's iopub `idle` once its execute_reply has arrived.
const IOPUB_GRACE: Duration = Duration::from_secs(4);

async fn wait_exit(p: &mut Proc) -> ExitInfo {
    let _ = tokio::time::timeout(Duration::from_millis(500), p.exit_rx.wait_for(|e| e.is_some())).await;
    p.exited().unwrap_or(ExitInfo { code: None, signal: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(key: &ring::hmac::Key, parts: &[&str], tamper: bool) -> zeromq::ZmqMessage {
        let mut ctx = ring::hmac::Context::with_key(key);
        for p in parts {
            ctx.update(p.as_bytes());
        }
        let sig: String = ctx.sign().as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let mut v: Vec<bytes::Bytes> = vec![bytes::Bytes::from_static(b"<IDS|MSG>"), sig.into_bytes().into()];
        for (i, p) in parts.iter().enumerate() {
            let p = if tamper && i == 3 { p.replace('1', "2") } else { p.to_string() };
            v.push(p.into_bytes().into());
        }
        zeromq::ZmqMessage::try_from(v).unwrap()
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let r = |s: &str| replace_lone_surrogates(s);
        assert_eq!(r(r#""a\udcfe b""#), r#""a\ufffd b""#);
        assert_eq!(r(r#""\ud83d\ude00""#), r#""\ud83d\ude00""#, "a valid pair is kept");
        assert_eq!(r(r#""\ud83d\u0041""#), r#""\ufffd\u0041""#, "a high surrogate without its low half");
        assert_eq!(r(r#""\\udcfe""#), r#""\\udcfe""#, "an escaped backslash, not an escape");
        assert_eq!(r(r#""\\\udcfe""#), r#""\\\ufffd""#);
        assert_eq!(r(r#""\ude00\ud83d""#), r#""\ufffd\ufffd""#, "reversed halves");
        let v: Value = parse_lossy(b"{\"t\": \"x\xfe\\udcff\"}").unwrap();
        assert_eq!(v["t"], "x\u{fffd}\u{fffd}");
    }

    #[test]
    fn signatures_are_checked_part_by_part() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"secret");
        let parts = [r#"{"msg_type": "stream", "date": "d"}"#, r#"{"msg_id": "p"}"#, "{}", r#"{"text": "1"}"#];
        let m = decode(signed(&key, &parts, false), &Some(key.clone())).unwrap();
        assert_eq!((m.msg_type.as_str(), m.parent_id.as_deref()), ("stream", Some("p")));
        assert!(decode(signed(&key, &parts, true), &Some(key)).is_err(), "a tampered message is rejected");
    }
}
