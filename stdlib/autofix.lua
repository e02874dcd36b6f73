-- The fix policy: given a failing cell, propose a new source for it (or give up).
--
-- Cheap heuristics for known errors come first; then, when exec.enable_llm_autofix is on, an LLM edit in
-- the request/reply format of DESIGN §1. Shadow this file to change how cells are repaired; edits take
-- effect at the next fix round of a running pipeline. No side effects at load.
local json = require("json")
local llm = require("llm")
local log = require("log")

local M = {}

-- The shape of a fix reply, sent as a JSON schema (structured outputs) unless llm.structured_outputs is
-- false; an endpoint that refuses it gets json_object, then plain text (stdlib/adapt.lua).
M.FIX_SCHEMA = {
  name = "cell_fix",
  strict = true,
  schema = {
    type = "object",
    additionalProperties = false,
    required = { "edits" },
    properties = {
      edits = {
        type = "array",
        items = {
          type = "object",
          additionalProperties = false,
          required = { "cell_index", "source" },
          properties = { cell_index = { type = "integer" }, source = { type = "string" } },
        },
      },
    },
  },
}

-- Well-known import aliases: `NameError: name 'np' is not defined` is fixed by importing it.
M.aliases = {
  np = "import numpy as np",
  pd = "import pandas as pd",
  plt = "import matplotlib.pyplot as plt",
  os = "import os",
  sys = "import sys",
  json = "import json",
  math = "import math",
  re = "import re",
  time = "import time",
  random = "import random",
  glob = "import glob",
  pickle = "import pickle",
  h5py = "import h5py",
  sns = "import seaborn as sns",
  torch = "import torch",
  nn = "import torch.nn as nn",
  Path = "from pathlib import Path",
  defaultdict = "from collections import defaultdict",
}

local function trim(s) return (s or ""):gsub("^%s+", ""):gsub("%s+$", "") end

-- Heuristics: return a new source, or nil when none applies.
function M.heuristic(ctx)
  local r = ctx.result or {}
  if r.status ~= "error" then return nil end
  if r.ename == "NameError" then
    local name = (r.evalue or ""):match("name '([%w_]+)' is not defined")
    local imp = name and M.aliases[name]
    if imp and not ctx.source:find(imp, 1, true) then return imp .. "\n" .. ctx.source, "added `" .. imp .. "`" end
  end
  return nil
end

-- What went wrong, as the fix request's error text.
local function describe(r, timeout)
  if r.status == "timeout" then
    return string.format(
      "TimeoutError: the cell did not finish within %s seconds and was interrupted; make it faster "
        .. "(smaller search, fewer epochs, vectorised code)",
      tostring(timeout or "?")
    )
  elseif r.status == "dead" then
    return "KernelDied: "
      .. (r.evalue or "the kernel process died while running this cell")
      .. " (often out of memory: use less memory)"
  end
  return string.format("%s: %s", r.ename or "Error", r.evalue or "")
end

-- How much of the error text and traceback a fix request carries, in bytes. An exception can hold a whole
-- array or a megabyte of log in its message; the model needs the start of the message (what went wrong)
-- and the end of the traceback (where). llm.clip marks what it leaves out.
M.limits = { error_head = 2000, error_tail = 500, traceback_head = 500, traceback_tail = 4000 }

-- The fix request (DESIGN §1): cell_index is the cell's index in the user's notebook (0-based, as in the file).
function M.request(ctx)
  local r = ctx.result or {}
  local tb = r.traceback or ""
  if type(tb) == "table" then tb = table.concat(tb, "\n") end
  local lim = M.limits
  tb = llm.clip(tb, { head = lim.traceback_head, tail = lim.traceback_tail })
  local err = llm.clip(describe(r, ctx.timeout), { head = lim.error_head, tail = lim.error_tail })
  return {
    task = "Fix the failing notebook cell so that it runs; keep its purpose.",
    errors = { { cell_index = ctx.cell_index, error = err, traceback = tb } },
    failing_code = { { cell_index = ctx.cell_index, source = ctx.source } },
    instruction = 'Return {"edits": [{"cell_index": <same cell_index>, "source": "<whole new cell source>"}]} and nothing else.',
  }
end

-- Pick the edit for our cell out of a parsed reply: {"edits": [...]}, a bare list of edits, or one edit.
function M.pick_edit(reply, cell_index)
  local edits = reply
  if type(reply) == "table" and reply.edits then edits = reply.edits end
  if type(edits) ~= "table" then return nil end
  if edits.source then edits = { edits } end
  for _, e in ipairs(edits) do
    if type(e) == "table" and tonumber(e.cell_index) == cell_index and type(e.source) == "string" then
      return e.source
    end
  end
  if #edits == 1 and type(edits[1]) == "table" and type(edits[1].source) == "string" then return edits[1].source end
  return nil
end

-- fix(ctx) -> new_source, how  |  nil, reason
-- ctx = {cell_index, source, result (from k:execute), round, max_rounds, timeout, use_llm, system_prompt,
--        llm = {model=, temperature=, ...} (extra chat options)}
function M.fix(ctx)
  local src, how = M.heuristic(ctx)
  if src then return src, "heuristic: " .. how end
  if not ctx.use_llm then return nil, "LLM autofix is off (exec.enable_llm_autofix)" end
  local req = M.request(ctx)
  local opts = {
    messages = {
      { role = "system", content = ctx.system_prompt },
      { role = "user", content = json.encode(req, { pretty = true }) },
    },
    temperature = 0,
  }
  for k, v in pairs(ctx.llm or {}) do
    opts[k] = v
  end
  -- the trial's own event log: this exchange belongs to the trial whose cell it repairs
  if ctx.events ~= nil and opts.events == nil then opts.events = ctx.events end
  if ctx.json_schema ~= nil and opts.json_schema == nil then opts.json_schema = ctx.json_schema end
  local resp, err = llm.chat(opts)
  if not resp then return nil, "LLM fix request failed: " .. tostring(err) end
  local parsed, perr, repaired = llm.extract_json(resp.text)
  if repaired and ctx.trial ~= nil then
    ctx.trial.replies_repaired = (ctx.trial.replies_repaired or 0) + 1
    ctx.trial:event("reply_repaired", { step = "fix", cell_index = ctx.cell_index })
  end
  if parsed == nil then return nil, "could not read the LLM's fix: " .. tostring(perr) end
  local new = M.pick_edit(parsed, ctx.cell_index)
  if not new then return nil, "the LLM's reply has no edit for cell " .. tostring(ctx.cell_index) end
  if trim(new) == trim(ctx.source) then return nil, "the LLM returned the same source" end
  log.debug("[FIX] LLM edit for cell " .. ctx.cell_index)
  return new, "llm"
end

return M
