//! Terminal display: the plain event lines other tools read go to stdout, one per event; progress bars
//! go to stderr and only when stderr is a terminal and the user did not ask for quiet.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::untrusted::{self, Cleaned, Stream};

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
/// and flush it at once so a parent process reading the pipe sees it now. Every stdout line goes through
/// here and is guarded (`untrusted::guard`): one line, clipped, a runner marker only as its own prefix.
/// Returns what the guard changed (for the event log).
pub fn line(text: &str) -> Cleaned {
    let g = untrusted::guard(text, Stream::Stdout, false);
    write_line(false, &g.text);
    g
}

/// Write one (already guarded) line to stdout or stderr and flush it, without tearing progress bars.
fn write_line(to_stderr: bool, text: &str) {
    let print = || {
        if to_stderr {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{text}");
            let _ = err.flush();
        } else {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
    };
    if progress_enabled() {
        multi().suspend(print);
    } else {
        print();
    }
}

/// Print free text to stdout (a script's `print`, a cell's output): each of its lines guarded, and none
/// may carry a runner marker (only `line` prints those).
pub fn plain(text: &str) {
    for l in text.split('\n') {
        write_line(false, &untrusted::guard(l, Stream::Plain, false).text);
    }
}

/// Print a message to stderr without tearing progress bars. Every stderr line goes through here (or
/// `eline_styled`) and is guarded: one line, clipped, no runner marker at all (the runner merges stderr
/// into the log it parses). Returns what the guard changed.
pub fn eline(text: &str) -> Cleaned {
    eline_with(text, false)
}

/// A message of several lines (a traceback) to stderr: each of its lines guarded as by `eline`.
pub fn elines(text: &str) {
    for l in text.lines() {
        eline(l);
    }
}

/// `eline` for cellsci's own styled output (tracing on a terminal): its colour codes are kept.
pub fn eline_styled(text: &str) -> Cleaned {
    eline_with(text, true)
}

fn eline_with(text: &str, keep_esc: bool) -> Cleaned {
    let g = untrusted::guard(text, Stream::Stderr, keep_esc);
    write_line(true, &g.text);
    g
}

/// The `MakeWriter` of the tracing subscriber: each formatted record is one guarded stderr line.
pub struct TracingWriter {
    pub ansi: bool,
}

/// One record being formatted; written as guarded lines when dropped.
pub struct TracingRecord {
    buf: Vec<u8>,
    ansi: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for TracingWriter {
    type Writer = TracingRecord;
    fn make_writer(&'a self) -> TracingRecord {
        TracingRecord { buf: Vec::new(), ansi: self.ansi }
    }
}

impl Write for TracingRecord {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for TracingRecord {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim_end_matches('\n');
        if !text.is_empty() {
            eline_with(text, self.ansi);
        }
    }
}
