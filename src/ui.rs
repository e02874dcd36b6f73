//! Terminal display: the plain event lines other tools read go to stdout, one per event; progress bars
//! go to stderr and only when stderr is a terminal and the user did not ask for quiet.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

static ENABLED: AtomicBool = AtomicBool::new(false);
static QUIET: AtomicBool = AtomicBool::new(false);
static MULTI: OnceLock<MultiProgress> = OnceLock::new();

/// Turn progress bars on (called once at start-up when stderr is a terminal and not quiet).
pub fn enable_progress(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
}

/// `-q`: informational stderr lines (`info`) are dropped; errors and stdout event lines are not.
pub fn set_quiet(on: bool) {
    QUIET.store(on, Ordering::SeqCst);
}

/// Print an informational message to stderr (like `eline`), unless the user asked for quiet.
pub fn info(text: &str) {
    if !QUIET.load(Ordering::SeqCst) {
        eline(text);
    }
}

pub fn progress_enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

fn multi() -> &'static MultiProgress {
    MULTI.get_or_init(|| {
        let target =
            if progress_enabled() { ProgressDrawTarget::stderr_with_hz(10) } else { ProgressDrawTarget::hidden() };
        MultiProgress::with_draw_target(target)
    })
}

/// A progress bar with `len` steps (hidden when progress is off). `template` as indicatif takes it.
pub fn bar(len: u64, template: &str) -> ProgressBar {
    if !progress_enabled() {
        return ProgressBar::hidden();
    }
    let pb = multi().add(ProgressBar::new(len));
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style);
    }
    pb
}

/// A spinner for work of unknown length (hidden when progress is off).
pub fn spinner(msg: impl Into<String>) -> ProgressBar {
    if !progress_enabled() {
        return ProgressBar::hidden();
    }
    let pb = multi().add(ProgressBar::new_spinner());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
        pb.set_style(style);
    }
    pb.set_message(msg.into());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

/// Print one plain line to stdout (an event line like `ITERATION 1/3`), without tearing progress bars,
/// and flush it at once so a parent process reading the pipe sees it now.
pub fn line(text: &str) {
    let print = || {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    };
    if progress_enabled() {
        multi().suspend(print);
    } else {
        print();
    }
}

/// Print a message to stderr without tearing progress bars.
pub fn eline(text: &str) {
    let print = || eprintln!("{text}");
    if progress_enabled() {
        multi().suspend(print);
    } else {
        print();
    }
}
