-- wrk script for the benchmarks: prints one JSON line (BENCH-JSON ...) at the end.
-- With BENCH_COUNT set, every response's status is looked at and non-2xx are counted
-- here (wrk's own "errors.status" only counts statuses of 400 and above).

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
  responses = 0
end

if os.getenv("BENCH_COUNT") == "1" then
  function response(status, headers, body)
    responses = responses + 1
    if status < 200 or status > 299 then
      non2xx = non2xx + 1
    end
  end
end

function done(summary, latency, requests)
  local counted, seen = 0, 0
  for _, thread in ipairs(threads) do
    counted = counted + (thread:get("non2xx") or 0)
    seen = seen + (thread:get("responses") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests": %d, "duration_us": %d, "bytes": %d, "counted": %s, ' ..
    '"non2xx": %d, "responses": %d, "status_4xx_5xx": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "mean_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    os.getenv("BENCH_COUNT") == "1" and "true" or "false", counted, seen, e.status,
    e.connect, e.read, e.write, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max))
end
