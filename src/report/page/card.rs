//! One trial's card on the run page: what a scientist reads about a node. Everything comes from the
//! loop summary's record and the trial's own files: `events.jsonl` (cells, durations, fix rounds,
//! warnings), the notebooks (cell names, code, outputs, the diff against the parent node),
//! `metrics.json` (the computed tables and statistics, recomputed here from the data, never parsed back
//! out of markdown), `experiment_report.md` (only the LLM's narrative), `research_strategy.md`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::{clip, href, num, s, seconds, status_class, NO_SCORE};
use crate::report::format::{mean_sd, num as fnum, pval, DASH};
use crate::report::metrics::{display_order, Metrics};
use crate::report::stats::{self, summarize, Basis, Direction, ALPHA};

/// The largest file read for a card (an event log, a notebook); bigger ones are skipped.
const MAX_READ: u64 = 64 << 20;
/// The most characters of a strategy or narrative shown.
const LONG_CLIP: usize = 20_000;
/// The most lines of a diff against the parent shown.
const MAX_DIFF_LINES: usize = 600;

/// The files a card is built from (what its cache key watches).
pub const FILES: &[&str] = &[
    "events.jsonl",
    "notebook_prompt.ipynb",
    "notebook_prompt_exec.ipynb",
    "experiment_report.md",
    "metrics.json",
    "research_strategy.md",
    "fold_scores.svg",
    "iterations.svg",
];

#[derive(Serialize, Default)]
pub struct Card {
    pub iter: i64,
    pub status: String,
    pub status_class: &'static str,
    pub score: String,
    pub metric: String,
    pub kind: String,
    pub parent: Option<i64>,
    pub trial: String,
    pub winner: bool,
    pub best: bool,
    pub in_flight: bool,
    pub started_at: String,
    pub criteria_met: bool,
    pub verdict: Option<Verdict>,
    pub error: String,
    pub duration: String,
    pub tokens: Tokens,
    pub llm_calls: u64,
    pub llm_time: String,
    /// What the node's priced LLM calls cost ("" when nothing was priced).
    pub cost: String,
    pub strategy: String,
    pub narrative: String,
    /// The strategy and the narrative as HTML (`md::to_html`: escaped text in a few tags of its own).
    pub strategy_html: String,
    pub narrative_html: String,
    pub results: Option<Results>,
    /// Why there are no computed tables ("" when there are).
    pub results_missing: String,
    pub cells: Vec<Cell>,
    pub code_diff: Option<CodeDiff>,
    pub links: Vec<Link>,
    pub plots: Vec<Plot>,
    pub messages: Vec<Message>,
    pub notes: Vec<String>,
    /// Where the node's gateway kernel ran (its last `kernel_host` event): "host (gateway URL)".
    pub kernel_host: String,
}

#[derive(Serialize, Default)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    pub total: u64,
}

#[derive(Serialize)]
pub struct Verdict {
    pub met: bool,
    pub reason: String,
    pub criterion: String,
}

#[derive(Serialize)]
pub struct Results {
    pub metric: String,
    pub direction: &'static str,
    pub baseline: String,
    pub winner: String,
    pub folds: String,
    /// The metrics table: every metric of every model as mean ± SD.
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
    /// The primary metric against the baseline, model by model.
    pub stats: Vec<StatRow>,
    pub notes: Vec<String>,
}

#[derive(Serialize)]
pub struct Row {
    pub model: String,
    pub winner: bool,
    pub baseline: bool,
    pub values: Vec<String>,
}

#[derive(Serialize)]
pub struct StatRow {
    pub model: String,
    pub baseline: bool,
    pub winner: bool,
    pub mean: String,
    pub sd: String,
    pub n: usize,
    pub delta: String,
    pub p_t: String,
    pub significant: bool,
    pub p_wilcoxon: String,
    pub p_holm: String,
    pub effect: String,
    pub ci: String,
    pub why_no_test: String,
}

#[derive(Serialize, Default)]
pub struct Cell {
    pub index: i64,
    pub id: String,
    pub name: String,
    pub status: String,
    pub status_class: &'static str,
    /// The time of every run of the cell together.
    pub duration: String,
    /// Each run's time, when it ran more than once.
    pub run_times: String,
    pub runs: usize,
    #[serde(skip)]
    total_secs: f64,
    #[serde(skip)]
    times: Vec<f64>,
    pub fixes: Vec<Fix>,
    pub code: String,
    pub output: String,
}

#[derive(Serialize)]
pub struct Fix {
    pub round: i64,
    pub applied: bool,
    /// Who proposed the edit: "LLM", "heuristic", or "no one".
    pub by: String,
    /// Why no edit was applied ("" when one was).
    pub reason: String,
    /// The heuristic's rule, when a heuristic proposed it.
    pub rule: String,
    pub error: String,
    pub diff: Vec<DiffLine>,
}

#[derive(Serialize)]
pub struct DiffLine {
    pub tag: &'static str,
    pub text: String,
}

#[derive(Serialize)]
pub struct CodeDiff {
    pub parent: i64,
    pub added: usize,
    pub removed: usize,
    pub lines: Vec<DiffLine>,
    pub truncated: bool,
}

#[derive(Serialize)]
pub struct Link {
    pub label: &'static str,
    pub href: String,
}

#[derive(Serialize)]
pub struct Message {
    pub level: String,
    pub text: String,
}

#[derive(Serialize)]
pub struct Plot {
    pub title: String,
    pub uri: String,
}

/// What a card needs from the page besides its record.
pub struct Ctx<'a> {
    pub metric: &'a str,
    pub direction: Direction,
    /// The folder the page is written to (links are relative to it).
    pub base: &'a Path,
    /// The caller's baseline policy.
    pub baseline: Option<&'a super::BaselineFn>,
}

/// The card of one recorded node: `trial` is its folder as found on disk (None: not found),
/// `parent_trial` its parent node's.
pub fn recorded(
    rec: &Value,
    iter: i64,
    trial: Option<&Path>,
    parent_trial: Option<&Path>,
    winner: bool,
    best: bool,
    cx: &Ctx,
) -> Card {
    let status = s(rec.get("status"));
    let score = num(rec.get("score")).filter(|x| *x != NO_SCORE && x.is_finite());
    let usage = rec.get("usage");
    let u = |k: &str| usage.and_then(|u| u.get(k)).and_then(Value::as_u64).unwrap_or(0);
    let cost = num(rec.get("cost_usd")).or_else(|| num(usage.and_then(|u| u.get("cost"))));
    let verdict = rec.get("verdict").filter(|v| v.is_object()).map(|v| Verdict {
        met: v.get("met").and_then(Value::as_bool).unwrap_or(false),
        reason: clip(&s(v.get("reason"))),
        criterion: clip(&s(v.get("criterion"))),
    });
    let verdict = verdict.or_else(|| {
        let judgement = s(rec.get("judgement"));
        (!judgement.is_empty() || status == "VALID").then(|| Verdict {
            met: rec.get("criteria_met").and_then(Value::as_bool).unwrap_or(false),
            reason: clip(&judgement),
            criterion: String::new(),
        })
    });
    let calls = rec.get("llm_calls").and_then(Value::as_u64).unwrap_or_else(|| u("calls"));
    let mut card = Card {
        iter,
        status_class: status_class(&status),
        status,
        score: score.map(|x| format!("{x:.4}")).unwrap_or_else(|| DASH.into()),
        metric: cx.metric.to_string(),
        kind: s(rec.get("kind")),
        parent: rec.get("parent").and_then(Value::as_i64),
        trial: trial.map(|t| t.display().to_string()).unwrap_or_else(|| s(rec.get("trial_dir"))),
        winner,
        best,
        criteria_met: rec.get("criteria_met").and_then(Value::as_bool).unwrap_or(false),
        verdict,
        error: clip(&s(rec.get("error"))),
        duration: num(rec.get("duration_sec")).map(seconds).unwrap_or_default(),
        tokens: Tokens { prompt: u("prompt_tokens"), completion: u("completion_tokens"), total: u("total_tokens") },
        llm_calls: calls,
        llm_time: num(usage.and_then(|u| u.get("total_latency_sec"))).map(seconds).unwrap_or_default(),
        cost: cost.filter(|c| *c > 0.0).map(|c| format!("${c:.4}")).unwrap_or_default(),
        ..Default::default()
    };
    match trial {
        Some(t) => trial_files(t, parent_trial, &mut card, cx),
        None if !card.trial.is_empty() => card.notes.push(format!("the trial folder {} is gone", card.trial)),
        None => {}
    }
    card
}

/// The card of a node that is still running (or was running when the run was killed).
pub fn in_flight(entry: &Value, iter: i64, live: bool, cx: &Ctx) -> Card {
    let status = if live { "RUNNING" } else { "CUT SHORT" };
    Card {
        iter,
        status: status.into(),
        status_class: if live { "run" } else { "muted" },
        score: DASH.into(),
        metric: cx.metric.to_string(),
        kind: s(entry.get("kind")),
        parent: entry.get("parent").and_then(Value::as_i64),
        in_flight: true,
        started_at: s(entry.get("started_at")),
        ..Default::default()
    }
}

fn read_text(p: &Path, max: u64) -> Option<String> {
    crate::files::read_regular(p, max).ok().map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn trial_files(trial: &Path, parent_trial: Option<&Path>, card: &mut Card, cx: &Ctx) {
    for (label, file) in [
        ("notebook", "notebook_prompt.ipynb"),
        ("executed notebook", "notebook_prompt_exec.ipynb"),
        ("report", "experiment_report.md"),
        ("metrics", "metrics.json"),
        ("event log", "events.jsonl"),
    ] {
        let p = trial.join(file);
        if p.is_file() {
            card.links.push(Link { label, href: href(&p, cx.base) });
        }
    }
    if let Some(t) = read_text(&trial.join("research_strategy.md"), MAX_READ) {
        card.strategy = clip_long(t.trim());
        card.strategy_html = super::md::to_html(&card.strategy);
    }
    if let Some(report) = read_text(&trial.join("experiment_report.md"), MAX_READ) {
        card.narrative = clip_long(&narrative(&report));
        card.narrative_html = super::md::to_html(&card.narrative);
    }
    results(trial, card, cx);
    // The per-fold plot only (the per-iteration one is the page's own chart), shown from its file
    // beside the trial: embedding every node's plot made a 200-node page tens of megabytes.
    let svg = trial.join("fold_scores.svg");
    if svg.is_file() {
        card.plots.push(Plot { title: format!("{} per fold", cx.metric), uri: href(&svg, cx.base) });
    }
    let mut cells: BTreeMap<i64, Cell> = BTreeMap::new();
    match crate::files::read_regular(&trial.join("events.jsonl"), MAX_READ) {
        Ok(bytes) => {
            let mut bad = 0;
            // Lossy per line: a stray invalid byte costs its character, never the page.
            for line in String::from_utf8_lossy(&bytes).lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<Value>(line) {
                    Ok(ev) => event(&ev, &mut cells, card),
                    Err(_) => bad += 1,
                }
            }
            if bad > 0 {
                card.notes.push(format!("{bad} unreadable line(s) in events.jsonl were skipped"));
            }
        }
        Err(e) => card.notes.push(format!("no event log: {e}")),
    }
    let nb = notebook(trial);
    for (i, c) in code_cells(nb.as_ref()) {
        let cell = cells.entry(i).or_insert_with(|| Cell {
            index: i,
            status: "not run".into(),
            status_class: "muted",
            ..Default::default()
        });
        let sub = c.get("metadata").and_then(|m| m.get("subtask"));
        cell.name = s(sub.and_then(|x| x.get("name")));
        if cell.id.is_empty() {
            cell.id = s(sub.and_then(|x| x.get("id")));
        }
        cell.code = clip(&text_of(c.get("source")));
        cell.output = clip(&outputs(c.get("outputs")));
    }
    for c in cells.values_mut() {
        if c.runs > 0 {
            c.duration = seconds(c.total_secs);
            if c.runs > 1 {
                c.run_times = c.times.iter().map(|t| seconds(*t)).collect::<Vec<_>>().join(" + ");
            }
        }
    }
    card.cells = cells.into_values().collect();
    if let (Some(p), Some(pt)) = (card.parent, parent_trial) {
        card.code_diff = code_diff(p, notebook(pt).as_ref(), nb.as_ref());
    }
}

fn clip_long(text: &str) -> String {
    match text.char_indices().nth(LONG_CLIP) {
        Some((i, _)) => format!("{}\n… ({} more characters)", &text[..i], text[i..].chars().count()),
        None => text.to_string(),
    }
}

/// The LLM's narrative: the report's "## Narrative" section, without the sections the pipeline appends
/// after it (LLM use, iterations).
fn narrative(report: &str) -> String {
    let Some(at) = report.find("\n## Narrative\n") else { return String::new() };
    let mut body = &report[at + "\n## Narrative\n".len()..];
    for tail in ["\n## LLM use\n", "\n## Iterations\n"] {
        if let Some(end) = body.find(tail) {
            body = &body[..end];
        }
    }
    body.trim().to_string()
}

/// The executed notebook, else the generated one.
fn notebook(trial: &Path) -> Option<Value> {
    ["notebook_prompt_exec.ipynb", "notebook_prompt.ipynb"]
        .iter()
        .map(|f| trial.join(f))
        .find(|p| p.is_file())
        .and_then(|p| crate::files::read_regular(&p, MAX_READ).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// The code cells of a notebook with their 0-based position among all its cells (the events' cell_index).
fn code_cells(nb: Option<&Value>) -> Vec<(i64, &Value)> {
    nb.and_then(|d| d.get("cells"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, c)| c.get("cell_type").and_then(Value::as_str) == Some("code"))
        .map(|(i, c)| (i as i64, c))
        .collect()
}

/// A notebook's code as one text, each cell under a header line naming it.
fn code_text(nb: Option<&Value>) -> String {
    let mut out = String::new();
    for (i, c) in code_cells(nb) {
        let sub = c.get("metadata").and_then(|m| m.get("subtask"));
        let (id, name) = (s(sub.and_then(|x| x.get("id"))), s(sub.and_then(|x| x.get("name"))));
        out.push_str(&format!("# ── cell {i}: {id} {name}\n"));
        let src = text_of(c.get("source"));
        out.push_str(&src);
        if !src.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// The child's code against its parent's, as a unified diff (3 lines of context).
fn code_diff(parent: i64, parent_nb: Option<&Value>, nb: Option<&Value>) -> Option<CodeDiff> {
    let (a, b) = (code_text(Some(parent_nb?)), code_text(Some(nb?)));
    let d = similar::TextDiff::from_lines(&a, &b);
    let mut cd = CodeDiff { parent, added: 0, removed: 0, lines: Vec::new(), truncated: false };
    for group in d.grouped_ops(3) {
        let (first, last) = (group.first()?, group.last()?);
        let (o, n) = (first.old_range().start, first.new_range().start);
        let (oe, ne) = (last.old_range().end, last.new_range().end);
        cd.lines.push(DiffLine { tag: "hunk", text: format!("@@ -{},{} +{},{} @@", o + 1, oe - o, n + 1, ne - n) });
        for op in &group {
            for c in d.iter_changes(op) {
                let tag = match c.tag() {
                    similar::ChangeTag::Delete => {
                        cd.removed += 1;
                        "del"
                    }
                    similar::ChangeTag::Insert => {
                        cd.added += 1;
                        "ins"
                    }
                    similar::ChangeTag::Equal => "eq",
                };
                if cd.lines.len() < MAX_DIFF_LINES {
                    cd.lines.push(DiffLine { tag, text: c.value().trim_end_matches('\n').to_string() });
                } else {
                    cd.truncated = true;
                }
            }
        }
    }
    Some(cd)
}

/// The computed tables, from metrics.json: every metric per model, and the primary metric's statistics
/// against the baseline (the loop's direction; the caller's baseline policy, else report_policy.lua's
/// default rule).
fn results(trial: &Path, card: &mut Card, cx: &Ctx) {
    let p = trial.join("metrics.json");
    let Some(text) = read_text(&p, crate::report::metrics::MAX_FILE_BYTES) else {
        card.results_missing = "the notebook wrote no metrics.json".into();
        return;
    };
    let m = match crate::pyjson::parse(&text)
        .map_err(|e| e.to_string())
        .and_then(|d| crate::report::metrics::normalize(&d))
    {
        Ok(m) => m,
        Err(e) => {
            card.results_missing = format!("metrics.json cannot be read: {e}");
            return;
        }
    };
    let basis = Basis {
        direction: cx.direction,
        direction_source: "the loop".into(),
        baseline: cx
            .baseline
            .and_then(|f| (f.0)(&m.models.iter().map(|x| x.name.clone()).collect::<Vec<_>>()))
            .filter(|b| m.models.iter().any(|x| &x.name == b))
            .or_else(|| default_baseline(&m))
            .unwrap_or_default(),
    };
    let cmp = stats::compare(&m, cx.metric, &basis);
    // the primary metric first, then the others in the report's order
    let mut names = display_order(&m.metric_names());
    if let Some(at) = cmp.as_ref().ok().and_then(|c| names.iter().position(|n| *n == c.metric)) {
        let primary = names.remove(at);
        names.insert(0, primary);
    }
    let best = cmp.as_ref().ok().and_then(|c| c.best.clone()).or_else(|| m.winner.clone()).unwrap_or_default();
    let mut r = Results {
        metric: cmp.as_ref().map(|c| c.metric.clone()).unwrap_or_else(|_| cx.metric.to_string()),
        direction: cx.direction.as_str(),
        baseline: basis.baseline.clone(),
        winner: best.clone(),
        folds: match m.folds.len() {
            0 => "none (single values)".into(),
            n => format!("{n} ({} … {})", m.folds[0], m.folds[n - 1]),
        },
        columns: names.clone(),
        rows: Vec::new(),
        stats: Vec::new(),
        notes: m.warnings.clone(),
    };
    for model in &m.models {
        let values = names
            .iter()
            .map(|n| {
                let sm = summarize(model, n);
                sm.mean.map(|x| mean_sd(x, sm.sd)).unwrap_or_else(|| DASH.into())
            })
            .collect();
        r.rows.push(Row {
            model: model.name.clone(),
            winner: model.name == best,
            baseline: model.name == basis.baseline,
            values,
        });
    }
    match &cmp {
        Ok(c) => {
            for e in &c.entries {
                let f = |x: Option<f64>| x.filter(|v| v.is_finite()).map(fnum).unwrap_or_else(|| DASH.into());
                let p = |x: Option<f64>| x.filter(|v| v.is_finite()).map(pval).unwrap_or_else(|| DASH.into());
                let t = e.ttest.as_ref();
                let why = [e.no_test_reason.clone(), e.wilcoxon_reason.clone(), e.delta_reason.clone()]
                    .into_iter()
                    .flatten()
                    .chain(e.notes.iter().cloned())
                    .collect::<Vec<_>>()
                    .join("; ");
                r.stats.push(StatRow {
                    model: e.name.clone(),
                    baseline: e.is_baseline,
                    winner: e.name == best,
                    mean: f(e.summary.mean),
                    sd: f(e.summary.sd),
                    n: e.summary.n,
                    delta: if e.is_baseline {
                        "baseline".into()
                    } else {
                        e.delta_pct
                            .filter(|d| d.is_finite())
                            .map(|d| format!("{d:+.2}%"))
                            .unwrap_or_else(|| DASH.into())
                    },
                    p_t: p(t.map(|t| t.p_value)),
                    significant: e.p_value().is_some_and(|x| x < ALPHA),
                    p_wilcoxon: p(e.wilcoxon_p),
                    p_holm: p(e.holm_p),
                    effect: f(t.map(|t| t.cohens_dz)),
                    ci: t
                        .filter(|t| t.ci95.0.is_finite() && t.ci95.1.is_finite())
                        .map(|t| format!("[{}, {}]", fnum(t.ci95.0), fnum(t.ci95.1)))
                        .unwrap_or_else(|| DASH.into()),
                    why_no_test: if e.is_baseline { String::new() } else { why },
                });
            }
        }
        Err(e) => r.notes.push(format!("no statistics: {e}")),
    }
    card.results = Some(r);
}

/// stdlib/report_policy.lua's default baseline: the first model whose name contains "baseline",
/// "linear" or "ridge", else "base", else the first model.
fn default_baseline(m: &Metrics) -> Option<String> {
    for group in [&["baseline", "linear", "ridge"][..], &["base"][..]] {
        for model in &m.models {
            let l = model.name.to_lowercase();
            if group.iter().any(|w| l.contains(w)) {
                return Some(model.name.clone());
            }
        }
    }
    m.models.first().map(|x| x.name.clone())
}

fn event(ev: &Value, cells: &mut BTreeMap<i64, Cell>, card: &mut Card) {
    let kind = ev.get("kind").and_then(Value::as_str).unwrap_or("");
    let index = ev.get("cell_index").and_then(Value::as_i64);
    match (kind, index) {
        ("cell", Some(i)) => {
            let c = cells.entry(i).or_insert_with(|| Cell { index: i, ..Default::default() });
            c.id = s(ev.get("id"));
            c.status = s(ev.get("status"));
            c.status_class = status_class(&c.status);
            c.runs += 1;
            let d = num(ev.get("duration")).filter(|d| d.is_finite() && *d >= 0.0).unwrap_or(0.0);
            c.total_secs += d;
            c.times.push(d);
        }
        ("fix", Some(i)) => {
            let c = cells.entry(i).or_insert_with(|| Cell { index: i, ..Default::default() });
            let how = s(ev.get("how"));
            let applied = ev.get("applied").and_then(Value::as_bool).unwrap_or(false);
            let (mut by, rule, reason) = fix_origin(&how, applied);
            // the proposer as the fix policy says it, when the event records it
            match ev.get("by").and_then(Value::as_str) {
                Some("llm") | Some("LLM") => by = "LLM",
                Some("heuristic") => by = "heuristic",
                Some("none") | Some("") => by = "no one",
                _ => {}
            }
            let before = s(ev.get("before"));
            let after = s(ev.get("after"));
            let diff = if after.is_empty() { Vec::new() } else { line_diff(&before, &after) };
            c.fixes.push(Fix {
                round: ev.get("round").and_then(Value::as_i64).unwrap_or(0),
                applied,
                by: by.into(),
                rule: clip(&rule),
                reason: clip(&reason),
                error: clip(&s(ev.get("error"))),
                diff,
            });
        }
        ("kernel_host", _) => {
            let (host, gw) = (s(ev.get("host")), s(ev.get("gateway")));
            card.kernel_host = match (host.is_empty(), gw.is_empty()) {
                (false, false) => format!("{host} ({gw})"),
                (false, true) => host,
                (true, _) => gw,
            };
        }
        ("log", _) => {
            let level = s(ev.get("level"));
            if level == "warn" || level == "error" {
                card.messages.push(Message { level, text: clip(&s(ev.get("message"))) });
            }
        }
        _ => {}
    }
}

/// Who proposed a fix (unless the event's `by` says), from the fix policy's `how` (stdlib/autofix.lua): "llm" (an LLM edit),
/// "heuristic: <rule>", or why there is no edit, which names the LLM when it was asked and failed.
/// Returns (by, the heuristic's rule, why nothing was applied).
fn fix_origin(how: &str, applied: bool) -> (&'static str, String, String) {
    let reason = if applied { String::new() } else { how.to_string() };
    if how == "llm" {
        ("LLM", String::new(), reason)
    } else if let Some(rule) = how.strip_prefix("heuristic") {
        ("heuristic", rule.trim_start_matches([':', ' ']).to_string(), reason)
    } else if how.contains("autofix is off") || how.is_empty() {
        ("no one", String::new(), reason)
    } else if how.contains("LLM") {
        ("LLM", String::new(), reason)
    } else {
        ("the fix policy", String::new(), reason)
    }
}

/// A line diff of a fix (similar's Myers diff), as (tag, line) pairs.
fn line_diff(before: &str, after: &str) -> Vec<DiffLine> {
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
