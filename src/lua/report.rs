//! The `report` module: metrics loading, statistics, experiment_report.md, SVG plots, the hypergraph.
//! Every number a report shows is computed here, never by the LLM. Functions that read data return
//! `nil, err` when the data is not usable (err.kind: "not_found", "io", "parse", "no_models",
//! "no_metric", "bad_baseline", "plot", "notebook"); wrong arguments raise.

use mlua::prelude::*;
use serde_json::json;

use super::util;
use crate::host::HostCtx;
use crate::report::metrics::{self, Metrics};
use crate::report::stats::{self, Comparison, Direction};

pub fn register(lua: &Lua) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    t.set("load_metrics", lua.create_function(load_metrics)?)?;
    t.set("compare", lua.create_function(compare)?)?;
    t.set("score", lua.create_function(score)?)?;
    t.set("direction", lua.create_function(|_, metric: String| Ok(Direction::infer(&metric).as_str()))?)?;
    Ok(t)
}

/// Why metrics could not be had: (err.kind, message).
type Failure = (&'static str, String);

/// Read metrics from a path (a file, or a folder holding metrics.json) or a table (raw or already
/// normalised). Raises when the argument is neither.
pub(crate) fn metrics_arg(lua: &Lua, v: &LuaValue, func: &str) -> LuaResult<Result<Metrics, Failure>> {
    match v {
        LuaValue::String(s) => Ok(load_path(&s.to_string_lossy())),
        LuaValue::Table(t) => {
            let doc = util::from_lua_checked(lua, v, func)?;
            let mut m = match metrics::normalize(&doc) {
                Ok(m) => m,
                Err(e) => return Ok(Err(("no_models", format!("the metrics table: {e}")))),
            };
            // a Lua table has no order: take the one load_metrics recorded, else sort by name
            let order: Vec<String> = match t.get::<LuaValue>("order")? {
                LuaValue::Table(o) => o.sequence_values::<String>().filter_map(|x| x.ok()).collect(),
                _ => Vec::new(),
            };
            m.models.sort_by(|a, b| {
                let pa = order.iter().position(|n| *n == a.name).unwrap_or(usize::MAX);
                let pb = order.iter().position(|n| *n == b.name).unwrap_or(usize::MAX);
                pa.cmp(&pb).then_with(|| a.name.cmp(&b.name))
            });
            if let LuaValue::Table(w) = t.get::<LuaValue>("warnings")? {
                let mut old: Vec<String> = w.sequence_values::<String>().filter_map(|x| x.ok()).collect();
                old.retain(|x| !m.warnings.contains(x));
                old.append(&mut m.warnings);
                m.warnings = old;
            }
            Ok(Ok(m))
        }
        other => Err(util::misuse(
            lua,
            format!("{func}: expected a metrics.json path or a metrics table, got {}", other.type_name()),
        )),
    }
}

fn load_path(path: &str) -> Result<Metrics, Failure> {
    let mut p = std::path::PathBuf::from(path);
    if p.is_dir() {
        p = p.join("metrics.json");
    }
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(("not_found", format!("no metrics file at {}", p.display())))
        }
        Err(e) => return Err(("io", format!("cannot read metrics file {}: {e}", p.display()))),
    };
    if text.trim().is_empty() {
        return Err(("parse", format!("metrics file {} is empty", p.display())));
    }
    let doc = crate::jsonx::parse(&text).map_err(|e| {
        (
            "parse",
            format!("metrics file {} is not valid JSON (line {} column {}): {e}", p.display(), e.line(), e.column()),
        )
    })?;
    metrics::normalize(&doc).map_err(|e| ("no_models", format!("metrics file {}: {e}", p.display())))
}

fn array(lua: &Lua, items: impl IntoIterator<Item = impl IntoLua>) -> LuaResult<LuaTable> {
    let t = lua.create_sequence_from(items)?;
    t.set_metatable(Some(lua.array_metatable()))?;
    Ok(t)
}

pub(crate) fn metrics_to_lua(lua: &Lua, m: &Metrics) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    let models = lua.create_table()?;
    for model in &m.models {
        let mt = lua.create_table()?;
        let pf = lua.create_table()?;
        for (fold, vals) in &model.per_fold {
            let ft = lua.create_table()?;
            for (k, v) in vals {
                ft.set(k.as_str(), *v)?;
            }
            pf.set(fold.as_str(), ft)?;
        }
        let agg = lua.create_table()?;
        for (k, v) in &model.aggregate {
            agg.set(k.as_str(), *v)?;
        }
        mt.set("per_fold", pf)?;
        mt.set("aggregate", agg)?;
        models.set(model.name.as_str(), mt)?;
    }
    t.set("models", models)?;
    t.set("winner", m.winner.as_deref())?;
    t.set("folds", array(lua, m.folds.iter().map(|s| s.as_str()))?)?;
    t.set("warnings", array(lua, m.warnings.iter().map(|s| s.as_str()))?)?;
    t.set("order", array(lua, m.models.iter().map(|x| x.name.as_str()))?)?;
    t.set("metric_names", array(lua, metrics::display_order(&m.metric_names()))?)?;
    Ok(t)
}

fn load_metrics(lua: &Lua, v: LuaValue) -> LuaResult<(LuaValue, LuaValue)> {
    match metrics_arg(lua, &v, "report.load_metrics")? {
        Ok(m) => Ok((LuaValue::Table(metrics_to_lua(lua, &m)?), LuaValue::Nil)),
        Err((kind, msg)) => util::fail(lua, kind, msg),
    }
}

/// The metric to use: the option, else the config's experiment.primary_metric, else the first
/// metric present in display order.
pub(crate) fn pick_metric(lua: &Lua, opt: Option<String>, m: &Metrics) -> Option<String> {
    if let Some(x) = opt {
        return Some(x);
    }
    if let Some(cfg) = HostCtx::get(lua).config.clone() {
        return Some(cfg.experiment.primary_metric.clone());
    }
    metrics::display_order(&m.metric_names()).into_iter().next()
}

/// The direction: the option, else the config's experiment.direction when `metric` is the config's
/// primary metric, else inferred from the name (None = infer).
pub(crate) fn pick_direction(lua: &Lua, opt: Option<String>, metric: &str, func: &str) -> LuaResult<Option<Direction>> {
    if let Some(d) = opt {
        return Direction::parse(&d)
            .map(Some)
            .ok_or_else(|| util::misuse(lua, format!("{func}: direction must be \"lower\" or \"higher\", got '{d}'")));
    }
    if let Some(cfg) = HostCtx::get(lua).config.clone() {
        if cfg.experiment.primary_metric.eq_ignore_ascii_case(metric) {
            if let Some(d) = cfg.experiment.direction.as_deref().and_then(Direction::parse) {
                return Ok(Some(d));
            }
        }
    }
    Ok(None)
}

fn opt_string(t: &Option<LuaTable>, key: &str) -> LuaResult<Option<String>> {
    match t {
        Some(t) => t.get::<Option<String>>(key),
        None => Ok(None),
    }
}

/// Put an f64 into a table only when it is finite (never a NaN in a script's hands by accident).
fn set_num(t: &LuaTable, k: &str, v: Option<f64>) -> LuaResult<()> {
    if let Some(x) = v.filter(|x| x.is_finite()) {
        t.set(k, x)?;
    }
    Ok(())
}

pub(crate) fn comparison_to_lua(lua: &Lua, c: &Comparison) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    t.set("metric", c.metric.as_str())?;
    t.set("direction", c.direction.as_str())?;
    t.set("direction_source", c.direction_source)?;
    t.set("baseline", c.baseline.as_str())?;
    t.set("best", c.best.as_deref())?;
    t.set("alpha", stats::ALPHA)?;
    t.set("order", array(lua, c.entries.iter().map(|e| e.name.as_str()))?)?;
    let models = lua.create_table()?;
    for e in &c.entries {
        let m = lua.create_table()?;
        set_num(&m, "mean", e.summary.mean)?;
        set_num(&m, "sd", e.summary.sd)?;
        m.set("n", e.summary.n)?;
        m.set("dropped", e.summary.dropped)?;
        m.set("source", e.summary.source)?;
        m.set("is_baseline", e.is_baseline)?;
        set_num(&m, "delta_pct", e.delta_pct)?;
        m.set("delta_reason", e.delta_reason.as_deref())?;
        m.set("n_paired", e.n_paired)?;
        if let Some(tt) = &e.ttest {
            m.set("test", "paired t")?;
            set_num(&m, "t", Some(tt.t))?;
            m.set("df", tt.df)?;
            set_num(&m, "p_value", Some(tt.p_value))?;
            m.set("significant", tt.p_value < stats::ALPHA)?;
            set_num(&m, "mean_diff", Some(tt.mean_diff))?;
            set_num(&m, "sd_diff", Some(tt.sd_diff))?;
            set_num(&m, "cohens_dz", Some(tt.cohens_dz))?;
            let ci = lua.create_table()?;
            ci.set("lo", tt.ci95.0)?;
            ci.set("hi", tt.ci95.1)?;
            m.set("ci95", ci)?;
        }
        set_num(&m, "holm_p", e.holm_p)?;
        if let Some(h) = e.holm_p {
            m.set("holm_significant", h < stats::ALPHA)?;
        }
        set_num(&m, "wilcoxon_p", e.wilcoxon_p)?;
        m.set("wilcoxon_method", e.wilcoxon_method.map(|w| w.as_str()))?;
        m.set("wilcoxon_reason", e.wilcoxon_reason.as_deref())?;
        m.set("no_test_reason", e.no_test_reason.as_deref())?;
        m.set("notes", array(lua, e.notes.iter().map(|s| s.as_str()))?)?;
        models.set(e.name.as_str(), m)?;
    }
    t.set("models", models)?;
    Ok(t)
}

/// Metrics, metric and direction for a function taking `(metrics, {metric=, baseline=, direction=})`.
pub(crate) fn comparison_for(
    lua: &Lua,
    m: &Metrics,
    opts: &Option<LuaTable>,
    func: &str,
) -> LuaResult<Result<Comparison, Failure>> {
    let Some(metric) = pick_metric(lua, opt_string(opts, "metric")?, m) else {
        return Ok(Err(("no_metric", "no model reports any metric".into())));
    };
    let direction = pick_direction(lua, opt_string(opts, "direction")?, &metric, func)?;
    let baseline = opt_string(opts, "baseline")?;
    Ok(stats::compare(m, &metric, baseline.as_deref(), direction).map_err(|e| {
        let kind = if baseline.is_some() && e.starts_with("the baseline") { "bad_baseline" } else { "no_metric" };
        (kind, e)
    }))
}

fn compare(lua: &Lua, (v, opts): (LuaValue, Option<LuaTable>)) -> LuaResult<(LuaValue, LuaValue)> {
    if let Some(o) = &opts {
        util::check_opts(lua, o, "report.compare", &["metric", "baseline", "direction"])?;
    }
    let m = match metrics_arg(lua, &v, "report.compare")? {
        Ok(m) => m,
        Err((kind, msg)) => return util::fail(lua, kind, msg),
    };
    match comparison_for(lua, &m, &opts, "report.compare")? {
        Ok(c) => Ok((LuaValue::Table(comparison_to_lua(lua, &c)?), LuaValue::Nil)),
        Err((kind, msg)) => util::fail(lua, kind, msg),
    }
}

fn score(lua: &Lua, (v, opts): (LuaValue, Option<LuaTable>)) -> LuaResult<(LuaValue, LuaValue)> {
    if let Some(o) = &opts {
        util::check_opts(lua, o, "report.score", &["metric", "direction"])?;
    }
    let m = match metrics_arg(lua, &v, "report.score")? {
        Ok(m) => m,
        Err((kind, msg)) => return util::fail(lua, kind, msg),
    };
    let Some(metric) = pick_metric(lua, opt_string(&opts, "metric")?, &m) else {
        return util::fail(lua, "no_metric", "no model reports any metric");
    };
    let direction = pick_direction(lua, opt_string(&opts, "direction")?, &metric, "report.score")?
        .unwrap_or_else(|| Direction::infer(&metric));
    match stats::score(&m, &metric) {
        Ok((s, model, source)) => {
            let t = lua.create_table()?;
            t.set("score", s)?;
            t.set("model", model)?;
            t.set("source", source)?;
            t.set("metric", m.resolve_metric(&metric).unwrap_or(metric))?;
            t.set("direction", direction.as_str())?;
            Ok((LuaValue::Table(t), LuaValue::Nil))
        }
        Err(e) => util::fail_with(lua, "no_metric", e, &json!({ "metric": metric })),
    }
}
