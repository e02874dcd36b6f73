-- Rounds of nodes at once, what best_of_n and tree share: each round asks `choose(taken)` for up to
-- `n` nodes ({kind=, parent=}, `taken` is the round's own scratch table), runs them concurrently
-- (task.all) and records each, until the loop is done. With n > 1 and kernel.pool in the host, the nodes
-- take their kernels from a pool of n kernels started ahead (pinned to exec.gpus when given); otherwise
-- each node starts its own kernel. Each node's lines are kept and printed as one block when it ends.
local host = require("host")
local kernel = require("kernel")
local task = require("task")

return function(L, opts, n, choose)
  local pool
  if n > 1 and type(kernel.pool) == "function" then
    pool = kernel.pool({ size = n, gpus = (host.config.exec or {}).gpus })
  end
  local ok, err = pcall(function()
    while not L:done() do
      local fns, taken = {}, {}
      for _ = 1, n do
        local act = choose(taken) or {}
        local node = L:node({ buffer = n > 1, pool = pool, kind = act.kind, parent = act.parent })
        if not node then break end
        table.insert(fns, function() return L:record(node, L:attempt(node, opts)) end)
      end
      if #fns == 0 then break end
      task.all(fns)
    end
  end)
  if pool then pool:shutdown() end
  if not ok then error(err, 0) end
end
