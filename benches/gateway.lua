-- Local kernel vs Jupyter Kernel Gateway kernel (and Enterprise Gateway, CELLSCI_EG_URL): per-cell round trip
-- and one large output.
-- Run by benches/gateway.py, which starts the gateway and sets CELLSCI_GATEWAY_URL, CELLSCI_GATEWAY_TOKEN
-- (read by kernel.start{gateway=}) and CELLSCI_BENCH_PYTHON (the venv's python for the local kernel).
-- Prints a small table on stdout; any failure raises (non-zero exit, message on stderr).
local kernel = require('kernel')
local env = require('env')
local time = require('time')
local log = require('log')

local PY = assert(env.get('CELLSCI_BENCH_PYTHON'), 'CELLSCI_BENCH_PYTHON is not set')
local URL = assert(env.get('CELLSCI_GATEWAY_URL'), 'CELLSCI_GATEWAY_URL is not set')
assert(env.get('CELLSCI_GATEWAY_TOKEN'), 'CELLSCI_GATEWAY_TOKEN is not set')
local CELLS = tonumber(env.get('CELLSCI_BENCH_CELLS', '200'))
local BIG = 20000000

-- The value at quantile q (0..1) of a sorted list (nearest rank).
local function quantile(sorted, q)
  local i = math.max(1, math.ceil(q * #sorted))
  return sorted[i]
end

local function run(label, opts)
  local t0 = time.monotonic()
  local k, err = kernel.start(opts)
  if not k then
    error(('%s: kernel.start failed: %s'):format(label, tostring(err)))
  end
  local started = time.monotonic() - t0

  -- Warm-up: the first cell pays for imports and the connection.
  local r = k:execute('x = 0')
  assert(r.status == 'ok', ('%s: warm-up cell: %s'):format(label, tostring(r.status)))

  local rtt = {}
  for i = 1, CELLS do
    local t = time.monotonic()
    r = k:execute(('x = %d'):format(i))
    rtt[i] = (time.monotonic() - t) * 1000
    assert(r.status == 'ok', ('%s: cell %d: %s %s'):format(label, i, tostring(r.status), tostring(r.evalue)))
  end
  table.sort(rtt)

  local t = time.monotonic()
  -- all of it kept (the default max_output_bytes keeps the first and last 2 MB of a stream)
  r = k:execute(("print('x' * %d)"):format(BIG), { max_output_bytes = 0 })
  local big_s = time.monotonic() - t
  assert(r.status == 'ok', ('%s: big cell: %s %s'):format(label, tostring(r.status), tostring(r.evalue)))
  local got, kinds = 0, {}
  for _, o in ipairs(r.outputs) do
    kinds[#kinds + 1] = o.output_type .. (o.name and (':' .. o.name) or '')
    if o.output_type == 'stream' and o.name == 'stdout' then
      got = got + #o.text
    end
  end
  -- 'x' * BIG and print's newline.
  local whole = got == BIG + 1
  if not whole then
    log.warn(('%s: the big cell gave %d stdout chars, not %d (outputs: %s)'):format(
      label, got, BIG + 1, table.concat(kinds, ',')))
  end

  k:shutdown()
  return {
    label = label, start = started, median = quantile(rtt, 0.5), p95 = quantile(rtt, 0.95),
    big = big_s, whole = whole, got = got,
  }
end

local rows, failed = {}, {}
local cases = { { 'local', { python = PY } }, { 'kernel gateway', { gateway = URL } } }
-- set by benches/gateway.py when it started an Enterprise Gateway too (same token)
local EG = env.get('CELLSCI_EG_URL')
if EG and EG ~= '' then
  cases[#cases + 1] = { 'enterprise gateway', { gateway = EG, name = 'python3_local' } }
end
for _, c in ipairs(cases) do
  local ok, res = pcall(run, c[1], c[2])
  if ok then
    rows[#rows + 1] = res
  else
    failed[#failed + 1] = tostring(res)
    log.error(res)
  end
end

log.line(('| kernel | start s | cell round trip median ms (%d cells) | p95 ms | 20 MB print s | output whole |')
  :format(CELLS))
log.line('|---|---|---|---|---|---|')
for _, x in ipairs(rows) do
  log.line(('| %s | %.2f | %.2f | %.2f | %.2f | %s |'):format(
    x.label, x.start, x.median, x.p95, x.big, x.whole and 'yes' or ('NO (' .. x.got .. ' chars)')))
  if not x.whole then
    failed[#failed + 1] = ('%s: the 20 MB output did not arrive whole (%d chars)'):format(x.label, x.got)
  end
end
if #failed > 0 then
  error(table.concat(failed, '; '))
end
