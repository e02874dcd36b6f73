-- A strategy of your own: N drafts at once, then (if none met the criterion) one more round that
-- improves the best draft, each child told its parent's code and results. Run it with
--
--   cellsci -c generate_execution_config.json run --strategy examples/strategies/best_of_n.lua
--
-- A strategy is only its search policy: stdlib/loop.lua does the bookkeeping (trial folders, the stdout
-- lines and loop summary CellScientist's runner reads, the best so far, the archive, --resume), and
-- L:attempt runs the bundled generate -> execute -> analyze steps in the node's own trial context.
-- Nodes of one round run at the same time (task.all): their LLM calls and cells overlap. Copy it, change
-- it: this file is yours.
local task = require("task")

local M = {}

function M.run(L, opts)
  local n = math.floor(tonumber(L:setting("branches", 3)) or 3)
  -- Round 1: n drafts at once; buffer = true prints each node's lines as one block when it ends.
  local round = {}
  for _ = 1, n do
    local node = L:node({ buffer = true })
    if node then table.insert(round, function() return L:record(node, L:attempt(node, opts)) end) end
  end
  task.all(round)
  if L:done() then return end
  -- Round 2: improve the best draft (the node sees its code and its computed results).
  local best = L:best()   -- the loop tracks the best under the success policy's direction
  if not best then return end
  round = {}
  for _ = 1, n do
    local node = L:node({ buffer = true, kind = "improve", parent = best })
    if node then table.insert(round, function() return L:record(node, L:attempt(node, opts)) end) end
  end
  task.all(round)
end

return M
