//! Finding kernelspecs the way Jupyter does, and provisioning a Python kernel when there is none.
//!
//! Search order (what `jupyter --paths` prints inside a venv): every `JUPYTER_PATH` entry, then the
//! `share/jupyter` of each Python environment in play (the configured Python's, `VIRTUAL_ENV`,
//! `CONDA_PREFIX`, the venv of the `python3` on PATH), then the user data dir, then the system dirs.
//! A spec's bare `python`/`python3` argv[0] is replaced by the interpreter of the environment the spec
//! lives in, as jupyter_client does with `sys.executable`.
//!
//! Provisioning makes one venv with ipykernel (+ packages) per package set in the user's cache dir,
//! once, under a file lock, with pip's progress on stderr. It never runs in tests (no network there).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

/// How a kernel wants to be interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptMode {
    Signal,
    Message,
}

/// A kernelspec found on disk (or made up for a bare Python interpreter).
#[derive(Debug, Clone)]
pub struct KernelSpec {
    pub name: String,
    pub display_name: String,
    pub language: String,
    /// argv with `{connection_file}` still in place, argv[0] resolved.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub interrupt_mode: InterruptMode,
    /// The kernelspec folder (None for an interpreter given directly).
    pub resource_dir: Option<PathBuf>,
    pub metadata: Value,
}

#[derive(Deserialize)]
struct SpecFile {
    #[serde(default)]
    argv: Vec<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    interrupt_mode: Option<String>,
    #[serde(default)]
    env: Option<HashMap<String, String>>,
    #[serde(default)]
    metadata: Option<Value>,
}

/// The prefix of a Python environment from its interpreter path: `<prefix>/bin/python`.
fn prefix_of(python: &Path) -> Option<PathBuf> {
    python.parent()?.parent().map(Path::to_path_buf)
}

/// `cmd` on PATH.
pub fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(cmd)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Environment prefixes whose `share/jupyter` is searched, with the interpreter to use for their specs.
fn env_prefixes(python: Option<&Path>) -> Vec<(PathBuf, Option<PathBuf>)> {
    let mut v: Vec<(PathBuf, Option<PathBuf>)> = Vec::new();
    let mut add = |prefix: PathBuf, py: Option<PathBuf>| {
        if !v.iter().any(|(p, _)| p == &prefix) {
            v.push((prefix, py));
        }
    };
    if let Some(py) = python {
        if let Some(p) = prefix_of(py) {
            add(p, Some(py.to_path_buf()));
        }
    }
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(p) = std::env::var_os(var).filter(|s| !s.is_empty()) {
            let p = PathBuf::from(p);
            let py = ["python3", "python"].iter().map(|n| p.join("bin").join(n)).find(|x| is_executable(x));
            add(p, py);
        }
    }
    if let Some(py) = which("python3") {
        if let Some(p) = prefix_of(&py) {
            if p.join("pyvenv.cfg").is_file() || p.join("conda-meta").is_dir() {
                add(p, Some(py));
            }
        }
    }
    v
}

/// The folders searched for `kernels/<name>/kernel.json`, in Jupyter's order, each with the interpreter
/// that replaces a bare `python` in the specs found there (None: the default Python).
pub fn data_dirs(python: Option<&Path>) -> Vec<(PathBuf, Option<PathBuf>)> {
    let mut dirs: Vec<(PathBuf, Option<PathBuf>)> = Vec::new();
    if let Some(jp) = std::env::var_os("JUPYTER_PATH") {
        for d in std::env::split_paths(&jp).filter(|d| !d.as_os_str().is_empty()) {
            dirs.push((d, None));
        }
    }
    for (prefix, py) in env_prefixes(python) {
        dirs.push((prefix.join("share/jupyter"), py));
    }
    if let Some(d) = std::env::var_os("JUPYTER_DATA_DIR").filter(|s| !s.is_empty()) {
        dirs.push((PathBuf::from(d), None));
    } else if let Some(home) = dirs::home_dir() {
        if cfg!(target_os = "macos") {
            dirs.push((home.join("Library/Jupyter"), None));
        } else {
            let base = std::env::var_os("XDG_DATA_HOME")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".local/share"));
            dirs.push((base.join("jupyter"), None));
        }
    }
    dirs.push((PathBuf::from("/usr/local/share/jupyter"), None));
    dirs.push((PathBuf::from("/usr/share/jupyter"), None));
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|(d, _)| seen.insert(d.clone()));
    dirs
}

fn is_bare_python(a: &str) -> bool {
    a == "python" || a == "python3" || (a.starts_with("python3.") && a[8..].chars().all(|c| c.is_ascii_digit()))
}

/// The interpreter a spec from a user/system dir runs when its argv says just `python`.
fn default_python(python: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = python {
        return Some(p.to_path_buf());
    }
    if let Some(v) = std::env::var_os("VIRTUAL_ENV").filter(|s| !s.is_empty()) {
        let p = PathBuf::from(v).join("bin/python");
        if is_executable(&p) {
            return Some(p);
        }
    }
    which("python3").or_else(|| which("python"))
}

fn read_spec(dir: &Path, name: &str, env_python: Option<&Path>, python: Option<&Path>) -> Option<KernelSpec> {
    let text = std::fs::read_to_string(dir.join("kernel.json")).ok()?;
    let f: SpecFile = serde_json::from_str(&text).ok()?;
    if f.argv.is_empty() {
        return None;
    }
    let mut argv = f.argv;
    if is_bare_python(&argv[0]) {
        let py = env_python.map(Path::to_path_buf).or_else(|| default_python(python));
        if let Some(py) = py {
            argv[0] = py.display().to_string();
        }
    }
    let resource = dir.display().to_string();
    for a in argv.iter_mut() {
        if a.contains("{resource_dir}") {
            *a = a.replace("{resource_dir}", &resource);
        }
    }
    let mut env: Vec<(String, String)> = f.env.unwrap_or_default().into_iter().collect();
    env.sort();
    Some(KernelSpec {
        name: name.to_string(),
        display_name: f.display_name.unwrap_or_else(|| name.to_string()),
        language: f.language.unwrap_or_default(),
        argv,
        env,
        interrupt_mode: if f.interrupt_mode.as_deref() == Some("message") {
            InterruptMode::Message
        } else {
            InterruptMode::Signal
        },
        resource_dir: Some(dir.to_path_buf()),
        metadata: f.metadata.unwrap_or(Value::Null),
    })
}

/// Every kernelspec visible, first one of each name wins (as in Jupyter).
pub fn list(python: Option<&Path>) -> Vec<KernelSpec> {
    let mut out: Vec<KernelSpec> = Vec::new();
    for (dir, env_py) in data_dirs(python) {
        let Ok(rd) = std::fs::read_dir(dir.join("kernels")) else { continue };
        let mut names: Vec<(String, PathBuf)> = rd
            .flatten()
            .filter(|e| e.path().join("kernel.json").is_file())
            .map(|e| (e.file_name().to_string_lossy().to_lowercase(), e.path()))
            .collect();
        names.sort();
        for (name, path) in names {
            if out.iter().any(|s| s.name == name) {
                continue;
            }
            if let Some(s) = read_spec(&path, &name, env_py.as_deref(), python) {
                out.push(s);
            }
        }
    }
    out
}

/// The kernelspec called `name`.
pub fn find(name: &str, python: Option<&Path>) -> Option<KernelSpec> {
    let name = name.to_lowercase();
    for (dir, env_py) in data_dirs(python) {
        let d = dir.join("kernels").join(&name);
        if d.join("kernel.json").is_file() {
            if let Some(s) = read_spec(&d, &name, env_py.as_deref(), python) {
                return Some(s);
            }
        }
    }
    None
}

/// A spec that runs ipykernel with the given interpreter.
pub fn for_python(python: &Path) -> KernelSpec {
    KernelSpec {
        name: "python3".into(),
        display_name: "Python 3 (ipykernel)".into(),
        language: "python".into(),
        argv: vec![
            python.display().to_string(),
            "-m".into(),
            "ipykernel_launcher".into(),
            "-f".into(),
            "{connection_file}".into(),
        ],
        env: Vec::new(),
        interrupt_mode: InterruptMode::Signal,
        resource_dir: None,
        metadata: Value::Null,
    }
}

/// A stable 64-bit FNV-1a hash (folder names must not change between builds).
fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The cache folder for provisioned kernels.
pub fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("CELLSCI_CACHE_DIR").filter(|s| !s.is_empty()) {
        return PathBuf::from(d).join("kernels");
    }
    dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("cellsci").join("kernels")
}

/// Make (once) a venv with ipykernel and `packages` in the cache dir, from `base` (default: the
/// `python3` on PATH); returns its interpreter.
pub async fn provision(base: Option<&Path>, packages: &[String]) -> Result<PathBuf> {
    let base = base.map(Path::to_path_buf).or_else(|| which("python3")).or_else(|| which("python")).context(
        "no kernelspec was found and Python is not installed (no python3 on PATH): install Python 3 \
         (e.g. `apt-get install python3 python3-venv`), or set exec.python / python= to an interpreter \
         that has ipykernel",
    )?;
    let mut pkgs: Vec<String> = packages.to_vec();
    pkgs.sort();
    pkgs.dedup();
    let key = format!("{}|{}", base.display(), pkgs.join(","));
    let dir = cache_root().join(format!("{:016x}", fnv(&key)));
    let py = dir.join("bin/python");
    let ready = dir.join(".cellsci-ready");
    if ready.is_file() && is_executable(&py) {
        return Ok(py);
    }
    let root = cache_root();
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let lock_path = root.join(format!("{:016x}.lock", fnv(&key)));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
    // Another cellsci may be building the same venv: wait for its lock, but end on Ctrl-C.
    let mut told = false;
    loop {
        // SAFETY: a non-blocking flock on a descriptor we own.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            break;
        }
        if !told {
            crate::ui::info(&format!("cellsci: waiting for another cellsci to finish {}", dir.display()));
            told = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            _ = crate::signals::token().cancelled() => bail!("interrupted while waiting for {}", lock_path.display()),
        }
    }
    if ready.is_file() && is_executable(&py) {
        return Ok(py);
    }
    let _ = std::fs::remove_dir_all(&dir);
    // The steps' whole output goes to a log beside the venv (outside it: a failed venv is removed), so a
    // run's log shows a few lines, not pip's hundreds, and a failure still shows its tail.
    let log_path = root.join(format!("{:016x}.provision.log", fnv(&key)));
    let mut log = std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    crate::ui::info(&format!("cellsci: creating a Python kernel environment in {} (once)", dir.display()));
    let out = run_step(
        tokio::process::Command::new(&base).arg("-m").arg("venv").arg(&dir),
        "python3 -m venv",
        &mut log,
        &log_path,
    )
    .await;
    if let Err(e) = out {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e.context("cannot create a venv (on Debian/Ubuntu: apt-get install python3-venv)"));
    }
    let mut all = vec!["ipykernel".to_string()];
    all.extend(pkgs.iter().cloned());
    crate::ui::info(&format!("cellsci: installing {} (pip)", all.join(" ")));
    let mut cmd = tokio::process::Command::new(&py);
    cmd.args(["-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]).args(&all);
    if let Err(e) = run_step(&mut cmd, "pip install", &mut log, &log_path).await {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    std::fs::write(&ready, all.join("\n")).ok();
    crate::ui::info(&format!("cellsci: kernel environment ready (installation log: {})", log_path.display()));
    drop(lock);
    Ok(py)
}

/// Run a provisioning step, writing its output lines to `log` (a spinner shows the latest on a terminal);
/// fails with the last lines and the log's path.
async fn run_step(
    cmd: &mut tokio::process::Command,
    what: &str,
    log: &mut std::fs::File,
    log_path: &Path,
) -> Result<()> {
    use std::io::Write;
    use tokio::io::{AsyncBufReadExt, AsyncRead};
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {what}"))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    fn pump(r: impl AsyncRead + Unpin + Send + 'static, tx: tokio::sync::mpsc::UnboundedSender<String>) {
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(r).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
    }
    pump(child.stdout.take().expect("piped"), tx.clone());
    pump(child.stderr.take().expect("piped"), tx);
    let mut tail: std::collections::VecDeque<String> = Default::default();
    let spinner = crate::ui::spinner(what.to_string());
    let _ = writeln!(log, "$ {what}");
    loop {
        let line = tokio::select! {
            l = rx.recv() => l,
            _ = crate::signals::token().cancelled() => bail!("interrupted while running {what}"),
        };
        let Some(l) = line else { break };
        let _ = writeln!(log, "{l}");
        spinner.set_message(format!("{what}: {}", l.chars().take(100).collect::<String>()));
        tail.push_back(l);
        if tail.len() > 15 {
            tail.pop_front();
        }
    }
    spinner.finish_and_clear();
    let st = child.wait().await?;
    if !st.success() {
        bail!(
            "{what} failed ({st}); the last lines (the whole output is in {}):\n{}",
            log_path.display(),
            tail.into_iter().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}
