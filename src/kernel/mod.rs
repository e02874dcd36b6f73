//! Jupyter kernels: finding them, starting them, running code in them cell by cell, and turning hangs
//! and crashes into results a script can act on.
//!
//! A kernel is a local process ([`LocalKernel`], over ZeroMQ) or a kernel on a Jupyter Kernel Gateway /
//! Enterprise Gateway ([`GatewayKernel`], over REST and a WebSocket). Callers hold a [`Kernel`], which
//! is either: the two share what a script sees (execute with the same results, interrupt, restart,
//! shutdown, alive) and differ in everything below it. A closed enum, not a trait object: its methods
//! are async, and there are exactly these two. Nothing here may leave a kernel running after cellsci
//! ends: a local kernel is killed, a gateway kernel deleted.

pub mod cell;
pub mod gateway;
pub mod local;
pub mod outputs;
pub mod pool;
pub mod reaper;
pub mod spec;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

pub use gateway::GatewayKernel;
pub use local::LocalKernel;
pub use spec::{InterruptMode, KernelSpec};

/// Errors of the kernel layer a caller may branch on.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("interrupted (Ctrl-C)")]
    Interrupted,
    /// Ctrl-C while a cell ran: what it had produced so far (status "error", ename "KeyboardInterrupt"), so
    /// the outputs are not lost.
    #[error("interrupted (Ctrl-C)")]
    InterruptedCell(Box<ExecResult>),
}

/// How cellsci talks to a local kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Unix sockets in the kernel's private (0700) folder: no other user can reach them.
    #[default]
    Ipc,
    /// Ports on 127.0.0.1, reachable by every local user (messages are signed, not encrypted); for
    /// kernels that cannot do IPC.
    Tcp,
}

impl std::str::FromStr for Transport {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Transport> {
        match s.to_ascii_lowercase().as_str() {
            "ipc" => Ok(Transport::Ipc),
            "tcp" => Ok(Transport::Tcp),
            _ => anyhow::bail!("transport must be \"ipc\" or \"tcp\", not {s:?}"),
        }
    }
}

/// How to start a kernel.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// A kernelspec name (default `python3`).
    pub name: Option<String>,
    /// A Python interpreter whose environment has ipykernel (skips kernelspec lookup).
    pub python: Option<PathBuf>,
    /// Packages for a provisioned kernel venv (forces provisioning).
    pub packages: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub startup_timeout: Duration,
    /// How long a timed-out cell gets to react to the interrupt before the kernel is killed.
    pub interrupt_grace: Duration,
    /// Secret values (the configured LLM API key) no inherited environment variable may carry into
    /// the kernel; `OPENAI_API_KEY` and gateway tokens are removed whatever this holds. Variables
    /// given in `env` are passed as given.
    pub secrets: Vec<String>,
    /// IPC (default) or TCP on loopback.
    pub transport: Transport,
    /// Start the kernel on this gateway instead of this machine.
    pub gateway: Option<gateway::Target>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            name: None,
            python: None,
            packages: Vec::new(),
            cwd: None,
            env: Vec::new(),
            startup_timeout: Duration::from_secs(60),
            interrupt_grace: Duration::from_secs(3),
            secrets: Vec::new(),
            transport: Transport::Ipc,
            gateway: None,
        }
    }
}

/// The working folder and environment a kernel had before [`Kernel::enter`] moved it, for
/// [`Kernel::leave`].
pub(crate) type Place = (Option<PathBuf>, Vec<(String, String)>);

impl StartOptions {
    /// Move these options into `cwd` with `env` added (variables of the same name replaced), keeping in
    /// `base` what they were (once: entering again starts from the same base).
    pub(crate) fn enter(&mut self, base: &mut Option<Place>, cwd: &std::path::Path, env: &[(String, String)]) {
        let (_, base_env) = base.get_or_insert_with(|| (self.cwd.clone(), self.env.clone()));
        let kept = base_env.iter().filter(|(k, _)| !env.iter().any(|(n, _)| n == k)).cloned();
        self.env = kept.chain(env.iter().cloned()).collect();
        self.cwd = Some(cwd.to_path_buf());
    }

    /// Back to what they were before [`StartOptions::enter`].
    pub(crate) fn leave(&mut self, base: &mut Option<Place>) {
        if let Some((cwd, env)) = base.take() {
            self.cwd = cwd;
            self.env = env;
        }
    }
}

/// Python that moves a running kernel into `cwd` and sets `env`; with `probe` (a file name and its
/// content), it first checks that the file in `cwd` holds that content (the kernel sees our folder).
pub(crate) fn setup_code(cwd: Option<&str>, env: &[(String, String)], probe: Option<(&str, &str)>) -> String {
    let mut code = String::from("import os as _cellsci_os\n");
    if let (Some(cwd), Some((name, content))) = (cwd, probe) {
        code.push_str(&format!(
            "if open(_cellsci_os.path.join({}, {})).read() != {}:\n    raise RuntimeError('another folder')\n",
            py_str(cwd),
            py_str(name),
            py_str(content)
        ));
    }
    if let Some(cwd) = cwd {
        code.push_str(&format!("_cellsci_os.chdir({})\n", py_str(cwd)));
    }
    for (k, v) in env {
        code.push_str(&format!("_cellsci_os.environ[{}] = {}\n", py_str(k), py_str(v)));
    }
    code.push_str("del _cellsci_os\n");
    code
}

/// A Python string literal for any text.
fn py_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "''".into())
}

/// Options of one execution.
pub struct ExecOptions<'a> {
    pub timeout: Option<Duration>,
    /// Jupyter's silent execution: no execution count, no history, no execute_result (set-up code).
    pub silent: bool,
    /// The caller expects an error from this cell (`raises-exception`): the kernel is not asked to
    /// abort requests queued behind it (Jupyter's `stop_on_error`).
    pub allow_errors: bool,
    /// Called with each output as it is created or changed, and the message type that did it.
    #[allow(clippy::type_complexity)]
    pub on_output: Option<Box<dyn FnMut(&Value, &str) + 'a>>,
    /// Bytes each stream (stdout, stderr) of the cell keeps: the first and the last half, around a line
    /// saying how much was dropped (0: everything). Default: [`outputs::DEFAULT_MAX_OUTPUT_BYTES`].
    pub max_output_bytes: usize,
}

impl Default for ExecOptions<'_> {
    fn default() -> Self {
        ExecOptions {
            timeout: None,
            silent: false,
            allow_errors: false,
            on_output: None,
            max_output_bytes: outputs::DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecStatus {
    Ok,
    Error,
    Timeout,
    Dead,
}

impl ExecStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecStatus::Ok => "ok",
            ExecStatus::Error => "error",
            ExecStatus::Timeout => "timeout",
            ExecStatus::Dead => "dead",
        }
    }
}

/// How a kernel process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

fn signal_name(s: i32) -> String {
    match s {
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGBUS => "SIGBUS".into(),
        libc::SIGFPE => "SIGFPE".into(),
        libc::SIGILL => "SIGILL".into(),
        n => format!("signal {n}"),
    }
}

impl ExitInfo {
    /// "exited with code 1" / "was killed by SIGKILL (likely out of memory)".
    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) if s == libc::SIGKILL => {
                "was killed by SIGKILL (likely out of memory: the OOM killer sends SIGKILL)".into()
            }
            (None, Some(s)) => format!("was killed by {} ({})", signal_name(s), s),
            _ => "ended".into(),
        }
    }

    pub fn likely_oom(&self) -> bool {
        self.signal == Some(libc::SIGKILL)
    }
}

/// The result of running one cell.
#[derive(Debug, Clone)]
pub struct ExecResult {
    pub status: ExecStatus,
    /// nbformat outputs, multi-line strings joined.
    pub outputs: Vec<Value>,
    pub execution_count: Option<i64>,
    pub ename: Option<String>,
    pub evalue: Option<String>,
    /// Traceback lines with ANSI colours stripped.
    pub traceback: Vec<String>,
    /// Seconds.
    pub duration: f64,
    /// nbclient's `metadata.execution` timestamps.
    pub timing: Map<String, Value>,
    /// What happened, for timeouts and deaths.
    pub message: Option<String>,
    /// The kernel was restarted (timeout that ignored the interrupt): its state is gone.
    pub restarted: bool,
    pub exit: Option<ExitInfo>,
    /// (output index, display id) of the outputs that have a display id.
    pub display_ids: Vec<(usize, String)>,
    /// Display updates (`update_display_data`, or a new display with an id already shown) that
    /// outputs of earlier cells with the same id must receive too, in order.
    pub display_updates: Vec<outputs::DisplayUpdate>,
}

impl ExecResult {
    fn failed(status: ExecStatus, message: &str, started: Instant) -> ExecResult {
        ExecResult {
            status,
            outputs: Vec::new(),
            execution_count: None,
            ename: None,
            evalue: None,
            traceback: Vec::new(),
            duration: started.elapsed().as_secs_f64(),
            timing: Map::new(),
            message: if message.is_empty() { None } else { Some(message.to_string()) },
            restarted: false,
            exit: None,
            display_ids: Vec::new(),
            display_updates: Vec::new(),
        }
    }

    /// The result as the table scripts get (`traceback` one ANSI-free string). Consumes the result so
    /// large outputs are moved, not copied.
    pub fn into_json(self) -> Value {
        let mut m = Map::new();
        m.insert("status".into(), json!(self.status.as_str()));
        m.insert("outputs".into(), Value::Array(self.outputs));
        m.insert("execution_count".into(), json!(self.execution_count));
        m.insert("ename".into(), json!(self.ename));
        m.insert("evalue".into(), json!(self.evalue));
        m.insert(
            "traceback".into(),
            if self.traceback.is_empty() && self.status == ExecStatus::Ok {
                Value::Null
            } else {
                json!(self.traceback.join("\n"))
            },
        );
        m.insert("duration".into(), json!(self.duration));
        m.insert("timing".into(), Value::Object(self.timing));
        m.insert("message".into(), json!(self.message));
        m.insert("restarted".into(), json!(self.restarted));
        if let Some(e) = &self.exit {
            m.insert("exit_code".into(), json!(e.code));
            m.insert("signal".into(), json!(e.signal));
            m.insert("likely_oom".into(), json!(e.likely_oom()));
        }
        Value::Object(m)
    }
}

/// Pick the kernelspec for `opts`: an explicit Python, else the named spec, else a provisioned venv.
pub async fn resolve_spec(opts: &StartOptions) -> Result<KernelSpec> {
    if !opts.packages.is_empty() {
        let py = spec::provision(opts.python.as_deref(), &opts.packages).await?;
        return Ok(spec::for_python(&py));
    }
    if let Some(py) = &opts.python {
        let py = if py.is_absolute() || py.components().count() > 1 {
            std::path::absolute(py).unwrap_or_else(|_| py.clone())
        } else {
            spec::which(&py.display().to_string()).unwrap_or_else(|| py.clone())
        };
        if !py.exists() {
            anyhow::bail!("python interpreter {} does not exist", py.display());
        }
        return Ok(spec::for_python(&py));
    }
    let name = opts.name.clone().unwrap_or_else(|| "python3".into());
    if let Some(s) = spec::find(&name, None) {
        return Ok(s);
    }
    if name == "python3" || name == "python" {
        let py = spec::provision(None, &[]).await?;
        return Ok(spec::for_python(&py));
    }
    let names: Vec<String> = spec::list(None).into_iter().map(|s| s.name).collect();
    anyhow::bail!(
        "no kernelspec named '{name}' (found: {}); searched {}",
        if names.is_empty() { "none".to_string() } else { names.join(", ") },
        spec::data_dirs(None).iter().map(|(d, _)| d.display().to_string()).collect::<Vec<_>>().join(", ")
    )
}

/// Start a kernel as `opts` says: on its gateway, or here (its kernelspec resolved first).
pub async fn start(opts: StartOptions) -> Result<Kernel> {
    if opts.gateway.is_some() {
        return Kernel::launch(None, opts).await;
    }
    let spec = resolve_spec(&opts).await?;
    Kernel::launch(Some(spec), opts).await
}

/// The kind of a failed start a retry policy branches on: a gateway's classification (`auth`, `server`,
/// `connect`, `timeout`, `reset`, `client`, `protocol`, `config`, and Enterprise Gateway's
/// `unauthorized`, `launch_timeout`, `no_such_kernel`), `interrupted` after Ctrl-C, else
/// `start`.
pub fn start_failure_kind(e: &anyhow::Error) -> &'static str {
    for c in e.chain() {
        if let Some(g) = c.downcast_ref::<gateway::GatewayError>() {
            return if g.kind == "not_found" { "start" } else { g.kind };
        }
        if c.downcast_ref::<KernelError>().is_some() {
            return "interrupted";
        }
    }
    "start"
}

/// A kernel, here or on a gateway.
// A run holds a handful of kernels, moved only into and out of a pool: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Kernel {
    Local(LocalKernel),
    Gateway(GatewayKernel),
}

/// Interrupts a kernel while an execution holds it.
#[derive(Clone)]
pub enum Interrupter {
    Local(local::Interrupter),
    Gateway(gateway::Interrupter),
}

impl Interrupter {
    pub async fn interrupt(&self) -> Result<()> {
        match self {
            Interrupter::Local(i) => i.interrupt().await,
            Interrupter::Gateway(i) => i.interrupt().await,
        }
    }

    /// The local kernel's process id; None for a gateway kernel, and once a local one died or was shut
    /// down (its pid may be reused by then).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Interrupter::Local(i) => i.pid(),
            Interrupter::Gateway(_) => None,
        }
    }

    /// Where a gateway kernel runs, as it said at its last (re)start; None for a local kernel.
    pub fn host(&self) -> Option<String> {
        match self {
            Interrupter::Local(_) => None,
            Interrupter::Gateway(i) => i.host(),
        }
    }
}

impl Kernel {
    /// Start a kernel: on `opts.gateway` when it is set, else here from `spec` (which must be given).
    pub async fn launch(spec: Option<KernelSpec>, opts: StartOptions) -> Result<Kernel> {
        if let Some(g) = &opts.gateway {
            let url = g.url.clone();
            return GatewayKernel::start(opts)
                .await
                .map(Kernel::Gateway)
                .with_context(|| format!("cannot start a kernel on the gateway {url}"));
        }
        let spec = spec.ok_or_else(|| anyhow::anyhow!("no kernelspec for a local kernel"))?;
        LocalKernel::start(spec, opts).await.map(Kernel::Local).context("cannot start the kernel")
    }

    /// The kernelspec's name.
    pub fn name(&self) -> &str {
        match self {
            Kernel::Local(k) => &k.spec().name,
            Kernel::Gateway(k) => k.name(),
        }
    }

    /// The content of the kernel's `kernel_info_reply` (`language_info`, `implementation`, `banner`, ...).
    pub fn info(&self) -> Option<&serde_json::Value> {
        match self {
            Kernel::Local(k) => k.info(),
            Kernel::Gateway(k) => k.info(),
        }
    }

    /// The gateway's URL, for a gateway kernel.
    pub fn gateway(&self) -> Option<&str> {
        match self {
            Kernel::Local(_) => None,
            Kernel::Gateway(k) => Some(k.url()),
        }
    }

    pub fn interrupter(&self) -> Interrupter {
        match self {
            Kernel::Local(k) => Interrupter::Local(k.interrupter()),
            Kernel::Gateway(k) => Interrupter::Gateway(k.interrupter()),
        }
    }

    pub fn alive(&self) -> bool {
        match self {
            Kernel::Local(k) => k.alive(),
            Kernel::Gateway(k) => k.alive(),
        }
    }

    pub async fn execute(&mut self, code: &str, opts: ExecOptions<'_>) -> Result<ExecResult> {
        match self {
            Kernel::Local(k) => k.execute(code, opts).await,
            Kernel::Gateway(k) => k.execute(code, opts).await,
        }
    }

    pub async fn interrupt(&self) -> Result<()> {
        self.interrupter().interrupt().await
    }

    /// Kill the kernel's state and start it fresh.
    pub async fn restart(&mut self) -> Result<()> {
        match self {
            Kernel::Local(k) => k.restart().await,
            Kernel::Gateway(k) => k.restart().await,
        }
    }

    pub async fn shutdown(&mut self) {
        match self {
            Kernel::Local(k) => k.shutdown().await,
            Kernel::Gateway(k) => k.shutdown().await,
        }
    }

    /// Move the kernel into `cwd` with `env` set, now and after every restart (a kernel taken from a
    /// pool for one trial). A gateway kernel gets the paths as the gateway names them, after checking
    /// it sees `cwd` at all (a [`gateway::GatewayError`] of kind `config` when not).
    pub async fn enter(&mut self, cwd: &std::path::Path, env: &[(String, String)]) -> Result<()> {
        match self {
            Kernel::Local(k) => k.enter(cwd, env).await,
            Kernel::Gateway(k) => k.enter(cwd, env).await,
        }
    }

    /// Pin the next (re)start of a gateway kernel to one host of an Enterprise Gateway's remote hosts
    /// (`KERNEL_REMOTE_HOST`; None: the gateway chooses). No effect on a local kernel.
    pub fn pin_host(&mut self, host: Option<&str>) {
        if let Kernel::Gateway(k) = self {
            k.pin_host(host);
        }
    }

    /// Forget [`Kernel::enter`]: the next restart starts the kernel as it was first started.
    pub fn leave(&mut self) {
        match self {
            Kernel::Local(k) => k.leave(),
            Kernel::Gateway(k) => k.leave(),
        }
    }
}
