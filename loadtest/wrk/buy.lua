-- wrk script for ticketd: POST /buy/<event>, and a count of the answers by status at the end.
--
-- Why: wrk is the usual yardstick for HTTP servers; this makes its numbers comparable with
-- the project's own load tester (cargo run --release -p loadtest) on the purchase route.
--
-- Usage (from the repository root):
--   wrk -t2 -c2000 -d30s -s loadtest/wrk/buy.lua http://127.0.0.1:3000/buy/1
--       buys event 1: the URL's path is sent as it is
--   wrk -t2 -c2000 -d30s -s loadtest/wrk/buy.lua http://127.0.0.1:3000 -- 1,2,3
--   EVENTS=1,2,3 wrk -t2 -c2000 -d30s -s loadtest/wrk/buy.lua http://127.0.0.1:3000
--       each request buys a random event of the list (uniformly); the URL's path, without a
--       trailing /buy/<id>, is the prefix
--
-- done() prints the answers by status, and how many were not 2xx (409 sold_out is expected once
-- an event is sold out; 503 means Redis failed; anything else deserves a look).

wrk.method = "POST"
wrk.headers["Content-Length"] = "0"

local threads = {}
local next_id = 0

-- Main thread, once per wrk thread: keep the thread to read its counters in done().
function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
  table.insert(threads, thread)
end

-- Each thread: parse the event list, if any.
function init(args)
  counts = {}
  answers = 0
  non2xx = 0
  local list = args[1] or os.getenv("EVENTS") or ""
  events = {}
  for id in string.gmatch(list, "[^,%s]+") do
    table.insert(events, id)
  end
  if #events == 0 then
    -- Static request: wrk sends the URL's path without calling Lua per request.
    request = nil
    return
  end
  prefix = string.gsub(wrk.path, "/buy/[^/]*$", "")
  prefix = string.gsub(prefix, "/$", "")
  math.randomseed(os.time() * 1000 + (id or 0))
  paths = {}
  for i, e in ipairs(events) do
    paths[i] = prefix .. "/buy/" .. e
  end
end

function request()
  return wrk.format(nil, paths[math.random(#paths)])
end

function response(status, headers, body)
  answers = answers + 1
  counts[status] = (counts[status] or 0) + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local by_status = {}
  local answers_all, non2xx_all = 0, 0
  for _, thread in ipairs(threads) do
    answers_all = answers_all + (thread:get("answers") or 0)
    non2xx_all = non2xx_all + (thread:get("non2xx") or 0)
    local counts = thread:get("counts") or {}
    for status, n in pairs(counts) do
      by_status[status] = (by_status[status] or 0) + n
    end
  end
  local codes = {}
  for status in pairs(by_status) do
    table.insert(codes, status)
  end
  table.sort(codes)
  io.write("answers by status:")
  for _, status in ipairs(codes) do
    io.write(string.format(" %d: %d", status, by_status[status]))
  end
  io.write("\n")
  io.write(string.format("answers: %d, non-2xx: %d, socket errors: connect %d, read %d, write %d, timeout %d\n",
    answers_all, non2xx_all, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout))
  io.write(string.format("latency: p50 %.2fms  p99 %.2fms  max %.2fms\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
