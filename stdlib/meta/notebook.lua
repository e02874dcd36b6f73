---@meta notebook
-- Type stubs for the native `notebook` module (`local notebook = require("notebook")`), for
-- lua-language-server. The real module is built into cellsci; this file only describes it. Requiring
-- it (as `meta.notebook`) returns a table of empty functions and never replaces the real module.

---Jupyter notebooks (nbformat 4.0-4.5) as handles (`nb`) with 1-based cell indices. `nb:cell(i)`
---is a read-only view (assigning to it raises); changes go through `nb:set_source`, `nb:set_outputs`;
---`nb.metadata` is a live view (`nb.metadata.x = y` changes the notebook).
---Reading a missing or invalid file returns `nil, err`; a bad index or a malformed cell raises.
---Members a file already had are written back unchanged (a Jupyter-written notebook round-trips byte
---for byte).
---@class cellsci.notebook
local notebook = {}

---@alias cellsci.notebook.CellType "code"|"markdown"|"raw"

---A cell as `nb:cell(i)` returns it: sources and output texts joined into single strings. Members the
---cell does not have (e.g. `outputs` of a markdown cell, `id` before nbformat 4.5, a null
---`execution_count`) are absent.
---@class cellsci.notebook.Cell
---@field cell_type cellsci.notebook.CellType
---@field id? string
---@field source string
---@field metadata table
---@field outputs? table[] Code cells: nbformat outputs.
---@field execution_count? integer Code cells that ran.
---@field attachments? table Markdown / raw cells.
---@field [string] any Other members the file has.

---A new cell for `nb:push` / `nb:insert`. A plain string is a code cell with that source. Any other
---key raises.
---@class cellsci.notebook.NewCell
---@field cell_type? cellsci.notebook.CellType Default: `"code"`.
---@field source? string|string[] Default: `""`.
---@field metadata? table Default: `{}`.
---@field outputs? table[] Code cells only. Default: `{}`.
---@field execution_count? integer Code cells only. Default: none (null).
---@field id? string 1-64 letters, digits, `-` or `_`, unique in the notebook; only kept in nbformat 4.5+. Default: a fresh 8-character id (4.5+).
---@field attachments? table Markdown / raw cells only. Default: none.

---What `nb:set_outputs` takes: a `k:execute` result, or just `{outputs = {...}}`.
---@class cellsci.notebook.Outputs
---@field outputs? table[] nbformat outputs. Default: `{}`.
---@field execution_count? integer Default: none (null).
---@field timing? table<string, string> Saved as the cell's `metadata.execution`. Default: none (left as it was).

---A notebook in memory (a handle; `#nb` is its number of cells; `tostring(nb)` is
---`"notebook (<n> cells, nbformat 4.<minor>)"`).
---@class cellsci.notebook.Notebook
---@field metadata table A live view of the notebook's metadata: `nb.metadata.x.y = 1` changes the notebook, and assigning a table replaces it. Assigning nil or `{}` clears it; a non-table raises.
---@operator len: integer
local Notebook = {}

---An empty nbformat 4.5 notebook with python3 kernelspec metadata.
---@return cellsci.notebook.Notebook nb
function notebook.new() end

---@alias cellsci.notebook.ErrorKind
---| "not_found" # no file at the path
---| "invalid"   # not JSON, not an nbformat 4 notebook, unreadable
---| "io"        # nb:write failed

---The error of a notebook call.
---@class cellsci.notebook.Error: cellsci.Error
---@field kind cellsci.notebook.ErrorKind

---Read an `.ipynb` file.
---@param path string
---@return cellsci.notebook.Notebook|nil nb
---@return cellsci.notebook.Error|nil err `kind = "not_found"` or `"invalid"`.
function notebook.read(path) end

---A notebook from an nbformat document held in a Lua table (e.g. from `json.decode` or
---`nb:to_table()`); `cells = {}` means no cells. Raises when it is not a valid notebook.
---@param t table
---@return cellsci.notebook.Notebook nb
function notebook.from_table(t) end

---The number of cells (same as `#nb`).
---@return integer
function Notebook:len() end

---A copy of cell `i` (1-based), text joined. Raises when `i` is out of range.
---@param i integer
---@return cellsci.notebook.Cell
function Notebook:cell(i) end

---Append a cell. Raises on a malformed cell (unknown field, bad type, bad or duplicate id).
---@param cell string|cellsci.notebook.NewCell A source string (a code cell) or a cell table.
---@return integer i The new cell's index.
function Notebook:push(cell) end

---Insert a cell before cell `i` (`i = nb:len() + 1` appends). Raises on a bad index or cell.
---@param i integer
---@param cell string|cellsci.notebook.NewCell
function Notebook:insert(i, cell) end

---Remove cell `i` and return it as stored (sources as lists of lines). Raises on a bad index.
---@param i integer
---@return table cell
function Notebook:remove(i) end

---Replace cell `i`'s source. Raises on a bad index.
---@param i integer
---@param source string
function Notebook:set_source(i, source) end

---Store an execution result in code cell `i`: outputs, execution count, and timing as
---`metadata.execution`. Raises on a bad index, a non-code cell or malformed outputs.
---@param i integer
---@param result cellsci.kernel.Result|cellsci.notebook.Outputs
function Notebook:set_outputs(i, result) end

---Clear every code cell's outputs, execution count and timing.
function Notebook:clear_outputs() end

---The whole notebook as an nbformat table (sources as stored: lists of lines).
---@return table
function Notebook:to_table() end

---Write the notebook as `.ipynb`, atomically (a temp file in the same folder, then rename).
---@param path string
---@return true|nil ok
---@return cellsci.notebook.Error|nil err `kind = "io"`.
function Notebook:write(path) end

return notebook
