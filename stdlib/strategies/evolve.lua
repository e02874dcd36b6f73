-- Evolutionary search, steady state (no generations to wait for): search.population drafts first (5);
-- then each free slot repairs a buggy leaf with probability search.debug_prob (0.3, no more than
-- search.max_debug_depth repairs deep), else with probability search.crossover_prob (0.5) crosses two
-- parents picked by tournament among the population (the search.population best valid nodes), else
-- improves one picked by tournament.
local search = require("search")

local M = {}

M.DEFAULTS = { population = 5, crossover_prob = 0.5, debug_prob = 0.3, max_debug_depth = 3 }

local function setting(S, key) return tonumber(S.L:setting(key, M.DEFAULTS[key])) or M.DEFAULTS[key] end

-- The population: the best valid nodes, best first.
function M.population(S)
  local valid = {}
  for _, r in ipairs(S.L:records()) do
    if search.scored(r) then table.insert(valid, r) end
  end
  table.sort(valid, function(a, b) return S:value(a) > S:value(b) end)
  local out = {}
  for i = 1, math.min(#valid, setting(S, "population")) do
    out[i] = valid[i]
  end
  return out
end

-- The better of two picked at random (one when the population has one).
local function tournament(S, pop, not_this)
  local function pick()
    local r = pop[S:random(1, #pop)]
    if r == not_this and #pop > 1 then return pick() end
    return r
  end
  local a, b = pick(), pick()
  return S:value(a) >= S:value(b) and a or b
end

function M.choose(S)
  if require("strategies.greedy").drafts(S) < setting(S, "population") then return { kind = "draft" } end
  local bugs = require("strategies.greedy").debuggable(S, setting(S, "max_debug_depth"))
  if #bugs > 0 and S:random() < setting(S, "debug_prob") then
    return { kind = "debug", parent = bugs[S:random(1, #bugs)] }
  end
  local pop = M.population(S)
  if #pop == 0 then
    if #bugs > 0 then return { kind = "debug", parent = bugs[S:random(1, #bugs)] } end
    if #S:flying() > 0 then return nil end
    return { kind = "draft" }
  end
  local a = tournament(S, pop)
  if #pop >= 2 and S:random() < setting(S, "crossover_prob") then
    local b = tournament(S, pop, a)
    return { kind = "crossover", parent = a, parents = { a, b } }
  end
  return { kind = "improve", parent = a, focus = S:next_focus(a.iter) }
end

function M.run(L, opts)
  search.run(L, opts, function() return require("strategies.evolve") end)
end

return M
