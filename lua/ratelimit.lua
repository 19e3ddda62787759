-- Atomic decisions: one call decides one request over all its descriptors, or
-- each request of a batch in turn, each as its own call would.
--
-- Loaded last; ratelimit_service/limiter.py joins the files of lua/ into one
-- script (the algorithms, buckets.lua, elastic.lua, reservations.lua, this).
--
-- ARGV[1] is the clock offset (seconds added to Redis time, normally 0), then
-- ARGV[2] is either a request's mode (one request) or 'batch' (requests from
-- ARGV[3] on, one after the other). A request is laid out as
--   mode, count (its limited descriptors), the mode's own fields, then
--   FIELDS per descriptor: index in the request, algorithm, capacity, period
--   (seconds, or a calendar's four boundaries), hits, per_grant (0: not
--   elastic), shadow ('1' | '0')
-- and takes from KEYS its reservation record (modes with an id), then one
-- bucket key per descriptor (without the window suffix).
--
-- Modes and their own fields:
--   json     envoy's /json: every descriptor is charged its hits even when over
--            the limit; an over-limit charge stops adding debt at twice the
--            capacity, so a client that keeps calling is locked out for at most
--            one period after it stops (envoy's fixed window has the same bound).
--   budget   nothing charged: the buckets as they are.
--   reserve  id, lease_ms, max_grant, min_grant, descriptor count.
--            All or nothing: charged only if every enforced descriptor can
--            cover its charge (elastic.lua), and held under the id until settled
--            or its lease ends. A closed id is refused unread; an open one is
--            answered again (its grant, the current levels), charging nothing.
--   settle   id, every descriptor's actual amount (space separated).
--            Open: each bucket the reserve charged gets actual - held. Closed:
--            nothing. Unknown: the actual amounts charged on the buckets the
--            descriptors match now. Then the id is closed. A release is a
--            settle of zeros.
--   extend   id, lease_ms: an open reservation's leases end lease_ms from now.
-- A descriptor needs remaining >= hits to pass; hits = 0 (check only) needs
-- remaining > 0. Descriptors on one bucket are charged one after the other.
--
-- Reply: {granted, state, now (ms), then per descriptor: code (1 OK, 2
-- OVER_LIMIT), remaining (floor, negative in debt), reset_ms (bucket:
-- until full again; window: until it ends), retry_ms (until the same request
-- could pass, 0 if it did; settle and budget: until a check would pass)}.
-- granted is the elastic grant, -1 with nothing elastic (extend: 1 if it
-- extended). state is the id's record before the call: 0 none, 1 open, 2 closed.
-- A batch answers one line of text per request: the reply's numbers, or '!'
-- and the error that stopped that request (which wrote nothing).
local FIELDS = 7
local MODE_FIELDS = {json = 0, budget = 0, reserve = 5, settle = 2, extend = 2}
local CHECK_ONLY_NEED = 0.001

local function passes(d, level, need)
  local remaining = d.capacity - level
  if need > 0 then
    return remaining >= need
  end
  return remaining > 0
end

-- Milliseconds until a request needing `need` would pass at this level. A need
-- above capacity never passes on its own: then, until the bucket is full again.
local function retry_ms(d, level, need)
  if need <= 0 then
    need = CHECK_ONLY_NEED
  end
  if d.capacity <= 0 then
    return ms(d.algo.wait(now, d, math.huge, 0)) -- a limit of 0 never passes: its longest wait
  end
  return ms(d.algo.wait(now, d, level, math.max(d.capacity - need, 0)))
end

local function add_status(reply, d, level, code, retry)
  reply[#reply + 1] = code
  reply[#reply + 1] = math.floor(d.capacity - level)
  reply[#reply + 1] = ms(d.algo.reset(now, d, level))
  reply[#reply + 1] = retry
end

-- A status that says whether a check (hits 0) would pass now.
local function add_check_status(reply, d, level)
  if passes(d, level, 0) then
    add_status(reply, d, level, 1, 0)
  else
    add_status(reply, d, level, 2, retry_ms(d, level, 0))
  end
end

local function read_checks(first_key, first_arg, count)
  local checks = {}
  for i = 1, count do
    local at = first_arg + (i - 1) * FIELDS
    local algo = algorithms[ARGV[at + 1]]
    local d = {
      index = tonumber(ARGV[at]), algo = algo, capacity = tonumber(ARGV[at + 2]), hits = tonumber(ARGV[at + 4]),
      per_grant = tonumber(ARGV[at + 5]), shadow = ARGV[at + 6] == '1',
    }
    algo.parse(d, ARGV[at + 3])
    d.key = algo.key(KEYS[first_key + i - 1], now, d)
    checks[i] = d
  end
  return checks
end

local function decide_json(_req, checks)
  local buckets = new_buckets()
  read_all(buckets, checks)
  local reply = {-1, NONE, now_ms}
  for _, d in ipairs(checks) do
    local b = buckets.by_key[d.key]
    local ok = passes(d, b.level, d.hits)
    if d.capacity > 0 then
      if ok then
        b.level = added(b.level, d.hits)
      else
        b.level = math.min(added(b.level, d.hits), math.max(b.level, 2 * d.capacity))
      end
    end
    if ok then
      add_status(reply, d, b.level, 1, 0)
    else
      add_status(reply, d, b.level, 2, retry_ms(d, b.level, d.hits))
    end
  end
  commit(buckets)
  return reply
end

local function decide_budget(_req, checks)
  local buckets = new_buckets()
  read_all(buckets, checks)
  commit(buckets)
  local reply = {-1, NONE, now_ms}
  for _, d in ipairs(checks) do
    add_check_status(reply, d, buckets.by_key[d.key].level)
  end
  return reply
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

-- What an admitted reservation holds on each bucket, under its id, for its lease.
local function hold(req, checks, buckets)
  local deadline = now_ms + req.lease_ms
  for _, d in ipairs(checks) do
    if d.capacity > 0 and d.amount > 0 then
      local b = buckets.by_key[d.key]
      b.hold = b.hold or {id = req.id, amount = 0, deadline = deadline}
      b.hold.amount = b.hold.amount + d.amount
    end
  end
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
  if admitted then
    hold(req, checks, buckets)
  else
    for _, b in ipairs(buckets.list) do
      b.level = b.base
    end
  end
  commit(buckets)
  if admitted then
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
  local reply = {-1, state, now_ms}
  for _, d in ipairs(checks) do
    add_check_status(reply, d, buckets.by_key[d.key].level)
  end
  return reply
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

local DECIDE = {
  json = decide_json, budget = decide_budget, reserve = decide_reserve, settle = decide_settle,
  extend = decide_extend,
}

local function numbers(text)
  local list = {}
  for word in string.gmatch(text, '%S+') do
    list[#list + 1] = tonumber(word)
  end
  return list
end

-- The request at ARGV[at] and KEYS[first_key]: its mode and fields, and its descriptors.
local function read_request(at, first_key)
  local mode, count = ARGV[at], tonumber(ARGV[at + 1])
  local fields, key = at + 2, first_key
  local req = {mode = mode}
  if MODE_FIELDS[mode] > 0 then
    req.res, req.id = KEYS[key], ARGV[fields]
    key = key + 1
  end
  if mode == 'reserve' then
    req.lease_ms, req.max_grant = tonumber(ARGV[fields + 1]), tonumber(ARGV[fields + 2])
    req.min_grant, req.n = tonumber(ARGV[fields + 3]), tonumber(ARGV[fields + 4])
  elseif mode == 'settle' then
    req.hits = numbers(ARGV[fields + 1])
  elseif mode == 'extend' then
    req.lease_ms = tonumber(ARGV[fields + 1])
  end
  return req, read_checks(key, fields + MODE_FIELDS[mode], count)
end

local function decide_at(at, first_key)
  local req, checks = read_request(at, first_key)
  return DECIDE[req.mode](req, checks)
end

-- redis.call raises a table {err = text}; Lua's own errors are strings.
local function error_text(e)
  if type(e) == 'table' then
    e = e.err or e.message
  end
  return (string.gsub(tostring(e), '\n', ' '))
end

-- A reply as text, each number as the integer Redis would have replied:
-- concat prints numbers with %.14g, which would round the large ones.
local function reply_text(reply)
  for i, v in ipairs(reply) do
    if v >= 1e14 or v <= -1e14 then
      reply[i] = int_text(v)
    end
  end
  return table.concat(reply, ' ')
end

-- One line per request, in order. Text, because one string is far cheaper for
-- the service to read than a nested array of integers.
local function decide_batch()
  local lines = {}
  local at, first_key = 3, 1
  while at <= #ARGV do
    local mode, count = ARGV[at], tonumber(ARGV[at + 1])
    local ok, reply = pcall(decide_at, at, first_key)
    if ok then
      lines[#lines + 1] = reply_text(reply)
    else
      lines[#lines + 1] = '!' .. error_text(reply)
    end
    at = at + 2 + MODE_FIELDS[mode] + count * FIELDS
    first_key = first_key + count + (MODE_FIELDS[mode] > 0 and 1 or 0)
  end
  return table.concat(lines, '\n')
end

if ARGV[2] == 'batch' then
  return decide_batch()
end
return decide_at(2, 1)
