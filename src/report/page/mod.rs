//! The run page: one HTML file per loop, beside its summary and named after it (`run_<stamp>_<pid>.html`
//! for `phase2_loop_summary_<stamp>_<pid>.json`), plus `run.html`, a copy of the newest run's
//! page (the run whose summary was written last). It is built from the summary and each trial's own files (see `card`); it links to the
//! trials' files (notebooks, plots) by relative paths. The page is a view, never the source of truth:
//! nothing here writes anything but the pages.
//!
//! The markup is a minijinja template (`scripts/run.html.j2`, shadowable like every bundled script) and
//! every value reaches it through minijinja's HTML auto-escaping: nothing here escapes by hand, and
//! nothing read from a trial (code, outputs, errors, model replies) can become markup. The page must
//! never load anything from the network.
//!
//! Cost: a trial's card is rendered once (the template's `card` macro) and kept in the process, keyed by
//! the card's inputs (its record, the page-level facts it shows, and the size and mtime of every file it
//! reads, its parent's notebooks included); a rebuild re-renders only the cards whose inputs changed.

mod card;
mod md;
mod tree;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;
use serde_json::Value;

use crate::report::stats::Direction;

/// Why a page could not be built; `kind` is the Lua-facing `err.kind`.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("{0}")]
    NotSummary(String),
    #[error("{0}")]
    Io(String),
    #[error("the run page template: {0}")]
    Template(minijinja::Error),
    /// A bug in the page's code (a panic, caught: a page never ends a run).
    #[error("the run page could not be built (a bug in cellsci, please report it): {0}")]
    Internal(String),
}

impl PageError {
    pub fn kind(&self) -> &'static str {
        match self {
            PageError::NotSummary(_) => "not_summary",
            PageError::Io(_) => "io",
            PageError::Template(_) => "template",
            PageError::Internal(_) => "internal",
        }
    }
}

/// The largest summary read.
const MAX_READ: u64 = 64 << 20;
/// The most characters shown of one cell's code, output or a message.
const CLIP: usize = 4000;
/// The name of the newest run's page in a save root.
pub const LATEST: &str = "run.html";

/// Which model of a trial's metrics is the baseline, given the model names in file order (the caller's
/// policy: `report.page` asks stdlib/report_policy.lua's `baseline`). None, or a name that is not a
/// model: the policy's default (the first model named baseline/linear/ridge, else base, else the first).
#[derive(Clone)]
pub struct BaselineFn(pub std::rc::Rc<ChooseBaseline>);

/// Model names in file order → the baseline's name.
pub type ChooseBaseline = dyn Fn(&[String]) -> Option<String>;

impl std::fmt::Debug for BaselineFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BaselineFn")
    }
}

/// How to build a page.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Where to write it (default: beside the summary, named after it, and `run.html` when this run
    /// is the newest in its folder). With a path, only that file is written.
    pub path: Option<PathBuf>,
    /// Whether the page reloads itself (default: the summary has no `finished_at`).
    pub live: Option<bool>,
    /// Seconds between reloads of a live page.
    pub refresh_secs: u32,
    /// The baseline policy (default: report_policy.lua's default rule, in Rust). A card is cached by
    /// its files, not by the policy's answer: an edited policy shows on the cards whose trials change.
    pub baseline: Option<BaselineFn>,
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
    tokens: card::Tokens,
    llm_calls: u64,
    /// What the run's priced LLM calls cost ("" when nothing was priced).
    cost: String,
    strategy: String,
    best_score: String,
    best_iter: Option<i64>,
    archived_iter: Option<i64>,
    summary_file: String,
    /// Nodes per status, in a fixed order: (status, class, count).
    counts: Vec<(String, &'static str, usize)>,
    in_flight: Vec<i64>,
    nodes: Vec<NodeRef>,
    diagram: tree::Diagram,
    chart: tree::Chart,
}

/// A node as the page's own lists show it (the card is rendered separately).
#[derive(Serialize)]
struct NodeRef {
    iter: i64,
    status: String,
    status_class: &'static str,
    score: String,
    kind: String,
    parent: Option<i64>,
    winner: bool,
    met: bool,
    duration: String,
    tokens: u64,
    cost: String,
}

/// The loop's "no score" placeholder (stdlib/loop.lua, M.NO_SCORE).
const NO_SCORE: f64 = -999.0;

/// Cards rendered before, by summary and then trial (or in-flight node): the key of their inputs and
/// the HTML.
/// A card the page shows: its cache name, the key of its inputs, how to build it.
type Wanted<'a> = (String, u64, Box<dyn Fn() -> card::Card + 'a>);
type CardCache = HashMap<PathBuf, HashMap<String, (u64, String)>>;
static CARDS: Mutex<Option<CardCache>> = Mutex::new(None);

/// Build the page for the loop summary at `summary`, with `template` (the text of run.html.j2), and
/// write it atomically (and `run.html`, see `Options::path`). Returns the page's path.
pub fn build(summary: &Path, template: &str, opts: &Options) -> Result<PathBuf, PageError> {
    let doc = read_summary(summary)?;
    let summary_abs = crate::files::absolute_clean(summary);
    let out = match &opts.path {
        Some(p) => crate::files::absolute_clean(p),
        None => summary_abs.with_file_name(page_name(&summary_abs)),
    };
    let html = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        render(&summary_abs, &out, &doc, template, opts, false)
    }))
    .map_err(|e| {
        let why = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
        PageError::Internal(why.unwrap_or_else(|| "a panic".into()))
    })??;
    let write = |p: &Path| {
        crate::files::write_atomic(p, html.as_bytes())
            .map_err(|e| PageError::Io(format!("cannot write {}: {e}", p.display())))
    };
    write(&out)?;
    if opts.path.is_none() && newest_in_folder(&summary_abs) {
        write(&out.with_file_name(LATEST))?;
    }
    // The page as the caller named it: relative when the summary was given relative.
    Ok(match &opts.path {
        Some(p) => p.clone(),
        None => summary.with_file_name(page_name(summary)),
    })
}

/// The page's file name for a summary: `phase2_loop_summary_<stamp>_<pid>.json` → `run_<stamp>_<pid>.html`
/// (not `phase2_loop_summary_*`, which tools glob for summaries), any other `<name>.json` → `<name>.html`.
pub fn page_name(summary: &Path) -> String {
    let stem = summary.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "summary".into());
    match stem.strip_prefix("phase2_loop_summary_") {
        Some(rest) if !rest.is_empty() => format!("run_{rest}.html"),
        _ => format!("{stem}.html"),
    }
}

/// Whether no other loop summary in the summary's folder was written after it (its page is `run.html`).
fn newest_in_folder(summary: &Path) -> bool {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(mine) = mtime(summary) else { return true };
    let Some(dir) = summary.parent() else { return true };
    let Ok(rd) = std::fs::read_dir(dir) else { return true };
    !rd.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.starts_with("phase2_loop_summary_")
            && name.ends_with(".json")
            && e.path() != summary
            && mtime(&e.path()).is_some_and(|t| t > mine)
    })
}

/// Read a loop summary; a file that is not one is `NotSummary`. `iterations` may be a list (what the
/// loop writes) or an object (what early versions wrote at the start: `{}`).
pub fn read_summary(summary: &Path) -> Result<Value, PageError> {
    let bytes = crate::files::read_regular(summary, MAX_READ)
        .map_err(|e| PageError::Io(format!("cannot read {}: {e}", summary.display())))?;
    let not = |why: &str| PageError::NotSummary(format!("{}: not a loop summary ({why})", summary.display()));
    let doc: Value = serde_json::from_slice(&bytes).map_err(|_| not("not JSON"))?;
    if !doc.get("iterations").is_some_and(|v| v.is_array() || v.is_object()) {
        return Err(not("no \"iterations\" list"));
    }
    if !doc.get("primary_metric").is_some_and(Value::is_string) {
        return Err(not("no \"primary_metric\""));
    }
    Ok(doc)
}

/// The iteration records, whatever the container: a list, or an object of records (in `iter` order).
fn records(doc: &Value) -> Vec<Value> {
    match doc.get("iterations") {
        Some(Value::Array(a)) => a.iter().filter(|r| r.is_object()).cloned().collect(),
        Some(Value::Object(o)) => {
            let mut v: Vec<Value> = o.values().filter(|r| r.is_object()).cloned().collect();
            v.sort_by_key(|r| r.get("iter").and_then(Value::as_i64).unwrap_or(i64::MAX));
            v
        }
        _ => Vec::new(),
    }
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
        "no_metric" | "stopped" | "timeout" => "warn",
        "running" => "run",
        "interrupted" | "cancelled" | "not run" => "muted",
        _ => "bad",
    }
}

fn seconds(v: f64) -> String {
    if v >= 3600.0 {
        format!("{}h {:02}m", (v / 3600.0) as u64, ((v % 3600.0) / 60.0) as u64)
    } else if v >= 60.0 {
        format!("{}m {:02}s", (v / 60.0) as u64, (v % 60.0) as u64)
    } else if v >= 10.0 {
        format!("{v:.1}s")
    } else if v >= 1.0 {
        format!("{v:.2}s")
    } else {
        format!("{:.0} ms", v * 1000.0)
    }
}

/// A trial folder as recorded, found on disk: as written (absolute, or relative to the current
/// folder), else under the summary's folder (`prompt/<name>`, the save root's layout), for a summary
/// viewed from another folder or a save root moved as a whole.
fn locate(recorded: &str, summary_dir: &Path) -> Option<PathBuf> {
    if recorded.is_empty() {
        return None;
    }
    let p = Path::new(recorded);
    if p.is_dir() {
        return Some(crate::files::absolute_clean(p));
    }
    let name = p.file_name()?;
    [summary_dir.join("prompt").join(name), summary_dir.join(name)].into_iter().find(|c| c.is_dir())
}

/// The page's HTML; `strict`: an undefined template value is an error (the bundled template's tests).
fn render(
    summary: &Path,
    out: &Path,
    doc: &Value,
    template: &str,
    opts: &Options,
    strict: bool,
) -> Result<String, PageError> {
    let finished = doc.get("finished_at").is_some_and(|v| !v.is_null());
    let live = opts.live.unwrap_or(!finished);
    let met = doc.get("criteria_met").and_then(Value::as_bool).unwrap_or(false);
    let stopped = s(doc.get("stopped"));
    let (status, run_class) = if !finished && live {
        ("running".to_string(), "run")
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
        Some(x) if x != NO_SCORE && x.is_finite() => format!("{x:.4}"),
        _ => "—".to_string(),
    };
    let base = out.parent().unwrap_or(Path::new("/")).to_path_buf();
    let summary_dir = summary.parent().unwrap_or(Path::new("/")).to_path_buf();
    let metric = s(doc.get("primary_metric"));
    let direction = Direction::parse(&s(doc.get("direction"))).unwrap_or(Direction::Higher);
    let archived = s(doc.get("archived_dir"));
    let archive_source = s(doc.get("archive_source"));
    let best_trial = s(doc.get("best_trial_dir"));
    let same = |a: &str, b: &str| {
        !a.is_empty() && !b.is_empty() && (a == b || Path::new(a).file_name() == Path::new(b).file_name())
    };
    let recs = records(doc);

    // every node's folder first: a card needs its parent's
    let mut trials: BTreeMap<i64, Option<PathBuf>> = BTreeMap::new();
    let mut iters = Vec::with_capacity(recs.len());
    for (pos, r) in recs.iter().enumerate() {
        let iter = r.get("iter").and_then(Value::as_i64).unwrap_or(pos as i64 + 1);
        let found =
            locate(&s(r.get("archived_as")), &summary_dir).or_else(|| locate(&s(r.get("trial_dir")), &summary_dir));
        trials.insert(iter, found);
        iters.push(iter);
    }
    let cx = card::Ctx { metric: &metric, direction, base: &base, baseline: opts.baseline.as_ref() };
    let cx = &cx;

    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::Html);
    if strict {
        env.set_undefined_behavior(UndefinedBehavior::Strict);
    }
    env.add_template("run.html.j2", template).map_err(PageError::Template)?;
    let tmpl = env.get_template("run.html.j2").map_err(PageError::Template)?;
    let mut tkey = std::collections::hash_map::DefaultHasher::new();
    template.hash(&mut tkey);
    base.hash(&mut tkey);
    metric.hash(&mut tkey);
    direction.as_str().hash(&mut tkey);
    opts.baseline.is_some().hash(&mut tkey);
    let tkey = tkey.finish();

    let mut points = Vec::new();
    let mut node_refs = Vec::new();
    // (cache name, key, how to build the card)
    let mut wanted: Vec<Wanted> = Vec::new();
    let (mut best_iter, mut archived_iter) = (None, None);
    for (r, &iter) in recs.iter().zip(&iters) {
        let recorded = s(r.get("trial_dir"));
        let archived_as = s(r.get("archived_as"));
        let winner = !archived.is_empty()
            && (same(&archived_as, &archived) || same(&recorded, &archived) || same(&archive_source, &recorded));
        let best = same(&best_trial, &recorded) || same(&best_trial, &archived_as);
        if winner {
            archived_iter = Some(iter);
        }
        if best {
            best_iter = Some(iter);
        }
        let status = s(r.get("status"));
        let score = num(r.get("score")).filter(|x| *x != NO_SCORE && x.is_finite());
        let parent = r.get("parent").and_then(Value::as_i64);
        let trial = trials.get(&iter).cloned().flatten();
        let parent_trial = parent.and_then(|p| trials.get(&p).cloned().flatten());
        let met = r.get("criteria_met").and_then(Value::as_bool).unwrap_or(false);
        points.push(tree::Point {
            iter,
            parent,
            status_class: status_class(&status),
            status: status.clone(),
            kind: s(r.get("kind")),
            score,
            score_label: score.map(|x| format!("{x:.3}")).unwrap_or_default(),
            winner,
            met,
        });
        node_refs.push(NodeRef {
            iter,
            status_class: status_class(&status),
            status,
            score: score_fmt(score),
            kind: s(r.get("kind")),
            parent,
            winner,
            met,
            duration: num(r.get("duration_sec")).map(seconds).unwrap_or_default(),
            tokens: r.get("usage").and_then(|u| u.get("total_tokens")).and_then(Value::as_u64).unwrap_or(0),
            cost: num(r.get("cost_usd")).filter(|c| *c > 0.0).map(|c| format!("${c:.4}")).unwrap_or_default(),
        });
        let mut h = std::collections::hash_map::DefaultHasher::new();
        tkey.hash(&mut h);
        r.to_string().hash(&mut h);
        (iter, winner, best).hash(&mut h);
        fingerprint(trial.as_deref(), &mut h);
        fingerprint(parent_trial.as_deref(), &mut h);
        let name = format!("{iter} {}", trial.as_ref().map(|t| t.display().to_string()).unwrap_or(recorded));
        wanted.push((
            name,
            h.finish(),
            Box::new(move || card::recorded(r, iter, trial.as_deref(), parent_trial.as_deref(), winner, best, cx)),
        ));
    }
    // nodes in flight (the scheduler's `in_flight`), unless recorded meanwhile
    let mut in_flight = Vec::new();
    for e in doc.get("in_flight").and_then(Value::as_array).into_iter().flatten() {
        let Some(iter) = e.get("iter").and_then(Value::as_i64) else { continue };
        if trials.contains_key(&iter) {
            continue;
        }
        in_flight.push(iter);
        let c = card::in_flight(e, iter, live, cx);
        points.push(tree::Point {
            iter,
            parent: c.parent,
            status: c.status.clone(),
            status_class: c.status_class,
            kind: c.kind.clone(),
            score: None,
            score_label: if live { "running".into() } else { String::new() },
            winner: false,
            met: false,
        });
        node_refs.push(NodeRef {
            iter,
            status: c.status.clone(),
            status_class: c.status_class,
            score: "—".into(),
            kind: c.kind.clone(),
            parent: c.parent,
            winner: false,
            met: false,
            duration: String::new(),
            tokens: 0,
            cost: String::new(),
        });
        let mut h = std::collections::hash_map::DefaultHasher::new();
        tkey.hash(&mut h);
        e.to_string().hash(&mut h);
        live.hash(&mut h);
        wanted.push((format!("in flight {iter}"), h.finish(), Box::new(move || card::in_flight(e, iter, live, cx))));
    }

    let mut order: Vec<&str> = vec!["VALID", "NO_METRIC", "CRASH", "INTERRUPTED", "CANCELLED", "RUNNING", "CUT SHORT"];
    let mut counts: Vec<(String, &'static str, usize)> = Vec::new();
    for n in &node_refs {
        if !order.contains(&n.status.as_str()) {
            order.push(n.status.as_str());
        }
    }
    for st in order {
        let k = node_refs.iter().filter(|n| n.status == st).count();
        if k > 0 {
            counts.push((st.to_string(), status_class(st), k));
        }
    }

    let u = |k: &str| doc.get(k).and_then(Value::as_u64).unwrap_or(0);
    let page = Page {
        title: format!("cellsci run — {}", s(doc.get("dataset"))),
        dataset: s(doc.get("dataset")),
        metric: metric.clone(),
        direction: direction.as_str().to_string(),
        threshold: num(doc.get("success_threshold")),
        status,
        status_class: run_class,
        live,
        refresh_secs: opts.refresh_secs.max(1),
        started_at: s(doc.get("started_at")),
        finished_at: s(doc.get("finished_at")),
        elapsed: num(doc.get("total_time_sec")).map(seconds).unwrap_or_default(),
        tokens: card::Tokens {
            prompt: u("prompt_tokens"),
            completion: u("completion_tokens"),
            total: u("total_tokens"),
        },
        llm_calls: u("llm_calls"),
        cost: num(doc.get("total_cost_usd")).filter(|c| *c > 0.0).map(|c| format!("${c:.4}")).unwrap_or_default(),
        strategy: s(doc.get("strategy")),
        best_score: score_fmt(num(doc.get("best_score"))),
        best_iter,
        archived_iter,
        summary_file: href(summary, &base),
        counts,
        in_flight,
        diagram: tree::diagram(&points),
        chart: tree::chart(&points, num(doc.get("success_threshold")), direction),
        nodes: node_refs,
    };

    // The cards: from the cache where their inputs are unchanged, else rendered by the `card` macro.
    let page_ctx = minijinja::Value::from_serialize(&page);
    let mut cards = Vec::with_capacity(wanted.len());
    let mut all = CARDS.lock().unwrap_or_else(|e| e.into_inner());
    let old = all.get_or_insert_with(HashMap::new).remove(summary).unwrap_or_default();
    let mut kept: HashMap<String, (u64, String)> = HashMap::with_capacity(wanted.len());
    let mut state = None;
    for (name, key, make) in &wanted {
        let html = match old.get(name) {
            Some((k, html)) if k == key => html.clone(),
            _ => {
                if state.is_none() {
                    let empty = minijinja::context! { cards => Vec::<minijinja::Value>::new(), ..page_ctx.clone() };
                    state = Some(tmpl.render_captured(empty).map_err(PageError::Template)?);
                }
                let st = state.as_ref().expect("set above").state();
                st.call_macro("card", &[minijinja::Value::from_serialize(make())]).map_err(PageError::Template)?
            }
        };
        cards.push(minijinja::Value::from_safe_string(html.clone()));
        kept.insert(name.clone(), (*key, html));
    }
    // only this build's cards stay (a renamed or vanished trial's old card goes)
    all.get_or_insert_with(HashMap::new).insert(summary.to_path_buf(), kept);
    drop(all);
    let ctx = minijinja::context! { cards => cards, ..page_ctx };
    tmpl.render(ctx).map_err(PageError::Template)
}

/// Size and modification time of every file a card reads, into `h`.
fn fingerprint(trial: Option<&Path>, h: &mut impl Hasher) {
    let Some(t) = trial else { return 0u8.hash(h) };
    t.hash(h);
    for f in card::FILES {
        match std::fs::metadata(t.join(f)) {
            Ok(m) => {
                m.len().hash(h);
                m.modified()
                    .ok()
                    .and_then(|x| x.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .hash(h);
            }
            Err(_) => 1u8.hash(h),
        }
    }
}

/// A link from the page's folder `base` (absolute) to `p`: relative, `..` where needed.
fn href(p: &Path, base: &Path) -> String {
    let p = crate::files::absolute_clean(p);
    let base = crate::files::absolute_clean(base);
    let pc: Vec<Component> = p.components().collect();
    let bc: Vec<Component> = base.components().collect();
    let common = pc.iter().zip(&bc).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); bc.len() - common];
    // each name percent-encoded where a URL would read it otherwise (a space, '#', '?', '%', ...)
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'%')
        .add(b'?')
        .add(b'<')
        .add(b'>')
        .add(b'`')
        .add(b'{')
        .add(b'}')
        .add(b'\\');
    parts.extend(
        pc[common..]
            .iter()
            .map(|c| percent_encoding::utf8_percent_encode(&c.as_os_str().to_string_lossy(), SEGMENT).to_string()),
    );
    if parts.is_empty() {
        return ".".into();
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_relative_to_the_pages_folder_from_any_current_folder() {
        assert_eq!(href(Path::new("/a/b/prompt/t/events.jsonl"), Path::new("/a/b")), "prompt/t/events.jsonl");
        assert_eq!(href(Path::new("/a/c/x.json"), Path::new("/a/b")), "../c/x.json");
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(href(Path::new("s.json"), &cwd), "s.json");
        assert!(!href(Path::new("s.json"), &cwd).starts_with('/'));
        assert_eq!(href(Path::new("/a/b/my run #2/x?.md"), Path::new("/a/b")), "my%20run%20%232/x%3F.md");
    }

    const TEMPLATE: &str = include_str!("../../../scripts/run.html.j2");

    fn put(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn strict(summary: &Path, doc: &Value, live: bool) -> String {
        let opts = Options { live: Some(live), refresh_secs: 5, ..Default::default() };
        let out = summary.with_file_name(page_name(summary));
        render(summary, &out, doc, TEMPLATE, &opts, true).unwrap_or_else(|e| panic!("{e}"))
    }

    fn notebook(cells: &[(&str, &str)]) -> String {
        let cells: Vec<Value> = cells
            .iter()
            .map(|(id, src)| {
                serde_json::json!({"cell_type": "code", "source": src, "outputs": [],
                "metadata": {"subtask": {"id": id, "name": format!("step {id}")}}})
            })
            .collect();
        serde_json::json!({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}).to_string()
    }

    /// Every branch of the bundled template, rendered with undefined values as errors: a summary whose
    /// `iterations` is `{}`, then one with every status, in-flight nodes (live and cut short), verdicts
    /// of both kinds, fixes by each proposer (applied or not), a diff against a parent, statistics, a
    /// trial whose folder is gone, and cost.
    #[test]
    fn every_branch_of_the_bundled_template_renders() {
        let d = tempfile::tempdir().unwrap();
        let summary = d.path().join("phase2_loop_summary_20260101_000000_1.json");
        let empty = serde_json::json!({"primary_metric": "PCC", "iterations": {}, "finished_at": null,
            "success_threshold": null});
        for live in [true, false] {
            let html = strict(&summary, &empty, live);
            assert!(html.contains("No iteration has finished yet.") && html.contains("No node has a score yet."));
            assert_eq!(html.contains("http-equiv=\"refresh\""), live);
        }
        let t1 = d.path().join("prompt/workspace_1");
        let t2 = d.path().join("prompt/workspace_2");
        put(&t1, "notebook_prompt_exec.ipynb", &notebook(&[("load", "x = 1\n"), ("fit", "fit(x)\n")]));
        put(&t2, "notebook_prompt_exec.ipynb", &notebook(&[("load", "x = 2\n"), ("fit", "fit(x)\n")]));
        put(&t2, "research_strategy.md", "# Research Strategy\nRidge first.");
        put(&t2, "experiment_report.md", "# r\n## Narrative\n\nThe model wins.\n\n## LLM use\n\n3 calls\n");
        put(&t2, "fold_scores.svg", "<svg xmlns='http://www.w3.org/2000/svg'/>");
        put(
            &t2,
            "metrics.json",
            r#"{"models": {"ridge_baseline": {"per_fold": {"0": {"PCC": 0.1}, "1": {"PCC": 0.2}, "2": {"PCC": 0.15}}},
            "better": {"per_fold": {"0": {"PCC": 0.5}, "1": {"PCC": 0.6}, "2": {"PCC": 0.58}}}}, "winner": "better"}"#,
        );
        put(&t1, "metrics.json", "{not json");
        let ev = |v: Value| v.to_string() + "\n";
        let events = [
            serde_json::json!({"kind": "cell", "cell_index": 0, "id": "load", "status": "error", "duration": 0.01}),
            serde_json::json!({"kind": "fix", "cell_index": 0, "round": 1, "applied": true, "how": "heuristic: missing import",
                "error": "NameError", "before": "x\n", "after": "import x\nx\n"}),
            serde_json::json!({"kind": "cell", "cell_index": 0, "id": "load", "status": "error", "duration": 2.5}),
            serde_json::json!({"kind": "fix", "cell_index": 0, "round": 2, "applied": false,
                "how": "the LLM returned the same source", "error": "NameError", "before": "x\n"}),
            serde_json::json!({"kind": "fix", "cell_index": 0, "round": 3, "applied": false,
                "how": "LLM autofix is off (exec.enable_llm_autofix)", "error": "NameError", "before": "x\n"}),
            serde_json::json!({"kind": "fix", "cell_index": 0, "round": 4, "applied": true, "how": "llm",
                "error": "NameError", "before": "x\n", "after": "y\n"}),
            serde_json::json!({"kind": "fix", "cell_index": 0, "round": 5, "applied": false, "by": "heuristic",
                "how": "no rule matched", "error": "NameError", "before": "x\n"}),
            serde_json::json!({"kind": "log", "level": "warn", "message": "careful"}),
            serde_json::json!({"kind": "log", "level": "error", "message": "broken"}),
        ];
        put(&t1, "events.jsonl", &(events.iter().cloned().map(ev).collect::<String>() + "{torn\n"));
        put(
            &t2,
            "events.jsonl",
            &ev(serde_json::json!({"kind": "cell", "cell_index": 1, "status": "ok", "duration": 0.2})),
        );
        let doc = serde_json::json!({
            "dataset": "D", "primary_metric": "PCC", "direction": "higher", "success_threshold": 0.5,
            "started_at": "2026-01-01T00:00:00", "finished_at": null, "total_cost_usd": 0.25, "strategy": "tree",
            "best_score": 0.56, "best_trial_dir": t2, "archived_dir": t2, "criteria_met": true, "total_time_sec": 3.0,
            "iterations": [
                {"iter": 1, "status": "CRASH", "score": -999.0, "trial_dir": t1, "kind": "draft", "error": "cell 0 broke",
                 "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11, "total_latency_sec": 0.5}},
                {"iter": 2, "status": "VALID", "score": 0.56, "trial_dir": t2, "kind": "debug", "parent": 1,
                 "criteria_met": true, "judgement": "PCC 0.56 > 0.5", "cost_usd": 0.25,
                 "verdict": {"met": true, "reason": "PCC 0.56 > 0.5", "criterion": "PCC > 0.5"}},
                {"iter": 3, "status": "VALID", "score": 0.3, "trial_dir": d.path().join("gone"), "parent": 2,
                 "kind": "improve", "criteria_met": false, "judgement": "PCC 0.3 < 0.5"},
                {"iter": 4, "status": "NO_METRIC", "score": -999.0, "trial_dir": "", "kind": "draft"},
                {"iter": 5, "status": "INTERRUPTED", "score": -999.0, "kind": "draft"},
                {"iter": 6, "status": "CANCELLED", "cancelled": true, "score": -999.0, "kind": "improve", "parent": 2},
            ],
            "in_flight": [{"iter": 7, "kind": "crossover", "parent": 2, "started_at": "2026-01-01T00:00:02"},
                          {"iter": 2, "kind": "debug", "parent": 1}],
        });
        for live in [true, false] {
            let html = strict(&summary, &doc, live);
            for want in [
                "proposed by heuristic (missing import): <span class=\"ok-text\">applied</span>",
                "proposed by LLM: <span class=\"bad-text\">not applied</span>: the LLM returned the same source",
                "proposed by no one: <span class=\"bad-text\">not applied</span>: LLM autofix is off",
                "proposed by LLM: <span class=\"ok-text\">applied</span>",
                "proposed by heuristic: <span class=\"bad-text\">not applied</span>: no rule matched",
                "Criterion met</b>: PCC 0.56 &gt; 0.5 <span class=\"muted\">(PCC &gt; 0.5)</span>",
                "Criterion not met</b>: PCC 0.3 &lt; 0.5",
                "Code changes against <a href=\"#iter-1\">iteration 1</a>: +1 −1 lines",
                "<summary>Research strategy</summary>",
                "The model wins.",
                "<table class=\"stats\">",
                "No computed results: metrics.json cannot be read",
                "the trial folder",
                "1 unreadable line(s)",
                "2 warnings and errors",
                "<b>step load</b>",
                "2.51s<br><span class=\"muted small\">10 ms + 2.50s</span>",
                "$0.2500",
                "data-status=\"CANCELLED\"",
                "id=\"chart\"",
                "class=\"badge ok\">archived<",
            ] {
                assert!(html.contains(want), "{want}: {html}");
            }
            assert_eq!(html.contains("data-status=\"RUNNING\""), live);
            assert_eq!(html.contains("data-status=\"CUT SHORT\""), !live);
            assert_eq!(html.matches("<section class=\"node").count(), 7, "recorded 2 is not also in flight");
            assert!(!html.contains("| Model |"));
        }
    }

    #[test]
    fn seconds_are_readable_below_a_second() {
        assert_eq!(seconds(0.0042), "4 ms");
        assert_eq!(seconds(1.234), "1.23s");
        assert_eq!(seconds(75.0), "1m 15s");
    }
}
