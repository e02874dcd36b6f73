-- The seed's loop: one node at a time, each from scratch (or, with search.feedback = true, told what the
-- earlier ones produced), until the criterion is met or experiment.max_iterations nodes have run.
local M = {}

function M.run(L, opts)
  while not L:done() do
    local node = L:node({})
    if not node then break end
    L:record(node, L:attempt(node, opts))
  end
end

return M
