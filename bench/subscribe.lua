-- wrk script: every request subscribes a new address from its own client IP (via
-- X-Forwarded-For, trusted with NEWSLETTER_PROXY_COUNT=1), as sign-ups from many readers do.
local counter = 0
-- thread_id is a global that setup() gives each thread's Lua state.
thread_id = 0
local threads = {}

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  wrk.headers["Accept"] = "application/json"
end

function request()
  counter = counter + 1
  local ip = string.format("10.%d.%d.%d", thread_id, math.floor(counter / 250) % 250, counter % 250)
  wrk.headers["X-Forwarded-For"] = ip
  local body = string.format("email=load-%d-%d%%40example.com&source=https%%3A%%2F%%2Fblog.example.com%%2Fposts%%2Fload", thread_id, counter)
  return wrk.format(nil, nil, nil, body)
end
