-- wrk script: POST an order of one product, picked at random, per request.
--
-- The bench writes a Lua data file and names it in BENCH_ORDERS_DATA:
--   return {tokens = {"<bearer token>", ...}, ample = {"<id>", ...}, scarce = {"<id>", ...},
--           scarce_share = 0.1, delay_ms = 0, path = "/orders"}
-- Each request carries the next token in turn (one per user: the order service limits
-- each user's rate, so the load is spread over many). A share `scarce_share` of requests
-- orders a scarce product (so some orders are rejected); `delay_ms` > 0 paces each
-- connection (wrk's delay(): that many ms between a response and the connection's next
-- request). done() prints one JSON line after BENCH_WRK_JSON.

local data = dofile(os.getenv("BENCH_ORDERS_DATA"))
local signed = {}
for i, token in ipairs(data.tokens) do
  signed[i] = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token }
end
local threads = {}
local next_id = 0
local turn = 0

statuses = {}

function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + (id or 0))
  turn = (id or 0) % #signed -- threads start on different users
end

function request()
  local pool = data.ample
  if #data.scarce > 0 and math.random() < data.scarce_share then
    pool = data.scarce
  end
  local product = pool[math.random(#pool)]
  local body = '{"items":[{"product_id":"' .. product .. '","quantity":1}]}'
  turn = turn % #signed + 1
  return wrk.format("POST", data.path, signed[turn], body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

if data.delay_ms and data.delay_ms > 0 then
  function delay()
    return data.delay_ms
  end
end

local function pairs_json(tbl)
  local parts = {}
  for key, value in pairs(tbl) do
    table.insert(parts, string.format('"%s":%d', tostring(key), value))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("statuses") or {}) do
      total[code] = (total[code] or 0) + n
    end
  end
  local quantiles = {}
  for _, q in ipairs({ 50, 75, 90, 95, 99, 99.9 }) do
    local name = "p" .. tostring(q):gsub("%.", "_")
    table.insert(quantiles, string.format('"%s":%d', name, latency:percentile(q)))
  end
  local errors = summary.errors
  io.write("BENCH_WRK_JSON ", string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"statuses":%s,"latency_us":{%s,"min":%d,"max":%d,"mean":%.1f,"stdev":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    pairs_json(total), table.concat(quantiles, ","),
    latency.min, latency.max, latency.mean, latency.stdev))
end
