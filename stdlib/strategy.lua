-- Strategy synthesis (--use-idea): turn the phase-1 ideas into research_strategy.md.
-- When the LLM fails, the strategy is written from the ideas themselves, so generation can still go on.
local llm = require("llm")
local log = require("log")

local M = {}

-- The ideas as Markdown (also the fallback strategy).
function M.ideas_markdown(ideas)
  local out = {}
  for i, idea in ipairs(ideas or {}) do
    table.insert(out, string.format("### Idea %d: %s\n\n%s", i, idea.title or "(untitled)", idea.description or ""))
    if idea.reasoning then table.insert(out, "Reasoning: " .. idea.reasoning) end
    if idea.expected_impact then table.insert(out, "Expected impact: " .. idea.expected_impact) end
  end
  return table.concat(out, "\n\n")
end

-- synthesize{ideas=, system=, llm={...}} -> markdown, info
function M.synthesize(t)
  local ideas = t.ideas or {}
  if #ideas == 0 then
    return "# Research Strategy\n\nNo phase-1 ideas were available: the design is freestyle, guided only by the "
      .. "technical specification.\n",
      { source = "freestyle" }
  end
  local listing = M.ideas_markdown(ideas)
  local opts = {
    messages = {
      { role = "system", content = t.system },
      { role = "user", content = "Research ideas from phase 1:\n\n" .. listing },
    },
  }
  for k, v in pairs(t.llm or {}) do
    opts[k] = v
  end
  local resp, err = llm.chat(opts)
  if resp and resp.text and resp.text:match("%S") then
    local body = resp.text:gsub("^%s*<think>.-</think>%s*", "")
    return "# Research Strategy\n\n" .. body .. "\n\n## Ideas\n\n" .. listing .. "\n", { source = "llm" }
  end
  log.warn(
    "[STRATEGY] synthesis failed ("
      .. (log.quote(err, { what = "strategy error", events = t.llm and t.llm.events }))
      .. "); using the ideas as the strategy"
  )
  return "# Research Strategy\n\n(The strategy could not be synthesized: "
    .. tostring(err and err.kind or "no reply")
    .. ". The ideas are used as they are.)\n\n## Ideas\n\n"
    .. listing
    .. "\n",
    { source = "ideas", error = tostring(err) }
end

return M
