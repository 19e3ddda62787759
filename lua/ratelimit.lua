-- Atomic decisions: one call decides one request over all its descriptors, or
-- each request of a batch in turn, each as its own call would.
--
-- Loaded last; ratelimit_service/limiter.py joins the files of lua/ into one
-- script (the algorithms, buckets.lua, elastic.lua, reservations.lua, this).
-- Redis runs a script's top level on every call, building each function
-- anew: the algorithms and the reservation operations are built only when a
-- call uses them, which keeps a /json call about as cheap as before them.
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

local function read_checks(first_key, first_arg, count)
  local checks = {}
  for i = 1, count do
    local at = first_arg + (i - 1) * FIELDS
    local algo = algorithm(ARGV[at + 1])
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
  return check_reply(NONE, checks, buckets)
end

local reservation_ops -- reserve, settle and extend, built by the first request that needs them

local function decider(mode)
  if mode == 'json' then
    return decide_json
  elseif mode == 'budget' then
    return decide_budget
  end
  reservation_ops = reservation_ops or reservations()
  return reservation_ops[mode]
end

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
  return decider(req.mode)(req, checks)
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
