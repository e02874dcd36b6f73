-- Greedy tree search, AIDE's policy on the asynchronous scheduler: search.drafts drafts first (default 5);
-- then, with probability search.debug_prob (0.5), repair a buggy leaf no more than search.max_debug_depth
-- (3) repairs deep; otherwise improve the best valid node (each sibling told to change something else).
-- search.branches nodes run at once (4).
local search = require("search")

local M = {}

M.DEFAULTS = { drafts = 5, debug_prob = 0.5, max_debug_depth = 3 }

local function setting(S, key) return tonumber(S.L:setting(key, M.DEFAULTS[key])) or M.DEFAULTS[key] end

-- Buggy records with no child yet (done or in flight) that may be repaired once more.
function M.debuggable(S, max_depth)
  local out = {}
  for _, r in ipairs(S.L:records()) do
    if
      (r.status == "CRASH" or r.status == "NO_METRIC")
      and #S:children(r.iter) == 0
      and S:debug_depth(r) < max_depth
    then
      table.insert(out, r)
    end
  end
  return out
end

function M.drafts(S)
  local n = 0
  for _, r in ipairs(S.L:records()) do
    if (r.kind or "draft") == "draft" and r.status ~= "CANCELLED" then n = n + 1 end
  end
  for _, f in ipairs(S:flying()) do
    if f.kind == "draft" then n = n + 1 end
  end
  return n
end

function M.choose(S)
  if M.drafts(S) < setting(S, "drafts") then return { kind = "draft" } end
  local bugs = M.debuggable(S, setting(S, "max_debug_depth"))
  if #bugs > 0 and S:random() < setting(S, "debug_prob") then
    return { kind = "debug", parent = bugs[S:random(1, #bugs)] }
  end
  local best = S.L:best_valid()
  if not best then
    if #bugs > 0 then return { kind = "debug", parent = bugs[S:random(1, #bugs)] } end
    -- nothing to improve yet: wait for the nodes in flight rather than draft past search.drafts
    if #S:flying() > 0 then return nil end
    return { kind = "draft" }
  end
  return { kind = "improve", parent = best, focus = S:next_focus(best.iter) }
end

function M.run(L, opts)
  search.run(L, opts, function() return require("strategies.greedy") end)
end

return M
