-- The search operators: each builds its part of the generation request for one node, from what the loop
-- knows (the node's parent or parents, earlier attempts, the siblings in flight). The pipeline appends
-- `M.request(op)` to the technical specification and the research strategy. Shadow this file (or one
-- function of it) to change what the model is told; edits take effect at the next node.
--
--   op = { kind = "draft" | "improve" | "debug" | "crossover",
--          parents = { {iter=, notebook=, score=, error=, report_table=, trial=}, ... },  -- one; two for crossover
--          memory = "text" | nil,     -- earlier attempts (M.memory), bounded
--          feedback = "text" | nil,   -- search.feedback text of the serial loop
--          focus = "text" | nil,      -- what this improvement should change
--          siblings = { {iter=, kind=, focus=}, ... } }  -- other children of the same parent (in flight or done)
-- No side effects at load.
local llm = require("llm")
local notebook = require("notebook")

local M = {}

-- How much of a parent's code goes into a request (head and tail kept when longer).
M.CODE_LIMIT = { head = 24000, tail = 8000 }
-- How much text the memory of earlier attempts may take, by default (search.memory_chars).
M.MEMORY_CHARS = 4000

local function code_of(p)
  local code = {}
  local nb = p.notebook and notebook.read(p.notebook)
  if nb then
    for i = 1, nb:len() do
      local cell = nb:cell(i)
      if cell.cell_type == "code" then table.insert(code, "# --- cell " .. (i - 1) .. "\n" .. cell.source) end
    end
  end
  return llm.clip(table.concat(code, "\n\n"), M.CODE_LIMIT)
end

local function results(p) return p.report_table and ("\n\nIts computed results:\n\n" .. p.report_table) or "" end

local function siblings_text(op)
  local s = {}
  for _, c in ipairs(op.siblings or {}) do
    if c.focus then table.insert(s, string.format("- attempt %s: %s", tostring(c.iter), c.focus)) end
  end
  if #s == 0 then return "" end
  return "\n\nOther attempts start from the same notebook; they change:\n"
    .. table.concat(s, "\n")
    .. "\nMake a different change from theirs."
end

function M.draft(op)
  local parts = {}
  if op.memory and op.memory ~= "" then
    table.insert(
      parts,
      "Earlier attempts at this task (learn from them; do not repeat what failed):\n\n"
        .. op.memory
        .. "\n\nWrite a new, complete solution that differs from them."
    )
  end
  return table.concat(parts, "\n\n")
end

function M.debug(op)
  local p = op.parents[1]
  return "Start from this earlier notebook (attempt "
    .. tostring(p.iter)
    .. "). It failed: "
    .. tostring(p.error)
    .. "\nRepair it: keep what works, fix what failed."
    .. results(p)
    .. "\n\nIts code:\n\n"
    .. code_of(p)
end

function M.improve(op)
  local p = op.parents[1]
  local focus = op.focus and ("\nThis time change " .. op.focus .. ".") or ""
  return "Start from this earlier notebook (attempt "
    .. tostring(p.iter)
    .. "). It scored "
    .. tostring(p.score)
    .. ". Improve it: change one thing that should raise the score, and keep the metrics.json contract."
    .. focus
    .. siblings_text(op)
    .. results(p)
    .. "\n\nIts code:\n\n"
    .. code_of(p)
end

function M.crossover(op)
  local a, b = op.parents[1], op.parents[2]
  if not b then return M.improve(op) end
  return "Combine two earlier notebooks that both worked: attempt "
    .. tostring(a.iter)
    .. " scored "
    .. tostring(a.score)
    .. " and attempt "
    .. tostring(b.iter)
    .. " scored "
    .. tostring(b.score)
    .. ". Write one notebook that keeps the strongest part of each (for example one's features with the other's"
    .. " model), and keep the metrics.json contract."
    .. siblings_text(op)
    .. "\n\nAttempt "
    .. tostring(a.iter)
    .. ":"
    .. results(a)
    .. "\n\nIts code:\n\n"
    .. code_of(a)
    .. "\n\nAttempt "
    .. tostring(b.iter)
    .. ":"
    .. results(b)
    .. "\n\nIts code:\n\n"
    .. code_of(b)
end

-- The memory of earlier attempts, as text: one line each (kind, parent, status, score, the first line of
-- its error, what it changed), failed ones included, newest last, cut to `limit` characters (the oldest
-- dropped first). `records` are the loop's records already scoped (lineage or run).
function M.memory(records, metric, limit)
  limit = limit or M.MEMORY_CHARS
  local lines = {}
  for _, r in ipairs(records) do
    if r.status ~= "CANCELLED" and r.status ~= "INTERRUPTED" then
      local s = string.format(
        "- attempt %s (%s%s): %s",
        tostring(r.iter),
        tostring(r.kind or "draft"),
        r.parent and (" of " .. tostring(r.parent)) or "",
        tostring(r.status)
      )
      if r.status == "VALID" and type(r.score) == "number" then s = s .. string.format(", %s %.4f", metric, r.score) end
      if r.focus then s = s .. "; changed " .. r.focus end
      if r.error then s = s .. "; " .. (tostring(r.error):match("^[^\n]*") or ""):sub(1, 240) end
      table.insert(lines, s)
    end
  end
  local out, n = {}, 0
  for i = #lines, 1, -1 do
    n = n + #lines[i] + 1
    if n > limit then
      table.insert(out, 1, string.format("- (%d earlier attempts left out)", i))
      break
    end
    table.insert(out, 1, lines[i])
  end
  return table.concat(out, "\n")
end

-- The text for the generation request of a node: its operator's part, the serial loop's feedback, and
-- the memory (for every operator but draft, which puts the memory in its own words).
function M.request(op)
  if not op then return "" end
  local parts = {}
  if op.feedback and op.feedback ~= "" then
    table.insert(parts, "Results of earlier attempts at this task:\n\n" .. op.feedback)
  end
  local kind = op.kind or "draft"
  if kind ~= "draft" and op.memory and op.memory ~= "" then
    table.insert(parts, "What earlier attempts tried and got:\n\n" .. op.memory)
  end
  local f = M[kind]
  if kind ~= "draft" and (not op.parents or not op.parents[1]) then f = M.draft end
  if type(f) ~= "function" then f = M.draft end
  local own = f(op)
  if own and own ~= "" then table.insert(parts, own) end
  if #parts == 0 then return "" end
  return "\n\n" .. table.concat(parts, "\n\n")
end

return M
