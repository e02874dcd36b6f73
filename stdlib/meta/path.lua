---@meta path
-- Type stubs for the native `path` module (`local path = require("path")`), for lua-language-server.
-- The real module is built into cellsci; this file only describes it. Requiring it (as `meta.path`)
-- returns a table of empty functions and never replaces the real module.

---File path strings, computed without touching the disk (see `fs` for that). Every function raises
---when given a non-string.
---@class cellsci.path
local path = {}

---The path separator, `"/"`.
---@type string
path.sep = "/"

---Join parts with `/`. An absolute part restarts the path, as in Python (`join("a", "/b")` is `"/b"`).
---@param ... string
---@return string
function path.join(...) end

---The folder part: `dirname("a/b/c.txt")` is `"a/b"`; `"."` when there is none; `"/"` stays `"/"`.
---@param p string
---@return string
function path.dirname(p) end

---The last part: `basename("a/b/c.txt")` is `"c.txt"` (`""` for `"/"` or a path ending in `..`).
---@param p string
---@return string
function path.basename(p) end

---The extension without the dot: `ext("a/b.tar.gz")` is `"gz"`; `""` when there is none.
---@param p string
---@return string
function path.ext(p) end

---The last part without its extension: `stem("a/b.tar.gz")` is `"b.tar"`.
---@param p string
---@return string
function path.stem(p) end

---An absolute, normalized path (relative paths are taken from the current folder); `.` and `..` are
---removed lexically; symlinks are not resolved.
---@param p string
---@return string
function path.abs(p) end

---`p` without `.` and `..` parts, computed lexically (stays relative if it was).
---@param p string
---@return string
function path.normalize(p) end

---`p` relative to `base` (both made absolute first), e.g. `"../x/y"`; `"."` when they are the same.
---@param p string
---@param base? string Default: the current folder.
---@return string
function path.relative(p, base) end

---Whether `p` is absolute (starts with `/`).
---@param p string
---@return boolean
function path.is_abs(p) end

---The current folder (absolute).
---@return string
function path.cwd() end

return path
