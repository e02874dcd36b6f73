-- Success criterion for `cellsci run`: does an iteration meet the criterion?
--
-- Shadow this file (put your own success.lua in your scripts folder) to change what counts as success;
-- edits take effect at the next iteration of a running `run`. Must not have side effects at load.
--
-- The criterion is chosen by the config's `experiment.criterion`:
--   "threshold"   (the default) the score beats experiment.success_threshold in the metric's direction;
--   "significant" the threshold is met AND the winner is better than the baseline in the metric's
--                 direction with p < experiment.alpha (default 0.05) on the paired t-test over matching
--                 folds, Holm-corrected across the models compared (report.compare's holm_p). A trial
--                 without folds, with fewer than the test needs, or whose winner is the baseline, is "not
--                 significant" with that reason, never met;
--   any name in M.criteria: a criterion of your own (below).
--
-- API (what the loop calls):
--   judge(t) -> met (boolean), reason (string), detail (table)
--     t = {score=, threshold=, metric=, direction=,          -- as always
--          criterion=  "threshold" | "significant" | a name in M.criteria | a function(t), default "threshold"
--          alpha=      default 0.05
--          metrics=    report.load_metrics's table {models = {NAME = {per_fold=, aggregate=}}, winner=}
--          compare=    report.compare's table for the primary metric (computed from metrics when absent)
--          winner=, baseline=, trial= (folder), record = {kind=, parent=, iter=},
--          seeds=      nil, or {{seed=, score=}, ...} from confirmation reruns (score is then their mean)}
--     detail = {criterion=, met=, reason=, description=, score=, threshold=, threshold_met=, metric=,
--               direction=, alpha=, winner=, baseline=, test=, n=, p=, p_holm=, mean_diff=, ci95 = {lo, hi},
--               cohens_dz=, delta_pct=, seeds = {{seed=, score=}...}, seed_stats = {n, mean, sd, min, max}}
--               (test fields only where a test ran); stdlib/verdict.lua turns it into the report's section.
--   describe(t) -> string: the criterion in words for the loop's lines, from {metric=, threshold=,
--     direction=, criterion=, alpha=, confirm_seeds=}
--   check(criterion, alpha) -> true | nil, message: is experiment.criterion (and experiment.alpha) usable?
--   direction(metric, configured), better(a, b, metric, direction): as before.
--
-- A criterion of your own: in a copy of this file (or any file that requires it and adds to it),
--   M.criteria.mine = function(t) return met, reason, detail_or_nil end
-- or, with its own words for the loop's lines,
--   M.criteria.mine = { judge = function(t) ... end, describe = function(t) return "..." end }
-- and set "experiment": {"criterion": "mine"}. A reason must not contain the runner's markers (README,
-- "The run page"): judge() rewrites any that slip in.
local M = {}

-- "higher" or "lower" for a metric: the config's experiment.direction wins, else report_policy.lua
-- decides (by default from the name: lower is better for MSE, RMSE, MAE, MAPE, loss, error, NLL and
-- names built on them), so the report and the criterion always agree.
function M.direction(metric, configured)
  if configured == "higher" or configured == "lower" then return configured end
  return (require("report_policy").direction(metric or ""))
end

-- Is score a better than score b under the metric's direction? (Used to pick the best iteration.)
function M.better(a, b, metric, direction)
  if type(a) ~= "number" or a ~= a then return false end
  if type(b) ~= "number" or b ~= b then return true end
  if M.direction(metric, direction) == "lower" then return a < b end
  return a > b
end

M.DEFAULT_ALPHA = 0.05

-- Phrases CellScientist's runner reads in any line of phase2.log (DESIGN, "The unified runner"): a
-- success marker in the line of a node that did not succeed, or a bug marker in the line of a valid one,
-- would make the runner misread the run. A reason is printed in such lines, so they are rewritten.
M.RUNNER_PHRASES = {
  { "success threshold met", "threshold passed" },
  { "target metric reached", "target metric passed" },
  { "early stop triggered", "early stop" },
  { "optimization converged", "optimization done" },
  { "stopping early", "stopping before the end" },
  { "success!", "success" },
  { "score:", "score" },
  { "exception:", "exception" },
  { "traceback", "trace" },
  { "error in node", "error in cell" },
  { "[fix]", "(fix)" },
  { "notebook generation failed", "notebook generation did not work" },
  { "llm_gen_failure", "llm generation failure" },
  { "critical parse failure", "parse failure" },
  { "initiating adaptive fix", "fixing" },
  { "[graph] ❌", "[graph]" },
}

-- text with every runner phrase (any case) replaced by harmless words.
function M.clean(text)
  text = tostring(text)
  local lower = text:lower()
  for _, pair in ipairs(M.RUNNER_PHRASES) do
    local from, to = pair[1], pair[2]
    local i = lower:find(from, 1, true)
    while i do
      text = text:sub(1, i - 1) .. to .. text:sub(i + #from)
      lower = lower:sub(1, i - 1) .. to .. lower:sub(i + #from)
      i = lower:find(from, i + #to, true)
    end
  end
  return text
end

local function finite(x) return type(x) == "number" and x == x and x ~= math.huge and x ~= -math.huge end

-- A p-value as the report prints it: 0.310, 0.0625, 7.0e-7 (below 0.001), 1 (from 0.9995).
function M.fmt_p(p)
  if not finite(p) then return "—" end
  if p < 1e-3 then
    local m, sign, ex = string.format("%.1e", p):match("^(.-)e([-+])0*(%d+)$")
    return m .. "e" .. (sign == "-" and "-" or "") .. ex
  end
  if p >= 0.9995 then return "1" end
  local d = math.max(3, math.min(5, 2 - math.floor(math.log(p, 10))))
  return string.format("%." .. d .. "f", p)
end

-- Mean, sample SD, min and max of the seeds' scores (the finite ones).
function M.seed_stats(seeds)
  if type(seeds) ~= "table" then return nil end
  local xs = {}
  for _, s in ipairs(seeds) do
    local v = type(s) == "table" and s.score or nil
    if finite(v) then table.insert(xs, v) end
  end
  local st = { n = #xs, runs = #seeds }
  if #xs == 0 then return st end
  st.mean, st.sd = require("report").mean_sd(xs)
  st.min, st.max = math.min(table.unpack(xs)), math.max(table.unpack(xs))
  return st
end

-- The parts of detail every criterion shares.
local function base_detail(t, name)
  return {
    criterion = name,
    score = t.score,
    threshold = t.threshold or 0,
    metric = t.metric or "score",
    direction = M.direction(t.metric, t.direction),
    alpha = t.alpha or M.DEFAULT_ALPHA,
    winner = t.winner,
    baseline = t.baseline,
    trial = t.trial,
    seeds = t.seeds,
    seed_stats = M.seed_stats(t.seeds),
  }
end

-- The threshold alone: met (boolean), reason. Today's words exactly.
local function threshold_verdict(t)
  local score, threshold = t.score, t.threshold or 0
  local dir = M.direction(t.metric, t.direction)
  if not finite(score) then return false, "no usable score" end
  -- The explanation states the comparison as it came out ("PCC 0.7586 <= 0.9" when not met).
  local name = t.metric or "score"
  if dir == "lower" then
    local met = score < threshold
    return met, string.format("%s %.4f %s %s (lower is better)", name, score, met and "<" or ">=", tostring(threshold))
  end
  local met = score > threshold
  return met, string.format("%s %.4f %s %s (higher is better)", name, score, met and ">" or "<=", tostring(threshold))
end

-- With seeds, where the score comes from, after the threshold's words.
local function seeds_note(st)
  if not st or not st.mean then return "" end
  local s = string.format("; mean of %d seed%s", st.n, st.n == 1 and "" or "s")
  if st.sd then s = s .. string.format(", SD %.4f, range %.4f to %.4f", st.sd, st.min, st.max) end
  return s
end

local function with_seeds(reason, st)
  local note = seeds_note(st)
  if note == "" then return reason end
  -- "PCC 0.7000 > 0.5 (higher is better)" -> "PCC 0.7000 > 0.5 (higher is better; mean of 3 seeds, ...)"
  local head, tail = reason:match("^(.*)%)(.-)$")
  if head then return head .. note .. ")" .. tail end
  return reason .. " (" .. note:sub(3) .. ")"
end

M.criteria = {}

-- "threshold": the score against the threshold, nothing else (the runner sees no change).
M.criteria.threshold = {
  judge = function(t)
    local met, why = threshold_verdict(t)
    local d = base_detail(t, "threshold")
    why = with_seeds(why, d.seed_stats)
    d.threshold_met = met
    return met, why, d
  end,
  describe = function(t)
    local dir = M.direction(t.metric, t.direction)
    return string.format(
      "%s %s %s (%s is better)",
      t.metric or "score",
      dir == "lower" and "<" or ">",
      tostring(t.threshold or 0),
      dir
    )
  end,
}

-- Holm's step-down adjustment of p-values (a list), in the input order (the host's, as compare uses).
function M.holm(ps) return require("report").holm(ps) end

-- The Holm-adjusted p of `name` in a compare table: compare's own (holm_p), else Holm over the models
-- compared with the baseline that have a paired t-test p-value.
local function holm_of(cmp, name)
  local e = cmp.models[name]
  if finite(e.holm_p) then return e.holm_p end
  local names, ps = {}, {}
  for n, x in pairs(cmp.models) do
    if not x.is_baseline and finite(x.p_value) then
      table.insert(names, n)
      table.insert(ps, x.p_value)
    end
  end
  for i, adj in ipairs(M.holm(ps)) do
    if names[i] == name then return adj end
  end
  return e.p_value
end

-- "significant": the threshold AND a paired test against the baseline, Holm-corrected.
M.criteria.significant = {
  judge = function(t)
    local d = base_detail(t, "significant")
    local tmet, twhy = threshold_verdict(t)
    twhy = with_seeds(twhy, d.seed_stats)
    d.threshold_met = tmet
    local function verdict(met, why)
      d.met = met
      return met, why, d
    end
    if not finite(t.score) then return verdict(false, twhy) end
    -- what the test says, also when the threshold is missed (the report shows it)
    local cmp, cerr = t.compare, nil
    if type(cmp) ~= "table" and type(t.metrics) == "table" then
      cmp, cerr =
        require("report").compare(t.metrics, { metric = t.metric, baseline = t.baseline, direction = d.direction })
    end
    local why_not
    if type(cmp) ~= "table" or type(cmp.models) ~= "table" then
      why_not = "no comparison with a baseline ("
        .. (cerr and tostring(cerr.message or cerr) or "the trial's metrics were not given")
        .. ")"
    else
      d.baseline = cmp.baseline or t.baseline -- the model the test was against
      d.winner = t.winner or (type(t.metrics) == "table" and t.metrics.winner) or cmp.best
      local e = d.winner and cmp.models[d.winner]
      if d.winner == nil then
        why_not = "no winner to compare with the baseline " .. tostring(d.baseline)
      elseif d.winner == d.baseline then
        why_not = "the winner " .. tostring(d.winner) .. " is the baseline"
      elseif not e then
        why_not = "the winner " .. tostring(d.winner) .. " is not among the models compared"
      elseif not finite(e.p_value) then
        why_not = "no paired test against "
          .. tostring(d.baseline)
          .. " ("
          .. tostring(e.no_test_reason or "no per-fold values")
          .. ")"
      else
        d.test, d.n, d.p = e.test or "paired t", e.n_paired, e.p_value
        d.p_holm = holm_of(cmp, d.winner)
        d.mean_diff, d.ci95, d.cohens_dz, d.delta_pct = e.mean_diff, e.ci95, e.cohens_dz, e.delta_pct
        local better = finite(e.mean_diff)
          and ((d.direction == "lower" and e.mean_diff < 0) or (d.direction ~= "lower" and e.mean_diff > 0))
        local how = string.format("(%s, %d folds)", d.test, d.n)
        if not better then
          why_not = string.format(
            "not better than %s: mean difference %+.4g over %d folds (p_holm %s)",
            d.baseline,
            e.mean_diff or 0,
            d.n,
            M.fmt_p(d.p_holm)
          )
        elseif d.p_holm >= d.alpha then
          why_not = string.format(
            "not significant vs %s: p_holm %s >= %s %s",
            d.baseline,
            M.fmt_p(d.p_holm),
            tostring(d.alpha),
            how
          )
        elseif tmet then
          return verdict(
            true,
            string.format(
              "%s and better than %s: p_holm %s < %s %s",
              twhy,
              d.baseline,
              M.fmt_p(d.p_holm),
              tostring(d.alpha),
              how
            )
          )
        else
          -- significant, but the threshold decides: today's words
          return verdict(false, twhy)
        end
      end
    end
    if not tmet then return verdict(false, twhy) end
    if not why_not:find("^not ") then why_not = "not significant: " .. why_not end
    return verdict(false, twhy .. " but " .. why_not)
  end,
  describe = function(t)
    return string.format(
      "%s and better than the baseline at p < %s (paired t-test over folds, Holm)",
      M.criteria.threshold.describe(t),
      tostring(t.alpha or M.DEFAULT_ALPHA)
    )
  end,
}

-- The bundled and user criteria's names, sorted, for messages.
local function names()
  local out = {}
  for k in pairs(M.criteria) do
    table.insert(out, string.format("%q", k))
  end
  table.sort(out)
  return table.concat(out, ", ")
end

-- A criterion by name (or a function given as the criterion): {judge=, describe=?}, or nil, message.
local function resolve(c)
  if c == nil then c = "threshold" end
  if type(c) == "function" then return { judge = c }, nil end
  if type(c) ~= "string" then
    return nil, "experiment.criterion: expected a string naming a criterion (" .. names() .. "), got a " .. type(c)
  end
  local entry = M.criteria[c]
  if type(entry) == "function" then return { judge = entry }, nil end
  if type(entry) == "table" and type(entry.judge) == "function" then return entry, nil end
  if entry ~= nil then
    return nil, "experiment.criterion: M.criteria." .. c .. " in success.lua must be a function or {judge = function}"
  end
  return nil,
    string.format(
      "experiment.criterion: unknown criterion %q (valid: %s; add your own as M.criteria.%s in success.lua)",
      c,
      names(),
      c:match("^[%a_][%w_]*$") and c or "NAME"
    )
end

-- Can the loop use this criterion (and alpha)? true, or nil and a message naming the key.
function M.check(criterion, alpha)
  local _, err = resolve(criterion)
  if err then return nil, err end
  if alpha ~= nil and not (finite(alpha) and alpha > 0 and alpha < 1) then
    return nil, "experiment.alpha: expected a number between 0 and 1 (exclusive), got " .. tostring(alpha)
  end
  return true
end

-- judge(t) -> met, reason, detail (see the top of the file). An unknown criterion raises its config error.
function M.judge(t)
  local entry, err = resolve(t.criterion)
  if not entry then error(err, 0) end
  local name = type(t.criterion) == "string" and t.criterion or (t.criterion == nil and "threshold" or "custom")
  local met, why, detail = entry.judge(t)
  met = met and true or false
  why = M.clean(why == nil and (met and "met" or "not met") or why)
  if type(detail) ~= "table" then
    detail = base_detail(t, name)
    detail.threshold_met = (threshold_verdict(t))
  end
  detail.criterion = detail.criterion or name
  detail.met, detail.reason = met, why
  detail.description = detail.description
    or M.describe({
      metric = t.metric,
      threshold = t.threshold,
      direction = t.direction,
      criterion = t.criterion,
      alpha = t.alpha,
      confirm_seeds = t.seeds and #t.seeds or nil,
    })
  return met, why, detail
end

-- describe(t) -> the criterion in words ("PCC > 0.5 (higher is better)"), for the loop's header and lines.
function M.describe(t)
  t = t or {}
  local entry, err = resolve(t.criterion)
  if not entry then error(err, 0) end
  local words
  if type(entry.describe) == "function" then
    words = entry.describe(t)
  elseif type(entry.describe) == "string" then
    words = entry.describe
  else
    local name = type(t.criterion) == "string" and string.format("%q", t.criterion) or "a criterion of your own"
    words = string.format("%s from success.lua; threshold %s", name, M.criteria.threshold.describe(t))
  end
  local k = tonumber(t.confirm_seeds) or 0
  if k > 0 then
    words = string.format(
      "%s, confirmed by %d rerun%s with other seeds (CELLSCI_SEED; the score is their mean)",
      words,
      k,
      k == 1 and "" or "s"
    )
  end
  return M.clean(words)
end

return M
