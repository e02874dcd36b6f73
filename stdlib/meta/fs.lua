---@meta fs
-- Type stubs for the native `fs` module (`local fs = require("fs")`), for lua-language-server.
-- The real module is built into cellsci; this file only describes it. Requiring it (as `meta.fs`)
-- returns a table of empty functions and never replaces the real module.

---Files for scripts. Writes are atomic (a temp file in the same folder, then rename), so a reader never
---sees half a file. Expected failures return `nil, err` (`cellsci.FsError`: `err.kind` one of
---`not_found`, `permission`, `exists`, `not_a_dir`, `not_empty`, `link`, `not_a_file`, `too_large`, `io`;
---`err.path`); a wrong argument (not a string, an empty path) raises. Nothing writes through a symlink
---and `fs.walk` never follows one. The calls are synchronous, so a module may use them while it
---is being `require`d.
---@class cellsci.fs
local fs = {}

---Options of `fs.read`.
---@class cellsci.fs.ReadOpts
---@field max_bytes? integer Refuse a bigger file (`kind = "too_large"`) before reading it. Default: 268435456 (256 MiB).

---Read a whole regular file (bytes as they are). A FIFO, socket, device or folder fails at once with
---`kind = "not_a_file"` (it never blocks).
---@param path string
---@param opts? cellsci.fs.ReadOpts
---@return string|nil contents
---@return cellsci.FsError|nil err
function fs.read(path, opts) end

---Write a file atomically, replacing it; missing parent folders are created and an existing file's
---permissions are kept. A symlink at `path` is replaced by the file, never written through. A number is written as its text; a table raises (use `json.encode`).
---@param path string
---@param contents string|number
---@return true|nil ok
---@return cellsci.FsError|nil err
function fs.write(path, contents) end

---Append to a file, creating it and its parent folders when missing. The text is written whole or not
---at all (a full disk leaves the file as it was); a symlink at `path` fails with `kind = "link"`.
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

---Options of `fs.walk`.
---@class cellsci.fs.WalkOpts
---@field max_files? integer Entries listed; the rest are only counted in `truncated`. Default: 1000.
---@field max_depth? integer Folders deeper than this below `dir` are not entered (counted in `too_deep`). Default: 16.

---One entry of `fs.walk`.
---@class cellsci.fs.WalkEntry
---@field path string Relative to the walked folder, `/`-separated.
---@field size integer Bytes (of the link itself for a link).
---@field mtime number
---@field kind "file"|"link"|"other" `other`: a FIFO, socket or device.
---@field target? string What a link points at (not followed).

---What `fs.walk` returns.
---@class cellsci.fs.Walk
---@field files cellsci.fs.WalkEntry[]
---@field truncated integer Entries past `max_files`, counted but not listed.
---@field too_deep integer Folders not entered because of `max_depth`.
---@field unreadable integer Folders that could not be read.

---Everything under `dir` that is not a folder, depth first in name order, without following any symlink
---(links are listed as `kind = "link"`), bounded by `max_files` and `max_depth`. A `dir` that is itself a
---symlink fails with `kind = "link"`. Raises on an unknown option.
---@param dir string
---@param opts? cellsci.fs.WalkOpts
---@return cellsci.fs.Walk|nil walk
---@return cellsci.FsError|nil err
function fs.walk(dir, opts) end

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
---copied, parent folders created; symlinks copied as symlinks, not followed).
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

---A held lock (`fs.lock`).
---@class cellsci.fs.Lock
local Lock = {}

---Let the lock go (it also goes when the handle is collected or the process ends, however it ends).
function Lock:release() end

---Take an exclusive lock on `path` (created when missing; this process's id is written in it). Another
---process holding it gives `nil, err` with `err.kind == "locked"` and `err.holder`, its process id.
---@param path string
---@return cellsci.fs.Lock|nil lock
---@return cellsci.FsError|nil err
function fs.lock(path) end

---What `fs.stat` returns.
---@class cellsci.fs.Stat
---@field size integer Bytes.
---@field mtime number Last modification, seconds since 1970 (with a fraction).
---@field is_dir boolean
---@field is_file boolean
---@field is_link boolean Whether `path` itself is a symlink (whatever `follow` says).

---Options of `fs.stat`.
---@class cellsci.fs.StatOpts
---@field follow? boolean Describe a symlink's target (true) or the link itself (false). Default: `true`.

---Size, modification time and type of `path`.
---@param path string
---@param opts? cellsci.fs.StatOpts
---@return cellsci.fs.Stat|nil stat
---@return cellsci.FsError|nil err
function fs.stat(path, opts) end

---Existing paths that match a glob pattern, sorted, written the way the pattern is (relative stays
---relative). `*`, `?` and `[abc]`/`[!abc]` match within one name; `**` matches any number of folders.
---Hidden names match only when the pattern part starts with `.`; `**` does not enter hidden
---or symlinked folders.
---No match gives an empty list. Raises on a bad pattern or a non-string.
---@param pattern string
---@return string[] paths
function fs.glob(pattern) end

return fs
