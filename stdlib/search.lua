-- The asynchronous scheduler every parallel strategy runs on: `slots` nodes in flight at once; the moment
-- one is recorded, the policy is asked for the next. Decisions and records happen one at a time (the Lua
-- VM is one thread), and the policy sees the nodes in flight (pending visits), so free slots never pick
-- the same work blindly. A node's failure never ends the search: only the loop's stop table, the
-- criterion, a budget, the time limit or Ctrl-C do. When the search is done, the nodes still in flight
-- are cancelled at once (their LLM requests dropped, their cells interrupted, their kernels given back)
-- and recorded as CANCELLED, unless search.on_success = "finish" lets them end after a success.
--
--   local search = require("search")
--   search.run(L, opts, policy, { slots = 4 })
--
-- A policy is a table with `choose(S)`, called whenever a slot is free. It returns the next action
-- {kind = "draft"|"improve"|"debug"|"crossover", parent = record, parents = {record, record},
--  focus = "what to change"}, nil to wait until a node in flight is recorded, or false when it has nothing
-- more to try. Bundled policies: stdlib/strategies/{best_of_n,greedy,mcts,evolve}.lua. What the policy
-- can read (S):
--   S.L                the loop (L:records(), L:best(), L:setting(key, default), L.direction)
--   S:flying()         the nodes in flight: {iter=, kind=, parent=, parents=, focus=}
--   S:children(iter)   the records and nodes in flight whose parent is `iter`
--   S:debug_depth(r)   how many repairs in a row led to record r
--   S:value(r)         r's score mapped to 0..1 (best so far = 1, worst = 0; no score = 0), by direction
--   S:random()         the search's random numbers (search.seed makes a run repeatable)
-- No side effects at load.
local host = require("host")
local kernel = require("kernel")
local log = require("log")
local task = require("task")
local time = require("time")

local M = {}

local S = {}
S.__index = S

-- The operators' focus for improvements, handed out in turn so siblings of one parent differ.
M.FOCUS = {
  "the model itself (algorithm, architecture, capacity)",
  "the features and the preprocessing of the inputs",
  "the hyperparameters and the regularization",
  "the training and validation procedure (folds, early stopping, losses)",
  "combining models (ensembles, stacking, averaging)",
}

local function scored(r)
  return r.status == "VALID" and type(r.score) == "number" and r.score == r.score and r.score ~= -999.0
end
M.scored = scored

function S:flying()
  local out = {}
  for _, n in pairs(self.in_flight) do
    table.insert(out, { iter = n.iter, kind = n.kind, parent = n.parent, parents = n.parents, focus = n.focus })
  end
  table.sort(out, function(a, b) return a.iter < b.iter end)
  return out
end

function S:children(iter)
  local out = {}
  for _, r in ipairs(self.L:records()) do
    if r.parent == iter and r.status ~= "CANCELLED" then table.insert(out, r) end
  end
  for _, n in pairs(self.in_flight) do
    if n.parent == iter then
      table.insert(out, { iter = n.iter, kind = n.kind, parent = n.parent, focus = n.focus, flying = true })
    end
  end
  return out
end

function S:record_of(iter)
  for _, r in ipairs(self.L:records()) do
    if r.iter == iter then return r end
  end
  return nil
end

function S:debug_depth(rec)
  local d = 0
  while rec and rec.kind == "debug" do
    d = d + 1
    rec = rec.parent and self:record_of(rec.parent) or nil
  end
  return d
end

function S:value(rec)
  if not rec or not scored(rec) then return 0 end
  local lo, hi
  for _, r in ipairs(self.L:records()) do
    if scored(r) then
      lo = (lo == nil or r.score < lo) and r.score or lo
      hi = (hi == nil or r.score > hi) and r.score or hi
    end
  end
  if hi == lo then return 1 end
  local v = (rec.score - lo) / (hi - lo)
  if self.L.direction == "lower" then v = 1 - v end
  return v
end

function S:random(a, b)
  if a == nil then return math.random() end
  return math.random(a, b)
end

-- The focus for the next improvement of `iter`: the first of M.FOCUS no sibling (in flight or done) has.
function S:next_focus(iter)
  local taken = {}
  for _, c in ipairs(self:children(iter)) do
    local f = c.focus or (self.in_flight[c.iter] or {}).focus
    if f then taken[f] = (taken[f] or 0) + 1 end
  end
  local best, n = nil, math.huge
  for _, f in ipairs(M.FOCUS) do
    if (taken[f] or 0) < n then
      best, n = f, taken[f] or 0
    end
  end
  return best
end

function S:cancel_all(reason)
  self.cancel_reason = self.cancel_reason or reason
  for _, n in pairs(self.in_flight) do
    if not n.canceller:cancelled() then
      n.canceller:cancel()
      log.info(string.format("[SEARCH] node %d (%s) cancelled: %s", n.iter, n.kind, reason))
    end
  end
end

-- Why the search stops now, or nil: the reason in-flight nodes are cancelled with.
function S:stop_reason()
  local L = self.L
  if host.interrupted() then return nil end -- Ctrl-C reaches every node by itself
  if L.met_any then
    if L:setting("on_success", "stop") == "finish" then return nil end
    return "the criterion was met"
  end
  if L.stopped then
    return L.stopped == "time_limit" and "the search's time limit is spent"
      or ("the search stopped (" .. L.stopped .. ")")
  end
  return nil
end

-- The policy's next action (after a reload of edited scripts: this is a safe point).
function S:decide()
  host.reload()
  local pol = self.get_policy()
  local ok, act = pcall(pol.choose, self)
  if not ok then
    log.error("[SEARCH] the policy failed: " .. log.quote(tostring(act)) .. "; drafting a new node instead")
    return { kind = "draft" }
  end
  return act
end

function S:launch(node, act, opts)
  local L = self.L
  node.canceller = task.canceller()
  node.focus = act.focus
  self.in_flight[node.iter] = node
  self.n_flying = self.n_flying + 1
  L:summary(false)
  local ok, res, err = pcall(task.with, node.canceller, function() return L:attempt(node, opts) end)
  self.in_flight[node.iter] = nil
  self.n_flying = self.n_flying - 1
  if not ok then
    -- a node that raised is a crashed node, not the end of the search
    res, err = nil, require("pipeline").err("node", tostring(res))
  end
  local cancelled = node.canceller:cancelled() and not host.interrupted() and (err ~= nil or res == nil)
  L:record(node, res, err, cancelled and { cancelled = self.cancel_reason or "cancelled" } or nil)
  local why = self:stop_reason()
  if why then self:cancel_all(why) end
end

local function worker(self, opts)
  local L = self.L
  while not L:done() do
    local act = self:decide()
    if act == false then break end
    if act == nil then
      if self.n_flying == 0 then break end -- nothing running and nothing to start: the search is over
      time.sleep(0.05)
    else
      local node = L:node({
        buffer = self.slots > 1,
        pool = self.pool,
        kind = act.kind or "draft",
        parent = act.parent,
        parents = act.parents,
        focus = act.focus,
        siblings = act.parent and self:children(act.parent.iter) or nil,
      })
      if not node then break end
      self:launch(node, act, opts)
    end
  end
end

-- Ends the search when search.time_limit (seconds of wall time) is spent.
local function watchdog(self)
  local L = self.L
  while self.workers > 0 do
    if L:time_spent() then
      L:end_search(
        "time_limit",
        string.format("[LOOP] the search's time limit (%gs) is spent; ending the search here", L.time_limit)
      )
      self:cancel_all("the search's time limit is spent")
      return
    end
    time.sleep(0.2)
  end
end

-- Run the search: `o.slots` workers (default search.branches, 4), each asking `policy` for a node
-- whenever it is free. With more than one slot, nodes take their kernels from a pool started now, in the
-- background, while the first LLM requests are in flight (pinned to exec.gpus when given).
function M.run(L, opts, policy, o)
  o = o or {}
  local slots = math.floor(tonumber(o.slots or L:setting("branches", 4)) or 4)
  local left = L:nodes_left()
  if slots > left and left >= 1 then
    log.info(string.format("[SEARCH] %d branches asked for, but only %d nodes can run: using %d", slots, left, left))
    slots = left
  end
  slots = math.max(1, slots)
  local seed = L:setting("seed", nil)
  if seed then math.randomseed(math.floor(tonumber(seed) or 0)) end
  local get_policy = type(policy) == "function" and policy or function() return policy end
  local self =
    setmetatable({ L = L, slots = slots, in_flight = {}, n_flying = 0, get_policy = get_policy, workers = slots }, S)
  L.search = self
  if slots > 1 and type(kernel.pool) == "function" and L:nodes_left() > 0 then
    -- one spare kernel while more nodes than slots are to run: a node that frees its slot gives back a
    -- kernel that is restarted in the background, and the next node takes the spare at once
    local spare = (L:nodes_left() > slots and not (host.config.exec or {}).gpus) and 1 or 0
    self.pool = kernel.pool({ size = slots + spare, gpus = (host.config.exec or {}).gpus })
  end
  local fns = {}
  for _ = 1, slots do
    table.insert(fns, function()
      local ok, err = pcall(worker, self, opts)
      self.workers = self.workers - 1
      if not ok then
        self:cancel_all("the search failed")
        error(err, 0)
      end
      return true
    end)
  end
  if L.time_limit then table.insert(fns, function()
    watchdog(self)
    return true
  end) end
  local ok, err = pcall(task.all, fns)
  L.search = nil
  if self.pool then self.pool:shutdown() end
  if not ok then error(err, 0) end
end

return M
