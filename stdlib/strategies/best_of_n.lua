-- Best of N: search.branches drafts at once (default 4), in rounds, until the criterion is met or
-- experiment.max_iterations nodes have run; the best is archived. With a kernel pool each branch runs on
-- its own kernel (search.branches kernels, pinned to exec.gpus when given).
local task = require("task")
local pool_of = require("strategies.pool")

local M = {}

function M.run(L, opts)
  local n = math.max(1, math.floor(tonumber(L:setting("branches", 4)) or 4))
  local pool = pool_of(n)
  while not L:done() do
    local fns = {}
    for _ = 1, n do
      local node = L:node({ buffer = n > 1, pool = pool })
      if not node then break end
      table.insert(fns, function() return L:record(node, L:attempt(node, opts)) end)
    end
    if #fns == 0 then break end
    task.all(fns)
  end
  if pool then pool:shutdown() end
end

return M
