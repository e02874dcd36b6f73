---@meta log
-- Type stubs for the native `log` module (`local log = require("log")`), for lua-language-server.
-- The real module is built into cellsci; this file only describes it. Requiring it (as `meta.log`)
-- returns a table of empty functions and never replaces the real module.

---Messages for the person running cellsci (stderr, by level, respecting `-q` / `-v`), plain stdout
---event lines other tools parse (`log.line`), and the trial's event log (`log.event`). Messages at
---info and above are also appended to the event log when one is set. Never pass the API key to any of
---these. The message functions join their arguments with spaces after `tostring`, like `print`.
---@class cellsci.log
local log = {}

---A debug message on stderr, prefixed `debug: <file>:<line>: `; shown only with `-v`; not written to
---the event log.
---@param ... any
function log.debug(...) end

---An informational message on stderr (hidden with `-q`); also a `log` event (level `info`).
---@param ... any
function log.info(...) end

---A warning on stderr, prefixed `warning: ` (hidden with `-q`); also a `log` event (level `warn`).
---@param ... any
function log.warn(...) end

---An error message on stderr, prefixed `error: ` (shown even with `-q`); also a `log` event (level
---`error`).
---@param ... any
function log.error(...) end

---Print one plain line to stdout at once (e.g. `ITERATION 1/3`, `[CHECK] ...`, `[FIX] ...`), whatever
---the verbosity. Every stdout and stderr line is guarded, wherever it comes from: line breaks (U+2028
---and U+2029 included) and control characters are escaped (`\n`, `\u2028`, `\x1b`), the line is clipped
---to 4000 characters, and a runner marker (`Success threshold met` and the other success phrases,
---`[ARCHIVE]`, `Saved run to:`, `[CHECK]`, `ITERATION i/n`) can only be the line's own prefix: later in
---the line it is neutralized, and a `[CHECK]` line keeps only its last `<metric>: <number>`. A stderr
---line carries no marker at all. What was neutralized is recorded in the event log (`neutralized`).
---@param ... any
function log.line(...) end

---@class cellsci.log.QuoteOpts
---@field what? string What the value is (`"cell id"`, `"exception"`), for the event log. Default: `"value"`.
---@field max? integer Characters kept (head and tail around `…[N characters cut]…`). Default: `300`.
---@field events? cellsci.log.Sink Where a neutralization is recorded. Default: the current event log.

---A value from a notebook or the LLM (a cell id or name, an exception message, a model name from
---metrics.json, reply text), made safe to interpolate into a line: `tostring`, the API key masked,
---escaped and clipped as a line is, and every runner phrase neutralized with a visible change:
---`Success threshold met` -> `Success threshold [met]`, `[ARCHIVE]` (any `[TAG]`) -> `(ARCHIVE)`,
---`Traceback` -> `Trace back`, `Exception:` -> `Exception[:]`, `ITERATION 2/3` -> `ITERATION 2 of 3`,
---`Score:` -> `Score[:]` (a `<name>: <number>` stays: in a `[CHECK]` line the guard keeps only the
---last one, the score). Returns the text and, when something changed,
---the list of changes (recorded in the event log as a `neutralized` event when a phrase was neutralized).
---Use it on every untrusted fragment: `ctx:line("[CHECK] " .. ctx:quote(winner, "winner") .. " | ...")`.
---@param v any
---@param opts? cellsci.log.QuoteOpts
---@return string text
---@return string[]|nil changes
function log.quote(v, opts) end

---Append `{"ts": ..., "kind": kind, ...fields}` as one JSON line to the event log, when one is set
---(else nothing happens). A non-table `fields` raises; `fields` that encode to a JSON array are put
---under `data`. Raises when `kind` is not a string or `fields` cannot be encoded.
---@param kind string
---@param fields? table Default: `{}`.
function log.event(kind, fields) end

---Where `log.event` (and info/warn/error messages) append: a JSON-lines file, made absolute; its
---parent folders are created (failing raises). `nil` or `""` stops event logging.
---@param path string|nil
function log.set_event_file(path) end

---The current event log path (absolute), or nil when none is set.
---@return string|nil path
function log.event_file() end

---A trial's own event log: each parallel branch hands its sink to its steps (`llm.chat{events = sink}`,
---`autofix.fix{events = sink}`), so their exchanges never land in another trial. Parent folders are created.
---@param path string the events.jsonl file
---@return cellsci.log.Sink
function log.sink(path) end

---@class cellsci.log.Sink
local Sink = {}
---Append `{"ts", "kind", ...fields}`.
---@param kind string
---@param fields? table
function Sink:event(kind, fields) end
---@return string|nil path
function Sink:path() end
---The trial folder was renamed (archived): log to the same file there.
---@param path string
function Sink:move(path) end
---A stdout line, as `log.line` (one argument), what the guard neutralized recorded in this log.
---@param text string
function Sink:line(text) end
---A stderr message at `level` (`"debug"`, `"info"`, `"warn"`, `"error"`), as `log.<level>` but without
---its `log` event; what the guard neutralized recorded in this log.
---@param level string
---@param text string
function Sink:message(level, text) end
---`log.quote(v, {what = what, events = sink})`.
---@param v any
---@param what? string
---@return string text
---@return string[]|nil changes
function Sink:quote(v, what) end
---Tokens and LLM time of the calls that logged here.
---@return {prompt_tokens: integer, completion_tokens: integer, total_tokens: integer, calls: integer, latency: number}
function Sink:usage() end

---@class cellsci.log.ProgressOpts
---@field total? integer Steps in all. Default: `0`.
---@field label? string Shown before `pos/total`. Default: `""`.

---A progress bar on stderr (hidden when stderr is not a terminal, or with `-q`).
---@class cellsci.log.Progress
local Progress = {}
---@param pos integer
---@param msg? string
function Progress:set(pos, msg) end
---@param n? integer Default: `1`.
function Progress:inc(n) end
---@param msg string
function Progress:message(msg) end
function Progress:finish() end

---A progress bar for long work: `label pos/total [elapsed] bar message`.
---@param opts cellsci.log.ProgressOpts
---@return cellsci.log.Progress
function log.progress(opts) end

return log
