-- The verdict in a trial's experiment_report.md: the criterion's decision and its reason next to the
-- score, the paired test it rests on, and the seeds' scores when the node was confirmed with reruns.
--
--   section(detail) -> markdown    the "## Verdict" section for success.judge's detail table
--   write(trial, detail) -> true | nil, err
--                                  put it into <trial>/experiment_report.md: before "## Results" (just
--                                  under the winner and its score), replacing a verdict written before (a
--                                  node judged again after its seed reruns has one verdict)
--
-- Shadow this file to word the section your way. No side effects at load.
local fs = require("fs")
local path = require("path")

local M = {}

M.HEADING = "## Verdict"

local function finite(x) return type(x) == "number" and x == x and x ~= math.huge and x ~= -math.huge end

-- Text safe inside a markdown table cell or a line: no table breaks, emphasis, code, links or HTML tags;
-- "p < 0.05" and "PCC > 0.5" stay as they are.
function M.escape(s)
  local t = tostring(s):gsub("[\\|*`%[%]]", "\\%0"):gsub("<([%a/!?])", "\\<%1"):gsub("[\r\n]", " ")
  return t
end

local function num(x)
  if not finite(x) then return "—" end
  return string.format("%.4f", x)
end

local function fmt_p(p) return require("success").fmt_p(p) end

-- The "## Verdict" section.
function M.section(d)
  d = d or {}
  local e = M.escape
  local o = {}
  local function add(s) table.insert(o, s) end
  local metric = e(d.metric or "score")
  add(M.HEADING)
  add("")
  add(string.format("**%s** — %s", d.met and "Criterion met" or "Criterion not met", e(d.reason or "")))
  add("")
  add("| | |")
  add("|---|---|")
  if d.description then add("| Criterion | " .. e(d.description) .. " |") end
  local score = num(d.score)
  if d.winner then score = score .. " (" .. e(d.winner) .. ")" end
  if d.seed_stats and d.seed_stats.mean then
    score = score .. string.format(", mean of %d seed%s", d.seed_stats.n, d.seed_stats.n == 1 and "" or "s")
  end
  add(string.format("| %s | %s |", metric, score))
  if d.threshold ~= nil then
    local dir = d.direction == "lower" and "<" or ">"
    local met = d.threshold_met == nil and "" or (d.threshold_met and " — met" or " — not met")
    add(string.format("| Threshold | %s %s %s%s |", metric, dir, e(d.threshold), met))
  end
  if d.criterion == "significant" or d.p ~= nil then
    if d.p ~= nil then
      local ci = ""
      if type(d.ci95) == "table" and finite(d.ci95.lo) and finite(d.ci95.hi) then
        ci = string.format(" [95%% CI %s, %s]", num(d.ci95.lo), num(d.ci95.hi))
      end
      add(
        string.format(
          "| Against the baseline %s | mean difference %s%s over %s folds (%s-test) |",
          e(d.baseline or "—"),
          num(d.mean_diff),
          ci,
          tostring(d.n or "—"),
          e(d.test or "paired t")
        )
      )
      local alpha = d.alpha or 0.05
      add(
        string.format(
          "| p | %s (Holm-adjusted %s; %s %s) |",
          fmt_p(d.p),
          fmt_p(d.p_holm),
          (finite(d.p_holm) and d.p_holm < alpha) and "<" or ">=",
          tostring(alpha)
        )
      )
      if finite(d.cohens_dz) then add(string.format("| Cohen's d_z | %.2f |", d.cohens_dz)) end
    else
      add(string.format("| Against the baseline %s | no paired test |", e(d.baseline or "—")))
    end
  end
  add("")
  local seeds = d.seeds
  if type(seeds) == "table" and #seeds > 0 then
    add("### Seeds")
    add("")
    add(string.format("| Seed | %s |", metric))
    add("|---:|---:|")
    for _, s in ipairs(seeds) do
      add(string.format("| %s | %s |", e(s.seed == nil and "—" or s.seed), num(s.score)))
    end
    add("")
    local st = d.seed_stats or {}
    if st.mean then
      add(
        string.format(
          "Mean %s, SD %s, range %s to %s over %d run%s%s.",
          num(st.mean),
          st.sd and num(st.sd) or "— (one run)",
          num(st.min),
          num(st.max),
          st.n,
          st.n == 1 and "" or "s",
          (st.runs and st.runs > st.n) and string.format(" (%d without a usable score)", st.runs - st.n) or ""
        )
      )
    else
      add("No seed run gave a usable score.")
    end
    add("")
  end
  return table.concat(o, "\n") .. "\n"
end

-- Put the section into text: replace an earlier verdict (above "## Results"), else before "## Results",
-- else before the first "## " heading, else at the end.
function M.insert(text, section_md)
  text = text or ""
  local function at_heading(h, from)
    local s = from or 1
    while true do
      local i = text:find(h, s, true)
      if not i then return nil end
      if i == 1 or text:sub(i - 1, i - 1) == "\n" then
        local after = text:sub(i + #h, i + #h)
        if after == "\n" or after == "" then return i end
      end
      s = i + 1
    end
  end
  -- the verdict sits above the results: a "## Verdict" in the narrative below them is the LLM's own
  local results = at_heading("## Results")
  local old = at_heading(M.HEADING)
  if old and results and old > results then old = nil end
  if old then
    local j = text:find("\n## ", old + #M.HEADING, true)
    if j then return text:sub(1, old - 1) .. section_md .. text:sub(j + 1) end
    return text:sub(1, old - 1) .. section_md
  end
  local at = results
  if not at then
    local j = text:find("\n## ", 1, true)
    at = j and j + 1
  end
  if at then return text:sub(1, at - 1) .. section_md .. text:sub(at) end
  if text ~= "" and text:sub(-1) ~= "\n" then text = text .. "\n" end
  return text .. (text ~= "" and "\n" or "") .. section_md
end

-- Write the verdict into <trial>/experiment_report.md (a report that does not exist yet is started).
function M.write(trial, detail)
  local rp = path.join(trial, "experiment_report.md")
  local text = "# Experiment report\n"
  if fs.exists(rp) then
    local err
    text, err = fs.read(rp)
    if not text then return nil, err end
  end
  local ok, err = fs.write(rp, M.insert(text, M.section(detail)))
  if not ok then return nil, err end
  return true
end

return M
