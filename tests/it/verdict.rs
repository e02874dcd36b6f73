//! The success criteria (stdlib/success.lua) and the report's verdict (stdlib/verdict.lua), through the
//! real binary: judge and describe on comparisons computed by report.compare from metrics built in the
//! test, the report section a trial gets, the pipeline's analyze result fed to the criterion, and (ignored
//! until the loop passes the evidence to the criterion) a `cellsci run` under "significant".

use serde_json::json;

use crate::pipeline::{generation_reply, simple_handler, stdout, Project};
use crate::util;

/// Lua every snippet gets: metrics from per-fold PCC lists, their comparison, and `judge` returning the
/// verdict of a criterion on them. Base folds: 0.40, 0.42, 0.41, 0.43, 0.39 (mean 0.41).
const PRELUDE: &str = r##"
local report = require("report")
local success = require("success")
local verdict = require("verdict")
local fs = require("fs")
local BASE = {0.40, 0.42, 0.41, 0.43, 0.39}
local function folds(v, metric)
  local t = {}
  for i, x in ipairs(v) do t["fold_" .. i] = {[metric or "PCC"] = x} end
  return t
end
-- metrics {models = {ridge_baseline = BASE, NAME = folds...}, winner = first other model}
local function metrics(models, winner, metric)
  local m = {models = {ridge_baseline = {per_fold = folds(BASE, metric)}}, winner = winner}
  for name, v in pairs(models) do m.models[name] = {per_fold = folds(v, metric)} end
  return assert(report.load_metrics(m))
end
local function mean(v) local s = 0 for _, x in ipairs(v) do s = s + x end return s / #v end
-- judge a trial: criterion, metrics, winner, threshold; the score is the winner's mean, as report.score
local function judge(criterion, m, winner, threshold, extra)
  local metric = (extra and extra.metric) or "PCC"
  local cmp = assert(report.compare(m, {metric = metric}))
  local t = {criterion = criterion, metrics = m, compare = cmp, winner = winner, baseline = cmp.baseline,
    score = cmp.models[winner].mean, threshold = threshold or 0.5, metric = metric, trial = "t",
    record = {kind = "draft", iter = 1}}
  for k, v in pairs(extra or {}) do t[k] = v end
  local met, why, d = success.judge(t)
  print(string.format("CASE %s | %s | met=%s | p=%s | p_holm=%s | %s", criterion, winner, tostring(met),
    tostring(d.p), tostring(d.p_holm), why))
  return met, why, d
end
local function eq(got, want, what)
  assert(got == want, string.format("%s:\n  got  %s\n  want %s", what or "value", tostring(got), tostring(want)))
end
local function near(a, b, tol, what)
  assert(type(a) == "number" and math.abs(a - b) <= tol, string.format("%s: %s vs %s", what, tostring(a), b))
end
"##;

/// Run a Lua snippet with `cellsci script` in a fresh folder (extra files written first); it must succeed.
fn lua_with(files: &[(&str, &str)], args: &[&str], code: &str) -> (tempfile::TempDir, String) {
    let dir = util::tempdir();
    for (rel, text) in files {
        util::write(dir.path(), rel, text);
    }
    let script = util::write(dir.path(), "t.lua", &format!("{PRELUDE}\n{code}"));
    let out = util::cellsci(dir.path()).args(args).arg("script").arg(&script).output().expect("run cellsci");
    let text = util::text(&out);
    assert!(out.status.success(), "script failed ({:?}):\n{text}", out.status.code());
    (dir, text)
}

fn lua(code: &str) -> String {
    lua_with(&[], &[], code).1
}

/// Phrases CellScientist's runner reads as a success or a bug (DESIGN, "The unified runner").
const RUNNER_PHRASES: &[&str] = &[
    "Success threshold met",
    "Target metric reached",
    "Early stop triggered",
    "Optimization converged",
    "Stopping early",
    "Success!",
    "Score:",
    "Exception:",
    "Traceback",
    "Error in Node",
    "[FIX]",
];

fn assert_no_runner_phrase(reason: &str) {
    for p in RUNNER_PHRASES {
        assert!(!reason.contains(p), "the reason holds the runner's phrase {p:?}: {reason}");
    }
}

/// The reasons printed by the snippets (`CASE ... | reason`).
fn reasons(out: &str) -> Vec<String> {
    out.lines().filter(|l| l.starts_with("CASE ")).map(|l| l.rsplit(" | ").next().unwrap().to_string()).collect()
}

// ---------------------------------------------------------------- "significant"

#[test]
fn a_consistent_gain_over_five_folds_is_met_under_significant() {
    let out = lua(r##"
local gain = {0.60, 0.63, 0.61, 0.64, 0.58}
local met, why, d = judge("significant", metrics({better = gain}, "better"), "better")
assert(met == true, why)
eq(why, "PCC 0.6120 > 0.5 (higher is better) and better than ridge_baseline: p_holm 7.0e-7 < 0.05 (paired t, 5 folds)", "reason")
near(d.p, 7.0470785101539e-07, 1e-12, "p")
near(d.p_holm, d.p, 0, "one model compared: Holm changes nothing")
eq(d.criterion, "significant") eq(d.met, true) eq(d.threshold_met, true) eq(d.alpha, 0.05)
eq(d.test, "paired t") eq(d.n, 5) eq(d.baseline, "ridge_baseline") eq(d.winner, "better")
near(d.mean_diff, 0.202, 1e-12, "mean difference")
assert(d.ci95.lo > 0 and d.ci95.hi > d.ci95.lo, "a CI above zero")
eq(d.reason, why, "detail.reason")
eq(d.description, "PCC > 0.5 (higher is better) and better than the baseline at p < 0.05 (paired t-test over folds, Holm)")
"##);
    reasons(&out).iter().for_each(|r| assert_no_runner_phrase(r));
}

#[test]
fn a_mean_above_the_threshold_whose_folds_do_not_beat_the_baseline_is_not_met() {
    // One lucky split: the mean (0.64) beats the threshold, two folds are below the baseline.
    let out = lua(r##"
local lucky = {0.90, 0.20, 0.95, 0.30, 0.85}
local m = metrics({lucky = lucky}, "lucky")
local met, why, d = judge("significant", m, "lucky")
assert(met == false, why)
eq(why, "PCC 0.6400 > 0.5 (higher is better) but not significant vs ridge_baseline: p_holm 0.239 >= 0.05 (paired t, 5 folds)", "reason")
near(d.p, 0.23915324191108, 1e-9, "p")
eq(d.threshold_met, true) eq(d.met, false)
-- the same trial under the default criterion is met, with today's words
local met2, why2, d2 = judge("threshold", m, "lucky")
assert(met2 == true) eq(why2, "PCC 0.6400 > 0.5 (higher is better)") eq(d2.criterion, "threshold")
"##);
    reasons(&out).iter().for_each(|r| assert_no_runner_phrase(r));
}

#[test]
fn holm_across_the_models_compared_can_undo_a_raw_p_below_alpha() {
    // gain: raw p 0.029 < 0.05, but two models were compared with the baseline: Holm gives 0.058.
    lua(r##"
local function add(d) local t = {} for i, x in ipairs(BASE) do t[i] = x + d[i] end return t end
local m = metrics({gain = add({0.20, 0.05, 0.17, 0.02, 0.14}), other = add({0.05, -0.04, 0.02, -0.03, 0.01})}, "gain")
local met, why, d = judge("significant", m, "gain")
near(d.p, 0.028827957148901, 1e-9, "raw p")
near(d.p_holm, 0.057655914297802, 1e-9, "Holm p")
assert(met == false, why)
eq(why, "PCC 0.5260 > 0.5 (higher is better) but not significant vs ridge_baseline: p_holm 0.0577 >= 0.05 (paired t, 5 folds)", "reason")
-- the Lua Holm (for a compare table without holm_p) gives compare's numbers
local adj = success.holm({0.028827957148901, 0.90965623711561})
near(adj[1], 0.057655914297802, 1e-12, "holm 1") near(adj[2], 0.90965623711561, 1e-12, "holm 2")
-- a looser alpha is met
local met2, why2 = judge("significant", m, "gain", 0.5, {alpha = 0.1})
assert(met2 == true, why2)
eq(why2, "PCC 0.5260 > 0.5 (higher is better) and better than ridge_baseline: p_holm 0.0577 < 0.1 (paired t, 5 folds)")
"##);
}

#[test]
fn no_folds_one_fold_or_the_baseline_as_winner_is_not_significant_and_never_met() {
    let out = lua(r##"
-- aggregate values only: no test
local m = assert(report.load_metrics({models = {ridge_baseline = {aggregate = {PCC = 0.3}}, mlp = {aggregate = {PCC = 0.9}}}, winner = "mlp"}))
local met, why, d = judge("significant", m, "mlp")
assert(met == false, why)
eq(why, "PCC 0.9000 > 0.5 (higher is better) but not significant: no paired test against ridge_baseline (mlp reports only an aggregate PCC, no per-fold values)")
eq(d.threshold_met, true) eq(d.p, nil)
-- one fold
local m1 = assert(report.load_metrics({models = {ridge_baseline = {per_fold = {["0"] = {PCC = 0.3}}}, mlp = {per_fold = {["0"] = {PCC = 0.9}}}}}))
local met1, why1 = judge("significant", m1, "mlp")
assert(met1 == false, why1)
eq(why1, "PCC 0.9000 > 0.5 (higher is better) but not significant: no paired test against ridge_baseline (only 1 matching fold (a paired test needs 2))")
-- the winner is the baseline (it beats the threshold on its own)
local mb = metrics({weak = {0.2, 0.2, 0.25, 0.2, 0.21}}, "ridge_baseline")
local metb, whyb = judge("significant", mb, "ridge_baseline", 0.3)
assert(metb == false, whyb)
eq(whyb, "PCC 0.4100 > 0.3 (higher is better) but not significant: the winner ridge_baseline is the baseline")
-- no metrics at all (nothing to compare)
local metn, whyn = success.judge({criterion = "significant", score = 0.9, threshold = 0.5, metric = "PCC"})
assert(metn == false)
eq(whyn, "PCC 0.9000 > 0.5 (higher is better) but not significant: no comparison with a baseline (the trial's metrics were not given)")
-- no score: today's words
local mets, whys = success.judge({criterion = "significant", score = 0 / 0, threshold = 0.5, metric = "PCC"})
assert(mets == false) eq(whys, "no usable score")
"##);
    reasons(&out).iter().for_each(|r| assert_no_runner_phrase(r));
}

#[test]
fn a_significant_difference_in_the_wrong_direction_is_not_met() {
    // The winner beats the threshold, the baseline is better still on every fold.
    lua(r##"
local m = metrics({worse = {0.30, 0.31, 0.32, 0.31, 0.30}}, "worse")
local met, why, d = judge("significant", m, "worse", 0.2)
assert(met == false, why)
eq(why, "PCC 0.3080 > 0.2 (higher is better) but not better than ridge_baseline: mean difference -0.102 over 5 folds (p_holm 6.3e-5)")
assert(d.p < 0.05 and d.mean_diff < 0)
"##);
}

#[test]
fn an_error_metric_is_judged_lower_is_better_under_significant() {
    lua(r##"
local m = metrics({better = {0.30, 0.33, 0.31, 0.34, 0.28}}, "better", "MSE")
local met, why, d = judge("significant", m, "better", 0.35, {metric = "MSE"})
assert(met == true, why)
eq(d.direction, "lower")
assert(why:find("^MSE 0%.3120 < 0%.35 %(lower is better%) and better than ridge_baseline: p_holm ") and why:find("< 0.05 (paired t, 5 folds)", 1, true), why)
eq(success.describe({metric = "MSE", threshold = 0.35, criterion = "significant"}),
  "MSE < 0.35 (lower is better) and better than the baseline at p < 0.05 (paired t-test over folds, Holm)")
"##);
}

#[test]
fn the_compare_table_is_computed_from_the_metrics_when_not_given() {
    lua(r##"
local m = metrics({better = {0.60, 0.63, 0.61, 0.64, 0.58}}, "better")
local met, why = success.judge({criterion = "significant", metrics = m, winner = "better", score = 0.612, threshold = 0.5, metric = "PCC"})
assert(met == true, why)
eq(why, "PCC 0.6120 > 0.5 (higher is better) and better than ridge_baseline: p_holm 7.0e-7 < 0.05 (paired t, 5 folds)")
"##);
}

// ---------------------------------------------------------------- "threshold", describe, check

#[test]
fn the_threshold_criterion_keeps_todays_words() {
    lua(r##"
local function j(t) local met, why, d = success.judge(t) return met, why, d end
local met, why, d = j({score = 0.3, threshold = 0.5, metric = "PCC"})
assert(met == false) eq(why, "PCC 0.3000 <= 0.5 (higher is better)") eq(d.criterion, "threshold") eq(d.met, false)
met, why = j({score = 0.9, threshold = 0.5, metric = "PCC", criterion = "threshold"})
assert(met == true) eq(why, "PCC 0.9000 > 0.5 (higher is better)")
met, why = j({score = 0.4, threshold = 0.5, metric = "MSE"})
assert(met == true) eq(why, "MSE 0.4000 < 0.5 (lower is better)")
met, why = j({score = 0.6, threshold = 0.5, metric = "MSE"})
assert(met == false) eq(why, "MSE 0.6000 >= 0.5 (lower is better)")
met, why = j({score = 0.6, threshold = 0.5, metric = "PCC", direction = "lower"})
assert(met == false) eq(why, "PCC 0.6000 >= 0.5 (lower is better)")
met, why = j({score = nil, threshold = 0.5, metric = "PCC"})
assert(met == false) eq(why, "no usable score")
-- with confirmation seeds the score is their mean, and the words say so
met, why, d = j({score = 0.7, threshold = 0.5, metric = "PCC", seeds = {{seed = 1, score = 0.6}, {seed = 2, score = 0.8}, {seed = 3, score = 0.7}}})
assert(met == true)
eq(why, "PCC 0.7000 > 0.5 (higher is better; mean of 3 seeds, SD 0.1000, range 0.6000 to 0.8000)")
eq(d.seed_stats.n, 3) near(d.seed_stats.sd, 0.1, 1e-12, "sd") eq(d.seed_stats.min, 0.6) eq(d.seed_stats.max, 0.8)
-- direction and better as before
eq(success.direction("MSE"), "lower") eq(success.direction("PCC"), "higher") eq(success.direction("PCC", "lower"), "lower")
assert(success.better(0.2, 0.3, "MSE") and not success.better(0.2, 0.3, "PCC") and success.better(0.1, nil, "PCC"))
"##);
}

#[test]
fn describe_gives_the_words_of_each_criterion() {
    lua(r##"
eq(success.describe({metric = "PCC", threshold = 0.5}), "PCC > 0.5 (higher is better)")
eq(success.describe({metric = "PCC", threshold = 0.5, criterion = "threshold", direction = "higher"}), "PCC > 0.5 (higher is better)")
eq(success.describe({metric = "RMSE", threshold = 1.25}), "RMSE < 1.25 (lower is better)")
eq(success.describe({metric = "PCC", threshold = 0.5, criterion = "significant"}),
  "PCC > 0.5 (higher is better) and better than the baseline at p < 0.05 (paired t-test over folds, Holm)")
eq(success.describe({metric = "PCC", threshold = 0.5, criterion = "significant", alpha = 0.01}),
  "PCC > 0.5 (higher is better) and better than the baseline at p < 0.01 (paired t-test over folds, Holm)")
eq(success.describe({metric = "PCC", threshold = 0.5, confirm_seeds = 3}),
  "PCC > 0.5 (higher is better), confirmed by 3 reruns with other seeds (CELLSCI_SEED; the score is their mean)")
eq(success.describe({metric = "PCC", threshold = 0.5, criterion = function() return true end}),
  "a criterion of your own from success.lua; threshold PCC > 0.5 (higher is better)")
"##);
}

#[test]
fn an_unknown_criterion_is_a_config_error_naming_the_key_and_the_valid_names() {
    lua(r##"
eq(success.check(nil), true) eq(success.check("threshold"), true) eq(success.check("significant", 0.01), true)
local ok, msg = success.check("signifcant")
eq(ok, nil)
eq(msg, 'experiment.criterion: unknown criterion "signifcant" (valid: "significant", "threshold"; add your own as M.criteria.signifcant in success.lua)')
ok, msg = success.check(5)
eq(ok, nil) assert(msg:find("^experiment.criterion: expected a string"), msg)
ok, msg = success.check("threshold", 1.5)
eq(ok, nil) eq(msg, "experiment.alpha: expected a number between 0 and 1 (exclusive), got 1.5")
-- judge raises the same message (the loop checks before it starts, so this is misuse)
local pok, err = pcall(success.judge, {criterion = "signifcant", score = 1, threshold = 0})
assert(not pok and tostring(err):find("experiment.criterion: unknown criterion", 1, true), tostring(err))
"##);
}

#[test]
fn a_run_with_an_unknown_criterion_stops_with_exit_2_naming_the_key() {
    // The config's type check: experiment.criterion must be a string, experiment.alpha a number.
    let p = Project::new(json!({"experiment": {"criterion": 3}}), simple_handler(vec!["{}".into()]));
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", util::text(&out));
    assert!(util::text(&out).contains("experiment.criterion: expected a string"), "{}", util::text(&out));
    let p = Project::new(json!({"experiment": {"alpha": "often"}}), simple_handler(vec!["{}".into()]));
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", util::text(&out));
    assert!(util::text(&out).contains("experiment.alpha: expected a number"), "{}", util::text(&out));
}

/// The README's example ("The success criterion"), as written there: a success.lua of your own that keeps
/// the bundled criteria and adds one reading `t.compare`.
const USER_SUCCESS: &str = r##"
local host = require("host")
local M = load(host.bundled("stdlib/success.lua"), "@<bundled>/stdlib/success.lua")()  -- keep the bundled ones
M.criteria.gain10 = {
  judge = function(t)
    local e = t.compare and t.compare.models[t.winner]
    local met = e ~= nil and (e.p_value or 1) < 0.05 and (e.delta_pct or 0) >= 10
    return met, string.format("%s %+.1f%% vs %s, p %s", tostring(t.winner), e and e.delta_pct or 0,
      tostring(t.compare and t.compare.baseline), M.fmt_p(e and e.p_value))
  end,
  describe = function(t) return t.metric .. " 10% better than the baseline at p < 0.05" end,  -- the loop's words
}
return M
"##;

#[test]
fn a_users_criterion_reads_the_comparison_and_names_itself() {
    lua_with(
        &[("policies/success.lua", USER_SUCCESS)],
        &["--scripts", "policies"],
        r##"
eq(success.check("gain10"), true)
local ok, msg = success.check("gain5")
assert(not ok and msg:find('valid: "gain10", "significant", "threshold"', 1, true), msg)
local m = metrics({better = {0.60, 0.63, 0.61, 0.64, 0.58}}, "better")
local met, why, d = judge("gain10", m, "better")
assert(met == true, why)
eq(why, "better +49.3% vs ridge_baseline, p 7.0e-7")
eq(d.criterion, "gain10") eq(d.met, true) eq(d.reason, why)
eq(d.description, "PCC 10% better than the baseline at p < 0.05")
eq(success.describe({metric = "PCC", threshold = 0.5, criterion = "gain10"}), "PCC 10% better than the baseline at p < 0.05")
-- a reason holding a runner phrase is rewritten
success.criteria.loud = function() return false, "Success! Score: 3, Traceback follows" end
local _, loud = success.judge({criterion = "loud", score = 1, threshold = 0})
eq(loud, "success score 3, trace follows")
"##,
    );
}

// ---------------------------------------------------------------- the report's verdict

#[test]
fn the_verdict_section_goes_above_the_results_and_is_replaced_with_the_seeds() {
    let (dir, _) = lua_with(
        &[],
        &[],
        r##"
local m = metrics({better = {0.60, 0.63, 0.61, 0.64, 0.58}}, "better")
fs.mkdir("trial")
assert(report.markdown({metrics = m, metric = "PCC", narrative = "\35# Verdict\n\nThe LLM's own heading.", path = "trial/experiment_report.md"}))
local _, _, d = judge("significant", m, "better")
assert(verdict.write("trial", d))
local first = fs.read("trial/experiment_report.md")
-- judged again after three seed reruns: one verdict, now with the seeds
local _, _, d2 = judge("significant", m, "better", 0.5, {score = 0.6100,
  seeds = {{seed = 11, score = 0.60}, {seed = 12, score = 0.62}, {seed = 13, score = 0.61}}})
assert(verdict.write("trial", d2))
fs.write("first.md", first)
"##,
    );
    let first = std::fs::read_to_string(dir.path().join("first.md")).unwrap();
    let report = std::fs::read_to_string(dir.path().join("trial/experiment_report.md")).unwrap();
    let v = first.find("## Verdict\n").expect("a verdict section");
    let r = first.find("## Results\n").expect("the results");
    assert!(v < r, "the verdict is above the results:\n{first}");
    assert!(first[..r].contains("- **Winner:** better — PCC 0.6120"), "{first}");
    assert!(
        first.contains(
            "**Criterion met** — PCC 0.6120 > 0.5 (higher is better) and better than ridge_baseline: p_holm 7.0e-7 < 0.05 (paired t, 5 folds)"
        ),
        "{first}"
    );
    assert!(first.contains("| Threshold | PCC > 0.5 — met |"), "{first}");
    assert!(first.contains("| p | 7.0e-7 (Holm-adjusted 7.0e-7; < 0.05) |"), "{first}");
    assert!(
        first.contains("| Against the baseline ridge_baseline | mean difference 0.2020 [95% CI 0.1916, 0.2124] over 5 folds (paired t-test) |"),
        "{first}"
    );
    // written again: still one verdict of ours, the LLM's heading in the narrative untouched
    assert_eq!(report.matches("## Verdict\n").count(), 2, "ours and the narrative's:\n{report}");
    assert!(report.contains("The LLM's own heading."), "{report}");
    assert!(report.find("## Verdict\n").unwrap() < report.find("## Results\n").unwrap());
    assert!(report.contains("| PCC | 0.6100 (better), mean of 3 seeds |"), "{report}");
    assert!(
        report
            .contains("### Seeds\n\n| Seed | PCC |\n|---:|---:|\n| 11 | 0.6000 |\n| 12 | 0.6200 |\n| 13 | 0.6100 |\n"),
        "{report}"
    );
    assert!(report.contains("Mean 0.6100, SD 0.0100, range 0.6000 to 0.6200 over 3 runs."), "{report}");
    assert!(
        report.contains("mean of 3 seeds, SD 0.0100, range 0.6000 to 0.6200) and better than ridge_baseline"),
        "{report}"
    );
    assert_eq!(report.matches("### Seeds").count(), 1, "{report}");
}

#[test]
fn a_report_without_metrics_gets_its_verdict_at_the_end() {
    let (dir, _) = lua_with(
        &[],
        &[],
        r##"
fs.mkdir("trial")
fs.write("trial/experiment_report.md", "\35 Experiment report\n\nThe notebook wrote no metrics.json, so there is nothing to score.\n")
local _, _, d = success.judge({score = nil, threshold = 0.5, metric = "PCC"})
assert(verdict.write("trial", d))
fs.mkdir("fresh")
assert(verdict.write("fresh", d))
"##,
    );
    let report = std::fs::read_to_string(dir.path().join("trial/experiment_report.md")).unwrap();
    assert!(
        report.starts_with("# Experiment report\n\nThe notebook wrote no metrics.json, so there is nothing to score.\n\n## Verdict\n\n**Criterion not met** — no usable score\n"),
        "{report}"
    );
    let fresh = std::fs::read_to_string(dir.path().join("fresh/experiment_report.md")).unwrap();
    assert!(fresh.starts_with("# Experiment report\n\n## Verdict\n"), "{fresh}");
}

/// A metrics.json cell: ridge_baseline on the base folds and `model` on `folds` (five PCC values).
fn folds_cell(model: &str, folds: &[f64]) -> String {
    format!(
        r##"import json, os
base = [0.40, 0.42, 0.41, 0.43, 0.39]
mine = {folds:?}
models = {{
    "ridge_baseline": {{"per_fold": {{str(i): {{"PCC": v}} for i, v in enumerate(base)}}}},
    "{model}": {{"per_fold": {{str(i): {{"PCC": v}} for i, v in enumerate(mine)}}}},
}}
with open(os.path.join(os.environ["OUTPUT_DIR"], "metrics.json"), "w") as fh:
    json.dump({{"models": models, "winner": "{model}"}}, fh)
print("metrics written")"##
    )
}

#[test]
fn the_pipelines_analyze_result_carries_the_comparison_the_criterion_reads() {
    // A real notebook in a real kernel writes the folds; analyze_trial's result goes to the criterion as
    // the loop passes it, and the verdict lands in the trial's report.
    let p = Project::new(
        json!({"experiment": {"max_iterations": 1, "criterion": "significant"}}),
        simple_handler(vec![generation_reply(&[("T1", &folds_cell("lucky", &[0.90, 0.20, 0.95, 0.30, 0.85]))])]),
    );
    let out = p.run(&["generate"]);
    util::ok(&out);
    util::ok(&p.run(&["execute"]));
    let script = util::write(
        p.path(),
        "judge.lua",
        r##"
local pipeline = require("pipeline")
local success = require("success")
local exp = require("host").config.experiment
local trial = assert(pipeline.find_trial())
local res = assert(pipeline.analyze_trial(trial))
assert(res.compare and res.baseline == "ridge_baseline", "analyze returns the comparison")
assert(success.check(exp.criterion, exp.alpha))
local met, why, d = success.judge({score = res.score, threshold = exp.success_threshold, metric = exp.primary_metric,
  direction = exp.direction, criterion = exp.criterion, alpha = exp.alpha, metrics = res.metrics, compare = res.compare,
  winner = res.winner, baseline = res.baseline, trial = trial, record = {kind = "draft", iter = 1}})
print("MET", met)
print("WHY", why)
print("DESCRIBE", success.describe({metric = exp.primary_metric, threshold = exp.success_threshold, criterion = exp.criterion}))
assert(require("verdict").write(trial, d))
print("TRIAL", trial)
"##,
    );
    let out = util::cellsci(p.path())
        .args(["--config", "generate_execution_config.json", "script"])
        .arg(&script)
        .output()
        .unwrap();
    let text = util::ok(&out);
    let so = stdout(&out);
    assert!(so.contains("MET\tfalse"), "{text}");
    assert!(
        so.contains("WHY\tPCC 0.6400 > 0.5 (higher is better) but not significant vs ridge_baseline: p_holm 0.239 >= 0.05 (paired t, 5 folds)"),
        "{text}"
    );
    assert!(
        so.contains("DESCRIBE\tPCC > 0.5 (higher is better) and better than the baseline at p < 0.05 (paired t-test over folds, Holm)"),
        "{text}"
    );
    let trial = so.lines().find_map(|l| l.strip_prefix("TRIAL\t")).unwrap();
    let report = std::fs::read_to_string(std::path::Path::new(trial).join("experiment_report.md")).unwrap();
    assert!(report.contains("## Verdict\n\n**Criterion not met** — PCC 0.6400 > 0.5"), "{report}");
    assert!(report.contains("| p | 0.239 (Holm-adjusted 0.239; >= 0.05) |"), "{report}");
}

// ---------------------------------------------------------------- end to end (needs the loop wiring)

#[test]
fn a_run_under_significant_goes_on_past_a_lucky_node_and_stops_at_a_consistent_gain() {
    // needs the loop wiring
    let p = Project::new(
        json!({"experiment": {"max_iterations": 3, "criterion": "significant"}}),
        simple_handler(vec![
            generation_reply(&[("T1", &folds_cell("lucky", &[0.90, 0.20, 0.95, 0.30, 0.85]))]),
            generation_reply(&[("T1", &folds_cell("steady", &[0.60, 0.63, 0.61, 0.64, 0.58]))]),
        ]),
    );
    let out = p.run(&["run"]);
    let text = util::text(&out);
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    // the header says what is judged
    assert!(
        text.contains(
            "the criterion: PCC > 0.5 (higher is better) and better than the baseline at p < 0.05 (paired t-test over folds, Holm)"
        ),
        "{text}"
    );
    // iteration 1: above the threshold, not significant; the loop goes on
    let it1 = &so[so.find("ITERATION 1/3").unwrap()..so.find("ITERATION 2/3").expect("a second iteration")];
    assert!(it1.contains("[CHECK] lucky | PCC: 0.6400"), "{it1}");
    assert!(it1.contains("[CONTINUE]"), "{it1}");
    assert!(
        it1.contains("PCC 0.6400 > 0.5 (higher is better) but not significant vs ridge_baseline: p_holm 0.239 >= 0.05 (paired t, 5 folds)"),
        "{it1}"
    );
    for phrase in RUNNER_PHRASES {
        assert!(!it1.contains(phrase), "the lucky node's lines hold {phrase:?}: {it1}");
    }
    // iteration 2: a consistent gain is met
    assert!(
        so.contains("[SUCCESS] Success threshold met (PCC 0.6120 > 0.5 (higher is better) and better than ridge_baseline: p_holm 7.0e-7 < 0.05 (paired t, 5 folds))"),
        "{so}"
    );
    assert!(!so.contains("ITERATION 3/3"), "{so}");
    let s = p.summary();
    assert_eq!(s["iterations"][0]["criteria_met"], false, "{s:#}");
    assert_eq!(s["iterations"][1]["criteria_met"], true, "{s:#}");
    // each trial's report shows its verdict
    let lucky = std::fs::read_to_string(
        std::path::Path::new(s["iterations"][0]["trial_dir"].as_str().unwrap()).join("experiment_report.md"),
    )
    .unwrap();
    assert!(lucky.contains("**Criterion not met** — PCC 0.6400 > 0.5"), "{lucky}");
    let archived = p.archived();
    assert_eq!(archived.len(), 1);
    let met = std::fs::read_to_string(archived[0].join("experiment_report.md")).unwrap();
    assert!(met.contains("**Criterion met** — PCC 0.6120 > 0.5"), "{met}");
}

/// A notebook whose score depends on CELLSCI_SEED: `lucky` without it, `rest` with any seed.
fn seeded_cell(model: &str, lucky: f64, rest: f64) -> String {
    format!(
        r##"import json, os
seed = os.environ.get("CELLSCI_SEED")
score = {lucky} if seed is None else {rest}
models = {{
    "ridge_baseline": {{"aggregate": {{"PCC": 0.1}}}},
    "{model}": {{"aggregate": {{"PCC": score}}}},
}}
with open(os.path.join(os.environ["OUTPUT_DIR"], "metrics.json"), "w") as fh:
    json.dump({{"models": models, "winner": "{model}"}}, fh)
print("seed", seed, "score", score)"##
    )
}

#[test]
fn confirmation_with_seeds_turns_a_lucky_score_into_not_met_and_archives_a_robust_node() {
    let p = Project::new(
        json!({"experiment": {"max_iterations": 3, "success_threshold": 0.5, "confirm_seeds": 3}}),
        simple_handler(vec![
            generation_reply(&[("T1", &seeded_cell("lucky", 0.9, 0.3))]),
            generation_reply(&[("T1", &seeded_cell("robust", 0.7, 0.68))]),
        ]),
    );
    let out = p.run(&["run"]);
    let all = util::text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let so = crate::pipeline::stdout(&out);
    // 0.9 on its own seed, 0.3 on three others: the mean 0.45 does not meet 0.5
    assert!(so.contains("[CHECK] lucky | PCC: 0.4500"), "{so}");
    assert!(so.contains("[CONTINUE] Threshold not met: PCC 0.4500 <= 0.5"), "{so}");
    assert!(so.contains("[CHECK] robust | PCC: 0.6850"), "{so}");
    assert_eq!(so.matches("Success threshold met").count(), 1, "{so}");
    let s = p.summary();
    let it = s["iterations"].as_array().unwrap();
    assert_eq!(it[0]["seeds"].as_array().unwrap().len(), 4, "its own run and three reruns: {:#}", it[0]);
    assert_eq!(it[0]["first_score"], 0.9);
    assert_eq!(it[0]["criteria_met"], false);
    assert_eq!(it[1]["criteria_met"], true);
    let archived = p.archived();
    assert_eq!(archived.len(), 1);
    assert_eq!(s["archived_dir"].as_str().unwrap(), archived[0].to_str().unwrap());
    let m = crate::pipeline::read_json(&archived[0].join("metrics.json"));
    assert_eq!(m["winner"], "robust");
    for seed in [1001, 1002, 1003] {
        assert!(archived[0].join(format!("seeds/seed_{seed}/metrics.json")).is_file(), "seed {seed}");
    }
    let report = std::fs::read_to_string(archived[0].join("experiment_report.md")).unwrap();
    assert!(report.contains("### Seeds"), "{report}");
    assert!(report.contains("1003"), "{report}");
    println!(
        "{}",
        so.lines()
            .filter(|l| l.contains("[CHECK]") || l.contains("[CONTINUE]") || l.contains("[SUCCESS]"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!("{}", all.lines().filter(|l| l.contains("[SEEDS]")).collect::<Vec<_>>().join("\n"));
}

#[test]
fn a_users_criterion_reading_the_comparison_judges_a_tree_search() {
    // The same user criterion (gain10 over t.compare) in a parallel tree run: each node judged on its own
    // evidence, no shared state; the lucky draft is not met, the steady improvement is.
    let p = Project::new(
        json!({"experiment": {"max_iterations": 6, "criterion": "gain10"},
               "search": {"strategy": "tree", "branches": 2, "drafts": 2, "debug_prob": 0}}),
        simple_handler(vec![
            generation_reply(&[("T1", &folds_cell("lucky", &[0.90, 0.20, 0.95, 0.30, 0.85]))]),
            generation_reply(&[("T1", &folds_cell("lucky", &[0.85, 0.25, 0.90, 0.35, 0.80]))]),
            generation_reply(&[("T1", &folds_cell("steady", &[0.60, 0.63, 0.61, 0.64, 0.58]))]),
        ]),
    );
    util::write(p.path(), "policies/success.lua", USER_SUCCESS);
    let out = p.run(&["--scripts", "policies", "run"]);
    let text = util::text(&out);
    let so = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("the criterion: PCC 10% better than the baseline at p < 0.05"), "{text}");
    assert!(so.contains("[CONTINUE] Criterion not met: lucky "), "{so}");
    assert!(so.contains("[SUCCESS] Success threshold met (steady +49.3% vs ridge_baseline, p 7.0e-7)"), "{so}");
    let s = p.summary();
    let met: Vec<&serde_json::Value> =
        s["iterations"].as_array().unwrap().iter().filter(|r| r["criteria_met"] == true).collect();
    assert_eq!(met.len(), 1, "{s:#}");
    assert_eq!(met[0]["verdict"]["criterion"], "gain10");
    assert_ne!(met[0]["kind"], "draft", "the improvement met it: {s:#}");
    assert_eq!(s["best_trial_dir"], s["archived_dir"]);
}
