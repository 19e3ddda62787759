-- Reservation records, one per reservation id:
--   tollgate:res:<id>  HASH
--     s     'o' open | 'c' closed (settled or released)
--     g     the grant given (-1: nothing elastic)
--     n     how many descriptors the reserve had
--     k<i>  the bucket key descriptor i charged ('' for one without a limit)
--     p<i>  that bucket's limit when charged (algorithm, capacity, window), so
--           a settle finds the same bucket after a reload or a calendar rollover
-- TTL: lease + TOMBSTONE while open, TOMBSTONE once closed. A settle retried
-- more than TOMBSTONE after its reservation closed is taken for a new charge.
local TOMBSTONE_MS = 86400000
local NONE, OPEN, CLOSED = 0, 1, 2 -- a record's state, as replies report it
local HSET_CHUNK = 400 -- fields per HSET: Lua's unpack stops near 8,000 values

local function record_state(s)
  if s == 'o' then
    return OPEN
  elseif s == 'c' then
    return CLOSED
  end
  return NONE
end

local function read_record(key)
  local flat = redis.call('HGETALL', key)
  local record = {}
  for i = 1, #flat, 2 do
    record[flat[i]] = flat[i + 1]
  end
  return record
end

-- The bucket a record names, with the limit it had: a descriptor as read_checks makes one.
local function recorded_bucket(key, limit)
  local fields = {}
  for word in string.gmatch(limit, '%S+') do
    fields[#fields + 1] = word
  end
  local d = {key = key, algo = algorithms[fields[1]], capacity = tonumber(fields[2]), hits = 0, per_grant = 0}
  d.algo.recorded(d, fields)
  return d
end

local function hset_all(key, fields)
  for first = 1, #fields, HSET_CHUNK do
    redis.call('HSET', key, unpack(fields, first, math.min(first + HSET_CHUNK - 1, #fields)))
  end
end

-- An admitted reservation's record: the buckets it charged, open for its lease.
local function open_record(req, checks, granted)
  local charged = {}
  for _, d in ipairs(checks) do
    charged[d.index] = d
  end
  local fields = {'s', 'o', 'g', int_text(granted), 'n', int_text(req.n)}
  for i = 0, req.n - 1 do
    local d = charged[i]
    fields[#fields + 1] = 'k' .. i
    fields[#fields + 1] = d and d.key or ''
    if d then
      fields[#fields + 1] = 'p' .. i
      fields[#fields + 1] = d.algo.describe(d)
    end
  end
  hset_all(req.res, fields)
  redis.call('PEXPIRE', req.res, int_text(req.lease_ms + TOMBSTONE_MS))
end

-- Settled, released, or never reserved: a tombstone that makes the id's later
-- settles no-ops and refuses a late reserve.
local function close_record(req)
  redis.call('DEL', req.res)
  redis.call('HSET', req.res, 's', 'c')
  redis.call('PEXPIRE', req.res, int_text(TOMBSTONE_MS))
end

-- The buckets an open record charged, each with the actual amount its
-- descriptors now settle (hits[i] for descriptor i). A bucket a current check
-- still matches is read with that check's limit (a reload applies at once);
-- one it no longer matches keeps the limit the record noted.
local function settling_buckets(buckets, record, req, checks)
  local current = {}
  for _, d in ipairs(checks) do
    current[d.key] = d
  end
  local settling = {}
  for i = 0, (tonumber(record.n) or 0) - 1 do
    local key = record['k' .. i]
    if key and key ~= '' then
      local d = current[key] or recorded_bucket(key, record['p' .. i])
      local b = bucket(buckets, d, req.id)
      if not b.actual then
        b.actual = 0
        settling[#settling + 1] = b
      end
      b.actual = b.actual + (req.hits[i + 1] or 0)
    end
  end
  return settling
end
