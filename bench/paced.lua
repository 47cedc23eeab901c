-- wrk script: each connection waits WRK_DELAY_MS between a response and its
-- next request, so C connections offer about C * 1000 / (delay + latency)
-- requests per second: a steady load below the peak (wrk has no fixed-rate
-- mode; wrk2 is not packaged here). Latency is measured per request, without
-- the wait.
local pause = tonumber(os.getenv("WRK_DELAY_MS") or "10")
function delay()
  return pause
end
