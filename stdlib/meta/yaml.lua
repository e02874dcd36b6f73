---@meta yaml
-- Type stubs for the native `yaml` module (`local yaml = require("yaml")`), for lua-language-server.
-- The real module is built into cellsci; this file only describes it. Requiring it (as `meta.yaml`)
-- returns a table of empty functions and never replaces the real module.

---YAML decode/encode (serde_yaml_ng). Values convert as in `json`.
---@class cellsci.yaml
local yaml = {}

---Decode the first document of a YAML stream. Anchors and `<<` merges are applied, non-string keys
---become strings (`1` → `"1"`, `null` → `"null"`), `.nan`/`.inf` become floats, tags are dropped.
---Mappings become tables (null members left out), sequences become tables marked as arrays.
---An empty (or all-whitespace) text, and a document that is just `null`, give `json.null` (truthy),
---not nil.
---Raises when `text` is not a string.
---@param text string
---@return cellsci.JsonValue|nil value The decoded value, or nil on a parse error.
---@return cellsci.ParseError|nil err `{kind = "parse", message, line, column}` (line/column 0 when unknown).
function yaml.decode(text) end

---Encode a Lua value as YAML text, keys sorted (stable output); NaN/Infinity become `.nan`/`.inf`.
---Tables are arrays or mappings by the same rule as `json.encode`.
---Raises on a value that cannot be encoded (a function, userdata, a cycle).
---@param value any
---@return string text
function yaml.encode(value) end

return yaml
