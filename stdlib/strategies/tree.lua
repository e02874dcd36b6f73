-- `tree`: the name of the default tree policy, which is greedy (AIDE's: stdlib/strategies/greedy.lua).
local M = {}

function M.choose(S) return require("strategies.greedy").choose(S) end

function M.run(L, opts)
  require("search").run(L, opts, function() return require("strategies.tree") end)
end

return M
