//! Shared test helpers: a temp dir per test, running the real binary, the loopback fake LLM server.
#![allow(dead_code)]

pub mod enterprise;
pub mod fake_llm;
pub mod gateway;
pub mod ship;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The cellsci binary built for these tests.
/// Whether this is CI (`CI=true`), where every test must run its real part.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A real part a test cannot do without is missing (a binary, a server, root): under CI=true that fails
/// the test; elsewhere it says `SKIPPED: why` loudly and the caller returns.
#[track_caller]
pub fn skip_unless_ci(why: &str) {
    assert!(!under_ci(), "CI=true: {why}");
    eprintln!("SKIPPED: {why}");
    println!("SKIPPED: {why}");
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cellsci"))
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh temporary directory, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("cellsci-test-").tempdir().expect("temp dir")
}

/// The Python venv with ipykernel that `.ci/run` creates (override with CELLSCI_TEST_VENV).
pub fn test_venv() -> PathBuf {
    std::env::var_os("CELLSCI_TEST_VENV").map(PathBuf::from).unwrap_or_else(|| repo().join(".venv"))
}

/// A command for the binary, run in `cwd`, with a clean LLM environment.
pub fn cellsci(cwd: &Path) -> Command {
    let mut c = Command::new(bin());
    c.current_dir(cwd)
        .env_remove("OPENAI_API_KEY")
        .env_remove("AZURE_OPENAI_API_KEY")
        .env_remove("AZURE_OPENAI_AD_TOKEN")
        .env("NO_COLOR", "1");
    c
}

/// stdout + stderr of a finished command, as text.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Write a file (creating folders) and return its path.
pub fn write(dir: &Path, rel: &str, contents: &str) -> PathBuf {
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, contents).unwrap();
    p
}

/// The output of a finished command, which must have succeeded (exit 0); its stdout + stderr.
#[track_caller]
pub fn ok(o: &Output) -> String {
    let t = text(o);
    assert!(o.status.success(), "cellsci failed ({:?}):\n{t}", o.status);
    t
}

/// A running cellsci whose stdout and stderr go to one pipe (as a runner that merges them sees it),
/// read line by line in the background. Every wait has a failsafe (60 s per line, 120 s to exit): a hung
/// child fails its test instead of hanging the suite; they are not timing assertions.
pub struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    all: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Running {
    /// Start `cmd` (stdin closed, stdout and stderr merged).
    pub fn start(cmd: &mut Command) -> Running {
        use std::io::BufRead;
        let (reader, writer) = std::io::pipe().expect("a pipe");
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(writer.try_clone().expect("a pipe"))
            .stderr(writer)
            .spawn()
            .expect("start cellsci");
        // The command keeps the pipe's write end until it is dropped or reset: reset it, so the reader
        // sees the end of the output when the child exits.
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let (tx, lines) = std::sync::mpsc::channel();
        let all = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let all2 = all.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(reader).lines().map_while(Result::ok) {
                all2.lock().unwrap().push_str(&format!("{l}\n"));
                let _ = tx.send(l);
            }
        });
        Running { child, lines, all }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.all.lock().unwrap().clone()
    }

    /// The next line.
    #[track_caller]
    pub fn next_line(&mut self) -> String {
        match self.lines.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                let _ = self.child.kill();
                panic!("no further output from cellsci; so far:\n{}", self.output());
            }
        }
    }

    /// Read lines until one contains `pat`; returns it.
    #[track_caller]
    pub fn wait_for(&mut self, pat: &str) -> String {
        loop {
            let l = self.next_line();
            if l.contains(pat) {
                return l;
            }
        }
    }

    /// Send a signal (SIGINT for Ctrl-C, SIGKILL...).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the child this handle started.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Wait for the exit; its status and everything printed.
    #[track_caller]
    pub fn finish(self) -> (std::process::ExitStatus, String) {
        self.finish_within(std::time::Duration::from_secs(120))
    }

    /// Wait for the exit, at most `limit` (then kill it and fail: a hang is a failure).
    #[track_caller]
    pub fn finish_within(mut self, limit: std::time::Duration) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                // Let the reader take the last lines (it ends at EOF, when every writer is gone).
                while self.lines.recv_timeout(std::time::Duration::from_secs(5)).is_ok() {}
                return (st, self.output());
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("cellsci did not exit within {limit:?}; so far:\n{}", self.output());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Poll `cond` until it holds; fails after `secs` (a failsafe, not a timing check).
#[track_caller]
pub fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
