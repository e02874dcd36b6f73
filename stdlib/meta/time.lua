---@meta time
-- Type stubs for the native `time` module (`local time = require("time")`), for lua-language-server.
-- The real module is built into cellsci; this file only describes it. Requiring it (as `meta.time`)
-- returns a table of empty functions and never replaces the real module.

---Wall clock, a monotonic clock for durations, and a sleep that ends early on Ctrl-C.
---Functions taking `t` use the current time when it is nil; `t` is seconds since 1970 (as `time.now`
---returns) and an out-of-range `t` raises. Text is in local time.
---@class cellsci.time
local time = {}

---Seconds since 1970-01-01 UTC, with a fraction.
---@return number seconds
function time.now() end

---Seconds since cellsci started, never going backwards: use differences for durations.
---@return number seconds
function time.monotonic() end

---A file-name-safe local timestamp like `"20261126_153000"` (`%Y%m%d_%H%M%S`), as in
---`prompt_run_<stamp>`.
---@param t? number Seconds since 1970. Default: now.
---@return string stamp
function time.stamp(t) end

---An RFC 3339 local time with seconds and offset, like `"2026-11-26T15:30:00+01:00"`.
---@param t? number Seconds since 1970. Default: now.
---@return string iso
function time.iso(t) end

---Format a local time with strftime-style directives (chrono: `%Y-%m-%d %H:%M:%S`, `%a`, `%j`, ...).
---Raises on a bad format.
---@param fmt string
---@param t? number Seconds since 1970. Default: now.
---@return string text
function time.format(fmt, t) end

---Wait `seconds` (a fraction is fine). Ctrl-C / SIGTERM ends the wait early with `nil, err`.
---Raises when `seconds` is not a finite number >= 0.
---@param seconds number
---@return true|nil ok
---@return cellsci.Error|nil err `{kind = "interrupted"}` when Ctrl-C / SIGTERM ended the wait (or came before it).
function time.sleep(seconds) end

return time
