//! Tests for the report area: metrics layouts, statistics against scipy, experiment_report.md, SVG
//! plots, the hypergraph and its Mermaid text. Reference numbers come from
//! tests/data/report/scipy_reference.py (scipy 1.17.1); each test names the case it uses.
use std::path::PathBuf;

use crate::util;

fn data() -> PathBuf {
    util::repo().join("tests/data/report")
}

/// Lua helpers every snippet gets: `D` is the test data folder, `near(a, b, tol)` asserts closeness.
const PRELUDE: &str = r#"
local report = require("report")
local D = arg[1]
local function near(a, b, tol, what)
  assert(type(a) == "number", (what or "value") .. " is " .. tostring(a))
  assert(math.abs(a - b) <= (tol or 1e-9), string.format("%s: %.17g vs expected %.17g", what or "value", a, b))
end
local function has(list, pattern)
  for _, s in ipairs(list or {}) do if tostring(s):find(pattern) then return true end end
  return false
end
"#;

/// Run a Lua snippet with the real binary (`cellsci script`) in a fresh temp dir; assert it succeeded.
fn lua(code: &str) -> (tempfile::TempDir, String) {
    let dir = util::tempdir();
    let script = util::write(dir.path(), "t.lua", &format!("{PRELUDE}\n{code}"));
    let out = util::cellsci(dir.path()).arg("script").arg(&script).arg(data()).output().expect("run cellsci");
    let text = util::text(&out);
    assert!(out.status.success(), "script failed ({:?}):\n{text}", out.status.code());
    (dir, text)
}

// ---------------------------------------------------------------- metrics layouts

#[test]
fn every_metrics_layout_reads_the_same_fold_values() {
    lua(r#"
for _, f in ipairs({"canonical", "methods_folds", "top_level", "per_fold_lists", "nested", "metric_major",
                    "fold_major", "models_list"}) do
  local m, err = report.load_metrics(D .. "/layouts/" .. f .. ".json")
  assert(m, f .. ": " .. tostring(err))
  local r, p = m.models.Ridge, m.models.MLP
  assert(r and p, f .. ": models missing")
  local function folds(model)
    local out = {}
    for _, fold in ipairs(m.folds) do
      if model.per_fold[fold] then out[#out + 1] = model.per_fold[fold].MSE end
    end
    return out
  end
  local rv, pv = folds(r), folds(p)
  assert(#rv == 3 and #pv == 3, f .. ": expected 3 folds, got " .. #rv .. " and " .. #pv)
  near(rv[1], 0.30, 0, f); near(rv[2], 0.32, 0, f); near(rv[3], 0.31, 0, f)
  near(pv[1], 0.25, 0, f); near(pv[2], 0.27, 0, f); near(pv[3], 0.24, 0, f)
  -- the test over matching folds sees the same numbers whatever the layout (scipy case canonical_mse)
  local c = assert(report.compare(m, {metric = "MSE"}))
  near(c.models.MLP.p_value, 0.013559949584378938, 1e-9, f .. " p")
end
-- top level: meta members (primary_metric, folds = 3, config) are not models
local t = assert(report.load_metrics(D .. "/layouts/top_level.json"))
assert(#t.order == 2 and t.order[1] == "Ridge" and t.order[2] == "MLP", table.concat(t.order, ","))
assert(t.winner == "MLP")
-- list layouts: metric-major lists under per_fold, and per-metric lists on the model itself
local l = assert(report.load_metrics(D .. "/layouts/per_fold_lists.json"))
near(l.models.GNN.per_fold["2"].MSE, 0.25, 0, "GNN fold 2")
near(l.models.KNN.per_fold["1"].MSE, 0.36, 0, "KNN fold 1")
-- a single model's metrics at the top level
local s1 = assert(report.load_metrics(D .. "/layouts/single_model.json"))
assert(s1.order[1] == "model" and s1.models.model.aggregate.PCC == 0.6 and s1.models.model.per_fold.fold_1.PCC == 0.7)
assert(has(s1.warnings, "one model's metrics at the top level"))
assert(assert(report.load_metrics(D .. "/layouts/fold_major.json")).winner == "MLP")
-- a model wrapped in "metrics"; a model that reports only train/val groups: val is its aggregate
local wr = assert(report.load_metrics(D .. "/layouts/wrapped.json"))
assert(wr.models.Ridge.per_fold.fold_2.MSE == 0.31 and wr.models.MLP.aggregate.MSE == 0.25)
-- nested: the val group is read, train is not
local n = assert(report.load_metrics(D .. "/layouts/nested.json"))
near(n.models.MLP.per_fold.fold_0.MSE, 0.25, 0, "val not train")
"#);
}

#[test]
fn fold_keys_sort_numerically_not_as_text() {
    lua(r#"
local m = assert(report.load_metrics(D .. "/layouts/fold_keys.json"))
assert(table.concat(m.folds, ",") == "fold_0,fold_1,fold_2,fold_9,fold_10", table.concat(m.folds, ","))
"#);
}

#[test]
fn python_nan_and_infinity_tokens_are_read_as_floats() {
    lua(r#"
local m = assert(report.load_metrics(D .. "/layouts/nan.json"))
local v = m.models.MLP.per_fold.fold_1.MSE
assert(v ~= v, "fold_1 should be NaN")
assert(m.models.MLP.aggregate.MSE == math.huge)
assert(m.models.MLP.aggregate.PCC == -math.huge)
"#);
}

#[test]
fn aggregate_only_models_keep_their_single_values() {
    lua(r#"
local m = assert(report.load_metrics(D .. "/layouts/aggregate_only.json"))
near(m.models.Ridge.aggregate.MSE, 0.31, 0)
near(m.models.MLP.aggregate.PCC, 0.60, 0, "numeric string")
near(m.models.GNN.aggregate.MSE, 0.26, 0, "{mean, std}")
assert(next(m.models.MLP.per_fold) == nil)
local c = assert(report.compare(m, {metric = "MSE"}))
assert(c.baseline == "Ridge")
local e = c.models.MLP
assert(e.mean == 0.25 and e.sd == nil and e.n == 1 and e.source == "aggregate")
assert(e.p_value == nil and e.test == nil)
assert(e.no_test_reason:find("only an aggregate"), e.no_test_reason)
near(e.delta_pct, (0.31 - 0.25) / 0.31 * 100, 1e-9, "delta")
"#);
}

#[test]
fn the_original_tools_empty_metrics_load_with_warnings_and_score_says_why() {
    // Generate_Execution/outputs/metrics.json as CellScientist wrote it: nulls, per_fold [], "folds": 0
    lua(r#"
local m = assert(report.load_metrics(D .. "/layouts/original_empty.json"))
assert(m.models.GBCorEN and m.models.ElasticNet)
assert(has(m.warnings, "GBCorEN' has no metric values"), table.concat(m.warnings, "; "))
local s, err = report.score(m, {metric = "PCC"})
assert(s == nil and err.kind == "no_metric", tostring(err))
assert(tostring(err):find("the first model 'GBCorEN' has no finite PCC"), tostring(err))
"#);
}

#[test]
fn unreadable_metrics_say_what_went_wrong() {
    lua(r#"
local m, err = report.load_metrics(D .. "/layouts/no_models.json")
assert(m == nil and err.kind == "no_models", tostring(err))
assert(err.message:find("No models were run"), err.message)
m, err = report.load_metrics(D .. "/layouts/broken.json")
assert(m == nil and err.kind == "parse" and err.message:find("line 1 column"), tostring(err))
m, err = report.load_metrics(D .. "/layouts/nothing_here.json")
assert(m == nil and err.kind == "not_found" and err.message:find("nothing_here.json"), tostring(err))
m, err = report.load_metrics({winner = "x"})
assert(m == nil and err.kind == "no_models", tostring(err))
-- misuse raises with the script's file:line
local ok, e = pcall(report.load_metrics, 42)
assert(not ok and tostring(e):find("t.lua:%d+: report.load_metrics: expected a metrics.json path"), tostring(e))
ok, e = pcall(report.compare, D .. "/layouts/canonical.json", {metrik = "MSE"})
assert(not ok and tostring(e):find("unknown option 'metrik'"), tostring(e))
"#);
}

#[test]
fn a_folder_means_its_metrics_json_and_tables_round_trip() {
    lua(r#"
local m = assert(report.load_metrics(D .. "/demo"))
assert(m.winner == "GraphPerturbNet")
assert(table.concat(m.order, ",") == "Ridge_baseline,MLP,GraphPerturbNet")
assert(table.concat(m.metric_names, ","):find("^MSE,PCC,R2,DEG_RMSE_20,DEG_PCC_20,MSE_DM,PCC_DM,train_time_s$"))
-- the normalised table is itself accepted, order and all
local again = assert(report.load_metrics(m))
assert(table.concat(again.order, ",") == "Ridge_baseline,MLP,GraphPerturbNet")
assert(again.models.MLP.per_fold.fold_3.PCC == m.models.MLP.per_fold.fold_3.PCC)
-- a hand-made table: models at the top level, Lua lists as per-fold lists, sorted by name
local h = assert(report.load_metrics({B = {per_fold = {{MSE = 1}, {MSE = 2}}}, A = {aggregate = {MSE = 3}}}))
assert(table.concat(h.order, ",") == "A,B" and h.models.B.per_fold["1"].MSE == 2)
"#);
}

// ---------------------------------------------------------------- statistics

#[test]
fn compare_matches_scipy_on_an_error_metric() {
    // scipy case canonical_mse: ttest_rel([0.25, 0.27, 0.24], [0.30, 0.32, 0.31])
    lua(r#"
local c = assert(report.compare(D .. "/layouts/canonical.json", {metric = "MSE"}))
assert(c.metric == "MSE" and c.direction == "lower" and c.baseline == "Ridge" and c.best == "MLP")
local e = c.models.MLP
near(e.mean, (0.25 + 0.27 + 0.24) / 3, 1e-12, "mean")
near(e.sd, 0.015275252316519468, 1e-12, "sd")  -- numpy std(ddof=1)
assert(e.n == 3 and e.n_paired == 3 and e.test == "paired t" and e.significant == true)
near(e.p_value, 0.013559949584378938, 1e-9, "p")
near(e.t, -8.499999999999993, 1e-9, "t")
near(e.ci95.lo, -0.08535101819832977, 1e-9, "ci lo")
near(e.ci95.hi, -0.02798231513500356, 1e-9, "ci hi")
near(e.cohens_dz, -4.9074772881118145, 1e-9, "dz")
near(e.wilcoxon_p, 0.25, 1e-12, "wilcoxon")
near(e.holm_p, 0.013559949584378938, 1e-9, "holm with one comparison")
-- lower is better: a smaller MSE is a positive improvement
near(e.delta_pct, (0.31 - 0.76 / 3) / 0.31 * 100, 1e-9, "delta")
assert(c.models.Ridge.is_baseline and c.models.Ridge.no_test_reason == "this is the baseline")
-- direction overridden: the same numbers read as higher-is-better flip the sign and the best
local h = assert(report.compare(D .. "/layouts/canonical.json", {metric = "MSE", direction = "higher"}))
assert(h.direction == "higher" and h.best == "Ridge")
near(h.models.MLP.delta_pct, -e.delta_pct, 1e-9, "flipped")
-- metric names match case-insensitively when unambiguous
assert(assert(report.compare(D .. "/layouts/canonical.json", {metric = "mse"})).metric == "MSE")
local _, err = report.compare(D .. "/layouts/canonical.json", {metric = "R2"})
assert(err.kind == "no_metric" and err.message:find("metrics present: MSE, PCC"), tostring(err))
"#);
}

#[test]
fn zero_variance_gives_no_t_test_and_a_reason() {
    // scipy case zero_var_wilcoxon: wilcoxon([0.25,0.27,0.26,0.29], [0.30,0.32,0.31,0.34]) = 0.125
    lua(r#"
local m = {order = {"Ridge", "MLP"},
  Ridge = {per_fold = {{MSE = 0.30}, {MSE = 0.32}, {MSE = 0.31}, {MSE = 0.34}}},
  MLP = {per_fold = {{MSE = 0.25}, {MSE = 0.27}, {MSE = 0.26}, {MSE = 0.29}}},
  Same = {per_fold = {{MSE = 0.30}, {MSE = 0.32}, {MSE = 0.31}, {MSE = 0.34}}}}
local c = assert(report.compare(m, {metric = "MSE", baseline = "Ridge"}))
local e = c.models.MLP
assert(e.p_value == nil and e.test == nil and e.significant == nil and e.cohens_dz == nil)
assert(e.no_test_reason:find("zero variance"), e.no_test_reason)
near(e.wilcoxon_p, 0.125, 1e-12, "wilcoxon")
assert(e.wilcoxon_method == "exact" or e.wilcoxon_method == "permutation", e.wilcoxon_method)
local s = c.models.Same
assert(s.no_test_reason == "identical to the baseline in every fold", s.no_test_reason)
assert(s.wilcoxon_p == nil and s.holm_p == nil)
near(s.delta_pct, 0, 0, "delta of an identical model")
"#);
}

#[test]
fn one_fold_and_mismatched_folds_give_no_test() {
    lua(r#"
local one = assert(report.compare({Ridge = {per_fold = {f0 = {MSE = 1}}}, M = {per_fold = {f0 = {MSE = 0.5}}}}, {metric = "MSE"}))
assert(one.models.M.no_test_reason == "only 1 matching fold (a paired test needs 2)", one.models.M.no_test_reason)
assert(one.models.M.sd == nil and one.models.M.mean == 0.5)
local mis = assert(report.compare({
  Ridge = {per_fold = {fold_0 = {MSE = 1}, fold_1 = {MSE = 2}, fold_2 = {MSE = 3}}},
  M = {per_fold = {fold_3 = {MSE = 1}, fold_4 = {MSE = 2}, fold_5 = {MSE = 3}}}}, {metric = "MSE"}))
local r = mis.models.M.no_test_reason
assert(r:find("no matching folds") and r:find("fold_3, fold_4, fold_5") and r:find("fold_0, fold_1, fold_2"), r)
-- partial overlap: tested over the folds both report (scipy case partial), with a note
local part = assert(report.compare({
  Ridge = {per_fold = {fold_0 = {MSE = 0.29}, fold_1 = {MSE = 0.30}, fold_2 = {MSE = 0.31}, fold_3 = {MSE = 0.33}}},
  M = {per_fold = {fold_1 = {MSE = 0.21}, fold_2 = {MSE = 0.25}, fold_3 = {MSE = 0.22}, fold_4 = {MSE = 0.20}}}}, {metric = "MSE"}))
local p = part.models.M
assert(p.n_paired == 3)
near(p.p_value, 0.026974454865344347, 1e-9, "partial p")
assert(has(p.notes, "compared over the 3 folds both report"), table.concat(p.notes, "; "))
"#);
}

#[test]
fn nan_values_are_left_out_and_said() {
    // scipy case nan_mse: ttest_rel([0.25, 0.24, 0.26], [0.30, 0.31, 0.33]) (fold_1 of MLP is NaN)
    lua(r#"
local c = assert(report.compare(D .. "/layouts/nan.json", {metric = "MSE"}))
local e = c.models.MLP
assert(e.n == 3 and e.dropped == 1 and e.n_paired == 3)
near(e.mean, 0.25, 1e-12, "mean of finite values")
near(e.p_value, 0.010899508038828267, 1e-9, "p")
assert(has(e.notes, "1 MSE value of MLP was NaN or infinite"), table.concat(e.notes, "; "))
assert(has(e.notes, "left out of the tests"), table.concat(e.notes, "; "))
-- score: the winner (Ridge) has a NaN aggregate, so the mean of its folds is used
local s = assert(report.score(D .. "/layouts/nan.json", {metric = "MSE"}))
assert(s.model == "Ridge" and s.source == "mean of folds" and s.direction == "lower")
near(s.score, (0.30 + 0.32 + 0.31 + 0.33) / 4, 1e-12, "score")
"#);
}

#[test]
fn holm_adjusts_across_the_compared_models() {
    // scipy cases holm_A, holm_B, holm_C and their Holm adjustment
    lua(r#"
local base = {0.40, 0.42, 0.41, 0.43, 0.39}
local function folds(v) local t = {} for i, x in ipairs(v) do t[i] = {MSE = x} end return t end
local m = {order = {"Linear", "A", "B", "C"}, Linear = {per_fold = folds(base)},
  A = {per_fold = folds({0.35, 0.36, 0.37, 0.36, 0.34})},
  B = {per_fold = folds({0.41, 0.40, 0.42, 0.41, 0.40})},
  C = {per_fold = folds({0.38, 0.41, 0.39, 0.40, 0.37})}}
local c = assert(report.compare(m, {metric = "MSE"}))
assert(c.baseline == "Linear")
near(c.models.A.p_value, 0.0004499234755991126, 1e-9, "A p")
near(c.models.B.p_value, 0.7989658591927785, 1e-9, "B p")
near(c.models.C.p_value, 0.0031982021523352853, 1e-9, "C p")
near(c.models.A.holm_p, 0.0013497704267973376, 1e-9, "A holm")
near(c.models.B.holm_p, 0.7989658591927785, 1e-9, "B holm")
near(c.models.C.holm_p, 0.0063964043046705705, 1e-9, "C holm")
near(c.models.C.cohens_dz, -2.8284271247461947, 1e-9, "C dz")
near(c.models.A.wilcoxon_p, 0.0625, 1e-12, "A wilcoxon")
assert(c.models.B.significant == false and c.models.B.holm_significant == false)
"#);
}

#[test]
fn baseline_is_found_by_name_else_the_first() {
    lua(r#"
local function m(order)
  local t = {order = order}
  for i, n in ipairs(order) do t[n] = {aggregate = {PCC = i / 10}} end
  return t
end
assert(assert(report.compare(m({"MLP", "RidgeRegression", "GNN"}), {metric = "PCC"})).baseline == "RidgeRegression")
assert(assert(report.compare(m({"MLP", "my_baseline", "GNN"}), {metric = "PCC"})).baseline == "my_baseline")
assert(assert(report.compare(m({"MLP", "BaseNet", "GNN"}), {metric = "PCC"})).baseline == "BaseNet")
assert(assert(report.compare(m({"MLP", "GNN"}), {metric = "PCC"})).baseline == "MLP")
assert(assert(report.compare(m({"MLP", "GNN"}), {metric = "PCC", baseline = "GNN"})).baseline == "GNN")
local _, err = report.compare(m({"MLP", "GNN"}), {metric = "PCC", baseline = "Nope"})
assert(err.kind == "bad_baseline", tostring(err))
assert(report.direction("DEG_RMSE_50") == "lower" and report.direction("PCC_DM") == "higher")
"#);
}

#[test]
fn score_uses_the_winner_else_the_first_model() {
    lua(r#"
local s = assert(report.score(D .. "/layouts/canonical.json", {metric = "PCC"}))
assert(s.model == "MLP" and s.source == "aggregate" and s.score == 0.5967 and s.direction == "higher")
local f = assert(report.score(D .. "/layouts/per_fold_lists.json", {metric = "MSE"}))
assert(f.model == "Ridge" and f.source == "mean of folds")
near(f.score, 0.31, 1e-12, "first model's fold mean")
"#);
}

// ---------------------------------------------------------------- experiment_report.md

#[test]
fn the_report_has_winner_table_in_seed_order_tests_and_says_the_narrative_is_missing() {
    let (dir, _) = lua(r#"
local text = report.markdown{metrics = D .. "/demo/metrics.json", metric = "MSE",
  narrative_error = {kind = "timeout", message = "the LLM did not answer within 600 s"},
  plots = {"mse_per_fold.svg", {path = "iterations.svg", title = "Score per iteration"}},
  path = "out/experiment_report.md"}
local f = assert(io.open("out/experiment_report.md")); local disk = f:read("a"); f:close()
assert(disk == text, "the file holds the returned text")
"#);
    let text = std::fs::read_to_string(dir.path().join("out/experiment_report.md")).unwrap();
    assert!(text.contains("- **Primary metric:** MSE (lower is better)"), "{text}");
    assert!(text.contains("- **Winner:** GraphPerturbNet — MSE 0.03362 ± 0.00181 over 5 folds"), "{text}");
    assert!(text.contains("- **Baseline:** Ridge_baseline"), "{text}");
    assert!(text.contains(
        "| Model | MSE | PCC | R2 | DEG_RMSE_20 | DEG_PCC_20 | MSE_DM | PCC_DM | train_time_s | Δ% MSE vs baseline | p (paired t) |"
    ));
    // Δ% = (0.041278 - 0.033622) / 0.041278 * 100 = +18.55%; p from ttest_rel over the 5 folds
    assert!(text.contains("| **GraphPerturbNet** (winner) | 0.03362 ± 0.00181 |"), "{text}");
    assert!(text.contains("| +18.55% | 0.00242 * |"), "{text}");
    assert!(text.contains("| Ridge_baseline (baseline) |"), "{text}");
    assert!(text.contains("### Tests against the baseline (MSE)"));
    assert!(text.contains("![Score per iteration](iterations.svg)") && text.contains("](mse_per_fold.svg)"));
    assert!(text.contains("_The narrative is missing: the LLM did not answer within 600 s."), "{text}");
    for bad in ["NaN", "nan", "inf", "nil"] {
        assert!(!text.contains(bad), "'{bad}' printed in:\n{text}");
    }
}

#[test]
fn nan_folds_and_missing_tests_print_dashes_and_reasons_never_nan() {
    let (_, out) = lua(r#"
print(report.markdown{metrics = D .. "/layouts/nan.json", metric = "PCC"})
print("=====")
print(report.markdown{metrics = D .. "/layouts/nan.json", metric = "MSE"})
print("=====")
print(report.markdown{metrics = D .. "/layouts/aggregate_only.json", metric = "MSE"})
"#);
    let parts: Vec<&str> = out.split("=====").collect();
    // PCC: only MLP has one (−Infinity): no finite value anywhere
    assert!(parts[0].contains("- **Winner:** — (no model has a finite PCC)"), "{}", parts[0]);
    assert!(parts[0].contains("MLP: no Δ% — the baseline Ridge has no finite PCC."), "{}", parts[0]);
    assert!(parts[1].contains("MLP: 1 MSE value of MLP was NaN or infinite and left out."), "{}", parts[1]);
    assert!(parts[1].contains("- **Winner:** MLP — MSE 0.2500 ± 0.0100 over 3 folds"), "{}", parts[1]);
    assert!(parts[1].contains("- **Winner declared by the notebook:** Ridge"), "{}", parts[1]);
    assert!(
        parts[2].contains("MLP: no t-test — MLP reports only an aggregate MSE, no per-fold values."),
        "{}",
        parts[2]
    );
    assert!(parts[2].contains("- **Folds:** none (single values)"), "{}", parts[2]);
    assert!(!parts[0].contains("### Tests against the baseline"), "no test at all, no tests table");
    for p in &parts {
        let p = p.replace("NaN or infinite", "");
        for bad in ["NaN", "nan", "inf"] {
            assert!(!p.contains(bad), "'{bad}' printed in:\n{p}");
        }
    }
}

#[test]
fn a_narrative_is_appended_unfenced_and_names_are_escaped() {
    let (_, out) = lua(r#"
local m = {order = {"base|line", "new*model"},
  ["base|line"] = {per_fold = {{MSE = 1.0}, {MSE = 1.2}}}, ["new*model"] = {per_fold = {{MSE = 0.8}, {MSE = 0.9}}}}
print(report.markdown{metrics = m, metric = "MSE", title = "Trial 7",
  narrative = "```markdown\nThe new model wins.\n```"})
"#);
    assert!(out.starts_with("# Trial 7\n"), "{out}");
    assert!(out.contains("| base\\|line (baseline) |"), "{out}");
    assert!(out.contains("| **new\\*model** (winner) |"), "{out}");
    assert!(out.contains("## Narrative\n\nThe new model wins.\n"), "{out}");
    assert!(!out.contains("```"), "{out}");
}

#[test]
fn unreadable_metrics_still_give_a_report_that_says_why() {
    let (_, out) = lua(r#"
print(report.markdown{metrics = D .. "/layouts/no_models.json", metric = "MSE"})
"#);
    assert!(out.contains("**No metrics:** metrics file"), "{out}");
    assert!(out.contains("No models were run"), "{out}");
    assert!(out.contains("_No narrative was written for this report._"), "{out}");
}

#[test]
fn narrative_messages_fill_the_report_prompt_with_computed_numbers() {
    let (_, out) = lua(r#"
local prompt = {system = "Primary: ${primary_metric}. Keep ${other}.", user_template = "```json\n${metrics_json}\n```"}
local msgs = assert(report.narrative_messages(prompt, D .. "/demo/metrics.json", {metric = "MSE"}))
assert(#msgs == 2 and msgs[1].role == "system" and msgs[2].role == "user")
assert(msgs[1].content == "Primary: MSE. Keep ${other}.", msgs[1].content)
local doc = require("json").decode(msgs[2].content:match("```json\n(.*)\n```"))
assert(doc.primary_metric == "MSE" and doc.baseline == "Ridge_baseline" and doc.winner == "GraphPerturbNet")
assert(doc.tests_vs_baseline.MLP.significant == true)
assert(math.abs(doc.tests_vs_baseline.GraphPerturbNet.delta_pct - 18.5474) < 1e-4)
print(report.narrative_input(D .. "/layouts/nan.json", {metric = "MSE"}))
"#);
    assert!(!out.replace("NaN or infinite", "").contains("NaN"), "non-finite numbers reach the LLM: {out}");
}

/// Regression: the narrative request carried every model (6 MB for a sweep of 10,000); it keeps the
/// baseline, the winner and the best by the primary metric, and says how many it left out.
#[test]
fn the_narrative_request_of_a_10k_model_sweep_stays_small() {
    let (_, out) = lua(r#"
local models = { ridge_baseline = { per_fold = { ["0"] = { PCC = 0.1 }, ["1"] = { PCC = 0.12 } } } }
for i = 1, 10000 do
  models["m" .. i] = { per_fold = { ["0"] = { PCC = i / 20000, MSE = 1 }, ["1"] = { PCC = i / 20000 + 0.01, MSE = 1 } } }
end
local m = assert(report.load_metrics({ models = models, winner = "m17" }))
local msgs = assert(report.narrative_messages({ system = "s", user_template = "${metrics_json}" }, m, { metric = "PCC" }))
local text = msgs[2].content
assert(#text < 64 * 1024, "the narrative request is " .. #text .. " bytes")
local doc = require("json").decode(text)
assert(doc.models_omitted == 10001 - 25, tostring(doc.models_omitted))
assert(doc.models.ridge_baseline and doc.models.m10000 and doc.models.m9990, "baseline and the best are kept")
assert(doc.models.m17, "the notebook's declared winner is kept")
assert(doc.winner == "m10000" and doc.models_note:find("10001 models"), doc.models_note)
print(#text)
"#);
    println!("{out}");
}

// ---------------------------------------------------------------- plots

/// A written SVG: an svg document with balanced text elements, holding `must` strings.
fn assert_svg(path: &std::path::Path, must: &[&str]) -> String {
    let svg = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "not an SVG document: {}", path.display());
    assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count(), "unbalanced text elements");
    for m in must {
        assert!(svg.contains(m), "{} lacks {m:?}", path.display());
    }
    let shown = svg.replace("NaN or infinite", "");
    for bad in ["NaN", "inf<", ">inf"] {
        assert!(!shown.contains(bad), "{} shows {bad}", path.display());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "a plot must be readable by others");
    }
    svg
}

#[test]
fn fold_and_iteration_plots_are_written_as_svg() {
    let (dir, _) = lua(r#"
assert(report.plot_folds(D .. "/demo/metrics.json", {metric = "MSE", path = "plots/mse_per_fold.svg"}) == "plots/mse_per_fold.svg")
assert(report.plot_folds(D .. "/layouts/nan.json", {metric = "MSE", path = "nan.svg", title = "MSE <&> per fold"}))
assert(report.plot_folds(D .. "/layouts/aggregate_only.json", {metric = "MSE", path = "agg.svg"}))
local its = {{iteration = 1, score = 0.61, status = "VALID"}, {iteration = 2, status = "CRASH"},
             {iteration = 3, score = 0.66, status = "VALID"}, {iteration = 4, score = 0.71, status = "VALID"}}
assert(report.plot_iterations(its, {threshold = 0.7, metric = "PCC", path = "iterations.svg"}))
assert(report.plot_iterations({0.5, 0.4, 0.3}, {threshold = 0.35, metric = "MSE", path = "lower.svg"}))
-- without a path the SVG text comes back
local svg = assert(report.plot_folds(D .. "/layouts/canonical.json", {metric = "PCC"}))
assert(svg:find("^<svg") and svg:find("PCC per fold %(higher is better%)"))
-- nothing finite to draw: nil, err
local none, err = report.plot_folds(D .. "/layouts/nan.json", {metric = "PCC"})
assert(none == nil and err.kind == "no_metric" and err.message:find("no finite PCC"), tostring(err))
local _, e2 = report.plot_iterations({}, {path = "x.svg"})
assert(e2.kind == "plot", tostring(e2))
"#);
    let d = dir.path();
    assert_svg(
        &d.join("plots/mse_per_fold.svg"),
        &["MSE per fold (lower is better)", "Ridge_baseline", "GraphPerturbNet", "fold_4"],
    );
    assert_svg(&d.join("nan.svg"), &["MSE &lt;&amp;&gt; per fold", "1 NaN or infinite value not drawn"]);
    assert_svg(&d.join("agg.svg"), &["GNN (aggregate)", "no folds"]);
    assert_svg(&d.join("iterations.svg"), &["PCC per iteration (higher is better)", "threshold 0.7000", "CRASH"]);
    assert_svg(&d.join("lower.svg"), &["MSE per iteration (lower is better)", "criterion met"]);
}

// ---------------------------------------------------------------- hypergraph

#[test]
fn hypergraph_json_keeps_the_original_shape_and_normalises_edges() {
    let (dir, _) = lua(r#"
local h = assert(report.hypergraph(D .. "/hypergraph/tricky.ipynb", {path = "hypergraph.json"}))
assert(#h.cells == 5, "code cells with a subtask only")
assert(h.cells[1].id == "load data" and h.cells[1].index == 1 and h.cells[1].name:find('"REFERENCE_DATA.h5"'))
assert(h.cells[3].id == "3", "numeric ids become text")
-- tails given as a string, a list or a number all become lists
assert(h.hyperedges[1].tail[1] == "load data" and h.hyperedges[1].head == "end")
assert(#h.hyperedges[2].tail == 2 and h.hyperedges[2].head == "3")
assert(h.hyperedges[3].tail[1] == "3")
assert(#h.hyperedges[6].tail == 0 and h.hyperedges[6].head == "load data")
assert(h.hypergraph.hyperedges[1].tail == "load data", "the raw hypergraph is kept as the notebook had it")
assert(has(h.warnings, "'ghost node', which is no cell's subtask id"))
-- the same from an nbformat table, e.g. one read with json.decode
local f = assert(io.open(D .. "/hypergraph/tricky.ipynb")); local nb = require("json").decode(f:read("a")); f:close()
local h2 = assert(report.hypergraph(nb))
assert(#h2.cells == 5 and #h2.hyperedges == 6)
"#);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("hypergraph.json")).unwrap()).unwrap();
    assert_eq!(v["cells"][1]["id"], "end");
    assert_eq!(v["hypergraph"]["hyperedges"][2]["tail"], 3, "raw values kept");
    assert_eq!(v["hyperedges"][4]["tail"], serde_json::json!(["graph", "ghost node"]));
}

/// tricky.expected.md was checked once by hand with mermaid 12.3.0 under Node (jsdom): `mermaid.parse`
/// accepts it and `mermaid.render` shows every label literally (quotes, <b>, &, #, backticks, `-->`,
/// `:::`, `%%`, backslash, CJK and emoji), with the two ids that are no cell drawn as dashed nodes.
#[test]
fn mermaid_survives_spaces_quotes_brackets_keywords_and_unicode() {
    let (dir, _) = lua(r#"
local text = assert(report.mermaid(D .. "/hypergraph/tricky.ipynb", {path = "hypergraph.md"}))
assert(text:find("^```mermaid\nflowchart TD\n"))
"#);
    let got = std::fs::read_to_string(dir.path().join("hypergraph.md")).unwrap();
    let want = std::fs::read_to_string(data().join("hypergraph/tricky.expected.md")).unwrap();
    assert_eq!(got, want);
    // no raw character inside a label that Mermaid or the markdown fence would interpret
    for line in got.lines().filter(|l| l.contains("[\"")) {
        let label = &line[line.find("[\"").unwrap() + 2..line.rfind("\"]").unwrap()];
        for bad in ['"', '<', '>', '`', '&'] {
            assert!(!label.replace("<br/>", "").contains(bad), "raw {bad:?} in {line}");
        }
    }
    assert!(got.contains("    c4 & u0 --> u1\n"), "edges to unknown ids are shown: {got}");
    assert!(got.contains("u1[\"final #quot;summary#quot; (not a cell)\"]:::missing"));
}

#[test]
fn mermaid_of_empty_and_odd_notebooks_is_still_a_flowchart() {
    let (_, out) = lua(r#"
print(report.mermaid({cells = {}, metadata = {}}))
print(report.mermaid({nbformat = 4, cells = {{cell_type = "code", source = "", metadata = {subtask = {id = "end", name = "o"}}}},
  metadata = {execution = {hypergraph = {hyperedges = {{tail = "x", head = "end"}, {tail = {"end"}, head = {"o", "x"}}}}}}}))
local _, err = report.mermaid(D .. "/hypergraph/missing.ipynb")
assert(err.kind == "not_found", tostring(err))
_, err = report.hypergraph(D .. "/layouts/broken.json")
assert(err.kind == "parse", tostring(err))
local ok, e = pcall(report.mermaid, 7)
assert(not ok and tostring(e):find("t.lua:%d+: report.mermaid: expected a notebook"), tostring(e))
"#);
    assert!(
        out.contains("```mermaid\nflowchart TD\n    empty[\"(this notebook has no subtask cells)\"]\n```"),
        "{out}"
    );
    assert!(out.contains("    u0 --> c0\n    c0 --> u1 & u0\n"), "{out}");
}

/// The example in tests/data/report/demo/example (shown in docs/report.md) is what the code
/// renders now: regenerate it with `cellsci script tests/data/report/demo/make_example.lua tests/data/report`.
#[test]
fn the_committed_example_report_is_current() {
    let dir = util::tempdir();
    let out = util::cellsci(dir.path())
        .arg("script")
        .arg(data().join("demo/make_example.lua"))
        .arg(data())
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", util::text(&out));
    for f in ["experiment_report.md", "hypergraph.md", "hypergraph.json", "mse_per_fold.svg", "iterations.svg"] {
        let got = std::fs::read_to_string(dir.path().join(f)).unwrap();
        let want = std::fs::read_to_string(data().join("demo/example").join(f)).unwrap();
        assert!(got == want, "{f} differs from the committed example: regenerate it (see this test's comment)");
    }
}

#[test]
fn a_real_notebook_handle_gives_the_same_hypergraph_as_its_file() {
    lua(r#"
local nb = assert(require("notebook").read(D .. "/hypergraph/tricky.ipynb"))
assert(report.mermaid(nb) == report.mermaid(D .. "/hypergraph/tricky.ipynb"))
local h = assert(report.hypergraph(nb))
assert(#h.cells == 5 and #h.hyperedges == 6 and h.cells[5].id == "graph")
"#);
}

/// Regression: an iteration number near i32's limits (`iteration = -2147483648`, or 2^40 from a script's
/// arithmetic) overflowed the plot's x range: a panic in debug builds, a garbled axis in release.
#[test]
fn plot_iterations_with_absurd_numbers_is_an_error_not_a_panic() {
    let (_d, out) = lua(r#"local _, err = report.plot_iterations({{iteration = -2147483648, score = 1}})
assert(err and err.kind == "plot" and err.message:find("out of range"), tostring(err))
_, err = report.plot_iterations({{iteration = 1, score = 1}, {iteration = 2^40, score = 2}})
assert(err and err.kind == "plot", tostring(err))
assert(report.plot_iterations({{iteration = 1000000, score = 1}, {iteration = -1000000, score = 2}}))
print("ok")"#);
    assert!(out.contains("ok"), "{out}");
}

// ---------------------------------------------------------------- policy (stdlib/report_policy.lua)

#[test]
fn error_metrics_are_lower_is_better_by_the_bundled_report_policy() {
    lua(r#"
for _, m in ipairs({"MSE", "RMSE", "val_loss", "DEG_RMSE_20", "MSE_DM", "mae", "mean_squared_error", "Loss"}) do
  assert(report.direction(m) == "lower", m)
  assert(require("report_policy").direction(m) == "lower", m)
end
for _, m in ipairs({"PCC", "R2", "PCC_DM", "accuracy", "neg_mse", "DEG_PCC_50"}) do
  assert(report.direction(m) == "higher", m)
end
local c = assert(report.compare(D .. "/demo/metrics.json", {metric = "MSE"}))
assert(c.direction == "lower" and c.direction_source == "inferred from the name", c.direction_source)
"#);
}

/// Regression: a top-level model named `baseline` (a common name) was skipped as metadata, so the
/// report compared nothing.
#[test]
fn a_top_level_model_named_baseline_is_compared_not_lost() {
    let (dir, _) = lua(r#"
local json = require("json")
local function fold(a, b, c) return {fold_0 = {PCC = a}, fold_1 = {PCC = b}, fold_2 = {PCC = c}} end
require("fs").write("metrics.json", json.encode({
  baseline = {per_fold = fold(0.30, 0.32, 0.31)},
  mlp = {per_fold = fold(0.50, 0.55, 0.52)},
  winner = "mlp",
}))
local m = assert(report.load_metrics("metrics.json"))
assert(m.models.baseline and m.models.mlp, "both models are read: " .. json.encode(m.order))
local c = assert(report.compare(m, {metric = "PCC"}))
assert(c.baseline == "baseline", c.baseline)
assert(c.models.mlp.p_value and c.models.mlp.delta_pct > 0, json.encode(c.models.mlp))
report.markdown{metrics = "metrics.json", metric = "PCC", path = "experiment_report.md"}
-- `baseline` naming another model is still metadata, not a model
require("fs").write("named.json", json.encode({baseline = "ridge", ridge = {aggregate = {PCC = 0.3}},
  mlp = {aggregate = {PCC = 0.5}}}))
local n = assert(report.load_metrics("named.json"))
assert(#n.order == 2 and n.models.baseline == nil, json.encode(n.order))
"#);
    let md = std::fs::read_to_string(dir.path().join("experiment_report.md")).unwrap();
    assert!(md.contains("- **Baseline:** baseline"), "{md}");
    assert!(md.contains("Tests against the baseline"), "{md}");
}

/// A user's report_policy.lua beside their script: the direction, baseline and score rule of every
/// `report` function follow it.
#[test]
fn a_users_report_policy_changes_direction_baseline_and_score_of_cellsci_script() {
    let dir = util::tempdir();
    util::write(
        dir.path(),
        "policies/report_policy.lua",
        r#"local host = require("host")
local M = load(host.bundled("stdlib/report_policy.lua"), "@<bundled>/stdlib/report_policy.lua")()
table.insert(M.lower_is_better, "pcc")              -- this lab minimises PCC (a distance, say)
M.baseline_words = { { "mlp" } }                     -- and compares with its MLP
function M.score_rule(metrics) return { model = "GNN", from = { "folds" } } end
return M
"#,
    );
    let script = util::write(
        dir.path(),
        "t.lua",
        r#"local report = require("report")
local m = {order = {"Ridge", "MLP", "GNN"},
  models = {Ridge = {per_fold = {["0"] = {PCC = 0.2}, ["1"] = {PCC = 0.3}}, aggregate = {PCC = 0.25}},
            MLP = {per_fold = {["0"] = {PCC = 0.4}, ["1"] = {PCC = 0.5}}, aggregate = {PCC = 0.45}},
            GNN = {per_fold = {["0"] = {PCC = 0.6}, ["1"] = {PCC = 0.8}}, aggregate = {PCC = 0.65}}},
  winner = "MLP"}
local c = assert(report.compare(m, {metric = "PCC"}))
print("direction", c.direction, "baseline", c.baseline, "best", c.best)
local s = assert(report.score(m, {metric = "PCC"}))
print("score", s.model, s.source, s.score, s.direction)
local o = assert(report.score(m, {metric = "PCC", model = "Ridge", from = {"aggregate"}}))
print("explicit", o.model, o.source, o.score)
"#,
    );
    let out = util::cellsci(dir.path()).args(["--scripts", "policies", "script"]).arg(&script).output().unwrap();
    let text = util::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("direction\tlower\tbaseline\tMLP\tbest\tRidge"), "{text}");
    assert!(text.contains("score\tGNN\tmean of folds\t0.7\tlower"), "{text}");
    assert!(text.contains("explicit\tRidge\taggregate\t0.25"), "{text}");
}
