//! Making sure no kernel, and nothing a kernel started, outlives the cellsci that started it — even when
//! cellsci itself is killed with SIGKILL and runs no cleanup at all.
//!
//! Three layers, each covering what the one before misses:
//! - every kernel runs in its own process group and gets `PR_SET_PDEATHSIG(SIGKILL)` (Linux): the kernel
//!   dies the instant its parent does, even inside a long C call that keeps ipykernel's own parent
//!   poller from running;
//! - every kernel carries an environment tag, `CELLSCI_KERNEL_TAG=<host id>/<kernel id>`, inherited by
//!   whatever it starts; a shutdown kills the group, the process tree below the kernel (children that
//!   called `setsid` included) and every process carrying the kernel's tag (orphans included);
//! - a small watchdog process (`cellsci __kernel-reaper`, started once per host on the first kernel)
//!   reads a pipe whose writing end only the host holds. When the host dies, however it dies, the pipe
//!   reaches end-of-file and the watchdog kills every process tagged with the host's id, then removes
//!   the host's kernel folders (connection files with their signing keys).
//!
//! Not covered: a process that both left the kernel's tree (its parent died or it double-forked) and
//! dropped the tag from its environment (`env -i`, `subprocess.Popen(env={})`), and processes that
//! changed user. The watchdog only runs when the binary enabled it ([`enable`]); a library caller keeps
//! the first two layers.
//!
//! This module must never signal a process it cannot tie to one of our kernels: pids come from our own
//! children, from the tree under a kernel we have not reaped yet, or from the tag.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The environment variable that marks a kernel and everything it starts.
pub const TAG_VAR: &str = "CELLSCI_KERNEL_TAG";

/// The hidden subcommand that runs the watchdog.
pub const SUBCOMMAND: &str = "__kernel-reaper";

/// This host's id in kernel tags: unique per process, so a tag never matches another run's kernels.
pub fn host_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..12]))
}

/// A fresh tag for one kernel of this host.
pub fn kernel_tag() -> String {
    format!("{}/{}", host_id(), &uuid::Uuid::new_v4().simple().to_string()[..12])
}

static ENABLED: OnceLock<()> = OnceLock::new();
/// The writing end of the watchdog's pipe: held (never written) until this process ends.
static WATCHDOG: Mutex<Option<std::process::ChildStdin>> = Mutex::new(None);

/// Let kernel starts launch the watchdog (the `cellsci` binary calls this; the watchdog is this same
/// executable, which a library caller's executable is not).
pub fn enable() {
    let _ = ENABLED.set(());
}

/// Start the watchdog if it is enabled and not running yet. A failure only loses the last layer of
/// cleanup, so it is logged, not returned.
pub fn ensure_watchdog() {
    if ENABLED.get().is_none() {
        return;
    }
    let mut w = WATCHDOG.lock().unwrap_or_else(|e| e.into_inner());
    if w.is_some() {
        return;
    }
    let spawn = || -> std::io::Result<std::process::ChildStdin> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe()?;
        let mut c = std::process::Command::new(exe);
        c.arg(SUBCOMMAND)
            .arg(host_id())
            .arg(kernel_dir_prefix())
            .env_remove(TAG_VAR)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // its own group: a Ctrl-C at the terminal reaches the host, not the watchdog
            .process_group(0);
        let mut child = c.spawn()?;
        // The pipe is close-on-exec, so kernels never hold it open: end-of-file means the host is gone.
        child.stdin.take().ok_or_else(|| std::io::Error::other("no stdin pipe"))
    };
    match spawn() {
        Ok(stdin) => *w = Some(stdin),
        Err(e) => tracing::warn!("cannot start the kernel watchdog (kernels may outlive a killed cellsci): {e}"),
    }
}

/// The watchdog's body: wait until the host is gone, then kill what it left behind.
pub fn watchdog_main(host: &str, dir_prefix: &str) -> u8 {
    // SAFETY: setting signal dispositions of this single-threaded process.
    unsafe {
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGPIPE] {
            libc::signal(s, libc::SIG_IGN);
        }
    }
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reading into a buffer we own from our stdin.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted) {
            break;
        }
    }
    kill_tagged(&format!("{host}/"), None);
    remove_kernel_dirs(|name| name.starts_with(dir_prefix));
    0
}

/// Every process carrying `TAG_VAR=<prefix>...` in its environment (our own user's processes only:
/// others' environments are unreadable), except this process.
pub fn tagged(prefix: &str, exact: bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needle = format!("{TAG_VAR}={prefix}");
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(env) = std::fs::read(e.path().join("environ")) else { continue };
        let hit = env
            .split(|&b| b == 0)
            .any(|var| var.starts_with(needle.as_bytes()) && (!exact || var.len() == needle.len()));
        if hit {
            out.push(pid);
        }
    }
    out
}

/// The pids below `pid` in the process tree (children of every thread, recursively).
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for t in tasks.flatten() {
            let Ok(s) = std::fs::read_to_string(t.path().join("children")) else { continue };
            for c in s.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
                if !out.contains(&c) && c != pid {
                    out.push(c);
                    todo.push(c);
                }
            }
        }
    }
    out
}

/// Kill every process tagged with `prefix` (a kernel's whole tag, or a host id and `/`) and, when
/// `tree` names a kernel that has not been reaped yet (its pid is still ours), its process group and
/// every process below it. Repeats until none is left (a process may fork while we look), for at most
/// about a second.
pub fn kill_tagged(prefix: &str, tree: Option<i32>) {
    let exact = !prefix.ends_with('/');
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        let mut victims: BTreeSet<i32> = tagged(prefix, exact).into_iter().collect();
        if let Some(root) = tree {
            victims.extend(descendants(root));
            // SAFETY: the kernel's group (its pid is the group id and has not been reaped).
            unsafe {
                libc::kill(-root, libc::SIGKILL);
            }
        }
        // Zombies wait for their parent; they run nothing and cannot be killed again.
        victims.retain(|&p| !is_zombie(p));
        if victims.is_empty() || Instant::now() > until {
            return;
        }
        for p in &victims {
            // SAFETY: plain kill of a process tied to our kernel (tag or tree); failure is fine.
            unsafe {
                libc::kill(*p, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The processes below `pid` with their start times, taken while the kernel still runs: its polite
/// shutdown orphans the children that left its process group, and then only this list finds them.
pub fn tree_snapshot(pid: i32) -> Vec<(i32, u64)> {
    descendants(pid).into_iter().filter_map(|p| Some((p, start_time(p as u32)?))).collect()
}

/// Kill the processes of a snapshot that are still the same processes (same start time), so a pid
/// reused since is left alone.
pub fn kill_snapshot(snapshot: &[(i32, u64)]) {
    for &(p, t) in snapshot {
        if start_time(p as u32) == Some(t) {
            // SAFETY: a process below our kernel, identified by pid and start time.
            unsafe {
                libc::kill(p, libc::SIGKILL);
            }
        }
    }
}

fn is_zombie(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // gone, or state Z/X after the command name in parentheses
    stat.rsplit_once(") ").is_none_or(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
}

/// The start time of a process (clock ticks after boot, field 22 of /proc/PID/stat), which tells a
/// live owner from an unrelated process that got the same pid later.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    // rest starts at field 3 (state); field 22 is the 20th of rest
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The name prefix of this host's kernel folders in the temp dir: `cellsci-kernel-<pid>-<start time>-`.
pub fn kernel_dir_prefix() -> String {
    let pid = std::process::id();
    format!("cellsci-kernel-{pid}-{}-", start_time(pid).unwrap_or(0))
}

/// Whether a kernel folder's name names a process that is still running.
fn owner_alive(name: &str) -> bool {
    let mut it = name.strip_prefix("cellsci-kernel-").unwrap_or("").splitn(3, '-');
    let (Some(pid), Some(start)) = (it.next().and_then(|p| p.parse::<u32>().ok()), it.next()) else {
        // not ours, or the old unnamed form: cannot tell, so keep it
        return true;
    };
    match start_time(pid) {
        Some(t) => start.parse::<u64>().map_or(true, |s| s == t || s == 0),
        // no /proc entry: kill(pid, 0) says whether the pid exists at all (non-Linux)
        // SAFETY: signal 0 only checks for existence.
        None => !Path::new("/proc/self").exists() && unsafe { libc::kill(pid as i32, 0) } == 0,
    }
}

/// Remove kernel folders (ours only, by owner uid) whose names `pick` selects.
fn remove_kernel_dirs(pick: impl Fn(&str) -> bool) {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("cellsci-kernel-") || !pick(&name) {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(e.path()) else { continue };
        if m.is_dir() && m.uid() == uid {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Remove the kernel folders that runs which are gone (killed before they could clean up) left in the
/// temp dir. Folders of live runs, of other users and of unknown form are kept.
pub fn remove_stale_dirs() {
    remove_kernel_dirs(|name| !owner_alive(name));
}
