---@meta report
-- Type stubs for the native `report` module (`local report = require("report")`), for
-- lua-language-server. The real module is built into cellsci; this file only describes it. Requiring
-- it (as `meta.report`) returns a table of empty functions and never replaces the real module.

---Metrics loading, statistics, experiment_report.md, SVG plots and the notebook's task hypergraph.
---Every number a report shows is computed here, never by the LLM. Functions that read data return
---`nil, err` when it is not usable; wrong arguments and unknown option keys raise.
---
---Defaults shared by the functions below:
--- - `metric`: the option, else the config's `experiment.primary_metric` (when there is a config),
---   else the first metric present in table order. Names match exactly, else case-insensitively when
---   unambiguous.
--- - `direction`: the option (`"lower"`/`"higher"`, also `min`/`max`, `lower_is_better`...), else the
---   config's `experiment.direction` when `metric` is the primary metric, else `report_policy.direction`
---   (stdlib/report_policy.lua, which a user can shadow; by default from the name, `report.direction`).
--- - `baseline`: the option, else `report_policy.baseline(names)`: by default the first model whose name
---   contains `baseline`, `linear` or `ridge`, then one containing `base`, else the first model.
---@class cellsci.report
local report = {}

---@alias cellsci.report.ErrorKind
---| "not_found"    # no metrics file / notebook at the path
---| "io"           # a file could not be read or written
---| "parse"        # not valid JSON / YAML, or an empty file
---| "no_models"    # the metrics hold no model (quoting the file's own `reason` when it has one)
---| "no_metric"    # no model reports the metric (or any metric)
---| "bad_baseline" # the baseline (the option, or the policy's choice) is not one of the models
---| "bad_model"    # `report.score`: the score's model (`model=`, or the policy's) is not one of the models
---| "plot"         # the plot could not be drawn
---| "notebook"     # the notebook is not usable for the hypergraph

---The error of a report call.
---@class cellsci.report.Error: cellsci.Error
---@field kind cellsci.report.ErrorKind
---@field metric? string `report.score`'s `no_metric`: the metric asked for.

---@alias cellsci.report.Direction "lower"|"higher"

---Metrics as `report.load_metrics` returns them; every function here also takes a metrics.json path
---(or its folder) or a raw metrics table in its place.
---@class cellsci.report.Metrics
---@field models table<string, cellsci.report.ModelMetrics> By model name.
---@field winner? string The model the file declares the winner (dropped with a warning when it is no model).
---@field folds string[] Every fold name, sorted numerically (`fold_2` before `fold_10`).
---@field order string[] The models in file order.
---@field metric_names string[] In table order: MSE, PCC, R2, DEG_RMSE_20, DEG_RMSE_50, DEG_PCC_20, DEG_PCC_50, MSE_DM, PCC_DM, R2_DM, then the others as they first appear.
---@field warnings string[] What could not be read, and why.

---One model's metrics.
---@class cellsci.report.ModelMetrics
---@field per_fold table<string, table<string, number>> `{FOLD = {METRIC = value}}` (NaN/Infinity kept as floats).
---@field aggregate table<string, number> `{METRIC = value}`.

---Read metrics from a metrics.json, a folder holding one, or a table (raw, or one this function
---returned: its `order` and `warnings` are kept). Many layouts are accepted (see docs/readme/report.md).
---Raises when the argument is neither a string nor a table.
---@param source string|table
---@return cellsci.report.Metrics|nil metrics
---@return cellsci.report.Error|nil err `not_found`, `io`, `parse` or `no_models`.
function report.load_metrics(source) end

---Options of `report.compare` and `report.narrative_input` / `report.narrative_messages`. Any other key raises.
---@class cellsci.report.CompareOpts
---@field metric? string Default: see the module's defaults (config `experiment.primary_metric`, else the first metric present).
---@field baseline? string Default: the first model named like a baseline (`baseline`/`linear`/`ridge`, then `base`), else the first model.
---@field direction? cellsci.report.Direction|string Default: config `experiment.direction` for the primary metric, else inferred from the name.

---A model's line in a comparison. Fields that cannot be computed are absent (nil), never NaN.
---@class cellsci.report.ModelComparison
---@field mean? number Over the folds' finite values, else the aggregate.
---@field sd? number Absent for an aggregate-only model.
---@field n integer Values the mean is over (1 for an aggregate).
---@field dropped integer NaN/infinite values left out.
---@field source "folds"|"aggregate"|"none"
---@field is_baseline boolean
---@field delta_pct? number Change of the mean against the baseline's, in %, positive = better.
---@field delta_reason? string Why `delta_pct` is missing.
---@field n_paired integer Folds both this model and the baseline report with finite values.
---@field test? "paired t" Present when a t-test ran.
---@field t? number
---@field df? integer
---@field p_value? number Two-sided paired t-test (= scipy `ttest_rel`).
---@field significant? boolean `p_value < 0.05`.
---@field mean_diff? number Model − baseline.
---@field sd_diff? number
---@field ci95? {lo: number, hi: number} 95% confidence interval of `mean_diff`.
---@field cohens_dz? number
---@field holm_p? number Holm's step-down adjustment across the models with a t-test.
---@field holm_significant? boolean
---@field wilcoxon_p? number Two-sided Wilcoxon signed-rank test (= scipy `wilcoxon` defaults).
---@field wilcoxon_method? "exact"|"permutation"|"normal approximation"
---@field wilcoxon_reason? string Why there is no Wilcoxon p.
---@field no_test_reason? string Why there is no t-test (`"this is the baseline"`, one fold, zero variance, ...).
---@field notes string[] Folds left out, NaN values dropped.

---What `report.compare` returns.
---@class cellsci.report.Comparison
---@field metric string The metric compared (as the file spells it).
---@field direction cellsci.report.Direction
---@field direction_source string `"option"` (given, or from the config) or `"inferred from the name"`.
---@field baseline string
---@field best? string The model with the best mean.
---@field alpha number `0.05`.
---@field order string[] The models, in metrics order.
---@field models table<string, cellsci.report.ModelComparison> By model name.

---Compare every model with the baseline on one metric (paired t-test, Holm, Wilcoxon).
---@param metrics string|table A path or a metrics table.
---@param opts? cellsci.report.CompareOpts
---@return cellsci.report.Comparison|nil comparison
---@return cellsci.report.Error|nil err `not_found`, `io`, `parse`, `no_models`, `no_metric` or `bad_baseline`.
function report.compare(metrics, opts) end

---Options of `report.score`. Any other key raises.
---@class cellsci.report.ScoreOpts
---@field metric? string Default: see the module's defaults.
---@field direction? cellsci.report.Direction|string Default: config `experiment.direction` for the primary metric, else inferred from the name.
---@field model? string The model whose number is the score. Default: `report_policy.score_rule`'s (the declared winner, else the first model).
---@field from? ("aggregate"|"folds")[] Where the number comes from, first finite wins. Default: `report_policy.score_rule`'s (`{"aggregate", "folds"}`).

---What `report.score` returns.
---@class cellsci.report.Score
---@field score number
---@field model string The `model=` option, else the policy's (the declared winner, else the first model).
---@field source "aggregate"|"mean of folds"
---@field metric string As the file spells it.
---@field direction cellsci.report.Direction Which way is better (comparing with a threshold is the caller's job).

---The success score under a score rule (`model=`, `from=`, else `report_policy.score_rule`; by default
---the declared winner's, else the first model's, aggregate `metric`, else the mean of its finite
---per-fold values).
---@param metrics string|table A path or a metrics table.
---@param opts? cellsci.report.ScoreOpts
---@return cellsci.report.Score|nil score
---@return cellsci.report.Error|nil err `no_metric` (with `err.metric`), `bad_model`, or a loading kind.
function report.score(metrics, opts) end

---A plot linked from the report.
---@class cellsci.report.PlotLink
---@field path string As linked from the report.
---@field title? string Default: `path`.

---Options of `report.markdown`. Any other key raises.
---@class cellsci.report.MarkdownOpts
---@field metrics string|table Required: a path or a metrics table. When it cannot be read the report says so instead of the tables.
---@field metric? string Default: see the module's defaults.
---@field direction? cellsci.report.Direction|string Default: see the module's defaults.
---@field baseline? string Default: see the module's defaults.
---@field narrative? string The LLM's discussion (an outer markdown fence is dropped). Default: none.
---@field narrative_error? string|cellsci.Error Why the narrative is missing (an `err` from `llm.chat` works). Default: none.
---@field plots? (string|cellsci.report.PlotLink)[] Plots to link (a path's title is its file stem with `_`/`-` as spaces). Default: none.
---@field title? string Default: `"Experiment report"`.
---@field path? string Also write the text there (atomically, folders created). Default: none.

---The experiment_report.md text: metric, winner, baseline, folds; a table with mean ± SD of every metric,
---Δ% and p; a table of the tests; notes and warnings; the plots; the narrative. Missing numbers print as
---"—", never NaN. Raises when `metrics` is missing.
---@param opts cellsci.report.MarkdownOpts
---@return string|nil text
---@return cellsci.report.Error|nil err `io` when `path` could not be written.
function report.markdown(opts) end

---The computed numbers as pretty JSON text (per model mean/sd/n of every metric, the tests against the
---baseline, warnings; 6 significant digits; no NaN), for a report prompt's `${metrics_json}`.
---@param metrics string|table
---@param opts? cellsci.report.CompareOpts
---@return string|nil json_text
---@return cellsci.report.Error|nil err A loading kind.
function report.narrative_input(metrics, opts) end

---A report prompt: a table with `system` and `user_template`, or the path of its YAML file.
---@class cellsci.report.Prompt
---@field system? string Default: a built-in system prompt.
---@field user_template? string Default: "```json\n${metrics_json}\n```".

---The chat messages for the narrative: the prompt with `${primary_metric}` and `${metrics_json}` filled
---in (other `${...}` left alone), ready for `llm.chat{messages = ...}`. Raises when `prompt` is neither
---a table nor a string. A thin call into `report_policy.narrative_messages` (stdlib/report_policy.lua),
---where the wording and the reading of the prompt file live; a prompt file that is not a mapping is `parse`.
---@param prompt cellsci.report.Prompt|string
---@param metrics string|table
---@param opts? cellsci.report.CompareOpts
---@return cellsci.llm.Message[]|nil messages `{{role = "system", content = ...}, {role = "user", content = ...}}`.
---@return cellsci.report.Error|nil err `io` / `parse` for the prompt file, or a loading kind.
function report.narrative_messages(prompt, metrics, opts) end

---Options of `report.plot_folds`. Any other key raises.
---@class cellsci.report.PlotFoldsOpts
---@field metric? string Default: see the module's defaults.
---@field direction? cellsci.report.Direction|string Default: config `experiment.direction` for the primary metric, else inferred from the name.
---@field title? string Default: `"<metric> per fold (<lower|higher> is better)"`.
---@field path? string Write the SVG there (folders created) and return the path. Default: none (return the SVG text).

---An SVG plot of the metric per fold, one line per model (aggregate-only models dashed and flat; NaN
---values left out and counted in a caption).
---@param metrics string|table
---@param opts? cellsci.report.PlotFoldsOpts
---@return string|nil svg_or_path The SVG text, or `path` when one was given.
---@return cellsci.report.Error|nil err `no_metric`, `plot`, `io`, or a loading kind.
function report.plot_folds(metrics, opts) end

---One iteration of `report.plot_iterations`.
---@class cellsci.report.Iteration
---@field iteration? integer Its number (also read from `number` or `index`). Default: its position.
---@field score? number Default: none (drawn as a grey cross labelled with `status`).
---@field status? string
---@field met? boolean The success policy's verdict (green point); default: judged by the threshold.

---Options of `report.plot_iterations`. Any other key raises.
---@class cellsci.report.PlotIterationsOpts
---@field threshold? number Drawn as a dashed red line; points that meet it are green. Default: none.
---@field metric? string The axis label and direction's source. Default: the config's `experiment.primary_metric`, else `"score"`.
---@field direction? cellsci.report.Direction|string Default: config `experiment.direction` for the primary metric, else inferred from the name.
---@field title? string Default: `"<metric> per iteration (<lower|higher> is better)"`.
---@field path? string Write the SVG there (folders created) and return the path. Default: none (return the SVG text).

---An SVG plot of the score of each iteration.
---@param iterations (number|cellsci.report.Iteration)[]
---@param opts? cellsci.report.PlotIterationsOpts
---@return string|nil svg_or_path The SVG text, or `path` when one was given.
---@return cellsci.report.Error|nil err `plot` or `io`.
function report.plot_iterations(iterations, opts) end

---Options of `report.page`. Any other key raises.
---@class cellsci.report.PageOpts
---@field path? string Where to write the page (only there). Default: `run_<stamp>_<pid>.html` beside the
---summary, and `run.html` (a copy) when this run's summary is the newest in its folder.
---@field live? boolean Reload itself every `refresh` seconds. Default: the summary has no `finished_at`.
---@field refresh? number Seconds between reloads of a live page. Default: 5.

---The run page: one HTML file (no script, nothing from the network) from a loop summary and its trials'
---files, through the template `run.html.j2` (shadowable), every value HTML-escaped. Written atomically;
---cards whose inputs did not change since the last call in this process are reused.
---@param summary string The loop summary (`phase2_loop_summary_*.json`).
---@param opts? cellsci.report.PageOpts
---@return string|nil path The page's path.
---@return cellsci.report.Error|nil err `not_summary`, `io`, `template` or `internal` (a caught panic).
function report.page(summary, opts) end

---Options of `report.hypergraph` / `report.mermaid`. Any other key raises.
---@class cellsci.report.WriteOpts
---@field path? string Also write the result there (atomically, folders created). Default: none.

---A code cell with `metadata.subtask`.
---@class cellsci.report.HypergraphCell
---@field id string The subtask id, as text.
---@field name string
---@field purpose string
---@field index integer The cell's position in the notebook, 0-based (unlike `nb:cell(i)`).

---A hyperedge, one per head.
---@class cellsci.report.Hyperedge
---@field tail string[] The subtask ids it comes from.
---@field head string The subtask id it goes to.

---What `report.hypergraph` returns (and writes as JSON).
---@class cellsci.report.Hypergraph
---@field cells cellsci.report.HypergraphCell[]
---@field hypergraph? any The notebook's `metadata.execution.hypergraph` (or `metadata.hypergraph`) as is.
---@field hyperedges cellsci.report.Hyperedge[]
---@field warnings? string[] Duplicate or missing ids, and the like; absent when there are none.

---The notebook's task hypergraph. `nb` is a notebook handle, an nbformat table, or an `.ipynb` path.
---@param nb cellsci.notebook.Notebook|table|string
---@param opts? cellsci.report.WriteOpts
---@return cellsci.report.Hypergraph|nil hypergraph
---@return cellsci.report.Error|nil err `not_found`, `io`, `parse` or `notebook`.
function report.hypergraph(nb, opts) end

---The hypergraph as a fenced Mermaid `flowchart TD` (hypergraph.md): generated node ids, escaped
---labels `id: name<br/>purpose`, `a & b --> c` for multi-tail edges, dashed "(not a cell)" nodes.
---@param nb cellsci.notebook.Notebook|table|string
---@param opts? cellsci.report.WriteOpts
---@return string|nil markdown
---@return cellsci.report.Error|nil err `not_found`, `io`, `parse` or `notebook`.
function report.mermaid(nb, opts) end

---Which way is better for a metric, as `report_policy.direction` says (stdlib/report_policy.lua, which
---a user can shadow). By default from its name: `"lower"` for MSE, RMSE, MAE, MAPE, loss, error, NLL and
---names built on them (`DEG_RMSE_20`, `val_loss`); `"higher"` otherwise (a `neg_` prefix means higher).
---Ignores the config.
---@param metric string
---@return cellsci.report.Direction
function report.direction(metric) end

---Holm's step-down adjustment of p-values, in the input order (what `compare`'s `holm_p` uses).
---@param ps number[]
---@return number[]
function report.holm(ps) end

---Mean and sample SD of a list of numbers (nil when there are too few).
---@param xs number[]
---@return number|nil mean
---@return number|nil sd
function report.mean_sd(xs) end

return report
