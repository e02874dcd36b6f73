---@meta json
-- Type stubs for the native `json` module (`local json = require("json")`), for lua-language-server.
-- The real module is built into cellsci; this file only describes it. Requiring it (as `meta.json`)
-- returns a table of empty functions and never replaces the real module.

---JSON decode/encode. `decode` accepts NaN/Infinity/-Infinity as Python writes them and a leading
---BOM; `encode` sorts object keys so output is stable across runs.
---@class cellsci.json
local json = {}

---Decode JSON text. Objects become tables (members that are `null` are left out, so `t.x == nil`),
---arrays become tables marked as arrays (they encode back as `[]` even when empty), `null` inside an
---array (or at the top level) becomes `json.null`, and Python's `NaN`/`Infinity`/`-Infinity` become
---floats.
---Raises when `text` is not a string.
---@param text string
---@return cellsci.JsonValue|nil value The decoded value, or nil on a parse error.
---@return cellsci.ParseError|nil err `{kind = "parse", message, line, column}` on invalid JSON.
function json.decode(text) end

---Options of `json.encode`.
---@class cellsci.json.EncodeOpts
---@field pretty? boolean Indent the output (2 spaces, one member per line). Default: `false` (compact).

---Encode a Lua value as JSON text. Object keys are sorted (recursively). A table is an array when it
---was marked with `json.array`, came from a decoder, or has exactly the keys 1..n (n > 0); an empty
---plain table is an object `{}`. `nil` and `json.null` become `null`; NaN/Infinity are written as
---Python writes them (`NaN`, `Infinity`, `-Infinity`).
---Raises (naming the key path) on a function, coroutine or userdata, on a table nested more than 200
---deep (a cycle), or on an unknown option.
---@param value any
---@param opts? cellsci.json.EncodeOpts
---@return string text
function json.encode(value, opts) end

---Mark a table as an array so it encodes as `[...]`, and an empty one as `[]` instead of `{}`.
---Returns the same table (a new empty one when none is given).
---@generic T: table
---@param t? T
---@return T
function json.array(t) end

---The JSON `null` sentinel (a light userdata). Put it in an array to keep a position; compare with
---`v == json.null`. Note that it is truthy.
---@type cellsci.Null
json.null = nil

return json
