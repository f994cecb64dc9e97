-- wrk: POST BODY (env; keys.createKey's body) with TOKEN (env) as the bearer,
-- over as many connections as wrk is given, on one thread (-t1). Appends each
-- answer's "key" to KEYFILE (env), one a line, until KEYS (env) were written;
-- then closes KEYFILE, creates KEYFILE.done and stops the thread. wrk's own
-- -d bounds the run; wrk still sleeps out -d after the thread stopped, so
-- the caller interrupts it (SIGINT) once KEYFILE.done exists.
-- Prints one machine-readable CREATED line at the end.
wrk.method = "POST"
wrk.body = os.getenv("BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")

local threads = {}
setup = function(thread)
  table.insert(threads, thread)
end

local path = os.getenv("KEYFILE")
local want = tonumber(os.getenv("KEYS"))
local out
created, failed = 0, 0

init = function(args)
  out = assert(io.open(path, "w"))
end

response = function(status, headers, body)
  if created >= want then
    return -- answers still in flight after the thread was stopped
  end
  local key = status == 200 and body:match('"key"%s*:%s*"([^"]+)"')
  if not key then
    failed = failed + 1
    return
  end
  out:write(key, "\n")
  created = created + 1
  if created == want then
    out:close()
    assert(io.open(path .. ".done", "w")):close()
    wrk.thread:stop()
  end
end

done = function(summary, latency, requests)
  local c, f = 0, 0
  for _, t in ipairs(threads) do
    c = c + (t:get("created") or 0)
    f = f + (t:get("failed") or 0)
  end
  io.write(string.format("CREATED keys=%d failed=%d requests=%d\n", c, f, summary.requests))
end
