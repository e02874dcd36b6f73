//! A real Jupyter Enterprise Gateway 3.3 on 127.0.0.1 for the Enterprise Gateway tests: its own venv
//! (`.venv-eg`, made by `.ci/run`: EG pins `jupyter_client<7`, `jupyter_server<2`, `pyzmq<25`, so it cannot
//! share the test venv), a free port, a random token, its own temp dir holding the kernelspecs
//! (`JUPYTER_PATH`), the runtime dir, the kernel logs and EG's log. Optionally an sshd on 127.0.0.2 with
//! its own host key and authorized key, so that EG's DistributedProcessProxy launches kernels over SSH
//! for real (jupyter_client does not count 127.0.0.2 as local, so EG does not take its Popen shortcut).
//!
//! The kernelspecs:
//! - `python3_local`: LocalProcessProxy, the test venv's ipykernel (what KG would run);
//! - `python3_launcher`: DistributedProcessProxy on `localhost` (no SSH), with EG's launcher;
//! - `sleeper`: DistributedProcessProxy on `localhost` whose argv never reports back (a launch timeout);
//! - `python3_ssh` (with [`EgOpts::ssh`]): DistributedProcessProxy on 127.0.0.2 through the sshd;
//! - `python3_ssh_hosts` (with [`EgOpts::ssh`]): the same over two hosts, 127.0.0.2 and 127.0.0.3 (the
//!   sshd listens on both), for pools spread over hosts; 127.0.0.4 has no sshd (a host that is down).
//!
//! The launcher (`launch_ipykernel.py`) is not in EG's wheel; it is taken from EG's sdist that `.ci/run`
//! downloads next to the venv (`.venv-eg/src/jupyter_enterprise_gateway-3.3.0.tar.gz`), and patched to
//! bind the kernel's ports to the loopback address its SSH launch came in on (127.0.0.1 without SSH)
//! instead of its hard-coded 0.0.0.0. Launcher kernels
//! run on the EG venv's python, which has what the launcher imports (pycryptodomex) and ipykernel 6.
//!
//! Found while building it (EG 3.3.0):
//! - EG's response socket defaults to port 8877 for every EG: each harness picks a free one
//!   (`EG_RESPONSE_PORT`), or two tests at once would steal each other's connection info.
//! - EG started as root refuses every kernel whose request names no `KERNEL_USERNAME` (403): the harness
//!   keeps that default unless [`EgOpts::allow_root`].
//! - Killing EG shuts its LocalProcessProxy kernels down with it (jupyter_client's parent poller); the
//!   cleanup still kills whatever process names our temp dir, launcher kernels included.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::gateway::pid_alive;

/// The venv holding Enterprise Gateway (`CELLSCI_EG_VENV`, else the checkout's `.venv-eg`).
pub fn eg_venv() -> PathBuf {
    std::env::var_os("CELLSCI_EG_VENV").map(PathBuf::from).unwrap_or_else(|| super::repo().join(".venv-eg"))
}

/// Say why a test cannot run its real part and return None; under `CI=true`, fail instead.
#[track_caller]
pub fn skip<T>(why: &str) -> Option<T> {
    assert!(std::env::var("CI").map_or(true, |v| v != "true"), "CI=true and {why}");
    eprintln!("SKIPPED: {why}");
    None
}

/// Options of an EG start.
#[derive(Clone, Debug, Default)]
pub struct EgOpts {
    /// Also start an sshd on 127.0.0.2 and offer the `python3_ssh` kernelspec.
    pub ssh: bool,
    /// `EG_UNAUTHORIZED_USERS=nobody`: EG also starts kernels for root.
    pub allow_root: bool,
    /// More command-line arguments, appended last.
    pub args: Vec<String>,
    /// More environment variables for EG.
    pub env: Vec<(String, String)>,
}

impl EgOpts {
    pub fn ssh(mut self) -> Self {
        self.ssh = true;
        self
    }
    pub fn allow_root(mut self) -> Self {
        self.allow_root = true;
        self
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
}

/// An sshd on 127.0.0.2:<port> and 127.0.0.3:<port> that accepts the harness's key for the user running the tests.
pub struct Sshd {
    pub addr: String,
    pub port: u16,
    config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Sshd {
    /// Host key, client key, authorized_keys and known_hosts under `dir` (`dir/home/.ssh` is the
    /// client side, for EG's paramiko); None after a SKIPPED line when there is no sshd to start.
    fn start(dir: &Path) -> Option<Sshd> {
        let sshd = Path::new("/usr/sbin/sshd");
        if !sshd.exists() {
            return skip("no /usr/sbin/sshd (Debian's openssh-server, which .ci/run installs)");
        }
        let s = dir.join("ssh");
        let home_ssh = dir.join("home/.ssh");
        std::fs::create_dir_all(&s).unwrap();
        std::fs::create_dir_all(&home_ssh).unwrap();
        let keygen = |f: &Path| {
            let o = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(f).output();
            match o {
                Ok(o) if o.status.success() => true,
                Ok(o) => skip::<()>(&format!("ssh-keygen failed: {}", String::from_utf8_lossy(&o.stderr))).is_some(),
                Err(e) => skip::<()>(&format!("cannot run ssh-keygen: {e}")).is_some(),
            }
        };
        if !keygen(&s.join("host_ed25519")) || !keygen(&home_ssh.join("id_ed25519")) {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.2:0").ok()?.local_addr().unwrap().port();
        std::fs::copy(home_ssh.join("id_ed25519.pub"), s.join("authorized_keys")).unwrap();
        let host_pub = std::fs::read_to_string(s.join("host_ed25519.pub")).unwrap();
        let host_key: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        let key = host_key.join(" ");
        std::fs::write(home_ssh.join("known_hosts"), format!("[127.0.0.2]:{port} {key}\n[127.0.0.3]:{port} {key}\n"))
            .unwrap();
        // privilege separation needs it (root); as another user sshd runs unprivileged without it
        let _ = std::fs::create_dir_all("/run/sshd");
        let config = s.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.2\nListenAddress 127.0.0.3\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nUsePAM no\nStrictModes no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n\
                 LogLevel VERBOSE\n",
                d = s.display()
            ),
        )
        .unwrap();
        let mut d = Sshd { addr: "127.0.0.2".into(), port, config, child: None, log: s.join("sshd.log") };
        if !d.spawn() {
            return None;
        }
        Some(d)
    }

    fn spawn(&mut self) -> bool {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn();
        let Ok(child) = child else { return skip::<()>("cannot start /usr/sbin/sshd").is_some() };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect((self.addr.as_str(), self.port)).is_err() {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                let why = format!("sshd exited ({st}): {}", std::fs::read_to_string(&self.log).unwrap_or_default());
                return skip::<()>(&why).is_some();
            }
            if Instant::now() > deadline {
                return skip::<()>("sshd did not listen within 20 s").is_some();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// The listening sshd's pid.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Stop the listening sshd (sessions already open keep their own processes): the host becomes
    /// unreachable for new launches.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Enterprise {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub token: String,
    pub port: u16,
    response_port: u16,
    opts: EgOpts,
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub sshd: Option<Sshd>,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

const READY_SECS: u64 = 60;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}

impl Enterprise {
    /// An EG with LocalProcessProxy and launcher kernelspecs, as root refusing root; None after a
    /// SKIPPED line when EG is not installed (a failure under CI=true).
    #[track_caller]
    pub fn start() -> Option<Enterprise> {
        Enterprise::start_with(EgOpts::default())
    }

    #[track_caller]
    pub fn start_with(opts: EgOpts) -> Option<Enterprise> {
        let venv = eg_venv();
        if !venv.join("bin/jupyter-enterprisegateway").is_file() {
            return skip(&format!(
                "no Enterprise Gateway in {} (.ci/run installs it: python3 -m venv .venv-eg; .venv-eg/bin/pip install \
                 jupyter_enterprise_gateway 'ipykernel>=6.29,<7')",
                venv.display()
            ));
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::Builder::new().prefix("cellsci-eg-").tempdir().expect("temp dir");
        for sub in ["runtime", "data", "config", "logs", "home", "jp/kernels"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        // one launcher for every host: it binds the address its SSH launch came in on (127.0.0.1 without SSH)
        let launcher = || -> Option<PathBuf> {
            let sdist = venv.join("src/jupyter_enterprise_gateway-3.3.0.tar.gz");
            let member = "jupyter_enterprise_gateway-3.3.0/etc/kernel-launchers/python/scripts/launch_ipykernel.py";
            let out = dir.path().join("launcher");
            std::fs::create_dir_all(&out).unwrap();
            let o = Command::new("tar").arg("xzf").arg(&sdist).arg("-O").arg(member).output().ok()?;
            if !o.status.success() {
                return skip(&format!(
                    "no EG launcher in {} (.ci/run downloads the sdist: pip download --no-deps --no-binary :all: \
                     jupyter_enterprise_gateway==3.3.0)",
                    sdist.display()
                ));
            }
            let bind = "(os.environ.get('SSH_CONNECTION') or '127.0.0.1 0 127.0.0.1 0').split()[2]";
            let src = String::from_utf8_lossy(&o.stdout).replace("\"0.0.0.0\"", bind);
            assert!(src.contains(bind), "the launcher binds 0.0.0.0 no more: patch it otherwise");
            let p = out.join("launch_ipykernel.py");
            std::fs::write(&p, src).unwrap();
            Some(p)
        };
        let egpy = venv.join("bin/python");
        let spec = |name: &str, v: Value| {
            let d = dir.path().join("jp/kernels").join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("kernel.json"), v.to_string()).unwrap();
        };
        let local_proxy = "enterprise_gateway.services.processproxies.processproxy.LocalProcessProxy";
        let distributed = "enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy";
        spec(
            "python3_local",
            json!({"argv": [super::test_venv().join("bin/python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                   "display_name": "Python 3 (local, through EG)", "language": "python",
                   "metadata": {"process_proxy": {"class_name": local_proxy}}}),
        );
        let launcher_argv = |script: &Path| {
            json!([
                egpy,
                script,
                "--kernel-id",
                "{kernel_id}",
                "--port-range",
                "{port_range}",
                "--response-address",
                "{response_address}",
                "--public-key",
                "{public_key}",
                "--kernel-class-name",
                "ipykernel.ipkernel.IPythonKernel"
            ])
        };
        let the_launcher = launcher()?;
        spec(
            "python3_launcher",
            json!({"argv": launcher_argv(&the_launcher), "display_name": "Python 3 (EG launcher)", "language": "python",
                   "metadata": {"process_proxy": {"class_name": distributed, "config": {"remote_hosts": "localhost"}}}}),
        );
        // never reports back; its command line names our dir, so the cleanup finds it
        spec(
            "sleeper",
            json!({"argv": [egpy, "-c", "import time; time.sleep(120)", "{kernel_id}", dir.path()],
                   "display_name": "never ready", "language": "python",
                   "metadata": {"process_proxy": {"class_name": distributed, "config": {"remote_hosts": "localhost"}}}}),
        );
        let sshd = if opts.ssh {
            let s = Sshd::start(dir.path())?;
            spec(
                "python3_ssh",
                json!({"argv": launcher_argv(&the_launcher), "display_name": "Python 3 (over SSH)", "language": "python",
                       "metadata": {"process_proxy": {"class_name": distributed, "config": {"remote_hosts": "127.0.0.2"}}}}),
            );
            spec(
                "python3_ssh_hosts",
                json!({"argv": launcher_argv(&the_launcher), "display_name": "Python 3 (over SSH, two hosts)", "language": "python",
                       "metadata": {"process_proxy": {"class_name": distributed,
                                                      "config": {"remote_hosts": "127.0.0.2,127.0.0.3"}}}}),
            );
            Some(s)
        } else {
            None
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let http = reqwest::Client::builder().no_proxy().build().expect("reqwest client");
        let port = free_port();
        let mut g = Enterprise {
            url: format!("http://127.0.0.1:{port}"),
            token: uuid::Uuid::new_v4().simple().to_string(),
            port,
            response_port: free_port(),
            opts,
            dir,
            child: None,
            sshd,
            rt,
            http,
        };
        g.spawn_until_ready(Duration::from_secs(0));
        Some(g)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("eg.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let l = self.log();
        let lines: Vec<&str> = l.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn command(&self) -> Command {
        let mut c = Command::new(eg_venv().join("bin/jupyter-enterprisegateway"));
        c.args([
            "--ip=127.0.0.1".to_string(),
            format!("--port={}", self.port),
            "--port_retries=0".to_string(),
            "--EnterpriseGatewayApp.default_kernel_name=python3_local".to_string(),
        ]);
        c.args(&self.opts.args);
        let d = self.dir.path();
        c.current_dir(d)
            .env("JUPYTER_PATH", d.join("jp"))
            .env("JUPYTER_RUNTIME_DIR", d.join("runtime"))
            .env("JUPYTER_DATA_DIR", d.join("data"))
            .env("JUPYTER_CONFIG_DIR", d.join("config"))
            .env_remove("JUPYTER_CONFIG_PATH")
            .env("EG_AUTH_TOKEN", &self.token)
            .env("EG_LIST_KERNELS", "True")
            .env("EG_RESPONSE_IP", "127.0.0.1")
            .env("EG_RESPONSE_PORT", self.response_port.to_string())
            .env("EG_KERNEL_LOG_DIR", d.join("logs"))
            .env("HOME", d.join("home"))
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .process_group(0);
        if self.opts.allow_root {
            c.env("EG_UNAUTHORIZED_USERS", "nobody");
        }
        if let Some(s) = &self.sshd {
            c.env("EG_SSH_PORT", s.port.to_string());
        }
        for (k, v) in &self.opts.env {
            c.env(k, v);
        }
        c
    }

    #[track_caller]
    fn spawn_until_ready(&mut self, retry_bind: Duration) {
        let first = Instant::now();
        loop {
            let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("eg log");
            let child = self
                .command()
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("start Enterprise Gateway from {}: {e}", eg_venv().display()));
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(READY_SECS);
            loop {
                if let Some(st) = self.child.as_mut().unwrap().try_wait().expect("wait") {
                    self.child = None;
                    if first.elapsed() < retry_bind {
                        std::thread::sleep(Duration::from_millis(200));
                        break;
                    }
                    panic!("Enterprise Gateway exited ({st}) before it was ready; its log:\n{}", self.log_tail());
                }
                if self.get("/api/kernelspecs").0 == 200 {
                    return;
                }
                if Instant::now() > deadline {
                    self.stop();
                    panic!("Enterprise Gateway did not answer within {READY_SECS} s; its log:\n{}", self.log_tail());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// SIGKILL EG alone (a crash). Reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port with the same token; wait until it answers.
    #[track_caller]
    pub fn restart(&mut self) {
        self.kill();
        self.spawn_until_ready(Duration::from_secs(10));
    }

    /// SIGTERM EG's process group (SIGKILL after 5 s), then SIGKILL every process that names our temp
    /// dir (kernels, launchers, sleepers; not the sshd) and wait until they are gone. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pgid = c.id() as i32;
            // SAFETY: kill(2) on the process group of the child we started (process_group(0)).
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            // SAFETY: as above.
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

    /// Live processes other than EG and the sshd whose command line names our temp dir: the kernels
    /// (their connection file in our runtime dir, or our launcher), however they were launched.
    pub fn kernel_pids(&self) -> Vec<i32> {
        let needle = self.dir.path().display().to_string();
        let skip: Vec<i32> = [self.pid(), self.sshd.as_ref().and_then(Sshd::pid)].into_iter().flatten().collect();
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir("/proc") else { return out };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if skip.contains(&pid) || pid as u32 == std::process::id() {
                continue;
            }
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            // sshd's own session processes name the config, not a kernel
            if cmd.contains(&needle) && !cmd.contains("sshd") && pid_alive(pid) {
                out.push(pid);
            }
        }
        out.sort();
        out
    }

    /// One request with `token` (None: none); the status and JSON body (Null when none). 0: no answer.
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

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, Some(&self.token), None)
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request("POST", path, Some(&self.token), Some(body))
    }

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
}

impl Drop for Enterprise {
    fn drop(&mut self) {
        self.stop();
        if let Some(s) = self.sshd.as_mut() {
            s.stop();
        }
    }
}

/// The name of the user running the tests (what cellsci sends as `KERNEL_USERNAME` by default).
pub fn os_user_for_tests() -> String {
    // SAFETY: getpwuid returns static storage or null; read at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if !pw.is_null() {
            return std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned();
        }
    }
    std::env::var("USER").unwrap_or_default()
}
