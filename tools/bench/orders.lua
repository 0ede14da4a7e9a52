-- wrk script: POST an order of one product, picked at random, per request.
--
-- The bench writes a Lua data file and names it in BENCH_ORDERS_DATA:
--   return {tokens = {"<bearer token>", ...}, ample = {"<id>", ...}, scarce = {"<id>", ...},
--           scarce_share = 0.1, interval_ms = 0, path = "/orders"}
-- Each request carries the next token in turn (one per user: the order service limits
-- each user's rate, so the load is spread over many). A share `scarce_share` of requests
-- orders a scarce product (so some orders are rejected); `interval_ms` > 0 paces the
-- thread: its requests start that many ms apart (see delay() below). done() prints one
-- JSON line after BENCH_WRK_JSON.

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

-- Pacing: wrk asks delay() before each connection's next request. The thread books request
-- starts `interval_ms` apart on the monotonic clock (LuaJIT's ffi: wrk's Lua has no clock
-- finer than a second) and holds the connection until its slot, so the rate holds whatever
-- the answers' latency. A slot already past is taken at once; one more than an interval
-- past restarts the schedule from now, so a stall is not followed by a burst.
if data.interval_ms and data.interval_ms > 0 then
  local ffi = require("ffi")
  ffi.cdef([[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clock, bench_timespec *now);
  ]])
  local CLOCK_MONOTONIC = 1
  local clock = ffi.new("bench_timespec")
  local function now_ms()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
    return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
  end
  local slot = nil

  function delay()
    local now = now_ms()
    if slot == nil or slot < now - data.interval_ms then
      slot = now
    end
    local wait = slot - now
    slot = slot + data.interval_ms
    return math.floor(wait + 0.5)
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
