-- The loop's bookkeeping, for the bundled loop and every strategy: the loop summary the runner reads
-- (written from the start and after every node), the plain stdout lines (ITERATION i/n, [CHECK],
-- [SUCCESS] ..., [ARCHIVE] ...), best tracking, archiving, resume, and when to stop. A strategy is only
-- its search policy: which node to try next (see stdlib/strategies/*.lua and README, "A strategy of
-- your own").
--
--   local L = loop.open(opts)        -- the summary (new, or the one --resume names)
--   local node = L:node{kind=, parent=, buffer=}   -- the next trial (nil when the budget is spent)
--   local res, err = L:attempt(node, opts)         -- generate, execute, analyze in its trial context
--   L:record(node, res, err)         -- judge, print, track the best, write the summary, archive a success
--   L:done()                         -- met, stopped, interrupted or out of nodes
--   return L:close()                 -- archive the best, the final summary; the exit code
--
-- What ends a loop, by the kind of a node's error (a user can shadow this module or change the table):
-- "stop" ends it with exit 2 (the failure would repeat in every node), "end" ends it like its last node.
-- No side effects at load.
local host = require("host")
local fs = require("fs")
local path = require("path")
local json = require("json")
local log = require("log")
local time = require("time")
local llm = require("llm")
local report = require("report")

local M = {}

M.stop_on = {
  client = "stop",
  config = "stop",
  replay_miss = "stop",
  disk = "stop",
  io = "stop",
  budget = "end",
  time_limit = "end",
  unreachable = "stop",
}

-- What the original writes where a node (or the loop) has no score; the runner expects a number.
M.NO_SCORE = -999.0

local function pipeline() return require("pipeline") end
local function section(name) return host.config[name] or {} end
local function str(v) return type(v) == "string" and v or nil end
local function scored(r) return type(r.score) == "number" and r.score ~= M.NO_SCORE end

local L = {}
L.__index = L

-- The criterion in words, for the loop's lines: success.describe when the criterion module has it.
function L:describe()
  local exp = section("experiment")
  local P = pipeline()
  local words = P.policy("success", "describe", {
    metric = self.pm,
    threshold = self.threshold,
    direction = self.direction,
    criterion = exp.criterion,
    alpha = exp.alpha,
    confirm_seeds = exp.confirm_seeds,
  })
  if type(words) == "string" and words ~= "" then return words end
  return string.format(
    "%s %s %s (%s is better)",
    self.pm,
    self.direction == "lower" and "<" or ">",
    tostring(self.threshold),
    self.direction
  )
end

-- The lock file of a summary (held while a process runs its loop): hidden, beside it.
function M.lock_path(summary) return path.join(path.dirname(summary), "." .. path.basename(summary) .. ".lock") end

function L:unlock()
  if self.lock then
    self.lock:release()
    self.lock = nil
    fs.remove(M.lock_path(self.summary_path))
  end
end

-- Open the loop: a new summary, or the one `opts.resume` names (finished nodes are kept).
function M.open(opts)
  local c = host.config
  local exp = section("experiment")
  local P = pipeline()
  local self = setmetatable({
    opts = opts,
    pm = exp.primary_metric or "PCC",
    threshold = tonumber(exp.success_threshold) or 0,
    -- the node budget: search.max_nodes, else experiment.max_iterations (zero means zero)
    max_iters = math.max(0, math.floor(tonumber(section("search").max_nodes or exp.max_iterations) or 1)),
    time_limit = tonumber(section("search").time_limit),
    stamp = time.stamp(),
    pid = host.pid(),
    started = time.now(),
    started_iso = time.iso(),
    iters = {},
    next_iter = 1,
    met_any = false,
    stopped = nil,
    nothing_left = false,
    prior = { time = 0, prompt = 0, completion = 0, total = 0, calls = 0, latency = 0, cost = 0 },
    base_usage = llm.usage() or {},
  }, L)
  self.direction = P.direction(self.pm)
  -- the criterion (experiment.criterion, alpha) is checked before anything runs: exit 2 naming the key
  if type(require("success").check) == "function" then
    local usable, cerr = P.policy("success", "check", exp.criterion, exp.alpha)
    if not usable then error("config: " .. tostring(cerr), 0) end
  end
  P.check_gateway()
  local made, merr = fs.mkdir(P.prompt_root())
  if not made then error("cannot create " .. P.prompt_root() .. ": " .. tostring(merr), 0) end
  self.summary_path = path.join(P.save_root(), string.format("phase2_loop_summary_%s_%d.json", self.stamp, self.pid))
  if opts.resume then
    -- one process per summary: a second `run --resume` of it would run the same nodes twice
    local lock, lerr = fs.lock(M.lock_path(opts.resume))
    if not lock then
      error(
        "config: "
          .. tostring(opts.resume)
          .. " is being resumed by another cellsci (process "
          .. tostring(lerr.holder or "?")
          .. "); wait for it to end",
        0
      )
    end
    self.lock = lock
    self:resume(opts.resume)
  else
    self.lock = fs.lock(M.lock_path(self.summary_path))
  end
  if self.time_limit and self.time_limit <= 0 then self.time_limit = nil end
  -- A summary from the start (before the first line): a loop killed during its first node can still be
  -- resumed.
  self:summary(false)
  log.info(
    string.format(
      "[LOOP] %d iterations at most; the criterion: %s; summary: %s",
      self.max_iters,
      self:describe(),
      self.summary_path
    )
  )
  self:page()
  return self
end

function L:resume(file)
  local text, rerr = fs.read(file)
  if not text then error("cannot read the summary to resume: " .. tostring(rerr), 0) end
  local old = json.decode(text)
  if type(old) ~= "table" or type(old.iterations) ~= "table" then error(file .. ": not a phase-2 loop summary", 0) end
  self.summary_path, self.started_iso = file, old.started_at or self.started_iso
  self.prior = {
    time = tonumber(old.total_time_sec) or 0,
    prompt = tonumber(old.prompt_tokens) or 0,
    completion = tonumber(old.completion_tokens) or 0,
    total = tonumber(old.total_tokens) or 0,
    calls = tonumber(old.llm_calls) or 0,
    latency = tonumber(old.llm_latency_sec) or 0,
    cost = tonumber(old.total_cost_usd) or 0,
  }
  local met_rec, interrupted, last = nil, false, 0
  self.resumed = true
  for _, r in ipairs(old.iterations) do
    -- An interrupted node is done again; finished ones are kept as they were.
    if r.status == "INTERRUPTED" then
      interrupted = true
    else
      table.insert(self.iters, r)
    end
    if r.criteria_met then met_rec = r end
    if type(r.iter) == "number" and r.iter > last and r.status ~= "INTERRUPTED" then last = r.iter end
  end
  self.next_iter = last + 1
  -- Parallel nodes finish out of order: a kill can leave iteration 3 unrecorded while 4 is. Numbers below
  -- the last recorded one that have no record are done again, first.
  local have = {}
  for _, r in ipairs(self.iters) do
    if type(r.iter) == "number" then have[r.iter] = true end
  end
  self.redo = {}
  for i = 1, last - 1 do
    if not have[i] then table.insert(self.redo, i) end
  end
  self.best_score, self.best_trial = tonumber(old.best_score), str(old.best_trial_dir)
  if self.best_score == M.NO_SCORE then self.best_score = nil end
  self.archived, self.archive_source = str(old.archived_dir), str(old.archive_source)
  if self.archived and not fs.exists(self.archived) then
    -- Killed during the rename: finish it, or forget the plan when its source is gone too.
    local src = self.archive_source
    if src and fs.exists(src) and pipeline().archive(src, self.archived) then
      if self.best_trial == src then self.best_trial = self.archived end
    else
      self.archived = nil
    end
  end
  self.archive_source = nil
  for _, r in ipairs(self.iters) do
    if r.trial_dir and not r.archived_as and not fs.exists(r.trial_dir) then
      local found = self:find_archived(r)
      if found then
        r.archived_as = found
        self.archived = self.archived or found
        log.line("[RESUME] iteration " .. tostring(r.iter) .. " was archived as " .. path.basename(found))
      end
    end
  end
  if self.best_trial and not fs.exists(self.best_trial) then
    self.best_score, self.best_trial = nil, nil
  end
  self:update_best()
  local stopped = str(old.stopped)
  if met_rec then
    self.met_any = true
    log.line("[RESUME] iteration " .. tostring(met_rec.iter) .. " already met the criterion; finishing the loop")
    self:update_best()
    if not self.archived and self.best_trial and fs.exists(self.best_trial) then self:archive(self.best_trial) end
    self.nothing_left = true
  elseif
    old.finished_at ~= nil
    and old.finished_at ~= json.null
    and not interrupted
    and (stopped == nil or stopped == "interrupted")
  then
    log.line("[RESUME] " .. path.basename(file) .. ": the loop had finished; nothing left to do")
    self.nothing_left = true
  else
    local redo = #self.redo > 0 and (" (redoing " .. table.concat(self.redo, ", ") .. ", cut short)") or ""
    log.line(
      string.format(
        "[RESUME] %s: %d iterations done, going on from %d%s",
        path.basename(file),
        #self.iters,
        self.next_iter,
        redo
      )
    )
  end
end

function L:usage()
  local u, b = llm.usage() or {}, self.base_usage
  local d = function(k) return (u[k] or 0) - (b[k] or 0) end
  return {
    prompt = d("prompt_tokens"),
    completion = d("completion_tokens"),
    total = d("total_tokens"),
    calls = d("requests"),
    latency = d("latency"),
    cost = d("cost"),
  }
end

-- Write the summary (final: with finished_at). A failed write raises, or with `soft` returns nil, err.
function L:summary(final, soft)
  table.sort(self.iters, function(a, b) return (a.iter or 0) < (b.iter or 0) end)
  local valid, met, cancelled = 0, 0, 0
  for _, r in ipairs(self.iters) do
    if r.status == "VALID" then valid = valid + 1 end
    if r.criteria_met then met = met + 1 end
    if r.status == "CANCELLED" then cancelled = cancelled + 1 end
  end
  local u, p, n = self:usage(), self.prior, #self.iters - cancelled
  local flying = json.array()
  if self.search then
    for _, f in ipairs(self.search:flying()) do
      local nd = self.search.in_flight[f.iter]
      table.insert(flying, {
        iter = f.iter,
        kind = f.kind,
        parent = f.parent or json.null,
        started_at = nd and nd.started_iso or json.null,
      })
    end
  end
  local ok, err = fs.write(self.summary_path, json.encode({
    dataset = host.config.dataset_name,
    started_at = self.started_iso,
    finished_at = final and time.iso() or json.null,
    primary_metric = self.pm,
    direction = self.direction,
    success_threshold = self.threshold,
    max_iterations = self.max_iters,
    iterations_executed = n,
    valid_iterations = valid,
    criteria_met_iterations = met,
    success_rate = n > 0 and met / n or 0.0,
    validity_rate = n > 0 and valid / n or 0.0,
    best_score = self.best_score or M.NO_SCORE,
    best_at_budget = self.best_score or M.NO_SCORE,
    best_trial_dir = self.best_trial or json.null,
    archived_dir = self.archived or json.null,
    archive_source = self.archive_source or json.null,
    total_cost_tokens = p.prompt + u.prompt + p.completion + u.completion,
    total_cost_latency = p.latency + u.latency,
    criteria_met = self.met_any,
    stopped = self.stopped or json.null,
    strategy = self.strategy_name,
    total_tokens = p.total + u.total,
    prompt_tokens = p.prompt + u.prompt,
    completion_tokens = p.completion + u.completion,
    llm_calls = p.calls + u.calls,
    llm_latency_sec = p.latency + u.latency,
    total_cost_usd = p.cost + u.cost,
    replies_repaired = (function()
      local n = 0
      for _, r in ipairs(self.iters) do
        n = n + (tonumber(r.replies_repaired) or 0)
      end
      return n
    end)(),
    total_time_sec = p.time + time.now() - self.started,
    cancelled_iterations = cancelled,
    in_flight = flying,
    iterations = json.array(self.iters),
  }, { pretty = true }) .. "\n")
  if not ok then
    if soft then return nil, err end
    error("cannot write " .. self.summary_path .. ": " .. tostring(err), 0)
  end
  return true
end

-- Write the summary; when that fails (a full or read-only disk), say so once and end the loop (the
-- stop table's "disk": exit 2) instead of raising out of the bookkeeping. Returns true when written.
function L:save(final)
  local ok, err = self:summary(final, true)
  if ok then return true end
  if not self.save_failed then
    self.save_failed = true
    log.error(
      "[LOOP] cannot write the loop summary "
        .. self.summary_path
        .. ": "
        .. tostring(err)
        .. "; ending the loop (what is on disk can be finished with --resume)"
    )
  end
  self.stopped = self.stopped or "disk"
  return false
end

-- A record whose trial folder is gone was archived in a run that could not write the summary after the
-- rename (a full disk): its archive is the prompt_run_* folder whose event log names the trial.
function L:find_archived(rec)
  local dir = rec.trial_dir
  if type(dir) ~= "string" then return nil end
  local list = fs.list(pipeline().prompt_root()) or {}
  for _, name in ipairs(list) do
    local n = type(name) == "table" and name.name or name
    if type(n) == "string" and n:find("^prompt_run_") then
      local cand = path.join(pipeline().prompt_root(), n)
      local ev = fs.read(path.join(cand, "events.jsonl"), { max_bytes = 4 * 1024 * 1024 })
      if ev and ev:find(dir .. "/", 1, true) then return cand end
    end
  end
  return nil
end

-- The run page (run.html beside the summary), rebuilt when the loop opens, after each node is recorded
-- (and archived) and when it closes, not on every summary write (an archive writes the summary twice,
-- and each page reads every trial's event log): a view, so a failure is a warning (once per kind of
-- failure), never the end of the loop.
function L:page(ctx)
  local ok, res, perr = pcall(report.page, self.summary_path)
  local why = not ok and tostring(res) or (res == nil and tostring(perr and perr.message or perr)) or nil
  if why and why ~= self.page_warned then log.warn("[LOOP] cannot build the run page: " .. log.quote(why)) end
  -- every failure goes to the event log of the node being recorded (the warning only when it changes)
  if why and ctx then ctx:event("page_failed", { error = why }) end
  if not why then self.page_path = res end
  self.page_warned = why
end

-- Archive a trial: the plan goes into the summary first, then the rename (a kill in between is
-- finished by --resume). The rename needs no space: when the disk is full and the plan cannot be
-- written, the best trial is still archived, and the summary written again once it can be.
function L:archive(trial, ctx)
  self.archived, self.archive_source = pipeline().archive_dest(trial), trial
  local planned, perr = self:summary(false, true)
  local dest = pipeline().archive(trial, self.archived)
  if not dest then self.archived = nil end
  self.archive_source = nil
  ctx = ctx or (self.ctxs and self.ctxs[trial])
  if dest and ctx then ctx:moved(dest) end
  if dest then
    for _, r in ipairs(self.iters) do
      if r.trial_dir == trial then r.archived_as = dest end
    end
  end
  if self.best_trial == trial then self.best_trial = dest or trial end
  local ok, err = self:summary(false, true)
  if not ok then
    log.error(
      "[LOOP] cannot write the loop summary "
        .. self.summary_path
        .. ": "
        .. tostring(err)
        .. (dest and ("; the best trial is archived all the same as " .. dest) or "")
    )
  elseif not planned then
    log.warn(
      "[LOOP] the archive plan could not be written first ("
        .. log.quote(tostring(perr))
        .. "); the summary is now up to date"
    )
  end
  return dest
end

-- How many more nodes may start (the node budget less what ran, and the iterations to redo).
function L:nodes_left() return math.max(0, self.max_iters - self.next_iter + 1) + #(self.redo or {}) end

-- Whether search.time_limit (seconds of wall time, this process) is spent.
function L:time_spent() return self.time_limit ~= nil and time.now() - self.started >= self.time_limit end

-- End the search for `why` (a key of M.stop_on, e.g. "time_limit"), saying so once on stdout.
function L:end_search(why, line)
  if self.stopped then return end
  self.stopped = why
  if line then log.line(line) end
end

function L:done()
  if not self.stopped and self:time_spent() then
    self:end_search(
      "time_limit",
      string.format("[LOOP] the search's time limit (%gs) is spent; ending the search here", self.time_limit)
    )
  end
  return self.met_any or self.stopped ~= nil or self.nothing_left or host.interrupted() or self:nodes_left() == 0
end

-- A search setting: config `search.<key>`, else `default`.
function L:setting(key, default)
  local v = section("search")[key]
  if v == nil then return default end
  return v
end

-- The records so far (kept in iteration order), e.g. for a tree strategy choosing what to expand.
function L:records() return self.iters end

local function by_iter(self, iter)
  for _, r in ipairs(self.iters) do
    if r.iter == iter then return r end
  end
  return nil
end

-- Is record a better than record b (by success.better, else the metric's direction)?
function L:better(a, b)
  if not b then return true end
  local exp = section("experiment")
  local better, berr = pipeline().policy("success", "better", a.score, b.score, self.pm, exp.direction)
  if berr then
    return (self.direction == "lower" and a.score < b.score) or (self.direction ~= "lower" and a.score > b.score)
  end
  return better and true or false
end

-- The best valid record (what an improvement starts from), or nil.
function L:best_valid()
  local best
  for _, r in ipairs(self.iters) do
    if r.status == "VALID" and scored(r) and (best == nil or self:better(r, best)) then best = r end
  end
  return best
end

-- The record the loop archives: the best of those that met the criterion, else the best valid one.
function L:best()
  local best
  for _, r in ipairs(self.iters) do
    if r.criteria_met and scored(r) and (best == nil or self:better(r, best)) then best = r end
  end
  return best or self:best_valid()
end

-- best_score / best_trial follow L:best(), so the summary's best and the archive always agree.
function L:update_best()
  local b = self:best()
  if b then
    self.best_score, self.best_trial = b.score, b.archived_as or b.trial_dir
  end
end

-- Earlier nodes, as text for the next generation (search.feedback = true, or a strategy's choice).
function L:feedback_text()
  local lines = {}
  for _, r in ipairs(self.iters) do
    if r.status == "VALID" or r.status == "NO_METRIC" or r.status == "CRASH" then
      local s = string.format("- attempt %s: %s", tostring(r.iter), r.status)
      if scored(r) then s = s .. string.format(", %s %.4f", self.pm, r.score) end
      if r.error then s = s .. ": " .. (llm.clip(tostring(r.error), { head = 400, tail = 0 })) end
      if r.results_table and r.results_table ~= "" then s = s .. "\n" .. r.results_table:gsub("\n", "\n  ") end
      table.insert(lines, s)
    end
  end
  return table.concat(lines, "\n")
end

-- The records a node's memory covers: its lineage (the parent's ancestors and their children) or the
-- whole run (search.memory = "run", the default; "off" for none).
function L:memory_records(parent)
  local scope = self:setting("memory", "run")
  if scope == "off" then return nil end
  if scope ~= "lineage" or not parent then return self.iters end
  local line, r = {}, parent
  while r do
    line[r.iter] = true
    r = r.parent and by_iter(self, r.parent) or nil
  end
  local out = {}
  for _, x in ipairs(self.iters) do
    if line[x.iter] or (x.parent and line[x.parent]) then table.insert(out, x) end
  end
  return out
end

-- What a record gives a child node: its trial, notebook, score or error.
local function parent_info(p)
  local dir = p.archived_as or p.trial_dir
  local nbp = dir and path.join(dir, "notebook_prompt_exec.ipynb")
  if nbp and not fs.exists(nbp) then nbp = path.join(dir, "notebook_prompt.ipynb") end
  return {
    iter = p.iter,
    trial = dir,
    notebook = nbp,
    score = scored(p) and p.score or nil,
    error = p.status ~= "VALID" and (p.error or p.status) or nil,
    report_table = p.results_table,
  }
end

-- The next node: {iter=, trial=, ctx=, kind=, parent=}; nil when no node is left.
--   kind    "draft" (default), "improve", "debug" or "crossover"
--   parent  a record (from L:records()) this node starts from; parents = {a, b} for a crossover
--   focus   what an improvement should change; siblings = the parent's other children ({iter=, focus=})
--   buffer  keep the node's stdout lines until it is recorded (for nodes that run at the same time)
--   pool    a kernel.pool to take the node's kernel from
--   feedback  text about earlier nodes for the prompt (default: search.feedback = true gives L:feedback_text())
function L:node(o)
  o = o or {}
  if self:done() then return nil end
  local i
  if self.redo and #self.redo > 0 then
    i = table.remove(self.redo, 1)
  else
    i = self.next_iter
    self.next_iter = i + 1
  end
  local run_name = string.format("workspace_%s_%d_iter%03d", self.stamp, self.pid, i)
  local trial = path.join(pipeline().prompt_root(), run_name)
  local parents = {}
  for _, p in ipairs(o.parents or (o.parent and { o.parent }) or {}) do
    table.insert(parents, parent_info(p))
  end
  local feedback = o.feedback
  if feedback == nil and self:setting("feedback", false) == true then feedback = self:feedback_text() end
  local memory
  if self.search then
    local recs = self:memory_records(o.parent)
    local limit = tonumber(self:setting("memory_chars", nil))
    if recs and #recs > 0 then memory = require("operators").memory(recs, self.pm, limit) end
  end
  local kind = o.kind or "draft"
  local op =
    { kind = kind, parents = parents, memory = memory, feedback = feedback, focus = o.focus, siblings = o.siblings }
  local ctx = require("trial").new(
    trial,
    { buffer = o.buffer, kernel_pool = o.pool, feedback = feedback, parent = parents[1], op = op }
  )
  local pits = {}
  for _, p in ipairs(parents) do
    table.insert(pits, p.iter)
  end
  local node = {
    iter = i,
    run_name = run_name,
    trial = trial,
    ctx = ctx,
    kind = kind,
    parent = o.parent and o.parent.iter or nil,
    parents = #pits > 1 and pits or nil,
    focus = o.focus,
    t0 = time.now(),
    started_iso = time.iso(),
    header = string.format("ITERATION %d/%d", i, self.max_iters),
  }
  self.ctxs = self.ctxs or {}
  self.ctxs[trial] = ctx
  if not o.buffer then log.line(node.header) end
  return node
end

-- What the criterion (success.judge) is given for a node's result: the score and the threshold, the
-- metrics and their comparison, the node's record, its seed runs when there are any.
function L:evidence(node, res)
  local exp = section("experiment")
  return {
    score = res.score,
    threshold = self.threshold,
    metric = self.pm,
    direction = exp.direction,
    criterion = exp.criterion,
    alpha = exp.alpha,
    metrics = res.metrics,
    compare = res.compare,
    winner = res.winner,
    baseline = res.baseline,
    trial = node.trial,
    seeds = res.seeds,
    record = { iter = node.iter, kind = node.kind, parent = node.parent },
  }
end

-- Generate, execute and analyze the node's trial (pipeline.attempt), after a reload of edited scripts.
-- With experiment.confirm_seeds = k, a node whose score would meet the criterion is run again k times
-- with other seeds first (pipeline.confirm_seeds); its score becomes the mean of its runs, and the
-- criterion sees every run (res.seeds).
function L:attempt(node, opts)
  host.reload({ events = node.ctx.events })
  opts = opts or self.opts
  local res, err = pipeline().attempt(node.ctx, opts)
  local k = math.floor(tonumber(section("experiment").confirm_seeds) or 0)
  if res and k > 0 and res.score ~= nil and res.executed and res.executed.ok then
    local would = pipeline().policy("success", "judge", self:evidence(node, res))
    if would then
      local runs = pipeline().confirm_seeds(node.ctx, opts, res.score, k)
      local scores, failed = {}, {}
      for _, r in ipairs(runs) do
        if r.score then
          table.insert(scores, { seed = r.seed, score = r.score })
        else
          table.insert(failed, r)
        end
      end
      res.seeds, res.seed_failures = scores, #failed > 0 and failed or nil
      local sum = 0
      for _, r in ipairs(scores) do
        sum = sum + r.score
      end
      res.first_score, res.score = res.score, sum / #scores
    end
  end
  return res, err
end

-- Record a node's outcome: status, score, the criterion, the best so far, the summary; print its lines.
-- how = {cancelled = reason} records a node the search stopped (status CANCELLED, no line printed: the
-- runner never sees an attempt it did not make). Returns the record. The archive is made when the loop
-- closes, from the best record (L:best()), whatever order parallel nodes finish in.
function L:record(node, res, err, how)
  local ctx, pm = node.ctx, self.pm
  local u = ctx.events:usage()
  local rec = {
    iter = node.iter,
    run_name = node.run_name,
    status = "CRASH",
    score = M.NO_SCORE,
    trial_dir = node.trial,
    criteria_met = false,
    kind = node.kind,
    parent = node.parent,
    parents = node.parents,
    focus = node.focus,
    duration_sec = time.now() - node.t0,
    started_at = node.started_iso,
    t_start = node.t0,
    t_end = time.now(),
    usage = {
      prompt_tokens = u.prompt_tokens,
      completion_tokens = u.completion_tokens,
      total_tokens = u.total_tokens,
      total_latency_sec = u.latency,
      calls = u.calls,
      cost = u.cost,
    },
    cost_usd = u.cost,
    -- LLM replies that needed the extractor's repairs to be read (fences, prose, Python literals...)
    replies_repaired = ctx.replies_repaired or 0,
    tokens = { prompt = u.prompt_tokens, completion = u.completion_tokens, total = u.total_tokens },
    llm_calls = u.calls,
    llm_latency_sec = u.latency,
    strategy_source = ctx.strategy_source,
  }
  if how and how.cancelled then
    rec.status, rec.cancelled, rec.error = "CANCELLED", true, "cancelled: " .. tostring(how.cancelled)
    ctx:event("cancelled", { reason = tostring(how.cancelled) })
    ctx.pending = {}
    table.insert(self.iters, rec)
    self:save(false)
    self:page(ctx)
    return rec
  end
  if host.interrupted() or (err and err.kind == "interrupted") then
    rec.status, rec.error = "INTERRUPTED", "interrupted by the user"
    self.stopped = "interrupted"
    table.insert(self.iters, rec)
    if ctx.buffered then ctx:flush(node.header) end
    self:save(false)
    self:page(ctx)
    return rec
  end
  if err then
    rec.status, rec.error, rec.error_kind = "CRASH", tostring(err.message or err), err.kind
    -- "Exception:" marks the node as buggy for the runner's log parser.
    -- (the cause in full, up to 2000 characters: it names the key or path to fix)
    local cause = log.quote(tostring(err), { what = "error", max = 2000, events = ctx.events })
    ctx:line(string.format("[LOOP] Exception: iteration %d crashed: %s", node.iter, cause))
  elseif not res.executed.ok then
    rec.status, rec.error, rec.error_kind = "CRASH", res.executed.error, "cell_unfixable"
    if res.score ~= nil then rec.score = res.score end
  elseif res.score == nil then
    rec.status, rec.error_kind = "NO_METRIC", "no_metrics"
  else
    rec.status, rec.score, rec.winner = "VALID", res.score, res.winner
    ctx:line(string.format("[CHECK] %s | %s: %.4f", ctx:quote(res.winner, "winner"), pm, res.score))
    host.reload({ events = ctx.events })
    local P = pipeline()
    local exp = section("experiment")
    local met, why, detail = P.policy("success", "judge", self:evidence(node, res))
    rec.criteria_met, rec.judgement = met and true or false, why
    if res.seeds then
      rec.seeds, rec.first_score = res.seeds, res.first_score
    end
    if res.seed_failures then
      -- a rerun that fails is not a robust result, whatever the mean of the others
      rec.criteria_met, rec.seed_failures = false, res.seed_failures
      rec.judgement = tostring(why)
        .. "; but "
        .. #res.seed_failures
        .. " seed rerun(s) failed ("
        .. ctx:quote(tostring(res.seed_failures[1].error):sub(1, 200), "error")
        .. ")"
      if type(detail) == "table" then
        detail.met, detail.reason = false, rec.judgement
      end
    end
    if type(detail) == "table" then
      rec.verdict = detail
      local wrote, werr = P.policy("verdict", "write", node.trial, detail)
      if not wrote then
        ctx:warn("[LOOP] cannot add the verdict to the report: " .. ctx:quote(tostring(werr), "error"))
      end
    else
      rec.verdict = { met = rec.criteria_met, reason = tostring(why), criterion = exp.criterion or "threshold" }
    end
  end
  if res and res.table then rec.results_table = res.table end
  ctx:line(
    string.format(
      "[COST] Iteration %d: %d tokens | %.2fs LLM time%s",
      node.iter,
      rec.usage.total_tokens,
      rec.usage.total_latency_sec,
      u.cost > 0 and string.format(" | $%.4f", u.cost) or ""
    )
  )
  local rule = rec.error_kind and M.stop_on[rec.error_kind]
  if rule == "end" then
    -- A spent budget ends the loop the way its last node would: the best trial is archived.
    self.stopped = self.stopped or rec.error_kind
    ctx:line("[LOOP] the LLM budget (tokens, calls or money) is spent; ending the loop here")
  elseif rule == "stop" then
    self.stopped = rec.error_kind
    ctx:error("[LOOP] stopping: this failure (" .. rec.error_kind .. ") would repeat in every iteration")
  end
  if rec.criteria_met and not self.met_any then
    self.met_any = true
    -- "Success threshold met" is the runner's marker of a successful run: printed only here.
    ctx:line("[SUCCESS] Success threshold met (" .. tostring(rec.judgement) .. "); archiving and stopping")
  elseif rec.status == "VALID" and not rec.criteria_met then
    local crit = section("experiment").criterion
    ctx:line(
      "[CONTINUE] "
        .. ((crit == nil or crit == "threshold") and "Threshold not met: " or "Criterion not met: ")
        .. tostring(rec.judgement)
    )
  end
  table.insert(self.iters, rec)
  self:update_best()
  if ctx.buffered then ctx:flush(node.header) end
  self:save(false)
  self:page(ctx)
  return rec
end

-- Archive the best record (L:best()) unless it is archived already. Returns the folder or nil.
function L:archive_best()
  self:update_best()
  local b = self:best()
  if not b then return nil end
  if b.archived_as and fs.exists(b.archived_as) then return b.archived_as end
  if self.archived and fs.exists(self.archived) then
    -- an earlier process archived another node (a resumed loop found a better one since): that folder
    -- goes back to its trial name, so the best is the one archive
    local old
    for _, r in ipairs(self.iters) do
      if r.archived_as == self.archived then old = r end
    end
    if not old or not old.trial_dir or fs.exists(old.trial_dir) or not fs.rename(self.archived, old.trial_dir) then
      return self.archived
    end
    log.info(
      "[ARCHIVE] "
        .. path.basename(self.archived)
        .. " is no longer the best; renamed back to "
        .. path.basename(old.trial_dir)
    )
    old.archived_as, self.archived = nil, nil
  end
  if not fs.exists(b.trial_dir) then return nil end
  return self:archive(b.trial_dir)
end

-- End the loop: archive the best (the best of the nodes that met the criterion, else the best valid
-- one), plot the iterations into the archived report, write the final summary. Returns the exit code
-- (README, "Exit codes").
function L:close()
  if self.stopped == "interrupted" or host.interrupted() then
    self.stopped = "interrupted"
    -- a met criterion keeps its archive, as when the loop was not interrupted
    if self.met_any and not self.archived then self:archive_best() end
    self:save(true)
    self:page()
    self:unlock()
    log.line("[INTERRUPT] stopped; loop summary saved to " .. self.summary_path)
    return 130
  end
  self:update_best()
  if self.met_any then
    self:archive_best()
  elseif self.best_trial and self.best_trial ~= self.archived and fs.exists(self.best_trial) then
    log.line(
      string.format(
        "[LOOP] No iteration met the criterion; archiving the BEST run found (%s Score: %.4f)",
        self.pm,
        self.best_score
      )
    )
    self:archive_best()
  elseif not self.archived then
    log.line("[LOOP] No iteration produced a score; nothing archived")
  end
  -- The score of every node against the threshold, beside the archived report (once, also when a
  -- finished loop is resumed).
  if self.archived and fs.exists(self.archived) then
    local pts = {}
    for _, r in ipairs(self.iters) do
      table.insert(
        pts,
        { iteration = r.iter, score = scored(r) and r.score or nil, status = r.status, met = r.criteria_met }
      )
    end
    local svg = path.join(self.archived, "iterations.svg")
    if
      report.plot_iterations(
        pts,
        { threshold = self.threshold, metric = self.pm, path = svg, direction = self.direction }
      )
    then
      local rp = path.join(self.archived, "experiment_report.md")
      local text = fs.read(rp)
      local section_md = "\n## Iterations\n\n![" .. self.pm .. " per iteration](iterations.svg)\n"
      if text and not text:find(section_md, 1, true) then
        local ok, err = fs.write(rp, text .. section_md)
        if not ok then log.warn("[LOOP] cannot add the iterations plot to the report: " .. tostring(err)) end
      end
    end
  end
  self:save(true)
  self:page()
  self:unlock()
  if self.archived then log.info("[LOOP] report: " .. path.join(self.archived, "experiment_report.md")) end
  if self.page_path then log.info("[LOOP] run page: " .. self.page_path) end
  log.info("[LOOP] loop summary: " .. self.summary_path)
  if self.stopped and M.stop_on[self.stopped] == "stop" then return 2 end
  local ran = 0
  for _, r in ipairs(self.iters) do
    if r.status ~= "CANCELLED" then ran = ran + 1 end
  end
  if self.met_any then
    log.line(string.format("[LOOP] Finished: the criterion was met (%d of %d iterations run)", ran, self.max_iters))
    return 0
  end
  log.line(
    string.format("[LOOP] Finished: no iteration met the criterion (%d of %d iterations run)", ran, self.max_iters)
  )
  return self.opts.fail_if_unmet and 1 or 0
end

-- The strategy module: a bundled name (stdlib/strategies/<name>.lua) or a Lua file returning {run = f}.
function M.strategy(name)
  if name:find("%.lua$") or name:find("/", 1, true) then
    local chunk, err = loadfile(name)
    if not chunk then error("config: cannot load the strategy " .. name .. ": " .. tostring(err), 0) end
    local mod = chunk()
    if type(mod) == "table" and type(mod.run) ~= "function" and type(mod.choose) == "function" then
      -- a policy file: run on the scheduler, and loaded again at a decision after it was edited
      return M.policy_file(name, mod)
    end
    if type(mod) ~= "table" or type(mod.run) ~= "function" then
      error("config: the strategy " .. name .. " must return a table with a run(L, opts) or a choose(S) function", 0)
    end
    return mod
  end
  local ok, mod = pcall(require, "strategies." .. name)
  if not ok then
    error(
      "config: unknown strategy '"
        .. name
        .. "' (bundled: serial, best_of_n, greedy, tree, mcts, evolve): "
        .. tostring(mod),
      0
    )
  end
  return mod
end

local function stamp_of(file)
  local st = fs.stat(file)
  return st and (tostring(st.mtime) .. ":" .. tostring(st.size)) or ""
end

-- A policy file ({choose = f}) as a strategy: the scheduler asks it for every node, and an edit of the
-- file is loaded at the next decision (a copy that fails to load keeps the last good one, with a warning).
function M.policy_file(file, mod)
  local cur, stamp = mod, stamp_of(file)
  local function get()
    local now = stamp_of(file)
    if now ~= stamp then
      stamp = now
      local chunk, err = loadfile(file)
      local ok, m = false, err
      if chunk then
        ok, m = pcall(chunk)
      end
      if ok and type(m) == "table" and type(m.choose) == "function" then
        cur = m
        log.info("reloaded " .. file)
      else
        log.warn(
          "[SEARCH] "
            .. file
            .. " was edited but cannot be used (keeping the last good version): "
            .. tostring(ok and "it must return a table with choose(S)" or m)
        )
      end
    end
    return cur
  end
  return { run = function(L, opts) require("search").run(L, opts, get) end }
end

-- `cellsci run`: open the loop, run the strategy (opts.strategy, else config search.strategy, else
-- serial), close the loop.
function M.run(opts)
  local name = opts.strategy or section("search").strategy or "serial"
  local strategy = M.strategy(name)
  local L = M.open(opts)
  L.strategy_name = name
  if not L.nothing_left then
    local ok, err = pcall(strategy.run, L, opts)
    if not ok and not host.interrupted() then
      log.error("[LOOP] the strategy " .. name .. " failed: " .. log.quote(tostring(err)))
      L.stopped = "strategy"
      M.stop_on.strategy = M.stop_on.strategy or "stop"
    end
  end
  return L:close()
end

return M
