---@meta llm
-- Type stubs for the native `llm` module (`local llm = require("llm")`), for lua-language-server.
-- The real module is built into cellsci; this file only describes it. Requiring it (as `meta.llm`)
-- returns a table of empty functions and never replaces the real module.

---An OpenAI-compatible chat client: timeouts on every wait, Ctrl-C ends every wait, failures are
---classified for a Lua retry policy, usage is accounted, budgets stop a run, exchanges can be recorded
---and replayed. The API key is never shown (masked in messages, events and `llm.settings()`).
---@class cellsci.llm
local llm = {}

---One chat message.
---@class cellsci.llm.Message
---@field role "system"|"user"|"assistant"|string
---@field content string|table Text, or the content parts a server accepts, sent as given.
---@field [string] any Other members (e.g. `name`) are sent as given.

---Options of `llm.chat`. Give `messages`, or `prompt` (with `system`), or both. Any other key raises.
---@class cellsci.llm.ChatOpts
---@field messages? cellsci.llm.Message[] The conversation. Default: none.
---@field prompt? string Appended as a `{role = "user"}` message. Default: none.
---@field system? string Prepended as a `{role = "system"}` message (raises if `messages` already starts with one). Default: none.
---@field model? string Default: the config's `llm.model` (`"gpt-4o-mini"`).
---@field temperature? number Not sent to a model that refused it (`stdlib/adapt.lua`). Default: the config's `llm.temperature` (none: the server's default).
---@field max_tokens? integer A positive integer (sent as `max_completion_tokens` to a model that refused `max_tokens`: `stdlib/adapt.lua`). Default: the config's `llm.max_tokens` (none: not sent).
---@field json? boolean Ask for a JSON object (`response_format = {type = "json_object"}`). Default: `false`.
---@field json_schema? {name?: string, schema: table, strict?: boolean, description?: string} Ask for JSON of this shape (`response_format = {type = "json_schema", json_schema = this}`; wins over `json`; a model that refuses it gets `json_object`: `stdlib/adapt.lua`). `name` defaults to `"reply"`. Default: none.
---@field timeout? number Seconds to wait for a reply (a non-streamed exchange lasts at most this; a whole stream at most the config's `llm.stream_timeout`, else 2 x this, or this when an idle timeout is set). Default: the config's `llm.timeout` (`600`).
---@field idle_timeout? number Streaming: seconds without a byte before the attempt is a timeout ("the stream stalled"). Default: the config's `llm.idle_timeout`, else 300 (or `timeout` when shorter).
---@field max_reply_bytes? integer The largest reply accepted (bytes, streamed or not): a bigger one fails as `truncated`; `0` accepts any size. Default: the config's `llm.max_reply_bytes`, else 8388608 (8 MiB).
---@field stream? boolean Stream the reply (shows tokens so far). Default: the config's `llm.stream`, else on when progress is shown (stderr is a terminal, not `-q`).
---@field retry? cellsci.llm.RetryPolicy|cellsci.llm.RetryFunction|boolean A policy table with `decide`, a function, `false` (one attempt), or `nil`/`true`: `require("retry")` (`retry.new(<config llm.retry>)` when the config has one). Default: `nil`.
---@field events? cellsci.log.Sink The trial event log this exchange (and its usage) belongs to: `log.sink(path)`, as a trial context's `ctx.events`. Default: the run's current event log (`log.set_event_file`).
---@field extra? table<string, any> More request fields sent as given, e.g. `{top_p = 0.9, seed = 1, stop = {"\n\n"}}`. Default: none.
---@field reasoning_effort? string|false Sent as `reasoning_effort` ("low", "medium", "high"...); `false` sends none. Default: `llm.reasoning_effort`.

---Token counts of one reply.
---@class cellsci.llm.TokenUsage
---@field prompt_tokens integer
---@field completion_tokens integer
---@field total_tokens integer
---@field completion_tokens_details? {reasoning_tokens: integer} When the endpoint reports reasoning tokens (part of `completion_tokens`).

---What a successful `llm.chat` returns.
---@class cellsci.llm.Reply
---@field text string The reply's content: the answer, without any reasoning (`<think>` blocks, `reasoning_content`).
---@field reasoning? string What a reasoning model thought before answering, when it sent it (also in the event log, clipped).
---@field finish_reason string E.g. `"stop"`.
---@field usage cellsci.llm.TokenUsage
---@field cost? number What `usage` cost at the model's price (`stdlib/prices.lua`, `llm.prices`); nil when the model has no price.
---@field latency number Seconds of the successful request.
---@field model string The model the server says answered (else the one asked for).
---@field attempts integer Requests made by this call (1 without retries).
---@field elapsed number Seconds of the whole call, waits between retries included.
---@field streamed boolean Whether the reply was streamed.
---@field replayed boolean Whether it came from a `--replay` cassette.

---@alias cellsci.llm.ErrorKind
---| "rate_limited" # HTTP 429 (`err.retry_after` from Retry-After / retry-after-ms); retried by default
---| "server"       # HTTP 5xx, or an error object instead of a completion; retried
---| "timeout"      # no reply (or no streamed data) within `timeout`; HTTP 408; retried
---| "connect"      # the connection could not be made; retried
---| "reset"        # the connection closed before the reply was complete; retried
---| "bad_body"     # not a completion: not JSON, an HTML page, no choices; retried
---| "empty"        # a completion with no content; retried
---| "truncated"    # cut off by max_tokens (finish_reason "length"); `err.text` holds the partial text; not retried by default
---| "client"       # another 4xx (bad model, bad key, exhausted quota); never retried by default (`per_kind.client = 0`)
---| "content_filter" # the provider's content filter refused the prompt (Azure's 400 `content_filter`) or cut the reply (finish_reason "content_filter"; `err.text` holds what came); never retried by default
---| "budget"       # llm.max_total_tokens / llm.max_calls / llm.max_cost used up; never retried by default
---| "replay_miss"  # replaying, and the cassette has no such request; never retried by default
---| "interrupted"  # Ctrl-C / SIGTERM; never retried (no attempt starts after Ctrl-C, whatever the policy says)
---| "config"       # missing key, unusable base_url, unreadable cassette; never retried by default

---What a failed `llm.chat` returns as `err`. `message` names the last cause, the HTTP status, the
---attempts, the time spent and why the policy stopped.
---@class cellsci.llm.Error: cellsci.Error
---@field kind cellsci.llm.ErrorKind
---@field status? integer The HTTP status of the last attempt, when there was one.
---@field attempts integer Requests made.
---@field elapsed number Seconds of the whole call.
---@field retry_after? number Seconds the server asked to wait (Retry-After, else the delay its error body names), when it did.
---@field model string The model asked for.
---@field text? string For `empty` / `truncated`: what did arrive.
---@field finish_reason? string For `empty` / `truncated`.
---@field usage? cellsci.llm.TokenUsage For `empty` / `truncated`: the tokens paid for.

---What a retry policy is asked after every failed attempt, whatever its kind.
---@class cellsci.llm.RetryInfo
---@field kind cellsci.llm.ErrorKind
---@field status? integer The HTTP status, when there was one.
---@field attempt integer The attempt that just failed (1-based).
---@field elapsed number Seconds since the first attempt.
---@field retry_after? number Seconds the server asked to wait (Retry-After, else the delay its error body names), when it did.
---@field message string The failure (masked).
---@field model string
---@field counts table<string, integer> Failures so far by kind, this one included.

---A retry decision as a table (instead of the `retry, wait, reason` return values).
---@class cellsci.llm.RetryDecision
---@field retry? boolean Retry (default `false`).
---@field wait? number Seconds to wait first (clamped to 0..86400). Default: `0`.
---@field reason? string Why it stops, for the error message.

---A retry policy: `policy:decide(info)` returns `true, wait` to retry after `wait` seconds, or
---`false, 0, reason` to give up (or a `cellsci.llm.RetryDecision` table). `require("retry")` and
---`require("retry").new{...}` are policies.
---@class cellsci.llm.RetryPolicy
---@field decide fun(self: cellsci.llm.RetryPolicy, info: cellsci.llm.RetryInfo): boolean|cellsci.llm.RetryDecision|nil, number?, string?

---A retry policy as a plain function: same arguments (without `self`) and returns as `decide`.
---@alias cellsci.llm.RetryFunction fun(info: cellsci.llm.RetryInfo): boolean|cellsci.llm.RetryDecision|nil, number?, string?

---Send a chat request, retrying as the policy decides (edited scripts are reloaded before each
---decision). Never raises for an expected failure; raises on misuse (not a table, an unknown option,
---a wrong type, no user message, an empty model).
---@param opts cellsci.llm.ChatOpts
---@return cellsci.llm.Reply|nil reply
---@return cellsci.llm.Error|nil err
function llm.chat(opts) end

---@alias cellsci.llm.ExtractErrorKind
---| "no_json"   # the text holds no JSON value
---| "truncated" # a value is cut off at the end (never repaired into a guess)
---| "too_deep"  # the value is nested more than 127 levels deep

---The error of `llm.extract_json`.
---@class cellsci.llm.ExtractError: cellsci.Error
---@field kind cellsci.llm.ExtractErrorKind

---The JSON value a reply holds: fenced blocks, `<think>` blocks ignored, prose around the JSON, Python
---dict literals, trailing commas, comments, bare keys, NaN/Infinity and bare lists are handled. A fenced
---value wins over bare ones; among those the largest wins. Raises when `text` is not a string.
---@param text string
---@return cellsci.JsonValue|nil value
---@return cellsci.llm.ExtractError|nil err
---@return boolean|nil repaired true when the value needed repairs to be read (anything but a reply that is exactly one JSON value)
function llm.extract_json(text) end

---Options of `llm.clip`.
---@class cellsci.llm.ClipOpts
---@field head? integer Bytes kept from the start. Default: 4096.
---@field tail? integer Bytes kept from the end. Default: 4096.

---At most `head` bytes from the start and `tail` from the end of `text` (whole UTF-8 characters), with
---`[… N bytes cut …]` on a line of its own between them; and N (0 when the text fits). For echoing model
---replies, error messages and tracebacks into a prompt without letting one make it megabytes long.
---@param text string
---@param opts? cellsci.llm.ClipOpts
---@return string clipped
---@return integer bytes_cut
function llm.clip(text, opts) end

---LLM use counts (`llm.usage()`, `llm.usage_snapshot()`, and each entry of `models`).
---@class cellsci.llm.Counts
---@field calls integer `llm.chat` calls (each may make several requests).
---@field ok integer Calls that succeeded.
---@field failed integer Calls that failed.
---@field requests integer Requests sent (retries and replayed ones included).
---@field retries integer Requests beyond the first of each call.
---@field prompt_tokens integer
---@field completion_tokens integer
---@field total_tokens integer
---@field reasoning_tokens integer Of the completion tokens, those spent thinking (when the endpoint reports them).
---@field cost number What the priced requests cost.
---@field unpriced integer Requests of models with no price (left out of `cost`).
---@field latency number Seconds spent in requests (waits between retries not included), rounded to ms.
---@field failures table<string, integer> Failed requests by kind.

---Counts with a per-model breakdown.
---@class cellsci.llm.Usage: cellsci.llm.Counts
---@field models table<string, cellsci.llm.Counts> The same counts by model name.

---The run's totals so far (budgets are checked against these).
---@return cellsci.llm.Usage
function llm.usage() end

---Options of `llm.usage_snapshot`.
---@class cellsci.llm.SnapshotOpts
---@field reset? boolean Start a new window after reading. Default: `false`.

---The counts since the previous reset (or the start); with `reset = true`, starts a new window (call
---it once per iteration). Raises on an unknown option.
---@param opts? cellsci.llm.SnapshotOpts
---@return cellsci.llm.Usage
function llm.usage_snapshot(opts) end

---The effective LLM settings (config `llm` section, environment, `--record`/`--replay`). Fields that
---are not set are absent.
---@class cellsci.llm.Settings
---@field model string
---@field base_url string Normalized (`/v1` added when the URL has no path).
---@field api_key? string Masked: `"***"` plus the last 4 characters (`"***"` alone for a short key); absent when there is no key.
---@field max_tokens? integer
---@field temperature? number
---@field timeout number Seconds (default `600`).
---@field idle_timeout? number Streaming: the longest silence, seconds (absent: 300, or `timeout` when shorter).
---@field max_reply_bytes integer The largest reply accepted, bytes (0: any size; default 8388608).
---@field stream_timeout? number The longest a whole stream may last, seconds (absent: 2 x `timeout`, or `timeout` with an idle timeout).
---@field connect_timeout number Seconds (default `10`).
---@field max_total_tokens? integer Token budget of the run.
---@field max_calls? integer Request budget of the run.
---@field max_cost? number Money budget of the run (priced by `stdlib/prices.lua` and `llm.prices`).
---@field max_concurrency integer Requests in flight at once (default `8`).
---@field stream? boolean Absent: stream when progress is shown.
---@field record? string Cassette being recorded to.
---@field replay? string Cassette being replayed from.
---@field error? string Why the settings are unusable (e.g. a bad base_url); every chat then fails with kind `config`.

---The effective settings, with the key masked.
---@return cellsci.llm.Settings
function llm.settings() end

---Remove the API key, bearer tokens and `sk-...` look-alikes from a text before logging it.
---@param text string
---@return string masked
function llm.mask(text) end

return llm
