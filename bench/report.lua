-- wrk script for bench/run.py.
-- Arguments (after `--`): BODY_BYTES [PATH]. With BODY_BYTES > 0 each request is a POST of that
-- many bytes. done() prints one line `BENCHJSON {...}` with the counts and latency percentiles
-- (wrk measures latency in microseconds).

function init(args)
  local n = tonumber(args[1] or "0") or 0
  if args[2] ~= nil and args[2] ~= "" then
    wrk.path = args[2]
  end
  if n > 0 then
    wrk.method = "POST"
    wrk.body = string.rep("x", n)
    wrk.headers["Content-Type"] = "application/octet-stream"
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p99":%d,"p999":%d,"mean":%.1f,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max))
end
