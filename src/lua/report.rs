//! The `report` module: metrics loading, statistics, experiment_report.md, SVG plots, the hypergraph.
//! Every number a report shows is computed here, never by the LLM. Functions that read data return
//! `nil, err` when the data is not usable (err.kind: "not_found", "io", "parse", "no_models",
//! "no_metric", "bad_baseline", "bad_model", "plot", "notebook"); wrong arguments raise.
//!
//! The decisions a number depends on (which way a metric is better, the baseline, which number is the
//! score, the narrative's wording) are never made here: the caller's options give them, else the Lua
//! policy `stdlib/report_policy.lua` (which a user can shadow) is asked.

use mlua::prelude::*;
use serde_json::json;

use super::boundary;
use crate::lua::ctx::HostCtx;
use crate::report::markdown;
use crate::report::metrics::{self, Metrics};
use crate::report::stats::{self, Basis, Comparison, Direction, ScoreRule, ScoreSource};

pub fn register(lua: &Lua) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    t.set("load_metrics", lua.create_function(load_metrics)?)?;
    t.set("compare", lua.create_function(compare)?)?;
    t.set("score", lua.create_function(score)?)?;
    // report.holm({p1, p2, ...}) -> Holm-adjusted p-values in the same order (what compare's holm_p uses)
    t.set("holm", lua.create_function(|lua, ps: Vec<f64>| array(lua, stats::holm(&ps)))?)?;
    // report.mean_sd({x1, x2, ...}) -> mean, sample SD (nil when fewer than 1 / 2 values)
    t.set("mean_sd", lua.create_function(|_, xs: Vec<f64>| Ok(stats::mean_sd(&xs)))?)?;
    t.set("markdown", lua.create_function(markdown)?)?;
    t.set("narrative_input", lua.create_function(narrative_input)?)?;
    t.set("narrative_messages", lua.create_function(narrative_messages)?)?;
    t.set("plot_folds", lua.create_function(plot_folds)?)?;
    t.set("plot_iterations", lua.create_function(plot_iterations)?)?;
    t.set("hypergraph", lua.create_function(hypergraph)?)?;
    t.set("mermaid", lua.create_function(mermaid)?)?;
    t.set("page", lua.create_function(page)?)?;
    t.set("direction", lua.create_function(|lua, metric: String| Ok(policy_direction(lua, &metric)?.0.as_str()))?)?;
    Ok(t)
}

/// A successful result: one value (so `print(report.x(...))` shows no trailing nil).
fn ok(lua: &Lua, v: impl IntoLua) -> LuaResult<LuaMultiValue> {
    v.into_lua_multi(lua)
}

/// An expected failure: `nil, err`.
fn fail(lua: &Lua, kind: &str, msg: impl AsRef<str>) -> LuaResult<LuaMultiValue> {
    boundary::fail(lua, kind, msg)?.into_lua_multi(lua)
}

fn fail_with(lua: &Lua, kind: &str, msg: impl AsRef<str>, extra: &serde_json::Value) -> LuaResult<LuaMultiValue> {
    boundary::fail_with(lua, kind, msg, extra)?.into_lua_multi(lua)
}

/// Why metrics could not be had: (err.kind, message).
type Failure = (&'static str, String);

/// Read metrics from a path (a file, or a folder holding metrics.json) or a table (raw or already
/// normalised). Raises when the argument is neither.
pub(crate) fn metrics_arg(lua: &Lua, v: &LuaValue, func: &str) -> LuaResult<Result<Metrics, Failure>> {
    match v {
        LuaValue::String(s) => Ok(load_path(&s.to_string_lossy())),
        LuaValue::Table(t) => {
            let doc = boundary::from_lua_checked(lua, v, func)?;
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
        other => Err(boundary::misuse(
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
    let bytes = match crate::files::read_regular(&p, metrics::MAX_FILE_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(("not_found", format!("no metrics file at {}", p.display())))
        }
        Err(e) => {
            let kind = match crate::files::refused(&e) {
                Some(crate::files::Refused::NotRegular(_)) => "not_a_file",
                Some(crate::files::Refused::TooLarge { .. }) => "too_large",
                None => "io",
            };
            return Err((kind, format!("cannot read metrics file {}: {e}", p.display())));
        }
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(_) => return Err(("parse", format!("metrics file {} is not UTF-8 text", p.display()))),
    };
    if text.trim().is_empty() {
        return Err(("parse", format!("metrics file {} is empty", p.display())));
    }
    let doc = crate::pyjson::parse(&text).map_err(|e| {
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

fn load_metrics(lua: &Lua, v: LuaValue) -> LuaResult<LuaMultiValue> {
    match metrics_arg(lua, &v, "report.load_metrics")? {
        Ok(m) => ok(lua, metrics_to_lua(lua, &m)?),
        Err((kind, msg)) => fail(lua, kind, msg),
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

/// The policy module (`stdlib/report_policy.lua`, or a user's copy shadowing it) and its function `name`.
fn policy_fn(lua: &Lua, name: &str) -> LuaResult<LuaFunction> {
    let require: LuaFunction = lua.globals().get("require")?;
    let module: LuaTable = require.call("report_policy")?;
    match module.get::<LuaValue>(name)? {
        LuaValue::Function(f) => Ok(f),
        _ => {
            Err(LuaError::runtime(format!("report_policy.lua has no function {name} (a shadowing copy must keep it)")))
        }
    }
}

/// The policy's direction for `metric` and what it says chose it.
fn policy_direction(lua: &Lua, metric: &str) -> LuaResult<(Direction, String)> {
    let (d, source): (LuaValue, LuaValue) = policy_fn(lua, "direction")?.call(metric)?;
    let parsed = match &d {
        LuaValue::String(s) => Direction::parse(&s.to_string_lossy()),
        _ => None,
    };
    let Some(dir) = parsed else {
        return Err(LuaError::runtime(format!(
            "report_policy.direction('{metric}') must return \"lower\" or \"higher\", got {}",
            d.to_string().unwrap_or_else(|_| d.type_name().to_string())
        )));
    };
    let source = match source {
        LuaValue::String(s) => s.to_string_lossy(),
        _ => "report_policy".into(),
    };
    Ok((dir, source))
}

/// The direction and who chose it: the option, else the config's experiment.direction when `metric` is
/// the config's primary metric (both "option"), else the policy (report_policy.direction).
pub(crate) fn pick_direction(
    lua: &Lua,
    opt: Option<String>,
    metric: &str,
    func: &str,
) -> LuaResult<(Direction, String)> {
    if let Some(d) = opt {
        return Direction::parse(&d).map(|d| (d, "option".to_string())).ok_or_else(|| {
            boundary::misuse(lua, format!("{func}: direction must be \"lower\" or \"higher\", got '{d}'"))
        });
    }
    if let Some(cfg) = HostCtx::get(lua).config.clone() {
        if cfg.experiment.primary_metric.eq_ignore_ascii_case(metric) {
            if let Some(d) = cfg.experiment.direction.as_deref().and_then(Direction::parse) {
                return Ok((d, "option".into()));
            }
        }
    }
    policy_direction(lua, metric)
}

/// The baseline: the option, else the policy's choice among the models (report_policy.baseline);
/// None when there are no models. Whether it is a model is `stats::compare`'s check.
fn pick_baseline(lua: &Lua, opt: Option<String>, m: &Metrics) -> LuaResult<Option<String>> {
    if opt.is_some() || m.models.is_empty() {
        return Ok(opt);
    }
    let names = array(lua, m.models.iter().map(|x| x.name.as_str()))?;
    match policy_fn(lua, "baseline")?.call::<LuaValue>(names)? {
        LuaValue::String(s) => Ok(Some(s.to_string_lossy())),
        other => Err(LuaError::runtime(format!(
            "report_policy.baseline must return one of the model names it is given, got {}",
            other.type_name()
        ))),
    }
}

/// Direction and baseline of a comparison on `metric` (None without models).
fn basis(lua: &Lua, m: &Metrics, metric: &str, opts: &Option<LuaTable>, func: &str) -> LuaResult<Option<Basis>> {
    let Some(baseline) = pick_baseline(lua, opt_string(lua, func, opts, "baseline")?, m)? else {
        return Ok(None);
    };
    let (direction, direction_source) = pick_direction(lua, opt_string(lua, func, opts, "direction")?, metric, func)?;
    Ok(Some(Basis { direction, direction_source, baseline }))
}

/// A string option of `func` (its keys were checked at the function's entry).
fn opt_string(lua: &Lua, func: &str, t: &Option<LuaTable>, key: &str) -> LuaResult<Option<String>> {
    boundary::Opts::checked(lua, func, t.clone()).str(key)
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
    t.set("direction_source", c.direction_source.as_str())?;
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
    let Some(metric) = pick_metric(lua, opt_string(lua, func, opts, "metric")?, m) else {
        return Ok(Err(("no_metric", "no model reports any metric".into())));
    };
    let Some(basis) = basis(lua, m, &metric, opts, func)? else {
        return Ok(Err(("no_models", "there are no models".into())));
    };
    Ok(stats::compare(m, &metric, &basis).map_err(|e| {
        let kind = if e.starts_with("the baseline") { "bad_baseline" } else { "no_metric" };
        (kind, e)
    }))
}

fn compare(lua: &Lua, (v, opts): (LuaValue, Option<LuaTable>)) -> LuaResult<LuaMultiValue> {
    if let Some(o) = &opts {
        boundary::check_opts(lua, o, "report.compare", &["metric", "baseline", "direction"])?;
    }
    let m = match metrics_arg(lua, &v, "report.compare")? {
        Ok(m) => m,
        Err((kind, msg)) => return fail(lua, kind, msg),
    };
    match comparison_for(lua, &m, &opts, "report.compare")? {
        Ok(c) => ok(lua, comparison_to_lua(lua, &c)?),
        Err((kind, msg)) => fail(lua, kind, msg),
    }
}

fn score(lua: &Lua, (v, opts): (LuaValue, Option<LuaTable>)) -> LuaResult<LuaMultiValue> {
    if let Some(o) = &opts {
        boundary::check_opts(lua, o, "report.score", &["metric", "direction", "model", "from"])?;
    }
    let m = match metrics_arg(lua, &v, "report.score")? {
        Ok(m) => m,
        Err((kind, msg)) => return fail(lua, kind, msg),
    };
    let Some(metric) = pick_metric(lua, opt_string(lua, "report.score", &opts, "metric")?, &m) else {
        return fail(lua, "no_metric", "no model reports any metric");
    };
    let (direction, _) =
        pick_direction(lua, opt_string(lua, "report.score", &opts, "direction")?, &metric, "report.score")?;
    let rule = score_rule(lua, &m, &metric, &opts)?;
    if m.model(&rule.model).is_none() {
        let names: Vec<&str> = m.models.iter().map(|x| x.name.as_str()).collect();
        let msg = format!("the score's model '{}' is not one of the models ({})", rule.model, names.join(", "));
        return fail_with(lua, "bad_model", msg, &json!({ "metric": metric }));
    }
    match stats::score(&m, &metric, &rule) {
        Ok((s, model, source)) => {
            let t = lua.create_table()?;
            t.set("score", s)?;
            t.set("model", model)?;
            t.set("source", source)?;
            t.set("metric", m.resolve_metric(&metric).unwrap_or(metric))?;
            t.set("direction", direction.as_str())?;
            ok(lua, t)
        }
        Err(e) => fail_with(lua, "no_metric", e, &json!({ "metric": metric })),
    }
}

/// The score rule: the `model=` and `from=` options, else what report_policy.score_rule says for this
/// metrics table.
fn score_rule(lua: &Lua, m: &Metrics, metric: &str, opts: &Option<LuaTable>) -> LuaResult<ScoreRule> {
    const F: &str = "report.score";
    let mut model = opt_string(lua, F, opts, "model")?;
    let mut from = match opts.as_ref().map(|o| o.get::<LuaValue>("from")).transpose()? {
        None | Some(LuaValue::Nil) => None,
        Some(v) => Some(score_sources(lua, &v, &format!("{F}: 'from'"))?),
    };
    if model.is_none() || from.is_none() {
        let rule: LuaValue = policy_fn(lua, "score_rule")?.call((metrics_to_lua(lua, m)?, metric))?;
        let LuaValue::Table(rule) = rule else {
            return Err(LuaError::runtime(format!(
                "report_policy.score_rule must return {{model=, from=}}, got {}",
                rule.type_name()
            )));
        };
        if model.is_none() {
            model = Some(rule.get::<Option<String>>("model")?.ok_or_else(|| {
                LuaError::runtime("report_policy.score_rule returned no model (a model name is needed)")
            })?);
        }
        if from.is_none() {
            from = Some(score_sources(lua, &rule.get::<LuaValue>("from")?, "report_policy.score_rule: 'from'")?);
        }
    }
    Ok(ScoreRule { model: model.unwrap_or_default(), from: from.unwrap_or_default() })
}

/// A list of score sources ("aggregate", "folds"); anything else raises, naming `what`.
fn score_sources(lua: &Lua, v: &LuaValue, what: &str) -> LuaResult<Vec<ScoreSource>> {
    let bad =
        |got: String| boundary::misuse(lua, format!("{what} must be a list of \"aggregate\" and \"folds\", got {got}"));
    let LuaValue::Table(t) = v else {
        return Err(bad(v.type_name().to_string()));
    };
    let mut out = Vec::new();
    for x in t.sequence_values::<LuaValue>() {
        let x = x?;
        match &x {
            LuaValue::String(s) => match ScoreSource::parse(&s.to_string_lossy()) {
                Some(src) => out.push(src),
                None => return Err(bad(format!("'{}'", s.to_string_lossy()))),
            },
            other => return Err(bad(other.type_name().to_string())),
        }
    }
    Ok(out)
}

/// Markdown options shared by `markdown`, `narrative_input` and `narrative_messages`.
fn md_options(lua: &Lua, m: &Metrics, opts: &Option<LuaTable>, func: &str) -> LuaResult<markdown::Options> {
    let metric = pick_metric(lua, opt_string(lua, func, opts, "metric")?, m);
    let basis = match &metric {
        Some(x) => basis(lua, m, x, opts, func)?,
        None => None,
    };
    let mut plots = Vec::new();
    if let Some(LuaValue::Table(list)) = opts.as_ref().map(|o| o.get::<LuaValue>("plots")).transpose()? {
        for v in list.sequence_values::<LuaValue>() {
            match v? {
                LuaValue::String(s) => {
                    let p = s.to_string_lossy();
                    let title = std::path::Path::new(&p)
                        .file_stem()
                        .map(|x| x.to_string_lossy().replace(['_', '-'], " "))
                        .unwrap_or_else(|| p.clone());
                    plots.push((p, title));
                }
                LuaValue::Table(t) => {
                    let Some(p) = t.get::<Option<String>>("path")? else {
                        return Err(boundary::misuse(lua, format!("{func}: each plot needs a path")));
                    };
                    let title = t.get::<Option<String>>("title")?.unwrap_or_else(|| p.clone());
                    plots.push((p, title));
                }
                other => {
                    return Err(boundary::misuse(
                        lua,
                        format!("{func}: plots are paths or {{path=, title=}} tables, got {}", other.type_name()),
                    ))
                }
            }
        }
    }
    Ok(markdown::Options {
        metric,
        basis,
        narrative: opt_string(lua, func, opts, "narrative")?,
        narrative_error: match opts.as_ref().map(|o| o.get::<LuaValue>("narrative_error")).transpose()? {
            None | Some(LuaValue::Nil) => None,
            Some(LuaValue::String(s)) => Some(s.to_string_lossy()),
            // an err table from llm.chat: use its message
            Some(LuaValue::Table(t)) => {
                Some(t.get::<Option<String>>("message")?.unwrap_or_else(|| "the LLM call failed".into()))
            }
            Some(other) => Some(other.to_string()?),
        },
        plots,
        title: opt_string(lua, func, opts, "title")?,
    })
}

use crate::files::write_atomic;

fn markdown(lua: &Lua, opts: LuaTable) -> LuaResult<LuaMultiValue> {
    const KEYS: &[&str] =
        &["metrics", "metric", "direction", "baseline", "narrative", "narrative_error", "plots", "title", "path"];
    boundary::check_opts(lua, &opts, "report.markdown", KEYS)?;
    let mv: LuaValue = opts.get("metrics")?;
    if mv.is_nil() {
        return Err(boundary::misuse(lua, "report.markdown: 'metrics' (a path or a metrics table) is required"));
    }
    let o = Some(opts.clone());
    let text = match metrics_arg(lua, &mv, "report.markdown")? {
        Ok(m) => {
            let mo = md_options(lua, &m, &o, "report.markdown")?;
            markdown::render(&m, &mo)
        }
        Err((_, why)) => {
            let mo = md_options(lua, &Metrics::default(), &o, "report.markdown")?;
            markdown::render_unavailable(mo.title.as_deref(), &why, &mo)
        }
    };
    if let Some(path) = opt_string(lua, "report.markdown", &o, "path")? {
        if let Err(e) = write_atomic(std::path::Path::new(&path), text.as_bytes()) {
            return fail(lua, "io", format!("cannot write {path}: {e}"));
        }
    }
    ok(lua, text)
}

fn narrative_input(lua: &Lua, (v, opts): (LuaValue, Option<LuaTable>)) -> LuaResult<LuaMultiValue> {
    if let Some(o) = &opts {
        boundary::check_opts(lua, o, "report.narrative_input", &["metric", "baseline", "direction"])?;
    }
    let m = match metrics_arg(lua, &v, "report.narrative_input")? {
        Ok(m) => m,
        Err((kind, msg)) => return fail(lua, kind, msg),
    };
    let mo = md_options(lua, &m, &opts, "report.narrative_input")?;
    let text = crate::pyjson::to_string(&markdown::narrative_input(&m, &mo), true);
    ok(lua, text)
}

/// The chat messages for the narrative: a thin call into report_policy.narrative_messages, where the
/// wording and the prompt file's reading live (kept here so `report.narrative_messages` still works).
fn narrative_messages(
    lua: &Lua,
    (prompt, v, opts): (LuaValue, LuaValue, Option<LuaTable>),
) -> LuaResult<LuaMultiValue> {
    if let Some(o) = &opts {
        boundary::check_opts(lua, o, "report.narrative_messages", &["metric", "baseline", "direction"])?;
    }
    if !matches!(prompt, LuaValue::Table(_) | LuaValue::String(_)) {
        return Err(boundary::misuse(
            lua,
            format!("report.narrative_messages: the prompt is a table or a YAML path, got {}", prompt.type_name()),
        ));
    }
    policy_fn(lua, "narrative_messages")?.call((prompt, v, opts))
}

/// Write `svg` to `path` when one is given and return the path, else return the SVG text.
fn svg_result(lua: &Lua, svg: String, path: Option<String>) -> LuaResult<LuaMultiValue> {
    match path {
        Some(p) => match write_atomic(std::path::Path::new(&p), svg.as_bytes()) {
            Ok(()) => ok(lua, p),
            Err(e) => fail(lua, "io", format!("cannot write {p}: {e}")),
        },
        None => ok(lua, svg),
    }
}

fn plot_folds(lua: &Lua, (v, opts): (LuaValue, Option<LuaTable>)) -> LuaResult<LuaMultiValue> {
    if let Some(o) = &opts {
        boundary::check_opts(lua, o, "report.plot_folds", &["metric", "path", "direction", "title"])?;
    }
    let m = match metrics_arg(lua, &v, "report.plot_folds")? {
        Ok(m) => m,
        Err((kind, msg)) => return fail(lua, kind, msg),
    };
    let Some(metric) = pick_metric(lua, opt_string(lua, "report.plot_folds", &opts, "metric")?, &m) else {
        return fail(lua, "no_metric", "no model reports any metric");
    };
    let (direction, _) =
        pick_direction(lua, opt_string(lua, "report.plot_folds", &opts, "direction")?, &metric, "report.plot_folds")?;
    let title = opt_string(lua, "report.plot_folds", &opts, "title")?;
    match crate::report::plot::folds_svg(&m, &metric, direction, title.as_deref()) {
        Ok(svg) => svg_result(lua, svg, opt_string(lua, "report.plot_folds", &opts, "path")?),
        Err(e) => fail(lua, if e.starts_with("no ") { "no_metric" } else { "plot" }, e),
    }
}

fn plot_iterations(lua: &Lua, (v, opts): (LuaTable, Option<LuaTable>)) -> LuaResult<LuaMultiValue> {
    use crate::report::plot::Iteration;
    const F: &str = "report.plot_iterations";
    if let Some(o) = &opts {
        boundary::check_opts(lua, o, F, &["threshold", "metric", "path", "direction", "title"])?;
    }
    let mut its = Vec::new();
    for (i, item) in v.sequence_values::<LuaValue>().enumerate() {
        let pos = i as i64 + 1;
        let it = match item? {
            LuaValue::Integer(x) => Iteration { number: pos, score: Some(x as f64), status: None, met: None },
            LuaValue::Number(x) => Iteration { number: pos, score: Some(x), status: None, met: None },
            LuaValue::Table(t) => {
                let number = ["iteration", "number", "index"]
                    .iter()
                    .find_map(|k| t.get::<Option<i64>>(*k).ok().flatten())
                    .unwrap_or(pos);
                let score = match t.get::<LuaValue>("score")? {
                    LuaValue::Integer(x) => Some(x as f64),
                    LuaValue::Number(x) => Some(x),
                    _ => None,
                };
                Iteration {
                    number,
                    score,
                    status: t.get::<Option<String>>("status")?,
                    met: t.get::<Option<bool>>("met")?,
                }
            }
            other => {
                return Err(boundary::misuse(
                    lua,
                    format!(
                        "{F}: iterations are numbers or {{iteration=, score=, status=, met=}} tables, got {}",
                        other.type_name()
                    ),
                ))
            }
        };
        its.push(it);
    }
    let metric = match opt_string(lua, F, &opts, "metric")? {
        Some(m) => m,
        None => {
            HostCtx::get(lua).config.as_ref().map(|c| c.experiment.primary_metric.clone()).unwrap_or("score".into())
        }
    };
    let (direction, _) = pick_direction(lua, opt_string(lua, F, &opts, "direction")?, &metric, F)?;
    let threshold = boundary::Opts::checked(lua, F, opts.clone()).f64("threshold")?;
    let title = opt_string(lua, F, &opts, "title")?;
    match crate::report::plot::iterations_svg(&its, threshold, &metric, direction, title.as_deref()) {
        Ok(svg) => svg_result(lua, svg, opt_string(lua, F, &opts, "path")?),
        Err(e) => fail(lua, "plot", e),
    }
}

/// A notebook argument: a notebook handle (its `to_table()`), an nbformat table, or an .ipynb path.
fn notebook_arg(
    lua: &Lua,
    v: &LuaValue,
    func: &str,
) -> LuaResult<Result<crate::report::hypergraph::Hypergraph, Failure>> {
    let doc = match v {
        // A notebook handle: only what the hypergraph reads (cell types and metadata, the notebook
        // metadata), not a round trip of every output through a Lua table.
        LuaValue::UserData(ud) if ud.is::<crate::lua::notebook::LuaNotebook>() => {
            let nb = &ud.borrow::<crate::lua::notebook::LuaNotebook>()?.0;
            let cells: Vec<serde_json::Value> = (0..nb.len())
                .filter_map(|i| nb.cell_value(i))
                .map(|c| json!({"cell_type": c.get("cell_type"), "metadata": c.get("metadata")}))
                .collect();
            json!({"cells": cells, "metadata": nb.metadata()})
        }
        LuaValue::UserData(ud) => {
            let t: LuaValue = ud.call_method("to_table", ()).map_err(|e| {
                boundary::misuse(lua, format!("{func}: the notebook handle has no usable to_table(): {e}"))
            })?;
            boundary::from_lua_checked(lua, &t, func)?
        }
        LuaValue::Table(_) => boundary::from_lua_checked(lua, v, func)?,
        LuaValue::String(s) => {
            let p = s.to_string_lossy();
            let text = match std::fs::read_to_string(&p) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(Err(("not_found", format!("no notebook at {p}"))))
                }
                Err(e) => return Ok(Err(("io", format!("cannot read notebook {p}: {e}")))),
            };
            match crate::pyjson::parse(&text) {
                Ok(d) => d,
                Err(e) => {
                    return Ok(Err((
                        "parse",
                        format!("notebook {p} is not valid JSON (line {} column {}): {e}", e.line(), e.column()),
                    )))
                }
            }
        }
        other => {
            return Err(boundary::misuse(
                lua,
                format!("{func}: expected a notebook, an nbformat table or an .ipynb path, got {}", other.type_name()),
            ))
        }
    };
    Ok(crate::report::hypergraph::from_notebook(&doc).map_err(|e| ("notebook", e)))
}

fn hypergraph(lua: &Lua, (v, opts): (LuaValue, Option<LuaTable>)) -> LuaResult<LuaMultiValue> {
    if let Some(o) = &opts {
        boundary::check_opts(lua, o, "report.hypergraph", &["path"])?;
    }
    let h = match notebook_arg(lua, &v, "report.hypergraph")? {
        Ok(h) => h,
        Err((kind, msg)) => return fail(lua, kind, msg),
    };
    let doc = h.to_json();
    if let Some(p) = opt_string(lua, "report.hypergraph", &opts, "path")? {
        let text = crate::pyjson::to_string(&doc, true) + "\n";
        if let Err(e) = write_atomic(std::path::Path::new(&p), text.as_bytes()) {
            return fail(lua, "io", format!("cannot write {p}: {e}"));
        }
    }
    ok(lua, boundary::to_lua(lua, &doc)?)
}

fn mermaid(lua: &Lua, (v, opts): (LuaValue, Option<LuaTable>)) -> LuaResult<LuaMultiValue> {
    if let Some(o) = &opts {
        boundary::check_opts(lua, o, "report.mermaid", &["path"])?;
    }
    let h = match notebook_arg(lua, &v, "report.mermaid")? {
        Ok(h) => h,
        Err((kind, msg)) => return fail(lua, kind, msg),
    };
    let text = h.mermaid();
    if let Some(p) = opt_string(lua, "report.mermaid", &opts, "path")? {
        if let Err(e) = write_atomic(std::path::Path::new(&p), text.as_bytes()) {
            return fail(lua, "io", format!("cannot write {p}: {e}"));
        }
    }
    ok(lua, text)
}

/// The run page's template: `run.html.j2` from the module search folders (a user's copy), else the
/// bundled `scripts/run.html.j2`.
pub fn page_template(ctx: &HostCtx) -> String {
    for dir in ctx.search_dirs() {
        if let Ok(text) = std::fs::read_to_string(dir.join("run.html.j2")) {
            return text;
        }
    }
    crate::lua::embedded::get("scripts/run.html.j2").map(|t| t.into_owned()).unwrap_or_default()
}

/// report.page(summary_path, {path=, live=, refresh=}) -> the page's path | nil, err
/// Builds the run's page (default: run_<stamp>_<pid>.html beside the summary, and run.html) from the
/// loop summary and the trials' files; the cards' baseline is report_policy.baseline's.
/// live: reload itself (default: the summary has no finished_at); refresh: seconds between reloads (5).
fn page(lua: &Lua, (summary, opts): (LuaValue, Option<LuaTable>)) -> LuaResult<LuaMultiValue> {
    const F: &str = "report.page";
    let summary = boundary::string_arg(lua, &summary, F, "the loop summary's path")?.to_string_lossy();
    let o = boundary::Opts::new(lua, F, opts, &["path", "live", "refresh"])?;
    let options = crate::report::page::Options {
        path: o.str("path")?.map(std::path::PathBuf::from),
        live: o.bool("live")?,
        refresh_secs: o.positive("refresh")?.map_or(5, |x| x.round().max(1.0) as u32),
        // the cards' baseline as the report chooses it (report_policy.baseline); its failure costs only
        // the policy's answer (the default rule is used)
        baseline: Some(crate::report::page::BaselineFn(std::rc::Rc::new({
            let lua = lua.clone();
            move |names: &[String]| {
                let f = policy_fn(&lua, "baseline").ok()?;
                let names = array(&lua, names.iter().map(String::as_str)).ok()?;
                f.call::<String>(names).ok()
            }
        }))),
    };
    let template = page_template(&HostCtx::get(lua));
    match crate::report::page::build(std::path::Path::new(&summary), &template, &options) {
        Ok(p) => ok(lua, p.display().to_string()),
        Err(e) => fail(lua, e.kind(), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands in for the notebook module's handle: all `report` needs is `nb:to_table()`.
    struct FakeNotebook(serde_json::Value);

    impl LuaUserData for FakeNotebook {
        fn add_methods<M: LuaUserDataMethods<Self>>(m: &mut M) {
            m.add_method("to_table", |lua, this, ()| boundary::to_lua(lua, &this.0));
        }
    }

    #[test]
    fn a_notebook_handle_is_read_through_its_to_table() {
        let lua = Lua::new();
        boundary::remember_array_metatable(&lua);
        let report = register(&lua).unwrap();
        let nb = FakeNotebook(serde_json::json!({
            "cells": [{"cell_type": "code", "source": "", "metadata": {"subtask": {"id": "a", "name": "A", "purpose": "p"}}},
                      {"cell_type": "code", "source": "", "metadata": {"subtask": {"id": "b", "name": "B", "purpose": ""}}}],
            "metadata": {"execution": {"hypergraph": {"hyperedges": [{"tail": "a", "head": "b"}]}}}
        }));
        let (text, h): (String, LuaTable) =
            lua.load("local r, nb = ...; return r.mermaid(nb), r.hypergraph(nb)").call((report, nb)).unwrap();
        assert!(text.contains("c0[\"a: A<br/>p\"]") && text.contains("c0 --> c1"), "{text}");
        assert_eq!(h.get::<LuaTable>("cells").unwrap().raw_len(), 2);
    }
}
