-- Best of N: drafts only, search.branches of them in flight at once (default 4); a slot that frees starts
-- the next draft at once, until the criterion is met or the node budget (search.max_nodes, else
-- experiment.max_iterations) is spent; the best is archived. With more than one branch each node runs on
-- a kernel of a pool started ahead (pinned to exec.gpus when given).
local search = require("search")

local M = {}

function M.choose(_S) return { kind = "draft" } end

function M.run(L, opts)
  search.run(L, opts, function() return require("strategies.best_of_n") end)
end

return M
