---@meta env
-- Type stubs for the native `env` module (`local env = require("env")`), for lua-language-server.
-- The real module is built into cellsci; this file only describes it. Requiring it (as `meta.env`)
-- returns a table of empty functions and never replaces the real module.

---Environment variables of the cellsci process. `env.set` changes cellsci's own environment, which
---every child process started afterwards (kernels, tools) inherits.
---@class cellsci.env
local env = {}

---The value of an environment variable, or `default` (nil when not given) when it is not set.
---Raises when `name` is not a string, is empty, or contains `=` or NUL.
---@generic T
---@param name string
---@param default? T Returned when the variable is not set. Default: nil.
---@return string|T value
function env.get(name, default) end

---Set an environment variable (a number is written as its text), or remove it with `nil`.
---Raises on an invalid name, a value that is not a string/number/nil, or a value containing NUL.
---@param name string
---@param value string|number|nil
function env.set(name, value) end

---Every environment variable, as `{NAME = value}`.
---@return table<string, string> vars
function env.all() end

return env
