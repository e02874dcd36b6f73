-- The default phase-2 pipeline (generate / execute / analyze / run).
-- Placeholder until the pipeline issue lands.
local M = {}

local function not_yet(name)
  return function()
    error("cellsci " .. name .. ": the default pipeline (scripts/pipeline.lua) is not there yet", 0)
  end
end

M.run = not_yet("run")
M.generate = not_yet("generate")
M.execute = not_yet("execute")
M.analyze = not_yet("analyze")

return M
