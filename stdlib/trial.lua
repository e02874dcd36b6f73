-- A trial context: what one attempt (an iteration, a tree node) owns, handed to every step it runs, so
-- that concurrent branches never share state:
--   ctx.trial   the trial folder
--   ctx.events  its event log (log.sink): LLM exchanges (llm.chat{events = ctx.events}), cell runs, messages
--   ctx:line(s) a plain stdout event line (ITERATION, [CHECK], [FIX], ...). A buffered context keeps its
--               lines and prints them together at ctx:flush(), so that the lines of parallel branches
--               come out as one block per trial, as CellScientist's runner reads them.
--   ctx:info(s), ctx:warn(s), ctx:error(s)  messages for the person (stderr), also in the event log
--   ctx.kernel_pool  a kernel.pool to take the kernel from (else the step starts its own)
--   ctx.feedback     text about earlier attempts for the generation prompt (or nil)
--   ctx.parent       the node this one improves or debugs (or nil): {trial=, notebook=, score=, error=}
--   ctx.op           what the generation request is told (stdlib/operators.lua): kind, parents, memory...
-- No side effects at load.
local log = require("log")
local path = require("path")

local M = {}
local Ctx = {}
Ctx.__index = Ctx

-- new(trial, {buffer = bool, kernel_pool =, feedback =, parent =}) -> ctx
function M.new(trial, o)
  o = o or {}
  local c = setmetatable({
    trial = trial,
    events = log.sink(path.join(trial, "events.jsonl")),
    buffered = o.buffer and true or false,
    pending = {},
    kernel_pool = o.kernel_pool,
    feedback = o.feedback,
    parent = o.parent,
    op = o.op,
  }, Ctx)
  return c
end

local function emit(self, stream, text)
  if self.buffered then
    table.insert(self.pending, { stream, text })
  elseif stream == "line" then
    log.line(text)
  else
    log[stream](text)
  end
end

function Ctx:line(text)
  emit(self, "line", text)
end

function Ctx:info(text)
  emit(self, "info", text)
  self.events:event("log", { level = "info", message = text })
end

function Ctx:warn(text)
  emit(self, "warn", text)
  self.events:event("log", { level = "warn", message = text })
end

function Ctx:error(text)
  emit(self, "error", text)
  self.events:event("log", { level = "error", message = text })
end

function Ctx:event(kind, fields)
  self.events:event(kind, fields)
end

-- Print what a buffered context kept, in order; first `header` (e.g. "ITERATION 3/8") when given.
function Ctx:flush(header)
  if header then log.line(header) end
  for _, p in ipairs(self.pending) do
    if p[1] == "line" then log.line(p[2]) else log[p[1]](p[2]) end
  end
  self.pending = {}
end

-- The trial folder was renamed (archived): its log follows it.
function Ctx:moved(dest)
  self.trial = dest
  self.events:move(path.join(dest, "events.jsonl"))
end

return M
