-- adapt.lua: what llm.chat changes in a request that an endpoint refused with a 400 naming one of its
-- parameters (today's reasoning models refuse `max_tokens` and any `temperature` but the default).
--
-- llm.chat calls `adapt:decide(info)` after a 400, before the retry policy (retry.lua) is asked.
-- info = {status, kind, message, param (the field the error body names, when it does), model,
-- params = {body field names as sent}, response_format = "json_schema" | "json_object" | nil}. It returns nil (nothing to adapt: the retry policy decides) or a table
--   {rename = {from = to}, drop = {names}, set = {name = value}, stream = false}
-- The request is sent again at once with the change, and the change is kept for that model for the rest
-- of the run (said once on stderr and as an `llm_adapt` event). Every request stays a valid OpenAI chat
-- completion request: only optional fields are renamed, dropped or downgraded.
--
-- Copy this file next to your script (or into --scripts DIR) to change it. No side effects at the top level.

local M = {}

-- Fields that are never dropped: without them there is no request.
M.keep = { model = true, messages = true }

-- Words that say a named parameter is refused rather than, say, too large.
M.refusals = {
  "unsupported",
  "not supported",
  "does not support",
  "unrecognized",
  "unknown parameter",
  "not permitted",
  "not allowed",
  "only the default",
  "invalid parameter",
  "extra inputs",
  "not available",
  "unknown name",
  "cannot find field",
  "unsupported value",
}

local function names(msg, p)
  -- the parameter as a whole word ('max_tokens' is not found inside 'max_completion_tokens')
  return msg:find("%f[%w_]" .. p:gsub("%p", "%%%0") .. "%f[^%w_]") ~= nil
end

local function refused(msg)
  for _, w in ipairs(M.refusals) do
    if msg:find(w, 1, true) then return true end
  end
  return false
end

function M:decide(info)
  local msg = (info.message or ""):lower()
  -- a content filter's refusal names no parameter to change: nothing to adapt
  if info.status ~= 400 or info.kind == "content_filter" or not refused(msg) then return nil end
  local sent = {}
  for _, p in ipairs(info.params or {}) do
    sent[p] = true
  end
  -- the field the error body names (OpenAI's `param`) counts as named in the message
  if type(info.param) == "string" and sent[info.param] then msg = msg .. " " .. info.param:lower() end
  -- the most specific first: a message about the format often names max_tokens or stream as well
  if
    sent.response_format
    and (names(msg, "response_format") or names(msg, "json_schema") or names(msg, "json_object"))
  then
    if info.response_format == "json_schema" then return { set = { response_format = { type = "json_object" } } } end
    return { drop = { "response_format" } }
  end
  if sent.max_tokens and names(msg, "max_tokens") then return { rename = { max_tokens = "max_completion_tokens" } } end
  if sent.stream and names(msg, "stream") then return { stream = false } end
  for p in pairs(sent) do
    if not M.keep[p] and names(msg, p) then return { drop = { p } } end
  end
  return nil
end

return M
