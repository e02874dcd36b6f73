-- retry.lua: the default retry policy of llm.chat.
--
-- llm.chat calls `policy:decide(info)` after every failed attempt, whatever its kind (the kinds are
-- in `per_kind` below; the ones that would fail the same way again are listed with 0 retries).
-- Whatever a policy says, no attempt starts once the run is interrupted (Ctrl-C).
-- info = {kind, status, attempt, elapsed, retry_after, message, model, counts = {kind = failures so far}};
-- retry_after is the server's Retry-After, or the delay its error body names (Gemini's retryDelay,
-- "try again in 20s"). It returns `true, wait_seconds` to retry, or
-- `false, 0, reason` to give up (a table {retry=, wait=, reason=} works too).
--
-- This module is itself a policy with the defaults below; `retry.new{...}` makes one with other
-- settings (`llm.chat{..., retry = retry.new{deadline = 60}}`), and a config's `llm.retry` table is
-- passed to `new` for calls that give none. Copy this file next to your script (or into --scripts DIR)
-- to change the policy; it is reloaded before every decision. No side effects at the top level.

local M = {}
M.__index = M

M.defaults = {
  base = 1.0, -- first backoff wait, seconds
  factor = 2.0, -- each further attempt waits factor times longer
  max_wait = 60, -- cap on one backoff wait, seconds
  jitter = 0.25, -- waits vary by +-25% so parallel branches do not retry in step
  max_retry_after = 300, -- a Retry-After longer than this gives up instead of waiting
  deadline = 900, -- never start an attempt later than this many seconds after the first
  max_attempts = 12, -- attempts in all
  per_kind = { -- retries allowed per kind of failure (a kind not listed is not retried either)
    rate_limited = 10,
    server = 6,
    timeout = 4,
    connect = 6,
    reset = 6,
    bad_body = 3,
    empty = 2,
    truncated = 0, -- the same request would be cut off again: raise max_tokens instead
    -- Never retried: trying again cannot pass.
    client = 0, -- another 4xx: a bad model name, a rejected key, an exhausted quota
    content_filter = 0, -- the provider's content filter refused the prompt or cut the reply: the same
    -- request is refused again (a policy of yours may retry a cut reply once)
    budget = 0, -- llm.max_total_tokens / llm.max_calls used up
    replay_miss = 0, -- replaying a cassette that has no such request
    interrupted = 0, -- Ctrl-C / SIGTERM
    config = 0, -- a missing key, an unusable base_url, an unreadable cassette
  },
}

setmetatable(M, { __index = M.defaults })

--- A policy with some settings changed: retry.new{deadline = 60, per_kind = {server = 2}}.
function M.new(opts)
  opts = opts or {}
  local p = setmetatable({}, M)
  for k, v in pairs(M.defaults) do
    if k ~= "per_kind" then p[k] = v end
  end
  local per_kind = {}
  for k, v in pairs(M.defaults.per_kind) do
    per_kind[k] = v
  end
  for k, v in pairs(opts) do
    if k == "per_kind" then
      for kind, n in pairs(v) do
        per_kind[kind] = n
      end
    elseif M.defaults[k] == nil then
      error("retry.new: unknown option '" .. tostring(k) .. "'", 2)
    else
      p[k] = v
    end
  end
  p.per_kind = per_kind
  return p
end

--- A policy that never retries.
M.never = setmetatable({ decide = function() return false, 0, "retries are off" end }, M)

local function fmt(x) return string.format("%.1fs", x) end

function M:decide(info)
  local allowed = self.per_kind[info.kind]
  local failures = (info.counts and info.counts[info.kind]) or 1
  if not allowed or allowed <= 0 then return false, 0, info.kind .. " is not retried by this policy" end
  if failures > allowed then
    return false, 0, string.format("%d %s failures, the policy allows %d retries", failures, info.kind, allowed)
  end
  if info.attempt >= self.max_attempts then
    return false, 0, string.format("max_attempts %d reached", self.max_attempts)
  end
  local wait
  if info.retry_after then
    if info.retry_after > self.max_retry_after then
      return false,
        0,
        string.format(
          "the server asks to wait %s, more than max_retry_after %s",
          fmt(info.retry_after),
          fmt(self.max_retry_after)
        )
    end
    wait = info.retry_after
  else
    wait = math.min(self.max_wait, self.base * self.factor ^ (info.attempt - 1))
    wait = wait * (1 + self.jitter * (2 * math.random() - 1))
  end
  if info.elapsed + wait > self.deadline then
    return false,
      0,
      string.format(
        "the deadline of %s would pass: %s spent, next wait %s",
        fmt(self.deadline),
        fmt(info.elapsed),
        fmt(wait)
      )
  end
  return true, wait
end

return M
