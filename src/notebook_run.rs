//! `cellsci notebook run`: the papermill-style executor. Runs the code cells of a notebook in order in
//! one kernel, with nbclient's rules (display ids across cells, the `skip-execution` and
//! `raises-exception` tags), and saves the output notebook after every cell, so a crash loses at most
//! the running cell. Saving costs no time between cells: each finished cell goes to the saver process
//! (see `notebook::saver`), which writes the file while the next cell runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::exit::{EXIT_NOT_MET, EXIT_OK};
use crate::kernel::outputs::summary;
use crate::kernel::spec::KernelSpec;
use crate::kernel::{ExecOptions, ExecStatus, StartOptions};
use crate::notebook::params::{self, PVal, Params, Placement};
use crate::notebook::saver::{Change, Sink};
use crate::notebook::{insert_sorted, join_text, sort_keys, Notebook};

#[derive(Args, Debug, Clone)]
pub struct NotebookRunArgs {
    /// The notebook to run.
    pub input: PathBuf,
    /// Where to write the executed notebook (default: INPUT with `.out.ipynb`; never INPUT itself
    /// unless you name it).
    pub output: Option<PathBuf>,
    /// The kernelspec to use (default: the notebook's metadata.kernelspec.name, else python3).
    #[arg(short = 'k', long = "kernel", value_name = "NAME")]
    pub kernel: Option<String>,
    /// Run ipykernel with this Python interpreter instead of a kernelspec.
    #[arg(long = "python", value_name = "PATH", conflicts_with = "kernel")]
    pub python: Option<PathBuf>,
    /// Seconds a cell may run before it is interrupted (default: no limit).
    #[arg(long = "timeout", visible_alias = "execution-timeout", value_name = "S")]
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
    /// A parameter, typed as papermill types it: `True`, `False`, `None`, an int, a float, else a
    /// string (repeatable).
    #[arg(short = 'p', long = "parameters", num_args = 2, value_names = ["NAME", "VALUE"], allow_hyphen_values = true)]
    pub parameters: Vec<String>,
    /// A parameter whose value is the string as given (repeatable).
    #[arg(short = 'r', long = "parameters_raw", alias = "parameters-raw", num_args = 2, value_names = ["NAME", "VALUE"], allow_hyphen_values = true)]
    pub parameters_raw: Vec<String>,
    /// Parameters from a YAML file: a mapping of names to values (repeatable).
    #[arg(short = 'f', long = "parameters_file", alias = "parameters-file", value_name = "FILE")]
    pub parameters_file: Vec<PathBuf>,
    /// Parameters as a YAML mapping, e.g. `-y '{alpha: 0.5, tags: [a, b]}'` (repeatable).
    #[arg(
        short = 'y',
        long = "parameters_yaml",
        alias = "parameters-yaml",
        value_name = "YAML",
        allow_hyphen_values = true
    )]
    pub parameters_yaml: Vec<String>,
    /// Write the notebook with its parameters injected, without running it.
    #[arg(long = "prepare-only")]
    pub prepare_only: bool,
    /// When a cell fails, add papermill's error banner: a markdown cell at the top linking to another
    /// placed just before the failed cell (both tagged `papermill-error-cell-tag`, removed by the next run).
    #[arg(long = "banner")]
    pub banner: bool,
}

/// nbclient's `skip_cells_with_tag` default.
const SKIP_TAG: &str = "skip-execution";
/// A cell whose error is expected: execution goes on after it (nbclient, papermill).
const RAISES_TAG: &str = "raises-exception";
/// papermill's tag for its error banner cells; cells with it are removed before a run, by papermill too.
const ERROR_MARKER_TAG: &str = "papermill-error-cell-tag";
const ERROR_STYLE: &str =
    r#"style="color:red; font-family:Helvetica Neue, Helvetica, Arial, sans-serif; font-size:2em;""#;

fn default_output(input: &std::path::Path) -> PathBuf {
    let stem = input.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "notebook".into());
    input.with_file_name(format!("{stem}.out.ipynb"))
}

/// The parameters of the command line, applied in papermill's order: `-f` files, then `-y`, then
/// `-p`, then `-r` (each in the order given); a later value of a name replaces an earlier one.
fn collect_params(args: &NotebookRunArgs) -> Result<Params> {
    let mut p = Params::default();
    for f in &args.parameters_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("-f {}: cannot read the file", f.display()))?;
        p.update_from_yaml(&text, &format!("-f {}", f.display()))?;
    }
    for y in &args.parameters_yaml {
        p.update_from_yaml(y, &format!("-y {y:?}"))?;
    }
    for kv in args.parameters.chunks(2) {
        p.set(&kv[0], params::resolve_cli_type(&kv[1]), &format!("-p {}", kv[0]))?;
    }
    for kv in args.parameters_raw.chunks(2) {
        p.set(&kv[0], PVal::Str(kv[1].clone()), &format!("-r {}", kv[0]))?;
    }
    Ok(p)
}

/// Parameters are written as Python: refuse a kernel of another language before anything runs.
fn check_python_kernel(args: &NotebookRunArgs, nb: &Notebook, name: Option<&str>) -> Result<()> {
    if args.python.is_some() {
        return Ok(());
    }
    let md = nb.metadata();
    let nb_lang = md
        .pointer("/kernelspec/language")
        .or_else(|| md.pointer("/language_info/name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let lang = match (&args.kernel, args.gateway.is_some()) {
        (Some(k), false) => crate::kernel::spec::find(k, None).map(|s| s.language).or(nb_lang),
        _ => nb_lang,
    };
    match lang {
        None => Ok(()),
        Some(l) if l.eq_ignore_ascii_case("python") => Ok(()),
        Some(_) if name == Some("pysparkkernel") => Ok(()),
        Some(l) => bail!(
            "parameters (-p, -r, -y, -f) are written as Python and injected only for Python kernels; the kernel {} is {l}",
            name.map(|n| format!("'{n}'")).unwrap_or_else(|| "of this notebook".into())
        ),
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A cell that failed.
struct Failure {
    /// 0-based, before the banner.
    i: usize,
    status: &'static str,
    count: Option<i64>,
    ename: String,
    evalue: String,
    id: Option<String>,
}

/// What a run records in `metadata.cellsci.run` (and, with parameters, `metadata.papermill.exception`).
struct Record {
    started: String,
    t0: Instant,
    /// 0-based indexes of the code cells to run, in order.
    to_run: Vec<usize>,
    /// How many of them were sent to the kernel.
    ran: usize,
    failed: Vec<Failure>,
    interrupted: Option<usize>,
    error: Option<String>,
    papermill: bool,
    kernel: Value,
}

impl Record {
    /// `status` is `running`, `ok`, `failed`, `interrupted`; `shift(i)` maps a cell index to its place
    /// in the saved notebook (the banner moves cells).
    fn write(&self, md: &mut Value, status: &str, shift: &dyn Fn(usize) -> usize) {
        let finished = status != "running";
        let m = md.as_object_mut().expect("metadata is an object");
        if !m.get("cellsci").is_some_and(Value::is_object) {
            insert_sorted(m, "cellsci", json!({}));
        }
        let cs = m.get_mut("cellsci").expect("set");
        let not_run: Vec<usize> = self.to_run[self.ran.min(self.to_run.len())..].to_vec();
        let rec = json!({
            "status": status,
            "started": self.started,
            "finished": if finished { json!(now()) } else { Value::Null },
            "duration": if finished { json!((self.t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0) } else { Value::Null },
            "kernel": self.kernel,
            "code_cells": self.to_run.len(),
            "cells_run": self.ran,
            "failed": self.failed.iter().map(|f| json!({
                "cell": shift(f.i) + 1, "id": f.id, "status": f.status, "execution_count": f.count, "ename": f.ename, "evalue": f.evalue,
            })).collect::<Vec<_>>(),
            "interrupted_cell": self.interrupted.map(|i| json!(shift(i) + 1)),
            "not_run": if finished { json!(not_run.iter().map(|&i| shift(i) + 1).collect::<Vec<_>>()) } else { Value::Null },
            "error": self.error,
        });
        cs.as_object_mut().expect("object").insert("run".into(), rec);
        if self.papermill {
            if let Some(pm) = m.get_mut("papermill").and_then(Value::as_object_mut) {
                let failed = !self.failed.is_empty() || status == "failed";
                insert_sorted(pm, "exception", if failed { json!(true) } else { Value::Null });
            }
        }
    }
}

/// Which kernel runs the notebook, and why, for the stderr line and the record.
fn describe_kernel(args: &NotebookRunArgs, spec: Option<&KernelSpec>, name_from: &str) -> (String, Value) {
    let cmd = |s: &KernelSpec| {
        s.argv
            .iter()
            .filter(|a| !a.contains("{connection_file}") && a.as_str() != "-f")
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    };
    match (spec, &args.gateway) {
        (_, Some(url)) => (format!("kernel: on the gateway {url} (--gateway)"), json!({"gateway": url})),
        (Some(s), None) if args.python.is_some() => {
            (format!("kernel: {} (--python)", cmd(s)), json!({"interpreter": s.argv.first(), "chosen_by": "--python"}))
        }
        (Some(s), None) => match &s.resource_dir {
            Some(dir) => (
                format!(
                    "kernel: kernelspec '{}' ({}) in {}: {} (the name from {name_from})",
                    s.name,
                    s.display_name,
                    dir.display(),
                    cmd(s)
                ),
                json!({"kernelspec": s.name, "spec_dir": dir, "interpreter": s.argv.first(), "chosen_by": name_from}),
            ),
            None => (
                format!(
                    "kernel: cellsci's own venv {}, which has ipykernel and nothing else: no kernelspec '{}' was found \
                     (the name from {name_from}); give --python PATH or --kernel NAME to run your environment",
                    s.argv.first().map(String::as_str).unwrap_or("?"),
                    s.name
                ),
                json!({"interpreter": s.argv.first(), "chosen_by": "provisioned venv (no kernelspec found)"}),
            ),
        },
        (None, None) => ("kernel: ?".into(), Value::Null),
    }
}

pub async fn run(args: &NotebookRunArgs, quiet: bool) -> Result<u8> {
    let t0 = Instant::now();
    let started = now();
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
    let nb_name = nb.metadata().pointer("/kernelspec/name").and_then(Value::as_str).map(String::from);
    let name_from = if args.kernel.is_some() {
        "--kernel"
    } else if nb_name.is_some() {
        "the notebook's metadata.kernelspec.name"
    } else {
        "the default, python3"
    };
    let name = args.kernel.clone().or(nb_name);
    if let Some(t) = args.timeout {
        if !(t.is_finite() && t > 0.0) {
            anyhow::bail!("--timeout must be a positive number of seconds");
        }
    }
    let timeout = args.timeout.map(crate::duration_secs);

    // The banner of an earlier run (ours or papermill's) is not part of the notebook.
    for i in (0..nb.len()).rev() {
        if nb.has_tag(i, ERROR_MARKER_TAG) {
            nb.remove(i)?;
        }
    }
    let params = collect_params(args)?;
    if !params.is_empty() {
        check_python_kernel(args, &nb, name.as_deref())?;
        let place = params::inject(&mut nb, &params)?;
        let mut md = nb.metadata().clone();
        if let Some(pm) = md.get_mut("papermill").and_then(Value::as_object_mut) {
            insert_sorted(pm, "input_path", json!(args.input.display().to_string()));
            insert_sorted(pm, "output_path", json!(out.display().to_string()));
        }
        nb.set_metadata(md)?;
        let how = match place {
            Placement::Replaced(_) => "replacing the earlier injected-parameters cell",
            Placement::AfterParameters(_) => "after the cell tagged parameters",
            Placement::First => "as the first cell: no cell is tagged parameters",
        };
        if !quiet {
            crate::ui::eline(&format!(
                "parameters: {} injected as cell {} ({how})",
                params.0.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", "),
                place.index() + 1
            ));
        }
    }
    if args.prepare_only {
        nb.write(&out)?;
        if !quiet {
            crate::ui::eline(&format!("prepared (not run) -> {}", out.display()));
        }
        return Ok(EXIT_OK);
    }

    let opts = StartOptions {
        name,
        python: args.python.clone(),
        cwd,
        env,
        transport: args.transport,
        gateway,
        ..Default::default()
    };

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
    let mut rec = Record {
        started,
        t0,
        to_run: code_cells.clone(),
        ran: 0,
        failed: Vec::new(),
        interrupted: None,
        error: None,
        // a notebook papermill ran says in metadata.papermill.exception whether it failed: kept true
        papermill: !params.is_empty() || nb.metadata().get("papermill").is_some_and(Value::is_object),
        kernel: Value::Null,
    };
    let same = |i: usize| i;
    let mut md = nb.metadata().clone();
    rec.write(&mut md, "running", &same);
    nb.set_metadata(md)?;
    // Saved now (a bad path fails before the kernel starts), then after every cell by the saver.
    let mut sink = Sink::start(&mut nb, &out)?;
    // The record, saved with the notebook's metadata as it is at this point (and the kernel's
    // language_info once it has started).
    let mut base_md = nb.metadata().clone();
    fn save_record(
        sink: &mut Sink,
        nb: &mut Notebook,
        base_md: &Value,
        rec: &Record,
        status: &str,
        shift: &dyn Fn(usize) -> usize,
    ) -> Result<()> {
        let mut md = base_md.clone();
        rec.write(&mut md, status, shift);
        sink.send(nb, Change::Metadata { metadata: md })
    }

    tracing::debug!("starting the kernel {:?} after cellsci started", t0.elapsed());
    let spin = crate::ui::spinner("starting kernel");
    let started_kernel = async {
        let spec = if opts.gateway.is_some() { None } else { Some(crate::kernel::resolve_spec(&opts).await?) };
        let (line, kv) = describe_kernel(args, spec.as_ref(), name_from);
        if !quiet {
            crate::ui::eline(&line);
        }
        let k = crate::kernel::Kernel::launch(spec, opts.clone()).await?;
        anyhow::Ok((k, kv))
    }
    .await;
    spin.finish_and_clear();
    let mut kernel = match started_kernel {
        Ok((k, kv)) => {
            rec.kernel = kv;
            k
        }
        Err(e) => {
            rec.error = Some(format!("the kernel did not start: {e:#}"));
            save_record(&mut sink, &mut nb, &base_md, &rec, "failed", &same)?;
            sink.commit(&mut nb)?;
            sink.finish()?;
            return Err(e);
        }
    };
    // as nbclient: the notebook's language_info is the kernel's
    if let Some(li) = kernel.info().and_then(|i| i.get("language_info")).filter(|v| v.is_object()) {
        insert_sorted(base_md.as_object_mut().expect("metadata is an object"), "language_info", sort_keys(li));
    }
    save_record(&mut sink, &mut nb, &base_md, &rec, "running", &same)?;
    let bar = crate::ui::bar(code_cells.len() as u64, "{spinner} cell {pos}/{len} [{elapsed}] {wide_bar} {msg}");
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut code = EXIT_OK;
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
        rec.ran = k + 1;
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
                rec.interrupted = Some(i);
                let status = if crate::signals::interrupted() { "interrupted" } else { "failed" };
                if status == "failed" {
                    rec.error = Some(format!("{e:#}"));
                }
                save_record(&mut sink, &mut nb, &base_md, &rec, status, &same)?;
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
        let count = res.execution_count;
        let change = Change::Cell { i, outputs: res.outputs, count, timing: Some(res.timing) };
        sink.send(&mut nb, change)?;
        sink.commit(&mut nb)?;
        if status == ExecStatus::Error && raises {
            tracing::debug!("cell {} raised, as its raises-exception tag expects", i + 1);
        } else if status != ExecStatus::Ok {
            let (en, ev) = match status {
                ExecStatus::Error => (ename.unwrap_or_default(), evalue.unwrap_or_default()),
                _ => (status.as_str().to_string(), message.unwrap_or_else(|| status.as_str().to_string())),
            };
            let what = if status == ExecStatus::Error { format!("{en}: {ev}") } else { ev.clone() };
            let id = nb.cell_value(i).and_then(|c| c.get("id")).and_then(Value::as_str).map(String::from);
            rec.failed.push(Failure { i, status: status.as_str(), count, ename: en, evalue: ev, id });
            crate::ui::eline(&format!("cell {} ({}/{}) failed: {what}", i + 1, k + 1, code_cells.len()));
            if !quiet && status == ExecStatus::Error && !tb.is_empty() {
                crate::ui::elines(&tb);
            }
            if !args.allow_errors {
                code = EXIT_NOT_MET;
                break;
            }
            if status == ExecStatus::Dead {
                if let Err(e) = kernel.restart().await {
                    rec.error = Some(format!("the kernel died and did not restart: {e:#}"));
                    save_record(&mut sink, &mut nb, &base_md, &rec, "failed", &same)?;
                    sink.commit(&mut nb)?;
                    sink.finish()?;
                    return Err(e);
                }
            }
        }
    }
    bar.finish_and_clear();
    let t_shut = Instant::now();
    kernel.shutdown().await;
    tracing::debug!("kernel shut down in {:?}", t_shut.elapsed());
    // The banner: papermill's two markdown cells, one at the top and one just before the failed cell.
    let first_failed = rec.failed.first().map(|f| (f.i, f.count));
    let banner_at = first_failed.filter(|_| args.banner);
    if let Some((fi, count)) = banner_at {
        let tags = json!({"tags": [ERROR_MARKER_TAG]});
        let anchor = nb.make_cell(json!({"cell_type": "markdown", "metadata": tags, "source": format!(
            "<span id=\"papermill-error-cell\" {ERROR_STYLE}>Execution using cellsci encountered an exception here and stopped:</span>"
        )}))?;
        sink.send(&mut nb, Change::Insert { i: fi, cell: anchor.clone() })?;
        let count = count.map(|c| c.to_string()).unwrap_or_else(|| "None".into());
        let text = format!(
            "<span {ERROR_STYLE}>An Exception was encountered at '<a href=\"#papermill-error-cell\">In [{count}]</a>'.</span>"
        );
        // the saver may hold the anchor, not this notebook: its id must not be given twice
        let top = loop {
            let c = nb.make_cell(json!({"cell_type": "markdown", "metadata": tags, "source": text}))?;
            if c.get("id").is_none() || c.get("id") != anchor.get("id") {
                break c;
            }
        };
        sink.send(&mut nb, Change::Insert { i: 0, cell: top })?;
    }
    let shift = move |i: usize| match banner_at {
        Some((fi, _)) => i + 1 + usize::from(i >= fi),
        None => i,
    };
    // ok: every cell ran without an error; failed: the run stopped at a failed cell; errors: with
    // --allow-errors, every cell ran and some failed
    let status = match (rec.failed.is_empty(), code == EXIT_OK) {
        (true, _) => "ok",
        (false, true) => "errors",
        (false, false) => "failed",
    };
    save_record(&mut sink, &mut nb, &base_md, &rec, status, &shift)?;
    sink.commit(&mut nb)?;
    sink.finish()?;
    if !quiet {
        let total = code_cells.len();
        let ran = if rec.ran == total { format!("{total}") } else { format!("{} of {total}", rec.ran) };
        let failed = match rec.failed.len() {
            0 => String::new(),
            n if args.allow_errors => format!(" ({n} failed)"),
            _ => format!(" (stopped at the failed cell {}; {} not run)", rec.failed[0].i + 1, total - rec.ran),
        };
        crate::ui::eline(&format!(
            "executed {ran} code cells in {:.1} s{failed} -> {}",
            t0.elapsed().as_secs_f64(),
            out.display()
        ));
    }
    Ok(code)
}
