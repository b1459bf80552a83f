-- wrk: every other request a POST with a 1 KiB body, the rest GETs; each asks the demo
-- for 10 ms of work.
local body = string.rep("x", 1024)
local n = 0
request = function()
    n = n + 1
    if n % 2 == 0 then
        return wrk.format("POST", "/?duration=10ms",
            { ["Content-Type"] = "application/octet-stream" }, body)
    end
    return wrk.format("GET", "/?duration=10ms")
end
