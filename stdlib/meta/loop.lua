---@meta loop
-- Type stubs for the loop (`stdlib/loop.lua`), its records, and the search scheduler (`stdlib/search.lua`)
-- a strategy or policy works with, for lua-language-server. Requiring `meta.loop` returns empty functions.

---One node's record in the loop summary (`iterations[i]`).
---@class cellsci.Record
---@field iter integer
---@field kind "draft"|"improve"|"debug"|"crossover"
---@field parent integer|nil the parent's `iter`
---@field parents integer[]|nil both parents of a crossover
---@field status "VALID"|"NO_METRIC"|"CRASH"|"INTERRUPTED"|"CANCELLED"
---@field score number -999.0 when none
---@field criteria_met boolean
---@field judgement string|nil the criterion's reason
---@field verdict table|nil the criterion's detail
---@field winner string|nil
---@field error string|nil
---@field error_kind string|nil
---@field trial_dir string
---@field archived_as string|nil
---@field focus string|nil what an improvement was told to change
---@field duration_sec number
---@field t_start number seconds since the epoch
---@field t_end number
---@field usage {prompt_tokens: integer, completion_tokens: integer, total_tokens: integer, total_latency_sec: number, calls: integer, cost: number}
---@field results_table string|nil
---@field cancelled boolean|nil

---A node being run (`L:node`).
---@class cellsci.Node
---@field iter integer
---@field kind string
---@field parent integer|nil
---@field trial string
---@field ctx table the trial context (stdlib/trial.lua)

---The loop (`require("loop").open(opts)`).
---@class cellsci.Loop
---@field direction "higher"|"lower"
---@field pm string the primary metric
---@field threshold number
---@field max_iters integer the node budget
---@field met_any boolean
---@field stopped string|nil
local Loop = {}

---@param o? {kind?: string, parent?: cellsci.Record, parents?: cellsci.Record[], focus?: string, buffer?: boolean, pool?: table, feedback?: string}
---@return cellsci.Node|nil node nil when no node is left
function Loop:node(o) end

---@return table|nil result, table|nil err
function Loop:attempt(node, opts) end

---@param how? {cancelled: string}
---@return cellsci.Record
function Loop:record(node, result, err, how) end

---@return boolean
function Loop:done() end

---@return cellsci.Record[]
function Loop:records() end

---The record the loop would archive: the best that met the criterion, else the best valid one.
---@return cellsci.Record|nil
function Loop:best() end

---@return cellsci.Record|nil
function Loop:best_valid() end

---`search.<key>`, else `default`.
function Loop:setting(key, default) end

---How many more nodes may start.
---@return integer
function Loop:nodes_left() end

---@return integer exit code
function Loop:close() end

---What a policy's `choose(S)` sees.
---@class cellsci.Search
---@field L cellsci.Loop
---@field slots integer
local Search = {}

---@return {iter: integer, kind: string, parent: integer|nil, parents: integer[]|nil, focus: string|nil}[]
function Search:flying() end

---Records and nodes in flight whose parent is `iter`.
---@return table[]
function Search:children(iter) end

---@param r cellsci.Record
---@return integer
function Search:debug_depth(r) end

---The record's score mapped to 0..1 by the metric's direction (no score: 0).
---@return number
function Search:value(r) end

---The first improvement focus no child of `iter` has yet.
---@return string
function Search:next_focus(iter) end

---`math.random`, seeded by `search.seed` when set.
function Search:random(a, b) end

---The action a policy returns.
---@class cellsci.Action
---@field kind "draft"|"improve"|"debug"|"crossover"
---@field parent cellsci.Record|nil
---@field parents cellsci.Record[]|nil
---@field focus string|nil

return {}
