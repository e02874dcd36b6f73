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
-- else the bundled copy. A prompt that cannot be used is a config error (the text says "config: "), which
-- ends a command or a `run` loop with exit 2 instead of sending a broken request.
function M.load_prompt(explicit, name)
  local text, where
  if explicit and explicit ~= "" then
    local err
    text, err = fs.read(explicit)
    if not text then error("config: cannot read prompt file " .. explicit .. ": " .. tostring(err), 0) end
    where = explicit
  else
    text, where = host.bundled("prompts/" .. name)
    if not text then error("config: no bundled prompt prompts/" .. name, 0) end
  end
  local doc, err = yaml.decode(text)
  if doc == nil then error("config: prompt file " .. where .. ": " .. tostring(err), 0) end
  -- a YAML list decodes to a table too: only a mapping has the keys a prompt needs
  if type(doc) ~= "table" or rawlen(doc) > 0 or getmetatable(doc) == getmetatable(json.array({})) then
    error("config: prompt file " .. where .. ": expected a mapping of keys (system: ...), found a "
      .. (type(doc) == "table" and "list" or type(doc)), 0)
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
    log.error(string.format("[POLICY] cannot load %s: %s", module, tostring(mod)))
    return nil, module .. ".lua failed to load: " .. tostring(mod)
  end
  if type(mod) ~= "table" or type(mod[fn]) ~= "function" then
    return nil, module .. ".lua has no function " .. fn
  end
  local res = table.pack(pcall(mod[fn], ...))
  if not res[1] then
    log.error(string.format("[POLICY] %s.%s failed: %s", module, fn, tostring(res[2])))
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
    if st and st.is_dir and (not best_m or st.mtime >= best_m) then best, best_m = p, st.mtime end
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
    log.warn("[SETUP] cannot read " .. p .. ": " .. tostring(err))
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

-- Ask for the notebook; on an unreadable reply, ask the model to reformat it (prompt_branch.json_retries).
-- Each unusable reply is saved whole, once, as <trial>/generation_reply_<n>.txt; the reformat request
-- echoes only its first and last M.ECHO_BYTES (and says so), so a runaway reply cannot make every later
-- request (and generation_failure.json) as big as itself.
-- Returns cells, hypergraph, attempts (errors, reply sizes and files).
M.ECHO_BYTES = 8192
local function request_notebook(system, user, trial)
  local pb = section("prompt_branch")
  local messages = { { role = "system", content = system }, { role = "user", content = user } }
  local attempts = {}
  local retries = tonumber(pb.json_retries) or 2
  for attempt = 0, retries do
    host.reload()
    local resp, err = llm.chat({ messages = messages, temperature = pb.temperature, max_tokens = pb.max_tokens })
    if not resp then
      table.insert(attempts, { attempt = attempt + 1, error = tostring(err) })
      return nil, nil, attempts, "the generation request failed: " .. tostring(err)
    end
    local parsed, perr = llm.extract_json(resp.text)
    local cells, hg
    if parsed ~= nil then cells, hg = M.cells_of(parsed) end
    if cells then return cells, hg, attempts end
    local why = (llm.clip(parsed == nil and tostring(perr) or hg, { head = 2000, tail = 0 }))
    local reply_file = path.join(trial, string.format("generation_reply_%d.txt", attempt + 1))
    local saved, serr = fs.write(reply_file, resp.text)
    if not saved then log.warn("[GENERATE] cannot save the reply: " .. tostring(serr)) end
    table.insert(attempts, { attempt = attempt + 1, error = why, finish_reason = resp.finish_reason,
      raw = (llm.clip(resp.text, { head = 1000, tail = 1000 })), raw_bytes = #resp.text,
      raw_file = saved and path.basename(reply_file) or nil })
    log.warn(string.format("[GENERATE] reply %d could not be used (%s)%s", attempt + 1, why,
      attempt < retries and "; asking the model to reformat it" or ""))
    local echo, cut = llm.clip(resp.text, { head = M.ECHO_BYTES, tail = M.ECHO_BYTES })
    table.insert(messages, { role = "assistant", content = echo })
    table.insert(messages, { role = "user", content = "Your reply could not be used: " .. why
      .. (cut > 0 and string.format(" (it was %d bytes long; the %d bytes in its middle are left out above)", #resp.text, cut) or "")
      .. '. Reply again with only the JSON object {"cells": [...], "hypergraph": {...}} and no other text.' })
  end
  return nil, nil, attempts, "no usable notebook after " .. #attempts .. " replies"
end

-- Build the notebook (DESIGN §1) from the cells, hypergraph and strategy.
function M.build_notebook(cells, hypergraph, strategy_md)
  local nb = notebook.new()
  if strategy_md then nb:push({ cell_type = "markdown", source = strategy_md }) end
  for i, c in ipairs(cells) do
    nb:push({ cell_type = "code", source = c.code, metadata = { subtask = {
      id = tostring(c.id or ("T" .. i)), name = c.name or ("Step " .. i), purpose = c.purpose or "" } } })
  end
  local md = nb.metadata
  md.execution = md.execution or {}
  md.execution.hypergraph = hypergraph
  nb.metadata = md
  return nb
end

-- Generate into `trial` (created). Returns the notebook path.
function M.generate_into(trial, opts, s1)
  local made, merr = fs.mkdir(trial)
  if not made then error("cannot create the trial folder " .. trial .. ": " .. tostring(merr), 0) end
  log.set_event_file(path.join(trial, "events.jsonl"))
  local c = cfg()
  local spec, spec_path = M.load_prompt(opts.prompt_file or section("prompt_branch").prompt_file, "generation.yaml")
  local vars = { cuda_device_str = "cuda:" .. tostring(section("exec").cuda_device_id or 0),
    primary_metric = section("experiment").primary_metric, dataset_name = c.dataset_name }
  local system = M.fill(spec.system or "", vars)
  spec.system = nil

  local strategy_md
  if opts.use_idea then
    host.reload()
    local sprompt = M.load_prompt(section("prompt_branch").strategy_prompt_file, "strategy.yaml")
    local ideas = read_ideas(s1.idea)
    local info
    strategy_md, info = M.policy("strategy", "synthesize", { ideas = ideas, system = M.fill(sprompt.system or "", vars) })
    if not strategy_md then
      strategy_md, info = "# Research Strategy\n\n(No strategy: " .. tostring(info) .. ")\n", { source = "none" }
    end
    write_text(path.join(trial, "research_strategy.md"), strategy_md)
    log.info("[STRATEGY] research_strategy.md written (" .. info.source .. ")")
  end

  local user = "Technical specification (YAML):\n\n" .. M.fill(yaml.encode(spec), vars)
    .. "\n\nResearch strategy:\n\n" .. (strategy_md or "No research strategy was given: the design is freestyle.")
    .. "\n\nReturn the notebook as the JSON object described in the system prompt."
    .. (section("prompt_branch").strict_json_only ~= false and " Reply with that JSON object only: no prose before or after it." or "")
  local cells, hg, attempts, err = request_notebook(system, user, trial)
  if not cells then
    local fail_path = path.join(trial, "generation_failure.json")
    write_json(fail_path, { error = err, prompt_file = spec_path, attempts = attempts })
    if host.interrupted() then error("interrupted", 0) end
    -- The runner counts an iteration with this line as buggy (DESIGN: "Lines other tools read").
    log.line("[GENERATE] Notebook Generation Failed: " .. err)
    error("generation failed: " .. err .. " (every reply is saved in " .. fail_path .. ")", 0)
  end
  local nb = M.build_notebook(cells, hg, strategy_md)
  local nb_path = path.join(trial, "notebook_prompt.ipynb")
  local ok, werr = nb:write(nb_path)
  if ok == nil then error("cannot write " .. nb_path .. ": " .. tostring(werr), 0) end
  log.event("generated", { notebook = nb_path, cells = #cells, prompt_file = spec_path })
  log.info(string.format("[GENERATE] %d cells -> %s", #cells, nb_path))
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

local function start_kernel(trial, s1)
  local ex = section("exec")
  local env = { OUTPUT_DIR = trial }
  if s1.h5 then env.STAGE1_H5_PATH = s1.h5 end
  if s1.idea then env.STAGE1_IDEA_PATH = s1.idea end
  -- CUDA_VISIBLE_DEVICES is inherited, never set: the runner (or the user) chose the GPU, and
  -- exec.cuda_device_id only names the device in the prompt (${cuda_device_str}).
  local spec = { name = ex.kernel_name, python = ex.python, packages = ex.kernel_packages, cwd = trial, env = env }
  local k, err = kernel.start(spec)
  if not k and not host.interrupted() then
    -- A start can fail for passing reasons (a port taken between its choice and the kernel's bind).
    log.warn("[EXEC] the kernel did not start (" .. tostring(err) .. "); trying once more")
    log.event("kernel_start_failed", { error = tostring(err) })
    k, err = kernel.start(spec)
  end
  if not k then error("cannot start the kernel: " .. tostring(err), 0) end
  local r = run_cell(k, M.GUARD, { silent = true })
  if r.interrupted then error("interrupted", 0) end
  if r.status ~= "ok" then error("kernel set-up failed: " .. tostring(r.evalue), 0) end
  return k
end

local function short(r)
  if r.status == "error" then return string.format("%s: %s", r.ename or "Error", (r.evalue or ""):sub(1, 200)) end
  if r.status == "timeout" then return "timed out" end
  if r.status == "dead" then return "kernel died: " .. tostring(r.evalue or "") end
  return r.status
end

-- Bring a restarted kernel back to where it was: set-up, then every cell that had succeeded.
local function replay(k, nb, done)
  local r = run_cell(k, M.GUARD, { silent = true })
  if r.interrupted then error("interrupted", 0) end
  if r.status ~= "ok" then return false, "set-up failed after restart" end
  for _, j in ipairs(done) do
    local rr = run_cell(k, nb:cell(j).source, { timeout = tonumber(section("exec").timeout_seconds) })
    if rr.interrupted then error("interrupted", 0) end
    if rr.status ~= "ok" then return false, "replaying cell " .. (j - 1) .. " failed: " .. short(rr) end
  end
  return true
end

-- Execute a trial's notebook cell by cell with repairs. Returns {ok=, exec_path=, failed_cell=, error=}.
function M.execute_trial(trial, s1)
  log.set_event_file(path.join(trial, "events.jsonl"))
  local ex = section("exec")
  local nb_path = path.join(trial, "notebook_prompt.ipynb")
  local nb, err = notebook.read(nb_path)
  if not nb then error("cannot read " .. nb_path .. ": " .. tostring(err), 0) end
  nb:clear_outputs()
  local exec_path = path.join(trial, "notebook_prompt_exec.ipynb")
  local timeout = tonumber(ex.timeout_seconds) or 3600
  local max_rounds = tonumber(ex.max_fix_rounds) or 3
  local fix_prompt = M.load_prompt(section("prompt_branch").fix_prompt_file or ex.fix_prompt_file, "fix.yaml")
  local made, merr = fs.mkdir(path.join(trial, "intermediate"))
  if not made then error("cannot create " .. path.join(trial, "intermediate") .. ": " .. tostring(merr), 0) end

  local k = start_kernel(trial, s1)
  local code_cells = 0
  for i = 1, nb:len() do if nb:cell(i).cell_type == "code" then code_cells = code_cells + 1 end end
  local bar = log.progress({ total = code_cells, label = "cell" })
  local done, outcome = {}, { ok = true, exec_path = exec_path }
  local ok_run, run_err = pcall(function()
    for i = 1, nb:len() do
      local cell = nb:cell(i)
      if cell.cell_type == "code" then
        local sub = (cell.metadata or {}).subtask or {}
        local id = tostring(sub.id or ("Cell_" .. (i - 1)))
        log.info(string.format("[GRAPH] running node %s: %s (cell %d)", id, sub.name or "", i - 1))
        bar:message(string.format("%s %s | %d tokens so far", id, sub.name or "", (llm.usage() or {}).total_tokens or 0))
        local r = run_cell(k, cell.source, { timeout = timeout })
        record(nb, i, r, exec_path)
        log.event("cell", { cell_index = i - 1, id = id, status = r.status, duration = r.duration, ename = r.ename })
        local round = 0
        while r.status ~= "ok" do
          log.line(string.format("[GRAPH] Error in Node %s (cell %d): %s", id, i - 1, short(r)))
          if host.interrupted() then error("interrupted", 0) end
          if round >= max_rounds then
            outcome = { ok = false, exec_path = exec_path, failed_cell = i - 1,
              error = string.format("cell %d (%s) still fails after %d fix rounds: %s", i - 1, id, max_rounds, short(r)) }
            break
          end
          round = round + 1
          host.reload()
          log.line(string.format("[FIX] %s | Round %d/%d | %s", id, round, max_rounds, short(r)))
          if r.status == "dead" or r.restarted or not k:alive() then
            if not k:alive() then k:restart() end
            local rok, rerr = replay(k, nb, done)
            if not rok then
              outcome = { ok = false, exec_path = exec_path, failed_cell = i - 1, error = rerr }
              break
            end
          end
          local src = nb:cell(i).source
          local new, how = M.policy("autofix", "fix", {
            cell_index = i - 1, source = src, result = r, round = round, max_rounds = max_rounds,
            timeout = timeout, use_llm = ex.enable_llm_autofix ~= false,
            system_prompt = fix_prompt.system_prompt or fix_prompt.system or "",
          })
          check_interrupt()
          log.event("fix", { cell_index = i - 1, id = id, round = round, applied = new ~= nil, how = how })
          if not new then
            log.line(string.format("[FIX] %s | no fix: %s", id, how))
            outcome = { ok = false, exec_path = exec_path, failed_cell = i - 1,
              error = string.format("cell %d (%s) could not be fixed (%s): %s", i - 1, id, how, short(r)) }
            break
          end
          log.line(string.format("[FIX] %s | applied fix (%s); re-running", id, how))
          nb:set_source(i, new)
          r = run_cell(k, new, { timeout = timeout })
          record(nb, i, r, exec_path)
          log.event("cell", { cell_index = i - 1, id = id, status = r.status, duration = r.duration, round = round })
        end
        if not outcome.ok then break end
        table.insert(done, i)
        bar:inc()
      end
    end
  end)
  bar:finish()
  k:shutdown()
  local md = nb.metadata
  md.execution = md.execution or {}
  md.execution.cellsci = { ok = ok_run and outcome.ok, failed_cell = outcome.failed_cell, error = outcome.error }
  nb.metadata = md
  local saved, serr = nb:write(exec_path)
  if saved then log.line("[EXEC] Saved final state: " .. exec_path) end
  if not ok_run then error(run_err, 0) end
  if not saved then error("cannot save the executed notebook " .. exec_path .. ": " .. tostring(serr), 0) end
  check_interrupt()

  if ex.enable_hypergraph_viz ~= false then
    local _, herr = report.hypergraph(nb, { path = path.join(trial, "hypergraph.json") })
    if herr then log.warn("[EXEC] hypergraph.json: " .. tostring(herr)) end
    local _, merr = report.mermaid(nb, { path = path.join(trial, "hypergraph.md") })
    if merr then log.warn("[EXEC] hypergraph.md: " .. tostring(merr)) end
  end
  M.list_intermediate(trial)
  if not outcome.ok then log.warn("[EXEC] " .. outcome.error) end
  return outcome
end

-- Say what the notebook wrote under intermediate/ (a missing folder is worth knowing about).
-- fs.walk never follows a symlink the notebook made (one to /usr, two to `.`) and stops at a count and
-- a depth; what is past the caps is one summary line.
M.INTERMEDIATE_LIMITS = { max_files = 100, max_depth = 8 }
function M.list_intermediate(trial)
  local w, err = fs.walk(path.join(trial, "intermediate"), M.INTERMEDIATE_LIMITS)
  if not w and err.kind ~= "not_found" then log.warn("[EXEC] cannot list intermediate/: " .. tostring(err)) end
  w = w or { files = {}, truncated = 0, too_deep = 0, unreadable = 0 }
  local files = {}
  for _, f in ipairs(w.files) do
    table.insert(files, { path = "intermediate/" .. f.path, size = f.size, kind = f.kind, target = f.target })
  end
  if #files == 0 and w.truncated == 0 then
    log.info("[EXEC] the notebook wrote nothing under intermediate/")
  end
  for _, f in ipairs(files) do
    if f.kind == "link" then
      log.info(string.format("[EXEC]   %-48s -> %s (symlink, not followed)", f.path, tostring(f.target)))
    else
      log.info(string.format("[EXEC]   %-48s %10d bytes", f.path, f.size))
    end
  end
  if w.truncated > 0 or w.too_deep > 0 then
    log.info(string.format("[EXEC]   ... and %d more entries not listed, %d folders deeper than %d levels not entered",
      w.truncated, w.too_deep, M.INTERMEDIATE_LIMITS.max_depth))
  end
  log.event("intermediate", { files = files, truncated = w.truncated, too_deep = w.too_deep })
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

-- Write experiment_report.md for `trial`. Returns {score=, winner=, metrics=} (score nil without metrics).
function M.analyze_trial(trial)
  local pm = section("experiment").primary_metric or "PCC"
  local dir = direction(pm)
  local report_path = path.join(trial, "experiment_report.md")
  local mpath = path.join(trial, "metrics.json")
  if not fs.exists(mpath) then
    write_text(report_path, "# Experiment report\n\nThe notebook wrote no metrics.json, so there is nothing to score.\n")
    log.info("[ANALYZE] no metrics.json in " .. trial)
    return {}
  end
  local m, err = report.load_metrics(mpath)
  if not m then
    write_text(report_path, "# Experiment report\n\nmetrics.json could not be read: " .. tostring(err) .. "\n")
    log.warn("[ANALYZE] metrics.json could not be read: " .. tostring(err))
    return {}
  end
  -- The narrative: the model explains numbers it is given (report.narrative_input), never writes them.
  local narrative, narrative_error
  local ok, rp = pcall(M.load_prompt, section("prompt_branch").report_prompt_file, "report.yaml")
  if ok then
    host.reload()
    -- the wording is report_policy.lua's (a user's copy that fails costs the narrative, not the report)
    local messages, merr = M.policy("report_policy", "narrative_messages", rp, m, { metric = pm, direction = dir })
    local resp, cerr
    if messages then resp, cerr = llm.chat({ messages = messages }) else cerr = merr end
    if resp then narrative = resp.text else narrative_error = cerr end
  else
    narrative_error = tostring(rp)
  end
  local plots = {}
  local fold_svg = path.join(trial, "fold_scores.svg")
  if report.plot_folds(m, { metric = pm, path = fold_svg, direction = dir }) then
    table.insert(plots, { title = pm .. " per fold", path = "fold_scores.svg" })
  end
  local md = report.markdown({ metrics = m, metric = pm, direction = dir, narrative = narrative,
    narrative_error = narrative_error, plots = plots, title = "Experiment report: " .. (cfg().dataset_name or "") })
  write_text(report_path, md)
  local sc = report.score(m, { metric = pm, direction = dir }) or {}
  log.info("[ANALYZE] report written: " .. report_path)
  return { score = sc.score, winner = sc.model, metrics = m }
end

---------------------------------------------------------------------------------------------------
-- commands
---------------------------------------------------------------------------------------------------

local function new_trial_name()
  return string.format("prompt_run_%s_%d", time.stamp(), host.pid())
end

-- Failures that every further attempt would meet too (a rejected key, a bad config, a spent budget, a
-- cassette without the request): the loop stops on them instead of burning iterations.
-- (Matched on the error text for now; typed errors are the parallel-exploration issue's work.)
local FATAL_KINDS = { "client", "config", "replay_miss" }

-- A full or read-only disk fails every further write: the loop stops rather than lose more.
local DISK_ERRORS = { "No space left on device", "Disk quota exceeded", "Read-only file system" }

local function fatal_kind(e)
  e = tostring(e or "")
  if e:find("budget: ", 1, true) then return "budget" end
  for _, d in ipairs(DISK_ERRORS) do
    if e:find(d, 1, true) then return "disk" end
  end
  for _, k in ipairs(FATAL_KINDS) do
    if e:find(k .. ": ", 1, true) then return k end
  end
  return nil
end
M.fatal_kind = fatal_kind

-- Exit codes of the four commands (README, "Exit codes"): 0 when the command did its work, whatever the
-- result; 1 only where a command could not produce what it exists for (generate) or where asked
-- (run --fail-if-unmet); errors raised here (bad config, missing files, a rejected key) exit 2.
function M.generate(opts)
  local s1 = require("stage1").discover(cfg(), opts.use_idea)
  local trial = path.join(prompt_root(), new_trial_name())
  local ok, err = pcall(M.generate_into, trial, opts, s1)
  if not ok then
    if host.interrupted() or fatal_kind(err) then error(err, 0) end
    log.error(tostring(err))
    return 1
  end
  log.line("[GENERATE] Trial: " .. trial)
  return 0
end

function M.execute(opts)
  local trial = M.find_trial(opts.trial)
  local s1 = require("stage1").discover(cfg(), fs.exists(path.join(trial, "research_strategy.md")))
  local out = M.execute_trial(trial, s1)
  -- The executed notebook is saved either way; a cell that stayed broken is a result, not an error.
  if not out.ok then log.line("[EXEC] finished with a failing cell: " .. tostring(out.error)) end
  return 0
end

function M.analyze(opts)
  local trial = M.find_trial(opts.trial)
  local res = M.analyze_trial(trial)
  if res.score ~= nil then
    log.line(string.format("[CHECK] %s | %s: %.4f", tostring(res.winner), section("experiment").primary_metric or "PCC", res.score))
  end
  return 0
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

-- Rename a trial to `dest` (default: M.archive_dest). The event log follows the trial when it is the one
-- being written. Returns the new path, or nil when the rename failed.
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

local function usage_totals()
  local u = llm.usage() or {}
  return { prompt = u.prompt_tokens or 0, completion = u.completion_tokens or 0, total = u.total_tokens or 0,
    calls = u.calls or 0, latency = u.latency or 0 }
end

-- What the original writes where an iteration (or the loop) has no score; the runner expects a number.
M.NO_SCORE = -999.0

local function scored(r) return type(r.score) == "number" and r.score ~= M.NO_SCORE end

local function str(v) return type(v) == "string" and v or nil end

function M.run(opts)
  local c = cfg()
  local exp = section("experiment")
  local pm = exp.primary_metric or "PCC"
  local threshold = tonumber(exp.success_threshold) or 0
  local max_iters = math.max(1, math.floor(tonumber(exp.max_iterations) or 1))
  local stamp, pid = time.stamp(), host.pid()
  local root = M.save_root()
  local made, merr = fs.mkdir(prompt_root())
  if not made then error("cannot create " .. prompt_root() .. ": " .. tostring(merr), 0) end
  local summary_path = path.join(root, string.format("phase2_loop_summary_%s_%d.json", stamp, pid))
  local started, started_iso = time.now(), time.iso()
  local iters = {}
  -- archive_source: the trial being renamed to archived_dir, recorded before the rename so that a kill
  -- during it is finished by --resume.
  local best_score, best_trial, archived, archive_source
  local met_any, stopped = false, nil
  -- What earlier sessions of this loop spent (with --resume), added to this session's figures.
  local prior = { time = 0, prompt = 0, completion = 0, total = 0, calls = 0, latency = 0 }
  local first = 1

  local function summary(final)
    local valid, met = 0, 0
    for _, r in ipairs(iters) do
      if r.status == "VALID" then valid = valid + 1 end
      if r.criteria_met then met = met + 1 end
    end
    local u = usage_totals()
    write_json(summary_path, {
      dataset = c.dataset_name, started_at = started_iso, finished_at = final and time.iso() or json.null,
      primary_metric = pm, direction = direction(pm), success_threshold = threshold, max_iterations = max_iters,
      iterations_executed = #iters, valid_iterations = valid, criteria_met_iterations = met,
      success_rate = #iters > 0 and met / #iters or 0.0, validity_rate = #iters > 0 and valid / #iters or 0.0,
      best_score = best_score or M.NO_SCORE, best_at_budget = best_score or M.NO_SCORE,
      best_trial_dir = best_trial or json.null, archived_dir = archived or json.null,
      archive_source = archive_source or json.null,
      total_cost_tokens = prior.prompt + u.prompt + prior.completion + u.completion,
      total_cost_latency = prior.latency + u.latency,
      criteria_met = met_any, stopped = stopped or json.null,
      total_tokens = prior.total + u.total, prompt_tokens = prior.prompt + u.prompt,
      completion_tokens = prior.completion + u.completion, llm_calls = prior.calls + u.calls,
      llm_latency_sec = prior.latency + u.latency, total_time_sec = prior.time + time.now() - started,
      iterations = iters,
    })
  end

  -- Archive a trial: the plan goes into the summary first, then the rename.
  local function archive(trial)
    archived, archive_source = M.archive_dest(trial), trial
    summary(false)
    local dest = M.archive(trial, archived)
    if not dest then archived = nil end
    archive_source = nil
    if best_trial == trial then best_trial = dest or trial end
    summary(false)
    return dest
  end

  local nothing_left = false
  if opts.resume then
    local text, rerr = fs.read(opts.resume)
    if not text then error("cannot read the summary to resume: " .. tostring(rerr), 0) end
    local old = json.decode(text)
    if type(old) ~= "table" or type(old.iterations) ~= "table" then
      error(opts.resume .. ": not a phase-2 loop summary", 0)
    end
    summary_path, started_iso = opts.resume, old.started_at or started_iso
    prior = { time = tonumber(old.total_time_sec) or 0, prompt = tonumber(old.prompt_tokens) or 0,
      completion = tonumber(old.completion_tokens) or 0, total = tonumber(old.total_tokens) or 0,
      calls = tonumber(old.llm_calls) or 0, latency = tonumber(old.llm_latency_sec) or 0 }
    local met_rec, interrupted = nil, false
    for _, r in ipairs(old.iterations) do
      -- An interrupted iteration is done again; finished ones are kept as they were.
      if r.status == "INTERRUPTED" then interrupted = true else table.insert(iters, r) end
      if r.criteria_met then met_rec = r end
    end
    best_score, best_trial = tonumber(old.best_score), str(old.best_trial_dir)
    if best_score == M.NO_SCORE then best_score = nil end
    archived, archive_source = str(old.archived_dir), str(old.archive_source)
    if archived and not fs.exists(archived) then
      -- Killed during the rename: finish it, or forget the plan when its source is gone too.
      if archive_source and fs.exists(archive_source) and M.archive(archive_source, archived) then
        if best_trial == archive_source then best_trial = archived end
      else
        archived = nil
      end
    end
    archive_source = nil
    if best_trial and not fs.exists(best_trial) then best_score, best_trial = nil, nil end
    stopped = str(old.stopped)
    if stopped == "interrupted" then stopped = nil end
    if met_rec then
      met_any = true
      log.line("[RESUME] iteration " .. tostring(met_rec.iter) .. " already met the criterion; finishing the loop")
      if not archived and str(met_rec.trial_dir) and fs.exists(met_rec.trial_dir) then archive(met_rec.trial_dir) end
      nothing_left = true
    elseif old.finished_at ~= nil and old.finished_at ~= json.null and not interrupted and not stopped then
      log.line("[RESUME] " .. path.basename(opts.resume) .. ": the loop had finished; nothing left to do")
      nothing_left = true
    end
    stopped = nil
    first = #iters + 1
    if not nothing_left then
      log.line(string.format("[RESUME] %s: %d iterations done, going on from %d", path.basename(opts.resume), #iters, first))
    end
  end
  log.info(string.format("[LOOP] %d iterations at most; the criterion: %s %s %s (%s is better); summary: %s",
    max_iters, pm, direction(pm) == "lower" and "<" or ">", tostring(threshold), direction(pm), summary_path))
  -- A summary from the start: a loop killed during its first iteration can still be resumed.
  summary(false)

  for i = first, nothing_left and 0 or max_iters do
    host.reload()
    local run_name = string.format("workspace_%s_%d_iter%03d", stamp, pid, i)
    local trial = path.join(prompt_root(), run_name)
    log.line(string.format("ITERATION %d/%d", i, max_iters))
    local t0, u0 = time.now(), usage_totals()
    local prev_best_score, prev_best_trial = best_score, best_trial
    local rec = { iter = i, run_name = run_name, status = "CRASH", score = M.NO_SCORE, trial_dir = trial,
      criteria_met = false }
    local ok, err = pcall(function()
      local s1 = require("stage1").discover(c, opts.use_idea)
      M.generate_into(trial, opts, s1)
      check_interrupt()
      local ex = M.execute_trial(trial, s1)
      local res = M.analyze_trial(trial)
      check_interrupt()
      if not ex.ok then
        rec.status, rec.error = "CRASH", ex.error
        if res.score ~= nil then rec.score = res.score end
        return
      end
      if res.score == nil then
        rec.status = "NO_METRIC"
        return
      end
      rec.status, rec.score, rec.winner = "VALID", res.score, res.winner
      log.line(string.format("[CHECK] %s | %s: %.4f", tostring(res.winner), pm, res.score))
      host.reload()
      local met, why = M.policy("success", "judge", { score = res.score, threshold = threshold, metric = pm,
        direction = exp.direction })
      rec.criteria_met, rec.judgement = met and true or false, why
      local better, berr = M.policy("success", "better", res.score, best_score, pm, exp.direction)
      if berr then -- the policy failed: compare by the metric's direction
        better = best_score == nil or (direction(pm) == "lower" and res.score < best_score)
          or (direction(pm) == "higher" and res.score > best_score)
      end
      if better then
        best_score, best_trial = res.score, trial
      end
    end)
    local u1 = usage_totals()
    rec.duration_sec = time.now() - t0
    rec.usage = { prompt_tokens = u1.prompt - u0.prompt, completion_tokens = u1.completion - u0.completion,
      total_tokens = u1.total - u0.total, total_latency_sec = u1.latency - u0.latency, calls = u1.calls - u0.calls }
    rec.tokens = { prompt = u1.prompt - u0.prompt, completion = u1.completion - u0.completion, total = u1.total - u0.total }
    rec.llm_calls = u1.calls - u0.calls
    rec.llm_latency_sec = u1.latency - u0.latency
    if host.interrupted() then
      -- Whatever the step made of it (a swallowed LLM failure, a fallback), an interrupt ends the loop now;
      -- --resume does this iteration again.
      rec.status, rec.error, rec.criteria_met = "INTERRUPTED", "interrupted by the user", false
      best_score, best_trial = prev_best_score, prev_best_trial
      table.insert(iters, rec)
      stopped = "interrupted"
      summary(true)
      log.line("[INTERRUPT] stopped; loop summary saved to " .. summary_path)
      return 130
    end
    if not ok then
      rec.status, rec.error = "CRASH", tostring(err)
      -- "Exception:" marks the iteration as buggy for the runner's log parser.
      log.line(string.format("[LOOP] Exception: iteration %d crashed: %s", i, tostring(err)))
    end
    table.insert(iters, rec)
    log.line(string.format("[COST] Iteration %d: %d tokens | %.2fs LLM time", i, rec.usage.total_tokens,
      rec.usage.total_latency_sec))
    summary(false)
    local fatal = rec.status == "CRASH" and fatal_kind(rec.error)
    if fatal == "budget" then
      -- A spent budget ends the loop the way its last iteration would: the best trial is archived.
      stopped = "budget"
      log.line("[LOOP] the LLM budget is spent; ending the loop here")
      break
    elseif fatal then
      stopped = fatal
      log.error("[LOOP] stopping: this failure (" .. fatal .. ") would repeat in every iteration")
      break
    end
    if rec.criteria_met then
      met_any = true
      -- "Success threshold met" is the runner's marker of a successful run: printed only here.
      log.line("[SUCCESS] Success threshold met (" .. tostring(rec.judgement) .. "); archiving and stopping")
      archive(trial)
      break
    end
    if rec.status == "VALID" then log.line("[CONTINUE] Threshold not met: " .. tostring(rec.judgement)) end
  end
  if not met_any then
    if best_trial and best_trial ~= archived and fs.exists(best_trial) then
      log.line(string.format("[LOOP] No iteration met the criterion; archiving the BEST run found (%s Score: %.4f)",
        pm, best_score))
      archive(best_trial)
    elseif not archived then
      log.line("[LOOP] No iteration produced a score; nothing archived")
    end
  end
  -- The score of every iteration against the threshold, beside the archived report (once, also when a
  -- finished loop is resumed).
  if archived and fs.exists(archived) then
    local pts = {}
    for _, r in ipairs(iters) do
      table.insert(pts, { iteration = r.iter, score = scored(r) and r.score or nil, status = r.status, met = r.criteria_met })
    end
    local svg = path.join(archived, "iterations.svg")
    if report.plot_iterations(pts, { threshold = threshold, metric = pm, path = svg, direction = direction(pm) }) then
      local rp = path.join(archived, "experiment_report.md")
      local text = fs.read(rp)
      local section_md = "\n## Iterations\n\n![" .. pm .. " per iteration](iterations.svg)\n"
      if text and not text:find(section_md, 1, true) then write_text(rp, text .. section_md) end
    end
  end
  summary(true)
  if archived then log.info("[LOOP] report: " .. path.join(archived, "experiment_report.md")) end
  log.info("[LOOP] loop summary: " .. summary_path)
  if stopped and stopped ~= "budget" then return 2 end
  if met_any then
    log.line(string.format("[LOOP] Finished: the criterion was met (%d of %d iterations run)", #iters, max_iters))
    return 0
  end
  log.line(string.format("[LOOP] Finished: no iteration met the criterion (%d of %d iterations run)", #iters, max_iters))
  return opts.fail_if_unmet and 1 or 0
end

return M
