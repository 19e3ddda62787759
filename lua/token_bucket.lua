-- Token bucket, continuously refilled.
--
-- The key holds the bucket's *level* (tokens consumed) and when it was written,
-- as "<level> <unix seconds>". The level drains at capacity / period tokens per
-- second, so remaining = capacity - level. The key carries no limit value:
-- raising `requests_per_unit` keeps what was spent. A level above capacity is
-- debt (usage charged after the fact); it drains like any other level. The key
-- lives until its level would have drained to zero (a full bucket needs no key).
--
-- Composed with the other algorithm files and ratelimit.lua into one script at
-- load time (ratelimit_service/limiter.py); it defines one local table, whose
-- functions do no Redis calls: the driver reads and writes the keys.
local token_bucket = {}

function token_bucket.key(base, _now, _period)
  return base
end

-- The level now, from the stored value (nil: no key, a full bucket).
function token_bucket.level(raw, now, capacity, period)
  if not raw then
    return 0
  end
  local sep = string.find(raw, ' ', 1, true)
  local level = tonumber(string.sub(raw, 1, sep - 1))
  local at = tonumber(string.sub(raw, sep + 1))
  if capacity > 0 and now > at then
    level = level - (now - at) * capacity / period
  end
  return math.max(level, 0)
end

-- Seconds until the level has drained to `target` (>= 0), or nil for never.
function token_bucket.wait(_now, capacity, period, level, target)
  if level <= target then
    return 0
  end
  if capacity <= 0 then
    return nil
  end
  return (level - target) * period / capacity
end

-- What to store for a level above zero.
function token_bucket.encode(level, now)
  return string.format('%.17g %.6f', level, now)
end
