-- Calendar window: a day, week (from Monday), month or year in the limit's
-- timezone, daylight saving included (a day may last 23 or 25 hours).
--
-- The service computes the boundaries with the timezone database and passes
-- four of them around its own clock (previous start, start, next, after-next);
-- Redis time picks the window among them, so a few seconds of skew between the
-- service's host and Redis never charge the wrong window. The key is the
-- bucket key plus the window's start (unix seconds, as fixed_window) and lives
-- until GRACE after the window's end: a reservation may stay open for at most
-- one lease (1 day), so the window it charged is still there when it settles,
-- and the settle adjusts that window, never the next one.
local CALENDAR_GRACE = 86400

-- A fixed window whose boundaries come from the call instead of the epoch.
local function calendar()
  local cal = fixed_window()
  cal.code = 'cal'

  -- The script's period field: "<previous start> <start> <next> <after next>".
  function cal.parse(d, field)
    local bounds = {}
    for word in string.gmatch(field, '%S+') do
      bounds[#bounds + 1] = tonumber(word)
    end
    d.bounds = bounds
  end

  function cal.key(base, now, d)
    local b = d.bounds
    local i = 1
    if now >= b[2] then
      i = 2
    end
    if now >= b[3] then
      i = 3
    end
    d.start, d.stop = b[i], b[i + 1]
    return base .. ':' .. string.format('%d', d.start)
  end

  function cal.ttl(now, d, _level)
    return d.stop + CALENDAR_GRACE - now
  end

  function cal.describe(d)
    return string.format('cal %d %d %d', d.capacity, d.start, d.stop)
  end

  function cal.recorded(d, fields)
    d.start = tonumber(fields[3])
    d.stop = tonumber(fields[4])
  end

  return cal
end
