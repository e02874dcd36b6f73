//! experiment_report.md: every number computed here from the metrics, the LLM's narrative appended as
//! given. Without a narrative the report is still complete and says why the narrative is missing.
//! Nothing non-finite is ever printed: missing values are "—" with the reason in the notes.

use serde_json::{json, Map, Value};

use super::format::{mean_sd, num, pval, DASH};
use super::metrics::{display_order, Metrics};
use super::stats::{self, summarize, Basis, Comparison, Direction, ALPHA};

/// What a report shows beyond the metrics.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The primary metric (None: no Δ%, tests or winner).
    pub metric: Option<String>,
    /// Direction and baseline, as the caller decided them (None: no Δ%, tests or winner).
    pub basis: Option<Basis>,
    pub narrative: Option<String>,
    /// Why there is no narrative (the LLM failed, ...).
    pub narrative_error: Option<String>,
    /// (path as linked from the report, title)
    pub plots: Vec<(String, String)>,
    pub title: Option<String>,
}

fn pval_marked(p: Option<f64>) -> String {
    match p {
        Some(p) if p.is_finite() => format!("{}{}", pval(p), if p < ALPHA { " *" } else { "" }),
        _ => DASH.into(),
    }
}

/// Text safe inside a markdown table cell or emphasis.
pub fn md_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '|' | '*' | '`' | '<' | '>' | '[' | ']' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            _ => out.push(c),
        }
    }
    out
}

fn link_target(path: &str) -> String {
    if path.contains([' ', '(', ')', '<', '>']) {
        format!("<{}>", path.replace('<', "%3C").replace('>', "%3E"))
    } else {
        path.to_string()
    }
}

fn fold_range(folds: &[String]) -> String {
    match folds.len() {
        0 => "none".into(),
        1 => folds[0].clone(),
        2 => format!("{}, {}", folds[0], folds[1]),
        n => format!("{} … {}", folds[0], folds[n - 1]),
    }
}

/// Drop a fence the LLM wrapped its whole answer in (```markdown ... ```).
pub fn strip_outer_fence(text: &str) -> String {
    let t = text.trim();
    if let Some(rest) = t.strip_prefix("```") {
        if let Some(body) = rest.strip_suffix("```") {
            let body = match body.find('\n') {
                Some(i) if body[..i].trim().chars().all(|c| c.is_ascii_alphanumeric()) => &body[i + 1..],
                _ => body,
            };
            if !body.contains("```") {
                return body.trim().to_string();
            }
        }
    }
    t.to_string()
}

/// The comparison a report is built on: Err says why there is none.
pub fn comparison(metrics: &Metrics, opts: &Options) -> Result<Comparison, String> {
    let metric = opts.metric.as_deref().ok_or("no primary metric was given")?;
    let basis = opts.basis.as_ref().ok_or("there are no models")?;
    stats::compare(metrics, metric, basis)
}

/// The full experiment_report.md text.
pub fn render(metrics: &Metrics, opts: &Options) -> String {
    let cmp = comparison(metrics, opts);
    let mut o = String::new();
    let title = opts.title.clone().unwrap_or_else(|| "Experiment report".into());
    o.push_str(&format!("# {}\n\n", title.replace('\n', " ")));

    let names = display_order(&metrics.metric_names());
    let n_folds = metrics.folds.len();
    match &cmp {
        Ok(c) => {
            let dir = match c.direction {
                Direction::Lower => "lower is better",
                Direction::Higher => "higher is better",
            };
            o.push_str(&format!("- **Primary metric:** {} ({dir})\n", md_escape(&c.metric)));
            match c.best.as_ref().and_then(|b| c.entry(b)) {
                Some(e) => {
                    let over = match e.summary.source {
                        "folds" => format!(" over {} fold{}", e.summary.n, if e.summary.n == 1 { "" } else { "s" }),
                        _ => String::new(),
                    };
                    o.push_str(&format!(
                        "- **Winner:** {} — {} {}{over}\n",
                        md_escape(&e.name),
                        md_escape(&c.metric),
                        mean_sd(e.summary.mean.unwrap_or(f64::NAN), e.summary.sd)
                    ));
                }
                None => o.push_str(&format!("- **Winner:** {DASH} (no model has a finite {})\n", md_escape(&c.metric))),
            }
            o.push_str(&format!("- **Baseline:** {}\n", md_escape(&c.baseline)));
        }
        Err(e) => {
            if let Some(m) = &opts.metric {
                o.push_str(&format!("- **Primary metric:** {}\n", md_escape(m)));
            }
            o.push_str(&format!("- **Winner:** {DASH} ({})\n", md_escape(e)));
        }
    }
    if let Some(w) = &metrics.winner {
        if cmp.as_ref().ok().and_then(|c| c.best.as_ref()) != Some(w) {
            o.push_str(&format!("- **Winner declared by the notebook:** {}\n", md_escape(w)));
        }
    }
    o.push_str(&format!(
        "- **Folds:** {}\n",
        if n_folds == 0 {
            "none (single values)".to_string()
        } else {
            format!("{n_folds} ({})", md_escape(&fold_range(&metrics.folds)))
        }
    ));
    o.push('\n');

    // results table
    o.push_str("## Results\n\n");
    let primary = cmp.as_ref().ok().map(|c| c.metric.clone());
    let mut header = vec!["Model".to_string()];
    header.extend(names.iter().map(|n| md_escape(n)));
    if let Some(p) = &primary {
        header.push(format!("Δ% {} vs baseline", md_escape(p)));
        header.push("p (paired t)".into());
    }
    o.push_str(&format!("| {} |\n", header.join(" | ")));
    o.push_str(&format!("|---|{}\n", "---:|".repeat(header.len() - 1)));
    for model in &metrics.models {
        let mut row = Vec::new();
        let mut label = md_escape(&model.name);
        if let Ok(c) = &cmp {
            if c.best.as_deref() == Some(&model.name) {
                label = format!("**{label}** (winner)");
            }
            if c.baseline == model.name {
                label.push_str(" (baseline)");
            }
        }
        row.push(label);
        for n in &names {
            let s = summarize(model, n);
            row.push(match s.mean {
                Some(m) => mean_sd(m, s.sd),
                None => DASH.into(),
            });
        }
        if let Ok(c) = &cmp {
            let e = c.entry(&model.name).expect("every model is compared");
            if e.is_baseline {
                row.push("baseline".into());
                row.push(DASH.into());
            } else {
                row.push(match e.delta_pct {
                    Some(d) if d.is_finite() => format!("{d:+.2}%"),
                    _ => DASH.into(),
                });
                row.push(pval_marked(e.p_value()));
            }
        }
        o.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    o.push('\n');
    let mut legend = String::from("Mean ± sample SD over folds; a single value where a model reports no folds.");
    if let Ok(c) = &cmp {
        legend.push_str(&format!(
            " Δ%: change of {m} against the baseline {b}, positive = better{flip}. p: two-sided paired t-test \
             against the baseline over the folds both report; * p < {ALPHA}.",
            m = md_escape(&c.metric),
            b = md_escape(&c.baseline),
            flip = if c.direction == Direction::Lower { " (sign flipped: lower is better)" } else { "" },
        ));
    }
    legend.push_str(&format!(" {DASH}: not available (see the notes)."));
    o.push_str(&legend);
    o.push_str("\n\n");

    // tests section
    let mut notes: Vec<String> = Vec::new();
    if let Ok(c) = &cmp {
        let others: Vec<_> = c.entries.iter().filter(|e| !e.is_baseline).collect();
        if others.iter().any(|e| e.ttest.is_some() || e.wilcoxon_p.is_some()) {
            o.push_str(&format!("### Tests against the baseline ({})\n\n", md_escape(&c.metric)));
            o.push_str(
                "| Model | Folds | Mean difference [95% CI] | Cohen's d_z | p (t) | p (Holm) | p (Wilcoxon) |\n",
            );
            o.push_str("|---|---:|---|---:|---:|---:|---:|\n");
            for e in &others {
                let (diff, dz) = match &e.ttest {
                    Some(t) => (
                        format!("{} [{}, {}]", num(t.mean_diff), num(t.ci95.0), num(t.ci95.1)),
                        format!("{:.2}", t.cohens_dz),
                    ),
                    None => (DASH.into(), DASH.into()),
                };
                o.push_str(&format!(
                    "| {} | {} | {diff} | {dz} | {} | {} | {} |\n",
                    md_escape(&e.name),
                    e.n_paired,
                    pval_marked(e.p_value()),
                    pval_marked(e.holm_p),
                    match (e.wilcoxon_p, e.wilcoxon_method) {
                        (Some(p), Some(m)) => format!("{} ({})", pval_marked(Some(p)), m.as_str()),
                        _ => DASH.into(),
                    },
                ));
            }
            let tested = others.iter().filter(|e| e.ttest.is_some()).count();
            o.push_str(&format!(
                "\nDifferences are model − baseline in {m} units. Holm's correction is across the {tested} model{s} \
                 tested. Wilcoxon: two-sided signed-rank test, zero differences dropped (exact distribution \
                 without ties; all sign flips with ties or zeros up to 13 folds; else the normal approximation).\n\n",
                m = md_escape(&c.metric),
                s = if tested == 1 { "" } else { "s" },
            ));
            // an exact Wilcoxon p cannot go below 2/2^n: with 5 folds or fewer it can never reach 0.05
            if let Some(n) = others.iter().filter(|e| e.wilcoxon_p.is_some()).map(|e| e.n_paired).min() {
                if (1..=5).contains(&n) {
                    o.push_str(&format!(
                        "With {n} folds the smallest two-sided Wilcoxon p possible is {}, so it cannot reach {ALPHA}; \
                         the t-test is the one to read.\n\n",
                        pval(2.0 / 2f64.powi(n as i32))
                    ));
                }
            }
        }
        for e in &c.entries {
            if let Some(r) = &e.delta_reason {
                notes.push(format!("{}: no Δ% — {}.", md_escape(&e.name), md_escape(r)));
            }
            if !e.is_baseline {
                if let Some(r) = &e.no_test_reason {
                    notes.push(format!("{}: no t-test — {}.", md_escape(&e.name), md_escape(r)));
                }
            }
            for n in &e.notes {
                notes.push(format!("{}: {}.", md_escape(&e.name), md_escape(n)));
            }
        }
    }
    for w in &metrics.warnings {
        notes.push(format!("metrics.json: {}.", md_escape(w)));
    }
    if !notes.is_empty() {
        o.push_str("### Notes\n\n");
        for n in &notes {
            o.push_str(&format!("- {n}\n"));
        }
        o.push('\n');
    }

    if !opts.plots.is_empty() {
        o.push_str("## Plots\n\n");
        for (path, title) in &opts.plots {
            o.push_str(&format!("![{}]({})\n\n", md_escape(title), link_target(path)));
        }
    }

    o.push_str("## Narrative\n\n");
    match (opts.narrative.as_deref().map(strip_outer_fence).filter(|n| !n.trim().is_empty()), &opts.narrative_error) {
        (Some(n), _) => {
            o.push_str(&n);
            o.push('\n');
        }
        (None, Some(err)) => o.push_str(&format!(
            "_The narrative is missing: {}. Every number above is computed from metrics.json; the report is \
             complete without it._\n",
            md_escape(err.trim().trim_end_matches('.'))
        )),
        (None, None) => o.push_str(
            "_No narrative was written for this report. Every number above is computed from metrics.json._\n",
        ),
    }
    o
}

/// A short report for a trial whose metrics could not be read.
pub fn render_unavailable(title: Option<&str>, why: &str, opts: &Options) -> String {
    let mut o = format!("# {}\n\n", title.unwrap_or("Experiment report"));
    o.push_str(&format!("**No metrics:** {}.\n\n", md_escape(why.trim_end_matches('.'))));
    o.push_str("## Narrative\n\n");
    match (&opts.narrative, &opts.narrative_error) {
        (Some(n), _) if !n.trim().is_empty() => o.push_str(&format!("{}\n", strip_outer_fence(n))),
        (_, Some(e)) => o.push_str(&format!("_The narrative is missing: {}._\n", md_escape(e.trim()))),
        _ => o.push_str("_No narrative was written for this report._\n"),
    }
    o
}

/// Round to 6 significant digits for the LLM's reading; None for non-finite.
fn r6(x: f64) -> Value {
    if !x.is_finite() {
        return Value::Null;
    }
    if x == 0.0 {
        return json!(0.0);
    }
    let mag = x.abs().log10().floor() as i32;
    let f = 10f64.powi(5 - mag);
    let y = (x * f).round() / f;
    serde_json::Number::from_f64(y).map(Value::Number).unwrap_or(Value::Null)
}

/// The computed numbers as a JSON document for the narrative prompt's `${metrics_json}`.
/// The most models the narrative request describes: it is sent to a model with a context window, and a
/// sweep of 10,000 models made it 6 MB. Past this the baseline, the winners and the best by the primary
/// metric are kept and the rest counted in `models_omitted`.
pub const NARRATIVE_MAX_MODELS: usize = 25;
/// The most warnings it carries (the rest counted in `warnings_omitted`).
pub const NARRATIVE_MAX_WARNINGS: usize = 20;

/// Which models the narrative describes (names), at most NARRATIVE_MAX_MODELS: the baseline, the best,
/// the notebook's declared winner, then the best by the primary metric (the first ones without one).
fn narrative_models(metrics: &Metrics, cmp: &Result<Comparison, String>) -> std::collections::HashSet<String> {
    let mut keep = std::collections::HashSet::new();
    if metrics.models.len() <= NARRATIVE_MAX_MODELS {
        keep.extend(metrics.models.iter().map(|m| m.name.clone()));
        return keep;
    }
    let mut ranked: Vec<String> = Vec::new();
    if let Ok(c) = cmp {
        keep.insert(c.baseline.clone());
        keep.extend(c.best.clone());
        let mut scored: Vec<(&str, f64)> = c
            .entries
            .iter()
            .filter_map(|e| e.summary.mean.filter(|x| x.is_finite()).map(|m| (e.name.as_str(), m)))
            .collect();
        scored.sort_by(|a, b| match c.direction {
            Direction::Lower => a.1.total_cmp(&b.1),
            Direction::Higher => b.1.total_cmp(&a.1),
        });
        ranked.extend(scored.into_iter().map(|(n, _)| n.to_string()));
    }
    keep.extend(metrics.winner.clone().filter(|w| metrics.models.iter().any(|m| &m.name == w)));
    ranked.extend(metrics.models.iter().map(|m| m.name.clone()));
    for n in ranked {
        if keep.len() >= NARRATIVE_MAX_MODELS {
            break;
        }
        keep.insert(n);
    }
    keep
}

pub fn narrative_input(metrics: &Metrics, opts: &Options) -> Value {
    let cmp = comparison(metrics, opts);
    let names = display_order(&metrics.metric_names());
    let keep = narrative_models(metrics, &cmp);
    let mut models = Map::new();
    for model in metrics.models.iter().filter(|m| keep.contains(&m.name)) {
        let mut mm = Map::new();
        for n in &names {
            let s = summarize(model, n);
            if let Some(mean) = s.mean {
                let mut v = Map::new();
                v.insert("mean".into(), r6(mean));
                if let Some(sd) = s.sd {
                    v.insert("sd".into(), r6(sd));
                }
                v.insert("n".into(), json!(s.n));
                mm.insert(n.clone(), Value::Object(v));
            }
        }
        models.insert(model.name.clone(), Value::Object(mm));
    }
    let mut out = Map::new();
    match &cmp {
        Ok(c) => {
            out.insert("primary_metric".into(), json!(c.metric));
            out.insert(
                "direction".into(),
                json!(if c.direction == Direction::Lower { "lower is better" } else { "higher is better" }),
            );
            out.insert("baseline".into(), json!(c.baseline));
            out.insert("winner".into(), json!(c.best));
        }
        Err(e) => {
            out.insert("primary_metric".into(), json!(opts.metric));
            out.insert("primary_metric_problem".into(), json!(e));
        }
    }
    if metrics.winner.is_some() {
        out.insert("winner_declared_by_notebook".into(), json!(metrics.winner));
    }
    out.insert("folds".into(), json!(metrics.folds.len()));
    out.insert("models".into(), Value::Object(models));
    if keep.len() < metrics.models.len() {
        out.insert("models_omitted".into(), json!(metrics.models.len() - keep.len()));
        out.insert(
            "models_note".into(),
            json!(format!(
                "{} models were evaluated; the {} shown are the baseline, the winner and the best by the primary \
                 metric, the other {} are left out here (they are in the report's table)",
                metrics.models.len(),
                keep.len(),
                metrics.models.len() - keep.len()
            )),
        );
    }
    if let Ok(c) = &cmp {
        let mut tests = Map::new();
        for e in c.entries.iter().filter(|e| !e.is_baseline && keep.contains(&e.name)) {
            let mut t = Map::new();
            if let Some(d) = e.delta_pct {
                t.insert("delta_pct".into(), r6(d));
            }
            t.insert("folds_paired".into(), json!(e.n_paired));
            if let Some(tt) = &e.ttest {
                t.insert("test".into(), json!("paired t"));
                t.insert("p_value".into(), r6(tt.p_value));
                t.insert("significant".into(), json!(tt.p_value < ALPHA));
                t.insert("mean_difference".into(), r6(tt.mean_diff));
                t.insert("ci95".into(), json!([r6(tt.ci95.0), r6(tt.ci95.1)]));
                t.insert("cohens_dz".into(), r6(tt.cohens_dz));
            }
            if let Some(h) = e.holm_p {
                t.insert("holm_p".into(), r6(h));
            }
            if let Some(w) = e.wilcoxon_p {
                t.insert("wilcoxon_p".into(), r6(w));
            }
            if let Some(r) = &e.no_test_reason {
                t.insert("no_test_reason".into(), json!(r));
            }
            if !e.notes.is_empty() {
                t.insert("notes".into(), json!(e.notes));
            }
            tests.insert(e.name.clone(), Value::Object(t));
        }
        out.insert("tests_vs_baseline".into(), Value::Object(tests));
    }
    if !metrics.warnings.is_empty() {
        let shown = &metrics.warnings[..metrics.warnings.len().min(NARRATIVE_MAX_WARNINGS)];
        out.insert("warnings".into(), json!(shown));
        if shown.len() < metrics.warnings.len() {
            out.insert("warnings_omitted".into(), json!(metrics.warnings.len() - shown.len()));
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short_and_never_nan() {
        assert_eq!(num(0.123456), "0.1235");
        assert_eq!(num(12.3456), "12.35");
        assert_eq!(num(0.0335), "0.03350");
        assert_eq!(num(f64::NAN), DASH);
        assert_eq!(num(1.5e-7), "1.500e-7");
        assert_eq!(mean_sd(0.0335, Some(0.0012)), "0.03350 ± 0.00120");
        assert_eq!(mean_sd(0.5, Some(0.0000012)), "0.5000 ± 0.0000012");
        assert_eq!(pval(0.013559), "0.0136");
        assert_eq!(pval(0.0625), "0.0625");
        assert_eq!(pval(0.79896), "0.799");
        assert_eq!(pval(0.0020834), "0.00208");
        assert_eq!(pval(0.00045), "4.5e-4");
    }

    #[test]
    fn an_outer_markdown_fence_is_dropped() {
        assert_eq!(strip_outer_fence("```markdown\n# Hi\ntext\n```"), "# Hi\ntext");
        assert_eq!(strip_outer_fence("text ```code``` more"), "text ```code``` more");
    }
}

#[cfg(test)]
mod odd_inputs {
    use super::*;
    use crate::report::metrics::normalize;

    /// Whatever a notebook writes, reading, comparing and rendering never panic and never print NaN.
    #[test]
    fn odd_metrics_never_crash_or_print_nan() {
        let docs = [
            "[]",
            r#""text""#,
            "{}",
            r#"{"models": []}"#,
            r#"{"models": {"A": 5, "B": null, "C": "x"}}"#,
            r#"{"models": {"A": {"per_fold": [1, 2, 3]}}}"#,
            r#"{"models": {"A": {"per_fold": {"f": 1}}, "B": {"aggregate": {"MSE": NaN}}}}"#,
            r#"{"models": {"A": {"per_fold": [{"MSE": NaN}, {"MSE": Infinity}]}, "B": {"per_fold": [{"MSE": 1}, {"MSE": 2}]}}}"#,
            r#"{"models": {"A": {"per_fold": [{"MSE": 1}, {"MSE": 1}]}, "B": {"per_fold": [{"MSE": 1}, {"MSE": 1}]}}}"#,
            r#"{"models": {"base": {"aggregate": {"MSE": 0}}, "B": {"aggregate": {"MSE": 1}}}}"#,
            r#"{"models": {"A": {"per_fold": {"fold_1": {"MSE": 1e308}, "fold_2": {"MSE": -1e308}}}, "base": {"per_fold": {"fold_1": {"MSE": 1e-308}, "fold_2": {"MSE": 5e-324}}}}}"#,
            r#"{"models": [{"per_fold": []}, {"name": 3}]}"#,
            r#"{"models": {"A": {"per_fold": [{"MSE": 1e299}, {"MSE": -1e299}]}, "B": {"per_fold": [{"MSE": 1e-300}, {"MSE": 2e-300}]}}}"#,
            r#"{"models": {"A": {"per_fold": [{"MSE": 1.0}, {"MSE": 1.0000000000000002}]}}}"#,
            r#"{"winner": {"name": "A"}, "A": {"MSE": [1, null, "2", true]}, "B": {"MSE": [3, 4]}}"#,
            r#"{"0": {"A": {"MSE": 1}}, "1": {"A": {"MSE": 2}, "B": {"MSE": 3}}}"#,
        ];
        for d in docs {
            let v = crate::pyjson::parse(d).unwrap();
            let Ok(m) = normalize(&v) else { continue };
            for (metric, direction) in [("MSE", Direction::Lower), ("PCC", Direction::Higher)] {
                let first = m.models[0].name.clone();
                let basis = Basis { direction, direction_source: "test".into(), baseline: first.clone() };
                let opts = Options { metric: Some(metric.into()), basis: Some(basis), ..Default::default() };
                let text = render(&m, &opts).replace("NaN or infinite", "");
                assert!(!text.contains("NaN") && !text.contains("inf"), "{d}:\n{text}");
                let j = crate::pyjson::to_string(&narrative_input(&m, &opts), false).replace("NaN or infinite", "");
                assert!(!j.contains("NaN"), "{d}: {j}");
                let from = vec![stats::ScoreSource::Aggregate, stats::ScoreSource::Folds];
                let _ = stats::score(&m, metric, &stats::ScoreRule { model: first, from });
                let _ = crate::report::plot::folds_svg(&m, metric, Direction::Lower, None);
            }
        }
    }
}
