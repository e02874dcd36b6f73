-- A custom strategy: generate N candidate notebooks at once, run each, keep the best.
--
--   cellsci -c generate_execution_config.json script examples/strategies/best_of_n.lua 3
--
-- It reuses the bundled pipeline's steps (require("pipeline") gives generate_into, execute_trial,
-- analyze_trial, archive) and changes only the policy: parallel generation, then the best score wins.
-- Copy it, change it: this file is yours.
local host = require("host")
local path = require("path")
local time = require("time")
local task = require("task")
local log = require("log")
local pipeline = require("pipeline")
local success = require("success")

local n = tonumber(arg[1]) or 3
local cfg = host.config
local metric = cfg.experiment.primary_metric
local s1 = require("stage1").discover(cfg, true)
local stamp = time.stamp()

-- Generation requests go out together (task.all runs them as concurrent branches).
local branches = {}
for i = 1, n do
  branches[i] = function()
    local trial = path.join(pipeline.save_root(), "prompt", string.format("candidate_%s_%02d", stamp, i))
    local ok, err = pcall(pipeline.generate_into, trial, { use_idea = s1.idea ~= nil }, s1)
    return { trial = trial, ok = ok, err = err }
  end
end
local candidates = task.all(branches)

-- Kernels run one at a time (GPU memory); the best score under the metric's direction wins.
local best
for i, c in ipairs(candidates) do
  if c.ok then
    local ex = pipeline.execute_trial(c.trial, s1)
    local res = pipeline.analyze_trial(c.trial)
    c.score = ex.ok and res.score or nil
    log.line(string.format("[CANDIDATE] %d | %s: %s", i, metric, c.score and string.format("%.4f", c.score) or "none"))
    if c.score and (not best or success.better(c.score, best.score, metric, cfg.experiment.direction)) then
      best = c
    end
  else
    log.line(string.format("[CANDIDATE] %d | generation failed: %s", i, tostring(c.err)))
  end
end

if not best then
  log.line("[BEST] no candidate produced a score")
  return 1
end
local archived = pipeline.archive(best.trial)
local met = success.judge({ score = best.score, threshold = cfg.experiment.success_threshold, metric = metric,
  direction = cfg.experiment.direction })
log.line(string.format("[BEST] %s %.4f in %s (criterion %s)", metric, best.score, path.basename(archived or best.trial),
  met and "met" or "not met"))
return met and 0 or 1
