//! Saving an executed notebook after every cell without paying for it between cells.
//!
//! A save rewrites the whole file (atomically: a temp file, then a rename), which on 1000 short cells
//! cost more than the cells. So `cellsci notebook run` hands each finished cell to a small helper
//! process (`cellsci __notebook-saver OUT`, this same executable) over a pipe: one line of JSON per
//! change, a few microseconds to send. The helper applies the changes and writes the notebook; when
//! it falls behind it reads every change waiting in the pipe and writes once. What matters for a
//! crash: a change written into the pipe survives the death of the process that wrote it, so even a
//! SIGKILLed cellsci loses at most the cell that was running; the helper reads to end-of-file, saves,
//! and exits. It must never exit before it has saved everything it read.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Notebook, Placed};

/// The hidden subcommand that runs the helper.
pub const SUBCOMMAND: &str = "__notebook-saver";

/// One change to the notebook, as sent over the pipe.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// A cell ran: its outputs, execution count and timing (0-based index).
    Cell { i: usize, outputs: Vec<Value>, count: Option<i64>, timing: Option<Map<String, Value>> },
    /// A display update reached output `j` of the earlier cell `i`.
    Display { i: usize, j: usize, data: Value, metadata: Value },
    /// The notebook's metadata, replaced whole (the run's record).
    Metadata { metadata: Value },
    /// A new cell at position `i` (0-based), as `Notebook::make_cell` made it (the error banner).
    Insert { i: usize, cell: Value },
}

impl Change {
    /// Apply the change to `nb`.
    pub fn apply(self, nb: &mut Notebook) -> Result<()> {
        match self {
            Change::Cell { i, outputs, count, timing } => nb.set_outputs_owned(i, outputs, count, timing),
            Change::Display { i, j, data, metadata } => nb.set_output_data(i, j, data, metadata),
            Change::Metadata { metadata } => nb.set_metadata(metadata),
            Change::Insert { i, cell } => nb.insert(i, cell),
        }
    }
}

/// Where changes go: the helper process, or (when it cannot start) the notebook itself, saved at once.
pub enum Sink {
    Helper { child: Child, pipe: std::io::BufWriter<ChildStdin>, out: PathBuf },
    Direct { out: PathBuf, pending: Pending, placed: Option<Placed> },
}

impl Sink {
    /// Save `nb` to `out` now (so a bad path fails at once), then start the helper that saves the
    /// changes to come. Without the helper (a library caller, or a failed spawn), every change is
    /// applied to `nb` and the file written straight away.
    pub fn start(nb: &mut Notebook, out: &Path) -> Result<Sink> {
        nb.write(out)?;
        let out = out.to_path_buf();
        if HELPER_ENABLED.get().is_none() {
            return Ok(Sink::Direct { out, pending: Pending::default(), placed: None });
        }
        let spawn = || -> std::io::Result<(Child, ChildStdin)> {
            use std::os::unix::process::CommandExt;
            let mut c = std::process::Command::new(std::env::current_exe()?);
            c.arg(SUBCOMMAND)
                .arg(&out)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                // its own group: Ctrl-C reaches cellsci, which then closes the pipe
                .process_group(0);
            let mut child = c.spawn()?;
            let pipe = child.stdin.take().ok_or_else(|| std::io::Error::other("no stdin pipe"))?;
            Ok((child, pipe))
        };
        match spawn() {
            Ok((child, pipe)) => {
                Ok(Sink::Helper { child, pipe: std::io::BufWriter::with_capacity(1 << 16, pipe), out })
            }
            Err(e) => {
                tracing::warn!("cannot start the notebook saver ({e}); saving in this process");
                Ok(Sink::Direct { out, pending: Pending::default(), placed: None })
            }
        }
    }

    /// Record a change; it is safe on disk (or in the pipe, which outlives cellsci) when this returns.
    pub fn send(&mut self, nb: &mut Notebook, change: Change) -> Result<()> {
        match self {
            Sink::Direct { pending, .. } => {
                pending.note(&change, nb);
                change.apply(nb)
            }
            Sink::Helper { pipe, out, .. } => {
                serde_json::to_writer(&mut *pipe, &change).context("cannot encode a notebook change")?;
                pipe.write_all(b"\n")
                    .and_then(|_| pipe.flush())
                    .with_context(|| format!("cannot write {}: the notebook saver stopped", out.display()))
            }
        }
    }

    /// After the changes of one cell: in direct mode, save them (as the helper does).
    pub fn commit(&mut self, nb: &mut Notebook) -> Result<()> {
        match self {
            Sink::Direct { out, pending, placed } => pending.save(nb, placed, out),
            Sink::Helper { .. } => Ok(()),
        }
    }

    /// Wait until everything sent is saved; an error names the file.
    pub fn finish(self) -> Result<()> {
        match self {
            Sink::Direct { .. } => Ok(()),
            Sink::Helper { mut child, pipe, out } => {
                let flushed = pipe.into_inner().map(drop).map_err(|e| e.into_error());
                let st = child.wait().with_context(|| format!("cannot write {}", out.display()))?;
                if !st.success() {
                    bail!("cannot write {}: the notebook saver failed ({st})", out.display());
                }
                flushed.with_context(|| format!("cannot write {}", out.display()))
            }
        }
    }
}

static HELPER_ENABLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();

/// Let `notebook run` use the helper (the `cellsci` binary calls this: the helper is this same
/// executable, which a library caller's is not).
pub fn enable() {
    let _ = HELPER_ENABLED.set(());
}

/// The helper's body: read changes until end-of-file, saving whenever no more are waiting.
pub fn saver_main(out: &Path) -> u8 {
    // SAFETY: setting signal dispositions of this single-threaded process.
    unsafe {
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGPIPE] {
            libc::signal(s, libc::SIG_IGN);
        }
    }
    match saver_loop(out) {
        Ok(()) => 0,
        Err(e) => {
            crate::ui::eline(&format!("error: {e:#}"));
            2
        }
    }
}

fn saver_loop(out: &Path) -> Result<()> {
    let mut nb = Notebook::read(out)?;
    let stdin = std::io::stdin();
    let mut r = std::io::BufReader::with_capacity(1 << 20, stdin.lock());
    let mut pending = Pending::default();
    let mut placed: Option<Placed> = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line).context("reading notebook changes")?;
        if n == 0 {
            break;
        }
        // A line cut short (cellsci died while sending) is a change that never completed.
        if line.last() != Some(&b'\n') {
            break;
        }
        let change: Change = serde_json::from_slice(&line).context("a notebook change that does not decode")?;
        pending.note(&change, &nb);
        change.apply(&mut nb)?;
        if r.buffer().is_empty() && !input_waiting() {
            pending.save(&mut nb, &mut placed, out)?;
        }
    }
    pending.save(&mut nb, &mut placed, out)
}

/// What changed since the last save, and so how much of the file the next one rewrites.
#[derive(Default)]
pub struct Pending {
    /// The first cell changed (the notebook's length: only what follows the cells).
    from: Option<usize>,
    /// Cells were added, or something before the cells changed: the whole file is written.
    whole: bool,
}

impl Pending {
    fn note(&mut self, change: &Change, nb: &Notebook) {
        let first = match change {
            Change::Cell { i, .. } | Change::Display { i, .. } => *i,
            Change::Metadata { .. } if nb.after_cells("metadata") => nb.len(),
            Change::Metadata { .. } | Change::Insert { .. } => {
                self.whole = true;
                0
            }
        };
        self.from = Some(self.from.map_or(first, |f| f.min(first)));
    }

    /// Save what changed: in place from the first changed cell on, which costs what changed rather than
    /// the whole notebook, else (the first save, cells added, a large cached cell in the way) the whole
    /// file atomically.
    fn save(&mut self, nb: &mut Notebook, placed: &mut Option<Placed>, out: &Path) -> Result<()> {
        let Some(from) = self.from.take() else { return Ok(()) };
        let whole = std::mem::take(&mut self.whole);
        if !whole {
            if let Some(p) = placed.as_mut() {
                if nb.rewrite_from(p, from)? {
                    return Ok(());
                }
            }
        }
        *placed = Some(nb.write_placed(out)?);
        Ok(())
    }
}

/// Whether more input is waiting on stdin right now.
fn input_waiting() -> bool {
    let mut fd = libc::pollfd { fd: 0, events: libc::POLLIN, revents: 0 };
    // SAFETY: poll on one pollfd we own, no waiting.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n > 0 && fd.revents & libc::POLLIN != 0
}
