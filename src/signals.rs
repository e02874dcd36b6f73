//! Ctrl-C / SIGTERM handling and the last-resort cleanup of child processes.
//!
//! The first signal sets a process-wide flag and cancels `token()`: async primitives (kernel execution,
//! LLM calls, sleeps) watch the token and return promptly, and the Lua instruction hook stops a script
//! stuck in a CPU loop. A second signal kills every registered child process and exits at once.
//! Kernels register their process ids here so no kernel outlives cellsci, whatever way it ends.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use tokio_util::sync::CancellationToken;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static SIGNALS: AtomicUsize = AtomicUsize::new(0);
static TOKEN: OnceLock<CancellationToken> = OnceLock::new();
static CHILDREN: OnceLock<Mutex<HashSet<u32>>> = OnceLock::new();

/// Cancelled on the first Ctrl-C / SIGTERM.
fn global() -> &'static CancellationToken {
    TOKEN.get_or_init(CancellationToken::new)
}

tokio::task_local! {
    /// The stop token of the task scope being polled (`task.with` in Lua): a child of the global token,
    /// so Ctrl-C reaches every scope, and a scope can be stopped alone (a search cancels one node).
    static SCOPE: CancellationToken;
}

/// What async primitives watch to stop early: Ctrl-C / SIGTERM, or the cancellation of the task scope
/// that is running them ([`scoped`]). Cheap to make; `cancelled()` gives an owned future.
pub struct Token(CancellationToken);

impl Token {
    /// Resolves when the run is interrupted or this scope is cancelled.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.0.clone().cancelled_owned()
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// The stop token for the code being polled now: its task scope's, else the process-wide one.
pub fn token() -> Token {
    Token(SCOPE.try_with(|t| t.clone()).unwrap_or_else(|_| global().clone()))
}

/// A new stop token under the current one (cancelled with it, or on its own).
pub fn child_token() -> CancellationToken {
    SCOPE.try_with(|t| t.child_token()).unwrap_or_else(|_| global().child_token())
}

/// Run `fut` with `t` as its stop token: every primitive it awaits watches `t` (and Ctrl-C).
pub async fn scoped<F: std::future::Future>(t: CancellationToken, fut: F) -> F::Output {
    SCOPE.scope(t, fut).await
}

/// True when the code being polled runs in a task scope that was cancelled (not by Ctrl-C).
pub fn scope_cancelled() -> bool {
    !interrupted() && SCOPE.try_with(|t| t.is_cancelled()).unwrap_or(false)
}

/// True once Ctrl-C / SIGTERM was received.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Interrupted, or the current task scope was cancelled: time to stop what this code is doing.
pub fn stopping() -> bool {
    interrupted() || scope_cancelled()
}

/// Mark the process as interrupted (what a signal does; also usable from tests).
pub fn trigger() {
    INTERRUPTED.store(true, Ordering::SeqCst);
    global().cancel();
}

fn children() -> &'static Mutex<HashSet<u32>> {
    CHILDREN.get_or_init(Default::default)
}

/// Remember a child process (a kernel) that must not outlive cellsci.
pub fn register_child(pid: u32) {
    children().lock().unwrap_or_else(|e| e.into_inner()).insert(pid);
}

/// Forget a child process that has been shut down.
pub fn unregister_child(pid: u32) {
    children().lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
}

type Cleanup = std::sync::Arc<dyn Fn() + Send + Sync>;

fn cleanups() -> &'static Mutex<std::collections::HashMap<String, Cleanup>> {
    static C: OnceLock<Mutex<std::collections::HashMap<String, Cleanup>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

/// Remember something that must be undone if cellsci quits at once (a kernel on a gateway to delete);
/// `f` must be bounded in time.
pub fn register_cleanup(key: &str, f: Cleanup) {
    cleanups().lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_string(), f);
}

/// Forget a cleanup once its thing is gone.
pub fn unregister_cleanup(key: &str) {
    cleanups().lock().unwrap_or_else(|e| e.into_inner()).remove(key);
}

/// Run every registered cleanup (on a quit at once: the second Ctrl-C).
pub fn run_cleanups() {
    let all: Vec<Cleanup> = cleanups().lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, f)| f).collect();
    let threads: Vec<_> = all.into_iter().map(|f| std::thread::spawn(move || f())).collect();
    for t in threads {
        let _ = t.join();
    }
}

/// Kill every registered child process (its whole process group when it leads one).
pub fn kill_children() {
    let pids: Vec<u32> = children().lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
    for pid in pids {
        // SAFETY: plain syscalls on process ids we started; failure (already gone) is fine.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
}

/// Install the signal listeners (call once, inside the tokio runtime).
pub fn install() {
    let _ = global();
    std::panic::set_hook({
        let prev = std::panic::take_hook();
        Box::new(move |info| {
            kill_children();
            prev(info);
        })
    });
    // Register the handlers now, not inside the task: a task may first run after the script has started,
    // and a Ctrl-C in between would kill the process with the default disposition (no cleanup, no 130).
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
            let n = SIGNALS.fetch_add(1, Ordering::SeqCst);
            if n == 0 {
                eprintln!("\ncellsci: interrupted; stopping at the next safe point (press Ctrl-C again to quit now)");
                trigger();
            } else {
                eprintln!("\ncellsci: interrupted again; killing kernels and exiting");
                kill_children();
                run_cleanups();
                std::process::exit(crate::exit::EXIT_INTERRUPTED as i32);
            }
        }
    });
}
