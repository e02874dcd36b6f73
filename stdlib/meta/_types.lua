---@meta _
-- Types shared by the cellsci module stubs in this folder (lua-language-server annotations only).
-- `---@meta _` means this file is never the target of a `require`; it only declares types. Running it
-- does nothing.

---The error of an expected failure: functions return `nil, err` with this table. `tostring(err)`
---gives `"<kind>: <message>"`. Some modules add fields (see the classes that extend this one).
---Misuse (a wrong argument type, an unknown option key) is not returned: it raises an error whose
---message starts with the calling script's `file:line`.
---@class cellsci.Error
---@field kind string What failed, for a script to branch on (each function lists its kinds).
---@field message string A readable description (never contains the API key).

---An error of a file operation (`fs.*`, `host.bundled`).
---@class cellsci.FsError: cellsci.Error
---@field kind cellsci.FsErrorKind
---@field path string The path the operation failed on.

---@alias cellsci.FsErrorKind
---| "not_found"  # the file or folder does not exist
---| "permission" # no permission
---| "exists"     # something is already there
---| "not_a_dir"  # a path component is not a folder
---| "not_empty"  # fs.remove of a folder with contents without {recursive = true}
---| "io"         # any other I/O error

---A parse error of `json.decode` / `yaml.decode`.
---@class cellsci.ParseError: cellsci.Error
---@field kind "parse"
---@field line integer 1-based line of the error (0 when unknown, YAML only).
---@field column integer 1-based column of the error (0 when unknown, YAML only).

---The "null" sentinel: `json.null` (a light userdata wrapping NULL). JSON `null` inside arrays and a
---top-level `null` decode to it; `null` object members are left out instead.
---@alias cellsci.Null lightuserdata

---A value as JSON / YAML decode it: nil-free tables (arrays and objects), strings, numbers, booleans
---and `json.null`.
---@alias cellsci.JsonValue table|string|number|boolean|cellsci.Null
