---@meta host
-- Type stubs for the native `host` module (`local host = require("host")`), for lua-language-server.
-- The real module is built into cellsci; this file only describes it. Requiring it (as `meta.host`)
-- returns a table of empty functions and never replaces the real module.

---The config as a table, `reload()` (the safe point where edited scripts are swapped in), and facts
---about the running cellsci.
---@class cellsci.host
local host = {}

---The loaded config file (e.g. `generate_execution_config.json`) after `${name}` expansion, with
---relative paths made absolute and defaults filled in; unknown sections and keys are kept as written.
---The API key is never in it. `{}` when cellsci runs without a config. Only the sections the host reads
---are listed here; index others freely.
---@class cellsci.Config
---@field dataset_name? string
---@field paths? cellsci.config.Paths
---@field llm? cellsci.config.Llm
---@field experiment? cellsci.config.Experiment
---@field prompt_branch? cellsci.config.PromptBranch
---@field exec? cellsci.config.Exec
---@field [string] any

---The config's `paths` section (paths absolute).
---@class cellsci.config.Paths
---@field baseline_source_dir? string
---@field stage1_analysis_dir? string
---@field design_execution_root? string
---@field literature_dir? string
---@field [string] any

---The config's `llm` section (never the `api_key`). See `llm.settings()` for the effective values.
---@class cellsci.config.Llm
---@field model? string Default: `"gpt-4o-mini"`.
---@field base_url? string Default: `"https://api.openai.com/v1"`.
---@field max_tokens? integer Default: none.
---@field temperature? number Default: none.
---@field timeout? number Seconds. Default: `600`.
---@field [string] any Other keys (connect_timeout, max_concurrency, stream, max_total_tokens, max_calls, record, replay, retry) as written.

---The config's `experiment` section.
---@class cellsci.config.Experiment
---@field primary_metric? string Default: `"PCC"`.
---@field max_iterations? integer Default: `3`.
---@field success_threshold? number Default: `0`.
---@field direction? "higher"|"lower"|string Default: none (inferred from the metric name).
---@field criterion? "threshold"|"significant"|string Default: `"threshold"` (stdlib/success.lua: `M.criteria`).
---@field alpha? number Significance level of the `"significant"` criterion. Default: `0.05`.
---@field [string] any

---The config's `prompt_branch` section.
---@class cellsci.config.PromptBranch
---@field prompt_file? string
---@field idea_file? string
---@field save_root? string
---@field temperature? number
---@field max_tokens? integer
---@field strict_json_only? boolean Default: `true`.
---@field json_retries? integer Default: `2`.
---@field [string] any

---The config's `exec` section.
---@class cellsci.config.Exec
---@field timeout_seconds? number Default per-cell timeout of `k:execute`. Default: `3600`.
---@field max_fix_rounds? integer Default: `3`.
---@field enable_llm_autofix? boolean Default: `true`.
---@field enable_hypergraph_viz? boolean Default: `true`.
---@field viz_format? string Default: `"mermaid"`.
---@field cuda_device_id? integer Default: `0`.
---@field kernel_name? string Default: `"python3"`.
---@field kernel_packages? string[] Default: `{}`.
---@field python? string An interpreter with ipykernel to use instead of a kernelspec.
---@field [string] any

---The loaded config (`{}` without one). A copy made when `host` is first required: changing it
---changes nothing in the host.
---@type cellsci.Config
host.config = {}

---The config file's absolute path, or nil when running without a config.
---@type string|nil
host.config_file = nil

---cellsci's version, e.g. `"0.1.0"`.
---@type string
host.version = ""

---The verbosity: `-1` quiet (`-q`), `0` normal, `1` and more verbose (`-v`, `-vv`).
---@type integer
host.verbosity = 0

---A module edit that did not load at `host.reload()` (the previous version was kept).
---@class cellsci.host.ReloadError
---@field module string The module name, e.g. `"retry"`.
---@field file string The file as shown in messages, e.g. `"stdlib/retry.lua"`.
---@field message string The error with its `file:line`.

---The safe point: every `require`d Lua module whose file changed is loaded again, and swapped into
---`package.loaded` only if it loads cleanly and returns a table; otherwise the previous version is
---kept and the error printed. A `local m = require("m")` captured earlier keeps the old table: call
---`require` again after this to get the new one. Each reload (and each failed one) is a `reload` event
---in `opts.events` (the trial whose step reached the safe point: `host.reload{events = ctx.events}`),
---else in the current event log (`log.set_event_file`).
---@param opts? {events?: cellsci.log.Sink}
---@return string[] reloaded The names of the modules swapped in.
---@return cellsci.host.ReloadError[] errors The edits that did not load.
function host.reload(opts) end

---This process's id.
---@return integer pid
function host.pid() end

---`${name}` in `text` replaced from `vars`, else the config's top-level strings and numbers; unknown
---names stay as written.
---@param text string
---@param vars? table<string, string|number>
---@return string
function host.expand(text, vars) end

---Whether Ctrl-C / SIGTERM was received (long loops should check it and stop).
---@return boolean
function host.interrupted() end

---The copy of a bundled file built into cellsci, such as `"stdlib/success.lua"`, always (never a
---user's file of the same name: a shadowing `success.lua` that starts from the bundled module gets
---the bundled module). Raises when `rel` is absolute or contains `..`.
---@param rel string
---@return string|nil text The file's contents.
---@return string|cellsci.Error where On success `"<bundled>/<rel>"`; on failure the error (`kind = "not_found"`).
function host.bundled(rel) end

---The file a user's folders give for `rel` (the script's folder, `--scripts DIR`, the current folder),
---else the bundled copy: how the pipeline finds `prompts/<name>.yaml`. Raises when `rel` is absolute or
---contains `..`.
---@param rel string
---@return string|nil text The file's contents.
---@return string|cellsci.Error where On success, where it came from: a path, or `"<bundled>/<rel>"`; on failure the error (`kind = "not_found"` when no such file exists; an `fs` kind when a file exists but cannot be read).
function host.lookup(rel) end

---The relative paths of every file built into cellsci (`scripts/...`, `stdlib/...`, `prompts/...`).
---@return string[] paths
function host.bundled_files() end

return host
