---@meta fs
-- Type stubs for the native `fs` module (`local fs = require("fs")`), for lua-language-server.
-- The real module is built into cellsci; this file only describes it. Requiring it (as `meta.fs`)
-- returns a table of empty functions and never replaces the real module.

---Files for scripts. Writes are atomic (a temp file in the same folder, then rename), so a reader never
---sees half a file. Expected failures return `nil, err` (`cellsci.FsError`: `err.kind` one of
---`not_found`, `permission`, `exists`, `not_a_dir`, `not_empty`, `io`; `err.path`); a wrong argument
---(not a string, an empty path) raises. The calls are synchronous, so a module may use them while it
---is being `require`d.
---@class cellsci.fs
local fs = {}

---Read a whole file (bytes as they are).
---@param path string
---@return string|nil contents
---@return cellsci.FsError|nil err
function fs.read(path) end

---Write a file atomically, replacing it; missing parent folders are created and an existing file's
---permissions are kept. A number is written as its text; a table raises (use `json.encode`).
---@param path string
---@param contents string|number
---@return true|nil ok
---@return cellsci.FsError|nil err
function fs.write(path, contents) end

---Append to a file, creating it and its parent folders when missing (not atomic).
---@param path string
---@param contents string|number
---@return true|nil ok
---@return cellsci.FsError|nil err
function fs.append(path, contents) end

---Whether something exists at `path` (a broken symlink counts as missing).
---@param path string
---@return boolean
function fs.exists(path) end

---Whether `path` is a folder (following symlinks).
---@param path string
---@return boolean
function fs.is_dir(path) end

---Whether `path` is a regular file (following symlinks).
---@param path string
---@return boolean
function fs.is_file(path) end

---The names (not paths) in a folder, sorted; hidden entries included.
---@param dir string
---@return string[]|nil names
---@return cellsci.FsError|nil err
function fs.list(dir) end

---Create a folder with its parents; fine when it already exists.
---@param path string
---@return true|nil ok
---@return cellsci.FsError|nil err
function fs.mkdir(path) end

---Options of `fs.remove`.
---@class cellsci.fs.RemoveOpts
---@field recursive? boolean Remove a folder with its contents. Default: `false` (only an empty folder; else `kind = "not_empty"`).

---Remove a file, a symlink or a folder. A missing path is not an error (returns true).
---Raises on an unknown option.
---@param path string
---@param opts? cellsci.fs.RemoveOpts
---@return true|nil ok
---@return cellsci.FsError|nil err `kind = "not_empty"` for a folder with contents without `recursive`.
function fs.remove(path, opts) end

---Copy a file, or a folder with its contents, to `dst` (each file written atomically, permissions
---copied, parent folders created).
---@param src string
---@param dst string
---@return true|nil ok
---@return cellsci.FsError|nil err
function fs.copy(src, dst) end

---Move `src` to `dst`, creating `dst`'s parent folders; works across file systems (copy, then remove).
---@param src string
---@param dst string
---@return true|nil ok
---@return cellsci.FsError|nil err
function fs.rename(src, dst) end

---What `fs.stat` returns.
---@class cellsci.fs.Stat
---@field size integer Bytes.
---@field mtime number Last modification, seconds since 1970 (with a fraction).
---@field is_dir boolean
---@field is_file boolean

---Size, modification time and type of `path` (following symlinks).
---@param path string
---@return cellsci.fs.Stat|nil stat
---@return cellsci.FsError|nil err
function fs.stat(path) end

---Existing paths that match a glob pattern, sorted, written the way the pattern is (relative stays
---relative). `*`, `?` and `[abc]`/`[!abc]` match within one name; `**` matches any number of folders.
---Hidden names match only when the pattern part starts with `.`; `**` does not enter hidden
---or symlinked folders.
---No match gives an empty list. Raises on a bad pattern or a non-string.
---@param pattern string
---@return string[] paths
function fs.glob(pattern) end

return fs
