-- Monte Carlo tree search over the nodes (UCT): a virtual root whose children are the drafts (up to
-- search.drafts, 5). From the root, a node with fewer than search.num_children children (3) is expanded
-- (improved when valid, repaired when buggy and no more than search.max_debug_depth repairs deep);
-- otherwise the walk goes down to the child with the highest Q + c * sqrt(ln N(parent) / N(child)), where
-- Q is the mean value (0..1, by the metric's direction) of the child's subtree, N counts the nodes of a
-- subtree, nodes in flight included as virtual visits (so free slots spread out), and c is
-- search.exploration (0.25, as AIRA-dojo). A subtree with nothing left to expand is skipped; when nothing is left, a new
-- draft.
local search = require("search")

local M = {}

M.DEFAULTS = { drafts = 5, num_children = 3, max_debug_depth = 3, exploration = 0.25 }

local function setting(S, key) return tonumber(S.L:setting(key, M.DEFAULTS[key])) or M.DEFAULTS[key] end

-- The tree: children by parent iteration (nil = root), records and nodes in flight alike.
local function tree(S)
  local kids, node = { root = {} }, {}
  local function add(n)
    node[n.iter] = n
    local key = n.parent or "root"
    kids[key] = kids[key] or {}
    table.insert(kids[key], n)
  end
  for _, r in ipairs(S.L:records()) do
    if r.status ~= "CANCELLED" then add(r) end
  end
  for _, f in ipairs(S:flying()) do
    add({ iter = f.iter, kind = f.kind, parent = f.parent, flying = true })
  end
  return kids, node
end

function M.choose(S)
  local kids, _ = tree(S)
  local max_children, max_depth, c =
    setting(S, "num_children"), setting(S, "max_debug_depth"), setting(S, "exploration")
  local stats = {}
  -- visits and summed value of each subtree
  local function walk(n)
    local visits, value = 1, n.flying and 0 or S:value(n)
    for _, ch in ipairs(kids[n.iter] or {}) do
      local v, s = walk(ch)
      visits, value = visits + v, value + s
    end
    stats[n.iter] = { n = visits, q = value / visits }
    return visits, value
  end
  local total = 0
  for _, d in ipairs(kids.root) do
    total = total + walk(d)
  end
  local function expandable(n)
    if n.flying then return false end
    if n.status == "VALID" then return #(kids[n.iter] or {}) < max_children end
    if n.status == "CRASH" or n.status == "NO_METRIC" then
      return #(kids[n.iter] or {}) == 0 and S:debug_depth(n) < max_depth
    end
    return false
  end
  local open = {}
  local function has_open(n)
    if open[n.iter] ~= nil then return open[n.iter] end
    local o = expandable(n)
    for _, ch in ipairs(kids[n.iter] or {}) do
      o = has_open(ch) or o
    end
    open[n.iter] = o
    return o
  end
  if #kids.root < setting(S, "drafts") then return { kind = "draft" } end
  local function best_child(list, parent_n)
    local best, bu
    for _, ch in ipairs(list) do
      if has_open(ch) then
        local st = stats[ch.iter]
        local u = st.q + c * math.sqrt(math.log(math.max(parent_n, 1)) / st.n)
        if bu == nil or u > bu then
          best, bu = ch, u
        end
      end
    end
    return best
  end
  local n = best_child(kids.root, total)
  while n do
    if expandable(n) then
      if n.status == "VALID" then return { kind = "improve", parent = n, focus = S:next_focus(n.iter) } end
      return { kind = "debug", parent = n }
    end
    n = best_child(kids[n.iter] or {}, stats[n.iter].n)
  end
  -- nothing left to expand: a new draft (after the nodes in flight, which may open new branches)
  if #S:flying() > 0 then return nil end
  return { kind = "draft" }
end

function M.run(L, opts)
  search.run(L, opts, function() return require("strategies.mcts") end)
end

return M
