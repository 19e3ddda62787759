-- Token bucket, continuously refilled.
--
-- The key holds the bucket's *level* (tokens consumed) and when it was written,
-- as "<level> <unix seconds>". The level drains at capacity / period tokens per
-- second, so remaining = capacity - level. The key carries no limit value:
-- raising `requests_per_unit` keeps what was spent. A level above capacity is
-- debt (usage charged after the fact); it drains like any other level. The key
-- lives until its level would have drained to zero (a full bucket needs no key).
--
-- Every algorithm file defines one loader that builds a table of the same
-- functions, none of which calls Redis: buckets.lua reads and writes the keys.
-- `d` is a limited descriptor as ratelimit.lua reads it (capacity, and what
-- `parse` set). A script's functions are built afresh on every call, so a
-- call builds only the algorithms it uses (buckets.lua: algorithm()).
local function token_bucket()
  local tb = {code = 'tb'}

  -- The script's period field: the refill period in seconds.
  function tb.parse(d, field)
    d.period = tonumber(field)
  end

  function tb.key(base, _now, _d)
    return base
  end

  -- The level now, from the stored value (nil: no key, a full bucket).
  function tb.level(raw, now, d)
    if not raw then
      return 0
    end
    local sep = string.find(raw, ' ', 1, true)
    local level = tonumber(string.sub(raw, 1, sep - 1))
    local at = tonumber(string.sub(raw, sep + 1))
    if d.capacity > 0 and now > at then
      level = level - (now - at) * d.capacity / d.period
    end
    return math.max(level, 0)
  end

  -- Seconds until the level has drained to `target` (>= 0); a limit of 0 never
  -- drains: one period, as a number to report.
  function tb.wait(_now, d, level, target)
    if level <= target then
      return 0
    end
    if d.capacity <= 0 then
      return d.period
    end
    return (level - target) * d.period / d.capacity
  end

  -- Until the bucket is full again (envoy's durationUntilReset for a bucket).
  function tb.reset(now, d, level)
    return tb.wait(now, d, level, 0)
  end

  -- How long the key must live for a level above zero: until it has drained.
  function tb.ttl(now, d, level)
    return tb.wait(now, d, level, 0)
  end

  function tb.encode(level, now)
    return string.format('%.17g %.6f', level, now)
  end

  -- What a reservation record keeps to find this bucket's limit again.
  function tb.describe(d)
    return string.format('tb %d %d', d.capacity, d.period)
  end

  function tb.recorded(d, fields)
    d.period = tonumber(fields[3])
  end

  return tb
end
