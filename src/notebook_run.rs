//! `cellsci notebook run`: the papermill-style executor. Runs the code cells of a notebook in order in
//! one kernel, with nbclient's rules (display ids across cells, the `skip-execution` and
//! `raises-exception` tags), and saves the output notebook after every cell, so a crash loses at most
//! the running cell. Saving costs no time between cells: each finished cell goes to the saver process
//! (see `notebook::saver`), which writes the file while the next cell runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;

use crate::kernel::outputs::summary;
use crate::kernel::{ExecOptions, ExecStatus, StartOptions};
use crate::notebook::saver::{Change, Sink};
use crate::notebook::{join_text, Notebook};

#[derive(Args, Debug, Clone)]
pub struct NotebookRunArgs {
    /// The notebook to run.
    pub input: PathBuf,
    /// Where to write the executed notebook (default: INPUT with `.out.ipynb`; never INPUT itself
    /// unless you name it).
    pub output: Option<PathBuf>,
    /// The kernelspec to use (default: the notebook's metadata.kernelspec.name, else python3).
    #[arg(long = "kernel", value_name = "NAME")]
    pub kernel: Option<String>,
    /// Run ipykernel with this Python interpreter instead of a kernelspec.
    #[arg(long = "python", value_name = "PATH", conflicts_with = "kernel")]
    pub python: Option<PathBuf>,
    /// Seconds a cell may run before it is interrupted (default: no limit).
    #[arg(long = "timeout", value_name = "S")]
    pub timeout: Option<f64>,
    /// Keep going after a cell fails (the error is saved in the notebook).
    #[arg(long = "allow-errors")]
    pub allow_errors: bool,
    /// The kernel's working directory (default: the notebook's folder).
    #[arg(long = "cwd", value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// An environment variable for the kernel (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// How cellsci talks to the kernel: `ipc` (Unix sockets in a private folder, the default) or `tcp`
    /// (ports on 127.0.0.1, for kernels that cannot do IPC).
    #[arg(long = "transport", value_name = "ipc|tcp", default_value = "ipc")]
    pub transport: crate::kernel::Transport,
    /// Run the notebook on a kernel of this Jupyter Kernel Gateway / Enterprise Gateway
    /// (`http(s)://host:port`); the token comes from CELLSCI_GATEWAY_TOKEN or JUPYTER_GATEWAY_AUTH_TOKEN.
    /// The kernel starts in the gateway's own folder unless --cwd is given.
    #[arg(long = "gateway", value_name = "URL", conflicts_with = "python")]
    pub gateway: Option<String>,
    /// With --gateway: a local folder prefix and where the gateway sees it (repeatable), applied to
    /// --cwd and to --env values that are paths.
    #[arg(long = "gateway-path", value_name = "LOCAL=REMOTE", requires = "gateway")]
    pub gateway_paths: Vec<String>,
    /// Print each cell's output as it arrives.
    #[arg(long = "log-output")]
    pub log_output: bool,
}

/// nbclient's `skip_cells_with_tag` default.
const SKIP_TAG: &str = "skip-execution";
/// A cell whose error is expected: execution goes on after it (nbclient, papermill).
const RAISES_TAG: &str = "raises-exception";

fn default_output(input: &std::path::Path) -> PathBuf {
    let stem = input.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "notebook".into());
    input.with_file_name(format!("{stem}.out.ipynb"))
}

pub async fn run(args: &NotebookRunArgs, quiet: bool) -> Result<u8> {
    let t0 = Instant::now();
    let mut nb = Notebook::read(&args.input)?;
    let out = args.output.clone().unwrap_or_else(|| default_output(&args.input));
    let mut env = Vec::new();
    for kv in &args.env {
        let (k, v) = kv.split_once('=').with_context(|| format!("--env {kv}: expected K=V"))?;
        env.push((k.to_string(), v.to_string()));
    }
    let gateway = match &args.gateway {
        None => None,
        Some(url) => {
            let mut t = crate::kernel::gateway::Target::new(url, crate::kernel::gateway::resolve_token(None));
            for m in &args.gateway_paths {
                let (l, r) = m.split_once('=').with_context(|| format!("--gateway-path {m}: expected LOCAL=REMOTE"))?;
                t.paths.push((crate::files::absolute_clean(std::path::Path::new(l)), r.to_string()));
            }
            Some(t)
        }
    };
    // A gateway kernel's outputs come back over its WebSocket: it needs no folder of ours unless asked.
    let cwd = match &args.cwd {
        Some(d) => Some(std::path::absolute(d)?),
        None if gateway.is_some() => None,
        None => {
            Some(std::path::absolute(&args.input)?.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")))
        }
    };
    let name = args
        .kernel
        .clone()
        .or_else(|| nb.metadata().pointer("/kernelspec/name").and_then(Value::as_str).map(String::from));
    let opts = StartOptions {
        name,
        python: args.python.clone(),
        cwd,
        env,
        transport: args.transport,
        gateway,
        ..Default::default()
    };
    if let Some(t) = args.timeout {
        if !(t.is_finite() && t > 0.0) {
            anyhow::bail!("--timeout must be a positive number of seconds");
        }
    }
    let timeout = args.timeout.map(crate::duration_secs);

    nb.clear_outputs();
    let code_cells: Vec<usize> = (0..nb.len())
        .filter(|&i| {
            let c = nb.cell_value(i).expect("in range");
            c.get("cell_type").and_then(Value::as_str) == Some("code")
                && !join_text(c.get("source").unwrap_or(&Value::Null)).trim().is_empty()
                // as nbclient and papermill: a cell tagged skip-execution is not run
                && !nb.has_tag(i, SKIP_TAG)
        })
        .collect();
    // Saved now (a bad path fails before the kernel starts), then after every cell by the saver.
    let mut sink = Sink::start(&mut nb, &out)?;

    let spin = crate::ui::spinner("starting kernel");
    let mut kernel = crate::kernel::start(opts).await?;
    spin.finish_and_clear();
    let bar = crate::ui::bar(code_cells.len() as u64, "{spinner} cell {pos}/{len} [{elapsed}] {wide_bar} {msg}");
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut code = 0u8;
    let mut failures = 0usize;
    // display id → (cell, output) of every output showing it so far, for updates from later cells
    let mut displays: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
    for (k, &i) in code_cells.iter().enumerate() {
        bar.set_position(k as u64);
        let src = join_text(nb.cell_value(i).and_then(|c| c.get("source")).unwrap_or(&Value::Null));
        let log = args.log_output;
        let pending = std::cell::RefCell::new(String::new());
        let raises = nb.has_tag(i, RAISES_TAG);
        let mut eo = ExecOptions { timeout, allow_errors: raises || args.allow_errors, ..Default::default() };
        if log {
            crate::ui::line(&format!("--- cell {} ({}/{}) ---", i + 1, k + 1, code_cells.len()));
            let pending = &pending;
            eo.on_output = Some(Box::new(move |o: &Value, kind: &str| {
                let mut p = pending.borrow_mut();
                if kind == "stream" {
                    // Print whole lines as they complete; keep a partial line for later.
                    p.push_str(o.get("text").and_then(Value::as_str).unwrap_or(""));
                    if let Some(cut) = p.rfind('\n') {
                        // free text: one guarded stdout line per line of output
                        crate::ui::plain(&p[..cut]);
                        p.drain(..=cut);
                    }
                    return;
                }
                if !p.is_empty() {
                    crate::ui::plain(&p);
                    p.clear();
                }
                crate::ui::plain(summary(o).trim_end_matches('\n'));
            }));
        }
        let res = match kernel.execute(&src, eo).await {
            Ok(r) => r,
            Err(e) => {
                // Ctrl-C: save what the cell printed before it was stopped
                if let Some(crate::kernel::KernelError::InterruptedCell(r)) = e.downcast_ref() {
                    let r = r.as_ref().clone();
                    let change =
                        Change::Cell { i, outputs: r.outputs, count: r.execution_count, timing: Some(r.timing) };
                    sink.send(&mut nb, change)?;
                }
                sink.commit(&mut nb)?;
                sink.finish()?;
                kernel.shutdown().await;
                bar.abandon();
                return Err(e);
            }
        };
        if !pending.borrow().is_empty() {
            crate::ui::plain(&pending.borrow());
        }
        let status = res.status;
        let (ename, evalue, tb, message) =
            (res.ename.clone(), res.evalue.clone(), res.traceback.join("\n"), res.message.clone());
        for u in res.display_updates {
            for &(c, j) in displays.get(&u.display_id).into_iter().flatten() {
                sink.send(&mut nb, Change::Display { i: c, j, data: u.data.clone(), metadata: u.metadata.clone() })?;
            }
        }
        for (j, id) in res.display_ids {
            displays.entry(id).or_default().push((i, j));
        }
        let change = Change::Cell { i, outputs: res.outputs, count: res.execution_count, timing: Some(res.timing) };
        sink.send(&mut nb, change)?;
        sink.commit(&mut nb)?;
        if status == ExecStatus::Error && raises {
            tracing::debug!("cell {} raised, as its raises-exception tag expects", i + 1);
        } else if status != ExecStatus::Ok {
            failures += 1;
            let what = match status {
                ExecStatus::Error => format!("{}: {}", ename.unwrap_or_default(), evalue.unwrap_or_default()),
                _ => message.unwrap_or_else(|| status.as_str().to_string()),
            };
            crate::ui::eline(&format!("cell {} ({}/{}) failed: {what}", i + 1, k + 1, code_cells.len()));
            if !quiet && status == ExecStatus::Error && !tb.is_empty() {
                crate::ui::elines(&tb);
            }
            if !args.allow_errors {
                code = 1;
                break;
            }
            if status == ExecStatus::Dead {
                if let Err(e) = kernel.restart().await {
                    sink.finish()?;
                    return Err(e);
                }
            }
        }
    }
    bar.finish_and_clear();
    kernel.shutdown().await;
    sink.finish()?;
    if !quiet {
        crate::ui::eline(&format!(
            "executed {} code cells in {:.1} s{} -> {}",
            code_cells.len(),
            t0.elapsed().as_secs_f64(),
            if failures > 0 { format!(" ({failures} failed)") } else { String::new() },
            out.display()
        ));
    }
    Ok(code)
}
