-- Tree search (after AIDE): search.drafts drafts first (default: search.branches), then, in rounds of
-- search.branches nodes at once, debug the buggy leaves (up to search.max_debug_depth repairs in a row)
-- and improve the best valid node, each child told its parent's code, results or error. Stops when the
-- criterion is met or experiment.max_iterations nodes have run; the best is archived. Each record keeps
-- its parent, so the summary is the tree.
local rounds = require("strategies.rounds")

local M = {}

-- How many repairs in a row led to this record.
local function debug_depth(L, rec)
  local by, d = {}, 0
  for _, r in ipairs(L:records()) do by[r.iter] = r end
  while rec and rec.kind == "debug" do
    d = d + 1
    rec = by[rec.parent]
  end
  return d
end

-- The next action: {kind=, parent=} (a draft when nothing else fits).
function M.choose(L, taken)
  local drafts = 0
  local expanded = {}
  for _, r in ipairs(L:records()) do
    if r.kind == "draft" or r.kind == nil then drafts = drafts + 1 end
    if r.parent then expanded[r.parent] = true end
  end
  for k in pairs(taken) do expanded[k] = true end
  local want = math.floor(tonumber(L:setting("drafts", L:setting("branches", 4))) or 4)
  if drafts + (taken.drafts or 0) < want then
    taken.drafts = (taken.drafts or 0) + 1
    return { kind = "draft" }
  end
  local max_debug = math.floor(tonumber(L:setting("max_debug_depth", 2)) or 2)
  for _, r in ipairs(L:records()) do
    if (r.status == "CRASH" or r.status == "NO_METRIC") and not expanded[r.iter] and debug_depth(L, r) < max_debug then
      taken[r.iter] = true
      return { kind = "debug", parent = r }
    end
  end
  local best = L:best()
  if best then return { kind = "improve", parent = best } end
  return { kind = "draft" }
end

function M.run(L, opts)
  local n = math.max(1, math.floor(tonumber(L:setting("branches", 4)) or 4))
  rounds(L, opts, n, function(taken) return M.choose(L, taken) end)
end

return M
