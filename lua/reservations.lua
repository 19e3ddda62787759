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
--
-- reservations() builds the reserve, settle and extend operations (with the
-- elastic grants they use) when a call first needs one: /json and budget
-- calls never pay for building them.
-- An hour: a gateway retries a settle within seconds (its backoff stops at 5 s), and a
-- reserve it gave up on arrives within its timeout; a day of tombstones cost ~10 GB at
-- a steady 1,000 settles/s, an hour ~430 MB.
local TOMBSTONE_MS = 3600000
local HSET_CHUNK = 400 -- fields per HSET: Lua's unpack stops near 8,000 values

local function reservations()
  local elastic_grant, elastic_charge = elastic()

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
    local d = {key = key, algo = algorithm(fields[1]), capacity = tonumber(fields[2]), hits = 0, per_grant = 0}
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

  -- Each descriptor charged in turn: d.amount, d.ok (could it cover its charge).
  local function charge_in_turn(checks, buckets, granted, least)
    local admitted = true
    for _, d in ipairs(checks) do
      local b = buckets.by_key[d.key]
      if d.per_grant > 0 then
        d.amount = elastic_charge(d, granted)
        if d.room_grant and not d.shadow then
          d.ok = d.room_grant >= least
        else
          d.ok = passes(d, b.level, d.amount)
        end
      else
        d.amount = d.hits
        d.ok = passes(d, b.level, d.hits)
      end
      if d.capacity > 0 then
        b.level = added(b.level, d.amount)
      end
      d.after = b.level
      admitted = admitted and (d.ok or d.shadow)
    end
    return admitted and granted >= least
  end

  -- What an admitted reservation holds on each bucket, under its id, for its lease;
  -- whether it holds anything.
  local function hold(req, checks, buckets)
    local deadline = now_ms + req.lease_ms
    local held = false
    for _, d in ipairs(checks) do
      if d.capacity > 0 and d.amount > 0 then
        local b = buckets.by_key[d.key]
        b.hold = b.hold or {id = req.id, amount = 0, deadline = deadline}
        b.hold.amount = b.hold.amount + d.amount
        held = true
      end
    end
    return held
  end

  local function decide_reserve(req, checks)
    local record = redis.call('HMGET', req.res, 's', 'g')
    local state = record_state(record[1])
    if state == CLOSED then
      return {0, CLOSED, now_ms}
    end
    local buckets = new_buckets()
    read_all(buckets, checks)
    if state == OPEN then
      commit(buckets)
      local reply = {tonumber(record[2]) or -1, OPEN, now_ms}
      for _, d in ipairs(checks) do
        add_status(reply, d, buckets.by_key[d.key].level, 1, 0)
      end
      return reply
    end
    local granted, least = elastic_grant(checks, buckets, req.max_grant), req.min_grant
    if not granted then
      granted, least = -1, -1 -- nothing elastic: no grant to reach
    end
    local admitted = charge_in_turn(checks, buckets, granted, least)
    local held = false
    if admitted then
      held = hold(req, checks, buckets)
    else
      for _, b in ipairs(buckets.list) do
        b.level = b.base
      end
    end
    commit(buckets)
    -- A reservation that holds nothing (a soft budget's check) opens no record: its
    -- settle finds none and charges the actual amounts, as for an expired one, with
    -- the same tombstone after. Two fewer writes and a read for most requests.
    if admitted and (held or granted ~= -1) then
      open_record(req, checks, granted)
    end
    local reply = {admitted and granted or 0, NONE, now_ms}
    for _, d in ipairs(checks) do
      if admitted then
        add_status(reply, d, d.after, d.ok and 1 or 2, 0)
      else
        -- Refused: the levels as they are (nothing was charged), and when each
        -- descriptor that tripped could cover its part of this same request.
        local level = buckets.by_key[d.key].level
        if d.ok then
          add_status(reply, d, level, 1, 0)
        else
          local need = d.amount
          if d.per_grant > 0 then
            need = elastic_charge(d, req.min_grant)
          end
          add_status(reply, d, level, 2, retry_ms(d, level, need))
        end
      end
    end
    return reply
  end

  local function decide_settle(req, checks)
    local record = read_record(req.res)
    local state = record_state(record.s)
    local buckets = new_buckets()
    if state == OPEN then
      local settling = settling_buckets(buckets, record, req, checks)
      read_all(buckets, checks, req.id)
      for _, b in ipairs(settling) do
        local held = redis.call('HGET', b.key .. ':r', req.id)
        if held then
          b.settled = req.id
        end
        b.level = added(b.level, b.actual - (tonumber(held) or 0))
      end
    else
      read_all(buckets, checks)
      if state == NONE then
        for _, d in ipairs(checks) do
          local b = buckets.by_key[d.key]
          if d.capacity > 0 then
            b.level = added(b.level, d.hits)
          end
        end
      end
    end
    commit(buckets)
    if state ~= CLOSED then
      close_record(req)
    end
    return check_reply(state, checks, buckets)
  end

  local function decide_extend(req, _checks)
    local record = read_record(req.res)
    local state = record_state(record.s)
    if state ~= OPEN then
      return {0, state, now_ms}
    end
    local deadline, lasting = now_ms + req.lease_ms, req.lease_ms + LEASE_MARGIN_MS
    local leases, seen = {}, {}
    for i = 0, (tonumber(record.n) or 0) - 1 do
      local key = record['k' .. i]
      if key and key ~= '' and not seen[key] then
        seen[key] = true
        leases[#leases + 1] = {key = key, ttl = redis.call('PTTL', key .. ':l')}
      end
    end
    for _, lease in ipairs(leases) do
      redis.call('ZADD', lease.key .. ':l', 'XX', int_text(deadline), req.id)
      if lease.ttl >= 0 and lease.ttl < lasting then
        redis.call('PEXPIRE', lease.key .. ':l', int_text(lasting))
        redis.call('PEXPIRE', lease.key .. ':r', int_text(lasting))
      end
    end
    redis.call('PEXPIRE', req.res, int_text(req.lease_ms + TOMBSTONE_MS))
    return {1, OPEN, now_ms}
  end

  return {reserve = decide_reserve, settle = decide_settle, extend = decide_extend}
end
