-- hosts.lua: which hosts of an Enterprise Gateway a kernel pool keeps away from, and for how long.
--
-- A pool given the gateway's hosts (kernel.pool{hosts = ...}, else the config's exec.gateway_hosts)
-- pins each start of a slot's kernel to one of them in turn (KERNEL_REMOTE_HOST) and records every
-- failed start with its host (an unpinned one with the host EG's message names). This policy reads
-- those failures before each kernel is taken from the pool (`observe`): a host that failed `failures`
-- launches within `window` seconds is avoided for `cooldown` seconds (pool:avoid), after which it gets
-- its chance again. Ctrl-C and configuration errors (a refused user or token, an unknown kernelspec)
-- say nothing about a host and are not counted.
--
-- The settings come from the config's exec.host_policy table when it has one. Copy this file next to
-- your script (or into --scripts DIR) to change the policy. No side effects at the top level.

local log = require("log")

local M = {}
M.__index = M

M.defaults = {
  failures = 2, -- failed launches on one host ...
  window = 300, -- ... within this many seconds ...
  cooldown = 120, -- ... keep new kernels away from it this long
}

-- Kinds that are not the host's fault.
local NOT_THE_HOST = { interrupted = true, unauthorized = true, no_such_kernel = true, auth = true, config = true }

-- The host a failed start was on (its pin, else the one Enterprise Gateway's message named).
function M.host_of(f)
  if type(f.host) == "string" and f.host ~= "" then return f.host end
end

-- A policy with some settings changed: hosts.new{failures = 1}.
function M.new(opts)
  local p = setmetatable({ seen = {}, avoided = {} }, M)
  for k, v in pairs(M.defaults) do
    p[k] = v
  end
  for k, v in pairs(opts or {}) do
    if M.defaults[k] == nil then error("hosts.new: unknown setting '" .. tostring(k) .. "'", 2) end
    if type(v) ~= "number" or v < 0 then error("hosts.new: " .. k .. " must be a number >= 0", 2) end
    p[k] = v
  end
  return p
end

-- Read the pool's failed starts since the last look; avoid the hosts that failed too often. Returns
-- the hosts newly avoided.
function M:observe(pool, now)
  if type(pool) ~= "userdata" or not pool.failures then return {} end
  now = now or require("time").monotonic()
  local newly = {}
  for _, f in ipairs(pool:failures()) do
    local h = M.host_of(f)
    if h and not NOT_THE_HOST[f.kind] then
      local times = self.seen[h] or {}
      times[#times + 1] = now
      local recent = {}
      for _, t in ipairs(times) do
        if now - t <= self.window then recent[#recent + 1] = t end
      end
      self.seen[h] = recent
      if #recent >= self.failures and not ((self.avoided[h] or 0) > now) then
        self.avoided[h] = now + self.cooldown
        self.seen[h] = {}
        pool:avoid(h, self.cooldown)
        newly[#newly + 1] = h
        log.warn(
          string.format(
            "[EXEC] the host %s failed %d kernel launches in %.0f s; new kernels avoid it for %.0f s",
            h,
            #recent,
            self.window,
            self.cooldown
          )
        )
      end
    end
  end
  return newly
end

-- The policy of a pool (one per pool, kept while the pool lives), settings from exec.host_policy.
local by_pool = setmetatable({}, { __mode = "k" })
function M.for_pool(pool)
  local p = by_pool[pool]
  if not p then
    local host = require("host")
    local ex = (host.config or {}).exec or {}
    p = M.new(type(ex.host_policy) == "table" and ex.host_policy or nil)
    by_pool[pool] = p
  end
  return p
end

return M
