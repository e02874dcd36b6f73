//! Starting a kernel process and connecting to it.
//!
//! Order matters (see the spike notes): make the private folder, write the connection file, spawn
//! (in its own process group, output to a log file), wait until the kernel listens, connect all
//! sockets at once, then wait until a `kernel_info_reply` and an iopub message for that request have
//! both arrived. iopub and shell are read by background tasks ([`super::wire::reader`]); a third task
//! waits on the process so a death is seen within milliseconds.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use jupyter_protocol::connection_info::Transport;
use jupyter_protocol::{ConnectionInfo, JupyterMessage, KernelInfoRequest};
use jupyter_zmq_client as jzc;
use tokio::sync::{mpsc, watch};

use super::wire::{reader, Msg};
use super::{exit_info, reaper, LocalKernel, Proc};
use crate::kernel::{ExitInfo, KernelError};

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

/// Unix socket paths longer than this do not fit in `sockaddr_un` (108 bytes with the final NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The connection of an IPC kernel: channels `<dir>/k-1` .. `<dir>/k-5`, in the kernel's own folder,
/// so the folder's 0700 mode keeps every other user out and removing it removes the sockets.
fn ipc_info(dir: &Path, key: String, name: &str) -> ConnectionInfo {
    ConnectionInfo {
        transport: Transport::IPC,
        ip: dir.join("k").display().to_string(),
        shell_port: 1,
        iopub_port: 2,
        stdin_port: 3,
        control_port: 4,
        hb_port: 5,
        signature_scheme: "hmac-sha256".into(),
        key,
        kernel_name: Some(name.to_string()),
    }
}

/// Whether the kernel accepts connections on its shell, iopub and control channels yet.
async fn listening(info: &ConnectionInfo) -> bool {
    match info.transport {
        Transport::TCP => {
            let Ok(ip) = info.ip.parse::<IpAddr>() else { return true };
            tokio::net::TcpStream::connect((ip, info.shell_port)).await.is_ok()
        }
        Transport::IPC => {
            // ipykernel binds shell, stdin, control, iopub, then hb; the sockets exist once bound
            for port in [info.shell_port, info.control_port, info.iopub_port] {
                if !Path::new(&format!("{}-{port}", info.ip)).exists() {
                    return false;
                }
            }
            true
        }
    }
}

impl LocalKernel {
    /// The transport asked for, unless IPC socket paths in `dir` would be too long for the system
    /// (a very long `$TMPDIR`): then TCP, with a warning that says why.
    fn transport_for(&self, dir: &Path) -> crate::kernel::Transport {
        let want = self.opts.transport;
        let len = dir.join("k-5").as_os_str().len();
        if want == crate::kernel::Transport::Ipc && len > MAX_SOCKET_PATH {
            tracing::warn!(
                "the kernel folder {} is too long for Unix sockets ({len} > {MAX_SOCKET_PATH} bytes); using TCP on \
                 127.0.0.1 instead (set TMPDIR to a shorter folder to keep IPC)",
                dir.display()
            );
            return crate::kernel::Transport::Tcp;
        }
        want
    }

    pub(super) async fn launch(&mut self) -> Result<()> {
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
        let key = uuid::Uuid::new_v4().to_string();
        let (info, listeners) = match self.transport_for(dir.path()) {
            crate::kernel::Transport::Ipc => (ipc_info(dir.path(), key, &self.spec.name), Vec::new()),
            crate::kernel::Transport::Tcp => {
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
                    key,
                    kernel_name: Some(self.spec.name.clone()),
                };
                (info, listeners)
            }
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
        let ipykernel = argv.iter().any(|a| a.starts_with("ipykernel"));
        if ipykernel && !argv.iter().any(|a| a.contains("HistoryManager.hist_file")) {
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
        // ipykernel imports debugpy at start, which warns on fd 2 about frozen modules. ipykernel turns
        // that into a stderr stream message whose flush is still pending when our first cell runs (we
        // start cells the moment the kernel is ready), so that cell's own stderr went out with it, ahead
        // of the stdout it printed first. The variable is pydevd's own switch for that warning (what
        // editors that start kernels set); a value the user gave wins.
        if ipykernel && std::env::var_os("PYDEVD_DISABLE_FILE_VALIDATION").is_none() {
            cmd.env("PYDEVD_DISABLE_FILE_VALIDATION", "1");
        }
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
        loop {
            if proc.exited().is_some() {
                return Err(fail(&proc, "exited while starting"));
            }
            if Instant::now() > deadline {
                return Err(fail(&proc, &format!("did not start within {:?}", self.opts.startup_timeout)));
            }
            if crate::signals::stopping() {
                bail!(KernelError::Interrupted);
            }
            if listening(&info).await {
                tracing::debug!("kernel {} listening after {:?}", self.spec.name, started.elapsed());
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
                    Some(m) => if ours(&m) && m.msg_type == "kernel_info_reply" {
                        tracing::debug!("kernel_info_reply after {:?} ({} asked)", started.elapsed(), sent.len());
                        got_reply = true;
                        self.info = Some(m.content);
                    },
                    None => return Err(fail(&proc, "lost its shell connection while starting")),
                },
                m = proc.iopub_rx.recv() => match m {
                    Some(m) => if ours(&m) && !got_iopub {
                        tracing::debug!("iopub message after {:?} ({} asked)", started.elapsed(), sent.len());
                        got_iopub = true
                    },
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
}
