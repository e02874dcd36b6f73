-- A trial context: what one attempt (an iteration, a tree node) owns, handed to every step it runs, so
-- that concurrent branches never share state:
--   ctx.trial   the trial folder
--   ctx.events  its event log (log.sink): LLM exchanges (llm.chat{events = ctx.events}), cell runs, messages
--   ctx:line(s) a plain stdout event line (ITERATION, [CHECK], [FIX], ...). A buffered context keeps its
--               lines and prints them together at ctx:flush(), so that the lines of parallel branches
--               come out as one block per trial, as CellScientist's runner reads them.
--   ctx:info(s), ctx:warn(s), ctx:error(s)  messages for the person (stderr), also in the event log
--   ctx:quote(v, what)  a value from a notebook or the LLM (a cell id or name, an exception message, a
--               model name, reply text) made safe to put into a line: escaped, clipped, runner marker
--               phrases neutralized (log.quote), what was neutralized recorded in this trial's event log.
--               Every line is one line and guarded anyway (log.line); quoting is what keeps a
--               notebook's text from passing for cellsci's own words.
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

-- Print one kept or direct line through the trial's own log, so that what the line guard neutralized
-- is recorded in this trial's events.jsonl.
local function out(self, stream, text)
  if stream == "line" then
    self.events:line(text)
  else
    self.events:message(stream, text)
  end
end

local function emit(self, stream, text)
  if self.buffered then
    table.insert(self.pending, { stream, text })
  else
    out(self, stream, text)
  end
end

function Ctx:quote(v, what) return (self.events:quote(v, what)) end

function Ctx:line(text) emit(self, "line", text) end

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

function Ctx:event(kind, fields) self.events:event(kind, fields) end

-- Print what a buffered context kept, in order; first `header` (e.g. "ITERATION 3/8") when given.
function Ctx:flush(header)
  if header then self.events:line(header) end
  for _, p in ipairs(self.pending) do
    out(self, p[1], p[2])
  end
  self.pending = {}
end

-- The trial folder was renamed (archived): its log follows it.
function Ctx:moved(dest)
  self.trial = dest
  self.events:move(path.join(dest, "events.jsonl"))
end

return M
