-- The default phase-2 pipeline: generate -> execute (with autofix) -> analyze, and the `run` loop.
--
-- `cellsci run|generate|execute|analyze` call M.run / M.generate / M.execute / M.analyze with the
-- command-line options. Policies live in stdlib modules that are required at each use, after
-- host.reload(), so edits to them (or your own shadowing copies) take effect during a run:
--   retry.lua (LLM retries), autofix.lua (repairing cells), success.lua (when to stop), strategy.lua,
--   report_policy.lua (metric direction, baseline, the score, the narrative's wording).
-- The plain lines printed with log.line are read by other tools: keep their wording.
local host = require("host")
local fs = require("fs")
local path = require("path")
local json = require("json")
local yaml = require("yaml")
local log = require("log")
local time = require("time")
local llm = require("llm")
local notebook = require("notebook")
local kernel = require("kernel")
local report = require("report")

local M = {}

---------------------------------------------------------------------------------------------------
-- Typed errors: every step returns `result` or `nil, err` with `err.kind` (and `err.message`), so a
-- loop or a strategy decides by kind (stdlib/loop.lua's stop table), never by searching the text.
-- Kinds: config, generation_failed, kernel_start, cell_unfixable, no_metrics, budget, client,
-- replay_miss, content_filter (the provider refused the generation request), interrupted, disk, io, error
-- (anything else).
---------------------------------------------------------------------------------------------------

local Err = {}
Err.__index = Err
Err.__tostring = function(e) return e.kind .. ": " .. tostring(e.message) end

function M.err(kind, message) return setmetatable({ kind = kind, message = message }, Err) end

local function raise(kind, message) error(M.err(kind, message), 0) end

-- A full or read-only disk fails every further write.
local DISK_ERRORS = { "No space left on device", "Disk quota exceeded", "Read-only file system" }

-- Whatever a step raised, as a typed error.
function M.as_error(e)
  if getmetatable(e) == Err then return e end
  if type(e) == "table" and type(e.kind) == "string" then return M.err(e.kind, e.message or tostring(e)) end
  local s = tostring(e)
  if host.interrupted() then return M.err("interrupted", s) end
  for _, d in ipairs(DISK_ERRORS) do
    if s:find(d, 1, true) then return M.err("disk", s) end
  end
  if s:find("^cannot write ") or s:find("^cannot save ") or s:find("^cannot create ") then return M.err("io", s) end
  return M.err("error", s)
end

-- Run f(...) and give its results, or nil and the typed error it raised.
local function guarded(f, ...)
  local r = table.pack(pcall(f, ...))
  if r[1] then return table.unpack(r, 2, r.n) end
  return nil, M.as_error(r[2])
end

-- Text from a notebook or the LLM (cell ids and names, exception messages, model names, reply text) is
-- never put into a line as it is: q(ctx, v, what) makes it safe (log.quote: escaped, clipped, runner
-- marker phrases neutralized, recorded in the trial's event log). The runner reads our lines.
local function q(ctx, v, what, max)
  if ctx and ctx.quote and not max then return ctx:quote(v, what) end
  return (log.quote(v, { what = what, max = max, events = ctx and ctx.events or nil }))
end
M.quote = q

-- A trial context for steps called without one (the single commands, older strategies).
local function context(trial, ctx) return ctx or require("trial").new(trial) end

---------------------------------------------------------------------------------------------------
-- Config and files
---------------------------------------------------------------------------------------------------

local function cfg() return host.config end

local function section(name) return cfg()[name] or {} end

function M.save_root()
  local c = cfg()
  local root = section("prompt_branch").save_root or section("paths").design_execution_root
  if not root or root == "" then root = path.abs(".") end
  return root
end

local function prompt_root() return path.join(M.save_root(), "prompt") end

-- ${name} in prompt text: the given vars, then the config's top-level strings; unknown names stay.
function M.fill(text, vars) return host.expand(text, vars) end

-- A prompt file: an explicit path (config or command line), else prompts/<name> in the current folder,
-- else the bundled copy. A prompt that cannot be used is a `config` error, which ends a command or a
-- `run` loop with exit 2 instead of sending a broken request.
function M.load_prompt(explicit, name)
  local text, where
  if explicit and explicit ~= "" then
    local err
    text, err = fs.read(explicit)
    if not text then raise("config", "cannot read prompt file " .. explicit .. ": " .. tostring(err)) end
    where = explicit
  else
    -- prompts/<name> of a user's folder (--scripts, the current folder), else the bundled copy
    text, where = host.lookup("prompts/" .. name)
    if not text then raise("config", "no bundled prompt prompts/" .. name) end
  end
  local doc, err = yaml.decode(text)
  if doc == nil then raise("config", "prompt file " .. where .. ": " .. tostring(err)) end
  -- a YAML list decodes to a table too: only a mapping has the keys a prompt needs
  if type(doc) ~= "table" or rawlen(doc) > 0 or getmetatable(doc) == getmetatable(json.array({})) then
    raise(
      "config",
      "prompt file "
        .. where
        .. ": expected a mapping of keys (system: ...), found a "
        .. (type(doc) == "table" and "list" or type(doc))
    )
  end
  return doc, where
end

local function write_json(p, value)
  local ok, err = fs.write(p, json.encode(value, { pretty = true }) .. "\n")
  if not ok then error("cannot write " .. p .. ": " .. tostring(err), 0) end
end

local function write_text(p, text)
  local ok, err = fs.write(p, text)
  if not ok then error("cannot write " .. p .. ": " .. tostring(err), 0) end
end

-- Call a policy module's function (autofix.fix, success.judge, ...). A user's edit that raises at run time
-- must not end the run: the error is reported with its file:line and the caller gets nil, "<why>".
function M.policy(module, fn, ...)
  local ok, mod = pcall(require, module)
  if not ok then
    log.error(string.format("[POLICY] cannot load %s: %s", module, q(nil, mod, "policy error", 1000)))
    return nil, module .. ".lua failed to load: " .. tostring(mod)
  end
  if type(mod) ~= "table" or type(mod[fn]) ~= "function" then return nil, module .. ".lua has no function " .. fn end
  local res = table.pack(pcall(mod[fn], ...))
  if not res[1] then
    log.error(string.format("[POLICY] %s.%s failed: %s", module, fn, q(nil, res[2], "policy error", 1000)))
    return nil, module .. "." .. fn .. " failed: " .. tostring(res[2])
  end
  return table.unpack(res, 2, res.n)
end

-- The newest trial folder under <save_root>/prompt (by modification time), or the one named.
function M.find_trial(named)
  if named then
    if not fs.exists(named) then error("trial folder not found: " .. named, 0) end
    return named
  end
  local root = prompt_root()
  local best, best_m
  for _, n in ipairs(fs.list(root) or {}) do
    local p = path.join(root, n)
    local st = fs.stat(p)
    if st and st.is_dir and (not best_m or st.mtime >= best_m) then
      best, best_m = p, st.mtime
    end
  end
  if not best then error("no trial folder under " .. root .. " (run `cellsci generate` first)", 0) end
  return best
end

---------------------------------------------------------------------------------------------------
-- generate
---------------------------------------------------------------------------------------------------

local function read_ideas(p)
  local text = p and fs.read(p)
  if not text then return {} end
  local doc, err = json.decode(text)
  if type(doc) ~= "table" then
    log.warn("[SETUP] cannot read " .. p .. ": " .. q(nil, err, "idea.json error"))
    return {}
  end
  return doc.ideas or doc
end

-- Cells of a generation reply: {"cells": [...]} or a bare list. Returns cells, hypergraph | nil, reason.
function M.cells_of(reply)
  if type(reply) ~= "table" then return nil, "the reply is not a JSON object or list" end
  local cells = reply.cells or reply
  if type(cells) ~= "table" or #cells == 0 then return nil, "the reply has no cells" end
  for i, c in ipairs(cells) do
    if type(c) ~= "table" then return nil, "cell " .. i .. " is not an object" end
    local code = c.code or c.source
    if type(code) == "table" then code = table.concat(code) end
    if type(code) ~= "string" or not code:match("%S") then return nil, "cell " .. i .. " has no code" end
    c.code = code
  end
  local hg = (type(reply.hypergraph) == "table") and reply.hypergraph or { hyperedges = {} }
  return cells, hg
end

-- The shape of a generation reply (DESIGN: LLM reply formats), sent as a JSON schema so that endpoints
-- that support structured outputs reply in shape on the first try; an endpoint that refuses it is asked
-- with json_object, then plain text, from then on (stdlib/adapt.lua), and the extractor still reads
-- whatever comes. `llm.structured_outputs = false` sends no schema.
M.GENERATION_SCHEMA = {
  name = "notebook",
  strict = true,
  schema = {
    type = "object",
    additionalProperties = false,
    required = { "cells", "hypergraph" },
    properties = {
      cells = {
        type = "array",
        items = {
          type = "object",
          additionalProperties = false,
          required = { "id", "name", "purpose", "code" },
          properties = {
            id = { type = "string" },
            name = { type = "string" },
            purpose = { type = "string" },
            code = { type = "string" },
          },
        },
      },
      hypergraph = {
        type = "object",
        additionalProperties = false,
        required = { "hyperedges" },
        properties = {
          hyperedges = {
            type = "array",
            items = {
              type = "object",
              additionalProperties = false,
              required = { "tail", "head" },
              properties = { tail = { type = "array", items = { type = "string" } }, head = { type = "string" } },
            },
          },
        },
      },
    },
  },
}

local function structured() return (section("llm")).structured_outputs ~= false end
M.structured = structured

-- Long requests (a whole notebook, a cell's repair) stream by default: a proxy that drops a silent
-- connection sees bytes while a thinking model works, and llm.idle_timeout then catches a real stall.
-- `llm.stream = false` turns it off.
local function stream_long()
  local v = section("llm").stream
  if v == nil then return true end
  return v
end
M.stream_long = stream_long

-- Ask for the notebook; on an unreadable reply, ask the model to reformat it (prompt_branch.json_retries).
-- Each unusable reply is saved whole, once, as <trial>/generation_reply_<n>.txt; the reformat request
-- echoes only its first and last M.ECHO_BYTES (and says so), so a runaway reply cannot make every later
-- request (and generation_failure.json) as big as itself.
-- Returns cells, hypergraph, attempts (errors, reply sizes and files).
M.ECHO_BYTES = 8192

-- A reply's reasoning (reasoning_content, <think>), kept whole in <trial>/generation_reply_<n>_reasoning.txt
-- when the reply could not be used; returns the fields for generation_failure.json.
local function keep_reasoning(trial, n, reasoning, ctx)
  if type(reasoning) ~= "string" or reasoning == "" then return {} end
  local file = path.join(trial, string.format("generation_reply_%d_reasoning.txt", n))
  local saved, serr = fs.write(file, reasoning)
  if not saved then ctx:warn("[GENERATE] cannot save the reply's reasoning: " .. tostring(serr)) end
  return {
    reasoning = (llm.clip(reasoning, { head = 1000, tail = 1000 })),
    reasoning_bytes = #reasoning,
    reasoning_file = saved and path.basename(file) or nil,
  }
end

-- The last resort for a reply with no usable content: the notebook written in its reasoning (models that
-- put their whole answer in reasoning_content). Returns cells, hypergraph, or nil.
local function cells_from_reasoning(reasoning, n, ctx)
  if type(reasoning) ~= "string" or not reasoning:find("%S") then return nil end
  local parsed = llm.extract_json(reasoning)
  if parsed == nil then return nil end
  local cells, hg = M.cells_of(parsed)
  if not cells then return nil end
  ctx:info(
    string.format(
      "[GENERATE] reply %d had no usable content; its notebook (%d cells) was read from the "
        .. "model's reasoning, as a last resort",
      n,
      #cells
    )
  )
  ctx:event("reply_from_reasoning", { step = "generation", attempt = n, cells = #cells, reasoning_bytes = #reasoning })
  return cells, hg
end
M.cells_from_reasoning = cells_from_reasoning

local function request_notebook(system, user, trial, ctx)
  local pb = section("prompt_branch")
  local messages = { { role = "system", content = system }, { role = "user", content = user } }
  local attempts = {}
  local retries = tonumber(pb.json_retries) or 2
  for attempt = 0, retries do
    host.reload({ events = ctx.events })
    local resp, err = llm.chat({
      messages = messages,
      temperature = pb.temperature,
      max_tokens = pb.max_tokens,
      events = ctx.events,
      json_schema = structured() and M.GENERATION_SCHEMA or nil,
      stream = stream_long(),
    })
    if not resp then
      local rec = { attempt = attempt + 1, error = tostring(err) }
      local reasoning = type(err) == "table" and err.reasoning or nil
      for k, v in pairs(keep_reasoning(trial, attempt + 1, reasoning, ctx)) do
        rec[k] = v
      end
      table.insert(attempts, rec)
      local cells, hg = cells_from_reasoning(reasoning, attempt + 1, ctx)
      if cells then return cells, hg, attempts end
      -- a content filter's refusal is said as what it is: rephrasing the ideas or the prompt is the fix
      if type(err) == "table" and err.kind == "content_filter" then
        return nil, nil, attempts, "the generation request was refused: " .. tostring(err.message), err
      end
      return nil, nil, attempts, "the generation request failed: " .. tostring(err), err
    end
    local parsed, perr, repaired = llm.extract_json(resp.text)
    if repaired then
      ctx.replies_repaired = (ctx.replies_repaired or 0) + 1
      ctx:event("reply_repaired", { step = "generation", attempt = attempt + 1 })
    end
    local cells, hg
    if parsed ~= nil then
      cells, hg = M.cells_of(parsed)
    end
    if cells then return cells, hg, attempts end
    local rcells, rhg = cells_from_reasoning(resp.reasoning, attempt + 1, ctx)
    if rcells then return rcells, rhg, attempts end
    local why = (llm.clip(parsed == nil and tostring(perr) or hg, { head = 2000, tail = 0 }))
    local reply_file = path.join(trial, string.format("generation_reply_%d.txt", attempt + 1))
    local saved, serr = fs.write(reply_file, resp.text)
    if not saved then ctx:warn("[GENERATE] cannot save the reply: " .. tostring(serr)) end
    local rec = {
      attempt = attempt + 1,
      error = why,
      finish_reason = resp.finish_reason,
      raw = (llm.clip(resp.text, { head = 1000, tail = 1000 })),
      raw_bytes = #resp.text,
      raw_file = saved and path.basename(reply_file) or nil,
    }
    for k, v in pairs(keep_reasoning(trial, attempt + 1, resp.reasoning, ctx)) do
      rec[k] = v
    end
    table.insert(attempts, rec)
    ctx:warn(
      string.format(
        "[GENERATE] reply %d could not be used (%s)%s",
        attempt + 1,
        q(ctx, why, "reply error"),
        attempt < retries and "; asking the model to reformat it" or ""
      )
    )
    local echo, cut = llm.clip(resp.text, { head = M.ECHO_BYTES, tail = M.ECHO_BYTES })
    table.insert(messages, { role = "assistant", content = echo })
    table.insert(messages, {
      role = "user",
      content = "Your reply could not be used: " .. why .. (cut > 0 and string.format(
        " (it was %d bytes long; the %d bytes in its middle are left out above)",
        #resp.text,
        cut
      ) or "") .. '. Reply again with only the JSON object {"cells": [...], "hypergraph": {...}} and no other text.',
    })
  end
  return nil, nil, attempts, "no usable notebook after " .. #attempts .. " replies"
end

-- Build the notebook (DESIGN §1) from the cells, hypergraph and strategy.
function M.build_notebook(cells, hypergraph, strategy_md)
  local nb = notebook.new()
  if strategy_md then nb:push({ cell_type = "markdown", source = strategy_md }) end
  for i, c in ipairs(cells) do
    nb:push({
      cell_type = "code",
      source = c.code,
      metadata = {
        subtask = {
          id = tostring(c.id or ("T" .. i)),
          name = c.name or ("Step " .. i),
          purpose = c.purpose or "",
        },
      },
    })
  end
  local md = nb.metadata
  md.execution = md.execution or {}
  md.execution.hypergraph = hypergraph
  nb.metadata = md
  return nb
end

-- What earlier attempts produced, for the generation request: the node's operator (stdlib/operators.lua)
-- builds it from ctx.op (kind, parents, memory, siblings), or from ctx.feedback and ctx.parent alone.
local function feedback_text(ctx)
  local op = ctx.op
  if not op then
    op = {
      kind = ctx.parent and (ctx.parent.error and "debug" or "improve") or "draft",
      feedback = ctx.feedback,
      parents = { ctx.parent },
    }
  end
  local ok, text = pcall(function() return require("operators").request(op) end)
  if not ok then
    ctx:warn("[GENERATE] the operator " .. tostring(op.kind) .. " failed: " .. q(ctx, text, "operator error", 1000))
    return ""
  end
  return text or ""
end

-- Generate into `trial` (created). Returns the notebook path, or nil and a typed error.
function M.generate_into(trial, opts, s1, ctx) return guarded(M.generate_step, trial, opts, s1, context(trial, ctx)) end

function M.generate_step(trial, opts, s1, ctx)
  local made, merr = fs.mkdir(trial)
  if not made then raise("io", "cannot create the trial folder " .. trial .. ": " .. tostring(merr)) end
  local c = cfg()
  local spec, spec_path = M.load_prompt(opts.prompt_file or section("prompt_branch").prompt_file, "generation.yaml")
  -- With exec.gpus a pool pins each kernel to one GPU, which the kernel then sees as cuda:0.
  local gpus = section("exec").gpus
  local device = (type(gpus) == "table" and #gpus > 0) and 0 or (section("exec").cuda_device_id or 0)
  local vars = {
    cuda_device_str = "cuda:" .. tostring(device),
    primary_metric = section("experiment").primary_metric,
    dataset_name = c.dataset_name,
  }
  local system = M.fill(spec.system or "", vars)
  spec.system = nil

  local strategy_md
  -- An improvement, a repair or a crossover keeps its parent's research strategy (no new synthesis call).
  local inherited = opts.use_idea
    and ctx.parent
    and ctx.parent.trial
    and fs.read(path.join(ctx.parent.trial, "research_strategy.md"))
  if inherited then
    strategy_md = inherited
    write_text(path.join(trial, "research_strategy.md"), strategy_md)
    ctx.strategy_source = "attempt " .. tostring(ctx.parent.iter)
    ctx:info("[STRATEGY] research_strategy.md reused from attempt " .. tostring(ctx.parent.iter))
  elseif opts.use_idea then
    host.reload({ events = ctx.events })
    local sprompt = M.load_prompt(section("prompt_branch").strategy_prompt_file, "strategy.yaml")
    local ideas = read_ideas(s1.idea)
    local info
    strategy_md, info = M.policy(
      "strategy",
      "synthesize",
      { ideas = ideas, system = M.fill(sprompt.system or "", vars), llm = { events = ctx.events } }
    )
    if not strategy_md then
      strategy_md, info = "# Research Strategy\n\n(No strategy: " .. tostring(info) .. ")\n", { source = "none" }
    end
    write_text(path.join(trial, "research_strategy.md"), strategy_md)
    ctx.strategy_source = info.source
    ctx:info("[STRATEGY] research_strategy.md written (" .. info.source .. ")")
  end

  local user = "Technical specification (YAML):\n\n"
    .. M.fill(yaml.encode(spec), vars)
    .. "\n\nResearch strategy:\n\n"
    .. (strategy_md or "No research strategy was given: the design is freestyle.")
    .. feedback_text(ctx)
    .. "\n\nReturn the notebook as the JSON object described in the system prompt."
    .. (
      section("prompt_branch").strict_json_only ~= false
        and " Reply with that JSON object only: no prose before or after it."
      or ""
    )
  local cells, hg, attempts, err, llm_err = request_notebook(system, user, trial, ctx)
  if not cells then
    local fail_path = path.join(trial, "generation_failure.json")
    write_json(fail_path, { error = err, prompt_file = spec_path, attempts = attempts })
    if host.interrupted() then raise("interrupted", "interrupted") end
    -- The runner counts an iteration with this line as buggy (DESIGN: "Lines other tools read").
    ctx:line("[GENERATE] Notebook Generation Failed: " .. q(ctx, err, "generation error"))
    -- An LLM failure keeps its kind (a rejected key is `client` whatever step met it).
    local kind = type(llm_err) == "table" and llm_err.kind
    -- an endpoint that cannot be reached once the retry policy gave up on it fails every node alike
    if kind == "connect" then kind = "unreachable" end
    if
      not (
        kind == "client"
        or kind == "budget"
        or kind == "config"
        or kind == "replay_miss"
        or kind == "interrupted"
        or kind == "unreachable"
        or kind == "content_filter"
      )
    then
      kind = "generation_failed"
    end
    raise(kind, "generation failed: " .. err .. " (every reply is saved in " .. fail_path .. ")")
  end
  local nb = M.build_notebook(cells, hg, strategy_md)
  local nb_path = path.join(trial, "notebook_prompt.ipynb")
  local ok, werr = nb:write(nb_path)
  if ok == nil then error("cannot write " .. nb_path .. ": " .. tostring(werr), 0) end
  ctx:event(
    "generated",
    { notebook = nb_path, cells = #cells, prompt_file = spec_path, parent = ctx.parent and ctx.parent.trial or nil }
  )
  ctx:info(string.format("[GENERATE] %d cells -> %s", #cells, nb_path))
  return nb_path
end

---------------------------------------------------------------------------------------------------
-- execute
---------------------------------------------------------------------------------------------------

-- Run silently before the notebook (never saved in it): sys.exit becomes an error.
M.GUARD = [[
import sys as _cellsci_sys, builtins as _cellsci_builtins
def _cellsci_blocked_exit(*args, **kwargs):
    raise RuntimeError("sys.exit() is blocked in cellsci notebooks: raise an exception with a message instead")
_cellsci_sys.exit = _cellsci_blocked_exit
_cellsci_builtins.exit = _cellsci_builtins.quit = _cellsci_blocked_exit
del _cellsci_sys, _cellsci_builtins
]]

-- k:execute, with a failure of the kernel link (not of the cell) turned into a "dead" result and Ctrl-C
-- into an error that unwinds the run.
-- On Ctrl-C the partial result (what the cell printed so far) comes back marked `interrupted`, so the
-- caller can save it before unwinding.
local function run_cell(k, code, opts)
  local r, err = k:execute(code, opts)
  if r then return r end
  if host.interrupted() or (type(err) == "table" and err.kind == "interrupted") then
    if type(err) == "table" and type(err.result) == "table" then
      err.result.interrupted = true
      return err.result
    end
    error("interrupted", 0)
  end
  return { status = "dead", message = tostring(err), evalue = tostring(err), outputs = {} }
end

-- Save a cell's result into the executed notebook (after every cell), then unwind if it was Ctrl-C.
-- A save that fails (a full disk) ends the trial: a notebook missing cells is never reported as saved.
local function record(nb, i, r, exec_path)
  nb:set_outputs(i, r)
  local ok, err = nb:write(exec_path)
  if r.interrupted then error("interrupted", 0) end
  if not ok then error("cannot save the executed notebook " .. exec_path .. ": " .. tostring(err), 0) end
end

-- Ctrl-C or SIGTERM makes the LLM calls and cells in flight return an `interrupted` failure, which a
-- policy may well swallow (no fix, no narrative); every step boundary checks, so the iteration ends at
-- once as INTERRUPTED instead of going on as a CRASH or a VALID without its report.
local function check_interrupt()
  if host.interrupted() then error("interrupted", 0) end
end
M.check_interrupt = check_interrupt

-- The settings of the policy that decides whether a failed kernel start is tried again: retry.lua's
-- policy (as for LLM calls) with these per-kind allowances, or the config's exec.kernel_retry table.
-- A local start is tried once more (a port taken between its choice and the kernel's bind); a gateway
-- answering 5xx, unreachable or timing out is waited for (retry.lua's server/connect/timeout/reset
-- allowances and its backoff); a refused token (auth), a missing kernelspec (client) or a trial folder
-- the gateway cannot see (config) is never retried.
-- Enterprise Gateway's launch timeout (the kernel never reported back) is tried twice more; a user
-- it refuses (unauthorized) or a kernelspec it does not have (no_such_kernel) is a config error.
M.KERNEL_RETRY = { per_kind = { start = 1, launch_timeout = 2 }, deadline = 300 }

local function kernel_policy() return require("retry").new(section("exec").kernel_retry or M.KERNEL_RETRY) end

-- f() -> kernel | nil, err, tried again for as long as the kernel retry policy says.
local function start_with_retries(ctx, f)
  local policy, counts, attempt, t0 = kernel_policy(), {}, 0, time.monotonic()
  while true do
    attempt = attempt + 1
    local k, err = f()
    if k or host.interrupted() then return k, err end
    local kind = type(err) == "table" and err.kind or "start"
    counts[kind] = (counts[kind] or 0) + 1
    local go, wait, why = policy:decide({
      kind = kind,
      status = type(err) == "table" and err.status or nil,
      attempt = attempt,
      elapsed = time.monotonic() - t0,
      message = tostring(err),
      counts = counts,
    })
    if type(go) == "table" then
      go, wait, why = go.retry, go.wait, go.reason
    end
    if not go then
      if attempt > 1 then ctx:event("kernel_start_gave_up", { kind = kind, reason = why, attempts = attempt }) end
      return nil, err
    end
    wait = tonumber(wait) or 0
    ctx:warn(
      string.format("[EXEC] the kernel did not start (%s); trying again in %.1fs", q(ctx, err, "kernel error"), wait)
    )
    ctx:event("kernel_start_failed", { error = tostring(err), kind = kind, wait = wait })
    if wait > 0 then time.sleep(wait) end
  end
end

-- The trial's kernel: one from ctx.kernel_pool when the strategy has a pool, else one started for it
-- (on exec.gateway_url when the config names a gateway). Returns the kernel and the function that gives
-- it back (release to the pool, or shut down).
local function start_kernel(trial, s1, ctx, extra_env)
  local ex = section("exec")
  local env = { OUTPUT_DIR = trial }
  for k, v in pairs(extra_env or {}) do
    env[k] = v
  end
  if s1.h5 then env.STAGE1_H5_PATH = s1.h5 end
  if s1.idea then env.STAGE1_IDEA_PATH = s1.idea end
  -- CUDA_VISIBLE_DEVICES is inherited, never set: the runner (or the user) chose the GPU, and
  -- exec.cuda_device_id only names the device in the prompt (${cuda_device_str}). A pool with exec.gpus
  -- pins each of its kernels to one GPU itself.
  local k, err, give_back
  if ctx.kernel_pool then
    -- before each take, and after a failed one: the host policy reads the pool's failed launches
    local hosts = require("hosts").for_pool(ctx.kernel_pool)
    k, err = start_with_retries(ctx, function()
      hosts:observe(ctx.kernel_pool)
      local pk, perr = ctx.kernel_pool:acquire()
      if not pk then hosts:observe(ctx.kernel_pool) end
      return pk, perr
    end)
    if k then
      give_back = function() ctx.kernel_pool:release(k) end
      -- what a kernel started for the trial gets from its start (DESIGN: execution environment): the
      -- trial folder and the variables, kept across restarts; a gateway kernel gets them as the gateway
      -- names them, after checking it sees the folder at all
      local entered, eerr = k:enter({ cwd = trial, env = env })
      if not entered then
        give_back()
        if eerr.kind == "interrupted" then raise("interrupted", "interrupted") end
        -- a gateway that cannot see the trial folder fails every node alike
        raise(eerr.kind == "config" and "config" or "kernel_start", "kernel set-up failed: " .. tostring(eerr.message))
      end
    end
  else
    local spec = { name = ex.kernel_name, python = ex.python, packages = ex.kernel_packages, cwd = trial, env = env }
    k, err = start_with_retries(ctx, function() return kernel.start(spec) end)
    if k then give_back = function() k:shutdown() end end
  end
  if not k then
    if host.interrupted() then raise("interrupted", "interrupted") end
    -- a gateway that refuses the token or cannot see the trial folder fails every iteration alike
    local ek = type(err) == "table" and err.kind
    local kind = (ek == "auth" or ek == "config" or ek == "unauthorized" or ek == "no_such_kernel") and "config"
      or "kernel_start"
    -- a kernel service that cannot be reached once the kernel retry policy gave up fails every node alike
    if ek == "connect" and section("exec").gateway_url then kind = "unreachable" end
    raise(kind, "cannot start the kernel: " .. tostring(err))
  end
  local r = run_cell(k, M.GUARD, { silent = true })
  if r.interrupted then
    give_back()
    raise("interrupted", "interrupted")
  end
  if r.status ~= "ok" then
    give_back()
    raise("kernel_start", "kernel set-up failed: " .. tostring(r.evalue))
  end
  -- where the trial's kernel runs (a gateway's kernels may land on several hosts)
  if k.gateway then ctx:event("kernel_host", { gateway = k.gateway, host = k:host(), kernel = k.name }) end
  return k, give_back
end

local function short(r)
  if r.status == "error" then return string.format("%s: %s", r.ename or "Error", (r.evalue or ""):sub(1, 200)) end
  if r.status == "timeout" then return "timed out" end
  if r.status == "dead" then return "kernel died: " .. tostring(r.evalue or "") end
  return r.status
end

-- The cells a failing cell needs after a restart: its ancestors in the notebook's hypergraph (tail ->
-- head edges between cell ids), in notebook order, among those that had run; every earlier cell that had
-- run when there is no hypergraph or it names ids the notebook does not have.
function M.replay_set(nb, i, done)
  local ids, index = {}, {}
  for j = 1, nb:len() do
    local sub = (nb:cell(j).metadata or {}).subtask
    if sub and sub.id then
      ids[j] = tostring(sub.id)
      index[tostring(sub.id)] = j
    end
  end
  local hg = ((nb.metadata or {}).execution or {}).hypergraph
  local edges = type(hg) == "table" and hg.hyperedges or nil
  local me = ids[i]
  if type(edges) ~= "table" or #edges == 0 or not me then return done, "all" end
  local parents = {}
  for _, e in ipairs(edges) do
    local tails = type(e.tail) == "table" and e.tail or { e.tail }
    local head = tostring(e.head)
    if not index[head] then return done, "all" end
    parents[head] = parents[head] or {}
    for _, t in ipairs(tails) do
      if not index[tostring(t)] then return done, "all" end
      table.insert(parents[head], tostring(t))
    end
  end
  local need, stack = {}, { me }
  while #stack > 0 do
    local id = table.remove(stack)
    for _, p in ipairs(parents[id] or {}) do
      if not need[p] then
        need[p] = true
        table.insert(stack, p)
      end
    end
  end
  local out = {}
  for _, j in ipairs(done) do
    if need[ids[j] or ""] then table.insert(out, j) end
  end
  return out, "ancestors"
end

-- Bring a restarted kernel back to what cell i needs: set-up, then its ancestors that had succeeded.
local function replay(k, nb, done, i, ctx)
  local r = run_cell(k, M.GUARD, { silent = true })
  if r.interrupted then error("interrupted", 0) end
  if r.status ~= "ok" then return false, "the kernel's set-up failed after its restart: " .. short(r) end
  local set, how = M.replay_set(nb, i, done)
  local names = {}
  for _, j in ipairs(set) do
    local sub = (nb:cell(j).metadata or {}).subtask or {}
    table.insert(names, tostring(sub.id or ("cell " .. (j - 1))))
  end
  ctx:info(
    string.format(
      "[EXEC] kernel restarted; replaying %s: %s",
      how == "all" and "every earlier cell" or "the failing cell's ancestors",
      #names > 0 and q(ctx, table.concat(names, ", "), "cell ids", 1000) or "none"
    )
  )
  ctx:event("replay", { cell_index = i - 1, cells = names, rule = how })
  for _, j in ipairs(set) do
    local rr = run_cell(k, nb:cell(j).source, { timeout = tonumber(section("exec").timeout_seconds) })
    if rr.interrupted then error("interrupted", 0) end
    if rr.status ~= "ok" then return false, "replaying cell " .. (j - 1) .. " failed: " .. short(rr) end
  end
  return true
end

-- A kernel that died (or was restarted after a timeout) is restarted when it is not alive, then the cells
-- the failing one depends on are replayed. Returns true, or false and why (a failed restart with its cause).
function M.restart_and_replay(k, nb, done, i, ctx)
  if not k:alive() then
    local ok, err = k:restart()
    if not ok then
      if host.interrupted() then error("interrupted", 0) end
      return false, "the kernel could not be restarted: " .. tostring(err and (err.message or err) or "unknown")
    end
  end
  return replay(k, nb, done, i, ctx)
end

-- Execute a trial's notebook cell by cell with repairs. Returns {ok=, exec_path=, failed_cell=, error=}
-- (a cell that stayed broken is a result: ok=false), or nil and a typed error when the notebook could
-- not be run or saved.
-- `kernel` (optional): {k=, give_back=} started ahead (M.attempt starts it while the notebook is generated).
function M.execute_trial(trial, s1, ctx, kernel) return guarded(M.execute_step, trial, s1, context(trial, ctx), kernel) end

function M.execute_step(trial, s1, ctx, pre)
  local ex = section("exec")
  local nb_path = path.join(trial, "notebook_prompt.ipynb")
  local nb, err = notebook.read(nb_path)
  if not nb then raise("io", "cannot read " .. nb_path .. ": " .. tostring(err)) end
  nb:clear_outputs()
  local exec_path = path.join(trial, "notebook_prompt_exec.ipynb")
  local timeout = tonumber(ex.timeout_seconds) or 3600
  local max_rounds = tonumber(ex.max_fix_rounds) or 3
  local fix_prompt = M.load_prompt(section("prompt_branch").fix_prompt_file or ex.fix_prompt_file, "fix.yaml")
  local made, merr = fs.mkdir(path.join(trial, "intermediate"))
  if not made then error("cannot create " .. path.join(trial, "intermediate") .. ": " .. tostring(merr), 0) end

  local k, give_back
  if pre and pre.k then
    k, give_back = pre.k, pre.give_back
  else
    k, give_back = start_kernel(trial, s1, ctx)
  end
  local code_cells = 0
  for i = 1, nb:len() do
    if nb:cell(i).cell_type == "code" then code_cells = code_cells + 1 end
  end
  local bar = log.progress({ total = code_cells, label = "cell" })
  local done, outcome = {}, { ok = true, exec_path = exec_path }
  local ok_run, run_err = pcall(function()
    for i = 1, nb:len() do
      local cell = nb:cell(i)
      if cell.cell_type == "code" then
        local sub = (cell.metadata or {}).subtask or {}
        local id = tostring(sub.id or ("Cell_" .. (i - 1)))
        local qid, qname = q(ctx, id, "cell id"), q(ctx, sub.name or "", "cell name")
        ctx:info(string.format("[GRAPH] running node %s: %s (cell %d)", qid, qname, i - 1))
        bar:message(string.format("%s %s | %d tokens so far", qid, qname, (llm.usage() or {}).total_tokens or 0))
        local r = run_cell(k, cell.source, { timeout = timeout })
        record(nb, i, r, exec_path)
        ctx:event("cell", { cell_index = i - 1, id = id, status = r.status, duration = r.duration, ename = r.ename })
        local round, reran = 0, false
        -- a fresh kernel with the failing cell's ancestors replayed; false (outcome set) when that failed
        local function revive()
          local rok, rerr = M.restart_and_replay(k, nb, done, i, ctx)
          if not rok then
            ctx:error("[EXEC] " .. rerr)
            outcome = { ok = false, exec_path = exec_path, failed_cell = i - 1, error = rerr }
          end
          return rok
        end
        while r.status ~= "ok" do
          ctx:line(string.format("[GRAPH] Error in Node %s (cell %d): %s", qid, i - 1, q(ctx, short(r), "cell error")))
          if host.interrupted() then error("interrupted", 0) end
          -- A cell whose kernel (or kernel service) died is run again on a fresh kernel before anyone
          -- repairs its code: the code may never have failed. Once; a second death goes to the fix rounds.
          if not reran and (r.status == "dead" or r.ename == "GatewayConnectionLost") then
            reran = true
            if not revive() then break end
            ctx:info(
              string.format(
                "[EXEC] the kernel died during cell %d (%s); running it again on the fresh kernel",
                i - 1,
                qid
              )
            )
            ctx:event("rerun", { cell_index = i - 1, id = id, reason = short(r) })
            r = run_cell(k, nb:cell(i).source, { timeout = timeout })
            record(nb, i, r, exec_path)
            ctx:event("cell", { cell_index = i - 1, id = id, status = r.status, duration = r.duration, rerun = true })
            goto next_try -- ok ends the loop; a failure is reported and goes to the fix rounds
          end
          if round >= max_rounds then
            outcome = {
              ok = false,
              exec_path = exec_path,
              failed_cell = i - 1,
              error = string.format(
                "cell %d (%s) still fails after %d fix rounds: %s",
                i - 1,
                id,
                max_rounds,
                short(r)
              ),
            }
            break
          end
          round = round + 1
          host.reload({ events = ctx.events })
          ctx:line(string.format("[FIX] %s | Round %d/%d | %s", qid, round, max_rounds, q(ctx, short(r), "cell error")))
          if (r.status == "dead" or r.restarted or not k:alive()) and not revive() then break end
          local src = nb:cell(i).source
          local new, how = M.policy("autofix", "fix", {
            cell_index = i - 1,
            source = src,
            result = r,
            round = round,
            max_rounds = max_rounds,
            timeout = timeout,
            use_llm = ex.enable_llm_autofix ~= false,
            system_prompt = fix_prompt.system_prompt or fix_prompt.system or "",
            events = ctx.events,
            json_schema = structured() and require("autofix").FIX_SCHEMA or nil,
            trial = ctx,
            llm = { stream = stream_long() },
          })
          check_interrupt()
          -- The error and both sources, so the run page (report.page) can show the edit as a diff.
          ctx:event("fix", {
            cell_index = i - 1,
            id = id,
            round = round,
            applied = new ~= nil,
            how = how,
            error = short(r),
            before = src,
            after = new,
          })
          if not new then
            ctx:line(string.format("[FIX] %s | no fix: %s", qid, q(ctx, how, "fix outcome")))
            outcome = {
              ok = false,
              exec_path = exec_path,
              failed_cell = i - 1,
              error = string.format("cell %d (%s) could not be fixed (%s): %s", i - 1, id, how, short(r)),
            }
            break
          end
          ctx:line(string.format("[FIX] %s | applied fix (%s); re-running", qid, q(ctx, how, "fix outcome")))
          nb:set_source(i, new)
          r = run_cell(k, new, { timeout = timeout })
          record(nb, i, r, exec_path)
          ctx:event("cell", { cell_index = i - 1, id = id, status = r.status, duration = r.duration, round = round })
          ::next_try::
        end
        if not outcome.ok then break end
        table.insert(done, i)
        bar:inc()
      end
    end
  end)
  bar:finish()
  give_back()
  local md = nb.metadata
  md.execution = md.execution or {}
  md.execution.cellsci = { ok = ok_run and outcome.ok, failed_cell = outcome.failed_cell, error = outcome.error }
  nb.metadata = md
  local saved, serr = nb:write(exec_path)
  if saved then ctx:line("[EXEC] Saved final state: " .. exec_path) end
  if not ok_run then error(run_err, 0) end
  if not saved then raise("io", "cannot save the executed notebook " .. exec_path .. ": " .. tostring(serr)) end
  check_interrupt()

  if ex.enable_hypergraph_viz ~= false then
    local _, herr = report.hypergraph(nb, { path = path.join(trial, "hypergraph.json") })
    if herr then ctx:warn("[EXEC] hypergraph.json: " .. q(ctx, herr, "hypergraph error")) end
    local _, merr = report.mermaid(nb, { path = path.join(trial, "hypergraph.md") })
    if merr then ctx:warn("[EXEC] hypergraph.md: " .. q(ctx, merr, "hypergraph error")) end
  end
  M.list_intermediate(trial, ctx)
  if not outcome.ok then ctx:warn("[EXEC] " .. q(ctx, outcome.error, "cell error", 1000)) end
  return outcome
end

-- Say what the notebook wrote under intermediate/ (a missing folder is worth knowing about).
-- fs.walk never follows a symlink the notebook made (one to /usr, two to `.`) and stops at a count and
-- a depth; what is past the caps is one summary line.
M.INTERMEDIATE_LIMITS = { max_files = 100, max_depth = 8 }
function M.list_intermediate(trial, ctx)
  ctx = context(trial, ctx)
  local w, err = fs.walk(path.join(trial, "intermediate"), M.INTERMEDIATE_LIMITS)
  if not w and err.kind ~= "not_found" then
    ctx:warn("[EXEC] cannot list intermediate/: " .. q(ctx, err, "walk error"))
  end
  w = w or { files = {}, truncated = 0, too_deep = 0, unreadable = 0 }
  local files = {}
  for _, f in ipairs(w.files) do
    table.insert(files, { path = "intermediate/" .. f.path, size = f.size, kind = f.kind, target = f.target })
  end
  if #files == 0 and w.truncated == 0 then ctx:info("[EXEC] the notebook wrote nothing under intermediate/") end
  for _, f in ipairs(files) do
    if f.kind == "link" then
      ctx:info(
        string.format(
          "[EXEC]   %-48s -> %s (symlink, not followed)",
          q(ctx, f.path, "file name"),
          q(ctx, f.target, "link target")
        )
      )
    else
      ctx:info(string.format("[EXEC]   %-48s %10d bytes", q(ctx, f.path, "file name"), f.size))
    end
  end
  if w.truncated > 0 or w.too_deep > 0 then
    ctx:info(
      string.format(
        "[EXEC]   ... and %d more entries not listed, %d folders deeper than %d levels not entered",
        w.truncated,
        w.too_deep,
        M.INTERMEDIATE_LIMITS.max_depth
      )
    )
  end
  ctx:event("intermediate", { files = files, truncated = w.truncated, too_deep = w.too_deep })
  return files
end

---------------------------------------------------------------------------------------------------
-- analyze
---------------------------------------------------------------------------------------------------

local function direction(metric)
  local d = M.policy("success", "direction", metric, section("experiment").direction)
  if d == "lower" or d == "higher" then return d end
  return report.direction(metric or "")
end

-- The primary metric of each model, one line each, for feedback to later generations.
local function results_table(m, pm)
  local rows = {}
  for name, model in pairs(type(m) == "table" and m.models or {}) do
    local v = (model.aggregate or {})[pm]
    if type(v) ~= "number" then
      local sum, n = 0, 0
      for _, f in pairs(model.per_fold or {}) do
        if type(f) == "table" and type(f[pm]) == "number" then
          sum, n = sum + f[pm], n + 1
        end
      end
      if n > 0 then v = sum / n end
    end
    if type(v) == "number" then table.insert(rows, string.format("- %s: %s %.4f", name, pm, v)) end
  end
  table.sort(rows)
  return table.concat(rows, "\n")
end

-- Write experiment_report.md for `trial`. Returns {score=, winner=, metrics=, table=, compare=, baseline=}
-- (score nil without metrics; compare is report.compare's table for the primary metric, nil when it
-- cannot be computed), or nil and a typed error when the report could not be written.
function M.analyze_trial(trial, ctx) return guarded(M.analyze_step, trial, context(trial, ctx)) end

function M.analyze_step(trial, ctx)
  local pm = section("experiment").primary_metric or "PCC"
  local dir = direction(pm)
  local report_path = path.join(trial, "experiment_report.md")
  local mpath = path.join(trial, "metrics.json")
  if not fs.exists(mpath) then
    write_text(
      report_path,
      "# Experiment report\n\nThe notebook wrote no metrics.json, so there is nothing to score.\n"
    )
    ctx:info("[ANALYZE] no metrics.json in " .. trial)
    return {}
  end
  local m, err = report.load_metrics(mpath)
  if not m then
    write_text(report_path, "# Experiment report\n\nmetrics.json could not be read: " .. tostring(err) .. "\n")
    ctx:warn("[ANALYZE] metrics.json could not be read: " .. q(ctx, err, "metrics.json error"))
    return {}
  end
  -- The narrative: the model explains numbers it is given (report.narrative_input), never writes them.
  local narrative, narrative_error
  local ok, rp = pcall(M.load_prompt, section("prompt_branch").report_prompt_file, "report.yaml")
  if ok then
    host.reload({ events = ctx.events })
    -- the wording is report_policy.lua's (a user's copy that fails costs the narrative, not the report)
    local messages, merr = M.policy("report_policy", "narrative_messages", rp, m, { metric = pm, direction = dir })
    local resp, cerr
    if messages then
      resp, cerr = llm.chat({ messages = messages, events = ctx.events })
    else
      cerr = merr
    end
    if resp then
      narrative = resp.text
    else
      narrative_error = cerr
    end
  else
    narrative_error = tostring(rp)
  end
  local plots = {}
  local fold_svg = path.join(trial, "fold_scores.svg")
  if report.plot_folds(m, { metric = pm, path = fold_svg, direction = dir }) then
    table.insert(plots, { title = pm .. " per fold", path = "fold_scores.svg" })
  end
  local md = report.markdown({
    metrics = m,
    metric = pm,
    direction = dir,
    narrative = narrative,
    narrative_error = narrative_error,
    plots = plots,
    title = "Experiment report: " .. (cfg().dataset_name or ""),
  })
  -- What the LLM calls of this trial used so far (the narrative's included), from its own event log.
  local u = ctx.events:usage()
  md = md
    .. string.format(
      "\n## LLM use\n\n%d calls, %d tokens (%d prompt, %d completion), %.1f s of LLM time%s.\n",
      u.calls,
      u.total_tokens,
      u.prompt_tokens,
      u.completion_tokens,
      u.latency,
      u.cost > 0 and string.format(", cost $%.4f", u.cost) or ""
    )
  write_text(report_path, md)
  local sc = report.score(m, { metric = pm, direction = dir }) or {}
  -- The comparison the report shows, for the success criterion (nil when there is nothing to compare).
  local cmp = report.compare(m, { metric = pm, direction = dir })
  ctx:info("[ANALYZE] report written: " .. report_path)
  return {
    score = sc.score,
    winner = sc.model,
    metrics = m,
    table = results_table(m, pm),
    compare = cmp,
    baseline = cmp and cmp.baseline or nil,
  }
end

---------------------------------------------------------------------------------------------------
-- commands
---------------------------------------------------------------------------------------------------

local function new_trial_name() return string.format("prompt_run_%s_%d", time.stamp(), host.pid()) end

-- Exit codes of the four commands (README, "Exit codes"): 0 when the command did its work, whatever the
-- result; 1 only where a command could not produce what it exists for (generate) or where asked
-- (run --fail-if-unmet); errors raised here (bad config, missing files, a rejected key) exit 2.
function M.generate(opts)
  local s1 = require("stage1").discover(cfg(), opts.use_idea)
  local trial = path.join(prompt_root(), new_trial_name())
  local nb, err = M.generate_into(trial, opts, s1)
  if not nb then
    if err.kind == "generation_failed" then
      log.error(q(nil, err.message, "generation error", 1000))
      return 1
    end
    error(tostring(err), 0)
  end
  log.line("[GENERATE] Trial: " .. trial)
  return 0
end

function M.execute(opts)
  local trial = M.find_trial(opts.trial)
  local s1 = require("stage1").discover(cfg(), fs.exists(path.join(trial, "research_strategy.md")))
  local out, err = M.execute_trial(trial, s1)
  if not out then error(tostring(err), 0) end
  -- The executed notebook is saved either way; a cell that stayed broken is a result, not an error.
  if not out.ok then log.line("[EXEC] finished with a failing cell: " .. q(nil, out.error, "cell error", 1000)) end
  return 0
end

function M.analyze(opts)
  local trial = M.find_trial(opts.trial)
  local res, err = M.analyze_trial(trial)
  if not res then error(tostring(err), 0) end
  if res.score ~= nil then
    log.line(
      string.format(
        "[CHECK] %s | %s: %.4f",
        q(nil, res.winner, "winner"),
        section("experiment").primary_metric or "PCC",
        res.score
      )
    )
  end
  return 0
end

-- One attempt in a trial context: generate, execute, analyze. Returns {score=, winner=, metrics=, table=,
-- compare=, baseline=, executed = {ok=, error=, failed_cell=}} or nil and a typed error. Strategies call
-- this for every node.
-- The kernel is got while the notebook is generated (a pool's kernel, or one started for the trial), so a
-- node waits for a kernel only when every slot is busy, and a kernel that cannot start is known before a
-- second node pays for its generation.
function M.attempt(ctx, opts)
  local s1 = require("stage1").discover(cfg(), opts.use_idea)
  local made, merr = fs.mkdir(ctx.trial)
  if not made then return nil, M.err("io", "cannot create the trial folder " .. ctx.trial .. ": " .. tostring(merr)) end
  local gen, kern = {}, {}
  require("task").all({
    function()
      gen.nb, gen.err = M.generate_into(ctx.trial, opts, s1, ctx)
      return true
    end,
    function()
      local ok, k, give_back = pcall(start_kernel, ctx.trial, s1, ctx)
      if ok then
        kern.k, kern.give_back = k, give_back
      else
        kern.err = M.as_error(k)
      end
      return true
    end,
  })
  local nb, err = gen.nb, gen.err
  if not nb or host.interrupted() or kern.err then
    if kern.k then kern.give_back() end
    if not nb then return nil, err end
    if host.interrupted() then return nil, M.err("interrupted", "interrupted") end
    return nil, kern.err
  end
  local ex, xerr = M.execute_trial(ctx.trial, s1, ctx, kern)
  if not ex then return nil, xerr end
  local res, aerr = M.analyze_trial(ctx.trial, ctx)
  if not res then return nil, aerr end
  if host.interrupted() then return nil, M.err("interrupted", "interrupted") end
  res.executed = ex
  return res
end

-- Confirmation with seeds (experiment.confirm_seeds = k): the trial's executed notebook (its fixes
-- applied) is run again k times, each in a fresh kernel with CELLSCI_SEED set to another value and
-- OUTPUT_DIR = <trial>/seeds/seed_<n>, without repairs. Returns the runs {{seed=, score=, error=}...}, the
-- first being the node's own run (seed "default"). Runs inside the node, so a cancelled node stops them.
M.SEED_BASE = 1001
function M.confirm_seeds(ctx, opts, first_score, k)
  local trial = ctx.trial
  local pm = section("experiment").primary_metric or "PCC"
  local dir = direction(pm)
  local runs = { { seed = "default", score = first_score } }
  local nb = notebook.read(path.join(trial, "notebook_prompt_exec.ipynb"))
  if not nb then return runs end
  local s1 = require("stage1").discover(cfg(), opts.use_idea)
  local timeout = tonumber(section("exec").timeout_seconds) or 3600
  for j = 1, k do
    local seed = M.SEED_BASE + j - 1
    local out = path.join(trial, "seeds", "seed_" .. seed)
    fs.mkdir(path.join(out, "intermediate"))
    local run = { seed = seed }
    local ok, k_or_err, give_back = pcall(start_kernel, out, s1, ctx, { CELLSCI_SEED = tostring(seed) })
    if not ok then
      if host.interrupted() then raise("interrupted", "interrupted") end
      run.error = "the kernel did not start: " .. tostring(M.as_error(k_or_err).message)
    else
      local kern = k_or_err
      ctx:info(string.format("[SEEDS] running the notebook again with CELLSCI_SEED=%d (%d of %d)", seed, j, k))
      for i = 1, nb:len() do
        local cell = nb:cell(i)
        if cell.cell_type == "code" then
          local r = run_cell(kern, cell.source, { timeout = timeout })
          if r.interrupted then
            give_back()
            raise("interrupted", "interrupted")
          end
          if r.status ~= "ok" then
            run.error = string.format("cell %d failed: %s", i - 1, short(r))
            break
          end
        end
      end
      give_back()
      if not run.error then
        local m, merr = report.load_metrics(path.join(out, "metrics.json"))
        local sc = m and report.score(m, { metric = pm, direction = dir })
        if sc and sc.score then
          run.score = sc.score
        else
          run.error = "no score: " .. tostring(merr or "no metrics.json")
        end
      end
    end
    ctx:event("seed_run", { seed = seed, score = run.score, error = run.error })
    ctx:info(
      string.format(
        "[SEEDS] CELLSCI_SEED=%d: %s",
        seed,
        run.score and string.format("%s %.4f", pm, run.score) or q(ctx, run.error, "seed run error")
      )
    )
    table.insert(runs, run)
  end
  return runs
end

-- Where a trial is archived: prompt_run_<stamp> beside it (what phase-3 tools look for), never a
-- folder that exists.
function M.archive_dest(trial)
  local parent = path.dirname(trial)
  local name = "prompt_run_" .. time.stamp()
  local dest, n = path.join(parent, name), 1
  while fs.exists(dest) do
    n = n + 1
    dest = path.join(parent, name .. "_" .. n)
  end
  return dest
end

-- Rename a trial to `dest` (default: M.archive_dest). The run's current event log follows the trial when
-- it is the one being written (a trial context's own log is moved by its owner). Returns the new path,
-- or nil when the rename failed.
function M.archive(trial, dest)
  dest = dest or M.archive_dest(trial)
  local ef = log.event_file()
  local ok, err = fs.rename(trial, dest)
  if not ok then
    log.warn("[ARCHIVE] could not rename " .. trial .. ": " .. tostring(err))
    return nil
  end
  if ef and path.dirname(ef) == trial then log.set_event_file(path.join(dest, path.basename(ef))) end
  -- The runner takes the folder name from the rest of this line: nothing may follow it.
  log.line("[ARCHIVE] Saved run to: " .. path.basename(dest))
  return dest
end

M.prompt_root = prompt_root
M.direction = direction
M.new_trial_name = new_trial_name

-- Before the loop: exec.kernel_retry must make a policy, and a gateway (exec.gateway_url) that refuses the token, is not a gateway URL or lacks
-- the kernelspec is a config error (exit 2), not a failure of every iteration. One that does not answer
-- yet is only warned about: kernel starts wait for it as the kernel retry policy says.
function M.check_gateway()
  local ok, perr = pcall(kernel_policy)
  if not ok then error("config: exec.kernel_retry: " .. tostring(perr), 0) end
  local ex = section("exec")
  if ex.host_policy ~= nil then
    local hok, herr = false, "expected a table {failures=, window=, cooldown=}"
    if type(ex.host_policy) == "table" then
      hok, herr = pcall(require("hosts").new, ex.host_policy)
    end
    if not hok then error("config: exec.host_policy: " .. tostring(herr), 0) end
  end
  local url = ex.gateway_url
  if type(url) ~= "string" or url == "" then return end
  local specs, err = kernel.specs({ gateway = url })
  if not specs then
    if err.kind == "auth" or err.kind == "config" or err.kind == "client" or err.kind == "no_such_kernel" then
      error("config: exec.gateway_url: " .. tostring(err.message or err), 0)
    end
    log.warn(
      "[EXEC] the gateway "
        .. url
        .. " does not answer yet ("
        .. q(nil, err.message or err, "gateway error")
        .. "); kernel starts will wait for it as the kernel retry policy says"
    )
    return
  end
  local want = ex.kernel_name ~= "" and ex.kernel_name or nil
  local names = {}
  for _, s in ipairs(specs) do
    names[s.name] = true
  end
  if want and not names[want] then
    local have = {}
    for _, s in ipairs(specs) do
      table.insert(have, s.name)
    end
    error(
      string.format(
        "config: exec.kernel_name: the gateway %s has no kernelspec '%s' (it has: %s)",
        url,
        want,
        #have > 0 and table.concat(have, ", ") or "none"
      ),
      0
    )
  end
  -- Enterprise Gateway refuses users (root by default) and unknown kernelspecs only when a kernel
  -- starts: one start now, so that a refusal that would fail every iteration stops before the loop
  if specs[1] and specs[1].gateway_kind == "enterprise" then
    local k, kerr = kernel.start({ gateway = url, name = want })
    if k then
      log.info(string.format("[EXEC] the Enterprise Gateway %s started a kernel on %s", url, tostring(k:host())))
      k:shutdown()
    elseif kerr.kind == "unauthorized" then
      error("config: exec.gateway_username: " .. tostring(kerr.message), 0)
    elseif kerr.kind == "no_such_kernel" then
      error("config: exec.kernel_name: " .. tostring(kerr.message), 0)
    elseif kerr.kind == "auth" or kerr.kind == "config" then
      error("config: exec.gateway_url: " .. tostring(kerr.message), 0)
    elseif kerr.kind == "interrupted" then
      error("interrupted", 0)
    else
      log.warn(
        "[EXEC] a first kernel on the Enterprise Gateway "
          .. url
          .. " did not start ("
          .. q(nil, kerr.message or kerr, "gateway error")
          .. "); kernel starts will be tried as the kernel retry policy says"
      )
    end
  end
  log.info(string.format("[EXEC] kernels run on the gateway %s (kernelspec %s)", url, want or "its default"))
end

-- `cellsci run [--strategy NAME|FILE.lua]`: the loop with its bookkeeping (stdlib/loop.lua) around a
-- search strategy (stdlib/strategies/<name>.lua; serial by default).
function M.run(opts) return require("loop").run(opts) end

return M
