-- Stage-1 discovery: find the phase-1 reference data (REFERENCE_DATA.h5, else any .h5) and idea.json.
--
-- If paths.stage1_analysis_dir holds no .h5 directly, its last subfolder in name order is used: phase 1
-- names its runs by timestamp (YYYYMMDD_HHMMSS), so that is the newest run. Hidden folders are skipped.
local fs = require("fs")
local path = require("path")
local log = require("log")

local M = {}

local function h5_in(dir)
  if fs.exists(path.join(dir, "REFERENCE_DATA.h5")) then return path.join(dir, "REFERENCE_DATA.h5") end
  local names = fs.list(dir) or {}
  for _, n in ipairs(names) do
    if n:match("%.h5$") then return path.join(dir, n) end
  end
  return nil
end

-- discover(cfg, use_idea) -> {ref_dir=, h5=, idea=, notes={...}}
function M.discover(cfg, use_idea)
  local out = { notes = {} }
  local dir = cfg.paths and cfg.paths.stage1_analysis_dir
  if not dir or dir == "" then
    table.insert(out.notes, "paths.stage1_analysis_dir is not set")
    log.warn("[SETUP] paths.stage1_analysis_dir is not set; the notebook gets no STAGE1_H5_PATH")
  elseif not fs.exists(dir) then
    table.insert(out.notes, "stage-1 folder not found: " .. dir)
    log.warn("[SETUP] stage-1 folder not found: " .. dir)
  else
    local ref = dir
    if not h5_in(dir) then
      local subs = {}
      for _, n in ipairs(fs.list(dir) or {}) do
        local p = path.join(dir, n)
        if n:sub(1, 1) ~= "." and fs.is_dir(p) then table.insert(subs, n) end
      end
      table.sort(subs)
      if #subs > 0 then
        ref = path.join(dir, subs[#subs])
        log.info("[SETUP] newest reference run: " .. subs[#subs])
      end
    end
    out.ref_dir = ref
    out.h5 = h5_in(ref)
    if out.h5 then
      log.info("[SETUP] data: " .. out.h5)
    else
      table.insert(out.notes, "no .h5 file in " .. ref)
      log.warn("[SETUP] no .h5 file in " .. ref)
    end
  end
  if use_idea then
    local base = out.h5 and path.dirname(out.h5) or out.ref_dir
    local cand = base and path.join(base, "idea.json")
    if cand and fs.exists(cand) then
      out.idea = cand
    else
      local custom = cfg.prompt_branch and cfg.prompt_branch.idea_file
      if custom and fs.exists(custom) then out.idea = custom end
    end
    if out.idea then
      log.info("[SETUP] ideas: " .. out.idea)
    else
      log.warn("[SETUP] --use-idea is on but no idea.json was found; the design is freestyle")
      table.insert(out.notes, "no idea.json found")
    end
  end
  return out
end

return M
