-- wrk: POST BODY (env; default a small chat completion), TOKEN (env) as
-- the bearer if set.
-- Prints one machine-readable RESULT line at the end.
wrk.method = "POST"
local body = os.getenv("BODY")
if not body or body == "" then
  body = '{"model":"simulator","messages":[{"role":"user","content":"Hello, how are you?"}],"max_tokens":16}'
end
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d rps=%.0f p50_us=%d p99_us=%d socket_errors=%d non2xx=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
