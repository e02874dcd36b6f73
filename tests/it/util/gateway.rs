//! A real Jupyter Kernel Gateway (`kernel_gateway` from the test venv, `util::test_venv()`) on 127.0.0.1,
//! for the gateway-kernel tests: a free port, a random token, its own temp dir (runtime dir, working dir,
//! log). `kill()` simulates a crashed gateway (its kernels survive as orphans), `restart()` brings it back on
//! the same port with the same token, and `stop()`/`Drop` leave nothing running: the gateway, then every
//! kernel whose connection file lies in its runtime dir (jupyter_client starts kernels in new sessions, so
//! they outlive the gateway and are not in its process group).
//!
//! Found while building it (kernel_gateway 3.0.1):
//! - `KernelGatewayApp.port_retries` defaults to 50: when the port is taken the gateway silently listens on
//!   another one. We pass `port_retries=0`, so a busy port is a failed start, which `restart()` retries.
//! - Kernel specs come from the user's data dir before the venv's `sys.prefix` one: `JUPYTER_DATA_DIR` and
//!   `JUPYTER_CONFIG_DIR` point into the temp dir, so only the venv's `python3` spec is seen. Its argv[0]
//!   `python` is replaced by the gateway's `sys.executable` (jupyter_client), i.e. the venv's python.
//! - A "crashed gateway" does not leave ipykernel orphans for long: jupyter_client sets `JPY_PARENT_PID`
//!   and ipykernel's `ParentPollerUnix` exits when its parent changes (polled each second). Other kernels
//!   (and `GatewayOpts::orphan_kernelspec`) stay orphaned, hence the cleanup by runtime dir.
//! - The gateway's IOPub rate limit (jupyter_server's `ZMQChannelsWebsocketConnection`, 1 MB/s over 3 s,
//!   on by default) replaces a 20 MB `print` by a ~320-char "IOPub data rate exceeded" notice while the
//!   cell still replies "ok" (seen with a tornado WebSocket client). The log says to set
//!   `--ServerApp.iopub_data_rate_limit`, but what works for the gateway is
//!   `--ZMQChannelsWebsocketConnection.iopub_data_rate_limit=0` (or `.limit_rate=False`): pass it with
//!   `GatewayOpts::arg` when a test needs large outputs whole.
//! - `GET /api/kernels` is 403 unless `JupyterWebsocketPersonality.list_kernels=True`.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Options of a gateway start.
#[derive(Clone, Debug, Default)]
pub struct GatewayOpts {
    /// `--MappingKernelManager.cull_idle_timeout=N` (seconds; the culler is off without it).
    pub cull_idle_timeout: Option<u32>,
    /// `--MappingKernelManager.cull_interval=M` (seconds between culler passes).
    pub cull_interval: Option<u32>,
    /// More command-line arguments, appended last (so they override ours).
    pub args: Vec<String>,
    /// Also offer the kernelspec `python3-orphan`: the venv's ipykernel without its parent poller (empty
    /// `JPY_PARENT_PID`), so it really survives a killed gateway. The plain `python3` kernel (ipykernel's
    /// `ParentPollerUnix`) exits by itself about a second after its gateway dies.
    pub orphan_kernelspec: bool,
}

impl GatewayOpts {
    pub fn culler(mut self, idle_timeout: u32, interval: u32) -> Self {
        self.cull_idle_timeout = Some(idle_timeout);
        self.cull_interval = Some(interval);
        self
    }

    pub fn orphan_kernelspec(mut self) -> Self {
        self.orphan_kernelspec = true;
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
}

pub struct Gateway {
    server: Server,
    opts: GatewayOpts,
}

/// The failsafe of every wait for a gateway to answer (not a timing assertion).
const READY_SECS: u64 = 60;

/// A free port on 127.0.0.1 (free when asked).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}

impl Gateway {
    /// A gateway with default options (no culler), ready to answer.
    #[track_caller]
    pub fn start() -> Gateway {
        Gateway::start_with(GatewayOpts::default())
    }

    #[track_caller]
    pub fn start_with(opts: GatewayOpts) -> Gateway {
        let dir = tempfile::Builder::new().prefix("cellsci-gateway-").tempdir().expect("temp dir");
        for sub in ["runtime", "data", "config"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        if opts.orphan_kernelspec {
            let spec = serde_json::json!({
                "argv": ["/bin/sh", "-c", "JPY_PARENT_PID= exec \"$0\" -m ipykernel_launcher -f \"$1\"",
                         super::test_venv().join("bin/python"), "{connection_file}"],
                "display_name": "Python 3 (no parent poller)",
                "language": "python",
            });
            let d = dir.path().join("data/kernels/python3-orphan");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("kernel.json"), spec.to_string()).unwrap();
        }
        let runtime = dir.path().join("runtime");
        let mut g = Gateway { server: Server::new("the kernel gateway", dir, "gateway.log", runtime), opts };
        g.server.spawn_until_ready(|s| Gateway::command(s, &g.opts), Duration::from_secs(0));
        g
    }

    /// `JUPYTER_RUNTIME_DIR`: the kernels' connection files are here.
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir().join("runtime")
    }

    fn command(s: &Server, opts: &GatewayOpts) -> Command {
        let venv = super::test_venv();
        let mut c = Command::new(venv.join("bin/python"));
        c.args(["-m", "kernel_gateway"]);
        // traitlets refuses an option given twice: an extra argument replaces ours.
        let mut ours = vec![
            "--KernelGatewayApp.ip=127.0.0.1".to_string(),
            format!("--KernelGatewayApp.port={}", s.port),
            "--KernelGatewayApp.port_retries=0".to_string(),
            format!("--KernelGatewayApp.auth_token={}", s.token),
            "--JupyterWebsocketPersonality.list_kernels=True".to_string(),
        ];
        if let Some(n) = opts.cull_idle_timeout {
            ours.push(format!("--MappingKernelManager.cull_idle_timeout={n}"));
        }
        if let Some(n) = opts.cull_interval {
            ours.push(format!("--MappingKernelManager.cull_interval={n}"));
        }
        for a in ours {
            let key = a.split('=').next().unwrap_or_default().to_string() + "=";
            if !opts.args.iter().any(|x| x.starts_with(&key)) {
                c.arg(a);
            }
        }
        c.args(&opts.args);
        let d = s.dir();
        c.current_dir(d)
            .env("JUPYTER_RUNTIME_DIR", s.dir().join("runtime"))
            .env("JUPYTER_DATA_DIR", d.join("data"))
            .env("JUPYTER_CONFIG_DIR", d.join("config"))
            .env_remove("JUPYTER_PATH")
            .env_remove("JUPYTER_CONFIG_PATH")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .process_group(0);
        c
    }

    /// Start it again on the same port, with the same token and runtime dir; wait until it answers.
    #[track_caller]
    pub fn restart(&mut self) {
        self.server.kill();
        self.server.spawn_until_ready(|s| Gateway::command(s, &self.opts), Duration::from_secs(10));
    }
}

/// The gateway's url, token, port, log, REST API, `kill()`, `stop()`, `kernel_pids()`.
impl std::ops::Deref for Gateway {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl std::ops::DerefMut for Gateway {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.server
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.server.stop();
    }
}

/// What the two gateway harnesses share (Kernel Gateway here, Enterprise Gateway in `util::enterprise`):
/// the server process in its own process group with its temp dir and log, started until it answers,
/// killed (a crash), stopped with every kernel process that names its folder, and its REST API.
pub struct Server {
    /// "the kernel gateway", "Enterprise Gateway": for messages
    what: &'static str,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub token: String,
    pub port: u16,
    dir: tempfile::TempDir,
    log_name: &'static str,
    /// The folder a kernel's command line names (its connection file's, or its launcher's).
    needle: PathBuf,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Server {
    /// A server (not started) on a free loopback port with a random token; `dir` is its temp dir,
    /// `log_name` its log file there, `needle` the folder its kernels' command lines name.
    pub fn new(what: &'static str, dir: tempfile::TempDir, log_name: &'static str, needle: PathBuf) -> Server {
        // reqwest is built with rustls-no-provider: a client needs a process-wide provider, even for http://.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = free_port();
        Server {
            what,
            url: format!("http://127.0.0.1:{port}"),
            token: uuid::Uuid::new_v4().simple().to_string(),
            port,
            dir,
            log_name,
            needle,
            child: None,
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime"),
            http: reqwest::Client::builder().no_proxy().build().expect("reqwest client"),
        }
    }

    /// The server's temp dir (its working dir; holds its log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(self.log_name)
    }

    /// Everything the server printed (stdout and stderr, every start).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let l = self.log();
        let lines: Vec<&str> = l.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Start `command(self)`; wait until `GET /api/kernelspecs` answers 200. When it exits before (the
    /// port still taken: the harnesses pass port_retries=0), start it again for `retry_bind`. Panics with
    /// the log's tail.
    #[track_caller]
    pub fn spawn_until_ready(&mut self, command: impl Fn(&Server) -> Command, retry_bind: Duration) {
        let first = Instant::now();
        loop {
            let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("server log");
            let child = command(self)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", self.what));
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(READY_SECS);
            loop {
                if let Some(st) = self.child.as_mut().unwrap().try_wait().expect("wait") {
                    self.child = None;
                    if first.elapsed() < retry_bind {
                        std::thread::sleep(Duration::from_millis(200));
                        break;
                    }
                    panic!("{} exited ({st}) before it was ready; its log:\n{}", self.what, self.log_tail());
                }
                if self.get("/api/kernelspecs").0 == 200 {
                    return;
                }
                if Instant::now() > deadline {
                    self.stop();
                    panic!("{} did not answer within {READY_SECS} s; its log:\n{}", self.what, self.log_tail());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// SIGKILL the server alone (a crash): kernels it started in their own sessions keep running,
    /// orphaned. Reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the server's process group (SIGKILL after 5 s), then SIGKILL every kernel process left
    /// (see `kernel_pids`) and wait until they are gone. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pgid = c.id() as i32;
            // SAFETY: kill(2) on the process group of the child we started (process_group(0): pgid == pid).
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            // SAFETY: as above; the group may be gone already (ESRCH is fine).
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.kernel_pids();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                // SAFETY: kill(2) on a process whose command line names our own temp dir.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Live processes (not zombies, not the server, no sshd session) whose command
    /// line names `needle`: the kernels this server started, orphaned or not, however launched.
    pub fn kernel_pids(&self) -> Vec<i32> {
        let needle = self.needle.display().to_string();
        let me = self.pid();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if Some(pid) == me || pid as u32 == std::process::id() {
                continue;
            }
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            // sshd's own session processes name its config, not a kernel
            if cmd.contains(&needle) && !cmd.contains("sshd") && pid_alive(pid) {
                out.push(pid);
            }
        }
        out.sort();
        out
    }

    /// One request with `token` (None: no Authorization header); the status and the JSON body
    /// (`Value::Null` when there is none or it is not JSON). Status 0: no answer (connection refused...).
    pub fn request(&self, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        let mut rq = self.http.request(method, format!("{}{path}", self.url)).timeout(Duration::from_secs(90));
        if let Some(t) = token {
            rq = rq.header("Authorization", format!("token {t}"));
        }
        if let Some(b) = body {
            rq = rq.json(b);
        }
        self.rt.block_on(async move {
            match rq.send().await {
                Ok(r) => {
                    let st = r.status().as_u16();
                    let bytes = r.bytes().await.unwrap_or_default();
                    (st, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
                }
                Err(_) => (0, Value::Null),
            }
        })
    }

    /// GET with the token.
    pub fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, Some(&self.token), None)
    }

    /// POST `body` with the token.
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request("POST", path, Some(&self.token), Some(body))
    }

    /// `DELETE /api/kernels/<id>`: its status (204 when it was there).
    pub fn delete_kernel(&self, id: &str) -> u16 {
        self.request("DELETE", &format!("/api/kernels/{id}"), Some(&self.token), None).0
    }

    /// `GET /api/kernels` (which must answer 200).
    #[track_caller]
    pub fn kernels(&self) -> Vec<Value> {
        let (st, v) = self.get("/api/kernels");
        assert_eq!(st, 200, "GET /api/kernels: {v}");
        v.as_array().cloned().unwrap_or_default()
    }

    /// `POST /api/kernels {"name": "python3"}` (which must answer 201): the new kernel's id.
    #[track_caller]
    pub fn start_kernel(&self) -> String {
        self.start_kernel_named("python3")
    }

    /// `POST /api/kernels {"name": name}` (which must answer 201): the new kernel's id.
    #[track_caller]
    pub fn start_kernel_named(&self, name: &str) -> String {
        let (st, v) = self.post("/api/kernels", &serde_json::json!({"name": name}));
        assert_eq!(st, 201, "POST /api/kernels: {v}\n{}", self.log_tail());
        v["id"].as_str().expect("a kernel id").to_string()
    }
}

/// A process that exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name, which is in parentheses (and may contain spaces).
    match stat.rfind(')') {
        Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X') | None),
        None => false,
    }
}
