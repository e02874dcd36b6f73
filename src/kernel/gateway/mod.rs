//! A kernel on a Jupyter Kernel Gateway or Enterprise Gateway: started, interrupted, restarted and
//! deleted through the gateway's REST API ([`rest`]), driven over its WebSocket ([`channels`]), with
//! the same results as a local kernel (a cell's messages go through the same [`Cell`]).
//!
//! **Files.** The kernel runs on the gateway's side, where cellsci's folders may have other names.
//! The rule: a path cellsci hands the kernel (its working folder, and every environment value that is
//! a path: `OUTPUT_DIR`, `STAGE1_H5_PATH`, …) is rewritten by the longest matching prefix of
//! [`Target::paths`] (`exec.gateway_paths`, local prefix → the gateway's prefix); with no matching
//! prefix it is passed unchanged, which is right when the gateway sees the same paths (the same
//! machine, or a shared filesystem mounted at the same place). Because cellsci reads what the notebook
//! writes from its own side, a kernel that does not see the working folder is of no use: at every
//! start the kernel must find a probe file cellsci just wrote there, or the start fails with kind
//! `config`, naming both paths and the setting.
//!
//! **Enterprise Gateway.** Detected from `GET /api` (its `gateway_version`) unless [`Target::kind`]
//! says which it is. A kernel start on EG always sends `KERNEL_USERNAME` ([`Target::username`], else
//! the user running cellsci: EG refuses root by default) and `KERNEL_LAUNCH_TIMEOUT` (the start
//! timeout, as EG wants it: a string of seconds), and waits on the POST longer than that, since EG
//! answers it only once the remote kernel reported back. Every value sent is checked against EG's
//! limit (strings of at most [`EG_MAX_ENV_VALUE`] characters) before anything is sent: a value that
//! cannot go is a `config` error naming the variable, never an HTTP 400 in the middle of a run. EG
//! gives a kernel no `PATH` or `HOME` of its own when the request carries an environment, so the
//! set-up cell fills in the kernel host's defaults when they are missing. Where a gateway kernel runs
//! ([`GatewayKernel::host`]) is asked from the kernel itself at each (re)start: the address its SSH
//! launch came in on (`SSH_CONNECTION`, EG's DistributedProcessProxy), else its host name.
//!
//! **Faults.** A dropped WebSocket is opened again with the same session, so the gateway replays what
//! it buffered; a cell whose reply is still missing once the kernel is idle again is reported as
//! lost, never waited on forever. `dead` means the kernel is really gone: the gateway says it no
//! longer has it (idle culler, deletion, a gateway restart), says it died, or stayed unreachable for
//! the whole reconnect window. The kernel is deleted on shutdown and when dropped.

pub mod channels;
pub mod rest;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::cell::{restarted_after_timeout, Cell};
use super::{ExecOptions, ExecResult, ExecStatus, KernelError, StartOptions};
use crate::secret::Secret;
use channels::{request, Conn};
pub use rest::{GatewayError, Rest};

/// Where a gateway kernel runs: the gateway, its token, how paths map.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http(s)://host:port[/prefix]`.
    pub url: String,
    pub token: Secret,
    /// (local prefix, the gateway's prefix), as `exec.gateway_paths` says.
    pub paths: Vec<(PathBuf, String)>,
    /// How long a lost gateway is waited for before its kernel is taken as dead.
    pub reconnect_timeout: Duration,
    /// Which kind of gateway this is (`exec.gateway_kind`); `Auto` asks `GET /api`.
    pub kind: GatewayKind,
    /// `KERNEL_USERNAME` on Enterprise Gateway (`exec.gateway_username`); None: the user running cellsci.
    pub username: Option<String>,
}

/// The kind of gateway: Jupyter Kernel Gateway, Enterprise Gateway, or found out from `GET /api`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GatewayKind {
    #[default]
    Auto,
    Kernel,
    Enterprise,
}

impl std::str::FromStr for GatewayKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<GatewayKind, String> {
        match s {
            "auto" | "" => Ok(GatewayKind::Auto),
            "kernel" => Ok(GatewayKind::Kernel),
            "enterprise" => Ok(GatewayKind::Enterprise),
            other => Err(format!("expected \"auto\", \"kernel\" or \"enterprise\", got {other:?}")),
        }
    }
}

impl GatewayKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayKind::Auto => "auto",
            GatewayKind::Kernel => "kernel",
            GatewayKind::Enterprise => "enterprise",
        }
    }
}

/// The longest environment value Enterprise Gateway 3.3 accepts in a kernel start (HTTP 400 beyond).
pub const EG_MAX_ENV_VALUE: usize = 4096;

/// What `GET /api` says the gateway at `rest` is (an answer without `gateway_version` is Kernel
/// Gateway, or another Jupyter Server); with its version.
pub async fn detect(rest: &Rest) -> std::result::Result<(GatewayKind, Option<String>), GatewayError> {
    let v = rest.api().await?;
    Ok(match v.get("gateway_version").and_then(Value::as_str) {
        Some(ver) => (GatewayKind::Enterprise, Some(ver.to_string())),
        None => (GatewayKind::Kernel, v.get("version").and_then(Value::as_str).map(str::to_string)),
    })
}

/// `kind` as it is: `Auto` asked of the gateway at `rest` (`GET /api`); a server without `/api` (behind
/// a proxy that maps only the kernel routes) is Kernel Gateway.
pub async fn resolve_kind(rest: &Rest, kind: GatewayKind) -> std::result::Result<GatewayKind, GatewayError> {
    match kind {
        GatewayKind::Auto => match detect(rest).await {
            Ok((k, _)) => Ok(k),
            Err(e) if matches!(e.kind, "not_found" | "client") => Ok(GatewayKind::Kernel),
            Err(e) => Err(e),
        },
        k => Ok(k),
    }
}

/// The remote host an Enterprise Gateway's message about a failed launch names ("starting kernel on
/// 'HOST'", "kernel log (HOST:...)"), if any.
pub fn host_named_in(message: &str) -> Option<String> {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(r"starting kernel on '([^']+)'|kernel log \(([^:\s]+):").expect("valid regex")
    });
    let c = re.captures(message)?;
    c.get(1).or_else(|| c.get(2)).map(|m| m.as_str().to_string())
}

/// The name of the user running cellsci (what `KERNEL_USERNAME` defaults to).
pub fn os_user() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or null; read at once, on this thread.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if !pw.is_null() && !(*pw).pw_name.is_null() {
            if let Ok(s) = std::ffi::CStr::from_ptr((*pw).pw_name).to_str() {
                return s.to_string();
            }
        }
    }
    std::env::var("USER").unwrap_or_else(|_| "unknown".into())
}

impl Target {
    pub fn new(url: &str, token: Secret) -> Target {
        Target {
            url: url.to_string(),
            token,
            paths: Vec::new(),
            reconnect_timeout: Duration::from_secs(60),
            kind: GatewayKind::Auto,
            username: None,
        }
    }

    /// `p` as the gateway's side names it: the longest local prefix of `paths` that matches whole folder
    /// names replaced by the gateway's; with none, `p` itself.
    pub fn map_path(&self, p: &str) -> String {
        let path = Path::new(p);
        let best =
            self.paths.iter().filter(|(local, _)| path.starts_with(local)).max_by_key(|(l, _)| l.as_os_str().len());
        match best {
            Some((local, remote)) => {
                let rest = path.strip_prefix(local).unwrap_or(Path::new(""));
                let remote = remote.trim_end_matches('/');
                if rest.as_os_str().is_empty() {
                    remote.to_string()
                } else {
                    format!("{remote}/{}", rest.display())
                }
            }
            None => p.to_string(),
        }
    }
}

/// The gateway token a run uses: `configured` (an unexpanded `${VAR}` is none), else
/// `CELLSCI_GATEWAY_TOKEN`, else `JUPYTER_GATEWAY_AUTH_TOKEN` (Jupyter Server's own variable).
pub fn resolve_token(configured: Option<&str>) -> Secret {
    Secret::resolve_from(configured, &["CELLSCI_GATEWAY_TOKEN", "JUPYTER_GATEWAY_AUTH_TOKEN"])
}

/// What an interrupt needs while an execution holds the kernel.
struct Shared {
    rest: Rest,
    id: Mutex<Option<String>>,
    /// Where the kernel runs, as it said at its last (re)start.
    host: Mutex<Option<String>>,
}

impl Shared {
    fn id(&self) -> Option<String> {
        self.id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The kernel's id; a kernel with an id is deleted even if cellsci quits at once (a second Ctrl-C).
    fn set_id(&self, id: Option<String>) {
        let mut cur = self.id.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = cur.take() {
            crate::signals::unregister_cleanup(&cleanup_key(&old));
        }
        if let Some(new) = &id {
            let (rest, kid) = (self.rest.clone(), new.clone());
            crate::signals::register_cleanup(&cleanup_key(new), Arc::new(move || delete_blocking(&rest, &kid)));
        }
        *cur = id;
    }

    async fn interrupt(&self) -> Result<()> {
        let id = self.id().ok_or_else(|| anyhow!("the kernel is not running"))?;
        self.rest.interrupt(&id).await?;
        Ok(())
    }
}

/// Interrupts a gateway kernel while an execution holds it.
#[derive(Clone)]
pub struct Interrupter(Arc<Shared>);

impl Interrupter {
    pub async fn interrupt(&self) -> Result<()> {
        self.0.interrupt().await
    }

    /// Where the kernel runs (see [`GatewayKernel::host`]).
    pub fn host(&self) -> Option<String> {
        self.0.host.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub struct GatewayKernel {
    target: Target,
    opts: StartOptions,
    name: String,
    /// One session for the kernel's life: reconnecting with it gets the messages buffered meanwhile.
    session: String,
    /// The start options' folder and environment before `enter`.
    base: Option<super::Place>,
    shared: Arc<Shared>,
    conn: Option<Conn>,
    /// Why the kernel is not usable (it died, or the gateway lost it); `restart` clears it.
    down: Option<String>,
    /// The content of the kernel's `kernel_info_reply` at the last handshake.
    info: Option<Value>,
    /// Enterprise Gateway (detected at the start, or as the target says).
    enterprise: bool,
}

/// How a lost connection ended.
enum Lost {
    Gone(String),
    Interrupted,
}

impl GatewayKernel {
    pub async fn start(opts: StartOptions) -> Result<GatewayKernel> {
        let target = opts.gateway.clone().ok_or_else(|| anyhow!("no gateway given"))?;
        let rest = Rest::new(&target.url, target.token.clone())?;
        let name = match &opts.name {
            Some(n) => n.clone(),
            None => rest.specs().await?.get("default").and_then(Value::as_str).unwrap_or("python3").to_string(),
        };
        let enterprise = resolve_kind(&rest, target.kind).await? == GatewayKind::Enterprise;
        let shared = Arc::new(Shared { rest, id: Mutex::new(None), host: Mutex::new(None) });
        let session = uuid::Uuid::new_v4().to_string();
        let mut k = GatewayKernel {
            target,
            opts,
            name,
            session,
            base: None,
            shared,
            conn: None,
            down: None,
            info: None,
            enterprise,
        };
        k.create().await?;
        Ok(k)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> &str {
        &self.target.url
    }

    /// The gateway's id of the kernel.
    pub fn id(&self) -> Option<String> {
        self.shared.id()
    }

    pub fn interrupter(&self) -> Interrupter {
        Interrupter(self.shared.clone())
    }

    pub fn alive(&self) -> bool {
        self.down.is_none() && self.shared.id().is_some() && self.conn.as_ref().is_some_and(|c| !c.is_closed())
    }

    pub async fn interrupt(&self) -> Result<()> {
        self.shared.interrupt().await
    }

    /// The environment the kernel gets, paths mapped to the gateway's side.
    fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .opts
            .env
            .iter()
            .map(|(k, v)| (k.clone(), if v.starts_with('/') { self.target.map_path(v) } else { v.clone() }))
            .collect();
        if let Some(cwd) = &self.opts.cwd {
            // Enterprise Gateway starts the kernel there (with EG_MIRROR_WORKING_DIRS)
            env.push(("KERNEL_WORKING_DIR".into(), self.target.map_path(&cwd.display().to_string())));
        }
        env
    }

    /// Whether the kernel is on an Enterprise Gateway.
    pub fn enterprise(&self) -> bool {
        self.enterprise
    }

    /// Where the kernel runs: the address its SSH launch came in on (EG's DistributedProcessProxy),
    /// else the kernel's host name; None before it answered.
    pub fn host(&self) -> Option<String> {
        self.shared.host.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `KERNEL_USERNAME` on Enterprise Gateway: the target's (`exec.gateway_username`), else
    /// `KERNEL_USERNAME` from cellsci's environment (as Jupyter's own gateway client sends it), else
    /// the user running cellsci.
    fn username(&self) -> String {
        self.target
            .username
            .clone()
            .or_else(|| std::env::var("KERNEL_USERNAME").ok().filter(|s| !s.trim().is_empty()))
            .unwrap_or_else(os_user)
    }

    /// The body's `env` of a kernel start, and how long the POST may take. On Enterprise Gateway:
    /// `KERNEL_USERNAME` and `KERNEL_LAUNCH_TIMEOUT` added, every value checked against its limit.
    fn start_request(&self) -> Result<(Value, Duration)> {
        let mut env = self.env();
        let mut timeout = self.opts.startup_timeout.max(Duration::from_secs(30));
        if self.enterprise {
            let user = self.username();
            let launch = self.opts.startup_timeout.as_secs_f64().ceil().max(1.0) as u64;
            // the start's own KERNEL_USERNAME (kernel.start{env=}) wins; the launch timeout is ours,
            // to match the wait below
            env.retain(|(k, _)| k != "KERNEL_LAUNCH_TIMEOUT");
            if !env.iter().any(|(k, _)| k == "KERNEL_USERNAME") {
                env.push(("KERNEL_USERNAME".into(), user));
            }
            env.push(("KERNEL_LAUNCH_TIMEOUT".into(), launch.to_string()));
            // EG holds the POST until the kernel reported back (or KERNEL_LAUNCH_TIMEOUT passed, then
            // it kills it): our side must wait longer, or the answer is lost with a kernel behind it
            timeout = Duration::from_secs(launch + 30);
            if let Some((k, v)) = env.iter().find(|(_, v)| v.chars().count() > EG_MAX_ENV_VALUE) {
                return Err(anyhow!(GatewayError::new(
                    "config",
                    None,
                    format!(
                        "the kernel's environment variable {k} is {} characters long, and the Enterprise Gateway \
                         at {} takes values of at most {EG_MAX_ENV_VALUE} (it would answer HTTP 400): shorten it \
                         (a path: a shorter results folder, or exec.gateway_paths)",
                        v.chars().count(),
                        self.target.url
                    )
                )));
            }
        }
        let env: serde_json::Map<String, Value> = env.into_iter().map(|(k, v)| (k, json!(v))).collect();
        Ok((Value::Object(env), timeout))
    }

    /// Start a new kernel on the gateway and make it ready; a kernel that fails half-way is deleted.
    async fn create(&mut self) -> Result<()> {
        let (env, timeout) = self.start_request()?;
        let rest = self.shared.rest.clone();
        let create = rest.create(&self.name, &env, timeout);
        let id = tokio::select! {
            r = create => r.map_err(|e| self.explain(e))?,
            _ = crate::signals::token().cancelled() => bail!(KernelError::Interrupted),
        };
        self.shared.set_id(Some(id.clone()));
        self.conn = None;
        if let Err(e) = self.ready().await {
            let _ = rest.delete(&id, Duration::from_secs(5)).await;
            self.shared.set_id(None);
            self.conn = None;
            return Err(e);
        }
        Ok(())
    }

    /// A failed start told in terms of what to change.
    fn explain(&self, mut e: GatewayError) -> GatewayError {
        match e.kind {
            "unauthorized" => {
                let user = self.username();
                let default = if self.target.username.is_none() { " (the user running cellsci)" } else { "" };
                e.message = format!(
                    "the Enterprise Gateway at {} refuses to start kernels for the user '{user}'{default}: set \
                     exec.gateway_username to a user it accepts (EG refuses root unless its operator changes \
                     EG_UNAUTHORIZED_USERS). It said: {}",
                    self.target.url, e.message
                );
            }
            "launch_timeout" => {
                e.message = format!(
                    "the kernel '{}' on the Enterprise Gateway {} did not report back within its launch timeout \
                     ({:.0} s, the kernel start timeout; the gateway killed it): {}",
                    self.name,
                    self.target.url,
                    self.opts.startup_timeout.as_secs_f64().ceil(),
                    e.message
                );
            }
            _ => {}
        }
        e
    }

    /// Connect (again), wait until the kernel answers, then give it its folder and environment.
    async fn ready(&mut self) -> Result<()> {
        let id = self.shared.id().ok_or_else(|| anyhow!("the kernel is not running"))?;
        let within = self.opts.startup_timeout;
        let mut tries = 0;
        loop {
            tries += 1;
            if self.conn.as_ref().is_none_or(Conn::is_closed) {
                self.conn = Some(Conn::open(&self.shared.rest, &id, &self.session).await?);
            }
            match self.handshake(within).await {
                Ok(()) => break,
                // a restart may close the socket under us: open it once more
                Err(e) if tries < 3 && self.conn.as_ref().is_none_or(Conn::is_closed) => {
                    tracing::debug!("gateway kernel handshake: {e:#}; reconnecting");
                }
                Err(e) => return Err(e),
            }
        }
        self.setup().await
    }

    /// The content of the kernel's `kernel_info_reply` at the last handshake.
    pub fn info(&self) -> Option<&Value> {
        self.info.as_ref()
    }

    /// `kernel_info_request` until its reply: the kernel runs and our socket reaches it. Everything
    /// the gateway sent before the reply (statuses of a restart) is thrown away with it.
    async fn handshake(&mut self, within: Duration) -> Result<()> {
        let conn = self.conn.as_mut().ok_or_else(|| anyhow!("no connection"))?;
        let (id, text) = request(&self.session, "kernel_info_request", "shell", json!({}));
        let until = Instant::now() + within;
        // the kernel may still be starting (a pod being scheduled): ask again every 2 s
        let mut again = Instant::now();
        loop {
            if Instant::now() >= again {
                if !conn.send(text.clone()) {
                    bail!("the kernel's WebSocket closed while connecting");
                }
                again = Instant::now() + Duration::from_secs(2);
            }
            tokio::select! {
                m = conn.shell_rx.recv() => match m {
                    Some(m) if m.msg_type == "kernel_info_reply" && m.parent_id.as_deref() == Some(id.as_str()) => {
                        self.info = Some(m.content);
                        break;
                    }
                    Some(_) => {}
                    None => bail!("the kernel's WebSocket closed while connecting"),
                },
                _ = conn.closed.changed() => bail!("the kernel's WebSocket closed while connecting"),
                _ = tokio::time::sleep_until(again.min(until).into()) => {
                    if Instant::now() >= until {
                        bail!("the kernel on the gateway did not answer within {:.0} s", within.as_secs_f64());
                    }
                }
                _ = crate::signals::token().cancelled() => bail!(KernelError::Interrupted),
            }
        }
        conn.drain();
        Ok(())
    }

    /// Run the set-up cell: the working folder (after checking the kernel sees it: it must find a probe
    /// file just written there) and the environment, paths as the gateway names them.
    async fn setup(&mut self) -> Result<()> {
        let cwd = self.opts.cwd.clone();
        let remote = cwd.as_ref().map(|c| self.target.map_path(&c.display().to_string()));
        let name = format!(".cellsci-gateway-probe-{}", self.session);
        // only into a folder that exists here (write_atomic would create it)
        let probe = cwd.as_ref().map(|c| c.join(&name)).filter(|p| {
            p.parent().is_some_and(Path::is_dir) && crate::files::write_atomic(p, self.session.as_bytes()).is_ok()
        });
        let code = format!(
            "{HOST_DEFAULTS}{}{}",
            super::setup_code(
                remote.as_deref(),
                &self.env(),
                probe.as_ref().map(|_| (name.as_str(), self.session.as_str())),
            ),
            host_probe()
        );
        let eo = ExecOptions { timeout: Some(self.opts.startup_timeout), silent: true, ..Default::default() };
        // boxed: run may restart the kernel (a timeout), which runs this set-up again
        let r = Box::pin(self.run(&code, eo)).await;
        if let Some(p) = &probe {
            let _ = std::fs::remove_file(p);
        }
        let r = r?;
        if r.status == ExecStatus::Ok {
            let said: String = r.outputs.iter().filter_map(|o| o.get("text").and_then(Value::as_str)).collect();
            let host = said.lines().find_map(|l| l.strip_prefix(HOST_MARK)).map(|h| h.trim().to_string());
            *self.shared.host.lock().unwrap_or_else(|e| e.into_inner()) = host.filter(|h| !h.is_empty());
            return Ok(());
        }
        let why = format!("{}: {}", r.ename.unwrap_or_default(), r.evalue.unwrap_or_default());
        match (cwd, remote) {
            (Some(local), Some(remote)) => Err(anyhow!(GatewayError::new(
                "config",
                None,
                format!(
                    "the kernel on the gateway {} cannot use the trial folder: cellsci's {} is {remote} on the gateway's \
                     side, and the kernel cannot open it or sees another folder there ({why}). cellsci reads what the \
                     notebook writes from that folder, so the gateway must share it: set exec.gateway_paths to map \
                     a local prefix to where the gateway mounts it",
                    self.target.url,
                    local.display()
                )
            ))),
            _ => Err(anyhow!("the kernel's set-up failed: {why}")),
        }
    }

    /// Move the kernel into `cwd` with `env` set (paths mapped, the folder checked); a restart does it
    /// again.
    pub async fn enter(&mut self, cwd: &Path, env: &[(String, String)]) -> Result<()> {
        self.opts.enter(&mut self.base, cwd, env);
        self.setup().await
    }

    /// Pin the next (re)start to `host` of EG's remote hosts (`KERNEL_REMOTE_HOST`), or let EG choose.
    pub fn pin_host(&mut self, host: Option<&str>) {
        self.opts.env.retain(|(k, _)| k != "KERNEL_REMOTE_HOST");
        if let Some(h) = host {
            self.opts.env.push(("KERNEL_REMOTE_HOST".into(), h.to_string()));
        }
    }

    /// Forget `enter`: the next restart starts the kernel as it was first started.
    pub fn leave(&mut self) {
        self.opts.leave(&mut self.base);
    }

    /// Kill the kernel's state: restart it through the gateway (a new kernel when the gateway no longer
    /// has it), then make it ready.
    pub async fn restart(&mut self) -> Result<()> {
        self.down = None;
        let Some(id) = self.shared.id() else { return self.create().await };
        if self.enterprise {
            // On Enterprise Gateway a restart is a kill and a new launch anyway, and one whose launch
            // fails (its SSH host gone) leaves a kernel EG can no longer delete (3.3.0: DELETE answers
            // 500 "Cannot interrupt kernel. No kernel is running!" until EG restarts). A new kernel
            // instead: the old one deleted while it still runs, and the new one may land on another host.
            self.conn = None;
            delete_with_retries(&self.shared.rest, &id).await;
            self.shared.set_id(None);
            return self.create().await;
        }
        let restarted = tokio::select! {
            r = self.shared.rest.restart(&id, self.opts.startup_timeout.max(Duration::from_secs(30))) => r,
            _ = crate::signals::token().cancelled() => bail!(KernelError::Interrupted),
        };
        match restarted {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!("the gateway no longer has kernel {id}; starting a new one");
                self.shared.set_id(None);
                return self.create().await;
            }
            // A kernel the gateway is restarting itself (it died) cannot be restarted again meanwhile
            // (HTTP 500): a new kernel is just as fresh.
            Err(e) if matches!(e.kind, "server" | "reset" | "timeout") => {
                tracing::info!("restarting kernel {id} through the gateway failed ({e}); starting a new one");
                let _ = self.shared.rest.delete(&id, Duration::from_secs(5)).await;
                self.shared.set_id(None);
                return self.create().await;
            }
            Err(e) => return Err(e.into()),
        }
        self.ready().await.context("the restarted kernel on the gateway")
    }

    /// Delete the kernel on the gateway.
    pub async fn shutdown(&mut self) {
        self.conn = None;
        if let Some(id) = self.shared.id() {
            delete_with_retries(&self.shared.rest, &id).await;
            self.shared.set_id(None);
        }
        self.down = Some("it was shut down".into());
    }

    pub async fn execute(&mut self, code: &str, opts: ExecOptions<'_>) -> Result<ExecResult> {
        if let Some(why) = &self.down {
            let started = Instant::now();
            let msg = format!("the kernel is not running: {why} (call k:restart())");
            return Ok(ExecResult::failed(ExecStatus::Dead, &msg, started));
        }
        self.run(code, opts).await
    }

    /// Open the socket again after it dropped; `Lost::Gone` when the kernel is gone.
    async fn reconnect(&mut self) -> std::result::Result<(), Lost> {
        self.conn = None;
        let Some(id) = self.shared.id() else { return Err(Lost::Gone("the kernel is not running".into())) };
        let deadline = Instant::now() + self.target.reconnect_timeout;
        let mut wait = Duration::from_millis(200);
        loop {
            let err = match self.shared.rest.get(&id).await {
                Ok(None) => {
                    return Err(Lost::Gone(format!(
                        "the gateway {} no longer has the kernel (culled for idleness, deleted, or lost when the gateway restarted)",
                        self.target.url
                    )))
                }
                Ok(Some(_)) => match Conn::open(&self.shared.rest, &id, &self.session).await {
                    Ok(c) => {
                        tracing::info!("reconnected to kernel {id} on the gateway");
                        self.conn = Some(c);
                        return Ok(());
                    }
                    Err(e) => e,
                },
                Err(e) if e.kind == "auth" => return Err(Lost::Gone(e.message)),
                Err(e) => e,
            };
            if Instant::now() + wait > deadline {
                return Err(Lost::Gone(format!(
                    "the gateway was unreachable for {:.0} s: {err}",
                    self.target.reconnect_timeout.as_secs_f64()
                )));
            }
            tracing::debug!("gateway kernel {id}: {err}; reconnecting in {wait:?}");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = crate::signals::token().cancelled() => return Err(Lost::Interrupted),
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// A gone kernel: marked down, the cell's result `dead`.
    fn gone(&mut self, cell: Cell, why: String) -> ExecResult {
        self.conn = None;
        self.down = Some(why.clone());
        cell.dead(format!("the kernel died: {why}"), None)
    }

    async fn run(&mut self, code: &str, mut opts: ExecOptions<'_>) -> Result<ExecResult> {
        let started = Instant::now();
        if self.conn.as_ref().is_none_or(Conn::is_closed) {
            match self.reconnect().await {
                Ok(()) => {}
                Err(Lost::Interrupted) => bail!(KernelError::Interrupted),
                Err(Lost::Gone(why)) => {
                    self.down = Some(why.clone());
                    return Ok(ExecResult::failed(ExecStatus::Dead, &format!("the kernel died: {why}"), started));
                }
            }
        }
        let content = json!({
            "code": code,
            "silent": opts.silent,
            "store_history": !opts.silent,
            "user_expressions": {},
            "allow_stdin": false,
            "stop_on_error": !opts.allow_errors,
        });
        let (id, text) = request(&self.session, "execute_request", "shell", content);
        let mut cell = Cell::new(id, started, opts.max_output_bytes);
        let mut pending = Some(text);
        let timeout_at = opts.timeout.map(|t| started + t);
        let mut grace_at: Option<Instant> = None;
        let far = started + Duration::from_secs(86400 * 365);
        // after a reconnect: when to ask the gateway whether the kernel is still on our cell
        let mut verify_at: Option<Instant> = None;
        // After a silence, ask the gateway whether it still has the kernel: one it deleted (culled, or by
        // someone else) may leave our WebSocket open with nothing ever coming on it.
        let mut probe_at = Instant::now() + PROBE_AFTER;
        enum Ev {
            Iopub(crate::kernel::cell::Msg),
            Shell(crate::kernel::cell::Msg),
            IdleLate,
            Closed,
            Verify,
            Probe,
            Wake,
            Cancel,
        }
        while !cell.done() {
            if let Some(t) = pending.take() {
                let c = self.conn.as_mut().expect("connected");
                c.drain();
                if !c.send(t.clone()) {
                    pending = Some(t);
                }
            }
            let c = self.conn.as_mut().expect("connected");
            let wake = grace_at.or(timeout_at).unwrap_or(far);
            let idle_by = cell.idle_deadline();
            let closed_now = c.is_closed();
            // Ctrl-C and the cell's timeout first: a cell printing without end keeps a message always
            // ready, and must not keep them from firing.
            let ev = tokio::select! {
                biased;
                _ = crate::signals::token().cancelled() => Ev::Cancel,
                _ = tokio::time::sleep_until(wake.into()) => Ev::Wake,
                m = c.iopub_rx.recv() => m.map_or(Ev::Closed, Ev::Iopub),
                m = c.shell_rx.recv() => m.map_or(Ev::Closed, Ev::Shell),
                _ = std::future::ready(()), if closed_now => Ev::Closed,
                _ = c.closed.changed() => Ev::Closed,
                _ = tokio::time::sleep_until(idle_by.unwrap_or(far).into()), if idle_by.is_some() => Ev::IdleLate,
                _ = tokio::time::sleep_until(verify_at.unwrap_or(far).into()), if verify_at.is_some() => Ev::Verify,
                _ = tokio::time::sleep_until(probe_at.into()) => Ev::Probe,
            };
            if matches!(ev, Ev::Iopub(_) | Ev::Shell(_)) {
                probe_at = Instant::now() + PROBE_AFTER;
            }
            match ev {
                Ev::Probe => {
                    probe_at = Instant::now() + PROBE_AFTER;
                    let Some(kid) = self.shared.id() else { continue };
                    match self.shared.rest.get(&kid).await {
                        Ok(None) => {
                            let why = format!(
                                "the gateway {} no longer has the kernel (culled for idleness, or deleted)",
                                self.target.url
                            );
                            return Ok(self.gone(cell, why));
                        }
                        Ok(Some(model)) if model.get("execution_state").and_then(Value::as_str) == Some("dead") => {
                            return Ok(self.gone(cell, "the gateway says it is dead".into()));
                        }
                        // unreachable: the socket tells when it is really lost
                        _ => {}
                    }
                }
                Ev::Iopub(m) => {
                    let state = m.content.get("execution_state").and_then(Value::as_str);
                    if m.msg_type == "status" && matches!(state, Some("restarting" | "dead")) {
                        let why = if state == Some("dead") {
                            "it died on the gateway, which could not restart it".to_string()
                        } else {
                            "it died on the gateway, which started it again with none of its state".to_string()
                        };
                        return Ok(self.gone(cell, why));
                    }
                    if m.msg_type == "stream"
                        && m.content
                            .get("text")
                            .and_then(Value::as_str)
                            .is_some_and(|t| t.contains("IOPub data rate exceeded"))
                    {
                        tracing::warn!(
                            "the gateway {} dropped part of this cell's output (its IOPub data rate limit); start the \
                             gateway with --ZMQChannelsWebsocketConnection.iopub_data_rate_limit=0 to get all of it",
                            self.target.url
                        );
                    }
                    cell.iopub(m, &mut opts);
                }
                Ev::Shell(m) => cell.shell(m),
                Ev::IdleLate => {
                    tracing::warn!("the kernel replied but sent no idle status in time; taking the cell as done");
                    break;
                }
                Ev::Closed => {
                    // what the reader queued before the socket closed is still ours
                    if let Some(c) = self.conn.as_mut() {
                        while let Ok(m) = c.shell_rx.try_recv() {
                            cell.shell(m);
                        }
                        while let Ok(m) = c.iopub_rx.try_recv() {
                            cell.iopub(m, &mut opts);
                        }
                    }
                    if cell.done() {
                        break;
                    }
                    let why = self.conn.as_ref().and_then(|c| c.closed.borrow().clone()).unwrap_or_default();
                    tracing::warn!("lost the kernel's WebSocket while a cell ran ({why}); reconnecting");
                    match self.reconnect().await {
                        Ok(()) => verify_at = Some(Instant::now() + crate::kernel::cell::IOPUB_GRACE),
                        Err(Lost::Gone(why)) => return Ok(self.gone(cell, why)),
                        Err(Lost::Interrupted) => {
                            let r = cell.cut(ExecStatus::Error, "KeyboardInterrupt", "interrupted (Ctrl-C)".into());
                            bail!(KernelError::InterruptedCell(Box::new(r)));
                        }
                    }
                }
                Ev::Verify => {
                    verify_at = None;
                    if cell.replied() {
                        continue;
                    }
                    let Some(kid) = self.shared.id() else { continue };
                    match self.shared.rest.get(&kid).await {
                        Ok(None) => {
                            let why = format!("the gateway {} no longer has the kernel", self.target.url);
                            return Ok(self.gone(cell, why));
                        }
                        Ok(Some(model)) if model.get("execution_state").and_then(Value::as_str) == Some("idle") => {
                            // a request sent into the dying socket may never have arrived either
                            let msg =
                                "the connection to the gateway dropped while the cell ran, and its reply was lost: \
                                       the kernel is idle again; the outputs may be incomplete";
                            return Ok(cell.cut(ExecStatus::Error, "GatewayConnectionLost", msg.into()));
                        }
                        _ => verify_at = Some(Instant::now() + Duration::from_secs(2)),
                    }
                }
                Ev::Wake => {
                    if grace_at.is_none() {
                        tracing::debug!("cell timed out; interrupting the kernel through the gateway");
                        if let Err(e) = self.shared.interrupt().await {
                            tracing::warn!("interrupting the gateway kernel failed: {e:#}");
                        }
                        grace_at = Some(Instant::now() + self.opts.interrupt_grace);
                    } else if cell.replied() {
                        // The interrupt worked (the reply came): what it printed before is still
                        // arriving; the idle status (or IOPUB_GRACE) ends the cell.
                        grace_at = Some(far);
                    } else {
                        let mut r =
                            cell.cut(ExecStatus::Timeout, "CellTimeoutError", restarted_after_timeout(opts.timeout));
                        r.restarted = true;
                        self.restart().await.context("restarting the gateway kernel after a timeout")?;
                        r.duration = started.elapsed().as_secs_f64();
                        return Ok(r);
                    }
                }
                Ev::Cancel => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), self.shared.interrupt()).await;
                    let r = cell.cut(ExecStatus::Error, "KeyboardInterrupt", "interrupted (Ctrl-C)".into());
                    bail!(KernelError::InterruptedCell(Box::new(r)));
                }
            }
        }
        Ok(cell.finish(grace_at.map(|_| opts.timeout.unwrap_or_default())))
    }
}

impl Drop for GatewayKernel {
    fn drop(&mut self) {
        // Delete the kernel on the gateway, bounded, on a thread of its own (this may run inside the
        // runtime, or while it shuts down): a dropped handle must not leave a kernel on the cluster.
        let Some(id) = self.shared.id() else { return };
        self.conn = None;
        let rest = self.shared.rest.clone();
        let t = std::thread::spawn(move || delete_blocking(&rest, &id));
        let _ = t.join();
        self.shared.set_id(None);
    }
}

fn cleanup_key(id: &str) -> String {
    format!("gateway-kernel-{id}")
}

/// Delete a kernel from outside the runtime (a drop, a quit at once): on a runtime of its own.
fn delete_blocking(rest: &Rest, id: &str) {
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
        rt.block_on(delete_with_retries(rest, id));
    }
}

/// Delete a kernel, again for a while when the gateway is busy with it (a restart in progress answers
/// 5xx) or slow to answer.
async fn delete_with_retries(rest: &Rest, id: &str) {
    for attempt in 1..=3 {
        match rest.delete(id, Duration::from_secs(10)).await {
            Ok(()) => return,
            Err(e) if attempt < 3 && matches!(e.kind, "server" | "timeout" | "reset") => {
                tracing::debug!("deleting kernel {id} on the gateway: {e}; again");
                tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
            }
            Err(e) => {
                tracing::warn!("could not delete kernel {id} on the gateway: {e}");
                return;
            }
        }
    }
}

/// Before the set-up: what a process expects and Enterprise Gateway does not give a kernel started with
/// an environment (no PATH, no HOME), from the kernel host's own defaults.
const HOST_DEFAULTS: &str = "import os as _c_os, pwd as _c_pwd\n\
_c_os.environ.setdefault('PATH', _c_os.defpath)\n\
_c_os.environ.setdefault('HOME', _c_pwd.getpwuid(_c_os.getuid()).pw_dir)\n\
del _c_os, _c_pwd\n";

/// The line of the set-up's output that says where the kernel runs.
const HOST_MARK: &str = "cellsci-kernel-host: ";

/// After the set-up: where the kernel runs (the address its SSH launch came in on, else its host name),
/// on a line starting with [`HOST_MARK`].
fn host_probe() -> String {
    format!(
        "import os as _c_os, socket as _c_socket\n\
         print({HOST_MARK:?} + ((_c_os.environ.get('SSH_CONNECTION') or '').split()[2:3] or [_c_socket.gethostname()])[0])\n\
         del _c_os, _c_socket\n"
    )
}

/// How long a running cell may go without a message before the gateway is asked about its kernel.
const PROBE_AFTER: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_a_failed_launch_names() {
        let m = "launch timeout due to: Waited too long (5.0s) to get connection file. Check Enterprise Gateway log \
                 and kernel log (127.0.0.2:/tmp/eg/logs/kernel-1.log) for more information.";
        assert_eq!(host_named_in(m).as_deref(), Some("127.0.0.2"));
        assert_eq!(host_named_in("Failure occurred starting kernel on '10.0.0.7': ...").as_deref(), Some("10.0.0.7"));
        assert_eq!(host_named_in("HTTP 500: NoSuchKernel"), None);
    }

    #[test]
    fn paths_map_by_their_longest_prefix() {
        let mut t = Target::new("http://g", Secret::new(None));
        t.paths = vec![("/lab".into(), "/mnt/lab".into()), ("/lab/results".into(), "/data/results/".into())];
        assert_eq!(t.map_path("/lab/results/run1/x.h5"), "/data/results/run1/x.h5");
        assert_eq!(t.map_path("/lab/ideas.json"), "/mnt/lab/ideas.json");
        assert_eq!(t.map_path("/lab"), "/mnt/lab");
        assert_eq!(t.map_path("/labx/y"), "/labx/y", "a prefix matches whole folder names only");
        assert_eq!(t.map_path("/other/y"), "/other/y", "no mapping: the same path");
    }
}
