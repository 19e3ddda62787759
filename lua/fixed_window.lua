-- Fixed window, aligned to the epoch like envoyproxy/ratelimit's default.
--
-- The window's key is the bucket key plus the window's start; it holds the
-- level (hits counted in this window) and lives until the window ends, which
-- resets the level to zero. durationUntilReset is the time until the window
-- ends, whatever the level (envoy's CalculateReset).
local function fixed_window()
  local fw = {code = 'fw'}

  function fw.parse(d, field)
    d.period = tonumber(field)
  end

  function fw.key(base, now, d)
    d.start = math.floor(now / d.period) * d.period
    d.stop = d.start + d.period
    return base .. ':' .. string.format('%d', d.start)
  end

  function fw.level(raw, _now, _d)
    return tonumber(raw) or 0
  end

  -- Seconds until the level is at most `target` (>= 0): at the latest, the window's end.
  function fw.wait(now, d, level, target)
    if level <= target then
      return 0
    end
    return d.stop - now
  end

  function fw.reset(now, d, _level)
    return d.stop - now
  end

  function fw.ttl(now, d, _level)
    return d.stop - now
  end

  function fw.encode(level, _now)
    return string.format('%.17g', level)
  end

  function fw.describe(d)
    return string.format('fw %d %d %d', d.capacity, d.period, d.start)
  end

  -- A window a reservation record describes: its limit and where it starts.
  function fw.recorded(d, fields)
    d.period = tonumber(fields[3])
    d.start = tonumber(fields[4])
    d.stop = d.start + d.period
  end

  return fw
end
