-- wrk: POST keys.verifyKey with a key drawn at random, per request, from
-- KEYFILE (env; one key a line, as scripts/load/create_keys.lua writes it).
-- Counts the answers whose body lacks "valid":true as invalid.
-- Prints one machine-readable RESULT line at the end: post.lua's, plus
-- invalid=N.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local threads = {}
local keys = {}
invalid = 0

setup = function(thread)
  table.insert(threads, thread)
end

init = function(args)
  local path = os.getenv("KEYFILE")
  for line in assert(io.open(path)):lines() do
    if line ~= "" then
      keys[#keys + 1] = '{"key":"' .. line .. '"}'
    end
  end
  assert(#keys > 0, "no keys in " .. path)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

request = function()
  return wrk.format(nil, nil, nil, keys[math.random(#keys)])
end

response = function(status, headers, body)
  if not body:find('"valid":true', 1, true) then
    invalid = invalid + 1
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  local bad = 0
  for _, t in ipairs(threads) do
    bad = bad + (t:get("invalid") or 0)
  end
  io.write(string.format(
    "RESULT requests=%d rps=%.0f p50_us=%d p99_us=%d socket_errors=%d non2xx=%d invalid=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status, bad))
end
