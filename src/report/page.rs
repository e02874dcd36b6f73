//! The run page: one self-contained `run.html` beside a loop summary, built from the summary and each
//! trial's `events.jsonl` (and its notebook, for the cells' code and outputs). The page is a view, never
//! the source of truth: nothing here writes anything but the page.
//!
//! The markup is a minijinja template (`scripts/run.html.j2`, shadowable like every bundled script) and
//! every value reaches it through minijinja's HTML auto-escaping: nothing here escapes by hand, and
//! nothing read from a trial (code, outputs, errors, model replies) can become markup. The page must
//! never load anything from the network.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use minijinja::{AutoEscape, Environment};
use serde::Serialize;
use serde_json::Value;

/// Why a page could not be built; `kind` is the Lua-facing `err.kind`.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("{0}")]
    NotSummary(String),
    #[error("{0}")]
    Io(String),
    #[error("the run page template: {0:#}")]
    Template(minijinja::Error),
}

impl PageError {
    pub fn kind(&self) -> &'static str {
        match self {
            PageError::NotSummary(_) => "not_summary",
            PageError::Io(_) => "io",
            PageError::Template(_) => "template",
        }
    }
}

/// The largest file read for the page (a summary, an event log, a notebook); bigger ones are skipped.
const MAX_READ: u64 = 64 << 20;
/// The most characters shown of one cell's code, output or a message.
const CLIP: usize = 4000;

/// How to build a page.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Where to write it (default: `run.html` beside the summary).
    pub path: Option<PathBuf>,
    /// Whether the page reloads itself (default: the summary has no `finished_at`).
    pub live: Option<bool>,
    /// Seconds between reloads of a live page.
    pub refresh_secs: u32,
}

#[derive(Serialize)]
struct Page {
    title: String,
    dataset: String,
    metric: String,
    direction: String,
    threshold: Option<f64>,
    status: String,
    status_class: &'static str,
    live: bool,
    refresh_secs: u32,
    started_at: String,
    finished_at: String,
    elapsed: String,
    tokens: Tokens,
    llm_calls: u64,
    /// What the run's priced LLM calls cost ("" when nothing was priced).
    cost: String,
    strategy: String,
    best_score: String,
    summary_file: String,
    nodes: Vec<Node>,
    diagram: Diagram,
    chart: Chart,
}

#[derive(Serialize, Default)]
struct Tokens {
    prompt: u64,
    completion: u64,
    total: u64,
}

#[derive(Serialize)]
struct Node {
    iter: i64,
    status: String,
    status_class: &'static str,
    score: String,
    kind: String,
    parent: Option<i64>,
    trial: String,
    winner: bool,
    best: bool,
    criteria_met: bool,
    error: String,
    duration: String,
    tokens: u64,
    llm_calls: usize,
    cells: Vec<Cell>,
    links: Vec<Link>,
    messages: Vec<Message>,
    notes: Vec<String>,
    /// The report's computed table (its first markdown table), shown as text.
    report_table: String,
    /// The trial's plots, inline as `data:` images (an SVG in an <img> runs no script).
    plots: Vec<Plot>,
}

#[derive(Serialize, Default)]
struct Plot {
    title: String,
    uri: String,
}

/// The largest plot embedded in the page (bigger ones stay links).
const MAX_PLOT: u64 = 2 << 20;

/// The first markdown table of the trial's report (the computed results), and its plots as data URIs.
fn report_parts(trial: &Path, node: &mut Node) {
    if let Ok(bytes) = crate::files::read_regular(&trial.join("experiment_report.md"), MAX_READ) {
        let text = String::from_utf8_lossy(&bytes);
        let table: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.trim_start().starts_with('|'))
            .take_while(|l| l.trim_start().starts_with('|'))
            .collect();
        node.report_table = table.join("\n");
    }
    for (title, file) in [("per fold", "fold_scores.svg"), ("per iteration", "iterations.svg")] {
        if let Ok(svg) = crate::files::read_regular(&trial.join(file), MAX_PLOT) {
            let enc = percent_encoding::percent_encode(&svg, percent_encoding::NON_ALPHANUMERIC);
            node.plots.push(Plot { title: title.into(), uri: format!("data:image/svg+xml,{enc}") });
        }
    }
}

#[derive(Serialize, Default)]
struct Cell {
    index: i64,
    id: String,
    status: String,
    status_class: &'static str,
    duration: String,
    runs: usize,
    fixes: Vec<Fix>,
    code: String,
    output: String,
}

#[derive(Serialize)]
struct Fix {
    round: i64,
    applied: bool,
    by: String,
    how: String,
    error: String,
    diff: Vec<DiffLine>,
}

#[derive(Serialize)]
struct DiffLine {
    tag: &'static str,
    text: String,
}

#[derive(Serialize)]
struct Link {
    label: &'static str,
    href: String,
}

#[derive(Serialize)]
struct Message {
    level: String,
    text: String,
}

#[derive(Serialize, Default)]
struct Diagram {
    width: i64,
    height: i64,
    nodes: Vec<DiagramNode>,
    edges: Vec<(i64, i64, i64, i64)>,
}

#[derive(Serialize)]
struct DiagramNode {
    iter: i64,
    x: i64,
    y: i64,
    status_class: &'static str,
    label: String,
    winner: bool,
}

#[derive(Serialize, Default)]
struct Chart {
    width: i64,
    height: i64,
    points: Vec<ChartPoint>,
    threshold_y: Option<f64>,
    threshold_label: String,
    min_label: String,
    max_label: String,
}

#[derive(Serialize)]
struct ChartPoint {
    iter: i64,
    x: f64,
    y: f64,
    label: String,
    met: bool,
}

/// The loop's "no score" placeholder (stdlib/loop.lua, M.NO_SCORE).
const NO_SCORE: f64 = -999.0;

/// Build the page for the loop summary at `summary`, with `template` (the text of run.html.j2), and
/// write it atomically. Returns the page's path.
pub fn build(summary: &Path, template: &str, opts: &Options) -> Result<PathBuf, PageError> {
    let doc = read_summary(summary)?;
    let out = opts.path.clone().unwrap_or_else(|| summary.with_file_name("run.html"));
    let page = page_data(summary, &out, &doc, opts);
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::Html);
    env.add_template("run.html.j2", template).map_err(PageError::Template)?;
    let html = env.get_template("run.html.j2").and_then(|t| t.render(&page)).map_err(PageError::Template)?;
    crate::files::write_atomic(&out, html.as_bytes())
        .map_err(|e| PageError::Io(format!("cannot write {}: {e}", out.display())))?;
    Ok(out)
}

/// Read a loop summary; a file that is not one is `NotSummary`.
pub fn read_summary(summary: &Path) -> Result<Value, PageError> {
    let bytes = crate::files::read_regular(summary, MAX_READ)
        .map_err(|e| PageError::Io(format!("cannot read {}: {e}", summary.display())))?;
    let not = |why: &str| PageError::NotSummary(format!("{}: not a loop summary ({why})", summary.display()));
    let doc: Value = serde_json::from_slice(&bytes).map_err(|_| not("not JSON"))?;
    if !doc.get("iterations").is_some_and(Value::is_array) {
        return Err(not("no \"iterations\" list"));
    }
    if !doc.get("primary_metric").is_some_and(Value::is_string) {
        return Err(not("no \"primary_metric\""));
    }
    Ok(doc)
}

fn s(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => String::new(),
        Some(o) => o.to_string(),
    }
}

fn num(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
}

fn clip(text: &str) -> String {
    match text.char_indices().nth(CLIP) {
        Some((i, _)) => format!("{}\n… ({} more characters)", &text[..i], text[i..].chars().count()),
        None => text.to_string(),
    }
}

fn status_class(status: &str) -> &'static str {
    match status.to_ascii_lowercase().as_str() {
        "valid" | "ok" | "met" => "ok",
        "no_metric" | "stopped" | "timeout" | "running" => "warn",
        "interrupted" => "muted",
        _ => "bad",
    }
}

fn seconds(v: f64) -> String {
    if v >= 3600.0 {
        format!("{}h {:02}m", (v / 3600.0) as u64, ((v % 3600.0) / 60.0) as u64)
    } else if v >= 60.0 {
        format!("{}m {:02}s", (v / 60.0) as u64, (v % 60.0) as u64)
    } else {
        format!("{v:.1}s")
    }
}

fn page_data(summary: &Path, out: &Path, doc: &Value, opts: &Options) -> Page {
    let finished = doc.get("finished_at").is_some_and(|v| !v.is_null());
    let live = opts.live.unwrap_or(!finished);
    let met = doc.get("criteria_met").and_then(Value::as_bool).unwrap_or(false);
    let stopped = s(doc.get("stopped"));
    let (status, run_class) = if !finished && live {
        ("running".to_string(), "warn")
    } else if !finished {
        ("not finished (killed?)".to_string(), "bad")
    } else if met {
        ("criterion met".to_string(), "ok")
    } else if !stopped.is_empty() {
        (format!("stopped: {stopped}"), "bad")
    } else {
        ("finished, criterion not met".to_string(), "warn")
    };
    let score_fmt = |v: Option<f64>| match v {
        Some(x) if x != NO_SCORE => format!("{x:.4}"),
        _ => "—".to_string(),
    };
    let base = out.parent().unwrap_or(Path::new("."));
    let archived = s(doc.get("archived_dir"));
    let best_trial = s(doc.get("best_trial_dir"));
    let iters = doc.get("iterations").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut nodes = Vec::new();
    for (pos, r) in iters.iter().enumerate() {
        let iter = r.get("iter").and_then(Value::as_i64).unwrap_or(pos as i64 + 1);
        let status = s(r.get("status"));
        let mut trial = s(r.get("archived_as"));
        let recorded = s(r.get("trial_dir"));
        if trial.is_empty() {
            trial = recorded.clone();
        }
        let winner = !archived.is_empty()
            && (trial == archived || recorded == archived || s(doc.get("archive_source")) == recorded);
        if !Path::new(&trial).exists() && winner && Path::new(&archived).exists() {
            trial = archived.clone();
        }
        let score = num(r.get("score")).filter(|x| *x != NO_SCORE);
        let usage = r.get("usage");
        let mut node = Node {
            iter,
            status_class: status_class(&status),
            status,
            score: score_fmt(score),
            kind: s(r.get("kind")),
            parent: r.get("parent").and_then(Value::as_i64),
            trial: trial.clone(),
            winner,
            best: !best_trial.is_empty() && (best_trial == trial || best_trial == recorded),
            criteria_met: r.get("criteria_met").and_then(Value::as_bool).unwrap_or(false),
            error: clip(&s(r.get("error"))),
            duration: num(r.get("duration_sec")).map(seconds).unwrap_or_default(),
            tokens: usage.and_then(|u| u.get("total_tokens")).and_then(Value::as_u64).unwrap_or(0),
            llm_calls: 0,
            cells: Vec::new(),
            links: Vec::new(),
            messages: Vec::new(),
            notes: Vec::new(),
            report_table: String::new(),
            plots: Vec::new(),
        };
        if !trial.is_empty() {
            trial_details(Path::new(&trial), base, &mut node);
        }
        nodes.push(node);
    }
    let u = |k: &str| doc.get(k).and_then(Value::as_u64).unwrap_or(0);
    let title = format!("cellsci run — {}", s(doc.get("dataset")));
    Page {
        title,
        dataset: s(doc.get("dataset")),
        metric: s(doc.get("primary_metric")),
        direction: s(doc.get("direction")),
        threshold: num(doc.get("success_threshold")),
        status,
        status_class: run_class,
        live,
        refresh_secs: opts.refresh_secs.max(1),
        started_at: s(doc.get("started_at")),
        finished_at: s(doc.get("finished_at")),
        elapsed: num(doc.get("total_time_sec")).map(seconds).unwrap_or_default(),
        tokens: Tokens { prompt: u("prompt_tokens"), completion: u("completion_tokens"), total: u("total_tokens") },
        llm_calls: u("llm_calls"),
        cost: num(doc.get("total_cost_usd")).filter(|c| *c > 0.0).map(|c| format!("${c:.4}")).unwrap_or_default(),
        strategy: s(doc.get("strategy")),
        best_score: score_fmt(num(doc.get("best_score"))),
        summary_file: href(summary, base),
        diagram: diagram(&nodes),
        chart: chart(&iters, num(doc.get("success_threshold"))),
        nodes,
    }
}

/// The trial's cells, fix rounds, messages and files, from its event log and notebook.
fn trial_details(trial: &Path, base: &Path, node: &mut Node) {
    for (label, file) in [
        ("notebook", "notebook_prompt.ipynb"),
        ("executed notebook", "notebook_prompt_exec.ipynb"),
        ("report", "experiment_report.md"),
        ("iterations plot", "iterations.svg"),
        ("event log", "events.jsonl"),
    ] {
        let p = trial.join(file);
        if p.is_file() {
            node.links.push(Link { label, href: href(&p, base) });
        }
    }
    report_parts(trial, node);
    let mut cells: BTreeMap<i64, Cell> = BTreeMap::new();
    match crate::files::read_regular(&trial.join("events.jsonl"), MAX_READ) {
        Ok(bytes) => {
            let mut bad = 0;
            // Lossy per line: a stray invalid byte costs its character, never the page.
            for line in String::from_utf8_lossy(&bytes).lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<Value>(line) {
                    Ok(ev) => event(&ev, &mut cells, node),
                    Err(_) => bad += 1,
                }
            }
            if bad > 0 {
                node.notes.push(format!("{bad} unreadable line(s) in events.jsonl were skipped"));
            }
        }
        Err(e) => node.notes.push(format!("no event log: {e}")),
    }
    let nb =
        ["notebook_prompt_exec.ipynb", "notebook_prompt.ipynb"].iter().map(|f| trial.join(f)).find(|p| p.is_file());
    if let Some(doc) = nb.and_then(|p| crate::files::read_regular(&p, MAX_READ).ok()) {
        let doc: Value = serde_json::from_slice(&doc).unwrap_or(Value::Null);
        let code_cells = doc.get("cells").and_then(Value::as_array).into_iter().flatten().enumerate();
        for (i, c) in code_cells.filter(|(_, c)| c.get("cell_type").and_then(Value::as_str) == Some("code")) {
            let cell = cells.entry(i as i64).or_insert_with(|| Cell {
                index: i as i64,
                status: "not run".into(),
                status_class: "muted",
                ..Default::default()
            });
            cell.code = clip(&text_of(c.get("source")));
            cell.output = clip(&outputs(c.get("outputs")));
        }
    }
    node.cells = cells.into_values().collect();
}

fn event(ev: &Value, cells: &mut BTreeMap<i64, Cell>, node: &mut Node) {
    let kind = ev.get("kind").and_then(Value::as_str).unwrap_or("");
    let index = ev.get("cell_index").and_then(Value::as_i64);
    match (kind, index) {
        ("cell", Some(i)) => {
            let c = cells.entry(i).or_insert_with(|| Cell { index: i, ..Default::default() });
            c.id = s(ev.get("id"));
            c.status = s(ev.get("status"));
            c.status_class = status_class(&c.status);
            c.runs += 1;
            if let Some(d) = num(ev.get("duration")) {
                c.duration = seconds(d);
            }
        }
        ("fix", Some(i)) => {
            let c = cells.entry(i).or_insert_with(|| Cell { index: i, ..Default::default() });
            let how = s(ev.get("how"));
            let by = if how == "llm" {
                "LLM"
            } else if how.starts_with("heuristic") {
                "heuristic"
            } else {
                "nobody"
            };
            let before = s(ev.get("before"));
            let after = s(ev.get("after"));
            let diff = if after.is_empty() { Vec::new() } else { diff(&before, &after) };
            c.fixes.push(Fix {
                round: ev.get("round").and_then(Value::as_i64).unwrap_or(0),
                applied: ev.get("applied").and_then(Value::as_bool).unwrap_or(false),
                by: by.into(),
                how: clip(&how),
                error: clip(&s(ev.get("error"))),
                diff,
            });
        }
        ("llm", _) => node.llm_calls += 1,
        ("log", _) => {
            let level = s(ev.get("level"));
            if level == "warn" || level == "error" {
                node.messages.push(Message { level, text: clip(&s(ev.get("message"))) });
            }
        }
        _ => {}
    }
}

/// A line diff of a fix (similar's Myers diff), as (tag, line) pairs.
fn diff(before: &str, after: &str) -> Vec<DiffLine> {
    similar::TextDiff::from_lines(before, after)
        .iter_all_changes()
        .map(|c| DiffLine {
            tag: match c.tag() {
                similar::ChangeTag::Delete => "del",
                similar::ChangeTag::Insert => "ins",
                similar::ChangeTag::Equal => "eq",
            },
            text: c.value().trim_end_matches('\n').to_string(),
        })
        .take(400)
        .collect()
}

fn text_of(v: Option<&Value>) -> String {
    match v {
        Some(Value::Array(parts)) => parts.iter().filter_map(Value::as_str).collect(),
        other => s(other),
    }
}

fn outputs(v: Option<&Value>) -> String {
    let mut out = String::new();
    for o in v.and_then(Value::as_array).into_iter().flatten() {
        match o.get("output_type").and_then(Value::as_str) {
            Some("stream") => out.push_str(&text_of(o.get("text"))),
            Some("error") => {
                out.push_str(&format!("{}: {}\n", s(o.get("ename")), s(o.get("evalue"))));
            }
            _ => {
                if let Some(t) = o.get("data").and_then(|d| d.get("text/plain")) {
                    out.push_str(&text_of(Some(t)));
                    out.push('\n');
                }
            }
        }
    }
    out
}

/// A link from the page's folder to `p`: relative when they share an ancestor.
fn href(p: &Path, base: &Path) -> String {
    let p = crate::files::absolute_clean(p);
    let base = crate::files::absolute_clean(base);
    let pc: Vec<Component> = p.components().collect();
    let bc: Vec<Component> = base.components().collect();
    let common = pc.iter().zip(&bc).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); bc.len() - common];
    parts.extend(pc[common..].iter().map(|c| c.as_os_str().to_string_lossy().into_owned()));
    parts.join("/")
}

/// The nodes as a tree: a column per node in iteration order, a row per depth, edges to parents.
fn diagram(nodes: &[Node]) -> Diagram {
    const DX: i64 = 84;
    const DY: i64 = 74;
    let mut depth: BTreeMap<i64, i64> = BTreeMap::new();
    let mut d = Diagram::default();
    let mut at: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for (col, n) in nodes.iter().enumerate() {
        let level = n.parent.and_then(|p| depth.get(&p)).map_or(0, |l| l + 1);
        depth.insert(n.iter, level);
        let (x, y) = (40 + col as i64 * DX, 36 + level * DY);
        at.insert(n.iter, (x, y));
        if let Some((px, py)) = n.parent.and_then(|p| at.get(&p)) {
            d.edges.push((*px, *py, x, y));
        }
        d.nodes.push(DiagramNode {
            iter: n.iter,
            x,
            y,
            status_class: n.status_class,
            label: n.score.clone(),
            winner: n.winner,
        });
    }
    d.width = 80 + nodes.len().max(1) as i64 * DX;
    d.height = 80 + depth.values().copied().max().unwrap_or(0) * DY;
    d
}

/// The score per iteration against the threshold, in SVG coordinates.
fn chart(iters: &[Value], threshold: Option<f64>) -> Chart {
    let (w, h, pad) = (640.0, 220.0, 40.0);
    let pts: Vec<(i64, f64, bool)> = iters
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let sc = num(r.get("score")).filter(|x| *x != NO_SCORE && x.is_finite())?;
            let it = r.get("iter").and_then(Value::as_i64).unwrap_or(i as i64 + 1);
            Some((it, sc, r.get("criteria_met").and_then(Value::as_bool).unwrap_or(false)))
        })
        .collect();
    let mut lo = pts.iter().map(|p| p.1).chain(threshold).fold(f64::INFINITY, f64::min);
    let mut hi = pts.iter().map(|p| p.1).chain(threshold).fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        (lo, hi) = (lo - 0.5, hi + 0.5);
    }
    let n = iters.len().max(2) as f64;
    let y = |v: f64| h - pad - (v - lo) / (hi - lo) * (h - 2.0 * pad);
    let mut c = Chart {
        width: w as i64,
        height: h as i64,
        threshold_y: threshold.map(y),
        threshold_label: threshold.map(|t| format!("{t:.4}")).unwrap_or_default(),
        min_label: format!("{lo:.4}"),
        max_label: format!("{hi:.4}"),
        ..Default::default()
    };
    let first = iters.first().and_then(|r| r.get("iter")).and_then(Value::as_i64).unwrap_or(1);
    for (it, sc, met) in pts {
        let x = pad + (it - first) as f64 / (n - 1.0) * (w - 2.0 * pad);
        c.points.push(ChartPoint { iter: it, x, y: y(sc), label: format!("{sc:.4}"), met });
    }
    c
}
