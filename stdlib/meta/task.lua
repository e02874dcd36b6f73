---@meta task
-- Type stubs for the native `task` module (`local task = require("task")`), for lua-language-server.
-- The real module is built into cellsci; this file only describes it. Requiring it (as `meta.task`)
-- returns a table of empty functions and never replaces the real module.

---Parallel branches. Each function runs as its own coroutine; they interleave at the host's await
---points (an LLM call, a kernel cell, a sleep), so I/O overlaps while the VM stays on one thread.
---@class cellsci.task
local task = {}

---Run the functions concurrently (each called with no arguments) and wait for all of them.
---Returns the first return value of each, in the same positions (a function that returns nothing
---leaves a hole, so prefer returning a value). If any function raised, the first error (in list
---order) is raised after all have ended. Raises when `fs` is not a list of functions.
---@param fs (fun(): any)[]
---@return any[] results
function task.all(fs) end

---A stop token (`task.canceller()`): a child of the current one, so Ctrl-C or an enclosing canceller
---stops it too.
---@class cellsci.task.Canceller
local Canceller = {}

---Stop the work running under this canceller: every LLM request, kernel cell, sleep and kernel start
---inside `task.with(c, ...)` returns an `interrupted` error at once (a cell is interrupted, a request dropped).
function Canceller:cancel() end

---@return boolean
function Canceller:cancelled() end

---A new stop token.
---@return cellsci.task.Canceller
function task.canceller() end

---Run `f(...)` with `c` as its stop token and return what it returns. Inside, `host.interrupted()` is
---true once `c` is cancelled, so the pipeline unwinds through its own clean-up.
---@param c cellsci.task.Canceller
---@param f fun(...): ...
---@return ...
function task.with(c, f, ...) end

---True inside a `task.with` whose canceller was cancelled (false for Ctrl-C).
---@return boolean
function task.cancelled() end

return task
