//! Reading the metrics.json a generated notebook writes, in every layout notebooks actually use, into one
//! normalised shape. Notebooks are written by an LLM, so the reader is forgiving about structure but never
//! invents a number: whatever it cannot read becomes a warning that says what and where.
//!
//! Layouts accepted (DESIGN §1): models under `models`, `methods` or `results`, or at the top level (or a
//! single model's metrics at the top level, or a list of `{name, ...}` objects); per-fold values under
//! `per_fold` / `folds` / `fold_metrics` / `cv` as a map `{FOLD: {METRIC: v}}`, a list of fold objects
//! (named by their `fold` key, else their position), or metric-major lists `{METRIC: [v, ...]}`; fold
//! values nested under `metrics` or `val` (also `validation`, `valid`, `test`); aggregates under
//! `aggregate` (also `agg`, `summary`, `overall`, `mean`, `metrics`), as numbers or `{mean, std}`
//! objects, else a `val`/`validation`/`test` group, else the model's own numeric members; models wrapped in
//! `metrics`/`results`; metric-major maps `{METRIC: {FOLD: v}}`; fold-major top levels
//! `{FOLD: {MODEL: {...}}}`; per-metric lists directly on a model; Python's
//! `NaN` / `Infinity` tokens; numeric strings. Nulls mean "not reported" and are left out.

use serde_json::{Map, Value};

use crate::pyjson;

/// The largest metrics.json read (64 MiB). Real ones are kilobytes; a notebook that writes gigabytes
/// (or a sparse file) there would otherwise cost that much memory before the parse even fails.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// One model's metric values, in the order they were first seen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    pub name: String,
    /// Fold name → metric values, folds sorted numerically.
    pub per_fold: Vec<(String, Vec<(String, f64)>)>,
    pub aggregate: Vec<(String, f64)>,
}

/// The normalised metrics of one trial.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// Models in the order the file lists them.
    pub models: Vec<Model>,
    /// The winner the notebook declared, when it names one of the models.
    pub winner: Option<String>,
    /// Every fold name seen, sorted numerically.
    pub folds: Vec<String>,
    /// What could not be read, and other things a reader should know.
    pub warnings: Vec<String>,
}

impl Model {
    /// The finite-or-not values of `metric` per fold, in fold order (folds without it are left out).
    pub fn fold_values(&self, metric: &str) -> Vec<(String, f64)> {
        self.per_fold
            .iter()
            .filter_map(|(f, ms)| ms.iter().find(|(m, _)| m == metric).map(|(_, v)| (f.clone(), *v)))
            .collect()
    }

    pub fn aggregate_value(&self, metric: &str) -> Option<f64> {
        self.aggregate.iter().find(|(m, _)| m == metric).map(|(_, v)| *v)
    }

    /// Every metric name of this model, aggregate first, in first-seen order.
    pub fn metric_names(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let all = self
            .aggregate
            .iter()
            .map(|(m, _)| m)
            .chain(self.per_fold.iter().flat_map(|(_, ms)| ms.iter().map(|(m, _)| m)));
        for m in all {
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
        out
    }
}

impl Metrics {
    pub fn model(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.name == name)
    }

    /// Every metric name present in any model, in first-seen order.
    pub fn metric_names(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for m in &self.models {
            for n in m.metric_names() {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
        }
        out
    }

    /// The name under which `metric` is stored: exact match first, else the one case-insensitive match.
    pub fn resolve_metric(&self, metric: &str) -> Option<String> {
        let names = self.metric_names();
        if names.iter().any(|n| n == metric) {
            return Some(metric.to_string());
        }
        let ci: Vec<&String> = names.iter().filter(|n| n.eq_ignore_ascii_case(metric)).collect();
        (ci.len() == 1).then(|| ci[0].clone())
    }
}

/// The standard metrics of the phase-2 seed, in the order reports list them.
pub const STANDARD_METRICS: &[&str] =
    &["MSE", "PCC", "R2", "DEG_RMSE_20", "DEG_RMSE_50", "DEG_PCC_20", "DEG_PCC_50", "MSE_DM", "PCC_DM", "R2_DM"];

/// Metric names ordered for display: the standard ones first (seed order, matched case-insensitively),
/// then the rest in first-seen order.
pub fn display_order(names: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for s in STANDARD_METRICS {
        if let Some(n) = names.iter().find(|n| n.eq_ignore_ascii_case(s)) {
            out.push(n.clone());
        }
    }
    for n in names {
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    out
}

/// Keys that hold model containers.
const CONTAINER_KEYS: &[&str] = &["models", "methods", "results"];
/// Keys that hold per-fold values.
const FOLD_KEYS: &[&str] = &["per_fold", "folds", "fold_metrics", "per_fold_metrics", "cv", "cv_folds"];
/// Keys that hold aggregate values (first present wins).
const AGG_KEYS: &[&str] = &["aggregate", "agg", "summary", "overall", "mean", "metrics"];
/// Nested groups inside a fold whose values are the fold's metrics (in priority order; `train` is never read).
const NESTED_FOLD_KEYS: &[&str] = &["metrics", "val", "validation", "valid", "test"];
/// Top-level members that are never models even when they hold numbers.
const NOT_MODELS: &[&str] = &[
    "winner",
    "best_model",
    "best",
    "primary_metric",
    "metric",
    "reason",
    "targets",
    "config",
    "params",
    "hyperparameters",
    "settings",
    "args",
    "meta",
    "metadata",
    "info",
    "data",
    "dataset",
    "paths",
    "env",
    "timing",
    "runtime",
    "status",
    "error",
    "notes",
    "description",
    "n_folds",
    "num_folds",
    "seed",
    "timestamp",
    "folds",
    "baseline",
    "statistics",
    "stats",
    "tests",
];
/// Members of NOT_MODELS that are also common model names: at the top level, one holding metric values
/// is a model (`{"baseline": {"per_fold": ...}, "mlp": {...}}`), anything else (a name, a note) is not.
const MODEL_OR_META: &[&str] = &["baseline"];

/// Numeric members of a fold object that describe the fold rather than measure it.
const NOT_METRICS: &[&str] = &[
    "fold",
    "fold_id",
    "fold_idx",
    "fold_index",
    "id",
    "index",
    "seed",
    "epoch",
    "epochs",
    "best_epoch",
    "n_train",
    "n_test",
    "n_val",
    "n_samples",
    "train_size",
    "test_size",
    "val_size",
];

/// Normalise a parsed metrics document. Err when it holds no model at all (the message says why).
pub fn normalize(doc: &Value) -> Result<Metrics, String> {
    let mut w = Vec::new();
    let mut models = Vec::new();
    let mut declared_winner: Option<String> = None;
    match doc {
        Value::Object(top) => {
            declared_winner = winner_name(top.get("winner").or_else(|| top.get("best_model")));
            let container = CONTAINER_KEYS.iter().find_map(|k| match top.get(*k) {
                Some(v @ (Value::Object(_) | Value::Array(_))) if !is_empty(v) => Some((*k, v)),
                _ => None,
            });
            if let Some((key, c)) = container {
                read_container(c, key, &mut models, &mut w);
            } else if looks_like_single_model(top) {
                let name = top.get("model").or_else(|| top.get("name")).and_then(|v| v.as_str()).unwrap_or("model");
                w.push(format!("the file holds one model's metrics at the top level; it is called '{name}'"));
                models.push(read_model(name, top, &mut w));
            } else if let Some(fm) = fold_major(top) {
                models = fm;
            } else {
                for (k, v) in top {
                    if CONTAINER_KEYS.contains(&k.as_str()) {
                        continue;
                    }
                    let meta = NOT_MODELS.iter().any(|n| n.eq_ignore_ascii_case(k));
                    let maybe_model = MODEL_OR_META.iter().any(|n| n.eq_ignore_ascii_case(k));
                    if meta && !maybe_model {
                        continue;
                    }
                    let mut mw = Vec::new();
                    let model = match v {
                        Value::Object(m) => read_model(k, m, &mut mw),
                        Value::Array(a) if a.iter().any(|x| x.is_object()) => {
                            let m = Map::from_iter([("per_fold".to_string(), v.clone())]);
                            read_model(k, &m, &mut mw)
                        }
                        _ => continue,
                    };
                    // `baseline` naming another model, or a note about it, is no model of its own
                    if meta && model.per_fold.is_empty() && model.aggregate.is_empty() {
                        continue;
                    }
                    w.append(&mut mw);
                    models.push(model);
                }
            }
        }
        Value::Array(_) => read_container(doc, "the top-level list", &mut models, &mut w),
        other => return Err(format!("metrics must be a JSON object, found {}", type_name(other))),
    }
    if models.is_empty() {
        let mut msg = "no models found (looked for 'models', 'methods', model objects at the top level)".to_string();
        if let Value::Object(top) = doc {
            let keys: Vec<&str> = top.keys().map(|k| k.as_str()).collect();
            msg.push_str(&format!(
                "; top-level keys: {}",
                if keys.is_empty() { "none".into() } else { keys.join(", ") }
            ));
            if let Some(r) = top.get("reason").or_else(|| top.get("error")).and_then(|v| v.as_str()) {
                msg.push_str(&format!("; the file says: {r}"));
            }
        }
        return Err(msg);
    }
    // duplicate names (a list layout): keep the first, say so
    let mut seen: Vec<String> = Vec::new();
    models.retain(|m| {
        if seen.contains(&m.name) {
            w.push(format!("model '{}' appears twice; the first one is kept", m.name));
            false
        } else {
            seen.push(m.name.clone());
            true
        }
    });
    for m in &models {
        if m.per_fold.is_empty() && m.aggregate.is_empty() {
            w.push(format!("model '{}' has no metric values", m.name));
        }
    }
    let winner = match declared_winner {
        Some(name) if models.iter().any(|m| m.name == name) => Some(name),
        Some(name) => {
            w.push(format!("the declared winner '{name}' is not one of the models"));
            None
        }
        None => None,
    };
    let mut folds: Vec<String> = Vec::new();
    for m in &models {
        for (f, _) in &m.per_fold {
            if !folds.contains(f) {
                folds.push(f.clone());
            }
        }
    }
    sort_folds(&mut folds);
    Ok(Metrics { models, winner, folds, warnings: w })
}

/// `{FOLD: {MODEL: {METRIC: v}}}` at the top level: every non-meta key a fold name holding model objects.
fn fold_major(top: &Map<String, Value>) -> Option<Vec<Model>> {
    let entries: Vec<(&String, &Map<String, Value>)> = top
        .iter()
        .filter(|(k, _)| !NOT_MODELS.iter().any(|n| n.eq_ignore_ascii_case(k)))
        .map(|(k, v)| v.as_object().map(|o| (k, o)))
        .collect::<Option<Vec<_>>>()?;
    if entries.is_empty() || !entries.iter().all(|(k, o)| looks_like_fold(k) && o.values().all(|v| v.is_object())) {
        return None;
    }
    let mut models: Vec<Model> = Vec::new();
    let mut scratch = Vec::new();
    for (fold, by_model) in entries {
        for (name, v) in by_model {
            let vals = fold_metrics(name, fold, v.as_object().expect("checked"), &mut scratch);
            let i = match models.iter().position(|m| m.name == *name) {
                Some(i) => i,
                None => {
                    models.push(Model { name: name.clone(), ..Default::default() });
                    models.len() - 1
                }
            };
            let slot = fold_slot(&mut models[i].per_fold, fold);
            for (m, x) in vals {
                push_metric(slot, &m, x);
            }
        }
    }
    for m in &mut models {
        sort_fold_entries(&mut m.per_fold);
    }
    Some(models)
}

fn winner_name(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Object(m) => ["name", "model", "method"].iter().find_map(|k| m.get(*k)?.as_str().map(String::from)),
        _ => None,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn looks_like_single_model(top: &Map<String, Value>) -> bool {
    let has_parts =
        ["per_fold", "aggregate"].iter().any(|k| top.get(*k).is_some_and(|v| v.is_object() || v.is_array()));
    let all_numeric = !top.is_empty()
        && top
            .iter()
            .filter(|(k, _)| !NOT_MODELS.contains(&k.as_str()))
            .all(|(_, v)| number(v).is_some() || v.is_null())
        && top.values().any(|v| number(v).is_some());
    has_parts || all_numeric
}

fn read_container(c: &Value, key: &str, models: &mut Vec<Model>, w: &mut Vec<String>) {
    match c {
        Value::Object(m) => {
            for (name, v) in m {
                match v {
                    Value::Object(mm) => models.push(read_model(name, mm, w)),
                    Value::Array(a) if a.iter().any(|x| x.is_object()) => {
                        let mm = Map::from_iter([("per_fold".to_string(), v.clone())]);
                        models.push(read_model(name, &mm, w));
                    }
                    Value::Null => w.push(format!("model '{name}' is null and was skipped")),
                    other => {
                        w.push(format!("model '{name}' skipped: its value is {}, not an object", type_name(other)))
                    }
                }
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let Value::Object(mm) = v else {
                    w.push(format!("{key}[{i}] skipped: it is {}, not an object", type_name(v)));
                    continue;
                };
                let name = ["name", "model", "method", "model_name"]
                    .iter()
                    .find_map(|k| mm.get(*k).and_then(|v| v.as_str()).map(String::from))
                    .unwrap_or_else(|| {
                        w.push(format!("{key}[{i}] has no name; it is called 'model_{i}'"));
                        format!("model_{i}")
                    });
                models.push(read_model(&name, mm, w));
            }
        }
        _ => {}
    }
}

/// A number as a metric value: finite or not. Null, booleans and other strings are not numbers.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(_) => pyjson::as_f64(v),
        Value::String(s) => pyjson::non_finite(s).or_else(|| {
            let t = s.trim().to_ascii_lowercase();
            match t.as_str() {
                "nan" => Some(f64::NAN),
                "inf" | "infinity" | "+inf" => Some(f64::INFINITY),
                "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
                _ => t.parse::<f64>().ok().filter(|_| !t.is_empty()),
            }
        }),
        _ => None,
    }
}

/// A metric value that may be a `{mean, std}` summary object.
fn summary_number(v: &Value) -> Option<f64> {
    number(v).or_else(|| match v {
        Value::Object(m) => ["mean", "value", "avg"].iter().find_map(|k| m.get(*k).and_then(number)),
        _ => None,
    })
}

fn push_metric(list: &mut Vec<(String, f64)>, name: &str, v: f64) {
    if let Some(slot) = list.iter_mut().find(|(m, _)| m == name) {
        slot.1 = v;
    } else {
        list.push((name.to_string(), v));
    }
}

fn read_model(name: &str, m: &Map<String, Value>, w: &mut Vec<String>) -> Model {
    // a wrapper: {"metrics": {"per_fold": ..., "aggregate": ...}} or {"results": {...}}
    if !FOLD_KEYS.iter().any(|k| m.contains_key(*k)) && !m.contains_key("aggregate") {
        for wrap in ["metrics", "results", "scores"] {
            if let Some(Value::Object(inner)) = m.get(wrap) {
                if FOLD_KEYS.iter().chain(&["aggregate"]).any(|k| inner.contains_key(*k)) {
                    return read_model(name, inner, w);
                }
            }
        }
    }
    let mut model = Model { name: name.to_string(), ..Default::default() };
    let mut folds: Vec<(String, Vec<(String, f64)>)> = Vec::new();

    // per-fold values
    if let Some((key, fv)) =
        FOLD_KEYS.iter().find_map(|k| m.get(*k).filter(|v| !is_empty(v) && !v.is_null()).map(|v| (*k, v)))
    {
        read_folds(name, key, fv, &mut folds, w);
    }
    // per-metric fold maps directly on the model: {"MSE": {"fold_0": v, ...}, ...}
    let direct: Map<String, Value> = m
        .iter()
        .filter(|(k, v)| {
            !FOLD_KEYS.contains(&k.as_str())
                && !AGG_KEYS.contains(&k.as_str())
                && !NESTED_FOLD_KEYS.contains(&k.as_str())
                && v.is_object()
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !direct.is_empty() && is_metric_major(&direct) {
        read_folds(name, "the model", &Value::Object(direct), &mut folds, w);
    }
    // per-metric lists directly on the model: {"MSE": [..], ...}
    for (k, v) in m {
        if let Value::Array(a) = v {
            if FOLD_KEYS.contains(&k.as_str()) || a.is_empty() || !a.iter().all(|x| number(x).is_some() || x.is_null())
            {
                continue;
            }
            for (i, x) in a.iter().enumerate() {
                if let Some(x) = number(x) {
                    fold_slot(&mut folds, &i.to_string()).push((k.clone(), x));
                }
            }
        }
    }

    // aggregate values
    // aggregate keys, then (for models that report one split) val / validation / valid / test
    let agg_src = AGG_KEYS.iter().chain(&NESTED_FOLD_KEYS[1..]).find_map(|k| match m.get(*k) {
        Some(Value::Object(a)) if !a.is_empty() => Some(a),
        _ => None,
    });
    match agg_src {
        Some(a) => {
            for (k, v) in a {
                if let Some(x) = summary_number(v) {
                    push_metric(&mut model.aggregate, k, x);
                } else if !v.is_null() && !v.is_array() {
                    w.push(format!("model '{name}': aggregate '{k}' is {}, not a number; skipped", type_name(v)));
                }
            }
        }
        None => {
            for (k, v) in m {
                if NOT_METRICS.contains(&k.as_str()) {
                    continue;
                }
                if let Some(x) = number(v) {
                    push_metric(&mut model.aggregate, k, x);
                } else if let Value::Object(o) = v {
                    // {"MSE": {"mean": .., "std": ..}} directly on the model
                    if !FOLD_KEYS.contains(&k.as_str()) && o.contains_key("mean") {
                        if let Some(x) = summary_number(v) {
                            push_metric(&mut model.aggregate, k, x);
                        }
                    }
                }
            }
        }
    }
    sort_fold_entries(&mut folds);
    model.per_fold = folds.into_iter().filter(|(_, ms)| !ms.is_empty()).collect();
    model
}

fn fold_slot<'a>(folds: &'a mut Vec<(String, Vec<(String, f64)>)>, name: &str) -> &'a mut Vec<(String, f64)> {
    if let Some(i) = folds.iter().position(|(f, _)| f == name) {
        return &mut folds[i].1;
    }
    folds.push((name.to_string(), Vec::new()));
    &mut folds.last_mut().expect("just pushed").1
}

fn read_folds(model: &str, key: &str, fv: &Value, folds: &mut Vec<(String, Vec<(String, f64)>)>, w: &mut Vec<String>) {
    match fv {
        Value::Object(map) => {
            if map.values().all(|v| v.is_array()) {
                // metric-major lists: {"MSE": [v0, v1, ...]}
                for (metric, list) in map {
                    for (i, x) in list.as_array().into_iter().flatten().enumerate() {
                        match number(x) {
                            Some(x) => fold_slot(folds, &i.to_string()).push((metric.clone(), x)),
                            None if x.is_null() => {}
                            None => w.push(format!(
                                "model '{model}': {key}.{metric}[{i}] is {}, not a number",
                                type_name(x)
                            )),
                        }
                    }
                }
                return;
            }
            if is_metric_major(map) {
                // metric-major maps: {"MSE": {"fold_0": v, ...}}
                for (metric, inner) in map {
                    for (fold, x) in inner.as_object().into_iter().flatten() {
                        match number(x) {
                            Some(x) => push_metric(fold_slot(folds, fold), metric, x),
                            None if x.is_null() => {}
                            None => w.push(format!(
                                "model '{model}': {key}.{metric}.{fold} is {}, not a number",
                                type_name(x)
                            )),
                        }
                    }
                }
                return;
            }
            for (fold, v) in map {
                match v {
                    Value::Object(o) => {
                        let vals = fold_metrics(model, &format!("{key}.{fold}"), o, w);
                        let slot = fold_slot(folds, fold);
                        for (m, x) in vals {
                            push_metric(slot, &m, x);
                        }
                    }
                    Value::Null => {}
                    other => w.push(format!(
                        "model '{model}': {key}.{fold} is {} with no metric name; skipped",
                        type_name(other)
                    )),
                }
            }
        }
        Value::Array(list) => {
            for (i, v) in list.iter().enumerate() {
                match v {
                    Value::Object(o) => {
                        let fold = ["fold", "fold_id", "fold_idx", "fold_index", "name", "id"]
                            .iter()
                            .find_map(|k| match o.get(*k) {
                                Some(Value::String(s)) => Some(s.clone()),
                                Some(Value::Number(n)) => Some(n.to_string()),
                                _ => None,
                            })
                            .unwrap_or_else(|| i.to_string());
                        if folds.iter().any(|(f, _)| *f == fold) {
                            w.push(format!(
                                "model '{model}': fold '{fold}' appears twice in {key}; the later values win"
                            ));
                        }
                        let vals = fold_metrics(model, &format!("{key}[{i}]"), o, w);
                        let slot = fold_slot(folds, &fold);
                        for (m, x) in vals {
                            push_metric(slot, &m, x);
                        }
                    }
                    Value::Null => {}
                    other => w.push(format!(
                        "model '{model}': {key}[{i}] is {} with no metric name; skipped",
                        type_name(other)
                    )),
                }
            }
        }
        Value::Number(_) | Value::String(_) | Value::Bool(_) | Value::Null => {
            // e.g. "folds": 5 — a count, not values
        }
    }
}

/// Does a name look like a fold's: `3`, `fold_3`, `Fold 3`, `fold3`, `split-2`, `cv_1`? (Not `F1`.)
pub fn looks_like_fold(k: &str) -> bool {
    let l = k.trim().to_ascii_lowercase();
    let rest = ["fold", "split", "cv"].iter().find_map(|p| l.strip_prefix(p)).unwrap_or(&l);
    let rest = rest.trim_start_matches(['_', '-', ' ']);
    !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit())
}

/// `{METRIC: {FOLD: v}}`: outer names are not fold names, every inner name is, values are numbers.
fn is_metric_major(map: &Map<String, Value>) -> bool {
    !map.is_empty()
        && map.keys().all(|k| !looks_like_fold(k))
        && map.values().all(|v| match v {
            Value::Object(inner) => {
                !inner.is_empty()
                    && inner.iter().all(|(f, x)| looks_like_fold(f) && (number(x).is_some() || x.is_null()))
            }
            _ => false,
        })
}

/// A fold object's metrics: its own numeric members, then (for names not seen yet) those nested under
/// `metrics`, `val`, `validation`, `valid`, `test`, in that order.
fn fold_metrics(model: &str, at: &str, o: &Map<String, Value>, w: &mut Vec<String>) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for (k, v) in o {
        if NOT_METRICS.contains(&k.as_str()) {
            continue;
        }
        if let Some(x) = number(v) {
            out.push((k.clone(), x));
        }
    }
    for nk in NESTED_FOLD_KEYS {
        if let Some(Value::Object(inner)) = o.get(*nk) {
            for (k, v) in inner {
                if out.iter().any(|(m, _)| m == k) {
                    continue;
                }
                match summary_number(v) {
                    Some(x) => out.push((k.clone(), x)),
                    None if v.is_null() => {}
                    None => w.push(format!("model '{model}': {at}.{nk}.{k} is {}, not a number", type_name(v))),
                }
            }
        }
    }
    out
}

/// Sort key for fold names: `fold_10` after `fold_2`; names without digits by text.
fn fold_key(name: &str) -> (String, Option<u64>, String) {
    let digits: String =
        name.chars().rev().skip_while(|c| !c.is_ascii_digit()).take_while(|c| c.is_ascii_digit()).collect();
    let num: String = digits.chars().rev().collect();
    match num.parse::<u64>() {
        Ok(n) => {
            let pos = name.rfind(&num).unwrap_or(0);
            (name[..pos].to_ascii_lowercase(), Some(n), name.to_string())
        }
        Err(_) => (name.to_ascii_lowercase(), None, name.to_string()),
    }
}

pub fn sort_folds(folds: &mut [String]) {
    folds.sort_by_cached_key(|a| fold_key(a));
}

fn sort_fold_entries(folds: &mut [(String, Vec<(String, f64)>)]) {
    folds.sort_by_cached_key(|a| fold_key(&a.0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_names_sort_numerically() {
        let mut f: Vec<String> = ["fold_10", "fold_2", "fold_1", "fold_0"].iter().map(|s| s.to_string()).collect();
        sort_folds(&mut f);
        assert_eq!(f, ["fold_0", "fold_1", "fold_2", "fold_10"]);
        let mut f: Vec<String> = ["10", "9", "a"].iter().map(|s| s.to_string()).collect();
        sort_folds(&mut f);
        assert_eq!(f, ["9", "10", "a"]);
    }

    #[test]
    fn fold_names_are_recognised() {
        for k in ["3", "fold_3", "Fold 3", "fold3", "split-2", "cv_1"] {
            assert!(looks_like_fold(k), "{k}");
        }
        for k in ["MSE", "DEG_RMSE_20", "R2", "fold", "PCC_DM", "F1"] {
            assert!(!looks_like_fold(k), "{k}");
        }
    }

    #[test]
    fn canonical_layout() {
        let v = pyjson::parse(
            r#"{"models": {"Ridge": {"per_fold": {"fold_1": {"MSE": 1.0}, "fold_0": {"MSE": 2.0}}, "aggregate": {"MSE": 1.5}}}, "winner": "Ridge"}"#,
        )
        .unwrap();
        let m = normalize(&v).unwrap();
        assert_eq!(m.winner.as_deref(), Some("Ridge"));
        assert_eq!(m.folds, ["fold_0", "fold_1"]);
        assert_eq!(m.models[0].fold_values("MSE"), vec![("fold_0".into(), 2.0), ("fold_1".into(), 1.0)]);
        assert_eq!(m.models[0].aggregate_value("MSE"), Some(1.5));
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    }
}
