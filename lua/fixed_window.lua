-- Fixed window, aligned to the epoch like envoyproxy/ratelimit's default.
--
-- The window's key is the bucket key plus the window's start; it holds the
-- level (hits counted in this window) and lives until the window ends, which
-- resets the level to zero.
--
-- Composed with the other algorithm files and ratelimit.lua into one script at
-- load time (ratelimit_service/limiter.py); it defines one local table, whose
-- functions do no Redis calls: the driver reads and writes the keys.
local fixed_window = {}

function fixed_window.key(base, now, period)
  return base .. ':' .. string.format('%.0f', math.floor(now / period) * period)
end

function fixed_window.level(raw, _now, _capacity, _period)
  return tonumber(raw) or 0
end

-- Seconds until the level is at most `target` (>= 0): at the latest, the next window.
function fixed_window.wait(now, _capacity, period, level, target)
  if level <= target then
    return 0
  end
  return (math.floor(now / period) + 1) * period - now
end

function fixed_window.encode(level, _now)
  return string.format('%.17g', level)
end
