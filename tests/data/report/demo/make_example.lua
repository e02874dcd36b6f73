-- Renders the example report from the demo data into a folder:
--   cellsci script tests/data/report/demo/make_example.lua tests/data/report [OUT]
-- (OUT defaults to tests/data/report/demo/example). tests/it/report.rs checks the committed copy is current.
local report = require("report")
local D = arg[1]
local out = arg[2] or (D .. "/demo/example")
local metrics = assert(report.load_metrics(D .. "/demo/metrics.json"))
assert(report.plot_folds(metrics, {metric = "MSE", path = out .. "/mse_per_fold.svg"}))
local iterations = {
  {iteration = 1, score = 0.0398, status = "VALID"},
  {iteration = 2, status = "CRASH"},
  {iteration = 3, score = 0.0336, status = "VALID"},
}
assert(report.plot_iterations(iterations, {metric = "MSE", threshold = 0.035, path = out .. "/iterations.svg"}))
assert(report.markdown{
  metrics = metrics,
  metric = "MSE",
  title = "Experiment report: demo trial",
  plots = {{path = "mse_per_fold.svg", title = "MSE per fold"}, {path = "iterations.svg", title = "MSE per iteration"}},
  narrative_error = "no LLM was configured for this example",
  path = out .. "/experiment_report.md",
})
assert(report.hypergraph(D .. "/hypergraph/tricky.ipynb", {path = out .. "/hypergraph.json"}))
assert(report.mermaid(D .. "/hypergraph/tricky.ipynb", {path = out .. "/hypergraph.md"}))
