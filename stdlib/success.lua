-- Success criterion for `cellsci run`: does an iteration's score meet the threshold?
--
-- Shadow this file (put your own success.lua in your scripts folder) to change what counts as success;
-- edits take effect at the next iteration of a running `run`. Must not have side effects at load.
local M = {}

-- "higher" or "lower" for a metric: the config's experiment.direction wins, else report_policy.lua
-- decides (by default from the name: lower is better for MSE, RMSE, MAE, MAPE, loss, error, NLL and
-- names built on them), so the report and the criterion always agree.
function M.direction(metric, configured)
  if configured == "higher" or configured == "lower" then
    return configured
  end
  return (require("report_policy").direction(metric or ""))
end

-- judge{score=, threshold=, metric=, direction=} -> met (boolean), explanation (string)
-- A missing or non-finite score never meets the criterion.
function M.judge(t)
  local score, threshold = t.score, t.threshold or 0
  local dir = M.direction(t.metric, t.direction)
  if type(score) ~= "number" or score ~= score or score == math.huge or score == -math.huge then
    return false, "no usable score"
  end
  -- The explanation states the comparison as it came out ("PCC 0.7586 <= 0.9" when not met).
  local name = t.metric or "score"
  if dir == "lower" then
    local met = score < threshold
    return met, string.format("%s %.4f %s %s (lower is better)", name, score, met and "<" or ">=", tostring(threshold))
  end
  local met = score > threshold
  return met, string.format("%s %.4f %s %s (higher is better)", name, score, met and ">" or "<=", tostring(threshold))
end

-- Is score a better than score b under the metric's direction? (Used to pick the best iteration.)
function M.better(a, b, metric, direction)
  if type(a) ~= "number" or a ~= a then return false end
  if type(b) ~= "number" or b ~= b then return true end
  if M.direction(metric, direction) == "lower" then return a < b end
  return a > b
end

return M
