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

use super::gateway::{free_port, Server};

/// The venv holding Enterprise Gateway (`CELLSCI_EG_VENV`, else the checkout's `.venv-eg`).
pub fn eg_venv() -> PathBuf {
    std::env::var_os("CELLSCI_EG_VENV").map(PathBuf::from).unwrap_or_else(|| super::repo().join(".venv-eg"))
}

/// Say why a test cannot run its real part and return None; under `CI=true`, fail instead.
#[track_caller]
pub fn skip<T>(why: &str) -> Option<T> {
    super::skip_unless_ci(why);
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
    server: Server,
    response_port: u16,
    opts: EgOpts,
    pub sshd: Option<Sshd>,
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
        let needle = dir.path().to_path_buf();
        let mut g = Enterprise {
            server: Server::new("Enterprise Gateway", dir, "eg.log", needle),
            response_port: free_port(),
            opts,
            sshd,
        };
        let (opts, port, sshd) = (&g.opts, g.response_port, g.sshd.as_ref());
        g.server.spawn_until_ready(|s| Enterprise::command(s, opts, port, sshd), Duration::from_secs(0));
        Some(g)
    }

    /// EG's command line and environment for `s` (its port, token, temp dir).
    fn command(s: &Server, opts: &EgOpts, response_port: u16, sshd: Option<&Sshd>) -> Command {
        let mut c = Command::new(eg_venv().join("bin/jupyter-enterprisegateway"));
        c.args([
            "--ip=127.0.0.1".to_string(),
            format!("--port={}", s.port),
            "--port_retries=0".to_string(),
            "--EnterpriseGatewayApp.default_kernel_name=python3_local".to_string(),
        ]);
        c.args(&opts.args);
        let d = s.dir();
        c.current_dir(d)
            .env("JUPYTER_PATH", d.join("jp"))
            .env("JUPYTER_RUNTIME_DIR", d.join("runtime"))
            .env("JUPYTER_DATA_DIR", d.join("data"))
            .env("JUPYTER_CONFIG_DIR", d.join("config"))
            .env_remove("JUPYTER_CONFIG_PATH")
            .env("EG_AUTH_TOKEN", &s.token)
            .env("EG_LIST_KERNELS", "True")
            .env("EG_RESPONSE_IP", "127.0.0.1")
            .env("EG_RESPONSE_PORT", response_port.to_string())
            .env("EG_KERNEL_LOG_DIR", d.join("logs"))
            .env("HOME", d.join("home"))
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .process_group(0);
        if opts.allow_root {
            c.env("EG_UNAUTHORIZED_USERS", "nobody");
        }
        if let Some(sshd) = sshd {
            c.env("EG_SSH_PORT", sshd.port.to_string());
        }
        for (k, v) in &opts.env {
            c.env(k, v);
        }
        c
    }

    /// Start it again on the same port with the same token; wait until it answers.
    #[track_caller]
    pub fn restart(&mut self) {
        self.server.kill();
        let (opts, port, sshd) = (&self.opts, self.response_port, self.sshd.as_ref());
        self.server.spawn_until_ready(|s| Enterprise::command(s, opts, port, sshd), Duration::from_secs(10));
    }
}

/// EG's url, token, port, log, REST API, `kill()`, `stop()`, `kernel_pids()`.
impl std::ops::Deref for Enterprise {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl std::ops::DerefMut for Enterprise {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.server
    }
}

impl Drop for Enterprise {
    fn drop(&mut self) {
        self.server.stop();
        if let Some(s) = self.sshd.as_mut() {
            s.stop();
        }
    }
}

/// The name of the user running the tests (what cellsci sends as `KERNEL_USERNAME` by default).
pub fn os_user_for_tests() -> String {
    cellsci::kernel::gateway::os_user()
}
