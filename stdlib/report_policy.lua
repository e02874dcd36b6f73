-- report_policy.lua: the decisions behind a report and a score, which the `report` module computes from.
--
-- Which way a metric is better, which model is the baseline, which number is "the score" of a
-- metrics file, and the words of the narrative request. `report.compare`, `report.score`,
-- `report.markdown`, `report.plot_*` and `report.narrative_*` ask this module whenever their caller
-- gives no `direction=`, `baseline=` or `model=`/`from=`; `success.lua` asks it for the direction.
--
-- Shadow this file (copy it next to your script or into --scripts DIR) to change any of these; it is
-- reloaded with the other scripts while a run goes on. No side effects at the top level; never call
-- the `report` functions that would ask this module back (direction, baseline, score rule) from here.
local M = {}

-- Metric names built on one of these words (as a whole word: MSE, DEG_RMSE_20, val_loss,
-- mean_absolute_error) are lower-is-better; so is any name containing "loss" or ending in "mse".
M.lower_is_better = {
  "mse",
  "rmse",
  "mae",
  "mape",
  "smape",
  "msle",
  "rmsle",
  "medae",
  "loss",
  "error",
  "err",
  "nll",
  "logloss",
  "crossentropy",
  "deviance",
  "perplexity",
  "brier",
  "wer",
  "cer",
}

-- A first word "neg" (scikit-learn's negated errors, neg_mse) means higher-is-better whatever follows.
M.higher_prefix = "neg"

--- "lower" or "higher" for a metric name, and why (report.compare's `direction_source`).
function M.direction(metric)
  local lower = string.lower(metric or "")
  local words = {}
  for w in lower:gmatch("%w+") do
    words[#words + 1] = w
  end
  if words[1] == M.higher_prefix then return "higher", "inferred from the name" end
  local is_error = {}
  for _, w in ipairs(M.lower_is_better) do
    is_error[w] = true
  end
  for _, w in ipairs(words) do
    if is_error[w] then return "lower", "inferred from the name" end
  end
  if lower:find("loss", 1, true) or lower:sub(-3) == "mse" then return "lower", "inferred from the name" end
  return "higher", "inferred from the name"
end

-- The baseline is the first model whose name contains a word of the first group, else of the next
-- group, ...; else the first model. Case does not matter.
M.baseline_words = { { "baseline", "linear", "ridge" }, { "base" } }

--- The baseline's name among `names` (the models in file order).
function M.baseline(names)
  for _, group in ipairs(M.baseline_words) do
    for _, n in ipairs(names) do
      local l = string.lower(n)
      for _, w in ipairs(group) do
        if l:find(w, 1, true) then return n end
      end
    end
  end
  return names[1]
end

-- Where the score of the chosen model comes from, in order: "aggregate" (its aggregate value of the
-- metric) and "folds" (the mean of its finite per-fold values). The first that has a finite value wins.
M.score_from = { "aggregate", "folds" }

--- The score rule of a metrics table (report.load_metrics' shape): the model whose number is the score
--- (the notebook's declared winner, else the first model) and where the number comes from.
function M.score_rule(metrics, metric) -- luacheck: no unused args
  return { model = metrics.winner or (metrics.order or {})[1], from = M.score_from }
end

-- The narrative request when the report prompt has no `system` / `user_template` (prompts/report.yaml
-- has both). ${primary_metric} and ${metrics_json} are filled in; other ${...} are left as written.
M.narrative_defaults = {
  system = "You are a computational biologist. The results table of this experiment is already written from "
    .. "the computed numbers below; write only the discussion: which model wins on ${primary_metric} and by how "
    .. "much, whether the differences against the baseline are statistically significant, and what the other "
    .. "metrics add. Quote numbers only from the JSON. Markdown, no tables, at most 300 words.",
  user_template = "```json\n${metrics_json}\n```",
}

local ERR_MT = { __tostring = function(e) return tostring(e.kind) .. ": " .. tostring(e.message) end }
local function fail(kind, message) return nil, setmetatable({ kind = kind, message = message }, ERR_MT) end

local function fill(template, vars)
  return (template:gsub("%${([%w_]+)}", function(k) return vars[k] end))
end

--- The chat messages of the narrative: `prompt` (a table with `system` and `user_template`, or the
--- path of a YAML file holding them) filled with the numbers report.narrative_input computes.
--- Returns {{role = "system", content}, {role = "user", content}}, or nil, err (kind "io", "parse",
--- or whatever report.narrative_input returns).
function M.narrative_messages(prompt, metrics, opts)
  local report, json = require("report"), require("json")
  if type(prompt) == "string" then
    local text, rerr = require("fs").read(prompt)
    if not text then return fail("io", "cannot read report prompt " .. prompt .. ": " .. tostring(rerr)) end
    local doc, yerr = require("yaml").decode(text)
    if doc == nil and yerr then
      return fail("parse", "report prompt " .. prompt .. " is not valid YAML: " .. tostring(yerr))
    end
    if type(doc) ~= "table" or rawlen(doc) > 0 then
      return fail("parse", "report prompt " .. prompt .. " must be a mapping with system and user_template")
    end
    prompt = doc
  elseif type(prompt) ~= "table" then
    error("report.narrative_messages: the prompt is a table or a YAML path, got " .. type(prompt), 2)
  end
  local numbers, err = report.narrative_input(metrics, opts)
  if not numbers then return nil, err end
  local metric = json.decode(numbers).primary_metric
  local vars = { primary_metric = type(metric) == "string" and metric or "", metrics_json = numbers }
  local function text(key)
    local v = prompt[key]
    return type(v) == "string" and v or M.narrative_defaults[key]
  end
  return json.array({
    { role = "system", content = fill(text("system"), vars) },
    { role = "user", content = fill(text("user_template"), vars) },
  })
end

return M
