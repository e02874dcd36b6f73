//! Statistics of a trial's models against its baseline: mean ± sample SD over folds, Δ% of a metric, the
//! paired t-test (p-values as scipy's `ttest_rel`), the Wilcoxon signed-rank test (as scipy's `wilcoxon`
//! with its defaults), Holm's correction across the compared models, Cohen's d_z and a 95% confidence
//! interval of the mean paired difference.
//!
//! Never produces NaN for a reader: whatever cannot be computed is `None` with a reason in words.

use statrs::distribution::{ContinuousCDF, StudentsT};
use statrs::function::beta::beta_reg;
use statrs::function::erf::erfc;

use super::metrics::{Metrics, Model};

/// Significance level used for `significant` and the report's marks.
pub const ALPHA: f64 = 0.05;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Lower,
    Higher,
}

impl Direction {
    /// "lower"/"min"/"minimize"/"lower_is_better"/"asc" and the "higher" counterparts.
    pub fn parse(s: &str) -> Option<Direction> {
        match s.trim().to_ascii_lowercase().replace(['-', ' '], "_").as_str() {
            "lower" | "low" | "min" | "minimize" | "minimise" | "lower_is_better" | "less" | "asc" | "down" => {
                Some(Direction::Lower)
            }
            "higher" | "high" | "max" | "maximize" | "maximise" | "higher_is_better" | "greater" | "desc" | "up" => {
                Some(Direction::Higher)
            }
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Lower => "lower",
            Direction::Higher => "higher",
        }
    }

    /// Is `a` better than `b`?
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Direction::Lower => a < b,
            Direction::Higher => a > b,
        }
    }
}

/// One model's value of one metric: over its folds, else its aggregate.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub mean: Option<f64>,
    /// Sample SD (ddof = 1); None for fewer than 2 finite values.
    pub sd: Option<f64>,
    /// Finite values used.
    pub n: usize,
    /// Values left out because they were NaN or infinite.
    pub dropped: usize,
    /// "folds", "aggregate" or "none".
    pub source: &'static str,
}

pub fn summarize(model: &Model, metric: &str) -> Summary {
    let vals = model.fold_values(metric);
    if !vals.is_empty() {
        let finite: Vec<f64> = vals.iter().map(|(_, v)| *v).filter(|v| v.is_finite()).collect();
        let (mean, sd) = mean_sd(&finite);
        return Summary { mean, sd, n: finite.len(), dropped: vals.len() - finite.len(), source: "folds" };
    }
    match model.aggregate_value(metric) {
        Some(v) if v.is_finite() => Summary { mean: Some(v), sd: None, n: 1, dropped: 0, source: "aggregate" },
        Some(_) => Summary { mean: None, sd: None, n: 0, dropped: 1, source: "aggregate" },
        None => Summary { mean: None, sd: None, n: 0, dropped: 0, source: "none" },
    }
}

pub fn mean_sd(x: &[f64]) -> (Option<f64>, Option<f64>) {
    if x.is_empty() {
        return (None, None);
    }
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    if x.len() < 2 {
        return (Some(mean), None);
    }
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
    (Some(mean), Some(var.sqrt()))
}

/// A paired t-test on differences `d` (= model − baseline per fold).
#[derive(Debug, Clone, PartialEq)]
pub struct TTest {
    pub n: usize,
    pub mean_diff: f64,
    pub sd_diff: f64,
    pub t: f64,
    pub df: f64,
    /// Two-sided.
    pub p_value: f64,
    /// 95% confidence interval of the mean difference.
    pub ci95: (f64, f64),
    /// Cohen's d_z: mean difference / SD of the differences.
    pub cohens_dz: f64,
}

/// scipy.stats.ttest_rel(model, baseline) on the differences. Err says why no test is possible.
/// `scale` is the size of the values compared: an SD of the differences below 1e-12 of it counts as
/// zero (floating-point noise in "identical" differences would otherwise give a meaningless p ≈ 0).
pub fn ttest_paired(d: &[f64], scale: f64) -> Result<TTest, String> {
    let n = d.len();
    if n < 2 {
        return Err(format!("only {n} matching fold{} (a paired test needs 2)", if n == 1 { "" } else { "s" }));
    }
    let (mean, sd) = mean_sd(d);
    let (mean, sd) = (mean.unwrap_or(0.0), sd.unwrap_or(0.0));
    if !mean.is_finite() || !sd.is_finite() {
        return Err("the differences are too large to compute (overflow)".into());
    }
    let tol = 1e-12 * scale.abs().max(mean.abs()).max(f64::MIN_POSITIVE);
    if d.iter().all(|x| *x == 0.0) {
        return Err("identical to the baseline in every fold".into());
    }
    if sd <= tol {
        return Err("the difference to the baseline is the same in every fold (zero variance)".into());
    }
    let df = (n - 1) as f64;
    let se = sd / (n as f64).sqrt();
    let t = mean / se;
    // two-sided p = I_{df/(df+t²)}(df/2, 1/2): no 1 − cdf cancellation for large |t|
    let p = beta_reg(df / 2.0, 0.5, df / (df + t * t)).clamp(0.0, 1.0);
    let q = StudentsT::new(0.0, 1.0, df).map_err(|e| e.to_string())?.inverse_cdf(0.975);
    Ok(TTest {
        n,
        mean_diff: mean,
        sd_diff: sd,
        t,
        df,
        p_value: p,
        ci95: (mean - q * se, mean + q * se),
        cohens_dz: mean / sd,
    })
}

/// How the Wilcoxon p-value was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WilcoxonMethod {
    /// The exact null distribution (no ties, no zeros, n ≤ 50).
    Exact,
    /// All 2^n sign flips enumerated (ties or zeros, n ≤ 13): scipy's deterministic permutation test.
    Permutation,
    /// Normal approximation with tie correction, no continuity correction (n > 50, or ties/zeros with n > 13).
    Normal,
}

impl WilcoxonMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            WilcoxonMethod::Exact => "exact",
            WilcoxonMethod::Permutation => "permutation",
            WilcoxonMethod::Normal => "normal approximation",
        }
    }
}

/// Two-sided Wilcoxon signed-rank test of differences `d`, as scipy.stats.wilcoxon(d) with its defaults
/// (zero_method="wilcox": zero differences are dropped from the ranking; method="auto"; correction=False).
pub fn wilcoxon(d: &[f64]) -> Result<(f64, WilcoxonMethod), String> {
    let n_all = d.len();
    if n_all == 0 {
        return Err("no matching folds".into());
    }
    let nonzero: Vec<f64> = d.iter().copied().filter(|x| *x != 0.0).collect();
    let n_zero = n_all - nonzero.len();
    if nonzero.is_empty() {
        return Err("identical to the baseline in every fold".into());
    }
    let (ranks, tie_sizes) = rank_abs(&nonzero);
    let r_plus: f64 = nonzero.iter().zip(&ranks).filter(|(x, _)| **x > 0.0).map(|(_, r)| *r).sum();
    let has_ties = tie_sizes.iter().any(|t| *t > 1);
    let count = nonzero.len();
    if n_all <= 50 && !has_ties && n_zero == 0 {
        let pmf = wilcoxon_pmf(count);
        let mean = count as f64 * (count as f64 + 1.0) / 4.0;
        // as scipy's WilcoxonDistribution: sum the shorter tail, take the complement for the longer
        let cdf = |k: i64| if (k as f64) <= mean { cdf_raw(&pmf, k) } else { 1.0 - sf_raw(&pmf, k + 1) };
        let sf = |k: i64| if (k as f64) <= mean { sf_raw(&pmf, k) } else { 1.0 - cdf_raw(&pmf, k - 1) };
        let p = 2.0 * sf(r_plus.floor() as i64).min(cdf(r_plus.ceil() as i64));
        return Ok((p.clamp(0.0, 1.0), WilcoxonMethod::Exact));
    }
    if n_all <= 13 {
        // every sign flip of the nonzero differences (zeros flip to themselves: each flip pattern of
        // the n_zero zeros repeats the same statistic, which scales both counts equally)
        let m = count;
        let total = 1u64 << m;
        let eps = f64::EPSILON * 100.0 * r_plus.abs();
        let (mut le, mut ge) = (0u64, 0u64);
        for mask in 0..total {
            let s: f64 = (0..m).filter(|i| mask & (1 << i) != 0).map(|i| ranks[i]).sum();
            if s <= r_plus + eps {
                le += 1;
            }
            if s >= r_plus - eps {
                ge += 1;
            }
        }
        let p = 2.0 * (le.min(ge) as f64) / total as f64;
        return Ok((p.clamp(0.0, 1.0), WilcoxonMethod::Permutation));
    }
    let c = count as f64;
    let mn = c * (c + 1.0) * 0.25;
    let tie_correct: f64 = tie_sizes.iter().map(|t| (*t as f64).powi(3) - *t as f64).sum();
    let se = ((c * (c + 1.0) * (2.0 * c + 1.0) - tie_correct / 2.0) / 24.0).sqrt();
    if se <= 0.0 {
        return Err("no variation in the ranks".into());
    }
    let z = (r_plus - mn) / se;
    let p = erfc(z.abs() / std::f64::consts::SQRT_2); // = 2 · sf(|z|)
    Ok((p.clamp(0.0, 1.0), WilcoxonMethod::Normal))
}

fn sf_raw(pmf: &[f64], k: i64) -> f64 {
    if k <= 0 {
        return 1.0;
    }
    pmf.iter().skip(k as usize).sum()
}

fn cdf_raw(pmf: &[f64], k: i64) -> f64 {
    if k < 0 {
        return 0.0;
    }
    pmf.iter().take(k as usize + 1).sum()
}

/// The null distribution of the signed-rank statistic r+ for n untied, nonzero differences.
fn wilcoxon_pmf(n: usize) -> Vec<f64> {
    let max = n * (n + 1) / 2;
    let mut counts = vec![0u64; max + 1];
    counts[0] = 1;
    for k in 1..=n {
        for s in (k..=max).rev() {
            counts[s] += counts[s - k];
        }
    }
    let total = 2f64.powi(n as i32);
    counts.iter().map(|c| *c as f64 / total).collect()
}

/// Average ranks of |x| (1-based) and the sizes of the tie groups.
fn rank_abs(x: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|a, b| x[*a].abs().total_cmp(&x[*b].abs()));
    let mut ranks = vec![0.0; x.len()];
    let mut ties = Vec::new();
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]].abs() == x[idx[i]].abs() {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[idx[k]] = r;
        }
        ties.push(j - i + 1);
        i = j + 1;
    }
    (ranks, ties)
}

/// Holm's step-down adjusted p-values, in the input order.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|a, b| p[*a].total_cmp(&p[*b]));
    let mut out = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        let adj = ((m - rank) as f64 * p[i]).min(1.0);
        running = running.max(adj);
        out[i] = running;
    }
    out
}

/// One model compared with the baseline on one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    pub is_baseline: bool,
    pub summary: Summary,
    /// Improvement over the baseline in percent (positive = better, whatever the direction).
    pub delta_pct: Option<f64>,
    pub delta_reason: Option<String>,
    /// Folds both report with finite values.
    pub n_paired: usize,
    pub ttest: Option<TTest>,
    pub wilcoxon_p: Option<f64>,
    pub wilcoxon_method: Option<WilcoxonMethod>,
    pub wilcoxon_reason: Option<String>,
    pub holm_p: Option<f64>,
    pub no_test_reason: Option<String>,
    /// Things a reader should know (folds left out, NaN values dropped).
    pub notes: Vec<String>,
}

impl Entry {
    pub fn p_value(&self) -> Option<f64> {
        self.ttest.as_ref().map(|t| t.p_value)
    }
    pub fn significant(&self) -> Option<bool> {
        self.p_value().map(|p| p < ALPHA)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub metric: String,
    pub direction: Direction,
    /// Who chose the direction, as the caller says ("option", "inferred from the name"...).
    pub direction_source: String,
    pub baseline: String,
    /// The model with the best mean of the metric.
    pub best: Option<String>,
    pub entries: Vec<Entry>,
}

impl Comparison {
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

fn fold_list(v: &[(String, f64)]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    let names: Vec<&str> = v.iter().map(|(f, _)| f.as_str()).collect();
    if names.len() > 6 {
        format!("{} … {} ({} folds)", names[0], names[names.len() - 1], names.len())
    } else {
        names.join(", ")
    }
}

/// Which way a metric is better and which model is the baseline: decided by the caller (the Lua
/// policy, `stdlib/report_policy.lua`, or the script's options), never here.
#[derive(Debug, Clone, PartialEq)]
pub struct Basis {
    pub direction: Direction,
    /// Who chose the direction, shown as `direction_source`.
    pub direction_source: String,
    pub baseline: String,
}

/// Compare every model with the baseline on `metric`. Err when the metric is in no model or the
/// baseline is not a model.
pub fn compare(metrics: &Metrics, metric: &str, basis: &Basis) -> Result<Comparison, String> {
    let Some(metric) = metrics.resolve_metric(metric) else {
        let names = metrics.metric_names();
        return Err(format!(
            "no model reports the metric '{metric}' (metrics present: {})",
            if names.is_empty() { "none".into() } else { names.join(", ") }
        ));
    };
    let names: Vec<String> = metrics.models.iter().map(|m| m.name.clone()).collect();
    let baseline = basis.baseline.clone();
    if !names.contains(&baseline) {
        return Err(format!("the baseline '{baseline}' is not one of the models ({})", names.join(", ")));
    }
    let (direction, direction_source) = (basis.direction, basis.direction_source.clone());
    let base_model = metrics.model(&baseline).expect("baseline is a model");
    let base_sum = summarize(base_model, &metric);
    let base_folds = base_model.fold_values(&metric);

    let mut entries = Vec::new();
    for model in &metrics.models {
        let summary = summarize(model, &metric);
        let mut e = Entry {
            name: model.name.clone(),
            is_baseline: model.name == baseline,
            summary: summary.clone(),
            delta_pct: None,
            delta_reason: None,
            n_paired: 0,
            ttest: None,
            wilcoxon_p: None,
            wilcoxon_method: None,
            wilcoxon_reason: None,
            holm_p: None,
            no_test_reason: None,
            notes: Vec::new(),
        };
        if summary.dropped > 0 {
            e.notes.push(format!(
                "{} {metric} value{} of {} {} NaN or infinite and left out",
                summary.dropped,
                if summary.dropped == 1 { "" } else { "s" },
                model.name,
                if summary.dropped == 1 { "was" } else { "were" }
            ));
        }
        if e.is_baseline {
            e.delta_pct = summary.mean.map(|_| 0.0);
            e.no_test_reason = Some("this is the baseline".into());
            entries.push(e);
            continue;
        }
        // Δ%
        match (summary.mean, base_sum.mean) {
            (_, None) => e.delta_reason = Some(format!("the baseline {baseline} has no finite {metric}")),
            (None, _) => e.delta_reason = Some(format!("{} has no finite {metric}", model.name)),
            (Some(_), Some(0.0)) => e.delta_reason = Some(format!("the baseline's mean {metric} is 0")),
            (Some(c), Some(b)) => {
                let raw = (c - b) / b.abs() * 100.0;
                e.delta_pct = Some(match direction {
                    Direction::Higher => raw,
                    Direction::Lower => -raw,
                });
            }
        }
        // paired tests over matching folds
        let mine = model.fold_values(&metric);
        let reason = if mine.is_empty() {
            Some(if model.aggregate_value(&metric).is_some() {
                format!("{} reports only an aggregate {metric}, no per-fold values", model.name)
            } else {
                format!("{} has no per-fold {metric} values", model.name)
            })
        } else if base_folds.is_empty() {
            Some(format!("the baseline {baseline} has no per-fold {metric} values"))
        } else {
            None
        };
        if let Some(r) = reason {
            e.no_test_reason = Some(r.clone());
            e.wilcoxon_reason = Some(r);
            entries.push(e);
            continue;
        }
        let mut pairs = Vec::new();
        let mut nonfinite = 0;
        for (f, a) in &mine {
            if let Some((_, b)) = base_folds.iter().find(|(bf, _)| bf == f) {
                if a.is_finite() && b.is_finite() {
                    pairs.push((*a, *b));
                } else {
                    nonfinite += 1;
                }
            }
        }
        let matched = pairs.len() + nonfinite;
        let only_mine = mine.iter().filter(|(f, _)| !base_folds.iter().any(|(b, _)| b == f)).count();
        let only_base = base_folds.iter().filter(|(f, _)| !mine.iter().any(|(m, _)| m == f)).count();
        if matched == 0 {
            let r = format!(
                "no matching folds ({} has {}; the baseline {baseline} has {})",
                model.name,
                fold_list(&mine),
                fold_list(&base_folds)
            );
            e.no_test_reason = Some(r.clone());
            e.wilcoxon_reason = Some(r);
            entries.push(e);
            continue;
        }
        if only_mine + only_base > 0 {
            e.notes.push(format!(
                "compared over the {matched} fold{} both report ({} has {} more, the baseline {} more)",
                if matched == 1 { "" } else { "s" },
                model.name,
                only_mine,
                only_base
            ));
        }
        if nonfinite > 0 {
            e.notes.push(format!(
                "{nonfinite} matching fold{} left out of the tests for NaN or infinite values",
                if nonfinite == 1 { "" } else { "s" }
            ));
        }
        e.n_paired = pairs.len();
        let d: Vec<f64> = pairs.iter().map(|(a, b)| a - b).collect();
        let scale = pairs.iter().map(|(a, b)| a.abs().max(b.abs())).fold(0.0, f64::max);
        match ttest_paired(&d, scale) {
            Ok(t) => e.ttest = Some(t),
            Err(r) => e.no_test_reason = Some(r),
        }
        if d.len() >= 2 {
            match wilcoxon(&d) {
                Ok((p, m)) => {
                    e.wilcoxon_p = Some(p);
                    e.wilcoxon_method = Some(m);
                }
                Err(r) => e.wilcoxon_reason = Some(r),
            }
        } else {
            e.wilcoxon_reason = e.no_test_reason.clone();
        }
        entries.push(e);
    }
    // Holm across the models that have a t-test p-value
    let idx: Vec<usize> = (0..entries.len()).filter(|i| entries[*i].p_value().is_some()).collect();
    let ps: Vec<f64> = idx.iter().map(|i| entries[*i].p_value().expect("filtered")).collect();
    for (i, adj) in idx.iter().zip(holm(&ps)) {
        entries[*i].holm_p = Some(adj);
    }
    let best = entries
        .iter()
        .filter_map(|e| e.summary.mean.map(|m| (e.name.clone(), m)))
        .fold(None::<(String, f64)>, |acc, (n, m)| match acc {
            Some((_, bm)) if !direction.better(m, bm) => acc,
            _ => Some((n, m)),
        })
        .map(|(n, _)| n);
    Ok(Comparison { metric, direction, direction_source, baseline, best, entries })
}

/// Where a score may come from, tried in the order the score rule lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreSource {
    /// The model's aggregate value of the metric.
    Aggregate,
    /// The mean of the model's finite per-fold values.
    Folds,
}

impl ScoreSource {
    /// "aggregate", "folds" (also "mean of folds", what `source` says of a score).
    pub fn parse(s: &str) -> Option<ScoreSource> {
        match s {
            "aggregate" => Some(ScoreSource::Aggregate),
            "folds" | "mean of folds" => Some(ScoreSource::Folds),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ScoreSource::Aggregate => "aggregate",
            ScoreSource::Folds => "mean of folds",
        }
    }
}

/// Which number is "the score" of a metrics file: one model's value of the metric from the first
/// source that has a finite one. Chosen by the caller (`stdlib/report_policy.lua`'s `score_rule`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRule {
    pub model: String,
    pub from: Vec<ScoreSource>,
}

/// The score of `metrics` under `rule`. Ok((score, model, source)); Err says what is missing.
pub fn score(metrics: &Metrics, metric: &str, rule: &ScoreRule) -> Result<(f64, String, &'static str), String> {
    let model = metrics.model(&rule.model).ok_or_else(|| {
        let names: Vec<&str> = metrics.models.iter().map(|m| m.name.as_str()).collect();
        format!("the score's model '{}' is not one of the models ({})", rule.model, names.join(", "))
    })?;
    let metric = metrics.resolve_metric(metric).unwrap_or_else(|| metric.to_string());
    for source in &rule.from {
        let v = match source {
            ScoreSource::Aggregate => model.aggregate_value(&metric).filter(|v| v.is_finite()),
            ScoreSource::Folds => {
                let vals: Vec<f64> =
                    model.fold_values(&metric).into_iter().map(|(_, v)| v).filter(|v| v.is_finite()).collect();
                mean_sd(&vals).0
            }
        };
        if let Some(v) = v {
            return Ok((v, model.name.clone(), source.as_str()));
        }
    }
    let who = if metrics.winner.as_deref() == Some(model.name.as_str()) {
        "the winner"
    } else if metrics.models.first().map(|m| &m.name) == Some(&model.name) {
        "the first model"
    } else {
        "the model"
    };
    let has = model.metric_names();
    Err(format!(
        "{who} '{}' has no finite {metric} (its metrics: {})",
        model.name,
        if has.is_empty() { "none".into() } else { has.join(", ") }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holm_steps_down_and_stays_monotone() {
        let adj = holm(&[0.01, 0.04, 0.03]);
        assert_eq!(adj, vec![0.03, 0.06, 0.06]);
    }

    #[test]
    fn wilcoxon_pmf_sums_to_one() {
        for n in [1, 5, 20, 50] {
            let s: f64 = wilcoxon_pmf(n).iter().sum();
            assert!((s - 1.0).abs() < 1e-12);
        }
    }

    struct Ref {
        name: &'static str,
        a: &'static [f64],
        b: &'static [f64],
        t: f64,
        p: f64,
        ci: (f64, f64),
        dz: f64,
        wilcoxon_p: f64,
    }

    /// Reference values from scipy 1.17.1 / numpy 2.4.6, produced by tests/data/report/scipy_reference.py:
    /// `stats.ttest_rel(a, b)` (statistic, pvalue, confidence_interval(0.95)), `d.mean() / d.std(ddof=1)`
    /// with `d = a - b`, and `stats.wilcoxon(a, b)` with its defaults. The cases cover the exact Wilcoxon
    /// distribution (n7_exact, n30_exact), ties (n5, n10_mixed, ties_n6, tiny_p: permutation; ties_n20 with a
    /// zero: normal approximation), zero differences (zeros_n8: permutation), n > 50 (n60_normal) and a tiny p (tiny_p).
    #[test]
    fn paired_tests_match_scipy() {
        let refs = [
            Ref {
                name: "n5",
                a: &[0.52, 0.48, 0.55, 0.5, 0.47],
                b: &[0.45, 0.44, 0.5, 0.46, 0.41],
                t: 8.917926427410453,
                p: 0.000874057287237241,
                ci: (0.03581068215291296, 0.06818931784708705),
                dz: 3.9882179420063237,
                wilcoxon_p: 0.0625,
            },
            Ref {
                name: "n10_mixed",
                a: &[0.31, 0.29, 0.35, 0.3, 0.28, 0.33, 0.36, 0.27, 0.32, 0.3],
                b: &[0.3, 0.31, 0.32, 0.29, 0.3, 0.31, 0.33, 0.28, 0.3, 0.31],
                t: 0.9704949588309462,
                p: 0.35715725300552437,
                ci: (-0.007985588336429008, 0.019985588336429008),
                dz: 0.3068974527617132,
                wilcoxon_p: 0.33984375,
            },
            Ref {
                name: "ties_n6",
                a: &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                b: &[0.5, 1.5, 3.5, 3.0, 4.0, 5.5],
                t: 2.23606797749979,
                p: 0.07558681842161241,
                ci: (-0.07479957262089909, 1.0747995726208992),
                dz: 0.9128709291752769,
                wilcoxon_p: 0.15625,
            },
            Ref {
                name: "zeros_n8",
                a: &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
                b: &[1.0, 1.5, 3.0, 3.2, 4.1, 6.0, 6.5, 7.7],
                t: 2.9336934701923405,
                p: 0.021908860152842744,
                ci: (0.07274139549447972, 0.6772586045055202),
                dz: 1.0372172733478493,
                wilcoxon_p: 0.0625,
            },
            Ref {
                name: "ties_n20",
                a: &[
                    1.0, 1.03, 0.97, 0.91, 0.95, 0.9, 1.01, 1.13, 0.95, 0.94, 1.05, 1.04, 1.01, 0.91, 1.0, 1.07, 0.87,
                    0.95, 0.81, 0.87,
                ],
                b: &[
                    1.07, 1.02, 1.01, 0.88, 0.92, 0.89, 1.12, 1.14, 0.93, 0.91, 1.11, 1.04, 1.04, 0.93, 0.93, 1.09,
                    0.85, 0.89, 0.82, 0.86,
                ],
                t: -0.4105050699039582,
                p: 0.6860277823814764,
                ci: (-0.024394623188434765, 0.016394623188434716),
                dz: -0.09179172414135535,
                wilcoxon_p: 0.8402782707279407,
            },
            Ref {
                name: "n30_exact",
                a: &[
                    1.011046414324948,
                    1.0063781774255063,
                    0.8774944173582306,
                    1.0076140230377009,
                    1.1358823421741537,
                    0.8452855321871517,
                    1.0859382688021597,
                    1.011935402569658,
                    0.9358529605892778,
                    1.2000416546342423,
                    1.0762259712084712,
                    0.8800711097894777,
                    1.0074516228771464,
                    1.0576689583670185,
                    0.9811217874649251,
                    1.0682910267195207,
                    0.9933482679850585,
                    1.0667247560834328,
                    1.1438522591656153,
                    0.9324337748994347,
                    1.0203138610389608,
                    0.9536692423461585,
                    1.0127268411225832,
                    0.881280547214986,
                    0.9420698403497327,
                    0.9803804027195503,
                    1.0898763872100408,
                    1.1145222007454132,
                    0.8676472207515745,
                    0.9205357634012951,
                ],
                b: &[
                    0.9687012431962769,
                    1.095999166634231,
                    0.890652910605849,
                    1.0024783693212054,
                    1.0630315933098127,
                    0.800815337158614,
                    1.0922989398132696,
                    1.020364197274656,
                    0.9383627306151741,
                    1.1138651846114342,
                    1.0876272183371145,
                    0.8852551292077141,
                    0.9798221695128831,
                    1.0537074806213411,
                    0.9809859988632113,
                    1.1139943838770736,
                    0.9839243413869859,
                    1.0789038172321537,
                    1.075545870356104,
                    0.8897793497643764,
                    1.0115210416894573,
                    0.9102501911827913,
                    1.0197203187082406,
                    0.8186742292936388,
                    0.932339818383314,
                    0.9412112850105296,
                    1.144421049476215,
                    1.0871881983014917,
                    0.9420574266199017,
                    1.0123022106482917,
                ],
                t: 0.6965751593316373,
                p: 0.49161481847230665,
                ci: (-0.011092677505316353, 0.02255133307532118),
                dz: 0.12717664258789765,
                wilcoxon_p: 0.4898460879921913,
            },
            Ref {
                name: "n60_normal",
                a: &[
                    0.9695523122288563,
                    0.9100072392401405,
                    1.0164052795712222,
                    1.2244756626486049,
                    0.9168276818587918,
                    0.9376056413556094,
                    1.02054039460647,
                    1.0493013291412356,
                    0.9823593934094241,
                    0.9794069669746783,
                    1.0702462955120544,
                    1.0519907637033898,
                    0.8966324167926312,
                    0.9920818681384158,
                    1.0035286848661473,
                    0.894551537795089,
                    1.0259839100674364,
                    0.9142043522823456,
                    1.0972066707917043,
                    1.0192745912605072,
                    1.008930648576905,
                    0.9408971647143726,
                    0.9881390176122306,
                    0.8002253707092946,
                    0.8868592529476942,
                    1.0362839799188754,
                    0.7871432958177855,
                    1.0846608521481163,
                    0.8253903524626092,
                    1.0756738502664267,
                    0.9154502967120676,
                    1.0778991084342462,
                    1.01309512075848,
                    0.8463165059708511,
                    1.1249148749558455,
                    1.1441707155522611,
                    0.9934195093999793,
                    0.972608372782768,
                    0.9840133034029364,
                    0.9024847677221254,
                    1.1098586759756919,
                    0.9457108068269813,
                    0.9948809587308324,
                    0.9206703596796957,
                    0.9373926900279803,
                    0.872227484834883,
                    1.1257069313714392,
                    0.9845912426793987,
                    1.0965921618728809,
                    1.001332459691326,
                    0.9305596472297106,
                    0.9673314739997748,
                    0.94397689494971,
                    1.0007959099184913,
                    0.9624733160323045,
                    0.9700078284058201,
                    0.8621425315864086,
                    0.919315407237888,
                    1.165405754880043,
                    0.9328766783748282,
                ],
                b: &[
                    1.012257001610031,
                    0.883140922611389,
                    0.9360416695933955,
                    1.2871768777726653,
                    0.9172537742713553,
                    0.9592082690523548,
                    1.09859136832284,
                    1.002554993678316,
                    0.9735315893371663,
                    0.965834874760048,
                    1.0978618691343338,
                    1.019251555553544,
                    0.9135972842669973,
                    0.9892270285632538,
                    1.048941724475223,
                    0.9453566758054988,
                    0.9492073173024352,
                    0.9295595875092694,
                    1.0726226529739142,
                    1.0109641129988758,
                    1.0209879087150142,
                    0.9562952132312336,
                    0.9466348880399512,
                    0.80531875093599,
                    0.8844314353562588,
                    1.0251729020591516,
                    0.7183178798051855,
                    1.0406353034164593,
                    0.7962603390762095,
                    1.0938524199340889,
                    0.9745487327123908,
                    1.020422611847481,
                    0.9547727640474362,
                    0.8433519259270181,
                    1.0878206828756696,
                    1.0950985628579908,
                    0.9418602867667302,
                    0.9165391991204445,
                    0.996794185935993,
                    0.8167361185888895,
                    1.1621883288899773,
                    0.8926246529772989,
                    0.9601843547792944,
                    0.8669894040034706,
                    0.8334422746731435,
                    0.7880052111659506,
                    1.1729657767309054,
                    1.0590248216927916,
                    1.045747708920191,
                    1.0420830804851222,
                    0.9211799166620863,
                    0.9153451001495151,
                    1.0161667625089894,
                    1.0962949326339653,
                    0.9395083650154431,
                    0.9577885339251553,
                    0.8644326851555048,
                    0.9073886690493771,
                    1.198431535248407,
                    0.9985513987384336,
                ],
                t: 1.1931541235323675,
                p: 0.23758503577897971,
                ci: (-0.004945180098667034, 0.0195529065376403),
                dz: 0.1540355349966522,
                wilcoxon_p: 0.2359312319354191,
            },
            Ref {
                name: "n7_exact",
                a: &[0.613, 0.579, 0.734, 0.652, 0.701, 0.588, 0.667],
                b: &[0.6, 0.6, 0.7, 0.61, 0.646, 0.596, 0.6],
                t: 2.110201070298535,
                p: 0.07935075433154183,
                ci: (-0.004148647456030819, 0.056148647456030834),
                dz: 0.797581035478893,
                wilcoxon_p: 0.109375,
            },
            Ref {
                name: "tiny_p",
                a: &[10.0, 10.1, 10.2, 10.3, 10.4, 10.5, 10.6, 10.7],
                b: &[1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.71],
                t: 7198.999999998874,
                p: 2.635541164711983e-25,
                ci: (8.995794219685507, 9.001705780314492),
                dz: 2545.2308588805795,
                wilcoxon_p: 0.0078125,
            },
        ];
        for r in refs {
            let d: Vec<f64> = r.a.iter().zip(r.b).map(|(a, b)| a - b).collect();
            let t = ttest_paired(&d, 1.0).unwrap_or_else(|e| panic!("{}: {e}", r.name));
            let close = |x: f64, y: f64, tol: f64| (x - y).abs() <= tol * y.abs().max(1.0);
            assert!(close(t.t, r.t, 1e-9), "{}: t {} vs scipy {}", r.name, t.t, r.t);
            assert!((t.p_value - r.p).abs() <= 1e-9, "{}: p {} vs scipy {}", r.name, t.p_value, r.p);
            assert!(((t.p_value - r.p) / r.p).abs() <= 1e-6, "{}: relative p {} vs scipy {}", r.name, t.p_value, r.p);
            assert!(
                close(t.ci95.0, r.ci.0, 1e-9) && close(t.ci95.1, r.ci.1, 1e-9),
                "{}: ci {:?} vs {:?}",
                r.name,
                t.ci95,
                r.ci
            );
            assert!(close(t.cohens_dz, r.dz, 1e-9), "{}: dz {} vs {}", r.name, t.cohens_dz, r.dz);
            let (wp, m) = wilcoxon(&d).unwrap();
            assert!((wp - r.wilcoxon_p).abs() <= 1e-9, "{}: wilcoxon {wp} ({m:?}) vs scipy {}", r.name, r.wilcoxon_p);
        }
    }
}
