-- Best of N: search.branches drafts at once (default 4), in rounds, until the criterion is met or
-- experiment.max_iterations nodes have run; the best is archived. With a kernel pool each branch runs on
-- its own kernel (search.branches kernels, pinned to exec.gpus when given).
local rounds = require("strategies.rounds")

local M = {}

function M.run(L, opts)
  local n = math.max(1, math.floor(tonumber(L:setting("branches", 4)) or 4))
  rounds(L, opts, n, function() return { kind = "draft" } end)
end

return M
